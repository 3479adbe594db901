//! The member table of one archive: a compact, immutable directory tree built from the
//! tar headers under the safety rules (refused paths, last entry wins, hard links resolved
//! to their target's data, devices left out, permission bits reduced to read-only ones),
//! and its on-disk form.
//!
//! Nodes are numbered so that the children of every directory are consecutive and sorted
//! by name: node 0 is the root; a lookup is a binary search in the parent's range.

use std::collections::HashMap;

use super::tar::{Kind, RawEntry};
use super::ArchiveError;
use crate::names::MAX_COMPONENT;

/// What a node is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeKind {
    File,
    Dir,
    Symlink,
}

/// One file, directory or symlink of an archive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Node {
    name: (u32, u32),
    pub parent: u32,
    first_child: u32,
    children: u32,
    pub kind: NodeKind,
    /// Permission bits, read-only ones only.
    pub mode: u16,
    /// The data runs past the end of the stream (the header's size lied).
    pub truncated: bool,
    pub mtime: i64,
    /// Data offset in the uncompressed stream (files), or the target's arena span
    /// (symlinks, as `offset` and `size`).
    pub offset: u64,
    pub size: u64,
}

/// An archive's directory tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Index {
    nodes: Vec<Node>,
    arena: Vec<u8>,
}

/// Why an entry was refused.
fn refuse_reason(path: &[u8]) -> Option<&'static str> {
    if path.starts_with(b"/") {
        return Some("absolute path");
    }
    if path.iter().any(|&b| b < 0x20 || b == 0x7f) {
        return Some("NUL or control character");
    }
    if path.split(|&b| b == b'/').any(|c| c == b"..") {
        return Some("'..' component");
    }
    if path.split(|&b| b == b'/').any(|c| c.len() > MAX_COMPONENT) {
        return Some("component longer than 255 bytes");
    }
    if std::str::from_utf8(path).is_err() {
        return Some("not UTF-8");
    }
    None
}

/// `./a//b/` → `a/b`; the root is empty.
fn normalize(path: &[u8]) -> String {
    let parts: Vec<&str> = std::str::from_utf8(path)
        .unwrap_or("")
        .split('/')
        .filter(|c| !c.is_empty() && *c != ".")
        .collect();
    parts.join("/")
}

/// A member between reading and layout.
#[derive(Debug, Clone)]
struct Slot {
    kind: NodeKind,
    mode: u32,
    mtime: i64,
    offset: u64,
    size: u64,
    link: Vec<u8>,
    truncated: bool,
}

/// Collects members in archive order; `finish` lays them out.
pub struct Builder {
    slots: HashMap<String, Slot>,
    /// Uncompressed length of the stream when known: data past it is marked truncated.
    refused: Vec<String>,
    refused_count: usize,
}

/// Refusals kept for the log.
const REFUSALS_LOGGED: usize = 20;

impl Default for Builder {
    fn default() -> Self {
        Self::new()
    }
}

impl Builder {
    pub fn new() -> Self {
        Self {
            slots: HashMap::new(),
            refused: Vec::new(),
            refused_count: 0,
        }
    }

    fn refuse(&mut self, why: String) {
        self.refused_count += 1;
        if self.refused.len() < REFUSALS_LOGGED {
            self.refused.push(why);
        }
    }

    /// Refusals to log (the first few) and how many there were.
    pub fn refusals(&self) -> (&[String], usize) {
        (&self.refused, self.refused_count)
    }

    /// Take one member, in archive order.
    pub fn add(&mut self, e: RawEntry) {
        let shown = String::from_utf8_lossy(&e.path).escape_debug().to_string();
        if let Some(why) = refuse_reason(&e.path) {
            self.refuse(format!("{shown:.300}: {why}"));
            return;
        }
        let path = normalize(&e.path);
        if path.is_empty() {
            return; // the archive's root itself
        }
        let mode = e.mode;
        let slot = match e.kind {
            Kind::Other => return,
            Kind::File => Slot {
                kind: NodeKind::File,
                mode,
                mtime: e.mtime,
                offset: e.offset,
                size: e.size,
                link: Vec::new(),
                truncated: false,
            },
            Kind::Dir => Slot {
                kind: NodeKind::Dir,
                mode,
                mtime: e.mtime,
                offset: 0,
                size: 0,
                link: Vec::new(),
                truncated: false,
            },
            Kind::Symlink => {
                if e.link.contains(&0) {
                    self.refuse(format!("{shown:.300}: symlink target holds NUL"));
                    return;
                }
                Slot {
                    kind: NodeKind::Symlink,
                    mode: 0o777,
                    mtime: e.mtime,
                    offset: 0,
                    size: 0,
                    link: e.link,
                    truncated: false,
                }
            }
            Kind::HardLink => {
                let target = match refuse_reason(&e.link) {
                    None => normalize(&e.link),
                    Some(why) => {
                        self.refuse(format!("{shown:.300}: hard link target: {why}"));
                        return;
                    }
                };
                match self.slots.get(&target) {
                    Some(t) if t.kind != NodeKind::Dir => t.clone(),
                    _ => {
                        self.refuse(format!(
                            "{shown:.300}: hard link to {target:?}, which is not an earlier file"
                        ));
                        return;
                    }
                }
            }
        };
        self.slots.insert(path, slot);
    }

