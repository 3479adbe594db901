//! The one way to start a registry: a real `docker-registry` (CNCF distribution) with the
//! configuration a test asks for — plain, htpasswd or token auth, TLS, a catalog page
//! limit, pull-through — on a free loopback port, killed on drop. Its JSON log tells what
//! it served ([`Registry::requests`]). For faults, put a [`super::proxy::FaultProxy`] in
//! front of it (`FaultProxy::start(reg.addr())`).
//!
//! Pushing goes through one [`Pusher`] (the distribution API with whatever auth it is
//! given); a registry's own push methods use an anonymous one.

use std::collections::{BTreeMap, HashSet};
use std::fs::{self, File};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{json, Value};
use tempfile::TempDir;

use super::{sha256, wait_for, OCI_EMPTY, OCI_MANIFEST, TITLE};

/// How the registry authenticates.
pub enum Auth {
    None,
    /// A bcrypt htpasswd file.
    Htpasswd(PathBuf),
    /// A token service.
    Token {
        realm: String,
        service: String,
        issuer: String,
        bundle: PathBuf,
    },
}

/// What to start; `Config::default()` is a plain registry over HTTP.
pub struct Config {
    pub auth: Auth,
    /// `(certificate, key)` PEM files.
    pub tls: Option<(PathBuf, PathBuf)>,
    /// distribution's `catalog.maxentries`.
    pub catalog_max: Option<usize>,
    /// Pull-through cache mode: `proxy.remoteurl`, and the user and password it logs in
    /// to the remote with.
    pub proxy: Option<(String, Option<(String, String)>)>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            auth: Auth::None,
            tls: None,
            catalog_max: None,
            proxy: None,
        }
    }
}

/// A running `docker-registry` with its own config, storage and log; killed on drop.
pub struct Registry {
    child: Child,
    addr: String,
    scheme: &'static str,
    log: PathBuf,
    config: PathBuf,
    storage: PathBuf,
    pusher: Pusher,
    _dir: TempDir,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind a free port")
        .local_addr()
        .expect("local addr")
        .port()
}

/// The config file for `cfg`, serving on `addr` from `storage`. The log is JSON (one
/// object a line) so that [`Registry::requests`] can read what was served; at debug level,
/// so that it shows when each request began ([`Registry::settle`]).
fn config_yaml(cfg: &Config, addr: &str, storage: &Path) -> String {
    let mut yaml = format!(
        "version: 0.1\n\
         log:\n  level: debug\n  formatter: json\n  accesslog:\n    disabled: true\n\
         storage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\n  \
         maintenance:\n    uploadpurging:\n      enabled: false\n\
         http:\n  addr: {addr}\n",
        storage.display()
    );
    if let Some((cert, key)) = &cfg.tls {
        yaml.push_str(&format!(
            "  tls:\n    certificate: {}\n    key: {}\n",
            cert.display(),
            key.display()
        ));
    }
    match &cfg.auth {
        Auth::None => {}
        Auth::Htpasswd(p) => yaml.push_str(&format!(
            "auth:\n  htpasswd:\n    realm: orasfs-test\n    path: {}\n",
            p.display()
        )),
        Auth::Token {
            realm,
            service,
            issuer,
            bundle,
        } => yaml.push_str(&format!(
            "auth:\n  token:\n    realm: {realm}\n    service: {service}\n    issuer: {issuer}\n    rootcertbundle: {}\n",
            bundle.display()
        )),
    }
    if let Some(n) = cfg.catalog_max {
        yaml.push_str(&format!("catalog:\n  maxentries: {n}\n"));
    }
    if let Some((remote, login)) = &cfg.proxy {
        yaml.push_str(&format!("proxy:\n  remoteurl: {remote}\n"));
        if let Some((user, password)) = login {
            yaml.push_str(&format!("  username: {user}\n  password: {password}\n"));
        }
    }
    yaml
}

impl Registry {
    /// A plain registry (no auth, HTTP) on a free loopback port, answering `GET /v2/`.
    pub fn start() -> Registry {
        Self::with(&Config::default())
    }

