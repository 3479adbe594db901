//! Tests of the read path with the store: eviction, the size cap, the free-space floor and
//! read-ahead, through the filesystem core against the in-memory source (which counts
//! requests and bytes).

use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::cache::block::BLOCK_SIZE;
use crate::cache::evict::Space;
use crate::cache::usage::dir_bytes;
use crate::cache::{BlobCache, BlobRef, CacheConfig};
use crate::error::SourceError;
use crate::fs::tree::{RootKind, Tree, TreeConfig, ROOT};
use crate::fs::{Fs, FsConfig};
use crate::oci::{Descriptor, Digest, ANNOTATION_TITLE, OCI_MANIFEST};
use crate::read::{BlobReader, ReadConfig};
use crate::source::failing::{FailingSource, Fault};
use crate::source::memory::MemorySource;
use crate::source::{Reference, Source};

const MIB: u64 = 1024 * 1024;

fn bytes(n: usize, seed: u8) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u64 * 2654435761 % 251) as u8 ^ seed)
        .collect()
}

fn desc_json(d: &Descriptor) -> serde_json::Value {
    let mut v = serde_json::json!({"mediaType": d.media_type, "digest": d.digest.to_string(), "size": d.size});
    if !d.annotations.is_empty() {
        v["annotations"] = serde_json::to_value(&d.annotations).unwrap();
    }
    v
}

/// An artifact `r:t` with files `f0`, `f1`, ... of the given sizes, mounted over `src`
/// (or a wrapper of it) with a cache in `dir`.
struct Setup {
    mem: Arc<MemorySource>,
    fs: Fs,
    data: Vec<Vec<u8>>,
    blobs: Vec<BlobRef>,
    inos: Vec<u64>,
}

fn publish(mem: &MemorySource, sizes: &[usize]) -> (Vec<Vec<u8>>, Vec<Descriptor>) {
    let mut data = Vec::new();
    let mut layers = Vec::new();
    for (k, n) in sizes.iter().enumerate() {
        let d = bytes(*n, k as u8 + 1);
        let mut desc = mem.put_blob("application/octet-stream", d.clone());
        desc.annotations
            .insert(ANNOTATION_TITLE.into(), format!("f{k}"));
        data.push(d);
        layers.push(desc);
    }
    let config = mem.put_blob("application/vnd.oci.empty.v1+json", b"{}".to_vec());
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": desc_json(&config),
        "layers": layers.iter().map(desc_json).collect::<Vec<_>>(),
    }))
    .unwrap();
    mem.put_manifest("r", Some("t"), manifest);
    (data, layers)
}

fn mount(
    mem: Arc<MemorySource>,
    src: Arc<dyn Source>,
    dir: &Path,
    sizes: &[usize],
    tune: impl FnOnce(&mut CacheConfig, &mut ReadConfig),
) -> Setup {
    let (data, layers) = publish(&mem, sizes);
    let tree = Tree::new(
        src,
        RootKind::Artifact("r".into(), Reference::Tag("t".into())),
        TreeConfig::default(),
    )
    .unwrap();
    let mut cfg = CacheConfig::new(dir.to_path_buf());
    cfg.min_free_percent = 0.0;
    let mut rcfg = ReadConfig::default();
    tune(&mut cfg, &mut rcfg);
    let reader = BlobReader::new(BlobCache::open(cfg).unwrap(), tree.source().clone(), rcfg);
    let fs = Fs::new(tree, reader, FsConfig::default());
    let inos = (0..sizes.len())
        .map(|k| fs.lookup(ROOT, &format!("f{k}")).unwrap().attr.ino)
        .collect();
    let blobs = layers
        .iter()
        .map(|l| BlobRef {
            repo: "r".into(),
            digest: l.digest.clone(),
            size: l.size,
        })
        .collect();
    Setup {
        mem,
        fs,
        data,
        blobs,
        inos,
    }
}

fn setup(
    dir: &Path,
    sizes: &[usize],
    tune: impl FnOnce(&mut CacheConfig, &mut ReadConfig),
) -> Setup {
    let mem = Arc::new(MemorySource::new());
    mount(mem.clone(), mem, dir, sizes, tune)
}

