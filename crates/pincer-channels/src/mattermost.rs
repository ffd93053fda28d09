//! Mattermost channel (`channels.mattermost`): a bot account connected to a Mattermost server's
//! WebSocket (API v4, `/api/v4/websocket`) for inbound posts, and the REST API v4 for replies
//! and typing indicators. Wire shapes follow Mattermost's TypeScript types (npm
//! `@mattermost/types`: `Post` in `posts.ts`, `UserProfile` in `users.ts`) and the WebSocket
//! protocol of `@mattermost/client` (`websocket.ts`, `websocket_messages.ts`).
//!
//! # Connection (one [`MattermostRunner::run`] call is one attempt)
//!
//! 1. `GET /api/v4/users/me` gives the bot identity (a 401 is [`RunError::Fatal`] "token
//!    rejected").
//! 2. The WebSocket upgrade to `ws(s)://<host>/api/v4/websocket` carries
//!    `Authorization: Bearer <token>`, and, when the previous attempt (or the previous process)
//!    saved resume state for this token and server, `?connection_id=<id>&sequence_number=<next
//!    seq>`, exactly as `@mattermost/client` reconnects. The server then resumes that connection
//!    and replays the events the bot missed while it had no socket (or, if it cannot, starts a
//!    new connection and sends `hello`). The server resumes only header-authenticated sockets,
//!    which is why the header is used rather than an `authentication_challenge` alone.
//! 3. Authentication is confirmed with a `ping` action (`seq` 1): the server answers `OK` on an
//!    authenticated socket. If it answers `FAIL` (the header was not accepted, e.g. a proxy
//!    stripped it), the adapter falls back to the `authentication_challenge` action with the
//!    token (a `FAIL` to that is fatal). A fresh connection also gets the `hello` event (its
//!    `connection_id`); a resumed one gets none. The attempt is ready (`ctx.status.ready()`)
//!    once the server confirmed authentication; a socket that closes before that, or no
//!    confirmation within [`AUTH_TIMEOUT`], ends the attempt with [`RunError::Retryable`]
//!    before ready, so the supervisor's backoff grows.
//! 4. Liveness: a `ping` action every `pingIntervalMs` (default 30 s); no reply within
//!    `pongTimeoutMs` (default 10 s) means a dead socket (reference §6): the attempt reports the
//!    disconnect and returns `Retryable("no pong ...")`. Heartbeat facts (interval, sent,
//!    acknowledged) go to the status reporter.
//! 5. Every [`IDENTITY_POLL_INTERVAL`], `GET /api/v4/users/me` again: if the bot user id, its
//!    `update_at` or its `delete_at` changed (a bot disabled and enabled again silently stops
//!    getting events on its old socket, reference §6), the socket is closed and the attempt
//!    returns `Retryable`, so the next attempt connects afresh. A 401 is fatal.
//! 6. Events carry a per-connection `seq`. The adapter tracks the next expected one; after an
//!    event is fully handled (a `posted` event counts once the runtime's sink accepted it) the
//!    resume state `{token digest, baseUrl, connectionId, sequenceNumber}` is saved. A gap in
//!    the sequence means events were lost: the adapter closes the socket and returns
//!    `Retryable`, and the next attempt resumes from the first missed event. Reconnecting is
//!    always the supervisor's job: an attempt never reconnects by itself.
//! 7. On cancellation: a close frame, the close handshake awaited up to [`CLOSE_TIMEOUT`], the
//!    resume state saved, `Ok(())`. The server keeps the connection resumable for a few
//!    minutes, so a restart misses nothing.
//!
//! # Inbound
//!
//! `posted` events (their `data.post` is a JSON *string* holding a `Post`) become
//! [`Inbound`]s: see [`to_inbound`]. The bot's own posts are not delivered (they are
//! remembered as thread roots written by the bot); system posts (`type` `system_*`) are
//! ignored. For a thread reply in a channel or group, [`MentionFacts::reply_to_bot`] needs the
//! author of the thread's root post, from a bounded cache (5 min TTL, filled with the bot's own
//! posts and lookups) or `GET /api/v4/posts/{root_id}`; when that lookup fails (404, 403,
//! timeout ...) the message is logged with its post id and skipped with reason
//! `parent_lookup_failed` (counted in the status detail `skipped`), never delivered half-known.
//! Whether an author is a bot comes from `props.from_bot`/`props.from_webhook` or, failing
//! that, `GET /api/v4/users/{id}` (`is_bot`, cached 5 min; a failed lookup counts as a person).
//! Malformed or unknown events are logged and skipped; the connection stays up.
//!
//! # Outbound
//!
//! [`MattermostSender`] creates one post per call (`POST /api/v4/posts`) and sends typing
//! indicators (`POST /api/v4/users/me/typing`).
//!
//! `channels.status` details: `botUserId`, `botUsername`, `baseUrl`, `connectionId`, and
//! `skipped` (`{reason: count}`, e.g. `{"parent_lookup_failed": 1}`).

use crate::cache::TtlCache;
use crate::catalog::{AccountProblem, AccountSpec};
use crate::lifecycle::{AccountContext, AccountRunner, RunError};
use crate::outbound::{BoxFuture, ChannelSender, OutboundMessage, SendError, SendReceipt};
use futures_util::{SinkExt as _, StreamExt as _};
use pincer_core::config::{
    mattermost_token_digest, mattermost_wake_policy, Config, DmPolicy, GroupPolicy, ReplyToMode,
    ResolvedMattermostAccount,
};
use pincer_core::wake::WakePolicy;
use pincer_core::{AccountId, Author, ChannelId, ChatKind, DeliveryTarget, Inbound, MentionFacts};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Error as WsError, Message as WsMessage};
use tokio_tungstenite::{Connector, MaybeTlsStream, WebSocketStream};
use tokio_util::sync::CancellationToken;

/// Channel id of this adapter.
pub const CHANNEL: &str = "mattermost";
/// Timeout of each REST request.
pub const REST_TIMEOUT: Duration = Duration::from_secs(15);
/// Bound on the TCP/TLS connect and WebSocket upgrade.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);
/// How long the server may take to confirm authentication after the upgrade.
pub const AUTH_TIMEOUT: Duration = Duration::from_secs(15);
/// Bound on the close handshake (close frame sent and the server's answer read) when the
/// attempt is cancelled.
pub const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);
/// Bound on writing one client action (`ping`, `authentication_challenge`) to the socket.
pub const SEND_TIMEOUT: Duration = Duration::from_secs(10);
/// How often `GET /api/v4/users/me` re-checks the bot identity (reference §6: 30 s).
pub const IDENTITY_POLL_INTERVAL: Duration = Duration::from_secs(30);
/// How long a thread root's author and a user's `is_bot` stay cached.
pub const LOOKUP_CACHE_TTL: Duration = Duration::from_secs(300);
/// Max entries of each lookup cache (expired entries are evicted first, then all).
const LOOKUP_CACHE_CAP: usize = 4096;
/// Longest `429` wait a runner lookup honours before it gives up (it retries once).
const MAX_LOOKUP_RATE_LIMIT_WAIT: Duration = Duration::from_secs(5);
/// `User-Agent` of REST requests and the WebSocket upgrade.
const USER_AGENT: &str = concat!("pincer/", env!("CARGO_PKG_VERSION"));
/// Skip reason: the thread root of a reply could not be looked up.
pub const SKIP_PARENT_LOOKUP_FAILED: &str = "parent_lookup_failed";
/// Skip reason: a `posted` event whose data or post could not be parsed.
pub const SKIP_MALFORMED_EVENT: &str = "malformed_event";

fn problem(account: &str, message: impl Into<String>) -> AccountProblem {
    AccountProblem { channel: ChannelId::new(CHANNEL), account: AccountId::new(account), message: message.into() }
}

