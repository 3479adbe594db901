//! `orasfs index` against real things: artifacts pushed by the python ORAS client to a
//! real `docker-registry` (2.8, no referrers API: the referrers tag schema), indexed in
//! both modes and checked with plain HTTP; an OCI layout round trip; the push request
//! sequence against an in-test registry that has the referrers API; and the one-line
//! errors (unknown tag, unreachable registry, refused push, read-only layout).

mod common;

use std::fs;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::{Arc, Mutex};

use serde_json::{json, Value};

use common::http::{Reply, Request, Server};
use common::{random_bytes, sha256, Registry, OCI_INDEX, OCI_MANIFEST};
use orasfs::index::format::{Top, ANNOTATION_BLOB, ANNOTATION_INDEX, ANNOTATION_ROOT, MEDIA_TYPE};
use orasfs::oci::Digest;
use orasfs::source::Source;

const BLOCK: usize = orasfs::cache::block::BLOCK_SIZE as usize;

/// Run `orasfs ARGS` with no credentials from the environment.
fn orasfs(args: &[&str]) -> Output {
    let home = tempfile::tempdir().unwrap();
    Command::new(env!("CARGO_BIN_EXE_orasfs"))
        .args(args)
        .env("HOME", home.path())
        .env_remove("REGISTRY_AUTH_FILE")
        .env_remove("DOCKER_CONFIG")
        .env_remove("XDG_RUNTIME_DIR")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .output()
        .expect("run orasfs")
}

/// `orasfs index ARGS`, which must succeed; returns the digest it printed.
fn index(args: &[&str]) -> String {
    let mut all = vec!["index"];
    all.extend_from_slice(args);
    let out = orasfs(&all);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "orasfs index {args:?}: {stderr}");
    let printed = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(Digest::parse(&printed).is_ok(), "printed {printed:?}");
    printed
}

/// `orasfs index ARGS`, which must fail with one line, before indexing anything;
/// returns it.
fn index_fails(args: &[&str]) -> String {
    let mut all = vec!["index"];
    all.extend_from_slice(args);
    let out = orasfs(&all);
    assert!(!out.status.success(), "orasfs index {args:?} succeeded");
    let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
    assert!(stderr.starts_with("orasfs: "), "{stderr}");
    stderr
}

fn http() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .no_proxy()
        .build()
        .unwrap()
}

/// A manifest by tag or digest: its JSON and digest.
fn manifest(reg: &Registry, repo: &str, reference: &str) -> (Value, String) {
    let r = http()
        .get(reg.url(&format!("/v2/{repo}/manifests/{reference}")))
        .header("Accept", format!("{OCI_MANIFEST}, {OCI_INDEX}"))
        .send()
        .unwrap();
    assert!(
        r.status().is_success(),
        "{repo}:{reference}: {}",
        r.status()
    );
    let bytes = r.bytes().unwrap().to_vec();
    (serde_json::from_slice(&bytes).unwrap(), sha256(&bytes))
}

fn blob(reg: &Registry, repo: &str, digest: &str) -> Vec<u8> {
    let r = http()
        .get(reg.url(&format!("/v2/{repo}/blobs/{digest}")))
        .send()
        .unwrap();
    assert!(r.status().is_success(), "blob {digest}: {}", r.status());
    r.bytes().unwrap().to_vec()
}

