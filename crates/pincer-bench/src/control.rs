//! Load against a running gateway's control plane: `ws-chat`, `http-chat`, `idle-ws`.
//!
//! Closed loop: each worker owns one connection and has one request in flight at a time, so
//! `--concurrency` is the number of requests in flight. Workers connect and run their warm-up
//! requests first; the clock starts when every worker is ready. Every request has a timeout and
//! the whole run a deadline, so a stuck gateway ends the run with errors instead of hanging it.

use crate::stats::{self, Outcome};
use anyhow::{anyhow, bail, Context, Result};
use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use serde_json::{json, Value};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>>;

/// Where the gateway is.
#[derive(clap::Args, Debug, Clone)]
pub struct TargetArgs {
    /// Gateway address: `ws://HOST:PORT` as printed at start, `http://HOST:PORT` or `HOST:PORT`
    /// (default: `<state-dir>/gateway.addr`).
    #[arg(long)]
    url: Option<String>,
    /// Gateway token (default: `<state-dir>/gateway.token`).
    #[arg(long)]
    token: Option<String>,
    /// The gateway's state dir, read for the address, the token and the pid (`pincer.lock`) when
    /// those flags are not given.
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// The gateway's pid, for its RSS and CPU time (default: from `<state-dir>/pincer.lock`).
    #[arg(long)]
    pid: Option<u32>,
}

struct Target {
    /// `host:port`.
    authority: String,
    token: String,
    pid: Option<u32>,
}

impl TargetArgs {
    fn resolve(&self) -> Result<Target> {
        let read = |name: &str| -> Option<String> {
            let dir = self.state_dir.as_ref()?;
            std::fs::read_to_string(dir.join(name)).ok().map(|s| s.trim().to_string()).filter(|s| !s.is_empty())
        };
        let url = self.url.clone().or_else(|| read("gateway.addr")).context("--url (or --state-dir) is required")?;
        let token =
            self.token.clone().or_else(|| read("gateway.token")).context("--token (or --state-dir) is required")?;
        let pid = self.pid.or_else(|| read("pincer.lock").and_then(|s| s.parse().ok()));
        let rest = url.split_once("://").map_or(url.as_str(), |(_, r)| r);
        let authority = rest.split('/').next().unwrap_or_default().to_string();
        if authority.is_empty() {
            bail!("cannot read host:port from {url:?}");
        }
        Ok(Target { authority, token, pid })
    }
}

/// Flags shared by `ws-chat` and `http-chat`.
#[derive(clap::Args, Debug, Clone)]
pub struct LoadArgs {
    #[command(flatten)]
    target: TargetArgs,
    /// Workers, each with its own connection and one request in flight.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u64).range(1..=4096))]
    concurrency: u64,
    /// Measured requests, over all workers.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    requests: u64,
    /// Unmeasured requests per worker before the clock starts.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(0..=10_000))]
    warmup: u64,
    /// Per-request timeout in seconds (a timed-out request counts as an error).
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=600))]
    timeout_secs: u64,
    /// Stop sending after this many seconds; what did not complete counts as errors.
    #[arg(long, default_value_t = 120, value_parser = clap::value_parser!(u64).range(1..=3600))]
    max_secs: u64,
    /// Threads of the client's runtime (it shares the machine with the gateway).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=64))]
    threads: u64,
}

/// Flags of `http-chat`.
#[derive(clap::Args, Debug, Clone)]
pub struct HttpArgs {
    #[command(flatten)]
    load: LoadArgs,
    /// Send `user: <worker>` so each worker's requests share one session
    /// (`openai-user:<worker>`). Without it every request opens a new session, as a plain
    /// OpenAI client does.
    #[arg(long)]
    session_per_worker: bool,
}

/// Flags of `idle-ws`.
#[derive(clap::Args, Debug, Clone)]
pub struct IdleArgs {
    #[command(flatten)]
    target: TargetArgs,
    /// Idle authenticated WebSocket clients to open.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    clients: u64,
    /// Handshakes in flight while opening the clients.
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u64).range(1..=1024))]
    connect_concurrency: u64,
    /// Wait this long (ms) before each RSS reading, so the gateway is idle when read.
    #[arg(long, default_value_t = 2000, value_parser = clap::value_parser!(u64).range(0..=60_000))]
    settle_ms: u64,
}

fn runtime(threads: u64) -> Result<tokio::runtime::Runtime> {
    Ok(if threads <= 1 {
        tokio::runtime::Builder::new_current_thread().enable_all().build()?
    } else {
        tokio::runtime::Builder::new_multi_thread().worker_threads(threads as usize).enable_all().build()?
    })
}

/// A prefix unique to this run, so idempotency and session keys never repeat across runs.
fn run_nonce() -> String {
    let ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_millis();
    format!("b{:x}{:x}", std::process::id(), ms)
}

