//! `channels.discord`: the typed section of the Discord channel (reference §3, the Discord row
//! of the per-platform table), its account resolution and the Discord wake policy (§5).
//!
//! Account resolution follows OpenClaw: with no `accounts` map the base section is the
//! `default` account; with one, every listed account inherits the base keys and its own
//! values win. Scalars and lists are replaced as a whole; `dm`, `implicitMentions`,
//! `healthMonitor` and `intents` are merged flag by flag; `guilds` is replaced as a whole.
//! The environment variable `DISCORD_BOT_TOKEN` supplies the token of the `default` account
//! when none is configured (never of a named account).
//!
//! Discord ids (snowflakes) may be written as strings or as JSON numbers; they are kept as
//! exact decimal strings. Guild and channel keys of `guilds` are ids (channel-name "slugs"
//! are not resolved) or `"*"`.

use super::model::{ChannelDefaultsConfig, DmPolicy, EnabledFlag, GroupPolicy, ImplicitMentionsConfig, ReplyToMode};
use crate::message::{ChatKind, Inbound};
use crate::wake::{AllowBots, ImplicitMentions, MentionGate, WakePolicy};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize, Serializer};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::fmt;

/// Default `apiRoot`: Discord's REST API, version 10.
pub const DISCORD_DEFAULT_API_ROOT: &str = "https://discord.com/api/v10";
/// Default and maximum `textChunkLimit` (Discord's message content limit, in chars).
pub const DISCORD_TEXT_CHUNK_LIMIT: usize = 2000;
/// Environment variable holding the `default` account's bot token.
pub const DISCORD_TOKEN_ENV: &str = "DISCORD_BOT_TOKEN";
/// The account id used when `channels.discord` has no `accounts` map.
pub const DISCORD_DEFAULT_ACCOUNT: &str = "default";

/// A Discord id (snowflake) in config: written as a string (`"123"`, or `"*"` where a
/// wildcard is allowed) or as a JSON integer; kept as the exact decimal string.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(from = "IdRepr", into = "String")]
pub struct DiscordId(pub String);

impl DiscordId {
    /// The id as written (decimal digits, or `*`).
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl From<DiscordId> for String {
    fn from(id: DiscordId) -> String {
        id.0
    }
}

impl From<&str> for DiscordId {
    fn from(s: &str) -> Self {
        DiscordId(s.to_string())
    }
}

/// Wire form of [`DiscordId`]: a string or a non-negative integer.
#[derive(Deserialize, JsonSchema)]
#[serde(untagged)]
enum IdRepr {
    /// `"123456789012345678"` or `"*"`.
    Text(String),
    /// `123456789012345678` (JSON5 integers are exact up to 2^63).
    Number(u64),
}

impl From<IdRepr> for DiscordId {
    fn from(r: IdRepr) -> Self {
        match r {
            IdRepr::Text(s) => DiscordId(s.trim().to_string()),
            IdRepr::Number(n) => DiscordId(n.to_string()),
        }
    }
}

impl JsonSchema for DiscordId {
    fn schema_name() -> String {
        "DiscordId".into()
    }

    fn json_schema(gen: &mut schemars::gen::SchemaGenerator) -> schemars::schema::Schema {
        IdRepr::json_schema(gen)
    }
}

/// `allowBots`: `false` (default), `true`, or `"mentions"`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum AllowBotsConfig {
    /// `false`: bot authors are dropped; `true`: treated like people.
    Flag(bool),
    /// `"mentions"`: bot authors wake the agent only with an explicit mention.
    Mode(AllowBotsMode),
}

/// The string form of `allowBots`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum AllowBotsMode {
    /// Only messages that mention the bot.
    Mentions,
}

impl From<AllowBotsConfig> for AllowBots {
    fn from(c: AllowBotsConfig) -> Self {
        match c {
            AllowBotsConfig::Flag(false) => AllowBots::Off,
            AllowBotsConfig::Flag(true) => AllowBots::On,
            AllowBotsConfig::Mode(AllowBotsMode::Mentions) => AllowBots::Mentions,
        }
    }
}

/// `channels.discord[.accounts.<id>].dm`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DiscordDmConfig {
    /// `false` drops every DM (as `dmPolicy: "disabled"`). Default true.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    /// Group DMs (accepted for OpenClaw compatibility; bot accounts cannot join group DMs, so
    /// this has no effect). Default false.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group_enabled: Option<bool>,
}

/// `channels.discord[.accounts.<id>].intents`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DiscordIntentsConfig {
    /// Request the privileged `MESSAGE_CONTENT` intent (it must also be enabled for the bot
    /// in the Discord developer portal, or the gateway closes with 4014). Default true.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message_content: Option<bool>,
}

/// `channels.discord[.accounts.<id>].guilds.<guildId>` (key: a guild id or `"*"`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DiscordGuildConfig {
    /// Display label of the guild (informational).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slug: Option<String>,
    /// Whether a mention is needed in this guild (a channel entry wins). Default true.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub require_mention: Option<bool>,
    /// User ids allowed to wake the agent in this guild (unset or empty: everyone).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub users: Option<Vec<DiscordId>>,
    /// Channels by id (or `"*"`). When present, it is an allowlist: only listed channels
    /// (and threads under them) are answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channels: Option<BTreeMap<String, DiscordGuildChannelConfig>>,
}

