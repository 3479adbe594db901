//! `orasfs mount`: check everything that can fail before mounting, then serve FUSE until
//! unmounted or signalled.

use std::path::Path;
use std::sync::Arc;

use fuser::{Config, MountOption, SessionACL};

use crate::app::config::{Access, MountConfig};
use crate::app::connect::{connect, login};
use crate::app::daemon::Readiness;
use crate::app::target::{self, Target};
use crate::cache::BlobCache;
use crate::fs::fuse::FuseFs;
use crate::fs::tree::{RootKind, Tree};
use crate::fs::Fs;
use crate::read::BlobReader;
use crate::source::layout::LayoutSource;
use crate::source::multi::MultiSource;
use crate::source::{Reference, Source};

/// Everything a mount needs, checked and ready.
pub struct Prepared {
    pub fs: Fs,
    /// The mount's source as /proc/self/mountinfo shows it: SOURCE exactly as given.
    pub fsname: String,
}

/// A one-line failure, printed as `orasfs: <message>`.
pub type Failure = String;

/// Catch a forgotten MOUNTPOINT before anything else (before the daemon forks): a lone
/// operand that names a SOURCE — a registry reference, or an OCI layout directory — is
/// not meant as the mountpoint of a mount of every registry.
pub fn check_operands(operands: &[String]) -> Result<(), Failure> {
    let [only] = operands else {
        return Ok(());
    };
    let p = Path::new(only);
    let is_source = if p.is_dir() {
        p.join("oci-layout").is_file()
    } else {
        let bare = split_scheme(only, false).map_or(only.as_str(), |(_, rest)| rest);
        target::parse(bare).is_ok()
    };
    if is_source {
        return Err(format!(
            "MOUNTPOINT is missing: {only} is a SOURCE; run `orasfs mount {only} MOUNTPOINT` \
             (a lone MOUNTPOINT mounts every registry by host name)"
        ));
    }
    Ok(())
}

/// The mountpoint must be a directory, not already a FUSE mount, and empty unless
/// `nonempty`. A mount left stale by a dead daemon is cleared first.
fn check_mountpoint(p: &Path, nonempty: bool) -> Result<(), Failure> {
    let mut entries = reach_mountpoint(p)?;
    if let Some(m) = crate::app::mountpoint::mounted_at(p).filter(|m| m.fstype.starts_with("fuse"))
    {
        return Err(format!(
            "{} is already mounted ({} of {}); unmount it first with `orasfs umount {}`",
            p.display(),
            m.fstype,
            m.source,
            p.display()
        ));
    }
    if let (false, Some(first)) = (nonempty, entries.next()) {
        let name = first.map(|e| e.file_name()).unwrap_or_default();
        return Err(format!(
            "mountpoint {} is not empty (it holds {}); give --nonempty to mount over it anyway",
            p.display(),
            name.to_string_lossy()
        ));
    }
    Ok(())
}

/// Stat and open the mountpoint; clears a stale FUSE mount. Returns its entries.
fn reach_mountpoint(p: &Path) -> Result<std::fs::ReadDir, Failure> {
    // The kernel may still hold cached attributes of a dead mount's root, so also open it.
    let probe = std::fs::metadata(p).and_then(|m| std::fs::read_dir(p).map(|d| (m, d)));
    match probe {
        Ok((m, d)) if m.is_dir() => Ok(d),
        Ok(_) => Err(format!("mountpoint {} is not a directory", p.display())),
        Err(e) if e.raw_os_error() == Some(libc::ENOTCONN) => {
            // A daemon died and left its mount behind: clear it and carry on.
            log::warn!(
                "mountpoint {} is a stale FUSE mount (Transport endpoint is not connected); clearing it",
                p.display()
            );
            unmount(p, true)?;
            match std::fs::metadata(p).and_then(|m| std::fs::read_dir(p).map(|d| (m, d))) {
                Ok((m, d)) if m.is_dir() => {
                    log::warn!("cleared the stale mount at {}", p.display());
                    Ok(d)
                }
                _ => Err(format!(
                    "could not clear the stale mount at {}",
                    p.display()
                )),
            }
        }
        Err(e) => Err(format!("mountpoint {}: {e}", p.display())),
    }
}

