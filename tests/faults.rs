//! Reliability under faults: a real `docker-registry` behind a scriptable fault-injecting
//! proxy (tests/common), a real `orasfs` mount, and plain file reads.
//!
//! The promise under test: orasfs never lets a read succeed with a wrong byte, rides out
//! transient network faults, keeps answering while one request is stuck, and recovers
//! from crashes and a damaged cache without serving damaged bytes.

mod common;

use std::fs;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;

const MIB: usize = 1024 * 1024;

/// A whole read of `p` succeeds with exactly `want`.
#[track_caller]
fn assert_reads_right(p: &Path, want: &[u8]) {
    let got = read_all(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    assert_eq!(got.len(), want.len(), "{}: length", p.display());
    assert!(got == want, "{}: wrong bytes", p.display());
}

/// The names in a directory, without `.referrers` (shown or not depending on the
/// registry's referrers support, which is not under test here).
fn listing(dir: &Path) -> Vec<String> {
    let mut n = common::names(dir);
    n.retain(|n| n != ".referrers");
    n
}

fn blob_path(digest: &str) -> String {
    format!("/blobs/{digest}")
}

// ---------------------------------------------------------------------------------------
// Integrity on the wire
// ---------------------------------------------------------------------------------------

/// A byte flipped in transit in a small blob (fetched whole and verified before any byte is
/// served) fails the read with EIO; the next read, with the fault gone, is right — no
/// remount needed.
#[test]
fn a_flipped_byte_in_a_small_blob_fails_the_read() {
    let reg = Registry::start();
    let proxy = FaultProxy::start(reg.addr());
    let small = random_bytes(300_000, 2);
    let pushed = reg.push_artifact("faults/flip-small", "v1", &[("small.bin", &small)]);
    proxy.add(Rule::get(&blob_path(&pushed.layers[0].0), Fault::FlipByte { at: 77 }).always());

    let m = Launch::new(&format!("{}/faults/flip-small:v1", proxy.addr()))
        .mount()
        .expect("mount");
    let p = m.join("small.bin");
    // The damage is at byte 77; a read far from it fails all the same.
    let e = pread(&p, 200_000, 10).expect_err("a partial read of a damaged small blob");
    assert_eq!(errno(&e), libc::EIO, "{e}");
    let e = read_all(&p).expect_err("a whole read of a damaged small blob");
    assert_eq!(errno(&e), libc::EIO, "{e}");
    proxy.clear();
    assert_eq!(read_all(&p).expect("the fault is gone"), small);
    assert!(
        m.stderr().contains("does not match"),
        "the mismatch is logged: {}",
        m.stderr()
    );
}

/// A byte flipped in transit in a large blob read lazily (1 MiB range requests, the blob's
/// sha256 computed as its blocks arrive): a whole-file read (`cat`, `cp`, `sha256sum`)
/// never ends successfully with a wrong byte. The read that completes the blob fails with
/// EIO; the next whole read, with the fault gone, is right — no remount needed.
#[test]
fn a_flipped_byte_in_a_large_blob_never_ends_a_successful_read() {
    let reg = Registry::start();
    let proxy = FaultProxy::start(reg.addr());
    let big = random_bytes(6 * MIB + 123, 1);
    let pushed = reg.push_artifact("faults/flip-big", "v1", &[("big.bin", &big)]);
    // Damage the second range request's body.
    proxy.add(
        Rule::get(
            &blob_path(&pushed.layers[0].0),
            Fault::FlipByte { at: 4321 },
        )
        .skip(1),
    );

    let m = Launch::new(&format!("{}/faults/flip-big:v1", proxy.addr()))
        .mount()
        .expect("mount");
    let first = read_all(&m.join("big.bin"));
    assert_eq!(proxy.applied(), [1], "the flip was injected");
    let ok = assert_eio_or_exact(
        &format!("big.bin, first read; daemon log:\n{}", m.stderr()),
        first,
        &big,
    );
    assert!(!ok, "the read that completed a damaged blob must fail");
    assert_reads_right(&m.join("big.bin"), &big);
}

/// With `--verify strict` not one wrong byte reaches a reader, not even in a partial read:
/// while every fetch of a blob is damaged, every read of it fails with EIO; once the fault
/// is gone, reads are right.
#[test]
fn strict_mode_serves_no_wrong_byte_even_to_partial_reads() {
    let reg = Registry::start();
    let proxy = FaultProxy::start(reg.addr());
    let big = random_bytes(6 * MIB + 5, 3);
    let other = random_bytes(5 * MIB, 4);
    let pushed = reg.push_artifact(
        "faults/strict",
        "v1",
        &[("big.bin", &big), ("other.bin", &other)],
    );
    let (big_d, other_d) = (&pushed.layers[0].0, &pushed.layers[1].0);
    // Damage near the end, so a reader of the first page would see it only if orasfs
    // served bytes before verifying the whole blob; and at the start of another blob.
    proxy.add(Rule::get(&blob_path(big_d), Fault::FlipByte { at: 6 * MIB as u64 }).always());
    proxy.add(Rule::get(&blob_path(other_d), Fault::FlipByte { at: 10 }).always());

    let m = Launch::new(&format!("{}/faults/strict:v1", proxy.addr()))
        .args(&["--verify", "strict"])
        .mount()
        .expect("mount");
    let reads = [
        ("big.bin", 0u64, 4096usize),
        ("big.bin", 3 * MIB as u64, 100),
        ("big.bin", 6 * MIB as u64, 5),
        ("other.bin", 0, 10),
        ("other.bin", MIB as u64 - 1, 2),
    ];
    for (name, off, len) in reads {
        match pread(&m.join(name), off, len) {
            Ok(got) => panic!(
                "{name}: a read at {off} succeeded ({} bytes) from a damaged fetch",
                got.len()
            ),
            Err(e) => assert_eq!(errno(&e), libc::EIO, "{name} at {off}: {e}"),
        }
    }
    for name in ["big.bin", "other.bin"] {
        let e = read_all(&m.join(name)).expect_err("damaged");
        assert_eq!(errno(&e), libc::EIO, "{name}: {e}");
    }
    assert!(
        proxy.applied().iter().all(|&n| n >= 2),
        "{:?}",
        proxy.applied()
    );
    // The faults are gone: every read is right now, partial or whole.
    proxy.clear();
    let p = m.join("big.bin");
    assert_eq!(
        pread(&p, 3 * MIB as u64, 100).unwrap(),
        &big[3 * MIB..3 * MIB + 100]
    );
    assert_reads_right(&p, &big);
    assert_reads_right(&m.join("other.bin"), &other);
}

/// Damaged bytes are not kept in the cache. A mount whose every fetch is damaged fails
/// every whole read; a remount over the same cache directory, straight to the registry,
/// finds the temp directory swept and reads every file right on the first try.
fn damaged_fetches_leave_nothing_in_the_cache(mode: &str) {
    let reg = Registry::start();
    let proxy = FaultProxy::start(reg.addr());
    let big = random_bytes(6 * MIB + 999, 5);
    let small = random_bytes(64 * 1024, 6);
    let pushed = reg.push_artifact(
        "faults/keep",
        "v1",
        &[("big.bin", &big), ("small.bin", &small)],
    );
    let at = if mode == "lazy" {
        2 * MIB as u64 + 17
    } else {
        17
    };
    for (d, _) in &pushed.layers {
        proxy.add(Rule::get(&blob_path(d), Fault::FlipByte { at }).always());
    }
    let cache = tempfile::tempdir().unwrap();
    {
        let m = Launch::new(&format!("{}/faults/keep:v1", proxy.addr()))
            .args(&["--verify", mode])
            .cache(cache.path())
            .mount()
            .expect("mount through the faulty proxy");
        for (name, want) in [("big.bin", &big), ("small.bin", &small)] {
            for _ in 0..2 {
                let r = read_all(&m.join(name));
                assert!(
                    !assert_eio_or_exact(&format!("{mode} {name}"), r, want),
                    "{mode} {name}: every fetch is damaged, so no whole read may succeed"
                );
            }
        }
    }
    let m = Launch::new(&format!("{}/faults/keep:v1", reg.addr()))
        .args(&["--verify", mode])
        .cache(cache.path())
        .mount()
        .expect("remount straight to the registry");
    assert!(
        fs::read_dir(cache.path().join("v2/tmp"))
            .unwrap()
            .next()
            .is_none(),
        "{mode}: temp files swept"
    );
    assert_eq!(read_all(&m.join("big.bin")).unwrap(), big, "{mode}");
    assert_eq!(read_all(&m.join("small.bin")).unwrap(), small, "{mode}");
}

#[test]
fn damaged_fetches_leave_nothing_in_the_cache_strict() {
    damaged_fetches_leave_nothing_in_the_cache("strict");
}

#[test]
fn damaged_fetches_leave_nothing_in_the_cache_lazy() {
    damaged_fetches_leave_nothing_in_the_cache("lazy");
}

// ---------------------------------------------------------------------------------------
// Transient faults
// ---------------------------------------------------------------------------------------

/// Connections reset or cut mid-body, 500s, 503s and 429s with Retry-After, and a server
/// that ignores Range: every read still succeeds with the right bytes.
#[test]
fn transient_faults_are_ridden_out() {
    let reg = Registry::start();
    let proxy = FaultProxy::start(reg.addr());
    let files: Vec<(String, Vec<u8>)> = (0..6)
        .map(|i| {
            let len = if i % 2 == 0 {
                5 * MIB + i * 1000
            } else {
                200_000
            };
            (format!("f{i}.bin"), random_bytes(len, 10 + i as u64))
        })
        .collect();
    let refs: Vec<(&str, &[u8])> = files
        .iter()
        .map(|(n, b)| (n.as_str(), b.as_slice()))
        .collect();
    let pushed = reg.push_artifact("faults/transient", "v1", &refs);
    let d: Vec<String> = pushed.layers.iter().map(|(d, _)| blob_path(d)).collect();
    proxy.add(Rule::get(&d[0], Fault::Reset { after: 300_000 }));
    proxy.add(
        Rule::get(
            &d[0],
            Fault::Status {
                code: 500,
                retry_after: None,
            },
        )
        .skip(2),
    );
    proxy.add(Rule::get(&d[1], Fault::Truncate { after: 1000 }));
    proxy.add(Rule::get(&d[1], Fault::Reset { after: 0 }));
    proxy.add(Rule::get(
        &d[2],
        Fault::Status {
            code: 429,
            retry_after: Some("1".into()),
        },
    ));
    proxy.add(Rule::get(&d[2], Fault::Truncate { after: 4096 }).skip(2));
    proxy.add(
        Rule::get(
            &d[3],
            Fault::Status {
                code: 503,
                retry_after: None,
            },
        )
        .times(2),
    );
    proxy.add(Rule::get(&d[4], Fault::IgnoreRange).times(3));
    proxy.add(Rule::get(
        &d[5],
        Fault::Status {
            code: 502,
            retry_after: None,
        },
    ));
    proxy.add(Rule::get(
        "/manifests/",
        Fault::Status {
            code: 503,
            retry_after: None,
        },
    ));

    let m = Launch::new(&format!("{}/faults/transient:v1", proxy.addr()))
        .mount()
        .expect("mount");
    for (name, want) in &files {
        let got = read_all(&m.join(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(got == *want, "{name}: wrong bytes");
    }
    let applied = proxy.applied();
    assert!(
        applied.iter().all(|&n| n > 0),
        "every scripted fault happened: {applied:?}"
    );
    let retry = proxy.requests_to(&d[2]);
    assert!(retry.len() >= 2 && retry[0].status == 429, "{retry:?}");
}

/// Protocol faults that cannot be ridden out fail the read with EIO and never give wrong
/// bytes: a Content-Range for other bytes, bodies shorter or longer than asked, and a
/// Content-Length that lies. Once the fault is gone the same mount reads right.
#[test]
fn protocol_faults_fail_cleanly_and_never_give_wrong_bytes() {
    let reg = Registry::start();
    let proxy = FaultProxy::start(reg.addr());
    let faults = [
        Fault::ShiftContentRange { by: 1 },
        Fault::ShiftContentRange { by: -1 },
        Fault::BodyLength { delta: -1 },
        Fault::BodyLength { delta: 1 },
        Fault::BodyLength { delta: 4096 },
        Fault::LyingLength { delta: 1 },
        Fault::LyingLength { delta: -1 },
    ];
    // A shifted Content-Range needs a range request: those blobs are large (read lazily,
    // in ranges); the others alternate ranged and whole (small) fetches.
    let shifts = |f: &Fault| matches!(f, Fault::ShiftContentRange { .. });
    let files: Vec<(String, Vec<u8>)> = faults
        .iter()
        .enumerate()
        .map(|(i, f)| {
            let len = if shifts(f) || i % 2 == 0 {
                4 * MIB + 1 + i
            } else {
                70_000 + i
            };
            (format!("p{i}.bin"), random_bytes(len, 40 + i as u64))
        })
        .collect();
    let refs: Vec<(&str, &[u8])> = files
        .iter()
        .map(|(n, b)| (n.as_str(), b.as_slice()))
        .collect();
    let pushed = reg.push_artifact("faults/protocol", "v1", &refs);
    for ((d, _), f) in pushed.layers.iter().zip(&faults) {
        // Every fetch of the blob, until the test clears the rules.
        proxy.add(Rule::get(&blob_path(d), f.clone()).always());
    }
    let m = Launch::new(&format!("{}/faults/protocol:v1", proxy.addr()))
        .args(&["--retries", "1"])
        .mount()
        .expect("mount");
    for (((name, want), f), (d, _)) in files.iter().zip(&faults).zip(&pushed.layers) {
        let p = m.join(name);
        let r = read_all(&p);
        let ok = if shifts(f) {
            // The body is the right one, only the header names other bytes: a client that
            // skips the Content-Range check would read right bytes. It must refuse them.
            match r {
                Ok(got) => panic!(
                    "{name} under {f:?}: a Content-Range for other bytes was accepted ({} bytes read)",
                    got.len()
                ),
                Err(e) => assert_eq!(errno(&e), libc::EIO, "{name} under {f:?}: {e}"),
            }
            false
        } else {
            assert_eio_or_exact(&format!("{name} under {f:?}"), r, want)
        };
        // A partial read must not give wrong bytes either. (A shifted range that starts
        // at 0 is clamped to 0 by the proxy, so the shifted blobs are read further on.)
        let at = if shifts(f) { 3 * MIB as u64 } else { 1000 };
        match pread(&p, at, 5000) {
            Ok(_) if shifts(f) => {
                panic!(
                    "{name} under {f:?}: a partial read accepted a Content-Range for other bytes"
                )
            }
            Ok(got) => assert!(
                got == want[at as usize..at as usize + got.len()],
                "{name} under {f:?}: wrong bytes in a partial read"
            ),
            Err(e) => assert_eq!(errno(&e), libc::EIO, "{name} under {f:?}: {e}"),
        }
        // The fault reached the client: the blob was fetched through it, in ranges where
        // the fault is about ranges.
        let hit = proxy
            .requests_to(&blob_path(d))
            .into_iter()
            .any(|r| r.fault.is_some() && (!shifts(f) || (r.status == 206 && r.range.is_some())));
        assert!(hit, "{name}: the fault {f:?} was never applied");
        eprintln!(
            "{name} under {f:?}: whole read {}",
            if ok { "ok" } else { "EIO" }
        );
    }
    proxy.clear();
    for (name, want) in &files {
        assert_reads_right(&m.join(name), want);
    }
}

/// `--retries N` is the whole budget of one request: with every answer for a blob failing
/// (503s and bodies cut mid-way taking turns), each fetch the daemon makes costs exactly
/// N + 1 GETs, and the read fails with EIO; once the faults are gone the same mount reads.
/// (With a budget per step, each resumption after a cut had N retries of its own for
/// 503s: 2(N + 1) GETs here.)
#[test]
fn a_request_is_tried_retries_plus_one_times_whatever_fails() {
    let reg = Registry::start();
    let proxy = FaultProxy::start(reg.addr());
    let data = random_bytes(200_000, 70);
    let pushed = reg.push_artifact("faults/budget", "v1", &[("a.bin", &data)]);
    let retries = 2;
    let m = Launch::new(&format!("{}/faults/budget:v1", proxy.addr()))
        .args(&["--retries", &retries.to_string()])
        .mount()
        .expect("mount");
    let blob_requests = || {
        let stats = fs::read_to_string(m.join(".orasfs/stats.json")).expect("stats");
        let v: serde_json::Value = serde_json::from_str(&stats).expect("stats JSON");
        v["registry"]["blob_requests"]
            .as_u64()
            .expect("blob_requests")
    };
    let path = blob_path(&pushed.layers[0].0);
    for i in 0..40 {
        proxy.add(Rule::get(
            &path,
            match i % 2 {
                0 => Fault::Status {
                    code: 503,
                    retry_after: Some("0".into()),
                },
                _ => Fault::Truncate { after: 1000 },
            },
        ));
    }
    proxy.add(Rule::get(&path, Fault::Truncate { after: 1000 }).always());
    let before = blob_requests();
    let e = read_all(&m.join("a.bin")).expect_err("every answer fails");
    assert_eq!(errno(&e), libc::EIO, "{e}");
    let fetches = blob_requests() - before;
    let gets = proxy.requests_to(&path).len() as u64;
    eprintln!("{fetches} fetches, {gets} GETs with --retries {retries}");
    assert!(fetches > 0);
    assert_eq!(gets, fetches * (retries + 1), "GETs per fetch");
    proxy.clear();
    assert_reads_right(&m.join("a.bin"), &data);
}

/// A manifest answer cut off mid-body (connection reset) is retried like any other
/// transient failure: the mount comes up and lists the artifact.
#[test]
fn a_manifest_body_cut_mid_way_is_retried() {
    let reg = Registry::start();
    let proxy = FaultProxy::start(reg.addr());
    reg.push_artifact("faults/manifest", "v1", &[("a.txt", b"alpha")]);
    proxy.add(Rule::get("/manifests/", Fault::Reset { after: 10 }));
    proxy.add(Rule::get("/manifests/", Fault::Truncate { after: 20 }));
    let m = Launch::new(&format!("{}/faults/manifest:v1", proxy.addr()))
        .mount()
        .expect("a cut manifest body is retried");
    assert_eq!(read_all(&m.join("a.txt")).unwrap(), b"alpha");
    assert_eq!(proxy.applied(), [1, 1]);
}

// ---------------------------------------------------------------------------------------
// Stalls and outages
// ---------------------------------------------------------------------------------------

/// Run `f` on its own thread; `None` if it does not finish within `limit` (the thread is
/// left to finish on its own once the mount is torn down).
fn bounded<T: Send + 'static>(
    limit: Duration,
    f: impl FnOnce() -> T + Send + 'static,
) -> Option<T> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(limit).ok()
}

/// A response body that stalls fails that read once `--read-timeout` has passed on every
/// attempt, while listings and reads of other files keep answering from other threads.
#[test]
fn a_stalled_body_fails_its_read_while_the_rest_of_the_mount_answers() {
    let reg = Registry::start();
    let proxy = FaultProxy::start(reg.addr());
    let stuck = random_bytes(5 * MIB, 60);
    let other_big = random_bytes(5 * MIB + 1, 61);
    let other_small = random_bytes(100_000, 62);
    let pushed = reg.push_artifact(
        "faults/stall",
        "v1",
        &[
            ("stuck.bin", &stuck),
            ("big.bin", &other_big),
            ("small.bin", &other_small),
        ],
    );
    proxy.add(
        Rule::get(
            &blob_path(&pushed.layers[0].0),
            Fault::Stall {
                after: 1000,
                stall: Duration::from_secs(60),
            },
        )
        .always(),
    );
    let m = Launch::new(&format!("{}/faults/stall:v1", proxy.addr()))
        .args(&["--read-timeout", "2s", "--retries", "1"])
        .mount()
        .expect("mount");

    let stuck_path = m.join("stuck.bin");
    let done = Arc::new(AtomicBool::new(false));
    let done2 = done.clone();
    let reader = std::thread::spawn(move || {
        let t = Instant::now();
        let r = read_all(&stuck_path);
        done2.store(true, Ordering::SeqCst);
        (r.map(|b| b.len()), t.elapsed())
    });
    // Wait until the stalled request is under way, then use the mount from other threads.
    wait_for(Duration::from_secs(10), || {
        (proxy.arrivals_to(&blob_path(&pushed.layers[0].0)) > 0).then_some(())
    })
    .expect("the stalled read reached the proxy");
    let mut answered_during_stall = 0;
    for round in 0..3 {
        let root = m.path().to_path_buf();
        let listing = bounded(Duration::from_secs(5), move || listing(&root))
            .unwrap_or_else(|| panic!("ls hung during the stall (round {round})"));
        assert_eq!(
            listing,
            [
                ".config.json",
                ".manifest.json",
                "big.bin",
                "small.bin",
                "stuck.bin"
            ]
        );
        let (p, want) = (m.join("small.bin"), other_small.clone());
        let ok = bounded(Duration::from_secs(10), move || {
            read_all(&p).map(|b| b == want)
        })
        .unwrap_or_else(|| panic!("small.bin hung during the stall (round {round})"));
        assert!(ok.expect("small.bin read"), "small.bin bytes");
        if !done.load(Ordering::SeqCst) {
            answered_during_stall += 1;
        }
    }
    let (p, want) = (m.join("big.bin"), other_big.clone());
    let ok = bounded(Duration::from_secs(20), move || {
        read_all(&p).map(|b| b == want)
    })
    .expect("big.bin hung during the stall");
    assert!(ok.expect("big.bin read"), "big.bin bytes");
    assert!(
        answered_during_stall > 0,
        "the other reads overlapped the stall"
    );

    // 2 attempts x 2 s, plus backoff and the kernel's retry of a failed read-ahead.
    let (r, took) = reader.join().unwrap();
    let e = r.expect_err("a read of a stalled body must fail");
    assert_eq!(errno(&e), libc::EIO, "{e}");
    assert!(
        took < Duration::from_secs(30),
        "the stalled read failed only after {took:?}"
    );
    eprintln!("stalled read failed with EIO after {took:?}");
}

/// The registry is down (connections refused) for 2 s: reads retry and succeed.
fn outage_is_ridden_out(extra: &[&str]) {
    let reg = Registry::start();
    let proxy = FaultProxy::start(reg.addr());
    let files: Vec<(String, Vec<u8>)> = vec![
        ("small.bin".into(), random_bytes(200_000, 70)),
        ("big.bin".into(), random_bytes(5 * MIB, 71)),
    ];
    let refs: Vec<(&str, &[u8])> = files
        .iter()
        .map(|(n, b)| (n.as_str(), b.as_slice()))
        .collect();
    reg.push_artifact("faults/down", "v1", &refs);
    let m = Launch::new(&format!("{}/faults/down:v1", proxy.addr()))
        .args(extra)
        .mount()
        .expect("mount");
    proxy.go_down(Duration::from_secs(2));
    for (name, want) in &files {
        let got = read_all(&m.join(name))
            .unwrap_or_else(|e| panic!("{name} after a 2 s outage: {e}\n{}", m.stderr()));
        assert!(got == *want, "{name}: bytes");
    }
    let refused = m.stderr().matches("retrying").count();
    assert!(
        refused > 0,
        "the outage was met and retried: {}",
        m.stderr()
    );
}

#[test]
fn a_two_second_outage_is_ridden_out_with_default_retries() {
    outage_is_ridden_out(&[]);
}

/// The same with a retry budget comfortably above 2 s (`--retries 6`: 6.3–12.6 s).
#[test]
fn a_two_second_outage_is_ridden_out_with_six_retries() {
    outage_is_ridden_out(&["--retries", "6"]);
}

/// The registry is down for longer than the retry budget. The budget is kept small with
/// `--retries 2` (0.3–0.6 s of backoff) so the test need not wait out the default budget.
/// Reads of uncached files fail with EIO; the daemon stays up; cached files still read;
/// once the registry is back, the same mount reads everything, without a remount.
#[test]
fn an_outage_longer_than_the_retry_budget_fails_reads_then_recovers() {
    let reg = Registry::start();
    let proxy = FaultProxy::start(reg.addr());
    let cached = random_bytes(150_000, 80);
    let cold_small = random_bytes(150_000, 81);
    let cold_big = random_bytes(5 * MIB + 3, 82);
    reg.push_artifact(
        "faults/outage",
        "v1",
        &[
            ("cached.bin", &cached),
            ("cold.bin", &cold_small),
            ("cold-big.bin", &cold_big),
        ],
    );
    let mut m = Launch::new(&format!("{}/faults/outage:v1", proxy.addr()))
        .args(&["--retries", "2", "--connect-timeout", "2s"])
        .mount()
        .expect("mount");
    assert_eq!(read_all(&m.join("cached.bin")).unwrap(), cached);

    proxy.go_down(Duration::from_secs(5));
    for name in ["cold.bin", "cold-big.bin"] {
        let e = read_all(&m.join(name)).expect_err("the registry is down");
        assert_eq!(errno(&e), libc::EIO, "{name}: {e}");
    }
    assert!(
        proxy.is_down(),
        "the reads failed within the outage, not after it"
    );
    assert!(m.alive(), "the daemon is still running");
    assert_eq!(
        common::names(m.path()),
        [
            ".config.json",
            ".manifest.json",
            "cached.bin",
            "cold-big.bin",
            "cold.bin"
        ]
    );
    assert_eq!(
        read_all(&m.join("cached.bin")).unwrap(),
        cached,
        "cached file during the outage"
    );

    wait_for(Duration::from_secs(10), || (!proxy.is_down()).then_some(())).expect("back up");
    assert_eq!(
        read_all(&m.join("cold.bin")).unwrap(),
        cold_small,
        "after the outage"
    );
    assert_eq!(
        read_all(&m.join("cold-big.bin")).unwrap(),
        cold_big,
        "after the outage"
    );
    assert!(m.alive());
}

// ---------------------------------------------------------------------------------------
// Crashes and a damaged cache
// ---------------------------------------------------------------------------------------

/// Read a file in 256 KiB pieces, checking each piece as it arrives; stops at the first
/// error (the daemon may be killed under it). Returns the bytes read and checked.
fn read_checked(p: &Path, want: &[u8]) -> (u64, Option<std::io::Error>) {
    use std::io::Read;
    let mut f = match fs::File::open(p) {
        Ok(f) => f,
        Err(e) => return (0, Some(e)),
    };
    let mut buf = vec![0u8; 256 * 1024];
    let mut at = 0usize;
    loop {
        match f.read(&mut buf) {
            Ok(0) => {
                assert_eq!(at, want.len(), "{}: short file", p.display());
                return (at as u64, None);
            }
            Ok(n) => {
                assert!(
                    at + n <= want.len() && buf[..n] == want[at..at + n],
                    "{}: wrong bytes at {at}..{}",
                    p.display(),
                    at + n
                );
                at += n;
            }
            Err(e) => return (at as u64, Some(e)),
        }
    }
}

/// `kill -9` of the daemon while 16 readers read cold files in parallel, five times over
/// the same cache directory. Each kill lands while a blob body is stalled mid-way by the
/// proxy (more answers go through each round), and every round must cut at least one
/// read. Every remount finds the temp directory swept and serves only right bytes, and
/// blocks that made it to disk intact are reused: across the run the daemons receive
/// under twice the bytes there are, and the final mount fetches well under all of them.
/// (bench/soak.sh --kill runs more rounds.)
#[test]
fn kill_9_during_parallel_cold_reads_serves_only_right_bytes_after_remount() {
    let reg = Registry::start();
    let files: Vec<(String, Vec<u8>)> = (0..16)
        .map(|i| {
            let len = if i % 2 == 0 {
                4 * MIB + 4096 * i
            } else {
                MIB + 17 * i
            };
            (format!("f{i:02}.bin"), random_bytes(len, 100 + i as u64))
        })
        .collect();
    let refs: Vec<(&str, &[u8])> = files
        .iter()
        .map(|(n, b)| (n.as_str(), b.as_slice()))
        .collect();
    reg.push_artifact("faults/kill", "v1", &refs);
    let total: u64 = files.iter().map(|(_, b)| b.len() as u64).sum();
    let files = Arc::new(files);
    let cache = tempfile::tempdir().unwrap();
    // Through a proxy that stalls blob bodies mid-way, so each kill lands mid-read, not
    // when a sleep says (the readers may be done by then).
    let proxy = FaultProxy::start(reg.addr());
    let source = format!("{}/faults/kill:v1", proxy.addr());
    let rounds = 5;
    for round in 0..rounds {
        proxy.clear();
        // The first few blob answers of the round go through; every later one sends
        // 100 000 bytes and stalls.
        proxy.add(
            Rule::get(
                "/blobs/sha256:",
                Fault::Stall {
                    after: 100_000,
                    stall: Duration::from_secs(20),
                },
            )
            .skip(3 * (round + 1))
            .always(),
        );
        let mut m = Launch::new(&source)
            .cache(cache.path())
            .mount()
            .expect("mount");
        let tmp: Vec<_> = fs::read_dir(cache.path().join("v2/tmp"))
            .unwrap()
            .flatten()
            .collect();
        assert!(tmp.is_empty(), "round {round}: temp files left: {tmp:?}");
        let readers: Vec<_> = (0..files.len())
            .map(|i| {
                let files = files.clone();
                let p = m.join(&files[i].0);
                std::thread::spawn(move || read_checked(&p, &files[i].1))
            })
            .collect();
        // Kill the daemon once a body is stalled under a reader.
        wait_for(Duration::from_secs(30), || {
            (proxy.applied()[0] > 0).then_some(())
        })
        .unwrap_or_else(|| panic!("round {round}: no blob body was stalled"));
        std::thread::sleep(Duration::from_millis(50)); // the stalled bytes reach the daemon
        m.kill9();
        let (mut read, mut cut) = (0, 0);
        for r in readers {
            let (n, e) = r.join().expect("a reader saw wrong bytes");
            read += n;
            cut += usize::from(e.is_some());
        }
        eprintln!("round {round}: readers got {read} right bytes; {cut} of 16 cut by kill -9");
        assert!(cut > 0, "round {round}: the kill interrupted no read");
    }
    proxy.clear();
    let sent_before = proxy.bytes_sent();
    let m = Launch::new(&source)
        .cache(cache.path())
        .mount()
        .expect("final mount");
    assert!(fs::read_dir(cache.path().join("v2/tmp"))
        .unwrap()
        .next()
        .is_none());
    for (name, want) in files.iter() {
        let (n, e) = read_checked(&m.join(name), want);
        assert!(e.is_none(), "{name}: {e:?}");
        assert_eq!(n, want.len() as u64);
    }
    drop(m);
    let last = proxy.bytes_sent() - sent_before;
    let served = proxy.bytes_sent();
    eprintln!(
        "the daemons received {served} body bytes for {total} bytes of blobs over {rounds} \
         kills ({last} in the final mount)"
    );
    assert!(
        served < 2 * total,
        "served {served} for {total}: intact blocks were not reused"
    );
    assert!(
        total > last + 4 * MIB as u64,
        "the final mount fetched {last} of {total}: blocks cached before the kills were not reused"
    );
}

/// Mount a tmpfs of `size` at a fresh directory (root only); unmounted on drop.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(size: &str) -> Option<Tmpfs> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return None;
        }
        let dir = tempfile::tempdir().ok()?;
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .status()
            .is_ok_and(|s| s.success());
        ok.then_some(Tmpfs { dir })
    }
    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

