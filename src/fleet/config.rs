//! `containers-registries.conf(5)` version 2: `[[registry]]` tables with `prefix`,
//! `location`, `insecure`, `blocked`, `mirror-by-digest-only` and `[[registry.mirror]]`
//! tables with `location`, `insecure` and `pull-from-mirror`. A `location` other than the
//! `prefix` moves the origin: `prefix/REST` is pulled from `location/REST`. Drop-in files override
//! entries of the same prefix, as podman does. The file's other settings
//! (`unqualified-search-registries`, `[aliases]`, …) are podman's and are passed over; a
//! key inside a `[[registry]]` or `[[registry.mirror]]` that is none of the above is
//! logged as a warning with its path, as podman does, since a misspelt key silently
//! changes which mirror serves what.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::{FleetError, MirrorSpec, Use};

#[derive(Deserialize)]
struct File {
    #[serde(default)]
    registry: Vec<toml::Spanned<Registry>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "kebab-case")]
struct Registry {
    prefix: Option<String>,
    location: Option<String>,
    #[serde(default)]
    insecure: bool,
    #[serde(default)]
    blocked: bool,
    #[serde(default)]
    mirror_by_digest_only: bool,
    #[serde(default)]
    mirror: Vec<toml::Spanned<Mirror>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "kebab-case")]
struct Mirror {
    location: String,
    #[serde(default)]
    insecure: bool,
    #[serde(default)]
    pull_from_mirror: PullFromMirror,
}

#[derive(Deserialize, Default, Clone, Copy)]
#[serde(rename_all = "kebab-case")]
enum PullFromMirror {
    #[default]
    All,
    DigestOnly,
    TagOnly,
}

/// One `[[registry]]` entry, checked.
#[derive(Debug, Clone)]
pub struct Entry {
    /// What it matches: `host[:port][/namespace]`, or `*.domain`.
    pub prefix: String,
    pub location: String,
    pub insecure: bool,
    pub blocked: bool,
    pub mirrors: Vec<MirrorSpec>,
    /// Where the prefix's repositories are pulled from when `location` is not the prefix.
    pub moved: Option<MirrorSpec>,
    /// `FILE:LINE`-less name of the file, for messages.
    pub file: PathBuf,
}

impl Entry {
    /// Whether `reference` (`host/repo`) falls under this entry.
    pub fn matches(&self, reference: &str) -> bool {
        if let Some(domain) = self.prefix.strip_prefix("*.") {
            let host = reference.split('/').next().unwrap_or(reference);
            return host.ends_with(&format!(".{domain}"));
        }
        reference == self.prefix
            || reference
                .strip_prefix(self.prefix.as_str())
                .is_some_and(|rest| rest.starts_with('/'))
    }

    /// How specific the match is: the longest prefix wins.
    pub fn weight(&self) -> usize {
        self.prefix.len()
    }

    /// What follows the prefix in `reference` (empty or starting with `/`).
    pub fn rest<'a>(&self, reference: &'a str) -> &'a str {
        if self.prefix.starts_with("*.") {
            return reference.find('/').map_or("", |i| &reference[i..]);
        }
        &reference[self.prefix.len().min(reference.len())..]
    }
}

/// Parse one registries.conf text; `path` names it in errors.
pub fn parse(path: &Path, text: &str) -> Result<Vec<Entry>, FleetError> {
    parse_with_warnings(path, text).map(super::logged)
}

