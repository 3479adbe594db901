//! Tests of the filesystem core (tree, naming, read path, cache) against the in-memory
//! source: no FUSE, no network.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use proptest::prelude::*;

use crate::cache::block::BLOCK_SIZE;
use crate::cache::{BlobCache, CacheConfig};
use crate::fs::error::{to_errno, FsError};
use crate::fs::tree::{RootKind, Tree, TreeConfig, ROOT};
use crate::fs::{Fs, FsConfig};
use crate::oci::{Descriptor, ANNOTATION_TITLE};
use crate::read::{BlobReader, ReadConfig, VerifyMode};
use crate::source::memory::MemorySource;
use crate::source::Reference;

fn titled(mut d: Descriptor, title: &str) -> Descriptor {
    d.annotations.insert(ANNOTATION_TITLE.into(), title.into());
    d
}

fn desc_json(d: &Descriptor) -> serde_json::Value {
    let mut v = serde_json::json!({"mediaType": d.media_type, "digest": d.digest.to_string(), "size": d.size});
    if !d.annotations.is_empty() {
        v["annotations"] = serde_json::to_value(&d.annotations).unwrap();
    }
    v
}

fn image_manifest(src: &MemorySource, layers: &[Descriptor]) -> Vec<u8> {
    let config = src.put_blob("application/vnd.oci.empty.v1+json", b"{}".to_vec());
    serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": crate::oci::OCI_MANIFEST,
        "config": desc_json(&config),
        "layers": layers.iter().map(desc_json).collect::<Vec<_>>(),
        "annotations": {"org.opencontainers.image.created": "2024-05-01T12:00:00Z"},
    }))
    .unwrap()
}

fn bytes(n: usize, seed: u8) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u64 * 2654435761 % 251) as u8 ^ seed)
        .collect()
}

struct World {
    src: Arc<MemorySource>,
    fs: Fs,
    _dir: tempfile::TempDir,
}

fn world(src: Arc<MemorySource>, root: RootKind, verify: VerifyMode) -> World {
    let dir = tempfile::tempdir().unwrap();
    world_in(src, root, verify, dir)
}

fn world_in(
    src: Arc<MemorySource>,
    root: RootKind,
    verify: VerifyMode,
    dir: tempfile::TempDir,
) -> World {
    let tree = Tree::new(src.clone(), root, TreeConfig::default()).unwrap();
    let cfg = ReadConfig {
        verify,
        ..ReadConfig::default()
    };
    World {
        src,
        fs: fs_over(tree, dir.path(), cfg),
        _dir: dir,
    }
}

/// The filesystem core over `tree` with a cache in `dir`.
/// A filesystem core over a cache in `dir` that keeps no free-space floor: what these
/// tests assert of the cache must not depend on how full the build machine's disk is.
fn fs_over(tree: Tree, dir: &std::path::Path, cfg: ReadConfig) -> Fs {
    let mut cache_cfg = CacheConfig::new(dir.to_path_buf());
    cache_cfg.min_free_percent = 0.0;
    let cache = BlobCache::open(cache_cfg).unwrap();
    let reader = BlobReader::new(cache, tree.source().clone(), cfg);
    Fs::new(tree, reader, FsConfig::default())
}

const MIB: u64 = 1024 * 1024;

fn path(fs: &Fs, p: &str) -> Result<u64, FsError> {
    let mut ino = ROOT;
    for c in p.split('/').filter(|c| !c.is_empty()) {
        ino = fs.lookup(ino, c)?.attr.ino;
    }
    Ok(ino)
}

fn read_all(fs: &Fs, ino: u64) -> Result<Vec<u8>, FsError> {
    let fh = fs.open(ino, false)?.fh;
    let mut out = Vec::new();
    loop {
        let b = fs.read(fh, out.len() as u64, 128 * 1024)?;
        if b.is_empty() {
            break;
        }
        out.extend_from_slice(&b);
    }
    fs.release(fh);
    Ok(out)
}

fn names(fs: &Fs, ino: u64) -> Vec<String> {
    fs.readdir(ino)
        .unwrap()
        .into_iter()
        .map(|e| e.name)
        .filter(|n| n != "." && n != "..")
        .collect()
}

#[test]
fn registry_tree_repos_tags_files_and_fallbacks() {
    let src = Arc::new(MemorySource::new());
    let big = bytes(3 * MIB as usize + 17, 1);
    let layers = vec![
        titled(src.put_blob("image/tiff", big.clone()), "imagery.tif"),
        titled(
            src.put_blob("application/geo+json", b"{}".to_vec()),
            "docs/stac.json",
        ),
        src.put_blob("application/octet-stream", b"untitled".to_vec()),
        titled(
            src.put_blob("application/octet-stream", b"evil".to_vec()),
            "../../x",
        ),
    ];
    let m = image_manifest(&src, &layers);
    src.put_manifest("eo/products", Some("v1"), m.clone());
    let w = world(src.clone(), RootKind::Registry, VerifyMode::Lazy);
    assert_eq!(names(&w.fs, ROOT), ["eo"]);
    assert_eq!(names(&w.fs, path(&w.fs, "eo").unwrap()), ["products"]);
    assert_eq!(names(&w.fs, path(&w.fs, "eo/products").unwrap()), ["v1"]);
    let v1 = path(&w.fs, "eo/products/v1").unwrap();
    let mut listed = names(&w.fs, v1);
    listed.sort();
    let mut want = vec![
        ".config.json".to_string(),
        ".manifest.json".into(),
        "docs".into(),
        "imagery.tif".into(),
        format!("sha256-{}", layers[2].digest.hex()),
        format!("sha256-{}", layers[3].digest.hex()),
    ];
    want.sort();
    assert_eq!(listed, want);
    assert_eq!(
        read_all(&w.fs, path(&w.fs, "eo/products/v1/imagery.tif").unwrap()).unwrap(),
        big
    );
    assert_eq!(
        read_all(&w.fs, path(&w.fs, "eo/products/v1/.manifest.json").unwrap()).unwrap(),
        m
    );
    assert_eq!(
        read_all(&w.fs, path(&w.fs, "eo/products/v1/docs/stac.json").unwrap()).unwrap(),
        b"{}"
    );
    let evil = format!("eo/products/v1/sha256-{}", layers[3].digest.hex());
    assert_eq!(
        read_all(&w.fs, path(&w.fs, &evil).unwrap()).unwrap(),
        b"evil"
    );
    let a =
        w.fs.getattr(path(&w.fs, "eo/products/v1/imagery.tif").unwrap())
            .unwrap();
    assert_eq!(
        (a.attr.size, a.attr.perm, a.attr.is_dir),
        (big.len() as u64, 0o444, false)
    );
    assert_eq!(w.fs.getattr(v1).unwrap().attr.perm, 0o555);
    // Files carry the manifest's `created` annotation; the tag directory, which a re-push
    // can change, has the fixed epoch.
    let created =
        w.fs.getattr(path(&w.fs, "eo/products/v1/imagery.tif").unwrap())
            .unwrap()
            .attr
            .mtime;
    assert_eq!(
        created,
        std::time::UNIX_EPOCH + std::time::Duration::from_secs(1714564800)
    );
    assert_eq!(w.fs.getattr(v1).unwrap().attr.mtime, w.fs.tree().epoch());
    // Digest lookup works though it is not listed; unknown names do not.
    let digest = crate::oci::Digest::of(&m);
    let by_digest = path(&w.fs, &format!("eo/products/{digest}")).unwrap();
    assert!(w.fs.getattr(by_digest).unwrap().attr.is_dir);
    assert!(!names(&w.fs, path(&w.fs, "eo/products").unwrap()).contains(&digest.to_string()));
    assert!(matches!(
        path(&w.fs, "eo/products/v2"),
        Err(FsError::NotFound)
    ));
    assert!(matches!(path(&w.fs, "nope"), Err(FsError::NotFound)));
    assert_eq!(
        to_errno(
            &w.fs
                .open(path(&w.fs, "eo/products/v1/imagery.tif").unwrap(), true)
                .unwrap_err()
        ),
        libc::EROFS
    );
}