/// The cache's filesystem is full: reads of `files` still succeed, served uncached, and
/// the log says so. The cache lives on a 2 MiB tmpfs (skipped, with a message, when not
/// root); each file is read under `--cache-min-free 0` (writes run into ENOSPC rather than
/// stop short of it: logged as a warning) and the default floor of 5 % (the cache declines
/// to store: logged at info level, hence `-v`), and if `strict_too` with `--verify strict`.
fn full_cache_disk_serves_reads_uncached(files: &[(&str, Vec<u8>)], strict_too: bool) {
    let small_fs = Tmpfs::mount("2m");
    let me = std::thread::current();
    if !common::needs(
        small_fs.is_some(),
        &format!("faults::{}", me.name().unwrap_or("a_full_cache_disk_*")),
        "mounting a 2 MiB tmpfs for a full cache disk needs root",
    ) {
        return;
    }
    let Some(small_fs) = small_fs else { return };
    let reg = Registry::start();
    let refs: Vec<(&str, &[u8])> = files.iter().map(|(n, b)| (*n, b.as_slice())).collect();
    reg.push_artifact("faults/full", "v1", &refs);
    // Fill the disk but for a few KiB, so no blob fits.
    let _ = fs::write(
        small_fs.path().join("filler"),
        vec![0u8; 2 * MIB - 16 * 1024],
    );
    // The second is the default floor, named: the harness sets none unless asked.
    let mut variants = vec![
        &["--cache-min-free", "0"][..],
        &["--cache-min-free", "5"][..],
    ];
    if strict_too {
        variants.push(&["--verify", "strict"][..]);
    }
    for extra in variants {
        let cache = small_fs.path().join(format!("c{}", extra.len()));
        let m = Launch::new(&format!("{}/faults/full:v1", reg.addr()))
            .cache(&cache)
            .args(extra)
            .args(&["-v"])
            .mount()
            .expect("mount");
        for _ in 0..2 {
            for (name, want) in files {
                let got = read_all(&m.join(name)).unwrap_or_else(|e| {
                    panic!("{name} with {extra:?} on a full disk: {e}\n{}", m.stderr())
                });
                assert!(got == *want, "{name}: bytes");
            }
        }
        let log = m.stderr().to_lowercase();
        assert!(
            log.contains("uncached") || log.contains("no space") || log.contains("full"),
            "{extra:?}: the log says the cache is full: {log}"
        );
        drop(m);
        let _ = fs::remove_dir_all(&cache);
    }
}