/// `orasfs umount`: refuse a path that is not mounted or not a FUSE mount, and explain a
/// busy mount.
pub fn umount_command(p: &Path, lazy: bool) -> Result<(), Failure> {
    match crate::app::mountpoint::mounted_at(p) {
        None => {
            let missing = std::fs::symlink_metadata(p)
                .is_err_and(|e| e.kind() == std::io::ErrorKind::NotFound);
            return Err(match missing {
                true => format!("{}: no such file or directory", p.display()),
                false => format!("{} is not mounted", p.display()),
            });
        }
        Some(m) if !m.fstype.starts_with("fuse") => {
            return Err(format!(
                "{} is a {} mount, not orasfs; leaving it alone",
                p.display(),
                m.fstype
            ))
        }
        Some(_) => {}
    }
    unmount(p, lazy).map_err(|e| {
        if !e.contains("busy") {
            return e;
        }
        let holders = crate::app::mountpoint::holders(p);
        let by = if holders.is_empty() {
            String::new()
        } else {
            let names: Vec<String> = holders.iter().take(10).map(|h| h.to_string()).collect();
            let more = holders.len().saturating_sub(10);
            let more = if more > 0 {
                format!(" and {more} more")
            } else {
                String::new()
            };
            format!(" (held by {}{more})", names.join(", "))
        };
        format!(
            "{} is busy{by}; close what uses it, or detach it now and let it go when no \
             longer used with `orasfs umount --lazy {}`",
            p.display(),
            p.display()
        )
    })
}

/// Unmount with `fusermount3 -u` (`-uz` when `lazy`), falling back to umount(2) as root.
pub fn unmount(p: &Path, lazy: bool) -> Result<(), Failure> {
    let flag = if lazy { "-uz" } else { "-u" };
    let out = std::process::Command::new("fusermount3")
        .arg(flag)
        .arg(p)
        .output();
    match out {
        Ok(o) if o.status.success() => Ok(()),
        other => {
            let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes())
                .map_err(|_| format!("{}: bad path", p.display()))?;
            let flags = if lazy { libc::MNT_DETACH } else { 0 };
            // SAFETY: c is a valid NUL-terminated path.
            if unsafe { libc::umount2(c.as_ptr(), flags) } == 0 {
                return Ok(());
            }
            let errno = std::io::Error::last_os_error();
            let why = match other {
                Ok(_) if errno.raw_os_error() == Some(libc::EBUSY) => errno.to_string(),
                Ok(o) => String::from_utf8_lossy(&o.stderr).trim().to_string(),
                Err(e) => format!("fusermount3: {e}"),
            };
            Err(format!("cannot unmount {}: {why}", p.display()))
        }
    }
}

/// Split an `https://` or `http://` prefix off a registry SOURCE: `https://` forces TLS
/// (also for a loopback host), `http://` plain HTTP. Returns whether plain HTTP was asked
/// for, and the SOURCE without its scheme.
pub fn split_scheme(source: &str, plain_http_flag: bool) -> Result<(Option<bool>, &str), Failure> {
    if let Some(rest) = source.strip_prefix("https://") {
        if plain_http_flag {
            return Err(format!(
                "{source}: an https:// SOURCE and --plain-http contradict each other"
            ));
        }
        return Ok((Some(false), rest));
    }
    if let Some(rest) = source.strip_prefix("http://") {
        return Ok((Some(true), rest));
    }
    if let Some((scheme, _)) = source.split_once("://") {
        if !scheme.is_empty()
            && scheme
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "+.-".contains(c))
        {
            return Err(format!(
                "{source}: {scheme}:// is not supported; a registry SOURCE may start with https:// or http://"
            ));
        }
    }
    Ok((None, source))
}