#[test]
fn index_entries_are_platform_directories() {
    let src = Arc::new(MemorySource::new());
    let amd = image_manifest(&src, &[titled(src.put_blob("x", b"amd".to_vec()), "bin")]);
    let arm = image_manifest(&src, &[titled(src.put_blob("x", b"arm".to_vec()), "bin")]);
    let other = image_manifest(&src, &[]);
    let da = src.put_manifest("app", None, amd.clone());
    let db = src.put_manifest("app", None, arm.clone());
    let dc = src.put_manifest("app", None, other.clone());
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": crate::oci::OCI_INDEX,
        "manifests": [
            {"mediaType": crate::oci::OCI_MANIFEST, "digest": da.to_string(), "size": amd.len(), "platform": {"os": "linux", "architecture": "amd64"}},
            {"mediaType": crate::oci::OCI_MANIFEST, "digest": db.to_string(), "size": arm.len(), "platform": {"os": "linux", "architecture": "arm64", "variant": "v8"}},
            {"mediaType": crate::oci::OCI_MANIFEST, "digest": dc.to_string(), "size": other.len()},
        ]
    });
    src.put_manifest("app", Some("v1"), serde_json::to_vec(&index).unwrap());
    let w = world(src, RootKind::Repository("app".into()), VerifyMode::Lazy);
    let v1 = path(&w.fs, "v1").unwrap();
    assert_eq!(
        names(&w.fs, v1),
        [
            "linux-amd64".to_string(),
            "linux-arm64-v8".into(),
            format!("sha256-{}", dc.hex())
        ]
    );
    assert_eq!(
        read_all(&w.fs, path(&w.fs, "v1/linux-arm64-v8/bin").unwrap()).unwrap(),
        b"arm"
    );
    assert_eq!(
        read_all(&w.fs, path(&w.fs, "v1/linux-amd64/bin").unwrap()).unwrap(),
        b"amd"
    );
}

fn single_blob_world(size: usize, verify: VerifyMode) -> (World, Vec<u8>, u64) {
    let src = Arc::new(MemorySource::new());
    let data = bytes(size, 9);
    let layer = titled(src.put_blob("x", data.clone()), "f");
    src.put_manifest("r", Some("t"), image_manifest(&src, &[layer]));
    let w = world(
        src,
        RootKind::Artifact("r".into(), Reference::Tag("t".into())),
        verify,
    );
    let ino = path(&w.fs, "f").unwrap();
    (w, data, ino)
}

#[test]
fn a_small_read_of_a_large_blob_is_lazy() {
    let (w, data, ino) = single_blob_world(64 * MIB as usize, VerifyMode::Lazy);
    let fh = w.fs.open(ino, false).unwrap().fh;
    // A 64 KiB read that straddles two blocks of a cold 64 MiB blob: at most 128 KiB.
    let off = 40 * MIB + 12345;
    assert_eq!(
        w.fs.read(fh, off, 65536).unwrap(),
        &data[off as usize..off as usize + 65536]
    );
    assert!(w.src.blob_bytes.load(Ordering::Relaxed) <= 128 * 1024);
    assert_eq!(
        w.src.blob_requests.load(Ordering::Relaxed),
        1,
        "one range request"
    );
    assert_eq!(w.fs.getxattr(ino, "user.orasfs.verified").unwrap(), b"none");
}

#[test]
fn corrupted_bytes_never_complete_a_read_and_are_dropped() {
    let (w, data, ino) = single_blob_world(5 * MIB as usize + 3, VerifyMode::Lazy);
    w.src.corrupt.store(true, Ordering::Relaxed);
    let err = read_all(&w.fs, ino).unwrap_err();
    assert_eq!(to_errno(&err), libc::EIO, "{err}");
    assert_eq!(
        w.fs.cache()
            .stats
            .integrity_failures
            .load(Ordering::Relaxed),
        1
    );
    // Bad bytes do not stay cached: no partial or verified file of the blob is left.
    w.fs.wait_idle();
    let hex = crate::oci::Digest::of(&data).hex().to_string();
    for dir in ["v2/partial/sha256", "v2/blobs/sha256"] {
        let f = w._dir.path().join(dir).join(&hex);
        // A fresh, empty partial file may be opened again; it must hold no byte.
        let held = std::fs::metadata(&f).map_or(0, |m| {
            use std::os::unix::fs::MetadataExt;
            m.blocks()
        });
        assert_eq!(
            held,
            0,
            "{} keeps bytes after a digest mismatch",
            f.display()
        );
    }
    // A transient fault needs no remount: the next read fetches again and succeeds.
    w.src.corrupt.store(false, Ordering::Relaxed);
    assert_eq!(read_all(&w.fs, ino).unwrap(), data);
    w.fs.wait_idle();
    assert_eq!(w.fs.getxattr(ino, "user.orasfs.verified").unwrap(), b"blob");
}

/// A verified file damaged on disk while the filesystem runs: the next read of the
/// damaged block is caught by its CRC and that block fetched again, never served (the
/// read path holds no copy in memory that would hide the damage).
#[test]
fn a_verified_file_damaged_in_place_is_caught_by_its_crc() {
    use std::os::unix::fs::FileExt;
    let (w, data, ino) = single_blob_world(6 * MIB as usize + 5, VerifyMode::Lazy);
    assert_eq!(read_all(&w.fs, ino).unwrap(), data);
    w.fs.wait_idle();
    assert_eq!(w.fs.getxattr(ino, "user.orasfs.verified").unwrap(), b"blob");
    let hex = crate::oci::Digest::of(&data).hex().to_string();
    let blob = w._dir.path().join("v2/blobs/sha256").join(&hex);
    let at = 3 * MIB + 7;
    std::fs::OpenOptions::new()
        .write(true)
        .open(&blob)
        .unwrap()
        .write_all_at(&[data[at as usize] ^ 0x10], at)
        .unwrap();
    let before = w.src.blob_bytes.load(Ordering::Relaxed);
    let fh = w.fs.open(ino, false).unwrap().fh;
    let want = &data[at as usize - 100..][..200];
    // The read that detects the damage may fail (EIO); it never returns the damaged byte.
    match w.fs.read(fh, at - 100, 200) {
        Ok(got) => assert!(got == want, "a damaged block of a verified file is served"),
        Err(e) => assert_eq!(to_errno(&e), libc::EIO, "{e}"),
    }
    // And the next read is right: the block was fetched again, not failed for good.
    assert!(w.fs.read(fh, at - 100, 200).unwrap() == want);
    w.fs.release(fh);
    assert!(w.fs.cache().stats.corrupt_blocks.load(Ordering::Relaxed) >= 1);
    assert!(
        w.src.blob_bytes.load(Ordering::Relaxed) > before,
        "the damaged block is fetched again"
    );
    assert_eq!(read_all(&w.fs, ino).unwrap(), data);
}

