//! Logging: `tracing` with a human format by default, JSON with `--log-format json`. The level
//! comes from `--log-level`, then `PINCER_LOG` / `RUST_LOG`, then `info` for the daemon and
//! `warn` for client commands.

use tracing_subscriber::EnvFilter;

/// Log output format.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Human,
    /// One JSON object per line.
    Json,
}

/// Install the global subscriber (once, at process start).
pub fn init(format: LogFormat, level: Option<&str>, daemon: bool) {
    let default = if daemon { "info" } else { "warn" };
    let filter = level
        .map(str::to_string)
        .or_else(|| std::env::var("PINCER_LOG").ok())
        .or_else(|| std::env::var("RUST_LOG").ok())
        .unwrap_or_else(|| default.to_string());
    let filter = EnvFilter::try_new(&filter).unwrap_or_else(|_| EnvFilter::new(default));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Human => builder.with_target(false).try_init(),
    };
}
