//! Checking lazily fetched blocks against a block-digest index ([`crate::index::format`]).
//!
//! A data layer's index is found in one of two ways, and the trust differs:
//! - **bound**: the layer carries `io.orasfs.index.digest` and `io.orasfs.index.root`
//!   annotations and the index blob is a layer of the same manifest, so the manifest's
//!   digest covers the index's root;
//! - **referrer**: an artifact of the index media type whose `subject` is the manifest
//!   names the layer; it is trusted only as far as the registry is.
//!
//! The index is resolved once per blob and mount, when first needed: its header and top
//! table are fetched (one small range) and checked against the root; leaves are fetched
//! when a block they cover is about to be fetched, and checked against the top table. An
//! index that fails any check is refused with one log line and the blob is read as if it
//! had none.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use crate::cache::{lock, BlobRef, CacheStats};
use crate::error::CacheError;
use crate::index::format::{self, Leaf, Top};
use crate::oci::{Descriptor, Digest, Manifest};
use crate::source::{Reference, Source, VecSink};

/// Where a layer's index may be found, as the tree knows it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum IndexHint {
    /// Named by the layer's annotations; the index blob is a layer of the same manifest.
    Bound { index: BlobRef, root: Digest },
    /// Possibly attached to the manifest as a referrer.
    Referrers { repo: String, manifest: Digest },
}

/// How far the bytes of a blob are checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trust {
    Bound,
    Referrer,
}

impl IndexHint {
    /// The hint for a data layer of a manifest, from its annotations.
    pub fn for_layer(
        repo: &str,
        manifest: &Digest,
        layer: &Descriptor,
        layers: &[Descriptor],
    ) -> Self {
        let keys = (format::ANNOTATION_INDEX, format::ANNOTATION_ROOT);
        match bound_by(repo, layer, layers, keys, format::MEDIA_TYPE) {
            Some((index, root)) => IndexHint::Bound { index, root },
            None => IndexHint::Referrers {
                repo: repo.to_string(),
                manifest: manifest.clone(),
            },
        }
    }
}

/// A side blob `layer` names in its annotations (`keys`: the blob's digest, and the root
/// that checks it) when a layer of the same manifest (`layers`) is that blob, of
/// `media_type`: the manifest's digest then covers the root.
pub fn bound_by(
    repo: &str,
    layer: &Descriptor,
    layers: &[Descriptor],
    keys: (&str, &str),
    media_type: &str,
) -> Option<(BlobRef, Digest)> {
    let ann = |k: &str| layer.annotations.get(k).and_then(|v| Digest::parse(v).ok());
    let (digest, root) = (ann(keys.0)?, ann(keys.1)?);
    let side = layers
        .iter()
        .find(|l| l.digest == digest && l.media_type == media_type)?;
    let blob = BlobRef {
        repo: repo.to_string(),
        digest: side.digest.clone(),
        size: side.size,
    };
    Some((blob, root))
}

/// Whether a layer is an index (hidden from the tree).
pub fn is_index_layer(d: &Descriptor) -> bool {
    d.media_type == format::MEDIA_TYPE
}

/// A resolved, verified index of one blob.
pub struct BlobIndex {
    pub trust: Trust,
    index: BlobRef,
    top: Top,
    leaves: Mutex<HashMap<u64, Arc<Leaf>>>,
}

impl BlobIndex {
    /// Check block `i` against the index, fetching and checking its leaf if needed.
    pub fn check(
        &self,
        src: &dyn Source,
        stats: &CacheStats,
        i: u64,
        data: &[u8],
    ) -> Result<bool, CacheError> {
        let (leaf, slot) = self.top.locate(i);
        Ok(self.leaf(src, stats, leaf)?.check(slot, data))
    }

    /// Make sure the leaves covering blocks `range` are loaded (before they are fetched,
    /// so a fetch never waits on the index mid-body).
    pub fn prepare(
        &self,
        src: &dyn Source,
        stats: &CacheStats,
        range: std::ops::Range<u64>,
    ) -> Result<(), CacheError> {
        if range.is_empty() {
            return Ok(());
        }
        let first = self.top.locate(range.start).0;
        let last = self.top.locate(range.end - 1).0;
        for leaf in first..=last {
            self.leaf(src, stats, leaf)?;
        }
        Ok(())
    }

