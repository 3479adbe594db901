//! The README's recipe "Your own registry in two minutes" runs as written: its `sh` blocks,
//! in order, with a fresh `HOME`, free ports instead of 5055 and 5056, and orasfs on
//! `PATH`. The one line that downloads the ORAS client (`pip install`) is left out; the
//! virtual environment scripts/test.sh made stands in for it.

mod common;

use std::fs;
use std::io::Read;
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{have, is_mounted, needs, oras_python, wait_for};

const SECTION: &str = "## Your own registry in two minutes";

/// The `sh` blocks of the README section, joined.
fn recipe() -> String {
    let readme = fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md"))
        .expect("README.md");
    let start = readme
        .find(SECTION)
        .expect("the recipe section in README.md");
    let rest = &readme[start + SECTION.len()..];
    let section = &rest[..rest.find("\n## ").unwrap_or(rest.len())];
    let mut script = String::new();
    let mut in_block = false;
    for line in section.lines() {
        match (in_block, line.trim_end()) {
            (false, "```sh") => in_block = true,
            (true, "```") => in_block = false,
            (true, l) => {
                script.push_str(l);
                script.push('\n');
            }
            _ => {}
        }
    }
    script
}

fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("a free port");
    l.local_addr().expect("address").port()
}

/// The shell running the recipe, in its own process group (with the registries it starts
/// in the background); killed on drop, and the recipe's mountpoint unmounted.
struct Run {
    child: Child,
    mnt: PathBuf,
}

impl Drop for Run {
    fn drop(&mut self) {
        if is_mounted(&self.mnt) {
            let _ = Command::new("fusermount3")
                .arg("-uz")
                .arg(&self.mnt)
                .status();
        }
        // SAFETY: kill(2) of the process group this test created.
        unsafe { libc::kill(-(self.child.id() as i32), libc::SIGKILL) };
        let _ = self.child.wait();
    }
}

#[test]
fn the_own_registry_recipe_works() {
    let tools_present = ["docker-registry", "curl", "getfattr", "htpasswd"]
        .iter()
        .all(|t| have("sh", &["-c", &format!("command -v {t}")]));
    let python = oras_python();
    let venv = python
        .parent()
        .and_then(Path::parent)
        .map(Path::to_path_buf);
    let oras_present =
        venv.is_some() && have(python.to_str().unwrap(), &["-c", "import oras.client"]);
    if !needs(
        tools_present && oras_present,
        "readme::the_own_registry_recipe_works",
        &format!(
            "needs docker-registry, curl, getfattr, htpasswd (apt: docker-registry curl attr \
             apache2-utils) and oras in a virtual environment, {} (scripts/test.sh makes it)",
            python.display()
        ),
    ) {
        return;
    }
    let home = tempfile::tempdir().unwrap();
    let home_path = home.path().canonicalize().unwrap();
    let venv = venv.expect("checked above");
    std::os::unix::fs::symlink(&venv, home_path.join("oras-venv")).unwrap();
    let bin = home_path.join("bin");
    fs::create_dir(&bin).unwrap();
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_orasfs"), bin.join("orasfs")).unwrap();

    let text = recipe();
    let (install, kept): (Vec<&str>, Vec<&str>) =
        text.lines().partition(|l| l.contains("pip install"));
    assert_eq!(install.len(), 1, "one install line: {install:?}");
    let script = kept
        .join("\n")
        .replace("127.0.0.1:5055", &format!("127.0.0.1:{}", free_port()))
        .replace("127.0.0.1:5056", &format!("127.0.0.1:{}", free_port()));
    assert!(script.contains("orasfs mount"), "{script}");

    let out_path = home_path.join("out.txt");
    let child = Command::new("bash")
        .args(["-euo", "pipefail", "-c", &script])
        .current_dir(&home_path)
        .env("HOME", &home_path)
        .env(
            "PATH",
            format!(
                "{}:{}",
                bin.display(),
                std::env::var("PATH").unwrap_or_default()
            ),
        )
        .env_remove("DOCKER_CONFIG")
        .env_remove("REGISTRY_AUTH_FILE")
        .env("NO_PROXY", "*")
        .stdin(Stdio::null())
        .stdout(fs::File::create(&out_path).unwrap())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .expect("run bash");
    let mut run = Run {
        child,
        mnt: home_path.join("orasfs-demo/mnt"),
    };
    let status = wait_for(Duration::from_secs(120), || {
        run.child.try_wait().ok().flatten()
    });
    let mut err = String::new();
    if status.is_some() {
        let _ = run
            .child
            .stderr
            .take()
            .map(|mut e| e.read_to_string(&mut err));
    }
    let out = fs::read_to_string(&out_path).unwrap_or_default();
    let status = status.unwrap_or_else(|| panic!("the recipe ran over 120 s: {out}"));
    assert!(
        status.success(),
        "the recipe failed ({status}):\n{out}\n{err}"
    );
    assert_eq!(
        out.matches("hello from a registry").count(),
        2,
        "cat through both mounts:\n{out}"
    );
    assert!(
        out.contains("hello.txt") && out.contains("meta.json"),
        "{out}"
    );
    assert!(out.contains("user.oci.digest=\"sha256:"), "{out}");
    assert!(!is_mounted(&run.mnt), "the recipe unmounts");
}
