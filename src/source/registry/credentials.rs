//! Where registry credentials come from, in order:
//!
//! 1. `--username` with `--password-stdin`;
//! 2. `--auth-file FILE` — when given, the only file read;
//! 3. `$REGISTRY_AUTH_FILE`, then `$XDG_RUNTIME_DIR/containers/auth.json`, then
//!    `$DOCKER_CONFIG/config.json` (or `~/.docker/config.json` when `DOCKER_CONFIG` is
//!    unset, as Docker does) — the first file that has credentials for the registry wins.
//!
//! Every file has the shape Docker's `config.json` and containers' `auth.json` share:
//! `auths` (base64 `auth`, or `username`/`password`, or `identitytoken`), `credHelpers`
//! (registry → helper) and `credsStore` (a helper for every registry). In one file a
//! `credHelpers` entry wins over an `auths` entry, which wins over `credsStore`. A helper
//! is `docker-credential-<name> get`, given the server URL on standard input and
//! answering `{"Username", "Secret"}`; the user name `<token>` marks an identity token.
//!
//! Nothing here ever puts a file's content, a password or a token into an error or a log
//! line: a malformed file is reported by its path and the position of the fault only.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use serde::Deserialize;

use super::Credentials;

/// Auth files larger than this are refused.
const MAX_AUTH_FILE: u64 = 4 << 20;
/// A credential helper that has not answered after this long is killed.
const HELPER_TIMEOUT: Duration = Duration::from_secs(30);
/// The key and server URL Docker uses for Docker Hub.
const DOCKER_HUB_URL: &str = "https://index.docker.io/v1/";

/// Read a password from standard input (one line; the trailing newline is dropped).
pub fn password_from_stdin() -> Result<String, String> {
    let mut s = String::new();
    std::io::stdin()
        .take(64 * 1024)
        .read_to_string(&mut s)
        .map_err(|e| format!("reading the password from standard input: {e}"))?;
    let p = s.trim_end_matches(['\n', '\r']).to_string();
    if p.is_empty() {
        return Err("--password-stdin: standard input held no password".into());
    }
    Ok(p)
}

/// The credentials for `registry`, if any source has them. Errors are one line naming the
/// file or helper at fault.
pub fn resolve(
    registry: &str,
    explicit: Option<Credentials>,
    auth_file: Option<&Path>,
) -> Result<Option<Credentials>, String> {
    if explicit.is_some() {
        return Ok(explicit);
    }
    resolve_in(registry, &search_path(auth_file, &Env::from_process()))
}

/// The environment variables that choose the auth files.
#[derive(Debug, Default, Clone)]
pub struct Env {
    pub registry_auth_file: Option<PathBuf>,
    pub xdg_runtime_dir: Option<PathBuf>,
    pub docker_config: Option<PathBuf>,
    pub home: Option<PathBuf>,
}

impl Env {
    pub fn from_process() -> Self {
        let var = |k: &str| {
            std::env::var_os(k)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        };
        Self {
            registry_auth_file: var("REGISTRY_AUTH_FILE"),
            xdg_runtime_dir: var("XDG_RUNTIME_DIR"),
            docker_config: var("DOCKER_CONFIG"),
            home: var("HOME"),
        }
    }
}

/// One file to look in, and whether it must exist.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub path: PathBuf,
    pub required: bool,
}

/// The files consulted, in order.
pub fn search_path(auth_file: Option<&Path>, env: &Env) -> Vec<Candidate> {
    if let Some(f) = auth_file {
        return vec![Candidate {
            path: f.to_path_buf(),
            required: true,
        }];
    }
    let mut out = Vec::new();
    let mut push = |path: PathBuf| {
        out.push(Candidate {
            path,
            required: false,
        })
    };
    if let Some(f) = &env.registry_auth_file {
        push(f.clone());
    }
    if let Some(d) = &env.xdg_runtime_dir {
        push(d.join("containers/auth.json"));
    }
    match (&env.docker_config, &env.home) {
        (Some(d), _) => push(d.join("config.json")),
        (None, Some(h)) => push(h.join(".docker/config.json")),
        (None, None) => {}
    }
    out
}

