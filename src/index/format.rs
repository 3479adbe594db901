//! The block-digest index format (version 1): a sha256 per block of one blob, laid out as
//! a two-level table so that a reader fetches only what it needs. See
//! `docs/index-format.md` for the full description.
//!
//! ```text
//! header       64 bytes   magic, version, block size, blob size, blob digest, leaf shape
//! top table    32 × L     sha256 of each leaf
//! leaves       L leaves   leaf i: the sha256 of blocks i×P .. min((i+1)×P, N), 32 bytes each
//! ```
//!
//! The *root* is the sha256 of the header and the top table. It is what a manifest (or a
//! referrer) binds: with the root trusted, the top table is checked with one hash, a leaf
//! with one entry of the top table, and a block with one entry of its leaf. The first
//! verified read of a 10 GiB blob (16 KiB blocks) costs the header and top table
//! (160 KiB), one leaf (4 KiB) and the block itself; of an 88 MB COG, 1.4 KiB and 4 KiB.

use sha2::{Digest as _, Sha256};

use crate::oci::Digest;

/// The media type of an index blob, and the artifact type of a referrer holding indexes.
pub const MEDIA_TYPE: &str = "application/vnd.orasfs.block-index.v1";
/// On a data layer (embedded mode): the digest of its index blob.
pub const ANNOTATION_INDEX: &str = "io.orasfs.index.digest";
/// On a data layer and on an index layer: the index's root.
pub const ANNOTATION_ROOT: &str = "io.orasfs.index.root";
/// On an index layer: the digest of the data blob it indexes.
pub const ANNOTATION_BLOB: &str = "io.orasfs.index.blob";

const MAGIC: &[u8; 8] = b"ORFSIDX1";
pub const HEADER_LEN: u64 = 64;
pub const HASH_LEN: u64 = 32;
/// Blocks per leaf: a leaf is 4 KiB, and covers 2 MiB of 16 KiB blocks.
pub const BLOCKS_PER_LEAF: u64 = 128;
/// Largest blob an index describes (a header field bound, not a practical limit).
pub const MAX_BLOB: u64 = 1 << 50;

/// The length of this format's index (leaves of [`BLOCKS_PER_LEAF`]) of a blob of
/// `blob_size` bytes in blocks of `block_size`.
pub fn index_len(blob_size: u64, block_size: u64) -> u64 {
    let blocks = blob_size.div_ceil(block_size);
    HEADER_LEN + HASH_LEN * (blocks.div_ceil(BLOCKS_PER_LEAF) + blocks)
}

/// Why index bytes were refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IndexError {
    #[error("index header: {0}")]
    Header(String),
    #[error("index root does not match: the header and top table hash to {0}")]
    Root(String),
    #[error("index leaf {0} does not match the top table")]
    Leaf(u64),
}

/// The parsed header of an index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub block_size: u64,
    pub blob_size: u64,
    pub blob: Digest,
    pub blocks_per_leaf: u64,
    pub leaf_count: u64,
}

impl Header {
    pub fn block_count(&self) -> u64 {
        self.blob_size.div_ceil(self.block_size)
    }

    /// Bytes of header and top table: what a reader fetches first.
    pub fn top_len(&self) -> u64 {
        HEADER_LEN + HASH_LEN * self.leaf_count
    }

    /// Where leaf `i` starts in the index blob, and its length.
    pub fn leaf_range(&self, i: u64) -> std::ops::Range<u64> {
        let start = self.top_len() + i * HASH_LEN * self.blocks_per_leaf;
        let blocks = self
            .block_count()
            .saturating_sub(i * self.blocks_per_leaf)
            .min(self.blocks_per_leaf);
        start..start + blocks * HASH_LEN
    }

    /// The index blob's total length.
    pub fn index_len(&self) -> u64 {
        self.top_len() + HASH_LEN * self.block_count()
    }

    fn encode(&self) -> [u8; HEADER_LEN as usize] {
        let mut h = [0u8; HEADER_LEN as usize];
        h[..8].copy_from_slice(MAGIC);
        h[8..12].copy_from_slice(&1u32.to_le_bytes());
        h[12..16].copy_from_slice(&(self.block_size as u32).to_le_bytes());
        h[16..24].copy_from_slice(&self.blob_size.to_le_bytes());
        h[24..56].copy_from_slice(&raw(&self.blob));
        h[56..60].copy_from_slice(&(self.blocks_per_leaf as u32).to_le_bytes());
        h[60..64].copy_from_slice(&(self.leaf_count as u32).to_le_bytes());
        h
    }

