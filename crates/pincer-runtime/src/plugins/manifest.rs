//! Plugin manifests, discovery, enablement and config validation. Reading a manifest never
//! runs plugin code.
//!
//! - A plugin is a directory with [`MANIFEST_FILE`]. Plugins are found in each path of
//!   `plugins.load.paths` (a plugin dir, or a dir of plugin dirs) and then in
//!   `<state>/plugins/*/`. When two directories declare the same id, the first one found wins
//!   and the other is reported as a problem.
//! - Enablement: `plugins.enabled`, then `plugins.deny` (wins), then `plugins.allow`
//!   (exclusive when set), then `plugins.entries.<id>.enabled`.
//! - `plugins.entries.<id>.config` (absent: `{}`) is validated against the manifest's
//!   `configSchema` for every enabled plugin; problems are [`ConfigError`]s with the config
//!   path of the offending value, reported like any other config error.

use pincer_core::config::{Config, ConfigError, ConfigWarning, PluginsConfig};
use serde::Deserialize;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The manifest's file name in a plugin directory.
pub const MANIFEST_FILE: &str = "pincer.plugin.json";
/// A manifest larger than this (1 MiB) is refused.
pub const MAX_MANIFEST_BYTES: u64 = 1024 * 1024;
/// Default `invoke` timeout (30 s; `plugins.entries.<id>.invokeTimeoutMs`).
pub const DEFAULT_INVOKE_TIMEOUT: Duration = Duration::from_secs(30);
/// Default `initialize` timeout (10 s; `plugins.entries.<id>.initializeTimeoutMs`).
pub const DEFAULT_INITIALIZE_TIMEOUT: Duration = Duration::from_secs(10);

/// `pincer.plugin.json`. Unknown keys are ignored (forward compatibility).
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    /// Plugin id, `[a-z0-9][a-z0-9_-]{0,63}`; every method name starts with `<id>.`.
    pub id: String,
    /// Display name (default: the id).
    #[serde(default)]
    pub name: Option<String>,
    /// Version string.
    #[serde(default)]
    pub version: Option<String>,
    /// One-line description.
    #[serde(default)]
    pub description: Option<String>,
    /// Program and arguments, run with the plugin directory as working directory. A relative
    /// program path containing `/` is resolved against the plugin directory; a bare name is
    /// looked up in `PATH`.
    pub command: Vec<String>,
    /// JSON Schema of `plugins.entries.<id>.config` (absent: anything is accepted).
    #[serde(default)]
    pub config_schema: Option<Value>,
}

/// Where a plugin was found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    /// A path of `plugins.load.paths`.
    LoadPath,
    /// `<state>/plugins/*/`.
    StateDir,
}

impl Origin {
    /// `load-path` or `state-dir`.
    pub fn as_str(self) -> &'static str {
        match self {
            Origin::LoadPath => "load-path",
            Origin::StateDir => "state-dir",
        }
    }
}

/// A plugin found on disk with a valid manifest.
#[derive(Clone, Debug)]
pub struct Found {
    /// The manifest.
    pub manifest: Manifest,
    /// Its text, part of the instance fingerprint (an edited manifest is a new generation on
    /// the next `plugins.*` reload).
    pub raw: String,
    /// The plugin directory (canonical when possible).
    pub dir: PathBuf,
    /// Where it was found.
    pub origin: Origin,
}

/// A plugin directory that cannot be used (bad manifest, duplicate id, missing path,
/// invalid config).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// Plugin id, when known.
    pub id: Option<String>,
    /// Directory or path concerned.
    pub path: PathBuf,
    /// What is wrong.
    pub message: String,
}

/// The result of a scan.
#[derive(Clone, Debug, Default)]
pub struct Discovery {
    /// Usable plugins, ids unique, in discovery order.
    pub found: Vec<Found>,
    /// Unusable ones.
    pub problems: Vec<Problem>,
}

/// What discovery needs from the environment.
#[derive(Clone, Debug)]
pub struct Roots {
    /// State directory (`<state>/plugins/*/`).
    pub state_dir: PathBuf,
    /// Directory of the config file: relative `plugins.load.paths` are resolved against it
    /// (against the state dir without a config file).
    pub config_dir: Option<PathBuf>,
}

impl Roots {
    /// Roots for a state dir and an optional config file path.
    pub fn new(state_dir: &Path, config_path: Option<&Path>) -> Roots {
        Roots {
            state_dir: state_dir.to_path_buf(),
            config_dir: config_path.and_then(Path::parent).map(Path::to_path_buf),
        }
    }

