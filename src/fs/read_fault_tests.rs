//! The read path's fault handling, against a [`FailingSource`] over the in-memory source:
//! which errno a failed fetch gives (here, where errors become errnos), who else gets it,
//! what survives a failure and what a read does once the source heals. No FUSE, no
//! network.

use std::sync::Arc;
use std::time::Duration;

use super::error::{to_errno, FsError};
use crate::cache::block::BLOCK_SIZE;
use crate::cache::{BlobCache, BlobRef, CacheConfig};
use crate::error::{CacheError, SourceError};
use crate::read::ahead::TRIGGER_FROM_START;
use crate::read::{BlobReader, ReadConfig};
use crate::source::failing::{Call, FailingSource, Fault};
use crate::source::memory::MemorySource;

const MIB: u64 = 1024 * 1024;

/// A blob of `size` bytes in a memory source behind a failing one, and a reader over it.
struct Rig {
    src: Arc<FailingSource>,
    reader: BlobReader,
    blob: BlobRef,
    data: Vec<u8>,
    _dir: tempfile::TempDir,
}

fn rig(size: u64) -> Rig {
    let mem = Arc::new(MemorySource::new());
    let data: Vec<u8> = (0..size).map(|i| (i * 2654435761 % 251) as u8).collect();
    let desc = mem.put_blob("application/octet-stream", data.clone());
    let src = Arc::new(FailingSource::new(mem));
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = CacheConfig::new(dir.path().to_path_buf());
    cfg.min_free_percent = 0.0;
    let reader = BlobReader::new(
        BlobCache::open(cfg).unwrap(),
        src.clone(),
        ReadConfig::default(),
    );
    Rig {
        src,
        reader,
        blob: BlobRef {
            repo: "r".into(),
            digest: desc.digest,
            size,
        },
        data,
        _dir: dir,
    }
}

impl Rig {
    /// Read `len` bytes at `offset` through a fresh handle.
    fn read(&self, offset: u64, len: u32) -> Result<Vec<u8>, CacheError> {
        let h = self.reader.open(&self.blob, None);
        self.reader.read(&h, offset, len)
    }

    fn want(&self, offset: u64, len: u32) -> &[u8] {
        &self.data[offset as usize..(offset + len as u64).min(self.blob.size) as usize]
    }
}

fn errno(e: &CacheError) -> i32 {
    to_errno(&FsError::Cache(e.clone()))
}

fn refused() -> SourceError {
    SourceError::Unauthorized {
        registry: "r.example".into(),
        hint: "log in".into(),
    }
}

/// A small blob (fetched whole) and a large one (fetched in blocks): each error the
/// source gives reaches the reader with its errno, and once the source heals the same read
/// succeeds.
#[test]
fn source_errors_keep_their_errno_through_the_reader() {
    let cases: Vec<(SourceError, i32)> = vec![
        (SourceError::NotFound("blob".into()), libc::ENOENT),
        (refused(), libc::EACCES),
        (SourceError::Unsupported("no".into()), libc::ENOTSUP),
        (
            SourceError::Status {
                url: "u".into(),
                status: 503,
            },
            libc::EIO,
        ),
    ];
    for size in [100_000, 12 * MIB] {
        let r = rig(size);
        for (error, want) in &cases {
            r.src.add(Fault::blob(error.clone()).always());
            let e = r.read(5 * BLOCK_SIZE, 1000).unwrap_err();
            assert_eq!(errno(&e), *want, "{size} bytes, {error}: got {e}");
            r.src.heal();
        }
        assert_eq!(
            r.read(5 * BLOCK_SIZE, 1000).unwrap(),
            r.want(5 * BLOCK_SIZE, 1000)
        );
    }
}

/// Two readers of the same blocks: one fetches, the other waits for it. When the fetch
/// fails (401), the waiting reader gets the same errno (not EIO), and does not fetch the
/// blocks again with a budget the fetch has spent.
#[test]
fn readers_of_a_failed_shared_fetch_get_the_same_errno() {
    let r = Arc::new(rig(12 * MIB));
    r.src.add(Fault::blob(refused()).held());
    let first = {
        let r = r.clone();
        std::thread::spawn(move || r.read(6 * MIB, 64 * 1024))
    };
    r.src.wait_held(1);
    let second = {
        let r = r.clone();
        std::thread::spawn(move || r.read(6 * MIB, 64 * 1024))
    };
    // The second reader finds the blocks in flight and waits for them.
    std::thread::sleep(Duration::from_millis(300));
    r.src.release();
    let (first, second) = (first.join().unwrap(), second.join().unwrap());
    let (first, second) = (first.unwrap_err(), second.unwrap_err());
    assert_eq!(errno(&first), libc::EACCES, "{first}");
    assert_eq!(errno(&second), libc::EACCES, "{second}");
    assert!(
        matches!(second, CacheError::Shared { .. }),
        "the waiting reader got the fetcher's error: {second}"
    );
    assert_eq!(r.src.calls(Call::Blob), 1, "one fetch for both readers");
    // The failure is not remembered past the fetch: the next read fetches again.
    assert_eq!(
        r.read(6 * MIB, 64 * 1024).unwrap(),
        r.want(6 * MIB, 64 * 1024)
    );
}