/// Read a whole file through one handle in reads of `step` bytes.
fn read_through(fs: &Fs, fh: u64, step: u32) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let b = fs.read(fh, out.len() as u64, step).unwrap();
        if b.is_empty() {
            return out;
        }
        out.extend_from_slice(&b);
    }
}

fn read_file(fs: &Fs, ino: u64, step: u32) -> Vec<u8> {
    let fh = fs.open(ino, false).unwrap().fh;
    let out = read_through(fs, fh, step);
    fs.release(fh);
    out
}

fn requests(s: &Setup) -> u64 {
    s.mem.blob_requests.load(Ordering::Relaxed)
}

fn served(s: &Setup) -> u64 {
    s.mem.blob_bytes.load(Ordering::Relaxed)
}

fn cached(dir: &Path, d: &Digest) -> bool {
    dir.join("v2/blobs/sha256").join(d.hex()).exists()
        || dir.join("v2/partial/sha256").join(d.hex()).exists()
}

/// The cache's size on disk (every file under `v2/`, sparse partial files by the bytes
/// they hold) must match what it accounts, and stay under `cap`. Sparse files are measured
/// in filesystem blocks, so a partial blob may hold up to one 4 KiB block more than its
/// bytes (a short last block).
fn assert_within(s: &Setup, dir: &Path, cap: u64) {
    s.fs.wait_idle();
    let on_disk = dir_bytes(&dir.join("v2"));
    let accounted = s.fs.cache().disk_usage();
    assert!(
        on_disk <= cap + 4096 * s.blobs.len() as u64,
        "{on_disk} bytes on disk, cap {cap}"
    );
    assert!(accounted <= cap, "{accounted} bytes accounted, cap {cap}");
    if on_disk.abs_diff(accounted) > 4096 * s.blobs.len() as u64 {
        for b in crate::cache::usage::scan(&dir.join("v2")).blobs {
            eprintln!(
                "disk {} {} verified={} partial={}",
                b.digest, b.bytes, b.verified, b.partial
            );
        }
        for b in &s.blobs {
            eprintln!(
                "ledger {} {}",
                b.digest,
                s.fs.cache().ledger_bytes(&b.digest)
            );
        }
    }
    assert!(
        on_disk.abs_diff(accounted) <= 4096 * s.blobs.len() as u64,
        "the running total ({accounted}) matches the disk ({on_disk})"
    );
}

#[test]
fn sequential_reads_fetch_ahead_in_few_requests() {
    let dir = tempfile::tempdir().unwrap();
    let s = setup(dir.path(), &[40 * MIB as usize], |_, _| {});
    let (r0, b0) = (requests(&s), served(&s));
    assert_eq!(read_file(&s.fs, s.inos[0], 128 * 1024), s.data[0]);
    s.fs.wait_idle();
    let reqs = requests(&s) - r0;
    eprintln!(
        "sequential 40 MiB in 128 KiB reads: {reqs} requests, {} blocks read ahead",
        s.fs.cache().stats.prefetch_blocks.load(Ordering::Relaxed)
    );
    assert!(reqs <= 24, "{reqs} requests for 320 reads");
    assert_eq!(served(&s) - b0, 40 * MIB, "no byte is fetched twice");
    assert!(s.fs.cache().stats.prefetch_blocks.load(Ordering::Relaxed) >= 30);
}

#[test]
fn random_reads_do_not_read_ahead() {
    let dir = tempfile::tempdir().unwrap();
    let size = 64 * MIB;
    let s = setup(dir.path(), &[size as usize], |_, _| {});
    let fh = s.fs.open(s.inos[0], false).unwrap().fh;
    let (r0, b0) = (requests(&s), served(&s));
    // Scattered offsets, each at least 2 MiB from the last read and inside one block.
    let mut offsets: Vec<u64> = Vec::new();
    let mut x: u64 = 12345;
    while offsets.len() < 40 {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let off = (x >> 20) % (size - 4096);
        let far = offsets.last().is_none_or(|p| off.abs_diff(*p) > 2 * MIB);
        if far && off % BLOCK_SIZE <= BLOCK_SIZE - 4096 {
            offsets.push(off);
        }
    }
    for &off in &offsets {
        let got = s.fs.read(fh, off, 4096).unwrap();
        assert_eq!(got, &s.data[0][off as usize..off as usize + 4096]);
    }
    s.fs.wait_idle();
    let reads = offsets.len() as u64;
    let (reqs, bytes) = (requests(&s) - r0, served(&s) - b0);
    eprintln!("{reads} random 4 KiB reads: {reqs} requests, {bytes} bytes");
    assert!(
        bytes <= reads * BLOCK_SIZE,
        "{bytes} bytes for {reads} reads"
    );
    assert!(reqs <= reads);
    assert_eq!(
        s.fs.cache().stats.prefetch_blocks.load(Ordering::Relaxed),
        0
    );
    s.fs.release(fh);
}

