//! Where artifacts come from: the [`Source`] trait and its implementations — an HTTP
//! registry, an OCI image layout on disk, an in-memory store for tests, and a wrapper that
//! injects failures for tests.
//!
//! A source hands out verified manifests and raw blob bytes. It knows nothing of files,
//! names or caches; the cache layer above it verifies blob bytes.

pub mod failing;
pub mod layout;
pub mod memory;
pub mod multi;
pub mod registry;

use std::io;
use std::ops::Range;
use std::sync::Arc;

use crate::error::SourceError;
use crate::oci::{Descriptor, Digest, Manifest, OciError, MAX_METADATA_SIZE};

/// A tag or a digest inside one repository.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Reference {
    Tag(String),
    Digest(Digest),
}

impl Reference {
    /// `repo:tag` or `repo@sha256:…`, as users write references.
    pub fn qualify(&self, repo: &str) -> String {
        match self {
            // An OCI layout has no repository: its tags are its `ref.name`s.
            _ if repo.is_empty() => self.to_string(),
            Reference::Tag(t) => format!("{repo}:{t}"),
            Reference::Digest(d) => format!("{repo}@{d}"),
        }
    }
}

impl std::fmt::Display for Reference {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Reference::Tag(t) => f.write_str(t),
            Reference::Digest(d) => write!(f, "{d}"),
        }
    }
}

/// A manifest whose bytes were checked against its digest.
#[derive(Debug, Clone)]
pub struct FetchedManifest {
    pub digest: Digest,
    pub bytes: Arc<Vec<u8>>,
    pub manifest: Manifest,
}

impl FetchedManifest {
    /// Check manifest bytes against the digest they were asked by (or reported under) and
    /// parse them.
    pub fn verify(
        what: &str,
        bytes: Vec<u8>,
        expected: Option<&Digest>,
        content_type: Option<&str>,
    ) -> Result<Self, SourceError> {
        let oci = |source: OciError| SourceError::Oci {
            what: what.to_string(),
            source,
        };
        if bytes.len() as u64 > MAX_METADATA_SIZE {
            return Err(oci(OciError::TooLarge {
                what: "manifest",
                size: bytes.len() as u64,
                limit: MAX_METADATA_SIZE,
            }));
        }
        let digest = Digest::of(&bytes);
        if let Some(expected) = expected {
            if *expected != digest {
                return Err(oci(OciError::DigestMismatch {
                    expected: expected.clone(),
                    actual: digest,
                }));
            }
        }
        let manifest = Manifest::parse(&bytes, content_type).map_err(oci)?;
        Ok(Self {
            digest,
            bytes: Arc::new(bytes),
            manifest,
        })
    }
}

/// What a blob fetch delivered to its sink.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyKind {
    /// Exactly the bytes of the range asked for.
    Range,
    /// The whole blob, because the server ignored the range.
    Whole,
}

/// Receives the bytes of one blob fetch as they arrive.
pub trait BlobSink {
    /// Called once, before any data, with what the body holds.
    fn begin(&mut self, kind: BodyKind) -> io::Result<()>;
    /// Called with each piece of the body, in order.
    fn data(&mut self, bytes: &[u8]) -> io::Result<()>;
}

/// A place artifacts come from.
pub trait Source: Send + Sync {
    /// A short human name, e.g. `127.0.0.1:5000` or `/data/layout`.
    fn name(&self) -> String;
    /// The repositories, or `None` when the source cannot list them.
    fn catalog(&self) -> Result<Option<Vec<String>>, SourceError>;
    /// The tags of one repository.
    fn tags(&self, repo: &str) -> Result<Vec<String>, SourceError>;
    /// A manifest or index by tag or digest, verified.
    fn manifest(&self, repo: &str, reference: &Reference) -> Result<FetchedManifest, SourceError>;
    /// Stream a blob, or the `range` of it, into `sink`. The caller verifies the bytes.
    fn fetch_blob(
        &self,
        repo: &str,
        digest: &Digest,
        size: u64,
        range: Option<Range<u64>>,
        sink: &mut dyn BlobSink,
    ) -> Result<(), SourceError>;
    /// The digest `tag` points at now, asked without fetching the manifest (an HTTP
    /// `HEAD`), to revalidate a tag seen before; `None` when the source cannot say more
    /// cheaply than by [`Source::manifest`].
    fn tag_digest(&self, repo: &str, tag: &str) -> Result<Option<Digest>, SourceError> {
        let _ = (repo, tag);
        Ok(None)
    }
    /// Descriptors of the manifests whose `subject` is `digest` (OCI referrers). A source
    /// that keeps none answers an empty list.
    fn referrers(&self, repo: &str, digest: &Digest) -> Result<Vec<Descriptor>, SourceError> {
        let _ = (repo, digest);
        Ok(Vec::new())
    }
    /// Requests and bytes per host, for `orasfs stats` (empty for a source without hosts).
    fn traffic(&self) -> Vec<HostTraffic> {
        Vec::new()
    }
    /// The registries this source reaches by host name, when it is the multi-registry
    /// source of `orasfs mount MOUNTPOINT` (repository paths then start with the host).
    fn hosts(&self) -> Option<&dyn Hosts> {
        None
    }
}

