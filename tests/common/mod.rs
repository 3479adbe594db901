//! The one harness of the integration tests. Everything started here stops when dropped,
//! and a mount is always unmounted, even when a test panics.
//!
//! - [`registry`]: the one way to start a registry, a real `docker-registry` (plain,
//!   htpasswd, token, TLS, pull-through) on a free loopback port, and the one way to push
//!   to it ([`registry::Pusher`]); the python ORAS client is [`oras_push`].
//! - [`proxy`]: the fault-injecting proxy to put in front of a registry.
//! - [`mount`]: the one way to mount ([`mount::Launch`] → [`mount::Mount`]), and a
//!   mountpoint for daemon-mode runs ([`mount::Spot`]).
//! - [`io`]: reading through a mount and judging what came back.
//! - [`layout`]: local OCI image layouts with anything in them.
//! - [`http`], [`token`], [`certs`]: a tiny HTTP server for test servers, a token
//!   service, and certificates made per test.
//!
//! Each test binary declares `mod common;` and uses what it needs (hence `dead_code`).

#![allow(dead_code, unused_imports)]

pub mod certs;
pub mod http;
pub mod io;
pub mod layout;
pub mod mount;
pub mod proxy;
pub mod registry;
pub mod token;
pub mod tools;

pub use io::*;
pub use layout::LayoutDir;
pub use mount::{force_unmount, is_mounted, orasfs_mounts, Failed, Launch, Mount, Spot};
pub use proxy::{Fault, FaultProxy, Record, Rule};
pub use registry::{htpasswd, Auth, Config, LayerSpec, Pushed, Pusher, Registry};
pub use tools::{gdal_translate, make_cog, orasfs_index};

use std::ffi::CString;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use sha2::{Digest as _, Sha256};

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_EMPTY: &str = "application/vnd.oci.empty.v1+json";
pub const TITLE: &str = "org.opencontainers.image.title";
pub const REF_NAME: &str = "org.opencontainers.image.ref.name";
/// errno of "Read-only file system" on Linux.
pub const EROFS: i32 = 30;

