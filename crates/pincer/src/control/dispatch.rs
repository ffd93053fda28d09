//! Method dispatch: look the method up in the *current* method table, check the scope, run
//! the core handler or invoke the plugin instance the table names. Unknown methods get
//! `INVALID_REQUEST` `unknown method: <name>`.

use super::ws::{err, Client, Responder};
use super::ControlState;
use crate::daemon::ControlInput;
use pincer_core::config::QueueMode;
use pincer_core::{AccountId, ChannelId, DeliveryTarget};
use pincer_runtime::methods::Handler;
use pincer_runtime::{RuntimeError, SendRequest, SubmitTurn};
use pincer_store::OutboxStatus;
use serde_json::{json, Value};
use std::time::Duration;

/// One request from a connection.
pub struct Request {
    /// Request id.
    pub id: Value,
    /// Method name.
    pub method: String,
    /// Params object.
    pub params: Value,
    /// The caller.
    pub client: Client,
    /// Where responses go.
    pub out: Responder,
}

fn str_param<'a>(p: &'a Value, k: &str) -> Option<&'a str> {
    p.get(k).and_then(Value::as_str).filter(|s| !s.is_empty())
}

fn runtime_err(e: RuntimeError) -> Value {
    err(e.code(), e.to_string())
}

fn missing(k: &str) -> Value {
    err("INVALID_REQUEST", format!("invalid params: missing required string {k:?}"))
}