#[test]
fn small_blobs_and_strict_mode_verify_before_the_first_byte() {
    for (size, mode) in [
        (1000, VerifyMode::Lazy),
        (3 * MIB as usize, VerifyMode::Strict),
    ] {
        let src_size = if mode == VerifyMode::Strict {
            6 * MIB as usize
        } else {
            size
        };
        let (w, data, ino) = single_blob_world(src_size, mode);
        w.src.corrupt.store(true, Ordering::Relaxed);
        let fh = w.fs.open(ino, false).unwrap().fh;
        assert!(
            w.fs.read(fh, 100, 10).is_err(),
            "no byte of a corrupt blob is served"
        );
        w.src.corrupt.store(false, Ordering::Relaxed);
        assert_eq!(w.fs.read(fh, 100, 10).unwrap(), &data[100..110]);
        assert_eq!(w.fs.getxattr(ino, "user.orasfs.verified").unwrap(), b"blob");
    }
}

#[test]
fn server_without_range_support_is_served_from_the_whole_blob() {
    let (w, data, ino) = single_blob_world(7 * MIB as usize, VerifyMode::Lazy);
    w.src.ignore_ranges.store(true, Ordering::Relaxed);
    let fh = w.fs.open(ino, false).unwrap().fh;
    assert_eq!(
        w.fs.read(fh, 3 * MIB, 10).unwrap(),
        &data[3 * MIB as usize..][..10]
    );
    let after_first = w.src.blob_requests.load(Ordering::Relaxed);
    assert_eq!(read_all(&w.fs, ino).unwrap(), data);
    assert_eq!(
        w.src.blob_requests.load(Ordering::Relaxed),
        after_first,
        "whole blob is cached"
    );
}

#[test]
fn concurrent_cold_readers_share_fetches() {
    let (w, data, ino) = single_blob_world(24 * MIB as usize, VerifyMode::Lazy);
    let w = Arc::new(w);
    let threads: Vec<_> = (0..8)
        .map(|_| {
            let w = w.clone();
            std::thread::spawn(move || read_all(&w.fs, ino).unwrap())
        })
        .collect();
    for t in threads {
        assert_eq!(t.join().unwrap(), data);
    }
    let served = w.src.blob_bytes.load(Ordering::Relaxed);
    assert!(
        served <= data.len() as u64 * 11 / 10,
        "served {served} for {}",
        data.len()
    );
}

#[test]
fn cache_survives_a_remount_and_tampering_is_refetched() {
    let src = Arc::new(MemorySource::new());
    let data = bytes(6 * MIB as usize + 11, 3);
    let layer = titled(src.put_blob("x", data.clone()), "f");
    src.put_manifest(
        "r",
        Some("t"),
        image_manifest(&src, std::slice::from_ref(&layer)),
    );
    let dir = tempfile::tempdir().unwrap();
    let keep = dir.path().to_path_buf();
    let root = || RootKind::Artifact("r".into(), Reference::Tag("t".into()));
    let half = 3 * MIB as usize;
    {
        let tree = Tree::new(src.clone(), root(), TreeConfig::default()).unwrap();
        let fs = fs_over(tree, &keep, ReadConfig::default());
        // Read only half, so a partial blob (not a verified one) stays behind.
        let fh = fs.open(path(&fs, "f").unwrap(), false).unwrap().fh;
        assert_eq!(fs.read(fh, 0, half as u32).unwrap(), &data[..half]);
        fs.wait_idle();
    }
    // Tamper: flip a byte in block 0, zero part of block 1, leave a temp file.
    let partial = keep.join("v2/partial/sha256").join(layer.digest.hex());
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&partial)
        .unwrap();
    use std::os::unix::fs::FileExt;
    f.write_all_at(&[data[10] ^ 0x40], 10).unwrap();
    f.write_all_at(&[0; 100], BLOCK_SIZE + 7).unwrap();
    std::fs::write(keep.join("v2/tmp/leftover.crc"), b"junk").unwrap();
    // Temp files of a killed writer beside their final names, and one of a live mount
    // sharing the cache directory (this process), which must be left alone.
    let mut child = std::process::Command::new("true").spawn().unwrap();
    let gone = child.id();
    child.wait().unwrap();
    let hex = layer.digest.hex();
    std::fs::create_dir_all(keep.join("v2/archives")).unwrap();
    let dead = [
        keep.join(format!("v2/archives/{hex}.tar.tmp-{gone}-0")),
        keep.join(format!("v2/blobs/sha256/{hex}.stamp.tmp-{gone}-1")),
    ];
    let live = keep.join(format!(
        "v2/archives/{hex}.win.tmp-{}-2",
        std::process::id()
    ));
    for p in dead.iter().chain([&live]) {
        std::fs::write(p, b"half").unwrap();
    }
    let before = src.blob_bytes.load(Ordering::Relaxed);
    let tree = Tree::new(src.clone(), root(), TreeConfig::default()).unwrap();
    let fs = fs_over(tree, &keep, ReadConfig::default());
    assert!(
        !keep.join("v2/tmp/leftover.crc").exists(),
        "temp files are swept"
    );
    for p in &dead {
        assert!(!p.exists(), "a killed writer's {} is swept", p.display());
    }
    assert!(live.exists(), "a live mount's temp file is left alone");
    let ino = path(&fs, "f").unwrap();
    let fh = fs.open(ino, false).unwrap().fh;
    assert_eq!(fs.read(fh, 0, half as u32).unwrap(), &data[..half]);
    let refetched = src.blob_bytes.load(Ordering::Relaxed) - before;
    assert_eq!(
        refetched,
        2 * BLOCK_SIZE,
        "only the two damaged blocks are fetched again"
    );
    assert_eq!(fs.cache().stats.corrupt_blocks.load(Ordering::Relaxed), 2);
    assert_eq!(read_all(&fs, ino).unwrap(), data);
}

