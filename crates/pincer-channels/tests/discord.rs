//! The Discord adapter end to end against `pincer_testkit::FakeDiscord`: the runner's
//! lifecycle (READY, inbound facts, close on cancel, RESUME of the saved session, in-attempt
//! reconnects, fatal errors) and the sender (replies, nonce dedupe, error mapping). Every wait
//! is on an event (an inbound message, a fake counter), bounded by a timeout.

#![cfg(feature = "channel-discord")]

use pincer_channels::discord::build_accounts;
use pincer_channels::{
    AccountContext, AccountSpec, BoxFuture, InboundSink, OutboundMessage, RunError, SendError, SinkClosed,
    StatusReporter,
};
use pincer_core::config::parse;
use pincer_core::{AccountId, ChannelId, ChatKind, DeliveryTarget, Inbound};
use pincer_testkit::{ChannelSpec, CloseBy, FakeDiscord, MessageSpec};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

const TOKEN: &str = "bot-token-1";
const BOT_ID: &str = "900000000000000001";
const GUILD: &str = "100000000000000001";
const CHANNEL: &str = "200000000000000001";
const THREAD: &str = "200000000000000002";
const DM: &str = "200000000000000003";
const USER: &str = "300000000000000001";
const T: Duration = Duration::from_secs(15);

/// Collects delivered messages.
struct Collect(mpsc::UnboundedSender<Inbound>);

impl InboundSink for Collect {
    fn deliver(&self, inbound: Inbound) -> BoxFuture<'_, Result<(), SinkClosed>> {
        let r = self.0.send(inbound).map_err(|_| SinkClosed);
        Box::pin(async move { r })
    }
}

async fn fake() -> FakeDiscord {
    let fake = FakeDiscord::start().await;
    fake.add_bot(TOKEN, BOT_ID, "pincer");
    fake.add_guild(GUILD, "Test Guild");
    fake.add_channel(ChannelSpec::text(CHANNEL, GUILD, "general"));
    fake.add_channel(ChannelSpec::thread(THREAD, GUILD, CHANNEL, "a thread"));
    fake.add_channel(ChannelSpec::dm(DM, BOT_ID, USER, "alice"));
    fake
}

fn spec(fake: &FakeDiscord, token: &str) -> AccountSpec {
    let text = format!(
        r#"{{channels: {{discord: {{token: "{token}", apiRoot: "{}", gatewayUrl: "{}"}}}}}}"#,
        fake.api_root(),
        fake.gateway_url()
    );
    let cfg = parse(&text, &|_| None).unwrap().config;
    build_accounts(&cfg, &|_| None).remove(0).unwrap()
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
        channel: ChannelId::new("discord"),
        account: spec.account.clone(),
        inbound: Arc::new(Collect(tx)),
        cancel: cancel.clone(),
        status: status.clone(),
        resume,
    };
    let runner = spec.runner.clone().expect("discord accounts have a runner");
    Attempt { task: tokio::spawn(runner.run(ctx)), cancel, status, rx }
}

impl Attempt {
    async fn next(&mut self) -> Inbound {
        tokio::time::timeout(T, self.rx.recv()).await.expect("timed out waiting for an inbound message").unwrap()
    }

    /// Cancel and require `run` to return `Ok` within 3 s (the close deadline).
    async fn stop(self) -> StatusReporter {
        self.cancel.cancel();
        let r = tokio::time::timeout(Duration::from_secs(3), self.task).await.expect("run did not return within 3 s");
        assert_eq!(r.unwrap(), Ok(()));
        self.status
    }
}

fn reply_to(to: &str, reply_to_id: Option<&str>, outbox_id: i64, text: &str) -> OutboundMessage {
    OutboundMessage {
        outbox_id,
        idempotency_key: format!("run-{outbox_id}:0"),
        target: DeliveryTarget {
            channel: ChannelId::new("discord"),
            account: AccountId::default(),
            to: to.into(),
            thread_id: None,
            reply_to_id: reply_to_id.map(str::to_string),
        },
        text: text.into(),
    }
}

