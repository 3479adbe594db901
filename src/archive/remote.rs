//! Archive indexes published by `orasfs index`: an archive's member table and gzip
//! checkpoints as a blob of their own, attached to the artifact beside the block index,
//! so that a machine with an empty cache lists an archive and reads one member after
//! fetching only the index's head and that member's compressed span.
//!
//! The blob is laid out so that its parts are fetched with range requests:
//!
//! ```text
//! 0      8        magic "ORFSARX1"
//! 8      8        head length H (u64 LE): bytes 0..H are the head
//! 16     8        table length T (u64 LE)
//! 24     T        the stored member table and checkpoint list ([`Stored`], CRC32C-sealed)
//! 24+T   32 × P   sha256 of each of the P checkpoints' windows (H = 24 + T + 32 P)
//! H      P × 32K  the windows, one 32 KiB slot each (a short window is zero-padded)
//! ```
//!
//! The *root* is the sha256 of the head. The layer that carries the blob names the data
//! layer (`io.orasfs.index.blob`) and the root (`io.orasfs.index.root`); in embedded
//! mode the data layer also names both (`io.orasfs.archive.digest`, `.root`), so the
//! manifest digest binds the head, and the head binds every window by its sha256. A
//! listing fetches the head (one or two ranges) and checks it against the root; a member
//! read fetches one window, checks it, and inflates from there.

use std::ops::Range;
use std::sync::{Arc, Mutex};

use sha2::{Digest as _, Sha256};

use super::gzip::WINDOW;
use super::open::Archive;
use super::store::{Point, Stored};
use super::{ArchiveError, BlobBytes};
use crate::cache::BlobRef;
pub use crate::index::attach::{
    Published, ANNOTATION_ARCHIVE_DIGEST as ANNOTATION_DIGEST, ANNOTATION_ARCHIVE_ROOT,
    ARCHIVE_MEDIA_TYPE as MEDIA_TYPE,
};
use crate::index::format::{ANNOTATION_BLOB, ANNOTATION_ROOT};
use crate::oci::{Descriptor, Digest, Manifest};
use crate::source::{BodyKind, Reference, Source, VecSink};

const MAGIC: &[u8; 8] = b"ORFSARX1";
/// The first range fetched: most heads fit, so a listing is one request.
const FIRST_FETCH: u64 = 64 * 1024;
/// Largest head accepted (a member table of a few million members).
const MAX_HEAD: u64 = 512 << 20;

/// Whether a layer is a published archive index (hidden from the tree).
pub fn is_archive_index(d: &Descriptor) -> bool {
    d.media_type == MEDIA_TYPE
}

/// The published form of a listed archive.
pub fn publish(a: &Archive, blob_size: u64) -> Result<Published, ArchiveError> {
    let (index, gzip) = a.parts();
    let points: Vec<Point> = gzip.map(|(p, _)| p.to_vec()).unwrap_or_default();
    let stored = Stored {
        gzip: gzip.is_some(),
        zstd: a.is_zstd(),
        blob_size,
        index: index.clone(),
        points,
    };
    let body = stored.encode();
    let mut windows = Vec::with_capacity(stored.points.len());
    if let Some((points, w)) = gzip {
        for (i, p) in points.iter().enumerate() {
            windows.push(w.get(i, p)?);
        }
    }
    let head_len = 24 + body.len() as u64 + 32 * windows.len() as u64;
    let mut out = Vec::with_capacity(head_len as usize + windows.len() * WINDOW);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&head_len.to_le_bytes());
    out.extend_from_slice(&(body.len() as u64).to_le_bytes());
    out.extend_from_slice(&body);
    for w in &windows {
        out.extend_from_slice(&Sha256::digest(w));
    }
    let root = Digest::of(&out);
    for w in &windows {
        let at = out.len();
        out.extend_from_slice(w);
        out.resize(at + WINDOW, 0);
    }
    Ok(Published { bytes: out, root })
}

/// Where a layer's published archive index may be, as the tree knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchiveHint {
    pub repo: String,
    pub manifest: Digest,
    /// Named by the layer's annotations, with a layer of the same manifest holding it.
    pub bound: Option<(BlobRef, Digest)>,
}

