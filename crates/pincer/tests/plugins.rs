//! Out-of-process plugins end to end through the real binary (DESIGN.md bug 4): the example
//! plugin's methods are callable over WebSocket; after SIGUSR1, SIGHUP, a plugin config
//! change, a `plugins.deny` change and back, and `kill -9` of the plugin, its methods are
//! advertised in `hello-ok` if and only if they are callable; 200 calls across 20 SIGUSR1
//! restarts never get `unknown method`; a plugin that hangs or fails at `initialize` blocks
//! nothing; a plugin's bad output, floods, slow calls and too many calls are contained; and
//! every retired plugin process is reaped (no zombie children of the daemon in `/proc`).
//!
//! Test plugins are small Python programs (standard library only), like the example.

mod common;
use common::*;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio_tungstenite::tungstenite::Message;

const PING: &str = "echo-methods.ping";
const REVERSE: &str = "echo-methods.reverse";

fn example_dir() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/plugins/echo-methods"))
}

/// Copy the example plugin into `<state>/plugins/echo-methods`.
fn install_example(state: &Path) {
    let to = state.join("plugins/echo-methods");
    std::fs::create_dir_all(&to).unwrap();
    for f in ["pincer.plugin.json", "plugin.py"] {
        std::fs::copy(example_dir().join(f), to.join(f)).unwrap();
    }
}

/// A configurable test plugin. Its config picks its behaviour: `initialize` (`ok`, `hang`,
/// `exit`, `error`), `methods` (suffixes, or full names when they contain a dot), `garbage`
/// (malformed lines before answering `initialize`), `flood` (that many stderr lines and
/// `gateway.log` notifications), `tag` (echoed by `ping`).
const TEST_PLUGIN: &str = r#"
import json, os, sys, threading, time
PID = os.environ["PINCER_PLUGIN_ID"]
lock = threading.Lock()
waiting = {}
state = {"cfg": {}, "gen": 0, "next": 1000}

def send(o):
    with lock:
        sys.stdout.write(json.dumps(o) + "\n")
        sys.stdout.flush()

def gateway(method, params):
    with lock:
        state["next"] += 1
        rid = state["next"]
    ev = threading.Event()
    waiting[rid] = [ev, None]
    send({"jsonrpc": "2.0", "id": rid, "method": method, "params": params})
    ev.wait(20)
    return waiting.pop(rid)[1]

def invoke(rid, p):
    name = p["method"].split(".", 1)[1]
    params = p.get("params") or {}
    if name == "ping":
        r = {"pid": os.getpid(), "generation": state["gen"], "tag": state["cfg"].get("tag")}
    elif name == "slow":
        time.sleep(params.get("ms", 1000) / 1000.0)
        r = {"pid": os.getpid(), "generation": state["gen"]}
    elif name == "send":
        r = gateway("gateway.send", params)
    else:
        send({"jsonrpc": "2.0", "id": rid, "error": {"code": -32602, "message": "no such method " + name}})
        return
    send({"jsonrpc": "2.0", "id": rid, "result": r})

def main():
    for line in sys.stdin:
        msg = json.loads(line)
        m = msg.get("method")
        if m is None:
            w = waiting.get(msg.get("id"))
            if w:
                w[1] = msg
                w[0].set()
            continue
        if m == "initialize":
            cfg = msg["params"]["config"]
            state["cfg"], state["gen"] = cfg, msg["params"]["generation"]
            mode = cfg.get("initialize", "ok")
            print(PID + ": initialize mode " + mode, file=sys.stderr, flush=True)
            if mode == "hang":
                continue
            if mode == "exit":
                print("boom: cannot start", file=sys.stderr, flush=True)
                sys.exit(3)
            if mode == "error":
                send({"jsonrpc": "2.0", "id": msg["id"], "error": {"code": -32000, "message": "refusing to start"}})
                continue
            if cfg.get("garbage"):
                for g in ["not json", "[1, 2]", "{\"no\": \"jsonrpc\"}", "{\"jsonrpc\": \"2.0\", \"id\": 999, \"result\": 1}",
                          "{\"jsonrpc\": \"2.0\", \"method\": \"gateway.nope\"}",
                          "{\"jsonrpc\": \"2.0\", \"method\": \"gateway.emit\", \"params\": {\"event\": \"chat\", \"payload\": {}}}",
                          "{\"jsonrpc\": \"2.0\", \"id\": \"q\", \"method\": \"gateway.nope\"}", "\xff\xfe", ""]:
                    with lock:
                        sys.stdout.write(g + "\n")
                        sys.stdout.flush()
            for i in range(cfg.get("flood", 0)):
                print("stderr flood line %d" % i, file=sys.stderr)
                send({"jsonrpc": "2.0", "method": "gateway.log", "params": {"level": "info", "message": "log flood %d" % i}})
            names = [n if "." in n else PID + "." + n for n in cfg.get("methods", ["ping", "slow", "send"])]
            send({"jsonrpc": "2.0", "id": msg["id"], "result": {"methods": [{"name": n} for n in names]}})
        elif m == "invoke":
            threading.Thread(target=invoke, args=(msg["id"], msg["params"]), daemon=True).start()
        elif m == "shutdown":
            send({"jsonrpc": "2.0", "id": msg["id"], "result": None})
            sys.exit(0)

