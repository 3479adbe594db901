//! The counters of a running mount: served as `.orasfs/stats.json` inside the mount and
//! printed by `orasfs stats MOUNTPOINT`.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::Ordering;

use crate::cache::BlobCache;
use crate::source::HostTraffic;

/// What the counters are made from; the filesystem gathers it.
pub struct Inputs<'a> {
    /// The source's name.
    pub source: String,
    pub cache: &'a BlobCache,
    pub hosts: Vec<HostTraffic>,
    /// Failed operations by kind.
    pub errors: BTreeMap<&'static str, u64>,
}

/// The mount's counters as pretty JSON.
pub fn render(i: &Inputs) -> String {
    let c = &i.cache.stats;
    let get = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    let v = serde_json::json!({
        "source": i.source,
        "registry": {
            "blob_requests": get(&c.fetch_requests),
            "blob_bytes": get(&c.fetched_bytes),
        },
        "cache": {
            "block_hits": get(&c.hits),
            "block_misses": get(&c.misses),
            "corrupt_blocks_refetched": get(&c.corrupt_blocks),
            "write_failures": get(&c.write_failures),
            "bytes_on_disk": i.cache.disk_usage(),
            "evicted_blobs": get(&c.evicted_blobs),
            "evicted_bytes": get(&c.evicted_bytes),
            "blocks_not_stored_for_room": get(&c.store_refused),
        },
        "read_ahead": {
            "blocks": get(&c.prefetch_blocks),
            "failures": get(&c.prefetch_failures),
        },
        "verification": {
            "verified_blobs": get(&c.verified_blobs),
            "failures": get(&c.integrity_failures),
            "block_failures": get(&c.block_failures),
        },
        "hosts": i.hosts,
        "errors": i.errors,
    });
    let mut s = serde_json::to_string_pretty(&v).unwrap_or_default();
    s.push('\n');
    s
}

/// Print a running mount's counters.
pub fn print(mountpoint: &Path) -> Result<(), String> {
    let path = mountpoint
        .join(crate::fs::tree::CONTROL_NAME)
        .join("stats.json");
    let text = std::fs::read_to_string(&path).map_err(|e| {
        let shown = mountpoint.display();
        match std::fs::metadata(mountpoint) {
            Err(e) => format!("{shown}: {e}"),
            Ok(_) if e.kind() == std::io::ErrorKind::NotFound => {
                format!("{shown} is not an orasfs mount (it has no .orasfs/stats.json)")
            }
            Ok(_) => format!("{}: {e}", path.display()),
        }
    })?;
    print!("{text}");
    Ok(())
}
