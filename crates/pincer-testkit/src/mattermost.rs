//! [`FakeMattermost`]: a strict, wire-level fake of a Mattermost server — HTTP API v4 and the
//! WebSocket event stream — on one loopback port, for end-to-end tests of a Mattermost channel
//! adapter.
//!
//! Payload shapes follow Mattermost's official TypeScript types: the npm package
//! `@mattermost/types` (`UserProfile` in `users.d.ts`, `Channel` in `channels.d.ts`, `Team` in
//! `teams.d.ts`, `Post` in `posts.d.ts`) and, for the WebSocket protocol, `@mattermost/client`
//! (`websocket_message.d.ts`: `BaseWebSocketMessage`, `WebSocketBroadcast`;
//! `websocket_messages.d.ts`: `Hello`, `Posted`). Behaviour the types do not describe follows the
//! Mattermost server (v9-v11: `api4/websocket.go`, `platform/web_conn.go`, `platform/web_hub.go`,
//! `wsapi/`, `app/post.go`). Fields are snake_case as on the wire; ids are 26-character lowercase
//! alphanumeric strings ([`new_id`]); times are Unix milliseconds.
//!
//! # HTTP API (`http://127.0.0.1:<port>/api/v4`)
//!
//! Every route but `GET /system/ping` requires `Authorization: Bearer <token>` (or
//! `Token <token>`, either case) of a bot added with [`FakeMattermost::add_bot`]; otherwise 401
//! `api.context.session_expired.app_error`. Errors are Mattermost `AppError`s:
//! `{"id", "message", "detailed_error", "request_id", "status_code"}`. Routes:
//!
//! - `GET /system/ping` → `{"status": "OK"}` (no authentication).
//! - `GET /users/me`, `GET /users/{user_id}` → `UserProfile` (404 `app.user.missing_account.const`).
//! - `POST /users/{user_id}/typing` with `{channel_id, parent_id?}` → `{"status": "OK"}`; the user
//!   must be the caller (`me` allowed) and a member of the channel (else 403). Recorded as a
//!   [`TypingCall`] and broadcast as a `typing` event to the channel's other members.
//! - `GET /channels/{channel_id}` → `Channel` (404 `app.channel.get.existing.app_error`).
//! - `GET /teams/{team_id}` → `Team` (403 for non-members, 404 `app.team.get.find.app_error`).
//! - `GET /posts/{post_id}` → `Post` (404 `app.post.get.app_error`).
//! - `POST /posts` with `{channel_id, message, root_id?, props?, pending_post_id?, type?}` → 201
//!   and the created `Post`, broadcast as `posted`. Validated like the server: the bot must be a
//!   member of the channel (403 `api.context.permissions.app_error`, also for an unknown
//!   channel); `root_id`, if not empty, must be an existing post (400
//!   `api.post.create_post.root_id.app_error`) of the same channel (400
//!   `api.post.create_post.channel_root_id.app_error`) that is itself a root (400
//!   `api.post.create_post.root_id.app_error`); `message` must be non-empty and at most
//!   [`MAX_POST_RUNES`] characters (400 `model.post.is_valid.msg.app_error`); `type` must be
//!   empty or start with `custom_` (`system_*`: 400 `api.context.invalid_param.app_error`,
//!   others 400 `model.post.is_valid.type.app_error`); a body that is not a JSON object with
//!   string fields is 400 `api.context.invalid_body_param.app_error`.
//!
//! Reading a channel or post requires channel membership, or, for an open (`O`) channel,
//! membership of its team (Mattermost's `read_public_channel`); otherwise 403. Ids in the URL
//! must be valid ids (400 `api.context.invalid_url_param.app_error`). Unknown routes answer 404
//! `api.context.404.app_error`, known routes with another method 405 (empty body). Every
//! response carries `X-Request-Id` and `X-Version-Id`; every request, WebSocket upgrades
//! included, is recorded ([`RestRequest`]).
//!
//! # WebSocket (`ws://127.0.0.1:<port>/api/v4/websocket`)
//!
//! A socket authenticates either with the `Authorization` header of the upgrade request, or with
//! an `authentication_challenge` action (`{"seq": 1, "action": "authentication_challenge",
//! "data": {"token": "..."}}`). As on the server, an unknown header token does not refuse the
//! upgrade: the socket stays unauthenticated and may still send a challenge. A successful
//! challenge is answered, after the `hello`, with `{"status": "OK", "seq_reply": <seq>}`; a failed
//! one with `{"status": "FAIL", "seq_reply": <seq>, "error": <AppError>}`, after which the TCP
//! connection is dropped without a close frame (the real server drops it without the reply; an
//! adapter must not depend on getting it). A socket still unauthenticated after the auth timeout
//! (default [`DEFAULT_AUTH_TIMEOUT`], the server's `authCheckInterval`) is dropped the same way.
//!
//! A fresh authenticated connection gets a new connection id and first the event
//! `{"event": "hello", "data": {"server_version", "connection_id", "server_hostname"},
//! "broadcast": {...}, "seq": 0}`. Every event of a connection carries the next `seq` (0, 1, 2,
//! ...); replies to client actions (`seq_reply`) do not use sequence numbers. Events:
//!
//! - `posted` (`Posted` in `websocket_messages.d.ts`): `data` = `{channel_display_name,
//!   channel_name, channel_type, post: <the Post as a JSON *string*>, sender_name: "@<username>",
//!   set_online, team_id}` plus `mentions: "[\"<recipient id>\"]"` (a JSON-encoded array,
//!   present only when the *recipient* is mentioned: by `@username`, `@channel`/`@all`/`@here`,
//!   or by being the other member of a DM — per-recipient, like the server's `add_mentions`
//!   broadcast hook); `broadcast.channel_id` = the channel. Sent to every connection of every
//!   channel member, the author included (an adapter must ignore its own posts).
//! - `typing`: `data` = `{parent_id, user_id}`, `broadcast.omit_users` = `{<typer>: true}`.
//! - `status_change`: `data` = `{status: "online" | "offline", user_id}`, sent to the bot's own
//!   connections when it goes online (first authenticated socket) or offline (last socket gone;
//!   queued for the inactive connections, so a resume replays it).
//!
//! `broadcast` is the server's `WebsocketBroadcast`: `{omit_users, user_id, channel_id, team_id,
//! connection_id, omit_connection_id}` (the first four are `@mattermost/client`'s
//! `WebSocketBroadcast`).
//!
//! Client actions: `ping` → `{"status": "OK", "seq_reply": N, "data": {"text": "pong", "version",
//! "server_time", "node_id"}}`; `user_typing` with `{channel_id, parent_id?}` → `{"status": "OK",
//! "seq_reply": N}` (recorded and broadcast like the REST call); a missing `action`, a `seq` ≤ 0,
//! an unknown action or any action but the challenge before authenticating gets a `FAIL` reply
//! (`api.web_socket_router.{no_action,bad_seq,bad_action,not_authenticated}.app_error`). A frame
//! that is not a JSON object, or a binary frame, drops the connection (the server's read pump
//! exits). WebSocket ping frames are answered with pongs.
//!
//! **Reconnecting** (server `PopulateWebConnConfig` + `writePump`): a socket authenticated *by
//! header* whose URL carries `connection_id=<id>&sequence_number=<N>`, where `<id>` is a
//! connection of the same bot that has no socket (it waits up to the overlap grace for a
//! still-open old socket to close) and was disconnected less than the resume window ago
//! (default [`DEFAULT_RESUME_WINDOW`]), resumes that connection: if the connection's buffer of
//! the last [`DEAD_QUEUE_SIZE`] sent events holds `seq == N`, every buffered event from `N` on
//! is sent again as it was; else if the last sent event was `N - 1` (or nothing was sent) nothing
//! is replayed; otherwise events were lost and the connection gets a new id and a `hello` with
//! `seq: 0`. Then the events broadcast while it had no socket are sent (at most
//! [`SEND_QUEUE_SIZE`]; one more discards the connection). **A resumed connection gets no
//! `hello`** — as on the server, where the hub sends `hello` only when `reuseCount == 0`. An
//! unknown, expired or foreign connection id (or a challenge-authenticated socket, or an empty
//! `connection_id`) gets a fresh connection (`hello`, `seq` 0): the events are missed. An
//! invalid `connection_id` or a missing/non-integer `sequence_number` drops the socket. `N` is
//! the *next* sequence number the client expects (last received + 1), as `@mattermost/client`
//! sends it.
//!
//! **Socket counting.** Mattermost accepts any number of simultaneous sockets per token; the
//! fake accepts them too but counts them: [`BotStats::max_live_sockets`] is the most sockets of
//! one bot that were authenticated and open at once, where an older socket only counts if it is
//! still open the overlap grace (default [`DEFAULT_OVERLAP_GRACE`]) after the newer one
//! authenticated (a client that closes its old socket and at once opens a new one races the
//! fake noticing the close). Assert `max_live_sockets(token) == 1` to prove an adapter never
//! keeps two sockets.
//!
//! Test controls: [`FakeMattermost::user_post`], [`FakeMattermost::replay_event`],
//! [`FakeMattermost::drop_socket`], [`FakeMattermost::close_socket`],
//! [`FakeMattermost::go_silent`] (a dead socket: TCP stays open, nothing is written any more —
//! events, replies and pongs vanish, though events still get sequence numbers and enter the
//! replay buffer), [`FakeMattermost::fail_auth_next`]. Waiters re-check after every state change
//! (a `watch` channel, no polling) and fail with a [`WaitTimeout`] that dumps the state.

use axum::body::Bytes;
use axum::extract::connect_info::{ConnectInfo, Connected};
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{CloseFrame, Message as WsMessage, WebSocket, WebSocketUpgrade};
use axum::extract::State as AxState;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use axum::serve::{IncomingStream, Listener};
use axum::Router;
use serde_json::{json, Map, Value};
use std::collections::hash_map::RandomState;
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::fmt;
use std::hash::{BuildHasher, Hash, Hasher};
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// The server version string of `hello` (`data.server_version`) and of the `X-Version-Id`
/// header: `<version>.<build number>.<client config hash>.<enterprise>`, like the server's.
pub const SERVER_VERSION: &str = "9.11.0.9.11.0.3f1e5c7a9b2d4f6e8a0c2e4f6a8b0d2f.false";

/// The plain server version (`data.version` of a `ping` reply).
pub const VERSION: &str = "9.11.0";

/// `data.server_hostname` of `hello`.
pub const SERVER_HOSTNAME: &str = "fake-mattermost";

/// Maximum `message` length of a post, in characters (Unicode scalar values): the server's
/// `PostMessageMaxRunesV2` (65535 / 4).
pub const MAX_POST_RUNES: usize = 16383;

/// How many sent events a connection keeps for replay (the server's `deadQueueSize`).
pub const DEAD_QUEUE_SIZE: usize = 128;

/// How many events a connection without a socket queues before it is discarded (the server's
/// `sendQueueSize`).
pub const SEND_QUEUE_SIZE: usize = 256;

/// Default resume window: how long a disconnected connection can be resumed (the server's
/// `inactiveConnReaperInterval`, 5 minutes).
pub const DEFAULT_RESUME_WINDOW: Duration = Duration::from_secs(300);

/// Default time an unauthenticated socket is kept open (the server's `authCheckInterval`, 5 s).
pub const DEFAULT_AUTH_TIMEOUT: Duration = Duration::from_secs(5);

/// Default overlap grace, see [`FakeMattermost::set_overlap_grace`].
pub const DEFAULT_OVERLAP_GRACE: Duration = Duration::from_secs(1);

const WS_PATH: &str = "/api/v4/websocket";

/// The alphabet of Mattermost's `NewId` (base32 with a custom alphabet).
const ID_ALPHABET: &[u8; 32] = b"ybndrfg8ejkmcpqxot1uwisza345h769";

