//! Logging: `tracing` with a human format on stderr by default, JSON with `--log-format json`.
//! The level comes from `--log-level`, then `PINCER_LOG` / `RUST_LOG`, then `info` for the
//! daemon and `warn` for client commands. The daemon also appends JSON lines to
//! `<state>/logs/pincer.log` (rotated to `pincer.log.1` at start once it exceeds
//! [`ROTATE_BYTES`]); `logs.tail` and `pincer logs` read that file.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// A log file larger than this (10 MiB) is rotated when the daemon starts.
pub const ROTATE_BYTES: u64 = 10 * 1024 * 1024;

/// Log output format.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Human,
    /// One JSON object per line.
    Json,
}

/// The daemon's file log: `<state>/logs/pincer.log`.
pub fn log_file(state: &Path) -> PathBuf {
    state.join("logs").join("pincer.log")
}

/// Open (creating, rotating) the file log. Errors are returned for a warning on stderr; the
/// daemon then logs to stderr only.
fn open_file_log(path: &Path) -> std::io::Result<File> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    if std::fs::metadata(path).is_ok_and(|m| m.len() > ROTATE_BYTES) {
        let _ = std::fs::rename(path, path.with_extension("log.1"));
    }
    OpenOptions::new().create(true).append(true).open(path)
}

/// Install the global subscriber (once, at process start). `file`: also append JSON lines
/// there (the daemon).
pub fn init(format: LogFormat, level: Option<&str>, daemon: bool, file: Option<&Path>) {
    // The Matrix SDK logs every sync at info; keep its warnings only.
    let default = if daemon { "info,matrix_sdk=warn,matrix_sdk_base=warn" } else { "warn" };
    let filter = level
        .map(str::to_string)
        .or_else(|| std::env::var("PINCER_LOG").ok())
        .or_else(|| std::env::var("RUST_LOG").ok())
        .unwrap_or_else(|| default.to_string());
    let filter = EnvFilter::try_new(&filter).unwrap_or_else(|_| EnvFilter::new(default));
    let stderr = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let stderr = match format {
        LogFormat::Json => stderr.json().flatten_event(true).boxed(),
        LogFormat::Human => stderr.with_target(false).boxed(),
    };
    let (file_layer, file_error) = match file.map(|p| (p, open_file_log(p))) {
        Some((_, Ok(f))) => (
            Some(
                tracing_subscriber::fmt::layer().json().flatten_event(true).with_ansi(false).with_writer(Mutex::new(f)),
            ),
            None,
        ),
        Some((p, Err(e))) => (None, Some(format!("cannot open the log file {}: {e}", p.display()))),
        None => (None, None),
    };
    let _ = tracing_subscriber::registry().with(filter).with(stderr).with(file_layer).try_init();
    if let Some(e) = file_error {
        tracing::warn!("{e}; logging to stderr only");
    }
}

/// One page of the file log, as `logs.tail` returns it (OpenClaw's shape: `{file, cursor,
/// size, lines, truncated, reset}`).
#[derive(Debug, serde::Serialize)]
pub struct Tail {
    /// The log file path.
    pub file: String,
    /// Byte offset to pass as the next `cursor`.
    pub cursor: u64,
    /// File size in bytes.
    pub size: u64,
    /// Complete lines read.
    pub lines: Vec<String>,
    /// More lines were available than `limit`/`maxBytes` allowed.
    pub truncated: bool,
    /// The cursor was past the end (the file was rotated): reading restarted at 0.
    pub reset: bool,
}

/// Read the log: without `cursor`, the last `limit` lines (reading at most `max_bytes` from
/// the end); with one, the complete lines after it (at most `limit` lines and `max_bytes`).
/// A missing file is an empty page. Errors: I/O errors other than "not found".
pub fn tail(path: &Path, cursor: Option<u64>, limit: usize, max_bytes: u64) -> std::io::Result<Tail> {
    let mut page = Tail {
        file: path.display().to_string(),
        cursor: 0,
        size: 0,
        lines: Vec::new(),
        truncated: false,
        reset: false,
    };
    let mut f = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(page),
        Err(e) => return Err(e),
    };
    let size = f.metadata()?.len();
    page.size = size;
    let (start, from_end) = match cursor {
        Some(c) if c > size => {
            page.reset = true;
            (0, false)
        }
        Some(c) => (c, false),
        None => (size.saturating_sub(max_bytes), true),
    };
    let len = (size - start).min(max_bytes);
    f.seek(SeekFrom::Start(start))?;
    let mut buf = Vec::with_capacity(len as usize);
    f.take(len).read_to_end(&mut buf)?;
    // Only complete lines; from the end, drop a partial first line too.
    let mut body: &[u8] = &buf;
    let mut consumed_start = start;
    if from_end && start > 0 {
        match body.iter().position(|b| *b == b'\n') {
            Some(i) => {
                body = &body[i + 1..];
                consumed_start += i as u64 + 1;
            }
            None => body = &[],
        }
    }
    let complete = body.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
    let text = String::from_utf8_lossy(&body[..complete]);
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    let mut end = consumed_start + complete as u64;
    page.truncated = lines.len() > limit || if from_end { start > 0 } else { start + len < size };
    if lines.len() > limit {
        if from_end {
            lines.drain(..lines.len() - limit);
        } else {
            lines.truncate(limit);
            end = consumed_start + lines.iter().map(|l| l.len() as u64 + 1).sum::<u64>();
        }
    }
    page.cursor = end;
    page.lines = lines;
    Ok(page)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_pages_through_complete_lines_and_resets_after_rotation() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("pincer.log");
        assert!(tail(&p, None, 10, 1024).unwrap().lines.is_empty(), "missing file: empty page");
        std::fs::write(&p, "a\nbb\nccc\npartial").unwrap();
        let last = tail(&p, None, 2, 1024).unwrap();
        assert_eq!(last.lines, ["bb", "ccc"]);
        assert!(last.truncated);
        assert_eq!(last.cursor, 9, "the partial line is not consumed");
        let page = tail(&p, Some(0), 2, 1024).unwrap();
        assert_eq!(
            (page.lines.clone(), page.cursor, page.truncated),
            (vec!["a".to_string(), "bb".to_string()], 5, true)
        );
        let page = tail(&p, Some(page.cursor), 10, 1024).unwrap();
        assert_eq!((page.lines.clone(), page.cursor), (vec!["ccc".to_string()], 9));
        std::fs::write(&p, "new\n").unwrap();
        let page = tail(&p, Some(9), 10, 1024).unwrap();
        assert!(page.reset);
        assert_eq!(page.lines, ["new"]);
        let small = tail(&p, Some(0), 10, 2).unwrap();
        assert!(small.lines.is_empty() && small.cursor == 0, "no complete line within maxBytes");
    }
}