/// One worker's job: connect, warm up, wait for the start, run its share.
trait Worker: Send + 'static {
    type Conn: Send;
    fn connect(&self) -> impl std::future::Future<Output = Result<Self::Conn>> + Send;
    /// One request; `Ok` carries the measured latency.
    fn request(&self, conn: &mut Self::Conn, n: u64) -> impl std::future::Future<Output = Result<Duration>> + Send;
}

/// The gateway's CPU time when the clock starts (RSS is read at the end).
struct GatewayReading {
    cpu: Option<Duration>,
}

fn gateway_line(pid: Option<u32>, before: &GatewayReading, wall: Duration) -> String {
    let Some(pid) = pid else { return "gateway: pid unknown (pass --pid or --state-dir for CPU and RSS)".into() };
    let cpu = match (before.cpu, stats::cpu_time(&pid.to_string())) {
        (Some(a), Some(b)) => format!("{:.0}%", (b.saturating_sub(a)).as_secs_f64() / wall.as_secs_f64() * 100.0),
        _ => "?".into(),
    };
    let rss = stats::rss_kib(pid).map_or("?".into(), |k| format!("{:.1} MB", k as f64 / 1024.0));
    format!("gateway (pid {pid}): CPU {cpu} of one core during the run, RSS {rss} after")
}

fn run_load<W: Worker + Sync>(mode: &str, args: &LoadArgs, target: &Target, worker: Arc<W>) -> Result<()>
where
    W::Conn: 'static,
{
    let rt = runtime(args.threads)?;
    let n = args.concurrency;
    let per_req = Duration::from_secs(args.timeout_secs);
    let limit = Duration::from_secs(args.max_secs);
    let (out, wall, gw_before, client_cpu) = rt.block_on(async {
        let barrier = Arc::new(tokio::sync::Barrier::new(n as usize + 1));
        let mut tasks = Vec::new();
        for w in 0..n {
            let share = args.requests / n + u64::from(w < args.requests % n);
            let (worker, barrier, warmup) = (worker.clone(), barrier.clone(), args.warmup);
            tasks.push(tokio::spawn(async move {
                let setup = async {
                    let mut conn = tokio::time::timeout(per_req, worker.connect())
                        .await
                        .map_err(|_| anyhow!("connect timed out"))??;
                    for i in 0..warmup {
                        tokio::time::timeout(per_req, worker.request(&mut conn, w * 1_000_000_000 + i))
                            .await
                            .map_err(|_| anyhow!("warm-up request timed out"))?
                            .context("warm-up request")?;
                    }
                    Ok::<_, anyhow::Error>(conn)
                }
                .await;
                barrier.wait().await;
                let mut conn = setup?;
                let deadline = Instant::now() + limit;
                let mut out = Outcome { latencies_us: Vec::with_capacity(share as usize), ..Default::default() };
                for i in 0..share {
                    if Instant::now() >= deadline {
                        out.error(format!("deadline of {} s reached; requests not sent", limit.as_secs()));
                        out.errors += share - i - 1;
                        break;
                    }
                    let id = w * 1_000_000_000 + warmup + i;
                    match tokio::time::timeout(per_req, worker.request(&mut conn, id)).await {
                        Ok(Ok(d)) => out.latencies_us.push(d.as_micros() as u64),
                        Ok(Err(e)) => {
                            out.error(format!("{e:#}"));
                            // The connection may be broken: open a new one for the next request.
                            match tokio::time::timeout(per_req, worker.connect()).await {
                                Ok(Ok(c)) => conn = c,
                                _ => {
                                    out.error("reconnect failed; requests not sent".into());
                                    out.errors += share.saturating_sub(i + 2);
                                    break;
                                }
                            }
                        }
                        Err(_) => {
                            out.error(format!("timed out after {} s", per_req.as_secs()));
                            // A late answer would confuse the next request on this connection.
                            match tokio::time::timeout(per_req, worker.connect()).await {
                                Ok(Ok(c)) => conn = c,
                                _ => {
                                    out.error("reconnect failed; requests not sent".into());
                                    out.errors += share.saturating_sub(i + 2);
                                    break;
                                }
                            }
                        }
                    }
                }
                Ok::<_, anyhow::Error>(out)
            }));
        }
        barrier.wait().await;
        let gw_before = GatewayReading { cpu: target.pid.and_then(|p| stats::cpu_time(&p.to_string())) };
        let client_cpu = stats::cpu_time("self");
        let t0 = Instant::now();
        let mut out = Outcome::default();
        let mut setup_errors = Vec::new();
        for t in tasks {
            match t.await? {
                Ok(o) => out.merge(o),
                Err(e) => setup_errors.push(format!("{e:#}")),
            }
        }
        let wall = t0.elapsed();
        if !setup_errors.is_empty() {
            bail!("{} of {n} workers failed to start, e.g.: {}", setup_errors.len(), setup_errors[0]);
        }
        Ok::<_, anyhow::Error>((out, wall, gw_before, client_cpu))
    })?;
    println!("{}", stats::report(mode, n, args.warmup, out, wall));
    println!("{}", gateway_line(target.pid, &gw_before, wall));
    if let (Some(a), Some(b)) = (client_cpu, stats::cpu_time("self")) {
        println!(
            "client: CPU {:.0}% of one core during the run ({} runtime thread(s))",
            b.saturating_sub(a).as_secs_f64() / wall.as_secs_f64() * 100.0,
            args.threads
        );
    }
    Ok(())
}