#[test]
fn an_old_format_cache_is_removed_not_read() {
    let dir = tempfile::tempdir().unwrap();
    let old = dir.path().join("v1/blobs/sha256");
    std::fs::create_dir_all(&old).unwrap();
    std::fs::write(old.join("ab".repeat(32)), b"old").unwrap();
    BlobCache::open(CacheConfig::new(dir.path().to_path_buf())).unwrap();
    assert!(!dir.path().join("v1").exists());
    assert!(dir.path().join("v2/blobs/sha256").is_dir());
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, .. ProptestConfig::default() })]
    /// Random preads (straddling blocks, read-ahead runs and EOF) while another handle
    /// streams the same blob from the start: every byte matches.
    #[test]
    fn random_preads_match_the_reference(
        size_pick in 0usize..7,
        reads in proptest::collection::vec((0u64..(40 * BLOCK_SIZE), 0u32..(20 * BLOCK_SIZE as u32)), 1..12),
        stream in any::<bool>(),
    ) {
        let bs = BLOCK_SIZE as usize;
        let size = [0, 1, bs - 1, bs, bs + 1, 5 * bs + 1, 37 * bs + 17][size_pick];
        let src = Arc::new(MemorySource::new());
        let data = bytes(size, 5);
        let layer = titled(src.put_blob("x", data.clone()), "f");
        src.put_manifest("r", Some("t"), image_manifest(&src, &[layer]));
        let dir = tempfile::tempdir().unwrap();
        let tree = Tree::new(src.clone(), RootKind::Artifact("r".into(), Reference::Tag("t".into())), TreeConfig::default()).unwrap();
        // The block path even for small blobs.
        let fs = fs_over(tree, dir.path(), ReadConfig { small_blob: 0, ..ReadConfig::default() });
        let ino = path(&fs, "f").unwrap();
        let fh = fs.open(ino, false).unwrap().fh;
        let streamed = std::thread::scope(|s| {
            let streamer = stream.then(|| s.spawn(|| read_all(&fs, ino).unwrap()));
            for (off, len) in reads {
                let got = fs.read(fh, off, len).unwrap();
                let start = (off as usize).min(size);
                let end = (off as usize).saturating_add(len as usize).min(size);
                assert_eq!(&got[..], &data[start..end], "read of {len} at {off}");
            }
            streamer.map(|t| t.join().unwrap())
        });
        if let Some(all) = streamed {
            prop_assert!(all == data, "the concurrent stream read the wrong bytes");
        }
    }
}

#[test]
fn xattrs_describe_content() {
    let src = Arc::new(MemorySource::new());
    let mut layer = titled(src.put_blob("image/tiff", b"x".to_vec()), "a.tif");
    layer.annotations.insert("eo:band".into(), "B04".into());
    src.put_manifest(
        "r",
        Some("t"),
        image_manifest(&src, std::slice::from_ref(&layer)),
    );
    let w = world(src, RootKind::Repository("r".into()), VerifyMode::Lazy);
    let ino = path(&w.fs, "t/a.tif").unwrap();
    let x: BTreeMap<String, Vec<u8>> = w.fs.xattrs(ino).unwrap().into_iter().collect();
    assert_eq!(x["user.oci.digest"], layer.digest.to_string().into_bytes());
    assert_eq!(x["user.oci.mediatype"], b"image/tiff");
    assert_eq!(x["user.oci.annotation.eo:band"], b"B04");
    let t = path(&w.fs, "t").unwrap();
    assert_eq!(w.fs.getxattr(t, "user.oci.reference").unwrap(), b"r:t");
}

#[test]
fn a_file_open_when_its_blob_fails_verification_fails_every_later_read() {
    let (w, data, ino) = single_blob_world(5 * MIB as usize + 1, VerifyMode::Lazy);
    let early = w.fs.open(ino, false).unwrap().fh;
    assert_eq!(w.fs.read(early, 0, 100).unwrap(), &data[..100]);
    w.src.corrupt.store(true, Ordering::Relaxed);
    assert_eq!(to_errno(&read_all(&w.fs, ino).unwrap_err()), libc::EIO);
    // The early handle may have served bad bytes of this blob: it gets no more.
    assert_eq!(to_errno(&w.fs.read(early, 0, 100).unwrap_err()), libc::EIO);
    w.src.corrupt.store(false, Ordering::Relaxed);
    assert_eq!(to_errno(&w.fs.read(early, 0, 100).unwrap_err()), libc::EIO);
    // A fresh open starts over and is served the right bytes.
    assert_eq!(read_all(&w.fs, ino).unwrap(), data);
}

#[test]
fn listing_tags_fetches_no_manifest_and_hides_referrer_index_tags() {
    let src = Arc::new(MemorySource::new());
    let m = image_manifest(&src, &[titled(src.put_blob("x", b"a".to_vec()), "a")]);
    for i in 0..50 {
        src.put_manifest("r", Some(&format!("v{i}")), m.clone());
    }
    let referrers_tag = format!("sha256-{}", "ab".repeat(32));
    src.put_manifest("r", Some(&referrers_tag), m.clone());
    let w = world(src, RootKind::Repository("r".into()), VerifyMode::Lazy);
    let listed = names(&w.fs, ROOT);
    assert_eq!(listed.len(), 50);
    assert!(!listed.contains(&referrers_tag));
    assert_eq!(w.src.manifest_requests.load(Ordering::Relaxed), 0);
    // Names still resolve, and the listed entry is the directory a lookup finds.
    assert!(path(&w.fs, &referrers_tag).is_ok());
    let v7 = path(&w.fs, "v7").unwrap();
    let again = w.fs.readdir(ROOT).unwrap();
    assert!(again
        .iter()
        .any(|e| e.name == "v7" && e.ino == v7 && e.is_dir));
}

/// An 8 MiB layer with a block index, attached `bound` (embedded in the manifest) or as a
/// referrer; the index itself possibly damaged.
struct Indexed {
    w: World,
    data: Vec<u8>,
    ino: u64,
    data_digest: crate::oci::Digest,
    index_digest: crate::oci::Digest,
}

/// A block index of `data` in the read path's blocks, and its root.
fn block_index(data: &[u8]) -> (Vec<u8>, crate::oci::Digest) {
    let digest = crate::oci::Digest::of(data);
    let mut b = crate::index::format::Builder::new(&digest, data.len() as u64, BLOCK_SIZE);
    b.update(data);
    b.finish().unwrap()
}

/// Annotate `layer` to name `ix`, a layer of the same manifest, as its block index.
fn bind_index(layer: &mut Descriptor, ix: &Descriptor, root: &crate::oci::Digest) {
    use crate::index::format;
    layer
        .annotations
        .insert(format::ANNOTATION_INDEX.into(), ix.digest.to_string());
    layer
        .annotations
        .insert(format::ANNOTATION_ROOT.into(), root.to_string());
}