/// Validate the command line and reach the source; fails before anything is mounted.
pub fn prepare(cfg: &MountConfig) -> Result<Prepared, Failure> {
    check_mountpoint(&cfg.mountpoint, cfg.nonempty)?;
    let explicit = login(&cfg.registry)?;
    let Some(source_arg) = cfg.source.as_deref() else {
        // The multi-registry root: hosts connect on first lookup, with file credentials only
        // (a password given on the command line is for one named registry).
        if explicit.is_some() {
            return Err("--username needs a SOURCE naming the registry it is for".into());
        }
        let registry = cfg.registry.clone();
        let multi = Arc::new(MultiSource::new(Box::new(move |host: &str| {
            Ok(Arc::new(connect(&registry, host, None, None, None)?) as Arc<dyn Source>)
        })));
        return finish(cfg, multi, RootKind::Hosts, "orasfs");
    };
    let (plain, target_arg) = split_scheme(source_arg, cfg.registry.plain_http)?;
    let (source, root): (Arc<dyn Source>, RootKind) = match target::parse(target_arg)? {
        Target::Layout { path, tag } => {
            let layout = LayoutSource::open(&path).map_err(|e| e.to_string())?;
            let root = match tag {
                Some(t) => RootKind::Artifact(String::new(), Reference::Tag(t)),
                None => RootKind::Repository(String::new()),
            };
            (Arc::new(layout), root)
        }
        Target::Registry {
            registry,
            repo,
            reference,
        } => {
            let src = connect(&cfg.registry, &registry, repo.as_deref(), explicit, plain)
                .map_err(|e| e.to_string())?;
            let root = match (repo, reference) {
                (None, _) => {
                    // Like a repository or an artifact, a registry that wants credentials
                    // the mount does not have fails now, not at the first `ls`.
                    src.origin().check_access().map_err(|e| e.to_string())?;
                    RootKind::Registry
                }
                (Some(repo), None) => {
                    src.tags(&repo).map_err(|e| match e {
                        crate::error::SourceError::NotFound(_) => format!(
                            "{e}; a namespace is browsed from the registry's mount: \
                             orasfs mount {registry} MOUNTPOINT, then MOUNTPOINT/{repo}/"
                        ),
                        e => e.to_string(),
                    })?;
                    RootKind::Repository(repo)
                }
                (Some(repo), Some(r)) => RootKind::Artifact(repo, r),
            };
            (Arc::new(src), root)
        }
    };
    finish(cfg, source, root, source_arg)
}

/// Build the tree, the cache and the filesystem core.
fn finish(
    cfg: &MountConfig,
    source: Arc<dyn Source>,
    root: RootKind,
    name: &str,
) -> Result<Prepared, Failure> {
    let tree = Tree::new(source, root, cfg.tree.clone()).map_err(|e| e.to_string())?;
    create_private_dir(&cfg.cache.dir)?;
    let cache = BlobCache::open(cfg.cache.clone()).map_err(|e| e.to_string())?;
    let reader = BlobReader::new(cache, tree.source().clone(), cfg.read.clone());
    Ok(Prepared {
        fs: Fs::new(tree, reader, cfg.fs.clone()),
        fsname: name.to_string(),
    })
}

/// Mount and serve until unmounted. SIGTERM/SIGINT unmount (lazily when the mount is busy,
/// see [`crate::app::stop`]) and exit 0; SIGHUP drops cached tags and listings.
pub fn run(cfg: &MountConfig, prepared: Prepared, readiness: &Readiness) -> Result<(), Failure> {
    let mut config = Config::default();
    config.mount_options = vec![
        MountOption::RO,
        MountOption::FSName(fsname_option(&prepared.fsname, is_root())),
        // As a kernel option (not `MountOption::Subtype`, which only fusermount3 reads),
        // so that a mount made directly as root is `fuse.orasfs` too.
        MountOption::CUSTOM("subtype=orasfs".into()),
        MountOption::DefaultPermissions,
        MountOption::NoDev,
        MountOption::NoSuid,
        MountOption::CUSTOM(format!("max_read={}", 1 << 20)),
    ];
    config.acl = match cfg.access {
        Access::All => SessionACL::All,
        Access::OwnerAndRoot => SessionACL::RootAndOwner,
        Access::Owner => SessionACL::Owner,
    };
    config.n_threads = Some(cfg.threads);
    let fs = Arc::new(prepared.fs);
    let mountpoint = cfg.mountpoint.clone();
    // Resolved now, while it is a plain directory: the daemon never asks its own mount.
    let target = crate::app::mountpoint::absolute(&mountpoint);
    let (init_tx, init_rx) = std::sync::mpsc::channel();
    let mut session = fuser::Session::new(
        FuseFs::new(fs.clone(), cfg.passthrough).on_init(init_tx),
        &mountpoint,
        &config,
    )
    .map_err(|e| mount_error(&mountpoint, &e, Path::new(DEV_FUSE)))?;
    let mut unmounter = session.unmount_callable();
    fs.tree()
        .set_invalidator(crate::fs::fuse::invalidator(session.notifier()));
    let idle = fs.clone();
    let mut signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGHUP,
    ])
    .map_err(|e| format!("cannot install signal handlers: {e}"))?;
    let handle = signals.handle();
    let (ended_tx, ended_rx) = std::sync::mpsc::channel::<()>();
    let detach_at = mountpoint.clone();
    let watcher = std::thread::spawn(move || {
        for sig in signals.forever() {
            if sig == signal_hook::consts::SIGHUP {
                log::info!("SIGHUP: dropping cached tags and listings");
                fs.tree().drop_metadata();
                continue;
            }
            stop_on_signal(sig, &detach_at, &fs, &ended_rx, || unmounter.unmount());
            break;
        }
    });
    // Ready once the kernel has initialised the mount (see `FuseFs::on_init`).
    let source = prepared.fsname.clone();
    let shown = mountpoint.display().to_string();
    let result = std::thread::scope(|scope| {
        let (target, shown, source) = (&target, &shown, &source);
        scope.spawn(move || match init_rx.recv() {
            Ok(()) => {
                set_kernel_readahead(target);
                log::info!("mounted {source} at {shown}");
                readiness.ready();
            }
            Err(_) => {
                log::error!(
                    "the mount at {} was never initialised",
                    mountpoint.display()
                );
            }
        });
        let result = session.run();
        handle.close();
        result
    });
    // Tell a stop in progress that the kernel let go of the mount.
    drop(ended_tx);
    result.map_err(|e| format!("FUSE session ended with an error: {e}"))?;
    let _ = watcher.join();
    // Let blobs verified just before the unmount finish becoming whole files, so the next
    // mount reads them at local-disk speed instead of hashing them again.
    idle.wait_idle();
    Ok(())
}

