//! A partly fetched blob on disk: a sparse data file at the blob's final size, and a block
//! map beside it that says which blocks hold fetched bytes and what their CRC32C is.
//!
//! ```text
//! partial/sha256/<hex>        data: block i at offset i × BLOCK_SIZE (holes where unfetched)
//! partial/sha256/<hex>.map    header (32 bytes), then one 8-byte record per block
//! ```
//!
//! The header holds a magic, the blob size, the block size and a CRC32C of those. A record
//! is the block's CRC and a check word derived from the index and that CRC; an all-zero
//! (never written) or torn record fails its check and means "absent". A block is written
//! data first, record second, so after a crash a record never vouches for data that was not
//! written; and every block is checked against its record's CRC whenever it is read, so
//! data damaged later is a miss, not a wrong byte.
//!
//! Once every block is present and the blob's sha256 matches its digest, the data file is
//! *renamed* into the verified place (see [`super::verified`]): no copy, no second hash.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use super::block::{block_count, block_len, checksum, BLOCK_SIZE};
use crate::oci::Digest;

const MAGIC: &[u8; 8] = b"ORFSMAP2";
const HEADER_LEN: u64 = 32;
const RECORD_LEN: u64 = 8;

fn check_word(index: u64, crc: u32) -> u32 {
    let c = crc32c::crc32c(&index.to_le_bytes());
    crc32c::crc32c_append(c, &crc.to_le_bytes()) ^ 0x5a5a_a5a5
}

fn header(size: u64) -> [u8; HEADER_LEN as usize] {
    let mut h = [0u8; HEADER_LEN as usize];
    h[..8].copy_from_slice(MAGIC);
    h[8..16].copy_from_slice(&size.to_le_bytes());
    h[16..20].copy_from_slice(&(BLOCK_SIZE as u32).to_le_bytes());
    let crc = crc32c::crc32c(&h[..20]);
    h[20..24].copy_from_slice(&crc.to_le_bytes());
    h
}

/// The length of the block map of a blob of `size` bytes.
pub fn map_len(size: u64) -> u64 {
    HEADER_LEN + RECORD_LEN * block_count(size)
}

/// One partly fetched blob, open for reading and writing blocks.
#[derive(Debug)]
pub struct Partial {
    digest: Digest,
    size: u64,
    pub(super) data_path: PathBuf,
    pub(super) map_path: PathBuf,
    data: File,
    map: File,
    /// The CRC of each block that is present.
    crcs: Mutex<Vec<Option<u32>>>,
}

impl Partial {
    /// Open the blob's partial files, creating them if missing. A map that does not belong
    /// to a blob of this size (or is not a map) is started afresh, and so is its data.
    pub fn open(data_path: &Path, map_path: &Path, digest: &Digest, size: u64) -> io::Result<Self> {
        let count = block_count(size);
        let existing = fs::symlink_metadata(map_path)
            .is_ok_and(|m| m.is_file())
            .then(|| fs::read(map_path).ok())
            .flatten();
        let records = existing.and_then(|bytes| {
            (bytes.len() as u64 >= HEADER_LEN && bytes[..HEADER_LEN as usize] == header(size))
                .then(|| bytes[HEADER_LEN as usize..].to_vec())
        });
        let fresh = records.is_none();
        let mut crcs = vec![None; count as usize];
        if let Some(records) = &records {
            for (i, r) in records.chunks_exact(RECORD_LEN as usize).enumerate() {
                if i as u64 >= count {
                    break;
                }
                let crc = u32::from_le_bytes([r[0], r[1], r[2], r[3]]);
                let check = u32::from_le_bytes([r[4], r[5], r[6], r[7]]);
                if check == check_word(i as u64, crc) {
                    crcs[i] = Some(crc);
                }
            }
        }
        let mut opts = OpenOptions::new();
        // Never follow a link planted in the cache: writing through it would write
        // outside the cache.
        opts.read(true)
            .write(true)
            .create(true)
            .custom_flags(libc::O_NOFOLLOW);
        if fresh {
            opts.truncate(true);
        }
        let data = opts.open(data_path)?;
        let map = opts.open(map_path)?;
        if fresh {
            map.write_all_at(&header(size), 0)?;
            map.set_len(map_len(size))?;
        }
        data.set_len(size)?;
        Ok(Self {
            digest: digest.clone(),
            size,
            data_path: data_path.to_path_buf(),
            map_path: map_path.to_path_buf(),
            data,
            map,
            crcs: Mutex::new(crcs),
        })
    }

