//! The registry client against real servers on loopback: `docker-registry` 2.8 with
//! htpasswd (Basic) and token auth, TLS with a test CA, a token service signing JWTs,
//! proxies that redirect blobs to another host or paginate, and real `orasfs` mounts.
//! Every server and mount is stopped on drop, also when an assertion fails.

mod common;

use std::fs;
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use base64::Engine;
use serde_json::json;

use common::certs;
use common::http::{forward, Reply, Request, Server};
use common::token::TokenServer;
use common::{htpasswd, names, Auth, Config, Failed, Launch, Mount, Pusher, Registry};

const USER: &str = "alice";
const PASSWORD: &str = "Pw-7f3e9c1b-never-logged";

fn b64(s: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

fn write(dir: &Path, rel: &str, text: &str) -> PathBuf {
    let p = dir.join(rel);
    fs::create_dir_all(p.parent().unwrap()).unwrap();
    fs::write(&p, text).unwrap();
    p
}

/// An auth file with one `auths` entry.
fn auths(key: &str, entry: serde_json::Value) -> String {
    json!({ "auths": { key: entry } }).to_string()
}

fn password_stdin(password: &str) -> Launch {
    Launch::default()
        .arg("--username")
        .arg(USER)
        .arg("--password-stdin")
        .stdin(format!("{password}\n"))
}

fn expect_mount(source: &str, run: &Launch, how: &str) -> Mount {
    run.clone()
        .source(source)
        .try_mount()
        .unwrap_or_else(|f| panic!("{how}: mount failed: {}", f.stderr))
}

/// A one-line "authentication required" failure naming the registry and the fix.
fn assert_auth_required(f: &Failed, registry: &str) {
    assert!(!f.status.success());
    let line = f.stderr.trim();
    assert_eq!(line.lines().count(), 1, "one line: {line}");
    assert!(line.contains("authentication required"), "{line}");
    assert!(line.contains(registry), "{line}");
    assert!(line.contains("--username"), "{line}");
    assert!(line.contains("--auth-file"), "{line}");
}

/// A credential helper script answering for `server` only, logging what it was asked.
fn credential_helper(dir: &Path, name: &str, server: &str, user: &str, secret: &str) -> PathBuf {
    let bin = dir.join(format!("helper-bin-{name}"));
    fs::create_dir_all(&bin).unwrap();
    let log = bin.join("asked.log");
    let script = bin.join(format!("docker-credential-{name}"));
    fs::write(
        &script,
        format!(
            "#!/bin/sh\nread -r url\necho \"$1 $url\" >> {log}\n\
             if [ \"$1\" = get ] && [ \"$url\" = \"{server}\" ]; then\n\
             printf '{{\"ServerURL\":\"%s\",\"Username\":\"{user}\",\"Secret\":\"{secret}\"}}' \"$url\"\n\
             else echo 'credentials not found in native keychain'; exit 1; fi\n",
            log = log.display()
        ),
    )
    .unwrap();
    fs::set_permissions(&script, fs::Permissions::from_mode(0o755)).unwrap();
    bin
}

#[test]
fn basic_auth_credentials_from_every_source() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let reg = Registry::with(&Config {
        auth: Auth::Htpasswd(htpasswd(dir, &[(USER, PASSWORD)])),
        ..Config::default()
    });
    let addr = reg.addr().to_string();
    let content = b"hello, private world\n";
    Pusher::basic(&reg.url(""), None, USER, PASSWORD).push_artifact(
        "private/data",
        "v1",
        &[("hello.txt", content)],
    );
    let source = format!("{addr}/private/data:v1");
    let check = |run: Launch, how: &str| {
        let m = expect_mount(&source, &run, how);
        assert_eq!(fs::read(m.join("hello.txt")).unwrap(), content, "{how}");
        m.finish();
    };
    let good = json!({ "auth": b64(&format!("{USER}:{PASSWORD}")) });
    let fields = json!({ "username": USER, "password": PASSWORD });

    check(password_stdin(PASSWORD), "--username --password-stdin");

    let f = write(dir, "explicit.json", &auths(&addr, good.clone()));
    check(
        Launch::default()
            .arg("--auth-file")
            .arg(f.to_str().unwrap()),
        "--auth-file",
    );

    let f = write(
        dir,
        "registry-auth.json",
        &auths(&format!("https://{addr}"), fields.clone()),
    );
    check(
        Launch::default().env("REGISTRY_AUTH_FILE", f.to_str().unwrap()),
        "$REGISTRY_AUTH_FILE",
    );

    let run_dir = dir.join("xdg-run");
    write(
        &run_dir,
        "containers/auth.json",
        &auths(&addr, good.clone()),
    );
    check(
        Launch::default().env("XDG_RUNTIME_DIR", run_dir.to_str().unwrap()),
        "$XDG_RUNTIME_DIR/containers/auth.json",
    );

    let docker_config = dir.join("docker-config");
    write(
        &docker_config,
        "config.json",
        &auths(&format!("http://{addr}/"), good.clone()),
    );
    check(
        Launch::default().env("DOCKER_CONFIG", docker_config.to_str().unwrap()),
        "$DOCKER_CONFIG/config.json",
    );

    // ~/.docker/config.json naming a credential helper for this registry only.
    let home = dir.join("home");
    let bin = credential_helper(dir, "test", &addr, USER, PASSWORD);
    write(
        &home,
        ".docker/config.json",
        &json!({"credHelpers": {addr.clone(): "test"}, "auths": {addr.clone(): {}}}).to_string(),
    );
    check(
        Launch::default()
            .env("HOME", home.to_str().unwrap())
            .path(&bin),
        "credHelpers",
    );
    let asked = fs::read_to_string(bin.join("asked.log")).unwrap();
    assert_eq!(asked.trim(), format!("get {addr}"));

    // credsStore: one helper for every registry.
    let store_home = dir.join("store-home");
    let store_bin = credential_helper(dir, "store", &addr, USER, PASSWORD);
    write(
        &store_home,
        ".docker/config.json",
        &json!({"credsStore": "store"}).to_string(),
    );
    check(
        Launch::default()
            .env("HOME", store_home.to_str().unwrap())
            .path(&store_bin),
        "credsStore",
    );

    // --auth-file is the only file read when given: a wrong password there is not
    // rescued by good credentials in $DOCKER_CONFIG.
    let wrong = write(
        dir,
        "wrong.json",
        &auths(&addr, json!({"username": USER, "password": "not-it"})),
    );
    let f = Launch::default()
        .arg("--auth-file")
        .arg(wrong.to_str().unwrap())
        .env("DOCKER_CONFIG", docker_config.to_str().unwrap())
        .source(&source)
        .fail();
    assert!(f.stderr.contains("refused"), "{}", f.stderr);
    assert!(
        f.stderr.contains("wrong.json"),
        "names where they came from: {}",
        f.stderr
    );
    assert!(!f.stderr.contains("not-it"));

    // Without credentials: refused before mounting, saying what to do.
    let f = Launch::default().source(&source).fail();
    assert_auth_required(&f, &addr);

    // The registry root as well: refused before mounting without credentials or with
    // wrong ones, mounted with good ones.
    let f = Launch::default().source(&addr).fail();
    assert_auth_required(&f, &addr);
    let f = password_stdin("wrong-password").source(&addr).fail();
    assert!(f.stderr.contains("refused"), "{}", f.stderr);
    let m = expect_mount(&addr, &password_stdin(PASSWORD), "root with a password");
    assert_eq!(
        fs::read(m.join("private/data/v1/hello.txt")).unwrap(),
        content
    );
    m.finish();

    // A wrong password on standard input.
    let f = password_stdin("wrong-password").source(&source).fail();
    assert!(f.stderr.contains("authentication required"), "{}", f.stderr);
    assert!(f.stderr.contains("refused"), "{}", f.stderr);
    assert!(!f.stderr.contains("wrong-password"));

    // A malformed auth file: one line naming the file, never its content.
    let broken = write(
        dir,
        "broken.json",
        &format!(r#"{{"auths": {{"{addr}": {{"auth": ["{PASSWORD}"]}}}}}}"#),
    );
    let f = Launch::default()
        .env("REGISTRY_AUTH_FILE", broken.to_str().unwrap())
        .source(&source)
        .fail();
    let line = f.stderr.trim();
    assert_eq!(line.lines().count(), 1, "{line}");
    assert!(
        line.contains("broken.json") && line.contains("malformed"),
        "{line}"
    );
    assert!(!line.contains(PASSWORD), "{line}");
}

/// A token-auth registry with its token service; `alice` may pull anything, anyone may
/// pull `public/data`.
struct TokenSetup {
    _tmp: tempfile::TempDir,
    tokens: TokenServer,
    reg: Registry,
    push: Pusher,
}

const IDENTITY_TOKEN: &str = "idt-5b0d2a77-refresh";

fn token_setup() -> TokenSetup {
    let tmp = tempfile::tempdir().unwrap();
    let signer = certs::token_signer(tmp.path());
    let tokens = TokenServer::start(&signer);
    {
        let mut st = tokens.state();
        st.users.insert(USER.into(), PASSWORD.into());
        st.refresh_tokens.insert(IDENTITY_TOKEN.into(), USER.into());
        st.public.insert("public/data".into());
    }
    let reg = Registry::with(&Config {
        auth: tokens.registry_auth(&signer),
        ..Config::default()
    });
    let push = Pusher::new(&reg.url(""), None, tokens.pusher_auth());
    TokenSetup {
        _tmp: tmp,
        tokens,
        reg,
        push,
    }
}

#[test]
fn token_auth_anonymous_scope_credentials_identity_token_and_wrong_password() {
    let t = token_setup();
    let addr = t.reg.addr().to_string();
    t.push
        .push_artifact("public/data", "v1", &[("open.txt", b"for everyone\n")]);
    t.push
        .push_artifact("private/data", "v1", &[("closed.txt", b"for alice\n")]);

    // Anonymous pull of a public repository: a token for the pull scope, no credentials.
    let m = expect_mount(
        &format!("{addr}/public/data:v1"),
        &Launch::default(),
        "anonymous",
    );
    assert_eq!(fs::read(m.join("open.txt")).unwrap(), b"for everyone\n");
    m.finish();
    let anon: Vec<_> = t
        .tokens
        .requests()
        .into_iter()
        .filter(|r| r.scope == "repository:public/data:pull")
        .collect();
    assert!(!anon.is_empty());
    assert!(anon.iter().all(|r| r.user.is_none() && r.method == "GET"));
    assert!(anon.iter().all(|r| r.granted == ["pull"]));

    // The private repository without credentials: the service grants nothing, the
    // registry refuses, and the mount fails saying how to authenticate.
    let private = format!("{addr}/private/data:v1");
    let f = Launch::default().source(&private).fail();
    assert_auth_required(&f, &addr);

    // With credentials the scope is granted.
    let m = expect_mount(&private, &password_stdin(PASSWORD), "password");
    assert_eq!(fs::read(m.join("closed.txt")).unwrap(), b"for alice\n");
    m.finish();
    assert!(t
        .tokens
        .requests()
        .iter()
        .any(|r| r.user.as_deref() == Some(USER)
            && r.scope == "repository:private/data:pull"
            && r.granted == ["pull"]));

    // A wrong password: the token service refuses, the mount fails.
    let f = password_stdin("not-the-password").source(&private).fail();
    assert!(f.stderr.contains("authentication required"), "{}", f.stderr);
    assert!(f.stderr.contains("token service refused"), "{}", f.stderr);

    // An identity token from an auth file: exchanged with POST grant_type=refresh_token
    // (the answer carries `access_token`, not `token`).
    let dir = t._tmp.path();
    let f = write(
        dir,
        "idtoken.json",
        &auths(&addr, json!({ "identitytoken": IDENTITY_TOKEN })),
    );
    let m = expect_mount(
        &private,
        &Launch::default()
            .arg("--auth-file")
            .arg(f.to_str().unwrap()),
        "identity token",
    );
    assert_eq!(fs::read(m.join("closed.txt")).unwrap(), b"for alice\n");
    m.finish();
    assert!(t.tokens.requests().iter().any(|r| r.method == "POST"
        && r.grant_type.as_deref() == Some("refresh_token")
        && r.user.as_deref() == Some(USER)
        && r.granted == ["pull"]));

    // The `<token>` user name from a credential helper also means an identity token.
    let bin = credential_helper(dir, "tok", &addr, "<token>", IDENTITY_TOKEN);
    let home = dir.join("tok-home");
    write(
        &home,
        ".docker/config.json",
        &json!({"credHelpers": {addr.clone(): "tok"}}).to_string(),
    );
    let before = t.tokens.requests().len();
    let m = expect_mount(
        &private,
        &Launch::default()
            .env("HOME", home.to_str().unwrap())
            .path(&bin),
        "helper identity token",
    );
    assert_eq!(fs::read(m.join("closed.txt")).unwrap(), b"for alice\n");
    m.finish();
    assert!(t.tokens.requests()[before..]
        .iter()
        .any(|r| r.method == "POST" && r.user.as_deref() == Some(USER)));
}

/// Deterministic incompressible bytes.
fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 24) as u8
        })
        .collect()
}