/// Build every enabled `channels.mattermost` account of `config`: a [`MattermostRunner`] and a
/// [`MattermostSender`] each (sharing `http`), with
/// [`ResolvedMattermostAccount::connection_fingerprint`] as the fingerprint (the token appears
/// only as a digest; policy keys are not part of it, so changing them keeps the connection).
/// Problems: no token, no `baseUrl`, a `baseUrl` that is not http(s), or a bot token already
/// used by an earlier account on the same server (each post would be handled twice). `env`
/// supplies `MATTERMOST_BOT_TOKEN` and `MATTERMOST_URL` for the `default` account. Needs no
/// async runtime.
pub fn build_accounts(
    config: &Config,
    env: &dyn Fn(&str) -> Option<String>,
    http: &reqwest::Client,
) -> Vec<Result<AccountSpec, AccountProblem>> {
    let Some(section) = &config.channels.mattermost else {
        return Vec::new();
    };
    let mut tokens: HashMap<(String, String), String> = HashMap::new();
    section
        .resolved_accounts(&config.channels.defaults, env)
        .into_iter()
        .map(|resolved| {
            let account = resolved.map_err(|p| problem(&p.account_id, p.message))?;
            let id = account.account_id.clone();
            let key = (account.base_url.clone(), mattermost_token_digest(&account.bot_token));
            if let Some(first) = tokens.get(&key) {
                return Err(problem(
                    &id,
                    format!(
                        "uses the same bot token and server as account \"{first}\" (each post would be handled twice)"
                    ),
                ));
            }
            tokens.insert(key, id.clone());
            let account = Arc::new(account);
            Ok(AccountSpec {
                channel: ChannelId::new(CHANNEL),
                account: AccountId::new(&id),
                fingerprint: account.connection_fingerprint(),
                health_monitor: account.health_monitor,
                runner: Some(Arc::new(MattermostRunner::new(account.clone(), http.clone()))),
                sender: Arc::new(MattermostSender::new(&account, http.clone())),
            })
        })
        .collect()
}

fn policy_account(config: &Config, account: &AccountId) -> Option<ResolvedMattermostAccount> {
    config.channels.mattermost.as_ref().and_then(|m| m.policy_account(account.as_str(), &config.channels.defaults))
}

/// The wake policy of a Mattermost message, from the current config (see
/// [`mattermost_wake_policy`]). A message of an account that is not configured (or disabled)
/// gets a policy that drops everything (`dmPolicy` and `groupPolicy` disabled).
pub fn wake_policy(config: &Config, inbound: &Inbound) -> WakePolicy {
    match policy_account(config, &inbound.account) {
        Some(a) => mattermost_wake_policy(&a, inbound),
        None => WakePolicy { dm_policy: DmPolicy::Disabled, group_policy: GroupPolicy::Disabled, ..Default::default() },
    }
}

/// `replyToMode` of a Mattermost account for channel posts (`off` for unknown accounts): what
/// [`reply_to_mode_for_chat`] gives for [`ChatKind::Channel`]. Use [`reply_to_mode_for_chat`]
/// when the conversation kind is known (DMs stay flat unless `replyToModeByChatType.direct`
/// says otherwise). Never `first`: in Mattermost `first` behaves as `all` (see
/// [`ResolvedMattermostAccount::reply_to_mode_for`]).
pub fn reply_to_mode(config: &Config, account: &AccountId) -> ReplyToMode {
    reply_to_mode_for_chat(config, account, ChatKind::Channel)
}

/// `replyToMode` of a Mattermost account for a conversation of `kind` (see
/// [`ResolvedMattermostAccount::reply_to_mode_for`]); `off` for unknown accounts.
pub fn reply_to_mode_for_chat(config: &Config, account: &AccountId, kind: ChatKind) -> ReplyToMode {
    policy_account(config, account).map(|a| a.reply_to_mode_for(kind)).unwrap_or_default()
}

/// The thread root a reply to `target` is posted under (`root_id` of `POST /api/v4/posts`):
/// `target.thread_id` when the inbound post was in a thread, else `target.reply_to_id` (set by
/// the runtime when `replyToMode` is not `off`: the reply starts a thread under the inbound
/// post), else none (a top-level post).
pub fn root_id(target: &DeliveryTarget) -> Option<&str> {
    target.thread_id.as_deref().or(target.reply_to_id.as_deref()).filter(|r| !r.is_empty())
}

// ---------------------------------------------------------------------------------------
// Wire types
// ---------------------------------------------------------------------------------------

/// The parts of a `Post` (`@mattermost/types` `posts.ts`) the adapter reads.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
struct Post {
    id: String,
    #[serde(default)]
    create_at: i64,
    user_id: String,
    channel_id: String,
    #[serde(default)]
    root_id: String,
    /// Deprecated by Mattermost (threads are flat), still read as a fallback of `root_id`.
    #[serde(default)]
    parent_id: String,
    #[serde(default)]
    message: String,
    #[serde(default, rename = "type")]
    kind: String,
    #[serde(default)]
    props: Value,
}

impl Post {
    /// The thread root this post replies in, if any.
    fn thread_root(&self) -> Option<&str> {
        [self.root_id.as_str(), self.parent_id.as_str()].into_iter().find(|r| !r.is_empty())
    }

    fn prop_is_true(&self, key: &str) -> bool {
        match self.props.get(key) {
            Some(Value::String(s)) => s == "true",
            Some(Value::Bool(b)) => *b,
            _ => false,
        }
    }
}

/// The `data` of a `posted` event (`Posted` in `@mattermost/client`'s `websocket_messages`).
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
struct PostedData {
    /// `O`, `P`, `D` or `G`.
    #[serde(default)]
    channel_type: String,
    /// The `Post`, as a JSON string.
    post: String,
    /// `@username` of the author.
    #[serde(default)]
    sender_name: String,
    #[serde(default)]
    team_id: String,
    /// JSON string of an array of the mentioned user ids (present only when the recipient is
    /// mentioned).
    #[serde(default)]
    mentions: Option<String>,
}

/// The parts of a `UserProfile` (`users.ts`) the adapter reads.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
struct User {
    id: String,
    #[serde(default)]
    username: String,
    #[serde(default)]
    update_at: i64,
    #[serde(default)]
    delete_at: i64,
    #[serde(default)]
    is_bot: bool,
}

/// The bot account of the connection.
#[derive(Clone, Debug, PartialEq, Eq)]
struct BotIdentity {
    id: String,
    username: String,
}

/// A parsed `posted` event.
#[derive(Clone, Debug, PartialEq)]
struct Posted {
    data: PostedData,
    post: Post,
}

/// Parse a `posted` event's `data`. Errors: a message for the log.
fn parse_posted(data: &Value) -> Result<Posted, String> {
    let data: PostedData = serde_json::from_value(data.clone()).map_err(|e| format!("posted data: {e}"))?;
    let post: Post = serde_json::from_str(&data.post).map_err(|e| format!("posted data.post: {e}"))?;
    Ok(Posted { data, post })
}

/// `D` → direct, `G` and `P` → group, `O` → channel (reference §3, Mattermost row).
fn chat_kind(channel_type: &str) -> Option<ChatKind> {
    match channel_type {
        "D" => Some(ChatKind::Direct),
        "G" | "P" => Some(ChatKind::Group),
        "O" => Some(ChatKind::Channel),
        _ => None,
    }
}

fn is_username_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == '-'
}

/// Byte ranges of `@username` (case-insensitive) tokens in `text`: not preceded by a username
/// character (`a@b.com` is no mention) and not followed by one (`@bot2`), where a `.` counts as
/// part of the name only when a username character follows it (`@bot.` is a mention,
/// `@bot.x` is another user).
fn mention_spans(text: &str, username: &str) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    if username.is_empty() {
        return out;
    }
    let lower = text.to_ascii_lowercase();
    let needle = format!("@{}", username.to_ascii_lowercase());
    let mut from = 0;
    while let Some(i) = lower[from..].find(&needle).map(|i| i + from) {
        let end = i + needle.len();
        let before_ok = lower[..i].chars().next_back().is_none_or(|c| !is_username_char(c) && c != '.');
        let mut rest = lower[end..].chars();
        let after_ok = match rest.next() {
            None => true,
            Some('.') => rest.next().is_none_or(|c| !is_username_char(c)),
            Some(c) => !is_username_char(c),
        };
        if before_ok && after_ok {
            out.push((i, end));
        }
        from = end;
    }
    out
}

/// True when `text` holds a channel-wide mention (`@channel`, `@all`, `@here`).
fn has_channel_wide_mention(text: &str) -> bool {
    ["channel", "all", "here"].iter().any(|w| !mention_spans(text, w).is_empty())
}

/// `message` without a leading `@botname` (and a `:` or `,` right after it, and the
/// whitespace after that).
fn strip_leading_mention(message: &str, username: &str) -> String {
    let trimmed = message.trim_start();
    match mention_spans(trimmed, username).first() {
        Some(&(0, end)) => {
            let rest = &trimmed[end..];
            let rest = rest.strip_prefix([':', ',']).unwrap_or(rest);
            rest.trim_start().to_string()
        }
        _ => message.to_string(),
    }
}

