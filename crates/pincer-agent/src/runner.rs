//! [`AgentRunner`]: the providers built from `models.providers`, and one run over a model
//! chain (primary, then fallbacks) with per-model retries, backoff honouring `Retry-After`,
//! fallback, cancellation and an overall deadline.
//!
//! Deltas of failed attempts: deltas stream live to the caller as [`RunEvent::Delta`]. When
//! an attempt that already streamed text fails and another attempt follows (a retry or the
//! next model), the runner first sends [`RunEvent::Reset`]: the consumer discards what it
//! showed. So only the successful attempt's deltas count, without buffering the stream. The
//! returned [`RunOutput::text`] is authoritative in every case. A caller that passes an
//! `mpsc::Sender<String>` instead gets the deltas without the resets ([`RunEventSink`]).

use crate::echo::{EchoProvider, ECHO_MODEL};
use crate::error::AgentError;
use crate::provider::{build_provider, Provider};
use crate::types::{RunEvent, RunOutput, RunRequest};
use pincer_core::config::{split_model_ref, ProviderApi, ProviderConfig, ECHO_PROVIDER};
use rand::Rng;
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// What [`AgentRunner::describe`] says when every reply comes from the built-in echo agent.
pub const ECHO_ONLY_MESSAGE: &str = "no model configured; replies come from the built-in echo agent";

/// Where [`AgentRunner::run`] streams a run's [`RunEvent`]s. Implemented for
/// `mpsc::Sender<RunEvent>` (the full stream, resets included) and for
/// `mpsc::Sender<String>` (the deltas only: such a consumer cannot see a
/// [`RunEvent::Reset`], so after a failed attempt that had streamed text its preview holds
/// that text followed by the next attempt's; the returned [`RunOutput::text`] is still
/// exact). A closed receiver is ignored in both.
pub trait RunEventSink: Send + Sync {
    /// Delivers one event, waiting for room in the channel.
    fn send_event(&self, event: RunEvent) -> impl std::future::Future<Output = ()> + Send;
}

impl RunEventSink for mpsc::Sender<RunEvent> {
    async fn send_event(&self, event: RunEvent) {
        let _ = self.send(event).await;
    }
}

impl RunEventSink for mpsc::Sender<String> {
    async fn send_event(&self, event: RunEvent) {
        if let RunEvent::Delta(d) = event {
            let _ = self.send(d).await;
        }
    }
}

/// Capacity of the per-attempt delta channel between a provider and the runner.
const DELTA_BUFFER: usize = 64;

/// Retries of one model. Defaults follow OpenClaw's outbound retry policy (reference §5):
/// 3 attempts, 500 ms base, 30 s cap, 10 % jitter, and a `Retry-After` above 60 s is not
/// waited for (the runner falls over to the next model at once).
#[derive(Clone, Debug, PartialEq)]
pub struct RetryPolicy {
    /// Attempts per model including the first (values below 1 count as 1).
    pub attempts: u32,
    /// Delay after the first failed attempt; doubled after each further one.
    pub base_delay: Duration,
    /// Cap on the exponential delay (a `Retry-After` up to `max_retry_after` may exceed it).
    pub max_delay: Duration,
    /// Jitter as a fraction of the delay: the delay is scaled by a factor drawn uniformly
    /// from `[1 - jitter, 1 + jitter]` (clamped to `0.0..=1.0`).
    pub jitter: f64,
    /// Longest `Retry-After` honoured; a longer one ends the retries of that model.
    pub max_retry_after: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            attempts: 3,
            base_delay: Duration::from_millis(500),
            max_delay: Duration::from_secs(30),
            jitter: 0.1,
            max_retry_after: Duration::from_secs(60),
        }
    }
}

impl RetryPolicy {
    /// The exponential delay after failed attempt number `failed_attempt` (1-based):
    /// `min(max_delay, base_delay × 2^(failed_attempt − 1))`, scaled by `1 + jitter × unit`
    /// where `unit` is in `[-1, 1]` (clamped), and capped at `max_delay` again.
    pub fn backoff(&self, failed_attempt: u32, unit: f64) -> Duration {
        let exp = failed_attempt.saturating_sub(1).min(30);
        let raw = self.base_delay.saturating_mul(1u32 << exp).min(self.max_delay);
        let unit = if unit.is_finite() { unit.clamp(-1.0, 1.0) } else { 0.0 };
        let jitter = if self.jitter.is_finite() { self.jitter.clamp(0.0, 1.0) } else { 0.0 };
        raw.mul_f64(1.0 + jitter * unit).min(self.max_delay)
    }

