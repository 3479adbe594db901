//! Reading through a mount and judging the result: whole, streamed and positioned reads,
//! errnos, "EIO or exactly the right bytes", a walk of a tree, the one-line failure of a
//! mount, and whether FUSE passthrough was granted.

use std::fs::{self, File};
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use super::mount::{Failed, Mount};

/// The arguments of a test run "with passthrough": `-v`, so the daemon logs what the
/// kernel granted (see [`assert_passthrough_granted`]).
pub const WITH_PASSTHROUGH: &[&str] = &["-v"];

/// A test "with passthrough" must not quietly test the plain path: the daemon (started
/// with [`WITH_PASSTHROUGH`]) logged that the kernel granted FUSE passthrough, and never
/// that an open was refused it (no CAP_SYS_ADMIN). Nothing is asserted for a run with
/// `--no-passthrough`.
pub fn assert_passthrough_granted(m: &Mount, extra: &[&str]) {
    if extra.contains(&"--no-passthrough") {
        return;
    }
    let log = m.stderr();
    assert!(
        log.contains("FUSE passthrough on"),
        "FUSE passthrough was not granted by the kernel:\n{log}"
    );
    assert!(
        !log.contains("FUSE passthrough unavailable"),
        "FUSE passthrough was refused on open:\n{log}"
    );
}

/// A whole file read through the mount, or the error of the read.
pub fn read_all(p: &Path) -> io::Result<Vec<u8>> {
    fs::read(p)
}

/// Read a file sequentially in 1 MiB reads without trusting its size (a descriptor may
/// claim a terabyte); fails with `FileTooLarge` past `cap` bytes.
pub fn read_stream(p: &Path, cap: usize) -> io::Result<Vec<u8>> {
    let mut f = File::open(p)?;
    let mut out = Vec::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            return Ok(out);
        }
        if out.len() + n > cap {
            return Err(io::Error::new(io::ErrorKind::FileTooLarge, "over the cap"));
        }
        out.extend_from_slice(&buf[..n]);
    }
}

/// The errno of an I/O error, if any.
pub fn errno(e: &io::Error) -> i32 {
    e.raw_os_error().unwrap_or(-1)
}

/// Assert that a whole-file read either failed with EIO or returned exactly `want`.
#[track_caller]
pub fn assert_eio_or_exact(what: &str, r: io::Result<Vec<u8>>, want: &[u8]) -> bool {
    match r {
        Ok(got) => {
            assert_eq!(got.len(), want.len(), "{what}: length of a successful read");
            if let Some(i) = got.iter().zip(want).position(|(a, b)| a != b) {
                panic!("{what}: a successful read returned a wrong byte at {i}");
            }
            true
        }
        Err(e) => {
            assert_eq!(
                errno(&e),
                libc::EIO,
                "{what}: failed, but not with EIO: {e}"
            );
            false
        }
    }
}

/// pread `len` bytes at `off`; the result or the error.
pub fn pread(p: &Path, off: u64, len: usize) -> io::Result<Vec<u8>> {
    use std::os::unix::fs::FileExt;
    let f = File::open(p)?;
    let mut buf = vec![0u8; len];
    let mut done = 0;
    while done < len {
        let n = f.read_at(&mut buf[done..], off + done as u64)?;
        if n == 0 {
            break;
        }
        done += n;
    }
    buf.truncate(done);
    Ok(buf)
}

/// Every file below `root` (recursively), as paths relative to it.
pub fn walk_files(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            match e.file_type() {
                Ok(t) if t.is_dir() => stack.push(p),
                _ => out.push(p.strip_prefix(root).unwrap_or(&p).to_path_buf()),
            }
        }
    }
    out.sort();
    out
}

/// Assert a failure before mounting was exactly one line, `orasfs: ...`, mentioning each
/// of `needles` (case-insensitively).
#[track_caller]
pub fn assert_one_line(what: &str, Failed { status, stderr }: &Failed, needles: &[&str]) {
    assert!(
        !status.success(),
        "{what}: exit status {status:?}; stderr {stderr:?}"
    );
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(
        lines.len(),
        1,
        "{what}: expected one line on stderr, got {stderr:?}"
    );
    assert!(lines[0].starts_with("orasfs: "), "{what}: {:?}", lines[0]);
    for n in needles {
        assert!(
            lines[0].to_lowercase().contains(&n.to_lowercase()),
            "{what}: {:?} should mention {n:?}",
            lines[0]
        );
    }
    eprintln!("{what}: {}", lines[0]);
}
