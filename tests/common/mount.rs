//! The one way to mount: [`Launch`] says how to run `orasfs mount --foreground` (arguments,
//! cache directory, working directory, environment, standard input, a wrapper program),
//! and [`Launch::mount`] gives a live [`Mount`], unmounted and reaped on drop even when a
//! test fails or the daemon was killed. [`Launch::fail`] runs a mount that must fail
//! before mounting.
//!
//! Every run is hermetic about credentials: a fresh `HOME`, and none of
//! `REGISTRY_AUTH_FILE`, `DOCKER_CONFIG`, `XDG_RUNTIME_DIR` or `RUST_LOG` unless the test
//! sets them.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use super::wait_for;

/// How long a mount may take to appear.
const MOUNT_WITHIN: Duration = Duration::from_secs(30);

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

/// Canonicalize without touching `p` itself (stat on a dead FUSE mount fails), only its
/// parent.
fn canonical_no_stat(p: &Path) -> PathBuf {
    match (p.parent(), p.file_name()) {
        (Some(parent), Some(name)) => canonical(parent).join(name),
        _ => p.to_path_buf(),
    }
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

/// Every FUSE mount of orasfs in /proc/mounts.
pub fn orasfs_mounts() -> Vec<String> {
    fs::read_to_string("/proc/mounts")
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("orasfs"))
        .map(str::to_string)
        .collect()
}

