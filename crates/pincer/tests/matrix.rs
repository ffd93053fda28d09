//! The Matrix channel end to end: the real binary against a real Synapse homeserver on loopback
//! (`scripts/peers/synapse.sh`: Synapse from PyPI in a virtualenv, a hand-written loopback-only
//! config, a bot and two people registered through the shared-secret API). Each test starts its
//! own Synapse in its own directory and port, and plays the people through the Matrix
//! client-server API (reqwest).
//!
//! The tests are not skipped when Synapse cannot be installed: the script's failure fails them.
//!
//! Synchronisation is on observable facts, never on sleeps: a person's `/sync` long-poll wakes
//! the test when anything happens in its rooms, and the truth is then read from
//! `/rooms/{roomId}/messages`. "No reply" is never asserted by waiting: each such case is
//! followed by a message on the same lane (same room or thread, so the same session) that does
//! get a reply, and then the exact list of the bot's messages is checked, so a late reply would
//! show.

mod common;
use common::*;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// The script that runs Synapse.
fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/peers/synapse.sh")
}

/// First start may install Synapse into its virtualenv (pip); later starts take seconds.
const START_TIMEOUT: Duration = Duration::from_secs(900);
/// Bound for a reconnect after the homeserver comes back (the supervisor backs off 1, 2, 4 s...).
const RECONNECT_WAIT: Duration = Duration::from_secs(90);

/// One Synapse, in its own directory and port, stopped when dropped.
struct Synapse {
    dir: tempfile::TempDir,
    port: u16,
    env: HashMap<String, String>,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

impl Synapse {
    async fn start() -> Synapse {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let mut s = Synapse { dir, port, env: HashMap::new() };
        s.run_start().await;
        s
    }

    /// `synapse.sh start <dir> <port>`; panics with the script's output if it fails.
    async fn run_start(&mut self) {
        let out = tokio::time::timeout(
            START_TIMEOUT,
            tokio::process::Command::new("bash")
                .arg(script())
                .arg("start")
                .arg(self.dir.path())
                .arg(self.port.to_string())
                .stdin(std::process::Stdio::null())
                .output(),
        )
        .await
        .expect("synapse.sh start timed out")
        .expect("run synapse.sh");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "synapse.sh start failed ({}):\nstdout:\n{stdout}\nstderr:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        self.env = stdout
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
            .collect();
    }

    fn get(&self, key: &str) -> String {
        self.env.get(key).cloned().unwrap_or_else(|| panic!("synapse.sh printed no {key}: {:?}", self.env))
    }

    fn homeserver(&self) -> String {
        self.get("HOMESERVER")
    }

    fn user(&self, who: &str) -> User {
        User { id: self.get(&format!("{who}_USER_ID")), token: self.get(&format!("{who}_ACCESS_TOKEN")) }
    }

    /// `kill -9` the server and wait for the process to be gone (pidfd: no polling).
    async fn kill9(&self) {
        let pid: libc::pid_t = self.get("SYNAPSE_PID").parse().expect("SYNAPSE_PID");
        // SAFETY: plain syscalls on a pid we started (through the script); no memory is shared.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) } as i32;
        assert!(fd >= 0, "pidfd_open({pid}) failed");
        // SAFETY: `fd` was just returned by pidfd_open and is owned here only.
        let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) };
        let rc = unsafe { libc::kill(pid, libc::SIGKILL) };
        assert_eq!(rc, 0, "kill -9 {pid}");
        // SAFETY: the pidfd stays open (owned by the AsyncFd) for as long as it is registered.
        let fd = unsafe { tokio::io::unix::AsyncFd::register(fd) }.unwrap_or_else(|e| panic!("register pidfd: {e}"));
        tokio::time::timeout(WAIT, fd.readable()).await.expect("synapse exits after kill -9").unwrap().retain_ready();
    }
}

use std::os::fd::FromRawFd;

impl Drop for Synapse {
    fn drop(&mut self) {
        let _ = std::process::Command::new("bash")
            .arg(script())
            .arg("stop")
            .arg(self.dir.path())
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status();
    }
}

