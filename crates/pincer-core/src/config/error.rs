//! Error and warning types of config loading. Every problem carries the dotted path of the
//! value it is about (`gateway.port`, `bindings[0].agentId`, `models.providers["a.b"]`), so
//! one load can report all problems at once.

use std::fmt;

/// One config problem: the dotted path of the offending value and a human message.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{}", join_path_message(.path, .message))]
pub struct ConfigError {
    /// Dotted path with `[n]` array indices, e.g. `bindings[0].agentId`. Empty for problems
    /// about the whole document (such as a JSON5 syntax error).
    pub path: String,
    /// What is wrong, e.g. `expected one of hybrid|off, got "fast"`.
    pub message: String,
}

impl ConfigError {
    /// Build an error from a path and a message.
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError { path: path.into(), message: message.into() }
    }
}

/// All problems found in one load, in path order. Display prints one per line.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl ConfigErrors {
    /// The individual errors.
    pub fn errors(&self) -> &[ConfigError] {
        &self.0
    }
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

impl From<ConfigError> for ConfigErrors {
    fn from(e: ConfigError) -> Self {
        ConfigErrors(vec![e])
    }
}

/// Something the loader accepted but the operator should know: an ignored OpenClaw section or
/// key, a retired value read as its replacement. Display is `"{path}: {message}"`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigWarning {
    /// Dotted path of the value concerned.
    pub path: String,
    /// What happened to it, e.g. `section not supported by pincer; ignored`.
    pub message: String,
}

impl ConfigWarning {
    /// Build a warning from a path and a message.
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigWarning { path: path.into(), message: message.into() }
    }
}

impl fmt::Display for ConfigWarning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&join_path_message(&self.path, &self.message))
    }
}

fn join_path_message(path: &str, message: &str) -> String {
    if path.is_empty() {
        message.to_string()
    } else {
        format!("{path}: {message}")
    }
}