    /// Resolve one `plugins.load.paths` entry: `~/` is the home directory, relative paths
    /// are relative to the config file's directory.
    pub fn resolve(&self, p: &str) -> PathBuf {
        if let Some(rest) = p.strip_prefix("~/") {
            if let Some(home) = std::env::var_os("HOME") {
                return PathBuf::from(home).join(rest);
            }
        }
        let path = PathBuf::from(p);
        if path.is_absolute() {
            return path;
        }
        self.config_dir.as_deref().unwrap_or(&self.state_dir).join(path)
    }
}

/// Is `id` a valid plugin id (`[a-z0-9][a-z0-9_-]{0,63}`)?
pub fn valid_id(id: &str) -> bool {
    let b = id.as_bytes();
    !b.is_empty()
        && b.len() <= 64
        && (b[0].is_ascii_lowercase() || b[0].is_ascii_digit())
        && b.iter().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'_' || *c == b'-')
}

/// Read and check the manifest in `dir`. Errors: the problem's message.
pub fn read_manifest(dir: &Path) -> Result<(Manifest, String), String> {
    let path = dir.join(MANIFEST_FILE);
    let meta = std::fs::metadata(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    if meta.len() > MAX_MANIFEST_BYTES {
        return Err(format!("{} is larger than {} bytes", path.display(), MAX_MANIFEST_BYTES));
    }
    let raw = std::fs::read_to_string(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let manifest: Manifest =
        serde_json::from_str(&raw).map_err(|e| format!("invalid manifest {}: {e}", path.display()))?;
    if !valid_id(&manifest.id) {
        return Err(format!(
            "invalid manifest {}: id {:?} must match [a-z0-9][a-z0-9_-]{{0,63}}",
            path.display(),
            manifest.id
        ));
    }
    if manifest.command.first().is_none_or(|c| c.is_empty()) {
        return Err(format!("invalid manifest {}: command must name a program", path.display()));
    }
    if let Some(schema) = &manifest.config_schema {
        if let Err(e) = jsonschema::validator_for(schema) {
            return Err(format!("invalid manifest {}: configSchema is not a usable JSON Schema: {e}", path.display()));
        }
    }
    Ok((manifest, raw))
}

/// Scan the plugin roots of `cfg`. Never fails: unusable directories become problems.
pub fn discover(roots: &Roots, cfg: &PluginsConfig) -> Discovery {
    let mut out = Discovery::default();
    let mut dirs: Vec<(PathBuf, Origin)> = Vec::new();
    for p in &cfg.load.paths {
        let path = roots.resolve(p);
        if path.join(MANIFEST_FILE).is_file() {
            dirs.push((path, Origin::LoadPath));
        } else if path.is_dir() {
            dirs.extend(subdirs(&path).into_iter().map(|d| (d, Origin::LoadPath)));
        } else {
            out.problems.push(Problem {
                id: None,
                path,
                message: format!("plugins.load.paths entry {p:?}: no plugin directory there"),
            });
        }
    }
    let state_plugins = roots.state_dir.join("plugins");
    if state_plugins.is_dir() {
        dirs.extend(subdirs(&state_plugins).into_iter().map(|d| (d, Origin::StateDir)));
    }
    for (dir, origin) in dirs {
        let dir = std::fs::canonicalize(&dir).unwrap_or(dir);
        if out.found.iter().any(|f| f.dir == dir) {
            continue;
        }
        match read_manifest(&dir) {
            Ok((manifest, raw)) => {
                if let Some(first) = out.found.iter().find(|f| f.manifest.id == manifest.id) {
                    out.problems.push(Problem {
                        id: Some(manifest.id.clone()),
                        path: dir.clone(),
                        message: format!(
                            "duplicate plugin id {:?}: {} is ignored, {} is used",
                            manifest.id,
                            dir.display(),
                            first.dir.display()
                        ),
                    });
                    continue;
                }
                out.found.push(Found { manifest, raw, dir, origin });
            }
            Err(message) => out.problems.push(Problem { id: None, path: dir, message }),
        }
    }
    out
}

/// Sub-directories of `dir` holding a manifest, sorted by name.
fn subdirs(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| rd.filter_map(Result::ok).map(|e| e.path()).filter(|p| p.join(MANIFEST_FILE).is_file()).collect())
        .unwrap_or_default();
    v.sort();
    v
}

/// Why a plugin is disabled, or `None` when it is enabled.
pub fn disabled_reason(cfg: &PluginsConfig, id: &str) -> Option<String> {
    if !cfg.enabled {
        return Some("plugins.enabled is false".into());
    }
    if cfg.deny.iter().any(|d| d == id) {
        return Some("denied by plugins.deny".into());
    }
    if cfg.allow.as_ref().is_some_and(|a| !a.iter().any(|x| x == id)) {
        return Some("not in plugins.allow".into());
    }
    if cfg.entries.get(id).and_then(|e| e.enabled) == Some(false) {
        return Some(format!("plugins.entries.{id}.enabled is false"));
    }
    None
}

/// The config object a plugin gets (`plugins.entries.<id>.config`, default `{}`).
pub fn plugin_config(cfg: &PluginsConfig, id: &str) -> Value {
    cfg.entries.get(id).and_then(|e| e.config.clone()).unwrap_or_else(|| json!({}))
}

/// `invoke` and `initialize` timeouts of a plugin.
pub fn timeouts(cfg: &PluginsConfig, id: &str) -> (Duration, Duration) {
    let e = cfg.entries.get(id);
    let invoke = e.and_then(|e| e.invoke_timeout_ms).map(Duration::from_millis).unwrap_or(DEFAULT_INVOKE_TIMEOUT);
    let init = e.and_then(|e| e.initialize_timeout_ms).map(Duration::from_millis).unwrap_or(DEFAULT_INITIALIZE_TIMEOUT);
    (invoke.max(Duration::from_millis(1)), init.max(Duration::from_millis(1)))
}

/// Validate `config` against the plugin's schema. Errors carry config paths under
/// `plugins.entries.<id>.config`.
pub fn check_config(found: &Found, config: &Value) -> Vec<ConfigError> {
    let id = &found.manifest.id;
    let Some(schema) = &found.manifest.config_schema else { return Vec::new() };
    let base = format!("plugins.entries.{}.config", key_segment(id));
    let validator = match jsonschema::validator_for(schema) {
        Ok(v) => v,
        Err(e) => return vec![ConfigError::new(base, format!("plugin {id} has an unusable configSchema: {e}"))],
    };
    let mut errors: Vec<ConfigError> = validator
        .iter_errors(config)
        .map(|e| ConfigError::new(format!("{base}{}", dotted(e.instance_path().as_str(), config)), e.to_string()))
        .collect();
    errors.sort_by(|a, b| a.path.cmp(&b.path));
    errors.dedup();
    errors
}

/// Every problem of the plugin part of `config`: the config of each enabled plugin checked
/// against its schema. Returns the errors and warnings (`plugins.entries.<id>` naming no
/// plugin that was found).
pub fn validate(config: &Config, roots: &Roots) -> (Vec<ConfigError>, Vec<ConfigWarning>) {
    let cfg = &config.plugins;
    let discovery = discover(roots, cfg);
    let mut errors = Vec::new();
    for f in &discovery.found {
        if disabled_reason(cfg, &f.manifest.id).is_none() {
            errors.extend(check_config(f, &plugin_config(cfg, &f.manifest.id)));
        }
    }
    let warnings = cfg
        .entries
        .keys()
        .filter(|id| !discovery.found.iter().any(|f| &f.manifest.id == *id))
        .map(|id| {
            ConfigWarning::new(format!("plugins.entries.{}", key_segment(id)), "no plugin with this id was found")
        })
        .collect();
    (errors, warnings)
}

fn key_segment(k: &str) -> String {
    if !k.is_empty() && k.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b'-') {
        k.to_string()
    } else {
        format!("[{}]", Value::String(k.to_string()))
    }
}

