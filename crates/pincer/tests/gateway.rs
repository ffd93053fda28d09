//! The real binary on its embedded defaults: handshake, methods, chat through the echo agent,
//! errors, HTTP endpoints, lock and exit codes.

mod common;
use common::*;
use serde_json::{json, Value};

#[tokio::test]
async fn defaults_handshake_and_echo_chat() {
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(dir.path()).await;
    assert!(!d.token.is_empty(), "a token is generated into the state dir");
    assert!(d.stdout_lines.iter().any(|l| l.contains(&d.token)), "the generated token is printed once");
    assert!(d.stdout_lines.iter().any(|l| l.contains("web chat: http://")));

    let mut ws = d.client().await;
    let hello = ws.hello().clone();
    assert_eq!(hello["protocol"], 4);
    let methods: Vec<&str> =
        hello["features"]["methods"].as_array().unwrap().iter().filter_map(Value::as_str).collect();
    for m in ["health", "status", "chat.send", "chat.history", "agent", "agent.wait", "send", "sessions.list"] {
        assert!(methods.contains(&m), "hello-ok advertises {m}");
    }
    assert!(hello["policy"]["tickIntervalMs"].as_u64().unwrap() > 0);

    let res = ws
        .request("chat.send", json!({"sessionKey": "web-1", "message": "hello pincer", "idempotencyKey": "idem-1"}))
        .await;
    assert_eq!(res["ok"], true, "{res}");
    assert_eq!(res["payload"]["runId"], "idem-1");
    assert_eq!(res["payload"]["status"], "started");
    let fin = ws.event(|e| e["event"] == "chat" && e["payload"]["state"] == "final").await;
    assert_eq!(fin["payload"]["sessionKey"], "agent:main:web-1");
    assert_eq!(fin["payload"]["message"]["content"][0]["text"], "echo: hello pincer");
    assert!(fin["seq"].as_u64().unwrap() >= 1);

    let hist = ws.request("chat.history", json!({"sessionKey": "agent:main:web-1"})).await;
    let msgs = hist["payload"]["messages"].as_array().unwrap();
    let texts: Vec<&str> = msgs.iter().map(|m| m["content"][0]["text"].as_str().unwrap()).collect();
    assert_eq!(texts, vec!["hello pincer", "echo: hello pincer"]);

    // Idempotent retry: same key, nothing runs again.
    let again = ws
        .request("chat.send", json!({"sessionKey": "web-1", "message": "hello pincer", "idempotencyKey": "idem-1"}))
        .await;
    assert_eq!(again["payload"]["runId"], "idem-1");
    let hist = ws.request("chat.history", json!({"sessionKey": "agent:main:web-1"})).await;
    assert_eq!(hist["payload"]["messages"].as_array().unwrap().len(), 2);

    let st = ws.request("status", json!({})).await;
    assert_eq!(st["ok"], true);
    assert_eq!(
        st["payload"]["agent"]["model"]["echoOnly"], true,
        "status says no model is configured: {}",
        st["payload"]["agent"]
    );
    assert!(st["payload"]["agent"]["summary"].as_str().unwrap().contains("no model configured"));

    let unknown = ws.request("bogus.method", json!({})).await;
    assert_eq!(unknown["ok"], false);
    assert_eq!(unknown["error"]["code"], "INVALID_REQUEST");
    assert_eq!(unknown["error"]["message"], "unknown method: bogus.method");

    let (code, _) = d.stop().await;
    assert_eq!(code, Some(0));
}

#[tokio::test]
async fn agent_two_stage_response_and_wait() {
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(dir.path()).await;
    let mut ws = d.client().await;
    let first = ws.request("agent", json!({"message": "ping", "idempotencyKey": "a-1"})).await;
    assert_eq!(first["payload"]["status"], "accepted", "{first}");
    let id = first["id"].as_str().unwrap().to_string();
    let second = ws.response(&id).await;
    assert_eq!(second["payload"]["status"], "ok", "{second}");
    assert_eq!(second["payload"]["result"]["text"], "echo: ping");
    let waited = ws.request("agent.wait", json!({"runId": "a-1", "timeoutMs": 1000})).await;
    assert_eq!(waited["payload"]["status"], "ok");
    let missing = ws.request("agent", json!({"message": "x"})).await;
    assert_eq!(missing["error"]["code"], "INVALID_REQUEST", "idempotencyKey is required: {missing}");
    d.stop().await;
}

