//! Streaming a blob, or a range of it, into a [`BlobSink`], in small steps:
//!
//! - [`Progress`] (no I/O) knows what the fetch has delivered, which `Range` to ask for
//!   next and whether an answer is acceptable: a body cut short resumes from the bytes
//!   already delivered; a server that ignores `Range` sends the whole blob, which the
//!   sink then takes whole (and that server is not sent `Range` for this blob again).
//! - [`Client::location`]: a redirect to another host (a CDN or object store) is
//!   remembered per blob and used directly next time, until it answers 401/403/404/410
//!   (an expired signature) or fails, when the registry is asked again.
//! - [`deliver`] streams one answer's body into the sink.
//!
//! Every failure of the fetch (a transient status, a connection error, a body cut short,
//! a remembered location that failed) spends from one retry budget ([`super::retry`]).

use std::ops::Range;

use reqwest::header::{HeaderMap, HeaderValue, CONTENT_RANGE, RANGE};
use reqwest::{Method, Response, StatusCode};
use url::Url;

use super::retry::Budget;
use super::{describe_origin, error_chain, headers, lock, pull_scope, BlobKey, Client};
use super::{SourceError, MAX_REMEMBERED};
use crate::oci::Digest;
use crate::source::{BlobSink, BodyKind};

/// Times one fetch goes back to the registry after a remembered location failed.
const MAX_STALE_LOCATIONS: u32 = 3;

impl Client {
    fn remembered(&self, key: &BlobKey) -> Option<Url> {
        lock(&self.redirects).get(key).cloned()
    }

    fn remember(&self, key: &BlobKey, url: Url) {
        let mut m = lock(&self.redirects);
        if m.len() >= MAX_REMEMBERED {
            m.clear();
        }
        m.insert(key.clone(), url);
    }

    fn forget_location(&self, key: &BlobKey) {
        lock(&self.redirects).remove(key);
    }

    fn ignores_range(&self, key: &BlobKey) -> bool {
        lock(&self.no_range).contains(key)
    }

    fn mark_ignores_range(&self, key: &BlobKey) {
        let mut s = lock(&self.no_range);
        if s.len() >= MAX_REMEMBERED {
            s.clear();
        }
        s.insert(key.clone());
    }

    /// Where to ask for a blob now: its remembered location (after a redirect to another
    /// origin), unless that failed `stale` times in this fetch already, else the registry.
    fn location(&self, key: &BlobKey, registry: &Url, stale: u32) -> Url {
        match self.remembered(key) {
            Some(u) if stale < MAX_STALE_LOCATIONS => u,
            _ => registry.clone(),
        }
    }

