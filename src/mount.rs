//! `orasfs mount`: check everything that can fail before mounting, then serve FUSE until
//! unmounted or signalled.

use std::path::Path;
use std::sync::Arc;

use fuser::{Config, MountOption, SessionACL};

use crate::cache::{BlobCache, CacheConfig};
use crate::cli::{default_cache_dir, MountArgs};
use crate::daemon::Readiness;
use crate::fs::{Fs, FsConfig};
use crate::fuse::FuseFs;
use crate::read::{BlobReader, ReadConfig};
use crate::registry::{Client, ClientConfig};
use crate::source::layout::LayoutSource;
use crate::source::multi::MultiSource;
use crate::source::registry::RegistrySource;
use crate::source::{Reference, Source};
use crate::target::{self, Target};
use crate::tree::{RootKind, Tree, TreeConfig};

/// Everything a mount needs, checked and ready.
pub struct Prepared {
    pub fs: Fs,
    pub fsname: String,
}

/// A one-line failure, printed as `orasfs: <message>`.
pub type Failure = String;

fn check_mountpoint(p: &Path) -> Result<(), Failure> {
    // The kernel may still hold cached attributes of a dead mount's root, so also open it.
    let probe = std::fs::metadata(p).and_then(|m| std::fs::read_dir(p).map(|_| m));
    match probe {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => Err(format!("mountpoint {} is not a directory", p.display())),
        Err(e) if e.raw_os_error() == Some(libc::ENOTCONN) => {
            // A daemon died and left its mount behind: clear it and carry on.
            log::warn!(
                "mountpoint {} is a stale FUSE mount (Transport endpoint is not connected); clearing it",
                p.display()
            );
            unmount(p, true)?;
            match std::fs::metadata(p) {
                Ok(m) if m.is_dir() => {
                    log::warn!("cleared the stale mount at {}", p.display());
                    Ok(())
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
            let why = match other {
                Ok(o) => String::from_utf8_lossy(&o.stderr).trim().to_string(),
                Err(e) => format!("fusermount3: {e}"),
            };
            Err(format!("cannot unmount {}: {why}", p.display()))
        }
    }
}

/// A client for one registry, configured from the flags, and checked to answer.
/// `plain` is the scheme a SOURCE URL named (`Some(true)` for `http://`, `Some(false)` for
/// `https://`); without one, loopback hosts and `--plain-http` mean plain HTTP.
fn connect(
    args: &MountArgs,
    registry: &str,
    explicit: Option<crate::registry::Credentials>,
    plain: Option<bool>,
) -> Result<RegistrySource, crate::error::SourceError> {
    let mut cfg = ClientConfig::new(registry);
    cfg.plain_http = plain.unwrap_or(cfg.plain_http || args.plain_http);
    cfg.insecure = args.insecure;
    cfg.ca_file = args.ca_file.clone();
    cfg.connect_timeout = args.connect_timeout;
    cfg.read_timeout = args.read_timeout;
    cfg.retries = args.retries;
    cfg.credentials =
        crate::registry::credentials::resolve(registry, explicit, args.auth_file.as_deref())
            .map_err(|detail| crate::error::SourceError::Protocol {
                what: format!("credentials for {registry}"),
                detail,
            })?;
    if args.insecure {
        log::warn!("--insecure: TLS certificates of {registry} are not verified");
    }
    let src = RegistrySource::new(Client::new(cfg)?);
    src.ping()?;
    Ok(src)
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
    Ok((None, source))
}

/// Validate the command line and reach the source; fails before anything is mounted.
pub fn prepare(args: &MountArgs) -> Result<Prepared, Failure> {
    let mountpoint = args.mountpoint();
    check_mountpoint(&mountpoint)?;
    let explicit = match (&args.username, args.password_stdin) {
        (Some(u), true) => Some(crate::registry::Credentials::new(
            u.clone(),
            crate::registry::credentials::password_from_stdin()?,
            "--username and --password-stdin",
        )),
        _ => None,
    };
    let Some(source_arg) = args.source() else {
        // The multi-registry root: hosts connect on first lookup, with file credentials only
        // (a password given on the command line is for one named registry).
        if explicit.is_some() {
            return Err("--username needs a SOURCE naming the registry it is for".into());
        }
        let flags = args.clone();
        let multi = Arc::new(MultiSource::new(Box::new(move |host: &str| {
            Ok(Arc::new(connect(&flags, host, None, None)?) as Arc<dyn Source>)
        })));
        return finish(args, multi.clone(), RootKind::Hosts(multi), "registries");
    };
    let (plain, target_arg) = split_scheme(source_arg, args.plain_http)?;
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
            let src = connect(args, &registry, explicit, plain).map_err(|e| e.to_string())?;
            let root = match (repo, reference) {
                (None, _) => RootKind::Registry,
                (Some(repo), None) => {
                    src.tags(&repo).map_err(|e| e.to_string())?;
                    RootKind::Repository(repo)
                }
                (Some(repo), Some(r)) => RootKind::Artifact(repo, r),
            };
            (Arc::new(src), root)
        }
    };
    finish(args, source, root, source_arg)
}