/// Large blobs read lazily in ranges: blocks are served from memory when they cannot be
/// stored. (With `--verify strict` they are fetched whole: see the next test.)
#[test]
fn a_full_cache_disk_still_serves_ranged_reads_uncached() {
    full_cache_disk_serves_reads_uncached(
        &[
            ("big.bin", random_bytes(6 * MIB + 1, 92)),
            ("big2.bin", random_bytes(5 * MIB, 94)),
        ],
        false,
    );
}

/// Blobs fetched whole and verified before their first byte is served: small ones, and any
/// under `--verify strict`.
#[test]
fn a_full_cache_disk_still_serves_whole_blob_reads_uncached() {
    full_cache_disk_serves_reads_uncached(
        &[
            ("a.bin", random_bytes(1_500_000, 90)),
            ("whole.bin", random_bytes(3 * MIB, 91)),
            ("tiny.bin", random_bytes(1000, 93)),
        ],
        true,
    );
}

/// Flip one byte of a file, in place.
fn flip(p: &Path, at: u64) {
    use std::os::unix::fs::FileExt;
    let f = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(p)
        .unwrap();
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, at).unwrap();
    b[0] ^= 0x40;
    f.write_all_at(&b, at).unwrap();
}

/// The cache on disk is tampered with between mounts — a flipped byte in a verified blob,
/// its sidecar and a partial blob, a truncated blob and partial blob, a deleted blob and sidecar, garbage
/// files — and every file still reads right: damage is detected and refetched, garbage
/// ignored.
#[test]
fn a_tampered_cache_is_detected_and_refetched() {
    tampered_cache_is_detected_and_refetched(WITH_PASSTHROUGH);
}