    fn leaf(&self, src: &dyn Source, stats: &CacheStats, i: u64) -> Result<Arc<Leaf>, CacheError> {
        if let Some(l) = lock(&self.leaves).get(&i) {
            return Ok(l.clone());
        }
        let r = self.top.header.leaf_range(i);
        let bytes = fetch(src, stats, &self.index, r)?;
        let leaf = self
            .top
            .verify_leaf(i, &bytes)
            .map_err(|e| CacheError::Integrity {
                digest: self.index.digest.clone(),
                detail: e.to_string(),
            })?;
        let leaf = Arc::new(leaf);
        lock(&self.leaves).insert(i, leaf.clone());
        Ok(leaf)
    }
}

fn fetch(
    src: &dyn Source,
    stats: &CacheStats,
    blob: &BlobRef,
    range: std::ops::Range<u64>,
) -> Result<Vec<u8>, CacheError> {
    // A server that ignores ranges sends the whole index: room for it, as its descriptor
    // sizes it (a range answer is held to its range by the client's Content-Range check).
    let mut sink = VecSink::with_limit(blob.size.max(range.end - range.start));
    CacheStats::add(&stats.fetch_requests, 1);
    let r = src.fetch_blob(
        &blob.repo,
        &blob.digest,
        blob.size,
        Some(range.clone()),
        &mut sink,
    );
    CacheStats::add(&stats.fetched_bytes, sink.bytes.len() as u64);
    r?;
    // A server that ignores ranges sends the whole index.
    if sink.kind == Some(crate::source::BodyKind::Whole) {
        return sink
            .bytes
            .get(range.start as usize..range.end as usize)
            .map(<[u8]>::to_vec)
            .ok_or_else(|| CacheError::Integrity {
                digest: blob.digest.clone(),
                detail: "index shorter than its header says".into(),
            });
    }
    Ok(sink.bytes)
}

/// A blob's index once resolved: `None` when it has none (or it was refused).
type Resolution = Arc<OnceLock<Option<Arc<BlobIndex>>>>;

/// The referrers of a manifest that are block indexes, listed once.
type IndexReferrers = Arc<OnceLock<Result<Vec<Descriptor>, String>>>;

/// The index of each blob, resolved once per mount; the referrers of each manifest,
/// listed once (a manifest of 500 layers costs one referrers request, not 500).
#[derive(Default)]
pub struct Indexes {
    /// By blob and hint: a blob shared by several manifests may be indexed by each, with
    /// different trust.
    resolved: Mutex<HashMap<(BlobRef, IndexHint), Resolution>>,
    referrers: Mutex<HashMap<(String, Digest), IndexReferrers>>,
}

impl Indexes {
    /// The verified index of `blob`, if it has one; `None` when it has none or it was
    /// refused (logged once).
    pub fn get(
        &self,
        src: &dyn Source,
        stats: &CacheStats,
        blob: &BlobRef,
        hint: Option<&IndexHint>,
    ) -> Option<Arc<BlobIndex>> {
        let hint = hint?;
        let cell = lock(&self.resolved)
            .entry((blob.clone(), hint.clone()))
            .or_default()
            .clone();
        cell.get_or_init(|| match self.resolve(src, stats, blob, hint) {
            Ok(found) => found.map(Arc::new),
            Err(e) => {
                log::warn!(
                    "{}: its block index is refused ({e}); reading it without",
                    blob.digest
                );
                None
            }
        })
        .clone()
    }
}

