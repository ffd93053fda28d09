//! The CLI's control-plane client: connects to the running gateway's WebSocket, performs the
//! `connect` handshake with the gateway token, and calls methods. `agent` falls back to an
//! in-process run when no gateway is running.

use crate::cli::AgentArgs;
use crate::{config_file, paths};
use anyhow::{anyhow, bail, Context, Result};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use std::path::PathBuf;
use std::time::Duration;
use tokio_tungstenite::tungstenite::Message;

/// Where and how to connect.
#[derive(Clone, Debug)]
pub struct ConnectOpts {
    /// Explicit URL.
    pub url: Option<String>,
    /// Explicit token.
    pub token: Option<String>,
    /// State dir.
    pub state: PathBuf,
    /// Config path.
    pub config_path: PathBuf,
}

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A connected, authenticated client.
pub struct Client {
    ws: Ws,
    next: u64,
}

/// Why connecting failed.
#[derive(Debug)]
pub enum ConnectError {
    /// Nothing listens: the gateway is not running.
    NotRunning(String),
    /// Anything else.
    Other(anyhow::Error),
}

impl std::fmt::Display for ConnectError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConnectError::NotRunning(url) => {
                write!(f, "no gateway is running at {url} (start one with `pincer gateway run`)")
            }
            ConnectError::Other(e) => write!(f, "{e:#}"),
        }
    }
}

impl std::error::Error for ConnectError {}

fn resolve_url(opts: &ConnectOpts) -> String {
    if let Some(u) = &opts.url {
        return u.clone();
    }
    if let Ok(addr) = std::fs::read_to_string(paths::address_file(&opts.state)) {
        let addr = addr.trim();
        if !addr.is_empty() {
            return format!("ws://{addr}/");
        }
    }
    let port = config_file::load(&opts.config_path)
        .map(|l| l.config.gateway.port)
        .unwrap_or(pincer_core::config::DEFAULT_PORT);
    format!("ws://127.0.0.1:{port}/")
}

fn resolve_token(opts: &ConnectOpts) -> Option<String> {
    opts.token.clone().or_else(|| {
        let config = config_file::load(&opts.config_path).ok().map(|l| l.config);
        paths::stored_token(config.as_ref(), &opts.state)
    })
}

impl Client {
    /// Connect and authenticate. Errors name the URL and the cause.
    pub async fn connect(opts: &ConnectOpts) -> Result<Client> {
        Self::try_connect(opts).await.map_err(|e| anyhow!("{e}"))
    }

    /// Like [`Client::connect`], telling "not running" apart.
    pub async fn try_connect(opts: &ConnectOpts) -> Result<Client, ConnectError> {
        let url = resolve_url(opts);
        let token = resolve_token(opts);
        let (ws, _) = match tokio::time::timeout(Duration::from_secs(10), tokio_tungstenite::connect_async(&url)).await
        {
            Err(_) => return Err(ConnectError::Other(anyhow!("timed out connecting to {url}"))),
            Ok(Err(tokio_tungstenite::tungstenite::Error::Io(e)))
                if e.kind() == std::io::ErrorKind::ConnectionRefused =>
            {
                return Err(ConnectError::NotRunning(url))
            }
            Ok(Err(e)) => return Err(ConnectError::Other(anyhow!("cannot connect to {url}: {e}"))),
            Ok(Ok(x)) => x,
        };
        let mut c = Client { ws, next: 1 };
        let params = json!({
            "minProtocol": 4, "maxProtocol": 4,
            "client": {"id": "pincer-cli", "version": env!("CARGO_PKG_VERSION"), "platform": std::env::consts::OS, "mode": "cli"},
            "role": "operator", "scopes": ["operator.read", "operator.write", "operator.admin"],
            "auth": {"token": token},
        });
        match c.call("connect", params).await.map_err(ConnectError::Other)? {
            Ok(_) => Ok(c),
            Err(e) => Err(ConnectError::Other(anyhow!(
                "gateway refused the connection: {} ({})",
                e["message"].as_str().unwrap_or("?"),
                e["code"].as_str().unwrap_or("?")
            ))),
        }
    }

