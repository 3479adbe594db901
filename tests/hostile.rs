//! Hostile artifacts, pushed through a real `docker-registry`'s API or written into an OCI
//! image layout: path-traversal and control-character titles, oversized and over-long
//! manifests, deep indexes, lying sizes, malformed digests and layouts, symlinks out of a
//! layout.
//!
//! For each: a clear error (the mount fails with one line, or the file gives an errno), no
//! crash (the daemon answers afterwards), every sound file still reachable, and nothing
//! written outside the cache directory — orasfs runs with its working directory set to an
//! empty directory that must stay empty.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

const MIB: usize = 1024 * 1024;

/// An empty working directory for orasfs, and a record of what the system looked like.
struct Sandbox {
    cwd: tempfile::TempDir,
    passwd: Vec<u8>,
    /// Planted names in the shared places (`/`, `/tmp`, `$TMPDIR`) as they were before:
    /// another program may have made one, and it must only stay as it was.
    shared: Vec<(PathBuf, Option<Stat>)>,
}

/// What a path is, to tell whether anything changed it: inode, mtime and size.
type Stat = (u64, std::time::SystemTime, u64);

fn snapshot(p: &std::path::Path) -> Option<Stat> {
    use std::os::unix::fs::MetadataExt;
    let m = fs::symlink_metadata(p).ok()?;
    Some((m.ino(), m.modified().ok()?, m.len()))
}

const PLANTED: &[&str] = &["x", "b", "passwd", "evil"];

impl Sandbox {
    fn new() -> Sandbox {
        Sandbox {
            cwd: tempfile::Builder::new()
                .prefix("orasfs-cwd-")
                .tempdir()
                .unwrap(),
            passwd: fs::read("/etc/passwd").unwrap_or_default(),
            shared: [
                PathBuf::from("/"),
                PathBuf::from("/tmp"),
                std::env::temp_dir(),
            ]
            .iter()
            .flat_map(|dir| PLANTED.iter().map(move |n| dir.join(n)))
            .map(|p| {
                let s = snapshot(&p);
                (p, s)
            })
            .collect(),
        }
    }
    fn launch(&self, source: &str) -> Launch {
        Launch::new(source)
            .cwd(self.cwd.path())
            .env("TMPDIR", self.cwd.path().to_str().unwrap())
    }
    /// Nothing was written where a hostile name could have pointed: the working directory
    /// is empty, no planted name appears beside the mount or the cache or in the usual
    /// places, and /etc/passwd is unchanged.
    #[track_caller]
    fn assert_clean(&self, m: &Mount) {
        assert_eq!(
            common::names(self.cwd.path()),
            Vec::<String>::new(),
            "orasfs wrote into its working directory"
        );
        let base = m.path().parent().unwrap().to_path_buf();
        for (p, before) in &self.shared {
            assert_eq!(
                &snapshot(p),
                before,
                "{} was made or changed while mounting hostile titles",
                p.display()
            );
        }
        for dir in [base.clone(), m.cache_dir().to_path_buf()] {
            for name in PLANTED {
                let p = dir.join(name);
                assert!(
                    fs::symlink_metadata(&p).is_err(),
                    "{} exists after mounting hostile titles",
                    p.display()
                );
            }
        }
        // Beside the mountpoint: only what the harness put there.
        let mut beside = common::names(&base);
        beside.retain(|n| !["mnt", "cache", "home", "stderr.log"].contains(&n.as_str()));
        assert!(
            beside.is_empty(),
            "unexpected files beside the mount: {beside:?}"
        );
        // In the cache: only its own layout, and only hex names for content.
        for f in walk_files(m.cache_dir()) {
            let s = f.to_string_lossy();
            assert!(s.starts_with("v2/"), "unexpected file in the cache: {s}");
            let name = f.file_name().unwrap().to_string_lossy().to_string();
            assert!(
                !PLANTED.contains(&name.as_str()),
                "planted name in the cache: {s}"
            );
        }
        assert_eq!(fs::read("/etc/passwd").unwrap_or_default(), self.passwd);
    }
}

/// The daemon still answers: the root can be listed and a sound file read.
#[track_caller]
fn assert_answers(m: &mut Mount, sound: &str, want: &[u8]) {
    assert!(m.alive(), "the daemon died: {}", m.stderr());
    let _ = common::names(m.path());
    assert_eq!(read_all(&m.join(sound)).unwrap(), want, "{sound}");
    assert!(!m.stderr().contains("panicked"), "{}", m.stderr());
}

#[track_caller]
fn assert_errno<T: std::fmt::Debug>(what: &str, r: std::io::Result<T>, want: i32) {
    match r {
        Ok(v) => panic!("{what}: succeeded with {v:?}"),
        Err(e) => assert_eq!(errno(&e), want, "{what}: {e}"),
    }
}

// ---------------------------------------------------------------------------------------
// Titles
// ---------------------------------------------------------------------------------------