main()
"#;

/// Install the test plugin with `id` into `<state>/plugins/<id>`.
fn install_test_plugin(state: &Path, id: &str) {
    let dir = state.join("plugins").join(id);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("plugin.py"), TEST_PLUGIN).unwrap();
    std::fs::write(
        dir.join("pincer.plugin.json"),
        json!({"id": id, "name": format!("test {id}"), "version": "1.0.0", "command": ["python3", "-u", "plugin.py"],
               "configSchema": {"type": "object"}})
        .to_string(),
    )
    .unwrap();
}

/// Poll interval of bounded polling (not a synchronisation sleep: every wait is on a
/// condition observed through the API, bounded by `WAIT`).
async fn tick() {
    let mut i = tokio::time::interval(Duration::from_millis(20));
    i.tick().await;
    i.tick().await;
}

/// The `plugins.list` diagnostics row of `id`'s published instance.
async fn plugin_row(ws: &mut Ws, id: &str) -> Option<Value> {
    let res = ws.request("plugins.list", json!({})).await;
    assert_eq!(res["ok"], true, "{res}");
    res["payload"]["diagnostics"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["pluginId"] == id && d["retiring"] != true)
        .cloned()
}

/// Poll `plugins.list` until `id`'s row satisfies `pred` (bounded by `WAIT`).
async fn wait_plugin(ws: &mut Ws, id: &str, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    let mut last = None;
    let found = tokio::time::timeout(WAIT, async {
        loop {
            let row = plugin_row(ws, id).await;
            if let Some(r) = row.as_ref().filter(|r| pred(r)) {
                return r.clone();
            }
            last = row;
            tick().await;
        }
    })
    .await;
    found.unwrap_or_else(|_| panic!("plugin {id} never became {what}; last row: {last:?}"))
}

async fn wait_ready(ws: &mut Ws, id: &str) -> Value {
    wait_plugin(ws, id, "ready", |r| r["status"] == "ready").await
}

