//! An OCI image layout directory (`oci-layout`, `index.json`, `blobs/`) as a [`Source`]
//! with one repository. Tags come from `org.opencontainers.image.ref.name` in `index.json`.
//!
//! Blob paths are built only from validated digests, and a blob that is a symlink leading
//! out of the layout is refused.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::ops::Range;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::{BlobSink, BodyKind, FetchedManifest, Reference, Source};
use crate::error::SourceError;
use crate::oci::{
    Descriptor, Digest, ImageIndex, Manifest, ANNOTATION_REF_NAME, MAX_METADATA_SIZE,
};

/// An opened, validated OCI image layout.
#[derive(Debug)]
pub struct LayoutSource {
    root: PathBuf,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct LayoutMarker {
    image_layout_version: String,
}

impl LayoutSource {
    /// Open a layout, checking `oci-layout`, `index.json` and `blobs/`.
    pub fn open(root: &Path) -> Result<Self, SourceError> {
        let root = root.canonicalize().map_err(|e| SourceError::Layout {
            path: root.display().to_string(),
            detail: e.to_string(),
        })?;
        let layout = Self { root };
        let marker = layout.read_small(&layout.root.join("oci-layout"))?;
        let marker: LayoutMarker =
            serde_json::from_slice(&marker).map_err(|e| layout.bad(format!("oci-layout: {e}")))?;
        if marker.image_layout_version != "1.0.0" {
            return Err(layout.bad(format!(
                "oci-layout: imageLayoutVersion {:?} is not 1.0.0",
                marker.image_layout_version
            )));
        }
        if !layout.root.join("blobs").is_dir() {
            return Err(layout.bad("blobs/ is missing".to_string()));
        }
        layout.index()?;
        Ok(layout)
    }

    /// The layout's root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn bad(&self, detail: String) -> SourceError {
        SourceError::Layout {
            path: self.root.display().to_string(),
            detail,
        }
    }

    fn read_small(&self, path: &Path) -> Result<Vec<u8>, SourceError> {
        let io = |e: std::io::Error| self.bad(format!("{}: {e}", path.display()));
        let file = File::open(path).map_err(io)?;
        let mut bytes = Vec::new();
        file.take(MAX_METADATA_SIZE + 1)
            .read_to_end(&mut bytes)
            .map_err(io)?;
        if bytes.len() as u64 > MAX_METADATA_SIZE {
            return Err(self.bad(format!("{} is over 4 MiB", path.display())));
        }
        Ok(bytes)
    }

    fn index(&self) -> Result<ImageIndex, SourceError> {
        let bytes = self.read_small(&self.root.join("index.json"))?;
        // Judge the document by its own mediaType and shape first, so an image manifest
        // saved as index.json is refused rather than read as an empty index; only a
        // document that says nothing about itself is taken as the index it should be.
        match Manifest::parse(&bytes, None) {
            Ok(Manifest::Index(i)) => Ok(i),
            Ok(Manifest::Image(_)) => {
                Err(self.bad("index.json is an image manifest, not an index".into()))
            }
            Err(_) => match Manifest::parse(&bytes, Some(crate::oci::OCI_INDEX)) {
                Ok(Manifest::Index(i)) => Ok(i),
                Ok(Manifest::Image(_)) => Err(self.bad("index.json is not an index".into())),
                Err(e) => Err(self.bad(format!("index.json: {e}"))),
            },
        }
    }

    /// The real path of a blob, refusing one that leads out of the layout — through a
    /// symlink at the blob itself or at any directory above it (`blobs/`, `blobs/sha256/`).
    fn blob_path(&self, digest: &Digest) -> Result<PathBuf, SourceError> {
        let path = self.root.join("blobs").join("sha256").join(digest.hex());
        std::fs::symlink_metadata(&path)
            .map_err(|_| SourceError::NotFound(format!("blob {digest} in {}", self.name())))?;
        let real = path
            .canonicalize()
            .map_err(|e| self.bad(format!("blob {digest}: {e}")))?;
        if !real.starts_with(&self.root) {
            return Err(self.bad(format!("blob {digest} is a symlink out of the layout")));
        }
        Ok(real)
    }
}

impl Source for LayoutSource {
    fn name(&self) -> String {
        self.root.display().to_string()
    }

    fn catalog(&self) -> Result<Option<Vec<String>>, SourceError> {
        Ok(Some(vec![String::new()]))
    }

    fn tags(&self, _repo: &str) -> Result<Vec<String>, SourceError> {
        let mut tags: Vec<String> = self
            .index()?
            .manifests
            .iter()
            .filter_map(|d| d.annotations.get(ANNOTATION_REF_NAME).cloned())
            .filter(|t| super::valid_tag(t))
            .collect();
        tags.sort();
        tags.dedup();
        Ok(tags)
    }

