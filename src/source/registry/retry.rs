//! One retry budget per request. `--retries N` is how many times one request (a blob
//! fetch, a manifest, a page of a listing, a push step) is tried again after a transient
//! failure, whichever step failed: a connection error, a transient status (as
//! [`SourceError::is_transient`] says), a body cut short, the token request on the way.
//! A request therefore makes at most N + 1 failed attempts; redirects and one renewal of
//! credentials after a 401 are not failures and spend nothing. Waits between tries are
//! jittered exponential backoff, or what the server's `Retry-After` asks.

use std::time::Duration;

use crate::error::SourceError;

/// The retries one request has left.
#[derive(Debug)]
pub(super) struct Budget {
    retries: u32,
    used: u32,
    /// Give up at the first connect timeout. For metadata: a registry that lets a
    /// connection time out counts as down at once, rather than after as many more connect
    /// timeouts as there are retries, each of which a lookup would wait out.
    pub stop_at_connect_timeout: bool,
}

impl Budget {
    /// `retries` tries after the first.
    pub fn new(retries: u32) -> Self {
        Self {
            retries,
            used: 0,
            stop_at_connect_timeout: false,
        }
    }

    /// A metadata request's budget: it also gives up at the first connect timeout.
    pub fn metadata(retries: u32) -> Self {
        Self {
            stop_at_connect_timeout: true,
            ..Self::new(retries)
        }
    }

    /// Retries spent so far.
    #[cfg(test)]
    pub fn used(&self) -> u32 {
        self.used
    }

    /// After `failure` of `what`: if it is transient and a retry is left, spend one, log
    /// it, and return how long to wait before trying again (`retry_after` if the server
    /// asked, else backoff). `None`: give up with this failure.
    pub fn retry(
        &mut self,
        what: &str,
        failure: &SourceError,
        retry_after: Option<Duration>,
    ) -> Option<Duration> {
        if !failure.is_transient() || self.used >= self.retries {
            return None;
        }
        self.used += 1;
        log::warn!(
            "{what}: {failure}; retrying (retry {} of {})",
            self.used,
            self.retries
        );
        Some(retry_after.unwrap_or_else(|| backoff(self.used - 1)))
    }
}

/// Jittered exponential backoff: about 200 ms, 400 ms, 800 ms … capped at 10 s.
pub(super) fn backoff(attempt: u32) -> Duration {
    use rand::Rng;
    let base = 200u64.saturating_mul(1 << attempt.min(6)).min(10_000);
    let jitter = rand::thread_rng().gen_range(0..=base / 2);
    Duration::from_millis(base / 2 + jitter)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        assert!(backoff(0) <= Duration::from_millis(200));
        assert!(backoff(20) <= Duration::from_secs(10));
    }

    #[test]
    fn a_budget_retries_only_transient_failures_and_only_so_often() {
        let cut = SourceError::Unreachable {
            target: "t".into(),
            detail: "connection reset".into(),
        };
        let busy = SourceError::Status {
            url: "u".into(),
            status: 503,
        };
        let missing = SourceError::NotFound("x".into());
        let mut b = Budget::new(2);
        assert_eq!(b.retry("x", &missing, None), None, "not transient");
        let asked = Duration::from_millis(7);
        assert_eq!(b.retry("x", &busy, Some(asked)), Some(asked), "Retry-After");
        assert!(b.retry("x", &cut, None).is_some());
        assert_eq!(b.retry("x", &busy, None), None, "two retries spent");
        assert_eq!(b.used(), 2);
        assert_eq!(Budget::new(0).retry("x", &cut, None), None);
    }
}
