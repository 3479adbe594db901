//! Metadata that stays true: what names mean when the registry is down, has no catalog,
//! holds many tags, is re-pushed, or is mounted again. A real `docker-registry`, the
//! fault-injecting proxy where an outage, a missing catalog or a distant registry is
//! needed (tests/common), and a real `orasfs` mount.

mod common;

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::*;

/// The errno of a `stat`, or 0 when it succeeds.
fn stat_errno(p: &Path) -> i32 {
    match fs::metadata(p) {
        Ok(_) => 0,
        Err(e) => errno(&e),
    }
}

fn lines_matching(text: &str, needle: &str) -> usize {
    text.lines().filter(|l| l.contains(needle)).count()
}

/// The outage line the daemon logs once per outage.
const OUTAGE_LINE: &str = "cannot be reached";

#[test]
fn an_outage_after_the_ttl_keeps_what_was_seen_and_fails_the_rest_fast() {
    let reg = Registry::start();
    let proxy = FaultProxy::start(reg.addr());
    let scene = random_bytes(300_000, 31);
    reg.push_artifact("meta/outage", "v1", &[("scene.tif", &scene)]);
    let connect_timeout = Duration::from_secs(2);
    let m = Launch::new(proxy.addr())
        .args(&["--metadata-ttl", "1s", "--connect-timeout", "2s"])
        .mount()
        .expect("mount the registry root");
    let file = m.join("meta/outage/v1/scene.tif");
    assert_eq!(read_all(&file).expect("read before the outage"), scene);

    proxy.go_down(Duration::from_secs(15));
    std::thread::sleep(Duration::from_millis(1500)); // past the TTL

    // Seen: still a file, still readable (its blob is cached), the directories still list.
    // This first lookup meets the outage and spends its retries.
    let t = Instant::now();
    let meta = fs::metadata(&file).expect("stat a seen file during the outage");
    eprintln!("first lookup in the outage: {:?}", t.elapsed());
    assert!(meta.is_file(), "a seen file stays a file");
    assert_eq!(meta.len(), scene.len() as u64);
    assert_eq!(read_all(&file).expect("read during the outage"), scene);
    assert_eq!(common::names(&m.join("meta/outage")), ["v1"]);

    // Never seen: EIO, quickly; never a phantom directory, never "absent".
    let unseen = [
        "no/such/thing.tif",
        "meta/outage/v2",
        "meta/other",
        "meta/outage/v1.aux.xml",
    ];
    for rel in unseen {
        let t = Instant::now();
        let e = stat_errno(&m.join(rel));
        let took = t.elapsed();
        eprintln!("{rel}: errno {e} in {took:?}");
        assert_eq!(e, libc::EIO, "{rel} during the outage");
        assert!(
            took < connect_timeout * 2,
            "{rel}: EIO took {took:?}, over twice the connect timeout"
        );
    }
    // Logged once, not per lookup.
    let before = m.stderr();
    assert_eq!(
        lines_matching(&before, OUTAGE_LINE),
        1,
        "one outage line:\n{before}"
    );
    for _ in 0..20 {
        for rel in unseen {
            assert_eq!(stat_errno(&m.join(rel)), libc::EIO, "{rel}");
        }
    }
    let after = m.stderr();
    assert_eq!(
        after.lines().count(),
        before.lines().count(),
        "80 more failed lookups logged nothing more:\n{after}"
    );

    // Back: definite answers again; only they make a name absent.
    wait_for(Duration::from_secs(20), || (!proxy.is_down()).then_some(()))
        .expect("the proxy comes back");
    let back = wait_for(Duration::from_secs(5), || {
        (stat_errno(&m.join("meta/outage/v2")) == libc::ENOENT).then_some(())
    });
    assert!(
        back.is_some(),
        "an unknown tag is ENOENT once the registry answers"
    );
    assert_eq!(stat_errno(&m.join("no/such/thing.tif")), libc::ENOENT);
    assert!(m.stderr().contains("answers again"), "{}", m.stderr());
}