    /// A registry configured as `cfg` says.
    pub fn with(cfg: &Config) -> Registry {
        let mut last = String::new();
        // Another process may take the probed port before the registry binds it.
        for _ in 0..5 {
            match Self::try_start(cfg) {
                Ok(d) => return d,
                Err(e) => last = e,
            }
        }
        panic!("docker-registry did not start: {last}");
    }

    fn try_start(cfg: &Config) -> Result<Registry, String> {
        // Storage on tmpfs where there is one: distribution syncs every write, and a disk
        // makes a thousand tag pushes take many seconds.
        let mut b = tempfile::Builder::new();
        b.prefix("orasfs-registry-");
        let dir = match Path::new("/dev/shm").is_dir() {
            true => b.tempdir_in("/dev/shm").or_else(|_| b.tempdir()),
            false => b.tempdir(),
        }
        .map_err(|e| e.to_string())?;
        let addr = format!("127.0.0.1:{}", free_port());
        let storage = dir.path().join("storage");
        fs::create_dir(&storage).map_err(|e| e.to_string())?;
        let config = dir.path().join("config.yml");
        fs::write(&config, config_yaml(cfg, &addr, &storage)).map_err(|e| e.to_string())?;
        let log = dir.path().join("registry.log");
        let child = spawn(&config, &log)?;
        let scheme = if cfg.tls.is_some() { "https" } else { "http" };
        let mut d = Registry {
            child,
            pusher: Pusher::anonymous(&format!("{scheme}://{addr}")),
            addr,
            scheme,
            log,
            config,
            storage,
            _dir: dir,
        };
        d.wait_ready()?;
        Ok(d)
    }

    /// Kill the registry (its storage stays); [`Registry::restart`] brings it back.
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Start the registry again on the same address, storage and log.
    pub fn restart(&mut self) {
        self.stop();
        self.child = spawn(&self.config, &self.log).expect("restart docker-registry");
        self.wait_ready()
            .expect("restarted docker-registry answers");
    }

    /// Wait until `GET /v2/` answers 200 or 401 (10 s at most).
    fn wait_ready(&mut self) -> Result<(), String> {
        let probe = reqwest::blocking::Client::builder()
            .danger_accept_invalid_certs(true)
            .no_proxy()
            .timeout(Duration::from_secs(5))
            .build()
            .map_err(|e| e.to_string())?;
        let url = self.url("/v2/");
        let up = wait_for(Duration::from_secs(10), || {
            if let Ok(Some(s)) = self.child.try_wait() {
                return Some(Err(format!("exited with {s}: {}", self.log_text())));
            }
            match probe.get(&url).send() {
                Ok(r) if r.status().is_success() || r.status().as_u16() == 401 => Some(Ok(())),
                _ => None,
            }
        });
        match up {
            Some(r) => r,
            None => {
                let _ = self.child.kill();
                let _ = self.child.wait();
                Err(format!(
                    "no answer on {url} within 10 s: {}",
                    self.log_text()
                ))
            }
        }
    }

    /// `127.0.0.1:PORT`.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// `SCHEME://127.0.0.1:PORT<path>`.
    pub fn url(&self, path: &str) -> String {
        format!("{}://{}{path}", self.scheme, self.addr)
    }

    /// Where the registry keeps the bytes of blob `sha256:<hex>` (the file it serves).
    pub fn blob_data_path(&self, hex: &str) -> PathBuf {
        self.storage
            .join("docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data")
    }

    /// The registry's whole log.
    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Wait until the registry has logged the completion of every request it began.
    /// distribution logs a request once its response is written, so the last lines may
    /// lag behind what a client has read; a request's start is logged before its first
    /// byte is sent (10 s at most, then panics).
    pub fn settle(&self) {
        settle_log(self);
    }

    /// Every line of the log, as JSON.
    fn log_lines(&self) -> Vec<Value> {
        let Ok(f) = File::open(&self.log) else {
            return Vec::new();
        };
        BufReader::new(f)
            .lines()
            .map_while(Result::ok)
            .filter_map(|l| serde_json::from_str::<Value>(&l).ok())
            .collect()
    }

