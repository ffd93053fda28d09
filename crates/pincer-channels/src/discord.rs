//! Discord channel (`channels.discord`): a bot account connected to the Discord gateway
//! (twilight-gateway, one shard) for inbound messages, and the REST API for replies.
//!
//! Inbound: `MESSAGE_CREATE` dispatches ([Discord docs: Message Create]) become
//! [`Inbound`]s (DMs → `direct` with the author as peer; guild channels → `channel` with the
//! channel as peer; threads → the parent channel as peer and the thread as `thread_id`).
//! Each message is handed to the runtime's sink and awaited before the next frame is read.
//!
//! Connection lifecycle (see [`crate::lifecycle`]): one [`DiscordRunner::run`] call is one
//! attempt: `GET /users/@me` (a 401 is fatal), the gateway URL (`gatewayUrl`, else
//! `GET /gateway/bot`), then the shard. twilight's shard heartbeats, detects zombie
//! connections and reconnects/RESUMEs by itself; that stays inside the attempt. Because the
//! shard would otherwise retry forever, the attempt gives up (`RunError::Retryable`, so the
//! supervisor's backoff takes over) when it has not been READY for [`READY_TIMEOUT`] after
//! starting, for [`RECONNECT_GRACE`] after a disconnect, or after
//! [`MAX_RECONNECT_FAILURES`] failed reconnects in a row. Gateway close codes that forbid
//! reconnecting (4004 authentication failed, 4010-4014 shard/intents errors) are
//! `RunError::Fatal`.
//!
//! Resume: the attempt saves `{token digest, session id, sequence, resume URL}` as its resume
//! state on READY/RESUMED, after each delivered message and when it stops. The sequence is
//! that of the last dispatch fully handled (a message counts once the sink accepted it), so a
//! message that was read but not accepted is replayed. On cancellation the shard closes with
//! code 4000 (which keeps the session resumable) and the next attempt, even in a freshly built
//! runtime, RESUMEs: Discord replays what was missed and the runtime's dedupe drops repeats.
//!
//! Outbound: [`DiscordSender`] posts one message per call (`POST /channels/{id}/messages`).
//!
//! [Discord docs: Message Create]: https://discord.com/developers/docs/topics/gateway-events#message-create

use crate::catalog::{AccountProblem, AccountSpec};
use crate::lifecycle::{AccountContext, AccountRunner, RunError};
use crate::outbound::{BoxFuture, ChannelSender, OutboundMessage, SendError, SendReceipt};
use futures_util::StreamExt as _;
use pincer_core::config::{
    discord_token_digest, discord_wake_policy, Config, DmPolicy, GroupPolicy, ReplyToMode, ResolvedDiscordAccount,
    DISCORD_DEFAULT_API_ROOT,
};
use pincer_core::wake::WakePolicy;
use pincer_core::{AccountId, Author, ChannelId, ChatKind, Inbound, MentionFacts};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::{HashMap, HashSet, VecDeque};
use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use twilight_gateway::error::ReceiveMessageErrorType;
use twilight_gateway::{
    CloseFrame, ConfigBuilder, Event, EventTypeFlags, Intents, Message as WsMessage, Session, Shard, ShardId,
    ShardState,
};
use twilight_model::channel::message::{MessageReferenceType, MessageType};
use twilight_model::channel::{Channel, Message};
use twilight_model::gateway::event::GatewayEventDeserializer;
use twilight_model::gateway::payload::incoming::GuildCreate;
use twilight_model::gateway::CloseCode;
use twilight_model::id::marker::{ChannelMarker, MessageMarker, UserMarker};
use twilight_model::id::Id;

/// Channel id of this adapter.
pub const CHANNEL: &str = "discord";
/// How long an attempt may take to reach its first READY/RESUMED before it gives up.
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the shard may stay disconnected (reconnecting by itself) before the attempt
/// gives up and lets the supervisor retry with backoff.
pub const RECONNECT_GRACE: Duration = Duration::from_secs(60);
/// Consecutive failed reconnects (twilight's own, 1 s, 2 s, 4 s ... apart) before the attempt
/// gives up.
pub const MAX_RECONNECT_FAILURES: u32 = 5;
/// Bound on the close handshake when the attempt is cancelled.
pub const CLOSE_TIMEOUT: Duration = Duration::from_secs(3);
/// Timeout of each REST request.
pub const REST_TIMEOUT: Duration = Duration::from_secs(15);
/// Bound on the gateway URL lookup (`GET /gateway/bot`), as OpenClaw.
pub const GATEWAY_LOOKUP_TIMEOUT: Duration = Duration::from_secs(30);
/// How often the shard's heartbeat latency is sampled for the status facts.
const LATENCY_POLL: Duration = Duration::from_secs(1);
/// Max entries of the channel → thread-parent cache (cleared when full).
const CHANNEL_CACHE_CAP: usize = 10_000;
/// How many of the bot's own recent message ids are remembered (reply-to-bot detection).
const SENT_IDS_CAP: usize = 512;
/// `User-Agent` of REST requests, in the form Discord requires.
const USER_AGENT: &str =
    concat!("DiscordBot (https://github.com/pincer-gateway/pincer, ", env!("CARGO_PKG_VERSION"), ")");

/// Gateway events the adapter parses; every other frame only counts as activity.
fn wanted_events() -> EventTypeFlags {
    EventTypeFlags::READY
        | EventTypeFlags::RESUMED
        | EventTypeFlags::GATEWAY_HELLO
        | EventTypeFlags::GATEWAY_HEARTBEAT_ACK
        | EventTypeFlags::GATEWAY_RECONNECT
        | EventTypeFlags::GATEWAY_INVALIDATE_SESSION
        | EventTypeFlags::MESSAGE_CREATE
        | EventTypeFlags::GUILD_CREATE
        | EventTypeFlags::CHANNEL_CREATE
        | EventTypeFlags::THREAD_CREATE
        | EventTypeFlags::THREAD_UPDATE
        | EventTypeFlags::THREAD_DELETE
        | EventTypeFlags::THREAD_LIST_SYNC
}

/// twilight-http and twilight-gateway build rustls configs from the process-wide default
/// crypto provider and panic without one. Installing is idempotent (a second install fails
/// harmlessly).
fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

fn problem(account: &str, message: impl Into<String>) -> AccountProblem {
    AccountProblem { channel: ChannelId::new(CHANNEL), account: AccountId::new(account), message: message.into() }
}