/// gdalinfo probes sidecar names (`.aux.xml`, `.ovr`, `.msk`, …) next to the file it opens:
/// during an outage these must fail at once, and the file must stay the GeoTIFF it is.
#[test]
fn gdalinfo_opens_a_cached_geotiff_during_an_outage() {
    for (prog, arg) in [("gdalinfo", "--version"), ("gdal_translate", "--version")] {
        assert!(
            common::have(prog, &[arg]),
            "{prog} is needed: apt-get install gdal-bin"
        );
    }
    let work = tempfile::tempdir().unwrap();
    let pgm = work.path().join("r.pgm");
    let mut bytes = b"P5\n64 64\n255\n".to_vec();
    bytes.extend(random_bytes(64 * 64, 32));
    fs::write(&pgm, &bytes).unwrap();
    let tif = work.path().join("scene.tif");
    gdal_translate(&["-q", "-of", "GTiff"], &pgm, &tif);
    let tif_bytes = fs::read(&tif).unwrap();

    let reg = Registry::start();
    let proxy = FaultProxy::start(reg.addr());
    reg.push_artifact("meta/gis", "v1", &[("scene.tif", &tif_bytes)]);
    let m = Launch::new(proxy.addr())
        .args(&["--metadata-ttl", "1s", "--connect-timeout", "2s"])
        .mount()
        .expect("mount");
    let file = m.join("meta/gis/v1/scene.tif");
    assert_eq!(read_all(&file).expect("read"), tif_bytes);
    proxy.go_down(Duration::from_secs(60));
    std::thread::sleep(Duration::from_millis(1500));
    let t = Instant::now();
    let out = Command::new("timeout")
        .arg("60")
        .arg("gdalinfo")
        .arg(&file)
        .output()
        .expect("run gdalinfo");
    let took = t.elapsed();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "gdalinfo during the outage: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("Driver: GTiff"), "{text}");
    assert!(text.contains("Size is 64, 64"), "{text}");
    assert!(took < Duration::from_secs(20), "gdalinfo took {took:?}");
}

#[test]
fn without_a_catalog_tags_are_listed_and_made_up_names_are_absent() {
    let reg = Registry::start();
    let proxy = FaultProxy::start(reg.addr());
    reg.push_artifact("meta/nocat/name", "v1", &[("a.txt", b"alpha")]);
    reg.push_artifact("meta/nocat/name", "v2", &[("a.txt", b"beta")]);
    // As ghcr.io and Docker Hub: no `/v2/_catalog`.
    proxy.add(
        Rule::get(
            "/_catalog",
            Fault::Status {
                code: 404,
                retry_after: None,
            },
        )
        .always(),
    );
    let root = Launch::new(proxy.addr()).mount().expect("mount the root");
    let auto = Launch::new("")
        .mount()
        .expect("mount the multi-registry root");
    let bases: [PathBuf; 2] = [root.path().to_path_buf(), auto.join(proxy.addr())];
    for base in &bases {
        let repo = base.join("meta/nocat/name");
        assert_eq!(common::names(&repo), ["v1", "v2"], "{}", repo.display());
        assert_eq!(read_all(&repo.join("v2/a.txt")).expect("read"), b"beta");
        for rel in [
            "no/such/thing.tif",
            "meta/nocat/name/v3",
            "meta/nocat/name/v1/nope",
            "meta/nocat/nope",
            "meta/nocat/name/x/y",
        ] {
            assert_eq!(
                stat_errno(&base.join(rel)),
                libc::ENOENT,
                "{} in {}",
                rel,
                base.display()
            );
        }
        // The namespaces are known from the repository found below them.
        assert_eq!(common::names(&base.join("meta/nocat")), ["name"]);
    }
    assert!(proxy.applied()[0] > 0, "the catalog was asked for");
}

/// Push `n` tags `v0…` (zero-padded to `width`) of one artifact holding `a.txt`.
fn push_tags(reg: &Registry, repo: &str, n: usize, width: usize) {
    let pushed = reg.push_artifact(repo, &format!("v{:0width$}", 0), &[("a.txt", b"alpha")]);
    for i in 1..n {
        reg.push_manifest(
            repo,
            &format!("v{i:0width$}"),
            "application/vnd.oci.image.manifest.v1+json",
            &pushed.manifest,
        );
    }
}

