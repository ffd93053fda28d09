//! `channels.matrix`: the typed section of the Matrix channel (reference §3, the Matrix row of the
//! per-platform table), its account resolution and the Matrix wake policy (§5).
//!
//! Account resolution follows OpenClaw: with no `accounts` map the base section is the `default`
//! account; with one, every listed account inherits the base keys and its own values win.
//! Scalars and lists are replaced as a whole; `dm`, `implicitMentions` and `healthMonitor` are
//! merged key by key; `groups` (and its legacy spelling `rooms`) is replaced as a whole. The
//! environment variables `MATRIX_HOMESERVER`, `MATRIX_ACCESS_TOKEN`, `MATRIX_USER_ID` and
//! `MATRIX_PASSWORD` supply the `default` account's values when none is configured (never a
//! named account's).
//!
//! Matrix ids are opaque and case-sensitive: room ids (`!opaque` since room version 12, which has
//! no `:server` part, or `!opaque:server` before) and event ids (`$opaque`) are compared exactly
//! and never parsed or case-folded. `groups` keys are room ids, room aliases (`#name:server`,
//! matched against the room's canonical alias, which the adapter reports as the inbound
//! message's `parent_peer_id`) or `"*"`. User ids in `dm.allowFrom`, `groupAllowFrom`,
//! `groups.*.users` and `autoJoinAllowlist` are `@localpart:server` (a `matrix:` prefix is
//! ignored) or `"*"`, compared ASCII case-insensitively as OpenClaw does.

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
pub const MATRIX_TEXT_CHUNK_LIMIT: usize = 4000;
/// Largest `textChunkLimit`: a Matrix event may not exceed 65536 bytes (spec: "Size limits"),
/// and one char can take 4 bytes in the body and as many in the Markdown `formatted_body`.
pub const MATRIX_MAX_TEXT_CHUNK_LIMIT: usize = 8000;
/// Default long-poll timeout of `/sync`, in ms.
pub const MATRIX_SYNC_TIMEOUT_MS: u64 = 30_000;
/// Default device display name given at password login.
pub const MATRIX_DEFAULT_DEVICE_NAME: &str = "pincer";
/// Environment variable holding the `default` account's homeserver URL.
pub const MATRIX_HOMESERVER_ENV: &str = "MATRIX_HOMESERVER";
/// Environment variable holding the `default` account's access token.
pub const MATRIX_ACCESS_TOKEN_ENV: &str = "MATRIX_ACCESS_TOKEN";
/// Environment variable holding the `default` account's user id.
pub const MATRIX_USER_ID_ENV: &str = "MATRIX_USER_ID";
/// Environment variable holding the `default` account's password.
pub const MATRIX_PASSWORD_ENV: &str = "MATRIX_PASSWORD";
/// The account id used when `channels.matrix` has no `accounts` map.
pub const MATRIX_DEFAULT_ACCOUNT: &str = "default";
/// The problem message of an enabled account without a homeserver.
pub const MATRIX_NO_HOMESERVER: &str =
    "no homeserver: set channels.matrix.homeserver (or MATRIX_HOMESERVER for the default account)";
/// The problem message of an enabled account without credentials.
pub const MATRIX_NO_CREDENTIALS: &str = "no credentials: set channels.matrix.accessToken, or userId + password \
     (or MATRIX_ACCESS_TOKEN, or MATRIX_USER_ID + MATRIX_PASSWORD for the default account)";

/// `threadReplies`: where replies go relative to Matrix threads (`m.thread` relations).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum MatrixThreadReplies {
    /// Always at the room's top level, even for a message in a thread (the thread is part of
    /// the room's conversation).
    Off,
    /// Into the thread when the inbound message is in one, else at the top level (default).
    #[default]
    Inbound,
    /// Always in a thread: the inbound message's thread, or a new thread under the message.
    Always,
}

/// `dm.sessionScope`: which session a DM belongs to.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum MatrixDmSessionScope {
    /// The sender's user id is the DM peer (`session.dmScope` applies), default.
    #[default]
    PerUser,
    /// The DM room's id is the peer: each DM room has its own conversation.
    PerRoom,
}

/// `autoJoin`: which room invites the bot accepts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum MatrixAutoJoin {
    /// Invites are ignored (default): join rooms with another client.
    #[default]
    Off,
    /// Invites to rooms in `autoJoinAllowlist` (room id, alias or `"*"`) are accepted.
    Allowlist,
    /// Every invite is accepted.
    Always,
}

/// `channels.matrix[.accounts.<id>].dm`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MatrixDmConfig {
    /// `false` drops every DM (as `policy: "disabled"`). Default true.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    /// DM policy. Default `pairing`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<DmPolicy>,
    /// User ids allowed to DM the agent, or `"*"` (required for `policy: "open"`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_from: Option<Vec<String>>,
    /// `threadReplies` for DMs (default: the account's `threadReplies`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thread_replies: Option<MatrixThreadReplies>,
    /// `per-user` (default) or `per-room`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_scope: Option<MatrixDmSessionScope>,
}

/// `channels.matrix[.accounts.<id>].groups.<roomId | #alias | "*">`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MatrixGroupConfig {
    /// `false` disables the bot in this room under every `groupPolicy`. Default true.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    /// Legacy spelling of `enabled`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow: Option<bool>,
    /// Whether a mention is needed here. Default true.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub require_mention: Option<bool>,
    /// `true`: answer every message here without a mention (wins over `requireMention`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auto_reply: Option<bool>,
    /// `allowBots` for this room (wins over the account's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_bots: Option<AllowBotsConfig>,
    /// User ids allowed to wake the agent here (wins over `groupAllowFrom`; empty: everyone).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub users: Option<Vec<String>>,
}

