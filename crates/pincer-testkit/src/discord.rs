//! [`FakeDiscord`]: a strict, wire-level fake of Discord's HTTP API (v10) and Gateway (v10,
//! JSON encoding) on one loopback port, for end-to-end tests of a Discord channel adapter.
//!
//! Payload shapes follow Discord's official type definitions, the npm package
//! `discord-api-types` (v10): `APIUser`, `APIChannel`, `APIMessage`, `APIGuild`,
//! `GatewayReadyDispatchData`, `GatewayGuildCreateDispatchData`,
//! `GatewayMessageCreateDispatchData`, `GatewayIdentifyData`, `GatewayResumeData`,
//! `RESTPostAPIChannelMessageJSONBody`, `RESTGetAPIGatewayBotResult`, with `GatewayOpcodes`
//! and `GatewayCloseCodes` for the gateway protocol. Fields are snake_case as on the wire,
//! ids are snowflake strings, timestamps ISO 8601 (`2025-01-02T03:04:05.678901+00:00`).
//!
//! # Gateway (`ws://127.0.0.1:<port>/?v=10&encoding=json`)
//!
//! The server sends HELLO (op 10) on connect. The first client payload must be IDENTIFY
//! (op 2) or RESUME (op 6); HEARTBEATs (op 1) are allowed before it. Violations of the
//! protocol close the socket with the documented close code: invalid JSON or a malformed
//! payload 4002, an unknown opcode 4001, any other opcode before authenticating 4003, an
//! unknown token 4004, a second IDENTIFY/RESUME on an authenticated socket 4005, a RESUME
//! with a `seq` ahead of the session 4007, a `shard` other than `[0, 1]` 4010, a `v` query
//! parameter other than 10 4012, unknown intent bits 4013, privileged intents the test
//! disallowed ([`FakeDiscord::set_allowed_intents`]) 4014. Frames are always plain JSON
//! text; a `compress` query parameter is ignored (no transport compression is ever applied).
//!
//! **One live session per bot.** If a token already has another *live* socket (open and
//! identified or resumed) when a new IDENTIFY or RESUME for it arrives, the fake first waits
//! (bounded, [`FakeDiscord::set_overlap_grace`], default 1 s) for that socket to be seen
//! closed, because a client that just closed it may race the server noticing the EOF. If
//! it stays open, the new socket gets INVALID_SESSION (op 9, `d: false`) and is closed with
//! 4005, and the attempt is recorded as a [`Violation`]. Real Discord would accept the
//! second session and deliver every event twice; a test asserting
//! `fake.violations() == 0` catches that bug deterministically.
//!
//! Sessions are resumable after an abnormal drop or a close with any code but 1000/1001; a
//! client close with 1000 or 1001 invalidates the session, as on Discord. Every dispatch
//! (op 0) of a session gets the next sequence number and is kept, so a RESUME replays every
//! dispatch after the client's `seq`, including those queued while no socket was live,
//! then sends RESUMED.
//!
//! Intents are honoured: MESSAGE_CREATE goes only to sessions with GUILD_MESSAGES (guild
//! channels and threads) or DIRECT_MESSAGES (DMs), GUILD_CREATE only with GUILDS, and
//! without MESSAGE_CONTENT the `content`, `embeds`, `attachments` and `components` of a
//! guild message are emptied unless the bot is mentioned or wrote it (Discord's rules).
//!
//! # HTTP API (`http://127.0.0.1:<port>/api/v10`)
//!
//! `GET /gateway`, `GET /gateway/bot`, `GET /users/@me`, `GET /channels/{id}`,
//! `GET /channels/{id}/messages`, `GET /channels/{id}/messages/{id}`,
//! `POST /channels/{id}/messages`, `POST /channels/{id}/typing`. Every route but
//! `GET /gateway` requires `Authorization: Bot <token>` of a bot added with
//! [`FakeDiscord::add_bot`] (else 401). Unknown routes answer 404
//! `{"message": "404: Not Found", "code": 0}`, known routes with another method 405. Every
//! response carries `x-ratelimit-*` headers; every request is recorded ([`RestRequest`]).
//! A message a bot creates is dispatched as MESSAGE_CREATE (author = that bot) to the bot
//! sessions like any other message, its own included, as Discord does: an adapter must
//! ignore its own messages.
//!
//! Simplifications: every bot is a member of every guild and sees every guild message; a DM
//! channel belongs to one bot. Channels and guilds should be registered before the bots
//! connect (GUILD_CREATE carries the snapshot; [`FakeDiscord::add_guild`] after READY
//! dispatches a GUILD_CREATE, [`FakeDiscord::add_channel`] dispatches nothing).

use axum::body::Bytes;
use axum::extract::ws::{CloseFrame, Message as WsMessage, WebSocket, WebSocketUpgrade};
use axum::extract::{RawQuery, State as AxState};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use serde_json::{json, Map, Value};
use std::collections::hash_map::RandomState;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt;
use std::hash::{BuildHasher, Hash, Hasher};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Discord's snowflake epoch (2015-01-01T00:00:00Z) in Unix milliseconds.
const DISCORD_EPOCH_MS: u64 = 1_420_070_400_000;

/// `GatewayIntentBits.Guilds`.
pub const INTENT_GUILDS: u64 = 1;
/// `GatewayIntentBits.GuildMembers` (privileged).
pub const INTENT_GUILD_MEMBERS: u64 = 1 << 1;
/// `GatewayIntentBits.GuildPresences` (privileged).
pub const INTENT_GUILD_PRESENCES: u64 = 1 << 8;
/// `GatewayIntentBits.GuildMessages`.
pub const INTENT_GUILD_MESSAGES: u64 = 1 << 9;
/// `GatewayIntentBits.DirectMessages`.
pub const INTENT_DIRECT_MESSAGES: u64 = 1 << 12;
/// `GatewayIntentBits.MessageContent` (privileged).
pub const INTENT_MESSAGE_CONTENT: u64 = 1 << 15;
/// The privileged intents: GuildMembers | GuildPresences | MessageContent.
pub const PRIVILEGED_INTENTS: u64 = INTENT_GUILD_MEMBERS | INTENT_GUILD_PRESENCES | INTENT_MESSAGE_CONTENT;
/// Every bit defined by `GatewayIntentBits` (v10): bits 0-16, 20, 21, 24 and 25.
pub const KNOWN_INTENTS: u64 = ((1 << 17) - 1) | (1 << 20) | (1 << 21) | (1 << 24) | (1 << 25);

/// Discord's default HELLO `heartbeat_interval`, in milliseconds.
pub const DEFAULT_HEARTBEAT_INTERVAL_MS: u64 = 41_250;

/// Maximum `content` length of a message, in characters (Unicode scalar values).
pub const MAX_CONTENT_CHARS: usize = 2000;

const CLOSE_UNKNOWN_ERROR: (u16, &str) = (4000, "Unknown error.");
const CLOSE_UNKNOWN_OPCODE: (u16, &str) = (4001, "Unknown opcode.");
const CLOSE_DECODE_ERROR: (u16, &str) = (4002, "Error while decoding payload.");
const CLOSE_NOT_AUTHENTICATED: (u16, &str) = (4003, "Not authenticated.");
const CLOSE_AUTHENTICATION_FAILED: (u16, &str) = (4004, "Authentication failed.");
const CLOSE_ALREADY_AUTHENTICATED: (u16, &str) = (4005, "Already authenticated.");
const CLOSE_INVALID_SEQ: (u16, &str) = (4007, "Invalid seq.");
const CLOSE_INVALID_SHARD: (u16, &str) = (4010, "Invalid shard.");
const CLOSE_INVALID_API_VERSION: (u16, &str) = (4012, "Invalid API version.");
const CLOSE_INVALID_INTENTS: (u16, &str) = (4013, "Invalid intent(s).");
const CLOSE_DISALLOWED_INTENTS: (u16, &str) = (4014, "Disallowed intent(s).");

/// A channel the test registers with [`FakeDiscord::add_channel`]. Served by
/// `GET /channels/{id}` as an `APIChannel` and listed in GUILD_CREATE.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ChannelSpec {
    /// A guild text channel (`ChannelType.GuildText`, type 0).
    GuildText {
        /// Channel id (snowflake string).
        id: String,
        /// The guild it belongs to (register it with [`FakeDiscord::add_guild`]).
        guild_id: String,
        /// Channel name.
        name: String,
    },
    /// A DM channel (`ChannelType.DM`, type 1) between one bot and one user.
    Dm {
        /// Channel id (snowflake string).
        id: String,
        /// User id of the bot this DM belongs to; only that bot receives its messages and
        /// may post in it (other bots get 403 `Missing Access`, code 50001).
        bot_user_id: String,
        /// The human recipient's user id.
        recipient_id: String,
        /// The human recipient's username.
        recipient_name: String,
    },
    /// A public thread (`ChannelType.PublicThread`, type 11) under a guild text channel.
    PublicThread {
        /// Thread id (snowflake string).
        id: String,
        /// The guild it belongs to.
        guild_id: String,
        /// The parent text channel's id.
        parent_id: String,
        /// Thread name.
        name: String,
    },
}

impl ChannelSpec {
    /// A guild text channel (type 0).
    pub fn text(id: impl Into<String>, guild_id: impl Into<String>, name: impl Into<String>) -> Self {
        ChannelSpec::GuildText { id: id.into(), guild_id: guild_id.into(), name: name.into() }
    }

    /// A DM channel (type 1) of bot `bot_user_id` with user `recipient_id`.
    pub fn dm(
        id: impl Into<String>,
        bot_user_id: impl Into<String>,
        recipient_id: impl Into<String>,
        recipient_name: impl Into<String>,
    ) -> Self {
        ChannelSpec::Dm {
            id: id.into(),
            bot_user_id: bot_user_id.into(),
            recipient_id: recipient_id.into(),
            recipient_name: recipient_name.into(),
        }
    }

    /// A public thread (type 11) in `guild_id` under text channel `parent_id`.
    pub fn thread(
        id: impl Into<String>,
        guild_id: impl Into<String>,
        parent_id: impl Into<String>,
        name: impl Into<String>,
    ) -> Self {
        ChannelSpec::PublicThread {
            id: id.into(),
            guild_id: guild_id.into(),
            parent_id: parent_id.into(),
            name: name.into(),
        }
    }

    /// The channel id.
    pub fn id(&self) -> &str {
        match self {
            ChannelSpec::GuildText { id, .. } | ChannelSpec::Dm { id, .. } | ChannelSpec::PublicThread { id, .. } => id,
        }
    }

    /// The guild id (`None` for DMs).
    pub fn guild_id(&self) -> Option<&str> {
        match self {
            ChannelSpec::GuildText { guild_id, .. } | ChannelSpec::PublicThread { guild_id, .. } => Some(guild_id),
            ChannelSpec::Dm { .. } => None,
        }
    }

    /// The `ChannelType` number: 0, 1 or 11.
    pub fn channel_type(&self) -> u8 {
        match self {
            ChannelSpec::GuildText { .. } => 0,
            ChannelSpec::Dm { .. } => 1,
            ChannelSpec::PublicThread { .. } => 11,
        }
    }
}

