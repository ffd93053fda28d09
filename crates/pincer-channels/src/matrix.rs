//! Matrix channel (`channels.matrix`): a bot account on a Matrix homeserver, driven through the
//! Matrix Rust SDK (`matrix-sdk`, without its crypto and SQLite stores): `/sync` for inbound
//! messages and room state, room `send` and `typing` for replies.
//!
//! # Connection (one [`MatrixRunner::run`] call is one attempt)
//!
//! Matrix has no socket: the "connection" is a `/sync` long-poll loop over HTTP. The SDK's
//! [`Client::sync_once`] is called in the adapter's own loop rather than the SDK's `sync()`,
//! because the lifecycle contract needs control the SDK's loop does not give: each batch is
//! handed to the runtime and *awaited* before the token moves on, the token is persisted by
//! pincer (resume state) rather than by an SDK store, a failed request ends the attempt (the SDK
//! would retry forever; here the client is built with retries disabled and the channel
//! supervisor owns reconnects), and cancellation drops the in-flight request, which closes its
//! HTTP connection, before `run` returns.
//!
//! 1. Session. With `accessToken`, the token's owner and device come from `whoami` (a 401 is
//!    [`RunError::Fatal`] "token rejected"). With `userId` + `password`, the session saved in the
//!    resume state (device id and access token, bound to the homeserver, the user and a digest
//!    of the password) is restored and checked with `whoami`; without one, or when the server
//!    rejects it, pincer logs in with the account's fixed device id (`PINCER` + a hash of the
//!    account and user ids, [`device_id_for`]), so restarts and re-logins never pile up devices.
//!    The session (one SDK [`Client`]) is shared with the account's [`MatrixSender`].
//! 2. The first `/sync` of an attempt asks for `full_state` (the SDK keeps room state in memory
//!    only, and needs the members, names, aliases and `m.direct` to tell DMs from rooms), with no
//!    long-poll wait. Its success makes the attempt ready. On the very first login (no stored
//!    token) the timeline it returns is the backlog, and is skipped; invites are still handled.
//! 3. Then long-polls of `syncTimeoutMs` (default 30 s) from the stored token. After each batch
//!    has been handled (every message accepted by the runtime's sink) the resume state saves the
//!    batch's `next_batch`, so a restart resumes where the last handled batch ended: nothing is
//!    replayed that was handled, nothing is skipped that was not. (The supervisor writes the
//!    resume state to the store when the attempt ends; after a crash the next process resumes
//!    from the token its previous attempt started with, and the runtime's dedupe ledger drops
//!    what is handed over twice.) A room whose timeline comes back `limited` (more events than
//!    the filter's 100) is backfilled with `/messages` from the gap up to the previous token (at
//!    most [`BACKFILL_MAX`] events per room). A stored token the server refuses (HTTP 400, e.g.
//!    after its database was reset) is dropped, and the next attempt starts from now.
//! 4. Liveness: each `/sync` request is a heartbeat (sent when issued, acknowledged when it
//!    answers; interval = the long-poll timeout plus [`REQUEST_SLACK`]). A request that fails
//!    (connection refused, reset, timeout, 5xx) ends the attempt with [`RunError::Retryable`];
//!    a rejected token ends it with `Retryable` after dropping the session (password login: the
//!    next attempt logs in again) or `Fatal` (configured token).
//! 5. On cancellation the in-flight request is dropped, the resume state is kept, and `run`
//!    returns `Ok(())`.
//!
//! # Inbound
//!
//! Invites are accepted per `autoJoin` (`off` by default; `allowlist` matches the room id, its
//! canonical or alternative aliases, or `"*"`). Timeline events of joined rooms become
//! [`Inbound`]s through [`to_inbound`]: `m.room.message` with `msgtype` `m.text`, `m.notice` (a
//! bot's message by Matrix convention: `is_bot`) or `m.emote`. A room is a DM when it is in the
//! bot's `m.direct` (the SDK marks rooms joined from an `is_direct` invite) and has at most two
//! members, joined or invited; every other room is a channel. In a room (not a DM), what was
//! said before the bot joined is not delivered. The bot's own events are not delivered (their
//! ids are remembered for `reply_to_bot`, which also counts a message in a thread whose root is
//! the bot's). Skipped with a reason (counted in the
//! status detail `skipped`, logged with the room and event id): `m.room.encrypted` events
//! ([`SKIP_ENCRYPTED`]: there is no crypto store), edits (`m.replace`), other msgtypes (files,
//! images, ...), malformed events, and replies whose parent cannot be looked up
//! ([`SKIP_PARENT_LOOKUP_FAILED`]). Room and event ids are kept exactly as the server sent them:
//! they are case-sensitive and, since room version 12, room ids have no `:server` part, so they
//! are never parsed or case-folded.
//!
//! # Outbound
//!
//! [`MatrixSender`] sends `m.room.message` (`m.text`, plain `body`, plus an HTML
//! `formatted_body` when the text has Markdown formatting) with `PUT
//! /rooms/{roomId}/send/m.room.message/{txnId}`; the transaction id is derived from the outbox
//! row ([`MatrixSender::txn_id`]), so the server deduplicates a re-send of the same row by the
//! same device. Threads and replies go in `m.relates_to`. Typing: `PUT /rooms/{roomId}/typing`
//! with an 8 s timeout, renewed by the runtime every 4 s during a run; a successful send clears
//! it at once, as does [`ChannelSender::typing_stop`] (for a run that ends without a reply, once
//! the runtime calls it), and otherwise it expires by itself within 8 s.
//!
//! `channels.status` details: `homeserver`, `userId`, `deviceId`, `displayName`, `rooms`
//! (joined), `encryptedRooms`, `e2ee` (always `"unsupported"`), `pendingInvites`, and `skipped`
//! (`{reason: count}`).

use crate::cache::TtlCache;
use crate::catalog::{AccountProblem, AccountSpec};
use crate::lifecycle::{AccountContext, AccountRunner, RunError, StatusReporter};
use crate::outbound::{BoxFuture, ChannelSender, OutboundMessage, Reconciled, SendError, SendReceipt};
use matrix_sdk::authentication::matrix::MatrixSession;
use matrix_sdk::config::{RequestConfig, SyncSettings};
use matrix_sdk::ruma::api::client::filter::{create_filter, FilterDefinition};
use matrix_sdk::ruma::api::client::message::{get_message_events, send_message_event};
use matrix_sdk::ruma::api::client::room::get_room_event;
use matrix_sdk::ruma::api::client::sync::sync_events::v3::Filter;
use matrix_sdk::ruma::api::client::typing::create_typing_event::v3::{Request as TypingRequest, Typing, TypingInfo};
use matrix_sdk::ruma::api::error::{ErrorKind, LimitExceededErrorData, RetryAfter};
use matrix_sdk::ruma::events::room::message::FormattedBody;
use matrix_sdk::ruma::serde::Raw;
use matrix_sdk::ruma::{EventId, OwnedDeviceId, OwnedTransactionId, OwnedUserId, RoomId, UInt, UserId};
use matrix_sdk::store::RoomLoadSettings;
use matrix_sdk::{Client, HttpError, RoomMemberships, SessionMeta, SessionTokens};
use pincer_core::config::{
    matrix_auto_join_allowed, matrix_wake_policy, Config, DmPolicy, GroupPolicy, MatrixAuth, MatrixAutoJoin,
    MatrixDmSessionScope, MatrixThreadReplies, ReplyToMode, ResolvedMatrixAccount,
};
use pincer_core::wake::WakePolicy;
use pincer_core::{AccountId, Author, ChannelId, ChatKind, DeliveryTarget, Inbound, MentionFacts};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Channel id of this adapter.
pub const CHANNEL: &str = "matrix";
/// Timeout of each request other than `/sync` (login, whoami, send, typing, lookups, joins).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);
/// What a `/sync` request may take beyond its long-poll timeout before it counts as dead.
pub const REQUEST_SLACK: Duration = Duration::from_secs(15);
/// How long a typing notification lasts on the server; the runtime renews it every 4 s.
pub const TYPING_TIMEOUT: Duration = Duration::from_secs(8);
/// Timeline events per room and `/sync` batch before the server marks the timeline `limited`.
pub const TIMELINE_LIMIT: u32 = 100;
/// Most events fetched with `/messages` to fill one room's gap after a `limited` timeline.
pub const BACKFILL_MAX: usize = 500;
/// How long an event's sender stays cached (for `reply_to_bot`).
pub const LOOKUP_CACHE_TTL: Duration = Duration::from_secs(600);
/// Max entries of the event-sender cache (expired entries are evicted first, then all).
const LOOKUP_CACHE_CAP: usize = 8192;
/// Skip reason: an event in an end-to-end-encrypted room (no crypto store).
pub const SKIP_ENCRYPTED: &str = "encrypted_unsupported";
/// Skip reason: the event a reply points at could not be looked up.
pub const SKIP_PARENT_LOOKUP_FAILED: &str = "parent_lookup_failed";
/// Skip reason: an edit (`m.replace`) of an earlier message.
pub const SKIP_EDIT: &str = "edit";
/// Skip reason: a message type pincer does not read (images, files, locations, ...).
pub const SKIP_UNSUPPORTED_MSGTYPE: &str = "unsupported_msgtype";
/// Skip reason: an event that could not be parsed.
pub const SKIP_MALFORMED_EVENT: &str = "malformed_event";
/// The `e2ee` status detail: encrypted rooms are not readable.
pub const E2EE_UNSUPPORTED: &str = "unsupported";

fn problem(account: &str, message: impl Into<String>) -> AccountProblem {
    AccountProblem { channel: ChannelId::new(CHANNEL), account: AccountId::new(account), message: message.into() }
}

/// Build every enabled `channels.matrix` account of `config`: a [`MatrixRunner`] and a
/// [`MatrixSender`] sharing one session slot, with
/// [`ResolvedMatrixAccount::connection_fingerprint`] as the fingerprint (secrets appear only as
/// digests; policy keys are not part of it, so changing them keeps the connection). Problems:
/// no homeserver, no credentials, or the same credentials on the same homeserver as an earlier
/// account (each message would be handled twice). `env` supplies the `MATRIX_*` variables for
/// the `default` account. Needs no async runtime.
pub fn build_accounts(
    config: &Config,
    env: &dyn Fn(&str) -> Option<String>,
) -> Vec<Result<AccountSpec, AccountProblem>> {
    let Some(section) = &config.channels.matrix else {
        return Vec::new();
    };
    let mut seen: HashMap<(String, String), String> = HashMap::new();
    section
        .resolved_accounts(&config.channels.defaults, env)
        .into_iter()
        .map(|resolved| {
            let account = resolved.map_err(|p| problem(&p.account_id, p.message))?;
            let id = account.account_id.clone();
            let who = match (&account.auth, &account.user_id) {
                (MatrixAuth::Password(_), Some(user)) => user.to_ascii_lowercase(),
                (auth, _) => auth.digest(),
            };
            let key = (account.homeserver.clone(), who);
            if let Some(first) = seen.get(&key) {
                return Err(problem(
                    &id,
                    format!(
                        "uses the same Matrix user and homeserver as account \"{first}\" (each message would be handled twice)"
                    ),
                ));
            }
            seen.insert(key, id.clone());
            let shared = Arc::new(Shared::new(Arc::new(account)));
            Ok(AccountSpec {
                channel: ChannelId::new(CHANNEL),
                account: AccountId::new(&id),
                fingerprint: shared.account.connection_fingerprint(),
                health_monitor: shared.account.health_monitor,
                runner: Some(Arc::new(MatrixRunner { shared: shared.clone() })),
                sender: Arc::new(MatrixSender { shared }),
            })
        })
        .collect()
}

