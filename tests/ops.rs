//! Operations: daemon mode, signals, stale-mount recovery, the mount(8) helper, systemd
//! units, tag refresh, negative lookups, xattrs and stats — real mounts over a real
//! registry on loopback.

mod common;

use std::fs;
use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{is_mounted, random_bytes, wait_for, xattr, Mount, Registry, Spot};

const BIN: &str = env!("CARGO_BIN_EXE_orasfs");

fn push_simple(reg: &Registry, repo: &str, tag: &str, name: &str, content: &[u8]) {
    reg.push_artifact(repo, tag, &[(name, content)]);
}

#[test]
fn daemon_returns_once_the_mount_answers_and_reports_failures() {
    let reg = Registry::start();
    push_simple(&reg, "eo/products", "v1", "a.txt", b"hello");
    let spot = Spot::new();
    let out = spot.daemon(&format!("{}/eo/products", reg.addr()), &[]);
    let (ok, err) = (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    assert!(ok, "daemon mount failed: {err}");
    // No waiting: the parent only exits once the mount is live.
    assert_eq!(fs::read(spot.mnt.join("v1/a.txt")).unwrap(), b"hello");
    let st = Command::new(BIN)
        .args(["umount"])
        .arg(&spot.mnt)
        .status()
        .unwrap();
    assert!(st.success());
    assert!(wait_for(Duration::from_secs(5), || (!is_mounted(&spot.mnt))
        .then_some(()))
    .is_some());

    let out = spot.daemon(&format!("{}/eo/products:nope", reg.addr()), &[]);
    let (ok, err) = (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    assert!(!ok);
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    assert!(err.contains("not found"), "{err}");
    assert!(!is_mounted(&spot.mnt));
}

#[test]
fn sigterm_unmounts_cleanly_and_exits_zero() {
    let reg = Registry::start();
    push_simple(&reg, "r", "v1", "f", b"x");
    let m = Mount::start(&format!("{}/r:v1", reg.addr()), &[]).unwrap();
    let path = m.path().to_path_buf();
    assert_eq!(fs::read(m.join("f")).unwrap(), b"x");
    let status = m.terminate();
    assert!(status.success(), "{status}");
    assert!(!is_mounted(&path));
}

#[test]
fn a_stale_mount_left_by_a_killed_daemon_is_cleared_and_mounted_again() {
    let reg = Registry::start();
    push_simple(&reg, "r", "v1", "f", b"data");
    let spot = Spot::new();
    let source = format!("{}/r:v1", reg.addr());
    let mut child = Command::new(BIN)
        .args(["mount", "--foreground", "--cache-dir"])
        .arg(spot.cache())
        .arg(&source)
        .arg(&spot.mnt)
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    assert!(wait_for(Duration::from_secs(10), || is_mounted(&spot.mnt)
        .then_some(()))
    .is_some());
    child.kill().unwrap();
    child.wait().unwrap();
    let e = fs::read_dir(&spot.mnt).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(107), "ENOTCONN expected, got {e}");
    let log = spot.file("log");
    let out = spot.daemon(&source, &["--log-file", log.to_str().unwrap()]);
    let (ok, err) = (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    assert!(ok, "remount failed: {err}");
    assert_eq!(fs::read(spot.mnt.join("f")).unwrap(), b"data");
    let said = format!("{err}{}", fs::read_to_string(&log).unwrap_or_default());
    assert!(said.contains("stale"), "the recovery is logged: {said}");
}

#[test]
fn mount_helper_understands_fstab_options() {
    let reg = Registry::start();
    push_simple(&reg, "eo/products", "v1", "a.tif", b"tiff");
    let spot = Spot::new();
    let helper = spot.file("mount.orasfs");
    std::os::unix::fs::symlink(BIN, &helper).unwrap();
    let opts = format!(
        "ro,_netdev,nofail,noauto,x-systemd.automount,cache_dir={},metadata_ttl=5s,file_mode=0440,dir_mode=0550",
        spot.cache().display()
    );
    let out = Command::new(&helper)
        .arg(format!("{}/eo/products:v1", reg.addr()))
        .arg(&spot.mnt)
        .args(["-o", &opts])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    use std::os::unix::fs::PermissionsExt;
    let f = fs::metadata(spot.mnt.join("a.tif")).unwrap();
    assert_eq!(f.permissions().mode() & 0o7777, 0o440);
    assert_eq!(
        fs::metadata(&spot.mnt).unwrap().permissions().mode() & 0o7777,
        0o550
    );
    assert!(spot.cache().join("v2").is_dir(), "cache_dir= was used");
    // The same good source with `rw`, on a fresh mountpoint: refused for `rw` alone.
    let other = Spot::new();
    let bad = Command::new(&helper)
        .arg(format!("{}/eo/products:v1", reg.addr()))
        .arg(&other.mnt)
        .args(["-o", &opts.replacen("ro,", "rw,", 1)])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&bad.stderr);
    assert!(!bad.status.success(), "rw was accepted: {said}");
    assert!(said.contains("read-only"), "refused as read-only: {said}");
    assert!(!is_mounted(&other.mnt), "nothing is mounted");
}

#[test]
fn systemd_units_verify() {
    if !common::needs(
        common::have("systemd-analyze", &["--version"]),
        "ops::systemd_units_verify",
        "systemd-analyze is not installed (apt: systemd)",
    ) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("systemd");
    // verify checks that ExecStart's binary exists: point it at the one just built.
    let unit = fs::read_to_string(root.join("orasfs@.service"))
        .unwrap()
        .replace("/usr/local/bin/orasfs", BIN);
    fs::write(dir.path().join("orasfs@.service"), unit).unwrap();
    std::os::unix::fs::symlink("orasfs@.service", dir.path().join("orasfs@eo.service")).unwrap();
    fs::copy(root.join("mnt-eo.mount"), dir.path().join("mnt-eo.mount")).unwrap();
    let out = Command::new("systemd-analyze")
        .args(["verify", "orasfs@eo.service", "mnt-eo.mount"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    // systemd-analyze exits 0 on unknown keys and bad values: any remark about our files fails.
    let remarks: Vec<&str> = err
        .lines()
        .filter(|l| l.contains(dir.path().to_str().unwrap()))
        .collect();
    assert!(remarks.is_empty(), "{remarks:?}");
}

#[test]
fn a_moved_tag_shows_new_files_after_the_ttl_while_open_files_keep_their_bytes() {
    let reg = Registry::start();
    let old = random_bytes(6 << 20, 1);
    let new = random_bytes(6 << 20, 2);
    push_simple(&reg, "r", "v1", "f.bin", &old);
    let m = Mount::start(&format!("{}/r", reg.addr()), &["--metadata-ttl", "1s"]).unwrap();
    let mut file = fs::File::open(m.join("v1/f.bin")).unwrap();
    let mut head = vec![0u8; 1 << 20];
    file.read_exact(&mut head).unwrap();
    push_simple(&reg, "r", "v1", "f.bin", &new);
    let mut rest = Vec::new();
    file.read_to_end(&mut rest).unwrap();
    head.extend_from_slice(&rest);
    assert!(
        head == old,
        "an open file never mixes bytes of two manifests"
    );
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        fs::read(m.join("v1/f.bin")).unwrap() == new,
        "a new lookup after the TTL sees the moved tag"
    );
}

#[test]
fn negative_lookups_do_not_reach_the_registry() {
    let reg = Registry::start();
    push_simple(&reg, "r", "v1", "imagery.tif", b"tiff");
    let m = Mount::start(&format!("{}/r", reg.addr()), &[]).unwrap();
    assert!(m.join("v1/imagery.tif").exists());
    reg.settle();
    let before = reg.requests().len();
    for i in 0..200 {
        for probe in [
            "v1/imagery.tif.aux.xml",
            "v1/imagery.tif.ovr",
            "v1/imagery.tif.msk",
            "nosuchtag",
        ] {
            assert!(!m.join(probe).exists(), "{probe} #{i}");
        }
    }
    reg.settle();
    let after = reg.requests().len();
    assert!(
        after - before <= 1,
        "{} registry requests for 800 missing-name lookups",
        after - before
    );
}

#[test]
fn xattrs_and_stats_explain_the_mount() {
    let reg = Registry::start();
    let data = random_bytes(5 << 20, 3);
    let pushed = reg.push_layers(
        "eo/products",
        Some("v1"),
        vec![common::LayerSpec::titled("imagery.tif", data.clone())
            .annotation("eo:band", "B04")
            .media_type("image/tiff")],
    );
    let m = Mount::start(&format!("{}/eo/products", reg.addr()), &[]).unwrap();
    let f = m.join("v1/imagery.tif");
    assert_eq!(
        xattr(&f, "user.oci.mediatype").as_deref(),
        Some("image/tiff")
    );
    assert_eq!(
        xattr(&f, "user.oci.annotation.eo:band").as_deref(),
        Some("B04")
    );
    assert_eq!(xattr(&f, "user.oci.size").as_deref(), Some("5242880"));
    assert_eq!(
        xattr(&m.join("v1"), "user.oci.digest").as_deref(),
        Some(pushed.digest.as_str())
    );
    assert_eq!(
        xattr(&m.join("v1"), "user.oci.reference").as_deref(),
        Some("eo/products:v1")
    );
    assert_eq!(xattr(&f, "user.orasfs.verified").as_deref(), Some("none"));
    let stats = |m: &Mount| -> serde_json::Value {
        serde_json::from_slice(&fs::read(m.join(".orasfs/stats.json")).unwrap()).unwrap()
    };
    assert_eq!(stats(&m)["registry"]["blob_bytes"], 0);
    assert!(fs::read(&f).unwrap() == data);
    // A fetch is counted once its body has ended, which may be just after the reader got
    // the bytes it needed: wait for the count (10 s at most), then check it.
    let counted = |s: &serde_json::Value| s["registry"]["blob_bytes"].as_u64().unwrap_or(0);
    let s = wait_for(Duration::from_secs(10), || {
        let s = stats(&m);
        (counted(&s) >= data.len() as u64).then_some(s)
    })
    .unwrap_or_else(|| stats(&m));
    assert!(
        s["registry"]["blob_bytes"].as_u64().unwrap() >= data.len() as u64,
        "{s}"
    );
    assert!(s["registry"]["blob_requests"].as_u64().unwrap() >= 1, "{s}");
    assert!(
        s["verification"]["verified_blobs"].as_u64().unwrap() >= 1,
        "{s}"
    );
    assert_eq!(xattr(&f, "user.orasfs.verified").as_deref(), Some("blob"));
    assert!(
        !common::names(m.path()).contains(&".orasfs".to_string()),
        "hidden from the root listing"
    );
    let out = Command::new(BIN)
        .arg("stats")
        .arg(m.path())
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("verified_blobs"));
}

#[test]
fn the_multi_registry_root_reaches_any_registry_by_host() {
    let reg = Registry::start();
    let data = random_bytes(3 << 20, 7);
    push_simple(&reg, "eo/products", "v1", "imagery.tif", &data);
    let spot = Spot::new();
    let out = Command::new(BIN)
        .args(["mount", "--cache-dir"])
        .arg(spot.cache())
        .arg(&spot.mnt)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(common::names(&spot.mnt).is_empty(), "no host visited yet");
    let host = spot.mnt.join(reg.addr());
    assert_eq!(common::names(&host), ["eo"]);
    assert!(fs::read(host.join("eo/products/v1/imagery.tif")).unwrap() == data);
    assert_eq!(
        common::names(&spot.mnt),
        [reg.addr().to_string()],
        "the root lists visited hosts"
    );
    assert!(!spot.mnt.join("not-a-host").exists());
    assert_eq!(
        fs::metadata(spot.mnt.join("127.0.0.1:1"))
            .err()
            .and_then(|e| e.raw_os_error()),
        Some(libc::EIO),
        "a registry that cannot be reached is EIO, not absent"
    );
}
