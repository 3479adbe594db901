//! Verified blobs on disk: a blob whose every byte was hashed and found equal to its
//! digest, beside a sidecar of per-block CRC32C values that every later read checks.
//!
//! ```text
//! blobs/sha256/<hex>          the blob (renamed here from partial/ once verified)
//! blobs/sha256/<hex>.crc      magic, size, block size, one CRC per block, CRC of all that
//! blobs/sha256/<hex>.stamp    the blob file's state when all its CRCs were last checked
//! ```
//!
//! The stamp (size, inode, mtime, ctime) lets a later mount hand the file to the kernel
//! (FUSE passthrough, where the kernel checks nothing) without re-reading all of it: if
//! the file's state is unchanged since every CRC was checked, its content is too. Any
//! change to the file (a write, a truncate, a replacement) changes mtime, ctime or inode.

use std::fs::{self, File};
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};

use super::block::{append_part, block_count, block_len, blocks_of, checksum, BLOCK_SIZE};
use crate::error::CacheError;
use crate::oci::Digest;

const SIDECAR_MAGIC: &[u8; 8] = b"ORFSCRC2";
const STAMP_MAGIC: &[u8; 8] = b"ORFSSTP2";
/// The length of a stamp file.
pub const STAMP_LEN: u64 = 60;

/// A verified blob on disk, open for reading.
#[derive(Debug)]
pub struct Verified {
    pub file: File,
    pub path: PathBuf,
    digest: Digest,
    crcs: Vec<u32>,
    size: u64,
}

impl Verified {
    /// Open a verified blob and its sidecar; `None` if either is missing or inconsistent.
    pub fn open(path: &Path, sidecar: &Path, digest: &Digest, size: u64) -> Option<Self> {
        let file = File::open(path).ok()?;
        if file.metadata().ok()?.len() != size {
            return None;
        }
        let crcs = read_sidecar(sidecar, size)?;
        Some(Self {
            file,
            path: path.to_path_buf(),
            digest: digest.clone(),
            crcs,
            size,
        })
    }

    /// Read block `index`, checking its CRC. `None` means the file was tampered with.
    pub fn block(&self, index: u64) -> Option<Vec<u8>> {
        let len = block_len(self.size, index) as usize;
        let mut buf = vec![0u8; len];
        self.file.read_exact_at(&mut buf, index * BLOCK_SIZE).ok()?;
        let want = *self.crcs.get(index as usize)?;
        (checksum(&self.digest, index, &buf) == want).then_some(buf)
    }

    /// Read `offset..end`, checking every block it touches. `None` on any damage.
    pub fn read(&self, offset: u64, end: u64) -> Option<Vec<u8>> {
        let end = end.min(self.size);
        if offset >= end {
            return Some(Vec::new());
        }
        let mut out = Vec::with_capacity((end - offset) as usize);
        for i in blocks_of(self.size, offset, end - offset) {
            append_part(&mut out, i, &self.block(i)?, offset, end);
        }
        Some(out)
    }

    /// Check every block's CRC.
    pub fn check_all(&self) -> bool {
        (0..block_count(self.size)).all(|i| self.block(i).is_some())
    }
}

/// The length of the sidecar of a blob of `size` bytes.
pub fn sidecar_len(size: u64) -> u64 {
    8 + 8 + 4 + 4 * block_count(size) + 4
}

fn read_sidecar(path: &Path, size: u64) -> Option<Vec<u32>> {
    let bytes = fs::read(path).ok()?;
    if bytes.len() as u64 != sidecar_len(size) || &bytes[..8] != SIDECAR_MAGIC {
        return None;
    }
    let body = &bytes[..bytes.len() - 4];
    let tail = u32::from_le_bytes(bytes[bytes.len() - 4..].try_into().ok()?);
    if crc32c::crc32c(body) != tail
        || u64::from_le_bytes(bytes[8..16].try_into().ok()?) != size
        || u32::from_le_bytes(bytes[16..20].try_into().ok()?) as u64 != BLOCK_SIZE
    {
        return None;
    }
    Some(
        body[20..]
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
    )
}

