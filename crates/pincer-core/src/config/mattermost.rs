//! `channels.mattermost`: the typed section of the Mattermost channel (reference §3, the
//! Mattermost row of the per-platform table), its account resolution and the Mattermost wake
//! policy (§5).
//!
//! Account resolution follows OpenClaw: with no `accounts` map the base section is the
//! `default` account; with one, every listed account inherits the base keys and its own values
//! win. Scalars and lists are replaced as a whole; `implicitMentions`, `healthMonitor` and
//! `replyToModeByChatType` are merged flag by flag; `groups` is replaced as a whole. The
//! environment variables `MATTERMOST_BOT_TOKEN` and `MATTERMOST_URL` supply the token and the
//! server URL of the `default` account when none is configured (never of a named account).
//!
//! Mattermost ids (users, channels, posts) are 26-character strings and are compared exactly.
//! `allowFrom`, `groupAllowFrom` and `groups.*.allowFrom` also accept usernames (with or without
//! a leading `@`, compared case-insensitively, as Mattermost stores usernames in lowercase) and
//! `"*"`.

use super::discord::AllowBotsConfig;
use super::model::{ChannelDefaultsConfig, DmPolicy, EnabledFlag, GroupPolicy, ImplicitMentionsConfig, ReplyToMode};
use crate::message::{ChatKind, Inbound};
use crate::wake::{AllowBots, ImplicitMentions, MentionGate, WakePolicy};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize, Serializer};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::fmt;

/// Default `textChunkLimit`, in chars.
pub const MATTERMOST_TEXT_CHUNK_LIMIT: usize = 4000;
/// Largest `textChunkLimit`: the server's post limit (`PostMessageMaxRunesV2`, 65535 / 4
/// Unicode scalar values).
pub const MATTERMOST_MAX_POST_CHARS: usize = 16383;
/// Default `oncharPrefixes`.
pub const MATTERMOST_DEFAULT_ONCHAR_PREFIXES: [&str; 2] = [">", "!"];
/// Default WebSocket `ping` interval, in ms (reference §6: every 30 s).
pub const MATTERMOST_PING_INTERVAL_MS: u64 = 30_000;
/// Default time a `ping` may stay unanswered before the socket counts as dead, in ms
/// (reference §6: 10 s).
pub const MATTERMOST_PONG_TIMEOUT_MS: u64 = 10_000;
/// Environment variable holding the `default` account's bot token.
pub const MATTERMOST_TOKEN_ENV: &str = "MATTERMOST_BOT_TOKEN";
/// Environment variable holding the `default` account's server URL.
pub const MATTERMOST_URL_ENV: &str = "MATTERMOST_URL";
/// The account id used when `channels.mattermost` has no `accounts` map.
pub const MATTERMOST_DEFAULT_ACCOUNT: &str = "default";
/// The problem message of an enabled account without a bot token.
pub const MATTERMOST_NO_TOKEN: &str =
    "no bot token: set channels.mattermost.botToken (or MATTERMOST_BOT_TOKEN for the default account)";
/// The problem message of an enabled account without a server URL.
pub const MATTERMOST_NO_BASE_URL: &str =
    "no baseUrl: set channels.mattermost.baseUrl (or MATTERMOST_URL for the default account)";

/// `chatmode`: when the bot answers in channels and groups (DMs follow `dmPolicy`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Chatmode {
    /// Only when mentioned (`@bot`, a mention pattern or an implicit mention). Default.
    #[default]
    Oncall,
    /// Every message.
    Onmessage,
    /// Messages that start with one of `oncharPrefixes`; mentions still work.
    Onchar,
    /// Never in channels and groups (DMs still follow `dmPolicy`). A pincer value: OpenClaw
    /// has no such mode.
    Off,
}

/// `channels.mattermost[.accounts.<id>].groups.<channelId>` (key: a channel id or `"*"`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MattermostGroupConfig {
    /// Whether a mention is needed in this channel (wins over `groups["*"]`, the account's
    /// `requireMention` and `chatmode`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub require_mention: Option<bool>,
    /// User ids or usernames allowed to wake the agent here (wins over `groups["*"]` and
    /// `groupAllowFrom`; empty: everyone).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_from: Option<Vec<String>>,
}

/// `replyToModeByChatType`: `replyToMode` per conversation kind.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ReplyToModeByChatTypeConfig {
    /// DMs (`D` channels). Unset: DMs stay flat (`off`), whatever `replyToMode` says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub direct: Option<ReplyToMode>,
    /// Group messages and private channels (`G`, `P`). Unset: `replyToMode`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<ReplyToMode>,
    /// Public channels (`O`). Unset: `replyToMode`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channel: Option<ReplyToMode>,
}

/// Defines the Mattermost section struct and the account struct with the same keys.
macro_rules! mattermost_keys {
    ($(#[$m:meta])* $name:ident { $($extra:tt)* }) => {
        $(#[$m])*
        #[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
        #[serde(rename_all = "camelCase", deny_unknown_fields)]
        pub struct $name {
            /// Switch (default true when the section exists).
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub enabled: Option<bool>,
            /// Display name of the account.
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub name: Option<String>,
            /// Server URL, `http(s)://host[:port][/path]`; a trailing `/api/v4` is stripped.
            /// The `default` account falls back to `MATTERMOST_URL`.
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub base_url: Option<String>,
            /// Bot access token (use `${MATTERMOST_BOT_TOKEN}`; the `default` account falls back
            /// to that variable when no token is set).
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub bot_token: Option<String>,
            /// When the bot answers in channels and groups. Default `oncall`.
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub chatmode: Option<Chatmode>,
            /// Prefixes of chatmode `onchar`. Default `[">", "!"]`.
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub onchar_prefixes: Option<Vec<String>>,
            /// Whether a mention is needed in channels and groups (wins over `chatmode`;
            /// `groups` entries win over it).
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub require_mention: Option<bool>,
            /// Channels by id (or `"*"`): the allowlist for `groupPolicy: "allowlist"`, and
            /// the per-channel mention and sender settings.
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub groups: Option<BTreeMap<String, MattermostGroupConfig>>,
            /// DM policy. Default `pairing`.
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub dm_policy: Option<DmPolicy>,
            /// User ids or usernames allowed to DM the agent, or `"*"` (required for
            /// `dmPolicy: "open"`).
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub allow_from: Option<Vec<String>>,
            /// Channel and group policy. Default `channels.defaults.groupPolicy`, else
            /// `allowlist`.
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub group_policy: Option<GroupPolicy>,
            /// User ids or usernames allowed to wake the agent in channels and groups (unset or
            /// empty: everyone).
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub group_allow_from: Option<Vec<String>>,
            /// Implicit-mention flags (account → channel → `channels.defaults`; default true).
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub implicit_mentions: Option<ImplicitMentionsConfig>,
            /// Threaded replies to top-level posts in channels and groups. Default `off`
            /// (replies still go into the thread of an inbound thread reply).
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub reply_to_mode: Option<ReplyToMode>,
            /// `replyToMode` per conversation kind.
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub reply_to_mode_by_chat_type: Option<ReplyToModeByChatTypeConfig>,
            /// Max chars per post, 1-16383. Default 4000.
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub text_chunk_limit: Option<usize>,
            /// Messages from other bots: `false` (default), `true`, or `"mentions"`.
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub allow_bots: Option<AllowBotsConfig>,
            /// The health monitor may restart this account. Default true.
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub health_monitor: Option<EnabledFlag>,
            /// WebSocket `ping` interval in ms, at least 1 (pincer extension). Default 30000.
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub ping_interval_ms: Option<u64>,
            /// How long a `ping` may stay unanswered before the socket is dropped as dead, in
            /// ms, at least 1 (pincer extension). Default 10000.
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub pong_timeout_ms: Option<u64>,
            $($extra)*
        }
    };
}

mattermost_keys!(
    /// `channels.mattermost`: Mattermost bot accounts (WebSocket events + REST API v4). The
    /// base keys are the `default` account when there is no `accounts` map, and are inherited
    /// by every account otherwise.
    MattermostChannelConfig {
        /// Named accounts; each inherits the base keys and overrides them.
        #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
        pub accounts: BTreeMap<String, MattermostAccountConfig>,
    }
);

mattermost_keys!(
    /// `channels.mattermost.accounts.<id>`: the same keys as the base section.
    MattermostAccountConfig {}
);

/// A `groups` entry, resolved.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ResolvedMattermostGroup {
    /// `requireMention`, if set.
    pub require_mention: Option<bool>,
    /// `allowFrom`, if set.
    pub allow_from: Option<Vec<String>>,
}

/// `replyToModeByChatType`, resolved (flag by flag, account over base).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ResolvedReplyToModeByChatType {
    /// `direct`, if set.
    pub direct: Option<ReplyToMode>,
    /// `group`, if set.
    pub group: Option<ReplyToMode>,
    /// `channel`, if set.
    pub channel: Option<ReplyToMode>,
}

