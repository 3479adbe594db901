//! Shared harness for the integration tests: a real `docker-registry` (CNCF distribution)
//! on a loopback port, push helpers over the distribution HTTP API, and a real `orasfs`
//! mount that is always cleaned up, even when a test panics.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use sha2::{Digest as _, Sha256};
use tempfile::TempDir;

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_EMPTY: &str = "application/vnd.oci.empty.v1+json";
pub const TITLE: &str = "org.opencontainers.image.title";
pub const REF_NAME: &str = "org.opencontainers.image.ref.name";
/// errno of "Read-only file system" on Linux.
pub const EROFS: i32 = 30;

/// `sha256:<hex>` of some bytes. Large inputs go through `sha256sum`: the tests are built
/// without optimisation, where hashing in Rust runs at a few MB/s.
pub fn sha256(bytes: &[u8]) -> String {
    if bytes.len() >= 1 << 20 {
        if let Some(d) = sha256sum(bytes) {
            return d;
        }
    }
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

fn sha256sum(bytes: &[u8]) -> Option<String> {
    use std::io::Write;
    let mut child = Command::new("sha256sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    child.stdin.take()?.write_all(bytes).ok()?;
    let out = child.wait_with_output().ok()?;
    let text = String::from_utf8(out.stdout).ok()?;
    let hex = text.split_whitespace().next()?;
    (out.status.success() && hex.len() == 64).then(|| format!("sha256:{hex}"))
}

/// The hex part of a `sha256:<hex>` digest.
pub fn hex_of(digest: &str) -> &str {
    digest.strip_prefix("sha256:").expect("a sha256 digest")
}

/// Pseudo-random bytes, a deterministic function of `len` and `seed` (splitmix64), so a
/// failing test replays with the same bytes (the seed is in the test's source).
pub fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xD1B5_4A32_D192_ED03;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        out.extend_from_slice(&z.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Poll `f` until it returns `Some`, or give up after `timeout`.
pub fn wait_for<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn http() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(120))
        .build()
        .expect("an HTTP client")
}

// ---------------------------------------------------------------------------------------
// Registry
// ---------------------------------------------------------------------------------------

/// A `docker-registry` process with its own config, storage and log; killed on drop.
pub struct Registry {
    child: Child,
    addr: String,
    log: PathBuf,
    storage: PathBuf,
    client: reqwest::blocking::Client,
    _dir: TempDir,
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

fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    l.local_addr().expect("local addr").port()
}

impl Registry {
    /// Start a registry on a free loopback port and wait until `GET /v2/` answers.
    pub fn start() -> Registry {
        let mut last_err = String::new();
        // Another test may grab the port between our probe and the registry's bind; retry.
        for _ in 0..5 {
            match Self::try_start() {
                Ok(r) => return r,
                Err(e) => last_err = e,
            }
        }
        panic!("docker-registry did not start: {last_err}");
    }

    fn try_start() -> Result<Registry, String> {
        let dir = tempfile::Builder::new()
            .prefix("orasfs-registry-")
            .tempdir()
            .map_err(|e| e.to_string())?;
        let port = free_port();
        let addr = format!("127.0.0.1:{port}");
        let storage = dir.path().join("storage");
        fs::create_dir(&storage).map_err(|e| e.to_string())?;
        let config = dir.path().join("config.yml");
        fs::write(
            &config,
            format!(
                "version: 0.1\n\
                 log:\n  level: info\n  formatter: json\n  accesslog:\n    disabled: true\n\
                 storage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\n  \
                 maintenance:\n    uploadpurging:\n      enabled: false\n\
                 http:\n  addr: {addr}\n",
                storage.display()
            ),
        )
        .map_err(|e| e.to_string())?;
        let log = dir.path().join("registry.log");
        let out = File::create(&log).map_err(|e| e.to_string())?;
        let err = out.try_clone().map_err(|e| e.to_string())?;
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(|e| format!("cannot run docker-registry: {e}"))?;
        let mut reg = Registry {
            child,
            addr,
            log,
            storage,
            client: http(),
            _dir: dir,
        };
        let url = reg.url("/v2/");
        let up = wait_for(Duration::from_secs(10), || {
            if let Ok(Some(status)) = reg.child.try_wait() {
                return Some(Err(format!("exited with {status}: {}", reg.log_text())));
            }
            match reg.client.get(&url).send() {
                Ok(r) if r.status().is_success() => Some(Ok(())),
                _ => None,
            }
        });
        match up {
            Some(Ok(())) => Ok(reg),
            Some(Err(e)) => Err(e),
            None => {
                let _ = reg.child.kill();
                Err(format!(
                    "no answer on {url} within 10 s: {}",
                    reg.log_text()
                ))
            }
        }
    }

    /// `127.0.0.1:PORT`.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// `http://127.0.0.1:PORT<path>`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
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

    /// Wait until the log has stopped growing (the registry logs a request once its
    /// response is complete, so the last lines may lag behind what a client has read).
    pub fn settle(&self) {
        let len = || fs::metadata(&self.log).map(|m| m.len()).unwrap_or(0);
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut last = len();
        loop {
            std::thread::sleep(Duration::from_millis(300));
            let now = len();
            if now == last || Instant::now() >= deadline {
                return;
            }
            last = now;
        }
    }

    /// Every JSON log line that describes an HTTP request.
    pub fn requests(&self) -> Vec<Value> {
        let Ok(f) = File::open(&self.log) else {
            return Vec::new();
        };
        BufReader::new(f)
            .lines()
            .map_while(Result::ok)
            .filter_map(|l| serde_json::from_str::<Value>(&l).ok())
            .filter(|v| {
                v.get("http.request.uri").is_some() && v.get("http.response.written").is_some()
            })
            .collect()
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

    /// Upload a blob monolithically (POST, then PUT `?digest=`); returns `(digest, size)`.
    pub fn push_blob(&self, repo: &str, bytes: &[u8]) -> (String, u64) {
        let digest = sha256(bytes);
        let r = self
            .client
            .post(self.url(&format!("/v2/{repo}/blobs/uploads/")))
            .header("Content-Length", "0")
            .send()
            .expect("POST blob upload");
        assert_eq!(
            r.status().as_u16(),
            202,
            "starting an upload to {repo}: {:?}",
            r.text()
        );
        let location = r
            .headers()
            .get("Location")
            .expect("Location header")
            .to_str()
            .expect("ASCII Location")
            .to_string();
        let mut url = if location.starts_with("http") {
            location
        } else {
            self.url(&location)
        };
        url.push(if url.contains('?') { '&' } else { '?' });
        url.push_str("digest=");
        url.push_str(&digest);
        let r = self
            .client
            .put(url)
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
        (digest, bytes.len() as u64)
    }

    /// PUT a manifest under a tag or digest; returns its digest.
    pub fn push_manifest(
        &self,
        repo: &str,
        reference: &str,
        media_type: &str,
        bytes: &[u8],
    ) -> String {
        let r = self
            .client
            .put(self.url(&format!("/v2/{repo}/manifests/{reference}")))
            .header("Content-Type", media_type)
            .body(bytes.to_vec())
            .send()
            .expect("PUT manifest");
        let status = r.status().as_u16();
        let header = r
            .headers()
            .get("Docker-Content-Digest")
            .and_then(|h| h.to_str().ok())
            .map(str::to_string);
        assert_eq!(
            status,
            201,
            "pushing manifest {repo}:{reference}: {:?}",
            r.text()
        );
        let digest = sha256(bytes);
        if let Some(h) = header {
            assert_eq!(h, digest, "registry's digest of the manifest");
        }
        digest
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
        let (config_digest, config_size) = self.push_blob(repo, &config);
        let mut descs = Vec::new();
        let mut pushed_layers = Vec::new();
        for l in layers {
            let (digest, size) = self.push_blob(repo, &l.bytes);
            let mut d = json!({ "mediaType": l.media_type, "digest": digest, "size": size });
            if !l.annotations.is_empty() {
                d["annotations"] = json!(l.annotations);
            }
            descs.push(d);
            pushed_layers.push((digest, l.bytes));
        }
        let manifest = serde_json::to_vec_pretty(&json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": { "mediaType": config_media_type, "digest": config_digest, "size": config_size },
            "layers": descs,
        }))
        .expect("manifest JSON");
        let digest = sha256(&manifest);
        let pushed_digest =
            self.push_manifest(repo, tag.unwrap_or(&digest), OCI_MANIFEST, &manifest);
        assert_eq!(pushed_digest, digest);
        Pushed {
            digest,
            manifest,
            config,
            layers: pushed_layers,
        }
    }

    /// Push one titled layer per `(title, bytes)` under `tag`.
    pub fn push_artifact(&self, repo: &str, tag: &str, files: &[(&str, &[u8])]) -> Pushed {
        let layers = files
            .iter()
            .map(|(t, b)| LayerSpec::titled(t, *b))
            .collect();
        self.push_layers(repo, Some(tag), layers)
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------------------------------
// Mount
// ---------------------------------------------------------------------------------------

/// The canonical form of a path, as the kernel lists it in /proc/mounts.
fn canonical(p: &Path) -> PathBuf {
    p.canonicalize().unwrap_or_else(|_| p.to_path_buf())
}

/// Unescape a /proc/mounts field (`\040` for space and so on).
fn unescape_mount_field(s: &str) -> String {
    let mut out = String::new();
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 4 <= b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let n = u32::from(b[i + 1] - b'0') * 64
                + u32::from(b[i + 2] - b'0') * 8
                + u32::from(b[i + 3] - b'0');
            out.push(char::from_u32(n).unwrap_or('?'));
            i += 4;
            continue;
        }
        out.push(b[i] as char);
        i += 1;
    }
    out
}

