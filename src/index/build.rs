//! Index one blob by streaming it once from a [`Source`]: the block hashes and the
//! whole-blob sha256 run on two threads, so that indexing goes about as fast as hashing
//! the blob once (both are sha256 over every byte; one thread would take twice as long).

use std::io;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::Arc;

use sha2::{Digest as _, Sha256};

use super::format::Builder;
use crate::error::SourceError;
use crate::oci::{Descriptor, Digest};
use crate::source::{BlobSink, BodyKind, Source};

/// Bytes handed to the hashing threads at a time.
const BATCH: usize = 1 << 20;
/// Batches in flight per thread: bounds memory to a few MiB.
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

/// Feeds batches of the blob to the two hashing threads.
struct Fanout {
    batch: Vec<u8>,
    to_blocks: SyncSender<Arc<Vec<u8>>>,
    to_whole: SyncSender<Arc<Vec<u8>>>,
}

impl Fanout {
    fn flush(&mut self) -> io::Result<()> {
        if self.batch.is_empty() {
            return Ok(());
        }
        let full = Arc::new(std::mem::replace(
            &mut self.batch,
            Vec::with_capacity(BATCH),
        ));
        let gone = |_| io::Error::other("a hashing thread stopped");
        self.to_blocks.send(full.clone()).map_err(gone)?;
        self.to_whole.send(full).map_err(gone)
    }
}

impl BlobSink for Fanout {
    fn begin(&mut self, kind: BodyKind) -> io::Result<()> {
        match kind {
            BodyKind::Whole => Ok(()),
            BodyKind::Range => Err(io::Error::other("asked for the whole blob, got a range")),
        }
    }

    fn data(&mut self, mut bytes: &[u8]) -> io::Result<()> {
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
    let (to_blocks, blocks_rx) = sync_channel::<Arc<Vec<u8>>>(DEPTH);
    let (to_whole, whole_rx) = sync_channel::<Arc<Vec<u8>>>(DEPTH);
    let mut builder = Builder::blocks_only(&layer.digest, layer.size, block_size);
    let (fetched, whole, builder) = std::thread::scope(|s| {
        let blocks = s.spawn(move || {
            drain(blocks_rx, |b| builder.update(b));
            builder
        });
        let whole = s.spawn(move || {
            let mut h = Sha256::new();
            drain(whole_rx, |b| h.update(b));
            Digest::from_hasher(h)
        });
        let mut sink = Fanout {
            batch: Vec::with_capacity(BATCH),
            to_blocks,
            to_whole,
        };
        let fetched = source
            .fetch_blob(repo, &layer.digest, layer.size, None, &mut sink)
            .and_then(|()| {
                sink.flush().map_err(|e| SourceError::Io {
                    path: format!("blob {}", layer.digest),
                    source: e,
                })
            });
        drop(sink); // closes both channels: the threads finish
        (fetched, whole.join(), blocks.join())
    });
    fetched?;
    let blob_err = |detail: String| BuildError::Blob {
        digest: layer.digest.clone(),
        detail,
    };
    let (Ok(whole), Ok(builder)) = (whole, builder) else {
        return Err(blob_err("a hashing thread panicked".into()));
    };
    let (bytes, root) = builder
        .finish_with(whole)
        .map_err(|e| blob_err(e.to_string()))?;
    Ok(Built {
        digest: Digest::of(&bytes),
        bytes,
        root,
    })
}

fn drain(rx: Receiver<Arc<Vec<u8>>>, mut f: impl FnMut(&[u8])) {
    for batch in rx {
        f(&batch);
    }
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
        let built = index_layer(&src, "r", &layer, 65536).unwrap();
        let mut plain = Builder::new(&digest, data.len() as u64, 65536);
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
        assert!(index_layer(&src, "r", &short, 65536).is_err());
    }
}
