//! A short soak: 8 readers for about 15 s against one mount whose `--cache-size` is far
//! smaller than the blobs, mixing whole sequential reads and random preads. Every byte is
//! checked; the test asserts no errors and no wrong bytes, and prints the longest single
//! read, the throughput and the daemon's peak RSS. bench/soak.sh is the long version
//! (32 readers, 10 minutes, a release build).

mod common;

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;

const MIB: usize = 1024 * 1024;

/// splitmix64, for reproducible choices per reader.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

#[derive(Default)]
struct Tally {
    errors: Mutex<Vec<String>>,
    bytes: AtomicU64,
    reads: AtomicU64,
    whole_files: AtomicU64,
    longest_us: AtomicU64,
}

impl Tally {
    fn timed<T>(&self, f: impl FnOnce() -> T) -> T {
        let t = Instant::now();
        let r = f();
        self.longest_us
            .fetch_max(t.elapsed().as_micros() as u64, Ordering::Relaxed);
        self.reads.fetch_add(1, Ordering::Relaxed);
        r
    }
    fn error(&self, e: String) {
        let mut v = self.errors.lock().unwrap();
        if v.len() < 20 {
            v.push(e);
        }
    }
}

fn whole_read(p: &std::path::Path, want: &[u8], t: &Tally) {
    let mut f = match File::open(p) {
        Ok(f) => f,
        Err(e) => return t.error(format!("open {}: {e}", p.display())),
    };
    let mut buf = vec![0u8; 256 * 1024];
    let mut at = 0;
    loop {
        match t.timed(|| f.read(&mut buf)) {
            Ok(0) => break,
            Ok(n) => {
                if at + n > want.len() || buf[..n] != want[at..at + n] {
                    return t.error(format!("{}: wrong bytes at {at}", p.display()));
                }
                at += n;
                t.bytes.fetch_add(n as u64, Ordering::Relaxed);
            }
            Err(e) => return t.error(format!("{} at {at}: {e}", p.display())),
        }
    }
    if at != want.len() {
        return t.error(format!("{}: {at} of {} bytes", p.display(), want.len()));
    }
    t.whole_files.fetch_add(1, Ordering::Relaxed);
}

fn random_reads(p: &std::path::Path, want: &[u8], rng: &mut Rng, t: &Tally) {
    let f = match File::open(p) {
        Ok(f) => f,
        Err(e) => return t.error(format!("open {}: {e}", p.display())),
    };
    for _ in 0..16 {
        let len = 1 + rng.below(512 * 1024) as usize;
        let off = rng.below(want.len() as u64) as usize;
        let mut buf = vec![0u8; len];
        match t.timed(|| f.read_at(&mut buf, off as u64)) {
            Ok(n) => {
                let end = (off + n).min(want.len());
                if n == 0 || buf[..n] != want[off..end] {
                    return t.error(format!("{}: wrong bytes in {n} at {off}", p.display()));
                }
                t.bytes.fetch_add(n as u64, Ordering::Relaxed);
            }
            Err(e) => return t.error(format!("{} pread at {off}: {e}", p.display())),
        }
    }
}

