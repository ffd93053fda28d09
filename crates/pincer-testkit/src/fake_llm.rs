//! [`FakeLlm`]: a loopback HTTP server speaking the OpenAI Chat Completions and Anthropic
//! Messages wire formats, scripted per request.
//!
//! Wire facts come from the official API references: OpenAI "Create chat completion", "The
//! chat completion object", "The chat completion chunk object" and its streaming guide (SSE
//! `data:` lines without `event:`, ending `data: [DONE]`, a usage chunk with `choices: []`
//! when `stream_options.include_usage` is set); Anthropic "Messages", "Streaming Messages"
//! (named events `message_start`, `content_block_start`, `ping`, `content_block_delta`,
//! `content_block_stop`, `message_delta`, `message_stop`, `error`) and "Errors" (the
//! `{"type": "error", "error": {"type", "message"}}` envelope and its status codes).
//!
//! Strict where the real servers are: OpenAI answers 400 with its error envelope when the
//! body is not JSON or lacks `model` or `messages`; Anthropic answers 401 without
//! `x-api-key`, 400 without `anthropic-version`, and 400 when `model`, `max_tokens` or
//! `messages` is missing or a message has the `system` role.

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::Response;
use axum::routing::post;
use axum::Router;
use futures_util::stream::{self, StreamExt};
use serde_json::{json, Value};
use std::collections::VecDeque;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// What the server does with one request. Each request pops the next behaviour from the
/// queue ([`FakeLlm::push`]); with an empty queue it uses the default
/// ([`FakeLlm::set_default`]; initially a reply `"fake: <last user message>"`, streamed when
/// the request asked for `stream: true`). Requests rejected by validation do not pop.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Behaviour {
    /// A successful reply: an SSE stream when `stream`, else one JSON object. The text is
    /// split into deltas of `chunk_size` characters (0: one delta).
    Reply {
        /// The reply text.
        text: String,
        /// Stream (SSE) or answer with one JSON body, regardless of the request's flag.
        stream: bool,
        /// Characters per delta; 0 means the whole text in one delta.
        chunk_size: usize,
    },
    /// An HTTP error status.
    Status {
        /// The status code.
        code: u16,
        /// The body; empty means the API's own error envelope for that status.
        body: String,
        /// A `Retry-After` header value (delay-seconds or HTTP-date), if any.
        retry_after: Option<String>,
    },
    /// A 200 SSE stream carrying `partial_text`, cut without its terminal events (OpenAI: no
    /// `finish_reason`, no `[DONE]`; Anthropic: no `message_delta`, no `message_stop`).
    Truncated {
        /// The text sent before the cut.
        partial_text: String,
    },
    /// A 200 carrying an error object: an error event in a stream (OpenAI `data:
    /// {"error": …}`; Anthropic `event: error` with `api_error`), or an error JSON body when
    /// the request did not ask to stream.
    ErrorBody200 {
        /// The error message.
        message: String,
    },
    /// A 200 whose JSON is invalid: an SSE event with broken JSON when the request asked to
    /// stream, else a broken `application/json` body.
    BadJson,
    /// Never answers (no status line) until the client goes away or the server stops.
    Hang,
    /// A streamed reply, one character per delta, sleeping `gap` (real time) before every
    /// event after the first. Only for tests on a real clock.
    SlowStream {
        /// The reply text.
        text: String,
        /// Pause between events.
        gap: Duration,
    },
}

impl Behaviour {
    /// A streamed reply in deltas of 4 characters.
    pub fn reply(text: impl Into<String>) -> Self {
        Behaviour::Reply { text: text.into(), stream: true, chunk_size: 4 }
    }

    /// A non-streamed (single JSON body) reply.
    pub fn reply_json(text: impl Into<String>) -> Self {
        Behaviour::Reply { text: text.into(), stream: false, chunk_size: 0 }
    }

    /// A status with the API's default error body and no `Retry-After`.
    pub fn status(code: u16) -> Self {
        Behaviour::Status { code, body: String::new(), retry_after: None }
    }