/// Look through `candidates` in order.
pub fn resolve_in(registry: &str, candidates: &[Candidate]) -> Result<Option<Credentials>, String> {
    for c in candidates {
        let Some(file) = read_auth_file(&c.path, c.required)? else {
            continue;
        };
        if let Some(creds) = file.credentials_for(registry, &c.path)? {
            log::debug!("credentials for {registry} from {}", creds.origin.as_str());
            return Ok(Some(creds));
        }
    }
    Ok(None)
}

#[derive(Deserialize, Default)]
struct AuthFile {
    #[serde(default)]
    auths: BTreeMap<String, AuthEntry>,
    #[serde(default, rename = "credHelpers")]
    cred_helpers: BTreeMap<String, String>,
    #[serde(default, rename = "credsStore")]
    creds_store: Option<String>,
}

/// One `auths` entry. No `Debug`: it holds secrets.
#[derive(Deserialize, Default)]
struct AuthEntry {
    #[serde(default)]
    auth: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
    #[serde(default)]
    identitytoken: Option<String>,
}

/// Read and parse an auth file; `None` when it does not exist and need not.
fn read_auth_file(path: &Path, required: bool) -> Result<Option<AuthFile>, String> {
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => {
            log::debug!("no auth file at {}", path.display());
            return Ok(None);
        }
        Err(e) => return Err(format!("auth file {}: {e}", path.display())),
    };
    let mut bytes = Vec::new();
    file.take(MAX_AUTH_FILE + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("auth file {}: {e}", path.display()))?;
    if bytes.len() as u64 > MAX_AUTH_FILE {
        return Err(format!(
            "auth file {} is over {} bytes",
            path.display(),
            MAX_AUTH_FILE
        ));
    }
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(Some(AuthFile::default()));
    }
    // serde's messages may quote values from the file, so only its position is reported.
    serde_json::from_slice(&bytes).map(Some).map_err(|e| {
        let kind = match e.classify() {
            serde_json::error::Category::Syntax | serde_json::error::Category::Eof => {
                "not valid JSON"
            }
            _ => "not in the auth file format (auths, credHelpers, credsStore)",
        };
        format!(
            "auth file {} is malformed: {kind} (line {}, column {})",
            path.display(),
            e.line(),
            e.column()
        )
    })
}

/// A registry name as `auths` and `credHelpers` keys are compared: lowercased, without
/// scheme, and with Docker Hub's aliases folded into `docker.io`. A key without a scheme
/// that has a path names one repository or namespace (containers' auth.json allows that)
/// and never matches a whole registry.
pub fn normalize_key(key: &str) -> Option<String> {
    let k = key.trim().to_ascii_lowercase();
    let (had_scheme, rest) = match k
        .strip_prefix("https://")
        .or_else(|| k.strip_prefix("http://"))
    {
        Some(r) => (true, r.to_string()),
        None => (false, k.clone()),
    };
    let host = match rest.split_once('/') {
        Some((h, path)) if had_scheme || path.is_empty() => h.to_string(),
        Some(_) => return None,
        None => rest,
    };
    if host.is_empty() {
        return None;
    }
    Some(match host.as_str() {
        "index.docker.io" | "registry-1.docker.io" | "docker.io" => "docker.io".to_string(),
        _ => host,
    })
}

/// The server URL a credential helper is asked about.
fn helper_server_url(registry: &str) -> String {
    match normalize_key(registry).as_deref() {
        Some("docker.io") => DOCKER_HUB_URL.to_string(),
        _ => registry.to_string(),
    }
}

