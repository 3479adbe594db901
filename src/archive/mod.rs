//! Archives as directories: tar, tar+gzip layers shown as browsable directories, read
//! lazily from the blob.
//!
//! - [`kind`] decides which layers are archives (media types, then magic bytes) and how
//!   they and their directories are named.
//! - [`tar`] reads tar headers; [`index`] turns them into a safe directory tree.
//! - [`gzip`] inflates with checkpoints, so a member is read from the nearest one.
//! - [`zst`] decompresses tar+zstd once, keeping the decompressed tar in the cache.
//! - [`store`] keeps member tables and checkpoints in the cache directory, so a new mount
//!   over the same cache lists an archive without reading it again.
//! - [`remote`] is the archive index `orasfs index` publishes beside the block index, so
//!   that an empty cache lists an archive from the registry without reading the blob.
//! - [`open`] ties them together: [`Archive`] lists an archive and reads its members
//!   through [`BlobBytes`], random access to a blob's bytes.

pub mod gzip;
pub mod index;
pub mod open;
pub mod remote;
pub mod store;
pub mod tar;
pub mod view;
pub mod zst;

pub use crate::names::archive::UnpackMode;
pub use open::{Archive, MemberReader};

use crate::cache::BlobRef;
use crate::read::BlobReader;

/// Errors reading an archive. All of them reach the user as EIO.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error("reading the blob: {0}")]
    Read(String),
    #[error("not a tar archive: {0}")]
    NotTar(String),
    #[error("archive cut short: {0}")]
    Truncated(String),
    #[error("gzip: {0}")]
    Zlib(String),
    #[error("refused: {0}")]
    Hostile(String),
    #[error("stored archive index: {0}")]
    BadIndex(String),
    #[error("zstd: {0}")]
    Zstd(String),
}

/// Random access to one blob's bytes.
pub trait BlobBytes {
    /// The blob's size.
    fn size(&self) -> u64;
    /// Up to `len` bytes at `offset` (fewer only at the end of the blob).
    fn read_at(&self, offset: u64, len: u32) -> Result<Vec<u8>, ArchiveError>;
    /// How often the blob has failed its digest check after bytes of it were served: a
    /// member opened before a failure refuses every later read.
    fn failures(&self) -> u64 {
        0
    }
}

/// [`BlobBytes`] over the read path. Each read opens the blob afresh, so the read path's
/// per-handle read-ahead never fetches past what a member read asks for.
pub struct ReadBlob<'a> {
    pub reader: &'a BlobReader,
    pub blob: &'a BlobRef,
}

impl BlobBytes for ReadBlob<'_> {
    fn size(&self) -> u64 {
        self.blob.size
    }

    fn read_at(&self, offset: u64, len: u32) -> Result<Vec<u8>, ArchiveError> {
        let open = self.reader.open(self.blob, None);
        self.reader
            .read(&open, offset, len)
            .map_err(|e| ArchiveError::Read(e.to_string()))
    }

    fn failures(&self) -> u64 {
        self.reader.failures(&self.blob.digest)
    }
}

#[cfg(test)]
mod tests;
