//! Replays stored fuzz inputs through the same checks the fuzz targets run
//! (fuzz/checks.rs): every crash a fuzzer ever found (tests/fuzz_regressions/TARGET/) and
//! the fuzzers' seeds (fuzz/seeds/TARGET/). A crash input goes here once it is fixed; see
//! fuzz/run.sh.

#[path = "../fuzz/checks.rs"]
mod checks;

use std::fs;
use std::path::Path;

fn replay(target: &str, check: fn(&[u8])) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut n = 0;
    for dir in [
        root.join("tests/fuzz_regressions").join(target),
        root.join("fuzz/seeds").join(target),
    ] {
        let Ok(entries) = fs::read_dir(&dir) else {
            continue;
        };
        let mut files: Vec<_> = entries.flatten().map(|e| e.path()).collect();
        files.sort();
        for f in files.iter().filter(|f| f.is_file()) {
            let data = fs::read(f).unwrap();
            let r = std::panic::catch_unwind(|| check(&data));
            assert!(r.is_ok(), "{target}: {} fails its check", f.display());
            n += 1;
        }
    }
    assert!(n > 0, "{target}: no stored inputs");
}

#[test]
fn manifest_inputs() {
    replay("manifest", checks::manifest);
}

#[test]
fn title_inputs() {
    replay("titles", checks::titles);
}

#[test]
fn www_authenticate_inputs() {
    replay("www_authenticate", checks::www_authenticate);
}

#[test]
fn link_inputs() {
    replay("link", checks::link);
}

#[test]
fn content_range_inputs() {
    replay("content_range", checks::content_range);
}

#[test]
fn target_inputs() {
    replay("target", checks::target);
}

#[test]
fn archive_inputs() {
    replay("archive", checks::archive);
}
