//! The Mattermost channel end to end: the real binary against the strict wire-level fake
//! Mattermost (`pincer_testkit::FakeMattermost`: API v4 + WebSocket, payloads from
//! `@mattermost/types`), covering the list: DMs, mentions, the wake rules of each
//! `chatmode`, replies to the bot's posts (`reply_to_bot`, replies in that thread), the bot's own
//! posts, pairing, a `posted` event delivered twice, and the reload regression (a `chatmode`
//! change by SIGUSR1, SIGHUP and `config.patch` while messages flow in two channels).
//!
//! "No reply" is never asserted by waiting: each such case is followed by a message on the same
//! lane (same channel or thread, so the same session) that does get a reply, and then the exact
//! set of the bot's posts is checked, so a late reply would show. Wake decisions are checked
//! through the per-reason counters of `channels.status` and the `inbound dropped` /
//! `inbound accepted` lines of the JSON file log (`logs.tail`). Every test ends by checking
//! that the fake never saw two live sockets for the bot token.

mod common;
use common::*;
use pincer_testkit::mattermost::{new_id, ChannelSpec, PostSpec, TeamSpec};
use pincer_testkit::FakeMattermost;
use serde_json::{json, Value};
use std::collections::BTreeSet;

const TOKEN: &str = "mm-e2e-bot-token";
const BOT_NAME: &str = "pincer";

/// A fake Mattermost with one bot, two people, a team with two open channels (`a`, `b`), and
/// a DM channel between the bot and each person. Ids are fresh per test.
struct World {
    fake: FakeMattermost,
    bot: String,
    alice: String,
    bob: String,
    a: String,
    b: String,
    dm_alice: String,
    dm_bob: String,
}

async fn world() -> World {
    let fake = FakeMattermost::start().await;
    let (bot, alice, bob, team) = (new_id(), new_id(), new_id(), new_id());
    let (a, b, dm_alice, dm_bob) = (new_id(), new_id(), new_id(), new_id());
    fake.add_bot(TOKEN, &bot, BOT_NAME);
    fake.add_user(&alice, "alice", false);
    fake.add_user(&bob, "bob", false);
    fake.add_team(TeamSpec::new(&team, "pincer-team", "Pincer Team").members([&bot, &alice, &bob]));
    fake.add_channel(ChannelSpec::open(&a, &team, "town-square", "Town Square").members([&bot, &alice, &bob]));
    fake.add_channel(ChannelSpec::open(&b, &team, "off-topic", "Off-Topic").members([&bot, &alice, &bob]));
    fake.add_channel(ChannelSpec::direct(&dm_alice, &bot, &alice));
    fake.add_channel(ChannelSpec::direct(&dm_bob, &bot, &bob));
    World { fake, bot, alice, bob, a, b, dm_alice, dm_bob }
}

impl World {
    /// `channels.mattermost` pointing at the fake, `groupPolicy: open`, plus `extra` keys.
    fn config(&self, extra: Value) -> Value {
        let mut section = json!({"baseUrl": self.fake.base_url(), "botToken": TOKEN, "groupPolicy": "open"});
        for (k, v) in extra.as_object().expect("extra is an object") {
            section[k] = v.clone();
        }
        json!({"gateway": {"reload": {"mode": "off"}}, "channels": {"mattermost": section}})
    }

    /// A root post by `user` in `channel`; returns its id.
    fn say(&self, channel: &str, user: &str, text: &str) -> String {
        self.fake.user_post(PostSpec::new(channel, user, text))
    }

    /// A reply by `user` in the thread of `root`; returns its id.
    fn reply(&self, channel: &str, user: &str, root: &str, text: &str) -> String {
        self.fake.user_post(PostSpec::new(channel, user, text).reply_to(root))
    }

    /// The bot's posts in `channel` as sorted `(message, root_id)` pairs.
    fn bot_posts(&self, channel: &str) -> Vec<(String, String)> {
        let mut v: Vec<(String, String)> =
            self.fake.bot_posts(channel).iter().map(|p| (str_of(&p["message"]), str_of(&p["root_id"]))).collect();
        v.sort();
        v
    }