/// A message written by a (human or other-bot) user, see [`FakeDiscord::user_message`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MessageSpec {
    /// The channel (must be registered with [`FakeDiscord::add_channel`]).
    pub channel_id: String,
    /// The guild; `None` takes the channel's guild (and must match it when given).
    pub guild_id: Option<String>,
    /// Author user id (snowflake string).
    pub author_id: String,
    /// Author username.
    pub author_name: String,
    /// Whether the author is a bot (`author.bot: true`).
    pub author_bot: bool,
    /// Message content.
    pub content: String,
    /// Ids of mentioned users; each becomes an `APIUser` in `mentions` (known bots and
    /// users keep their names; unknown ids get the username `user<id>`).
    pub mentions: Vec<String>,
    /// Id of the message this one replies to: the message gets `type: 19`,
    /// `message_reference` and the full `referenced_message`.
    pub message_reference: Option<String>,
    /// For replies: do not add the replied-to author to `mentions` (Discord adds it by
    /// default, i.e. a reply pings unless the author turned that off).
    pub reply_without_ping: bool,
}

impl MessageSpec {
    /// A message by user `author_id`/`author_name` in `channel_id`.
    pub fn new(
        channel_id: impl Into<String>,
        author_id: impl Into<String>,
        author_name: impl Into<String>,
        content: impl Into<String>,
    ) -> Self {
        MessageSpec {
            channel_id: channel_id.into(),
            author_id: author_id.into(),
            author_name: author_name.into(),
            content: content.into(),
            ..MessageSpec::default()
        }
    }

    /// Adds a mentioned user id.
    pub fn mention(mut self, user_id: impl Into<String>) -> Self {
        self.mentions.push(user_id.into());
        self
    }

    /// Makes it a reply to message `message_id`.
    pub fn reply_to(mut self, message_id: impl Into<String>) -> Self {
        self.message_reference = Some(message_id.into());
        self
    }

    /// Marks the author as a bot.
    pub fn from_bot(mut self) -> Self {
        self.author_bot = true;
        self
    }
}

/// Per-bot gateway counters, see [`FakeDiscord::stats`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BotStats {
    /// Sockets open right now and authenticated (identified or resumed) with this token.
    pub live_sessions: usize,
    /// The most sockets ever live at once for this token, counting a rejected overlapping
    /// IDENTIFY/RESUME (so any [`Violation`] makes it at least 2).
    pub max_live_sessions: usize,
    /// IDENTIFY payloads received with this token (accepted or rejected).
    pub identify_count: usize,
    /// RESUME payloads received with this token (accepted or rejected).
    pub resume_count: usize,
    /// IDENTIFYs answered with READY.
    pub ready_count: usize,
    /// RESUMEs answered with RESUMED.
    pub resumed_count: usize,
    /// Sockets that authenticated: `ready_count + resumed_count`.
    pub connection_count: usize,
    /// INVALID_SESSION (op 9) payloads sent to this bot's sockets.
    pub invalid_sessions_sent: usize,
    /// HEARTBEATs (op 1) received on sockets authenticated with this token.
    pub heartbeats: usize,
    /// HEARTBEAT_ACKs (op 11) sent to those sockets.
    pub heartbeat_acks: usize,
    /// Overlapping IDENTIFY/RESUME attempts rejected (see [`Violation`]).
    pub violations: usize,
}

/// An IDENTIFY or RESUME rejected because the token already had a live socket that stayed
/// open for the whole grace period.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    /// The bot token.
    pub token: String,
    /// `"IDENTIFY"` or `"RESUME"`.
    pub op: &'static str,
    /// How many other live sockets the token had.
    pub other_live_sessions: usize,
    /// The rejected connection's id.
    pub conn_id: u64,
}

/// Who ended a gateway connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CloseBy {
    /// The client sent a close frame (its code, if any, is in [`CloseEvent::code`]).
    Client,
    /// The server sent a close frame with [`CloseEvent::code`].
    Server,
    /// The server dropped the TCP connection without a close frame
    /// ([`FakeDiscord::drop_socket`]).
    ServerAbort,
    /// The connection ended without a close frame from the client (EOF or I/O error).
    Transport,
}

/// One ended gateway connection, see [`FakeDiscord::close_log`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CloseEvent {
    /// Connection id (increasing per accepted WebSocket).
    pub conn_id: u64,
    /// The token it had authenticated with, if it had.
    pub token: Option<String>,
    /// Who closed it.
    pub by: CloseBy,
    /// The close code, when a close frame carried one.
    pub code: Option<u16>,
}

/// One payload a gateway client sent, see [`FakeDiscord::gateway_frames`].
#[derive(Clone, Debug, PartialEq)]
pub struct GatewayFrame {
    /// Connection id.
    pub conn_id: u64,
    /// The token the connection was authenticated with when it arrived, if any.
    pub token: Option<String>,
    /// The payload (`{op, d, ...}`).
    pub payload: Value,
}

/// One HTTP request as received, see [`FakeDiscord::requests`].
#[derive(Clone, Debug, PartialEq)]
pub struct RestRequest {
    /// HTTP method, e.g. `POST`.
    pub method: String,
    /// Path including `/api/v10`.
    pub path: String,
    /// Raw query string, if any.
    pub query: Option<String>,
    /// Headers, names lowercased, in arrival order.
    pub headers: Vec<(String, String)>,
    /// Body parsed as JSON (`Value::Null` if empty or not JSON).
    pub body: Value,
    /// The status the fake answered with.
    pub status: u16,
}

impl RestRequest {
    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers.iter().find(|(k, _)| *k == name).map(|(_, v)| v.as_str())
    }
}

/// A waiter timed out. Its `Debug` and `Display` say what was awaited and dump the fake's
/// counters, so `.unwrap()` in a test prints a useful message.
#[derive(Clone, PartialEq, Eq)]
pub struct WaitTimeout {
    /// What was awaited.
    pub what: String,
    /// How long it waited.
    pub timeout: Duration,
    /// [`FakeDiscord::summary`] at the time of the timeout.
    pub state: String,
}

impl fmt::Display for WaitTimeout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FakeDiscord: timed out after {:?} waiting for {}\n{}", self.timeout, self.what, self.state)
    }
}

impl fmt::Debug for WaitTimeout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl std::error::Error for WaitTimeout {}

// ---------------------------------------------------------------------------------------
// State
// ---------------------------------------------------------------------------------------

#[derive(Clone)]
struct Bot {
    token: String,
    user_id: String,
    username: String,
}

struct StoredMessage {
    id: String,
    channel_id: String,
    /// The REST-shaped `APIMessage`.
    json: Value,
    /// The token of the bot that created it through REST; `None` for user messages.
    bot_token: Option<String>,
    /// `(bot token, channel id, nonce)` when posted with `enforce_nonce`.
    nonce_key: Option<(String, String, String)>,
}

struct Session {
    token: String,
    intents: u64,
    seq: u64,
    /// Every dispatch of the session: `(s, serialized frame)`.
    log: Vec<(u64, String)>,
    resumable: bool,
    conn: Option<u64>,
}

enum Out {
    Text(String),
    Close(u16, String),
}

struct Conn {
    /// The token it authenticated with (kept after it stops being live, for the logs).
    token: Option<String>,
    session: Option<String>,
    /// Open and authenticated (identified or resumed).
    live: bool,
    /// A close frame or an abort is on its way; ignore everything it still sends.
    closing: bool,
    acks_paused: bool,
    tx: mpsc::UnboundedSender<Out>,
    kill: CancellationToken,
}

struct FailPlan {
    status: u16,
    retry_after: Duration,
}

struct State {
    gateway_url: String,
    bots: BTreeMap<String, Bot>,
    guilds: Vec<(String, String)>,
    channels: Vec<ChannelSpec>,
    /// Known users: id -> (username, bot).
    users: HashMap<String, (String, bool)>,
    messages: Vec<StoredMessage>,
    sessions: HashMap<String, Session>,
    conns: HashMap<u64, Conn>,
    stats: HashMap<String, BotStats>,
    violations: Vec<Violation>,
    requests: Vec<RestRequest>,
    closes: Vec<CloseEvent>,
    frames: Vec<GatewayFrame>,
    queries: Vec<String>,
    fail_posts: VecDeque<FailPlan>,
    heartbeat_interval_ms: u64,
    heartbeat_timeout: Option<Duration>,
    allowed_intents: u64,
    overlap_grace: Duration,
    last_snowflake: u64,
    next_conn: u64,
}

struct Shared {
    state: Mutex<State>,
    /// Bumped after every state change; waiters subscribe to it.
    changed: watch::Sender<u64>,
    stop: CancellationToken,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Shared {
    fn with<R>(&self, f: impl FnOnce(&State) -> R) -> R {
        f(&lock(&self.state))
    }

    fn mutate<R>(&self, f: impl FnOnce(&mut State) -> R) -> R {
        let r = {
            let mut st = lock(&self.state);
            f(&mut st)
        };
        self.changed.send_modify(|v| *v = v.wrapping_add(1));
        r
    }
}

fn now_iso() -> String {
    iso8601(SystemTime::now())
}

/// `YYYY-MM-DDTHH:MM:SS.ffffff+00:00`, the format Discord uses.
fn iso8601(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (y, m, day) = civil_from_days((secs / 86_400) as i64);
    let rem = secs % 86_400;
    format!(
        "{y:04}-{m:02}-{day:02}T{:02}:{:02}:{:02}.{:06}+00:00",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_micros()
    )
}

/// Days since 1970-01-01 to a proleptic Gregorian (year, month, day); Howard Hinnant's
/// algorithm.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = if z >= 0 { z } else { z - 146_096 } / 146_097;
    let doe = (z - era * 146_097) as u64;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe as i64 + era * 400;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

fn random_hex() -> String {
    let mut out = String::new();
    for i in 0..2u8 {
        let mut h = RandomState::new().build_hasher();
        i.hash(&mut h);
        SystemTime::now().hash(&mut h);
        out.push_str(&format!("{:016x}", h.finish()));
    }
    out
}

fn user_json(id: &str, username: &str, bot: bool) -> Value {
    let mut u = json!({
        "id": id,
        "username": username,
        "discriminator": "0",
        "global_name": null,
        "avatar": null,
        "public_flags": 0,
    });
    if bot {
        u["bot"] = Value::Bool(true);
    }
    u
}

/// The bot as `APIUser` with the current-user fields (`GET /users/@me`, READY `user`).
fn current_user_json(bot: &Bot) -> Value {
    let mut u = user_json(&bot.user_id, &bot.username, true);
    let o = u.as_object_mut().expect("object");
    o.insert("mfa_enabled".into(), Value::Bool(false));
    o.insert("verified".into(), Value::Bool(true));
    o.insert("flags".into(), json!(0));
    o.insert("banner".into(), Value::Null);
    o.insert("accent_color".into(), Value::Null);
    o.insert("locale".into(), json!("en-US"));
    o.insert("email".into(), Value::Null);
    u
}

/// `APIGuildMemberNoUser` (the `member` of a guild MESSAGE_CREATE).
fn member_json() -> Value {
    json!({
        "roles": [],
        "joined_at": "2024-01-01T00:00:00.000000+00:00",
        "deaf": false,
        "mute": false,
        "flags": 0,
        "pending": false,
        "premium_since": null,
        "nick": null,
        "avatar": null,
        "communication_disabled_until": null,
    })
}

fn frame(op: u8, d: Value) -> String {
    json!({"op": op, "d": d, "s": null, "t": null}).to_string()
}

impl State {
    fn new(gateway_url: String) -> State {
        State {
            gateway_url,
            bots: BTreeMap::new(),
            guilds: Vec::new(),
            channels: Vec::new(),
            users: HashMap::new(),
            messages: Vec::new(),
            sessions: HashMap::new(),
            conns: HashMap::new(),
            stats: HashMap::new(),
            violations: Vec::new(),
            requests: Vec::new(),
            closes: Vec::new(),
            frames: Vec::new(),
            queries: Vec::new(),
            fail_posts: VecDeque::new(),
            heartbeat_interval_ms: DEFAULT_HEARTBEAT_INTERVAL_MS,
            heartbeat_timeout: None,
            allowed_intents: KNOWN_INTENTS,
            overlap_grace: Duration::from_secs(1),
            last_snowflake: 0,
            next_conn: 0,
        }
    }

