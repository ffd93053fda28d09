//! The WebSocket protocol (OpenClaw gateway protocol v4, reference §2 and the observed frames
//! in `openclaw-wire.md`): `connect.challenge` → `connect` → `hello-ok`, then `req`/`res`
//! frames and `event` frames with a per-connection `seq`.

use super::frame::{self, FrameError};
use super::{dispatch, AuthFailure, ControlState, PROTOCOL_VERSION};
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::response::Response;
use futures_util::{SinkExt, StreamExt};
use pincer_runtime::events::EventScope;
use serde_json::{json, Value};
use std::time::Duration;
use tokio::sync::mpsc;

/// Socket read size of a connection (4 KiB). tungstenite's default (128 KiB) is zero-filled on
/// the first read, so every connection, idle or not, would keep 128 KiB resident; larger frames
/// still arrive whole (the buffer grows to the frame), in reads of this size.
pub const READ_BUFFER: usize = 4 * 1024;
/// Handshake timeout.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Post-handshake max frame (25 MiB, `policy.maxPayload`).
pub const MAX_PAYLOAD: usize = 25 * 1024 * 1024;
/// Per-connection send buffer cap (`policy.maxBufferedBytes`).
pub const MAX_BUFFERED: usize = 50 * 1024 * 1024;
/// Tick interval (`policy.tickIntervalMs`).
pub const TICK: Duration = Duration::from_secs(30);

/// Requests of one connection that may run at once; the reader stops reading the socket
/// (TCP backpressure) while this many are in flight.
pub const MAX_INFLIGHT: usize = 64;

/// Known operator scopes.
const SCOPES: &[&str] = &["operator.read", "operator.write", "operator.admin"];

/// Accept a WebSocket upgrade from `ip` (used to rate-limit failed authentications).
pub(super) fn upgrade(state: ControlState, up: WebSocketUpgrade, ip: Option<std::net::IpAddr>) -> Response {
    up.max_message_size(MAX_PAYLOAD)
        .max_frame_size(MAX_PAYLOAD)
        .read_buffer_size(READ_BUFFER)
        .on_upgrade(move |socket| connection(state, socket, ip))
}

/// An error object `{code, message, details?}`.
pub fn err(code: &str, message: impl Into<String>) -> Value {
    json!({"code": code, "message": message.into()})
}

fn res_err(id: &Value, error: Value) -> String {
    json!({"type": "res", "id": id, "ok": false, "error": error}).to_string()
}

async fn close(socket: &mut WebSocket, code: u16, reason: &str) {
    let _ = socket.send(Message::Close(Some(CloseFrame { code, reason: reason.into() }))).await;
}

/// The authenticated client.
#[derive(Clone, Debug)]
pub struct Client {
    /// Connection id.
    pub conn_id: String,
    /// Granted scopes.
    pub scopes: Vec<String>,
    /// Role (`operator`).
    pub role: String,
}

