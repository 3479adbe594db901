//! The HTTP side of talking to a registry (distribution spec v2): authentication
//! challenges and tokens, retries with backoff, range requests that resume, pagination.
//!
//! The client runs its own small tokio runtime and offers blocking calls, so the FUSE
//! worker threads above it can call straight in; concurrent calls share one connection
//! pool. Nothing here logs a header value, and credentials are redacted in `Debug`.

pub mod credentials;
pub mod headers;

use std::collections::HashMap;
use std::fmt;
use std::ops::Range;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use reqwest::header::{HeaderMap, HeaderValue, ACCEPT, AUTHORIZATION, RANGE};
use reqwest::{Response, StatusCode};
use serde::Deserialize;
use url::Url;

use crate::error::SourceError;
use crate::oci::{Digest, MAX_METADATA_SIZE};
use crate::source::{BlobSink, BodyKind};
use headers::Challenge;

/// A username and password (or identity token). `Debug` never shows the secret.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Credentials({}, <redacted>)", self.username)
    }
}

/// How to reach one registry.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// The registry as the user named it, `host[:port]`.
    pub registry: String,
    /// Use `http://` instead of `https://`.
    pub plain_http: bool,
    /// Skip TLS certificate verification.
    pub insecure: bool,
    /// An extra PEM CA bundle to trust.
    pub ca_file: Option<PathBuf>,
    pub connect_timeout: Duration,
    /// How long a response body may stall before the request fails.
    pub read_timeout: Duration,
    /// Attempts after the first for transient failures.
    pub retries: u32,
    pub credentials: Option<Credentials>,
}

impl ClientConfig {
    /// Defaults for `registry`: plain HTTP for loopback hosts, as Docker does.
    pub fn new(registry: &str) -> Self {
        Self {
            registry: registry.to_string(),
            plain_http: is_loopback(registry),
            insecure: false,
            ca_file: None,
            connect_timeout: Duration::from_secs(10),
            read_timeout: Duration::from_secs(30),
            retries: 4,
            credentials: None,
        }
    }
}

/// Whether `host[:port]` names the local machine.
pub fn is_loopback(registry: &str) -> bool {
    let host = match registry.strip_prefix('[') {
        Some(rest) => rest.split(']').next().unwrap_or(rest),
        None => registry.rsplit_once(':').map_or(registry, |(h, _)| h),
    };
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .map(|ip| ip.is_loopback())
            .unwrap_or(false)
}

/// The API host for a registry name: Docker Hub's name maps to its API host.
pub fn api_host(registry: &str) -> &str {
    match registry {
        "docker.io" | "index.docker.io" => "registry-1.docker.io",
        other => other,
    }
}

/// Manifest bytes, their `Content-Type`, and the `Docker-Content-Digest` reported.
pub type ManifestAnswer = (Vec<u8>, Option<String>, Option<String>);

struct Token {
    value: String,
    expires: Instant,
}

/// A blocking registry client.
pub struct Client {
    cfg: ClientConfig,
    base: Url,
    http: reqwest::Client,
    rt: tokio::runtime::Runtime,
    tokens: Mutex<HashMap<String, Token>>,
    use_basic: AtomicBool,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("base", &self.base.as_str())
            .finish()
    }
}

#[derive(Deserialize)]
struct TokenAnswer {
    #[serde(default)]
    token: Option<String>,
    #[serde(default)]
    access_token: Option<String>,
    #[serde(default)]
    expires_in: Option<u64>,
}

#[derive(Deserialize)]
struct TagList {
    #[serde(default)]
    tags: Option<Vec<String>>,
}

#[derive(Deserialize)]
struct Catalog {
    #[serde(default)]
    repositories: Option<Vec<String>>,
}

/// Upper bound on pages followed in one listing.
const MAX_PAGES: usize = 10_000;
const PAGE_SIZE: usize = 1000;

