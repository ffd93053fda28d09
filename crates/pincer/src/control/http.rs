//! Plain HTTP endpoints: probes, Prometheus metrics, and the OpenAI-compatible API
//! (reference §9; off unless `gateway.http.endpoints.chatCompletions.enabled`).

use super::ControlState;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use pincer_runtime::SubmitTurn;
use serde_json::{json, Value};
use std::time::Duration;

/// `GET /healthz`: the process is alive.
pub async fn healthz() -> Json<Value> {
    Json(json!({"ok": true, "status": "live"}))
}

/// `GET /readyz`: the runtime is up, not restarting or draining, and every configured channel
/// account that is not manually stopped is connected (503 otherwise, naming what is not ready,
/// as the reference's deep readiness does).
pub async fn readyz(State(state): State<ControlState>) -> Response {
    if !state.is_ready() {
        return (StatusCode::SERVICE_UNAVAILABLE, Json(json!({"ok": false, "status": "restarting"}))).into_response();
    }
    let failing = state.gateway().channels_not_ready();
    if failing.is_empty() {
        Json(json!({"ok": true, "status": "ready"})).into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"ok": false, "status": "channels-not-ready", "failing": failing})),
        )
            .into_response()
    }
}

/// `GET /metrics`: Prometheus text format.
pub async fn metrics(State(state): State<ControlState>) -> Response {
    let gw = state.gateway();
    let c = gw.counters();
    let counts = gw.store().outbox_counts().ok();
    let mut s = String::new();
    let mut counter = |name: &str, help: &str, v: u64| {
        s.push_str(&format!("# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}\n"));
    };
    counter("pincer_inbound_accepted_total", "Inbound messages accepted for a run.", c.inbound_accepted.get());
    counter("pincer_inbound_dropped_total", "Inbound messages dropped by the wake decision.", c.inbound_dropped.get());
    counter(
        "pincer_inbound_duplicate_total",
        "Inbound duplicates rejected by the dedupe ledger.",
        c.inbound_duplicate.get(),
    );
    counter("pincer_runs_ok_total", "Agent runs with a visible reply.", c.runs_ok.get());
    counter("pincer_runs_silent_total", "Agent runs that ended silent.", c.runs_silent.get());
    counter("pincer_runs_failed_total", "Agent runs that failed or timed out.", c.runs_failed.get());
    counter("pincer_deliveries_sent_total", "Outbox rows delivered.", c.deliveries_sent.get());
    counter("pincer_deliveries_failed_total", "Outbox rows failed for good.", c.deliveries_failed.get());
    s.push_str(&format!(
        "# HELP pincer_run_duration_seconds Agent run durations.\n# TYPE pincer_run_duration_seconds summary\n\
         pincer_run_duration_seconds_sum {}\npincer_run_duration_seconds_count {}\n",
        c.run_ms_total.get() as f64 / 1000.0,
        c.runs_timed.get()
    ));
    s.push_str("# HELP pincer_outbox_rows Outbox rows by status.\n# TYPE pincer_outbox_rows gauge\n");
    if let Some(v) = counts.and_then(|c| serde_json::to_value(c).ok()) {
        if let Some(obj) = v.as_object() {
            for (k, n) in obj {
                s.push_str(&format!("pincer_outbox_rows{{status=\"{k}\"}} {}\n", n.as_u64().unwrap_or(0)));
            }
        }
    }
    s.push_str("# HELP pincer_channel_inbound_total Inbound channel messages by wake decision and reason.\n");
    s.push_str("# TYPE pincer_channel_inbound_total counter\n");
    for ((ch, acc, outcome, reason), n) in c.inbound_by_reason() {
        s.push_str(&format!(
            "pincer_channel_inbound_total{{channel=\"{}\",account=\"{}\",decision=\"{outcome}\",reason=\"{reason}\"}} {n}\n",
            prom_escape(&ch),
            prom_escape(&acc)
        ));
    }
    let rows = gw.channels_status();
    let label = |r: &serde_json::Value| {
        format!(
            "channel=\"{}\",account=\"{}\"",
            prom_escape(r["channel"].as_str().unwrap_or_default()),
            prom_escape(r["accountId"].as_str().unwrap_or_default())
        )
    };
    let mut gauge = |name: &str, help: &str, kind: &str, f: &dyn Fn(&serde_json::Value) -> u64| {
        s.push_str(&format!("# HELP {name} {help}\n# TYPE {name} {kind}\n"));
        for r in &rows {
            s.push_str(&format!("{name}{{{}}} {}\n", label(r), f(r)));
        }
    };
    gauge("pincer_channel_connected", "1 when the channel account's connection is ready.", "gauge", &|r| {
        u64::from(r["connected"] == true)
    });
    gauge(
        "pincer_channel_gave_up",
        "1 when the account gave up until channels.start or a config change.",
        "gauge",
        &|r| u64::from(r["state"] == "gave-up"),
    );
    gauge("pincer_channel_attempts_total", "Connection attempts started by the channel supervisor.", "counter", &|r| {
        r["attempts"].as_u64().unwrap_or(0)
    });
    gauge("pincer_channel_health_restarts_total", "Health-monitor restarts of the account.", "counter", &|r| {
        r["healthMonitor"]["restarts"].as_u64().unwrap_or(0)
    });
    s.push_str(&format!(
        "# HELP pincer_uptime_seconds Uptime.\n# TYPE pincer_uptime_seconds gauge\npincer_uptime_seconds {}\n",
        gw.uptime_ms() / 1000
    ));
    ([("content-type", "text/plain; version=0.0.4")], s).into_response()
}

