//! The filesystem core: `lookup`, `getattr`, `readdir`, `open`, `read`, `getxattr` over
//! the [`Tree`] (which file is this?) and the [`BlobReader`] (its bytes), returning plain
//! structs and typed errors. Nothing here knows about FUSE, so all of it is tested
//! without a mount.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use crate::archive::index::{Node as ArchiveNode, NodeKind};
use crate::archive::open::Limits;
use crate::archive::view::{Member, Views};
use crate::archive::{Archive, MemberReader, ReadBlob};
use crate::cache::BlobRef;
use crate::fs::error::FsError;
use crate::fs::tree::{Ino, Node, Tree, ROOT};
use crate::read::{BlobReader, OpenBlob};

/// Attributes of one inode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attr {
    pub ino: Ino,
    pub is_dir: bool,
    /// A symbolic link (archive members only).
    pub is_link: bool,
    pub size: u64,
    pub mtime: SystemTime,
    pub perm: u16,
    pub uid: u32,
    pub gid: u32,
}

/// The kernel's view of an inode, as a lookup or `getattr` answers it: the attributes and
/// how long the kernel may keep them (and, after a lookup, the entry that led there).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub attr: Attr,
    pub ttl: Duration,
    /// Always 0: inode numbers are never reused within a mount.
    pub generation: u64,
}

/// What an open answers: the handle, and how the kernel is to treat the file's pages.
#[derive(Debug)]
pub struct Opened {
    pub fh: u64,
    /// Content made when opened (its size is unknown beforehand): no page cache at all.
    pub direct_io: bool,
    /// Every byte is verified: the kernel may keep its pages across opens.
    pub keep_cache: bool,
    /// The verified blob file, for the kernel to read directly (FUSE passthrough), when
    /// passthrough is on ([`Fs::set_passthrough`]).
    pub passthrough: Option<std::fs::File>,
}

/// One directory entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirEntry {
    pub ino: Ino,
    pub is_dir: bool,
    pub is_link: bool,
    pub name: String,
}

/// Ownership and modes of everything in the mount.
#[derive(Debug, Clone)]
pub struct FsConfig {
    pub uid: u32,
    pub gid: u32,
    pub file_mode: u16,
    pub dir_mode: u16,
    /// How long the kernel may cache entries addressed by digest.
    pub immutable_ttl: Duration,
    /// How long the kernel may cache entries that a tag or listing can change.
    pub mutable_ttl: Duration,
}

impl Default for FsConfig {
    fn default() -> Self {
        // SAFETY: getuid/getgid cannot fail and have no preconditions.
        let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
        Self {
            uid,
            gid,
            file_mode: 0o444,
            dir_mode: 0o555,
            immutable_ttl: Duration::from_secs(3600),
            mutable_ttl: Duration::from_secs(60),
        }
    }
}

/// An open file. A blob's handle pins the blob in the cache (no eviction while it is
/// open; the pin goes with the last reference, so a read racing `release` keeps it) and
/// carries its read-ahead state.
enum Handle {
    Blob(OpenBlob),
    Inline(Arc<Vec<u8>>),
    /// A file inside an archive.
    Member {
        archive: Arc<Archive>,
        member: MemberReader,
        open: OpenBlob,
    },
}

/// The filesystem.
pub struct Fs {
    tree: Tree,
    reader: BlobReader,
    cfg: FsConfig,
    handles: Mutex<HashMap<u64, Arc<Handle>>>,
    next_fh: AtomicU64,
    /// Failed operations by kind, for `orasfs stats`.
    errors: Mutex<std::collections::BTreeMap<&'static str, u64>>,
    /// Whether opens of verified blobs offer their file for FUSE passthrough.
    passthrough: AtomicBool,
    /// Archive layers shown as directories.
    archives: Views,
}