/// Defines the Matrix section struct and the account struct with the same keys.
macro_rules! matrix_keys {
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
            /// Homeserver URL, `http(s)://host[:port][/path]` (the `default` account falls back
            /// to `MATRIX_HOMESERVER`).
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub homeserver: Option<String>,
            /// The bot's user id, `@localpart:server`: needed with `password`; checked against
            /// the token's owner with `accessToken`.
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub user_id: Option<String>,
            /// Access token (use `${MATRIX_ACCESS_TOKEN}`). Wins over `password`.
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub access_token: Option<String>,
            /// Password of `userId`: pincer logs in once and keeps the device and access token
            /// in its store, so a restart reuses them.
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub password: Option<String>,
            /// Display name of the device created by the password login. Default `pincer`.
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub device_name: Option<String>,
            /// End-to-end encryption. pincer has no crypto store: `true` is accepted with a
            /// warning, and messages in encrypted rooms are skipped (`encrypted_unsupported`).
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub encryption: Option<bool>,
            /// DM settings: `policy` (default `pairing`), `allowFrom`, `enabled`,
            /// `threadReplies`, `sessionScope`.
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub dm: Option<MatrixDmConfig>,
            /// Room policy. Default `channels.defaults.groupPolicy`, else `allowlist`.
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub group_policy: Option<GroupPolicy>,
            /// User ids allowed to wake the agent in rooms (unset or empty: everyone).
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub group_allow_from: Option<Vec<String>>,
            /// Rooms by id, alias or `"*"`: the allowlist for `groupPolicy: "allowlist"`, and the
            /// per-room mention, bot and sender settings.
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub groups: Option<BTreeMap<String, MatrixGroupConfig>>,
            /// Legacy spelling of `groups` (used when `groups` is not set).
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub rooms: Option<BTreeMap<String, MatrixGroupConfig>>,
            /// Which invites are accepted. Default `off`.
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub auto_join: Option<MatrixAutoJoin>,
            /// Rooms (id, alias or `"*"`) whose invites `autoJoin: "allowlist"` accepts.
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub auto_join_allowlist: Option<Vec<String>>,
            /// Where replies go relative to threads. Default `inbound`.
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub thread_replies: Option<MatrixThreadReplies>,
            /// Native replies (`m.in_reply_to`) to the inbound message. Default `off`.
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub reply_to_mode: Option<ReplyToMode>,
            /// Messages from bots (`m.notice` senders): `false` (default), `true`, or
            /// `"mentions"`.
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub allow_bots: Option<AllowBotsConfig>,
            /// Max chars per message, 1-8000. Default 4000.
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub text_chunk_limit: Option<usize>,
            /// Implicit-mention flags (account → channel → `channels.defaults`; default true).
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub implicit_mentions: Option<ImplicitMentionsConfig>,
            /// The health monitor may restart this account. Default true.
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub health_monitor: Option<EnabledFlag>,
            /// Long-poll timeout of `/sync` in ms (pincer extension). Default 30000.
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub sync_timeout_ms: Option<u64>,
            $($extra)*
        }
    };
}

matrix_keys!(
    /// `channels.matrix`: Matrix bot accounts (client-server API: `/sync` for inbound, room
    /// `send` for replies). The base keys are the `default` account when there is no
    /// `accounts` map, and are inherited by every account otherwise.
    MatrixChannelConfig {
        /// Named accounts; each inherits the base keys and overrides them.
        #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
        pub accounts: BTreeMap<String, MatrixAccountConfig>,
    }
);

matrix_keys!(
    /// `channels.matrix.accounts.<id>`: the same keys as the base section.
    MatrixAccountConfig {}
);

/// A `groups` entry, resolved.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ResolvedMatrixGroup {
    /// `false` when `enabled` or `allow` is `false`.
    pub enabled: bool,
    /// `requireMention`, if set.
    pub require_mention: Option<bool>,
    /// `autoReply`, if set.
    pub auto_reply: Option<bool>,
    /// `allowBots`, if set.
    pub allow_bots: Option<AllowBots>,
    /// `users`, if set.
    pub users: Option<Vec<String>>,
}

/// How the account authenticates.
#[derive(Clone, PartialEq, Eq)]
pub enum MatrixAuth {
    /// A configured access token (its owner comes from `whoami`).
    AccessToken(String),
    /// `userId` + password: pincer logs in and keeps the session.
    Password(String),
}

impl MatrixAuth {
    /// `sha256:<16 hex>` of the secret: identifies it (fingerprints, resume state) without
    /// revealing it.
    pub fn digest(&self) -> String {
        match self {
            MatrixAuth::AccessToken(t) => format!("token:{}", matrix_secret_digest(t)),
            MatrixAuth::Password(p) => format!("password:{}", matrix_secret_digest(p)),
        }
    }
}

impl fmt::Debug for MatrixAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MatrixAuth::AccessToken(_) => f.write_str("AccessToken(<redacted>)"),
            MatrixAuth::Password(_) => f.write_str("Password(<redacted>)"),
        }
    }
}

fn serialize_auth<S: Serializer>(auth: &MatrixAuth, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&auth.digest())
}

/// `sha256:` followed by the first 16 hex digits of the SHA-256 of `secret`.
pub fn matrix_secret_digest(secret: &str) -> String {
    let digest = hex::encode(Sha256::digest(secret.as_bytes()));
    format!("sha256:{}", &digest[..16])
}

/// One enabled Matrix account with every value resolved (account → base section →
/// `channels.defaults` → built-in default). Its JSON shows the secret as a digest, and `Debug`
/// redacts it. The connection fingerprint is [`ResolvedMatrixAccount::connection_fingerprint`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ResolvedMatrixAccount {
    /// Account id (`default` without an `accounts` map).
    pub account_id: String,
    /// Display name.
    pub name: Option<String>,
    /// Homeserver URL without a trailing `/`; empty in
    /// [`MatrixChannelConfig::policy_account`] results when none is configured.
    pub homeserver: String,
    /// `userId`, if configured.
    pub user_id: Option<String>,
    /// The credentials. Secret: never log them.
    #[serde(serialize_with = "serialize_auth")]
    pub auth: MatrixAuth,
    /// `deviceName`.
    pub device_name: String,
    /// `encryption` as configured (informational: there is no crypto store).
    pub encryption: bool,
    /// `dm.enabled`.
    pub dm_enabled: bool,
    /// `dm.policy`.
    pub dm_policy: DmPolicy,
    /// `dm.allowFrom`.
    pub allow_from: Vec<String>,
    /// `dm.threadReplies`, if set.
    pub dm_thread_replies: Option<MatrixThreadReplies>,
    /// `dm.sessionScope`.
    pub dm_session_scope: MatrixDmSessionScope,
    /// `groupPolicy`.
    pub group_policy: GroupPolicy,
    /// `groupAllowFrom` (empty: everyone).
    pub group_allow_from: Vec<String>,
    /// `groups` (or `rooms`), keyed by room id, alias or `*`.
    pub groups: BTreeMap<String, ResolvedMatrixGroup>,
    /// `autoJoin`.
    pub auto_join: MatrixAutoJoin,
    /// `autoJoinAllowlist`.
    pub auto_join_allowlist: Vec<String>,
    /// `threadReplies`.
    pub thread_replies: MatrixThreadReplies,
    /// `replyToMode`.
    pub reply_to_mode: ReplyToMode,
    /// `allowBots`.
    pub allow_bots: AllowBots,
    /// `textChunkLimit`, in chars.
    pub text_chunk_limit: usize,
    /// Implicit-mention flags.
    pub implicit: ImplicitMentions,
    /// `healthMonitor.enabled`.
    pub health_monitor: bool,
    /// `syncTimeoutMs`.
    pub sync_timeout_ms: u64,
}

