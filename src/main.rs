//! `orasfs`: parse the command line, set up logging, run. Invoked as `mount.orasfs`, it is
//! the mount(8) helper.

#![deny(clippy::undocumented_unsafe_blocks)]

use std::process::ExitCode;

use clap::Parser;
use orasfs::app::cli::{default_cache_dir, CacheAction, Cli, Command};
use orasfs::app::daemon::{self, Readiness};

/// Streaming moves many megabyte-sized buffers between threads. glibc's malloc raises
/// its mmap threshold as such buffers are freed and then keeps them in per-thread arenas,
/// so RSS climbs far above what is in use; a fixed threshold returns them to the system.
fn limit_malloc_retention() {
    // SAFETY: mallopt only tunes the allocator; called before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 4 * 1024 * 1024);
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}

/// Raise the soft limit on open files to the hard limit, as most servers do: the cache
/// and the connection pool hold descriptors, and the default soft limit (often 1024) is
/// reached long before the machine's.
fn raise_open_files_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid, initialised rlimit struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

fn main() -> ExitCode {
    let mut argv: Vec<String> = std::env::args().collect();
    let invoked_as = argv
        .first()
        .and_then(|a| std::path::Path::new(a).file_name())
        .and_then(|n| n.to_str())
        .unwrap_or("orasfs")
        .to_string();
    if invoked_as.starts_with("mount.orasfs") || invoked_as.starts_with("mount.fuse.orasfs") {
        argv = match orasfs::app::helper::translate(&argv[1..]) {
            Ok(a) => a,
            Err(msg) => {
                eprintln!("mount.orasfs: {msg}");
                return ExitCode::FAILURE;
            }
        };
    }
    limit_malloc_retention();
    raise_open_files_limit();
    let cli = Cli::parse_from(argv);
    let result = match cli.command {
        Command::Mount(args) => {
            if let Err(msg) = orasfs::app::mount::check_operands(&args.operands) {
                eprintln!("orasfs: {msg}");
                return ExitCode::FAILURE;
            }
            // Fork first, before any thread or runtime exists.
            let readiness = if args.foreground {
                Readiness::foreground()
            } else {
                match daemon::daemonize(args.log_file.as_deref()) {
                    Ok(r) => r,
                    Err(msg) => {
                        eprintln!("orasfs: {msg}");
                        return ExitCode::FAILURE;
                    }
                }
            };
            let output = match &args.log_file {
                // In the foreground the log file gets the lines instead of the terminal; a
                // daemon shows them on the terminal too until it detaches.
                Some(path) => orasfs::app::logging::Output::File {
                    path,
                    terminal: !args.foreground,
                },
                None => orasfs::app::logging::Output::Stderr,
            };
            let logged = orasfs::app::logging::init(args.verbose, args.log_format, output);
            let cfg = args.config();
            let result = logged
                .and_then(|()| orasfs::app::mount::prepare(&cfg))
                .and_then(|p| orasfs::app::mount::run(&cfg, p, &readiness));
            if let Err(msg) = &result {
                if args.log_file.is_some() {
                    // The terminal gets the one-line error below; the log file gets it too.
                    orasfs::app::logging::detach_terminal();
                    log::error!("{msg}");
                }
                if readiness.fail(msg) {
                    return ExitCode::FAILURE;
                }
            }
            result
        }
        Command::Cache(args) => {
            // Logging to standard error cannot fail.
            let _ = orasfs::app::logging::init(
                0,
                Default::default(),
                orasfs::app::logging::Output::Stderr,
            );
            let dir = args.cache_dir.unwrap_or_else(default_cache_dir);
            let out = match args.action {
                CacheAction::Stats => orasfs::cache::manage::stats(&dir),
                CacheAction::Prune { max_size } => orasfs::cache::manage::prune(&dir, max_size),
                CacheAction::Clear => orasfs::cache::manage::clear(&dir),
            };
            out.map(|text| print!("{text}"))
        }
        Command::Umount { mountpoint, lazy } => {
            orasfs::app::mount::umount_command(&mountpoint, lazy)
        }
        Command::Stats { mountpoint } => orasfs::fs::stats::print(&mountpoint),
        Command::Index(args) => {
            let _ = orasfs::app::logging::init(
                args.verbose,
                Default::default(),
                orasfs::app::logging::Output::Stderr,
            );
            orasfs::app::index::run(&args.config())
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(msg) => {
            eprintln!("orasfs: {msg}");
            ExitCode::FAILURE
        }
    }
}