/// Whether anything is mounted at `p` (per /proc/mounts).
pub fn is_mounted(p: &Path) -> bool {
    let want = canonical_no_stat(p);
    fs::read_to_string("/proc/mounts")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split(' ').nth(1))
        .any(|m| Path::new(&unescape_mount_field(m)) == want)
}

/// Canonicalize without touching `p` itself (stat on a dead FUSE mount fails), only its
/// parent.
fn canonical_no_stat(p: &Path) -> PathBuf {
    match (p.parent(), p.file_name()) {
        (Some(parent), Some(name)) => canonical(parent).join(name),
        _ => p.to_path_buf(),
    }
}

/// Every FUSE mount of orasfs in /proc/mounts.
pub fn orasfs_mounts() -> Vec<String> {
    fs::read_to_string("/proc/mounts")
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("orasfs"))
        .map(str::to_string)
        .collect()
}

/// A failed run of `orasfs mount`.
#[derive(Debug)]
pub struct Failed {
    pub status: ExitStatus,
    pub stderr: String,
}

/// A running `orasfs mount --foreground`; unmounted and reaped on drop.
pub struct Mount {
    child: Option<Child>,
    mountpoint: PathBuf,
    stderr: PathBuf,
    // Dropped after `Drop::drop` has unmounted.
    _dir: TempDir,
}