/// Unmount whatever is at `p`, lazily if it is busy or dead; a FUSE mount left behind
/// would break later runs.
pub fn force_unmount(p: &Path) {
    for args in [&["-u"][..], &["-uz"][..]] {
        if !is_mounted(p) {
            return;
        }
        let _ = Command::new("fusermount3")
            .args(args)
            .arg(p)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
    if is_mounted(p) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(p)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// Wait `grace` for a child to exit, then kill it.
fn reap(c: &mut Child, grace: Duration) -> ExitStatus {
    if let Some(s) = wait_for(grace, || c.try_wait().ok().flatten()) {
        return s;
    }
    let _ = c.kill();
    c.wait().expect("wait for orasfs")
}

/// Run with `home` as `HOME` and none of the credential variables or `RUST_LOG` (a test
/// sets what it needs after this).
fn hermetic(c: &mut Command, home: &Path) {
    c.env("HOME", home)
        .env_remove("RUST_LOG")
        .env_remove("REGISTRY_AUTH_FILE")
        .env_remove("DOCKER_CONFIG")
        .env_remove("XDG_RUNTIME_DIR");
}

/// A failed run of `orasfs mount`.
#[derive(Debug)]
pub struct Failed {
    pub status: ExitStatus,
    pub stderr: String,
}

/// How to run `orasfs mount --foreground`.
#[derive(Debug, Clone, Default)]
pub struct Launch {
    pub source: String,
    pub args: Vec<String>,
    pub cache: Option<PathBuf>,
    pub cwd: Option<PathBuf>,
    pub env: Vec<(String, String)>,
    pub stdin: Option<Vec<u8>>,
    /// A directory put first on `PATH` (for a credential helper).
    pub path_prepend: Option<PathBuf>,
    /// A program (and its arguments) that runs orasfs, such as `prlimit --nofile=…`.
    pub wrapper: Vec<String>,
}

impl Launch {
    /// Mount `source` (an empty source mounts the multi-registry root).
    pub fn new(source: &str) -> Launch {
        Launch {
            source: source.into(),
            ..Default::default()
        }
    }
    /// The source to mount, for a `Launch::default()` built before its source is known.
    pub fn source(mut self, source: &str) -> Launch {
        self.source = source.into();
        self
    }
    pub fn args(mut self, a: &[&str]) -> Launch {
        self.args.extend(a.iter().map(|s| s.to_string()));
        self
    }
    pub fn arg(mut self, a: impl Into<String>) -> Launch {
        self.args.push(a.into());
        self
    }
    /// Use this cache directory (to remount over it) instead of a fresh one.
    pub fn cache(mut self, p: &Path) -> Launch {
        self.cache = Some(p.to_path_buf());
        self
    }
    pub fn cwd(mut self, p: &Path) -> Launch {
        self.cwd = Some(p.to_path_buf());
        self
    }
    pub fn env(mut self, k: &str, v: impl Into<String>) -> Launch {
        self.env.push((k.into(), v.into()));
        self
    }
    /// Put `dir` first on orasfs's `PATH`.
    pub fn path(mut self, dir: &Path) -> Launch {
        self.path_prepend = Some(dir.to_path_buf());
        self
    }
    /// Run orasfs under `prog` (which must exec it, keeping the process id).
    pub fn under(mut self, prog: &[&str]) -> Launch {
        self.wrapper = prog.iter().map(|s| s.to_string()).collect();
        self
    }
    pub fn stdin(mut self, bytes: impl AsRef<[u8]>) -> Launch {
        self.stdin = Some(bytes.as_ref().to_vec());
        self
    }

    fn command(&self, base: &Path, mountpoint: &Path, stderr: &Path) -> io::Result<Child> {
        let bin = env!("CARGO_BIN_EXE_orasfs");
        let mut c = match self.wrapper.split_first() {
            Some((prog, args)) => {
                let mut c = Command::new(prog);
                c.args(args).arg(bin);
                c
            }
            None => Command::new(bin),
        };
        let home = base.join("home");
        fs::create_dir_all(&home)?;
        let cache = self.cache.clone().unwrap_or_else(|| base.join("cache"));
        hermetic(&mut c, &home);
        // No free-space floor unless the test sets one: what a test asserts of the cache
        // must not depend on how full the machine's disk is (at 95 % the default floor
        // of 5 % stores nothing, and every cache test would fail for that alone).
        let floor = if self.args.iter().any(|a| a.starts_with("--cache-min-free")) {
            None
        } else {
            Some(["--cache-min-free", "0"])
        };
        c.arg("mount")
            .arg("--foreground")
            .arg("--cache-dir")
            .arg(cache)
            .args(floor.iter().flatten())
            .args(&self.args)
            .args((!self.source.is_empty()).then_some(&self.source))
            .arg(mountpoint)
            .stdout(Stdio::null())
            .stderr(File::create(stderr)?)
            .stdin(if self.stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            });
        if let Some(p) = &self.path_prepend {
            let old = std::env::var("PATH").unwrap_or_default();
            c.env("PATH", format!("{}:{old}", p.display()));
        }
        for (k, v) in &self.env {
            c.env(k, v);
        }
        if let Some(d) = &self.cwd {
            c.current_dir(d);
        }
        let mut child = c.spawn()?;
        if let (Some(bytes), Some(mut pipe)) = (&self.stdin, child.stdin.take()) {
            // orasfs may exit before reading standard input (a test of a failure).
            let _ = pipe.write_all(bytes);
        }
        Ok(child)
    }

    /// Mount and wait until the mount is live; `Err` (with stderr) if orasfs exits first
    /// or nothing is mounted within 30 s.
    pub fn mount(self) -> Result<Mount, String> {
        self.try_mount().map_err(|f| {
            format!(
                "orasfs exited with {} before mounting: {}",
                f.status, f.stderr
            )
        })
    }

    /// Mount; `Err` with orasfs's exit status when it exits before mounting. Panics (after
    /// cleaning up) if nothing is mounted within 30 s.
    pub fn try_mount(self) -> Result<Mount, Failed> {
        let dir = tempfile::Builder::new()
            .prefix("orasfs-mount-")
            .tempdir()
            .expect("tempdir");
        let base = canonical(dir.path());
        let mountpoint = base.join("mnt");
        fs::create_dir(&mountpoint).expect("mountpoint");
        let cache = self.cache.clone().unwrap_or_else(|| base.join("cache"));
        let stderr = base.join("stderr.log");
        let child = self
            .command(&base, &mountpoint, &stderr)
            .expect("run orasfs");
        let mut m = Mount {
            child: Some(child),
            mountpoint,
            cache,
            stderr,
            _dir: dir,
        };
        let up = wait_for(MOUNT_WITHIN, || {
            if is_mounted(&m.mountpoint) {
                return Some(Ok(()));
            }
            match m.child.as_mut().map(|c| c.try_wait()) {
                Some(Ok(Some(status))) => Some(Err(status)),
                _ => None,
            }
        });
        match up {
            Some(Ok(())) => Ok(m),
            Some(Err(status)) => {
                m.child = None;
                Err(Failed {
                    status,
                    stderr: m.stderr(),
                })
            }
            None => {
                let err = m.stderr();
                drop(m);
                panic!(
                    "orasfs mount {} neither mounted nor exited in {MOUNT_WITHIN:?}; stderr: {err}",
                    self.source
                )
            }
        }
    }

    /// Run on a fresh mountpoint expecting a failure before mounting (60 s at most).
    pub fn fail(self) -> Failed {
        let dir = tempfile::tempdir().expect("tempdir");
        let mountpoint = canonical(dir.path()).join("mnt");
        fs::create_dir(&mountpoint).expect("mountpoint");
        self.fail_at(&mountpoint)
    }

    /// Run on `mountpoint` (which may be missing or a file) expecting orasfs to exit
    /// non-zero without ever mounting; panics (after cleaning up) if it mounts or runs
    /// longer than 60 s.
    pub fn fail_at(self, mountpoint: &Path) -> Failed {
        let dir = tempfile::tempdir().expect("tempdir");
        let base = canonical(dir.path());
        let stderr = base.join("stderr.log");
        let mut child = self
            .command(&base, mountpoint, &stderr)
            .expect("run orasfs");
        let mut mounted = false;
        let status = wait_for(Duration::from_secs(60), || {
            mounted |= is_mounted(mountpoint);
            child.try_wait().ok().flatten()
        });
        let text = fs::read_to_string(&stderr).unwrap_or_default();
        if status.is_none() || mounted || is_mounted(mountpoint) {
            force_unmount(mountpoint);
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "orasfs mount {} should have failed before mounting; stderr: {text}",
                self.source
            );
        }
        Failed {
            status: status.expect("exited"),
            stderr: text,
        }
    }
}