    /// Every JSON log line that describes a completed HTTP request.
    pub fn requests(&self) -> Vec<Value> {
        self.log_lines()
            .into_iter()
            .filter(|v| {
                v.get("http.request.uri").is_some() && v.get("http.response.written").is_some()
            })
            .collect()
    }

    /// How many requests of `method` with a URI ending in `suffix` the registry refused to
    /// authorize (answered 401), after [`Registry::settle`].
    pub fn auth_refusals(&self, method: &str, suffix: &str) -> usize {
        self.settle();
        self.log_lines()
            .iter()
            .filter(|v| is_auth_refusal(v) && v["http.request.method"] == method)
            .filter(|v| {
                v["http.request.uri"]
                    .as_str()
                    .is_some_and(|u| u.ends_with(suffix))
            })
            .count()
    }

    /// Bytes the registry says it wrote in responses to GETs of blob `sha256:<hex>`,
    /// summed over its log's `http.response.written`.
    pub fn bytes_served_for(&self, hex: &str) -> u64 {
        let needle = format!("/blobs/sha256:{hex}");
        self.requests()
            .iter()
            .filter(|v| v["http.request.method"] == "GET")
            .filter(|v| {
                v["http.request.uri"]
                    .as_str()
                    .is_some_and(|u| u.contains(&needle))
            })
            .map(|v| v["http.response.written"].as_u64().unwrap_or(0))
            .sum()
    }

    /// How many requests of `method` (any method if `None`) had a URI containing `needle`.
    pub fn request_count(&self, method: Option<&str>, needle: &str) -> usize {
        self.requests()
            .iter()
            .filter(|v| method.is_none_or(|m| v["http.request.method"] == m))
            .filter(|v| {
                v["http.request.uri"]
                    .as_str()
                    .is_some_and(|u| u.contains(needle))
            })
            .count()
    }

    /// GET a manifest as stored: `(bytes, Content-Type)`.
    pub fn manifest_of(&self, repo: &str, reference: &str) -> (Vec<u8>, String) {
        self.pusher.manifest_of(repo, reference)
    }

    /// Upload a blob monolithically (POST, then PUT `?digest=`); returns `(digest, size)`.
    pub fn push_blob(&self, repo: &str, bytes: &[u8]) -> (String, u64) {
        (self.pusher.push_blob(repo, bytes), bytes.len() as u64)
    }

    /// PUT a manifest under a tag or digest; returns its digest.
    pub fn push_manifest(
        &self,
        repo: &str,
        reference: &str,
        media_type: &str,
        bytes: &[u8],
    ) -> String {
        self.pusher
            .push_manifest(repo, reference, media_type, bytes)
    }

    /// PUT a manifest; `Ok(digest)` on 201, else `Err((status, body))` (for documents a
    /// registry may refuse).
    pub fn try_push_manifest(
        &self,
        repo: &str,
        reference: &str,
        media_type: &str,
        bytes: &[u8],
    ) -> Result<String, (u16, String)> {
        self.pusher
            .try_push_manifest(repo, reference, media_type, bytes)
    }

    /// Push an image manifest (config `application/vnd.oci.empty.v1+json` `{}`) with these
    /// layers under `tag` (a digest-only push when `tag` is `None`).
    pub fn push_layers(&self, repo: &str, tag: Option<&str>, layers: Vec<LayerSpec>) -> Pushed {
        self.push_image(repo, tag, OCI_EMPTY, b"{}".to_vec(), layers)
    }

    /// Push an image manifest with this config and these layers.
    pub fn push_image(
        &self,
        repo: &str,
        tag: Option<&str>,
        config_media_type: &str,
        config: Vec<u8>,
        layers: Vec<LayerSpec>,
    ) -> Pushed {
        self.pusher
            .push_image(repo, tag, config_media_type, config, layers, json!({}))
    }

    /// Push one titled layer per `(title, bytes)` under `tag`.
    pub fn push_artifact(&self, repo: &str, tag: &str, files: &[(&str, &[u8])]) -> Pushed {
        self.pusher.push_artifact(repo, tag, files)
    }
}

