//! Loading: JSON5 text → ignored OpenClaw keys stripped → `${ENV}` substituted → schema
//! validated → typed → semantically checked. Every stage collects all of its problems; the
//! typed stages run only when the structure is valid.

use super::compat::strip_ignored;
use super::env::substitute_all;
use super::error::{ConfigError, ConfigErrors, ConfigWarning};
use super::model::Config;
use super::path::{format_path, parse_path, Seg};
use super::schema::{json_schema, typed_channels, Issues, Validator};
use super::semantic;
use serde_json::Value;
use sha2::{Digest, Sha256};

/// Deepest nesting accepted in a config document (guards the recursive passes).
pub const MAX_DEPTH: usize = 64;

/// A successfully loaded config.
#[derive(Clone, Debug, PartialEq)]
pub struct Loaded {
    /// The typed config, defaults filled in.
    pub config: Config,
    /// Ignored OpenClaw sections/keys, unsupported channels, retired values, in path order.
    pub warnings: Vec<ConfigWarning>,
    /// The document as typed: parsed JSON5 with the ignored sections/keys (see `warnings`)
    /// removed and `${ENV}` references substituted (except inside unsupported
    /// `channels.<name>` sections, which are kept verbatim). Holds resolved secrets; do not
    /// log it.
    pub raw: Value,
    /// Lowercase hex SHA-256 of the input text exactly as given (the `baseHash` of
    /// `config.apply`/`config.patch`, and how the watcher recognises its own writes).
    pub hash: String,
}

/// Parse and validate a config document.
///
/// `text` is the file content (JSON5: comments, trailing commas, unquoted keys, single
/// quotes). `env` looks up environment variables for `${VAR}` substitution; pass
/// `&|k| std::env::var(k).ok()` in the binary and a map in tests. An empty document is not
/// valid JSON5; callers without a config file should parse `"{}"`.
///
/// Errors: every problem found, each with its dotted path — a JSON5 syntax error (one error,
/// with line and column), unset environment variables, unknown keys (with a did-you-mean),
/// wrong types or enum values, missing required keys, then the semantic checks (see
/// `Config::validate`). On success the warnings list what was ignored.
pub fn parse(text: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<Loaded, ConfigErrors> {
    let hash = hex::encode(Sha256::digest(text.as_bytes()));
    let mut raw = parse_json5(text)?;
    if depth(&raw) > MAX_DEPTH {
        return Err(ConfigError::new("", format!("the document nests deeper than {MAX_DEPTH} levels")).into());
    }

    let mut warnings = Vec::new();
    let root = json_schema();
    let typed_channels = typed_channels(&root);
    strip_ignored(&mut raw, &typed_channels, &mut warnings);

    // Channel sections this build has no adapter for are kept verbatim: their `${VAR}`s are
    // not substituted, so an ignored channel's unset token is not an error.
    let untyped_channel = |path: &[Seg]| match path {
        [Seg::Key(c), Seg::Key(name)] => c == "channels" && name != "defaults" && !typed_channels.contains(name),
        _ => false,
    };
    let mut errors = Vec::new();
    substitute_all(&mut raw, env, &untyped_channel, &mut Vec::new(), &mut errors);

    let root = &root;
    let mut issues = Issues::default();
    Validator::new(root).check(root, &raw, &mut Vec::new(), &mut issues);
    warnings.extend(issues.warnings);
    let structure_ok = issues.errors.is_empty();
    errors.extend(issues.errors);

    let mut config = None;
    if structure_ok {
        match serde_path_to_error::deserialize::<_, Config>(&raw) {
            Ok(c) => {
                semantic::check(&c, &mut errors, &mut warnings);
                config = Some(c);
            }
            Err(e) => errors.push(typing_error(e)),
        }
    }

    match config {
        Some(config) if errors.is_empty() => {
            sort_by_path(&mut warnings, |w| &w.path);
            Ok(Loaded { config, warnings, raw, hash })
        }
        _ => {
            sort_by_path(&mut errors, |e| &e.path);
            Err(ConfigErrors(errors))
        }
    }
}

/// Parse JSON5 text into a JSON value with no substitution or validation (what
/// `pincer config set` edits). A syntax error is one [`ConfigError`] with an empty path whose
/// message starts with `line L, column C:` when the parser reports a position.
pub fn parse_json5(text: &str) -> Result<Value, ConfigError> {
    json5::from_str::<Value>(text).map_err(|e| {
        let json5::Error::Message { msg, location } = e;
        // pest's message repeats the position and draws the line; keep its last line.
        let reason = msg.lines().map(str::trim).rfind(|l| !l.is_empty()).unwrap_or_default();
        let reason = reason.trim_start_matches("= ");
        let message = match location {
            Some(loc) => format!("JSON5 syntax error at line {}, column {}: {reason}", loc.line, loc.column),
            None => format!("JSON5 syntax error: {reason}"),
        };
        ConfigError::new("", message)
    })
}

fn typing_error(e: serde_path_to_error::Error<serde_json::Error>) -> ConfigError {
    use serde_path_to_error::Segment;
    let segs: Vec<Seg> = e
        .path()
        .iter()
        .filter_map(|s| match s {
            Segment::Seq { index } => Some(Seg::Index(*index)),
            Segment::Map { key } => Some(Seg::Key(key.clone())),
            Segment::Enum { variant } => Some(Seg::Key(variant.clone())),
            Segment::Unknown => None,
        })
        .collect();
    ConfigError::new(format_path(&segs), e.into_inner().to_string())
}

fn depth(v: &Value) -> usize {
    match v {
        Value::Array(items) => 1 + items.iter().map(depth).max().unwrap_or(0),
        Value::Object(map) => 1 + map.values().map(depth).max().unwrap_or(0),
        _ => 0,
    }
}

/// Stable sort by path segments (so `bindings[2]` comes before `bindings[10]`).
fn sort_by_path<T>(items: &mut [T], path: impl Fn(&T) -> &String) {
    items.sort_by_cached_key(|item| parse_path(path(item)).unwrap_or_default());
}