/// `channels.discord[.accounts.<id>].guilds.<guildId>.channels.<channelId>`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DiscordGuildChannelConfig {
    /// `false` disables the channel (and its threads), under every `groupPolicy`. Default
    /// true.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    /// Whether a mention is needed in this channel (wins over the guild). Default: the
    /// guild's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub require_mention: Option<bool>,
    /// User ids allowed here (wins over the guild's `users`; empty: everyone).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub users: Option<Vec<DiscordId>>,
}

/// Defines the Discord section struct and the account struct with the same keys.
macro_rules! discord_keys {
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
            /// Bot token (use `${DISCORD_BOT_TOKEN}`; the `default` account falls back to that
            /// variable when no token is set).
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub token: Option<String>,
            /// DM policy. Default `pairing`.
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub dm_policy: Option<DmPolicy>,
            /// User ids allowed to DM the agent, or `"*"` (required for `dmPolicy: "open"`).
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub allow_from: Option<Vec<DiscordId>>,
            /// DM switches.
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub dm: Option<DiscordDmConfig>,
            /// Guild policy. Default `channels.defaults.groupPolicy`, else `allowlist`.
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub group_policy: Option<GroupPolicy>,
            /// Guilds by id (or `"*"`): the allowlist for `groupPolicy: "allowlist"`, and the
            /// per-guild/per-channel mention and user settings.
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub guilds: Option<BTreeMap<String, DiscordGuildConfig>>,
            /// Messages from other bots: `false` (default), `true`, or `"mentions"`.
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub allow_bots: Option<AllowBotsConfig>,
            /// Native replies to the inbound message. Default `off`.
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub reply_to_mode: Option<ReplyToMode>,
            /// Max chars per message, 1-2000. Default 2000.
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub text_chunk_limit: Option<usize>,
            /// Implicit-mention flags (account → channel → `channels.defaults`; default true).
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub implicit_mentions: Option<ImplicitMentionsConfig>,
            /// REST API root, `<http|https>://<host[:port]>/api/v10` (pincer extension, for
            /// proxies and tests). Default `https://discord.com/api/v10`.
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub api_root: Option<String>,
            /// Gateway WebSocket URL (`ws://` or `wss://`, pincer extension). Default: asked
            /// from `GET /gateway/bot`.
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub gateway_url: Option<String>,
            /// The health monitor may restart this account. Default true.
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub health_monitor: Option<EnabledFlag>,
            /// Gateway intents.
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub intents: Option<DiscordIntentsConfig>,
            $($extra)*
        }
    };
}

discord_keys!(
    /// `channels.discord`: the Discord bot channel. The base keys are the `default` account
    /// when there is no `accounts` map, and are inherited by every account otherwise.
    DiscordChannelConfig {
        /// Named accounts; each inherits the base keys and overrides them.
        #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
        pub accounts: BTreeMap<String, DiscordAccountConfig>,
    }
);

discord_keys!(
    /// `channels.discord.accounts.<id>`: the same keys as the base section.
    DiscordAccountConfig {}
);

/// A guild entry with every id resolved to a string.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ResolvedDiscordGuild {
    /// `slug`.
    pub slug: Option<String>,
    /// `requireMention` of the guild entry, if set.
    pub require_mention: Option<bool>,
    /// `users`, if set.
    pub users: Option<Vec<String>>,
    /// `channels`, if set (an allowlist).
    pub channels: Option<BTreeMap<String, ResolvedDiscordGuildChannel>>,
}

/// A guild channel entry.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ResolvedDiscordGuildChannel {
    /// `enabled` (`None` = enabled).
    pub enabled: Option<bool>,
    /// `requireMention`, if set.
    pub require_mention: Option<bool>,
    /// `users`, if set.
    pub users: Option<Vec<String>>,
}

/// One enabled Discord account with every value resolved (account → base section →
/// `channels.defaults` → built-in default). Its JSON is the account's connection fingerprint:
/// the token is serialized as a SHA-256 prefix (`sha256:<16 hex>`), never in clear, and
/// `Debug` redacts it.
#[derive(Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ResolvedDiscordAccount {
    /// Account id (`default` without an `accounts` map).
    pub account_id: String,
    /// Display name.
    pub name: Option<String>,
    /// Bot token, without the `Bot ` prefix. Secret: never log it.
    #[serde(serialize_with = "serialize_token_hash")]
    pub token: String,
    /// `dmPolicy`.
    pub dm_policy: DmPolicy,
    /// `allowFrom` (user ids or `*`).
    pub allow_from: Vec<String>,
    /// `dm.enabled`.
    pub dm_enabled: bool,
    /// `dm.groupEnabled` (no effect for bot accounts).
    pub dm_group_enabled: bool,
    /// `groupPolicy`.
    pub group_policy: GroupPolicy,
    /// `guilds`, keyed by guild id or `*`.
    pub guilds: BTreeMap<String, ResolvedDiscordGuild>,
    /// `allowBots`.
    pub allow_bots: AllowBots,
    /// `replyToMode`.
    pub reply_to_mode: ReplyToMode,
    /// `textChunkLimit`, in chars.
    pub text_chunk_limit: usize,
    /// Implicit-mention flags.
    pub implicit: ImplicitMentions,
    /// REST API root (no trailing slash).
    pub api_root: String,
    /// Gateway URL override (no trailing slash); `None` = ask `GET /gateway/bot`.
    pub gateway_url: Option<String>,
    /// `healthMonitor.enabled`.
    pub health_monitor: bool,
    /// `intents.messageContent`.
    pub message_content_intent: bool,
}