/// The same with `--no-passthrough`: every read of a verified file goes through orasfs and
/// its CRC check.
#[test]
fn a_tampered_cache_is_detected_and_refetched_without_passthrough() {
    tampered_cache_is_detected_and_refetched(&["--no-passthrough"]);
}

fn tampered_cache_is_detected_and_refetched(extra: &[&str]) {
    let reg = Registry::start();
    let files: Vec<(String, Vec<u8>)> = (0..6)
        .map(|i| {
            let len = if i < 4 { 5 * MIB + i } else { 300_000 + i };
            (format!("t{i}.bin"), random_bytes(len, 120 + i as u64))
        })
        .collect();
    let refs: Vec<(&str, &[u8])> = files
        .iter()
        .map(|(n, b)| (n.as_str(), b.as_slice()))
        .collect();
    let pushed = reg.push_artifact("faults/tamper", "v1", &refs);
    let hex: Vec<String> = pushed
        .layers
        .iter()
        .map(|(d, _)| hex_of(d).to_string())
        .collect();
    // Large enough that a 2 MiB read and the read-ahead it starts leave most of it unread.
    let partial = random_bytes(24 * MIB, 130);
    let pushed_partial = reg.push_artifact("faults/tamper", "p", &[("partial.bin", &partial)]);
    let partial_hex = hex_of(&pushed_partial.layers[0].0).to_string();
    let cache = tempfile::tempdir().unwrap();
    let v2 = cache.path().join("v2");
    let blobs = v2.join("blobs/sha256");
    {
        let m = Launch::new(&format!("{}/faults/tamper:v1", reg.addr()))
            .cache(cache.path())
            .mount()
            .expect("mount");
        for (name, want) in &files {
            assert_eq!(read_all(&m.join(name)).unwrap(), *want, "{name}");
        }
        wait_for(Duration::from_secs(20), || {
            hex.iter()
                .all(|h| blobs.join(h).exists() && blobs.join(format!("{h}.crc")).exists())
                .then_some(())
        })
        .expect("every blob promoted to a verified file");
    }
    {
        let m = Launch::new(&format!("{}/faults/tamper:p", reg.addr()))
            .cache(cache.path())
            .mount()
            .expect("mount");
        assert_eq!(
            pread(&m.join("partial.bin"), 0, 2 * MIB).unwrap(),
            &partial[..2 * MIB]
        );
    }
    let partials = v2.join("partial/sha256");
    let part = partials.join(&partial_hex);
    assert!(
        part.exists() && partials.join(format!("{partial_hex}.map")).exists(),
        "partial blob and its block map on disk"
    );

    flip(&blobs.join(&hex[0]), 3 * MIB as u64 + 5);
    let f = fs::OpenOptions::new()
        .write(true)
        .open(blobs.join(&hex[1]))
        .unwrap();
    f.set_len(MIB as u64).unwrap();
    drop(f);
    fs::remove_file(blobs.join(format!("{}.crc", hex[2]))).unwrap();
    flip(&blobs.join(format!("{}.crc", hex[3])), 20);
    fs::remove_file(blobs.join(&hex[4])).unwrap();
    flip(&blobs.join(&hex[5]), 0);
    // The partial blob: a flipped byte in its first block, and cut after 1000 bytes.
    flip(&part, 100);
    let f = fs::OpenOptions::new().write(true).open(&part).unwrap();
    f.set_len(1000).unwrap();
    drop(f);
    // Garbage: stray files, a map without data, a blob without a sidecar, a directory
    // with a name that is no digest.
    fs::write(blobs.join("garbage"), b"garbage").unwrap();
    fs::write(blobs.join("a".repeat(64)), random_bytes(4096, 1)).unwrap();
    fs::write(partials.join(format!("{}.map", "b".repeat(64))), b"garbage").unwrap();
    fs::create_dir_all(partials.join("not-a-digest")).unwrap();
    fs::write(v2.join("tmp/leftover.crc"), b"x").unwrap();
    fs::write(cache.path().join("stray"), b"stray").unwrap();
    reg.settle();
    let before: Vec<u64> = hex.iter().map(|h| reg.bytes_served_for(h)).collect();
    {
        let m = Launch::new(&format!("{}/faults/tamper:v1", reg.addr()))
            .cache(cache.path())
            .args(extra)
            .mount()
            .expect("remount over the tampered cache");
        for (name, want) in &files {
            let got =
                read_all(&m.join(name)).unwrap_or_else(|e| panic!("{name}: {e}\n{}", m.stderr()));
            assert!(got == *want, "{name}: wrong bytes from a tampered cache");
        }
        assert!(
            m.stderr().contains("damaged") || m.stderr().contains("checksum"),
            "{}",
            m.stderr()
        );
        assert_passthrough_granted(&m, extra);
    }
    {
        let m = Launch::new(&format!("{}/faults/tamper:p", reg.addr()))
            .cache(cache.path())
            .args(extra)
            .mount()
            .expect("remount");
        let got = read_all(&m.join("partial.bin"))
            .unwrap_or_else(|e| panic!("partial.bin: {e}\n{}", m.stderr()));
        assert!(
            got == partial,
            "partial.bin: wrong bytes from a tampered cache"
        );
        assert_passthrough_granted(&m, extra);
    }
    reg.settle();
    let after: Vec<u64> = hex.iter().map(|h| reg.bytes_served_for(h)).collect();
    for i in [0, 1, 2, 3, 4] {
        assert!(
            after[i] > before[i],
            "t{i}.bin: damaged copy refetched ({} -> {})",
            before[i],
            after[i]
        );
    }
}

