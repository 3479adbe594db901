//! [`FleetSource`]: the origin registry behind its mirrors. Each read tries the mirrors
//! that may serve it, in order, then the origin. A mirror that fails (refuses, times out,
//! is down) is skipped for a cool-down; a blob read that a mirror cut short continues
//! from the next source at the byte where it stopped, so the reader sees no error while
//! any source can serve. Each mirror is its own [`Client`], holding only its own
//! credentials, so no host ever receives another's. Requests and bytes are counted per
//! host for `orasfs stats`.

use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::fill::{Fills, Probe, Verdict, PROBE_ABOVE};
use super::{MirrorSpec, Plan};
use crate::error::SourceError;
use crate::oci::{Descriptor, Digest};
use crate::source::registry::adapter::RegistrySource;
pub use crate::source::HostTraffic;
use crate::source::{BlobSink, BodyKind, FetchedManifest, Reference, Source};

#[derive(Default)]
struct Counters {
    requests: AtomicU64,
    bytes: AtomicU64,
    failures: AtomicU64,
}

impl Counters {
    fn snapshot(&self, host: &str, role: &'static str) -> HostTraffic {
        HostTraffic {
            host: host.to_string(),
            role,
            requests: self.requests.load(Ordering::Relaxed),
            bytes: self.bytes.load(Ordering::Relaxed),
            failures: self.failures.load(Ordering::Relaxed),
        }
    }

    fn count(&self, bytes: u64) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        self.bytes.fetch_add(bytes, Ordering::Relaxed);
    }
}

/// One mirror host and its state.
struct Mirror {
    host: String,
    src: RegistrySource,
    /// Skipped until then after a failure.
    cool_until: Mutex<Option<Instant>>,
    traffic: Counters,
}

/// Makes the client for a mirror (the mount's timeouts, the mirror's own credentials).
pub type MakeMirror<'a> = &'a dyn Fn(&MirrorSpec) -> Result<RegistrySource, SourceError>;

/// The origin registry behind its mirrors.
pub struct FleetSource {
    origin: RegistrySource,
    origin_traffic: Counters,
    plan: Plan,
    mirrors: Vec<Mirror>,
    /// Hosts that replace the origin for some repositories (registries.conf `location`,
    /// hosts.toml `server`).
    moved: Vec<Mirror>,
    cooldown: Duration,
    fills: Fills,
}

