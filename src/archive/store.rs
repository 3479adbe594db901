//! Archive indexes in the cache directory: `<hex>.idx` holds the member table and the
//! checkpoint list under one CRC32C; `<hex>.win` holds the checkpoints' 32 KiB windows,
//! one slot each, read one at a time (each checked against its own CRC); `<hex>.tar` is
//! the decompressed stream of a tar+zstd blob. Both are written
//! to temporary names and renamed, so a reader sees a whole index or none; a file that
//! fails its checks is ignored and the archive is indexed again.

use std::fs::{self, File};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::gzip::{Checkpoint, WINDOW};
use super::index::{Index, Reader};
use super::ArchiveError;
use crate::oci::Digest;

const MAGIC: &[u8; 8] = b"ORFSAX01";

/// A checkpoint and its window's length and CRC in the window file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Point {
    pub at: Checkpoint,
    pub window_len: u32,
    pub window_crc: u32,
}

/// An archive's stored form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    pub gzip: bool,
    /// tar+zstd: the decompressed tar is kept beside, as `<hex>.tar` ([`dec_path`]).
    pub zstd: bool,
    pub blob_size: u64,
    pub index: Index,
    pub points: Vec<Point>,
}

/// Where the windows of a gzip archive are kept.
pub enum Windows {
    File(File),
    Memory(Vec<Vec<u8>>),
    /// Fetched from a published index when needed (checked there against its sha256).
    Remote(super::remote::RemoteWindows),
}

impl Windows {
    /// Window `i`, checked.
    pub fn get(&self, i: usize, p: &Point) -> Result<Vec<u8>, ArchiveError> {
        let w = match self {
            Windows::Memory(v) => v
                .get(i)
                .cloned()
                .ok_or_else(|| ArchiveError::BadIndex(format!("no window {i}")))?,
            Windows::File(f) => {
                let len = (p.window_len as usize).min(WINDOW);
                let mut buf = vec![0u8; len];
                f.read_exact_at(&mut buf, i as u64 * WINDOW as u64)
                    .map_err(|e| ArchiveError::BadIndex(format!("window {i}: {e}")))?;
                buf
            }
            Windows::Remote(r) => r.get(i, p)?,
        };
        if crc32c::crc32c(&w) != p.window_crc || w.len() != p.window_len as usize {
            return Err(ArchiveError::BadIndex(format!("window {i} fails its CRC")));
        }
        Ok(w)
    }
}

pub fn idx_path(dir: &Path, d: &Digest) -> PathBuf {
    dir.join(format!("{}.idx", d.hex()))
}

pub fn win_path(dir: &Path, d: &Digest) -> PathBuf {
    dir.join(format!("{}.win", d.hex()))
}

/// The decompressed tar of a tar+zstd blob.
pub fn dec_path(dir: &Path, d: &Digest) -> PathBuf {
    dir.join(format!("{}.tar", d.hex()))
}

impl Stored {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(MAGIC);
        out.push(if self.zstd { 2 } else { self.gzip as u8 });
        out.extend_from_slice(&self.blob_size.to_le_bytes());
        self.index.encode(&mut out);
        out.extend_from_slice(&(self.points.len() as u64).to_le_bytes());
        for p in &self.points {
            out.extend_from_slice(&p.at.out.to_le_bytes());
            out.extend_from_slice(&p.at.input.to_le_bytes());
            out.push(p.at.bits);
            out.extend_from_slice(&p.window_len.to_le_bytes());
            out.extend_from_slice(&p.window_crc.to_le_bytes());
        }
        let crc = crc32c::crc32c(&out);
        out.extend_from_slice(&crc.to_le_bytes());
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, ArchiveError> {
        let bad = |s: &str| ArchiveError::BadIndex(s.to_string());
        if bytes.len() < MAGIC.len() + 4 || &bytes[..MAGIC.len()] != MAGIC {
            return Err(bad("not an orasfs archive index"));
        }
        let (body, crc) = bytes.split_at(bytes.len() - 4);
        if crc32c::crc32c(body).to_le_bytes() != crc {
            return Err(bad("CRC mismatch"));
        }
        let mut r = Reader::new(&body[MAGIC.len()..]);
        let (gzip, zstd) = match r.u8()? {
            0 => (false, false),
            1 => (true, false),
            2 => (false, true),
            k => return Err(bad(&format!("compression {k}"))),
        };
        let blob_size = r.u64()?;
        let index = Index::decode(&mut r)?;
        let count = r.u64()? as usize;
        if count > r.left() / 25 {
            return Err(bad("checkpoint count"));
        }
        let mut points = Vec::with_capacity(count);
        let mut last_out = 0u64;
        for i in 0..count {
            let at = Checkpoint {
                out: r.u64()?,
                input: r.u64()?,
                bits: r.u8()?,
            };
            let (window_len, window_crc) = (r.u32()?, r.u32()?);
            if at.bits > 7 || window_len as usize > WINDOW || (i > 0 && at.out <= last_out) {
                return Err(bad("checkpoint out of order"));
            }
            last_out = at.out;
            points.push(Point {
                at,
                window_len,
                window_crc,
            });
        }
        if r.left() != 0 {
            return Err(bad("trailing bytes"));
        }
        Ok(Self {
            gzip,
            zstd,
            blob_size,
            index,
            points,
        })
    }

    /// Load a stored index that matches the blob, with its windows; `None` when absent or
    /// unusable (then it is built again).
    pub fn load(dir: &Path, d: &Digest, blob_size: u64) -> Option<(Self, Windows)> {
        let bytes = fs::read(idx_path(dir, d)).ok()?;
        let stored = match Self::decode(&bytes) {
            Ok(s) if s.blob_size == blob_size => s,
            Ok(_) => return None,
            Err(e) => {
                log::warn!("archive index of {d}: {e}; indexing again");
                return None;
            }
        };
        let windows = File::open(win_path(dir, d)).ok()?;
        let need = stored.points.len() as u64 * WINDOW as u64;
        if windows.metadata().ok()?.len() < need {
            return None;
        }
        Some((stored, Windows::File(windows)))
    }

    /// Store the index; `windows` is the temporary window file written during indexing.
    pub fn save(&self, dir: &Path, d: &Digest, windows: Option<&Path>) -> std::io::Result<()> {
        if let Some(w) = windows {
            fs::rename(w, win_path(dir, d))?;
        } else {
            let empty = crate::cache::temp::beside(&win_path(dir, d));
            File::create(&empty)?;
            fs::rename(&empty, win_path(dir, d))?;
        }
        let path = idx_path(dir, d);
        let tmp = crate::cache::temp::beside(&path);
        let mut f = File::create(&tmp)?;
        f.write_all(&self.encode())?;
        f.sync_all()?;
        fs::rename(&tmp, &path)
    }
}