/// Foreign objects where the cache expects its own files — a directory where a verified
/// or partial blob belongs, a symlink out of the cache in a blob's or block map's place —
/// are neither trusted nor followed: the files read right and the
/// symlink's target is untouched.
#[test]
fn foreign_objects_in_the_cache_are_neither_trusted_nor_followed() {
    let reg = Registry::start();
    let dir_blob = random_bytes(200_000, 131);
    let sym_blob = random_bytes(200_000, 132);
    let chunky = random_bytes(5 * MIB, 133);
    let pushed = reg.push_artifact(
        "faults/foreign",
        "v1",
        &[
            ("dir.bin", &dir_blob),
            ("sym.bin", &sym_blob),
            ("chunky.bin", &chunky),
        ],
    );
    let cache = tempfile::tempdir().unwrap();
    let v2 = cache.path().join("v2");
    let blobs = v2.join("blobs/sha256");
    let partials = v2.join("partial/sha256");
    fs::create_dir_all(&blobs).unwrap();
    fs::create_dir_all(&partials).unwrap();
    fs::create_dir_all(v2.join("tmp")).unwrap();
    let outside = tempfile::tempdir().unwrap();
    let victim = outside.path().join("victim");
    fs::write(&victim, b"do not touch").unwrap();
    fs::create_dir(blobs.join(hex_of(&pushed.layers[0].0))).unwrap();
    fs::write(blobs.join(hex_of(&pushed.layers[0].0)).join("inside"), b"x").unwrap();
    std::os::unix::fs::symlink(&victim, blobs.join(hex_of(&pushed.layers[1].0))).unwrap();
    std::os::unix::fs::symlink(
        &victim,
        blobs.join(format!("{}.crc", hex_of(&pushed.layers[1].0))),
    )
    .unwrap();
    // A directory where a partial blob belongs, and its block map a link out of the cache.
    let chunky_hex = hex_of(&pushed.layers[2].0);
    fs::create_dir(partials.join(chunky_hex)).unwrap();
    std::os::unix::fs::symlink(&victim, partials.join(format!("{chunky_hex}.map"))).unwrap();
    std::os::unix::fs::symlink(outside.path(), v2.join("tmp/escape")).unwrap();

    let m = Launch::new(&format!("{}/faults/foreign:v1", reg.addr()))
        .cache(cache.path())
        .mount()
        .expect("mount over a cache with foreign objects");
    for (name, want) in [
        ("dir.bin", &dir_blob),
        ("sym.bin", &sym_blob),
        ("chunky.bin", &chunky),
    ] {
        let got = read_all(&m.join(name)).unwrap_or_else(|e| panic!("{name}: {e}\n{}", m.stderr()));
        assert!(got == *want, "{name}: wrong bytes");
    }
    drop(m);
    assert_eq!(
        fs::read(&victim).unwrap(),
        b"do not touch",
        "the symlink's target is untouched"
    );
    assert_eq!(
        common::names(outside.path()),
        ["victim"],
        "nothing written outside the cache"
    );
}

