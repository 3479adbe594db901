//! The read path: which bytes of a blob to fetch, from where, verified how, before they
//! are served. [`BlobReader`] owns the [`Source`] and uses the [`BlobCache`] store.
//!
//! - **Fetch what is read.** A read needs the 16 KiB blocks it touches. Blocks the store
//!   holds are read back and checked against their CRC; missing ones are claimed
//!   (single-flight per block, [`state`]), merged into runs of adjacent blocks, one range
//!   request per run (at most [`ReadConfig::max_request`]), disjoint runs in parallel.
//!   A block another reader is fetching is waited for, not fetched twice.
//! - **Stream what is streamed.** A handle whose reads form a sequential run gets
//!   read-ahead ([`ahead`]): windows of large range requests run by a pool of workers,
//!   several in parallel (a link that caps each connection is then used several times
//!   over). Every fetched block is written once, into the blob's final file.
//! - **Verify.** Blocks are fed to the blob's sha256 in order as they land (the block in
//!   hand, or read back when it arrived out of order). When the last one is in, the digest
//!   decides: a match renames the partial file into a verified file (no copy); a mismatch
//!   drops every cached byte of the blob and fails the read that completed it, and every
//!   file that was open on it. Small blobs (at most [`ReadConfig::small_blob`]) and
//!   `--verify strict` are fetched whole and verified before their first byte is served.
//! - **When the store cannot take bytes** (disk full, read-only, size cap), a read serves
//!   the blocks it fetched from memory; small blobs are verified in memory and kept in a
//!   small LRU.
//!
//! Threads: FUSE worker threads call [`BlobReader::read`] and block on the network (each
//! source call runs on the source's own runtime). Read-ahead runs on [`WORKERS`] pool
//! threads. Hashing runs on whichever thread lands the block at the hashing frontier,
//! without blocking for another hasher (a `try_lock`, then a re-check so no block is left
//! behind); a foreground read hashes at most [`FOREGROUND_HASH`] blocks read back from
//! disk and leaves the rest to a pool worker.
//!
//! Lock order (a lock is only taken while holding those before it in this list):
//! `Inner::states` → `BlobState::partial` → store locks (`BlobCache` LRUs, ledger, a
//! `Partial`'s map); `BlobState::hash` → `BlobState::partial`, `Inner::failures` → store
//! locks (the verdict is drawn and acted on under the hash lock);
//! `BlobState::flight` is a leaf (never held while taking another lock). No lock is held
//! across a network call.

pub mod ahead;
mod fill;
pub mod index;
mod state;

use std::collections::{BTreeMap, HashMap};
use std::num::NonZeroUsize;
use std::ops::Range;
use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex, TryLockError, Weak};

use lru::LruCache;
use sha2::Digest as _;

use crate::cache::block::{append_part, block_count, blocks_of, BLOCK_SIZE};
use crate::cache::{lock, BlobCache, BlobRef, CacheStats, PinGuard};
use crate::error::CacheError;
use crate::oci::Digest;
use crate::source::Source;
use ahead::ReadAhead;
use fill::FillSink;
use index::{BlobIndex, IndexHint, Indexes, Trust};
use state::{runs, BlobState};

/// Read-ahead worker threads.
pub const WORKERS: usize = 8;
/// Blocks a foreground read hashes from disk before leaving the rest to a worker.
pub const FOREGROUND_HASH: u64 = 64;
/// How many times a read fetches blocks itself that another fetch gave up without an
/// error to share (read-ahead failed, or the store could not take them).
const TAKEOVERS: usize = 3;
/// A foreground read that keeps what it fetches.
const READER: Fetcher = Fetcher::Reader { keep: true };

/// When bytes are checked against the digest before they are served.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum VerifyMode {
    /// Serve ranges as they arrive (each checked against its block CRC once cached); the
    /// whole blob is checked against its digest when its last byte arrives.
    #[default]
    Lazy,
    /// Never serve a byte not checked against a digest: serve lazily when a block index
    /// bound by the manifest exists, else fetch and verify a whole blob before serving
    /// its first byte.
    Strict,
    /// Like `Strict`, but a layer with no block index is refused (EACCES) instead of
    /// fetched whole; small blobs are still verified whole.
    RequireIndex,
}

/// How a blob's bytes reach a reader.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ReadMode {
    /// Block by block, as read (each block checked against the index, if any).
    Blocks,
    /// Fetched and verified whole before the first byte.
    Whole,
}

/// Read path settings.
#[derive(Debug, Clone)]
pub struct ReadConfig {
    /// Blobs up to this size are fetched whole and verified before any byte is served.
    pub small_blob: u64,
    pub verify: VerifyMode,
    /// Most bytes asked for in one range request.
    pub max_request: u64,
    /// Bound on blobs verified in memory because the store could not take them.
    pub max_memory: u64,
}

