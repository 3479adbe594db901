//! The first hour of a new user: the mistakes a newcomer makes get one loud line naming
//! the problem and the fix, before anything is mounted — and `--log-file` holds every
//! line. Real mounts over a real `docker-registry` and the example OCI layout.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::{is_mounted, wait_for, Mount, Registry, Spot};

const BIN: &str = env!("CARGO_BIN_EXE_orasfs");

fn layout() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/eo-layout")
}

fn orasfs(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .output()
        .expect("run orasfs")
}

/// Standard error of a run that must fail, as one line.
fn one_line_failure(out: &Output) -> String {
    assert!(!out.status.success(), "expected a failure");
    let err = String::from_utf8_lossy(&out.stderr).trim().to_string();
    assert_eq!(err.lines().count(), 1, "one line: {err}");
    err
}

#[test]
fn a_lone_source_is_reported_as_a_missing_mountpoint() {
    for source in [
        "127.0.0.1:5055/demo/files:v1",
        "https://ghcr.io/org/repo",
        layout().to_str().unwrap(),
    ] {
        let err = one_line_failure(&orasfs(&["mount", source]));
        assert!(
            err.starts_with("orasfs: MOUNTPOINT is missing:"),
            "{source}: {err}"
        );
        assert!(
            err.contains(&format!("orasfs mount {source} MOUNTPOINT")),
            "{err}"
        );
    }
    // A lone path that is not a SOURCE is still taken as the mountpoint.
    let err = one_line_failure(&orasfs(&["mount", "/no/such/mountpoint"]));
    assert!(
        err.contains("mountpoint /no/such/mountpoint: No such file or directory"),
        "{err}"
    );
}

#[test]
fn a_missing_tag_and_a_missing_repository_are_told_apart() {
    let reg = Registry::start();
    reg.push_artifact("demo/files", "v1", &[("a.txt", b"a")]);
    let addr = reg.addr();
    let f = Mount::run_to_failure(&format!("{addr}/demo/files:v9"));
    assert!(
        f.stderr
            .contains(&format!("tag v9 in repository {addr}/demo/files not found")),
        "{}",
        f.stderr
    );
    let f = Mount::run_to_failure(&format!("{addr}/demo/nofiles:v1"));
    assert!(
        f.stderr.contains(&format!(
            "repository {addr}/demo/nofiles (asked for {addr}/demo/nofiles:v1) not found"
        )),
        "{}",
        f.stderr
    );
    let digest = format!("sha256:{}", "0".repeat(64));
    let f = Mount::run_to_failure(&format!("{addr}/demo/files@{digest}"));
    assert!(
        f.stderr.contains(&format!(
            "manifest {digest} in repository {addr}/demo/files not found"
        )),
        "{}",
        f.stderr
    );
}