    fn next_snowflake(&mut self) -> String {
        let ms = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_millis() as u64;
        let mut id = ms.saturating_sub(DISCORD_EPOCH_MS) << 22;
        if id <= self.last_snowflake {
            id = self.last_snowflake + 1;
        }
        self.last_snowflake = id;
        id.to_string()
    }

    fn stats_mut(&mut self, token: &str) -> &mut BotStats {
        self.stats.entry(token.to_string()).or_default()
    }

    fn stats_of(&self, token: &str) -> BotStats {
        let mut s = self.stats.get(token).cloned().unwrap_or_default();
        s.live_sessions = self.live_count(token, None);
        s
    }

    fn bot_by_token(&self, token: &str) -> Option<&Bot> {
        self.bots.get(token)
    }

    fn bot_by_user(&self, user_id: &str) -> Option<&Bot> {
        self.bots.values().find(|b| b.user_id == user_id)
    }

    fn channel(&self, id: &str) -> Option<&ChannelSpec> {
        self.channels.iter().find(|c| c.id() == id)
    }

    fn live_count(&self, token: &str, except: Option<u64>) -> usize {
        self.conns.iter().filter(|(id, c)| c.live && c.token.as_deref() == Some(token) && Some(**id) != except).count()
    }

    fn live_conns(&self, token: &str) -> Vec<u64> {
        let mut v: Vec<u64> =
            self.conns.iter().filter(|(_, c)| c.live && c.token.as_deref() == Some(token)).map(|(id, _)| *id).collect();
        v.sort_unstable();
        v
    }

    fn user_name(&self, id: &str) -> (String, bool) {
        if let Some(b) = self.bot_by_user(id) {
            return (b.username.clone(), true);
        }
        self.users.get(id).cloned().unwrap_or_else(|| (format!("user{id}"), false))
    }

    fn push(&self, conn_id: u64, out: Out) {
        if let Some(c) = self.conns.get(&conn_id) {
            if !c.closing {
                let _ = c.tx.send(out);
            }
        }
    }

    /// Detach a connection from its session and mark it not live.
    fn detach(&mut self, conn_id: u64) -> Option<String> {
        let c = self.conns.get_mut(&conn_id)?;
        c.live = false;
        let sid = c.session.take()?;
        if let Some(s) = self.sessions.get_mut(&sid) {
            if s.conn == Some(conn_id) {
                s.conn = None;
            }
        }
        Some(sid)
    }

    fn server_close(&mut self, conn_id: u64, code: u16, reason: &str) {
        let Some(c) = self.conns.get(&conn_id) else { return };
        if c.closing {
            return;
        }
        let _ = c.tx.send(Out::Close(code, reason.to_string()));
        let token = c.token.clone();
        self.detach(conn_id);
        if let Some(c) = self.conns.get_mut(&conn_id) {
            c.closing = true;
        }
        self.closes.push(CloseEvent { conn_id, token, by: CloseBy::Server, code: Some(code) });
    }

    fn abort(&mut self, conn_id: u64) {
        let Some(c) = self.conns.get(&conn_id) else { return };
        if c.closing {
            return;
        }
        c.kill.cancel();
        let token = c.token.clone();
        self.detach(conn_id);
        if let Some(c) = self.conns.get_mut(&conn_id) {
            c.closing = true;
        }
        self.closes.push(CloseEvent { conn_id, token, by: CloseBy::ServerAbort, code: None });
    }

    /// The client closed (close frame) or vanished (EOF/error).
    fn client_gone(&mut self, conn_id: u64, by: CloseBy, code: Option<u16>) {
        let Some(c) = self.conns.get(&conn_id) else { return };
        if c.closing {
            return;
        }
        let token = c.token.clone();
        let sid = self.detach(conn_id);
        if let Some(c) = self.conns.get_mut(&conn_id) {
            c.closing = true;
        }
        if by == CloseBy::Client && matches!(code, Some(1000 | 1001)) {
            if let Some(s) = sid.and_then(|sid| self.sessions.get_mut(&sid)) {
                s.resumable = false;
            }
        }
        self.closes.push(CloseEvent { conn_id, token, by, code });
    }

    /// Appends a dispatch (op 0) to the session and sends it if the session has a live socket.
    fn dispatch(&mut self, sid: &str, t: &str, d: Value) {
        let Some(s) = self.sessions.get_mut(sid) else { return };
        s.seq += 1;
        let text = json!({"op": 0, "t": t, "s": s.seq, "d": d}).to_string();
        s.log.push((s.seq, text.clone()));
        if let Some(conn_id) = s.conn {
            if let Some(c) = self.conns.get(&conn_id) {
                if c.live && !c.closing {
                    let _ = c.tx.send(Out::Text(text));
                }
            }
        }
    }

    fn resumable_sessions(&self) -> Vec<String> {
        let mut v: Vec<String> = self.sessions.iter().filter(|(_, s)| s.resumable).map(|(k, _)| k.clone()).collect();
        v.sort();
        v
    }

    fn channel_json(&self, c: &ChannelSpec, in_guild_create: bool) -> Value {
        match c {
            ChannelSpec::GuildText { id, guild_id, name } => {
                let mut v = json!({
                    "id": id,
                    "type": 0,
                    "name": name,
                    "position": 0,
                    "permission_overwrites": [],
                    "parent_id": null,
                    "nsfw": false,
                    "topic": null,
                    "last_message_id": self.last_message_id(id),
                    "rate_limit_per_user": 0,
                    "flags": 0,
                });
                if !in_guild_create {
                    v["guild_id"] = json!(guild_id);
                }
                v
            }
            ChannelSpec::Dm { id, recipient_id, recipient_name, .. } => json!({
                "id": id,
                "type": 1,
                "name": null,
                "last_message_id": self.last_message_id(id),
                "recipients": [user_json(recipient_id, recipient_name, false)],
                "flags": 0,
            }),
            ChannelSpec::PublicThread { id, guild_id, parent_id, name } => {
                let count = self.messages.iter().filter(|m| m.channel_id == *id).count();
                let mut v = json!({
                    "id": id,
                    "type": 11,
                    "name": name,
                    "parent_id": parent_id,
                    "owner_id": self.bots.values().next().map(|b| b.user_id.clone()).unwrap_or_else(|| "1".into()),
                    "last_message_id": self.last_message_id(id),
                    "rate_limit_per_user": 0,
                    "message_count": count,
                    "member_count": 1,
                    "total_message_sent": count,
                    "flags": 0,
                    "thread_metadata": {
                        "archived": false,
                        "auto_archive_duration": 1440,
                        "archive_timestamp": "2024-01-01T00:00:00.000000+00:00",
                        "locked": false,
                        "create_timestamp": "2024-01-01T00:00:00.000000+00:00",
                    },
                });
                if !in_guild_create {
                    v["guild_id"] = json!(guild_id);
                }
                v
            }
        }
    }

    fn last_message_id(&self, channel_id: &str) -> Value {
        self.messages.iter().rev().find(|m| m.channel_id == channel_id).map(|m| json!(m.id)).unwrap_or(Value::Null)
    }

    /// `GatewayGuildCreateDispatchData` for `guild_id` as seen by `bot`.
    fn guild_create_json(&self, guild_id: &str, name: &str, bot: &Bot) -> Value {
        let channels: Vec<Value> = self
            .channels
            .iter()
            .filter(|c| matches!(c, ChannelSpec::GuildText { guild_id: g, .. } if g == guild_id))
            .map(|c| self.channel_json(c, true))
            .collect();
        let threads: Vec<Value> = self
            .channels
            .iter()
            .filter(|c| matches!(c, ChannelSpec::PublicThread { guild_id: g, .. } if g == guild_id))
            .map(|c| self.channel_json(c, true))
            .collect();
        let mut bot_member = member_json();
        bot_member["user"] = user_json(&bot.user_id, &bot.username, true);
        let mut guild = json!({
            "id": guild_id,
            "name": name,
            "icon": null,
            "icon_hash": null,
            "splash": null,
            "discovery_splash": null,
            "owner_id": guild_id,
            "afk_channel_id": null,
            "afk_timeout": 300,
            "widget_enabled": false,
            "widget_channel_id": null,
            "verification_level": 0,
            "default_message_notifications": 0,
            "explicit_content_filter": 0,
            "roles": [{
                "id": guild_id,
                "name": "@everyone",
                "color": 0,
                "colors": {"primary_color": 0, "secondary_color": null, "tertiary_color": null},
                "hoist": false,
                "icon": null,
                "unicode_emoji": null,
                "position": 0,
                "permissions": "1071698660929",
                "managed": false,
                "mentionable": false,
                "flags": 0,
            }],
            "emojis": [],
            "features": [],
            "mfa_level": 0,
            "application_id": null,
            "system_channel_id": null,
            "system_channel_flags": 0,
            "rules_channel_id": null,
            "max_presences": null,
            "max_members": 500_000,
            "vanity_url_code": null,
            "description": null,
            "banner": null,
            "premium_tier": 0,
            "premium_subscription_count": 0,
            "preferred_locale": "en-US",
            "public_updates_channel_id": null,
            "max_video_channel_users": 25,
            "max_stage_video_channel_users": 50,
            "nsfw_level": 0,
            "stickers": [],
            "premium_progress_bar_enabled": false,
            "hub_type": null,
            "safety_alerts_channel_id": null,
            "incidents_data": null,
        });
        let create = json!({
            "joined_at": "2024-01-01T00:00:00.000000+00:00",
            "large": false,
            "unavailable": false,
            "member_count": 1,
            "voice_states": [],
            "members": [bot_member],
            "channels": channels,
            "threads": threads,
            "presences": [],
            "stage_instances": [],
            "guild_scheduled_events": [],
            "soundboard_sounds": [],
        });
        if let (Some(g), Value::Object(extra)) = (guild.as_object_mut(), create) {
            g.extend(extra);
        }
        guild
    }

