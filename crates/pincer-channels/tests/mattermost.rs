//! The Mattermost adapter end to end against `pincer_testkit::FakeMattermost`: the runner's
//! lifecycle (authentication, inbound facts, close on cancel, resume of the saved connection
//! after a drop and after a dead socket, fatal errors) and the sender (posts with the right
//! `root_id`, typing, error mapping). Every wait is on an event (an inbound message, a fake
//! counter, the end of `run`), bounded by a timeout. The tests run on tokio's current-thread
//! runtime, so a test's synchronous fake controls happen before any other task runs.

#![cfg(feature = "channel-mattermost")]

use pincer_channels::mattermost::build_accounts;
use pincer_channels::{
    AccountContext, AccountSpec, BoxFuture, InboundSink, OutboundMessage, RunError, SendError, SinkClosed,
    StatusReporter,
};
use pincer_core::config::parse;
use pincer_core::{AccountId, ChannelId, ChatKind, DeliveryTarget, Inbound};
use pincer_testkit::mattermost::{ChannelSpec, CloseBy, PostSpec, TeamSpec};
use pincer_testkit::FakeMattermost;
use serde_json::Value;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

const TOKEN: &str = "mm-bot-token-1";
const BOT: &str = "b0t00000000000000000000001";
const ALICE: &str = "a11ce000000000000000000001";
const TEAM: &str = "team0000000000000000000001";
const CHAN: &str = "chan0000000000000000000001";
const PRIV: &str = "priv0000000000000000000001";
const GROUP: &str = "gr0up000000000000000000001";
const DM: &str = "dm000000000000000000000001";
const NOT_MEMBER: &str = "n0tmember00000000000000001";
const T: Duration = Duration::from_secs(15);

/// Collects delivered messages.
struct Collect(mpsc::UnboundedSender<Inbound>);

impl InboundSink for Collect {
    fn deliver(&self, inbound: Inbound) -> BoxFuture<'_, Result<(), SinkClosed>> {
        let r = self.0.send(inbound).map_err(|_| SinkClosed);
        Box::pin(async move { r })
    }
}

async fn fake() -> FakeMattermost {
    let fake = FakeMattermost::start().await;
    fake.add_bot(TOKEN, BOT, "pincer");
    fake.add_user(ALICE, "alice", false);
    fake.add_team(TeamSpec::new(TEAM, "pincer-team", "Pincer Team").members([BOT, ALICE]));
    fake.add_channel(ChannelSpec::open(CHAN, TEAM, "town-square", "Town Square").members([BOT, ALICE]));
    fake.add_channel(ChannelSpec::private(PRIV, TEAM, "secret", "Secret").members([BOT, ALICE]));
    fake.add_channel(ChannelSpec::open(NOT_MEMBER, TEAM, "elsewhere", "Elsewhere").members([ALICE]));
    fake.add_channel(ChannelSpec::group(GROUP, "group-name", "alice, pincer", [BOT, ALICE]));
    fake.add_channel(ChannelSpec::direct(DM, BOT, ALICE));
    fake.set_overlap_grace(Duration::from_millis(300));
    fake
}

/// The account spec for `token` against `fake`, with `extra` config keys (JSON5 fragment).
fn spec(fake: &FakeMattermost, token: &str, extra: &str) -> AccountSpec {
    let text = format!(
        r#"{{channels: {{mattermost: {{botToken: "{token}", baseUrl: "{}/api/v4/", {extra}}}}}}}"#,
        fake.base_url()
    );
    let cfg = parse(&text, &|_| None).unwrap().config;
    build_accounts(&cfg, &|_| None, &reqwest::Client::new()).remove(0).unwrap()
}

struct Attempt {
    task: JoinHandle<Result<(), RunError>>,
    cancel: CancellationToken,
    status: StatusReporter,
    rx: mpsc::UnboundedReceiver<Inbound>,
}

fn start(spec: &AccountSpec, resume: Option<String>) -> Attempt {
    let (tx, rx) = mpsc::unbounded_channel();
    let cancel = CancellationToken::new();
    let status = StatusReporter::detached();
    let ctx = AccountContext {
        channel: ChannelId::new("mattermost"),
        account: spec.account.clone(),
        inbound: Arc::new(Collect(tx)),
        cancel: cancel.clone(),
        status: status.clone(),
        resume,
    };
    let runner = spec.runner.clone().expect("mattermost accounts have a runner");
    Attempt { task: tokio::spawn(runner.run(ctx)), cancel, status, rx }
}

impl Attempt {
    async fn next(&mut self) -> Inbound {
        tokio::time::timeout(T, self.rx.recv()).await.expect("timed out waiting for an inbound message").unwrap()
    }

