//! `matrix-latency`: a person's message to the bot's reply, through a real Synapse on loopback.
//!
//! Starts Synapse with `scripts/peers/synapse.sh` (in a temporary directory, on a free port),
//! starts `pincer gateway run` with the echo agent and a Matrix account (password login,
//! `autoJoin: always`), lets a person create a room and invite the bot, then sends `--messages`
//! mentions one at a time: each is sent, and the next one only after the bot's reply to it has
//! arrived on the person's `/sync`. Two latencies per message:
//!
//! - client: from just before the person's `PUT /send` to the reply arriving on its `/sync`
//!   (what a person sees; includes the person's own send and sync round trips);
//! - server: `origin_server_ts` of the reply minus that of the message (Synapse's clock for
//!   both: from the message being stored to the reply being stored).
//!
//! Then pincer's RSS (`VmRSS`, and the peak `VmHWM`) with the account connected, and everything
//! is stopped.

use crate::stats::{percentile, rss_kib};
use anyhow::{anyhow, bail, Context, Result};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, BufReader};

/// Flags of `matrix-latency`.
#[derive(clap::Args, Debug, Clone)]
pub struct MatrixArgs {
    /// Messages measured (sent one at a time).
    #[arg(long, default_value_t = 200)]
    messages: u64,
    /// Unmeasured messages first.
    #[arg(long, default_value_t = 10)]
    warmup: u64,
    /// The pincer binary (default: `pincer` next to this binary).
    #[arg(long)]
    pincer: Option<PathBuf>,
    /// `scripts/peers/synapse.sh` (default: the one of this source tree).
    #[arg(long)]
    synapse_script: Option<PathBuf>,
}

const STEP: Duration = Duration::from_secs(30);

struct Cs {
    hs: String,
    token: String,
    http: reqwest::Client,
    txn: u64,
}

