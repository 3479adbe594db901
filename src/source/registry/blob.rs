//! Streaming a blob, or a range of it, into a [`BlobSink`]: a body cut short resumes from
//! the bytes already delivered; a server that ignores `Range` is handled (and is not sent
//! `Range` for that blob again); a redirect to another host (a CDN or object store) is
//! remembered per blob and used directly next time, until it answers 401/403/404/410
//! (an expired signature), when the registry is asked again.

use std::ops::Range;

use reqwest::header::{HeaderMap, HeaderValue, RANGE};
use reqwest::StatusCode;
use url::Url;

use super::{backoff, describe_origin, error_chain, headers, lock, pull_scope, BlobKey, Client};
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
        let want = range.clone().unwrap_or(0..size);
        if want.end > size || want.start > want.end {
            return Err(SourceError::Protocol {
                what,
                detail: format!("range {want:?} is outside the blob's {size} bytes"),
            });
        }
        let key: BlobKey = (repo.to_string(), digest.clone());
        // A server that sent the whole blob for a range before will do so again: ask for
        // the whole blob outright (the sink stores it whole).
        let range = range.filter(|_| !self.ignores_range(&key));
        let scope = pull_scope(repo);
        self.rt.block_on(async {
            let mut kind: Option<BodyKind> = None;
            let mut delivered = 0u64; // bytes of `want` (or of the whole blob) given to sink
            let mut cuts = 0u32;
            let mut stale = 0u32;
            let mut ignored_range = false;
            loop {
                // After a cut, ask for what is left of what this fetch delivers.
                let (base, total) = match kind {
                    Some(BodyKind::Whole) => (0, size),
                    _ => (want.start, want.end - want.start),
                };
                let mut h = HeaderMap::new();
                let ask_range = range.is_some() || delivered > 0;
                let from = base + delivered;
                let to = base + total;
                if ask_range && to > from {
                    let v = format!("bytes={}-{}", from, to - 1);
                    h.insert(
                        RANGE,
                        HeaderValue::from_str(&v).map_err(|e| SourceError::Protocol {
                            what: what.clone(),
                            detail: e.to_string(),
                        })?,
                    );
                }
                let start = match self.remembered(&key) {
                    Some(u) if stale < MAX_STALE_LOCATIONS => u,
                    _ => registry_url.clone(),
                };
                let via_remembered = start != registry_url;
                let mut resp = match self.get(start.clone(), &scope, h).await {
                    Ok(r) => r,
                    Err(e) if via_remembered => {
                        log::debug!(
                            "{what}: {} failed ({e}); asking the registry again",
                            describe_origin(&start)
                        );
                        self.forget_location(&key);
                        stale += 1;
                        continue;
                    }
                    Err(e) => return Err(e),
                };
                let status = resp.status();
                if via_remembered
                    && matches!(
                        status,
                        StatusCode::UNAUTHORIZED
                            | StatusCode::FORBIDDEN
                            | StatusCode::NOT_FOUND
                            | StatusCode::GONE
                    )
                {
                    log::debug!(
                        "{what}: {} answered HTTP {status} (expired?); asking the registry again",
                        describe_origin(&start)
                    );
                    self.forget_location(&key);
                    stale += 1;
                    continue;
                }
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
                let mut skip = 0u64;
                match status {
                    StatusCode::PARTIAL_CONTENT if ask_range => {
                        let cr = resp
                            .headers()
                            .get(reqwest::header::CONTENT_RANGE)
                            .and_then(|v| v.to_str().ok())
                            .and_then(headers::parse_content_range);
                        match cr {
                            Some(cr)
                                if cr.start == from
                                    && cr.end_inclusive == to - 1
                                    && cr.total.is_none_or(|t| t == size) => {}
                            _ => {
                                return Err(SourceError::Protocol {
                                    what,
                                    detail: format!(
                                        "Content-Range {:?} does not answer bytes={from}-{}",
                                        resp.headers().get(reqwest::header::CONTENT_RANGE),
                                        to - 1
                                    ),
                                })
                            }
                        }
                        if kind.is_none() {
                            kind = Some(BodyKind::Range);
                        }
                    }
                    StatusCode::OK => {
                        // The whole blob. Either we asked for it, or the server ignored Range.
                        match kind {
                            None if range.is_some() => {
                                ignored_range = true;
                                kind = Some(BodyKind::Whole);
                            }
                            None => kind = Some(BodyKind::Whole),
                            Some(BodyKind::Whole) => skip = delivered,
                            Some(BodyKind::Range) => skip = want.start + delivered,
                        }
                    }
                    StatusCode::RANGE_NOT_SATISFIABLE => {
                        return Err(SourceError::Protocol {
                            what,
                            detail:
                                "range not satisfiable: the blob is shorter than its descriptor"
                                    .into(),
                        })
                    }
                    _ => return Err(self.status_error(status, what)),
                }
                let Some(k) = kind else { continue };
                let total = match k {
                    BodyKind::Whole => size,
                    BodyKind::Range => want.end - want.start,
                };
                if delivered == 0 {
                    sink.begin(k).map_err(|e| SourceError::Io {
                        path: what.clone(),
                        source: e,
                    })?;
                }
                // Remembered only once the sink took the whole body: a sink that refuses
                // it (a mirror still filling, see `fleet::fill`) asks for ranges later.
                if std::mem::take(&mut ignored_range) {
                    log::debug!(
                        "{what}: the server ignored Range and sent the whole blob; \
                         not asking it for ranges of this blob again"
                    );
                    self.mark_ignores_range(&key);
                }
                let mut cut = None;
                loop {
                    match resp.chunk().await {
                        Ok(Some(mut bytes)) => {
                            if skip > 0 {
                                let n = skip.min(bytes.len() as u64) as usize;
                                skip -= n as u64;
                                let _ = bytes.split_to(n);
                                if bytes.is_empty() {
                                    continue;
                                }
                            }
                            if delivered + bytes.len() as u64 > total {
                                return Err(SourceError::Protocol {
                                    what,
                                    detail: format!(
                                        "body is longer than the {total} bytes expected"
                                    ),
                                });
                            }
                            delivered += bytes.len() as u64;
                            sink.data(&bytes).map_err(|e| SourceError::Io {
                                path: what.clone(),
                                source: e,
                            })?;
                        }
                        Ok(None) => break,
                        Err(e) => {
                            cut = Some(error_chain(&e));
                            break;
                        }
                    }
                }
                if delivered == total {
                    return Ok(());
                }
                let detail =
                    cut.unwrap_or_else(|| format!("body ended after {delivered} of {total} bytes"));
                if cuts >= self.cfg.retries {
                    return Err(SourceError::Unreachable {
                        target: what,
                        detail,
                    });
                }
                cuts += 1;
                log::warn!("{what}: {detail}; resuming at byte {delivered} (attempt {cuts})");
                tokio::time::sleep(backoff(cuts - 1)).await;
            }
        })
    }
}