#[test]
fn a_failing_read_ahead_never_fails_a_read() {
    let dir = tempfile::tempdir().unwrap();
    let mem = Arc::new(MemorySource::new());
    // Every read-ahead request fails; foreground reads succeed.
    let failing = FailingSource::new(mem.clone());
    failing.add(
        Fault::blob(SourceError::Status {
            url: "memory://read-ahead".into(),
            status: 503,
        })
        .on_threads("orasfs-read-")
        .always(),
    );
    let s = mount(
        mem,
        Arc::new(failing),
        dir.path(),
        &[20 * MIB as usize],
        |_, _| {},
    );
    assert_eq!(read_file(&s.fs, s.inos[0], 128 * 1024), s.data[0]);
    s.fs.wait_idle();
    assert!(s.fs.cache().stats.prefetch_failures.load(Ordering::Relaxed) > 0);
    assert!(s.fs.cache().stats.prefetch_blocks.load(Ordering::Relaxed) > 0);
}

#[test]
fn the_size_cap_holds_and_evicted_blobs_lose_their_memory_state() {
    let dir = tempfile::tempdir().unwrap();
    let cap = 12 * MIB;
    let size = 5 * MIB as usize + 3;
    let s = setup(dir.path(), &[size; 4], |c, r| {
        c.max_size = Some(cap);
        r.small_blob = 0;
    });
    for k in 0..4 {
        assert_eq!(
            read_file(&s.fs, s.inos[k], 128 * 1024),
            s.data[k],
            "blob {k}"
        );
        assert_within(&s, dir.path(), cap);
        if k == 0 {
            assert!(
                s.fs.reader().is_verified(&s.blobs[0]),
                "read whole, verified, promoted"
            );
        }
    }
    let c = s.fs.cache();
    assert!(c.stats.evicted_blobs.load(Ordering::Relaxed) >= 2);
    assert!(
        !cached(dir.path(), &s.blobs[0].digest),
        "the least recently used went first"
    );
    assert!(
        !s.fs.reader().is_verified(&s.blobs[0]),
        "eviction drops the verified state with the file"
    );
    assert_eq!(
        s.fs.getxattr(s.inos[0], "user.orasfs.verified").unwrap(),
        b"none"
    );
    // Its blocks are gone too: reading it again fetches it again.
    let r0 = requests(&s);
    let fh = s.fs.open(s.inos[0], false).unwrap().fh;
    assert_eq!(s.fs.read(fh, 10, 100).unwrap(), &s.data[0][10..110]);
    assert!(requests(&s) > r0);
    assert_eq!(read_through(&s.fs, fh, 1 << 20), s.data[0]);
    s.fs.release(fh);
    assert_within(&s, dir.path(), cap);
}