/// What a Matrix connection depends on (see
/// [`ResolvedMatrixAccount::connection_fingerprint`]).
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ConnectionKeys<'a> {
    account_id: &'a str,
    homeserver: &'a str,
    user_id: Option<&'a str>,
    auth: String,
    device_name: &'a str,
    health_monitor: bool,
    sync_timeout_ms: u64,
    auto_join: MatrixAutoJoin,
    auto_join_allowlist: &'a [String],
    thread_replies: MatrixThreadReplies,
    dm_thread_replies: Option<MatrixThreadReplies>,
    dm_session_scope: MatrixDmSessionScope,
}

impl ResolvedMatrixAccount {
    /// Canonical JSON of what the account's connection depends on: the homeserver, the
    /// credentials (as a digest), the device name, the health flag, the sync timeout, and the
    /// keys the connection applies while reading (`autoJoin`, `autoJoinAllowlist`,
    /// `threadReplies`, `dm.threadReplies`, `dm.sessionScope`). The wake policy keys are read
    /// per message from the current config, so changing them keeps the connection.
    pub fn connection_fingerprint(&self) -> String {
        let keys = ConnectionKeys {
            account_id: &self.account_id,
            homeserver: &self.homeserver,
            user_id: self.user_id.as_deref(),
            auth: self.auth.digest(),
            device_name: &self.device_name,
            health_monitor: self.health_monitor,
            sync_timeout_ms: self.sync_timeout_ms,
            auto_join: self.auto_join,
            auto_join_allowlist: &self.auto_join_allowlist,
            thread_replies: self.thread_replies,
            dm_thread_replies: self.dm_thread_replies,
            dm_session_scope: self.dm_session_scope,
        };
        serde_json::to_string(&keys).unwrap_or_default()
    }

    /// `threadReplies` for a conversation of `kind` (`dm.threadReplies` for DMs when set).
    pub fn thread_replies_for(&self, kind: ChatKind) -> MatrixThreadReplies {
        match kind {
            ChatKind::Direct => self.dm_thread_replies.unwrap_or(self.thread_replies),
            _ => self.thread_replies,
        }
    }
}

/// `homeserver` normalised: trimmed, without trailing `/`.
pub fn normalize_matrix_homeserver(url: &str) -> String {
    url.trim().trim_end_matches('/').to_string()
}

/// Whether a normalised homeserver URL is `http://` or `https://` followed by a host.
pub fn matrix_homeserver_is_valid(url: &str) -> bool {
    let rest = url.strip_prefix("http://").or_else(|| url.strip_prefix("https://"));
    rest.is_some_and(|r| {
        let host = r.split('/').next().unwrap_or("");
        !host.is_empty() && !host.contains(['@', '?', '#', ' '])
    })
}

/// Whether `id` looks like a Matrix user id: `@localpart:server` with both parts non-empty.
/// (Only user ids have a server part that is always present; room ids are never parsed.)
pub fn matrix_user_id_is_valid(id: &str) -> bool {
    id.strip_prefix('@').and_then(|r| r.split_once(':')).is_some_and(|(l, s)| !l.is_empty() && !s.is_empty())
}

/// A configured, enabled account that cannot run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MatrixAccountProblem {
    /// Account id.
    pub account_id: String,
    /// What is wrong.
    pub message: String,
}

fn resolve_groups(groups: &BTreeMap<String, MatrixGroupConfig>) -> BTreeMap<String, ResolvedMatrixGroup> {
    groups
        .iter()
        .map(|(id, g)| {
            let rg = ResolvedMatrixGroup {
                enabled: g.enabled.or(g.allow) != Some(false),
                require_mention: g.require_mention,
                auto_reply: g.auto_reply,
                allow_bots: g.allow_bots.map(AllowBots::from),
                users: g.users.clone(),
            };
            (id.trim().to_string(), rg)
        })
        .collect()
}

impl MatrixChannelConfig {
    /// The base keys as an account (for the implicit `default` account and the checks).
    pub(crate) fn base_as_account(&self) -> MatrixAccountConfig {
        MatrixAccountConfig {
            enabled: self.enabled,
            name: self.name.clone(),
            homeserver: self.homeserver.clone(),
            user_id: self.user_id.clone(),
            access_token: self.access_token.clone(),
            password: self.password.clone(),
            device_name: self.device_name.clone(),
            encryption: self.encryption,
            dm: self.dm.clone(),
            group_policy: self.group_policy,
            group_allow_from: self.group_allow_from.clone(),
            groups: self.groups.clone(),
            rooms: self.rooms.clone(),
            auto_join: self.auto_join,
            auto_join_allowlist: self.auto_join_allowlist.clone(),
            thread_replies: self.thread_replies,
            reply_to_mode: self.reply_to_mode,
            allow_bots: self.allow_bots,
            text_chunk_limit: self.text_chunk_limit,
            implicit_mentions: self.implicit_mentions.clone(),
            health_monitor: self.health_monitor.clone(),
            sync_timeout_ms: self.sync_timeout_ms,
        }
    }

    /// The accounts of this section as `(id, account keys)` with the base keys not yet
    /// applied: the base itself as `default` when there is no `accounts` map.
    pub fn account_entries(&self) -> Vec<(String, MatrixAccountConfig)> {
        if self.accounts.is_empty() {
            vec![(MATRIX_DEFAULT_ACCOUNT.to_string(), self.base_as_account())]
        } else {
            self.accounts.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
        }
    }