    async fn send_req(&mut self, method: &str, params: Value) -> Result<String> {
        let id = format!("cli-{}", self.next);
        self.next += 1;
        let frame = json!({"type": "req", "id": id, "method": method, "params": params});
        self.ws.send(Message::Text(frame.to_string().into())).await.context("send failed")?;
        Ok(id)
    }

    async fn next_res(&mut self, id: &str) -> Result<Result<Value, Value>> {
        loop {
            let msg = self.ws.next().await.ok_or_else(|| anyhow!("gateway closed the connection"))??;
            let text = match msg {
                Message::Text(t) => t,
                Message::Close(f) => {
                    bail!("gateway closed the connection: {}", f.map(|f| f.reason.to_string()).unwrap_or_default())
                }
                _ => continue,
            };
            let v: Value = serde_json::from_str(&text).context("gateway sent invalid JSON")?;
            if v["type"] == "res" && v["id"] == id {
                return Ok(if v["ok"] == true { Ok(v["payload"].clone()) } else { Err(v["error"].clone()) });
            }
        }
    }

    /// Call a method: `Ok(Ok(payload))`, `Ok(Err(error object))`, or a transport error.
    pub async fn call(&mut self, method: &str, params: Value) -> Result<Result<Value, Value>> {
        let id = self.send_req(method, params).await?;
        self.next_res(&id).await
    }

    /// Call `agent` and wait for its second (final) response.
    pub async fn agent(&mut self, params: Value) -> Result<Result<Value, Value>> {
        let id = self.send_req("agent", params).await?;
        match self.next_res(&id).await? {
            Ok(ack) if ack["status"] == "accepted" => self.next_res(&id).await,
            other => Ok(other),
        }
    }
}

/// `pincer agent`.
pub async fn agent(conn: &ConnectOpts, args: AgentArgs) -> Result<u8> {
    let key = crate::cli::new_idempotency_key();
    match Client::try_connect(conn).await {
        Ok(mut c) => {
            let params = json!({"message": args.message, "sessionKey": args.session, "agentId": args.agent,
                                "idempotencyKey": key, "timeout": args.timeout});
            let res = c.agent(params).await?;
            Ok(print_agent_result(res, args.json))
        }
        Err(ConnectError::NotRunning(_)) => in_process_agent(conn, args, key).await,
        Err(e) => Err(anyhow!("{e}")),
    }
}

fn print_agent_result(res: Result<Value, Value>, json: bool) -> u8 {
    match res {
        Ok(v) => {
            if json {
                println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
            } else if let Some(t) = v["result"]["text"].as_str() {
                println!("{t}");
            } else if v["result"]["status"] == "silent" {
                eprintln!("(the agent chose not to reply: NO_REPLY)");
            } else if let Some(e) = v["result"]["error"].as_str() {
                eprintln!("error: {e}");
            }
            if v["status"] == "ok" {
                0
            } else {
                1
            }
        }
        Err(e) => {
            eprintln!(
                "error: {} ({})",
                e["message"].as_str().unwrap_or("request failed"),
                e["code"].as_str().unwrap_or("?")
            );
            1
        }
    }
}