fn unmount(mountpoint: &Path) {
    if !is_mounted(mountpoint) {
        return;
    }
    let quiet = |args: &[&str]| {
        Command::new("fusermount3")
            .args(args)
            .arg(mountpoint)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    };
    if !quiet(&["-u"]) || is_mounted(mountpoint) {
        quiet(&["-uz"]);
    }
    if is_mounted(mountpoint) {
        // Last resort; a FUSE mount left behind would break later runs.
        let _ = Command::new("umount")
            .arg("-l")
            .arg(mountpoint)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

fn reap(child: &mut Child, grace: Duration) -> ExitStatus {
    if let Some(s) = wait_for(grace, || child.try_wait().ok().flatten()) {
        return s;
    }
    let _ = child.kill();
    child.wait().expect("wait for orasfs")
}

fn orasfs() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_orasfs"));
    c.env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::null());
    c
}

impl Mount {
    /// Mount `source` with a fresh cache directory.
    pub fn start(source: &str, extra_args: &[&str]) -> Result<Mount, String> {
        Self::start_inner(source, None, extra_args)
    }

    /// Mount `source` over a cache directory the caller keeps (to remount over it).
    pub fn start_with_cache(
        source: &str,
        cache_dir: &Path,
        extra_args: &[&str],
    ) -> Result<Mount, String> {
        Self::start_inner(source, Some(cache_dir), extra_args)
    }