/// Normalise one `posted` event. Pure.
///
/// - `chat_kind` from `data.channel_type` ([`chat_kind`]); `peer_id` = the author's user id for
///   DMs, the channel id otherwise; `chat_id` = the channel id; `thread_id` = the post's
///   `root_id` when it is a thread reply; `team_id` = `data.team_id` when not empty.
/// - `author`: `user_id`, `name` = `data.sender_name` without its `@`, `is_bot` as given,
///   `is_self` when it is the bot.
/// - `message_id` = the post id; `text` = `message` without a leading `@botname`; `ts_ms` =
///   `create_at`.
/// - Mentions: `native` = `@botname` in the message, or the bot in `data.mentions` unless the
///   message has a channel-wide mention (`@channel`/`@all`/`@here` puts every member in
///   `mentions`; that is not a mention of the bot); `reply_to_bot` as given; `can_detect`
///   true; `thread_participation` is left to the runtime.
fn to_inbound(
    posted: &Posted,
    kind: ChatKind,
    bot: &BotIdentity,
    account: &AccountId,
    author_is_bot: bool,
    reply_to_bot: bool,
) -> Inbound {
    let (data, post) = (&posted.data, &posted.post);
    let in_mentions = data
        .mentions
        .as_deref()
        .and_then(|m| serde_json::from_str::<Vec<String>>(m).ok())
        .is_some_and(|ids| ids.contains(&bot.id));
    let by_name = !mention_spans(&post.message, &bot.username).is_empty();
    let native = by_name || (in_mentions && !has_channel_wide_mention(&post.message));
    let sender = data.sender_name.trim();
    let name = sender.strip_prefix('@').unwrap_or(sender);
    Inbound {
        channel: ChannelId::new(CHANNEL),
        account: account.clone(),
        chat_kind: kind,
        peer_id: if kind == ChatKind::Direct { post.user_id.clone() } else { post.channel_id.clone() },
        parent_peer_id: None,
        chat_id: post.channel_id.clone(),
        guild_id: None,
        team_id: Some(data.team_id.clone()).filter(|t| !t.is_empty()),
        member_roles: Vec::new(),
        thread_id: post.thread_root().map(str::to_string),
        author: Author {
            id: post.user_id.clone(),
            name: (!name.is_empty()).then(|| name.to_string()),
            is_bot: author_is_bot,
            is_self: post.user_id == bot.id,
        },
        message_id: post.id.clone(),
        text: strip_leading_mention(&post.message, &bot.username),
        ts_ms: post.create_at,
        mentions: MentionFacts { native, reply_to_bot, can_detect: true, ..Default::default() },
    }
}

// ---------------------------------------------------------------------------------------
// REST
// ---------------------------------------------------------------------------------------

/// Why a REST call failed.
#[derive(Clone, Debug, PartialEq, Eq)]
enum RestError {
    /// 401: the token is invalid or revoked.
    Unauthorized(String),
    /// Another HTTP status, with the server's `AppError` id and message when it sent one.
    Status { status: u16, message: String, retry_after_ms: Option<u64> },
    /// Network error, timeout, unreadable body.
    Transport(String),
}

impl fmt::Display for RestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RestError::Unauthorized(m) | RestError::Transport(m) | RestError::Status { message: m, .. } => {
                f.write_str(m)
            }
        }
    }
}

/// The delay a `429` (or `503`) response asks for: `Retry-After` (seconds), else
/// `X-Ratelimit-Reset` (seconds until the limit resets, Mattermost's rate limiter), in ms.
fn retry_after_ms(headers: &reqwest::header::HeaderMap) -> Option<u64> {
    let secs = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).and_then(|v| v.trim().parse::<f64>().ok());
    secs("retry-after")
        .or_else(|| secs("x-ratelimit-reset"))
        .filter(|s| s.is_finite() && *s >= 0.0)
        .map(|s| (s * 1000.0).ceil() as u64)
}

/// `Mattermost answered HTTP <status>: <message> (<id>)` from an `AppError` body.
fn app_error_message(what: &str, status: u16, body: &str) -> String {
    let json: Value = serde_json::from_str(body).unwrap_or_default();
    match (json.get("message").and_then(Value::as_str), json.get("id").and_then(Value::as_str)) {
        (Some(m), Some(id)) => format!("{what}: Mattermost answered HTTP {status}: {m} ({id})"),
        (Some(m), None) => format!("{what}: Mattermost answered HTTP {status}: {m}"),
        _ => format!("{what}: Mattermost answered HTTP {status}: {}", body.chars().take(200).collect::<String>()),
    }
}

/// A REST API v4 client of one account (`<baseUrl>/api/v4`, bearer token).
#[derive(Clone)]
struct Rest {
    http: reqwest::Client,
    api: String,
    authorization: String,
}

impl Rest {
    fn new(account: &ResolvedMattermostAccount, http: reqwest::Client) -> Rest {
        Rest {
            http,
            api: format!("{}/api/v4", account.base_url),
            authorization: format!("Bearer {}", account.bot_token),
        }
    }

    /// One request; a 2xx body as text, else the mapped error.
    async fn call(&self, method: reqwest::Method, path: &str, body: Option<&Value>) -> Result<String, RestError> {
        let what = format!("{method} /api/v4{path}");
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.api))
            .timeout(REST_TIMEOUT)
            .header(reqwest::header::AUTHORIZATION, &self.authorization)
            .header(reqwest::header::USER_AGENT, USER_AGENT);
        if let Some(b) = body {
            req = req.json(b);
        }
        let resp = req.send().await.map_err(|e| RestError::Transport(format!("{what} failed: {e}")))?;
        let status = resp.status().as_u16();
        let retry_after_ms = retry_after_ms(resp.headers());
        let text = resp.text().await.map_err(|e| RestError::Transport(format!("{what}: reading the body: {e}")))?;
        if (200..300).contains(&status) {
            return Ok(text);
        }
        let message = app_error_message(&what, status, &text);
        if status == 401 {
            return Err(RestError::Unauthorized(message));
        }
        Err(RestError::Status { status, message, retry_after_ms })
    }

    /// `GET` a JSON value. A `429` is honoured once (waiting at most
    /// [`MAX_LOOKUP_RATE_LIMIT_WAIT`]) and then reported.
    async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, RestError> {
        let mut waited = false;
        loop {
            match self.call(reqwest::Method::GET, path, None).await {
                Ok(text) => {
                    return serde_json::from_str(&text)
                        .map_err(|e| RestError::Transport(format!("GET /api/v4{path}: unexpected body: {e}")))
                }
                Err(RestError::Status { status: 429, retry_after_ms: wait, .. }) if !waited => {
                    let wait = Duration::from_millis(wait.unwrap_or(1000)).min(MAX_LOOKUP_RATE_LIMIT_WAIT);
                    tracing::warn!(path, ?wait, "mattermost rate limit; waiting once");
                    tokio::time::sleep(wait).await;
                    waited = true;
                }
                Err(e) => return Err(e),
            }
        }
    }
}

/// Run `fut` under `limit`, or return `None` when `cancel` fires first.
async fn bounded<T>(
    cancel: &CancellationToken,
    limit: Duration,
    what: &str,
    fut: impl Future<Output = Result<T, RestError>>,
) -> Option<Result<T, RestError>> {
    tokio::select! {
        _ = cancel.cancelled() => None,
        r = tokio::time::timeout(limit, fut) => {
            Some(r.unwrap_or_else(|_| Err(RestError::Transport(format!("{what} timed out after {} s", limit.as_secs())))))
        }
    }
}

// ---------------------------------------------------------------------------------------
// Runner
// ---------------------------------------------------------------------------------------

/// Resume state saved through [`crate::StatusReporter::save_resume`]: JSON `{"token":
/// "sha256:…", "baseUrl", "connectionId", "sequenceNumber"}`, where `sequenceNumber` is the
/// next event `seq` the adapter has not handled yet (what `@mattermost/client` sends). A state
/// saved for another token or server is ignored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ResumeState {
    token: String,
    base_url: String,
    connection_id: String,
    sequence_number: i64,
}