    /// Lay the tree out. `stream_len`, when known, marks data running past it.
    pub fn finish(mut self, stream_len: Option<u64>) -> Index {
        if let Some(len) = stream_len {
            for s in self.slots.values_mut() {
                if s.kind == NodeKind::File && s.offset.saturating_add(s.size) > len {
                    s.truncated = true;
                }
            }
        }
        // Implicit parent directories; entries below a non-directory are dropped, as
        // extraction cannot create them.
        let mut implicit: HashMap<String, ()> = HashMap::new();
        let mut dropped = Vec::new();
        for p in self.slots.keys() {
            let mut at = 0;
            while let Some(i) = p[at..].find('/') {
                let parent = &p[..at + i];
                match self.slots.get(parent) {
                    Some(s) if s.kind != NodeKind::Dir => {
                        dropped.push(p.clone());
                        break;
                    }
                    Some(_) => {}
                    None => {
                        if !implicit.contains_key(parent) {
                            implicit.insert(parent.to_string(), ());
                        }
                    }
                }
                at += i + 1;
            }
        }
        for d in dropped {
            self.slots.remove(&d);
        }
        for (p, ()) in implicit {
            self.slots.insert(
                p,
                Slot {
                    kind: NodeKind::Dir,
                    mode: 0o555,
                    mtime: 0,
                    offset: 0,
                    size: 0,
                    link: Vec::new(),
                    truncated: false,
                },
            );
        }
        // Depth, then parent, then name: every directory's children end up consecutive.
        fn key(p: &str) -> (usize, &str, &str) {
            let (parent, name) = p.rsplit_once('/').unwrap_or(("", p));
            (p.matches('/').count(), parent, name)
        }
        let mut entries: Vec<(String, Slot)> = self.slots.into_iter().collect();
        entries.sort_unstable_by(|a, b| key(&a.0).cmp(&key(&b.0)));
        let mut ids: HashMap<String, u32> = HashMap::new();
        ids.insert(String::new(), 0);
        let mut nodes = Vec::with_capacity(entries.len() + 1);
        let mut arena = Vec::new();
        nodes.push(Node {
            name: (0, 0),
            parent: 0,
            first_child: 1,
            children: 0,
            kind: NodeKind::Dir,
            mode: 0o555,
            truncated: false,
            mtime: 0,
            offset: 0,
            size: 0,
        });
        for (full, s) in entries {
            let (parent, name) = full.rsplit_once('/').unwrap_or(("", full.as_str()));
            let id = nodes.len() as u32;
            let pid = ids.get(parent).copied().unwrap_or(0);
            let name_span = push(&mut arena, name.as_bytes());
            let (offset, size) = match s.kind {
                NodeKind::Symlink => {
                    let (o, l) = push(&mut arena, &s.link);
                    (o as u64, l as u64)
                }
                _ => (s.offset, s.size),
            };
            if let Some(p) = nodes.get_mut(pid as usize) {
                if p.children == 0 {
                    p.first_child = id;
                }
                p.children += 1;
            }
            nodes.push(Node {
                name: name_span,
                parent: pid,
                first_child: 0,
                children: 0,
                kind: s.kind,
                mode: read_only(s.mode, s.kind),
                truncated: s.truncated,
                mtime: s.mtime,
                offset,
                size,
            });
            if s.kind == NodeKind::Dir {
                ids.insert(full, id);
            }
        }
        Index { nodes, arena }
    }
}

fn push(arena: &mut Vec<u8>, bytes: &[u8]) -> (u32, u32) {
    let at = arena.len() as u32;
    arena.extend_from_slice(bytes);
    (at, bytes.len() as u32)
}

