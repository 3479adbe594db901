//! What `SOURCE` on the command line names: a registry, a repository, one artifact by tag
//! or digest, or an OCI layout directory (optionally `:TAG`).

use std::path::{Path, PathBuf};

use crate::oci::Digest;
use crate::source::{valid_host, valid_repo_name, valid_tag, Reference};

/// A parsed `SOURCE`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Layout {
        path: PathBuf,
        tag: Option<String>,
    },
    Registry {
        registry: String,
        repo: Option<String>,
        reference: Option<Reference>,
    },
}

/// Parse `SOURCE`; the error is one line saying what is wrong with it.
pub fn parse(s: &str) -> Result<Target, String> {
    if s.is_empty() {
        return Err("SOURCE is empty".into());
    }
    // SOURCE as errors show it: control characters escaped, so the message stays one line.
    let q: String = s
        .chars()
        .map(|c| {
            if c.is_control() {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect();
    if Path::new(s).is_dir() {
        return Ok(Target::Layout {
            path: s.into(),
            tag: None,
        });
    }
    if let Some((path, tag)) = s.rsplit_once(':') {
        if Path::new(path).is_dir() {
            if !valid_tag(tag) {
                return Err(format!("{q}: {tag:?} is not a valid tag"));
            }
            return Ok(Target::Layout {
                path: path.into(),
                tag: Some(tag.to_string()),
            });
        }
    }
    if s.starts_with('/') || s.starts_with('.') || s.starts_with('~') {
        return Err(format!("{q}: no such OCI layout directory"));
    }
    let (host, rest) = match s.split_once('/') {
        Some((h, r)) => (h, Some(r)),
        None => (s, None),
    };
    if !valid_host(host) {
        return Err(format!(
            "{q}: not a directory, and {host:?} is not a registry host (expected HOST[:PORT], e.g. ghcr.io or 127.0.0.1:5000)"
        ));
    }
    let Some(rest) = rest.filter(|r| !r.is_empty()) else {
        return Ok(Target::Registry {
            registry: host.to_string(),
            repo: None,
            reference: None,
        });
    };
    let (repo, reference) = if let Some((repo, digest)) = rest.split_once('@') {
        let d = Digest::parse(digest).map_err(|e| format!("{q}: {e}"))?;
        (repo, Some(Reference::Digest(d)))
    } else {
        match rest.rsplit_once(':') {
            Some((repo, tag)) if !tag.contains('/') => {
                if !valid_tag(tag) {
                    return Err(format!("{q}: {tag:?} is not a valid tag"));
                }
                (repo, Some(Reference::Tag(tag.to_string())))
            }
            _ => (rest, None),
        }
    };
    let mut repo = repo.trim_end_matches('/').to_string();
    if matches!(host, "docker.io" | "index.docker.io") && !repo.contains('/') {
        repo = format!("library/{repo}");
    }
    if !valid_repo_name(&repo) {
        return Err(format!(
            "{q}: {repo:?} is not a valid repository name (lowercase letters, digits, '.', '_', '-', separated by '/')"
        ));
    }
    Ok(Target::Registry {
        registry: host.to_string(),
        repo: Some(repo),
        reference,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_forms() {
        assert_eq!(
            parse("127.0.0.1:5000").unwrap(),
            Target::Registry {
                registry: "127.0.0.1:5000".into(),
                repo: None,
                reference: None
            }
        );
        assert_eq!(
            parse("ghcr.io/eo/products:v1").unwrap(),
            Target::Registry {
                registry: "ghcr.io".into(),
                repo: Some("eo/products".into()),
                reference: Some(Reference::Tag("v1".into()))
            }
        );
        let d = format!("sha256:{}", "a".repeat(64));
        match parse(&format!("localhost:5000/x@{d}")).unwrap() {
            Target::Registry {
                reference: Some(Reference::Digest(g)),
                ..
            } => assert_eq!(g.to_string(), d),
            other => panic!("{other:?}"),
        }
        match parse("docker.io/alpine").unwrap() {
            Target::Registry { repo, .. } => assert_eq!(repo.as_deref(), Some("library/alpine")),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn bad_sources_say_why() {
        for bad in [
            "",
            "notahost/x",
            "/no/such/dir",
            "ghcr.io/UPPER",
            "ghcr.io/x:bad tag",
            "ghcr.io/x@sha256:12",
            "ghmndel:v\n\n2",
            "a\nb.io/x:\r",
            "/no/such\ndir",
        ] {
            let e = parse(bad).unwrap_err();
            assert!(!e.contains('\n'), "{e}");
        }
    }

    #[test]
    fn layout_with_tag() {
        let d = tempfile::tempdir().unwrap();
        let s = format!("{}:v1", d.path().display());
        assert_eq!(
            parse(&s).unwrap(),
            Target::Layout {
                path: d.path().into(),
                tag: Some("v1".into())
            }
        );
    }
}