    fn start_inner(
        source: &str,
        cache_dir: Option<&Path>,
        extra_args: &[&str],
    ) -> Result<Mount, String> {
        let dir = tempfile::Builder::new()
            .prefix("orasfs-mount-")
            .tempdir()
            .map_err(|e| e.to_string())?;
        let mountpoint = canonical(dir.path()).join("mnt");
        fs::create_dir(&mountpoint).map_err(|e| e.to_string())?;
        let cache = match cache_dir {
            Some(c) => c.to_path_buf(),
            None => {
                let c = dir.path().join("cache");
                fs::create_dir(&c).map_err(|e| e.to_string())?;
                c
            }
        };
        let stderr = dir.path().join("stderr.log");
        let err = File::create(&stderr).map_err(|e| e.to_string())?;
        let child = orasfs()
            .arg("mount")
            .arg("--foreground")
            .arg("--cache-dir")
            .arg(&cache)
            .args(extra_args)
            .arg(source)
            .arg(&mountpoint)
            .stderr(err)
            .spawn()
            .map_err(|e| format!("cannot run orasfs: {e}"))?;
        let mut m = Mount {
            child: Some(child),
            mountpoint,
            stderr,
            _dir: dir,
        };
        let up = wait_for(Duration::from_secs(10), || {
            if is_mounted(&m.mountpoint) {
                return Some(Ok(()));
            }
            let child = m.child.as_mut().expect("child");
            match child.try_wait() {
                Ok(Some(status)) => Some(Err(status)),
                _ => None,
            }
        });
        match up {
            Some(Ok(())) => Ok(m),
            Some(Err(status)) => {
                m.child = None;
                Err(format!(
                    "orasfs exited with {status} before mounting: {}",
                    m.stderr()
                ))
            }
            None => Err(format!(
                "{} not mounted within 10 s; stderr: {}",
                m.mountpoint.display(),
                m.stderr()
            )),
        }
    }

    /// The mountpoint.
    pub fn path(&self) -> &Path {
        &self.mountpoint
    }

    /// `path()` joined with `rel`.
    pub fn join(&self, rel: impl AsRef<Path>) -> PathBuf {
        self.mountpoint.join(rel)
    }

