//! `orasfs cache stats|prune|clear`: inspect and trim a cache directory offline.
//!
//! A directory is treated as an orasfs cache only if it holds a real `v2/` directory (not
//! a link); anything else there is never touched. Nothing here follows a symbolic link
//! inside the cache. Prune evicts whole blobs, least recently used first, by the times
//! described in [`super::evict`], after sweeping the temp files of stopped mounts
//! ([`super::temp`]). Pruning or clearing while a mount uses the cache is
//! safe for correctness (missing bytes are a miss and are fetched again), but that
//! mount's running total overestimates the cache until it evicts or restarts.

use std::fs;
use std::path::{Path, PathBuf};

use super::usage::{self, human};

/// The cache's `v2/` directory; `Ok(None)` if the directory does not exist at all.
fn cache_root(dir: &Path) -> Result<Option<PathBuf>, String> {
    match fs::metadata(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("{}: {e}", dir.display())),
        Ok(m) if !m.is_dir() => return Err(format!("{} is not a directory", dir.display())),
        Ok(_) => {}
    }
    let root = dir.join(crate::cache::FORMAT);
    match fs::symlink_metadata(&root) {
        Ok(m) if m.is_dir() => Ok(Some(root)),
        Ok(_) => Err(format!(
            "{} is not an orasfs cache: its v2 is not a directory; refusing to touch it",
            dir.display()
        )),
        Err(_) => Err(format!(
            "{} does not look like an orasfs cache (no v2/ inside); refusing to touch it",
            dir.display()
        )),
    }
}

/// Print size, blob count, verified and partial blobs.
pub fn stats(dir: &Path) -> Result<String, String> {
    let Some(root) = cache_root(dir)? else {
        return Ok(format!(
            "cache:    {}\nno cache there yet (empty)\n",
            dir.display()
        ));
    };
    let u = usage::scan(&root);
    let verified = u.blobs.iter().filter(|b| b.verified).count();
    let partial = u.blobs.iter().filter(|b| b.partial && !b.verified).count();
    let blob_bytes: u64 = u.blobs.iter().map(|b| b.bytes).sum();
    let mut out = format!(
        "cache:    {}\nsize:     {} ({} bytes)\nblobs:    {} ({verified} verified, {partial} partial)\n",
        dir.display(),
        human(u.total),
        u.total,
        u.blobs.len(),
    );
    let other = u.total - blob_bytes.min(u.total);
    if other > 0 {
        out.push_str(&format!(
            "other:    {} in temp or unrecognised files\n",
            human(other)
        ));
    }
    if let (Some(old), Some(new)) = (u.blobs.first(), u.blobs.last()) {
        out.push_str(&format!(
            "used:     least recently {}, most recently {}\n",
            httpdate::fmt_http_date(old.last_used),
            httpdate::fmt_http_date(new.last_used)
        ));
    }
    Ok(out)
}

/// Evict least recently used blobs until the cache is at most `max_size` bytes.
pub fn prune(dir: &Path, max_size: u64) -> Result<String, String> {
    let Some(root) = cache_root(dir)? else {
        return Ok(format!(
            "{}: no cache there; nothing to prune\n",
            dir.display()
        ));
    };
    let (swept, swept_bytes) = super::temp::sweep_cache(&root);
    let u = usage::scan(&root);
    let mut total = u.total;
    let (mut evicted, mut freed) = (0usize, 0u64);
    for b in &u.blobs {
        if total <= max_size {
            break;
        }
        let f = usage::remove_blob(&root, &b.digest);
        total = total.saturating_sub(f);
        freed += f;
        evicted += 1;
    }
    let mut out = String::new();
    if swept > 0 {
        out.push_str(&format!(
            "removed {} ({}) left by mounts that stopped\n",
            count(swept, "temp file"),
            human(swept_bytes)
        ));
    }
    out.push_str(&format!(
        "evicted {} ({}); cache is now {} (limit {})\n",
        count(evicted, "blob"),
        human(freed),
        human(total),
        human(max_size)
    ));
    if total > max_size {
        out.push_str(
            "the rest is unrecognised files and temp files of running mounts, which prune \
             leaves alone\n",
        );
    }
    Ok(out)
}

