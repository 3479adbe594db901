//! The inode table: a number for each node of the tree, each directory's children by
//! name, and the kernel's lookup count of each inode. An inode that no name leads to any
//! more (a moved tag's old directory, and everything below it) is dropped once the kernel
//! has forgotten it, so a long-running mount does not grow with every tag move.
//!
//! Numbers are never reused: the kernel may still hold an old number, and FUSE requires an
//! (inode, generation) pair to stand for one thing for the life of the mount.

use std::collections::{BTreeMap, HashMap};
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

pub type Ino = u64;

struct Entry<N> {
    node: N,
    parent: Ino,
    children: BTreeMap<String, Ino>,
    /// How many times the kernel was given this inode and has not forgotten it.
    lookups: u64,
    /// Whether a name in a directory of the table leads here.
    attached: bool,
}

struct Table<N> {
    entries: HashMap<Ino, Entry<N>>,
    next: Ino,
}

/// The inode table, safe to share between threads.
pub struct Inodes<N> {
    table: RwLock<Table<N>>,
}

impl<N: Clone> Default for Inodes<N> {
    fn default() -> Self {
        Self::new()
    }
}

impl<N: Clone> Inodes<N> {
    /// An empty table; the first inode made is 1, the FUSE root.
    pub fn new() -> Self {
        Self {
            table: RwLock::new(Table {
                entries: HashMap::new(),
                next: 1,
            }),
        }
    }

    fn read(&self) -> RwLockReadGuard<'_, Table<N>> {
        self.table.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, Table<N>> {
        self.table.write().unwrap_or_else(|e| e.into_inner())
    }

    /// A node no directory lists but that is never dropped (the root, the control
    /// directory): reachable by number, with `parent` as its `..`.
    pub fn add_fixed(&self, parent: Ino, node: N) -> Ino {
        let mut t = self.write();
        let ino = t.next;
        t.insert(if parent == 0 { ino } else { parent }, node)
    }

    /// `name` in directory `parent`: the child there now when `same` says it shows the
    /// same thing as `node`, else a new inode for `node` (the old child, if any, is
    /// detached from the name). One write lock covers the check and the insert, so
    /// concurrent lookups of one name get one inode. `None` when `parent` is gone.
    pub fn add_or_keep(
        &self,
        parent: Ino,
        name: &str,
        node: N,
        same: impl FnOnce(&N) -> bool,
    ) -> Option<Ino> {
        let mut t = self.write();
        let existing = t.entries.get(&parent)?.children.get(name).copied();
        if let Some(old) = existing {
            match t.entries.get(&old) {
                Some(e) if same(&e.node) => return Some(old),
                _ => t.detach(old),
            }
        }
        let ino = t.insert(parent, node);
        if let Some(p) = t.entries.get_mut(&parent) {
            p.children.insert(name.to_string(), ino);
        }
        Some(ino)
    }

    /// The node behind an inode.
    pub fn node(&self, ino: Ino) -> Option<N> {
        self.read().entries.get(&ino).map(|e| e.node.clone())
    }

    /// The directory an inode is in (its own number for the root).
    pub fn parent(&self, ino: Ino) -> Option<Ino> {
        self.read().entries.get(&ino).map(|e| e.parent)
    }

    /// The child called `name` of `parent`.
    pub fn child(&self, parent: Ino, name: &str) -> Option<Ino> {
        self.read()
            .entries
            .get(&parent)
            .and_then(|e| e.children.get(name).copied())
    }

    /// The children of `ino`, by name, with their nodes.
    pub fn children(&self, ino: Ino) -> Vec<(String, Ino, N)> {
        let t = self.read();
        let Some(e) = t.entries.get(&ino) else {
            return Vec::new();
        };
        e.children
            .iter()
            .filter_map(|(name, c)| Some((name.clone(), *c, t.entries.get(c)?.node.clone())))
            .collect()
    }

    /// `(directory, child name)` for every child of the directories `pick` chooses.
    pub fn names_in(&self, pick: impl Fn(&N) -> bool) -> Vec<(Ino, String)> {
        let t = self.read();
        t.entries
            .iter()
            .filter(|(_, e)| pick(&e.node))
            .flat_map(|(ino, e)| e.children.keys().map(move |n| (*ino, n.clone())))
            .collect()
    }

    /// Count one more kernel reference to `ino`, as a lookup reply gives it. `false` when
    /// the inode is gone (dropped between finding it and this call): look it up again.
    pub fn hold(&self, ino: Ino) -> bool {
        match self.write().entries.get_mut(&ino) {
            Some(e) => {
                e.lookups += 1;
                true
            }
            None => false,
        }
    }