fn indexed_world(bound: bool, damage_index: bool, verify: VerifyMode) -> Indexed {
    use crate::index::format;
    let src = Arc::new(MemorySource::new());
    let data = bytes(8 * MIB as usize + 123, 21);
    let data_digest = crate::oci::Digest::of(&data);
    let (mut index, root) = block_index(&data);
    if damage_index {
        let n = index.len();
        index[n - 1] ^= 1; // the last leaf no longer matches the top table
        index[format::HEADER_LEN as usize] ^= 1; // nor the top table the root
    }
    let mut layer = titled(src.put_blob("image/tiff", data.clone()), "scene.tif");
    let mut ix = src.put_blob(format::MEDIA_TYPE, index);
    ix.annotations
        .insert(format::ANNOTATION_BLOB.into(), data_digest.to_string());
    ix.annotations
        .insert(format::ANNOTATION_ROOT.into(), root.to_string());
    let index_digest = ix.digest.clone();
    if bound {
        bind_index(&mut layer, &ix, &root);
        src.put_manifest("r", Some("t"), image_manifest(&src, &[layer, ix]));
    } else {
        let m = image_manifest(&src, &[layer]);
        let subject = src.put_manifest("r", Some("t"), m);
        let config = src.put_blob("application/vnd.oci.empty.v1+json", b"{}".to_vec());
        let referrer = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": crate::oci::OCI_MANIFEST,
            "artifactType": format::MEDIA_TYPE,
            "config": desc_json(&config),
            "layers": [desc_json(&ix)],
        }))
        .unwrap();
        let size = referrer.len() as u64;
        let rd = src.put_manifest("r", None, referrer);
        src.put_referrer(
            &subject,
            Descriptor {
                media_type: crate::oci::OCI_MANIFEST.into(),
                digest: rd,
                size,
                annotations: Default::default(),
                platform: None,
                artifact_type: Some(format::MEDIA_TYPE.into()),
            },
        );
    }
    let w = world(
        src,
        RootKind::Artifact("r".into(), Reference::Tag("t".into())),
        verify,
    );
    let ino = path(&w.fs, "scene.tif").unwrap();
    Indexed {
        w,
        data,
        ino,
        data_digest,
        index_digest,
    }
}

#[test]
fn a_layer_shared_by_two_tags_is_checked_against_the_index_its_own_manifest_binds() {
    use crate::index::format;
    let src = Arc::new(MemorySource::new());
    let data = bytes(8 * MIB as usize + 5, 33);
    let data_digest = crate::oci::Digest::of(&data);
    let (index, root) = block_index(&data);
    let layer = titled(src.put_blob("image/tiff", data.clone()), "scene.tif");
    let ix = src.put_blob(format::MEDIA_TYPE, index);
    let mut bound = layer.clone();
    bind_index(&mut bound, &ix, &root);
    src.put_manifest("r", Some("plain"), image_manifest(&src, &[layer]));
    src.put_manifest("r", Some("bound"), image_manifest(&src, &[bound, ix]));
    let w = world(src, RootKind::Repository("r".into()), VerifyMode::Lazy);
    let level = |p: &str| {
        w.fs.getxattr(path(&w.fs, p).unwrap(), "user.orasfs.verified")
    };
    // The tag without an index is read first.
    let plain = path(&w.fs, "plain/scene.tif").unwrap();
    let fh = w.fs.open(plain, false).unwrap().fh;
    assert!(w.fs.read(fh, 0, 4096).unwrap() == data[..4096]);
    assert_eq!(level("plain/scene.tif").unwrap(), b"none");
    assert_eq!(level("bound/scene.tif").unwrap(), b"blocks");
    assert_eq!(
        level("plain/scene.tif").unwrap(),
        b"none",
        "not its manifest's"
    );
    // Once the bound index is known, a bad block is refused under either name.
    let bound_file = path(&w.fs, "bound/scene.tif").unwrap();
    let _held = w.fs.open(bound_file, false).unwrap().fh;
    *w.src.corrupt_at.lock().unwrap() = Some((data_digest, 6 * MIB + 7));
    let err = w.fs.read(fh, 6 * MIB, 65536).unwrap_err();
    assert_eq!(to_errno(&err), libc::EIO, "{err}");
}

#[test]
fn a_block_that_fails_its_index_is_never_served_and_is_fetched_again() {
    for bound in [true, false] {
        let t = indexed_world(bound, false, VerifyMode::Lazy);
        let w = &t.w;
        assert_eq!(names(&w.fs, ROOT).len(), 3, "the index layer is hidden");
        let at = 5 * MIB + 100;
        *w.src.corrupt_at.lock().unwrap() = Some((t.data_digest.clone(), at));
        let fh = w.fs.open(t.ino, false).unwrap().fh;
        let err = w.fs.read(fh, 5 * MIB, 65536).unwrap_err();
        assert_eq!(to_errno(&err), libc::EIO, "bound={bound}: {err}");
        let failures = &w.fs.cache().stats.block_failures;
        assert_eq!(failures.load(Ordering::Relaxed), 1, "bound={bound}");
        // Only that block and the index parts it needed were fetched.
        let served = w.src.blob_bytes.load(Ordering::Relaxed);
        let index_parts = 2 * 64 + 32 * 5 + 4096; // header (twice), top table, one leaf
        assert!(
            served <= 65536 + index_parts,
            "bound={bound}: {served} bytes"
        );
        // The handle that met the bad block fails from now on (the kernel retries a failed
        // read-ahead page by page, and those retries must fail too).
        *w.src.corrupt_at.lock().unwrap() = None;
        assert_eq!(
            to_errno(&w.fs.read(fh, 5 * MIB, 65536).unwrap_err()),
            libc::EIO
        );
        // The fault is gone: a new open fetches the block again and serves it.
        let fh = w.fs.open(t.ino, false).unwrap().fh;
        let got = w.fs.read(fh, 5 * MIB, 65536).unwrap();
        assert!(got == t.data[5 * MIB as usize..][..65536], "bound={bound}");
        let level = w.fs.getxattr(t.ino, "user.orasfs.verified").unwrap();
        let want: &[u8] = if bound { b"blocks" } else { b"blocks-referrer" };
        assert_eq!(level, want);
        // Read to the end: the whole blob is then verified against its digest too.
        assert!(read_all(&w.fs, t.ino).unwrap() == t.data);
        w.fs.wait_idle();
        assert_eq!(
            w.fs.getxattr(t.ino, "user.orasfs.verified").unwrap(),
            b"blob"
        );
    }
}

#[test]
fn a_damaged_index_is_refused_and_the_blob_read_without_it() {
    let t = indexed_world(true, true, VerifyMode::Lazy);
    let w = &t.w;
    let fh = w.fs.open(t.ino, false).unwrap().fh;
    let got = w.fs.read(fh, 3 * MIB, 4096).unwrap();
    assert!(got == t.data[3 * MIB as usize..][..4096]);
    assert_eq!(
        w.fs.getxattr(t.ino, "user.orasfs.verified").unwrap(),
        b"none"
    );
    assert_eq!(w.fs.cache().stats.block_failures.load(Ordering::Relaxed), 0);
    let _ = &t.index_digest;
}