/// Run one turn without a gateway: lock the state dir, open the store, start a runtime
/// without the delivery worker, run, print, stop.
async fn in_process_agent(conn: &ConnectOpts, args: AgentArgs, key: String) -> Result<u8> {
    paths::ensure_state_dir(&conn.state)?;
    let _lock = pincer_store::StateLock::acquire(&conn.state).map_err(|e| anyhow!("{e}"))?;
    let loaded = match config_file::load(&conn.config_path) {
        Ok(l) => l,
        Err(e) => {
            eprint!("{e}");
            return Ok(crate::cli::EXIT_CONFIG);
        }
    };
    let store = std::sync::Arc::new(pincer_store::Store::open(&conn.state).map_err(|e| anyhow!("{e}"))?);
    let gw = pincer_runtime::Gateway::start(pincer_runtime::GatewayOptions {
        state_dir: conn.state.clone(),
        config_path: loaded.path.clone(),
        config: loaded.config,
        config_hash: loaded.hash,
        warnings: loaded.warnings,
        store,
        version: env!("CARGO_PKG_VERSION").to_string(),
        deliver: false,
        channels: None,
    })
    .await?;
    let h = gw.handle();
    let submitted = h
        .submit(pincer_runtime::SubmitTurn {
            session_key: args.session,
            agent_id: args.agent,
            message: args.message,
            idempotency_key: Some(key),
            deliver: None,
            queue_mode: None,
            ingress: "cli".into(),
        })
        .await;
    let code = match submitted {
        Ok(s) => {
            let info = h.wait_run(&s.run_id, Duration::from_secs(args.timeout)).await;
            let status = info.as_ref().map_or("error", |i| i.status.wire_status());
            print_agent_result(
                Ok(json!({"runId": s.run_id, "status": status, "result": info, "inProcess": true})),
                args.json,
            )
        }
        Err(e) => {
            eprintln!("error: {e}");
            1
        }
    };
    gw.shutdown(Duration::from_secs(5)).await;
    Ok(code)
}

/// Human output of `status`.
pub fn print_status(v: &Value) {
    println!(
        "pincer {} (pid {}), up {} s",
        v["runtimeVersion"].as_str().unwrap_or("?"),
        v["pid"],
        v["uptimeMs"].as_u64().unwrap_or(0) / 1000
    );
    println!("  state dir:  {}", v["stateDir"].as_str().unwrap_or("?"));
    println!(
        "  config:     {} (generation {})",
        v["configPath"].as_str().unwrap_or("embedded defaults"),
        v["config"]["generation"]
    );
    for w in v["config"]["warnings"].as_array().into_iter().flatten() {
        println!("    warning: {}", w.as_str().unwrap_or(""));
    }
    println!("  agent:      {}", v["agent"]["summary"].as_str().unwrap_or("?"));
    println!(
        "  runs:       {} active, {} ok, {} silent, {} failed",
        v["runs"]["active"], v["runs"]["ok"], v["runs"]["silent"], v["runs"]["failed"]
    );
    println!(
        "  inbound:    {} accepted, {} dropped, {} duplicates",
        v["inbound"]["accepted"], v["inbound"]["dropped"], v["inbound"]["duplicates"]
    );
    if let Some(e) = v["config"]["lastReloadError"]["message"].as_str() {
        println!("    last reload refused: {e}");
    }
    for r in v["channels"].as_array().into_iter().flatten() {
        println!("  channel:    {}", channel_line(r));
    }
    for p in v["plugins"]["plugins"].as_array().into_iter().flatten() {
        let mut line = format!("{} {}", p["pluginId"].as_str().unwrap_or("?"), p["status"].as_str().unwrap_or("?"));
        if let Some(n) = p["methods"].as_array().map(Vec::len) {
            line.push_str(&format!(", {n} method(s)"));
        }
        if let Some(e) = p["lastError"].as_str().or(p["reason"].as_str()) {
            line.push_str(&format!(": {e}"));
        }
        println!("  plugin:     {line}");
    }
    println!("  outbox:     {}", v["outbox"]);
    for f in v["failedDeliveries"].as_array().into_iter().flatten() {
        println!(
            "    delivery {} {} to {} {}: {}",
            f["id"],
            f["status"].as_str().unwrap_or(""),
            f["channel"].as_str().unwrap_or(""),
            f["to"].as_str().unwrap_or(""),
            f["error"].as_str().unwrap_or("")
        );
    }
}

