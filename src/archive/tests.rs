//! Archives end to end in memory: real `tar`/`gzip` output listed and read back, from a
//! fresh index and from the stored one.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};

use super::index::NodeKind;
use super::open::{Archive, Limits};
use super::{ArchiveError, BlobBytes};
use crate::oci::Digest;

/// A blob in memory that counts the bytes read from it.
pub struct MemBlob {
    pub bytes: Vec<u8>,
    pub read: AtomicU64,
}

impl MemBlob {
    pub fn new(bytes: Vec<u8>) -> Self {
        Self {
            bytes,
            read: AtomicU64::new(0),
        }
    }
}

impl BlobBytes for MemBlob {
    fn size(&self) -> u64 {
        self.bytes.len() as u64
    }
    fn read_at(&self, offset: u64, len: u32) -> Result<Vec<u8>, ArchiveError> {
        let s = (offset as usize).min(self.bytes.len());
        let e = s.saturating_add(len as usize).min(self.bytes.len());
        self.read.fetch_add((e - s) as u64, Ordering::Relaxed);
        Ok(self.bytes[s..e].to_vec())
    }
}

/// Pseudo-random, partly compressible bytes.
fn content(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..len)
        .map(|i| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            if i % 3 == 0 {
                b'a' + (i % 7) as u8
            } else {
                x as u8
            }
        })
        .collect()
}

/// A directory of files, and the files by path.
fn make_tree(dir: &Path, files: usize, size: usize) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    for i in 0..files {
        let rel = format!("d{}/f{i}.bin", i % 3);
        let bytes = content(size + i * 1000, i as u64);
        let p = dir.join(&rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, &bytes).unwrap();
        out.insert(rel, bytes);
    }
    out
}

fn tar_of(dir: &Path, gz: bool) -> Vec<u8> {
    let flags = if gz { "czf" } else { "cf" };
    let out = dir.with_extension("archive");
    let st = Command::new("tar")
        .args([
            flags,
            out.to_str().unwrap(),
            "-C",
            dir.to_str().unwrap(),
            ".",
        ])
        .status()
        .unwrap();
    assert!(st.success());
    std::fs::read(out).unwrap()
}

fn path_of(a: &Archive, rel: &str) -> Option<u32> {
    rel.split('/').try_fold(0, |at, c| a.index.lookup(at, c))
}

fn read_all(a: &Archive, blob: &MemBlob, id: u32, piece: u32) -> Vec<u8> {
    let r = a.reader(id, 0).unwrap();
    let mut out = Vec::new();
    loop {
        let got = a.read(blob, &r, out.len() as u64, piece).unwrap();
        if got.is_empty() {
            return out;
        }
        out.extend(got);
    }
}

fn check_all(a: &Archive, blob: &MemBlob, files: &BTreeMap<String, Vec<u8>>) {
    for (rel, bytes) in files {
        let id = path_of(a, rel).unwrap_or_else(|| panic!("{rel} missing"));
        assert_eq!(a.index.node(id).unwrap().kind, NodeKind::File);
        assert_eq!(a.index.node(id).unwrap().size, bytes.len() as u64);
        assert!(read_all(a, blob, id, 131072) == *bytes, "{rel} differs");
    }
}

#[test]
fn tar_gz_members_read_back_from_checkpoints_and_the_stored_index() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    let files = make_tree(&src, 12, 700_000);
    let blob = MemBlob::new(tar_of(&src, true));
    let d = Digest::of(&blob.bytes);
    let store = tmp.path().join("store");
    let a = Archive::open(&blob, &d, Some(&store), Limits::default()).unwrap();
    check_all(&a, &blob, &files);
    // A fresh open uses the stored index: nothing read to list, and one member from the
    // end costs at most the compressed span from its checkpoint (≤ 1 MiB of output).
    let fresh = MemBlob::new(blob.bytes.clone());
    let b = Archive::open(&fresh, &d, Some(&store), Limits::default()).unwrap();
    assert_eq!(
        fresh.read.load(Ordering::Relaxed),
        0,
        "listing read the blob"
    );
    assert_eq!(b.index, a.index);
    let (rel, bytes) = files.iter().last().unwrap();
    let id = path_of(&b, rel).unwrap();
    let r = b.reader(id, 0).unwrap();
    let mid = bytes.len() as u64 / 2;
    let got = b.read(&fresh, &r, mid, 4096).unwrap();
    assert_eq!(got, bytes[mid as usize..mid as usize + 4096]);
    let read = fresh.read.load(Ordering::Relaxed);
    assert!(
        read < 1_300_000,
        "read {read} bytes of {} for 4 KiB",
        blob.bytes.len()
    );
}

#[test]
fn plain_tar_and_multi_member_gzip() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    let files = make_tree(&src, 5, 300_000);
    let tar = tar_of(&src, false);
    let blob = MemBlob::new(tar.clone());
    let a = Archive::open(&blob, &Digest::of(&tar), None, Limits::default()).unwrap();
    check_all(&a, &blob, &files);
    // gzip members concatenated (as bgzip and `cat a.gz b.gz` make).
    let mut gz = Vec::new();
    for (i, part) in tar.chunks(400_000).enumerate() {
        let p = tmp.path().join(format!("part{i}"));
        std::fs::write(&p, part).unwrap();
        let out = Command::new("gzip").arg("-c").arg(&p).output().unwrap();
        assert!(out.status.success());
        gz.extend(out.stdout);
    }
    let blob = MemBlob::new(gz.clone());
    let a = Archive::open(&blob, &Digest::of(&gz), None, Limits::default()).unwrap();
    check_all(&a, &blob, &files);
}

#[test]
fn gzip_bomb_is_refused_and_not_a_tar_is_an_error() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("zeros"), vec![0u8; 64 << 20]).unwrap();
    let gz = tar_of(&src, true);
    let blob = MemBlob::new(gz.clone());
    let small = Limits {
        ratio: 100,
        floor: 8 << 20,
    };
    match Archive::open(&blob, &Digest::of(&gz), None, small) {
        Err(ArchiveError::Hostile(_)) => {}
        other => panic!("bomb accepted: {:?}", other.map(|a| a.index.len())),
    }
    let junk = MemBlob::new(content(5000, 1));
    assert!(matches!(
        Archive::open(&junk, &Digest::of(&junk.bytes), None, Limits::default()),
        Err(ArchiveError::NotTar(_))
    ));
}

/// Peak memory of listing a million members (run by hand, in release:
/// `cargo test --release --lib million -- --ignored --nocapture`).
#[test]
#[ignore]
fn a_million_members_memory() {
    use super::index::Builder;
    use super::tar::{Kind, RawEntry};
    let hwm = || {
        std::fs::read_to_string("/proc/self/status")
            .unwrap()
            .lines()
            .find(|l| l.starts_with("VmHWM"))
            .map(|l| l.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap())
            .unwrap()
    };
    let before = hwm();
    let mut b = Builder::new();
    for i in 0..1_000_000u64 {
        b.add(RawEntry {
            path: format!("dir{:03}/sub{:02}/file-{i:07}.dat", i % 1000, i % 50).into_bytes(),
            link: Vec::new(),
            kind: Kind::File,
            mode: 0o644,
            mtime: 0,
            offset: i * 1024,
            size: 100,
        });
    }
    let idx = b.finish(None);
    let after_build = hwm();
    let mut bytes = Vec::new();
    idx.encode(&mut bytes);
    println!(
        "1M members: {} nodes, peak RSS +{} MiB while building, stored index {} MiB",
        idx.len(),
        (after_build - before) / 1024,
        bytes.len() >> 20
    );
}