/// The gateway's log file once it contains `needle` (bounded polling).
async fn wait_log(state: &Path, needle: &str) -> String {
    let path = state.join("logs/pincer.log");
    tokio::time::timeout(WAIT, async {
        loop {
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            if text.contains(needle) {
                return text;
            }
            tick().await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{needle:?} never logged"))
}

/// `(pid, state, ppid)` of every process.
fn processes() -> Vec<(u32, char, u32)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().filter_map(Result::ok) {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else { continue };
        let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else { continue };
        // `pid (comm) S ppid ...`; comm may hold spaces and parentheses.
        let Some(rest) = stat.rfind(')').map(|i| &stat[i + 1..]) else { continue };
        let mut f = rest.split_whitespace();
        let (Some(s), Some(ppid)) = (f.next(), f.next()) else { continue };
        out.push((pid, s.chars().next().unwrap_or('?'), ppid.parse().unwrap_or(0)));
    }
    out
}

/// Is `pid` a live (not zombie) process?
fn alive(pid: u64) -> bool {
    processes().iter().any(|(p, s, _)| u64::from(*p) == pid && *s != 'Z')
}

/// No zombie children of `daemon`, and none of `gone` still exists (bounded polling: a
/// retired process is reaped right after its generation is replaced).
async fn assert_reaped(daemon: u32, gone: &[u64]) {
    let ok = tokio::time::timeout(WAIT, async {
        loop {
            let procs = processes();
            let zombies: Vec<u32> = procs.iter().filter(|(_, s, pp)| *pp == daemon && *s == 'Z').map(|p| p.0).collect();
            let lingering: Vec<u64> =
                gone.iter().copied().filter(|g| procs.iter().any(|(p, _, _)| u64::from(*p) == *g)).collect();
            if zombies.is_empty() && lingering.is_empty() {
                return;
            }
            tick().await;
        }
    })
    .await;
    if ok.is_err() {
        let procs = processes();
        let kids: Vec<_> = procs.iter().filter(|(_, _, pp)| *pp == daemon).collect();
        panic!("unreaped plugin processes: children of {daemon}: {kids:?}; expected gone: {gone:?}");
    }
}

/// Connect a fresh client and check that each of `methods` is advertised in `hello-ok` if
/// and only if it is callable (no `unknown method`), and that it is advertised iff
/// `expected`. A call may be `UNAVAILABLE` with `retryable: true` only if `allow_unavailable`.
async fn assert_advertised_iff_callable(
    d: &Daemon,
    methods: &[(&str, Value)],
    expected: bool,
    allow_unavailable: bool,
) {
    let mut ws = d.client().await;
    let hello: Vec<String> = ws.hello()["features"]["methods"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|m| m.as_str().map(str::to_string))
        .collect();
    for (m, params) in methods {
        let advertised = hello.iter().any(|h| h == m);
        assert_eq!(advertised, expected, "{m} advertised={advertised}, expected {expected}");
        let r = ws.request(m, params.clone()).await;
        let msg = r["error"]["message"].as_str().unwrap_or("");
        let unknown = msg.starts_with("unknown method");
        assert_eq!(!unknown, advertised, "{m}: advertised={advertised} but the call answered {r}");
        if advertised && r["ok"] != true {
            assert!(allow_unavailable, "{m} advertised but failed: {r}");
            assert_eq!(r["error"]["code"], "UNAVAILABLE", "{r}");
            assert_eq!(r["error"]["retryable"], true, "{r}");
        }
    }
}

fn echo_calls() -> Vec<(&'static str, Value)> {
    vec![(PING, json!({"n": 1})), (REVERSE, json!({"text": "abc"}))]
}

/// The next `n` `res` frames on `ws`, in arrival order.
async fn responses(ws: &mut Ws, n: usize) -> Vec<Value> {
    let mut out = Vec::new();
    while out.len() < n {
        let f = ws.recv().await.expect("connection open");
        if f["type"] == "res" {
            out.push(f);
        }
    }
    out
}

async fn patch(ws: &mut Ws, patch: Value) -> Value {
    let r = ws.request("config.patch", json!({"patch": patch})).await;
    assert_eq!(r["ok"], true, "config.patch failed: {r}");
    r
}

#[tokio::test]
async fn example_plugin_methods_are_callable_over_websocket() {
    let dir = tempfile::tempdir().unwrap();
    // Found through plugins.load.paths (a dir of plugin dirs), configured, validated.
    write_config(
        dir.path(),
        &json!({"plugins": {"load": {"paths": [example_dir().parent().unwrap()]},
                            "entries": {"echo-methods": {"config": {"greeting": "hello there"}}}}}),
    );
    let d = Daemon::start(dir.path()).await;
    let mut ws = d.client().await;
    let row = wait_ready(&mut ws, "echo-methods").await;
    assert_eq!(row["origin"], "load-path");
    assert_eq!(row["methods"], json!([{"name": PING, "scope": "read"}, {"name": REVERSE, "scope": "write"}]));

    let mut ws = d.client().await;
    let hello = ws.hello().clone();
    let methods = hello["features"]["methods"].as_array().unwrap();
    assert!(methods.contains(&json!(PING)) && methods.contains(&json!(REVERSE)), "{hello}");
    assert!(hello["features"]["events"].as_array().unwrap().contains(&json!("echo-methods.pinged")));

    let r = ws.request(PING, json!({"x": [1, 2]})).await;
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(r["payload"]["greeting"], "hello there");
    assert_eq!(r["payload"]["echo"], json!({"x": [1, 2]}));
    assert_eq!(r["payload"]["pid"], row["pid"]);
    let ev = ws.event(|e| e["event"] == "echo-methods.pinged").await;
    assert_eq!(ev["payload"]["count"], 1, "gateway.emit reaches clients: {ev}");

    let r = ws.request(REVERSE, json!({"text": "pincer"})).await;
    assert_eq!(r["payload"]["text"], "recnip", "{r}");
    let r = ws.request(REVERSE, json!({})).await;
    assert_eq!(r["error"]["code"], "INVALID_REQUEST", "{r}");
    assert_eq!(r["error"]["details"], json!({"plugin": "echo-methods", "rpcCode": -32602}));
    assert_eq!(r["error"]["message"], "params.text must be a string");

    // Scopes come from the registration: ping is read, reverse is write (the default).
    let mut reader = Ws::connect_auth(&d.ws_url(), &d.token, &["operator.read"]).await;
    assert_eq!(reader.request(PING, json!({})).await["ok"], true);
    let r = reader.request(REVERSE, json!({"text": "x"})).await;
    assert_eq!(r["error"]["code"], "FORBIDDEN", "{r}");

    // health (OpenClaw's shape), status, the CLI, and the plugin's stderr in the log.
    let h = ws.request("health", json!({})).await;
    assert_eq!(h["payload"]["plugins"], json!({"loaded": ["echo-methods"], "errors": []}));
    let st = ws.request("status", json!({})).await;
    assert_eq!(st["payload"]["plugins"]["plugins"][0]["status"], "ready", "{st}");
    let out = cli(dir.path(), &["plugins", "list"]).await;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("echo-methods") && text.contains("ready") && text.contains(REVERSE), "{text}");
    let out = cli(dir.path(), &["plugins", "list", "--json"]).await;
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["plugins"][0]["state"], "enabled", "{v}");
    let logged = tokio::time::timeout(WAIT, async {
        loop {
            let page = ws.request("logs.tail", json!({"limit": 1000})).await;
            let lines = page["payload"]["lines"].as_array().cloned().unwrap_or_default();
            if let Some(l) = lines.iter().filter_map(Value::as_str).find(|l| l.contains("initialized (generation")) {
                return l.to_string();
            }
            tick().await;
        }
    })
    .await
    .expect("the plugin's stderr reaches the gateway log");
    assert!(logged.contains("\"plugin\":\"echo-methods\""), "tagged with the plugin id: {logged}");

    // plugins.list has OpenClaw's PluginsListResult shape.
    let list = ws.request("plugins.list", json!({})).await["payload"].clone();
    let schema_path = PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/compat/openclaw-client/node_modules/@openclaw/gateway-protocol/protocol.schema.json"
    ));
    if let Ok(text) = std::fs::read_to_string(&schema_path) {
        let schema: Value = serde_json::from_str(&text).unwrap();
        let mut def = schema["definitions"]["PluginsListResult"].clone();
        def["definitions"] = schema["definitions"].clone();
        let v = jsonschema::draft7::new(&def).unwrap();
        let errors: Vec<String> = v.iter_errors(&list).map(|e| format!("{}: {e}", e.instance_path())).collect();
        assert!(errors.is_empty(), "plugins.list does not match PluginsListResult: {errors:?}\n{list}");
    }
    let (code, _) = d.stop().await;
    assert_eq!(code, Some(0));
}