/// Human output of `plugins.list`: one line per plugin, its methods, and for a plugin that
/// failed its error and stderr tail.
pub fn print_plugins(v: &Value) {
    let diags = v["diagnostics"].as_array().cloned().unwrap_or_default();
    let plugins = v["plugins"].as_array().cloned().unwrap_or_default();
    if plugins.is_empty() && diags.is_empty() {
        println!("no plugins found");
        return;
    }
    for p in &plugins {
        let id = p["id"].as_str().unwrap_or("?");
        let Some(d) = diags.iter().find(|d| d["pluginId"] == id && d["retiring"] != true) else { continue };
        let status = d["status"].as_str().unwrap_or("?");
        let mut line = format!("{id:<24} {status:<14}");
        if let Some(v) = p["version"].as_str() {
            line.push_str(&format!(" v{v}"));
        }
        if let Some(g) = d["generation"].as_u64() {
            line.push_str(&format!(" gen {g}"));
        }
        if let Some(pid) = d["pid"].as_u64() {
            line.push_str(&format!(" pid {pid}"));
        }
        if let Some(r) = d["reason"].as_str() {
            line.push_str(&format!(" ({r})"));
        }
        println!("{line}");
        let methods: Vec<String> = d["methods"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|m| format!("{} [{}]", m["name"].as_str().unwrap_or("?"), m["scope"].as_str().unwrap_or("?")))
            .collect();
        if !methods.is_empty() {
            println!("    methods: {}", methods.join(", "));
        }
        if let Some(next) = d.get("pending").filter(|n| n.is_object()) {
            println!("    next generation {}: {}", next["generation"], next["status"].as_str().unwrap_or("?"));
        }
        if matches!(status, "failed" | "gave-up" | "backoff") {
            if let Some(e) = d["lastError"].as_str() {
                println!("    error: {e}");
            }
            for l in d["stderrTail"].as_array().into_iter().flatten().filter_map(Value::as_str) {
                println!("    stderr | {l}");
            }
        }
    }
    for d in diags.iter().filter(|d| d["status"] == "invalid") {
        println!("invalid plugin at {}: {}", d["dir"].as_str().unwrap_or("?"), d["message"].as_str().unwrap_or("?"));
    }
}

/// Human output of `sessions.list`.
pub fn print_sessions(v: &Value) {
    let rows = v["sessions"].as_array().cloned().unwrap_or_default();
    if rows.is_empty() {
        println!("no sessions");
    }
    for s in rows {
        println!(
            "{}  agent={}  messages={}  updated={}",
            s["key"].as_str().unwrap_or("?"),
            s["agentId"].as_str().unwrap_or("?"),
            s["messageCount"],
            s["updatedAt"]
        );
    }
}

/// Human output of `sessions.get`.
pub fn print_session(v: &Value) {
    println!("{}", serde_json::to_string_pretty(&v["session"]).unwrap_or_default());
    for e in v["transcript"].as_array().into_iter().flatten() {
        println!("[{}] {}: {}", e["seq"], e["role"].as_str().unwrap_or("?"), e["text"].as_str().unwrap_or(""));
    }
}

/// Human output of `deliveries.list`.
pub fn print_deliveries(v: &Value) {
    let rows = v["deliveries"].as_array().cloned().unwrap_or_default();
    if rows.is_empty() {
        println!("no deliveries");
    }
    for r in rows {
        println!(
            "{:>6}  {:<8} {}/{} -> {}  attempts={}  {}",
            r["id"],
            r["status"].as_str().unwrap_or("?"),
            r["channel"].as_str().unwrap_or("?"),
            r["accountId"].as_str().unwrap_or("?"),
            r["to"].as_str().unwrap_or("?"),
            r["attempts"],
            r["lastError"].as_str().unwrap_or("")
        );
    }
}