/// An index whose root is right but whose header describes another blob of the same size
/// is refused: the blob is read without it, and right.
#[test]
fn an_index_of_another_blob_of_the_same_size_is_refused() {
    use crate::index::format;
    let src = Arc::new(MemorySource::new());
    let data = bytes(8 * MIB as usize + 123, 21);
    let other = bytes(data.len(), 22);
    let (index, root) = block_index(&other);
    let mut layer = titled(src.put_blob("image/tiff", data.clone()), "scene.tif");
    let ix = src.put_blob(format::MEDIA_TYPE, index);
    bind_index(&mut layer, &ix, &root);
    src.put_manifest("r", Some("t"), image_manifest(&src, &[layer, ix]));
    let w = world(
        src,
        RootKind::Artifact("r".into(), Reference::Tag("t".into())),
        VerifyMode::Lazy,
    );
    let ino = path(&w.fs, "scene.tif").unwrap();
    let fh = w.fs.open(ino, false).unwrap().fh;
    let got =
        w.fs.read(fh, 3 * MIB, 4096)
            .expect("read without the index");
    assert!(got == data[3 * MIB as usize..][..4096]);
    assert_eq!(w.fs.getxattr(ino, "user.orasfs.verified").unwrap(), b"none");
    assert_eq!(w.fs.cache().stats.block_failures.load(Ordering::Relaxed), 0);
}

#[test]
fn strict_mode_reads_lazily_only_with_a_bound_index_and_require_index_refuses_the_rest() {
    // Bound index, strict: one block's worth, not the whole blob.
    let t = indexed_world(true, false, VerifyMode::Strict);
    let fh = t.w.fs.open(t.ino, false).unwrap().fh;
    let got = t.w.fs.read(fh, 2 * MIB, 4096).unwrap();
    assert!(got == t.data[2 * MIB as usize..][..4096]);
    assert!(t.w.src.blob_bytes.load(Ordering::Relaxed) < MIB);
    // Referrer index, strict: fetched whole and verified before the first byte.
    let t = indexed_world(false, false, VerifyMode::Strict);
    let fh = t.w.fs.open(t.ino, false).unwrap().fh;
    t.w.fs.read(fh, 2 * MIB, 4096).unwrap();
    assert!(t.w.src.blob_bytes.load(Ordering::Relaxed) >= t.data.len() as u64);
    // require-index: an indexed layer is served lazily, an unindexed one refused.
    let t = indexed_world(false, false, VerifyMode::RequireIndex);
    let fh = t.w.fs.open(t.ino, false).unwrap().fh;
    t.w.fs.read(fh, 2 * MIB, 4096).unwrap();
    assert!(t.w.src.blob_bytes.load(Ordering::Relaxed) < MIB);
    let (w, _, ino) = single_blob_world(8 * MIB as usize, VerifyMode::RequireIndex);
    let fh = w.fs.open(ino, false).unwrap().fh;
    let err = w.fs.read(fh, 0, 4096).unwrap_err();
    assert_eq!(to_errno(&err), libc::EACCES, "{err}");
    // Small blobs are verified whole and served, index or not.
    let (w, data, ino) = single_blob_world(1000, VerifyMode::RequireIndex);
    assert!(read_all(&w.fs, ino).unwrap() == data);
}

fn world_with(src: Arc<MemorySource>, root: RootKind, cfg: TreeConfig) -> World {
    let dir = tempfile::tempdir().unwrap();
    let tree = Tree::new(src.clone(), root, cfg).unwrap();
    World {
        src,
        fs: fs_over(tree, dir.path(), ReadConfig::default()),
        _dir: dir,
    }
}

/// Trust nothing listed: every lookup asks the source again.
fn always_ask() -> TreeConfig {
    TreeConfig {
        metadata_ttl: std::time::Duration::ZERO,
        ..TreeConfig::default()
    }
}

/// An image manifest with `config` and no `created` annotation.
fn plain_manifest(config: &Descriptor, layers: &[Descriptor]) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": crate::oci::OCI_MANIFEST,
        "config": desc_json(config),
        "layers": layers.iter().map(desc_json).collect::<Vec<_>>(),
    }))
    .unwrap()
}

fn is_eio(r: Result<u64, FsError>) -> bool {
    matches!(&r, Err(e) if to_errno(e) == libc::EIO)
}

#[test]
fn looking_up_every_listed_tag_fetches_no_manifest() {
    let src = Arc::new(MemorySource::new());
    let m = image_manifest(&src, &[titled(src.put_blob("x", b"a".to_vec()), "a")]);
    for i in 0..300 {
        src.put_manifest("r", Some(&format!("v{i:03}")), m.clone());
    }
    let w = world(src, RootKind::Repository("r".into()), VerifyMode::Lazy);
    let entries = names(&w.fs, ROOT);
    assert_eq!(entries.len(), 300);
    for e in entries {
        let a = w.fs.lookup(ROOT, &e).unwrap();
        assert!(a.attr.is_dir, "{e}");
    }
    assert_eq!(w.src.manifest_requests.load(Ordering::Relaxed), 0);
    assert_eq!(w.src.head_requests.load(Ordering::Relaxed), 0);
    assert_eq!(w.src.tag_requests.load(Ordering::Relaxed), 1);
    // Entering one fetches its manifest, once.
    path(&w.fs, "v007/a").unwrap();
    assert_eq!(w.src.manifest_requests.load(Ordering::Relaxed), 1);
}

#[test]
fn an_outage_keeps_names_seen_and_fails_names_never_seen() {
    let src = Arc::new(MemorySource::new());
    let layer = titled(src.put_blob("x", b"alpha".to_vec()), "a.txt");
    src.put_manifest("eo/products", Some("v1"), image_manifest(&src, &[layer]));
    let w = world_with(src.clone(), RootKind::Registry, always_ask());
    let file = path(&w.fs, "eo/products/v1/a.txt").unwrap();
    assert_eq!(read_all(&w.fs, file).unwrap(), b"alpha");
    src.metadata_down.store(true, Ordering::Relaxed);
    // Seen: the same answers, though nothing listed is trusted any more.
    assert_eq!(path(&w.fs, "eo/products/v1/a.txt").unwrap(), file);
    assert_eq!(names(&w.fs, path(&w.fs, "eo/products").unwrap()), ["v1"]);
    assert_eq!(read_all(&w.fs, file).unwrap(), b"alpha");
    // Never seen: EIO, not "absent" and never a phantom directory.
    for p in ["eo/products/v2", "no", "no/such/thing.tif", "eo/other"] {
        assert!(is_eio(path(&w.fs, p)), "{p}: {:?}", path(&w.fs, p));
    }
    // Back: only definite answers make a name absent.
    src.metadata_down.store(false, Ordering::Relaxed);
    for p in ["eo/products/v2", "no", "eo/other"] {
        assert!(matches!(path(&w.fs, p), Err(FsError::NotFound)), "{p}");
    }
}