/// The index blob `index` checks against its root, describes `data`, and its leaves
/// hold the sha256 of `data`'s first and last blocks (and not of a flipped block).
fn assert_index_describes(index: &[u8], root: &str, data: &[u8]) {
    let top = Top::verify(index, &Digest::parse(root).unwrap()).expect("index matches its root");
    assert_eq!(top.header.blob.to_string(), sha256(data));
    assert_eq!(top.header.blob_size, data.len() as u64);
    assert_eq!(top.header.block_size, BLOCK as u64);
    assert_eq!(top.header.index_len(), index.len() as u64);
    let blocks = data.len().div_ceil(BLOCK) as u64;
    for b in [0, blocks.saturating_sub(1)] {
        let (leaf, slot) = top.locate(b);
        let r = top.header.leaf_range(leaf);
        let leaf = top
            .verify_leaf(leaf, &index[r.start as usize..r.end as usize])
            .expect("leaf matches the top table");
        let s = b as usize * BLOCK;
        let block = &data[s..(s + BLOCK).min(data.len())];
        assert!(leaf.check(slot, block), "block {b}");
        let mut flipped = block.to_vec();
        flipped[0] ^= 1;
        assert!(!leaf.check(slot, &flipped), "flipped block {b}");
    }
}

fn annotation<'a>(d: &'a Value, key: &str) -> &'a str {
    d["annotations"][key].as_str().unwrap_or("")
}

/// Data files pushed with the ORAS client: a 3 MiB blob (two leaves of blocks) and a
/// small one.
fn pushed(reg: &Registry, repo_tag: &str) -> Option<Vec<(String, Vec<u8>)>> {
    let files = vec![
        (
            "weights.bin".to_string(),
            random_bytes(3 * (1 << 20) + 17, 1),
        ),
        ("notes.txt".to_string(), b"indexed by orasfs\n".to_vec()),
    ];
    let refs: Vec<(&str, &[u8])> = files
        .iter()
        .map(|(n, b)| (n.as_str(), b.as_slice()))
        .collect();
    if !common::have_oras("oras_push") {
        return None;
    }
    common::oras_push(reg.addr(), repo_tag, &refs);
    Some(files)
}

/// The data bytes of a layer, by the title the ORAS client gave it.
fn data_of<'a>(files: &'a [(String, Vec<u8>)], layer: &Value) -> &'a [u8] {
    let title = annotation(layer, "org.opencontainers.image.title");
    &files
        .iter()
        .find(|(n, _)| n == title)
        .unwrap_or_else(|| panic!("no file titled {title:?}"))
        .1
}

#[test]
fn referrer_mode_leaves_the_artifact_and_is_found_through_the_referrers_tag() {
    let reg = Registry::start();
    let Some(files) = pushed(&reg, "ml/model:v1") else {
        return;
    };
    let (data_manifest, subject) = manifest(&reg, "ml/model", "v1");
    let src = format!("{}/ml/model:v1", reg.addr());

    let referrer = index(&[&src]);
    let (after, still) = manifest(&reg, "ml/model", "v1");
    assert_eq!(still, subject, "the artifact is unchanged");
    assert_eq!(after, data_manifest);

    // docker-registry 2.8 has no referrers API: the referrer is listed under the tag
    // sha256-<hex of the subject>.
    let tag = format!("sha256-{}", &subject["sha256:".len()..]);
    let (list, _) = manifest(&reg, "ml/model", &tag);
    let listed: Vec<&Value> = list["manifests"].as_array().unwrap().iter().collect();
    assert_eq!(listed.len(), 1, "{list}");
    assert_eq!(listed[0]["digest"], referrer.as_str());
    assert_eq!(listed[0]["artifactType"], MEDIA_TYPE);

    let (art, _) = manifest(&reg, "ml/model", &referrer);
    assert_eq!(art["artifactType"], MEDIA_TYPE);
    assert_eq!(art["subject"]["digest"], subject.as_str());
    assert_eq!(
        art["config"]["mediaType"],
        "application/vnd.oci.empty.v1+json"
    );
    let data_layers = data_manifest["layers"].as_array().unwrap();
    let index_layers = art["layers"].as_array().unwrap();
    assert_eq!(index_layers.len(), data_layers.len());
    for (data, ix) in data_layers.iter().zip(index_layers) {
        assert_eq!(ix["mediaType"], MEDIA_TYPE);
        assert_eq!(
            annotation(ix, ANNOTATION_BLOB),
            data["digest"].as_str().unwrap()
        );
        let bytes = blob(&reg, "ml/model", ix["digest"].as_str().unwrap());
        assert_eq!(sha256(&bytes), ix["digest"].as_str().unwrap());
        assert_index_describes(
            &bytes,
            annotation(ix, ANNOTATION_ROOT),
            data_of(&files, data),
        );
    }

    // orasfs's own reader finds it.
    let client = orasfs::source::registry::Client::new(
        orasfs::source::registry::ClientConfig::new(reg.addr()),
    )
    .unwrap();
    let found = orasfs::source::registry::adapter::RegistrySource::new(client)
        .referrers("ml/model", &Digest::parse(&subject).unwrap())
        .unwrap();
    assert!(
        found
            .iter()
            .any(|d| d.digest.to_string() == referrer
                && d.artifact_type.as_deref() == Some(MEDIA_TYPE)),
        "{found:?}"
    );

    // Indexing again makes the same referrer, listed once.
    assert_eq!(index(&[&src]), referrer);
    let (list, _) = manifest(&reg, "ml/model", &tag);
    assert_eq!(list["manifests"].as_array().unwrap().len(), 1, "{list}");
}