    /// Resolve every enabled account, in account-id order. Disabled accounts (and every account
    /// when the section has `enabled: false`) are skipped. `env` looks up the `MATRIX_*`
    /// variables, for the `default` account only. Problems: no homeserver
    /// ([`MATRIX_NO_HOMESERVER`]), a homeserver that is not http(s), no credentials
    /// ([`MATRIX_NO_CREDENTIALS`]), a password without a user id, a malformed user id.
    pub fn resolved_accounts(
        &self,
        defaults: &ChannelDefaultsConfig,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Vec<Result<ResolvedMatrixAccount, MatrixAccountProblem>> {
        if self.enabled == Some(false) {
            return Vec::new();
        }
        self.account_entries()
            .into_iter()
            .filter(|(_, a)| a.enabled.or(self.enabled) != Some(false))
            .map(|(id, a)| {
                let non_empty =
                    |t: &Option<String>| t.as_deref().map(str::trim).filter(|t| !t.is_empty()).map(str::to_string);
                let is_default = id == MATRIX_DEFAULT_ACCOUNT;
                let value = |own: &Option<String>, base: &Option<String>, var: &str| {
                    non_empty(own).or_else(|| non_empty(base)).or_else(|| {
                        if is_default {
                            non_empty(&env(var))
                        } else {
                            None
                        }
                    })
                };
                let problem = |message: String| MatrixAccountProblem { account_id: id.clone(), message };
                let Some(url) = value(&a.homeserver, &self.homeserver, MATRIX_HOMESERVER_ENV) else {
                    return Err(problem(MATRIX_NO_HOMESERVER.to_string()));
                };
                let homeserver = normalize_matrix_homeserver(&url);
                if !matrix_homeserver_is_valid(&homeserver) {
                    return Err(problem(format!("homeserver must be an http:// or https:// URL, got \"{url}\"")));
                }
                let user_id = value(&a.user_id, &self.user_id, MATRIX_USER_ID_ENV);
                if let Some(u) = user_id.as_deref().filter(|u| !matrix_user_id_is_valid(u)) {
                    return Err(problem(format!("userId must look like @localpart:server, got \"{u}\"")));
                }
                let token = value(&a.access_token, &self.access_token, MATRIX_ACCESS_TOKEN_ENV);
                let password = value(&a.password, &self.password, MATRIX_PASSWORD_ENV);
                let auth = match (token, password) {
                    (Some(t), _) => MatrixAuth::AccessToken(t),
                    (None, Some(p)) if user_id.is_some() => MatrixAuth::Password(p),
                    (None, Some(_)) => {
                        return Err(problem("password login needs userId (or MATRIX_USER_ID)".to_string()))
                    }
                    (None, None) => return Err(problem(MATRIX_NO_CREDENTIALS.to_string())),
                };
                let settings = self.resolve_settings(id.clone(), &a, defaults);
                Ok(ResolvedMatrixAccount { homeserver, user_id, auth, ..settings })
            })
            .collect()
    }

    /// The resolved settings of enabled account `account_id` for policy lookups (wake policy,
    /// `replyToMode`), without requiring credentials: `auth` is an empty access token and
    /// `homeserver` is the configured one (normalised) or empty. `None` when the account is not
    /// configured or is disabled.
    pub fn policy_account(&self, account_id: &str, defaults: &ChannelDefaultsConfig) -> Option<ResolvedMatrixAccount> {
        if self.enabled == Some(false) {
            return None;
        }
        let a = if self.accounts.is_empty() {
            (account_id == MATRIX_DEFAULT_ACCOUNT).then(|| self.base_as_account())?
        } else {
            self.accounts.get(account_id).cloned()?
        };
        (a.enabled.or(self.enabled) != Some(false)).then(|| self.resolve_settings(account_id.to_string(), &a, defaults))
    }

    /// Every value of one account except the credentials (an empty access token); `homeserver`
    /// is the configured one, normalised, or empty.
    fn resolve_settings(
        &self,
        account_id: String,
        a: &MatrixAccountConfig,
        defaults: &ChannelDefaultsConfig,
    ) -> ResolvedMatrixAccount {
        let implicit = |f: fn(&ImplicitMentionsConfig) -> Option<bool>| {
            a.implicit_mentions
                .as_ref()
                .and_then(f)
                .or(self.implicit_mentions.as_ref().and_then(f))
                .or(f(&defaults.implicit_mentions))
                .unwrap_or(true)
        };
        let (own_dm, base_dm) = (a.dm.as_ref(), self.dm.as_ref());
        let groups = a.groups.as_ref().or(a.rooms.as_ref()).or(self.groups.as_ref()).or(self.rooms.as_ref());
        ResolvedMatrixAccount {
            name: a.name.clone().or_else(|| self.name.clone()),
            homeserver: a
                .homeserver
                .as_deref()
                .or(self.homeserver.as_deref())
                .map(normalize_matrix_homeserver)
                .unwrap_or_default(),
            user_id: a.user_id.clone().or_else(|| self.user_id.clone()),
            auth: MatrixAuth::AccessToken(String::new()),
            device_name: a
                .device_name
                .clone()
                .or_else(|| self.device_name.clone())
                .filter(|n| !n.trim().is_empty())
                .unwrap_or_else(|| MATRIX_DEFAULT_DEVICE_NAME.to_string()),
            encryption: a.encryption.or(self.encryption).unwrap_or(false),
            dm_enabled: own_dm.and_then(|d| d.enabled).or(base_dm.and_then(|d| d.enabled)).unwrap_or(true),
            dm_policy: own_dm.and_then(|d| d.policy).or(base_dm.and_then(|d| d.policy)).unwrap_or_default(),
            allow_from: own_dm
                .and_then(|d| d.allow_from.clone())
                .or_else(|| base_dm.and_then(|d| d.allow_from.clone()))
                .unwrap_or_default(),
            dm_thread_replies: own_dm.and_then(|d| d.thread_replies).or(base_dm.and_then(|d| d.thread_replies)),
            dm_session_scope: own_dm
                .and_then(|d| d.session_scope)
                .or(base_dm.and_then(|d| d.session_scope))
                .unwrap_or_default(),
            group_policy: a.group_policy.or(self.group_policy).or(defaults.group_policy).unwrap_or_default(),
            group_allow_from: a.group_allow_from.clone().or_else(|| self.group_allow_from.clone()).unwrap_or_default(),
            groups: groups.map(resolve_groups).unwrap_or_default(),
            auto_join: a.auto_join.or(self.auto_join).unwrap_or_default(),
            auto_join_allowlist: a
                .auto_join_allowlist
                .clone()
                .or_else(|| self.auto_join_allowlist.clone())
                .unwrap_or_default()
                .into_iter()
                .map(|e| e.trim().to_string())
                .collect(),
            thread_replies: a.thread_replies.or(self.thread_replies).unwrap_or_default(),
            reply_to_mode: a.reply_to_mode.or(self.reply_to_mode).unwrap_or_default(),
            allow_bots: a.allow_bots.or(self.allow_bots).map(AllowBots::from).unwrap_or_default(),
            text_chunk_limit: a.text_chunk_limit.or(self.text_chunk_limit).unwrap_or(MATRIX_TEXT_CHUNK_LIMIT),
            implicit: ImplicitMentions {
                reply_to_bot: implicit(|i| i.reply_to_bot),
                quoted_bot: implicit(|i| i.quoted_bot),
                thread_participation: implicit(|i| i.thread_participation),
            },
            health_monitor: a
                .health_monitor
                .as_ref()
                .and_then(|h| h.enabled)
                .or(self.health_monitor.as_ref().and_then(|h| h.enabled))
                .unwrap_or(true),
            sync_timeout_ms: a.sync_timeout_ms.or(self.sync_timeout_ms).unwrap_or(MATRIX_SYNC_TIMEOUT_MS),
            account_id,
        }
    }
}

/// A user id in an allowlist entry: trimmed, without a `matrix:` prefix.
fn user_entry(entry: &str) -> &str {
    let e = entry.trim();
    match e.get(..7) {
        Some(p) if p.eq_ignore_ascii_case("matrix:") => e[7..].trim(),
        _ => e,
    }
}

/// True when `list` admits `user_id`: `"*"`, or the same user id (ASCII case-insensitive, a
/// `matrix:` prefix ignored).
pub fn matrix_user_listed(list: &[String], user_id: &str) -> bool {
    list.iter().map(|e| user_entry(e)).any(|e| e == "*" || e.eq_ignore_ascii_case(user_id))
}

/// True when `autoJoinAllowlist` admits a room: `"*"`, its exact room id, or one of its aliases
/// (exact).
pub fn matrix_auto_join_allowed(list: &[String], room_id: &str, aliases: &[String]) -> bool {
    list.iter().any(|e| e == "*" || e == room_id || aliases.iter().any(|a| a == e))
}

/// The wake policy of one Matrix message (reference §5) for `account`. Pure.
///
/// - DMs (`ChatKind::Direct`): `dm.enabled: false` → `dmPolicy: disabled`; the sender is allowed
///   when `dm.allowFrom` holds its user id or `"*"`.
/// - Rooms: the entry is `groups[<room id>]` (`peer_id`, exact), else `groups[<canonical
///   alias>]` (`parent_peer_id`), else `groups["*"]`. The room is listed (for `groupPolicy:
///   "allowlist"`) when there is an entry; an entry with `enabled: false` (or `allow: false`)
///   disables the room under every `groupPolicy`. The sender allowlist is the entry's `users`
///   if set, else `groupAllowFrom` (empty or unset: everyone). Mention gate: the entry's
///   `autoReply` (`true` → no mention needed, `false` → needed), else its `requireMention`,
///   else `groups["*"]`'s `autoReply`/`requireMention`, else a mention is required.
///   `allowBots`: the entry's, else `groups["*"]`'s, else the account's.
pub fn matrix_wake_policy(account: &ResolvedMatrixAccount, inbound: &Inbound) -> WakePolicy {
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
        policy.dm_sender_allowed = matrix_user_listed(&account.allow_from, &inbound.author.id);
        return policy;
    }
    let wildcard = account.groups.get("*");
    let entry = account
        .groups
        .get(inbound.peer_id.as_str())
        .or_else(|| inbound.parent_peer_id.as_deref().and_then(|alias| account.groups.get(alias)))
        .or(wildcard);
    policy.group_listed = entry.is_some_and(|g| g.enabled);
    if entry.is_some_and(|g| !g.enabled) {
        policy.group_policy = GroupPolicy::Disabled;
    }
    let senders = entry.and_then(|g| g.users.as_ref()).unwrap_or(&account.group_allow_from);
    policy.group_sender_allowed = senders.is_empty() || matrix_user_listed(senders, &inbound.author.id);
    if let Some(b) = entry.and_then(|g| g.allow_bots).or(wildcard.and_then(|g| g.allow_bots)) {
        policy.allow_bots = b;
    }
    let gate_of = |g: &ResolvedMatrixGroup| g.auto_reply.map(|auto| !auto).or(g.require_mention);
    let require_mention = entry.and_then(gate_of).or(wildcard.and_then(gate_of)).unwrap_or(true);
    policy.gate = if require_mention { MentionGate::Required } else { MentionGate::Off };
    policy
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::{AccountId, ChannelId};
    use crate::message::{Author, MentionFacts};
    use crate::wake::{decide, DropReason, MentionPatterns, WakeDecision, WakeReason};
    use serde_json::json;

