//! Running `orasfs mount --foreground` with a controlled environment: a fresh `HOME`, none
//! of the auth-file variables unless the test sets them, optional standard input (for
//! `--password-stdin`), extra `PATH` entries (for a credential helper), and `RUST_LOG`.
//! A mount is always unmounted and its process reaped on drop, even when a test fails.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

/// How to run orasfs.
#[derive(Default, Clone)]
pub struct Run {
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    pub stdin: Option<String>,
    pub path_prepend: Option<PathBuf>,
}

impl Run {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn arg(mut self, a: impl Into<String>) -> Self {
        self.args.push(a.into());
        self
    }
    pub fn env(mut self, k: &str, v: impl Into<String>) -> Self {
        self.env.push((k.to_string(), v.into()));
        self
    }
    pub fn stdin(mut self, s: &str) -> Self {
        self.stdin = Some(s.to_string());
        self
    }
    pub fn path(mut self, dir: &Path) -> Self {
        self.path_prepend = Some(dir.to_path_buf());
        self
    }
}

/// A failed `orasfs mount`.
#[derive(Debug)]
pub struct Failed {
    pub status: ExitStatus,
    pub stderr: String,
}

/// A live mount.
pub struct Mounted {
    child: Option<Child>,
    mountpoint: PathBuf,
    stderr: PathBuf,
    _dir: TempDir,
}

fn canonical(p: &Path) -> PathBuf {
    p.canonicalize().unwrap_or_else(|_| p.to_path_buf())
}

/// Whether something is mounted at `p`, per /proc/mounts.
pub fn is_mounted(p: &Path) -> bool {
    let want = p.to_string_lossy().replace(' ', "\\040");
    fs::read_to_string("/proc/mounts")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split(' ').nth(1))
        .any(|m| m == want)
}

fn unmount(p: &Path) {
    for flag in ["-u", "-uz"] {
        if !is_mounted(p) {
            return;
        }
        let _ = Command::new("fusermount3")
            .arg(flag)
            .arg(p)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

fn reap(child: &mut Child, grace: Duration) -> ExitStatus {
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if let Ok(Some(s)) = child.try_wait() {
            return s;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    child.wait().expect("wait for orasfs")
}

/// Mount `source`; `Err` when orasfs exits before mounting.
pub fn mount(source: &str, run: &Run) -> Result<Mounted, Failed> {
    let dir = tempfile::Builder::new()
        .prefix("orasfs-regtest-")
        .tempdir()
        .expect("tempdir");
    let base = canonical(dir.path());
    let mountpoint = base.join("mnt");
    let home = base.join("home");
    fs::create_dir(&mountpoint).expect("mountpoint");
    fs::create_dir(&home).expect("home");
    let stderr = base.join("stderr.log");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_orasfs"));
    cmd.arg("mount")
        .arg("--foreground")
        .arg("--cache-dir")
        .arg(base.join("cache"))
        .args(&run.args)
        .arg(source)
        .arg(&mountpoint)
        .env("HOME", &home)
        .env_remove("RUST_LOG")
        .env_remove("REGISTRY_AUTH_FILE")
        .env_remove("DOCKER_CONFIG")
        .env_remove("XDG_RUNTIME_DIR")
        .stdout(Stdio::null())
        .stderr(File::create(&stderr).expect("stderr file"))
        .stdin(if run.stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        });
    if let Some(p) = &run.path_prepend {
        let old = std::env::var("PATH").unwrap_or_default();
        cmd.env("PATH", format!("{}:{old}", p.display()));
    }
    for (k, v) in &run.env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("run orasfs");
    if let (Some(text), Some(mut pipe)) = (&run.stdin, child.stdin.take()) {
        let _ = pipe.write_all(text.as_bytes());
    }
    let mut m = Mounted {
        child: Some(child),
        mountpoint,
        stderr,
        _dir: dir,
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if is_mounted(&m.mountpoint) {
            return Ok(m);
        }
        let child = m.child.as_mut().expect("child");
        if let Ok(Some(status)) = child.try_wait() {
            m.child = None;
            return Err(Failed {
                status,
                stderr: m.stderr(),
            });
        }
        if Instant::now() > deadline {
            panic!(
                "orasfs mount {source} neither mounted nor exited in 30 s: {}",
                m.stderr()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Mount `source`, expecting failure before mounting.
pub fn mount_fails(source: &str, run: &Run) -> Failed {
    match mount(source, run) {
        Ok(m) => {
            let err = m.stderr();
            drop(m);
            panic!("orasfs mounted {source} although it should have failed; stderr: {err}")
        }
        Err(f) => f,
    }
}

impl Mounted {
    pub fn path(&self) -> &Path {
        &self.mountpoint
    }
    pub fn join(&self, rel: &str) -> PathBuf {
        self.mountpoint.join(rel)
    }
    /// What orasfs wrote to stderr so far.
    pub fn stderr(&self) -> String {
        fs::read_to_string(&self.stderr).unwrap_or_default()
    }
    /// Unmount, wait for orasfs to exit, and return everything it logged.
    pub fn finish(mut self) -> String {
        unmount(&self.mountpoint);
        if let Some(mut c) = self.child.take() {
            reap(&mut c, Duration::from_secs(10));
        }
        self.stderr()
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        unmount(&self.mountpoint);
        if let Some(mut c) = self.child.take() {
            reap(&mut c, Duration::from_secs(5));
        }
        unmount(&self.mountpoint);
    }
}

/// Sorted entry names of a directory.
pub fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("read_dir {}: {e}", dir.display()))
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}