/// A running `orasfs mount --foreground`: unmounted and reaped on drop, even after SIGKILL.
pub struct Mount {
    child: Option<Child>,
    mountpoint: PathBuf,
    cache: PathBuf,
    stderr: PathBuf,
    // Dropped after `Drop::drop` has unmounted.
    _dir: tempfile::TempDir,
}

impl Mount {
    /// `Launch::new(source).args(args).mount()`.
    pub fn start(source: &str, args: &[&str]) -> Result<Mount, String> {
        Launch::new(source).args(args).mount()
    }
    /// `Launch::new(source).cache(cache).args(args).mount()`.
    pub fn start_with_cache(source: &str, cache: &Path, args: &[&str]) -> Result<Mount, String> {
        Launch::new(source).cache(cache).args(args).mount()
    }
    /// `Launch::new(source).fail()`.
    pub fn run_to_failure(source: &str) -> Failed {
        Launch::new(source).fail()
    }
    /// `Launch::new(source).args(args).fail_at(mountpoint)`.
    pub fn run_to_failure_at(source: &str, mountpoint: &Path, args: &[&str]) -> Failed {
        Launch::new(source).args(args).fail_at(mountpoint)
    }

    pub fn path(&self) -> &Path {
        &self.mountpoint
    }
    pub fn join(&self, rel: impl AsRef<Path>) -> PathBuf {
        self.mountpoint.join(rel)
    }
    pub fn cache_dir(&self) -> &Path {
        &self.cache
    }
    /// What orasfs printed on stderr so far.
    pub fn stderr(&self) -> String {
        fs::read_to_string(&self.stderr).unwrap_or_default()
    }
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }
    /// Whether the daemon process is still running.
    pub fn alive(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }
    /// SIGKILL the daemon and wait for it; the mount is left stale until drop.
    pub fn kill9(&mut self) {
        if let Some(c) = self.child.as_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
    /// Peak resident set size of the daemon in KiB (VmHWM), if it is running.
    pub fn peak_rss_kib(&self) -> Option<u64> {
        let status = fs::read_to_string(format!("/proc/{}/status", self.pid())).ok()?;
        status
            .lines()
            .find(|l| l.starts_with("VmHWM:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
    }
    /// Unmount with `fusermount3 -u` and return orasfs's exit status.
    pub fn unmount(mut self) -> ExitStatus {
        force_unmount(&self.mountpoint);
        let mut c = self.child.take().expect("orasfs was running");
        reap(&mut c, Duration::from_secs(10))
    }
    /// Send SIGTERM to orasfs and return its exit status (it should unmount and exit 0).
    pub fn terminate(mut self) -> ExitStatus {
        let mut child = self.child.take().expect("orasfs was running");
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .status();
        let status = reap(&mut child, Duration::from_secs(10));
        force_unmount(&self.mountpoint);
        status
    }
    /// Unmount, wait for orasfs to exit, and return everything it logged.
    pub fn finish(mut self) -> String {
        force_unmount(&self.mountpoint);
        if let Some(mut c) = self.child.take() {
            reap(&mut c, Duration::from_secs(10));
        }
        self.stderr()
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        force_unmount(&self.mountpoint);
        if let Some(mut c) = self.child.take() {
            reap(&mut c, Duration::from_secs(5));
        }
        // Never leave a mount behind, even if the child was killed mid-way.
        force_unmount(&self.mountpoint);
    }
}

/// A mountpoint the test owns, for the runs that are not a foreground mount (`orasfs
/// mount` in daemon mode, the mount helper, `orasfs umount`); whatever is mounted there is
/// unmounted on drop.
pub struct Spot {
    dir: tempfile::TempDir,
    pub mnt: PathBuf,
}

impl Spot {
    pub fn new() -> Spot {
        let dir = tempfile::tempdir().expect("tempdir");
        let mnt = canonical(dir.path()).join("mnt");
        fs::create_dir(&mnt).expect("mountpoint");
        Spot { dir, mnt }
    }
    /// The mountpoint, as text.
    pub fn mnt(&self) -> &str {
        self.mnt.to_str().expect("a UTF-8 mountpoint")
    }
    /// A path beside the mountpoint.
    pub fn file(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
    /// The cache directory [`Spot::daemon`] uses.
    pub fn cache(&self) -> PathBuf {
        self.file("cache")
    }
    /// `orasfs mount --cache-dir CACHE EXTRA… SOURCE MOUNTPOINT` in daemon mode, with the
    /// hermetic environment of a [`Launch`]; what it printed and its exit status.
    pub fn daemon(&self, source: &str, extra: &[&str]) -> std::process::Output {
        let home = self.file("home");
        fs::create_dir_all(&home).expect("home");
        let mut c = Command::new(env!("CARGO_BIN_EXE_orasfs"));
        hermetic(&mut c, &home);
        c.arg("mount")
            .arg("--cache-dir")
            .arg(self.cache())
            .args(extra)
            .arg(source)
            .arg(&self.mnt)
            .stdin(Stdio::null())
            .output()
            .expect("run orasfs")
    }
}

impl Drop for Spot {
    fn drop(&mut self) {
        force_unmount(&self.mnt);
    }
}
