//! Index one blob by streaming it once from a [`Source`]: the block hashes (on the thread
//! that reads) and the whole-blob sha256 (on a second thread) run side by side, so that
//! indexing goes about as fast as hashing the blob once. Both are sha256 over every byte;
//! on one thread indexing would take twice as long.

use std::io;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};

use sha2::{Digest as _, Sha256};

use super::format::Builder;
use crate::error::SourceError;
use crate::oci::{Descriptor, Digest};
use crate::source::{BlobSink, BodyKind, Source};

/// Bytes handed to the whole-blob hashing thread at a time: large, so that a busy machine
/// schedules few hand-offs.
const BATCH: usize = 4 << 20;
/// Batches in flight: bounds memory to a few batches.
const DEPTH: usize = 4;

/// An index blob made for one data blob.
#[derive(Debug, Clone)]
pub struct Built {
    /// The index blob's bytes.
    pub bytes: Vec<u8>,
    /// Its digest, under which it is pushed.
    pub digest: Digest,
    /// Its root (sha256 of header and top table), which manifests and referrers bind.
    pub root: Digest,
}

/// Why a blob could not be indexed.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error("blob {digest}: {detail}")]
    Blob { digest: Digest, detail: String },
}

/// Hashes blocks as the bytes arrive, and hands them in batches to the thread that
/// hashes the whole blob.
struct Fanout<'a> {
    blocks: &'a mut Builder,
    batch: Vec<u8>,
    to_whole: SyncSender<Vec<u8>>,
    /// Batches the hashing thread is done with, to fill again: fresh multi-MiB buffers
    /// would cost a page fault per 4 KiB.
    recycled: Receiver<Vec<u8>>,
}

impl Fanout<'_> {
    fn flush(&mut self) -> io::Result<()> {
        if self.batch.is_empty() {
            return Ok(());
        }
        let next = match self.recycled.try_recv() {
            Ok(mut b) => {
                b.clear();
                b
            }
            Err(_) => Vec::with_capacity(BATCH),
        };
        let full = std::mem::replace(&mut self.batch, next);
        self.to_whole
            .send(full)
            .map_err(|_| io::Error::other("the hashing thread stopped"))
    }
}

impl BlobSink for Fanout<'_> {
    fn begin(&mut self, kind: BodyKind) -> io::Result<()> {
        match kind {
            BodyKind::Whole => Ok(()),
            BodyKind::Range => Err(io::Error::other("asked for the whole blob, got a range")),
        }
    }

    fn data(&mut self, mut bytes: &[u8]) -> io::Result<()> {
        self.blocks.update(bytes);
        while !bytes.is_empty() {
            let n = (BATCH - self.batch.len()).min(bytes.len());
            self.batch.extend_from_slice(&bytes[..n]);
            bytes = &bytes[n..];
            if self.batch.len() == BATCH {
                self.flush()?;
            }
        }
        Ok(())
    }
}

/// Stream `layer` of `repo` once and build its index with `block_size` blocks. The index
/// is made only if the bytes read match the layer's digest.
pub fn index_layer(
    source: &dyn Source,
    repo: &str,
    layer: &Descriptor,
    block_size: u64,
) -> Result<Built, BuildError> {
    let (to_whole, whole_rx) = sync_channel::<Vec<u8>>(DEPTH);
    let (give_back, recycled) = sync_channel::<Vec<u8>>(DEPTH + 2);
    let mut builder = Builder::blocks_only(&layer.digest, layer.size, block_size);
    let (fetched, whole) = std::thread::scope(|s| {
        let whole = s.spawn(move || {
            let mut h = Sha256::new();
            for batch in whole_rx {
                h.update(&batch);
                let _ = give_back.try_send(batch);
            }
            Digest::from_hasher(h)
        });
        let mut sink = Fanout {
            blocks: &mut builder,
            batch: Vec::with_capacity(BATCH),
            to_whole,
            recycled,
        };
        let fetched = source
            .fetch_blob(repo, &layer.digest, layer.size, None, &mut sink)
            .and_then(|()| {
                sink.flush()
                    .map_err(|e| SourceError::sink(format!("blob {}", layer.digest), e))
            });
        drop(sink); // closes the channel: the thread finishes
        (fetched, whole.join())
    });
    fetched?;
    let blob_err = |detail: String| BuildError::Blob {
        digest: layer.digest.clone(),
        detail,
    };
    let whole = whole.map_err(|_| blob_err("the hashing thread panicked".into()))?;
    let (bytes, root) = builder
        .finish_with(whole)
        .map_err(|e| blob_err(e.to_string()))?;
    Ok(Built {
        digest: Digest::of(&bytes),
        bytes,
        root,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::format::Top;
    use crate::source::memory::MemorySource;

    #[test]
    fn a_streamed_layer_indexes_like_the_plain_builder_and_a_wrong_blob_is_refused() {
        let data: Vec<u8> = (0..(3 * BATCH + 12_345)).map(|i| (i % 251) as u8).collect();
        let digest = Digest::of(&data);
        let src = MemorySource::new();
        let layer = src.put_blob("application/octet-stream", data.clone());
        let built = index_layer(&src, "r", &layer, 16384).unwrap();
        let mut plain = Builder::new(&digest, data.len() as u64, 16384);
        plain.update(&data);
        let (bytes, root) = plain.finish().unwrap();
        assert_eq!(built.bytes, bytes);
        assert_eq!(built.root, root);
        assert_eq!(built.digest, Digest::of(&bytes));
        assert!(Top::verify(&built.bytes, &built.root).is_ok());

        // A descriptor whose size or digest the bytes do not match gives no index.
        let short = Descriptor {
            size: data.len() as u64 - 1,
            ..layer.clone()
        };
        assert!(index_layer(&src, "r", &short, 16384).is_err());
    }
}
