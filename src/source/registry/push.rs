//! Pushing to a registry (distribution spec v2): blobs by monolithic upload (`HEAD` first
//! to skip what is there, then `POST /v2/<repo>/blobs/uploads/` and `PUT <location>
//! ?digest=`), and manifests by `PUT /v2/<repo>/manifests/<reference>`, all with a token
//! for `pull,push`. A refused push is one line naming the registry and the status.

use reqwest::header::{HeaderMap, HeaderValue, AUTHORIZATION, CONTENT_TYPE, LOCATION};
use reqwest::{Method, Response, StatusCode};
use url::Url;

use super::retry::Budget;
use super::{error_chain, is_certificate_error, read_capped, Client};
use crate::error::SourceError;
use crate::oci::Digest;

/// What the registry answered to a manifest push.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushedManifest {
    /// The manifest's digest (as computed here; the registry's report is checked).
    pub digest: Digest,
    /// The registry answered `OCI-Subject`: it indexes referrers itself, so no referrers
    /// tag is needed.
    pub subject_indexed: bool,
}

/// Where an upload started by `POST start` continues (its `Location`).
fn upload_location(start: &Url, posted: &Response) -> Option<Url> {
    posted
        .headers()
        .get(LOCATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|l| start.join(l).ok())
        .filter(|u| u.scheme() == "http" || u.scheme() == "https")
}

fn push_scope(repo: &str) -> String {
    format!("repository:{repo}:pull,push")
}

impl Client {
    /// Send one request with auth (for `pull,push`), retrying transport failures and
    /// transient answers from one retry budget. A 401 is answered once; a second one is a
    /// refused push.
    async fn send_push(
        &self,
        method: Method,
        url: Url,
        repo: &str,
        headers: HeaderMap,
        body: Option<&[u8]>,
    ) -> Result<Response, SourceError> {
        let scope = push_scope(repo);
        let mut budget = Budget::new(self.cfg.retries);
        let mut renewed = false;
        loop {
            let mut req = self
                .http
                .request(method.clone(), url.clone())
                .headers(headers.clone());
            if self.same_origin(&url) {
                if let Some(auth) = self.auth_header(&scope) {
                    req = req.header(AUTHORIZATION, auth);
                }
            }
            if let Some(b) = body {
                req = req.body(b.to_vec());
            }
            let what = format!("{method} {}", url.path());
            let wait = match req.send().await {
                Err(e) => {
                    let err = self.unreachable(&e);
                    if is_certificate_error(&error_chain(&e)) {
                        return Err(err);
                    }
                    match budget.retry(&what, &err, None) {
                        Some(wait) => wait,
                        None => return Err(err),
                    }
                }
                Ok(resp) => {
                    let status = resp.status();
                    if status == StatusCode::UNAUTHORIZED && self.same_origin(&url) {
                        if renewed {
                            return Err(self.push_refused(repo, status));
                        }
                        super::auth::forget(self, &scope);
                        self.authenticate(&resp, &scope, &mut budget).await?;
                        renewed = true;
                        continue;
                    }
                    if status == StatusCode::FORBIDDEN {
                        return Err(self.push_refused(repo, status));
                    }
                    let failure = SourceError::Status {
                        url: url.path().to_string(),
                        status: status.as_u16(),
                    };
                    match budget.retry(&what, &failure, None) {
                        Some(wait) => wait,
                        None => return Ok(resp),
                    }
                }
            };
            tokio::time::sleep(wait).await;
        }
    }

    fn push_refused(&self, repo: &str, status: StatusCode) -> SourceError {
        self.unauthorized(&format!(
            "push to {}/{repo} was refused (HTTP {}){}",
            self.cfg.registry,
            status.as_u16(),
            if self.cfg.credentials.is_some() {
                ": the credentials do not grant push access"
            } else {
                ""
            }
        ))
    }

