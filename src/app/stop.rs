//! Stopping on SIGTERM or SIGINT. The daemon unmounts; when the kernel refuses because the
//! mount is busy (a shell's working directory, an open file), it detaches the mount lazily
//! (`MNT_DETACH`), so that it leaves the namespace at once and nothing dead stays behind.
//! It then keeps serving the files still open for at most [`GRACE`] and exits 0, well
//! within a service manager's stop timeout.

use std::io;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

/// How long files still open after a lazy detach keep being served.
pub const GRACE: Duration = Duration::from_secs(10);

/// How often [`drain`] looks at the open handles.
pub const TICK: Duration = Duration::from_millis(100);

/// How the mount left the namespace.
#[derive(Debug, PartialEq, Eq)]
pub enum Unmounted {
    /// An ordinary unmount: the kernel ends the session at once.
    Cleanly,
    /// The unmount was refused (`why`); the mount was detached lazily instead, and the
    /// session lasts until its last user lets go.
    Detached { why: String },
}

/// Unmount with `unmount`; when that is refused (typically `EBUSY`), detach with `detach`.
/// Fails only when both fail, naming both reasons.
pub fn unmount_or_detach(
    unmount: impl FnOnce() -> io::Result<()>,
    detach: impl FnOnce() -> Result<(), String>,
) -> Result<Unmounted, String> {
    let refused = match unmount() {
        Ok(()) => return Ok(Unmounted::Cleanly),
        Err(e) => e.to_string(),
    };
    match detach() {
        Ok(()) => Ok(Unmounted::Detached { why: refused }),
        Err(e) => Err(format!("unmount refused ({refused}), and {e}")),
    }
}

/// Why [`drain`] stopped waiting.
#[derive(Debug, PartialEq, Eq)]
pub enum Drained {
    /// The FUSE session ended: the kernel let go of the mount.
    SessionEnded,
    /// No file handle is open any more (only, say, a working directory holds the mount).
    NoHandlesOpen,
    /// [`GRACE`] ran out with this many handles still open.
    GraceOver { open: usize },
}

/// After the unmount: wait until the session ends (a message or a hang-up on `ended`), or
/// until `open_handles()` has been 0 at two looks in a row, or until `grace` is over,
/// looking every `tick`.
pub fn drain(
    ended: &Receiver<()>,
    open_handles: impl Fn() -> usize,
    grace: Duration,
    tick: Duration,
) -> Drained {
    let deadline = Instant::now() + grace;
    let mut idle_looks = 0;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Drained::GraceOver {
                open: open_handles(),
            };
        }
        match ended.recv_timeout(tick.min(left)) {
            Ok(()) | Err(RecvTimeoutError::Disconnected) => return Drained::SessionEnded,
            Err(RecvTimeoutError::Timeout) => {}
        }
        if open_handles() == 0 {
            idle_looks += 1;
            if idle_looks >= 2 {
                return Drained::NoHandlesOpen;
            }
        } else {
            idle_looks = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::mpsc;

    fn busy() -> io::Result<()> {
        Err(io::Error::from_raw_os_error(libc::EBUSY))
    }

    #[test]
    fn a_clean_unmount_does_not_detach() {
        let mut detached = false;
        let got = unmount_or_detach(
            || Ok(()),
            || {
                detached = true;
                Ok(())
            },
        );
        assert_eq!(got, Ok(Unmounted::Cleanly));
        assert!(!detached);
    }

    #[test]
    fn a_busy_mount_is_detached_and_the_refusal_is_named() {
        let got = unmount_or_detach(busy, || Ok(())).unwrap();
        match got {
            Unmounted::Detached { why } => assert!(why.contains("busy"), "{why}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn when_the_detach_fails_too_both_reasons_are_given() {
        let e = unmount_or_detach(busy, || Err("cannot detach /mnt/x: EPERM".into())).unwrap_err();
        assert!(
            e.contains("busy") && e.contains("cannot detach /mnt/x"),
            "{e}"
        );
    }

    #[test]
    fn drain_returns_as_soon_as_the_session_ends() {
        let (tx, rx) = mpsc::channel();
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            tx.send(()).unwrap();
        });
        let start = Instant::now();
        let got = drain(&rx, || 3, Duration::from_secs(5), Duration::from_millis(10));
        t.join().unwrap();
        assert_eq!(got, Drained::SessionEnded);
        assert!(
            start.elapsed() < Duration::from_secs(2),
            "{:?}",
            start.elapsed()
        );
        // A sender dropped without a word counts as an ended session too.
        let (tx, rx) = mpsc::channel::<()>();
        drop(tx);
        assert_eq!(
            drain(&rx, || 3, Duration::from_secs(5), Duration::from_millis(10)),
            Drained::SessionEnded
        );
    }

    #[test]
    fn drain_serves_open_handles_until_they_close() {
        let (_tx, rx) = mpsc::channel();
        let looks = AtomicUsize::new(0);
        // Two handles stay open for the first five looks, then close.
        let open = || {
            if looks.fetch_add(1, Ordering::SeqCst) < 5 {
                2
            } else {
                0
            }
        };
        let got = drain(&rx, open, Duration::from_secs(5), Duration::from_millis(5));
        assert_eq!(got, Drained::NoHandlesOpen);
        assert_eq!(
            looks.load(Ordering::SeqCst),
            7,
            "two idle looks after five busy ones"
        );
    }

    #[test]
    fn drain_gives_up_after_the_grace_period() {
        let (_tx, rx) = mpsc::channel();
        let start = Instant::now();
        let got = drain(
            &rx,
            || 1,
            Duration::from_millis(120),
            Duration::from_millis(10),
        );
        assert_eq!(got, Drained::GraceOver { open: 1 });
        let took = start.elapsed();
        assert!(
            took >= Duration::from_millis(120) && took < Duration::from_secs(2),
            "{took:?}"
        );
    }
}
