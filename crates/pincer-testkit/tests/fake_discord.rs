//! The fake Discord against raw clients (tokio-tungstenite, reqwest) and against twilight
//! 0.17 (twilight-gateway's `Shard`, twilight-http's `Client`), which proves the payloads
//! deserialize into twilight-model.

use futures_util::{SinkExt, StreamExt};
use pincer_testkit::discord::{INTENT_DIRECT_MESSAGES, INTENT_GUILDS, INTENT_GUILD_MESSAGES, INTENT_MESSAGE_CONTENT};
use pincer_testkit::{ChannelSpec, CloseBy, FakeDiscord, MessageSpec};
use serde_json::{json, Value};
use std::time::Duration;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

const TOKEN: &str = "bot-token-1";
const BOT_ID: &str = "900000000000000001";
const TOKEN2: &str = "bot-token-2";
const BOT2_ID: &str = "900000000000000002";
const GUILD: &str = "100000000000000001";
const CHANNEL: &str = "200000000000000001";
const THREAD: &str = "200000000000000002";
const DM: &str = "200000000000000003";
const USER: &str = "300000000000000001";
const ALL: u64 = INTENT_GUILDS | INTENT_GUILD_MESSAGES | INTENT_DIRECT_MESSAGES | INTENT_MESSAGE_CONTENT;
const T: Duration = Duration::from_secs(10);

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

async fn fake() -> FakeDiscord {
    let fake = FakeDiscord::start().await;
    fake.add_bot(TOKEN, BOT_ID, "pincer");
    fake.add_bot(TOKEN2, BOT2_ID, "other");
    fake.add_guild(GUILD, "Test Guild");
    fake.add_channel(ChannelSpec::text(CHANNEL, GUILD, "general"));
    fake.add_channel(ChannelSpec::thread(THREAD, GUILD, CHANNEL, "a thread"));
    fake.add_channel(ChannelSpec::dm(DM, BOT_ID, USER, "alice"));
    fake.set_heartbeat_interval(300);
    fake.set_overlap_grace(Duration::from_millis(300));
    fake
}

async fn connect(fake: &FakeDiscord) -> Ws {
    let url = format!("{}/?v=10&encoding=json", fake.gateway_url());
    tokio_tungstenite::connect_async(url).await.expect("connect").0
}

/// The next JSON payload; panics on a close, EOF or timeout.
async fn recv(ws: &mut Ws) -> Value {
    loop {
        let msg = tokio::time::timeout(T, ws.next()).await.expect("timed out waiting for a gateway payload");
        match msg {
            Some(Ok(Message::Text(t))) => return serde_json::from_str(t.as_str()).expect("json"),
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            other => panic!("expected a text frame, got {other:?}"),
        }
    }
}

/// Reads until the connection ends; returns the close code (`None`: ended without a close
/// frame).
async fn recv_close(ws: &mut Ws) -> Option<u16> {
    loop {
        let msg = tokio::time::timeout(T, ws.next()).await.expect("timed out waiting for the close");
        match msg {
            Some(Ok(Message::Close(frame))) => return frame.map(|f| u16::from(f.code)),
            Some(Ok(_)) => continue,
            Some(Err(_)) | None => return None,
        }
    }
}

async fn send(ws: &mut Ws, v: Value) {
    ws.send(Message::Text(v.to_string().into())).await.expect("send");
}

async fn close(ws: &mut Ws, code: u16) {
    ws.send(Message::Close(Some(CloseFrame { code: CloseCode::from(code), reason: "bye".into() })))
        .await
        .expect("close");
}

fn identify(token: &str, intents: u64) -> Value {
    json!({"op": 2, "d": {
        "token": token,
        "properties": {"os": "linux", "browser": "pincer-test", "device": "pincer-test"},
        "intents": intents,
    }})
}

/// Connects, checks HELLO, identifies, checks READY and GUILD_CREATE; returns the socket,
/// the session id and the last sequence number.
async fn identified(fake: &FakeDiscord, token: &str) -> (Ws, String, u64) {
    let mut ws = connect(fake).await;
    let hello = recv(&mut ws).await;
    assert_eq!(hello["op"], 10);
    send(&mut ws, identify(token, ALL)).await;
    let ready = recv(&mut ws).await;
    assert_eq!(ready["t"], "READY", "{ready}");
    let sid = ready["d"]["session_id"].as_str().unwrap().to_string();
    let guild = recv(&mut ws).await;
    assert_eq!(guild["t"], "GUILD_CREATE");
    (ws, sid, guild["s"].as_u64().unwrap())
}

