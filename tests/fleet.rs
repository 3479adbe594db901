//! Fleets against real engines on loopback: an origin `docker-registry` and a second one
//! in pull-through cache mode (`proxy: remoteurl:`) as the mirror, and `orasfs` mounts
//! that each have their own cache dir, as separate machines would. What each registry
//! served is read from its own log (`response completed ... http.response.written=N`).
//! Every registry and mount stops on drop, also when an assertion fails.

mod registry_support;

use std::fs;
use std::io::Read;
use std::path::Path;
use std::time::{Duration, Instant};

use sha2::{Digest as _, Sha256};

use registry_support::distribution::{htpasswd, sha256, Auth, Config, Distribution, Pusher};
use registry_support::orasfs::{mount, Mounted, Run};

const MIB: usize = 1 << 20;

/// Bytes that do not compress and differ per `seed` (xorshift).
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// One `response completed` line of a distribution log.
#[derive(Debug)]
struct Served {
    method: String,
    uri: String,
    status: u16,
    written: u64,
    user: Option<String>,
}

fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let at = line.find(&format!(" {key}="))? + key.len() + 2;
    let rest = &line[at..];
    if let Some(q) = rest.strip_prefix('"') {
        return q.split('"').next();
    }
    rest.split(' ').next()
}

fn served(log: &str) -> Vec<Served> {
    log.lines()
        .filter(|l| l.contains("msg=\"response completed\""))
        .filter_map(|l| {
            Some(Served {
                method: field(l, "http.request.method")?.to_string(),
                uri: field(l, "http.request.uri")?.to_string(),
                status: field(l, "http.response.status")?.parse().ok()?,
                written: field(l, "http.response.written")?.parse().ok()?,
                user: field(l, "auth.user.name").map(str::to_string),
            })
        })
        .collect()
}

/// Bytes of blob `digest` a registry's log says it sent in GET answers.
fn blob_bytes(reg: &Distribution, digest: &str) -> u64 {
    served(&reg.log_text())
        .iter()
        .filter(|s| s.method == "GET" && s.uri.ends_with(&format!("/blobs/{digest}")))
        .map(|s| s.written)
        .sum()
}

fn stats(m: &Mounted) -> serde_json::Value {
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

fn origin_and_mirror() -> (Distribution, Distribution) {
    let origin = Distribution::start(&Config::default());
    let mirror = Distribution::start(&Config {
        proxy: Some((origin.url(""), None)),
        ..Config::default()
    });
    (origin, mirror)
}

fn with_mirror(mirror: &Distribution) -> Run {
    Run::new().arg("--mirror").arg(mirror.addr())
}

/// Two machines read the same 256 MiB blob through one pull-through cache: the origin
/// sends it about once, the cache serves both.
#[test]
fn a_pull_through_cache_offloads_the_origin() {
    const SIZE: usize = 256 * MIB;
    let (origin, mirror) = origin_and_mirror();
    let big = noise(SIZE, 7);
    let digest = sha256(&big);
    Pusher::anonymous(&origin.url("")).push_artifact("fleet/data", "v1", &[("big.bin", &big)]);
    drop(big);
    let source = format!("{}/fleet/data:v1", origin.addr());
    let started = Instant::now();
    let mut origin_after = Vec::new();
    for machine in 0..2 {
        let m = mount(&source, &with_mirror(&mirror))
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
    let first = served(&mirror.log_text())
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