    /// Dispatches MESSAGE_CREATE for a stored message to every session that may see it.
    fn broadcast_message(&mut self, msg: &Value, channel: &ChannelSpec) {
        let guild_id = channel.guild_id().map(str::to_string);
        let dm_bot = match channel {
            ChannelSpec::Dm { bot_user_id, .. } => Some(bot_user_id.clone()),
            _ => None,
        };
        let author_id = msg["author"]["id"].as_str().unwrap_or("").to_string();
        let mentioned: Vec<String> = msg["mentions"]
            .as_array()
            .map(|a| a.iter().filter_map(|u| u["id"].as_str().map(str::to_string)).collect())
            .unwrap_or_default();
        let mut base = msg.clone();
        base["channel_type"] = json!(channel.channel_type());
        if let Some(g) = &guild_id {
            base["guild_id"] = json!(g);
            base["member"] = member_json();
            if let Some(ms) = base["mentions"].as_array_mut() {
                for m in ms {
                    m["member"] = member_json();
                }
            }
        }
        for sid in self.resumable_sessions() {
            let (token, intents) = {
                let s = &self.sessions[&sid];
                (s.token.clone(), s.intents)
            };
            let Some(bot) = self.bots.get(&token) else { continue };
            if dm_bot.as_ref().is_some_and(|b| *b != bot.user_id) {
                continue;
            }
            let needed = if guild_id.is_some() { INTENT_GUILD_MESSAGES } else { INTENT_DIRECT_MESSAGES };
            if intents & needed == 0 {
                continue;
            }
            let mut d = base.clone();
            let sees_content = intents & INTENT_MESSAGE_CONTENT != 0
                || guild_id.is_none()
                || author_id == bot.user_id
                || mentioned.contains(&bot.user_id);
            if !sees_content {
                d["content"] = json!("");
                d["embeds"] = json!([]);
                d["attachments"] = json!([]);
                d["components"] = json!([]);
                if let Some(o) = d.as_object_mut() {
                    o.remove("poll");
                }
            }
            self.dispatch(&sid, "MESSAGE_CREATE", d);
        }
    }

    fn summary(&self) -> String {
        let mut out = String::new();
        for (token, bot) in &self.bots {
            let s = self.stats_of(token);
            out.push_str(&format!(
                "  bot {} ({}): live={} max_live={} identify={} resume={} ready={} resumed={} connections={} \
                 op9_sent={} heartbeats={} acks={} violations={}\n",
                bot.username,
                bot.user_id,
                s.live_sessions,
                s.max_live_sessions,
                s.identify_count,
                s.resume_count,
                s.ready_count,
                s.resumed_count,
                s.connection_count,
                s.invalid_sessions_sent,
                s.heartbeats,
                s.heartbeat_acks,
                s.violations
            ));
        }
        let mut sessions: Vec<_> = self.sessions.iter().collect();
        sessions.sort_by(|a, b| a.0.cmp(b.0));
        for (sid, s) in sessions {
            out.push_str(&format!(
                "  session {sid}: bot_token={} seq={} resumable={} conn={:?}\n",
                s.token, s.seq, s.resumable, s.conn
            ));
        }
        let mut conns: Vec<_> = self.conns.iter().collect();
        conns.sort_by_key(|(id, _)| **id);
        for (id, c) in conns {
            out.push_str(&format!(
                "  conn {id}: token={:?} live={} closing={} acks_paused={}\n",
                c.token, c.live, c.closing, c.acks_paused
            ));
        }
        for c in &self.channels {
            let total = self.messages.iter().filter(|m| m.channel_id == c.id()).count();
            let by_bots = self.messages.iter().filter(|m| m.channel_id == c.id() && m.bot_token.is_some()).count();
            out.push_str(&format!("  channel {}: {total} messages ({by_bots} by bots via REST)\n", c.id()));
        }
        out.push_str(&format!(
            "  violations: {:?}\n  closes: {:?}\n  rest requests: {}\n",
            self.violations,
            self.closes,
            self.requests.len()
        ));
        out
    }
}

// ---------------------------------------------------------------------------------------
// FakeDiscord
// ---------------------------------------------------------------------------------------

/// The fake Discord: HTTP API and Gateway on one `127.0.0.1` port. Dropping it stops the
/// server and every gateway connection task.
pub struct FakeDiscord {
    addr: SocketAddr,
    shared: Arc<Shared>,
    task: Option<JoinHandle<()>>,
}

impl fmt::Debug for FakeDiscord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FakeDiscord").field("addr", &self.addr).finish()
    }
}

impl Drop for FakeDiscord {
    fn drop(&mut self) {
        self.shared.stop.cancel();
    }
}