/// Escape a Prometheus label value (backslash, quote, newline).
fn prom_escape(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// The client's IP address, when the server was started with connect info (always, in
/// [`super::serve`]).
#[derive(Clone, Copy, Debug)]
pub struct ClientIp(pub Option<std::net::IpAddr>);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for ClientIp {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut axum::http::request::Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(ClientIp(parts.extensions.get::<axum::extract::ConnectInfo<std::net::SocketAddr>>().map(|c| c.0.ip())))
    }
}

fn openai_error(status: StatusCode, kind: &str, message: &str) -> Response {
    (status, Json(json!({"error": {"message": message, "type": kind, "code": null}}))).into_response()
}

fn check_openai(state: &ControlState, ip: ClientIp, headers: &HeaderMap) -> Result<(), Box<Response>> {
    if !state.inner.gateway_cfg.load().chat_completions_enabled() {
        return Err(Box::new(openai_error(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            "the OpenAI-compatible API is disabled (gateway.http.endpoints.chatCompletions.enabled)",
        )));
    }
    let bearer = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")));
    match state.authorize(ip.0, bearer) {
        Ok(()) => Ok(()),
        Err(super::AuthFailure::RateLimited(wait)) => {
            let mut r = openai_error(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limit_error",
                "too many failed authentication attempts from this address",
            );
            if let Ok(v) = axum::http::HeaderValue::from_str(&wait.as_secs().max(1).to_string()) {
                r.headers_mut().insert("retry-after", v);
            }
            Err(Box::new(r))
        }
        Err(_) => Err(Box::new(openai_error(
            StatusCode::UNAUTHORIZED,
            "invalid_request_error",
            "invalid or missing bearer token",
        ))),
    }
}

/// `GET /v1/models`: agent targets (`pincer/<agentId>`), as OpenClaw lists `openclaw/<agentId>`.
pub async fn models(State(state): State<ControlState>, ip: ClientIp, headers: HeaderMap) -> Response {
    if let Err(r) = check_openai(&state, ip, &headers) {
        return *r;
    }
    let snap = state.gateway().snapshot();
    let mut ids = vec!["pincer".to_string()];
    ids.push(format!("pincer/{}", snap.config.default_agent_id()));
    for id in snap.config.agents.entries.keys() {
        let m = format!("pincer/{id}");
        if !ids.contains(&m) {
            ids.push(m);
        }
    }
    let data: Vec<Value> =
        ids.iter().map(|id| json!({"id": id, "object": "model", "created": 0, "owned_by": "pincer"})).collect();
    Json(json!({"object": "list", "data": data})).into_response()
}

fn agent_from_model(model: &str) -> Option<String> {
    for prefix in ["pincer/", "pincer:", "openclaw/", "openclaw:", "agent:"] {
        if let Some(rest) = model.strip_prefix(prefix) {
            return Some(if rest == "default" { String::new() } else { rest.to_string() });
        }
    }
    None
}