impl Client {
    pub fn new(cfg: ClientConfig) -> Result<Self, SourceError> {
        let scheme = if cfg.plain_http { "http" } else { "https" };
        let base =
            Url::parse(&format!("{scheme}://{}/", api_host(&cfg.registry))).map_err(|e| {
                SourceError::Protocol {
                    what: format!("registry {}", cfg.registry),
                    detail: format!("not a valid host: {e}"),
                }
            })?;
        let mut builder = reqwest::Client::builder()
            .connect_timeout(cfg.connect_timeout)
            .read_timeout(cfg.read_timeout)
            .pool_idle_timeout(Duration::from_secs(90))
            .user_agent(concat!("orasfs/", env!("CARGO_PKG_VERSION")))
            .danger_accept_invalid_certs(cfg.insecure);
        if let Some(ca) = &cfg.ca_file {
            let pem = std::fs::read(ca).map_err(|e| SourceError::Io {
                path: ca.display().to_string(),
                source: e,
            })?;
            let certs =
                reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| SourceError::Protocol {
                    what: format!("CA file {}", ca.display()),
                    detail: e.to_string(),
                })?;
            for c in certs {
                builder = builder.add_root_certificate(c);
            }
        }
        let http = builder.build().map_err(|e| SourceError::Protocol {
            what: "HTTP client".into(),
            detail: e.to_string(),
        })?;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("orasfs-http")
            .enable_all()
            .build()
            .map_err(|e| SourceError::Io {
                path: "tokio runtime".into(),
                source: e,
            })?;
        Ok(Self {
            cfg,
            base,
            http,
            rt,
            tokens: Mutex::new(HashMap::new()),
            use_basic: AtomicBool::new(false),
        })
    }

    /// The registry as the user named it.
    pub fn registry(&self) -> &str {
        &self.cfg.registry
    }

    fn url(&self, path: &str) -> Url {
        // `path` is built from validated names only; a failed join is a bug, reported as such.
        self.base.join(path).unwrap_or_else(|_| self.base.clone())
    }

    fn unauthorized(&self, detail: &str) -> SourceError {
        SourceError::Unauthorized {
            registry: self.cfg.registry.clone(),
            hint: format!(
                "{detail}; give credentials with --username and --password-stdin, or --auth-file FILE (or log in with `oras login {}`)",
                self.cfg.registry
            ),
        }
    }

    fn auth_header(&self, scope: &str) -> Option<HeaderValue> {
        let value = if let Some(t) = self
            .tokens
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(scope)
            .filter(|t| t.expires > Instant::now())
        {
            format!("Bearer {}", t.value)
        } else if self.use_basic.load(Ordering::Relaxed) {
            let c = self.cfg.credentials.as_ref()?;
            use base64::Engine;
            let raw = format!("{}:{}", c.username, c.password);
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(raw)
            )
        } else {
            return None;
        };
        let mut v = HeaderValue::from_str(&value).ok()?;
        v.set_sensitive(true);
        Some(v)
    }

    /// Answer a 401: get a token for `scope`, or switch to Basic credentials.
    async fn authenticate(&self, resp: &Response, scope: &str) -> Result<(), SourceError> {
        let challenge = resp
            .headers()
            .get_all(reqwest::header::WWW_AUTHENTICATE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .filter_map(headers::parse_challenge)
            .next()
            .ok_or_else(|| {
                self.unauthorized("the registry sent no usable WWW-Authenticate challenge")
            })?;
        match challenge {
            Challenge::Basic { .. } => {
                if self.cfg.credentials.is_none() {
                    return Err(self.unauthorized("no credentials were given"));
                }
                self.use_basic.store(true, Ordering::Relaxed);
                Ok(())
            }
            Challenge::Bearer { realm, service, .. } => {
                let mut url = Url::parse(&realm)
                    .map_err(|_| self.unauthorized("the token realm is not a URL"))?;
                if url.scheme() != "https" && url.scheme() != "http" {
                    return Err(self.unauthorized("the token realm is not http(s)"));
                }
                {
                    let mut q = url.query_pairs_mut();
                    if let Some(s) = &service {
                        q.append_pair("service", s);
                    }
                    if !scope.is_empty() {
                        q.append_pair("scope", scope);
                    }
                }
                let mut req = self.http.get(url);
                if let Some(c) = &self.cfg.credentials {
                    req = req.basic_auth(&c.username, Some(&c.password));
                }
                let answer = req.send().await.map_err(|e| SourceError::Unreachable {
                    target: "token service".into(),
                    detail: e.without_url().to_string(),
                })?;
                match answer.status() {
                    s if s.is_success() => {}
                    StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
                        return Err(self.unauthorized(if self.cfg.credentials.is_some() {
                            "the token service refused the credentials"
                        } else {
                            "anonymous access was refused"
                        }))
                    }
                    s => {
                        return Err(SourceError::Status {
                            url: "token service".into(),
                            status: s.as_u16(),
                        })
                    }
                }
                let body = read_capped(answer, 1 << 20, "token answer").await?;
                let t: TokenAnswer =
                    serde_json::from_slice(&body).map_err(|e| SourceError::Protocol {
                        what: "token answer".into(),
                        detail: e.to_string(),
                    })?;
                let value = t
                    .token
                    .filter(|t| !t.is_empty())
                    .or(t.access_token)
                    .ok_or_else(|| self.unauthorized("the token answer holds no token"))?;
                // Renew a little early, and assume the spec's 60 s when no lifetime is given.
                let life = Duration::from_secs(t.expires_in.unwrap_or(60).max(1));
                let expires = Instant::now() + life.mul_f64(0.9);
                log::debug!("got a bearer token for scope {scope:?}, valid {life:?}");
                self.tokens
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(scope.to_string(), Token { value, expires });
                Ok(())
            }
        }
    }

    /// Send a GET with auth, retries and backoff. Returns the final response, whatever its
    /// status, except 401 (after one renewal) and transient failures (after the retries).
    async fn get(&self, url: Url, scope: &str, extra: HeaderMap) -> Result<Response, SourceError> {
        let mut attempt = 0u32;
        let mut renewed = false;
        loop {
            let mut req = self.http.get(url.clone()).headers(extra.clone());
            if let Some(auth) = self.auth_header(scope) {
                req = req.header(AUTHORIZATION, auth);
            }
            let delay = match req.send().await {
                Err(e) => {
                    let err = SourceError::Unreachable {
                        target: self.cfg.registry.clone(),
                        detail: error_chain(&e),
                    };
                    if attempt >= self.cfg.retries {
                        return Err(err);
                    }
                    log::warn!(
                        "{} {}: {err}; retrying (attempt {})",
                        "GET",
                        url.path(),
                        attempt + 1
                    );
                    None
                }
                Ok(resp) => {
                    let status = resp.status();
                    if status == StatusCode::UNAUTHORIZED {
                        if renewed {
                            return Err(
                                self.unauthorized("the registry refused the credentials or token")
                            );
                        }
                        self.tokens
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .remove(scope);
                        self.authenticate(&resp, scope).await?;
                        renewed = true;
                        continue;
                    }
                    let transient = status.is_server_error()
                        || status == StatusCode::TOO_MANY_REQUESTS
                        || status == StatusCode::REQUEST_TIMEOUT;
                    if !transient || attempt >= self.cfg.retries {
                        return Ok(resp);
                    }
                    log::warn!(
                        "GET {}: HTTP {status}; retrying (attempt {})",
                        url.path(),
                        attempt + 1
                    );
                    resp.headers()
                        .get(reqwest::header::RETRY_AFTER)
                        .and_then(|v| v.to_str().ok())
                        .and_then(headers::parse_retry_after)
                }
            };
            let delay = delay.unwrap_or_else(|| backoff(attempt));
            tokio::time::sleep(delay).await;
            attempt += 1;
        }
    }

    fn status_error(&self, resp: &Response, what: impl Into<String>) -> SourceError {
        let what = what.into();
        match resp.status() {
            StatusCode::NOT_FOUND => SourceError::NotFound(what),
            StatusCode::FORBIDDEN => self.unauthorized(&format!("access to {what} was denied")),
            s => SourceError::Status {
                url: what,
                status: s.as_u16(),
            },
        }
    }

    /// `GET /v2/`: is the registry there? A 401 counts as there.
    pub fn ping(&self) -> Result<(), SourceError> {
        self.rt.block_on(async {
            let resp = self.http.get(self.url("v2/")).send().await.map_err(|e| {
                SourceError::Unreachable {
                    target: self.cfg.registry.clone(),
                    detail: error_chain(&e),
                }
            })?;
            match resp.status() {
                s if s.is_success() || s == StatusCode::UNAUTHORIZED => Ok(()),
                s => Err(SourceError::Protocol {
                    what: format!("registry {}", self.cfg.registry),
                    detail: format!("GET /v2/ answered HTTP {s}; is this an OCI registry?"),
                }),
            }
        })
    }

    /// Fetch manifest bytes by tag or digest; returns the bytes, content type and the
    /// `Docker-Content-Digest` the registry reported.
    pub fn manifest(
        &self,
        repo: &str,
        reference: &str,
    ) -> Result<ManifestAnswer, SourceError> {
        self.rt.block_on(async {
            let mut h = HeaderMap::new();
            h.insert(
                ACCEPT,
                HeaderValue::from_static(crate::oci::MANIFEST_ACCEPT),
            );
            let what = format!("{}/{repo}:{reference}", self.cfg.registry);
            let resp = self
                .get(
                    self.url(&format!("v2/{repo}/manifests/{reference}")),
                    &pull_scope(repo),
                    h,
                )
                .await?;
            if !resp.status().is_success() {
                return Err(self.status_error(&resp, what));
            }
            let header = |n: &str| {
                resp.headers()
                    .get(n)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string)
            };
            let content_type = header("content-type");
            let digest = header("docker-content-digest");
            let body = read_capped(resp, MAX_METADATA_SIZE, &what).await?;
            Ok((body, content_type, digest))
        })
    }

    /// All tags of a repository, following pagination.
    pub fn tags(&self, repo: &str) -> Result<Vec<String>, SourceError> {
        let first = self.url(&format!("v2/{repo}/tags/list?n={PAGE_SIZE}"));
        let pages = self.paginate(
            first,
            &pull_scope(repo),
            &format!("repository {}/{repo}", self.cfg.registry),
        )?;
        let mut tags = Vec::new();
        for body in pages {
            let list: TagList =
                serde_json::from_slice(&body).map_err(|e| SourceError::Protocol {
                    what: format!("tag list of {repo}"),
                    detail: e.to_string(),
                })?;
            tags.extend(list.tags.unwrap_or_default());
        }
        Ok(tags)
    }

    /// All repositories, or `None` when the registry does not offer `_catalog`.
    pub fn catalog(&self) -> Result<Option<Vec<String>>, SourceError> {
        let first = self.url(&format!("v2/_catalog?n={PAGE_SIZE}"));
        let pages = match self.paginate(first, "registry:catalog:*", "catalog") {
            Ok(p) => p,
            Err(SourceError::NotFound(_) | SourceError::Unauthorized { .. }) => return Ok(None),
            Err(SourceError::Status { status, .. }) if status < 500 => return Ok(None),
            Err(e) => return Err(e),
        };
        let mut repos = Vec::new();
        for body in pages {
            let c: Catalog = serde_json::from_slice(&body).map_err(|e| SourceError::Protocol {
                what: "catalog".into(),
                detail: e.to_string(),
            })?;
            repos.extend(c.repositories.unwrap_or_default());
        }
        Ok(Some(repos))
    }

    /// Follow `Link: <...>; rel="next"`, refusing links to another origin.
    fn paginate(&self, first: Url, scope: &str, what: &str) -> Result<Vec<Vec<u8>>, SourceError> {
        self.rt.block_on(async {
            let mut pages = Vec::new();
            let mut next = Some(first);
            while let Some(url) = next.take() {
                if pages.len() >= MAX_PAGES {
                    log::warn!("{what}: stopped after {MAX_PAGES} pages");
                    break;
                }
                let resp = self.get(url.clone(), scope, HeaderMap::new()).await?;
                if !resp.status().is_success() {
                    return Err(self.status_error(&resp, what));
                }
                if let Some(link) = resp
                    .headers()
                    .get(reqwest::header::LINK)
                    .and_then(|v| v.to_str().ok())
                    .and_then(headers::parse_link_next)
                {
                    let target = url.join(&link).map_err(|e| SourceError::Protocol {
                        what: what.to_string(),
                        detail: format!("bad Link header: {e}"),
                    })?;
                    if target.origin() != self.base.origin() {
                        return Err(SourceError::Protocol {
                            what: what.to_string(),
                            detail: format!(
                                "pagination Link points to another origin ({}); refused",
                                target.origin().ascii_serialization()
                            ),
                        });
                    }
                    next = Some(target);
                }
                pages.push(read_capped(resp, 16 << 20, what).await?);
            }
            Ok(pages)
        })
    }

    /// Stream `range` (or the whole blob) into `sink`. A body cut short is resumed from
    /// the bytes already delivered; a server that ignores `Range` is handled.
    pub fn fetch_blob(
        &self,
        repo: &str,
        digest: &Digest,
        size: u64,
        range: Option<Range<u64>>,
        sink: &mut dyn BlobSink,
    ) -> Result<(), SourceError> {
        let what = format!("blob {digest} of {}/{repo}", self.cfg.registry);
        let url = self.url(&format!("v2/{repo}/blobs/{digest}"));
        let want = range.clone().unwrap_or(0..size);
        if want.end > size || want.start > want.end {
            return Err(SourceError::Protocol {
                what,
                detail: format!("range {want:?} is outside the blob's {size} bytes"),
            });
        }
        self.rt.block_on(async {
            let mut kind: Option<BodyKind> = None;
            let mut delivered = 0u64; // bytes of `want` (or of the whole blob) given to sink
            let mut cuts = 0u32;
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
                let mut resp = self.get(url.clone(), &pull_scope(repo), h).await?;
                let status = resp.status();
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
                                log::debug!("{what}: server ignored Range and sent the whole blob");
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
                    _ => return Err(self.status_error(&resp, what)),
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

fn pull_scope(repo: &str) -> String {
    format!("repository:{repo}:pull")
}

/// Jittered exponential backoff: about 200 ms, 400 ms, 800 ms … capped at 10 s.
fn backoff(attempt: u32) -> Duration {
    use rand::Rng;
    let base = 200u64.saturating_mul(1 << attempt.min(6)).min(10_000);
    let jitter = rand::thread_rng().gen_range(0..=base / 2);
    Duration::from_millis(base / 2 + jitter)
}

/// An error and its causes on one line, without the URL's query (which may hold a signature).
fn error_chain(e: &reqwest::Error) -> String {
    let mut s = if e.is_timeout() {
        "timed out".to_string()
    } else if e.is_connect() {
        "connection failed".to_string()
    } else {
        "request failed".to_string()
    };
    let mut src = std::error::Error::source(e);
    while let Some(cause) = src {
        s.push_str(": ");
        s.push_str(&cause.to_string());
        src = cause.source();
    }
    s
}

/// Read a body up to `limit` bytes, failing beyond it.
async fn read_capped(mut resp: Response, limit: u64, what: &str) -> Result<Vec<u8>, SourceError> {
    if resp.content_length().is_some_and(|n| n > limit) {
        return Err(SourceError::Protocol {
            what: what.to_string(),
            detail: format!("answer is over the {limit}-byte limit"),
        });
    }
    let mut out = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(|e| SourceError::Unreachable {
        target: what.to_string(),
        detail: error_chain(&e),
    })? {
        if out.len() as u64 + chunk.len() as u64 > limit {
            return Err(SourceError::Protocol {
                what: what.to_string(),
                detail: format!("answer is over the {limit}-byte limit"),
            });
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_detection() {
        for h in [
            "127.0.0.1:5000",
            "localhost",
            "localhost:80",
            "[::1]:5000",
            "127.1.2.3",
        ] {
            assert!(is_loopback(h), "{h}");
        }
        for h in ["ghcr.io", "10.0.0.1:5000", "example.com:443"] {
            assert!(!is_loopback(h), "{h}");
        }
    }

    #[test]
    fn debug_redacts_password() {
        let c = Credentials {
            username: "u".into(),
            password: "hunter2".into(),
        };
        assert!(!format!("{c:?}").contains("hunter2"));
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        assert!(backoff(0) <= Duration::from_millis(200));
        assert!(backoff(20) <= Duration::from_secs(10));
    }
}
