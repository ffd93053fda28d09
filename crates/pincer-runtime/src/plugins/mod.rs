//! Out-of-process plugins (protocol version 1, `docs/plugins.md`): programs that speak
//! JSON-RPC 2.0 over their stdin/stdout and register control-plane methods.
//!
//! A plugin cannot share state with the gateway: it is a separate process, started per
//! generation and stopped when its generation is retired. The methods it registered live in
//! the one method table ([`crate::methods::MethodTable`]), together with the instance that
//! serves them; the table is swapped atomically, so what `hello-ok` advertises is exactly
//! what dispatch finds (DESIGN.md bug 4).
//!
//! - [`manifest`]: manifests, discovery, enablement, config validation.
//! - [`rpc`]: the JSON-RPC connection over a process's stdio.
//! - [`slot`]: one instance and the manager task that owns its process.
//! - [`host`]: generations and the method table.

pub mod host;
pub mod manifest;
pub mod rpc;
pub mod slot;

pub use host::{PluginChange, PluginHost};
pub use manifest::{validate, Roots, MANIFEST_FILE};
pub use slot::{Slot, SlotState};

use crate::{RuntimeError, SendRequest};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

/// Plugin protocol version.
pub const PROTOCOL_VERSION: u64 = 1;

/// A boxed future.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What the gateway offers a plugin (`gateway.emit`, `gateway.send`).
pub trait Services: Send + Sync + 'static {
    /// Broadcast an event frame to clients allowed to read.
    fn emit(&self, event: &str, payload: Value);
    /// Queue an outbound message through the outbox; returns its delivery id.
    fn send(&self, req: SendRequest) -> BoxFuture<'static, Result<i64, RuntimeError>>;
}

/// The plugins of one table generation: published instances, replacements still
/// initializing, instances being retired, plugins found but not run, and broken plugin
/// directories.
#[derive(Debug, Default)]
pub struct PluginsView {
    /// Plugin generation (one per apply of the `plugins` config).
    pub generation: u64,
    /// The instance serving each plugin's methods.
    pub published: BTreeMap<String, Arc<Slot>>,
    /// Replacements that are initializing.
    pub pending: BTreeMap<String, Arc<Slot>>,
    /// Instances being stopped.
    pub retiring: Vec<Arc<Slot>>,
    /// Found but not run (disabled, invalid config).
    pub inactive: Vec<host::Inactive>,
    /// Directories that are not usable plugins.
    pub problems: Vec<manifest::Problem>,
}

impl PluginsView {
    /// The `plugins.list` payload: OpenClaw's `PluginsListResult` shape (`plugins`,
    /// `diagnostics`, `mutationAllowed`). Runtime details of each plugin (state, pid,
    /// generation, methods, stderr tail) are its entry in `diagnostics`.
    pub fn list(&self) -> Value {
        let mut plugins = Vec::new();
        let mut diagnostics = Vec::new();
        for (id, slot) in &self.published {
            let m = &slot.spec().found.manifest;
            let state = slot.state();
            let error = matches!(state, SlotState::Failed | SlotState::GaveUp);
            let mut p = json!({"id": id, "name": m.name.clone().filter(|n| !n.is_empty()).unwrap_or_else(|| id.clone()),
                               "origin": slot.spec().found.origin.as_str(), "installed": true, "enabled": true,
                               "state": if error { "error" } else { "enabled" }});
            put_opt(&mut p, "version", m.version.as_deref());
            put_opt(&mut p, "description", m.description.as_deref());
            if error {
                if let Some((e, _)) = slot.last_error() {
                    p["error"] = json!(e);
                }
            }
            plugins.push(p);
            let mut row = slot.row();
            if let Some(next) = self.pending.get(id) {
                row["pending"] = next.row();
            }
            diagnostics.push(row);
        }
        for i in &self.inactive {
            let mut p = json!({"id": i.id, "name": i.name, "origin": i.origin, "installed": true, "enabled": false,
                               "state": if i.error { "error" } else { "disabled" }});
            put_opt(&mut p, "version", i.version.as_deref());
            put_opt(&mut p, "description", i.description.as_deref());
            if i.error {
                p["error"] = json!(i.reason);
            }
            plugins.push(p);
            diagnostics.push(json!({"pluginId": i.id, "status": if i.error { "invalid-config" } else { "disabled" },
                                    "reason": i.reason, "dir": i.dir.display().to_string(), "origin": i.origin}));
        }
        for s in self.retiring.iter().filter(|s| s.state() != SlotState::Stopped) {
            let mut row = s.row();
            row["retiring"] = json!(true);
            diagnostics.push(row);
        }
        for p in &self.problems {
            diagnostics.push(json!({"pluginId": p.id, "status": "invalid", "dir": p.path.display().to_string(),
                                    "message": p.message}));
        }
        json!({"plugins": plugins, "diagnostics": diagnostics, "mutationAllowed": false})
    }

    /// The `plugins` part of `status`.
    pub fn status(&self) -> Value {
        let mut rows: Vec<Value> = self
            .published
            .iter()
            .map(|(id, slot)| {
                let mut row = slot.row();
                if let Some(next) = self.pending.get(id) {
                    row["pending"] = next.row();
                }
                row
            })
            .collect();
        rows.extend(self.inactive.iter().map(|i| {
            json!({"pluginId": i.id, "status": if i.error { "invalid-config" } else { "disabled" }, "reason": i.reason})
        }));
        let problems: Vec<Value> = self
            .problems
            .iter()
            .map(|p| json!({"pluginId": p.id, "dir": p.path.display().to_string(), "message": p.message}))
            .collect();
        let retiring: Vec<Value> = self
            .retiring
            .iter()
            .filter(|s| s.state() != SlotState::Stopped)
            .map(|s| json!({"pluginId": s.id(), "generation": s.generation(), "pid": s.pid(), "status": s.state().as_str()}))
            .collect();
        json!({"generation": self.generation, "plugins": rows, "retiring": retiring, "problems": problems})
    }

    /// The `plugins` part of `health` (OpenClaw's shape: `loaded` ids and `errors`).
    pub fn health(&self) -> Value {
        let loaded: Vec<&String> =
            self.published.iter().filter(|(_, s)| s.state() == SlotState::Ready).map(|(id, _)| id).collect();
        let mut errors: Vec<Value> = self
            .published
            .iter()
            .filter(|(_, s)| matches!(s.state(), SlotState::Failed | SlotState::GaveUp | SlotState::Backoff))
            .map(|(id, s)| {
                let (error, phase) = s.last_error().unwrap_or_else(|| ("not running".into(), None));
                let mut e =
                    json!({"id": id, "origin": s.spec().found.origin.as_str(), "activated": false, "error": error});
                if let Some(p) = phase {
                    e["failurePhase"] = json!(p);
                }
                e
            })
            .collect();
        errors.extend(self.inactive.iter().filter(|i| i.error).map(|i| {
            json!({"id": i.id, "origin": i.origin, "activated": false, "error": i.reason, "failurePhase": "config"})
        }));
        json!({"loaded": loaded, "errors": errors})
    }
}

fn put_opt(v: &mut Value, k: &str, s: Option<&str>) {
    if let Some(s) = s.filter(|s| !s.is_empty()) {
        v[k] = json!(s);
    }
}