    /// How long to wait before retrying after failed attempt `failed_attempt` (1-based),
    /// given the server's `retry_after_ms`: the `Retry-After` exactly when present, else the
    /// jittered [`RetryPolicy::backoff`]. `None` when the `Retry-After` exceeds
    /// `max_retry_after`: do not retry this model.
    pub fn delay_for(&self, failed_attempt: u32, retry_after_ms: Option<u64>) -> Option<Duration> {
        match retry_after_ms.map(Duration::from_millis) {
            Some(ra) if ra > self.max_retry_after => None,
            Some(ra) => Some(ra),
            None => {
                let unit = rand::thread_rng().gen_range(-1.0..=1.0);
                Some(self.backoff(failed_attempt, unit))
            }
        }
    }
}

/// A parsed model ref `provider/model`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ModelRef {
    /// The provider id (key under `models.providers`, or `echo`).
    pub provider: String,
    /// The provider's model id; may itself contain `/`.
    pub model: String,
}

impl ModelRef {
    /// Parses `provider/model`, splitting at the first `/` (so `openrouter/meta/llama-3`
    /// is provider `openrouter`, model `meta/llama-3`). The bare ref `echo` is the built-in
    /// echo agent (`echo/echo`).
    ///
    /// # Errors
    /// [`AgentError::Config`] for a ref without `/` (other than `echo`) or with an empty part.
    pub fn parse(model_ref: &str) -> Result<Self, AgentError> {
        let (provider, model) = split_model_ref(model_ref).ok_or_else(|| {
            AgentError::config(format!("invalid model ref {model_ref:?}: expected \"provider/model\""))
        })?;
        Ok(ModelRef { provider: provider.to_string(), model: model.to_string() })
    }
}

impl fmt::Display for ModelRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.provider, self.model)
    }
}

/// The model status of a chain, for `status` and `/readyz`-style reports.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ModelStatus {
    /// The primary model (first of the chain, or the built-in `echo/echo` for an empty one).
    pub primary: Option<ModelRef>,
    /// The primary's wire API, when its provider resolves.
    pub primary_api: Option<ProviderApi>,
    /// The fallback refs, in order.
    pub fallbacks: Vec<String>,
    /// True when every reply comes from the built-in echo agent.
    pub echo_only: bool,
    /// [`ECHO_ONLY_MESSAGE`] when `echo_only`.
    pub message: Option<String>,
    /// Refs of the chain that cannot run, with the reason (unknown provider, broken config).
    pub problems: Vec<String>,
}

impl ModelStatus {
    /// One line for operators: the echo-only message, or `provider/model (fallbacks: …)`.
    pub fn summary(&self) -> String {
        if let Some(m) = self.message.as_ref().filter(|_| self.echo_only) {
            return m.clone();
        }
        let primary = self.primary.as_ref().map_or_else(|| "echo/echo".to_string(), |p| p.to_string());
        let mut s = primary;
        if !self.fallbacks.is_empty() {
            s.push_str(&format!(" (fallbacks: {})", self.fallbacks.join(", ")));
        }
        if !self.problems.is_empty() {
            s.push_str(&format!(" [problems: {}]", self.problems.join("; ")));
        }
        s
    }
}

#[derive(Clone)]
struct Entry {
    provider: Result<Arc<dyn Provider>, AgentError>,
    /// `models[].maxTokens` by model id.
    max_tokens: BTreeMap<String, u64>,
}

enum Target {
    BuiltinEcho,
    Provider(Arc<dyn Provider>, Option<u64>),
}

/// The providers of one config snapshot and the retry policy. Cheap to clone (the provider
/// table is shared); build a new one on reload, in-flight runs keep theirs.
#[derive(Clone)]
pub struct AgentRunner {
    providers: Arc<BTreeMap<String, Entry>>,
    retry: RetryPolicy,
}