#[tokio::test]
async fn lifecycle_inbound_facts_close_and_resume() {
    let fake = fake().await;
    fake.set_heartbeat_interval(200);
    let spec = spec(&fake, TOKEN);
    let mut a = start(&spec, None);
    fake.wait_connection_count(TOKEN, 1, T).await.unwrap();
    // Let a few heartbeats be acknowledged before the next message, so the facts have them.
    fake.wait_for(T, |f| f.stats(TOKEN).heartbeat_acks >= 2).await.unwrap();

    // A mention in a guild channel.
    let m1 = fake.user_message(MessageSpec::new(CHANNEL, USER, "alice", format!("<@{BOT_ID}> hello")).mention(BOT_ID));
    let i = a.next().await;
    assert_eq!((i.channel.as_str(), i.account.as_str()), ("discord", "default"));
    assert_eq!(i.chat_kind, ChatKind::Channel);
    assert_eq!(i.message_id, m1);
    assert_eq!((i.peer_id.as_str(), i.chat_id.as_str()), (CHANNEL, CHANNEL));
    assert_eq!(i.guild_id.as_deref(), Some(GUILD));
    assert_eq!(i.author.id, USER);
    assert!(!i.author.is_bot && !i.author.is_self);
    assert!(i.mentions.native && i.mentions.can_detect && !i.mentions.reply_to_bot);
    assert_eq!(i.text, "hello");

    let facts = a.status.snapshot();
    assert!(facts.connected && facts.ready_this_attempt, "READY was reported");
    assert_eq!(facts.detail["botUserId"], BOT_ID);
    assert_eq!(facts.detail["botUsername"], "pincer");
    assert!(facts.detail["sessionId"].is_string());
    assert_eq!(facts.heartbeat_interval_ms, Some(200));
    assert!(facts.last_heartbeat_at.is_some() && facts.last_heartbeat_ack_at.is_some(), "{facts:?}");
    assert!(facts.last_inbound_at.is_some());

    // A thread message: the parent channel is the peer.
    fake.user_message(MessageSpec::new(THREAD, USER, "alice", "in a thread"));
    let i = a.next().await;
    assert_eq!((i.peer_id.as_str(), i.chat_id.as_str()), (CHANNEL, THREAD));
    assert_eq!(i.parent_peer_id.as_deref(), Some(CHANNEL));
    assert_eq!(i.thread_id.as_deref(), Some(THREAD));
    let channel_lookups =
        |f: &FakeDiscord| f.requests().iter().filter(|r| r.path.contains("/channels/2") && r.method == "GET").count();
    assert_eq!(channel_lookups(&fake), 0, "GUILD_CREATE's threads were enough");
    // A thread the gateway did not announce: looked up once with GET /channels/{id}.
    const LATE_THREAD: &str = "200000000000000009";
    fake.add_channel(ChannelSpec::thread(LATE_THREAD, GUILD, CHANNEL, "late"));
    for text in ["late 1", "late 2"] {
        fake.user_message(MessageSpec::new(LATE_THREAD, USER, "alice", text));
        let i = a.next().await;
        assert_eq!((i.peer_id.as_str(), i.thread_id.as_deref()), (CHANNEL, Some(LATE_THREAD)));
    }
    assert_eq!(channel_lookups(&fake), 1, "the lookup is cached");

    // A DM: the author is the peer.
    fake.user_message(MessageSpec::new(DM, USER, "alice", "psst"));
    let i = a.next().await;
    assert_eq!(i.chat_kind, ChatKind::Direct);
    assert_eq!((i.peer_id.as_str(), i.chat_id.as_str()), (USER, DM));
    assert_eq!(i.guild_id, None);

    // The sender replies with a message reference; the bot's own echo is not delivered, and a
    // reply to it carries the reply-to-bot fact without a native mention.
    let receipt = spec.sender.send(&reply_to(CHANNEL, Some(&m1), 1, "hi alice")).await.unwrap();
    let bot_msgs = fake.wait_bot_messages(CHANNEL, 1, T).await.unwrap();
    assert_eq!(receipt.platform_message_id.as_deref(), bot_msgs[0]["id"].as_str());
    assert_eq!(bot_msgs[0]["message_reference"]["message_id"], m1.as_str());
    assert_eq!(bot_msgs[0]["content"], "hi alice");
    let bot_msg = receipt.platform_message_id.unwrap();
    let m2 = fake.user_message(MessageSpec::new(CHANNEL, USER, "alice", "thanks!").reply_to(&bot_msg));
    let i = a.next().await;
    assert_eq!(i.message_id, m2, "the bot's own message was not delivered");
    assert!(i.mentions.reply_to_bot && !i.mentions.native);

    // Cancel: run returns Ok within 3 s, with the socket closed (code 4000, resumable).
    let status = a.stop().await;
    fake.wait_live_sessions(TOKEN, 0, T).await.unwrap();
    let close = fake.close_log().into_iter().last().unwrap();
    assert_eq!((close.by, close.code), (CloseBy::Client, Some(4000)));
    assert!(!status.snapshot().connected);
    let resume = status.snapshot().resume.expect("resume state saved");
    assert!(!resume.contains(TOKEN), "the resume state holds a token digest, not the token");

    // Posted while no connection is live: the next attempt RESUMEs and receives it.
    let missed = fake.user_message(MessageSpec::new(CHANNEL, USER, "alice", format!("<@{BOT_ID}> still there?")));
    let mut b = start(&spec, Some(resume));
    let i = b.next().await;
    assert_eq!(i.message_id, missed, "the first message after RESUME is the missed one");
    assert_eq!(fake.resume_count(TOKEN), 1);
    assert_eq!(fake.identify_count(TOKEN), 1, "the second attempt did not IDENTIFY");
    fake.wait_resumed(TOKEN, 1, T).await.unwrap();
    // RESUMED follows the replay; a later message shows it was reported as ready.
    fake.user_message(MessageSpec::new(CHANNEL, USER, "alice", "after resume"));
    b.next().await;
    assert!(b.status.snapshot().connected && b.status.snapshot().ready_this_attempt);
    b.stop().await;
    fake.wait_live_sessions(TOKEN, 0, T).await.unwrap();
    assert_eq!(fake.violations(), 0, "never two live sessions for one token");
}