#[tokio::test]
async fn invalid_plugin_config_is_reported_like_a_config_error() {
    let dir = tempfile::tempdir().unwrap();
    install_example(dir.path());
    write_config(dir.path(), &json!({"plugins": {"entries": {"echo-methods": {"config": {"greeting": 5}}}}}));
    let out = cli(dir.path(), &["config", "validate"]).await;
    assert_eq!(out.status.code(), Some(78));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("plugins.entries.echo-methods.config.greeting"), "{err}");
    // The gateway refuses to start with it, like with any invalid config.
    let out = cli(dir.path(), &["gateway", "run", "--port", "0"]).await;
    assert_eq!(out.status.code(), Some(78), "{}", String::from_utf8_lossy(&out.stdout));
    assert!(String::from_utf8_lossy(&out.stderr).contains("plugins.entries.echo-methods.config.greeting"));

    // At runtime, an invalid change is refused and the running plugin is kept.
    write_config(dir.path(), &json!({"plugins": {"entries": {"echo-methods": {"config": {"greeting": "a"}}}}}));
    let d = Daemon::start(dir.path()).await;
    let mut ws = d.client().await;
    let row = wait_ready(&mut ws, "echo-methods").await;
    let r = ws
        .request("config.patch", json!({"patch": {"plugins": {"entries": {"echo-methods": {"config": {"nope": 1}}}}}}))
        .await;
    assert_eq!(r["error"]["code"], "INVALID_REQUEST", "{r}");
    assert!(r["error"]["details"]["errors"][0].as_str().unwrap().starts_with("plugins.entries.echo-methods.config"));
    std::fs::write(
        dir.path().join("pincer.json"),
        json!({"plugins": {"entries": {"echo-methods": {"config": {"greeting": ""}}}}}).to_string(),
    )
    .unwrap();
    let r = ws.request("gateway.reload", json!({})).await;
    assert_eq!(r["error"]["code"], "INVALID_REQUEST", "{r}");
    let st = ws.request("status", json!({})).await;
    let e = st["payload"]["config"]["lastReloadError"]["message"].as_str().unwrap_or("");
    assert!(e.contains("plugins.entries.echo-methods.config.greeting"), "{st}");
    let now = plugin_row(&mut ws, "echo-methods").await.unwrap();
    assert_eq!((now["pid"].clone(), now["status"].clone()), (row["pid"].clone(), json!("ready")));
    d.stop().await;
}