impl Default for ReadConfig {
    fn default() -> Self {
        Self {
            small_blob: 4 * 1024 * 1024,
            verify: VerifyMode::Lazy,
            max_request: 4 * 1024 * 1024,
            max_memory: 64 * 1024 * 1024,
        }
    }
}

/// Who a fetch is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fetcher {
    /// A read that waits for the bytes, and keeps them to serve (`keep`). Its failure
    /// answers the readers that waited for the same blocks: one fetch, one errno.
    Reader { keep: bool },
    /// Read-ahead: nobody asked for these bytes yet. A failure is not passed on: a reader
    /// waiting for the blocks fetches them itself.
    Ahead,
}

/// Whether a hashing call may wait for another hasher.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum HashWait {
    /// Hash what this thread can without waiting, at most [`FOREGROUND_HASH`] blocks from
    /// disk, and hand the rest to a worker.
    No,
    /// Hash everything present, waiting for the lock (background work, strict mode).
    Yes,
}

/// Jobs queued or running, so tests and shutdown can wait for quiet.
#[derive(Default)]
struct Pending {
    count: Mutex<usize>,
    idle: Condvar,
}

/// Background work: fetch claimed blocks ahead of a reader, or catch up hashing.
enum Job {
    Fetch {
        state: Arc<BlobState>,
        blocks: Range<u64>,
        generation: u64,
        _pin: PinGuard,
    },
    Hash {
        state: Arc<BlobState>,
        _pin: PinGuard,
    },
}

struct Queued {
    job: Option<Job>,
    pending: Arc<Pending>,
}

impl Drop for Queued {
    fn drop(&mut self) {
        // A fetch dropped unrun (the pool is shutting down) lets its waiters fetch.
        if let Some(Job::Fetch { state, blocks, .. }) = self.job.take() {
            state.release(blocks);
        }
        let mut n = lock(&self.pending.count);
        *n -= 1;
        if *n == 0 {
            self.pending.idle.notify_all();
        }
    }
}

/// The shared part of the reader, used by FUSE threads and pool workers alike.
pub(crate) struct Inner {
    cache: Arc<BlobCache>,
    src: Arc<dyn Source>,
    cfg: ReadConfig,
    states: Mutex<HashMap<Digest, Weak<BlobState>>>,
    /// How often each blob has failed its digest check after bytes of it were served, so
    /// that a file opened before a failure can refuse every later read.
    failures: Mutex<HashMap<Digest, u64>>,
    /// Small blobs verified in memory because the store could not take them.
    uncached: Mutex<LruCache<Digest, Arc<Vec<u8>>>>,
    indexes: Indexes,
    /// Blobs refused for want of an index (logged once each).
    refused: Mutex<std::collections::HashSet<Digest>>,
    jobs: Mutex<Option<mpsc::Sender<Queued>>>,
    pending: Arc<Pending>,
}

/// An open file's view of its blob: the blob's state, the handle's read-ahead, and a pin.
pub struct OpenBlob {
    state: Arc<BlobState>,
    ahead: Mutex<ReadAhead>,
    failures_at_open: u64,
    _pin: PinGuard,
}

impl OpenBlob {
    pub fn blob(&self) -> &BlobRef {
        &self.state.blob
    }
}

/// The read path. Dropping it stops its workers once queued jobs are done.
pub struct BlobReader {
    inner: Arc<Inner>,
}

impl BlobReader {
    pub fn new(cache: Arc<BlobCache>, src: Arc<dyn Source>, cfg: ReadConfig) -> Self {
        let (tx, rx) = mpsc::channel::<Queued>();
        let rx = Arc::new(Mutex::new(rx));
        let inner = Arc::new(Inner {
            cache,
            src,
            cfg,
            states: Mutex::new(HashMap::new()),
            failures: Mutex::new(HashMap::new()),
            uncached: Mutex::new(LruCache::new(
                NonZeroUsize::new(4).unwrap_or(NonZeroUsize::MIN),
            )),
            jobs: Mutex::new(Some(tx)),
            pending: Arc::default(),
            indexes: Indexes::default(),
            refused: Mutex::default(),
        });
        for n in 0..WORKERS {
            let rx = rx.clone();
            let weak = Arc::downgrade(&inner);
            let spawned = std::thread::Builder::new()
                .name(format!("orasfs-read-{n}"))
                .spawn(move || loop {
                    let queued = lock(&rx).recv();
                    let Ok(mut q) = queued else { break };
                    let Some(inner) = weak.upgrade() else { break };
                    if let Some(job) = q.job.take() {
                        inner.run(job);
                    }
                });
            if let Err(e) = spawned {
                log::warn!("read path: cannot start a worker thread: {e}");
            }
        }
        Self { inner }
    }