    /// What orasfs printed on stderr so far.
    pub fn stderr(&self) -> String {
        fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// The process id of orasfs.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// Unmount with `fusermount3 -u` and return orasfs's exit status.
    pub fn unmount(mut self) -> ExitStatus {
        unmount(&self.mountpoint);
        let mut child = self.child.take().expect("running");
        reap(&mut child, Duration::from_secs(10))
    }

    /// Send SIGTERM to orasfs and return its exit status (it should unmount and exit 0).
    pub fn terminate(mut self) -> ExitStatus {
        let mut child = self.child.take().expect("running");
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .status();
        let status = reap(&mut child, Duration::from_secs(10));
        unmount(&self.mountpoint);
        status
    }

    /// Run `orasfs mount SOURCE <fresh empty dir>` expecting it to fail before mounting.
    pub fn run_to_failure(source: &str) -> Failed {
        let dir = tempfile::tempdir().expect("tempdir");
        let mnt = canonical(dir.path()).join("mnt");
        fs::create_dir(&mnt).expect("mountpoint");
        Self::run_to_failure_at(source, &mnt, &[])
    }

    /// Run `orasfs mount [EXTRA] SOURCE MOUNTPOINT` expecting it to exit non-zero without
    /// ever mounting; panics (after cleaning up) if it mounts or runs longer than 60 s.
    pub fn run_to_failure_at(source: &str, mountpoint: &Path, extra_args: &[&str]) -> Failed {
        let dir = tempfile::tempdir().expect("tempdir");
        let stderr = dir.path().join("stderr.log");
        let cache = dir.path().join("cache");
        let mut child = orasfs()
            .arg("mount")
            .arg("--foreground")
            .arg("--cache-dir")
            .arg(&cache)
            .args(extra_args)
            .arg(source)
            .arg(mountpoint)
            .stderr(File::create(&stderr).expect("stderr file"))
            .spawn()
            .expect("run orasfs");
        let mut mounted = false;
        let status = wait_for(Duration::from_secs(60), || {
            mounted |= is_mounted(mountpoint);
            child.try_wait().ok().flatten()
        });
        let text = fs::read_to_string(&stderr).unwrap_or_default();
        let status = match status {
            Some(s) => s,
            None => {
                unmount(mountpoint);
                let _ = child.kill();
                let _ = child.wait();
                panic!("orasfs mount {source} still running after 60 s; stderr: {text}");
            }
        };
        if mounted || is_mounted(mountpoint) {
            unmount(mountpoint);
            panic!(
                "orasfs mount {source} mounted {} although it should fail; stderr: {text}",
                mountpoint.display()
            );
        }
        Failed {
            status,
            stderr: text,
        }
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        unmount(&self.mountpoint);
        if let Some(mut child) = self.child.take() {
            reap(&mut child, Duration::from_secs(5));
        }
        // Never leave a mount behind, even if the child was killed mid-way.
        unmount(&self.mountpoint);
    }
}

// ---------------------------------------------------------------------------------------
// Small helpers for assertions
// ---------------------------------------------------------------------------------------

/// Sorted names in a directory.
pub fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("read_dir {}: {e}", dir.display()))
        .map(|e| {
            e.expect("dir entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    v.sort();
    v
}

/// Whether an external program can be run (`prog --version` or similar exits 0).
pub fn have(prog: &str, args: &[&str]) -> bool {
    Command::new(prog)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// Whether a test that needs a tool may run. When `available` is false: under `CI=true`
/// the test fails with `why` (which names the package to install); elsewhere it is
/// skipped, saying so on standard error and in `$ORASFS_SKIP_LOG`, from which
/// scripts/test.sh prints a summary of what was skipped.
pub fn needs(available: bool, test: &str, why: &str) -> bool {
    if available {
        return true;
    }
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{test}: {why} (CI=true: a missing tool fails the test)");
    }
    eprintln!("SKIPPED {test}: {why}");
    if let Some(log) = std::env::var_os("ORASFS_SKIP_LOG") {
        use std::io::Write;
        if let Ok(mut f) = fs::OpenOptions::new().append(true).open(log) {
            let _ = writeln!(f, "{test}: {why}");
        }
    }
    false
}

/// The Python with the ORAS client: `$ORASFS_PYTHON`, else the virtual environment that
/// scripts/test.sh makes under the build directory (`target/oras-venv`), else `python3`.
pub fn oras_python() -> PathBuf {
    if let Some(p) = std::env::var_os("ORASFS_PYTHON") {
        return PathBuf::from(p);
    }
    let venv = Path::new(env!("CARGO_BIN_EXE_orasfs"))
        .parent()
        .and_then(Path::parent)
        .map(|target| target.join("oras-venv/bin/python3"));
    match venv {
        Some(p) if p.exists() => p,
        _ => PathBuf::from("python3"),
    }
}