async fn connection(state: ControlState, mut socket: WebSocket, ip: Option<std::net::IpAddr>) {
    let nonce: String = {
        use rand::Rng;
        let b: [u8; 16] = rand::thread_rng().gen();
        b.iter().map(|x| format!("{x:02x}")).collect()
    };
    let challenge = json!({"type": "event", "event": "connect.challenge", "payload": {"nonce": nonce, "ts": pincer_runtime::now_ms()}});
    if socket.send(Message::Text(challenge.to_string().into())).await.is_err() {
        return;
    }
    let first = match tokio::time::timeout(HANDSHAKE_TIMEOUT, socket.recv()).await {
        Err(_) => {
            close(&mut socket, 1008, "handshake timeout").await;
            return;
        }
        Ok(None) | Ok(Some(Err(_))) => return,
        Ok(Some(Ok(m))) => m,
    };
    let text = match first {
        Message::Text(t) => t.to_string(),
        Message::Binary(_) => {
            close(&mut socket, 1008, "invalid handshake: expected a JSON text frame").await;
            return;
        }
        Message::Close(_) => return,
        _ => {
            close(&mut socket, 1008, "invalid handshake: first frame must be connect").await;
            return;
        }
    };
    let frame = match frame::parse_connect_frame(&text) {
        Ok(f) => f,
        Err(FrameError::TooLarge { .. }) => {
            close(&mut socket, 1009, "pre-auth frame too large (max 64 KiB)").await;
            return;
        }
        Err(FrameError::NotJson(_)) => {
            close(&mut socket, 1008, "invalid handshake: not JSON").await;
            return;
        }
        Err(FrameError::NotRequest { id }) => {
            let _ = socket
                .send(Message::Text(
                    res_err(&id, err("INVALID_REQUEST", "invalid handshake: first request must be connect")).into(),
                ))
                .await;
            close(&mut socket, 1008, "invalid handshake: first request must be connect").await;
            return;
        }
    };
    let id = frame.id;
    let client = match authenticate(&state, ip, &frame.params) {
        Ok(c) => c,
        Err(e) => {
            let reason = e["message"].as_str().unwrap_or("connect failed").chars().take(120).collect::<String>();
            let _ = socket.send(Message::Text(res_err(&id, e).into())).await;
            close(&mut socket, 1008, &reason).await;
            return;
        }
    };
    // During an in-process restart, hold the handshake until the fresh runtime is up.
    if !state.wait_ready(HANDSHAKE_TIMEOUT).await {
        let e = json!({"code": "UNAVAILABLE", "message": "gateway is restarting; retry shortly", "retryable": true, "retryAfterMs": 1000,
                       "details": {"reason": "restarting"}});
        let _ = socket.send(Message::Text(res_err(&id, e).into())).await;
        close(&mut socket, 1013, "gateway restarting").await;
        return;
    }
    let gw = state.gateway();
    let methods = gw.methods();
    let hello = json!({
        "type": "hello-ok",
        "protocol": PROTOCOL_VERSION,
        "server": {"version": gw.version(), "connId": client.conn_id},
        // Both read from the one table that dispatch uses.
        "features": {"methods": methods.names(), "events": methods.event_names()},
        "snapshot": {"presence": [], "health": gw.health(), "stateVersion": {"presence": 0, "health": 0}, "uptimeMs": gw.uptime_ms(),
                     // `null`, not "", without a config file (the schema wants a non-empty hash or null).
                     "appliedConfigHash": Some(gw.snapshot().hash.clone()).filter(|h| !h.is_empty())},
        "auth": {"method": "token", "role": client.role, "scopes": client.scopes},
        "policy": {"maxPayload": MAX_PAYLOAD, "maxBufferedBytes": MAX_BUFFERED, "tickIntervalMs": TICK.as_millis() as u64},
    });
    drop(methods);
    let ok = json!({"type": "res", "id": id, "ok": true, "payload": hello});
    if socket.send(Message::Text(ok.to_string().into())).await.is_err() {
        return;
    }
    session(state, socket, client, gw).await;
}

fn authenticate(state: &ControlState, ip: Option<std::net::IpAddr>, params: &Value) -> Result<Client, Value> {
    let min = params.get("minProtocol").and_then(Value::as_u64).unwrap_or(PROTOCOL_VERSION);
    let max = params.get("maxProtocol").and_then(Value::as_u64).unwrap_or(PROTOCOL_VERSION);
    if min > PROTOCOL_VERSION || max < PROTOCOL_VERSION {
        return Err(json!({"code": "INVALID_REQUEST",
            "message": format!("protocol mismatch: server speaks protocol {PROTOCOL_VERSION}, client asked for {min}..{max}"),
            "details": {"code": "PROTOCOL_MISMATCH", "serverProtocol": PROTOCOL_VERSION}}));
    }
    let role = params.get("role").and_then(Value::as_str).unwrap_or("operator");
    if role != "operator" {
        return Err(
            json!({"code": "INVALID_REQUEST", "message": format!("unsupported role {role:?} (pincer accepts operator)")}),
        );
    }
    let token = params.pointer("/auth/token").and_then(Value::as_str);
    match state.authorize(ip, token) {
        Ok(()) => {}
        Err(AuthFailure::RateLimited(wait)) => {
            let ms = wait.as_millis() as u64;
            return Err(json!({"code": "UNAVAILABLE",
                "message": "too many failed authentication attempts from this address; try again later",
                "retryable": true, "retryAfterMs": ms,
                "details": {"code": AuthFailure::RateLimited(wait).code(), "reason": "auth", "retryAfterMs": ms}}));
        }
        // The reference answers INVALID_REQUEST and names the auth failure in the details.
        Err(f) => {
            return Err(json!({"code": "INVALID_REQUEST", "message": "unauthorized: gateway token missing or wrong",
                "details": {"code": f.code(), "reason": "auth"}}))
        }
    }
    let scopes: Vec<String> = params
        .get("scopes")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).filter(|s| SCOPES.contains(s)).map(str::to_string).collect())
        .unwrap_or_default();
    Ok(Client { conn_id: state.next_conn_id(), scopes, role: role.to_string() })
}