/// Titles that try to escape or confuse are refused and shown as `sha256-<hex>`, sound
/// ones (names differing only in case included) are kept, the first of two equal titles
/// wins, every layer stays reachable with its own bytes, and nothing is written anywhere.
#[test]
fn hostile_titles_are_refused_and_every_layer_stays_reachable() {
    let reg = Registry::start();
    let long = "a".repeat(300);
    let long_inner = format!("dir/{}", "b".repeat(256));
    let hostile: Vec<String> = vec![
        "../../x".into(),
        "/etc/passwd".into(),
        "a/../../b".into(),
        ".".into(),
        "..".into(),
        "".into(),
        long.clone(),
        long_inner,
        "red\u{1b}[31m".into(),
        "tab\there".into(),
        "new\nline".into(),
        "nul\u{0}byte".into(),
        "del\u{7f}".into(),
        "c1\u{85}".into(),
        "a//b".into(),
        "trailing/".into(),
        "./x".into(),
        ".manifest.json".into(),
        ".orasfs/stats.json".into(),
        "dup.txt".into(), // the second "dup.txt" below
    ];
    let sound = [
        "dup.txt",
        "README.md",
        "readme.md",
        "ReadMe.md",
        "sub/evil",
        "ünïcode ✓.txt",
    ];
    let mut layers = Vec::new();
    let mut expect: Vec<(String, Vec<u8>)> = Vec::new();
    // The first "dup.txt" comes first in manifest order, so it keeps the name.
    for (i, t) in sound.iter().enumerate() {
        let bytes = format!("sound {i} {t}").into_bytes();
        layers.push(LayerSpec::titled(t, bytes.clone()));
        expect.push((t.to_string(), bytes));
    }
    for (i, t) in hostile.iter().enumerate() {
        let bytes = format!("hostile {i}").into_bytes();
        layers.push(LayerSpec::titled(t, bytes.clone()));
        expect.push((format!("sha256-{}", hex_of(&sha256(&bytes))), bytes));
    }
    let pushed = reg.push_layers("hostile/titles", Some("v1"), layers);
    assert!(
        String::from_utf8_lossy(&pushed.manifest).contains("\\u0000"),
        "the NUL travels as JSON \\u0000"
    );

    let sb = Sandbox::new();
    let mut m = sb
        .launch(&format!("{}/hostile/titles:v1", reg.addr()))
        .mount()
        .expect("mount");
    let mut want_top: Vec<String> = expect
        .iter()
        .map(|(p, _)| p.split('/').next().unwrap().to_string())
        .chain([".config.json".to_string(), ".manifest.json".to_string()])
        .collect();
    want_top.sort();
    want_top.dedup();
    assert_eq!(common::names(m.path()), want_top);
    for (path, bytes) in &expect {
        assert_eq!(
            read_all(&m.join(path)).unwrap_or_else(|e| panic!("{path:?}: {e}")),
            *bytes,
            "{path:?}"
        );
    }
    assert_eq!(common::names(&m.join("sub")), ["evil"]);
    for t in ["x", "b", "passwd", "etc", "a", "..."] {
        assert_errno(t, fs::metadata(m.join(t)), libc::ENOENT);
    }
    let log = m.stderr();
    assert!(log.contains("refused"), "refusals are logged: {log}");
    assert_eq!(
        log.matches("refused").count(),
        log.lines().filter(|l| l.contains("refused")).count(),
        "one line per refusal (control characters do not break log lines)"
    );
    assert_answers(&mut m, "README.md", b"sound 1 README.md");
    sb.assert_clean(&m);
}

// ---------------------------------------------------------------------------------------
// Oversized documents
// ---------------------------------------------------------------------------------------