/// SIGTERM or SIGINT: unmount, or detach lazily when busy; then serve what is still open
/// for a bounded time. Returns when the session ended; otherwise exits the process (0, or
/// 1 when the mount could be neither unmounted nor detached).
fn stop_on_signal(
    sig: i32,
    mountpoint: &Path,
    fs: &Fs,
    ended: &std::sync::mpsc::Receiver<()>,
    unmount_now: impl FnOnce() -> std::io::Result<()>,
) {
    use crate::app::stop::{self, Drained, Unmounted};
    let shown = mountpoint.display();
    log::info!("signal {sig}: unmounting {shown}");
    crate::app::daemon::notify_systemd("STOPPING=1");
    let still_mounted = match stop::unmount_or_detach(unmount_now, || unmount(mountpoint, true)) {
        Ok(Unmounted::Cleanly) => false,
        Ok(Unmounted::Detached { why }) => {
            log::warn!(
                "unmount of {shown} refused ({why}); detached it lazily, serving files still open for up to {} s",
                stop::GRACE.as_secs()
            );
            false
        }
        Err(e) => {
            log::error!("{shown}: {e}");
            true
        }
    };
    match stop::drain(ended, || fs.open_handles(), stop::GRACE, stop::TICK) {
        Drained::SessionEnded => return,
        Drained::NoHandlesOpen => {
            log::info!("{shown}: no file open any more; leaving the detached mount")
        }
        Drained::GraceOver { open } => log::warn!(
            "{shown}: {open} file(s) still open after {} s; leaving the detached mount (they now fail with ENOTCONN)",
            stop::GRACE.as_secs()
        ),
    }
    fs.wait_idle();
    log::logger().flush();
    // The session thread is still blocked reading /dev/fuse; exiting closes it, and the
    // kernel ends the connection of the mount nobody can reach by path any more. A mount
    // that could be neither unmounted nor detached is left dead: say so in the status.
    std::process::exit(i32::from(still_mounted));
}

/// The FUSE device.
const DEV_FUSE: &str = "/dev/fuse";