    pub fn cache(&self) -> &Arc<BlobCache> {
        &self.inner.cache
    }

    pub fn source(&self) -> &Arc<dyn Source> {
        &self.inner.src
    }

    /// Open a blob for reading: pins it until the returned handle is dropped. `hint`
    /// says where its block index may be.
    pub fn open(&self, blob: &BlobRef, hint: Option<&IndexHint>) -> OpenBlob {
        let state = self.inner.state(blob);
        if let Some(h) = hint {
            let mut hints = lock(&state.hints);
            if !hints.contains(h) {
                hints.push(h.clone());
            }
        }
        OpenBlob {
            _pin: self.inner.cache.pin_guard(&blob.digest),
            failures_at_open: self.inner.failures(&blob.digest),
            state,
            ahead: Mutex::new(ReadAhead::default()),
        }
    }

    /// How the bytes of a blob are checked, for `user.orasfs.verified`: `blob` (all of
    /// it against its digest), `blocks` (every byte read, against a block index that the
    /// manifest binds), `blocks-referrer` (the same, against an index found through
    /// referrers), or `none`. Told from the file's own manifest (`hint`): reads may be
    /// checked against a stronger index another manifest sharing the blob binds, never a
    /// weaker one than this says.
    pub fn verification(&self, blob: &BlobRef, hint: Option<&IndexHint>) -> &'static str {
        if self.inner.is_verified(blob) {
            return "blob";
        }
        match self.inner.index_of(blob, hint).map(|ix| ix.trust) {
            Some(Trust::Bound) => "blocks",
            Some(Trust::Referrer) => "blocks-referrer",
            None => "none",
        }
    }

    /// Read `len` bytes at `offset` through an open handle.
    pub fn read(&self, h: &OpenBlob, offset: u64, len: u32) -> Result<Vec<u8>, CacheError> {
        let blob = &h.state.blob;
        // The generation first, then the failure count: a digest mismatch counts the
        // failure before it bumps the generation, so a read that sees the old count also
        // holds the old generation, and nothing it fetches is stored or trusted.
        let generation = h.state.generation();
        if self.inner.failures(&blob.digest) != h.failures_at_open {
            return Err(open_during_failure(&h.state));
        }
        let end = blob.size.min(offset.saturating_add(len as u64));
        if offset >= end {
            return Ok(Vec::new());
        }
        if self.inner.mode(&h.state)? == ReadMode::Blocks {
            let ahead = lock(&h.ahead).on_read(offset, end, blob.size);
            if let Some(r) = ahead {
                self.inner.read_ahead(&h.state, r, generation);
            }
        }
        let out = self.inner.read(&h.state, offset, end, generation)?;
        if h.state.generation() != generation {
            return Err(open_during_failure(&h.state));
        }
        Ok(out)
    }

    /// Whether every byte of the blob has been checked against its digest.
    pub fn is_verified(&self, blob: &BlobRef) -> bool {
        self.inner.is_verified(blob)
    }

    /// The verified file of a blob, for the kernel to read directly (FUSE passthrough).
    pub fn passthrough_file(&self, blob: &BlobRef) -> Option<std::fs::File> {
        self.inner.cache.passthrough_file(blob)
    }

    /// How often blob `d` failed its digest check after bytes of it were served.
    pub fn failures(&self, d: &Digest) -> u64 {
        self.inner.failures(d)
    }

    /// Wait until no background work (read-ahead, hashing) is queued or running.
    pub fn wait_idle(&self) {
        let mut n = lock(&self.inner.pending.count);
        while *n > 0 {
            n = self
                .inner
                .pending
                .idle
                .wait(n)
                .unwrap_or_else(|e| e.into_inner());
        }
    }
}

impl Drop for BlobReader {
    fn drop(&mut self) {
        lock(&self.inner.jobs).take();
    }
}

impl Inner {
    fn stats(&self) -> &CacheStats {
        &self.cache.stats
    }

    fn failures(&self, d: &Digest) -> u64 {
        lock(&self.failures).get(d).copied().unwrap_or(0)
    }

