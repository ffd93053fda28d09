//! Conformance of pincer's control-plane frames with OpenClaw's published JSON Schema,
//! `protocol.schema.json` from `@openclaw/gateway-protocol` (npm, pinned in
//! `tests/compat/openclaw-client`, the version `@openclaw/gateway-client` depends on).
//!
//! The test drives the real binary, captures the frames it sends (the `connect.challenge`
//! event, `hello-ok`, responses of the core methods, error responses, `chat` and `agent`
//! events, and the `shutdown` event of a restart), and validates each against the schema:
//! every frame against its envelope (`RequestFrame`/`ResponseFrame`/`EventFrame`, strict
//! objects), and payloads against their definition where the schema has one (`HelloOk`, the
//! health snapshot, `ChatEvent` variants, `AgentEvent`, `ShutdownEvent`, `ModelsListResult`,
//! `ChannelsStatusResult`, `MissingScopeErrorDetails`). Deliberate deviations are listed in
//! [`DEVIATIONS`] and explained in `docs/protocol.md`; anything else fails the test, and so does
//! a listed deviation that no longer occurs (so the list and the doc stay true).

mod common;
use common::*;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::path::PathBuf;

const SCHEMA_ID: &str = "https://openclaw.ai/protocol.schema.json";

/// Known, documented differences (`docs/protocol.md`, "Deviations" and "Known gaps"): (frame
/// label prefix, instance path, text in the validation error).
const DEVIATIONS: &[(&str, &str, &str)] = &[
    // Malformed frames have no usable id to echo; pincer answers with `id: null` (the schema
    // requires a non-empty string id on every `res`).
    ("res error for a non-JSON frame", "/id", "null is not of type \"string\""),
    // `hello-ok.auth.method`: the reference sends it too (openclaw-wire.md), the schema omits it.
    ("res hello-ok", "/auth", "'method' was unexpected"),
    // `agent` events carry `sessionKey` so clients can route them without a run lookup.
    ("event agent (payload)", "", "'sessionKey' was unexpected"),
];

fn compat_dir() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/compat/openclaw-client"))
}