    /// Wait until the bot has posted `want.len()` posts in `channel`, then require exactly
    /// `want` (`(message, root_id)`, any order) and nothing else. Returns the posts, oldest
    /// first.
    async fn expect_posts(&self, channel: &str, want: &[(String, String)]) -> Vec<Value> {
        let got = self
            .fake
            .wait_bot_posts(channel, want.len(), WAIT)
            .await
            .unwrap_or_else(|e| panic!("bot posts missing in {channel}: {e}"));
        for p in &got {
            assert_eq!(p["channel_id"], channel, "{p}");
            assert_eq!(p["user_id"], self.bot.as_str(), "{p}");
        }
        let mut want = want.to_vec();
        want.sort();
        assert_eq!(self.bot_posts(channel), want, "the bot's posts in {channel}: each message answered exactly once");
        got
    }

    /// Start the daemon on `cfg` and wait until the bot's socket is authenticated.
    async fn start(&self, dir: &std::path::Path, cfg: &Value) -> Daemon {
        write_config(dir, cfg);
        let d = Daemon::start(dir).await;
        self.fake.wait_live_sockets(TOKEN, 1, WAIT).await.expect("the bot connects");
        d
    }

    /// Stop the daemon, then: the socket was closed at shutdown and the fake never saw two live
    /// sockets for the token (final once no overlap check is pending).
    async fn finish(&self, d: Daemon) {
        let (code, stderr) = d.stop().await;
        assert_eq!(code, Some(0), "clean exit; stderr:\n{stderr}");
        self.fake.wait_live_sockets(TOKEN, 0, WAIT).await.expect("the socket is closed at shutdown");
        self.fake.wait_for(|f| f.overlap_checks_pending() == 0, WAIT).await.expect("overlap checks settle");
        let stats = self.fake.stats(TOKEN);
        assert!(stats.max_live_sockets <= 1, "two live sockets for one token: {stats:?}");
        assert!(self.fake.overlaps().is_empty(), "overlapping sockets: {:?}", self.fake.overlaps());
    }
}

fn str_of(v: &Value) -> String {
    v.as_str().unwrap_or_default().to_string()
}

/// `(message, root_id)` of an expected bot post.
fn post(message: impl Into<String>, root: &str) -> (String, String) {
    (message.into(), root.to_string())
}

/// The `channels.status` row of the Mattermost `default` account.
async fn status_row(d: &Daemon) -> Value {
    let mut ws = d.client().await;
    let r = ws.request("channels.status", json!({})).await;
    r["payload"]["channelAccounts"]["mattermost"]
        .as_array()
        .and_then(|rows| rows.iter().find(|r| r["accountId"] == "default").cloned())
        .unwrap_or_else(|| panic!("no mattermost/default status row: {r}"))
}

/// The account's wake counters: `{woken: {reason: n}, skipped: {reason: n}}`.
async fn inbound_counts(d: &Daemon) -> Value {
    status_row(d).await["inbound"].clone()
}

/// Re-read `channels.status` until `pred` holds on the account's wake counters (each read is a
/// round trip to the daemon; bounded by `WAIT`).
async fn wait_counts(d: &Daemon, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    let mut ws = d.client().await;
    let mut last = Value::Null;
    let found = tokio::time::timeout(WAIT, async {
        loop {
            let r = ws.request("channels.status", json!({})).await;
            last = r["payload"]["channelAccounts"]["mattermost"][0]["inbound"].clone();
            if pred(&last) {
                return last.clone();
            }
        }
    })
    .await;
    found.unwrap_or_else(|_| panic!("timed out waiting for {what}; last counters: {last}"))
}

/// The wake decisions the daemon logged for one post: `(message, reason)` of every
/// `inbound accepted` / `inbound dropped` line of the JSON file log with this `message_id`.
async fn logged_decisions(d: &Daemon, post_id: &str) -> Vec<(String, String)> {
    let mut ws = d.client().await;
    let mut cursor = 0u64;
    let mut out = Vec::new();
    loop {
        let r = ws.request("logs.tail", json!({"cursor": cursor, "limit": 5000, "maxBytes": 1_048_576})).await;
        assert_eq!(r["ok"], true, "{r}");
        let page = &r["payload"];
        for line in page["lines"].as_array().into_iter().flatten() {
            let Ok(v) = serde_json::from_str::<Value>(line.as_str().unwrap_or_default()) else { continue };
            let msg = str_of(&v["message"]);
            if v["message_id"] == post_id && (msg == "inbound accepted" || msg == "inbound dropped") {
                out.push((msg, str_of(&v["reason"])));
            }
        }
        let next = page["cursor"].as_u64().unwrap_or(cursor);
        if !page["truncated"].as_bool().unwrap_or(false) || next == cursor {
            return out;
        }
        cursor = next;
    }
}

