//! The outside programs tests run: `orasfs index`, and GDAL to make and read GeoTIFFs.

use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};

use super::random_bytes;

/// `orasfs index ARGS`, which must succeed, with a fresh `HOME` and no credentials from
/// the environment; returns what it printed (the digest pushed).
pub fn orasfs_index(args: &[&str]) -> String {
    let home = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_orasfs"))
        .arg("index")
        .args(args)
        .env("HOME", home.path())
        .env_remove("REGISTRY_AUTH_FILE")
        .env_remove("DOCKER_CONFIG")
        .stdin(Stdio::null())
        .output()
        .expect("run orasfs index");
    assert!(
        out.status.success(),
        "orasfs index {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// `gdal_translate ARGS FROM TO`, which must succeed.
pub fn gdal_translate(args: &[&str], from: &Path, to: &Path) {
    let out = Command::new("gdal_translate")
        .args(args)
        .arg(from)
        .arg(to)
        .output()
        .expect("gdal_translate not found: install the Debian package gdal-bin");
    assert!(
        out.status.success(),
        "gdal_translate {args:?} {}: {}",
        from.display(),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A cloud-optimised GeoTIFF of noise from `seed` (so DEFLATE keeps it large): `n`×`n`,
/// 3 bands, 512-pixel tiles, with overviews; `extra` gdal_translate options (such as a
/// georeference). Written as `dir/scene.tif`; `n` = 2048 gives about 16 MB.
pub fn make_cog(dir: &Path, n: usize, seed: u64, extra: &[&str]) -> Vec<u8> {
    let raw = dir.join("raw.bin");
    fs::write(&raw, random_bytes(3 * n * n, seed)).expect("write raw raster");
    fs::write(
        dir.join("raw.hdr"),
        format!(
            "ENVI\nsamples = {n}\nlines = {n}\nbands = 3\nheader offset = 0\n\
             data type = 1\ninterleave = bsq\nbyte order = 0\n"
        ),
    )
    .expect("write ENVI header");
    let cog = dir.join("scene.tif");
    let mut args = vec!["-q", "-of", "COG", "-co", "COMPRESS=DEFLATE"];
    args.extend_from_slice(extra);
    gdal_translate(&args, &raw, &cog);
    fs::read(&cog).expect("read COG")
}