#[test]
fn eight_readers_over_blobs_larger_than_the_cache() {
    let reg = Registry::start();
    let files: Vec<(String, Vec<u8>)> = (0..5)
        .map(|i| {
            (
                format!("s{i}.bin"),
                random_bytes(10 * MIB + 4099 * i, 300 + i as u64),
            )
        })
        .chain([("small.bin".to_string(), random_bytes(700_000, 310))])
        .collect();
    let refs: Vec<(&str, &[u8])> = files
        .iter()
        .map(|(n, b)| (n.as_str(), b.as_slice()))
        .collect();
    reg.push_artifact("soak/blobs", "v1", &refs);
    let total: usize = files.iter().map(|(_, b)| b.len()).sum();
    let m = Launch::new(&format!("{}/soak/blobs:v1", reg.addr()))
        .args(&["--cache-size", "16MiB"])
        .mount()
        .expect("mount");
    let files = Arc::new(files);
    let tally = Arc::new(Tally::default());
    let run_for = Duration::from_secs(15);
    let start = Instant::now();
    let readers: Vec<_> = (0..8u64)
        .map(|r| {
            let (files, tally, root) = (files.clone(), tally.clone(), m.path().to_path_buf());
            std::thread::spawn(move || {
                let mut rng = Rng(r + 1);
                while start.elapsed() < run_for {
                    let (name, want) = &files[rng.below(files.len() as u64) as usize];
                    let p = root.join(name);
                    if rng.below(3) == 0 {
                        whole_read(&p, want, &tally);
                    } else {
                        random_reads(&p, want, &mut rng, &tally);
                    }
                }
            })
        })
        .collect();
    let mut rss_peak = 0;
    while readers.iter().any(|h| !h.is_finished()) {
        rss_peak = rss_peak.max(m.peak_rss_kib().unwrap_or(0));
        std::thread::sleep(Duration::from_millis(200));
    }
    for h in readers {
        h.join().expect("reader");
    }
    let took = start.elapsed();
    let cache_bytes: u64 = walk_files(m.cache_dir())
        .iter()
        .filter_map(|f| std::fs::metadata(m.cache_dir().join(f)).ok())
        .map(|md| md.len())
        .sum();
    let errors = tally.errors.lock().unwrap().clone();
    let mib = tally.bytes.load(Ordering::Relaxed) as f64 / MIB as f64;
    eprintln!(
        "soak: 8 readers, {:.1} s, {} reads ({} whole files), {mib:.0} MiB ({:.1} MiB/s), longest read {:.0} ms, \
         errors {}, daemon peak RSS {} KiB, cache {} KiB on disk (cap 16 MiB, blobs {} MiB)",
        took.as_secs_f64(),
        tally.reads.load(Ordering::Relaxed),
        tally.whole_files.load(Ordering::Relaxed),
        mib / took.as_secs_f64(),
        tally.longest_us.load(Ordering::Relaxed) as f64 / 1000.0,
        errors.len(),
        m.peak_rss_kib().unwrap_or(rss_peak),
        cache_bytes / 1024,
        total / MIB,
    );
    assert!(errors.is_empty(), "errors: {errors:#?}\n{}", m.stderr());
    assert!(
        tally.whole_files.load(Ordering::Relaxed) > 0,
        "some whole files were read"
    );
    assert!(!m.stderr().contains("panicked"), "{}", m.stderr());
}

/// A file opened before its blob was verified, and still open, while the same file is
/// opened again after the first read verified it (and while handles come and go as a
/// cache under pressure evicts and refetches it): every open and read succeeds.
/// With FUSE passthrough the kernel refuses (EIO) to mix a passthrough open with cached
/// opens of the same inode, so the server must not switch an inode's mode while any handle
/// is open.
fn opens_across_verification_all_succeed(extra: &[&str]) {
    let reg = Registry::start();
    let small = random_bytes(200_000, 320);
    reg.push_artifact("soak/opens", "v1", &[("small.bin", &small)]);
    let m = Launch::new(&format!("{}/soak/opens:v1", reg.addr()))
        .args(extra)
        .mount()
        .expect("mount");
    let p = m.join("small.bin");
    let first = File::open(&p).expect("first open, before verification");
    let mut buf = vec![0u8; small.len()];
    first
        .read_exact_at(&mut buf, 0)
        .expect("first read verifies the blob");
    assert!(buf == small);
    // The blob is verified now; the first handle is still open.
    for i in 0..3 {
        let r = read_all(&p);
        assert!(
            matches!(&r, Ok(b) if *b == small),
            "open {i} while a handle from before verification is open: {:?}\n{}",
            r.map(|b| b.len()),
            m.stderr()
        );
    }
    drop(first);
    assert_eq!(
        read_all(&p).unwrap(),
        small,
        "after the first handle closed"
    );
    assert_passthrough_granted(&m, extra);
}

#[test]
fn opens_across_verification_all_succeed_with_passthrough() {
    opens_across_verification_all_succeed(WITH_PASSTHROUGH);
}

#[test]
fn opens_across_verification_all_succeed_without_passthrough() {
    opens_across_verification_all_succeed(&["--no-passthrough"]);
}