/// Read-ahead whose response is cut mid-way (503 after 1.5 MiB) while a reader waits for
/// blocks on both sides of the cut: the reader is not failed (it fetches the missing
/// blocks itself), the blocks that arrived before the cut are kept and never fetched
/// again, and the whole blob still passes its digest check.
#[test]
fn a_transient_failure_mid_read_ahead_keeps_the_blocks_that_arrived() {
    let r = Arc::new(rig(24 * MIB));
    let cut_after = 3 * MIB / 2 + 1000;
    r.src.add(
        Fault::blob(SourceError::Status {
            url: "u".into(),
            status: 503,
        })
        .on_threads("orasfs-read-")
        .after(cut_after)
        .held(),
    );
    let h = r.reader.open(&r.blob, None);
    // Reading the first MiB in order starts read-ahead (`ahead::TRIGGER_FROM_START`).
    let mut got = Vec::new();
    while (got.len() as u64) < TRIGGER_FROM_START {
        let b = r.reader.read(&h, got.len() as u64, 128 * 1024).unwrap();
        got.extend_from_slice(&b);
    }
    r.src.wait_held(1);
    let fetches = r.src.fetches();
    let ahead = fetches
        .iter()
        .find(|f| f.failed)
        .and_then(|f| f.range.clone());
    let start = ahead.expect("read-ahead asks for a range").start;
    let good = start..start + cut_after / BLOCK_SIZE * BLOCK_SIZE;
    // A reader waits for blocks across the cut.
    let across = good.end - 64 * 1024;
    let waiter = {
        let r = r.clone();
        std::thread::spawn(move || r.read(across, 128 * 1024))
    };
    std::thread::sleep(Duration::from_millis(300));
    r.src.release();
    let waited = waiter.join().unwrap();
    assert!(
        waited.as_deref().ok() == Some(r.want(across, 128 * 1024)),
        "the read waiting on the failed read-ahead: {:?}",
        waited.map(|b| b.len())
    );
    while (got.len() as u64) < r.blob.size {
        let b = r.reader.read(&h, got.len() as u64, 128 * 1024).unwrap();
        got.extend_from_slice(&b);
    }
    assert!(got == r.data, "every byte right");
    r.reader.wait_idle();
    let fetches = r.src.fetches();
    let at = fetches
        .iter()
        .position(|f| f.failed)
        .expect("a read-ahead fetch was cut");
    for f in &fetches[at + 1..] {
        let r = f.range.clone().expect("a range");
        assert!(
            r.end <= good.start || r.start >= good.end,
            "{r:?} fetched again blocks that arrived before the cut ({good:?})"
        );
    }
    assert!(r.reader.is_verified(&r.blob), "the digest judged the blob");
    assert_eq!(
        r.reader.failures(&r.blob.digest),
        0,
        "no open file was failed"
    );
}

/// A range the source cannot serve fails with EIO while the rest of the blob reads; once
/// the source heals, the same read succeeds on the same handle.
#[test]
fn a_failing_range_gives_eio_and_reads_again_once_the_source_heals() {
    let r = rig(12 * MIB);
    let bad = 8 * MIB..8 * MIB + 1;
    r.src.add(
        Fault::blob(SourceError::Unreachable {
            target: "r.example".into(),
            detail: "connection reset".into(),
        })
        .overlapping(bad.clone())
        .always(),
    );
    let h = r.reader.open(&r.blob, None);
    let e = r.reader.read(&h, bad.start, 4096).unwrap_err();
    assert_eq!(errno(&e), libc::EIO, "{e}");
    assert_eq!(r.reader.read(&h, MIB, 4096).unwrap(), r.want(MIB, 4096));
    let e = r.reader.read(&h, bad.start, 4096).unwrap_err();
    assert_eq!(errno(&e), libc::EIO, "still failing: {e}");
    r.src.heal();
    assert_eq!(
        r.reader.read(&h, bad.start, 4096).unwrap(),
        r.want(bad.start, 4096)
    );
}