/// Build every enabled `channels.discord` account of `config`: a [`DiscordRunner`] and a
/// [`DiscordSender`] each, with the serde JSON of the [`ResolvedDiscordAccount`] as the
/// fingerprint (the token appears only as a digest). Problems: no token, an `apiRoot` that is
/// not `<http|https>://<host[:port]>/api/v10`, or a bot token already used by an earlier
/// account (one gateway connection per token, as OpenClaw). `env` supplies
/// `DISCORD_BOT_TOKEN` for the `default` account. Needs no async runtime.
pub fn build_accounts(
    config: &Config,
    env: &dyn Fn(&str) -> Option<String>,
) -> Vec<Result<AccountSpec, AccountProblem>> {
    let Some(section) = &config.channels.discord else {
        return Vec::new();
    };
    let mut tokens: HashMap<String, String> = HashMap::new();
    section
        .resolved_accounts(&config.channels.defaults, env)
        .into_iter()
        .map(|resolved| {
            let account = resolved.map_err(|p| problem(&p.account_id, p.message))?;
            let id = account.account_id.clone();
            let digest = discord_token_digest(&account.token);
            if let Some(first) = tokens.get(&digest) {
                return Err(problem(
                    &id,
                    format!("uses the same bot token as account \"{first}\" (one gateway connection per token)"),
                ));
            }
            tokens.insert(digest, id.clone());
            let fingerprint = serde_json::to_string(&account).unwrap_or_default();
            let account = Arc::new(account);
            let runner = DiscordRunner::new(account.clone()).map_err(|m| problem(&id, m))?;
            let sender = DiscordSender::new(&account).map_err(|m| problem(&id, m))?;
            Ok(AccountSpec {
                channel: ChannelId::new(CHANNEL),
                account: AccountId::new(&id),
                fingerprint,
                health_monitor: account.health_monitor,
                runner: Some(Arc::new(runner)),
                sender: Arc::new(sender),
            })
        })
        .collect()
}

/// The wake policy of a Discord message, from the current config (see
/// [`discord_wake_policy`]). A message of an account that is not configured (or disabled) gets
/// a policy that drops everything (`dmPolicy` and `groupPolicy` disabled).
pub fn wake_policy(config: &Config, inbound: &Inbound) -> WakePolicy {
    let account = config
        .channels
        .discord
        .as_ref()
        .and_then(|d| d.policy_account(inbound.account.as_str(), &config.channels.defaults));
    match account {
        Some(a) => discord_wake_policy(&a, inbound),
        None => WakePolicy { dm_policy: DmPolicy::Disabled, group_policy: GroupPolicy::Disabled, ..Default::default() },
    }
}

/// `replyToMode` of a Discord account (default `off`, also for unknown accounts).
pub fn reply_to_mode(config: &Config, account: &AccountId) -> ReplyToMode {
    config
        .channels
        .discord
        .as_ref()
        .and_then(|d| d.policy_account(account.as_str(), &config.channels.defaults))
        .map(|a| a.reply_to_mode)
        .unwrap_or_default()
}

/// The REST API root and how twilight-http reaches it. twilight-http builds request URLs as
/// `{scheme}://{proxy}/api/v10/{route}`, so a non-default root must be exactly
/// `<http|https>://<host[:port]>/api/v10`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiRoot {
    /// The root without a trailing slash, e.g. `https://discord.com/api/v10`.
    pub url: String,
    /// `(host[:port], plain http)` for twilight-http's `proxy`; `None` for Discord itself.
    pub proxy: Option<(String, bool)>,
}

impl ApiRoot {
    /// Parse `root` (a resolved `apiRoot`). Errors: a message naming the expected shape.
    pub fn parse(root: &str) -> Result<ApiRoot, String> {
        let url = root.trim().trim_end_matches('/').to_string();
        if url == DISCORD_DEFAULT_API_ROOT {
            return Ok(ApiRoot { url, proxy: None });
        }
        let bad = || format!("apiRoot must be <http|https>://<host[:port]>/api/v10, got \"{url}\"");
        let (use_http, rest) = match (url.strip_prefix("http://"), url.strip_prefix("https://")) {
            (Some(rest), _) => (true, rest),
            (_, Some(rest)) => (false, rest),
            _ => return Err(bad()),
        };
        let (host, path) = rest.split_once('/').ok_or_else(bad)?;
        let host_ok = !host.is_empty() && !host.contains(['@', '?', '#', ' ']);
        if !host_ok || path != "api/v10" {
            return Err(bad());
        }
        Ok(ApiRoot { proxy: Some((host.to_string(), use_http)), url })
    }
}

/// Resume state saved through [`crate::StatusReporter::save_resume`]: JSON
/// `{"token": "sha256:…", "sessionId", "sequence", "resumeUrl"}`. `token` is the digest of
/// the bot token the session belongs to; a state saved for another token is ignored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ResumeState {
    token: String,
    session_id: String,
    sequence: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    resume_url: Option<String>,
}