impl Indexes {
    fn resolve(
        &self,
        src: &dyn Source,
        stats: &CacheStats,
        blob: &BlobRef,
        hint: &IndexHint,
    ) -> Result<Option<BlobIndex>, CacheError> {
        let (index, root, trust) = match hint {
            IndexHint::Bound { index, root } => (index.clone(), root.clone(), Trust::Bound),
            IndexHint::Referrers { repo, manifest } => {
                match self.find_referrer(src, repo, manifest, blob) {
                    Ok(Some((index, root))) => (index, root, Trust::Referrer),
                    Ok(None) => return Ok(None),
                    Err(e) => {
                        log::debug!("{}: no referrers ({e})", blob.digest);
                        return Ok(None);
                    }
                }
            }
        };
        let integrity = |detail: String| CacheError::Integrity {
            digest: index.digest.clone(),
            detail,
        };
        let head = fetch(src, stats, &index, 0..index.size.min(format::HEADER_LEN))?;
        let header = format::Header::parse(&head).map_err(|e| integrity(e.to_string()))?;
        if header.index_len() != index.size {
            return Err(integrity(format!(
                "its descriptor says {} bytes, its header {}",
                index.size,
                header.index_len()
            )));
        }
        if header.blob != blob.digest || header.blob_size != blob.size {
            return Err(integrity("it describes another blob".into()));
        }
        let top_bytes = fetch(src, stats, &index, 0..header.top_len())?;
        let top = Top::verify(&top_bytes, &root).map_err(|e| integrity(e.to_string()))?;
        if top.header.block_size != crate::cache::block::BLOCK_SIZE {
            return Err(integrity(format!(
                "block size {} (this orasfs reads {} byte blocks)",
                top.header.block_size,
                crate::cache::block::BLOCK_SIZE
            )));
        }
        log::debug!(
            "{}: block index {} ({:?})",
            blob.digest,
            index.digest,
            trust
        );
        Ok(Some(BlobIndex {
            trust,
            index,
            top,
            leaves: Mutex::new(HashMap::new()),
        }))
    }