// ---------------------------------------------------------------- ws-chat

struct WsChat {
    authority: String,
    token: String,
    nonce: String,
}

async fn ws_open(authority: &str, token: &str) -> Result<Ws> {
    let (mut ws, _) = tokio_tungstenite::connect_async_with_config(format!("ws://{authority}/ws"), None, true).await?;
    let challenge = next_text(&mut ws).await?;
    if !challenge.contains("connect.challenge") {
        bail!("expected connect.challenge, got {challenge}");
    }
    let connect = json!({"type": "req", "id": "connect", "method": "connect", "params": {
        "minProtocol": 4, "maxProtocol": 4,
        "client": {"id": "pincer-bench", "version": env!("CARGO_PKG_VERSION"), "platform": std::env::consts::OS, "mode": "backend"},
        "role": "operator", "scopes": ["operator.read", "operator.write"], "auth": {"token": token}}});
    ws.send(Message::Text(connect.to_string().into())).await?;
    loop {
        let text = next_text(&mut ws).await?;
        let f: Value = serde_json::from_str(&text)?;
        if f["type"] == "res" && f["id"] == "connect" {
            if f["ok"] != true || f["payload"]["type"] != "hello-ok" {
                bail!("connect refused: {}", f["error"]);
            }
            return Ok(ws);
        }
    }
}

async fn next_text(ws: &mut Ws) -> Result<String> {
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(t))) => return Ok(t.to_string()),
            Some(Ok(Message::Close(c))) => bail!("connection closed: {c:?}"),
            Some(Ok(_)) => continue,
            Some(Err(e)) => return Err(e.into()),
            None => bail!("connection closed"),
        }
    }
}

impl Worker for WsChat {
    type Conn = Ws;

    async fn connect(&self) -> Result<Ws> {
        ws_open(&self.authority, &self.token).await
    }

    async fn request(&self, ws: &mut Ws, n: u64) -> Result<Duration> {
        // One session per worker (`n / 1e9` is the worker's number).
        let session = format!("{}-w{}", self.nonce, n / 1_000_000_000);
        // The idempotency key is the run id; it is also the request id, so one quoted search
        // finds both the response and the run's events among everyone else's.
        let key = format!("{}-{n}", self.nonce);
        let quoted = format!("\"{key}\"");
        let frame = json!({"type": "req", "id": key, "method": "chat.send",
            "params": {"sessionKey": session, "message": format!("hello {n}"), "idempotencyKey": key}});
        let t0 = Instant::now();
        ws.send(Message::Text(frame.to_string().into())).await?;
        let (mut answered, mut done) = (false, None);
        loop {
            let text = next_text(ws).await?;
            if !text.contains(&quoted) {
                continue; // another connection's run (chat events go to every operator client)
            }
            let f: Value = serde_json::from_str(&text)?;
            if f["type"] == "res" && f["id"] == key.as_str() {
                if f["ok"] != true {
                    bail!("chat.send failed: {}", f["error"]);
                }
                answered = true;
            } else if f["type"] == "event" && f["event"] == "chat" && f["payload"]["runId"] == key.as_str() {
                match f["payload"]["state"].as_str() {
                    Some("final") => done = Some(t0.elapsed()),
                    Some("delta") => {}
                    other => bail!("run ended {other:?}: {}", f["payload"]),
                }
            }
            if let (true, Some(d)) = (answered, done) {
                return Ok(d);
            }
        }
    }
}

/// `ws-chat`.
pub fn ws_chat(args: LoadArgs) -> Result<()> {
    let target = args.target.resolve()?;
    stats::raise_nofile(args.concurrency * 2 + 64);
    let worker =
        Arc::new(WsChat { authority: target.authority.clone(), token: target.token.clone(), nonce: run_nonce() });
    run_load("ws-chat", &args, &target, worker)
}

// ---------------------------------------------------------------- http-chat

struct HttpChat {
    authority: String,
    bearer: String,
    nonce: String,
    session_per_worker: bool,
}

