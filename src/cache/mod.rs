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

pub mod chunk;
pub mod flight;
pub mod manage;
pub mod usage;
pub mod whole;

use std::collections::HashMap;
use std::fs;
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use lru::LruCache;
use sha2::{Digest as _, Sha256};

use crate::error::{CacheError, SourceError};
use crate::oci::Digest;
use crate::source::{BlobSink, BodyKind, Source};
use chunk::CHUNK_SIZE;
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
}

struct HashState {
    next: u64,
    hasher: Sha256,
    promoting: bool,
}

type Chunk = Arc<Vec<u8>>;

/// The cache. Use it through an `Arc`: completing a blob promotes it in the background.
pub struct BlobCache {
    cfg: CacheConfig,
    root: PathBuf,
    hashing: Mutex<HashMap<Digest, Arc<Mutex<HashState>>>>,
    verified: Mutex<HashMap<Digest, Arc<Verified>>>,
    chunk_flights: Flights<(Digest, u64), Chunk>,
    whole_flights: Flights<Digest, ()>,
    hot: Mutex<LruCache<(Digest, u64), Chunk>>,
    pub stats: CacheStats,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl BlobCache {
    /// Open (creating if needed) the cache and sweep temp files a crash left behind.
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
                if fs::remove_file(e.path()).is_ok() {
                    swept += 1;
                }
            }
        }
        if swept > 0 {
            log::info!("cache: swept {swept} temp files left by an earlier run");
        }
        let hot = NonZeroUsize::new(cfg.hot_chunks.max(1)).unwrap_or(NonZeroUsize::MIN);
        Ok(Arc::new(Self {
            cfg,
            root,
            hashing: Mutex::new(HashMap::new()),
            verified: Mutex::new(HashMap::new()),
            chunk_flights: Flights::default(),
            whole_flights: Flights::default(),
            hot: Mutex::new(LruCache::new(hot)),
            stats: CacheStats::default(),
        }))
    }

    /// The cache's versioned root (`<dir>/v1`).
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn blob_path(&self, d: &Digest) -> PathBuf {
        self.root.join("blobs/sha256").join(d.hex())
    }
    fn sidecar_path(&self, d: &Digest) -> PathBuf {
        self.root.join("blobs/sha256").join(format!("{}.crc", d.hex()))
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
                log::warn!("cache: {} is damaged or incomplete; dropping it", blob.digest);
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
        let _ = fs::remove_file(self.blob_path(d));
        let _ = fs::remove_file(self.sidecar_path(d));
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
        let end = blob.size.min(offset + len as u64);
        if (blob.size <= self.cfg.small_blob || self.cfg.verify == VerifyMode::Strict)
            && self.verified(blob).is_none()
        {
            self.ensure_verified(src, blob)?;
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

    /// Fetch (if needed) the whole blob and verify it; afterwards it is a verified file.
    pub fn ensure_verified(&self, src: &dyn Source, blob: &BlobRef) -> Result<Arc<Verified>, CacheError> {
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
        let mut sink = FetchSink::new(self, blob, blob.size);
        self.stats.fetch_requests.fetch_add(1, Ordering::Relaxed);
        src.fetch_blob(&blob.repo, &blob.digest, blob.size, None, &mut sink)
            .map_err(|e| sink.explain(e))?;
        self.stats
            .fetched_bytes
            .fetch_add(sink.received, Ordering::Relaxed);
        match sink.finish()? {
            Fetched::Whole => Ok(()),
            Fetched::Range(_) => Err(CacheError::Source(SourceError::Protocol {
                what: format!("blob {}", blob.digest),
                detail: "asked for the whole blob, got a range".into(),
            })),
        }
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
                    log::warn!("cache: chunk {i} of verified blob {} fails its checksum; refetching", blob.digest);
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
                    log::warn!("cache: chunk {i} of {} fails its checksum; refetching", blob.digest);
                    self.stats.corrupt_chunks.fetch_add(1, Ordering::Relaxed);
                    let _ = fs::remove_file(&path);
                    return None;
                }
            }
        };
        let c = Arc::new(data);
        lock(&self.hot).put(key, c.clone());
        Some(c)
    }

    /// Chunks `first..end` of a blob, fetching the missing ones in contiguous runs.
    fn load_chunks(
        self: &Arc<Self>,
        src: &dyn Source,
        blob: &BlobRef,
        first: u64,
        end: u64,
    ) -> Result<Vec<Chunk>, CacheError> {
        let mut out: Vec<Option<Chunk>> = (first..end).map(|i| self.cached_chunk(blob, i)).collect();
        let hits = out.iter().filter(|c| c.is_some()).count() as u64;
        self.stats.hits.fetch_add(hits, Ordering::Relaxed);
        let mut leads = Vec::new();
        let mut follows = Vec::new();
        for (k, slot) in out.iter_mut().enumerate() {
            if slot.is_some() {
                continue;
            }
            let i = first + k as u64;
            match self.chunk_flights.join((blob.digest.clone(), i)) {
                Role::Leader(lead) => match self.cached_chunk(blob, i) {
                    // Another reader stored it between our look and our claim.
                    Some(c) => {
                        lead.finish(Ok(c.clone()));
                        *slot = Some(c);
                    }
                    None => leads.push((i, lead)),
                },
                Role::Follower(f) => follows.push((k, f)),
            }
        }
        self.stats
            .misses
            .fetch_add((leads.len() + follows.len()) as u64, Ordering::Relaxed);
        // Group the chunks we lead into contiguous runs, one request each.
        let mut leads = leads.into_iter().peekable();
        while let Some((start, lead)) = leads.next() {
            let mut run = vec![lead];
            let mut stop = start + 1;
            while stop - start < self.cfg.max_run && leads.peek().is_some_and(|(i, _)| *i == stop) {
                if let Some((_, l)) = leads.next() {
                    run.push(l);
                }
                stop += 1;
            }
            let chunks = match self.fetch_run(src, blob, start, stop) {
                Ok(c) => c,
                Err(e) => {
                    let msg = e.to_string();
                    for l in run {
                        l.finish(Err(msg.clone()));
                    }
                    return Err(e);
                }
            };
            for ((i, c), l) in (start..stop).zip(chunks).zip(run) {
                l.finish(Ok(c.clone()));
                out[(i - first) as usize] = Some(c);
            }
        }
        for (k, f) in follows {
            out[k] = Some(f.wait().map_err(CacheError::SharedFetch)?);
        }
        Ok(out.into_iter().flatten().collect())
    }

    /// Fetch chunks `start..stop` with one range request and store them.
    fn fetch_run(self: &Arc<Self>, src: &dyn Source, blob: &BlobRef, start: u64, stop: u64) -> Result<Vec<Chunk>, CacheError> {
        let from = start * CHUNK_SIZE;
        let to = blob.size.min(stop * CHUNK_SIZE);
        let mut sink = FetchSink::new(self, blob, to - from);
        self.stats.fetch_requests.fetch_add(1, Ordering::Relaxed);
        src.fetch_blob(&blob.repo, &blob.digest, blob.size, Some(from..to), &mut sink)
            .map_err(|e| sink.explain(e))?;
        self.stats
            .fetched_bytes
            .fetch_add(sink.received, Ordering::Relaxed);
        match sink.finish()? {
            Fetched::Range(bytes) => {
                let mut chunks = Vec::with_capacity((stop - start) as usize);
                for (k, piece) in bytes.chunks(CHUNK_SIZE as usize).enumerate() {
                    let c = Arc::new(piece.to_vec());
                    self.store_chunk(blob, start + k as u64, &c);
                    chunks.push(c);
                }
                Ok(chunks)
            }
            // The server ignored the range; the blob is now verified on disk.
            Fetched::Whole => (start..stop)
                .map(|i| {
                    self.cached_chunk(blob, i).ok_or_else(|| CacheError::Integrity {
                        digest: blob.digest.clone(),
                        detail: format!("chunk {i} missing right after a verified whole fetch"),
                    })
                })
                .collect(),
        }
    }

    /// Keep a fetched chunk in memory and on disk. A disk failure (full, read-only) is
    /// logged and the bytes are still served.
    fn store_chunk(&self, blob: &BlobRef, i: u64, data: &Chunk) {
        lock(&self.hot).put((blob.digest.clone(), i), data.clone());
        let dir = self.chunk_dir(&blob.digest);
        let tmp = self
            .tmp_dir()
            .join(format!("{}.{i}.{}.chunk", blob.digest.hex(), rand::random::<u32>()));
        let write = || -> std::io::Result<()> {
            fs::create_dir_all(&dir)?;
            fs::write(&tmp, chunk::encode(&blob.digest, i, data))?;
            fs::rename(&tmp, self.chunk_path(&blob.digest, i))
        };
        if let Err(e) = write() {
            let _ = fs::remove_file(&tmp);
            let n = self.stats.write_failures.fetch_add(1, Ordering::Relaxed);
            if n.is_power_of_two() || n == 0 {
                log::warn!("cache: cannot store chunk {i} of {} ({e}); serving it uncached", blob.digest);
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
            let Some(c) = self.cached_chunk(blob, st.next) else { break };
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
            self.stats.integrity_failures.fetch_add(1, Ordering::Relaxed);
            log::error!("{}: the fetched bytes hash to {actual}; dropping them from the cache", blob.digest);
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
        let cache = self.clone();
        let blob = blob.clone();
        std::thread::spawn(move || cache.promote(&blob));
        Ok(())
    }

    /// Turn a blob's chunks into a verified whole-blob file (hashing again while copying).
    fn promote(&self, blob: &BlobRef) {
        let result = (|| -> Result<(), CacheError> {
            let mut w = WholeWriter::create(&self.tmp_dir(), &blob.digest, blob.size)?;
            for i in 0..chunk::chunk_count(blob.size) {
                let c = self.cached_chunk(blob, i).ok_or_else(|| CacheError::Integrity {
                    digest: blob.digest.clone(),
                    detail: format!("chunk {i} vanished before promotion"),
                })?;
                w.write(&c).map_err(|e| io_err(&self.tmp_dir(), e))?;
            }
            w.finish(&self.blob_path(&blob.digest), &self.sidecar_path(&blob.digest))
        })();
        match result {
            Ok(()) => {
                let _ = fs::remove_dir_all(self.chunk_dir(&blob.digest));
                lock(&self.hashing).remove(&blob.digest);
            }
            Err(e) => {
                log::warn!("cache: could not promote {}: {e}", blob.digest);
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

    /// Drop every cached byte of a blob: memory, chunk files and verified file.
    fn forget_blob(&self, d: &Digest) {
        lock(&self.hashing).remove(d);
        let mut hot = lock(&self.hot);
        let stale: Vec<_> = hot.iter().map(|(k, _)| k.clone()).filter(|(k, _)| k == d).collect();
        for k in stale {
            hot.pop(&k);
        }
        drop(hot);
        let _ = fs::remove_dir_all(self.chunk_dir(d));
        self.drop_verified(d);
    }
}

enum Fetched {
    Range(Vec<u8>),
    Whole,
}

/// Receives one fetch: a range into memory, or a whole blob into a verified file.
struct FetchSink<'a> {
    cache: &'a BlobCache,
    blob: &'a BlobRef,
    expect: u64,
    kind: Option<BodyKind>,
    buf: Vec<u8>,
    whole: Option<WholeWriter>,
    received: u64,
    failed: Option<CacheError>,
}

impl<'a> FetchSink<'a> {
    fn new(cache: &'a BlobCache, blob: &'a BlobRef, expect: u64) -> Self {
        Self {
            cache,
            blob,
            expect,
            kind: None,
            buf: Vec::new(),
            whole: None,
            received: 0,
            failed: None,
        }
    }

    /// Prefer the sink's own error (e.g. a cache write failure) over the transport's view.
    fn explain(&mut self, e: SourceError) -> CacheError {
        self.failed.take().unwrap_or(CacheError::Source(e))
    }

    fn finish(self) -> Result<Fetched, CacheError> {
        match self.kind {
            Some(BodyKind::Range) => {
                if self.buf.len() as u64 != self.expect {
                    return Err(CacheError::Source(SourceError::Protocol {
                        what: format!("blob {}", self.blob.digest),
                        detail: format!("got {} bytes for a {}-byte range", self.buf.len(), self.expect),
                    }));
                }
                Ok(Fetched::Range(self.buf))
            }
            Some(BodyKind::Whole) => {
                let w = self.whole.ok_or_else(|| CacheError::Io {
                    path: "whole-blob temp file".into(),
                    source: std::io::Error::other("not created"),
                })?;
                let c = self.cache;
                let r = w.finish(&c.blob_path(&self.blob.digest), &c.sidecar_path(&self.blob.digest));
                if let Err(CacheError::Integrity { .. }) = &r {
                    c.stats.integrity_failures.fetch_add(1, Ordering::Relaxed);
                    log::error!("{}: fetched blob does not match its digest", self.blob.digest);
                }
                r.map(|_| Fetched::Whole)
            }
            None => Err(CacheError::Source(SourceError::Protocol {
                what: format!("blob {}", self.blob.digest),
                detail: "no body".into(),
            })),
        }
    }
}

impl BlobSink for FetchSink<'_> {
    fn begin(&mut self, kind: BodyKind) -> std::io::Result<()> {
        self.kind = Some(kind);
        if kind == BodyKind::Whole {
            match WholeWriter::create(&self.cache.tmp_dir(), &self.blob.digest, self.blob.size) {
                Ok(w) => self.whole = Some(w),
                Err(e) => {
                    let msg = e.to_string();
                    self.failed = Some(e);
                    return Err(std::io::Error::other(msg));
                }
            }
        }
        Ok(())
    }

    fn data(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.received += bytes.len() as u64;
        match &mut self.whole {
            Some(w) => w.write(bytes),
            None => {
                if self.buf.len() as u64 + bytes.len() as u64 > self.expect {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        "range body longer than asked",
                    ));
                }
                self.buf.extend_from_slice(bytes);
                Ok(())
            }
        }
    }
}
