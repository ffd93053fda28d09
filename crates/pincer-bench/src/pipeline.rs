//! The in-process pipeline benchmark (the tool's default mode), and startup and idle RSS of the
//! real binary:
//!
//! 1. **throughput**: N routed inbound messages through router → dedupe → session actor →
//!    echo agent → outbox commit, with a real SQLite file (WAL) in a temp state dir;
//! 2. **startup**: time from spawning the real `pincer` binary to its port accepting;
//! 3. **idle RSS** of the running gateway.

use anyhow::{bail, Context, Result};

use pincer_core::config::{Config, DmPolicy, GroupPolicy};
use pincer_core::wake::{MentionGate, WakePolicy};
use pincer_core::{AccountId, Author, ChannelId, ChatKind, Inbound, MentionFacts};
use pincer_runtime::{Gateway, GatewayOptions, IngestOutcome};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Flags of the pipeline mode.
#[derive(clap::Args, Debug, Clone)]
pub struct PipelineArgs {
    /// Inbound messages to push through the pipeline.
    #[arg(long, default_value_t = 50_000)]
    pub messages: usize,
    /// Distinct sessions (channels) the messages are spread over.
    #[arg(long, default_value_t = 200)]
    pub sessions: usize,
    /// Concurrent ingest loops.
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u64).range(1..))]
    pub producers: u64,
    /// `agents.defaults.maxConcurrent`.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_concurrent: u32,
    /// The `pincer` binary for the startup and idle-RSS measurement (default: next to this
    /// tool; skipped when absent).
    #[arg(long)]
    pub binary: Option<std::path::PathBuf>,
}

/// Run the pipeline benchmark, then startup and idle RSS of the binary.
pub fn run(args: PipelineArgs) -> Result<()> {
    if args.sessions == 0 {
        bail!("--sessions must be at least 1");
    }
    let mut binary = args.binary.clone();
    if binary.is_none() {
        let guess = std::env::current_exe()?.with_file_name("pincer");
        if guess.exists() {
            binary = Some(guess);
        }
    }
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(throughput(&args))?;
    match &binary {
        Some(b) => startup_and_rss(b)?,
        None => println!("startup/RSS: skipped (build the binary: cargo build --release -p pincer)"),
    }
    Ok(())
}

fn inbound(i: usize, sessions: usize) -> Inbound {
    let chan = format!("chan{}", i % sessions);
    Inbound {
        channel: ChannelId::new("bench"),
        account: AccountId::default(),
        chat_kind: ChatKind::Channel,
        peer_id: chan.clone(),
        parent_peer_id: None,
        chat_id: chan,
        guild_id: None,
        team_id: None,
        member_roles: vec![],
        thread_id: None,
        author: Author { id: format!("u{}", i % 97), ..Default::default() },
        message_id: format!("m{i}"),
        text: format!("hello {i}"),
        ts_ms: 0,
        mentions: MentionFacts { native: true, can_detect: true, ..Default::default() },
    }
}

async fn throughput(args: &PipelineArgs) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let store = Arc::new(pincer_store::Store::open(&dir.path().join("pincer.db"))?);
    let mut config = Config::default();
    config.agents.defaults.max_concurrent = args.max_concurrent;
    config.messages.queue.cap = 1_000_000;
    let gw = Gateway::start(GatewayOptions {
        state_dir: dir.path().to_path_buf(),
        config_path: None,
        config,
        config_hash: String::new(),
        warnings: vec![],
        store: store.clone(),
        version: "bench".into(),
        deliver: false,
        channels: None,
    })
    .await?;
    let h = gw.handle();
    let policy = WakePolicy {
        dm_policy: DmPolicy::Open,
        group_policy: GroupPolicy::Open,
        group_sender_allowed: true,
        gate: MentionGate::Required,
        ..Default::default()
    };
    // `producers` concurrent ingest loops, like that many channel connections delivering at once.
    let producers = args.producers as usize;
    let mut shares: Vec<Vec<Inbound>> = (0..producers).map(|_| Vec::new()).collect();
    for i in 0..args.messages {
        shares[i % producers].push(inbound(i, args.sessions));
    }
    let policy = Arc::new(policy);
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for share in shares {
        let (h, policy) = (h.clone(), policy.clone());
        tasks.push(tokio::spawn(async move {
            for ev in share {
                match h.ingest(ev, &policy).await? {
                    IngestOutcome::Accepted { .. } => {}
                    IngestOutcome::Dropped(r) => bail!("unexpected drop: {}", r.code()),
                }
            }
            Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    let accepted = t0.elapsed();
    loop {
        let done = h.counters().runs_ok.get() as usize;
        if done >= args.messages {
            break;
        }
        if t0.elapsed() > Duration::from_secs(600) {
            bail!("timed out: {done}/{} runs finished", args.messages);
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let total = t0.elapsed();
    let counts = store.outbox_counts()?;
    println!(
        "throughput: {} messages over {} sessions from {} producers: accepted in {:.0} ms, all outbox rows committed in {:.0} ms => {:.0} msg/s (outbox pending rows: {})",
        args.messages,
        args.sessions,
        args.producers,
        accepted.as_secs_f64() * 1000.0,
        total.as_secs_f64() * 1000.0,
        args.messages as f64 / total.as_secs_f64(),
        counts.pending
    );
    gw.shutdown(Duration::from_secs(10)).await;
    Ok(())
}

fn startup_and_rss(binary: &std::path::Path) -> Result<()> {
    let mut starts = Vec::new();
    let mut rss = Vec::new();
    for _ in 0..10 {
        let dir = tempfile::tempdir()?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let t0 = Instant::now();
        let mut child = std::process::Command::new(binary)
            .args(["gateway", "run", "--port", &port.to_string(), "--state-dir"])
            .arg(dir.path())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .context("spawn pincer")?;
        loop {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                break;
            }
            if t0.elapsed() > Duration::from_secs(10) {
                let _ = child.kill();
                bail!("gateway did not accept within 10 s");
            }
            std::thread::sleep(Duration::from_micros(200));
        }
        starts.push(t0.elapsed());
        // Let it settle idle, then read its resident set.
        std::thread::sleep(Duration::from_millis(500));
        rss.push(crate::stats::rss_kib(child.id()).unwrap_or(0));
        term(child.id());
        let _ = child.wait();
    }
    starts.sort();
    rss.sort();
    println!(
        "startup to port accepting: median {:.1} ms, min {:.1} ms, max {:.1} ms (10 runs)",
        starts[5].as_secs_f64() * 1000.0,
        starts[0].as_secs_f64() * 1000.0,
        starts[9].as_secs_f64() * 1000.0
    );
    println!("idle RSS after 500 ms: median {:.1} MB, max {:.1} MB", rss[5] as f64 / 1024.0, rss[9] as f64 / 1024.0);
    Ok(())
}

fn term(pid: u32) {
    // SAFETY: kill(2) on the child we spawned; no memory is touched.
    unsafe {
        libc::kill(pid as libc::pid_t, libc::SIGTERM);
    }
}