/// Read and execute bits only: no write, setuid, setgid or sticky.
fn read_only(mode: u32, kind: NodeKind) -> u16 {
    match kind {
        NodeKind::Symlink => 0o555,
        _ => (mode & 0o555) as u16,
    }
}

impl Index {
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.len() <= 1
    }

    pub fn node(&self, id: u32) -> Option<&Node> {
        self.nodes.get(id as usize)
    }

    fn bytes(&self, span: (u32, u32)) -> &[u8] {
        self.arena
            .get(span.0 as usize..(span.0 as usize).saturating_add(span.1 as usize))
            .unwrap_or(&[])
    }

    pub fn name(&self, id: u32) -> &str {
        self.node(id)
            .map(|n| std::str::from_utf8(self.bytes(n.name)).unwrap_or(""))
            .unwrap_or("")
    }

    /// A symlink's target, unchanged.
    pub fn link_target(&self, id: u32) -> Option<&[u8]> {
        let n = self.node(id)?;
        (n.kind == NodeKind::Symlink).then(|| self.bytes((n.offset as u32, n.size as u32)))
    }

    /// Children of a directory, in name order.
    pub fn children(&self, id: u32) -> std::ops::Range<u32> {
        match self.node(id) {
            Some(n) if n.kind == NodeKind::Dir && n.children > 0 => {
                n.first_child..n.first_child.saturating_add(n.children)
            }
            _ => 0..0,
        }
    }

    /// A child by name.
    pub fn lookup(&self, dir: u32, name: &str) -> Option<u32> {
        let r = self.children(dir);
        let (mut lo, mut hi) = (r.start, r.end);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            match self.name(mid).cmp(name) {
                std::cmp::Ordering::Equal => return Some(mid),
                std::cmp::Ordering::Less => lo = mid + 1,
                std::cmp::Ordering::Greater => hi = mid,
            }
        }
        None
    }

    /// Bytes for the cache; [`Index::decode`] checks them.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&(self.nodes.len() as u64).to_le_bytes());
        out.extend_from_slice(&(self.arena.len() as u64).to_le_bytes());
        for n in &self.nodes {
            for v in [n.name.0, n.name.1, n.parent, n.first_child, n.children] {
                out.extend_from_slice(&v.to_le_bytes());
            }
            let kind = match n.kind {
                NodeKind::File => 0u8,
                NodeKind::Dir => 1,
                NodeKind::Symlink => 2,
            };
            out.push(kind);
            out.push(n.truncated as u8);
            out.extend_from_slice(&n.mode.to_le_bytes());
            out.extend_from_slice(&n.mtime.to_le_bytes());
            out.extend_from_slice(&n.offset.to_le_bytes());
            out.extend_from_slice(&n.size.to_le_bytes());
        }
        out.extend_from_slice(&self.arena);
    }

    /// Parse [`Index::encode`]'s bytes, checking every reference stays inside.
    pub fn decode(r: &mut Reader<'_>) -> Result<Self, ArchiveError> {
        let count = r.u64()? as usize;
        let arena_len = r.u64()? as usize;
        if count == 0 || count > super::tar::MAX_MEMBERS * 2 + 1 || arena_len > r.left() {
            return Err(ArchiveError::BadIndex("bad counts".into()));
        }
        let mut nodes = Vec::with_capacity(count.min(r.left() / NODE_LEN + 1));
        for _ in 0..count {
            let name = (r.u32()?, r.u32()?);
            let (parent, first_child, children) = (r.u32()?, r.u32()?, r.u32()?);
            let kind = match r.u8()? {
                0 => NodeKind::File,
                1 => NodeKind::Dir,
                2 => NodeKind::Symlink,
                k => return Err(ArchiveError::BadIndex(format!("node kind {k}"))),
            };
            let truncated = r.u8()? != 0;
            let mode = r.u16()?;
            let mtime = r.u64()? as i64;
            let (offset, size) = (r.u64()?, r.u64()?);
            nodes.push(Node {
                name,
                parent,
                first_child,
                children,
                kind,
                mode,
                truncated,
                mtime,
                offset,
                size,
            });
        }
        let arena = r.take(arena_len)?.to_vec();
        let idx = Index { nodes, arena };
        idx.check()?;
        Ok(idx)
    }

    fn check(&self) -> Result<(), ArchiveError> {
        let n = self.nodes.len() as u64;
        let in_arena = |o: u64, l: u64| {
            o.checked_add(l)
                .is_some_and(|e| e <= self.arena.len() as u64)
        };
        for (i, node) in self.nodes.iter().enumerate() {
            let bad = (node.parent as u64) >= n
                || (i > 0 && node.parent as usize >= i)
                || !in_arena(node.name.0 as u64, node.name.1 as u64)
                || (node.kind == NodeKind::Dir
                    && node.children > 0
                    && (node.first_child as usize <= i
                        || node.first_child as u64 + node.children as u64 > n))
                || (node.kind == NodeKind::Symlink && !in_arena(node.offset, node.size));
            if bad {
                return Err(ArchiveError::BadIndex(format!("node {i} out of range")));
            }
        }
        Ok(())
    }
}

