//! The HTTP side of talking to a registry (distribution spec v2): requests with retries,
//! backoff and redirects, manifests, paginated listings and referrers. Authentication
//! lives in [`auth`], blob streaming in [`blob`], the one retry budget of a request in
//! [`retry`], credential sources in [`credentials`].
//!
//! The client runs its own small tokio runtime and offers blocking calls, so the FUSE
//! worker threads above it can call straight in; concurrent calls share one connection
//! pool. Nothing here logs a header value or a URL query (which may hold a signature),
//! and credentials are redacted in `Debug`. Redirects are followed by hand: the
//! `Authorization` header only ever goes to the registry's own origin.

pub mod adapter;
mod auth;
mod blob;
pub mod credentials;
pub mod headers;
mod outage;
mod push;
mod retry;
#[cfg(test)]
mod test_server;

pub use push::PushedManifest;
use retry::Budget;

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use reqwest::header::{HeaderMap, HeaderValue, ACCEPT, AUTHORIZATION, LOCATION};
use reqwest::{Method, Response, StatusCode};
use serde::Deserialize;
use url::Url;

use crate::error::SourceError;
use crate::oci::{Descriptor, Digest, Manifest, MAX_METADATA_SIZE, OCI_INDEX};

/// A username and password, or an identity token. `Debug` never shows a secret.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    /// The password; for an identity token, the token (so Basic auth can use it too).
    pub password: String,
    /// An OAuth2 refresh token for the token service (Docker's `identitytoken`).
    pub identity_token: Option<String>,
    /// Where they came from, for messages: `--username`, `auth file PATH`, a helper.
    pub origin: String,
}

impl Credentials {
    /// A username and password.
    pub fn new(
        username: impl Into<String>,
        password: impl Into<String>,
        origin: impl Into<String>,
    ) -> Self {
        Self {
            username: username.into(),
            password: password.into(),
            identity_token: None,
            origin: origin.into(),
        }
    }

    /// An identity token, used as a refresh token with the token service and as the
    /// password where a registry wants Basic auth.
    pub fn identity_token(username: String, token: String, origin: impl Into<String>) -> Self {
        Self {
            username: if username.is_empty() {
                "<token>".to_string()
            } else {
                username
            },
            password: token.clone(),
            identity_token: Some(token),
            origin: origin.into(),
        }
    }
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Credentials({}, <redacted>{}, from {})",
            self.username,
            if self.identity_token.is_some() {
                ", identity token"
            } else {
                ""
            },
            self.origin
        )
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
    /// More PEM CA bundles to trust (a mirror's hosts.toml `ca` list).
    pub extra_ca: Vec<PathBuf>,
    /// Headers sent with every request to the registry's own origin (a mirror's hosts.toml
    /// `header`), never to a redirect target or token service.
    pub headers: Headers,
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
            extra_ca: Vec::new(),
            headers: Headers::default(),
            connect_timeout: Duration::from_secs(10),
            read_timeout: Duration::from_secs(30),
            retries: 4,
            credentials: None,
        }
    }
}

/// Name and value pairs of extra request headers; `Debug` shows the names only (a value
/// may be a secret).
#[derive(Clone, Default)]
pub struct Headers(pub Vec<(String, String)>);

impl fmt::Debug for Headers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.0.iter().map(|(n, _)| n))
            .finish()
    }
}

