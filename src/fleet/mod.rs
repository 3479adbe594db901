//! Fleets: mirrors and pull-through caches in front of the origin registry, configured
//! the way container hosts already configure them — `containers-registries.conf(5)`
//! ([`config`]), containerd's `hosts.toml` ([`hosts`]) and `--mirror HOST[/PREFIX]` —
//! and a [`source::FleetSource`] that asks mirrors first and the origin last.
//!
//! Blobs are named by digest and verified by the read path whoever serves them, so any
//! mirror may serve them. Manifests by tag come from a mirror only where its
//! configuration allows (`pull-from-mirror = "all"|"tag-only"`, capability `resolve`),
//! manifests by digest only where it allows digest pulls (`all`, `digest-only`, `pull`).
//! Listings (tags, catalog, referrers) always go to the origin, which a registries.conf
//! `location` or a hosts.toml `server` may move to another host. A pull-through cache
//! still fetching a blob is waited for ([`fill`]).

pub mod config;
pub mod fill;
pub mod hosts;
pub mod source;

use std::path::{Path, PathBuf};

use thiserror::Error;

/// A bad or refusing mirror configuration.
#[derive(Debug, Error)]
pub enum FleetError {
    #[error("{}{}: {message}", path.display(), line.map(|l| format!(":{l}")).unwrap_or_default())]
    Config {
        path: PathBuf,
        line: Option<usize>,
        message: String,
    },
    #[error("{reference} is blocked by `blocked = true` for prefix {prefix:?} in {}; orasfs will not pull it", file.display())]
    Blocked {
        reference: String,
        prefix: String,
        file: PathBuf,
    },
    #[error("--mirror {0}: expected HOST[:PORT][/PREFIX]")]
    Flag(String),
}

/// What a mirror may be asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Use {
    /// Resolve tags (manifests by tag, and tag HEADs).
    pub tags: bool,
    /// Serve manifests by digest. Blobs may come from any mirror.
    pub digests: bool,
}

/// One mirror as configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MirrorSpec {
    /// `host[:port]`.
    pub host: String,
    /// Repository path prefix on the mirror (no slashes at either end; may be empty).
    pub prefix: String,
    /// `Some(true)` for an `http://` host URL; `None`: loopback means plain HTTP.
    pub plain_http: Option<bool>,
    /// Do not verify its TLS certificate.
    pub insecure: bool,
    /// Extra CA bundles for it.
    pub ca: Vec<PathBuf>,
    /// Headers sent with every request to it (hosts.toml `header`).
    pub headers: Vec<(String, String)>,
    pub usage: Use,
    /// Where it was configured, for messages.
    pub origin: String,
}

impl MirrorSpec {
    /// A mirror from a `host[:port][/prefix]` location (registries.conf, `--mirror`).
    pub fn from_location(
        location: &str,
        insecure: bool,
        usage: Use,
        origin: String,
    ) -> Result<Self, String> {
        if location.contains("://") {
            return Err(format!(
                "location {location:?} must be HOST[:PORT][/PATH], without a scheme"
            ));
        }
        let (host, prefix) = location.split_once('/').unwrap_or((location, ""));
        if host.is_empty() || host.contains(char::is_whitespace) {
            return Err(format!("location {location:?} has no host"));
        }
        Ok(Self {
            host: host.to_string(),
            prefix: prefix.trim_matches('/').to_string(),
            plain_http: None,
            insecure,
            ca: Vec::new(),
            headers: Vec::new(),
            usage,
            origin,
        })
    }

    /// The repository on this mirror for `rest` (empty or `/path` after the matched
    /// prefix).
    pub fn repo(&self, rest: &str) -> String {
        let rest = rest.trim_start_matches('/');
        match (self.prefix.is_empty(), rest.is_empty()) {
            (true, _) => rest.to_string(),
            (false, true) => self.prefix.clone(),
            (false, false) => format!("{}/{rest}", self.prefix),
        }
    }
}

/// Where mirror configuration comes from (the mount flags).
#[derive(Debug, Clone, Default)]
pub struct Settings {
    /// `--registries-conf FILE`: this file only, instead of podman's defaults.
    pub registries_conf: Option<PathBuf>,
    /// `--hosts-dir DIR`, instead of `/etc/containerd/certs.d`.
    pub hosts_dir: Option<PathBuf>,
    /// `--mirror HOST[/PREFIX]`, in order.
    pub mirrors: Vec<String>,
    /// `$HOME`, for the per-user registries.conf.
    pub home: Option<PathBuf>,
}