impl ResumeState {
    fn encode(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// The state in `json` if it parses and belongs to `token`.
    fn decode(json: &str, token: &str) -> Option<ResumeState> {
        let state: ResumeState = serde_json::from_str(json).ok()?;
        (state.token == discord_token_digest(token) && !state.session_id.is_empty()).then_some(state)
    }
}

/// The bot user of the connection (`GET /users/@me`, then READY's `user`).
#[derive(Clone, Debug, PartialEq, Eq)]
struct BotIdentity {
    id: Id<UserMarker>,
    name: String,
}

/// True when `content` holds an explicit user mention of `bot_id` (`<@id>` or `<@!id>`).
fn mentions_token(content: &str, bot_id: &str) -> bool {
    content.contains(&format!("<@{bot_id}>")) || content.contains(&format!("<@!{bot_id}>"))
}

/// `content` without a leading mention of the bot (and the whitespace after it).
fn strip_leading_mention(content: &str, bot_id: &str) -> String {
    let trimmed = content.trim_start();
    for token in [format!("<@{bot_id}>"), format!("<@!{bot_id}>")] {
        if let Some(rest) = trimmed.strip_prefix(&token) {
            return rest.trim_start().to_string();
        }
    }
    content.to_string()
}

/// Normalise one Discord message. Pure.
///
/// - DMs (no `guild_id`): `direct`, peer = author id, chat = the DM channel id.
/// - Guild messages: `channel`, `guild_id`, `member_roles` = `member.roles`, peer = chat =
///   the channel id; in a thread (`thread_parent` is its parent channel): peer = parent,
///   `parent_peer_id` = parent, `thread_id` = chat = the thread id.
/// - Mentions: `native` = an explicit `<@bot>`/`<@!bot>` in the content, or the bot in
///   `mentions` when the message is not a reply to the bot (Discord adds the replied-to author
///   to `mentions`; that ping is the `reply_to_bot` fact, so `implicitMentions.replyToBot:
///   false` can switch it off). `reply_to_bot` = the referenced message's author is the bot,
///   or the reference points at a message `sent_by_bot`. `can_detect` is always true.
/// - `text`: the content without a leading bot mention; `ts_ms` from `timestamp`.
fn to_inbound(
    msg: &Message,
    bot: &BotIdentity,
    thread_parent: Option<&str>,
    account: &AccountId,
    sent_by_bot: &dyn Fn(&str) -> bool,
) -> Inbound {
    let bot_id = bot.id.to_string();
    let author_id = msg.author.id.to_string();
    let channel_id = msg.channel_id.to_string();
    let reply_to_bot = msg.referenced_message.as_ref().is_some_and(|r| r.author.id == bot.id)
        || msg
            .reference
            .as_ref()
            .filter(|r| r.kind == MessageReferenceType::Default)
            .and_then(|r| r.message_id)
            .is_some_and(|id| sent_by_bot(&id.to_string()));
    let in_mentions = msg.mentions.iter().any(|m| m.id == bot.id);
    let native = mentions_token(&msg.content, &bot_id) || (in_mentions && !reply_to_bot);
    let (chat_kind, peer_id, parent_peer_id, thread_id) = match (msg.guild_id, thread_parent) {
        (None, _) => (ChatKind::Direct, author_id.clone(), None, None),
        (Some(_), None) => (ChatKind::Channel, channel_id.clone(), None, None),
        (Some(_), Some(parent)) => {
            (ChatKind::Channel, parent.to_string(), Some(parent.to_string()), Some(channel_id.clone()))
        }
    };
    Inbound {
        channel: ChannelId::new(CHANNEL),
        account: account.clone(),
        chat_kind,
        peer_id,
        parent_peer_id,
        chat_id: channel_id,
        guild_id: msg.guild_id.map(|g| g.to_string()),
        team_id: None,
        member_roles: msg
            .member
            .as_ref()
            .map(|m| m.roles.iter().map(ToString::to_string).collect())
            .unwrap_or_default(),
        thread_id,
        author: Author {
            id: author_id,
            name: Some(msg.author.global_name.clone().unwrap_or_else(|| msg.author.name.clone())),
            is_bot: msg.author.bot,
            is_self: msg.author.id == bot.id,
        },
        message_id: msg.id.to_string(),
        text: strip_leading_mention(&msg.content, &bot_id),
        ts_ms: msg.timestamp.as_micros() / 1000,
        mentions: MentionFacts { native, reply_to_bot, can_detect: true, ..Default::default() },
    }
}

/// Bounded cache: channel id → parent channel id when the channel is a thread, `None` when
/// it is known not to be one.
#[derive(Default)]
struct ChannelKinds(HashMap<Id<ChannelMarker>, Option<Id<ChannelMarker>>>);

impl ChannelKinds {
    fn insert(&mut self, id: Id<ChannelMarker>, parent: Option<Id<ChannelMarker>>) {
        if self.0.len() >= CHANNEL_CACHE_CAP && !self.0.contains_key(&id) {
            self.0.clear();
        }
        self.0.insert(id, parent);
    }

    fn record(&mut self, channel: &Channel) {
        let parent = if channel.kind.is_thread() { channel.parent_id } else { None };
        self.insert(channel.id, parent);
    }
}

/// Bounded set of the bot's own recent message ids.
#[derive(Default)]
struct RecentIds {
    order: VecDeque<Id<MessageMarker>>,
    set: HashSet<Id<MessageMarker>>,
}

impl RecentIds {
    fn insert(&mut self, id: Id<MessageMarker>) {
        if self.set.insert(id) {
            self.order.push_back(id);
            if self.order.len() > SENT_IDS_CAP {
                if let Some(old) = self.order.pop_front() {
                    self.set.remove(&old);
                }
            }
        }
    }

    fn contains(&self, id: &str) -> bool {
        id.parse::<Id<MessageMarker>>().is_ok_and(|id| self.set.contains(&id))
    }
}

/// Why a REST call of the runner failed.
enum RestError {
    /// 401: the token is invalid or revoked.
    Unauthorized(String),
    /// Anything else (network, timeout, 5xx, unexpected body).
    Other(String),
}

impl RestError {
    fn from_http(e: twilight_http::Error) -> RestError {
        use twilight_http::error::ErrorType;
        let unauthorized = match e.kind() {
            ErrorType::Unauthorized => true,
            ErrorType::Response { status, .. } => status.get() == 401,
            _ => false,
        };
        if unauthorized {
            RestError::Unauthorized(e.to_string())
        } else {
            RestError::Other(e.to_string())
        }
    }

    fn into_run_error(self, what: &str) -> RunError {
        match self {
            RestError::Unauthorized(m) => RunError::Fatal(format!("token rejected: {what}: {m}")),
            RestError::Other(m) => RunError::Retryable(format!("{what} failed: {m}")),
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
            Some(r.unwrap_or_else(|_| Err(RestError::Other(format!("{what} timed out after {} s", limit.as_secs())))))
        }
    }
}

/// The connection side of one Discord account. See the module docs for what one `run` does.
pub struct DiscordRunner {
    account: Arc<ResolvedDiscordAccount>,
    api: ApiRoot,
}

impl fmt::Debug for DiscordRunner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DiscordRunner").field("account", &self.account.account_id).field("api", &self.api).finish()
    }
}

impl DiscordRunner {
    /// A runner for `account`. Errors: the `apiRoot` shape (see [`ApiRoot::parse`]).
    pub fn new(account: Arc<ResolvedDiscordAccount>) -> Result<Self, String> {
        let api = ApiRoot::parse(&account.api_root)?;
        Ok(DiscordRunner { account, api })
    }

    /// A twilight-http client for one attempt (its rate limiter spawns a task, so this needs
    /// the runtime; a fresh client also forgets a previous attempt's 401).
    fn http(&self) -> twilight_http::Client {
        let mut builder = twilight_http::Client::builder().token(self.account.token.clone()).timeout(REST_TIMEOUT);
        if let Some((host, use_http)) = &self.api.proxy {
            builder = builder.proxy(host.clone(), *use_http);
        }
        builder.build()
    }

