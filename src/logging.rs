//! Log setup: human-readable lines by default, or one JSON object per line
//! (`--log-format json`) for journald and log shippers. Log lines carry messages only;
//! no code path logs a header value or credential.
//!
//! The HTTP libraries underneath log at debug and trace level too, and some of what they
//! could print there (raw request bytes with `Authorization`, redirect URLs with
//! signatures) is secret. Their records are capped at a fixed level here, whatever
//! `RUST_LOG` or `-v` asks for, so no setting can make them print a secret.

use std::io::Write;

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

/// env_logger behind the per-crate caps.
struct Capped(env_logger::Logger);

impl Log for Capped {
    fn enabled(&self, m: &Metadata) -> bool {
        allowed(m.target(), m.level()) && self.0.enabled(m)
    }
    fn log(&self, r: &Record) {
        if allowed(r.target(), r.level()) {
            self.0.log(r);
        }
    }
    fn flush(&self) {
        self.0.flush();
    }
}

/// Install the logger: `verbose` picks the default level, `RUST_LOG` overrides it.
pub fn init(verbose: u8, format: LogFormat) {
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
    let logger = b.build();
    let max = logger.filter();
    if log::set_boxed_logger(Box::new(Capped(logger))).is_ok() {
        log::set_max_level(max);
    }
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
        assert!(allowed("orasfs::registry", Level::Trace));
        assert!(
            allowed("hyperion", Level::Trace),
            "only whole crate names match"
        );
    }
}