#[test]
fn embed_mode_rewrites_the_manifest_to_bind_the_index() {
    let reg = Registry::start();
    let Some(files) = pushed(&reg, "eo/cog:v1") else {
        return;
    };
    let (original, original_digest) = manifest(&reg, "eo/cog", "v1");

    // To another tag first: v1 stays as it was.
    let src = format!("{}/eo/cog:v1", reg.addr());
    let rewritten = index(&["--embed", "--tag", "v1-indexed", &src]);
    assert_eq!(manifest(&reg, "eo/cog", "v1").1, original_digest);
    let (m, d) = manifest(&reg, "eo/cog", "v1-indexed");
    assert_eq!(d, rewritten);
    assert_ne!(d, original_digest);

    let data_layers = original["layers"].as_array().unwrap();
    let layers = m["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 2 * data_layers.len(), "{m}");
    for (i, data) in data_layers.iter().enumerate() {
        let annotated = &layers[i];
        assert_eq!(annotated["digest"], data["digest"]);
        assert_eq!(
            annotation(annotated, "org.opencontainers.image.title"),
            annotation(data, "org.opencontainers.image.title")
        );
        let ix = layers
            .iter()
            .find(|l| l["digest"].as_str() == Some(annotation(annotated, ANNOTATION_INDEX)))
            .unwrap_or_else(|| panic!("no index layer for {data}"));
        assert_eq!(ix["mediaType"], MEDIA_TYPE);
        assert_eq!(
            annotation(ix, ANNOTATION_BLOB),
            data["digest"].as_str().unwrap()
        );
        assert_eq!(
            annotation(ix, ANNOTATION_ROOT),
            annotation(annotated, ANNOTATION_ROOT)
        );
        let bytes = blob(&reg, "eo/cog", ix["digest"].as_str().unwrap());
        assert_index_describes(
            &bytes,
            annotation(ix, ANNOTATION_ROOT),
            data_of(&files, data),
        );
    }
    assert_eq!(m["config"], original["config"]);

    // To the same tag: the same manifest (the rewrite is deterministic), and indexing the
    // rewritten manifest again changes nothing.
    assert_eq!(index(&["--embed", &src]), rewritten);
    assert_eq!(manifest(&reg, "eo/cog", "v1").1, rewritten);
    assert_eq!(index(&["--embed", &src]), rewritten);
}

/// An OCI layout with one artifact tagged `v1`; returns the data and manifest digest.
fn write_layout(dir: &Path, data: &[u8]) -> String {
    let blobs = dir.join("blobs/sha256");
    fs::create_dir_all(&blobs).unwrap();
    let put = |bytes: &[u8]| {
        let d = sha256(bytes);
        fs::write(blobs.join(&d["sha256:".len()..]), bytes).unwrap();
        d
    };
    let config = put(b"{}");
    let layer = put(data);
    let m = json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": config, "size": 2},
        "layers": [{"mediaType": "image/tiff", "digest": layer, "size": data.len(),
                    "annotations": {"org.opencontainers.image.title": "scene.tif"}}],
    })
    .to_string();
    let md = put(m.as_bytes());
    fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    let index = json!({"schemaVersion": 2, "manifests": [{"mediaType": OCI_MANIFEST,
        "digest": md, "size": m.len(),
        "annotations": {"org.opencontainers.image.ref.name": "v1"}}]});
    fs::write(dir.join("index.json"), index.to_string()).unwrap();
    md
}

