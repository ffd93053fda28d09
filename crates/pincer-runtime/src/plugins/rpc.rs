//! JSON-RPC 2.0 over a plugin process's stdin/stdout: one JSON object per `\n`-terminated
//! UTF-8 line, at most [`MAX_LINE`] bytes. One writer task owns stdin, one reader task owns
//! stdout, one task forwards stderr to the gateway log (tagged with the plugin id) and keeps
//! its tail for `status`.
//!
//! Nothing a plugin writes can crash the gateway: a malformed line (bad JSON, not JSON-RPC, an
//! unknown response id, an unknown method) is logged (rate-limited) and ignored; requests to
//! unknown methods get the JSON-RPC error `-32601`. A plugin that floods stdout is throttled
//! (the reader stops reading, so the plugin blocks on its pipe), and stderr lines beyond a
//! budget are counted instead of logged.

use super::Services;
use crate::supervisor::Supervisor;
use crate::SendRequest;
use serde_json::{json, Map, Value};
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{ChildStderr, ChildStdin, ChildStdout};
use tokio::sync::{mpsc, oneshot, Semaphore};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Longest line either side may send (16 MiB).
pub const MAX_LINE: usize = 16 * 1024 * 1024;
/// Calls in flight per plugin; the excess gets `UNAVAILABLE`.
pub const MAX_INFLIGHT: usize = 64;
/// Longest stderr line kept (longer ones are truncated).
pub const MAX_STDERR_LINE: usize = 8 * 1024;
/// Stderr lines kept for `status` / `plugins.list`.
pub const STDERR_TAIL: usize = 40;
/// Sustained stdout lines per second before the reader throttles the plugin.
pub const STDOUT_LINES_PER_SEC: f64 = 2000.0;
/// Sustained stdout bytes per second before the reader throttles the plugin.
pub const STDOUT_BYTES_PER_SEC: f64 = 64.0 * 1024.0 * 1024.0;
/// Log lines per second a plugin may cause (stderr, `gateway.log`, protocol warnings).
pub const LOG_LINES_PER_SEC: f64 = 50.0;
/// Burst of log lines.
pub const LOG_BURST: f64 = 200.0;
/// `gateway.send` requests of one plugin handled at once.
pub const MAX_SENDS: usize = 16;

/// How a call to the plugin failed.
#[derive(Clone, Debug, PartialEq)]
pub enum RpcError {
    /// The plugin answered with a JSON-RPC error.
    Remote {
        /// JSON-RPC error code.
        code: i64,
        /// Its message.
        message: String,
        /// Its `data`, if any.
        data: Option<Value>,
    },
    /// No answer in time.
    Timeout,
    /// The process is gone or its stdio closed.
    Closed(String),
    /// The request would exceed [`MAX_LINE`].
    TooLarge(usize),
}

impl std::fmt::Display for RpcError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RpcError::Remote { code, message, .. } => write!(f, "{message} (JSON-RPC error {code})"),
            RpcError::Timeout => write!(f, "timed out"),
            RpcError::Closed(why) => write!(f, "connection closed: {why}"),
            RpcError::TooLarge(n) => write!(f, "request of {n} bytes exceeds the {MAX_LINE}-byte line limit"),
        }
    }
}

type Pending = Mutex<HashMap<u64, oneshot::Sender<Result<Value, RpcError>>>>;

/// The gateway's end of one plugin process's stdio.
pub struct Conn {
    plugin: Arc<str>,
    out: mpsc::Sender<String>,
    pending: Pending,
    next_id: AtomicU64,
    /// Permits for calls in flight ([`MAX_INFLIGHT`]).
    pub inflight: Arc<Semaphore>,
    closed: CancellationToken,
    close_stdin: CancellationToken,
}

/// The I/O tasks of a connection.
pub struct IoTasks {
    /// The stdout reader.
    pub reader: JoinHandle<()>,
    /// The stdin writer.
    pub writer: JoinHandle<()>,
    /// The stderr forwarder.
    pub stderr: JoinHandle<()>,
}

