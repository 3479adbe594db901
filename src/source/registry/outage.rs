//! Whether the registry can be reached, as metadata requests see it.
//!
//! When a request cannot reach the registry even after its retries, the registry counts
//! as down. While it is down, metadata requests fail at once with [`SourceError::Down`]
//! (the tree then falls back on what it saw before), except one probe per
//! [`PROBE_INTERVAL`], made without retries; the first answer of any kind ends the outage.
//! The outage is logged once when it starts and once when it ends, not per request.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::error::SourceError;

/// How often a request is let through to see whether a registry that is down is back.
pub const PROBE_INTERVAL: Duration = Duration::from_secs(1);

struct Outage {
    since: Instant,
    next_probe: Instant,
    detail: String,
}

/// The registry's health for one client.
#[derive(Default)]
pub(super) struct Health {
    outage: Mutex<Option<Outage>>,
}

/// What a request may do now.
pub(super) enum Gate {
    /// Go ahead with the configured retries.
    Ask,
    /// Go ahead once, without retries: this is the probe of a registry that is down.
    Probe,
}

impl Health {
    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Outage>> {
        self.outage.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether a request may go out now; a [`SourceError::Down`] when it may not.
    pub(super) fn gate(&self, registry: &str) -> Result<Gate, SourceError> {
        let mut g = self.lock();
        match g.as_mut() {
            None => Ok(Gate::Ask),
            Some(o) if Instant::now() >= o.next_probe => {
                o.next_probe = Instant::now() + PROBE_INTERVAL;
                Ok(Gate::Probe)
            }
            Some(o) => Err(down(registry, o)),
        }
    }

    /// A request could not reach the registry: it is down (logged when that is news).
    /// Returns the error to report, a [`SourceError::Down`].
    pub(super) fn unreachable(&self, registry: &str, e: &SourceError) -> SourceError {
        let mut g = self.lock();
        let o = g.get_or_insert_with(|| {
            log::warn!(
                "registry {registry} cannot be reached ({e}); names seen before keep their last \
                 known meaning, other lookups fail with EIO until it answers again"
            );
            Outage {
                since: Instant::now(),
                next_probe: Instant::now() + PROBE_INTERVAL,
                detail: e.to_string(),
            }
        });
        down(registry, o)
    }

    /// The registry answered (whatever the status): any outage is over.
    pub(super) fn answered(&self, registry: &str) {
        if let Some(o) = self.lock().take() {
            log::warn!(
                "registry {registry} answers again after {:.0?}",
                o.since.elapsed()
            );
        }
    }
}

fn down(registry: &str, o: &Outage) -> SourceError {
    SourceError::Down {
        target: registry.to_string(),
        detail: format!("for {}s: {}", o.since.elapsed().as_secs(), o.detail),
    }
}
