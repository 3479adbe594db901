//! End-to-end tests: a real `docker-registry`, a real `orasfs mount`, and plain `std::fs`
//! (plus gdalinfo and the ORAS Python client) on the mounted tree.

mod common;

use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Read, Seek, SeekFrom};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use common::*;
use serde_json::json;

const MIB: usize = 1024 * 1024;

fn mode(p: &Path) -> u32 {
    fs::metadata(p)
        .unwrap_or_else(|e| panic!("stat {}: {e}", p.display()))
        .permissions()
        .mode()
        & 0o7777
}

fn read(p: &Path) -> Vec<u8> {
    fs::read(p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()))
}

/// Byte comparison that does not print megabytes on failure.
#[track_caller]
fn assert_same(p: &Path, want: &[u8]) {
    let got = read(p);
    assert_eq!(got.len(), want.len(), "{}: length", p.display());
    if got != want {
        let i = got.iter().zip(want).position(|(a, b)| a != b).unwrap_or(0);
        panic!("{}: first difference at byte {i}", p.display());
    }
}

#[track_caller]
fn assert_erofs<T: std::fmt::Debug>(what: &str, r: std::io::Result<T>) {
    match r {
        Ok(v) => panic!("{what}: succeeded ({v:?}) on a read-only mount"),
        Err(e) => {
            assert_eq!(e.raw_os_error(), Some(EROFS), "{what}: {e}");
            assert_eq!(e.kind(), ErrorKind::ReadOnlyFilesystem, "{what}: {e}");
        }
    }
}

// 1 -------------------------------------------------------------------------------------

#[test]
fn files_are_byte_identical_through_the_registry_root() {
    let reg = Registry::start();
    let empty: Vec<u8> = Vec::new();
    let one = vec![0x5a_u8];
    let four_plus = random_bytes(4 * MIB + 1, 1);
    let nine = random_bytes(9 * MIB - 12_345, 2);
    let files: Vec<(&str, &[u8])> = vec![
        ("empty.bin", &empty),
        ("one.bin", &one),
        ("four-mib-plus-one.bin", &four_plus),
        ("nine-mib.bin", &nine),
    ];
    let pushed = reg.push_artifact("eo/products", "v1", &files);

    let m = Mount::start(reg.addr(), &[]).expect("mount");
    assert_eq!(names(m.path()), ["eo"]);
    assert_eq!(names(&m.join("eo")), ["products"]);
    assert_eq!(names(&m.join("eo/products")), ["v1"]);
    let dir = m.join("eo/products/v1");
    let mut want: Vec<String> = files.iter().map(|(n, _)| n.to_string()).collect();
    want.extend([".config.json".to_string(), ".manifest.json".to_string()]);
    want.sort();
    assert_eq!(names(&dir), want);

    for d in [
        m.path().to_path_buf(),
        m.join("eo"),
        m.join("eo/products"),
        dir.clone(),
    ] {
        assert!(fs::metadata(&d).unwrap().is_dir(), "{}", d.display());
        assert_eq!(mode(&d), 0o555, "mode of {}", d.display());
    }
    for (name, bytes) in &files {
        let p = dir.join(name);
        let md = fs::metadata(&p).unwrap();
        assert!(md.is_file(), "{name} is a file");
        assert_eq!(md.len(), bytes.len() as u64, "size of {name}");
        assert_eq!(mode(&p), 0o444, "mode of {name}");
        assert_same(&p, bytes);
    }

    // Odd-sized reads at odd offsets, across block boundaries and at the very end.
    let mut f = File::open(dir.join("nine-mib.bin")).unwrap();
    for &(off, len) in &[
        (0usize, 1usize),
        (MIB - 3, 7),
        (4 * MIB + 1, 100_003),
        (nine.len() - 5, 5),
    ] {
        f.seek(SeekFrom::Start(off as u64)).unwrap();
        let mut buf = vec![0u8; len];
        f.read_exact(&mut buf).unwrap();
        assert!(buf == nine[off..off + len], "range {off}+{len}");
    }
    let mut rest = Vec::new();
    assert_eq!(
        f.read_to_end(&mut rest).unwrap(),
        0,
        "read at EOF returns nothing"
    );
    drop(f);

    for special in [".manifest.json", ".config.json"] {
        assert_eq!(mode(&dir.join(special)), 0o444, "mode of {special}");
    }
    assert_eq!(
        read(&dir.join(".manifest.json")),
        pushed.manifest,
        ".manifest.json is the pushed manifest"
    );
    assert_eq!(
        read(&dir.join(".config.json")),
        pushed.config,
        ".config.json is the config blob"
    );
    assert_eq!(pushed.config, b"{}");
    let m_len = fs::metadata(dir.join(".manifest.json")).unwrap().len();
    assert_eq!(m_len, pushed.manifest.len() as u64);

    let by_digest = m.join(format!("eo/products/{}", pushed.digest));
    assert_eq!(
        read(&by_digest.join("one.bin")),
        one,
        "sha256:<hex> resolves inside a repository"
    );
    assert_eq!(
        names(&m.join("eo/products")),
        ["v1"],
        "digest lookups are not listed"
    );
    assert!(
        fs::metadata(m.join("eo/products/v2")).is_err(),
        "no such tag"
    );
    assert!(
        fs::metadata(dir.join("missing.bin")).is_err(),
        "no such file"
    );
}