#[tokio::test]
async fn handshake_rules() {
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(dir.path()).await;

    // First frame not connect: error res, then close 1008.
    let mut ws = Ws::connect_raw(&d.ws_url()).await;
    let ch = ws.recv().await.unwrap();
    assert_eq!(ch["event"], "connect.challenge");
    assert!(ch["payload"]["nonce"].as_str().is_some_and(|n| !n.is_empty()));
    ws.send_text(&json!({"type": "req", "id": "x", "method": "health", "params": {}}).to_string()).await;
    let res = ws.recv().await.unwrap();
    assert_eq!(res["error"]["code"], "INVALID_REQUEST");
    assert_eq!(res["error"]["message"], "invalid handshake: first request must be connect");
    assert_eq!(ws.close_code().await, Some(1008));

    // Wrong token.
    let mut ws = Ws::connect_raw(&d.ws_url()).await;
    ws.recv().await.unwrap();
    let res = ws.request("connect", connect_params("wrong", &["operator.read"])).await;
    assert_eq!(res["ok"], false);
    assert_eq!(res["error"]["code"], "INVALID_REQUEST");
    assert_eq!(res["error"]["details"]["code"], "AUTH_TOKEN_MISMATCH");
    assert_eq!(ws.close_code().await, Some(1008));

    // Protocol range without 4.
    let mut ws = Ws::connect_raw(&d.ws_url()).await;
    ws.recv().await.unwrap();
    let mut p = connect_params(&d.token, &["operator.read"]);
    p["minProtocol"] = json!(5);
    p["maxProtocol"] = json!(6);
    let res = ws.request("connect", p).await;
    assert_eq!(res["ok"], false);
    assert!(res["error"]["message"].as_str().unwrap().contains("protocol"), "{res}");

    // Any client id/mode is accepted; scopes are enforced.
    let mut ws = Ws::connect_auth(&d.ws_url(), &d.token, &[]).await;
    let res = ws.request("status", json!({})).await;
    assert_eq!(res["error"]["code"], "FORBIDDEN");
    assert_eq!(res["error"]["message"], "missing scope: operator.read");
    let mut ws = Ws::connect_auth(&d.ws_url(), &d.token, &["operator.write"]).await;
    let res = ws.request("config.get", json!({})).await;
    assert_eq!(res["error"]["code"], "FORBIDDEN", "config.* needs admin");

    // Oversized pre-auth frame.
    let mut ws = Ws::connect_raw(&d.ws_url()).await;
    ws.recv().await.unwrap();
    ws.send_text(&"x".repeat(70 * 1024)).await;
    assert_eq!(ws.close_code().await, Some(1009));
    d.stop().await;
}