impl fmt::Debug for AgentRunner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AgentRunner")
            .field("providers", &self.providers.keys().collect::<Vec<_>>())
            .field("retry", &self.retry)
            .finish()
    }
}

impl AgentRunner {
    /// Builds every provider of `models.providers`, sharing `http`. A provider that cannot
    /// be built does not fail the others: its problem is reported by
    /// [`AgentRunner::problems`] and [`AgentRunner::describe`], and runs that reach it get
    /// its [`AgentError::Config`] (and fall back to the next model).
    pub fn new(providers: &BTreeMap<String, ProviderConfig>, http: reqwest::Client) -> Self {
        let table = providers
            .iter()
            .map(|(id, cfg)| {
                let entry = Entry {
                    provider: build_provider(id, cfg, &http),
                    max_tokens: cfg.models.iter().filter_map(|m| Some((m.id.clone(), m.max_tokens?))).collect(),
                };
                (id.clone(), entry)
            })
            .collect();
        AgentRunner { providers: Arc::new(table), retry: RetryPolicy::default() }
    }

    /// Replaces the retry policy (tests use tiny delays).
    pub fn with_retry_policy(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    /// Adds or replaces the provider `id` with a custom implementation (tests, embedders).
    pub fn with_provider(mut self, id: impl Into<String>, provider: Arc<dyn Provider>) -> Self {
        Arc::make_mut(&mut self.providers)
            .insert(id.into(), Entry { provider: Ok(provider), max_tokens: BTreeMap::new() });
        self
    }

    /// The retry policy in use.
    pub fn retry_policy(&self) -> &RetryPolicy {
        &self.retry
    }

    /// Providers that could not be built, as `"<id>: <error>"`.
    pub fn problems(&self) -> Vec<String> {
        self.providers
            .iter()
            .filter_map(|(id, e)| e.provider.as_ref().err().map(|err| format!("{id}: {err}")))
            .collect()
    }

    /// Which model a run over `chain` tries first, and whether only echo answers.
    pub fn describe(&self, chain: &[String]) -> ModelStatus {
        let echo_status = |primary| ModelStatus {
            primary,
            primary_api: Some(ProviderApi::Echo),
            fallbacks: Vec::new(),
            echo_only: true,
            message: Some(ECHO_ONLY_MESSAGE.to_string()),
            problems: Vec::new(),
        };
        let Some((first, rest)) = chain.split_first() else {
            return echo_status(Some(ModelRef { provider: ECHO_PROVIDER.to_string(), model: ECHO_MODEL.to_string() }));
        };
        let mut problems = Vec::new();
        let mut all_echo = true;
        let mut primary_api = None;
        for (i, r) in chain.iter().enumerate() {
            let api = match self.resolve(r) {
                Ok((_, Target::BuiltinEcho)) => Some(ProviderApi::Echo),
                Ok((_, Target::Provider(p, _))) => Some(p.api()),
                Err(e) => {
                    problems.push(format!("{r}: {e}"));
                    None
                }
            };
            all_echo &= api == Some(ProviderApi::Echo);
            if i == 0 {
                primary_api = api;
            }
        }
        if all_echo {
            let mut s = echo_status(ModelRef::parse(first).ok());
            s.fallbacks = rest.to_vec();
            return s;
        }
        ModelStatus {
            primary: ModelRef::parse(first).ok(),
            primary_api,
            fallbacks: rest.to_vec(),
            echo_only: false,
            message: None,
            problems,
        }
    }

    fn resolve(&self, model_ref: &str) -> Result<(ModelRef, Target), AgentError> {
        let r = ModelRef::parse(model_ref)?;
        match self.providers.get(&r.provider) {
            Some(entry) => {
                let p = entry.provider.clone()?;
                let max = entry.max_tokens.get(&r.model).copied();
                Ok((r, Target::Provider(p, max)))
            }
            None if r.provider == ECHO_PROVIDER => Ok((r, Target::BuiltinEcho)),
            None => Err(AgentError::config(format!("unknown provider {:?} in model ref {model_ref:?}", r.provider))),
        }
    }

    /// Runs `req` (its `model` is ignored and set per chain entry) over `chain`, a list of
    /// model refs `provider/model` tried in order; an empty chain means the built-in echo.
    ///
    /// For each model, retryable errors ([`AgentError::is_retryable`]) are retried per the
    /// [`RetryPolicy`] (a `Retry-After` above `max_retry_after`, or a wait that would pass
    /// the deadline, ends that model's retries at once); any other failure, or running out of
    /// attempts, moves on to the next model. Deltas stream to `events`, an
    /// `mpsc::Sender<RunEvent>` or an `mpsc::Sender<String>` (see [`RunEventSink`] and the
    /// module docs for [`RunEvent::Reset`]); a closed receiver is ignored. Backoff sleeps use
    /// `tokio::time`.
    ///
    /// # Errors
    /// [`AgentError::Cancelled`] as soon as `cancel` fires; [`AgentError::Timeout`] when
    /// `deadline` (measured from the call) passes first; otherwise the last model's error
    /// when every model failed.
    pub async fn run<S: RunEventSink>(
        &self,
        chain: &[String],
        req: RunRequest,
        events: S,
        cancel: CancellationToken,
        deadline: Duration,
    ) -> Result<RunOutput, AgentError> {
        if cancel.is_cancelled() {
            return Err(AgentError::Cancelled);
        }
        if chain.is_empty() {
            return Ok(echo(ECHO_PROVIDER, ECHO_MODEL, &req, &events).await);
        }
        let deadline_at = Instant::now() + deadline;
        tokio::select! {
            biased;
            _ = cancel.cancelled() => Err(AgentError::Cancelled),
            r = tokio::time::timeout_at(deadline_at, self.run_chain(chain, req, &events, &cancel, deadline_at)) => {
                r.unwrap_or(Err(AgentError::Timeout))
            }
        }
    }

    async fn run_chain<S: RunEventSink>(
        &self,
        chain: &[String],
        req: RunRequest,
        events: &S,
        cancel: &CancellationToken,
        deadline_at: Instant,
    ) -> Result<RunOutput, AgentError> {
        let mut last_err = None;
        // An earlier failed attempt streamed deltas the consumer has not been told to drop.
        let mut dirty = false;
        for model_ref in chain {
            let (r, target) = match self.resolve(model_ref) {
                Ok(t) => t,
                Err(e) => {
                    tracing::warn!(model = %model_ref, error = %e, "model ref unusable; trying the next");
                    last_err = Some(e);
                    continue;
                }
            };
            let (provider, max_tokens) = match target {
                Target::BuiltinEcho => {
                    if dirty {
                        events.send_event(RunEvent::Reset).await;
                    }
                    return Ok(echo(&r.provider, &r.model, &req, events).await);
                }
                Target::Provider(p, max) => (p, max),
            };
            let mut attempt = 0u32;
            loop {
                attempt += 1;
                if dirty {
                    events.send_event(RunEvent::Reset).await;
                    dirty = false;
                }
                let mut call = req.clone();
                call.model.clone_from(&r.model);
                call.max_tokens = call.max_tokens.or(max_tokens);
                let (result, emitted) = attempt_once(provider.as_ref(), call, events, cancel).await;
                let err = match result {
                    Ok(out) => {
                        tracing::debug!(model = %r, attempt, "model run succeeded");
                        return Ok(out);
                    }
                    Err(AgentError::Cancelled) => return Err(AgentError::Cancelled),
                    Err(e) => e,
                };
                dirty |= emitted;
                let retry_in = if err.is_retryable() && attempt < self.retry.attempts {
                    self.retry.delay_for(attempt, err.retry_after_ms()).filter(|d| Instant::now() + *d < deadline_at)
                } else {
                    None
                };
                let Some(delay) = retry_in else {
                    tracing::warn!(model = %r, attempt, kind = err.kind(), error = %err, "model failed; trying the next");
                    last_err = Some(err);
                    break;
                };
                tracing::info!(model = %r, attempt, kind = err.kind(), error = %err, delay_ms = delay.as_millis() as u64, "model call failed; retrying");
                tokio::select! {
                    biased;
                    _ = cancel.cancelled() => return Err(AgentError::Cancelled),
                    _ = tokio::time::sleep(delay) => {}
                }
            }
        }
        Err(last_err.unwrap_or_else(|| AgentError::config("empty model chain")))
    }
}

/// The built-in echo, inline: no channel, no task, one allocation for the reply.
async fn echo<S: RunEventSink>(provider: &str, model: &str, req: &RunRequest, events: &S) -> RunOutput {
    let text = EchoProvider::reply(req);
    events.send_event(RunEvent::Delta(text.clone())).await;
    RunOutput { text, stop_reason: None, usage: None, model: model.to_string(), provider: provider.to_string() }
}

/// One provider call, forwarding its deltas. Returns whether any delta was forwarded.
async fn attempt_once<S: RunEventSink>(
    provider: &dyn Provider,
    req: RunRequest,
    events: &S,
    cancel: &CancellationToken,
) -> (Result<RunOutput, AgentError>, bool) {
    let (tx, mut rx) = mpsc::channel::<String>(DELTA_BUFFER);
    let mut call = provider.run(req, tx, cancel.clone());
    let mut emitted = false;
    let result = loop {
        tokio::select! {
            biased;
            Some(d) = rx.recv() => {
                emitted = true;
                events.send_event(RunEvent::Delta(d)).await;
            }
            r = &mut call => break r,
        }
    };
    drop(call);
    while let Ok(d) = rx.try_recv() {
        emitted = true;
        events.send_event(RunEvent::Delta(d)).await;
    }
    (result, emitted)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::provider::BoxFuture;
    use crate::types::ChatMessage;
    use std::collections::VecDeque;
    use std::sync::Mutex;

    /// A provider answering from a script, for exercising the runner under paused time.
    struct Scripted {
        script: Mutex<VecDeque<Result<&'static str, AgentError>>>,
        calls: Mutex<Vec<Instant>>,
    }

    impl Scripted {
        fn new(script: Vec<Result<&'static str, AgentError>>) -> Arc<Self> {
            Arc::new(Scripted { script: Mutex::new(script.into()), calls: Mutex::new(Vec::new()) })
        }
        fn calls(&self) -> Vec<Instant> {
            self.calls.lock().unwrap().clone()
        }
    }

    impl Provider for Scripted {
        fn id(&self) -> &str {
            "scripted"
        }
        fn api(&self) -> ProviderApi {
            ProviderApi::Exec
        }
        fn run(
            &self,
            req: RunRequest,
            deltas: mpsc::Sender<String>,
            _cancel: CancellationToken,
        ) -> BoxFuture<'_, Result<RunOutput, AgentError>> {
            Box::pin(async move {
                self.calls.lock().unwrap().push(Instant::now());
                let next = self.script.lock().unwrap().pop_front();
                match next {
                    Some(Ok(text)) => {
                        let _ = deltas.send(text.to_string()).await;
                        Ok(RunOutput {
                            text: text.to_string(),
                            stop_reason: None,
                            usage: None,
                            model: req.model,
                            provider: "scripted".into(),
                        })
                    }
                    Some(Err(e)) => {
                        let _ = deltas.send("partial".to_string()).await;
                        Err(e)
                    }
                    None => std::future::pending().await,
                }
            })
        }
    }

