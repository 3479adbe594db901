//! Receiving one fetch. A range arrives chunk by chunk: each chunk is stored and handed to
//! the readers waiting on it as soon as its last byte is in, so a reader waiting on the
//! first chunk of a long run does not wait for the whole run. A whole blob (asked for, or
//! sent by a server that ignores ranges) goes into a verified file instead.

use std::collections::VecDeque;
use std::sync::Arc;

use super::chunk::{self, CHUNK_SIZE};
use super::whole::WholeWriter;
use super::{BlobCache, BlobRef, Chunk, ChunkLead, LeadMode};
use crate::error::{CacheError, SourceError};
use crate::source::{BlobSink, BodyKind};

/// The sink of one fetch, and the leads of the chunks it brings.
pub(super) struct FetchSink<'a> {
    cache: &'a BlobCache,
    blob: &'a BlobRef,
    /// Chunks `next..stop` are still to arrive; `leads` holds their flights, in order.
    next: u64,
    stop: u64,
    leads: VecDeque<ChunkLead>,
    mode: LeadMode,
    /// A range was asked for; `false` for a whole-blob fetch.
    range: bool,
    pending: Vec<u8>,
    got: Vec<(u64, Chunk)>,
    kind: Option<BodyKind>,
    whole: Option<WholeWriter>,
    /// Bytes admitted to the cache for a whole-blob file.
    reserved: u64,
    pub received: u64,
    failed: Option<CacheError>,
}

impl<'a> FetchSink<'a> {
    /// A sink for the whole blob.
    pub fn whole(cache: &'a BlobCache, blob: &'a BlobRef) -> Self {
        Self::new(
            cache,
            blob,
            0,
            0,
            VecDeque::new(),
            LeadMode::Foreground,
            false,
        )
    }

    /// A sink for chunks `start..start + leads.len()`.
    pub fn range(
        cache: &'a BlobCache,
        blob: &'a BlobRef,
        start: u64,
        leads: Vec<ChunkLead>,
        mode: LeadMode,
    ) -> Self {
        let stop = start + leads.len() as u64;
        Self::new(cache, blob, start, stop, leads.into(), mode, true)
    }

    fn new(
        cache: &'a BlobCache,
        blob: &'a BlobRef,
        next: u64,
        stop: u64,
        leads: VecDeque<ChunkLead>,
        mode: LeadMode,
        range: bool,
    ) -> Self {
        Self {
            cache,
            blob,
            next,
            stop,
            leads,
            mode,
            range,
            pending: Vec::new(),
            got: Vec::new(),
            kind: None,
            whole: None,
            reserved: 0,
            received: 0,
            failed: None,
        }
    }

    /// Prefer the sink's own error (e.g. a cache write failure) over the transport's view.
    pub fn explain(&mut self, e: SourceError) -> CacheError {
        self.failed.take().unwrap_or(CacheError::Source(e))
    }

    fn protocol(&self, detail: String) -> CacheError {
        CacheError::Source(SourceError::Protocol {
            what: format!("blob {}", self.blob.digest),
            detail,
        })
    }

    /// Conclude the fetch: the chunks it brought (for the foreground), or the error. On an
    /// error, chunks still owed to waiting readers are released: as a failure for a
    /// foreground fetch, as "fetch it yourself" for a read-ahead.
    pub fn finish(
        mut self,
        fetched: Result<(), CacheError>,
    ) -> Result<Vec<(u64, Chunk)>, CacheError> {
        let r = fetched.and_then(|()| self.conclude());
        if let Err(e) = &r {
            let msg = e.to_string();
            for lead in self.leads.drain(..) {
                lead.finish(match self.mode {
                    LeadMode::Foreground => Err(msg.clone()),
                    LeadMode::ReadAhead => Ok(None),
                });
            }
            if self.reserved > 0 {
                self.cache.ledger.release(&self.blob.digest, self.reserved);
            }
        }
        r.map(|()| std::mem::take(&mut self.got))
    }