impl Fs {
    pub fn new(tree: Tree, reader: BlobReader, cfg: FsConfig) -> Self {
        let archives = Views::new(
            Some(reader.cache().clone()),
            Some(reader.source().clone()),
            Limits::default(),
        );
        Self {
            tree,
            reader,
            cfg,
            handles: Mutex::new(HashMap::new()),
            next_fh: AtomicU64::new(1),
            errors: Mutex::new(Default::default()),
            passthrough: AtomicBool::new(false),
            archives,
        }
    }

    pub fn tree(&self) -> &Tree {
        &self.tree
    }

    pub fn reader(&self) -> &BlobReader {
        &self.reader
    }

    pub fn cache(&self) -> &Arc<crate::cache::BlobCache> {
        self.reader.cache()
    }

    fn attr_of(&self, ino: Ino, node: &Node) -> Attr {
        let (is_dir, size, mtime) = match node {
            Node::Blob { desc, mtime, .. } => (false, desc.size, *mtime),
            Node::Inline { bytes, mtime, .. } => (false, bytes.len() as u64, *mtime),
            Node::Image(m) | Node::Index(m) | Node::SubDir { manifest: m } | Node::Referrers(m) => {
                (true, 0, m.mtime)
            }
            Node::Archive { mtime, .. } => (true, 0, *mtime),
            // Names that can change have no time of their own: a fixed one keeps `rsync -a`
            // and `make` from seeing changes across mounts.
            Node::Namespace { .. }
            | Node::Repo { .. }
            | Node::Tag(_)
            | Node::ControlDir
            | Node::Hosts => (true, 0, self.tree.epoch()),
            Node::StatsFile => (false, 0, SystemTime::now()),
        };
        Attr {
            ino,
            is_dir,
            is_link: false,
            size,
            mtime,
            perm: if is_dir {
                self.cfg.dir_mode
            } else {
                self.cfg.file_mode
            },
            uid: self.cfg.uid,
            gid: self.cfg.gid,
        }
    }

    /// How long the kernel may trust this entry: long when nothing can change it.
    fn ttl(&self, ino: Ino) -> Duration {
        match self.tree.node(ino) {
            Ok(
                Node::Namespace { .. }
                | Node::Repo { .. }
                | Node::Tag(_)
                | Node::Hosts
                | Node::Referrers(_),
            ) => self.cfg.mutable_ttl,
            Ok(Node::Image(m) | Node::Index(m))
                if matches!(m.reference, crate::source::Reference::Tag(_)) =>
            {
                self.cfg.mutable_ttl
            }
            _ => self.cfg.immutable_ttl,
        }
    }

    /// Count a failed operation for the stats.
    pub fn count_error(&self, e: &FsError) {
        *self
            .errors
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(e.kind())
            .or_insert(0) += 1;
    }

    /// Look `name` up in `parent` for the kernel, which holds the inode until it forgets
    /// it ([`Fs::forget`]).
    pub fn lookup(&self, parent: Ino, name: &str) -> Result<Entry, FsError> {
        if let Some((dir, a)) = self.archive_at(parent)? {
            if Views::node(&a, dir)?.kind != NodeKind::Dir {
                return Err(FsError::NotDir);
            }
            let node = a.index.lookup(dir.node, name).ok_or(FsError::NotFound)?;
            return self.getattr(self.archives.ino(Member { node, ..dir }));
        }
        let ino = self.tree.lookup(parent, name)?;
        self.getattr(ino).inspect_err(|_| self.tree.forget(ino, 1))
    }

    /// The kernel forgets `n` lookups of `ino`.
    pub fn forget(&self, ino: Ino, n: u64) {
        // Archive members are numbered from their archive's table, not held here.
        if !Views::owns(ino) {
            self.tree.forget(ino, n);
        }
    }

