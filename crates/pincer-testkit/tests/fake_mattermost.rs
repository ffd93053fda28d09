//! The fake Mattermost against raw clients: tokio-tungstenite for the WebSocket, reqwest for the
//! HTTP API. Every wait is bounded and event-driven (frames, or the fake's waiters); no sleeps.

use futures_util::{SinkExt, StreamExt};
use pincer_testkit::mattermost::{
    is_valid_id, new_id, ChannelSpec, CloseBy, PostSpec, TeamSpec, TypingVia, DEAD_QUEUE_SIZE, MAX_POST_RUNES,
    SERVER_VERSION,
};
use pincer_testkit::FakeMattermost;
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

const TOKEN: &str = "pincer-bot-token-1";
const TOKEN2: &str = "other-bot-token-2";
const TEAM: &str = "team0000000000000000000001";
const CHAN: &str = "chan0000000000000000000001";
const PRIV: &str = "chan0000000000000000000002";
const OTHER: &str = "chan0000000000000000000003";
const DM: &str = "chan0000000000000000000004";
const BOT_ID: &str = "user0000000000000000000001";
const BOT2_ID: &str = "user0000000000000000000002";
const ALICE: &str = "user0000000000000000000003";
const BOB: &str = "user0000000000000000000004";
const T: Duration = Duration::from_secs(10);

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

async fn fake() -> FakeMattermost {
    let fake = FakeMattermost::start().await;
    fake.add_bot(TOKEN, BOT_ID, "pincer");
    fake.add_bot(TOKEN2, BOT2_ID, "other");
    fake.add_user(ALICE, "alice", false);
    fake.add_user(BOB, "bob", false);
    fake.add_team(TeamSpec::new(TEAM, "pincer-team", "Pincer Team").members([BOT_ID, BOT2_ID, ALICE, BOB]));
    fake.add_channel(
        ChannelSpec::open(CHAN, TEAM, "town-square", "Town Square").members([BOT_ID, BOT2_ID, ALICE, BOB]),
    );
    fake.add_channel(ChannelSpec::private(PRIV, TEAM, "secret", "Secret").members([ALICE]));
    fake.add_channel(ChannelSpec::open(OTHER, TEAM, "off-topic", "Off-Topic").members([BOT_ID, ALICE]));
    fake.add_channel(ChannelSpec::direct(DM, BOT_ID, ALICE));
    fake.set_overlap_grace(Duration::from_millis(200));
    fake
}

// ---------------------------------------------------------------------------------------
// WebSocket helpers
// ---------------------------------------------------------------------------------------

/// Opens a WebSocket to `/api/v4/websocket{query}`, with `Authorization: Bearer <token>` if given.
async fn connect(fake: &FakeMattermost, query: &str, token: Option<&str>) -> Ws {
    let mut req = format!("{}{query}", fake.websocket_url()).into_client_request().expect("request");
    if let Some(t) = token {
        req.headers_mut().insert("Authorization", HeaderValue::from_str(&format!("Bearer {t}")).unwrap());
    }
    tokio_tungstenite::connect_async(req).await.expect("connect").0
}

/// The next text frame as JSON; panics on a close, EOF or timeout.
async fn recv(ws: &mut Ws) -> Value {
    loop {
        let msg = tokio::time::timeout(T, ws.next()).await.expect("timed out waiting for a frame");
        match msg {
            Some(Ok(Message::Text(t))) => return serde_json::from_str(t.as_str()).expect("json"),
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            other => panic!("expected a text frame, got {other:?}"),
        }
    }
}

/// How a connection ended, and every other frame received before.
#[derive(Debug, PartialEq)]
enum End {
    /// A close frame with this code.
    Close(Option<u16>),
    /// EOF or a reset: no close frame.
    Dropped,
}

async fn recv_end(ws: &mut Ws) -> (Vec<Message>, End) {
    let mut seen = Vec::new();
    loop {
        let msg = tokio::time::timeout(T, ws.next()).await.expect("timed out waiting for the end");
        match msg {
            Some(Ok(Message::Close(frame))) => return (seen, End::Close(frame.map(|f| u16::from(f.code)))),
            Some(Ok(m)) => seen.push(m),
            Some(Err(_)) | None => return (seen, End::Dropped),
        }
    }
}

async fn send(ws: &mut Ws, v: Value) {
    ws.send(Message::Text(v.to_string().into())).await.expect("send");
}

fn challenge(seq: i64, token: &str) -> Value {
    json!({"seq": seq, "action": "authentication_challenge", "data": {"token": token}})
}

/// Authenticates by header; returns the socket and the `hello`, after reading the
/// `status_change` (online) that follows it when the bot was offline.
async fn header_auth(fake: &FakeMattermost, token: &str, expect_status: bool) -> (Ws, Value) {
    let mut ws = connect(fake, "", Some(token)).await;
    let hello = recv(&mut ws).await;
    assert_eq!((hello["event"].as_str(), hello["seq"].as_i64()), (Some("hello"), Some(0)), "{hello}");
    if expect_status {
        let status = recv(&mut ws).await;
        assert_eq!((status["event"].as_str(), status["seq"].as_i64()), (Some("status_change"), Some(1)), "{status}");
    }
    (ws, hello)
}

fn conn_id(hello: &Value) -> String {
    hello["data"]["connection_id"].as_str().expect("connection_id").to_string()
}

/// The `Post` inside a `posted` event (it is a JSON string on the wire).
fn posted_post(ev: &Value) -> Value {
    assert_eq!(ev["event"], "posted", "{ev}");
    let s = ev["data"]["post"].as_str().expect("data.post must be a JSON-encoded string");
    serde_json::from_str(s).expect("post json")
}

// ---------------------------------------------------------------------------------------
// REST helpers
// ---------------------------------------------------------------------------------------

struct Resp {
    status: u16,
    body: Value,
    request_id: Option<String>,
    version: Option<String>,
}

async fn api(fake: &FakeMattermost, method: &str, path: &str, token: Option<&str>, body: Option<Value>) -> Resp {
    api_raw(fake, method, path, token, body.map(|b| b.to_string())).await
}

