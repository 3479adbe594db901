//! Many registries behind one mount: the automounter-style root of `orasfs mount
//! MOUNTPOINT`. A repository path's first component names the registry host
//! (`ghcr.io/org/repo`); each host gets its own source the first time it is visited.

use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::{Arc, Mutex};

use super::{BlobSink, FetchedManifest, HostTraffic, Hosts, Reference, Source};
use crate::error::SourceError;
use crate::oci::{Descriptor, Digest};

/// Makes the source for a registry host.
pub type Connect = Box<dyn Fn(&str) -> Result<Arc<dyn Source>, SourceError> + Send + Sync>;

/// Registries by host, connected on first use.
pub struct MultiSource {
    connect: Connect,
    hosts: Mutex<BTreeMap<String, Arc<dyn Source>>>,
}

impl std::fmt::Debug for MultiSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MultiSource")
            .field("hosts", &self.visited())
            .finish()
    }
}

impl MultiSource {
    pub fn new(connect: Connect) -> Self {
        Self {
            connect,
            hosts: Mutex::new(BTreeMap::new()),
        }
    }

    /// The source for `host`, connecting to it on first use.
    pub fn host(&self, host: &str) -> Result<Arc<dyn Source>, SourceError> {
        if let Some(s) = self.lock().get(host) {
            return Ok(s.clone());
        }
        // Connect without holding the lock: it may take a network round trip.
        let s = (self.connect)(host)?;
        Ok(self.lock().entry(host.to_string()).or_insert(s).clone())
    }

    /// Hosts visited so far.
    pub fn visited(&self) -> Vec<String> {
        self.lock().keys().cloned().collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Arc<dyn Source>>> {
        self.hosts.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Split `host/repo` and find the host's source.
    fn route(&self, repo: &str) -> Result<(Arc<dyn Source>, String), SourceError> {
        match repo.split_once('/') {
            Some((host, rest)) => Ok((self.host(host)?, rest.to_string())),
            None => Err(SourceError::NotFound(format!("repository {repo}"))),
        }
    }
}

impl Source for MultiSource {
    fn name(&self) -> String {
        "registries".into()
    }

    /// Catalogs are per host here: see [`Hosts::catalog_of`].
    fn catalog(&self) -> Result<Option<Vec<String>>, SourceError> {
        Ok(None)
    }

    fn tags(&self, repo: &str) -> Result<Vec<String>, SourceError> {
        let (src, rest) = self.route(repo)?;
        src.tags(&rest)
    }

    fn manifest(&self, repo: &str, reference: &Reference) -> Result<FetchedManifest, SourceError> {
        let (src, rest) = self.route(repo)?;
        src.manifest(&rest, reference)
    }

    fn tag_digest(&self, repo: &str, tag: &str) -> Result<Option<Digest>, SourceError> {
        let (src, rest) = self.route(repo)?;
        src.tag_digest(&rest, tag)
    }

    fn fetch_blob(
        &self,
        repo: &str,
        digest: &Digest,
        size: u64,
        range: Option<Range<u64>>,
        sink: &mut dyn BlobSink,
    ) -> Result<(), SourceError> {
        let (src, rest) = self.route(repo)?;
        src.fetch_blob(&rest, digest, size, range, sink)
    }

    fn referrers(&self, repo: &str, digest: &Digest) -> Result<Vec<Descriptor>, SourceError> {
        let (src, rest) = self.route(repo)?;
        src.referrers(&rest, digest)
    }

    fn traffic(&self) -> Vec<HostTraffic> {
        let hosts: Vec<Arc<dyn Source>> = self.lock().values().cloned().collect();
        hosts.iter().flat_map(|s| s.traffic()).collect()
    }

    fn hosts(&self) -> Option<&dyn Hosts> {
        Some(self)
    }
}

impl Hosts for MultiSource {
    fn visit(&self, host: &str) -> Result<(), SourceError> {
        self.host(host).map(drop)
    }

    fn visited(&self) -> Vec<String> {
        MultiSource::visited(self)
    }

    fn catalog_of(&self, host: &str) -> Result<Option<Vec<String>>, SourceError> {
        Ok(self
            .host(host)?
            .catalog()?
            .map(|c| c.into_iter().map(|r| format!("{host}/{r}")).collect()))
    }
}