    /// Parse and check a header.
    pub fn parse(b: &[u8]) -> Result<Self, IndexError> {
        let bad = |s: &str| IndexError::Header(s.to_string());
        if b.len() < HEADER_LEN as usize || &b[..8] != MAGIC {
            return Err(bad("not an orasfs block index"));
        }
        let u32_at =
            |at: usize| u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]) as u64;
        if u32_at(8) != 1 {
            return Err(bad("unknown version"));
        }
        let block_size = u32_at(12);
        let mut size = [0u8; 8];
        size.copy_from_slice(&b[16..24]);
        let blob_size = u64::from_le_bytes(size);
        let blob = Digest::parse(&format!("sha256:{}", hex::encode(&b[24..56])))
            .map_err(|_| bad("bad blob digest"))?;
        let blocks_per_leaf = u32_at(56);
        let leaf_count = u32_at(60);
        if !block_size.is_power_of_two() || !(4096..=(16 << 20)).contains(&block_size) {
            return Err(bad(
                "block size must be a power of two from 4 KiB to 16 MiB",
            ));
        }
        if blob_size > MAX_BLOB {
            return Err(bad("blob size out of range"));
        }
        if blocks_per_leaf == 0 || blocks_per_leaf > 1 << 20 {
            return Err(bad("leaf size out of range"));
        }
        let h = Self {
            block_size,
            blob_size,
            blob,
            blocks_per_leaf,
            leaf_count,
        };
        if leaf_count != h.block_count().div_ceil(blocks_per_leaf) {
            return Err(bad("leaf count does not fit the blob size"));
        }
        Ok(h)
    }
}

fn raw(d: &Digest) -> [u8; 32] {
    let mut out = [0u8; 32];
    if let Ok(v) = hex::decode(d.hex()) {
        if v.len() == 32 {
            out.copy_from_slice(&v);
        }
    }
    out
}

fn sha(b: &[u8]) -> [u8; 32] {
    Sha256::digest(b).into()
}

/// The verified top of an index: its header and the hash of every leaf.
#[derive(Debug, Clone)]
pub struct Top {
    pub header: Header,
    leaves: Vec<[u8; 32]>,
}

impl Top {
    /// Check the first [`Header::top_len`] bytes of an index against its root.
    pub fn verify(bytes: &[u8], root: &Digest) -> Result<Self, IndexError> {
        let header = Header::parse(bytes)?;
        let top_len = header.top_len() as usize;
        let Some(top) = bytes.get(..top_len) else {
            return Err(IndexError::Header("cut short".into()));
        };
        let actual = Digest::of(top);
        if actual != *root {
            return Err(IndexError::Root(actual.to_string()));
        }
        let leaves = top[HEADER_LEN as usize..]
            .chunks_exact(HASH_LEN as usize)
            .map(|c| {
                let mut h = [0u8; 32];
                h.copy_from_slice(c);
                h
            })
            .collect();
        Ok(Self { header, leaves })
    }

    /// Check leaf `i`'s bytes against the top table.
    pub fn verify_leaf(&self, i: u64, bytes: &[u8]) -> Result<Leaf, IndexError> {
        let want = self.leaves.get(i as usize).ok_or(IndexError::Leaf(i))?;
        let r = self.header.leaf_range(i);
        if bytes.len() as u64 != r.end - r.start || sha(bytes) != *want {
            return Err(IndexError::Leaf(i));
        }
        Ok(Leaf {
            hashes: bytes
                .chunks_exact(HASH_LEN as usize)
                .map(|c| {
                    let mut h = [0u8; 32];
                    h.copy_from_slice(c);
                    h
                })
                .collect(),
        })
    }

    /// Which leaf holds block `b`, and the block's place in it.
    pub fn locate(&self, block: u64) -> (u64, usize) {
        (
            block / self.header.blocks_per_leaf,
            (block % self.header.blocks_per_leaf) as usize,
        )
    }
}

/// The verified block hashes of one leaf.
#[derive(Debug, Clone)]
pub struct Leaf {
    hashes: Vec<[u8; 32]>,
}

impl Leaf {
    /// Whether `data` is the block at `slot` of this leaf.
    pub fn check(&self, slot: usize, data: &[u8]) -> bool {
        self.hashes.get(slot).is_some_and(|h| sha(data) == *h)
    }
}

/// Builds an index from a blob's bytes, given in order.
pub struct Builder {
    header: Header,
    block_hashes: Vec<u8>,
    pending: Vec<u8>,
    /// The whole-blob hash, unless the caller computes it elsewhere ([`Builder::blocks_only`]).
    whole: Option<Sha256>,
    seen: u64,
}

impl Builder {
    pub fn new(blob: &Digest, blob_size: u64, block_size: u64) -> Self {
        let mut b = Self::blocks_only(blob, blob_size, block_size);
        b.whole = Some(Sha256::new());
        b
    }

    /// A builder that hashes blocks only; the caller hashes the whole blob (on another
    /// thread, say) and hands the digest to [`Builder::finish_with`].
    pub fn blocks_only(blob: &Digest, blob_size: u64, block_size: u64) -> Self {
        let blocks = blob_size.div_ceil(block_size);
        Self {
            header: Header {
                block_size,
                blob_size,
                blob: blob.clone(),
                blocks_per_leaf: BLOCKS_PER_LEAF,
                leaf_count: blocks.div_ceil(BLOCKS_PER_LEAF),
            },
            block_hashes: Vec::with_capacity((blocks * HASH_LEN) as usize),
            pending: Vec::with_capacity(block_size as usize),
            whole: None,
            seen: 0,
        }
    }