    fn parse(json: serde_json::Value) -> MatrixChannelConfig {
        serde_json::from_value(json).unwrap()
    }

    fn no_env(_: &str) -> Option<String> {
        None
    }

    fn resolve_all(cfg: &MatrixChannelConfig) -> Vec<Result<ResolvedMatrixAccount, MatrixAccountProblem>> {
        cfg.resolved_accounts(&ChannelDefaultsConfig::default(), &no_env)
    }

    fn one(json: serde_json::Value) -> ResolvedMatrixAccount {
        let mut all = resolve_all(&parse(json));
        assert_eq!(all.len(), 1);
        all.remove(0).unwrap()
    }

    fn base(extra: serde_json::Value) -> serde_json::Value {
        let mut v = json!({"homeserver": "https://matrix.example.org", "accessToken": "t"});
        for (k, x) in extra.as_object().unwrap() {
            v[k] = x.clone();
        }
        v
    }

    #[test]
    fn base_section_is_the_default_account_with_defaults() {
        let a = one(json!({"homeserver": " https://matrix.example.org/ ", "accessToken": " tok "}));
        assert_eq!(a.account_id, "default");
        assert_eq!(a.homeserver, "https://matrix.example.org");
        assert_eq!(a.auth, MatrixAuth::AccessToken("tok".into()));
        assert_eq!(a.device_name, "pincer");
        assert!(a.dm_enabled && !a.encryption);
        assert_eq!(a.dm_policy, DmPolicy::Pairing);
        assert_eq!((a.dm_thread_replies, a.dm_session_scope), (None, MatrixDmSessionScope::PerUser));
        assert_eq!(a.group_policy, GroupPolicy::Allowlist);
        assert!(a.allow_from.is_empty() && a.group_allow_from.is_empty() && a.groups.is_empty());
        assert_eq!(a.auto_join, MatrixAutoJoin::Off);
        assert_eq!(a.thread_replies, MatrixThreadReplies::Inbound);
        assert_eq!(a.reply_to_mode, ReplyToMode::Off);
        assert_eq!(a.allow_bots, AllowBots::Off);
        assert_eq!(a.text_chunk_limit, 4000);
        assert_eq!(a.implicit, ImplicitMentions::default());
        assert!(a.health_monitor);
        assert_eq!(a.sync_timeout_ms, 30_000);
        let text = format!("{a:?}");
        assert!(!text.contains("tok\""), "{text}");
        let json = serde_json::to_string(&a).unwrap();
        assert!(json.contains("token:sha256:") && !json.contains("\"tok\""), "{json}");
    }