impl Worker for HttpChat {
    type Conn = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

    async fn connect(&self) -> Result<Self::Conn> {
        let stream = TcpStream::connect(&self.authority).await?;
        stream.set_nodelay(true)?;
        let (send, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(send)
    }

    async fn request(&self, send: &mut Self::Conn, n: u64) -> Result<Duration> {
        let mut body = json!({"model": "pincer", "messages": [{"role": "user", "content": format!("hello {n}")}]});
        if self.session_per_worker {
            body["user"] = json!(format!("{}-w{}", self.nonce, n / 1_000_000_000));
        }
        let req = hyper::Request::post("/v1/chat/completions")
            .header(hyper::header::HOST, &self.authority)
            .header(hyper::header::AUTHORIZATION, &self.bearer)
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body.to_string())))?;
        let t0 = Instant::now();
        send.ready().await?;
        let res = send.send_request(req).await?;
        let status = res.status();
        let bytes = res.into_body().collect().await?.to_bytes();
        let d = t0.elapsed();
        if status != hyper::StatusCode::OK {
            bail!("HTTP {status}: {}", String::from_utf8_lossy(&bytes[..bytes.len().min(200)]));
        }
        if !bytes.windows(17).any(|w| w == b"\"chat.completion\"") {
            bail!("not a chat.completion: {}", String::from_utf8_lossy(&bytes[..bytes.len().min(200)]));
        }
        Ok(d)
    }
}

/// `http-chat`.
pub fn http_chat(args: HttpArgs) -> Result<()> {
    let target = args.load.target.resolve()?;
    stats::raise_nofile(args.load.concurrency * 2 + 64);
    let worker = Arc::new(HttpChat {
        authority: target.authority.clone(),
        bearer: format!("Bearer {}", target.token),
        nonce: run_nonce(),
        session_per_worker: args.session_per_worker,
    });
    let mode = if args.session_per_worker { "http-chat (session per worker)" } else { "http-chat" };
    run_load(mode, &args.load, &target, worker)
}

// ---------------------------------------------------------------- idle-ws

/// `idle-ws`.
pub fn idle_ws(args: IdleArgs) -> Result<()> {
    let target = args.target.resolve()?;
    let pid = target.pid.context("idle-ws reads the gateway's RSS: pass --pid (or --state-dir)")?;
    let want = args.clients + 64;
    let have = stats::raise_nofile(want);
    if have < want {
        bail!("this process may open only {have} files (hard limit); {want} needed: raise `ulimit -Hn`");
    }
    if let Some(limit) = stats::nofile_limit(pid) {
        if limit < want {
            bail!(
                "the gateway (pid {pid}) may open only {limit} files; restart it after `ulimit -n {}`",
                want.next_power_of_two().max(4096)
            );
        }
    }
    let settle = Duration::from_millis(args.settle_ms);
    let rt = runtime(1)?;
    rt.block_on(async {
        // One connection opened and closed first, so one-time setup is not counted per client.
        drop(ws_open(&target.authority, &target.token).await.context("warm-up connection")?);
        tokio::time::sleep(settle).await;
        let before = stats::rss_kib(pid).context("read gateway RSS")?;
        let t0 = Instant::now();
        let results: Vec<Result<Ws>> = futures_util::stream::iter(0..args.clients)
            .map(|_| async {
                tokio::time::timeout(Duration::from_secs(10), ws_open(&target.authority, &target.token))
                    .await
                    .map_err(|_| anyhow!("handshake timed out"))?
            })
            .buffer_unordered(args.connect_concurrency as usize)
            .collect()
            .await;
        let opened = t0.elapsed();
        let mut clients = Vec::with_capacity(results.len());
        let mut failed = Outcome::default();
        for r in results {
            match r {
                Ok(ws) => clients.push(ws),
                Err(e) => failed.error(format!("{e:#}")),
            }
        }
        tokio::time::sleep(settle).await;
        let after = stats::rss_kib(pid).context("read gateway RSS")?;
        let n = clients.len() as u64;
        let per = (after as f64 - before as f64) / n.max(1) as f64;
        println!(
            "idle-ws: {n} authenticated idle clients ({} failed) opened in {:.2} s | gateway RSS {:.1} MB before, {:.1} MB with them => {:.1} KiB per client",
            failed.errors,
            opened.as_secs_f64(),
            before as f64 / 1024.0,
            after as f64 / 1024.0,
            per
        );
        for s in &failed.samples {
            println!("  error: {s}");
        }
        drop(clients);
        tokio::time::sleep(settle).await;
        if let Some(closed) = stats::rss_kib(pid) {
            println!("  after closing them: RSS {:.1} MB", closed as f64 / 1024.0);
        }
        Ok(())
    })
}