/// One enabled Mattermost account with every value resolved (account → base section →
/// `channels.defaults` → built-in default). Its JSON shows the token as a SHA-256 prefix
/// (`sha256:<16 hex>`), never in clear, and `Debug` redacts it. The connection fingerprint is
/// [`ResolvedMattermostAccount::connection_fingerprint`], not this whole value: policy keys
/// (`chatmode`, `groups`, ...) are read per message from the current config, so changing them
/// keeps the connection.
#[derive(Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ResolvedMattermostAccount {
    /// Account id (`default` without an `accounts` map).
    pub account_id: String,
    /// Display name.
    pub name: Option<String>,
    /// Server URL without a trailing `/` or `/api/v4`, e.g. `https://chat.example.com`; empty
    /// in [`MattermostChannelConfig::policy_account`] results when none is configured.
    pub base_url: String,
    /// Bot access token. Secret: never log it.
    #[serde(serialize_with = "serialize_token_hash")]
    pub bot_token: String,
    /// `chatmode`.
    pub chatmode: Chatmode,
    /// `oncharPrefixes`.
    pub onchar_prefixes: Vec<String>,
    /// `requireMention` of the account (or base section), if set.
    pub require_mention: Option<bool>,
    /// `groups`, keyed by channel id or `*`.
    pub groups: BTreeMap<String, ResolvedMattermostGroup>,
    /// `dmPolicy`.
    pub dm_policy: DmPolicy,
    /// `allowFrom` (user ids, usernames or `*`).
    pub allow_from: Vec<String>,
    /// `groupPolicy`.
    pub group_policy: GroupPolicy,
    /// `groupAllowFrom` (user ids, usernames or `*`; empty: everyone).
    pub group_allow_from: Vec<String>,
    /// Implicit-mention flags.
    pub implicit: ImplicitMentions,
    /// `replyToMode` as configured.
    pub reply_to_mode: ReplyToMode,
    /// `replyToModeByChatType`.
    pub reply_to_mode_by_chat_type: ResolvedReplyToModeByChatType,
    /// `textChunkLimit`, in chars.
    pub text_chunk_limit: usize,
    /// `allowBots`.
    pub allow_bots: AllowBots,
    /// `healthMonitor.enabled`.
    pub health_monitor: bool,
    /// `pingIntervalMs`.
    pub ping_interval_ms: u64,
    /// `pongTimeoutMs`.
    pub pong_timeout_ms: u64,
}

impl fmt::Debug for ResolvedMattermostAccount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResolvedMattermostAccount")
            .field("account_id", &self.account_id)
            .field("base_url", &self.base_url)
            .field("bot_token", &"<redacted>")
            .field("chatmode", &self.chatmode)
            .field("dm_policy", &self.dm_policy)
            .field("group_policy", &self.group_policy)
            .finish_non_exhaustive()
    }
}

/// What a Mattermost connection depends on (see
/// [`ResolvedMattermostAccount::connection_fingerprint`]).
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ConnectionKeys<'a> {
    account_id: &'a str,
    base_url: &'a str,
    bot_token: String,
    health_monitor: bool,
    ping_interval_ms: u64,
    pong_timeout_ms: u64,
}

impl ResolvedMattermostAccount {
    /// Canonical JSON of what the account's connection depends on: account id, `baseUrl`, the
    /// token digest, `healthMonitor.enabled`, `pingIntervalMs` and `pongTimeoutMs`. A reload
    /// that changes only policy keys (`chatmode`, `groups`, `dmPolicy`, `replyToMode`,
    /// `textChunkLimit` ...) leaves it unchanged, so the connection is kept.
    pub fn connection_fingerprint(&self) -> String {
        let keys = ConnectionKeys {
            account_id: &self.account_id,
            base_url: &self.base_url,
            bot_token: mattermost_token_digest(&self.bot_token),
            health_monitor: self.health_monitor,
            ping_interval_ms: self.ping_interval_ms,
            pong_timeout_ms: self.pong_timeout_ms,
        };
        serde_json::to_string(&keys).unwrap_or_default()
    }

    /// The effective `replyToMode` for a conversation of `kind`: `replyToModeByChatType.<kind>`
    /// if set; else `off` for DMs (they stay flat) and `replyToMode` for groups and channels.
    /// `first` is returned as `all`: in Mattermost a reply either is in a thread or is not, so
    /// once the first chunk starts a thread under the inbound post, the other chunks must go
    /// into that thread too (reference §5: "`all`/`batched` ≈ `first`").
    pub fn reply_to_mode_for(&self, kind: ChatKind) -> ReplyToMode {
        let by_kind = match kind {
            ChatKind::Direct => self.reply_to_mode_by_chat_type.direct,
            ChatKind::Group => self.reply_to_mode_by_chat_type.group,
            ChatKind::Channel => self.reply_to_mode_by_chat_type.channel,
        };
        let mode = match (by_kind, kind) {
            (Some(m), _) => m,
            (None, ChatKind::Direct) => ReplyToMode::Off,
            (None, _) => self.reply_to_mode,
        };
        match mode {
            ReplyToMode::First => ReplyToMode::All,
            m => m,
        }
    }
}