fn read_at(f: &fs::File, offset: u64, len: usize) -> std::io::Result<Vec<u8>> {
    let mut buf = vec![0; len];
    f.read_exact_at(&mut buf, offset)?;
    Ok(buf)
}

#[test]
fn expired_tokens_are_renewed_mid_read_and_a_refused_renewal_fails_the_read() {
    let t = token_setup();
    const MIB: usize = 1 << 20;
    let big = random_bytes(20 * MIB, 7);
    let pushed = t
        .push
        .push_artifact("private/big", "v1", &[("big.bin", &big)]);
    let blob = format!("/blobs/{}", pushed.layers[0].0);
    let scope = "repository:private/big:pull";
    let issued = || {
        t.tokens
            .requests()
            .iter()
            .filter(|r| r.scope == scope && r.status == 200)
            .count()
    };
    // GETs of the blob the registry refused (401).
    let refused = || t.reg.auth_refusals("GET", &blob);
    // distribution logs each expired token it is shown.
    let expired_seen = || {
        t.reg.settle();
        t.reg
            .log_text()
            .matches("token not to be used after")
            .count()
    };
    // Every wait below only has to be long enough: the client trusts a token for 0.9 of
    // its `expires_in`, and the registry accepts one for `registry_life` s plus less than
    // one (its clock check works in whole seconds). Nothing races the waits.
    let past = |secs: f64| std::thread::sleep(std::time::Duration::from_secs_f64(secs + 1.5));

    // Honest short tokens: the service says 1 s, the registry accepts them for 2-3 s.
    {
        let mut st = t.tokens.state();
        st.expires_in = 1;
        st.registry_life = 2;
    }
    let m = expect_mount(
        &format!("{}/private/big:v1", t.reg.addr()),
        &password_stdin(PASSWORD),
        "mount",
    );
    // One open file read from far-apart places, so every read needs a new range request.
    let f = fs::File::open(m.join("big.bin")).unwrap();
    let at = |mib: usize| read_at(&f, (mib * MIB) as u64, 4096);
    assert_eq!(at(0).unwrap(), big[..4096]);
    let n0 = issued();
    // Past the registry's acceptance: a client that did not renew by the stated lifetime
    // would show the registry an expired token.
    past(3.0);
    assert_eq!(at(4).unwrap(), big[4 * MIB..4 * MIB + 4096]);
    let n1 = issued();
    assert!(
        n1 > n0,
        "an expired token is replaced before use ({n0} → {n1})"
    );
    // The client does not send a token it holds expired: the request goes without one,
    // is challenged, and a new token is fetched for it.
    assert_eq!(
        expired_seen(),
        0,
        "renewed before the registry saw it expire"
    );

    // A token whose stated lifetime is a lie: the client trusts it for an hour, the
    // registry stops accepting it after 2-3 s and answers 401; the client fetches one new
    // token and sends the request once more — the reader sees nothing of it.
    {
        let mut st = t.tokens.state();
        st.expires_in = 3600;
        st.registry_life = 2;
    }
    // The token the next read fetches: the cached one has expired by the client's clock.
    past(1.0);
    assert_eq!(at(8).unwrap(), big[8 * MIB..8 * MIB + 4096]);
    let (n2, r2) = (issued(), refused());
    past(3.0);
    assert_eq!(at(12).unwrap(), big[12 * MIB..12 * MIB + 4096]);
    let (n3, r3) = (issued(), refused());
    assert!(
        r3 > r2,
        "the registry refused the stale token ({r2} → {r3} 401s)"
    );
    assert!(
        expired_seen() >= 1,
        "the registry saw the stale token: {:?}",
        t.reg
            .log_text()
            .lines()
            .filter(|l| l.contains("error authorizing"))
            .collect::<Vec<_>>()
    );
    assert_eq!(
        n3 - n2,
        r3 - r2,
        "each refused request gets exactly one new token ({n2} → {n3} tokens, {r2} → {r3} 401s)"
    );

    // Every new token is refused too: each request is refused with its cached token,
    // renewed once, refused again, and the read fails with EACCES.
    t.tokens.state().registry_life = -1;
    past(3.0);
    let e = at(16).expect_err("a read whose renewed token is refused fails");
    assert_eq!(e.raw_os_error(), Some(13), "EACCES: {e}");
    let (n4, r4) = (issued(), refused());
    assert!(n4 > n3, "the refused token was renewed ({n3} → {n4})");
    assert_eq!(
        2 * (n4 - n3),
        r4 - r3,
        "one renewal per refused request, then a second refusal fails it, not a loop \
         ({n3} → {n4} tokens, {r3} → {r4} 401s)"
    );
    drop(f);
    m.finish();
}

