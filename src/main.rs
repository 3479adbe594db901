//! `orasfs`: parse the command line, set up logging, run.

use std::process::ExitCode;

use clap::Parser;
use orasfs::cli::{Cli, Command};

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Mount(args) => {
            let level = match args.verbose {
                0 => "warn",
                1 => "info",
                2 => "debug",
                _ => "trace",
            };
            env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(level))
                .format_timestamp_millis()
                .init();
            let result = orasfs::mount::prepare(&args).and_then(|p| orasfs::mount::run(&args, p));
            match result {
                Ok(()) => ExitCode::SUCCESS,
                Err(msg) => {
                    eprintln!("orasfs: {msg}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