/// Run `ls -la dir`: how long it took, what it printed, and the requests it caused.
fn ls_la(proxy: &FaultProxy, dir: &Path) -> (Duration, String, Vec<Record>) {
    let seen = proxy.log().len();
    let t = Instant::now();
    let out = Command::new("ls")
        .arg("-la")
        .arg(dir)
        .output()
        .expect("run ls");
    let took = t.elapsed();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let asked = proxy.log().split_off(seen);
    (
        took,
        String::from_utf8_lossy(&out.stdout).into_owned(),
        asked,
    )
}

/// How many of `asked` used `method`.
fn count(asked: &[Record], method: &str) -> usize {
    asked.iter().filter(|r| r.method == method).count()
}

#[test]
fn ls_la_of_300_tags_at_50ms_fetches_no_manifest() {
    let reg = Registry::start();
    let proxy = FaultProxy::start(reg.addr());
    push_tags(&reg, "meta/many", 300, 3);
    let m = Launch::new(&format!("{}/meta/many", proxy.addr()))
        .mount()
        .expect("mount the repository");
    proxy.set_latency(Duration::from_millis(50));
    let (took, listing, asked) = ls_la(&proxy, m.path());
    assert_eq!(lines_matching(&listing, " v"), 300, "{listing}");
    let (gets, heads) = (count(&asked, "GET"), count(&asked, "HEAD"));
    let manifests = asked
        .iter()
        .filter(|r| r.path.contains("/manifests/"))
        .count();
    eprintln!("ls -la of 300 tags at 50 ms: {took:?}, {gets} GET, {heads} HEAD");
    assert!(gets <= 1, "{gets} GETs: at most the tag list");
    assert_eq!(manifests, 0, "manifest requests for ls -la");
    assert!(took < Duration::from_secs(1), "ls -la took {took:?}");
    // Entering one tag fetches its manifest, and only its.
    let seen = proxy.log().len();
    assert_eq!(read_all(&m.join("v123/a.txt")).expect("read"), b"alpha");
    let manifests = proxy.log()[seen..]
        .iter()
        .filter(|r| r.path.contains("/manifests/"))
        .count();
    assert_eq!(manifests, 1);
}

/// Every path under `root` with its mtime in nanoseconds.
fn mtimes(root: &Path) -> Vec<(String, i64)> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<(String, i64)>) {
        for e in fs::read_dir(dir).expect("read_dir") {
            let p = e.expect("entry").path();
            let md = fs::symlink_metadata(&p).expect("stat");
            let rel = p.strip_prefix(root).unwrap().display().to_string();
            out.push((rel, md.mtime() * 1_000_000_000 + md.mtime_nsec()));
            if md.is_dir() {
                walk(root, &p, out);
            }
        }
    }
    let mut out = Vec::new();
    walk(root, root, &mut out);
    out.sort();
    out
}

#[test]
fn mtimes_are_the_same_across_mounts_with_a_cleared_cache() {
    let reg = Registry::start();
    // Pushed by the ORAS client: no `created` anywhere.
    assert!(have_oras(
        "metadata::mtimes_are_the_same_across_mounts_with_a_cleared_cache"
    ));
    oras_push(reg.addr(), "meta/times:undated", &[("a.txt", b"alpha")]);
    // An image whose config says when it was built.
    let config = br#"{"created":"2023-06-14T20:41:59.079795125Z","architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#;
    reg.push_image(
        "meta/times",
        Some("dated"),
        "application/vnd.oci.image.config.v1+json",
        config.to_vec(),
        vec![common::LayerSpec::titled("b.txt", b"beta".to_vec())],
    );
    let source = format!("{}/meta/times", reg.addr());
    let first = {
        // The first mount's cache goes with its temporary directory.
        let m = Launch::new(&source).mount().expect("first mount");
        let t = mtimes(m.path());
        m.unmount();
        t
    };
    std::thread::sleep(Duration::from_millis(1100));
    let fresh_cache = tempfile::tempdir().unwrap();
    let m = Launch::new(&source)
        .cache(fresh_cache.path())
        .mount()
        .expect("second mount");
    let second = mtimes(m.path());
    assert_eq!(first, second, "mtimes across two mounts");
    let of = |rel: &str| {
        let md = fs::metadata(m.join(rel)).expect(rel);
        UNIX_EPOCH + Duration::new(md.mtime() as u64, md.mtime_nsec() as u32)
    };
    let built = UNIX_EPOCH + Duration::new(1_686_775_319, 79_795_125);
    assert_eq!(of("dated/b.txt"), built);
    assert_eq!(of("dated/.manifest.json"), built);
    assert_eq!(of("undated/a.txt"), UNIX_EPOCH);
    assert_eq!(of("undated"), UNIX_EPOCH);
    assert!(of("undated/a.txt") < SystemTime::now() - Duration::from_secs(3600));
}