impl FakeDiscord {
    /// Binds `127.0.0.1:0` and serves the HTTP API under `/api/v10` and the gateway
    /// WebSocket on `/` (any query).
    ///
    /// # Panics
    /// If the loopback port cannot be bound.
    pub async fn start() -> FakeDiscord {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("local_addr");
        let shared = Arc::new(Shared {
            state: Mutex::new(State::new(format!("ws://{addr}"))),
            changed: watch::Sender::new(0),
            stop: CancellationToken::new(),
        });
        let app = Router::new().route("/", get(ws_route)).fallback(rest_route).with_state(shared.clone());
        let stop = shared.stop.clone();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).with_graceful_shutdown(stop.cancelled_owned()).await;
        });
        FakeDiscord { addr, shared, task: Some(task) }
    }

    /// Stops the server (like dropping it) and waits for the server task to end.
    pub async fn stop(mut self) {
        self.shared.stop.cancel();
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `127.0.0.1:<port>`: what twilight-http's `ClientBuilder::proxy(_, true)` takes (it
    /// then requests `http://127.0.0.1:<port>/api/v10/...`).
    pub fn authority(&self) -> String {
        self.addr.to_string()
    }

    /// The HTTP API root, `http://127.0.0.1:<port>/api/v10` (no trailing slash).
    pub fn api_root(&self) -> String {
        format!("http://{}/api/v10", self.addr)
    }

    /// The gateway URL, `ws://127.0.0.1:<port>` (no trailing slash); also the `url` of
    /// `GET /gateway/bot` and READY's `resume_gateway_url`. Clients connect to
    /// `{gateway_url}/?v=10&encoding=json`.
    pub fn gateway_url(&self) -> String {
        format!("ws://{}", self.addr)
    }

    /// Registers a bot: `token` (without the `Bot ` prefix) authenticates REST
    /// (`Authorization: Bot <token>`) and gateway IDENTIFY/RESUME (`d.token`, with or
    /// without the `Bot ` prefix). The bot is an `APIUser` with `bot: true`.
    pub fn add_bot(&self, token: &str, user_id: &str, username: &str) {
        self.shared.mutate(|st| {
            st.bots.insert(
                token.to_string(),
                Bot { token: token.to_string(), user_id: user_id.to_string(), username: username.to_string() },
            );
        });
    }

    /// Registers a guild (every bot is a member). Sessions identified later get it as
    /// unavailable in READY and then a GUILD_CREATE (with GUILDS intent); sessions already
    /// alive get a GUILD_CREATE now.
    pub fn add_guild(&self, guild_id: &str, name: &str) {
        self.shared.mutate(|st| {
            st.guilds.push((guild_id.to_string(), name.to_string()));
            for sid in st.resumable_sessions() {
                let s = &st.sessions[&sid];
                if s.intents & INTENT_GUILDS == 0 {
                    continue;
                }
                let Some(bot) = st.bots.get(&s.token).cloned() else { continue };
                let d = st.guild_create_json(guild_id, name, &bot);
                st.dispatch(&sid, "GUILD_CREATE", d);
            }
        });
    }

    /// Registers a channel (see [`ChannelSpec`]). DM recipients become known users.
    pub fn add_channel(&self, spec: ChannelSpec) {
        self.shared.mutate(|st| {
            if let ChannelSpec::Dm { recipient_id, recipient_name, .. } = &spec {
                st.users.insert(recipient_id.clone(), (recipient_name.clone(), false));
            }
            st.channels.retain(|c| c.id() != spec.id());
            st.channels.push(spec);
        });
    }

    /// Sets HELLO's `heartbeat_interval` (milliseconds) for connections opened from now on.
    /// Default [`DEFAULT_HEARTBEAT_INTERVAL_MS`].
    pub fn set_heartbeat_interval(&self, ms: u64) {
        self.shared.mutate(|st| st.heartbeat_interval_ms = ms);
    }

    /// When `Some(d)`, a connection that sends no HEARTBEAT for `d` (since HELLO or its last
    /// heartbeat) is closed with 4000; its session stays resumable. Off (`None`) by
    /// default. Applies to connections opened from now on.
    pub fn set_heartbeat_timeout(&self, timeout: Option<Duration>) {
        self.shared.mutate(|st| st.heartbeat_timeout = timeout);
    }

    /// Sets which privileged intents ([`PRIVILEGED_INTENTS`]) the bots may request; an
    /// IDENTIFY with others is closed with 4014. Default: all allowed.
    pub fn set_allowed_intents(&self, mask: u64) {
        self.shared.mutate(|st| st.allowed_intents = mask);
    }

    /// How long an IDENTIFY/RESUME waits for another live socket of the same token to be
    /// seen closed before it counts as a [`Violation`]. Default 1 s.
    pub fn set_overlap_grace(&self, grace: Duration) {
        self.shared.mutate(|st| st.overlap_grace = grace);
    }

    /// The next `n` `POST /channels/{id}/messages` (after authentication) fail with
    /// `status`: 429 answers like Discord's rate limiter (JSON `retry_after` 1.0 seconds,
    /// `retry-after: 1`, `x-ratelimit-scope: user`), others with
    /// `{"message": "<status>: <reason>", "code": 0}`. Nothing is created.
    pub fn fail_next_posts(&self, n: usize, status: u16) {
        self.fail_next_posts_retry_after(n, status, Duration::from_secs(1));
    }

    /// Like [`FakeDiscord::fail_next_posts`] with the 429's `retry_after` (JSON, seconds as
    /// a float; the `retry-after` header is the value rounded up to whole seconds).
    pub fn fail_next_posts_retry_after(&self, n: usize, status: u16, retry_after: Duration) {
        self.shared.mutate(|st| {
            for _ in 0..n {
                st.fail_posts.push_back(FailPlan { status, retry_after });
            }
        });
    }

    /// Creates a message by a user (or another bot) — an `APIMessage` with a new snowflake
    /// id, stored — and dispatches MESSAGE_CREATE (`GatewayMessageCreateDispatchData`: the
    /// message plus `guild_id`, `member` and members in `mentions` for guild channels, and
    /// `channel_type`) to every bot session that may see it: live sessions get it now,
    /// resumable sessions without a live socket keep it for a RESUME, bots without a
    /// session miss it. Returns the message id.
    ///
    /// # Panics
    /// If the channel is not registered, `guild_id` contradicts the channel's guild, or the
    /// replied-to message does not exist (test mistakes).
    pub fn user_message(&self, spec: MessageSpec) -> String {
        self.shared.mutate(|st| {
            let channel = st
                .channel(&spec.channel_id)
                .cloned()
                .unwrap_or_else(|| panic!("FakeDiscord::user_message: channel {} is not registered", spec.channel_id));
            if let Some(g) = &spec.guild_id {
                assert_eq!(
                    Some(g.as_str()),
                    channel.guild_id(),
                    "FakeDiscord::user_message: guild_id does not match channel {}",
                    spec.channel_id
                );
            }
            st.users.insert(spec.author_id.clone(), (spec.author_name.clone(), spec.author_bot));
            let id = st.next_snowflake();
            let mut mentions: Vec<Value> = spec
                .mentions
                .iter()
                .map(|uid| {
                    let (name, bot) = st.user_name(uid);
                    user_json(uid, &name, bot)
                })
                .collect();
            let mut msg = json!({
                "id": id,
                "type": 0,
                "channel_id": spec.channel_id,
                "author": user_json(&spec.author_id, &spec.author_name, spec.author_bot),
                "content": spec.content,
                "timestamp": now_iso(),
                "edited_timestamp": null,
                "tts": false,
                "mention_everyone": false,
                "mention_roles": [],
                "attachments": [],
                "embeds": [],
                "components": [],
                "pinned": false,
                "flags": 0,
            });
            if let Some(ref_id) = &spec.message_reference {
                let referenced =
                    st.messages.iter().find(|m| m.id == *ref_id).map(|m| m.json.clone()).unwrap_or_else(|| {
                        panic!("FakeDiscord::user_message: replied-to message {ref_id} does not exist")
                    });
                make_reply(&mut msg, referenced, channel.guild_id(), !spec.reply_without_ping, &mut mentions);
            }
            msg["mentions"] = Value::Array(mentions);
            st.messages.push(StoredMessage {
                id: id.clone(),
                channel_id: spec.channel_id.clone(),
                json: msg.clone(),
                bot_token: None,
                nonce_key: None,
            });
            st.broadcast_message(&msg, &channel);
            id
        })
    }

    /// Closes the token's live socket(s) abruptly: the TCP connection is dropped without a
    /// close frame (the client sees 1006). Their sessions stay resumable; dispatches from
    /// now on are kept for a RESUME. Returns how many sockets were dropped.
    pub fn drop_socket(&self, token: &str) -> usize {
        self.shared.mutate(|st| {
            let ids = st.live_conns(token);
            for id in &ids {
                st.abort(*id);
            }
            ids.len()
        })
    }

    /// Closes the token's live socket(s) with a close frame `code` (e.g. 4000 or 4009); the
    /// sessions stay resumable. Returns how many sockets were closed.
    pub fn close_socket(&self, token: &str, code: u16, reason: &str) -> usize {
        self.shared.mutate(|st| {
            let ids = st.live_conns(token);
            for id in &ids {
                st.server_close(*id, code, reason);
            }
            ids.len()
        })
    }

    /// Sends RECONNECT (op 7, `d: null`) to the token's live socket(s); the client should
    /// close and RESUME. The socket stays open until the client closes it. Returns how many
    /// sockets got it.
    pub fn send_reconnect(&self, token: &str) -> usize {
        self.shared.mutate(|st| {
            let ids = st.live_conns(token);
            for id in &ids {
                st.push(*id, Out::Text(frame(7, Value::Null)));
            }
            ids.len()
        })
    }

    /// Sends INVALID_SESSION (op 9, `d: resumable`) to the token's live socket(s). With
    /// `false` their sessions are invalidated at once and the sockets are no longer
    /// authenticated (the client may IDENTIFY again, on that socket or a new one). Returns
    /// how many sockets got it.
    pub fn send_invalid_session(&self, token: &str, resumable: bool) -> usize {
        self.shared.mutate(|st| {
            let ids = st.live_conns(token);
            for id in &ids {
                st.push(*id, Out::Text(frame(9, Value::Bool(resumable))));
                st.stats_mut(token).invalid_sessions_sent += 1;
                if !resumable {
                    if let Some(s) = st.detach(*id).and_then(|sid| st.sessions.get_mut(&sid)) {
                        s.resumable = false;
                    }
                }
            }
            ids.len()
        })
    }

    /// Sends a server-requested HEARTBEAT (op 1, `d: null`) to the token's live socket(s);
    /// the client must answer with a heartbeat (acked as usual). Returns how many sockets
    /// got it.
    pub fn request_heartbeat(&self, token: &str) -> usize {
        self.shared.mutate(|st| {
            let ids = st.live_conns(token);
            for id in &ids {
                st.push(*id, Out::Text(frame(1, Value::Null)));
            }
            ids.len()
        })
    }

    /// Stops answering heartbeats with HEARTBEAT_ACK on the token's current live socket(s)
    /// (a "zombied" connection); new connections are acked normally. Returns how many
    /// sockets are affected.
    pub fn pause_heartbeat_acks(&self, token: &str) -> usize {
        self.set_acks_paused(token, true)
    }

    /// Undoes [`FakeDiscord::pause_heartbeat_acks`] for the token's live socket(s).
    pub fn resume_heartbeat_acks(&self, token: &str) -> usize {
        self.set_acks_paused(token, false)
    }

    fn set_acks_paused(&self, token: &str, paused: bool) -> usize {
        self.shared.mutate(|st| {
            let ids = st.live_conns(token);
            for id in &ids {
                if let Some(c) = st.conns.get_mut(id) {
                    c.acks_paused = paused;
                }
            }
            ids.len()
        })
    }

    /// All counters of one bot.
    pub fn stats(&self, token: &str) -> BotStats {
        self.shared.with(|st| st.stats_of(token))
    }

    /// Sockets open right now and authenticated with `token`.
    pub fn live_sessions(&self, token: &str) -> usize {
        self.shared.with(|st| st.live_count(token, None))
    }

    /// See [`BotStats::max_live_sessions`].
    pub fn max_live_sessions(&self, token: &str) -> usize {
        self.stats(token).max_live_sessions
    }

    /// IDENTIFY payloads received with `token` (accepted or rejected).
    pub fn identify_count(&self, token: &str) -> usize {
        self.stats(token).identify_count
    }

    /// RESUME payloads received with `token` (accepted or rejected); see
    /// [`BotStats::resumed_count`] for the successful ones.
    pub fn resume_count(&self, token: &str) -> usize {
        self.stats(token).resume_count
    }

    /// Sockets that authenticated with `token` (READY or RESUMED sent).
    pub fn connection_count(&self, token: &str) -> usize {
        self.stats(token).connection_count
    }

    /// Overlapping IDENTIFY/RESUME attempts rejected so far, all bots.
    pub fn violations(&self) -> usize {
        self.shared.with(|st| st.violations.len())
    }

    /// The details of every [`Violation`], in order.
    pub fn violation_details(&self) -> Vec<Violation> {
        self.shared.with(|st| st.violations.clone())
    }

    /// Every ended gateway connection, in order.
    pub fn close_log(&self) -> Vec<CloseEvent> {
        self.shared.with(|st| st.closes.clone())
    }

    /// Every payload gateway clients sent, in arrival order.
    pub fn gateway_frames(&self) -> Vec<GatewayFrame> {
        self.shared.with(|st| st.frames.clone())
    }

    /// The raw query string of every gateway connection, in order (e.g.
    /// `v=10&encoding=json`).
    pub fn gateway_queries(&self) -> Vec<String> {
        self.shared.with(|st| st.queries.clone())
    }

    /// Every HTTP request (except WebSocket upgrades), in arrival order.
    pub fn requests(&self) -> Vec<RestRequest> {
        self.shared.with(|st| st.requests.clone())
    }

    /// Every message of a channel (users' and bots'), oldest first, as REST `APIMessage`s.
    pub fn messages(&self, channel_id: &str) -> Vec<Value> {
        self.shared
            .with(|st| st.messages.iter().filter(|m| m.channel_id == channel_id).map(|m| m.json.clone()).collect())
    }

    /// Messages bots created in a channel through `POST /channels/{id}/messages`, oldest
    /// first, as the `APIMessage`s the API returned.
    pub fn bot_messages(&self, channel_id: &str) -> Vec<Value> {
        self.shared.with(|st| {
            st.messages
                .iter()
                .filter(|m| m.channel_id == channel_id && m.bot_token.is_some())
                .map(|m| m.json.clone())
                .collect()
        })
    }

    /// One stored message by id.
    pub fn message(&self, message_id: &str) -> Option<Value> {
        self.shared.with(|st| st.messages.iter().find(|m| m.id == message_id).map(|m| m.json.clone()))
    }

    /// A human-readable dump of the counters, sessions, connections and channels.
    pub fn summary(&self) -> String {
        self.shared.with(State::summary)
    }

    /// Waits until `pred(self)` holds, re-checking after every state change (no polling).
    pub async fn wait_for(
        &self,
        timeout: Duration,
        mut pred: impl FnMut(&FakeDiscord) -> bool,
    ) -> Result<(), WaitTimeout> {
        self.wait_until("a condition".into(), timeout, |f| pred(f).then_some(())).await
    }

    /// Waits until bots have created at least `n` messages in `channel_id` through REST;
    /// returns all of them (oldest first).
    pub async fn wait_bot_messages(
        &self,
        channel_id: &str,
        n: usize,
        timeout: Duration,
    ) -> Result<Vec<Value>, WaitTimeout> {
        self.wait_until(format!("{n} bot message(s) in channel {channel_id}"), timeout, |f| {
            let m = f.bot_messages(channel_id);
            (m.len() >= n).then_some(m)
        })
        .await
    }

    /// Waits until exactly `n` sockets are live for `token`.
    pub async fn wait_live_sessions(&self, token: &str, n: usize, timeout: Duration) -> Result<(), WaitTimeout> {
        self.wait_until(format!("{n} live session(s) for {token}"), timeout, |f| {
            (f.live_sessions(token) == n).then_some(())
        })
        .await
    }

    /// Waits until at least `n` sockets authenticated with `token` in total.
    pub async fn wait_connection_count(&self, token: &str, n: usize, timeout: Duration) -> Result<(), WaitTimeout> {
        self.wait_until(format!("{n} authenticated connection(s) for {token}"), timeout, |f| {
            (f.connection_count(token) >= n).then_some(())
        })
        .await
    }

    /// Waits until at least `n` RESUME payloads arrived with `token`.
    pub async fn wait_resume_count(&self, token: &str, n: usize, timeout: Duration) -> Result<(), WaitTimeout> {
        self.wait_until(format!("{n} RESUME(s) for {token}"), timeout, |f| (f.resume_count(token) >= n).then_some(()))
            .await
    }

    /// Waits until at least `n` RESUMEs of `token` were answered with RESUMED.
    pub async fn wait_resumed(&self, token: &str, n: usize, timeout: Duration) -> Result<(), WaitTimeout> {
        self.wait_until(format!("{n} successful RESUME(s) for {token}"), timeout, |f| {
            (f.stats(token).resumed_count >= n).then_some(())
        })
        .await
    }

    async fn wait_until<T>(
        &self,
        what: String,
        timeout: Duration,
        mut check: impl FnMut(&FakeDiscord) -> Option<T>,
    ) -> Result<T, WaitTimeout> {
        let deadline = Instant::now() + timeout;
        let mut rx = self.shared.changed.subscribe();
        loop {
            rx.borrow_and_update();
            if let Some(v) = check(self) {
                return Ok(v);
            }
            // The sender lives in `self.shared`: `changed` cannot fail while we wait.
            if tokio::time::timeout_at(deadline, rx.changed()).await.is_err() {
                if let Some(v) = check(self) {
                    return Ok(v);
                }
                return Err(WaitTimeout { what, timeout, state: self.summary() });
            }
        }
    }
}

