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
    // The raw blob is also reachable by its digest path (looked up, not listed).
    assert!(
        fs::read(m.join(&digest)).unwrap() == raw,
        "{digest} is not the raw blob"
    );
    assert!(
        !names(m.path()).contains(&digest),
        "the digest path is listed"
    );
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
    // 18 headers, each read as (at most two of) the read path's 16 KiB blocks; no
    // member data.
    assert!(
        listed <= 18 * 32 * 1024,
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
    drop_cached_blobs(cache.path());
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

/// Empty every directory of the cache but `archives/`: blob bytes go, archive indexes stay.
fn drop_cached_blobs(cache: &Path) {
    let root = find_dir(cache, "archives")
        .and_then(|a| a.parent().map(Path::to_path_buf))
        .expect("an archives directory in the cache");
    for entry in fs::read_dir(&root).unwrap() {
        let p = entry.unwrap().path();
        if p.file_name().is_some_and(|n| n != "archives") && p.is_dir() {
            fs::remove_dir_all(&p).unwrap();
            fs::create_dir_all(&p).unwrap();
        }
    }
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
fn gzip_and_zstd_bombs_give_eio_quickly() {
    let reg = Registry::start();
    let work = tempfile::tempdir().unwrap();
    let d = work.path().join("bomb");
    fs::create_dir_all(&d).unwrap();
    fs::write(d.join("zeros"), vec![0u8; 300 * MIB]).unwrap();
    let gz = tar(work.path(), &["bomb"], true);
    tar(work.path(), &["bomb"], false);
    fs::remove_file(d.join("zeros")).unwrap();
    let plain = fs::File::open(work.path().join("out.tar")).unwrap();
    let mut zst = Vec::new();
    zstd::stream::copy_encode(plain, &mut zst, 3).unwrap();
    for (blob, media_type, raw) in [
        (gz, TAR_GZ, "bomb.tar.gz"),
        (
            zst,
            "application/vnd.oci.image.layer.v1.tar+zstd",
            "bomb.tar.zst",
        ),
    ] {
        assert!(blob.len() < 2 * MIB, "{}", blob.len());
        reg.push_layers(
            "hostile/bomb",
            Some("v1"),
            vec![LayerSpec::titled("bomb", blob)
                .media_type(media_type)
                .annotation(UNPACK, "true")],
        );
        let m = Mount::start(&format!("{}/hostile/bomb:v1", reg.addr()), &[]).expect("mount");
        let started = std::time::Instant::now();
        let list = || fs::read_dir(m.join("bomb")).and_then(|d| d.collect::<Result<Vec<_>, _>>());
        assert_eq!(errno_of(list()), Some(libc_eio()), "{media_type}");
        assert_eq!(errno_of(list()), Some(libc_eio()), "a second listing");
        assert!(started.elapsed().as_secs() < 60, "{:?}", started.elapsed());
        assert!(m.join(raw).is_file());
    }
}

fn libc_eio() -> i32 {
    5
}

/// Bytes the registry wrote for every blob GET so far.
fn blob_bytes_served(reg: &Registry) -> u64 {
    reg.requests()
        .iter()
        .filter(|v| v["http.request.method"] == "GET")
        .filter(|v| {
            v["http.request.uri"]
                .as_str()
                .is_some_and(|u| u.contains("/blobs/"))
        })
        .map(|v| v["http.response.written"].as_u64().unwrap_or(0))
        .sum()
}

#[test]
fn with_a_published_archive_index_an_empty_cache_lists_a_tar_gz_from_a_fraction_of_it() {
    let reg = Registry::start();
    let work = tempfile::tempdir().unwrap();
    let d = work.path().join("big");
    fs::create_dir_all(&d).unwrap();
    // 64 MiB of incompressible members, 2 MiB each.
    let files: Vec<Vec<u8>> = (0..32).map(|i| random_bytes(2 * MIB, 300 + i)).collect();
    for (i, f) in files.iter().enumerate() {
        fs::write(d.join(format!("m{i:02}")), f).unwrap();
    }
    let blob = tar(work.path(), &["big"], true);
    let blob_len = blob.len() as u64;
    let pushed = reg.push_layers(
        "lazy/indexed",
        Some("v1"),
        vec![LayerSpec::titled("big", blob)
            .media_type(TAR_GZ)
            .annotation(UNPACK, "true")],
    );
    let hex = hex_of(&pushed.layers[0].0).to_string();
    let source = format!("{}/lazy/indexed:v1", reg.addr());
    for (mode, args) in [("referrer", vec![source.as_str()]), ("embedded", vec![])] {
        let mount_src = if args.is_empty() {
            orasfs_index(&["--embed", "--tag", "v1-embedded", &source]);
            format!("{}/lazy/indexed:v1-embedded", reg.addr())
        } else {
            orasfs_index(&args);
            source.clone()
        };
        reg.settle();
        let (before_all, before_data) = (blob_bytes_served(&reg), reg.bytes_served_for(&hex));
        let cache = tempfile::tempdir().unwrap();
        let m = Mount::start_with_cache(&mount_src, cache.path(), &[]).expect("mount");
        let mut listed = names(&m.join("big"));
        listed.sort();
        assert_eq!(listed.len(), 32, "{mode}: {listed:?}");
        reg.settle();
        let listing = blob_bytes_served(&reg) - before_all;
        assert_eq!(
            reg.bytes_served_for(&hex),
            before_data,
            "{mode}: listing read the data blob\n{}",
            m.stderr()
        );
        assert!(
            (listing as f64) < 0.05 * blob_len as f64,
            "{mode}: listing fetched {listing} bytes of a {blob_len}-byte blob"
        );
        // One member: its compressed span from the nearest checkpoint, and one window.
        let got = fs::read(m.join("big/m20")).unwrap();
        assert!(got == files[20], "{mode}: m20 differs");
        reg.settle();
        let read = blob_bytes_served(&reg) - before_all - listing;
        assert!(
            read <= 4 * MIB as u64,
            "{mode}: reading a 2 MiB member fetched {read} bytes"
        );
        eprintln!(
            "{mode}: listing {listing} bytes ({:.3}% of {blob_len}); member read {read} bytes",
            100.0 * listing as f64 / blob_len as f64
        );
    }
}

#[test]
fn a_member_open_when_its_blob_fails_the_digest_check_fails_from_then_on() {
    use std::os::unix::fs::FileExt;
    let reg = Registry::start();
    let work = tempfile::tempdir().unwrap();
    let d = work.path().join("bad");
    fs::create_dir_all(&d).unwrap();
    let a = random_bytes(4 * MIB, 400);
    fs::write(d.join("a.bin"), &a).unwrap();
    fs::write(d.join("b.bin"), random_bytes(4 * MIB, 401)).unwrap();
    let blob = tar(work.path(), &["bad"], false);
    let pushed = reg.push_layers(
        "bad/tar",
        Some("v1"),
        vec![LayerSpec::titled("bad", blob.clone())
            .media_type(TAR)
            .annotation(UNPACK, "true")],
    );
    // The registry now serves one wrong byte inside b.bin (its blob file is changed in
    // place; docker-registry does not check what it serves).
    let hex = hex_of(&pushed.layers[0].0).to_string();
    let stored = reg.blob_data_path(&hex);
    let mut bytes = fs::read(&stored).unwrap();
    let at = bytes.len() - 2 * MIB;
    bytes[at] ^= 0xff;
    fs::write(&stored, &bytes).unwrap();

    let m = Mount::start(&format!("{}/bad/tar:v1", reg.addr()), &[]).expect("mount");
    let member = fs::File::open(m.join("bad/a.bin")).unwrap();
    let mut first = vec![0u8; 4096];
    member.read_exact_at(&mut first, 0).unwrap();
    assert_eq!(first, a[..4096], "a.bin's first bytes");
    // Reading the whole raw blob completes its digest check, which fails.
    let whole = fs::read(m.join("bad.tar"));
    assert!(whole.is_err(), "a blob with a wrong byte was read whole");
    // The member opened before the failure refuses every later read, also of bytes
    // that are right.
    let mut later = vec![0u8; 4096];
    let r = member.read_exact_at(&mut later, 3 * MIB as u64 + 12_288);
    assert_eq!(
        errno_of(r),
        Some(libc_eio()),
        "the open member kept serving after its blob failed its digest check"
    );
}

/// `bytes_on_disk` of the mount's `.orasfs/stats.json`: what the cache accounts for.
fn accounted(m: &Mount) -> u64 {
    let s = fs::read(m.join(".orasfs/stats.json")).expect("stats.json");
    let v: serde_json::Value = serde_json::from_slice(&s).unwrap();
    v["cache"]["bytes_on_disk"]
        .as_u64()
        .or_else(|| v["bytes_on_disk"].as_u64())
        .unwrap_or_else(|| panic!("no bytes_on_disk in {v}"))
}

/// Bytes of the files (as allocated) under `dir`, leaving out `tmp/`.
fn allocated_under(dir: &Path) -> u64 {
    let mut total = 0;
    for e in fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        let meta = fs::symlink_metadata(&p).unwrap();
        if meta.is_dir() && p.file_name().is_some_and(|n| n != "tmp") {
            total += allocated_under(&p);
        } else if meta.is_file() {
            total += (meta.blocks() * 512).min(meta.len());
        }
    }
    total
}

#[test]
fn archive_index_files_count_against_the_cache_size() {
    let reg = Registry::start();
    let work = tempfile::tempdir().unwrap();
    let d = work.path().join("counted");
    fs::create_dir_all(&d).unwrap();
    for i in 0..24 {
        fs::write(d.join(format!("f{i:02}")), random_bytes(MIB, 500 + i)).unwrap();
    }
    let blob = tar(work.path(), &["counted"], true);
    reg.push_layers(
        "counted/gz",
        Some("v1"),
        vec![LayerSpec::titled("counted", blob)
            .media_type(TAR_GZ)
            .annotation(UNPACK, "true")],
    );
    let cache = tempfile::tempdir().unwrap();
    let source = format!("{}/counted/gz:v1", reg.addr());
    let args = ["--cache-size", "256MiB"];
    let m = Mount::start_with_cache(&source, cache.path(), &args).expect("mount");
    assert_eq!(names(&m.join("counted")).len(), 24);
    let archives = find_dir(cache.path(), "archives").expect("an archives directory");
    let index_bytes = allocated_under(&archives);
    assert!(index_bytes > 512 * 1024, "index files: {index_bytes} bytes");
    let root = archives.parent().unwrap().to_path_buf();
    // What the cache accounts for is what it holds, index files included.
    let (held, counted) = (allocated_under(&root), accounted(&m));
    let slack = 64 * 1024;
    assert!(
        counted + slack >= held && counted <= held + slack,
        "the cache accounts {counted} bytes and holds {held} ({index_bytes} in archive indexes)"
    );
    drop(m);
    // A new mount over the same cache counts them from its scan.
    let m = Mount::start_with_cache(&source, cache.path(), &args).expect("mount again");
    let (held, counted) = (allocated_under(&root), accounted(&m));
    assert!(
        counted + slack >= held && counted <= held + slack,
        "after a remount the cache accounts {counted} bytes and holds {held}"
    );
}

#[test]
fn a_tar_zstd_layer_is_unpacked_and_its_decompressed_tar_kept_in_the_cache() {
    let reg = Registry::start();
    let work = tempfile::tempdir().unwrap();
    let d = work.path().join("z");
    fs::create_dir_all(d.join("sub")).unwrap();
    let files: Vec<Vec<u8>> = (0..12).map(|i| random_bytes(MIB, 600 + i)).collect();
    for (i, f) in files.iter().enumerate() {
        fs::write(d.join(format!("sub/f{i:02}")), f).unwrap();
    }
    fs::write(d.join("small.txt"), b"zstd\n").unwrap();
    // Two frames, as a multi-threaded or concatenating writer makes.
    let plain = tar(work.path(), &["z"], false);
    let half = plain.len() / 2;
    let mut blob = zstd::encode_all(&plain[..half], 3).unwrap();
    blob.extend(zstd::encode_all(&plain[half..], 3).unwrap());
    let pushed = reg.push_layers(
        "zstd/z",
        Some("v1"),
        vec![LayerSpec::titled("z", blob)
            .media_type("application/vnd.oci.image.layer.v1.tar+zstd")
            .annotation(UNPACK, "true")],
    );
    let hex = hex_of(&pushed.layers[0].0).to_string();
    let source = format!("{}/zstd/z:v1", reg.addr());
    let cache = tempfile::tempdir().unwrap();
    let m = Mount::start_with_cache(&source, cache.path(), &[]).expect("mount");
    assert_eq!(fs::read(m.join("z/small.txt")).unwrap(), b"zstd\n");
    assert_eq!(names(&m.join("z/sub")).len(), 12);
    assert!(
        fs::read(m.join("z/sub/f07")).unwrap() == files[7],
        "f07 differs"
    );
    assert!(m.join("z.tar.zst").is_file());
    drop(m);
    // A new mount over the same cache, with the blob's cached bytes gone: listing and
    // reading come from the kept index and decompressed tar, with no blob bytes fetched.
    drop_cached_blobs(cache.path());
    reg.settle();
    let before = reg.bytes_served_for(&hex);
    let m = Mount::start_with_cache(&source, cache.path(), &[]).expect("mount again");
    assert!(
        fs::read(m.join("z/sub/f11")).unwrap() == files[11],
        "f11 differs"
    );
    reg.settle();
    assert_eq!(
        reg.bytes_served_for(&hex),
        before,
        "a member of a listed tar+zstd was fetched again"
    );
    drop(m);
    // Without room for the decompressed tar, members are decompressed from the blob.
    let tight = tempfile::tempdir().unwrap();
    let m = Mount::start_with_cache(&source, tight.path(), &["--cache-size", "1MiB"])
        .expect("mount with a tight cache");
    assert!(
        fs::read(m.join("z/sub/f03")).unwrap() == files[3],
        "f03 differs"
    );
    assert!(
        fs::read(m.join("z/sub/f10")).unwrap() == files[10],
        "f10 differs"
    );
    let kept = find_dir(tight.path(), "archives").map(|a| allocated_under(&a));
    assert!(
        kept.unwrap_or(0) <= MIB as u64,
        "{kept:?} bytes kept under a 1 MiB cap"
    );
}