#[tokio::test]
async fn hello_identify_ready_guild_create() {
    let fake = fake().await;
    let mut ws = connect(&fake).await;
    let hello = recv(&mut ws).await;
    assert_eq!(hello, json!({"op": 10, "d": {"heartbeat_interval": 300}, "s": null, "t": null}));
    send(&mut ws, identify(&format!("Bot {TOKEN}"), ALL)).await;

    let ready = recv(&mut ws).await;
    assert_eq!((ready["op"].as_u64(), ready["t"].as_str(), ready["s"].as_u64()), (Some(0), Some("READY"), Some(1)));
    let d = &ready["d"];
    assert_eq!(d["v"], 10);
    assert_eq!(d["user"]["id"], BOT_ID);
    assert_eq!(d["user"]["bot"], true);
    assert_eq!(d["guilds"], json!([{"id": GUILD, "unavailable": true}]));
    assert_eq!(d["resume_gateway_url"], fake.gateway_url());
    assert_eq!(d["shard"], json!([0, 1]));
    assert_eq!(d["application"]["id"], BOT_ID);
    assert_eq!(d["session_id"].as_str().unwrap().len(), 32);

    let guild = recv(&mut ws).await;
    assert_eq!((guild["t"].as_str(), guild["s"].as_u64()), (Some("GUILD_CREATE"), Some(2)));
    assert_eq!(guild["d"]["id"], GUILD);
    assert_eq!(guild["d"]["unavailable"], false);
    assert_eq!(guild["d"]["channels"][0]["id"], CHANNEL);
    assert_eq!(guild["d"]["threads"][0]["id"], THREAD);
    assert_eq!(guild["d"]["threads"][0]["parent_id"], CHANNEL);

    let s = fake.stats(TOKEN);
    assert_eq!((s.live_sessions, s.identify_count, s.ready_count, s.connection_count), (1, 1, 1, 1));
    assert_eq!(fake.gateway_queries(), vec!["v=10&encoding=json".to_string()]);

    // A user message reaches the session as MESSAGE_CREATE with guild fields.
    let id = fake.user_message(MessageSpec::new(CHANNEL, USER, "alice", "hello bot").mention(BOT_ID));
    let m = recv(&mut ws).await;
    assert_eq!((m["t"].as_str(), m["s"].as_u64()), (Some("MESSAGE_CREATE"), Some(3)));
    assert_eq!(m["d"]["id"], id.as_str());
    assert_eq!(m["d"]["guild_id"], GUILD);
    assert_eq!(m["d"]["content"], "hello bot");
    assert_eq!(m["d"]["author"]["username"], "alice");
    assert_eq!(m["d"]["mentions"][0]["id"], BOT_ID);
    assert_eq!(m["d"]["mentions"][0]["member"]["roles"], json!([]));
    assert!(m["d"]["member"].is_object());

    // A reply carries type 19, message_reference and the referenced message.
    let reply = fake.user_message(MessageSpec::new(CHANNEL, USER, "alice", "again").reply_to(&id));
    let r = recv(&mut ws).await;
    assert_eq!(r["d"]["id"], reply.as_str());
    assert_eq!(r["d"]["type"], 19);
    assert_eq!(r["d"]["message_reference"]["message_id"], id.as_str());
    assert_eq!(r["d"]["referenced_message"]["content"], "hello bot");
    assert_eq!(fake.violations(), 0);
}

#[tokio::test]
async fn heartbeats_are_acked_unless_paused() {
    let fake = fake().await;
    let mut ws = connect(&fake).await;
    recv(&mut ws).await; // HELLO
                         // Heartbeats are allowed before IDENTIFY.
    send(&mut ws, json!({"op": 1, "d": null})).await;
    assert_eq!(recv(&mut ws).await, json!({"op": 11, "d": null, "s": null, "t": null}));
    send(&mut ws, identify(TOKEN, ALL)).await;
    recv(&mut ws).await; // READY
    let last = recv(&mut ws).await["s"].as_u64().unwrap(); // GUILD_CREATE
    send(&mut ws, json!({"op": 1, "d": last})).await;
    assert_eq!(recv(&mut ws).await["op"], 11);
    assert_eq!(fake.stats(TOKEN).heartbeats, 1);

    assert_eq!(fake.pause_heartbeat_acks(TOKEN), 1);
    send(&mut ws, json!({"op": 1, "d": last})).await;
    fake.wait_for(T, |f| f.stats(TOKEN).heartbeats == 2).await.unwrap();
    // The heartbeat was processed and not acked: the next payload is the dispatch.
    fake.user_message(MessageSpec::new(CHANNEL, USER, "alice", "ping?"));
    assert_eq!(recv(&mut ws).await["t"], "MESSAGE_CREATE");
    let s = fake.stats(TOKEN);
    assert_eq!((s.heartbeats, s.heartbeat_acks), (2, 1));

    // A server-requested heartbeat.
    assert_eq!(fake.request_heartbeat(TOKEN), 1);
    assert_eq!(recv(&mut ws).await, json!({"op": 1, "d": null, "s": null, "t": null}));

    fake.resume_heartbeat_acks(TOKEN);
    send(&mut ws, json!({"op": 1, "d": last + 1})).await;
    assert_eq!(recv(&mut ws).await["op"], 11);

    // A new connection of another bot is acked normally.
    let (mut other, _, _) = identified(&fake, TOKEN2).await;
    send(&mut other, json!({"op": 1, "d": 2})).await;
    assert_eq!(recv(&mut other).await["op"], 11);
}