/// A registry that answers a manifest request with an endless body: the daemon stops
/// reading at the 4 MiB cap, whether the answer announces its length (refused on the
/// header) or not (cut at 4 MiB + 1), and fails with a one-line error naming the limit.
/// The server counts what it managed to send; without the cap the daemon would take all
/// 256 MiB (the parser's own size check would still refuse it, so only the bytes sent
/// tell the cap is there).
#[test]
fn an_endless_manifest_over_http_is_not_read_past_the_limit() {
    use std::io::{BufRead, BufReader, Write};
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;
    const ENDLESS: u64 = 256 * MIB as u64;
    for announce_length in [true, false] {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().unwrap();
        let most = Arc::new(AtomicU64::new(0));
        let served = Arc::new(AtomicU64::new(0));
        let (m, sv) = (most.clone(), served.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { break };
                let mut first = String::new();
                let mut r = BufReader::new(conn.try_clone().unwrap());
                if r.read_line(&mut first).is_err() {
                    continue;
                }
                let mut line = String::new();
                while r.read_line(&mut line).is_ok_and(|n| n > 2) {
                    line.clear();
                }
                if !first.contains("/manifests/") {
                    let _ = conn.write_all(
                        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\
                          Content-Length: 2\r\nConnection: close\r\n\r\n{}",
                    );
                    continue;
                }
                let mut head = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: {OCI_MANIFEST}\r\nConnection: close\r\n"
                );
                if announce_length {
                    head += &format!("Content-Length: {ENDLESS}\r\n");
                }
                head += "\r\n";
                if conn.write_all(head.as_bytes()).is_err() {
                    continue;
                }
                sv.fetch_add(1, Ordering::Relaxed);
                let chunk = vec![b' '; 64 * 1024];
                let mut sent = 0u64;
                while sent < ENDLESS && conn.write_all(&chunk).is_ok() {
                    sent += chunk.len() as u64;
                    m.fetch_max(sent, Ordering::Relaxed);
                }
            }
        });
        let f = Launch::new(&format!("{addr}/hostile/endless:v1")).fail();
        assert_one_line(
            &format!("an endless manifest (Content-Length: {announce_length})"),
            &f,
            &["limit"],
        );
        assert!(
            served.load(Ordering::Relaxed) >= 1,
            "the manifest was asked for"
        );
        let most = most.load(Ordering::Relaxed);
        eprintln!("announce length {announce_length}: at most {most} bytes sent on one answer");
        // 4 MiB + 1 read, plus what socket buffers on both sides take in (loopback
        // buffers grow to several MiB each).
        assert!(
            most < 32 * MIB as u64,
            "{most} bytes of one manifest answer were taken (announce length {announce_length})"
        );
    }
}

/// A manifest over 4 MiB: the registry may refuse it; orasfs refuses it too (here from an
/// OCI layout) with a clear error — one line for a mount of that tag, EIO for its
/// directory in a mount of the layout — and the layout's sound tag still reads.
/// Likewise a manifest of 100 000 layers (9 MiB; the layer cap of 65 536 entries cannot
/// be reached under 4 MiB) and an index.json over 4 MiB. Memory stays bounded: the daemon
/// never reads more than 4 MiB + 1 of a document.
#[test]
fn oversized_manifests_are_refused_with_a_clear_error() {
    let reg = Registry::start();
    let payload = "p".repeat(4 * MIB + 10);
    let (cd, cs) = reg.push_blob("hostile/big", b"{}");
    let big_manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": common::OCI_EMPTY, "digest": cd, "size": cs},
        "layers": [],
        "annotations": {"padding": payload},
    }))
    .unwrap();
    match reg.try_push_manifest("hostile/big", "v1", OCI_MANIFEST, &big_manifest) {
        Ok(_) => {
            let f = Launch::new(&format!("{}/hostile/big:v1", reg.addr())).fail();
            assert_one_line("registry manifest over 4 MiB", &f, &["limit"]);
        }
        Err((status, body)) => eprintln!("the registry refused a 4 MiB+ manifest: {status} {body}"),
    }

    let layout = LayoutDir::new();
    let sound = layout.blob(b"sound bytes");
    let mut sound_l = sound.clone();
    sound_l["annotations"] = json!({ TITLE: "sound.txt" });
    let ok = layout.image(vec![sound_l]);
    let x = random_bytes(1, 1);
    let one = layout.blob(&x);
    let huge = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "config": one,
        "layers": vec![one.clone(); 100_000],
    }))
    .unwrap();
    assert!(
        huge.len() > 4 * MIB,
        "100 000 layers take {} bytes",
        huge.len()
    );
    let descs = vec![
        layout.manifest_desc(&ok, OCI_MANIFEST, Some("ok")),
        layout.manifest_desc(&big_manifest, OCI_MANIFEST, Some("big")),
        layout.manifest_desc(&huge, OCI_MANIFEST, Some("huge")),
    ];
    layout.index(descs);

    let sb = Sandbox::new();
    for tag in ["big", "huge"] {
        let f = sb.launch(&layout.source(Some(tag))).fail();
        assert_one_line(&format!("layout tag {tag}"), &f, &["4 MiB"]);
    }
    let mut m = sb
        .launch(&layout.source(None))
        .mount()
        .expect("mount the layout");
    // A listing shows the sound tag; one whose manifest is refused is left out (and logged)
    // or shown — either way looking it up fails.
    let listed = common::names(m.path());
    assert!(listed.contains(&"ok".to_string()), "{listed:?}");
    assert!(
        listed
            .iter()
            .all(|t| ["big", "huge", "ok"].contains(&t.as_str())),
        "{listed:?}"
    );
    for tag in ["big", "huge"] {
        assert_errno(tag, fs::read_dir(m.join(tag)), libc::EIO);
    }
    assert_answers(&mut m, "ok/sound.txt", b"sound bytes");
    let rss = m.peak_rss_kib().unwrap_or(0);
    eprintln!("daemon peak RSS {rss} KiB");
    sb.assert_clean(&m);
    drop(m);

    // An index.json over 4 MiB: the layout does not mount.
    let mut entries = vec![layout.manifest_desc(&ok, OCI_MANIFEST, Some("ok"))];
    entries[0]["annotations"]["padding"] = json!(payload);
    layout.index(entries);
    let f = sb.launch(&layout.source(None)).fail();
    assert_one_line("index.json over 4 MiB", &f, &["index.json", "4 MiB"]);
}

