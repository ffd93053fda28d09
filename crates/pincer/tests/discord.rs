//! The Discord channel and the channel lifecycle, end to end: the real binary against a strict
//! wire-level fake Discord (REST + Gateway v10, payloads from `discord-api-types`) that
//! rejects a second live session for a token, as production Discord did to the reference
//! system (DESIGN.md bug 3).
//!
//! Every scenario checks the same three things at the end: each user message got exactly one
//! reply, the fake never saw two live sessions for one token, and nothing was rejected.

mod common;
use common::*;
use pincer_testkit::discord::{ChannelSpec, FakeDiscord, MessageSpec};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::Path;

const GUILD: &str = "100000000000000001";
const CHANNEL: &str = "100000000000000002";
const USER: &str = "300000000000000001";

struct Bot {
    token: &'static str,
    user_id: &'static str,
    account: &'static str,
}

const BOT_A: Bot = Bot { token: "tok-a.discord.fake", user_id: "200000000000000001", account: "a" };
const BOT_B: Bot = Bot { token: "tok-b.discord.fake", user_id: "200000000000000002", account: "b" };

async fn fake(bots: &[&Bot]) -> FakeDiscord {
    let fake = FakeDiscord::start().await;
    for b in bots {
        fake.add_bot(b.token, b.user_id, &format!("pincer-{}", b.account));
    }
    fake.add_guild(GUILD, "test guild");
    fake.add_channel(ChannelSpec::text(CHANNEL, GUILD, "general"));
    fake
}

/// Config with one Discord account per bot; `extra` is merged into each account.
fn config(fake: &FakeDiscord, bots: &[&Bot], extra: &BTreeMap<&str, Value>) -> Value {
    let mut accounts = serde_json::Map::new();
    for b in bots {
        let mut acc = json!({"token": b.token});
        if let Some(Value::Object(e)) = extra.get(b.account) {
            for (k, v) in e {
                acc[k] = v.clone();
            }
        }
        accounts.insert(b.account.to_string(), acc);
    }
    json!({
        "gateway": {"reload": {"mode": "off"}},
        "channels": {"discord": {
            "apiRoot": fake.api_root(),
            "gatewayUrl": fake.gateway_url(),
            "groupPolicy": "open",
            "accounts": accounts,
        }},
    })
}

/// Post a user message that mentions `bot`; returns the message id.
fn ask(fake: &FakeDiscord, bot: &Bot, text: &str) -> String {
    fake.user_message(
        MessageSpec::new(CHANNEL, USER, "alice", format!("<@{}> {text}", bot.user_id)).mention(bot.user_id),
    )
}

async fn start(dir: &Path, cfg: &Value) -> Daemon {
    write_config(dir, cfg);
    Daemon::start(dir).await
}

async fn wait_ready(fake: &FakeDiscord, bot: &Bot) {
    fake.wait_live_sessions(bot.token, 1, WAIT)
        .await
        .unwrap_or_else(|e| panic!("{} never connected: {e}", bot.account));
}

/// Wait until the bot has posted exactly the echo replies of `texts` (in any order) and
/// nothing else: every message answered once. A trailing sentinel message, answered last on
/// the same lane, proves no late duplicate is still on its way.
async fn assert_answered_once(fake: &FakeDiscord, bot: &Bot, texts: &[String]) {
    ask(fake, bot, "sentinel");
    let want = texts.len() + 1;
    let got = fake.wait_bot_messages(CHANNEL, want, WAIT).await.unwrap_or_else(|e| panic!("replies missing: {e}"));
    let mut replies: Vec<String> = got
        .iter()
        .filter(|m| m["author"]["id"] == bot.user_id)
        .map(|m| m["content"].as_str().unwrap_or_default().to_string())
        .collect();
    replies.sort();
    let mut expected: Vec<String> =
        texts.iter().map(|t| format!("echo: {t}")).chain(["echo: sentinel".to_string()]).collect();
    expected.sort();
    assert_eq!(replies, expected, "each message answered exactly once");
    // Nothing arrives after the sentinel either.
    assert_eq!(fake.bot_messages(CHANNEL).len(), want, "no duplicate replies");
}

fn assert_never_two_sessions(fake: &FakeDiscord, bot: &Bot) {
    let st = fake.stats(bot.token);
    assert_eq!(fake.violations(), 0, "the fake rejected an overlapping session: {:?}", fake.violation_details());
    assert!(st.max_live_sessions <= 1, "two live sessions for one token: {st:?}");
}

async fn channel_row(d: &Daemon, account: &str) -> Value {
    let mut ws = d.client().await;
    let r = ws.request("channels.status", json!({})).await;
    r["payload"]["channelAccounts"]["discord"]
        .as_array()
        .and_then(|rows| rows.iter().find(|r| r["accountId"] == account).cloned())
        .unwrap_or_else(|| panic!("no status row for {account}: {r}"))
}

