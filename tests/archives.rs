//! Archives as directories, end to end against `docker-registry`: an ORAS directory push
//! round-trips through the mount, Helm charts and untitled tar layers get their domain
//! names, members are read lazily (counted from the registry's log), and hostile
//! archives stay inside their directory.

mod common;

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;

use common::*;

const TAR_GZ: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
const TAR: &str = "application/vnd.oci.image.layer.v1.tar";
const HELM_CHART: &str = "application/vnd.cncf.helm.chart.content.v1.tar+gzip";
const HELM_CONFIG: &str = "application/vnd.cncf.helm.config.v1+json";
const UNPACK: &str = "io.deis.oras.content.unpack";
const MIB: usize = 1 << 20;

/// A tool the test needs; fails (never skips) when missing, naming the package.
fn need(prog: &str, args: &[&str], package: &str) {
    assert!(
        have(prog, args),
        "{prog} is needed by this test: install {package}"
    );
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().expect("run a command");
    assert!(
        out.status.success(),
        "{cmd:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `tar` of `names` under `dir` (gzip when `gz`).
fn tar(dir: &Path, names: &[&str], gz: bool) -> Vec<u8> {
    let out = dir.join(if gz { "out.tar.gz" } else { "out.tar" });
    run(Command::new("tar")
        .arg(if gz { "czf" } else { "cf" })
        .arg(&out)
        .arg("-C")
        .arg(dir)
        .args(names));
    fs::read(out).unwrap()
}

fn errno_of(r: std::io::Result<impl Sized>) -> Option<i32> {
    r.err().and_then(|e| e.raw_os_error())
}

// ---------------------------------------------------------------------------------------

#[test]
fn an_oras_directory_push_round_trips_as_a_directory() {
    assert!(have_oras(
        "archives::an_oras_directory_push_round_trips_as_a_directory"
    ));
    need("diff", &["--version"], "diffutils");
    let reg = Registry::start();
    let work = tempfile::tempdir().unwrap();
    let d = work.path().join("mydir");
    fs::create_dir_all(d.join("sub/deeper")).unwrap();
    fs::write(d.join("a.txt"), b"hello\n").unwrap();
    fs::write(d.join("empty"), b"").unwrap();
    fs::write(d.join("sub/weights.bin"), random_bytes(3 * MIB + 7, 1)).unwrap();
    fs::write(d.join("sub/deeper/name with spaces é.txt"), b"x").unwrap();
    let long = "l".repeat(120);
    fs::write(d.join(format!("sub/{long}.txt")), random_bytes(5000, 2)).unwrap();
    std::os::unix::fs::symlink("a.txt", d.join("link")).unwrap();
    // Push with the ORAS Python client, then annotate the layer as the ORAS CLI does.
    let annotate = r#"
m = c.get_manifest(ref)
m["layers"][0]["annotations"]["io.deis.oras.content.unpack"] = "true"
r = c.upload_manifest(m, c.get_container(ref))
if r.status_code not in (200, 201):
    sys.exit(f"manifest push failed: {r.status_code} {r.text}")
"#;
    oras_push_from(
        work.path(),
        reg.addr(),
        "dirs/mydir:v1",
        &["mydir"],
        annotate,
    );

    let m = Mount::start(&format!("{}/dirs/mydir:v1", reg.addr()), &[]).expect("mount");
    let listed = names(m.path());
    assert!(listed.contains(&"mydir".to_string()), "{listed:?}");
    assert!(m.join("mydir").is_dir(), "mydir is not a directory");
    let out = Command::new("diff")
        .arg("-r")
        .arg(&d)
        .arg(m.join("mydir"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "diff -r: {}{}\norasfs: {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        m.stderr()
    );
    // Symlinks are symlinks with their text; modes are read-only; the raw blob stays.
    assert_eq!(
        fs::read_link(m.join("mydir/link")).unwrap(),
        Path::new("a.txt")
    );
    let mode = fs::metadata(m.join("mydir/a.txt")).unwrap().mode() & 0o7777;
    assert_eq!(mode & 0o222, 0, "writable mode {mode:o}");
    let raw = fs::read(m.join("mydir.tar.gz")).unwrap();
    assert_eq!(
        &raw[..2],
        &[0x1f, 0x8b],
        "mydir.tar.gz is not the gzip blob"
    );
    let digest = xattr(&m.join("mydir/a.txt"), "user.orasfs.layer").expect("layer xattr");
    assert_eq!(digest, sha256(&raw));
    assert!(xattr(&m.join("mydir/a.txt"), "user.orasfs.offset").is_some());
    drop(m);

    let m = Mount::start(
        &format!("{}/dirs/mydir:v1", reg.addr()),
        &["--unpack", "none"],
    )
    .expect("mount");
    assert!(m.join("mydir").is_file(), "--unpack none still unpacks");
    assert!(!m.join("mydir.tar.gz").exists());
}

#[test]
fn helm_charts_and_untitled_tar_layers_get_domain_names() {
    need("getfattr", &["--version"], "attr");
    let reg = Registry::start();
    let work = tempfile::tempdir().unwrap();
    let chart = work.path().join("mychart");
    fs::create_dir_all(chart.join("templates")).unwrap();
    let chart_yaml = b"apiVersion: v2\nname: mychart\nversion: 0.1.0\n";
    fs::write(chart.join("Chart.yaml"), chart_yaml).unwrap();
    fs::write(chart.join("values.yaml"), b"replicas: 2\n").unwrap();
    fs::write(chart.join("templates/cm.yaml"), b"kind: ConfigMap\n").unwrap();
    let tgz = tar(work.path(), &["mychart"], true);
    let config = br#"{"name":"mychart","version":"0.1.0","apiVersion":"v2"}"#.to_vec();
    reg.push_image(
        "charts/mychart",
        Some("0.1.0"),
        HELM_CONFIG,
        config,
        vec![LayerSpec::untitled(tgz.clone()).media_type(HELM_CHART)],
    );
    let plain = tar(work.path(), &["mychart"], false);
    let pushed = reg.push_layers(
        "layers/plain",
        Some("v1"),
        vec![LayerSpec::untitled(plain.clone()).media_type(TAR)],
    );
    let hex = hex_of(&pushed.layers[0].0).to_string();

    let m = Mount::start(reg.addr(), &[]).expect("mount");
    assert_eq!(
        names(&m.join("charts/mychart/0.1.0"))
            .into_iter()
            .filter(|n| !n.starts_with('.'))
            .collect::<Vec<_>>(),
        ["mychart-0.1.0.tgz"]
    );
    assert_eq!(
        fs::read(m.join("charts/mychart/0.1.0/mychart-0.1.0.tgz")).unwrap(),
        tgz
    );
    let untitled = format!("sha256-{hex}.tar");
    assert!(
        names(&m.join("layers/plain/v1")).contains(&untitled),
        "{:?}",
        names(&m.join("layers/plain/v1"))
    );
    drop(m);

    let m = Mount::start(reg.addr(), &["--unpack", "all"]).expect("mount");
    assert_eq!(
        fs::read(m.join("charts/mychart/0.1.0/mychart-0.1.0/mychart/Chart.yaml")).unwrap(),
        chart_yaml
    );
    assert_eq!(
        fs::read(m.join(format!("layers/plain/v1/sha256-{hex}/mychart/values.yaml"))).unwrap(),
        b"replicas: 2\n"
    );
    // The file is still there beside its directory.
    assert_eq!(
        fs::read(m.join("charts/mychart/0.1.0/mychart-0.1.0.tgz")).unwrap(),
        tgz
    );
}

#[test]
fn a_plain_tar_member_is_read_as_a_range() {
    let reg = Registry::start();
    let work = tempfile::tempdir().unwrap();
    let d = work.path().join("big");
    fs::create_dir_all(&d).unwrap();
    // Members of 4 MiB, so the headers sit in a quarter of the blob's 1 MiB pieces.
    for i in 0..16 {
        fs::write(
            d.join(format!("part{i:02}")),
            random_bytes(4 * MIB - 1000, i),
        )
        .unwrap();
    }
    let target = random_bytes(MIB, 99);
    fs::write(d.join("part07-target"), &target).unwrap();
    let blob = tar(work.path(), &["big"], false);
    let blob_len = blob.len();
    assert!(blob_len >= 64 * MIB);
    let pushed = reg.push_layers(
        "lazy/tar",
        Some("v1"),
        vec![LayerSpec::titled("big", blob)
            .media_type(TAR)
            .annotation(UNPACK, "true")],
    );
    let hex = hex_of(&pushed.layers[0].0).to_string();
    let m = Mount::start(&format!("{}/lazy/tar:v1", reg.addr()), &[]).expect("mount");
    assert_eq!(names(&m.join("big")).len(), 17);
    reg.settle();
    let listed = reg.bytes_served_for(&hex);
    assert!(
        listed < (blob_len / 2) as u64,
        "listing fetched {listed} of {blob_len} bytes"
    );
    assert!(fs::read(m.join("big/part07-target")).unwrap() == target);
    reg.settle();
    let read = reg.bytes_served_for(&hex) - listed;
    assert!(
        read <= (MIB + 128 * 1024) as u64,
        "reading a 1 MiB member fetched {read} bytes (listing fetched {listed})"
    );
}

#[test]
fn a_fresh_mount_reads_a_tar_gz_member_from_its_nearest_checkpoint() {
    let reg = Registry::start();
    let work = tempfile::tempdir().unwrap();
    let d = work.path().join("gz");
    fs::create_dir_all(&d).unwrap();
    let files: Vec<Vec<u8>> = (0..24).map(|i| random_bytes(MIB, 200 + i)).collect();
    for (i, f) in files.iter().enumerate() {
        fs::write(d.join(format!("f{i:02}")), f).unwrap();
    }
    let blob = tar(work.path(), &["gz"], true);
    let pushed = reg.push_layers(
        "lazy/gz",
        Some("v1"),
        vec![LayerSpec::titled("gz", blob.clone())
            .media_type(TAR_GZ)
            .annotation(UNPACK, "true")],
    );
    let hex = hex_of(&pushed.layers[0].0).to_string();
    let cache = tempfile::tempdir().unwrap();
    let source = format!("{}/lazy/gz:v1", reg.addr());
    let m = Mount::start_with_cache(&source, cache.path(), &[]).expect("mount");
    assert_eq!(names(&m.join("gz")).len(), 24);
    drop(m);
    // Keep the archive index, drop the blob's cached bytes: the next mount must fetch.
    let root = find_dir(cache.path(), "archives")
        .and_then(|a| a.parent().map(Path::to_path_buf))
        .expect("an archives directory in the cache");
    for entry in fs::read_dir(&root).unwrap() {
        let p = entry.unwrap().path();
        if p.file_name().is_some_and(|n| n != "archives") && p.is_dir() {
            fs::remove_dir_all(&p).unwrap();
            fs::create_dir_all(&p).unwrap();
        }
    }
    reg.settle();
    let before = reg.bytes_served_for(&hex);
    let m = Mount::start_with_cache(&source, cache.path(), &[]).expect("mount again");
    assert_eq!(names(&m.join("gz")).len(), 24);
    reg.settle();
    assert_eq!(
        reg.bytes_served_for(&hex),
        before,
        "listing from the stored index fetched blob bytes"
    );
    assert!(
        fs::read(m.join("gz/f20")).unwrap() == files[20],
        "f20 differs"
    );
    reg.settle();
    let read = reg.bytes_served_for(&hex) - before;
    // The member (1 MiB, incompressible) plus at most one checkpoint span (1 MiB of
    // output) before it, rounded out to the cache's 1 MiB chunks on each side.
    let bound = 4 * MIB as u64;
    assert!(
        read <= bound,
        "read {read} bytes of a {}-byte blob for one member",
        blob.len()
    );
}

/// The first directory named `name` under `dir`.
fn find_dir(dir: &Path, name: &str) -> Option<std::path::PathBuf> {
    for e in fs::read_dir(dir).ok()?.flatten() {
        let p = e.path();
        if p.is_dir() {
            if p.file_name().is_some_and(|n| n == name) {
                return Some(p);
            }
            if let Some(found) = find_dir(&p, name) {
                return Some(found);
            }
        }
    }
    None
}

/// A tar with every hostile case, made by Python's tarfile (which writes what it is told).
fn hostile_tar(dir: &Path) -> Vec<u8> {
    let script = r#"
import io, sys, tarfile
out = sys.argv[1]
t = tarfile.open(out, "w", format=tarfile.GNU_FORMAT)
def add(name, data=b"", **kw):
    i = tarfile.TarInfo(name)
    for k, v in kw.items(): setattr(i, k, v)
    i.size = len(data) if i.type in (tarfile.REGTYPE, tarfile.AREGTYPE) else 0
    t.addfile(i, io.BytesIO(data) if i.size else None)
add("h/ok.txt", b"fine\n", mode=0o644, mtime=1_000_000_000)
add("h/../escape.txt", b"x")
add("/abs.txt", b"x")
add("h/ctl\x01.txt", b"x")
add("h/dup.txt", b"first\n")
add("h/dup.txt", b"second\n")
add("h/hard", type=tarfile.LNKTYPE, linkname="h/ok.txt")
add("h/sym", type=tarfile.SYMTYPE, linkname="../../../etc/passwd")
add("h/dev", type=tarfile.CHRTYPE, devmajor=1, devminor=3)
add("h/fifo", type=tarfile.FIFOTYPE)
add("h/suid", b"s", mode=0o6755)
add("h/.wh.gone", b"")
add("h/liar", b"L" * 4096)
t.close()
"#;
    let out = dir.join("hostile.tar");
    run(Command::new("python3").arg("-c").arg(script).arg(&out));
    let mut bytes = fs::read(out).unwrap();
    // Cut the last member's data short: its header now claims more than there is.
    let liar = bytes
        .windows(7)
        .rposition(|w| w == b"h/liar\0")
        .expect("liar header");
    bytes.truncate(liar + 512 + 1000);
    bytes
}

#[test]
fn hostile_archives_stay_inside_their_directory() {
    need("python3", &["--version"], "python3");
    let reg = Registry::start();
    let work = tempfile::tempdir().unwrap();
    let tar = hostile_tar(work.path());
    reg.push_layers(
        "hostile/tar",
        Some("v1"),
        vec![LayerSpec::titled("h", tar)
            .media_type(TAR)
            .annotation(UNPACK, "true")],
    );
    let m = Mount::start(&format!("{}/hostile/tar:v1", reg.addr()), &[]).expect("mount");
    let mut listed = names(&m.join("h"));
    listed.sort();
    assert_eq!(
        listed,
        [".wh.gone", "dup.txt", "hard", "liar", "ok.txt", "suid", "sym"]
    );
    assert!(!m.join("escape.txt").exists() && !m.join("abs.txt").exists());
    assert_eq!(fs::read(m.join("h/dup.txt")).unwrap(), b"second\n");
    assert_eq!(fs::read(m.join("h/hard")).unwrap(), b"fine\n");
    assert_eq!(
        fs::read_link(m.join("h/sym")).unwrap(),
        Path::new("../../../etc/passwd")
    );
    let suid = fs::metadata(m.join("h/suid")).unwrap().permissions().mode();
    assert_eq!(suid & 0o7777, 0o555, "mode {suid:o}");
    let ok = fs::metadata(m.join("h/ok.txt")).unwrap();
    assert_eq!(ok.mtime(), 1_000_000_000);
    assert_eq!(ok.len(), 5);
    assert_eq!(fs::metadata(m.join("h/liar")).unwrap().len(), 4096);
    assert_eq!(errno_of(fs::read(m.join("h/liar"))), Some(libc_eio()));
    let stderr = m.stderr();
    assert!(
        stderr.contains("escape.txt"),
        "refusal not logged: {stderr}"
    );
}

#[test]
fn a_gzip_bomb_gives_eio_quickly() {
    let reg = Registry::start();
    let work = tempfile::tempdir().unwrap();
    let d = work.path().join("bomb");
    fs::create_dir_all(&d).unwrap();
    fs::write(d.join("zeros"), vec![0u8; 300 * MIB]).unwrap();
    let blob = tar(work.path(), &["bomb"], true);
    fs::remove_file(d.join("zeros")).unwrap();
    assert!(blob.len() < 2 * MIB, "{}", blob.len());
    reg.push_layers(
        "hostile/bomb",
        Some("v1"),
        vec![LayerSpec::titled("bomb", blob)
            .media_type(TAR_GZ)
            .annotation(UNPACK, "true")],
    );
    let m = Mount::start(&format!("{}/hostile/bomb:v1", reg.addr()), &[]).expect("mount");
    let started = std::time::Instant::now();
    let list = || fs::read_dir(m.join("bomb")).and_then(|d| d.collect::<Result<Vec<_>, _>>());
    assert_eq!(errno_of(list()), Some(libc_eio()));
    assert_eq!(errno_of(list()), Some(libc_eio()), "a second listing");
    assert!(started.elapsed().as_secs() < 60, "{:?}", started.elapsed());
    assert!(m.join("bomb.tar.gz").is_file());
}

fn libc_eio() -> i32 {
    5
}