/// A verified cache file damaged while the mount is running (bit rot, another process
/// writing into the cache): a later open and read never returns the damaged byte — it is
/// either detected (and the blob fetched again) or the right bytes are served from memory.
fn cache_damaged_while_mounted_is_never_served(extra: &[&str]) {
    use std::os::unix::fs::FileExt;
    let reg = Registry::start();
    let small = random_bytes(300_000, 140);
    let big = random_bytes(5 * MIB + 11, 141);
    let pushed = reg.push_artifact(
        "faults/rot",
        "v1",
        &[("small.bin", &small), ("big.bin", &big)],
    );
    let m = Launch::new(&format!("{}/faults/rot:v1", reg.addr()))
        .args(extra)
        .mount()
        .expect("mount");
    let blobs = m.cache_dir().join("v2/blobs/sha256");
    for (name, want) in [("small.bin", &small), ("big.bin", &big)] {
        assert_reads_right(&m.join(name), want);
    }
    wait_for(Duration::from_secs(20), || {
        pushed
            .layers
            .iter()
            .all(|(d, _)| blobs.join(hex_of(d)).exists())
            .then_some(())
    })
    .expect("both blobs promoted to verified files");
    // Read once more, so whatever the mount does on open has happened, then damage them.
    for (name, want) in [("small.bin", &small), ("big.bin", &big)] {
        assert_reads_right(&m.join(name), want);
    }
    for (d, _) in &pushed.layers {
        flip(&blobs.join(hex_of(d)), 4096 + 7);
    }
    for (name, want) in [("small.bin", &small), ("big.bin", &big)] {
        let p = m.join(name);
        // Drop the kernel's cached pages of the file, so the read reaches the storage.
        if let Ok(f) = fs::File::open(&p) {
            use std::os::fd::AsRawFd;
            // SAFETY: a valid descriptor; advice only.
            unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
        }
        let f = fs::File::open(&p).expect("open");
        let mut buf = vec![0u8; 8192];
        match f.read_at(&mut buf, 0) {
            Ok(n) => assert!(
                buf[..n] == want[..n],
                "{name}: a byte damaged in the cache was served ({extra:?})"
            ),
            Err(e) => assert_eq!(errno(&e), libc::EIO, "{name}: {e}"),
        }
        let r = read_all(&p);
        assert_eio_or_exact(&format!("{name} ({extra:?})"), r, want);
    }
    assert_passthrough_granted(&m, extra);
}