    fn http(status: u16, retry_after_ms: Option<u64>) -> AgentError {
        AgentError::Http { status, body_snippet: String::new(), retry_after_ms }
    }

    fn req() -> RunRequest {
        RunRequest { messages: vec![ChatMessage::user("hi")], ..RunRequest::default() }
    }

    fn chain(refs: &[&str]) -> Vec<String> {
        refs.iter().map(|s| s.to_string()).collect()
    }

    async fn collect(mut rx: mpsc::Receiver<RunEvent>) -> Vec<RunEvent> {
        let mut v = Vec::new();
        while let Some(e) = rx.recv().await {
            v.push(e);
        }
        v
    }

    #[test]
    fn backoff_is_exponential_capped_and_jittered() {
        let p = RetryPolicy::default();
        assert_eq!(p.backoff(1, 0.0), Duration::from_millis(500));
        assert_eq!(p.backoff(2, 0.0), Duration::from_secs(1));
        assert_eq!(p.backoff(3, 0.0), Duration::from_secs(2));
        assert_eq!(p.backoff(40, 0.0), Duration::from_secs(30));
        assert_eq!(p.backoff(40, 1.0), Duration::from_secs(30));
        assert_eq!(p.backoff(1, 1.0), Duration::from_millis(550));
        assert_eq!(p.backoff(1, -1.0), Duration::from_millis(450));
        assert_eq!(p.backoff(1, f64::NAN), Duration::from_millis(500));
        assert_eq!(p.delay_for(1, Some(2_000)), Some(Duration::from_secs(2)));
        assert_eq!(p.delay_for(1, Some(60_000)), Some(Duration::from_secs(60)));
        assert_eq!(p.delay_for(1, Some(60_001)), None);
        let d = p.delay_for(1, None).unwrap();
        assert!(d >= Duration::from_millis(450) && d <= Duration::from_millis(550));
    }