/// A JSON pointer (`/a/0/b`) into `instance` as a config path suffix (`.a[0].b`).
fn dotted(pointer: &str, instance: &Value) -> String {
    let mut out = String::new();
    let mut cur = Some(instance);
    for raw in pointer.split('/').skip(1) {
        let seg = raw.replace("~1", "/").replace("~0", "~");
        match cur {
            Some(Value::Array(a)) => {
                out.push_str(&format!("[{seg}]"));
                cur = seg.parse::<usize>().ok().and_then(|i| a.get(i));
            }
            other => {
                let k = key_segment(&seg);
                if !k.starts_with('[') {
                    out.push('.');
                }
                out.push_str(&k);
                cur = other.and_then(|v| v.get(&seg));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use pincer_core::config::PluginEntryConfig;

    fn write_plugin(dir: &Path, id: &str, schema: Value) {
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(
            dir.join(MANIFEST_FILE),
            json!({"id": id, "command": ["python3", "p.py"], "configSchema": schema}).to_string(),
        )
        .unwrap();
    }

    #[test]
    fn ids() {
        assert!(valid_id("bncr"));
        assert!(valid_id("echo-methods"));
        assert!(valid_id("0_x"));
        assert!(!valid_id(""));
        assert!(!valid_id("-x"));
        assert!(!valid_id("Echo"));
        assert!(!valid_id("a.b"));
        assert!(!valid_id(&"a".repeat(65)));
        assert!(valid_id(&"a".repeat(64)));
    }

    #[test]
    fn enablement_order() {
        let mut c = PluginsConfig::default();
        assert_eq!(disabled_reason(&c, "p"), None);
        c.entries.insert("p".into(), PluginEntryConfig { enabled: Some(false), ..Default::default() });
        assert!(disabled_reason(&c, "p").unwrap().contains("entries"));
        c.entries.insert("p".into(), PluginEntryConfig { enabled: Some(true), ..Default::default() });
        c.allow = Some(vec!["q".into()]);
        assert_eq!(disabled_reason(&c, "p").unwrap(), "not in plugins.allow", "allow is exclusive");
        c.allow = Some(vec!["p".into()]);
        c.deny = vec!["p".into()];
        assert_eq!(disabled_reason(&c, "p").unwrap(), "denied by plugins.deny", "deny wins");
        c.enabled = false;
        assert_eq!(disabled_reason(&c, "p").unwrap(), "plugins.enabled is false");
    }

    #[test]
    fn discovery_and_duplicates() {
        let state = tempfile::tempdir().unwrap();
        let extra = tempfile::tempdir().unwrap();
        write_plugin(&state.path().join("plugins/a"), "alpha", json!({}));
        write_plugin(&state.path().join("plugins/b"), "beta", json!({}));
        write_plugin(&extra.path().join("one"), "alpha", json!({}));
        std::fs::create_dir_all(state.path().join("plugins/broken")).unwrap();
        std::fs::write(state.path().join("plugins/broken").join(MANIFEST_FILE), "{\"id\": \"Bad\"}").unwrap();
        let mut cfg = PluginsConfig::default();
        cfg.load.paths = vec![extra.path().display().to_string(), "/nonexistent/x".into()];
        let d = discover(&Roots::new(state.path(), None), &cfg);
        let ids: Vec<&str> = d.found.iter().map(|f| f.manifest.id.as_str()).collect();
        assert_eq!(ids, ["alpha", "beta"]);
        assert_eq!(d.found[0].origin, Origin::LoadPath, "load paths come first");
        assert_eq!(d.problems.len(), 3, "{:?}", d.problems);
        assert!(d.problems.iter().any(|p| p.message.contains("duplicate plugin id")));
        assert!(d.problems.iter().any(|p| p.message.contains("/nonexistent/x")));
        assert!(d.problems.iter().any(|p| p.message.contains("invalid manifest")));
    }

    #[test]
    fn config_is_checked_against_the_schema_with_config_paths() {
        let state = tempfile::tempdir().unwrap();
        let schema = json!({"type": "object", "properties": {"prefix": {"type": "string"},
            "list": {"type": "array", "items": {"type": "integer"}}}, "additionalProperties": false});
        write_plugin(&state.path().join("plugins/p"), "echo-methods", schema);
        let mut config = Config::default();
        config.plugins.entries.insert(
            "echo-methods".into(),
            PluginEntryConfig { config: Some(json!({"prefix": 3, "list": [1, "x"]})), ..Default::default() },
        );
        config.plugins.entries.insert("ghost".into(), PluginEntryConfig::default());
        let (errors, warnings) = validate(&config, &Roots::new(state.path(), None));
        let paths: Vec<&str> = errors.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            paths,
            ["plugins.entries.echo-methods.config.list[1]", "plugins.entries.echo-methods.config.prefix"]
        );
        let warnings: Vec<String> = warnings.iter().map(|w| w.to_string()).collect();
        assert_eq!(warnings, ["plugins.entries.ghost: no plugin with this id was found"]);
        // A disabled plugin's config is not checked.
        config.plugins.deny = vec!["echo-methods".into()];
        assert!(validate(&config, &Roots::new(state.path(), None)).0.is_empty());
    }
}