/// A Matrix user with an access token.
#[derive(Clone, Debug)]
struct User {
    id: String,
    token: String,
}

static TXN: AtomicU64 = AtomicU64::new(1);

/// The client-server API, as the people of the tests use it.
#[derive(Clone)]
struct Cs {
    hs: String,
    http: reqwest::Client,
}

impl Cs {
    fn new(hs: &str) -> Cs {
        Cs { hs: hs.to_string(), http: reqwest::Client::new() }
    }

    async fn call(&self, user: &User, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let mut req =
            self.http.request(method.clone(), format!("{}{path}", self.hs)).bearer_auth(&user.token).timeout(WAIT);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        let status = resp.status();
        let v: Value = resp.json().await.unwrap_or(Value::Null);
        assert!(status.is_success(), "{method} {path}: HTTP {status}: {v}");
        v
    }

    /// A room created by `user`, inviting `invite`; a DM when `direct`.
    async fn create_room(&self, user: &User, name: Option<&str>, invite: &[&str], direct: bool) -> String {
        let mut body = json!({"invite": invite, "is_direct": direct, "preset": "private_chat"});
        if let Some(n) = name {
            body["name"] = json!(n);
        }
        if direct {
            body["preset"] = json!("trusted_private_chat");
        }
        let r = self.call(user, reqwest::Method::POST, "/_matrix/client/v3/createRoom", Some(body)).await;
        r["room_id"].as_str().expect("room_id").to_string()
    }

    /// Send an `m.room.message` with `content`; returns the event id.
    async fn send(&self, user: &User, room: &str, content: Value) -> String {
        let txn = TXN.fetch_add(1, Ordering::SeqCst);
        let path = format!("/_matrix/client/v3/rooms/{}/send/m.room.message/t{txn}", enc(room));
        let r = self.call(user, reqwest::Method::PUT, &path, Some(content)).await;
        r["event_id"].as_str().expect("event_id").to_string()
    }

    async fn say(&self, user: &User, room: &str, text: &str) -> String {
        self.send(user, room, json!({"msgtype": "m.text", "body": text})).await
    }

    /// A reply to `parent` (with the reply fallback older clients add to the body).
    async fn reply(&self, user: &User, room: &str, parent: &Value, text: &str) -> String {
        let quoted = format!("> <{}> {}\n\n{text}", str_of(&parent["sender"]), str_of(&parent["content"]["body"]));
        let content = json!({"msgtype": "m.text", "body": quoted,
            "m.relates_to": {"m.in_reply_to": {"event_id": parent["event_id"]}}});
        self.send(user, room, content).await
    }

    /// A message in the thread of `root`.
    async fn in_thread(&self, user: &User, room: &str, root: &str, text: &str) -> String {
        let content = json!({"msgtype": "m.text", "body": text,
            "m.relates_to": {"rel_type": "m.thread", "event_id": root, "is_falling_back": true,
                             "m.in_reply_to": {"event_id": root}}});
        self.send(user, room, content).await
    }

    /// Every event of `room`, oldest first.
    async fn messages(&self, user: &User, room: &str) -> Vec<Value> {
        let mut out = Vec::new();
        let mut from: Option<String> = None;
        loop {
            let mut path = format!("/_matrix/client/v3/rooms/{}/messages?dir=b&limit=1000", enc(room));
            if let Some(f) = &from {
                path.push_str(&format!("&from={}", enc(f)));
            }
            let r = self.call(user, reqwest::Method::GET, &path, None).await;
            let chunk = r["chunk"].as_array().cloned().unwrap_or_default();
            if chunk.is_empty() {
                break;
            }
            out.extend(chunk);
            match r["end"].as_str() {
                Some(e) => from = Some(e.to_string()),
                None => break,
            }
        }
        out.reverse();
        out
    }

    /// The `m.room.message` events `sender` sent in `room`, oldest first.
    async fn messages_from(&self, user: &User, room: &str, sender: &str) -> Vec<Value> {
        let all = self.messages(user, room).await;
        all.into_iter().filter(|e| e["type"] == "m.room.message" && e["sender"] == sender).collect()
    }