#[tokio::test]
async fn overlapping_identify_is_rejected_and_counted() {
    let fake = fake().await;
    let (mut first, _, _) = identified(&fake, TOKEN).await;

    let mut second = connect(&fake).await;
    recv(&mut second).await; // HELLO
    send(&mut second, identify(TOKEN, ALL)).await;
    assert_eq!(recv(&mut second).await, json!({"op": 9, "d": false, "s": null, "t": null}));
    assert_eq!(recv_close(&mut second).await, Some(4005));

    assert_eq!(fake.violations(), 1);
    let v = &fake.violation_details()[0];
    assert_eq!((v.token.as_str(), v.op, v.other_live_sessions), (TOKEN, "IDENTIFY", 1));
    assert_eq!(fake.max_live_sessions(TOKEN), 2);
    assert_eq!(fake.live_sessions(TOKEN), 1);
    assert_eq!(fake.identify_count(TOKEN), 2);
    assert_eq!(fake.connection_count(TOKEN), 1);

    // The first session is untouched.
    fake.user_message(MessageSpec::new(CHANNEL, USER, "alice", "still there?"));
    assert_eq!(recv(&mut first).await["t"], "MESSAGE_CREATE");

    // An overlapping RESUME is a violation too.
    let (_third, sid, seq) = {
        let mut third = connect(&fake).await;
        recv(&mut third).await;
        send(&mut third, identify(TOKEN2, ALL)).await;
        let ready = recv(&mut third).await;
        let sid = ready["d"]["session_id"].as_str().unwrap().to_string();
        let seq = recv(&mut third).await["s"].as_u64().unwrap();
        (third, sid, seq)
    };
    let mut resumer = connect(&fake).await;
    recv(&mut resumer).await;
    send(&mut resumer, json!({"op": 6, "d": {"token": TOKEN2, "session_id": sid, "seq": seq}})).await;
    assert_eq!(recv(&mut resumer).await["op"], 9);
    assert_eq!(recv_close(&mut resumer).await, Some(4005));
    assert_eq!(fake.violations(), 2);
    assert_eq!(fake.violation_details()[1].op, "RESUME");
}

#[tokio::test]
async fn sequential_connections_are_not_violations() {
    let fake = fake().await;
    // Close with 4000 and identify on a new socket at once, without waiting for the close
    // handshake: the grace period absorbs the race.
    let (mut a, _, _) = identified(&fake, TOKEN).await;
    close(&mut a, 4000).await;
    let (b, _, _) = identified(&fake, TOKEN).await;
    // Drop the TCP connection (no close frame) and identify again.
    drop(a);
    drop(b);
    let (_c, _, _) = identified(&fake, TOKEN).await;

    assert_eq!(fake.violations(), 0, "{}", fake.summary());
    assert_eq!(fake.max_live_sessions(TOKEN), 1);
    assert_eq!(fake.connection_count(TOKEN), 3);
    assert_eq!(fake.live_sessions(TOKEN), 1);
    assert_eq!(fake.identify_count(TOKEN), 3);
}

#[tokio::test]
async fn drop_socket_then_resume_replays_missed_dispatches() {
    let fake = fake().await;
    let (mut ws, sid, seq) = identified(&fake, TOKEN).await;
    assert_eq!(fake.drop_socket(TOKEN), 1);
    assert_eq!(recv_close(&mut ws).await, None, "a dropped socket ends without a close frame");
    assert_eq!(fake.live_sessions(TOKEN), 0);
    assert_eq!(fake.close_log().last().unwrap().by, CloseBy::ServerAbort);

    // Posted while no socket is live: kept in the session.
    let missed = fake.user_message(MessageSpec::new(CHANNEL, USER, "alice", "while you were away"));

    let mut ws = connect(&fake).await;
    recv(&mut ws).await; // HELLO
    send(&mut ws, json!({"op": 6, "d": {"token": TOKEN, "session_id": sid, "seq": seq}})).await;
    let replayed = recv(&mut ws).await;
    assert_eq!((replayed["t"].as_str(), replayed["s"].as_u64()), (Some("MESSAGE_CREATE"), Some(seq + 1)));
    assert_eq!(replayed["d"]["id"], missed.as_str());
    let resumed = recv(&mut ws).await;
    assert_eq!((resumed["t"].as_str(), resumed["s"].as_u64()), (Some("RESUMED"), Some(seq + 2)));

    let s = fake.stats(TOKEN);
    assert_eq!((s.resume_count, s.resumed_count, s.connection_count, s.live_sessions), (1, 1, 2, 1));
    assert_eq!(fake.violations(), 0);

    // Live again: new dispatches continue the sequence.
    fake.user_message(MessageSpec::new(CHANNEL, USER, "alice", "welcome back"));
    assert_eq!(recv(&mut ws).await["s"].as_u64(), Some(seq + 3));

    // Resuming from an older seq replays everything after it (after a reconnect request).
    assert_eq!(fake.send_reconnect(TOKEN), 1);
    assert_eq!(recv(&mut ws).await["op"], 7);
    close(&mut ws, 4000).await;
    let mut ws = connect(&fake).await;
    recv(&mut ws).await;
    send(&mut ws, json!({"op": 6, "d": {"token": TOKEN, "session_id": sid, "seq": seq + 1}})).await;
    let kinds: Vec<(String, u64)> = {
        let mut v = Vec::new();
        for _ in 0..3 {
            let p = recv(&mut ws).await;
            v.push((p["t"].as_str().unwrap().to_string(), p["s"].as_u64().unwrap()));
        }
        v
    };
    assert_eq!(
        kinds,
        vec![
            ("RESUMED".to_string(), seq + 2),
            ("MESSAGE_CREATE".to_string(), seq + 3),
            ("RESUMED".to_string(), seq + 4)
        ]
    );
    fake.wait_resumed(TOKEN, 2, T).await.unwrap();
    assert_eq!(fake.violations(), 0);

    // A seq ahead of the session is invalid.
    drop(ws);
    fake.wait_live_sessions(TOKEN, 0, T).await.unwrap();
    let mut ws = connect(&fake).await;
    recv(&mut ws).await;
    send(&mut ws, json!({"op": 6, "d": {"token": TOKEN, "session_id": sid, "seq": seq + 100}})).await;
    assert_eq!(recv_close(&mut ws).await, Some(4007));
}

