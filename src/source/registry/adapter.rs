//! A remote registry as a [`Source`]: the [`Client`] plus the checks that
//! turn its answers into verified manifests.

use std::ops::Range;

use super::Client;
use crate::error::SourceError;
use crate::oci::{Descriptor, Digest, Manifest, OciError};
use crate::source::{BlobSink, FetchedManifest, Reference, Source};

/// A registry reached over HTTP(S).
#[derive(Debug)]
pub struct RegistrySource {
    client: Client,
}

impl RegistrySource {
    pub fn new(client: Client) -> Self {
        Self { client }
    }

    /// The client underneath, for pushing.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Check that the registry answers at all.
    pub fn ping(&self) -> Result<(), SourceError> {
        self.client.ping()
    }

    /// Check that the registry lets this client in (see [`Client::check_access`]).
    pub fn check_access(&self) -> Result<(), SourceError> {
        self.client.check_access()
    }
}

impl Source for RegistrySource {
    fn name(&self) -> String {
        self.client.registry().to_string()
    }

    fn catalog(&self) -> Result<Option<Vec<String>>, SourceError> {
        self.client.catalog()
    }

    fn tags(&self, repo: &str) -> Result<Vec<String>, SourceError> {
        self.client.tags(repo)
    }

    fn manifest(&self, repo: &str, reference: &Reference) -> Result<FetchedManifest, SourceError> {
        let (bytes, content_type, reported) = self.client.manifest(repo, &reference.to_string())?;
        let what = format!("{}/{}", self.client.registry(), reference.qualify(repo));
        let expected = match reference {
            Reference::Digest(d) => Some(d.clone()),
            Reference::Tag(_) => match reported.as_deref().map(Digest::parse) {
                Some(Ok(d)) => Some(d),
                Some(Err(e)) => {
                    return Err(SourceError::Oci {
                        what: format!("{what}: Docker-Content-Digest header"),
                        source: e,
                    })
                }
                None => None,
            },
        };
        let fetched =
            FetchedManifest::verify(&what, bytes, expected.as_ref(), content_type.as_deref())?;
        if let (Reference::Digest(d), Some(Ok(r))) =
            (reference, reported.as_deref().map(Digest::parse))
        {
            if &r != d {
                return Err(SourceError::Oci {
                    what,
                    source: OciError::DigestMismatch {
                        expected: d.clone(),
                        actual: r,
                    },
                });
            }
        }
        Ok(fetched)
    }

    fn tag_digest(&self, repo: &str, tag: &str) -> Result<Option<Digest>, SourceError> {
        match self.client.manifest_digest(repo, tag)? {
            Some(d) => Digest::parse(&d).map(Some).map_err(|e| SourceError::Oci {
                what: format!(
                    "{}/{repo}:{tag}: Docker-Content-Digest header",
                    self.client.registry()
                ),
                source: e,
            }),
            None => Ok(None),
        }
    }

    fn fetch_blob(
        &self,
        repo: &str,
        digest: &Digest,
        size: u64,
        range: Option<Range<u64>>,
        sink: &mut dyn BlobSink,
    ) -> Result<(), SourceError> {
        self.client.fetch_blob(repo, digest, size, range, sink)
    }

    /// The Referrers API, or — when the registry has none — the OCI tag schema: an index
    /// tagged `sha256-<hex of the subject>` listing the referrers.
    fn referrers(&self, repo: &str, digest: &Digest) -> Result<Vec<Descriptor>, SourceError> {
        match self.client.referrers_api(repo, digest) {
            Ok(list) => return Ok(list),
            Err(SourceError::NotFound(_))
            | Err(SourceError::Status {
                status: 400 | 405 | 501,
                ..
            }) => {}
            Err(e) => return Err(e),
        }
        let tag = Reference::Tag(format!("sha256-{}", digest.hex()));
        match self.manifest(repo, &tag) {
            Ok(f) => match f.manifest {
                Manifest::Index(index) => Ok(index.manifests),
                Manifest::Image(_) => {
                    log::warn!(
                        "{}/{repo}:{tag}: the referrers tag holds an image, not an index; ignored",
                        self.client.registry()
                    );
                    Ok(Vec::new())
                }
            },
            Err(SourceError::NotFound(_)) => Ok(Vec::new()),
            Err(e) => Err(e),
        }
    }
}