    /// Whether reads of this blob may serve blocks before the whole blob is checked:
    /// lazily by default, and in strict modes only with a block index to check them.
    fn mode(&self, state: &BlobState) -> Result<ReadMode, CacheError> {
        let blob = &state.blob;
        if blob.size <= self.cfg.small_blob {
            return Ok(ReadMode::Whole);
        }
        Ok(match self.cfg.verify {
            VerifyMode::Lazy => ReadMode::Blocks,
            VerifyMode::Strict => match self.state_index(state).map(|ix| ix.trust) {
                Some(Trust::Bound) => ReadMode::Blocks,
                _ => ReadMode::Whole,
            },
            VerifyMode::RequireIndex => match self.state_index(state) {
                Some(_) => ReadMode::Blocks,
                None if self.is_verified(blob) => ReadMode::Whole,
                None => {
                    if lock(&self.refused).insert(blob.digest.clone()) {
                        log::warn!(
                            "{}: refused: it has no block index and --verify require-index is set",
                            blob.digest
                        );
                    }
                    return Err(CacheError::Refused(format!(
                        "{} has no block index (--verify require-index)",
                        blob.digest
                    )));
                }
            },
        })
    }

    /// The verified block index of a blob, resolved on first use.
    fn index_of(&self, blob: &BlobRef, hint: Option<&IndexHint>) -> Option<Arc<BlobIndex>> {
        self.indexes
            .get(self.src.as_ref(), self.stats(), blob, hint)
    }

    /// The strongest verified index any manifest showing this blob leads to: one bound by
    /// a manifest before one found through referrers.
    fn state_index(&self, state: &BlobState) -> Option<Arc<BlobIndex>> {
        let mut hints = lock(&state.hints).clone();
        hints.sort_by_key(|h| !matches!(h, IndexHint::Bound { .. }));
        let mut found = None;
        for h in &hints {
            match self.index_of(&state.blob, Some(h)) {
                Some(ix) if ix.trust == Trust::Bound => return Some(ix),
                Some(ix) => found = found.or(Some(ix)),
                None => {}
            }
        }
        found
    }

    fn is_verified(&self, blob: &BlobRef) -> bool {
        self.cache.has_verified(&blob.digest)
            || lock(&self.uncached).contains(&blob.digest)
            || self
                .live_state(&blob.digest)
                .is_some_and(|s| s.is_verified())
    }

    fn live_state(&self, d: &Digest) -> Option<Arc<BlobState>> {
        lock(&self.states).get(d).and_then(Weak::upgrade)
    }

    /// The shared state of a blob, created on first use and dropped with its last user.
    fn state(&self, blob: &BlobRef) -> Arc<BlobState> {
        let mut states = lock(&self.states);
        if let Some(s) = states.get(&blob.digest).and_then(Weak::upgrade) {
            if s.blob.size == blob.size {
                return s;
            }
        }
        if states.len() > 1024 {
            states.retain(|_, w| w.strong_count() > 0);
        }
        let s = Arc::new(BlobState::new(blob.clone()));
        // Two descriptors may name one digest with different sizes (one of them lies): the
        // first keeps the table entry; the other gets a state of its own.
        if states
            .get(&blob.digest)
            .is_none_or(|w| w.strong_count() == 0)
        {
            states.insert(blob.digest.clone(), Arc::downgrade(&s));
        }
        s
    }

    fn queue(&self, job: Job) {
        *lock(&self.pending.count) += 1;
        let q = Queued {
            job: Some(job),
            pending: self.pending.clone(),
        };
        if let Some(tx) = lock(&self.jobs).as_ref() {
            // On a send error the job comes back and is dropped: its drop releases it.
            let _ = tx.send(q);
        }
    }

    fn run(&self, job: Job) {
        match job {
            Job::Fetch {
                state,
                blocks,
                generation,
                ..
            } => {
                if state.generation() != generation {
                    state.release(blocks); // queued before the blob's bytes were dropped
                    return;
                }
                let n = blocks.end - blocks.start;
                let p = state.partial(&self.cache);
                // Another fetch may have brought them meanwhile: a server that ignores
                // `Range` answers every request with the whole blob, which lands every
                // block; fetching the rest of a queued window again would cost a whole
                // blob per job.
                if p.as_ref().is_some_and(|p| blocks.clone().all(|i| p.has(i))) {
                    state.release(blocks);
                    return;
                }
                if let Err(e) = self.fetch_run(&state, p, blocks, Fetcher::Ahead, generation) {
                    CacheStats::add(&self.stats().prefetch_failures, 1);
                    log::debug!(
                        "read-ahead of {n} blocks of {} failed: {e}",
                        state.blob.digest
                    );
                }
            }
            Job::Hash { state, .. } => {
                if let Err(e) = self.advance_hash(&state, None, HashWait::Yes) {
                    log::debug!("{e}");
                }
            }
        }
    }