    /// Wait for `run` to end by itself.
    async fn ended(self) -> (Result<(), RunError>, StatusReporter) {
        let r = tokio::time::timeout(T, self.task).await.expect("run did not end").unwrap();
        (r, self.status)
    }

    /// Cancel and require `run` to return `Ok` within 3 s (the close deadline).
    async fn stop(self) -> StatusReporter {
        self.cancel.cancel();
        let r = tokio::time::timeout(Duration::from_secs(3), self.task).await.expect("run did not return within 3 s");
        assert_eq!(r.unwrap(), Ok(()));
        self.status
    }
}

/// Waits until the attempt's authentication probe (the first `ping`) was answered: the
/// adapter reads that reply before any event broadcast afterwards, so the next inbound message
/// proves the attempt is ready.
async fn authenticated(fake: &FakeMattermost, answered_before: usize) {
    fake.wait_for(|f| f.pings_answered(TOKEN) > answered_before, T).await.unwrap();
}

fn target(to: &str, thread: Option<&str>, reply_to: Option<&str>) -> DeliveryTarget {
    DeliveryTarget {
        channel: ChannelId::new("mattermost"),
        account: AccountId::default(),
        to: to.into(),
        thread_id: thread.map(str::to_string),
        reply_to_id: reply_to.map(str::to_string),
    }
}

fn outbound(target: DeliveryTarget, outbox_id: i64, text: &str) -> OutboundMessage {
    OutboundMessage { outbox_id, idempotency_key: format!("run-{outbox_id}:0"), target, text: text.into() }
}

#[tokio::test]
async fn connects_delivers_posts_with_their_facts_and_closes_on_cancel() {
    let fake = fake().await;
    let spec = spec(&fake, TOKEN, "");
    let mut a = start(&spec, None);
    authenticated(&fake, 0).await;

    let dm = fake.user_post(PostSpec::new(DM, ALICE, "hi there"));
    let i = a.next().await;
    assert_eq!((i.channel.as_str(), i.account.as_str()), ("mattermost", "default"));
    assert_eq!(i.chat_kind, ChatKind::Direct);
    assert_eq!((i.peer_id.as_str(), i.chat_id.as_str(), i.message_id.as_str()), (ALICE, DM, dm.as_str()));
    assert_eq!((i.author.id.as_str(), i.author.name.as_deref()), (ALICE, Some("alice")));
    assert!(!i.author.is_bot && !i.author.is_self);
    assert_eq!(i.text, "hi there");
    assert!(i.mentions.can_detect && i.mentions.native && !i.mentions.reply_to_bot);
    assert!(i.ts_ms > 0);
    assert_eq!(i.thread_id, None);

    let status = a.status.snapshot();
    assert!(status.connected, "ready once the server confirmed authentication");
    assert_eq!(status.detail["botUserId"], BOT);
    assert_eq!(status.detail["botUsername"], "pincer");
    assert_eq!(status.detail["baseUrl"], fake.base_url().as_str());
    let connection_id = status.detail["connectionId"].as_str().unwrap().to_string();
    assert_eq!(connection_id.len(), 26);

    let mentioned = fake.user_post(PostSpec::new(CHAN, ALICE, "@pincer what's the status?"));
    let i = a.next().await;
    assert_eq!(i.message_id, mentioned);
    assert_eq!(i.chat_kind, ChatKind::Channel);
    assert_eq!((i.peer_id.as_str(), i.chat_id.as_str()), (CHAN, CHAN));
    assert_eq!(i.team_id.as_deref(), Some(TEAM));
    assert!(i.mentions.native);
    assert_eq!(i.text, "what's the status?");

    fake.user_post(PostSpec::new(CHAN, ALICE, "just chatting"));
    let i = a.next().await;
    assert!(!i.mentions.native && !i.mentions.reply_to_bot);
    fake.user_post(PostSpec::new(PRIV, ALICE, "private channel"));
    assert_eq!(a.next().await.chat_kind, ChatKind::Group, "P is a group");
    fake.user_post(PostSpec::new(GROUP, ALICE, "group message"));
    let i = a.next().await;
    assert_eq!((i.chat_kind, i.peer_id.as_str()), (ChatKind::Group, GROUP));

    // The bot's own post is not delivered: the next message is the one after it.
    let sent = spec.sender.send(&outbound(target(CHAN, None, None), 1, "my own words")).await.unwrap();
    let after = fake.user_post(PostSpec::new(CHAN, ALICE, "after the bot"));
    assert_eq!(a.next().await.message_id, after);
    assert!(sent.platform_message_id.is_some());

    let status = a.stop().await;
    fake.wait_live_sockets(TOKEN, 0, T).await.unwrap();
    let close = fake.close_log().pop().unwrap();
    assert_eq!((close.by, close.code), (CloseBy::Client, Some(1000)));
    let facts = status.snapshot();
    assert!(!facts.connected);
    let resume: Value = serde_json::from_str(facts.resume.as_deref().unwrap()).unwrap();
    assert_eq!(resume["connectionId"], connection_id.as_str());
    assert!(resume["sequenceNumber"].as_i64().unwrap() > 0);
    assert!(!facts.resume.unwrap().contains(TOKEN), "the resume state holds a digest, not the token");
    let upgrade = fake.requests().into_iter().find(|r| r.path == "/api/v4/websocket").unwrap();
    assert_eq!(upgrade.header("authorization"), Some(format!("Bearer {TOKEN}").as_str()));
    assert_eq!(upgrade.query, None, "nothing to resume on the first connection");
    fake.wait_for(|f| f.overlap_checks_pending() == 0, T).await.unwrap();
    assert_eq!(fake.max_live_sockets(TOKEN), 1);
}

