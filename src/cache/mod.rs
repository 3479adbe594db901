//! The blob cache and read path: content-addressed by digest, shared by every repository,
//! tag and mount that uses the same cache directory.
//!
//! Layout under the cache dir (format `v1`, so a later format never misreads this one):
//!
//! ```text
//! v1/blobs/sha256/<hex>          a verified whole blob
//! v1/blobs/sha256/<hex>.crc      its per-chunk CRC32C sidecar
//! v1/chunks/sha256/<hex>/<n>     chunk n of a partly fetched blob (header + CRC32C + data)
//! v1/tmp/                        temp files, renamed into place when complete; swept at start
//! ```
//!
//! Trust rules: a chunk is served only if its CRC matches; anything that does not match is a
//! miss, deleted and fetched again. A blob is *verified* only once every byte has been hashed
//! and the sha256 equals its digest. Chunks are hashed in order as they arrive, so the read
//! that completes a blob learns the verdict before it returns; a mismatch fails that read
//! and drops the blob's cached bytes. Concurrent misses on a chunk share one fetch.
//!
//! Size: [`evict`] keeps the cache under `--cache-size` and above `--cache-min-free` by
//! evicting least recently used blobs, never one that is pinned by an open file. Reads:
//! [`prefetch`] fetches ahead of sequential readers through the same single-flight chunk
//! path, so a read never fetches what a read-ahead is already bringing.

pub mod chunk;
pub mod evict;
mod fetch;
pub mod flight;
pub mod manage;
pub mod prefetch;
#[cfg(test)]
mod tests;
pub mod usage;
pub mod whole;

use std::collections::HashMap;
use std::fs;
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::SystemTime;

use lru::LruCache;
use sha2::{Digest as _, Sha256};

use crate::error::CacheError;
use crate::oci::Digest;
use crate::source::Source;
use chunk::CHUNK_SIZE;
use evict::{Admission, Ledger, Limits, Mode, SpaceProbe};
use fetch::FetchSink;
use flight::{Flights, Role};
use whole::{io_err, Verified, WholeWriter};

/// When bytes are checked against the digest before they are served.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum VerifyMode {
    /// Serve ranges as they arrive (each checked against its chunk CRC once cached); the
    /// whole blob is checked against its digest when its last byte arrives.
    #[default]
    Lazy,
    /// Fetch and verify a whole blob before serving its first byte.
    Strict,
}

/// Cache settings.
#[derive(Debug, Clone)]
pub struct CacheConfig {
    pub dir: PathBuf,
    /// Blobs up to this size are fetched whole and verified before any byte is served.
    pub small_blob: u64,
    pub verify: VerifyMode,
    /// Recently used chunks kept in memory.
    pub hot_chunks: usize,
    /// Most chunks fetched in one range request.
    pub max_run: u64,
    /// Cap on the cache's size on disk, if any.
    pub max_size: Option<u64>,
    /// Share (0–100) of the cache's filesystem to keep free.
    pub min_free_percent: f64,
    /// Bound on memory for in-flight and read-ahead data.
    pub max_memory: u64,
    /// How free space on the cache's filesystem is measured (statvfs; tests substitute).
    pub space_probe: SpaceProbe,
}