    /// Claim the missing blocks of a read-ahead window and queue their fetch.
    fn read_ahead(&self, state: &Arc<BlobState>, bytes: Range<u64>, generation: u64) {
        if state.refusing.load(Ordering::Acquire) {
            return; // the store takes nothing: what read-ahead brings would be dropped
        }
        let Some(p) = state.partial(&self.cache) else {
            return; // read-ahead into memory is not worth it
        };
        let blocks = blocks_of(state.blob.size, bytes.start, bytes.end - bytes.start);
        let (mine, _) = state.claim(Some(&p), blocks);
        let max = (self.cfg.max_request / BLOCK_SIZE).max(1);
        for run in runs(&mine, max) {
            CacheStats::add(&self.stats().prefetch_blocks, run.end - run.start);
            self.queue(Job::Fetch {
                state: state.clone(),
                blocks: run,
                generation,
                _pin: self.cache.pin_guard(&state.blob.digest),
            });
        }
    }

    /// Serve `offset..end` of a blob.
    fn read(
        &self,
        state: &Arc<BlobState>,
        offset: u64,
        end: u64,
        generation: u64,
    ) -> Result<Vec<u8>, CacheError> {
        let blob = &state.blob;
        self.cache.note_use(&blob.digest);
        if let Some(bytes) = lock(&self.uncached).get(&blob.digest) {
            return slice(state, bytes, offset, end);
        }
        if let Some(v) = self.cache.verified(blob) {
            match v.read(offset, end) {
                Some(b) => {
                    CacheStats::add(&self.stats().hits, 1);
                    return Ok(b);
                }
                None => {
                    log::warn!(
                        "cache: verified blob {} fails a block checksum; refetching",
                        blob.digest
                    );
                    CacheStats::add(&self.stats().corrupt_blocks, 1);
                    self.cache.drop_verified(&blob.digest);
                    state.forget_verified();
                }
            }
        }
        if self.mode(state)? == ReadMode::Whole {
            return self.read_whole(state, offset, end);
        }
        let blocks = blocks_of(blob.size, offset, end - offset);
        let got = self.load(state, blocks.clone(), generation)?;
        let mut out = Vec::with_capacity((end - offset) as usize);
        for (i, b) in blocks.zip(got) {
            append_part(&mut out, i, &b, offset, end);
        }
        // A read that reaches the end of the blob may be the one that completes it (a
        // whole-file read's last): it waits for the digest's verdict, whichever thread
        // hashes, so a whole-file read never ends successfully with a wrong byte.
        if end == blob.size && !state.is_verified() {
            self.advance_hash(state, None, HashWait::Yes)?;
            if !state.is_verified() && state.unverifiable.load(Ordering::Acquire) {
                return Err(state.integrity(
                    "the cache had no room to keep its bytes for the digest check, so a read \
                     to its end cannot be vouched for"
                        .into(),
                ));
            }
        }
        Ok(out)
    }

    /// The checked bytes of blocks `range`, fetching what is missing.
    fn load(
        &self,
        state: &Arc<BlobState>,
        range: Range<u64>,
        generation: u64,
    ) -> Result<Vec<Vec<u8>>, CacheError> {
        let mut got: BTreeMap<u64, Vec<u8>> = BTreeMap::new();
        let mut misses = 0u64;
        let index = self.state_index(state);
        for attempt in 0..=TAKEOVERS {
            let p = state.partial(&self.cache);
            // What the store has (with an index, checked against it too: the blocks may
            // have been cached before the index existed).
            for i in range.clone() {
                if got.contains_key(&i) {
                    continue;
                }
                match p.as_ref().map(|p| p.read_block(i)) {
                    Some(Ok(Some(b))) => {
                        if let Some(ix) = &index {
                            if !ix.check(self.src.as_ref(), self.stats(), i, &b)? {
                                CacheStats::add(&self.stats().block_failures, 1);
                                log::warn!(
                                    "cache: block {i} of {} does not match its index; refetching",
                                    state.blob.digest
                                );
                                if let Some(p) = &p {
                                    p.forget_block(i);
                                }
                                continue;
                            }
                        }
                        got.insert(i, b);
                    }
                    Some(Err(e)) if e.kind() == std::io::ErrorKind::InvalidData => {
                        log::warn!("cache: {e}; refetching");
                        CacheStats::add(&self.stats().corrupt_blocks, 1);
                    }
                    Some(Err(e)) => log::debug!("cache: {e}"),
                    _ => {}
                }
            }
            let need: Vec<u64> = range.clone().filter(|i| !got.contains_key(i)).collect();
            if attempt == 0 {
                CacheStats::add(
                    &self.stats().hits,
                    (range.end - range.start) - need.len() as u64,
                );
            }
            if need.is_empty() {
                break;
            }
            if attempt == TAKEOVERS {
                return Err(CacheError::io(
                    state.blob.digest.to_string(),
                    std::io::Error::other("blocks fetched by other readers never landed"),
                ));
            }
            let (mine, theirs) = {
                let (mut mine, mut theirs) = (Vec::new(), Vec::new());
                for r in runs(&need, u64::MAX) {
                    let (m, t) = state.claim(p.as_deref(), r);
                    mine.extend(m);
                    theirs.extend(t);
                }
                (mine, theirs)
            };
            misses += (mine.len() + theirs.len()) as u64;
            let max = (self.cfg.max_request / BLOCK_SIZE).max(1);
            let fetched = self.fetch_runs(state, p, runs(&mine, max), generation)?;
            got.extend(fetched);
            state.wait(&theirs)?;
        }
        CacheStats::add(&self.stats().misses, misses);
        Ok(range.filter_map(|i| got.remove(&i)).collect())
    }

