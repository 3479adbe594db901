//! A [`Source`] that fails chosen calls with chosen errors, for tests of the layers above
//! it without FUSE or a network (after mountpoint-s3's `failure_client`). It wraps another
//! source, counts every call, records the byte ranges blob fetches ask for, can cut a blob
//! body after some bytes, and can hold a failing call until the test lets it go.
//!
//! ```
//! use std::sync::Arc;
//! use orasfs::error::SourceError;
//! use orasfs::source::failing::{Call, FailingSource, Fault};
//! use orasfs::source::memory::MemorySource;
//!
//! let src = FailingSource::new(Arc::new(MemorySource::new()));
//! // The second blob fetch that touches bytes 0..100 delivers 10 bytes, then fails.
//! src.add(Fault::blob(SourceError::NotFound("blob".into())).overlapping(0..100).after(10).skip(1));
//! assert_eq!(src.calls(Call::Blob), 0);
//! ```

use std::collections::HashMap;
use std::io;
use std::ops::Range;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use super::{BlobSink, BodyKind, FetchedManifest, Reference, Source};
use crate::error::SourceError;
use crate::oci::{Descriptor, Digest};

/// The calls of the [`Source`] trait that a [`Fault`] can fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Call {
    Catalog,
    Tags,
    Manifest,
    TagDigest,
    Referrers,
    Blob,
}

/// A failure to inject: calls of one kind (blob fetches: those whose range overlaps
/// [`Fault::overlapping`]) fail with `error`, skipping the first `skip` that match, at most
/// `times` of them.
#[derive(Debug, Clone)]
pub struct Fault {
    call: Call,
    error: SourceError,
    bytes: Option<Range<u64>>,
    after: Option<u64>,
    thread: Option<String>,
    held: bool,
    skip: usize,
    times: usize,
    seen: usize,
    applied: usize,
}

impl Fault {
    /// Fail calls of `call` with `error`, once unless told otherwise.
    pub fn call(call: Call, error: SourceError) -> Self {
        Self {
            call,
            error,
            bytes: None,
            after: None,
            thread: None,
            held: false,
            skip: 0,
            times: 1,
            seen: 0,
            applied: 0,
        }
    }

    /// Fail blob fetches with `error`.
    pub fn blob(error: SourceError) -> Self {
        Self::call(Call::Blob, error)
    }

    /// Only blob fetches whose bytes overlap `bytes` (a fetch of the whole blob overlaps
    /// everything).
    pub fn overlapping(mut self, bytes: Range<u64>) -> Self {
        self.bytes = Some(bytes);
        self
    }

    /// Deliver the first `n` bytes of the body to the sink, then fail (a body cut short).
    pub fn after(mut self, n: u64) -> Self {
        self.after = Some(n);
        self
    }

    /// Only calls made on threads whose name starts with `prefix` (the read path's
    /// read-ahead workers are `orasfs-read-N`).
    pub fn on_threads(mut self, prefix: &str) -> Self {
        self.thread = Some(prefix.to_string());
        self
    }

    /// A call that meets this fault waits until [`FailingSource::release`] before it
    /// fails (so that a test can line other calls up behind it).
    pub fn held(mut self) -> Self {
        self.held = true;
        self
    }

    pub fn skip(mut self, n: usize) -> Self {
        self.skip = n;
        self
    }

    pub fn times(mut self, n: usize) -> Self {
        self.times = n;
        self
    }

    pub fn always(self) -> Self {
        self.times(usize::MAX)
    }

    fn matches(&self, call: Call, range: Option<&Range<u64>>) -> bool {
        let overlaps = match (&self.bytes, range) {
            (Some(b), Some(r)) => b.start < r.end && r.start < b.end,
            _ => true,
        };
        let thread = self.thread.as_deref().is_none_or(|p| {
            std::thread::current()
                .name()
                .is_some_and(|n| n.starts_with(p))
        });
        self.call == call && overlaps && thread
    }
}

/// Where calls that met a held fault wait until the test lets them go.
#[derive(Default)]
struct Gate {
    state: Mutex<GateState>,
    changed: Condvar,
}

