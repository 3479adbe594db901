//! What a read costs in registry bytes: a real `docker-registry`, a real `orasfs mount`,
//! and the bytes counted from the registry's own log (`http.response.written`), never from
//! orasfs's counters. Issue 9: fetch what is read.

mod common;

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::process::{Command, Output};
use std::time::{SystemTime, UNIX_EPOCH};

use common::*;

const KIB: usize = 1024;
const MIB: usize = 1024 * KIB;

/// Fail (never skip) when a tool the test needs is missing, naming the Debian package.
fn require(prog: &str, package: &str) {
    assert!(
        have(prog, &["--version"]),
        "{prog} not found: install the Debian package {package}"
    );
}

fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// The lines of `gdalinfo` output that describe the raster (not the file name).
fn raster_lines(out: &Output) -> Vec<String> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.starts_with("Size is") || l.contains("Block=") || l.contains("Overviews:"))
        .map(str::to_string)
        .collect()
}

#[test]
fn gdalinfo_through_the_mount_fetches_at_most_1_5x_what_vsicurl_fetches() {
    require("gdalinfo", "gdal-bin");
    require("gdal_translate", "gdal-bin");
    let work = tempfile::tempdir().expect("tempdir");
    let tif = make_cog(
        work.path(),
        2048,
        88,
        &[
            "-a_srs",
            "EPSG:32633",
            "-a_ullr",
            "500000",
            "5860000",
            "560000",
            "5800000",
        ],
    );
    let reg = Registry::start();
    let pushed = reg.push_artifact("eo/imagery", "v1", &[("imagery.tif", &tif)]);
    let digest = pushed.layers[0].0.clone();
    let hex = hex_of(&digest).to_string();

    // GDAL's own HTTP reader on the blob URL, as GIS users run it. (gdalinfo reads 8 KiB at
    // offset 0, twice; /vsicurl/ fetches one 16 KiB range. Through FUSE the kernel's
    // read-ahead decides the size of the first read the daemon sees.)
    reg.settle();
    let before = reg.bytes_served_for(&hex);
    let vsi = run(Command::new("gdalinfo")
        .env("GDAL_DISABLE_READDIR_ON_OPEN", "EMPTY_DIR")
        .arg(format!(
            "/vsicurl/{}",
            reg.url(&format!("/v2/eo/imagery/blobs/{digest}"))
        )));
    reg.settle();
    let vsicurl = reg.bytes_served_for(&hex) - before;

    // The same through a cold mount: everything the mount fetches of the blob counts.
    let before = reg.bytes_served_for(&hex);
    let m = Mount::start(&format!("{}/eo/imagery:v1", reg.addr()), &[]).expect("mount");
    let ours = run(Command::new("gdalinfo").arg(m.join("imagery.tif")));
    reg.settle();
    let mounted = reg.bytes_served_for(&hex) - before;
    drop(m);

    let want = raster_lines(&vsi);
    assert!(
        want.iter().any(|l| l.starts_with("Size is 2048, 2048")),
        "gdalinfo /vsicurl/ described the raster: {want:?}"
    );
    assert_eq!(raster_lines(&ours), want, "gdalinfo through the mount");
    eprintln!(
        "gdalinfo on a {} byte COG: the mount made the registry send {mounted} bytes, /vsicurl/ {vsicurl}",
        tif.len()
    );
    assert!(vsicurl > 0, "the registry log shows /vsicurl/'s reads");
    assert!(
        mounted * 2 <= vsicurl * 3,
        "gdalinfo through the mount made the registry send {mounted} bytes, more than 1.5× \
         the {vsicurl} bytes GDAL's /vsicurl/ fetched for the same gdalinfo"
    );
}

#[test]
fn a_64k_read_at_a_random_offset_of_a_cold_64m_blob_costs_at_most_128k() {
    let blob = random_bytes(64 * MIB, 64);
    let reg = Registry::start();
    let pushed = reg.push_artifact("big/blob", "v1", &[("big.bin", &blob)]);
    let hex = hex_of(&pushed.layers[0].0).to_string();
    reg.settle();
    let before = reg.bytes_served_for(&hex);

    // A different offset each run, rarely block-aligned; ORASFS_TEST_OFFSET replays one.
    let len = 64 * KIB;
    let offset = match std::env::var("ORASFS_TEST_OFFSET") {
        Ok(v) => v.parse().expect("ORASFS_TEST_OFFSET: a byte offset"),
        Err(_) => {
            let nanos = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.subsec_nanos() as u64 ^ d.as_secs())
                .unwrap_or(1);
            let seed = random_bytes(8, nanos);
            let r = u64::from_le_bytes(seed[..8].try_into().expect("8 bytes"));
            (r % (blob.len() - len) as u64) as usize
        }
    };
    assert!(
        offset + len <= blob.len(),
        "offset {offset} inside the blob"
    );
    eprintln!("64 KiB read at offset {offset} (ORASFS_TEST_OFFSET={offset} replays it)");

    let m = Mount::start(&format!("{}/big/blob:v1", reg.addr()), &[]).expect("mount");
    let mut f = File::open(m.join("big.bin")).expect("open");
    f.seek(SeekFrom::Start(offset as u64)).expect("seek");
    let mut buf = vec![0u8; len];
    f.read_exact(&mut buf).expect("read 64 KiB");
    drop(f);
    reg.settle();
    let served = reg.bytes_served_for(&hex) - before;
    drop(m);

    assert!(
        buf == blob[offset..offset + len],
        "the 64 KiB at offset {offset} differ from the blob"
    );
    assert!(
        served >= len as u64,
        "the registry log shows the read ({served} bytes)"
    );
    assert!(
        served <= 128 * KIB as u64,
        "a 64 KiB read at offset {offset} of a cold 64 MiB blob made the registry send {served} bytes (> 128 KiB)"
    );
}
