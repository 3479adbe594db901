//! A real `docker-registry` (distribution 2.8) with the configuration a test asks for —
//! htpasswd or token auth, TLS, a catalog page limit — on a free loopback port, killed on
//! drop; and a pusher that speaks the distribution API with whatever auth it is given.

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;
use sha2::{Digest as _, Sha256};
use tempfile::TempDir;

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_EMPTY: &str = "application/vnd.oci.empty.v1+json";
pub const TITLE: &str = "org.opencontainers.image.title";

/// `sha256:<hex>`.
pub fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

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

/// What to start.
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

/// A running registry.
pub struct Distribution {
    child: Child,
    addr: String,
    scheme: &'static str,
    log: PathBuf,
    config: PathBuf,
    _dir: TempDir,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

impl Distribution {
    pub fn start(cfg: &Config) -> Distribution {
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

    fn try_start(cfg: &Config) -> Result<Distribution, String> {
        // Storage on tmpfs where there is one: distribution syncs every write, and a disk
        // makes a thousand tag pushes take many seconds.
        let mut b = tempfile::Builder::new();
        b.prefix("orasfs-reg-");
        let dir = match Path::new("/dev/shm").is_dir() {
            true => b.tempdir_in("/dev/shm").or_else(|_| b.tempdir()),
            false => b.tempdir(),
        }
        .map_err(|e| e.to_string())?;
        let addr = format!("127.0.0.1:{}", free_port());
        let storage = dir.path().join("storage");
        fs::create_dir(&storage).map_err(|e| e.to_string())?;
        let mut yaml = format!(
            "version: 0.1\nlog:\n  level: info\n  accesslog:\n    disabled: true\n\
             storage:\n  filesystem:\n    rootdirectory: {}\n  maintenance:\n    uploadpurging:\n      enabled: false\n\
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
        let config = dir.path().join("config.yml");
        fs::write(&config, yaml).map_err(|e| e.to_string())?;
        let log = dir.path().join("registry.log");
        let child = spawn(&config, &log)?;
        let mut d = Distribution {
            child,
            addr,
            scheme: if cfg.tls.is_some() { "https" } else { "http" },
            log,
            config,
            _dir: dir,
        };
        d.wait_ready()?;
        Ok(d)
    }

    /// Where its filesystem storage is (`docker/registry/v2/...` under it).
    pub fn storage(&self) -> PathBuf {
        self._dir.path().join("storage")
    }

    /// Kill the registry (its storage stays); [`Distribution::restart`] brings it back.
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

    fn wait_ready(&mut self) -> Result<(), String> {
        let d = self;
        let probe = reqwest::blocking::Client::builder()
            .danger_accept_invalid_certs(true)
            .no_proxy()
            .timeout(Duration::from_secs(5))
            .build()
            .map_err(|e| e.to_string())?;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(Some(s)) = d.child.try_wait() {
                return Err(format!("exited with {s}: {}", d.log_text()));
            }
            if let Ok(r) = probe.get(d.url("/v2/")).send() {
                if r.status().is_success() || r.status().as_u16() == 401 {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                return Err(format!("no answer within 10 s: {}", d.log_text()));
            }
            std::thread::sleep(Duration::from_millis(50));
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

    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }
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
        .map_err(|e| format!("cannot run docker-registry: {e}"))
}

impl Drop for Distribution {
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
            .expect("run htpasswd (apache2-utils)");
        assert!(out.status.success(), "htpasswd failed");
        text.push_str(String::from_utf8_lossy(&out.stdout).trim());
        text.push('\n');
    }
    let p = dir.join("htpasswd");
    fs::write(&p, text).expect("write htpasswd");
    p
}

/// What a push stored.
#[derive(Debug, Clone)]
pub struct Pushed {
    pub digest: String,
    pub manifest: Vec<u8>,
    pub layers: Vec<(String, Vec<u8>)>,
}

impl Pushed {
    pub fn descriptor(&self) -> serde_json::Value {
        json!({"mediaType": OCI_MANIFEST, "digest": self.digest, "size": self.manifest.len()})
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
            .timeout(Duration::from_secs(60));
        if let Some(ca) = ca {
            let pem = fs::read(ca).expect("read CA");
            b = b.add_root_certificate(reqwest::Certificate::from_pem(&pem).expect("CA PEM"));
        }
        Pusher {
            base: base.to_string(),
            http: b.build().expect("client"),
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
            .expect("POST upload");
        assert_eq!(r.status().as_u16(), 202, "start upload: {:?}", r.text());
        let loc = r
            .headers()
            .get("Location")
            .expect("Location")
            .to_str()
            .expect("ASCII")
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
        assert_eq!(r.status().as_u16(), 201, "PUT blob: {:?}", r.text());
        digest
    }

    pub fn push_manifest(
        &self,
        repo: &str,
        reference: &str,
        media_type: &str,
        bytes: &[u8],
    ) -> String {
        let r = self
            .req(
                reqwest::Method::PUT,
                format!("{}/v2/{repo}/manifests/{reference}", self.base),
                repo,
            )
            .header("Content-Type", media_type)
            .body(bytes.to_vec())
            .send()
            .expect("PUT manifest");
        assert_eq!(
            r.status().as_u16(),
            201,
            "PUT manifest {repo}:{reference}: {:?}",
            r.text()
        );
        sha256(bytes)
    }

    /// An image manifest with an empty config and titled layers; extra top-level fields
    /// (e.g. `artifactType`, `subject`) are merged in.
    pub fn push_artifact_with(
        &self,
        repo: &str,
        tag: Option<&str>,
        files: &[(&str, &[u8])],
        layer_media_type: &str,
        extra: serde_json::Value,
    ) -> Pushed {
        let config = self.push_blob(repo, b"{}");
        let mut layers = Vec::new();
        let mut descs = Vec::new();
        for (title, bytes) in files {
            let d = self.push_blob(repo, bytes);
            descs.push(json!({
                "mediaType": layer_media_type, "digest": d, "size": bytes.len(),
                "annotations": {TITLE: title}
            }));
            layers.push((d, bytes.to_vec()));
        }
        let mut m = json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_EMPTY, "digest": config, "size": 2},
            "layers": descs,
        });
        if let (Some(m), Some(e)) = (m.as_object_mut(), extra.as_object()) {
            for (k, v) in e {
                m.insert(k.clone(), v.clone());
            }
        }
        let manifest = serde_json::to_vec_pretty(&m).expect("JSON");
        let digest = sha256(&manifest);
        self.push_manifest(repo, tag.unwrap_or(&digest), OCI_MANIFEST, &manifest);
        Pushed {
            digest,
            manifest,
            layers,
        }
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