/// Handle one request; every path sends exactly one response (two for `agent`).
pub async fn handle(state: ControlState, req: Request) {
    let gw = state.gateway();
    let table = gw.methods();
    let Some(spec) = table.get(&req.method) else {
        req.out.error(&req.id, err("INVALID_REQUEST", format!("unknown method: {}", req.method)));
        return;
    };
    if !spec.scope.allowed_by(&req.client.scopes) {
        req.out.error(
            &req.id,
            json!({"code": "FORBIDDEN", "message": format!("missing scope: {}", spec.scope.as_str()),
                   "details": {"code": "MISSING_SCOPE", "missingScope": spec.scope.as_str(), "requiredScopes": [spec.scope.as_str()]}}),
        );
        return;
    }
    if let Handler::Plugin { target, .. } = &spec.handler {
        // The instance comes from the same snapshot as the name: if a newer generation is
        // published meanwhile, this call still finishes on the one it started with.
        let target = target.clone();
        drop(table);
        let client = json!({"connId": req.client.conn_id, "role": req.client.role, "scopes": req.client.scopes});
        match target.0.invoke(&req.method, req.params, client).await {
            Ok(payload) => req.out.ok(&req.id, payload),
            Err(error) => req.out.error(&req.id, error),
        }
        return;
    }
    drop(table);
    let p = &req.params;
    let id = &req.id;
    let out = &req.out;
    match req.method.as_str() {
        "health" => out.ok(id, gw.health()),
        "status" => out.ok(id, gw.status()),
        "channels.status" => {
            let mut accounts = serde_json::Map::new();
            for row in gw.channels_status() {
                let channel = row["channel"].as_str().unwrap_or_default().to_string();
                if let Some(arr) = accounts.entry(channel).or_insert_with(|| json!([])).as_array_mut() {
                    arr.push(row);
                }
            }
            let order: Vec<String> = accounts.keys().cloned().collect();
            let defaults: serde_json::Map<String, Value> =
                order.iter().map(|c| (c.clone(), json!(pincer_core::AccountId::DEFAULT))).collect();
            // Channel-level summary (required by the schema): any account configured/running/connected.
            let channels: serde_json::Map<String, Value> = accounts
                .iter()
                .map(|(c, rows)| {
                    let rows = rows.as_array().map(Vec::as_slice).unwrap_or_default();
                    let any = |k: &str| rows.iter().any(|r| r[k] == true);
                    let summary = json!({"configured": any("configured"), "running": any("running"),
                                         "connected": any("connected"), "accounts": rows.len()});
                    (c.clone(), summary)
                })
                .collect();
            out.ok(
                id,
                json!({"ts": pincer_runtime::now_ms(), "channelOrder": order, "channelLabels": {}, "channels": channels,
                              "channelAccounts": accounts, "channelDefaultAccountId": defaults}),
            );
        }
        "channels.start" | "channels.stop" => {
            let Some(channel) = p.get("channel").and_then(Value::as_str).filter(|c| !c.is_empty()) else {
                out.error(id, json!({"code": "INVALID_REQUEST", "message": "params.channel is required"}));
                return;
            };
            let account = p.get("accountId").and_then(Value::as_str).filter(|a| !a.is_empty());
            let result = if req.method == "channels.start" {
                gw.channels().start(channel, account).await.map(|keys| {
                    json!({"ok": true, "started": keys.iter().map(|(c, a)| json!({"channel": c, "accountId": a})).collect::<Vec<_>>()})
                })
            } else {
                gw.channels().stop(channel, account).await.map(|stopped| {
                    json!({"ok": true, "stopped": stopped.iter().map(|((c, a), o)| json!({"channel": c, "accountId": a,
                        "outcome": if *o == pincer_runtime::supervisor::StopOutcome::Forced { "forced" } else { "clean" }})).collect::<Vec<_>>()})
                })
            };
            match result {
                Ok(v) => out.ok(id, v),
                Err(message) => out.error(id, json!({"code": "INVALID_REQUEST", "message": message})),
            }
        }
        "plugins.list" => out.ok(id, gw.plugins_list()),
        "models.list" => {
            let snap = gw.snapshot();
            let models: Vec<Value> = snap
                .config
                .models
                .providers
                .iter()
                .flat_map(|(pid, p)| {
                    p.models
                        .iter()
                        .map(move |m| json!({"id": format!("{pid}/{}", m.id), "provider": pid, "name": m.name}))
                })
                .chain(std::iter::once(json!({"id": "echo", "provider": "echo", "name": "built-in echo"})))
                .collect();
            out.ok(id, json!({"models": models}));
        }
        "chat.send" | "agent" => {
            let Some(message) = str_param(p, "message") else { return out.error(id, missing("message")) };
            let Some(key) = str_param(p, "idempotencyKey") else { return out.error(id, missing("idempotencyKey")) };
            // As in OpenClaw, the reply goes to a channel only with `deliver: true`.
            let deliver = if p.get("deliver").and_then(Value::as_bool) == Some(true) {
                match (str_param(p, "channel"), str_param(p, "to")) {
                    (Some(ch), Some(to)) => Some(DeliveryTarget {
                        channel: ChannelId::new(ch),
                        account: AccountId::new(str_param(p, "accountId").unwrap_or("")),
                        to: to.to_string(),
                        thread_id: str_param(p, "threadId").map(str::to_string),
                        reply_to_id: None,
                    }),
                    _ => return out.error(id, err("INVALID_REQUEST", "deliver needs channel and to")),
                }
            } else {
                None
            };
            let queue_mode = match str_param(p, "queueMode") {
                None => None,
                Some(m) => match serde_json::from_value::<QueueMode>(json!(m)) {
                    Ok(q) => Some(q),
                    Err(_) => {
                        return out.error(
                            id,
                            err(
                                "INVALID_REQUEST",
                                format!("invalid queueMode {m:?}: expected followup|collect|interrupt"),
                            ),
                        )
                    }
                },
            };
            let submit = SubmitTurn {
                session_key: str_param(p, "sessionKey").map(str::to_string),
                agent_id: str_param(p, "agentId").map(str::to_string),
                message: message.to_string(),
                idempotency_key: Some(key.to_string()),
                deliver,
                queue_mode,
                ingress: if req.method == "chat.send" { "webchat".into() } else { "api".into() },
            };
            let submitted = match gw.submit(submit).await {
                Ok(s) => s,
                Err(e) => return out.error(id, runtime_err(e)),
            };
            if req.method == "chat.send" {
                out.ok(id, json!({"runId": submitted.run_id, "status": "started", "sessionKey": submitted.session_key.as_str()}));
                return;
            }
            let accepted_at = submitted.info.as_ref().map(|i| i.accepted_at).unwrap_or_else(pincer_runtime::now_ms);
            out.ok(id, json!({"runId": submitted.run_id, "status": "accepted", "acceptedAt": accepted_at, "sessionKey": submitted.session_key.as_str()}));
            let timeout = p
                .get("timeout")
                .and_then(Value::as_u64)
                .map(|s| Duration::from_secs(s.max(1)))
                .unwrap_or(Duration::from_secs(48 * 3600));
            let final_info = match gw.wait_run(&submitted.run_id, timeout).await {
                Some(i) => i,
                None => match submitted.info {
                    Some(i) => i,
                    None => return out.error(id, err("UNAVAILABLE", "run outcome unknown")),
                },
            };
            if !final_info.status.is_terminal() {
                return out.error(id, json!({"code": "AGENT_TIMEOUT", "message": "timed out waiting for the run", "details": {"runId": final_info.run_id}}));
            }
            let status = final_info.status.wire_status();
            out.ok(
                id,
                json!({"runId": final_info.run_id, "status": status, "result": final_info, "summary": final_info.text}),
            );
        }
        "agent.wait" => {
            let Some(run_id) = str_param(p, "runId") else { return out.error(id, missing("runId")) };
            let timeout = Duration::from_millis(p.get("timeoutMs").and_then(Value::as_u64).unwrap_or(30_000));
            match gw.wait_run(run_id, timeout).await {
                None => out.error(id, err("INVALID_REQUEST", format!("unknown runId: {run_id}"))),
                Some(i) => {
                    let status = i.status.wire_status();
                    out.ok(id, json!({"runId": i.run_id, "status": status, "startedAt": i.started_at, "endedAt": i.ended_at, "error": i.error, "run": i}));
                }
            }
        }
        "chat.abort" => {
            let key = match str_param(p, "sessionKey").map(|k| gw.qualify_key(k)).transpose() {
                Ok(k) => k,
                Err(e) => return out.error(id, runtime_err(e)),
            };
            let aborted = gw.abort(key.as_deref(), str_param(p, "runId"));
            out.ok(id, json!({"ok": true, "aborted": !aborted.is_empty(), "runIds": aborted}));
        }
        "chat.history" => {
            let Some(key) = str_param(p, "sessionKey") else { return out.error(id, missing("sessionKey")) };
            let limit = p.get("limit").and_then(Value::as_u64).unwrap_or(200).min(1000) as usize;
            let canonical = match gw.qualify_key(key) {
                Ok(k) => k,
                Err(e) => return out.error(id, runtime_err(e)),
            };
            match gw.store().transcript(&canonical, limit) {
                Ok(entries) => {
                    let messages: Vec<Value> = entries
                        .into_iter()
                        .map(|e| json!({"role": e.role, "content": [{"type": "text", "text": e.text}], "timestamp": e.created_at, "seq": e.seq, "runId": e.run_id}))
                        .collect();
                    out.ok(id, json!({"sessionKey": key, "messages": messages}));
                }
                Err(e) => out.error(id, err("UNAVAILABLE", e.to_string())),
            }
        }
        "send" => {
            let Some(to) = str_param(p, "to") else { return out.error(id, missing("to")) };
            let Some(channel) = str_param(p, "channel") else { return out.error(id, missing("channel")) };
            let Some(key) = str_param(p, "idempotencyKey") else { return out.error(id, missing("idempotencyKey")) };
            let text = str_param(p, "message").or_else(|| str_param(p, "text"));
            let Some(text) = text else { return out.error(id, missing("message")) };
            let req = SendRequest {
                channel: channel.to_string(),
                account: str_param(p, "accountId").map(str::to_string),
                to: to.to_string(),
                thread_id: str_param(p, "threadId").map(str::to_string),
                text: text.to_string(),
                idempotency_key: Some(key.to_string()),
                session_key: str_param(p, "sessionKey").map(str::to_string),
            };
            match gw.send(req).await {
                Ok((delivery_id, created)) => out.ok(
                    id,
                    json!({"deliveryId": delivery_id, "status": "queued", "duplicate": !created, "channel": channel}),
                ),
                Err(e) => out.error(id, runtime_err(e)),
            }
        }
        "sessions.list" => {
            let limit = p.get("limit").and_then(Value::as_u64).unwrap_or(100).min(10_000) as usize;
            match gw.store().list_sessions(limit) {
                Ok(rows) => out.ok(
                    id,
                    json!({"sessions": rows.iter().map(session_json).collect::<Vec<_>>(), "count": rows.len()}),
                ),
                Err(e) => out.error(id, err("UNAVAILABLE", e.to_string())),
            }
        }
        "sessions.get" => {
            let Some(key) = str_param(p, "key").or_else(|| str_param(p, "sessionKey")) else {
                return out.error(id, missing("key"));
            };
            let limit = p.get("limit").and_then(Value::as_u64).unwrap_or(50).min(1000) as usize;
            let key = &match gw.qualify_key(key) {
                Ok(k) => k,
                Err(e) => return out.error(id, runtime_err(e)),
            };
            match (gw.store().get_session(key), gw.store().transcript(key, limit)) {
                (Ok(Some(s)), Ok(t)) => out.ok(
                    id,
                    json!({"session": session_record_json(&s), "transcript": t.iter().map(|e| json!({"seq": e.seq, "role": e.role, "text": e.text, "runId": e.run_id, "createdAt": e.created_at})).collect::<Vec<_>>()}),
                ),
                (Ok(None), _) => out.error(id, err("INVALID_REQUEST", format!("no session {key}"))),
                (Err(e), _) | (_, Err(e)) => out.error(id, err("UNAVAILABLE", e.to_string())),
            }
        }
        "sessions.reset" => {
            let Some(key) = str_param(p, "key").or_else(|| str_param(p, "sessionKey")) else {
                return out.error(id, missing("key"));
            };
            let key = &match gw.qualify_key(key) {
                Ok(k) => k,
                Err(e) => return out.error(id, runtime_err(e)),
            };
            match gw.reset_session(key) {
                Ok(existed) => out.ok(id, json!({"ok": true, "key": key, "existed": existed})),
                Err(e) => out.error(id, runtime_err(e)),
            }
        }
        "deliveries.list" => {
            let status = match str_param(p, "status") {
                None => None,
                Some(s) => match s.parse::<OutboxStatus>() {
                    Ok(st) => Some(st),
                    Err(_) => {
                        return out.error(
                            id,
                            err(
                                "INVALID_REQUEST",
                                format!("invalid status {s:?}: expected pending|sending|sent|failed|unknown"),
                            ),
                        )
                    }
                },
            };
            let limit = p.get("limit").and_then(Value::as_u64).unwrap_or(100).min(10_000) as usize;
            match gw.store().list_outbox(status, limit) {
                Ok(rows) => out.ok(id, json!({"deliveries": rows.iter().map(outbox_json).collect::<Vec<_>>(), "counts": gw.store().outbox_counts().ok()})),
                Err(e) => out.error(id, err("UNAVAILABLE", e.to_string())),
            }
        }
        "deliveries.retry" => {
            let Some(did) = p.get("id").and_then(Value::as_i64) else {
                return out.error(id, err("INVALID_REQUEST", "invalid params: missing integer \"id\""));
            };
            match gw.retry_delivery(did) {
                Ok(copy) => out.ok(id, json!({"requeued": copy.is_some(), "id": did, "newId": copy})),
                Err(e) => out.error(id, runtime_err(e)),
            }
        }
        "config.get" => {
            let snap = gw.snapshot();
            let raw = gw.config_path().and_then(|p| std::fs::read_to_string(p).ok());
            out.ok(id, json!({"config": &*snap.config, "hash": snap.hash, "raw": raw, "path": gw.config_path().map(|p| p.display().to_string()),
                              "generation": snap.generation}));
        }
        "config.schema" => out.ok(id, json!({"schema": pincer_core::config::json_schema()})),
        "config.apply" => {
            let Some(raw) = str_param(p, "raw") else { return out.error(id, missing("raw")) };
            let (tx, rx) = tokio::sync::oneshot::channel();
            let base_hash = str_param(p, "baseHash").map(str::to_string);
            control_call(&state, ControlInput::Apply { text: raw.to_string(), base_hash, reply: tx }, rx, id, out)
                .await;
        }
        "config.patch" => {
            let Some(patch) = p.get("patch").or_else(|| p.get("raw")).cloned() else {
                return out.error(
                    id,
                    err("INVALID_REQUEST", "invalid params: missing \"patch\" (a JSON merge patch object)"),
                );
            };
            let patch = match patch {
                // Accept the patch as a JSON(5) string too, like `config.apply`'s `raw`.
                Value::String(text) => match pincer_core::config::parse_json5(&text) {
                    Ok(v) => v,
                    Err(e) => return out.error(id, err("INVALID_REQUEST", format!("invalid patch: {e}"))),
                },
                v => v,
            };
            if !patch.is_object() {
                return out.error(id, err("INVALID_REQUEST", "invalid patch: expected an object"));
            }
            let (tx, rx) = tokio::sync::oneshot::channel();
            let base_hash = str_param(p, "baseHash").map(str::to_string);
            control_call(&state, ControlInput::Patch { patch, base_hash, reply: tx }, rx, id, out).await;
        }
        "pairing.list" => {
            let channel = p.get("channel").and_then(Value::as_str).filter(|c| !c.is_empty());
            match gw.list_pairing(channel) {
                Ok(v) => out.ok(id, v),
                Err(e) => out.error(id, err(e.code(), e.to_string())),
            }
        }
        "pairing.approve" => {
            let (Some(channel), Some(code)) =
                (p.get("channel").and_then(Value::as_str), p.get("code").and_then(Value::as_str))
            else {
                out.error(id, err("INVALID_REQUEST", "params.channel and params.code are required"));
                return;
            };
            match gw.approve_pairing(channel, code) {
                Ok(Some(s)) => out.ok(id, json!({"approved": true, "sender": s})),
                Ok(None) => out.error(
                    id,
                    err(
                        "INVALID_REQUEST",
                        format!("no pending pairing request with code {code} on {channel} (expired or already used?)"),
                    ),
                ),
                Err(e) => out.error(id, err(e.code(), e.to_string())),
            }
        }
        "logs.tail" => {
            let cursor = p.get("cursor").and_then(Value::as_u64);
            let limit = p.get("limit").and_then(Value::as_u64).unwrap_or(200).clamp(1, 5000) as usize;
            let max_bytes = p.get("maxBytes").and_then(Value::as_u64).unwrap_or(256 * 1024).clamp(1, 1024 * 1024);
            let path = crate::logging::log_file(gw.state_dir());
            match gw
                .supervisor()
                .spawn_blocking("logs-tail", move || crate::logging::tail(&path, cursor, limit, max_bytes))
                .await
            {
                Ok(Ok(page)) => out.ok(id, json!(page)),
                Ok(Err(e)) => out.error(id, err("UNAVAILABLE", format!("cannot read the log file: {e}"))),
                Err(e) => out.error(id, err("UNAVAILABLE", format!("log read failed: {e}"))),
            }
        }
        "gateway.reload" => {
            let (tx, rx) = tokio::sync::oneshot::channel();
            control_call(&state, ControlInput::Reload("gateway.reload", Some(tx)), rx, id, out).await;
        }
        "gateway.restart" => {
            let (tx, rx) = tokio::sync::oneshot::channel();
            control_call(&state, ControlInput::Restart("gateway.restart", Some(tx)), rx, id, out).await;
        }
        other => out.error(id, err("INVALID_REQUEST", format!("unknown method: {other}"))),
    }
}