    #[test]
    fn credentials_and_their_problems() {
        let a = one(json!({"homeserver": "http://127.0.0.1:8008", "userId": "@bot:localhost", "password": "pw"}));
        assert_eq!(a.auth, MatrixAuth::Password("pw".into()));
        assert_eq!(a.user_id.as_deref(), Some("@bot:localhost"));
        let a = one(json!({"homeserver": "http://h", "userId": "@bot:h", "password": "pw", "accessToken": "t"}));
        assert_eq!(a.auth, MatrixAuth::AccessToken("t".into()), "a token wins over the password");
        let problem = |v: serde_json::Value| resolve_all(&parse(v)).remove(0).unwrap_err().message;
        assert_eq!(problem(json!({"accessToken": "t"})), MATRIX_NO_HOMESERVER);
        assert_eq!(problem(json!({"homeserver": "http://h"})), MATRIX_NO_CREDENTIALS);
        assert!(problem(json!({"homeserver": "http://h", "password": "p"})).contains("needs userId"));
        assert!(problem(json!({"homeserver": "ftp://h", "accessToken": "t"})).contains("http:// or https://"));
        assert!(problem(json!({"homeserver": "http://h", "accessToken": "t", "userId": "bot"})).contains("@localpart"));
    }

    #[test]
    fn env_fills_the_default_account_only_and_only_when_unset() {
        let env = |k: &str| match k {
            MATRIX_HOMESERVER_ENV => Some("https://env.example.org/".to_string()),
            MATRIX_USER_ID_ENV => Some("@env:example.org".to_string()),
            MATRIX_PASSWORD_ENV => Some("env-pw".to_string()),
            _ => None,
        };
        let d = ChannelDefaultsConfig::default();
        let a = parse(json!({})).resolved_accounts(&d, &env).remove(0).unwrap();
        assert_eq!(
            (a.homeserver.as_str(), a.user_id.as_deref()),
            ("https://env.example.org", Some("@env:example.org"))
        );
        assert_eq!(a.auth, MatrixAuth::Password("env-pw".into()));
        let a = parse(json!({"accessToken": "cfg"})).resolved_accounts(&d, &env).remove(0).unwrap();
        assert_eq!(a.auth, MatrixAuth::AccessToken("cfg".into()), "configured values win");
        let named = parse(json!({"accounts": {"work": {}}})).resolved_accounts(&d, &env);
        assert_eq!(named[0].as_ref().unwrap_err().message, MATRIX_NO_HOMESERVER, "named accounts get no env");
    }

    #[test]
    fn accounts_inherit_and_override_base_keys() {
        let cfg = parse(json!({
            "homeserver": "https://base.example.org",
            "accessToken": "base",
            "dm": {"policy": "allowlist", "allowFrom": ["@alice:x"], "threadReplies": "off"},
            "groups": {"!r1": {"requireMention": false}},
            "autoJoin": "always",
            "implicitMentions": {"replyToBot": false},
            "accounts": {
                "work": {"accessToken": "w", "dm": {"sessionScope": "per-room"}, "threadReplies": "always",
                         "implicitMentions": {"threadParticipation": false}},
                "play": {"rooms": {"#play:x": {"autoReply": true}}, "textChunkLimit": 1500, "syncTimeoutMs": 100,
                         "healthMonitor": {"enabled": false}, "autoJoin": "allowlist", "autoJoinAllowlist": [" * "]},
                "off": {"enabled": false},
            },
        }));
        let all: Vec<_> = resolve_all(&cfg).into_iter().map(Result::unwrap).collect();
        let ids: Vec<&str> = all.iter().map(|a| a.account_id.as_str()).collect();
        assert_eq!(ids, ["play", "work"]);
        let (play, work) = (&all[0], &all[1]);
        assert_eq!(work.auth, MatrixAuth::AccessToken("w".into()));
        assert_eq!(work.dm_policy, DmPolicy::Allowlist, "dm merged key by key");
        assert_eq!(work.dm_session_scope, MatrixDmSessionScope::PerRoom);
        assert_eq!(work.dm_thread_replies, Some(MatrixThreadReplies::Off));
        assert_eq!(work.thread_replies_for(ChatKind::Direct), MatrixThreadReplies::Off);
        assert_eq!(work.thread_replies_for(ChatKind::Channel), MatrixThreadReplies::Always);
        assert_eq!(
            work.implicit,
            ImplicitMentions { reply_to_bot: false, quoted_bot: true, thread_participation: false }
        );
        assert!(work.groups.contains_key("!r1"));
        assert!(play.groups.contains_key("#play:x") && !play.groups.contains_key("!r1"), "`rooms` replaces groups");
        assert_eq!(
            (play.auto_join, play.auto_join_allowlist.as_slice()),
            (MatrixAutoJoin::Allowlist, &["*".to_string()][..])
        );
        assert_eq!(work.auto_join, MatrixAutoJoin::Always);
        assert_eq!((play.text_chunk_limit, play.sync_timeout_ms, play.health_monitor), (1500, 100, false));
    }