/// Write a sidecar for a blob of `size` bytes with these block CRCs (via a temp file).
pub fn write_sidecar(tmp: &Path, dest: &Path, size: u64, crcs: &[u32]) -> Result<(), CacheError> {
    let mut side = Vec::with_capacity(sidecar_len(size) as usize);
    side.extend_from_slice(SIDECAR_MAGIC);
    side.extend_from_slice(&size.to_le_bytes());
    side.extend_from_slice(&(BLOCK_SIZE as u32).to_le_bytes());
    for c in crcs {
        side.extend_from_slice(&c.to_le_bytes());
    }
    let tail = crc32c::crc32c(&side);
    side.extend_from_slice(&tail.to_le_bytes());
    fs::write(tmp, &side).map_err(|e| io_err(tmp, e))?;
    fs::rename(tmp, dest).map_err(|e| io_err(dest, e))
}

/// What changes when a file's content is modified or replaced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileStamp {
    pub size: u64,
    pub ino: u64,
    pub mtime: (i64, i64),
    pub ctime: (i64, i64),
}

impl FileStamp {
    pub fn of(f: &File) -> Option<Self> {
        let m = f.metadata().ok()?;
        Some(Self {
            size: m.len(),
            ino: m.ino(),
            mtime: (m.mtime(), m.mtime_nsec()),
            ctime: (m.ctime(), m.ctime_nsec()),
        })
    }

    fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(52);
        v.extend_from_slice(STAMP_MAGIC);
        for x in [
            self.size as i64,
            self.ino as i64,
            self.mtime.0,
            self.mtime.1,
            self.ctime.0,
            self.ctime.1,
        ] {
            v.extend_from_slice(&x.to_le_bytes());
        }
        let crc = crc32c::crc32c(&v);
        v.extend_from_slice(&crc.to_le_bytes());
        v
    }

    fn decode(b: &[u8]) -> Option<Self> {
        if b.len() != 60 || &b[..8] != STAMP_MAGIC {
            return None;
        }
        if crc32c::crc32c(&b[..56]).to_le_bytes() != b[56..60] {
            return None;
        }
        let w =
            |i: usize| i64::from_le_bytes(b[8 + 8 * i..16 + 8 * i].try_into().unwrap_or([0; 8]));
        Some(Self {
            size: w(0) as u64,
            ino: w(1) as u64,
            mtime: (w(2), w(3)),
            ctime: (w(4), w(5)),
        })
    }

    /// The stamp recorded at `path`, if it is sound.
    pub fn load(path: &Path) -> Option<Self> {
        Self::decode(&fs::read(path).ok()?)
    }

    /// Record this stamp at `path` (via a temp file beside it, swept if a crash leaves it).
    pub fn save(&self, path: &Path) -> io::Result<()> {
        let tmp = super::temp::beside(path);
        fs::write(&tmp, self.encode())?;
        fs::rename(&tmp, path).inspect_err(|_| {
            let _ = fs::remove_file(&tmp);
        })
    }
}