async fn assert_logged(d: &Daemon, post_id: &str, outcome: &str, reason: &str) {
    let got = logged_decisions(d, post_id).await;
    assert_eq!(got, [(outcome.to_string(), reason.to_string())], "logged wake decision of post {post_id}");
}

/// Session keys and delivery contexts from `sessions.list`.
async fn sessions(d: &Daemon) -> Vec<Value> {
    let mut ws = d.client().await;
    let r = ws.request("sessions.list", json!({"limit": 1000})).await;
    r["payload"]["sessions"].as_array().cloned().unwrap_or_else(|| panic!("sessions.list: {r}"))
}

fn channel_key(channel: &str) -> String {
    format!("agent:main:mattermost:channel:{channel}")
}

fn thread_key(channel: &str, root: &str) -> String {
    format!("agent:main:mattermost:channel:{channel}:thread:{root}")
}

fn id_of(p: &Value) -> String {
    str_of(&p["id"])
}

#[tokio::test]
async fn a_dm_and_a_channel_mention_get_replies_where_they_were_sent() {
    let w = world().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = w.config(json!({"dmPolicy": "allowlist", "allowFrom": [w.alice]}));
    let d = w.start(dir.path(), &cfg).await;

    let dm = w.say(&w.dm_alice, &w.alice, "hi there");
    w.expect_posts(&w.dm_alice, &[post("echo: hi there", "")]).await;
    let mention = w.say(&w.a, &w.alice, "@pincer what's up?");
    w.expect_posts(&w.a, &[post("echo: what's up?", "")]).await;

    assert_eq!(w.bot_posts(&w.dm_alice).len(), 1, "the channel reply did not go to the DM");
    assert!(w.bot_posts(&w.b).is_empty() && w.bot_posts(&w.dm_bob).is_empty());
    assert_logged(&d, &dm, "inbound accepted", "dm").await;
    assert_logged(&d, &mention, "inbound accepted", "mention").await;
    assert_eq!(inbound_counts(&d).await, json!({"woken": {"dm": 1, "mention": 1}, "skipped": {}}));
    let row = status_row(&d).await;
    assert_eq!((row["state"].as_str(), row["connected"].as_bool()), (Some("running"), Some(true)), "{row}");
    let keys: Vec<String> = sessions(&d).await.iter().map(|s| str_of(&s["key"])).collect();
    assert!(keys.contains(&channel_key(&w.a)), "{keys:?}");
    w.finish(d).await;
}

#[tokio::test]
async fn oncall_skips_a_channel_message_without_mention_as_missing_mention() {
    let w = world().await;
    let dir = tempfile::tempdir().unwrap();
    let d = w.start(dir.path(), &w.config(json!({"chatmode": "oncall"}))).await;

    let plain = w.say(&w.a, &w.alice, "just chatting, nobody in particular");
    // Same channel, same session: answered only after the plain message was decided.
    let asked = w.say(&w.a, &w.alice, "@pincer ping");
    w.expect_posts(&w.a, &[post("echo: ping", "")]).await;

    assert_logged(&d, &plain, "inbound dropped", "missing_mention").await;
    assert_logged(&d, &asked, "inbound accepted", "mention").await;
    assert_eq!(inbound_counts(&d).await, json!({"woken": {"mention": 1}, "skipped": {"missing_mention": 1}}));
    w.finish(d).await;
}

