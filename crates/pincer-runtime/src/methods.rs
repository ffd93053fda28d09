//! The method registry: one immutable table of control-plane methods (core + plugins) with a
//! generation number, published atomically (DESIGN.md bug 4). Dispatch and the `hello-ok`
//! advertisement both read the current table; nobody keeps a private copy.

use std::collections::BTreeMap;

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

/// Who implements a method.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Handler {
    /// Built into the gateway; the control plane dispatches by name.
    Core,
    /// Provided by an out-of-process plugin (plugin issue).
    Plugin {
        /// Plugin id.
        plugin: String,
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
}

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
];

impl MethodTable {
    /// The core table for `generation`.
    pub fn core(generation: u64) -> Self {
        let methods = CORE_METHODS
            .iter()
            .map(|(n, s)| (n.to_string(), MethodSpec { scope: *s, handler: Handler::Core }))
            .collect();
        MethodTable { generation, methods }
    }

    /// Look a method up.
    pub fn get(&self, name: &str) -> Option<&MethodSpec> {
        self.methods.get(name)
    }

    /// Method names, sorted (for `hello-ok.features.methods`).
    pub fn names(&self) -> Vec<String> {
        self.methods.keys().cloned().collect()
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