#[test]
fn a_blob_open_for_reading_is_never_evicted() {
    let dir = tempfile::tempdir().unwrap();
    let cap = 10 * MIB;
    let s = setup(dir.path(), &[4 * MIB as usize; 3], |c, r| {
        c.max_size = Some(cap);
        r.small_blob = 0;
    });
    let pinned = s.fs.open(s.inos[0], false).unwrap().fh;
    assert_eq!(read_through(&s.fs, pinned, 128 * 1024), s.data[0]);
    s.fs.wait_idle();
    for k in 1..3 {
        assert_eq!(read_file(&s.fs, s.inos[k], 128 * 1024), s.data[k]);
        assert_within(&s, dir.path(), cap);
    }
    assert!(
        s.fs.cache().stats.evicted_blobs.load(Ordering::Relaxed) >= 1,
        "something had to go"
    );
    assert!(
        !cached(dir.path(), &s.blobs[1].digest),
        "the unpinned, least recently used blob went"
    );
    assert!(
        cached(dir.path(), &s.blobs[0].digest),
        "the open one stayed"
    );
    let r0 = requests(&s);
    assert_eq!(s.fs.read(pinned, 0, 4 * MIB as u32).unwrap(), s.data[0]);
    assert_eq!(
        requests(&s),
        r0,
        "the open blob is still served from the cache"
    );
    s.fs.release(pinned);
    // Once closed it is fair game: reading the others again evicts it.
    for k in 1..3 {
        assert_eq!(read_file(&s.fs, s.inos[k], MIB as u32), s.data[k]);
    }
    assert_within(&s, dir.path(), cap);
    assert!(!cached(dir.path(), &s.blobs[0].digest));
}

/// A filesystem of 100 MiB with 18 MiB free before the cache's own files.
fn small_disk(root: &Path) -> Option<Space> {
    Some(Space {
        total: 100 * MIB,
        avail: (18 * MIB).saturating_sub(dir_bytes(root)),
    })
}

#[test]
fn the_free_space_floor_is_kept() {
    let dir = tempfile::tempdir().unwrap();
    // Keeping 10% (10 MiB) free leaves the cache 8 MiB.
    let s = setup(dir.path(), &[3 * MIB as usize; 4], |c, r| {
        r.small_blob = 0;
        c.min_free_percent = 10.0;
        c.space_probe = small_disk;
    });
    for k in 0..4 {
        assert_eq!(read_file(&s.fs, s.inos[k], 256 * 1024), s.data[k]);
        assert_within(&s, dir.path(), 8 * MIB);
    }
    assert!(s.fs.cache().stats.evicted_blobs.load(Ordering::Relaxed) >= 1);
    assert!(
        cached(dir.path(), &s.blobs[3].digest),
        "the newest blob is kept"
    );
}

