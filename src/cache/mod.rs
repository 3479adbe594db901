//! The blob store: content-addressed by digest, shared by every repository, tag and mount
//! that uses the same cache directory. It stores and checks bytes; it knows nothing of
//! sources, fetching or read patterns (that is [`crate::read`]).
//!
//! Layout under the cache dir (format `v2`; a `v1/` left by an older orasfs is removed at
//! start with one log line, never read):
//!
//! ```text
//! v2/blobs/sha256/<hex>            a verified whole blob            (see [`verified`])
//! v2/blobs/sha256/<hex>.crc        its per-block CRC32C sidecar
//! v2/blobs/sha256/<hex>.stamp      the file state at its last full CRC check
//! v2/partial/sha256/<hex>          a partly fetched blob, sparse     (see [`partial`])
//! v2/partial/sha256/<hex>.map      which blocks it holds, with their CRC32C
//! v2/tmp/                          temp files (see [`temp`]; those of gone processes are
//!                                  swept at start, here and beside blobs and archives)
//! ```
//!
//! Interface: open a blob's [`Partial`] and store checked blocks in it; turn a complete,
//! digest-checked partial into a verified file by renaming it ([`BlobCache::promote`]);
//! open verified files; pin blobs against eviction; account and evict under the size cap
//! and free-space floor ([`evict`]); measure usage ([`usage`]).
//!
//! Open files are bounded: at most [`OPEN_FILES`] partial and [`OPEN_FILES`] verified
//! blobs are kept open, least recently used closed first, except those in use.
//!
//! Locks: `opening` → the ledger and the LRUs (`partials`, `verified`, `trusted`), each
//! of which is a leaf, taken alone and never held across file I/O of another blob.

pub mod block;
pub mod evict;
pub mod manage;
pub mod partial;
pub mod temp;
pub mod usage;
pub mod verified;

use std::collections::HashMap;
use std::fs;
use std::hash::Hash;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

use lru::LruCache;

use crate::error::CacheError;
use crate::oci::Digest;
use evict::{Admission, Ledger, Limits, Mode, SpaceProbe};
pub use partial::Partial;
use verified::{io_err, FileStamp, Verified};

/// The cache format's directory name.
pub const FORMAT: &str = "v2";
/// Formats an older orasfs wrote, removed at start.
const OLD_FORMATS: [&str; 1] = ["v1"];
/// Partial and verified blobs kept open (each), least recently used closed first.
pub const OPEN_FILES: usize = 64;

/// Store settings.
#[derive(Debug, Clone)]
pub struct CacheConfig {
    pub dir: PathBuf,
    /// Cap on the cache's size on disk, if any.
    pub max_size: Option<u64>,
    /// Share (0–100) of the cache's filesystem to keep free.
    pub min_free_percent: f64,
    /// How free space on the cache's filesystem is measured (statvfs; tests substitute).
    pub space_probe: SpaceProbe,
}

impl CacheConfig {
    pub fn new(dir: PathBuf) -> Self {
        Self {
            dir,
            max_size: None,
            min_free_percent: 5.0,
            space_probe: evict::statvfs_space,
        }
    }
}

/// Which blob, where to fetch it, and how big its descriptor says it is.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct BlobRef {
    pub repo: String,
    pub digest: Digest,
    pub size: u64,
}

/// Counters for `orasfs stats` and tests, kept by the store and the read path.
#[derive(Debug, Default)]
pub struct CacheStats {
    pub hits: AtomicU64,
    pub misses: AtomicU64,
    pub fetch_requests: AtomicU64,
    pub fetched_bytes: AtomicU64,
    pub verified_blobs: AtomicU64,
    pub integrity_failures: AtomicU64,
    /// Blocks that failed their check against a block index (never served).
    pub block_failures: AtomicU64,
    pub corrupt_blocks: AtomicU64,
    pub write_failures: AtomicU64,
    /// Blobs evicted to keep the size cap or the free-space floor, and their bytes.
    pub evicted_blobs: AtomicU64,
    pub evicted_bytes: AtomicU64,
    /// Blocks served without being written because the cap or floor left no room.
    pub store_refused: AtomicU64,
    /// Blocks fetched by read-ahead, and read-ahead runs that failed.
    pub prefetch_blocks: AtomicU64,
    pub prefetch_failures: AtomicU64,
}

