//! The reload planner: diff two config documents into changed leaf paths and classify each
//! path by the reference's longest-prefix rule table (reference §3, "Reload planner").

use super::path::{format_path, parse_path, Seg};
use serde_json::{Map, Value};
use std::collections::BTreeSet;

/// The dotted paths (see `get_path`) of every leaf that differs between `old` and `new`,
/// sorted. Objects are compared key by key; arrays and scalars are leaves (an array that
/// differs anywhere is reported once, at its own path). A key present on one side only is
/// reported at each of its leaves (an empty object or array counts as a leaf), so adding
/// `gateway: {reload: {mode: "off"}}` yields `gateway.reload.mode`.
///
/// Diff the typed values (`Config::to_value`) rather than raw documents to avoid reporting a
/// key that merely went from implicit default to the same explicit value.
pub fn diff(old: &Value, new: &Value) -> Vec<String> {
    let mut out = Vec::new();
    diff_into(Some(old), Some(new), &mut Vec::new(), &mut out);
    out.sort_by_cached_key(|p| parse_path(p).unwrap_or_default());
    out
}

fn diff_into(old: Option<&Value>, new: Option<&Value>, path: &mut Vec<Seg>, out: &mut Vec<String>) {
    let empty = Map::new();
    match (old, new) {
        (Some(a), Some(b)) if a == b => {}
        (Some(Value::Object(a)), Some(Value::Object(b))) => recurse(a, b, path, out),
        _ => match (as_obj(old, &empty), as_obj(new, &empty)) {
            // A non-empty object against nothing: descend to its leaves.
            (Some(a), Some(b)) => recurse(a, b, path, out),
            _ => out.push(format_path(path)),
        },
    }
}

/// `Some` for a non-empty object or a missing value (as `empty`); `None` for leaves.
fn as_obj<'a>(v: Option<&'a Value>, empty: &'a Map<String, Value>) -> Option<&'a Map<String, Value>> {
    match v {
        Some(Value::Object(m)) if !m.is_empty() => Some(m),
        None => Some(empty),
        _ => None,
    }
}

fn recurse(a: &Map<String, Value>, b: &Map<String, Value>, path: &mut Vec<Seg>, out: &mut Vec<String>) {
    let keys: BTreeSet<&String> = a.keys().chain(b.keys()).collect();
    for k in keys {
        path.push(Seg::Key(k.clone()));
        diff_into(a.get(k), b.get(k), path, out);
        path.pop();
    }
}

/// What applying a change at one path takes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ChangeKind {
    /// Nothing: the runtime reads the value live from the published snapshot.
    None,
    /// Applied in place without restarting anything (plugin runtime reload, token rotation).
    Hot,
    /// Restart one channel (`account: None`), one account of it, or every channel
    /// (`channel: "*"`).
    RestartChannel {
        /// Channel id, or `*` for all channels.
        channel: String,
        /// Account id when only that account needs a restart.
        account: Option<String>,
    },
    /// Full in-process restart of the gateway runtime.
    RestartGateway,
}

/// Classify a changed path (as returned by [`diff`]) by the longest matching rule:
///
/// | path | kind |
/// |---|---|
/// | `channels.defaults[.*]`, `channels` | restart all channels (`channel: "*"`) |
/// | `channels.<id>.accounts.<acc>[.*]` | restart that account |
/// | `channels.<id>[.*]` | restart that channel |
/// | `agents`, `bindings`, `session`, `messages`, `models`, `outbox`, `$schema` | none (read live) |
/// | `plugins[.*]` | hot |
/// | `gateway.reload[.*]` | none |
/// | `gateway.auth.token` | hot |
/// | any other `gateway[.*]`, and any path no rule covers | restart gateway (fail-safe) |
pub fn classify(path: &str) -> ChangeKind {
    let Ok(segs) = parse_path(path) else {
        return ChangeKind::RestartGateway;
    };
    let keys: Vec<Option<&str>> = segs
        .iter()
        .map(|s| match s {
            Seg::Key(k) => Some(k.as_str()),
            Seg::Index(_) => None,
        })
        .collect();
    let all_channels = || ChangeKind::RestartChannel { channel: "*".into(), account: None };
    match keys.as_slice() {
        [Some("channels")] | [Some("channels"), Some("defaults"), ..] => all_channels(),
        [Some("channels"), Some(ch), Some("accounts"), Some(acc), ..] => {
            ChangeKind::RestartChannel { channel: ch.to_string(), account: Some(acc.to_string()) }
        }
        [Some("channels"), Some(ch), ..] => ChangeKind::RestartChannel { channel: ch.to_string(), account: None },
        [Some("agents" | "bindings" | "session" | "messages" | "models" | "outbox" | "$schema"), ..] => {
            ChangeKind::None
        }
        [Some("plugins"), ..] => ChangeKind::Hot,
        [Some("gateway"), Some("reload"), ..] => ChangeKind::None,
        [Some("gateway"), Some("auth"), Some("token"), ..] => ChangeKind::Hot,
        _ => ChangeKind::RestartGateway,
    }
}

/// The combined effect of a set of changes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReloadPlan {
    /// Every changed leaf path, sorted.
    pub changed: Vec<String>,
    /// Some change needs a full gateway restart (which subsumes everything below).
    pub restart_gateway: bool,
    /// Paths applied hot (plugin runtime reload, token rotation).
    pub hot: Vec<String>,
    /// Channels to restart whole; contains only `*` when every channel must restart.
    pub restart_channels: BTreeSet<String>,
    /// `(channel, account)` pairs to restart, excluding accounts of channels restarted whole.
    pub restart_accounts: BTreeSet<(String, String)>,
}