/// A new random id shaped like Mattermost's `model.NewId()`: 26 characters of
/// `[a-z0-9]` (128 random bits, base32 with Mattermost's alphabet).
pub fn new_id() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let mut bytes = [0u8; 16];
    for (i, chunk) in bytes.chunks_mut(8).enumerate() {
        let mut h = RandomState::new().build_hasher();
        (n, i).hash(&mut h);
        SystemTime::now().hash(&mut h);
        chunk.copy_from_slice(&h.finish().to_le_bytes());
    }
    let v = u128::from_be_bytes(bytes);
    (0..26i32)
        .map(|i| {
            let shift = 128 - 5 * (i + 1);
            let idx = if shift >= 0 { (v >> shift) & 31 } else { (v << -shift) & 31 };
            ID_ALPHABET[idx as usize] as char
        })
        .collect()
}

/// Whether `s` is a valid Mattermost id as the server checks it (`model.IsValidId`): 26
/// ASCII letters or digits.
pub fn is_valid_id(s: &str) -> bool {
    s.len() == 26 && s.bytes().all(|b| b.is_ascii_alphanumeric())
}

/// Whether `s` looks like an id [`new_id`] makes: 26 characters of `[a-z0-9]`. The fake's test
/// controls require this for the ids they register.
fn is_lower_id(s: &str) -> bool {
    s.len() == 26 && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
}

fn assert_id(what: &str, id: &str) {
    assert!(
        is_lower_id(id),
        "FakeMattermost: {what} {id:?} is not a 26-character [a-z0-9] id (use mattermost::new_id())"
    );
}

// ---------------------------------------------------------------------------------------
// Public specs and records
// ---------------------------------------------------------------------------------------

/// A channel's type, `ChannelType` in `channels.d.ts` (`"threads"` is a client-only value).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ChannelType {
    /// `"O"`: a public channel of a team.
    Open,
    /// `"P"`: a private channel of a team.
    Private,
    /// `"D"`: a direct-message channel between two users (no team).
    Direct,
    /// `"G"`: a group-message channel (no team).
    Group,
}

impl ChannelType {
    /// The wire value: `"O"`, `"P"`, `"D"` or `"G"`.
    pub fn as_str(self) -> &'static str {
        match self {
            ChannelType::Open => "O",
            ChannelType::Private => "P",
            ChannelType::Direct => "D",
            ChannelType::Group => "G",
        }
    }
}

/// A team registered with [`FakeMattermost::add_team`], served as a `Team` (`teams.d.ts`,
/// `type: "O"`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TeamSpec {
    /// Team id (26-char id).
    pub id: String,
    /// URL name, e.g. `"pincer"`.
    pub name: String,
    /// Display name.
    pub display_name: String,
    /// User ids of the members (members may read the team's open channels and
    /// `GET /teams/{id}`).
    pub members: Vec<String>,
}

impl TeamSpec {
    /// A team without members.
    pub fn new(id: impl Into<String>, name: impl Into<String>, display_name: impl Into<String>) -> Self {
        TeamSpec { id: id.into(), name: name.into(), display_name: display_name.into(), members: Vec::new() }
    }

    /// Adds members.
    pub fn members<I: IntoIterator<Item = S>, S: Into<String>>(mut self, ids: I) -> Self {
        self.members.extend(ids.into_iter().map(Into::into));
        self
    }
}

/// A channel registered with [`FakeMattermost::add_channel`], served as a `Channel`
/// (`channels.d.ts`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChannelSpec {
    /// Channel id (26-char id).
    pub id: String,
    /// Team id; empty for `D` and `G` channels.
    pub team_id: String,
    /// The channel type.
    pub channel_type: ChannelType,
    /// Channel name: the URL name for `O`/`P` (e.g. `"town-square"`), `"<id1>__<id2>"` (sorted
    /// user ids) for `D`.
    pub name: String,
    /// Display name (`""` for `D`).
    pub display_name: String,
    /// User ids of the members (bots included). Only members get the channel's events and may
    /// post in it.
    pub members: Vec<String>,
}

impl ChannelSpec {
    /// A public (`O`) channel of `team_id`, without members.
    pub fn open(
        id: impl Into<String>,
        team_id: impl Into<String>,
        name: impl Into<String>,
        display_name: impl Into<String>,
    ) -> Self {
        ChannelSpec {
            id: id.into(),
            team_id: team_id.into(),
            channel_type: ChannelType::Open,
            name: name.into(),
            display_name: display_name.into(),
            members: Vec::new(),
        }
    }

    /// A private (`P`) channel of `team_id`, without members.
    pub fn private(
        id: impl Into<String>,
        team_id: impl Into<String>,
        name: impl Into<String>,
        display_name: impl Into<String>,
    ) -> Self {
        ChannelSpec { channel_type: ChannelType::Private, ..ChannelSpec::open(id, team_id, name, display_name) }
    }

    /// A direct-message (`D`) channel between `user_a` and `user_b` (both members; name
    /// `"<smaller id>__<larger id>"`, empty team and display name).
    pub fn direct(id: impl Into<String>, user_a: impl Into<String>, user_b: impl Into<String>) -> Self {
        let (a, b) = (user_a.into(), user_b.into());
        let name = if a <= b { format!("{a}__{b}") } else { format!("{b}__{a}") };
        ChannelSpec {
            id: id.into(),
            team_id: String::new(),
            channel_type: ChannelType::Direct,
            name,
            display_name: String::new(),
            members: vec![a, b],
        }
    }

    /// A group-message (`G`) channel of `members` (no team).
    pub fn group<I: IntoIterator<Item = S>, S: Into<String>>(
        id: impl Into<String>,
        name: impl Into<String>,
        display_name: impl Into<String>,
        members: I,
    ) -> Self {
        ChannelSpec {
            id: id.into(),
            team_id: String::new(),
            channel_type: ChannelType::Group,
            name: name.into(),
            display_name: display_name.into(),
            members: members.into_iter().map(Into::into).collect(),
        }
    }

    /// Adds members.
    pub fn members<I: IntoIterator<Item = S>, S: Into<String>>(mut self, ids: I) -> Self {
        self.members.extend(ids.into_iter().map(Into::into));
        self
    }
}

/// A post written by a user (or another bot), see [`FakeMattermost::user_post`].
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PostSpec {
    /// The channel (registered, with the author as a member).
    pub channel_id: String,
    /// The author's user id (registered with [`FakeMattermost::add_user`] or
    /// [`FakeMattermost::add_bot`]).
    pub user_id: String,
    /// The message (Markdown). `@username` tokens of channel members become mentions.
    pub message: String,
    /// Makes the post a reply in the thread of this root post (same channel, itself a root).
    pub root_id: Option<String>,
    /// The post's `props` (default `{}`).
    pub props: Option<Value>,
}

impl PostSpec {
    /// A root post by `user_id` in `channel_id`.
    pub fn new(channel_id: impl Into<String>, user_id: impl Into<String>, message: impl Into<String>) -> Self {
        PostSpec {
            channel_id: channel_id.into(),
            user_id: user_id.into(),
            message: message.into(),
            ..Default::default()
        }
    }

    /// Makes it a reply in the thread of `root_id`.
    pub fn reply_to(mut self, root_id: impl Into<String>) -> Self {
        self.root_id = Some(root_id.into());
        self
    }

    /// Sets `props`.
    pub fn props(mut self, props: Value) -> Self {
        self.props = Some(props);
        self
    }
}

/// Per-bot counters, see [`FakeMattermost::stats`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BotStats {
    /// Sockets open right now and authenticated with this bot's token (a silent socket counts
    /// until it is closed).
    pub live_sockets: usize,
    /// The most sockets live at once, see the module docs ("Socket counting").
    pub max_live_sockets: usize,
    /// Sockets that authenticated (by header or challenge), in total.
    pub connections: usize,
    /// Authenticated sockets that resumed an existing connection id (no `hello`).
    pub resumed: usize,
    /// Authenticated sockets that got a new connection id and a `hello`.
    pub fresh_connection_ids: usize,
    /// Authentication attempts with this bot's token that failed
    /// ([`FakeMattermost::fail_auth_next`]).
    pub auth_failures: usize,
    /// `ping` actions received on this bot's sockets.
    pub pings_received: usize,
    /// `ping` actions answered (not counted on silent sockets).
    pub pings_answered: usize,
    /// WebSocket ping frames received on this bot's sockets.
    pub ws_pings_received: usize,
    /// WebSocket pong frames sent in answer (not counted on silent sockets).
    pub ws_pongs_sent: usize,
    /// Overlapping sockets detected (see [`Overlap`]).
    pub overlaps: usize,
}

/// Who ended a WebSocket connection, see [`SocketClose`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CloseBy {
    /// The client sent a close frame (its code, if any, is in [`SocketClose::code`]).
    Client,
    /// The server sent a close frame ([`FakeMattermost::close_socket`]).
    Server,
    /// The server dropped the TCP connection without a close frame: [`FakeMattermost::drop_socket`],
    /// a failed authentication, the auth timeout, a bad frame or bad reconnect parameters
    /// ([`SocketClose::reason`] says which).
    ServerAbort,
    /// The connection ended without a close frame from the client (EOF or I/O error).
    Transport,
}

/// One ended WebSocket connection, see [`FakeMattermost::close_log`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SocketClose {
    /// Socket id (increasing per accepted WebSocket).
    pub socket_id: u64,
    /// The bot token the socket had authenticated with, if it had.
    pub token: Option<String>,
    /// Who closed it.
    pub by: CloseBy,
    /// The close code, when a close frame carried one.
    pub code: Option<u16>,
    /// Why the server dropped it ([`CloseBy::ServerAbort`]), e.g. `"authentication failed"`.
    pub reason: Option<String>,
}

/// One text frame a WebSocket client sent, see [`FakeMattermost::ws_frames`].
#[derive(Clone, Debug, PartialEq)]
pub struct WsFrame {
    /// Socket id.
    pub socket_id: u64,
    /// The token the socket was authenticated with when the frame arrived, if any.
    pub token: Option<String>,
    /// The frame parsed as JSON (a `WebSocketRequest`: `{seq, action, data}`), or the raw text
    /// as a JSON string if it was not JSON.
    pub payload: Value,
}

/// One event written to a socket, see [`FakeMattermost::sent_events`].
#[derive(Clone, Debug, PartialEq)]
pub struct SentEvent {
    /// Socket id.
    pub socket_id: u64,
    /// The connection id the event belongs to.
    pub connection_id: String,
    /// The recipient's user id.
    pub user_id: String,
    /// The event's `seq`.
    pub seq: i64,
    /// The event name (`hello`, `posted`, ...).
    pub event: String,
    /// The whole event as sent.
    pub payload: Value,
    /// Whether this was a replay of a buffered event after a reconnect.
    pub replayed: bool,
}

/// One HTTP request as received, see [`FakeMattermost::requests`].
#[derive(Clone, Debug, PartialEq)]
pub struct RestRequest {
    /// HTTP method, e.g. `POST`.
    pub method: String,
    /// Path including `/api/v4`.
    pub path: String,
    /// Raw query string, if any.
    pub query: Option<String>,
    /// Headers, names lowercased, in arrival order.
    pub headers: Vec<(String, String)>,
    /// Body parsed as JSON (`Value::Null` if empty or not JSON).
    pub body: Value,
    /// The status the fake answered with (101 for an accepted WebSocket upgrade).
    pub status: u16,
}

impl RestRequest {
    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers.iter().find(|(k, _)| *k == name).map(|(_, v)| v.as_str())
    }
}

/// How a typing indicator was sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TypingVia {
    /// `POST /api/v4/users/{user_id}/typing`.
    Rest,
    /// The `user_typing` WebSocket action.
    WebSocket,
}

/// One accepted typing indicator, see [`FakeMattermost::typing_calls`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TypingCall {
    /// The typing user (the bot).
    pub user_id: String,
    /// The channel.
    pub channel_id: String,
    /// The thread's root post id, `""` if none.
    pub parent_id: String,
    /// REST or WebSocket.
    pub via: TypingVia,
}

/// A socket that authenticated while other sockets of the same bot were live and still were
/// one overlap grace later.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Overlap {
    /// The bot token.
    pub token: String,
    /// The newer socket.
    pub socket_id: u64,
    /// How many older sockets were still live.
    pub other_live_sockets: usize,
}

