//! Fleets against real engines on loopback: an origin `docker-registry` and a second one
//! in pull-through cache mode (`proxy: remoteurl:`) as the mirror, and `orasfs` mounts
//! that each have their own cache dir, as separate machines would. What each registry
//! served is read from its own JSON log (`response completed`, `http.response.written`).
//! Every registry and mount stops on drop, also when an assertion fails.

mod common;

use std::fs;
use std::io::Read;
use std::path::Path;
use std::time::{Duration, Instant};

use sha2::{Digest as _, Sha256};

use common::certs;
use common::token::TokenServer;
use common::{htpasswd, random_bytes, sha256, Auth, Config, Launch, Mount, Pusher, Registry};

const MIB: usize = 1 << 20;

/// One `response completed` line of a distribution log.
#[derive(Debug)]
struct Served {
    method: String,
    uri: String,
    status: u16,
    written: u64,
}

/// The requests a registry answered without error, from its JSON log.
fn served(reg: &Registry) -> Vec<Served> {
    reg.requests()
        .iter()
        .filter(|v| v["msg"] == "response completed")
        .filter_map(|v| {
            Some(Served {
                method: v["http.request.method"].as_str()?.to_string(),
                uri: v["http.request.uri"].as_str()?.to_string(),
                status: v["http.response.status"].as_u64()?.try_into().ok()?,
                written: v["http.response.written"].as_u64()?,
            })
        })
        .collect()
}

/// Bytes of blob `digest` a registry's log says it sent in GET answers.
fn blob_bytes(reg: &Registry, digest: &str) -> u64 {
    served(reg)
        .iter()
        .filter(|s| s.method == "GET" && s.uri.ends_with(&format!("/blobs/{digest}")))
        .map(|s| s.written)
        .sum()
}

fn stats(m: &Mount) -> serde_json::Value {
    serde_json::from_slice(&fs::read(m.join(".orasfs/stats.json")).unwrap()).unwrap()
}