#[test]
fn a_cache_file_damaged_while_mounted_is_never_served_with_passthrough() {
    cache_damaged_while_mounted_is_never_served(WITH_PASSTHROUGH);
}

#[test]
fn a_cache_file_damaged_while_mounted_is_never_served_without_passthrough() {
    cache_damaged_while_mounted_is_never_served(&["--no-passthrough"]);
}

/// A registry whose catalog keeps failing (HTTP 500 on every `_catalog` request): a mount of
/// the whole registry may fail to list its root, but looking a repository up by name still
/// works, as it does for a registry without a catalog.
#[test]
fn a_failing_catalog_does_not_hide_repositories_looked_up_by_name() {
    let reg = Registry::start();
    let proxy = FaultProxy::start(reg.addr());
    reg.push_artifact("faults/catalog", "v1", &[("a.txt", b"alpha")]);
    proxy.add(
        Rule::get(
            "/_catalog",
            Fault::Status {
                code: 500,
                retry_after: None,
            },
        )
        .always(),
    );
    let mut m = Launch::new(proxy.addr())
        .args(&["--retries", "1"])
        .mount()
        .expect("mount the registry root");
    if let Err(e) = fs::read_dir(m.path()).and_then(|d| d.collect::<Result<Vec<_>, _>>()) {
        assert_eq!(errno(&e), libc::EIO, "{e}");
    }
    let got = read_all(&m.join("faults/catalog/v1/a.txt"));
    assert!(
        matches!(&got, Ok(b) if b == b"alpha"),
        "a lookup by name with a failing catalog: {got:?}\n{}",
        m.stderr()
    );
    assert!(m.alive());
}