/// `sha256:` followed by the first 16 hex digits of the SHA-256 of `token`: identifies a
/// Mattermost token (fingerprints, resume state) without revealing it.
pub fn mattermost_token_digest(token: &str) -> String {
    let digest = hex::encode(Sha256::digest(token.as_bytes()));
    format!("sha256:{}", &digest[..16])
}

fn serialize_token_hash<S: Serializer>(token: &str, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&mattermost_token_digest(token))
}

/// `baseUrl` normalised: trimmed, without trailing `/` and without a trailing `/api/v4`.
pub fn normalize_mattermost_base_url(url: &str) -> String {
    let mut u = url.trim().trim_end_matches('/');
    if let Some(stripped) = u.strip_suffix("/api/v4") {
        u = stripped.trim_end_matches('/');
    }
    u.to_string()
}

/// Whether a normalised `baseUrl` is `http://` or `https://` followed by a host.
pub fn mattermost_base_url_is_valid(url: &str) -> bool {
    let rest = url.strip_prefix("http://").or_else(|| url.strip_prefix("https://"));
    rest.is_some_and(|r| {
        let host = r.split('/').next().unwrap_or("");
        !host.is_empty() && !host.contains(['@', '?', '#', ' '])
    })
}

/// A configured, enabled account that cannot run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MattermostAccountProblem {
    /// Account id.
    pub account_id: String,
    /// What is wrong.
    pub message: String,
}

fn resolve_groups(groups: &BTreeMap<String, MattermostGroupConfig>) -> BTreeMap<String, ResolvedMattermostGroup> {
    groups
        .iter()
        .map(|(id, g)| {
            let rg = ResolvedMattermostGroup { require_mention: g.require_mention, allow_from: g.allow_from.clone() };
            (id.trim().to_string(), rg)
        })
        .collect()
}

impl MattermostChannelConfig {
    /// The base keys as an account (for the implicit `default` account and the checks).
    pub(crate) fn base_as_account(&self) -> MattermostAccountConfig {
        MattermostAccountConfig {
            enabled: self.enabled,
            name: self.name.clone(),
            base_url: self.base_url.clone(),
            bot_token: self.bot_token.clone(),
            chatmode: self.chatmode,
            onchar_prefixes: self.onchar_prefixes.clone(),
            require_mention: self.require_mention,
            groups: self.groups.clone(),
            dm_policy: self.dm_policy,
            allow_from: self.allow_from.clone(),
            group_policy: self.group_policy,
            group_allow_from: self.group_allow_from.clone(),
            implicit_mentions: self.implicit_mentions.clone(),
            reply_to_mode: self.reply_to_mode,
            reply_to_mode_by_chat_type: self.reply_to_mode_by_chat_type.clone(),
            text_chunk_limit: self.text_chunk_limit,
            allow_bots: self.allow_bots,
            health_monitor: self.health_monitor.clone(),
            ping_interval_ms: self.ping_interval_ms,
            pong_timeout_ms: self.pong_timeout_ms,
        }
    }

    /// The accounts of this section as `(id, account keys)` with the base keys not yet
    /// applied: the base itself as `default` when there is no `accounts` map.
    pub fn account_entries(&self) -> Vec<(String, MattermostAccountConfig)> {
        if self.accounts.is_empty() {
            vec![(MATTERMOST_DEFAULT_ACCOUNT.to_string(), self.base_as_account())]
        } else {
            self.accounts.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
        }
    }