    #[test]
    fn fingerprint_covers_the_connection_not_the_policy() {
        let a = one(base(json!({})));
        let b = one(base(json!({"dm": {"policy": "open", "allowFrom": ["*"]}, "groupPolicy": "open"})));
        assert_eq!(a.connection_fingerprint(), b.connection_fingerprint(), "policy keys keep the connection");
        let c = one(base(json!({"threadReplies": "always"})));
        assert_ne!(a.connection_fingerprint(), c.connection_fingerprint());
        let d = one(base(json!({"accessToken": "other"})));
        assert_ne!(a.connection_fingerprint(), d.connection_fingerprint());
        assert!(!a.connection_fingerprint().contains("\"t\""));
    }

    #[test]
    fn allowlists_match_user_ids_and_aliases() {
        let list = vec!["matrix:@Alice:Example.org".to_string(), " @bob:x ".to_string()];
        assert!(matrix_user_listed(&list, "@alice:example.org"));
        assert!(matrix_user_listed(&list, "@bob:x"));
        assert!(!matrix_user_listed(&list, "@carol:x"));
        assert!(matrix_user_listed(&["*".to_string()], "@anyone:x"));
        let rooms = vec!["!AbC".to_string(), "#ops:x".to_string()];
        assert!(matrix_auto_join_allowed(&rooms, "!AbC", &[]));
        assert!(!matrix_auto_join_allowed(&rooms, "!abc", &[]), "room ids are case-sensitive");
        assert!(matrix_auto_join_allowed(&rooms, "!other", &["#ops:x".to_string()]));
        assert!(matrix_auto_join_allowed(&["*".to_string()], "!x", &[]));
    }

    #[derive(Clone, Copy)]
    enum Tweak {
        Mention,
        ReplyToBot,
        Thread,
        BotAuthor,
        Author(&'static str),
        Room(&'static str),
        Alias(&'static str),
    }

    fn msg(kind: ChatKind) -> Inbound {
        Inbound {
            channel: ChannelId::new("matrix"),
            account: AccountId::default(),
            chat_kind: kind,
            peer_id: if kind == ChatKind::Direct { "@alice:x".into() } else { "!Room1".into() },
            parent_peer_id: None,
            chat_id: "!Room1".into(),
            guild_id: None,
            team_id: None,
            member_roles: vec![],
            thread_id: None,
            author: Author { id: "@alice:x".into(), name: Some("Alice".into()), is_bot: false, is_self: false },
            message_id: "$ev1".into(),
            text: "hello".into(),
            ts_ms: 0,
            mentions: MentionFacts { can_detect: true, ..Default::default() },
        }
    }

    fn apply(mut m: Inbound, t: Tweak) -> Inbound {
        match t {
            Tweak::Mention => m.mentions.native = true,
            Tweak::ReplyToBot => m.mentions.reply_to_bot = true,
            Tweak::Thread => {
                m.thread_id = Some("$Root".into());
                m.mentions.thread_participation = true;
            }
            Tweak::BotAuthor => m.author.is_bot = true,
            Tweak::Author(id) => m.author.id = id.into(),
            Tweak::Room(id) => {
                m.peer_id = id.into();
                m.chat_id = id.into();
            }
            Tweak::Alias(a) => m.parent_peer_id = Some(a.into()),
        }
        m
    }

    #[test]
    fn wake_policy_table() {
        use ChatKind::{Channel, Direct};
        use DropReason as D;
        use WakeDecision::{Drop, Wake};
        use WakeReason as W;
        let open = json!({"groupPolicy": "open"});
        #[allow(clippy::type_complexity)]
        let rows: Vec<(&str, serde_json::Value, ChatKind, Vec<Tweak>, WakeDecision)> = vec![
            ("dm open", json!({"dm": {"policy": "open", "allowFrom": ["*"]}}), Direct, vec![], Wake(W::Direct)),
            (
                "dm allowlisted",
                json!({"dm": {"policy": "allowlist", "allowFrom": ["@Alice:x"]}}),
                Direct,
                vec![],
                Wake(W::Direct),
            ),
            ("dm pairing unknown", json!({}), Direct, vec![], Drop(D::PairingRequired)),
            (
                "dm allowlist refuses",
                json!({"dm": {"policy": "allowlist", "allowFrom": ["@bob:x"]}}),
                Direct,
                vec![],
                Drop(D::DmNotAllowed),
            ),
            (
                "dm switched off",
                json!({"dm": {"enabled": false, "policy": "open", "allowFrom": ["*"]}}),
                Direct,
                vec![],
                Drop(D::DmDisabled),
            ),
            ("room not listed", json!({}), Channel, vec![Tweak::Mention], Drop(D::GroupNotAllowed)),
            ("room listed by id", json!({"groups": {"!Room1": {}}}), Channel, vec![Tweak::Mention], Wake(W::Mention)),
            (
                "room ids are exact",
                json!({"groups": {"!room1": {}}}),
                Channel,
                vec![Tweak::Mention],
                Drop(D::GroupNotAllowed),
            ),
            (
                "room listed by alias",
                json!({"groups": {"#ops:x": {"autoReply": true}}}),
                Channel,
                vec![Tweak::Alias("#ops:x")],
                Wake(W::Always),
            ),
            ("wildcard", json!({"groups": {"*": {}}}), Channel, vec![Tweak::Mention], Wake(W::Mention)),
            (
                "disabled entry beats open",
                json!({"groupPolicy": "open", "groups": {"!Room1": {"enabled": false}}}),
                Channel,
                vec![Tweak::Mention],
                Drop(D::GroupDisabled),
            ),
            (
                "legacy allow false",
                json!({"groups": {"*": {"allow": false}}}),
                Channel,
                vec![Tweak::Mention],
                Drop(D::GroupDisabled),
            ),
            ("mention required by default", open.clone(), Channel, vec![], Drop(D::MissingMention)),
            ("mention", open.clone(), Channel, vec![Tweak::Mention], Wake(W::Mention)),
            ("reply to bot", open.clone(), Channel, vec![Tweak::ReplyToBot], Wake(W::ReplyToBot)),
            ("thread participation", open.clone(), Channel, vec![Tweak::Thread], Wake(W::ThreadParticipation)),
            (
                "replyToBot off",
                json!({"groupPolicy": "open", "implicitMentions": {"replyToBot": false}}),
                Channel,
                vec![Tweak::ReplyToBot],
                Drop(D::MissingMention),
            ),
            (
                "requireMention false",
                json!({"groups": {"!Room1": {"requireMention": false}}}),
                Channel,
                vec![],
                Wake(W::Always),
            ),
            (
                "autoReply beats requireMention",
                json!({"groups": {"!Room1": {"requireMention": true, "autoReply": true}}}),
                Channel,
                vec![],
                Wake(W::Always),
            ),
            (
                "autoReply false requires a mention",
                json!({"groups": {"!Room1": {"requireMention": false, "autoReply": false}}}),
                Channel,
                vec![],
                Drop(D::MissingMention),
            ),
            (
                "entry beats wildcard",
                json!({"groups": {"*": {"autoReply": true}, "!Room1": {"requireMention": true}}}),
                Channel,
                vec![],
                Drop(D::MissingMention),
            ),
            (
                "wildcard gate applies to listed rooms",
                json!({"groups": {"*": {"requireMention": false}, "!Room1": {}}}),
                Channel,
                vec![],
                Wake(W::Always),
            ),
            (
                "other room's entry",
                json!({"groupPolicy": "open", "groups": {"!Other": {"autoReply": true}}}),
                Channel,
                vec![],
                Drop(D::MissingMention),
            ),
            (
                "group users",
                json!({"groups": {"!Room1": {"autoReply": true, "users": ["@bob:x"]}}}),
                Channel,
                vec![],
                Drop(D::SenderNotAllowed),
            ),
            (
                "groupAllowFrom",
                json!({"groupPolicy": "open", "groupAllowFrom": ["@bob:x"]}),
                Channel,
                vec![Tweak::Mention],
                Drop(D::SenderNotAllowed),
            ),
            (
                "groupAllowFrom admits",
                json!({"groupPolicy": "open", "groupAllowFrom": ["@bob:x"]}),
                Channel,
                vec![Tweak::Mention, Tweak::Author("@bob:x")],
                Wake(W::Mention),
            ),
            ("bots dropped", open.clone(), Channel, vec![Tweak::BotAuthor, Tweak::Mention], Drop(D::BotAuthor)),
            (
                "allowBots mentions",
                json!({"groupPolicy": "open", "allowBots": "mentions"}),
                Channel,
                vec![Tweak::BotAuthor, Tweak::Mention],
                Wake(W::Mention),
            ),
            (
                "room allowBots wins",
                json!({"groups": {"!Room1": {"allowBots": true}}}),
                Channel,
                vec![Tweak::BotAuthor, Tweak::Mention],
                Wake(W::Mention),
            ),
            (
                "alias entry for another room id",
                json!({"groups": {"#ops:x": {}}}),
                Channel,
                vec![Tweak::Room("!Room2"), Tweak::Mention],
                Drop(D::GroupNotAllowed),
            ),
        ];
        let patterns = MentionPatterns::none();
        for (why, cfg, kind, tweaks, want) in rows {
            let account = one(base(cfg));
            let m = tweaks.iter().fold(msg(kind), |m, t| apply(m, *t));
            assert_eq!(decide(&m, &matrix_wake_policy(&account, &m), &patterns), want, "{why}");
        }
    }

    fn load(text: &str) -> Result<crate::config::Loaded, Vec<String>> {
        let env = |k: &str| (k == MATRIX_ACCESS_TOKEN_ENV).then(|| "from-env".to_string());
        crate::config::parse(text, &env).map_err(|e| e.errors().iter().map(ToString::to_string).collect())
    }

    #[test]
    fn loader_types_the_section_and_ignores_openclaw_only_keys() {
        let loaded = load(
            r#"{channels: {matrix: {
                homeserver: "https://matrix.example.org", accessToken: "${MATRIX_ACCESS_TOKEN}",
                initialSyncLimit: 10, encryption: true, markdown: {tables: "off"},
                groups: {"!abc": {requireMention: false, tools: {}, systemPrompt: "x"}},
                accounts: {work: {accessToken: "w", chunkMode: "newline"}},
            }}}"#,
        )
        .unwrap();
        let warnings: Vec<String> = loaded.warnings.iter().map(ToString::to_string).collect();
        assert_eq!(
            warnings,
            [
                "channels.matrix.accounts.work.chunkMode: not supported by pincer; ignored",
                "channels.matrix.encryption: end-to-end encryption is not supported by pincer (no crypto store); \
                 messages in encrypted rooms are skipped with reason encrypted_unsupported",
                "channels.matrix.groups.!abc.systemPrompt: not supported by pincer; ignored",
                "channels.matrix.groups.!abc.tools: not supported by pincer; ignored",
                "channels.matrix.initialSyncLimit: not supported by pincer; ignored",
                "channels.matrix.markdown: not supported by pincer; ignored",
            ]
        );
        let m = loaded.config.channels.matrix.unwrap();
        assert_eq!(m.access_token.as_deref(), Some("from-env"));
    }