    /// A status with the API's default error body and a `Retry-After` value.
    pub fn status_retry_after(code: u16, retry_after: impl Into<String>) -> Self {
        Behaviour::Status { code, body: String::new(), retry_after: Some(retry_after.into()) }
    }
}

/// Which API a request came in on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Api {
    /// `POST /v1/chat/completions`.
    OpenAi,
    /// `POST /v1/messages`.
    Anthropic,
}

/// One request as received.
#[derive(Clone, Debug)]
pub struct RecordedRequest {
    /// The route it hit.
    pub api: Api,
    /// The request path.
    pub path: String,
    /// Headers, names lowercased, in arrival order.
    pub headers: Vec<(String, String)>,
    /// The body parsed as JSON (`Value::Null` if it was not JSON).
    pub body: Value,
}

impl RecordedRequest {
    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers.iter().find(|(k, _)| *k == name).map(|(_, v)| v.as_str())
    }
}

struct Shared {
    queue: Mutex<VecDeque<Behaviour>>,
    default: Mutex<Option<Behaviour>>,
    requests: Mutex<Vec<RecordedRequest>>,
    /// Requests received so far; waiters subscribe to it.
    seen: watch::Sender<usize>,
    shutdown: CancellationToken,
}

/// The fake LLM server. Dropping it stops the server (in-flight `Hang`s and streams end).
pub struct FakeLlm {
    addr: SocketAddr,
    shared: Arc<Shared>,
    task: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for FakeLlm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeLlm").field("addr", &self.addr).finish()
    }
}

impl FakeLlm {
    /// Binds `127.0.0.1:0` and spawns the server task (the only task it spawns).
    ///
    /// # Panics
    /// If the loopback port cannot be bound (a test environment failure).
    pub async fn start() -> FakeLlm {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("local_addr");
        let shared = Arc::new(Shared {
            queue: Mutex::new(VecDeque::new()),
            default: Mutex::new(None),
            requests: Mutex::new(Vec::new()),
            seen: watch::Sender::new(0),
            shutdown: CancellationToken::new(),
        });
        let app = Router::new()
            .route("/v1/chat/completions", post(openai_route))
            .route("/v1/messages", post(anthropic_route))
            .fallback(not_found)
            .with_state(shared.clone());
        let stop = shared.shutdown.clone();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).with_graceful_shutdown(stop.cancelled_owned()).await;
        });
        FakeLlm { addr, shared, task: Some(task) }
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The OpenAI-style base URL, `http://127.0.0.1:<port>/v1` (append `/chat/completions`).
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// The Anthropic-style base URL, `http://127.0.0.1:<port>` (append `/v1/messages`).
    pub fn anthropic_base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Queues a behaviour for a future request.
    pub fn push(&self, behaviour: Behaviour) {
        lock(&self.shared.queue).push_back(behaviour);
    }

    /// Queues several behaviours, in order.
    pub fn push_all(&self, behaviours: impl IntoIterator<Item = Behaviour>) {
        lock(&self.shared.queue).extend(behaviours);
    }

    /// Sets the behaviour used when the queue is empty (`None`: the `"fake: <text>"` echo).
    pub fn set_default(&self, behaviour: Option<Behaviour>) {
        *lock(&self.shared.default) = behaviour;
    }

    /// Behaviours queued and not yet used.
    pub fn pending(&self) -> usize {
        lock(&self.shared.queue).len()
    }

    /// Every request received so far, including rejected ones, in arrival order.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        lock(&self.shared.requests).clone()
    }

    /// Number of requests received so far (all routes, rejected ones included).
    pub fn request_count(&self) -> usize {
        *self.shared.seen.borrow()
    }

    /// Waits until at least `n` requests have been received (recorded before this returns).
    /// The way for a test to act "once the request is in flight" without sleeping.
    pub async fn wait_for_requests(&self, n: usize) {
        let mut rx = self.shared.seen.subscribe();
        // The sender lives in `self.shared`, so the channel cannot close while we wait.
        let _ = rx.wait_for(|c| *c >= n).await;
    }

    /// Stops the server and waits for its task to end.
    pub async fn stop(mut self) {
        self.shared.shutdown.cancel();
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for FakeLlm {
    fn drop(&mut self) {
        self.shared.shutdown.cancel();
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Publishes "one more request seen" when dropped, i.e. after the handler has taken its
/// scripted behaviour (or rejected the request), so a test reacting to `wait_for_requests`
/// can never have its next request take the behaviour meant for this one.
struct Published<'a>(&'a Shared);

impl Drop for Published<'_> {
    fn drop(&mut self) {
        self.0.seen.send_modify(|c| *c += 1);
    }
}

fn record<'a>(shared: &'a Shared, api: Api, path: &str, headers: &HeaderMap, body: &Bytes) -> (Value, Published<'a>) {
    let body = serde_json::from_slice::<Value>(body).unwrap_or(Value::Null);
    let headers = headers
        .iter()
        .map(|(k, v)| (k.as_str().to_string(), String::from_utf8_lossy(v.as_bytes()).into_owned()))
        .collect();
    lock(&shared.requests).push(RecordedRequest { api, path: path.to_string(), headers, body: body.clone() });
    (body, Published(shared))
}