#[test]
fn concurrent_readers_under_a_tight_cap_read_correct_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let cap = 8 * MIB;
    let s = Arc::new(setup(dir.path(), &[3 * MIB as usize + 7; 6], |c, r| {
        c.max_size = Some(cap);
        r.small_blob = 0;
    }));
    let threads: Vec<_> = (0..6)
        .map(|k| {
            let s = s.clone();
            std::thread::spawn(move || {
                for _ in 0..2 {
                    assert_eq!(
                        read_file(&s.fs, s.inos[k], 128 * 1024),
                        s.data[k],
                        "blob {k}"
                    );
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_within(&s, dir.path(), cap);
}

fn backdate(dir: &Path, d: &Digest, hours: u64) {
    let t = SystemTime::now() - Duration::from_secs(hours * 3600);
    for p in [
        dir.join("v2/blobs/sha256").join(d.hex()),
        dir.join("v2/blobs/sha256").join(format!("{}.crc", d.hex())),
        dir.join("v2/blobs/sha256")
            .join(format!("{}.stamp", d.hex())),
        dir.join("v2/partial/sha256").join(d.hex()),
        dir.join("v2/partial/sha256")
            .join(format!("{}.map", d.hex())),
    ] {
        if p.exists() {
            std::fs::File::open(&p).unwrap().set_modified(t).unwrap();
        }
    }
}

#[test]
fn use_is_recorded_on_disk_and_a_smaller_cap_applies_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let size = 2 * MIB as usize;
    let blobs = {
        let s = setup(dir.path(), &[size; 3], |_, r| r.small_blob = 0);
        for k in 0..3 {
            assert_eq!(read_file(&s.fs, s.inos[k], MIB as u32), s.data[k]);
        }
        s.fs.wait_idle();
        s.blobs.clone()
    };
    // Blob 0 is the oldest on disk, then 1, then 2.
    for (k, b) in blobs.iter().enumerate() {
        backdate(dir.path(), &b.digest, 3 - k as u64);
    }
    {
        // Reading blob 0 in a new session records the use on disk.
        let s = setup(dir.path(), &[size; 3], |_, r| r.small_blob = 0);
        let r0 = requests(&s);
        assert_eq!(read_file(&s.fs, s.inos[0], MIB as u32), s.data[0]);
        assert_eq!(requests(&s), r0, "served from the cache");
        s.fs.wait_idle();
    }
    // Reopened with room for two blobs: the least recently used (1) is evicted at once.
    let s = setup(dir.path(), &[size; 3], |c, r| {
        r.small_blob = 0;
        c.max_size = Some(2 * size as u64 + MIB);
    });
    assert!(cached(dir.path(), &blobs[0].digest));
    assert!(!cached(dir.path(), &blobs[1].digest));
    assert!(cached(dir.path(), &blobs[2].digest));
    assert_within(&s, dir.path(), 2 * size as u64 + MIB);
}

#[test]
fn whole_blob_fetches_are_accounted_under_the_cap() {
    let cap = 8 * MIB;
    // Strict mode fetches and verifies whole blobs before the first byte.
    let dir = tempfile::tempdir().unwrap();
    let s = setup(dir.path(), &[3 * MIB as usize; 4], |c, r| {
        r.verify = crate::read::VerifyMode::Strict;
        c.max_size = Some(cap);
    });
    for k in 0..4 {
        assert_eq!(read_file(&s.fs, s.inos[k], 128 * 1024), s.data[k]);
        assert!(s.fs.reader().is_verified(&s.blobs[k]));
        assert_within(&s, dir.path(), cap);
    }
    assert!(s.fs.cache().stats.evicted_blobs.load(Ordering::Relaxed) >= 2);
    // A server that ignores ranges sends whole blobs to the block path.
    let dir = tempfile::tempdir().unwrap();
    let s = setup(dir.path(), &[3 * MIB as usize; 4], |c, r| {
        c.max_size = Some(cap);
        r.small_blob = 0;
    });
    s.mem.ignore_ranges.store(true, Ordering::Relaxed);
    for k in 0..4 {
        assert_eq!(read_file(&s.fs, s.inos[k], 128 * 1024), s.data[k]);
        assert_within(&s, dir.path(), cap);
    }
    assert!(s.fs.cache().stats.evicted_blobs.load(Ordering::Relaxed) >= 2);
}

/// A disk with no room at all: the store refuses every block.
fn no_room(_: &Path) -> Option<Space> {
    Some(Space {
        total: 100 * MIB,
        avail: 0,
    })
}

#[test]
fn a_blob_held_in_memory_and_named_with_a_larger_size_is_eio_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let mem = Arc::new(MemorySource::new());
    let data = bytes(300_000, 7);
    let mut honest = mem.put_blob("application/octet-stream", data.clone());
    let mut liar = honest.clone();
    liar.size += 1000;
    honest
        .annotations
        .insert(ANNOTATION_TITLE.into(), "honest".into());
    liar.annotations
        .insert(ANNOTATION_TITLE.into(), "liar".into());
    let config = mem.put_blob("application/vnd.oci.empty.v1+json", b"{}".to_vec());
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": desc_json(&config),
        "layers": [desc_json(&honest), desc_json(&liar)],
    }))
    .unwrap();
    mem.put_manifest("r", Some("t"), manifest);
    let tree = Tree::new(
        mem.clone(),
        RootKind::Artifact("r".into(), Reference::Tag("t".into())),
        TreeConfig::default(),
    )
    .unwrap();
    let mut cfg = CacheConfig::new(dir.path().to_path_buf());
    cfg.min_free_percent = 10.0;
    cfg.space_probe = no_room;
    let reader = BlobReader::new(
        BlobCache::open(cfg).unwrap(),
        mem.clone(),
        ReadConfig::default(),
    );
    let fs = Fs::new(tree, reader, FsConfig::default());
    let ino = fs.lookup(ROOT, "honest").unwrap().attr.ino;
    assert!(read_file(&fs, ino, 64 * 1024) == data, "served from memory");
    assert_eq!(
        fs.cache().stats.verified_blobs.load(Ordering::Relaxed),
        1,
        "a blob verified in memory is counted"
    );
    let liar = fs.lookup(ROOT, "liar").unwrap().attr.ino;
    let fh = fs.open(liar, false).unwrap().fh;
    let err = fs.read(fh, 299_990, 1000).unwrap_err();
    assert_eq!(crate::fs::error::to_errno(&err), libc::EIO, "{err}");
}