impl ArchiveHint {
    pub fn for_layer(
        repo: &str,
        manifest: &Digest,
        layer: &Descriptor,
        layers: &[Descriptor],
    ) -> Self {
        let keys = (ANNOTATION_DIGEST, ANNOTATION_ARCHIVE_ROOT);
        let bound = crate::read::index::bound_by(repo, layer, layers, keys, MEDIA_TYPE);
        Self {
            repo: repo.to_string(),
            manifest: manifest.clone(),
            bound,
        }
    }
}

fn blob_ref(repo: &str, d: &Descriptor) -> BlobRef {
    BlobRef {
        repo: repo.to_string(),
        digest: d.digest.clone(),
        size: d.size,
    }
}

/// Ranges of a published index, fetched from the source (not through the blob cache:
/// the head and each window are checked against the root here).
pub struct RemoteBlob {
    src: Arc<dyn Source>,
    blob: BlobRef,
}

impl RemoteBlob {
    fn fetch(&self, range: Range<u64>) -> Result<Vec<u8>, ArchiveError> {
        let len = range.end - range.start;
        let mut sink = VecSink::with_limit(len);
        let b = &self.blob;
        self.src
            .fetch_blob(&b.repo, &b.digest, b.size, Some(range.clone()), &mut sink)
            .map_err(|e| ArchiveError::Read(e.to_string()))?;
        let bytes = if sink.kind == Some(BodyKind::Whole) {
            sink.bytes
                .get(range.start as usize..range.end as usize)
                .map(<[u8]>::to_vec)
                .unwrap_or_default()
        } else {
            sink.bytes
        };
        if bytes.len() as u64 != len {
            return Err(ArchiveError::BadIndex(format!(
                "archive index {}: {} bytes where {len} were asked for",
                b.digest,
                bytes.len()
            )));
        }
        Ok(bytes)
    }
}

/// The windows of a published index, fetched one at a time and checked against the
/// head's sha256 of each. Fetched windows are kept (a member read goes on from the same
/// few checkpoints), at most [`KEPT`] of them.
pub struct RemoteWindows {
    blob: RemoteBlob,
    base: u64,
    hashes: Vec<[u8; 32]>,
    kept: Mutex<lru::LruCache<usize, Arc<Vec<u8>>>>,
}

const KEPT: usize = 64;

impl RemoteWindows {
    pub fn get(&self, i: usize, p: &Point) -> Result<Vec<u8>, ArchiveError> {
        if let Some(w) = self.kept.lock().unwrap_or_else(|e| e.into_inner()).get(&i) {
            return Ok(w.to_vec());
        }
        let want = self
            .hashes
            .get(i)
            .ok_or_else(|| ArchiveError::BadIndex(format!("no window {i}")))?;
        let len = (p.window_len as u64).min(WINDOW as u64);
        let at = self.base + i as u64 * WINDOW as u64;
        let w = self.blob.fetch(at..at + len)?;
        if Sha256::digest(&w).as_slice() != want {
            return Err(ArchiveError::BadIndex(format!(
                "archive index {}: window {i} does not match its hash",
                self.blob.blob.digest
            )));
        }
        self.kept
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .put(i, Arc::new(w.clone()));
        Ok(w)
    }
}

/// Find and fetch the published index of `data`: bound by the manifest, or among the
/// manifest's referrers. `None` when there is none; an index that fails its checks is
/// refused with a log line (the archive is then listed from the blob).
pub fn fetch(src: &Arc<dyn Source>, hint: &ArchiveHint, data: &BlobRef) -> Option<Fetched> {
    let found = match &hint.bound {
        Some(b) => Some(b.clone()),
        None => match find_referrer(src.as_ref(), hint, data) {
            Ok(f) => f,
            Err(e) => {
                log::debug!("archive {}: no referrers ({e})", data.digest);
                None
            }
        },
    };
    let (blob, root) = found?;
    let what = blob.digest.clone();
    match load(src.clone(), blob, &root, data) {
        Ok(f) => {
            log::debug!(
                "archive {}: listed from its published index {what}",
                data.digest
            );
            Some(f)
        }
        Err(e) => {
            log::warn!(
                "archive {}: its published index {what} is refused ({e}); listing it from the blob",
                data.digest
            );
            None
        }
    }
}