fn policy_account(config: &Config, account: &AccountId) -> Option<ResolvedMatrixAccount> {
    config.channels.matrix.as_ref().and_then(|m| m.policy_account(account.as_str(), &config.channels.defaults))
}

/// The wake policy of a Matrix message, from the current config (see [`matrix_wake_policy`]). A
/// message of an account that is not configured (or disabled) gets a policy that drops
/// everything.
pub fn wake_policy(config: &Config, inbound: &Inbound) -> WakePolicy {
    match policy_account(config, &inbound.account) {
        Some(a) => matrix_wake_policy(&a, inbound),
        None => WakePolicy { dm_policy: DmPolicy::Disabled, group_policy: GroupPolicy::Disabled, ..Default::default() },
    }
}

/// `replyToMode` of a Matrix account (`off` for unknown accounts): whether a reply carries an
/// `m.in_reply_to` reference to the inbound message. Where replies go relative to threads is
/// `threadReplies`, applied by the adapter.
pub fn reply_to_mode(config: &Config, account: &AccountId) -> ReplyToMode {
    policy_account(config, account).map(|a| a.reply_to_mode).unwrap_or_default()
}

/// The fixed device id of an account's password logins: `PINCER` + 10 hex digits (uppercase) of
/// SHA-256 over the account id and the user id. Logging in with the same device id reuses the
/// device, so a lost or revoked token never leaves an extra device behind.
pub fn device_id_for(account_id: &str, user_id: &str) -> String {
    let mut h = Sha256::new();
    h.update(account_id.as_bytes());
    h.update([0u8]);
    h.update(user_id.as_bytes());
    format!("PINCER{}", hex::encode(h.finalize())[..10].to_ascii_uppercase())
}

// ---------------------------------------------------------------------------------------
// Event parsing (pure)
// ---------------------------------------------------------------------------------------

/// The parts of a timeline event the adapter reads, from its JSON.
#[derive(Clone, Debug, PartialEq)]
pub struct TimelineEvent {
    /// `type`.
    pub kind: String,
    /// `event_id`, exactly as sent.
    pub event_id: String,
    /// `sender`.
    pub sender: String,
    /// `origin_server_ts`, ms.
    pub ts_ms: i64,
    /// `content` (empty object when redacted).
    pub content: Value,
    /// `state_key`, for state events.
    pub state_key: Option<String>,
}

impl TimelineEvent {
    /// Parse an event's JSON. Errors: a message for the log.
    pub fn parse(json: &str) -> Result<TimelineEvent, String> {
        let v: Value = serde_json::from_str(json).map_err(|e| format!("not JSON: {e}"))?;
        let s = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_string);
        Ok(TimelineEvent {
            kind: s("type").ok_or("no type")?,
            event_id: s("event_id").ok_or("no event_id")?,
            sender: s("sender").ok_or("no sender")?,
            ts_ms: v.get("origin_server_ts").and_then(Value::as_i64).unwrap_or(0),
            content: v.get("content").cloned().unwrap_or_else(|| json!({})),
            state_key: s("state_key"),
        })
    }

    fn str_field(&self, key: &str) -> Option<&str> {
        self.content.get(key).and_then(Value::as_str)
    }
}

/// `m.relates_to` of a message.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Relations {
    /// The thread root, for an `m.thread` relation.
    pub thread_root: Option<String>,
    /// The event this one deliberately replies to (`m.in_reply_to` that is not a thread's
    /// fallback).
    pub reply_to: Option<String>,
    /// `rel_type: m.replace`.
    pub is_edit: bool,
}

/// Read `content["m.relates_to"]`.
pub fn relations(content: &Value) -> Relations {
    let rel = &content["m.relates_to"];
    let in_reply_to = rel["m.in_reply_to"]["event_id"].as_str().map(str::to_string);
    match rel["rel_type"].as_str() {
        Some("m.thread") => Relations {
            thread_root: rel["event_id"].as_str().map(str::to_string),
            reply_to: if rel["is_falling_back"].as_bool() == Some(true) { None } else { in_reply_to },
            is_edit: false,
        },
        Some("m.replace") => Relations { is_edit: true, ..Default::default() },
        _ => Relations { reply_to: in_reply_to, ..Default::default() },
    }
}

/// `body` without the reply fallback (leading `> ` quote lines and the blank line after them)
/// that older clients put into replies.
pub fn strip_reply_fallback(body: &str) -> &str {
    if !body.starts_with('>') {
        return body;
    }
    let mut rest = body;
    loop {
        match rest.split_once('\n') {
            Some((line, tail)) if line.starts_with('>') => rest = tail,
            Some(("", tail)) => return tail,
            _ => return body,
        }
    }
}

/// The bot as seen in one room: its user id and the name people address it by.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BotIdentity {
    /// `@localpart:server`.
    pub user_id: String,
    /// Display name in the room (or the profile's), if any.
    pub display_name: Option<String>,
}

impl BotIdentity {
    fn localpart(&self) -> &str {
        self.user_id.trim_start_matches('@').split(':').next().unwrap_or_default()
    }

    /// The names a message may start with to address the bot, longest first.
    fn names(&self) -> Vec<String> {
        let mut names = vec![self.user_id.clone(), format!("@{}", self.localpart())];
        if let Some(d) = self.display_name.as_deref().map(str::trim).filter(|d| !d.is_empty()) {
            names.push(d.to_string());
        }
        names.push(self.localpart().to_string());
        names.retain(|n| !n.is_empty());
        names.sort_by_key(|n| std::cmp::Reverse(n.len()));
        names.dedup();
        names
    }
}

/// Byte offsets of `needle` in `hay`, ASCII case-insensitively, where neither neighbour is a
/// letter, digit, `_` or `-` (so `pincer` does not match inside `pincers`).
fn word_matches(hay: &str, needle: &str) -> bool {
    if needle.is_empty() {
        return false;
    }
    let (h, n) = (hay.to_lowercase(), needle.to_lowercase());
    let word = |c: char| c.is_alphanumeric() || c == '_' || c == '-';
    let mut from = 0;
    while let Some(i) = h[from..].find(&n).map(|i| i + from) {
        let end = i + n.len();
        let before = h[..i].chars().next_back().is_none_or(|c| !word(c));
        let after = h[end..].chars().next().is_none_or(|c| !word(c));
        if before && after {
            return true;
        }
        from = end;
    }
    false
}

/// Whether a message mentions the bot: `m.mentions.user_ids` holds it, a pill in
/// `formatted_body` links to it (`https://matrix.to/#/@bot:server`, percent-encoded or not, or
/// `matrix:u/bot:server`), or `body` (reply fallback removed) contains its user id or display
/// name as a word. `@room` (`m.mentions.room`) is not a mention of the bot.
pub fn mentions_bot(content: &Value, body: &str, bot: &BotIdentity) -> bool {
    let listed = content["m.mentions"]["user_ids"]
        .as_array()
        .is_some_and(|ids| ids.iter().any(|i| i.as_str() == Some(bot.user_id.as_str())));
    if listed {
        return true;
    }
    if let Some(html) = content["formatted_body"].as_str() {
        let html = html.to_lowercase();
        let id = bot.user_id.to_lowercase();
        let encoded = id.replace('@', "%40").replace(':', "%3a");
        let uri = format!("matrix:u/{}", id.trim_start_matches('@'));
        if [format!("matrix.to/#/{id}"), format!("matrix.to/#/{encoded}"), uri].iter().any(|p| html.contains(p)) {
            return true;
        }
    }
    word_matches(body, &bot.user_id)
        || bot.display_name.as_deref().map(str::trim).is_some_and(|d| word_matches(body, d))
}

/// `text` without a leading address to the bot (`pincer-bot: hi`, `@pincer-bot:server, hi`),
/// the `:`/`,` after it and the whitespace after that.
pub fn strip_leading_mention(text: &str, bot: &BotIdentity) -> String {
    let trimmed = text.trim_start();
    for name in bot.names() {
        let Some(head) = trimmed.get(..name.len()) else { continue };
        if !head.eq_ignore_ascii_case(&name) {
            continue;
        }
        let rest = &trimmed[name.len()..];
        if rest.chars().next().is_some_and(|c| c.is_alphanumeric() || c == '_' || c == '-') {
            continue;
        }
        let rest = rest.strip_prefix([':', ',']).unwrap_or(rest);
        return rest.trim_start().to_string();
    }
    text.to_string()
}

/// What the adapter knows about the room of a message.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RoomFacts {
    /// Room id, exactly as the server sent it.
    pub room_id: String,
    /// A DM: the room is in the bot's `m.direct` (or the bot was invited with `is_direct`) and
    /// has at most two members (joined or invited).
    pub is_dm: bool,
    /// `m.room.canonical_alias`, if any.
    pub canonical_alias: Option<String>,
}

/// How a message is read, before it becomes an [`Inbound`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Readable {
    /// A text message (`m.text`, `m.notice`, `m.emote`).
    Text,
    /// Skipped with this reason.
    Skip(&'static str),
    /// Not a message (state, reactions, redactions, ...): ignored silently.
    Ignore,
}

/// Whether an event is a message the bot reads.
pub fn readable(ev: &TimelineEvent) -> Readable {
    match ev.kind.as_str() {
        "m.room.encrypted" => Readable::Skip(SKIP_ENCRYPTED),
        "m.room.message" if ev.state_key.is_none() => {
            if relations(&ev.content).is_edit {
                return Readable::Skip(SKIP_EDIT);
            }
            match ev.str_field("msgtype") {
                Some("m.text" | "m.notice" | "m.emote") if ev.str_field("body").is_some() => Readable::Text,
                // Redacted: the content is gone.
                None if ev.content.as_object().is_some_and(|o| o.is_empty()) => Readable::Ignore,
                Some(_) if ev.str_field("body").is_some() => Readable::Skip(SKIP_UNSUPPORTED_MSGTYPE),
                _ => Readable::Skip(SKIP_MALFORMED_EVENT),
            }
        }
        _ => Readable::Ignore,
    }
}