#[tokio::test]
async fn resume_state_of_another_token_is_ignored() {
    let fake = fake().await;
    fake.add_bot("bot-token-2", "900000000000000002", "other");
    let first = start(&spec(&fake, TOKEN), None);
    fake.wait_connection_count(TOKEN, 1, T).await.unwrap();
    fake.user_message(MessageSpec::new(CHANNEL, USER, "alice", "x"));
    let mut first = first;
    first.next().await;
    let resume = first.stop().await.snapshot().resume.unwrap();
    let mut other = start(&spec(&fake, "bot-token-2"), Some(resume));
    fake.wait_connection_count("bot-token-2", 1, T).await.unwrap();
    fake.user_message(MessageSpec::new(CHANNEL, USER, "alice", "y"));
    other.next().await;
    assert_eq!(fake.resume_count("bot-token-2"), 0);
    assert_eq!(fake.identify_count("bot-token-2"), 1);
    other.stop().await;
}

#[tokio::test]
async fn dropped_socket_is_resumed_inside_the_attempt() {
    let fake = fake().await;
    let spec = spec(&fake, TOKEN);
    let mut a = start(&spec, None);
    fake.wait_connection_count(TOKEN, 1, T).await.unwrap();
    fake.user_message(MessageSpec::new(CHANNEL, USER, "alice", "before"));
    a.next().await;
    assert_eq!(fake.drop_socket(TOKEN), 1);
    let during = fake.user_message(MessageSpec::new(CHANNEL, USER, "alice", "while dropped"));
    let i = a.next().await;
    assert_eq!(i.message_id, during);
    fake.wait_resumed(TOKEN, 1, T).await.unwrap();
    assert_eq!(fake.identify_count(TOKEN), 1, "twilight RESUMEd within the same attempt");
    let facts = a.status.snapshot();
    assert!(facts.last_disconnect.is_some());
    assert!(!a.task.is_finished());
    a.stop().await;
    assert_eq!(fake.violations(), 0);
}