impl AuthFile {
    fn credentials_for(&self, registry: &str, path: &Path) -> Result<Option<Credentials>, String> {
        let Some(want) = normalize_key(registry) else {
            return Ok(None);
        };
        // Exact key first, then any key that normalizes to the same registry.
        let find = |keys: &mut dyn Iterator<Item = &String>| -> Option<String> {
            let keys: Vec<&String> = keys.collect();
            keys.iter()
                .find(|k| k.as_str() == registry)
                .or_else(|| {
                    keys.iter()
                        .find(|k| normalize_key(k).as_deref() == Some(want.as_str()))
                })
                .map(|k| k.to_string())
        };
        if let Some(key) = find(&mut self.cred_helpers.keys()) {
            let helper = &self.cred_helpers[&key];
            match run_helper(helper, &helper_server_url(registry), path)? {
                HelperAnswer::Found(c) => return Ok(Some(c)),
                HelperAnswer::NotFound => {}
            }
        }
        if let Some(key) = find(&mut self.auths.keys()) {
            if let Some(c) = self.auths[&key].credentials(&key, path)? {
                return Ok(Some(c));
            }
        }
        if let Some(store) = self.creds_store.as_deref().filter(|s| !s.is_empty()) {
            if let HelperAnswer::Found(c) = run_helper(store, &helper_server_url(registry), path)? {
                return Ok(Some(c));
            }
        }
        Ok(None)
    }
}

impl AuthEntry {
    fn credentials(&self, key: &str, path: &Path) -> Result<Option<Credentials>, String> {
        let origin = format!("auth file {}", path.display());
        let nonempty = |s: &Option<String>| s.clone().filter(|s| !s.is_empty());
        let (mut username, mut password) = (nonempty(&self.username), nonempty(&self.password));
        if let Some(auth) = nonempty(&self.auth) {
            let bad = || {
                format!(
                    "auth file {} is malformed: the \"auth\" of {key:?} is not base64 of USER:PASSWORD",
                    path.display()
                )
            };
            let raw = base64::engine::general_purpose::STANDARD
                .decode(auth.trim())
                .map_err(|_| bad())?;
            let raw = String::from_utf8(raw).map_err(|_| bad())?;
            let (u, p) = raw.split_once(':').ok_or_else(bad)?;
            username = Some(u.to_string());
            password = Some(p.to_string());
        }
        if let Some(token) = nonempty(&self.identitytoken) {
            return Ok(Some(Credentials::identity_token(
                username.unwrap_or_default(),
                token,
                origin,
            )));
        }
        match (username, password) {
            (Some(u), Some(p)) => Ok(Some(Credentials::new(u, p, origin))),
            // Docker writes `{}` placeholders when a credsStore keeps the secret.
            _ => Ok(None),
        }
    }
}

enum HelperAnswer {
    Found(Credentials),
    NotFound,
}

#[derive(Deserialize)]
struct HelperOutput {
    #[serde(rename = "Username", default)]
    username: String,
    #[serde(rename = "Secret", default)]
    secret: String,
}