#[tokio::test]
async fn a_reply_under_the_bots_post_wakes_it_and_the_answer_goes_into_that_thread() {
    let w = world().await;
    let dir = tempfile::tempdir().unwrap();
    let d = w.start(dir.path(), &w.config(json!({"chatmode": "oncall"}))).await;

    w.say(&w.a, &w.alice, "@pincer please review the deploy");
    let root = id_of(&w.expect_posts(&w.a, &[post("echo: please review the deploy", "")]).await[0]);
    let thanks = w.reply(&w.a, &w.alice, &root, "Looks good, thanks!");
    w.expect_posts(&w.a, &[post("echo: please review the deploy", ""), post("echo: Looks good, thanks!", &root)]).await;

    assert_logged(&d, &thanks, "inbound accepted", "reply_to_bot").await;
    assert_eq!(inbound_counts(&d).await, json!({"woken": {"mention": 1, "reply_to_bot": 1}, "skipped": {}}));
    let ss = sessions(&d).await;
    let thread = ss
        .iter()
        .find(|s| s["key"] == thread_key(&w.a, &root).as_str())
        .unwrap_or_else(|| panic!("no thread session: {ss:?}"));
    assert_eq!(thread["deliveryContext"]["to"], w.a.as_str(), "{thread}");
    assert_eq!(thread["deliveryContext"]["threadId"], root.as_str(), "{thread}");
    w.finish(d).await;
}

#[tokio::test]
async fn a_reply_under_a_humans_post_does_not_wake_it() {
    let w = world().await;
    let dir = tempfile::tempdir().unwrap();
    let d = w.start(dir.path(), &w.config(json!({"chatmode": "oncall"}))).await;

    let root = w.say(&w.a, &w.alice, "lunch at noon?");
    let reply = w.reply(&w.a, &w.bob, &root, "I agree, see you there");
    // Same thread, same session: the bot answers this one only after the reply was decided.
    w.reply(&w.a, &w.bob, &root, "@pincer sentinel");
    w.expect_posts(&w.a, &[post("echo: sentinel", &root)]).await;

    assert_logged(&d, &root, "inbound dropped", "missing_mention").await;
    assert_logged(&d, &reply, "inbound dropped", "missing_mention").await;
    assert_eq!(inbound_counts(&d).await, json!({"woken": {"mention": 1}, "skipped": {"missing_mention": 2}}));
    w.finish(d).await;
}

#[tokio::test]
async fn onmessage_answers_every_message_exactly_once_even_a_reply_to_the_bot() {
    let w = world().await;
    let dir = tempfile::tempdir().unwrap();
    let d = w.start(dir.path(), &w.config(json!({"chatmode": "onmessage"}))).await;

    w.say(&w.a, &w.alice, "first");
    let root = id_of(&w.expect_posts(&w.a, &[post("echo: first", "")]).await[0]);
    // Both onmessage and reply_to_bot apply: one run, one reply.
    let second = w.reply(&w.a, &w.alice, &root, "second, under the bot's post");
    w.reply(&w.a, &w.bob, &root, "@pincer third, with a mention");
    w.say(&w.a, &w.bob, "fourth");
    // The sentinel shares the thread's session: a late duplicate of the thread replies would
    // be posted before it.
    w.reply(&w.a, &w.alice, &root, "sentinel");
    w.expect_posts(
        &w.a,
        &[
            post("echo: first", ""),
            post("echo: second, under the bot's post", &root),
            post("echo: third, with a mention", &root),
            post("echo: fourth", ""),
            post("echo: sentinel", &root),
        ],
    )
    .await;

    assert_logged(&d, &second, "inbound accepted", "onmessage").await;
    assert_eq!(inbound_counts(&d).await, json!({"woken": {"onmessage": 5}, "skipped": {}}));
    w.finish(d).await;
}