/// Turns `msg` into a reply (`type: 19`) to `referenced`.
fn make_reply(msg: &mut Value, mut referenced: Value, guild_id: Option<&str>, ping: bool, mentions: &mut Vec<Value>) {
    if let Some(o) = referenced.as_object_mut() {
        o.remove("referenced_message");
    }
    let mut reference = json!({
        "type": 0,
        "message_id": referenced["id"],
        "channel_id": referenced["channel_id"],
    });
    if let Some(g) = guild_id {
        reference["guild_id"] = json!(g);
    }
    let author = referenced["author"].clone();
    if ping && !mentions.iter().any(|m| m["id"] == author["id"]) {
        mentions.push(author);
    }
    msg["type"] = json!(19);
    msg["message_reference"] = reference;
    msg["referenced_message"] = referenced;
}

// ---------------------------------------------------------------------------------------
// Gateway
// ---------------------------------------------------------------------------------------

async fn ws_route(AxState(shared): AxState<Arc<Shared>>, RawQuery(query): RawQuery, ws: WebSocketUpgrade) -> Response {
    ws.on_upgrade(move |socket| async move {
        let stop = shared.stop.clone();
        tokio::select! {
            _ = stop.cancelled() => {}
            _ = run_conn(shared, socket, query.unwrap_or_default()) => {}
        }
    })
}