impl ResumeState {
    fn encode(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// The state in `json` if it parses and belongs to `token` on `base_url`.
    fn decode(json: &str, token: &str, base_url: &str) -> Option<ResumeState> {
        let s: ResumeState = serde_json::from_str(json).ok()?;
        let ok = s.token == mattermost_token_digest(token)
            && s.base_url == base_url
            && !s.connection_id.is_empty()
            && s.connection_id.bytes().all(|b| b.is_ascii_alphanumeric())
            && s.sequence_number >= 0;
        ok.then_some(s)
    }
}

/// The WebSocket URL: `ws://` for an `http://` server, `wss://` for `https://`, then
/// `/api/v4/websocket` and, when resuming, `?connection_id=<id>&sequence_number=<n>`.
fn websocket_url(base_url: &str, resume: Option<&ResumeState>) -> String {
    let ws = match (base_url.strip_prefix("https://"), base_url.strip_prefix("http://")) {
        (Some(rest), _) => format!("wss://{rest}"),
        (_, Some(rest)) => format!("ws://{rest}"),
        _ => base_url.to_string(),
    };
    match resume {
        Some(r) => {
            format!("{ws}/api/v4/websocket?connection_id={}&sequence_number={}", r.connection_id, r.sequence_number)
        }
        None => format!("{ws}/api/v4/websocket"),
    }
}

/// The connection side of one Mattermost account. See the module docs for what one `run`
/// does. Lookup caches and skip counters live here, so they survive reconnects.
pub struct MattermostRunner {
    account: Arc<ResolvedMattermostAccount>,
    rest: Rest,
    ping_interval: Duration,
    pong_timeout: Duration,
    roots: Mutex<TtlCache<String>>,
    users: Mutex<TtlCache<bool>>,
    skipped: Mutex<BTreeMap<&'static str, u64>>,
}

impl fmt::Debug for MattermostRunner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MattermostRunner")
            .field("account", &self.account.account_id)
            .field("base_url", &self.account.base_url)
            .finish_non_exhaustive()
    }
}

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl MattermostRunner {
    /// A runner for `account` (`baseUrl`, token, `pingIntervalMs`, `pongTimeoutMs`) using
    /// `http` for REST calls.
    pub fn new(account: Arc<ResolvedMattermostAccount>, http: reqwest::Client) -> Self {
        MattermostRunner {
            rest: Rest::new(&account, http),
            ping_interval: Duration::from_millis(account.ping_interval_ms.max(1)),
            pong_timeout: Duration::from_millis(account.pong_timeout_ms.max(1)),
            account,
            roots: Mutex::new(TtlCache::new(LOOKUP_CACHE_TTL, LOOKUP_CACHE_CAP)),
            users: Mutex::new(TtlCache::new(LOOKUP_CACHE_TTL, LOOKUP_CACHE_CAP)),
            skipped: Mutex::new(BTreeMap::new()),
        }
    }

    async fn connect(&self, url: &str) -> Result<Ws, RunError> {
        let mut req =
            url.into_client_request().map_err(|e| RunError::Fatal(format!("invalid WebSocket URL \"{url}\": {e}")))?;
        let auth = HeaderValue::from_str(&self.rest.authorization)
            .map_err(|_| RunError::Fatal("the bot token is not a valid HTTP header value".into()))?;
        req.headers_mut().insert("authorization", auth);
        req.headers_mut().insert("user-agent", HeaderValue::from_static(USER_AGENT));
        let connector = if url.starts_with("wss://") {
            let roots = rustls::RootCertStore { roots: webpki_roots::TLS_SERVER_ROOTS.to_vec() };
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let config = rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .map_err(|e| RunError::Fatal(format!("TLS setup failed: {e}")))?
                .with_root_certificates(roots)
                .with_no_client_auth();
            Some(Connector::Rustls(Arc::new(config)))
        } else {
            None
        };
        let (ws, _) = tokio_tungstenite::connect_async_tls_with_config(req, None, true, connector).await.map_err(
            |e| match e {
                WsError::Http(resp) if resp.status().as_u16() == 401 => {
                    RunError::Fatal("token rejected: the WebSocket upgrade answered HTTP 401".into())
                }
                e => RunError::Retryable(format!("WebSocket connect failed: {e}")),
            },
        )?;
        Ok(ws)
    }

    async fn attempt(&self, ctx: AccountContext) -> Result<(), RunError> {
        let account = &self.account;
        let cancel = ctx.cancel.clone();
        let fail = |e: RunError| {
            ctx.status.error(e.to_string());
            Err(e)
        };
        // Carry a valid resume state forward even if this attempt fails before it connects
        // (the supervisor persists what the attempt leaves in its facts).
        let resume = ctx.resume.as_deref().and_then(|s| ResumeState::decode(s, &account.bot_token, &account.base_url));
        ctx.status.save_resume(resume.as_ref().map(ResumeState::encode));
        ctx.status.detail("baseUrl", account.base_url.clone());

        let me = match bounded(&cancel, REST_TIMEOUT, "GET /api/v4/users/me", self.rest.get::<User>("/users/me")).await
        {
            None => return Ok(()),
            Some(Ok(me)) => me,
            Some(Err(RestError::Unauthorized(m))) => return fail(RunError::Fatal(format!("token rejected: {m}"))),
            Some(Err(e)) => return fail(RunError::Retryable(e.to_string())),
        };
        if me.delete_at != 0 {
            return fail(RunError::Retryable(format!("the bot account @{} is deactivated", me.username)));
        }
        ctx.status.detail("botUserId", me.id.clone());
        ctx.status.detail("botUsername", me.username.clone());

        let url = websocket_url(&account.base_url, resume.as_ref());
        let ws = tokio::select! {
            _ = cancel.cancelled() => return Ok(()),
            r = tokio::time::timeout(CONNECT_TIMEOUT, self.connect(&url)) => match r {
                Ok(Ok(ws)) => ws,
                Ok(Err(e)) => return fail(e),
                Err(_) => return fail(RunError::Retryable(format!(
                    "WebSocket connect timed out after {} s", CONNECT_TIMEOUT.as_secs()
                ))),
            },
        };
        let mut conn = Connection {
            runner: self,
            ctx: &ctx,
            bot: BotIdentity { id: me.id.clone(), username: me.username.clone() },
            me,
            resumed_from: resume.as_ref().map(|r| r.connection_id.clone()),
            connection_id: resume.as_ref().map(|r| r.connection_id.clone()),
            next_seq: resume.as_ref().map(|r| r.sequence_number),
            action_seq: 0,
            probe_seq: None,
            challenge_seq: None,
            authed: false,
            ping_seq: None,
            ping_sent: None,
            next_ping: None,
            next_identity_poll: None,
        };
        let mut ws = ws;
        match conn.pump(&mut ws).await {
            Ok(()) => Ok(()),
            Err(e) => fail(e),
        }
    }

    /// Count a skipped message and publish the counters as the `skipped` detail.
    fn skip(&self, ctx: &AccountContext, reason: &'static str) {
        let counts = {
            let mut s = lock(&self.skipped);
            *s.entry(reason).or_default() += 1;
            s.clone()
        };
        let map: serde_json::Map<String, Value> = counts.into_iter().map(|(k, v)| (k.to_string(), json!(v))).collect();
        ctx.status.detail("skipped", Value::Object(map));
    }

    /// The author of thread root `root_id`, from the cache or `GET /api/v4/posts/{root_id}`.
    /// `None` when cancelled meanwhile.
    async fn root_author(&self, cancel: &CancellationToken, root_id: &str) -> Option<Result<String, RestError>> {
        if let Some(author) = lock(&self.roots).get(root_id) {
            return Some(Ok(author));
        }
        let path = format!("/posts/{root_id}");
        let r = bounded(cancel, REST_TIMEOUT, "GET /api/v4/posts/{id}", self.rest.get::<Post>(&path)).await?;
        Some(r.map(|p| {
            lock(&self.roots).insert(root_id.to_string(), p.user_id.clone());
            p.user_id
        }))
    }

    /// Whether user `user_id` is a bot, from the cache or `GET /api/v4/users/{id}`; a failed
    /// lookup counts as a person (not cached). `None` when cancelled meanwhile.
    async fn user_is_bot(&self, cancel: &CancellationToken, user_id: &str) -> Option<bool> {
        if let Some(b) = lock(&self.users).get(user_id) {
            return Some(b);
        }
        let path = format!("/users/{user_id}");
        match bounded(cancel, REST_TIMEOUT, "GET /api/v4/users/{id}", self.rest.get::<User>(&path)).await? {
            Ok(u) => {
                lock(&self.users).insert(user_id.to_string(), u.is_bot);
                Some(u.is_bot)
            }
            Err(e) => {
                tracing::warn!(account = %self.account.account_id, user_id, error = %e,
                    "mattermost user lookup failed; treating the author as a person");
                Some(false)
            }
        }
    }
}

impl AccountRunner for MattermostRunner {
    fn run(self: Arc<Self>, ctx: AccountContext) -> BoxFuture<'static, Result<(), RunError>> {
        Box::pin(async move { self.attempt(ctx).await })
    }
}

/// What handling one frame asks the read loop to do next.
enum Flow {
    /// Read the next frame.
    Continue,
    /// Cancellation fired while handling it: close.
    Cancelled,
    /// The sink is closed: stop reading, wait for cancellation, close.
    SinkClosed,
}

/// What woke the read loop.
enum Step {
    Frame(Option<Result<WsMessage, WsError>>),
    PongTimeout,
    Ping,
    IdentityPoll,
}