fn next_behaviour(shared: &Shared, req: &Value) -> Behaviour {
    if let Some(b) = lock(&shared.queue).pop_front() {
        return b;
    }
    if let Some(b) = lock(&shared.default).clone() {
        return b;
    }
    Behaviour::Reply {
        text: format!("fake: {}", last_user_text(req)),
        stream: req["stream"].as_bool().unwrap_or(false),
        chunk_size: 4,
    }
}

/// The last `user` message's text: a string `content`, or the `text` of its content parts.
fn last_user_text(req: &Value) -> String {
    let Some(messages) = req["messages"].as_array() else {
        return String::new();
    };
    let Some(m) = messages.iter().rev().find(|m| m["role"] == "user") else {
        return String::new();
    };
    match &m["content"] {
        Value::String(s) => s.clone(),
        Value::Array(parts) => parts.iter().filter_map(|p| p["text"].as_str()).collect(),
        _ => String::new(),
    }
}

/// A rough token count: whitespace-separated words.
fn tokens(text: &str) -> u64 {
    text.split_whitespace().count() as u64
}

fn input_tokens(req: &Value) -> u64 {
    let mut n = tokens(req["system"].as_str().unwrap_or(""));
    if let Some(ms) = req["messages"].as_array() {
        n += ms.iter().map(|m| tokens(m["content"].as_str().unwrap_or(""))).sum::<u64>();
    }
    n
}

fn pieces(text: &str, chunk_size: usize) -> Vec<String> {
    if text.is_empty() {
        return Vec::new();
    }
    if chunk_size == 0 {
        return vec![text.to_string()];
    }
    let chars: Vec<char> = text.chars().collect();
    chars.chunks(chunk_size).map(|c| c.iter().collect()).collect()
}

fn json_response(status: u16, body: impl Into<Body>, retry_after: Option<&str>) -> Response {
    let mut b = Response::builder()
        .status(StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR))
        .header(header::CONTENT_TYPE, "application/json");
    if let Some(ra) = retry_after {
        b = b.header(header::RETRY_AFTER, ra);
    }
    b.body(body.into()).unwrap_or_default()
}

/// An SSE response from pre-rendered events, sleeping `gap` before every event after the
/// first; the body ends early when the server shuts down.
fn sse_response(events: Vec<String>, gap: Duration, shutdown: &CancellationToken) -> Response {
    let shutdown = shutdown.clone();
    let body = stream::iter(events.into_iter().enumerate())
        .then(move |(i, ev)| async move {
            if i > 0 && !gap.is_zero() {
                tokio::time::sleep(gap).await;
            }
            Ok::<Bytes, Infallible>(Bytes::from(ev))
        })
        .take_until(shutdown.cancelled_owned());
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "text/event-stream; charset=utf-8")
        .header(header::CACHE_CONTROL, "no-cache")
        .body(Body::from_stream(body))
        .unwrap_or_default()
}