#[test]
fn without_a_catalog_repositories_list_their_tags_and_made_up_names_are_absent() {
    let src = Arc::new(MemorySource::new());
    src.no_catalog.store(true, Ordering::Relaxed);
    let layer = titled(src.put_blob("x", b"alpha".to_vec()), "a.txt");
    let m = image_manifest(&src, &[layer]);
    src.put_manifest("org/repo", Some("v1"), m.clone());
    src.put_manifest("org/repo", Some("v2"), m);
    let w = world(src, RootKind::Registry, VerifyMode::Lazy);
    assert_eq!(names(&w.fs, path(&w.fs, "org/repo").unwrap()), ["v1", "v2"]);
    assert!(path(&w.fs, "org/repo/v1/a.txt").is_ok());
    for p in [
        "org/repo/v3",
        "org/repo/v1/nope",
        "no/such/thing.tif",
        "org/repo/x/y",
    ] {
        assert!(matches!(path(&w.fs, p), Err(FsError::NotFound)), "{p}");
    }
    // The namespace is known from the repository found below it.
    assert_eq!(names(&w.fs, ROOT), ["org"]);
    assert_eq!(names(&w.fs, path(&w.fs, "org").unwrap()), ["repo"]);
}

#[test]
fn a_moved_tag_gets_a_new_inode_and_the_kernel_is_told_to_forget_the_old() {
    let src = Arc::new(MemorySource::new());
    let one = titled(src.put_blob("x", b"one".to_vec()), "f");
    src.put_manifest("r", Some("v1"), image_manifest(&src, &[one]));
    let w = world_with(src.clone(), RootKind::Repository("r".into()), always_ask());
    let told = Arc::new(std::sync::Mutex::new(Vec::new()));
    let t = told.clone();
    w.fs.tree().set_invalidator(Box::new(move |p, n| {
        t.lock().unwrap().push((p, n.to_string()))
    }));
    let old = path(&w.fs, "v1").unwrap();
    assert_eq!(
        read_all(&w.fs, path(&w.fs, "v1/f").unwrap()).unwrap(),
        b"one"
    );
    // Not moved: the same inode, revalidated with a HEAD, no manifest fetched again.
    let gets = src.manifest_requests.load(Ordering::Relaxed);
    assert_eq!(path(&w.fs, "v1").unwrap(), old);
    assert_eq!(src.manifest_requests.load(Ordering::Relaxed), gets);
    assert!(src.head_requests.load(Ordering::Relaxed) > 0);
    assert!(told.lock().unwrap().is_empty());
    let two = titled(src.put_blob("x", b"two".to_vec()), "f");
    src.put_manifest("r", Some("v1"), image_manifest(&src, &[two]));
    let new = path(&w.fs, "v1").unwrap();
    assert_ne!(new, old);
    assert_eq!(told.lock().unwrap().as_slice(), [(ROOT, "v1".to_string())]);
    assert_eq!(
        read_all(&w.fs, path(&w.fs, "v1/f").unwrap()).unwrap(),
        b"two"
    );
    // SIGHUP: every entry a listing made is forgotten by the kernel.
    told.lock().unwrap().clear();
    w.fs.tree().drop_metadata();
    assert_eq!(told.lock().unwrap().as_slice(), [(ROOT, "v1".to_string())]);
}

/// Walk `p` as the kernel does, read the file there, then forget every inode the walk
/// was given (as the kernel does once its entries expire).
fn read_and_forget(fs: &Fs, p: &str) -> Vec<u8> {
    let mut held = Vec::new();
    let mut ino = ROOT;
    for c in p.split('/') {
        ino = fs.lookup(ino, c).unwrap().attr.ino;
        held.push(ino);
    }
    let got = read_all(fs, ino).unwrap();
    for ino in held.into_iter().rev() {
        fs.forget(ino, 1);
    }
    got
}

#[test]
fn the_inode_table_does_not_grow_as_a_tag_moves_1000_times() {
    let src = Arc::new(MemorySource::new());
    let w = world_with(src.clone(), RootKind::Repository("r".into()), always_ask());
    let mut settled = None;
    for round in 0..1000 {
        let text = format!("content {round}");
        let file = titled(src.put_blob("x", text.clone().into_bytes()), "d/f.txt");
        src.put_manifest("r", Some("v1"), image_manifest(&src, &[file]));
        assert_eq!(read_and_forget(&w.fs, "v1/d/f.txt"), text.as_bytes());
        let count = w.fs.tree().inode_count();
        assert!(w.fs.tree().manifest_count() <= 64, "manifests kept");
        match settled {
            None => settled = Some(count),
            Some(n) => assert_eq!(count, n, "inodes after move {round}"),
        }
    }
    // What the kernel still holds stays: a file below a tag that has moved since.
    let mut held = vec![w.fs.lookup(ROOT, "v1").unwrap().attr.ino];
    held.push(w.fs.lookup(held[0], "d").unwrap().attr.ino);
    held.push(w.fs.lookup(held[1], "f.txt").unwrap().attr.ino);
    let file = titled(src.put_blob("x", b"moved".to_vec()), "d/f.txt");
    src.put_manifest("r", Some("v1"), image_manifest(&src, &[file]));
    assert_ne!(path(&w.fs, "v1").unwrap(), held[0]);
    assert_eq!(read_all(&w.fs, held[2]).unwrap(), b"content 999");
    for ino in held.iter().rev() {
        w.fs.forget(*ino, 1);
    }
    for ino in held {
        assert!(w.fs.getattr(ino).is_err(), "forgotten, unreachable, kept");
    }
}