/// The same damage, but read through a handle opened before it happened (a long-running
/// reader, such as a tile server holding its files open): the damaged byte is never served.
fn cache_damaged_under_an_open_handle_is_never_served(extra: &[&str]) {
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::FileExt;
    let reg = Registry::start();
    let small = random_bytes(300_000, 150);
    let pushed = reg.push_artifact("faults/rot-open", "v1", &[("small.bin", &small)]);
    let m = Launch::new(&format!("{}/faults/rot-open:v1", reg.addr()))
        .args(extra)
        .mount()
        .expect("mount");
    let blob = m
        .cache_dir()
        .join("v2/blobs/sha256")
        .join(hex_of(&pushed.layers[0].0));
    let p = m.join("small.bin");
    assert_reads_right(&p, &small);
    wait_for(Duration::from_secs(20), || blob.exists().then_some(())).expect("promoted");
    // A handle opened once the blob is a verified file, kept open across the damage.
    let f = fs::File::open(&p).expect("open");
    let mut buf = vec![0u8; small.len()];
    f.read_exact_at(&mut buf, 0)
        .expect("read before the damage");
    assert!(buf == small);
    flip(&blob, 4096 + 7);
    // SAFETY: a valid descriptor; advice only.
    unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    if let Ok(b) = fs::File::open(&blob) {
        // SAFETY: as above, on the cache file itself.
        unsafe { libc::posix_fadvise(b.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    }
    match f.read_at(&mut buf[..8192], 0) {
        Ok(n) => assert!(
            buf[..n] == small[..n],
            "a byte damaged in the cache was served through an open handle ({extra:?})"
        ),
        Err(e) => assert_eq!(errno(&e), libc::EIO, "{e}"),
    }
    assert_passthrough_granted(&m, extra);
}

#[test]
#[ignore = "bug: with FUSE passthrough, a verified cache file damaged while a handle is open is served through that handle (the kernel reads the file directly; nothing re-checks it)"]
fn a_cache_file_damaged_under_an_open_handle_is_never_served_with_passthrough() {
    cache_damaged_under_an_open_handle_is_never_served(WITH_PASSTHROUGH);
}

#[test]
fn a_cache_file_damaged_under_an_open_handle_is_never_served_without_passthrough() {
    cache_damaged_under_an_open_handle_is_never_served(&["--no-passthrough"]);
}