    async fn attempt(&self, ctx: AccountContext) -> Result<(), RunError> {
        install_crypto_provider();
        let http = self.http();
        let cancel = ctx.cancel.clone();
        let fail = |e: RunError| {
            ctx.status.error(e.to_string());
            Err(e)
        };

        let me = bounded(&cancel, REST_TIMEOUT, "GET /users/@me", async {
            let resp = http.current_user().await.map_err(RestError::from_http)?;
            resp.model().await.map_err(|e| RestError::Other(e.to_string()))
        })
        .await;
        let me = match me {
            None => return Ok(()),
            Some(Err(e)) => return fail(e.into_run_error("GET /users/@me")),
            Some(Ok(me)) => me,
        };
        let bot = BotIdentity { id: me.id, name: me.name.clone() };
        ctx.status.detail("botUserId", bot.id.to_string());
        ctx.status.detail("botUsername", bot.name.clone());

        let gateway_url = match &self.account.gateway_url {
            Some(url) => url.clone(),
            None => {
                let info = bounded(&cancel, GATEWAY_LOOKUP_TIMEOUT, "GET /gateway/bot", async {
                    let resp = http.gateway().authed().await.map_err(RestError::from_http)?;
                    resp.model().await.map_err(|e| RestError::Other(e.to_string()))
                })
                .await;
                match info {
                    None => return Ok(()),
                    Some(Err(e)) => return fail(e.into_run_error("GET /gateway/bot")),
                    Some(Ok(info)) => info.url.trim_end_matches('/').to_string(),
                }
            }
        };

        let mut intents = Intents::GUILDS | Intents::GUILD_MESSAGES | Intents::DIRECT_MESSAGES;
        if self.account.message_content_intent {
            intents |= Intents::MESSAGE_CONTENT;
        }
        let mut builder = ConfigBuilder::new(self.account.token.clone(), intents).proxy_url(gateway_url);
        let resume = ctx.resume.as_deref().and_then(|s| ResumeState::decode(s, &self.account.token));
        if let Some(r) = &resume {
            builder = builder.session(Session::new(r.sequence, r.session_id.clone()));
            if let Some(url) = &r.resume_url {
                builder = builder.resume_url(url.clone());
            }
        }
        let mut shard = Shard::with_config(ShardId::ONE, builder.build());
        let mut conn = Connection {
            ctx: &ctx,
            account: &self.account,
            http: &http,
            bot,
            session_id: resume.as_ref().map(|r| r.session_id.clone()),
            resume_url: resume.as_ref().and_then(|r| r.resume_url.clone()),
            acked_seq: resume.as_ref().map_or(0, |r| r.sequence),
            channels: ChannelKinds::default(),
            sent: RecentIds::default(),
            last_hb_sent: None,
            last_hb_ack: None,
            reconnect_failures: 0,
            not_ready_deadline: Some(Instant::now() + READY_TIMEOUT),
            live: false,
        };
        match conn.pump(&mut shard).await {
            Ok(()) => Ok(()),
            Err(e) => fail(e),
        }
    }
}

impl AccountRunner for DiscordRunner {
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

/// State of one attempt's live shard.
struct Connection<'a> {
    ctx: &'a AccountContext,
    account: &'a ResolvedDiscordAccount,
    http: &'a twilight_http::Client,
    bot: BotIdentity,
    session_id: Option<String>,
    resume_url: Option<String>,
    /// Sequence of the last dispatch fully handled (saved as the resume point).
    acked_seq: u64,
    channels: ChannelKinds,
    sent: RecentIds,
    last_hb_sent: Option<std::time::Instant>,
    last_hb_ack: Option<std::time::Instant>,
    reconnect_failures: u32,
    /// When set, the attempt gives up unless READY/RESUMED arrives before it.
    not_ready_deadline: Option<Instant>,
    /// READY/RESUMED was seen and no disconnect since.
    live: bool,
}

