//! Receiving one fetch: the body is cut into blocks as it arrives; each block is stored in
//! the partial file, released to the readers waiting on it, and fed to the blob's sha256
//! when it is next in line, all before the next block is assembled. A reader that fetched
//! for itself also keeps the blocks it asked for, so it can serve them even when the store
//! could not take them (disk full, size cap).
//!
//! A server that ignores `Range` sends the whole blob: its blocks are then stored from the
//! start, those this fetch did not claim only if nobody has them yet.

use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::Arc;

use super::index::BlobIndex;
use super::state::BlobState;
use super::{Fetcher, Inner};
use crate::cache::block::{block_len, BLOCK_SIZE};
use crate::cache::{CacheStats, Partial};
use crate::error::{CacheError, SourceError};
use crate::source::{BlobSink, BodyKind};

/// The sink of one fetch of the claimed blocks `claimed`.
pub(super) struct FillSink<'a> {
    inner: &'a Inner,
    state: &'a Arc<BlobState>,
    partial: Option<Arc<Partial>>,
    claimed: Range<u64>,
    /// Blocks of `claimed` not yet released.
    unreleased: Range<u64>,
    /// Keep the bytes of these blocks for the caller.
    keep: Range<u64>,
    /// Whose fetch this is: a reader's failure is shared with the readers waiting for it.
    fetcher: Fetcher,
    pub kept: BTreeMap<u64, Vec<u8>>,
    /// The block being assembled, and its number.
    next: u64,
    buf: Vec<u8>,
    kind: Option<BodyKind>,
    pub received: u64,
    /// The blob failed its digest check when this fetch completed it.
    mismatch: Option<CacheError>,
    /// The blob's generation when this fetch was claimed.
    generation: u64,
    /// The blob's block index: every block is checked against it before anything else.
    index: Option<Arc<BlobIndex>>,
}

impl<'a> FillSink<'a> {
    pub fn new(
        inner: &'a Inner,
        state: &'a Arc<BlobState>,
        partial: Option<Arc<Partial>>,
        claimed: Range<u64>,
        fetcher: Fetcher,
        generation: u64,
        index: Option<Arc<BlobIndex>>,
    ) -> Self {
        Self {
            generation,
            index,
            inner,
            state,
            partial,
            keep: match fetcher {
                Fetcher::Reader { keep: true } => claimed.clone(),
                _ => 0..0,
            },
            fetcher,
            unreleased: claimed.clone(),
            next: claimed.start,
            claimed,
            kept: BTreeMap::new(),
            buf: Vec::new(),
            kind: None,
            received: 0,
            mismatch: None,
        }
    }

    fn size(&self) -> u64 {
        self.state.blob.size
    }

    /// The end of the bytes this fetch delivers.
    fn end_block(&self) -> u64 {
        match self.kind {
            Some(BodyKind::Whole) => crate::cache::block::block_count(self.size()),
            _ => self.claimed.end,
        }
    }

    /// Conclude: check the body was complete, and release what was claimed but never came
    /// (with the error, for the readers waiting for it, if this is a reader's fetch).
    pub fn finish(mut self, fetched: Result<(), SourceError>) -> Result<FillSink<'a>, CacheError> {
        let r = fetched.map_err(CacheError::from).and_then(|()| {
            if self.kind.is_none() {
                return Err(self.protocol("no body".into()));
            }
            if self.next < self.end_block() || !self.buf.is_empty() {
                let at = self.next * BLOCK_SIZE + self.buf.len() as u64;
                return Err(self.protocol(format!("body ended at byte {at}")));
            }
            match self.mismatch.take() {
                Some(e) => Err(e),
                None => Ok(()),
            }
        });
        if let (Err(e), Fetcher::Reader { .. }) = (&r, self.fetcher) {
            let rest = std::mem::replace(&mut self.unreleased, 0..0);
            if !rest.is_empty() {
                self.state.release_failed(rest, e);
            }
        }
        self.release_rest();
        r.map(|()| self)
    }

    fn release_rest(&mut self) {
        let rest = std::mem::replace(&mut self.unreleased, 0..0);
        if !rest.is_empty() {
            self.state.release(rest);
        }
    }

    fn protocol(&self, detail: String) -> CacheError {
        CacheError::Source(SourceError::Protocol {
            what: format!("blob {}", self.state.blob.digest),
            detail,
        })
    }

    /// A block is complete: check it, store it, release it, hash it, keep it.
    fn seal(&mut self) {
        let i = self.next;
        let data = std::mem::take(&mut self.buf);
        let ours = self.claimed.contains(&i);
        // A block that fails its index is never stored, hashed or served.
        let sound = match &self.index {
            Some(ix) => match ix.check(self.inner.src.as_ref(), self.inner.stats(), i, &data) {
                Ok(true) => true,
                Ok(false) => {
                    CacheStats::add(&self.inner.stats().block_failures, 1);
                    self.inner.poison(&self.state.blob.digest);
                    log::error!(
                        "{}: block {i} does not match its index; not served",
                        self.state.blob.digest
                    );
                    self.mismatch.get_or_insert(
                        self.state
                            .integrity(format!("block {i} does not match its index")),
                    );
                    false
                }
                Err(e) => {
                    self.mismatch.get_or_insert(e);
                    false
                }
            },
            None => true,
        };
        // After the blob's bytes were dropped, what this fetch brings is not trusted.
        let current = sound && self.state.generation() == self.generation;
        let mut stored = false;
        if let Some(p) = self.partial.as_ref().filter(|_| current) {
            stored =
                p.has(i) && !ours || self.inner.cache.store_block(p, &self.state.blob, i, &data);
        }
        if ours {
            self.state.release(i..i + 1);
            self.unreleased.start = i + 1;
        }
        if current {
            if let Err(e) =
                self.inner
                    .advance_hash(self.state, Some((i, &data)), super::HashWait::No)
            {
                self.mismatch.get_or_insert(e);
            }
            if !stored {
                self.inner.hold_unstored(self.state, i, &data);
            }
        }
        if sound && self.keep.contains(&i) {
            self.kept.insert(i, data);
        }
        self.next = i + 1;
        let want = block_len(self.size(), self.next) as usize;
        self.buf = Vec::with_capacity(want);
    }
}

impl Drop for FillSink<'_> {
    fn drop(&mut self) {
        self.release_rest();
    }
}

impl BlobSink for FillSink<'_> {
    fn begin(&mut self, kind: BodyKind) -> std::io::Result<()> {
        self.kind = Some(kind);
        if kind == BodyKind::Whole {
            self.next = 0;
        }
        self.buf = Vec::with_capacity(block_len(self.size(), self.next) as usize);
        Ok(())
    }

    fn data(&mut self, mut bytes: &[u8]) -> std::io::Result<()> {
        self.received += bytes.len() as u64;
        while !bytes.is_empty() {
            if self.next >= self.end_block() {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    "body longer than asked",
                ));
            }
            let want = block_len(self.size(), self.next) as usize;
            let n = (want - self.buf.len()).min(bytes.len());
            self.buf.extend_from_slice(&bytes[..n]);
            bytes = &bytes[n..];
            if self.buf.len() == want {
                self.seal();
            }
        }
        Ok(())
    }
}
