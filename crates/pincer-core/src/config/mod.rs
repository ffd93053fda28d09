//! Config: the typed model (`model`), loading from JSON5 with `${ENV}` substitution, strict
//! validation that reports every problem with its path, the JSON Schema, and the diff used by
//! reload.

pub mod model;

pub use model::*;
