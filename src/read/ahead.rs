//! Read-ahead policy per open file: pure bookkeeping, no I/O.
//!
//! A read that starts within [`SEQ_SLACK`] of where the previous one ended continues the
//! handle's sequential *run* (the kernel may deliver a stream's requests slightly out of
//! order, and in pieces of up to 1 MiB). Read-ahead starts only once a run has covered
//! [`TRIGGER_FROM_START`] bytes when it began at the start of the file (`cat`, `cp`, a
//! model loader's mmap), or [`TRIGGER`] bytes when it began elsewhere: a GIS client reads
//! a header at the start, then runs of a few adjacent tiles (a 512-pixel tile of a noisy
//! 3-band COG is about 0.8 MB, and a window touches two or three in a row) and jumps to the
//! next row; those runs stay under the threshold, so it pays for the blocks it reads and
//! no more. Once started, the window begins at [`MIN_WINDOW`] past the reader and doubles
//! each time the reader comes within half a window of what was issued, up to
//! [`MAX_WINDOW`]. Any other read is random access and ends the run.
//!
//! Read-ahead lands in the cache's partial file, not in memory, so the window is bounded
//! by what is worth fetching ahead, not by RAM.

use std::ops::Range;

/// How far a read may start from where the previous one ended and still continue a run.
pub const SEQ_SLACK: u64 = 1024 * 1024;
/// Bytes a run that began at the start of the file must cover before read-ahead starts.
pub const TRIGGER_FROM_START: u64 = 1024 * 1024;
/// Bytes a run that began elsewhere must cover before read-ahead starts.
pub const TRIGGER: u64 = 4 * 1024 * 1024;
/// The first read-ahead window.
pub const MIN_WINDOW: u64 = 4 * 1024 * 1024;
/// The largest read-ahead window.
pub const MAX_WINDOW: u64 = 128 * 1024 * 1024;

/// The read-ahead state of one open file.
#[derive(Debug, Default)]
pub struct ReadAhead {
    /// Where the reader has got to.
    last_end: Option<u64>,
    /// Bytes read in the current sequential run.
    run: u64,
    /// Whether the current run began at the start of the file.
    from_start: bool,
    /// The current window; 0 means no read-ahead.
    window: u64,
    /// Read-ahead has been issued up to here.
    ahead_to: u64,
}

impl ReadAhead {
    /// Note a read of `offset..end` in a blob of `size` bytes; returns the bytes to fetch
    /// ahead, if any.
    pub fn on_read(&mut self, offset: u64, end: u64, size: u64) -> Option<Range<u64>> {
        let sequential = self
            .last_end
            .is_some_and(|le| offset.abs_diff(le) <= SEQ_SLACK);
        if !sequential {
            self.last_end = Some(end);
            self.run = end - offset;
            self.from_start = offset == 0;
            self.window = 0;
            self.ahead_to = 0;
            return None;
        }
        self.run += end.saturating_sub(offset);
        let end = self.last_end.map_or(end, |le| le.max(end));
        self.last_end = Some(end);
        let trigger = if self.from_start {
            TRIGGER_FROM_START
        } else {
            TRIGGER
        };
        if self.run < trigger || end >= size {
            return None;
        }
        if self.window > 0 && self.ahead_to > end + self.window / 2 {
            return None;
        }
        let window = (self.window * 2).clamp(MIN_WINDOW, MAX_WINDOW);
        let from = self.ahead_to.max(end);
        let to = (end + window).min(size);
        if from >= to {
            return None;
        }
        self.window = window;
        self.ahead_to = to;
        Some(from..to)
    }

    /// The current window in bytes.
    pub fn window(&self) -> u64 {
        self.window
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
                asked.push(r);
            }
            off += len;
        }
        asked
    }

    #[test]
    fn windows_start_after_a_real_run_grow_and_do_not_overlap() {
        let size = 4096 * MIB;
        let mut ra = ReadAhead::default();
        let asked = sequential(&mut ra, 0, 128 * KIB, 2048 * MIB, size);
        assert_eq!(
            asked[0].start, TRIGGER_FROM_START,
            "nothing before a 1 MiB run from 0"
        );
        assert_eq!(asked[0].end - asked[0].start, MIN_WINDOW);
        assert_eq!(ra.window(), MAX_WINDOW);
        for w in asked.windows(2) {
            assert_eq!(
                w[0].end, w[1].start,
                "each window starts where the last ended"
            );
        }
        let sizes: Vec<u64> = asked.iter().map(|r| r.end - r.start).collect();
        assert!(sizes.iter().all(|s| *s <= MAX_WINDOW), "{sizes:?}");
        assert!(sizes[..4].windows(2).all(|w| w[1] >= w[0]), "{sizes:?}");
        assert!(asked.last().unwrap().end > 2048 * MIB + MAX_WINDOW / 2);
    }

    #[test]
    fn tile_reads_never_read_ahead() {
        // GDAL-style: a header at the start, then runs of four adjacent 800 KiB tiles, then
        // a jump of megabytes to the next row.
        let size = 10 * 1024 * MIB;
        let mut ra = ReadAhead::default();
        assert_eq!(ra.on_read(0, 16 * KIB, size), None, "the header");
        let mut off = 50 * MIB;
        for row in 0..40u64 {
            for _ in 0..4 {
                let len = 800 * KIB;
                assert_eq!(ra.on_read(off, off + len, size), None, "row {row}");
                off += len;
            }
            off += 3 * MIB + row * 7 * KIB;
        }
        assert_eq!(ra.window(), 0);
    }

    #[test]
    fn random_access_resets_the_window() {
        let size = 1024 * MIB;
        let mut ra = ReadAhead::default();
        sequential(&mut ra, 0, 128 * KIB, 64 * MIB, size);
        assert!(ra.window() > MIN_WINDOW);
        assert_eq!(ra.on_read(700 * MIB, 700 * MIB + 4096, size), None);
        assert_eq!(ra.window(), 0);
        // Sequential again: the window starts small once a new run (not from the start of
        // the file) reaches 4 MiB.
        let asked = sequential(&mut ra, 700 * MIB + 4096, 128 * KIB, 705 * MIB, size);
        assert!(asked[0].start >= 700 * MIB + TRIGGER, "{asked:?}");
        assert_eq!(asked[0].end - asked[0].start, MIN_WINDOW);
        // Slightly out of order reads still continue the run.
        let w = ra.window();
        let back = 704 * MIB + 512 * KIB;
        assert_eq!(ra.on_read(back, back + 4096, size), None);
        assert_eq!(ra.window(), w);
        // Nothing is fetched past the end of the blob.
        let mut ra = ReadAhead::default();
        let asked = sequential(&mut ra, 0, 128 * KIB, 3 * MIB, 3 * MIB + 5);
        assert!(asked.iter().all(|r| r.end <= 3 * MIB + 5), "{asked:?}");
    }
}
