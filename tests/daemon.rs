//! The daemon as a service manager sees it: how it stops (also while the mount is busy),
//! how the mount is named in /proc/self/mountinfo, when it leaves the caller's process
//! group, the cache directory it creates, and the error without /dev/fuse. Real registry,
//! real FUSE mounts; the systemd units themselves are booted in `tests/systemd/check.sh`.

mod common;

use std::fs::{self, File};
use std::io::{Read, Seek, SeekFrom};
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

const MIB: usize = 1024 * 1024;

/// A registry holding one artifact, `stop/files:v1`, with `big.bin` (4 MiB + 5) in it.
fn registry_with_artifact() -> (Registry, Vec<u8>) {
    let reg = Registry::start();
    let big = random_bytes(4 * MIB + 5, 16);
    reg.push_artifact("stop/files", "v1", &[("big.bin", &big)]);
    (reg, big)
}

/// The mountinfo line of `mnt`, split into (fstype, source).
fn mountinfo_type_and_source(mnt: &Path) -> Option<(String, String)> {
    let want = mnt.to_str()?;
    let text = fs::read_to_string("/proc/self/mountinfo").ok()?;
    text.lines().find_map(|l| {
        let (head, tail) = l.split_once(" - ")?;
        if head.split(' ').nth(4) != Some(want) {
            return None;
        }
        let mut t = tail.split(' ');
        Some((t.next()?.to_string(), t.next()?.to_string()))
    })
}

/// Kill and reap a helper process on drop.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn kill_term(pid: u32) {
    let status = Command::new("kill")
        .arg("-TERM")
        .arg(pid.to_string())
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -TERM {pid}");
}

#[test]
fn sigterm_on_a_busy_mount_detaches_it_and_exits_0() {
    let (reg, _) = registry_with_artifact();
    let m = Mount::start(&format!("{}/stop/files:v1", reg.addr()), &[]).expect("mount");
    let mnt = m.path().to_path_buf();
    // A shell parked in the mount: an ordinary unmount fails with EBUSY.
    let _parked = Reaped(
        Command::new("sleep")
            .arg("60")
            .current_dir(&mnt)
            .spawn()
            .expect("run sleep"),
    );
    let refused = Command::new("umount")
        .arg(&mnt)
        .stderr(Stdio::null())
        .status()
        .expect("run umount");
    assert!(!refused.success(), "the mount should be busy");
    let start = Instant::now();
    let status = m.terminate();
    let took = start.elapsed();
    assert!(status.success(), "orasfs exited with {status}");
    assert!(took < Duration::from_secs(5), "stopping took {took:?}");
    assert!(!is_mounted(&mnt), "a mount is left at {}", mnt.display());
}

#[test]
fn a_file_open_at_sigterm_is_served_to_the_end_then_the_daemon_exits_0() {
    let (reg, big) = registry_with_artifact();
    let m = Mount::start(&format!("{}/stop/files:v1", reg.addr()), &[]).expect("mount");
    let mnt = m.path().to_path_buf();
    let mut f = File::open(m.join("v1/big.bin"))
        .or_else(|_| File::open(m.join("big.bin")))
        .expect("open big.bin");
    let mut head = vec![0u8; 4096];
    f.read_exact(&mut head).expect("read the head");
    assert_eq!(head, big[..4096]);

    kill_term(m.pid());
    // The mount leaves the namespace at once ...
    let gone = wait_for(Duration::from_secs(3), || (!is_mounted(&mnt)).then_some(()));
    assert!(
        gone.is_some(),
        "{} still mounted after SIGTERM",
        mnt.display()
    );
    // ... while the open file keeps being served, from where it was to the end.
    let mut rest = Vec::new();
    f.seek(SeekFrom::Start(4096)).expect("seek");
    f.read_to_end(&mut rest).expect("read after the detach");
    assert!(
        rest == big[4096..],
        "the rest differs ({} bytes read)",
        rest.len()
    );
    drop(f);
    let start = Instant::now();
    let status = m.unmount();
    assert!(status.success(), "orasfs exited with {status}");
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "the daemon lingered {:?} after the last file closed",
        start.elapsed()
    );
}

#[test]
fn the_mount_shows_the_source_as_given_and_type_fuse_orasfs() {
    let (reg, _) = registry_with_artifact();
    let source = format!("{}/stop/files:v1", reg.addr());
    let m = Mount::start(&source, &[]).expect("mount");
    let (fstype, shown) = mountinfo_type_and_source(m.path()).expect("the mount in mountinfo");
    assert_eq!(fstype, "fuse.orasfs");
    assert_eq!(shown, source);
    let out = Command::new("findmnt")
        .args(["-n", "-o", "SOURCE", "-t", "fuse.orasfs", "--mountpoint"])
        .arg(m.path())
        .output()
        .expect("run findmnt");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), source);
}

#[test]
fn a_missing_cache_directory_is_created_private() {
    let (reg, _) = registry_with_artifact();
    let base = tempfile::tempdir().expect("tempdir");
    let cache = base.path().join("var/cache/orasfs");
    let m = Mount::start_with_cache(&format!("{}/stop/files:v1", reg.addr()), &cache, &[])
        .expect("mount");
    for dir in [base.path().join("var/cache"), cache.clone()] {
        let mode = fs::metadata(&dir).expect("stat").permissions().mode() & 0o7777;
        assert_eq!(mode, 0o700, "{} is {mode:o}", dir.display());
    }
    drop(m);
}

