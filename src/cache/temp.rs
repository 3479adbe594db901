//! Temporary files in the cache: each is named `NAME.tmp-PID-N` after the process that
//! writes it, and renamed into place when complete. A cache directory is shared by every
//! mount that names it, so a mount that opens it sweeps only the temporary files whose
//! writer is gone (a crash or `kill -9` mid-write): a live mount's half-written file is
//! left alone.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use super::usage;

/// A fresh temporary name beside `path` (`PATH.tmp-PID-N`), unique in this process.
pub fn beside(path: &Path) -> PathBuf {
    static N: AtomicU64 = AtomicU64::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let mut s = path.as_os_str().to_owned();
    s.push(format!(".tmp-{}-{n}", std::process::id()));
    PathBuf::from(s)
}

/// The process that wrote the temporary file `name`, if `name` is one.
pub fn writer(name: &str) -> Option<u32> {
    let (_, tail) = name.rsplit_once(".tmp-")?;
    let (pid, n) = tail.split_once('-')?;
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    (digits(pid) && digits(n)).then(|| pid.parse().ok())?
}

/// Whether process `pid` is alive (as far as this process can tell: one it may not
/// signal is alive).
fn alive(pid: u32) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return false;
    };
    if pid <= 0 {
        return false;
    }
    // SAFETY: kill with signal 0 sends nothing; it only checks that the process exists
    // and may be signalled. It touches no memory of this process.
    let rc = unsafe { libc::kill(pid, 0) };
    rc == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// Remove the temporary files in `dir` whose writer is gone; with `all_unnamed`, also
/// every entry that is not a temporary name of this scheme (the `tmp/` directory, where
/// nothing else belongs). Returns the number of entries removed and their bytes.
pub fn sweep(dir: &Path, all_unnamed: bool) -> (usize, u64) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return (0, 0);
    };
    let (mut count, mut bytes) = (0, 0);
    for e in entries.flatten() {
        let name = e.file_name();
        let stale = match writer(&name.to_string_lossy()) {
            Some(pid) => !alive(pid),
            None => all_unnamed,
        };
        if stale {
            bytes += usage::remove_path(&e.path());
            count += 1;
        }
    }
    (count, bytes)
}

/// Sweep a cache's versioned root: `tmp/` (everything but a live process's temp files)
/// and the temp files of gone writers beside verified blobs and archive files.
pub fn sweep_cache(root: &Path) -> (usize, u64) {
    let (mut count, mut bytes) = sweep(&root.join("tmp"), true);
    for dir in ["blobs/sha256", usage::ARCHIVES] {
        let (n, b) = sweep(&root.join(dir), false);
        count += n;
        bytes += b;
    }
    (count, bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_carry_their_writer() {
        let p = beside(Path::new("/c/archives/ab.tar"));
        let name = p.file_name().unwrap().to_str().unwrap();
        assert!(name.starts_with("ab.tar.tmp-"), "{name}");
        assert_eq!(writer(name), Some(std::process::id()));
        assert_ne!(beside(Path::new("x")), beside(Path::new("x")));
        for not in [
            "ab.tar",
            "ab.tmp-",
            "ab.tmp-12",
            "ab.tmp-12-",
            "ab.tmp--3",
            "ab.tmp-1x-2",
        ] {
            assert_eq!(writer(not), None, "{not}");
        }
        assert_eq!(writer("a.tmp-1.tmp-77-3"), Some(77));
    }

    #[test]
    fn only_the_files_of_gone_writers_are_swept() {
        let dir = tempfile::tempdir().unwrap();
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let gone = child.id();
        child.wait().unwrap();
        let live = std::process::id();
        let file = |name: String| {
            std::fs::write(dir.path().join(&name), [0u8; 10]).unwrap();
            dir.path().join(name)
        };
        let dead = file(format!("ab.tar.tmp-{gone}-0"));
        let mine = file(format!("ab.tar.tmp-{live}-1"));
        let init = file("ab.win.tmp-1-2".into()); // pid 1 exists and is not ours
        let kept = file("ab.tar".into());
        assert_eq!(sweep(dir.path(), false).0, 1);
        assert!(!dead.exists());
        assert!(mine.exists() && init.exists() && kept.exists());
        assert_eq!(sweep(dir.path(), true).0, 1);
        assert!(!kept.exists() && mine.exists() && init.exists());
    }
}