/// Remove everything from the cache.
pub fn clear(dir: &Path) -> Result<String, String> {
    let Some(root) = cache_root(dir)? else {
        return Ok(format!(
            "{}: no cache there; nothing to clear\n",
            dir.display()
        ));
    };
    let u = usage::scan(&root);
    let entries = fs::read_dir(&root).map_err(|e| format!("{}: {e}", root.display()))?;
    let mut freed = 0;
    for e in entries.flatten() {
        freed += usage::remove_path(&e.path());
    }
    // Leave the skeleton, so a mount using the cache keeps working.
    for sub in ["blobs/sha256", "partial/sha256", "tmp"] {
        let _ = fs::create_dir_all(root.join(sub));
    }
    let left = usage::dir_bytes(&root);
    if left > 0 {
        return Err(format!(
            "removed {} but {} could not be removed from {}",
            human(freed),
            human(left),
            root.display()
        ));
    }
    Ok(format!(
        "removed {} ({}) from {}\n",
        count(u.blobs.len(), "blob"),
        human(freed),
        dir.display()
    ))
}

/// `1 blob`, `2 blobs`.
fn count(n: usize, noun: &str) -> String {
    format!("{n} {noun}{}", if n == 1 { "" } else { "s" })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oci::Digest;
    use std::time::{Duration, SystemTime};

    /// A cache with blobs `a` (verified, oldest), `b` (partial), `c` (partial, newest).
    fn sample(dir: &Path) -> [Digest; 3] {
        let root = dir.join(crate::cache::FORMAT);
        let [a, b, c] = [Digest::of(b"a"), Digest::of(b"b"), Digest::of(b"c")];
        fs::create_dir_all(root.join("blobs/sha256")).unwrap();
        fs::create_dir_all(root.join("tmp")).unwrap();
        fs::write(root.join("blobs/sha256").join(a.hex()), vec![1; 3000]).unwrap();
        fs::write(
            root.join("blobs/sha256").join(format!("{}.crc", a.hex())),
            vec![1; 24],
        )
        .unwrap();
        for (d, n) in [(&b, 2000), (&c, 1000)] {
            let pd = root.join("partial/sha256");
            fs::create_dir_all(&pd).unwrap();
            fs::write(pd.join(d.hex()), vec![2; n]).unwrap();
        }
        let now = SystemTime::now();
        let age = |p: PathBuf, secs: u64| {
            fs::File::open(p)
                .unwrap()
                .set_modified(now - Duration::from_secs(secs))
                .unwrap();
        };
        age(root.join("blobs/sha256").join(a.hex()), 3000);
        age(
            root.join("blobs/sha256").join(format!("{}.crc", a.hex())),
            3000,
        );
        age(root.join("partial/sha256").join(b.hex()), 2000);
        age(root.join("partial/sha256").join(c.hex()), 1000);
        [a, b, c]
    }

    #[test]
    fn stats_reports_sizes_and_kinds() {
        let dir = tempfile::tempdir().unwrap();
        sample(dir.path());
        let s = stats(dir.path()).unwrap();
        assert!(s.contains("size:     5.9 KiB (6024 bytes)"), "{s}");
        assert!(s.contains("blobs:    3 (1 verified, 2 partial)"), "{s}");
        let missing = dir.path().join("nope");
        assert!(stats(&missing).unwrap().contains("empty"));
        fs::create_dir_all(dir.path().join("empty/v2")).unwrap();
        let s = stats(&dir.path().join("empty")).unwrap();
        assert!(
            s.contains("size:     0 B (0 bytes)")
                && s.contains("blobs:    0 (0 verified, 0 partial)"),
            "{s}"
        );
        assert!(
            stats(&dir.path().join("v2")).is_err(),
            "a dir without v2/ is not a cache"
        );
    }

    #[test]
    fn prune_evicts_least_recently_used_first() {
        let dir = tempfile::tempdir().unwrap();
        let [a, b, c] = sample(dir.path());
        let root = dir.path().join("v2");
        // 6024 bytes; a limit of 3500 means a (3024, oldest) goes and that is enough.
        let out = prune(dir.path(), 3500).unwrap();
        assert!(out.starts_with("evicted 1 blob ("), "{out}");
        assert!(!root.join("blobs/sha256").join(a.hex()).exists());
        assert!(!root
            .join("blobs/sha256")
            .join(format!("{}.crc", a.hex()))
            .exists());
        assert!(root.join("partial/sha256").join(b.hex()).exists());
        // Touching b makes c the least recently used.
        fs::File::open(root.join("partial/sha256").join(b.hex()))
            .unwrap()
            .set_modified(SystemTime::now())
            .unwrap();
        prune(dir.path(), 2500).unwrap();
        assert!(root.join("partial/sha256").join(b.hex()).exists());
        assert!(!root.join("partial/sha256").join(c.hex()).exists());
        assert!(usage::dir_bytes(&root) <= 2500);
        let out = prune(dir.path(), 0).unwrap();
        assert!(out.contains("cache is now 0 B"), "{out}");
    }

    #[test]
    fn prune_removes_the_temp_files_of_stopped_mounts_only() {
        let dir = tempfile::tempdir().unwrap();
        let [a, ..] = sample(dir.path());
        let root = dir.path().join("v2");
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let gone = child.id();
        child.wait().unwrap();
        fs::create_dir_all(root.join("archives")).unwrap();
        let dead = root.join(format!("archives/{}.tar.tmp-{gone}-0", a.hex()));
        let live = root.join(format!(
            "archives/{}.win.tmp-{}-0",
            a.hex(),
            std::process::id()
        ));
        fs::write(&dead, vec![7; 5000]).unwrap();
        fs::write(&live, vec![7; 5000]).unwrap();
        // The blobs fit; only the stopped mount's 5000-byte temp file goes.
        let out = prune(dir.path(), 20_000).unwrap();
        assert!(
            out.starts_with("removed 1 temp file (4.9 KiB) left by mounts that stopped\n")
                && out.contains("\nevicted 0 blobs (0 B)"),
            "{out}"
        );
        assert!(!dead.exists() && live.exists());
        let out = prune(dir.path(), 1000).unwrap();
        assert!(out.contains("temp files of running mounts"), "{out}");
        assert!(live.exists());
    }

    #[test]
    fn clear_removes_only_the_cache_and_follows_no_links() {
        let dir = tempfile::tempdir().unwrap();
        let cache = dir.path().join("cache");
        fs::create_dir_all(&cache).unwrap();
        sample(&cache);
        // Something outside the cache that links inside it point to.
        let outside = dir.path().join("precious");
        fs::create_dir_all(&outside).unwrap();
        fs::write(outside.join("keep.txt"), b"keep").unwrap();
        std::os::unix::fs::symlink(&outside, cache.join("v2/partial/sha256/link")).unwrap();
        std::os::unix::fs::symlink(outside.join("keep.txt"), cache.join("v2/tmp/file-link"))
            .unwrap();
        fs::write(cache.join("notes.txt"), b"mine").unwrap();
        let out = clear(&cache).unwrap();
        assert!(out.starts_with("removed 3 blobs"), "{out}");
        assert_eq!(fs::read(outside.join("keep.txt")).unwrap(), b"keep");
        assert_eq!(
            fs::read(cache.join("notes.txt")).unwrap(),
            b"mine",
            "files beside v2/ stay"
        );
        assert!(
            cache.join("v2/blobs/sha256").is_dir(),
            "the skeleton is left for a running mount"
        );
        assert_eq!(usage::dir_bytes(&cache.join("v2")), 0);
        assert!(stats(&cache).unwrap().contains("blobs:    0"));

        // Not a cache: refused, and nothing is deleted.
        let home = dir.path().join("home");
        fs::create_dir_all(&home).unwrap();
        fs::write(home.join("thesis.tex"), b"x").unwrap();
        let err = clear(&home).unwrap_err();
        assert!(err.contains("does not look like an orasfs cache"), "{err}");
        assert!(home.join("thesis.tex").exists());
        assert!(prune(&home, 0).is_err());
        // A v2 that is a link out of the cache is refused too.
        let trap = dir.path().join("trap");
        fs::create_dir_all(&trap).unwrap();
        std::os::unix::fs::symlink(&outside, trap.join("v2")).unwrap();
        assert!(clear(&trap).is_err());
        assert!(outside.join("keep.txt").exists());
        assert!(clear(&dir.path().join("missing"))
            .unwrap()
            .contains("nothing to clear"));
    }
}