#[tokio::test]
async fn close_1000_invalidates_the_session() {
    let fake = fake().await;
    let (mut ws, sid, seq) = identified(&fake, TOKEN).await;
    close(&mut ws, 1000).await;
    fake.wait_live_sessions(TOKEN, 0, T).await.unwrap();
    let missed = fake.user_message(MessageSpec::new(CHANNEL, USER, "alice", "nobody hears this"));

    let mut ws = connect(&fake).await;
    recv(&mut ws).await;
    send(&mut ws, json!({"op": 6, "d": {"token": TOKEN, "session_id": sid, "seq": seq}})).await;
    assert_eq!(recv(&mut ws).await, json!({"op": 9, "d": false, "s": null, "t": null}));
    // The socket may identify afresh; the message posted without a session was missed.
    send(&mut ws, identify(TOKEN, ALL)).await;
    assert_eq!(recv(&mut ws).await["t"], "READY");
    assert_eq!(recv(&mut ws).await["t"], "GUILD_CREATE");
    let next = fake.user_message(MessageSpec::new(CHANNEL, USER, "alice", "hello again"));
    let m = recv(&mut ws).await;
    assert_eq!(m["d"]["id"], next.as_str());
    assert_ne!(next, missed);
    let s = fake.stats(TOKEN);
    assert_eq!((s.resume_count, s.resumed_count, s.invalid_sessions_sent, s.ready_count), (1, 0, 1, 2));

    // An unknown session id gets op 9 as well.
    let mut other = connect(&fake).await;
    recv(&mut other).await;
    send(&mut other, json!({"op": 6, "d": {"token": TOKEN2, "session_id": "nope", "seq": 1}})).await;
    assert_eq!(recv(&mut other).await["op"], 9);

    // invalid_session(false) from the server invalidates it too.
    assert_eq!(fake.send_invalid_session(TOKEN, false), 1);
    assert_eq!(recv(&mut ws).await, json!({"op": 9, "d": false, "s": null, "t": null}));
    assert_eq!(fake.live_sessions(TOKEN), 0);
}

async fn expect_close(fake: &FakeDiscord, payloads: &[Value], code: u16) {
    let mut ws = connect(fake).await;
    recv(&mut ws).await; // HELLO
    for p in payloads {
        send(&mut ws, p.clone()).await;
    }
    assert_eq!(recv_close(&mut ws).await, Some(code), "after {payloads:?}");
}

#[tokio::test]
async fn protocol_errors_close_with_discord_codes() {
    let fake = fake().await;
    expect_close(&fake, &[identify("wrong-token", ALL)], 4004).await;
    expect_close(&fake, &[json!({"op": 3, "d": {}})], 4003).await;
    expect_close(&fake, &[json!({"op": 99, "d": null})], 4001).await;
    expect_close(&fake, &[json!("not an object")], 4002).await;
    expect_close(&fake, &[json!({"op": 2, "d": {"token": TOKEN, "intents": 1}})], 4002).await;
    expect_close(&fake, &[identify(TOKEN, 1 << 30)], 4013).await;
    let mut bad_shard = identify(TOKEN, ALL);
    bad_shard["d"]["shard"] = json!([1, 2]);
    expect_close(&fake, &[bad_shard], 4010).await;

    fake.set_allowed_intents(0);
    expect_close(&fake, &[identify(TOKEN, ALL)], 4014).await;
    fake.set_allowed_intents(INTENT_MESSAGE_CONTENT);

    // Invalid JSON text.
    let mut ws = connect(&fake).await;
    recv(&mut ws).await;
    ws.send(Message::Text("{nope".into())).await.unwrap();
    assert_eq!(recv_close(&mut ws).await, Some(4002));

    // IDENTIFY twice on one socket.
    let (mut ws, _, _) = identified(&fake, TOKEN).await;
    send(&mut ws, identify(TOKEN, ALL)).await;
    assert_eq!(recv_close(&mut ws).await, Some(4005));

    // Wrong API version.
    let url = format!("{}/?v=9&encoding=json", fake.gateway_url());
    let mut ws = tokio_tungstenite::connect_async(url).await.unwrap().0;
    assert_eq!(recv_close(&mut ws).await, Some(4012));

    let server_codes: Vec<u16> =
        fake.close_log().iter().filter(|c| c.by == CloseBy::Server).filter_map(|c| c.code).collect();
    assert_eq!(server_codes, vec![4004, 4003, 4001, 4002, 4002, 4013, 4010, 4014, 4002, 4005, 4012]);
    assert_eq!(fake.violations(), 0);
}