#[test]
fn layout_round_trip_in_both_modes() {
    use orasfs::source::layout::LayoutSource;
    use orasfs::source::Reference;
    let dir = tempfile::tempdir().unwrap();
    let data = random_bytes(5 * BLOCK + 1234, 7);
    let subject = write_layout(dir.path(), &data);
    let src = format!("{}:v1", dir.path().display());

    let referrer = index(&[&src]);
    let layout = LayoutSource::open(dir.path()).unwrap();
    let found = layout
        .referrers("", &Digest::parse(&subject).unwrap())
        .unwrap();
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].digest.to_string(), referrer);
    assert_eq!(found[0].artifact_type.as_deref(), Some(MEDIA_TYPE));
    let art = layout
        .manifest("", &Reference::Digest(found[0].digest.clone()))
        .unwrap();
    let orasfs::oci::Manifest::Image(art) = art.manifest else {
        panic!("not an image manifest");
    };
    let ix = &art.layers[0];
    let bytes = fs::read(dir.path().join("blobs/sha256").join(ix.digest.hex())).unwrap();
    assert_index_describes(&bytes, &ix.annotations[ANNOTATION_ROOT], &data);
    assert_eq!(index(&[&src]), referrer, "again: the same referrer");
    assert_eq!(
        layout
            .referrers("", &Digest::parse(&subject).unwrap())
            .unwrap()
            .len(),
        1
    );

    let rewritten = index(&["--embed", "--tag", "v2", &src]);
    assert_eq!(layout.tags("").unwrap(), vec!["v1", "v2"]);
    let v1 = layout.manifest("", &Reference::Tag("v1".into())).unwrap();
    assert_eq!(v1.digest.to_string(), subject);
    let v2 = layout.manifest("", &Reference::Tag("v2".into())).unwrap();
    assert_eq!(v2.digest.to_string(), rewritten);
    let orasfs::oci::Manifest::Image(m) = v2.manifest else {
        panic!("not an image manifest");
    };
    assert_eq!(m.layers.len(), 2);
    assert_eq!(
        m.layers[0].annotations[ANNOTATION_INDEX],
        m.layers[1].digest.to_string()
    );
    let bytes = fs::read(
        dir.path()
            .join("blobs/sha256")
            .join(m.layers[1].digest.hex()),
    )
    .unwrap();
    assert_index_describes(&bytes, &m.layers[0].annotations[ANNOTATION_ROOT], &data);
    // No temporary file is left behind.
    let stray: Vec<_> = fs::read_dir(dir.path())
        .unwrap()
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !["blobs", "index.json", "oci-layout"].contains(&n.as_str()))
        .collect();
    assert!(stray.is_empty(), "{stray:?}");
}

/// A registry with the referrers API, simulated: serves one artifact, takes uploads, and
/// answers a manifest push with `OCI-Subject` when `subject_api` is set.
struct FakeRegistry {
    server: Server,
    log: Arc<Mutex<Vec<Request>>>,
    manifest_digest: String,
    data: Vec<u8>,
}