#[derive(Default)]
struct GateState {
    open: bool,
    waiting: usize,
}

/// A source that fails chosen calls of the source it wraps.
pub struct FailingSource {
    inner: Arc<dyn Source>,
    faults: Mutex<Vec<Fault>>,
    calls: Mutex<HashMap<Call, u64>>,
    fetches: Mutex<Vec<Fetch>>,
    gate: Gate,
}

/// One blob fetch a [`FailingSource`] saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fetch {
    /// The bytes asked for; `None`: the whole blob.
    pub range: Option<Range<u64>>,
    /// Whether a fault failed it.
    pub failed: bool,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl FailingSource {
    pub fn new(inner: Arc<dyn Source>) -> Self {
        Self {
            inner,
            faults: Mutex::default(),
            calls: Mutex::default(),
            fetches: Mutex::default(),
            gate: Gate::default(),
        }
    }

    /// Inject a fault (faults are tried in the order added; the first that applies wins).
    pub fn add(&self, fault: Fault) {
        lock(&self.faults).push(fault);
    }

    /// Remove every fault: the source answers as the one it wraps.
    pub fn heal(&self) {
        lock(&self.faults).clear();
    }

    /// How many calls of this kind were made (failed ones included).
    pub fn calls(&self, call: Call) -> u64 {
        lock(&self.calls).get(&call).copied().unwrap_or(0)
    }

    /// Every blob fetch so far, in order.
    pub fn fetches(&self) -> Vec<Fetch> {
        lock(&self.fetches).clone()
    }

    /// Wait until `n` calls are held (see [`Fault::held`]).
    pub fn wait_held(&self, n: usize) {
        let mut g = lock(&self.gate.state);
        while g.waiting < n {
            g = self.gate.changed.wait(g).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// Let held calls go on (to fail), and hold none from now on.
    pub fn release(&self) {
        lock(&self.gate.state).open = true;
        self.gate.changed.notify_all();
    }

    /// Count a call; the fault it meets, if any.
    fn enter(&self, call: Call, range: Option<&Range<u64>>) -> Option<Fault> {
        *lock(&self.calls).entry(call).or_insert(0) += 1;
        let mut faults = lock(&self.faults);
        for f in faults.iter_mut().filter(|f| f.matches(call, range)) {
            f.seen += 1;
            if f.seen > f.skip && f.applied < f.times {
                f.applied += 1;
                return Some(f.clone());
            }
        }
        None
    }

    /// Fail a metadata call if a fault says so, else ask the wrapped source.
    fn call<T>(
        &self,
        call: Call,
        f: impl FnOnce() -> Result<T, SourceError>,
    ) -> Result<T, SourceError> {
        match self.enter(call, None) {
            Some(fault) => {
                self.wait_if_held(&fault);
                Err(fault.error)
            }
            None => f(),
        }
    }

    fn wait_if_held(&self, fault: &Fault) {
        let mut g = lock(&self.gate.state);
        if !fault.held || g.open {
            return;
        }
        g.waiting += 1;
        self.gate.changed.notify_all();
        while !g.open {
            g = self.gate.changed.wait(g).unwrap_or_else(|e| e.into_inner());
        }
        g.waiting -= 1;
    }
}

/// A sink that refuses every byte with `ENOSPC`, as a cache on a full disk.
#[derive(Debug)]
pub struct RefusingSink;

impl BlobSink for RefusingSink {
    fn begin(&mut self, _: BodyKind) -> io::Result<()> {
        Ok(())
    }

    fn data(&mut self, _: &[u8]) -> io::Result<()> {
        Err(io::Error::from_raw_os_error(libc::ENOSPC))
    }
}

/// Passes the first `left` bytes of a body on, then refuses more.
struct Cut<'a> {
    sink: &'a mut dyn BlobSink,
    left: u64,
}

impl BlobSink for Cut<'_> {
    fn begin(&mut self, kind: BodyKind) -> io::Result<()> {
        self.sink.begin(kind)
    }

    fn data(&mut self, bytes: &[u8]) -> io::Result<()> {
        let n = self.left.min(bytes.len() as u64) as usize;
        self.left -= n as u64;
        if n > 0 {
            self.sink.data(&bytes[..n])?;
        }
        if n < bytes.len() {
            return Err(io::Error::other("cut by a fault"));
        }
        Ok(())
    }
}