/// `POST /v1/chat/completions`: one agent turn. Non-streaming and SSE streaming.
pub async fn chat_completions(
    State(state): State<ControlState>,
    ip: ClientIp,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    if let Err(r) = check_openai(&state, ip, &headers) {
        return *r;
    }
    let req: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => {
            return openai_error(StatusCode::BAD_REQUEST, "invalid_request_error", &format!("invalid JSON body: {e}"))
        }
    };
    let Some(messages) = req.get("messages").and_then(Value::as_array) else {
        return openai_error(StatusCode::BAD_REQUEST, "invalid_request_error", "messages is required");
    };
    let Some(last_user) = messages.iter().rev().find(|m| m["role"] == "user").and_then(|m| match &m["content"] {
        Value::String(s) => Some(s.clone()),
        Value::Array(parts) => Some(parts.iter().filter_map(|p| p["text"].as_str()).collect::<Vec<_>>().join("\n")),
        _ => None,
    }) else {
        return openai_error(StatusCode::BAD_REQUEST, "invalid_request_error", "messages must contain a user message");
    };
    let model = req.get("model").and_then(Value::as_str).unwrap_or("pincer");
    let agent = headers
        .get("x-pincer-agent-id")
        .or_else(|| headers.get("x-openclaw-agent-id"))
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .or_else(|| agent_from_model(model))
        .filter(|s| !s.is_empty());
    let session = headers
        .get("x-pincer-session-key")
        .or_else(|| headers.get("x-openclaw-session-key"))
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .or_else(|| req.get("user").and_then(Value::as_str).map(|u| format!("openai-user:{u}")))
        .unwrap_or_else(|| format!("openai:{}", pincer_runtime::gateway::new_run_id()));
    let gw = state.gateway();
    let stream = req.get("stream").and_then(Value::as_bool) == Some(true);
    // Only a streaming answer reads the run's events; it subscribes before the submit so the
    // first delta cannot be missed. A non-streaming request does not subscribe: a live
    // receiver makes every run build and broadcast its event payloads, and dropping it walks
    // every event sent in the meantime.
    let events = stream.then(|| gw.events().subscribe());
    let submitted = match gw
        .submit(SubmitTurn {
            session_key: Some(session),
            agent_id: agent,
            message: last_user,
            idempotency_key: None,
            deliver: None,
            queue_mode: None,
            ingress: "openai".into(),
        })
        .await
    {
        Ok(s) => s,
        Err(e) => return openai_error(StatusCode::BAD_REQUEST, "invalid_request_error", &e.to_string()),
    };
    let run_id = submitted.run_id.clone();
    let created = pincer_runtime::now_ms() / 1000;
    let id = format!("chatcmpl-{run_id}");
    let Some(mut events) = events else {
        let info = gw.wait_run(&run_id, Duration::from_secs(48 * 3600)).await;
        return match info {
            Some(i) if i.status == pincer_runtime::runs::RunStatus::Ok || i.status == pincer_runtime::runs::RunStatus::Silent => Json(json!({
                "id": id, "object": "chat.completion", "created": created, "model": model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": i.text.unwrap_or_default()}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
            }))
            .into_response(),
            Some(i) => openai_error(StatusCode::BAD_GATEWAY, "server_error", i.error.as_deref().unwrap_or("agent run failed")),
            None => openai_error(StatusCode::INTERNAL_SERVER_ERROR, "server_error", "run disappeared"),
        };
    };
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<String, std::convert::Infallible>>(64);
    let model = model.to_string();
    gw.supervisor().spawn("openai-stream", async move {
        let chunk = |delta: Value, finish: Value| {
            format!(
                "data: {}\n\n",
                json!({"id": id, "object": "chat.completion.chunk", "created": created, "model": model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
            )
        };
        let _ = tx.send(Ok(chunk(json!({"role": "assistant"}), Value::Null))).await;
        loop {
            let ev = match events.recv().await {
                Ok(ev) => ev,
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                Err(_) => break,
            };
            if ev.event != "chat" || ev.payload["runId"] != run_id.as_str() {
                continue;
            }
            match ev.payload["state"].as_str() {
                Some("delta") => {
                    let d = ev.payload["deltaText"].as_str().unwrap_or("");
                    let _ = tx.send(Ok(chunk(json!({"content": d}), Value::Null))).await;
                }
                Some("final") | Some("silent") | Some("aborted") => {
                    let _ = tx.send(Ok(chunk(json!({}), json!("stop")))).await;
                    break;
                }
                Some("error") => {
                    let msg = ev.payload["errorMessage"].as_str().unwrap_or("agent run failed");
                    let _ = tx
                        .send(Ok(format!("data: {}\n\n", json!({"error": {"message": msg, "type": "server_error"}}))))
                        .await;
                    break;
                }
                _ => {}
            }
        }
        let _ = tx.send(Ok("data: [DONE]\n\n".to_string())).await;
    });
    let body = axum::body::Body::from_stream(tokio_stream_from(rx));
    ([("content-type", "text/event-stream"), ("cache-control", "no-cache")], body).into_response()
}

fn tokio_stream_from(
    mut rx: tokio::sync::mpsc::Receiver<Result<String, std::convert::Infallible>>,
) -> impl futures_util::Stream<Item = Result<String, std::convert::Infallible>> {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}