impl FakeRegistry {
    fn start(subject_api: bool) -> FakeRegistry {
        let data = random_bytes(2 * BLOCK + 5, 3);
        let data_digest = sha256(&data);
        let empty = sha256(b"{}");
        let manifest = json!({
            "schemaVersion": 2, "mediaType": OCI_MANIFEST,
            "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": empty, "size": 2},
            "layers": [{"mediaType": "application/octet-stream", "digest": data_digest, "size": data.len()}],
        })
        .to_string()
        .into_bytes();
        let manifest_digest = sha256(&manifest);
        let log: Arc<Mutex<Vec<Request>>> = Arc::default();
        let (seen, body, md) = (log.clone(), data.clone(), manifest_digest.clone());
        let server = Server::start(
            "127.0.0.1",
            Arc::new(move |req: Request| {
                seen.lock().unwrap().push(req.clone());
                let path = req.path().to_string();
                match (req.method.as_str(), path.as_str()) {
                    ("GET", "/v2/") => Reply::new(200),
                    ("GET", "/v2/r/manifests/v1") => Reply::new(200)
                        .header("Content-Type", OCI_MANIFEST)
                        .header("Docker-Content-Digest", &md)
                        .body(manifest.clone()),
                    ("GET", p) if p == format!("/v2/r/blobs/{data_digest}") => {
                        Reply::new(200).body(body.clone())
                    }
                    ("HEAD", p) if p == format!("/v2/r/blobs/{empty}") => Reply::new(200),
                    ("HEAD", _) => Reply::new(404),
                    ("POST", "/v2/r/blobs/uploads/") => {
                        Reply::new(202).header("Location", "/upload/1?state=x")
                    }
                    ("DELETE", "/upload/1") => Reply::new(204),
                    ("PUT", "/upload/1") => match req.param("digest") {
                        Some(d) if d == sha256(&req.body) && req.param("state").is_some() => {
                            Reply::new(201)
                        }
                        _ => Reply::new(400),
                    },
                    ("PUT", p) if p.starts_with("/v2/r/manifests/") => {
                        let mut r =
                            Reply::new(201).header("Docker-Content-Digest", &sha256(&req.body));
                        if subject_api {
                            r = r.header("OCI-Subject", &md);
                        }
                        r
                    }
                    _ => Reply::new(404),
                }
            }),
        );
        FakeRegistry {
            server,
            log,
            manifest_digest,
            data,
        }
    }

    /// `METHOD path` of every request but the reads of the artifact.
    fn pushes(&self) -> Vec<String> {
        self.log
            .lock()
            .unwrap()
            .iter()
            .filter(|r| r.method != "GET" || r.path().contains("sha256-"))
            .map(|r| format!("{} {}", r.method, r.path()))
            .collect()
    }

    fn body_of(&self, method: &str, path: &str) -> Vec<u8> {
        self.log
            .lock()
            .unwrap()
            .iter()
            .find(|r| r.method == method && r.path() == path)
            .map(|r| r.body.clone())
            .unwrap_or_else(|| panic!("no {method} {path}"))
    }
}

#[test]
fn push_sequence_against_a_registry_with_and_without_the_referrers_api() {
    for subject_api in [true, false] {
        let fake = FakeRegistry::start(subject_api);
        let src = format!("{}/r:v1", fake.server.addr());
        let referrer = index(&[&src]);
        let pushes = fake.pushes();
        let uploaded = fake.body_of("PUT", "/upload/1");
        let ix = sha256(&uploaded);
        let mut want = vec![
            // Push access is checked before the blob is read: an upload started, cancelled.
            "POST /v2/r/blobs/uploads/".to_string(),
            "DELETE /upload/1".to_string(),
            format!("HEAD /v2/r/blobs/{ix}"),
            "POST /v2/r/blobs/uploads/".to_string(),
            "PUT /upload/1".to_string(),
            format!("HEAD /v2/r/blobs/{}", sha256(b"{}")),
            format!("PUT /v2/r/manifests/{referrer}"),
        ];
        let tag = format!("/v2/r/manifests/sha256-{}", &fake.manifest_digest[7..]);
        if !subject_api {
            // No OCI-Subject: the referrers tag is read (404 here) and written.
            want.push(format!("GET {tag}"));
            want.push(format!("PUT {tag}"));
            let list: Value = serde_json::from_slice(&fake.body_of("PUT", &tag)).unwrap();
            assert_eq!(list["manifests"][0]["digest"], referrer.as_str());
        }
        assert_eq!(pushes, want, "referrers API: {subject_api}");
        let art: Value =
            serde_json::from_slice(&fake.body_of("PUT", &format!("/v2/r/manifests/{referrer}")))
                .unwrap();
        assert_eq!(art["subject"]["digest"], fake.manifest_digest.as_str());
        assert_index_describes(
            &uploaded,
            annotation(&art["layers"][0], ANNOTATION_ROOT),
            &fake.data,
        );
    }
}