    pub fn getattr(&self, ino: Ino) -> Result<Entry, FsError> {
        let attr = if Views::owns(ino) {
            let (m, a) = self.archive_at(ino)?.ok_or(FsError::NotFound)?;
            self.member_attr(ino, &Views::node(&a, m)?)
        } else {
            let node = self.tree.node(ino)?;
            self.attr_of(ino, &node)
        };
        Ok(Entry {
            ttl: self.ttl(ino),
            attr,
            generation: 0,
        })
    }

    /// The archive and member an inode stands for: an archive member, or an archive
    /// directory of the tree (its root). Lists the archive on first use.
    fn archive_at(&self, ino: Ino) -> Result<Option<(Member, Arc<Archive>)>, FsError> {
        let (mut member, blob) = if Views::owns(ino) {
            let m = Views::member(ino);
            let (_, blob) = self.archives.tree_of(m.view).ok_or(FsError::NotFound)?;
            (m, blob)
        } else if let Ok(Node::Archive {
            blob, desc, hint, ..
        }) = self.tree.node(ino)
        {
            let top = crate::names::archive::oras_top(&desc);
            let view = self.archives.view_of(ino, &blob, top, Some(&hint))?;
            (Member { view, node: 0 }, blob)
        } else {
            return Ok(None);
        };
        let archive = self
            .archives
            .archive(member.view, &self.blob_bytes(&blob))?;
        if !Views::owns(ino) {
            member.node = self.archives.root(member.view);
        }
        Ok(Some((member, archive)))
    }

    fn blob_bytes<'a>(&'a self, blob: &'a BlobRef) -> ReadBlob<'a> {
        ReadBlob {
            reader: &self.reader,
            blob,
        }
    }

    fn member_attr(&self, ino: Ino, n: &ArchiveNode) -> Attr {
        Attr {
            ino,
            is_dir: n.kind == NodeKind::Dir,
            is_link: n.kind == NodeKind::Symlink,
            size: if n.kind == NodeKind::Dir { 0 } else { n.size },
            mtime: SystemTime::UNIX_EPOCH + Duration::from_secs(n.mtime.max(0) as u64),
            perm: n.mode,
            uid: self.cfg.uid,
            gid: self.cfg.gid,
        }
    }

    /// The target of a symbolic link, unchanged.
    pub fn readlink(&self, ino: Ino) -> Result<Vec<u8>, FsError> {
        let (m, a) = self.archive_at(ino)?.ok_or(FsError::NotFound)?;
        a.index
            .link_target(m.node)
            .map(<[u8]>::to_vec)
            .ok_or(FsError::NotFound)
    }

    /// Entries including `.` and `..`.
    pub fn readdir(&self, ino: Ino) -> Result<Vec<DirEntry>, FsError> {
        let archive = self.archive_at(ino)?;
        let parent = match &archive {
            _ if ino == ROOT => ROOT,
            Some((m, a)) if Views::owns(ino) => self.archives.ino(Member {
                node: Views::node(a, *m)?.parent,
                ..*m
            }),
            _ => self.tree.parent(ino),
        };
        let dir = |ino, name: &str| DirEntry {
            ino,
            is_dir: true,
            is_link: false,
            name: name.into(),
        };
        let mut out = vec![dir(ino, "."), dir(parent, "..")];
        if let Some((m, a)) = archive {
            if Views::node(&a, m)?.kind != NodeKind::Dir {
                return Err(FsError::NotDir);
            }
            out.extend(
                self.archives
                    .list(&a, m)
                    .into_iter()
                    .map(|(name, ino, kind)| DirEntry {
                        ino,
                        is_dir: kind == NodeKind::Dir,
                        is_link: kind == NodeKind::Symlink,
                        name,
                    }),
            );
            return Ok(out);
        }
        out.extend(
            self.tree
                .list(ino)?
                .into_iter()
                .map(|(name, ino, is_dir)| DirEntry {
                    ino,
                    is_dir,
                    is_link: false,
                    name,
                }),
        );
        Ok(out)
    }