#[tokio::test]
async fn intents_gate_dispatches_and_content() {
    let fake = fake().await;
    // Without MESSAGE_CONTENT: content only when mentioned; without DIRECT_MESSAGES: no DMs.
    let mut ws = connect(&fake).await;
    recv(&mut ws).await;
    send(&mut ws, identify(TOKEN, INTENT_GUILDS | INTENT_GUILD_MESSAGES)).await;
    assert_eq!(recv(&mut ws).await["t"], "READY");
    assert_eq!(recv(&mut ws).await["t"], "GUILD_CREATE");
    fake.user_message(MessageSpec::new(DM, USER, "alice", "a dm"));
    fake.user_message(MessageSpec::new(CHANNEL, USER, "alice", "secret"));
    fake.user_message(MessageSpec::new(THREAD, USER, "alice", "hey bot").mention(BOT_ID));
    let a = recv(&mut ws).await;
    assert_eq!((a["d"]["channel_id"].as_str(), a["d"]["content"].as_str()), (Some(CHANNEL), Some("")));
    let b = recv(&mut ws).await;
    assert_eq!((b["d"]["channel_id"].as_str(), b["d"]["content"].as_str()), (Some(THREAD), Some("hey bot")));
    assert_eq!(b["d"]["channel_type"], 11);
}

async fn post(fake: &FakeDiscord, token: &str, channel: &str, body: Value) -> (u16, reqwest::header::HeaderMap, Value) {
    let resp = reqwest::Client::new()
        .post(format!("{}/channels/{channel}/messages", fake.api_root()))
        .header("authorization", format!("Bot {token}"))
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    (status, headers, resp.json().await.unwrap_or(Value::Null))
}