    /// The kernel forgets `n` references to `ino`; a detached inode with none left is
    /// dropped, with whatever below it the kernel does not hold either.
    pub fn forget(&self, ino: Ino, n: u64) {
        let mut t = self.write();
        if let Some(e) = t.entries.get_mut(&ino) {
            e.lookups = e.lookups.saturating_sub(n);
            t.reclaim(ino);
        }
    }

    /// How many inodes the table holds.
    pub fn len(&self) -> usize {
        self.read().entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl<N> Table<N> {
    /// A new inode for `node` in `parent`, under the next number.
    fn insert(&mut self, parent: Ino, node: N) -> Ino {
        let ino = self.next;
        self.next += 1;
        let entry = Entry {
            node,
            parent,
            children: BTreeMap::new(),
            lookups: 0,
            attached: true,
        };
        self.entries.insert(ino, entry);
        ino
    }

    /// No name leads to `ino` any more.
    fn detach(&mut self, ino: Ino) {
        if let Some(e) = self.entries.get_mut(&ino) {
            e.attached = false;
        }
        self.reclaim(ino);
    }

    /// Drop `ino` if it is detached and the kernel holds no reference to it, then its
    /// children, which nothing leads to once it is gone.
    fn reclaim(&mut self, ino: Ino) {
        let mut todo = vec![ino];
        while let Some(i) = todo.pop() {
            let droppable = self
                .entries
                .get(&i)
                .is_some_and(|e| !e.attached && e.lookups == 0);
            if !droppable {
                continue;
            }
            let Some(gone) = self.entries.remove(&i) else {
                continue;
            };
            for c in gone.children.into_values() {
                if let Some(child) = self.entries.get_mut(&c) {
                    child.attached = false;
                    todo.push(c);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Barrier};

    fn table() -> (Inodes<&'static str>, Ino) {
        let t = Inodes::new();
        let root = t.add_fixed(0, "root");
        (t, root)
    }

    #[test]
    fn a_replaced_subtree_goes_once_the_kernel_forgets_it() {
        let (t, root) = table();
        let old = t.add_or_keep(root, "tag", "v1", |_| true).unwrap();
        let file = t.add_or_keep(old, "f", "file", |_| true).unwrap();
        assert!(t.hold(old) && t.hold(file));
        let new = t.add_or_keep(root, "tag", "v2", |_| false).unwrap();
        assert_ne!(new, old);
        assert_eq!(t.child(root, "tag"), Some(new));
        // Still held by the kernel: kept, and still answers.
        assert_eq!(t.node(old), Some("v1"));
        t.forget(old, 1);
        assert_eq!(t.node(old), None, "a forgotten detached inode is dropped");
        assert_eq!(
            t.node(file),
            Some("file"),
            "a held child outlives its parent"
        );
        t.forget(file, 1);
        assert_eq!(t.node(file), None);
        assert_eq!(t.len(), 2);
    }

    #[test]
    fn an_attached_inode_stays_after_forget_and_numbers_are_not_reused() {
        let (t, root) = table();
        let a = t.add_or_keep(root, "a", "x", |_| true).unwrap();
        assert!(t.hold(a));
        t.forget(a, 1);
        assert_eq!(t.child(root, "a"), Some(a), "a name still leads there");
        let b = t.add_or_keep(root, "a", "y", |_| false).unwrap();
        assert_eq!(
            t.node(a),
            None,
            "detached with no reference: dropped at once"
        );
        let c = t.add_or_keep(root, "c", "z", |_| true).unwrap();
        assert!(b > a && c > b, "numbers only grow: {a} {b} {c}");
        assert!(!t.hold(a), "a dropped inode cannot be held");
    }

    #[test]
    fn concurrent_lookups_of_one_name_get_one_inode() {
        let (t, root) = table();
        let t = Arc::new(t);
        let threads = 16;
        let start = Arc::new(Barrier::new(threads));
        let got: Vec<Ino> = (0..threads)
            .map(|_| {
                let (t, start) = (t.clone(), start.clone());
                std::thread::spawn(move || {
                    start.wait();
                    (0..200)
                        .map(|_| t.add_or_keep(root, "name", "n", |_| true).unwrap())
                        .max()
                        .unwrap()
                })
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|h| h.join().unwrap())
            .collect();
        assert!(got.iter().all(|i| *i == got[0]), "{got:?}");
        assert_eq!(t.len(), 2);
    }
}