/// Normalise one text message. Pure.
///
/// - `chat_kind`: [`ChatKind::Direct`] for a DM room, else [`ChatKind::Channel`]; `peer_id` =
///   the sender for DMs (`dm.sessionScope: per-room`: the room), the room id otherwise;
///   `chat_id` = the room id; `parent_peer_id` = the room's canonical alias (so `groups` and
///   bindings can name a room by alias).
/// - `thread_id` by `threadReplies` (`dm.threadReplies` for DMs): `off` → none (the message
///   belongs to the room's conversation and the reply goes to the top level); `inbound` → the
///   thread root of an `m.thread` message; `always` → that root, or the message itself (the
///   reply opens a thread under it, and the conversation continues in that thread's session).
/// - `author`: the sender, `name` = its display name, `is_bot` for `m.notice`, `is_self` for
///   the bot.
/// - `message_id` = the event id; `text` = `body` without the reply fallback and without a
///   leading address to the bot; `ts_ms` = `origin_server_ts`.
/// - Mentions: `native` per [`mentions_bot`]; `reply_to_bot` as given; `can_detect` true.
pub fn to_inbound(
    ev: &TimelineEvent,
    room: &RoomFacts,
    bot: &BotIdentity,
    account: &ResolvedMatrixAccount,
    account_id: &AccountId,
    author_name: Option<String>,
    reply_to_bot: bool,
) -> Inbound {
    let rel = relations(&ev.content);
    let raw = ev.str_field("body").unwrap_or_default();
    let body = if rel.reply_to.is_some() || rel.thread_root.is_some() { strip_reply_fallback(raw) } else { raw };
    let kind = if room.is_dm { ChatKind::Direct } else { ChatKind::Channel };
    let peer_id = match (kind, account.dm_session_scope) {
        (ChatKind::Direct, MatrixDmSessionScope::PerUser) => ev.sender.clone(),
        _ => room.room_id.clone(),
    };
    let thread_id = match account.thread_replies_for(kind) {
        MatrixThreadReplies::Off => None,
        MatrixThreadReplies::Inbound => rel.thread_root.clone(),
        MatrixThreadReplies::Always => Some(rel.thread_root.clone().unwrap_or_else(|| ev.event_id.clone())),
    };
    Inbound {
        channel: ChannelId::new(CHANNEL),
        account: account_id.clone(),
        chat_kind: kind,
        peer_id,
        parent_peer_id: if kind == ChatKind::Direct { None } else { room.canonical_alias.clone() },
        chat_id: room.room_id.clone(),
        guild_id: None,
        team_id: None,
        member_roles: Vec::new(),
        thread_id,
        author: Author {
            id: ev.sender.clone(),
            name: author_name.filter(|n| !n.trim().is_empty()),
            is_bot: ev.str_field("msgtype") == Some("m.notice"),
            is_self: ev.sender == bot.user_id,
        },
        message_id: ev.event_id.clone(),
        text: strip_leading_mention(body, bot),
        ts_ms: ev.ts_ms,
        mentions: MentionFacts {
            native: mentions_bot(&ev.content, body, bot),
            reply_to_bot,
            can_detect: true,
            ..Default::default()
        },
    }
}

/// What the invite state of a room says about an invite.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Invite {
    /// Who sent it.
    pub inviter: Option<String>,
    /// `is_direct` on the bot's invite.
    pub is_direct: bool,
    /// Canonical and alternative aliases of the room.
    pub aliases: Vec<String>,
}

/// Read the stripped state events of an invite (as JSON strings).
pub fn invite_facts<'a>(bot_user_id: &str, events: impl IntoIterator<Item = &'a str>) -> Invite {
    let mut out = Invite::default();
    for raw in events {
        let Ok(v) = serde_json::from_str::<Value>(raw) else { continue };
        match v["type"].as_str() {
            Some("m.room.member") if v["state_key"].as_str() == Some(bot_user_id) => {
                out.inviter = v["sender"].as_str().map(str::to_string);
                out.is_direct = v["content"]["is_direct"].as_bool() == Some(true);
            }
            Some("m.room.canonical_alias") => {
                let c = &v["content"];
                out.aliases.extend(c["alias"].as_str().map(str::to_string));
                out.aliases.extend(
                    c["alt_aliases"].as_array().into_iter().flatten().filter_map(|a| a.as_str().map(str::to_string)),
                );
            }
            _ => {}
        }
    }
    out
}

/// Whether `autoJoin` accepts an invite to `room_id`.
pub fn should_join(account: &ResolvedMatrixAccount, room_id: &str, invite: &Invite) -> bool {
    match account.auto_join {
        MatrixAutoJoin::Off => false,
        MatrixAutoJoin::Always => true,
        MatrixAutoJoin::Allowlist => matrix_auto_join_allowed(&account.auto_join_allowlist, room_id, &invite.aliases),
    }
}

/// The index of the last event in `raws` (timeline event JSON, oldest first) where `bot_user_id`
/// joined the room (its membership became `join`), if the bot joined within them.
pub fn joined_at(raws: &[String], bot_user_id: &str) -> Option<usize> {
    raws.iter().rposition(|raw| {
        let Ok(v) = serde_json::from_str::<Value>(raw) else { return false };
        v["type"] == "m.room.member"
            && v["state_key"].as_str() == Some(bot_user_id)
            && v["content"]["membership"] == "join"
            && v["unsigned"]["prev_content"]["membership"] != "join"
    })
}

// ---------------------------------------------------------------------------------------
// Session
// ---------------------------------------------------------------------------------------

/// A logged-in SDK client of the account.
struct Session {
    client: Client,
    user_id: OwnedUserId,
    device_id: String,
    /// The access token, kept only for a password login (it goes into the resume state).
    access_token: Option<String>,
}

impl fmt::Debug for Session {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Session").field("user_id", &self.user_id).field("device_id", &self.device_id).finish()
    }
}

/// Why a session could not be established.
#[derive(Clone, Debug, PartialEq, Eq)]
enum AuthError {
    /// The server refused the credentials (401, `M_FORBIDDEN` at login) or they are wrong for
    /// the account (another user).
    Rejected(String),
    /// Network error, timeout, 5xx, 429.
    Transport(String),
}

/// How a request failed, from the SDK's error.
#[derive(Clone, Debug, PartialEq, Eq)]
enum ReqError {
    /// 401: the access token is unknown or revoked.
    Unauthorized(String),
    /// Another HTTP status, with the Matrix error when the server sent one.
    Status { status: u16, message: String, retry_after_ms: Option<u64> },
    /// Network error, timeout, unreadable response.
    Transport(String),
}

impl fmt::Display for ReqError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReqError::Unauthorized(m) | ReqError::Transport(m) | ReqError::Status { message: m, .. } => f.write_str(m),
        }
    }
}

fn req_error(what: &str, e: &HttpError) -> ReqError {
    let Some(api) = e.as_client_api_error() else {
        return ReqError::Transport(format!("{what} failed: {e}"));
    };
    let status = api.status_code.as_u16();
    let message = format!("{what}: the homeserver answered HTTP {status}: {e}");
    if status == 401 {
        return ReqError::Unauthorized(message);
    }
    let retry_after_ms = match api.error_kind() {
        Some(ErrorKind::LimitExceeded(LimitExceededErrorData { retry_after: Some(RetryAfter::Delay(d)), .. })) => {
            Some(d.as_millis() as u64)
        }
        _ => None,
    };
    ReqError::Status { status, message, retry_after_ms }
}

fn sdk_error(what: &str, e: matrix_sdk::Error) -> ReqError {
    match e {
        matrix_sdk::Error::Http(h) => req_error(what, &h),
        other => ReqError::Transport(format!("{what} failed: {other}")),
    }
}

/// Run `fut` under `limit`, or return `None` when `cancel` fires first.
async fn bounded<T>(
    cancel: &CancellationToken,
    limit: Duration,
    what: &str,
    fut: impl Future<Output = Result<T, ReqError>>,
) -> Option<Result<T, ReqError>> {
    tokio::select! {
        _ = cancel.cancelled() => None,
        r = tokio::time::timeout(limit, fut) => {
            Some(r.unwrap_or_else(|_| Err(ReqError::Transport(format!("{what} timed out after {} s", limit.as_secs())))))
        }
    }
}

/// A session saved in the resume state (password login only).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct StoredSession {
    /// Digest of the password it was made with.
    auth: String,
    device_id: String,
    access_token: String,
}

/// Resume state saved through [`StatusReporter::save_resume`]: JSON `{"v": 1, "homeserver",
/// "userId", "session"?: {"auth", "deviceId", "accessToken"}, "since"?}`. `since` is the
/// `next_batch` of the last batch handled completely. A state saved for another homeserver or
/// user is ignored; the session only applies to a password login with the same password.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ResumeState {
    v: u32,
    homeserver: String,
    user_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    session: Option<StoredSession>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    since: Option<String>,
}