fn enc(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

impl Cs {
    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Result<Value> {
        let mut req = self.http.request(method.clone(), format!("{}{path}", self.hs)).bearer_auth(&self.token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp =
            req.timeout(STEP + Duration::from_secs(5)).send().await.with_context(|| format!("{method} {path}"))?;
        let status = resp.status();
        let v: Value = resp.json().await.unwrap_or(Value::Null);
        if !status.is_success() {
            bail!("{method} {path}: HTTP {status}: {v}");
        }
        Ok(v)
    }

    async fn send_text(&mut self, room: &str, text: &str) -> Result<String> {
        self.txn += 1;
        let path = format!("/_matrix/client/v3/rooms/{}/send/m.room.message/bench{}", enc(room), self.txn);
        let r = self.call(reqwest::Method::PUT, &path, Some(json!({"msgtype": "m.text", "body": text}))).await?;
        r["event_id"].as_str().map(str::to_string).ok_or_else(|| anyhow!("no event_id: {r}"))
    }

    /// One `/sync` long-poll from `since`; returns the next token and the timeline events of
    /// `room` (and whether the bot is joined there, from the state and timeline).
    async fn sync(&self, since: Option<&str>, room: Option<&str>, timeout: Duration) -> Result<(String, Vec<Value>)> {
        let filter = enc(r#"{"room":{"timeline":{"limit":100}},"presence":{"not_types":["*"]}}"#);
        let mut path = format!("/_matrix/client/v3/sync?timeout={}&filter={filter}", timeout.as_millis());
        if let Some(s) = since {
            path.push_str(&format!("&since={}", enc(s)));
        }
        let r = self.call(reqwest::Method::GET, &path, None).await?;
        let next = r["next_batch"].as_str().ok_or_else(|| anyhow!("no next_batch"))?.to_string();
        let events = match room {
            Some(room) => r["rooms"]["join"][room]["timeline"]["events"].as_array().cloned().unwrap_or_default(),
            None => Vec::new(),
        };
        Ok((next, events))
    }
}

struct Synapse {
    script: PathBuf,
    dir: tempfile::TempDir,
}

impl Drop for Synapse {
    fn drop(&mut self) {
        let _ = std::process::Command::new("bash")
            .arg(&self.script)
            .arg("stop")
            .arg(self.dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

fn summary(name: &str, mut v: Vec<u64>) -> String {
    v.sort_unstable();
    let ms = |us: u64| us as f64 / 1000.0;
    format!(
        "{name}: p50 {:.1} ms, p90 {:.1} ms, p99 {:.1} ms, max {:.1} ms (n = {})",
        ms(percentile(&v, 0.50)),
        ms(percentile(&v, 0.90)),
        ms(percentile(&v, 0.99)),
        ms(v.last().copied().unwrap_or(0)),
        v.len()
    )
}

fn status_kib(pid: u32, key: &str) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines().find(|l| l.starts_with(key))?.split_whitespace().nth(1)?.parse().ok()
}

/// Run the measurement.
pub fn matrix_latency(args: MatrixArgs) -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(run(args))
}

async fn run(args: MatrixArgs) -> Result<()> {
    let script = args
        .synapse_script
        .clone()
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/peers/synapse.sh"));
    let pincer = match &args.pincer {
        Some(p) => p.clone(),
        None => std::env::current_exe()?.with_file_name("pincer"),
    };
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let synapse = Synapse { script: script.clone(), dir: tempfile::tempdir()? };
    let out = tokio::process::Command::new("bash")
        .arg(&script)
        .arg("start")
        .arg(synapse.dir.path())
        .arg(port.to_string())
        .stdin(Stdio::null())
        .output()
        .await
        .context("run synapse.sh")?;
    if !out.status.success() {
        bail!("synapse.sh start failed:\n{}", String::from_utf8_lossy(&out.stderr));
    }
    let env: HashMap<String, String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_once('=').map(|(k, v)| (k.to_string(), v.to_string())))
        .collect();
    let get = |k: &str| env.get(k).cloned().ok_or_else(|| anyhow!("synapse.sh printed no {k}"));
    let hs = get("HOMESERVER")?;
    let bot = get("BOT_USER_ID")?;

    let state = tempfile::tempdir()?;
    let cfg = json!({
        "gateway": {"reload": {"mode": "off"}},
        "channels": {"matrix": {"homeserver": hs, "userId": bot, "password": get("BOT_PASSWORD")?,
                                "autoJoin": "always", "groupPolicy": "open"}},
    });
    std::fs::write(state.path().join("pincer.json"), serde_json::to_string_pretty(&cfg)?)?;
    let mut child = tokio::process::Command::new(&pincer)
        .args(["gateway", "run", "--port", "0", "--state-dir"])
        .arg(state.path())
        .env("PINCER_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("spawn {}", pincer.display()))?;
    let pid = child.id().ok_or_else(|| anyhow!("pincer exited"))?;
    let mut lines = BufReader::new(child.stdout.take().expect("piped")).lines();
    tokio::time::timeout(STEP, async {
        while let Some(l) = lines.next_line().await? {
            if l.starts_with("listening on ") {
                return Ok(());
            }
        }
        bail!("pincer exited before listening")
    })
    .await
    .context("pincer did not start")??;
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });

    let mut cs = Cs { hs: hs.clone(), token: get("HUMAN_ACCESS_TOKEN")?, http: reqwest::Client::new(), txn: 0 };
    let (mut since, _) = cs.sync(None, None, Duration::ZERO).await?;
    let created = cs
        .call(
            reqwest::Method::POST,
            "/_matrix/client/v3/createRoom",
            Some(json!({"name": "latency", "invite": [bot], "preset": "private_chat"})),
        )
        .await?;
    let room = created["room_id"].as_str().ok_or_else(|| anyhow!("no room_id"))?.to_string();
    // Wait for the bot's join on the person's /sync.
    let joined = tokio::time::timeout(STEP * 2, async {
        loop {
            let (next, events) = cs.sync(Some(&since), Some(&room), Duration::from_secs(5)).await?;
            since = next;
            let join = events.iter().any(|e| {
                e["type"] == "m.room.member" && e["state_key"] == bot.as_str() && e["content"]["membership"] == "join"
            });
            if join {
                return Ok::<_, anyhow::Error>(());
            }
        }
    })
    .await;
    joined.context("the bot did not join")??;

    let (mut client_us, mut server_us) = (Vec::new(), Vec::new());
    for n in 0..args.warmup + args.messages {
        let text = format!("pincer-bot: ping {n}");
        let want = format!("echo: ping {n}");
        let t0 = Instant::now();
        let sent = cs.send_text(&room, &text).await?;
        let (mut sent_ts, mut reply_ts) = (None, None);
        let deadline = Instant::now() + STEP;
        while reply_ts.is_none() {
            if Instant::now() > deadline {
                bail!("no reply to message {n} within {} s", STEP.as_secs());
            }
            let (next, events) = cs.sync(Some(&since), Some(&room), Duration::from_secs(10)).await?;
            since = next;
            for e in &events {
                if e["event_id"] == sent.as_str() {
                    sent_ts = e["origin_server_ts"].as_u64();
                }
                if e["sender"] == bot.as_str() && e["content"]["body"] == want.as_str() {
                    reply_ts = e["origin_server_ts"].as_u64();
                }
            }
        }
        let elapsed = t0.elapsed();
        if n >= args.warmup {
            client_us.push(elapsed.as_micros() as u64);
            if let (Some(a), Some(b)) = (sent_ts, reply_ts) {
                server_us.push(b.saturating_sub(a) * 1000);
            }
        }
    }
    // Connected and idle again: the RSS of the daemon.
    let rss = rss_kib(pid).unwrap_or(0);
    let hwm = status_kib(pid, "VmHWM:").unwrap_or(0);
    println!("matrix-latency: {} messages, one at a time, echo agent, Synapse on loopback", client_us.len());
    println!("{}", summary("client (send -> reply on /sync)", client_us));
    println!("{}", summary("server (origin_server_ts reply - message, 1 ms resolution)", server_us));
    println!(
        "pincer RSS with the Matrix account connected: {:.1} MB (peak {:.1} MB)",
        rss as f64 / 1024.0,
        hwm as f64 / 1024.0
    );
    // SAFETY: kill(2) on the child we spawned.
    unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) };
    let _ = tokio::time::timeout(STEP, child.wait()).await;
    drop(synapse);
    Ok(())
}