impl Connection<'_> {
    /// The read loop; returns when the attempt ends (after closing on cancellation).
    async fn pump(&mut self, shard: &mut Shard) -> Result<(), RunError> {
        let cancel = self.ctx.cancel.clone();
        let mut tick = tokio::time::interval(LATENCY_POLL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            let deadline = self.not_ready_deadline;
            let item = tokio::select! {
                biased;
                _ = cancel.cancelled() => return self.close(shard).await,
                _ = tokio::time::sleep_until(deadline.unwrap_or_else(Instant::now)), if deadline.is_some() => {
                    self.save_resume();
                    return Err(RunError::Retryable(
                        "gateway connection not ready in time (gave up waiting for READY/RESUMED)".into(),
                    ));
                }
                _ = tick.tick() => {
                    self.observe(shard);
                    continue;
                }
                item = shard.next() => item,
            };
            let flow = match item {
                None => {
                    self.save_resume();
                    return Err(if shard.state() == ShardState::FatallyClosed {
                        RunError::Fatal("the gateway closed the connection for good".into())
                    } else {
                        RunError::Retryable("the gateway stream ended".into())
                    });
                }
                Some(Err(e)) => {
                    if matches!(e.kind(), ReceiveMessageErrorType::Reconnect) {
                        self.reconnect_failures += 1;
                        let message = format!("gateway reconnect failed: {e}");
                        tracing::warn!(account = %self.account.account_id, failures = self.reconnect_failures, "{message}");
                        self.ctx.status.error(message.clone());
                        if self.reconnect_failures >= MAX_RECONNECT_FAILURES {
                            self.save_resume();
                            return Err(RunError::Retryable(message));
                        }
                    } else {
                        tracing::warn!(account = %self.account.account_id, error = %e, "discord gateway frame skipped");
                    }
                    Flow::Continue
                }
                Some(Ok(WsMessage::Close(frame))) => {
                    self.on_close(shard, frame).await?;
                    Flow::Continue
                }
                Some(Ok(WsMessage::Text(json))) => {
                    self.ctx.status.event();
                    self.on_text(json).await
                }
            };
            self.observe(shard);
            match flow {
                Flow::Continue => {}
                Flow::Cancelled => return self.close(shard).await,
                Flow::SinkClosed => {
                    tracing::info!(account = %self.account.account_id, "inbound sink closed; waiting for stop");
                    cancel.cancelled().await;
                    return self.close(shard).await;
                }
            }
        }
    }

    /// A close frame (from the gateway, or twilight's synthetic 1006 after a transport
    /// error). Fatal codes end the attempt; others start the reconnect grace period while
    /// twilight reconnects.
    async fn on_close(&mut self, shard: &mut Shard, frame: Option<CloseFrame<'static>>) -> Result<(), RunError> {
        let (code, reason) = frame.as_ref().map_or((None, String::new()), |f| (Some(f.code), f.reason.to_string()));
        let text = match code {
            Some(c) => format!("gateway closed the connection: {c} {reason}").trim_end().to_string(),
            None => "gateway closed the connection".to_string(),
        };
        self.lost(text.clone());
        let fatal = code.and_then(|c| CloseCode::try_from(c).ok()).is_some_and(|c| !c.can_reconnect());
        if fatal || shard.state() == ShardState::FatallyClosed {
            // twilight closes the socket on the next poll and then ends the stream.
            let _ = tokio::time::timeout(Duration::from_secs(1), shard.next()).await;
            self.ctx.status.save_resume(None);
            return Err(RunError::Fatal(text));
        }
        tracing::info!(account = %self.account.account_id, "{text}; twilight reconnects");
        Ok(())
    }

    /// One text frame: parse the events we care about and act on them.
    async fn on_text(&mut self, json: String) -> Flow {
        let seq = GatewayEventDeserializer::from_json(&json).and_then(|d| d.sequence());
        let event = match twilight_gateway::parse(json, wanted_events()) {
            Ok(Some(event)) => Event::from(event),
            Ok(None) => {
                self.ack(seq);
                return Flow::Continue;
            }
            Err(e) => {
                tracing::warn!(account = %self.account.account_id, error = %e, "discord event not understood; skipped");
                self.ack(seq);
                return Flow::Continue;
            }
        };
        let flow = match event {
            Event::Ready(ready) => {
                self.bot = BotIdentity { id: ready.user.id, name: ready.user.name.clone() };
                self.session_id = Some(ready.session_id.clone());
                self.resume_url = Some(ready.resume_gateway_url.trim_end_matches('/').to_string());
                self.acked_seq = seq.unwrap_or(0);
                self.on_ready();
                Flow::Continue
            }
            Event::Resumed => {
                self.on_ready();
                Flow::Continue
            }
            Event::GatewayHello(hello) => {
                self.ctx.status.heartbeat_interval(Duration::from_millis(hello.heartbeat_interval));
                Flow::Continue
            }
            Event::GatewayReconnect => {
                self.lost("gateway requested a reconnect (op 7)".into());
                Flow::Continue
            }
            Event::GatewayInvalidateSession(resumable) => {
                self.lost(format!("gateway invalidated the session (resumable: {resumable})"));
                if !resumable {
                    self.session_id = None;
                    self.resume_url = None;
                }
                Flow::Continue
            }
            Event::GuildCreate(guild) => {
                if let GuildCreate::Available(guild) = &*guild {
                    for channel in guild.channels.iter().chain(&guild.threads) {
                        self.channels.record(channel);
                    }
                }
                Flow::Continue
            }
            Event::ChannelCreate(channel) => {
                self.channels.record(&channel.0);
                Flow::Continue
            }
            Event::ThreadCreate(thread) => {
                self.channels.record(&thread.0);
                Flow::Continue
            }
            Event::ThreadUpdate(thread) => {
                self.channels.record(&thread.0);
                Flow::Continue
            }
            Event::ThreadListSync(sync) => {
                for thread in &sync.threads {
                    self.channels.record(thread);
                }
                Flow::Continue
            }
            Event::ThreadDelete(thread) => {
                self.channels.0.remove(&thread.id);
                Flow::Continue
            }
            Event::MessageCreate(msg) => {
                let flow = self.on_message(&msg.0).await;
                if matches!(flow, Flow::Continue) {
                    self.ack(seq);
                    self.save_resume();
                }
                return flow;
            }
            _ => Flow::Continue,
        };
        self.ack(seq);
        flow
    }

    fn ack(&mut self, seq: Option<u64>) {
        if let Some(seq) = seq {
            self.acked_seq = seq;
        }
    }

    fn on_ready(&mut self) {
        self.live = true;
        self.ctx.status.ready();
        if let Some(id) = &self.session_id {
            self.ctx.status.detail("sessionId", id.clone());
        }
        self.ctx.status.detail("botUserId", self.bot.id.to_string());
        self.ctx.status.detail("botUsername", self.bot.name.clone());
        self.reconnect_failures = 0;
        self.not_ready_deadline = None;
        self.save_resume();
    }

    /// One `MESSAGE_CREATE`: the bot's own messages are remembered (not delivered); system
    /// messages are skipped; user messages are delivered and awaited.
    async fn on_message(&mut self, msg: &Message) -> Flow {
        if msg.author.id == self.bot.id {
            self.sent.insert(msg.id);
            return Flow::Continue;
        }
        if !matches!(msg.kind, MessageType::Regular | MessageType::Reply) {
            return Flow::Continue;
        }
        let parent = if msg.guild_id.is_some() {
            match self.thread_parent(msg.channel_id).await {
                Some(parent) => parent,
                None => return Flow::Cancelled,
            }
        } else {
            None
        };
        let parent = parent.map(|p| p.to_string());
        let sent = &self.sent;
        let inbound = to_inbound(msg, &self.bot, parent.as_deref(), &self.ctx.account, &|id| sent.contains(id));
        self.ctx.status.inbound();
        tokio::select! {
            biased;
            _ = self.ctx.cancel.cancelled() => Flow::Cancelled,
            r = self.ctx.inbound.deliver(inbound) => match r {
                Ok(()) => Flow::Continue,
                Err(_) => Flow::SinkClosed,
            },
        }
    }

    /// The parent of `channel` when it is a thread (`Some(None)` when it is not), from the
    /// cache or `GET /channels/{id}`. `None` when cancelled meanwhile. A channel the bot
    /// cannot read (403/404) is cached as "not a thread"; other failures are not cached.
    async fn thread_parent(&mut self, channel: Id<ChannelMarker>) -> Option<Option<Id<ChannelMarker>>> {
        if let Some(parent) = self.channels.0.get(&channel) {
            return Some(*parent);
        }
        let http = self.http;
        let lookup = async {
            match http.channel(channel).await {
                Ok(resp) => resp.model().await.map_err(|e| (None, e.to_string())),
                Err(e) => {
                    let status = match e.kind() {
                        twilight_http::error::ErrorType::Response { status, .. } => Some(status.get()),
                        _ => None,
                    };
                    Err((status, e.to_string()))
                }
            }
        };
        let fetched = tokio::select! {
            _ = self.ctx.cancel.cancelled() => return None,
            r = tokio::time::timeout(REST_TIMEOUT, lookup) => r,
        };
        let error = match fetched {
            Ok(Ok(ch)) => {
                self.channels.record(&ch);
                return Some(self.channels.0.get(&channel).copied().flatten());
            }
            Ok(Err((status, message))) => {
                if matches!(status, Some(403 | 404)) {
                    self.channels.insert(channel, None);
                }
                message
            }
            Err(_) => format!("timed out after {} s", REST_TIMEOUT.as_secs()),
        };
        tracing::warn!(account = %self.account.account_id, %channel, %error, "GET /channels/{{id}} failed; treating the channel as not a thread");
        Some(None)
    }

    /// The connection is down (twilight reconnects by itself): report it and start the
    /// reconnect grace period.
    fn lost(&mut self, why: String) {
        self.live = false;
        self.ctx.status.disconnected(why);
        self.not_ready_deadline.get_or_insert(Instant::now() + RECONNECT_GRACE);
    }

    /// Sample the shard after each frame and every [`LATENCY_POLL`]: heartbeat facts, and a
    /// drop twilight handled silently (an EOF without a close frame yields no message; the
    /// shard just leaves `Active` and reconnects).
    fn observe(&mut self, shard: &Shard) {
        if self.live && shard.state() != ShardState::Active {
            self.lost("the gateway connection dropped; reconnecting".into());
        }
        self.report_latency(shard);
    }

    /// Report heartbeat facts when the shard's latency record changed.
    fn report_latency(&mut self, shard: &Shard) {
        let latency = shard.latency();
        if latency.sent() != self.last_hb_sent {
            self.last_hb_sent = latency.sent();
            if self.last_hb_sent.is_some() {
                self.ctx.status.heartbeat_sent();
            }
        }
        if latency.received() != self.last_hb_ack {
            self.last_hb_ack = latency.received();
            if self.last_hb_ack.is_some() {
                self.ctx.status.heartbeat_acked();
            }
        }
    }

    fn save_resume(&self) {
        if let Some(session_id) = &self.session_id {
            let state = ResumeState {
                token: discord_token_digest(&self.account.token),
                session_id: session_id.clone(),
                sequence: self.acked_seq,
                resume_url: self.resume_url.clone(),
            };
            self.ctx.status.save_resume(Some(state.encode()));
        }
    }

    /// Requested stop: close with 4000 (the session stays resumable), wait for the gateway's
    /// close frame (bounded by [`CLOSE_TIMEOUT`]), save the resume point, return `Ok`. A shard
    /// that is between connections has no socket to close and is just dropped.
    async fn close(&mut self, shard: &mut Shard) -> Result<(), RunError> {
        let live = !matches!(shard.state(), ShardState::Disconnected { .. } | ShardState::FatallyClosed);
        if live {
            shard.close(CloseFrame::RESUME);
            let drained = tokio::time::timeout(CLOSE_TIMEOUT, async {
                while let Some(item) = shard.next().await {
                    if matches!(item, Ok(WsMessage::Close(_))) {
                        break;
                    }
                }
            })
            .await;
            if drained.is_err() {
                tracing::warn!(account = %self.account.account_id, "discord close handshake timed out");
            }
        }
        self.save_resume();
        self.ctx.status.disconnected("closed: stop requested");
        Ok(())
    }
}