/// Many registries by host name, each connected on first use.
pub trait Hosts {
    /// Connect to `host` (once), failing when it cannot be reached or is no registry.
    fn visit(&self, host: &str) -> Result<(), SourceError>;
    /// The hosts visited so far, sorted.
    fn visited(&self) -> Vec<String>;
    /// One host's catalog, each repository prefixed by `host/`.
    fn catalog_of(&self, host: &str) -> Result<Option<Vec<String>>, SourceError>;
}

/// Requests and bytes (of blobs and manifests) one host served to this mount.
#[derive(Debug, Clone, serde::Serialize, PartialEq, Eq)]
pub struct HostTraffic {
    pub host: String,
    /// `origin` or `mirror`.
    pub role: &'static str,
    pub requests: u64,
    pub bytes: u64,
    pub failures: u64,
}

/// A sink that collects a bounded body in memory.
#[derive(Debug, Default)]
pub struct VecSink {
    pub kind: Option<BodyKind>,
    pub bytes: Vec<u8>,
    pub limit: u64,
}

impl VecSink {
    pub fn with_limit(limit: u64) -> Self {
        Self {
            kind: None,
            bytes: Vec::new(),
            limit,
        }
    }
}

impl BlobSink for VecSink {
    fn begin(&mut self, kind: BodyKind) -> io::Result<()> {
        self.kind = Some(kind);
        self.bytes.clear();
        Ok(())
    }
    fn data(&mut self, bytes: &[u8]) -> io::Result<()> {
        if self.bytes.len() as u64 + bytes.len() as u64 > self.limit {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("body longer than the {} bytes expected", self.limit),
            ));
        }
        self.bytes.extend_from_slice(bytes);
        Ok(())
    }
}

/// Whether `host` looks like a registry host: `localhost`, or a name with a dot or a port,
/// made of letters, digits, `-`, `.`, `:` and IPv6 brackets.
pub fn valid_host(host: &str) -> bool {
    let looks_like_host = host == "localhost" || host.contains('.') || host.contains(':');
    looks_like_host
        && host.len() <= 255
        && !host.starts_with(['.', '-', ':'])
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-.:[]".contains(c))
}

/// Validate a repository name as the distribution spec defines it (lowercase components
/// separated by `/`, each made of alphanumerics joined by `.`, `_`, `__` or dashes).
pub fn valid_repo_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 255
        && name.split('/').all(|c| {
            !c.is_empty()
                && c.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
                && c.as_bytes()[0].is_ascii_alphanumeric()
                && c.as_bytes()[c.len() - 1].is_ascii_alphanumeric()
        })
}

/// Validate a tag: `[A-Za-z0-9_][A-Za-z0-9._-]{0,127}`.
pub fn valid_tag(tag: &str) -> bool {
    let b = tag.as_bytes();
    !b.is_empty()
        && b.len() <= 128
        && (b[0].is_ascii_alphanumeric() || b[0] == b'_')
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || b"._-".contains(c))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_are_qualified_by_their_repository_if_there_is_one() {
        let d = Digest::of(b"x");
        assert_eq!(Reference::Tag("v1".into()).qualify("eo/p"), "eo/p:v1");
        assert_eq!(
            Reference::Digest(d.clone()).qualify("eo/p"),
            format!("eo/p@{d}")
        );
        // An OCI layout's references have no repository part.
        assert_eq!(Reference::Tag("v1".into()).qualify(""), "v1");
        assert_eq!(Reference::Digest(d.clone()).qualify(""), d.to_string());
    }

    #[test]
    fn names_and_tags() {
        assert!(valid_repo_name("eo/products"));
        assert!(valid_repo_name("a.b_c-d/e"));
        assert!(!valid_repo_name("Eo"));
        assert!(!valid_repo_name("eo//x"));
        assert!(!valid_repo_name("../x"));
        assert!(!valid_repo_name(""));
        assert!(valid_tag("v1.0_rc-1"));
        assert!(!valid_tag(".hidden"));
        assert!(!valid_tag("a/b"));
        assert!(!valid_tag(&"a".repeat(129)));
    }
}