impl CacheStats {
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}

/// Keeps a blob from eviction while it lives.
pub struct PinGuard {
    cache: Arc<BlobCache>,
    digest: Digest,
}

impl Drop for PinGuard {
    fn drop(&mut self) {
        self.cache.unpin(&self.digest);
    }
}

/// The store. Use it through an `Arc`.
pub struct BlobCache {
    cfg: CacheConfig,
    root: PathBuf,
    partials: Mutex<LruCache<Digest, Arc<Partial>>>,
    /// Held while a partial blob's files are opened or created.
    opening: Mutex<()>,
    verified: Mutex<LruCache<Digest, Arc<Verified>>>,
    /// Verified files whose every CRC was checked, with the file's state at that check
    /// (also kept on disk as `<hex>.stamp`).
    trusted: Mutex<HashMap<Digest, FileStamp>>,
    ledger: Ledger,
    pub stats: CacheStats,
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Insert into a bounded LRU of shared values, closing least recently used entries that
/// nobody else holds; entries still in use stay, over the bound, until they are free.
fn put_bounded<K: Hash + Eq + Clone, V>(lru: &mut LruCache<K, Arc<V>>, k: K, v: Arc<V>) {
    lru.put(k, v);
    if lru.len() <= OPEN_FILES {
        return;
    }
    let idle: Vec<K> = lru
        .iter()
        .rev()
        .filter(|(_, v)| Arc::strong_count(v) == 1)
        .map(|(k, _)| k.clone())
        .take(lru.len() - OPEN_FILES)
        .collect();
    for k in idle {
        lru.pop(&k);
    }
}

impl BlobCache {
    /// Open (creating if needed) the store, remove an old format's directory, sweep temp
    /// files a crash left behind, measure what it holds, and evict down to the limits if
    /// they shrank since the last run.
    pub fn open(cfg: CacheConfig) -> Result<Arc<Self>, CacheError> {
        fs::create_dir_all(&cfg.dir).map_err(|e| io_err(&cfg.dir, e))?;
        for old in OLD_FORMATS {
            let p = cfg.dir.join(old);
            if fs::symlink_metadata(&p).is_ok() {
                let freed = usage::remove_path(&p);
                log::warn!(
                    "cache: removed {} left by an older orasfs ({}); it is not read by this format",
                    p.display(),
                    usage::human(freed)
                );
            }
        }
        let root = cfg.dir.join(FORMAT);
        for sub in ["blobs/sha256", "partial/sha256", "tmp"] {
            let p = root.join(sub);
            fs::create_dir_all(&p).map_err(|e| io_err(&p, e))?;
        }
        // Other mounts may share this directory: only what a gone process left is swept.
        let (swept, swept_bytes) = temp::sweep_cache(&root);
        if swept > 0 {
            log::info!(
                "cache: swept {swept} temp files ({}) left by an earlier run",
                usage::human(swept_bytes)
            );
        }
        let scanned = usage::scan(&root);
        log::debug!(
            "cache: {} holds {} blobs, {}",
            root.display(),
            scanned.blobs.len(),
            usage::human(scanned.total)
        );
        let ledger = Ledger::new(
            scanned
                .blobs
                .into_iter()
                .map(|b| (b.digest, b.bytes, b.last_used)),
        );
        let cache = Arc::new(Self {
            cfg,
            root,
            partials: Mutex::new(LruCache::unbounded()),
            opening: Mutex::new(()),
            verified: Mutex::new(LruCache::unbounded()),
            trusted: Mutex::new(HashMap::new()),
            ledger,
            stats: CacheStats::default(),
        });
        cache.make_room(None, 0, Mode::Force);
        Ok(cache)
    }