/// The outbound side of one Discord account: one `POST /channels/{id}/messages` per call
/// ([Discord docs: Create Message]) with reqwest rather than twilight-http, because
/// twilight-http 0.17 retries 429 responses internally (its `ResponseFuture` loops until the
/// request succeeds), and the delivery worker must see a 429 with its `retry_after` to own
/// retries and the attempt count.
///
/// Body: `content`; `nonce` (see [`DiscordSender::nonce`]) with `enforce_nonce: true`, so a
/// retried send of the same row within Discord's window returns the first message instead
/// of posting twice; `message_reference: {message_id, fail_if_not_exists: false}` when the
/// target has `reply_to_id`; `allowed_mentions: {parse: ["users"], replied_user: true}` (a
/// reply never pings `@everyone`/`@here` or roles). The channel is `target.thread_id` when
/// set (a thread is a channel), else `target.to`.
///
/// Errors: 429 → retryable with `retry_after` (body seconds, else the `Retry-After` header);
/// 408, 5xx, network errors and timeouts → retryable; other statuses (400, 401, 403, 404 ...)
/// → fatal with Discord's `message` and `code`.
///
/// [Discord docs: Create Message]: https://discord.com/developers/docs/resources/message#create-message
pub struct DiscordSender {
    client: reqwest::Client,
    api_root: String,
    authorization: String,
    text_chunk_limit: usize,
}

impl fmt::Debug for DiscordSender {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DiscordSender")
            .field("api_root", &self.api_root)
            .field("authorization", &"<redacted>")
            .field("text_chunk_limit", &self.text_chunk_limit)
            .finish()
    }
}

impl DiscordSender {
    /// A sender for `account` (`apiRoot`, token, `textChunkLimit`); requests time out after
    /// [`REST_TIMEOUT`]. Errors: the HTTP client cannot be built.
    pub fn new(account: &ResolvedDiscordAccount) -> Result<Self, String> {
        let client = reqwest::Client::builder()
            .timeout(REST_TIMEOUT)
            .user_agent(USER_AGENT)
            .build()
            .map_err(|e| format!("cannot build the HTTP client: {e}"))?;
        Ok(DiscordSender {
            client,
            api_root: account.api_root.trim_end_matches('/').to_string(),
            authorization: format!("Bot {}", account.token),
            text_chunk_limit: account.text_chunk_limit,
        })
    }

    /// The nonce of `msg`: `p` + 24 hex digits of SHA-256 over the outbox id, idempotency
    /// key, destination and text (25 chars, Discord's maximum). The same row always gets the
    /// same nonce; the id alone is not enough, because outbox ids restart with a new state
    /// directory and Discord would then return an older message with the same nonce.
    pub fn nonce(msg: &OutboundMessage) -> String {
        let mut h = Sha256::new();
        for part in [
            msg.outbox_id.to_string().as_str(),
            &msg.idempotency_key,
            &msg.target.to,
            msg.target.thread_id.as_deref().unwrap_or(""),
            &msg.text,
        ] {
            h.update(part.as_bytes());
            h.update([0u8]);
        }
        format!("p{}", &hex::encode(h.finalize())[..24])
    }

    async fn post(&self, msg: &OutboundMessage) -> Result<SendReceipt, SendError> {
        let channel = msg.target.thread_id.as_deref().unwrap_or(&msg.target.to);
        if channel.parse::<Id<ChannelMarker>>().is_err() {
            return Err(SendError::Fatal { message: format!("invalid Discord channel id \"{channel}\"") });
        }
        let mut body = serde_json::json!({
            "content": msg.text,
            "nonce": Self::nonce(msg),
            "enforce_nonce": true,
            "allowed_mentions": {"parse": ["users"], "replied_user": true},
        });
        if let Some(reply_to) = &msg.target.reply_to_id {
            body["message_reference"] = serde_json::json!({"message_id": reply_to, "fail_if_not_exists": false});
        }
        let url = format!("{}/channels/{channel}/messages", self.api_root);
        let resp =
            self.client.post(&url).header("Authorization", &self.authorization).json(&body).send().await.map_err(
                |e| SendError::Retryable { message: format!("Discord request failed: {e}"), retry_after_ms: None },
            )?;
        let status = resp.status().as_u16();
        let header_retry =
            resp.headers().get("retry-after").and_then(|v| v.to_str().ok()).and_then(|v| v.trim().parse::<f64>().ok());
        let text = resp.text().await.unwrap_or_default();
        let json: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
        if (200..300).contains(&status) {
            let id = json.get("id").and_then(|v| v.as_str()).map(str::to_string);
            return Ok(SendReceipt { platform_message_id: id });
        }
        let message = match (json.get("message").and_then(|m| m.as_str()), json.get("code")) {
            (Some(m), Some(code)) => format!("Discord answered HTTP {status}: {m} (code {code})"),
            (Some(m), None) => format!("Discord answered HTTP {status}: {m}"),
            _ => format!("Discord answered HTTP {status}: {}", text.chars().take(200).collect::<String>()),
        };
        if status == 429 {
            let secs = json.get("retry_after").and_then(|v| v.as_f64()).or(header_retry);
            let retry_after_ms = secs.filter(|s| s.is_finite() && *s >= 0.0).map(|s| (s * 1000.0).ceil() as u64);
            return Err(SendError::Retryable { message, retry_after_ms });
        }
        if status == 408 || status >= 500 {
            return Err(SendError::Retryable { message, retry_after_ms: None });
        }
        Err(SendError::Fatal { message })
    }
}

