//! Log setup: human-readable lines by default, or one JSON object per line
//! (`--log-format json`) for journald and log shippers. Log lines carry messages only;
//! no code path logs a header value or credential.
//!
//! The HTTP libraries underneath log at debug and trace level too, and some of what they
//! could print there (raw request bytes with `Authorization`, redirect URLs with
//! signatures) is secret. Their records are capped at a fixed level here, whatever
//! `RUST_LOG` or `-v` asks for, so no setting can make them print a secret.
//!
//! With `--log-file`, every line goes to the file from the first one on; a daemon also
//! shows its lines on the terminal until it detaches ([`detach_terminal`]).

use std::fs::File;
use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use log::{LevelFilter, Log, Metadata, Record};

/// The log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// Targets (crate names) whose records are capped, and the most verbose level let
/// through for each.
const CAPPED: &[(&str, LevelFilter)] = &[
    ("reqwest", LevelFilter::Info),
    ("hyper", LevelFilter::Info),
    ("hyper_util", LevelFilter::Info),
    ("hyper_rustls", LevelFilter::Info),
    ("h2", LevelFilter::Info),
    ("rustls", LevelFilter::Info),
    ("tokio_rustls", LevelFilter::Info),
    ("tower", LevelFilter::Info),
    ("want", LevelFilter::Info),
    ("mio", LevelFilter::Info),
];

/// The cap for `target`, if its crate is one of [`CAPPED`].
fn cap_for(target: &str) -> Option<LevelFilter> {
    let krate = target.split("::").next().unwrap_or(target);
    CAPPED
        .iter()
        .find(|(name, _)| *name == krate)
        .map(|(_, level)| *level)
}

/// Whether a record at `level` from `target` may be logged at all.
pub fn allowed(target: &str, level: log::Level) -> bool {
    cap_for(target).is_none_or(|cap| level <= cap)
}

/// The level a record is logged at: fuser's own chatter is moved down. It lists each of
/// ~45 kernel capabilities at debug level (trace here), and warns "Failed to umount
/// filesystem: Invalid argument" after every clean unmount done from outside, when the
/// mount it would undo is already gone (debug here); other unmount failures still warn.
pub fn level_for(target: &str, level: log::Level, msg: &str) -> log::Level {
    if target != "fuser" && !target.starts_with("fuser::") {
        return level;
    }
    if msg.starts_with("capability ") {
        return log::Level::Trace;
    }
    if msg.starts_with("Failed to umount filesystem") && msg.contains("Invalid argument") {
        return log::Level::Debug;
    }
    level
}

/// env_logger behind the per-crate caps and [`level_for`].
struct Capped(env_logger::Logger);

impl Log for Capped {
    fn enabled(&self, m: &Metadata) -> bool {
        allowed(m.target(), m.level()) && self.0.enabled(m)
    }
    fn log(&self, r: &Record) {
        if !allowed(r.target(), r.level()) {
            return;
        }
        let msg = r.args().to_string();
        let level = level_for(r.target(), r.level(), &msg);
        if level == r.level() {
            self.0.log(r);
            return;
        }
        let meta = Metadata::builder().level(level).target(r.target()).build();
        if self.0.enabled(&meta) {
            self.0.log(
                &Record::builder()
                    .metadata(meta)
                    .args(format_args!("{msg}"))
                    .module_path(r.module_path())
                    .file(r.file())
                    .line(r.line())
                    .build(),
            );
        }
    }
    fn flush(&self) {
        self.0.flush();
    }
}

/// Whether log lines also go to the terminal (standard error) besides the log file.
static TERMINAL: AtomicBool = AtomicBool::new(true);

/// From now on, log lines go to the log file only (a daemon calls this as it detaches).
pub fn detach_terminal() {
    TERMINAL.store(false, Ordering::Relaxed);
}

/// The log file, and standard error while [`TERMINAL`] is set.
struct Tee(File);

impl Write for Tee {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.write_all(buf)?;
        if TERMINAL.load(Ordering::Relaxed) {
            let _ = std::io::stderr().write_all(buf);
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()
    }
}

/// Where log lines go.
#[derive(Debug, Clone, Copy)]
pub enum Output<'a> {
    /// Standard error only.
    Stderr,
    /// Every line to this file (appended); `terminal` also shows them on standard error
    /// until [`detach_terminal`].
    File { path: &'a Path, terminal: bool },
}

/// Install the logger: `verbose` picks the default level, `RUST_LOG` overrides it. Fails
/// only when the log file cannot be opened.
pub fn init(verbose: u8, format: LogFormat, output: Output) -> Result<(), String> {
    let level = match verbose {
        0 => "warn",
        1 => "info",
        2 => "debug",
        _ => "trace",
    };
    let mut b = env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(level));
    match format {
        LogFormat::Text => {
            b.format_timestamp_millis();
        }
        LogFormat::Json => {
            b.format(|buf, record| {
                let line = serde_json::json!({
                    "ts": humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string(),
                    "level": record.level().as_str(),
                    "target": record.target(),
                    "msg": record.args().to_string(),
                });
                writeln!(buf, "{line}")
            });
        }
    }
    if let Output::File { path, terminal } = output {
        let file = File::options()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| format!("cannot open log file {}: {e}", path.display()))?;
        TERMINAL.store(terminal, Ordering::Relaxed);
        b.write_style(env_logger::WriteStyle::Never)
            .target(env_logger::Target::Pipe(Box::new(Tee(file))));
    }
    let logger = b.build();
    let max = logger.filter();
    if log::set_boxed_logger(Box::new(Capped(logger))).is_ok() {
        log::set_max_level(max);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use log::Level;

    #[test]
    fn http_libraries_are_capped() {
        assert!(!allowed("reqwest::connect", Level::Trace));
        assert!(!allowed("reqwest::connect", Level::Debug));
        assert!(allowed("reqwest::connect", Level::Info));
        assert!(!allowed("hyper_util::client::legacy", Level::Debug));
        assert!(!allowed("h2::codec", Level::Trace));
        assert!(!allowed("rustls::client::hs", Level::Debug));
        assert!(allowed("orasfs::source::registry", Level::Trace));
        assert!(
            allowed("hyperion", Level::Trace),
            "only whole crate names match"
        );
    }

    #[test]
    fn fuser_chatter_is_moved_down() {
        use log::Level::{Debug, Trace, Warn};
        assert_eq!(
            level_for("fuser::session", Debug, "capability ASYNC_READ enabled"),
            Trace
        );
        assert_eq!(
            level_for(
                "fuser::session",
                Warn,
                "Failed to umount filesystem: Invalid argument (os error 22)"
            ),
            Debug
        );
        assert_eq!(
            level_for(
                "fuser::session",
                Warn,
                "Failed to umount filesystem: Device or resource busy (os error 16)"
            ),
            Warn
        );
        assert_eq!(
            level_for("orasfs::app::mount", Debug, "capability x"),
            Debug
        );
    }
}