#[tokio::test]
async fn methods_are_advertised_iff_callable_across_reloads_restarts_and_crashes() {
    let dir = tempfile::tempdir().unwrap();
    install_example(dir.path());
    write_config(dir.path(), &json!({"gateway": {"reload": {"mode": "off"}}, "messages": {"responsePrefix": "[a]"}}));
    let d = Daemon::start(dir.path()).await;
    let daemon_pid = d.child.id().unwrap();
    let mut ws = d.client().await;
    let first = wait_ready(&mut ws, "echo-methods").await;
    let pid1 = first["pid"].as_u64().unwrap();
    assert_eq!(first["origin"], "state-dir");
    assert_advertised_iff_callable(&d, &echo_calls(), true, false).await;

    // SIGHUP with a change outside plugins.*: the same process keeps serving.
    write_config(dir.path(), &json!({"gateway": {"reload": {"mode": "off"}}, "messages": {"responsePrefix": "[b]"}}));
    d.signal("HUP");
    tokio::time::timeout(WAIT, async {
        loop {
            let st = ws.request("status", json!({})).await;
            if st["payload"]["config"]["generation"] == 2 {
                break;
            }
            tick().await;
        }
    })
    .await
    .expect("SIGHUP applied");
    let row = plugin_row(&mut ws, "echo-methods").await.unwrap();
    assert_eq!(row["pid"], pid1, "the plugin process is kept across SIGHUP: {row}");
    assert_eq!(row["generation"], first["generation"]);
    assert_advertised_iff_callable(&d, &echo_calls(), true, false).await;

    // plugins.entries.<id>.config changes: a new generation replaces the process.
    let r = patch(&mut ws, json!({"plugins": {"entries": {"echo-methods": {"config": {"greeting": "second"}}}}})).await;
    assert_eq!(r["payload"]["report"]["plugins"][0]["action"], "restarting", "{r}");
    let second = wait_plugin(&mut ws, "echo-methods", "the next generation", |r| {
        r["status"] == "ready" && r["pid"] != pid1 && r.get("pending").is_none()
    })
    .await;
    assert!(second["generation"].as_u64() > first["generation"].as_u64());
    assert_eq!(ws.request(PING, json!({})).await["payload"]["greeting"], "second");
    assert_advertised_iff_callable(&d, &echo_calls(), true, false).await;
    assert_reaped(daemon_pid, &[pid1]).await;
    let pid2 = second["pid"].as_u64().unwrap();

    // plugins.deny: the methods go away (unknown, and not advertised), the process too.
    patch(&mut ws, json!({"plugins": {"deny": ["echo-methods"]}})).await;
    wait_plugin(&mut ws, "echo-methods", "disabled", |r| r["status"] == "disabled").await;
    assert_advertised_iff_callable(&d, &echo_calls(), false, false).await;
    assert_reaped(daemon_pid, &[pid2]).await;
    // ... and back.
    patch(&mut ws, json!({"plugins": {"deny": []}})).await;
    let third = wait_ready(&mut ws, "echo-methods").await;
    assert_advertised_iff_callable(&d, &echo_calls(), true, false).await;
    let pid3 = third["pid"].as_u64().unwrap();

    // SIGUSR1: a fresh runtime and a fresh plugin generation; clients that reconnect find
    // the methods at once.
    d.signal("USR1");
    assert_eq!(ws.close_code().await, Some(1012));
    assert_advertised_iff_callable(&d, &echo_calls(), true, false).await;
    let mut ws = d.client().await;
    let fourth = plugin_row(&mut ws, "echo-methods").await.unwrap();
    assert_eq!(fourth["status"], "ready");
    assert_ne!(fourth["pid"], pid3, "SIGUSR1 starts a fresh plugin process");
    assert_reaped(daemon_pid, &[pid3]).await;

    // kill -9: restarted with backoff; meanwhile the methods stay advertised and answer
    // UNAVAILABLE (retryable), never `unknown method`.
    let pid4 = fourth["pid"].as_u64().unwrap();
    // SAFETY: kill(2) on the plugin process the gateway reported; touches no memory.
    assert_eq!(unsafe { libc::kill(pid4 as i32, libc::SIGKILL) }, 0);
    let down = wait_plugin(&mut ws, "echo-methods", "restarting", |r| r["pid"] != pid4).await;
    assert_advertised_iff_callable(&d, &echo_calls(), true, true).await;
    let fifth =
        wait_plugin(&mut ws, "echo-methods", "ready again", |r| r["status"] == "ready" && r["pid"] != pid4).await;
    assert!(fifth["restarts"].as_u64() >= Some(1), "{fifth} (while down: {down})");
    assert!(fifth["lastError"].as_str().unwrap_or("").contains("signal 9"), "{fifth}");
    assert_advertised_iff_callable(&d, &echo_calls(), true, false).await;
    assert_reaped(daemon_pid, &[pid4]).await;

    let pid5 = fifth["pid"].as_u64().unwrap();
    let (code, _) = d.stop().await;
    assert_eq!(code, Some(0));
    assert!(!alive(pid5), "the plugin process stops with the gateway");
}

/// A client that survives restarts: `None` when the connection closed.
struct Flaky {
    ws: tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>,
    next: u64,
    close: Option<u16>,
}

