//! Sequential read-ahead per open file, in the manner of mountpoint-s3.
//!
//! Each open file has a [`Stream`] that watches its reads. A read that starts where the
//! previous one ended (give or take [`SEQ_SLACK`], since the kernel may deliver concurrent
//! reads a little out of order) is sequential, and the handle then fetches ahead of it in
//! the background: first [`MIN_WINDOW`] past the read, the window doubling each time the
//! reader comes within half a window of what was fetched, up to [`MAX_WINDOW`]. Any other
//! read is random access and drops the window to nothing, so a tool jumping around a file
//! pays for the chunks it reads and no more. The first read of a handle is not sequential.
//!
//! A window is split into runs of at most `max_run` chunks, one range request each, run
//! in parallel on a small pool of worker threads. Before a run is queued, the reading
//! thread *claims* its missing chunks in the cache's single-flight table (the same one
//! `BlobCache::load_chunks` uses), so a read that reaches one of them waits for the
//! read-ahead instead of fetching it again. Chunks already cached or in flight are skipped.
//!
//! Memory: a queued or running run holds permits for its bytes from two budgets, the
//! handle's (half of `max_memory`, at most [`MAX_WINDOW`]) and the mount's (`max_memory`).
//! When either has no room, the rest of the window is skipped, not waited for; the next
//! sequential read tries again.
//!
//! Failures: a failed read-ahead is logged at debug level and releases the chunks it
//! claimed as "fetch it yourself", so a read waiting on them fetches them and does not fail.

use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use super::chunk::{chunk_len, CHUNK_SIZE};
use super::{BlobCache, BlobRef, ChunkLead, LeadMode, PinGuard};
use crate::source::Source;

/// The first read-ahead window.
pub const MIN_WINDOW: u64 = 1024 * 1024;
/// The largest read-ahead window.
pub const MAX_WINDOW: u64 = 64 * 1024 * 1024;
/// How far a read may start from where the previous one ended and still be sequential.
pub const SEQ_SLACK: u64 = 256 * 1024;
/// Worker threads fetching read-ahead runs.
pub const WORKERS: usize = 8;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The read-ahead state of one open file: pure bookkeeping, no I/O.
#[derive(Debug, Default)]
pub struct ReadAhead {
    /// Where the reader has got to.
    last_end: Option<u64>,
    /// The current window; 0 means no read-ahead.
    window: u64,
    /// Read-ahead has been issued up to here (a chunk boundary or the end of the blob).
    ahead_to: u64,
}

impl ReadAhead {
    /// Note a read of `offset..end` in a blob of `size` bytes; returns the chunks to fetch
    /// ahead, if any. Call [`ReadAhead::issued`] with how far they were actually issued.
    pub fn on_read(&mut self, offset: u64, end: u64, size: u64) -> Option<Range<u64>> {
        let sequential = self
            .last_end
            .is_some_and(|le| offset.abs_diff(le) <= SEQ_SLACK);
        if !sequential {
            self.last_end = Some(end);
            self.window = 0;
            self.ahead_to = 0;
            return None;
        }
        let end = self.last_end.map_or(end, |le| le.max(end));
        self.last_end = Some(end);
        if end >= size || (self.window > 0 && self.ahead_to > end + self.window / 2) {
            return None;
        }
        self.window = (self.window * 2).clamp(MIN_WINDOW, MAX_WINDOW);
        let from = self.ahead_to.max(end).div_ceil(CHUNK_SIZE);
        let to = (end + self.window).min(size).div_ceil(CHUNK_SIZE);
        (from < to).then_some(from..to)
    }

    /// Read-ahead was issued up to chunk `to` (exclusive).
    pub fn issued(&mut self, to: u64) {
        self.ahead_to = self.ahead_to.max(to * CHUNK_SIZE);
    }

    /// The current window in bytes.
    pub fn window(&self) -> u64 {
        self.window
    }
}

/// A count of bytes that may be in flight; taking never blocks.
#[derive(Debug)]
pub struct Budget {
    limit: u64,
    used: AtomicU64,
}

impl Budget {
    pub fn new(limit: u64) -> Arc<Self> {
        Arc::new(Self {
            limit,
            used: AtomicU64::new(0),
        })
    }

    /// Take `n` bytes, or `None` if that would exceed the limit.
    pub fn try_take(self: &Arc<Self>, n: u64) -> Option<Permit> {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |u| {
                u.checked_add(n).filter(|t| *t <= self.limit)
            })
            .ok()?;
        Some(Permit {
            budget: self.clone(),
            n,
        })
    }

    /// Bytes taken now.
    pub fn used(&self) -> u64 {
        self.used.load(Ordering::Acquire)
    }
}