#[tokio::test]
async fn http_probes_metrics_and_webchat_page() {
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(dir.path()).await;
    let http = reqwest::Client::new();
    let r = http.get(format!("{}/healthz", d.http_url())).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let r = http.get(format!("{}/readyz", d.http_url())).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let r = http.get(format!("{}/metrics", d.http_url())).send().await.unwrap();
    let body = r.text().await.unwrap();
    assert!(body.contains("pincer_runs_ok_total"), "{body}");
    let r = http.get(format!("{}/", d.http_url())).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.text().await.unwrap().contains("connect.challenge"), "the web chat page speaks the protocol");
    // The OpenAI endpoint is on by default on loopback (issue 3), bearer-protected.
    let r = http
        .post(format!("{}/v1/chat/completions", d.http_url()))
        .json(&json!({"model": "pincer", "messages": [{"role": "user", "content": "x"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = http
        .post(format!("{}/v1/chat/completions", d.http_url()))
        .bearer_auth(&d.token)
        .json(&json!({"model": "pincer", "messages": [{"role": "user", "content": "x"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let body = http.get(format!("{}/metrics", d.http_url())).send().await.unwrap().text().await.unwrap();
    for line in
        ["pincer_runs_ok_total 1", "pincer_run_duration_seconds_count 1", "pincer_outbox_rows{status=\"pending\"} 0"]
    {
        assert!(body.lines().any(|l| l == line), "missing {line:?} in\n{body}");
    }
    d.stop().await;

    // Explicitly disabled: 404.
    let dir = tempfile::tempdir().unwrap();
    write_config(dir.path(), &json!({"gateway": {"http": {"endpoints": {"chatCompletions": {"enabled": false}}}}}));
    let d = Daemon::start(dir.path()).await;
    let r = http
        .post(format!("{}/v1/chat/completions", d.http_url()))
        .bearer_auth(&d.token)
        .json(&json!({"model": "pincer", "messages": [{"role": "user", "content": "x"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    d.stop().await;
}

#[tokio::test]
async fn openai_compatible_endpoint() {
    let dir = tempfile::tempdir().unwrap();
    write_config(dir.path(), &json!({"gateway": {"http": {"endpoints": {"chatCompletions": {"enabled": true}}}}}));
    let d = Daemon::start(dir.path()).await;
    let http = reqwest::Client::new();
    let url = format!("{}/v1/chat/completions", d.http_url());
    let r = http
        .post(&url)
        .json(&json!({"model": "pincer", "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401, "bearer token required");
    let r = http
        .post(&url)
        .bearer_auth(&d.token)
        .json(&json!({"model": "pincer", "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["choices"][0]["message"]["content"], "echo: hi");
    let r = http
        .post(&url)
        .bearer_auth(&d.token)
        .json(&json!({"model": "pincer/main", "stream": true, "messages": [{"role": "user", "content": "stream me"}]}))
        .send()
        .await
        .unwrap();
    let body = r.text().await.unwrap();
    assert!(body.contains("chat.completion.chunk"), "{body}");
    assert!(body.contains("echo: stream me"), "{body}");
    assert!(body.trim_end().ends_with("data: [DONE]"), "{body}");
    let r = http.get(format!("{}/v1/models", d.http_url())).bearer_auth(&d.token).send().await.unwrap();
    let v: Value = r.json().await.unwrap();
    assert!(v["data"].as_array().unwrap().iter().any(|m| m["id"] == "pincer/main"), "{v}");
    d.stop().await;
}

#[tokio::test]
async fn second_gateway_on_same_state_dir_fails_fast() {
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(dir.path()).await;
    let out = cli(dir.path(), &["gateway", "run", "--port", "0"]).await;
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("already running"), "{err}");
    let pid = d.child.id().unwrap();
    assert!(err.contains(&format!("(pid {pid})")), "the message names the holder's pid: {err}");
    d.stop().await;
}

#[tokio::test]
async fn invalid_config_exits_78_listing_every_error() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("pincer.json"),
        r#"{ gateway: { reload: { mode: "fast" } }, agents: { defaults: { maxConcurent: 2 } }, cron: {} }"#,
    )
    .unwrap();
    let out = cli(dir.path(), &["gateway", "run", "--port", "0"]).await;
    assert_eq!(out.status.code(), Some(78));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("gateway.reload.mode: expected one of hybrid|off"), "{err}");
    assert!(err.contains("agents.defaults.maxConcurent: unknown key (did you mean \"maxConcurrent\"?)"), "{err}");
    assert!(!err.contains("cron"), "unsupported OpenClaw sections are warnings, not errors: {err}");
}

#[tokio::test]
async fn corrupt_database_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("pincer.db"), b"this is not a sqlite database, not at all, no....").unwrap();
    let out = cli(dir.path(), &["gateway", "run", "--port", "0"]).await;
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("pincer.db"), "names the file: {err}");
    assert!(!err.contains("panicked"), "{err}");
}

/// Malformed frames after the handshake get `INVALID_REQUEST` answers; the connection and the
/// daemon keep working. Deterministic pseudo-random garbage, no extra dependency.
#[tokio::test]
async fn malformed_frames_get_errors_not_crashes() {
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start_with(dir.path(), &["--log-format", "json"]).await;
    let mut ws = d.client().await;
    let fixed = [
        "",
        "not json",
        "[]",
        "null",
        "42",
        r#"{"type":"req"}"#,
        r#"{"type":"req","id":"","method":"health"}"#,
        r#"{"type":"req","id":7,"method":"health"}"#,
        r#"{"type":"res","id":"x","ok":true}"#,
        r#"{"type":"req","id":"x","method":"connect","params":{}}"#,
        r#"{"type":"req","id":"x","method":"chat.send","params":{"message":5}}"#,
        r#"{"type":"req","id":"x","method":"chat.send","params":"nope"}"#,
        r#"{"type":"req","id":"x","method":"send","params":{"to":"a","channel":"webhook","message":"m"}}"#,
        r#"{"type":"req","id":"x","method":"agent.wait","params":{"runId":"nope","timeoutMs":1}}"#,
        r#"{"type":"req","id":"x","method":"sessions.get","params":{"key":"agent:main:none"}}"#,
        r#"{"type":"req","id":"x","method":"deliveries.list","params":{"status":"bogus"}}"#,
    ];
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut rand = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let mut frames: Vec<String> = fixed.iter().map(|s| s.to_string()).collect();
    for _ in 0..200 {
        let base = fixed[(rand() % fixed.len() as u64) as usize].as_bytes().to_vec();
        let mut b = base.clone();
        for _ in 0..(rand() % 4 + 1) {
            if b.is_empty() {
                break;
            }
            let i = (rand() % b.len() as u64) as usize;
            b[i] = (rand() % 128) as u8;
        }
        frames.push(String::from_utf8_lossy(&b).into_owned());
    }
    for f in &frames {
        ws.send_text(f).await;
    }
    // Exactly one answer per frame (mostly errors), then the connection still serves requests.
    let mut answers = 0;
    while answers < frames.len() {
        let f = ws.recv().await.expect("connection stays open");
        if f["type"] == "res" {
            answers += 1;
            if f["ok"] == false {
                assert!(f["error"]["code"].is_string(), "{f}");
            }
        }
    }
    let res = ws.request("health", json!({})).await;
    assert_eq!(res["ok"], true, "{res}");
    let mut ws2 = d.client().await;
    assert_eq!(ws2.request("status", json!({})).await["ok"], true);
    let (code, stderr) = d.stop().await;
    assert_eq!(code, Some(0));
    assert!(!stderr.contains("panicked"), "{stderr}");
    let logs: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(!logs.is_empty());
    for l in logs {
        let v: Value =
            serde_json::from_str(l).unwrap_or_else(|e| panic!("--log-format json wrote a non-JSON line {l:?}: {e}"));
        assert!(v.get("level").is_some(), "{l}");
    }
}

/// A client that floods requests without reading gets every answer once it reads: the
/// per-connection in-flight bound applies backpressure instead of dropping or deadlocking.
#[tokio::test]
async fn a_request_flood_is_answered_in_full() {
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(dir.path()).await;
    let mut ws = d.client().await;
    let n = 500;
    for i in 0..n {
        ws.send_text(&json!({"type": "req", "id": format!("f{i}"), "method": "health", "params": {}}).to_string())
            .await;
    }
    let mut ids = std::collections::HashSet::new();
    while ids.len() < n {
        let f = ws.recv().await.expect("connection stays open");
        if f["type"] == "res" {
            assert_eq!(f["ok"], true, "{f}");
            assert!(ids.insert(f["id"].as_str().unwrap().to_string()), "answered twice: {f}");
        }
    }
    d.stop().await;
}

/// Five failed authentications from one address lock it out for the rest of the minute, even
/// with the right token; the HTTP API shares the count.
#[tokio::test]
async fn repeated_auth_failures_from_one_address_are_rate_limited() {
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(dir.path()).await;
    for i in 0..5 {
        let mut ws = Ws::connect_raw(&d.ws_url()).await;
        let r = ws.request("connect", connect_params("wrong-token", &["operator.read"])).await;
        assert_eq!(r["error"]["details"]["code"], "AUTH_TOKEN_MISMATCH", "attempt {i}: {r}");
        assert_eq!(ws.close_code().await, Some(1008));
    }
    let mut ws = Ws::connect_raw(&d.ws_url()).await;
    let r = ws.request("connect", connect_params(&d.token, &["operator.read"])).await;
    assert_eq!(r["error"]["details"]["code"], "AUTH_RATE_LIMITED", "locked out even with the right token: {r}");
    assert_eq!(r["error"]["retryable"], true);
    assert!(r["error"]["retryAfterMs"].as_u64().unwrap() > 0);
    assert_eq!(ws.close_code().await, Some(1008));
    let http =
        reqwest::Client::new().get(format!("{}/v1/models", d.http_url())).bearer_auth(&d.token).send().await.unwrap();
    assert_eq!(http.status(), 429, "the HTTP API shares the lockout");
    assert!(http.headers().get("retry-after").is_some());
    d.stop().await;
}