    /// Fetch claimed runs, in parallel when there are several; returns their bytes.
    fn fetch_runs(
        &self,
        state: &Arc<BlobState>,
        p: Option<Arc<crate::cache::Partial>>,
        runs: Vec<Range<u64>>,
        generation: u64,
    ) -> Result<BTreeMap<u64, Vec<u8>>, CacheError> {
        if runs.len() <= 1 {
            let mut out = BTreeMap::new();
            for r in runs {
                out.extend(self.fetch_run(state, p.clone(), r, READER, generation)?);
            }
            return Ok(out);
        }
        std::thread::scope(|scope| {
            let handles: Vec<_> = runs
                .into_iter()
                .map(|r| {
                    let p = p.clone();
                    scope.spawn(move || self.fetch_run(state, p, r, READER, generation))
                })
                .collect();
            let mut out = BTreeMap::new();
            let mut first_err = None;
            for h in handles {
                match h.join() {
                    Ok(Ok(m)) => out.extend(m),
                    Ok(Err(e)) => {
                        first_err.get_or_insert(e);
                    }
                    Err(_) => {
                        first_err.get_or_insert(CacheError::io(
                            state.blob.digest.to_string(),
                            std::io::Error::other("a fetch thread panicked"),
                        ));
                    }
                }
            }
            match first_err {
                Some(e) => Err(e),
                None => Ok(out),
            }
        })
    }

    /// Fetch the claimed blocks `blocks` with one range request.
    fn fetch_run(
        &self,
        state: &Arc<BlobState>,
        p: Option<Arc<crate::cache::Partial>>,
        blocks: Range<u64>,
        fetcher: Fetcher,
        generation: u64,
    ) -> Result<BTreeMap<u64, Vec<u8>>, CacheError> {
        let blob = &state.blob;
        let from = blocks.start * BLOCK_SIZE;
        let to = blob.size.min(blocks.end * BLOCK_SIZE);
        // Blobs read whole are checked against their digest; only block reads need the
        // index (and only they pay for finding it).
        let index = match self.mode(state) {
            Ok(ReadMode::Blocks) => self.state_index(state),
            _ => None,
        };
        if let Some(ix) = &index {
            if let Err(e) = ix.prepare(self.src.as_ref(), self.stats(), blocks.clone()) {
                match fetcher {
                    Fetcher::Reader { .. } => state.release_failed(blocks, &e),
                    Fetcher::Ahead => state.release(blocks),
                }
                return Err(e);
            }
        }
        let mut sink = FillSink::new(self, state, p, blocks, fetcher, generation, index);
        CacheStats::add(&self.stats().fetch_requests, 1);
        let fetched = self.src.fetch_blob(
            &blob.repo,
            &blob.digest,
            blob.size,
            Some(from..to),
            &mut sink,
        );
        CacheStats::add(&self.stats().fetched_bytes, sink.received);
        let mut sink = sink.finish(fetched)?;
        Ok(std::mem::take(&mut sink.kept))
    }

