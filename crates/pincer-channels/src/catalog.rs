//! The catalog: every channel account a config describes, built into runnable parts, plus the
//! per-channel policy lookups the runtime needs for each inbound message. The runtime rebuilds
//! the catalog on every reload and compares [`AccountSpec::fingerprint`]s to decide which
//! accounts keep their connection.

use crate::lifecycle::AccountRunner;
use crate::outbound::ChannelSender;
use pincer_core::config::{Config, ReplyToMode};
use pincer_core::wake::WakePolicy;
use pincer_core::{AccountId, ChannelId, Inbound};
use std::sync::Arc;

/// One configured, enabled channel account.
#[derive(Clone)]
pub struct AccountSpec {
    /// Channel id.
    pub channel: ChannelId,
    /// Account id.
    pub account: AccountId,
    /// Canonical JSON of everything the account's connection depends on. Two specs with the
    /// same fingerprint can share one live connection; a different fingerprint means the
    /// account is stopped (awaiting its close) and started again on reload.
    pub fingerprint: String,
    /// `healthMonitor.enabled` (account over channel; default true).
    pub health_monitor: bool,
    /// The connection logic; `None` for outbound-only channels (e.g. `webhook`).
    pub runner: Option<Arc<dyn AccountRunner>>,
    /// The outbound side, used by the delivery worker.
    pub sender: Arc<dyn ChannelSender>,
}

/// A configured account that could not be built (e.g. no token). Shown in status as
/// `lastError`, and reported as `failed` by a reload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AccountProblem {
    /// Channel id.
    pub channel: ChannelId,
    /// Account id.
    pub account: AccountId,
    /// What is wrong, e.g. `no token (set channels.discord.token or DISCORD_BOT_TOKEN)`.
    pub message: String,
}

/// Every account of a config.
#[derive(Clone, Default)]
pub struct Catalog {
    /// Accounts that can run.
    pub accounts: Vec<AccountSpec>,
    /// Accounts that are configured but cannot be built.
    pub problems: Vec<AccountProblem>,
}

/// Build the catalog of `config`. `env` looks up environment variables (the default account's
/// fallbacks such as `DISCORD_BOT_TOKEN`, `MATTERMOST_BOT_TOKEN`, `MATTERMOST_URL` and `MATRIX_*`); `http`
/// is the shared HTTP client for channels that use reqwest (webhook, Mattermost). Never
/// fails: per-account problems are collected.
#[allow(unused_variables, unused_mut)]
pub fn build(config: &Config, env: &dyn Fn(&str) -> Option<String>, http: &reqwest::Client) -> Catalog {
    let mut out = Catalog::default();
    #[cfg(feature = "channel-webhook")]
    if let Some(webhook) = &config.channels.webhook {
        for acc in webhook.resolved_accounts() {
            let fingerprint = format!("{acc:?}");
            let sender = crate::webhook::WebhookSender::new(
                http.clone(),
                acc.url,
                acc.headers,
                std::time::Duration::from_millis(acc.timeout_ms),
                acc.text_chunk_limit,
            );
            out.accounts.push(AccountSpec {
                channel: ChannelId::new("webhook"),
                account: AccountId::new(&acc.account_id),
                fingerprint,
                health_monitor: false,
                runner: None,
                sender: Arc::new(sender),
            });
        }
    }
    #[cfg(feature = "channel-discord")]
    for spec in crate::discord::build_accounts(config, env) {
        match spec {
            Ok(s) => out.accounts.push(s),
            Err(p) => out.problems.push(p),
        }
    }
    #[cfg(feature = "channel-mattermost")]
    for spec in crate::mattermost::build_accounts(config, env, http) {
        match spec {
            Ok(s) => out.accounts.push(s),
            Err(p) => out.problems.push(p),
        }
    }
    #[cfg(feature = "channel-matrix")]
    for spec in crate::matrix::build_accounts(config, env) {
        match spec {
            Ok(s) => out.accounts.push(s),
            Err(p) => out.problems.push(p),
        }
    }
    out
}

/// The wake policy for one inbound message, from the current config: the channel's
/// `dmPolicy`/`allowFrom`, `groupPolicy` and group map, mention gating, `allowBots` and the
/// implicit-mention flags. Channels without inbound policy get the permissive default.
#[allow(unused_variables)]
pub fn wake_policy(config: &Config, inbound: &Inbound) -> WakePolicy {
    match inbound.channel.as_str() {
        #[cfg(feature = "channel-discord")]
        "discord" => crate::discord::wake_policy(config, inbound),
        #[cfg(feature = "channel-mattermost")]
        "mattermost" => crate::mattermost::wake_policy(config, inbound),
        #[cfg(feature = "channel-matrix")]
        "matrix" => crate::matrix::wake_policy(config, inbound),
        _ => WakePolicy::default(),
    }
}

/// The `replyToMode` of a channel account (default `off`). For channels whose mode depends on
/// the conversation kind (Mattermost's `replyToModeByChatType`), this is the mode of channel
/// posts; prefer [`reply_to_mode_for`] when the inbound message is at hand.
#[allow(unused_variables)]
pub fn reply_to_mode(config: &Config, channel: &ChannelId, account: &AccountId) -> ReplyToMode {
    match channel.as_str() {
        #[cfg(feature = "channel-discord")]
        "discord" => crate::discord::reply_to_mode(config, account),
        #[cfg(feature = "channel-mattermost")]
        "mattermost" => crate::mattermost::reply_to_mode(config, account),
        #[cfg(feature = "channel-matrix")]
        "matrix" => crate::matrix::reply_to_mode(config, account),
        _ => ReplyToMode::Off,
    }
}

/// The `replyToMode` that applies to a reply to `inbound`: like [`reply_to_mode`], but per
/// conversation kind where the channel has `replyToModeByChatType` (Mattermost: DMs stay flat
/// unless `replyToModeByChatType.direct` is set).
pub fn reply_to_mode_for(config: &Config, inbound: &Inbound) -> ReplyToMode {
    match inbound.channel.as_str() {
        #[cfg(feature = "channel-mattermost")]
        "mattermost" => crate::mattermost::reply_to_mode_for_chat(config, &inbound.account, inbound.chat_kind),
        _ => reply_to_mode(config, &inbound.channel, &inbound.account),
    }
}

/// True when a reply under `replyToMode` opens a thread under the inbound message (Mattermost:
/// the reply's `root_id` is the post, and the conversation continues in that thread's session),
/// rather than only referencing it (Discord's `message_reference`). Matrix is not one of them: its
/// `replyToMode` adds an `m.in_reply_to` reference, and `threadReplies` (applied by the adapter,
/// which sets the inbound message's thread) decides where replies go.
pub fn replies_open_threads(channel: &ChannelId) -> bool {
    matches!(channel.as_str(), "mattermost")
}