    /// The cache's versioned root (`<dir>/v2`).
    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn config(&self) -> &CacheConfig {
        &self.cfg
    }

    /// Bytes the cache holds on disk, as accounted for the size cap.
    pub fn disk_usage(&self) -> u64 {
        self.ledger.total()
    }

    /// Keep a blob from eviction (counted: every `pin` needs an `unpin`). Pinning is a
    /// use: it moves the blob to the front of the LRU list (reads the kernel serves
    /// without asking us, as with FUSE passthrough, are then still counted once per open).
    pub fn pin(&self, d: &Digest) {
        self.ledger.pin(d);
        self.note_use(d);
    }

    pub fn unpin(&self, d: &Digest) {
        self.ledger.unpin(d);
    }

    /// Pin a blob until the guard is dropped.
    pub fn pin_guard(self: &Arc<Self>, d: &Digest) -> PinGuard {
        self.pin(d);
        PinGuard {
            cache: self.clone(),
            digest: d.clone(),
        }
    }

    fn blob_path(&self, d: &Digest) -> PathBuf {
        self.root.join("blobs/sha256").join(d.hex())
    }
    fn sidecar_path(&self, d: &Digest) -> PathBuf {
        self.root
            .join("blobs/sha256")
            .join(format!("{}.crc", d.hex()))
    }
    fn stamp_path(&self, d: &Digest) -> PathBuf {
        self.root
            .join("blobs/sha256")
            .join(format!("{}.stamp", d.hex()))
    }
    fn partial_paths(&self, d: &Digest) -> (PathBuf, PathBuf) {
        let dir = self.root.join("partial/sha256");
        (dir.join(d.hex()), dir.join(format!("{}.map", d.hex())))
    }
    fn tmp_path(&self, d: &Digest, what: &str) -> PathBuf {
        temp::beside(&self.root.join("tmp").join(format!("{}.{what}", d.hex())))
    }

    /// The verified whole-blob file, if the blob is verified and its sidecar is sound.
    pub fn verified(&self, blob: &BlobRef) -> Option<Arc<Verified>> {
        if let Some(v) = lock(&self.verified).get(&blob.digest) {
            return Some(v.clone());
        }
        let path = self.blob_path(&blob.digest);
        if !path.exists() {
            return None;
        }
        let side = self.sidecar_path(&blob.digest);
        match Verified::open(&path, &side, &blob.digest, blob.size) {
            Some(v) => {
                let v = Arc::new(v);
                put_bounded(&mut lock(&self.verified), blob.digest.clone(), v.clone());
                Some(v)
            }
            None => {
                log::warn!(
                    "cache: {} is damaged or incomplete; dropping it",
                    blob.digest
                );
                CacheStats::add(&self.stats.corrupt_blocks, 1);
                self.drop_verified(&blob.digest);
                None
            }
        }
    }

    /// Whether a verified file for the blob exists (without opening or checking it).
    pub fn has_verified(&self, d: &Digest) -> bool {
        lock(&self.verified).contains(d) || self.blob_path(d).exists()
    }

    /// A verified file failed a check: forget it, on disk too.
    pub fn drop_verified(&self, d: &Digest) {
        lock(&self.verified).pop(d);
        lock(&self.trusted).remove(d);
        let freed = usage::remove_path(&self.blob_path(d))
            + usage::remove_path(&self.stamp_path(d))
            + usage::remove_path(&self.sidecar_path(d));
        self.ledger.release(d, freed);
    }