    /// Stream `range` (or the whole blob) into `sink`.
    pub fn fetch_blob(
        &self,
        repo: &str,
        digest: &Digest,
        size: u64,
        range: Option<Range<u64>>,
        sink: &mut dyn BlobSink,
    ) -> Result<(), SourceError> {
        let what = format!("blob {digest} of {}/{repo}", self.cfg.registry);
        let registry_url = self.url(&format!("v2/{repo}/blobs/{digest}"));
        let key: BlobKey = (repo.to_string(), digest.clone());
        // A server that sent the whole blob for a range before will do so again: ask for
        // the whole blob outright (the sink stores it whole).
        let mut progress =
            Progress::new(size, range, self.ignores_range(&key)).map_err(|detail| {
                SourceError::Protocol {
                    what: what.clone(),
                    detail,
                }
            })?;
        let scope = pull_scope(repo);
        let mut budget = Budget::new(self.cfg.retries);
        self.rt.block_on(async {
            let mut stale = 0u32;
            loop {
                let asked = progress.next_range();
                let start = self.location(&key, &registry_url, stale);
                let via_remembered = start != registry_url;
                // A remembered location is tried once: if it fails, the registry is asked.
                let mut once = Budget::new(0);
                let tries = if via_remembered {
                    &mut once
                } else {
                    &mut budget
                };
                let sent = self
                    .send(
                        Method::GET,
                        start.clone(),
                        &scope,
                        range_header(asked.as_ref()),
                        tries,
                    )
                    .await;
                if via_remembered {
                    let failed = match &sent {
                        Ok(resp) => location_failed(resp.status(), &what),
                        Err(e) => Some(e.clone()),
                    };
                    if let Some(e) = failed {
                        log::debug!(
                            "{what}: {} failed ({e}); asking the registry again",
                            describe_origin(&start)
                        );
                        self.forget_location(&key);
                        stale += 1;
                        // An expired location is no failure of the fetch; anything else is.
                        if e.is_transient() {
                            match budget.retry(&what, &e, None) {
                                Some(wait) => tokio::time::sleep(wait).await,
                                None => return Err(e),
                            }
                        }
                        continue;
                    }
                }
                let resp = sent?;
                let status = resp.status();
                if status.is_success()
                    && !self.same_origin(resp.url())
                    && self.remembered(&key).as_ref() != Some(resp.url())
                {
                    log::debug!(
                        "{what}: served from {}; remembered for later reads",
                        describe_origin(resp.url())
                    );
                    self.remember(&key, resp.url().clone());
                }
                let content_range = resp
                    .headers()
                    .get(CONTENT_RANGE)
                    .and_then(|v| v.to_str().ok());
                let (skip, ignored) = match progress.accept(status, content_range, asked.as_ref()) {
                    Verdict::Take { skip } => (skip, false),
                    Verdict::IgnoredRange { skip } => (skip, true),
                    Verdict::Refuse(detail) => return Err(SourceError::Protocol { what, detail }),
                    Verdict::Status => return Err(self.status_error(status, what)),
                };
                let cut = deliver(resp, sink, &mut progress, skip, &what).await?;
                // Remembered only once the sink took the whole body: a sink that refuses it
                // (a mirror still filling, see `fleet::fill`) asks for ranges later.
                if ignored {
                    log::debug!(
                        "{what}: the server ignored Range and sent the whole blob; \
                         not asking it for ranges of this blob again"
                    );
                    self.mark_ignores_range(&key);
                }
                if progress.is_complete() {
                    return Ok(());
                }
                let e = SourceError::Unreachable {
                    target: what.clone(),
                    detail: cut.unwrap_or_else(|| progress.shortfall()),
                };
                match budget.retry(&what, &e, None) {
                    Some(wait) => tokio::time::sleep(wait).await,
                    None => return Err(e),
                }
            }
        })
    }
}

/// Whether a remembered location's answer for `what` means it is no longer good: an
/// expired signature (401, 403, 404, 410) or a transient failure. The error to note, if so.
fn location_failed(status: StatusCode, what: &str) -> Option<SourceError> {
    let expired = matches!(
        status,
        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN | StatusCode::NOT_FOUND | StatusCode::GONE
    );
    let e = SourceError::Status {
        url: format!("{what} at its remembered location"),
        status: status.as_u16(),
    };
    (expired || e.is_transient()).then_some(e)
}

/// The `Range` header asking for `bytes` (none: the whole blob).
fn range_header(bytes: Option<&Range<u64>>) -> HeaderMap {
    let mut h = HeaderMap::new();
    if let Some(r) = bytes {
        let v = format!("bytes={}-{}", r.start, r.end - 1);
        // Digits, a dash and "bytes=": always a valid header value.
        if let Ok(v) = HeaderValue::from_str(&v) {
            h.insert(RANGE, v);
        }
    }
    h
}

/// What one fetch has given its sink, and what it asks for next.
#[derive(Debug)]
struct Progress {
    size: u64,
    /// The bytes the caller wants (the whole blob when it asked for no range).
    want: Range<u64>,
    /// Whether to ask for a range at all (the caller asked for one, and the server is not
    /// known to ignore `Range` for this blob).
    ranged: bool,
    /// What the sink was told the body holds: set by the first answer.
    kind: Option<BodyKind>,
    /// Bytes given to the sink.
    delivered: u64,
}

/// What to do with an answer.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    /// Stream the body, dropping its first `skip` bytes (delivered before a cut).
    Take { skip: u64 },
    /// The server ignored `Range` and sent the whole blob: stream it, dropping `skip`.
    IgnoredRange { skip: u64 },
    /// A protocol violation.
    Refuse(String),
    /// An error status, for the client to explain.
    Status,
}