/// [`parse`], with a warning for each key in a `[[registry]]` or `[[registry.mirror]]`
/// that orasfs does not know.
pub fn parse_with_warnings(
    path: &Path,
    text: &str,
) -> Result<(Vec<Entry>, Vec<String>), FleetError> {
    let (file, unknown): (File, Vec<String>) = super::parse_toml(path, text)?;
    let warnings = unknown
        .iter()
        .filter(|k| k.starts_with("registry["))
        .map(|key| {
            format!(
                "{}: `{key}` is not a registries.conf key; ignored",
                path.display()
            )
        })
        .collect();
    let mut out = Vec::new();
    for spanned in file.registry {
        let line = super::line_at(text, spanned.span().start);
        let err = |message: String| FleetError::Config {
            path: path.to_path_buf(),
            line: Some(line),
            message,
        };
        let r = spanned.into_inner();
        let (prefix, location) = match (r.prefix, r.location) {
            (Some(p), l) => (p.clone(), l.unwrap_or(p)),
            (None, Some(l)) => (l.clone(), l),
            (None, None) => {
                return Err(err("a [[registry]] has neither prefix nor location".into()))
            }
        };
        let mirrors = r
            .mirror
            .into_iter()
            .map(|spanned| {
                let mirror_line = super::line_at(text, spanned.span().start);
                let m = spanned.into_inner();
                let (tags, digests) = match (r.mirror_by_digest_only, m.pull_from_mirror) {
                    (true, _) | (false, PullFromMirror::DigestOnly) => (false, true),
                    (false, PullFromMirror::All) => (true, true),
                    (false, PullFromMirror::TagOnly) => (true, false),
                };
                MirrorSpec::from_location(
                    &m.location,
                    m.insecure,
                    Use { tags, digests },
                    format!("{} (mirror of {prefix})", path.display()),
                )
                .map_err(|message| FleetError::Config {
                    path: path.to_path_buf(),
                    line: Some(mirror_line),
                    message,
                })
            })
            .collect::<Result<Vec<_>, FleetError>>()?;
        let prefix = prefix.trim_end_matches('/').to_string();
        let location = location.trim_end_matches('/').to_string();
        let moved = if location != prefix && !prefix.starts_with("*.") {
            let all = Use {
                tags: true,
                digests: true,
            };
            let spec = MirrorSpec::from_location(
                &location,
                r.insecure,
                all,
                format!("{} (location of {prefix})", path.display()),
            )
            .map_err(err)?;
            Some(spec)
        } else {
            None
        };
        out.push(Entry {
            prefix,
            location,
            insecure: r.insecure,
            blocked: r.blocked,
            mirrors,
            moved,
            file: path.to_path_buf(),
        });
    }
    Ok((out, warnings))
}

/// Read a main file and then its drop-ins (`*.conf`, in name order); an entry in a later
/// file replaces an earlier one with the same prefix. Missing files are skipped.
pub fn load(files: &[PathBuf]) -> Result<Vec<Entry>, FleetError> {
    let mut all: Vec<Entry> = Vec::new();
    for f in files {
        let text = match std::fs::read_to_string(f) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => {
                return Err(FleetError::Config {
                    path: f.clone(),
                    line: None,
                    message: e.to_string(),
                })
            }
        };
        for e in parse(f, &text)? {
            all.retain(|old| old.prefix != e.prefix);
            all.push(e);
        }
    }
    Ok(all)
}

/// The files podman reads: `$HOME/.config/containers/registries.conf` if it exists, else
/// `/etc/containers/registries.conf`; then the `registries.conf.d/*.conf` drop-ins of
/// `/etc/containers` and of `$HOME/.config/containers`.
pub fn default_files(home: Option<&Path>) -> Vec<PathBuf> {
    let etc = Path::new("/etc/containers");
    let user = home.map(|h| h.join(".config/containers"));
    let main = match &user {
        Some(u) if u.join("registries.conf").is_file() => u.join("registries.conf"),
        _ => etc.join("registries.conf"),
    };
    let mut files = vec![main];
    for dir in std::iter::once(etc.to_path_buf()).chain(user) {
        let mut drop_ins: Vec<PathBuf> = std::fs::read_dir(dir.join("registries.conf.d"))
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "conf"))
            .collect();
        drop_ins.sort();
        files.extend(drop_ins);
    }
    files
}
