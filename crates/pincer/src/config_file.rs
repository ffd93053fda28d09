//! Loading the config file from disk (the only place the binary reads it). Parsing and
//! validation live in `pincer_core::config`; this adds the file, the process environment and
//! the embedded defaults when no file exists.

use anyhow::Result;
use pincer_core::config::{self, Config, ConfigErrors};
use std::path::{Path, PathBuf};

/// A config ready to run.
pub struct LoadedConfig {
    /// The typed config.
    pub config: Config,
    /// sha256 of the file text (empty for embedded defaults).
    pub hash: String,
    /// Warnings as `path: message` lines.
    pub warnings: Vec<String>,
    /// The file, when one exists.
    pub path: Option<PathBuf>,
}

impl LoadedConfig {
    /// A config parsed from the file at `path`.
    pub fn from_parsed(loaded: config::Loaded, path: &Path) -> LoadedConfig {
        LoadedConfig {
            config: loaded.config,
            hash: loaded.hash,
            warnings: loaded.warnings.iter().map(|w| w.to_string()).collect(),
            path: Some(path.to_path_buf()),
        }
    }

    /// Keep `current`'s port and bind: `--port`/`--bind` stay in force across reloads, and the
    /// listener cannot move without a restart anyway.
    pub fn keep_listener_of(&mut self, current: &LoadedConfig) {
        self.config.gateway.port = current.config.gateway.port;
        self.config.gateway.bind = current.config.gateway.bind.clone();
    }
}

/// Why the raw config file could not be read for an edit.
pub enum RawError {
    /// The file exists but cannot be read.
    Io(std::io::Error),
    /// The file is not valid JSON5.
    Syntax(config::ConfigError),
}

impl std::fmt::Display for RawError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RawError::Io(e) => write!(f, "cannot read config: {e}"),
            RawError::Syntax(e) => write!(f, "the config file is not valid JSON5: {e}"),
        }
    }
}

/// The file's JSON5 value as written (no `${ENV}` substitution, no validation), for edits
/// (`config set/unset`, `config.patch`). A missing file is `{}`.
pub fn read_raw(path: &Path) -> Result<serde_json::Value, RawError> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => "{}".to_string(),
        Err(e) => return Err(RawError::Io(e)),
    };
    config::parse_json5(&text).map_err(RawError::Syntax)
}

/// Why a config could not be loaded.
pub enum LoadError {
    /// The file exists but cannot be read.
    Io(PathBuf, std::io::Error),
    /// The file is invalid; every problem is listed.
    Invalid(PathBuf, ConfigErrors),
}

impl std::fmt::Display for LoadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LoadError::Io(p, e) => write!(f, "cannot read config {}: {e}", p.display()),
            LoadError::Invalid(p, errs) => {
                writeln!(
                    f,
                    "invalid config {} ({} problem{}):",
                    p.display(),
                    errs.0.len(),
                    if errs.0.len() == 1 { "" } else { "s" }
                )?;
                for e in &errs.0 {
                    writeln!(f, "  - {e}")?;
                }
                Ok(())
            }
        }
    }
}

/// Parse `text` with the process environment.
pub fn parse_text(text: &str) -> Result<config::Loaded, ConfigErrors> {
    config::parse(text, &|k| std::env::var(k).ok())
}

/// Load the config at `path`; a missing file gives the embedded defaults.
pub fn load(path: &Path) -> Result<LoadedConfig, LoadError> {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let loaded = parse_text(&text).map_err(|e| LoadError::Invalid(path.to_path_buf(), e))?;
            Ok(LoadedConfig::from_parsed(loaded, path))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            Ok(LoadedConfig { config: Config::default(), hash: String::new(), warnings: Vec::new(), path: None })
        }
        Err(e) => Err(LoadError::Io(path.to_path_buf(), e)),
    }
}