impl Headers {
    /// As a header map, or the first name or value HTTP does not allow.
    fn to_map(&self, registry: &str) -> Result<HeaderMap, SourceError> {
        let mut map = HeaderMap::new();
        for (name, value) in &self.0 {
            let bad = |detail: String| SourceError::Protocol {
                what: format!("header {name:?} for {registry}"),
                detail,
            };
            let n = reqwest::header::HeaderName::from_bytes(name.as_bytes())
                .map_err(|e| bad(e.to_string()))?;
            let v = reqwest::header::HeaderValue::from_str(value)
                .map_err(|_| bad("the value is not a valid header value".into()))?;
            map.append(n, v);
        }
        Ok(map)
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

/// A successful answer read whole: its headers, the URL that gave it, its body.
struct WholeAnswer {
    headers: HeaderMap,
    url: Url,
    body: Vec<u8>,
}

impl WholeAnswer {
    fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    }
}

/// A blob by repository and digest, for per-blob memories.
type BlobKey = (String, Digest);

/// Remembered per-blob facts are dropped wholesale past this many entries.
const MAX_REMEMBERED: usize = 16_384;
/// Redirects followed for one request.
const MAX_REDIRECTS: usize = 5;

/// A blocking registry client.
pub struct Client {
    cfg: ClientConfig,
    base: Url,
    http: reqwest::Client,
    rt: tokio::runtime::Runtime,
    tokens: Mutex<HashMap<String, auth::Token>>,
    use_basic: AtomicBool,
    /// Where a blob was last served from after a redirect to another origin.
    redirects: Mutex<HashMap<BlobKey, Url>>,
    /// Blobs whose server ignored `Range` and sent the whole blob.
    no_range: Mutex<HashSet<BlobKey>>,
    /// Whether the registry is down, for metadata requests.
    health: outage::Health,
    /// [`ClientConfig::headers`].
    extra_headers: HeaderMap,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("base", &self.base.as_str())
            .finish()
    }
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

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

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
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("orasfs/", env!("CARGO_PKG_VERSION")))
            .danger_accept_invalid_certs(cfg.insecure);
        let named = cfg.ca_file.iter().map(|p| ("--ca-file", p));
        for (flag, ca) in named.chain(cfg.extra_ca.iter().map(|p| ("CA file", p))) {
            let pem = std::fs::read(ca)
                .map_err(|e| SourceError::io(format!("{flag} {}", ca.display()), e))?;
            let certs =
                reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| SourceError::Protocol {
                    what: format!("{flag} {}", ca.display()),
                    detail: e.to_string(),
                })?;
            if certs.is_empty() {
                return Err(SourceError::Protocol {
                    what: format!("{flag} {}", ca.display()),
                    detail: "holds no PEM certificate".into(),
                });
            }
            for c in certs {
                builder = builder.add_root_certificate(c);
            }
        }
        let extra_headers = cfg.headers.to_map(&cfg.registry)?;
        let http = builder.build().map_err(|e| SourceError::Protocol {
            what: "HTTP client".into(),
            detail: e.to_string(),
        })?;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("orasfs-http")
            .enable_all()
            .build()
            .map_err(|e| SourceError::io("tokio runtime", e))?;
        Ok(Self {
            cfg,
            base,
            http,
            rt,
            tokens: Mutex::new(HashMap::new()),
            use_basic: AtomicBool::new(false),
            redirects: Mutex::new(HashMap::new()),
            no_range: Mutex::new(HashSet::new()),
            health: outage::Health::default(),
            extra_headers,
        })
    }

    /// The registry as the user named it.
    pub fn registry(&self) -> &str {
        &self.cfg.registry
    }

    /// The base URL requests go to (`https://host/` or `http://host/`).
    pub fn base_url(&self) -> &Url {
        &self.base
    }

    fn url(&self, path: &str) -> Url {
        // `path` is built from validated names only; a failed join is a bug, reported as such.
        self.base.join(path).unwrap_or_else(|_| self.base.clone())
    }

    fn same_origin(&self, url: &Url) -> bool {
        url.origin() == self.base.origin()
    }

    /// A transport failure as one line, with a hint for TLS trust and scheme mix-ups.
    fn unreachable(&self, e: &reqwest::Error) -> SourceError {
        let chain = error_chain(e);
        let detail = if is_certificate_error(&chain) {
            format!(
                "{chain}; the registry's TLS certificate is not trusted: give its CA with --ca-file PEM, or skip verification with --insecure"
            )
        } else if chain.contains("InvalidContentType") || chain.contains("corrupt message") {
            format!("{chain}; it may speak plain HTTP: use --plain-http or an http:// SOURCE")
        } else {
            chain
        };
        SourceError::Unreachable {
            target: self.cfg.registry.clone(),
            detail,
        }
    }

    /// Send a request with auth, retries from `budget`, backoff and redirects. Returns the
    /// final response, whatever its status (a transient one once the budget is spent),
    /// except a 401 from the registry (after one renewal) and transport failures.
    /// `Authorization` is only sent to the registry's own origin, and a 401 from elsewhere
    /// is returned as it is.
    async fn send(
        &self,
        method: Method,
        url: Url,
        scope: &str,
        extra: HeaderMap,
        budget: &mut Budget,
    ) -> Result<Response, SourceError> {
        let mut url = url;
        let mut renewed = false;
        let mut hops = 0usize;
        loop {
            let own = self.same_origin(&url);
            let mut req = self
                .http
                .request(method.clone(), url.clone())
                .headers(extra.clone());
            if own {
                req = req.headers(self.extra_headers.clone());
                if let Some(auth) = self.auth_header(scope) {
                    req = req.header(AUTHORIZATION, auth);
                }
            }
            let what = format!("{method} {}", url.path());
            let wait = match req.send().await {
                Err(e) => {
                    let err = self.unreachable(&e);
                    if is_certificate_error(&error_chain(&e))
                        || (budget.stop_at_connect_timeout && e.is_connect() && e.is_timeout())
                    {
                        return Err(err);
                    }
                    match budget.retry(&what, &err, None) {
                        Some(wait) => wait,
                        None => return Err(err),
                    }
                }
                Ok(resp) => {
                    let status = resp.status();
                    if status.is_redirection() {
                        if let Some(next) = redirect_target(&url, &resp) {
                            hops += 1;
                            if hops > MAX_REDIRECTS {
                                return Err(SourceError::Protocol {
                                    what: format!("GET {}", url.path()),
                                    detail: format!("more than {MAX_REDIRECTS} redirects"),
                                });
                            }
                            let next = next?;
                            log::debug!(
                                "GET {}: HTTP {status}, redirected to {}",
                                url.path(),
                                describe_origin(&next)
                            );
                            url = next;
                            continue;
                        }
                    }
                    if status == StatusCode::UNAUTHORIZED && own {
                        if renewed {
                            return Err(self.refused());
                        }
                        auth::forget(self, scope);
                        self.authenticate(&resp, scope, budget).await?;
                        renewed = true;
                        continue;
                    }
                    let failure = SourceError::Status {
                        url: url.path().to_string(),
                        status: status.as_u16(),
                    };
                    match budget.retry(&what, &failure, retry_after(&resp)) {
                        Some(wait) => wait,
                        None => return Ok(resp),
                    }
                }
            };
            tokio::time::sleep(wait).await;
        }
    }

    fn status_error(&self, status: StatusCode, what: impl Into<String>) -> SourceError {
        let what = what.into();
        match status {
            StatusCode::NOT_FOUND => SourceError::NotFound(what),
            StatusCode::FORBIDDEN => self.denied(&what),
            s => SourceError::Status {
                url: what,
                status: s.as_u16(),
            },
        }
    }

    /// `GET /v2/`: is the registry there? A 401 counts as there.
    pub fn ping(&self) -> Result<(), SourceError> {
        self.rt.block_on(async {
            let resp = self
                .http
                .get(self.url("v2/"))
                .send()
                .await
                .map_err(|e| self.unreachable(&e))?;
            match resp.status() {
                s if s.is_success() || s == StatusCode::UNAUTHORIZED => Ok(()),
                s => Err(SourceError::Protocol {
                    what: format!("registry {}", self.cfg.registry),
                    detail: format!(
                        "GET {}v2/ answered HTTP {s}; is this an OCI registry{}?",
                        self.base,
                        if s == StatusCode::BAD_REQUEST && self.base.scheme() == "http" {
                            " (if it speaks HTTPS, use an https:// SOURCE)"
                        } else {
                            ""
                        }
                    ),
                }),
            }
        })
    }

    /// `GET /v2/` as a client that means to use the registry: a 401 is answered with the
    /// credentials (Basic, or a token from the challenge's realm). Fails when the registry
    /// wants credentials and has none, or refuses the ones given. A token service that
    /// hands out anonymous tokens passes: its public repositories may be read.
    pub fn check_access(&self) -> Result<(), SourceError> {
        self.rt.block_on(async {
            let mut budget = Budget::new(self.cfg.retries);
            let resp = self
                .send(
                    Method::GET,
                    self.url("v2/"),
                    "",
                    HeaderMap::new(),
                    &mut budget,
                )
                .await?;
            match resp.status() {
                s if s.is_success() => Ok(()),
                StatusCode::UNAUTHORIZED => Err(self.refused()),
                s => Err(self.status_error(s, format!("{}v2/", self.base))),
            }
        })
    }

    /// Fetch manifest bytes by tag or digest; returns the bytes, content type and the
    /// `Docker-Content-Digest` the registry reported. When there is none, the error says
    /// what is missing: the repository, or the tag (or digest) in it. The registry's error
    /// code cannot tell: distribution 2.x answers `MANIFEST_UNKNOWN` for a tag of a
    /// repository it does not have either; its tag list can (`NAME_UNKNOWN`), and is asked
    /// only then.
    pub fn manifest(&self, repo: &str, reference: &str) -> Result<ManifestAnswer, SourceError> {
        let result = self.fetch_manifest(repo, reference);
        let Err(SourceError::NotFound(_)) = result else {
            return result;
        };
        let registry = &self.cfg.registry;
        let (sep, what) = match reference.starts_with("sha256:") {
            true => ('@', "manifest"),
            false => (':', "tag"),
        };
        match self.tags(repo) {
            Err(SourceError::NotFound(_)) => Err(SourceError::NotFound(format!(
                "repository {registry}/{repo} (asked for {registry}/{repo}{sep}{reference})"
            ))),
            Ok(_) => Err(SourceError::NotFound(format!(
                "{what} {reference} in repository {registry}/{repo}"
            ))),
            Err(_) => result,
        }
    }

    /// [`Client::manifest`] without the explanation of a 404.
    fn fetch_manifest(&self, repo: &str, reference: &str) -> Result<ManifestAnswer, SourceError> {
        self.rt.block_on(async {
            let h = manifest_accept();
            let sep = if reference.starts_with("sha256:") {
                '@'
            } else {
                ':'
            };
            let what = format!("{}/{repo}{sep}{reference}", self.cfg.registry);
            let answer = self
                .get_whole(
                    self.url(&format!("v2/{repo}/manifests/{reference}")),
                    &pull_scope(repo),
                    h,
                    MAX_METADATA_SIZE,
                    &what,
                )
                .await?;
            let content_type = answer.header("content-type");
            let digest = answer.header("docker-content-digest");
            Ok((answer.body, content_type, digest))
        })
    }

    /// The digest a tag points at now, from a `HEAD` of its manifest (which Docker Hub does
    /// not count as a pull): the `Docker-Content-Digest` reported, or `None` when the
    /// registry reports none.
    pub fn manifest_digest(
        &self,
        repo: &str,
        reference: &str,
    ) -> Result<Option<String>, SourceError> {
        self.rt.block_on(async {
            let h = manifest_accept();
            let what = format!("{}/{repo}:{reference}", self.cfg.registry);
            let url = self.url(&format!("v2/{repo}/manifests/{reference}"));
            let mut budget = self.gate()?;
            let resp = self.settle(
                self.send(Method::HEAD, url, &pull_scope(repo), h, &mut budget)
                    .await,
            )?;
            if !resp.status().is_success() {
                return Err(self.status_error(resp.status(), what));
            }
            Ok(resp
                .headers()
                .get("docker-content-digest")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string))
        })
    }

    /// The retry budget of a metadata request now, or [`SourceError::Down`] while the
    /// registry is known to be down (see [`outage`]).
    fn gate(&self) -> Result<Budget, SourceError> {
        let retries = match self.health.gate(&self.cfg.registry)? {
            outage::Gate::Ask => self.cfg.retries,
            outage::Gate::Probe => 0,
        };
        Ok(Budget::metadata(retries))
    }

    /// Note what a metadata request's outcome says about the registry's health; a failure
    /// to reach it becomes [`SourceError::Down`].
    fn settle<T>(&self, r: Result<T, SourceError>) -> Result<T, SourceError> {
        match r {
            Err(e @ SourceError::Unreachable { .. }) => {
                Err(self.health.unreachable(&self.cfg.registry, &e))
            }
            Err(e @ SourceError::Down { .. }) => Err(e),
            other => {
                self.health.answered(&self.cfg.registry);
                other
            }
        }
    }

    /// A successful GET read whole (up to `limit` bytes), if the registry is not known to
    /// be down. A body cut short is asked for again, like any transient failure, from the
    /// request's one retry budget.
    async fn get_whole(
        &self,
        url: Url,
        scope: &str,
        h: HeaderMap,
        limit: u64,
        what: &str,
    ) -> Result<WholeAnswer, SourceError> {
        let mut budget = self.gate()?;
        let r = loop {
            let resp = match self
                .send(Method::GET, url.clone(), scope, h.clone(), &mut budget)
                .await
            {
                Ok(r) => r,
                Err(e) => break Err(e),
            };
            if !resp.status().is_success() {
                break Err(self.status_error(resp.status(), what));
            }
            let headers = resp.headers().clone();
            let final_url = resp.url().clone();
            match read_capped(resp, limit, what).await {
                Ok(body) => {
                    break Ok(WholeAnswer {
                        headers,
                        url: final_url,
                        body,
                    })
                }
                Err(e) => match budget.retry(what, &e, None) {
                    Some(wait) => tokio::time::sleep(wait).await,
                    None => break Err(e),
                },
            }
        };
        self.settle(r)
    }

    /// All tags of a repository, following pagination.
    pub fn tags(&self, repo: &str) -> Result<Vec<String>, SourceError> {
        let first = self.url(&format!("v2/{repo}/tags/list?n={PAGE_SIZE}"));
        let (scope, what) = (
            pull_scope(repo),
            format!("repository {}/{repo}", self.cfg.registry),
        );
        let pages = match self.paginate(first, &scope, &what, None) {
            // A registry whose page limit is below `n` may refuse it: use its own.
            Err(SourceError::Status { status: 400, .. }) => {
                let plain = self.url(&format!("v2/{repo}/tags/list"));
                self.paginate(plain, &scope, &what, None)?
            }
            other => other?,
        };
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
        let scope = "registry:catalog:*";
        let first = self.url(&format!("v2/_catalog?n={PAGE_SIZE}"));
        let mut pages = self.paginate(first, scope, "catalog", None);
        if let Err(SourceError::Status { status: 400, .. }) = pages {
            // distribution refuses an `n` above its configured maximum: use its default.
            log::debug!("catalog: n={PAGE_SIZE} refused; asking with the registry's page size");
            pages = self.paginate(self.url("v2/_catalog"), scope, "catalog", None);
        }
        let pages = match pages {
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

    /// The Referrers API (`GET /v2/<repo>/referrers/<digest>`), following pagination.
    /// `NotFound` (or a 400/405/501 status) means the registry has no such API.
    pub fn referrers_api(
        &self,
        repo: &str,
        digest: &Digest,
    ) -> Result<Vec<Descriptor>, SourceError> {
        let what = format!("referrers of {}/{repo}@{digest}", self.cfg.registry);
        let first = self.url(&format!("v2/{repo}/referrers/{digest}"));
        let pages = self.paginate(first, &pull_scope(repo), &what, Some(OCI_INDEX))?;
        let mut out = Vec::new();
        for body in pages {
            match Manifest::parse(&body, Some(OCI_INDEX)) {
                Ok(Manifest::Index(i)) => out.extend(i.manifests),
                Ok(Manifest::Image(_)) => {
                    return Err(SourceError::Protocol {
                        what,
                        detail: "the answer is not an image index".into(),
                    })
                }
                Err(source) => return Err(SourceError::Oci { what, source }),
            }
        }
        Ok(out)
    }

    /// Follow `Link: <...>; rel="next"`, refusing links to another origin.
    fn paginate(
        &self,
        first: Url,
        scope: &str,
        what: &str,
        accept: Option<&'static str>,
    ) -> Result<Vec<Vec<u8>>, SourceError> {
        self.rt.block_on(async {
            let mut pages = Vec::new();
            let mut next = Some(first);
            let mut h = HeaderMap::new();
            if let Some(a) = accept {
                h.insert(ACCEPT, HeaderValue::from_static(a));
            }
            while let Some(url) = next.take() {
                if pages.len() >= MAX_PAGES {
                    log::warn!("{what}: stopped after {MAX_PAGES} pages");
                    break;
                }
                let page = self
                    .get_whole(url.clone(), scope, h.clone(), 16 << 20, what)
                    .await?;
                if let Some(link) = page
                    .header(reqwest::header::LINK.as_str())
                    .as_deref()
                    .and_then(headers::parse_link_next)
                {
                    let target = page.url.join(&link).map_err(|e| SourceError::Protocol {
                        what: what.to_string(),
                        detail: format!("bad Link header: {e}"),
                    })?;
                    if !self.same_origin(&target) {
                        return Err(SourceError::Protocol {
                            what: what.to_string(),
                            detail: format!(
                                "pagination Link points to another origin ({}); refused",
                                describe_origin(&target)
                            ),
                        });
                    }
                    next = Some(target);
                }
                pages.push(page.body);
            }
            Ok(pages)
        })
    }
}

/// Where a redirect points, if the response has a `Location`; an error for a target that
/// is not http(s).
fn redirect_target(from: &Url, resp: &Response) -> Option<Result<Url, SourceError>> {
    let loc = resp.headers().get(LOCATION)?.to_str().ok()?;
    Some(match from.join(loc) {
        Ok(u) if u.scheme() == "https" || u.scheme() == "http" => Ok(u),
        _ => Err(SourceError::Protocol {
            what: format!("GET {}", from.path()),
            detail: "redirect to something other than an http(s) URL".into(),
        }),
    })
}

/// `scheme://host:port` of a URL, never its path or query.
fn describe_origin(u: &Url) -> String {
    u.origin().ascii_serialization()
}

/// Headers asking for any manifest type orasfs understands.
fn manifest_accept() -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(
        ACCEPT,
        HeaderValue::from_static(crate::oci::MANIFEST_ACCEPT),
    );
    h
}

