//! What the read path knows of one blob while it is in use: its partial file, which of its
//! blocks are being fetched right now (single-flight per block), and how far its sha256
//! has got.

use std::collections::{HashMap, HashSet};
use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};

use sha2::{Digest as _, Sha256};

use crate::cache::{lock, BlobCache, BlobRef, Partial};
use crate::error::CacheError;

/// The blob's running sha256, fed blocks in order.
pub(super) struct HashProgress {
    /// The next block to hash.
    pub next: u64,
    pub hasher: Sha256,
    /// Every block was hashed and the verdict taken (by whoever got there first).
    pub done: bool,
}

impl HashProgress {
    pub fn new() -> Self {
        Self {
            next: 0,
            hasher: Sha256::new(),
            done: false,
        }
    }
}

/// Blocks being fetched, and why the last reader's fetch of a block failed.
#[derive(Default)]
struct Flight {
    /// Blocks some fetch has claimed and not yet finished.
    claimed: HashSet<u64>,
    /// Blocks a reader's fetch gave up, with its error: a reader that waited for them gets
    /// the same error. Cleared when the block is claimed again.
    failed: HashMap<u64, Arc<CacheError>>,
}

/// The read path's state of one blob, shared by its open files, reads and read-ahead.
pub(super) struct BlobState {
    pub blob: BlobRef,
    partial: Mutex<Option<Arc<Partial>>>,
    flight: Mutex<Flight>,
    landed: Condvar,
    pub hash: Mutex<HashProgress>,
    /// Every byte was hashed and matched the digest (whether or not it could be stored).
    pub verified: AtomicBool,
    /// Bumped when the blob's bytes are dropped (a digest mismatch): fetches started
    /// before then neither store nor hash what they bring.
    generation: AtomicU64,
    /// Where the blob's block index may be found: one hint per manifest that showed the
    /// blob (several tags may share a layer), each resolved on its own.
    pub hints: Mutex<Vec<super::index::IndexHint>>,
    /// Blocks served but not stored (the cache had no room), ahead of the hashing
    /// frontier: kept until hashed, so the digest still judges what was served.
    pub pending: Mutex<std::collections::BTreeMap<u64, Vec<u8>>>,
    /// A served block could not be kept for hashing (over the memory bound): the digest
    /// can no longer judge this blob's served bytes.
    pub unverifiable: AtomicBool,
    /// The store refused a block of this blob: read-ahead would be thrown away.
    pub refusing: AtomicBool,
}

impl BlobState {
    pub fn new(blob: BlobRef) -> Self {
        Self {
            blob,
            partial: Mutex::new(None),
            flight: Mutex::default(),
            landed: Condvar::new(),
            hash: Mutex::new(HashProgress::new()),
            verified: AtomicBool::new(false),
            generation: AtomicU64::new(0),
            hints: Mutex::new(Vec::new()),
            pending: Mutex::default(),
            unverifiable: AtomicBool::new(false),
            refusing: AtomicBool::new(false),
        }
    }

    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// The blob's partial file, opened on first use; `None` when the store cannot open it
    /// (the disk is full or read-only), and then every fetch is served from memory.
    pub fn partial(&self, cache: &BlobCache) -> Option<Arc<Partial>> {
        let mut p = lock(&self.partial);
        if p.is_none() {
            match cache.partial(&self.blob) {
                Ok(opened) => *p = Some(opened),
                Err(e) => log::debug!("{}: no partial file ({e})", self.blob.digest),
            }
        }
        p.clone()
    }

    /// The verified file was found damaged on disk and dropped: start again from nothing,
    /// but without failing open files (nothing wrong was served; the damage was caught).
    pub fn forget_verified(&self) {
        let mut h = lock(&self.hash);
        *lock(&self.partial) = None;
        *h = HashProgress::new();
        lock(&self.pending).clear();
        self.verified.store(false, Ordering::Release);
    }