// ---------------------------------------------------------------------------------------
// Indexes: deep, and pointing at themselves
// ---------------------------------------------------------------------------------------

/// An index nested 100 deep (pushed through the registry) answers at every level without
/// blowing the stack — lookups are lazy, one level per lookup — and a bounded recursive
/// walk (`ls -R` style) of the whole tree finishes. An index that points at itself, and
/// two that point at each other (possible only where content is not addressed by its
/// digest, as in a layout's blob files), fail with EIO at once.
#[test]
fn deep_and_self_referencing_indexes_answer_without_hanging() {
    let reg = Registry::start();
    let leaf = reg.push_layers(
        "hostile/deep",
        None,
        vec![LayerSpec::titled("leaf.txt", b"at the bottom".to_vec())],
    );
    let depth = 100;
    let mut inner = leaf.descriptor();
    for level in 0..depth {
        let mut entry = inner.clone();
        entry["platform"] = json!({"os": "l", "architecture": format!("a{level}")});
        let index = serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": [entry],
        }))
        .unwrap();
        let tag = if level == depth - 1 {
            "deep".to_string()
        } else {
            sha256(&index)
        };
        let d = reg.push_manifest("hostile/deep", &tag, OCI_INDEX, &index);
        inner = json!({"mediaType": OCI_INDEX, "digest": d, "size": index.len()});
    }
    let sb = Sandbox::new();
    let mut m = sb
        .launch(&format!("{}/hostile/deep:deep", reg.addr()))
        .mount()
        .expect("mount");
    let t = Instant::now();
    let mut path = m.path().to_path_buf();
    for level in (0..depth).rev() {
        let names = common::names(&path);
        assert_eq!(names, [format!("l-a{level}")], "level {level}");
        path.push(&names[0]);
    }
    assert_eq!(fs::read(path.join("leaf.txt")).unwrap(), b"at the bottom");
    // A bounded recursive walk visits every directory.
    fn walk(p: &Path, depth: usize, dirs: &mut usize) {
        assert!(depth <= 120, "walk deeper than the tree");
        *dirs += 1;
        for e in fs::read_dir(p).unwrap().flatten() {
            if e.file_type().unwrap().is_dir() {
                walk(&e.path(), depth + 1, dirs);
            }
        }
    }
    let mut dirs = 0;
    walk(m.path(), 0, &mut dirs);
    assert_eq!(dirs, depth + 1);
    eprintln!("walked {depth} nested indexes in {:?}", t.elapsed());
    assert!(t.elapsed() < Duration::from_secs(60));
    assert!(m.alive(), "the daemon answers after the walk");
    assert_eq!(common::names(m.path()), ["l-a99"]);
    sb.assert_clean(&m);
    drop(m);

    // A layout whose index blob names itself, and two that name each other.
    let layout = LayoutDir::new();
    let sound = layout.image(vec![{
        let mut d = layout.blob(b"sound");
        d["annotations"] = json!({ TITLE: "sound.txt" });
        d
    }]);
    let fake_self = "1".repeat(64);
    let (fake_a, fake_b) = ("a".repeat(64), "b".repeat(64));
    let pointing = |to: &str| {
        serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": [{"mediaType": OCI_INDEX, "digest": format!("sha256:{to}"), "size": 200}],
        }))
        .unwrap()
    };
    layout.put(&fake_self, &pointing(&fake_self));
    layout.put(&fake_a, &pointing(&fake_b));
    layout.put(&fake_b, &pointing(&fake_a));
    let self_idx = pointing(&fake_self);
    let ab_idx = pointing(&fake_a);
    layout.index(vec![
        layout.manifest_desc(&sound, OCI_MANIFEST, Some("sound")),
        layout.manifest_desc(&self_idx, OCI_INDEX, Some("selfish")),
        layout.manifest_desc(&ab_idx, OCI_INDEX, Some("cycle")),
    ]);
    let mut m = sb
        .launch(&layout.source(None))
        .mount()
        .expect("mount the layout");
    for tag in ["selfish", "cycle"] {
        let dir = m.join(tag);
        let entry = format!(
            "sha256-{}",
            if tag == "selfish" {
                &fake_self
            } else {
                &fake_a
            }
        );
        let t = Instant::now();
        assert_errno(
            &format!("{tag}/{entry}"),
            fs::metadata(dir.join(&entry)),
            libc::EIO,
        );
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "{tag}: took {:?}",
            t.elapsed()
        );
    }
    assert_answers(&mut m, "sound/sound.txt", b"sound");
    sb.assert_clean(&m);
}

// ---------------------------------------------------------------------------------------
// Sizes that lie
// ---------------------------------------------------------------------------------------