/// What the I/O tasks need besides the pipes.
pub struct ConnContext {
    /// Plugin id (log tag, event namespace).
    pub plugin: Arc<str>,
    /// Where tasks are spawned.
    pub sup: Supervisor,
    /// Gateway services for the plugin's requests.
    pub services: Arc<dyn Services>,
    /// The stderr tail, shared with the instance.
    pub tail: Arc<Mutex<VecDeque<String>>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Removes a pending entry when the call ends early (timeout, caller dropped).
struct PendingGuard<'a> {
    conn: &'a Conn,
    id: u64,
}

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        lock(&self.conn.pending).remove(&self.id);
    }
}

impl Conn {
    /// Wire the pipes of a freshly spawned process and start its I/O tasks.
    pub fn start(
        stdin: ChildStdin,
        stdout: ChildStdout,
        stderr: ChildStderr,
        ctx: ConnContext,
    ) -> (Arc<Conn>, IoTasks) {
        let (tx, rx) = mpsc::channel::<String>(256);
        let conn = Arc::new(Conn {
            plugin: ctx.plugin.clone(),
            out: tx,
            pending: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            inflight: Arc::new(Semaphore::new(MAX_INFLIGHT)),
            closed: CancellationToken::new(),
            close_stdin: CancellationToken::new(),
        });
        let ctx = Arc::new(ctx);
        let writer = ctx.sup.spawn(
            "plugin-stdin",
            write_stdin(stdin, rx, conn.close_stdin.clone(), conn.closed.clone(), ctx.plugin.clone()),
        );
        let reader = ctx.sup.spawn("plugin-stdout", read_stdout(stdout, conn.clone(), ctx.clone()));
        let sup = ctx.sup.clone();
        let stderr = sup.spawn("plugin-stderr", read_stderr(stderr, ctx));
        (conn, IoTasks { reader, writer, stderr })
    }

    /// Send a request and wait up to `timeout` for its answer.
    pub async fn request(&self, method: &str, params: Value, timeout: Duration) -> Result<Value, RpcError> {
        if self.closed.is_cancelled() {
            return Err(RpcError::Closed("the plugin process has exited".into()));
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let line = json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}).to_string();
        if line.len() > MAX_LINE {
            return Err(RpcError::TooLarge(line.len()));
        }
        let (tx, rx) = oneshot::channel();
        lock(&self.pending).insert(id, tx);
        let _guard = PendingGuard { conn: self, id };
        let call = async {
            self.out.send(line).await.map_err(|_| RpcError::Closed("the plugin's stdin is closed".into()))?;
            rx.await.unwrap_or_else(|_| Err(RpcError::Closed("the plugin process has exited".into())))
        };
        tokio::select! {
            r = tokio::time::timeout(timeout, call) => r.unwrap_or(Err(RpcError::Timeout)),
            _ = self.closed.cancelled() => {
                // The answer may have raced the close.
                Err(RpcError::Closed("the plugin process has exited".into()))
            }
        }
    }

    /// Stop writing to the plugin: its stdin is closed (EOF) once queued lines are written.
    pub fn close_stdin(&self) {
        self.close_stdin.cancel();
    }

    /// The process is gone: fail every pending call with `why` and stop the writer.
    pub fn close(&self, why: &str) {
        self.closed.cancel();
        let pending: Vec<_> = lock(&self.pending).drain().collect();
        for (_, tx) in pending {
            let _ = tx.send(Err(RpcError::Closed(why.to_string())));
        }
    }

    /// True once [`Conn::close`] ran.
    pub fn is_closed(&self) -> bool {
        self.closed.is_cancelled()
    }

    /// Calls in flight now.
    pub fn in_flight(&self) -> usize {
        MAX_INFLIGHT.saturating_sub(self.inflight.available_permits())
    }

    fn respond(&self, line: String) {
        // A full queue means the plugin does not read its stdin; dropping the answer is its
        // own problem and must not block the reader.
        if self.out.try_send(line).is_err() {
            tracing::warn!(plugin = %self.plugin, "plugin does not read its stdin; an answer was dropped");
        }
    }
}

