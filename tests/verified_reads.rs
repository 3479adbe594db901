//! Verified lazy reads end to end: artifacts in a real `docker-registry`, block indexes
//! made by `orasfs index` (attached as referrers, or embedded in the manifest), a real
//! mount, and faults injected between them (tests/common). Every lazily served
//! byte must have been checked against the index; a block that fails never reaches a
//! reader; a damaged index is refused, not trusted.

mod common;

use std::fs;
use std::path::Path;
use std::process::Command;

use common::*;

const KIB: usize = 1024;
const MIB: usize = 1024 * KIB;

/// A 64 MiB blob in `v/idx:v1`, indexed in the given mode.
fn indexed(reg: &Registry, embed: bool) -> (Vec<u8>, String) {
    let data = random_bytes(64 * MIB, 1212);
    let pushed = reg.push_artifact("v/idx", "v1", &[("big.bin", &data)]);
    let target = format!("{}/v/idx:v1", reg.addr());
    if embed {
        orasfs_index(&[&target, "--embed"]);
    } else {
        orasfs_index(&[&target]);
    }
    (data, hex_of(&pushed.layers[0].0).to_string())
}

#[test]
fn a_block_flipped_in_transit_fails_its_read_at_once_and_is_fetched_again() {
    for embed in [false, true] {
        let reg = Registry::start();
        let (data, hex) = indexed(&reg, embed);
        let proxy = FaultProxy::start(reg.addr());
        proxy.add(Rule::get(
            &format!("/blobs/sha256:{hex}"),
            Fault::FlipByte { at: 100 },
        ));
        let m = Launch::new(&format!("{}/v/idx:v1", proxy.addr()))
            .args(&["-vv"])
            .mount()
            .expect("mount");
        let f = m.join("big.bin");
        reg.settle();
        let before = reg.bytes_served_for(&hex);
        let at = 40 * MIB as u64;
        let e = match pread(&f, at, 64 * KIB) {
            Ok(_) => panic!("a flipped block was served (embed={embed})\n{}", m.stderr()),
            Err(e) => e,
        };
        assert_eq!(errno(&e), libc::EIO, "embed={embed}: {e}");
        reg.settle();
        let sent = reg.bytes_served_for(&hex) - before;
        assert!(
            sent <= 64 * KIB as u64,
            "embed={embed}: only the read's blocks were fetched, not {sent} bytes"
        );
        assert_eq!(proxy.applied(), vec![1], "the fault hit the read");
        // The fault is gone: the next read fetches the block again and is right.
        let got = pread(&f, at, 64 * KIB).expect("the next read");
        assert!(
            got == data[at as usize..at as usize + 64 * KIB],
            "embed={embed}"
        );
        let want = if embed { "blocks" } else { "blocks-referrer" };
        assert_eq!(xattr(&f, "user.orasfs.verified").as_deref(), Some(want));
        let stats = fs::read_to_string(m.join(".orasfs/stats.json")).expect("stats");
        assert!(stats.contains("\"block_failures\": 1"), "{stats}");
    }
}

#[test]
fn a_damaged_index_is_refused_and_the_blob_read_without_it() {
    let reg = Registry::start();
    let (data, _) = indexed(&reg, false);
    // The index blob, found as the mount finds it: the referrers tag of the manifest.
    let (subject, _) = reg.manifest_of("v/idx", "v1");
    let (list, _) = reg.manifest_of("v/idx", &common::sha256(&subject).replace(':', "-"));
    let list: serde_json::Value = serde_json::from_slice(&list).expect("referrers index");
    let referrer = list["manifests"][0]["digest"]
        .as_str()
        .expect("a referrer")
        .to_string();
    let (artifact, _) = reg.manifest_of("v/idx", &referrer);
    let artifact: serde_json::Value = serde_json::from_slice(&artifact).unwrap();
    let index_digest = artifact["layers"][0]["digest"]
        .as_str()
        .unwrap()
        .to_string();
    let index_hex = index_digest.trim_start_matches("sha256:").to_string();
    // Every fetch of it arrives with a flipped byte (in the header and top table).
    let proxy = FaultProxy::start(reg.addr());
    proxy.add(
        Rule::get(
            &format!("/blobs/sha256:{index_hex}"),
            Fault::FlipByte { at: 70 },
        )
        .always(),
    );
    let m = Launch::new(&format!("{}/v/idx:v1", proxy.addr()))
        .args(&["-v"])
        .mount()
        .expect("mount");
    let f = m.join("big.bin");
    let at = 5 * MIB as u64;
    let got = pread(&f, at, 4096).expect("read without the refused index");
    assert!(got == data[at as usize..at as usize + 4096]);
    assert_eq!(xattr(&f, "user.orasfs.verified").as_deref(), Some("none"));
    assert!(
        m.stderr().contains("block index is refused"),
        "the refusal is logged: {}",
        m.stderr()
    );
}