// 2 -------------------------------------------------------------------------------------

#[test]
fn every_write_fails_with_erofs() {
    let reg = Registry::start();
    reg.push_artifact(
        "ro/test",
        "v1",
        &[("a.txt", b"alpha"), ("sub/b.txt", b"beta")],
    );
    let m = Mount::start(&format!("{}/ro/test:v1", reg.addr()), &[]).expect("mount");
    let a = m.join("a.txt");
    let sub = m.join("sub");

    assert_erofs("create", File::create(m.join("new.txt")));
    assert_erofs(
        "create_new",
        OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(m.join("new2.txt")),
    );
    assert_erofs("open for write", OpenOptions::new().write(true).open(&a));
    assert_erofs("open for append", OpenOptions::new().append(true).open(&a));
    assert_erofs(
        "open read-write",
        OpenOptions::new().read(true).write(true).open(&a),
    );
    assert_erofs(
        "truncate",
        OpenOptions::new().write(true).truncate(true).open(&a),
    );
    assert_erofs("remove_file", fs::remove_file(&a));
    assert_erofs("rename", fs::rename(&a, m.join("renamed.txt")));
    assert_erofs("rename dir", fs::rename(&sub, m.join("sub2")));
    assert_erofs("mkdir", fs::create_dir(m.join("newdir")));
    assert_erofs("mkdir nested", fs::create_dir(sub.join("newdir")));
    assert_erofs("rmdir", fs::remove_dir(&sub));
    assert_erofs("hard link", fs::hard_link(&a, m.join("link")));
    assert_erofs(
        "symlink",
        std::os::unix::fs::symlink("a.txt", m.join("sym")),
    );
    assert_erofs(
        "chmod",
        fs::set_permissions(&a, fs::Permissions::from_mode(0o644)),
    );
    assert_erofs(
        "write .manifest.json",
        OpenOptions::new()
            .write(true)
            .open(m.join(".manifest.json")),
    );

    // Nothing changed.
    assert_eq!(
        names(m.path()),
        [".config.json", ".manifest.json", "a.txt", "sub"]
    );
    assert_eq!(read(&a), b"alpha");
    assert_eq!(read(&sub.join("b.txt")), b"beta");
}

// 3 -------------------------------------------------------------------------------------

#[test]
fn nested_titles_make_directories_and_bad_titles_fall_back_to_digests() {
    let reg = Registry::start();
    let pushed = reg.push_layers(
        "docs/site",
        Some("v1"),
        vec![
            LayerSpec::titled("docs/readme.md", b"# readme\n".to_vec()),
            LayerSpec::titled("docs/img/a.png", random_bytes(70_000, 3)),
            LayerSpec::untitled(b"no title here".to_vec())
                .annotation("com.example.note", "untitled"),
            LayerSpec::titled("docs/readme.md", b"# a second readme\n".to_vec()),
            LayerSpec::titled("../../x", b"escape attempt".to_vec()),
            LayerSpec::titled("top.txt", b"top".to_vec()).media_type("text/plain"),
        ],
    );
    let fallback = |i: usize| format!("sha256-{}", hex_of(&pushed.layers[i].0));

    let m = Mount::start(&format!("{}/docs/site:v1", reg.addr()), &[]).expect("mount");
    let mut want = vec![
        ".config.json".to_string(),
        ".manifest.json".to_string(),
        "docs".to_string(),
        "top.txt".to_string(),
        fallback(2),
        fallback(3),
        fallback(4),
    ];
    want.sort();
    assert_eq!(names(m.path()), want);
    assert_eq!(names(&m.join("docs")), ["img", "readme.md"]);
    assert_eq!(names(&m.join("docs/img")), ["a.png"]);
    for d in ["docs", "docs/img"] {
        assert!(fs::metadata(m.join(d)).unwrap().is_dir());
        assert_eq!(mode(&m.join(d)), 0o555, "mode of {d}");
    }

    // Every layer is readable under exactly one name.
    let paths = [
        "docs/readme.md".to_string(),
        "docs/img/a.png".to_string(),
        fallback(2),
        fallback(3),
        fallback(4),
        "top.txt".to_string(),
    ];
    for (p, (_, bytes)) in paths.iter().zip(&pushed.layers) {
        let path = m.join(p);
        assert_eq!(mode(&path), 0o444, "mode of {p}");
        assert_same(&path, bytes);
    }
    // The first of two equal titles keeps the name.
    assert_eq!(read(&m.join("docs/readme.md")), b"# readme\n");
    // The hostile title did not escape the mount or create odd names.
    assert!(!m.path().parent().unwrap().join("x").exists());
    assert!(fs::metadata(m.join("x")).is_err());
}

