//! Verified whole-blob files. A blob is written to a temp file while it is hashed and
//! checksummed chunk by chunk; only if its sha256 equals the digest is it renamed into
//! place, beside a sidecar of per-chunk CRC32C values that every later read checks.

use std::fs::{self, File};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256};

use super::chunk::{self, CHUNK_SIZE};
use crate::error::CacheError;
use crate::oci::Digest;

const SIDECAR_MAGIC: &[u8; 8] = b"ORFSCRC1";

/// A verified blob on disk, open for reading.
#[derive(Debug)]
pub struct Verified {
    pub file: File,
    pub path: PathBuf,
    crcs: Vec<u32>,
    size: u64,
}

impl Verified {
    /// Open a verified blob and its sidecar; `None` if either is missing or inconsistent.
    pub fn open(path: &Path, sidecar: &Path, size: u64) -> Option<Self> {
        let file = File::open(path).ok()?;
        if file.metadata().ok()?.len() != size {
            return None;
        }
        let crcs = read_sidecar(sidecar, size)?;
        Some(Self {
            file,
            path: path.to_path_buf(),
            crcs,
            size,
        })
    }

    /// Read chunk `index`, checking its CRC. `None` means the file was tampered with.
    pub fn chunk(&self, digest: &Digest, index: u64) -> Option<Vec<u8>> {
        let len = chunk::chunk_len(self.size, index) as usize;
        let mut buf = vec![0u8; len];
        self.file.read_exact_at(&mut buf, index * CHUNK_SIZE).ok()?;
        let want = *self.crcs.get(index as usize)?;
        (chunk::checksum(digest, index, &buf) == want).then_some(buf)
    }
}

/// The length of the sidecar of a blob of `size` bytes: magic, size, one CRC per chunk,
/// and a CRC of all that.
pub fn sidecar_len(size: u64) -> u64 {
    8 + 8 + 4 * chunk::chunk_count(size) + 4
}

fn read_sidecar(path: &Path, size: u64) -> Option<Vec<u32>> {
    let bytes = fs::read(path).ok()?;
    if bytes.len() as u64 != sidecar_len(size) || &bytes[..8] != SIDECAR_MAGIC {
        return None;
    }
    let body = &bytes[..bytes.len() - 4];
    let tail = u32::from_le_bytes(bytes[bytes.len() - 4..].try_into().ok()?);
    if crc32c::crc32c(body) != tail {
        return None;
    }
    if u64::from_le_bytes(bytes[8..16].try_into().ok()?) != size {
        return None;
    }
    Some(
        body[16..]
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
    )
}

/// Writes a whole blob to a temp file, hashing and checksumming as it goes. A writer
/// dropped before [`WholeWriter::finish`] removes its temp file.
pub struct WholeWriter {
    digest: Digest,
    size: u64,
    tmp: PathBuf,
    file: io::BufWriter<File>,
    hasher: Sha256,
    written: u64,
    pending: Vec<u8>,
    crcs: Vec<u32>,
    done: bool,
}

impl WholeWriter {
    pub fn create(tmp_dir: &Path, digest: &Digest, size: u64) -> Result<Self, CacheError> {
        let tmp = tmp_dir.join(format!("{}.{}.whole", digest.hex(), rand::random::<u64>()));
        let file = File::create(&tmp).map_err(|e| io_err(&tmp, e))?;
        Ok(Self {
            digest: digest.clone(),
            size,
            tmp,
            file: io::BufWriter::with_capacity(1 << 20, file),
            hasher: Sha256::new(),
            written: 0,
            pending: Vec::new(),
            crcs: Vec::new(),
            done: false,
        })
    }

    pub fn write(&mut self, mut data: &[u8]) -> io::Result<()> {
        if self.written + data.len() as u64 > self.size {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("blob is longer than its descriptor's {} bytes", self.size),
            ));
        }
        self.written += data.len() as u64;
        self.hasher.update(data);
        self.file.write_all(data)?;
        while !data.is_empty() {
            let room = CHUNK_SIZE as usize - self.pending.len();
            let n = room.min(data.len());
            self.pending.extend_from_slice(&data[..n]);
            data = &data[n..];
            if self.pending.len() == CHUNK_SIZE as usize {
                self.seal_chunk();
            }
        }
        Ok(())
    }

    fn seal_chunk(&mut self) {
        let index = self.crcs.len() as u64;
        self.crcs
            .push(chunk::checksum(&self.digest, index, &self.pending));
        self.pending.clear();
    }

    /// Check length and digest; on success move the blob and its sidecar into place.
    pub fn finish(mut self, dest: &Path, sidecar: &Path) -> Result<(), CacheError> {
        let result = self.finish_inner(dest, sidecar);
        self.done = result.is_ok();
        result
    }

    fn finish_inner(&mut self, dest: &Path, sidecar: &Path) -> Result<(), CacheError> {
        if self.written != self.size {
            return Err(CacheError::Integrity {
                digest: self.digest.clone(),
                detail: format!("got {} bytes, descriptor says {}", self.written, self.size),
            });
        }
        if !self.pending.is_empty() {
            self.seal_chunk();
        }
        let actual = Digest::from_hasher(std::mem::take(&mut self.hasher));
        if actual != self.digest {
            return Err(CacheError::Integrity {
                digest: self.digest.clone(),
                detail: format!("content hashes to {actual}"),
            });
        }
        self.file.flush().map_err(|e| io_err(&self.tmp, e))?;
        let mut side = Vec::with_capacity(20 + 4 * self.crcs.len());
        side.extend_from_slice(SIDECAR_MAGIC);
        side.extend_from_slice(&self.size.to_le_bytes());
        for c in &self.crcs {
            side.extend_from_slice(&c.to_le_bytes());
        }
        let tail = crc32c::crc32c(&side);
        side.extend_from_slice(&tail.to_le_bytes());
        let side_tmp = self.tmp.with_extension("crc");
        fs::write(&side_tmp, &side).map_err(|e| io_err(&side_tmp, e))?;
        // The sidecar lands first: a blob file without one is never trusted.
        fs::rename(&side_tmp, sidecar).map_err(|e| io_err(sidecar, e))?;
        fs::rename(&self.tmp, dest).map_err(|e| io_err(dest, e))?;
        Ok(())
    }
}

impl Drop for WholeWriter {
    fn drop(&mut self) {
        if !self.done {
            let _ = fs::remove_file(&self.tmp);
            let _ = fs::remove_file(self.tmp.with_extension("crc"));
        }
    }
}

pub fn io_err(path: &Path, source: io::Error) -> CacheError {
    CacheError::Io {
        path: path.display().to_string(),
        source,
    }
}