/// A published index, checked: the stored table and the windows' source.
pub struct Fetched {
    pub stored: Stored,
    pub windows: RemoteWindows,
}

fn load(
    src: Arc<dyn Source>,
    blob: BlobRef,
    root: &Digest,
    data: &BlobRef,
) -> Result<Fetched, ArchiveError> {
    let remote = RemoteBlob { src, blob };
    let size = remote.blob.size;
    if size < 16 {
        return Err(ArchiveError::BadIndex("shorter than its header".into()));
    }
    let mut head = remote.fetch(0..size.min(FIRST_FETCH))?;
    if &head[..8] != MAGIC {
        return Err(ArchiveError::BadIndex("not an orasfs archive index".into()));
    }
    let mut len = [0u8; 8];
    len.copy_from_slice(&head[8..16]);
    let head_len = u64::from_le_bytes(len);
    if head_len < 24 || head_len > size || head_len > MAX_HEAD {
        return Err(ArchiveError::BadIndex(format!("head length {head_len}")));
    }
    if head_len > head.len() as u64 {
        let rest = remote.fetch(head.len() as u64..head_len)?;
        head.extend_from_slice(&rest);
    }
    head.truncate(head_len as usize);
    if Digest::of(&head) != *root {
        return Err(ArchiveError::BadIndex(
            "its head does not match the root".into(),
        ));
    }
    // The stored table, then one sha256 per checkpoint.
    let (stored, hashes) = split_head(&head[16..])?;
    if stored.blob_size != data.size {
        return Err(ArchiveError::BadIndex("it describes another blob".into()));
    }
    let slots = stored.points.len() as u64 * WINDOW as u64;
    if head_len.checked_add(slots) != Some(size) {
        return Err(ArchiveError::BadIndex(format!(
            "{size} bytes, where the head says {}",
            head_len.saturating_add(slots)
        )));
    }
    Ok(Fetched {
        stored,
        windows: RemoteWindows {
            blob: remote,
            base: head_len,
            hashes,
            kept: Mutex::new(lru::LruCache::new(
                std::num::NonZeroUsize::new(KEPT).unwrap_or(std::num::NonZeroUsize::MIN),
            )),
        },
    })
}

/// Split a head (after magic and length) into the stored table and the window hashes.
fn split_head(body: &[u8]) -> Result<(Stored, Vec<[u8; 32]>), ArchiveError> {
    let bad = |s: &str| ArchiveError::BadIndex(s.to_string());
    let (len, rest) = body.split_at_checked(8).ok_or_else(|| bad("cut short"))?;
    let mut n = [0u8; 8];
    n.copy_from_slice(len);
    let table_len = usize::try_from(u64::from_le_bytes(n)).unwrap_or(usize::MAX);
    let (table, hashes) = rest
        .split_at_checked(table_len)
        .ok_or_else(|| bad("table length past the head"))?;
    let stored = Stored::decode(table)?;
    if hashes.len() != 32 * stored.points.len() {
        return Err(bad("window hashes do not match the checkpoints"));
    }
    let hashes = hashes
        .chunks_exact(32)
        .map(|c| {
            let mut h = [0u8; 32];
            h.copy_from_slice(c);
            h
        })
        .collect();
    Ok((stored, hashes))
}

/// A published index of `data` among the referrers of the manifest.
fn find_referrer(
    src: &dyn Source,
    hint: &ArchiveHint,
    data: &BlobRef,
) -> Result<Option<(BlobRef, Digest)>, ArchiveError> {
    let all = src
        .referrers(&hint.repo, &hint.manifest)
        .map_err(|e| ArchiveError::Read(e.to_string()))?;
    for r in all {
        if r.artifact_type.as_deref() != Some(crate::index::format::MEDIA_TYPE) {
            continue;
        }
        let Ok(fetched) = src.manifest(&hint.repo, &Reference::Digest(r.digest.clone())) else {
            continue;
        };
        let Manifest::Image(image) = fetched.manifest else {
            continue;
        };
        for l in image.layers.iter().filter(|l| is_archive_index(l)) {
            let names_blob = l
                .annotations
                .get(ANNOTATION_BLOB)
                .is_some_and(|d| *d == data.digest.to_string());
            let root = l
                .annotations
                .get(ANNOTATION_ROOT)
                .and_then(|v| Digest::parse(v).ok());
            if let (true, Some(root)) = (names_blob, root) {
                return Ok(Some((blob_ref(&hint.repo, l), root)));
            }
        }
    }
    Ok(None)
}

