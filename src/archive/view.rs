//! Archive contents as inodes. Each archive directory in the tree gets a number `k`;
//! its members are inodes `VIEW_BIT | k << 32 | node`, outside the tree's table (node 0,
//! the archive's root, is the tree's own inode). Archives are listed on first use and
//! shared by every directory showing the same blob.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use super::index::{Node, NodeKind};
use super::open::{Archive, Limits};
use super::remote::{self, ArchiveHint};
use super::{ArchiveError, BlobBytes};
use crate::cache::{BlobCache, BlobRef};
use crate::oci::Digest;
use crate::source::Source;

/// Set in the inode numbers of archive members (the tree's placeholders use bit 63).
pub const VIEW_BIT: u64 = 1 << 62;
const MAX_VIEWS: u32 = 1 << 29;

/// One archive directory of the tree.
struct View {
    tree_ino: u64,
    blob: BlobRef,
    slot: Arc<Slot>,
    /// The top directory shown, as `oras pull` extracts it (see [`Views::view_of`]).
    top: Option<String>,
    /// The node shown as the directory, once listed.
    root: std::sync::OnceLock<u32>,
    /// Where a published archive index may be.
    hint: Option<ArchiveHint>,
}

/// The listing of one blob, made once.
#[derive(Default)]
struct Slot {
    state: Mutex<Option<Result<Arc<Archive>, String>>>,
}

/// Where an inode points inside an archive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Member {
    pub view: u32,
    pub node: u32,
}