#[test]
fn tls_needs_a_trusted_ca_or_insecure() {
    let tmp = tempfile::tempdir().unwrap();
    let tls = certs::tls(tmp.path());
    let reg = Registry::with(&Config {
        tls: Some((tls.cert.clone(), tls.key.clone())),
        ..Config::default()
    });
    Pusher::new(&reg.url(""), Some(&tls.ca), Box::new(|_| None)).push_artifact(
        "secure/data",
        "v1",
        &[("s.txt", b"over TLS\n")],
    );
    let https = format!("https://{}/secure/data:v1", reg.addr());
    let ca = tls.ca.to_str().unwrap();

    // The test CA is not in the system roots: refused, with a one-line hint.
    let f = Launch::default().source(&https).fail();
    let line = f.stderr.trim();
    assert_eq!(line.lines().count(), 1, "{line}");
    assert!(line.contains("certificate"), "{line}");
    assert!(
        line.contains("--ca-file") && line.contains("--insecure"),
        "{line}"
    );

    // A loopback registry without the https:// prefix is spoken to in plain HTTP; the
    // TLS registry answers 400, and the message says what to do.
    let f = Launch::default()
        .source(&format!("{}/secure/data:v1", reg.addr()))
        .fail();
    assert!(f.stderr.contains("https://"), "{}", f.stderr);

    // --ca-file adds the CA.
    let m = expect_mount(
        &https,
        &Launch::default().arg("--ca-file").arg(ca),
        "--ca-file",
    );
    assert_eq!(fs::read(m.join("s.txt")).unwrap(), b"over TLS\n");
    m.finish();

    // --insecure skips verification, and says so.
    let m = expect_mount(&https, &Launch::default().arg("--insecure"), "--insecure");
    assert_eq!(fs::read(m.join("s.txt")).unwrap(), b"over TLS\n");
    let log = m.finish();
    assert!(
        log.contains("--insecure") && log.contains("not verified"),
        "{log}"
    );

    // A CA file that is not PEM is refused up front.
    let junk = write(tmp.path(), "junk.pem", "not a certificate");
    let f = Launch::default()
        .arg("--ca-file")
        .arg(junk.to_str().unwrap())
        .source(&https)
        .fail();
    assert!(f.stderr.contains("junk.pem"), "{}", f.stderr);

    // https:// and --plain-http contradict each other.
    let f = Launch::default().arg("--plain-http").source(&https).fail();
    assert!(f.stderr.contains("contradict"), "{}", f.stderr);
}