// 4 -------------------------------------------------------------------------------------

#[test]
fn an_index_shows_one_directory_per_platform() {
    let reg = Registry::start();
    let repo = "multi/app";
    let amd = reg.push_layers(
        repo,
        None,
        vec![LayerSpec::titled("app", b"amd64 binary".to_vec())],
    );
    let arm = reg.push_layers(
        repo,
        None,
        vec![LayerSpec::titled("app", b"arm64 binary".to_vec())],
    );
    let att = reg.push_layers(
        repo,
        None,
        vec![LayerSpec::titled(
            "attestation.json",
            br#"{"ok":true}"#.to_vec(),
        )],
    );
    let mut amd_d = amd.descriptor();
    amd_d["platform"] = json!({"os": "linux", "architecture": "amd64"});
    let mut arm_d = arm.descriptor();
    arm_d["platform"] = json!({"os": "linux", "architecture": "arm64", "variant": "v8"});
    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [amd_d, arm_d, att.descriptor()],
    }))
    .unwrap();
    let index_digest = reg.push_manifest(repo, "v1", OCI_INDEX, &index);

    let m = Mount::start(&format!("{}/{repo}", reg.addr()), &[]).expect("mount");
    assert_eq!(names(m.path()), ["v1"]);
    let v1 = m.join("v1");
    let att_dir = format!("sha256-{}", hex_of(&att.digest));
    let mut want = vec![
        "linux-amd64".to_string(),
        "linux-arm64-v8".to_string(),
        att_dir.clone(),
    ];
    want.sort();
    assert_eq!(names(&v1), want);
    for d in &want {
        assert!(fs::metadata(v1.join(d)).unwrap().is_dir());
        assert_eq!(mode(&v1.join(d)), 0o555, "mode of {d}");
    }
    assert_eq!(read(&v1.join("linux-amd64/app")), b"amd64 binary");
    assert_eq!(read(&v1.join("linux-arm64-v8/app")), b"arm64 binary");
    assert_eq!(
        read(&v1.join(format!("{att_dir}/attestation.json"))),
        br#"{"ok":true}"#
    );
    assert_eq!(read(&v1.join("linux-amd64/.manifest.json")), amd.manifest);
    assert_eq!(
        read(&v1.join("linux-arm64-v8/.manifest.json")),
        arm.manifest
    );
    assert_eq!(
        names(&v1.join("linux-amd64")),
        [".config.json", ".manifest.json", "app"]
    );
    assert!(fs::metadata(v1.join("linux-s390x")).is_err());

    // The index by digest shows the same entries.
    let by_digest = m.join(&index_digest);
    assert_eq!(names(&by_digest), want);
}

// 5 -------------------------------------------------------------------------------------

#[test]
fn repository_tag_and_digest_sources() {
    let reg = Registry::start();
    let v1 = reg.push_artifact("eo/products", "v1", &[("a.txt", b"version one")]);
    let v2 = reg.push_artifact("eo/products", "v2", &[("b.txt", b"version two")]);
    // An untagged manifest: reachable only by digest.
    let hidden = reg.push_layers(
        "eo/products",
        None,
        vec![LayerSpec::titled("c.txt", b"hidden".to_vec())],
    );

    // HOST:PORT/REPO: the root lists tags.
    {
        let m = Mount::start(&format!("{}/eo/products", reg.addr()), &[]).expect("mount repo");
        assert_eq!(names(m.path()), ["v1", "v2"]);
        assert_eq!(mode(m.path()), 0o555);
        assert_eq!(read(&m.join("v1/a.txt")), b"version one");
        assert_eq!(read(&m.join("v2/b.txt")), b"version two");
        assert_eq!(read(&m.join("v2/.manifest.json")), v2.manifest);
        // sha256:<hex> resolves on lookup though it is never listed.
        let by_digest = m.join(&hidden.digest);
        assert!(fs::metadata(&by_digest).unwrap().is_dir());
        assert_eq!(read(&by_digest.join("c.txt")), b"hidden");
        let tagged_by_digest = m.join(&v1.digest);
        assert_eq!(read(&tagged_by_digest.join("a.txt")), b"version one");
        assert_eq!(
            names(m.path()),
            ["v1", "v2"],
            "digest lookups are not listed"
        );
        let unknown = format!("sha256:{}", "0".repeat(64));
        assert!(
            fs::metadata(m.join(&unknown)).is_err(),
            "an unknown digest is not found"
        );
        assert!(
            fs::metadata(m.join("v3")).is_err(),
            "an unknown tag is not found"
        );
    }

    // HOST:PORT/REPO:TAG: the root is the artifact's files.
    {
        let m = Mount::start(&format!("{}/eo/products:v1", reg.addr()), &[]).expect("mount tag");
        assert_eq!(names(m.path()), [".config.json", ".manifest.json", "a.txt"]);
        assert_eq!(read(&m.join("a.txt")), b"version one");
        assert_eq!(read(&m.join(".manifest.json")), v1.manifest);
    }

    // HOST:PORT/REPO@sha256:HEX: the root is that artifact's files.
    {
        let m = Mount::start(&format!("{}/eo/products@{}", reg.addr(), v2.digest), &[])
            .expect("mount digest");
        assert_eq!(names(m.path()), [".config.json", ".manifest.json", "b.txt"]);
        assert_eq!(read(&m.join("b.txt")), b"version two");
        assert_eq!(read(&m.join(".manifest.json")), v2.manifest);
    }
    {
        let m = Mount::start(
            &format!("{}/eo/products@{}", reg.addr(), hidden.digest),
            &[],
        )
        .expect("mount untagged");
        assert_eq!(read(&m.join("c.txt")), b"hidden");
    }
}