/// Bytes taken from a [`Budget`], given back on drop.
#[derive(Debug)]
pub struct Permit {
    budget: Arc<Budget>,
    n: u64,
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.budget.used.fetch_sub(self.n, Ordering::AcqRel);
    }
}

/// One open file's read-ahead.
pub struct Stream {
    state: Mutex<ReadAhead>,
    budget: Arc<Budget>,
}

/// Jobs queued or running, so tests can wait for quiet.
#[derive(Default)]
struct Pending {
    count: Mutex<usize>,
    idle: Condvar,
}

/// One run of read-ahead: the chunks it leads, and what it holds while it runs.
struct Job {
    cache: Arc<BlobCache>,
    src: Arc<dyn Source>,
    blob: BlobRef,
    leads: Vec<(u64, ChunkLead)>,
    pending: Arc<Pending>,
    _pin: PinGuard,
    _permits: (Permit, Permit),
}

impl Job {
    fn run(mut self) {
        let leads = std::mem::take(&mut self.leads);
        let n = leads.len();
        if let Err(e) =
            self.cache
                .fetch_leads(self.src.as_ref(), &self.blob, leads, LeadMode::ReadAhead)
        {
            self.cache
                .stats
                .prefetch_failures
                .fetch_add(1, Ordering::Relaxed);
            log::debug!(
                "read-ahead of {n} chunks of {} failed: {e}",
                self.blob.digest
            );
        }
    }
}

impl Drop for Job {
    fn drop(&mut self) {
        // A job dropped unrun (the pool is shutting down) lets its waiters fetch.
        for (_, lead) in self.leads.drain(..) {
            lead.finish(Ok(None));
        }
        let mut n = lock(&self.pending.count);
        *n -= 1;
        if *n == 0 {
            self.pending.idle.notify_all();
        }
    }
}

/// The mount's read-ahead: a worker pool and the global memory budget.
pub struct Prefetcher {
    cache: Arc<BlobCache>,
    global: Arc<Budget>,
    handle_limit: u64,
    run_chunks: u64,
    jobs: mpsc::Sender<Job>,
    pending: Arc<Pending>,
}