    /// Resolve every enabled account, in account-id order. Disabled accounts (and every
    /// account when the section has `enabled: false`) are skipped. `env` looks up environment
    /// variables (only `MATTERMOST_BOT_TOKEN` and `MATTERMOST_URL`, for the `default` account).
    /// Problems: no token ([`MATTERMOST_NO_TOKEN`]), no server URL
    /// ([`MATTERMOST_NO_BASE_URL`]), a server URL that is not http(s).
    pub fn resolved_accounts(
        &self,
        defaults: &ChannelDefaultsConfig,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Vec<Result<ResolvedMattermostAccount, MattermostAccountProblem>> {
        if self.enabled == Some(false) {
            return Vec::new();
        }
        self.account_entries()
            .into_iter()
            .filter(|(_, a)| a.enabled.or(self.enabled) != Some(false))
            .map(|(id, a)| {
                let non_empty =
                    |t: &Option<String>| t.as_deref().map(str::trim).filter(|t| !t.is_empty()).map(str::to_string);
                let is_default = id == MATTERMOST_DEFAULT_ACCOUNT;
                let mut token = non_empty(&a.bot_token).or_else(|| non_empty(&self.bot_token));
                if token.is_none() && is_default {
                    token = non_empty(&env(MATTERMOST_TOKEN_ENV));
                }
                let mut url = non_empty(&a.base_url).or_else(|| non_empty(&self.base_url));
                if url.is_none() && is_default {
                    url = non_empty(&env(MATTERMOST_URL_ENV));
                }
                let problem = |message: String| MattermostAccountProblem { account_id: id.clone(), message };
                let Some(token) = token else {
                    return Err(problem(MATTERMOST_NO_TOKEN.to_string()));
                };
                let Some(url) = url else {
                    return Err(problem(MATTERMOST_NO_BASE_URL.to_string()));
                };
                let base_url = normalize_mattermost_base_url(&url);
                if !mattermost_base_url_is_valid(&base_url) {
                    return Err(problem(format!("baseUrl must be an http:// or https:// URL, got \"{url}\"")));
                }
                let settings = self.resolve_settings(id.clone(), &a, defaults);
                Ok(ResolvedMattermostAccount { bot_token: token, base_url, ..settings })
            })
            .collect()
    }

    /// The resolved settings of enabled account `account_id` for policy lookups (wake policy,
    /// `replyToMode`), without requiring a token or URL: `bot_token` is empty and `base_url`
    /// is the configured one (normalised) or empty. `None` when the account is not configured
    /// or is disabled.
    pub fn policy_account(
        &self,
        account_id: &str,
        defaults: &ChannelDefaultsConfig,
    ) -> Option<ResolvedMattermostAccount> {
        if self.enabled == Some(false) {
            return None;
        }
        let a = if self.accounts.is_empty() {
            (account_id == MATTERMOST_DEFAULT_ACCOUNT).then(|| self.base_as_account())?
        } else {
            self.accounts.get(account_id).cloned()?
        };
        (a.enabled.or(self.enabled) != Some(false)).then(|| self.resolve_settings(account_id.to_string(), &a, defaults))
    }

    /// Every value of one account except the token (left empty); `base_url` is the configured
    /// one, normalised, or empty.
    fn resolve_settings(
        &self,
        account_id: String,
        a: &MattermostAccountConfig,
        defaults: &ChannelDefaultsConfig,
    ) -> ResolvedMattermostAccount {
        let implicit = |f: fn(&ImplicitMentionsConfig) -> Option<bool>| {
            a.implicit_mentions
                .as_ref()
                .and_then(f)
                .or(self.implicit_mentions.as_ref().and_then(f))
                .or(f(&defaults.implicit_mentions))
                .unwrap_or(true)
        };
        let by_kind = |f: fn(&ReplyToModeByChatTypeConfig) -> Option<ReplyToMode>| {
            a.reply_to_mode_by_chat_type.as_ref().and_then(f).or(self.reply_to_mode_by_chat_type.as_ref().and_then(f))
        };
        ResolvedMattermostAccount {
            name: a.name.clone().or_else(|| self.name.clone()),
            base_url: a
                .base_url
                .as_deref()
                .or(self.base_url.as_deref())
                .map(normalize_mattermost_base_url)
                .unwrap_or_default(),
            bot_token: String::new(),
            chatmode: a.chatmode.or(self.chatmode).unwrap_or_default(),
            onchar_prefixes: a
                .onchar_prefixes
                .clone()
                .or_else(|| self.onchar_prefixes.clone())
                .unwrap_or_else(|| MATTERMOST_DEFAULT_ONCHAR_PREFIXES.iter().map(|p| p.to_string()).collect()),
            require_mention: a.require_mention.or(self.require_mention),
            groups: a.groups.as_ref().or(self.groups.as_ref()).map(resolve_groups).unwrap_or_default(),
            dm_policy: a.dm_policy.or(self.dm_policy).unwrap_or_default(),
            allow_from: a.allow_from.clone().or_else(|| self.allow_from.clone()).unwrap_or_default(),
            group_policy: a.group_policy.or(self.group_policy).or(defaults.group_policy).unwrap_or_default(),
            group_allow_from: a.group_allow_from.clone().or_else(|| self.group_allow_from.clone()).unwrap_or_default(),
            implicit: ImplicitMentions {
                reply_to_bot: implicit(|i| i.reply_to_bot),
                quoted_bot: implicit(|i| i.quoted_bot),
                thread_participation: implicit(|i| i.thread_participation),
            },
            reply_to_mode: a.reply_to_mode.or(self.reply_to_mode).unwrap_or_default(),
            reply_to_mode_by_chat_type: ResolvedReplyToModeByChatType {
                direct: by_kind(|b| b.direct),
                group: by_kind(|b| b.group),
                channel: by_kind(|b| b.channel),
            },
            text_chunk_limit: a.text_chunk_limit.or(self.text_chunk_limit).unwrap_or(MATTERMOST_TEXT_CHUNK_LIMIT),
            allow_bots: a.allow_bots.or(self.allow_bots).map(AllowBots::from).unwrap_or_default(),
            health_monitor: a
                .health_monitor
                .as_ref()
                .and_then(|h| h.enabled)
                .or(self.health_monitor.as_ref().and_then(|h| h.enabled))
                .unwrap_or(true),
            ping_interval_ms: a.ping_interval_ms.or(self.ping_interval_ms).unwrap_or(MATTERMOST_PING_INTERVAL_MS),
            pong_timeout_ms: a.pong_timeout_ms.or(self.pong_timeout_ms).unwrap_or(MATTERMOST_PONG_TIMEOUT_MS),
            account_id,
        }
    }
}

/// True when `list` admits the author: an exact user id, `"*"`, or the username (a leading
/// `@` ignored, case-insensitive).
fn admits(list: &[String], user_id: &str, username: Option<&str>) -> bool {
    list.iter().any(|entry| {
        let entry = entry.trim();
        if entry == "*" || entry == user_id {
            return true;
        }
        let name = entry.strip_prefix('@').unwrap_or(entry);
        username.is_some_and(|u| {
            let u = u.strip_prefix('@').unwrap_or(u);
            !name.is_empty() && u.eq_ignore_ascii_case(name)
        })
    })
}

/// The wake policy of one Mattermost message (reference §5) for `account`. Pure.
///
/// - DMs (`ChatKind::Direct`): `dmPolicy`; the sender is allowed when `allowFrom` holds its
///   user id, its username or `"*"`.
/// - Channels and groups, keyed by the channel id (`peer_id`): listed (for `groupPolicy:
///   "allowlist"`) when `groups` has the channel id or `"*"`. The sender allowlist is
///   `groups.<id>.allowFrom` if set, else `groups["*"].allowFrom`, else `groupAllowFrom`
///   (empty or unset: everyone; ids, usernames or `"*"`).
/// - Mention gate: `chatmode: "off"` → [`MentionGate::Never`], whatever else is set (it is the
///   switch that silences the bot in every channel; DMs are unaffected). Otherwise
///   `groups.<id>.requireMention` > `groups["*"].requireMention` > the account's
///   `requireMention` (true → [`MentionGate::Required`], false → [`MentionGate::Off`]) > the
///   chatmode: `oncall` → `Required`, `onmessage` → `Off`, `onchar` →
///   [`MentionGate::Prefix`] with `oncharPrefixes` (mentions still wake).
/// - `allowBots` and the implicit-mention flags come from the account.
pub fn mattermost_wake_policy(account: &ResolvedMattermostAccount, inbound: &Inbound) -> WakePolicy {
    let mut policy = WakePolicy {
        allow_bots: account.allow_bots,
        implicit: account.implicit,
        dm_policy: account.dm_policy,
        group_policy: account.group_policy,
        ..WakePolicy::default()
    };
    let username = inbound.author.name.as_deref();
    if inbound.chat_kind == ChatKind::Direct {
        policy.dm_sender_allowed = admits(&account.allow_from, &inbound.author.id, username);
        return policy;
    }
    let group = account.groups.get(inbound.peer_id.as_str());
    let wildcard = account.groups.get("*");
    policy.group_listed = group.is_some() || wildcard.is_some();
    let senders = group
        .and_then(|g| g.allow_from.as_ref())
        .or(wildcard.and_then(|g| g.allow_from.as_ref()))
        .unwrap_or(&account.group_allow_from);
    policy.group_sender_allowed = senders.is_empty() || admits(senders, &inbound.author.id, username);
    let explicit =
        group.and_then(|g| g.require_mention).or(wildcard.and_then(|g| g.require_mention)).or(account.require_mention);
    policy.gate = match (account.chatmode, explicit) {
        (Chatmode::Off, _) => MentionGate::Never,
        (_, Some(true)) => MentionGate::Required,
        (_, Some(false)) => MentionGate::Off,
        (Chatmode::Oncall, None) => MentionGate::Required,
        (Chatmode::Onmessage, None) => MentionGate::Off,
        (Chatmode::Onchar, None) => MentionGate::Prefix(account.onchar_prefixes.clone()),
    };
    policy
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::{AccountId, ChannelId};
    use crate::message::{Author, MentionFacts};
    use crate::wake::{decide, DropReason, MentionPatterns, WakeDecision, WakeReason};
    use serde_json::json;

    fn parse(json: serde_json::Value) -> MattermostChannelConfig {
        serde_json::from_value(json).unwrap()
    }

    fn no_env(_: &str) -> Option<String> {
        None
    }

    fn resolve_all(cfg: &MattermostChannelConfig) -> Vec<Result<ResolvedMattermostAccount, MattermostAccountProblem>> {
        cfg.resolved_accounts(&ChannelDefaultsConfig::default(), &no_env)
    }

    fn one(json: serde_json::Value) -> ResolvedMattermostAccount {
        let mut all = resolve_all(&parse(json));
        assert_eq!(all.len(), 1);
        all.remove(0).unwrap()
    }

    fn base(extra: serde_json::Value) -> serde_json::Value {
        let mut v = json!({"botToken": "t", "baseUrl": "https://chat.example.com"});
        for (k, x) in extra.as_object().unwrap() {
            v[k] = x.clone();
        }
        v
    }

    #[test]
    fn base_section_is_the_default_account_with_defaults() {
        let a = one(json!({"botToken": " tok ", "baseUrl": "https://chat.example.com/api/v4/"}));
        assert_eq!(a.account_id, "default");
        assert_eq!(a.bot_token, "tok");
        assert_eq!(a.base_url, "https://chat.example.com");
        assert_eq!(a.chatmode, Chatmode::Oncall);
        assert_eq!(a.onchar_prefixes, [">", "!"]);
        assert_eq!(a.require_mention, None);
        assert_eq!(a.dm_policy, DmPolicy::Pairing);
        assert_eq!(a.group_policy, GroupPolicy::Allowlist);
        assert!(a.allow_from.is_empty() && a.group_allow_from.is_empty() && a.groups.is_empty());
        assert_eq!(a.implicit, ImplicitMentions::default());
        assert_eq!(a.reply_to_mode, ReplyToMode::Off);
        assert_eq!(a.text_chunk_limit, 4000);
        assert_eq!(a.allow_bots, AllowBots::Off);
        assert!(a.health_monitor);
        assert_eq!((a.ping_interval_ms, a.pong_timeout_ms), (30_000, 10_000));
    }

    #[test]
    fn base_url_normalisation_and_validity() {
        for (raw, want) in [
            ("https://chat.example.com", "https://chat.example.com"),
            ("https://chat.example.com/", "https://chat.example.com"),
            ("https://chat.example.com/api/v4", "https://chat.example.com"),
            ("http://127.0.0.1:8065/api/v4/", "http://127.0.0.1:8065"),
            (" https://host/mm/api/v4 ", "https://host/mm"),
        ] {
            assert_eq!(normalize_mattermost_base_url(raw), want, "{raw}");
            assert!(mattermost_base_url_is_valid(want), "{want}");
        }
        for bad in ["ftp://host", "host:8065", "http://", "https:///x", ""] {
            assert!(!mattermost_base_url_is_valid(&normalize_mattermost_base_url(bad)), "{bad}");
        }
    }

    #[test]
    fn accounts_inherit_and_override_base_keys() {
        let cfg = parse(json!({
            "botToken": "base-token",
            "baseUrl": "https://base.example.com",
            "chatmode": "onchar",
            "oncharPrefixes": ["?"],
            "dmPolicy": "allowlist",
            "allowFrom": ["alice"],
            "allowBots": "mentions",
            "implicitMentions": {"replyToBot": false},
            "replyToModeByChatType": {"direct": "all"},
            "groups": {"c1": {"requireMention": false}},
            "accounts": {
                "work": {"botToken": "work-token", "allowBots": true, "chatmode": "onmessage",
                         "implicitMentions": {"threadParticipation": false},
                         "replyToModeByChatType": {"channel": "first"}},
                "play": {"baseUrl": "http://127.0.0.1:9/api/v4", "groups": {"c2": {}}, "replyToMode": "first",
                         "textChunkLimit": 1500, "healthMonitor": {"enabled": false}, "pingIntervalMs": 50,
                         "pongTimeoutMs": 20, "groupAllowFrom": ["bob"]},
                "off": {"enabled": false},
            },
        }));
        let defaults = ChannelDefaultsConfig {
            group_policy: Some(GroupPolicy::Open),
            implicit_mentions: ImplicitMentionsConfig { quoted_bot: Some(false), ..Default::default() },
        };
        let all: Vec<_> = cfg.resolved_accounts(&defaults, &no_env).into_iter().map(Result::unwrap).collect();
        let ids: Vec<&str> = all.iter().map(|a| a.account_id.as_str()).collect();
        assert_eq!(ids, ["play", "work"], "disabled accounts are skipped; no implicit default");
        let (play, work) = (&all[0], &all[1]);
        assert_eq!((play.bot_token.as_str(), work.bot_token.as_str()), ("base-token", "work-token"));
        assert_eq!(play.base_url, "http://127.0.0.1:9");
        assert_eq!(work.base_url, "https://base.example.com");
        assert_eq!((play.chatmode, work.chatmode), (Chatmode::Onchar, Chatmode::Onmessage));
        assert_eq!(play.onchar_prefixes, ["?"]);
        assert_eq!(work.dm_policy, DmPolicy::Allowlist);
        assert_eq!(work.allow_from, ["alice"]);
        assert_eq!((play.allow_bots, work.allow_bots), (AllowBots::Mentions, AllowBots::On));
        assert_eq!(
            work.implicit,
            ImplicitMentions { reply_to_bot: false, quoted_bot: false, thread_participation: false }
        );
        assert_eq!(
            play.implicit,
            ImplicitMentions { reply_to_bot: false, quoted_bot: false, thread_participation: true }
        );
        assert_eq!(work.group_policy, GroupPolicy::Open, "channels.defaults.groupPolicy");
        assert!(work.groups.contains_key("c1") && !play.groups.contains_key("c1"), "groups replaced whole");
        assert_eq!(play.reply_to_mode, ReplyToMode::First);
        assert_eq!(
            work.reply_to_mode_by_chat_type,
            ResolvedReplyToModeByChatType {
                direct: Some(ReplyToMode::All),
                group: None,
                channel: Some(ReplyToMode::First)
            },
            "merged key by key"
        );
        assert_eq!(play.text_chunk_limit, 1500);
        assert!(!play.health_monitor && work.health_monitor);
        assert_eq!((play.ping_interval_ms, play.pong_timeout_ms), (50, 20));
        assert_eq!(play.group_allow_from, ["bob"]);
    }

    #[test]
    fn env_fills_the_default_account_only_and_only_when_unset() {
        let env = |k: &str| match k {
            MATTERMOST_TOKEN_ENV => Some("env-token".to_string()),
            MATTERMOST_URL_ENV => Some("https://env.example.com/api/v4".to_string()),
            _ => None,
        };
        let d = ChannelDefaultsConfig::default();
        let a = parse(json!({})).resolved_accounts(&d, &env).remove(0).unwrap();
        assert_eq!((a.bot_token.as_str(), a.base_url.as_str()), ("env-token", "https://env.example.com"));
        let set = parse(json!({"botToken": "cfg", "baseUrl": "http://cfg"}));
        let a = set.resolved_accounts(&d, &env).remove(0).unwrap();
        assert_eq!((a.bot_token.as_str(), a.base_url.as_str()), ("cfg", "http://cfg"));
        let named = parse(json!({"accounts": {"default": {}, "work": {}, "url": {"botToken": "x"}}}));
        let r = named.resolved_accounts(&d, &env);
        assert_eq!(r[0].as_ref().unwrap().bot_token, "env-token");
        assert_eq!(
            r[1],
            Err(MattermostAccountProblem { account_id: "url".into(), message: MATTERMOST_NO_BASE_URL.into() })
        );
        assert_eq!(
            r[2],
            Err(MattermostAccountProblem { account_id: "work".into(), message: MATTERMOST_NO_TOKEN.into() })
        );
        let bad = parse(json!({"botToken": "t", "baseUrl": "ftp://x"}));
        assert!(resolve_all(&bad)[0].as_ref().unwrap_err().message.contains("http:// or https://"));
        assert!(resolve_all(&parse(json!({"botToken": " ", "baseUrl": "http://h"})))[0].is_err(), "blank token");
        assert!(resolve_all(&parse(json!({"enabled": false, "botToken": "x", "baseUrl": "http://h"}))).is_empty());
        let inherited_off = parse(json!({"enabled": false, "accounts": {"a": {"botToken": "x"}}}));
        assert!(resolve_all(&inherited_off).is_empty());
    }

    #[test]
    fn policy_account_needs_no_token_or_url() {
        let d = ChannelDefaultsConfig::default();
        let cfg = parse(json!({"chatmode": "off"}));
        assert_eq!(cfg.policy_account("default", &d).unwrap().chatmode, Chatmode::Off);
        assert!(cfg.policy_account("work", &d).is_none());
        let named = parse(json!({"replyToMode": "all", "accounts": {"work": {}, "off": {"enabled": false}}}));
        assert_eq!(named.policy_account("work", &d).unwrap().reply_to_mode, ReplyToMode::All);
        assert!(named.policy_account("default", &d).is_none() && named.policy_account("off", &d).is_none());
    }

    #[test]
    fn fingerprint_covers_the_connection_only_and_hides_the_token() {
        let a = one(base(json!({"botToken": "secret-1"})));
        let fp = a.connection_fingerprint();
        assert!(!fp.contains("secret-1") && fp.contains("sha256:") && fp.contains("https://chat.example.com"));
        assert!(!format!("{a:?}").contains("secret-1"));
        assert!(!serde_json::to_string(&a).unwrap().contains("secret-1"));
        let policy_only = one(base(json!({"botToken": "secret-1", "chatmode": "onmessage", "groups": {"c": {}}})));
        assert_eq!(fp, policy_only.connection_fingerprint(), "policy keys keep the connection");
        for other in [
            base(json!({"botToken": "secret-2"})),
            base(json!({"botToken": "secret-1", "baseUrl": "https://other.example.com"})),
            base(json!({"botToken": "secret-1", "pingIntervalMs": 5})),
            base(json!({"botToken": "secret-1", "healthMonitor": {"enabled": false}})),
        ] {
            assert_ne!(fp, one(other).connection_fingerprint());
        }
    }

    #[test]
    fn reply_to_mode_by_chat_kind() {
        let a = one(base(json!({})));
        for kind in [ChatKind::Direct, ChatKind::Group, ChatKind::Channel] {
            assert_eq!(a.reply_to_mode_for(kind), ReplyToMode::Off);
        }
        let a = one(base(json!({"replyToMode": "first"})));
        assert_eq!(a.reply_to_mode_for(ChatKind::Direct), ReplyToMode::Off, "DMs stay flat");
        assert_eq!(a.reply_to_mode_for(ChatKind::Channel), ReplyToMode::All, "first is all in Mattermost");
        assert_eq!(a.reply_to_mode_for(ChatKind::Group), ReplyToMode::All);
        let a = one(base(json!({"replyToMode": "all", "replyToModeByChatType": {"direct": "first", "group": "off"}})));
        assert_eq!(a.reply_to_mode_for(ChatKind::Direct), ReplyToMode::All);
        assert_eq!(a.reply_to_mode_for(ChatKind::Group), ReplyToMode::Off);
        assert_eq!(a.reply_to_mode_for(ChatKind::Channel), ReplyToMode::All);
    }

    const BOT: &str = "bot0000000000000000000000a";

    fn msg(kind: ChatKind) -> Inbound {
        Inbound {
            channel: ChannelId::new("mattermost"),
            account: AccountId::default(),
            chat_kind: kind,
            peer_id: if kind == ChatKind::Direct { "u1".into() } else { "c1".into() },
            parent_peer_id: None,
            chat_id: if kind == ChatKind::Direct { "dm".into() } else { "c1".into() },
            guild_id: None,
            team_id: None,
            member_roles: vec![],
            thread_id: None,
            author: Author { id: "u1".into(), name: Some("alice".into()), ..Default::default() },
            message_id: "p1".into(),
            text: "hello".into(),
            ts_ms: 0,
            mentions: MentionFacts { can_detect: true, ..Default::default() },
        }
    }

    /// How a table row changes the default message.
    #[derive(Clone, Copy)]
    enum Tweak {
        OwnPost,
        BotAuthor,
        Mention,
        ReplyToBot,
        Thread,
        Text(&'static str),
        Author(&'static str, &'static str),
        Peer(&'static str),
    }

    fn apply(mut m: Inbound, t: Tweak) -> Inbound {
        match t {
            Tweak::OwnPost => {
                m.author.id = BOT.into();
                m.author.is_self = true;
                m.author.is_bot = true;
            }
            Tweak::BotAuthor => m.author.is_bot = true,
            Tweak::Mention => m.mentions.native = true,
            Tweak::ReplyToBot => m.mentions.reply_to_bot = true,
            Tweak::Thread => m.mentions.thread_participation = true,
            Tweak::Text(t) => m.text = t.into(),
            Tweak::Author(id, name) => m.author = Author { id: id.into(), name: Some(name.into()), ..m.author },
            Tweak::Peer(p) => {
                m.peer_id = p.into();
                m.chat_id = p.into();
            }
        }
        m
    }

    /// The wake decision of every reason through the Mattermost policy: `(why, config,
    /// chat kind, tweaks, expected)`.
    #[test]
    fn wake_table_covers_every_reason() {
        use ChatKind::{Channel, Direct, Group};
        use DropReason as D;
        use WakeDecision::{Drop, Wake};
        use WakeReason as W;
        let open = json!({"groupPolicy": "open"});
        let rows: Vec<(&str, serde_json::Value, ChatKind, Vec<Tweak>, WakeDecision)> = vec![
            // DMs.
            ("dm open", json!({"dmPolicy": "open", "allowFrom": ["*"]}), Direct, vec![], Wake(W::Direct)),
            (
                "dm allowlist by id",
                json!({"dmPolicy": "allowlist", "allowFrom": ["u1"]}),
                Direct,
                vec![],
                Wake(W::Direct),
            ),
            (
                "dm allowlist by @username",
                json!({"dmPolicy": "allowlist", "allowFrom": ["@Alice"]}),
                Direct,
                vec![],
                Wake(W::Direct),
            ),
            ("dm pairing but allowed", json!({"allowFrom": ["alice"]}), Direct, vec![], Wake(W::Direct)),
            (
                "dm allowlist refuses",
                json!({"dmPolicy": "allowlist", "allowFrom": ["bob"]}),
                Direct,
                vec![],
                Drop(D::DmNotAllowed),
            ),
            ("dm pairing unknown", json!({}), Direct, vec![], Drop(D::PairingRequired)),
            ("dm disabled", json!({"dmPolicy": "disabled", "allowFrom": ["*"]}), Direct, vec![], Drop(D::DmDisabled)),
            (
                "dm ignores chatmode off",
                json!({"chatmode": "off", "dmPolicy": "open", "allowFrom": ["*"]}),
                Direct,
                vec![],
                Wake(W::Direct),
            ),
            (
                "own post",
                json!({"dmPolicy": "open", "allowFrom": ["*"]}),
                Direct,
                vec![Tweak::OwnPost],
                Drop(D::OwnMessage),
            ),
            (
                "empty dm",
                json!({"dmPolicy": "open", "allowFrom": ["*"]}),
                Direct,
                vec![Tweak::Text("  ")],
                Drop(D::Empty),
            ),
            // Group policy.
            (
                "allowlist default, unlisted",
                json!({"chatmode": "onmessage"}),
                Channel,
                vec![],
                Drop(D::GroupNotAllowed),
            ),
            (
                "listed channel",
                json!({"chatmode": "onmessage", "groups": {"c1": {}}}),
                Channel,
                vec![],
                Wake(W::Always),
            ),
            ("wildcard listed", json!({"chatmode": "onmessage", "groups": {"*": {}}}), Group, vec![], Wake(W::Always)),
            (
                "other channel listed",
                json!({"chatmode": "onmessage", "groups": {"c2": {}}}),
                Channel,
                vec![],
                Drop(D::GroupNotAllowed),
            ),
            (
                "group disabled",
                json!({"groupPolicy": "disabled", "chatmode": "onmessage"}),
                Channel,
                vec![],
                Drop(D::GroupDisabled),
            ),
            (
                "sender not in groupAllowFrom",
                json!({"groupPolicy": "open", "chatmode": "onmessage", "groupAllowFrom": ["bob"]}),
                Channel,
                vec![],
                Drop(D::SenderNotAllowed),
            ),
            (
                "sender by username",
                json!({"groupPolicy": "open", "chatmode": "onmessage", "groupAllowFrom": ["alice"]}),
                Channel,
                vec![],
                Wake(W::Always),
            ),
            (
                "group allowFrom wins",
                json!({"chatmode": "onmessage", "groupAllowFrom": ["alice"], "groups": {"c1": {"allowFrom": ["bob"]}}}),
                Channel,
                vec![],
                Drop(D::SenderNotAllowed),
            ),
            (
                "wildcard allowFrom",
                json!({"chatmode": "onmessage", "groups": {"*": {"allowFrom": ["u1"]}}}),
                Channel,
                vec![],
                Wake(W::Always),
            ),
            (
                "empty group allowFrom admits all",
                json!({"chatmode": "onmessage", "groupAllowFrom": ["bob"], "groups": {"c1": {"allowFrom": []}}}),
                Channel,
                vec![],
                Wake(W::Always),
            ),
            // Mention gating by chatmode.
            ("oncall no mention", open.clone(), Channel, vec![], Drop(D::MissingMention)),
            ("oncall mention", open.clone(), Channel, vec![Tweak::Mention], Wake(W::Mention)),
            ("oncall pattern", open.clone(), Channel, vec![Tweak::Text("hey pincer, help")], Wake(W::Pattern)),
            ("oncall reply to bot", open.clone(), Channel, vec![Tweak::ReplyToBot], Wake(W::ReplyToBot)),
            (
                "replyToBot off",
                json!({"groupPolicy": "open", "implicitMentions": {"replyToBot": false}}),
                Channel,
                vec![Tweak::ReplyToBot],
                Drop(D::MissingMention),
            ),
            ("thread participation", open.clone(), Group, vec![Tweak::Thread], Wake(W::ThreadParticipation)),
            (
                "threadParticipation off",
                json!({"groupPolicy": "open", "implicitMentions": {"threadParticipation": false}}),
                Group,
                vec![Tweak::Thread],
                Drop(D::MissingMention),
            ),
            ("onmessage", json!({"groupPolicy": "open", "chatmode": "onmessage"}), Channel, vec![], Wake(W::Always)),
            (
                "onmessage + reply to bot wakes once as onmessage",
                json!({"groupPolicy": "open", "chatmode": "onmessage"}),
                Channel,
                vec![Tweak::ReplyToBot],
                Wake(W::Always),
            ),
            (
                "onchar prefix",
                json!({"groupPolicy": "open", "chatmode": "onchar"}),
                Channel,
                vec![Tweak::Text("!status")],
                Wake(W::Onchar),
            ),
            (
                "onchar custom prefix",
                json!({"groupPolicy": "open", "chatmode": "onchar", "oncharPrefixes": ["??"]}),
                Channel,
                vec![Tweak::Text("?? why")],
                Wake(W::Onchar),
            ),
            (
                "onchar mention still works",
                json!({"groupPolicy": "open", "chatmode": "onchar"}),
                Channel,
                vec![Tweak::Mention],
                Wake(W::Mention),
            ),
            (
                "onchar nothing",
                json!({"groupPolicy": "open", "chatmode": "onchar"}),
                Channel,
                vec![],
                Drop(D::OncharNotTriggered),
            ),
            (
                "chatmode off",
                json!({"groupPolicy": "open", "chatmode": "off"}),
                Channel,
                vec![Tweak::Mention],
                Drop(D::ChatmodeOff),
            ),
            (
                "chatmode off beats requireMention",
                json!({"chatmode": "off", "groups": {"c1": {"requireMention": false}}}),
                Channel,
                vec![],
                Drop(D::ChatmodeOff),
            ),
            // requireMention precedence: groups.<id> > groups["*"] > account > chatmode.
            (
                "account requireMention false beats oncall",
                json!({"groupPolicy": "open", "requireMention": false}),
                Channel,
                vec![],
                Wake(W::Always),
            ),
            (
                "account requireMention true beats onmessage",
                json!({"groupPolicy": "open", "chatmode": "onmessage", "requireMention": true}),
                Channel,
                vec![],
                Drop(D::MissingMention),
            ),
            (
                "wildcard beats account",
                json!({"requireMention": true, "groups": {"*": {"requireMention": false}}}),
                Channel,
                vec![],
                Wake(W::Always),
            ),
            (
                "group beats wildcard",
                json!({"groups": {"*": {"requireMention": false}, "c1": {"requireMention": true}}}),
                Channel,
                vec![],
                Drop(D::MissingMention),
            ),
            (
                "group entry beats onchar",
                json!({"chatmode": "onchar", "groups": {"c1": {"requireMention": false}}}),
                Channel,
                vec![],
                Wake(W::Always),
            ),
            (
                "other group's entry does not apply",
                json!({"groupPolicy": "open", "groups": {"c2": {"requireMention": false}}}),
                Channel,
                vec![Tweak::Peer("c1")],
                Drop(D::MissingMention),
            ),
            // Bot authors.
            (
                "bot author dropped",
                json!({"groupPolicy": "open", "chatmode": "onmessage"}),
                Channel,
                vec![Tweak::BotAuthor],
                Drop(D::BotAuthor),
            ),
            (
                "allowBots true",
                json!({"groupPolicy": "open", "chatmode": "onmessage", "allowBots": true}),
                Channel,
                vec![Tweak::BotAuthor],
                Wake(W::Always),
            ),
            (
                "allowBots mentions without mention",
                json!({"groupPolicy": "open", "allowBots": "mentions"}),
                Channel,
                vec![Tweak::BotAuthor, Tweak::ReplyToBot],
                Drop(D::BotAuthor),
            ),
            (
                "allowBots mentions with mention",
                json!({"groupPolicy": "open", "allowBots": "mentions"}),
                Channel,
                vec![Tweak::BotAuthor, Tweak::Mention],
                Wake(W::Mention),
            ),
            (
                "bots get no implicit mentions",
                json!({"groupPolicy": "open", "allowBots": true}),
                Channel,
                vec![Tweak::BotAuthor, Tweak::ReplyToBot],
                Drop(D::MissingMention),
            ),
            (
                "other author not allowed",
                json!({"groupPolicy": "open", "chatmode": "onmessage", "groupAllowFrom": ["u1"]}),
                Channel,
                vec![Tweak::Author("u2", "carol")],
                Drop(D::SenderNotAllowed),
            ),
        ];
        let patterns = MentionPatterns::new(["\\bpincer\\b"]).unwrap();
        let mut seen_wake = std::collections::BTreeSet::new();
        let mut seen_drop = std::collections::BTreeSet::new();
        for (why, cfg, kind, tweaks, want) in rows {
            let account = one(base(cfg));
            let m = tweaks.iter().fold(msg(kind), |m, t| apply(m, *t));
            let got = decide(&m, &mattermost_wake_policy(&account, &m), &patterns);
            assert_eq!(got, want, "{why}");
            match got {
                Wake(r) => seen_wake.insert(r.code()),
                Drop(r) => seen_drop.insert(r.code()),
            };
        }
        let wake: Vec<&str> = seen_wake.into_iter().collect();
        assert_eq!(wake, ["dm", "mention", "onchar", "onmessage", "pattern", "reply_to_bot", "thread_participation"]);
        let drop: Vec<&str> = seen_drop.into_iter().collect();
        assert_eq!(
            drop,
            [
                "bot_author",
                "chatmode_off",
                "dm_policy",
                "empty",
                "group_policy",
                "missing_mention",
                "pairing_required",
                "self",
                "sender_not_allowed"
            ],
            "every reason decide() can give (duplicate is the dedupe ledger's)"
        );
    }

    fn load(text: &str) -> Result<crate::config::Loaded, Vec<String>> {
        let env = |k: &str| (k == MATTERMOST_TOKEN_ENV).then(|| "from-env".to_string());
        crate::config::parse(text, &env).map_err(|e| e.errors().iter().map(ToString::to_string).collect())
    }

    #[test]
    fn loader_types_the_section_and_ignores_openclaw_only_keys() {
        let loaded = load(
            r#"{channels: {mattermost: {
                botToken: "${MATTERMOST_BOT_TOKEN}", baseUrl: "https://chat.example.com/api/v4",
                streaming: {mode: "partial"}, commands: {native: true}, chatmode: "onchar",
                groups: {abc: {requireMention: false, tools: {}}},
                accounts: {work: {botToken: "w", dmChannelRetry: {maxRetries: 3}, network: {}}},
            }}}"#,
        )
        .unwrap();
        let warnings: Vec<String> = loaded.warnings.iter().map(ToString::to_string).collect();
        assert_eq!(
            warnings,
            [
                "channels.mattermost.accounts.work.dmChannelRetry: not supported by pincer; ignored",
                "channels.mattermost.accounts.work.network: not supported by pincer; ignored",
                "channels.mattermost.commands: not supported by pincer; ignored",
                "channels.mattermost.groups.abc.tools: not supported by pincer; ignored",
                "channels.mattermost.streaming: not supported by pincer; ignored",
            ]
        );
        let m = loaded.config.channels.mattermost.unwrap();
        assert_eq!(m.bot_token.as_deref(), Some("from-env"));
        assert_eq!(m.chatmode, Some(Chatmode::Onchar));
    }

