//! Log setup: human-readable lines by default, or one JSON object per line
//! (`--log-format json`) for journald and log shippers. Log lines carry messages only;
//! no code path logs a header value or credential.

use std::io::Write;

/// The log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
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
    let _ = b.try_init();
}