    /// Feed the blob's sha256 as far as blocks are present, starting with the block in
    /// hand if it is next. When the last block is in, the digest decides.
    fn advance_hash(
        &self,
        state: &Arc<BlobState>,
        in_hand: Option<(u64, &[u8])>,
        wait: HashWait,
    ) -> Result<(), CacheError> {
        let count = block_count(state.blob.size);
        let mut in_hand = in_hand;
        let mut budget = match wait {
            HashWait::No => FOREGROUND_HASH,
            HashWait::Yes => u64::MAX,
        };
        loop {
            let mut h = match wait {
                HashWait::Yes => lock(&state.hash),
                HashWait::No => match state.hash.try_lock() {
                    Ok(h) => h,
                    Err(TryLockError::Poisoned(e)) => e.into_inner(),
                    Err(TryLockError::WouldBlock) => return Ok(()),
                },
            };
            if h.done || state.is_verified() {
                return Ok(());
            }
            let p = state.partial(&self.cache);
            while h.next < count {
                let i = h.next;
                if let Some((j, data)) = in_hand {
                    if j == i {
                        h.hasher.update(data);
                        h.next += 1;
                        in_hand = None;
                        continue;
                    }
                }
                if let Some(b) = lock(&state.pending).remove(&i) {
                    h.hasher.update(&b);
                    h.next += 1;
                    continue;
                }
                if budget == 0 {
                    break;
                }
                let Some(Ok(Some(b))) = p.as_ref().map(|p| p.read_block(i)) else {
                    break;
                };
                budget -= 1;
                h.hasher.update(&b);
                h.next += 1;
            }
            if h.next == count {
                // Drawn under the lock, so the verdict is drawn once, and a reader waiting
                // for it (a read at the end of the blob) sees its outcome.
                h.done = true;
                let hasher = std::mem::replace(&mut h.hasher, sha2::Sha256::new());
                let actual = Digest::from_hasher(hasher);
                return self.conclude(state, p, actual, &mut h);
            }
            let next = h.next;
            drop(h);
            let more =
                p.as_ref().is_some_and(|p| p.has(next)) || lock(&state.pending).contains_key(&next);
            if !more {
                return Ok(());
            }
            if budget == 0 {
                self.queue(Job::Hash {
                    state: state.clone(),
                    _pin: self.cache.pin_guard(&state.blob.digest),
                });
                return Ok(());
            }
            // Another thread may have landed `next` while we held the lock: go on.
        }
    }

    /// Every byte was hashed: promote on a match, drop everything on a mismatch.
    fn conclude(
        &self,
        state: &Arc<BlobState>,
        p: Option<Arc<crate::cache::Partial>>,
        actual: Digest,
        h: &mut state::HashProgress,
    ) -> Result<(), CacheError> {
        let blob = &state.blob;
        if actual != blob.digest {
            // Lazily read blobs may have served bytes already; whole ones served none.
            let served = self.mode(state).is_ok_and(|m| m == ReadMode::Blocks);
            self.record_failure(&blob.digest, served);
            log::error!(
                "{}: the fetched bytes hash to {actual}; dropping them from the cache",
                blob.digest
            );
            self.cache.forget_blob(&blob.digest);
            state.reset_holding(h);
            return Err(state.integrity(format!("content hashes to {actual}")));
        }
        state.verified.store(true, Ordering::Release);
        CacheStats::add(&self.stats().verified_blobs, 1);
        log::debug!("{}: all {} bytes verified", blob.digest, blob.size);
        if let Some(p) = p {
            if let Err(e) = self.cache.promote(blob, &p) {
                log::debug!("cache: {} stays partial: {e}", blob.digest);
            }
        }
        Ok(())
    }

    /// A block was served but the store did not take it: keep it for the hash until the
    /// frontier reaches it (bounded by `max_memory`; past that, the blob's served bytes
    /// can no longer be judged, and a read at its end says so).
    fn hold_unstored(&self, state: &BlobState, i: u64, data: &[u8]) {
        state.refusing.store(true, Ordering::Release);
        let h = lock(&state.hash);
        if h.done || h.next > i {
            return; // hashed already
        }
        let mut pending = lock(&state.pending);
        let held: u64 = pending.values().map(|b| b.len() as u64).sum();
        if held + data.len() as u64 > self.cfg.max_memory {
            state.unverifiable.store(true, Ordering::Release);
            return;
        }
        pending.insert(i, data.to_vec());
    }

    /// Count a digest mismatch of `d`. `served` says whether bytes of it may already have
    /// reached a reader (lazy reads); then files open on it fail from now on.
    fn record_failure(&self, d: &Digest, served: bool) {
        CacheStats::add(&self.stats().integrity_failures, 1);
        if served {
            self.poison(d);
        }
    }

    /// Fail every later read of files open on `d` now: a block of it arrived wrong. (The
    /// kernel retries a failed read-ahead page by page; those retries fail too, so the
    /// reader sees the error, and a new open reads again.)
    fn poison(&self, d: &Digest) {
        *lock(&self.failures).entry(d.clone()).or_insert(0) += 1;
    }