/// All archive directories of a mount.
pub struct Views {
    dir: Option<PathBuf>,
    /// The store whose limits the index files in `dir` count against.
    cache: Option<Arc<BlobCache>>,
    /// Where published archive indexes are fetched from.
    src: Option<Arc<dyn Source>>,
    limits: Limits,
    views: Mutex<Vec<View>>,
    by_tree: Mutex<HashMap<u64, u32>>,
    by_digest: Mutex<HashMap<Digest, Arc<Slot>>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Views {
    /// `cache` keeps archive indexes between mounts (in its archives directory, counted
    /// against its limits); `src` gives published ones.
    pub fn new(
        cache: Option<Arc<BlobCache>>,
        src: Option<Arc<dyn Source>>,
        limits: Limits,
    ) -> Self {
        Self {
            dir: cache.as_ref().map(|c| c.archives_dir()),
            cache,
            src,
            limits,
            views: Mutex::new(Vec::new()),
            by_tree: Mutex::new(HashMap::new()),
            by_digest: Mutex::new(HashMap::new()),
        }
    }

    /// Whether an inode is an archive member's.
    pub fn owns(ino: u64) -> bool {
        ino & (VIEW_BIT | 1 << 63) == VIEW_BIT
    }

    /// The member an inode names.
    pub fn member(ino: u64) -> Member {
        Member {
            view: ((ino & !VIEW_BIT) >> 32) as u32,
            node: ino as u32,
        }
    }

    /// The inode of a member; the directory's own node is the tree's inode.
    pub fn ino(&self, m: Member) -> u64 {
        if let Some(v) = lock(&self.views).get(m.view as usize) {
            if v.root.get() == Some(&m.node) {
                return v.tree_ino;
            }
        }
        VIEW_BIT | (m.view as u64) << 32 | m.node as u64
    }

    /// The node a view shows as its directory (after [`Views::archive`]).
    pub fn root(&self, view: u32) -> u32 {
        lock(&self.views)
            .get(view as usize)
            .and_then(|v| v.root.get().copied())
            .unwrap_or(0)
    }

    /// The view number of an archive directory of the tree, registered on first use.
    /// With `top` (an ORAS directory push's title), the directory shows the archive's
    /// `top/` subtree, as `oras pull` extracts `top/…` entries into `./top`; archives
    /// without that directory are shown whole.
    pub fn view_of(
        &self,
        tree_ino: u64,
        blob: &BlobRef,
        top: Option<&str>,
        hint: Option<&ArchiveHint>,
    ) -> Result<u32, ArchiveError> {
        if let Some(v) = lock(&self.by_tree).get(&tree_ino) {
            return Ok(*v);
        }
        let slot = lock(&self.by_digest)
            .entry(blob.digest.clone())
            .or_default()
            .clone();
        let mut views = lock(&self.views);
        let mut by_tree = lock(&self.by_tree);
        if let Some(v) = by_tree.get(&tree_ino) {
            return Ok(*v);
        }
        let n = views.len() as u32;
        if n >= MAX_VIEWS {
            return Err(ArchiveError::Hostile("too many archive directories".into()));
        }
        views.push(View {
            tree_ino,
            blob: blob.clone(),
            slot,
            top: top.map(str::to_string),
            root: std::sync::OnceLock::new(),
            hint: hint.cloned(),
        });
        by_tree.insert(tree_ino, n);
        Ok(n)
    }

    /// The tree inode and blob of a view.
    pub fn tree_of(&self, view: u32) -> Option<(u64, BlobRef)> {
        lock(&self.views)
            .get(view as usize)
            .map(|v| (v.tree_ino, v.blob.clone()))
    }

    /// The listed archive of a view, listing it now if needed. A failure to fetch is
    /// tried again next time; an archive found hostile or unreadable stays failed.
    pub fn archive(&self, view: u32, bytes: &dyn BlobBytes) -> Result<Arc<Archive>, ArchiveError> {
        let (slot, blob, hint) = {
            let views = lock(&self.views);
            let v = views
                .get(view as usize)
                .ok_or_else(|| ArchiveError::BadIndex(format!("no view {view}")))?;
            (v.slot.clone(), v.blob.clone(), v.hint.clone())
        };
        let a = self.listed(&slot, &blob, hint.as_ref(), bytes)?;
        if let Some(v) = lock(&self.views).get(view as usize) {
            v.root.get_or_init(|| {
                v.top
                    .as_deref()
                    .and_then(|t| a.index.lookup(0, t))
                    .filter(|&id| a.index.node(id).is_some_and(|n| n.kind == NodeKind::Dir))
                    .unwrap_or(0)
            });
        }
        Ok(a)
    }

    fn listed(
        &self,
        slot: &Slot,
        blob: &BlobRef,
        hint: Option<&ArchiveHint>,
        bytes: &dyn BlobBytes,
    ) -> Result<Arc<Archive>, ArchiveError> {
        let digest = &blob.digest;
        let mut state = lock(&slot.state);
        match state.as_ref() {
            Some(Ok(a)) => return Ok(a.clone()),
            Some(Err(e)) => return Err(ArchiveError::Hostile(e.clone())),
            None => {}
        }
        // The cache's own index first, then a published one, then the blob itself.
        let dir = self.dir.as_deref();
        let cached = dir.and_then(|d| Archive::from_cache(d, digest, blob.size));
        let published = || {
            let (src, hint) = (self.src.as_ref()?, hint?);
            remote::fetch(src, hint, blob).map(|f| Archive::from_published(digest, f))
        };
        let opened = match (cached, &self.cache) {
            (Some(a), Some(c)) => {
                c.note_use(digest);
                Ok(a)
            }
            (Some(a), None) => Ok(a),
            (None, _) => match published() {
                Some(a) => Ok(a),
                None => Archive::open(bytes, digest, dir, self.limits).map(|mut a| {
                    if !self.admit(digest) {
                        a.unkeep();
                    }
                    a
                }),
            },
        };
        match opened {
            Ok(a) => {
                let a = Arc::new(a);
                *state = Some(Ok(a.clone()));
                Ok(a)
            }
            Err(e @ ArchiveError::Read(_)) => Err(e),
            Err(e) => {
                log::warn!("archive {digest}: {e}; its directory reads fail with EIO");
                *state = Some(Err(e.to_string()));
                Err(e)
            }
        }
    }

    /// Count a new archive's index files against the cache's limits, as part of its blob;
    /// without room they are removed (the listing in memory keeps its open window file,
    /// and reads a tar+zstd archive's members from the blob). False when removed.
    fn admit(&self, digest: &Digest) -> bool {
        let (Some(dir), Some(cache)) = (&self.dir, &self.cache) else {
            return true;
        };
        use super::store::{dec_path, idx_path, win_path};
        let files = [
            idx_path(dir, digest),
            win_path(dir, digest),
            dec_path(dir, digest),
        ];
        let bytes: u64 = files
            .iter()
            .filter_map(|p| std::fs::metadata(p).ok())
            .map(|m| m.len())
            .sum();
        if bytes > 0 && !cache.admit_files(digest, bytes) {
            log::info!("archive {digest}: no room in the cache for its index; not kept");
            for p in &files {
                let _ = std::fs::remove_file(p);
            }
            return false;
        }
        true
    }

    /// A member's table entry.
    pub fn node(a: &Archive, m: Member) -> Result<Node, ArchiveError> {
        a.index
            .node(m.node)
            .copied()
            .ok_or_else(|| ArchiveError::BadIndex(format!("no member {}", m.node)))
    }

    /// Entries of an archive directory: (name, inode, kind).
    pub fn list(&self, a: &Archive, dir: Member) -> Vec<(String, u64, NodeKind)> {
        a.index
            .children(dir.node)
            .filter_map(|id| {
                let n = a.index.node(id)?;
                let m = Member {
                    view: dir.view,
                    node: id,
                };
                Some((a.index.name(id).to_string(), self.ino(m), n.kind))
            })
            .collect()
    }
}