async fn api_raw(fake: &FakeMattermost, method: &str, path: &str, token: Option<&str>, body: Option<String>) -> Resp {
    let client = reqwest::Client::new();
    let url = format!("{}{path}", fake.api_url());
    let mut req = client.request(method.parse().unwrap(), url);
    if let Some(t) = token {
        req = req.header("Authorization", format!("Bearer {t}"));
    }
    if let Some(b) = body {
        req = req.header("Content-Type", "application/json").body(b);
    }
    let resp = tokio::time::timeout(T, req.send()).await.expect("http timeout").expect("http");
    let status = resp.status().as_u16();
    let header = |n: &str| resp.headers().get(n).and_then(|v| v.to_str().ok()).map(str::to_string);
    let (request_id, version) = (header("x-request-id"), header("x-version-id"));
    let text = resp.text().await.expect("body");
    let body = if text.is_empty() { Value::Null } else { serde_json::from_str(&text).expect("json body") };
    Resp { status, body, request_id, version }
}

fn keys(v: &Value) -> BTreeSet<String> {
    v.as_object().expect("object").keys().cloned().collect()
}

fn set(ks: &[&str]) -> BTreeSet<String> {
    ks.iter().map(|s| s.to_string()).collect()
}

const POST_KEYS: &[&str] = &[
    "id",
    "create_at",
    "update_at",
    "edit_at",
    "delete_at",
    "is_pinned",
    "user_id",
    "channel_id",
    "root_id",
    "original_id",
    "message",
    "type",
    "props",
    "hashtags",
    "pending_post_id",
    "reply_count",
    "metadata",
];

// ---------------------------------------------------------------------------------------
// Authentication and hello
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn challenge_auth_hello_ok_reply_and_status_change() {
    let fake = fake().await;
    let mut ws = connect(&fake, "", None).await;
    send(&mut ws, challenge(1, TOKEN)).await;

    // As on the server: the hub queues the hello before the challenge's reply.
    let hello = recv(&mut ws).await;
    let cid = conn_id(&hello);
    assert!(is_valid_id(&cid) && cid.len() == 26, "{cid}");
    assert_eq!(
        hello,
        json!({
            "event": "hello",
            "data": {"server_version": SERVER_VERSION, "connection_id": cid, "server_hostname": "fake-mattermost"},
            "broadcast": {"omit_users": null, "user_id": BOT_ID, "channel_id": "", "team_id": "",
                          "connection_id": "", "omit_connection_id": ""},
            "seq": 0,
        })
    );
    assert_eq!(recv(&mut ws).await, json!({"status": "OK", "seq_reply": 1}));
    let status = recv(&mut ws).await;
    assert_eq!(
        status,
        json!({
            "event": "status_change",
            "data": {"status": "online", "user_id": BOT_ID},
            "broadcast": {"omit_users": null, "user_id": BOT_ID, "channel_id": "", "team_id": "",
                          "connection_id": "", "omit_connection_id": ""},
            "seq": 1,
        })
    );

    let s = fake.stats(TOKEN);
    assert_eq!((s.live_sockets, s.max_live_sockets, s.connections, s.fresh_connection_ids), (1, 1, 1, 1));
    let upgrade = fake.requests().into_iter().find(|r| r.path == "/api/v4/websocket").expect("upgrade recorded");
    assert_eq!((upgrade.method.as_str(), upgrade.status), ("GET", 101));
    assert_eq!(upgrade.header("authorization"), None);
    assert_eq!(fake.ws_frames()[0].payload, challenge(1, TOKEN));
    assert_eq!(fake.ws_frames()[0].token, None);

    // A second challenge on an authenticated socket is ignored (no reply); the ping after it
    // is answered first.
    send(&mut ws, challenge(2, TOKEN)).await;
    send(&mut ws, json!({"seq": 3, "action": "ping"})).await;
    let pong = recv(&mut ws).await;
    assert_eq!(pong["seq_reply"], 3, "{pong}");
    assert_eq!(fake.connections(TOKEN), 1);
}

#[tokio::test]
async fn header_auth_gets_hello_at_once_and_answers_pings() {
    let fake = fake().await;
    let (mut ws, hello) = header_auth(&fake, TOKEN, true).await;
    assert_eq!(hello["broadcast"]["user_id"], BOT_ID);
    let upgrade = fake.requests().into_iter().find(|r| r.path == "/api/v4/websocket").unwrap();
    assert_eq!(upgrade.header("Authorization"), Some(format!("Bearer {TOKEN}").as_str()));

    send(&mut ws, json!({"seq": 1, "action": "ping"})).await;
    let pong = recv(&mut ws).await;
    assert_eq!((pong["status"].as_str(), pong["seq_reply"].as_i64()), (Some("OK"), Some(1)), "{pong}");
    assert_eq!(pong["data"]["text"], "pong");
    assert_eq!(pong["data"]["version"], "9.11.0");
    assert!(pong["data"]["server_time"].as_i64().unwrap() > 1_600_000_000_000);
    assert!(pong.get("seq").is_none(), "replies carry no event seq: {pong}");

    // WebSocket-level ping frames get pongs.
    ws.send(Message::Ping(b"hb".to_vec().into())).await.unwrap();
    let pong_frame = tokio::time::timeout(T, ws.next()).await.unwrap().unwrap().unwrap();
    assert_eq!(pong_frame, Message::Pong(b"hb".to_vec().into()));

    fake.wait_for(|f| f.stats(TOKEN).ws_pings_received == 1, T).await.unwrap();
    let s = fake.stats(TOKEN);
    assert_eq!((s.pings_received, s.pings_answered, s.ws_pings_received, s.ws_pongs_sent), (1, 1, 1, 1));
    assert_eq!(fake.pings_answered(TOKEN), 1);
}