/// Push a manifest through the registry if it takes it, else serve it from a layout;
/// returns the SOURCE of a mount of its tag and where it came from.
fn hostile_manifest_source(
    reg: &Registry,
    layout: &LayoutDir,
    repo: &str,
    tag: &str,
    manifest: &[u8],
) -> (String, &'static str) {
    match reg.try_push_manifest(repo, tag, OCI_MANIFEST, manifest) {
        Ok(_) => (format!("{}/{repo}:{tag}", reg.addr()), "registry"),
        Err((status, body)) => {
            eprintln!(
                "{repo}:{tag}: the registry refused the manifest ({status} {body}); using a layout"
            );
            layout.index(vec![layout.manifest_desc(
                manifest,
                OCI_MANIFEST,
                Some(tag),
            )]);
            (layout.source(Some(tag)), "layout")
        }
    }
}

/// Descriptors whose size is smaller or larger than the real blob, small (fetched whole)
/// and large (fetched in ranges), and absurd sizes: the file shows the descriptor's size,
/// a whole read fails with EIO, and no read — whole or partial — returns a byte that is not
/// the blob's. Negative sizes and sizes over 2^50 make the manifest itself refused.
#[test]
fn descriptor_sizes_that_lie_never_give_wrong_bytes() {
    let reg = Registry::start();
    let layout = LayoutDir::new();
    let small = random_bytes(100_000, 200);
    let large = random_bytes(5 * MIB + 100, 201);
    let repo = "hostile/sizes";
    let mut layers = Vec::new();
    let mut cases = Vec::new();
    for (kind, bytes) in [("small", &small), ("large", &large)] {
        let (d, n) = reg.push_blob(repo, bytes);
        layout.blob(bytes);
        for (how, size) in [
            ("short", n - 10),
            ("long", n + 10),
            ("much-longer", n + 3 * MIB as u64),
            ("empty", 0),
            ("terabyte", 1 << 40),
        ] {
            let name = format!("{kind}-{how}.bin");
            layers.push(json!({
                "mediaType": "application/octet-stream",
                "digest": d, "size": size,
                "annotations": {TITLE: name},
            }));
            cases.push((name, size, bytes.clone()));
        }
    }
    let (cd, cs) = reg.push_blob(repo, b"{}");
    layout.blob(b"{}");
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": common::OCI_EMPTY, "digest": cd, "size": cs},
        "layers": layers,
    }))
    .unwrap();
    let (source, from) = hostile_manifest_source(&reg, &layout, repo, "v1", &manifest);
    let sb = Sandbox::new();
    let mut m = sb.launch(&source).mount().expect("mount");
    eprintln!("lying sizes served from the {from}");
    for (name, size, real) in &cases {
        let p = m.join(name);
        assert_eq!(
            fs::metadata(&p).unwrap().len(),
            *size,
            "{name}: st_size is the descriptor's"
        );
        if *size == 0 {
            // Nothing to read, nothing to verify against: an empty file.
            assert_eq!(read_all(&p).unwrap(), b"", "{name}");
            continue;
        }
        let t = Instant::now();
        match read_stream(&p, 64 * MIB) {
            Ok(got) => panic!(
                "{name}: a whole read of a blob whose size lies succeeded ({} bytes)",
                got.len()
            ),
            Err(e) => assert_eq!(errno(&e), libc::EIO, "{name}: {e}"),
        }
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "{name}: {:?}",
            t.elapsed()
        );
        for off in [0u64, 4096, real.len() as u64 - 5, *size - 1, size / 2] {
            if let Ok(got) = pread(&p, off, 64 * 1024) {
                let off = off as usize;
                assert!(
                    off + got.len() <= real.len() && got == real[off..off + got.len()],
                    "{name}: a partial read at {off} returned bytes that are not the blob's"
                );
            }
        }
    }
    assert!(m.alive());
    let _ = common::names(m.path());
    sb.assert_clean(&m);
    drop(m);

    for (i, (what, size, needle)) in [
        ("negative", "-1", "manifest"),
        ("over 2^64", "1180591620717411303424", "manifest"),
        ("2^60", "1152921504606846976", "size"),
        ("fractional", "1.5", "manifest"),
    ]
    .into_iter()
    .enumerate()
    {
        let text = format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{{"mediaType":"{}","digest":"{cd}","size":{cs}}},"layers":[{{"mediaType":"application/octet-stream","digest":"{}","size":{size}}}]}}"#,
            common::OCI_EMPTY,
            sha256(&small)
        );
        let tag = format!("s{i}");
        let (source, from) = hostile_manifest_source(&reg, &layout, repo, &tag, text.as_bytes());
        let f = sb.launch(&source).fail();
        assert_one_line(&format!("{what} size from the {from}"), &f, &[needle]);
    }
    assert!(common::names(sb.cwd.path()).is_empty());
}