impl CacheConfig {
    pub fn new(dir: PathBuf) -> Self {
        Self {
            dir,
            small_blob: 4 * 1024 * 1024,
            verify: VerifyMode::Lazy,
            hot_chunks: 16,
            max_run: 16,
            max_size: None,
            min_free_percent: 5.0,
            max_memory: 64 * 1024 * 1024,
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

/// Counters for `orasfs stats` and tests.
#[derive(Debug, Default)]
pub struct CacheStats {
    pub hits: AtomicU64,
    pub misses: AtomicU64,
    pub fetch_requests: AtomicU64,
    pub fetched_bytes: AtomicU64,
    pub verified_blobs: AtomicU64,
    pub integrity_failures: AtomicU64,
    pub corrupt_chunks: AtomicU64,
    pub write_failures: AtomicU64,
    /// Blobs evicted to keep the size cap or the free-space floor, and their bytes.
    pub evicted_blobs: AtomicU64,
    pub evicted_bytes: AtomicU64,
    /// Chunks served without being written because the cap or floor left no room.
    pub store_refused: AtomicU64,
    /// Chunks claimed by read-ahead, and read-ahead runs skipped for want of memory.
    pub prefetch_chunks: AtomicU64,
    pub prefetch_skipped: AtomicU64,
    pub prefetch_failures: AtomicU64,
}

struct HashState {
    next: u64,
    hasher: Sha256,
    promoting: bool,
}

type Chunk = Arc<Vec<u8>>;
/// What a chunk's flight yields: the chunk, or `None` when a read-ahead gave up on it,
/// and whoever waited should fetch it itself.
type ChunkFlight = Option<Chunk>;
/// The duty to fetch one chunk that others may be waiting for.
pub(crate) type ChunkLead = flight::Lead<(Digest, u64), ChunkFlight>;

/// Who a fetch is for: a read waiting on it, or read-ahead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LeadMode {
    Foreground,
    ReadAhead,
}

/// How many times a read takes over chunks whose read-ahead gave up before it fails.
const TAKEOVERS: usize = 4;

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

/// Counts background promotions, so tests and shutdown can wait for them.
#[derive(Default)]
struct Background {
    running: Mutex<usize>,
    idle: Condvar,
}

struct BackgroundTask<'a>(&'a Background);

impl Drop for BackgroundTask<'_> {
    fn drop(&mut self) {
        let mut n = lock(&self.0.running);
        *n -= 1;
        if *n == 0 {
            self.0.idle.notify_all();
        }
    }
}