/// Whether the daemon runs as root, and so mounts with mount(2) rather than fusermount3.
fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// The `fsname=` value: the source exactly as given. As root, fuser passes it to mount(2)
/// as is; otherwise it travels in fusermount3's comma-separated `-o` list, where `,` and
/// `\` are escaped with a backslash (fusermount3 removes the escapes).
fn fsname_option(source: &str, as_root: bool) -> String {
    if as_root {
        return source.to_string();
    }
    let mut out = String::with_capacity(source.len());
    for c in source.chars() {
        if c == ',' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// A failed mount in one line, naming the FUSE device when that is what is missing.
fn mount_error(mountpoint: &Path, e: &std::io::Error, dev_fuse: &Path) -> Failure {
    if !dev_fuse.exists() {
        return format!(
            "cannot mount at {}: {} does not exist (load the module with `modprobe fuse`; in a container, pass the device in)",
            mountpoint.display(),
            dev_fuse.display()
        );
    }
    format!("cannot mount at {}: {e}", mountpoint.display())
}

/// Create the cache directory (and missing parents) mode 0700 before the cache opens it,
/// so that it is private even when nothing (such as systemd-tmpfiles) made it beforehand.
/// An existing directory keeps its mode.
fn create_private_dir(dir: &Path) -> Result<(), Failure> {
    use std::os::unix::fs::DirBuilderExt;
    if dir.is_dir() {
        return Ok(());
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| format!("cache directory {}: {e}", dir.display()))
}

/// Keep the kernel's read-ahead on the mount at its usual 128 KiB
/// ([`crate::fs::fuse::KERNEL_READAHEAD`]), whatever the system default for new devices: a
/// small read at the start of a file (a GIS client reading a header) then reaches orasfs
/// as one 16 KiB request, not a larger one, while streams are read ahead by orasfs itself
/// into the cache. This needs root; without it the default stays.
fn set_kernel_readahead(target: &Path) {
    let Some(entry) = crate::app::mountpoint::mounted_at_absolute(target) else {
        log::debug!(
            "kernel read-ahead left at its default ({} not in the mount table)",
            target.display()
        );
        return;
    };
    let knob = format!("/sys/class/bdi/{}/read_ahead_kb", entry.dev);
    let kib = crate::fs::fuse::KERNEL_READAHEAD / 1024;
    match std::fs::write(&knob, kib.to_string()) {
        Ok(()) => log::debug!("kernel read-ahead set to {kib} KiB ({knob})"),
        Err(e) => log::debug!("kernel read-ahead left at its default ({knob}: {e})"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schemes_other_than_http_and_https_are_named() {
        assert_eq!(
            split_scheme("https://h/r:t", false).unwrap(),
            (Some(false), "h/r:t")
        );
        assert_eq!(
            split_scheme("http://h/r:t", false).unwrap(),
            (Some(true), "h/r:t")
        );
        assert_eq!(split_scheme("h/r:t", false).unwrap(), (None, "h/r:t"));
        let e = split_scheme("ftp://127.0.0.1:5055/demo/files:v1", false).unwrap_err();
        assert!(e.contains("ftp:// is not supported"), "{e}");
        assert!(split_scheme("https://h/r", true).is_err());
    }

    #[test]
    fn the_fsname_is_the_source_as_given() {
        let s = "127.0.0.1:5000/eo/products:v1";
        assert_eq!(fsname_option(s, true), s);
        assert_eq!(fsname_option(s, false), s);
        // fusermount3 reads a comma-separated list: escape what would split it.
        assert_eq!(fsname_option(r"/data/a,b\c", false), r"/data/a\,b\\c");
        assert_eq!(fsname_option(r"/data/a,b\c", true), r"/data/a,b\c");
    }

    #[test]
    fn a_missing_fuse_device_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let dev = dir.path().join("fuse");
        let e = std::io::Error::from_raw_os_error(libc::ENOENT);
        let msg = mount_error(Path::new("/mnt/eo"), &e, &dev);
        assert!(
            msg.contains(&format!("{} does not exist", dev.display())),
            "{msg}"
        );
        assert!(
            msg.contains("/mnt/eo") && msg.contains("modprobe fuse"),
            "{msg}"
        );
        std::fs::write(&dev, "").unwrap();
        let msg = mount_error(Path::new("/mnt/eo"), &e, &dev);
        assert_eq!(msg, format!("cannot mount at /mnt/eo: {e}"));
    }

    #[test]
    fn the_cache_directory_is_created_0700_and_an_existing_one_kept() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        let cache = dir.path().join("a/b");
        create_private_dir(&cache).unwrap();
        assert_eq!(mode(&cache), 0o700);
        assert_eq!(mode(&dir.path().join("a")), 0o700);
        let shared = dir.path().join("shared");
        std::fs::create_dir(&shared).unwrap();
        std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o750)).unwrap();
        create_private_dir(&shared).unwrap();
        assert_eq!(mode(&shared), 0o750);
        let file = dir.path().join("file");
        std::fs::write(&file, "").unwrap();
        let e = create_private_dir(&file).unwrap_err();
        assert!(e.contains(&file.display().to_string()), "{e}");
    }
}