#[tokio::test]
async fn bad_tokens_fail_and_are_counted() {
    let fake = fake().await;
    fake.set_auth_timeout(T);

    // Unknown token in a challenge: FAIL reply, then the TCP connection is dropped.
    let mut ws = connect(&fake, "", None).await;
    send(&mut ws, challenge(1, "nope")).await;
    let fail = recv(&mut ws).await;
    assert_eq!(
        fail,
        json!({"status": "FAIL", "seq_reply": 1, "error": {
            "id": "api.context.session_expired.app_error",
            "message": "Invalid or expired session, please login again.",
            "detailed_error": "",
            "status_code": 401,
        }})
    );
    assert_eq!(recv_end(&mut ws).await, (vec![], End::Dropped));
    assert_eq!(fake.auth_failures(), 1);
    let close = fake.close_log().pop().unwrap();
    assert_eq!((close.by, close.reason.as_deref()), (CloseBy::ServerAbort, Some("authentication failed")));

    // fail_auth_next: even the right token fails once.
    fake.fail_auth_next();
    let mut ws = connect(&fake, "", None).await;
    send(&mut ws, challenge(1, TOKEN)).await;
    assert_eq!(recv(&mut ws).await["status"], "FAIL");
    assert_eq!(recv_end(&mut ws).await.1, End::Dropped);
    assert_eq!((fake.auth_failures(), fake.stats(TOKEN).auth_failures, fake.connections(TOKEN)), (2, 1, 0));

    // An unknown header token does not refuse the upgrade: the socket is unauthenticated
    // (actions fail) until a good challenge.
    let mut ws = connect(&fake, "", Some("bad-header-token")).await;
    send(&mut ws, json!({"seq": 1, "action": "ping"})).await;
    let fail = recv(&mut ws).await;
    assert_eq!(fail["status"], "FAIL");
    assert_eq!(fail["seq_reply"], 1);
    assert_eq!(fail["error"]["id"], "api.web_socket_router.not_authenticated.app_error");
    assert_eq!(fail["error"]["status_code"], 401);
    send(&mut ws, challenge(2, TOKEN)).await;
    assert_eq!(recv(&mut ws).await["event"], "hello");
    assert_eq!(recv(&mut ws).await, json!({"status": "OK", "seq_reply": 2}));
    assert_eq!((fake.auth_failures(), fake.connections(TOKEN)), (3, 1));

    // A socket that never authenticates is dropped after the auth timeout.
    fake.set_auth_timeout(Duration::from_millis(100));
    let mut ws = connect(&fake, "", None).await;
    assert_eq!(recv_end(&mut ws).await, (vec![], End::Dropped));
    let close = fake.close_log().pop().unwrap();
    assert_eq!(
        (close.by, close.token, close.reason.as_deref()),
        (CloseBy::ServerAbort, None, Some("not authenticated in time"))
    );
}

#[tokio::test]
async fn router_rejects_bad_requests() {
    let fake = fake().await;
    let (mut ws, _) = header_auth(&fake, TOKEN, true).await;

    send(&mut ws, json!({"seq": 5, "data": {}})).await;
    let r = recv(&mut ws).await;
    assert_eq!((r["status"].as_str(), r["seq_reply"].as_i64()), (Some("FAIL"), Some(5)));
    assert_eq!(r["error"]["id"], "api.web_socket_router.no_action.app_error");

    send(&mut ws, json!({"seq": 0, "action": "ping"})).await;
    let r = recv(&mut ws).await;
    assert_eq!(r["error"]["id"], "api.web_socket_router.bad_seq.app_error");
    assert!(r.get("seq_reply").is_none(), "seq_reply 0 is omitted: {r}");

    send(&mut ws, json!({"seq": 6, "action": "get_everything"})).await;
    let r = recv(&mut ws).await;
    assert_eq!((r["seq_reply"].as_i64(), r["error"]["status_code"].as_u64()), (Some(6), Some(501)));
    assert_eq!(r["error"]["id"], "api.web_socket_router.bad_action.app_error");

    send(&mut ws, json!({"seq": 7, "action": "user_typing", "data": {"channel_id": PRIV}})).await;
    let r = recv(&mut ws).await;
    assert_eq!(r["error"]["id"], "api.websocket_handler.invalid_param.app_error", "{r}");

    // A frame that is not JSON drops the connection, as the server's read pump exits.
    ws.send(Message::Text("not json".into())).await.unwrap();
    assert_eq!(recv_end(&mut ws).await, (vec![], End::Dropped));
    assert_eq!(fake.close_log().pop().unwrap().reason.as_deref(), Some("frame is not a JSON object"));
    assert_eq!(fake.ws_frames().last().unwrap().payload, json!("not json"));
    assert_eq!(fake.ws_frames().last().unwrap().token.as_deref(), Some(TOKEN));
}

