//! Resolution helpers the runtime uses on a typed [`Config`] snapshot: which agent is the
//! default, and the effective per-agent settings (entry value, else `agents.defaults`).
//!
//! Agent lookups take a normalised [`AgentId`]; `agents.entries` keys are validated to be
//! normalised ids, so a plain map lookup is exact. An agent without an entry (such as the
//! implicit `main`) gets the defaults.

use super::model::{AgentEntryConfig, Config, ProviderApi, ProviderConfig, QueueMode};
use crate::ids::AgentId;

/// Base URL used for an `anthropic-messages` provider that sets no `baseUrl`.
pub const ANTHROPIC_DEFAULT_BASE_URL: &str = "https://api.anthropic.com";

/// Provider id of the built-in echo agent; `echo` and `echo/<anything>` need no provider config.
pub const ECHO_PROVIDER: &str = "echo";

/// Split a model ref `provider/model` at the first `/`. The bare ref `echo` yields
/// `("echo", "echo")`. Returns `None` when the ref has no `/` (and is not `echo`) or either
/// part is empty.
pub fn split_model_ref(model_ref: &str) -> Option<(&str, &str)> {
    if model_ref == ECHO_PROVIDER {
        return Some((ECHO_PROVIDER, ECHO_PROVIDER));
    }
    let (provider, model) = model_ref.split_once('/')?;
    if provider.is_empty() || model.is_empty() {
        None
    } else {
        Some((provider, model))
    }
}

impl Config {
    /// The default agent: the entry marked `default: true`, else the first entry in key order,
    /// else `main`.
    pub fn default_agent_id(&self) -> AgentId {
        let entries = &self.agents.entries;
        entries
            .iter()
            .find(|(_, e)| e.default)
            .or_else(|| entries.iter().next())
            .map(|(id, _)| AgentId::new(id))
            .unwrap_or_default()
    }

    /// The `agents.entries` entry of `agent`, if it has one.
    pub fn agent_entry(&self, agent: &AgentId) -> Option<&AgentEntryConfig> {
        self.agents.entries.get(agent.as_str())
    }

    /// The model refs to try for `agent`, in order: primary then fallbacks, from the entry's
    /// `model`, else `agents.defaults.model`. An empty vec means the built-in echo agent.
    pub fn agent_model_chain(&self, agent: &AgentId) -> Vec<String> {
        self.agent_entry(agent)
            .and_then(|e| e.model.as_ref())
            .or(self.agents.defaults.model.as_ref())
            .map(|m| m.chain().into_iter().map(str::to_string).collect())
            .unwrap_or_default()
    }

    /// The system prompt of `agent`: the entry's, else `agents.defaults.systemPrompt`. Owned,
    /// because it goes straight into a run request.
    pub fn agent_system_prompt(&self, agent: &AgentId) -> Option<String> {
        self.agent_entry(agent)
            .and_then(|e| e.system_prompt.clone())
            .or_else(|| self.agents.defaults.system_prompt.clone())
    }

    /// The run budget of `agent` in milliseconds (`timeoutSeconds` × 1000, saturating): the
    /// entry's, else `agents.defaults.timeoutSeconds`.
    pub fn agent_timeout_ms(&self, agent: &AgentId) -> u64 {
        self.agent_entry(agent)
            .and_then(|e| e.timeout_seconds)
            .unwrap_or(self.agents.defaults.timeout_seconds)
            .saturating_mul(1000)
    }

    /// Number of transcript turns sent with each run of `agent`: the entry's `historyLimit`,
    /// else `agents.defaults.historyLimit`.
    pub fn agent_history_limit(&self, agent: &AgentId) -> u32 {
        self.agent_entry(agent).and_then(|e| e.history_limit).unwrap_or(self.agents.defaults.history_limit)
    }

    /// The queue mode for messages from `channel` (a channel id such as `mattermost`):
    /// `messages.queue.byChannel.<channel>`, else `messages.queue.mode`.
    pub fn queue_mode_for(&self, channel: &str) -> QueueMode {
        let queue = &self.messages.queue;
        queue.by_channel.get(channel).copied().unwrap_or(queue.mode)
    }

