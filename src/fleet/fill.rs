//! Waiting for a pull-through cache to hold a blob before reading it from there.
//!
//! A pull-through cache that has not cached a blob yet answers a `Range` request for it
//! with `200` and the whole blob, streamed from the origin while it stores its own copy
//! from a second origin request (measured with distribution 2.8, see the README). If
//! orasfs read those answers, the origin would send the blob once per request plus once
//! for the cache. So a mirror is first asked, once per blob and mirror, for one byte:
//! `206` means it holds the blob and may serve ranges of it; `200` means it is filling
//! (the answer is dropped at its headers, which stops the proxy's origin stream) and it
//! is asked again, at growing pauses, until it answers `206` or `--mirror-fill-wait` is
//! over, when the blob is read from the next source and the mirror asked again after the
//! cool-down. Readers of the same blob wait for the one asking.

use std::collections::HashMap;
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::error::SourceError;
use crate::oci::Digest;

/// Blobs up to this size are read without asking first: a second origin copy of them
/// costs less than the extra request.
pub const PROBE_ABOVE: u64 = 1 << 20;
/// The first pause between two asks of a filling mirror; it doubles up to [`MAX_PAUSE`].
/// Each ask of a filling distribution proxy costs the origin what the proxy streams before
/// it sees the answer dropped (measured: 0.1 to 5 MB on loopback), so asks are few.
const FIRST_PAUSE: Duration = Duration::from_secs(1);
const MAX_PAUSE: Duration = Duration::from_secs(8);
/// Entries kept before the table is cleared (it is only a hint).
const MAX_ENTRIES: usize = 4096;

/// How a mirror answered a one-byte range of a blob.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Probe {
    /// `206`: it holds the blob.
    Ranged,
    /// `200` with the whole blob: it is filling (or never serves ranges).
    Whole,
}

/// Whether to read a blob from a mirror now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Ready,
    /// Not now: read it from the next source.
    Skip,
}

#[derive(Debug, Clone, Copy)]
enum State {
    /// One reader is asking the mirror; the others wait.
    Asking,
    Ready,
    /// Not served by this mirror until then.
    Skip(Instant),
}

/// The state of each (mirror, blob) pair.
pub struct Fills {
    states: Mutex<HashMap<(String, Digest), State>>,
    changed: Condvar,
    max_wait: Duration,
    cooldown: Duration,
}