#[test]
fn failures_are_one_line_naming_what_and_where() {
    let reg = Registry::start();
    reg.push_artifact("t/a", "v1", &[("a.txt", b"a")]);
    let e = index_fails(&[&format!("{}/t/a:nope", reg.addr())]);
    assert!(
        e.contains("tag nope") && e.contains("t/a") && e.contains("not found"),
        "{e}"
    );

    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let e = index_fails(&["--retries", "0", &format!("127.0.0.1:{port}/t/a:v1")]);
    assert!(
        e.contains("cannot reach") && e.contains(&port.to_string()),
        "{e}"
    );

    let e = index_fails(&[&format!("{}/t/a", reg.addr())]);
    assert!(e.contains("name one artifact"), "{e}");
}

#[test]
fn a_push_the_token_service_does_not_grant_is_refused_naming_the_registry() {
    use common::certs;
    use common::token::TokenServer;
    use common::{Config, Pusher};
    let tmp = tempfile::tempdir().unwrap();
    let signer = certs::token_signer(tmp.path());
    let tokens = TokenServer::start(&signer);
    tokens.state().public.insert("public/data".into());
    let reg = Registry::with(&Config {
        auth: tokens.registry_auth(&signer),
        ..Config::default()
    });
    Pusher::new(&reg.url(""), None, tokens.pusher_auth()).push_artifact(
        "public/data",
        "v1",
        &[("open.txt", b"for everyone\n")],
    );
    // Anyone may pull, nobody anonymous may push.
    let e = index_fails(&[&format!("{}/public/data:v1", reg.addr())]);
    assert!(e.contains(reg.addr()), "{e}");
    assert!(e.contains("push to") && e.contains("refused"), "{e}");
    assert!(e.contains("--username"), "names the fix: {e}");
}

#[test]
fn a_read_only_layout_is_refused_in_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().to_str().unwrap().to_string();
    let run = |args: &[&str]| Command::new("mount").args(args).status().unwrap().success();
    struct Unmount(Option<String>);
    impl Drop for Unmount {
        fn drop(&mut self) {
            if let Some(p) = &self.0 {
                let _ = Command::new("umount").arg(p).status();
            }
        }
    }
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    // Root writes anywhere: a read-only tmpfs. Others: directories without write bits.
    let _guard = Unmount(root.then(|| p.clone()));
    if root {
        assert!(run(&["-t", "tmpfs", "tmpfs", &p]), "mount a tmpfs");
    }
    write_layout(dir.path(), b"some bytes");
    let want = if root {
        assert!(run(&["-o", "remount,ro", &p]), "remount read-only");
        "Read-only file system"
    } else {
        use std::os::unix::fs::PermissionsExt;
        for d in [dir.path().join("blobs/sha256"), dir.path().to_path_buf()] {
            fs::set_permissions(&d, fs::Permissions::from_mode(0o555)).unwrap();
        }
        "Permission denied"
    };
    let e = index_fails(&[&format!("{p}:v1")]);
    if !root {
        use std::os::unix::fs::PermissionsExt;
        for d in [dir.path().to_path_buf(), dir.path().join("blobs/sha256")] {
            let _ = fs::set_permissions(&d, fs::Permissions::from_mode(0o755));
        }
    }
    assert!(e.contains(&p) && e.contains(want), "{e}");
}
