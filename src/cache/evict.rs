//! The size cap and the free-space floor while mounted.
//!
//! The unit of eviction is a blob: its verified file and sidecar, or its partial file and
//! block map.
//! A [`Ledger`] keeps every cached blob in an LRU list with its bytes on disk, and a
//! running total. One scan fills it when the cache opens; after that the cache keeps it
//! current itself: every block is *admitted* before it is written. Admission evicts least
//! recently used blobs until the new bytes fit under the cap (`--cache-size`) and leave the floor's share of the filesystem free
//! (`--cache-min-free`, measured with statvfs). If evicting every evictable blob would
//! still not make room, nothing is evicted and the bytes are refused: they are served
//! from memory without being written. A pinned blob is never evicted (pins are counted:
//! open file handles, reads in progress, read-ahead jobs and promotion each hold one),
//! nor is the blob being admitted.
//!
//! Promotion (a complete, digest-checked partial blob becoming a verified file) is a
//! rename; it needs no room beyond the blob's small CRC sidecar.
//!
//! Access tracking: every read moves its blob to the front of the in-memory LRU list. So
//! that the order survives a restart and the offline `orasfs cache prune` can use it, a
//! read also sets the modification time of the blob's sidecar (or block map) to now, at
//! most once per [`TOUCH_INTERVAL`] per blob; writing a block updates its map's time by
//! itself. The scan at start orders blobs by these times. Access times
//! (atime) are not used: `noatime` and `relatime` mounts make them unreliable.
//!
//! Locking: the ledger's mutex is never held across a network call. Victims leave the
//! ledger, and their files are deleted and their open files closed, under the lock, so a
//! blob cannot be pinned and written to between its choice as a victim and its removal
//! (its bytes would be accounted for files that are gone). The store's LRU locks may be
//! taken under it; the ledger's lock is never taken under them.
//!
//! Precision: sizes are file lengths, and for sparse partial files the bytes they hold
//! (directory blocks and filesystem rounding are not counted). When several threads admit at once, one thread's write can land while
//! another is still deleting its victims, so the disk may exceed the cap for the moment a
//! deletion takes. A verified blob's sidecar is admitted by force: if pinned blobs leave no room,
//! the cap is exceeded by that blob until it is unpinned and something else needs room.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use lru::LruCache;

use crate::oci::Digest;

/// How often a read refreshes a blob's modification time on disk.
pub const TOUCH_INTERVAL: Duration = Duration::from_secs(60);

/// A blob chosen for eviction, already removed from the ledger.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Victim {
    pub digest: Digest,
    pub bytes: u64,
}

/// The outcome of asking for room.
#[derive(Debug, PartialEq, Eq)]
pub enum Admission {
    /// The bytes are accounted; delete these victims, then write.
    Admitted(Vec<Victim>),
    /// No room even after evicting everything evictable; do not write.
    Refused,
}

/// How hard an admission may push.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Evict as needed; refuse (evicting nothing) if even that is not enough.
    Evict,
    /// Take only room that is free already; never evict.
    Spare,
    /// Evict what can go, and account the bytes even if the limits still do not hold.
    Force,
}

/// What must hold after an admission.
#[derive(Debug, Clone, Copy, Default)]
pub struct Limits {
    /// The cap on total bytes, if any.
    pub cap: Option<u64>,
    /// Bytes that must be freed to keep the free-space floor (0 when there is room).
    pub floor_need: u64,
}

struct Entry {
    bytes: u64,
    /// When the blob's time on disk was last set (or, after a scan, what it was).
    touched: SystemTime,
}

struct State {
    lru: LruCache<Digest, Entry>,
    total: u64,
    pins: HashMap<Digest, usize>,
}

/// Bytes on disk per blob, in least-recently-used order, with pins.
pub struct Ledger {
    state: Mutex<State>,
}