impl ChannelSender for DiscordSender {
    fn send<'a>(&'a self, msg: &'a OutboundMessage) -> BoxFuture<'a, Result<SendReceipt, SendError>> {
        Box::pin(self.post(msg))
    }

    // `reconcile` keeps the default `Unknown`: Discord has no lookup of a message by nonce,
    // so a row left `sending` by a crash cannot be proven sent or not sent. (A re-send within
    // a few minutes would be deduplicated by `enforce_nonce`, but the worker does not re-send
    // unknown rows blindly.)

    fn text_chunk_limit(&self) -> usize {
        self.text_chunk_limit
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pincer_core::config::parse;
    use pincer_core::DeliveryTarget;
    use serde_json::json;

    const BOT: u64 = 900;

    fn bot() -> BotIdentity {
        BotIdentity { id: Id::new(BOT), name: "pincer".into() }
    }

    fn user(id: u64, name: &str, bot: bool) -> serde_json::Value {
        json!({"id": id.to_string(), "username": name, "global_name": null, "discriminator": "0", "avatar": null, "bot": bot, "public_flags": 0})
    }

    /// A MESSAGE_CREATE payload as Discord sends it.
    fn message(overrides: serde_json::Value) -> Message {
        let mut m = json!({
            "id": "1001",
            "channel_id": "200",
            "author": user(300, "alice", false),
            "content": "hello",
            "timestamp": "2024-05-01T12:00:00.123000+00:00",
            "edited_timestamp": null,
            "tts": false,
            "mention_everyone": false,
            "mentions": [],
            "mention_roles": [],
            "attachments": [],
            "embeds": [],
            "pinned": false,
            "type": 0,
        });
        for (k, v) in overrides.as_object().unwrap() {
            m[k] = v.clone();
        }
        serde_json::from_value(m).expect("fixture is a valid Discord message")
    }

    fn inbound(m: &Message, parent: Option<&str>) -> Inbound {
        to_inbound(m, &bot(), parent, &AccountId::new("work"), &|id| id == "555")
    }

    #[test]
    fn dm_becomes_direct_with_author_as_peer() {
        let m = message(
            json!({"content": "hi there", "author": {"id": "300", "username": "alice", "global_name": "Alice A", "discriminator": "0", "avatar": null}}),
        );
        let i = inbound(&m, None);
        assert_eq!(i.channel.as_str(), "discord");
        assert_eq!(i.account.as_str(), "work");
        assert_eq!(i.chat_kind, ChatKind::Direct);
        assert_eq!((i.peer_id.as_str(), i.chat_id.as_str()), ("300", "200"));
        assert_eq!(i.guild_id, None);
        assert_eq!(i.thread_id, None);
        assert_eq!(i.author, Author { id: "300".into(), name: Some("Alice A".into()), is_bot: false, is_self: false });
        assert_eq!(i.message_id, "1001");
        assert_eq!(i.text, "hi there");
        assert_eq!(i.ts_ms, 1_714_564_800_123);
        assert_eq!(i.mentions, MentionFacts { can_detect: true, ..Default::default() });
    }

    #[test]
    fn guild_message_with_mention_and_roles() {
        let m = message(json!({
            "guild_id": "77",
            "content": "<@!900>  what's up <@900>",
            "mentions": [user(BOT, "pincer", true)],
            "member": {"roles": ["5", "6"], "joined_at": "2024-01-01T00:00:00+00:00", "deaf": false, "mute": false, "flags": 0},
        }));
        let i = inbound(&m, None);
        assert_eq!(i.chat_kind, ChatKind::Channel);
        assert_eq!((i.peer_id.as_str(), i.chat_id.as_str()), ("200", "200"));
        assert_eq!(i.guild_id.as_deref(), Some("77"));
        assert_eq!(i.member_roles, ["5", "6"]);
        assert!(i.mentions.native && !i.mentions.reply_to_bot);
        assert_eq!(i.text, "what's up <@900>", "only the leading mention is stripped");
        assert_eq!(i.author.name.as_deref(), Some("alice"), "username when there is no global name");
    }

    #[test]
    fn thread_message_uses_the_parent_as_peer() {
        let m = message(json!({"guild_id": "77", "channel_id": "250"}));
        let i = inbound(&m, Some("200"));
        assert_eq!(i.peer_id, "200");
        assert_eq!(i.parent_peer_id.as_deref(), Some("200"));
        assert_eq!(i.thread_id.as_deref(), Some("250"));
        assert_eq!(i.chat_id, "250");
    }

    #[test]
    fn reply_to_bot_is_its_own_fact_not_a_native_mention() {
        let referenced = json!({
            "id": "444", "channel_id": "200", "author": user(BOT, "pincer", true), "content": "earlier answer",
            "timestamp": "2024-05-01T11:00:00+00:00", "edited_timestamp": null, "tts": false,
            "mention_everyone": false, "mentions": [], "mention_roles": [], "attachments": [], "embeds": [],
            "pinned": false, "type": 0,
        });
        let m = message(json!({
            "guild_id": "77", "type": 19, "content": "thanks",
            "mentions": [user(BOT, "pincer", true)],
            "message_reference": {"message_id": "444", "channel_id": "200"},
            "referenced_message": referenced,
        }));
        let i = inbound(&m, None);
        assert!(i.mentions.reply_to_bot);
        assert!(!i.mentions.native, "the reply ping is not an explicit mention");
        // Referenced message missing (deleted or not sent): known bot message ids still count.
        let m = message(json!({"guild_id": "77", "type": 19, "message_reference": {"message_id": "555"}}));
        assert!(inbound(&m, None).mentions.reply_to_bot);
        let m = message(json!({"guild_id": "77", "type": 19, "message_reference": {"message_id": "556"}}));
        assert!(!inbound(&m, None).mentions.reply_to_bot);
        // A forward of a bot message is not a reply.
        let m = message(json!({"guild_id": "77", "message_reference": {"type": 1, "message_id": "555"}}));
        assert!(!inbound(&m, None).mentions.reply_to_bot);
        // An explicit mention inside a reply still counts.
        let m = message(
            json!({"guild_id": "77", "type": 19, "content": "<@900> again", "message_reference": {"message_id": "555"}}),
        );
        let i = inbound(&m, None);
        assert!(i.mentions.native && i.mentions.reply_to_bot);
    }

    #[test]
    fn own_and_bot_authors_are_flagged() {
        let own = message(json!({"author": user(BOT, "pincer", true)}));
        let i = inbound(&own, None);
        assert!(i.author.is_self && i.author.is_bot);
        let other = message(json!({"author": user(301, "otherbot", true)}));
        let i = inbound(&other, None);
        assert!(!i.author.is_self && i.author.is_bot);
    }

    #[test]
    fn resume_state_round_trips_and_rejects_another_token() {
        let s = ResumeState {
            token: discord_token_digest("tok-a"),
            session_id: "sess".into(),
            sequence: 42,
            resume_url: Some("wss://resume.example".into()),
        };
        let json = s.encode();
        assert!(!json.contains("tok-a"));
        assert_eq!(ResumeState::decode(&json, "tok-a"), Some(s));
        assert_eq!(ResumeState::decode(&json, "tok-b"), None);
        assert_eq!(ResumeState::decode("not json", "tok-a"), None);
        assert_eq!(ResumeState::decode(r#"{"token":"x","sessionId":"s","sequence":1}"#, "tok-a"), None);
    }

    #[test]
    fn api_root_to_twilight_proxy() {
        assert_eq!(ApiRoot::parse("https://discord.com/api/v10/").unwrap().proxy, None);
        assert_eq!(
            ApiRoot::parse("http://127.0.0.1:4000/api/v10").unwrap().proxy,
            Some(("127.0.0.1:4000".to_string(), true))
        );
        assert_eq!(
            ApiRoot::parse("https://proxy.internal/api/v10").unwrap(),
            ApiRoot { url: "https://proxy.internal/api/v10".into(), proxy: Some(("proxy.internal".into(), false)) }
        );
        for bad in [
            "http://127.0.0.1:4000",
            "http://host/api/v9",
            "http://host/prefix/api/v10",
            "ftp://h/api/v10",
            "http:///api/v10",
        ] {
            assert!(ApiRoot::parse(bad).unwrap_err().contains("apiRoot must be"), "{bad}");
        }
    }

    fn config(text: &str) -> Config {
        parse(text, &|_| None).unwrap().config
    }

    #[test]
    fn build_accounts_specs_and_problems() {
        let cfg = config(
            r#"{channels: {discord: {token: "base", accounts: {
                a: {}, b: {token: "other", healthMonitor: {enabled: false}}, c: {token: "base"},
                d: {token: "x", apiRoot: "http://127.0.0.1:9"}, e: {enabled: false},
            }}}}"#,
        );
        let built = build_accounts(&cfg, &|_| None);
        assert_eq!(built.len(), 4);
        let a = built[0].as_ref().unwrap();
        assert_eq!((a.channel.as_str(), a.account.as_str()), ("discord", "a"));
        assert!(a.health_monitor && a.runner.is_some());
        assert_eq!(a.sender.text_chunk_limit(), 2000);
        assert!(!a.fingerprint.contains("base") && a.fingerprint.contains("sha256:"));
        let b = built[1].as_ref().unwrap();
        assert!(!b.health_monitor);
        assert_ne!(a.fingerprint, b.fingerprint);
        let c = built[2].as_ref().err().unwrap();
        assert_eq!(c.account.as_str(), "c");
        assert!(c.message.contains("same bot token as account \"a\""), "{}", c.message);
        let d = built[3].as_ref().err().unwrap();
        assert!(d.message.contains("apiRoot must be"), "{}", d.message);