/// A waiter timed out. Its `Debug` and `Display` say what was awaited and dump the fake's
/// state, so `.unwrap()` in a test prints a useful message.
#[derive(Clone, PartialEq, Eq)]
pub struct WaitTimeout {
    /// What was awaited.
    pub what: String,
    /// How long it waited.
    pub timeout: Duration,
    /// [`FakeMattermost::summary`] at the time of the timeout.
    pub state: String,
}

impl fmt::Display for WaitTimeout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FakeMattermost: timed out after {:?} waiting for {}\n{}", self.timeout, self.what, self.state)
    }
}

impl fmt::Debug for WaitTimeout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl std::error::Error for WaitTimeout {}

// ---------------------------------------------------------------------------------------
// Transport: a TCP stream whose writes can be silenced (a dead socket)
// ---------------------------------------------------------------------------------------

#[derive(Debug, Default)]
struct IoCtl {
    /// Discard every write (the peer sees nothing more; reads go on).
    silent: AtomicBool,
}

struct TapStream {
    inner: TcpStream,
    ctl: Arc<IoCtl>,
}

impl AsyncRead for TapStream {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for TapStream {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        if self.ctl.silent.load(Ordering::SeqCst) {
            return Poll::Ready(Ok(buf.len()));
        }
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.ctl.silent.load(Ordering::SeqCst) {
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// The accepting side: every TCP connection gets an [`IoCtl`], reachable from handlers through
/// `ConnectInfo<TcpMeta>`.
struct TapListener {
    inner: TcpListener,
}

#[derive(Clone, Debug)]
struct TcpMeta {
    #[allow(dead_code)]
    addr: SocketAddr,
    ctl: Arc<IoCtl>,
}

impl Listener for TapListener {
    type Io = TapStream;
    type Addr = TcpMeta;

    async fn accept(&mut self) -> (TapStream, TcpMeta) {
        loop {
            match self.inner.accept().await {
                Ok((inner, addr)) => {
                    let ctl = Arc::new(IoCtl::default());
                    return (TapStream { inner, ctl: ctl.clone() }, TcpMeta { addr, ctl });
                }
                // Transient accept errors (e.g. EMFILE): back off briefly, like axum does.
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            }
        }
    }

    fn local_addr(&self) -> io::Result<TcpMeta> {
        Ok(TcpMeta { addr: self.inner.local_addr()?, ctl: Arc::new(IoCtl::default()) })
    }
}

impl Connected<IncomingStream<'_, TapListener>> for TcpMeta {
    fn connect_info(stream: IncomingStream<'_, TapListener>) -> Self {
        stream.remote_addr().clone()
    }
}

// ---------------------------------------------------------------------------------------
// State
// ---------------------------------------------------------------------------------------

#[derive(Clone, Debug)]
struct Bot {
    token: String,
    user_id: String,
    username: String,
}

#[derive(Clone, Debug)]
struct User {
    id: String,
    username: String,
    is_bot: bool,
}

struct StoredPost {
    id: String,
    channel_id: String,
    root_id: String,
    user_id: String,
    /// The token of the bot that created it through REST; `None` for [`FakeMattermost::user_post`].
    bot_token: Option<String>,
    /// The `Post` JSON without `reply_count` (computed when serialized).
    json: Value,
    /// Every user id the post mentions (channel members only, author excluded).
    mentions: Vec<String>,
}

/// A server-side connection (`WebConn`), identified by its connection id; it outlives its
/// socket for the resume window.
struct WebConn {
    user_id: String,
    token: String,
    next_seq: i64,
    /// The last [`DEAD_QUEUE_SIZE`] events written: `(seq, serialized event)`.
    dead: VecDeque<(i64, String)>,
    /// Events broadcast while it had no socket (not yet sequenced).
    queued: VecDeque<Value>,
    socket: Option<u64>,
    inactive_since: Option<Instant>,
}

enum Out {
    Text(String),
    Close(u16, String),
    /// Drop the TCP connection after everything queued before it was written.
    Abort,
}

struct Sock {
    token: Option<String>,
    user_id: Option<String>,
    conn_id: Option<String>,
    /// Open and authenticated.
    live: bool,
    /// A close or abort is under way; ignore everything it still sends.
    closing: bool,
    silent: bool,
    io: Arc<IoCtl>,
    tx: mpsc::UnboundedSender<Out>,
    kill: CancellationToken,
}

struct State {
    epoch_ms: i64,
    last_ms: i64,
    /// token -> bot
    bots: BTreeMap<String, Bot>,
    users: BTreeMap<String, User>,
    teams: Vec<TeamSpec>,
    channels: Vec<ChannelSpec>,
    posts: Vec<StoredPost>,
    webconns: HashMap<String, WebConn>,
    socks: HashMap<u64, Sock>,
    stats: HashMap<String, BotStats>,
    online: HashSet<String>,
    requests: Vec<RestRequest>,
    frames: Vec<WsFrame>,
    closes: Vec<SocketClose>,
    sent: Vec<SentEvent>,
    typing: Vec<TypingCall>,
    overlaps: Vec<Overlap>,
    auth_failures: usize,
    fail_auth: usize,
    /// Overlap checks still waiting out the grace.
    pending_checks: usize,
    overlap_grace: Duration,
    auth_timeout: Duration,
    resume_window: Duration,
    next_sock: u64,
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

fn unix_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_millis() as i64
}

/// `WebsocketBroadcast` as the server serializes it.
fn broadcast_json(user_id: &str, channel_id: &str, omit_user: Option<&str>) -> Value {
    let omit = match omit_user {
        Some(u) => {
            let mut m = Map::new();
            m.insert(u.to_string(), Value::Bool(true));
            Value::Object(m)
        }
        None => Value::Null,
    };
    json!({
        "omit_users": omit,
        "user_id": user_id,
        "channel_id": channel_id,
        "team_id": "",
        "connection_id": "",
        "omit_connection_id": "",
    })
}

/// A `WebSocketEvent` without its `seq`.
fn event_json(name: &str, data: Value, broadcast: Value) -> Value {
    json!({"event": name, "data": data, "broadcast": broadcast})
}

fn hello_event(user_id: &str, connection_id: &str) -> Value {
    event_json(
        "hello",
        json!({"server_version": SERVER_VERSION, "connection_id": connection_id, "server_hostname": SERVER_HOSTNAME}),
        broadcast_json(user_id, "", None),
    )
}

fn status_event(user_id: &str, status: &str) -> Value {
    event_json("status_change", json!({"status": status, "user_id": user_id}), broadcast_json(user_id, "", None))
}

/// An `AppError` object.
fn app_error_json(status: u16, id: &str, message: &str, detailed: &str, request_id: Option<&str>) -> Value {
    let mut e = json!({"id": id, "message": message, "detailed_error": detailed});
    if let Some(r) = request_id {
        e["request_id"] = json!(r);
    }
    e["status_code"] = json!(status);
    e
}

/// `UserProfile` (`users.d.ts`) as the server sends it: the password is never sent.
fn user_json(u: &User, epoch_ms: i64) -> Value {
    json!({
        "id": u.id,
        "create_at": epoch_ms,
        "update_at": epoch_ms,
        "delete_at": 0,
        "username": u.username,
        "auth_data": "",
        "auth_service": "",
        "email": format!("{}@localhost", u.username),
        "nickname": "",
        "first_name": "",
        "last_name": "",
        "position": "",
        "roles": "system_user",
        "props": {},
        "notify_props": {
            "channel": "true",
            "comments": "never",
            "desktop": "mention",
            "desktop_sound": "true",
            "calls_desktop_sound": "true",
            "email": if u.is_bot { "false" } else { "true" },
            "first_name": "false",
            "mark_unread": "all",
            "mention_keys": "",
            "highlight_keys": "",
            "push": "mention",
            "push_status": "away",
        },
        "last_password_update": epoch_ms,
        "last_picture_update": 0,
        "locale": "en",
        "timezone": {"automaticTimezone": "", "manualTimezone": "", "useAutomaticTimezone": "true"},
        "mfa_active": false,
        "last_activity_at": 0,
        "is_bot": u.is_bot,
        "bot_description": "",
        "terms_of_service_id": "",
        "terms_of_service_create_at": 0,
        "disable_welcome_email": false,
    })
}

/// `Team` (`teams.d.ts`).
fn team_json(t: &TeamSpec, epoch_ms: i64) -> Value {
    json!({
        "id": t.id,
        "create_at": epoch_ms,
        "update_at": epoch_ms,
        "delete_at": 0,
        "display_name": t.display_name,
        "name": t.name,
        "description": "",
        "email": "",
        "type": "O",
        "company_name": "",
        "allowed_domains": "",
        "invite_id": "",
        "allow_open_invite": false,
        "scheme_id": "",
        "group_constrained": false,
        "policy_id": null,
    })
}

/// Space-separated hashtags of a message, like the server's `model.ParseHashtags`.
fn parse_hashtags(text: &str) -> String {
    let mut tags: Vec<&str> = Vec::new();
    for word in text.split_whitespace() {
        let w = word.trim_start_matches(|c: char| !(c.is_alphanumeric() || c == '#'));
        let w = w.trim_end_matches(|c: char| !c.is_alphanumeric());
        let hashes = w.len() - w.trim_start_matches('#').len();
        let w = if hashes >= 2 { &w[hashes - 1..] } else { w };
        let mut chars = w.chars();
        let valid = chars.next() == Some('#') && chars.next().is_some_and(char::is_alphabetic) && {
            let rest: Vec<char> = chars.collect();
            rest.last().is_some_and(|c| c.is_alphanumeric())
                && rest.iter().all(|c| c.is_alphanumeric() || matches!(c, '-' | '_' | '.'))
        };
        if valid {
            tags.push(w);
        }
    }
    tags.join(" ")
}

/// The `@...` words of a message, lowercased, without the `@`, each with its variants without
/// trailing punctuation (the server's `getExplicitMentions` word splitting).
fn mention_words(message: &str) -> Vec<Vec<String>> {
    message
        .split(|c: char| !(c.is_alphanumeric() || matches!(c, ':' | '.' | '-' | '_' | '@')))
        .filter_map(|w| w.strip_prefix('@'))
        .filter(|w| !w.is_empty())
        .map(|w| {
            let w = w.to_lowercase();
            let trimmed = w.trim_end_matches(['.', '-', ':', '_']).to_string();
            if trimmed != w && !trimmed.is_empty() {
                vec![w, trimmed]
            } else {
                vec![w]
            }
        })
        .collect()
}

impl State {
    fn new() -> State {
        let now = unix_ms();
        State {
            epoch_ms: now,
            last_ms: now,
            bots: BTreeMap::new(),
            users: BTreeMap::new(),
            teams: Vec::new(),
            channels: Vec::new(),
            posts: Vec::new(),
            webconns: HashMap::new(),
            socks: HashMap::new(),
            stats: HashMap::new(),
            online: HashSet::new(),
            requests: Vec::new(),
            frames: Vec::new(),
            closes: Vec::new(),
            sent: Vec::new(),
            typing: Vec::new(),
            overlaps: Vec::new(),
            auth_failures: 0,
            fail_auth: 0,
            pending_checks: 0,
            overlap_grace: DEFAULT_OVERLAP_GRACE,
            auth_timeout: DEFAULT_AUTH_TIMEOUT,
            resume_window: DEFAULT_RESUME_WINDOW,
            next_sock: 0,
        }
    }

    /// Current Unix milliseconds, strictly increasing across calls (posts sort by `create_at`).
    fn now_ms(&mut self) -> i64 {
        let v = unix_ms().max(self.last_ms + 1);
        self.last_ms = v;
        v
    }

    fn stats_mut(&mut self, token: &str) -> &mut BotStats {
        self.stats.entry(token.to_string()).or_default()
    }

    fn stats_of(&self, token: &str) -> BotStats {
        let mut s = self.stats.get(token).cloned().unwrap_or_default();
        s.live_sockets = self.live_socks(token).len();
        s
    }

