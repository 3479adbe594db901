//! The thin `fuser::Filesystem` adapter: call the core, reply, map errors to errno.

use std::ffi::OsStr;

use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, LockOwner,
    OpenAccMode, OpenFlags, ReplyAttr, ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry,
    ReplyOpen, ReplyXattr, Request,
};

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};

use fuser::{BackingId, InitFlags, KernelConfig};

use crate::fs::error::{to_errno, FsError};
use crate::fs::{Attr, Fs};

/// The kernel's read-ahead on the mount: its usual 128 KiB, so the first small read of a
/// file reaches orasfs as a 16 KiB request (see `cache::block`).
pub const KERNEL_READAHEAD: u32 = 128 * 1024;

/// Adapts [`Fs`] to FUSE.
pub struct FuseFs {
    fs: Arc<Fs>,
    /// Ask the kernel for FUSE passthrough, so that verified blob files are read by it.
    want_passthrough: bool,
    backing: Mutex<Backing>,
    /// Told once the kernel's INIT has been answered for: the mount is live.
    initialized: Mutex<Option<std::sync::mpsc::Sender<()>>>,
}

/// Kernel backing ids for passthrough: one per inode while any handle has it open. The
/// kernel refuses a passthrough open of an inode that is also open the ordinary way, so
/// those opens are counted too.
#[derive(Default)]
struct Backing {
    by_fh: HashMap<u64, Arc<BackingId>>,
    by_ino: HashMap<u64, Weak<BackingId>>,
    /// Handles opened the ordinary way: fh → inode, and open count per inode.
    plain_fh: HashMap<u64, u64>,
    plain_ino: HashMap<u64, usize>,
}

impl Backing {
    fn plain_open(&mut self, fh: u64, ino: u64) {
        self.plain_fh.insert(fh, ino);
        *self.plain_ino.entry(ino).or_insert(0) += 1;
    }

    fn release(&mut self, fh: u64) {
        self.by_fh.remove(&fh);
        if let Some(ino) = self.plain_fh.remove(&fh) {
            if let Some(n) = self.plain_ino.get_mut(&ino) {
                *n -= 1;
                if *n == 0 {
                    self.plain_ino.remove(&ino);
                }
            }
        }
    }
}

impl FuseFs {
    /// `passthrough` asks for FUSE passthrough; it is used only if the kernel grants it.
    pub fn new(fs: Arc<Fs>, passthrough: bool) -> Self {
        Self {
            fs,
            want_passthrough: passthrough,
            backing: Mutex::new(Backing::default()),
            initialized: Mutex::new(None),
        }
    }

    /// Be told on `tx` once the kernel has initialised the mount. Readiness is known this
    /// way, not by a `stat` of the mountpoint: a daemon thread waiting on its own mount
    /// cannot be killed while its request is in the daemon's hands, so a daemon killed
    /// at that moment could never exit.
    pub fn on_init(self, tx: std::sync::mpsc::Sender<()>) -> Self {
        *self.initialized.lock().unwrap_or_else(|e| e.into_inner()) = Some(tx);
        self
    }

    fn backing(&self) -> std::sync::MutexGuard<'_, Backing> {
        self.backing.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The backing id for a passthrough open of `ino` from `file`, or `None` when it must
    /// be opened the ordinary way. Called with the backing table locked, so the choice and
    /// the reply cannot interleave with another open of the same inode.
    fn passthrough_id(
        &self,
        b: &mut Backing,
        ino: u64,
        file: std::fs::File,
        reply: &ReplyOpen,
    ) -> Option<Arc<BackingId>> {
        if b.plain_ino.contains_key(&ino) {
            return None;
        }
        if let Some(id) = b.by_ino.get(&ino).and_then(Weak::upgrade) {
            return Some(id);
        }
        match reply.open_backing(&file) {
            Ok(id) => {
                let id = Arc::new(id);
                b.by_ino.insert(ino, Arc::downgrade(&id));
                Some(id)
            }
            Err(e) => {
                log::warn!("FUSE passthrough unavailable ({e}); serving reads through orasfs");
                self.fs.set_passthrough(false);
                None
            }
        }
    }
}

impl FuseFs {
    /// Log and count an error, and give its errno.
    fn errno(&self, e: &FsError) -> Errno {
        if matches!(e, FsError::Source(_) | FsError::Cache(_)) && !e.logged() {
            log::warn!("{e}");
        }
        if !matches!(e, FsError::NotFound | FsError::NoAttr) {
            self.fs.count_error(e);
        }
        Errno::from_i32(to_errno(e))
    }
}

