//! Where `orasfs index` writes: a registry (blob upload, manifest PUT, referrers through
//! the API or the referrers tag schema) or an OCI image layout (blob files, `index.json`
//! replaced atomically).
//!
//! In a layout a referrer is an `index.json` entry without a tag: its descriptor carries
//! `artifactType`, and its manifest names the subject. [`crate::source::layout`] finds
//! referrers by reading the untagged manifests listed there.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde_json::{json, Map, Value};

use super::attach::{add_to_referrers_index, descriptor, referrer_descriptor};
use crate::error::SourceError;
use crate::oci::{Digest, OCI_INDEX};
use crate::source::registry::Client;
use crate::source::{Reference, Source};

/// A place to write index blobs and manifests.
pub trait Destination {
    /// Fail now, before any blob is read, if nothing could be written.
    fn check_writable(&self) -> Result<(), SourceError>;
    /// Store a blob, unless it is there already.
    fn put_blob(&self, digest: &Digest, bytes: &[u8]) -> Result<(), SourceError>;
    /// Store a manifest, under `tag` or by its digest only; returns its digest.
    fn put_manifest(
        &self,
        tag: Option<&str>,
        media_type: &str,
        bytes: &[u8],
    ) -> Result<Digest, SourceError>;
    /// Store an image manifest whose `subject` is `subject`, and make it findable among
    /// the subject's referrers; returns its digest.
    fn put_referrer(&self, subject: &Digest, manifest: &[u8]) -> Result<Digest, SourceError>;
}

/// A repository of a registry.
pub struct RegistryDestination<'a> {
    pub client: &'a Client,
    /// Reads the referrers tag (through the same verified path as any manifest).
    pub source: &'a dyn Source,
    pub repo: String,
}

impl Destination for RegistryDestination<'_> {
    fn check_writable(&self) -> Result<(), SourceError> {
        self.client.check_push(&self.repo)
    }

    fn put_blob(&self, digest: &Digest, bytes: &[u8]) -> Result<(), SourceError> {
        self.client.push_blob(&self.repo, digest, bytes).map(|_| ())
    }

    fn put_manifest(
        &self,
        tag: Option<&str>,
        media_type: &str,
        bytes: &[u8],
    ) -> Result<Digest, SourceError> {
        let by_digest = Digest::of(bytes).to_string();
        let reference = tag.unwrap_or(&by_digest);
        Ok(self
            .client
            .push_manifest(&self.repo, reference, media_type, bytes)?
            .digest)
    }

    /// Without `OCI-Subject` in the answer the registry has no referrers API (distribution
    /// 2.x): the referrer is added to the index under the tag `sha256-<hex of subject>`.
    fn put_referrer(&self, subject: &Digest, manifest: &[u8]) -> Result<Digest, SourceError> {
        let digest = Digest::of(manifest);
        let pushed = self.client.push_manifest(
            &self.repo,
            &digest.to_string(),
            crate::oci::OCI_MANIFEST,
            manifest,
        )?;
        if pushed.subject_indexed {
            return Ok(digest);
        }
        let tag = format!("sha256-{}", subject.hex());
        let existing = match self
            .source
            .manifest(&self.repo, &Reference::Tag(tag.clone()))
        {
            Ok(f) => Some(f.bytes.to_vec()),
            Err(SourceError::NotFound(_)) => None,
            Err(e) => return Err(e),
        };
        let updated = add_to_referrers_index(existing.as_deref(), referrer_descriptor(manifest))
            .map_err(|e| SourceError::Protocol {
                what: format!("{}/{}:{tag}", self.client.registry(), self.repo),
                detail: e.to_string(),
            })?;
        if let Some(index) = updated {
            self.client
                .push_manifest(&self.repo, &tag, OCI_INDEX, &index)?;
        }
        Ok(digest)
    }
}

/// An OCI image layout directory.
pub struct LayoutDestination {
    root: PathBuf,
}

impl LayoutDestination {
    /// `root` must be a layout that [`crate::source::layout::LayoutSource`] opened.
    pub fn new(root: &Path) -> Self {
        Self { root: root.into() }
    }

    fn unwritable(&self, what: &Path, e: std::io::Error) -> SourceError {
        // Without the temporary file's name, which tempfile adds to its errors.
        let e = e
            .raw_os_error()
            .map(std::io::Error::from_raw_os_error)
            .unwrap_or(e);
        SourceError::io(
            format!(
                "OCI layout {}: cannot write {}",
                self.root.display(),
                what.display()
            ),
            e,
        )
    }