impl Progress {
    /// A fetch of `range` (or the whole blob) of a blob of `size` bytes; `ignores_range`
    /// when the server is known to send whole blobs for ranges. An error for a range
    /// outside the blob.
    fn new(size: u64, range: Option<Range<u64>>, ignores_range: bool) -> Result<Self, String> {
        let want = range.clone().unwrap_or(0..size);
        if want.end > size || want.start > want.end {
            return Err(format!("range {want:?} is outside the blob's {size} bytes"));
        }
        Ok(Self {
            size,
            want,
            ranged: range.is_some() && !ignores_range,
            kind: None,
            delivered: 0,
        })
    }

    /// Where the sink's bytes start in the blob, and how many it is to get in all.
    fn span(&self) -> (u64, u64) {
        match self.kind {
            Some(BodyKind::Whole) => (0, self.size),
            _ => (self.want.start, self.want.end - self.want.start),
        }
    }

    /// The bytes to ask for next (`None`: the whole blob): after a cut, what is left of
    /// what this fetch delivers.
    fn next_range(&self) -> Option<Range<u64>> {
        let (base, total) = self.span();
        let from = base + self.delivered;
        let to = base + total;
        ((self.ranged || self.delivered > 0) && to > from).then_some(from..to)
    }

    /// Judge an answer to a request for `asked`: a 206 must carry exactly the bytes asked
    /// for; a 200 is the whole blob (asked for, or because the server ignored `Range`), of
    /// which the bytes already delivered are skipped.
    fn accept(
        &mut self,
        status: StatusCode,
        content_range: Option<&str>,
        asked: Option<&Range<u64>>,
    ) -> Verdict {
        match (status, asked) {
            (StatusCode::PARTIAL_CONTENT, Some(asked)) => {
                let cr = content_range.and_then(headers::parse_content_range);
                let exact = cr.is_some_and(|cr| {
                    cr.start == asked.start
                        && cr.end_inclusive + 1 == asked.end
                        && cr.total.is_none_or(|t| t == self.size)
                });
                if !exact {
                    return Verdict::Refuse(format!(
                        "Content-Range {content_range:?} does not answer bytes={}-{}",
                        asked.start,
                        asked.end - 1
                    ));
                }
                self.kind.get_or_insert(BodyKind::Range);
                Verdict::Take { skip: 0 }
            }
            (StatusCode::OK, _) => match self.kind {
                None if self.ranged => {
                    self.kind = Some(BodyKind::Whole);
                    Verdict::IgnoredRange { skip: 0 }
                }
                None => {
                    self.kind = Some(BodyKind::Whole);
                    Verdict::Take { skip: 0 }
                }
                Some(BodyKind::Whole) => Verdict::Take {
                    skip: self.delivered,
                },
                Some(BodyKind::Range) => Verdict::Take {
                    skip: self.want.start + self.delivered,
                },
            },
            (StatusCode::RANGE_NOT_SATISFIABLE, _) => Verdict::Refuse(
                "range not satisfiable: the blob is shorter than its descriptor".into(),
            ),
            _ => Verdict::Status,
        }
    }

    fn is_complete(&self) -> bool {
        self.delivered == self.span().1
    }

    /// How a body that ended early fell short.
    fn shortfall(&self) -> String {
        format!(
            "body ended after {} of {} bytes",
            self.delivered,
            self.span().1
        )
    }
}

