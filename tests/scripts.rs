//! What the README's scripts and `make install` tell a newcomer: the toolchain check of
//! scripts/lib.sh (shared by demo.sh and test.sh) against fake `cargo`s, the FUSE device
//! check, and `make install` run without cargo on `PATH`, as under `sudo`.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const REPO: &str = env!("CARGO_MANIFEST_DIR");
const BIN: &str = env!("CARGO_BIN_EXE_orasfs");

/// Where `prog` is on this machine's PATH.
fn which(prog: &str) -> PathBuf {
    let out = Command::new("sh")
        .args(["-c", &format!("command -v {prog}")])
        .output()
        .expect("sh");
    assert!(out.status.success(), "{prog} is not installed");
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

/// A directory to use as the whole PATH, holding only what a test puts in it.
struct Path1 {
    dir: tempfile::TempDir,
}

impl Path1 {
    fn new() -> Self {
        Path1 {
            dir: tempfile::tempdir().unwrap(),
        }
    }
    fn path(&self) -> &Path {
        self.dir.path()
    }
    /// A fake `cargo`: `--version` prints `version`; `fmt`/`clippy` exist if asked.
    fn cargo(&self, version: &str, fmt: bool, clippy: bool) {
        let script = format!(
            "#!/bin/sh\ncase \"$1\" in\n  --version) echo '{version}' ;;\n  fmt) exit {} ;;\n  clippy) exit {} ;;\n  *) exit 1 ;;\nesac\n",
            if fmt { 0 } else { 1 },
            if clippy { 0 } else { 1 },
        );
        let p = self.path().join("cargo");
        fs::write(&p, script).unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(0o755)).unwrap();
    }
    fn link(&self, prog: &str) {
        std::os::unix::fs::symlink(which(prog), self.path().join(prog)).unwrap();
    }
}

/// Source scripts/lib.sh and run `call` with only `path` on PATH and an empty HOME.
fn lib_sh(path: &Path, call: &str) -> Output {
    let home = tempfile::tempdir().unwrap();
    Command::new(which("bash"))
        .arg("-c")
        .arg(format!(
            ". scripts/lib.sh; die() {{ echo \"$*\" >&2; exit 1; }}; {call}"
        ))
        .current_dir(REPO)
        .env_clear()
        .env("PATH", path)
        .env("HOME", home.path())
        .output()
        .expect("bash")
}

fn fails_with(out: &Output) -> String {
    assert!(!out.status.success(), "expected a failure");
    String::from_utf8_lossy(&out.stderr).trim().to_string()
}

#[test]
fn the_toolchain_check_says_what_to_install() {
    let p = Path1::new();
    let err = fails_with(&lib_sh(p.path(), "check_toolchain"));
    assert!(
        err.starts_with("cargo not found: install Rust with rustup"),
        "{err}"
    );

    p.cargo("cargo 1.63.0", true, true);
    let err = fails_with(&lib_sh(p.path(), "check_toolchain"));
    assert!(
        err.starts_with("cargo 1.63.0 is too old: orasfs needs Rust >= 1.85 (Debian's own cargo cannot read Cargo.lock)"),
        "{err}"
    );
    assert!(err.contains("rustup"), "{err}");

    p.cargo("cargo 1.85.0 (d73d2caf9 2024-12-31)", false, true);
    let err = fails_with(&lib_sh(p.path(), "check_toolchain"));
    assert_eq!(err, "rustfmt is missing: rustup component add rustfmt");

    p.cargo("cargo 1.85.0 (d73d2caf9 2024-12-31)", true, false);
    let err = fails_with(&lib_sh(p.path(), "check_toolchain"));
    assert_eq!(err, "clippy is missing: rustup component add clippy");

    p.cargo("cargo 2.0.1", true, true);
    let out = lib_sh(p.path(), "check_toolchain");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "cargo 2.0.1");
}

#[test]
fn both_scripts_check_the_toolchain_and_the_fuse_device_first() {
    let p = Path1::new();
    let err = fails_with(&lib_sh(p.path(), "check_fuse_device /nonexistent/fuse"));
    assert!(
        err.starts_with(
            "/nonexistent/fuse does not exist: this machine (or container) has no FUSE device"
        ),
        "{err}"
    );
    assert!(
        err.contains("--device /dev/fuse --cap-add SYS_ADMIN"),
        "{err}"
    );
    assert!(lib_sh(p.path(), "check_fuse_device /").status.success());

    // Both scripts stop at once with the check's message when cargo is too old, before
    // installing or building anything (apt-get is not even on PATH).
    p.cargo("cargo 1.63.0", true, true);
    p.link("bash");
    p.link("dirname");
    for script in ["scripts/test.sh", "scripts/demo.sh"] {
        let err = fails_with(&lib_sh(p.path(), &format!("exec bash {script}")));
        assert!(err.contains("cargo 1.63.0 is too old"), "{script}: {err}");
        assert!(!err.contains("apt"), "{script}: {err}");
    }
}