    /// Open a directory: a tag directory is entered (its manifest fetched) now.
    pub fn opendir(&self, ino: Ino) -> Result<(), FsError> {
        if Views::owns(ino) {
            let (m, a) = self.archive_at(ino)?.ok_or(FsError::NotFound)?;
            return match Views::node(&a, m)?.kind {
                NodeKind::Dir => Ok(()),
                _ => Err(FsError::NotDir),
            };
        }
        self.tree.enter(ino)
    }

    /// Open a file: a handle, and how the kernel may cache it. Pages may outlive the open
    /// only once every byte is verified, so pages of a blob that later fails its digest
    /// are never kept.
    pub fn open(&self, ino: Ino, write: bool) -> Result<Opened, FsError> {
        if write {
            return Err(FsError::ReadOnly);
        }
        let plain = |fh| Opened {
            fh,
            direct_io: false,
            keep_cache: false,
            passthrough: None,
        };
        if Views::owns(ino) {
            let (m, archive) = self.archive_at(ino)?.ok_or(FsError::NotFound)?;
            let (_, blob) = self.archives.tree_of(m.view).ok_or(FsError::NotFound)?;
            let failures = self.reader.failures(&blob.digest);
            let reader = archive.reader(m.node, failures).ok_or(FsError::IsDir)?;
            return Ok(plain(self.add_handle(Handle::Member {
                archive,
                member: reader,
                open: self.reader.open(&blob, None),
            })));
        }
        let opened = match self.tree.node(ino)? {
            Node::Blob { blob, index, .. } => {
                let fh = self.add_handle(Handle::Blob(self.reader.open(&blob, index.as_ref())));
                let passthrough = self
                    .passthrough
                    .load(Ordering::Relaxed)
                    .then(|| self.reader.passthrough_file(&blob))
                    .flatten();
                Opened {
                    keep_cache: self.reader.is_verified(&blob),
                    passthrough,
                    ..plain(fh)
                }
            }
            Node::Inline { bytes, .. } => Opened {
                keep_cache: true,
                ..plain(self.add_handle(Handle::Inline(bytes)))
            },
            Node::StatsFile => Opened {
                direct_io: true,
                ..plain(self.add_handle(Handle::Inline(Arc::new(self.stats().into_bytes()))))
            },
            _ => return Err(FsError::IsDir),
        };
        Ok(opened)
    }

    /// Offer verified blob files to the kernel on open (FUSE passthrough); set by the
    /// adapter once the kernel has granted it, and cleared when the kernel refuses one.
    pub fn set_passthrough(&self, on: bool) {
        self.passthrough.store(on, Ordering::Relaxed);
    }

    /// The mount's counters, as `.orasfs/stats.json` shows them.
    pub fn stats(&self) -> String {
        let errors = self
            .errors
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let source = self.tree.source();
        crate::fs::stats::render(&crate::fs::stats::Inputs {
            source: source.name(),
            cache: self.cache(),
            hosts: source.traffic(),
            errors,
        })
    }

    fn add_handle(&self, handle: Handle) -> u64 {
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        self.handles
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(fh, Arc::new(handle));
        fh
    }

    /// How many file handles are open (a stop after a lazy detach serves them first).
    pub fn open_handles(&self) -> usize {
        self.handles.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub fn release(&self, fh: u64) {
        self.handles
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&fh);
    }