async fn hang(shutdown: &CancellationToken) -> Response {
    shutdown.cancelled().await;
    json_response(503, "{}", None)
}

async fn not_found() -> Response {
    json_response(404, openai_error("Unknown request URL.", "invalid_request_error", None, None).to_string(), None)
}

// ---------------------------------------------------------------------------------------
// OpenAI Chat Completions

fn openai_error(message: &str, kind: &str, param: Option<&str>, code: Option<&str>) -> Value {
    json!({"error": {"message": message, "type": kind, "param": param, "code": code}})
}

fn openai_type_for(status: u16) -> &'static str {
    match status {
        401 => "authentication_error",
        403 => "permission_error",
        404 => "not_found_error",
        429 => "rate_limit_exceeded",
        400..=499 => "invalid_request_error",
        _ => "server_error",
    }
}

struct OpenAiChunks {
    id: String,
    model: String,
    include_usage: bool,
}

impl OpenAiChunks {
    fn chunk(&self, delta: Value, finish_reason: Option<&str>) -> String {
        let mut c = json!({
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": 1_700_000_000u64,
            "model": self.model,
            "system_fingerprint": "fp_fake",
            "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish_reason}],
        });
        if self.include_usage {
            c["usage"] = Value::Null;
        }
        format!("data: {c}\n\n")
    }

    fn content(&self, text: &str, chunk_size: usize) -> Vec<String> {
        let mut out = vec![self.chunk(json!({"role": "assistant", "content": ""}), None)];
        out.extend(pieces(text, chunk_size).iter().map(|p| self.chunk(json!({"content": p}), None)));
        out
    }

    fn finish(&self, prompt_tokens: u64, completion_tokens: u64) -> Vec<String> {
        let mut out = vec![self.chunk(json!({}), Some("stop"))];
        if self.include_usage {
            let usage = json!({
                "id": self.id,
                "object": "chat.completion.chunk",
                "created": 1_700_000_000u64,
                "model": self.model,
                "system_fingerprint": "fp_fake",
                "choices": [],
                "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                          "total_tokens": prompt_tokens + completion_tokens},
            });
            out.push(format!("data: {usage}\n\n"));
        }
        out.push("data: [DONE]\n\n".to_string());
        out
    }
}