#[test]
fn concurrent_lookups_of_one_name_get_one_inode() {
    let src = Arc::new(MemorySource::new());
    let layer = titled(src.put_blob("x", b"x".to_vec()), "f");
    let digest = src.put_manifest("r", None, image_manifest(&src, &[layer]));
    for t in 0..20 {
        src.put_manifest("r", Some(&format!("t{t}")), image_manifest(&src, &[]));
    }
    // Each lookup asks the source (no TTL), which answers late: every thread is past its
    // check for the name before any has added it.
    src.metadata_delay_ms.store(20, Ordering::Relaxed);
    let w = Arc::new(world_with(
        src,
        RootKind::Repository("r".into()),
        always_ask(),
    ));
    let names: Vec<String> = (0..20)
        .map(|t| format!("t{t}"))
        .chain([digest.to_string()])
        .collect();
    for name in names {
        let threads = 8;
        let start = Arc::new(std::sync::Barrier::new(threads));
        let got: Vec<u64> = (0..threads)
            .map(|_| {
                let (w, start, name) = (w.clone(), start.clone(), name.clone());
                std::thread::spawn(move || {
                    start.wait();
                    w.fs.lookup(ROOT, &name).unwrap().attr.ino
                })
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|h| h.join().unwrap())
            .collect();
        assert!(got.iter().all(|i| *i == got[0]), "{name}: {got:?}");
    }
}

#[test]
fn mtimes_are_a_function_of_content() {
    let src = Arc::new(MemorySource::new());
    let layer = titled(src.put_blob("x", b"alpha".to_vec()), "a.txt");
    let config = src.put_blob(
        "application/vnd.oci.image.config.v1+json",
        br#"{"created":"2023-06-14T20:41:59.079795125Z","architecture":"amd64"}"#.to_vec(),
    );
    src.put_manifest(
        "r",
        Some("dated"),
        plain_manifest(&config, std::slice::from_ref(&layer)),
    );
    let empty = src.put_blob("application/vnd.oci.empty.v1+json", b"{}".to_vec());
    src.put_manifest("r", Some("undated"), plain_manifest(&empty, &[layer]));
    let mtime = |p: &str| {
        let w = world(
            src.clone(),
            RootKind::Repository("r".into()),
            VerifyMode::Lazy,
        );
        w.fs.getattr(path(&w.fs, p).unwrap()).unwrap().attr.mtime
    };
    let created = std::time::UNIX_EPOCH + std::time::Duration::new(1686775319, 79795125);
    for p in ["dated/a.txt", "dated/.manifest.json", "dated/.config.json"] {
        assert_eq!(mtime(p), created, "{p}");
    }
    for p in ["undated/a.txt", "undated", "dated"] {
        assert_eq!(mtime(p), std::time::UNIX_EPOCH, "{p}");
    }
}

#[test]
fn listing_entered_tags_after_the_ttl_checks_them_together_then_lookups_ask_nothing() {
    let src = Arc::new(MemorySource::new());
    let m = image_manifest(&src, &[titled(src.put_blob("x", b"a".to_vec()), "a")]);
    for i in 0..20 {
        src.put_manifest("r", Some(&format!("v{i:02}")), m.clone());
    }
    let ttl = std::time::Duration::from_millis(300);
    let cfg = TreeConfig {
        metadata_ttl: ttl,
        ..TreeConfig::default()
    };
    let w = world_with(src.clone(), RootKind::Repository("r".into()), cfg);
    for i in 0..20 {
        path(&w.fs, &format!("v{i:02}/a")).unwrap();
    }
    std::thread::sleep(ttl + std::time::Duration::from_millis(50));
    let heads = src.head_requests.load(Ordering::Relaxed);
    assert_eq!(names(&w.fs, ROOT).len(), 20);
    assert_eq!(src.head_requests.load(Ordering::Relaxed), heads + 20);
    for i in 0..20 {
        path(&w.fs, &format!("v{i:02}")).unwrap();
    }
    assert_eq!(src.head_requests.load(Ordering::Relaxed), heads + 20);
}

#[test]
fn a_refusal_is_eacces_not_absent() {
    let src = Arc::new(MemorySource::new());
    src.no_catalog.store(true, Ordering::Relaxed);
    src.refuse_unknown.store(true, Ordering::Relaxed);
    let layer = titled(src.put_blob("x", b"alpha".to_vec()), "a.txt");
    src.put_manifest("org/repo", Some("v1"), image_manifest(&src, &[layer]));
    let w = world(src, RootKind::Registry, VerifyMode::Lazy);
    assert!(path(&w.fs, "org/repo/v1/a.txt").is_ok());
    let errno = |p: &str| path(&w.fs, p).map_err(|e| to_errno(&e));
    for p in ["org/repo/v9", "no/such/thing.tif", "org/repo/v9"] {
        assert_eq!(errno(p), Err(libc::EACCES), "{p}");
    }
    // Inside a manifest nothing is asked: a missing name there is simply absent.
    assert_eq!(errno("org/repo/v1/nope"), Err(libc::ENOENT));
}

/// orasfs's own write handlers answer `EROFS`, not only the kernel's `ro` flag: the core
/// is mounted here over FUSE *without* `ro`, so every mutator reaches the daemon.
/// Needs `/dev/fuse` and root (as the rest of the suite); it fails, never skips, without.
#[test]
fn every_write_handler_answers_erofs_without_the_ro_flag() {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    let src = Arc::new(MemorySource::new());
    let layer = titled(src.put_blob("x", b"alpha".to_vec()), "d/f");
    src.put_manifest("r", Some("t"), image_manifest(&src, &[layer]));
    let w = world(
        src,
        RootKind::Artifact("r".into(), Reference::Tag("t".into())),
        VerifyMode::Lazy,
    );
    let mnt = tempfile::tempdir().unwrap();
    let mut config = fuser::Config::default();
    config.mount_options = vec![fuser::MountOption::FSName("orasfs-core-test".into())];
    // Unmounted when dropped, also when an assertion below fails.
    let session = fuser::spawn_mount(
        crate::fs::fuse::FuseFs::new(Arc::new(w.fs), false),
        mnt.path(),
        &config,
    )
    .expect("mount over /dev/fuse (needs root and the fuse3 package)");
    let root = mnt.path();
    let file = root.join("d/f");
    assert_eq!(std::fs::read(&file).unwrap(), b"alpha", "the mount serves");
    let c = |p: &std::path::Path| CString::new(p.as_os_str().as_bytes()).unwrap();
    let libc_call = |r: libc::c_int| {
        if r == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        }
    };
    let (cf, cd) = (c(&file), c(&root.join("d")));
    let fifo = c(&root.join("fifo"));
    // SAFETY: `cf` is a NUL-terminated path that outlives the call.
    let chmod = libc_call(unsafe { libc::chmod(cf.as_ptr(), 0o777) });
    // SAFETY: as above.
    let truncate = libc_call(unsafe { libc::truncate(cf.as_ptr(), 0) });
    // SAFETY: `fifo` is a NUL-terminated path that outlives the call.
    let mknod = libc_call(unsafe { libc::mknod(fifo.as_ptr(), libc::S_IFIFO | 0o644, 0) });
    // SAFETY: NUL-terminated path and name; the value is a live 1-byte buffer.
    let setxattr = libc_call(unsafe {
        libc::setxattr(cd.as_ptr(), c"user.x".as_ptr(), b"1".as_ptr().cast(), 1, 0)
    });
    // SAFETY: NUL-terminated path and name.
    let removexattr =
        libc_call(unsafe { libc::removexattr(cf.as_ptr(), c"user.orasfs.digest".as_ptr()) });
    let attempts: Vec<(&str, std::io::Result<()>)> = vec![
        ("mkdir", std::fs::create_dir(root.join("new"))),
        (
            "create",
            std::fs::File::create(root.join("new.txt")).map(drop),
        ),
        ("unlink", std::fs::remove_file(&file)),
        ("rmdir", std::fs::remove_dir(root.join("d"))),
        ("rename", std::fs::rename(&file, root.join("g"))),
        ("link", std::fs::hard_link(&file, root.join("h"))),
        ("symlink", std::os::unix::fs::symlink("f", root.join("s"))),
        ("chmod", chmod),
        ("truncate", truncate),
        ("mknod", mknod),
        ("setxattr", setxattr),
        ("removexattr", removexattr),
        (
            "open for writing",
            std::fs::OpenOptions::new()
                .write(true)
                .open(&file)
                .map(drop),
        ),
    ];
    for (op, r) in attempts {
        let e = r.expect_err(op);
        assert_eq!(e.raw_os_error(), Some(libc::EROFS), "{op}: {e}");
    }
    session.umount_and_join().unwrap();
}