impl ResumeState {
    fn encode(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// The state in `json` if it parses and belongs to `account`'s homeserver (and configured
    /// user, when there is one).
    fn decode(json: &str, account: &ResolvedMatrixAccount) -> Option<ResumeState> {
        let s: ResumeState = serde_json::from_str(json).ok()?;
        let user_ok = account.user_id.as_deref().is_none_or(|u| u.eq_ignore_ascii_case(&s.user_id));
        (s.v == 1 && s.homeserver == account.homeserver && user_ok).then_some(s)
    }

    /// The stored session, if it was made with the account's current password.
    fn session_for(&self, account: &ResolvedMatrixAccount) -> Option<&StoredSession> {
        let password = matches!(account.auth, MatrixAuth::Password(_));
        self.session.as_ref().filter(|s| password && s.auth == account.auth.digest())
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// What the runner and the sender of one account share: the session (one SDK client), the
/// event-sender cache and the skip counters.
///
/// Limitation: the runtime rebuilds senders on every config reload but keeps the running
/// runner of an unchanged account, so after such a reload the new sender has a slot of its own.
/// With `accessToken` that costs one `whoami`; with a password login it costs one more login
/// on the account's fixed device (a second access token for the same device, no new device).
struct Shared {
    account: Arc<ResolvedMatrixAccount>,
    session: Mutex<Option<Arc<Session>>>,
    establishing: tokio::sync::Mutex<()>,
    senders: Mutex<TtlCache<String>>,
    skipped: Mutex<BTreeMap<&'static str, u64>>,
}

impl Shared {
    fn new(account: Arc<ResolvedMatrixAccount>) -> Shared {
        Shared {
            account,
            session: Mutex::new(None),
            establishing: tokio::sync::Mutex::new(()),
            senders: Mutex::new(TtlCache::new(LOOKUP_CACHE_TTL, LOOKUP_CACHE_CAP)),
            skipped: Mutex::new(BTreeMap::new()),
        }
    }

    fn current(&self) -> Option<Arc<Session>> {
        lock(&self.session).clone()
    }

    /// Forget `session` (its token was rejected), unless another one replaced it already.
    fn invalidate(&self, session: &Arc<Session>) {
        let mut s = lock(&self.session);
        if s.as_ref().is_some_and(|cur| Arc::ptr_eq(cur, session)) {
            *s = None;
        }
    }

    /// The account's session: the current one, else a new one (restoring `stored` when given
    /// and accepted, else logging in or checking the configured token).
    async fn establish(&self, stored: Option<&StoredSession>) -> Result<Arc<Session>, AuthError> {
        let _one_at_a_time = self.establishing.lock().await;
        if let Some(s) = self.current() {
            return Ok(s);
        }
        let account = &self.account;
        let session = match &account.auth {
            MatrixAuth::AccessToken(token) => self.token_session(token).await?,
            MatrixAuth::Password(password) => {
                let restored = match stored {
                    Some(st) => match self.restore(st).await {
                        Ok(s) => Some(s),
                        Err(AuthError::Rejected(why)) => {
                            tracing::info!(account = %account.account_id, reason = %why,
                                "matrix: the stored session was rejected; logging in again");
                            None
                        }
                        Err(e) => return Err(e),
                    },
                    None => None,
                };
                match restored {
                    Some(s) => s,
                    None => self.login(password).await?,
                }
            }
        };
        let session = Arc::new(session);
        *lock(&self.session) = Some(session.clone());
        Ok(session)
    }

    async fn new_client(&self) -> Result<Client, AuthError> {
        Client::builder()
            .homeserver_url(&self.account.homeserver)
            .request_config(RequestConfig::new().timeout(REQUEST_TIMEOUT).disable_retry())
            .build()
            .await
            .map_err(|e| AuthError::Rejected(format!("cannot use homeserver {}: {e}", self.account.homeserver)))
    }

    /// A client restored with `token` for `user_id`/`device_id`.
    async fn restored_client(&self, user_id: &UserId, device_id: &str, token: &str) -> Result<Client, AuthError> {
        let client = self.new_client().await?;
        let session = MatrixSession {
            meta: SessionMeta { user_id: user_id.to_owned(), device_id: OwnedDeviceId::from(device_id) },
            tokens: SessionTokens { access_token: token.to_string(), refresh_token: None },
        };
        client
            .matrix_auth()
            .restore_session(session, RoomLoadSettings::default())
            .await
            .map_err(|e| AuthError::Transport(format!("restoring the session failed: {e}")))?;
        Ok(client)
    }

    /// `whoami` with `client`: the token's user and device.
    async fn whoami(client: &Client) -> Result<(OwnedUserId, Option<String>), AuthError> {
        let r = tokio::time::timeout(REQUEST_TIMEOUT, client.whoami())
            .await
            .map_err(|_| AuthError::Transport(format!("whoami timed out after {} s", REQUEST_TIMEOUT.as_secs())))?;
        match r {
            Ok(w) => Ok((w.user_id, w.device_id.map(|d| d.to_string()))),
            Err(e) => match req_error("GET /account/whoami", &e) {
                ReqError::Unauthorized(m) => Err(AuthError::Rejected(m)),
                e => Err(AuthError::Transport(e.to_string())),
            },
        }
    }

    async fn token_session(&self, token: &str) -> Result<Session, AuthError> {
        // The SDK needs the user and device to restore a session; learn them with a first
        // client, then restore the real one with the right metadata.
        let placeholder = UserId::parse("@pincer:invalid").expect("a valid user id");
        let probe = self.restored_client(&placeholder, "PINCER", token).await?;
        let (user_id, device) = Self::whoami(&probe).await?;
        if let Some(want) = self.account.user_id.as_deref().filter(|w| !w.eq_ignore_ascii_case(user_id.as_str())) {
            return Err(AuthError::Rejected(format!("the access token belongs to {user_id}, not to userId {want}")));
        }
        let device_id = device.unwrap_or_else(|| "PINCER".to_string());
        let client = self.restored_client(&user_id, &device_id, token).await?;
        Ok(Session { client, user_id, device_id, access_token: None })
    }

    async fn restore(&self, stored: &StoredSession) -> Result<Session, AuthError> {
        let want = self.account.user_id.as_deref().unwrap_or_default();
        let user_id = UserId::parse(want).map_err(|e| AuthError::Rejected(format!("userId {want:?}: {e}")))?;
        let client = self.restored_client(&user_id, &stored.device_id, &stored.access_token).await?;
        let (owner, _) = Self::whoami(&client).await?;
        if owner != user_id {
            return Err(AuthError::Rejected(format!("the stored token belongs to {owner}")));
        }
        Ok(Session {
            client,
            user_id,
            device_id: stored.device_id.clone(),
            access_token: Some(stored.access_token.clone()),
        })
    }

    async fn login(&self, password: &str) -> Result<Session, AuthError> {
        let account = &self.account;
        let want = account.user_id.as_deref().unwrap_or_default();
        let device_id = device_id_for(&account.account_id, want);
        let client = self.new_client().await?;
        let login = client
            .matrix_auth()
            .login_username(want, password)
            .device_id(&device_id)
            .initial_device_display_name(&account.device_name)
            .send();
        let r = tokio::time::timeout(REQUEST_TIMEOUT, login)
            .await
            .map_err(|_| AuthError::Transport(format!("login timed out after {} s", REQUEST_TIMEOUT.as_secs())))?;
        match r {
            Ok(resp) => {
                tracing::info!(account = %account.account_id, user = %resp.user_id, device = %resp.device_id,
                    "matrix: logged in with the password");
                Ok(Session {
                    client,
                    user_id: resp.user_id,
                    device_id: resp.device_id.to_string(),
                    access_token: Some(resp.access_token),
                })
            }
            Err(e) => match sdk_error("POST /login", e) {
                ReqError::Unauthorized(m) => Err(AuthError::Rejected(m)),
                ReqError::Status { status: 400 | 403, message, .. } => Err(AuthError::Rejected(message)),
                e => Err(AuthError::Transport(e.to_string())),
            },
        }
    }

    /// The sender of event `event_id` in `room_id`, from the cache or
    /// `GET /rooms/{roomId}/event/{eventId}`. `None` when cancelled meanwhile.
    async fn event_sender(
        &self,
        session: &Session,
        cancel: &CancellationToken,
        room_id: &RoomId,
        event_id: &str,
    ) -> Option<Result<String, ReqError>> {
        if let Some(s) = lock(&self.senders).get(event_id) {
            return Some(Ok(s));
        }
        let Ok(eid) = EventId::parse(event_id) else {
            return Some(Err(ReqError::Transport(format!("{event_id:?} is not an event id"))));
        };
        let request = get_room_event::v3::Request::new(room_id.to_owned(), eid);
        let what = "GET /rooms/{roomId}/event/{eventId}";
        let fut = async { session.client.send(request).await.map_err(|e| req_error(what, &e)) };
        let r = bounded(cancel, REQUEST_TIMEOUT, what, fut).await?;
        Some(r.and_then(|resp| {
            let ev = TimelineEvent::parse(resp.event.json().get()).map_err(ReqError::Transport)?;
            lock(&self.senders).insert(event_id.to_string(), ev.sender.clone());
            Ok(ev.sender)
        }))
    }

    /// Count a skipped message and publish the counters as the `skipped` detail.
    fn skip(&self, status: &StatusReporter, reason: &'static str) {
        let counts = {
            let mut s = lock(&self.skipped);
            *s.entry(reason).or_default() += 1;
            s.clone()
        };
        let map: serde_json::Map<String, Value> = counts.into_iter().map(|(k, v)| (k.to_string(), json!(v))).collect();
        status.detail("skipped", Value::Object(map));
    }
}

// ---------------------------------------------------------------------------------------
// Runner
// ---------------------------------------------------------------------------------------

/// The connection side of one Matrix account. See the module docs for what one `run` does.
pub struct MatrixRunner {
    shared: Arc<Shared>,
}

impl fmt::Debug for MatrixRunner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MatrixRunner")
            .field("account", &self.shared.account.account_id)
            .field("homeserver", &self.shared.account.homeserver)
            .finish_non_exhaustive()
    }
}

impl AccountRunner for MatrixRunner {
    fn run(self: Arc<Self>, ctx: AccountContext) -> BoxFuture<'static, Result<(), RunError>> {
        Box::pin(async move { self.attempt(ctx).await })
    }
}

/// The `/sync` filter: up to [`TIMELINE_LIMIT`] timeline events per room, all member state (no
/// lazy loading: the member count decides DM vs room), no presence, no typing or receipts.
fn sync_filter() -> FilterDefinition {
    let mut def = FilterDefinition::default();
    def.room.timeline.limit = Some(UInt::from(TIMELINE_LIMIT));
    def.room.ephemeral.not_types = vec!["*".to_string()];
    def.presence.not_types = vec!["*".to_string()];
    def
}

/// What handling one batch or event asks the loop to do next.
enum Flow {
    Continue,
    Cancelled,
    SinkClosed,
}

impl MatrixRunner {
    async fn attempt(&self, ctx: AccountContext) -> Result<(), RunError> {
        let shared = &self.shared;
        let account = &shared.account;
        let cancel = ctx.cancel.clone();
        let fail = |e: RunError| {
            ctx.status.error(e.to_string());
            Err(e)
        };
        // Carry a valid resume state forward even if this attempt fails before it syncs (the
        // supervisor persists what the attempt leaves in its facts).
        let resume = ctx.resume.as_deref().and_then(|s| ResumeState::decode(s, account));
        ctx.status.save_resume(resume.as_ref().map(ResumeState::encode));
        ctx.status.detail("homeserver", account.homeserver.clone());
        ctx.status.detail("e2ee", E2EE_UNSUPPORTED);

        let stored = resume.as_ref().and_then(|r| r.session_for(account));
        let session = tokio::select! {
            _ = cancel.cancelled() => return Ok(()),
            r = shared.establish(stored) => match r {
                Ok(s) => s,
                Err(AuthError::Rejected(m)) => return fail(RunError::Fatal(format!("credentials rejected: {m}"))),
                Err(AuthError::Transport(m)) => return fail(RunError::Retryable(m)),
            },
        };
        let user_id = session.user_id.to_string();
        ctx.status.detail("userId", user_id.clone());
        ctx.status.detail("deviceId", session.device_id.clone());
        let since = resume.filter(|r| r.user_id.eq_ignore_ascii_case(&user_id)).and_then(|r| r.since);
        let display_name = match bounded(&cancel, REQUEST_TIMEOUT, "GET /profile/{userId}/displayname", async {
            session.client.account().get_display_name().await.map_err(|e| sdk_error("GET displayname", e))
        })
        .await
        {
            None => return Ok(()),
            Some(Ok(name)) => name,
            Some(Err(e)) => {
                tracing::debug!(account = %account.account_id, error = %e, "matrix: no profile display name");
                None
            }
        };
        if let Some(d) = &display_name {
            ctx.status.detail("displayName", d.clone());
        }
        let mut conn = Connection {
            shared,
            ctx: &ctx,
            session,
            since,
            profile_name: display_name,
            ready: false,
            invites_logged: HashSet::new(),
        };
        conn.save_resume();
        match conn.pump().await {
            Ok(()) => Ok(()),
            Err(e) => fail(e),
        }
    }
}

/// State of one attempt.
struct Connection<'a> {
    shared: &'a Shared,
    ctx: &'a AccountContext,
    session: Arc<Session>,
    /// `next_batch` of the last batch handled completely (`None` before the first login's sync).
    since: Option<String>,
    /// The bot's profile display name.
    profile_name: Option<String>,
    ready: bool,
    /// Invites already reported as ignored in this attempt.
    invites_logged: HashSet<String>,
}

