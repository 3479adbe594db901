//! Measuring a cache directory on disk: which blobs it holds, how many bytes each one
//! takes and when each was last used. The mount scans once at start; the offline
//! `orasfs cache` commands scan every time. Nothing here follows a symbolic link: entries
//! are examined with `lstat`, and a link is at most removed, never entered.
//!
//! Sizes are file lengths, except for sparse partial blobs, which count the bytes they
//! hold; the size cap uses the same measure. An archive's index files (`archives/<hex>.idx`,
//! `.win` and `.tar`: the member table, gzip checkpoints and decompressed tar+zstd of blob
//! `<hex>`) count as part of that blob, and go with it. "Last
//! used" is the newest modification time of the blob's files;
//! see [`super::evict`] for how reads keep it current.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io;
use std::path::Path;
use std::time::SystemTime;

use crate::oci::Digest;

/// What the cache holds of one blob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobUsage {
    pub digest: Digest,
    /// Bytes of its verified file and sidecar, or of its partial file (as allocated) and map.
    pub bytes: u64,
    pub last_used: SystemTime,
    /// A whole-blob file with its CRC sidecar.
    pub verified: bool,
    /// A partial file (a blob fetched in part).
    pub partial: bool,
}

/// A scan of a cache's `v2/` directory.
#[derive(Debug, Clone, Default)]
pub struct Usage {
    /// Blobs, oldest use first.
    pub blobs: Vec<BlobUsage>,
    /// Bytes of every file under `v2/`, including temp files and strays.
    pub total: u64,
}

/// Scan `root` (a cache's `v2/` directory). A missing directory is an empty cache.
pub fn scan(root: &Path) -> Usage {
    let mut blobs: BTreeMap<Digest, BlobUsage> = BTreeMap::new();
    fn entry(blobs: &mut BTreeMap<Digest, BlobUsage>, digest: Digest) -> &mut BlobUsage {
        blobs.entry(digest.clone()).or_insert(BlobUsage {
            digest,
            bytes: 0,
            last_used: SystemTime::UNIX_EPOCH,
            verified: false,
            partial: false,
        })
    }
    fn add(b: &mut BlobUsage, bytes: u64, meta: &fs::Metadata) {
        b.bytes += bytes;
        b.last_used = b
            .last_used
            .max(meta.modified().unwrap_or(SystemTime::UNIX_EPOCH));
    }
    for (name, meta) in entries(&root.join("blobs/sha256")) {
        if !meta.is_file() {
            continue;
        }
        if let Some(d) = digest_named(&name) {
            let b = entry(&mut blobs, d);
            add(b, meta.len(), &meta);
            b.verified = true;
        } else if let Some(d) = [".crc", ".stamp"]
            .iter()
            .find_map(|s| name.strip_suffix(s).and_then(digest_named))
        {
            add(entry(&mut blobs, d), meta.len(), &meta);
        }
    }
    for (name, meta) in entries(&root.join("partial/sha256")) {
        if !meta.is_file() {
            continue;
        }
        if let Some(d) = digest_named(&name) {
            // A partial blob is sparse: count the bytes it really holds.
            let b = entry(&mut blobs, d);
            add(b, allocated(&meta), &meta);
            b.partial = true;
        } else if let Some(d) = name.strip_suffix(".map").and_then(digest_named) {
            add(entry(&mut blobs, d), meta.len(), &meta);
        }
    }
    for (name, meta) in entries(&root.join(ARCHIVES)) {
        let d = [".idx", ".win", ".tar"]
            .iter()
            .find_map(|s| name.strip_suffix(s).and_then(digest_named));
        if let (Some(d), true) = (d, meta.is_file()) {
            add(entry(&mut blobs, d), meta.len(), &meta);
        }
    }
    // A blob file is trusted only beside its sidecar.
    let side = |d: &Digest| root.join("blobs/sha256").join(format!("{}.crc", d.hex()));
    let mut blobs: Vec<BlobUsage> = blobs
        .into_values()
        .map(|mut b| {
            b.verified =
                b.verified && fs::symlink_metadata(side(&b.digest)).is_ok_and(|m| m.is_file());
            b
        })
        .collect();
    blobs.sort_by(|a, b| {
        a.last_used
            .cmp(&b.last_used)
            .then_with(|| a.digest.cmp(&b.digest))
    });
    Usage {
        blobs,
        total: dir_bytes(root),
    }
}