async fn sleep_opt(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

async fn drain(socket: &mut WebSocket) {
    let _ =
        tokio::time::timeout(Duration::from_secs(1), async { while let Some(Ok(_)) = socket.recv().await {} }).await;
}

async fn run_conn(shared: Arc<Shared>, mut socket: WebSocket, query: String) {
    let (tx, mut rx) = mpsc::unbounded_channel::<Out>();
    let kill = CancellationToken::new();
    let (id, interval_ms, hb_timeout) = shared.mutate(|st| {
        st.next_conn += 1;
        let id = st.next_conn;
        st.conns.insert(
            id,
            Conn {
                token: None,
                session: None,
                live: false,
                closing: false,
                acks_paused: false,
                tx: tx.clone(),
                kill: kill.clone(),
            },
        );
        st.queries.push(query.clone());
        (id, st.heartbeat_interval_ms, st.heartbeat_timeout)
    });
    let mut conn = ConnCtx { id, shared: shared.clone(), last_heartbeat: Instant::now() };
    let mut version_ok = true;
    for pair in query.split('&') {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        match k {
            "v" if v != "10" => version_ok = false,
            "encoding" if v != "json" => {
                conn.close(CLOSE_DECODE_ERROR);
            }
            _ => {}
        }
    }
    if !version_ok {
        conn.close(CLOSE_INVALID_API_VERSION);
    }
    conn.send(frame(10, json!({"heartbeat_interval": interval_ms})));
    loop {
        let hb_deadline = hb_timeout.map(|d| conn.last_heartbeat + d);
        tokio::select! {
            biased;
            _ = kill.cancelled() => break,
            out = rx.recv() => match out {
                Some(Out::Text(text)) => {
                    if socket.send(WsMessage::Text(text.into())).await.is_err() {
                        shared.mutate(|st| st.client_gone(id, CloseBy::Transport, None));
                        break;
                    }
                }
                Some(Out::Close(code, reason)) => {
                    let _ = socket.send(WsMessage::Close(Some(CloseFrame { code, reason: reason.into() }))).await;
                    drain(&mut socket).await;
                    break;
                }
                None => break,
            },
            msg = socket.recv() => match msg {
                Some(Ok(WsMessage::Text(text))) => conn.on_text(text.as_str()).await,
                Some(Ok(WsMessage::Binary(_))) => conn.close(CLOSE_DECODE_ERROR),
                Some(Ok(WsMessage::Close(close))) => {
                    shared.mutate(|st| st.client_gone(id, CloseBy::Client, close.map(|c| c.code)));
                    drain(&mut socket).await;
                    break;
                }
                Some(Ok(_)) => {}
                Some(Err(_)) | None => {
                    shared.mutate(|st| st.client_gone(id, CloseBy::Transport, None));
                    break;
                }
            },
            _ = sleep_opt(hb_deadline) => {
                conn.close(CLOSE_UNKNOWN_ERROR);
                conn.last_heartbeat = Instant::now() + Duration::from_secs(3600);
            }
        }
    }
    shared.mutate(|st| {
        st.conns.remove(&id);
    });
}

struct ConnCtx {
    id: u64,
    shared: Arc<Shared>,
    last_heartbeat: Instant,
}

struct Identify {
    bot: Bot,
    intents: u64,
}

impl ConnCtx {
    fn close(&self, (code, reason): (u16, &str)) {
        self.shared.mutate(|st| st.server_close(self.id, code, reason));
    }

    fn send(&self, text: String) {
        self.shared.with(|st| st.push(self.id, Out::Text(text)));
    }

    async fn on_text(&mut self, text: &str) {
        let (closing, live, token) = self.shared.with(|st| {
            st.conns.get(&self.id).map(|c| (c.closing, c.live, c.token.clone())).unwrap_or((true, false, None))
        });
        if closing {
            return;
        }
        let payload = match serde_json::from_str::<Value>(text) {
            Ok(v) if v.is_object() => v,
            _ => return self.close(CLOSE_DECODE_ERROR),
        };
        self.shared.mutate(|st| {
            st.frames.push(GatewayFrame {
                conn_id: self.id,
                token: if live { token.clone() } else { None },
                payload: payload.clone(),
            })
        });
        let Some(op) = payload.get("op").and_then(Value::as_u64) else {
            return self.close(CLOSE_DECODE_ERROR);
        };
        let d = payload.get("d").cloned().unwrap_or(Value::Null);
        match op {
            1 => self.heartbeat(&d),
            2 => self.identify(&d, live).await,
            6 => self.resume(&d, live).await,
            // Presence Update, Voice State Update, Request Guild Members, Request Soundboard
            // Sounds, Request Channel Info: accepted (recorded) once authenticated.
            3 | 4 | 8 | 31 | 43 => {
                if !live {
                    self.close(CLOSE_NOT_AUTHENTICATED);
                }
            }
            _ => self.close(CLOSE_UNKNOWN_OPCODE),
        }
    }

    fn heartbeat(&mut self, d: &Value) {
        if !(d.is_null() || d.is_u64()) {
            return self.close(CLOSE_DECODE_ERROR);
        }
        self.last_heartbeat = Instant::now();
        self.shared.mutate(|st| {
            let Some(c) = st.conns.get(&self.id) else { return };
            let ack = !c.acks_paused;
            let token = if c.live { c.token.clone() } else { None };
            if ack {
                st.push(self.id, Out::Text(frame(11, Value::Null)));
            }
            if let Some(t) = token {
                let s = st.stats_mut(&t);
                s.heartbeats += 1;
                if ack {
                    s.heartbeat_acks += 1;
                }
            }
        });
    }

    /// Validates an IDENTIFY's `d` (`GatewayIdentifyData`), closing on failure.
    fn parse_identify(&self, d: &Value) -> Result<Identify, (u16, &'static str)> {
        if !d.is_object() {
            return Err(CLOSE_DECODE_ERROR);
        }
        let token = d["token"].as_str().ok_or(CLOSE_DECODE_ERROR)?;
        let props = &d["properties"];
        if !["os", "browser", "device"].iter().all(|k| props[k].is_string()) {
            return Err(CLOSE_DECODE_ERROR);
        }
        if d.get("compress").is_some_and(|c| !c.is_boolean()) {
            return Err(CLOSE_DECODE_ERROR);
        }
        if d.get("large_threshold").is_some_and(|l| !l.as_u64().is_some_and(|l| (50..=250).contains(&l))) {
            return Err(CLOSE_DECODE_ERROR);
        }
        let token = token.strip_prefix("Bot ").unwrap_or(token);
        let bot = self.shared.with(|st| st.bot_by_token(token).cloned()).ok_or(CLOSE_AUTHENTICATION_FAILED)?;
        self.shared.mutate(|st| st.stats_mut(&bot.token).identify_count += 1);
        if let Some(shard) = d.get("shard") {
            if *shard != json!([0, 1]) {
                return Err(CLOSE_INVALID_SHARD);
            }
        }
        let intents = d["intents"].as_u64().ok_or(CLOSE_INVALID_INTENTS)?;
        if intents & !KNOWN_INTENTS != 0 {
            return Err(CLOSE_INVALID_INTENTS);
        }
        let allowed = self.shared.with(|st| st.allowed_intents);
        if intents & PRIVILEGED_INTENTS & !allowed != 0 {
            return Err(CLOSE_DISALLOWED_INTENTS);
        }
        Ok(Identify { bot, intents })
    }

    async fn identify(&mut self, d: &Value, live: bool) {
        if live {
            return self.close(CLOSE_ALREADY_AUTHENTICATED);
        }
        let Identify { bot, intents } = match self.parse_identify(d) {
            Ok(i) => i,
            Err(code) => return self.close(code),
        };
        self.wait_exclusive(&bot.token).await;
        let id = self.id;
        self.shared.mutate(|st| {
            if st.conns.get(&id).is_none_or(|c| c.closing) {
                return;
            }
            let others = st.live_count(&bot.token, Some(id));
            if others > 0 {
                return violation(st, id, &bot.token, "IDENTIFY", others);
            }
            let sid = random_hex();
            st.sessions.insert(
                sid.clone(),
                Session { token: bot.token.clone(), intents, seq: 0, log: Vec::new(), resumable: true, conn: Some(id) },
            );
            if let Some(c) = st.conns.get_mut(&id) {
                c.live = true;
                c.token = Some(bot.token.clone());
                c.session = Some(sid.clone());
            }
            let live_now = st.live_count(&bot.token, None);
            let s = st.stats_mut(&bot.token);
            s.ready_count += 1;
            s.connection_count += 1;
            s.max_live_sessions = s.max_live_sessions.max(live_now);
            let ready = json!({
                "v": 10,
                "user": current_user_json(&bot),
                "guilds": st.guilds.iter().map(|(g, _)| json!({"id": g, "unavailable": true})).collect::<Vec<_>>(),
                "session_id": sid,
                "resume_gateway_url": st.gateway_url,
                "shard": [0, 1],
                "application": {"id": bot.user_id, "flags": 0},
            });
            st.dispatch(&sid, "READY", ready);
            if intents & INTENT_GUILDS != 0 {
                for (g, name) in st.guilds.clone() {
                    let d = st.guild_create_json(&g, &name, &bot);
                    st.dispatch(&sid, "GUILD_CREATE", d);
                }
            }
        });
    }

    async fn resume(&mut self, d: &Value, live: bool) {
        if live {
            return self.close(CLOSE_ALREADY_AUTHENTICATED);
        }
        let (Some(token), Some(sid), Some(seq)) = (d["token"].as_str(), d["session_id"].as_str(), d["seq"].as_u64())
        else {
            return self.close(CLOSE_DECODE_ERROR);
        };
        let token = token.strip_prefix("Bot ").unwrap_or(token);
        let Some(bot) = self.shared.with(|st| st.bot_by_token(token).cloned()) else {
            return self.close(CLOSE_AUTHENTICATION_FAILED);
        };
        let id = self.id;
        let current = self.shared.mutate(|st| {
            st.stats_mut(&bot.token).resume_count += 1;
            let current = st.sessions.get(sid).filter(|s| s.token == bot.token && s.resumable).map(|s| s.seq);
            if current.is_none() {
                invalid_session(st, id, &bot.token);
            }
            current
        });
        let Some(current) = current else { return };
        if seq > current {
            return self.close(CLOSE_INVALID_SEQ);
        }
        self.wait_exclusive(&bot.token).await;
        self.shared.mutate(|st| {
            if st.conns.get(&id).is_none_or(|c| c.closing) {
                return;
            }
            if !st.sessions.get(sid).is_some_and(|s| s.token == bot.token && s.resumable) {
                return invalid_session(st, id, &bot.token);
            }
            let others = st.live_count(&bot.token, Some(id));
            if others > 0 {
                return violation(st, id, &bot.token, "RESUME", others);
            }
            let replay: Vec<String> = {
                let s = st.sessions.get_mut(sid).expect("checked above");
                s.conn = Some(id);
                s.log.iter().filter(|(s, _)| *s > seq).map(|(_, t)| t.clone()).collect()
            };
            if let Some(c) = st.conns.get_mut(&id) {
                c.live = true;
                c.token = Some(bot.token.clone());
                c.session = Some(sid.to_string());
            }
            for text in replay {
                st.push(id, Out::Text(text));
            }
            st.dispatch(sid, "RESUMED", Value::Null);
            let live_now = st.live_count(&bot.token, None);
            let s = st.stats_mut(&bot.token);
            s.resumed_count += 1;
            s.connection_count += 1;
            s.max_live_sessions = s.max_live_sessions.max(live_now);
        });
    }

    /// Waits (bounded by the overlap grace) until no other socket is live for `token`.
    async fn wait_exclusive(&self, token: &str) {
        let grace = self.shared.with(|st| st.overlap_grace);
        let deadline = Instant::now() + grace;
        let mut rx = self.shared.changed.subscribe();
        loop {
            rx.borrow_and_update();
            if self.shared.with(|st| st.live_count(token, Some(self.id))) == 0 {
                return;
            }
            if tokio::time::timeout_at(deadline, rx.changed()).await.is_err() {
                return;
            }
        }
    }
}

fn invalid_session(st: &mut State, conn_id: u64, token: &str) {
    st.push(conn_id, Out::Text(frame(9, Value::Bool(false))));
    st.stats_mut(token).invalid_sessions_sent += 1;
}

fn violation(st: &mut State, conn_id: u64, token: &str, op: &'static str, others: usize) {
    st.violations.push(Violation { token: token.to_string(), op, other_live_sessions: others, conn_id });
    let s = st.stats_mut(token);
    s.violations += 1;
    s.max_live_sessions = s.max_live_sessions.max(others + 1);
    invalid_session(st, conn_id, token);
    st.server_close(conn_id, CLOSE_ALREADY_AUTHENTICATED.0, CLOSE_ALREADY_AUTHENTICATED.1);
}

// ---------------------------------------------------------------------------------------
// HTTP API
// ---------------------------------------------------------------------------------------

struct Reply {
    status: u16,
    body: Option<Value>,
    headers: Vec<(&'static str, String)>,
    bucket: &'static str,
}

impl Reply {
    fn json(status: u16, body: Value, bucket: &'static str) -> Reply {
        Reply { status, body: Some(body), headers: Vec::new(), bucket }
    }

    fn error(status: u16, code: u64, message: &str, bucket: &'static str) -> Reply {
        Reply::json(status, json!({"message": message, "code": code}), bucket)
    }

    fn not_found() -> Reply {
        Reply::error(404, 0, "404: Not Found", "")
    }

    fn method_not_allowed() -> Reply {
        Reply::error(405, 0, "405: Method Not Allowed", "")
    }

    fn unauthorized() -> Reply {
        Reply::error(401, 0, "401: Unauthorized", "")
    }

    fn unknown_channel(bucket: &'static str) -> Reply {
        Reply::error(404, 10003, "Unknown Channel", bucket)
    }

    /// 400 `Invalid Form Body` (code 50035) with Discord's nested `errors` object.
    fn form(errors: Map<String, Value>, bucket: &'static str) -> Reply {
        Reply::json(400, json!({"code": 50035, "errors": errors, "message": "Invalid Form Body"}), bucket)
    }
}

fn field_error(code: &str, message: &str) -> Value {
    json!({"_errors": [{"code": code, "message": message}]})
}

async fn rest_route(
    AxState(shared): AxState<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri.path().to_string();
    let body_json = serde_json::from_slice::<Value>(&body).unwrap_or(Value::Null);
    let reply = shared.mutate(|st| route(st, &method, &path, uri.query(), &headers, &body));
    let recorded = RestRequest {
        method: method.to_string(),
        path,
        query: uri.query().map(str::to_string),
        headers: headers
            .iter()
            .map(|(k, v)| (k.as_str().to_string(), String::from_utf8_lossy(v.as_bytes()).into_owned()))
            .collect(),
        body: body_json,
        status: reply.status,
    };
    shared.mutate(|st| st.requests.push(recorded));
    let status = StatusCode::from_u16(reply.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut resp = match reply.body {
        Some(b) => (status, axum::Json(b)).into_response(),
        None => status.into_response(),
    };
    let h = resp.headers_mut();
    if !reply.bucket.is_empty() {
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        reply.bucket.hash(&mut hasher);
        let reset = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_secs_f64() + 1.0;
        for (k, v) in [
            ("x-ratelimit-limit", "5".to_string()),
            ("x-ratelimit-remaining", "4".to_string()),
            ("x-ratelimit-reset", format!("{reset:.3}")),
            ("x-ratelimit-reset-after", "1.000".to_string()),
            ("x-ratelimit-bucket", format!("{:016x}", hasher.finish())),
        ] {
            h.insert(HeaderName::from_static(k), HeaderValue::from_str(&v).expect("header value"));
        }
    }
    for (k, v) in reply.headers {
        h.insert(HeaderName::from_static(k), HeaderValue::from_str(&v).expect("header value"));
    }
    resp
}

fn authenticate(st: &State, headers: &HeaderMap) -> Option<Bot> {
    let auth = headers.get("authorization")?.to_str().ok()?;
    let token = auth.strip_prefix("Bot ")?;
    st.bot_by_token(token).cloned()
}

fn route(st: &mut State, method: &Method, path: &str, query: Option<&str>, headers: &HeaderMap, body: &[u8]) -> Reply {
    let Some(rest) = path.strip_prefix("/api/v10/") else {
        return Reply::not_found();
    };
    let segs: Vec<&str> = rest.trim_end_matches('/').split('/').collect();
    let bucket: &'static str = match segs.as_slice() {
        ["gateway"] => "GET /gateway",
        ["gateway", "bot"] => "GET /gateway/bot",
        ["users", "@me"] => "GET /users/@me",
        ["channels", _] => "GET /channels/{id}",
        ["channels", _, "messages"] if method == Method::GET => "GET /channels/{id}/messages",
        ["channels", _, "messages"] => "POST /channels/{id}/messages",
        ["channels", _, "messages", _] => "GET /channels/{id}/messages/{id}",
        ["channels", _, "typing"] => "POST /channels/{id}/typing",
        _ => return Reply::not_found(),
    };
    let allowed = match segs.as_slice() {
        ["channels", _, "messages"] => *method == Method::GET || *method == Method::POST,
        ["channels", _, "typing"] => *method == Method::POST,
        _ => *method == Method::GET,
    };
    if !allowed {
        return Reply::method_not_allowed();
    }
    if segs.as_slice() == ["gateway"] {
        return Reply::json(200, json!({"url": st.gateway_url}), bucket);
    }
    let Some(bot) = authenticate(st, headers) else {
        return Reply::unauthorized();
    };
    match segs.as_slice() {
        ["gateway", "bot"] => {
            let used = st.stats_of(&bot.token).identify_count;
            Reply::json(
                200,
                json!({
                    "url": st.gateway_url,
                    "shards": 1,
                    "session_start_limit": {
                        "total": 1000,
                        "remaining": 1000usize.saturating_sub(used),
                        "reset_after": 86_400_000,
                        "max_concurrency": 1,
                    },
                }),
                bucket,
            )
        }
        ["users", "@me"] => Reply::json(200, current_user_json(&bot), bucket),
        ["channels", cid] => match st.channel(cid) {
            Some(c) if can_access(c, &bot) => Reply::json(200, st.channel_json(c, false), bucket),
            Some(_) => Reply::error(403, 50001, "Missing Access", bucket),
            None => Reply::unknown_channel(bucket),
        },
        ["channels", cid, "typing"] => match st.channel(cid) {
            Some(c) if can_access(c, &bot) => Reply { status: 204, body: None, headers: Vec::new(), bucket },
            Some(_) => Reply::error(403, 50001, "Missing Access", bucket),
            None => Reply::unknown_channel(bucket),
        },
        ["channels", cid, "messages", mid] => match st.channel(cid) {
            Some(c) if can_access(c, &bot) => match st.messages.iter().find(|m| m.channel_id == *cid && m.id == *mid) {
                Some(m) => Reply::json(200, m.json.clone(), bucket),
                None => Reply::error(404, 10008, "Unknown Message", bucket),
            },
            Some(_) => Reply::error(403, 50001, "Missing Access", bucket),
            None => Reply::unknown_channel(bucket),
        },
        ["channels", cid, "messages"] if *method == Method::GET => match st.channel(cid) {
            Some(c) if can_access(c, &bot) => list_messages(st, cid, query, bucket),
            Some(_) => Reply::error(403, 50001, "Missing Access", bucket),
            None => Reply::unknown_channel(bucket),
        },
        ["channels", cid, "messages"] => create_message(st, &bot, cid, headers, body, bucket),
        _ => Reply::not_found(),
    }
}

fn can_access(c: &ChannelSpec, bot: &Bot) -> bool {
    match c {
        ChannelSpec::Dm { bot_user_id, .. } => *bot_user_id == bot.user_id,
        _ => true,
    }
}

/// `GET /channels/{id}/messages`: `limit` (1-100, default 50), `before`, `after`; newest
/// first.
fn list_messages(st: &State, channel_id: &str, query: Option<&str>, bucket: &'static str) -> Reply {
    let mut limit = 50usize;
    let mut before: Option<u64> = None;
    let mut after: Option<u64> = None;
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let parsed = v.parse::<u64>();
        match (k, parsed) {
            ("limit", Ok(n)) if (1..=100).contains(&n) => limit = n as usize,
            ("before", Ok(n)) => before = Some(n),
            ("after", Ok(n)) => after = Some(n),
            ("around", Ok(_)) => {}
            ("limit" | "before" | "after" | "around", _) => {
                let mut errors = Map::new();
                errors.insert(k.to_string(), field_error("NUMBER_TYPE_COERCE", &format!("Value \"{v}\" is not int.")));
                return Reply::form(errors, bucket);
            }
            _ => {}
        }
    }
    let list: Vec<Value> = st
        .messages
        .iter()
        .rev()
        .filter(|m| m.channel_id == channel_id)
        .filter(|m| {
            let id: u64 = m.id.parse().unwrap_or(0);
            before.is_none_or(|b| id < b) && after.is_none_or(|a| id > a)
        })
        .take(limit)
        .map(|m| m.json.clone())
        .collect();
    Reply::json(200, Value::Array(list), bucket)
}

/// `POST /channels/{id}/messages` with a `RESTPostAPIChannelMessageJSONBody`.
fn create_message(
    st: &mut State,
    bot: &Bot,
    channel_id: &str,
    headers: &HeaderMap,
    body: &[u8],
    bucket: &'static str,
) -> Reply {
    if let Some(plan) = st.fail_posts.pop_front() {
        return injected_failure(plan, bucket);
    }
    let Some(channel) = st.channel(channel_id).cloned() else {
        return Reply::unknown_channel(bucket);
    };
    if !can_access(&channel, bot) {
        return Reply::error(403, 50001, "Missing Access", bucket);
    }
    let ct = headers.get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("");
    if !ct.starts_with("application/json") {
        return Reply::error(400, 0, "FakeDiscord accepts only application/json message bodies", bucket);
    }
    let Ok(Value::Object(req)) = serde_json::from_slice::<Value>(body) else {
        return Reply::error(400, 50109, "The request body contains invalid JSON.", bucket);
    };
    let mut errors = Map::new();
    let content = match req.get("content") {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => {
            let n = s.chars().count();
            if n > MAX_CONTENT_CHARS {
                errors.insert(
                    "content".into(),
                    field_error("BASE_TYPE_MAX_LENGTH", &format!("Must be {MAX_CONTENT_CHARS} or fewer in length.")),
                );
            }
            s.clone()
        }
        Some(_) => {
            errors.insert("content".into(), field_error("STRING_TYPE_CONVERT", "Could not interpret value as string."));
            String::new()
        }
    };
    let nonce = req.get("nonce").filter(|n| !n.is_null()).cloned();
    let nonce_key = match &nonce {
        None => None,
        Some(Value::String(s)) if s.chars().count() <= 25 => Some(s.clone()),
        Some(Value::String(_)) => {
            errors.insert("nonce".into(), field_error("BASE_TYPE_MAX_LENGTH", "Must be 25 or fewer in length."));
            None
        }
        Some(Value::Number(n)) if n.is_u64() || n.is_i64() => Some(n.to_string()),
        Some(_) => {
            errors.insert("nonce".into(), field_error("NONCE_TYPE_INVALID", "Nonce must be an integer or a string."));
            None
        }
    };
    let enforce_nonce = match req.get("enforce_nonce") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => {
            errors.insert("enforce_nonce".into(), field_error("BASE_TYPE_BOOLEAN", "Must be either true or false."));
            false
        }
    };
    let tts = match req.get("tts") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => {
            errors.insert("tts".into(), field_error("BASE_TYPE_BOOLEAN", "Must be either true or false."));
            false
        }
    };
    let embeds = match req.get("embeds") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(a)) if a.len() <= 10 && a.iter().all(Value::is_object) => a.clone(),
        Some(Value::Array(a)) if a.len() > 10 => {
            errors.insert("embeds".into(), field_error("BASE_TYPE_MAX_LENGTH", "Must be 10 or fewer in length."));
            Vec::new()
        }
        Some(_) => {
            errors.insert("embeds".into(), field_error("BASE_TYPE_ARRAY", "Must be an array of embed objects."));
            Vec::new()
        }
    };
    if req.get("allowed_mentions").is_some_and(|a| !(a.is_object() || a.is_null())) {
        errors.insert("allowed_mentions".into(), field_error("MODEL_TYPE_CONVERT", "Only dictionaries may be used."));
    }
    if req.get("flags").is_some_and(|f| !(f.is_u64() || f.is_null())) {
        errors.insert("flags".into(), field_error("NUMBER_TYPE_COERCE", "Value is not int."));
    }
    // `(message id, fail_if_not_exists)` of a reply.
    let mut reference: Option<(String, bool)> = None;
    match req.get("message_reference") {
        None | Some(Value::Null) => {}
        Some(Value::Object(r)) => {
            let kind = r.get("type").and_then(Value::as_u64).unwrap_or(0);
            let fail = r.get("fail_if_not_exists").and_then(Value::as_bool).unwrap_or(true);
            match (r.get("message_id").and_then(Value::as_str), kind) {
                (_, k) if k != 0 => {
                    errors.insert(
                        "message_reference".into(),
                        field_error(
                            "MESSAGE_REFERENCE_TYPE_UNSUPPORTED",
                            "FakeDiscord supports only replies (type 0).",
                        ),
                    );
                }
                (Some(mid), _) => reference = Some((mid.to_string(), fail)),
                (None, _) => {
                    let mut inner = Map::new();
                    inner.insert("message_id".into(), field_error("BASE_TYPE_REQUIRED", "This field is required"));
                    errors.insert("message_reference".into(), Value::Object(inner));
                }
            }
            if let Some(ref_channel) = r.get("channel_id").and_then(Value::as_str) {
                if ref_channel != channel_id {
                    if let Some((_, fail)) = reference.take() {
                        if fail {
                            errors.insert(
                                "message_reference".into(),
                                field_error("MESSAGE_REFERENCE_UNKNOWN_MESSAGE", "Unknown message"),
                            );
                        }
                    }
                }
            }
        }
        Some(_) => {
            errors.insert(
                "message_reference".into(),
                field_error("MODEL_TYPE_CONVERT", "Only dictionaries may be used."),
            );
        }
    }
    let referenced = match reference {
        Some((mid, fail)) => match st.messages.iter().find(|m| m.channel_id == channel_id && m.id == mid) {
            Some(m) => Some(m.json.clone()),
            None => {
                if fail {
                    errors.insert(
                        "message_reference".into(),
                        field_error("MESSAGE_REFERENCE_UNKNOWN_MESSAGE", "Unknown message"),
                    );
                }
                None
            }
        },
        None => None,
    };
    if !errors.is_empty() {
        return Reply::form(errors, bucket);
    }
    let has_payload = !content.is_empty()
        || !embeds.is_empty()
        || req.get("sticker_ids").is_some_and(|s| s.as_array().is_some_and(|a| !a.is_empty()))
        || req.get("components").is_some_and(|s| s.as_array().is_some_and(|a| !a.is_empty()))
        || req.get("attachments").is_some_and(|s| s.as_array().is_some_and(|a| !a.is_empty()))
        || req.get("poll").is_some_and(Value::is_object);
    if !has_payload {
        return Reply::error(400, 50006, "Cannot send an empty message", bucket);
    }
    let dedupe_key = nonce_key.map(|n| (bot.token.clone(), channel_id.to_string(), n));
    if enforce_nonce {
        if let Some(key) = &dedupe_key {
            if let Some(m) = st.messages.iter().find(|m| m.nonce_key.as_ref() == Some(key)) {
                return Reply::json(200, m.json.clone(), bucket);
            }
        }
    }
    let id = st.next_snowflake();
    let mut msg = json!({
        "id": id,
        "type": 0,
        "channel_id": channel_id,
        "author": user_json(&bot.user_id, &bot.username, true),
        "content": content,
        "timestamp": now_iso(),
        "edited_timestamp": null,
        "tts": tts,
        "mention_everyone": false,
        "mention_roles": [],
        "attachments": [],
        "embeds": embeds,
        "components": [],
        "pinned": false,
        "flags": req.get("flags").and_then(Value::as_u64).unwrap_or(0),
    });
    let mut mentions = Vec::new();
    if let Some(referenced) = referenced {
        let replied_user = match req.get("allowed_mentions") {
            Some(Value::Object(a)) => a.get("replied_user").and_then(Value::as_bool).unwrap_or(false),
            _ => true,
        };
        make_reply(&mut msg, referenced, channel.guild_id(), replied_user, &mut mentions);
    }
    msg["mentions"] = Value::Array(mentions);
    if let Some(n) = nonce {
        msg["nonce"] = n;
    }
    st.messages.push(StoredMessage {
        id,
        channel_id: channel_id.to_string(),
        json: msg.clone(),
        bot_token: Some(bot.token.clone()),
        nonce_key: if enforce_nonce { dedupe_key } else { None },
    });
    st.broadcast_message(&msg, &channel);
    Reply::json(200, msg, bucket)
}