        let env = |k: &str| (k == "DISCORD_BOT_TOKEN").then(|| "env".to_string());
        let built = build_accounts(&config("{channels: {discord: {}}}"), &env);
        assert_eq!(built[0].as_ref().unwrap().account.as_str(), "default");
        let built = build_accounts(&config("{channels: {discord: {}}}"), &|_| None);
        assert!(built[0].as_ref().err().unwrap().message.starts_with("no token"));
        assert!(build_accounts(&config("{}"), &|_| None).is_empty());
    }

    #[test]
    fn wake_policy_and_reply_mode_from_config() {
        let cfg = config(
            r#"{channels: {discord: {replyToMode: "first", dmPolicy: "open", allowFrom: ["*"],
                accounts: {work: {}, off: {enabled: false}}}}}"#,
        );
        let m = message(json!({}));
        let mut i = inbound(&m, None);
        i.account = AccountId::new("work");
        let p = wake_policy(&cfg, &i);
        assert_eq!(p.dm_policy, DmPolicy::Open);
        assert!(p.dm_sender_allowed);
        i.account = AccountId::new("off");
        let p = wake_policy(&cfg, &i);
        assert_eq!((p.dm_policy, p.group_policy), (DmPolicy::Disabled, GroupPolicy::Disabled));
        assert_eq!(reply_to_mode(&cfg, &AccountId::new("work")), ReplyToMode::First);
        assert_eq!(reply_to_mode(&cfg, &AccountId::new("nope")), ReplyToMode::Off);
    }

    #[test]
    fn nonce_is_stable_per_row_and_fits_discord() {
        let msg = OutboundMessage {
            outbox_id: 7,
            idempotency_key: "run-1:0".into(),
            target: DeliveryTarget {
                channel: ChannelId::new("discord"),
                account: AccountId::default(),
                to: "200".into(),
                thread_id: None,
                reply_to_id: None,
            },
            text: "hello".into(),
        };
        let n = DiscordSender::nonce(&msg);
        assert_eq!(n.len(), 25);
        assert_eq!(n, DiscordSender::nonce(&msg.clone()));
        let mut other = msg.clone();
        other.text = "hello again".into();
        assert_ne!(n, DiscordSender::nonce(&other));
    }

    #[test]
    fn recent_ids_are_bounded() {
        let mut r = RecentIds::default();
        for i in 1..=(SENT_IDS_CAP as u64 + 10) {
            r.insert(Id::new(i));
        }
        assert!(!r.contains("1") && r.contains(&(SENT_IDS_CAP as u64 + 10).to_string()));
        assert_eq!(r.set.len(), SENT_IDS_CAP);
        assert!(!r.contains("not-a-number"));
    }
}
