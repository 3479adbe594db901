//! What is at a mountpoint, read from the kernel: the mount table
//! (`/proc/self/mountinfo`), and the processes holding files under it (`/proc/PID/cwd`,
//! `root`, `exe` and `fd/*`, as `fuser -m` does). Used by the checks before mounting and
//! by `orasfs umount` to explain a refusal.

use std::path::{Path, PathBuf};

/// One line of `/proc/self/mountinfo`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountEntry {
    /// Where it is mounted.
    pub target: PathBuf,
    /// The filesystem type, e.g. `fuse.orasfs` or `ext4`.
    pub fstype: String,
    /// The mount source, e.g. `orasfs:127.0.0.1:5000/eo/products:v1`.
    pub source: String,
    /// The device, `major:minor`.
    pub dev: String,
}

/// Undo the octal escapes of the mount table (`\040` for a space, and so on).
fn unescape(field: &str) -> String {
    let b = field.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let octal = b[i] == b'\\'
            && i + 4 <= b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c));
        if octal {
            let n = (b[i + 1] - b'0') as u32 * 64
                + (b[i + 2] - b'0') as u32 * 8
                + (b[i + 3] - b'0') as u32;
            out.push(n as u8);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Parse mountinfo text; lines that do not parse are skipped.
pub fn parse_mountinfo(text: &str) -> Vec<MountEntry> {
    text.lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let dev = left.split(' ').nth(2)?;
            let target = left.split(' ').nth(4)?;
            let mut r = right.split(' ');
            let fstype = r.next()?;
            let source = r.next()?;
            Some(MountEntry {
                target: PathBuf::from(unescape(target)),
                fstype: unescape(fstype),
                source: unescape(source),
                dev: dev.to_string(),
            })
        })
        .collect()
}

/// `p` made absolute with symlinks resolved, without touching `p` itself (a dead FUSE
/// mount fails every stat): only its parent is resolved.
pub fn absolute(p: &Path) -> PathBuf {
    let p = std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf());
    if let Ok(c) = p.canonicalize() {
        return c;
    }
    match (p.parent(), p.file_name()) {
        (Some(parent), Some(name)) => parent
            .canonicalize()
            .unwrap_or_else(|_| parent.to_path_buf())
            .join(name),
        _ => p,
    }
}

/// The topmost mount at `p`, if `p` is a mount point.
pub fn mounted_at(p: &Path) -> Option<MountEntry> {
    mounted_at_absolute(&absolute(p))
}

/// [`mounted_at`] for a path already made absolute: reads only the mount table, so it
/// never waits on the mount itself (a FUSE daemon may ask about its own mount).
pub fn mounted_at_absolute(want: &Path) -> Option<MountEntry> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    parse_mountinfo(&text)
        .into_iter()
        .rev()
        .find(|m| m.target == want)
}

/// A process with a file, working directory or root under a mountpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    pub pid: u32,
    /// Its command name (`/proc/PID/comm`).
    pub name: String,
}

impl std::fmt::Display for Holder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (pid {})", self.name, self.pid)
    }
}

/// Processes that hold something under `mountpoint`, found by the paths their
/// `/proc/PID` links name (the links are read, never followed, so a hung mount cannot
/// block this). Processes this user may not inspect are not seen.
pub fn holders(mountpoint: &Path) -> Vec<Holder> {
    let mp = absolute(mountpoint);
    let under = |link: &Path| {
        std::fs::read_link(link)
            .map(|t| t == mp || t.starts_with(&mp))
            .unwrap_or(false)
    };
    let me = std::process::id();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for entry in procs.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        if pid == me {
            continue;
        }
        let dir = entry.path();
        let mut held = ["cwd", "root", "exe"].iter().any(|l| under(&dir.join(l)));
        if !held {
            if let Ok(fds) = std::fs::read_dir(dir.join("fd")) {
                held = fds.flatten().any(|fd| under(&fd.path()));
            }
        }
        if held {
            let name = std::fs::read_to_string(dir.join("comm"))
                .map(|c| c.trim_end().to_string())
                .unwrap_or_else(|_| "?".into());
            out.push(Holder { pid, name });
        }
    }
    out.sort_by_key(|h| h.pid);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_lines_are_parsed_and_unescaped() {
        let text = "\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
90 22 0:50 / /tmp/a\\040b rw,nosuid - fuse.orasfs orasfs:127.0.0.1:5000/r:v1 ro,user_id=0
garbage line
";
        let m = parse_mountinfo(text);
        assert_eq!(m.len(), 2);
        assert_eq!(m[1].target, PathBuf::from("/tmp/a b"));
        assert_eq!(m[1].fstype, "fuse.orasfs");
        assert_eq!(m[1].source, "orasfs:127.0.0.1:5000/r:v1");
    }

    #[test]
    fn the_root_is_a_mount_point_and_a_fresh_directory_is_not() {
        assert!(mounted_at(Path::new("/")).is_some());
        let d = tempfile::tempdir().unwrap();
        assert_eq!(mounted_at(d.path()), None);
    }

    #[test]
    fn a_process_working_in_a_directory_holds_it() {
        let d = tempfile::tempdir().unwrap();
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .current_dir(d.path())
            .spawn()
            .unwrap();
        let found = holders(d.path());
        let _ = child.kill();
        let _ = child.wait();
        assert!(
            found
                .iter()
                .any(|h| h.pid == child.id() && h.name == "sleep"),
            "{found:?}"
        );
    }
}
