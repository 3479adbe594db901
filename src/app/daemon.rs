//! Running in the background: fork before any thread or runtime starts, and let the parent
//! exit only once the child reports that the mount is live (exit 0) or why it failed
//! (the child's one-line error, exit 1). The same readiness also goes to systemd
//! (`READY=1` over `$NOTIFY_SOCKET`) when orasfs runs under a `Type=notify` unit.
//!
//! The child stays in the caller's process group until the mount is ready, and only then
//! starts its own session. Under an automount (fstab `x-systemd.automount`), autofs lets
//! only the mounting process group through the pending mountpoint: a child that left it
//! first would hang on its own checks of the mountpoint until the mount timed out.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::sync::Mutex;

/// Reports readiness or failure to whoever waits: the parent process and/or systemd.
#[derive(Debug, Default)]
pub struct Readiness {
    pipe: Mutex<Option<File>>,
    log_file: Option<std::path::PathBuf>,
    /// A forked daemon leaves the caller's process group and session once ready.
    new_session: bool,
}

impl Readiness {
    /// For a foreground run: only systemd (if any) hears about readiness.
    pub fn foreground() -> Self {
        Self::default()
    }

    /// The mount is live and answering.
    pub fn ready(&self) {
        notify_systemd("READY=1");
        // Leave the caller's session before saying so: once the parent has read "OK", the
        // caller may look and must find the daemon on its own.
        if self.new_session {
            // SAFETY: setsid has no preconditions; it fails only for a group leader, which
            // a forked child is not.
            unsafe { libc::setsid() };
        }
        if let Some(mut p) = self.take() {
            crate::app::logging::detach_terminal();
            let _ = p.write_all(b"OK\n");
            detach_stdio(self.log_file.as_deref());
        }
    }

    /// The mount failed before it was ready; the parent prints `msg`.
    pub fn fail(&self, msg: &str) -> bool {
        match self.take() {
            Some(mut p) => {
                let _ = p.write_all(format!("ERR {msg}\n").as_bytes());
                true
            }
            None => false,
        }
    }

    fn take(&self) -> Option<File> {
        self.pipe.lock().unwrap_or_else(|e| e.into_inner()).take()
    }
}

/// Fork. In the parent this waits for the child's verdict and exits the process; in the
/// child (still in the caller's process group; a new session once ready) it returns the
/// [`Readiness`] to report through.
pub fn daemonize(log_file: Option<&Path>) -> Result<Readiness, String> {
    let mut fds = [0i32; 2];
    // SAFETY: fds is a valid two-element array for pipe(2) to fill.
    if unsafe { libc::pipe(fds.as_mut_ptr()) } != 0 {
        return Err(format!("pipe: {}", std::io::Error::last_os_error()));
    }
    // SAFETY: no other thread runs yet (this is called first thing from main), so the
    // child may keep running Rust code after fork.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(format!("fork: {}", std::io::Error::last_os_error()));
    }
    if pid > 0 {
        // SAFETY: fds came from pipe(2) above and are owned by nothing else.
        let (mut rd, wr) = unsafe { (File::from_raw_fd(fds[0]), File::from_raw_fd(fds[1])) };
        drop(wr);
        let mut answer = String::new();
        let _ = rd.read_to_string(&mut answer);
        if answer.starts_with("OK") {
            std::process::exit(0);
        }
        match answer.strip_prefix("ERR ") {
            Some(msg) => eprintln!("orasfs: {}", msg.trim_end()),
            None => {
                let mut status = 0;
                // SAFETY: pid is our child; status is a valid out-pointer.
                unsafe { libc::waitpid(pid, &mut status, 0) };
                eprintln!("orasfs: the daemon exited before the mount was ready (status {status}); run with --foreground -v to see why");
            }
        }
        std::process::exit(1);
    }
    // Child.
    // SAFETY: closing our copy of the read end. No setsid() here: see the module doc.
    unsafe {
        libc::close(fds[0]);
    }
    // SAFETY: fds[1] is the pipe's write end, owned by nothing else in the child.
    let wr = unsafe { File::from_raw_fd(fds[1]) };
    Ok(Readiness {
        pipe: Mutex::new(Some(wr)),
        log_file: log_file.map(Path::to_path_buf),
        new_session: true,
    })
}

/// Point stdin/stdout/stderr at /dev/null (stderr at the log file if one was given).
pub fn detach_stdio(log_file: Option<&Path>) {
    let Ok(null) = File::options().read(true).write(true).open("/dev/null") else {
        return;
    };
    let err = log_file.and_then(|p| File::options().create(true).append(true).open(p).ok());
    let n = null.as_raw_fd();
    let e = err.as_ref().map_or(n, |f| f.as_raw_fd());
    // SAFETY: dup2 onto the standard descriptors from fds that stay open for the call;
    // the originals close when `null` and `err` drop, the duplicates stay.
    unsafe {
        libc::dup2(n, 0);
        libc::dup2(n, 1);
        libc::dup2(e, 2);
    }
}

/// Send one `sd_notify` message if `$NOTIFY_SOCKET` is set.
pub fn notify_systemd(msg: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let Ok(sock) = UnixDatagram::unbound() else {
        return;
    };
    let bytes = path.as_encoded_bytes();
    let sent = if let Some(name) = bytes.strip_prefix(b"@") {
        use std::os::linux::net::SocketAddrExt;
        std::os::unix::net::SocketAddr::from_abstract_name(name)
            .and_then(|addr| sock.send_to_addr(msg.as_bytes(), &addr))
    } else {
        sock.send_to(msg.as_bytes(), Path::new(&path))
    };
    if let Err(e) = sent {
        log::warn!("sd_notify {msg}: {e}");
    }
}