#[test]
fn a_server_that_ignores_ranges_is_not_asked_for_the_whole_blob_per_read_ahead_job() {
    let dir = tempfile::tempdir().unwrap();
    let size = 40 * MIB as usize;
    let s = setup(dir.path(), &[size], |_, _| {});
    s.mem.ignore_ranges.store(true, Ordering::Relaxed);
    assert!(read_file(&s.fs, s.inos[0], 128 * 1024) == s.data[0]);
    s.fs.wait_idle();
    let served = served(&s);
    eprintln!(
        "{} whole blobs served for one sequential read",
        served as f64 / size as f64
    );
    assert!(
        served <= 3 * size as u64,
        "{served} bytes served for a {size} byte blob"
    );
}

#[test]
fn with_no_room_in_the_cache_a_whole_read_still_gets_the_digest_verdict() {
    let dir = tempfile::tempdir().unwrap();
    let size = 12 * MIB as usize + 5;
    let s = setup(dir.path(), &[size], |c, _| {
        c.min_free_percent = 10.0;
        c.space_probe = no_room;
    });
    // A damaged byte in every body that holds offset 7 MiB + 3: never stored, served from
    // memory, and the read that reaches the end must learn the digest's verdict.
    *s.mem.corrupt_at.lock().unwrap() = Some((s.blobs[0].digest.clone(), 7 * MIB + 3));
    // Read every 128 KiB piece, out of order (from the end backwards, as concurrent kernel
    // requests may land), and the piece at the end last: only that read can get the
    // verdict, and only if the unstored pieces were kept for the hash.
    let fh = s.fs.open(s.inos[0], false).unwrap().fh;
    let step = 128 * 1024u64;
    let last = (size as u64 - 1) / step * step;
    let mut order: Vec<u64> = (0..last / step).rev().map(|k| k * step).collect();
    order.push(last);
    let mut failed = None;
    for off in order {
        if let Err(e) = s.fs.read(fh, off, step as u32) {
            failed = Some(e);
            break;
        }
    }
    s.fs.release(fh);
    let e = failed.expect("a whole read of damaged bytes must not succeed");
    assert_eq!(crate::fs::error::to_errno(&e), libc::EIO, "{e}");
    assert!(s.fs.cache().stats.store_refused.load(Ordering::Relaxed) > 0);
    // The fault gone, a whole read is right and verified (while open: nothing is stored
    // to remember it by), still with no room.
    *s.mem.corrupt_at.lock().unwrap() = None;
    let fh = s.fs.open(s.inos[0], false).unwrap().fh;
    assert!(read_through(&s.fs, fh, 128 * 1024) == s.data[0]);
    assert!(s.fs.reader().is_verified(&s.blobs[0]));
    s.fs.release(fh);
}

#[test]
fn partial_blobs_held_open_stay_within_the_descriptor_bound() {
    let dir = tempfile::tempdir().unwrap();
    let n = crate::cache::OPEN_FILES * 2;
    let sizes = vec![4 * BLOCK_SIZE as usize; n];
    let s = setup(dir.path(), &sizes, |_, _| {});
    // One block of each: every blob stays partial, so each has a sparse file and a map.
    for (k, ino) in s.inos.iter().enumerate() {
        let fh = s.fs.open(*ino, false).unwrap().fh;
        let got = s.fs.read(fh, 0, 100).unwrap();
        assert_eq!(got, &s.data[k][..100]);
        s.fs.release(fh);
    }
    s.fs.wait_idle();
    let open = s.fs.cache().open_files();
    assert!(
        (1..=crate::cache::OPEN_FILES).contains(&open),
        "{open} partial blobs open after reading {n}"
    );
    // A blob whose files were closed reads back from disk.
    assert_eq!(read_file(&s.fs, s.inos[0], 4096), s.data[0]);
}