/// Stream an accepted answer's body into `sink`, dropping its first `skip` bytes. Returns
/// why the body stopped early (a connection error), if it did; a body longer than
/// expected is an error, and so is a sink that refuses bytes ([`SourceError::Sink`]).
async fn deliver(
    mut resp: Response,
    sink: &mut dyn BlobSink,
    progress: &mut Progress,
    mut skip: u64,
    what: &str,
) -> Result<Option<String>, SourceError> {
    let (kind, total) = match progress.kind {
        Some(k) => (k, progress.span().1),
        None => return Ok(Some("no body".into())),
    };
    if progress.delivered == 0 {
        sink.begin(kind).map_err(|e| SourceError::sink(what, e))?;
    }
    loop {
        let mut bytes = match resp.chunk().await {
            Ok(Some(b)) => b,
            Ok(None) => return Ok(None),
            Err(e) => return Ok(Some(error_chain(&e))),
        };
        if skip > 0 {
            let n = skip.min(bytes.len() as u64) as usize;
            skip -= n as u64;
            let _ = bytes.split_to(n);
            if bytes.is_empty() {
                continue;
            }
        }
        if progress.delivered + bytes.len() as u64 > total {
            return Err(SourceError::Protocol {
                what: what.to_string(),
                detail: format!("body is longer than the {total} bytes expected"),
            });
        }
        progress.delivered += bytes.len() as u64;
        sink.data(&bytes).map_err(|e| SourceError::sink(what, e))?;
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    use super::super::test_server::{Reply, Request, TestServer};
    use super::super::ClientConfig;
    use super::*;
    use crate::source::failing::RefusingSink;
    use crate::source::VecSink;

    fn blob(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 31 % 251) as u8).collect()
    }

    fn client(host: &str, retries: u32) -> Client {
        Client::new(ClientConfig {
            retries,
            ..ClientConfig::new(host)
        })
        .unwrap()
    }

    fn fetch(c: &Client, data: &[u8], range: Option<Range<u64>>) -> Result<VecSink, SourceError> {
        let mut sink = VecSink::with_limit(data.len() as u64);
        let d = Digest::of(data);
        c.fetch_blob("r", &d, data.len() as u64, range, &mut sink)
            .map(|()| sink)
    }

    // --- Progress: no I/O -----------------------------------------------------------

    /// A 206 with Content-Range `cr` to a request for `asked`.
    fn partial(p: &mut Progress, cr: &str, asked: Range<u64>) -> Verdict {
        p.accept(StatusCode::PARTIAL_CONTENT, Some(cr), Some(&asked))
    }

    #[test]
    fn a_range_resumes_where_a_cut_body_stopped() {
        let mut p = Progress::new(100, Some(10..50), false).unwrap();
        assert_eq!(p.next_range(), Some(10..50));
        assert_eq!(
            partial(&mut p, "bytes 10-49/100", 10..50),
            Verdict::Take { skip: 0 }
        );
        p.delivered = 15; // then the body was cut
        assert!(!p.is_complete());
        assert_eq!(p.next_range(), Some(25..50));
        assert_eq!(
            partial(&mut p, "bytes 25-49/*", 25..50),
            Verdict::Take { skip: 0 }
        );
        // A resumed request answered with the whole blob: skip to where the range resumes.
        let v = p.accept(StatusCode::OK, None, Some(&(25..50)));
        assert_eq!(v, Verdict::Take { skip: 25 });
        p.delivered = 40;
        assert!(p.is_complete());
    }

    #[test]
    fn a_whole_blob_resumes_with_a_range_after_a_cut() {
        let mut p = Progress::new(100, None, false).unwrap();
        assert_eq!(p.next_range(), None, "the whole blob, no Range");
        assert_eq!(
            p.accept(StatusCode::OK, None, None),
            Verdict::Take { skip: 0 }
        );
        p.delivered = 40;
        assert_eq!(p.next_range(), Some(40..100));
        // A server that ignores the resuming Range: skip what was delivered.
        assert_eq!(
            p.accept(StatusCode::OK, None, Some(&(40..100))),
            Verdict::Take { skip: 40 }
        );
    }

    #[test]
    fn a_server_that_ignores_range_makes_the_fetch_whole() {
        let mut p = Progress::new(100, Some(10..50), false).unwrap();
        assert_eq!(
            p.accept(StatusCode::OK, None, Some(&(10..50))),
            Verdict::IgnoredRange { skip: 0 }
        );
        assert_eq!(p.kind, Some(BodyKind::Whole));
        p.delivered = 30;
        assert_eq!(p.next_range(), Some(30..100), "the rest of the whole blob");
        // Known to ignore Range: not asked for one.
        let p = Progress::new(100, Some(10..50), true).unwrap();
        assert_eq!(p.next_range(), None);
    }

    #[test]
    fn answers_for_other_bytes_are_refused() {
        let asked = Some(&(10..50));
        for cr in [
            Some("bytes 11-49/100"),
            Some("bytes 10-50/100"),
            Some("bytes 10-49/101"),
            Some("garbage"),
            None,
        ] {
            let mut p = Progress::new(100, Some(10..50), false).unwrap();
            let v = p.accept(StatusCode::PARTIAL_CONTENT, cr, asked);
            assert!(matches!(v, Verdict::Refuse(_)), "{cr:?}: {v:?}");
        }
        let mut p = Progress::new(100, Some(10..50), false).unwrap();
        let v = p.accept(StatusCode::RANGE_NOT_SATISFIABLE, None, asked);
        assert!(matches!(v, Verdict::Refuse(_)));
        assert_eq!(
            p.accept(StatusCode::NOT_FOUND, None, asked),
            Verdict::Status
        );
        // A 206 to a request without Range is not an answer either.
        let mut p = Progress::new(100, None, false).unwrap();
        let v = p.accept(StatusCode::PARTIAL_CONTENT, Some("bytes 0-99/100"), None);
        assert_eq!(v, Verdict::Status);
        assert!(Progress::new(100, Some(90..101), false).is_err());
        let (start, end) = (50, 40);
        assert!(Progress::new(100, Some(start..end), false).is_err());
    }

    #[test]
    fn range_headers_name_inclusive_ends() {
        let h = range_header(Some(&(10..50)));
        assert_eq!(h.get(RANGE).unwrap(), "bytes=10-49");
        assert!(range_header(None).is_empty());
    }

    // --- fetch_blob against the in-test HTTP server ---------------------------------

    #[test]
    fn a_cut_body_is_resumed_from_the_bytes_delivered() {
        let data = Arc::new(blob(300_000));
        let d = data.clone();
        let server = TestServer::start(move |req, n| match n {
            0 => Reply::blob(req, &d).cut(100_000),
            _ => Reply::blob(req, &d),
        });
        let c = client(server.host(), 2);
        let sink = fetch(&c, &data, None).unwrap();
        assert!(sink.bytes == *data, "every byte once, in order");
        let reqs = server.requests();
        assert_eq!(reqs.len(), 2);
        assert_eq!(reqs[0].range(), None);
        assert_eq!(reqs[1].range(), Some(100_000..300_000));
        // A range is resumed within the range.
        let d = data.clone();
        let server = TestServer::start(move |req, n| match n {
            0 => Reply::blob(req, &d).cut(1000),
            _ => Reply::blob(req, &d),
        });
        let c = client(server.host(), 2);
        let sink = fetch(&c, &data, Some(5000..9000)).unwrap();
        assert_eq!(sink.bytes, data[5000..9000]);
        assert_eq!(server.requests()[1].range(), Some(6000..9000));
    }

    /// Every kind of failure spends from one budget: 503s and bodies cut short, taking
    /// turns, make exactly `retries` + 1 requests, for a blob and for a manifest. (Before,
    /// each resumption after a cut had a budget of its own for 503s: 8 requests here.)
    #[test]
    fn retries_are_one_budget_whatever_fails() {
        let data = Arc::new(blob(50_000));
        let d = data.clone();
        let flaky = move |req: &Request, n: usize| match n % 2 {
            0 => Reply::status(503).header("retry-after", "0"),
            _ => Reply::blob(req, &d).cut(10),
        };
        for retries in [0, 1, 3] {
            let server = TestServer::start(flaky.clone());
            let c = client(server.host(), retries);
            let e = fetch(&c, &data, Some(0..40_000)).unwrap_err();
            assert!(e.is_transient(), "{e}");
            let asked = server.requests().len();
            assert_eq!(
                asked,
                retries as usize + 1,
                "blob, --retries {retries}: {e}"
            );

            let server = TestServer::start(flaky.clone());
            let c = client(server.host(), retries);
            let e = c.manifest("r", "t").unwrap_err();
            let asked = server.requests().len();
            assert_eq!(
                asked,
                retries as usize + 1,
                "manifest, --retries {retries}: {e}"
            );
        }
    }

    #[test]
    fn a_server_that_ignores_range_is_not_sent_range_again() {
        let data = Arc::new(blob(40_000));
        let d = data.clone();
        let server = TestServer::start(move |_, _| Reply::ok(&d));
        let c = client(server.host(), 1);
        let sink = fetch(&c, &data, Some(100..200)).unwrap();
        assert_eq!(sink.kind, Some(BodyKind::Whole));
        assert!(sink.bytes == *data, "the sink gets the whole blob");
        let sink = fetch(&c, &data, Some(300..400)).unwrap();
        assert_eq!(sink.kind, Some(BodyKind::Whole));
        let reqs = server.requests();
        assert_eq!(reqs.len(), 2);
        assert_eq!(reqs[0].range(), Some(100..200));
        assert_eq!(reqs[1].range(), None, "not asked for a range again");
    }

    /// A redirect to another origin is followed and remembered; the next fetch goes
    /// there directly; when it answers 403 (an expired signature) the registry is asked
    /// again, without spending a retry.
    #[test]
    fn a_redirect_is_remembered_until_the_location_expires() {
        let data = Arc::new(blob(20_000));
        let (d, expired) = (data.clone(), Arc::new(AtomicBool::new(false)));
        let e = expired.clone();
        let cdn = TestServer::start(move |req, _| match e.swap(false, Ordering::Relaxed) {
            true => Reply::status(403),
            false => Reply::blob(req, &d),
        });
        let location = format!("http://{}/signed?sig=1", cdn.host());
        let registry =
            TestServer::start(move |_, _| Reply::status(307).header("location", &location));
        let c = client(registry.host(), 0);
        // Read bytes `r`; the requests the registry and the CDN have seen since the start.
        let read = |r: Range<u64>| {
            let got = fetch(&c, &data, Some(r.clone())).unwrap().bytes;
            assert_eq!(got, data[r.start as usize..r.end as usize]);
            (registry.requests().len(), cdn.requests().len())
        };
        assert_eq!(read(0..100), (1, 1));
        assert_eq!(
            read(100..200),
            (1, 2),
            "the remembered location is asked directly"
        );
        assert!(cdn.requests().iter().all(|r| r.target == "/signed?sig=1"));
        expired.store(true, Ordering::Relaxed);
        assert_eq!(
            read(200..300),
            (2, 4),
            "after a 403 the registry is asked again (with --retries 0)"
        );
    }

    /// A sink that refuses bytes (a cache that cannot write) is a `Sink` error, and is not
    /// retried: asking the registry again would not help.
    #[test]
    fn a_sink_that_refuses_bytes_is_a_sink_error() {
        let data = Arc::new(blob(1000));
        let d = data.clone();
        let server = TestServer::start(move |req, _| Reply::blob(req, &d));
        let c = client(server.host(), 3);
        let e = c
            .fetch_blob("r", &Digest::of(&data), 1000, None, &mut RefusingSink)
            .unwrap_err();
        assert!(matches!(e, SourceError::Sink { .. }), "{e:?}");
        assert_eq!(server.requests().len(), 1);
    }

    #[test]
    fn a_content_range_for_other_bytes_fails_the_fetch() {
        let data = Arc::new(blob(1000));
        let d = data.clone();
        let server = TestServer::start(move |_, _| {
            Reply::ok(&d[11..51]).header("content-range", "bytes 11-50/1000")
        });
        // The status is 200 with a body of 40 bytes: it is taken as the whole blob, and
        // its length gives it away.
        let c = client(server.host(), 0);
        assert!(fetch(&c, &data, Some(10..50)).is_err());
        let d = data.clone();
        let server = TestServer::start(move |_, _| {
            let mut r = Reply::ok(&d[11..51]).header("content-range", "bytes 11-50/1000");
            r.status = 206;
            r
        });
        let c = client(server.host(), 3);
        let e = fetch(&c, &data, Some(10..50)).unwrap_err();
        assert!(matches!(e, SourceError::Protocol { .. }), "{e:?}");
        assert_eq!(server.requests().len(), 1, "not retried");
    }
}