/// The mirror configuration that applies to one origin registry.
#[derive(Debug, Clone, Default)]
pub struct Plan {
    registry: String,
    cli: Vec<MirrorSpec>,
    entries: Vec<config::Entry>,
    hosts: Vec<MirrorSpec>,
    /// hosts.toml `server`, when it moves the origin.
    server: Option<MirrorSpec>,
}

impl Plan {
    /// Read what applies to `registry` from the flags and files.
    pub fn load(settings: &Settings, registry: &str) -> Result<Plan, FleetError> {
        let cli = settings
            .mirrors
            .iter()
            .map(|m| {
                MirrorSpec::from_location(
                    m,
                    false,
                    Use {
                        tags: false,
                        digests: true,
                    },
                    format!("--mirror {m}"),
                )
                .map_err(|_| FleetError::Flag(m.clone()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let files = match &settings.registries_conf {
            Some(f) => {
                // Any readable file will do (`/dev/null`: no entries, and no defaults).
                let problem = match std::fs::metadata(f) {
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => Some("no such file"),
                    Err(_) => None, // reading it says what is wrong
                    Ok(m) if m.is_dir() => Some("is a directory, not a file"),
                    Ok(_) => None,
                };
                if let Some(p) = problem {
                    return Err(FleetError::Config {
                        path: f.clone(),
                        line: None,
                        message: format!("{p} (--registries-conf)"),
                    });
                }
                vec![f.clone()]
            }
            None => config::default_files(settings.home.as_deref()),
        };
        let host = strip_default_host(registry);
        let entries = config::load(&files)?
            .into_iter()
            .filter(|e| {
                e.matches(&format!("{host}/x"))
                    || e.prefix.split('/').next() == Some(host)
                    || e.prefix == host
            })
            .collect();
        if let Some(d) = settings.hosts_dir.as_ref().filter(|d| !d.is_dir()) {
            return Err(FleetError::Config {
                path: d.clone(),
                line: None,
                message: match d.exists() {
                    true => "is not a directory (--hosts-dir)".into(),
                    false => "no such directory (--hosts-dir)".into(),
                },
            });
        }
        let dir = settings
            .hosts_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from("/etc/containerd/certs.d"));
        let hosts = hosts::load(&dir, registry)?;
        Ok(Plan {
            registry: registry.to_string(),
            cli,
            entries,
            hosts: hosts.mirrors,
            server: hosts.server,
        })
    }

    /// A plan from already-parsed parts (tests).
    pub fn from_parts(
        registry: &str,
        cli: Vec<MirrorSpec>,
        entries: Vec<config::Entry>,
        hosts: Vec<MirrorSpec>,
    ) -> Plan {
        Plan {
            registry: registry.to_string(),
            cli,
            entries,
            hosts,
            server: None,
        }
    }

    /// This plan with a hosts.toml `server` that moves the origin (tests).
    pub fn with_server(mut self, server: Option<MirrorSpec>) -> Plan {
        self.server = server;
        self
    }

    /// Where `repo` is pulled from instead of the origin, and its name there: the
    /// registries.conf `location` of its entry when that is not the prefix, else a
    /// hosts.toml `server` naming another host. `None` pulls it from the origin.
    pub fn relocate(&self, repo: Option<&str>) -> Option<(&MirrorSpec, String)> {
        let host = strip_default_host(&self.registry);
        let entry = match repo {
            Some(r) => self.entry(r),
            None => self
                .entries
                .iter()
                .find(|e| e.prefix == host)
                .map(|e| (e, String::new())),
        };
        match entry {
            Some((e, rest)) if e.moved.is_some() => e.moved.as_ref().map(|m| (m, m.repo(&rest))),
            _ => self.server.as_ref().map(|s| {
                (
                    s,
                    s.repo(&repo.map(|r| format!("/{r}")).unwrap_or_default()),
                )
            }),
        }
    }

    /// Every host that may replace the origin for some repository.
    pub fn locations(&self) -> impl Iterator<Item = &MirrorSpec> {
        self.entries
            .iter()
            .filter_map(|e| e.moved.as_ref())
            .chain(self.server.iter())
    }

    /// Every mirror that may be asked for some repository.
    pub fn all(&self) -> impl Iterator<Item = &MirrorSpec> {
        self.cli
            .iter()
            .chain(self.entries.iter().flat_map(|e| e.mirrors.iter()))
            .chain(self.hosts.iter())
    }

    /// The registries.conf entry for `repo`: the longest matching prefix.
    fn entry(&self, repo: &str) -> Option<(&config::Entry, String)> {
        let reference = format!("{}/{repo}", strip_default_host(&self.registry));
        self.entries
            .iter()
            .filter(|e| e.matches(&reference))
            .max_by_key(|e| e.weight())
            .map(|e| (e, e.rest(&reference).to_string()))
    }

    /// The mirrors for `repo`, in the order to try them, each with the repository name
    /// to ask it for; an error when the repository is blocked.
    pub fn route(&self, repo: &str) -> Result<Vec<(&MirrorSpec, String)>, FleetError> {
        let mut out: Vec<(&MirrorSpec, String)> = self
            .cli
            .iter()
            .map(|m| (m, m.repo(&format!("/{repo}"))))
            .collect();
        if let Some((e, rest)) = self.entry(repo) {
            if e.blocked {
                return Err(FleetError::Blocked {
                    reference: format!("{}/{repo}", self.registry),
                    prefix: e.prefix.clone(),
                    file: e.file.clone(),
                });
            }
            out.extend(e.mirrors.iter().map(|m| (m, m.repo(&rest))));
        }
        out.extend(self.hosts.iter().map(|m| (m, m.repo(&format!("/{repo}")))));
        Ok(out)
    }

    /// Refuse a blocked registry or repository before mounting.
    pub fn check(&self, repo: Option<&str>) -> Result<(), FleetError> {
        let host = strip_default_host(&self.registry);
        for e in &self.entries {
            let whole_host = e.prefix == host
                || e.prefix
                    .strip_prefix("*.")
                    .is_some_and(|d| host.ends_with(&format!(".{d}")));
            let hit = whole_host || repo.is_some_and(|r| e.matches(&format!("{host}/{r}")));
            if e.blocked && hit {
                return Err(FleetError::Blocked {
                    reference: match repo {
                        Some(r) => format!("{}/{r}", self.registry),
                        None => self.registry.clone(),
                    },
                    prefix: e.prefix.clone(),
                    file: e.file.clone(),
                });
            }
        }
        Ok(())
    }
}

/// Docker Hub's aliases as one name.
pub(crate) fn strip_default_host(h: &str) -> &str {
    match h {
        "index.docker.io" | "registry-1.docker.io" => "docker.io",
        other => other,
    }
}

/// A TOML syntax or type error as `FILE:LINE: message`, on one line.
pub(crate) fn toml_error(path: &Path, text: &str, e: &toml::de::Error) -> FleetError {
    let line = e.span().map(|s| line_at(text, s.start));
    FleetError::Config {
        path: path.to_path_buf(),
        line,
        message: e.message().trim().replace('\n', "; "),
    }
}

/// A parsed configuration, its warnings logged.
pub(crate) fn logged<T>((value, warnings): (T, Vec<String>)) -> T {
    for w in warnings {
        log::warn!("{w}");
    }
    value
}

/// The 1-based line of byte `offset` of `text`.
pub(crate) fn line_at(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset.min(text.len())]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

/// Parse a configuration file's `text` as `T`, with the keys `T` has no field for, as
/// paths (`registry[1].mirror[0].pull-from-mirorr`), so that a misspelt key is reported
/// instead of silently doing nothing.
pub(crate) fn parse_toml<T: serde::de::DeserializeOwned>(
    path: &Path,
    text: &str,
) -> Result<(T, Vec<String>), FleetError> {
    let de = toml::Deserializer::parse(text).map_err(|e| toml_error(path, text, &e))?;
    let mut unknown = Vec::new();
    let value = serde_ignored::deserialize(de, |p| unknown.push(key_path(&p)))
        .map_err(|e| toml_error(path, text, &e))?;
    Ok((value, unknown))
}

/// A key's path as a user wrote it: tables by dots, arrays of tables by index.
fn key_path(p: &serde_ignored::Path) -> String {
    use serde_ignored::Path as P;
    match p {
        P::Root => String::new(),
        P::Seq { parent, index } => format!("{}[{index}]", key_path(parent)),
        // The field toml::Spanned wraps its value in.
        P::Map { parent, key } if key.starts_with("$__serde_spanned") => key_path(parent),
        P::Map { parent, key } => match key_path(parent) {
            p if p.is_empty() => key.clone(),
            p => format!("{p}.{key}"),
        },
        P::Some { parent } | P::NewtypeStruct { parent } | P::NewtypeVariant { parent } => {
            key_path(parent)
        }
    }
}

#[cfg(test)]
mod tests;
