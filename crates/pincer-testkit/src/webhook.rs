//! [`FakeWebhook`]: a loopback receiver for pincer's `channels.webhook` delivery channel.
//!
//! It is as strict as a careful production receiver: a delivery must be `POST /` with
//! `Content-Type: application/json`, an `Idempotency-Key` header equal to the body's
//! `idempotencyKey`, and string fields `channel`, `accountId`, `to` and a non-empty `text`;
//! anything else gets a 400 (and is recorded as rejected). Every accepted delivery is recorded,
//! duplicates included, so tests can assert "delivered exactly once".

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use serde_json::{json, Value};
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// What the receiver does with the next delivery.
#[derive(Clone, Debug)]
pub enum WebhookBehaviour {
    /// 200 with `{"messageId": "wh-<n>"}` (the default).
    Accept,
    /// Answer with this status and optional `Retry-After` (seconds).
    Status(u16, Option<u64>),
    /// Record the delivery, then never answer (until the client gives up or the fake stops).
    Hold,
}

/// One accepted delivery.
#[derive(Clone, Debug)]
pub struct Delivery {
    /// The `Idempotency-Key` header.
    pub idempotency_key: String,
    /// The JSON body.
    pub body: Value,
}

impl Delivery {
    /// The `text` field.
    pub fn text(&self) -> &str {
        self.body["text"].as_str().unwrap_or("")
    }
}

#[derive(Default)]
struct Shared {
    script: Mutex<VecDeque<WebhookBehaviour>>,
    deliveries: Mutex<Vec<Delivery>>,
    rejected: Mutex<Vec<String>>,
    changed: Notify,
}

/// The fake receiver. Dropping it stops the server.
pub struct FakeWebhook {
    addr: SocketAddr,
    shared: Arc<Shared>,
    stop: CancellationToken,
}

impl FakeWebhook {
    /// Bind 127.0.0.1:0 and serve.
    pub async fn start() -> FakeWebhook {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind fake webhook");
        let addr = listener.local_addr().expect("local addr");
        let shared = Arc::new(Shared::default());
        let stop = CancellationToken::new();
        let app = Router::new().route("/", post(receive)).with_state(shared.clone());
        let s = stop.clone();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).with_graceful_shutdown(async move { s.cancelled().await }).await;
        });
        FakeWebhook { addr, shared, stop }
    }

    /// The URL to put in `channels.webhook.url`.
    pub fn url(&self) -> String {
        format!("http://{}/", self.addr)
    }

    /// Script the next deliveries.
    pub fn push(&self, b: WebhookBehaviour) {
        self.shared.script.lock().unwrap().push_back(b);
    }

    /// Accepted deliveries so far (including held ones), in arrival order.
    pub fn deliveries(&self) -> Vec<Delivery> {
        self.shared.deliveries.lock().unwrap().clone()
    }

    /// Rejected requests (400) with the reason.
    pub fn rejected(&self) -> Vec<String> {
        self.shared.rejected.lock().unwrap().clone()
    }

    /// Wait until at least `n` deliveries arrived. No timeout: wrap it in one.
    pub async fn wait_for(&self, n: usize) -> Vec<Delivery> {
        loop {
            let notified = self.shared.changed.notified();
            {
                let d = self.shared.deliveries.lock().unwrap();
                if d.len() >= n {
                    return d.clone();
                }
            }
            notified.await;
        }
    }
}

impl Drop for FakeWebhook {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

fn reject(shared: &Shared, why: String) -> Response {
    shared.rejected.lock().unwrap().push(why.clone());
    shared.changed.notify_waiters();
    (StatusCode::BAD_REQUEST, axum::Json(json!({"error": why}))).into_response()
}

async fn receive(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    let ct = headers.get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("");
    if !ct.starts_with("application/json") {
        return reject(&shared, format!("content-type must be application/json, got {ct:?}"));
    }
    let Ok(body) = serde_json::from_slice::<Value>(&body) else {
        return reject(&shared, "body is not JSON".into());
    };
    let key = headers.get("idempotency-key").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
    if key.is_empty() || body["idempotencyKey"].as_str() != Some(key.as_str()) {
        return reject(&shared, "Idempotency-Key header missing or not equal to body.idempotencyKey".into());
    }
    for f in ["channel", "accountId", "to"] {
        if !body[f].is_string() {
            return reject(&shared, format!("field {f} must be a string"));
        }
    }
    if body["text"].as_str().is_none_or(|t| t.trim().is_empty()) {
        return reject(&shared, "field text must be a non-empty string".into());
    }
    let behaviour = shared.script.lock().unwrap().pop_front().unwrap_or(WebhookBehaviour::Accept);
    if let WebhookBehaviour::Status(code, retry_after) = behaviour {
        let mut resp = (StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR), "scripted failure")
            .into_response();
        if let Some(s) = retry_after {
            resp.headers_mut().insert("retry-after", s.to_string().parse().unwrap());
        }
        return resp;
    }
    let n = {
        let mut d = shared.deliveries.lock().unwrap();
        d.push(Delivery { idempotency_key: key, body });
        d.len()
    };
    shared.changed.notify_waiters();
    if let WebhookBehaviour::Hold = behaviour {
        std::future::pending::<()>().await;
    }
    axum::Json(json!({"messageId": format!("wh-{n}")})).into_response()
}
