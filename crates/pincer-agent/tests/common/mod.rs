//! Helpers shared by the provider tests: config from JSON, a runner with tiny retry delays,
//! and a run that collects the streamed events concurrently.

#![allow(dead_code)] // each test binary uses a subset

use pincer_agent::{AgentError, AgentRunner, ChatMessage, RetryPolicy, RunEvent, RunOutput, RunRequest};
use pincer_core::config::ProviderConfig;
use serde_json::Value;
use std::collections::BTreeMap;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// A provider config from its JSON form (as in `openclaw.json`).
pub fn provider(v: Value) -> ProviderConfig {
    serde_json::from_value(v).expect("valid provider config")
}

/// Retries with millisecond delays: real sockets cannot use paused time, and the backoff
/// arithmetic itself is tested under paused time in the runner's unit tests.
pub fn fast_retry() -> RetryPolicy {
    RetryPolicy {
        attempts: 3,
        base_delay: Duration::from_millis(1),
        max_delay: Duration::from_millis(5),
        jitter: 0.0,
        max_retry_after: Duration::from_secs(60),
    }
}

/// A runner over `providers` with [`fast_retry`].
pub fn runner(providers: Vec<(&str, Value)>) -> AgentRunner {
    let map: BTreeMap<String, ProviderConfig> =
        providers.into_iter().map(|(id, v)| (id.to_string(), provider(v))).collect();
    AgentRunner::new(&map, http()).with_retry_policy(fast_retry())
}

/// The one shared client, as the gateway builds it.
pub fn http() -> reqwest::Client {
    reqwest::Client::builder().build().expect("reqwest client")
}

/// A request with one user message.
pub fn ask(text: &str) -> RunRequest {
    RunRequest { model: String::new(), system_prompt: None, messages: vec![ChatMessage::user(text)], max_tokens: None }
}

/// Runs `req` over `chain`, collecting events while the run streams them.
pub async fn run_collect(
    runner: &AgentRunner,
    chain: &[&str],
    req: RunRequest,
    cancel: CancellationToken,
    deadline: Duration,
) -> (Result<RunOutput, AgentError>, Vec<RunEvent>) {
    let chain: Vec<String> = chain.iter().map(|s| s.to_string()).collect();
    let (tx, mut rx) = mpsc::channel(8);
    let collect = async move {
        let mut events = Vec::new();
        while let Some(e) = rx.recv().await {
            events.push(e);
        }
        events
    };
    tokio::join!(runner.run(&chain, req, tx, cancel, deadline), collect)
}

/// The deltas of `events` since the last reset, concatenated.
pub fn streamed_text(events: &[RunEvent]) -> String {
    let mut s = String::new();
    for e in events {
        match e {
            RunEvent::Delta(d) => s.push_str(d),
            RunEvent::Reset => s.clear(),
        }
    }
    s
}

/// Runs one provider directly (no runner), collecting its deltas.
pub async fn provider_collect(
    p: &dyn pincer_agent::Provider,
    req: RunRequest,
    cancel: CancellationToken,
) -> (Result<RunOutput, AgentError>, Vec<String>) {
    let (tx, mut rx) = mpsc::channel(8);
    let collect = async move {
        let mut v = Vec::new();
        while let Some(d) = rx.recv().await {
            v.push(d);
        }
        v
    };
    tokio::join!(p.run(req, tx, cancel), collect)
}

pub const MINUTE: Duration = Duration::from_secs(60);