/// [`BlobBytes`] over a blob that arrives once, front to back (`orasfs index` streams
/// each layer once): reads must not go backwards, and bytes before the last read are
/// dropped, so memory stays at about one read plus one batch.
pub struct StreamBytes {
    size: u64,
    state: Mutex<StreamState>,
}

struct StreamState {
    rx: std::sync::mpsc::Receiver<Vec<u8>>,
    buf: Vec<u8>,
    /// Blob offset of `buf[0]`.
    base: u64,
    ended: bool,
}

impl StreamBytes {
    pub fn new(size: u64, rx: std::sync::mpsc::Receiver<Vec<u8>>) -> Self {
        Self {
            size,
            state: Mutex::new(StreamState {
                rx,
                buf: Vec::new(),
                base: 0,
                ended: false,
            }),
        }
    }
}

impl BlobBytes for StreamBytes {
    fn size(&self) -> u64 {
        self.size
    }

    fn read_at(&self, offset: u64, len: u32) -> Result<Vec<u8>, ArchiveError> {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if offset < s.base {
            return Err(ArchiveError::Read(format!(
                "streamed blob read backwards ({offset} < {})",
                s.base
            )));
        }
        let end = offset.saturating_add(len as u64).min(self.size);
        while s.base + (s.buf.len() as u64) < end && !s.ended {
            // Drop what lies before `offset` before taking more.
            let drop_n = ((offset - s.base) as usize).min(s.buf.len());
            s.buf.drain(..drop_n);
            s.base += drop_n as u64;
            match s.rx.recv() {
                Ok(more) => s.buf.extend_from_slice(&more),
                Err(_) => s.ended = true,
            }
        }
        let from = (offset.saturating_sub(s.base) as usize).min(s.buf.len());
        let to = (end.saturating_sub(s.base) as usize).clamp(from, s.buf.len());
        Ok(s.buf[from..to].to_vec())
    }
}

/// Index an archive streamed through `rx` (batches of the blob, in order) for publishing;
/// `None` when it is not an archive orasfs unpacks (logged). Reads until the channel
/// closes, so the sender never blocks on it.
pub fn index_stream(
    digest: &Digest,
    size: u64,
    rx: std::sync::mpsc::Receiver<Vec<u8>>,
) -> Option<Published> {
    let bytes = StreamBytes::new(size, rx);
    let listed = Archive::open(&bytes, digest, None, Default::default());
    // Drain what is left, so the sender is never blocked by this side.
    {
        let s = bytes.state.lock().unwrap_or_else(|e| e.into_inner());
        while s.rx.recv().is_ok() {}
    }
    match listed.and_then(|a| publish(&a, size)) {
        Ok(p) => Some(p),
        // ORAS pushes plain files as `…layer.v1.tar` too: not being a tar is no news.
        Err(e @ ArchiveError::NotTar(_)) => {
            log::debug!("{digest}: no archive index ({e})");
            None
        }
        Err(e) => {
            log::warn!("{digest}: no archive index ({e})");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streamed_bytes_go_forward_only() {
        let (tx, rx) = std::sync::mpsc::sync_channel(4);
        let data: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
        let d2 = data.clone();
        let t = std::thread::spawn(move || {
            for c in d2.chunks(777) {
                tx.send(c.to_vec()).unwrap();
            }
        });
        let s = StreamBytes::new(data.len() as u64, rx);
        assert_eq!(s.read_at(0, 4).unwrap(), &data[..4]);
        assert_eq!(s.read_at(0, 2000).unwrap(), &data[..2000]);
        assert_eq!(s.read_at(5000, 100).unwrap(), &data[5000..5100]);
        assert!(s.read_at(10, 1).is_err(), "backwards");
        assert_eq!(s.read_at(9990, 100).unwrap(), &data[9990..]);
        t.join().unwrap();
    }
}