#[tokio::test]
async fn replies_in_the_same_channel_and_ignores_messages_without_mention() {
    let fake = fake(&[&BOT_A]).await;
    let dir = tempfile::tempdir().unwrap();
    let extra = BTreeMap::from([("a", json!({"replyToMode": "all"}))]);
    let d = start(dir.path(), &config(&fake, &[&BOT_A], &extra)).await;
    wait_ready(&fake, &BOT_A).await;
    fake.user_message(MessageSpec::new(CHANNEL, USER, "alice", "just chatting, no mention"));
    let asked = ask(&fake, &BOT_A, "hello");
    let reply = fake.wait_bot_messages(CHANNEL, 1, WAIT).await.expect("reply");
    assert_eq!(reply[0]["message_reference"]["message_id"], asked.as_str(), "replyToMode all: a native reply");
    assert_answered_once(&fake, &BOT_A, &["hello".to_string()]).await;
    let row = channel_row(&d, "a").await;
    assert_eq!((row["state"].as_str(), row["connected"].as_bool()), (Some("running"), Some(true)), "{row}");
    let out = cli(dir.path(), &["channels", "status"]).await;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("discord/a: running, connected"), "{text}");
    d.stop().await;
    assert_eq!(fake.live_sessions(BOT_A.token), 0, "the connection closed at shutdown");
    assert_never_two_sessions(&fake, &BOT_A);
}

#[tokio::test]
async fn fifty_socket_drops_in_a_row_lose_nothing_and_never_overlap() {
    let fake = fake(&[&BOT_A]).await;
    let dir = tempfile::tempdir().unwrap();
    let d = start(dir.path(), &config(&fake, &[&BOT_A], &BTreeMap::new())).await;
    wait_ready(&fake, &BOT_A).await;
    let mut texts = Vec::new();
    for i in 0..50 {
        let before = fake.stats(BOT_A.token).connection_count;
        assert_eq!(fake.drop_socket(BOT_A.token), 1, "drop {i}: one live socket to drop");
        // Posted while the socket is down: Discord queues it and replays it on RESUME.
        let text = format!("during drop {i}");
        ask(&fake, &BOT_A, &text);
        texts.push(text);
        fake.wait_connection_count(BOT_A.token, before + 1, WAIT)
            .await
            .unwrap_or_else(|e| panic!("drop {i}: no reconnect: {e}"));
    }
    assert_answered_once(&fake, &BOT_A, &texts).await;
    assert_never_two_sessions(&fake, &BOT_A);
    let st = fake.stats(BOT_A.token);
    assert!(st.resumed_count >= 45, "drops are resumed, not re-identified: {st:?}");
    d.stop().await;
}

#[tokio::test]
async fn a_zombie_socket_without_heartbeat_acks_is_replaced() {
    let fake = fake(&[&BOT_A]).await;
    fake.set_heartbeat_interval(300);
    let dir = tempfile::tempdir().unwrap();
    let d = start(dir.path(), &config(&fake, &[&BOT_A], &BTreeMap::new())).await;
    wait_ready(&fake, &BOT_A).await;
    let before = fake.stats(BOT_A.token).connection_count;
    assert_eq!(fake.pause_heartbeat_acks(BOT_A.token), 1);
    ask(&fake, &BOT_A, "are you there");
    fake.wait_connection_count(BOT_A.token, before + 1, WAIT).await.expect("zombie detected and reconnected");
    assert_answered_once(&fake, &BOT_A, &["are you there".to_string()]).await;
    assert_never_two_sessions(&fake, &BOT_A);
    let closes = fake.close_log();
    assert!(
        closes.iter().any(|c| c.token.as_deref() == Some(BOT_A.token)),
        "the zombie socket was closed by the client: {closes:?}"
    );
    d.stop().await;
}

#[tokio::test]
async fn a_config_change_reconnects_only_the_changed_account() {
    let fake = fake(&[&BOT_A, &BOT_B]).await;
    let dir = tempfile::tempdir().unwrap();
    let bots = [&BOT_A, &BOT_B];
    let d = start(dir.path(), &config(&fake, &bots, &BTreeMap::new())).await;
    wait_ready(&fake, &BOT_A).await;
    wait_ready(&fake, &BOT_B).await;
    let (a0, b0) = (fake.stats(BOT_A.token).connection_count, fake.stats(BOT_B.token).connection_count);

    let extra = BTreeMap::from([("b", json!({"textChunkLimit": 1500}))]);
    write_config(dir.path(), &config(&fake, &bots, &extra));
    let mut ws = d.client().await;
    let r = ws.request("gateway.reload", json!({})).await;
    let changes = r["payload"]["report"]["channels"].as_array().cloned().unwrap_or_else(|| panic!("no report: {r}"));
    let action = |acc: &str| {
        changes.iter().find(|c| c["accountId"] == acc).map(|c| c["action"].as_str().unwrap_or_default().to_string())
    };
    assert_eq!(action("a").as_deref(), Some("kept"), "{changes:?}");
    assert_eq!(action("b").as_deref(), Some("restarted"), "{changes:?}");
    fake.wait_connection_count(BOT_B.token, b0 + 1, WAIT).await.expect("b reconnected");
    assert_eq!(fake.stats(BOT_A.token).connection_count, a0, "the untouched account kept its connection");
    assert_eq!(fake.live_sessions(BOT_A.token), 1);
    ask(&fake, &BOT_B, "after reload");
    let got = fake.wait_bot_messages(CHANNEL, 1, WAIT).await.expect("b answers");
    assert_eq!(got[0]["author"]["id"], BOT_B.user_id);
    assert_never_two_sessions(&fake, &BOT_A);
    assert_never_two_sessions(&fake, &BOT_B);
    d.stop().await;
}

