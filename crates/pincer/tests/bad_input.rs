//! Hostile and malformed input on the control-plane WebSocket, against the real binary: every
//! bad frame gets an error response or a close with a reason (never a panic, never a hang),
//! memory stays bounded, and the daemon keeps serving other clients afterwards.
//!
//! The pure decoder behind these paths (`control/frame.rs`) is also property-tested in the
//! binary's unit tests and fuzzed by `fuzz/` (`cargo +nightly fuzz run frame_decoder`).

mod common;
use common::*;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

type Stream = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Open a WebSocket without the handshake.
async fn open(d: &Daemon) -> Stream {
    tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(d.ws_url()))
        .await
        .expect("connect in time")
        .expect("connect")
        .0
}

/// What the server did next: a JSON frame, a close (code, reason), or the connection ended
/// without a close frame.
#[derive(Debug, PartialEq)]
enum Next {
    Frame(Value),
    Close(u16, String),
    Ended(String),
}

async fn next(ws: &mut Stream) -> Next {
    loop {
        match tokio::time::timeout(WAIT, ws.next()).await.expect("the server answers in time") {
            Some(Ok(Message::Text(t))) => return Next::Frame(serde_json::from_str(&t).expect("JSON frame")),
            Some(Ok(Message::Close(f))) => {
                return f.map_or(Next::Close(1005, String::new()), |f| Next::Close(f.code.into(), f.reason.to_string()))
            }
            Some(Ok(_)) => continue,
            Some(Err(e)) => return Next::Ended(e.to_string()),
            None => return Next::Ended("eof".into()),
        }
    }
}

/// Skip `connect.challenge`, the first thing the server sends.
async fn challenge(ws: &mut Stream) {
    match next(ws).await {
        Next::Frame(f) => assert_eq!(f["event"], "connect.challenge", "{f}"),
        other => panic!("expected connect.challenge, got {other:?}"),
    }
}

async fn send(ws: &mut Stream, text: impl Into<String>) {
    ws.send(Message::Text(text.into().into())).await.expect("send");
}

/// Expect an error `res` for `id`, then a close with `code`; returns (error, close reason).
async fn error_then_close(ws: &mut Stream, id: &Value, code: u16) -> (Value, String) {
    let res = match next(ws).await {
        Next::Frame(f) => f,
        other => panic!("expected an error res, got {other:?}"),
    };
    assert_eq!((&res["type"], &res["id"], &res["ok"]), (&json!("res"), id, &json!(false)), "{res}");
    match next(ws).await {
        Next::Close(c, reason) => {
            assert_eq!(c, code, "close reason: {reason}");
            (res["error"].clone(), reason)
        }
        other => panic!("expected close {code}, got {other:?}"),
    }
}

/// A raw connection after a successful handshake (full operator scopes).
async fn authed(d: &Daemon) -> Stream {
    let mut ws = open(d).await;
    challenge(&mut ws).await;
    let params = connect_params(&d.token, &["operator.read", "operator.write", "operator.admin"]);
    send(&mut ws, json!({"type": "req", "id": "c1", "method": "connect", "params": params}).to_string()).await;
    let hello = res(&mut ws).await;
    assert_eq!(hello["ok"], true, "{hello}");
    ws
}

/// The next `res` frame, skipping events; panics if the connection ends first.
async fn res(ws: &mut Stream) -> Value {
    loop {
        match next(ws).await {
            Next::Frame(f) if f["type"] == "res" => return f,
            Next::Frame(_) => continue,
            other => panic!("connection ended while waiting for a res: {other:?}"),
        }
    }
}

/// Resident set size of the daemon, in bytes.
fn rss(d: &Daemon) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", d.child.id().unwrap())).unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("VmRSS");
    kb * 1024
}

/// The daemon still completes a handshake and answers `health`.
async fn still_serving(d: &Daemon) {
    let mut c = d.client().await;
    let res = c.request("health", json!({})).await;
    assert_eq!(res["ok"], true, "{res}");
}

