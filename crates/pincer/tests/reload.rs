//! Reload and restart: SIGHUP applies a valid config and keeps the old one on an invalid
//! file; SIGUSR1/SIGUSR2 rebuild the runtime in-process and every advertised method stays
//! callable; `config set` validates before it writes; SIGTERM exits 0.

mod common;
use common::*;
use serde_json::{json, Value};

async fn generation(ws: &mut Ws) -> u64 {
    let st = ws.request("status", json!({})).await;
    st["payload"]["config"]["generation"].as_u64().unwrap()
}

/// Poll `status` until the config generation reaches `n` (bounded by `WAIT`).
async fn wait_generation(ws: &mut Ws, n: u64) {
    tokio::time::timeout(WAIT, async {
        while generation(ws).await < n {
            tokio::task::yield_now().await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("config generation {n} not reached"));
}

#[tokio::test]
async fn sighup_reloads_and_invalid_files_are_skipped() {
    let dir = tempfile::tempdir().unwrap();
    write_config(dir.path(), &json!({"gateway": {"reload": {"mode": "off"}}, "messages": {"responsePrefix": "[a]"}}));
    let d = Daemon::start(dir.path()).await;
    let mut ws = d.client().await;
    assert_eq!(generation(&mut ws).await, 1);

    write_config(dir.path(), &json!({"gateway": {"reload": {"mode": "off"}}, "messages": {"responsePrefix": "[b]"}}));
    d.signal("HUP");
    wait_generation(&mut ws, 2).await;
    let r = ws.request("agent", json!({"message": "x", "idempotencyKey": "r1"})).await;
    let fin = ws.response(r["id"].as_str().unwrap()).await;
    assert_eq!(fin["payload"]["result"]["text"], "[b] echo: x", "the new snapshot is used: {fin}");

    // An invalid file is skipped; the running config stays.
    std::fs::write(dir.path().join("pincer.json"), "{ gateway: { port: \"nope\" } }").unwrap();
    d.signal("HUP");
    let err = tokio::time::timeout(WAIT, async {
        loop {
            let st = ws.request("status", json!({})).await;
            if let Some(m) = st["payload"]["config"]["lastReloadError"]["message"].as_str() {
                break m.to_string();
            }
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("the refused reload shows in status");
    assert!(err.contains("gateway.port"), "status names the problem: {err}");
    assert_eq!(generation(&mut ws).await, 2, "the running config stays");
    write_config(dir.path(), &json!({"gateway": {"reload": {"mode": "off"}}, "messages": {"responsePrefix": "[c]"}}));
    d.signal("HUP");
    wait_generation(&mut ws, 3).await;
    let (code, stderr) = d.stop().await;
    assert_eq!(code, Some(0));
    assert!(stderr.contains("config reload skipped"), "{stderr}");
    assert!(stderr.contains("gateway.port"), "the skipped reload names the problem: {stderr}");
}

#[tokio::test]
async fn file_watcher_reloads_in_hybrid_mode() {
    let dir = tempfile::tempdir().unwrap();
    write_config(dir.path(), &json!({"messages": {"responsePrefix": "[a]"}}));
    let d = Daemon::start(dir.path()).await;
    let mut ws = d.client().await;
    write_config(dir.path(), &json!({"messages": {"responsePrefix": "[watched]"}}));
    wait_generation(&mut ws, 2).await;
    d.stop().await;
}

#[tokio::test]
async fn in_process_restart_keeps_every_method_callable() {
    for sig in ["USR1", "USR2"] {
        let dir = tempfile::tempdir().unwrap();
        let d = Daemon::start(dir.path()).await;
        let mut ws = d.client().await;
        let before: Vec<Value> = ws.hello()["features"]["methods"].as_array().unwrap().clone();
        d.signal(sig);
        let shutdown = ws.event(|e| e["event"] == "shutdown").await;
        assert_eq!(shutdown["payload"]["reason"], "gateway restarting");
        assert_eq!(ws.close_code().await, Some(1012), "clients are told to reconnect");

        // Reconnect (the new runtime may still be starting: retry the handshake).
        let mut ws = d.client().await;
        let after: Vec<Value> = ws.hello()["features"]["methods"].as_array().unwrap().clone();
        assert_eq!(before, after, "same advertised methods after {sig}");
        // `gateway.restart` would restart again under the test; it is exercised on its own.
        for m in after.iter().filter_map(Value::as_str).filter(|m| *m != "gateway.restart") {
            let r = ws.request(m, json!({})).await;
            let msg = r["error"]["message"].as_str().unwrap_or("");
            assert!(!msg.starts_with("unknown method"), "{m} advertised but unknown after {sig}: {r}");
        }
        let r = ws
            .request(
                "chat.send",
                json!({"sessionKey": "s", "message": "after restart", "idempotencyKey": format!("k-{sig}")}),
            )
            .await;
        assert_eq!(r["ok"], true);
        let fin = ws.event(|e| e["event"] == "chat" && e["payload"]["state"] == "final").await;
        assert_eq!(fin["payload"]["message"]["content"][0]["text"], "echo: after restart");
        let (code, _) = d.stop().await;
        assert_eq!(code, Some(0));
    }
}

#[tokio::test]
async fn config_set_validates_before_writing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pincer.json");
    std::fs::write(&path, "// mine\n{ gateway: { port: 18790 } }\n").unwrap();
    let before = std::fs::read_to_string(&path).unwrap();
    let out = cli(dir.path(), &["config", "set", "gateway.reload.mode", "fast"]).await;
    assert_eq!(out.status.code(), Some(78));
    assert!(String::from_utf8_lossy(&out.stderr).contains("expected one of hybrid|off"));
    assert_eq!(std::fs::read_to_string(&path).unwrap(), before, "file untouched");

    let out = cli(dir.path(), &["config", "set", "gateway.port", "19999"]).await;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = cli(dir.path(), &["config", "get", "gateway.port"]).await;
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "19999");
    let out = cli(dir.path(), &["config", "validate"]).await;
    assert!(out.status.success());
    let out = cli(dir.path(), &["config", "schema"]).await;
    let schema: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(schema["properties"]["gateway"].is_object(), "{schema}");
    let out = cli(dir.path(), &["config", "file"]).await;
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), path.display().to_string());
}

#[tokio::test]
async fn cli_agent_runs_in_process_without_a_gateway_and_through_one_with() {
    let dir = tempfile::tempdir().unwrap();
    let out = cli(dir.path(), &["agent", "-m", "offline"]).await;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "echo: offline");

    let d = Daemon::start(dir.path()).await;
    let out = cli(dir.path(), &["agent", "-m", "online", "--session", "cli-s", "--json"]).await;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["result"]["text"], "echo: online");
    let out = cli(dir.path(), &["sessions", "list", "--json"]).await;
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let keys: Vec<&str> = v["sessions"].as_array().unwrap().iter().filter_map(|s| s["key"].as_str()).collect();
    assert!(keys.contains(&"agent:main:cli-s") && keys.contains(&"agent:main:main"), "{keys:?}");
    let out = cli(dir.path(), &["sessions", "show", "agent:main:cli-s"]).await;
    assert!(String::from_utf8_lossy(&out.stdout).contains("echo: online"));
    let out = cli(dir.path(), &["gateway", "status"]).await;
    assert!(out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("no model configured"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let out = cli(dir.path(), &["doctor"]).await;
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("held by a running gateway"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    d.stop().await;
}

#[tokio::test]
async fn config_patch_and_gateway_reload_methods() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pincer.json");
    write_config(dir.path(), &json!({"gateway": {"reload": {"mode": "off"}}, "messages": {"responsePrefix": "[a]"}}));
    let d = Daemon::start(dir.path()).await;
    let mut ws = d.client().await;
    let got = ws.request("config.get", json!({})).await;
    let hash = got["payload"]["hash"].as_str().unwrap().to_string();

    // A stale baseHash is refused and nothing is written.
    let before = std::fs::read_to_string(&path).unwrap();
    let r = ws
        .request("config.patch", json!({"baseHash": "stale", "patch": {"messages": {"responsePrefix": "[x]"}}}))
        .await;
    assert_eq!(r["error"]["code"], "INVALID_REQUEST", "{r}");
    // An invalid result is refused with every problem listed, and nothing is written.
    let r = ws.request("config.patch", json!({"patch": {"gateway": {"reload": {"mode": "fast"}}}})).await;
    assert_eq!(r["error"]["code"], "INVALID_REQUEST", "{r}");
    assert!(r["error"]["details"]["errors"][0].as_str().unwrap().contains("gateway.reload.mode"), "{r}");
    assert_eq!(std::fs::read_to_string(&path).unwrap(), before, "file untouched");

    // A valid patch is written, applied, and used by the next run.
    let r =
        ws.request("config.patch", json!({"baseHash": hash, "patch": {"messages": {"responsePrefix": "[p]"}}})).await;
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(generation(&mut ws).await, 2);
    let a = ws.request("agent", json!({"message": "x", "idempotencyKey": "p1"})).await;
    let fin = ws.response(a["id"].as_str().unwrap()).await;
    assert_eq!(fin["payload"]["result"]["text"], "[p] echo: x");
    assert!(std::fs::read_to_string(&path).unwrap().contains("[p]"));
    // null deletes a key (RFC 7396).
    let r = ws.request("config.patch", json!({"patch": {"messages": {"responsePrefix": null}}})).await;
    assert_eq!(r["ok"], true, "{r}");
    let a = ws.request("agent", json!({"message": "y", "idempotencyKey": "p2"})).await;
    let fin = ws.response(a["id"].as_str().unwrap()).await;
    assert_eq!(fin["payload"]["result"]["text"], "echo: y");

    // gateway.reload: re-reads the file (reload mode off, so nothing else does).
    write_config(dir.path(), &json!({"gateway": {"reload": {"mode": "off"}}, "messages": {"responsePrefix": "[r]"}}));
    let r = ws.request("gateway.reload", json!({})).await;
    assert_eq!(r["payload"]["reloaded"], true, "{r}");
    let r = ws.request("gateway.reload", json!({})).await;
    assert_eq!(r["payload"]["reloaded"], false, "unchanged file: {r}");
    std::fs::write(&path, "{ nope").unwrap();
    let r = ws.request("gateway.reload", json!({})).await;
    assert_eq!(r["error"]["code"], "INVALID_REQUEST", "an invalid file is reported: {r}");
    d.stop().await;
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

#[tokio::test]
async fn a_new_port_is_reported_on_reload_and_applied_by_gateway_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (p1, p2) = (free_port(), free_port());
    let cfg = |port: u16| json!({"gateway": {"port": port, "reload": {"mode": "off"}}});
    write_config(dir.path(), &cfg(p1));
    let d = Daemon::spawn(dir.path(), &[]).await;
    assert_eq!(d.addr, format!("127.0.0.1:{p1}"));
    let mut ws = d.client().await;

    write_config(dir.path(), &cfg(p2));
    let r = ws.request("gateway.reload", json!({})).await;
    assert_eq!(r["payload"]["report"]["restartRequired"], json!(["gateway.port"]), "{r}");
    assert_eq!(ws.request("status", json!({})).await["ok"], true, "still served on the old port until a restart");

    let r = ws.request("gateway.restart", json!({})).await;
    assert_eq!(r["payload"]["restarting"], true, "{r}");
    let new_addr = format!("127.0.0.1:{p2}");
    // The address file names the new listener once it is bound.
    let addr_file = dir.path().join("gateway.addr");
    tokio::time::timeout(WAIT, async {
        while std::fs::read_to_string(&addr_file).map(|s| s.trim().to_string()).ok().as_deref()
            != Some(new_addr.as_str())
        {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("the gateway moved to the new port");
    let mut ws2 = Ws::connect_auth(&format!("ws://{new_addr}/ws"), &d.token, &["operator.read"]).await;
    assert_eq!(ws2.request("health", json!({})).await["ok"], true);
    assert!(tokio::net::TcpStream::connect(format!("127.0.0.1:{p1}")).await.is_err(), "the old listener is closed");
    let (code, _) = d.stop().await;
    assert_eq!(code, Some(0));
}

#[tokio::test]
async fn logs_tail_reads_the_file_log_with_a_cursor() {
    let dir = tempfile::tempdir().unwrap();
    write_config(dir.path(), &json!({"gateway": {"reload": {"mode": "off"}}}));
    let d = Daemon::start(dir.path()).await;
    let mut ws = d.client().await;
    write_config(dir.path(), &json!({"gateway": {"reload": {"mode": "off"}}, "messages": {"responsePrefix": "[x]"}}));
    let r = ws.request("gateway.reload", json!({})).await;
    assert_eq!(
        r["payload"]["report"]["restartRequired"],
        json!([]),
        "--port on the command line is not a config change: {r}"
    );
    let page = ws.request("logs.tail", json!({"limit": 50})).await;
    let p = &page["payload"];
    let file = p["file"].as_str().unwrap();
    assert!(file.ends_with("logs/pincer.log"), "{p}");
    let lines: Vec<Value> =
        p["lines"].as_array().unwrap().iter().map(|l| serde_json::from_str(l.as_str().unwrap()).unwrap()).collect();
    assert!(lines.iter().any(|l| l["message"] == "config applied"), "the reload is in the file log: {lines:?}");
    // Nothing new after the cursor, until something is logged.
    let next = ws.request("logs.tail", json!({"cursor": p["cursor"]})).await;
    assert_eq!(next["payload"]["lines"], json!([]), "{next}");
    let out = cli(dir.path(), &["logs", "--limit", "50"]).await;
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("config applied"));
    d.stop().await;
}