impl fmt::Debug for ResolvedDiscordAccount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResolvedDiscordAccount")
            .field("account_id", &self.account_id)
            .field("token", &"<redacted>")
            .field("dm_policy", &self.dm_policy)
            .field("group_policy", &self.group_policy)
            .field("api_root", &self.api_root)
            .field("gateway_url", &self.gateway_url)
            .finish_non_exhaustive()
    }
}

/// `sha256:` followed by the first 16 hex digits of the SHA-256 of `token`: identifies a token
/// (fingerprints, resume state) without revealing it.
pub fn discord_token_digest(token: &str) -> String {
    let digest = hex::encode(Sha256::digest(token.as_bytes()));
    format!("sha256:{}", &digest[..16])
}

fn serialize_token_hash<S: Serializer>(token: &str, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&discord_token_digest(token))
}

/// A configured, enabled account that cannot run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiscordAccountProblem {
    /// Account id.
    pub account_id: String,
    /// What is wrong.
    pub message: String,
}

/// The problem message of an enabled account without a token.
pub const DISCORD_NO_TOKEN: &str =
    "no token: set channels.discord.token (or DISCORD_BOT_TOKEN for the default account)";

fn ids(list: &[DiscordId]) -> Vec<String> {
    list.iter().map(|i| i.0.clone()).collect()
}

fn resolve_guilds(guilds: &BTreeMap<String, DiscordGuildConfig>) -> BTreeMap<String, ResolvedDiscordGuild> {
    guilds
        .iter()
        .map(|(id, g)| {
            let channels = g.channels.as_ref().map(|chs| {
                chs.iter()
                    .map(|(cid, c)| {
                        let rc = ResolvedDiscordGuildChannel {
                            enabled: c.enabled,
                            require_mention: c.require_mention,
                            users: c.users.as_deref().map(ids),
                        };
                        (cid.trim().to_string(), rc)
                    })
                    .collect()
            });
            let rg = ResolvedDiscordGuild {
                slug: g.slug.clone(),
                require_mention: g.require_mention,
                users: g.users.as_deref().map(ids),
                channels,
            };
            (id.trim().to_string(), rg)
        })
        .collect()
}

impl DiscordChannelConfig {
    /// The base keys as an account (for the implicit `default` account).
    fn base_as_account(&self) -> DiscordAccountConfig {
        DiscordAccountConfig {
            enabled: self.enabled,
            name: self.name.clone(),
            token: self.token.clone(),
            dm_policy: self.dm_policy,
            allow_from: self.allow_from.clone(),
            dm: self.dm.clone(),
            group_policy: self.group_policy,
            guilds: self.guilds.clone(),
            allow_bots: self.allow_bots,
            reply_to_mode: self.reply_to_mode,
            text_chunk_limit: self.text_chunk_limit,
            implicit_mentions: self.implicit_mentions.clone(),
            api_root: self.api_root.clone(),
            gateway_url: self.gateway_url.clone(),
            health_monitor: self.health_monitor.clone(),
            intents: self.intents.clone(),
        }
    }

    /// The accounts of this section as `(id, account keys)` with the base keys not yet
    /// applied: the base itself as `default` when there is no `accounts` map.
    pub fn account_entries(&self) -> Vec<(String, DiscordAccountConfig)> {
        if self.accounts.is_empty() {
            vec![(DISCORD_DEFAULT_ACCOUNT.to_string(), self.base_as_account())]
        } else {
            self.accounts.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
        }
    }

