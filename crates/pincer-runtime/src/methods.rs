//! The method registry: one immutable table of control-plane methods (core + plugins) with a
//! generation number, published atomically (DESIGN.md bug 4). Dispatch and the `hello-ok`
//! advertisement both read the current table; nobody keeps a private copy.
//!
//! A plugin method's entry holds the plugin instance that registered it (a
//! [`PluginTarget`]): a request resolves the method *and* the process that serves it from the
//! same snapshot, so an invoke that started on a generation that is later retired finishes
//! there instead of failing or reaching a half-built successor.

use crate::plugins::{PluginsView, Slot};
use std::collections::BTreeMap;
use std::sync::Arc;

/// Operator scope a method needs (`operator.read|write|admin`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Scope {
    /// `operator.read`.
    Read,
    /// `operator.write`.
    Write,
    /// `operator.admin`.
    Admin,
}

impl Scope {
    /// Parse a plugin's scope word (`read`, `write`, `admin`).
    pub fn from_plugin_word(word: &str) -> Option<Scope> {
        match word {
            "read" => Some(Scope::Read),
            "write" => Some(Scope::Write),
            "admin" => Some(Scope::Admin),
            _ => None,
        }
    }

    /// The plugin protocol's word for this scope (`read`, `write`, `admin`).
    pub fn plugin_word(self) -> &'static str {
        match self {
            Scope::Read => "read",
            Scope::Write => "write",
            Scope::Admin => "admin",
        }
    }

    /// The wire name, e.g. `operator.read`.
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Read => "operator.read",
            Scope::Write => "operator.write",
            Scope::Admin => "operator.admin",
        }
    }

    /// True when a client holding `granted` may call a method needing `self`
    /// (admin implies write implies read, as in the reference).
    pub fn allowed_by(self, granted: &[String]) -> bool {
        granted.iter().any(|g| match g.as_str() {
            "operator.admin" => true,
            "operator.write" => self <= Scope::Write,
            "operator.read" => self == Scope::Read,
            _ => false,
        })
    }
}

/// The plugin instance (one generation of one plugin) that serves a method. Equality is
/// identity: two targets are equal when they are the same instance.
#[derive(Clone)]
pub struct PluginTarget(pub Arc<Slot>);

impl std::fmt::Debug for PluginTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PluginTarget({} generation {})", self.0.id(), self.0.generation())
    }
}

impl PartialEq for PluginTarget {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for PluginTarget {}

/// Who implements a method.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Handler {
    /// Built into the gateway; the control plane dispatches by name.
    Core,
    /// Provided by an out-of-process plugin: the instance that registered it in this
    /// generation of the table.
    Plugin {
        /// Plugin id.
        plugin: String,
        /// The instance that serves it.
        target: PluginTarget,
    },
}

/// One registered method.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MethodSpec {
    /// Required scope.
    pub scope: Scope,
    /// Implementation.
    pub handler: Handler,
}

/// The whole table for one generation.
#[derive(Clone, Debug, Default)]
pub struct MethodTable {
    /// Generation (increments on every rebuild).
    pub generation: u64,
    /// Methods by name.
    pub methods: BTreeMap<String, MethodSpec>,
    /// Events plugins declared (advertised in `hello-ok.features.events` after the core ones).
    pub plugin_events: Vec<String>,
    /// The plugins of this generation (published instances, pending replacements, disabled
    /// and broken plugins), for `plugins.list`, `status` and `health`.
    pub plugins: Arc<PluginsView>,
}

/// Core events (`hello-ok.features.events`).
pub const CORE_EVENTS: &[&str] = &["connect.challenge", "chat", "agent", "tick", "health", "shutdown"];