/// Whether a log line is distribution's answer to a request it refused to authorize (a
/// 401; such a request gets no `response completed` line).
fn is_auth_refusal(v: &Value) -> bool {
    v["msg"]
        .as_str()
        .is_some_and(|m| m.starts_with("error authorizing context"))
}

/// See [`Registry::settle`]: wait until every request the log shows started
/// (`authorizing request`, logged at debug level before the handler runs) also shows
/// completed (a line with `http.response.written`, logged once the response is written,
/// or the refusal of its authorization).
fn settle_log(reg: &Registry) {
    let mut last = Vec::new();
    let done = wait_for(Duration::from_secs(10), || {
        let (mut started, mut completed) = (HashSet::new(), HashSet::new());
        for v in reg.log_lines() {
            let Some(id) = v["http.request.id"].as_str().map(str::to_string) else {
                continue;
            };
            if v.get("http.response.written").is_some() || is_auth_refusal(&v) {
                completed.insert(id);
            } else if v["msg"] == "authorizing request" {
                started.insert(id);
            }
        }
        let open: Vec<String> = started.difference(&completed).cloned().collect();
        last = open.clone();
        open.is_empty().then_some(())
    });
    assert!(
        done.is_some(),
        "the registry did not finish its requests within 10 s: {last:?}\n{}",
        reg.log_text()
            .lines()
            .filter(|l| last.iter().any(|id| l.contains(id.as_str())))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

/// Run `docker-registry serve CONFIG`, appending its output to `log`.
fn spawn(config: &Path, log: &Path) -> Result<Child, String> {
    let out = File::options()
        .create(true)
        .append(true)
        .open(log)
        .map_err(|e| e.to_string())?;
    let err = out.try_clone().map_err(|e| e.to_string())?;
    Command::new("docker-registry")
        .arg("serve")
        .arg(config)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .map_err(|e| format!("cannot run docker-registry (apt: docker-registry): {e}"))
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A bcrypt htpasswd file made by `htpasswd -Bbn`.
pub fn htpasswd(dir: &Path, users: &[(&str, &str)]) -> PathBuf {
    let mut text = String::new();
    for (u, p) in users {
        let out = Command::new("htpasswd")
            .args(["-Bbn", u, p])
            .output()
            .expect("run htpasswd (apt: apache2-utils)");
        assert!(out.status.success(), "htpasswd failed");
        text.push_str(String::from_utf8_lossy(&out.stdout).trim());
        text.push('\n');
    }
    let p = dir.join("htpasswd");
    fs::write(&p, text).expect("write htpasswd");
    p
}

/// One layer to push: its bytes, media type and annotations.
#[derive(Debug, Clone)]
pub struct LayerSpec {
    pub bytes: Vec<u8>,
    pub media_type: String,
    pub annotations: BTreeMap<String, String>,
}

impl LayerSpec {
    /// A layer with an `org.opencontainers.image.title`.
    pub fn titled(title: &str, bytes: impl Into<Vec<u8>>) -> Self {
        Self::untitled(bytes).annotation(TITLE, title)
    }

    /// A layer without annotations.
    pub fn untitled(bytes: impl Into<Vec<u8>>) -> Self {
        Self {
            bytes: bytes.into(),
            media_type: "application/octet-stream".into(),
            annotations: BTreeMap::new(),
        }
    }

    pub fn annotation(mut self, key: &str, value: &str) -> Self {
        self.annotations.insert(key.into(), value.into());
        self
    }

    pub fn media_type(mut self, media_type: &str) -> Self {
        self.media_type = media_type.into();
        self
    }
}

/// What a push put into the registry.
#[derive(Debug, Clone)]
pub struct Pushed {
    /// `sha256:<hex>` of the manifest.
    pub digest: String,
    /// The exact manifest bytes.
    pub manifest: Vec<u8>,
    /// The exact config bytes.
    pub config: Vec<u8>,
    /// `(digest, bytes)` of each layer, in manifest order.
    pub layers: Vec<(String, Vec<u8>)>,
}

impl Pushed {
    /// An OCI descriptor of this manifest (for an index).
    pub fn descriptor(&self) -> Value {
        json!({
            "mediaType": OCI_MANIFEST,
            "digest": self.digest,
            "size": self.manifest.len(),
        })
    }
}

/// Gives the `Authorization` value for a request to a repository.
pub type AuthFn = Box<dyn Fn(&str) -> Option<String> + Send + Sync>;

/// Pushes through the distribution API; `auth(repo)` gives the `Authorization` value.
pub struct Pusher {
    base: String,
    http: reqwest::blocking::Client,
    auth: AuthFn,
}

impl Pusher {
    /// `base` is `SCHEME://HOST:PORT`; `ca` a PEM CA to trust.
    pub fn new(base: &str, ca: Option<&Path>, auth: AuthFn) -> Pusher {
        let mut b = reqwest::blocking::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(120));
        if let Some(ca) = ca {
            let pem = fs::read(ca).expect("read CA");
            b = b.add_root_certificate(reqwest::Certificate::from_pem(&pem).expect("CA PEM"));
        }
        Pusher {
            base: base.to_string(),
            http: b.build().expect("an HTTP client"),
            auth,
        }
    }

    /// No auth.
    pub fn anonymous(base: &str) -> Pusher {
        Self::new(base, None, Box::new(|_| None))
    }

    /// Basic auth for every request.
    pub fn basic(base: &str, ca: Option<&Path>, user: &str, password: &str) -> Pusher {
        use base64::Engine;
        let v = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
        );
        Self::new(base, ca, Box::new(move |_| Some(v.clone())))
    }

    fn req(
        &self,
        m: reqwest::Method,
        url: String,
        repo: &str,
    ) -> reqwest::blocking::RequestBuilder {
        let r = self.http.request(m, url);
        match (self.auth)(repo) {
            Some(a) => r.header("Authorization", a),
            None => r,
        }
    }

    /// Upload a blob monolithically (POST, then PUT `?digest=`); returns its digest.
    pub fn push_blob(&self, repo: &str, bytes: &[u8]) -> String {
        let digest = sha256(bytes);
        let r = self
            .req(
                reqwest::Method::POST,
                format!("{}/v2/{repo}/blobs/uploads/", self.base),
                repo,
            )
            .header("Content-Length", "0")
            .send()
            .expect("POST blob upload");
        assert_eq!(
            r.status().as_u16(),
            202,
            "starting an upload to {repo}: {:?}",
            r.text()
        );
        let loc = r
            .headers()
            .get("Location")
            .expect("Location header")
            .to_str()
            .expect("ASCII Location")
            .to_string();
        let mut url = if loc.starts_with("http") {
            loc
        } else {
            format!("{}{loc}", self.base)
        };
        url.push(if url.contains('?') { '&' } else { '?' });
        url.push_str(&format!("digest={digest}"));
        let r = self
            .req(reqwest::Method::PUT, url, repo)
            .header("Content-Type", "application/octet-stream")
            .body(bytes.to_vec())
            .send()
            .expect("PUT blob");
        assert_eq!(
            r.status().as_u16(),
            201,
            "pushing blob {digest} to {repo}: {:?}",
            r.text()
        );
        digest
    }

    /// PUT a manifest under a tag or digest; returns its digest (checked against the
    /// registry's `Docker-Content-Digest`).
    pub fn push_manifest(
        &self,
        repo: &str,
        reference: &str,
        media_type: &str,
        bytes: &[u8],
    ) -> String {
        match self.try_push_manifest(repo, reference, media_type, bytes) {
            Ok(d) => d,
            Err((status, body)) => {
                panic!("pushing manifest {repo}:{reference}: {status} {body:?}")
            }
        }
    }

    /// PUT a manifest; `Ok(digest)` on 201, else `Err((status, body))`.
    pub fn try_push_manifest(
        &self,
        repo: &str,
        reference: &str,
        media_type: &str,
        bytes: &[u8],
    ) -> Result<String, (u16, String)> {
        let r = self
            .req(
                reqwest::Method::PUT,
                format!("{}/v2/{repo}/manifests/{reference}", self.base),
                repo,
            )
            .header("Content-Type", media_type)
            .body(bytes.to_vec())
            .send()
            .map_err(|e| (0, e.to_string()))?;
        let status = r.status().as_u16();
        let header = r
            .headers()
            .get("Docker-Content-Digest")
            .and_then(|h| h.to_str().ok())
            .map(str::to_string);
        let body = r.text().unwrap_or_default();
        if status != 201 {
            return Err((status, body.chars().take(300).collect()));
        }
        let digest = sha256(bytes);
        if let Some(h) = header {
            assert_eq!(h, digest, "registry's digest of the manifest");
        }
        Ok(digest)
    }

    /// GET a manifest as stored: `(bytes, Content-Type)`.
    pub fn manifest_of(&self, repo: &str, reference: &str) -> (Vec<u8>, String) {
        let resp = self
            .req(
                reqwest::Method::GET,
                format!("{}/v2/{repo}/manifests/{reference}", self.base),
                repo,
            )
            .header("Accept", format!("{OCI_MANIFEST}, {}", super::OCI_INDEX))
            .send()
            .expect("GET manifest");
        assert!(
            resp.status().is_success(),
            "GET manifest {repo}:{reference}: {}",
            resp.status()
        );
        let ct = resp
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        (resp.bytes().expect("manifest body").to_vec(), ct)
    }

    /// Push an image manifest with this config and these layers under `tag` (by digest
    /// when `None`); the top-level fields of `extra` (e.g. `artifactType`, `subject`) are
    /// merged in.
    pub fn push_image(
        &self,
        repo: &str,
        tag: Option<&str>,
        config_media_type: &str,
        config: Vec<u8>,
        layers: Vec<LayerSpec>,
        extra: Value,
    ) -> Pushed {
        let config_digest = self.push_blob(repo, &config);
        let mut descs = Vec::new();
        let mut pushed_layers = Vec::new();
        for l in layers {
            let digest = self.push_blob(repo, &l.bytes);
            let mut d =
                json!({ "mediaType": l.media_type, "digest": digest, "size": l.bytes.len() });
            if !l.annotations.is_empty() {
                d["annotations"] = json!(l.annotations);
            }
            descs.push(d);
            pushed_layers.push((digest, l.bytes));
        }
        let mut m = json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": { "mediaType": config_media_type, "digest": config_digest, "size": config.len() },
            "layers": descs,
        });
        if let (Some(m), Some(e)) = (m.as_object_mut(), extra.as_object()) {
            for (k, v) in e {
                m.insert(k.clone(), v.clone());
            }
        }
        let manifest = serde_json::to_vec_pretty(&m).expect("manifest JSON");
        let digest = sha256(&manifest);
        let pushed = self.push_manifest(repo, tag.unwrap_or(&digest), OCI_MANIFEST, &manifest);
        assert_eq!(pushed, digest);
        Pushed {
            digest,
            manifest,
            config,
            layers: pushed_layers,
        }
    }

    /// An image manifest with an empty config and titled layers of `layer_media_type`;
    /// `extra` as for [`Pusher::push_image`].
    pub fn push_artifact_with(
        &self,
        repo: &str,
        tag: Option<&str>,
        files: &[(&str, &[u8])],
        layer_media_type: &str,
        extra: Value,
    ) -> Pushed {
        let layers = files
            .iter()
            .map(|(t, b)| LayerSpec::titled(t, *b).media_type(layer_media_type))
            .collect();
        self.push_image(repo, tag, OCI_EMPTY, b"{}".to_vec(), layers, extra)
    }

    /// An artifact of titled octet-stream layers under `tag`.
    pub fn push_artifact(&self, repo: &str, tag: &str, files: &[(&str, &[u8])]) -> Pushed {
        self.push_artifact_with(
            repo,
            Some(tag),
            files,
            "application/octet-stream",
            json!({}),
        )
    }
}