    /// Write `bytes` to `path` through a temporary file in the same directory and a
    /// rename, so a reader never sees a half-written file.
    fn write_atomic(&self, path: &Path, bytes: &[u8]) -> Result<(), SourceError> {
        let dir = path.parent().unwrap_or(&self.root);
        let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(|e| self.unwritable(dir, e))?;
        tmp.write_all(bytes)
            .and_then(|()| tmp.as_file().sync_all())
            .map_err(|e| self.unwritable(path, e))?;
        tmp.persist(path)
            .map_err(|e| self.unwritable(path, e.error))?;
        Ok(())
    }

    /// `index.json` with its `manifests` changed by `edit` (which says whether it changed
    /// anything), replaced atomically.
    fn edit_index(&self, edit: impl FnOnce(&mut Vec<Value>) -> bool) -> Result<(), SourceError> {
        let path = self.root.join("index.json");
        let bad = |detail: String| SourceError::Layout {
            path: self.root.display().to_string(),
            detail,
        };
        let bytes = fs::read(&path).map_err(|e| bad(format!("index.json: {e}")))?;
        let mut doc: Value =
            serde_json::from_slice(&bytes).map_err(|e| bad(format!("index.json: {e}")))?;
        let obj = doc
            .as_object_mut()
            .ok_or_else(|| bad("index.json is not a JSON object".into()))?;
        let list = obj
            .entry("manifests")
            .or_insert_with(|| json!([]))
            .as_array_mut()
            .ok_or_else(|| bad("index.json: manifests is not a list".into()))?;
        if edit(list) {
            self.write_atomic(&path, doc.to_string().as_bytes())?;
        }
        Ok(())
    }
}

/// Add `entry` to `list` unless an entry with its digest is there; whether it was added.
fn add_once(list: &mut Vec<Value>, entry: Map<String, Value>) -> bool {
    if list.iter().any(|m| m.get("digest") == entry.get("digest")) {
        return false;
    }
    list.push(Value::Object(entry));
    true
}

impl Destination for LayoutDestination {
    fn check_writable(&self) -> Result<(), SourceError> {
        let dir = self.root.join("blobs").join("sha256");
        fs::create_dir_all(&dir).map_err(|e| self.unwritable(&dir, e))?;
        tempfile::NamedTempFile::new_in(&dir)
            .map(drop)
            .map_err(|e| self.unwritable(&dir, e))
    }

    fn put_blob(&self, digest: &Digest, bytes: &[u8]) -> Result<(), SourceError> {
        let path = self.root.join("blobs").join("sha256").join(digest.hex());
        if fs::metadata(&path).is_ok_and(|m| m.is_file() && m.len() == bytes.len() as u64) {
            return Ok(());
        }
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir).map_err(|e| self.unwritable(dir, e))?;
        }
        self.write_atomic(&path, bytes)
    }

    /// A tag moves: the entries that held it lose it, the new manifest gains it.
    fn put_manifest(
        &self,
        tag: Option<&str>,
        media_type: &str,
        bytes: &[u8],
    ) -> Result<Digest, SourceError> {
        let digest = Digest::of(bytes);
        self.put_blob(&digest, bytes)?;
        let mut entry: Map<String, Value> = descriptor(media_type, &digest, bytes.len() as u64);
        self.edit_index(|list| match tag {
            Some(t) => {
                let ref_name = crate::oci::ANNOTATION_REF_NAME;
                list.retain(|m| {
                    m.get("annotations")
                        .and_then(|a| a.get(ref_name))
                        .and_then(Value::as_str)
                        != Some(t)
                });
                entry.insert("annotations".into(), json!({ ref_name: t }));
                list.push(Value::Object(entry));
                true
            }
            None => add_once(list, entry),
        })?;
        Ok(digest)
    }

    fn put_referrer(&self, _subject: &Digest, manifest: &[u8]) -> Result<Digest, SourceError> {
        let digest = Digest::of(manifest);
        self.put_blob(&digest, manifest)?;
        let entry = referrer_descriptor(manifest);
        self.edit_index(|list| add_once(list, entry))?;
        Ok(digest)
    }
}