#[tokio::test]
async fn replies_under_the_bots_post_are_reply_to_bot_and_under_a_human_post_are_not() {
    let fake = fake().await;
    let spec = spec(&fake, TOKEN, "");
    // The bot's root post exists before this runner starts, so its author is looked up.
    let root = spec
        .sender
        .send(&outbound(target(CHAN, None, None), 1, "Here is the plan."))
        .await
        .unwrap()
        .platform_message_id;
    let root = root.unwrap();
    let mut a = start(&spec, None);
    authenticated(&fake, 0).await;

    let reply = fake.user_post(PostSpec::new(CHAN, ALICE, "Looks good, thanks!").reply_to(&root));
    let i = a.next().await;
    assert_eq!(i.message_id, reply);
    assert_eq!(i.thread_id.as_deref(), Some(root.as_str()));
    assert!(i.mentions.reply_to_bot && !i.mentions.native);
    fake.user_post(PostSpec::new(CHAN, ALICE, "one more thing").reply_to(&root));
    assert!(a.next().await.mentions.reply_to_bot);
    let lookups = fake.requests().iter().filter(|r| r.path == format!("/api/v4/posts/{root}")).count();
    assert_eq!(lookups, 1, "the root's author is cached");

    let human_root = fake.user_post(PostSpec::new(CHAN, ALICE, "A question for the team"));
    assert_eq!(a.next().await.message_id, human_root);
    fake.user_post(PostSpec::new(CHAN, ALICE, "any ideas?").reply_to(&human_root));
    let i = a.next().await;
    assert_eq!(i.thread_id.as_deref(), Some(human_root.as_str()));
    assert!(!i.mentions.reply_to_bot);

    // A root the bot posts while connected is known from its own `posted` event.
    let own = spec.sender.send(&outbound(target(CHAN, None, None), 2, "Another answer")).await.unwrap();
    let own = own.platform_message_id.unwrap();
    fake.user_post(PostSpec::new(CHAN, ALICE, "thanks again").reply_to(&own));
    assert!(a.next().await.mentions.reply_to_bot);
    assert!(!fake.requests().iter().any(|r| r.path == format!("/api/v4/posts/{own}")));
    a.stop().await;
}

#[tokio::test]
async fn a_failed_root_lookup_skips_the_message_and_counts_it() {
    let fake = fake().await;
    let spec = spec(&fake, TOKEN, "");
    let mut a = start(&spec, None);
    authenticated(&fake, 0).await;
    let root = fake.user_post(PostSpec::new(PRIV, ALICE, "a root in a private channel"));
    assert_eq!(a.next().await.message_id, root);
    // The reply is broadcast to the bot, then the bot loses access to the channel before it
    // can look the root up (403).
    fake.user_post(PostSpec::new(PRIV, ALICE, "a reply").reply_to(&root));
    fake.add_channel(ChannelSpec::private(PRIV, TEAM, "secret", "Secret").members([ALICE]));
    let dm = fake.user_post(PostSpec::new(DM, ALICE, "still there?"));
    assert_eq!(a.next().await.message_id, dm, "the reply was skipped, the connection stayed up");
    let facts = a.status.snapshot();
    assert_eq!(facts.detail["skipped"], serde_json::json!({"parent_lookup_failed": 1}));
    assert!(fake.requests().iter().any(|r| r.path == format!("/api/v4/posts/{root}") && r.status == 403));
    a.stop().await;
}