    /// An index for `blob` among the referrers of `manifest`: an artifact of the index
    /// media type with a layer that names the blob.
    fn find_referrer(
        &self,
        src: &dyn Source,
        repo: &str,
        manifest: &Digest,
        blob: &BlobRef,
    ) -> Result<Option<(BlobRef, Digest)>, CacheError> {
        let cell = lock(&self.referrers)
            .entry((repo.to_string(), manifest.clone()))
            .or_default()
            .clone();
        let listed = cell.get_or_init(|| {
            let all = src.referrers(repo, manifest).map_err(|e| e.to_string())?;
            let mut out = Vec::new();
            for r in all {
                if r.artifact_type.as_deref() == Some(format::MEDIA_TYPE) {
                    let m = src.manifest(repo, &Reference::Digest(r.digest.clone()));
                    if let Ok(Manifest::Image(image)) = m.map(|m| m.manifest) {
                        out.extend(image.layers);
                    }
                }
            }
            Ok(out)
        });
        let layers = listed
            .as_ref()
            .map_err(|e| CacheError::Refused(e.clone()))?;
        // An index for this blob, of the block size this reader uses (another size would
        // be refused: skip it and look further).
        for l in layers {
            let names_blob = l
                .annotations
                .get(format::ANNOTATION_BLOB)
                .is_some_and(|d| *d == blob.digest.to_string());
            let root = l
                .annotations
                .get(format::ANNOTATION_ROOT)
                .and_then(|v| Digest::parse(v).ok());
            if let (true, Some(root), true) = (names_blob, root, is_index_layer(l)) {
                let index = BlobRef {
                    repo: repo.to_string(),
                    digest: l.digest.clone(),
                    size: l.size,
                };
                if format::index_len(blob.size, crate::cache::block::BLOCK_SIZE) == index.size {
                    return Ok(Some((index, root)));
                }
            }
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layer(bytes: &[u8], media_type: &str, annotations: &[(&str, String)]) -> Descriptor {
        Descriptor {
            media_type: media_type.to_string(),
            digest: Digest::of(bytes),
            size: bytes.len() as u64,
            annotations: annotations
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect(),
            platform: None,
            artifact_type: None,
        }
    }

    /// A layer's index is bound only to a layer of the same manifest that has both the
    /// named digest and the index media type; anything else leaves the referrers.
    #[test]
    fn a_bound_index_needs_the_named_digest_and_the_index_type() {
        let manifest = Digest::of(b"manifest");
        let root = Digest::of(b"root");
        let index = layer(b"index", format::MEDIA_TYPE, &[]);
        let other_index = layer(b"another index", format::MEDIA_TYPE, &[]);
        let naming = |d: &Digest| {
            layer(
                b"data",
                "application/octet-stream",
                &[
                    (format::ANNOTATION_INDEX, d.to_string()),
                    (format::ANNOTATION_ROOT, root.to_string()),
                ],
            )
        };
        let referrers = IndexHint::Referrers {
            repo: "r".into(),
            manifest: manifest.clone(),
        };

        let data = naming(&index.digest);
        let layers = [other_index.clone(), data.clone(), index.clone()];
        match IndexHint::for_layer("r", &manifest, &data, &layers) {
            IndexHint::Bound { index: b, root: r } => {
                assert_eq!(
                    (b.digest, b.size, r),
                    (index.digest.clone(), 5, root.clone())
                )
            }
            other => panic!("{other:?}"),
        }
        // The named digest is a layer, but not of the index type.
        let plain = layer(b"plain", "application/octet-stream", &[]);
        let data = naming(&plain.digest);
        let layers = [other_index.clone(), plain, data.clone()];
        assert_eq!(
            IndexHint::for_layer("r", &manifest, &data, &layers),
            referrers
        );
        // Nothing without both annotations.
        let data = layer(
            b"data",
            "application/octet-stream",
            &[(format::ANNOTATION_INDEX, index.digest.to_string())],
        );
        assert_eq!(
            IndexHint::for_layer("r", &manifest, &data, &[index, data.clone()]),
            referrers
        );
    }

    /// `prepare` loads the leaves that cover a range of blocks, and only those: a range
    /// that ends at a leaf's end does not load the next leaf.
    const BLOCK: u64 = 4096;

    /// A bound index of `data` in 4 KiB blocks, its blob held by an in-memory source.
    fn indexed(data: &[u8]) -> (crate::source::memory::MemorySource, BlobIndex) {
        let mut b = format::Builder::new(&Digest::of(data), data.len() as u64, BLOCK);
        b.update(data);
        let (bytes, root) = b.finish().unwrap();
        let src = crate::source::memory::MemorySource::new();
        let d = src.put_blob(format::MEDIA_TYPE, bytes.clone());
        let ix = BlobIndex {
            trust: Trust::Bound,
            index: BlobRef {
                repo: "r".into(),
                digest: d.digest,
                size: d.size,
            },
            top: Top::verify(&bytes, &root).unwrap(),
            leaves: Mutex::new(HashMap::new()),
        };
        (src, ix)
    }

    #[test]
    fn prepare_loads_exactly_the_leaves_of_a_range() {
        let (src, ix) = indexed(&vec![7u8; (BLOCK * 300) as usize]);
        assert_eq!(
            ix.top.header.blocks_per_leaf, 128,
            "300 blocks are 3 leaves"
        );
        let stats = CacheStats::default();
        let loaded = || {
            let mut v: Vec<u64> = lock(&ix.leaves).keys().copied().collect();
            v.sort();
            v
        };
        ix.prepare(&src, &stats, 5..5).unwrap();
        assert_eq!(loaded(), Vec::<u64>::new(), "an empty range");
        ix.prepare(&src, &stats, 0..128).unwrap();
        assert_eq!(loaded(), [0], "blocks 0..128 are leaf 0");
        ix.prepare(&src, &stats, 200..256).unwrap();
        assert_eq!(loaded(), [0, 1]);
        ix.prepare(&src, &stats, 255..300).unwrap();
        assert_eq!(loaded(), [0, 1, 2]);
    }

    /// A registry that ignores Range answers a leaf's range with the whole index: the
    /// leaf is cut from it and checked, and its blocks are judged by it.
    #[test]
    fn a_leaf_is_found_in_a_whole_answer_to_its_range() {
        let data: Vec<u8> = (0..BLOCK * 300).map(|i| (i % 251) as u8).collect();
        let (src, ix) = indexed(&data);
        src.ignore_ranges
            .store(true, std::sync::atomic::Ordering::Relaxed);
        let stats = CacheStats::default();
        let block = |i: u64| &data[(i * BLOCK) as usize..][..BLOCK as usize];
        assert!(ix.check(&src, &stats, 200, block(200)).unwrap(), "leaf 1");
        assert!(
            !ix.check(&src, &stats, 201, block(200)).unwrap(),
            "wrong bytes"
        );
        assert!(
            ix.check(&src, &stats, 299, block(299)).unwrap(),
            "the last leaf"
        );
    }
}