impl Ledger {
    /// A ledger of scanned blobs: `(digest, bytes, last used)` in any order.
    pub fn new(scanned: impl IntoIterator<Item = (Digest, u64, SystemTime)>) -> Self {
        let mut items: Vec<_> = scanned.into_iter().collect();
        items.sort_by_key(|(_, _, t)| *t);
        let mut lru = LruCache::unbounded();
        let mut total = 0;
        for (d, bytes, touched) in items {
            total += bytes;
            lru.put(d, Entry { bytes, touched });
        }
        Self {
            state: Mutex::new(State {
                lru,
                total,
                pins: HashMap::new(),
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Total bytes accounted.
    pub fn total(&self) -> u64 {
        self.lock().total
    }

    /// Bytes accounted to one blob.
    pub fn bytes_of(&self, d: &Digest) -> u64 {
        self.lock().lru.peek(d).map_or(0, |e| e.bytes)
    }

    /// Blobs from least to most recently used.
    pub fn order(&self) -> Vec<Digest> {
        self.lock()
            .lru
            .iter()
            .rev()
            .map(|(d, _)| d.clone())
            .collect()
    }

    pub fn pin(&self, d: &Digest) {
        *self.lock().pins.entry(d.clone()).or_insert(0) += 1;
    }

    pub fn unpin(&self, d: &Digest) {
        let mut s = self.lock();
        if let Some(n) = s.pins.get_mut(d) {
            *n -= 1;
            if *n == 0 {
                s.pins.remove(d);
            }
        }
    }

    pub fn is_pinned(&self, d: &Digest) -> bool {
        self.lock().pins.contains_key(d)
    }

    /// Record a use. True when the blob's time on disk is due for a refresh.
    pub fn touch(&self, d: &Digest, now: SystemTime) -> bool {
        let mut s = self.lock();
        let Some(e) = s.lru.get_mut(d) else {
            return false;
        };
        let due = now
            .duration_since(e.touched)
            .is_ok_and(|age| age >= TOUCH_INTERVAL);
        if due {
            e.touched = now;
        }
        due
    }

    /// Account `bytes` more of blob `d` (or none, to only enforce the limits), choosing
    /// least recently used, unpinned blobs other than `d` to evict so the limits hold,
    /// as far as `mode` allows.
    pub fn admit(&self, d: Option<&Digest>, bytes: u64, limits: Limits, mode: Mode) -> Admission {
        self.admit_with(d, bytes, limits, mode, &mut |_| {})
    }

    /// [`Ledger::admit`], calling `evict` for each victim before the ledger's lock is let
    /// go: no blob can be pinned (and start writing) between its choice as a victim and
    /// the removal of its files, which would leave bytes accounted for files that are gone.
    pub fn admit_with(
        &self,
        d: Option<&Digest>,
        bytes: u64,
        limits: Limits,
        mode: Mode,
        evict: &mut dyn FnMut(&Victim),
    ) -> Admission {
        let mut s = self.lock();
        let over_cap = limits
            .cap
            .map_or(0, |cap| (s.total + bytes).saturating_sub(cap));
        let need = over_cap.max(limits.floor_need);
        let mut picks = Vec::new();
        let mut freed = 0;
        if need > 0 && mode == Mode::Spare {
            return Admission::Refused;
        }
        if need > 0 {
            for (k, e) in s.lru.iter().rev() {
                if Some(k) == d || s.pins.contains_key(k) {
                    continue;
                }
                picks.push(k.clone());
                freed += e.bytes;
                if freed >= need {
                    break;
                }
            }
            if freed < need && mode != Mode::Force {
                return Admission::Refused;
            }
        }
        let mut victims = Vec::with_capacity(picks.len());
        for k in picks {
            if let Some(e) = s.lru.pop(&k) {
                s.total -= e.bytes;
                let v = Victim {
                    digest: k,
                    bytes: e.bytes,
                };
                evict(&v);
                victims.push(v);
            }
        }
        if let Some(d) = d {
            s.total += bytes;
            let now = SystemTime::now();
            s.lru
                .get_or_insert_mut(d.clone(), || Entry {
                    bytes: 0,
                    touched: now,
                })
                .bytes += bytes;
        }
        Admission::Admitted(victims)
    }

    /// Un-account bytes of a blob that were removed (or never written).
    pub fn release(&self, d: &Digest, bytes: u64) {
        let mut s = self.lock();
        let Some(e) = s.lru.peek_mut(d) else {
            return;
        };
        let gone = bytes.min(e.bytes);
        e.bytes -= gone;
        let empty = e.bytes == 0;
        s.total -= gone;
        if empty {
            s.lru.pop(d);
        }
    }

    /// Drop a blob from the ledger; returns the bytes it had.
    pub fn forget(&self, d: &Digest) -> u64 {
        let mut s = self.lock();
        let bytes = s.lru.pop(d).map_or(0, |e| e.bytes);
        s.total -= bytes;
        bytes
    }
}

/// Free and total bytes of a filesystem.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Space {
    /// Bytes an unprivileged writer may still use.
    pub avail: u64,
    pub total: u64,
}

/// How the cache measures its filesystem; `None` when it cannot.
pub type SpaceProbe = fn(&Path) -> Option<Space>;

/// Measure the filesystem holding `path` with statvfs.
pub fn statvfs_space(path: &Path) -> Option<Space> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    // SAFETY: statvfs is a plain C struct of integers, for which all-zero is valid.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: statvfs writes only into the struct we pass; `c` is NUL-terminated.
    let rc = unsafe { libc::statvfs(c.as_ptr(), &mut st) };
    if rc != 0 {
        return None;
    }
    let frsize = st.f_frsize as u64;
    Some(Space {
        avail: (st.f_bavail as u64).saturating_mul(frsize),
        total: (st.f_blocks as u64).saturating_mul(frsize),
    })
}

/// Bytes that must be freed so that, after writing `incoming` more, at least
/// `min_free_percent` of the filesystem stays free.
pub fn floor_need(space: Option<Space>, min_free_percent: f64, incoming: u64) -> u64 {
    let Some(space) = space else { return 0 };
    if min_free_percent <= 0.0 {
        return 0;
    }
    let floor = (space.total as f64 * min_free_percent.min(100.0) / 100.0) as u64;
    (floor + incoming).saturating_sub(space.avail)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(n: u8) -> Digest {
        Digest::of(&[n])
    }

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
    }

    fn cap(c: u64) -> Limits {
        Limits {
            cap: Some(c),
            floor_need: 0,
        }
    }

    fn victims(a: Admission) -> Vec<Digest> {
        match a {
            Admission::Admitted(v) => v.into_iter().map(|v| v.digest).collect(),
            Admission::Refused => panic!("refused"),
        }
    }

    #[test]
    fn scan_order_and_touch_decide_the_victims() {
        // Scanned out of order: 2 is oldest, then 1, then 3.
        let l = Ledger::new([
            (d(1), 10, at(200)),
            (d(2), 10, at(100)),
            (d(3), 10, at(300)),
        ]);
        assert_eq!(l.order(), [d(2), d(1), d(3)]);
        assert_eq!(l.total(), 30);
        assert!(l.touch(&d(2), at(1000)), "old time on disk is refreshed");
        assert!(
            !l.touch(&d(2), at(1001)),
            "but not again within the interval"
        );
        assert!(!l.touch(&d(9), at(1000)), "unknown blobs are not touched");
        assert_eq!(l.order(), [d(1), d(3), d(2)]);
        // Room for 15 more under a cap of 40: 5 must go, so the least recent (1) goes.
        assert_eq!(
            victims(l.admit(Some(&d(4)), 15, cap(40), Mode::Evict)),
            [d(1)]
        );
        assert_eq!(
            (l.total(), l.bytes_of(&d(4)), l.bytes_of(&d(1))),
            (35, 15, 0)
        );
        assert_eq!(l.order(), [d(3), d(2), d(4)]);
    }

    #[test]
    fn pinned_and_self_are_never_victims_and_refusal_evicts_nothing() {
        let l = Ledger::new([(d(1), 10, at(1)), (d(2), 10, at(2)), (d(3), 10, at(3))]);
        l.pin(&d(1));
        l.pin(&d(1));
        l.unpin(&d(1));
        assert!(l.is_pinned(&d(1)));
        // d(3) admits more of itself: d(1) pinned, d(3) itself, so d(2) goes.
        assert_eq!(
            victims(l.admit(Some(&d(3)), 5, cap(30), Mode::Evict)),
            [d(2)]
        );
        // Now 25 (d1 10, d3 15). 20 more of d(3) needs 15 freed, but d(1) is pinned and
        // d(3) is the blob being admitted: nothing can go, so nothing does.
        assert_eq!(
            l.admit(Some(&d(3)), 20, cap(30), Mode::Evict),
            Admission::Refused
        );
        assert_eq!(l.total(), 25, "a refusal changes nothing");
        // By force, the bytes are accounted even over the cap.
        assert_eq!(
            victims(l.admit(Some(&d(3)), 20, cap(30), Mode::Force)),
            Vec::<Digest>::new()
        );
        assert_eq!(l.total(), 45);
        l.unpin(&d(1));
        assert!(!l.is_pinned(&d(1)));
        // Enforcing the limits alone (no blob admitted) evicts the now unpinned d(1).
        assert_eq!(victims(l.admit(None, 0, cap(40), Mode::Force)), [d(1)]);
        assert_eq!(l.total(), 35);
    }

    #[test]
    fn sparing_takes_only_free_room() {
        let l = Ledger::new([(d(1), 10, at(1)), (d(2), 10, at(2))]);
        let fits = l.admit(Some(&d(3)), 5, cap(25), Mode::Spare);
        assert!(matches!(fits, Admission::Admitted(v) if v.is_empty()));
        assert_eq!(
            l.admit(Some(&d(3)), 1, cap(25), Mode::Spare),
            Admission::Refused
        );
        assert_eq!(l.total(), 25);
        assert_eq!(
            victims(l.admit(Some(&d(3)), 1, cap(25), Mode::Evict)),
            [d(1)]
        );
    }

    #[test]
    fn release_and_forget_keep_the_total_right() {
        let l = Ledger::new([(d(1), 10, at(1))]);
        assert!(
            matches!(l.admit(Some(&d(2)), 7, Limits::default(), Mode::Evict), Admission::Admitted(v) if v.is_empty())
        );
        l.release(&d(2), 3);
        assert_eq!((l.total(), l.bytes_of(&d(2))), (14, 4));
        l.release(&d(2), 100);
        assert_eq!((l.total(), l.order()), (10, vec![d(1)]));
        assert_eq!(l.forget(&d(1)), 10);
        assert_eq!(l.total(), 0);
    }

    #[test]
    fn the_floor_asks_for_room_beyond_the_cap() {
        let l = Ledger::new([(d(1), 10, at(1)), (d(2), 10, at(2))]);
        let limits = Limits {
            cap: None,
            floor_need: 12,
        };
        assert_eq!(
            victims(l.admit(Some(&d(3)), 1, limits, Mode::Evict)),
            [d(1), d(2)]
        );
        let space = Some(Space {
            avail: 150,
            total: 1000,
        });
        assert_eq!(floor_need(space, 10.0, 40), 0);
        assert_eq!(floor_need(space, 10.0, 60), 10);
        assert_eq!(floor_need(space, 0.0, 600), 0);
        assert_eq!(floor_need(None, 10.0, 600), 0);
        let real = statvfs_space(Path::new("/")).unwrap();
        assert!(real.total > 0 && real.avail <= real.total);
    }
}