async fn openai_route(State(shared): State<Arc<Shared>>, headers: HeaderMap, raw: Bytes) -> Response {
    let (req, published) = record(&shared, Api::OpenAi, "/v1/chat/completions", &headers, &raw);
    if !req.is_object() {
        let msg = "We could not parse the JSON body of your request. (HINT: This likely means you aren't using your HTTP library correctly. The OpenAI API expects a JSON payload, but what was sent was not valid JSON.)";
        return json_response(400, openai_error(msg, "invalid_request_error", None, None).to_string(), None);
    }
    if req["model"].as_str().is_none_or(str::is_empty) {
        let e = openai_error("you must provide a model parameter", "invalid_request_error", None, None);
        return json_response(400, e.to_string(), None);
    }
    if !req["messages"].is_array() {
        let e = openai_error(
            "Missing required parameter: 'messages'.",
            "invalid_request_error",
            Some("messages"),
            Some("missing_required_parameter"),
        );
        return json_response(400, e.to_string(), None);
    }
    let n = lock(&shared.requests).len();
    let wants_stream = req["stream"].as_bool().unwrap_or(false);
    let chunks = OpenAiChunks {
        id: format!("chatcmpl-fake{n}"),
        model: req["model"].as_str().unwrap_or("").to_string(),
        include_usage: wants_stream && req["stream_options"]["include_usage"].as_bool() == Some(true),
    };
    let prompt_tokens = input_tokens(&req);
    let behaviour = next_behaviour(&shared, &req);
    drop(published);
    match behaviour {
        Behaviour::Reply { text, stream: true, chunk_size } => {
            let mut events = chunks.content(&text, chunk_size);
            events.extend(chunks.finish(prompt_tokens, tokens(&text)));
            sse_response(events, Duration::ZERO, &shared.shutdown)
        }
        Behaviour::Reply { text, stream: false, .. } => {
            let body = json!({
                "id": chunks.id,
                "object": "chat.completion",
                "created": 1_700_000_000u64,
                "model": chunks.model,
                "system_fingerprint": "fp_fake",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text, "refusal": null},
                             "logprobs": null, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": tokens(&text),
                          "total_tokens": prompt_tokens + tokens(&text)},
            });
            json_response(200, body.to_string(), None)
        }
        Behaviour::SlowStream { text, gap } => {
            let mut events = chunks.content(&text, 1);
            events.extend(chunks.finish(prompt_tokens, tokens(&text)));
            sse_response(events, gap, &shared.shutdown)
        }
        Behaviour::Truncated { partial_text } => {
            sse_response(chunks.content(&partial_text, 4), Duration::ZERO, &shared.shutdown)
        }
        Behaviour::Status { code, body, retry_after } => {
            let body = if body.is_empty() {
                openai_error(&format!("fake status {code}"), openai_type_for(code), None, None).to_string()
            } else {
                body
            };
            json_response(code, body, retry_after.as_deref())
        }
        Behaviour::ErrorBody200 { message } => {
            let e = openai_error(&message, "server_error", None, None);
            if wants_stream {
                sse_response(vec![format!("data: {e}\n\n")], Duration::ZERO, &shared.shutdown)
            } else {
                json_response(200, e.to_string(), None)
            }
        }
        Behaviour::BadJson => {
            if wants_stream {
                let events = vec![
                    chunks.chunk(json!({"role": "assistant", "content": ""}), None),
                    "data: {\"id\":\"chatcmpl-bad\",\"choices\":[{\"delta\":\n\n".to_string(),
                    "data: [DONE]\n\n".to_string(),
                ];
                sse_response(events, Duration::ZERO, &shared.shutdown)
            } else {
                json_response(200, "{\"id\":\"chatcmpl-bad\",\"choices\":[", None)
            }
        }
        Behaviour::Hang => hang(&shared.shutdown).await,
    }
}

// ---------------------------------------------------------------------------------------
// Anthropic Messages

fn anthropic_error(kind: &str, message: &str) -> Value {
    json!({"type": "error", "error": {"type": kind, "message": message}})
}

/// Anthropic's documented error `type` for a status ("Errors" page).
fn anthropic_type_for(status: u16) -> &'static str {
    match status {
        401 => "authentication_error",
        402 => "billing_error",
        403 => "permission_error",
        404 => "not_found_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        504 => "timeout_error",
        529 => "overloaded_error",
        400..=499 => "invalid_request_error",
        _ => "api_error",
    }
}

fn anthropic_event(name: &str, data: Value) -> String {
    format!("event: {name}\ndata: {data}\n\n")
}

struct AnthropicEvents {
    id: String,
    model: String,
    input_tokens: u64,
}

impl AnthropicEvents {
    fn start(&self, text: &str, chunk_size: usize) -> Vec<String> {
        let mut out = vec![
            anthropic_event(
                "message_start",
                json!({"type": "message_start", "message": {
                    "id": self.id, "type": "message", "role": "assistant", "content": [],
                    "model": self.model, "stop_reason": null, "stop_sequence": null,
                    "usage": {"input_tokens": self.input_tokens, "output_tokens": 1}}}),
            ),
            anthropic_event(
                "content_block_start",
                json!({"type": "content_block_start", "index": 0,
                       "content_block": {"type": "text", "text": ""}}),
            ),
            anthropic_event("ping", json!({"type": "ping"})),
        ];
        out.extend(pieces(text, chunk_size).iter().map(|p| {
            anthropic_event(
                "content_block_delta",
                json!({"type": "content_block_delta", "index": 0,
                       "delta": {"type": "text_delta", "text": p}}),
            )
        }));
        out
    }

    fn finish(&self, output_tokens: u64) -> Vec<String> {
        vec![
            anthropic_event("content_block_stop", json!({"type": "content_block_stop", "index": 0})),
            anthropic_event(
                "message_delta",
                json!({"type": "message_delta",
                       "delta": {"stop_reason": "end_turn", "stop_sequence": null},
                       "usage": {"output_tokens": output_tokens}}),
            ),
            anthropic_event("message_stop", json!({"type": "message_stop"})),
        ]
    }
}