/// The `hosts` entry of a mount's stats for `host`.
fn host(stats: &serde_json::Value, host: &str) -> serde_json::Value {
    stats["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["host"] == host)
        .cloned()
        .unwrap_or_else(|| panic!("no {host} in {stats}"))
}

fn sha_of_file(p: &Path) -> String {
    let mut f = fs::File::open(p).unwrap();
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 4 * MIB];
    loop {
        let n = f.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    format!("sha256:{}", hex::encode(h.finalize()))
}

fn origin_and_mirror() -> (Registry, Registry) {
    let origin = Registry::with(&Config::default());
    let mirror = Registry::with(&Config {
        proxy: Some((origin.url(""), None)),
        ..Config::default()
    });
    (origin, mirror)
}

fn with_mirror(mirror: &Registry) -> Launch {
    Launch::default().arg("--mirror").arg(mirror.addr())
}

/// Two machines read the same 256 MiB blob through one pull-through cache: the origin
/// sends it about once, the cache serves both.
#[test]
fn a_pull_through_cache_offloads_the_origin() {
    const SIZE: usize = 256 * MIB;
    let (origin, mirror) = origin_and_mirror();
    let big = random_bytes(SIZE, 7);
    let digest = sha256(&big);
    Pusher::anonymous(&origin.url("")).push_artifact("fleet/data", "v1", &[("big.bin", &big)]);
    drop(big);
    let source = format!("{}/fleet/data:v1", origin.addr());
    let started = Instant::now();
    let mut origin_after = Vec::new();
    for machine in 0..2 {
        let m = with_mirror(&mirror)
            .source(&source)
            .try_mount()
            .unwrap_or_else(|f| panic!("mount {machine}: {}", f.stderr));
        assert_eq!(sha_of_file(&m.join("big.bin")), digest, "machine {machine}");
        let s = stats(&m);
        let from_mirror = host(&s, mirror.addr());
        let from_origin = host(&s, origin.addr());
        assert!(
            from_mirror["bytes"].as_u64().unwrap() >= SIZE as u64,
            "machine {machine} read the blob from the mirror: {s}"
        );
        assert!(
            from_origin["bytes"].as_u64().unwrap() < MIB as u64,
            "machine {machine} read no blob bytes from the origin: {s}"
        );
        m.finish();
        origin_after.push(blob_bytes(&origin, &digest));
    }
    let origin_bytes = origin_after[1];
    let mirror_bytes = blob_bytes(&mirror, &digest);
    let read = 2 * SIZE as u64;
    eprintln!(
        "offload: origin sent {origin_bytes} blob bytes ({} after the first machine), the \
         mirror {mirror_bytes}, the mounts read {read}: origin bytes / bytes read = {:.3} \
         ({:.1?})",
        origin_after[0],
        origin_bytes as f64 / read as f64,
        started.elapsed()
    );
    // docker-registry 2.8 in proxy mode fetches a blob it has not cached twice from the
    // origin (once to store it, once to answer the request that missed), so the first
    // machine costs the origin up to 2x the blob; every later machine costs it nothing.
    assert!(
        origin_after[0] as f64 <= 2.2 * SIZE as f64,
        "the first miss costs the origin at most two copies: {origin_after:?}"
    );
    assert_eq!(
        origin_after[1], origin_after[0],
        "the second machine cost the origin nothing"
    );
    assert!(
        mirror_bytes >= read,
        "the mirror served both mounts: {mirror_bytes}"
    );
    // How the proxy answers a Range request for a blob it has not cached: the first
    // blob GET it logged (orasfs asks for a range) is a 200 with the whole blob.
    let first = served(&mirror)
        .into_iter()
        .find(|s| s.method == "GET" && s.uri.ends_with(&format!("/blobs/{digest}")))
        .unwrap();
    eprintln!("the proxy's answer to the first (ranged) blob request: {first:?}");
    assert_eq!(
        (first.status, first.written),
        (200, SIZE as u64),
        "{first:?}"
    );
}

/// Ask the mirror for a blob once, so that it has it cached, and wait until it answers a
/// range with 206 (the proxy stores what it fetched in the background; until then it
/// answers every request with the whole blob).
fn warm(mirror: &Registry, repo: &str, digest: &str) {
    let client = reqwest::blocking::Client::new();
    let url = mirror.url(&format!("/v2/{repo}/blobs/{digest}"));
    let r = client.get(&url).send().unwrap();
    assert!(r.status().is_success(), "{}", r.status());
    r.bytes().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let r = client
            .get(&url)
            .header("Range", "bytes=0-0")
            .send()
            .unwrap();
        if r.status().as_u16() == 206 {
            return;
        }
        drop(r.bytes());
        assert!(
            Instant::now() < deadline,
            "the mirror never answered a range with 206"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The mirror is stopped in the middle of reading a file: the rest comes from the origin,
/// with the right bytes and no error to the reader. Started again, the mirror serves
/// reads once the cool-down is over.
#[test]
fn reads_fail_over_to_the_origin_and_come_back_after_the_cool_down() {
    let (origin, mut mirror) = origin_and_mirror();
    let first = random_bytes(64 * MIB, 11);
    let second = random_bytes(8 * MIB, 12);
    let (d1, d2) = (sha256(&first), sha256(&second));
    Pusher::anonymous(&origin.url("")).push_artifact(
        "fleet/failover",
        "v1",
        &[("first.bin", &first), ("second.bin", &second)],
    );
    warm(&mirror, "fleet/failover", &d1);
    warm(&mirror, "fleet/failover", &d2);
    let cooldown = Duration::from_secs(3);
    let m = with_mirror(&mirror)
        .arg("--mirror-cooldown")
        .arg("3s")
        .source(&format!("{}/fleet/failover:v1", origin.addr()))
        .try_mount()
        .unwrap_or_else(|f| panic!("mount: {}", f.stderr));
    let mut f = fs::File::open(m.join("first.bin")).unwrap();
    let mut got = vec![0u8; MIB];
    f.read_exact(&mut got).unwrap();
    let before = stats(&m);
    assert!(
        host(&before, mirror.addr())["bytes"].as_u64().unwrap() > 0,
        "{before}"
    );
    assert!(
        host(&before, origin.addr())["bytes"].as_u64().unwrap() < MIB as u64,
        "before the stop, blob bytes came from the mirror: {before}"
    );

    mirror.stop();
    let t = Instant::now();
    f.read_to_end(&mut got).unwrap();
    let took = t.elapsed();
    assert_eq!(sha256(&got), d1, "the rest came with the right bytes");
    let after = stats(&m);
    let origin_bytes = host(&after, origin.addr())["bytes"].as_u64().unwrap();
    assert!(
        origin_bytes > MIB as u64,
        "the origin served the rest: {after}"
    );
    assert!(
        host(&after, mirror.addr())["failures"].as_u64().unwrap() >= 1,
        "{after}"
    );
    assert!(took < Duration::from_secs(30), "failover took {took:?}");
    eprintln!("failover: the rest of the file read in {took:?}; {after}");

    mirror.restart();
    std::thread::sleep(cooldown + Duration::from_millis(500));
    let mirror_before = host(&stats(&m), mirror.addr());
    assert_eq!(sha_of_file(&m.join("second.bin")), d2);
    let end = stats(&m);
    let mirror_after = host(&end, mirror.addr());
    assert!(
        mirror_after["bytes"].as_u64().unwrap()
            >= mirror_before["bytes"].as_u64().unwrap() + 8 * MIB as u64,
        "after the cool-down the mirror serves again: {end}"
    );
    assert_eq!(
        host(&end, origin.addr())["bytes"].as_u64().unwrap(),
        origin_bytes,
        "and the origin serves nothing more"
    );
    m.finish();
}

/// Each registry gets only its own credentials. The origin uses a token service (the
/// only remote auth distribution's proxy mode can log in to), the mirror htpasswd; the
/// mirror comes from a registries.conf file. The mirror's log never names the origin's
/// user, the token service and the origin never see the mirror's user.
#[test]
fn credentials_go_only_to_the_host_they_belong_to() {
    use base64::Engine;
    let tmp = tempfile::tempdir().unwrap();
    let (ou, op) = ("origin-user", "Origin-pw-1c9d");
    let (mu, mp) = ("mirror-user", "Mirror-pw-77ae");
    let signer = certs::token_signer(tmp.path());
    let tokens = TokenServer::start(&signer);
    tokens.state().users.insert(ou.into(), op.into());
    let origin = Registry::with(&Config {
        auth: tokens.registry_auth(&signer),
        ..Config::default()
    });
    let mirror = Registry::with(&Config {
        auth: Auth::Htpasswd(htpasswd(&mkdir(tmp.path(), "m"), &[(mu, mp)])),
        proxy: Some((origin.url(""), Some((ou.into(), op.into())))),
        ..Config::default()
    });
    let body = random_bytes(3 * MIB, 5);
    Pusher::new(&origin.url(""), None, tokens.pusher_auth()).push_artifact(
        "team/app",
        "v1",
        &[("data.bin", &body)],
    );
    let b64 =
        |u: &str, p: &str| base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"));
    let auth = tmp.path().join("auth.json");
    fs::write(
        &auth,
        serde_json::json!({ "auths": {
            origin.addr(): { "auth": b64(ou, op) },
            mirror.addr(): { "auth": b64(mu, mp) },
        }})
        .to_string(),
    )
    .unwrap();
    let conf = tmp.path().join("registries.conf");
    fs::write(
        &conf,
        format!(
            "[[registry]]\nlocation = \"{}\"\n\n[[registry.mirror]]\nlocation = \"{}\"\n",
            origin.addr(),
            mirror.addr()
        ),
    )
    .unwrap();
    let run = Launch::default()
        .arg("--auth-file")
        .arg(auth.to_str().unwrap())
        .arg("--registries-conf")
        .arg(conf.to_str().unwrap());
    let m = run
        .clone()
        .source(&format!("{}/team/app:v1", origin.addr()))
        .try_mount()
        .unwrap_or_else(|f| panic!("mount: {}", f.stderr));
    assert_eq!(fs::read(m.join("data.bin")).unwrap(), body);
    let s = stats(&m);
    assert!(
        host(&s, mirror.addr())["bytes"].as_u64().unwrap() >= body.len() as u64,
        "the mirror served the blob: {s}\n{}",
        m.stderr()
    );
    m.finish();
    let (olog, mlog) = (origin.log_text(), mirror.log_text());
    assert!(
        !mlog.contains(ou),
        "the origin's user never reached the mirror"
    );
    assert!(
        !olog.contains(mu),
        "the mirror's user never reached the origin"
    );
    let asked: Vec<Option<String>> = tokens.requests().into_iter().map(|r| r.user).collect();
    assert!(asked.contains(&Some(ou.to_string())), "{asked:?}");
    assert!(
        asked.iter().all(|u| u.as_deref() != Some(mu)),
        "the token service never saw the mirror's user: {asked:?}"
    );
    for secret in [op, mp] {
        assert!(!mlog.contains(secret) && !olog.contains(secret));
    }
    // The check above can fail: the mirror's log names a user who tries it.
    let r = reqwest::blocking::Client::new()
        .get(mirror.url("/v2/"))
        .basic_auth(ou, Some(op))
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
    assert!(
        mirror.log_text().contains(ou),
        "distribution logs a refused user"
    );
}

/// A registry that registries.conf blocks is refused before mounting, and a malformed
/// file is reported with its name and line.
#[test]
fn blocked_registries_and_malformed_files_are_refused_at_mount() {
    let origin = Registry::with(&Config::default());
    let tmp = tempfile::tempdir().unwrap();
    let conf = tmp.path().join("registries.conf");
    fs::write(
        &conf,
        format!(
            "[[registry]]\nprefix = \"{}\"\nblocked = true\n",
            origin.addr()
        ),
    )
    .unwrap();
    let source = format!("{}/any/repo:v1", origin.addr());
    let run = |c: &Path| {
        Launch::default()
            .arg("--registries-conf")
            .arg(c.to_str().unwrap())
    };
    let f = run(&conf).source(&source).fail();
    let err = f.stderr.trim();
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("blocked = true") && err.contains(&conf.display().to_string()),
        "{err}"
    );
    fs::write(&conf, "[[registry]]\nprefix = \"a\"\n[[registry.mirror]\n").unwrap();
    let f = run(&conf).source(&source).fail();
    let err = f.stderr.trim();
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains(&format!("{}:3: ", conf.display())), "{err}");
}

fn mkdir(base: &Path, name: &str) -> std::path::PathBuf {
    let p = base.join(name);
    fs::create_dir_all(&p).unwrap();
    p
}