impl Connection<'_> {
    fn account(&self) -> &ResolvedMatrixAccount {
        &self.shared.account
    }

    fn save_resume(&self) {
        let session = self.session.access_token.as_ref().map(|token| StoredSession {
            auth: self.account().auth.digest(),
            device_id: self.session.device_id.clone(),
            access_token: token.clone(),
        });
        let state = ResumeState {
            v: 1,
            homeserver: self.account().homeserver.clone(),
            user_id: self.session.user_id.to_string(),
            session,
            since: self.since.clone(),
        };
        self.ctx.status.save_resume(Some(state.encode()));
    }

    /// The connection is gone: report it, keep the resume point, and build the error.
    fn lost(&self, why: String) -> RunError {
        tracing::warn!(account = %self.account().account_id, "matrix sync lost: {why}");
        self.ctx.status.disconnected(why.clone());
        self.save_resume();
        RunError::Retryable(why)
    }

    /// A requested stop: keep the resume point and report the close.
    fn close(&self) -> Result<(), RunError> {
        self.save_resume();
        self.ctx.status.disconnected("closed: stop requested");
        Ok(())
    }

    async fn pump(&mut self) -> Result<(), RunError> {
        let cancel = self.ctx.cancel.clone();
        let long_poll = Duration::from_millis(self.account().sync_timeout_ms.max(1));
        self.ctx.status.heartbeat_interval(long_poll + REQUEST_SLACK);
        let first_login = self.since.is_none();
        let mut full_state = true;
        // Uploaded once per attempt: the id keeps every request (and the SDK's log lines, which
        // print the settings) short.
        let what = "POST /user/{userId}/filter";
        let request = create_filter::v3::Request::new(self.session.user_id.clone(), sync_filter());
        let client = self.session.client.clone();
        let upload = async move { client.send(request).await.map_err(|e| req_error(what, &e)) };
        let filter = match bounded(&cancel, REQUEST_TIMEOUT, what, upload).await {
            None => return self.close(),
            Some(Ok(r)) => Filter::FilterId(r.filter_id),
            Some(Err(ReqError::Unauthorized(m))) => return Err(self.token_rejected(m)),
            Some(Err(e)) => return Err(self.lost(e.to_string())),
        };
        loop {
            let mut settings = SyncSettings::new().filter(filter.clone()).full_state(full_state);
            settings = match &self.since {
                Some(t) => settings.token(t.clone()),
                None => settings.token(matrix_sdk::config::SyncToken::NoToken),
            };
            settings = settings.timeout(if self.ready { long_poll } else { Duration::ZERO });
            self.ctx.status.heartbeat_sent();
            let client = self.session.client.clone();
            let response = tokio::select! {
                _ = cancel.cancelled() => return self.close(),
                r = tokio::time::timeout(long_poll + REQUEST_SLACK, client.sync_once(settings)) => r,
            };
            let response = match response {
                Err(_) => {
                    return Err(
                        self.lost(format!("/sync did not answer within {} s", (long_poll + REQUEST_SLACK).as_secs()))
                    )
                }
                Ok(Err(e)) => return Err(self.sync_failed(e)),
                Ok(Ok(r)) => r,
            };
            self.ctx.status.heartbeat_acked();
            if !self.ready {
                self.ready = true;
                self.ctx.status.ready();
                tracing::info!(account = %self.account().account_id, user = %self.session.user_id,
                    device = %self.session.device_id, resumed = !first_login, "matrix connected");
                tracing::warn!(account = %self.account().account_id,
                    "matrix: end-to-end encryption is not supported (no crypto store); messages in encrypted rooms are skipped with reason {SKIP_ENCRYPTED}");
            }
            let skip_timeline = self.since.is_none();
            let flow = self.handle_batch(&response, skip_timeline).await;
            match flow {
                Flow::Continue => {
                    self.since = Some(response.next_batch.clone());
                    self.save_resume();
                    full_state = false;
                }
                Flow::Cancelled => return self.close(),
                Flow::SinkClosed => {
                    tracing::info!(account = %self.account().account_id, "inbound sink closed; waiting for stop");
                    cancel.cancelled().await;
                    return self.close();
                }
            }
        }
    }

    fn sync_failed(&mut self, e: matrix_sdk::Error) -> RunError {
        match sdk_error("GET /sync", e) {
            ReqError::Unauthorized(m) => self.token_rejected(m),
            ReqError::Status { status: 400, message, .. } if self.since.is_some() => {
                // The stored token is not valid on this server (e.g. its database was reset):
                // retrying it can never work. Start over from now, as after a first login.
                tracing::warn!(account = %self.account().account_id, error = %message,
                    "matrix: the homeserver refused the stored sync token; the next attempt starts from now \
                     and messages sent in between are not answered");
                self.since = None;
                self.lost(format!("the stored sync token was refused: {message}"))
            }
            e => self.lost(e.to_string()),
        }
    }

    /// The session's token was rejected: drop the session; fatal for a configured token, else
    /// retryable (the next attempt logs in again on the same device).
    fn token_rejected(&self, m: String) -> RunError {
        self.shared.invalidate(&self.session);
        if let MatrixAuth::AccessToken(_) = self.account().auth {
            let why = format!("token rejected: {m}");
            self.ctx.status.disconnected(why.clone());
            return RunError::Fatal(why);
        }
        let why = format!("the access token was rejected; the next attempt logs in again: {m}");
        tracing::warn!(account = %self.account().account_id, "matrix sync lost: {why}");
        self.ctx.status.disconnected(why.clone());
        // Forget the stored session (not the sync token): the next attempt logs in on the
        // same device.
        let state = ResumeState {
            v: 1,
            homeserver: self.account().homeserver.clone(),
            user_id: self.session.user_id.to_string(),
            session: None,
            since: self.since.clone(),
        };
        self.ctx.status.save_resume(Some(state.encode()));
        RunError::Retryable(why)
    }

    /// Handle one `/sync` response: invites, then each joined room's timeline (backfilled when
    /// `limited`), then status details. `skip_timeline`: the first login's backlog.
    async fn handle_batch(&mut self, resp: &matrix_sdk::sync::SyncResponse, skip_timeline: bool) -> Flow {
        for (room_id, invite) in &resp.rooms.invited {
            let events = invite.invite_state.events.iter().map(|e| e.json().get());
            let facts = invite_facts(self.session.user_id.as_str(), events);
            if let Flow::Cancelled = self.on_invite(room_id, &facts).await {
                return Flow::Cancelled;
            }
        }
        if skip_timeline {
            let backlog: usize = resp.rooms.joined.values().map(|j| j.timeline.events.len()).sum();
            tracing::info!(account = %self.account().account_id, backlog,
                "matrix: first login; the backlog before it is not answered");
        } else {
            for (room_id, joined) in &resp.rooms.joined {
                let mut raws: Vec<String> = Vec::new();
                if joined.timeline.limited {
                    if let (Some(prev), Some(since)) = (&joined.timeline.prev_batch, &self.since) {
                        match self.backfill(room_id, prev, since).await {
                            None => return Flow::Cancelled,
                            Some(events) => raws.extend(events),
                        }
                    }
                }
                raws.extend(joined.timeline.events.iter().map(|e| e.raw().json().get().to_string()));
                let (facts, bot) = self.room_context(room_id).await;
                // In a room (not a DM), what was said before the bot joined is not for it.
                let start = match (facts.is_dm, joined_at(&raws, &bot.user_id)) {
                    (false, Some(i)) => i + 1,
                    _ => 0,
                };
                let mut seen = HashSet::new();
                for raw in &raws[start..] {
                    match self.on_event(room_id, &facts, &bot, raw, &mut seen).await {
                        Flow::Continue => {}
                        other => return other,
                    }
                }
            }
        }
        self.publish_room_details();
        Flow::Continue
    }

    fn publish_room_details(&self) {
        let client = &self.session.client;
        let joined = client.joined_rooms();
        let encrypted = joined.iter().filter(|r| r.encryption_state().is_encrypted()).count();
        self.ctx.status.detail("rooms", joined.len());
        self.ctx.status.detail("encryptedRooms", encrypted);
        self.ctx.status.detail("pendingInvites", client.invited_rooms().len());
    }

    async fn on_invite(&mut self, room_id: &RoomId, invite: &Invite) -> Flow {
        let account_id = self.account().account_id.clone();
        let inviter = invite.inviter.as_deref().unwrap_or("?");
        if !should_join(self.account(), room_id.as_str(), invite) {
            if self.invites_logged.insert(room_id.to_string()) {
                tracing::info!(account = %account_id, room_id = %room_id, inviter, auto_join = ?self.account().auto_join,
                    "matrix: invite not accepted (autoJoin)");
            }
            return Flow::Continue;
        }
        let client = self.session.client.clone();
        let what = "POST /rooms/{roomId}/join";
        let fut = async { client.join_room_by_id(room_id).await.map(|_| ()).map_err(|e| sdk_error(what, e)) };
        match bounded(&self.ctx.cancel, REQUEST_TIMEOUT, what, fut).await {
            None => Flow::Cancelled,
            Some(Ok(())) => {
                tracing::info!(account = %account_id, room_id = %room_id, inviter, direct = invite.is_direct,
                    "matrix: joined room on invite");
                Flow::Continue
            }
            Some(Err(e)) => {
                tracing::warn!(account = %account_id, room_id = %room_id, error = %e, "matrix: joining on invite failed");
                self.ctx.status.error(format!("joining {room_id} failed: {e}"));
                Flow::Continue
            }
        }
    }

    /// Events between `since` and the gap at `prev_batch` of a `limited` timeline (oldest
    /// first, at most [`BACKFILL_MAX`]). `None` when cancelled.
    async fn backfill(&self, room_id: &RoomId, prev_batch: &str, since: &str) -> Option<Vec<String>> {
        let mut out: Vec<String> = Vec::new();
        let mut from = prev_batch.to_string();
        let what = "GET /rooms/{roomId}/messages";
        while out.len() < BACKFILL_MAX {
            let mut req = get_message_events::v3::Request::backward(room_id.to_owned());
            req.from = Some(from.clone());
            req.to = Some(since.to_string());
            req.limit = UInt::from(100u32);
            let client = self.session.client.clone();
            let fut = async move { client.send(req).await.map_err(|e| req_error(what, &e)) };
            match bounded(&self.ctx.cancel, REQUEST_TIMEOUT, what, fut).await? {
                Ok(resp) => {
                    if resp.chunk.is_empty() {
                        break;
                    }
                    out.extend(resp.chunk.iter().map(|e| e.json().get().to_string()));
                    match resp.end {
                        Some(end) if end != from => from = end,
                        _ => break,
                    }
                }
                Err(e) => {
                    tracing::warn!(account = %self.account().account_id, room_id = %room_id, error = %e,
                        "matrix: filling a gap in the timeline failed; older messages of the gap are not answered");
                    break;
                }
            }
        }
        if out.len() >= BACKFILL_MAX {
            tracing::warn!(account = %self.account().account_id, room_id = %room_id, max = BACKFILL_MAX,
                "matrix: timeline gap larger than the backfill limit; older messages are not answered");
        }
        out.truncate(BACKFILL_MAX);
        out.reverse();
        Some(out)
    }

    /// One timeline event: skip what is not a readable message, resolve the facts, deliver.
    async fn on_event(
        &mut self,
        room_id: &RoomId,
        facts: &RoomFacts,
        bot: &BotIdentity,
        raw: &str,
        seen: &mut HashSet<String>,
    ) -> Flow {
        let shared = self.shared;
        let account_id = &shared.account.account_id;
        let ev = match TimelineEvent::parse(raw) {
            Ok(ev) => ev,
            Err(e) => {
                tracing::warn!(account = %account_id, room_id = %room_id, error = %e, "matrix event not understood; skipped");
                shared.skip(&self.ctx.status, SKIP_MALFORMED_EVENT);
                return Flow::Continue;
            }
        };
        if !seen.insert(ev.event_id.clone()) {
            return Flow::Continue;
        }
        lock(&shared.senders).insert(ev.event_id.clone(), ev.sender.clone());
        self.ctx.status.event();
        if ev.sender == self.session.user_id.as_str() {
            return Flow::Continue;
        }
        match readable(&ev) {
            Readable::Ignore => return Flow::Continue,
            Readable::Skip(reason) => {
                if reason == SKIP_ENCRYPTED || reason == SKIP_MALFORMED_EVENT {
                    tracing::warn!(account = %account_id, room_id = %room_id, event_id = %ev.event_id,
                        sender = %ev.sender, reason, "matrix message skipped");
                } else {
                    tracing::info!(account = %account_id, room_id = %room_id, event_id = %ev.event_id,
                        sender = %ev.sender, reason, "matrix message skipped");
                }
                shared.skip(&self.ctx.status, reason);
                return Flow::Continue;
            }
            Readable::Text => {}
        }
        let cancel = self.ctx.cancel.clone();
        let rel = relations(&ev.content);
        let mut reply_to_bot = false;
        for parent in [rel.reply_to.as_deref(), rel.thread_root.as_deref()].into_iter().flatten() {
            if reply_to_bot {
                break;
            }
            match shared.event_sender(&self.session, &cancel, room_id, parent).await {
                None => return Flow::Cancelled,
                Some(Ok(sender)) => reply_to_bot = sender == self.session.user_id.as_str(),
                Some(Err(e)) => {
                    tracing::warn!(account = %account_id, room_id = %room_id, event_id = %ev.event_id, parent, error = %e,
                        reason = SKIP_PARENT_LOOKUP_FAILED, "matrix: parent event lookup failed; message skipped");
                    shared.skip(&self.ctx.status, SKIP_PARENT_LOOKUP_FAILED);
                    return Flow::Continue;
                }
            }
        }
        let author_name = self.author_name(room_id, &ev.sender).await;
        let inbound = to_inbound(&ev, facts, bot, &shared.account, &self.ctx.account, author_name, reply_to_bot);
        self.ctx.status.inbound();
        tokio::select! {
            biased;
            _ = cancel.cancelled() => Flow::Cancelled,
            r = self.ctx.inbound.deliver(inbound) => match r {
                Ok(()) => Flow::Continue,
                Err(_) => Flow::SinkClosed,
            },
        }
    }

    /// The room's facts (DM or not, canonical alias) and the bot's identity in it, from the
    /// SDK's room state (updated by the batch being handled).
    async fn room_context(&self, room_id: &RoomId) -> (RoomFacts, BotIdentity) {
        let user_id = self.session.user_id.clone();
        let mut facts = RoomFacts { room_id: room_id.to_string(), ..Default::default() };
        let mut bot = BotIdentity { user_id: user_id.to_string(), display_name: self.profile_name.clone() };
        let Some(room) = self.session.client.get_room(room_id) else {
            return (facts, bot);
        };
        facts.canonical_alias = room.canonical_alias().map(|a| a.to_string());
        if room.is_direct().await.unwrap_or(false) {
            let members = room.members_no_sync(RoomMemberships::ACTIVE).await.map(|m| m.len()).unwrap_or(usize::MAX);
            facts.is_dm = members <= 2;
        }
        if let Ok(Some(me)) = room.get_member_no_sync(&user_id).await {
            if let Some(name) = me.display_name() {
                bot.display_name = Some(name.to_string());
            }
        }
        (facts, bot)
    }

    /// The display name of `sender` in the room, if known.
    async fn author_name(&self, room_id: &RoomId, sender: &str) -> Option<String> {
        let room = self.session.client.get_room(room_id)?;
        let user = UserId::parse(sender).ok()?;
        room.get_member_no_sync(&user).await.ok().flatten().and_then(|m| m.display_name().map(str::to_string))
    }
}