#[tokio::test]
async fn a_reload_storm_while_messages_flow_answers_each_message_once() {
    let fake = fake(&[&BOT_A]).await;
    let dir = tempfile::tempdir().unwrap();
    let d = start(dir.path(), &config(&fake, &[&BOT_A], &BTreeMap::new())).await;
    wait_ready(&fake, &BOT_A).await;
    let mut texts = Vec::new();
    for i in 0..100 {
        if i % 3 == 0 {
            std::fs::write(dir.path().join("pincer.json"), format!("{{ channels: {{ discord: {{ token: {i} }} }}"))
                .unwrap();
        } else {
            // Alternate a change that restarts the Discord account with one that does not.
            let extra =
                if i % 2 == 0 { BTreeMap::from([("a", json!({"textChunkLimit": 1000 + i}))]) } else { BTreeMap::new() };
            write_config(dir.path(), &config(&fake, &[&BOT_A], &extra));
        }
        d.signal("HUP");
        if i % 5 == 0 {
            let text = format!("storm {i}");
            ask(&fake, &BOT_A, &text);
            texts.push(text);
        }
    }
    // Settle on a valid config, then everything must be answered exactly once.
    write_config(dir.path(), &config(&fake, &[&BOT_A], &BTreeMap::new()));
    let mut ws = d.client().await;
    let r = ws.request("gateway.reload", json!({})).await;
    assert_eq!(r["ok"], true, "{r}");
    wait_ready(&fake, &BOT_A).await;
    assert_answered_once(&fake, &BOT_A, &texts).await;
    assert_never_two_sessions(&fake, &BOT_A);
    let st = fake.stats(BOT_A.token);
    assert!(st.connection_count >= 2, "the storm restarted the account at least once: {st:?}");
    d.stop().await;
}

#[tokio::test]
async fn sigusr1_restarts_in_process_without_a_duplicate_session_or_a_lost_message() {
    let fake = fake(&[&BOT_A]).await;
    let dir = tempfile::tempdir().unwrap();
    let d = start(dir.path(), &config(&fake, &[&BOT_A], &BTreeMap::new())).await;
    wait_ready(&fake, &BOT_A).await;
    let mut texts = Vec::new();
    for i in 0..5 {
        let t = format!("before {i}");
        ask(&fake, &BOT_A, &t);
        texts.push(t);
    }
    let before = fake.stats(BOT_A.token).connection_count;
    d.signal("USR1");
    for i in 0..5 {
        let t = format!("during {i}");
        ask(&fake, &BOT_A, &t);
        texts.push(t);
    }
    fake.wait_connection_count(BOT_A.token, before + 1, WAIT).await.expect("the fresh runtime reconnected");
    assert_answered_once(&fake, &BOT_A, &texts).await;
    assert_never_two_sessions(&fake, &BOT_A);
    let st = fake.stats(BOT_A.token);
    assert!(st.resumed_count >= 1, "the fresh runtime resumed the session: {st:?}");
    let row = channel_row(&d, "a").await;
    assert_eq!(row["state"], "running", "{row}");
    d.stop().await;
}

#[tokio::test]
async fn a_rejected_token_gives_up_visibly_and_channels_start_retries() {
    let fake = fake(&[&BOT_A]).await;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(&fake, &[&BOT_A], &BTreeMap::new());
    cfg["channels"]["discord"]["accounts"]["a"]["token"] = json!("revoked-token");
    let d = start(dir.path(), &cfg).await;
    let mut ws = d.client().await;
    let row = tokio::time::timeout(WAIT, async {
        loop {
            let row = channel_row(&d, "a").await;
            if row["state"] == "gave-up" {
                break row;
            }
            // Wait for the next status change rather than spinning: the fake records the
            // rejected request.
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("the account gives up on a rejected token");
    assert!(row["gaveUpReason"].as_str().unwrap_or_default().contains("401"), "{row}");
    let ready = reqwest::get(format!("{}/readyz", d.http_url())).await.unwrap();
    assert_eq!(ready.status(), 503, "readyz names the failing account");
    let body: Value = ready.json().await.unwrap();
    assert_eq!(body["failing"], json!(["discord/a"]));
    let r = ws.request("channels.start", json!({"channel": "discord", "accountId": "a"})).await;
    assert_eq!(r["ok"], true, "{r}");
    d.stop().await;
}