/// Bytes a file really occupies (a sparse file less than its length).
fn allocated(meta: &fs::Metadata) -> u64 {
    use std::os::unix::fs::MetadataExt;
    (meta.blocks() * 512).min(meta.len())
}

/// The directory's entries with their `lstat` metadata; unreadable ones are skipped.
fn entries(dir: &Path) -> Vec<(String, fs::Metadata)> {
    let Ok(rd) = fs::read_dir(dir) else {
        return Vec::new();
    };
    rd.flatten()
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let meta = fs::symlink_metadata(e.path()).ok()?;
            Some((name, meta))
        })
        .collect()
}

fn digest_named(name: &str) -> Option<Digest> {
    Digest::parse(&format!("sha256:{name}")).ok()
}

/// Bytes of the regular files under `path`, not following symbolic links.
pub fn dir_bytes(path: &Path) -> u64 {
    match fs::symlink_metadata(path) {
        Ok(m) if m.is_file() => allocated(&m),
        Ok(m) if m.is_dir() => fs::read_dir(path)
            .map(|rd| rd.flatten().map(|e| dir_bytes(&e.path())).sum())
            .unwrap_or(0),
        _ => 0,
    }
}

/// Remove a path: a directory recursively (links inside are unlinked, not followed), a
/// file or a link by unlinking it. Returns the bytes freed; a missing path frees none.
pub fn remove_path(path: &Path) -> u64 {
    let Ok(meta) = fs::symlink_metadata(path) else {
        return 0;
    };
    let bytes = dir_bytes(path);
    let removed = if meta.is_dir() {
        fs::remove_dir_all(path)
    } else {
        fs::remove_file(path)
    };
    match removed {
        Ok(()) => bytes,
        Err(e) => {
            log::warn!("cache: cannot remove {}: {e}", path.display());
            bytes.saturating_sub(dir_bytes(path))
        }
    }
}

/// Remove every cached byte of one blob from a cache's `v2/` directory; returns bytes freed.
pub fn remove_blob(root: &Path, digest: &Digest) -> u64 {
    let blobs = root.join("blobs/sha256");
    let partial = root.join("partial/sha256");
    let hex = digest.hex();
    // The blob file goes before its sidecar, so a half-removed blob is never trusted.
    remove_path(&blobs.join(hex))
        + remove_path(&blobs.join(format!("{hex}.stamp")))
        + remove_path(&blobs.join(format!("{hex}.crc")))
        + remove_path(&partial.join(format!("{hex}.map")))
        + remove_path(&partial.join(hex))
        + remove_path(&root.join(ARCHIVES).join(format!("{hex}.idx")))
        + remove_path(&root.join(ARCHIVES).join(format!("{hex}.win")))
        + remove_path(&root.join(ARCHIVES).join(format!("{hex}.tar")))
}

/// The directory of archive indexes under a cache's `v2/` (kept by [`crate::archive`]).
pub const ARCHIVES: &str = "archives";

/// Record a use of a blob: set the modification time of its verified file's sidecar (or,
/// for a partial blob, its block map) to now. The blob file itself is left alone, so its
/// own times change only if its content does (passthrough relies on that).
pub fn touch(root: &Path, digest: &Digest) -> io::Result<()> {
    let sidecar = root
        .join("blobs/sha256")
        .join(format!("{}.crc", digest.hex()));
    let target = if fs::symlink_metadata(&sidecar).is_ok_and(|m| m.is_file()) {
        sidecar
    } else {
        root.join("partial/sha256")
            .join(format!("{}.map", digest.hex()))
    };
    if !fs::symlink_metadata(&target).is_ok_and(|m| m.is_file()) {
        return Ok(());
    }
    File::options()
        .write(true)
        .open(&target)?
        .set_modified(SystemTime::now())
}