#[tokio::test]
async fn the_bots_own_posts_never_wake_it() {
    let w = world().await;
    let dir = tempfile::tempdir().unwrap();
    // The modes where an own post would wake the bot if it were not recognised: every channel
    // message wakes (onmessage), and every DM sender is allowed.
    let cfg = w.config(json!({"chatmode": "onmessage", "dmPolicy": "open", "allowFrom": ["*"]}));
    let d = w.start(dir.path(), &cfg).await;

    w.say(&w.a, &w.alice, "hello");
    w.expect_posts(&w.a, &[post("echo: hello", "")]).await;
    w.say(&w.dm_alice, &w.alice, "dm hello");
    w.expect_posts(&w.dm_alice, &[post("echo: dm hello", "")]).await;
    // Posts by the bot's user made elsewhere (another client of the same account).
    let own = w.say(&w.a, &w.bot, "posted by the bot from another client");
    let own_dm = w.say(&w.dm_alice, &w.bot, "a DM by the bot from another client");
    w.say(&w.a, &w.alice, "after");
    w.say(&w.dm_alice, &w.alice, "dm after");
    w.expect_posts(&w.a, &[post("echo: hello", ""), post("echo: after", "")]).await;
    w.expect_posts(&w.dm_alice, &[post("echo: dm hello", ""), post("echo: dm after", "")]).await;

    // The fake did deliver the own posts (and the bot's replies) to the bot's socket.
    let delivered: BTreeSet<String> = w
        .fake
        .sent_events(TOKEN)
        .iter()
        .filter(|e| e.event == "posted")
        .filter_map(|e| serde_json::from_str::<Value>(e.payload["data"]["post"].as_str()?).ok())
        .map(|p| id_of(&p))
        .collect();
    let replies = w.fake.bot_posts(&w.a).into_iter().chain(w.fake.bot_posts(&w.dm_alice));
    for id in [own.clone(), own_dm.clone()].into_iter().chain(replies.map(|p| id_of(&p))) {
        assert!(delivered.contains(&id), "the bot's socket got post {id}");
    }
    // Whether the adapter filters them or the runtime drops them as `self`, they never run.
    for id in [&own, &own_dm] {
        let decisions = logged_decisions(&d, id).await;
        assert!(decisions.iter().all(|(m, r)| m == "inbound dropped" && r == "self"), "post {id}: {decisions:?}");
    }
    let counts = inbound_counts(&d).await;
    assert_eq!(counts["woken"], json!({"onmessage": 2, "dm": 2}), "{counts}");
    let skipped = counts["skipped"].as_object().cloned().unwrap_or_default();
    assert!(skipped.keys().all(|k| k == "self"), "{counts}");
    w.finish(d).await;
}

#[tokio::test]
async fn chatmode_off_never_wakes_in_channels_but_dms_still_follow_dm_policy() {
    let w = world().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = w.config(json!({"chatmode": "off", "dmPolicy": "open", "allowFrom": ["*"]}));
    let d = w.start(dir.path(), &cfg).await;

    let mention = w.say(&w.a, &w.alice, "@pincer are you there?");
    let plain = w.say(&w.a, &w.alice, "anyone?");
    // A thread under a post of the bot's user: reply_to_bot does not beat chatmode off.
    let bot_root = w.say(&w.a, &w.bot, "a post by the bot");
    let under_bot = w.reply(&w.a, &w.alice, &bot_root, "replying to the bot");
    // Same socket, handled in order: when the DM is answered, the channel posts were decided.
    w.say(&w.dm_alice, &w.alice, "dm still works");
    w.expect_posts(&w.dm_alice, &[post("echo: dm still works", "")]).await;

    for id in [&mention, &plain, &under_bot] {
        assert_logged(&d, id, "inbound dropped", "chatmode_off").await;
    }
    assert_eq!(inbound_counts(&d).await, json!({"woken": {"dm": 1}, "skipped": {"chatmode_off": 3}}));
    assert!(w.bot_posts(&w.a).is_empty(), "no reply in the channel: {:?}", w.bot_posts(&w.a));
    w.finish(d).await;
}

#[tokio::test]
async fn onchar_wakes_on_the_prefix_and_the_agent_sees_the_text_without_it() {
    let w = world().await;
    let dir = tempfile::tempdir().unwrap();
    let d = w.start(dir.path(), &w.config(json!({"chatmode": "onchar", "oncharPrefixes": [">"]}))).await;

    let prefixed = w.say(&w.a, &w.alice, ">what is this");
    let plain = w.say(&w.a, &w.alice, "no prefix here");
    let other = w.say(&w.a, &w.alice, "!not my prefix");
    // Mentions still work in onchar; same session, so it is answered after the rest.
    let mention = w.say(&w.a, &w.alice, "@pincer explicit");
    w.expect_posts(&w.a, &[post("echo: what is this", ""), post("echo: explicit", "")]).await;

    assert_logged(&d, &prefixed, "inbound accepted", "onchar").await;
    assert_logged(&d, &plain, "inbound dropped", "missing_mention").await;
    assert_logged(&d, &other, "inbound dropped", "missing_mention").await;
    assert_logged(&d, &mention, "inbound accepted", "mention").await;
    assert_eq!(
        inbound_counts(&d).await,
        json!({"woken": {"onchar": 1, "mention": 1}, "skipped": {"missing_mention": 2}})
    );
    w.finish(d).await;
}