#[tokio::test]
async fn a_dropped_socket_ends_the_attempt_and_the_next_one_resumes_with_the_missed_post() {
    let fake = fake().await;
    let spec = spec(&fake, TOKEN, "");
    let mut a = start(&spec, None);
    authenticated(&fake, 0).await;
    fake.user_post(PostSpec::new(DM, ALICE, "one"));
    assert_eq!(a.next().await.text, "one");

    assert_eq!(fake.drop_socket(TOKEN), 1);
    let (r, status) = a.ended().await;
    assert!(matches!(&r, Err(RunError::Retryable(_))), "{r:?}");
    let facts = status.snapshot();
    assert!(!facts.connected && facts.last_disconnect.is_some());
    let resume = facts.resume.clone().expect("resume state saved");

    // Posted while the bot has no socket: the server keeps it for the connection.
    let missed = fake.user_post(PostSpec::new(DM, ALICE, "sent while you were away"));
    let mut b = start(&spec, Some(resume.clone()));
    let i = b.next().await;
    assert_eq!((i.message_id.as_str(), i.text.as_str()), (missed.as_str(), "sent while you were away"));
    let stats = fake.stats(TOKEN);
    assert_eq!((stats.connections, stats.resumed, stats.fresh_connection_ids), (2, 1, 1));
    let saved: Value = serde_json::from_str(&resume).unwrap();
    let upgrade = fake.requests().into_iter().filter(|r| r.path == "/api/v4/websocket").nth(1).unwrap();
    assert_eq!(
        upgrade.query.as_deref(),
        Some(
            format!(
                "connection_id={}&sequence_number={}",
                saved["connectionId"].as_str().unwrap(),
                saved["sequenceNumber"]
            )
            .as_str()
        )
    );
    authenticated(&fake, 1).await;
    fake.user_post(PostSpec::new(DM, ALICE, "and now"));
    assert_eq!(b.next().await.text, "and now");
    assert!(b.status.snapshot().connected);
    b.stop().await;
    fake.wait_for(|f| f.overlap_checks_pending() == 0, T).await.unwrap();
    assert_eq!(fake.max_live_sockets(TOKEN), 1);
}

#[tokio::test]
async fn a_silent_socket_is_detected_by_the_ping_timeout_and_the_resume_replays_what_it_swallowed() {
    let fake = fake().await;
    let spec = spec(&fake, TOKEN, "pingIntervalMs: 100, pongTimeoutMs: 1000");
    let mut a = start(&spec, None);
    authenticated(&fake, 0).await;
    fake.user_post(PostSpec::new(DM, ALICE, "one"));
    assert_eq!(a.next().await.text, "one");
    // A heartbeat round trip after the probe.
    fake.wait_for(|f| f.pings_answered(TOKEN) >= 2, T).await.unwrap();

    assert_eq!(fake.go_silent(TOKEN), 1);
    let swallowed = fake.user_post(PostSpec::new(DM, ALICE, "written into a dead socket"));
    let (r, status) = a.ended().await;
    match &r {
        Err(RunError::Retryable(m)) => assert!(m.contains("no pong"), "{m}"),
        other => panic!("expected a retryable no-pong error, got {other:?}"),
    }
    let facts = status.snapshot();
    assert_eq!(facts.heartbeat_interval_ms, Some(100));
    assert!(facts.last_heartbeat_at.is_some() && facts.last_heartbeat_ack_at.is_some());
    assert!(!facts.connected);

    let mut b = start(&spec, facts.resume.clone());
    let i = b.next().await;
    assert_eq!(i.message_id, swallowed, "replayed from the server's buffer");
    assert_eq!(fake.stats(TOKEN).resumed, 1);
    b.stop().await;
}

#[tokio::test]
async fn a_bad_token_is_fatal_before_any_socket() {
    let fake = fake().await;
    let spec = spec(&fake, "not-a-token", "");
    let a = start(&spec, None);
    let (r, status) = a.ended().await;
    match &r {
        Err(RunError::Fatal(m)) => assert!(m.contains("token rejected") && m.contains("401"), "{m}"),
        other => panic!("expected a fatal error, got {other:?}"),
    }
    assert!(!status.snapshot().last_error.unwrap().contains("not-a-token"));
    assert_eq!(fake.connections(TOKEN), 0);
    assert!(!fake.requests().iter().any(|r| r.path == "/api/v4/websocket"));
}