    /// Serve from a blob that must be verified whole first (small blobs, strict mode).
    fn read_whole(
        &self,
        state: &Arc<BlobState>,
        offset: u64,
        end: u64,
    ) -> Result<Vec<u8>, CacheError> {
        let blob = &state.blob;
        for _ in 0..=TAKEOVERS {
            if state.partial(&self.cache).is_none() {
                break;
            }
            self.ensure_complete(state)?;
            if let Some(bytes) = lock(&self.uncached).get(&blob.digest) {
                return slice(state, bytes, offset, end);
            }
            if let Some(v) = self.cache.verified(blob) {
                if let Some(b) = v.read(offset, end) {
                    return Ok(b);
                }
                CacheStats::add(&self.stats().corrupt_blocks, 1);
                self.cache.drop_verified(&blob.digest);
                state.forget_verified();
                continue;
            }
            if state.is_verified() {
                // Verified, but the store could not keep it: read it back from the
                // partial file if it is all there, else verify it again in memory.
                if let Some(p) = state
                    .partial(&self.cache)
                    .filter(|p| p.present() == block_count(blob.size))
                {
                    let mut out = Vec::with_capacity((end - offset) as usize);
                    let sound = blocks_of(blob.size, offset, end - offset).all(|i| {
                        let b = p.read_block(i).ok().flatten();
                        b.inspect(|b| append_part(&mut out, i, b, offset, end))
                            .is_some()
                    });
                    if sound {
                        return Ok(out);
                    }
                }
            }
            break;
        }
        if !lock(&self.uncached).contains(&blob.digest) {
            if blob.size > self.cfg.max_memory {
                return Err(CacheError::io(
                    self.cache.root().display().to_string(),
                    std::io::Error::other(format!(
                        "cannot store {} and it is larger than --max-memory",
                        blob.digest
                    )),
                ));
            }
            let n = self.stats().write_failures.fetch_add(1, Ordering::Relaxed);
            if n.is_power_of_two() || n == 0 {
                log::warn!("cache: cannot store {}; serving it uncached", blob.digest);
            }
            let bytes = self.fetch_in_memory(blob)?;
            lock(&self.uncached).put(blob.digest.clone(), bytes);
        }
        match lock(&self.uncached).get(&blob.digest) {
            Some(bytes) => slice(state, bytes, offset, end),
            None => Err(state.integrity("its cached copy kept failing checks".into())),
        }
    }

    /// Fetch every missing block of a blob and hash it to the end.
    fn ensure_complete(&self, state: &Arc<BlobState>) -> Result<(), CacheError> {
        let blob = &state.blob;
        if self.cache.has_verified(&blob.digest) || state.is_verified() {
            return Ok(());
        }
        let count = block_count(blob.size);
        // A blob that fits the memory bound is also kept in memory while it is fetched,
        // so that if the store refuses its blocks (no room) it need not be fetched again.
        let fetcher = Fetcher::Reader {
            keep: blob.size <= self.cfg.max_memory,
        };
        for _ in 0..=TAKEOVERS {
            let generation = state.generation();
            let p = state.partial(&self.cache);
            let (mine, theirs) = state.claim(p.as_deref(), 0..count);
            let mut kept = BTreeMap::new();
            for r in runs(&mine, count) {
                kept.extend(self.fetch_run(state, p.clone(), r, fetcher, generation)?);
            }
            state.wait(&theirs)?;
            self.advance_hash(state, None, HashWait::Yes)?;
            let stored = p.as_ref().is_some_and(|p| p.present() == count);
            if state.is_verified() && !stored && kept.len() as u64 == count {
                let whole: Vec<u8> = kept.into_values().flatten().collect();
                lock(&self.uncached).put(blob.digest.clone(), Arc::new(whole));
            }
            if state.is_verified() || !stored {
                break;
            }
        }
        Ok(())
    }

    /// Fetch a whole blob into memory and check it against its digest.
    fn fetch_in_memory(&self, blob: &BlobRef) -> Result<Arc<Vec<u8>>, CacheError> {
        let mut sink = crate::source::VecSink::with_limit(blob.size);
        CacheStats::add(&self.stats().fetch_requests, 1);
        self.src
            .fetch_blob(&blob.repo, &blob.digest, blob.size, None, &mut sink)?;
        CacheStats::add(&self.stats().fetched_bytes, sink.bytes.len() as u64);
        let actual = Digest::of(&sink.bytes);
        if sink.bytes.len() as u64 != blob.size || actual != blob.digest {
            self.record_failure(&blob.digest, false);
            return Err(CacheError::Integrity {
                digest: blob.digest.clone(),
                detail: format!("{} bytes hashing to {actual}", sink.bytes.len()),
            });
        }
        CacheStats::add(&self.stats().verified_blobs, 1);
        Ok(Arc::new(sink.bytes))
    }
}

fn open_during_failure(state: &BlobState) -> CacheError {
    state.integrity("the blob failed verification while this file was open; open it again".into())
}

/// `offset..end` of a blob held in memory; EIO if it is shorter than the descriptor says.
fn slice(state: &BlobState, bytes: &[u8], offset: u64, end: u64) -> Result<Vec<u8>, CacheError> {
    bytes
        .get(offset as usize..end as usize)
        .map(<[u8]>::to_vec)
        .ok_or_else(|| {
            state.integrity(format!(
                "{} bytes held, but bytes {offset}..{end} asked for",
                bytes.len()
            ))
        })
}
