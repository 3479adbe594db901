//! The on-disk chunk format: a 24-byte header (magic, data length, chunk index, CRC32C)
//! followed by the data. The CRC covers the blob's digest, the index and the data, so a
//! chunk that was truncated, flipped, or moved to another name is never trusted.

use crate::oci::Digest;

/// Format v1 splits blobs into chunks of this size.
pub const CHUNK_SIZE: u64 = 1024 * 1024;
const MAGIC: &[u8; 8] = b"ORFSCK01";
pub const HEADER_LEN: usize = 24;

/// CRC32C of a chunk's identity and data.
pub fn checksum(digest: &Digest, index: u64, data: &[u8]) -> u32 {
    let c = crc32c::crc32c(digest.hex().as_bytes());
    let c = crc32c::crc32c_append(c, &index.to_le_bytes());
    crc32c::crc32c_append(c, data)
}

/// Encode a chunk file's bytes.
pub fn encode(digest: &Digest, index: u64, data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + data.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&(data.len() as u32).to_le_bytes());
    out.extend_from_slice(&(index as u32).to_le_bytes());
    out.extend_from_slice(&checksum(digest, index, data).to_le_bytes());
    out.extend_from_slice(&[0u8; 4]);
    out.extend_from_slice(data);
    out
}

/// Decode and check a chunk file; `None` if anything about it is off.
pub fn decode(
    digest: &Digest,
    index: u64,
    expected_len: usize,
    mut file: Vec<u8>,
) -> Option<Vec<u8>> {
    if file.len() != HEADER_LEN + expected_len || &file[..8] != MAGIC {
        return None;
    }
    let word = |at: usize| u32::from_le_bytes([file[at], file[at + 1], file[at + 2], file[at + 3]]);
    if word(8) as usize != expected_len || word(12) != index as u32 {
        return None;
    }
    let crc = word(16);
    let data = file.split_off(HEADER_LEN);
    (checksum(digest, index, &data) == crc).then_some(data)
}

/// The length of chunk `index` of a blob of `size` bytes.
pub fn chunk_len(size: u64, index: u64) -> u64 {
    size.saturating_sub(index * CHUNK_SIZE).min(CHUNK_SIZE)
}

/// How many chunks a blob of `size` bytes has.
pub fn chunk_count(size: u64) -> u64 {
    size.div_ceil(CHUNK_SIZE)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_tamper_detection() {
        let d = Digest::of(b"blob");
        let data = vec![7u8; 1000];
        let enc = encode(&d, 3, &data);
        assert_eq!(decode(&d, 3, 1000, enc.clone()), Some(data.clone()));
        assert_eq!(decode(&d, 4, 1000, enc.clone()), None, "wrong index");
        assert_eq!(
            decode(&Digest::of(b"x"), 3, 1000, enc.clone()),
            None,
            "wrong blob"
        );
        let mut flipped = enc.clone();
        flipped[HEADER_LEN + 10] ^= 1;
        assert_eq!(decode(&d, 3, 1000, flipped), None);
        let mut short = enc.clone();
        short.truncate(enc.len() - 1);
        assert_eq!(decode(&d, 3, 1000, short), None);
        assert_eq!(decode(&d, 3, 1000, Vec::new()), None);
    }

    #[test]
    fn chunk_arithmetic() {
        assert_eq!(chunk_count(0), 0);
        assert_eq!(chunk_count(1), 1);
        assert_eq!(chunk_count(CHUNK_SIZE), 1);
        assert_eq!(chunk_count(CHUNK_SIZE + 1), 2);
        assert_eq!(chunk_len(CHUNK_SIZE + 1, 1), 1);
        assert_eq!(chunk_len(CHUNK_SIZE + 1, 0), CHUNK_SIZE);
    }
}