// ---------------------------------------------------------------------------------------
// Digests, layouts, symlinks
// ---------------------------------------------------------------------------------------

/// Malformed digests — a path (`sha256:../x`), an unknown algorithm, a wrong length,
/// upper case — in a layer descriptor make that manifest refused (EIO for its directory,
/// one line for a mount of it) while the sound tag reads; in index.json they make the
/// layout refused with one line; as a directory name they are simply not found.
#[test]
fn malformed_digests_are_refused() {
    let reg = Registry::start();
    reg.push_artifact("hostile/digests", "v1", &[("a.txt", b"alpha")]);
    let hex = "0123456789abcdef".repeat(4);
    let bad = [
        "sha256:../x".to_string(),
        "sha256:../../../../etc/passwd".to_string(),
        format!("sha512:{hex}{hex}"),
        format!("md5:{}", &hex[..32]),
        format!("sha256:{}", &hex[..63]),
        format!("sha256:{hex}0"),
        format!("sha256:{}", hex.to_uppercase()),
        format!("sha256:{}", &hex[..62]) + "/x",
        "sha256:".to_string(),
        hex.clone(),
    ];
    let layout = LayoutDir::new();
    let sound = layout.image(vec![{
        let mut d = layout.blob(b"sound");
        d["annotations"] = json!({ TITLE: "sound.txt" });
        d
    }]);
    let mut entries = vec![layout.manifest_desc(&sound, OCI_MANIFEST, Some("sound"))];
    for (i, d) in bad.iter().enumerate() {
        let m = layout.image(vec![
            json!({"digest": d, "size": 5, "annotations": {TITLE: "evil"}}),
        ]);
        entries.push(layout.manifest_desc(&m, OCI_MANIFEST, Some(&format!("bad{i}"))));
        // The registry refuses them too.
        let pushed = reg.try_push_manifest("hostile/digests", &format!("bad{i}"), OCI_MANIFEST, &m);
        assert!(pushed.is_err(), "the registry took a layer digest {d:?}");
    }
    layout.index(entries.clone());
    let sb = Sandbox::new();
    let mut m = sb.launch(&layout.source(None)).mount().expect("mount");
    for (i, d) in bad.iter().enumerate() {
        assert_errno(
            &format!("layer digest {d:?}"),
            fs::read_dir(m.join(format!("bad{i}"))),
            libc::EIO,
        );
    }
    assert_answers(&mut m, "sound/sound.txt", b"sound");
    sb.assert_clean(&m);
    drop(m);
    let f = sb.launch(&layout.source(Some("bad0"))).fail();
    assert_one_line("a mount of a manifest with a bad digest", &f, &["digest"]);

    // Digests as names inside a repository directory: not found, no request made.
    let mut m = sb
        .launch(&format!("{}/hostile/digests", reg.addr()))
        .mount()
        .expect("mount repo");
    for name in [
        "sha256:..",
        "sha256:",
        "sha512:abc",
        &format!("sha256:{}", &hex[..63]),
        &format!("sha256:{hex}"),
    ] {
        assert_errno(name, fs::metadata(m.join(name)), libc::ENOENT);
    }
    assert_answers(&mut m, "v1/a.txt", b"alpha");
    drop(m);

    // In index.json itself: the layout is refused with one line.
    for d in &bad[..3] {
        let mut e = entries[0].clone();
        e["digest"] = json!(d);
        layout.index(vec![entries[0].clone(), e]);
        let f = sb.launch(&layout.source(None)).fail();
        assert_one_line(
            &format!("index.json digest {d:?}"),
            &f,
            &["index.json", "digest"],
        );
    }
    assert!(common::names(sb.cwd.path()).is_empty());
}