// 6 -------------------------------------------------------------------------------------

/// An OCI image layout written by hand: `oci-layout`, `index.json`, `blobs/sha256/…`.
struct Layout {
    dir: tempfile::TempDir,
    files: Vec<(&'static str, Vec<u8>)>,
    manifest: Vec<u8>,
}

fn write_blob(root: &Path, bytes: &[u8]) -> serde_json::Value {
    let d = sha256(bytes);
    fs::write(root.join("blobs/sha256").join(hex_of(&d)), bytes).unwrap();
    json!({"digest": d, "size": bytes.len()})
}

fn make_layout() -> Layout {
    let dir = tempfile::Builder::new()
        .prefix("orasfs-layout-")
        .tempdir()
        .unwrap();
    let root = dir.path();
    fs::create_dir_all(root.join("blobs/sha256")).unwrap();
    fs::write(
        root.join("oci-layout"),
        br#"{"imageLayoutVersion":"1.0.0"}"#,
    )
    .unwrap();
    let files: Vec<(&'static str, Vec<u8>)> = vec![
        ("imagery.bin", random_bytes(5 * MIB + 7, 11)),
        ("meta/info.json", br#"{"bands":3}"#.to_vec()),
        ("empty", Vec::new()),
    ];
    let config = write_blob(root, b"{}");
    let layers: Vec<serde_json::Value> = files
        .iter()
        .map(|(t, b)| {
            let mut d = write_blob(root, b);
            d["mediaType"] = json!("application/octet-stream");
            d["annotations"] = json!({ TITLE: t });
            d
        })
        .collect();
    let mut config_d = config;
    config_d["mediaType"] = json!(OCI_EMPTY);
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": config_d,
        "layers": layers,
    }))
    .unwrap();
    let mut md = write_blob(root, &manifest);
    md["mediaType"] = json!(OCI_MANIFEST);
    let mut amd = md.clone();
    amd["platform"] = json!({"os": "linux", "architecture": "amd64"});
    let mut arm = md.clone();
    arm["platform"] = json!({"os": "linux", "architecture": "arm64", "variant": "v8"});
    md["annotations"] = json!({ REF_NAME: "v1" });
    // A second tag naming a nested index whose two platforms share the manifest.
    let nested = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [amd, arm],
    }))
    .unwrap();
    let mut nd = write_blob(root, &nested);
    nd["mediaType"] = json!(OCI_INDEX);
    nd["annotations"] = json!({ REF_NAME: "multi" });
    let index = json!({ "schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [md, nd] });
    fs::write(root.join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
    Layout {
        dir,
        files,
        manifest,
    }
}

#[test]
fn oci_layout_directories_mount() {
    let layout = make_layout();
    let root = layout.dir.path().to_str().unwrap().to_string();

    let m = Mount::start(&root, &[]).expect("mount layout");
    assert_eq!(names(m.path()), ["multi", "v1"]);
    assert_eq!(names(&m.join("multi")), ["linux-amd64", "linux-arm64-v8"]);
    for platform in ["linux-amd64", "linux-arm64-v8"] {
        assert_same(
            &m.join(format!("multi/{platform}/meta/info.json")),
            &layout.files[1].1,
        );
        assert_eq!(
            read(&m.join(format!("multi/{platform}/.manifest.json"))),
            layout.manifest
        );
    }
    let by_digest = m.join(sha256(&layout.manifest));
    assert_same(&by_digest.join("imagery.bin"), &layout.files[0].1);
    for (t, b) in &layout.files {
        assert_same(&m.join(format!("v1/{t}")), b);
    }
    assert_eq!(read(&m.join("v1/.manifest.json")), layout.manifest);
    assert_eq!(names(&m.join("v1/meta")), ["info.json"]);
    drop(m);

    let m = Mount::start(&format!("{root}:v1"), &[]).expect("mount layout:v1");
    assert_eq!(
        names(m.path()),
        [
            ".config.json",
            ".manifest.json",
            "empty",
            "imagery.bin",
            "meta"
        ]
    );
    for (t, b) in &layout.files {
        let p = m.join(t);
        assert_eq!(fs::metadata(&p).unwrap().len(), b.len() as u64);
        assert_eq!(mode(&p), 0o444);
        assert_same(&p, b);
    }
    assert_eq!(read(&m.join(".config.json")), b"{}");
    assert_eq!(mode(&m.join("meta")), 0o555);
}

// 7 -------------------------------------------------------------------------------------

#[test]
fn failures_before_mounting_are_one_clean_line() {
    let reg = Registry::start();
    reg.push_artifact("eo/products", "v1", &[("a.txt", b"a")]);
    let addr = reg.addr().to_string();

    // Unreachable registry: a port nobody listens on. Run it alongside the others (it
    // retries with backoff before giving up).
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let unreachable = std::thread::spawn(move || {
        let src = format!("127.0.0.1:{closed}/eo/products:v1");
        (src.clone(), Mount::run_to_failure(&src))
    });

    let f = Mount::run_to_failure(&format!("{addr}/no/such-repo"));
    assert_one_line("expected failure", &f, &["no/such-repo"]);

    let f = Mount::run_to_failure(&format!("{addr}/no/such-repo:v1"));
    assert_one_line("expected failure", &f, &["no/such-repo"]);

    let f = Mount::run_to_failure(&format!("{addr}/eo/products:nope"));
    assert_one_line("expected failure", &f, &["nope"]);

    let f = Mount::run_to_failure(&format!("{addr}/eo/products@sha256:{}", "1".repeat(64)));
    assert_one_line("expected failure", &f, &["1111"]);

    // Malformed layouts.
    let layout = make_layout();
    let root = layout.dir.path();
    fs::write(root.join("index.json"), b"{ this is not json").unwrap();
    let f = Mount::run_to_failure(root.to_str().unwrap());
    assert_one_line("expected failure", &f, &["index.json"]);
    let f = Mount::run_to_failure(&format!("{}:v1", root.display()));
    assert_one_line("expected failure", &f, &["index.json"]);

    let layout = make_layout();
    fs::remove_file(layout.dir.path().join("oci-layout")).unwrap();
    let f = Mount::run_to_failure(layout.dir.path().to_str().unwrap());
    assert_one_line("expected failure", &f, &["oci-layout"]);

    // A good layout whose tag does not exist.
    let good = make_layout();
    let good_root = good.dir.path().to_str().unwrap().to_string();
    let f = Mount::run_to_failure(&format!("{good_root}:v9"));
    assert_one_line("expected failure", &f, &["v9"]);

    // A directory that is not a layout at all.
    let plain = tempfile::tempdir().unwrap();
    let f = Mount::run_to_failure(plain.path().to_str().unwrap());
    assert_one_line("expected failure", &f, &[]);

    // Bad mountpoints, with a good source.
    let place = tempfile::tempdir().unwrap();
    let missing = place.path().join("does-not-exist");
    let f = Mount::run_to_failure_at(&good_root, &missing, &[]);
    assert_one_line("expected failure", &f, &["does-not-exist"]);
    assert!(!missing.exists(), "orasfs must not create the mountpoint");

    let file = place.path().join("a-file");
    fs::write(&file, b"not a dir").unwrap();
    let f = Mount::run_to_failure_at(&good_root, &file, &[]);
    assert_one_line("expected failure", &f, &["a-file", "not a directory"]);
    assert_eq!(fs::read(&file).unwrap(), b"not a dir");

    let (src, f) = unreachable.join().unwrap();
    assert_one_line("expected failure", &f, &[&format!("127.0.0.1:{closed}")]);
    let _ = src;

    assert!(
        !orasfs_mounts()
            .iter()
            .any(|l| l.contains(place.path().to_str().unwrap())),
        "nothing mounted"
    );
}

// 8 -------------------------------------------------------------------------------------

#[test]
fn reads_fetch_only_the_ranges_they_need() {
    let reg = Registry::start();
    let big = random_bytes(64 * MIB, 64);
    let pushed = reg.push_artifact("big/blob", "v1", &[("big.bin", &big)]);
    let hex = hex_of(&pushed.layers[0].0).to_string();
    reg.settle();
    assert_eq!(
        reg.bytes_served_for(&hex),
        0,
        "nothing served before the mount"
    );

    let m = Mount::start(&format!("{}/big/blob:v1", reg.addr()), &[]).expect("mount");
    let p = m.join("big.bin");
    assert_eq!(fs::metadata(&p).unwrap().len(), big.len() as u64);

    let offset = 32 * MIB;
    let mut f = File::open(&p).unwrap();
    f.seek(SeekFrom::Start(offset as u64)).unwrap();
    let mut buf = vec![0u8; 64 * 1024];
    f.read_exact(&mut buf).unwrap();
    assert!(buf == big[offset..offset + buf.len()], "bytes at 32 MiB");
    drop(f);

    reg.settle();
    let served = reg.bytes_served_for(&hex);
    let gets = reg.request_count(Some("GET"), &format!("/blobs/sha256:{hex}"));
    eprintln!("registry served {served} bytes of the 64 MiB blob in {gets} GET(s)");
    assert!(
        served >= buf.len() as u64,
        "the registry log shows the read ({served} bytes)"
    );
    assert!(
        served < 4 * MIB as u64,
        "a 64 KiB read made the registry send {served} bytes of a {} byte blob",
        big.len()
    );
}

// 9 -------------------------------------------------------------------------------------

fn checksums(gdalinfo_out: &str) -> Vec<String> {
    gdalinfo_out
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("Checksum=") || l.starts_with("Overviews checksum:"))
        .map(str::to_string)
        .collect()
}

fn gdalinfo_checksum(p: &Path) -> String {
    let out = Command::new("gdalinfo")
        .arg("-checksum")
        .arg(p)
        .output()
        .expect("run gdalinfo");
    assert!(
        out.status.success(),
        "gdalinfo -checksum {}: {}",
        p.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn gdal_reads_a_cloud_optimized_geotiff() {
    if !common::needs(
        have("gdalinfo", &["--version"]) && have("gdal_translate", &["--version"]),
        "mount::gdal_reads_a_cloud_optimized_geotiff",
        "gdalinfo and gdal_translate are not installed (apt: gdal-bin)",
    ) {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    // A 2500x2500 greyscale raster with structure and noise, as a binary PGM.
    let (w, h) = (2500usize, 2500usize);
    let noise = random_bytes(w * h, 9);
    let mut pgm = format!("P5\n{w} {h}\n255\n").into_bytes();
    pgm.extend((0..w * h).map(|i| {
        let (x, y) = (i % w, i / w);
        (((x / 7) ^ (y / 5)) as u8).wrapping_add(noise[i] & 0x1f)
    }));
    let pgm_path = work.path().join("raster.pgm");
    fs::write(&pgm_path, &pgm).unwrap();
    let cog = work.path().join("imagery.tif");
    gdal_translate(
        &[
            "-q",
            "-of",
            "COG",
            "-co",
            "COMPRESS=DEFLATE",
            "-co",
            "BLOCKSIZE=256",
            "-a_ullr",
            "500000",
            "5000000",
            "525000",
            "4975000",
        ],
        &pgm_path,
        &cog,
    );
    let tif = fs::read(&cog).unwrap();

    let reg = Registry::start();
    reg.push_artifact("eo/imagery", "v1", &[("imagery.tif", &tif)]);
    let m = Mount::start(reg.addr(), &[]).expect("mount");
    let mounted = m.join("eo/imagery/v1/imagery.tif");
    assert_eq!(fs::metadata(&mounted).unwrap().len(), tif.len() as u64);

    let theirs = gdalinfo_checksum(&mounted);
    let ours = gdalinfo_checksum(&cog);
    let want = checksums(&ours);
    assert!(!want.is_empty(), "gdalinfo printed no checksum: {ours}");
    assert_eq!(
        checksums(&theirs),
        want,
        "gdalinfo through the mount:\n{theirs}"
    );
    assert!(theirs.contains("Size is 2500, 2500"), "{theirs}");
    assert_same(&mounted, &tif);
}

// 10 ------------------------------------------------------------------------------------

#[test]
fn files_pushed_by_the_oras_client_are_readable() {
    if !have_oras("mount::files_pushed_by_the_oras_client_are_readable") {
        return;
    }
    let reg = Registry::start();
    let weights = random_bytes(3 * MIB + 17, 10);
    let config = b"layers: 12\nheads: 8\n".to_vec();
    oras_push(
        reg.addr(),
        "ml/model:v1",
        &[("weights.bin", &weights), ("config.yaml", &config)],
    );

    let m = Mount::start(&format!("{}/ml/model:v1", reg.addr()), &[]).expect("mount");
    let listed = names(m.path());
    assert!(listed.contains(&"weights.bin".to_string()), "{listed:?}");
    assert!(listed.contains(&"config.yaml".to_string()), "{listed:?}");
    assert_same(&m.join("weights.bin"), &weights);
    assert_same(&m.join("config.yaml"), &config);
    let manifest: serde_json::Value =
        serde_json::from_slice(&read(&m.join(".manifest.json"))).unwrap();
    assert_eq!(
        manifest["layers"].as_array().map(Vec::len),
        Some(2),
        "{manifest}"
    );

    // Also through the registry root.
    drop(m);
    let m = Mount::start(reg.addr(), &[]).expect("mount registry");
    assert_same(&m.join("ml/model/v1/weights.bin"), &weights);
}

// Beyond the list: lifecycle and the cache -----------------------------------------------

#[test]
fn sigterm_and_fusermount_unmount_cleanly_with_exit_zero() {
    let reg = Registry::start();
    reg.push_artifact("life/cycle", "v1", &[("a.txt", b"a")]);
    let src = format!("{}/life/cycle:v1", reg.addr());

    let m = Mount::start(&src, &[]).expect("mount");
    assert_eq!(read(&m.join("a.txt")), b"a");
    let path = m.path().to_path_buf();
    let status = m.terminate();
    assert!(status.success(), "SIGTERM: exit status {status:?}");
    assert!(!is_mounted(&path), "unmounted after SIGTERM");

    let m = Mount::start(&src, &[]).expect("mount again");
    assert_eq!(read(&m.join("a.txt")), b"a");
    let path = m.path().to_path_buf();
    let status = m.unmount();
    assert!(status.success(), "fusermount3 -u: exit status {status:?}");
    assert!(!is_mounted(&path));
}

#[test]
fn a_remount_over_the_same_cache_does_not_refetch() {
    let reg = Registry::start();
    let small = random_bytes(100_000, 21);
    let large = random_bytes(6 * MIB + 3, 22);
    let pushed = reg.push_artifact(
        "cache/reuse",
        "v1",
        &[("small.bin", &small), ("large.bin", &large)],
    );
    let src = format!("{}/cache/reuse:v1", reg.addr());
    let cache = tempfile::tempdir().unwrap();

    {
        let m = Mount::start_with_cache(&src, cache.path(), &[]).expect("first mount");
        assert_same(&m.join("small.bin"), &small);
        assert_same(&m.join("large.bin"), &large);
        let status = m.unmount();
        assert!(status.success(), "{status:?}");
    }
    reg.settle();
    let before: Vec<u64> = pushed
        .layers
        .iter()
        .map(|(d, _)| reg.bytes_served_for(hex_of(d)))
        .collect();
    assert!(
        before[0] >= small.len() as u64 && before[1] >= large.len() as u64,
        "{before:?}"
    );

    {
        let m = Mount::start_with_cache(&src, cache.path(), &[]).expect("second mount");
        assert_same(&m.join("small.bin"), &small);
        assert_same(&m.join("large.bin"), &large);
    }
    reg.settle();
    let after: Vec<u64> = pushed
        .layers
        .iter()
        .map(|(d, _)| reg.bytes_served_for(hex_of(d)))
        .collect();
    assert_eq!(
        after, before,
        "the second mount read every byte from the cache"
    );
}

/// Flip one byte in the middle of each blob in the registry's storage: same size, wrong
/// digest, so the registry serves bytes that do not match what the manifest promises.
fn corrupt_in_registry(reg: &Registry, pushed: &Pushed) {
    for (digest, _) in &pushed.layers {
        let path = reg.blob_data_path(hex_of(digest));
        let mut data = fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let mid = data.len() / 2;
        data[mid] ^= 0xff;
        fs::write(&path, &data).unwrap();
    }
}

#[track_caller]
fn assert_eio<T>(what: &str, r: std::io::Result<T>) {
    const EIO: i32 = 5;
    match r {
        Ok(_) => panic!("{what}: succeeded, serving bytes that do not match the blob's digest"),
        Err(e) => assert_eq!(e.raw_os_error(), Some(EIO), "{what}: {e}"),
    }
}

/// Bytes that do not match their digest are never served when they are checked before
/// serving: small blobs always, large blobs with `--verify strict`.
#[test]
fn corrupted_blobs_checked_up_front_fail_with_eio() {
    let reg = Registry::start();
    let small = random_bytes(100_000, 31);
    let big = random_bytes(8 * MIB + 5, 32);
    let pushed = reg.push_artifact(
        "bad/bytes",
        "v1",
        &[("small.bin", &small), ("big.bin", &big)],
    );
    corrupt_in_registry(&reg, &pushed);
    let src = format!("{}/bad/bytes:v1", reg.addr());

    let m = Mount::start(&src, &[]).expect("mount");
    assert_eio("first read of small.bin", fs::read(m.join("small.bin")));
    assert_eio("second read of small.bin", fs::read(m.join("small.bin")));
    let mut f = File::open(m.join("small.bin")).unwrap();
    let mut buf = [0u8; 16];
    assert_eio("16 bytes of small.bin", f.read_exact(&mut buf));
    drop(f);
    drop(m);

    let m = Mount::start(&src, &["--verify", "strict"]).expect("mount strict");
    let mut f = File::open(m.join("big.bin")).unwrap();
    assert_eio(
        "16 bytes of big.bin, --verify strict",
        f.read_exact(&mut buf),
    );
    drop(f);
    assert_eio(
        "all of big.bin, --verify strict",
        fs::read(m.join("big.bin")),
    );
}

/// With lazy verification a large blob's bytes are served before they are checked, but
/// the read that completes the blob must fail, and the bad bytes must not stay cached.
#[test]
fn corrupted_large_blob_fails_the_read_that_completes_it() {
    let reg = Registry::start();
    let big = random_bytes(8 * MIB + 5, 32);
    let pushed = reg.push_artifact("bad/bytes", "v1", &[("big.bin", &big)]);
    corrupt_in_registry(&reg, &pushed);
    let m = Mount::start(&format!("{}/bad/bytes:v1", reg.addr()), &[]).expect("mount");
    assert_eio(
        "first sequential read of big.bin",
        fs::read(m.join("big.bin")),
    );
    assert_eio(
        "second sequential read of big.bin",
        fs::read(m.join("big.bin")),
    );
}

/// Many readers of one lazily fetched blob, at scattered offsets, all get the right bytes,
/// and no byte of it is fetched twice.
#[test]
fn concurrent_readers_share_fetches() {
    let reg = Registry::start();
    let size = 12 * MIB + 321;
    let data = std::sync::Arc::new(random_bytes(size, 41));
    let pushed = reg.push_artifact("many/readers", "v1", &[("shared.bin", &data)]);
    let hex = hex_of(&pushed.layers[0].0).to_string();
    let m = Mount::start(&format!("{}/many/readers:v1", reg.addr()), &[]).expect("mount");
    let path = m.join("shared.bin");

    let threads: Vec<_> = (0..6u64)
        .map(|t| {
            let (path, data) = (path.clone(), data.clone());
            std::thread::spawn(move || {
                let mut f = File::open(&path).unwrap();
                let offsets = random_bytes(64 * 8, 100 + t);
                for o in offsets.chunks(8) {
                    let off = (u64::from_le_bytes(o.try_into().unwrap()) % size as u64) as usize;
                    let len = (size - off).min(200_000);
                    f.seek(SeekFrom::Start(off as u64)).unwrap();
                    let mut buf = vec![0u8; len];
                    f.read_exact(&mut buf).unwrap();
                    assert!(buf == data[off..off + len], "thread {t}: range {off}+{len}");
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("reader thread");
    }
    assert_same(&path, &data);

    reg.settle();
    let served = reg.bytes_served_for(&hex);
    assert!(
        served <= size as u64,
        "the registry sent {served} bytes for a {size} byte blob: some ranges were fetched twice"
    );
}

/// A repository can also be a namespace: `eo` (a repository with tag `v1`) holds the
/// repository `eo/products`, which holds `eo/products/sub`.
#[test]
fn repositories_nest_under_the_registry_root() {
    let reg = Registry::start();
    let top = reg.push_artifact("eo", "v1", &[("top.txt", b"top")]);
    reg.push_artifact("eo/products", "v1", &[("p.txt", b"products")]);
    reg.push_artifact("eo/products/sub", "latest", &[("s.txt", b"sub")]);
    reg.push_artifact("zz", "1.0", &[("z.txt", b"z")]);

    let m = Mount::start(reg.addr(), &[]).expect("mount");
    assert_eq!(names(m.path()), ["eo", "zz"]);
    assert_eq!(names(&m.join("eo")), ["products", "v1"]);
    assert_eq!(names(&m.join("eo/products")), ["sub", "v1"]);
    assert_eq!(names(&m.join("eo/products/sub")), ["latest"]);
    assert_eq!(read(&m.join("eo/v1/top.txt")), b"top");
    assert_eq!(read(&m.join("eo/products/v1/p.txt")), b"products");
    assert_eq!(read(&m.join("eo/products/sub/latest/s.txt")), b"sub");
    assert_eq!(read(&m.join("zz/1.0/z.txt")), b"z");
    assert_eq!(read(&m.join(format!("eo/{}/top.txt", top.digest))), b"top");
    assert!(fs::metadata(m.join("nope")).is_err());
    assert!(fs::metadata(m.join("eo/nope")).is_err());
}