/// After the handshake: requests, events, ticks. Writes go through one writer task fed by a
/// channel, so long-running requests never block event delivery.
async fn session(
    state: ControlState,
    socket: WebSocket,
    client: Client,
    gw: std::sync::Arc<pincer_runtime::GatewayHandle>,
) {
    let (mut sink, mut stream) = socket.split();
    let (out_tx, mut out_rx) = mpsc::unbounded_channel::<String>();
    let out = Responder {
        tx: out_tx,
        queued: std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0)),
        overflow: tokio_util::sync::CancellationToken::new(),
    };
    let (queued, overflow) = (out.queued.clone(), out.overflow.clone());
    let mut events = gw.events().subscribe();
    let generation = state.inner.generation.load_full();
    let can_read = client.scopes.iter().any(|s| s == "operator.read" || s == "operator.admin" || s == "operator.write");
    let writer = async move {
        let mut seq: u64 = 0;
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + TICK, TICK);
        loop {
            // Biased: queued responses and events (e.g. `shutdown`) go out before the close.
            let frame = tokio::select! {
                biased;
                m = out_rx.recv() => match m {
                    Some(s) => {
                        queued.fetch_sub(s.len(), std::sync::atomic::Ordering::Relaxed);
                        s
                    }
                    None => return,
                },
                ev = events.recv() => match ev {
                    Ok(ev) => {
                        if ev.scope == EventScope::Read && !can_read { continue; }
                        seq += 1;
                        json!({"type": "event", "event": ev.event, "payload": ev.payload, "seq": seq}).to_string()
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                        // Events are not replayed; skipping their seq numbers shows the client
                        // the gap, so it refetches state (reference §2).
                        seq += n;
                        tracing::warn!(lost = n, "slow control-plane client lost events");
                        continue;
                    }
                    Err(_) => continue,
                },
                _ = tick.tick() => { seq += 1; json!({"type": "event", "event": "tick", "payload": {"ts": pincer_runtime::now_ms()}, "seq": seq}).to_string() }
                _ = overflow.cancelled() => {
                    let reason = "slow consumer: more than maxBufferedBytes of responses queued";
                    let _ = sink.send(Message::Close(Some(CloseFrame { code: 1008, reason: reason.into() }))).await;
                    return;
                }
                _ = generation.cancelled() => {
                    let _ = sink.send(Message::Close(Some(CloseFrame { code: 1012, reason: "service restart".into() }))).await;
                    return;
                }
            };
            if sink.send(Message::Text(frame.into())).await.is_err() {
                return;
            }
        }
    };
    let reader = {
        let client = client.clone();
        let inflight = std::sync::Arc::new(tokio::sync::Semaphore::new(MAX_INFLIGHT));
        async move {
            while let Some(msg) = stream.next().await {
                let text = match msg {
                    Ok(Message::Text(t)) => t.to_string(),
                    Ok(Message::Binary(_)) => {
                        out.error(&Value::Null, err("INVALID_REQUEST", "binary frames are not supported"));
                        continue;
                    }
                    Ok(Message::Close(_)) | Err(_) => break,
                    Ok(_) => continue,
                };
                let frame::ClientFrame { id, method, params } = match frame::parse_client_frame(&text) {
                    Ok(f) => f,
                    Err(e) => {
                        // Without a usable id the error goes out with `id: null`.
                        let id = if let FrameError::NotRequest { id } = &e { id.clone() } else { Value::Null };
                        out.error(&id, err("INVALID_REQUEST", format!("invalid frame: {e}")));
                        continue;
                    }
                };
                if method == "connect" {
                    out.error(&id, err("INVALID_REQUEST", "already connected"));
                    continue;
                }
                let req = dispatch::Request { id, method, params, client: client.clone(), out: out.clone() };
                // Requests run concurrently (at most MAX_INFLIGHT); responses carry their id.
                let Ok(permit) = inflight.clone().acquire_owned().await else { break };
                let st = state.clone();
                let sup = st.gateway().supervisor().clone();
                sup.spawn("ws-request", async move {
                    dispatch::handle(st, req).await;
                    drop(permit);
                });
            }
        }
    };
    tokio::select! {
        _ = writer => {}
        _ = reader => {}
    }
}

/// Sends the responses of one connection. Bytes queued for the writer are counted; a client
/// that lets more than [`MAX_BUFFERED`] pile up is disconnected (1008) instead of growing
/// memory without bound.
#[derive(Clone)]
pub struct Responder {
    tx: mpsc::UnboundedSender<String>,
    queued: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    overflow: tokio_util::sync::CancellationToken,
}

impl Responder {
    fn send(&self, frame: String) {
        let n = frame.len();
        if self.queued.fetch_add(n, std::sync::atomic::Ordering::Relaxed) + n > MAX_BUFFERED {
            self.overflow.cancel();
            return;
        }
        let _ = self.tx.send(frame);
    }

    /// `res ok:true`.
    pub fn ok(&self, id: &Value, payload: Value) {
        self.send(json!({"type": "res", "id": id, "ok": true, "payload": payload}).to_string());
    }

    /// `res ok:false`.
    pub fn error(&self, id: &Value, error: Value) {
        self.send(res_err(id, error));
    }
}