    /// Forget the partial file (after a digest mismatch deleted it): the next use opens a
    /// fresh one, hashing starts again, and the generation moves on, so fetches begun
    /// before neither store nor hash what they bring. For a caller holding the hash lock.
    pub fn reset_holding(&self, h: &mut HashProgress) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        *lock(&self.partial) = None;
        *h = HashProgress::new();
        lock(&self.pending).clear();
        self.unverifiable.store(false, Ordering::Release);
        self.refusing.store(false, Ordering::Release);
        self.verified.store(false, Ordering::Release);
    }

    /// Claim the blocks of `range` that are neither present nor in flight. Returns the
    /// claimed blocks and those another fetch is bringing.
    pub fn claim(&self, p: Option<&Partial>, range: Range<u64>) -> (Vec<u64>, Vec<u64>) {
        let mut flight = lock(&self.flight);
        let (mut mine, mut theirs) = (Vec::new(), Vec::new());
        for i in range {
            if p.is_some_and(|p| p.has(i)) {
                continue;
            }
            if flight.claimed.insert(i) {
                flight.failed.remove(&i);
                mine.push(i);
            } else {
                theirs.push(i);
            }
        }
        (mine, theirs)
    }

    /// A claimed block is done (stored, or given up): wake whoever waits for it.
    pub fn release(&self, blocks: impl IntoIterator<Item = u64>) {
        let mut flight = lock(&self.flight);
        for i in blocks {
            flight.claimed.remove(&i);
        }
        drop(flight);
        self.landed.notify_all();
    }

    /// A reader's fetch of claimed blocks failed with `e`: release them, and let the
    /// readers waiting for them fail with the same error.
    pub fn release_failed(&self, blocks: Range<u64>, e: &CacheError) {
        let e = Arc::new(e.clone());
        let mut flight = lock(&self.flight);
        for i in blocks {
            flight.claimed.remove(&i);
            flight.failed.insert(i, e.clone());
        }
        drop(flight);
        self.landed.notify_all();
    }

    /// Wait until none of `blocks` is in flight. Fails with the error of a reader whose
    /// fetch of one of them failed ([`CacheError::Shared`]); a block given up otherwise
    /// (by read-ahead) is the caller's to fetch.
    pub fn wait(&self, blocks: &[u64]) -> Result<(), CacheError> {
        let mut flight = lock(&self.flight);
        while blocks.iter().any(|i| flight.claimed.contains(i)) {
            flight = self.landed.wait(flight).unwrap_or_else(|e| e.into_inner());
        }
        match blocks.iter().find_map(|i| flight.failed.get(i)) {
            Some(e) => Err(CacheError::Shared {
                digest: self.blob.digest.clone(),
                cause: Box::new(CacheError::clone(e)),
            }),
            None => Ok(()),
        }
    }

    pub fn is_verified(&self) -> bool {
        self.verified.load(Ordering::Acquire)
    }

    pub fn integrity(&self, detail: String) -> CacheError {
        CacheError::Integrity {
            digest: self.blob.digest.clone(),
            detail,
        }
    }
}

/// Split sorted block numbers into runs of consecutive blocks, each at most `max` long.
pub(super) fn runs(blocks: &[u64], max: u64) -> Vec<Range<u64>> {
    let mut out: Vec<Range<u64>> = Vec::new();
    for &i in blocks {
        match out.last_mut() {
            Some(r) if r.end == i && r.end - r.start < max.max(1) => r.end += 1,
            _ => out.push(i..i + 1),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_merge_adjacent_blocks_up_to_a_cap() {
        assert_eq!(runs(&[], 4), Vec::<Range<u64>>::new());
        assert_eq!(runs(&[1, 2, 3, 7, 8, 10], 4), vec![1..4, 7..9, 10..11]);
        assert_eq!(runs(&[0, 1, 2, 3, 4, 5], 4), vec![0..4, 4..6]);
        assert_eq!(runs(&[5, 6], 0), vec![5..6, 6..7]);
    }
}