async fn write_stdin(
    mut stdin: ChildStdin,
    mut rx: mpsc::Receiver<String>,
    close: CancellationToken,
    closed: CancellationToken,
    plugin: Arc<str>,
) {
    loop {
        let line = tokio::select! {
            biased;
            l = rx.recv() => match l {
                Some(l) => l,
                None => break,
            },
            _ = close.cancelled() => break,
            _ = closed.cancelled() => break,
        };
        let mut line = line;
        line.push('\n');
        let write = stdin.write_all(line.as_bytes());
        let res = tokio::select! {
            r = write => r,
            _ = close.cancelled() => break,
            _ = closed.cancelled() => break,
        };
        if let Err(e) = res {
            tracing::debug!(plugin = %plugin, error = %e, "plugin stdin closed");
            break;
        }
    }
    let _ = stdin.shutdown().await;
}

/// A token bucket: `rate` tokens per second, at most `burst` saved up.
#[derive(Debug)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket.
    pub fn new(rate: f64, burst: f64) -> Self {
        TokenBucket { rate, burst, tokens: burst, last: Instant::now() }
    }

    fn refill(&mut self) {
        let now = Instant::now();
        self.tokens = (self.tokens + now.duration_since(self.last).as_secs_f64() * self.rate).min(self.burst);
        self.last = now;
    }

    /// Take `n` tokens if there are enough.
    pub fn try_take(&mut self, n: f64) -> bool {
        self.refill();
        if self.tokens >= n {
            self.tokens -= n;
            true
        } else {
            false
        }
    }

    /// Take `n` tokens, waiting for them (a debt larger than the burst is waited off too).
    /// Returns whether it had to wait.
    pub async fn take(&mut self, n: f64) -> bool {
        self.refill();
        self.tokens -= n;
        if self.tokens >= 0.0 {
            return false;
        }
        let wait = Duration::from_secs_f64(-self.tokens / self.rate);
        tokio::time::sleep(wait).await;
        self.refill();
        true
    }
}

/// Rate-limited logging for one plugin: at most [`LOG_LINES_PER_SEC`] lines; what is dropped
/// is counted and reported with the next line that gets through.
struct LogBudget {
    bucket: TokenBucket,
    suppressed: u64,
}

impl LogBudget {
    fn new() -> Self {
        LogBudget { bucket: TokenBucket::new(LOG_LINES_PER_SEC, LOG_BURST), suppressed: 0 }
    }

    /// May a line be logged now? Reports suppressed lines first.
    fn allow(&mut self, plugin: &str) -> bool {
        if !self.bucket.try_take(1.0) {
            self.suppressed += 1;
            return false;
        }
        if self.suppressed > 0 {
            tracing::warn!(plugin = %plugin, suppressed = self.suppressed, "plugin log output throttled; lines were dropped");
            self.suppressed = 0;
        }
        true
    }
}

/// Outcome of [`read_line_limited`].
#[derive(Debug, PartialEq, Eq)]
pub enum LineRead {
    /// A line (without its `\n`) is in the buffer.
    Line,
    /// A line longer than the limit: the buffer holds its first `max` bytes; `usize` is its
    /// full length.
    TooLong(usize),
    /// End of stream.
    Eof,
}