impl Flaky {
    /// Connect, retrying while the gateway answers the handshake with "restarting".
    async fn connect(d: &Daemon) -> (Flaky, Value) {
        loop {
            let (ws, _) = tokio_tungstenite::connect_async(d.ws_url()).await.expect("connect");
            let mut c = Flaky { ws, next: 1, close: None };
            let _challenge = c.recv().await;
            if let Some(r) = c.call("connect", connect_params(&d.token, &["operator.admin"])).await {
                if r["ok"] == true {
                    return (c, r["payload"].clone());
                }
                assert_eq!(r["error"]["code"], "UNAVAILABLE", "{r}");
            }
        }
    }

    async fn recv(&mut self) -> Option<Value> {
        loop {
            match tokio::time::timeout(WAIT, self.ws.next()).await.expect("frame in time") {
                Some(Ok(Message::Text(t))) => return Some(serde_json::from_str(&t).unwrap()),
                Some(Ok(Message::Close(f))) => {
                    self.close = f.map(|f| f.code.into());
                    return None;
                }
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => return None,
            }
        }
    }

    async fn call(&mut self, method: &str, params: Value) -> Option<Value> {
        let id = format!("f{}", self.next);
        self.next += 1;
        let frame = json!({"type": "req", "id": id, "method": method, "params": params});
        if self.ws.send(Message::Text(frame.to_string().into())).await.is_err() {
            // Closed under us: read what is left, up to the close frame.
            while self.recv().await.is_some() {}
            return None;
        }
        loop {
            let f = self.recv().await?;
            if f["type"] == "res" && f["id"] == id {
                return Some(f);
            }
        }
    }
}