/// `sha256:<hex>` of some bytes. Large inputs go through `sha256sum`: the tests are built
/// without optimisation, where hashing in Rust runs at a few MB/s.
pub fn sha256(bytes: &[u8]) -> String {
    if bytes.len() >= 1 << 20 {
        if let Some(d) = sha256sum(bytes) {
            return d;
        }
    }
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

fn sha256sum(bytes: &[u8]) -> Option<String> {
    use std::io::Write;
    let mut child = Command::new("sha256sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    child.stdin.take()?.write_all(bytes).ok()?;
    let out = child.wait_with_output().ok()?;
    let text = String::from_utf8(out.stdout).ok()?;
    let hex = text.split_whitespace().next()?;
    (out.status.success() && hex.len() == 64).then(|| format!("sha256:{hex}"))
}

/// The hex part of a `sha256:<hex>` digest.
pub fn hex_of(digest: &str) -> &str {
    digest.strip_prefix("sha256:").expect("a sha256 digest")
}

/// Pseudo-random bytes, a deterministic function of `len` and `seed` (splitmix64), so a
/// failing test replays with the same bytes (the seed is in the test's source).
pub fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xD1B5_4A32_D192_ED03;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        out.extend_from_slice(&z.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Poll `f` until it returns `Some`, or give up after `timeout`.
pub fn wait_for<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

// ---------------------------------------------------------------------------------------
// Small helpers for assertions
// ---------------------------------------------------------------------------------------

/// Sorted names in a directory.
pub fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("read_dir {}: {e}", dir.display()))
        .map(|e| {
            e.expect("dir entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    v.sort();
    v
}

/// Whether an external program can be run (`prog --version` or similar exits 0).
pub fn have(prog: &str, args: &[&str]) -> bool {
    Command::new(prog)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// Whether a test that needs a tool may run. When `available` is false: under `CI=true`
/// the test fails with `why` (which names the package to install); elsewhere it is
/// skipped, saying so on standard error and in `$ORASFS_SKIP_LOG`, from which
/// scripts/test.sh prints a summary of what was skipped.
pub fn needs(available: bool, test: &str, why: &str) -> bool {
    if available {
        return true;
    }
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{test}: {why} (CI=true: a missing tool fails the test)");
    }
    eprintln!("SKIPPED {test}: {why}");
    if let Some(log) = std::env::var_os("ORASFS_SKIP_LOG") {
        use std::io::Write;
        if let Ok(mut f) = fs::OpenOptions::new().append(true).open(log) {
            let _ = writeln!(f, "{test}: {why}");
        }
    }
    false
}

/// The Python with the ORAS client: `$ORASFS_PYTHON`, else the virtual environment that
/// scripts/test.sh makes under the build directory (`target/oras-venv`), else `python3`.
pub fn oras_python() -> PathBuf {
    if let Some(p) = std::env::var_os("ORASFS_PYTHON") {
        return PathBuf::from(p);
    }
    let venv = Path::new(env!("CARGO_BIN_EXE_orasfs"))
        .parent()
        .and_then(Path::parent)
        .map(|target| target.join("oras-venv/bin/python3"));
    match venv {
        Some(p) if p.exists() => p,
        _ => PathBuf::from("python3"),
    }
}

/// An extended attribute of a file, as text; `None` if it has none of that name.
pub fn xattr(path: &Path, name: &str) -> Option<String> {
    let p = CString::new(path.as_os_str().as_encoded_bytes()).ok()?;
    let n = CString::new(name).ok()?;
    let mut buf = vec![0u8; 4096];
    // SAFETY: valid C strings and a buffer of the stated length.
    let len = unsafe { libc::getxattr(p.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    (len >= 0).then(|| String::from_utf8_lossy(&buf[..len as usize]).into_owned())
}

/// Whether the python ORAS client can run (see [`needs`]: under `CI=true` its absence
/// fails `test`).
pub fn have_oras(test: &str) -> bool {
    let python = oras_python();
    needs(
        have(
            python.to_str().unwrap_or("python3"),
            &["-c", "import oras.client"],
        ),
        test,
        &format!(
            "{} cannot import oras (pip: oras, in target/oras-venv; scripts/test.sh installs it)",
            python.display()
        ),
    )
}

/// Write `files` into a fresh directory and push them with the python ORAS client to
/// `addr/target` (`repo:tag`). The caller checks [`have_oras`] first.
pub fn oras_push(addr: &str, target: &str, files: &[(&str, &[u8])]) {
    let work = tempfile::tempdir().expect("tempdir");
    for (name, bytes) in files {
        fs::write(work.path().join(name), bytes).expect("write a file to push");
    }
    let names: Vec<&str> = files.iter().map(|(n, _)| *n).collect();
    oras_push_from(work.path(), addr, target, &names, "");
}

/// Push `names` (files or directories under `dir`) with the python ORAS client to
/// `addr/target`, then run `then`: python with the client `c` and the reference `ref`
/// bound (e.g. to edit the pushed manifest). Panics with the client's output on failure.
pub fn oras_push_from(dir: &Path, addr: &str, target: &str, names: &[&str], then: &str) {
    let script = format!(
        r#"
import sys, oras.client
addr, target, files = sys.argv[1], sys.argv[2], sys.argv[3:]
ref = f"{{addr}}/{{target}}"
c = oras.client.OrasClient(hostname=addr, insecure=True)
r = c.push(target=ref, files=files, quiet=True)
if r.status_code not in (200, 201):
    sys.exit(f"push failed: {{r.status_code}} {{r.text}}")
{then}
"#
    );
    let out = Command::new(oras_python())
        .arg("-c")
        .arg(script)
        .arg(addr)
        .arg(target)
        .args(names)
        .current_dir(dir)
        .env("NO_PROXY", "*")
        .output()
        .expect("run python");
    assert!(
        out.status.success(),
        "oras push {target}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