    async fn joined_members(&self, user: &User, room: &str) -> Vec<String> {
        let path = format!("/_matrix/client/v3/rooms/{}/joined_members", enc(room));
        let r = self.call(user, reqwest::Method::GET, &path, None).await;
        r["joined"].as_object().map(|m| m.keys().cloned().collect()).unwrap_or_default()
    }

    /// The devices of `user`.
    async fn devices(&self, user: &User) -> Vec<String> {
        let r = self.call(user, reqwest::Method::GET, "/_matrix/client/v3/devices", None).await;
        let mut ids: Vec<String> =
            r["devices"].as_array().into_iter().flatten().map(|d| str_of(&d["device_id"])).collect();
        ids.sort();
        ids
    }
}

/// Percent-encode a path or query component (room ids start with `!`, tokens hold `~`...).
fn enc(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn str_of(v: &Value) -> String {
    v.as_str().unwrap_or_default().to_string()
}

/// A person's view of "something happened": `/sync` long-polls from the last token.
struct Watch {
    user: User,
    since: Option<String>,
}

impl Watch {
    async fn new(cs: &Cs, user: &User) -> Watch {
        let mut w = Watch { user: user.clone(), since: None };
        w.next(cs, Duration::ZERO).await;
        w
    }

    /// Return when the user's `/sync` has something new (or after `timeout`).
    async fn next(&mut self, cs: &Cs, timeout: Duration) {
        let filter = enc(r#"{"room":{"timeline":{"limit":1}},"presence":{"not_types":["*"]}}"#);
        let mut path = format!("/_matrix/client/v3/sync?timeout={}&filter={filter}", timeout.as_millis());
        if let Some(s) = &self.since {
            path.push_str(&format!("&since={}", enc(s)));
        }
        let r = cs.call(&self.user, reqwest::Method::GET, &path, None).await;
        self.since = r["next_batch"].as_str().map(str::to_string);
    }
}

/// Everything one test needs: Synapse, the people, the bot, the daemon's state dir.
struct World {
    synapse: Synapse,
    cs: Cs,
    bot: User,
    bot_password: String,
    alice: User,
    watch: Watch,
    dir: tempfile::TempDir,
}

async fn world() -> World {
    let synapse = Synapse::start().await;
    let cs = Cs::new(&synapse.homeserver());
    let alice = synapse.user("HUMAN");
    let watch = Watch::new(&cs, &alice).await;
    World {
        bot: synapse.user("BOT"),
        bot_password: synapse.get("BOT_PASSWORD"),
        alice,
        cs,
        watch,
        synapse,
        dir: tempfile::tempdir().unwrap(),
    }
}

impl World {
    /// `channels.matrix` with the bot's password login, `autoJoin: always`, `groupPolicy: open`,
    /// plus `extra` keys.
    fn config(&self, extra: Value) -> Value {
        let mut section = json!({
            "homeserver": self.synapse.homeserver(),
            "userId": self.bot.id,
            "password": self.bot_password,
            "autoJoin": "always",
            "groupPolicy": "open",
        });
        for (k, v) in extra.as_object().expect("extra is an object") {
            section[k] = v.clone();
        }
        json!({"gateway": {"reload": {"mode": "off"}}, "channels": {"matrix": section}})
    }

    async fn start(&self, cfg: &Value) -> Daemon {
        write_config(self.dir.path(), cfg);
        Daemon::start(self.dir.path()).await
    }

    /// Wait (on alice's `/sync`) until `check` holds; panics with `what` after `limit`.
    async fn wait_until<F, Fut>(&mut self, what: &str, limit: Duration, check: F)
    where
        F: Fn(Cs) -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            if check(self.cs.clone()).await {
                return;
            }
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            assert!(!left.is_zero(), "timed out waiting for {what}");
            self.watch.next(&self.cs, left.min(Duration::from_secs(5))).await;
        }
    }

    /// A room created by alice with the bot invited; returns once the bot has joined.
    async fn room_with_bot(&mut self, name: &str) -> String {
        let room = self.cs.create_room(&self.alice, Some(name), &[&self.bot.id], false).await;
        self.wait_joined(&room).await;
        room
    }

    async fn wait_joined(&mut self, room: &str) {
        let (alice, bot, room_id) = (self.alice.clone(), self.bot.id.clone(), room.to_string());
        self.wait_until(&format!("the bot to join {room}"), WAIT, |cs| {
            let (alice, bot, room_id) = (alice.clone(), bot.clone(), room_id.clone());
            async move { cs.joined_members(&alice, &room_id).await.contains(&bot) }
        })
        .await;
    }

    /// Wait until the bot has sent `n` messages in `room`; returns them, oldest first.
    async fn wait_bot_messages(&mut self, room: &str, n: usize, limit: Duration) -> Vec<Value> {
        let (alice, bot, room_id) = (self.alice.clone(), self.bot.id.clone(), room.to_string());
        self.wait_until(&format!("{n} bot messages in {room}"), limit, |cs| {
            let (alice, bot, room_id) = (alice.clone(), bot.clone(), room_id.clone());
            async move { cs.messages_from(&alice, &room_id, &bot).await.len() >= n }
        })
        .await;
        self.cs.messages_from(&self.alice, room, &self.bot.id).await
    }

    /// Wait for `want.len()` bot messages in `room`, then require exactly these bodies (in
    /// order) and nothing else. Returns the messages.
    async fn expect_bot_messages(&mut self, room: &str, want: &[&str]) -> Vec<Value> {
        let got = self.wait_bot_messages(room, want.len(), WAIT).await;
        let bodies: Vec<String> = got.iter().map(|e| str_of(&e["content"]["body"])).collect();
        assert_eq!(bodies, want, "the bot's messages in {room}: each message answered exactly once");
        for e in &got {
            assert_eq!(e["content"]["msgtype"], "m.text", "{e}");
            assert_eq!(e["room_id"], room, "{e}");
        }
        got
    }

    /// Stop the daemon (SIGTERM) and require a clean exit.
    async fn finish(&self, d: Daemon) {
        let (code, stderr) = d.stop().await;
        assert_eq!(code, Some(0), "clean exit; stderr:\n{stderr}");
    }
}