/// A byte count in binary units: `0 B`, `1023 B`, `1.5 KiB`, `20.0 GiB`.
pub fn human(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut v = bytes as f64 / 1024.0;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    format!("{v:.1} {}", UNITS[unit])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_sizes_use_binary_units() {
        assert_eq!(human(0), "0 B");
        assert_eq!(human(1023), "1023 B");
        assert_eq!(human(1024), "1.0 KiB");
        assert_eq!(human(1536), "1.5 KiB");
        assert_eq!(human(5 << 20), "5.0 MiB");
        assert_eq!(human(20 << 30), "20.0 GiB");
        assert_eq!(human(u64::MAX), "16.0 EiB");
    }

    #[test]
    fn scan_counts_verified_partial_and_strays() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("v2");
        let (a, b, c) = (Digest::of(b"a"), Digest::of(b"b"), Digest::of(b"c"));
        let blobs = root.join("blobs/sha256");
        let partial = root.join("partial/sha256");
        for d in [&blobs, &partial, &root.join("tmp")] {
            fs::create_dir_all(d).unwrap();
        }
        fs::write(blobs.join(a.hex()), vec![0; 100]).unwrap();
        fs::write(blobs.join(format!("{}.crc", a.hex())), vec![0; 20]).unwrap();
        // A sparse partial file counts the bytes it holds, not its length.
        let f = File::create(partial.join(b.hex())).unwrap();
        f.set_len(1 << 30).unwrap();
        std::os::unix::fs::FileExt::write_all_at(&f, &[1; 50], 0).unwrap();
        let held = allocated(&f.metadata().unwrap());
        assert!(held < 1 << 20, "sparse: {held}");
        fs::write(partial.join(format!("{}.map", b.hex())), vec![0; 7]).unwrap();
        // A blob file without a sidecar is a blob, but not a verified one.
        fs::write(blobs.join(c.hex()), vec![0; 3]).unwrap();
        fs::write(blobs.join("README"), vec![0; 5]).unwrap();
        fs::write(root.join("tmp/x.crc"), vec![0; 9]).unwrap();
        // An archive's index files belong to its blob.
        fs::create_dir_all(root.join(ARCHIVES)).unwrap();
        fs::write(
            root.join(ARCHIVES).join(format!("{}.idx", a.hex())),
            [0; 11],
        )
        .unwrap();
        fs::write(
            root.join(ARCHIVES).join(format!("{}.win", a.hex())),
            [0; 13],
        )
        .unwrap();
        let u = scan(&root);
        let by: BTreeMap<_, _> = u.blobs.iter().map(|b| (b.digest.clone(), b)).collect();
        assert_eq!(by.len(), 3);
        assert_eq!(
            (by[&a].bytes, by[&a].verified, by[&a].partial),
            (120 + 11 + 13, true, false)
        );
        assert_eq!(
            (by[&b].bytes, by[&b].verified, by[&b].partial),
            (held + 7, false, true)
        );
        assert_eq!(
            (by[&c].bytes, by[&c].verified, by[&c].partial),
            (3, false, false)
        );
        assert_eq!(u.total, 120 + 24 + held + 7 + 3 + 5 + 9);
        assert_eq!(remove_blob(&root, &b), held + 7);
        assert_eq!(remove_blob(&root, &a), 120 + 24);
        assert!(!root
            .join(ARCHIVES)
            .join(format!("{}.win", a.hex()))
            .exists());
        assert!(!partial.join(b.hex()).exists());
        assert_eq!(scan(Path::new("/nonexistent/orasfs/v2")).blobs.len(), 0);
    }
}