const NODE_LEN: usize = 48;

/// A bounds-checked cursor over stored bytes.
pub struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    pub fn new(bytes: &'a [u8]) -> Self {
        Self { bytes }
    }
    pub fn left(&self) -> usize {
        self.bytes.len()
    }
    pub fn take(&mut self, n: usize) -> Result<&'a [u8], ArchiveError> {
        if n > self.bytes.len() {
            return Err(ArchiveError::BadIndex("cut short".into()));
        }
        let (a, b) = self.bytes.split_at(n);
        self.bytes = b;
        Ok(a)
    }
    pub fn u8(&mut self) -> Result<u8, ArchiveError> {
        Ok(self.take(1)?[0])
    }
    pub fn u16(&mut self) -> Result<u16, ArchiveError> {
        let b = self.take(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }
    pub fn u32(&mut self) -> Result<u32, ArchiveError> {
        let mut a = [0u8; 4];
        a.copy_from_slice(self.take(4)?);
        Ok(u32::from_le_bytes(a))
    }
    pub fn u64(&mut self) -> Result<u64, ArchiveError> {
        let mut a = [0u8; 8];
        a.copy_from_slice(self.take(8)?);
        Ok(u64::from_le_bytes(a))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(path: &str, offset: u64, size: u64) -> RawEntry {
        RawEntry {
            path: path.as_bytes().to_vec(),
            link: Vec::new(),
            kind: Kind::File,
            mode: 0o6755,
            mtime: 7,
            offset,
            size,
        }
    }

    #[test]
    fn layout_rules() {
        let mut b = Builder::new();
        b.add(file("./a/b.txt", 512, 3));
        b.add(file("a/b.txt", 2048, 4)); // duplicate: last wins
        b.add(file("../evil", 0, 1));
        b.add(file("/etc/passwd", 0, 1));
        b.add(file("x\u{1}y", 0, 1));
        b.add(RawEntry {
            kind: Kind::HardLink,
            link: b"a/b.txt".to_vec(),
            ..file("hard", 0, 0)
        });
        b.add(RawEntry {
            kind: Kind::Symlink,
            link: b"../../etc/passwd".to_vec(),
            ..file("sym", 0, 0)
        });
        b.add(RawEntry {
            kind: Kind::Other,
            ..file("dev", 0, 0)
        });
        b.add(file("f", 0, 1));
        b.add(file("f/under", 0, 1));
        b.add(file("big", 4096, 1 << 40));
        assert_eq!(b.refusals().1, 3);
        let idx = b.finish(Some(10_000));
        let names: Vec<&str> = idx.children(0).map(|i| idx.name(i)).collect();
        assert_eq!(names, ["a", "big", "f", "hard", "sym"]);
        let a = idx.lookup(0, "a").unwrap();
        let bt = idx.node(idx.lookup(a, "b.txt").unwrap()).unwrap();
        assert_eq!((bt.offset, bt.size, bt.mode), (2048, 4, 0o555));
        let hard = idx.node(idx.lookup(0, "hard").unwrap()).unwrap();
        assert_eq!((hard.offset, hard.size), (2048, 4));
        let sym = idx.lookup(0, "sym").unwrap();
        assert_eq!(idx.link_target(sym), Some(&b"../../etc/passwd"[..]));
        assert!(idx.node(idx.lookup(0, "big").unwrap()).unwrap().truncated);
        assert_eq!(idx.lookup(idx.lookup(0, "f").unwrap(), "under"), None);
        let mut bytes = Vec::new();
        idx.encode(&mut bytes);
        assert_eq!(Index::decode(&mut Reader::new(&bytes)).unwrap(), idx);
        for cut in [0, 10, bytes.len() / 2, bytes.len() - 1] {
            assert!(Index::decode(&mut Reader::new(&bytes[..cut])).is_err());
        }
    }
}
