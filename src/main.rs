//! `orasfs`: parse the command line, set up logging, run.

use std::process::ExitCode;

use clap::Parser;
use orasfs::cli::{default_cache_dir, CacheAction, Cli, Command};

fn init_logging(verbose: u8) {
    let level = match verbose {
        0 => "warn",
        1 => "info",
        2 => "debug",
        _ => "trace",
    };
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(level))
        .format_timestamp_millis()
        .init();
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Mount(args) => {
            init_logging(args.verbose);
            orasfs::mount::prepare(&args).and_then(|p| orasfs::mount::run(&args, p))
        }
        Command::Cache(args) => {
            init_logging(0);
            let dir = args.cache_dir.unwrap_or_else(default_cache_dir);
            let out = match args.action {
                CacheAction::Stats => orasfs::cache::manage::stats(&dir),
                CacheAction::Prune { max_size } => orasfs::cache::manage::prune(&dir, max_size),
                CacheAction::Clear => orasfs::cache::manage::clear(&dir),
            };
            out.map(|text| print!("{text}"))
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