    fn conclude(&mut self) -> Result<(), CacheError> {
        match self.kind {
            Some(BodyKind::Range) if !self.range => {
                Err(self.protocol("asked for the whole blob, got a range".into()))
            }
            Some(BodyKind::Range) => {
                if self.next != self.stop || !self.pending.is_empty() {
                    let at = self.next * CHUNK_SIZE + self.pending.len() as u64;
                    let end = self.blob.size.min(self.stop * CHUNK_SIZE);
                    return Err(
                        self.protocol(format!("range body ended at byte {at}, before {end}"))
                    );
                }
                Ok(())
            }
            Some(BodyKind::Whole) => {
                let w = self.whole.take().ok_or_else(|| CacheError::Io {
                    path: "whole-blob temp file".into(),
                    source: std::io::Error::other("not created"),
                })?;
                let c = self.cache;
                let d = &self.blob.digest;
                if let Err(e) = w.finish(&c.blob_path(d), &c.sidecar_path(d)) {
                    if let CacheError::Integrity { .. } = &e {
                        // Nothing of a whole fetch is served before it is checked.
                        c.record_failure(d, false);
                        log::error!("{d}: fetched blob does not match its digest");
                    }
                    return Err(e);
                }
                c.settle_whole(self.blob);
                // The server ignored the range: serve the asked-for chunks from the file.
                while self.next < self.stop {
                    let i = self.next;
                    let c = self.cache.cached_chunk(self.blob, i).ok_or_else(|| {
                        CacheError::Integrity {
                            digest: self.blob.digest.clone(),
                            detail: format!("chunk {i} missing right after a verified whole fetch"),
                        }
                    })?;
                    self.deliver(i, c);
                }
                Ok(())
            }
            None => Err(self.protocol("no body".into())),
        }
    }

    /// Hand a complete chunk to its waiting readers (and to the caller).
    fn deliver(&mut self, i: u64, c: Chunk) {
        if let Some(lead) = self.leads.pop_front() {
            lead.finish(Ok(Some(c.clone())));
        }
        if self.mode == LeadMode::Foreground {
            self.got.push((i, c));
        }
        self.next = i + 1;
    }
}

impl BlobSink for FetchSink<'_> {
    fn begin(&mut self, kind: BodyKind) -> std::io::Result<()> {
        self.kind = Some(kind);
        if kind == BodyKind::Whole {
            let c = self.cache;
            self.reserved = c.reserve_whole(self.blob);
            match WholeWriter::create(&c.tmp_dir(), &self.blob.digest, self.blob.size) {
                Ok(w) => self.whole = Some(w),
                Err(e) => {
                    let msg = e.to_string();
                    self.failed = Some(e);
                    return Err(std::io::Error::other(msg));
                }
            }
        } else if self.range {
            self.pending = Vec::with_capacity(chunk::chunk_len(self.blob.size, self.next) as usize);
        }
        Ok(())
    }

    fn data(&mut self, mut bytes: &[u8]) -> std::io::Result<()> {
        self.received += bytes.len() as u64;
        if let Some(w) = &mut self.whole {
            return w.write(bytes);
        }
        while !bytes.is_empty() {
            if self.next >= self.stop {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    "range body longer than asked",
                ));
            }
            let want = chunk::chunk_len(self.blob.size, self.next) as usize;
            let n = (want - self.pending.len()).min(bytes.len());
            self.pending.extend_from_slice(&bytes[..n]);
            bytes = &bytes[n..];
            if self.pending.len() == want {
                let i = self.next;
                let next_len = if i + 1 < self.stop {
                    chunk::chunk_len(self.blob.size, i + 1) as usize
                } else {
                    0
                };
                let data = std::mem::replace(&mut self.pending, Vec::with_capacity(next_len));
                let c = Arc::new(data);
                self.cache.store_chunk(self.blob, i, &c);
                self.deliver(i, c);
            }
        }
        Ok(())
    }
}