    #[test]
    fn model_refs() {
        let r = ModelRef::parse("openrouter/meta/llama-3").unwrap();
        assert_eq!((r.provider.as_str(), r.model.as_str()), ("openrouter", "meta/llama-3"));
        assert_eq!(r.to_string(), "openrouter/meta/llama-3");
        assert_eq!(ModelRef::parse("echo").unwrap().to_string(), "echo/echo");
        for bad in ["gpt-4o", "/m", "p/", ""] {
            assert!(matches!(ModelRef::parse(bad), Err(AgentError::Config { .. })), "{bad}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn retry_after_is_honoured_exactly() {
        let s = Scripted::new(vec![Err(http(429, Some(7_000))), Ok("done")]);
        let runner = AgentRunner::new(&BTreeMap::new(), reqwest::Client::new()).with_provider("p", s.clone());
        let (tx, rx) = mpsc::channel::<RunEvent>(16);
        let out =
            runner.run(&chain(&["p/m"]), req(), tx, CancellationToken::new(), Duration::from_secs(600)).await.unwrap();
        assert_eq!(out.text, "done");
        assert_eq!(out.model, "m");
        let calls = s.calls();
        assert_eq!(calls.len(), 2);
        assert_eq!(calls[1] - calls[0], Duration::from_secs(7));
        assert_eq!(
            collect(rx).await,
            vec![RunEvent::Delta("partial".into()), RunEvent::Reset, RunEvent::Delta("done".into())]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_string_sink_gets_deltas_without_resets() {
        let s = Scripted::new(vec![Err(http(503, None)), Ok("done")]);
        let runner = AgentRunner::new(&BTreeMap::new(), reqwest::Client::new()).with_provider("p", s.clone());
        let (tx, mut rx) = mpsc::channel::<String>(16);
        let out =
            runner.run(&chain(&["p/m"]), req(), tx, CancellationToken::new(), Duration::from_secs(600)).await.unwrap();
        assert_eq!(out.text, "done");
        let mut got = Vec::new();
        while let Some(d) = rx.recv().await {
            got.push(d);
        }
        assert_eq!(got, ["partial", "done"]);
    }

    #[tokio::test(start_paused = true)]
    async fn exponential_backoff_between_attempts_then_fallback() {
        let a = Scripted::new(vec![Err(http(503, None)), Err(http(503, None)), Err(http(503, None))]);
        let b = Scripted::new(vec![Ok("from b")]);
        let runner = AgentRunner::new(&BTreeMap::new(), reqwest::Client::new())
            .with_retry_policy(RetryPolicy { jitter: 0.0, ..RetryPolicy::default() })
            .with_provider("a", a.clone())
            .with_provider("b", b.clone());
        let (tx, _rx) = mpsc::channel::<RunEvent>(16);
        let out = runner
            .run(&chain(&["a/x", "b/y"]), req(), tx, CancellationToken::new(), Duration::from_secs(600))
            .await
            .unwrap();
        assert_eq!((out.text.as_str(), out.model.as_str()), ("from b", "y"));
        let c = a.calls();
        assert_eq!(c.len(), 3);
        assert_eq!(c[1] - c[0], Duration::from_millis(500));
        assert_eq!(c[2] - c[1], Duration::from_secs(1));
        assert_eq!(b.calls()[0] - c[2], Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn long_retry_after_falls_over_immediately() {
        let a = Scripted::new(vec![Err(http(429, Some(61_000)))]);
        let b = Scripted::new(vec![Ok("b")]);
        let runner = AgentRunner::new(&BTreeMap::new(), reqwest::Client::new())
            .with_provider("a", a.clone())
            .with_provider("b", b.clone());
        let (tx, _rx) = mpsc::channel::<RunEvent>(16);
        let start = Instant::now();
        let out = runner
            .run(&chain(&["a/x", "b/y"]), req(), tx, CancellationToken::new(), Duration::from_secs(600))
            .await
            .unwrap();
        assert_eq!(out.text, "b");
        assert_eq!(a.calls().len(), 1);
        assert_eq!(Instant::now() - start, Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn non_retryable_falls_back_without_retry_and_last_error_wins() {
        let a = Scripted::new(vec![Err(http(400, None))]);
        let b = Scripted::new(vec![Err(AgentError::malformed("x"))]);
        let runner = AgentRunner::new(&BTreeMap::new(), reqwest::Client::new())
            .with_provider("a", a.clone())
            .with_provider("b", b.clone());
        let (tx, _rx) = mpsc::channel::<RunEvent>(16);
        let err = runner
            .run(&chain(&["a/x", "nope/z", "b/y"]), req(), tx, CancellationToken::new(), Duration::from_secs(600))
            .await
            .unwrap_err();
        assert_eq!(err, AgentError::malformed("x"));
        assert_eq!((a.calls().len(), b.calls().len()), (1, 1));
    }

    #[tokio::test(start_paused = true)]
    async fn a_wait_past_the_deadline_is_not_taken() {
        let a = Scripted::new(vec![Err(http(429, Some(30_000)))]);
        let b = Scripted::new(vec![Ok("b")]);
        let runner = AgentRunner::new(&BTreeMap::new(), reqwest::Client::new())
            .with_provider("a", a.clone())
            .with_provider("b", b.clone());
        let (tx, _rx) = mpsc::channel::<RunEvent>(16);
        let out = runner
            .run(&chain(&["a/x", "b/y"]), req(), tx, CancellationToken::new(), Duration::from_secs(10))
            .await
            .unwrap();
        assert_eq!(out.text, "b");
    }

    #[tokio::test(start_paused = true)]
    async fn deadline_and_cancel() {
        let runner =
            AgentRunner::new(&BTreeMap::new(), reqwest::Client::new()).with_provider("a", Scripted::new(vec![]));
        let (tx, _rx) = mpsc::channel::<RunEvent>(16);
        let start = Instant::now();
        let err = runner
            .run(&chain(&["a/x"]), req(), tx.clone(), CancellationToken::new(), Duration::from_secs(5))
            .await
            .unwrap_err();
        assert_eq!(err, AgentError::Timeout);
        assert_eq!(Instant::now() - start, Duration::from_secs(5));

        let cancel = CancellationToken::new();
        let c2 = cancel.clone();
        let refs = chain(&["a/x"]);
        let run = runner.run(&refs, req(), tx, cancel, Duration::from_secs(600));
        let (r, ()) = tokio::join!(run, async move {
            tokio::time::sleep(Duration::from_secs(1)).await;
            c2.cancel();
        });
        assert_eq!(r, Err(AgentError::Cancelled));
    }

    #[tokio::test]
    async fn empty_chain_is_echo_and_describe_says_so() {
        let runner = AgentRunner::new(&BTreeMap::new(), reqwest::Client::new());
        let (tx, rx) = mpsc::channel::<RunEvent>(4);
        let out = runner.run(&[], req(), tx, CancellationToken::new(), Duration::from_secs(1)).await.unwrap();
        assert_eq!((out.text.as_str(), out.provider.as_str()), ("echo: hi", "echo"));
        assert_eq!(collect(rx).await, vec![RunEvent::Delta("echo: hi".into())]);
        let s = runner.describe(&[]);
        assert!(s.echo_only);
        assert_eq!(s.message.as_deref(), Some(ECHO_ONLY_MESSAGE));
        let s = runner.describe(&chain(&["echo"]));
        assert!(s.echo_only);
        let s = runner.describe(&chain(&["ghost/m", "echo"]));
        assert!(!s.echo_only);
        assert_eq!(s.primary.unwrap().to_string(), "ghost/m");
        assert_eq!(s.problems.len(), 1);
    }
}