// ---------------------------------------------------------------------------------------
// Sender
// ---------------------------------------------------------------------------------------

/// The outbound side of one Matrix account.
///
/// [`ChannelSender::send`]: `PUT /rooms/{roomId}/send/m.room.message/{txnId}` with
/// [`message_content`]; the room is `target.to`, exactly as stored. The event id is the platform
/// message id. [`ChannelSender::reconcile`] sends the same row again with the same transaction
/// id: the homeserver answers with the event it already created for that device and
/// transaction (Synapse keeps transaction ids for a day), or creates it if the first send never
/// arrived.
///
/// Errors: 429 → retryable with the server's `retry_after_ms`; 5xx, timeouts and network
/// errors → retryable; a rejected token → retryable after dropping the session when the
/// account logs in with a password (the next call logs in again), else fatal; other statuses
/// (400, 403, 404 ...) and a target that is not a room id → fatal.
///
/// [`ChannelSender::typing`]: `PUT /rooms/{roomId}/typing/{userId}` with `typing: true` and an
/// 8 s timeout (Matrix typing is per room, not per thread); [`ChannelSender::typing_stop`]: the
/// same with `typing: false` (a successful send clears it too).
pub struct MatrixSender {
    shared: Arc<Shared>,
}

impl fmt::Debug for MatrixSender {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MatrixSender")
            .field("account", &self.shared.account.account_id)
            .field("homeserver", &self.shared.account.homeserver)
            .field("text_chunk_limit", &self.shared.account.text_chunk_limit)
            .finish()
    }
}

/// The content of a reply: `m.text` with the plain `body`, an HTML `formatted_body` when the
/// text has Markdown formatting, no mentions (`m.mentions: {}`), and `m.relates_to`:
/// - in a thread (`target.thread_id`): `rel_type: m.thread` under the root, with an
///   `m.in_reply_to` to `target.reply_to_id` (`is_falling_back: false`) or, without one, the
///   thread-fallback reply to the root (`is_falling_back: true`);
/// - else with `target.reply_to_id`: a plain reply (`m.in_reply_to`);
/// - else none.
pub fn message_content(text: &str, target: &DeliveryTarget) -> Value {
    let mut content = json!({"msgtype": "m.text", "body": text, "m.mentions": {}});
    if let Some(html) = FormattedBody::markdown(text) {
        content["format"] = json!("org.matrix.custom.html");
        content["formatted_body"] = json!(html.body);
    }
    let thread = target.thread_id.as_deref().filter(|t| !t.is_empty());
    let reply = target.reply_to_id.as_deref().filter(|r| !r.is_empty());
    match (thread, reply) {
        (Some(root), reply) => {
            content["m.relates_to"] = json!({
                "rel_type": "m.thread",
                "event_id": root,
                "is_falling_back": reply.is_none(),
                "m.in_reply_to": {"event_id": reply.unwrap_or(root)},
            });
        }
        (None, Some(reply)) => content["m.relates_to"] = json!({"m.in_reply_to": {"event_id": reply}}),
        (None, None) => {}
    }
    content
}

fn send_error(e: ReqError) -> SendError {
    match e {
        ReqError::Transport(message) => SendError::Retryable { message, retry_after_ms: None },
        ReqError::Unauthorized(message) => SendError::Fatal { message },
        ReqError::Status { status: 429, message, retry_after_ms } => SendError::Retryable { message, retry_after_ms },
        ReqError::Status { status, message, .. } if status == 408 || status >= 500 => {
            SendError::Retryable { message, retry_after_ms: None }
        }
        ReqError::Status { message, .. } => SendError::Fatal { message },
    }
}

impl MatrixSender {
    /// The transaction id of `msg`: `pincer-` + 32 hex digits of SHA-256 over the outbox id,
    /// idempotency key, room, thread, reply target and text. The same row always gets the same
    /// id, so the homeserver deduplicates a re-send by the same device.
    pub fn txn_id(msg: &OutboundMessage) -> String {
        let mut h = Sha256::new();
        for part in [
            msg.outbox_id.to_string().as_str(),
            &msg.idempotency_key,
            &msg.target.to,
            msg.target.thread_id.as_deref().unwrap_or(""),
            msg.target.reply_to_id.as_deref().unwrap_or(""),
            &msg.text,
        ] {
            h.update(part.as_bytes());
            h.update([0u8]);
        }
        format!("pincer-{}", &hex::encode(h.finalize())[..32])
    }

    async fn session(&self) -> Result<Arc<Session>, SendError> {
        if let Some(s) = self.shared.current() {
            return Ok(s);
        }
        match self.shared.establish(None).await {
            Ok(s) => Ok(s),
            Err(AuthError::Rejected(message)) => {
                Err(SendError::Fatal { message: format!("credentials rejected: {message}") })
            }
            Err(AuthError::Transport(message)) => Err(SendError::Retryable { message, retry_after_ms: None }),
        }
    }

    /// Map a request error, dropping the session when a password login's token was rejected.
    fn failed(&self, session: &Arc<Session>, e: ReqError) -> SendError {
        if let (ReqError::Unauthorized(message), MatrixAuth::Password(_)) = (&e, &self.shared.account.auth) {
            self.shared.invalidate(session);
            return SendError::Retryable { message: format!("{message} (logging in again)"), retry_after_ms: None };
        }
        send_error(e)
    }

    fn room(target: &DeliveryTarget) -> Result<&RoomId, SendError> {
        <&RoomId>::try_from(target.to.as_str())
            .map_err(|e| SendError::Fatal { message: format!("{:?} is not a Matrix room id: {e}", target.to) })
    }

    async fn send_message(&self, msg: &OutboundMessage) -> Result<SendReceipt, SendError> {
        let room_id = Self::room(&msg.target)?;
        let session = self.session().await?;
        let content = message_content(&msg.text, &msg.target);
        let body = Raw::from_json(
            serde_json::value::to_raw_value(&content)
                .map_err(|e| SendError::Fatal { message: format!("cannot encode the message: {e}") })?,
        );
        let txn: OwnedTransactionId = Self::txn_id(msg).into();
        let request = send_message_event::v3::Request::new_raw(room_id.to_owned(), txn, "m.room.message".into(), body);
        let what = "PUT /rooms/{roomId}/send/m.room.message/{txnId}";
        let sent = tokio::time::timeout(REQUEST_TIMEOUT, session.client.send(request))
            .await
            .map_err(|_| SendError::Retryable { message: format!("{what} timed out"), retry_after_ms: None })?;
        let event_id = match sent {
            Ok(r) => r.event_id.to_string(),
            Err(e) => return Err(self.failed(&session, req_error(what, &e))),
        };
        lock(&self.shared.senders).insert(event_id.clone(), session.user_id.to_string());
        // The reply is there: stop the typing indicator now rather than when it expires.
        if let Err(e) = self.set_typing(&session, room_id, false).await {
            tracing::debug!(room_id = %room_id, error = %e, "matrix: clearing the typing indicator failed");
        }
        Ok(SendReceipt { platform_message_id: Some(event_id) })
    }

