//! A token service as the docker token spec describes it, for distribution's `auth: token`:
//! `GET /token?service=&scope=` with optional Basic credentials (answers `token`), and
//! `POST /token` with `grant_type=refresh_token` or `password` (answers `access_token`).
//! Tokens are ES256 JWTs with the signing certificate in `x5c`.
//!
//! distribution accepts a token until 60 s past its `exp`; to make the registry refuse a
//! token a few seconds after issue, `exp` is set that much earlier (`registry_life`).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;
use ring::signature::{EcdsaKeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
use serde_json::json;

use super::certs::TokenSigner;
use super::http::{Handler, Reply, Request, Server};

/// distribution's leeway on `exp`.
const REGISTRY_LEEWAY: i64 = 60;

/// One request the service answered.
#[derive(Debug, Clone)]
pub struct TokenRequest {
    pub method: String,
    /// The user it authenticated, if any.
    pub user: Option<String>,
    pub grant_type: Option<String>,
    pub scope: String,
    /// Actions granted on the scope's resource.
    pub granted: Vec<String>,
    pub status: u16,
}

/// What the service knows and does; change it at any time.
pub struct TokenState {
    /// user → password.
    pub users: HashMap<String, String>,
    /// refresh (identity) token → user.
    pub refresh_tokens: HashMap<String, String>,
    /// Repositories anyone may pull.
    pub public: HashSet<String>,
    /// The `expires_in` the answers state.
    pub expires_in: u64,
    /// Seconds after issue that the registry still accepts a token.
    pub registry_life: i64,
    pub log: Vec<TokenRequest>,
    /// Every token handed out.
    pub issued: Vec<String>,
}

struct Signer {
    key: EcdsaKeyPair,
    x5c: String,
    issuer: String,
    service: String,
}

impl Signer {
    fn sign(&self, sub: &str, access: serde_json::Value, life: i64) -> String {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("clock")
            .as_secs() as i64;
        let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
        let header = json!({"typ": "JWT", "alg": "ES256", "x5c": [self.x5c]});
        let claims = json!({
            "iss": self.issuer,
            "sub": sub,
            "aud": self.service,
            "exp": now + life - REGISTRY_LEEWAY,
            "nbf": now - 1,
            "iat": now,
            "jti": format!("{:016x}", rand::random::<u64>()),
            "access": access,
        });
        let input = format!(
            "{}.{}",
            b64(header.to_string().as_bytes()),
            b64(claims.to_string().as_bytes())
        );
        let rng = ring::rand::SystemRandom::new();
        let sig = self.key.sign(&rng, input.as_bytes()).expect("sign JWT");
        format!("{input}.{}", b64(sig.as_ref()))
    }
}

/// A running token service; stopped on drop.
pub struct TokenServer {
    server: Server,
    state: Arc<Mutex<TokenState>>,
    signer: Arc<Signer>,
}

pub const SERVICE: &str = "orasfs-test-registry";
pub const ISSUER: &str = "orasfs-test-issuer";

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// `repository:NAME:ACTIONS` → (type, name, actions).
fn parse_scope(scope: &str) -> Option<(String, String, Vec<String>)> {
    let (kind, rest) = scope.split_once(':')?;
    let (name, actions) = rest.rsplit_once(':')?;
    Some((
        kind.to_string(),
        name.to_string(),
        actions.split(',').map(str::to_string).collect(),
    ))
}

fn basic_user(req: &Request) -> Option<(String, String)> {
    let v = req.header("authorization")?.strip_prefix("Basic ")?;
    let raw = base64::engine::general_purpose::STANDARD.decode(v).ok()?;
    let raw = String::from_utf8(raw).ok()?;
    let (u, p) = raw.split_once(':')?;
    Some((u.to_string(), p.to_string()))
}

fn answer(state: &Mutex<TokenState>, signer: &Signer, req: Request) -> Reply {
    let scope = req.param("scope").unwrap_or_default();
    let grant_type = req.param("grant_type");
    let mut st = lock(state);
    // Who is asking: None = anonymous, Some(Err) = bad credentials.
    let who: Option<Result<String, ()>> = match (req.method.as_str(), grant_type.as_deref()) {
        ("POST", Some("refresh_token")) => Some(
            req.param("refresh_token")
                .and_then(|t| st.refresh_tokens.get(&t).cloned())
                .ok_or(()),
        ),
        ("POST", Some("password")) => {
            let (u, p) = (req.param("username"), req.param("password"));
            Some(match (u, p) {
                (Some(u), Some(p)) if st.users.get(&u) == Some(&p) => Ok(u),
                _ => Err(()),
            })
        }
        ("POST", _) => Some(Err(())),
        _ => basic_user(&req).map(|(u, p)| {
            if st.users.get(&u) == Some(&p) {
                Ok(u)
            } else {
                Err(())
            }
        }),
    };
    let mut record = TokenRequest {
        method: req.method.clone(),
        user: None,
        grant_type: grant_type.clone(),
        scope: scope.clone(),
        granted: Vec::new(),
        status: 200,
    };
    let user = match who {
        Some(Err(())) => {
            record.status = 401;
            st.log.push(record);
            return Reply::json(401, &json!({"errors": [{"code": "UNAUTHORIZED"}]}));
        }
        Some(Ok(u)) => Some(u),
        None => None,
    };
    record.user = user.clone();
    let mut access = Vec::new();
    if let Some((kind, name, actions)) = parse_scope(&scope) {
        let granted: Vec<String> = actions
            .into_iter()
            .filter(|a| match (&user, a.as_str()) {
                (Some(_), _) => true,
                (None, "pull") => kind == "repository" && st.public.contains(&name),
                (None, _) => false,
            })
            .collect();
        if !granted.is_empty() {
            access.push(json!({"type": kind, "name": name, "actions": granted}));
        }
        record.granted = granted;
    }
    let token = signer.sign(
        user.as_deref().unwrap_or(""),
        json!(access),
        st.registry_life,
    );
    st.issued.push(token.clone());
    let expires_in = st.expires_in;
    st.log.push(record);
    // OAuth2 answers carry `access_token`, the docker token endpoint `token`.
    let key = if req.method == "POST" {
        "access_token"
    } else {
        "token"
    };
    Reply::json(200, &json!({ key: token, "expires_in": expires_in }))
}

impl TokenServer {
    pub fn start(signer: &TokenSigner) -> TokenServer {
        let key = EcdsaKeyPair::from_pkcs8(
            &ECDSA_P256_SHA256_FIXED_SIGNING,
            &signer.key_pkcs8,
            &ring::rand::SystemRandom::new(),
        )
        .expect("token key");
        let signer = Arc::new(Signer {
            key,
            x5c: base64::engine::general_purpose::STANDARD.encode(&signer.cert_der),
            issuer: ISSUER.into(),
            service: SERVICE.into(),
        });
        let state = Arc::new(Mutex::new(TokenState {
            users: HashMap::new(),
            refresh_tokens: HashMap::new(),
            public: HashSet::new(),
            expires_in: 300,
            registry_life: 300,
            log: Vec::new(),
            issued: Vec::new(),
        }));
        let (st, sg) = (state.clone(), signer.clone());
        let handler: Handler = Arc::new(move |req: Request| {
            if req.path() != "/token" {
                return Reply::new(404);
            }
            answer(&st, &sg, req)
        });
        TokenServer {
            server: Server::start("127.0.0.1", handler),
            state,
            signer,
        }
    }

    /// The `auth` of a registry that trusts this service's tokens (signed by `signer`).
    pub fn registry_auth(&self, signer: &TokenSigner) -> super::registry::Auth {
        super::registry::Auth::Token {
            realm: self.realm(),
            service: SERVICE.into(),
            issuer: ISSUER.into(),
            bundle: signer.bundle.clone(),
        }
    }

    /// The realm to configure: `http://127.0.0.1:PORT/token`.
    pub fn realm(&self) -> String {
        format!("http://{}/token", self.server.addr())
    }

    pub fn state(&self) -> MutexGuard<'_, TokenState> {
        lock(&self.state)
    }

    /// A token for `sub` with these actions on repositories, valid for 300 s.
    pub fn mint(&self, sub: &str, repos: &[&str], actions: &[&str]) -> String {
        let access: Vec<serde_json::Value> = repos
            .iter()
            .map(|r| json!({"type": "repository", "name": r, "actions": actions}))
            .collect();
        self.signer.sign(sub, json!(access), 300)
    }

    /// A function giving `Authorization` values with pull and push on a repository, for
    /// a [`super::registry::Pusher`].
    pub fn pusher_auth(&self) -> super::registry::AuthFn {
        let signer = self.signer.clone();
        Box::new(move |repo: &str| {
            let access = json!([{"type": "repository", "name": repo, "actions": ["pull", "push"]}]);
            Some(format!("Bearer {}", signer.sign("pusher", access, 300)))
        })
    }

    /// Requests answered so far.
    pub fn requests(&self) -> Vec<TokenRequest> {
        self.state().log.clone()
    }
}
