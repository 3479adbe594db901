//! `orasfs`: parse the command line, set up logging, run. Invoked as `mount.orasfs`, it is
//! the mount(8) helper.

use std::process::ExitCode;

use clap::Parser;
use orasfs::cli::{default_cache_dir, CacheAction, Cli, Command};
use orasfs::daemon::{self, Readiness};

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

fn main() -> ExitCode {
    let mut argv: Vec<String> = std::env::args().collect();
    let invoked_as = argv
        .first()
        .and_then(|a| std::path::Path::new(a).file_name())
        .and_then(|n| n.to_str())
        .unwrap_or("orasfs")
        .to_string();
    if invoked_as.starts_with("mount.orasfs") || invoked_as.starts_with("mount.fuse.orasfs") {
        argv = match orasfs::helper::translate(&argv[1..]) {
            Ok(a) => a,
            Err(msg) => {
                eprintln!("mount.orasfs: {msg}");
                return ExitCode::FAILURE;
            }
        };
    }
    limit_malloc_retention();
    let cli = Cli::parse_from(argv);
    let result = match cli.command {
        Command::Mount(args) => {
            // Fork first, before any thread or runtime exists.
            let readiness = if args.foreground {
                if let Some(f) = &args.log_file {
                    daemon::detach_stdio_keep_terminal(f);
                }
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
            orasfs::logging::init(args.verbose, args.log_format);
            let args = *args;
            let result = orasfs::mount::prepare(&args)
                .and_then(|p| orasfs::mount::run(&args, p, &readiness));
            if let Err(msg) = &result {
                if readiness.fail(msg) {
                    return ExitCode::FAILURE;
                }
            }
            result
        }
        Command::Cache(args) => {
            orasfs::logging::init(0, Default::default());
            let dir = args.cache_dir.unwrap_or_else(default_cache_dir);
            let out = match args.action {
                CacheAction::Stats => orasfs::cache::manage::stats(&dir),
                CacheAction::Prune { max_size } => orasfs::cache::manage::prune(&dir, max_size),
                CacheAction::Clear => orasfs::cache::manage::clear(&dir),
            };
            out.map(|text| print!("{text}"))
        }
        Command::Umount { mountpoint, lazy } => orasfs::mount::unmount(&mountpoint, lazy),
        Command::Stats { mountpoint } => orasfs::stats::print(&mountpoint),
        Command::Index(args) => {
            orasfs::logging::init(args.registry.verbose, Default::default());
            orasfs::index::command::run(&args)
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