    /// The blob's partial file, opened (or created) on first use.
    pub fn partial(&self, blob: &BlobRef) -> Result<Arc<Partial>, CacheError> {
        if let Some(p) = lock(&self.partials).get(&blob.digest) {
            return Ok(p.clone());
        }
        // Opened without the LRU's lock held (making room may evict, which takes it), but
        // one opening at a time, so two threads never start the same files afresh.
        let _opening = lock(&self.opening);
        if let Some(p) = lock(&self.partials).get(&blob.digest) {
            return Ok(p.clone());
        }
        let (data, map) = self.partial_paths(&blob.digest);
        // Only regular files of our own: anything else there (a directory, a link out of
        // the cache) is removed, never followed.
        for path in [&data, &map] {
            if fs::symlink_metadata(path).is_ok_and(|m| !m.is_file()) {
                log::warn!(
                    "cache: {} is not a regular file; removing it",
                    path.display()
                );
                usage::remove_path(path);
            }
        }
        let existed = map.exists();
        let p =
            Partial::open(&data, &map, &blob.digest, blob.size).map_err(|e| io_err(&data, e))?;
        if !existed {
            self.make_room(Some(&blob.digest), partial::map_len(blob.size), Mode::Force);
        }
        let mut open = lock(&self.partials);
        // Another thread may have opened it meanwhile: one object per blob.
        if let Some(q) = open.get(&blob.digest) {
            return Ok(q.clone());
        }
        let p = Arc::new(p);
        put_bounded(&mut open, blob.digest.clone(), p.clone());
        Ok(p)
    }

    /// Store block `i` of a blob in its partial file, if the limits leave room and the
    /// disk takes it. False when it was not stored (it can still be served from memory).
    pub fn store_block(&self, p: &Partial, blob: &BlobRef, i: u64, data: &[u8]) -> bool {
        let bytes = data.len() as u64;
        if !self.make_room(Some(&blob.digest), bytes, Mode::Evict) {
            let n = self.stats.store_refused.fetch_add(1, Ordering::Relaxed);
            if n.is_power_of_two() || n == 0 {
                log::info!(
                    "cache: no room under the size cap or free-space floor; serving {} uncached",
                    blob.digest
                );
            }
            return false;
        }
        match p.write_block(i, data) {
            Ok(()) => true,
            Err(e) => {
                self.ledger.release(&blob.digest, bytes);
                let n = self.stats.write_failures.fetch_add(1, Ordering::Relaxed);
                if n.is_power_of_two() || n == 0 {
                    log::warn!(
                        "cache: cannot store block {i} of {} ({e}); serving it uncached",
                        blob.digest
                    );
                }
                false
            }
        }
    }

    /// Turn a complete partial blob, whose bytes were hashed and found equal to its digest,
    /// into a verified file: write its CRC sidecar, then rename the data into place.
    pub fn promote(&self, blob: &BlobRef, p: &Arc<Partial>) -> Result<(), CacheError> {
        let d = &blob.digest;
        let crcs = p.all_crcs().ok_or_else(|| CacheError::Integrity {
            digest: d.clone(),
            detail: "a block went missing before promotion".into(),
        })?;
        let side = self.sidecar_path(d);
        verified::write_sidecar(&self.tmp_path(d, "crc"), &side, blob.size, &crcs)?;
        let dest = self.blob_path(d);
        if let Err(e) = fs::rename(&p.data_path, &dest) {
            let _ = fs::remove_file(&side);
            return Err(io_err(&dest, e));
        }
        let map_len = usage::remove_path(&p.map_path);
        self.ledger.release(d, map_len);
        self.make_room(
            Some(d),
            verified::sidecar_len(blob.size) + verified::STAMP_LEN,
            Mode::Force,
        );
        let mut open = lock(&self.partials);
        if open.peek(d).is_some_and(|q| Arc::ptr_eq(q, p)) {
            open.pop(d);
        }
        drop(open);
        // Every block was checked as it was hashed: record that for passthrough.
        if let Ok(f) = fs::File::open(&dest) {
            if let Some(stamp) = FileStamp::of(&f) {
                self.trust(d, stamp);
            }
        }
        Ok(())
    }

    fn trust(&self, d: &Digest, stamp: FileStamp) {
        if let Err(e) = stamp.save(&self.stamp_path(d)) {
            log::debug!("cache: cannot record the check of {d}: {e}");
        }
        lock(&self.trusted).insert(d.clone(), stamp);
    }