/// Mount with `RUST_LOG=trace`, read everything, and return the whole log.
fn traced_session(source: &str, run: Launch, files: &[(&str, &[u8])]) -> String {
    let m = expect_mount(source, &run.env("RUST_LOG", "trace"), "traced");
    for (name, bytes) in files {
        assert_eq!(&fs::read(m.join(name)).unwrap(), bytes, "{name}");
    }
    m.finish()
}

fn assert_no_secret(log: &str, secrets: &[String]) {
    assert!(log.len() > 1000, "trace logging was on: {log}");
    for s in secrets {
        assert!(!s.is_empty());
        assert!(!log.contains(s.as_str()), "a secret reached the log");
    }
    let lower = log.to_ascii_lowercase();
    assert!(
        !lower.contains("authorization:"),
        "a header reached the log"
    );
    assert!(!lower.contains("basic "), "a Basic value reached the log");
}

#[test]
fn no_secret_reaches_the_log_at_trace_level() {
    let big = random_bytes(6 << 20, 3);
    let files: [(&str, &[u8]); 2] = [("small.txt", b"small\n"), ("big.bin", &big)];

    // Bearer tokens.
    let t = token_setup();
    t.push.push_artifact("private/logs", "v1", &files);
    let log = traced_session(
        &format!("{}/private/logs:v1", t.reg.addr()),
        password_stdin(PASSWORD),
        &files,
    );
    assert!(log.contains("got a bearer token"), "the token path ran");
    let mut secrets = vec![PASSWORD.to_string(), b64(&format!("{USER}:{PASSWORD}"))];
    let issued = t.tokens.state().issued.clone();
    assert!(!issued.is_empty());
    for tok in issued {
        // The signature alone is secret enough; the header part is the same for all.
        secrets.push(tok.rsplit('.').next().unwrap().to_string());
        secrets.push(tok);
    }
    assert_no_secret(&log, &secrets);

    // Basic credentials.
    let tmp = tempfile::tempdir().unwrap();
    let reg = Registry::with(&Config {
        auth: Auth::Htpasswd(htpasswd(tmp.path(), &[(USER, PASSWORD)])),
        ..Config::default()
    });
    Pusher::basic(&reg.url(""), None, USER, PASSWORD).push_artifact("private/logs", "v1", &files);
    let log = traced_session(
        &format!("{}/private/logs:v1", reg.addr()),
        password_stdin(PASSWORD),
        &files,
    );
    assert_no_secret(
        &log,
        &[PASSWORD.to_string(), b64(&format!("{USER}:{PASSWORD}"))],
    );
}