    /// An unexpected answer as one line: the status and the registry's own error code.
    async fn push_failed(&self, resp: Response, what: String) -> SourceError {
        let status = resp.status();
        let body = read_capped(resp, 64 << 10, &what).await.unwrap_or_default();
        let code = serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| {
                let e = v.get("errors")?.get(0)?.clone();
                let code = e.get("code")?.as_str()?.to_string();
                let msg = e.get("message").and_then(|m| m.as_str()).unwrap_or("");
                Some(format!(" {code}: {msg}"))
            })
            .unwrap_or_default();
        let detail: String = format!("HTTP {}{code}", status.as_u16())
            .chars()
            .filter(|c| !c.is_control())
            .take(300)
            .collect();
        SourceError::Protocol { what, detail }
    }

    /// `POST /v2/<repo>/blobs/uploads/`: start an upload; returns where it continues.
    async fn start_upload(&self, repo: &str, what: &str) -> Result<Url, SourceError> {
        let start = self.url(&format!("v2/{repo}/blobs/uploads/"));
        let posted = self
            .send_push(Method::POST, start.clone(), repo, HeaderMap::new(), None)
            .await?;
        if posted.status() != StatusCode::ACCEPTED {
            return Err(self.push_failed(posted, what.to_string()).await);
        }
        upload_location(&start, &posted).ok_or_else(|| SourceError::Protocol {
            what: what.to_string(),
            detail: "the upload answer has no usable Location".into(),
        })
    }

    /// Check that pushing to `repo` is allowed: start a blob upload, then cancel it.
    pub fn check_push(&self, repo: &str) -> Result<(), SourceError> {
        let what = format!("push to {}/{repo}", self.cfg.registry);
        self.rt.block_on(async {
            let upload = self.start_upload(repo, &what).await?;
            // A left-over upload is harmless (registries purge them); cancel it anyway.
            let _ = self
                .send_push(Method::DELETE, upload, repo, HeaderMap::new(), None)
                .await;
            Ok(())
        })
    }

    /// Upload a blob unless the repository has it already. Returns whether it uploaded.
    pub fn push_blob(
        &self,
        repo: &str,
        digest: &Digest,
        bytes: &[u8],
    ) -> Result<bool, SourceError> {
        let what = format!("push of blob {digest} to {}/{repo}", self.cfg.registry);
        self.rt.block_on(async {
            let blob_url = self.url(&format!("v2/{repo}/blobs/{digest}"));
            let head = self
                .send_push(Method::HEAD, blob_url, repo, HeaderMap::new(), None)
                .await?;
            match head.status() {
                s if s.is_success() => return Ok(false),
                StatusCode::NOT_FOUND => {}
                _ => return Err(self.push_failed(head, what).await),
            }
            let mut put = self.start_upload(repo, &what).await?;
            put.query_pairs_mut()
                .append_pair("digest", &digest.to_string());
            let mut h = HeaderMap::new();
            h.insert(
                CONTENT_TYPE,
                HeaderValue::from_static("application/octet-stream"),
            );
            let done = self
                .send_push(Method::PUT, put, repo, h, Some(bytes))
                .await?;
            if done.status() != StatusCode::CREATED {
                return Err(self.push_failed(done, what).await);
            }
            Ok(true)
        })
    }

    /// Put manifest bytes under `reference` (a tag, or the manifest's own digest).
    pub fn push_manifest(
        &self,
        repo: &str,
        reference: &str,
        media_type: &str,
        bytes: &[u8],
    ) -> Result<PushedManifest, SourceError> {
        let digest = Digest::of(bytes);
        let what = format!(
            "push of manifest {digest} to {}/{repo} as {reference}",
            self.cfg.registry
        );
        self.rt.block_on(async {
            let mut h = HeaderMap::new();
            h.insert(
                CONTENT_TYPE,
                HeaderValue::from_str(media_type).map_err(|e| SourceError::Protocol {
                    what: what.clone(),
                    detail: e.to_string(),
                })?,
            );
            let url = self.url(&format!("v2/{repo}/manifests/{reference}"));
            let resp = self
                .send_push(Method::PUT, url, repo, h, Some(bytes))
                .await?;
            if resp.status() != StatusCode::CREATED {
                return Err(self.push_failed(resp, what).await);
            }
            let header = |name: &str| {
                resp.headers()
                    .get(name)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string)
            };
            if let Some(reported) = header("docker-content-digest") {
                if reported != digest.to_string() {
                    return Err(SourceError::Protocol {
                        what,
                        detail: format!("the registry stored it as {reported}"),
                    });
                }
            }
            Ok(PushedManifest {
                digest,
                subject_indexed: header("oci-subject").is_some(),
            })
        })
    }
}