/// Core methods and their scopes.
pub const CORE_METHODS: &[(&str, Scope)] = &[
    ("health", Scope::Read),
    ("status", Scope::Read),
    ("channels.status", Scope::Read),
    ("channels.start", Scope::Admin),
    ("channels.stop", Scope::Admin),
    ("chat.send", Scope::Write),
    ("chat.history", Scope::Read),
    ("chat.abort", Scope::Write),
    ("agent", Scope::Write),
    ("agent.wait", Scope::Read),
    ("send", Scope::Write),
    ("sessions.list", Scope::Read),
    ("sessions.get", Scope::Read),
    ("sessions.reset", Scope::Write),
    ("deliveries.list", Scope::Read),
    ("deliveries.retry", Scope::Write),
    ("config.get", Scope::Admin),
    ("config.apply", Scope::Admin),
    ("config.patch", Scope::Admin),
    ("gateway.reload", Scope::Admin),
    ("gateway.restart", Scope::Admin),
    ("config.schema", Scope::Admin),
    ("models.list", Scope::Read),
    ("logs.tail", Scope::Read),
    ("pairing.list", Scope::Admin),
    ("pairing.approve", Scope::Admin),
    ("plugins.list", Scope::Read),
];

/// Is `name` a core method?
pub fn is_core(name: &str) -> bool {
    CORE_METHODS.iter().any(|(n, _)| *n == name)
}

impl MethodTable {
    /// The core table for `generation`.
    pub fn core(generation: u64) -> Self {
        let methods = CORE_METHODS
            .iter()
            .map(|(n, s)| (n.to_string(), MethodSpec { scope: *s, handler: Handler::Core }))
            .collect();
        MethodTable { generation, methods, plugin_events: Vec::new(), plugins: Arc::default() }
    }

    /// The core table plus the methods of `plugins`' published instances. A plugin method
    /// whose name is already taken (by a core method or an earlier plugin) is left out and
    /// reported as `(plugin, method, owner)`; the instances check core names at `initialize`,
    /// and names carry their plugin id as prefix, so this only guards the invariant.
    pub fn compose(generation: u64, plugins: Arc<PluginsView>) -> (Self, Vec<(String, String, String)>) {
        let mut table = MethodTable::core(generation);
        let mut clashes = Vec::new();
        for (id, slot) in &plugins.published {
            let registration = slot.registration();
            for m in &registration.methods {
                if let Some(existing) = table.methods.get(&m.name) {
                    let owner = match &existing.handler {
                        Handler::Core => "core".to_string(),
                        Handler::Plugin { plugin, .. } => format!("plugin {plugin}"),
                    };
                    clashes.push((id.clone(), m.name.clone(), owner));
                    continue;
                }
                let handler = Handler::Plugin { plugin: id.clone(), target: PluginTarget(slot.clone()) };
                table.methods.insert(m.name.clone(), MethodSpec { scope: m.scope, handler });
            }
            for e in &registration.events {
                if !table.plugin_events.contains(e) {
                    table.plugin_events.push(e.clone());
                }
            }
        }
        table.plugins = plugins;
        (table, clashes)
    }

    /// Look a method up.
    pub fn get(&self, name: &str) -> Option<&MethodSpec> {
        self.methods.get(name)
    }

    /// Method names, sorted (for `hello-ok.features.methods`).
    pub fn names(&self) -> Vec<String> {
        self.methods.keys().cloned().collect()
    }

    /// Event names for `hello-ok.features.events`: the core events, then the plugins'.
    pub fn event_names(&self) -> Vec<String> {
        CORE_EVENTS.iter().map(|e| e.to_string()).chain(self.plugin_events.iter().cloned()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_nest() {
        let admin = vec!["operator.admin".to_string()];
        let read = vec!["operator.read".to_string()];
        let write = vec!["operator.write".to_string()];
        assert!(Scope::Admin.allowed_by(&admin));
        assert!(Scope::Read.allowed_by(&write));
        assert!(!Scope::Admin.allowed_by(&write));
        assert!(!Scope::Write.allowed_by(&read));
        assert!(!Scope::Read.allowed_by(&[]));
    }
}
