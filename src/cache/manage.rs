//! `orasfs cache stats|prune|clear`: inspect and trim a cache directory offline.

use std::path::Path;

/// Print size, blob count, verified and partial blobs.
pub fn stats(dir: &Path) -> Result<String, String> {
    Err(format!("cache stats for {} is not implemented yet", dir.display()))
}

/// Evict least recently used blobs until the cache is at most `max_size` bytes.
pub fn prune(dir: &Path, max_size: u64) -> Result<String, String> {
    Err(format!("cache prune of {} to {max_size} is not implemented yet", dir.display()))
}

/// Remove everything from the cache.
pub fn clear(dir: &Path) -> Result<String, String> {
    Err(format!("cache clear of {} is not implemented yet", dir.display()))
}