impl std::fmt::Debug for FleetSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FleetSource")
            .field("origin", &self.origin.name())
            .field(
                "mirrors",
                &self.mirrors.iter().map(|m| &m.host).collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl FleetSource {
    /// The origin and a client for every mirror host the plan names. A mirror that failed
    /// is skipped for `cooldown`; one that is filling a blob is waited for up to
    /// `fill_wait` (see [`super::fill`]).
    pub fn new(
        origin: RegistrySource,
        plan: Plan,
        cooldown: Duration,
        fill_wait: Duration,
        make: MakeMirror<'_>,
    ) -> Result<Self, SourceError> {
        let clients = |specs: &mut dyn Iterator<Item = &MirrorSpec>| {
            let mut out: Vec<Mirror> = Vec::new();
            for spec in specs {
                if out.iter().any(|m| m.host == spec.host) {
                    continue;
                }
                out.push(Mirror {
                    host: spec.host.clone(),
                    src: make(spec)?,
                    cool_until: Mutex::new(None),
                    traffic: Counters::default(),
                });
            }
            Ok::<_, SourceError>(out)
        };
        let mirrors = clients(&mut plan.all())?;
        let moved = clients(&mut plan.locations())?;
        if !mirrors.is_empty() {
            log::info!(
                "mirrors of {}: {}",
                origin.name(),
                mirrors
                    .iter()
                    .map(|m| m.host.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        Ok(Self {
            origin,
            origin_traffic: Counters::default(),
            plan,
            mirrors,
            moved,
            cooldown,
            fills: Fills::new(fill_wait, cooldown),
        })
    }

    /// The registry that serves the whole SOURCE registry: the origin, or the host the
    /// configuration moves it to.
    pub fn origin(&self) -> &RegistrySource {
        self.upstream(None).0
    }

    /// Check that the registry behind the mirrors for `repo` answers.
    pub fn ping(&self, repo: Option<&str>) -> Result<(), SourceError> {
        self.upstream(repo).0.ping()
    }

    /// Who is asked after the mirrors for `repo` (the whole registry for `None`), the
    /// repository name there, and its counters.
    fn upstream(&self, repo: Option<&str>) -> (&RegistrySource, String, &Counters) {
        let moved = self.plan.relocate(repo).and_then(|(spec, r)| {
            let m = self.moved.iter().find(|m| m.host == spec.host)?;
            Some((&m.src, r, &m.traffic))
        });
        moved.unwrap_or_else(|| {
            (
                &self.origin,
                repo.unwrap_or_default().to_string(),
                &self.origin_traffic,
            )
        })
    }

    /// The mirrors that may serve `repo` now (not cooling down) and pass `allowed`, in
    /// order, with the repository name on each.
    fn candidates(
        &self,
        repo: &str,
        allowed: impl Fn(&MirrorSpec) -> bool,
    ) -> Result<Vec<(&Mirror, String)>, SourceError> {
        let route = self
            .plan
            .route(repo)
            .map_err(|e| SourceError::Unsupported(e.to_string()))?;
        let now = Instant::now();
        let mut out: Vec<(&Mirror, String)> = Vec::new();
        for (spec, mrepo) in route {
            if !allowed(spec) {
                continue;
            }
            let Some(m) = self.mirrors.iter().find(|m| m.host == spec.host) else {
                continue;
            };
            if out.iter().any(|(o, _)| o.host == m.host) {
                continue;
            }
            let cool = *m.cool_until.lock().unwrap_or_else(|e| e.into_inner());
            if cool.is_some_and(|t| now < t) {
                continue;
            }
            out.push((m, mrepo));
        }
        Ok(out)
    }

    /// Note a mirror's failure: a missing object only moves on; anything else also
    /// rests the mirror for the cool-down.
    fn failed(&self, m: &Mirror, what: &str, e: &SourceError) {
        m.traffic.failures.fetch_add(1, Ordering::Relaxed);
        if matches!(e, SourceError::NotFound(_)) {
            log::debug!(
                "mirror {}: {what} not found there; asking the next source",
                m.host
            );
            return;
        }
        let mut g = m.cool_until.lock().unwrap_or_else(|e| e.into_inner());
        *g = Some(Instant::now() + self.cooldown);
        log::warn!(
            "mirror {} failed for {what} ({e}); skipped for {:?}, the next source serves",
            m.host,
            self.cooldown
        );
    }

    /// Ask `m` for the first byte of a blob, to learn whether it holds the blob (`206`) or
    /// is still fetching it (`200` with the whole blob, dropped at its headers).
    fn probe(
        &self,
        m: &Mirror,
        mrepo: &str,
        digest: &Digest,
        size: u64,
    ) -> Result<Probe, SourceError> {
        let mut sink = ProbeSink::default();
        let r = m.src.fetch_blob(mrepo, digest, size, Some(0..1), &mut sink);
        m.traffic.count(sink.received);
        match r {
            _ if sink.whole => Ok(Probe::Whole),
            Ok(()) => Ok(Probe::Ranged),
            Err(e) => Err(e),
        }
    }

    /// A manifest from the mirrors allowed to serve it, else from the origin.
    fn manifest_via(
        &self,
        repo: &str,
        reference: &Reference,
    ) -> Result<FetchedManifest, SourceError> {
        let by_tag = matches!(reference, Reference::Tag(_));
        let allowed = |s: &MirrorSpec| {
            if by_tag {
                s.usage.tags
            } else {
                s.usage.digests
            }
        };
        for (m, mrepo) in self.candidates(repo, allowed)? {
            match m.src.manifest(&mrepo, reference) {
                Ok(f) => {
                    m.traffic.count(f.bytes.len() as u64);
                    return Ok(f);
                }
                Err(e) => self.failed(m, &reference.qualify(&mrepo), &e),
            }
        }
        let (up, urepo, traffic) = self.upstream(Some(repo));
        let r = up.manifest(&urepo, reference);
        traffic.count(r.as_ref().map_or(0, |f| f.bytes.len() as u64));
        r
    }
}

/// A sink that lets several sources deliver one fetch in turn: the first source's
/// `begin` reaches the real sink; later sources are asked only for what is still missing
/// (or, if one sends the whole blob, the bytes already delivered are dropped).
struct Relay<'a> {
    inner: &'a mut dyn BlobSink,
    range: Option<Range<u64>>,
    size: u64,
    kind: Option<BodyKind>,
    /// Offset in the blob of the first byte given to `inner`.
    first: u64,
    delivered: u64,
    /// The range the current attempt asked for.
    asked: Option<Range<u64>>,
    /// Bytes of the current attempt to drop (already delivered).
    skip: u64,
    /// Bytes the current attempt received.
    received: u64,
    /// Refuse a whole blob sent for a range (from a mirror known to serve ranges).
    ranges_only: bool,
    /// The current attempt was refused for that.
    refused: bool,
}

impl<'a> Relay<'a> {
    fn new(inner: &'a mut dyn BlobSink, range: Option<Range<u64>>, size: u64) -> Self {
        Self {
            inner,
            range,
            size,
            kind: None,
            first: 0,
            delivered: 0,
            asked: None,
            skip: 0,
            received: 0,
            ranges_only: false,
            refused: false,
        }
    }

    fn end(&self) -> u64 {
        match (self.kind, &self.range) {
            (Some(BodyKind::Range), Some(r)) => r.end,
            _ => self.size,
        }
    }

    fn done(&self) -> bool {
        self.kind.is_some() && self.first + self.delivered >= self.end()
    }

    /// Start an attempt: the range it should ask for. With `ranges_only`, a whole blob
    /// sent for that range is refused at its first byte.
    fn attempt(&mut self, ranges_only: bool) -> Option<Range<u64>> {
        self.received = 0;
        self.skip = 0;
        self.ranges_only = ranges_only;
        self.refused = false;
        self.asked = match self.kind {
            None => self.range.clone(),
            Some(_) => Some(self.first + self.delivered..self.end()),
        };
        self.asked.clone()
    }
}

impl BlobSink for Relay<'_> {
    fn begin(&mut self, kind: BodyKind) -> std::io::Result<()> {
        if kind == BodyKind::Whole && self.ranges_only && self.asked.is_some() {
            self.refused = true;
            return Err(std::io::Error::other(
                "a mirror answered a range with the whole blob",
            ));
        }
        let start = match kind {
            BodyKind::Range => self.asked.as_ref().map_or(0, |r| r.start),
            BodyKind::Whole => 0,
        };
        match self.kind {
            None => {
                self.inner.begin(kind)?;
                self.kind = Some(kind);
                self.first = start;
            }
            Some(_) => self.skip = (self.first + self.delivered).saturating_sub(start),
        }
        Ok(())
    }

    fn data(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.received += bytes.len() as u64;
        let n = (self.skip.min(bytes.len() as u64)) as usize;
        self.skip -= n as u64;
        // A whole blob sent for the rest of a range: stop at the range's end.
        let room = self.end().saturating_sub(self.first + self.delivered);
        let rest = &bytes[n..];
        let rest = &rest[..rest.len().min(usize::try_from(room).unwrap_or(usize::MAX))];
        if !rest.is_empty() {
            self.delivered += rest.len() as u64;
            self.inner.data(rest)?;
        }
        Ok(())
    }
}

/// Takes a one-byte range; refuses a whole blob at its first byte, which drops the
/// answer (and closes its connection) before its body is read.
#[derive(Default)]
struct ProbeSink {
    whole: bool,
    received: u64,
}

impl BlobSink for ProbeSink {
    fn begin(&mut self, kind: BodyKind) -> std::io::Result<()> {
        if kind == BodyKind::Whole {
            self.whole = true;
            return Err(std::io::Error::other(
                "the mirror answered a range with the whole blob",
            ));
        }
        Ok(())
    }

    fn data(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.received += bytes.len() as u64;
        Ok(())
    }
}

impl Source for FleetSource {
    fn name(&self) -> String {
        self.origin.name()
    }

    fn catalog(&self) -> Result<Option<Vec<String>>, SourceError> {
        let (up, _, traffic) = self.upstream(None);
        traffic.count(0);
        up.catalog()
    }

    fn tags(&self, repo: &str) -> Result<Vec<String>, SourceError> {
        self.plan
            .route(repo)
            .map_err(|e| SourceError::Unsupported(e.to_string()))?;
        let (up, urepo, traffic) = self.upstream(Some(repo));
        traffic.count(0);
        up.tags(&urepo)
    }

    fn manifest(&self, repo: &str, reference: &Reference) -> Result<FetchedManifest, SourceError> {
        self.manifest_via(repo, reference)
    }

    fn fetch_blob(
        &self,
        repo: &str,
        digest: &Digest,
        size: u64,
        range: Option<Range<u64>>,
        sink: &mut dyn BlobSink,
    ) -> Result<(), SourceError> {
        let mut relay = Relay::new(sink, range, size);
        for (m, mrepo) in self.candidates(repo, |_| true)? {
            if size > PROBE_ABOVE {
                let what = format!("blob {digest}");
                match self
                    .fills
                    .check(&m.host, digest, || self.probe(m, &mrepo, digest, size))
                {
                    Ok(Verdict::Ready) => {}
                    Ok(Verdict::Skip) => continue,
                    Err(e) => {
                        self.failed(m, &what, &e);
                        continue;
                    }
                }
            }
            // A mirror that answered 206 before and now sends a whole blob for a range has
            // lost its copy and is filling again: each such answer would cost the origin
            // a copy. Dropped; the next source serves this read, the next read waits.
            let asked = relay.attempt(size > PROBE_ABOVE);
            let r = m.src.fetch_blob(&mrepo, digest, size, asked, &mut relay);
            m.traffic.count(relay.received);
            if relay.refused {
                log::info!(
                    "mirror {} answered a range of blob {digest} with the whole blob; asking \
                     it again before reading it from there",
                    m.host
                );
                self.fills.forget(&m.host, digest);
                continue;
            }
            match r {
                Ok(()) => return Ok(()),
                Err(e @ SourceError::Sink { .. }) => return Err(e),
                Err(e) => self.failed(m, &format!("blob {digest}"), &e),
            }
            if relay.done() {
                return Ok(());
            }
        }
        let asked = relay.attempt(false);
        let (up, urepo, traffic) = self.upstream(Some(repo));
        let r = up.fetch_blob(&urepo, digest, size, asked, &mut relay);
        traffic.count(relay.received);
        r
    }

    fn tag_digest(&self, repo: &str, tag: &str) -> Result<Option<Digest>, SourceError> {
        for (m, mrepo) in self.candidates(repo, |s| s.usage.tags)? {
            match m.src.tag_digest(&mrepo, tag) {
                Ok(d) => {
                    m.traffic.count(0);
                    return Ok(d);
                }
                Err(e) => self.failed(m, &format!("{mrepo}:{tag}"), &e),
            }
        }
        let (up, urepo, traffic) = self.upstream(Some(repo));
        traffic.count(0);
        up.tag_digest(&urepo, tag)
    }

    fn referrers(&self, repo: &str, digest: &Digest) -> Result<Vec<Descriptor>, SourceError> {
        let (up, urepo, traffic) = self.upstream(Some(repo));
        traffic.count(0);
        up.referrers(&urepo, digest)
    }

    fn traffic(&self) -> Vec<HostTraffic> {
        std::iter::once(self.origin_traffic.snapshot(&self.origin.name(), "origin"))
            .chain(
                self.moved
                    .iter()
                    .map(|m| m.traffic.snapshot(&m.host, "origin")),
            )
            .chain(
                self.mirrors
                    .iter()
                    .map(|m| m.traffic.snapshot(&m.host, "mirror")),
            )
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::VecSink;

    /// A mirror that sent part of a range and then failed, and an origin that sends the
    /// whole blob: the sink gets each byte once, in order.
    #[test]
    fn relay_continues_where_the_last_source_stopped() {
        let blob: Vec<u8> = (0..100u8).collect();
        let mut sink = VecSink::with_limit(1000);
        let mut r = Relay::new(&mut sink, Some(10..50), 100);
        assert_eq!(r.attempt(false), Some(10..50));
        r.begin(BodyKind::Range).unwrap();
        r.data(&blob[10..25]).unwrap();
        assert!(!r.done());
        // A source that must serve ranges sends the whole blob: refused, nothing passed.
        assert_eq!(r.attempt(true), Some(25..50));
        assert!(r.begin(BodyKind::Whole).is_err() && r.refused);
        assert_eq!(r.attempt(false), Some(25..50));
        r.begin(BodyKind::Whole).unwrap();
        r.data(&blob[..]).unwrap();
        // The whole blob was more than the range: the first source's kind rules.
        assert_eq!(sink.kind, Some(BodyKind::Range));
        assert_eq!(sink.bytes, &blob[10..50]);
    }
}