    /// Resolve every enabled account, in account-id order. Disabled accounts (and every
    /// account when the section has `enabled: false`) are skipped. `env` looks up
    /// environment variables (only `DISCORD_BOT_TOKEN`, for the `default` account). An
    /// enabled account without a token is a [`DiscordAccountProblem`] ([`DISCORD_NO_TOKEN`]).
    pub fn resolved_accounts(
        &self,
        defaults: &ChannelDefaultsConfig,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Vec<Result<ResolvedDiscordAccount, DiscordAccountProblem>> {
        if self.enabled == Some(false) {
            return Vec::new();
        }
        self.account_entries()
            .into_iter()
            .filter(|(_, a)| a.enabled.or(self.enabled) != Some(false))
            .map(|(id, a)| {
                let non_empty =
                    |t: &Option<String>| t.as_deref().map(str::trim).filter(|t| !t.is_empty()).map(str::to_string);
                let mut token = non_empty(&a.token).or_else(|| non_empty(&self.token));
                if token.is_none() && id == DISCORD_DEFAULT_ACCOUNT {
                    token = non_empty(&env(DISCORD_TOKEN_ENV));
                }
                let Some(token) = token else {
                    return Err(DiscordAccountProblem { account_id: id, message: DISCORD_NO_TOKEN.to_string() });
                };
                let token = token.strip_prefix("Bot ").map(|t| t.trim().to_string()).unwrap_or(token);
                Ok(ResolvedDiscordAccount { token, ..self.resolve_settings(id, &a, defaults) })
            })
            .collect()
    }

    /// The resolved settings of enabled account `account_id` for policy lookups (wake policy,
    /// `replyToMode`), without requiring a token: `token` is empty. `None` when the account
    /// is not configured or is disabled.
    pub fn policy_account(&self, account_id: &str, defaults: &ChannelDefaultsConfig) -> Option<ResolvedDiscordAccount> {
        if self.enabled == Some(false) {
            return None;
        }
        let (id, a) = if self.accounts.is_empty() {
            (account_id == DISCORD_DEFAULT_ACCOUNT).then(|| (account_id.to_string(), self.base_as_account()))?
        } else {
            self.accounts.get(account_id).map(|a| (account_id.to_string(), a.clone()))?
        };
        (a.enabled.or(self.enabled) != Some(false)).then(|| self.resolve_settings(id, &a, defaults))
    }

    /// Every value of one account except the token (left empty).
    fn resolve_settings(
        &self,
        account_id: String,
        a: &DiscordAccountConfig,
        defaults: &ChannelDefaultsConfig,
    ) -> ResolvedDiscordAccount {
        let dm = |f: fn(&DiscordDmConfig) -> Option<bool>| a.dm.as_ref().and_then(f).or(self.dm.as_ref().and_then(f));
        let implicit = |f: fn(&ImplicitMentionsConfig) -> Option<bool>| {
            a.implicit_mentions
                .as_ref()
                .and_then(f)
                .or(self.implicit_mentions.as_ref().and_then(f))
                .or(f(&defaults.implicit_mentions))
                .unwrap_or(true)
        };
        let trim_slash = |s: &str| s.trim().trim_end_matches('/').to_string();
        ResolvedDiscordAccount {
            name: a.name.clone().or_else(|| self.name.clone()),
            token: String::new(),
            dm_policy: a.dm_policy.or(self.dm_policy).unwrap_or_default(),
            allow_from: a.allow_from.as_deref().or(self.allow_from.as_deref()).map(ids).unwrap_or_default(),
            dm_enabled: dm(|d| d.enabled).unwrap_or(true),
            dm_group_enabled: dm(|d| d.group_enabled).unwrap_or(false),
            group_policy: a.group_policy.or(self.group_policy).or(defaults.group_policy).unwrap_or_default(),
            guilds: a.guilds.as_ref().or(self.guilds.as_ref()).map(resolve_guilds).unwrap_or_default(),
            allow_bots: a.allow_bots.or(self.allow_bots).map(AllowBots::from).unwrap_or_default(),
            reply_to_mode: a.reply_to_mode.or(self.reply_to_mode).unwrap_or_default(),
            text_chunk_limit: a.text_chunk_limit.or(self.text_chunk_limit).unwrap_or(DISCORD_TEXT_CHUNK_LIMIT),
            implicit: ImplicitMentions {
                reply_to_bot: implicit(|i| i.reply_to_bot),
                quoted_bot: implicit(|i| i.quoted_bot),
                thread_participation: implicit(|i| i.thread_participation),
            },
            api_root: a
                .api_root
                .as_deref()
                .or(self.api_root.as_deref())
                .map(trim_slash)
                .unwrap_or_else(|| DISCORD_DEFAULT_API_ROOT.to_string()),
            gateway_url: a.gateway_url.as_deref().or(self.gateway_url.as_deref()).map(trim_slash),
            health_monitor: a
                .health_monitor
                .as_ref()
                .and_then(|h| h.enabled)
                .or(self.health_monitor.as_ref().and_then(|h| h.enabled))
                .unwrap_or(true),
            message_content_intent: a
                .intents
                .as_ref()
                .and_then(|i| i.message_content)
                .or(self.intents.as_ref().and_then(|i| i.message_content))
                .unwrap_or(true),
            account_id,
        }
    }
}

fn listed(users: &[String], id: &str) -> bool {
    users.iter().any(|u| u == id || u == "*")
}

/// The wake policy of one Discord message (reference §5) for `account`. Pure.
///
/// - DMs (`ChatKind::Direct`): `dm.enabled: false` → `dmPolicy: disabled`; the sender is
///   allowed when `allowFrom` holds its id or `"*"`.
/// - Guild messages: the guild entry is `guilds[guildId]`, else `guilds["*"]`. The
///   conversation is listed when there is a guild entry and, if it has a `channels` map, the
///   message's channel has an entry there: the thread's own id, then its channel
///   (`peer_id`, the parent for threads), then `parent_peer_id`, then `"*"`. A matching
///   channel entry with `enabled: false` disables the conversation under every
///   `groupPolicy`. The sender allowlist is the channel entry's `users` if set, else the
///   guild entry's (empty or unset: everyone; `"*"` matches everyone). `requireMention`:
///   channel entry > `channels["*"]` > guild entry > `guilds["*"]` > true.
pub fn discord_wake_policy(account: &ResolvedDiscordAccount, inbound: &Inbound) -> WakePolicy {
    let mut policy = WakePolicy {
        allow_bots: account.allow_bots,
        implicit: account.implicit,
        dm_policy: account.dm_policy,
        group_policy: account.group_policy,
        ..WakePolicy::default()
    };
    if inbound.chat_kind == ChatKind::Direct {
        if !account.dm_enabled {
            policy.dm_policy = DmPolicy::Disabled;
        }
        policy.dm_sender_allowed = listed(&account.allow_from, &inbound.author.id);
        return policy;
    }
    let wildcard_guild = account.guilds.get("*");
    let guild = inbound.guild_id.as_deref().and_then(|g| account.guilds.get(g)).or(wildcard_guild);
    let channel_keys =
        [inbound.thread_id.as_deref(), Some(inbound.peer_id.as_str()), inbound.parent_peer_id.as_deref()];
    let channel = guild
        .and_then(|g| g.channels.as_ref())
        .and_then(|chs| channel_keys.iter().flatten().find_map(|k| chs.get(*k)).or_else(|| chs.get("*")));
    let channel_disabled = channel.is_some_and(|c| c.enabled == Some(false));
    policy.group_listed = match guild {
        None => false,
        Some(g) if g.channels.is_some() => channel.is_some() && !channel_disabled,
        Some(_) => true,
    };
    if channel_disabled {
        policy.group_policy = GroupPolicy::Disabled;
    }
    let users = channel.and_then(|c| c.users.as_ref()).or(guild.and_then(|g| g.users.as_ref()));
    policy.group_sender_allowed = users.is_none_or(|u| u.is_empty() || listed(u, &inbound.author.id));
    let wildcard_channel = guild.and_then(|g| g.channels.as_ref()).and_then(|chs| chs.get("*"));
    let require_mention = channel
        .and_then(|c| c.require_mention)
        .or(wildcard_channel.and_then(|c| c.require_mention))
        .or(guild.and_then(|g| g.require_mention))
        .or(wildcard_guild.and_then(|g| g.require_mention))
        .unwrap_or(true);
    policy.gate = if require_mention { MentionGate::Required } else { MentionGate::Off };
    policy
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::{AccountId, ChannelId};
    use crate::message::{Author, MentionFacts};

    fn parse(json: serde_json::Value) -> DiscordChannelConfig {
        serde_json::from_value(json).unwrap()
    }

    fn no_env(_: &str) -> Option<String> {
        None
    }

    fn resolve_all(cfg: &DiscordChannelConfig) -> Vec<Result<ResolvedDiscordAccount, DiscordAccountProblem>> {
        cfg.resolved_accounts(&ChannelDefaultsConfig::default(), &no_env)
    }

    fn one(json: serde_json::Value) -> ResolvedDiscordAccount {
        let mut all = resolve_all(&parse(json));
        assert_eq!(all.len(), 1);
        all.remove(0).unwrap()
    }

    #[test]
    fn base_section_is_the_default_account_with_defaults() {
        let a = one(serde_json::json!({"token": "Bot abc"}));
        assert_eq!(a.account_id, "default");
        assert_eq!(a.token, "abc", "the Bot prefix is stripped");
        assert_eq!(a.dm_policy, DmPolicy::Pairing);
        assert!(a.dm_enabled && !a.dm_group_enabled);
        assert_eq!(a.group_policy, GroupPolicy::Allowlist);
        assert_eq!(a.allow_bots, AllowBots::Off);
        assert_eq!(a.reply_to_mode, ReplyToMode::Off);
        assert_eq!(a.text_chunk_limit, 2000);
        assert_eq!(a.implicit, ImplicitMentions::default());
        assert_eq!(a.api_root, DISCORD_DEFAULT_API_ROOT);
        assert_eq!(a.gateway_url, None);
        assert!(a.health_monitor && a.message_content_intent);
    }

    #[test]
    fn accounts_inherit_and_override_base_keys() {
        let cfg = parse(serde_json::json!({
            "token": "base-token",
            "dmPolicy": "allowlist",
            "allowFrom": [123456789012345678u64, "42"],
            "dm": {"enabled": false},
            "allowBots": "mentions",
            "implicitMentions": {"replyToBot": false},
            "guilds": {"1": {"requireMention": false}},
            "accounts": {
                "work": {"token": "work-token", "dm": {"groupEnabled": true}, "allowBots": true,
                         "implicitMentions": {"threadParticipation": false}},
                "play": {"guilds": {"2": {}}, "replyToMode": "first", "textChunkLimit": 1500,
                         "apiRoot": "http://127.0.0.1:9/api/v10/", "healthMonitor": {"enabled": false},
                         "intents": {"messageContent": false}},
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
        assert_eq!(play.token, "base-token");
        assert_eq!(work.token, "work-token");
        assert_eq!(work.allow_from, ["123456789012345678", "42"], "numbers become exact strings");
        assert_eq!(work.dm_policy, DmPolicy::Allowlist);
        assert!(!work.dm_enabled && work.dm_group_enabled, "dm merges flag by flag");
        assert_eq!(work.allow_bots, AllowBots::On);
        assert_eq!(play.allow_bots, AllowBots::Mentions);
        assert_eq!(
            work.implicit,
            ImplicitMentions { reply_to_bot: false, quoted_bot: false, thread_participation: false }
        );
        assert_eq!(
            play.implicit,
            ImplicitMentions { reply_to_bot: false, quoted_bot: false, thread_participation: true }
        );
        assert_eq!(work.group_policy, GroupPolicy::Open, "channels.defaults.groupPolicy");
        assert!(work.guilds.contains_key("1") && !play.guilds.contains_key("1"), "guilds replaced whole");
        assert_eq!(play.reply_to_mode, ReplyToMode::First);
        assert_eq!(play.text_chunk_limit, 1500);
        assert_eq!(play.api_root, "http://127.0.0.1:9/api/v10");
        assert!(!play.health_monitor && !play.message_content_intent);
        assert!(work.health_monitor && work.message_content_intent);
    }

    #[test]
    fn env_token_only_for_the_default_account_and_only_when_unset() {
        let env = |k: &str| (k == DISCORD_TOKEN_ENV).then(|| "env-token".to_string());
        let d = ChannelDefaultsConfig::default();
        let base = parse(serde_json::json!({}));
        assert_eq!(base.resolved_accounts(&d, &env)[0].as_ref().unwrap().token, "env-token");
        let set = parse(serde_json::json!({"token": "cfg"}));
        assert_eq!(set.resolved_accounts(&d, &env)[0].as_ref().unwrap().token, "cfg");
        let named = parse(serde_json::json!({"accounts": {"default": {}, "work": {}}}));
        let r = named.resolved_accounts(&d, &env);
        assert_eq!(r[0].as_ref().unwrap().token, "env-token");
        assert_eq!(r[1], Err(DiscordAccountProblem { account_id: "work".into(), message: DISCORD_NO_TOKEN.into() }));
        let empty = parse(serde_json::json!({"token": "  "}));
        assert!(resolve_all(&empty)[0].is_err(), "a blank token is no token");
        assert!(resolve_all(&parse(serde_json::json!({"enabled": false, "token": "x"}))).is_empty());
        let inherited_off = parse(serde_json::json!({"enabled": false, "accounts": {"a": {"token": "x"}}}));
        assert!(resolve_all(&inherited_off).is_empty());
    }

    #[test]
    fn policy_account_needs_no_token() {
        let d = ChannelDefaultsConfig::default();
        let base = parse(serde_json::json!({"dmPolicy": "allowlist"}));
        assert_eq!(base.policy_account("default", &d).unwrap().dm_policy, DmPolicy::Allowlist);
        assert!(base.policy_account("work", &d).is_none());
        let named =
            parse(serde_json::json!({"replyToMode": "all", "accounts": {"work": {}, "off": {"enabled": false}}}));
        assert_eq!(named.policy_account("work", &d).unwrap().reply_to_mode, ReplyToMode::All);
        assert!(named.policy_account("default", &d).is_none() && named.policy_account("off", &d).is_none());
    }

    #[test]
    fn fingerprint_json_hides_the_token_but_changes_with_it() {
        let a = one(serde_json::json!({"token": "secret-1"}));
        let b = one(serde_json::json!({"token": "secret-2"}));
        let ja = serde_json::to_string(&a).unwrap();
        assert!(!ja.contains("secret-1") && ja.contains("sha256:"));
        assert_ne!(ja, serde_json::to_string(&b).unwrap());
        assert_eq!(ja, serde_json::to_string(&one(serde_json::json!({"token": "secret-1"}))).unwrap());
        assert!(!format!("{a:?}").contains("secret-1"));
    }

    fn msg(kind: ChatKind, author: &str, guild: Option<&str>, peer: &str) -> Inbound {
        Inbound {
            channel: ChannelId::new("discord"),
            account: AccountId::default(),
            chat_kind: kind,
            peer_id: peer.into(),
            parent_peer_id: None,
            chat_id: peer.into(),
            guild_id: guild.map(str::to_string),
            team_id: None,
            member_roles: vec![],
            thread_id: None,
            author: Author { id: author.into(), ..Default::default() },
            message_id: "m1".into(),
            text: "hi".into(),
            ts_ms: 0,
            mentions: MentionFacts { can_detect: true, ..Default::default() },
        }
    }

    fn thread(mut m: Inbound, thread: &str, parent: &str) -> Inbound {
        m.peer_id = parent.into();
        m.parent_peer_id = Some(parent.into());
        m.thread_id = Some(thread.into());
        m.chat_id = thread.into();
        m
    }

    #[test]
    fn dm_policy_branches() {
        let dm = msg(ChatKind::Direct, "u1", None, "u1");
        let p = discord_wake_policy(&one(serde_json::json!({"token": "t"})), &dm);
        assert_eq!(p.dm_policy, DmPolicy::Pairing);
        assert!(!p.dm_sender_allowed);
        let p = discord_wake_policy(&one(serde_json::json!({"token": "t", "allowFrom": [1, "u1"]})), &dm);
        assert!(p.dm_sender_allowed);
        let p =
            discord_wake_policy(&one(serde_json::json!({"token": "t", "dmPolicy": "open", "allowFrom": ["*"]})), &dm);
        assert_eq!(p.dm_policy, DmPolicy::Open);
        assert!(p.dm_sender_allowed);
        let p = discord_wake_policy(
            &one(serde_json::json!({"token": "t", "dmPolicy": "open", "dm": {"enabled": false}})),
            &dm,
        );
        assert_eq!(p.dm_policy, DmPolicy::Disabled);
        let p = discord_wake_policy(
            &one(serde_json::json!({"token": "t", "allowBots": "mentions", "implicitMentions": {"replyToBot": false}})),
            &dm,
        );
        assert_eq!(p.allow_bots, AllowBots::Mentions);
        assert!(!p.implicit.reply_to_bot);
    }

    #[test]
    fn guild_listing_and_channel_allowlist() {
        let acc = one(serde_json::json!({"token": "t", "guilds": {
            "g1": {},
            "g2": {"channels": {"c1": {}, "c2": {"enabled": false}}},
        }}));
        let p = discord_wake_policy(&acc, &msg(ChatKind::Channel, "u", Some("g1"), "any"));
        assert!(p.group_listed && p.group_sender_allowed);
        assert_eq!(p.group_policy, GroupPolicy::Allowlist);
        assert_eq!(p.gate, MentionGate::Required, "default requireMention is true");
        assert!(!discord_wake_policy(&acc, &msg(ChatKind::Channel, "u", Some("g9"), "c1")).group_listed);
        assert!(discord_wake_policy(&acc, &msg(ChatKind::Channel, "u", Some("g2"), "c1")).group_listed);
        assert!(!discord_wake_policy(&acc, &msg(ChatKind::Channel, "u", Some("g2"), "c3")).group_listed);
        let off = discord_wake_policy(&acc, &msg(ChatKind::Channel, "u", Some("g2"), "c2"));
        assert!(!off.group_listed);
        assert_eq!(off.group_policy, GroupPolicy::Disabled, "enabled:false wins over every groupPolicy");
        let t = thread(msg(ChatKind::Channel, "u", Some("g2"), "x"), "t1", "c1");
        assert!(discord_wake_policy(&acc, &t).group_listed, "threads inherit their parent's entry");
        let t = thread(msg(ChatKind::Channel, "u", Some("g2"), "x"), "t1", "c3");
        assert!(!discord_wake_policy(&acc, &t).group_listed);

        let wild = one(serde_json::json!({"token": "t", "guilds": {"*": {"channels": {"*": {}}}}}));
        assert!(discord_wake_policy(&wild, &msg(ChatKind::Channel, "u", Some("g7"), "c7")).group_listed);
        let none = one(serde_json::json!({"token": "t", "groupPolicy": "open"}));
        let p = discord_wake_policy(&none, &msg(ChatKind::Channel, "u", Some("g1"), "c1"));
        assert!(!p.group_listed && p.group_sender_allowed);
        assert_eq!(p.group_policy, GroupPolicy::Open);
    }

    #[test]
    fn sender_allowlist_channel_over_guild() {
        let acc = one(serde_json::json!({"token": "t", "guilds": {
            "g1": {"users": ["a"], "channels": {"c1": {}, "c2": {"users": ["b"]}, "c3": {"users": []}}},
            "g2": {"users": ["*"]},
        }}));
        let allowed = |author: &str, g: &str, c: &str| {
            discord_wake_policy(&acc, &msg(ChatKind::Channel, author, Some(g), c)).group_sender_allowed
        };
        assert!(allowed("a", "g1", "c1") && !allowed("b", "g1", "c1"), "guild users apply");
        assert!(allowed("b", "g1", "c2") && !allowed("a", "g1", "c2"), "channel users win");
        assert!(allowed("z", "g1", "c3"), "an empty channel list admits everyone");
        assert!(allowed("z", "g2", "any"), "\"*\" admits everyone");
    }

    #[test]
    fn require_mention_precedence() {
        let acc = one(serde_json::json!({"token": "t", "guilds": {
            "*": {"requireMention": false},
            "g1": {"requireMention": true, "channels": {"c1": {"requireMention": false}, "c2": {}}},
            "g2": {"channels": {"*": {"requireMention": false}, "c1": {"requireMention": true}, "c9": {}}},
            "g3": {},
        }}));
        let gate = |g: &str, c: &str| discord_wake_policy(&acc, &msg(ChatKind::Channel, "u", Some(g), c)).gate;
        assert_eq!(gate("g1", "c1"), MentionGate::Off, "channel wins over guild");
        assert_eq!(gate("g1", "c2"), MentionGate::Required, "guild value");
        assert_eq!(gate("g2", "c1"), MentionGate::Required, "channel over channels[*]");
        assert_eq!(gate("g2", "c9"), MentionGate::Off, "channels[*] over guild and guilds[*]");
        assert_eq!(gate("g3", "c1"), MentionGate::Off, "guilds[*] when the guild says nothing");
        assert_eq!(gate("g4", "c1"), MentionGate::Off, "unlisted guild uses guilds[*]");
        let plain = one(serde_json::json!({"token": "t", "guilds": {"g1": {}}}));
        assert_eq!(
            discord_wake_policy(&plain, &msg(ChatKind::Channel, "u", Some("g1"), "c")).gate,
            MentionGate::Required
        );
    }

    fn load(text: &str) -> Result<crate::config::Loaded, Vec<String>> {
        let env = |k: &str| (k == "DISCORD_BOT_TOKEN").then(|| "from-env".to_string());
        crate::config::parse(text, &env).map_err(|e| e.errors().iter().map(ToString::to_string).collect())
    }

    #[test]
    fn loader_types_the_section_and_ignores_openclaw_only_keys_once() {
        let loaded = load(
            r#"{channels: {discord: {
                token: "${DISCORD_BOT_TOKEN}", applicationId: "1", historyLimit: 20, streaming: {mode: "off"},
                allowFrom: [123456789012345678], allowBots: "mentions",
                guilds: {"1": {ignoreOtherMentions: true, channels: {"2": {skills: ["x"], requireMention: false}}}},
                accounts: {work: {token: "w", maxLinesPerMessage: 17, dm: {groupChannels: ["3"]}}},
            }}}"#,
        )
        .unwrap();
        let warnings: Vec<String> = loaded.warnings.iter().map(ToString::to_string).collect();
        assert_eq!(
            warnings,
            [
                "channels.discord.accounts.work.dm.groupChannels: not supported by pincer; ignored",
                "channels.discord.accounts.work.maxLinesPerMessage: not supported by pincer; ignored",
                "channels.discord.applicationId: not supported by pincer; ignored",
                "channels.discord.guilds.1.channels.2.skills: not supported by pincer; ignored",
                "channels.discord.guilds.1.ignoreOtherMentions: not supported by pincer; ignored",
                "channels.discord.historyLimit: not supported by pincer; ignored",
                "channels.discord.streaming: not supported by pincer; ignored",
            ]
        );
        let d = loaded.config.channels.discord.unwrap();
        assert_eq!(d.token.as_deref(), Some("from-env"));
        assert_eq!(d.allow_from, Some(vec![DiscordId::from("123456789012345678")]));
        assert_eq!(d.allow_bots, Some(AllowBotsConfig::Mode(AllowBotsMode::Mentions)));
    }

    #[test]
    fn loader_reports_discord_errors_with_paths() {
        let errors = load(
            r#"{channels: {discord: {
                token: "t", dmPolicy: "open", allowFrom: ["1"], apiRoot: "ftp://x", gatewayUrl: "https://x",
                textChunkLimit: 2001, allowBots: "sometimes", groupAllowFrom: ["1"],
                accounts: {a: {textChunkLimit: 0}, b: {allowFrom: ["*"]}},
            }}}"#,
        )
        .unwrap_err();
        assert_eq!(
            errors,
            [
                "channels.discord.allowBots: expected one of mentions, got \"sometimes\"",
                "channels.discord.groupAllowFrom: unknown key",
            ],
            "structural errors first; semantic checks run on a well-typed document"
        );
        let errors = load(
            r#"{channels: {discord: {
                token: "t", dmPolicy: "open", allowFrom: ["1"], apiRoot: "ftp://x", gatewayUrl: "https://x",
                textChunkLimit: 2001, accounts: {a: {textChunkLimit: 0}, b: {allowFrom: ["*"]}},
            }}}"#,
        )
        .unwrap_err();
        assert_eq!(
            errors,
            [
                "channels.discord.accounts.a.allowFrom: dmPolicy \"open\" requires allowFrom to include \"*\"",
                "channels.discord.accounts.a.textChunkLimit: expected an integer 1-2000 (Discord's message limit), got 0",
                "channels.discord.apiRoot: expected an http:// or https:// URL, got \"ftp://x\"",
                "channels.discord.gatewayUrl: expected a ws:// or wss:// URL, got \"https://x\"",
                "channels.discord.textChunkLimit: expected an integer 1-2000 (Discord's message limit), got 2001",
            ]
        );
        assert!(load(r#"{channels: {discord: {token: "t", dmPolicy: "open", allowFrom: ["*"]}}}"#).is_ok());
        assert!(load(r#"{channels: {discord: {token: "t", dmPolicy: "open"}}}"#).is_err());
    }
}