/// The (process group, session) of a process, from /proc/PID/stat.
fn pgrp_and_session(pid: u32) -> Option<(u32, u32)> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the parenthesised command name: state ppid pgrp session ...
    let after = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = after.split(' ').collect();
    Some((f.get(2)?.parse().ok()?, f.get(3)?.parse().ok()?))
}

/// Children of `pid`.
fn children(pid: u32) -> Vec<u32> {
    fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|s| s.parse().ok())
        .collect()
}

fn orasfs_daemon(args: &[&str], cache: &Path, mountpoint: &Path) -> Child {
    Command::new(env!("CARGO_BIN_EXE_orasfs"))
        .arg("mount")
        .arg("--cache-dir")
        .arg(cache)
        .args(args)
        .arg(mountpoint)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        // Its own process group, as mount(8) would be under systemd's automount.
        .process_group(0)
        .spawn()
        .expect("run orasfs")
}

/// Under an automount only the mounting process group may touch the pending mountpoint,
/// so the daemon must do its checks before it leaves that group.
#[test]
fn the_daemon_stays_in_the_callers_process_group_until_the_mount_is_ready() {
    // A "registry" that accepts connections and never answers: the daemon sits in its
    // checks before mounting.
    let silent = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = silent.local_addr().expect("addr");
    let dir = tempfile::tempdir().expect("tempdir");
    let mnt = dir.path().join("mnt");
    fs::create_dir(&mnt).expect("mountpoint");
    let source = format!("{addr}/slow/repo:v1");
    let parent = Reaped(orasfs_daemon(
        &["--read-timeout", "20s", "--connect-timeout", "20s", &source],
        &dir.path().join("cache"),
        &mnt,
    ));
    let parent_pid = parent.0.id();
    let child = wait_for(Duration::from_secs(5), || {
        children(parent_pid).first().copied()
    })
    .expect("the daemon forked");
    let _child = KillOnDrop(child);
    // Give it time to reach its checks (it is connected to the silent listener by now).
    let _conn = silent.accept().expect("the daemon connects");
    let (pgrp, session) = pgrp_and_session(child).expect("stat of the daemon");
    assert_eq!(
        pgrp, parent_pid,
        "before the mount is ready the daemon left the caller's process group"
    );
    assert_ne!(
        session, child,
        "the daemon started its own session before the mount was ready"
    );
    drop(parent);

    // Once ready, it is a session of its own (no terminal hang-up reaches it).
    let (reg, _) = registry_with_artifact();
    let mnt2 = dir.path().join("mnt2");
    fs::create_dir(&mnt2).expect("mountpoint");
    let source = format!("{}/stop/files:v1", reg.addr());
    let mut parent = orasfs_daemon(&[&source], &dir.path().join("cache2"), &mnt2);
    let status = parent.wait().expect("wait for the parent");
    let daemon = find_daemon(&mnt2);
    let _unmount = UnmountOnDrop(mnt2.clone());
    assert!(status.success(), "orasfs mount exited with {status}");
    assert!(is_mounted(&mnt2));
    let daemon = daemon.expect("the daemon process");
    let (pgrp, session) = pgrp_and_session(daemon).expect("stat of the daemon");
    assert_eq!(
        (pgrp, session),
        (daemon, daemon),
        "the ready daemon leads its own session"
    );
}

/// The pid of the `orasfs mount` whose command line names `mountpoint`.
fn find_daemon(mountpoint: &Path) -> Option<u32> {
    let want = mountpoint.as_os_str().as_encoded_bytes();
    fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: u32 = e.file_name().to_str()?.parse().ok()?;
        let cmd = fs::read(format!("/proc/{pid}/cmdline")).ok()?;
        cmd.split(|b| *b == 0).any(|arg| arg == want).then_some(pid)
    })
}

struct UnmountOnDrop(PathBuf);

impl Drop for UnmountOnDrop {
    fn drop(&mut self) {
        if let Some(pid) = find_daemon(&self.0) {
            let _ = Command::new("fusermount3").arg("-u").arg(&self.0).status();
            wait_for(Duration::from_secs(5), || {
                (!Path::new(&format!("/proc/{pid}")).exists()).then_some(())
            });
        }
        if is_mounted(&self.0) {
            let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
}

/// SIGKILL a process by pid on drop.
struct KillOnDrop(u32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .arg("-KILL")
            .arg(self.0.to_string())
            .stderr(Stdio::null())
            .status();
    }
}

#[test]
fn without_dev_fuse_the_error_names_the_device() {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    if !needs(
        root,
        "daemon::without_dev_fuse_the_error_names_the_device",
        "this test needs root (to hide /dev/fuse in a private mount namespace)",
    ) {
        return;
    }
    let (reg, _) = registry_with_artifact();
    let dir = tempfile::tempdir().expect("tempdir");
    let mnt = dir.path().join("mnt");
    fs::create_dir(&mnt).expect("mountpoint");
    // A private mount namespace with an empty /dev: no /dev/fuse in there.
    let out = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c"])
        .arg(r#"mount -t tmpfs none /dev && exec "$@""#)
        .arg("sh")
        .arg(env!("CARGO_BIN_EXE_orasfs"))
        .args(["mount", "--foreground", "--cache-dir"])
        .arg(dir.path().join("cache"))
        .arg(format!("{}/stop/files:v1", reg.addr()))
        .arg(&mnt)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .output()
        .expect("run unshare (util-linux)");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "mounted without /dev/fuse? {stderr}");
    let last = stderr.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("orasfs: ") && last.contains("/dev/fuse does not exist"),
        "{stderr}"
    );
}