    /// The verified file of a blob, for the kernel to read directly. The kernel will not
    /// check block CRCs, so every CRC must have been checked since the file last changed:
    /// in this process, or by an earlier one that left a matching stamp. Otherwise every
    /// CRC is checked now; a file that fails is dropped and fetched again normally.
    pub fn passthrough_file(&self, blob: &BlobRef) -> Option<fs::File> {
        let v = self.verified(blob)?;
        let stamp = FileStamp::of(&v.file)?;
        let known = lock(&self.trusted).get(&blob.digest).copied();
        let known = known.or_else(|| FileStamp::load(&self.stamp_path(&blob.digest)));
        if known != Some(stamp) {
            if !v.check_all() {
                log::warn!(
                    "cache: verified blob {} fails its checksums; refetching",
                    blob.digest
                );
                CacheStats::add(&self.stats.corrupt_blocks, 1);
                self.drop_verified(&blob.digest);
                return None;
            }
            self.trust(&blob.digest, stamp);
        } else {
            lock(&self.trusted).insert(blob.digest.clone(), stamp);
        }
        v.file.try_clone().ok()
    }

    /// Move a blob to the front of the LRU list, and now and then refresh its time on disk.
    pub fn note_use(&self, d: &Digest) {
        if self.ledger.touch(d, SystemTime::now()) {
            if let Err(e) = usage::touch(&self.root, d) {
                log::debug!("cache: cannot record the use of {d}: {e}");
            }
        }
    }

    /// Make room for `bytes` more of blob `d` (or, with `None`, just enforce the limits):
    /// evict what the size cap and free-space floor require, as far as `mode` allows.
    /// False when there is no room (never with [`Mode::Force`]).
    fn make_room(&self, d: Option<&Digest>, bytes: u64, mode: Mode) -> bool {
        let floor_need = if self.cfg.min_free_percent > 0.0 {
            evict::floor_need(
                (self.cfg.space_probe)(&self.root),
                self.cfg.min_free_percent,
                bytes,
            )
        } else {
            0
        };
        let limits = Limits {
            cap: self.cfg.max_size,
            floor_need,
        };
        let mut evict = |v: &evict::Victim| {
            self.forget_open(&v.digest);
            let freed = usage::remove_blob(&self.root, &v.digest);
            self.stats.evicted_blobs.fetch_add(1, Ordering::Relaxed);
            self.stats.evicted_bytes.fetch_add(freed, Ordering::Relaxed);
            log::debug!("cache: evicted {} ({})", v.digest, usage::human(freed));
        };
        match self.ledger.admit_with(d, bytes, limits, mode, &mut evict) {
            Admission::Refused => false,
            Admission::Admitted(_) => true,
        }
    }

    /// Close a blob's open files (they stay on disk).
    fn forget_open(&self, d: &Digest) {
        lock(&self.partials).pop(d);
        lock(&self.verified).pop(d);
        lock(&self.trusted).remove(d);
    }

    /// Drop every cached byte of a blob: open files, partial and verified files.
    pub fn forget_blob(&self, d: &Digest) {
        self.forget_open(d);
        usage::remove_blob(&self.root, d);
        self.ledger.forget(d);
    }

    /// Account `bytes` of files already written for blob `d` outside the store's own
    /// (an archive's index, in [`Self::archives_dir`]), evicting other blobs as the
    /// limits require. False when there is no room: the caller removes the files.
    pub fn admit_files(&self, d: &Digest, bytes: u64) -> bool {
        self.make_room(Some(d), bytes, Mode::Evict)
    }

    /// Where archive indexes are kept; their files count against the limits as part of
    /// their blob ([`Self::admit_files`]) and are evicted with it.
    pub fn archives_dir(&self) -> PathBuf {
        self.root.join(usage::ARCHIVES)
    }

    /// Bytes the ledger holds for one blob (tests).
    pub fn ledger_bytes(&self, d: &Digest) -> u64 {
        self.ledger.bytes_of(d)
    }

    /// Partial blobs held open now (for tests of the descriptor bound).
    pub fn open_files(&self) -> usize {
        lock(&self.partials).len() + lock(&self.verified).len()
    }
}
