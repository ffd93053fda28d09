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
            Ok(LoadedConfig {
                config: loaded.config,
                hash: loaded.hash,
                warnings: loaded.warnings.iter().map(|w| w.to_string()).collect(),
                path: Some(path.to_path_buf()),
            })
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            Ok(LoadedConfig { config: Config::default(), hash: String::new(), warnings: Vec::new(), path: None })
        }
        Err(e) => Err(LoadError::Io(path.to_path_buf(), e)),
    }
}