impl ReloadPlan {
    /// Plan the reload from `old` to `new` (see [`diff`] for which values to pass).
    pub fn new(old: &Value, new: &Value) -> Self {
        Self::from_paths(diff(old, new))
    }

    /// Plan from already computed changed paths.
    pub fn from_paths(changed: Vec<String>) -> Self {
        let mut plan = ReloadPlan::default();
        for path in &changed {
            match classify(path) {
                ChangeKind::None => {}
                ChangeKind::Hot => plan.hot.push(path.clone()),
                ChangeKind::RestartGateway => plan.restart_gateway = true,
                ChangeKind::RestartChannel { channel, account: None } => {
                    plan.restart_channels.insert(channel);
                }
                ChangeKind::RestartChannel { channel, account: Some(acc) } => {
                    plan.restart_accounts.insert((channel, acc));
                }
            }
        }
        if plan.restart_channels.contains("*") {
            plan.restart_channels.retain(|c| c == "*");
            plan.restart_accounts.clear();
        } else {
            let whole = &plan.restart_channels;
            plan.restart_accounts.retain(|(ch, _)| !whole.contains(ch));
        }
        plan.changed = changed;
        plan
    }

    /// True when nothing needs to be restarted or applied (changes, if any, are read live).
    pub fn is_live_only(&self) -> bool {
        !self.restart_gateway
            && self.hot.is_empty()
            && self.restart_channels.is_empty()
            && self.restart_accounts.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn classify_follows_the_longest_prefix() {
        let chan =
            |c: &str, a: Option<&str>| ChangeKind::RestartChannel { channel: c.into(), account: a.map(Into::into) };
        let cases = [
            ("channels.mattermost.accounts.work.botToken", chan("mattermost", Some("work"))),
            ("channels.mattermost.accounts.work", chan("mattermost", Some("work"))),
            ("channels.mattermost.accounts", chan("mattermost", None)),
            ("channels.mattermost.dmPolicy", chan("mattermost", None)),
            ("channels.defaults.groupPolicy", chan("*", None)),
            ("channels", chan("*", None)),
            ("agents.defaults.model", ChangeKind::None),
            ("bindings", ChangeKind::None),
            ("session.dmScope", ChangeKind::None),
            ("messages.queue.mode", ChangeKind::None),
            ("models.providers.openai.apiKey", ChangeKind::None),
            ("outbox.maxAttempts", ChangeKind::None),
            ("plugins.entries.voice.enabled", ChangeKind::Hot),
            ("plugins.load.paths", ChangeKind::Hot),
            ("gateway.reload.mode", ChangeKind::None),
            ("gateway.auth.token", ChangeKind::Hot),
            ("gateway.auth.mode", ChangeKind::RestartGateway),
            ("gateway.port", ChangeKind::RestartGateway),
            ("gateway", ChangeKind::RestartGateway),
            ("somethingNew", ChangeKind::RestartGateway),
            ("", ChangeKind::RestartGateway),
            ("not a [valid path", ChangeKind::RestartGateway),
        ];
        for (path, want) in cases {
            assert_eq!(classify(path), want, "{path}");
        }
    }

    #[test]
    fn diff_reports_leaves() {
        let old = json!({"gateway": {"port": 1, "auth": {"token": "a"}}, "bindings": [1, 2], "x": {}});
        let new = json!({
            "gateway": {"port": 1, "auth": {"token": "b"}, "reload": {"mode": "off"}},
            "bindings": [1, 3],
            "channels": {"mattermost": {"accounts": {"work": {"botToken": "t"}}}},
            "plugins": {"entries": {"p": {}}},
        });
        assert_eq!(
            diff(&old, &new),
            [
                "bindings",
                "channels.mattermost.accounts.work.botToken",
                "gateway.auth.token",
                "gateway.reload.mode",
                "plugins.entries.p",
                "x",
            ]
        );
        assert!(diff(&new, &new).is_empty());
        assert_eq!(diff(&json!([1]), &json!({})), [""]);
    }

    #[test]
    fn plan_merges_restarts() {
        let plan = ReloadPlan::from_paths(vec![
            "channels.mattermost.accounts.work.botToken".into(),
            "channels.discord.accounts.a.token".into(),
            "channels.discord.dmPolicy".into(),
            "plugins.entries.p.enabled".into(),
            "agents.defaults.model".into(),
        ]);
        assert!(!plan.restart_gateway);
        assert_eq!(plan.hot, ["plugins.entries.p.enabled"]);
        assert_eq!(plan.restart_channels.iter().collect::<Vec<_>>(), ["discord"]);
        assert_eq!(
            plan.restart_accounts.iter().cloned().collect::<Vec<_>>(),
            [("mattermost".to_string(), "work".to_string())]
        );
        let all =
            ReloadPlan::from_paths(vec!["channels.defaults.groupPolicy".into(), "channels.x.accounts.a.b".into()]);
        assert_eq!(all.restart_channels.iter().collect::<Vec<_>>(), ["*"]);
        assert!(all.restart_accounts.is_empty());
        assert!(ReloadPlan::from_paths(vec!["session.mainKey".into()]).is_live_only());
        assert!(ReloadPlan::from_paths(vec!["gateway.port".into()]).restart_gateway);
    }
}