    #[test]
    fn loader_reports_matrix_errors_with_paths() {
        let errors = load(
            r#"{channels: {matrix: {
                homeserver: "ftp://x", accessToken: "t", userId: "bot", textChunkLimit: 8001,
                dm: {policy: "open", allowFrom: ["@a:x"]},
                accounts: {a: {textChunkLimit: 0, syncTimeoutMs: 0}, b: {dm: {allowFrom: ["*"]}}},
            }}}"#,
        )
        .unwrap_err();
        assert_eq!(
            errors,
            [
                "channels.matrix.accounts.a.dm.allowFrom: dm.policy \"open\" requires dm.allowFrom to include \"*\"",
                "channels.matrix.accounts.a.syncTimeoutMs: expected an integer >= 1, got 0",
                "channels.matrix.accounts.a.textChunkLimit: expected an integer 1-8000 (a Matrix event holds at most 64 KiB), got 0",
                "channels.matrix.homeserver: expected an http:// or https:// URL, got \"ftp://x\"",
                "channels.matrix.textChunkLimit: expected an integer 1-8000 (a Matrix event holds at most 64 KiB), got 8001",
                "channels.matrix.userId: expected a Matrix user id like @bot:example.org, got \"bot\"",
            ]
        );
        assert!(load(r#"{channels: {matrix: {autoJoin: "sometimes"}}}"#).is_err());
        assert!(load(r#"{channels: {matrix: {dm: {policy: "open", allowFrom: ["*"]}}}}"#).is_ok());
        assert!(load(r#"{channels: {matrix: {groupAllowFrom: ["@a:x"], groups: {"*": {users: []}}}}}"#).is_ok());
    }
}