async fn sleep_opt(at: Option<Instant>) {
    match at {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

/// State of one attempt's socket.
struct Connection<'a> {
    runner: &'a MattermostRunner,
    ctx: &'a AccountContext,
    bot: BotIdentity,
    /// `GET /users/me` at the start of the attempt (for the identity poll).
    me: User,
    /// The connection id the attempt asked to resume, if any.
    resumed_from: Option<String>,
    connection_id: Option<String>,
    /// The next event `seq` not handled yet.
    next_seq: Option<i64>,
    /// The last client action `seq` used.
    action_seq: i64,
    /// The `ping` that confirms header authentication, while unanswered.
    probe_seq: Option<i64>,
    /// The `authentication_challenge` fallback, while unanswered.
    challenge_seq: Option<i64>,
    authed: bool,
    /// The heartbeat `ping` awaiting its reply.
    ping_seq: Option<i64>,
    ping_sent: Option<Instant>,
    next_ping: Option<Instant>,
    next_identity_poll: Option<Instant>,
}

impl Connection<'_> {
    /// The read loop; returns when the attempt ends (after closing on cancellation).
    async fn pump(&mut self, ws: &mut Ws) -> Result<(), RunError> {
        let cancel = self.ctx.cancel.clone();
        let auth_deadline = Instant::now() + AUTH_TIMEOUT;
        self.probe_seq = Some(self.send_action(ws, "ping", None).await?);
        loop {
            let auth_at = (!self.authed).then_some(auth_deadline);
            let pong_at = self.ping_sent.filter(|_| self.ping_seq.is_some()).map(|s| s + self.runner.pong_timeout);
            let ping_at = self.next_ping.filter(|_| self.ping_seq.is_none());
            let step = tokio::select! {
                biased;
                _ = cancel.cancelled() => return self.close(ws, "closed: stop requested").await,
                frame = ws.next() => Step::Frame(frame),
                _ = sleep_opt(auth_at) => {
                    return Err(self.lost(format!(
                        "the server did not confirm authentication within {} s", AUTH_TIMEOUT.as_secs()
                    )));
                }
                _ = sleep_opt(pong_at) => Step::PongTimeout,
                _ = sleep_opt(ping_at) => Step::Ping,
                _ = sleep_opt(self.next_identity_poll) => Step::IdentityPoll,
            };
            let flow = match step {
                Step::Frame(None) => return Err(self.lost("the server closed the connection (EOF)".into())),
                Step::Frame(Some(Err(e))) => return Err(self.lost(format!("WebSocket error: {e}"))),
                Step::Frame(Some(Ok(WsMessage::Close(frame)))) => {
                    let why = match frame {
                        Some(f) => format!("the server closed the connection: {} {}", u16::from(f.code), f.reason),
                        None => "the server closed the connection".to_string(),
                    };
                    return Err(self.lost(why.trim_end().to_string()));
                }
                Step::Frame(Some(Ok(WsMessage::Text(text)))) => {
                    self.ctx.status.event();
                    self.on_text(ws, text.as_str()).await?
                }
                Step::Frame(Some(Ok(_))) => {
                    self.ctx.status.event();
                    Flow::Continue
                }
                Step::PongTimeout => {
                    let why = format!("no pong within {} ms: the socket is dead", self.runner.pong_timeout.as_millis());
                    return Err(self.lost(why));
                }
                Step::Ping => {
                    let seq = self.send_action(ws, "ping", None).await?;
                    self.ping_seq = Some(seq);
                    self.ping_sent = Some(Instant::now());
                    self.ctx.status.heartbeat_sent();
                    Flow::Continue
                }
                Step::IdentityPoll => self.identity_poll(ws).await?,
            };
            match flow {
                Flow::Continue => {}
                Flow::Cancelled => return self.close(ws, "closed: stop requested").await,
                Flow::SinkClosed => {
                    tracing::info!(account = %self.runner.account.account_id, "inbound sink closed; waiting for stop");
                    cancel.cancelled().await;
                    return self.close(ws, "closed: stop requested").await;
                }
            }
        }
    }

    /// Send one client action (`{"seq", "action", "data"?}`); returns its `seq`.
    async fn send_action(&mut self, ws: &mut Ws, action: &str, data: Option<Value>) -> Result<i64, RunError> {
        self.action_seq += 1;
        let mut frame = json!({"seq": self.action_seq, "action": action});
        if let Some(d) = data {
            frame["data"] = d;
        }
        // Bounded: on a dead TCP connection with a full send buffer, a write never completes.
        let sent = tokio::time::timeout(SEND_TIMEOUT, ws.send(WsMessage::Text(frame.to_string().into()))).await;
        match sent {
            Ok(Ok(())) => Ok(self.action_seq),
            Ok(Err(e)) => Err(self.lost(format!("sending the {action} action failed: {e}"))),
            Err(_) => Err(self.lost(format!("sending the {action} action timed out: the socket is dead"))),
        }
    }

    /// The connection is gone: report it, keep the resume point, and build the error.
    fn lost(&mut self, why: String) -> RunError {
        let why = if self.authed { why } else { format!("{why} (before authentication was confirmed)") };
        tracing::warn!(account = %self.runner.account.account_id, "mattermost connection lost: {why}");
        self.ctx.status.disconnected(why.clone());
        self.save_resume();
        RunError::Retryable(why)
    }

    fn save_resume(&self) {
        if let (Some(connection_id), Some(seq)) = (&self.connection_id, self.next_seq) {
            let state = ResumeState {
                token: mattermost_token_digest(&self.runner.account.bot_token),
                base_url: self.runner.account.base_url.clone(),
                connection_id: connection_id.clone(),
                sequence_number: seq,
            };
            self.ctx.status.save_resume(Some(state.encode()));
        }
    }

    /// Close the socket (close frame, handshake bounded by [`CLOSE_TIMEOUT`]), keep the
    /// resume point, report `why` as the disconnect, and return `Ok` (a requested stop).
    async fn close(&mut self, ws: &mut Ws, why: &str) -> Result<(), RunError> {
        self.close_socket(ws).await;
        self.save_resume();
        self.ctx.status.disconnected(why);
        Ok(())
    }

    async fn close_socket(&self, ws: &mut Ws) {
        let frame = CloseFrame { code: CloseCode::Normal, reason: "".into() };
        let drained = tokio::time::timeout(CLOSE_TIMEOUT, async {
            if ws.close(Some(frame)).await.is_err() {
                return;
            }
            while let Some(Ok(m)) = ws.next().await {
                if matches!(m, WsMessage::Close(_)) {
                    break;
                }
            }
        })
        .await;
        if drained.is_err() {
            tracing::warn!(account = %self.runner.account.account_id, "mattermost close handshake timed out");
        }
    }

    /// Drop the connection on purpose (identity change, missed events): close it properly so
    /// the server can resume it, then end the attempt with `Retryable(why)`.
    async fn reconnect(&mut self, ws: &mut Ws, why: String) -> RunError {
        self.close_socket(ws).await;
        self.ctx.status.error(why.clone());
        self.lost(why)
    }

    async fn on_text(&mut self, ws: &mut Ws, text: &str) -> Result<Flow, RunError> {
        let v: Value = match serde_json::from_str(text) {
            Ok(v @ Value::Object(_)) => v,
            _ => {
                tracing::warn!(account = %self.runner.account.account_id, frame = %text.chars().take(200).collect::<String>(),
                    "mattermost frame is not a JSON object; skipped");
                return Ok(Flow::Continue);
            }
        };
        if let Some(seq_reply) = v.get("seq_reply").and_then(Value::as_i64) {
            self.on_reply(ws, seq_reply, &v).await?;
            return Ok(Flow::Continue);
        }
        match v.get("event").and_then(Value::as_str) {
            Some(event) => self.on_event(ws, event, &v).await,
            None => {
                tracing::debug!(account = %self.runner.account.account_id, "mattermost frame without event or seq_reply");
                Ok(Flow::Continue)
            }
        }
    }

    /// A reply to one of our actions (`{"status", "seq_reply", "data"?, "error"?}`).
    async fn on_reply(&mut self, ws: &mut Ws, seq_reply: i64, v: &Value) -> Result<(), RunError> {
        let ok = v.get("status").and_then(Value::as_str) == Some("OK");
        let error = || {
            let e = &v["error"];
            match (e.get("message").and_then(Value::as_str), e.get("id").and_then(Value::as_str)) {
                (Some(m), Some(id)) => format!("{m} ({id})"),
                (Some(m), None) => m.to_string(),
                _ => v.to_string(),
            }
        };
        if Some(seq_reply) == self.probe_seq {
            self.probe_seq = None;
            if ok {
                self.on_authenticated();
            } else {
                tracing::info!(account = %self.runner.account.account_id, error = %error(),
                    "mattermost did not accept header authentication; sending authentication_challenge");
                let token = json!({"token": self.runner.account.bot_token});
                self.challenge_seq = Some(self.send_action(ws, "authentication_challenge", Some(token)).await?);
            }
        } else if Some(seq_reply) == self.challenge_seq {
            self.challenge_seq = None;
            if !ok {
                let why = format!("token rejected: authentication_challenge failed: {}", error());
                self.ctx.status.disconnected(why.clone());
                self.ctx.status.save_resume(None);
                return Err(RunError::Fatal(why));
            }
            self.on_authenticated();
        } else if Some(seq_reply) == self.ping_seq {
            // Any answer (even a FAIL) proves the socket is alive.
            self.ping_seq = None;
            self.ctx.status.heartbeat_acked();
            self.next_ping = Some(self.ping_sent.unwrap_or_else(Instant::now) + self.runner.ping_interval);
        }
        Ok(())
    }

    fn on_authenticated(&mut self) {
        self.authed = true;
        let now = Instant::now();
        self.next_ping = Some(now + self.runner.ping_interval);
        self.next_identity_poll = Some(now + IDENTITY_POLL_INTERVAL);
        self.ctx.status.ready();
        self.ctx.status.heartbeat_interval(self.runner.ping_interval);
        let resumed = self.resumed_from.is_some() && self.resumed_from == self.connection_id;
        if let Some(id) = &self.connection_id {
            self.ctx.status.detail("connectionId", id.clone());
        }
        tracing::info!(account = %self.runner.account.account_id, bot = %self.bot.username,
            connection_id = self.connection_id.as_deref().unwrap_or(""), resumed, "mattermost connected");
        self.save_resume();
    }

    /// One event (`{"event", "data", "broadcast", "seq"}`).
    async fn on_event(&mut self, ws: &mut Ws, event: &str, v: &Value) -> Result<Flow, RunError> {
        let seq = v.get("seq").and_then(Value::as_i64);
        if event == "hello" {
            let id = v["data"]["connection_id"].as_str().unwrap_or_default().to_string();
            if let Some(old) = self.resumed_from.as_deref().filter(|old| *old != id) {
                tracing::warn!(account = %self.runner.account.account_id, old, new = %id,
                    "mattermost could not resume the previous connection; events sent meanwhile may be missed");
            }
            self.connection_id = Some(id.clone()).filter(|i| !i.is_empty());
            self.next_seq = Some(seq.unwrap_or(0) + 1);
            self.ctx.status.detail("connectionId", id);
            self.save_resume();
            return Ok(Flow::Continue);
        }
        if let (Some(next), Some(s)) = (self.next_seq, seq) {
            if s < next {
                tracing::debug!(account = %self.runner.account.account_id, seq = s, next, event, "mattermost event already handled; skipped");
                return Ok(Flow::Continue);
            }
            if s > next {
                let why = format!("missed WebSocket events {next}..{}; reconnecting to have them replayed", s - 1);
                return Err(self.reconnect(ws, why).await);
            }
        }
        let flow = match event {
            "posted" => self.on_posted(&v["data"]).await,
            _ => Flow::Continue,
        };
        if matches!(flow, Flow::Continue) {
            if let Some(s) = seq {
                self.next_seq = Some(s + 1);
            }
            self.save_resume();
        }
        Ok(flow)
    }

    /// One `posted` event: skip what is not a user message, resolve the facts, deliver.
    async fn on_posted(&mut self, data: &Value) -> Flow {
        let runner = self.runner;
        let account = &runner.account.account_id;
        let posted = match parse_posted(data) {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(account = %account, error = %e, "mattermost posted event not understood; skipped");
                runner.skip(self.ctx, SKIP_MALFORMED_EVENT);
                return Flow::Continue;
            }
        };
        let post = &posted.post;
        if post.user_id == self.bot.id {
            if post.thread_root().is_none() {
                lock(&runner.roots).insert(post.id.clone(), post.user_id.clone());
            }
            return Flow::Continue;
        }
        if post.kind.starts_with("system_") {
            return Flow::Continue;
        }
        let Some(kind) = chat_kind(&posted.data.channel_type) else {
            tracing::warn!(account = %account, post_id = %post.id, channel_type = %posted.data.channel_type,
                "mattermost post in an unknown channel type; skipped");
            runner.skip(self.ctx, SKIP_MALFORMED_EVENT);
            return Flow::Continue;
        };
        let cancel = &self.ctx.cancel;
        let mut reply_to_bot = false;
        if let (Some(root), true) = (post.thread_root(), kind != ChatKind::Direct) {
            match runner.root_author(cancel, root).await {
                None => return Flow::Cancelled,
                Some(Ok(author)) => reply_to_bot = author == self.bot.id,
                Some(Err(e)) => {
                    tracing::warn!(account = %account, post_id = %post.id, root_id = root, error = %e,
                        reason = SKIP_PARENT_LOOKUP_FAILED, "mattermost thread root lookup failed; message skipped");
                    runner.skip(self.ctx, SKIP_PARENT_LOOKUP_FAILED);
                    return Flow::Continue;
                }
            }
        }
        let author_is_bot = if post.prop_is_true("from_bot") || post.prop_is_true("from_webhook") {
            true
        } else {
            match runner.user_is_bot(cancel, &post.user_id).await {
                None => return Flow::Cancelled,
                Some(b) => b,
            }
        };
        let inbound = to_inbound(&posted, kind, &self.bot, &self.ctx.account, author_is_bot, reply_to_bot);
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

    /// Re-check the bot identity (`GET /api/v4/users/me`).
    async fn identity_poll(&mut self, ws: &mut Ws) -> Result<Flow, RunError> {
        self.next_identity_poll = Some(Instant::now() + IDENTITY_POLL_INTERVAL);
        let cancel = self.ctx.cancel.clone();
        let me = match bounded(&cancel, REST_TIMEOUT, "GET /api/v4/users/me", self.runner.rest.get::<User>("/users/me"))
            .await
        {
            None => return Ok(Flow::Cancelled),
            Some(Ok(me)) => me,
            Some(Err(RestError::Unauthorized(m))) => {
                self.close_socket(ws).await;
                let why = format!("token rejected: {m}");
                self.ctx.status.disconnected(why.clone());
                return Err(RunError::Fatal(why));
            }
            Some(Err(e)) => {
                tracing::warn!(account = %self.runner.account.account_id, error = %e, "mattermost identity check failed; keeping the connection");
                return Ok(Flow::Continue);
            }
        };
        let change = if me.id != self.me.id {
            Some(format!("the bot user changed from {} to {}", self.me.id, me.id))
        } else if me.delete_at != 0 {
            Some(format!("the bot account @{} was deactivated", me.username))
        } else if me.update_at != self.me.update_at {
            Some(format!("the bot account @{} was updated (update_at changed)", me.username))
        } else {
            None
        };
        match change {
            None => Ok(Flow::Continue),
            Some(why) => {
                if me.id != self.me.id {
                    self.connection_id = None;
                    self.ctx.status.save_resume(None);
                }
                Err(self.reconnect(ws, format!("{why}; reconnecting")).await)
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// Sender
// ---------------------------------------------------------------------------------------

/// The outbound side of one Mattermost account ([Mattermost API: Create a post], [Publish a
/// user typing websocket event]).
///
/// [`ChannelSender::send`]: `POST /api/v4/posts` with `{channel_id: target.to, message,
/// root_id, pending_post_id}`: `root_id` per [`root_id`] (omitted for a top-level post);
/// `pending_post_id` per [`MattermostSender::pending_post_id`] (the server returns the post
/// already created for the same id within 30 s instead of creating a second one). The created
/// post's `id` is the platform message id.
///
/// Errors: 429 → retryable with `Retry-After` (else `X-Ratelimit-Reset`) in ms; 408, 5xx,
/// network errors and timeouts → retryable; other statuses (400, 401, 403, 404 ...) → fatal
/// with the server's `AppError` message and id (e.g. `api.post.create_post.root_id.app_error`).
///
/// [`ChannelSender::typing`]: `POST /api/v4/users/me/typing` with `{channel_id: target.to,
/// parent_id: <root_id or "">}`, same error mapping.
///
/// [Mattermost API: Create a post]: https://api.mattermost.com/#tag/posts/operation/CreatePost
/// [Publish a user typing websocket event]: https://api.mattermost.com/#tag/users/operation/PublishUserTyping
pub struct MattermostSender {
    rest: Rest,
    text_chunk_limit: usize,
}

impl fmt::Debug for MattermostSender {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MattermostSender")
            .field("api", &self.rest.api)
            .field("authorization", &"<redacted>")
            .field("text_chunk_limit", &self.text_chunk_limit)
            .finish()
    }
}

fn send_error(e: RestError) -> SendError {
    match e {
        RestError::Transport(message) => SendError::Retryable { message, retry_after_ms: None },
        RestError::Unauthorized(message) => SendError::Fatal { message },
        RestError::Status { status: 429, message, retry_after_ms } => SendError::Retryable { message, retry_after_ms },
        RestError::Status { status, message, .. } if status == 408 || status >= 500 => {
            SendError::Retryable { message, retry_after_ms: None }
        }
        RestError::Status { message, .. } => SendError::Fatal { message },
    }
}

impl MattermostSender {
    /// A sender for `account` (`baseUrl`, token, `textChunkLimit`) using `http`; each request
    /// times out after [`REST_TIMEOUT`].
    pub fn new(account: &ResolvedMattermostAccount, http: reqwest::Client) -> Self {
        MattermostSender { rest: Rest::new(account, http), text_chunk_limit: account.text_chunk_limit }
    }

    /// The `pending_post_id` of `msg`: `pincer:` + 24 hex digits of SHA-256 over the outbox id,
    /// idempotency key, channel, root and text. The same row always gets the same id.
    pub fn pending_post_id(msg: &OutboundMessage) -> String {
        let mut h = Sha256::new();
        for part in [
            msg.outbox_id.to_string().as_str(),
            &msg.idempotency_key,
            &msg.target.to,
            root_id(&msg.target).unwrap_or(""),
            &msg.text,
        ] {
            h.update(part.as_bytes());
            h.update([0u8]);
        }
        format!("pincer:{}", &hex::encode(h.finalize())[..24])
    }

    async fn post(&self, msg: &OutboundMessage) -> Result<SendReceipt, SendError> {
        let mut body = json!({
            "channel_id": msg.target.to,
            "message": msg.text,
            "pending_post_id": Self::pending_post_id(msg),
        });
        if let Some(root) = root_id(&msg.target) {
            body["root_id"] = json!(root);
        }
        let text = self.rest.call(reqwest::Method::POST, "/posts", Some(&body)).await.map_err(send_error)?;
        let id = serde_json::from_str::<Value>(&text)
            .ok()
            .and_then(|v| v.get("id").and_then(Value::as_str).map(str::to_string));
        Ok(SendReceipt { platform_message_id: id })
    }

    async fn typing_call(&self, target: &DeliveryTarget) -> Result<(), SendError> {
        let body = json!({"channel_id": target.to, "parent_id": root_id(target).unwrap_or("")});
        self.rest.call(reqwest::Method::POST, "/users/me/typing", Some(&body)).await.map_err(send_error)?;
        Ok(())
    }
}

impl ChannelSender for MattermostSender {
    fn send<'a>(&'a self, msg: &'a OutboundMessage) -> BoxFuture<'a, Result<SendReceipt, SendError>> {
        Box::pin(self.post(msg))
    }

    // `reconcile` keeps the default `Unknown`: Mattermost has no lookup of a post by
    // `pending_post_id`.

    fn text_chunk_limit(&self) -> usize {
        self.text_chunk_limit
    }

    fn typing<'a>(&'a self, target: &'a DeliveryTarget) -> BoxFuture<'a, Result<(), SendError>> {
        Box::pin(self.typing_call(target))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pincer_core::config::parse;

    const BOT: &str = "b0000000000000000000000000";
    const USER: &str = "u0000000000000000000000000";
    const CH: &str = "c0000000000000000000000000";

    fn bot() -> BotIdentity {
        BotIdentity { id: BOT.into(), username: "pincer".into() }
    }

    /// A `Post` as the server serializes it (`@mattermost/types` `Post`).
    fn post_json(overrides: Value) -> Value {
        let mut p = json!({
            "id": "p0000000000000000000000001",
            "create_at": 1_714_564_800_123i64,
            "update_at": 1_714_564_800_123i64,
            "edit_at": 0,
            "delete_at": 0,
            "is_pinned": false,
            "user_id": USER,
            "channel_id": CH,
            "root_id": "",
            "original_id": "",
            "message": "hello",
            "type": "",
            "props": {},
            "hashtags": "",
            "pending_post_id": "",
            "reply_count": 0,
            "metadata": {},
        });
        for (k, v) in overrides.as_object().unwrap() {
            p[k] = v.clone();
        }
        p
    }

    /// A `posted` WebSocket event's `data`, with the post stringified as the server sends it.
    fn posted(channel_type: &str, post: Value, mentions: Option<&[&str]>) -> Value {
        let mut d = json!({
            "channel_display_name": "Town Square",
            "channel_name": "town-square",
            "channel_type": channel_type,
            "post": post.to_string(),
            "sender_name": "@alice",
            "set_online": true,
            "team_id": if channel_type == "D" || channel_type == "G" { "" } else { "t0000000000000000000000000" },
        });
        if let Some(m) = mentions {
            d["mentions"] = json!(serde_json::to_string(m).unwrap());
        }
        d
    }

    fn inbound(data: &Value, author_is_bot: bool, reply_to_bot: bool) -> Inbound {
        let p = parse_posted(data).unwrap();
        let kind = chat_kind(&p.data.channel_type).unwrap();
        to_inbound(&p, kind, &bot(), &AccountId::new("work"), author_is_bot, reply_to_bot)
    }

    #[test]
    fn dm_post_becomes_direct_with_the_author_as_peer() {
        let i = inbound(&posted("D", post_json(json!({"message": "hi there"})), Some(&[BOT])), false, false);
        assert_eq!((i.channel.as_str(), i.account.as_str()), ("mattermost", "work"));
        assert_eq!(i.chat_kind, ChatKind::Direct);
        assert_eq!((i.peer_id.as_str(), i.chat_id.as_str()), (USER, CH));
        assert_eq!((i.thread_id.as_deref(), i.team_id.as_deref()), (None, None));
        assert_eq!(i.author, Author { id: USER.into(), name: Some("alice".into()), is_bot: false, is_self: false });
        assert_eq!(i.message_id, "p0000000000000000000000001");
        assert_eq!(i.text, "hi there");
        assert_eq!(i.ts_ms, 1_714_564_800_123);
        assert!(i.mentions.native, "the DM recipient is in mentions");
        assert!(i.mentions.can_detect && !i.mentions.reply_to_bot && !i.mentions.thread_participation);
    }

    #[test]
    fn channel_types_map_to_kinds_and_peers() {
        assert_eq!(chat_kind("O"), Some(ChatKind::Channel));
        assert_eq!(chat_kind("P"), Some(ChatKind::Group));
        assert_eq!(chat_kind("G"), Some(ChatKind::Group));
        assert_eq!(chat_kind("D"), Some(ChatKind::Direct));
        assert_eq!(chat_kind("threads"), None);
        let i = inbound(&posted("O", post_json(json!({})), None), false, false);
        assert_eq!(i.chat_kind, ChatKind::Channel);
        assert_eq!((i.peer_id.as_str(), i.chat_id.as_str()), (CH, CH));
        assert_eq!(i.team_id.as_deref(), Some("t0000000000000000000000000"));
        assert!(!i.mentions.native);
        let i = inbound(&posted("P", post_json(json!({})), None), false, false);
        assert_eq!((i.chat_kind, i.peer_id.as_str()), (ChatKind::Group, CH));
    }

    #[test]
    fn mentions_and_text() {
        let m = |msg: &str, mentions: Option<&[&str]>| {
            let i = inbound(&posted("O", post_json(json!({"message": msg})), mentions), false, false);
            (i.mentions.native, i.text)
        };
        assert_eq!(m("@pincer what's up", Some(&[BOT])), (true, "what's up".into()));
        assert_eq!(m("@Pincer: status?", None), (true, "status?".into()), "by name, case-insensitive");
        assert_eq!(m("hey @pincer.", None), (true, "hey @pincer.".into()), "only a leading mention is stripped");
        assert_eq!(m("@pincer2 hi", None), (false, "@pincer2 hi".into()));
        assert_eq!(m("@pincer.bot hi", None), (false, "@pincer.bot hi".into()));
        assert_eq!(m("mail me at x@pincer.io", None), (false, "mail me at x@pincer.io".into()));
        assert_eq!(m("@channel deploy is done", Some(&[BOT])), (false, "@channel deploy is done".into()));
        assert_eq!(m("@here and @pincer", Some(&[BOT])), (true, "@here and @pincer".into()));
        assert_eq!(m("keyword ping", Some(&[BOT])), (true, "keyword ping".into()), "a server-side mention key");
        assert_eq!(m("someone else", Some(&[USER])), (false, "someone else".into()));
    }

    #[test]
    fn thread_replies_and_author_flags() {
        let data = posted("O", post_json(json!({"root_id": "r0000000000000000000000001"})), None);
        let i = inbound(&data, false, true);
        assert_eq!(i.thread_id.as_deref(), Some("r0000000000000000000000001"));
        assert!(i.mentions.reply_to_bot && !i.mentions.native);
        let legacy = posted("O", post_json(json!({"parent_id": "r0000000000000000000000002"})), None);
        assert_eq!(parse_posted(&legacy).unwrap().post.thread_root(), Some("r0000000000000000000000002"));
        let p = parse_posted(&posted("O", post_json(json!({"props": {"from_bot": "true"}})), None)).unwrap();
        assert!(p.post.prop_is_true("from_bot") && !p.post.prop_is_true("from_webhook"));
        let own = inbound(&posted("O", post_json(json!({"user_id": BOT})), None), true, false);
        assert!(own.author.is_self && own.author.is_bot);
    }

    #[test]
    fn malformed_posted_events_are_errors_not_panics() {
        assert!(parse_posted(&json!({"channel_type": "O"})).is_err(), "no post");
        assert!(parse_posted(&json!({"channel_type": "O", "post": {"id": "x"}})).is_err(), "post not a string");
        assert!(parse_posted(&json!({"channel_type": "O", "post": "{not json"})).is_err());
        assert!(parse_posted(&json!({"channel_type": "O", "post": "{\"id\": \"x\"}"})).is_err(), "no user_id");
        assert!(parse_posted(&json!("string")).is_err());
        let ok = parse_posted(&json!({"post": "{\"id\":\"x\",\"user_id\":\"u\",\"channel_id\":\"c\"}"})).unwrap();
        assert_eq!(ok.post.message, "");
    }

    #[test]
    fn resume_state_is_bound_to_token_and_server() {
        let s = ResumeState {
            token: mattermost_token_digest("tok-a"),
            base_url: "https://chat.example.com".into(),
            connection_id: "k0000000000000000000000001".into(),
            sequence_number: 42,
        };
        let json = s.encode();
        assert!(!json.contains("tok-a"));
        assert_eq!(ResumeState::decode(&json, "tok-a", "https://chat.example.com"), Some(s.clone()));
        assert_eq!(ResumeState::decode(&json, "tok-b", "https://chat.example.com"), None);
        assert_eq!(ResumeState::decode(&json, "tok-a", "https://other.example.com"), None);
        assert_eq!(ResumeState::decode("not json", "tok-a", "https://chat.example.com"), None);
        let bad = ResumeState { connection_id: "a&b=c".into(), ..s.clone() };
        assert_eq!(ResumeState::decode(&bad.encode(), "tok-a", "https://chat.example.com"), None);
        assert_eq!(
            websocket_url("https://chat.example.com", Some(&s)),
            "wss://chat.example.com/api/v4/websocket?connection_id=k0000000000000000000000001&sequence_number=42"
        );
        assert_eq!(websocket_url("http://127.0.0.1:8065/mm", None), "ws://127.0.0.1:8065/mm/api/v4/websocket");
    }

    fn target(thread: Option<&str>, reply_to: Option<&str>) -> DeliveryTarget {
        DeliveryTarget {
            channel: ChannelId::new(CHANNEL),
            account: AccountId::default(),
            to: CH.into(),
            thread_id: thread.map(str::to_string),
            reply_to_id: reply_to.map(str::to_string),
        }
    }

    #[test]
    fn root_id_rule() {
        assert_eq!(root_id(&target(Some("r1"), Some("p2"))), Some("r1"), "the inbound thread wins");
        assert_eq!(root_id(&target(None, Some("p2"))), Some("p2"), "replyToMode starts a thread");
        assert_eq!(root_id(&target(None, None)), None);
        assert_eq!(root_id(&target(Some(""), None)), None);
    }

    #[test]
    fn pending_post_id_is_stable_per_row() {
        let msg = OutboundMessage {
            outbox_id: 7,
            idempotency_key: "k".into(),
            target: target(None, None),
            text: "hi".into(),
        };
        let id = MattermostSender::pending_post_id(&msg);
        assert_eq!(id.len(), 31);
        assert_eq!(id, MattermostSender::pending_post_id(&msg.clone()));
        let other = OutboundMessage { text: "hi again".into(), ..msg.clone() };
        assert_ne!(id, MattermostSender::pending_post_id(&other));
    }

    #[test]
    fn rest_errors_map_to_send_errors() {
        let st = |status, retry| RestError::Status { status, message: "m".into(), retry_after_ms: retry };
        assert_eq!(
            send_error(st(429, Some(1500))),
            SendError::Retryable { message: "m".into(), retry_after_ms: Some(1500) }
        );
        assert!(send_error(st(503, None)).is_retryable());
        assert!(send_error(st(408, None)).is_retryable());
        assert!(send_error(RestError::Transport("t".into())).is_retryable());
        for s in [400, 403, 404] {
            assert!(!send_error(st(s, None)).is_retryable(), "{s}");
        }
        assert!(!send_error(RestError::Unauthorized("u".into())).is_retryable());
        let mut h = reqwest::header::HeaderMap::new();
        h.insert("x-ratelimit-reset", "2".parse().unwrap());
        assert_eq!(retry_after_ms(&h), Some(2000));
        h.insert("retry-after", "0.5".parse().unwrap());
        assert_eq!(retry_after_ms(&h), Some(500), "Retry-After wins");
        assert_eq!(retry_after_ms(&reqwest::header::HeaderMap::new()), None);
        assert_eq!(
            app_error_message("POST /api/v4/posts", 400, r#"{"id":"api.post.create_post.root_id.app_error","message":"Invalid RootId parameter.","status_code":400}"#),
            "POST /api/v4/posts: Mattermost answered HTTP 400: Invalid RootId parameter. (api.post.create_post.root_id.app_error)"
        );
    }

    fn config(text: &str) -> Config {
        parse(text, &|_| None).unwrap().config
    }

    #[test]
    fn build_accounts_specs_and_problems() {
        let cfg = config(
            r#"{channels: {mattermost: {botToken: "base", baseUrl: "https://chat.example.com/api/v4", accounts: {
                a: {}, b: {botToken: "other", healthMonitor: {enabled: false}, textChunkLimit: 1000}, c: {botToken: "base"},
                d: {botToken: "base", baseUrl: "https://other.example.com"}, e: {enabled: false},
            }}}}"#,
        );
        let http = reqwest::Client::new();
        let built = build_accounts(&cfg, &|_| None, &http);
        assert_eq!(built.len(), 4);
        let a = built[0].as_ref().unwrap();
        assert_eq!((a.channel.as_str(), a.account.as_str()), ("mattermost", "a"));
        assert!(a.health_monitor && a.runner.is_some());
        assert_eq!(a.sender.text_chunk_limit(), 4000);
        assert!(!a.fingerprint.contains("\"base\"") && a.fingerprint.contains("sha256:"));
        let b = built[1].as_ref().unwrap();
        assert!(!b.health_monitor);
        assert_eq!(b.sender.text_chunk_limit(), 1000);
        let c = built[2].as_ref().err().unwrap();
        assert!(c.message.contains("same bot token and server as account \"a\""), "{}", c.message);
        assert!(built[3].is_ok(), "the same token on another server is another account");

        let env = |k: &str| match k {
            "MATTERMOST_BOT_TOKEN" => Some("env".to_string()),
            "MATTERMOST_URL" => Some("http://127.0.0.1:8065".to_string()),
            _ => None,
        };
        let built = build_accounts(&config("{channels: {mattermost: {}}}"), &env, &http);
        assert_eq!(built[0].as_ref().unwrap().account.as_str(), "default");
        let built = build_accounts(&config("{channels: {mattermost: {}}}"), &|_| None, &http);
        assert!(built[0].as_ref().err().unwrap().message.starts_with("no bot token"));
        assert!(build_accounts(&config("{}"), &|_| None, &http).is_empty());
    }

    #[test]
    fn wake_policy_and_reply_mode_from_config() {
        let cfg = config(
            r#"{channels: {mattermost: {replyToMode: "first", dmPolicy: "open", allowFrom: ["*"],
                accounts: {work: {}, off: {enabled: false}}}}}"#,
        );
        let mut i = inbound(&posted("D", post_json(json!({})), None), false, false);
        i.account = AccountId::new("work");
        let p = wake_policy(&cfg, &i);
        assert_eq!(p.dm_policy, DmPolicy::Open);
        assert!(p.dm_sender_allowed);
        i.account = AccountId::new("off");
        let p = wake_policy(&cfg, &i);
        assert_eq!((p.dm_policy, p.group_policy), (DmPolicy::Disabled, GroupPolicy::Disabled));
        let work = AccountId::new("work");
        assert_eq!(reply_to_mode(&cfg, &work), ReplyToMode::All, "first is all in Mattermost");
        assert_eq!(reply_to_mode_for_chat(&cfg, &work, ChatKind::Direct), ReplyToMode::Off, "DMs stay flat");
        assert_eq!(reply_to_mode(&cfg, &AccountId::new("nope")), ReplyToMode::Off);
    }
}