// ---------------------------------------------------------------------------------------
// Events
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn posted_events_carry_stringified_posts_and_per_recipient_mentions() {
    let fake = fake().await;
    let (mut ws, _) = header_auth(&fake, TOKEN, true).await;

    let id = fake.user_post(PostSpec::new(CHAN, ALICE, "hey @Pincer, look at #news"));
    assert!(is_valid_id(&id));
    let ev = recv(&mut ws).await;
    assert_eq!(ev["seq"], 2);
    assert_eq!(
        ev["broadcast"],
        json!({"omit_users": null, "user_id": "", "channel_id": CHAN, "team_id": "", "connection_id": "",
               "omit_connection_id": ""})
    );
    let data = &ev["data"];
    assert_eq!(
        keys(data),
        set(&[
            "channel_display_name",
            "channel_name",
            "channel_type",
            "post",
            "sender_name",
            "set_online",
            "team_id",
            "mentions"
        ])
    );
    assert_eq!(data["channel_display_name"], "Town Square");
    assert_eq!(data["channel_name"], "town-square");
    assert_eq!(data["channel_type"], "O");
    assert_eq!(data["sender_name"], "@alice");
    assert_eq!(data["set_online"], true);
    assert_eq!(data["team_id"], TEAM);
    assert_eq!(data["mentions"], json!(format!("[\"{BOT_ID}\"]")), "mentions is a JSON-encoded string");

    let post = posted_post(&ev);
    assert_eq!(keys(&post), set(POST_KEYS));
    assert_eq!(Some(&post), fake.post(&id).as_ref());
    assert_eq!(post["id"], id.as_str());
    assert_eq!(post["user_id"], ALICE);
    assert_eq!(post["channel_id"], CHAN);
    assert_eq!(post["root_id"], "");
    assert_eq!(post["original_id"], "");
    assert_eq!(post["message"], "hey @Pincer, look at #news");
    assert_eq!(post["hashtags"], "#news");
    assert_eq!(post["type"], "");
    assert_eq!(post["props"], json!({}));
    assert_eq!(post["metadata"], json!({}));
    assert_eq!(
        (post["edit_at"].as_i64(), post["delete_at"].as_i64(), post["reply_count"].as_i64()),
        (Some(0), Some(0), Some(0))
    );
    assert_eq!(post["is_pinned"], false);
    assert_eq!(post["create_at"], post["update_at"]);

    // Without a mention of this recipient there is no `mentions` key (bob is mentioned, but
    // the hook only tells each recipient about itself).
    fake.user_post(PostSpec::new(CHAN, ALICE, "hi @bob"));
    let ev = recv(&mut ws).await;
    assert_eq!(ev["seq"], 3);
    assert!(ev["data"].get("mentions").is_none(), "{ev}");

    // @channel mentions every member.
    fake.user_post(PostSpec::new(CHAN, ALICE, "@channel standup"));
    assert_eq!(recv(&mut ws).await["data"]["mentions"], json!(format!("[\"{BOT_ID}\"]")));

    // A DM always mentions the other member.
    let dm = fake.user_post(PostSpec::new(DM, ALICE, "psst"));
    let ev = recv(&mut ws).await;
    assert_eq!(ev["seq"], 5);
    assert_eq!(
        (
            ev["data"]["channel_type"].as_str(),
            ev["data"]["channel_display_name"].as_str(),
            ev["data"]["team_id"].as_str()
        ),
        (Some("D"), Some("@alice"), Some(""))
    );
    assert_eq!(ev["data"]["channel_name"], format!("{BOT_ID}__{ALICE}"));
    assert_eq!(ev["data"]["mentions"], json!(format!("[\"{BOT_ID}\"]")));
    assert_eq!(posted_post(&ev)["id"], dm.as_str());

    // Posts in a channel the bot is not a member of never reach it.
    fake.user_post(PostSpec::new(PRIV, ALICE, "secret @pincer"));
    let thread_root = fake.user_post(PostSpec::new(CHAN, BOB, "a thread"));
    let ev = recv(&mut ws).await;
    assert_eq!((ev["seq"].as_i64(), posted_post(&ev)["id"].as_str()), (Some(6), Some(thread_root.as_str())));

    // A reply carries root_id and the thread's reply_count.
    let reply = fake.user_post(PostSpec::new(CHAN, ALICE, "a reply").reply_to(&thread_root));
    let ev = recv(&mut ws).await;
    let p = posted_post(&ev);
    assert_eq!(
        (p["id"].as_str(), p["root_id"].as_str(), p["reply_count"].as_i64()),
        (Some(reply.as_str()), Some(thread_root.as_str()), Some(1))
    );
    assert_eq!(fake.post(&thread_root).unwrap()["reply_count"], 1);

    // replay_event delivers the same post again, with the next seq.
    assert_eq!(fake.replay_event(&reply), 1);
    let again = recv(&mut ws).await;
    assert_eq!(again["seq"], 8);
    assert_eq!(posted_post(&again), p);

    let sent = fake.sent_events(TOKEN);
    assert_eq!(sent.iter().map(|e| e.seq).collect::<Vec<_>>(), (0..=8).collect::<Vec<i64>>());
    assert!(sent.iter().all(|e| !e.replayed));
}