#[test]
fn a_second_mount_on_the_same_mountpoint_is_refused_and_names_the_first() {
    let source = format!("{}:v1", layout().display());
    let spot = Spot::new();
    let out = spot.daemon(&source, &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let err = one_line_failure(&spot.daemon(&source, &[]));
    assert!(
        err.contains(&format!("{} is already mounted", spot.mnt())),
        "{err}"
    );
    assert!(err.contains(&source), "names the mount there: {err}");
    assert!(
        err.contains(&format!("orasfs umount {}", spot.mnt())),
        "{err}"
    );
    let stacked = fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter(|l| l.split(' ').nth(4) == Some(spot.mnt()))
        .count();
    assert_eq!(stacked, 1, "one mount, not two");
    let out = orasfs(&["umount", spot.mnt()]);
    assert!(out.status.success());
}

#[test]
fn a_non_empty_mountpoint_is_refused_unless_nonempty_is_given() {
    let source = format!("{}:v1", layout().display());
    let spot = Spot::new();
    fs::write(spot.mnt.join("notes.txt"), b"mine").unwrap();
    let err = one_line_failure(&spot.daemon(&source, &[]));
    assert!(
        err.contains(&format!(
            "mountpoint {} is not empty (it holds notes.txt); give --nonempty",
            spot.mnt()
        )),
        "{err}"
    );
    assert!(!is_mounted(&spot.mnt));
    let out = spot.daemon(&source, &["--nonempty"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(spot.mnt.join("stac_item.json").exists());
    assert!(orasfs(&["umount", spot.mnt()]).status.success());
    assert_eq!(fs::read(spot.mnt.join("notes.txt")).unwrap(), b"mine");
}

#[test]
fn umount_says_not_mounted_and_names_what_holds_a_busy_mount() {
    let spot = Spot::new();
    let err = one_line_failure(&orasfs(&["umount", spot.mnt()]));
    assert_eq!(err, format!("orasfs: {} is not mounted", spot.mnt()));

    let out = spot.daemon(&format!("{}:v1", layout().display()), &[]);
    assert!(out.status.success());
    let mut holder = Command::new("sleep")
        .arg("60")
        .current_dir(&spot.mnt)
        .spawn()
        .unwrap();
    let busy = orasfs(&["umount", spot.mnt()]);
    let _ = holder.kill();
    let _ = holder.wait();
    let err = one_line_failure(&busy);
    assert!(
        err.contains(&format!(
            "{} is busy (held by sleep (pid {}))",
            spot.mnt(),
            holder.id()
        )),
        "{err}"
    );
    assert!(
        err.contains(&format!("orasfs umount --lazy {}", spot.mnt())),
        "{err}"
    );
    assert!(is_mounted(&spot.mnt), "a refused unmount leaves the mount");
    assert!(orasfs(&["umount", spot.mnt()]).status.success());
    assert!(!is_mounted(&spot.mnt));
}

#[test]
fn the_mount_helper_names_an_unknown_option() {
    let spot = Spot::new();
    let helper = spot.file("mount.orasfs");
    std::os::unix::fs::symlink(BIN, &helper).unwrap();
    let source = format!("{}:v1", layout().display());
    let out = Command::new(&helper)
        .args([&source, spot.mnt(), "-o", "ro,bogus_opt,allow_other"])
        .output()
        .unwrap();
    let err = one_line_failure(&out);
    assert_eq!(err, "mount.orasfs: unknown mount option bogus_opt");
    assert!(!is_mounted(&spot.mnt));
}

/// The daemon's pid, from `/proc`: the orasfs process whose command line names `mnt`.
fn daemon_pid(mnt: &str) -> Option<u32> {
    fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: u32 = e.file_name().to_str()?.parse().ok()?;
        let cmd = fs::read(e.path().join("cmdline")).ok()?;
        let args: Vec<&[u8]> = cmd.split(|b| *b == 0).collect();
        let exe = fs::read_link(e.path().join("exe")).ok()?;
        (exe == Path::new(BIN) && args.contains(&mnt.as_bytes())).then_some(pid)
    })
}

#[test]
fn the_log_file_gets_every_line_and_no_fuser_chatter() {
    let spot = Spot::new();
    let log = spot.file("orasfs.log");
    let source = format!("{}:v1", layout().display());
    let out = spot.daemon(&source, &["-vv", "--log-file", log.to_str().unwrap()]);
    let terminal = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{terminal}");
    let pid = daemon_pid(spot.mnt()).expect("the daemon runs");
    // Written before the daemon detached: on the terminal, and in the file too.
    let mounted = format!("{source} at {}", spot.mnt());
    assert!(terminal.contains(&mounted), "terminal: {terminal}");
    let _ = fs::read(spot.mnt.join("stac_item.json")).unwrap();
    assert!(orasfs(&["umount", spot.mnt()]).status.success());
    let gone = wait_for(Duration::from_secs(10), || {
        (!Path::new(&format!("/proc/{pid}")).exists()).then_some(())
    });
    assert!(gone.is_some(), "the daemon exits after the unmount");
    let text = fs::read_to_string(&log).unwrap();
    assert_eq!(
        text.matches(&mounted).count(),
        1,
        "once in the log file: {text}"
    );
    assert!(
        text.contains("DEBUG"),
        "debug lines after the detach: {text}"
    );
    let chatter: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("capability ") || l.contains("WARN"))
        .collect();
    assert!(chatter.is_empty(), "fuser chatter at -vv: {chatter:?}");

    // A failure before mounting is in the file as well as on the terminal.
    let err = one_line_failure(&spot.daemon(
        &format!("{}:nope", layout().display()),
        &["--log-file", log.to_str().unwrap()],
    ));
    let line = err.strip_prefix("orasfs: ").unwrap();
    let text = fs::read_to_string(&log).unwrap();
    assert!(
        text.lines()
            .any(|l| l.contains("ERROR") && l.ends_with(line)),
        "{line} in the log file: {text}"
    );
}

#[test]
fn the_log_file_of_a_foreground_mount_gets_every_line() {
    let spot = Spot::new();
    let log = spot.file("fg.log");
    let source = format!("{}:v1", layout().display());
    let m = Mount::start(&source, &["-v", "--log-file", log.to_str().unwrap()]).unwrap();
    let path = m.path().to_path_buf();
    assert!(m.unmount().success());
    let text = fs::read_to_string(&log).unwrap();
    assert!(
        text.contains(&format!("{source} at {}", path.display())),
        "{text}"
    );
}

#[test]
fn umount_leaves_a_mount_that_is_not_fuse_alone() {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    if !common::needs(
        root,
        "first_hour::umount_leaves_a_mount_that_is_not_fuse_alone",
        "mounting a tmpfs to refuse needs root",
    ) {
        return;
    }
    let spot = Spot::new();
    let ok = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=1m", "tmpfs"])
        .arg(&spot.mnt)
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "mount a tmpfs");
    let refused = orasfs(&["umount", spot.mnt()]);
    let still = is_mounted(&spot.mnt);
    let _ = Command::new("umount").arg(&spot.mnt).status();
    let err = one_line_failure(&refused);
    assert_eq!(
        err,
        format!(
            "orasfs: {} is a tmpfs mount, not orasfs; leaving it alone",
            spot.mnt()
        )
    );
    assert!(still, "the tmpfs stays mounted");
}