    #[test]
    fn loader_reports_mattermost_errors_with_paths() {
        let errors = load(
            r#"{channels: {mattermost: {
                botToken: "t", baseUrl: "ftp://x", dmPolicy: "open", allowFrom: ["u"], textChunkLimit: 16384,
                pingIntervalMs: 0, oncharPrefixes: [""],
                accounts: {a: {textChunkLimit: 0, pongTimeoutMs: 0}, b: {allowFrom: ["*"], baseUrl: "https://ok/api/v4"}},
            }}}"#,
        )
        .unwrap_err();
        assert_eq!(
            errors,
            [
                "channels.mattermost.accounts.a.allowFrom: dmPolicy \"open\" requires allowFrom to include \"*\"",
                "channels.mattermost.accounts.a.pongTimeoutMs: expected an integer >= 1, got 0",
                "channels.mattermost.accounts.a.textChunkLimit: expected an integer 1-16383 (Mattermost's post limit), got 0",
                "channels.mattermost.baseUrl: expected an http:// or https:// URL, got \"ftp://x\"",
                "channels.mattermost.oncharPrefixes.0: must not be empty",
                "channels.mattermost.pingIntervalMs: expected an integer >= 1, got 0",
                "channels.mattermost.textChunkLimit: expected an integer 1-16383 (Mattermost's post limit), got 16384",
            ]
        );
        assert!(load(r#"{channels: {mattermost: {chatmode: "sometimes"}}}"#).is_err());
        assert!(load(r#"{channels: {mattermost: {dmPolicy: "open", allowFrom: ["*"]}}}"#).is_ok());
        assert!(load(r#"{channels: {mattermost: {dmPolicy: "open"}}}"#).is_err());
    }
}