    fn crcs(&self) -> std::sync::MutexGuard<'_, Vec<Option<u32>>> {
        self.crcs.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether block `i` is recorded as present (not yet checked against its CRC).
    pub fn has(&self, i: u64) -> bool {
        self.crcs().get(i as usize).is_some_and(|c| c.is_some())
    }

    /// How many blocks are present.
    pub fn present(&self) -> u64 {
        self.crcs().iter().filter(|c| c.is_some()).count() as u64
    }

    /// Every block's CRC, if every block is present.
    pub fn all_crcs(&self) -> Option<Vec<u32>> {
        self.crcs().iter().copied().collect()
    }

    /// Read block `i` and check it. `Ok(None)` when it is absent; a block that fails its
    /// check is forgotten (its record cleared) and reported as `Err(InvalidData)`.
    pub fn read_block(&self, i: u64) -> io::Result<Option<Vec<u8>>> {
        let Some(want) = self.crcs().get(i as usize).copied().flatten() else {
            return Ok(None);
        };
        let mut buf = vec![0u8; block_len(self.size, i) as usize];
        self.data.read_exact_at(&mut buf, i * BLOCK_SIZE)?;
        if checksum(&self.digest, i, &buf) != want {
            self.forget_block(i);
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("block {i} of {} fails its checksum", self.digest),
            ));
        }
        Ok(Some(buf))
    }

    /// Store block `i`: data first, then its record.
    pub fn write_block(&self, i: u64, data: &[u8]) -> io::Result<()> {
        if i >= block_count(self.size) || data.len() as u64 != block_len(self.size, i) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("block {i} of {} has the wrong length", self.digest),
            ));
        }
        let crc = checksum(&self.digest, i, data);
        self.data.write_all_at(data, i * BLOCK_SIZE)?;
        let mut rec = [0u8; RECORD_LEN as usize];
        rec[..4].copy_from_slice(&crc.to_le_bytes());
        rec[4..].copy_from_slice(&check_word(i, crc).to_le_bytes());
        self.map.write_all_at(&rec, HEADER_LEN + RECORD_LEN * i)?;
        self.crcs()[i as usize] = Some(crc);
        Ok(())
    }

    /// Clear block `i`'s record (it failed a check, or its bytes were proved wrong).
    pub fn forget_block(&self, i: u64) {
        if let Some(c) = self.crcs().get_mut(i as usize) {
            *c = None;
        }
        let _ = self
            .map
            .write_all_at(&[0u8; RECORD_LEN as usize], HEADER_LEN + RECORD_LEN * i);
    }

    /// The data file, for hashing and promotion.
    pub fn data(&self) -> &File {
        &self.data
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn paths(dir: &Path) -> (PathBuf, PathBuf) {
        (dir.join("blob"), dir.join("blob.map"))
    }

    #[test]
    fn blocks_survive_a_reopen_and_damage_is_a_miss() {
        let dir = tempfile::tempdir().unwrap();
        let (d, m) = paths(dir.path());
        let digest = Digest::of(b"x");
        let size = 2 * BLOCK_SIZE + 10;
        let p = Partial::open(&d, &m, &digest, size).unwrap();
        // The map is laid out whole at once, as the cache accounts it before the open:
        // a 32-byte header and an 8-byte record for each of the 3 blocks.
        assert_eq!(fs::metadata(&m).unwrap().len(), 32 + 3 * 8);
        assert_eq!(map_len(size), 32 + 3 * 8);
        let b1 = vec![7u8; BLOCK_SIZE as usize];
        let b2 = vec![9u8; 10];
        p.write_block(1, &b1).unwrap();
        p.write_block(2, &b2).unwrap();
        assert!(p.write_block(2, &b1).is_err(), "wrong length refused");
        assert!(p.write_block(3, &b2).is_err(), "past the end refused");
        drop(p);
        let p = Partial::open(&d, &m, &digest, size).unwrap();
        assert_eq!(p.read_block(0).unwrap(), None);
        assert_eq!(p.read_block(1).unwrap().unwrap(), b1);
        assert_eq!(p.read_block(2).unwrap().unwrap(), b2);
        assert_eq!(p.present(), 2);
        // Flip one data byte: the block is refused and forgotten, on disk too.
        let f = OpenOptions::new().write(true).open(&d).unwrap();
        f.write_all_at(&[8], BLOCK_SIZE + 5).unwrap();
        assert!(p.read_block(1).is_err());
        assert!(!p.has(1));
        drop(p);
        let p = Partial::open(&d, &m, &digest, size).unwrap();
        assert!(!p.has(1));
        assert!(p.has(2));
        // A map for another size (or another format) starts afresh.
        drop(p);
        let p = Partial::open(&d, &m, &digest, size + 1).unwrap();
        assert_eq!(p.present(), 0);
        // Another blob's digest never validates these bytes.
        p.write_block(0, &b1).unwrap();
        drop(p);
        let other = Partial::open(&d, &m, &Digest::of(b"y"), size + 1).unwrap();
        assert!(other.read_block(0).is_err());
    }

    #[test]
    fn torn_records_are_absent() {
        let dir = tempfile::tempdir().unwrap();
        let (d, m) = paths(dir.path());
        let digest = Digest::of(b"x");
        let p = Partial::open(&d, &m, &digest, 4 * BLOCK_SIZE).unwrap();
        for i in 0..4 {
            p.write_block(i, &vec![i as u8; BLOCK_SIZE as usize])
                .unwrap();
        }
        drop(p);
        // Damage record 1's check word, zero record 2, and damage record 3's CRC (its
        // check word intact): each is a torn record, and absent.
        let f = OpenOptions::new().write(true).open(&m).unwrap();
        f.write_all_at(&[1], HEADER_LEN + RECORD_LEN + 6).unwrap();
        f.write_all_at(&[0; 8], HEADER_LEN + 2 * RECORD_LEN)
            .unwrap();
        f.write_all_at(&[0xff], HEADER_LEN + 3 * RECORD_LEN + 1)
            .unwrap();
        let p = Partial::open(&d, &m, &digest, 4 * BLOCK_SIZE).unwrap();
        assert!(p.has(0));
        assert!(!p.has(1));
        assert!(!p.has(2));
        assert!(
            !p.has(3),
            "a record whose CRC does not match its check word"
        );
        assert_eq!(p.all_crcs(), None);
    }

    /// A map's never-written records are zeros (a sparse hole): none of them may read as
    /// present, at any block index of a blob up to 16 GiB.
    #[test]
    fn a_zero_record_is_absent_at_every_index() {
        let first_bad = (0..1u64 << 20).find(|&i| check_word(i, 0) == 0);
        assert_eq!(first_bad, None);
    }

    /// A record copied into another block's slot does not vouch for that block: the check
    /// word binds the record to its index.
    #[test]
    fn a_record_moved_to_another_slot_is_absent() {
        let dir = tempfile::tempdir().unwrap();
        let (d, m) = paths(dir.path());
        let digest = Digest::of(b"x");
        let p = Partial::open(&d, &m, &digest, 2 * BLOCK_SIZE).unwrap();
        p.write_block(0, &[5u8; BLOCK_SIZE as usize]).unwrap();
        drop(p);
        let map = fs::read(&m).unwrap();
        let rec0 = &map[HEADER_LEN as usize..(HEADER_LEN + RECORD_LEN) as usize];
        let f = OpenOptions::new().write(true).open(&m).unwrap();
        f.write_all_at(rec0, HEADER_LEN + RECORD_LEN).unwrap();
        let p = Partial::open(&d, &m, &digest, 2 * BLOCK_SIZE).unwrap();
        assert!(p.has(0) && !p.has(1));
    }
}