    /// Feed the next bytes of the blob.
    pub fn update(&mut self, mut data: &[u8]) {
        self.seen += data.len() as u64;
        if let Some(w) = &mut self.whole {
            w.update(data);
        }
        let bs = self.header.block_size as usize;
        while !data.is_empty() {
            if self.pending.is_empty() && data.len() >= bs {
                self.block_hashes.extend_from_slice(&sha(&data[..bs]));
                data = &data[bs..];
                continue;
            }
            let n = (bs - self.pending.len()).min(data.len());
            self.pending.extend_from_slice(&data[..n]);
            data = &data[n..];
            if self.pending.len() == bs {
                self.block_hashes.extend_from_slice(&sha(&self.pending));
                self.pending.clear();
            }
        }
    }

    /// The index bytes and its root, once the whole blob was fed and matched its digest.
    pub fn finish(mut self) -> Result<(Vec<u8>, Digest), IndexError> {
        let Some(whole) = self.whole.take() else {
            return Err(IndexError::Header(
                "no whole-blob digest: a blocks-only builder finishes with finish_with".into(),
            ));
        };
        self.finish_with(Digest::from_hasher(whole))
    }

    /// Like [`Builder::finish`], with the whole blob's digest as the caller computed it.
    pub fn finish_with(mut self, actual: Digest) -> Result<(Vec<u8>, Digest), IndexError> {
        if !self.pending.is_empty() {
            self.block_hashes.extend_from_slice(&sha(&self.pending));
        }
        if self.seen != self.header.blob_size || actual != self.header.blob {
            return Err(IndexError::Header(format!(
                "the blob read ({} bytes, {actual}) is not the one described",
                self.seen
            )));
        }
        let h = &self.header;
        let mut out = Vec::with_capacity(h.index_len() as usize);
        out.extend_from_slice(&h.encode());
        let leaf_bytes = (HASH_LEN * h.blocks_per_leaf) as usize;
        for leaf in self.block_hashes.chunks(leaf_bytes) {
            out.extend_from_slice(&sha(leaf));
        }
        let root = Digest::of(&out);
        out.extend_from_slice(&self.block_hashes);
        Ok((out, root))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn build(data: &[u8], bs: u64) -> (Vec<u8>, Digest) {
        let mut b = Builder::new(&Digest::of(data), data.len() as u64, bs);
        for piece in data.chunks(10_000) {
            b.update(piece);
        }
        b.finish().unwrap()
    }

    #[test]
    fn every_block_checks_through_root_top_and_leaf() {
        let bs = 4096;
        let data: Vec<u8> = (0..(bs * 2500 + 17)).map(|i| (i * 7 % 253) as u8).collect();
        let (index, root) = build(&data, bs);
        let top = Top::verify(&index, &root).unwrap();
        assert_eq!(top.header.leaf_count, 2501u64.div_ceil(BLOCKS_PER_LEAF));
        assert_eq!(index.len() as u64, top.header.index_len());
        assert_eq!(index.len() as u64, index_len(data.len() as u64, bs));
        for block in [0u64, 127, 128, 1023, 1024, 2047, 2048, 2500] {
            let (leaf, slot) = top.locate(block);
            let r = top.header.leaf_range(leaf);
            let l = top
                .verify_leaf(leaf, &index[r.start as usize..r.end as usize])
                .unwrap();
            let s = (block * bs) as usize;
            let e = (s + bs as usize).min(data.len());
            assert!(l.check(slot, &data[s..e]), "block {block}");
            let mut bad = data[s..e].to_vec();
            bad[0] ^= 1;
            assert!(!l.check(slot, &bad), "a flipped block fails");
        }
    }

    #[test]
    fn lies_are_refused() {
        let data = vec![5u8; 100_000];
        let (index, root) = build(&data, 4096);
        // Another root, a flipped top table byte, a flipped leaf byte.
        assert!(matches!(
            Top::verify(&index, &Digest::of(b"other")),
            Err(IndexError::Root(_))
        ));
        let mut t = index.clone();
        t[HEADER_LEN as usize] ^= 1;
        assert!(Top::verify(&t, &root).is_err());
        let top = Top::verify(&index, &root).unwrap();
        let r = top.header.leaf_range(0);
        let mut leaf = index[r.start as usize..r.end as usize].to_vec();
        leaf[3] ^= 1;
        assert_eq!(top.verify_leaf(0, &leaf).unwrap_err(), IndexError::Leaf(0));
        assert!(top.verify_leaf(1, &leaf).is_err(), "no leaf 1");
        // A builder fed other bytes than its digest names refuses to finish.
        let mut b = Builder::new(&Digest::of(b"x"), 3, 4096);
        b.update(b"abc");
        assert!(b.finish().is_err());
        // Headers that lie about their shape.
        let mut h = index[..HEADER_LEN as usize].to_vec();
        h[60] ^= 1;
        assert!(Header::parse(&h).is_err());
        assert!(Header::parse(b"short").is_err());
    }
}