    fn live_socks(&self, token: &str) -> Vec<u64> {
        let mut v: Vec<u64> =
            self.socks.iter().filter(|(_, k)| k.live && k.token.as_deref() == Some(token)).map(|(id, _)| *id).collect();
        v.sort_unstable();
        v
    }

    fn is_live(&self, sock: u64) -> bool {
        self.socks.get(&sock).is_some_and(|k| k.live)
    }

    fn channel(&self, id: &str) -> Option<&ChannelSpec> {
        self.channels.iter().find(|c| c.id == id)
    }

    fn can_read(&self, c: &ChannelSpec, user_id: &str) -> bool {
        c.members.iter().any(|m| m == user_id)
            || (c.channel_type == ChannelType::Open
                && self.teams.iter().any(|t| t.id == c.team_id && t.members.iter().any(|m| m == user_id)))
    }

    fn username(&self, user_id: &str) -> String {
        self.users.get(user_id).map(|u| u.username.clone()).unwrap_or_else(|| user_id.to_string())
    }

    fn auth_failed(&mut self, token: Option<&str>) {
        self.auth_failures += 1;
        if let Some(t) = token {
            if self.bots.contains_key(t) {
                self.stats_mut(t).auth_failures += 1;
            }
        }
    }

    /// Resolves an authentication attempt with `token`, consuming a
    /// [`FakeMattermost::fail_auth_next`]; records failures.
    fn try_auth(&mut self, token: &str) -> Option<Bot> {
        if self.fail_auth > 0 {
            self.fail_auth -= 1;
            self.auth_failed(Some(token));
            return None;
        }
        match self.bots.get(token).cloned() {
            Some(b) => Some(b),
            None => {
                self.auth_failed(Some(token));
                None
            }
        }
    }

    /// Forgets disconnected connections older than the resume window.
    fn reap(&mut self) {
        let window = self.resume_window;
        self.webconns.retain(|_, w| w.socket.is_some() || w.inactive_since.is_none_or(|t| t.elapsed() <= window));
    }

    /// Sends a reply (not an event) to a socket, unless it is closing or silent.
    fn reply(&self, sock: u64, v: Value) -> bool {
        match self.socks.get(&sock) {
            Some(k) if !k.closing && !k.silent => k.tx.send(Out::Text(v.to_string())).is_ok(),
            _ => false,
        }
    }

    /// Delivers an event to a connection: written with the next `seq` if it has a socket, else
    /// queued (a full queue discards the connection).
    fn deliver(&mut self, conn_id: &str, event: Value) {
        let Some(wc) = self.webconns.get_mut(conn_id) else { return };
        let target = wc.socket.filter(|s| self.socks.get(s).is_some_and(|k| k.live && !k.closing));
        let Some(sock) = target else {
            if wc.queued.len() >= SEND_QUEUE_SIZE {
                self.webconns.remove(conn_id);
            } else {
                wc.queued.push_back(event);
            }
            return;
        };
        let seq = wc.next_seq;
        wc.next_seq += 1;
        let mut ev = event;
        ev["seq"] = json!(seq);
        let text = ev.to_string();
        wc.dead.push_back((seq, text.clone()));
        if wc.dead.len() > DEAD_QUEUE_SIZE {
            wc.dead.pop_front();
        }
        let user_id = wc.user_id.clone();
        if let Some(k) = self.socks.get(&sock) {
            let _ = k.tx.send(Out::Text(text));
        }
        let name = ev["event"].as_str().unwrap_or("").to_string();
        self.sent.push(SentEvent {
            socket_id: sock,
            connection_id: conn_id.to_string(),
            user_id,
            seq,
            event: name,
            payload: ev,
            replayed: false,
        });
    }

    fn conns_of_user(&self, user_id: &str) -> Vec<String> {
        let mut v: Vec<String> =
            self.webconns.iter().filter(|(_, w)| w.user_id == user_id).map(|(k, _)| k.clone()).collect();
        v.sort();
        v
    }

    fn broadcast_user(&mut self, user_id: &str, event: Value) {
        self.reap();
        for cid in self.conns_of_user(user_id) {
            self.deliver(&cid, event.clone());
        }
    }

    /// Delivers `make(recipient)` to every connection of every member of the channel except
    /// `omit`; returns how many connections got it.
    fn broadcast_channel(&mut self, channel_id: &str, omit: Option<&str>, make: impl Fn(&str) -> Value) -> usize {
        self.reap();
        let Some(channel) = self.channel(channel_id) else { return 0 };
        let members = channel.members.clone();
        let mut targets: Vec<(String, String)> = self
            .webconns
            .iter()
            .filter(|(_, w)| members.contains(&w.user_id) && Some(w.user_id.as_str()) != omit)
            .map(|(k, w)| (k.clone(), w.user_id.clone()))
            .collect();
        targets.sort();
        for (cid, uid) in &targets {
            let ev = make(uid);
            self.deliver(cid, ev);
        }
        targets.len()
    }

    fn set_online(&mut self, user_id: &str) {
        if self.online.insert(user_id.to_string()) {
            self.broadcast_user(user_id, status_event(user_id, "online"));
        }
    }

    fn maybe_offline(&mut self, user_id: &str) {
        let still = self.socks.values().any(|k| k.live && k.user_id.as_deref() == Some(user_id));
        if !still && self.online.remove(user_id) {
            self.broadcast_user(user_id, status_event(user_id, "offline"));
        }
    }

    fn mark_live(&mut self, sock: u64, bot: &Bot, conn_id: &str) {
        if let Some(k) = self.socks.get_mut(&sock) {
            k.token = Some(bot.token.clone());
            k.user_id = Some(bot.user_id.clone());
            k.conn_id = Some(conn_id.to_string());
            k.live = true;
        }
        let s = self.stats_mut(&bot.token);
        s.max_live_sockets = s.max_live_sockets.max(1);
    }

    /// A fresh connection: new id, `hello` (seq 0), then the challenge's OK reply if any, then
    /// `status_change` if the bot was offline.
    fn attach_fresh(&mut self, sock: u64, bot: &Bot, challenge_seq: Option<i64>) {
        if self.socks.get(&sock).is_none_or(|k| k.closing) {
            return;
        }
        let cid = new_id();
        self.webconns.insert(
            cid.clone(),
            WebConn {
                user_id: bot.user_id.clone(),
                token: bot.token.clone(),
                next_seq: 0,
                dead: VecDeque::new(),
                queued: VecDeque::new(),
                socket: Some(sock),
                inactive_since: None,
            },
        );
        self.mark_live(sock, bot, &cid);
        self.deliver(&cid, hello_event(&bot.user_id, &cid));
        if let Some(seq) = challenge_seq {
            self.reply(sock, json!({"status": "OK", "seq_reply": seq}));
        }
        let s = self.stats_mut(&bot.token);
        s.connections += 1;
        s.fresh_connection_ids += 1;
        self.set_online(&bot.user_id);
    }

    /// A header-authenticated socket asking to resume `conn_id` from sequence number `seq`.
    fn attach_resume(&mut self, sock: u64, bot: &Bot, conn_id: &str, seq: i64) {
        if self.socks.get(&sock).is_none_or(|k| k.closing) {
            return;
        }
        self.reap();
        let found = self.webconns.get(conn_id).is_some_and(|w| w.user_id == bot.user_id && w.socket.is_none());
        if !found {
            return self.attach_fresh(sock, bot, None);
        }
        let mut cid = conn_id.to_string();
        let (replay, lost) = {
            let wc = self.webconns.get_mut(conn_id).expect("checked above");
            wc.socket = Some(sock);
            wc.inactive_since = None;
            if let Some(i) = wc.dead.iter().position(|(s, _)| *s == seq) {
                let replay: Vec<(i64, String)> = wc.dead.iter().skip(i).cloned().collect();
                wc.next_seq = replay.last().map(|(s, _)| s + 1).unwrap_or(seq);
                (replay, false)
            } else if wc.dead.back().is_some_and(|(s, _)| *s != seq - 1) {
                wc.dead.clear();
                wc.next_seq = 0;
                (Vec::new(), true)
            } else {
                wc.next_seq = seq;
                (Vec::new(), false)
            }
        };
        if lost {
            let wc = self.webconns.remove(conn_id).expect("checked above");
            cid = new_id();
            self.webconns.insert(cid.clone(), wc);
        }
        self.mark_live(sock, bot, &cid);
        if lost {
            self.deliver(&cid, hello_event(&bot.user_id, &cid));
        }
        for (s, text) in replay {
            if let Some(k) = self.socks.get(&sock) {
                let _ = k.tx.send(Out::Text(text.clone()));
            }
            let payload: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
            self.sent.push(SentEvent {
                socket_id: sock,
                connection_id: cid.clone(),
                user_id: bot.user_id.clone(),
                seq: s,
                event: payload["event"].as_str().unwrap_or("").to_string(),
                payload,
                replayed: true,
            });
        }
        let queued: Vec<Value> = self.webconns.get_mut(&cid).map(|w| w.queued.drain(..).collect()).unwrap_or_default();
        for ev in queued {
            self.deliver(&cid, ev);
        }
        let s = self.stats_mut(&bot.token);
        s.connections += 1;
        if lost {
            s.fresh_connection_ids += 1;
        } else {
            s.resumed += 1;
        }
        self.set_online(&bot.user_id);
    }

    /// Marks a socket not live and detaches it from its connection.
    fn detach(&mut self, sock: u64) {
        let Some(k) = self.socks.get_mut(&sock) else { return };
        let was_live = k.live;
        k.live = false;
        let cid = k.conn_id.take();
        let uid = k.user_id.clone();
        if let Some(cid) = cid {
            if let Some(w) = self.webconns.get_mut(&cid) {
                if w.socket == Some(sock) {
                    w.socket = None;
                    w.inactive_since = Some(Instant::now());
                }
            }
        }
        if was_live {
            if let Some(uid) = uid {
                self.maybe_offline(&uid);
            }
        }
    }

    /// Starts closing a socket (idempotent); records it; returns false if it already was.
    fn begin_close(&mut self, sock: u64, by: CloseBy, code: Option<u16>, reason: Option<&str>) -> bool {
        let Some(k) = self.socks.get(&sock) else { return false };
        if k.closing {
            return false;
        }
        let token = k.token.clone();
        self.detach(sock);
        if let Some(k) = self.socks.get_mut(&sock) {
            k.closing = true;
        }
        self.closes.push(SocketClose { socket_id: sock, token, by, code, reason: reason.map(str::to_string) });
        true
    }

    /// Drops the TCP connection now, without a close frame.
    fn abort_now(&mut self, sock: u64, reason: &str) {
        if self.begin_close(sock, CloseBy::ServerAbort, None, Some(reason)) {
            if let Some(k) = self.socks.get(&sock) {
                k.kill.cancel();
            }
        }
    }

    /// Drops the TCP connection after what is already queued for it was written.
    fn abort_after_flush(&mut self, sock: u64, reason: &str) {
        if self.begin_close(sock, CloseBy::ServerAbort, None, Some(reason)) {
            if let Some(k) = self.socks.get(&sock) {
                let _ = k.tx.send(Out::Abort);
            }
        }
    }

    fn server_close(&mut self, sock: u64, code: u16, reason: &str) {
        if self.begin_close(sock, CloseBy::Server, Some(code), None) {
            if let Some(k) = self.socks.get(&sock) {
                let _ = k.tx.send(Out::Close(code, reason.to_string()));
            }
        }
    }

    fn post_value(&self, p: &StoredPost) -> Value {
        let root = if p.root_id.is_empty() { &p.id } else { &p.root_id };
        let count = self.posts.iter().filter(|q| q.root_id == *root).count();
        let mut v = p.json.clone();
        v["reply_count"] = json!(count);
        v
    }

