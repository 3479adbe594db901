//! An in-memory [`Source`] for fast, deterministic tests of the layers above it. It counts
//! the requests and bytes it serves, and can be told to ignore ranges or corrupt bytes
//! (blob fetches that fail are injected by [`super::failing`]).

use std::collections::{BTreeMap, HashMap};
use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use super::{BlobSink, BodyKind, FetchedManifest, Reference, Source};
use crate::error::SourceError;
use crate::oci::{Descriptor, Digest};

#[derive(Default)]
struct Store {
    blobs: HashMap<Digest, Arc<Vec<u8>>>,
    repos: BTreeMap<String, BTreeMap<String, Digest>>,
}

/// A registry held in memory.
#[derive(Default)]
pub struct MemorySource {
    store: Mutex<Store>,
    /// Blob GETs served.
    pub blob_requests: AtomicU64,
    /// Blob bytes served.
    pub blob_bytes: AtomicU64,
    /// Manifest GETs served.
    pub manifest_requests: AtomicU64,
    /// Tag listings served.
    pub tag_requests: AtomicU64,
    /// Answer range requests with the whole blob, as some registries do.
    pub ignore_ranges: AtomicBool,
    /// Flip the first byte of every blob body served.
    pub corrupt: AtomicBool,
    /// Flip the byte at this offset of this blob in every body that holds it.
    pub corrupt_at: Mutex<Option<(Digest, u64)>>,
    /// Referrers by subject digest.
    referrers: Mutex<HashMap<Digest, Vec<Descriptor>>>,
    /// Fail every catalog, tag list and manifest request as if the registry could not be
    /// reached.
    pub metadata_down: AtomicBool,
    /// Answer the catalog with "none", as registries without `/v2/_catalog` do.
    pub no_catalog: AtomicBool,
    /// Answer for a repository or tag that is not there as Docker Hub does: "authentication
    /// required" rather than "not found".
    pub refuse_unknown: AtomicBool,
    /// Tag digests asked for without the manifest (HEAD requests).
    pub head_requests: AtomicU64,
    /// Answer tag listings and manifests this many milliseconds late, as a registry across
    /// a network does (tests of races between lookups).
    pub metadata_delay_ms: AtomicU64,
}

impl MemorySource {
    pub fn new() -> Self {
        Self::default()
    }

    fn delay(&self) {
        let ms = self.metadata_delay_ms.load(Ordering::Relaxed);
        if ms > 0 {
            std::thread::sleep(std::time::Duration::from_millis(ms));
        }
    }

    fn store(&self) -> MutexGuard<'_, Store> {
        self.store.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Record `referrer` (a manifest's descriptor) as a referrer of `subject`.
    pub fn put_referrer(&self, subject: &Digest, referrer: Descriptor) {
        self.referrers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(subject.clone())
            .or_default()
            .push(referrer);
    }

    /// Store a blob and return its descriptor.
    pub fn put_blob(&self, media_type: &str, bytes: Vec<u8>) -> Descriptor {
        let digest = Digest::of(&bytes);
        let size = bytes.len() as u64;
        self.store().blobs.insert(digest.clone(), Arc::new(bytes));
        Descriptor {
            media_type: media_type.to_string(),
            digest,
            size,
            annotations: BTreeMap::new(),
            platform: None,
            artifact_type: None,
        }
    }

    /// Store manifest bytes in `repo`, optionally under `tag`; returns the digest.
    pub fn put_manifest(&self, repo: &str, tag: Option<&str>, bytes: Vec<u8>) -> Digest {
        let digest = Digest::of(&bytes);
        let mut s = self.store();
        s.blobs.insert(digest.clone(), Arc::new(bytes));
        let tags = s.repos.entry(repo.to_string()).or_default();
        if let Some(t) = tag {
            tags.insert(t.to_string(), digest.clone());
        }
        digest
    }

    fn metadata_check(&self) -> Result<(), SourceError> {
        if self.metadata_down.load(Ordering::Relaxed) {
            return Err(SourceError::Unreachable {
                target: "memory".into(),
                detail: "down".into(),
            });
        }
        Ok(())
    }

    /// The error for something not there.
    fn missing(&self, what: String) -> SourceError {
        if self.refuse_unknown.load(Ordering::Relaxed) {
            SourceError::Unauthorized {
                registry: "memory".into(),
                hint: format!("access to {what} was denied"),
            }
        } else {
            SourceError::NotFound(what)
        }
    }

    fn blob(&self, digest: &Digest) -> Option<Arc<Vec<u8>>> {
        self.store().blobs.get(digest).cloned()
    }
}

impl Source for MemorySource {
    fn name(&self) -> String {
        "memory".to_string()
    }