/// Read one `\n`-terminated line into `buf` (cleared first), keeping at most `max` bytes and
/// consuming the rest of an overlong line. A last line without `\n` counts as a line.
pub async fn read_line_limited<R: AsyncBufRead + Unpin>(
    r: &mut R,
    buf: &mut Vec<u8>,
    max: usize,
) -> std::io::Result<LineRead> {
    buf.clear();
    let mut total = 0usize;
    loop {
        let avail = r.fill_buf().await?;
        if avail.is_empty() {
            return Ok(match total {
                0 => LineRead::Eof,
                n if n > max => LineRead::TooLong(n),
                _ => LineRead::Line,
            });
        }
        let (chunk, used, done) = match avail.iter().position(|b| *b == b'\n') {
            Some(i) => (&avail[..i], i + 1, true),
            None => (avail, avail.len(), false),
        };
        let room = max.saturating_sub(buf.len());
        buf.extend_from_slice(&chunk[..chunk.len().min(room)]);
        total += chunk.len();
        r.consume(used);
        if done {
            return Ok(if total > max { LineRead::TooLong(total) } else { LineRead::Line });
        }
    }
}

fn preview(line: &[u8]) -> String {
    let s = String::from_utf8_lossy(&line[..line.len().min(200)]).into_owned();
    if line.len() > 200 {
        format!("{s}…")
    } else {
        s
    }
}

async fn read_stdout(stdout: ChildStdout, conn: Arc<Conn>, ctx: Arc<ConnContext>) {
    let mut r = BufReader::with_capacity(64 * 1024, stdout);
    let mut buf = Vec::new();
    let mut lines = TokenBucket::new(STDOUT_LINES_PER_SEC, STDOUT_LINES_PER_SEC);
    let mut bytes = TokenBucket::new(STDOUT_BYTES_PER_SEC, STDOUT_BYTES_PER_SEC);
    let mut log = LogBudget::new();
    let sends = Arc::new(Semaphore::new(MAX_SENDS));
    loop {
        let read = match read_line_limited(&mut r, &mut buf, MAX_LINE).await {
            Ok(r) => r,
            Err(e) => {
                tracing::debug!(plugin = %ctx.plugin, error = %e, "plugin stdout read failed");
                return;
            }
        };
        match read {
            LineRead::Eof => return,
            LineRead::TooLong(n) => {
                if log.allow(&ctx.plugin) {
                    tracing::warn!(plugin = %ctx.plugin, bytes = n, limit = MAX_LINE, "plugin sent a line over the limit; ignored");
                }
                bytes.take(n as f64).await;
                continue;
            }
            LineRead::Line => {}
        }
        let throttled = lines.take(1.0).await | bytes.take(buf.len() as f64).await;
        if throttled && log.allow(&ctx.plugin) {
            tracing::warn!(plugin = %ctx.plugin, "plugin output throttled");
        }
        if buf.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let msg = match serde_json::from_slice::<Value>(&buf) {
            Ok(Value::Object(m)) => m,
            Ok(_) | Err(_) => {
                if log.allow(&ctx.plugin) {
                    tracing::warn!(plugin = %ctx.plugin, line = %preview(&buf), "malformed line from plugin (not a JSON object); ignored");
                }
                continue;
            }
        };
        if let Err(why) = handle_message(msg, &conn, &ctx, &sends, &mut log).await {
            if log.allow(&ctx.plugin) {
                tracing::warn!(plugin = %ctx.plugin, line = %preview(&buf), "malformed message from plugin ({why}); ignored");
            }
        }
    }
}

/// Route one message from the plugin. Errors: why it is malformed (logged by the caller).
async fn handle_message(
    mut msg: Map<String, Value>,
    conn: &Arc<Conn>,
    ctx: &Arc<ConnContext>,
    sends: &Arc<Semaphore>,
    log: &mut LogBudget,
) -> Result<(), String> {
    if msg.get("jsonrpc").and_then(Value::as_str) != Some("2.0") {
        return Err("missing \"jsonrpc\": \"2.0\"".into());
    }
    let id = msg.remove("id");
    match msg.remove("method") {
        None => {
            // A response to one of our requests.
            let id = id.and_then(|v| v.as_u64()).ok_or("a response without a numeric id")?;
            let Some(tx) = lock(&conn.pending).remove(&id) else {
                return Err(format!("a response to unknown request id {id}"));
            };
            let outcome = match (msg.remove("result"), msg.remove("error")) {
                (Some(r), None) => Ok(r),
                (None, Some(e)) => Err(remote_error(e)),
                _ => Err(RpcError::Remote {
                    code: -32603,
                    message: "the plugin sent a response with neither or both of result and error".into(),
                    data: None,
                }),
            };
            let _ = tx.send(outcome);
            Ok(())
        }
        Some(Value::String(method)) => {
            let params = msg.remove("params").unwrap_or(Value::Null);
            match id {
                None | Some(Value::Null) => notification(&method, params, ctx, log),
                Some(id) => {
                    request(method, params, id, conn, ctx, sends).await;
                    Ok(())
                }
            }
        }
        Some(_) => Err("\"method\" is not a string".into()),
    }
}

