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
use common::{
    gdal_translate, htpasswd, make_cog, random_bytes, sha256, Auth, Config, Launch, Mount, Pusher,
    Registry,
};

const MIB: usize = 1 << 20;

/// One `response completed` line of a distribution log.
#[derive(Debug)]
struct Served {
    method: String,
    uri: String,
    status: u16,
    written: u64,
}

/// The requests a registry answered, from its JSON log.
fn served(reg: &Registry) -> Vec<Served> {
    reg.requests()
        .iter()
        // Also "response completed with error": a dropped answer's bytes were sent too.
        .filter(|v| {
            v["msg"]
                .as_str()
                .is_some_and(|m| m.starts_with("response completed"))
        })
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

/// (status, bytes written) of each GET of blob `digest` in a registry's log.
fn origin_gets(reg: &Registry, digest: &str) -> Vec<(u16, u64)> {
    served(reg)
        .iter()
        .filter(|s| s.method == "GET" && s.uri.ends_with(&format!("/blobs/{digest}")))
        .map(|s| (s.status, s.written))
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

/// The pixels of a 256×256 window of `cog` at (600, 700), as GDAL reads them.
fn window(cog: &Path, out_dir: &Path) -> Vec<u8> {
    let out = out_dir.join("window.bin");
    gdal_translate(
        &["-q", "-of", "ENVI", "-srcwin", "600", "700", "256", "256"],
        cog,
        &out,
    );
    fs::read(&out).unwrap()
}

/// How distribution's proxy answers a `Range` request for a blob it has not cached yet,
/// asked directly (status, `Content-Length`, `Content-Range`); the answer is dropped at
/// its headers.
fn proxy_answer_to_a_range(mirror: &Registry, repo: &str, digest: &str) -> (u16, u64, bool) {
    let r = reqwest::blocking::Client::new()
        .get(mirror.url(&format!("/v2/{repo}/blobs/{digest}")))
        .header("Range", "bytes=0-0")
        .send()
        .unwrap();
    let len = r
        .headers()
        .get("content-length")
        .and_then(|v| v.to_str().ok()?.parse().ok())
        .unwrap_or(0);
    (
        r.status().as_u16(),
        len,
        r.headers().contains_key("content-range"),
    )
}

/// Two machines read the same 256 MiB blob and a GDAL window of a COG through one
/// pull-through cache: the origin sends each blob about once, the cache serves both.
#[test]
fn a_pull_through_cache_offloads_the_origin() {
    const SIZE: usize = 256 * MIB;
    let tmp = tempfile::tempdir().unwrap();
    let (origin, mirror) = origin_and_mirror();
    let cog = make_cog(tmp.path(), 2048, 21, &[]);
    let want_window = window(&tmp.path().join("scene.tif"), &mkdir(tmp.path(), "local"));
    let big = random_bytes(SIZE, 7);
    let side = random_bytes(16 * MIB, 8);
    let (digest, cog_digest, side_digest) = (sha256(&big), sha256(&cog), sha256(&side));
    let pusher = Pusher::anonymous(&origin.url(""));
    pusher.push_artifact(
        "fleet/data",
        "v1",
        &[("big.bin", &big), ("scene.tif", &cog)],
    );
    pusher.push_artifact("fleet/side", "v1", &[("side.bin", &side)]);
    drop(big);

    // What the proxy does with a range of a blob it has not cached, asked directly.
    let answer = proxy_answer_to_a_range(&mirror, "fleet/side", &side_digest);
    let deadline = Instant::now() + Duration::from_secs(60);
    while proxy_answer_to_a_range(&mirror, "fleet/side", &side_digest).0 != 206 {
        assert!(Instant::now() < deadline, "the proxy never cached the blob");
        std::thread::sleep(Duration::from_secs(1));
    }
    let side_gets = origin_gets(&origin, &side_digest);
    eprintln!(
        "the proxy answered `Range: bytes=0-0` of an uncached {} byte blob with {answer:?} \
         (status, Content-Length, has Content-Range); the origin's GETs of it: {side_gets:?}",
        side.len()
    );
    assert_eq!(answer, (200, side.len() as u64, false), "{side_gets:?}");
    assert!(
        side_gets.contains(&(200, side.len() as u64)),
        "the proxy fetched the whole blob from the origin to cache it: {side_gets:?}"
    );

    let source = format!("{}/fleet/data:v1", origin.addr());
    let started = Instant::now();
    let mut origin_after = Vec::new();
    for machine in 0..2 {
        let m = with_mirror(&mirror)
            .arg("-v")
            .source(&source)
            .try_mount()
            .unwrap_or_else(|f| panic!("mount {machine}: {}", f.stderr));
        assert_eq!(sha_of_file(&m.join("big.bin")), digest, "machine {machine}");
        let got = window(
            &m.join("scene.tif"),
            &mkdir(tmp.path(), &format!("m{machine}")),
        );
        assert!(
            got == want_window,
            "machine {machine}: the GDAL window differs"
        );
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
        for line in m.finish().lines().filter(|l| l.contains("mirror")) {
            eprintln!("machine {machine}: {line}");
        }
        origin_after.push((
            blob_bytes(&origin, &digest),
            blob_bytes(&origin, &cog_digest),
        ));
    }
    let (origin_big, origin_cog) = origin_after[1];
    let (mirror_big, mirror_cog) = (
        blob_bytes(&mirror, &digest),
        blob_bytes(&mirror, &cog_digest),
    );
    let window_bytes = want_window.len() as u64;
    let read = 2 * (SIZE as u64 + window_bytes);
    let origin_bytes = origin_big + origin_cog;
    eprintln!(
        "offload: the origin sent {origin_big} bytes of the 256 MiB blob and {origin_cog} of \
         the {} byte COG ({:?} after the first machine); the mirror sent {mirror_big} and \
         {mirror_cog}; the mounts read {read} (two blobs and two {window_bytes} byte \
         windows): origin bytes / bytes read = {:.3}; mirror bytes of the big blob / bytes \
         read of it = {:.3} ({:.1?})",
        cog.len(),
        origin_after[0],
        origin_bytes as f64 / read as f64,
        mirror_big as f64 / (2 * SIZE) as f64,
        started.elapsed()
    );
    eprintln!(
        "the origin's GETs of the big blob (status, bytes): {:?}; of the COG: {:?}",
        origin_gets(&origin, &digest),
        origin_gets(&origin, &cog_digest)
    );
    assert!(
        origin_big as f64 <= 1.1 * SIZE as f64,
        "the origin sent the big blob about once: {origin_after:?}"
    );
    // Each ask of the filling proxy costs the origin what the proxy streamed before the
    // answer was dropped (0.1 to 9 MB seen on loopback): a large share of a 16 MB blob,
    // but less than the second copy the proxy fetches for a request it answers whole.
    assert!(
        origin_cog < 2 * cog.len() as u64,
        "the origin sent the COG less than twice: {origin_after:?}"
    );
    assert_eq!(
        origin_after[1], origin_after[0],
        "the second machine cost the origin nothing"
    );
    assert!(
        mirror_big >= 2 * SIZE as u64,
        "the mirror served both mounts: {mirror_big}"
    );
    assert!(
        mirror_big as f64 <= 1.1 * (2 * SIZE) as f64,
        "the mirror sent the big blob about once per mount: {mirror_big}"
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

/// A pull-through cache that loses its copy of a blob (its cache expired) answers ranges
/// with the whole blob again, each answer streamed from the origin while it fills anew:
/// orasfs drops those answers and waits for the cache, so the origin sends the blob about
/// once more, not once per request.
#[test]
fn a_mirror_that_lost_a_blob_is_waited_for_again() {
    const SIZE: usize = 128 * MIB;
    let (origin, mirror) = origin_and_mirror();
    let body = random_bytes(SIZE, 51);
    let digest = sha256(&body);
    Pusher::anonymous(&origin.url("")).push_artifact("fleet/lost", "v1", &[("big.bin", &body)]);
    let m = with_mirror(&mirror)
        .arg("-v")
        .source(&format!("{}/fleet/lost:v1", origin.addr()))
        .try_mount()
        .unwrap_or_else(|f| panic!("mount: {}", f.stderr));
    let mut f = fs::File::open(m.join("big.bin")).unwrap();
    let mut got = vec![0u8; MIB];
    f.read_exact(&mut got).unwrap();
    let before = blob_bytes(&origin, &digest);
    let data = mirror.blob_data_path(&digest["sha256:".len()..]);
    fs::remove_file(&data).unwrap_or_else(|e| panic!("{}: {e}", data.display()));
    f.read_to_end(&mut got).unwrap();
    assert!(sha256(&got) == digest, "the right bytes");
    let again = blob_bytes(&origin, &digest) - before;
    let log = m.finish();
    eprintln!(
        "after the mirror lost the blob the origin sent {again} bytes of it ({:.3} copies): \
         {:?}",
        again as f64 / SIZE as f64,
        origin_gets(&origin, &digest)
    );
    assert!(
        log.contains("answered a range of blob"),
        "the mirror answered a range with the whole blob: {log}"
    );
    assert!(
        (again as f64) < 1.5 * SIZE as f64,
        "the origin sent the blob about once more: {again}"
    );
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

/// A mirror on loopback that accepts connections and either never answers, or answers
/// every request `404` while recording the request heads. Stops on drop.
struct FakeMirror {
    addr: String,
    heads: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl FakeMirror {
    fn start(answer: bool) -> FakeMirror {
        use std::io::{BufRead, BufReader, Write};
        use std::sync::atomic::{AtomicBool, Ordering};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let heads = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (flag, log) = (stop.clone(), heads.clone());
        let thread = std::thread::spawn(move || {
            let mut held = Vec::new();
            while !flag.load(Ordering::Relaxed) {
                let Ok((conn, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(20));
                    continue;
                };
                if !answer {
                    held.push(conn);
                    continue;
                }
                let log = log.clone();
                std::thread::spawn(move || {
                    let _ = conn.set_nonblocking(false);
                    let mut w = conn.try_clone().unwrap();
                    let mut r = BufReader::new(conn);
                    loop {
                        let mut head = String::new();
                        loop {
                            let mut line = String::new();
                            match r.read_line(&mut line) {
                                Ok(0) | Err(_) => return,
                                Ok(_) if line == "\r\n" => break,
                                Ok(_) => head.push_str(&line),
                            }
                        }
                        log.lock().unwrap().push(head);
                        let no = "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n";
                        if w.write_all(no.as_bytes()).is_err() {
                            return;
                        }
                    }
                });
            }
        });
        FakeMirror {
            addr,
            heads,
            stop,
            thread: Some(thread),
        }
    }

    fn heads(&self) -> Vec<String> {
        self.heads.lock().unwrap().clone()
    }
}

impl Drop for FakeMirror {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A mirror that accepts the connection and never answers is skipped once the read
/// timeout is over: the read completes from the origin with the right bytes, and during
/// the cool-down later reads do not wait for the mirror again.
#[test]
fn a_mirror_that_never_answers_is_skipped_after_the_timeout() {
    let origin = Registry::with(&Config::default());
    let hole = FakeMirror::start(false);
    let first = random_bytes(8 * MIB, 31);
    let second = random_bytes(8 * MIB, 32);
    Pusher::anonymous(&origin.url("")).push_artifact(
        "fleet/hole",
        "v1",
        &[("first.bin", &first), ("second.bin", &second)],
    );
    let timeout = Duration::from_secs(2);
    let run = Launch::default()
        .arg("--mirror")
        .arg(hole.addr.as_str())
        .arg("--read-timeout")
        .arg("2s")
        .arg("--mirror-cooldown")
        .arg("10m");
    let m = run
        .source(&format!("{}/fleet/hole:v1", origin.addr()))
        .try_mount()
        .unwrap_or_else(|f| panic!("mount: {}", f.stderr));
    let t = Instant::now();
    let got = fs::read(m.join("first.bin")).unwrap();
    let took = t.elapsed();
    assert!(got == first, "the origin served the right bytes");
    let s = stats(&m);
    assert!(
        host(&s, &hole.addr)["failures"].as_u64().unwrap() >= 1,
        "the mirror was asked and failed: {s}"
    );
    assert!(
        host(&s, origin.addr())["bytes"].as_u64().unwrap() >= first.len() as u64,
        "{s}"
    );
    assert!(
        took >= timeout,
        "the mirror was waited for up to the timeout: {took:?}"
    );
    // One request and one retry of the mirror, each up to the timeout, then the origin.
    assert!(took < 3 * timeout + Duration::from_secs(5), "{took:?}");
    let t = Instant::now();
    assert!(fs::read(m.join("second.bin")).unwrap() == second);
    let again = t.elapsed();
    assert!(
        again < timeout,
        "during the cool-down the mirror is not waited for: {again:?}"
    );
    eprintln!("a silent mirror: first read {took:?}, the next {again:?}; {s}");
    m.finish();
}

/// registries.conf `location` and hosts.toml `server` move the origin: SOURCE names a
/// host that does not exist (`.invalid`), the artifact comes from the registry they name,
/// under the path `location` gives. A hosts.toml mirror gets its `header`s.
#[test]
fn location_and_server_move_the_origin_and_mirrors_get_their_headers() {
    let origin = Registry::with(&Config::default());
    let body = random_bytes(3 * MIB, 41);
    Pusher::anonymous(&origin.url("")).push_artifact("ns/fleet/moved", "v1", &[("a.bin", &body)]);
    let tmp = tempfile::tempdir().unwrap();
    let conf = tmp.path().join("registries.conf");
    fs::write(
        &conf,
        format!(
            "[[registry]]\nprefix = \"moved.example.invalid\"\nlocation = \"{}/ns\"\n",
            origin.addr()
        ),
    )
    .unwrap();
    let run = Launch::default()
        .arg("--registries-conf")
        .arg(conf.to_str().unwrap());
    let m = run
        .source("moved.example.invalid/fleet/moved:v1")
        .try_mount()
        .unwrap_or_else(|f| panic!("mount: {}", f.stderr));
    assert!(fs::read(m.join("a.bin")).unwrap() == body);
    let s = stats(&m);
    assert!(
        host(&s, origin.addr())["bytes"].as_u64().unwrap() >= body.len() as u64,
        "{s}"
    );
    m.finish();

    let mirror = FakeMirror::start(true);
    let certs = mkdir(tmp.path(), "certs.d");
    mkdir(&certs, "hub.example.invalid");
    fs::write(
        certs.join("hub.example.invalid/hosts.toml"),
        format!(
            "server = \"http://{0}\"\n\n[host.\"http://{1}/v2/ns\"]\n  capabilities = [\"pull\", \"resolve\"]\n  override_path = true\n  [host.\"http://{1}/v2/ns\".header]\n    x-fleet-team = [\"eo\", \"gis\"]\n",
            origin.addr(),
            mirror.addr
        ),
    )
    .unwrap();
    let run = Launch::default()
        .arg("--hosts-dir")
        .arg(certs.to_str().unwrap())
        .arg("--registries-conf")
        .arg(
            mkdir(tmp.path(), "empty")
                .join("none.conf")
                .to_str()
                .unwrap(),
        );
    fs::write(tmp.path().join("empty/none.conf"), "").unwrap();
    let m = run
        .source("hub.example.invalid/ns/fleet/moved:v1")
        .try_mount()
        .unwrap_or_else(|f| panic!("mount: {}", f.stderr));
    assert!(fs::read(m.join("a.bin")).unwrap() == body);
    let s = stats(&m);
    m.finish();
    let heads = mirror.heads();
    assert!(!heads.is_empty(), "the mirror was asked first: {s}");
    for h in &heads {
        let lower = h.to_ascii_lowercase();
        assert!(
            lower.contains("x-fleet-team: eo\r\n") && lower.contains("x-fleet-team: gis\r\n"),
            "{h}"
        );
        assert!(
            h.contains(" /v2/ns/ns/fleet/moved/"),
            "override_path /v2/ns: {h}"
        );
    }
    assert!(
        host(&s, origin.addr())["bytes"].as_u64().unwrap() >= body.len() as u64,
        "the server named in hosts.toml served: {s}"
    );
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
