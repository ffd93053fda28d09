//! The config snapshot: one immutable value built from a validated config, published through
//! `ArcSwap`. Readers `load()` it once per message and never hold it across an await that
//! outlives their unit of work; a run keeps the `Arc` it started with until it ends.

use pincer_agent::AgentRunner;
use pincer_channels::{Catalog, ChannelSender};
use pincer_core::config::Config;
use pincer_core::wake::MentionPatterns;
use pincer_core::AgentId;
use std::collections::BTreeMap;
use std::sync::Arc;

pub use crate::channels::AccountKey;

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
    /// `catalog` is the channel catalog built from the same config (its senders are used).
    pub fn build(config: Config, hash: String, generation: u64, http: reqwest::Client, catalog: &Catalog) -> Snapshot {
        let mut problems = Vec::new();
        let runner = Arc::new(AgentRunner::new(&config.models.providers, http));
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
        let senders = catalog
            .accounts
            .iter()
            .map(|a| ((a.channel.as_str().to_string(), a.account.as_str().to_string()), a.sender.clone()))
            .collect();
        problems
            .extend(catalog.problems.iter().map(|p| format!("channels.{}.{}: {}", p.channel, p.account, p.message)));
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