fn pull_scope(repo: &str) -> String {
    format!("repository:{repo}:pull")
}

/// How long the server asked to wait before the next try (`Retry-After`), if it did.
fn retry_after(resp: &Response) -> Option<Duration> {
    resp.headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(headers::parse_retry_after)
}

/// Whether a transport error chain says the peer's certificate was refused.
fn is_certificate_error(chain: &str) -> bool {
    chain.contains("invalid peer certificate")
        || chain.contains("UnknownIssuer")
        || chain.contains("certificate verify failed")
}

/// An error and its causes on one line, without the URL (whose query may hold a
/// signature).
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
        let text = cause.to_string();
        if !s.ends_with(&text) {
            s.push_str(": ");
            s.push_str(&text);
        }
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
    fn debug_redacts_secrets() {
        let c = Credentials::new("u", "hunter2", "--username");
        assert!(!format!("{c:?}").contains("hunter2"));
        let t = Credentials::identity_token(String::new(), "tok-123".into(), "file");
        assert_eq!(t.username, "<token>");
        assert!(!format!("{t:?}").contains("tok-123"));
        let cfg = ClientConfig {
            credentials: Some(c),
            ..ClientConfig::new("r.example")
        };
        assert!(!format!("{cfg:?}").contains("hunter2"));
    }

    #[test]
    fn docker_hub_names_map_to_its_api_host() {
        assert_eq!(api_host("docker.io"), "registry-1.docker.io");
        assert_eq!(api_host("index.docker.io"), "registry-1.docker.io");
        assert_eq!(api_host("ghcr.io"), "ghcr.io");
        let c = Client::new(ClientConfig::new("docker.io")).unwrap();
        assert_eq!(c.base_url().as_str(), "https://registry-1.docker.io/");
        assert_eq!(
            c.url("v2/library/alpine/manifests/latest").as_str(),
            "https://registry-1.docker.io/v2/library/alpine/manifests/latest"
        );
        let local = Client::new(ClientConfig::new("127.0.0.1:5000")).unwrap();
        assert_eq!(local.base_url().as_str(), "http://127.0.0.1:5000/");
    }

    #[test]
    fn certificate_errors_are_recognised() {
        assert!(is_certificate_error(
            "connection failed: invalid peer certificate: UnknownIssuer"
        ));
        assert!(!is_certificate_error(
            "connection failed: Connection refused"
        ));
    }
}