fn anthropic_reject(status: u16, kind: &str, message: &str) -> Response {
    json_response(status, anthropic_error(kind, message).to_string(), None)
}

async fn anthropic_route(State(shared): State<Arc<Shared>>, headers: HeaderMap, raw: Bytes) -> Response {
    let (req, published) = record(&shared, Api::Anthropic, "/v1/messages", &headers, &raw);
    if headers.get("x-api-key").is_none() {
        return anthropic_reject(401, "authentication_error", "x-api-key header is required");
    }
    if headers.get("anthropic-version").is_none() {
        return anthropic_reject(400, "invalid_request_error", "anthropic-version: header is required");
    }
    if !req.is_object() {
        return anthropic_reject(
            400,
            "invalid_request_error",
            "There was an issue with your request body: invalid JSON",
        );
    }
    for field in ["model", "max_tokens", "messages"] {
        if req[field].is_null() {
            return anthropic_reject(400, "invalid_request_error", &format!("{field}: Field required"));
        }
    }
    let Some(messages) = req["messages"].as_array() else {
        return anthropic_reject(400, "invalid_request_error", "messages: Input should be a valid list");
    };
    if messages.iter().any(|m| m["role"] == "system") {
        return anthropic_reject(
            400,
            "invalid_request_error",
            "messages: Unexpected role \"system\". The Messages API accepts a top-level `system` parameter, not \"system\" as an input message role.",
        );
    }
    let n = lock(&shared.requests).len();
    let wants_stream = req["stream"].as_bool().unwrap_or(false);
    let ev = AnthropicEvents {
        id: format!("msg_fake{n}"),
        model: req["model"].as_str().unwrap_or("").to_string(),
        input_tokens: input_tokens(&req),
    };
    let behaviour = next_behaviour(&shared, &req);
    drop(published);
    match behaviour {
        Behaviour::Reply { text, stream: true, chunk_size } => {
            let mut events = ev.start(&text, chunk_size);
            events.extend(ev.finish(tokens(&text)));
            sse_response(events, Duration::ZERO, &shared.shutdown)
        }
        Behaviour::Reply { text, stream: false, .. } => {
            let body = json!({
                "id": ev.id, "type": "message", "role": "assistant", "model": ev.model,
                "content": [{"type": "text", "text": text}],
                "stop_reason": "end_turn", "stop_sequence": null,
                "usage": {"input_tokens": ev.input_tokens, "output_tokens": tokens(&text)},
            });
            json_response(200, body.to_string(), None)
        }
        Behaviour::SlowStream { text, gap } => {
            let mut events = ev.start(&text, 1);
            events.extend(ev.finish(tokens(&text)));
            sse_response(events, gap, &shared.shutdown)
        }
        Behaviour::Truncated { partial_text } => {
            sse_response(ev.start(&partial_text, 4), Duration::ZERO, &shared.shutdown)
        }
        Behaviour::Status { code, body, retry_after } => {
            let body = if body.is_empty() {
                anthropic_error(anthropic_type_for(code), &format!("fake status {code}")).to_string()
            } else {
                body
            };
            json_response(code, body, retry_after.as_deref())
        }
        Behaviour::ErrorBody200 { message } => {
            let e = anthropic_error("api_error", &message);
            if wants_stream {
                let mut events = ev.start("", 0);
                events.push(anthropic_event("error", e));
                sse_response(events, Duration::ZERO, &shared.shutdown)
            } else {
                json_response(200, e.to_string(), None)
            }
        }
        Behaviour::BadJson => {
            if wants_stream {
                let mut events = ev.start("", 0);
                events.push(
                    "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"delta\":\n\n".to_string(),
                );
                sse_response(events, Duration::ZERO, &shared.shutdown)
            } else {
                json_response(200, "{\"type\":\"message\",\"content\":[", None)
            }
        }
        Behaviour::Hang => hang(&shared.shutdown).await,
    }
}