pub fn io_err(path: &Path, source: io::Error) -> CacheError {
    CacheError::io(path.display().to_string(), source)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sidecar_and_blocks_catch_damage() {
        let dir = tempfile::tempdir().unwrap();
        let data: Vec<u8> = (0..(2 * BLOCK_SIZE + 3)).map(|i| (i % 251) as u8).collect();
        let digest = Digest::of(&data);
        let path = dir.path().join("b");
        let side = dir.path().join("b.crc");
        fs::write(&path, &data).unwrap();
        let crcs: Vec<u32> = (0..3)
            .map(|i| {
                let s = (i * BLOCK_SIZE) as usize;
                let e = (s + BLOCK_SIZE as usize).min(data.len());
                checksum(&digest, i, &data[s..e])
            })
            .collect();
        write_sidecar(&dir.path().join("t"), &side, data.len() as u64, &crcs).unwrap();
        let v = Verified::open(&path, &side, &digest, data.len() as u64).unwrap();
        assert_eq!(
            v.read(5, BLOCK_SIZE + 9).unwrap(),
            data[5..(BLOCK_SIZE + 9) as usize]
        );
        assert!(v.check_all());
        assert!(Verified::open(&path, &side, &digest, data.len() as u64 + 1).is_none());
        let f = fs::OpenOptions::new().write(true).open(&path).unwrap();
        f.write_all_at(&[255], BLOCK_SIZE + 1).unwrap();
        assert!(v.read(BLOCK_SIZE, BLOCK_SIZE + 2).is_none());
        assert!(v.read(0, 10).is_some(), "other blocks still serve");
        assert!(!v.check_all());
        // A damaged sidecar is refused as a whole.
        let s = fs::OpenOptions::new().write(true).open(&side).unwrap();
        s.write_all_at(&[1], 22).unwrap();
        assert!(Verified::open(&path, &side, &digest, data.len() as u64).is_none());
    }

    /// A sidecar sealed with a valid CRC whose fields do not fit the blob (an older
    /// format, another blob's size, another block size, one CRC too many or too few) is
    /// refused: the seal proves it is intact, not that it is this blob's.
    #[test]
    fn sealed_sidecars_that_do_not_fit_the_blob_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let data: Vec<u8> = (0..(BLOCK_SIZE + 5)).map(|i| (i % 13) as u8).collect();
        let digest = Digest::of(&data);
        let size = data.len() as u64;
        let path = dir.path().join("b");
        fs::write(&path, &data).unwrap();
        let crcs = [
            checksum(&digest, 0, &data[..BLOCK_SIZE as usize]),
            checksum(&digest, 1, &data[BLOCK_SIZE as usize..]),
        ];
        let sealed = |magic: &[u8], size: u64, block: u32, crcs: &[u32]| {
            let mut v = magic.to_vec();
            v.extend_from_slice(&size.to_le_bytes());
            v.extend_from_slice(&block.to_le_bytes());
            for c in crcs {
                v.extend_from_slice(&c.to_le_bytes());
            }
            let tail = crc32c::crc32c(&v);
            v.extend_from_slice(&tail.to_le_bytes());
            v
        };
        let side = dir.path().join("b.crc");
        let opens = |bytes: Vec<u8>| {
            fs::write(&side, bytes).unwrap();
            Verified::open(&path, &side, &digest, size).is_some()
        };
        let bs = BLOCK_SIZE as u32;
        assert!(
            opens(sealed(SIDECAR_MAGIC, size, bs, &crcs)),
            "the right one opens"
        );
        assert!(
            !opens(sealed(b"ORFSCRC1", size, bs, &crcs)),
            "an older format"
        );
        assert!(
            !opens(sealed(SIDECAR_MAGIC, size + 1, bs, &crcs)),
            "another size"
        );
        assert!(
            !opens(sealed(SIDECAR_MAGIC, size, 2 * bs, &crcs)),
            "another block size"
        );
        let three = [crcs[0], crcs[1], crcs[1]];
        assert!(
            !opens(sealed(SIDECAR_MAGIC, size, bs, &three)),
            "a CRC too many"
        );
        assert!(
            !opens(sealed(SIDECAR_MAGIC, size, bs, &crcs[..1])),
            "a CRC too few"
        );
        // Shorter than any sidecar: refused, not a panic.
        assert!(!opens(SIDECAR_MAGIC.to_vec()));
        assert!(!opens(Vec::new()));
    }

    #[test]
    fn stamps_round_trip_and_see_changes() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        fs::write(&p, b"abc").unwrap();
        let f = File::open(&p).unwrap();
        let s = FileStamp::of(&f).unwrap();
        let sp = dir.path().join("f.stamp");
        s.save(&sp).unwrap();
        assert_eq!(FileStamp::load(&sp), Some(s));
        std::thread::sleep(std::time::Duration::from_millis(10));
        fs::write(&p, b"abd").unwrap();
        assert_ne!(FileStamp::of(&f), Some(s), "a rewrite changes the stamp");
        fs::write(&sp, b"junk").unwrap();
        assert_eq!(FileStamp::load(&sp), None);
    }
}