async fn get(fake: &FakeDiscord, token: Option<&str>, path: &str) -> (u16, Value) {
    let mut req = reqwest::Client::new().get(format!("{}{path}", fake.api_root()));
    if let Some(t) = token {
        req = req.header("authorization", format!("Bot {t}"));
    }
    let resp = req.send().await.unwrap();
    (resp.status().as_u16(), resp.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn rest_validates_like_discord() {
    let fake = fake().await;
    let (mut ws, _, _) = identified(&fake, TOKEN).await;

    assert_eq!(get(&fake, None, "/users/@me").await, (401, json!({"message": "401: Unauthorized", "code": 0})));
    assert_eq!(get(&fake, Some("nope"), "/users/@me").await.0, 401);
    let (status, me) = get(&fake, Some(TOKEN), "/users/@me").await;
    assert_eq!((status, me["id"].as_str(), me["bot"].as_bool()), (200, Some(BOT_ID), Some(true)));
    let (_, gw) = get(&fake, Some(TOKEN), "/gateway/bot").await;
    assert_eq!(gw["url"], fake.gateway_url());
    assert_eq!(gw["shards"], 1);
    assert_eq!(gw["session_start_limit"]["max_concurrency"], 1);
    let (status, ch) = get(&fake, Some(TOKEN), &format!("/channels/{THREAD}")).await;
    assert_eq!((status, ch["type"].as_u64(), ch["parent_id"].as_str()), (200, Some(11), Some(CHANNEL)));
    assert_eq!(ch["guild_id"], GUILD);
    assert_eq!(
        get(&fake, Some(TOKEN), "/channels/1").await,
        (404, json!({"message": "Unknown Channel", "code": 10003}))
    );
    assert_eq!(get(&fake, Some(TOKEN2), &format!("/channels/{DM}")).await.0, 403);
    assert_eq!(get(&fake, Some(TOKEN), "/nope").await, (404, json!({"message": "404: Not Found", "code": 0})));

    // Content length: 2000 characters is fine, 2001 is not.
    let (status, _, body) = post(&fake, TOKEN, CHANNEL, json!({"content": "é".repeat(2001)})).await;
    assert_eq!(status, 400);
    assert_eq!(body["code"], 50035);
    assert_eq!(body["errors"]["content"]["_errors"][0]["code"], "BASE_TYPE_MAX_LENGTH");
    let (status, headers, msg) = post(&fake, TOKEN, CHANNEL, json!({"content": "é".repeat(2000)})).await;
    assert_eq!(status, 200, "{msg}");
    for h in ["x-ratelimit-limit", "x-ratelimit-remaining", "x-ratelimit-reset-after", "x-ratelimit-bucket"] {
        assert!(headers.contains_key(h), "missing {h}");
    }
    assert_eq!(msg["author"]["id"], BOT_ID);
    assert_eq!(
        (msg["type"].as_u64(), msg["tts"].as_bool(), msg["pinned"].as_bool()),
        (Some(0), Some(false), Some(false))
    );
    assert!(msg["edited_timestamp"].is_null());

    // The bot's own message comes back on its gateway session.
    let own = recv(&mut ws).await;
    assert_eq!((own["t"].as_str(), own["d"]["id"].as_str()), (Some("MESSAGE_CREATE"), msg["id"].as_str()));
    assert_eq!(own["d"]["author"]["bot"], true);

    let (status, _, body) = post(&fake, TOKEN, CHANNEL, json!({"content": ""})).await;
    assert_eq!((status, body["code"].as_u64()), (400, Some(50006)));
    let (status, _, body) = post(&fake, TOKEN, "1", json!({"content": "x"})).await;
    assert_eq!((status, body["code"].as_u64()), (404, Some(10003)));
    let (status, _, body) = post(&fake, TOKEN, CHANNEL, json!({"content": "x", "nonce": "n".repeat(26)})).await;
    assert_eq!((status, body["code"].as_u64()), (400, Some(50035)));
    assert!(body["errors"]["nonce"].is_object());
    let (status, _, _) = post(&fake, TOKEN2, DM, json!({"content": "not my dm"})).await;
    assert_eq!(status, 403);

    // enforce_nonce: the same nonce returns the existing message.
    let body = json!({"content": "once", "nonce": "abc-1", "enforce_nonce": true});
    let (s1, _, m1) = post(&fake, TOKEN, CHANNEL, body.clone()).await;
    let (s2, _, m2) = post(&fake, TOKEN, CHANNEL, body).await;
    assert_eq!((s1, s2), (200, 200));
    assert_eq!(m1["id"], m2["id"]);
    assert_eq!(m1["nonce"], "abc-1");
    let (_, _, m3) =
        post(&fake, TOKEN, CHANNEL, json!({"content": "int", "nonce": 12345, "enforce_nonce": true})).await;
    assert_eq!(m3["nonce"], 12345);
    assert_eq!(fake.bot_messages(CHANNEL).len(), 3);

    // Replies.
    let user_msg = fake.user_message(MessageSpec::new(CHANNEL, USER, "alice", "question"));
    let (status, _, body) =
        post(&fake, TOKEN, CHANNEL, json!({"content": "answer", "message_reference": {"message_id": "42"}})).await;
    assert_eq!(
        (status, body["errors"]["message_reference"]["_errors"][0]["message"].as_str()),
        (400, Some("Unknown message"))
    );
    let (status, _, plain) = post(
        &fake,
        TOKEN,
        CHANNEL,
        json!({"content": "answer", "message_reference": {"message_id": "42", "fail_if_not_exists": false}}),
    )
    .await;
    assert_eq!((status, plain["type"].as_u64()), (200, Some(0)));
    assert!(plain.get("message_reference").is_none());
    let (status, _, reply) = post(
        &fake,
        TOKEN,
        CHANNEL,
        json!({"content": "answer", "message_reference": {"message_id": user_msg, "channel_id": CHANNEL}}),
    )
    .await;
    assert_eq!((status, reply["type"].as_u64()), (200, Some(19)));
    assert_eq!(reply["message_reference"]["message_id"], user_msg.as_str());
    assert_eq!(reply["referenced_message"]["content"], "question");
    assert_eq!(reply["mentions"][0]["id"], USER);

    // Injected 429s, then success.
    fake.fail_next_posts_retry_after(1, 429, Duration::from_millis(250));
    let (status, headers, body) = post(&fake, TOKEN, CHANNEL, json!({"content": "later"})).await;
    assert_eq!(status, 429);
    assert_eq!(body["retry_after"], 0.25);
    assert_eq!(headers["retry-after"], "1");
    assert_eq!(headers["x-ratelimit-scope"], "user");
    fake.fail_next_posts(1, 502);
    assert_eq!(post(&fake, TOKEN, CHANNEL, json!({"content": "later"})).await.0, 502);
    assert_eq!(post(&fake, TOKEN, CHANNEL, json!({"content": "later"})).await.0, 200);

    let waited = fake.wait_bot_messages(CHANNEL, 6, T).await.unwrap();
    assert_eq!(waited.last().unwrap()["content"], "later");
    let recorded = fake.requests();
    assert!(recorded.iter().all(|r| r.path.starts_with("/api/v10/")));
    assert_eq!(recorded.iter().filter(|r| r.status == 429).count(), 1);
    assert_eq!(recorded[0].header("Authorization"), None);

    // Reading messages back.
    let (status, list) = get(&fake, Some(TOKEN), &format!("/channels/{CHANNEL}/messages?limit=2")).await;
    assert_eq!((status, list.as_array().map(Vec::len)), (200, Some(2)));
    assert_eq!(list[0]["content"], "later");
    let (status, one) = get(&fake, Some(TOKEN), &format!("/channels/{CHANNEL}/messages/{user_msg}")).await;
    assert_eq!((status, one["content"].as_str()), (200, Some("question")));
}

#[tokio::test]
async fn waiters_time_out_with_the_state() {
    let fake = fake().await;
    let err = fake.wait_bot_messages(CHANNEL, 1, Duration::from_millis(50)).await.unwrap_err();
    let text = format!("{err:?}");
    assert!(text.contains("1 bot message(s) in channel"), "{text}");
    assert!(text.contains("bot pincer"), "{text}");
    let err = fake.wait_connection_count(TOKEN, 1, Duration::from_millis(10)).await.unwrap_err();
    assert!(err.to_string().contains("authenticated connection"));
}

#[tokio::test]
async fn silent_connections_time_out_when_configured() {
    let fake = fake().await;
    fake.set_heartbeat_timeout(Some(Duration::from_millis(200)));
    let (mut ws, sid, seq) = identified(&fake, TOKEN).await;
    assert_eq!(recv_close(&mut ws).await, Some(4000));
    // The session survives a server-side close other than 1000/1001.
    let mut ws = connect(&fake).await;
    recv(&mut ws).await;
    send(&mut ws, json!({"op": 6, "d": {"token": TOKEN, "session_id": sid, "seq": seq}})).await;
    assert_eq!(recv(&mut ws).await["t"], "RESUMED");
}

#[tokio::test]
async fn dropping_the_fake_closes_gateway_connections() {
    let fake = fake().await;
    let (mut ws, _, _) = identified(&fake, TOKEN).await;
    drop(fake);
    assert_eq!(recv_close(&mut ws).await, None);
}

// ---------------------------------------------------------------------------------------
// twilight 0.17
// ---------------------------------------------------------------------------------------

mod twilight {
    use super::*;
    use twilight_gateway::{ConfigBuilder, Event, EventTypeFlags, Intents, Shard, ShardId, StreamExt as _};
    use twilight_model::guild::Permissions;
    use twilight_model::id::Id;

    fn shard(fake: &FakeDiscord) -> Shard {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let intents = Intents::GUILDS | Intents::GUILD_MESSAGES | Intents::DIRECT_MESSAGES | Intents::MESSAGE_CONTENT;
        let config = ConfigBuilder::new(TOKEN.to_string(), intents).proxy_url(fake.gateway_url()).build();
        Shard::with_config(ShardId::ONE, config)
    }

    /// The next event that is not a heartbeat ack; panics on a deserialization error.
    async fn next(shard: &mut Shard) -> Event {
        loop {
            let item = tokio::time::timeout(T, shard.next_event(EventTypeFlags::all()))
                .await
                .expect("timed out waiting for a twilight event")
                .expect("shard stream ended");
            match item.expect("twilight could not receive/parse an event") {
                Event::GatewayHeartbeatAck | Event::GatewayHello(_) | Event::GatewayHeartbeat => continue,
                ev => return ev,
            }
        }
    }

    #[tokio::test]
    async fn twilight_shard_accepts_ready_guild_create_and_messages() {
        let fake = fake().await;
        let mut shard = shard(&fake);

        match next(&mut shard).await {
            Event::Ready(r) => {
                assert_eq!(r.user.id, Id::new(BOT_ID.parse().unwrap()));
                assert_eq!(r.resume_gateway_url, fake.gateway_url());
            }
            other => panic!("expected READY, got {other:?}"),
        }
        match next(&mut shard).await {
            Event::GuildCreate(g) => match &*g {
                twilight_model::gateway::payload::incoming::GuildCreate::Available(g) => {
                    assert_eq!(g.name, "Test Guild");
                    assert_eq!(g.channels.len(), 1);
                    assert_eq!(g.threads.len(), 1);
                    assert_eq!(g.roles[0].permissions, Permissions::from_bits_truncate(1_071_698_660_929));
                }
                other => panic!("guild unavailable: {other:?}"),
            },
            other => panic!("expected GUILD_CREATE, got {other:?}"),
        }

        let first = fake.user_message(MessageSpec::new(CHANNEL, USER, "alice", "hi <@bot>").mention(BOT_ID));
        match next(&mut shard).await {
            Event::MessageCreate(m) => {
                assert_eq!(m.id.to_string(), first);
                assert_eq!(m.content, "hi <@bot>");
                assert_eq!(m.guild_id.map(|g| g.to_string()).as_deref(), Some(GUILD));
                assert!(m.member.is_some());
                assert_eq!(m.mentions[0].id.to_string(), BOT_ID);
            }
            other => panic!("expected MESSAGE_CREATE, got {other:?}"),
        }
        let reply = fake.user_message(MessageSpec::new(THREAD, USER, "alice", "in thread").reply_to(&first));
        match next(&mut shard).await {
            Event::MessageCreate(m) => {
                assert_eq!(m.id.to_string(), reply);
                assert_eq!(m.kind, twilight_model::channel::message::MessageType::Reply);
                assert_eq!(m.referenced_message.as_ref().unwrap().content, "hi <@bot>");
            }
            other => panic!("expected MESSAGE_CREATE, got {other:?}"),
        }
        let dm = fake.user_message(MessageSpec::new(DM, USER, "alice", "psst"));
        match next(&mut shard).await {
            Event::MessageCreate(m) => {
                assert_eq!(m.id.to_string(), dm);
                assert!(m.guild_id.is_none());
            }
            other => panic!("expected MESSAGE_CREATE, got {other:?}"),
        }

        // RECONNECT: twilight closes (4000) and RESUMEs; no overlap.
        fake.send_reconnect(TOKEN);
        loop {
            if let Event::Resumed = next(&mut shard).await {
                break;
            }
        }
        // Abrupt drop: twilight resumes and receives what was posted meanwhile.
        fake.drop_socket(TOKEN);
        let missed = fake.user_message(MessageSpec::new(CHANNEL, USER, "alice", "missed"));
        let mut got_missed = false;
        loop {
            match next(&mut shard).await {
                Event::MessageCreate(m) if m.id.to_string() == missed => got_missed = true,
                Event::Resumed => break,
                _ => {}
            }
        }
        assert!(got_missed);
        let s = fake.stats(TOKEN);
        assert_eq!((s.ready_count, s.resumed_count, s.max_live_sessions), (1, 2, 1), "{}", fake.summary());
        assert_eq!(fake.violations(), 0);
        assert!(fake.gateway_queries().iter().all(|q| q.starts_with("v=10&encoding=json")));
    }

    /// The bug the fake exists to catch: two shards (e.g. an old adapter instance that was
    /// never shut down) on one token.
    #[tokio::test]
    async fn two_twilight_shards_on_one_token_are_a_violation() {
        let fake = fake().await;
        let mut a = shard(&fake);
        assert!(matches!(next(&mut a).await, Event::Ready(_)));
        let mut b = shard(&fake);
        let drive_a = tokio::spawn(async move { while a.next_event(EventTypeFlags::all()).await.is_some() {} });
        let drive_b = tokio::spawn(async move { while b.next_event(EventTypeFlags::all()).await.is_some() {} });
        fake.wait_for(T, |f| f.violations() >= 1).await.unwrap();
        drive_a.abort();
        drive_b.abort();
        assert_eq!(fake.max_live_sessions(TOKEN), 2);
        assert_eq!(fake.connection_count(TOKEN), 1);
        assert_eq!(fake.violation_details()[0].op, "IDENTIFY");
    }

    #[tokio::test]
    async fn twilight_http_posts_and_parses() {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let fake = fake().await;
        let client = twilight_http::Client::builder().proxy(fake.authority(), true).token(TOKEN.to_string()).build();

        let me = client.current_user().await.unwrap().model().await.unwrap();
        assert_eq!(me.id.to_string(), BOT_ID);
        let gw = client.gateway().authed().await.unwrap().model().await.unwrap();
        assert_eq!(gw.url, fake.gateway_url());
        let channel = client.channel(Id::new(THREAD.parse().unwrap())).await.unwrap().model().await.unwrap();
        assert_eq!(channel.parent_id.map(|p| p.to_string()).as_deref(), Some(CHANNEL));

        let channel_id = Id::new(CHANNEL.parse().unwrap());
        let sent = client.create_message(channel_id).content("hello from twilight").nonce(7).await.unwrap();
        let sent = sent.model().await.unwrap();
        assert_eq!(sent.content, "hello from twilight");
        assert_eq!(sent.author.id.to_string(), BOT_ID);

        let question = fake.user_message(MessageSpec::new(CHANNEL, USER, "alice", "q?"));
        let reply = client
            .create_message(channel_id)
            .content("a!")
            .reply(Id::new(question.parse().unwrap()))
            .await
            .unwrap()
            .model()
            .await
            .unwrap();
        assert_eq!(reply.kind, twilight_model::channel::message::MessageType::Reply);
        assert_eq!(reply.referenced_message.unwrap().id.to_string(), question);

        let messages = fake.wait_bot_messages(CHANNEL, 2, T).await.unwrap();
        assert_eq!(messages[0]["nonce"], 7);
        let req = fake.requests().into_iter().find(|r| r.method == "POST").unwrap();
        assert_eq!(req.header("authorization"), Some(format!("Bot {TOKEN}").as_str()));

        // An API error surfaces as twilight's Response error with Discord's code.
        let err = client.create_message(Id::new(1)).content("x").await.unwrap_err();
        match err.kind() {
            twilight_http::error::ErrorType::Response { status, .. } => assert_eq!(status.get(), 404),
            other => panic!("unexpected error {other:?}"),
        }
    }
}