#[tokio::test]
async fn bad_first_frames_get_an_error_or_a_close_with_a_reason() {
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(dir.path()).await;

    // Not JSON: closed at once with a reason (there is no id to answer).
    let mut ws = open(&d).await;
    challenge(&mut ws).await;
    send(&mut ws, "{not json").await;
    assert_eq!(next(&mut ws).await, Next::Close(1008, "invalid handshake: not JSON".into()));

    // A binary frame.
    let mut ws = open(&d).await;
    challenge(&mut ws).await;
    ws.send(Message::Binary(b"\x00\x01connect".to_vec().into())).await.unwrap();
    assert_eq!(next(&mut ws).await, Next::Close(1008, "invalid handshake: expected a JSON text frame".into()));

    // JSON but not `connect`: an unknown `type`, a request for another method, wrong types,
    // a huge id. Each gets INVALID_REQUEST echoing its id, then 1008.
    let huge_id = "i".repeat(60 * 1024);
    for (frame, id) in [
        (json!({"type": "subscribe", "id": "u1", "method": "connect"}), json!("u1")),
        (json!({"type": "event", "event": "connect"}), Value::Null),
        (json!({"type": "req", "id": "h1", "method": "health", "params": {}}), json!("h1")),
        (json!({"type": "req", "id": 7, "method": ["connect"]}), json!(7)),
        (json!({"type": "req", "id": {"nested": [1, 2]}, "method": 5}), json!({"nested": [1, 2]})),
        (json!(["req", "c1", "connect"]), Value::Null),
        (json!("connect"), Value::Null),
        (json!({"type": "req", "id": huge_id, "method": "health"}), json!(huge_id)),
    ] {
        let mut ws = open(&d).await;
        challenge(&mut ws).await;
        send(&mut ws, frame.to_string()).await;
        let (error, reason) = error_then_close(&mut ws, &id, 1008).await;
        assert_eq!(error["code"], "INVALID_REQUEST", "{frame}: {error}");
        assert_eq!(error["message"], "invalid handshake: first request must be connect");
        assert_eq!(reason, "invalid handshake: first request must be connect");
    }

    // A number beyond f64 is not JSON serde can represent: treated as not JSON.
    let mut ws = open(&d).await;
    challenge(&mut ws).await;
    send(&mut ws, r#"{"type":"req","id":1e400,"method":"connect","params":{}}"#).await;
    assert_eq!(next(&mut ws).await, Next::Close(1008, "invalid handshake: not JSON".into()));

    // Protocol mismatch.
    let mut ws = open(&d).await;
    challenge(&mut ws).await;
    let mut params = connect_params(&d.token, &["operator.read"]);
    params["minProtocol"] = json!(5);
    params["maxProtocol"] = json!(9);
    send(&mut ws, json!({"type": "req", "id": "p1", "method": "connect", "params": params}).to_string()).await;
    let (error, _) = error_then_close(&mut ws, &json!("p1"), 1008).await;
    assert_eq!((&error["code"], &error["details"]["code"]), (&json!("INVALID_REQUEST"), &json!("PROTOCOL_MISMATCH")));

    still_serving(&d).await;
    let (code, stderr) = d.stop().await;
    assert_eq!(code, Some(0), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[tokio::test]
async fn a_wrong_or_missing_token_is_invalid_request_naming_the_auth_failure_then_1008() {
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(dir.path()).await;
    assert!(!d.token.is_empty(), "the default config uses token auth");
    for (token, detail) in [(Some("wrong-token"), "AUTH_TOKEN_MISMATCH"), (None, "AUTH_TOKEN_MISSING")] {
        let mut ws = open(&d).await;
        challenge(&mut ws).await;
        let mut params = connect_params(token.unwrap_or_default(), &["operator.admin"]);
        if token.is_none() {
            params.as_object_mut().unwrap().remove("auth");
        }
        send(&mut ws, json!({"type": "req", "id": "c1", "method": "connect", "params": params}).to_string()).await;
        let (error, reason) = error_then_close(&mut ws, &json!("c1"), 1008).await;
        assert_eq!(error["code"], "INVALID_REQUEST", "{error}");
        assert_eq!(error["details"]["code"], detail, "{error}");
        assert!(error["message"].as_str().unwrap().contains("unauthorized"), "{error}");
        assert!(!reason.is_empty() && reason.len() <= 123, "a close reason fits a control frame: {reason:?}");
    }
    still_serving(&d).await;
    d.stop().await;
}

#[tokio::test]
async fn a_flood_of_requests_before_connect_gets_one_error_and_a_close() {
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(dir.path()).await;
    let ws = open(&d).await;
    let (mut tx, mut rx) = ws.split();
    // Write the flood without waiting for anything; the server may close mid-flood, so write
    // errors are expected and ignored. Reading goes on concurrently.
    let writer = tokio::spawn(async move {
        for i in 0..1000 {
            let f = json!({"type": "req", "id": format!("f{i}"), "method": "health", "params": {}}).to_string();
            if tx.send(Message::Text(f.into())).await.is_err() {
                return i;
            }
        }
        1000
    });
    let mut seen = Vec::new();
    loop {
        match tokio::time::timeout(WAIT, rx.next()).await.expect("the server answers in time") {
            Some(Ok(Message::Text(t))) => seen.push(Next::Frame(serde_json::from_str(&t).unwrap())),
            Some(Ok(Message::Close(f))) => {
                let f = f.expect("a close frame with a code");
                seen.push(Next::Close(f.code.into(), f.reason.to_string()));
                break;
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => panic!("connection ended without a close frame: {e}; saw {seen:?}"),
            None => panic!("connection ended without a close frame; saw {seen:?}"),
        }
    }
    let _ = writer.await;
    assert_eq!(seen.len(), 3, "challenge, one error, close: {seen:?}");
    let Next::Frame(res) = &seen[1] else { panic!("{seen:?}") };
    assert_eq!(
        (&res["id"], &res["ok"], &res["error"]["code"]),
        (&json!("f0"), &json!(false), &json!("INVALID_REQUEST"))
    );
    assert_eq!(seen[2], Next::Close(1008, "invalid handshake: first request must be connect".into()));
    still_serving(&d).await;
    d.stop().await;
}

#[tokio::test]
async fn ten_megabyte_frames_are_refused_without_growing_memory() {
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(dir.path()).await;
    still_serving(&d).await;
    let before = rss(&d);
    let ten_mb =
        format!(r#"{{"type":"req","id":"big","method":"connect","params":{{"pad":"{}"}}}}"#, "x".repeat(10 << 20));

    // Before connect: 1009 (pre-auth frames are capped at 64 KiB), eight times over, four at once.
    for _ in 0..2 {
        let mut tasks = Vec::new();
        for _ in 0..4 {
            let (url, frame) = (d.ws_url(), ten_mb.clone());
            tasks.push(tokio::spawn(async move {
                let mut ws = tokio_tungstenite::connect_async(url).await.unwrap().0;
                challenge(&mut ws).await;
                send(&mut ws, frame).await;
                next(&mut ws).await
            }));
        }
        for t in tasks {
            assert_eq!(t.await.unwrap(), Next::Close(1009, "pre-auth frame too large (max 64 KiB)".into()));
        }
    }

    // After connect, 10 MB is within policy.maxPayload (25 MiB): a 10 MB non-JSON frame is an
    // INVALID_REQUEST error and the connection goes on; a 10 MB request with a huge id is
    // answered with that id.
    let mut ws = authed(&d).await;
    send(&mut ws, "{".repeat(10 << 20)).await;
    let r = res(&mut ws).await;
    assert_eq!((&r["id"], &r["ok"], &r["error"]["code"]), (&Value::Null, &json!(false), &json!("INVALID_REQUEST")));
    let big_id = "i".repeat(10 << 20);
    send(&mut ws, json!({"type": "req", "id": big_id, "method": "health", "params": {}}).to_string()).await;
    let r = res(&mut ws).await;
    assert_eq!((r["id"].as_str().map(str::len), &r["ok"]), (Some(10 << 20), &json!(true)));
    send(&mut ws, json!({"type": "req", "id": "h2", "method": "health", "params": {}}).to_string()).await;
    assert_eq!(res(&mut ws).await["id"], "h2");
    drop(ws);

    // Beyond maxPayload the connection is dropped (memory stays bounded by the cap).
    let mut ws = authed(&d).await;
    let _ = ws.send(Message::Text("x".repeat(26 << 20).into())).await;
    match next(&mut ws).await {
        Next::Close(code, _) => assert_eq!(code, 1009),
        Next::Ended(_) => {}
        Next::Frame(f) => {
            panic!("an over-limit frame was answered: {}", &f.to_string()[..200.min(f.to_string().len())])
        }
    }

    still_serving(&d).await;
    let after = rss(&d);
    // 8 × 10 MB + 2 × 10 MB + 26 MB went through; a leak of those frames would show here.
    let grown = after.saturating_sub(before);
    eprintln!("rss before {} MiB, after {} MiB", before >> 20, after >> 20);
    assert!(grown < 96 << 20, "daemon RSS grew by {} MiB", grown >> 20);
    let (code, stderr) = d.stop().await;
    assert_eq!(code, Some(0));
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[tokio::test]
async fn after_connect_malformed_frames_and_wrong_param_types_each_get_one_error() {
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(dir.path()).await;
    let c = d.client().await;
    let methods: Vec<String> =
        c.hello()["features"]["methods"].as_array().unwrap().iter().map(|m| m.as_str().unwrap().to_string()).collect();
    drop(c);
    let mut ws = authed(&d).await;

    // Frames that are not requests: INVALID_REQUEST echoing the id when there is one.
    for (frame, id, message) in [
        ("[1,2".to_string(), Value::Null, "invalid frame: EOF while parsing a list"),
        (r#"{"type":"req","id":1e400,"method":"health"}"#.into(), Value::Null, "invalid frame: number out of range"),
        (
            r#"{"type":"subscribe","id":"u1","method":"health"}"#.into(),
            json!("u1"),
            "invalid frame: expected {type:\"req\", id, method, params}",
        ),
        (
            r#"{"type":"res","id":"u2","ok":true}"#.into(),
            json!("u2"),
            "invalid frame: expected {type:\"req\", id, method, params}",
        ),
        (
            r#"{"type":"req","id":"","method":"health"}"#.into(),
            json!(""),
            "invalid frame: expected {type:\"req\", id, method, params}",
        ),
        (
            r#"{"type":"req","id":18446744073709551616,"method":"health"}"#.into(),
            json!(18446744073709551616.0),
            "invalid frame: expected {type:\"req\", id, method, params}",
        ),
        (
            r#"{"type":"req","id":"m1","method":42}"#.into(),
            json!("m1"),
            "invalid frame: expected {type:\"req\", id, method, params}",
        ),
        (r#"{"type":"req","id":"c2","method":"connect","params":{}}"#.into(), json!("c2"), "already connected"),
        (r#"{"type":"req","id":"x1","method":"no.such.method"}"#.into(), json!("x1"), "unknown method: no.such.method"),
    ] {
        send(&mut ws, frame.clone()).await;
        let r = res(&mut ws).await;
        assert_eq!((&r["id"], &r["ok"]), (&id, &json!(false)), "{frame}: {r}");
        assert_eq!(r["error"]["code"], "INVALID_REQUEST", "{frame}: {r}");
        assert!(r["error"]["message"].as_str().unwrap().starts_with(message), "{frame}: {r}");
    }
    ws.send(Message::Binary(b"{}".to_vec().into())).await.unwrap();
    let r = res(&mut ws).await;
    assert_eq!((&r["id"], &r["error"]["message"]), (&Value::Null, &json!("binary frames are not supported")));

    // Every advertised method with params of the wrong type: exactly one res per request
    // (sent all at once, so they also run concurrently). gateway.restart/reload are left out:
    // they ignore params and would restart or reload under the test.
    let bad_params = [
        json!(null),
        json!(42),
        json!("params"),
        json!([1, 2, 3]),
        json!({"sessionKey": 5, "message": [], "idempotencyKey": {}, "key": 7, "runId": false, "channel": 1, "to": [],
               "accountId": 3, "id": "seven", "limit": -1, "status": 3, "raw": 7, "patch": 5, "cursor": "x",
               "timeoutMs": "soon", "timeout": -3, "queueMode": 1, "deliver": "yes", "baseHash": 9, "maxBytes": -1}),
        json!({"limit": 1e300, "id": 1.5, "timeoutMs": 18446744073709551615u64, "cursor": -1, "maxBytes": 1e300}),
    ];
    let mut expected = std::collections::BTreeSet::new();
    for (i, m) in methods.iter().filter(|m| !m.starts_with("gateway.")).enumerate() {
        for (j, p) in bad_params.iter().enumerate() {
            let id = format!("w{i}-{j}");
            send(&mut ws, json!({"type": "req", "id": id, "method": m, "params": p}).to_string()).await;
            expected.insert(id);
        }
    }
    assert!(expected.len() >= 6 * 15, "{} requests", expected.len());
    let mut answered = std::collections::BTreeMap::new();
    while answered.len() < expected.len() {
        let f = res(&mut ws).await;
        let id = f["id"].as_str().expect("string id").to_string();
        assert!(expected.contains(&id), "unexpected res {f}");
        if f["ok"] == false {
            let e = &f["error"];
            assert!(
                e["code"].as_str().is_some_and(|s| !s.is_empty())
                    && e["message"].as_str().is_some_and(|s| !s.is_empty()),
                "{f}"
            );
        }
        assert!(answered.insert(id, f).is_none(), "two responses for one id");
    }

    still_serving(&d).await;
    let (code, stderr) = d.stop().await;
    assert_eq!(code, Some(0));
    assert!(!stderr.contains("panicked"), "{stderr}");
}