fn remote_error(e: Value) -> RpcError {
    let code = e.get("code").and_then(Value::as_i64);
    let message = e.get("message").and_then(Value::as_str);
    match (code, message) {
        (Some(code), Some(message)) => {
            RpcError::Remote { code, message: message.to_string(), data: e.get("data").cloned() }
        }
        _ => RpcError::Remote { code: -32603, message: format!("the plugin sent a malformed error: {e}"), data: None },
    }
}

fn notification(method: &str, params: Value, ctx: &ConnContext, log: &mut LogBudget) -> Result<(), String> {
    match method {
        "gateway.emit" => {
            let event = params.get("event").and_then(Value::as_str).ok_or("gateway.emit without a string event")?;
            let prefix = format!("{}.", ctx.plugin);
            if !event.starts_with(&prefix) || event.len() == prefix.len() {
                return Err(format!("gateway.emit event {event:?} must start with {prefix:?}"));
            }
            let payload = params.get("payload").cloned().unwrap_or(Value::Null);
            ctx.services.emit(event, payload);
            Ok(())
        }
        "gateway.log" => {
            let message =
                params.get("message").and_then(Value::as_str).ok_or("gateway.log without a string message")?;
            if !log.allow(&ctx.plugin) {
                return Ok(());
            }
            match params.get("level").and_then(Value::as_str).unwrap_or("info") {
                "error" => tracing::error!(plugin = %ctx.plugin, "{message}"),
                "warn" | "warning" => tracing::warn!(plugin = %ctx.plugin, "{message}"),
                "debug" => tracing::debug!(plugin = %ctx.plugin, "{message}"),
                "trace" => tracing::trace!(plugin = %ctx.plugin, "{message}"),
                _ => tracing::info!(plugin = %ctx.plugin, "{message}"),
            }
            Ok(())
        }
        other => Err(format!("unknown notification {other:?}")),
    }
}

fn rpc_error_line(id: &Value, code: i64, message: &str) -> String {
    json!({"jsonrpc": "2.0", "id": id, "error": {"code": code, "message": message}}).to_string()
}

async fn request(
    method: String,
    params: Value,
    id: Value,
    conn: &Arc<Conn>,
    ctx: &Arc<ConnContext>,
    sends: &Arc<Semaphore>,
) {
    if method != "gateway.send" {
        tracing::warn!(plugin = %ctx.plugin, method = %method, "plugin called an unknown gateway method");
        conn.respond(rpc_error_line(&id, -32601, &format!("method not found: {method}")));
        return;
    }
    let req = match send_request(&ctx.plugin, &params) {
        Ok(r) => r,
        Err(message) => {
            conn.respond(rpc_error_line(&id, -32602, &message));
            return;
        }
    };
    // Bounded concurrency: waiting here stops the reader, which throttles the plugin.
    let Ok(permit) = sends.clone().acquire_owned().await else { return };
    let (conn, services) = (conn.clone(), ctx.services.clone());
    ctx.sup.spawn("plugin-gateway-send", async move {
        let line = match services.send(req).await {
            Ok(delivery_id) => json!({"jsonrpc": "2.0", "id": id, "result": {"deliveryId": delivery_id}}).to_string(),
            Err(e @ crate::RuntimeError::Invalid(_)) => rpc_error_line(&id, -32602, &e.to_string()),
            Err(e) => rpc_error_line(&id, -32000, &e.to_string()),
        };
        conn.respond(line);
        drop(permit);
    });
}