#[test]
fn make_install_installs_the_built_binary_without_cargo() {
    if !common::needs(
        common::have("make", &["--version"]),
        "scripts::make_install_installs_the_built_binary_without_cargo",
        "make is not installed (apt: make)",
    ) {
        return;
    }
    // PATH as root has it under sudo, minus cargo: only what the recipe runs.
    let p = Path1::new();
    for prog in ["install", "ln", "rm", "sh", "sed", "chmod"] {
        p.link(prog);
    }
    let dest = tempfile::tempdir().unwrap();
    let make_in = |dest: &Path, bin: &str, extra: &[&str]| {
        Command::new(which("make"))
            .args(["-C", REPO, "install"])
            .arg(format!("DESTDIR={}", dest.display()))
            .arg(format!("BIN={bin}"))
            .args(extra)
            .env_clear()
            .env("PATH", p.path())
            .output()
            .expect("make")
    };
    let make = |bin: &str| make_in(dest.path(), bin, &[]);
    let out = make(BIN);
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let installed = dest.path().join("usr/local/bin/orasfs");
    assert!(fs::read(&installed).unwrap() == fs::read(BIN).unwrap());
    assert_eq!(
        fs::read_link(dest.path().join("sbin/mount.orasfs")).unwrap(),
        Path::new("/usr/local/bin/orasfs")
    );
    let unit =
        |dest: &Path| fs::read_to_string(dest.join("etc/systemd/system/orasfs@.service")).unwrap();
    assert!(unit(dest.path()).contains("\nExecStart=/usr/local/bin/orasfs mount "));
    // Another PREFIX: the unit starts the binary where it was installed.
    let usr = tempfile::tempdir().unwrap();
    let out = make_in(usr.path(), BIN, &["PREFIX=/usr"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(usr.path().join("usr/bin/orasfs").is_file());
    assert!(unit(usr.path()).contains("\nExecStart=/usr/bin/orasfs mount "));
    assert!(usr.path().join("usr/share/doc/orasfs/README.md").is_file());

    let missing = dest.path().join("no-such-build/orasfs");
    let out = make(missing.to_str().unwrap());
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!(
            "make install: {} is missing: build it first as yourself with 'make', then run 'sudo make install'",
            missing.display()
        )),
        "{err}"
    );
}

/// A probe for the test below, which runs it in a child process with
/// `ORASFS_NEEDS_PROBE=1`; on its own it does nothing.
#[test]
fn needs_a_tool_that_is_missing() {
    if std::env::var_os("ORASFS_NEEDS_PROBE").is_none() {
        return;
    }
    if !common::needs(
        false,
        "scripts::needs_a_tool_that_is_missing",
        "frobnicate is not installed (apt: frobnicate)",
    ) {
        return;
    }
    unreachable!("needs(false, …) never lets a test go on");
}

#[test]
fn a_missing_tool_fails_under_ci_and_is_listed_otherwise() {
    let me = std::env::current_exe().unwrap();
    let skips = tempfile::NamedTempFile::new().unwrap();
    let run = |ci: bool| {
        let mut c = Command::new(&me);
        c.args(["--nocapture", "--exact", "needs_a_tool_that_is_missing"])
            .env("ORASFS_NEEDS_PROBE", "1")
            .env("ORASFS_SKIP_LOG", skips.path())
            .env_remove("CI");
        if ci {
            c.env("CI", "true");
        }
        c.output().unwrap()
    };
    let out = run(true);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !out.status.success(),
        "under CI=true the test fails: {text}"
    );
    assert!(
        text.contains("frobnicate is not installed (apt: frobnicate)"),
        "{text}"
    );
    assert_eq!(fs::read_to_string(skips.path()).unwrap(), "");

    let out = run(false);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr)
        .contains("SKIPPED scripts::needs_a_tool_that_is_missing"));
    assert_eq!(
        fs::read_to_string(skips.path()).unwrap(),
        "scripts::needs_a_tool_that_is_missing: frobnicate is not installed (apt: frobnicate)\n"
    );
}