/// Tell the kernel to forget directory entries, from a thread of its own: the tree asks
/// for it while answering a lookup, and the kernel's invalidation waits for the directory
/// that lookup holds, so sending it there would deadlock. The thread ends with the tree.
pub fn invalidator(notifier: fuser::Notifier) -> crate::fs::tree::Invalidator {
    let (tx, rx) = std::sync::mpsc::channel::<(u64, String)>();
    let spawned = std::thread::Builder::new()
        .name("orasfs-inval".into())
        .spawn(move || {
            for (parent, name) in rx {
                if let Err(e) = notifier.inval_entry(INodeNo(parent), OsStr::new(&name)) {
                    log::debug!("kernel entry {name:?} in {parent} not invalidated: {e}");
                }
            }
        });
    if let Err(e) = spawned {
        log::warn!("no kernel invalidation (cannot start its thread: {e}); moved tags show once their entries expire");
    }
    let tx = Mutex::new(tx);
    Box::new(move |parent, name| {
        let _ = tx
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .send((parent, name.to_string()));
    })
}

fn file_attr(a: &Attr) -> FileAttr {
    FileAttr {
        ino: INodeNo(a.ino),
        size: a.size,
        blocks: a.size.div_ceil(512),
        atime: a.mtime,
        mtime: a.mtime,
        ctime: a.mtime,
        crtime: a.mtime,
        kind: if a.is_dir {
            FileType::Directory
        } else if a.is_link {
            FileType::Symlink
        } else {
            FileType::RegularFile
        },
        perm: a.perm,
        nlink: if a.is_dir { 2 } else { 1 },
        uid: a.uid,
        gid: a.gid,
        rdev: 0,
        blksize: 128 * 1024,
        flags: 0,
    }
}

fn name_str(name: &OsStr) -> Option<&str> {
    name.to_str()
}