#[tokio::test]
async fn bad_token_is_fatal() {
    let fake = fake().await;
    let a = start(&spec(&fake, "not-a-known-token"), None);
    let r = tokio::time::timeout(T, a.task).await.unwrap().unwrap();
    match r {
        Err(RunError::Fatal(m)) => assert!(m.contains("token rejected"), "{m}"),
        other => panic!("expected a fatal error, got {other:?}"),
    }
    assert!(a.status.snapshot().last_error.is_some());
}

#[tokio::test]
async fn disallowed_intents_close_is_fatal() {
    let fake = fake().await;
    fake.set_allowed_intents(0);
    let a = start(&spec(&fake, TOKEN), None);
    let r = tokio::time::timeout(T, a.task).await.unwrap().unwrap();
    match r {
        Err(RunError::Fatal(m)) => assert!(m.contains("4014"), "{m}"),
        other => panic!("expected a fatal error, got {other:?}"),
    }
}

#[tokio::test]
async fn sender_maps_errors_and_dedupes_by_nonce() {
    let fake = fake().await;
    let spec = spec(&fake, TOKEN);
    let msg = reply_to(CHANNEL, None, 7, "once");
    let first = spec.sender.send(&msg).await.unwrap();
    let again = spec.sender.send(&msg).await.unwrap();
    assert_eq!(first, again, "enforce_nonce returns the first message");
    assert_eq!(fake.bot_messages(CHANNEL).len(), 1);
    let req = fake.requests().into_iter().rfind(|r| r.method == "POST").unwrap();
    assert_eq!(req.body["enforce_nonce"], true);
    assert_eq!(req.body["nonce"].as_str().map(str::len), Some(25));
    assert_eq!(req.header("authorization"), Some("Bot bot-token-1"));

    fake.fail_next_posts_retry_after(1, 429, Duration::from_millis(1500));
    let e = spec.sender.send(&reply_to(CHANNEL, None, 8, "limited")).await.unwrap_err();
    assert!(matches!(e, SendError::Retryable { retry_after_ms: Some(1500), .. }), "{e:?}");
    fake.fail_next_posts(1, 500);
    assert!(spec.sender.send(&reply_to(CHANNEL, None, 9, "oops")).await.unwrap_err().is_retryable());
    fake.fail_next_posts(1, 403);
    let e = spec.sender.send(&reply_to(CHANNEL, None, 10, "no")).await.unwrap_err();
    assert!(!e.is_retryable() && e.to_string().contains("403"), "{e}");
    let e = spec.sender.send(&reply_to("999", None, 11, "nowhere")).await.unwrap_err();
    assert!(!e.is_retryable(), "unknown channel is fatal: {e}");
    let e = spec.sender.send(&reply_to("general", None, 12, "bad id")).await.unwrap_err();
    assert!(!e.is_retryable());
    // A thread target posts into the thread.
    let mut t = reply_to(CHANNEL, None, 13, "threaded");
    t.target.thread_id = Some(THREAD.into());
    spec.sender.send(&t).await.unwrap();
    assert_eq!(fake.bot_messages(THREAD).len(), 1);
    assert_eq!(spec.sender.text_chunk_limit(), 2000);
}