/// The `channels.status` row of the Matrix `default` account.
async fn status_row(d: &Daemon) -> Value {
    let mut ws = d.client().await;
    let r = ws.request("channels.status", json!({})).await;
    r["payload"]["channelAccounts"]["matrix"]
        .as_array()
        .and_then(|rows| rows.iter().find(|r| r["accountId"] == "default").cloned())
        .unwrap_or_else(|| panic!("no matrix/default status row: {r}"))
}

/// Re-read `channels.status` until `pred` holds on the account's row (each read is a round trip
/// to the daemon; bounded by `limit`).
async fn wait_status(d: &Daemon, what: &str, limit: Duration, pred: impl Fn(&Value) -> bool) -> Value {
    let mut ws = d.client().await;
    let mut last = Value::Null;
    let found = tokio::time::timeout(limit, async {
        loop {
            let r = ws.request("channels.status", json!({})).await;
            last = r["payload"]["channelAccounts"]["matrix"][0].clone();
            if pred(&last) {
                return last.clone();
            }
        }
    })
    .await;
    found.unwrap_or_else(|_| panic!("timed out waiting for {what}; last row: {last}"))
}

/// The wake decisions the daemon logged for one event: `(message, reason)` of every
/// `inbound accepted` / `inbound dropped` line of the JSON file log with this `message_id`.
async fn logged_decisions(d: &Daemon, event_id: &str) -> Vec<(String, String)> {
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
            if v["message_id"] == event_id && (msg == "inbound accepted" || msg == "inbound dropped") {
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

async fn assert_logged(d: &Daemon, event_id: &str, outcome: &str, reason: &str) {
    let got = logged_decisions(d, event_id).await;
    assert_eq!(got, [(outcome.to_string(), reason.to_string())], "logged wake decision of event {event_id}");
}

/// Session keys and delivery contexts from `sessions.list`.
async fn sessions(d: &Daemon) -> Vec<Value> {
    let mut ws = d.client().await;
    let r = ws.request("sessions.list", json!({"limit": 1000})).await;
    r["payload"]["sessions"].as_array().cloned().unwrap_or_else(|| panic!("sessions.list: {r}"))
}

fn relates_to(e: &Value) -> &Value {
    &e["content"]["m.relates_to"]
}

#[tokio::test]
async fn an_invite_is_accepted_with_auto_join_always_and_a_mention_gets_exactly_one_reply_from_the_bot() {
    let mut w = world().await;
    let d = w.start(&w.config(json!({}))).await;

    // autoJoin: always: the invite is accepted.
    let room = w.room_with_bot("general").await;
    assert!(room.starts_with('!') && !room.contains(':'), "room version 12 ids have no :server part: {room}");

    let asked = w.cs.say(&w.alice, &room, "pincer-bot: what's up?").await;
    let got = w.expect_bot_messages(&room, &["echo: what's up?"]).await;
    assert_eq!(got[0]["sender"], w.bot.id.as_str());
    assert!(relates_to(&got[0]).is_null(), "a top-level reply: {}", got[0]);
    // A sentinel on the same session: a late duplicate of the first reply would come before it.
    w.cs.say(&w.alice, &room, &format!("{}: sentinel", w.bot.id)).await;
    w.expect_bot_messages(&room, &["echo: what's up?", "echo: sentinel"]).await;

    assert_logged(&d, &asked, "inbound accepted", "mention").await;
    let keys: Vec<String> = sessions(&d).await.iter().map(|s| str_of(&s["key"])).collect();
    let key = format!("agent:main:matrix:channel:{room}");
    assert!(keys.contains(&key), "the room's session, with the room id's exact case: {keys:?}");
    let row = status_row(&d).await;
    assert_eq!((row["state"].as_str(), row["connected"].as_bool()), (Some("running"), Some(true)), "{row}");
    assert_eq!(row["inbound"]["woken"], json!({"mention": 2}), "{row}");
    w.finish(d).await;
}

#[tokio::test]
async fn without_a_mention_require_mention_gives_no_reply_and_encrypted_rooms_are_skipped_visibly() {
    let mut w = world().await;
    let d = w.start(&w.config(json!({"groups": {"*": {"requireMention": true}}, "groupPolicy": "allowlist"}))).await;
    let room = w.room_with_bot("chatter").await;

    let plain = w.cs.say(&w.alice, &room, "just chatting, nobody in particular").await;
    // Same room, same session: answered only after the plain message was decided.
    let asked = w.cs.say(&w.alice, &room, "pincer-bot ping").await;
    w.expect_bot_messages(&room, &["echo: ping"]).await;
    assert_logged(&d, &plain, "inbound dropped", "missing_mention").await;
    assert_logged(&d, &asked, "inbound accepted", "mention").await;

    // An end-to-end-encrypted room: its encrypted messages cannot be read, and say so.
    let enc_room =
        w.cs.call(
            &w.alice,
            reqwest::Method::POST,
            "/_matrix/client/v3/createRoom",
            Some(json!({"name": "secret", "invite": [w.bot.id], "initial_state": [
                {"type": "m.room.encryption", "state_key": "", "content": {"algorithm": "m.megolm.v1.aes-sha2"}}
            ]})),
        )
        .await["room_id"]
            .as_str()
            .unwrap()
            .to_string();
    w.wait_joined(&enc_room).await;
    let txn = TXN.fetch_add(1, Ordering::SeqCst);
    let path = format!("/_matrix/client/v3/rooms/{}/send/m.room.encrypted/t{txn}", enc(&enc_room));
    let ciphertext = json!({"algorithm": "m.megolm.v1.aes-sha2", "ciphertext": "AwgAEnACgAkLmt", "device_id": "ALICEDEV",
        "sender_key": "c2VuZGVyIGtleQ", "session_id": "c2Vzc2lvbg"});
    w.cs.call(&w.alice, reqwest::Method::PUT, &path, Some(ciphertext)).await;
    // A plain message after it in the same room: when it is answered, the encrypted one was
    // handled.
    w.cs.say(&w.alice, &enc_room, "pincer-bot: plain text here").await;
    w.expect_bot_messages(&enc_room, &["echo: plain text here"]).await;
    let row = status_row(&d).await;
    assert_eq!(row["skipped"], json!({"encrypted_unsupported": 1}), "{row}");
    assert_eq!(row["e2ee"], "unsupported", "{row}");
    assert_eq!(row["encryptedRooms"], 1, "{row}");
    w.finish(d).await;
}

#[tokio::test]
async fn a_reply_to_the_bots_message_wakes_it_and_the_answer_references_it() {
    let mut w = world().await;
    let d = w.start(&w.config(json!({"replyToMode": "all"}))).await;
    let room = w.room_with_bot("replies").await;

    let first = w.cs.say(&w.alice, &room, "pincer-bot: please review the deploy").await;
    let got = w.expect_bot_messages(&room, &["echo: please review the deploy"]).await;
    assert_eq!(relates_to(&got[0])["m.in_reply_to"]["event_id"], first.as_str(), "replyToMode all: {}", got[0]);
    // A reply to alice's own message, no mention: not for the bot.
    let all = w.cs.messages(&w.alice, &room).await;
    let own = all.iter().find(|e| e["event_id"] == first.as_str()).unwrap().clone();
    let to_alice = w.cs.reply(&w.alice, &room, &own, "adding a note for myself").await;
    // A reply to the bot's message, no mention: reply_to_bot.
    let thanks = w.cs.reply(&w.alice, &room, &got[0], "Looks good, thanks!").await;
    let got = w.expect_bot_messages(&room, &["echo: please review the deploy", "echo: Looks good, thanks!"]).await;
    assert_eq!(relates_to(&got[1])["m.in_reply_to"]["event_id"], thanks.as_str(), "{}", got[1]);

    assert_logged(&d, &to_alice, "inbound dropped", "missing_mention").await;
    assert_logged(&d, &thanks, "inbound accepted", "reply_to_bot").await;
    w.finish(d).await;
}

#[tokio::test]
async fn a_thread_message_is_answered_in_the_thread_with_an_access_token_login() {
    let mut w = world().await;
    // The configured token instead of a password login.
    let cfg = w.config(json!({"accessToken": w.bot.token, "password": null}));
    let mut cfg = cfg;
    cfg["channels"]["matrix"].as_object_mut().unwrap().remove("password");
    let d = w.start(&cfg).await;
    let room = w.room_with_bot("threads").await;

    let root = w.cs.say(&w.alice, &room, "topic of the day: the release").await;
    let asked = w.cs.in_thread(&w.alice, &room, &root, "pincer-bot: what do you think?").await;
    let got = w.expect_bot_messages(&room, &["echo: what do you think?"]).await;
    let rel = relates_to(&got[0]);
    assert_eq!((rel["rel_type"].as_str(), rel["event_id"].as_str()), (Some("m.thread"), Some(root.as_str())), "{rel}");
    // The bot takes part in the thread now: a follow-up without mention wakes it.
    let follow = w.cs.in_thread(&w.alice, &room, &root, "and another thing").await;
    // Top level, with a mention: answered at the top level.
    w.cs.say(&w.alice, &room, "pincer-bot: top level").await;
    let got =
        w.expect_bot_messages(&room, &["echo: what do you think?", "echo: and another thing", "echo: top level"]).await;
    assert_eq!(relates_to(&got[1])["event_id"], root.as_str(), "{}", got[1]);
    assert!(relates_to(&got[2]).is_null(), "{}", got[2]);

    assert_logged(&d, &root, "inbound dropped", "missing_mention").await;
    assert_logged(&d, &asked, "inbound accepted", "mention").await;
    assert_logged(&d, &follow, "inbound accepted", "thread_participation").await;
    let ss = sessions(&d).await;
    let key = format!("agent:main:matrix:channel:{room}:thread:{root}");
    let thread = ss.iter().find(|s| s["key"] == key.as_str()).unwrap_or_else(|| panic!("no {key}: {ss:?}"));
    assert_eq!(thread["deliveryContext"]["to"], room.as_str(), "{thread}");
    assert_eq!(thread["deliveryContext"]["threadId"], root.as_str(), "{thread}");
    w.finish(d).await;
}

#[tokio::test]
async fn a_dm_under_pairing_gets_a_code_and_after_approval_an_answer() {
    let mut w = world().await;
    let d = w.start(&w.config(json!({"dm": {"policy": "pairing"}}))).await;
    let dm = w.cs.create_room(&w.alice, None, &[&w.bot.id], true).await;
    w.wait_joined(&dm).await;

    let first = w.cs.say(&w.alice, &dm, "hello?").await;
    let offer = w.wait_bot_messages(&dm, 1, WAIT).await[0].clone();
    let text = str_of(&offer["content"]["body"]);
    let code: String = text
        .split("pairing code is ")
        .nth(1)
        .unwrap_or_else(|| panic!("no code in {text:?}"))
        .chars()
        .take(8)
        .collect();
    assert!(code.len() == 8 && code.chars().all(|c| c.is_ascii_uppercase() || c.is_ascii_digit()), "{code:?}");
    assert!(text.contains(&format!("pincer pairing approve matrix {code}")), "{text}");

    // A second message before approval: no second code, no run.
    let again = w.cs.say(&w.alice, &dm, "again").await;
    wait_status(&d, "the second DM to be decided", WAIT, |r| r["inbound"]["skipped"]["pairing_required"] == 2).await;
    assert_logged(&d, &first, "inbound dropped", "pairing_required").await;
    assert_logged(&d, &again, "inbound dropped", "pairing_required").await;

    let approved = cli(w.dir.path(), &["pairing", "approve", "matrix", &code]).await;
    assert!(
        approved.status.success(),
        "pairing approve failed: {}{}",
        String::from_utf8_lossy(&approved.stdout),
        String::from_utf8_lossy(&approved.stderr)
    );
    let now = w.cs.say(&w.alice, &dm, "now?").await;
    w.expect_bot_messages(&dm, &[text.as_str(), "echo: now?"]).await;
    assert_logged(&d, &now, "inbound accepted", "dm").await;
    w.finish(d).await;
}

#[tokio::test]
async fn after_a_restart_messages_sent_while_down_are_answered_once_and_nothing_old_again() {
    let mut w = world().await;
    let cfg = w.config(json!({}));
    let d = w.start(&cfg).await;
    let room = w.room_with_bot("restarts").await;
    let before = w.cs.say(&w.alice, &room, "pincer-bot: before").await;
    w.expect_bot_messages(&room, &["echo: before"]).await;
    let devices = w.cs.devices(&w.bot).await;
    assert_eq!(devices.iter().filter(|d| d.starts_with("PINCER")).count(), 1, "one device for pincer: {devices:?}");

    w.finish(d).await;
    let mut down = Vec::new();
    for n in 0..3 {
        down.push(w.cs.say(&w.alice, &room, &format!("pincer-bot: while down {n}")).await);
    }
    w.cs.say(&w.alice, &room, "not for the bot, while down").await;

    let d = Daemon::start(w.dir.path()).await;
    w.expect_bot_messages(&room, &["echo: before", "echo: while down 0", "echo: while down 1", "echo: while down 2"])
        .await;
    w.cs.say(&w.alice, &room, "pincer-bot: sentinel").await;
    w.expect_bot_messages(
        &room,
        &["echo: before", "echo: while down 0", "echo: while down 1", "echo: while down 2", "echo: sentinel"],
    )
    .await;
    // Nothing old was handed over again (the sync token was kept), and the restart reused the
    // stored session: no new device, no new login.
    assert_eq!(
        logged_decisions(&d, &before).await,
        [("inbound accepted".to_string(), "mention".to_string())],
        "the first message was accepted once, in the first run, and not seen again"
    );
    for id in &down {
        assert_logged(&d, id, "inbound accepted", "mention").await;
    }
    assert_eq!(w.cs.devices(&w.bot).await, devices, "the restart did not create a device");
    w.finish(d).await;
}

#[tokio::test]
async fn a_reload_that_changes_only_policy_keeps_the_connection_and_replies_still_go_out() {
    let mut w = world().await;
    let d = w.start(&w.config(json!({}))).await;
    let room = w.room_with_bot("reloads").await;
    w.cs.say(&w.alice, &room, "pincer-bot: before").await;
    w.expect_bot_messages(&room, &["echo: before"]).await;
    let devices = w.cs.devices(&w.bot).await;

    // A policy change: the connection is kept (same attempt), the sender is rebuilt.
    write_config(w.dir.path(), &w.config(json!({"groups": {"*": {"autoReply": true}}})));
    d.signal("HUP");
    let mut ws = d.client().await;
    tokio::time::timeout(WAIT, async {
        while ws.request("status", json!({})).await["payload"]["config"]["generation"].as_u64() < Some(2) {}
    })
    .await
    .expect("SIGHUP reloads the config");
    // No mention needed any more, and the reply goes out through the new sender.
    w.cs.say(&w.alice, &room, "no mention now").await;
    w.expect_bot_messages(&room, &["echo: before", "echo: no mention now"]).await;
    let row = status_row(&d).await;
    assert_eq!((row["attempts"].as_u64(), row["connected"].as_bool()), (Some(1), Some(true)), "kept: {row}");
    assert_eq!(w.cs.devices(&w.bot).await, devices, "no new device");
    w.finish(d).await;
}

#[tokio::test]
async fn more_messages_while_down_than_one_sync_batch_holds_are_all_answered_once() {
    let mut w = world().await;
    let mut cfg = w.config(json!({}));
    // One session gets all of them at once: let its queue hold them (the default cap of 20
    // drops the oldest, by design).
    cfg["messages"] = json!({"queue": {"cap": 1000}});
    let d = w.start(&cfg).await;
    let room = w.room_with_bot("backlog").await;
    w.finish(d).await;

    // More than the 100 timeline events a /sync batch carries per room: the restarted adapter
    // gets a `limited` timeline and fills the gap with /messages.
    let n = 130;
    for i in 0..n {
        w.cs.say(&w.alice, &room, &format!("pincer-bot: m{i:03}")).await;
    }
    let d = Daemon::start(w.dir.path()).await;
    let got = w.wait_bot_messages(&room, n, Duration::from_secs(120)).await;
    let bodies: Vec<String> = got.iter().map(|e| str_of(&e["content"]["body"])).collect();
    let want: Vec<String> = (0..n).map(|i| format!("echo: m{i:03}")).collect();
    assert_eq!(bodies, want, "every message answered once, in order");
    w.cs.say(&w.alice, &room, "pincer-bot: sentinel").await;
    let got = w.wait_bot_messages(&room, n + 1, WAIT).await;
    assert_eq!(got.len(), n + 1, "nothing answered twice");
    w.finish(d).await;
}

#[tokio::test]
async fn after_synapse_is_killed_and_restarted_the_channel_reconnects_by_itself() {
    let mut w = world().await;
    let d = w.start(&w.config(json!({}))).await;
    let room = w.room_with_bot("crashes").await;
    w.cs.say(&w.alice, &room, "pincer-bot: before the crash").await;
    w.expect_bot_messages(&room, &["echo: before the crash"]).await;

    w.synapse.kill9().await;
    let row = wait_status(&d, "the disconnect to be noticed", WAIT, |r| r["connected"] == false).await;
    assert!(row["lastDisconnect"]["error"].is_string(), "{row}");
    w.synapse.run_start().await;
    // The same users and rooms (the database survived); alice's token is still valid.
    w.watch = Watch::new(&w.cs, &w.alice).await;
    let after = w.cs.say(&w.alice, &room, "pincer-bot: after the crash").await;
    let got = w.wait_bot_messages(&room, 2, RECONNECT_WAIT).await;
    let bodies: Vec<String> = got.iter().map(|e| str_of(&e["content"]["body"])).collect();
    assert_eq!(bodies, ["echo: before the crash", "echo: after the crash"]);
    assert_logged(&d, &after, "inbound accepted", "mention").await;
    let row = status_row(&d).await;
    assert_eq!((row["state"].as_str(), row["connected"].as_bool()), (Some("running"), Some(true)), "{row}");
    w.finish(d).await;
}