/// What the "CDN" on 127.0.0.2 saw of one request.
#[derive(Debug, Clone)]
struct CdnHit {
    hex: String,
    authorization: bool,
    range: Option<String>,
    status: u16,
}

/// A blob store on another host that serves what the proxy put there, while the
/// signature in the URL is the current one; honours `Range` unless told not to.
#[derive(Default)]
struct Cdn {
    blobs: std::collections::HashMap<String, Vec<u8>>,
    sig: u64,
    ignore_range: bool,
    hits: Vec<CdnHit>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn serve_range(bytes: &[u8], range: Option<&str>) -> Reply {
    let parsed = range
        .and_then(|r| r.strip_prefix("bytes="))
        .and_then(|r| r.split_once('-'))
        .and_then(|(a, b)| Some((a.parse::<usize>().ok()?, b.parse::<usize>().ok()?)));
    match parsed {
        Some((a, b)) if a <= b && b < bytes.len() => Reply::new(206)
            .header("Content-Range", &format!("bytes {a}-{b}/{}", bytes.len()))
            .body(bytes[a..=b].to_vec()),
        Some(_) => Reply::new(416),
        None => Reply::new(200).body(bytes.to_vec()),
    }
}

fn cdn_server(cdn: Arc<Mutex<Cdn>>) -> Server {
    Server::start(
        "127.0.0.2",
        Arc::new(move |req: Request| {
            let mut c = lock(&cdn);
            let hex = req.path().trim_start_matches("/cdn/").to_string();
            let fresh = req.param("sig") == Some(c.sig.to_string());
            let range = req.header("range").map(str::to_string);
            let reply = match c.blobs.get(&hex) {
                _ if !fresh => Reply::new(403),
                None => Reply::new(404),
                Some(b) if c.ignore_range => Reply::new(200).body(b.clone()),
                Some(b) => serve_range(b, range.as_deref()),
            };
            c.hits.push(CdnHit {
                hex,
                authorization: req.header("authorization").is_some(),
                range,
                status: reply.status,
            });
            reply
        }),
    )
}

/// A proxy in front of `upstream` that answers blob GETs the registry allows with a 307
/// to the CDN (putting the blob there), and forwards everything else. Records the blob
/// GETs it saw as `(hex, had Authorization)`.
fn redirecting_proxy(
    upstream: String,
    cdn: Arc<Mutex<Cdn>>,
    cdn_addr: String,
    seen: Arc<Mutex<Vec<(String, bool)>>>,
) -> Server {
    Server::start(
        "127.0.0.1",
        Arc::new(move |req: Request| {
            let blob = req
                .path()
                .rsplit_once("/blobs/sha256:")
                .map(|(_, hex)| hex.to_string());
            let Some(hex) = blob.filter(|_| req.method == "GET") else {
                return forward(&upstream, &req, &[]);
            };
            lock(&seen).push((hex.clone(), req.header("authorization").is_some()));
            // Ask the registry (which checks the credentials) for the whole blob.
            let answer = forward(&upstream, &req, &["range"]);
            if answer.status != 200 {
                return answer;
            }
            let mut c = lock(&cdn);
            c.blobs.insert(hex.clone(), answer.body);
            Reply::new(307).header(
                "Location",
                &format!("http://{cdn_addr}/cdn/{hex}?sig={}", c.sig),
            )
        }),
    )
}

#[test]
fn blob_redirects_to_another_host_keep_range_drop_authorization_and_expire() {
    let tmp = tempfile::tempdir().unwrap();
    let reg = Registry::with(&Config {
        auth: Auth::Htpasswd(htpasswd(tmp.path(), &[(USER, PASSWORD)])),
        ..Config::default()
    });
    const MIB: usize = 1 << 20;
    let big = random_bytes(12 * MIB, 11);
    let pushed = Pusher::basic(&reg.url(""), None, USER, PASSWORD).push_artifact(
        "private/cdn",
        "v1",
        &[("big.bin", &big)],
    );
    let hex = pushed.layers[0].0.trim_start_matches("sha256:").to_string();
    let cdn = Arc::new(Mutex::new(Cdn::default()));
    let cdn_srv = cdn_server(cdn.clone());
    let seen = Arc::new(Mutex::new(Vec::new()));
    let proxy = redirecting_proxy(
        reg.addr().to_string(),
        cdn.clone(),
        cdn_srv.addr(),
        seen.clone(),
    );

    let m = expect_mount(
        &format!("{}/private/cdn:v1", proxy.addr()),
        &password_stdin(PASSWORD),
        "redirect",
    );
    let f = fs::File::open(m.join("big.bin")).unwrap();
    let at = |mib: usize| read_at(&f, (mib * MIB) as u64, 4096).unwrap();
    let registry_gets = || lock(&seen).iter().filter(|(h, _)| *h == hex).count();
    let cdn_hits = || -> Vec<CdnHit> {
        lock(&cdn)
            .hits
            .iter()
            .filter(|h| h.hex == hex)
            .cloned()
            .collect()
    };

    assert_eq!(at(0), big[..4096]);
    assert_eq!(registry_gets(), 1);
    assert!(
        lock(&seen).iter().all(|(_, auth)| *auth),
        "the registry gets credentials"
    );
    let hits = cdn_hits();
    assert_eq!(hits.len(), 1, "{hits:?}");
    let range = hits[0].range.clone().unwrap_or_default();
    assert!(range.starts_with("bytes=0-"), "Range is re-sent: {range:?}");

    // The next range goes straight to the remembered location.
    assert_eq!(at(6), big[6 * MIB..6 * MIB + 4096]);
    assert_eq!(registry_gets(), 1, "no second trip through the registry");
    let range = cdn_hits().last().unwrap().range.clone().unwrap_or_default();
    assert!(
        range.starts_with(&format!("bytes={}-", 6 * MIB)),
        "{range:?}"
    );

    // The signature expires: the CDN answers 403, the client asks the registry again and
    // follows the fresh redirect, and the reader notices nothing.
    lock(&cdn).sig += 1;
    assert_eq!(at(10), big[10 * MIB..10 * MIB + 4096]);
    assert_eq!(registry_gets(), 2);
    let hits = cdn_hits();
    let statuses: Vec<u16> = hits.iter().map(|h| h.status).collect();
    assert_eq!(
        statuses.iter().filter(|s| **s == 403).count(),
        1,
        "{hits:?}"
    );
    assert_eq!(statuses.last(), Some(&206), "{hits:?}");
    assert!(statuses.iter().all(|s| [206, 403].contains(s)), "{hits:?}");
    let range = hits.last().unwrap().range.clone().unwrap_or_default();
    assert!(
        range.starts_with(&format!("bytes={}-", 10 * MIB)),
        "{range:?}"
    );
    assert!(
        hits.iter().all(|h| !h.authorization),
        "no Authorization to another host"
    );
    assert!(
        hits.iter().all(|h| h.range.is_some()),
        "every CDN request has a Range"
    );
    drop(f);
    m.finish();
}

#[test]
fn a_server_that_ignores_range_is_not_asked_for_ranges_of_that_blob_again() {
    use orasfs::oci::Digest;
    use orasfs::source::registry::{Client, ClientConfig};
    use orasfs::source::{BodyKind, VecSink};

    let body = random_bytes(64 << 10, 5);
    let cdn = Arc::new(Mutex::new(Cdn {
        ignore_range: true,
        ..Cdn::default()
    }));
    let digest = Digest::of(&body);
    lock(&cdn)
        .blobs
        .insert(digest.hex().to_string(), body.clone());
    let cdn_srv = cdn_server(cdn.clone());
    // The "registry" redirects every blob GET to the CDN.
    let target = cdn_srv.addr();
    let registry = Server::start(
        "127.0.0.1",
        Arc::new(move |req: Request| {
            let hex = req
                .path()
                .rsplit_once("sha256:")
                .map(|(_, h)| h.to_string());
            match hex {
                Some(h) => {
                    Reply::new(302).header("Location", &format!("http://{target}/cdn/{h}?sig=0"))
                }
                None => Reply::new(200),
            }
        }),
    );
    let client = Client::new(ClientConfig::new(&registry.addr())).unwrap();
    for _ in 0..2 {
        let mut sink = VecSink::with_limit(body.len() as u64);
        client
            .fetch_blob("r", &digest, body.len() as u64, Some(100..200), &mut sink)
            .unwrap();
        assert_eq!(sink.kind, Some(BodyKind::Whole));
        assert_eq!(sink.bytes, body);
    }
    let ranges: Vec<Option<String>> = lock(&cdn).hits.iter().map(|h| h.range.clone()).collect();
    assert_eq!(ranges, [Some("bytes=100-199".to_string()), None]);
}

/// `(n, last)` of a tag page request.
type PageAsked = (Option<String>, Option<String>);

/// How the paginating proxy behaves, and what it saw.
#[derive(Default)]
struct PageControl {
    /// Point every `Link` at another origin.
    evil: std::sync::atomic::AtomicBool,
    /// The largest `n` accepted (0: any).
    limit: std::sync::atomic::AtomicUsize,
    pages: Mutex<Vec<PageAsked>>,
}

/// A proxy in front of distribution 2.8 (whose tag lists are not paginated) that pages
/// `tags/list` by `n` and `last` as later registries do, and forwards everything else.
/// With `evil` set, every `Link` it sends (its own, and the registry's catalog links)
/// points at `elsewhere` instead. Records `(n, last)` of each tag page asked for.
fn paginating_proxy(upstream: String, elsewhere: String, ctl: Arc<PageControl>) -> Server {
    use std::sync::atomic::Ordering;
    Server::start(
        "127.0.0.1",
        Arc::new(move |req: Request| {
            let retarget = |link: &str| {
                if ctl.evil.load(Ordering::SeqCst) {
                    link.replacen("</", &format!("<http://{elsewhere}/"), 1)
                } else {
                    link.to_string()
                }
            };
            if !req.path().ends_with("/tags/list") {
                let mut r = forward(&upstream, &req, &[]);
                if let Some(link) = r.get("link").map(str::to_string) {
                    r.set("Link", &retarget(&link));
                }
                return r;
            }
            let (n, last) = (req.param("n"), req.param("last"));
            lock(&ctl.pages).push((n.clone(), last.clone()));
            // With a limit, an `n` above it is refused (400) and no `n` means the limit.
            let limit = ctl.limit.load(Ordering::SeqCst);
            let n: usize = match n.and_then(|n| n.parse().ok()) {
                Some(n) if limit > 0 && n > limit => {
                    return Reply::json(
                        400,
                        &json!({"errors": [{"code": "PAGINATION_NUMBER_INVALID"}]}),
                    )
                }
                Some(n) => n,
                None if limit > 0 => limit,
                None => usize::MAX,
            };
            let all = Request {
                target: req.path().to_string(),
                ..req.clone()
            };
            let r = forward(&upstream, &all, &[]);
            if r.status != 200 {
                return r;
            }
            let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
            let mut tags: Vec<String> = serde_json::from_value(v["tags"].clone()).unwrap();
            tags.sort();
            let rest: Vec<String> = tags
                .into_iter()
                .filter(|t| last.as_ref().is_none_or(|l| t > l))
                .collect();
            let page: Vec<String> = rest.iter().take(n).cloned().collect();
            let mut reply = Reply::json(200, &json!({"name": v["name"], "tags": page}));
            if rest.len() > page.len() {
                let link = format!(
                    "<{}?n={n}&last={}>; rel=\"next\"",
                    req.path(),
                    page.last().unwrap()
                );
                reply = reply.header("Link", &retarget(&link));
            }
            reply
        }),
    )
}

#[test]
fn pagination_lists_every_tag_and_repository_and_refuses_cross_origin_links() {
    use std::sync::atomic::Ordering;
    let reg = Registry::with(&Config {
        catalog_max: Some(5),
        ..Config::default()
    });
    let push = Pusher::anonymous(&reg.url(""));
    let first = push.push_artifact("many/tags", "t0000", &[("x", b"x")]);
    // Tags are pushed from a few threads: each PUT costs the registry a few fsyncs.
    std::thread::scope(|s| {
        for lane in 0..8 {
            let (push, manifest) = (&push, &first.manifest);
            s.spawn(move || {
                for i in (1..=1000).filter(|i| i % 8 == lane) {
                    push.push_manifest(
                        "many/tags",
                        &format!("t{i:04}"),
                        common::OCI_MANIFEST,
                        manifest,
                    );
                }
            });
        }
    });
    for i in 0..11 {
        push.push_artifact(&format!("r/a{i:02}"), "v1", &[("y", b"y")]);
    }
    let elsewhere_hits = Arc::new(Mutex::new(0usize));
    let counter = elsewhere_hits.clone();
    let elsewhere = Server::start(
        "127.0.0.2",
        Arc::new(move |_req: Request| {
            *lock(&counter) += 1;
            Reply::json(
                200,
                &json!({"tags": ["planted"], "repositories": ["planted"]}),
            )
        }),
    );
    let ctl = Arc::new(PageControl::default());
    let proxy = paginating_proxy(reg.addr().to_string(), elsewhere.addr(), ctl.clone());

    // 1001 tags arrive in two pages of at most 1000.
    let m = expect_mount(
        &format!("{}/many/tags", proxy.addr()),
        &Launch::default(),
        "tags",
    );
    let tags = names(m.path());
    assert_eq!(tags.len(), 1001);
    assert_eq!(tags[0], "t0000");
    assert_eq!(tags[1000], "t1000");
    m.finish();
    let asked = lock(&ctl.pages).clone();
    assert!(asked.len() >= 2, "{asked:?}");
    assert_eq!(asked[0], (Some("1000".to_string()), None));
    assert_eq!(
        asked[1],
        (Some("1000".to_string()), Some("t0999".to_string()))
    );

    // A registry whose tag pages are limited to 100 refuses n=1000; the client then asks
    // with the registry's own page size (11 pages).
    ctl.limit.store(100, Ordering::SeqCst);
    lock(&ctl.pages).clear();
    let client = orasfs::source::registry::Client::new(
        orasfs::source::registry::ClientConfig::new(&proxy.addr()),
    )
    .unwrap();
    let tags = client.tags("many/tags").unwrap();
    assert_eq!(tags.len(), 1001);
    let asked = lock(&ctl.pages).clone();
    assert_eq!(asked.len(), 12, "one refused, then 11 pages: {asked:?}");
    assert_eq!(asked[1], (None, None));
    ctl.limit.store(0, Ordering::SeqCst);

    // The catalog: distribution refuses n=1000 above its maxentries (5), so the client
    // asks with the registry's page size and follows its Link headers: 13 repositories in
    // pages of 5.
    let m = expect_mount(reg.addr(), &Launch::default(), "catalog");
    assert_eq!(names(m.path()), ["many", "r"]);
    let repos = names(&m.join("r"));
    assert_eq!(repos.len(), 11, "{repos:?}");
    assert_eq!(repos[10], "a10");
    m.finish();

    // A Link to another origin is refused: the repository mount fails before mounting,
    ctl.evil.store(true, Ordering::SeqCst);
    let f = Launch::default()
        .source(&format!("{}/many/tags", proxy.addr()))
        .fail();
    assert!(
        f.stderr.contains("another origin") && f.stderr.contains("refused"),
        "{}",
        f.stderr
    );
    // and a registry root's listing fails rather than show what another host says.
    let m = expect_mount(&proxy.addr(), &Launch::default(), "evil catalog");
    let listed = fs::read_dir(m.path()).and_then(|d| d.collect::<Result<Vec<_>, _>>());
    assert!(listed.is_err(), "{listed:?}");
    m.finish();
    assert_eq!(
        *lock(&elsewhere_hits),
        0,
        "nothing was asked of the other origin"
    );
}

#[test]
fn referrers_from_the_tag_schema_appear_under_dot_referrers() {
    use common::{Pushed, OCI_INDEX, OCI_MANIFEST};
    use names;
    let reg = Registry::with(&Config::default());
    let push = Pusher::anonymous(&reg.url(""));
    let repo = "eo/products";
    let subject = push.push_artifact(repo, "v1", &[("imagery.tif", b"tiff bytes")]);
    let other = push.push_artifact(repo, "other", &[("x.txt", b"x")]);
    let referrer = |subject: &Pushed, file: (&str, &[u8]), artifact_type: &str| {
        push.push_artifact_with(
            repo,
            None,
            &[file],
            "application/octet-stream",
            json!({"artifactType": artifact_type, "subject": subject.descriptor()}),
        )
    };
    const SPDX: &str = "application/spdx+json";
    const COSIGN: &str = "application/vnd.dev.cosign.artifact.sig.v1+json";
    const REPORT: &str = "application/vnd.acme.report.v1+json";
    let sbom_doc: &[u8] = br#"{"spdxVersion": "SPDX-2.3"}"#;
    let sbom = referrer(&subject, ("sbom.spdx.json", sbom_doc), SPDX);
    let sig = referrer(&subject, ("signature.sig", b"signed"), COSIGN);
    // Listed under v1's tag but pointing at another subject: must not be shown.
    let stray = referrer(&other, ("stray.txt", b"stray"), REPORT);
    let hex = |p: &Pushed| p.digest.trim_start_matches("sha256:").to_string();
    let entry = |p: &Pushed, t: &str| json!({"mediaType": OCI_MANIFEST, "digest": p.digest, "size": p.manifest.len(), "artifactType": t});
    // The fallback tag schema: an index tagged sha256-<hex of the subject>, as ORAS
    // clients keep it for registries without the Referrers API (distribution 2.8).
    let put_index = |entries: Vec<serde_json::Value>| {
        let index = serde_json::to_vec(
            &json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries}),
        )
        .unwrap();
        push.push_manifest(
            repo,
            &format!("sha256-{}", hex(&subject)),
            OCI_INDEX,
            &index,
        );
    };
    put_index(vec![
        entry(&sbom, SPDX),
        entry(&sig, COSIGN),
        entry(&stray, REPORT),
    ]);

    let m = expect_mount(
        &format!("{}/{repo}", reg.addr()),
        &Launch::default().arg("--metadata-ttl").arg("0"),
        "referrers",
    );
    let v1 = m.join("v1");
    // Reachable by name, not listed: tree walks do not fetch every manifest's referrers.
    assert!(!names(&v1).contains(&".referrers".to_string()));
    let refs = v1.join(".referrers");
    assert!(refs.is_dir());
    let sbom_dir = format!("sbom-{}", &hex(&sbom)[..12]);
    let sig_dir = format!("signature-{}", &hex(&sig)[..12]);
    assert_eq!(names(&refs), [sbom_dir.clone(), sig_dir.clone()]);
    assert_eq!(
        names(&refs.join(&sbom_dir)),
        [".config.json", ".manifest.json", "sbom.spdx.json"]
    );
    assert_eq!(
        fs::read(refs.join(&sbom_dir).join("sbom.spdx.json")).unwrap(),
        sbom_doc
    );
    assert_eq!(
        fs::read(refs.join(&sbom_dir).join(".manifest.json")).unwrap(),
        sbom.manifest
    );
    assert_eq!(
        fs::read(refs.join(&sig_dir).join("signature.sig")).unwrap(),
        b"signed"
    );
    // A manifest nobody refers to has an empty .referrers/.
    assert!(names(&m.join("other").join(".referrers")).is_empty());
    // Reached by digest, the same referrers.
    let by_digest = m.join(&subject.digest).join(".referrers");
    assert_eq!(names(&by_digest), [sbom_dir.clone(), sig_dir.clone()]);

    // A new referrer pushed, and the tag index updated: it shows up.
    let notes = referrer(&subject, ("notes.md", b"# notes"), "text/markdown");
    put_index(vec![
        entry(&sbom, SPDX),
        entry(&sig, COSIGN),
        entry(&notes, "text/markdown"),
    ]);
    let notes_dir = format!("markdown-{}", &hex(&notes)[..12]);
    let mut want = vec![sbom_dir, sig_dir, notes_dir.clone()];
    want.sort();
    assert_eq!(names(&refs), want);
    assert_eq!(
        fs::read(refs.join(&notes_dir).join("notes.md")).unwrap(),
        b"# notes"
    );
    m.finish();
}