    async fn set_typing(&self, session: &Session, room_id: &RoomId, on: bool) -> Result<(), ReqError> {
        let state = if on { Typing::Yes(TypingInfo::new(TYPING_TIMEOUT)) } else { Typing::No };
        let request = TypingRequest::new(session.user_id.clone(), room_id.to_owned(), state);
        let what = "PUT /rooms/{roomId}/typing/{userId}";
        match tokio::time::timeout(REQUEST_TIMEOUT, session.client.send(request)).await {
            Err(_) => Err(ReqError::Transport(format!("{what} timed out"))),
            Ok(Err(e)) => Err(req_error(what, &e)),
            Ok(Ok(_)) => Ok(()),
        }
    }

    async fn typing_call(&self, target: &DeliveryTarget, on: bool) -> Result<(), SendError> {
        let room_id = Self::room(target)?;
        let session = self.session().await?;
        self.set_typing(&session, room_id, on).await.map_err(|e| self.failed(&session, e))
    }
}

impl ChannelSender for MatrixSender {
    fn send<'a>(&'a self, msg: &'a OutboundMessage) -> BoxFuture<'a, Result<SendReceipt, SendError>> {
        Box::pin(self.send_message(msg))
    }

    fn reconcile<'a>(&'a self, msg: &'a OutboundMessage) -> BoxFuture<'a, Reconciled> {
        Box::pin(async move {
            match self.send_message(msg).await {
                Ok(receipt) => Reconciled::Sent(receipt),
                Err(e) => {
                    tracing::warn!(outbox_id = msg.outbox_id, error = %e, "matrix: reconciling by re-sending the transaction failed");
                    Reconciled::Unknown
                }
            }
        })
    }

    fn text_chunk_limit(&self) -> usize {
        self.shared.account.text_chunk_limit
    }

    fn typing<'a>(&'a self, target: &'a DeliveryTarget) -> BoxFuture<'a, Result<(), SendError>> {
        Box::pin(self.typing_call(target, true))
    }