    /// The provider config a model ref points at, with the provider id. `None` for refs to the
    /// built-in echo provider (unless a provider named `echo` is configured) and for refs whose
    /// provider is not configured (validation rejects those).
    pub fn provider_for(&self, model_ref: &str) -> Option<(&str, &ProviderConfig)> {
        let (provider, _) = split_model_ref(model_ref)?;
        self.models.providers.get_key_value(provider).map(|(k, v)| (k.as_str(), v))
    }

    /// Pretty-printed JSON of the whole typed config (defaults filled in), two-space indent.
    pub fn to_pretty_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_default()
    }

    /// The typed config as a JSON value (defaults filled in). Diffing two of these with
    /// [`super::diff`] reports only real changes, not keys that merely moved from implicit
    /// default to explicit.
    pub fn to_value(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or_default()
    }
}

impl ProviderConfig {
    /// The base URL to use: `baseUrl`, else [`ANTHROPIC_DEFAULT_BASE_URL`] for
    /// `anthropic-messages`, else `None` (validation requires `baseUrl` for
    /// `openai-completions`; `exec` and `echo` have none).
    pub fn effective_base_url(&self) -> Option<&str> {
        match (&self.base_url, self.api) {
            (Some(url), _) => Some(url.as_str()),
            (None, ProviderApi::AnthropicMessages) => Some(ANTHROPIC_DEFAULT_BASE_URL),
            (None, _) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::model::{AgentEntryConfig, ModelSelection, ModelSelectionFull};

    fn entry(default: bool, model: Option<&str>) -> AgentEntryConfig {
        AgentEntryConfig { default, model: model.map(|m| ModelSelection::Ref(m.into())), ..Default::default() }
    }

    #[test]
    fn default_agent_selection() {
        let mut cfg = Config::default();
        assert_eq!(cfg.default_agent_id().as_str(), "main");
        cfg.agents.entries.insert("zed".into(), entry(false, None));
        cfg.agents.entries.insert("beta".into(), entry(false, None));
        assert_eq!(cfg.default_agent_id().as_str(), "beta");
        cfg.agents.entries.insert("zed".into(), entry(true, None));
        assert_eq!(cfg.default_agent_id().as_str(), "zed");
    }

    #[test]
    fn per_agent_values_fall_back_to_defaults() {
        let mut cfg = Config::default();
        let main = AgentId::default();
        let ops = AgentId::new("ops");
        assert!(cfg.agent_model_chain(&main).is_empty());
        cfg.agents.defaults.model = Some(ModelSelection::Full(ModelSelectionFull {
            primary: "openai/a".into(),
            fallbacks: vec!["openai/b".into()],
        }));
        cfg.agents.defaults.system_prompt = Some("be brief".into());
        let mut e = entry(false, Some("anthropic/c"));
        e.timeout_seconds = Some(5);
        e.history_limit = Some(7);
        cfg.agents.entries.insert("ops".into(), e);
        assert_eq!(cfg.agent_model_chain(&main), ["openai/a", "openai/b"]);
        assert_eq!(cfg.agent_model_chain(&ops), ["anthropic/c"]);
        assert_eq!(cfg.agent_system_prompt(&ops).as_deref(), Some("be brief"));
        assert_eq!(cfg.agent_timeout_ms(&main), 600_000);
        assert_eq!(cfg.agent_timeout_ms(&ops), 5_000);
        assert_eq!(cfg.agent_history_limit(&main), 50);
        assert_eq!(cfg.agent_history_limit(&ops), 7);
    }

    #[test]
    fn queue_mode_by_channel() {
        let mut cfg = Config::default();
        cfg.messages.queue.mode = QueueMode::Collect;
        cfg.messages.queue.by_channel.insert("discord".into(), QueueMode::Interrupt);
        assert_eq!(cfg.queue_mode_for("discord"), QueueMode::Interrupt);
        assert_eq!(cfg.queue_mode_for("telegram"), QueueMode::Collect);
    }

    #[test]
    fn model_refs_split() {
        assert_eq!(split_model_ref("echo"), Some(("echo", "echo")));
        assert_eq!(split_model_ref("openai/gpt-4o"), Some(("openai", "gpt-4o")));
        assert_eq!(split_model_ref("openrouter/meta/llama"), Some(("openrouter", "meta/llama")));
        assert_eq!(split_model_ref("gpt-4o"), None);
        assert_eq!(split_model_ref("/x"), None);
        assert_eq!(split_model_ref("x/"), None);
    }
}