    fn catalog(&self) -> Result<Option<Vec<String>>, SourceError> {
        self.metadata_check()?;
        if self.no_catalog.load(Ordering::Relaxed) {
            return Ok(None);
        }
        Ok(Some(self.store().repos.keys().cloned().collect()))
    }

    fn tags(&self, repo: &str) -> Result<Vec<String>, SourceError> {
        self.tag_requests.fetch_add(1, Ordering::Relaxed);
        self.delay();
        self.metadata_check()?;
        self.store()
            .repos
            .get(repo)
            .map(|t| t.keys().cloned().collect())
            .ok_or_else(|| self.missing(format!("repository {repo}")))
    }

    fn manifest(&self, repo: &str, reference: &Reference) -> Result<FetchedManifest, SourceError> {
        self.manifest_requests.fetch_add(1, Ordering::Relaxed);
        self.delay();
        self.metadata_check()?;
        let not_found = || self.missing(reference.qualify(repo));
        let digest = match reference {
            Reference::Digest(d) => d.clone(),
            Reference::Tag(t) => self
                .store()
                .repos
                .get(repo)
                .and_then(|tags| tags.get(t).cloned())
                .ok_or_else(not_found)?,
        };
        let bytes = self.blob(&digest).ok_or_else(not_found)?;
        FetchedManifest::verify(
            &format!("{repo}@{digest}"),
            bytes.to_vec(),
            Some(&digest),
            None,
        )
    }

    fn referrers(&self, _repo: &str, digest: &Digest) -> Result<Vec<Descriptor>, SourceError> {
        Ok(self
            .referrers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(digest)
            .cloned()
            .unwrap_or_default())
    }

    fn tag_digest(&self, repo: &str, tag: &str) -> Result<Option<Digest>, SourceError> {
        self.head_requests.fetch_add(1, Ordering::Relaxed);
        self.metadata_check()?;
        self.store()
            .repos
            .get(repo)
            .and_then(|tags| tags.get(tag).cloned())
            .map(Some)
            .ok_or_else(|| self.missing(format!("{repo}:{tag}")))
    }

    fn fetch_blob(
        &self,
        _repo: &str,
        digest: &Digest,
        _size: u64,
        range: Option<Range<u64>>,
        sink: &mut dyn BlobSink,
    ) -> Result<(), SourceError> {
        self.blob_requests.fetch_add(1, Ordering::Relaxed);
        let blob = self
            .blob(digest)
            .ok_or_else(|| SourceError::NotFound(format!("blob {digest}")))?;
        let (kind, mut body) = match &range {
            Some(r) if !self.ignore_ranges.load(Ordering::Relaxed) => {
                let r = r.clone();
                let end = r.end.min(blob.len() as u64) as usize;
                let start = (r.start as usize).min(end);
                (BodyKind::Range, blob[start..end].to_vec())
            }
            _ => (BodyKind::Whole, blob.to_vec()),
        };
        if self.corrupt.load(Ordering::Relaxed) {
            if let Some(b) = body.first_mut() {
                *b ^= 0xff;
            }
        }
        let at = self
            .corrupt_at
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        if let Some((_, at)) = at.filter(|(d, _)| d == digest) {
            let base = match (kind, &range) {
                (BodyKind::Range, Some(r)) => r.start,
                _ => 0,
            };
            if let Some(b) = at.checked_sub(base).and_then(|i| body.get_mut(i as usize)) {
                *b ^= 0x01;
            }
        }
        self.blob_bytes
            .fetch_add(body.len() as u64, Ordering::Relaxed);
        let sink_failed = |e| SourceError::sink(format!("memory://{digest}"), e);
        sink.begin(kind).map_err(sink_failed)?;
        sink.data(&body).map_err(sink_failed)
    }
}