impl Prefetcher {
    /// A prefetcher for `cache`, bounded by its `max_memory`. Its workers stop when it is
    /// dropped (after finishing the jobs already queued).
    pub fn new(cache: Arc<BlobCache>) -> Self {
        let max_memory = cache.config().max_memory;
        let handle_limit = MAX_WINDOW.min(max_memory / 2);
        let run_chunks = cache
            .config()
            .max_run
            .clamp(1, (handle_limit / CHUNK_SIZE).max(1));
        let (jobs, rx) = mpsc::channel::<Job>();
        let rx = Arc::new(Mutex::new(rx));
        for n in 0..WORKERS {
            let rx = rx.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("orasfs-readahead-{n}"))
                .spawn(move || loop {
                    let job = lock(&rx).recv();
                    match job {
                        Ok(job) => job.run(),
                        Err(_) => break,
                    }
                });
            if let Err(e) = spawned {
                log::warn!("read-ahead: cannot start a worker thread: {e}");
            }
        }
        Self {
            cache,
            global: Budget::new(max_memory),
            handle_limit,
            run_chunks,
            jobs,
            pending: Arc::default(),
        }
    }

    /// Read-ahead state for a newly opened file.
    pub fn stream(&self) -> Stream {
        Stream {
            state: Mutex::new(ReadAhead::default()),
            budget: Budget::new(self.handle_limit),
        }
    }

    /// Bytes of read-ahead in flight across the mount.
    pub fn in_flight(&self) -> u64 {
        self.global.used()
    }

    /// Note a read of `len` bytes at `offset` on `stream`, and queue read-ahead if the
    /// reads are sequential. Never blocks on the network or on memory.
    pub fn on_read(
        &self,
        src: &Arc<dyn Source>,
        blob: &BlobRef,
        stream: &Stream,
        offset: u64,
        len: u32,
    ) {
        if !self.cache.reads_ahead(blob) || offset >= blob.size {
            return;
        }
        let end = blob.size.min(offset + len as u64);
        let mut ra = lock(&stream.state);
        let Some(chunks) = ra.on_read(offset, end, blob.size) else {
            return;
        };
        let mut issued = chunks.start;
        while issued < chunks.end {
            let stop = chunks.end.min(issued + self.run_chunks);
            let bytes: u64 = (issued..stop).map(|i| chunk_len(blob.size, i)).sum();
            let permits = stream
                .budget
                .try_take(bytes)
                .and_then(|h| self.global.try_take(bytes).map(|g| (h, g)));
            let Some(permits) = permits else {
                self.cache
                    .stats
                    .prefetch_skipped
                    .fetch_add(1, Ordering::Relaxed);
                break;
            };
            let leads = self.cache.claim_missing(blob, issued, stop);
            issued = stop;
            if leads.is_empty() {
                continue;
            }
            self.cache
                .stats
                .prefetch_chunks
                .fetch_add(leads.len() as u64, Ordering::Relaxed);
            *lock(&self.pending.count) += 1;
            let job = Job {
                cache: self.cache.clone(),
                src: src.clone(),
                blob: blob.clone(),
                leads,
                pending: self.pending.clone(),
                _pin: self.cache.pin_guard(&blob.digest),
                _permits: permits,
            };
            if let Err(mpsc::SendError(job)) = self.jobs.send(job) {
                // No workers: the job's drop releases its chunks to the readers.
                drop(job);
                break;
            }
        }
        ra.issued(issued);
    }

    /// Wait until no read-ahead is queued or running.
    pub fn wait_idle(&self) {
        let mut n = lock(&self.pending.count);
        while *n > 0 {
            n = self.pending.idle.wait(n).unwrap_or_else(|e| e.into_inner());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KIB: u64 = 1024;
    const MIB: u64 = 1024 * KIB;

    /// Feed reads of `len` bytes from `start` up to `until`; collect what read-ahead asks.
    fn sequential(
        ra: &mut ReadAhead,
        start: u64,
        len: u64,
        until: u64,
        size: u64,
    ) -> Vec<Range<u64>> {
        let mut asked = Vec::new();
        let mut off = start;
        while off < until {
            if let Some(r) = ra.on_read(off, (off + len).min(size), size) {
                ra.issued(r.end);
                asked.push(r);
            }
            off += len;
        }
        asked
    }

    #[test]
    fn windows_grow_from_one_mib_to_sixty_four_and_do_not_overlap() {
        let size = 1024 * MIB;
        let mut ra = ReadAhead::default();
        let asked = sequential(&mut ra, 0, 128 * KIB, 512 * MIB, size);
        assert_eq!(
            asked[0],
            1..2,
            "first window: the chunk after the second read"
        );
        assert_eq!(ra.window(), MAX_WINDOW);
        let sizes: Vec<u64> = asked.iter().map(|r| r.end - r.start).collect();
        assert!(
            sizes.iter().all(|s| *s <= MAX_WINDOW / MIB + 1),
            "{sizes:?}"
        );
        for w in asked.windows(2) {
            assert_eq!(
                w[0].end, w[1].start,
                "each window starts where the last ended"
            );
        }
        // Read-ahead stays ahead of the reader: by 512 MiB it reaches well past it.
        assert!(asked.last().unwrap().end * CHUNK_SIZE > 512 * MIB + MAX_WINDOW / 2);
        // Windows double: the first few are 1, 2, 4 ... MiB long (give or take a chunk).
        assert!(sizes[..4].windows(2).all(|w| w[1] >= w[0]), "{sizes:?}");
    }

    #[test]
    fn random_access_resets_the_window() {
        let size = 1024 * MIB;
        let mut ra = ReadAhead::default();
        assert_eq!(
            ra.on_read(0, 128 * KIB, size),
            None,
            "a first read is not sequential"
        );
        sequential(&mut ra, 128 * KIB, 128 * KIB, 64 * MIB, size);
        assert!(ra.window() > MIN_WINDOW);
        assert_eq!(ra.on_read(700 * MIB, 700 * MIB + 4096, size), None);
        assert_eq!(ra.window(), 0);
        assert_eq!(ra.on_read(300 * MIB, 300 * MIB + 4096, size), None);
        // Sequential again: the window starts small.
        let r = ra
            .on_read(300 * MIB + 4096, 300 * MIB + 8192, size)
            .unwrap();
        assert_eq!(r.end - r.start, 1);
        ra.issued(r.end);
        assert_eq!(ra.window(), MIN_WINDOW);
        // Slightly out of order reads still count as sequential.
        assert_eq!(ra.on_read(300 * MIB, 300 * MIB + 4096, size), None);
        assert_eq!(ra.window(), MIN_WINDOW);
        // Nothing is fetched past the end of the blob.
        let mut ra = ReadAhead::default();
        let asked = sequential(&mut ra, 0, 128 * KIB, 3 * MIB, 3 * MIB + 5);
        assert!(asked.iter().all(|r| r.end <= 4), "{asked:?}");
    }

    #[test]
    fn budgets_refuse_rather_than_block_and_return_on_drop() {
        let b = Budget::new(10);
        let p = b.try_take(6).unwrap();
        assert!(b.try_take(5).is_none());
        let q = b.try_take(4).unwrap();
        assert_eq!(b.used(), 10);
        drop(p);
        assert_eq!(b.used(), 4);
        assert!(b.try_take(6).is_some());
        drop(q);
        assert_eq!(b.used(), 0);
    }
}