#[test]
fn sighup_shows_a_moved_tag_and_a_new_repository_within_a_second() {
    let reg = Registry::start();
    reg.push_artifact("meta/hup", "v001", &[("a.txt", b"old")]);
    let m = Launch::new(reg.addr()).mount().expect("mount the root");
    let file = m.join("meta/hup/v001/a.txt");
    assert_eq!(read_all(&file).expect("read"), b"old");
    assert_eq!(stat_errno(&m.join("meta/fresh")), libc::ENOENT);
    reg.push_artifact("meta/hup", "v001", &[("a.txt", b"new")]);
    reg.push_artifact("meta/fresh", "v1", &[("c.txt", b"fresh")]);
    // Without a signal, the default 60 s TTL keeps the old content.
    assert_eq!(read_all(&file).expect("read"), b"old");
    // SAFETY: signalling our own child.
    assert_eq!(unsafe { libc::kill(m.pid() as i32, libc::SIGHUP) }, 0);
    let t = Instant::now();
    let moved = wait_for(Duration::from_secs(5), || {
        (read_all(&file).ok()? == b"new").then(|| t.elapsed())
    });
    let moved = moved.expect("the moved tag shows after SIGHUP");
    let fresh = wait_for(Duration::from_secs(5), || {
        (read_all(&m.join("meta/fresh/v1/c.txt")).ok()? == b"fresh").then(|| t.elapsed())
    })
    .expect("the new repository shows after SIGHUP");
    eprintln!("after SIGHUP: moved tag in {moved:?}, new repository in {fresh:?}");
    assert!(moved < Duration::from_secs(1), "moved tag after {moved:?}");
    assert!(
        fresh < Duration::from_secs(1),
        "new repository after {fresh:?}"
    );
    assert!(common::names(m.path()).contains(&"meta".to_string()));
    assert_eq!(common::names(&m.join("meta")), ["fresh", "hup"]);
}

#[test]
fn ls_la_after_the_ttl_checks_entered_tags_with_parallel_heads() {
    let reg = Registry::start();
    let proxy = FaultProxy::start(reg.addr());
    push_tags(&reg, "meta/entered", 40, 2);
    let ttl = Duration::from_secs(2);
    let m = Launch::new(&format!("{}/meta/entered", proxy.addr()))
        .args(&["--metadata-ttl", "2s"])
        .mount()
        .expect("mount the repository");
    for i in 0..40 {
        assert_eq!(
            read_all(&m.join(format!("v{i:02}/a.txt"))).expect("read"),
            b"alpha"
        );
    }
    std::thread::sleep(ttl + Duration::from_millis(200));
    proxy.set_latency(Duration::from_millis(50));
    let (took, _, asked) = ls_la(&proxy, m.path());
    let (gets, heads) = (count(&asked, "GET"), count(&asked, "HEAD"));
    eprintln!(
        "ls -la of 40 entered tags after the TTL at 50 ms: {took:?}, {gets} GET, {heads} HEAD"
    );
    assert_eq!(heads, 40, "one HEAD per entered tag");
    assert!(gets <= 1, "{gets} GETs: at most the tag list");
    // One after another, 40 HEADs would take 2 s at 50 ms each.
    assert!(took < Duration::from_secs(1), "ls -la took {took:?}");
}