#[tokio::test]
async fn pairing_sends_one_code_and_an_approved_sender_gets_replies() {
    let w = world().await;
    let dir = tempfile::tempdir().unwrap();
    let d = w.start(dir.path(), &w.config(json!({"dmPolicy": "pairing"}))).await;

    let first = w.say(&w.dm_bob, &w.bob, "hello?");
    let offer = w.fake.wait_bot_posts(&w.dm_bob, 1, WAIT).await.expect("a pairing code is sent")[0].clone();
    assert_eq!(offer["root_id"], "", "{offer}");
    let text = str_of(&offer["message"]);
    let code: String = text
        .split("pairing code is ")
        .nth(1)
        .unwrap_or_else(|| panic!("no code in {text:?}"))
        .chars()
        .take(8)
        .collect();
    assert!(
        code.len() == 8 && code.chars().all(|c| c.is_ascii_uppercase() || c.is_ascii_digit()),
        "code {code:?} in {text:?}"
    );
    assert!(!code.contains(['0', 'O', '1', 'I']), "no ambiguous characters: {code}");
    assert!(text.contains(&format!("pincer pairing approve mattermost {code}")), "{text}");

    // A second message before approval: no second code, no run.
    let again = w.say(&w.dm_bob, &w.bob, "again");
    wait_counts(&d, "the second DM to be decided", |c| c["skipped"]["pairing_required"] == 2).await;
    assert_logged(&d, &first, "inbound dropped", "pairing_required").await;
    assert_logged(&d, &again, "inbound dropped", "pairing_required").await;

    let listed = cli(dir.path(), &["pairing", "list", "mattermost", "--json"]).await;
    let listed_text = String::from_utf8_lossy(&listed.stdout);
    assert!(listed.status.success() && listed_text.contains(&code), "pairing list: {listed_text}");
    let approved = cli(dir.path(), &["pairing", "approve", "mattermost", &code]).await;
    assert!(
        approved.status.success(),
        "pairing approve failed: {}{}",
        String::from_utf8_lossy(&approved.stdout),
        String::from_utf8_lossy(&approved.stderr)
    );

    let now = w.say(&w.dm_bob, &w.bob, "now?");
    w.expect_posts(&w.dm_bob, &[post(text.clone(), ""), post("echo: now?", "")]).await;
    assert_logged(&d, &now, "inbound accepted", "dm").await;
    assert_eq!(inbound_counts(&d).await, json!({"woken": {"dm": 1}, "skipped": {"pairing_required": 2}}));
    // Approval is per sender: alice is still unknown.
    w.say(&w.dm_alice, &w.alice, "me too?");
    let alice_offer = w.fake.wait_bot_posts(&w.dm_alice, 1, WAIT).await.expect("alice gets her own code")[0].clone();
    assert!(str_of(&alice_offer["message"]).contains("pairing code is "), "{alice_offer}");
    assert!(!str_of(&alice_offer["message"]).contains(&code), "a different code: {alice_offer}");
    w.finish(d).await;
}

#[tokio::test]
async fn the_same_posted_event_delivered_twice_gets_one_reply() {
    let w = world().await;
    let dir = tempfile::tempdir().unwrap();
    let d = w.start(dir.path(), &w.config(json!({"chatmode": "oncall"}))).await;

    let once = w.say(&w.a, &w.alice, "@pincer once");
    // Again at once (while the first delivery may still be in flight) and after the reply.
    assert_eq!(w.fake.replay_event(&once), 1, "the bot's connection got the event again");
    w.expect_posts(&w.a, &[post("echo: once", "")]).await;
    assert_eq!(w.fake.replay_event(&once), 1);
    w.say(&w.a, &w.alice, "@pincer after");
    w.expect_posts(&w.a, &[post("echo: once", ""), post("echo: after", "")]).await;

    let posted_once = w
        .fake
        .sent_events(TOKEN)
        .iter()
        .filter(|e| e.event == "posted" && e.payload["data"]["post"].as_str().is_some_and(|p| p.contains(&once)))
        .count();
    assert_eq!(posted_once, 3, "the fake delivered the same post three times");
    let decisions = logged_decisions(&d, &once).await;
    let accepted = decisions.iter().filter(|(m, _)| m == "inbound accepted").count();
    assert_eq!(accepted, 1, "accepted once: {decisions:?}");
    assert_eq!(inbound_counts(&d).await, json!({"woken": {"mention": 2}, "skipped": {"duplicate": 2}}));
    w.finish(d).await;
}