/// Build the tree, the cache and the filesystem core.
fn finish(
    args: &MountArgs,
    source: Arc<dyn Source>,
    root: RootKind,
    name: &str,
) -> Result<Prepared, Failure> {
    let tree = Tree::new(
        source,
        root,
        TreeConfig {
            metadata_ttl: args.metadata_ttl,
        },
    )
    .map_err(|e| e.to_string())?;
    let mut cache_cfg = CacheConfig::new(args.cache_dir.clone().unwrap_or_else(default_cache_dir));
    cache_cfg.max_size = args.cache_size;
    cache_cfg.min_free_percent = args.cache_min_free.clamp(0.0, 100.0);
    let cache = BlobCache::open(cache_cfg).map_err(|e| e.to_string())?;
    let read_cfg = ReadConfig {
        verify: args.verify.into(),
        max_memory: args.max_memory,
        ..ReadConfig::default()
    };
    let reader = BlobReader::new(cache, tree.source().clone(), read_cfg);
    let mut fs_cfg = FsConfig {
        mutable_ttl: args.metadata_ttl,
        file_mode: args.file_mode,
        dir_mode: args.dir_mode,
        ..FsConfig::default()
    };
    if let Some(uid) = args.uid {
        fs_cfg.uid = uid;
    }
    if let Some(gid) = args.gid {
        fs_cfg.gid = gid;
    }
    Ok(Prepared {
        fs: Fs::new(tree, reader, fs_cfg),
        fsname: format!("orasfs:{name}"),
    })
}

/// Mount and serve until unmounted. SIGTERM/SIGINT unmount cleanly; SIGHUP drops cached
/// tags and listings.
pub fn run(args: &MountArgs, prepared: Prepared, readiness: &Readiness) -> Result<(), Failure> {
    let mut config = Config::default();
    config.mount_options = vec![
        MountOption::RO,
        MountOption::FSName(prepared.fsname.clone()),
        MountOption::Subtype("orasfs".into()),
        MountOption::DefaultPermissions,
        MountOption::NoDev,
        MountOption::NoSuid,
        MountOption::CUSTOM(format!("max_read={}", 1 << 20)),
    ];
    config.acl = if args.allow_other {
        SessionACL::All
    } else if args.allow_root {
        SessionACL::RootAndOwner
    } else {
        SessionACL::Owner
    };
    config.n_threads = Some(args.threads.clamp(1, 64));
    let fs = Arc::new(prepared.fs);
    let mountpoint = args.mountpoint();
    let mut session = fuser::Session::new(
        FuseFs::new(fs.clone(), !args.no_passthrough),
        &mountpoint,
        &config,
    )
    .map_err(|e| format!("cannot mount at {}: {e}", mountpoint.display()))?;
    let mut unmounter = session.unmount_callable();
    let idle = fs.clone();
    let mut signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGHUP,
    ])
    .map_err(|e| format!("cannot install signal handlers: {e}"))?;
    let handle = signals.handle();
    let shown = mountpoint.display().to_string();
    let watcher = std::thread::spawn(move || {
        for sig in signals.forever() {
            if sig == signal_hook::consts::SIGHUP {
                log::info!("SIGHUP: dropping cached tags and listings");
                fs.tree().drop_metadata();
                continue;
            }
            log::info!("signal {sig}: unmounting {shown}");
            crate::daemon::notify_systemd("STOPPING=1");
            if let Err(e) = unmounter.unmount() {
                log::error!("unmount of {shown} failed: {e}");
            }
            break;
        }
    });
    // Ready once the mount answers: the stat below is served by the loop started next.
    let probe = mountpoint.clone();
    let source = prepared.fsname.clone();
    std::thread::scope(|scope| {
        scope.spawn(|| match std::fs::metadata(&probe) {
            Ok(meta) => {
                set_kernel_readahead(&meta);
                log::info!("mounted {source} at {}", probe.display());
                readiness.ready();
            }
            Err(e) => {
                log::error!("the mount at {} does not answer: {e}", probe.display());
            }
        });
        let result = session.run();
        handle.close();
        result
    })
    .map_err(|e| format!("FUSE session ended with an error: {e}"))?;
    let _ = watcher.join();
    // Let blobs verified just before the unmount finish becoming whole files, so the next
    // mount reads them at local-disk speed instead of hashing them again.
    idle.wait_idle();
    Ok(())
}

/// Keep the kernel's read-ahead on the mount at its usual 128 KiB
/// ([`crate::fuse::KERNEL_READAHEAD`]), whatever the system default for new devices: a
/// small read at the start of a file (a GIS client reading a header) then reaches orasfs
/// as one 16 KiB request, not a larger one, while streams are read ahead by orasfs itself
/// into the cache. This needs root; without it the default stays.
fn set_kernel_readahead(meta: &std::fs::Metadata) {
    use std::os::unix::fs::MetadataExt;
    let dev = meta.dev();
    let (major, minor) = (libc::major(dev), libc::minor(dev));
    let knob = format!("/sys/class/bdi/{major}:{minor}/read_ahead_kb");
    let kib = crate::fuse::KERNEL_READAHEAD / 1024;
    match std::fs::write(&knob, kib.to_string()) {
        Ok(()) => log::debug!("kernel read-ahead set to {kib} KiB ({knob})"),
        Err(e) => log::debug!("kernel read-ahead left at its default ({knob}: {e})"),
    }
}