    fn typing_stop<'a>(&'a self, target: &'a DeliveryTarget) -> BoxFuture<'a, Result<(), SendError>> {
        Box::pin(self.typing_call(target, false))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pincer_core::config::parse;

    const BOT: &str = "@pincer-bot:localhost";
    /// A room version 12 id: no `:server` part, mixed case.
    const ROOM: &str = "!DwGjFKVVUwvGbdGZEPLr1LmrW7Y9SjAHtHwyd3Dmyfs";

    fn bot() -> BotIdentity {
        BotIdentity { user_id: BOT.into(), display_name: Some("Pincer Bot".into()) }
    }

    fn config(text: &str) -> Config {
        parse(text, &|_| None).unwrap().config
    }

    fn account(extra: &str) -> ResolvedMatrixAccount {
        let cfg = config(&format!(
            r#"{{channels: {{matrix: {{homeserver: "http://127.0.0.1:8008", accessToken: "t", {extra}}}}}}}"#
        ));
        cfg.channels.matrix.unwrap().resolved_accounts(&Default::default(), &|_| None).remove(0).unwrap()
    }

    /// A timeline event as Synapse serializes it.
    fn event(content: Value) -> TimelineEvent {
        let raw = json!({
            "type": "m.room.message",
            "event_id": "$AbCdEf_123-xyz",
            "sender": "@alice:localhost",
            "origin_server_ts": 1_795_233_811_170i64,
            "content": content,
            "unsigned": {"age": 92, "membership": "join"},
        });
        TimelineEvent::parse(&raw.to_string()).unwrap()
    }

    fn room(dm: bool) -> RoomFacts {
        RoomFacts { room_id: ROOM.into(), is_dm: dm, canonical_alias: Some("#ops:localhost".into()) }
    }

    fn inbound(content: Value, acc: &ResolvedMatrixAccount, dm: bool) -> Inbound {
        to_inbound(&event(content), &room(dm), &bot(), acc, &AccountId::new("work"), Some("Alice".into()), false)
    }

    #[test]
    fn a_room_message_keeps_ids_exactly_and_is_a_channel() {
        let i = inbound(json!({"msgtype": "m.text", "body": "hello"}), &account(""), false);
        assert_eq!((i.channel.as_str(), i.account.as_str()), ("matrix", "work"));
        assert_eq!(i.chat_kind, ChatKind::Channel);
        assert_eq!((i.peer_id.as_str(), i.chat_id.as_str()), (ROOM, ROOM), "never case-folded or parsed");
        assert_eq!(i.parent_peer_id.as_deref(), Some("#ops:localhost"));
        assert_eq!(i.message_id, "$AbCdEf_123-xyz");
        assert_eq!(
            i.author,
            Author { id: "@alice:localhost".into(), name: Some("Alice".into()), is_bot: false, is_self: false }
        );
        assert_eq!((i.text.as_str(), i.ts_ms, i.thread_id.as_deref()), ("hello", 1_795_233_811_170, None));
        assert!(i.mentions.can_detect && !i.mentions.native && !i.mentions.reply_to_bot);
    }

    #[test]
    fn dms_are_direct_with_the_sender_or_the_room_as_peer() {
        let i = inbound(json!({"msgtype": "m.text", "body": "hi"}), &account(""), true);
        assert_eq!((i.chat_kind, i.peer_id.as_str(), i.chat_id.as_str()), (ChatKind::Direct, "@alice:localhost", ROOM));
        assert_eq!(i.parent_peer_id, None);
        let per_room = account(r#"dm: {sessionScope: "per-room"}"#);
        assert_eq!(inbound(json!({"msgtype": "m.text", "body": "hi"}), &per_room, true).peer_id, ROOM);
        let notice = inbound(json!({"msgtype": "m.notice", "body": "beep"}), &account(""), true);
        assert!(notice.author.is_bot, "m.notice is a bot's message");
    }

    #[test]
    fn mentions_pills_ids_and_names() {
        let m = |content: Value| {
            let i = inbound(content, &account(""), false);
            (i.mentions.native, i.text)
        };
        assert_eq!(m(json!({"msgtype": "m.text", "body": "Pincer Bot: what's up?"})), (true, "what's up?".into()));
        assert_eq!(m(json!({"msgtype": "m.text", "body": "@pincer-bot:localhost, ping"})), (true, "ping".into()));
        assert_eq!(
            m(json!({"msgtype": "m.text", "body": "ask pincer bot later"})),
            (true, "ask pincer bot later".into())
        );
        assert_eq!(m(json!({"msgtype": "m.text", "body": "pincer botany"})), (false, "pincer botany".into()));
        assert_eq!(
            m(json!({"msgtype": "m.text", "body": "hey you", "m.mentions": {"user_ids": [BOT]}})),
            (true, "hey you".into())
        );
        let pill = r#"<a href="https://matrix.to/#/%40pincer-bot%3Alocalhost">bot</a>: status"#;
        assert!(m(json!({"msgtype": "m.text", "body": "bot: status", "format": "org.matrix.custom.html", "formatted_body": pill})).0);
        let pill = r#"<a href="https://matrix.to/#/@pincer-bot:localhost">x</a>"#;
        assert!(m(json!({"msgtype": "m.text", "body": "x", "formatted_body": pill})).0);
        assert!(!m(json!({"msgtype": "m.text", "body": "everyone!", "m.mentions": {"room": true}})).0);
        assert!(!m(json!({"msgtype": "m.text", "body": "@alice:localhost hi", "m.mentions": {"user_ids": ["@alice:localhost"]}})).0);
    }

    #[test]
    fn replies_threads_and_fallbacks() {
        let reply = json!({"msgtype": "m.text", "body": "> <@pincer-bot:localhost> Pincer Bot said hi\n\nthanks!",
            "m.relates_to": {"m.in_reply_to": {"event_id": "$Parent"}}});
        let r = relations(&reply);
        assert_eq!((r.reply_to.as_deref(), r.thread_root.as_deref(), r.is_edit), (Some("$Parent"), None, false));
        let i = inbound(reply, &account(""), false);
        assert_eq!(i.text, "thanks!", "the reply fallback is not part of the text");
        assert!(!i.mentions.native, "quoting the bot is not a mention");

        let in_thread = json!({"msgtype": "m.text", "body": "more",
            "m.relates_to": {"rel_type": "m.thread", "event_id": "$Root", "is_falling_back": true,
                             "m.in_reply_to": {"event_id": "$Latest"}}});
        let r = relations(&in_thread);
        assert_eq!((r.thread_root.as_deref(), r.reply_to.as_deref()), (Some("$Root"), None), "fallback is no reply");
        assert_eq!(inbound(in_thread.clone(), &account(""), false).thread_id.as_deref(), Some("$Root"));
        assert_eq!(inbound(in_thread.clone(), &account(r#"threadReplies: "off""#), false).thread_id, None);
        let top = json!({"msgtype": "m.text", "body": "top"});
        assert_eq!(inbound(top.clone(), &account(""), false).thread_id, None);
        let always = account(r#"threadReplies: "always""#);
        assert_eq!(inbound(top, &always, false).thread_id.as_deref(), Some("$AbCdEf_123-xyz"), "opens a thread");
        assert_eq!(inbound(in_thread, &always, false).thread_id.as_deref(), Some("$Root"));
        let dm_off = account(r#"threadReplies: "always", dm: {threadReplies: "off"}"#);
        assert_eq!(inbound(json!({"msgtype": "m.text", "body": "dm"}), &dm_off, true).thread_id, None);

        let threaded_reply = json!({"rel_type": "m.thread", "event_id": "$Root", "m.in_reply_to": {"event_id": "$X"}});
        assert_eq!(relations(&json!({"m.relates_to": threaded_reply})).reply_to.as_deref(), Some("$X"));
        assert!(relations(&json!({"m.relates_to": {"rel_type": "m.replace", "event_id": "$E"}})).is_edit);
        assert_eq!(strip_reply_fallback("> quote\nnot a fallback"), "> quote\nnot a fallback");
        assert_eq!(strip_reply_fallback("plain"), "plain");
    }

    #[test]
    fn readable_and_skip_reasons() {
        let ev = |kind: &str, content: Value| {
            let mut e = event(content);
            e.kind = kind.into();
            readable(&e)
        };
        assert_eq!(ev("m.room.message", json!({"msgtype": "m.text", "body": "x"})), Readable::Text);
        assert_eq!(ev("m.room.message", json!({"msgtype": "m.emote", "body": "waves"})), Readable::Text);
        assert_eq!(
            ev("m.room.encrypted", json!({"algorithm": "m.megolm.v1.aes-sha2", "ciphertext": "AwgA"})),
            Readable::Skip(SKIP_ENCRYPTED)
        );
        assert_eq!(
            ev("m.room.message", json!({"msgtype": "m.image", "body": "cat.png", "url": "mxc://x/y"})),
            Readable::Skip(SKIP_UNSUPPORTED_MSGTYPE)
        );
        assert_eq!(
            ev(
                "m.room.message",
                json!({"msgtype": "m.text", "body": "* fixed", "m.new_content": {}, "m.relates_to": {"rel_type": "m.replace", "event_id": "$E"}})
            ),
            Readable::Skip(SKIP_EDIT)
        );
        assert_eq!(ev("m.room.message", json!({})), Readable::Ignore, "redacted");
        assert_eq!(ev("m.room.message", json!({"msgtype": "m.text"})), Readable::Skip(SKIP_MALFORMED_EVENT));
        assert_eq!(ev("m.reaction", json!({})), Readable::Ignore);
        assert!(TimelineEvent::parse("{}").is_err());
        assert!(TimelineEvent::parse("not json").is_err());
    }

    #[test]
    fn invites_and_auto_join() {
        let state = [
            r#"{"content":{"room_version":"12"},"sender":"@alice:localhost","state_key":"","type":"m.room.create"}"#,
            r##"{"content":{"alias":"#ops:localhost","alt_aliases":["#ops2:localhost"]},"sender":"@alice:localhost","state_key":"","type":"m.room.canonical_alias"}"##,
            r#"{"type":"m.room.member","state_key":"@pincer-bot:localhost","content":{"displayname":"pincer-bot","is_direct":true,"membership":"invite"},"sender":"@alice:localhost"}"#,
        ];
        let inv = invite_facts(BOT, state);
        assert_eq!(inv.inviter.as_deref(), Some("@alice:localhost"));
        assert!(inv.is_direct);
        assert_eq!(inv.aliases, ["#ops:localhost", "#ops2:localhost"]);
        assert!(!should_join(&account(""), ROOM, &inv), "autoJoin is off by default");
        assert!(should_join(&account(r#"autoJoin: "always""#), ROOM, &inv));
        let list = |l: &str| account(&format!(r#"autoJoin: "allowlist", autoJoinAllowlist: {l}"#));
        assert!(should_join(&list(&format!(r#"["{ROOM}"]"#)), ROOM, &inv));
        assert!(!should_join(&list(&format!(r#"["{}"]"#, ROOM.to_lowercase())), ROOM, &inv), "room ids are exact");
        assert!(should_join(&list(r##"["#ops2:localhost"]"##), ROOM, &inv));
        assert!(should_join(&list(r#"["*"]"#), ROOM, &inv));
        assert!(!should_join(&list(r##"["#other:localhost"]"##), ROOM, &inv));
    }

    #[test]
    fn the_bots_join_marks_where_a_rooms_messages_start() {
        let member = |who: &str, membership: &str, prev: Option<&str>| {
            let mut v = json!({"type": "m.room.member", "state_key": who, "sender": who, "event_id": "$m",
                "content": {"membership": membership}});
            if let Some(p) = prev {
                v["unsigned"] = json!({"prev_content": {"membership": p}});
            }
            v.to_string()
        };
        let msg = json!({"type": "m.room.message", "event_id": "$x", "sender": "@alice:localhost",
            "content": {"msgtype": "m.text", "body": "before"}})
        .to_string();
        let raws =
            vec![msg.clone(), member(BOT, "join", Some("invite")), msg.clone(), member(BOT, "join", Some("join"))];
        assert_eq!(joined_at(&raws, BOT), Some(1), "a display name change (join -> join) is not a join");
        assert_eq!(joined_at(&[msg.clone(), member(BOT, "join", None)], BOT), Some(1));
        assert_eq!(joined_at(&[msg.clone(), member("@alice:localhost", "join", None)], BOT), None);
        assert_eq!(joined_at(&[msg], BOT), None);
    }

    fn target(thread: Option<&str>, reply_to: Option<&str>) -> DeliveryTarget {
        DeliveryTarget {
            channel: ChannelId::new(CHANNEL),
            account: AccountId::default(),
            to: ROOM.into(),
            thread_id: thread.map(str::to_string),
            reply_to_id: reply_to.map(str::to_string),
        }
    }

    #[test]
    fn reply_content_relations() {
        let plain = message_content("echo: hi", &target(None, None));
        assert_eq!(plain, json!({"msgtype": "m.text", "body": "echo: hi", "m.mentions": {}}));
        let md = message_content("**bold** move", &target(None, None));
        assert_eq!(md["body"], "**bold** move", "the body stays plain");
        assert_eq!(md["format"], "org.matrix.custom.html");
        assert!(md["formatted_body"].as_str().unwrap().contains("<strong>bold</strong>"), "{md}");
        let reply = message_content("x", &target(None, Some("$In")));
        assert_eq!(reply["m.relates_to"], json!({"m.in_reply_to": {"event_id": "$In"}}));
        let thread = message_content("x", &target(Some("$Root"), None));
        assert_eq!(
            thread["m.relates_to"],
            json!({"rel_type": "m.thread", "event_id": "$Root", "is_falling_back": true, "m.in_reply_to": {"event_id": "$Root"}})
        );
        let both = message_content("x", &target(Some("$Root"), Some("$In")));
        assert_eq!(
            both["m.relates_to"],
            json!({"rel_type": "m.thread", "event_id": "$Root", "is_falling_back": false, "m.in_reply_to": {"event_id": "$In"}})
        );
    }

    #[test]
    fn txn_ids_are_stable_per_row_and_device_ids_per_account() {
        let msg = OutboundMessage {
            outbox_id: 7,
            idempotency_key: "k".into(),
            target: target(None, None),
            text: "hi".into(),
        };
        let id = MatrixSender::txn_id(&msg);
        assert!(id.starts_with("pincer-") && id.len() == 39, "{id}");
        assert_eq!(id, MatrixSender::txn_id(&msg.clone()));
        assert_ne!(id, MatrixSender::txn_id(&OutboundMessage { text: "hi again".into(), ..msg.clone() }));
        let d = device_id_for("default", BOT);
        assert!(d.starts_with("PINCER") && d.len() == 16, "{d}");
        assert_eq!(d, device_id_for("default", BOT));
        assert_ne!(d, device_id_for("work", BOT));
    }

    #[test]
    fn resume_state_is_bound_to_the_homeserver_user_and_password() {
        let pw = |p: &str| account(&format!(r#"userId: "{BOT}", password: "{p}", accessToken: null"#));
        let a = pw("one");
        assert!(matches!(a.auth, MatrixAuth::Password(_)));
        let s = ResumeState {
            v: 1,
            homeserver: "http://127.0.0.1:8008".into(),
            user_id: BOT.into(),
            session: Some(StoredSession {
                auth: a.auth.digest(),
                device_id: "PINCERX".into(),
                access_token: "syt_x".into(),
            }),
            since: Some("s72_1".into()),
        };
        let json = s.encode();
        assert!(!json.contains("\"one\""), "the password is not stored: {json}");
        let back = ResumeState::decode(&json, &a).unwrap();
        assert_eq!(back.session_for(&a).map(|s| s.device_id.as_str()), Some("PINCERX"));
        assert!(back.session_for(&pw("two")).is_none(), "a new password drops the stored session");
        assert_eq!(
            ResumeState::decode(&json, &pw("two")).unwrap().since.as_deref(),
            Some("s72_1"),
            "but not the token"
        );
        assert!(back.session_for(&account("")).is_none(), "no stored session with an access token");
        let other = account(r#"homeserver: "http://other:8008""#);
        assert!(ResumeState::decode(&json, &other).is_none());
        assert!(ResumeState::decode("not json", &a).is_none());
    }

    #[test]
    fn request_errors_map_to_send_errors() {
        let st = |status, retry| ReqError::Status { status, message: "m".into(), retry_after_ms: retry };
        assert_eq!(
            send_error(st(429, Some(1500))),
            SendError::Retryable { message: "m".into(), retry_after_ms: Some(1500) }
        );
        assert!(send_error(st(502, None)).is_retryable());
        assert!(send_error(ReqError::Transport("t".into())).is_retryable());
        for s in [400, 403, 404] {
            assert!(!send_error(st(s, None)).is_retryable(), "{s}");
        }
        assert!(!send_error(ReqError::Unauthorized("u".into())).is_retryable());
        assert!(MatrixSender::room(&target(None, None)).is_ok());
        let bad = DeliveryTarget { to: "not a room".into(), ..target(None, None) };
        assert!(!MatrixSender::room(&bad).unwrap_err().is_retryable());
    }

    #[test]
    fn build_accounts_specs_and_problems() {
        let cfg = config(
            r#"{channels: {matrix: {homeserver: "http://127.0.0.1:8008", accounts: {
                a: {accessToken: "base"}, b: {accessToken: "other", textChunkLimit: 1000, healthMonitor: {enabled: false}},
                c: {accessToken: "base"}, d: {userId: "@bot:localhost", password: "pw"},
                e: {homeserver: "http://other:8008", accessToken: "base"}, f: {enabled: false},
            }}}}"#,
        );
        let built = build_accounts(&cfg, &|_| None);
        assert_eq!(built.len(), 5);
        let a = built[0].as_ref().unwrap();
        assert_eq!((a.channel.as_str(), a.account.as_str()), ("matrix", "a"));
        assert!(a.health_monitor && a.runner.is_some());
        assert_eq!(a.sender.text_chunk_limit(), 4000);
        assert!(!a.fingerprint.contains("\"base\"") && a.fingerprint.contains("sha256:"));
        let b = built[1].as_ref().unwrap();
        assert!(!b.health_monitor);
        assert_eq!(b.sender.text_chunk_limit(), 1000);
        assert!(built[2].as_ref().err().unwrap().message.contains("same Matrix user and homeserver as account \"a\""));
        assert!(built[3].is_ok() && built[4].is_ok());
        assert!(build_accounts(&config("{}"), &|_| None).is_empty());
        let built = build_accounts(&config("{channels: {matrix: {}}}"), &|_| None);
        assert!(built[0].as_ref().err().unwrap().message.starts_with("no homeserver"));
    }

    #[test]
    fn wake_policy_and_reply_mode_from_config() {
        let cfg = config(
            r#"{channels: {matrix: {replyToMode: "first", dm: {policy: "open", allowFrom: ["*"]},
                accounts: {work: {}, off: {enabled: false}}}}}"#,
        );
        let mut i = inbound(json!({"msgtype": "m.text", "body": "hi"}), &account(""), true);
        let p = wake_policy(&cfg, &i);
        assert_eq!(p.dm_policy, DmPolicy::Open);
        assert!(p.dm_sender_allowed);
        i.account = AccountId::new("off");
        let p = wake_policy(&cfg, &i);
        assert_eq!((p.dm_policy, p.group_policy), (DmPolicy::Disabled, GroupPolicy::Disabled));
        assert_eq!(reply_to_mode(&cfg, &AccountId::new("work")), ReplyToMode::First);
        assert_eq!(reply_to_mode(&cfg, &AccountId::new("nope")), ReplyToMode::Off);
    }
}