    fn channel_json(&self, c: &ChannelSpec) -> Value {
        let posts: Vec<&StoredPost> = self.posts.iter().filter(|p| p.channel_id == c.id).collect();
        let last = posts.iter().map(|p| p.json["create_at"].as_i64().unwrap_or(0)).max().unwrap_or(0);
        let roots: Vec<&&StoredPost> = posts.iter().filter(|p| p.root_id.is_empty()).collect();
        let last_root = roots.iter().map(|p| p.json["create_at"].as_i64().unwrap_or(0)).max().unwrap_or(0);
        json!({
            "id": c.id,
            "create_at": self.epoch_ms,
            "update_at": self.epoch_ms,
            "delete_at": 0,
            "team_id": c.team_id,
            "type": c.channel_type.as_str(),
            "display_name": c.display_name,
            "name": c.name,
            "header": "",
            "purpose": "",
            "last_post_at": last,
            "last_root_post_at": last_root,
            "total_msg_count": posts.len(),
            "total_msg_count_root": roots.len(),
            "extra_update_at": 0,
            "creator_id": "",
            "scheme_id": "",
            "group_constrained": false,
            "shared": false,
        })
    }

    /// Mentioned channel members (author excluded), in order of appearance; the other member of
    /// a DM is always mentioned.
    fn compute_mentions(&self, c: &ChannelSpec, author: &str, message: &str) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        let add = |id: &str, out: &mut Vec<String>| {
            if id != author && !out.iter().any(|o| o == id) {
                out.push(id.to_string());
            }
        };
        if c.channel_type == ChannelType::Direct {
            for m in &c.members {
                add(m, &mut out);
            }
        }
        for variants in mention_words(message) {
            for v in variants {
                if matches!(v.as_str(), "channel" | "all" | "here") {
                    for m in &c.members {
                        add(m, &mut out);
                    }
                    break;
                }
                let hit = c.members.iter().find(|m| self.users.get(*m).is_some_and(|u| u.username.to_lowercase() == v));
                if let Some(m) = hit {
                    add(m, &mut out);
                    break;
                }
            }
        }
        out
    }

    /// Stores a post and broadcasts `posted`; returns its id. Validation is the caller's job.
    #[allow(clippy::too_many_arguments)]
    fn create_post(
        &mut self,
        user_id: &str,
        bot_token: Option<String>,
        channel: &ChannelSpec,
        message: &str,
        root_id: &str,
        props: Value,
        pending_post_id: &str,
        post_type: &str,
    ) -> String {
        let id = new_id();
        let now = self.now_ms();
        let json = json!({
            "id": id,
            "create_at": now,
            "update_at": now,
            "edit_at": 0,
            "delete_at": 0,
            "is_pinned": false,
            "user_id": user_id,
            "channel_id": channel.id,
            "root_id": root_id,
            "original_id": "",
            "message": message,
            "type": post_type,
            "props": props,
            "hashtags": parse_hashtags(message),
            "pending_post_id": pending_post_id,
            "metadata": {},
        });
        let mentions = self.compute_mentions(channel, user_id, message);
        self.posts.push(StoredPost {
            id: id.clone(),
            channel_id: channel.id.clone(),
            root_id: root_id.to_string(),
            user_id: user_id.to_string(),
            bot_token,
            json,
            mentions,
        });
        self.broadcast_posted(&id);
        id
    }

    /// Broadcasts the `posted` event of a stored post; returns how many connections got it.
    fn broadcast_posted(&mut self, post_id: &str) -> usize {
        let Some(p) = self.posts.iter().find(|p| p.id == post_id) else { return 0 };
        let Some(channel) = self.channel(&p.channel_id).cloned() else { return 0 };
        let post = self.post_value(p).to_string();
        let sender = self.username(&p.user_id);
        let from_webhook = p.json["props"]["from_webhook"] == "true";
        let display = match channel.channel_type {
            ChannelType::Direct => format!("@{sender}"),
            _ => channel.display_name.clone(),
        };
        let data = json!({
            "channel_display_name": display,
            "channel_name": channel.name,
            "channel_type": channel.channel_type.as_str(),
            "post": post,
            "sender_name": format!("@{sender}"),
            "set_online": !from_webhook,
            "team_id": channel.team_id,
        });
        let mentions = p.mentions.clone();
        let broadcast = broadcast_json("", &channel.id, None);
        self.broadcast_channel(&channel.id, None, |uid| {
            let mut d = data.clone();
            if mentions.iter().any(|m| m == uid) {
                d["mentions"] = json!(json!([uid]).to_string());
            }
            event_json("posted", d, broadcast.clone())
        })
    }

    /// Records a typing indicator and broadcasts `typing` to the channel's other members.
    fn typing(&mut self, user_id: &str, channel_id: &str, parent_id: &str, via: TypingVia) {
        self.typing.push(TypingCall {
            user_id: user_id.to_string(),
            channel_id: channel_id.to_string(),
            parent_id: parent_id.to_string(),
            via,
        });
        let ev = event_json(
            "typing",
            json!({"parent_id": parent_id, "user_id": user_id}),
            broadcast_json("", channel_id, Some(user_id)),
        );
        self.broadcast_channel(channel_id, Some(user_id), |_| ev.clone());
    }

    fn summary(&self) -> String {
        let mut out = String::new();
        for (token, bot) in &self.bots {
            let s = self.stats_of(token);
            out.push_str(&format!(
                "  bot {} ({}, token {}): online={} live={} max_live={} connections={} resumed={} fresh_ids={} \
                 auth_failures={} pings={}/{} ws_pings={}/{} overlaps={}\n",
                bot.username,
                bot.user_id,
                token,
                self.online.contains(&bot.user_id),
                s.live_sockets,
                s.max_live_sockets,
                s.connections,
                s.resumed,
                s.fresh_connection_ids,
                s.auth_failures,
                s.pings_answered,
                s.pings_received,
                s.ws_pongs_sent,
                s.ws_pings_received,
                s.overlaps,
            ));
        }
        let mut conns: Vec<_> = self.webconns.iter().collect();
        conns.sort_by(|a, b| a.0.cmp(b.0));
        for (cid, w) in conns {
            out.push_str(&format!(
                "  connection {cid}: user={} token={} next_seq={} buffered={} queued={} socket={:?} \
                 inactive_for={:?}\n",
                w.user_id,
                w.token,
                w.next_seq,
                w.dead.len(),
                w.queued.len(),
                w.socket,
                w.inactive_since.map(|t| t.elapsed()),
            ));
        }
        let mut socks: Vec<_> = self.socks.iter().collect();
        socks.sort_by_key(|(id, _)| **id);
        for (id, k) in socks {
            out.push_str(&format!(
                "  socket {id}: token={:?} connection={:?} live={} closing={} silent={}\n",
                k.token, k.conn_id, k.live, k.closing, k.silent
            ));
        }
        for c in &self.channels {
            let total = self.posts.iter().filter(|p| p.channel_id == c.id).count();
            let by_bots = self.posts.iter().filter(|p| p.channel_id == c.id && p.bot_token.is_some()).count();
            out.push_str(&format!(
                "  channel {} ({} {}): {total} posts ({by_bots} by bots via REST), members {:?}\n",
                c.id,
                c.channel_type.as_str(),
                c.name,
                c.members
            ));
        }
        out.push_str(&format!(
            "  auth failures: {} (pending forced failures: {})\n  overlaps: {:?} (checks pending: {})\n  \
             closes: {:?}\n  typing: {}\n  requests: {}\n",
            self.auth_failures,
            self.fail_auth,
            self.overlaps,
            self.pending_checks,
            self.closes,
            self.typing.len(),
            self.requests.len()
        ));
        for r in self.requests.iter().rev().take(10).rev() {
            out.push_str(&format!("    {} {} -> {}\n", r.method, r.path, r.status));
        }
        out
    }
}

// ---------------------------------------------------------------------------------------
// FakeMattermost
// ---------------------------------------------------------------------------------------

/// The fake Mattermost server: HTTP API v4 and WebSocket on one `127.0.0.1` port. Dropping it
/// stops the server and every WebSocket task.
pub struct FakeMattermost {
    addr: SocketAddr,
    shared: Arc<Shared>,
    task: Option<JoinHandle<()>>,
}

impl fmt::Debug for FakeMattermost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FakeMattermost").field("addr", &self.addr).finish()
    }
}

impl Drop for FakeMattermost {
    fn drop(&mut self) {
        self.shared.stop.cancel();
    }
}

