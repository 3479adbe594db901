//! containerd's `hosts.toml` (`/etc/containerd/certs.d/HOST/hosts.toml`, `HOST_PORT_`
//! for a host with a port, or `_default/hosts.toml`): `[host."URL"]` tables, in file
//! order, with `capabilities` (`pull` lets a host serve blobs and manifests by digest,
//! `resolve` lets it resolve tags), `skip_verify`, `ca` (one path or several, relative to
//! the file), `[host."URL".header]` and `override_path`. `server` names the registry
//! asked after the hosts; when it names another host than SOURCE's, that host replaces
//! the origin (the way to use only a mirror), with the file's top-level `ca`,
//! `skip_verify` and `header`.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use url::Url;

use super::{FleetError, MirrorSpec, Use};

#[derive(Deserialize)]
struct File {
    server: Option<String>,
    #[serde(flatten)]
    top: Host,
    #[serde(default)]
    host: toml::Table,
}

#[derive(Deserialize, Default)]
struct Host {
    capabilities: Option<Vec<String>>,
    #[serde(default)]
    skip_verify: bool,
    ca: Option<Paths>,
    #[serde(default)]
    override_path: bool,
    #[serde(default)]
    header: toml::Table,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Paths {
    One(PathBuf),
    Many(Vec<PathBuf>),
}

/// What a hosts.toml says for one registry.
#[derive(Debug, Clone, Default)]
pub struct Hosts {
    /// The mirrors, in file order.
    pub mirrors: Vec<MirrorSpec>,
    /// `server`, when it names another host than the registry's own: asked instead of it.
    pub server: Option<MirrorSpec>,
}

/// The keys of a host table (and of the file's top level) that orasfs reads.
const HOST_KEYS: &[&str] = &[
    "capabilities",
    "skip_verify",
    "ca",
    "override_path",
    "header",
];
/// containerd's keys that orasfs does not act on.
const UNSUPPORTED_KEYS: &[&str] = &["client", "dial_timeout"];

/// Parse one hosts.toml for `registry`; unknown or unsupported keys are logged.
pub fn parse(path: &Path, text: &str, registry: &str) -> Result<Hosts, FleetError> {
    parse_with_warnings(path, text, registry).map(super::logged)
}

/// [`parse`], with a warning for each key orasfs does not act on: containerd's `client`
/// and `dial_timeout`, and keys neither knows (a misspelt `capabilites` would otherwise
/// silently give a host every capability).
pub fn parse_with_warnings(
    path: &Path,
    text: &str,
    registry: &str,
) -> Result<(Hosts, Vec<String>), FleetError> {
    let file: File = toml::from_str(text).map_err(|e| super::toml_error(path, text, &e))?;
    let mut warnings = Vec::new();
    let mut warn_unknown = |table: &toml::Table, place: &str, extra: &[&str]| {
        for key in table.keys() {
            let why = if UNSUPPORTED_KEYS.contains(&key.as_str()) {
                "is not supported by orasfs"
            } else if HOST_KEYS.contains(&key.as_str()) || extra.contains(&key.as_str()) {
                continue;
            } else {
                "is not a hosts.toml key"
            };
            warnings.push(format!("{}: {place}`{key}` {why}; ignored", path.display()));
        }
    };
    if let Ok(top) = text.parse::<toml::Table>() {
        warn_unknown(&top, "", &["server", "host"]);
    }
    for (key, value) in &file.host {
        if let Some(t) = value.as_table() {
            warn_unknown(t, &format!("[host.{key:?}] "), &[]);
        }
    }
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut out = Hosts::default();
    if let Some(server) = &file.server {
        let spec =
            spec(dir, server, &file.top, format!("{} server", path.display())).map_err(|m| {
                FleetError::Config {
                    path: path.to_path_buf(),
                    line: key_line(text, |l| l.starts_with("server")),
                    message: format!("server = {server:?}: {m}"),
                }
            })?;
        if super::strip_default_host(&spec.host) != super::strip_default_host(registry)
            || !spec.prefix.is_empty()
        {
            out.server = Some(spec);
        }
    }
    for (key, value) in file.host {
        let err = |message: String| FleetError::Config {
            path: path.to_path_buf(),
            line: key_line(text, |l| {
                l.starts_with("[host.") && l.contains(key.as_str())
            }),
            message: format!("[host.{key:?}]: {message}"),
        };
        let h: Host = value
            .try_into()
            .map_err(|e: toml::de::Error| err(e.message().to_string()))?;
        let s = spec(dir, &key, &h, format!("{} [host.{key:?}]", path.display())).map_err(err)?;
        if s.usage.tags || s.usage.digests {
            out.mirrors.push(s);
        }
    }
    Ok((out, warnings))
}

/// The 1-based number of the first line of `text` that, trimmed, satisfies `is`.
fn key_line(text: &str, is: impl Fn(&str) -> bool) -> Option<usize> {
    text.lines().position(|l| is(l.trim_start())).map(|i| i + 1)
}

/// A host from its URL (`https://` when it has no scheme) and its table.
fn spec(dir: &Path, key: &str, h: &Host, origin: String) -> Result<MirrorSpec, String> {
    let url = if key.contains("://") {
        key.to_string()
    } else {
        format!("https://{key}")
    };
    let u = Url::parse(&url).map_err(|e| e.to_string())?;
    let host = u.host_str().ok_or("no host")?;
    let host = match u.port() {
        Some(p) => format!("{host}:{p}"),
        None => host.to_string(),
    };
    let caps = h
        .capabilities
        .clone()
        .unwrap_or_else(|| ["pull", "resolve", "push"].map(String::from).to_vec());
    let has = |c: &str| caps.iter().any(|x| x == c);
    let ca = match &h.ca {
        Some(Paths::One(p)) => vec![p.clone()],
        Some(Paths::Many(v)) => v.clone(),
        None => Vec::new(),
    };
    let mut headers = Vec::new();
    for (name, value) in &h.header {
        let values: Vec<&str> = match value {
            toml::Value::String(s) => vec![s.as_str()],
            toml::Value::Array(a) => a.iter().filter_map(|v| v.as_str()).collect(),
            _ => {
                return Err(format!(
                    "header {name:?} is neither a string nor a list of them"
                ))
            }
        };
        headers.extend(values.into_iter().map(|v| (name.clone(), v.to_string())));
    }
    Ok(MirrorSpec {
        host,
        prefix: repo_prefix(u.path(), h.override_path)?,
        plain_http: Some(u.scheme() == "http"),
        insecure: h.skip_verify,
        ca: ca.into_iter().map(|p| dir.join(p)).collect(),
        headers,
        usage: Use {
            tags: has("resolve"),
            digests: has("pull"),
        },
        origin,
    })
}

/// The repository prefix a host URL's path gives. containerd asks `URL/v2/REPO/…`, or
/// with `override_path` `URL/REPO/…`: orasfs always asks `HOST/v2/…`, so it follows a
/// path only where that comes to the same (an empty path or `/v2`, or with
/// `override_path` `/v2/PREFIX`, as for a Harbor proxy-cache project).
fn repo_prefix(path: &str, override_path: bool) -> Result<String, String> {
    let p = path.trim_matches('/');
    match (
        override_path,
        p.strip_prefix("v2")
            .filter(|r| r.is_empty() || r.starts_with('/')),
    ) {
        (_, _) if p.is_empty() => Ok(String::new()),
        (true, Some(rest)) => Ok(rest.trim_matches('/').to_string()),
        (false, Some("")) => Ok(String::new()),
        (true, None) => Err(format!(
            "override_path with the API root /{p} is not supported: orasfs asks HOST/v2/…"
        )),
        (false, _) => Err(format!(
            "a host URL with a path (/{p}, API root /{p}/v2) is not supported: orasfs asks \
             HOST/v2/…; for a registry that serves the API under /v2/PREFIX, write \
             [host.\"https://HOST/v2/PREFIX\"] with override_path = true"
        )),
    }
}

/// `DIR/HOST_PORT_/hosts.toml` or `DIR/HOST:PORT/hosts.toml` for `registry`, else
/// `DIR/_default/hosts.toml`, the first that exists (containerd's order).
pub fn file_for(dir: &Path, registry: &str) -> Option<PathBuf> {
    let underscored = registry
        .rsplit_once(':')
        .filter(|(h, p)| !h.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
        .map(|(h, p)| format!("{h}_{p}_"));
    let names: Vec<&str> = underscored
        .iter()
        .map(String::as_str)
        .chain([registry, "_default"])
        .collect();
    names
        .into_iter()
        .map(|h| dir.join(h).join("hosts.toml"))
        .find(|p| p.is_file())
}

/// Read the hosts.toml for `registry` under `dir`, if there is one.
pub fn load(dir: &Path, registry: &str) -> Result<Hosts, FleetError> {
    let Some(path) = file_for(dir, registry) else {
        return Ok(Hosts::default());
    };
    let text = std::fs::read_to_string(&path).map_err(|e| FleetError::Config {
        path: path.clone(),
        line: None,
        message: e.to_string(),
    })?;
    parse(&path, &text, registry)
}
