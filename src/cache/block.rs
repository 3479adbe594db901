//! Blocks: the unit in which the cache records what it holds and checks it. A blob is cut
//! into blocks of [`BLOCK_SIZE`] bytes (the last one shorter); each stored block carries a
//! CRC32C over the blob's digest, the block's index and its bytes, so a block that was
//! flipped, truncated, or moved to another place or blob is never trusted.
//!
//! 16 KiB matches what a GIS client asks for: `gdalinfo` reads 8 KiB at offset 0, the
//! kernel turns that into one 16 KiB request (with its default 128 KiB read-ahead), and
//! GDAL's own `/vsicurl/` fetches 16 KiB chunks. Larger blocks cost a random reader up to a
//! block of bytes it never asked for at each end of every read (64 KiB blocks made
//! `gdalinfo` fetch 4× what `/vsicurl/` does); adjacent blocks are merged into one range
//! request, so small blocks cost requests nothing. A 10 GiB blob needs 640 Ki records
//! (5 MiB of block map).

use crate::oci::Digest;

/// Format v2 splits blobs into blocks of this size.
pub const BLOCK_SIZE: u64 = 16 * 1024;

/// CRC32C of a block's identity and data.
pub fn checksum(digest: &Digest, index: u64, data: &[u8]) -> u32 {
    let c = crc32c::crc32c(digest.hex().as_bytes());
    let c = crc32c::crc32c_append(c, &index.to_le_bytes());
    crc32c::crc32c_append(c, data)
}

/// The length of block `index` of a blob of `size` bytes.
pub fn block_len(size: u64, index: u64) -> u64 {
    size.saturating_sub(index.saturating_mul(BLOCK_SIZE))
        .min(BLOCK_SIZE)
}

/// How many blocks a blob of `size` bytes has.
pub fn block_count(size: u64) -> u64 {
    size.div_ceil(BLOCK_SIZE)
}

/// The blocks `first..end` that hold bytes `offset..offset + len` of a blob of `size`.
pub fn blocks_of(size: u64, offset: u64, len: u64) -> std::ops::Range<u64> {
    let end = size.min(offset.saturating_add(len));
    if offset >= end {
        return 0..0;
    }
    offset / BLOCK_SIZE..(end - 1) / BLOCK_SIZE + 1
}

/// Append to `out` the part of block `i` (its bytes `block`) that lies in `offset..end`.
pub fn append_part(out: &mut Vec<u8>, i: u64, block: &[u8], offset: u64, end: u64) {
    let base = i * BLOCK_SIZE;
    let from = (offset.max(base) - base) as usize;
    let to = (end.min(base + block.len() as u64) - base) as usize;
    out.extend_from_slice(&block[from..to]);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_arithmetic() {
        let b = BLOCK_SIZE;
        assert_eq!(block_count(0), 0);
        assert_eq!(block_count(1), 1);
        assert_eq!(block_count(b), 1);
        assert_eq!(block_count(b + 1), 2);
        assert_eq!(block_len(b + 5, 0), b);
        assert_eq!(block_len(b + 5, 1), 5);
        assert_eq!(block_len(b + 5, 2), 0);
        assert_eq!(block_len(u64::MAX, u64::MAX), 0);
        assert_eq!(blocks_of(3 * b, 0, 1), 0..1);
        assert_eq!(blocks_of(3 * b, b - 1, 2), 0..2);
        assert_eq!(blocks_of(3 * b, b, b), 1..2);
        assert_eq!(blocks_of(3 * b, 2 * b + 7, 10 * b), 2..3);
        assert_eq!(blocks_of(3 * b, 3 * b, 10), 0..0);
        assert_eq!(blocks_of(10, 0, 0), 0..0);
    }

    #[test]
    fn checksums_bind_digest_index_and_data() {
        let d1 = Digest::of(b"one");
        let d2 = Digest::of(b"two");
        let c = checksum(&d1, 3, b"data");
        assert_ne!(c, checksum(&d2, 3, b"data"));
        assert_ne!(c, checksum(&d1, 4, b"data"));
        assert_ne!(c, checksum(&d1, 3, b"dat4"));
        assert_eq!(c, checksum(&d1, 3, b"data"));
    }
}