/// `gateway.send` params → a [`SendRequest`]; the idempotency key is namespaced with the
/// plugin id (`plugin:<id>:<key>`). Errors: the invalid-params message.
pub fn send_request(plugin: &str, p: &Value) -> Result<SendRequest, String> {
    let s = |k: &str| p.get(k).and_then(Value::as_str).filter(|v| !v.is_empty()).map(str::to_string);
    let need = |k: &str| s(k).ok_or_else(|| format!("invalid params: missing required string {k:?}"));
    if !p.is_object() {
        return Err("invalid params: expected an object".into());
    }
    let key = need("idempotencyKey")?;
    Ok(SendRequest {
        channel: need("channel")?,
        account: s("accountId"),
        to: need("to")?,
        thread_id: s("threadId"),
        text: need("text")?,
        idempotency_key: Some(format!("plugin:{plugin}:{key}")),
        session_key: None,
    })
}

async fn read_stderr(stderr: ChildStderr, ctx: Arc<ConnContext>) {
    let mut r = BufReader::new(stderr);
    let mut buf = Vec::new();
    let mut log = LogBudget::new();
    loop {
        match read_line_limited(&mut r, &mut buf, MAX_STDERR_LINE).await {
            Ok(LineRead::Eof) | Err(_) => return,
            Ok(LineRead::Line) | Ok(LineRead::TooLong(_)) => {}
        }
        let line = String::from_utf8_lossy(&buf).trim_end().to_string();
        {
            let mut tail = lock(&ctx.tail);
            if tail.len() == STDERR_TAIL {
                tail.pop_front();
            }
            tail.push_back(line.clone());
        }
        if log.allow(&ctx.plugin) {
            tracing::info!(plugin = %ctx.plugin, stream = "stderr", "{line}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn lines_are_limited() {
        let data = b"short\nthis one is too long\n\nlast".to_vec();
        let mut r = BufReader::with_capacity(4, &data[..]);
        let mut buf = Vec::new();
        assert_eq!(read_line_limited(&mut r, &mut buf, 8).await.unwrap(), LineRead::Line);
        assert_eq!(buf, b"short");
        assert_eq!(read_line_limited(&mut r, &mut buf, 8).await.unwrap(), LineRead::TooLong(20));
        assert_eq!(buf, b"this one");
        assert_eq!(read_line_limited(&mut r, &mut buf, 8).await.unwrap(), LineRead::Line);
        assert_eq!(buf, b"");
        assert_eq!(read_line_limited(&mut r, &mut buf, 8).await.unwrap(), LineRead::Line);
        assert_eq!(buf, b"last");
        assert_eq!(read_line_limited(&mut r, &mut buf, 8).await.unwrap(), LineRead::Eof);
    }

    #[tokio::test(start_paused = true)]
    async fn bucket_throttles() {
        let mut b = TokenBucket::new(10.0, 2.0);
        assert!(!b.take(1.0).await);
        assert!(!b.take(1.0).await);
        let t0 = Instant::now();
        assert!(b.take(1.0).await, "the third token needs a wait");
        assert!(t0.elapsed() >= Duration::from_millis(99));
        assert!(!b.try_take(1.0));
    }

    #[test]
    fn send_params() {
        let r = send_request(
            "p",
            &json!({"channel": "webhook", "to": "c", "text": "hi", "idempotencyKey": "k", "threadId": "t"}),
        )
        .unwrap();
        assert_eq!(r.idempotency_key.as_deref(), Some("plugin:p:k"));
        assert_eq!(r.thread_id.as_deref(), Some("t"));
        assert!(send_request("p", &json!({"channel": "webhook", "to": "c", "text": "hi"}))
            .unwrap_err()
            .contains("idempotencyKey"));
        assert!(send_request("p", &json!([])).is_err());
    }
}
