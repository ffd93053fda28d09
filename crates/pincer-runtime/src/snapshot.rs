//! The config snapshot: one immutable value built from a validated config, published through
//! `ArcSwap`. Readers `load()` it once per message and never hold it across an await that
//! outlives their unit of work; a run keeps the `Arc` it started with until it ends.

use pincer_agent::AgentRunner;
use pincer_channels::ChannelSender;
use pincer_core::config::Config;
use pincer_core::wake::MentionPatterns;
use pincer_core::AgentId;
use std::collections::BTreeMap;
use std::sync::Arc;

/// Key of a channel account: (channel id, account id).
pub type AccountKey = (String, String);

/// Everything derived from one config generation.
pub struct Snapshot {
    /// Monotonic generation number (1 at start, +1 per applied reload).
    pub generation: u64,
    /// The validated config.
    pub config: Arc<Config>,
    /// sha256 of the config text it came from (empty for the embedded defaults).
    pub hash: String,
    /// Model providers built from `models.providers`.
    pub runner: Arc<AgentRunner>,
    /// Outbound senders of the configured channel accounts.
    pub senders: BTreeMap<AccountKey, Arc<dyn ChannelSender>>,
    /// Compiled mention patterns per agent (agent entry patterns + `messages.groupChat`).
    pub patterns: BTreeMap<AgentId, Arc<MentionPatterns>>,
    /// Patterns used for agents without an entry.
    pub default_patterns: Arc<MentionPatterns>,
    /// Problems found while building (e.g. an invalid regex), shown in status.
    pub problems: Vec<String>,
}

impl Snapshot {
    /// Build a snapshot. Never fails: per-part problems are collected in `problems`.
    pub fn build(config: Config, hash: String, generation: u64, http: reqwest::Client) -> Snapshot {
        let mut problems = Vec::new();
        let runner = Arc::new(AgentRunner::new(&config.models.providers, http.clone()));
        let global = &config.messages.group_chat.mention_patterns;
        let compile = |pats: Vec<&String>, problems: &mut Vec<String>, who: &str| {
            MentionPatterns::new(pats.iter().map(|s| s.as_str())).unwrap_or_else(|e| {
                problems.push(format!("{who}: invalid mention pattern: {e}"));
                MentionPatterns::none()
            })
        };
        let default_patterns = Arc::new(compile(global.iter().collect(), &mut problems, "messages.groupChat"));
        let mut patterns = BTreeMap::new();
        for (id, entry) in &config.agents.entries {
            let pats: Vec<&String> = entry.group_chat.mention_patterns.iter().chain(global.iter()).collect();
            let who = format!("agents.entries.{id}.groupChat");
            patterns.insert(AgentId::new(id), Arc::new(compile(pats, &mut problems, &who)));
        }
        let senders = build_senders(&config, &http);
        Snapshot { generation, config: Arc::new(config), hash, runner, senders, patterns, default_patterns, problems }
    }

    /// Mention patterns for an agent.
    pub fn patterns_for(&self, agent: &AgentId) -> &MentionPatterns {
        self.patterns.get(agent).unwrap_or(&self.default_patterns)
    }

    /// The sender of a channel account.
    pub fn sender(&self, channel: &str, account: &str) -> Option<&Arc<dyn ChannelSender>> {
        self.senders.get(&(channel.to_string(), account.to_string()))
    }
}

#[allow(unused_variables)]
fn build_senders(config: &Config, http: &reqwest::Client) -> BTreeMap<AccountKey, Arc<dyn ChannelSender>> {
    #[allow(unused_mut)]
    let mut out: BTreeMap<AccountKey, Arc<dyn ChannelSender>> = BTreeMap::new();
    if let Some(webhook) = &config.channels.webhook {
        for acc in webhook.resolved_accounts() {
            let sender = pincer_channels::webhook::WebhookSender::new(
                http.clone(),
                acc.url,
                acc.headers,
                std::time::Duration::from_millis(acc.timeout_ms),
                acc.text_chunk_limit,
            );
            out.insert(("webhook".to_string(), acc.account_id), Arc::new(sender));
        }
    }
    out
}