#[tokio::test]
async fn rest_posts_validate_store_and_echo_as_posted() {
    let fake = fake().await;
    let (mut ws, _) = header_auth(&fake, TOKEN, true).await;

    let r = api(
        &fake,
        "POST",
        "/posts",
        Some(TOKEN),
        Some(json!({"channel_id": CHAN, "message": "hello from the bot", "props": {"from_bot": "1"},
                    "pending_post_id": "pending-1"})),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let post = r.body;
    assert_eq!(keys(&post), set(POST_KEYS));
    assert!(is_valid_id(post["id"].as_str().unwrap()));
    assert_eq!(post["user_id"], BOT_ID);
    assert_eq!(post["channel_id"], CHAN);
    assert_eq!(post["root_id"], "");
    assert_eq!(post["pending_post_id"], "pending-1");
    assert_eq!(post["props"], json!({"from_bot": "1"}));
    assert_eq!(post["reply_count"], 0);
    assert_eq!(post["create_at"], post["update_at"]);
    assert!(post["create_at"].as_i64().unwrap() > 1_600_000_000_000);
    assert_eq!(r.version.as_deref(), Some(SERVER_VERSION));
    assert!(r.request_id.as_deref().is_some_and(is_valid_id));

    // The bot's own post comes back on its socket, as on the real server.
    let ev = recv(&mut ws).await;
    assert_eq!(ev["seq"], 2);
    assert_eq!(ev["data"]["sender_name"], "@pincer");
    assert_eq!(posted_post(&ev), post);

    let got = fake.wait_bot_posts(CHAN, 1, T).await.unwrap();
    assert_eq!(got, vec![post.clone()]);
    let root = post["id"].as_str().unwrap().to_string();

    // A reply in the thread.
    let r = api(
        &fake,
        "POST",
        "/posts",
        Some(TOKEN),
        Some(json!({"channel_id": CHAN, "message": "reply", "root_id": root})),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!((r.body["root_id"].as_str(), r.body["reply_count"].as_i64()), (Some(root.as_str()), Some(1)));
    let reply_id = r.body["id"].as_str().unwrap().to_string();
    let r = api(&fake, "GET", &format!("/posts/{root}"), Some(TOKEN), None).await;
    assert_eq!((r.status, r.body["reply_count"].as_i64()), (200, Some(1)));

    // Validation.
    let cases: Vec<(Value, u16, &str)> = vec![
        (json!({"channel_id": PRIV, "message": "x"}), 403, "api.context.permissions.app_error"),
        (json!({"channel_id": new_id(), "message": "x"}), 403, "api.context.permissions.app_error"),
        (json!({"message": "x"}), 403, "api.context.permissions.app_error"),
        (
            json!({"channel_id": CHAN, "message": "x", "root_id": new_id()}),
            400,
            "api.post.create_post.root_id.app_error",
        ),
        (
            json!({"channel_id": CHAN, "message": "x", "root_id": reply_id}),
            400,
            "api.post.create_post.root_id.app_error",
        ),
        (
            json!({"channel_id": OTHER, "message": "x", "root_id": root}),
            400,
            "api.post.create_post.channel_root_id.app_error",
        ),
        (json!({"channel_id": CHAN, "message": ""}), 400, "model.post.is_valid.msg.app_error"),
        (
            json!({"channel_id": CHAN, "message": "é".repeat(MAX_POST_RUNES + 1)}),
            400,
            "model.post.is_valid.msg.app_error",
        ),
        (
            json!({"channel_id": CHAN, "message": "x", "type": "system_join_channel"}),
            400,
            "api.context.invalid_param.app_error",
        ),
        (json!({"channel_id": CHAN, "message": "x", "type": "weird"}), 400, "model.post.is_valid.type.app_error"),
        (json!({"channel_id": CHAN, "message": 5}), 400, "api.context.invalid_body_param.app_error"),
        (json!({"channel_id": CHAN, "message": "x", "props": "no"}), 400, "api.context.invalid_body_param.app_error"),
    ];
    for (body, status, id) in cases {
        let r = api(&fake, "POST", "/posts", Some(TOKEN), Some(body.clone())).await;
        assert_eq!((r.status, r.body["id"].as_str()), (status, Some(id)), "{body}: {}", r.body);
        assert_eq!(r.body["status_code"], status);
        assert_eq!(r.body["request_id"].as_str(), r.request_id.as_deref());
        assert_eq!(r.body["detailed_error"], "");
    }
    let r = api_raw(&fake, "POST", "/posts", Some(TOKEN), Some("{not json".into())).await;
    assert_eq!((r.status, r.body["id"].as_str()), (400, Some("api.context.invalid_body_param.app_error")));
    assert_eq!(r.body["message"], "Invalid or missing post in request body.");

    // Exactly the limit is fine (counted in characters, not bytes).
    let r = api(
        &fake,
        "POST",
        "/posts",
        Some(TOKEN),
        Some(json!({"channel_id": CHAN, "message": "é".repeat(MAX_POST_RUNES)})),
    )
    .await;
    assert_eq!(r.status, 201);

    // Without a valid token: 401 with the AppError shape.
    let r = api(&fake, "POST", "/posts", Some("wrong"), Some(json!({"channel_id": CHAN, "message": "x"}))).await;
    assert_eq!(r.status, 401);
    assert_eq!(
        r.body,
        json!({"id": "api.context.session_expired.app_error",
               "message": "Invalid or expired session, please login again.",
               "detailed_error": "", "request_id": r.request_id.clone().unwrap(), "status_code": 401})
    );
    assert_eq!(api(&fake, "GET", "/users/me", None, None).await.status, 401);

    // Only the valid posts were stored; every request was logged.
    assert_eq!(fake.bot_posts(CHAN).len(), 3);
    assert_eq!(fake.posts(OTHER).len(), 0);
    let logged = fake.requests().into_iter().filter(|r| r.path == "/api/v4/posts").count();
    assert_eq!(logged, 2 + 12 + 1 + 1 + 1);
    let first = fake.requests().into_iter().find(|r| r.path == "/api/v4/posts").unwrap();
    assert_eq!((first.method.as_str(), first.status), ("POST", 201));
    assert_eq!(first.body["pending_post_id"], "pending-1");
    assert_eq!(first.header("authorization"), Some(format!("Bearer {TOKEN}").as_str()));
}

#[tokio::test]
async fn rest_reads_users_channels_teams_posts() {
    let fake = fake().await;

    let r = api(&fake, "GET", "/users/me", Some(TOKEN), None).await;
    assert_eq!(r.status, 200);
    let me = r.body;
    assert_eq!(
        (me["id"].as_str(), me["username"].as_str(), me["is_bot"].as_bool()),
        (Some(BOT_ID), Some("pincer"), Some(true))
    );
    for k in [
        "create_at",
        "update_at",
        "delete_at",
        "email",
        "nickname",
        "first_name",
        "last_name",
        "roles",
        "locale",
        "notify_props",
        "timezone",
        "props",
    ] {
        assert!(me.get(k).is_some(), "UserProfile.{k} missing: {me}");
    }
    assert!(me.get("password").is_none(), "the server never sends the password");

    let r = api(&fake, "GET", &format!("/users/{ALICE}"), Some(TOKEN), None).await;
    assert_eq!((r.status, r.body["username"].as_str(), r.body["is_bot"].as_bool()), (200, Some("alice"), Some(false)));
    let r = api(&fake, "GET", &format!("/users/{}", new_id()), Some(TOKEN), None).await;
    assert_eq!((r.status, r.body["id"].as_str()), (404, Some("app.user.missing_account.const")));
    let r = api(&fake, "GET", "/users/not-an-id", Some(TOKEN), None).await;
    assert_eq!((r.status, r.body["id"].as_str()), (400, Some("api.context.invalid_url_param.app_error")));
    assert_eq!(r.body["message"], "Invalid or missing user_id parameter in request URL.");

    let r = api(&fake, "GET", &format!("/channels/{CHAN}"), Some(TOKEN), None).await;
    assert_eq!(r.status, 200);
    let c = r.body;
    for k in [
        "id",
        "create_at",
        "update_at",
        "delete_at",
        "team_id",
        "type",
        "display_name",
        "name",
        "header",
        "purpose",
        "last_post_at",
        "last_root_post_at",
        "creator_id",
        "scheme_id",
        "group_constrained",
    ] {
        assert!(c.get(k).is_some(), "Channel.{k} missing: {c}");
    }
    assert_eq!(
        (c["type"].as_str(), c["team_id"].as_str(), c["name"].as_str()),
        (Some("O"), Some(TEAM), Some("town-square"))
    );
    let r = api(&fake, "GET", &format!("/channels/{DM}"), Some(TOKEN), None).await;
    assert_eq!((r.body["type"].as_str(), r.body["team_id"].as_str()), (Some("D"), Some("")));
    let r = api(&fake, "GET", &format!("/channels/{PRIV}"), Some(TOKEN), None).await;
    assert_eq!((r.status, r.body["id"].as_str()), (403, Some("api.context.permissions.app_error")));
    let r = api(&fake, "GET", &format!("/channels/{}", new_id()), Some(TOKEN), None).await;
    assert_eq!((r.status, r.body["id"].as_str()), (404, Some("app.channel.get.existing.app_error")));
    // An open channel is readable by team members who are not channel members.
    let r = api(&fake, "GET", &format!("/channels/{OTHER}"), Some(TOKEN2), None).await;
    assert_eq!(r.status, 200);

    let r = api(&fake, "GET", &format!("/teams/{TEAM}"), Some(TOKEN), None).await;
    assert_eq!((r.status, r.body["name"].as_str(), r.body["type"].as_str()), (200, Some("pincer-team"), Some("O")));

    let secret = fake.user_post(PostSpec::new(PRIV, ALICE, "secret"));
    let public = fake.user_post(PostSpec::new(CHAN, ALICE, "public"));
    let r = api(&fake, "GET", &format!("/posts/{secret}"), Some(TOKEN), None).await;
    assert_eq!((r.status, r.body["id"].as_str()), (403, Some("api.context.permissions.app_error")));
    let r = api(&fake, "GET", &format!("/posts/{}", new_id()), Some(TOKEN), None).await;
    assert_eq!(
        (r.status, r.body["id"].as_str(), r.body["message"].as_str()),
        (404, Some("app.post.get.app_error"), Some("Unable to get the post."))
    );
    let r = api(&fake, "GET", &format!("/posts/{public}"), Some(TOKEN), None).await;
    assert_eq!((r.status, r.body["message"].as_str()), (200, Some("public")));
    assert_eq!(Some(r.body), fake.post(&public));
    let r = api(&fake, "GET", &format!("/channels/{CHAN}"), Some(TOKEN), None).await;
    assert_eq!(r.body["last_post_at"], fake.post(&public).unwrap()["create_at"]);

    // Ping needs no token; unknown routes are 404, known routes with another method 405.
    let r = api(&fake, "GET", "/system/ping", None, None).await;
    assert_eq!((r.status, r.body.clone()), (200, json!({"status": "OK"})));
    let r = api(&fake, "GET", "/nope", Some(TOKEN), None).await;
    assert_eq!((r.status, r.body["id"].as_str()), (404, Some("api.context.404.app_error")));
    assert_eq!(api(&fake, "DELETE", "/posts", Some(TOKEN), None).await.status, 405);
    assert_eq!(fake.requests().len(), 17);
}

#[tokio::test]
async fn typing_over_rest_and_websocket() {
    let fake = fake().await;
    let (mut ws, _) = header_auth(&fake, TOKEN, true).await;
    let (mut ws2, _) = header_auth(&fake, TOKEN2, true).await;

    let root = fake.user_post(PostSpec::new(CHAN, ALICE, "root"));
    assert_eq!(recv(&mut ws).await["event"], "posted");
    assert_eq!(recv(&mut ws2).await["event"], "posted");

    let r =
        api(&fake, "POST", "/users/me/typing", Some(TOKEN), Some(json!({"channel_id": CHAN, "parent_id": root}))).await;
    assert_eq!((r.status, r.body.clone()), (200, json!({"status": "OK"})));
    // The other bot sees it; the typer is omitted.
    let ev = recv(&mut ws2).await;
    assert_eq!(ev["event"], "typing");
    assert_eq!(ev["data"], json!({"parent_id": root, "user_id": BOT_ID}));
    assert_eq!(ev["broadcast"]["omit_users"], json!({BOT_ID: true}));
    assert_eq!(ev["broadcast"]["channel_id"], CHAN);

    send(&mut ws, json!({"seq": 1, "action": "user_typing", "data": {"channel_id": CHAN}})).await;
    assert_eq!(recv(&mut ws).await, json!({"status": "OK", "seq_reply": 1}));
    let ev = recv(&mut ws2).await;
    assert_eq!(ev["data"], json!({"parent_id": "", "user_id": BOT_ID}));

    let calls = fake.wait_typing_calls(2, T).await.unwrap();
    assert_eq!(calls[0].via, TypingVia::Rest);
    assert_eq!(
        (calls[0].user_id.as_str(), calls[0].channel_id.as_str(), calls[0].parent_id.as_str()),
        (BOT_ID, CHAN, root.as_str())
    );
    assert_eq!((calls[1].via, calls[1].parent_id.as_str()), (TypingVia::WebSocket, ""));

    let r =
        api(&fake, "POST", &format!("/users/{BOT_ID}/typing"), Some(TOKEN), Some(json!({"channel_id": PRIV}))).await;
    assert_eq!((r.status, r.body["id"].as_str()), (403, Some("api.context.permissions.app_error")));
    let r = api(&fake, "POST", &format!("/users/{ALICE}/typing"), Some(TOKEN), Some(json!({"channel_id": CHAN}))).await;
    assert_eq!(r.status, 403);
    let r = api_raw(&fake, "POST", "/users/me/typing", Some(TOKEN), Some("[]".into())).await;
    assert_eq!((r.status, r.body["id"].as_str()), (400, Some("api.context.invalid_body_param.app_error")));
    assert_eq!(fake.typing_calls().len(), 2);
}

// ---------------------------------------------------------------------------------------
// Reconnects, dead sockets, counting
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn reconnect_with_connection_id_replays_missed_events() {
    let fake = fake().await;
    let (mut ws, hello) = header_auth(&fake, TOKEN, true).await;
    let cid = conn_id(&hello);

    let p1 = fake.user_post(PostSpec::new(CHAN, ALICE, "one"));
    let ev = recv(&mut ws).await;
    assert_eq!((ev["seq"].as_i64(), posted_post(&ev)["id"].as_str()), (Some(2), Some(p1.as_str())));

    // The socket dies: these two are written into the void (seq 3 and 4).
    assert_eq!(fake.go_silent(TOKEN), 1);
    let p2 = fake.user_post(PostSpec::new(CHAN, ALICE, "two"));
    let p3 = fake.user_post(PostSpec::new(CHAN, ALICE, "three"));
    // The client gives up on it and drops the TCP connection.
    drop(ws);
    fake.wait_live_sockets(TOKEN, 0, T).await.unwrap();
    // While no socket is attached, events queue on the connection.
    let p4 = fake.user_post(PostSpec::new(CHAN, ALICE, "four"));

    // Reconnect: the next expected seq is 3.
    let mut ws = connect(&fake, &format!("?connection_id={cid}&sequence_number=3"), Some(TOKEN)).await;
    let mut got = Vec::new();
    for _ in 0..5 {
        got.push(recv(&mut ws).await);
    }
    let summary: Vec<(i64, String, String)> = got
        .iter()
        .map(|e| {
            let what = match e["event"].as_str().unwrap() {
                "posted" => posted_post(e)["id"].as_str().unwrap().to_string(),
                _ => e["data"]["status"].as_str().unwrap_or("").to_string(),
            };
            (e["seq"].as_i64().unwrap(), e["event"].as_str().unwrap().to_string(), what)
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            (3, "posted".into(), p2.clone()),
            (4, "posted".into(), p3.clone()),
            (5, "status_change".into(), "offline".into()),
            (6, "posted".into(), p4.clone()),
            (7, "status_change".into(), "online".into()),
        ],
        "no hello on a resumed connection"
    );

    // The stream goes on with the same connection.
    fake.user_post(PostSpec::new(CHAN, ALICE, "five"));
    assert_eq!(recv(&mut ws).await["seq"], 8);
    let s = fake.stats(TOKEN);
    assert_eq!((s.connections, s.resumed, s.fresh_connection_ids, s.live_sockets, s.max_live_sockets), (2, 1, 1, 1, 1));
    let replayed: Vec<i64> = fake.sent_events(TOKEN).iter().filter(|e| e.replayed).map(|e| e.seq).collect();
    assert_eq!(replayed, vec![3, 4]);
    assert!(fake.sent_events(TOKEN).iter().all(|e| e.connection_id == cid));
    assert_eq!(fake.close_log()[0].by, CloseBy::Transport);
}

#[tokio::test]
async fn reconnect_edge_cases_follow_the_server() {
    let fake = fake().await;
    let (mut ws, hello) = header_auth(&fake, TOKEN, true).await;
    let cid = conn_id(&hello);
    fake.user_post(PostSpec::new(CHAN, ALICE, "one"));
    assert_eq!(recv(&mut ws).await["seq"], 2);
    ws.close(Some(CloseFrame { code: CloseCode::Normal, reason: "bye".into() })).await.unwrap();
    assert_eq!(recv_end(&mut ws).await.1, End::Close(Some(1000)));
    fake.wait_live_sockets(TOKEN, 0, T).await.unwrap();
    assert_eq!(fake.close_log()[0].by, CloseBy::Client);

    // Lossless: nothing missed (next expected 3, last sent 2): no replay, no hello; the queued
    // offline status and the new online status follow.
    let mut ws = connect(&fake, &format!("?connection_id={cid}&sequence_number=3"), Some(TOKEN)).await;
    let a = recv(&mut ws).await;
    let b = recv(&mut ws).await;
    assert_eq!((a["seq"].as_i64(), a["data"]["status"].as_str()), (Some(3), Some("offline")));
    assert_eq!((b["seq"].as_i64(), b["data"]["status"].as_str()), (Some(4), Some("online")));
    drop(ws);
    fake.wait_live_sockets(TOKEN, 0, T).await.unwrap();

    // Loss: a sequence number the buffer cannot serve → new connection id, hello seq 0.
    let mut ws = connect(&fake, &format!("?connection_id={cid}&sequence_number=99"), Some(TOKEN)).await;
    let hello = recv(&mut ws).await;
    assert_eq!((hello["event"].as_str(), hello["seq"].as_i64()), (Some("hello"), Some(0)));
    let cid2 = conn_id(&hello);
    assert_ne!(cid2, cid);
    // ... followed by what was queued for the connection.
    assert_eq!(recv(&mut ws).await["data"]["status"], "offline");
    drop(ws);
    fake.wait_live_sockets(TOKEN, 0, T).await.unwrap();

    // Unknown connection id → fresh connection.
    let mut ws = connect(&fake, &format!("?connection_id={}&sequence_number=5", new_id()), Some(TOKEN)).await;
    let hello = recv(&mut ws).await;
    assert_eq!(hello["seq"], 0);
    assert!(![cid.as_str(), cid2.as_str()].contains(&conn_id(&hello).as_str()));
    drop(ws);
    fake.wait_live_sockets(TOKEN, 0, T).await.unwrap();

    // A challenge-authenticated socket never resumes: the query is ignored.
    let mut ws = connect(&fake, &format!("?connection_id={cid2}&sequence_number=2"), None).await;
    send(&mut ws, challenge(1, TOKEN)).await;
    let hello = recv(&mut ws).await;
    assert_eq!(hello["seq"], 0);
    assert_ne!(conn_id(&hello), cid2);
    drop(ws);
    fake.wait_live_sockets(TOKEN, 0, T).await.unwrap();

    // Bad parameters drop the socket right after the upgrade.
    let mut ws = connect(&fake, "?connection_id=abc&sequence_number=1", Some(TOKEN)).await;
    assert_eq!(recv_end(&mut ws).await, (vec![], End::Dropped));
    assert_eq!(fake.close_log().pop().unwrap().reason.as_deref(), Some("invalid connection_id"));
    let mut ws = connect(&fake, &format!("?connection_id={cid2}"), Some(TOKEN)).await;
    assert_eq!(recv_end(&mut ws).await, (vec![], End::Dropped));
    assert_eq!(fake.close_log().pop().unwrap().reason.as_deref(), Some("missing or invalid sequence_number"));

    // An expired connection cannot be resumed.
    fake.set_resume_window(Duration::ZERO);
    let mut ws = connect(&fake, &format!("?connection_id={cid2}&sequence_number=1"), Some(TOKEN)).await;
    let hello = recv(&mut ws).await;
    assert_eq!((hello["event"].as_str(), hello["seq"].as_i64()), (Some("hello"), Some(0)));
    assert_ne!(conn_id(&hello), cid2);
    let s = fake.stats(TOKEN);
    assert_eq!((s.resumed, s.max_live_sockets), (1, 1));
}

#[tokio::test]
async fn replay_buffer_is_bounded() {
    let fake = fake().await;
    let (ws, hello) = header_auth(&fake, TOKEN, true).await;
    let cid = conn_id(&hello);
    fake.go_silent(TOKEN);
    for i in 0..DEAD_QUEUE_SIZE + 2 {
        fake.user_post(PostSpec::new(CHAN, ALICE, format!("lost {i}")));
    }
    drop(ws);
    fake.wait_live_sockets(TOKEN, 0, T).await.unwrap();
    // Seq 2 has been pushed out of the 128-event buffer: the events are lost.
    let mut ws = connect(&fake, &format!("?connection_id={cid}&sequence_number=2"), Some(TOKEN)).await;
    let hello = recv(&mut ws).await;
    assert_eq!((hello["event"].as_str(), hello["seq"].as_i64()), (Some("hello"), Some(0)));
    assert_ne!(conn_id(&hello), cid);
    let s = fake.stats(TOKEN);
    assert_eq!((s.resumed, s.fresh_connection_ids), (0, 2));
}

#[tokio::test]
async fn silent_socket_stops_answering_but_stays_live() {
    let fake = fake().await;
    let (mut ws, _) = header_auth(&fake, TOKEN, true).await;
    assert_eq!(fake.go_silent(TOKEN), 1);

    send(&mut ws, json!({"seq": 1, "action": "ping"})).await;
    ws.send(Message::Ping(b"anyone?".to_vec().into())).await.unwrap();
    fake.user_post(PostSpec::new(CHAN, ALICE, "into the void"));
    fake.wait_for(|f| f.stats(TOKEN).pings_received == 1 && f.stats(TOKEN).ws_pings_received == 1, T).await.unwrap();
    assert_eq!(fake.live_sockets(TOKEN), 1, "a dead socket is live until closed");
    assert_eq!(fake.ws_frames().last().unwrap().payload, json!({"seq": 1, "action": "ping"}));

    // Nothing at all reached the client before the server dropped the connection.
    assert_eq!(fake.drop_socket(TOKEN), 1);
    assert_eq!(recv_end(&mut ws).await, (vec![], End::Dropped));
    let s = fake.stats(TOKEN);
    assert_eq!((s.pings_received, s.pings_answered, s.ws_pings_received, s.ws_pongs_sent), (1, 0, 1, 0));
    // The event still got its seq (it is in the replay buffer).
    let sent = fake.sent_events(TOKEN);
    assert_eq!((sent.last().unwrap().event.as_str(), sent.last().unwrap().seq), ("posted", 2));
}

#[tokio::test]
async fn drop_socket_and_close_socket() {
    let fake = fake().await;
    let (mut ws, hello) = header_auth(&fake, TOKEN, true).await;
    let cid = conn_id(&hello);

    assert_eq!(fake.drop_socket(TOKEN), 1);
    assert_eq!(recv_end(&mut ws).await, (vec![], End::Dropped));
    assert_eq!(fake.live_sockets(TOKEN), 0);
    let close = fake.close_log().pop().unwrap();
    assert_eq!((close.by, close.code, close.token.as_deref()), (CloseBy::ServerAbort, None, Some(TOKEN)));

    // Resumable after a drop.
    let mut ws = connect(&fake, &format!("?connection_id={cid}&sequence_number=2"), Some(TOKEN)).await;
    assert_eq!(recv(&mut ws).await["data"]["status"], "offline");
    assert_eq!(recv(&mut ws).await["data"]["status"], "online");
    assert_eq!(fake.stats(TOKEN).resumed, 1);

    assert_eq!(fake.close_socket(TOKEN, 4000), 1);
    assert_eq!(recv_end(&mut ws).await, (vec![], End::Close(Some(4000))));
    let close = fake.close_log().pop().unwrap();
    assert_eq!((close.by, close.code), (CloseBy::Server, Some(4000)));
    fake.wait_live_sockets(TOKEN, 0, T).await.unwrap();
    assert_eq!(fake.drop_socket(TOKEN), 0);
}

#[tokio::test]
async fn simultaneous_sockets_are_counted() {
    let fake = fake().await;

    // Sequential sockets: never more than one.
    let (mut ws1, _) = header_auth(&fake, TOKEN, true).await;
    ws1.close(None).await.unwrap();
    assert_eq!(recv_end(&mut ws1).await.1, End::Close(None));
    fake.wait_live_sockets(TOKEN, 0, T).await.unwrap();
    let (ws2, _) = header_auth(&fake, TOKEN, true).await;
    fake.wait_connections(TOKEN, 2, T).await.unwrap();
    assert_eq!(fake.max_live_sockets(TOKEN), 1);

    // A second simultaneous socket is accepted (Mattermost allows it) but counted.
    let (_ws3, _) = header_auth(&fake, TOKEN, false).await;
    fake.wait_live_sockets(TOKEN, 2, T).await.unwrap();
    fake.wait_for(|f| f.overlap_checks_pending() == 0, T).await.unwrap();
    assert_eq!(fake.max_live_sockets(TOKEN), 2);
    let overlaps = fake.overlaps();
    assert_eq!((overlaps.len(), overlaps[0].token.as_str(), overlaps[0].other_live_sockets), (1, TOKEN, 1));
    assert_eq!(fake.stats(TOKEN).overlaps, 1);
    drop(ws2);

    // Replacing a socket (the old one closes right after the new one authenticated) is not
    // an overlap: the fake waits up to the grace for the old socket to be seen closed.
    let fake = self::fake().await;
    fake.set_overlap_grace(T);
    let (mut old, _) = header_auth(&fake, TOKEN2, true).await;
    let (_new, _) = header_auth(&fake, TOKEN2, false).await;
    old.close(None).await.unwrap();
    let _ = recv_end(&mut old).await;
    fake.wait_live_sockets(TOKEN2, 1, T).await.unwrap();
    fake.wait_for(|f| f.overlap_checks_pending() == 0, T).await.unwrap();
    assert_eq!(fake.max_live_sockets(TOKEN2), 1);
    assert!(fake.overlaps().is_empty());
    assert_eq!(fake.stats(TOKEN2).connections, 2);
}

#[tokio::test]
async fn wait_timeout_dumps_state() {
    let fake = fake().await;
    let err = fake.wait_bot_posts(CHAN, 1, Duration::from_millis(50)).await.unwrap_err();
    let text = err.to_string();
    assert!(text.contains("timed out") && text.contains("1 bot post(s) in channel"), "{text}");
    assert!(text.contains("bot pincer") && text.contains("channel chan0000000000000000000001"), "{text}");
    let err = fake.wait_live_sockets(TOKEN, 1, Duration::from_millis(20)).await.unwrap_err();
    assert!(format!("{err:?}").contains("1 live socket(s)"));
    fake.stop().await;
}