impl Filesystem for FuseFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        if let Some(tx) = self
            .initialized
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        {
            // Requests wait for the INIT reply, which follows this call.
            let _ = tx.send(());
        }
        // Large reads cross into orasfs in requests of up to 1 MiB (FUSE_MAX_PAGES); the
        // kernel's own read-ahead stays small (orasfs reads ahead into its cache itself).
        let _ = config.add_capabilities(InitFlags::FUSE_MAX_PAGES);
        if let Err(max) = config.set_max_readahead(KERNEL_READAHEAD) {
            let _ = config.set_max_readahead(max);
        }
        if self.want_passthrough {
            let granted = config.add_capabilities(InitFlags::FUSE_PASSTHROUGH).is_ok()
                && config.set_max_stack_depth(2).is_ok();
            if granted {
                log::info!("FUSE passthrough on: verified blobs are read by the kernel directly");
            } else {
                log::info!("the kernel does not offer FUSE passthrough; reads go through orasfs");
            }
            self.fs.set_passthrough(granted);
        }
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let Some(name) = name_str(name) else {
            return reply.error(Errno::ENOENT);
        };
        match self.fs.lookup(parent.0, name) {
            Ok(e) => reply.entry(&e.ttl, &file_attr(&e.attr), Generation(e.generation)),
            Err(e) => reply.error(self.errno(&e)),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.fs.getattr(ino.0) {
            Ok(e) => reply.attr(&e.ttl, &file_attr(&e.attr)),
            Err(e) => reply.error(self.errno(&e)),
        }
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        self.fs.forget(ino.0, nlookup);
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let write = flags.acc_mode() != OpenAccMode::O_RDONLY;
        let opened = match self.fs.open(ino.0, write) {
            Ok(o) => o,
            Err(e) => return reply.error(self.errno(&e)),
        };
        let fh = opened.fh;
        let mut b = self.backing();
        let passthrough = opened
            .passthrough
            .and_then(|f| self.passthrough_id(&mut b, ino.0, f, &reply));
        match passthrough {
            Some(id) => {
                b.by_fh.insert(fh, id.clone());
                reply.opened_passthrough(FileHandle(fh), FopenFlags::empty(), &id);
            }
            None => {
                b.plain_open(fh, ino.0);
                let mut flags = FopenFlags::empty();
                if opened.direct_io {
                    flags |= FopenFlags::FOPEN_DIRECT_IO;
                }
                if opened.keep_cache {
                    flags |= FopenFlags::FOPEN_KEEP_CACHE;
                }
                reply.opened(FileHandle(fh), flags);
            }
        }
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        match self.fs.read(fh.0, offset, size) {
            Ok(data) => reply.data(&data),
            Err(e) => reply.error(self.errno(&e)),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        reply.ok();
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.fs.release(fh.0);
        self.backing().release(fh.0);
        reply.ok();
    }

    /// Opening a directory enters it: a tag directory fetches its manifest here, so a
    /// manifest that cannot be shown fails the open.
    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        match self.fs.opendir(ino.0) {
            Ok(()) => reply.opened(FileHandle(0), FopenFlags::empty()),
            Err(e) => reply.error(self.errno(&e)),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let entries = match self.fs.readdir(ino.0) {
            Ok(e) => e,
            Err(e) => return reply.error(self.errno(&e)),
        };
        for (i, e) in entries.iter().enumerate().skip(offset as usize) {
            let kind = if e.is_dir {
                FileType::Directory
            } else if e.is_link {
                FileType::Symlink
            } else {
                FileType::RegularFile
            };
            if reply.add(INodeNo(e.ino), (i + 1) as u64, kind, &e.name) {
                break;
            }
        }
        reply.ok();
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: fuser::ReplyData) {
        match self.fs.readlink(ino.0) {
            Ok(target) => reply.data(&target),
            Err(e) => reply.error(self.errno(&e)),
        }
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        let Some(name) = name_str(name) else {
            return reply.error(Errno::ENODATA);
        };
        match self.fs.getxattr(ino.0, name) {
            Ok(v) if size == 0 => reply.size(v.len() as u32),
            Ok(v) if v.len() <= size as usize => reply.data(&v),
            Ok(_) => reply.error(Errno::ERANGE),
            Err(e) => reply.error(self.errno(&e)),
        }
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        let mut buf = Vec::new();
        match self.fs.xattrs(ino.0) {
            Ok(list) => {
                for (k, _) in list {
                    buf.extend_from_slice(k.as_bytes());
                    buf.push(0);
                }
            }
            Err(e) => return reply.error(self.errno(&e)),
        }
        if size == 0 {
            reply.size(buf.len() as u32)
        } else if buf.len() <= size as usize {
            reply.data(&buf)
        } else {
            reply.error(Errno::ERANGE)
        }
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: fuser::ReplyStatfs) {
        reply.statfs(0, 0, 0, 0, 0, 128 * 1024, 255, 128 * 1024);
    }

    // Every mutator answers EROFS (the mount is also read-only at the VFS layer).
    fn setattr(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        _size: Option<u64>,
        _atime: Option<fuser::TimeOrNow>,
        _mtime: Option<fuser::TimeOrNow>,
        _ctime: Option<std::time::SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<std::time::SystemTime>,
        _chgtime: Option<std::time::SystemTime>,
        _bkuptime: Option<std::time::SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        reply.error(Errno::EROFS);
    }
    fn mknod(
        &self,
        _r: &Request,
        _p: INodeNo,
        _n: &OsStr,
        _m: u32,
        _u: u32,
        _d: u32,
        reply: ReplyEntry,
    ) {
        reply.error(Errno::EROFS);
    }
    fn mkdir(&self, _r: &Request, _p: INodeNo, _n: &OsStr, _m: u32, _u: u32, reply: ReplyEntry) {
        reply.error(Errno::EROFS);
    }
    fn unlink(&self, _r: &Request, _p: INodeNo, _n: &OsStr, reply: ReplyEmpty) {
        reply.error(Errno::EROFS);
    }
    fn rmdir(&self, _r: &Request, _p: INodeNo, _n: &OsStr, reply: ReplyEmpty) {
        reply.error(Errno::EROFS);
    }
    fn symlink(
        &self,
        _r: &Request,
        _p: INodeNo,
        _n: &OsStr,
        _t: &std::path::Path,
        reply: ReplyEntry,
    ) {
        reply.error(Errno::EROFS);
    }
    fn rename(
        &self,
        _r: &Request,
        _p: INodeNo,
        _n: &OsStr,
        _np: INodeNo,
        _nn: &OsStr,
        _f: fuser::RenameFlags,
        reply: ReplyEmpty,
    ) {
        reply.error(Errno::EROFS);
    }
    fn link(&self, _r: &Request, _i: INodeNo, _np: INodeNo, _nn: &OsStr, reply: ReplyEntry) {
        reply.error(Errno::EROFS);
    }
    fn create(
        &self,
        _r: &Request,
        _p: INodeNo,
        _n: &OsStr,
        _m: u32,
        _u: u32,
        _f: i32,
        reply: fuser::ReplyCreate,
    ) {
        reply.error(Errno::EROFS);
    }
    fn setxattr(
        &self,
        _r: &Request,
        _i: INodeNo,
        _n: &OsStr,
        _v: &[u8],
        _f: i32,
        _p: u32,
        reply: ReplyEmpty,
    ) {
        reply.error(Errno::EROFS);
    }
    fn removexattr(&self, _r: &Request, _i: INodeNo, _n: &OsStr, reply: ReplyEmpty) {
        reply.error(Errno::EROFS);
    }
}