#[tokio::test]
async fn two_hundred_calls_across_twenty_restarts_never_see_unknown_method() {
    let dir = tempfile::tempdir().unwrap();
    install_example(dir.path());
    let d = Daemon::start(dir.path()).await;
    let daemon_pid = d.child.id().unwrap();
    let mut ws = d.client().await;
    wait_ready(&mut ws, "echo-methods").await;
    drop(ws);

    let (mut c, mut hello) = Flaky::connect(&d).await;
    let (mut ok, mut unavailable, mut restarts, mut since_restart, mut signalled) = (0u32, 0u32, 0u32, 0u32, false);
    let mut pids = std::collections::BTreeSet::new();
    tokio::time::timeout(Duration::from_secs(240), async {
        while ok < 200 || restarts < 20 || since_restart == 0 {
            assert!(
                hello["features"]["methods"].as_array().unwrap().contains(&json!(PING)),
                "a fresh connection does not advertise {PING}: {hello}"
            );
            if !signalled && restarts < 20 && since_restart >= 10 {
                d.signal("USR1");
                signalled = true;
            }
            match c.call(PING, json!({"i": ok})).await {
                Some(r) if r["ok"] == true => {
                    ok += 1;
                    since_restart += 1;
                    pids.insert(r["payload"]["pid"].as_u64().unwrap());
                }
                Some(r) => {
                    let msg = r["error"]["message"].as_str().unwrap_or("");
                    assert!(!msg.starts_with("unknown method"), "call {ok} after {restarts} restarts: {r}");
                    assert_eq!(r["error"]["code"], "UNAVAILABLE", "{r}");
                    assert_eq!(r["error"]["retryable"], true, "{r}");
                    unavailable += 1;
                }
                None => {
                    // The close frame may be lost when the socket closes under a send.
                    assert!(matches!(c.close, Some(1012) | None), "closed for a restart: {:?}", c.close);
                    restarts += 1;
                    since_restart = 0;
                    signalled = false;
                    (c, hello) = Flaky::connect(&d).await;
                }
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("stuck after {ok} calls and {restarts} restarts"));
    assert!(pids.len() >= 21, "every restart ran a fresh plugin process: {pids:?}");
    eprintln!("{ok} calls, {unavailable} UNAVAILABLE, {restarts} restarts, {} plugin processes", pids.len());
    let mut ws = d.client().await;
    let live = plugin_row(&mut ws, "echo-methods").await.unwrap()["pid"].as_u64().unwrap();
    let old: Vec<u64> = pids.into_iter().filter(|p| *p != live).collect();
    assert_reaped(daemon_pid, &old).await;
    d.stop().await;
}

#[tokio::test]
async fn plugins_that_hang_or_fail_at_initialize_block_nothing() {
    let dir = tempfile::tempdir().unwrap();
    install_example(dir.path());
    for id in ["hang", "broken", "refuses", "config"] {
        install_test_plugin(dir.path(), id);
    }
    write_config(
        dir.path(),
        &json!({"gateway": {"reload": {"mode": "off"}}, "plugins": {"entries": {
            // Hangs in initialize for a minute: longer than any bound below.
            "hang": {"config": {"initialize": "hang"}, "initializeTimeoutMs": 60000},
            "broken": {"config": {"initialize": "exit"}},
            "refuses": {"config": {"initialize": "error"}},
            // Registers a name that belongs to a core method.
            "config": {"config": {"methods": ["config.get", "ping"]}},
        }}}),
    );
    // The gateway starts (Daemon::start waits at most 30 s for it to listen) and the other
    // plugins become ready while `hang` is still in its initialize.
    let d = Daemon::start(dir.path()).await;
    let mut ws = d.client().await;
    wait_ready(&mut ws, "echo-methods").await;
    let hang = plugin_row(&mut ws, "hang").await.unwrap();
    assert_eq!(hang["status"], "starting", "still in its initialize: {hang}");
    assert_advertised_iff_callable(&d, &echo_calls(), true, false).await;

    // Failures are visible, with the stderr tail, in plugins.list and status.
    let broken = wait_plugin(&mut ws, "broken", "failed", |r| r["status"] == "failed").await;
    assert!(broken["lastError"].as_str().unwrap().contains("exited with code 3"), "{broken}");
    assert!(broken["stderrTail"].as_array().unwrap().contains(&json!("boom: cannot start")), "{broken}");
    let refuses = wait_plugin(&mut ws, "refuses", "failed", |r| r["status"] == "failed").await;
    assert!(refuses["lastError"].as_str().unwrap().contains("refusing to start"), "{refuses}");
    let clash = wait_plugin(&mut ws, "config", "gave-up", |r| r["status"] == "gave-up").await;
    let e = clash["lastError"].as_str().unwrap();
    assert!(e.contains("\"config.get\"") && e.contains("core method"), "names both: {e}");
    let list = ws.request("plugins.list", json!({})).await;
    let entry = list["payload"]["plugins"].as_array().unwrap().iter().find(|p| p["id"] == "broken").unwrap().clone();
    assert_eq!(entry["state"], "error", "{entry}");
    let st = ws.request("status", json!({})).await;
    let row =
        st["payload"]["plugins"]["plugins"].as_array().unwrap().iter().find(|p| p["pluginId"] == "broken").cloned();
    assert!(row.unwrap()["stderrTail"].to_string().contains("boom"), "{st}");
    let h = ws.request("health", json!({})).await;
    let errors = h["payload"]["plugins"]["errors"].as_array().unwrap();
    assert!(errors.iter().any(|e| e["id"] == "broken" && e["failurePhase"] == "initialize"), "{h}");
    let r = ws.request("config.ping", json!({})).await;
    assert!(r["error"]["message"].as_str().unwrap().starts_with("unknown method"), "nothing was registered: {r}");

    // SIGUSR1 does not wait for a plugin that never became ready.
    d.signal("USR1");
    assert_eq!(ws.close_code().await, Some(1012));
    let t1 = std::time::Instant::now();
    assert_advertised_iff_callable(&d, &echo_calls(), true, false).await;
    // The restart would wait 10 s for a plugin it waits for.
    assert!(t1.elapsed() < Duration::from_secs(9), "the restart waited for the hanging plugin: {:?}", t1.elapsed());
    let log = std::fs::read_to_string(dir.path().join("logs/pincer.log")).unwrap();
    assert!(!log.contains("plugins still initializing after the restart"), "the restart waited for `hang`");

    // With a short initialize timeout, the hanging plugin is reported failed.
    let mut ws = d.client().await;
    patch(&mut ws, json!({"plugins": {"entries": {"hang": {"initializeTimeoutMs": 300}}}})).await;
    let hang = wait_plugin(&mut ws, "hang", "failed (timed out)", |r| {
        r["status"] == "failed" && r["lastError"].as_str().unwrap_or("").contains("initialize timed out")
    })
    .await;
    assert!(hang["stderrTail"].to_string().contains("initialize mode hang"), "{hang}");
    assert_advertised_iff_callable(&d, &echo_calls(), true, false).await;
    let daemon_pid = d.child.id().unwrap();
    let (code, _) = d.stop().await;
    assert_eq!(code, Some(0));
    assert_reaped(daemon_pid, &[]).await;
}

#[tokio::test]
async fn bad_output_floods_timeouts_and_limits_are_contained() {
    let hook = pincer_testkit::FakeWebhook::start().await;
    let dir = tempfile::tempdir().unwrap();
    install_test_plugin(dir.path(), "rough");
    install_test_plugin(dir.path(), "busy");
    write_config(
        dir.path(),
        &json!({"gateway": {"reload": {"mode": "off"}}, "channels": {"webhook": {"url": hook.url()}},
        "plugins": {"entries": {
            "rough": {"config": {"garbage": true, "flood": 3000}, "invokeTimeoutMs": 2000},
            "busy": {"config": {"tag": "v1"}},
        }}}),
    );
    let d = Daemon::start(dir.path()).await;
    let mut ws = d.client().await;
    // Malformed lines and a flood of output: logged (throttled) and ignored.
    wait_ready(&mut ws, "rough").await;
    let r = ws.request("rough.ping", json!({})).await;
    assert_eq!(r["ok"], true, "{r}");
    assert!(ws.events.iter().all(|e| e["event"] != "chat"), "a plugin cannot emit core events");
    let log = wait_log(dir.path(), "malformed line from plugin").await;
    for needle in [
        "response to unknown request id 999",
        "gateway.emit event \\\"chat\\\" must start with",
        "unknown notification",
    ] {
        assert!(log.contains(needle), "{needle} is logged");
    }
    assert!(log.contains("plugin log output throttled"), "the flood is throttled");
    let flood_lines = log.lines().filter(|l| l.contains("log flood ") || l.contains("stderr flood line")).count();
    assert!(flood_lines < 1000, "{flood_lines} of 6000 flood lines reached the log");

    // The invoke timeout (configured per plugin).
    let r = ws.request("rough.slow", json!({"ms": 6000})).await;
    assert_eq!(r["error"]["code"], "UNAVAILABLE", "{r}");
    assert_eq!(r["error"]["retryable"], true);
    assert_eq!(r["error"]["details"]["reason"], "timeout", "{r}");

    // gateway.send goes through the outbox.
    let r = ws
        .request(
            "rough.send",
            json!({"channel": "webhook", "to": "channel:C1", "text": "from a plugin", "idempotencyKey": "k1"}),
        )
        .await;
    assert!(r["payload"]["result"]["deliveryId"].is_i64(), "{r}");
    let got = tokio::time::timeout(WAIT, hook.wait_for(1)).await.unwrap();
    assert_eq!(got[0].text(), "from a plugin");
    let r = ws.request("rough.send", json!({"channel": "webhook", "to": "x"})).await;
    assert_eq!(r["payload"]["error"]["code"], -32602, "{r}");

    // At most 64 calls in flight per plugin: the excess gets UNAVAILABLE.
    let busy = wait_ready(&mut ws, "busy").await;
    let mut a = d.client().await;
    let mut b = d.client().await;
    for i in 0..40 {
        a.send_text(
            &json!({"type": "req", "id": format!("a{i}"), "method": "busy.slow", "params": {"ms": 3000}}).to_string(),
        )
        .await;
    }
    for i in 0..30 {
        b.send_text(
            &json!({"type": "req", "id": format!("b{i}"), "method": "busy.slow", "params": {"ms": 3000}}).to_string(),
        )
        .await;
    }
    // Answers come in any order: collect every `res` frame.
    let mut results = responses(&mut a, 40).await;
    results.extend(responses(&mut b, 30).await);
    let ok = results.iter().filter(|r| r["ok"] == true).count();
    let refused: Vec<&Value> = results.iter().filter(|r| r["ok"] != true).collect();
    assert_eq!(ok, 64, "{refused:?}");
    assert!(refused.iter().all(|r| r["error"]["details"]["reason"] == "busy" && r["error"]["retryable"] == true));

    // A call in flight on a generation being retired finishes there.
    a.send_text(&json!({"type": "req", "id": "inflight", "method": "busy.slow", "params": {"ms": 5000}}).to_string())
        .await;
    let old_pid = busy["pid"].clone();
    // Make sure the call reached the plugin before the new generation is published.
    wait_plugin(&mut ws, "busy", "busy", |r| r["inFlight"] == 1).await;
    patch(&mut ws, json!({"plugins": {"entries": {"busy": {"config": {"tag": "v2"}}}}})).await;
    let next = wait_plugin(&mut ws, "busy", "replaced", |r| r["status"] == "ready" && r["pid"] != old_pid).await;
    assert_eq!(ws.request("busy.ping", json!({})).await["payload"]["tag"], "v2");
    let list = ws.request("plugins.list", json!({})).await;
    let retiring =
        list["payload"]["diagnostics"].as_array().unwrap().iter().any(|r| r["retiring"] == true && r["pid"] == old_pid);
    let r = a.response("inflight").await;
    assert_eq!(r["ok"], true, "the in-flight call finished on the retiring generation: {r}");
    assert_eq!(r["payload"]["pid"], old_pid);
    assert!(retiring, "the old generation was still retiring while the new one served: {list}");
    assert!(next["generation"].as_u64() > busy["generation"].as_u64());
    let st = ws.request("status", json!({})).await;
    assert_eq!(st["ok"], true, "the gateway is fine: {st}");
    let daemon_pid = d.child.id().unwrap();
    assert_reaped(daemon_pid, &[old_pid.as_u64().unwrap()]).await;
    d.stop().await;
}