/// Broken layouts fail to mount with one line naming the problem: malformed JSON in
/// index.json, a missing oci-layout, a wrong imageLayoutVersion, no blobs/, an index.json
/// that is an image manifest or a directory, a tag that is not there.
#[test]
fn malformed_layouts_fail_to_mount_with_one_line() {
    let sb = Sandbox::new();
    let fresh = || {
        let l = LayoutDir::new();
        let img = l.image(vec![l.blob(b"x")]);
        l.index(vec![l.manifest_desc(&img, OCI_MANIFEST, Some("v1"))]);
        l
    };
    let ok = fresh();
    let m = sb
        .launch(&ok.source(Some("v1")))
        .mount()
        .expect("a sound layout mounts");
    drop(m);

    type Breaker = fn(&Path);
    let cases: Vec<(&str, Breaker, &[&str])> = vec![
        (
            "malformed index.json",
            |p| fs::write(p.join("index.json"), b"{\"manifests\": [").unwrap(),
            &["index.json"],
        ),
        (
            "index.json is not JSON",
            |p| fs::write(p.join("index.json"), b"\x00\xff garbage").unwrap(),
            &["index.json"],
        ),
        (
            "index.json is empty",
            |p| fs::write(p.join("index.json"), b"").unwrap(),
            &["index.json"],
        ),
        (
            "index.json is a directory",
            |p| {
                fs::remove_file(p.join("index.json")).unwrap();
                fs::create_dir(p.join("index.json")).unwrap();
            },
            &["index.json"],
        ),
        (
            "index.json is an image manifest",
            |p| {
                fs::write(p.join("index.json"), br#"{"schemaVersion":2,"config":{"digest":"sha256:0000000000000000000000000000000000000000000000000000000000000000","size":2},"layers":[]}"#).unwrap()
            },
            &["index.json"],
        ),
        (
            "index.json is missing",
            |p| fs::remove_file(p.join("index.json")).unwrap(),
            &["index.json"],
        ),
        (
            "oci-layout is missing",
            |p| fs::remove_file(p.join("oci-layout")).unwrap(),
            &["oci-layout"],
        ),
        (
            "oci-layout is malformed",
            |p| fs::write(p.join("oci-layout"), b"{").unwrap(),
            &["oci-layout"],
        ),
        (
            "imageLayoutVersion 2.0.0",
            |p| fs::write(p.join("oci-layout"), br#"{"imageLayoutVersion":"2.0.0"}"#).unwrap(),
            &["imageLayoutVersion"],
        ),
        (
            "imageLayoutVersion is a number",
            |p| fs::write(p.join("oci-layout"), br#"{"imageLayoutVersion":1}"#).unwrap(),
            &["oci-layout"],
        ),
        (
            "blobs/ is missing",
            |p| fs::remove_dir_all(p.join("blobs")).unwrap(),
            &["blobs"],
        ),
    ];
    for (what, brk, needles) in cases {
        let l = fresh();
        brk(l.path());
        for tag in [None, Some("v1")] {
            let f = sb.launch(&l.source(tag)).fail();
            assert_one_line(what, &f, needles);
        }
    }
    let l = fresh();
    let f = sb.launch(&l.source(Some("v2"))).fail();
    assert_one_line("a missing tag", &f, &["v2"]);
    assert!(
        common::names(sb.cwd.path()).is_empty(),
        "nothing written to the working directory"
    );
}

/// Blobs that lead out of the layout are refused even when their content is right: a
/// layer blob that is a symlink to a file outside (EIO for that file, the rest reads), a
/// manifest blob that is one (EIO for the tag), and a `blobs/sha256` directory that is a
/// symlink out (every blob refused). A symlink that stays inside the layout is fine.
#[test]
fn blobs_symlinked_out_of_the_layout_are_refused() {
    let sb = Sandbox::new();
    let outside = tempfile::tempdir().unwrap();
    let l = LayoutDir::new();
    let secret = b"outside the layout".to_vec();
    let inner = b"inside, via a link".to_vec();
    let sound = b"sound".to_vec();
    // The layer descriptor is right; the file is a symlink to the bytes outside.
    let secret_d = sha256(&secret);
    fs::write(outside.path().join("secret"), &secret).unwrap();
    std::os::unix::fs::symlink(
        outside.path().join("secret"),
        l.path().join("blobs/sha256").join(hex_of(&secret_d)),
    )
    .unwrap();
    // A symlink inside the layout.
    let inner_d = sha256(&inner);
    fs::create_dir_all(l.path().join("other")).unwrap();
    fs::write(l.path().join("other/inner"), &inner).unwrap();
    std::os::unix::fs::symlink(
        "../../other/inner",
        l.path().join("blobs/sha256").join(hex_of(&inner_d)),
    )
    .unwrap();
    let layer =
        |d: &str, n: usize, t: &str| json!({"digest": d, "size": n, "annotations": {TITLE: t}});
    let img = l.image(vec![
        layer(&secret_d, secret.len(), "secret.txt"),
        layer(&inner_d, inner.len(), "inner.txt"),
        {
            let mut d = l.blob(&sound);
            d["annotations"] = json!({TITLE: "sound.txt"});
            d
        },
    ]);
    // A manifest blob that is a symlink out.
    let linked = l.image(vec![l.blob(b"y")]);
    let linked_d = sha256(&linked);
    fs::write(outside.path().join("manifest"), &linked).unwrap();
    std::os::unix::fs::symlink(
        outside.path().join("manifest"),
        l.path().join("blobs/sha256").join(hex_of(&linked_d)),
    )
    .unwrap();
    l.index(vec![
        l.manifest_desc(&img, OCI_MANIFEST, Some("v1")),
        json!({"mediaType": OCI_MANIFEST, "digest": linked_d, "size": linked.len(), "annotations": {common::REF_NAME: "linked"}}),
    ]);

    let mut m = sb.launch(&l.source(None)).mount().expect("mount");
    assert_errno("secret.txt", read_all(&m.join("v1/secret.txt")), libc::EIO);
    assert_eq!(read_all(&m.join("v1/inner.txt")).unwrap(), inner);
    assert_errno("linked", fs::read_dir(m.join("linked")), libc::EIO);
    assert_answers(&mut m, "v1/sound.txt", &sound);
    sb.assert_clean(&m);
    drop(m);

    // blobs/sha256 itself a symlink out of the layout (to a copy with every blob).
    let copy = outside.path().join("sha256");
    fs::create_dir(&copy).unwrap();
    for e in fs::read_dir(l.path().join("blobs/sha256"))
        .unwrap()
        .flatten()
    {
        let meta = fs::symlink_metadata(e.path()).unwrap();
        if meta.is_file() {
            fs::copy(e.path(), copy.join(e.file_name())).unwrap();
        }
    }
    fs::remove_dir_all(l.path().join("blobs/sha256")).unwrap();
    std::os::unix::fs::symlink(&copy, l.path().join("blobs/sha256")).unwrap();
    match sb.launch(&l.source(Some("v1"))).mount() {
        Ok(mut m) => {
            assert_errno(
                "sound.txt through a symlinked blobs/sha256",
                read_all(&m.join("sound.txt")),
                libc::EIO,
            );
            assert!(m.alive());
        }
        Err(e) => {
            assert!(
                e.contains("out of the layout") && e.lines().count() == 1,
                "{e}"
            );
        }
    }
    assert!(common::names(sb.cwd.path()).is_empty());
}

/// Names chosen to collide with the names orasfs falls back to — a title spelled like the
/// `sha256-<hex>-<position>` of a repeated untitled layer, an index entry whose platform
/// spells `sha256-<hex>` of another entry, the same entry twice — hide nothing: every layer
/// and every index entry has a name of its own and reads its own bytes.
#[test]
fn names_that_mimic_fallback_names_hide_nothing() {
    let reg = Registry::start();
    let same = b"the same blob twice".to_vec();
    let other = b"a different blob".to_vec();
    let hex = hex_of(&sha256(&same)).to_string();
    reg.push_layers(
        "hostile/mimic",
        Some("v1"),
        vec![
            LayerSpec::untitled(same.clone()),
            LayerSpec::untitled(same.clone()),
            LayerSpec::titled(&format!("sha256-{hex}-1"), other.clone()),
        ],
    );
    let sb = Sandbox::new();
    let mut m = sb
        .launch(&format!("{}/hostile/mimic:v1", reg.addr()))
        .mount()
        .expect("mount");
    let mut files: Vec<String> = common::names(m.path())
        .into_iter()
        .filter(|n| n.starts_with("sha256-"))
        .collect();
    files.sort();
    assert_eq!(files.len(), 3, "three layers, three names: {files:?}");
    let mut contents: Vec<Vec<u8>> = files
        .iter()
        .map(|f| read_all(&m.join(f)).unwrap())
        .collect();
    contents.sort();
    let mut want = vec![same.clone(), same.clone(), other.clone()];
    want.sort();
    assert_eq!(contents, want);
    assert_eq!(
        read_all(&m.join(format!("sha256-{hex}-1"))).unwrap(),
        other,
        "the title keeps its name"
    );
    assert!(m.alive());
    drop(m);

    // An index: the same entry twice, and an entry whose platform spells another's name.
    let a = reg.push_layers(
        "hostile/mimic",
        None,
        vec![LayerSpec::titled("a.txt", b"A".to_vec())],
    );
    let b = reg.push_layers(
        "hostile/mimic",
        None,
        vec![LayerSpec::titled("b.txt", b"B".to_vec())],
    );
    let mut spoof = a.descriptor();
    spoof["platform"] = json!({"os": "sha256", "architecture": hex_of(&b.digest)});
    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [spoof, b.descriptor(), b.descriptor()],
    }))
    .unwrap();
    reg.push_manifest("hostile/mimic", "idx", OCI_INDEX, &index);
    let mut m = sb
        .launch(&format!("{}/hostile/mimic:idx", reg.addr()))
        .mount()
        .expect("mount the index");
    let entries: Vec<String> = common::names(m.path())
        .into_iter()
        .filter(|n| n.starts_with("sha256-"))
        .collect();
    assert_eq!(entries.len(), 3, "three entries, three names: {entries:?}");
    let mut seen: Vec<String> = entries
        .iter()
        .map(|e| {
            let mut n = common::names(&m.join(e));
            n.retain(|n| n.ends_with(".txt"));
            n.join(",")
        })
        .collect();
    seen.sort();
    assert_eq!(seen, ["a.txt", "b.txt", "b.txt"]);
    // First come, first named: the spoofing platform took b's digest name; b got another.
    let spoofed = format!("sha256-{}", hex_of(&b.digest));
    assert_eq!(read_all(&m.join(format!("{spoofed}/a.txt"))).unwrap(), b"A");
    let b_dir = entries.iter().find(|e| **e != spoofed).unwrap();
    assert_answers(&mut m, &format!("{b_dir}/b.txt"), b"B");
    sb.assert_clean(&m);
}