/// One account of `channels.status` as a line: `discord/a: running, connected`.
fn channel_line(r: &Value) -> String {
    let mut line = format!(
        "{}/{}: {}{}",
        r["channel"].as_str().unwrap_or("?"),
        r["accountId"].as_str().unwrap_or("?"),
        r["state"].as_str().unwrap_or("?"),
        if r["connected"] == true { ", connected" } else { ", not connected" },
    );
    if let Some(n) = r["reconnectAttempts"].as_u64().filter(|n| *n > 0) {
        line.push_str(&format!(", attempt {n}"));
    }
    if let Some(e) = r["gaveUpReason"].as_str().or(r["lastError"].as_str()) {
        line.push_str(&format!(" ({e})"));
    }
    line
}

/// Print `channels.status`: one line per account.
pub fn print_channels(v: &Value) {
    let rows: Vec<&Value> = v["channelAccounts"]
        .as_object()
        .into_iter()
        .flat_map(|m| m.values())
        .flat_map(|rows| rows.as_array().into_iter().flatten())
        .collect();
    if rows.is_empty() {
        println!("no channel accounts configured");
    }
    for r in rows {
        println!("{}", channel_line(r));
    }
}

/// One JSON log line as `time LEVEL message key=value ...`; other lines as they are.
fn log_line_human(line: &str) -> String {
    let Ok(Value::Object(mut v)) = serde_json::from_str::<Value>(line) else {
        return line.to_string();
    };
    let take = |v: &mut serde_json::Map<String, Value>, k: &str| match v.remove(k) {
        Some(Value::String(s)) => s,
        Some(other) => other.to_string(),
        None => String::new(),
    };
    let (ts, level, msg) = (take(&mut v, "timestamp"), take(&mut v, "level"), take(&mut v, "message"));
    v.remove("target");
    let mut out = format!("{ts} {level:>5} {msg}");
    for (k, val) in v {
        out.push_str(&format!(" {k}={}", val.as_str().map(str::to_string).unwrap_or_else(|| val.to_string())));
    }
    out
}

/// `pincer logs`: print the last `limit` lines of the gateway's file log, then (with
/// `follow`) poll `logs.tail` once a second for new lines until interrupted.
pub async fn logs(conn: &ConnectOpts, follow: bool, limit: u32, json: bool) -> Result<u8> {
    let mut c = Client::connect(conn).await?;
    let mut params = json!({"limit": limit});
    loop {
        let page = match c.call("logs.tail", params.clone()).await? {
            Ok(p) => p,
            Err(e) => {
                eprintln!("error: {} ({})", e["message"].as_str().unwrap_or("logs.tail failed"), e["code"]);
                return Ok(1);
            }
        };
        for line in page["lines"].as_array().into_iter().flatten().filter_map(Value::as_str) {
            println!("{}", if json { line.to_string() } else { log_line_human(line) });
        }
        if !follow {
            return Ok(0);
        }
        params = json!({"cursor": page["cursor"], "limit": 5000});
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    }
}

/// Print `pairing.list`.
pub fn print_pairing(v: &Value) {
    let pending = v["pending"].as_array().cloned().unwrap_or_default();
    let paired = v["paired"].as_array().cloned().unwrap_or_default();
    if pending.is_empty() {
        println!("no pending pairing requests");
    }
    for p in &pending {
        println!(
            "pending  {}  {}/{}  {} ({})",
            p["code"].as_str().unwrap_or("?"),
            p["channel"].as_str().unwrap_or("?"),
            p["accountId"].as_str().unwrap_or("?"),
            p["senderId"].as_str().unwrap_or("?"),
            p["senderName"].as_str().unwrap_or("-"),
        );
    }
    for p in &paired {
        println!(
            "paired   {}/{}  {} ({})",
            p["channel"].as_str().unwrap_or("?"),
            p["accountId"].as_str().unwrap_or("?"),
            p["senderId"].as_str().unwrap_or("?"),
            p["senderName"].as_str().unwrap_or("-"),
        );
    }
}
