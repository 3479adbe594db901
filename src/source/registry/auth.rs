//! Authentication: answering `WWW-Authenticate` challenges with Basic credentials or a
//! bearer token from the token service the registry's own challenge named (docker token
//! spec: GET with Basic credentials, or POST `grant_type=refresh_token` for an identity
//! token), and caching tokens per scope until shortly before they expire.
//!
//! Credentials only ever go to the registry's own origin and to the realm its challenge
//! named, never over plain HTTP when the registry itself is HTTPS. Token values never
//! reach a log line or an error message.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use reqwest::header::HeaderValue;
use reqwest::{RequestBuilder, Response, StatusCode};
use url::Url;

use super::headers::{self, Challenge};
use super::retry::Budget;
use super::{describe_origin, lock, read_capped, Client};
use crate::error::SourceError;

/// A cached bearer token. No `Debug`: it is a secret.
pub(super) struct Token {
    value: String,
    expires: Instant,
}

/// Lifetime assumed when the token service gives none (the spec's default).
const DEFAULT_TOKEN_LIFE: u64 = 60;

/// Drop the cached token for `scope` (after the registry refused it).
pub(super) fn forget(client: &Client, scope: &str) {
    lock(&client.tokens).remove(scope);
}

impl Client {
    /// The `Authorization` value for a request in `scope`: a cached, unexpired token, or
    /// Basic credentials once the registry has asked for them.
    pub(super) fn auth_header(&self, scope: &str) -> Option<HeaderValue> {
        let value = if let Some(t) = lock(&self.tokens)
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

    /// An "authentication required" error with `detail` and what would fix it.
    pub(super) fn unauthorized(&self, detail: &str) -> SourceError {
        let r = &self.cfg.registry;
        let hint = match &self.cfg.credentials {
            Some(c) => format!("{detail} (credentials from {})", c.origin),
            None => format!(
                "{detail}; no credentials were found: give them with --username and \
                 --password-stdin, or --auth-file FILE, or log in with `oras login {r}` or \
                 `docker login {r}`"
            ),
        };
        SourceError::Unauthorized {
            registry: r.clone(),
            hint,
        }
    }

    /// The registry answered 401 again after a fresh token or with Basic credentials.
    pub(super) fn refused(&self) -> SourceError {
        self.unauthorized(if self.cfg.credentials.is_some() {
            "the registry refused the credentials, or they do not grant pull access"
        } else {
            "anonymous access was refused"
        })
    }

    /// The registry answered 403 for `what`.
    pub(super) fn denied(&self, what: &str) -> SourceError {
        self.unauthorized(&format!("access to {what} was denied"))
    }

    /// Answer a 401: get a token for `scope` (the token request's retries come out of the
    /// request's `budget`), or switch to Basic credentials.
    pub(super) async fn authenticate(
        &self,
        resp: &Response,
        scope: &str,
        budget: &mut Budget,
    ) -> Result<(), SourceError> {
        let challenges: Vec<Challenge> = resp
            .headers()
            .get_all(reqwest::header::WWW_AUTHENTICATE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .filter_map(headers::parse_challenge)
            .collect();
        // Prefer a bearer challenge when a registry offers both.
        let challenge = challenges
            .iter()
            .find(|c| matches!(c, Challenge::Bearer { .. }))
            .or_else(|| challenges.first())
            .ok_or_else(|| {
                self.unauthorized("the registry sent no usable WWW-Authenticate challenge")
            })?;
        match challenge {
            Challenge::Basic { .. } => {
                if self.cfg.credentials.is_none() {
                    return Err(self.unauthorized("the registry wants a user name and password"));
                }
                self.use_basic.store(true, Ordering::Relaxed);
                Ok(())
            }
            Challenge::Bearer {
                realm,
                service,
                scope: challenged,
            } => {
                let scope = if scope.is_empty() {
                    challenged.as_deref().unwrap_or("")
                } else {
                    scope
                };
                self.fetch_token(realm, service.as_deref(), scope, budget)
                    .await
            }
        }
    }

    async fn fetch_token(
        &self,
        realm: &str,
        service: Option<&str>,
        scope: &str,
        budget: &mut Budget,
    ) -> Result<(), SourceError> {
        let url = Url::parse(realm)
            .ok()
            .filter(|u| u.scheme() == "https" || u.scheme() == "http")
            .ok_or_else(|| self.unauthorized("the token realm is not an http(s) URL"))?;
        let creds = self.cfg.credentials.as_ref();
        if creds.is_some() && url.scheme() == "http" && self.base.scheme() == "https" {
            return Err(self.unauthorized(&format!(
                "the token service {} is plain HTTP while the registry is HTTPS; refusing to send credentials there",
                describe_origin(&url)
            )));
        }
        let mut query = url.clone();
        {
            let mut q = query.query_pairs_mut();
            if let Some(s) = service {
                q.append_pair("service", s);
            }
            if !scope.is_empty() {
                q.append_pair("scope", scope);
            }
        }
        let get = || {
            let req = self.http.get(query.clone());
            match creds {
                Some(c) => req.basic_auth(&c.username, Some(&c.password)),
                None => req,
            }
        };
        let answer = match creds.and_then(|c| c.identity_token.as_deref()) {
            Some(refresh) => {
                let mut form = vec![
                    ("grant_type", "refresh_token"),
                    ("refresh_token", refresh),
                    ("client_id", "orasfs"),
                ];
                if let Some(s) = service {
                    form.push(("service", s));
                }
                if !scope.is_empty() {
                    form.push(("scope", scope));
                }
                let resp = self
                    .send_token_request(|| self.http.post(url.clone()).form(&form), budget)
                    .await?;
                match resp.status() {
                    // A token service without the OAuth2 endpoint: the token as a password.
                    StatusCode::NOT_FOUND | StatusCode::METHOD_NOT_ALLOWED => {
                        log::debug!("token service has no OAuth2 endpoint; using GET");
                        self.send_token_request(get, budget).await?
                    }
                    _ => resp,
                }
            }
            None => self.send_token_request(get, budget).await?,
        };
        match answer.status() {
            s if s.is_success() => {}
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
                return Err(self.unauthorized(if creds.is_some() {
                    "the token service refused the credentials"
                } else {
                    "the token service refused anonymous access"
                }))
            }
            s => {
                return Err(SourceError::Status {
                    url: format!("token service {}", describe_origin(&url)),
                    status: s.as_u16(),
                })
            }
        }
        let body = read_capped(answer, 1 << 20, "token answer").await?;
        // Parsed loosely and never echoed: the body holds the secret.
        let v: serde_json::Value =
            serde_json::from_slice(&body).map_err(|_| SourceError::Protocol {
                what: format!("token service {}", describe_origin(&url)),
                detail: "the answer is not JSON".into(),
            })?;
        let field = |k: &str| {
            v.get(k)
                .and_then(|t| t.as_str())
                .filter(|t| !t.is_empty())
                .map(str::to_string)
        };
        let value = field("token")
            .or_else(|| field("access_token"))
            .ok_or_else(|| self.unauthorized("the token service's answer holds no token"))?;
        let life = Duration::from_secs(
            v.get("expires_in")
                .and_then(|e| e.as_u64())
                .unwrap_or(DEFAULT_TOKEN_LIFE)
                .max(1),
        );
        // Renew a little early, so a token does not expire between check and use.
        let expires = Instant::now() + life.mul_f64(0.9);
        log::debug!(
            "got a bearer token for scope {scope:?} from {}, valid {life:?}",
            describe_origin(&url)
        );
        lock(&self.tokens).insert(scope.to_string(), Token { value, expires });
        Ok(())
    }

    /// Send a token request, retrying transport failures and transient answers from
    /// `budget`.
    async fn send_token_request(
        &self,
        build: impl Fn() -> RequestBuilder,
        budget: &mut Budget,
    ) -> Result<Response, SourceError> {
        let what = "token service";
        loop {
            let wait = match build().send().await {
                Ok(r) => {
                    let failure = SourceError::Status {
                        url: what.into(),
                        status: r.status().as_u16(),
                    };
                    match budget.retry(what, &failure, None) {
                        Some(wait) => wait,
                        None => return Ok(r),
                    }
                }
                Err(e) => {
                    let err = SourceError::Unreachable {
                        target: what.into(),
                        detail: self.unreachable(&e).to_string(),
                    };
                    match budget.retry(what, &err, None) {
                        Some(wait) => wait,
                        None => return Err(err),
                    }
                }
            };
            tokio::time::sleep(wait).await;
        }
    }
}