#[tokio::test]
async fn refused_header_authentication_falls_back_to_the_challenge() {
    let fake = fake().await;
    let spec = spec(&fake, TOKEN, "");
    fake.fail_auth_next();
    let mut a = start(&spec, None);
    fake.wait_connections(TOKEN, 1, T).await.unwrap();
    fake.user_post(PostSpec::new(DM, ALICE, "hello"));
    assert_eq!(a.next().await.text, "hello");
    let actions: Vec<String> =
        fake.ws_frames().iter().map(|f| f.payload["action"].as_str().unwrap_or("").to_string()).collect();
    assert_eq!(&actions[..2], ["ping", "authentication_challenge"]);
    a.stop().await;

    // A challenge that fails too is fatal.
    fake.fail_auth_next();
    fake.fail_auth_next();
    let (r, _) = start(&spec, None).ended().await;
    match &r {
        Err(RunError::Fatal(m)) => assert!(m.contains("authentication_challenge failed"), "{m}"),
        other => panic!("expected a fatal error, got {other:?}"),
    }
}

#[tokio::test]
async fn sender_posts_with_the_root_id_rule_types_and_maps_errors() {
    let fake = fake().await;
    let spec = spec(&fake, TOKEN, "textChunkLimit: 3000");
    let sender = &spec.sender;
    assert_eq!(sender.text_chunk_limit(), 3000);
    let user_root = fake.user_post(PostSpec::new(CHAN, ALICE, "a question"));

    let top = sender.send(&outbound(target(CHAN, None, None), 1, "top level")).await.unwrap();
    let started = sender.send(&outbound(target(CHAN, None, Some(&user_root)), 2, "in a new thread")).await.unwrap();
    let threaded =
        sender.send(&outbound(target(CHAN, Some(&user_root), Some("ignored")), 3, "in the thread")).await.unwrap();
    let posts = fake.wait_bot_posts(CHAN, 3, T).await.unwrap();
    let summary: Vec<(&str, &str, &str)> = posts
        .iter()
        .map(|p| (p["id"].as_str().unwrap(), p["message"].as_str().unwrap(), p["root_id"].as_str().unwrap()))
        .collect();
    assert_eq!(
        summary,
        [
            (top.platform_message_id.as_deref().unwrap(), "top level", ""),
            (started.platform_message_id.as_deref().unwrap(), "in a new thread", user_root.as_str()),
            (threaded.platform_message_id.as_deref().unwrap(), "in the thread", user_root.as_str()),
        ]
    );
    let create = fake.requests().into_iter().find(|r| r.path == "/api/v4/posts").unwrap();
    assert_eq!(create.header("authorization"), Some(format!("Bearer {TOKEN}").as_str()));
    assert!(create.body["pending_post_id"].as_str().unwrap().starts_with("pincer:"));
    assert!(create.body.get("root_id").is_none(), "no root_id on a top-level post");

    sender.typing(&target(CHAN, Some(&user_root), None)).await.unwrap();
    sender.typing(&target(DM, None, None)).await.unwrap();
    let typing = fake.wait_typing_calls(2, T).await.unwrap();
    assert_eq!(
        typing.iter().map(|t| (t.user_id.as_str(), t.channel_id.as_str(), t.parent_id.as_str())).collect::<Vec<_>>(),
        [(BOT, CHAN, user_root.as_str()), (BOT, DM, "")]
    );

    let fatal = |r: Result<_, SendError>| match r {
        Err(SendError::Fatal { message }) => message,
        other => panic!("expected a fatal error, got {other:?}"),
    };
    let m = fatal(sender.send(&outbound(target(NOT_MEMBER, None, None), 4, "not a member")).await);
    assert!(m.contains("HTTP 403") && m.contains("api.context.permissions.app_error"), "{m}");
    let bad_root = "n0root000000000000000000001";
    let m = fatal(sender.send(&outbound(target(CHAN, Some(bad_root), None), 5, "bad root")).await);
    assert!(m.contains("HTTP 400") && m.contains("api.post.create_post.root_id.app_error"), "{m}");
    let m = fatal(sender.typing(&target(NOT_MEMBER, None, None)).await.map(|()| Default::default()));
    assert!(m.contains("HTTP 403"), "{m}");
    let other = self::spec(&fake, "revoked-token", "");
    let m = fatal(other.sender.send(&outbound(target(CHAN, None, None), 6, "who am I")).await);
    assert!(m.contains("HTTP 401") && !m.contains("revoked-token"), "{m}");

    // The server is gone: retryable.
    let sender = spec.sender.clone();
    fake.stop().await;
    let r = sender.send(&outbound(target(CHAN, None, None), 7, "anyone?")).await;
    assert!(matches!(r, Err(SendError::Retryable { .. })), "{r:?}");
}