    pub fn read(&self, fh: u64, offset: u64, size: u32) -> Result<Vec<u8>, FsError> {
        let handle = self
            .handles
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&fh)
            .cloned()
            .ok_or(FsError::BadHandle)?;
        match handle.as_ref() {
            Handle::Inline(bytes) => {
                let start = (offset as usize).min(bytes.len());
                let end = start.saturating_add(size as usize).min(bytes.len());
                Ok(bytes[start..end].to_vec())
            }
            Handle::Member {
                archive,
                member,
                open,
            } => Ok(archive.read(&self.blob_bytes(open.blob()), member, offset, size)?),
            Handle::Blob(open) => Ok(self.reader.read(open, offset, size)?),
        }
    }

    /// Wait until background work (read-ahead, promotion) is done.
    pub fn wait_idle(&self) {
        self.reader.wait_idle();
    }

    /// Extended attributes: `user.oci.*` describe the content, `user.orasfs.verified`
    /// says whether its bytes have been checked against the digest.
    pub fn xattrs(&self, ino: Ino) -> Result<Vec<(String, Vec<u8>)>, FsError> {
        let mut out: Vec<(String, Vec<u8>)> = Vec::new();
        let mut put = |k: &str, v: String| out.push((k.to_string(), v.into_bytes()));
        if Views::owns(ino) {
            let (m, a) = self.archive_at(ino)?.ok_or(FsError::NotFound)?;
            put("user.orasfs.layer", a.digest.to_string());
            let n = Views::node(&a, m)?;
            if n.kind == NodeKind::File {
                put("user.orasfs.offset", n.offset.to_string());
            }
            return Ok(out);
        }
        match self.tree.node(ino)? {
            Node::Archive { blob, desc, .. } => {
                put("user.oci.digest", blob.digest.to_string());
                put("user.oci.mediatype", desc.media_type.clone());
                put("user.oci.size", desc.size.to_string());
            }
            Node::Blob {
                blob, desc, index, ..
            } => {
                put("user.oci.digest", blob.digest.to_string());
                put("user.oci.mediatype", desc.media_type.clone());
                put("user.oci.size", desc.size.to_string());
                for (k, v) in &desc.annotations {
                    put(&format!("user.oci.annotation.{k}"), v.clone());
                }
                put(
                    "user.orasfs.verified",
                    self.reader.verification(&blob, index.as_ref()).into(),
                );
            }
            Node::Inline {
                digest,
                media_type,
                bytes,
                ..
            } => {
                put("user.oci.digest", digest.to_string());
                put("user.oci.mediatype", media_type);
                put("user.oci.size", bytes.len().to_string());
                put("user.orasfs.verified", "blob".into());
            }
            Node::Image(m) | Node::Index(m) => {
                put("user.oci.digest", m.digest.to_string());
                put(
                    "user.oci.mediatype",
                    m.fetched.manifest.media_type().to_string(),
                );
                put("user.oci.size", m.fetched.bytes.len().to_string());
                put("user.oci.reference", m.reference.qualify(&m.repo));
                for (k, v) in m.fetched.manifest.annotations() {
                    put(&format!("user.oci.annotation.{k}"), v.clone());
                }
            }
            Node::Tag(t) => {
                put(
                    "user.oci.reference",
                    crate::source::Reference::Tag(t.tag.clone()).qualify(&t.repo),
                );
                if let Some(m) = t.manifest() {
                    put("user.oci.digest", m.digest.to_string());
                    put(
                        "user.oci.mediatype",
                        m.fetched.manifest.media_type().to_string(),
                    );
                    put("user.oci.size", m.fetched.bytes.len().to_string());
                    for (k, v) in m.fetched.manifest.annotations() {
                        put(&format!("user.oci.annotation.{k}"), v.clone());
                    }
                }
            }
            Node::SubDir { .. }
            | Node::Referrers(_)
            | Node::Namespace { .. }
            | Node::Repo { .. }
            | Node::ControlDir
            | Node::Hosts
            | Node::StatsFile => {}
        }
        Ok(out)
    }

    /// A tag directory lists its manifest's attributes once entered (`ls -l` asks for
    /// attributes of every entry, and must not fetch a manifest each); asking for one by
    /// name enters it.
    pub fn getxattr(&self, ino: Ino, name: &str) -> Result<Vec<u8>, FsError> {
        if name.starts_with("user.oci.") && !Views::owns(ino) {
            self.tree.enter(ino)?;
        }
        self.xattrs(ino)?
            .into_iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v)
            .ok_or(FsError::NoAttr)
    }
}