/// Send `input` to the daemon's control loop and answer with what it replies.
async fn control_call(
    state: &ControlState,
    input: ControlInput,
    rx: tokio::sync::oneshot::Receiver<Result<Value, Value>>,
    id: &Value,
    out: &Responder,
) {
    if state.inner.control.send(input).await.is_err() {
        return out.error(id, err("UNAVAILABLE", "gateway is stopping"));
    }
    match rx.await {
        Ok(Ok(v)) => out.ok(id, v),
        Ok(Err(e)) => out.error(id, e),
        Err(_) => out.error(id, err("UNAVAILABLE", "gateway is stopping")),
    }
}

fn session_json(s: &pincer_store::SessionSummary) -> Value {
    let mut v = session_record_json(&s.session);
    v["messageCount"] = json!(s.message_count);
    v["lastActivityAt"] = json!(s.last_activity_at);
    v
}

fn session_record_json(s: &pincer_store::SessionRecord) -> Value {
    json!({"key": s.key, "agentId": s.agent_id.as_str(), "chatKind": s.chat_kind.as_str(),
           "deliveryContext": {"channel": s.target.channel.as_str(), "accountId": s.target.account.as_str(), "to": s.target.to,
                               "threadId": s.target.thread_id, "replyToId": s.target.reply_to_id},
           "createdAt": s.created_at, "updatedAt": s.updated_at, "lastRunAt": s.last_run_at, "generation": s.generation})
}

fn outbox_json(r: &pincer_store::OutboxRow) -> Value {
    json!({"id": r.id, "status": r.status.as_str(), "channel": r.target.channel.as_str(), "accountId": r.target.account.as_str(),
           "to": r.target.to, "threadId": r.target.thread_id, "text": r.text, "attempts": r.attempts, "lastError": r.last_error,
           "platformMessageId": r.platform_message_id, "createdAt": r.created_at, "sentAt": r.sent_at, "sessionKey": r.session_key})
}