/// The three kinds of "no" stay distinct all the way to errno: the registry says a name is
/// not there (ENOENT), refuses to say (EACCES), or cannot be reached (EIO).
#[test]
fn not_there_refused_and_unreachable_are_distinct_errnos() {
    let reg = Registry::start();
    let proxy = FaultProxy::start(reg.addr());
    reg.push_artifact("meta/kinds", "v1", &[("a.txt", b"alpha")]);
    let m = Launch::new(proxy.addr())
        .args(&["--connect-timeout", "2s"])
        .mount()
        .expect("mount the root");
    assert_eq!(
        read_all(&m.join("meta/kinds/v1/a.txt")).expect("read"),
        b"alpha"
    );
    assert_eq!(stat_errno(&m.join("meta/kinds/v9")), libc::ENOENT);
    proxy.require_authorization("Basic c29tZW9uZTplbHNl", "Basic realm=\"registry\"");
    assert_eq!(stat_errno(&m.join("meta/kinds/v8")), libc::EACCES);
    proxy.go_down(Duration::from_secs(30));
    assert_eq!(stat_errno(&m.join("meta/kinds/v7")), libc::EIO);
    // What was seen keeps its meaning through all of it.
    assert_eq!(
        read_all(&m.join("meta/kinds/v1/a.txt")).expect("read"),
        b"alpha"
    );
}

/// The soft limit on open files is raised to the hard limit at start, as most servers do:
/// the cache and the connection pool hold descriptors.
#[test]
fn the_open_files_limit_is_raised_to_the_hard_limit() {
    assert!(
        common::have("prlimit", &["--version"]),
        "prlimit is needed: apt-get install util-linux"
    );
    let reg = Registry::start();
    reg.push_artifact("meta/limits", "v1", &[("a.txt", b"alpha")]);
    let m = Launch::new(&format!("{}/meta/limits:v1", reg.addr()))
        .under(&["prlimit", "--nofile=128:4096"])
        .mount()
        .expect("mount under prlimit");
    let limits = fs::read_to_string(format!("/proc/{}/limits", m.pid())).expect("limits");
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .expect("a Max open files line");
    let fields: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(fields[3..5], ["4096", "4096"], "{line}");
    assert_eq!(read_all(&m.join("a.txt")).expect("read"), b"alpha");
}

/// A registry whose packets are dropped: connections time out instead of being refused.
/// The first lookup to meet it waits one connect timeout, not one per retry, and the
/// lookups after it fail at once.
#[test]
fn a_registry_that_lets_connections_time_out_costs_one_connect_timeout() {
    let reg = Registry::start();
    let proxy = FaultProxy::start(reg.addr());
    reg.push_artifact("meta/dark", "v1", &[("a.txt", b"alpha")]);
    let connect_timeout = Duration::from_secs(1);
    let m = Launch::new(proxy.addr())
        .args(&["--metadata-ttl", "1s", "--connect-timeout", "1s"])
        .mount()
        .expect("mount the root");
    let file = m.join("meta/dark/v1/a.txt");
    assert_eq!(read_all(&file).expect("read"), b"alpha");
    proxy.go_dark(Duration::from_secs(30));
    std::thread::sleep(Duration::from_millis(1500));
    let t = Instant::now();
    assert_eq!(
        read_all(&file).expect("a seen file in the outage"),
        b"alpha"
    );
    let first = t.elapsed();
    let t = Instant::now();
    assert_eq!(stat_errno(&m.join("meta/dark/v2")), libc::EIO);
    let unseen = t.elapsed();
    eprintln!("dropped packets: first lookup {first:?}, an unseen name after it {unseen:?}");
    assert!(
        first < connect_timeout * 2,
        "the first lookup took {first:?}: more than one connect timeout"
    );
    assert!(unseen < connect_timeout, "an unseen name took {unseen:?}");
}