fn injected_failure(plan: FailPlan, bucket: &'static str) -> Reply {
    if plan.status == 429 {
        let secs = plan.retry_after.as_secs_f64();
        let mut r = Reply::json(
            429,
            json!({"message": "You are being rate limited.", "retry_after": secs, "global": false}),
            "",
        );
        let whole = plan.retry_after.as_secs() + u64::from(plan.retry_after.subsec_nanos() > 0);
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        bucket.hash(&mut hasher);
        r.headers = vec![
            ("retry-after", whole.to_string()),
            ("x-ratelimit-limit", "5".into()),
            ("x-ratelimit-remaining", "0".into()),
            ("x-ratelimit-reset-after", format!("{secs:.3}")),
            ("x-ratelimit-bucket", format!("{:016x}", hasher.finish())),
            ("x-ratelimit-scope", "user".into()),
        ];
        return r;
    }
    let reason = StatusCode::from_u16(plan.status).ok().and_then(|s| s.canonical_reason()).unwrap_or("Error");
    Reply::error(plan.status, 0, &format!("{}: {reason}", plan.status), bucket)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iso8601_formats_like_discord() {
        let t = UNIX_EPOCH + Duration::from_micros(1_700_000_000_123_456);
        assert_eq!(iso8601(t), "2023-11-14T22:13:20.123456+00:00");
        assert_eq!(iso8601(UNIX_EPOCH), "1970-01-01T00:00:00.000000+00:00");
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000-02-29
        assert!(iso8601(leap).starts_with("2000-02-29T00:00:00"));
    }

    #[test]
    fn snowflakes_increase_and_encode_time() {
        let mut st = State::new("ws://x".into());
        let a: u64 = st.next_snowflake().parse().unwrap();
        let b: u64 = st.next_snowflake().parse().unwrap();
        assert!(b > a);
        let ms = (a >> 22) + DISCORD_EPOCH_MS;
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as u64;
        assert!(now.abs_diff(ms) < 60_000);
    }
}
