//! Config: the typed model (`model`), loading from JSON5 with `${ENV}` substitution, strict
//! validation that reports every problem with its path, the JSON Schema, and the diff used by
//! reload.
//!
//! Entry points:
//! - [`parse`]: text + env lookup → [`Loaded`] (typed config, warnings, raw value, hash) or
//!   [`ConfigErrors`] listing every problem as `path: message`.
//! - [`json_schema`]: the JSON Schema of the file.
//! - [`get_path`], [`set_path`], [`unset_path`], [`parse_cli_value`]: `pincer config
//!   get/set/unset`.
//! - [`diff`], [`classify`], [`ReloadPlan`]: what a reload has to do.
//! - Resolution helpers on [`Config`] (`default_agent_id`, `agent_model_chain`, ...).
//!
//! Pipeline of [`parse`]: JSON5 → OpenClaw sections/keys pincer ignores are removed with one
//! warning each (the table is `compat::IGNORED`) → `${VAR}` substitution → validation
//! against the schema generated from the model → typing with serde → semantic checks.
//! Nothing here does I/O: callers pass the text and the environment lookup.

pub mod channels;
mod compat;
mod diff;
pub mod discord;
mod env;
mod error;
mod load;
pub mod matrix;
pub mod mattermost;
pub mod model;
mod path;
mod resolve;
mod schema;
mod semantic;

pub use channels::*;
pub use diff::{classify, diff, ChangeKind, ReloadPlan};
pub use discord::*;
pub use error::{ConfigError, ConfigErrors, ConfigWarning};
pub use load::{parse, parse_json5, Loaded, MAX_DEPTH};
pub use matrix::*;
pub use mattermost::*;
pub use model::*;
pub use path::{get_path, merge_patch, parse_cli_value, set_path, unset_path};
pub use resolve::{split_model_ref, ANTHROPIC_DEFAULT_BASE_URL, ECHO_PROVIDER};
pub use schema::json_schema;
pub use semantic::{bind_is_loopback, BIND_KEYWORDS};