impl Source for FailingSource {
    fn name(&self) -> String {
        self.inner.name()
    }

    fn catalog(&self) -> Result<Option<Vec<String>>, SourceError> {
        self.call(Call::Catalog, || self.inner.catalog())
    }

    fn tags(&self, repo: &str) -> Result<Vec<String>, SourceError> {
        self.call(Call::Tags, || self.inner.tags(repo))
    }

    fn manifest(&self, repo: &str, reference: &Reference) -> Result<FetchedManifest, SourceError> {
        self.call(Call::Manifest, || self.inner.manifest(repo, reference))
    }

    fn tag_digest(&self, repo: &str, tag: &str) -> Result<Option<Digest>, SourceError> {
        self.call(Call::TagDigest, || self.inner.tag_digest(repo, tag))
    }

    fn referrers(&self, repo: &str, digest: &Digest) -> Result<Vec<Descriptor>, SourceError> {
        self.call(Call::Referrers, || self.inner.referrers(repo, digest))
    }

    fn fetch_blob(
        &self,
        repo: &str,
        digest: &Digest,
        size: u64,
        range: Option<Range<u64>>,
        sink: &mut dyn BlobSink,
    ) -> Result<(), SourceError> {
        let fault = self.enter(Call::Blob, range.as_ref());
        lock(&self.fetches).push(Fetch {
            range: range.clone(),
            failed: fault.is_some(),
        });
        let Some(fault) = fault else {
            return self.inner.fetch_blob(repo, digest, size, range, sink);
        };
        self.wait_if_held(&fault);
        if let Some(left) = fault.after {
            let mut cut = Cut { sink, left };
            // The wrapped source stops at the cut; its error is replaced by the fault's.
            let _ = self.inner.fetch_blob(repo, digest, size, range, &mut cut);
        }
        Err(fault.error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::memory::MemorySource;
    use crate::source::VecSink;

    #[test]
    fn faults_apply_to_chosen_calls_and_ranges_and_heal() {
        let mem = Arc::new(MemorySource::new());
        let d = mem.put_blob("application/octet-stream", (0..100u8).collect());
        let src = FailingSource::new(mem);
        src.add(
            Fault::blob(SourceError::NotFound("x".into()))
                .overlapping(50..60)
                .after(5)
                .skip(1),
        );
        let fetch = |r: Range<u64>| {
            let mut sink = VecSink::with_limit(100);
            let res = src.fetch_blob("r", &d.digest, 100, Some(r), &mut sink);
            (res, sink.bytes)
        };
        // Does not overlap: passes; the first overlapping fetch is skipped.
        assert_eq!(fetch(0..10).1, (0..10u8).collect::<Vec<_>>());
        assert!(fetch(40..55).0.is_ok());
        let (res, got) = fetch(55..70);
        assert!(matches!(res, Err(SourceError::NotFound(_))), "{res:?}");
        assert_eq!(got, (55..60u8).collect::<Vec<_>>(), "5 bytes, then the cut");
        // Applied once only.
        assert!(fetch(55..70).0.is_ok());
        assert_eq!(src.calls(Call::Blob), 4);
        assert_eq!(
            src.fetches()[2],
            Fetch {
                range: Some(55..70),
                failed: true
            }
        );
        let injected = |r: Result<Vec<String>, SourceError>| matches!(r, Err(SourceError::Unsupported(m)) if m == "injected");
        src.add(Fault::call(Call::Tags, SourceError::Unsupported("injected".into())).always());
        assert!(injected(src.tags("r")));
        assert!(injected(src.tags("r")));
        src.heal();
        assert!(!injected(src.tags("r")), "the memory source answers");
        assert_eq!(src.calls(Call::Tags), 3);
    }
}