impl Fills {
    pub fn new(max_wait: Duration, cooldown: Duration) -> Self {
        Self {
            states: Mutex::new(HashMap::new()),
            changed: Condvar::new(),
            max_wait,
            cooldown,
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<(String, Digest), State>> {
        self.states.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn set(&self, key: &(String, Digest), state: Option<State>) {
        let mut g = self.lock();
        match state {
            Some(s) => {
                if g.len() >= MAX_ENTRIES {
                    g.retain(|_, s| matches!(s, State::Asking));
                }
                g.insert(key.clone(), s);
            }
            None => {
                g.remove(key);
            }
        }
        drop(g);
        self.changed.notify_all();
    }

    /// Forget that `host` held `digest`: it answered a range with the whole blob again (it
    /// lost its copy and is filling anew); the next read asks it first.
    pub fn forget(&self, host: &str, digest: &Digest) {
        let key = (host.to_string(), digest.clone());
        let mut g = self.lock();
        if matches!(g.get(&key), Some(State::Ready)) {
            g.remove(&key);
        }
    }

    /// Whether `host` may serve `digest` now, asking it with `probe` (at most one reader
    /// at a time per pair) until it answers [`Probe::Ranged`] or the fill wait is over.
    /// A failing probe is returned for the caller to skip the mirror.
    pub fn check(
        &self,
        host: &str,
        digest: &Digest,
        probe: impl Fn() -> Result<Probe, SourceError>,
    ) -> Result<Verdict, SourceError> {
        let key = (host.to_string(), digest.clone());
        {
            let mut g = self.lock();
            loop {
                match g.get(&key).copied() {
                    Some(State::Ready) => return Ok(Verdict::Ready),
                    Some(State::Skip(until)) if Instant::now() < until => return Ok(Verdict::Skip),
                    Some(State::Asking) => {
                        g = self
                            .changed
                            .wait_timeout(g, MAX_PAUSE)
                            .unwrap_or_else(|e| e.into_inner())
                            .0;
                    }
                    _ => {
                        g.insert(key.clone(), State::Asking);
                        break;
                    }
                }
            }
        }
        // This reader asks; whatever happens, the others are told.
        let mut outcome: Option<State> = None;
        let r = self.ask(host, digest, &probe, &mut outcome);
        self.set(&key, outcome);
        r
    }

    fn ask(
        &self,
        host: &str,
        digest: &Digest,
        probe: &impl Fn() -> Result<Probe, SourceError>,
        outcome: &mut Option<State>,
    ) -> Result<Verdict, SourceError> {
        let started = Instant::now();
        let mut pause = FIRST_PAUSE;
        let mut asks = 0u32;
        loop {
            asks += 1;
            match probe()? {
                Probe::Ranged => {
                    if asks > 1 {
                        log::info!(
                            "mirror {host} holds blob {digest} after {:.1?} ({asks} asks)",
                            started.elapsed()
                        );
                    }
                    *outcome = Some(State::Ready);
                    return Ok(Verdict::Ready);
                }
                Probe::Whole if started.elapsed() + pause > self.max_wait => {
                    log::warn!(
                        "mirror {host} still answers ranges of blob {digest} with the whole \
                         blob after {:.1?}; the next source serves it, the mirror is asked \
                         again in {:?}",
                        started.elapsed(),
                        self.cooldown
                    );
                    *outcome = Some(State::Skip(Instant::now() + self.cooldown));
                    return Ok(Verdict::Skip);
                }
                Probe::Whole => {
                    if asks == 1 {
                        log::info!(
                            "mirror {host} is fetching blob {digest} (it answered a range with \
                             the whole blob); waiting for it to hold the blob"
                        );
                    }
                    std::thread::sleep(pause);
                    pause = (pause * 2).min(MAX_PAUSE);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::Arc;

    fn digest() -> Digest {
        Digest::of(b"x")
    }

    #[test]
    fn a_filling_mirror_is_asked_until_it_answers_a_range() {
        let fills = Fills::new(Duration::from_secs(30), Duration::from_secs(30));
        let asks = AtomicU32::new(0);
        let v = fills
            .check("m", &digest(), || {
                Ok(match asks.fetch_add(1, Ordering::SeqCst) {
                    0 | 1 => Probe::Whole,
                    _ => Probe::Ranged,
                })
            })
            .unwrap();
        assert_eq!(v, Verdict::Ready);
        assert_eq!(asks.load(Ordering::SeqCst), 3);
        // Known now: not asked again.
        let v = fills
            .check("m", &digest(), || panic!("asked again"))
            .unwrap();
        assert_eq!(v, Verdict::Ready);
    }

    #[test]
    fn a_mirror_that_never_answers_a_range_is_skipped_after_the_wait() {
        let fills = Fills::new(Duration::from_millis(1500), Duration::from_secs(30));
        let t = Instant::now();
        let v = fills.check("m", &digest(), || Ok(Probe::Whole)).unwrap();
        assert_eq!(v, Verdict::Skip);
        assert!(
            t.elapsed() < Duration::from_millis(2500),
            "{:?}",
            t.elapsed()
        );
        let v = fills
            .check("m", &digest(), || panic!("asked again"))
            .unwrap();
        assert_eq!(v, Verdict::Skip, "skipped during the cool-down");
    }

    #[test]
    fn a_failing_ask_is_returned_and_forgotten() {
        let fills = Fills::new(Duration::from_secs(30), Duration::from_secs(30));
        let r = fills.check("m", &digest(), || {
            Err(SourceError::Unsupported("down".into()))
        });
        assert!(r.is_err());
        let v = fills.check("m", &digest(), || Ok(Probe::Ranged)).unwrap();
        assert_eq!(v, Verdict::Ready);
    }

    /// Readers of one blob arriving together: one asks, the others wait for its answer.
    #[test]
    fn one_reader_asks_for_all() {
        let fills = Arc::new(Fills::new(Duration::from_secs(30), Duration::from_secs(30)));
        let asks = Arc::new(AtomicU32::new(0));
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let (fills, asks) = (fills.clone(), asks.clone());
                std::thread::spawn(move || {
                    fills
                        .check("m", &digest(), || {
                            let n = asks.fetch_add(1, Ordering::SeqCst);
                            std::thread::sleep(Duration::from_millis(50));
                            Ok(if n == 0 { Probe::Whole } else { Probe::Ranged })
                        })
                        .unwrap()
                })
            })
            .collect();
        for t in threads {
            assert_eq!(t.join().unwrap(), Verdict::Ready);
        }
        assert_eq!(asks.load(Ordering::SeqCst), 2);
    }
}