    fn manifest(&self, _repo: &str, reference: &Reference) -> Result<FetchedManifest, SourceError> {
        let (digest, media_type) = match reference {
            Reference::Digest(d) => (d.clone(), None),
            Reference::Tag(t) => {
                let index = self.index()?;
                let entry = index
                    .manifests
                    .iter()
                    .find(|d| d.annotations.get(ANNOTATION_REF_NAME) == Some(t))
                    .ok_or_else(|| SourceError::NotFound(format!("tag {t} in {}", self.name())))?;
                (entry.digest.clone(), Some(entry.media_type.clone()))
            }
        };
        let bytes = self.read_small(&self.blob_path(&digest)?)?;
        FetchedManifest::verify(
            &format!("{}@{digest}", self.name()),
            bytes,
            Some(&digest),
            media_type.as_deref(),
        )
    }

    fn fetch_blob(
        &self,
        _repo: &str,
        digest: &Digest,
        size: u64,
        range: Option<Range<u64>>,
        sink: &mut dyn BlobSink,
    ) -> Result<(), SourceError> {
        let path = self.blob_path(digest)?;
        let io = |e| SourceError::io(path.display().to_string(), e);
        let what = format!("blob {digest} in {}", self.name());
        let sink_failed = |e| SourceError::sink(what.clone(), e);
        let mut file = File::open(&path).map_err(io)?;
        let (kind, range) = match range {
            Some(r) => (BodyKind::Range, r),
            None => (BodyKind::Whole, 0..size),
        };
        file.seek(SeekFrom::Start(range.start)).map_err(io)?;
        sink.begin(kind).map_err(sink_failed)?;
        let mut left = range.end.saturating_sub(range.start);
        let mut buf = vec![0u8; 256 * 1024];
        while left > 0 {
            let want = buf.len().min(left as usize);
            let n = file.read(&mut buf[..want]).map_err(io)?;
            if n == 0 {
                return Err(SourceError::Protocol {
                    what,
                    detail: "file is shorter than its descriptor says".into(),
                });
            }
            sink.data(&buf[..n]).map_err(sink_failed)?;
            left -= n as u64;
        }
        Ok(())
    }

    /// Referrers in a layout are the `index.json` entries whose manifest names `digest` as
    /// its subject (`orasfs index` adds them untagged, as the ORAS OCI store does).
    fn referrers(&self, _repo: &str, digest: &Digest) -> Result<Vec<Descriptor>, SourceError> {
        let mut out = Vec::new();
        for entry in self.index()?.manifests {
            if entry.digest == *digest {
                continue;
            }
            let Ok(f) = self.manifest("", &Reference::Digest(entry.digest.clone())) else {
                continue;
            };
            if let Manifest::Image(m) = &f.manifest {
                if m.subject.as_ref().is_some_and(|s| s.digest == *digest) {
                    out.push(Descriptor {
                        artifact_type: entry.artifact_type.clone().or(m.artifact_type.clone()),
                        ..entry
                    });
                }
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::failing::RefusingSink;
    use crate::source::VecSink;

    /// A failure to take the bytes in is a `Sink` error, a failure to read the layout an
    /// `Io` error: the two are told apart.
    #[test]
    fn a_sink_failure_is_not_a_layout_read_failure() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::write(
            root.join("oci-layout"),
            br#"{"imageLayoutVersion":"1.0.0"}"#,
        )
        .unwrap();
        std::fs::write(
            root.join("index.json"),
            br#"{"schemaVersion":2,"manifests":[]}"#,
        )
        .unwrap();
        std::fs::create_dir_all(root.join("blobs/sha256")).unwrap();
        let bytes = b"hello, layout".to_vec();
        let good = Digest::of(&bytes);
        std::fs::write(root.join("blobs/sha256").join(good.hex()), &bytes).unwrap();
        // A blob that cannot be read: a directory where its file should be.
        let unreadable = Digest::of(b"other");
        std::fs::create_dir(root.join("blobs/sha256").join(unreadable.hex())).unwrap();
        let layout = LayoutSource::open(root).unwrap();

        let mut sink = VecSink::with_limit(100);
        layout.fetch_blob("", &good, 13, None, &mut sink).unwrap();
        assert_eq!(sink.bytes, bytes);
        let e = layout
            .fetch_blob("", &good, 13, None, &mut RefusingSink)
            .unwrap_err();
        assert!(
            matches!(&e, SourceError::Sink { source, .. } if source.raw_os_error() == Some(libc::ENOSPC)),
            "{e:?}"
        );
        let e = layout
            .fetch_blob("", &unreadable, 5, None, &mut VecSink::with_limit(100))
            .unwrap_err();
        assert!(matches!(e, SourceError::Io { .. }), "{e:?}");
    }
}