impl FakeMattermost {
    /// Binds `127.0.0.1:0` and serves the API under `/api/v4` and the WebSocket on
    /// `/api/v4/websocket`.
    ///
    /// # Panics
    /// If the loopback port cannot be bound.
    pub async fn start() -> FakeMattermost {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("local_addr");
        let shared = Arc::new(Shared {
            state: Mutex::new(State::new()),
            changed: watch::Sender::new(0),
            stop: CancellationToken::new(),
        });
        let app = Router::new().route(WS_PATH, any(ws_route)).fallback(rest_route).with_state(shared.clone());
        let stop = shared.stop.clone();
        let task = tokio::spawn(async move {
            let _ = axum::serve(TapListener { inner: listener }, app.into_make_service_with_connect_info::<TcpMeta>())
                .with_graceful_shutdown(stop.cancelled_owned())
                .await;
        });
        FakeMattermost { addr, shared, task: Some(task) }
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

    /// The server URL, `http://127.0.0.1:<port>` (no trailing slash, no `/api/v4`): what a
    /// Mattermost adapter's `baseUrl` is set to.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The API root, `http://127.0.0.1:<port>/api/v4`.
    pub fn api_url(&self) -> String {
        format!("http://{}/api/v4", self.addr)
    }

    /// The WebSocket URL, `ws://127.0.0.1:<port>/api/v4/websocket`.
    pub fn websocket_url(&self) -> String {
        format!("ws://{}{WS_PATH}", self.addr)
    }

    /// Registers a human (or token-less bot) user, served as a `UserProfile`.
    ///
    /// # Panics
    /// If `id` is not a 26-character `[a-z0-9]` id.
    pub fn add_user(&self, id: &str, username: &str, is_bot: bool) {
        assert_id("user id", id);
        self.shared.mutate(|st| {
            st.users.insert(id.to_string(), User { id: id.to_string(), username: username.to_string(), is_bot });
        });
    }

    /// Registers a bot account with a personal access token: `token` authenticates REST
    /// (`Authorization: Bearer <token>`) and WebSockets (header or `authentication_challenge`).
    /// The bot is a `UserProfile` with `is_bot: true`.
    ///
    /// # Panics
    /// If `user_id` is not a 26-character `[a-z0-9]` id.
    pub fn add_bot(&self, token: &str, user_id: &str, username: &str) {
        assert_id("bot user id", user_id);
        self.shared.mutate(|st| {
            st.users.insert(
                user_id.to_string(),
                User { id: user_id.to_string(), username: username.to_string(), is_bot: true },
            );
            st.bots.insert(
                token.to_string(),
                Bot { token: token.to_string(), user_id: user_id.to_string(), username: username.to_string() },
            );
        });
    }

    /// Registers (or replaces) a team.
    ///
    /// # Panics
    /// If the team id is not a 26-character `[a-z0-9]` id.
    pub fn add_team(&self, spec: TeamSpec) {
        assert_id("team id", &spec.id);
        self.shared.mutate(|st| {
            st.teams.retain(|t| t.id != spec.id);
            st.teams.push(spec);
        });
    }

    /// Registers (or replaces) a channel.
    ///
    /// # Panics
    /// If an id is not a 26-character `[a-z0-9]` id, an `O`/`P` channel has no team id or a
    /// `D`/`G` channel has one, or a `D` channel does not have exactly two members.
    pub fn add_channel(&self, spec: ChannelSpec) {
        assert_id("channel id", &spec.id);
        for m in &spec.members {
            assert_id("channel member id", m);
        }
        match spec.channel_type {
            ChannelType::Open | ChannelType::Private => assert_id("team id", &spec.team_id),
            ChannelType::Direct | ChannelType::Group => {
                assert!(spec.team_id.is_empty(), "FakeMattermost: D/G channel {} must not have a team id", spec.id)
            }
        }
        if spec.channel_type == ChannelType::Direct {
            assert_eq!(spec.members.len(), 2, "FakeMattermost: D channel {} needs exactly two members", spec.id);
        }
        self.shared.mutate(|st| {
            st.channels.retain(|c| c.id != spec.id);
            st.channels.push(spec);
        });
    }

    /// Adds a member to a registered channel (takes effect for the next events).
    ///
    /// # Panics
    /// If the channel is not registered or `user_id` is not an id.
    pub fn add_channel_member(&self, channel_id: &str, user_id: &str) {
        assert_id("user id", user_id);
        self.shared.mutate(|st| {
            let c = st
                .channels
                .iter_mut()
                .find(|c| c.id == channel_id)
                .unwrap_or_else(|| panic!("FakeMattermost: channel {channel_id} is not registered"));
            if !c.members.iter().any(|m| m == user_id) {
                c.members.push(user_id.to_string());
            }
        });
    }

    /// Next authentication attempt — a WebSocket upgrade's `Authorization` header or an
    /// `authentication_challenge`, whatever the token — fails as if the token were unknown.
    /// Calls add up. REST is not affected.
    pub fn fail_auth_next(&self) {
        self.shared.mutate(|st| st.fail_auth += 1);
    }

    /// How long a new socket's authentication waits for the same bot's older live sockets to be
    /// seen closed before they count as simultaneous ([`BotStats::max_live_sockets`], [`Overlap`]),
    /// and how long a resume waits for the old socket of its connection to be seen closed.
    /// Default [`DEFAULT_OVERLAP_GRACE`].
    pub fn set_overlap_grace(&self, grace: Duration) {
        self.shared.mutate(|st| st.overlap_grace = grace);
    }

    /// How long a socket may stay unauthenticated before it is dropped. Default
    /// [`DEFAULT_AUTH_TIMEOUT`]. Applies to sockets opened from now on.
    pub fn set_auth_timeout(&self, timeout: Duration) {
        self.shared.mutate(|st| st.auth_timeout = timeout);
    }

    /// How long a disconnected connection stays resumable. Default [`DEFAULT_RESUME_WINDOW`].
    pub fn set_resume_window(&self, window: Duration) {
        self.shared.mutate(|st| st.resume_window = window);
    }

    /// Creates a post by a user (or a token-less bot) — stored like a REST-created one — and
    /// broadcasts `posted` to every channel member's connections (`mentions` computed from
    /// `@username` tokens of channel members, `@channel`/`@all`/`@here`, and DMs). Connections
    /// without a socket queue it for a resume; bots without a connection miss it. Returns the
    /// post id.
    ///
    /// # Panics
    /// If the channel or user is not registered, the user is not a channel member, or `root_id`
    /// is not a root post of the same channel (test mistakes).
    pub fn user_post(&self, spec: PostSpec) -> String {
        self.shared.mutate(|st| {
            let channel = st
                .channel(&spec.channel_id)
                .cloned()
                .unwrap_or_else(|| panic!("FakeMattermost::user_post: channel {} is not registered", spec.channel_id));
            assert!(
                st.users.contains_key(&spec.user_id),
                "FakeMattermost::user_post: user {} is not registered",
                spec.user_id
            );
            assert!(
                channel.members.contains(&spec.user_id),
                "FakeMattermost::user_post: user {} is not a member of channel {}",
                spec.user_id,
                spec.channel_id
            );
            let root_id = spec.root_id.clone().unwrap_or_default();
            if !root_id.is_empty() {
                let root = st.posts.iter().find(|p| p.id == root_id);
                assert!(
                    root.is_some_and(|r| r.channel_id == spec.channel_id && r.root_id.is_empty()),
                    "FakeMattermost::user_post: {root_id} is not a root post of channel {}",
                    spec.channel_id
                );
            }
            let props = spec.props.clone().unwrap_or_else(|| json!({}));
            st.create_post(&spec.user_id, None, &channel, &spec.message, &root_id, props, "", "")
        })
    }

    /// Broadcasts the `posted` event of an existing post again (new sequence numbers), as a
    /// client sees a post twice when a replay overlaps what it had already received. Returns
    /// how many connections got it.
    ///
    /// # Panics
    /// If the post does not exist.
    pub fn replay_event(&self, post_id: &str) -> usize {
        self.shared.mutate(|st| {
            assert!(st.posts.iter().any(|p| p.id == post_id), "FakeMattermost::replay_event: no post {post_id}");
            st.broadcast_posted(post_id)
        })
    }

    /// Drops the token's live socket(s) abruptly: the TCP connection closes without a close
    /// frame (the client sees 1006). Their connections stay resumable. Returns how many sockets
    /// were dropped.
    pub fn drop_socket(&self, token: &str) -> usize {
        self.shared.mutate(|st| {
            let ids = st.live_socks(token);
            for id in &ids {
                st.abort_now(*id, "drop_socket");
            }
            ids.len()
        })
    }

    /// Closes the token's live socket(s) with a close frame `code` (the connections stay
    /// resumable). Returns how many sockets were closed.
    pub fn close_socket(&self, token: &str, code: u16) -> usize {
        self.shared.mutate(|st| {
            let ids = st.live_socks(token);
            for id in &ids {
                st.server_close(*id, code, "");
            }
            ids.len()
        })
    }

    /// Makes the token's current live socket(s) dead: the TCP connection stays open and the fake
    /// goes on reading (and recording) frames, but nothing is written to it any more — no
    /// events, no replies, no pongs. Events still get sequence numbers and enter the replay
    /// buffer, as they would on a server writing into a broken connection. The socket counts
    /// as live until the client closes it. Returns how many sockets went silent.
    pub fn go_silent(&self, token: &str) -> usize {
        self.shared.mutate(|st| {
            let ids = st.live_socks(token);
            for id in &ids {
                if let Some(k) = st.socks.get_mut(id) {
                    k.silent = true;
                    k.io.silent.store(true, Ordering::SeqCst);
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
    pub fn live_sockets(&self, token: &str) -> usize {
        self.stats(token).live_sockets
    }

    /// See [`BotStats::max_live_sockets`]. The value is final once
    /// [`FakeMattermost::overlap_checks_pending`] is 0: wait for that before asserting it at the
    /// end of a test.
    pub fn max_live_sockets(&self, token: &str) -> usize {
        self.stats(token).max_live_sockets
    }

    /// Sockets that authenticated with `token`, in total.
    pub fn connections(&self, token: &str) -> usize {
        self.stats(token).connections
    }

    /// `ping` actions answered on the token's sockets.
    pub fn pings_answered(&self, token: &str) -> usize {
        self.stats(token).pings_answered
    }

    /// Failed authentication attempts, all tokens (unknown ones included).
    pub fn auth_failures(&self) -> usize {
        self.shared.with(|st| st.auth_failures)
    }

    /// Authentications that found other live sockets of the same bot and are still waiting out
    /// the overlap grace before updating [`BotStats::max_live_sockets`] (all bots).
    pub fn overlap_checks_pending(&self) -> usize {
        self.shared.with(|st| st.pending_checks)
    }

    /// Every detected [`Overlap`], in order.
    pub fn overlaps(&self) -> Vec<Overlap> {
        self.shared.with(|st| st.overlaps.clone())
    }

    /// Every ended WebSocket connection, in order.
    pub fn close_log(&self) -> Vec<SocketClose> {
        self.shared.with(|st| st.closes.clone())
    }

    /// Every text frame WebSocket clients sent, in arrival order.
    pub fn ws_frames(&self) -> Vec<WsFrame> {
        self.shared.with(|st| st.frames.clone())
    }

    /// Every event written to the token's sockets (replays included), in order.
    pub fn sent_events(&self, token: &str) -> Vec<SentEvent> {
        self.shared.with(|st| {
            let Some(uid) = st.bots.get(token).map(|b| b.user_id.clone()) else { return Vec::new() };
            st.sent.iter().filter(|e| e.user_id == uid).cloned().collect()
        })
    }

    /// Every HTTP request (WebSocket upgrades included), in arrival order.
    pub fn requests(&self) -> Vec<RestRequest> {
        self.shared.with(|st| st.requests.clone())
    }

    /// Every accepted typing indicator (REST and WebSocket), in order.
    pub fn typing_calls(&self) -> Vec<TypingCall> {
        self.shared.with(|st| st.typing.clone())
    }

    /// Every post of a channel (users' and bots'), oldest first, as `Post` JSON.
    pub fn posts(&self, channel_id: &str) -> Vec<Value> {
        self.shared
            .with(|st| st.posts.iter().filter(|p| p.channel_id == channel_id).map(|p| st.post_value(p)).collect())
    }

    /// Posts bots created in a channel through `POST /api/v4/posts`, oldest first, as `Post`
    /// JSON.
    pub fn bot_posts(&self, channel_id: &str) -> Vec<Value> {
        self.shared.with(|st| {
            st.posts
                .iter()
                .filter(|p| p.channel_id == channel_id && p.bot_token.is_some())
                .map(|p| st.post_value(p))
                .collect()
        })
    }

    /// One stored post by id, as `Post` JSON.
    pub fn post(&self, post_id: &str) -> Option<Value> {
        self.shared.with(|st| st.posts.iter().find(|p| p.id == post_id).map(|p| st.post_value(p)))
    }

    /// A human-readable dump of bots, connections, sockets, channels and logs.
    pub fn summary(&self) -> String {
        self.shared.with(State::summary)
    }

    /// Waits until `pred(self)` holds, re-checking after every state change (no polling).
    pub async fn wait_for(
        &self,
        mut pred: impl FnMut(&FakeMattermost) -> bool,
        timeout: Duration,
    ) -> Result<(), WaitTimeout> {
        self.wait_until("a condition".into(), timeout, |f| pred(f).then_some(())).await
    }

    /// Waits until bots have created at least `n` posts in `channel_id` through REST; returns
    /// all of them (oldest first).
    pub async fn wait_bot_posts(
        &self,
        channel_id: &str,
        n: usize,
        timeout: Duration,
    ) -> Result<Vec<Value>, WaitTimeout> {
        self.wait_until(format!("{n} bot post(s) in channel {channel_id}"), timeout, |f| {
            let p = f.bot_posts(channel_id);
            (p.len() >= n).then_some(p)
        })
        .await
    }

    /// Waits until exactly `n` sockets are live for `token`.
    pub async fn wait_live_sockets(&self, token: &str, n: usize, timeout: Duration) -> Result<(), WaitTimeout> {
        self.wait_until(format!("{n} live socket(s) for {token}"), timeout, |f| {
            (f.live_sockets(token) == n).then_some(())
        })
        .await
    }

    /// Waits until at least `n` sockets authenticated with `token` in total.
    pub async fn wait_connections(&self, token: &str, n: usize, timeout: Duration) -> Result<(), WaitTimeout> {
        self.wait_until(format!("{n} authenticated connection(s) for {token}"), timeout, |f| {
            (f.connections(token) >= n).then_some(())
        })
        .await
    }

    /// Waits until at least `n` typing indicators were accepted; returns all of them.
    pub async fn wait_typing_calls(&self, n: usize, timeout: Duration) -> Result<Vec<TypingCall>, WaitTimeout> {
        self.wait_until(format!("{n} typing call(s)"), timeout, |f| {
            let t = f.typing_calls();
            (t.len() >= n).then_some(t)
        })
        .await
    }

    async fn wait_until<T>(
        &self,
        what: String,
        timeout: Duration,
        mut check: impl FnMut(&FakeMattermost) -> Option<T>,
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

// ---------------------------------------------------------------------------------------
// WebSocket
// ---------------------------------------------------------------------------------------

/// `connection_id` and `sequence_number` of the upgrade URL.
#[derive(Default)]
struct ResumeParams {
    connection_id: Option<String>,
    sequence_number: Option<String>,
}

impl ResumeParams {
    fn parse(query: Option<&str>) -> ResumeParams {
        let mut p = ResumeParams::default();
        for pair in query.unwrap_or("").split('&').filter(|s| !s.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            match k {
                "connection_id" => p.connection_id = Some(v.to_string()),
                "sequence_number" => p.sequence_number = Some(v.to_string()),
                _ => {}
            }
        }
        p
    }
}

/// The token of `Authorization: Bearer <token>` or `Token <token>` (scheme case-insensitive).
fn bearer_token(headers: &HeaderMap) -> Option<String> {
    let v = headers.get("authorization")?.to_str().ok()?;
    let (scheme, token) = v.split_once(' ')?;
    (scheme.eq_ignore_ascii_case("bearer") || scheme.eq_ignore_ascii_case("token"))
        .then(|| token.trim().to_string())
        .filter(|t| !t.is_empty())
}

fn header_list(headers: &HeaderMap) -> Vec<(String, String)> {
    headers.iter().map(|(k, v)| (k.as_str().to_string(), String::from_utf8_lossy(v.as_bytes()).into_owned())).collect()
}

fn json_response(status: u16, body: Option<Value>, request_id: &str) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut resp = match body {
        Some(b) => (status, axum::Json(b)).into_response(),
        None => status.into_response(),
    };
    let h = resp.headers_mut();
    h.insert(HeaderName::from_static("x-request-id"), HeaderValue::from_str(request_id).expect("header value"));
    h.insert(HeaderName::from_static("x-version-id"), HeaderValue::from_static(SERVER_VERSION));
    resp
}

async fn ws_route(
    AxState(shared): AxState<Arc<Shared>>,
    ConnectInfo(meta): ConnectInfo<TcpMeta>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    let rid = new_id();
    let mut record = RestRequest {
        method: method.to_string(),
        path: uri.path().to_string(),
        query: uri.query().map(str::to_string),
        headers: header_list(&headers),
        body: Value::Null,
        status: 101,
    };
    let upgrade = match upgrade {
        _ if method != Method::GET => {
            record.status = 405;
            shared.mutate(|st| st.requests.push(record));
            return json_response(405, None, &rid);
        }
        Ok(u) => u,
        Err(_) => {
            record.status = 400;
            shared.mutate(|st| st.requests.push(record));
            let body = app_error_json(
                400,
                "api.web_socket.connect.upgrade.app_error",
                "Failed to upgrade websocket connection.",
                "",
                Some(&rid),
            );
            return json_response(400, Some(body), &rid);
        }
    };
    let token = bearer_token(&headers);
    let header_bot = shared.mutate(|st| {
        st.requests.push(record);
        token.as_deref().and_then(|t| st.try_auth(t))
    });
    let params = ResumeParams::parse(uri.query());
    let stop = shared.stop.clone();
    upgrade.on_upgrade(move |socket| async move {
        tokio::select! {
            _ = stop.cancelled() => {}
            _ = run_socket(shared, socket, meta.ctl, header_bot, params) => {}
        }
    })
}

async fn sleep_opt(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// Reads until the peer finishes the close handshake or 1 s passes.
async fn drain(socket: &mut WebSocket) {
    let _ =
        tokio::time::timeout(Duration::from_secs(1), async { while let Some(Ok(_)) = socket.recv().await {} }).await;
}

async fn run_socket(
    shared: Arc<Shared>,
    mut socket: WebSocket,
    io: Arc<IoCtl>,
    header_bot: Option<Bot>,
    params: ResumeParams,
) {
    let (tx, mut rx) = mpsc::unbounded_channel::<Out>();
    let kill = CancellationToken::new();
    let (id, auth_timeout) = shared.mutate(|st| {
        st.next_sock += 1;
        let id = st.next_sock;
        st.socks.insert(
            id,
            Sock {
                token: None,
                user_id: None,
                conn_id: None,
                live: false,
                closing: false,
                silent: false,
                io,
                tx,
                kill: kill.clone(),
            },
        );
        (id, st.auth_timeout)
    });
    let auth_deadline = Instant::now() + auth_timeout;
    let ctx = SockCtx { id, shared: shared.clone() };
    if let Some(bot) = header_bot {
        ctx.authenticate_by_header(bot, params).await;
    }
    loop {
        let authenticated = shared.with(|st| st.socks.get(&id).is_some_and(|k| k.token.is_some() || k.closing));
        let deadline = (!authenticated).then_some(auth_deadline);
        tokio::select! {
            biased;
            _ = kill.cancelled() => break,
            out = rx.recv() => match out {
                Some(Out::Text(text)) => {
                    if socket.send(WsMessage::Text(text.into())).await.is_err() {
                        shared.mutate(|st| { st.begin_close(id, CloseBy::Transport, None, None); });
                        break;
                    }
                }
                Some(Out::Close(code, reason)) => {
                    let _ = socket.send(WsMessage::Close(Some(CloseFrame { code, reason: reason.into() }))).await;
                    drain(&mut socket).await;
                    break;
                }
                Some(Out::Abort) | None => break,
            },
            msg = socket.recv() => match msg {
                Some(Ok(WsMessage::Text(text))) => ctx.on_text(text.as_str()),
                Some(Ok(WsMessage::Binary(_))) => ctx.shared.mutate(|st| st.abort_now(id, "binary frame")),
                Some(Ok(WsMessage::Ping(_))) => ctx.on_ws_ping(),
                Some(Ok(WsMessage::Pong(_))) => {}
                Some(Ok(WsMessage::Close(close))) => {
                    shared.mutate(|st| { st.begin_close(id, CloseBy::Client, close.map(|c| c.code), None); });
                    drain(&mut socket).await;
                    break;
                }
                Some(Err(_)) | None => {
                    shared.mutate(|st| { st.begin_close(id, CloseBy::Transport, None, None); });
                    break;
                }
            },
            _ = sleep_opt(deadline) => {
                shared.mutate(|st| st.abort_now(id, "not authenticated in time"));
            }
        }
    }
    shared.mutate(|st| {
        st.begin_close(id, CloseBy::Transport, None, None);
        st.socks.remove(&id);
    });
}

struct SockCtx {
    id: u64,
    shared: Arc<Shared>,
}

impl SockCtx {
    async fn authenticate_by_header(&self, bot: Bot, params: ResumeParams) {
        let id = self.id;
        match params.connection_id.filter(|c| !c.is_empty()) {
            None => self.shared.mutate(|st| st.attach_fresh(id, &bot, None)),
            Some(cid) => {
                if !is_valid_id(&cid) {
                    return self.shared.mutate(|st| st.abort_now(id, "invalid connection_id"));
                }
                let Some(seq) = params.sequence_number.and_then(|s| s.parse::<i64>().ok()) else {
                    return self.shared.mutate(|st| st.abort_now(id, "missing or invalid sequence_number"));
                };
                self.wait_connection_free(&cid, &bot.user_id).await;
                self.shared.mutate(|st| st.attach_resume(id, &bot, &cid, seq));
            }
        }
        self.after_auth(&bot.token);
    }

    /// Waits (bounded by the overlap grace) until connection `cid` of `user_id` has no socket.
    async fn wait_connection_free(&self, cid: &str, user_id: &str) {
        let grace = self.shared.with(|st| st.overlap_grace);
        let deadline = Instant::now() + grace;
        let mut rx = self.shared.changed.subscribe();
        loop {
            rx.borrow_and_update();
            let busy = self.shared.with(|st| {
                st.webconns.get(cid).is_some_and(|w| w.user_id == user_id && w.socket.is_some_and(|s| s != self.id))
            });
            if !busy || tokio::time::timeout_at(deadline, rx.changed()).await.is_err() {
                return;
            }
        }
    }

    /// If other sockets of the token are live, checks after the overlap grace (in a task, so this
    /// socket is served meanwhile) whether they still are, and records an [`Overlap`].
    fn after_auth(&self, token: &str) {
        let id = self.id;
        let others = self.shared.mutate(|st| {
            let others: Vec<u64> = st.live_socks(token).into_iter().filter(|s| *s != id).collect();
            if st.is_live(id) && !others.is_empty() {
                st.pending_checks += 1;
                Some((others, st.overlap_grace))
            } else {
                None
            }
        });
        let Some((others, grace)) = others else { return };
        let shared = self.shared.clone();
        let token = token.to_string();
        tokio::spawn(async move {
            let deadline = Instant::now() + grace;
            let mut rx = shared.changed.subscribe();
            loop {
                rx.borrow_and_update();
                let remaining = shared.with(|st| others.iter().filter(|o| st.is_live(**o)).count());
                if remaining == 0 || tokio::time::timeout_at(deadline, rx.changed()).await.is_err() {
                    break;
                }
            }
            shared.mutate(|st| {
                st.pending_checks -= 1;
                if !st.is_live(id) {
                    return;
                }
                let remaining = others.iter().filter(|o| st.is_live(**o)).count();
                let s = st.stats_mut(&token);
                s.max_live_sockets = s.max_live_sockets.max(1 + remaining);
                if remaining > 0 {
                    s.overlaps += 1;
                    st.overlaps.push(Overlap { token: token.clone(), socket_id: id, other_live_sockets: remaining });
                }
            });
        });
    }

    fn on_ws_ping(&self) {
        self.shared.mutate(|st| {
            let Some(k) = st.socks.get(&self.id) else { return };
            let (silent, token) = (k.silent, k.token.clone());
            if let Some(t) = token {
                let s = st.stats_mut(&t);
                s.ws_pings_received += 1;
                if !silent {
                    s.ws_pongs_sent += 1;
                }
            }
        });
    }

    fn reply_error(&self, st: &State, seq: i64, status: u16, id: &str, message: &str) {
        let mut r = json!({"status": "FAIL"});
        if seq != 0 {
            r["seq_reply"] = json!(seq);
        }
        r["error"] = app_error_json(status, id, message, "", None);
        st.reply(self.id, r);
    }

    fn on_text(&self, text: &str) {
        let id = self.id;
        let (closing, token) =
            self.shared.with(|st| st.socks.get(&id).map(|k| (k.closing, k.token.clone())).unwrap_or((true, None)));
        if closing {
            return;
        }
        let parsed = serde_json::from_str::<Value>(text);
        let payload = match &parsed {
            Ok(v) => v.clone(),
            Err(_) => Value::String(text.to_string()),
        };
        self.shared.mutate(|st| st.frames.push(WsFrame { socket_id: id, token: token.clone(), payload }));
        let Ok(Value::Object(req)) = parsed else {
            return self.shared.mutate(|st| st.abort_now(id, "frame is not a JSON object"));
        };
        let seq = req.get("seq").and_then(Value::as_i64).unwrap_or(0);
        let action = req.get("action").and_then(Value::as_str).unwrap_or("").to_string();
        let data = req.get("data").cloned().unwrap_or(Value::Null);
        let authenticated = self.shared.mutate(|st| {
            if action.is_empty() {
                self.reply_error(st, seq, 400, "api.web_socket_router.no_action.app_error", "No websocket action.");
                return None;
            }
            if seq <= 0 {
                self.reply_error(
                    st,
                    seq,
                    400,
                    "api.web_socket_router.bad_seq.app_error",
                    "Invalid sequence for WebSocket message.",
                );
                return None;
            }
            match (action.as_str(), token) {
                // A second challenge on an authenticated socket is ignored, as on the server.
                ("authentication_challenge", Some(_)) => {}
                ("authentication_challenge", None) => return self.challenge(st, seq, &data),
                (_, None) => self.reply_error(
                    st,
                    seq,
                    401,
                    "api.web_socket_router.not_authenticated.app_error",
                    "Connection is not authenticated. Please log in and try again.",
                ),
                ("ping", Some(t)) => {
                    let silent = st.socks.get(&id).is_some_and(|k| k.silent);
                    st.stats_mut(&t).pings_received += 1;
                    if !silent {
                        let now = unix_ms();
                        st.reply(
                            id,
                            json!({"status": "OK", "seq_reply": seq, "data": {
                                "text": "pong", "version": VERSION, "server_time": now, "node_id": "",
                            }}),
                        );
                        st.stats_mut(&t).pings_answered += 1;
                    }
                }
                ("user_typing", Some(t)) => {
                    let user_id = st.bots.get(&t).map(|b| b.user_id.clone()).unwrap_or_default();
                    let channel_id = data["channel_id"].as_str().unwrap_or("").to_string();
                    let ok = is_valid_id(&channel_id)
                        && st.channel(&channel_id).is_some_and(|c| c.members.contains(&user_id));
                    if !ok {
                        self.reply_error(
                            st,
                            seq,
                            400,
                            "api.websocket_handler.invalid_param.app_error",
                            "Invalid channel_id parameter.",
                        );
                        return None;
                    }
                    let parent_id = data["parent_id"].as_str().unwrap_or("").to_string();
                    st.typing(&user_id, &channel_id, &parent_id, TypingVia::WebSocket);
                    st.reply(id, json!({"status": "OK", "seq_reply": seq}));
                }
                (_, Some(_)) => self.reply_error(
                    st,
                    seq,
                    501,
                    "api.web_socket_router.bad_action.app_error",
                    "Unknown WebSocket action.",
                ),
            }
            None
        });
        if let Some(token) = authenticated {
            self.after_auth(&token);
        }
    }

    /// `authentication_challenge` on an unauthenticated socket (called under the lock); returns
    /// the token if it authenticated the socket.
    fn challenge(&self, st: &mut State, seq: i64, data: &Value) -> Option<String> {
        let Some(token) = data["token"].as_str() else {
            st.abort_now(self.id, "authentication_challenge without a token");
            return None;
        };
        match st.try_auth(token) {
            Some(bot) => {
                st.attach_fresh(self.id, &bot, Some(seq));
                Some(bot.token)
            }
            None => {
                self.reply_error(
                    st,
                    seq,
                    401,
                    "api.context.session_expired.app_error",
                    "Invalid or expired session, please login again.",
                );
                st.abort_after_flush(self.id, "authentication failed");
                None
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// HTTP API
// ---------------------------------------------------------------------------------------

struct Reply {
    status: u16,
    body: Option<Value>,
}

impl Reply {
    fn json(status: u16, body: Value) -> Reply {
        Reply { status, body: Some(body) }
    }

    fn error(status: u16, id: &str, message: &str, rid: &str) -> Reply {
        Reply::json(status, app_error_json(status, id, message, "", Some(rid)))
    }

    fn forbidden(rid: &str) -> Reply {
        Reply::error(403, "api.context.permissions.app_error", "You do not have the appropriate permissions.", rid)
    }

    fn invalid_url_param(name: &str, rid: &str) -> Reply {
        Reply::error(
            400,
            "api.context.invalid_url_param.app_error",
            &format!("Invalid or missing {name} parameter in request URL."),
            rid,
        )
    }

    fn invalid_body_param(name: &str, rid: &str) -> Reply {
        Reply::error(
            400,
            "api.context.invalid_body_param.app_error",
            &format!("Invalid or missing {name} in request body."),
            rid,
        )
    }
}

async fn rest_route(
    AxState(shared): AxState<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let rid = new_id();
    let path = uri.path().to_string();
    let reply = shared.mutate(|st| {
        let reply = route(st, &rid, &method, &path, &headers, &body);
        st.requests.push(RestRequest {
            method: method.to_string(),
            path: path.clone(),
            query: uri.query().map(str::to_string),
            headers: header_list(&headers),
            body: serde_json::from_slice::<Value>(&body).unwrap_or(Value::Null),
            status: reply.status,
        });
        reply
    });
    json_response(reply.status, reply.body, &rid)
}

enum Route<'a> {
    Ping,
    User(&'a str),
    Typing(&'a str),
    Channel(&'a str),
    Team(&'a str),
    Post(&'a str),
    CreatePost,
}

fn route(st: &mut State, rid: &str, method: &Method, path: &str, headers: &HeaderMap, body: &[u8]) -> Reply {
    let not_found = || {
        Reply::json(
            404,
            app_error_json(
                404,
                "api.context.404.app_error",
                "Sorry, we could not find the page.",
                &format!(
                    "There doesn't appear to be an api call for the url='{path}'.  Typo? are you missing a team_id or \
                     user_id as part of the url?"
                ),
                Some(rid),
            ),
        )
    };
    let Some(rest) = path.strip_prefix("/api/v4/") else { return not_found() };
    let segs: Vec<&str> = rest.split('/').collect();
    let (r, allowed) = match segs.as_slice() {
        ["system", "ping"] => (Route::Ping, Method::GET),
        ["users", id] => (Route::User(id), Method::GET),
        ["users", id, "typing"] => (Route::Typing(id), Method::POST),
        ["channels", id] => (Route::Channel(id), Method::GET),
        ["teams", id] => (Route::Team(id), Method::GET),
        ["posts"] => (Route::CreatePost, Method::POST),
        ["posts", id] => (Route::Post(id), Method::GET),
        _ => return not_found(),
    };
    if *method != allowed {
        return Reply { status: 405, body: None };
    }
    if let Route::Ping = r {
        return Reply::json(200, json!({"status": "OK"}));
    }
    let Some(bot) = bearer_token(headers).and_then(|t| st.bots.get(&t).cloned()) else {
        return Reply::error(
            401,
            "api.context.session_expired.app_error",
            "Invalid or expired session, please login again.",
            rid,
        );
    };
    match r {
        Route::Ping => unreachable!("answered above"),
        Route::User(id) => {
            let id = if id == "me" { bot.user_id.as_str() } else { id };
            if !is_valid_id(id) {
                return Reply::invalid_url_param("user_id", rid);
            }
            match st.users.get(id) {
                Some(u) => Reply::json(200, user_json(u, st.epoch_ms)),
                None => Reply::error(404, "app.user.missing_account.const", "Unable to find the user.", rid),
            }
        }
        Route::Typing(id) => {
            let id = if id == "me" { bot.user_id.as_str() } else { id };
            if !is_valid_id(id) {
                return Reply::invalid_url_param("user_id", rid);
            }
            let Ok(Value::Object(req)) = serde_json::from_slice::<Value>(body) else {
                return Reply::invalid_body_param("typing_request", rid);
            };
            let channel_id = match req.get("channel_id") {
                Some(Value::String(c)) => c.clone(),
                None | Some(Value::Null) => String::new(),
                Some(_) => return Reply::invalid_body_param("typing_request", rid),
            };
            let parent_id = match req.get("parent_id") {
                Some(Value::String(p)) => p.clone(),
                None | Some(Value::Null) => String::new(),
                Some(_) => return Reply::invalid_body_param("typing_request", rid),
            };
            if id != bot.user_id {
                return Reply::forbidden(rid);
            }
            if !st.channel(&channel_id).is_some_and(|c| c.members.contains(&bot.user_id)) {
                return Reply::forbidden(rid);
            }
            st.typing(&bot.user_id, &channel_id, &parent_id, TypingVia::Rest);
            Reply::json(200, json!({"status": "OK"}))
        }
        Route::Channel(id) => {
            if !is_valid_id(id) {
                return Reply::invalid_url_param("channel_id", rid);
            }
            match st.channel(id) {
                Some(c) if st.can_read(c, &bot.user_id) => Reply::json(200, st.channel_json(c)),
                Some(_) => Reply::forbidden(rid),
                None => {
                    Reply::error(404, "app.channel.get.existing.app_error", "Unable to find the existing channel.", rid)
                }
            }
        }
        Route::Team(id) => {
            if !is_valid_id(id) {
                return Reply::invalid_url_param("team_id", rid);
            }
            match st.teams.iter().find(|t| t.id == id) {
                Some(t) if t.members.contains(&bot.user_id) => Reply::json(200, team_json(t, st.epoch_ms)),
                Some(_) => Reply::forbidden(rid),
                None => Reply::error(404, "app.team.get.find.app_error", "Unable to find the existing team.", rid),
            }
        }
        Route::Post(id) => {
            if !is_valid_id(id) {
                return Reply::invalid_url_param("post_id", rid);
            }
            let Some(p) = st.posts.iter().find(|p| p.id == id) else {
                return Reply::error(404, "app.post.get.app_error", "Unable to get the post.", rid);
            };
            match st.channel(&p.channel_id) {
                Some(c) if st.can_read(c, &bot.user_id) => Reply::json(200, st.post_value(p)),
                _ => Reply::forbidden(rid),
            }
        }
        Route::CreatePost => create_post(st, rid, &bot, body),
    }
}

/// `POST /api/v4/posts`.
fn create_post(st: &mut State, rid: &str, bot: &Bot, body: &[u8]) -> Reply {
    let Ok(Value::Object(req)) = serde_json::from_slice::<Value>(body) else {
        return Reply::invalid_body_param("post", rid);
    };
    let field = |k: &str| -> Option<String> {
        match req.get(k) {
            None | Some(Value::Null) => Some(String::new()),
            Some(Value::String(s)) => Some(s.clone()),
            Some(_) => None,
        }
    };
    let (Some(channel_id), Some(message), Some(root_id), Some(pending), Some(post_type), Some(post_id)) =
        (field("channel_id"), field("message"), field("root_id"), field("pending_post_id"), field("type"), field("id"))
    else {
        return Reply::invalid_body_param("post", rid);
    };
    let props = match req.get("props") {
        None | Some(Value::Null) => json!({}),
        Some(Value::Object(o)) => Value::Object(o.clone()),
        Some(_) => return Reply::invalid_body_param("post", rid),
    };
    let Some(channel) = st.channel(&channel_id).cloned() else { return Reply::forbidden(rid) };
    if !channel.members.contains(&bot.user_id) {
        return Reply::forbidden(rid);
    }
    if post_type.starts_with("system_") {
        return Reply::error(400, "api.context.invalid_param.app_error", "Invalid post.type parameter.", rid);
    }
    if !root_id.is_empty() {
        match st.posts.iter().find(|p| p.id == root_id) {
            None => {
                return Reply::error(400, "api.post.create_post.root_id.app_error", "Invalid RootId parameter.", rid)
            }
            Some(r) if r.channel_id != channel_id => {
                return Reply::error(
                    400,
                    "api.post.create_post.channel_root_id.app_error",
                    "Invalid ChannelId for RootId parameter.",
                    rid,
                )
            }
            Some(r) if !r.root_id.is_empty() => {
                return Reply::error(400, "api.post.create_post.root_id.app_error", "Invalid RootId parameter.", rid)
            }
            Some(_) => {}
        }
    }
    if !post_id.is_empty() {
        return Reply::error(400, "store.sql_post.save.existing.app_error", "You cannot update an existing Post.", rid);
    }
    if message.is_empty() || message.chars().count() > MAX_POST_RUNES {
        return Reply::error(400, "model.post.is_valid.msg.app_error", "Invalid Message.", rid);
    }
    if !(post_type.is_empty() || post_type.starts_with("custom_")) {
        return Reply::error(400, "model.post.is_valid.type.app_error", "Invalid type.", rid);
    }
    let id = st.create_post(
        &bot.user_id,
        Some(bot.token.clone()),
        &channel,
        &message,
        &root_id,
        props,
        &pending,
        &post_type,
    );
    let p = st.posts.iter().find(|p| p.id == id).expect("just created");
    Reply::json(201, st.post_value(p))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_look_like_mattermost_ids() {
        let a = new_id();
        let b = new_id();
        assert_ne!(a, b);
        for id in [&a, &b] {
            assert!(is_lower_id(id), "{id}");
            assert!(is_valid_id(id));
        }
        assert!(!is_valid_id("short"));
        assert!(!is_valid_id("abcdefghijklmnopqrstuvwxy-"));
    }

    #[test]
    fn hashtags_like_parse_hashtags() {
        assert_eq!(parse_hashtags("hello #world and ##rust, #a #b1 (#tag-x.)"), "#world #rust #b1 #tag-x");
        assert_eq!(parse_hashtags("no tags # here #1abc"), "");
    }

    #[test]
    fn mention_words_split_like_the_server() {
        assert_eq!(
            mention_words("hi @Pincer, and @bob. mail a@b.com @x_"),
            vec![vec!["pincer".to_string()], vec!["bob.".into(), "bob".into()], vec!["x_".into(), "x".into()]]
        );
    }
}