/// Run `docker-credential-<name> get` for `server`.
fn run_helper(name: &str, server: &str, config: &Path) -> Result<HelperAnswer, String> {
    if name.is_empty()
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
    {
        return Err(format!(
            "auth file {} names the credential helper {name:?}, which is not a valid helper name",
            config.display()
        ));
    }
    let program = format!("docker-credential-{name}");
    let mut child = match Command::new(&program)
        .arg("get")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    {
        Ok(c) => c,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            log::warn!(
                "{program} (named in {}) is not installed; going on without its credentials",
                config.display()
            );
            return Ok(HelperAnswer::NotFound);
        }
        Err(e) => return Err(format!("credential helper {program}: {e}")),
    };
    if let Some(mut stdin) = child.stdin.take() {
        // A helper that exits without reading its input is judged by its answer below.
        let _ = stdin.write_all(server.as_bytes());
    }
    let mut stdout = child.stdout.take();
    let mut stderr = child.stderr.take();
    let out_reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        if let Some(s) = stdout.as_mut() {
            let _ = s.take(1 << 20).read_to_end(&mut buf);
        }
        buf
    });
    let err_reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        if let Some(s) = stderr.as_mut() {
            let _ = s.take(64 << 10).read_to_end(&mut buf);
        }
        buf
    });
    let deadline = Instant::now() + HELPER_TIMEOUT;
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break s,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "credential helper {program} did not answer within {}s",
                    HELPER_TIMEOUT.as_secs()
                ));
            }
            Err(e) => return Err(format!("credential helper {program}: {e}")),
        }
    };
    let out = out_reader.join().unwrap_or_default();
    let err = err_reader.join().unwrap_or_default();
    if !status.success() {
        let text = String::from_utf8_lossy(if out.is_empty() { &err } else { &out }).to_string();
        if text.to_ascii_lowercase().contains("not found") {
            return Ok(HelperAnswer::NotFound);
        }
        let first: String = text
            .lines()
            .next()
            .unwrap_or("")
            .chars()
            .filter(|c| !c.is_control())
            .take(160)
            .collect();
        return Err(format!(
            "credential helper {program} failed ({status}){}",
            if first.is_empty() {
                String::new()
            } else {
                format!(": {first}")
            }
        ));
    }
    let answer: HelperOutput = serde_json::from_slice(&out).map_err(|e| {
        format!(
            "credential helper {program} answered something other than {{\"Username\", \"Secret\"}} JSON (line {}, column {})",
            e.line(),
            e.column()
        )
    })?;
    if answer.secret.is_empty() {
        return Ok(HelperAnswer::NotFound);
    }
    let origin = format!("credential helper {program}");
    Ok(HelperAnswer::Found(if answer.username == "<token>" {
        Credentials::identity_token(String::new(), answer.secret, origin)
    } else {
        Credentials::new(answer.username, answer.secret, origin)
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(s: &str) -> String {
        base64::engine::general_purpose::STANDARD.encode(s)
    }

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, text).unwrap();
        p
    }

    fn only(path: &Path) -> Vec<Candidate> {
        vec![Candidate {
            path: path.to_path_buf(),
            required: true,
        }]
    }

    #[test]
    fn keys_normalize() {
        assert_eq!(
            normalize_key("127.0.0.1:5000").as_deref(),
            Some("127.0.0.1:5000")
        );
        assert_eq!(
            normalize_key("https://127.0.0.1:5000").as_deref(),
            Some("127.0.0.1:5000")
        );
        assert_eq!(
            normalize_key("http://Reg.Example:5000/v2/").as_deref(),
            Some("reg.example:5000")
        );
        assert_eq!(normalize_key(DOCKER_HUB_URL).as_deref(), Some("docker.io"));
        assert_eq!(normalize_key("docker.io").as_deref(), Some("docker.io"));
        assert_eq!(
            normalize_key("registry-1.docker.io").as_deref(),
            Some("docker.io")
        );
        assert_eq!(normalize_key("ghcr.io/org/repo"), None);
        assert_eq!(normalize_key("ghcr.io/").as_deref(), Some("ghcr.io"));
        assert_eq!(normalize_key(""), None);
    }

    #[test]
    fn search_order() {
        let env = Env {
            registry_auth_file: Some("/r/auth.json".into()),
            xdg_runtime_dir: Some("/run/user/1".into()),
            docker_config: None,
            home: Some("/home/u".into()),
        };
        let paths: Vec<PathBuf> = search_path(None, &env)
            .into_iter()
            .map(|c| c.path)
            .collect();
        assert_eq!(
            paths,
            [
                PathBuf::from("/r/auth.json"),
                "/run/user/1/containers/auth.json".into(),
                "/home/u/.docker/config.json".into()
            ]
        );
        let env = Env {
            docker_config: Some("/d".into()),
            ..env
        };
        assert_eq!(
            search_path(None, &env).last().unwrap().path,
            PathBuf::from("/d/config.json")
        );
        let explicit = search_path(Some(Path::new("/x.json")), &env);
        assert_eq!(explicit.len(), 1);
        assert!(explicit[0].required);
    }

    #[test]
    fn auths_forms() {
        let d = tempfile::tempdir().unwrap();
        let f = write(
            d.path(),
            "a.json",
            &format!(
                r#"{{"auths": {{
                    "https://one.example:5000": {{"auth": "{}"}},
                    "two.example": {{"username": "bob", "password": "pw2"}},
                    "three.example": {{"identitytoken": "idtok"}},
                    "{DOCKER_HUB_URL}": {{"auth": "{}"}},
                    "empty.example": {{}}
                }}, "HttpHeaders": {{"X": "y"}}}}"#,
                b64("alice:p:w1"),
                b64("hub:hubpw")
            ),
        );
        let get = |r: &str| resolve_in(r, &only(&f)).unwrap();
        let one = get("one.example:5000").unwrap();
        assert_eq!(
            (one.username.as_str(), one.password.as_str()),
            ("alice", "p:w1")
        );
        assert!(one.identity_token.is_none());
        assert!(one.origin.contains("a.json"));
        let two = get("two.example").unwrap();
        assert_eq!(
            (two.username.as_str(), two.password.as_str()),
            ("bob", "pw2")
        );
        let three = get("three.example").unwrap();
        assert_eq!(three.identity_token.as_deref(), Some("idtok"));
        assert_eq!(get("docker.io").unwrap().username, "hub");
        assert_eq!(get("index.docker.io").unwrap().username, "hub");
        assert!(get("empty.example").is_none());
        assert!(get("other.example").is_none());
        assert!(get("one.example").is_none(), "the port is part of the key");
    }

    #[test]
    fn malformed_files_name_the_file_not_the_content() {
        let d = tempfile::tempdir().unwrap();
        let secret = "s3cr3t-value";
        for (name, text) in [
            (
                "syntax.json",
                format!(r#"{{"auths": {{"x": {{"auth": "{secret}""#),
            ),
            (
                "types.json",
                format!(r#"{{"auths": {{"x": {{"auth": ["{secret}"]}}}}}}"#),
            ),
            (
                "base64.json",
                format!(r#"{{"auths": {{"x": {{"auth": "{secret}!"}}}}}}"#),
            ),
            (
                "colon.json",
                format!(r#"{{"auths": {{"x": {{"auth": "{}"}}}}}}"#, b64(secret)),
            ),
        ] {
            let f = write(d.path(), name, &text);
            let e = resolve_in("x", &only(&f)).map(|_| ()).unwrap_err();
            assert!(e.contains(name), "{e}");
            assert!(!e.contains(secret), "{e}");
            assert!(!e.contains('\n'), "{e}");
        }
    }

    #[test]
    fn missing_files() {
        let d = tempfile::tempdir().unwrap();
        let missing = d.path().join("nope.json");
        assert!(resolve_in("x", &only(&missing))
            .unwrap_err()
            .contains("nope.json"));
        let optional = vec![Candidate {
            path: missing,
            required: false,
        }];
        assert!(resolve_in("x", &optional).unwrap().is_none());
    }

    #[test]
    fn first_file_with_the_registry_wins() {
        let d = tempfile::tempdir().unwrap();
        let a = write(
            d.path(),
            "a.json",
            r#"{"auths": {"other": {"auth": "dTpw"}}}"#,
        );
        let b = write(
            d.path(),
            "b.json",
            r#"{"auths": {"reg.example": {"username": "b", "password": "p"}}}"#,
        );
        let c = write(
            d.path(),
            "c.json",
            r#"{"auths": {"reg.example": {"username": "c", "password": "p"}}}"#,
        );
        let cands: Vec<Candidate> = [a, b, c]
            .into_iter()
            .map(|path| Candidate {
                path,
                required: false,
            })
            .collect();
        assert_eq!(
            resolve_in("reg.example", &cands).unwrap().unwrap().username,
            "b"
        );
    }

    /// Helpers are found on PATH, which a unit test cannot change safely; a helper script is
    /// exercised end to end in tests/registry.rs.
    #[test]
    fn helper_names_are_checked_and_absent_helpers_skipped() {
        let d = tempfile::tempdir().unwrap();
        let f = write(
            d.path(),
            "h.json",
            r#"{"credHelpers": {"reg.example": "../evil"}}"#,
        );
        assert!(resolve_in("reg.example", &only(&f))
            .unwrap_err()
            .contains("not a valid helper name"));
        let f = write(
            d.path(),
            "s.json",
            r#"{"credsStore": "orasfs-test-no-such-helper"}"#,
        );
        assert!(resolve_in("reg.example", &only(&f)).unwrap().is_none());
    }
}
