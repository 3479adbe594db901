//! containerd's `hosts.toml` (`/etc/containerd/certs.d/HOST/hosts.toml`, or
//! `_default/hosts.toml`): `[host."URL"]` tables, in file order, with `capabilities`
//! (`pull` lets a host serve blobs and manifests by digest, `resolve` lets it resolve
//! tags), `skip_verify` and `ca`. `server` names the origin's own URL; orasfs already
//! knows the origin from SOURCE and only checks that `server` names the same host.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use url::Url;

use super::{FleetError, MirrorSpec, Use};

#[derive(Deserialize)]
struct File {
    server: Option<String>,
    #[serde(default)]
    host: toml::Table,
}

#[derive(Deserialize)]
struct Host {
    #[serde(default = "default_capabilities")]
    capabilities: Vec<String>,
    #[serde(default)]
    skip_verify: bool,
    ca: Option<Ca>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Ca {
    One(PathBuf),
    Many(Vec<PathBuf>),
}

fn default_capabilities() -> Vec<String> {
    vec!["pull".into(), "resolve".into(), "push".into()]
}

/// The mirrors a hosts.toml names for `registry`, in file order.
pub fn parse(path: &Path, text: &str, registry: &str) -> Result<Vec<MirrorSpec>, FleetError> {
    let err = |message: String| FleetError::Config {
        path: path.to_path_buf(),
        line: None,
        message,
    };
    let file: File = toml::from_str(text).map_err(|e| super::toml_error(path, text, &e))?;
    if let Some(server) = &file.server {
        let host = Url::parse(server)
            .ok()
            .and_then(|u| {
                let h = u.host_str()?.to_string();
                Some(match u.port() {
                    Some(p) => format!("{h}:{p}"),
                    None => h,
                })
            })
            .ok_or_else(|| err(format!("server = {server:?} is not a URL")))?;
        if super::strip_default_host(&host) != super::strip_default_host(registry) {
            log::warn!(
                "{}: server = {server:?} names another host than {registry}; orasfs asks \
                 {registry} as the origin",
                path.display()
            );
        }
    }
    let mut out = Vec::new();
    for (key, value) in file.host {
        let h: Host = value
            .try_into()
            .map_err(|e: toml::de::Error| err(format!("[host.{key:?}]: {}", e.message())))?;
        let url = if key.contains("://") {
            key.clone()
        } else {
            format!("https://{key}")
        };
        let u = Url::parse(&url).map_err(|e| err(format!("[host.{key:?}]: {e}")))?;
        let host = u
            .host_str()
            .ok_or_else(|| err(format!("[host.{key:?}]: no host")))?;
        let host = match u.port() {
            Some(p) => format!("{host}:{p}"),
            None => host.to_string(),
        };
        let path_part = u.path().trim_matches('/');
        let path_part = path_part.strip_suffix("v2").unwrap_or(path_part);
        if !path_part.trim_matches('/').is_empty() {
            return Err(err(format!(
                "[host.{key:?}]: a host URL with a path is not supported by orasfs"
            )));
        }
        let pull = h.capabilities.iter().any(|c| c == "pull");
        let resolve = h.capabilities.iter().any(|c| c == "resolve");
        if !pull && !resolve {
            continue;
        }
        let ca = match h.ca {
            Some(Ca::One(p)) => Some(p),
            Some(Ca::Many(v)) => v.into_iter().next(),
            None => None,
        };
        out.push(MirrorSpec {
            host,
            prefix: String::new(),
            plain_http: Some(u.scheme() == "http"),
            insecure: h.skip_verify,
            ca,
            usage: Use {
                tags: resolve,
                digests: pull,
            },
            origin: format!("{} [host.{key:?}]", path.display()),
        });
    }
    Ok(out)
}

/// `DIR/HOST/hosts.toml` for `registry`, else `DIR/_default/hosts.toml`, if either exists.
pub fn file_for(dir: &Path, registry: &str) -> Option<PathBuf> {
    [registry, "_default"]
        .iter()
        .map(|h| dir.join(h).join("hosts.toml"))
        .find(|p| p.is_file())
}

/// Read the hosts.toml for `registry` under `dir`, if there is one.
pub fn load(dir: &Path, registry: &str) -> Result<Vec<MirrorSpec>, FleetError> {
    let Some(path) = file_for(dir, registry) else {
        return Ok(Vec::new());
    };
    let text = std::fs::read_to_string(&path).map_err(|e| FleetError::Config {
        path: path.clone(),
        line: None,
        message: e.to_string(),
    })?;
    parse(&path, &text, registry)
}