#[test]
fn bytes_that_disagree_with_an_honest_index_are_caught_on_the_first_block_read() {
    // The registry itself serves a wrong byte (its stored copy was damaged after indexing):
    // the index and the bytes disagree, and the first read of that block fails.
    let reg = Registry::start();
    let (data, hex) = indexed(&reg, false);
    let stored = reg.blob_data_path(&hex);
    let at = 40 * MIB as u64 + 5;
    {
        use std::os::unix::fs::FileExt;
        let f = fs::OpenOptions::new().write(true).open(&stored).unwrap();
        f.write_all_at(&[data[at as usize] ^ 0x20], at).unwrap();
    }
    let m = Launch::new(&format!("{}/v/idx:v1", reg.addr()))
        .mount()
        .expect("mount");
    let f = m.join("big.bin");
    let e = pread(&f, at - 5, 4096).expect_err("caught");
    assert_eq!(errno(&e), libc::EIO, "{e}");
    // Other blocks read right.
    let ok = pread(&f, 7 * MIB as u64, 4096).expect("another block");
    assert!(ok == data[7 * MIB..7 * MIB + 4096]);
}

#[test]
fn an_embedded_index_is_bound_by_the_manifest_digest() {
    let reg = Registry::start();
    let (data, _) = indexed(&reg, true);
    let (bytes, _) = reg.manifest_of("v/idx", "v1");
    let bound = common::sha256(&bytes);
    // Change the root annotation of the data layer: a different manifest, a new digest.
    let mut v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    v["layers"][0]["annotations"]["io.orasfs.index.root"] =
        serde_json::Value::String(format!("sha256:{}", "0".repeat(64)));
    let changed = serde_json::to_vec(&v).unwrap();
    let changed_digest = common::sha256(&changed);
    assert_ne!(changed_digest, bound);
    reg.push_manifest("v/idx", "v1", common::OCI_MANIFEST, &changed);
    // A mount by the old digest still sees the index it was bound to.
    let m = Launch::new(&format!("{}/v/idx@{bound}", reg.addr()))
        .mount()
        .expect("mount by digest");
    let f = m.join("big.bin");
    let got = pread(&f, 3 * MIB as u64, 4096).unwrap();
    assert!(got == data[3 * MIB..3 * MIB + 4096]);
    assert_eq!(xattr(&f, "user.orasfs.verified").as_deref(), Some("blocks"));
    drop(m);
    // The changed manifest's root does not match the index: refused, not trusted.
    let m = Launch::new(&format!("{}/v/idx@{changed_digest}", reg.addr()))
        .mount()
        .expect("mount the changed manifest");
    let f = m.join("big.bin");
    pread(&f, 3 * MIB as u64, 4096).unwrap();
    assert_eq!(xattr(&f, "user.orasfs.verified").as_deref(), Some("none"));
}

fn checksums(path: &Path) -> Vec<String> {
    let out = Command::new("gdalinfo")
        .arg("-checksum")
        .arg(path)
        .output()
        .expect("run gdalinfo");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains("Checksum="))
        .map(|l| l.trim().to_string())
        .collect()
}

/// Pushed with the ORAS Python client, indexed in both modes, mounted: GDAL reads the
/// same pixels as from the local file, and a lazy window read is checked by blocks, never
/// by the whole blob (which was not read).
#[test]
fn an_oras_pushed_cog_indexed_in_both_modes_reads_right_and_says_blocks() {
    let have_gdal = common::have("gdalinfo", &["--version"]);
    if !common::needs(
        have_gdal,
        "verified_reads",
        "gdalinfo not found (apt: gdal-bin)",
    ) {
        return;
    }
    if !common::have_oras("verified_reads") {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let cog = make_cog(work.path(), 2048, 77, &[]);
    let local = checksums(&work.path().join("scene.tif"));
    assert_eq!(local.len(), 3, "{local:?}");
    for embed in [false, true] {
        let reg = Registry::start();
        oras_push_from(work.path(), reg.addr(), "eo/cog:v1", &["scene.tif"], "");
        let target = format!("{}/eo/cog:v1", reg.addr());
        if embed {
            orasfs_index(&[&target, "--embed"]);
        } else {
            orasfs_index(&[&target]);
        }
        let m = Launch::new(&target).mount().expect("mount");
        let f = m.join("scene.tif");
        let want = if embed { "blocks" } else { "blocks-referrer" };
        // A lazy window read first: not the whole blob.
        gdal_translate(
            &["-q", "-srcwin", "600", "700", "256", "256"],
            &f,
            &work.path().join(format!("window-{embed}.tif")),
        );
        assert_eq!(
            xattr(&f, "user.orasfs.verified").as_deref(),
            Some(want),
            "embed={embed}"
        );
        assert_eq!(checksums(&f), local, "embed={embed}: gdalinfo -checksum");
        assert!(
            cog.len() > 4 * MIB,
            "a COG larger than the small-blob bound"
        );
    }
}