/// Install the pinned packages if `scripts/test` has not already (idempotent `npm ci`).
async fn schema() -> Value {
    let dir = compat_dir();
    let path = dir.join("node_modules/@openclaw/gateway-protocol/protocol.schema.json");
    if !path.exists() {
        let out = tokio::process::Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund"])
            .current_dir(&dir)
            .output()
            .await
            .expect("npm is needed for this test (scripts/test installs Node.js and the packages)");
        assert!(out.status.success(), "npm ci failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let schema: Value = serde_json::from_str(&std::fs::read_to_string(&path).expect("read protocol.schema.json"))
        .expect("protocol.schema.json is JSON");
    assert_eq!(schema["$id"], SCHEMA_ID);
    schema
}

/// Validators for `#/definitions/...` pointers into the one registered schema document.
struct Conformance {
    registry: jsonschema::Registry<'static>,
    validators: HashMap<String, jsonschema::Validator>,
    checked: Vec<String>,
    violations: Vec<(String, String, String)>,
}

impl Conformance {
    fn new(schema: Value) -> Self {
        let registry = jsonschema::Registry::new().add(SCHEMA_ID, schema).unwrap().prepare().expect("schema registry");
        Conformance { registry, validators: HashMap::new(), checked: Vec::new(), violations: Vec::new() }
    }

    /// Validate `instance` against `pointer` (e.g. `/definitions/HelloOk`).
    fn check(&mut self, label: &str, instance: &Value, pointer: &str) {
        let registry = &self.registry;
        let v = self.validators.entry(pointer.to_string()).or_insert_with(|| {
            jsonschema::draft7::options()
                .with_registry(registry)
                .build(&json!({"$ref": format!("{SCHEMA_ID}#{pointer}")}))
                .unwrap_or_else(|e| panic!("schema pointer {pointer}: {e}"))
        });
        self.checked.push(format!("{label} ~ {pointer}"));
        for e in v.iter_errors(instance) {
            let msg: String = e.to_string().chars().take(300).collect();
            self.violations.push((label.to_string(), e.instance_path().to_string(), msg));
        }
    }

    /// A server frame: its envelope by `type`, then its payload (or `error.details`) against
    /// `payload`, if the schema defines it.
    fn frame(&mut self, label: &str, frame: &Value, payload: Option<&str>) {
        let envelope = match frame["type"].as_str() {
            Some("res") => "/definitions/ResponseFrame",
            Some("event") => "/definitions/EventFrame",
            other => panic!("{label}: a server frame of type {other:?}: {frame}"),
        };
        self.check(label, frame, envelope);
        if let Some(p) = payload {
            let body = if frame["ok"] == false { &frame["error"]["details"] } else { &frame["payload"] };
            self.check(&format!("{label} (payload)"), body, p);
        }
    }
}

#[tokio::test]
async fn frames_conform_to_the_openclaw_protocol_schema() {
    let schema = schema().await;
    // The schema's own shape, which the pointers below rely on.
    for def in ["RequestFrame", "ResponseFrame", "EventFrame", "HelloOk", "ChatEvent", "AgentEvent", "TickEvent"] {
        assert!(schema["definitions"][def].is_object(), "protocol.schema.json has no {def}");
    }
    for m in ["connect", "health", "status", "chat.send", "chat.history", "sessions.list", "config.get"] {
        assert!(schema["methods"][m].is_object(), "protocol.schema.json lists no method {m}");
    }
    let mut c = Conformance::new(schema);

    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(dir.path()).await;

    // Handshake: connect.challenge, then hello-ok.
    let mut ws = Ws::connect_raw(&d.ws_url()).await;
    let challenge = ws.recv().await.expect("connect.challenge");
    c.frame("event connect.challenge", &challenge, None);
    assert!(
        challenge["payload"]["nonce"].as_str().is_some_and(|n| !n.is_empty()) && challenge["payload"]["ts"].is_u64()
    );
    let scopes = ["operator.read", "operator.write", "operator.admin"];
    let hello = ws.request("connect", connect_params(&d.token, &scopes)).await;
    assert_eq!(hello["payload"]["snapshot"]["appliedConfigHash"], Value::Null, "no config file yet");
    c.frame("res hello-ok (no config file)", &hello, Some("/definitions/HelloOk"));

    // Add a channel account (so channel snapshots are not empty), then reconnect.
    let patched = ws
        .request("config.patch", json!({"patch": {"channels": {"webhook": {"url": "http://127.0.0.1:9/hook"}}}}))
        .await;
    assert_eq!(patched["ok"], true, "{patched}");
    c.frame("res config.patch", &patched, None);
    let mut ws = Ws::connect_raw(&d.ws_url()).await;
    let challenge = ws.recv().await.expect("connect.challenge");
    c.frame("event connect.challenge", &challenge, None);
    let hello = ws.request("connect", connect_params(&d.token, &scopes)).await;
    assert!(hello["payload"]["snapshot"]["appliedConfigHash"].as_str().is_some_and(|h| !h.is_empty()), "{hello}");
    c.frame("res hello-ok", &hello, Some("/definitions/HelloOk"));
    let health_def = "/definitions/HelloOk/properties/snapshot/properties/health";

    // Core methods.
    let channels = ws.request("channels.status", json!({})).await;
    assert_eq!(channels["payload"]["channelOrder"], json!(["webhook"]), "{channels}");
    for (method, params, payload) in [
        ("health", json!({}), Some(health_def)),
        ("status", json!({}), None),
        ("models.list", json!({}), Some("/definitions/ModelsListResult")),
        ("channels.status", json!({}), Some("/definitions/ChannelsStatusResult")),
        ("config.get", json!({}), None),
    ] {
        let res = ws.request(method, params).await;
        assert_eq!(res["ok"], true, "{method}: {res}");
        c.frame(&format!("res {method}"), &res, payload);
    }

    // A chat turn with its streamed events.
    let key = "schema-check";
    let send = ws
        .request("chat.send", json!({"sessionKey": key, "message": "hello schema", "idempotencyKey": "schema-1"}))
        .await;
    assert_eq!(send["ok"], true, "{send}");
    c.frame("res chat.send", &send, None);
    let fin = ws
        .event(|e| e["event"] == "chat" && e["payload"]["runId"] == "schema-1" && e["payload"]["state"] == "final")
        .await;
    let events: Vec<Value> = ws.events.drain(..).chain([fin]).collect();
    let mut states = Vec::new();
    for e in &events {
        match e["event"].as_str() {
            Some("chat") => {
                let state = e["payload"]["state"].as_str().unwrap_or_default().to_string();
                let variant = match state.as_str() {
                    "delta" => "/definitions/ChatDeltaEvent",
                    "final" => "/definitions/ChatFinalEvent",
                    "aborted" => "/definitions/ChatAbortedEvent",
                    "error" => "/definitions/ChatErrorEvent",
                    _ => "/definitions/ChatEvent",
                };
                c.frame(&format!("event chat {state}"), e, Some(variant));
                c.check(&format!("event chat {state} (ChatEvent)"), &e["payload"], "/definitions/ChatEvent");
                states.push(state);
            }
            Some("agent") => c.frame("event agent", e, Some("/definitions/AgentEvent")),
            Some("tick") => c.frame("event tick", e, Some("/definitions/TickEvent")),
            Some(other) => c.frame(&format!("event {other}"), e, None),
            None => panic!("event without a name: {e}"),
        }
    }
    assert!(states.iter().any(|s| s == "delta") && states.iter().any(|s| s == "final"), "chat events seen: {states:?}");

    for (method, params) in [("chat.history", json!({"sessionKey": key})), ("sessions.list", json!({}))] {
        let res = ws.request(method, params).await;
        assert_eq!(res["ok"], true, "{method}: {res}");
        c.frame(&format!("res {method}"), &res, None);
    }

    // The two-stage `agent` response: the accepted ack, then the final res with the same id.
    let params = json!({"message": "two stages", "idempotencyKey": "schema-agent-1"});
    ws.send_text(&json!({"type": "req", "id": "agent-1", "method": "agent", "params": params}).to_string()).await;
    let ack = ws.response("agent-1").await;
    c.frame("res agent (accepted)", &ack, None);
    let fin = ws.response("agent-1").await;
    assert_eq!(fin["payload"]["status"], "ok", "{fin}");
    c.frame("res agent (final)", &fin, None);

    // Error responses.
    let unknown = ws.request("no.such.method", json!({})).await;
    assert_eq!(unknown["error"]["code"], "INVALID_REQUEST");
    c.frame("res error unknown method", &unknown, None);
    let missing = ws.request("chat.send", json!({"sessionKey": key})).await;
    assert_eq!(missing["ok"], false);
    c.frame("res error invalid params", &missing, None);
    ws.send_text("{not json").await;
    let bad = ws.recv().await.expect("error res");
    assert_eq!(bad["ok"], false, "{bad}");
    c.frame("res error for a non-JSON frame", &bad, None);

    let mut reader = Ws::connect_auth(&d.ws_url(), &d.token, &["operator.read"]).await;
    let forbidden =
        reader.request("chat.send", json!({"sessionKey": key, "message": "x", "idempotencyKey": "schema-2"})).await;
    assert_eq!(
        (&forbidden["error"]["code"], &forbidden["error"]["details"]["code"]),
        (&json!("FORBIDDEN"), &json!("MISSING_SCOPE"))
    );
    c.frame("res error missing scope", &forbidden, Some("/definitions/MissingScopeErrorDetails"));

    // Connect failures: the error res before the close.
    let mut bad_auth = Ws::connect_raw(&d.ws_url()).await;
    bad_auth.recv().await.expect("challenge");
    let refused = bad_auth.request("connect", connect_params("wrong", &scopes)).await;
    assert_eq!(refused["ok"], false);
    c.frame("res error connect (auth)", &refused, None);
    assert_eq!(bad_auth.close_code().await, Some(1008));
    let mut not_connect = Ws::connect_raw(&d.ws_url()).await;
    not_connect.recv().await.expect("challenge");
    let refused = not_connect.request("health", json!({})).await;
    c.frame("res error first frame not connect", &refused, None);

    // A restart: `shutdown` before the 1012 close.
    d.signal("USR1");
    let shutdown = reader.event(|e| e["event"] == "shutdown").await;
    c.frame("event shutdown", &shutdown, Some("/definitions/ShutdownEvent"));
    assert_eq!(reader.close_code().await, Some(1012));

    let (code, _) = d.stop().await;
    assert_eq!(code, Some(0));

    // Report: every violation not listed as a deviation fails; so does a stale deviation.
    let mut unexpected = Vec::new();
    let mut hit = vec![false; DEVIATIONS.len()];
    for (label, path, msg) in &c.violations {
        match DEVIATIONS.iter().position(|(l, p, m)| label.starts_with(l) && path == p && msg.contains(m)) {
            Some(i) => hit[i] = true,
            None => unexpected.push(format!("{label} at {path:?}: {msg}")),
        }
    }
    eprintln!("checked {} (frame, definition) pairs:\n  {}", c.checked.len(), c.checked.join("\n  "));
    assert!(unexpected.is_empty(), "frames that do not match protocol.schema.json:\n{}", unexpected.join("\n"));
    let stale: Vec<_> = DEVIATIONS.iter().zip(hit).filter(|(_, h)| !h).map(|(d, _)| d).collect();
    assert!(stale.is_empty(), "deviations that no longer occur (update DEVIATIONS and docs/protocol.md): {stale:?}");
}