/// The cache. Use it through an `Arc`: completing a blob promotes it in the background.
pub struct BlobCache {
    cfg: CacheConfig,
    root: PathBuf,
    hashing: Mutex<HashMap<Digest, Arc<Mutex<HashState>>>>,
    /// How often each blob has failed its digest check, so that a file opened before a
    /// failure can refuse every later read (it may already have served bad bytes).
    failures: Mutex<HashMap<Digest, u64>>,
    verified: Mutex<HashMap<Digest, Arc<Verified>>>,
    chunk_flights: Flights<(Digest, u64), ChunkFlight>,
    whole_flights: Flights<Digest, ()>,
    hot: Mutex<LruCache<(Digest, u64), Chunk>>,
    /// Whole blobs verified in memory because the cache could not store them (disk full,
    /// read-only): served from here, uncached.
    uncached: Mutex<LruCache<Digest, Chunk>>,
    /// Verified files whose chunk CRCs were all checked in this process before the kernel
    /// was given one to read directly, with the file's state at that check.
    rechecked: Mutex<HashMap<Digest, FileStamp>>,
    ledger: Ledger,
    background: Background,
    pub stats: CacheStats,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl BlobCache {
    /// Open (creating if needed) the cache, sweep temp files a crash left behind, measure
    /// what it holds, and evict down to the limits if they shrank since the last run.
    pub fn open(cfg: CacheConfig) -> Result<Arc<Self>, CacheError> {
        let root = cfg.dir.join("v1");
        for sub in ["blobs/sha256", "chunks/sha256", "tmp"] {
            let p = root.join(sub);
            fs::create_dir_all(&p).map_err(|e| io_err(&p, e))?;
        }
        let tmp = root.join("tmp");
        let mut swept = 0;
        if let Ok(entries) = fs::read_dir(&tmp) {
            for e in entries.flatten() {
                usage::remove_path(&e.path());
                if fs::symlink_metadata(e.path()).is_err() {
                    swept += 1;
                }
            }
        }
        if swept > 0 {
            log::info!("cache: swept {swept} temp files left by an earlier run");
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
        let hot = NonZeroUsize::new(cfg.hot_chunks.max(1)).unwrap_or(NonZeroUsize::MIN);
        let cache = Arc::new(Self {
            cfg,
            root,
            hashing: Mutex::new(HashMap::new()),
            failures: Mutex::new(HashMap::new()),
            verified: Mutex::new(HashMap::new()),
            chunk_flights: Flights::default(),
            whole_flights: Flights::default(),
            hot: Mutex::new(LruCache::new(hot)),
            uncached: Mutex::new(LruCache::new(NonZeroUsize::MIN.saturating_add(3))),
            rechecked: Mutex::new(Default::default()),
            ledger,
            background: Background::default(),
            stats: CacheStats::default(),
        });
        cache.make_room(None, 0, Mode::Force);
        Ok(cache)
    }

    /// The cache's versioned root (`<dir>/v1`).
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

    /// Whether reads of this blob go chunk by chunk (and so may read ahead), rather than
    /// through a whole-blob fetch.
    pub fn reads_ahead(&self, blob: &BlobRef) -> bool {
        blob.size > self.cfg.small_blob && self.cfg.verify == VerifyMode::Lazy
    }

    /// Wait until background promotions have finished.
    pub fn wait_for_background(&self) {
        let mut n = lock(&self.background.running);
        while *n > 0 {
            n = self
                .background
                .idle
                .wait(n)
                .unwrap_or_else(|e| e.into_inner());
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
    fn chunk_dir(&self, d: &Digest) -> PathBuf {
        self.root.join("chunks/sha256").join(d.hex())
    }
    fn chunk_path(&self, d: &Digest, i: u64) -> PathBuf {
        self.chunk_dir(d).join(i.to_string())
    }
    fn tmp_dir(&self) -> PathBuf {
        self.root.join("tmp")
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
        match Verified::open(&path, &self.sidecar_path(&blob.digest), blob.size) {
            Some(v) => {
                let v = Arc::new(v);
                lock(&self.verified).insert(blob.digest.clone(), v.clone());
                Some(v)
            }
            None => {
                log::warn!(
                    "cache: {} is damaged or incomplete; dropping it",
                    blob.digest
                );
                self.stats.corrupt_chunks.fetch_add(1, Ordering::Relaxed);
                self.drop_verified(&blob.digest);
                None
            }
        }
    }

    /// Whether every byte of the blob has been checked against its digest.
    pub fn is_verified(&self, blob: &BlobRef) -> bool {
        self.verified(blob).is_some()
            || lock(&self.hashing)
                .get(&blob.digest)
                .is_some_and(|s| lock(s).promoting)
    }

    fn drop_verified(&self, d: &Digest) {
        lock(&self.verified).remove(d);
        lock(&self.rechecked).remove(d);
        let freed =
            usage::remove_path(&self.blob_path(d)) + usage::remove_path(&self.sidecar_path(d));
        self.ledger.release(d, freed);
    }

    /// Read `len` bytes at `offset`, fetching what is missing.
    pub fn read(
        self: &Arc<Self>,
        src: &dyn Source,
        blob: &BlobRef,
        offset: u64,
        len: u32,
    ) -> Result<Vec<u8>, CacheError> {
        if offset >= blob.size || len == 0 {
            return Ok(Vec::new());
        }
        let _pin = self.pin_guard(&blob.digest);
        self.note_use(&blob.digest);
        let end = blob.size.min(offset + len as u64);
        if let Some(bytes) = lock(&self.uncached).get(&blob.digest) {
            return Ok(bytes[offset as usize..end as usize].to_vec());
        }
        if !self.reads_ahead(blob) && self.verified(blob).is_none() {
            match self.ensure_verified(src, blob) {
                Ok(_) => {}
                // The cache cannot take the blob (disk full, read-only): verify it in
                // memory and serve it uncached, if it fits the memory budget.
                Err(e) if is_storage_error(&e) && blob.size <= self.cfg.max_memory => {
                    let n = self.stats.write_failures.fetch_add(1, Ordering::Relaxed);
                    if n.is_power_of_two() || n == 0 {
                        log::warn!(
                            "cache: cannot store {} ({e}); serving it uncached",
                            blob.digest
                        );
                    }
                    let bytes = self.fetch_in_memory(src, blob)?;
                    let out = bytes[offset as usize..end as usize].to_vec();
                    lock(&self.uncached).put(blob.digest.clone(), bytes);
                    return Ok(out);
                }
                Err(e) => return Err(e),
            }
        }
        let first = offset / CHUNK_SIZE;
        let last = (end - 1) / CHUNK_SIZE;
        let chunks = self.load_chunks(src, blob, first, last + 1)?;
        let mut out = Vec::with_capacity((end - offset) as usize);
        for (k, c) in chunks.iter().enumerate() {
            let base = (first + k as u64) * CHUNK_SIZE;
            let from = offset.max(base) - base;
            let to = end.min(base + c.len() as u64) - base;
            out.extend_from_slice(&c[from as usize..to as usize]);
        }
        if !self.is_verified(blob) {
            self.advance_hash(blob, first, last + 1)?;
        }
        Ok(out)
    }

    /// Fetch a whole blob into memory and check it against its digest.
    fn fetch_in_memory(&self, src: &dyn Source, blob: &BlobRef) -> Result<Chunk, CacheError> {
        let mut sink = crate::source::VecSink::with_limit(blob.size);
        self.stats.fetch_requests.fetch_add(1, Ordering::Relaxed);
        src.fetch_blob(&blob.repo, &blob.digest, blob.size, None, &mut sink)?;
        self.stats
            .fetched_bytes
            .fetch_add(sink.bytes.len() as u64, Ordering::Relaxed);
        let actual = Digest::of(&sink.bytes);
        if sink.bytes.len() as u64 != blob.size || actual != blob.digest {
            self.record_failure(&blob.digest, false);
            return Err(CacheError::Integrity {
                digest: blob.digest.clone(),
                detail: format!("{} bytes hashing to {actual}", sink.bytes.len()),
            });
        }
        Ok(Arc::new(sink.bytes))
    }

    /// The verified file of a blob, for the kernel to read directly. The kernel will not
    /// check chunk CRCs, so every CRC is checked before the first hand-over, and again
    /// whenever the file has changed since (size, mtime or ctime); a file that fails is
    /// dropped and fetched again through the normal path.
    pub fn passthrough_file(&self, blob: &BlobRef) -> Option<std::fs::File> {
        let v = self.verified(blob)?;
        let stamp = FileStamp::of(&v.file)?;
        if lock(&self.rechecked).get(&blob.digest) != Some(&stamp) {
            let sound =
                (0..chunk::chunk_count(blob.size)).all(|i| v.chunk(&blob.digest, i).is_some());
            if !sound {
                log::warn!(
                    "cache: verified blob {} fails its checksums; refetching",
                    blob.digest
                );
                self.stats.corrupt_chunks.fetch_add(1, Ordering::Relaxed);
                self.drop_verified(&blob.digest);
                return None;
            }
            lock(&self.rechecked).insert(blob.digest.clone(), stamp);
        }
        v.file.try_clone().ok()
    }

    /// Move a blob to the front of the LRU list, and now and then refresh its time on disk.
    fn note_use(&self, d: &Digest) {
        if self.ledger.touch(d, SystemTime::now()) {
            if let Err(e) = usage::touch(&self.root, d) {
                log::debug!("cache: cannot record the use of {d}: {e}");
            }
        }
    }

    /// Fetch (if needed) the whole blob and verify it; afterwards it is a verified file.
    pub fn ensure_verified(
        &self,
        src: &dyn Source,
        blob: &BlobRef,
    ) -> Result<Arc<Verified>, CacheError> {
        loop {
            if let Some(v) = self.verified(blob) {
                return Ok(v);
            }
            match self.whole_flights.join(blob.digest.clone()) {
                Role::Follower(f) => {
                    f.wait().map_err(CacheError::SharedFetch)?;
                }
                Role::Leader(lead) => {
                    if let Some(v) = self.verified(blob) {
                        lead.finish(Ok(()));
                        return Ok(v);
                    }
                    let r = self.fetch_whole(src, blob);
                    lead.finish(r.as_ref().map(|_| ()).map_err(|e| e.to_string()));
                    r?;
                }
            }
        }
    }

    fn fetch_whole(&self, src: &dyn Source, blob: &BlobRef) -> Result<(), CacheError> {
        let mut sink = FetchSink::whole(self, blob);
        self.stats.fetch_requests.fetch_add(1, Ordering::Relaxed);
        let fetched = src
            .fetch_blob(&blob.repo, &blob.digest, blob.size, None, &mut sink)
            .map_err(|e| sink.explain(e));
        self.stats
            .fetched_bytes
            .fetch_add(sink.received, Ordering::Relaxed);
        sink.finish(fetched).map(|_| ())
    }

    /// Account a whole-blob file about to be written, evicting others to make room. It is
    /// admitted even over the limits: a blob fetched whole must land to be verified.
    fn reserve_whole(&self, blob: &BlobRef) -> u64 {
        let bytes = blob.size + whole::sidecar_len(blob.size);
        self.make_room(Some(&blob.digest), bytes, Mode::Force);
        bytes
    }

    /// A whole-blob file landed: its chunks and hashing state are redundant now.
    fn settle_whole(&self, blob: &BlobRef) {
        let freed = usage::remove_path(&self.chunk_dir(&blob.digest));
        self.ledger.release(&blob.digest, freed);
        lock(&self.hashing).remove(&blob.digest);
    }

    /// Whether chunk `i` is in memory or on disk (without reading or checking it).
    fn has_chunk(&self, blob: &BlobRef, i: u64) -> bool {
        lock(&self.hot).contains(&(blob.digest.clone(), i))
            || lock(&self.verified).contains_key(&blob.digest)
            || self.blob_path(&blob.digest).exists()
            || self.chunk_path(&blob.digest, i).exists()
    }

    /// A chunk from memory, the verified file or the chunk files, checked; `None` on a miss.
    fn cached_chunk(&self, blob: &BlobRef, i: u64) -> Option<Chunk> {
        let key = (blob.digest.clone(), i);
        if let Some(c) = lock(&self.hot).get(&key) {
            return Some(c.clone());
        }
        let data = if let Some(v) = self.verified(blob) {
            match v.chunk(&blob.digest, i) {
                Some(d) => d,
                None => {
                    log::warn!(
                        "cache: chunk {i} of verified blob {} fails its checksum; refetching",
                        blob.digest
                    );
                    self.stats.corrupt_chunks.fetch_add(1, Ordering::Relaxed);
                    self.drop_verified(&blob.digest);
                    return None;
                }
            }
        } else {
            let path = self.chunk_path(&blob.digest, i);
            let raw = fs::read(&path).ok()?;
            let len = chunk::chunk_len(blob.size, i) as usize;
            match chunk::decode(&blob.digest, i, len, raw) {
                Some(d) => d,
                None => {
                    log::warn!(
                        "cache: chunk {i} of {} fails its checksum; refetching",
                        blob.digest
                    );
                    self.stats.corrupt_chunks.fetch_add(1, Ordering::Relaxed);
                    let freed = usage::remove_path(&path);
                    self.ledger.release(&blob.digest, freed);
                    return None;
                }
            }
        };
        let c = Arc::new(data);
        lock(&self.hot).put(key, c.clone());
        Some(c)
    }

    /// Chunks `first..end` of a blob, fetching the missing ones in contiguous runs. A
    /// chunk another reader or a read-ahead is fetching is waited for, not fetched again;
    /// if a read-ahead gives up on it, this read fetches it itself.
    fn load_chunks(
        self: &Arc<Self>,
        src: &dyn Source,
        blob: &BlobRef,
        first: u64,
        end: u64,
    ) -> Result<Vec<Chunk>, CacheError> {
        let mut out: Vec<Option<Chunk>> = vec![None; (end - first) as usize];
        let mut todo: Vec<u64> = (first..end).collect();
        for attempt in 0..=TAKEOVERS {
            let mut leads = Vec::new();
            let mut follows = Vec::new();
            for i in todo.drain(..) {
                let slot = &mut out[(i - first) as usize];
                if let Some(c) = self.cached_chunk(blob, i) {
                    if attempt == 0 {
                        self.stats.hits.fetch_add(1, Ordering::Relaxed);
                    }
                    *slot = Some(c);
                    continue;
                }
                match self.chunk_flights.join((blob.digest.clone(), i)) {
                    Role::Leader(lead) => match self.cached_chunk(blob, i) {
                        // Another reader stored it between our look and our claim.
                        Some(c) => {
                            lead.finish(Ok(Some(c.clone())));
                            *slot = Some(c);
                        }
                        None => leads.push((i, lead)),
                    },
                    Role::Follower(f) => follows.push((i, f)),
                }
            }
            if attempt == 0 {
                self.stats
                    .misses
                    .fetch_add((leads.len() + follows.len()) as u64, Ordering::Relaxed);
            }
            for (i, c) in self.fetch_leads(src, blob, leads, LeadMode::Foreground)? {
                out[(i - first) as usize] = Some(c);
            }
            for (i, f) in follows {
                match f.wait().map_err(CacheError::SharedFetch)? {
                    Some(c) => out[(i - first) as usize] = Some(c),
                    None => todo.push(i),
                }
            }
            if todo.is_empty() {
                break;
            }
            log::debug!(
                "{}: read-ahead gave up on {} chunks; fetching them",
                blob.digest,
                todo.len()
            );
        }
        if !todo.is_empty() {
            return Err(CacheError::SharedFetch(format!(
                "read-ahead of {} kept failing",
                blob.digest
            )));
        }
        Ok(out.into_iter().flatten().collect())
    }

    /// Claim the fetch of every chunk in `first..end` that is neither cached nor in
    /// flight, for a read-ahead. Readers that need one of them wait for it from now on.
    fn claim_missing(&self, blob: &BlobRef, first: u64, end: u64) -> Vec<(u64, ChunkLead)> {
        let mut out = Vec::new();
        for i in first..end {
            if self.has_chunk(blob, i) {
                continue;
            }
            if let Role::Leader(lead) = self.chunk_flights.join((blob.digest.clone(), i)) {
                match self
                    .has_chunk(blob, i)
                    .then(|| self.cached_chunk(blob, i))
                    .flatten()
                {
                    Some(c) => lead.finish(Ok(Some(c))),
                    None => out.push((i, lead)),
                }
            }
        }
        out
    }

    /// Fetch the chunks we lead, one range request per contiguous run of up to `max_run`.
    /// On a failure the remaining leads are released (see [`FetchSink::finish`]).
    fn fetch_leads(
        &self,
        src: &dyn Source,
        blob: &BlobRef,
        leads: Vec<(u64, ChunkLead)>,
        mode: LeadMode,
    ) -> Result<Vec<(u64, Chunk)>, CacheError> {
        let mut got = Vec::new();
        let mut leads = leads.into_iter().peekable();
        while let Some((start, lead)) = leads.next() {
            let mut run = vec![lead];
            let mut stop = start + 1;
            while stop - start < self.cfg.max_run.max(1)
                && leads.peek().is_some_and(|(i, _)| *i == stop)
            {
                if let Some((_, l)) = leads.next() {
                    run.push(l);
                }
                stop += 1;
            }
            match self.fetch_run(src, blob, start, run, mode) {
                Ok(c) => got.extend(c),
                Err(e) => {
                    let msg = e.to_string();
                    for (_, l) in leads {
                        l.finish(match mode {
                            LeadMode::Foreground => Err(msg.clone()),
                            LeadMode::ReadAhead => Ok(None),
                        });
                    }
                    return Err(e);
                }
            }
        }
        Ok(got)
    }

    /// Fetch chunks `start..start + run.len()` with one range request, storing each and
    /// handing it to its waiters as it completes.
    fn fetch_run(
        &self,
        src: &dyn Source,
        blob: &BlobRef,
        start: u64,
        run: Vec<ChunkLead>,
        mode: LeadMode,
    ) -> Result<Vec<(u64, Chunk)>, CacheError> {
        let stop = start + run.len() as u64;
        let from = start * CHUNK_SIZE;
        let to = blob.size.min(stop * CHUNK_SIZE);
        let mut sink = FetchSink::range(self, blob, start, run, mode);
        self.stats.fetch_requests.fetch_add(1, Ordering::Relaxed);
        let fetched = src
            .fetch_blob(
                &blob.repo,
                &blob.digest,
                blob.size,
                Some(from..to),
                &mut sink,
            )
            .map_err(|e| sink.explain(e));
        self.stats
            .fetched_bytes
            .fetch_add(sink.received, Ordering::Relaxed);
        sink.finish(fetched)
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
        match self.ledger.admit(d, bytes, limits, mode) {
            Admission::Refused => false,
            Admission::Admitted(victims) => {
                for v in victims {
                    self.forget_memory(&v.digest);
                    let freed = usage::remove_blob(&self.root, &v.digest);
                    self.stats.evicted_blobs.fetch_add(1, Ordering::Relaxed);
                    self.stats.evicted_bytes.fetch_add(freed, Ordering::Relaxed);
                    log::debug!("cache: evicted {} ({})", v.digest, usage::human(freed));
                }
                true
            }
        }
    }

    /// Keep a fetched chunk in memory and on disk. When the limits leave no room, or the
    /// disk fails (full, read-only), the chunk is still served, from memory.
    fn store_chunk(&self, blob: &BlobRef, i: u64, data: &Chunk) {
        lock(&self.hot).put((blob.digest.clone(), i), data.clone());
        let bytes = (chunk::HEADER_LEN + data.len()) as u64;
        if !self.make_room(Some(&blob.digest), bytes, Mode::Evict) {
            let n = self.stats.store_refused.fetch_add(1, Ordering::Relaxed);
            if n.is_power_of_two() || n == 0 {
                log::info!(
                    "cache: no room under the size cap or free-space floor; serving {} uncached",
                    blob.digest
                );
            }
            return;
        }
        let dir = self.chunk_dir(&blob.digest);
        let tmp = self.tmp_dir().join(format!(
            "{}.{i}.{}.chunk",
            blob.digest.hex(),
            rand::random::<u32>()
        ));
        let write = || -> std::io::Result<()> {
            fs::create_dir_all(&dir)?;
            fs::write(&tmp, chunk::encode(&blob.digest, i, data))?;
            fs::rename(&tmp, self.chunk_path(&blob.digest, i))
        };
        if let Err(e) = write() {
            let _ = fs::remove_file(&tmp);
            self.ledger.release(&blob.digest, bytes);
            let n = self.stats.write_failures.fetch_add(1, Ordering::Relaxed);
            if n.is_power_of_two() || n == 0 {
                log::warn!(
                    "cache: cannot store chunk {i} of {} ({e}); serving it uncached",
                    blob.digest
                );
            }
        }
    }

    /// Feed chunks to the blob's running sha256 in order, as far as they are present. When
    /// the last one is in, compare with the digest: a match promotes the blob to a verified
    /// file in the background; a mismatch drops every cached byte of it and fails.
    /// Runs only when chunks `touched_from..touched_to` reach the hashing frontier.
    fn advance_hash(
        self: &Arc<Self>,
        blob: &BlobRef,
        touched_from: u64,
        touched_to: u64,
    ) -> Result<(), CacheError> {
        let count = chunk::chunk_count(blob.size);
        let state = lock(&self.hashing)
            .entry(blob.digest.clone())
            .or_insert_with(|| {
                Arc::new(Mutex::new(HashState {
                    next: 0,
                    hasher: Sha256::new(),
                    promoting: false,
                }))
            })
            .clone();
        let mut st = lock(&state);
        if st.promoting || st.next < touched_from || st.next > touched_to {
            return Ok(());
        }
        while st.next < count {
            let Some(c) = self.cached_chunk(blob, st.next) else {
                break;
            };
            st.hasher.update(c.as_slice());
            st.next += 1;
        }
        if st.next < count {
            return Ok(());
        }
        let actual = Digest::from_hasher(std::mem::take(&mut st.hasher));
        if actual != blob.digest {
            st.next = 0;
            drop(st);
            self.record_failure(&blob.digest, true);
            log::error!(
                "{}: the fetched bytes hash to {actual}; dropping them from the cache",
                blob.digest
            );
            self.forget_blob(&blob.digest);
            return Err(CacheError::Integrity {
                digest: blob.digest.clone(),
                detail: format!("content hashes to {actual}"),
            });
        }
        st.promoting = true;
        drop(st);
        self.stats.verified_blobs.fetch_add(1, Ordering::Relaxed);
        log::debug!("{}: all {} bytes verified", blob.digest, blob.size);
        *lock(&self.background.running) += 1;
        let cache = self.clone();
        let blob = blob.clone();
        std::thread::spawn(move || {
            let _task = BackgroundTask(&cache.background);
            let _pin = cache.pin_guard(&blob.digest);
            cache.promote(&blob);
        });
        Ok(())
    }

    /// Count a digest mismatch of `d`. `served` says whether bytes of it may already have
    /// reached a reader (lazy reads); then files open on it fail from now on.
    pub(crate) fn record_failure(&self, d: &Digest, served: bool) {
        self.stats
            .integrity_failures
            .fetch_add(1, Ordering::Relaxed);
        if served {
            *lock(&self.failures).entry(d.clone()).or_insert(0) += 1;
        }
    }

    /// How often blob `d` failed its digest check after some of its bytes were served.
    pub fn failures(&self, d: &Digest) -> u64 {
        lock(&self.failures).get(d).copied().unwrap_or(0)
    }

    /// Turn a blob's chunks into a verified whole-blob file (hashing again while copying).
    /// The copy briefly doubles the blob's footprint, so it evicts others to make room
    /// only for a blob of at most a quarter of the cap; a bigger one is promoted only into
    /// room that is free already. Without room, the chunks stay as they are (they are
    /// served just the same; only the verdict is not kept across a restart).
    fn promote(&self, blob: &BlobRef) {
        let bytes = blob.size + whole::sidecar_len(blob.size);
        let mode = match self.cfg.max_size {
            Some(cap) if bytes > cap / 4 => Mode::Spare,
            _ => Mode::Evict,
        };
        if !self.make_room(Some(&blob.digest), bytes, mode) {
            log::debug!(
                "cache: no room to promote {}; keeping its chunks",
                blob.digest
            );
            return;
        }
        let result = (|| -> Result<(), CacheError> {
            let mut w = WholeWriter::create(&self.tmp_dir(), &blob.digest, blob.size)?;
            for i in 0..chunk::chunk_count(blob.size) {
                let c = self
                    .cached_chunk(blob, i)
                    .ok_or_else(|| CacheError::Integrity {
                        digest: blob.digest.clone(),
                        detail: format!("chunk {i} vanished before promotion"),
                    })?;
                w.write(&c).map_err(|e| io_err(&self.tmp_dir(), e))?;
            }
            w.finish(
                &self.blob_path(&blob.digest),
                &self.sidecar_path(&blob.digest),
            )
        })();
        match result {
            Ok(()) => self.settle_whole(blob),
            Err(e) => {
                log::warn!("cache: could not promote {}: {e}", blob.digest);
                self.ledger.release(&blob.digest, bytes);
                if matches!(e, CacheError::Integrity { .. }) {
                    self.forget_blob(&blob.digest);
                } else if let Some(s) = lock(&self.hashing).get(&blob.digest) {
                    let mut s = lock(s);
                    s.promoting = false;
                    s.next = 0;
                    s.hasher = Sha256::new();
                }
            }
        }
    }

    /// Drop a blob's in-memory state: hashing progress, verified file, hot chunks.
    fn forget_memory(&self, d: &Digest) {
        lock(&self.hashing).remove(d);
        lock(&self.verified).remove(d);
        let mut hot = lock(&self.hot);
        let stale: Vec<_> = hot
            .iter()
            .map(|(k, _)| k.clone())
            .filter(|(k, _)| k == d)
            .collect();
        for k in stale {
            hot.pop(&k);
        }
    }

    /// Drop every cached byte of a blob: memory, chunk files and verified file.
    fn forget_blob(&self, d: &Digest) {
        self.forget_memory(d);
        usage::remove_blob(&self.root, d);
        self.ledger.forget(d);
    }
}

/// Whether a failure came from storing into the cache rather than from the source.
fn is_storage_error(e: &CacheError) -> bool {
    matches!(
        e,
        CacheError::Io { .. } | CacheError::Source(crate::error::SourceError::Io { .. })
    )
}

/// What changes when a file's content is modified in place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileStamp {
    size: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl FileStamp {
    fn of(f: &std::fs::File) -> Option<Self> {
        use std::os::unix::fs::MetadataExt;
        let m = f.metadata().ok()?;
        Some(Self {
            size: m.len(),
            mtime: (m.mtime(), m.mtime_nsec()),
            ctime: (m.ctime(), m.ctime_nsec()),
        })
    }
}