// ---------------------------------------------------------------------------------------
// The reload regression
// ---------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug)]
enum Trigger {
    /// Edit the file, SIGUSR1 (reload + in-process restart).
    Usr1,
    /// Edit the file, SIGHUP (reload).
    Hup,
    /// `config.patch` over the control plane.
    Patch,
}

/// While messages flow in two channels (top level and in a thread under the bot's post),
/// `chatmode` goes from `oncall` to `onmessage`. Every message before, during and after gets
/// exactly one reply in its own channel and thread, the session keys stay
/// `agent:main:mattermost:channel:<id>[:thread:<root>]`, and after the change a message
/// without mention is answered (the new mode is in effect).
async fn reload_while_messages_flow(trigger: Trigger) {
    let w = world().await;
    let dir = tempfile::tempdir().unwrap();
    let d = w.start(dir.path(), &w.config(json!({"chatmode": "oncall"}))).await;
    let chans = [("A", w.a.clone()), ("B", w.b.clone())];

    // Before: a root answered by the bot in each channel, then a reply under it (reply_to_bot)
    // and another mention.
    let mut roots = Vec::new();
    let mut want: Vec<Vec<(String, String)>> = vec![Vec::new(), Vec::new()];
    for (i, (tag, ch)) in chans.iter().enumerate() {
        w.say(ch, &w.alice, &format!("@pincer root {tag}"));
        want[i].push(post(format!("echo: root {tag}"), ""));
        roots.push(id_of(&w.expect_posts(ch, &want[i]).await[0]));
    }
    for (i, (tag, ch)) in chans.iter().enumerate() {
        w.reply(ch, &w.alice, &roots[i], &format!("before thread {tag}"));
        want[i].push(post(format!("echo: before thread {tag}"), &roots[i]));
        w.say(ch, &w.bob, &format!("@pincer before {tag}"));
        want[i].push(post(format!("echo: before {tag}"), ""));
    }
    for (i, (_, ch)) in chans.iter().enumerate() {
        w.expect_posts(ch, &want[i]).await;
    }
    let expected_keys: BTreeSet<String> =
        chans.iter().zip(&roots).flat_map(|((_, ch), root)| [channel_key(ch), thread_key(ch, root)]).collect();
    let keys_before: BTreeSet<String> = sessions(&d).await.iter().map(|s| str_of(&s["key"])).collect();
    assert_eq!(keys_before, expected_keys, "sessions before the change");

    // The change, with messages posted right behind it. Every "during" message mentions the
    // bot or replies under its post, so it wakes in either mode.
    let connections_before = w.fake.connections(TOKEN);
    let during = |w: &World, want: &mut Vec<Vec<(String, String)>>| {
        for n in 0..3 {
            for (i, (tag, ch)) in chans.iter().enumerate() {
                w.say(ch, &w.alice, &format!("@pincer during {tag} {n}"));
                want[i].push(post(format!("echo: during {tag} {n}"), ""));
                w.reply(ch, &w.bob, &roots[i], &format!("during thread {tag} {n}"));
                want[i].push(post(format!("echo: during thread {tag} {n}"), &roots[i]));
            }
        }
    };
    let mut ws = d.client().await;
    match trigger {
        Trigger::Usr1 | Trigger::Hup => {
            write_config(dir.path(), &w.config(json!({"chatmode": "onmessage"})));
            d.signal(if matches!(trigger, Trigger::Usr1) { "USR1" } else { "HUP" });
            during(&w, &mut want);
        }
        Trigger::Patch => {
            let patch = json!({"patch": {"channels": {"mattermost": {"chatmode": "onmessage"}}}});
            let (r, ()) = tokio::join!(ws.request("config.patch", patch), async { during(&w, &mut want) });
            assert_eq!(r["ok"], true, "config.patch: {r}");
            assert!(std::fs::read_to_string(dir.path().join("pincer.json")).unwrap().contains("onmessage"));
        }
    }
    // Wait until the change is in effect.
    match trigger {
        Trigger::Usr1 => {
            w.fake.wait_connections(TOKEN, connections_before + 1, WAIT).await.expect("the fresh runtime reconnects");
            drop(ws);
            ws = d.client().await;
        }
        Trigger::Hup => {
            tokio::time::timeout(WAIT, async {
                while ws.request("status", json!({})).await["payload"]["config"]["generation"].as_u64() < Some(2) {}
            })
            .await
            .expect("SIGHUP reloads the config");
        }
        Trigger::Patch => {}
    }
    let cfg = ws.request("config.get", json!({})).await;
    assert_eq!(cfg["payload"]["config"]["channels"]["mattermost"]["chatmode"], "onmessage", "{cfg}");
    if !matches!(trigger, Trigger::Usr1) {
        assert_eq!(w.fake.connections(TOKEN), connections_before, "a policy change keeps the connection");
    }

    // After: a message without mention now wakes (onmessage), as do the others.
    for (i, (tag, ch)) in chans.iter().enumerate() {
        w.say(ch, &w.bob, &format!("after plain {tag}"));
        want[i].push(post(format!("echo: after plain {tag}"), ""));
        w.reply(ch, &w.alice, &roots[i], &format!("after thread {tag}"));
        want[i].push(post(format!("echo: after thread {tag}"), &roots[i]));
        w.say(ch, &w.alice, &format!("@pincer after {tag}"));
        want[i].push(post(format!("echo: after {tag}"), ""));
    }
    // Sentinels last on each lane (channel and thread): a late duplicate would come before.
    for (i, (tag, ch)) in chans.iter().enumerate() {
        w.say(ch, &w.alice, &format!("@pincer sentinel {tag}"));
        want[i].push(post(format!("echo: sentinel {tag}"), ""));
        w.reply(ch, &w.alice, &roots[i], &format!("@pincer sentinel thread {tag}"));
        want[i].push(post(format!("echo: sentinel thread {tag}"), &roots[i]));
    }
    for (i, (_, ch)) in chans.iter().enumerate() {
        w.expect_posts(ch, &want[i]).await;
    }
    assert!(w.bot_posts(&w.dm_alice).is_empty() && w.bot_posts(&w.dm_bob).is_empty(), "nothing went to a DM");

    // The same sessions, each still delivering to its own channel and thread.
    let after = sessions(&d).await;
    let keys_after: BTreeSet<String> = after.iter().map(|s| str_of(&s["key"])).collect();
    assert_eq!(keys_after, expected_keys, "sessions after the change (no generic or empty-channel session)");
    for s in &after {
        let ctx = &s["deliveryContext"];
        let (ch, root) = chans
            .iter()
            .zip(&roots)
            .find_map(|((_, ch), root)| {
                if s["key"] == channel_key(ch).as_str() {
                    Some((ch.clone(), None))
                } else if s["key"] == thread_key(ch, root).as_str() {
                    Some((ch.clone(), Some(root.clone())))
                } else {
                    None
                }
            })
            .unwrap_or_else(|| panic!("unexpected session {s}"));
        assert_eq!((ctx["channel"].as_str(), ctx["accountId"].as_str()), (Some("mattermost"), Some("default")), "{s}");
        assert_eq!(ctx["to"], ch.as_str(), "{s}");
        assert_eq!(ctx["threadId"].as_str(), root.as_deref(), "{s}");
    }
    if matches!(trigger, Trigger::Usr1) {
        let st = w.fake.stats(TOKEN);
        assert!(st.resumed >= 1, "the fresh runtime resumed the connection (no missed events): {st:?}");
    }
    w.finish(d).await;
}

#[tokio::test]
async fn reload_by_sigusr1_while_messages_flow_keeps_every_reply_and_session() {
    reload_while_messages_flow(Trigger::Usr1).await;
}

#[tokio::test]
async fn reload_by_sighup_while_messages_flow_keeps_every_reply_and_session() {
    reload_while_messages_flow(Trigger::Hup).await;
}

#[tokio::test]
async fn reload_by_config_patch_while_messages_flow_keeps_every_reply_and_session() {
    reload_while_messages_flow(Trigger::Patch).await;
}
