//! The gateway value: owns the store handle, the config snapshot, the session actors, the run
//! registry, the delivery worker and the method table. A restart drops the whole value and
//! builds a fresh one; nothing here lives in a `static`.

use crate::channels::{AccountChange, ChannelSupervisor, LifecyclePolicy, ResumeStore};
use crate::events::{EventBus, EventScope};
use crate::methods::MethodTable;
use crate::plugins::{PluginChange, PluginHost};
use crate::runs::{RunInfo, RunRegistry, RunStatus};
use crate::session::{ReplyTo, SessionHandle, SessionMsg, Turn};
use crate::snapshot::Snapshot;
use crate::supervisor::{StopOutcome, Supervisor};
use crate::writer::StoreWriter;
use arc_swap::ArcSwap;
use pincer_core::config::{Config, DmPolicy, QueueMode, ReplyToMode};
use pincer_core::routing::resolve_route;
use pincer_core::session_key::SessionKey;
use pincer_core::wake::{decide, DropReason, MentionGate, WakeDecision, WakePolicy, WakeReason};
use pincer_core::{AccountId, AgentId, ChannelId, DeliveryTarget, Inbound};
use pincer_store::{AcceptInbound, NewOutbox, OutboxStatus, Store};
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};
use tokio::sync::{Notify, Semaphore};

/// Inbound dedupe window: 24 h, longer than any platform's redelivery window.
pub const DEDUPE_TTL_MS: i64 = 24 * 3600 * 1000;
/// Finished inbound ledger rows and closed outbox rows are kept this long (30 days), so
/// operators can still inspect recent failures.
pub const LEDGER_RETENTION_MS: i64 = 30 * 24 * 3600 * 1000;
/// Thread participation is remembered this long after the bot's last reply (7 days, as the
/// reference's Mattermost channel does).
pub const THREAD_RETENTION_MS: i64 = 7 * 24 * 3600 * 1000;
/// How often the maintenance task prunes expired rows.
pub const MAINTENANCE_EVERY: Duration = Duration::from_secs(600);

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

/// A monotonically increasing counter for `/metrics`.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    /// Add one.
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
    /// Add `n`.
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }
    /// Current value.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Counters exported on `/metrics`.
#[derive(Debug, Default)]
pub struct Counters {
    /// Inbound messages accepted for a run.
    pub inbound_accepted: Counter,
    /// Inbound messages dropped by the wake decision.
    pub inbound_dropped: Counter,
    /// Inbound duplicates (dedupe ledger).
    pub inbound_duplicate: Counter,
    /// Runs that produced a visible reply.
    pub runs_ok: Counter,
    /// Runs that ended silent.
    pub runs_silent: Counter,
    /// Runs that failed or timed out.
    pub runs_failed: Counter,
    /// Sum of the durations of finished runs (from the start of the provider call), in ms.
    pub run_ms_total: Counter,
    /// Runs counted in `run_ms_total`.
    pub runs_timed: Counter,
    /// Outbox rows delivered.
    pub deliveries_sent: Counter,
    /// Outbox rows that failed for good.
    pub deliveries_failed: Counter,
    /// Inbound channel messages by (channel, account, `woken`|`skipped`, reason code).
    pub inbound_by_reason: Mutex<BTreeMap<ReasonKey, u64>>,
}

/// Key of [`Counters::inbound_by_reason`]: (channel, account, `woken`|`skipped`, reason code).
pub type ReasonKey = (String, String, &'static str, &'static str);

impl Counters {
    /// Count one inbound channel message's wake decision.
    pub fn inbound(&self, channel: &ChannelId, account: &AccountId, woken: bool, reason: &'static str) {
        let key = (
            channel.as_str().to_string(),
            account.as_str().to_string(),
            if woken { "woken" } else { "skipped" },
            reason,
        );
        *lock(&self.inbound_by_reason).entry(key).or_default() += 1;
    }

    /// A copy of the per-reason counts.
    pub fn inbound_by_reason(&self) -> BTreeMap<ReasonKey, u64> {
        lock(&self.inbound_by_reason).clone()
    }
}

/// Errors of the runtime API. `code()` maps to the control plane's error codes.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// Bad input from a client.
    #[error("{0}")]
    Invalid(String),
    /// The store failed.
    #[error("store error: {0}")]
    Store(#[from] pincer_store::StoreError),
    /// The gateway is shutting down.
    #[error("gateway is shutting down")]
    ShuttingDown,
}

impl RuntimeError {
    /// OpenClaw error code: `INVALID_REQUEST` or `UNAVAILABLE`.
    pub fn code(&self) -> &'static str {
        match self {
            RuntimeError::Invalid(_) => "INVALID_REQUEST",
            _ => "UNAVAILABLE",
        }
    }
}

/// What happened to an inbound message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IngestOutcome {
    /// Accepted; a run was queued.
    Accepted {
        /// Run id.
        run_id: String,
        /// Session key.
        session_key: SessionKey,
    },
    /// Not run; the reason code was logged.
    Dropped(DropReason),
}

/// A turn submitted through the control plane or the CLI (`chat.send`, `agent`).
#[derive(Clone, Debug, Default)]
pub struct SubmitTurn {
    /// Session key (bare keys are qualified with the agent). Default: the agent's main session.
    pub session_key: Option<String>,
    /// Agent id. Default: from the session key, else the default agent.
    pub agent_id: Option<String>,
    /// The user's message.
    pub message: String,
    /// Idempotency key; becomes the run id.
    pub idempotency_key: Option<String>,
    /// Deliver the reply to this channel target (through the outbox) instead of only the
    /// session transcript.
    pub deliver: Option<DeliveryTarget>,
    /// Queue mode override.
    pub queue_mode: Option<QueueMode>,
    /// Ingress name for the dedupe ledger (`webchat`, `api`, `cli`).
    pub ingress: String,
}

/// The answer to [`GatewayHandle::submit`].
#[derive(Clone, Debug)]
pub struct Submitted {
    /// Run id.
    pub run_id: String,
    /// Session key.
    pub session_key: SessionKey,
    /// True when the idempotency key was seen before: nothing new was started.
    pub duplicate: bool,
    /// Current info (for a duplicate, the original run's).
    pub info: Option<RunInfo>,
}

/// An outbound send outside a run (`send`, `pincer message send`).
#[derive(Clone, Debug)]
pub struct SendRequest {
    /// Channel id.
    pub channel: String,
    /// Account id (default `default`).
    pub account: Option<String>,
    /// Platform target.
    pub to: String,
    /// Thread.
    pub thread_id: Option<String>,
    /// Text.
    pub text: String,
    /// Idempotency key; a repeat returns the first row.
    pub idempotency_key: Option<String>,
    /// Session to mirror the text into, if any.
    pub session_key: Option<String>,
}

/// Report of a config apply.
#[derive(Clone, Debug, Default, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ReloadReport {
    /// New generation.
    pub generation: u64,
    /// Changed config paths.
    pub changed: Vec<String>,
    /// Paths that only take effect after a restart of the gateway process.
    pub restart_required: Vec<String>,
    /// Time of the apply, ms since the epoch.
    pub applied_at: i64,
    /// What happened to each channel account (`kept`, `restarted`, `started`, `stopped`,
    /// `failed`).
    pub channels: Vec<AccountChange>,
    /// What happened to each plugin when `plugins.*` changed (`kept`, `started`,
    /// `restarting`, `stopped`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub plugins: Vec<PluginChange>,
}

/// Options for [`Gateway::start`].
pub struct GatewayOptions {
    /// State directory (already locked by the caller).
    pub state_dir: PathBuf,
    /// Config file path, if any (for status).
    pub config_path: Option<PathBuf>,
    /// Validated config.
    pub config: Config,
    /// sha256 of its text.
    pub config_hash: String,
    /// Validation warnings, shown in status.
    pub warnings: Vec<String>,
    /// The open store.
    pub store: Arc<Store>,
    /// Version string for `hello-ok.server.version`.
    pub version: String,
    /// Start the delivery worker (tests and benchmarks may turn it off).
    pub deliver: bool,
    /// Connect the configured channel accounts with these lifecycle timings (tests shorten
    /// them). `None`: no channel account is connected and no plugin is started (the CLI's
    /// in-process fallback, benchmarks), though outbound senders still exist.
    pub channels: Option<LifecyclePolicy>,
}

/// Shared state. Reached through [`GatewayHandle`].
pub struct Inner {
    pub(crate) sup: Supervisor,
    pub(crate) store: Arc<Store>,
    /// Group-commit writer for hot-path writes; lives on its own supervisor so it outlasts
    /// the tasks that write through it during a drain.
    pub(crate) writer: StoreWriter,
    storage_sup: Supervisor,
    writer_task: Mutex<Option<tokio::task::JoinHandle<()>>>,
    pub(crate) snapshot: ArcSwap<Snapshot>,
    pub(crate) events: EventBus,
    sessions: Mutex<HashMap<SessionKey, SessionHandle>>,
    next_actor: AtomicU64,
    runs: Mutex<RunRegistry>,
    pub(crate) run_permits: Arc<Semaphore>,
    permits_total: AtomicU64,
    pub(crate) delivery_wake: Notify,
    pub(crate) counters: Counters,
    /// Plugin processes and the method table (core + plugin methods).
    plugins: PluginHost,
    http: reqwest::Client,
    started: Instant,
    started_at_ms: i64,
    version: String,
    state_dir: PathBuf,
    config_path: Option<PathBuf>,
    warnings: Mutex<Vec<String>>,
    last_reload: Mutex<Option<ReloadReport>>,
    last_reload_error: Mutex<Option<Value>>,
    /// Every channel account's connection.
    pub(crate) channels: Arc<ChannelSupervisor>,
    /// Set while an in-process restart drains: inbound messages are still accepted durably,
    /// but left for the next runtime to run.
    draining: std::sync::atomic::AtomicBool,
    /// Notified whenever a run reaches a terminal state.
    pub(crate) run_finished: Notify,
    /// Channel accounts are connected (false for the CLI's in-process fallback).
    connect_channels: bool,
}

/// The runtime's [`pincer_channels::InboundSink`]: every channel account hands its messages
/// here. Holds no routing or policy state; it reads the current snapshot per message.
struct Ingress(Weak<Inner>);

impl pincer_channels::InboundSink for Ingress {
    fn deliver(&self, inbound: Inbound) -> pincer_channels::BoxFuture<'_, Result<(), pincer_channels::SinkClosed>> {
        Box::pin(async move {
            let inner = self.0.upgrade().ok_or(pincer_channels::SinkClosed)?;
            let handle = GatewayHandle { inner };
            match handle.ingest_channel(inbound).await {
                Ok(_) => Ok(()),
                Err(RuntimeError::ShuttingDown) => Err(pincer_channels::SinkClosed),
                Err(e) => {
                    tracing::error!(error = %e, "inbound message could not be accepted");
                    Ok(())
                }
            }
        })
    }
}

/// What plugins may ask of the gateway: events to read-scoped clients, sends through the
/// outbox. Holds no state of its own.
struct PluginServices(Weak<Inner>);

impl crate::plugins::Services for PluginServices {
    fn emit(&self, event: &str, payload: Value) {
        if let Some(inner) = self.0.upgrade() {
            inner.events.emit(event, payload, EventScope::Read);
        }
    }

    fn send(&self, req: SendRequest) -> crate::plugins::BoxFuture<'static, Result<i64, RuntimeError>> {
        let inner = self.0.upgrade();
        Box::pin(async move {
            let inner = inner.ok_or(RuntimeError::ShuttingDown)?;
            GatewayHandle { inner }.send(req).await.map(|(id, _)| id)
        })
    }
}

/// Resume state of channel accounts in the store's kv table (`channel-resume:<ch>:<acct>`).
struct KvResume(Arc<Store>);

impl ResumeStore for KvResume {
    fn load(&self, key: &crate::channels::AccountKey) -> Option<String> {
        self.0.kv_get(&format!("channel-resume:{}:{}", key.0, key.1)).ok().flatten().filter(|v| !v.is_empty())
    }
    fn save(&self, key: &crate::channels::AccountKey, state: Option<String>) {
        let k = format!("channel-resume:{}:{}", key.0, key.1);
        if let Err(e) = self.0.kv_set(&k, state.as_deref().unwrap_or(""), now_ms()) {
            tracing::warn!(error = %e, channel = %key.0, account = %key.1, "cannot save channel resume state");
        }
    }
}

/// Build the channel catalog of a config (env supplies token fallbacks).
fn catalog_for(config: &Config, http: &reqwest::Client) -> pincer_channels::Catalog {
    pincer_channels::catalog::build(config, &|k| std::env::var(k).ok(), http)
}

/// The running gateway. Dropping it without [`Gateway::shutdown`] aborts nothing gracefully.
pub struct Gateway {
    handle: GatewayHandle,
}

/// Cheap, cloneable handle to the running gateway.
#[derive(Clone)]
pub struct GatewayHandle {
    inner: Arc<Inner>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Inner {
    pub(crate) fn update_run(&self, turn: &Turn, f: impl Fn(&mut RunInfo)) {
        let mut runs = lock(&self.runs);
        runs.update(&turn.run_id, &f);
        for id in &turn.merged_runs {
            runs.update(id, &f);
        }
        drop(runs);
        self.run_finished.notify_waiters();
    }

    /// Remove the session entry if it still belongs to actor `id`.
    pub(crate) fn remove_session_if(&self, key: &SessionKey, id: u64) -> bool {
        self.retire_session(key, id, || true)
    }

    /// Remove the session entry if it still belongs to actor `id` and `idle()` holds, both
    /// checked under the sessions lock (which every sender holds while sending).
    pub(crate) fn retire_session(&self, key: &SessionKey, id: u64, idle: impl FnOnce() -> bool) -> bool {
        let mut map = lock(&self.sessions);
        if map.get(key).is_some_and(|h| h.id == id) && idle() {
            map.remove(key);
            true
        } else {
            false
        }
    }
}

impl Gateway {
    /// Build the runtime, reconcile what a previous process left behind (in-flight outbox
    /// rows, unfinished inbound messages), and start the delivery worker.
    /// Errors: store failures while recovering.
    pub async fn start(opts: GatewayOptions) -> Result<Gateway, RuntimeError> {
        let http = reqwest::Client::builder()
            .user_agent(concat!("pincer/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| RuntimeError::Invalid(format!("cannot build HTTP client: {e}")))?;
        let max = opts.config.agents.defaults.max_concurrent.max(1) as usize;
        let catalog = catalog_for(&opts.config, &http);
        let plugins_config = opts.config.plugins.clone();
        let snapshot = Snapshot::build(opts.config, opts.config_hash, 1, http.clone(), &catalog);
        let storage_sup = Supervisor::new();
        let (writer, writer_task) = StoreWriter::spawn(opts.store.clone(), &storage_sup);
        let sup = Supervisor::new();
        let resume: Arc<dyn ResumeStore> = Arc::new(KvResume(opts.store.clone()));
        let connect_channels = opts.channels.is_some();
        let plugin_sup = sup.clone();
        let inner = Arc::new_cyclic(|weak: &Weak<Inner>| Inner {
            channels: Arc::new(ChannelSupervisor::new(
                sup.clone(),
                Arc::new(Ingress(weak.clone())),
                resume,
                opts.channels.unwrap_or_default(),
            )),
            draining: std::sync::atomic::AtomicBool::new(false),
            run_finished: Notify::new(),
            connect_channels,
            sup,
            store: opts.store,
            writer,
            storage_sup,
            writer_task: Mutex::new(Some(writer_task)),
            snapshot: ArcSwap::from_pointee(snapshot),
            events: EventBus::new(1024),
            sessions: Mutex::new(HashMap::new()),
            next_actor: AtomicU64::new(1),
            runs: Mutex::new(RunRegistry::default()),
            run_permits: Arc::new(Semaphore::new(max)),
            permits_total: AtomicU64::new(max as u64),
            delivery_wake: Notify::new(),
            counters: Counters::default(),
            plugins: PluginHost::new(
                plugin_sup,
                Arc::new(PluginServices(weak.clone())),
                opts.version.clone(),
                crate::plugins::Roots::new(&opts.state_dir, opts.config_path.as_deref()),
                connect_channels,
            ),
            http,
            started: Instant::now(),
            started_at_ms: now_ms(),
            version: opts.version,
            state_dir: opts.state_dir,
            config_path: opts.config_path,
            warnings: Mutex::new(opts.warnings),
            last_reload: Mutex::new(None),
            last_reload_error: Mutex::new(None),
        });
        let handle = GatewayHandle { inner: inner.clone() };
        crate::delivery::recover(&inner).await;
        handle.resume_unfinished()?;
        if opts.deliver {
            let i2 = inner.clone();
            inner.sup.spawn("delivery-worker", crate::delivery::run(i2));
        }
        inner.sup.spawn("maintenance", maintenance(inner.clone()));
        // Plugins initialize in the background: one that hangs delays nothing else.
        inner.plugins.apply(&plugins_config);
        if connect_channels {
            let changes = inner.channels.apply(&catalog, || {}).await;
            for c in &changes {
                tracing::info!(channel = %c.channel, account = %c.account_id, action = c.action, error = ?c.error, "channel account");
            }
            inner.sup.spawn("health-monitor", inner.channels.clone().monitor(inner.sup.token()));
        }
        Ok(Gateway { handle })
    }

    /// A handle for the control plane and channels.
    pub fn handle(&self) -> GatewayHandle {
        self.handle.clone()
    }

    /// First half of an in-process restart: stop starting runs (new inbound messages are still
    /// accepted durably and left for the next runtime), wait up to `deadline` for the runs in
    /// flight to finish, then stop every channel account (awaiting each close). Runs still
    /// going at the deadline are interrupted by the shutdown that follows; they stay
    /// unfinished in the store and the next runtime runs them again. Returns the number of
    /// runs that were still active at the deadline.
    pub async fn drain(&self, deadline: Duration) -> usize {
        let inner = &self.handle.inner;
        inner.draining.store(true, Ordering::SeqCst);
        let until = tokio::time::Instant::now() + deadline;
        let left = loop {
            let notified = inner.run_finished.notified();
            let active = lock(&inner.runs).active_count();
            if active == 0 {
                break 0;
            }
            if tokio::time::timeout_at(until, notified).await.is_err() {
                break lock(&inner.runs).active_count();
            }
        };
        if left > 0 {
            tracing::warn!(
                runs = left,
                deadline_ms = deadline.as_millis() as u64,
                "restart drain deadline passed; interrupting runs (they run again after the restart)"
            );
        }
        let outcome = inner.channels.stop_all().await;
        tracing::info!(?outcome, "channel accounts stopped for restart");
        left
    }

    /// Stop: cancel every task and wait up to `deadline`. Runs cut short stay unfinished in the
    /// store and are resumed by the next start.
    pub async fn shutdown(self, deadline: Duration) -> StopOutcome {
        let inner = &self.handle.inner;
        inner.events.emit("shutdown", json!({"reason": "gateway stopping"}), EventScope::All);
        // Channel accounts first: each closes its connection (bounded per account).
        let channels = inner.channels.stop_all().await;
        // Plugins next, in order (shutdown, wait, kill, reap), while their tasks still run.
        inner.plugins.shutdown().await;
        let outcome = inner.sup.shutdown(deadline).await;
        let outcome = if channels == StopOutcome::Forced { StopOutcome::Forced } else { outcome };
        // Everything that writes has stopped: flush the writer last.
        inner.writer.stop();
        let task = lock(&inner.writer_task).take();
        if let Some(t) = task {
            if tokio::time::timeout(deadline, t).await.is_err() {
                tracing::error!("store writer did not finish in time");
                return StopOutcome::Forced;
            }
        }
        inner.storage_sup.shutdown(Duration::from_millis(100)).await;
        outcome
    }
}

impl GatewayHandle {
    /// The current config snapshot.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.inner.snapshot.load_full()
    }

    /// The event bus.
    pub fn events(&self) -> &EventBus {
        &self.inner.events
    }

    /// The current method table (core + plugin methods), read per request.
    pub fn methods(&self) -> Arc<MethodTable> {
        self.inner.plugins.table()
    }

    /// The plugin host (readiness after a restart).
    pub fn plugins(&self) -> &PluginHost {
        &self.inner.plugins
    }

    /// `plugins.list` payload, from the current method table.
    pub fn plugins_list(&self) -> Value {
        self.methods().plugins.list()
    }

    /// The store.
    pub fn store(&self) -> &Arc<Store> {
        &self.inner.store
    }

    /// The supervisor (for the control plane's own tasks).
    pub fn supervisor(&self) -> &Supervisor {
        &self.inner.sup
    }

    /// Version string.
    pub fn version(&self) -> &str {
        &self.inner.version
    }

    /// The state directory.
    pub fn state_dir(&self) -> &std::path::Path {
        &self.inner.state_dir
    }

    /// Uptime in ms.
    pub fn uptime_ms(&self) -> u64 {
        self.inner.started.elapsed().as_millis() as u64
    }

    /// Counters.
    pub fn counters(&self) -> &Counters {
        &self.inner.counters
    }

    /// Route, decide and accept one inbound channel message. Routing is a pure function of the
    /// event and the current snapshot; the wake decision is logged with its reason code; the
    /// dedupe ledger guarantees at most one run per (channel, account, message id).
    pub async fn ingest(&self, inbound: Inbound, policy: &WakePolicy) -> Result<IngestOutcome, RuntimeError> {
        self.ingest_with(inbound, Some(policy)).await
    }

    /// [`GatewayHandle::ingest`] for channel adapters: the wake policy and `replyToMode` come
    /// from the channel's config in the current snapshot.
    pub async fn ingest_channel(&self, inbound: Inbound) -> Result<IngestOutcome, RuntimeError> {
        self.ingest_with(inbound, None).await
    }

    async fn ingest_with(
        &self,
        mut inbound: Inbound,
        policy: Option<&WakePolicy>,
    ) -> Result<IngestOutcome, RuntimeError> {
        if let (Some(thread), false) = (&inbound.thread_id, inbound.mentions.thread_participation) {
            if inbound.chat_kind != pincer_core::ChatKind::Direct {
                inbound.mentions.thread_participation = self.inner.store.participated(
                    &inbound.channel,
                    &inbound.account,
                    &inbound.chat_id,
                    thread,
                    now_ms() - THREAD_RETENTION_MS,
                )?;
            }
        }
        let (mut route, decision, reply_mode, onchar_prefix) = {
            let snap = self.inner.snapshot.load();
            let reply_mode = pincer_channels::catalog::reply_to_mode_for(&snap.config, &inbound);
            if reply_mode != ReplyToMode::Off
                && inbound.thread_id.is_none()
                && pincer_channels::catalog::replies_open_threads(&inbound.channel)
            {
                // The reply starts a thread under this message: the conversation lives in
                // that thread's session from the first message on.
                inbound.thread_id = Some(inbound.message_id.clone());
            }
            let route = resolve_route(&snap.config, &inbound);
            let mut policy = match policy {
                Some(p) => p.clone(),
                None => pincer_channels::catalog::wake_policy(&snap.config, &inbound),
            };
            if inbound.chat_kind == pincer_core::ChatKind::Direct
                && !policy.dm_sender_allowed
                && matches!(policy.dm_policy, DmPolicy::Pairing | DmPolicy::Allowlist)
            {
                // Approved through pairing (`pincer pairing approve`).
                policy.dm_sender_allowed = self.inner.store.is_paired(
                    inbound.channel.as_str(),
                    inbound.account.as_str(),
                    &inbound.author.id,
                )?;
            }
            let decision = decide(&inbound, &policy, snap.patterns_for(&route.agent_id));
            let onchar_prefix = match (&decision, &policy.gate) {
                (WakeDecision::Wake(WakeReason::Onchar), MentionGate::Prefix(ps)) => {
                    ps.iter().find(|p| !p.is_empty() && inbound.text.trim_start().starts_with(p.as_str())).cloned()
                }
                _ => None,
            };
            (route, decision, reply_mode, onchar_prefix)
        };
        if let Some(p) = onchar_prefix {
            // `>what is this` runs on `what is this`.
            inbound.text = inbound.text.trim_start()[p.len()..].trim_start().to_string();
        }
        if reply_mode != ReplyToMode::Off {
            route.delivery.reply_to_id = Some(inbound.message_id.clone());
        }
        let reason = match decision {
            WakeDecision::Drop(r) => {
                self.inner.counters.inbound_dropped.inc();
                self.inner.counters.inbound(&inbound.channel, &inbound.account, false, r.code());
                tracing::info!(channel = %inbound.channel, account = %inbound.account, message_id = %inbound.message_id,
                    reason = r.code(), "inbound dropped");
                if r == DropReason::PairingRequired {
                    self.offer_pairing(&inbound, &route.delivery).await?;
                }
                return Ok(IngestOutcome::Dropped(r));
            }
            WakeDecision::Wake(r) => r,
        };
        let run_id = format!("{}:{}:{}", inbound.channel, inbound.account, inbound.message_id);
        let accepted = self
            .accept(OwnedAccept {
                channel: inbound.channel.as_str().to_string(),
                account: inbound.account.as_str().to_string(),
                message_id: inbound.message_id.clone(),
                session_key: route.session_key.as_str().to_string(),
                agent_id: route.agent_id.as_str().to_string(),
                run_id: run_id.clone(),
                text: inbound.text.clone(),
                target: Some(route.delivery.clone()),
                chat_kind: Some(inbound.chat_kind),
            })
            .await?;
        let Some(acc) = accepted else {
            self.inner.counters.inbound_duplicate.inc();
            self.inner.counters.inbound(&inbound.channel, &inbound.account, false, DropReason::Duplicate.code());
            tracing::info!(channel = %inbound.channel, account = %inbound.account, message_id = %inbound.message_id,
                reason = "duplicate", "inbound dropped");
            return Ok(IngestOutcome::Dropped(DropReason::Duplicate));
        };
        self.inner.counters.inbound_accepted.inc();
        self.inner.counters.inbound(&inbound.channel, &inbound.account, true, reason.code());
        tracing::info!(channel = %inbound.channel, account = %inbound.account, message_id = %inbound.message_id,
            session = %route.session_key, reason = reason.code(), "inbound accepted");
        if self.inner.draining.load(Ordering::SeqCst) {
            // Durable in the ledger; the next runtime runs it (resume_unfinished).
            tracing::info!(session = %route.session_key, "inbound accepted during restart; runs after it");
            return Ok(IngestOutcome::Accepted { run_id, session_key: route.session_key });
        }
        let turn = Turn::new(
            run_id.clone(),
            route.session_key.clone(),
            route.agent_id,
            inbound.text,
            acc,
            ReplyTo::Channel(route.delivery),
        );
        self.start_turn(turn);
        Ok(IngestOutcome::Accepted { run_id, session_key: route.session_key })
    }

    /// `dmPolicy: pairing` and an unknown sender: issue a pairing code (once; at most 3
    /// pending per account) and send it to the sender through the outbox. The message itself
    /// is not processed.
    async fn offer_pairing(&self, inbound: &Inbound, target: &DeliveryTarget) -> Result<(), RuntimeError> {
        let issued = self.inner.store.pairing_request(
            inbound.channel.as_str(),
            inbound.account.as_str(),
            &inbound.author.id,
            inbound.author.name.as_deref(),
            now_ms(),
        )?;
        let code = match issued {
            pincer_store::PairingRequest::Issued(code) => code,
            other => {
                tracing::info!(channel = %inbound.channel, account = %inbound.account, sender = %inbound.author.id,
                    outcome = ?other, "pairing: no new code sent");
                return Ok(());
            }
        };
        tracing::info!(channel = %inbound.channel, account = %inbound.account, sender = %inbound.author.id, code = %code,
            "pairing: code issued; approve with `pincer pairing approve {} {code}`", inbound.channel);
        let text = format!(
            "I don't know you yet. Your pairing code is {code} (valid for 1 hour). \
             Ask the operator to approve it with: pincer pairing approve {} {code}",
            inbound.channel
        );
        let mut target = target.clone();
        target.reply_to_id = None;
        let mut row = NewOutbox::new(target, text);
        row.idempotency_key = Some(format!("pairing:{}:{}:{code}", inbound.channel, inbound.account));
        self.inner.writer.run(move |tx| tx.enqueue_outbox(&row, now_ms())).await?;
        self.inner.delivery_wake.notify_one();
        Ok(())
    }

    /// Approve a pairing code of `channel` (`pairing.approve`). Returns the approved sender, or
    /// `None` for an unknown or expired code.
    pub fn approve_pairing(
        &self,
        channel: &str,
        code: &str,
    ) -> Result<Option<pincer_store::PairedSender>, RuntimeError> {
        let approved = self.inner.store.pairing_approve(channel, code, now_ms())?;
        if let Some(p) = &approved {
            tracing::info!(channel, account = %p.account_id, sender = %p.sender_id, "pairing: sender approved");
        }
        Ok(approved)
    }

    /// Pending pairing requests and approved senders (`pairing.list`).
    pub fn list_pairing(&self, channel: Option<&str>) -> Result<Value, RuntimeError> {
        let (pending, paired) = self.inner.store.pairing_list(channel, now_ms())?;
        Ok(json!({"pending": pending, "paired": paired}))
    }

    /// Accept a control-plane or CLI turn (`chat.send`, `agent`). Errors: an empty message, a
    /// malformed session key, store failures.
    pub async fn submit(&self, req: SubmitTurn) -> Result<Submitted, RuntimeError> {
        if self.inner.sup.is_shutting_down() || self.inner.draining.load(Ordering::SeqCst) {
            return Err(RuntimeError::ShuttingDown);
        }
        if req.message.trim().is_empty() {
            return Err(RuntimeError::Invalid("message must not be empty".into()));
        }
        let snap = self.inner.snapshot.load_full();
        let default_agent = match &req.agent_id {
            Some(a) if !a.trim().is_empty() => {
                if !AgentId::is_valid(a.trim()) {
                    return Err(RuntimeError::Invalid(format!("invalid agentId {a:?}")));
                }
                AgentId::new(a)
            }
            _ => snap.config.default_agent_id(),
        };
        let key = match req.session_key.as_deref().map(str::trim).filter(|s| !s.is_empty()) {
            Some(k) => SessionKey::qualify(k, &default_agent).map_err(|e| RuntimeError::Invalid(e.to_string()))?,
            None => SessionKey::main(&default_agent, &snap.config.session.main_key),
        };
        let agent = SessionKey::parse(key.as_str()).map(|p| p.agent).unwrap_or(default_agent);
        let run_id = req.idempotency_key.clone().filter(|k| !k.trim().is_empty()).unwrap_or_else(new_run_id);
        if let Some(info) = lock(&self.inner.runs).get(&run_id) {
            return Ok(Submitted { run_id, session_key: key, duplicate: true, info: Some(info) });
        }
        drop(snap);
        let ingress = if req.ingress.is_empty() { "api" } else { req.ingress.as_str() };
        let accepted = self
            .accept(OwnedAccept {
                channel: ingress.to_string(),
                account: AccountId::DEFAULT.to_string(),
                message_id: run_id.clone(),
                session_key: key.as_str().to_string(),
                agent_id: agent.as_str().to_string(),
                run_id: run_id.clone(),
                text: req.message.clone(),
                target: req.deliver.clone(),
                chat_kind: None,
            })
            .await?;
        let Some(acc) = accepted else {
            // Seen before this process started: report the recorded outcome.
            let info = self.inner.store.inbound_outcome(ingress, AccountId::DEFAULT, &run_id)?.map(|o| RunInfo {
                run_id: run_id.clone(),
                session_key: key.as_str().to_string(),
                agent_id: agent.as_str().to_string(),
                status: match o.outcome.as_deref() {
                    Some("replied") => RunStatus::Ok,
                    Some("silent") => RunStatus::Silent,
                    Some(_) => RunStatus::Error,
                    None => RunStatus::Queued,
                },
                text: None,
                error: o.reason,
                accepted_at: o.received_at,
                started_at: None,
                ended_at: o.finished_at,
            });
            return Ok(Submitted { run_id, session_key: key, duplicate: true, info });
        };
        let mut turn = Turn::new(
            run_id.clone(),
            key.clone(),
            agent,
            req.message,
            acc,
            req.deliver.map_or(ReplyTo::Session, ReplyTo::Channel),
        );
        turn.queue_mode = req.queue_mode;
        let info = self.start_turn(turn);
        Ok(Submitted { run_id, session_key: key, duplicate: false, info: Some(info) })
    }

    /// The canonical session key for what a client sent: a bare key (`webchat:abc`, `main`) is
    /// qualified with the default agent (`agent:main:webchat:abc`), as `chat.send` does, so
    /// `chat.history`, `chat.abort` and `sessions.*` find the same session. Errors: a
    /// malformed key.
    pub fn qualify_key(&self, key: &str) -> Result<String, RuntimeError> {
        let agent = self.inner.snapshot.load().config.default_agent_id();
        SessionKey::qualify(key.trim(), &agent)
            .map(|k| k.as_str().to_string())
            .map_err(|e| RuntimeError::Invalid(e.to_string()))
    }

    /// Accept one message through the group-commit writer.
    async fn accept(&self, a: OwnedAccept) -> Result<Option<pincer_store::Accepted>, RuntimeError> {
        Ok(self
            .inner
            .writer
            .run(move |tx| {
                tx.accept_turn(&AcceptInbound {
                    channel: &a.channel,
                    account: &a.account,
                    message_id: &a.message_id,
                    session_key: &a.session_key,
                    agent_id: &a.agent_id,
                    run_id: &a.run_id,
                    text: &a.text,
                    target: a.target.as_ref(),
                    chat_kind: a.chat_kind,
                    now_ms: now_ms(),
                    dedupe_ttl_ms: DEDUPE_TTL_MS,
                })
            })
            .await?)
    }

    /// Register a turn's run and hand it to its session actor.
    fn start_turn(&self, turn: Turn) -> RunInfo {
        let info = self.register_run(&turn);
        self.dispatch(turn);
        info
    }

    fn register_run(&self, turn: &Turn) -> RunInfo {
        let info = RunInfo {
            run_id: turn.run_id.clone(),
            session_key: turn.session_key.as_str().to_string(),
            agent_id: turn.agent_id.as_str().to_string(),
            status: RunStatus::Queued,
            text: None,
            error: None,
            accepted_at: now_ms(),
            started_at: None,
            ended_at: None,
        };
        lock(&self.inner.runs).insert(info.clone(), turn.cancel.clone());
        info
    }

    fn dispatch(&self, turn: Turn) {
        let key = turn.session_key.clone();
        let mut msg = SessionMsg::Turn(Box::new(turn));
        let mut map = lock(&self.inner.sessions);
        if let Some(h) = map.get(&key) {
            match h.tx.send(msg) {
                Ok(()) => return,
                Err(e) => {
                    msg = e.0;
                    map.remove(&key);
                }
            }
        }
        let id = self.inner.next_actor.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let _ = tx.send(msg);
        map.insert(key.clone(), SessionHandle { tx, id });
        drop(map);
        self.inner.sup.spawn("session-actor", crate::session::run_actor(self.inner.clone(), key, id, rx));
    }

    /// Re-dispatch inbound messages a previous process accepted but never finished.
    fn resume_unfinished(&self) -> Result<(), RuntimeError> {
        let pending = self.inner.store.unfinished_turns()?;
        if !pending.is_empty() {
            tracing::warn!(count = pending.len(), "resuming messages accepted before the last stop");
        }
        for p in pending {
            let accepted = pincer_store::Accepted { inbound_id: p.inbound_id, user_seq: p.user_seq };
            self.start_turn(Turn::new(
                p.run_id,
                SessionKey::from_raw(p.session_key),
                AgentId::new(&p.agent_id),
                p.text,
                accepted,
                p.target.map_or(ReplyTo::Session, ReplyTo::Channel),
            ));
        }
        Ok(())
    }

    /// Info about a run.
    pub fn run_info(&self, run_id: &str) -> Option<RunInfo> {
        lock(&self.inner.runs).get(run_id)
    }

    /// Wait until a run is terminal or `timeout` passes; returns the latest info.
    pub async fn wait_run(&self, run_id: &str, timeout: Duration) -> Option<RunInfo> {
        let mut rx = lock(&self.inner.runs).watch(run_id)?;
        let _ = tokio::time::timeout(timeout, rx.wait_for(|i| i.status.is_terminal())).await;
        let info = rx.borrow().clone();
        Some(info)
    }

    /// Abort queued and active runs of a session, or one run. Returns the run ids aborted.
    pub fn abort(&self, session_key: Option<&str>, run_id: Option<&str>) -> Vec<String> {
        let runs = lock(&self.inner.runs);
        let ids: Vec<String> = match (run_id, session_key) {
            (Some(r), _) => runs.get(r).filter(|i| !i.status.is_terminal()).map(|i| vec![i.run_id]).unwrap_or_default(),
            (None, Some(k)) => runs.active_for_session(k),
            (None, None) => Vec::new(),
        };
        for id in &ids {
            if let Some(t) = runs.cancel_token(id) {
                t.cancel();
            }
        }
        drop(runs);
        if run_id.is_none() {
            if let Some(k) = session_key {
                if let Some(h) = lock(&self.inner.sessions).get(&SessionKey::from_raw(k)) {
                    let _ = h.tx.send(SessionMsg::Abort);
                }
            }
        }
        ids
    }

    /// Queue an outbound message (outbox row first, then the platform call by the worker).
    /// Returns `(outbox id, created)`; `created` is false for a repeated idempotency key.
    /// Errors: unknown channel account, empty text or target.
    pub async fn send(&self, req: SendRequest) -> Result<(i64, bool), RuntimeError> {
        if req.text.trim().is_empty() {
            return Err(RuntimeError::Invalid("message must not be empty".into()));
        }
        if req.to.trim().is_empty() {
            return Err(RuntimeError::Invalid("target (to) must not be empty".into()));
        }
        let account = AccountId::new(req.account.as_deref().unwrap_or(""));
        let channel = ChannelId::new(&req.channel);
        {
            let snap = self.inner.snapshot.load();
            if snap.sender(channel.as_str(), account.as_str()).is_none() {
                let known: Vec<String> = snap.senders.keys().map(|(c, a)| format!("{c}/{a}")).collect();
                return Err(RuntimeError::Invalid(format!(
                    "channel {channel} account {account} is not configured (configured: {})",
                    if known.is_empty() { "none".to_string() } else { known.join(", ") }
                )));
            }
        }
        let target = DeliveryTarget { channel, account, to: req.to, thread_id: req.thread_id, reply_to_id: None };
        let mut row = NewOutbox::new(target, req.text);
        row.idempotency_key = req.idempotency_key;
        row.session_key = req.session_key;
        let enq = self.inner.writer.run(move |tx| tx.enqueue_outbox(&row, now_ms())).await?;
        let (id, created) = (enq.id, enq.created);
        tracing::info!(outbox_id = id, created, "outbound message queued");
        self.inner.delivery_wake.notify_one();
        Ok((id, created))
    }

    /// Reset a session: clear its transcript (the row and delivery context stay) and drop the
    /// actor's cached history. Returns whether the session existed.
    pub fn reset_session(&self, key: &str) -> Result<bool, RuntimeError> {
        let existed = self.inner.store.reset_session(key, now_ms())?;
        if let Some(h) = lock(&self.inner.sessions).get(&SessionKey::from_raw(key)) {
            let _ = h.tx.send(SessionMsg::Reset);
        }
        Ok(existed)
    }

    /// Put a `failed` or `unknown` delivery back in the queue (as a copy at the end of its
    /// target's lane). Returns the new row id, or `None` when the row does not exist or is in
    /// another state.
    pub fn retry_delivery(&self, id: i64) -> Result<Option<i64>, RuntimeError> {
        let copy = self.inner.store.requeue_outbox(id, now_ms())?;
        if copy.is_some() {
            self.inner.delivery_wake.notify_one();
        }
        Ok(copy)
    }

    /// Apply a validated config: build a new snapshot (generation + 1) and publish it
    /// atomically. Runs in flight keep the snapshot they started with.
    /// Channel accounts whose config changed are stopped (awaiting their close) before the
    /// snapshot is published and started after it; unchanged accounts keep their connection.
    pub async fn apply_config(&self, config: Config, hash: String, warnings: Vec<String>) -> ReloadReport {
        let old = self.inner.snapshot.load_full();
        let old_v = serde_json::to_value(&*old.config).unwrap_or(Value::Null);
        let new_v = serde_json::to_value(&config).unwrap_or(Value::Null);
        let changed = pincer_core::config::diff(&old_v, &new_v);
        let restart_required: Vec<String> = changed
            .iter()
            .filter(|p| matches!(pincer_core::config::classify(p), pincer_core::config::ChangeKind::RestartGateway))
            .cloned()
            .collect();
        let want = config.agents.defaults.max_concurrent.max(1) as u64;
        let generation = old.generation + 1;
        let plugins_changed =
            changed.iter().any(|p| p == "plugins" || p.starts_with("plugins.") || p.starts_with("plugins["));
        let plugins_config = config.plugins.clone();
        let catalog = catalog_for(&config, &self.inner.http);
        let snap = Arc::new(Snapshot::build(config, hash, generation, self.inner.http.clone(), &catalog));
        let channels = if self.inner.connect_channels {
            self.inner.channels.apply(&catalog, || self.inner.snapshot.store(snap)).await
        } else {
            self.inner.snapshot.store(snap);
            Vec::new()
        };
        for c in channels.iter().filter(|c| c.action != "kept") {
            tracing::info!(channel = %c.channel, account = %c.account_id, action = c.action, error = ?c.error, "channel account reloaded");
        }
        // A new plugin generation only when `plugins.*` changed: other reloads keep the
        // plugin processes.
        let plugins = if plugins_changed { self.inner.plugins.apply(&plugins_config) } else { Vec::new() };
        self.resize_permits(want);
        *lock(&self.inner.warnings) = warnings;
        let report = ReloadReport { generation, changed, restart_required, applied_at: now_ms(), channels, plugins };
        tracing::info!(generation, changed = report.changed.len(), restart_required = ?report.restart_required, "config applied");
        *lock(&self.inner.last_reload) = Some(report.clone());
        *lock(&self.inner.last_reload_error) = None;
        self.inner.delivery_wake.notify_one();
        report
    }

    fn resize_permits(&self, want: u64) {
        let have = self.inner.permits_total.swap(want, Ordering::SeqCst);
        if want > have {
            self.inner.run_permits.add_permits((want - have) as usize);
        } else if want < have {
            let sem = self.inner.run_permits.clone();
            let n = (have - want) as u32;
            self.inner.sup.spawn("shrink-permits", async move {
                if let Ok(p) = sem.acquire_many_owned(n).await {
                    p.forget();
                }
            });
        }
    }

    /// Record a reload that was refused (invalid file): shown in `status` until the next
    /// successful apply.
    pub fn record_reload_error(&self, source: &str, message: &str) {
        *lock(&self.inner.last_reload_error) = Some(json!({"source": source, "message": message, "at": now_ms()}));
    }

    /// `health` payload.
    pub fn health(&self) -> Value {
        let t0 = Instant::now();
        let snap = self.inner.snapshot.load();
        let counts = self.inner.store.outbox_counts().ok();
        // OpenClaw's health summary: `channels` keyed by channel id, each with its accounts.
        let mut channels = serde_json::Map::new();
        for row in self.channels_status() {
            let (c, a) = (row["channel"].as_str().unwrap_or_default(), row["accountId"].as_str().unwrap_or_default());
            let entry = channels.entry(c.to_string()).or_insert_with(|| json!({"accounts": {}}));
            entry["accounts"][a] = row.clone();
        }
        let order: Vec<String> = channels.keys().cloned().collect();
        let mut failed = Vec::new();
        if let Some(n) = counts.as_ref().map(|c| c.failed + c.unknown).filter(|n| *n > 0) {
            failed.push(json!({"queueName": "outbox", "count": n}));
        }
        json!({
            "ok": true,
            "ts": now_ms(),
            "durationMs": t0.elapsed().as_millis() as u64,
            "defaultAgentId": snap.config.default_agent_id().as_str(),
            "channels": channels,
            "channelOrder": order,
            "channelLabels": {},
            "deliveryQueues": {"failed": failed},
            "plugins": self.methods().plugins.health(),
        })
    }

    /// `status` payload: what an operator needs to see at a glance.
    pub fn status(&self) -> Value {
        let snap = self.inner.snapshot.load();
        let desc = snap.runner.describe(&snap.config.agent_model_chain(&snap.config.default_agent_id()));
        let counts = self.inner.store.outbox_counts().ok();
        let failed: Vec<Value> = self
            .inner
            .store
            .list_outbox(Some(OutboxStatus::Failed), 10)
            .unwrap_or_default()
            .into_iter()
            .chain(self.inner.store.list_outbox(Some(OutboxStatus::Unknown), 10).unwrap_or_default())
            .map(|r| json!({"id": r.id, "status": r.status.as_str(), "channel": r.target.channel.as_str(), "to": r.target.to, "error": r.last_error}))
            .collect();
        let c = &self.inner.counters;
        json!({
            "runtimeVersion": self.inner.version,
            "pid": std::process::id(),
            "uptimeMs": self.uptime_ms(),
            "startedAt": self.inner.started_at_ms,
            "stateDir": self.inner.state_dir.display().to_string(),
            "configPath": self.inner.config_path.as_ref().map(|p| p.display().to_string()),
            "config": {"generation": snap.generation, "hash": snap.hash, "warnings": *lock(&self.inner.warnings),
                       "problems": snap.problems, "lastReload": *lock(&self.inner.last_reload),
                       "lastReloadError": *lock(&self.inner.last_reload_error)},
            "agent": {"summary": desc.summary(), "model": desc},
            "sessions": {"active": lock(&self.inner.sessions).len()},
            "runs": {"active": lock(&self.inner.runs).active_count(), "ok": c.runs_ok.get(), "silent": c.runs_silent.get(), "failed": c.runs_failed.get()},
            "inbound": {"accepted": c.inbound_accepted.get(), "dropped": c.inbound_dropped.get(), "duplicates": c.inbound_duplicate.get()},
            "outbox": counts,
            "failedDeliveries": failed,
            "channels": self.channels_status(),
            "plugins": self.methods().plugins.status(),
            "tasks": self.inner.sup.task_count(),
        })
    }

    /// `channels.status` rows, one per configured account, with the account's inbound
    /// counters by reason (`inbound: {woken: {reason: n}, skipped: {reason: n}}`).
    pub fn channels_status(&self) -> Vec<Value> {
        let counts = self.inner.counters.inbound_by_reason();
        let mut rows = self.inner.channels.status();
        for row in &mut rows {
            let (c, a) = (row["channel"].as_str().unwrap_or_default(), row["accountId"].as_str().unwrap_or_default());
            let mut inbound = json!({"woken": {}, "skipped": {}});
            for ((_, _, outcome, reason), n) in counts.iter().filter(|((ch, ac, _, _), _)| ch == c && ac == a) {
                inbound[*outcome][*reason] = json!(n);
            }
            row["inbound"] = inbound;
        }
        rows
    }

    /// Accounts that are configured but not connected (for `/readyz`).
    pub fn channels_not_ready(&self) -> Vec<String> {
        self.inner.channels.not_ready()
    }

    /// The channel supervisor (`channels.start`, `channels.stop`).
    pub fn channels(&self) -> &ChannelSupervisor {
        &self.inner.channels
    }

    /// Config path (for reload and `config.get`).
    pub fn config_path(&self) -> Option<&PathBuf> {
        self.inner.config_path.as_ref()
    }
}

/// Periodically prune expired dedupe entries, old finished ledger rows and stale thread
/// participation, off the async workers. Returns at shutdown.
async fn maintenance(inner: Arc<Inner>) {
    let cancel = inner.sup.token();
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(MAINTENANCE_EVERY) => {}
        }
        let store = inner.store.clone();
        let pruned = inner
            .sup
            .spawn_blocking("maintenance-prune", move || {
                let now = now_ms();
                let dedupe = store.prune_dedupe(now)?;
                let ledger = store.prune_finished(now - LEDGER_RETENTION_MS)?;
                let threads = store.prune_threads(now - THREAD_RETENTION_MS)?;
                Ok::<_, pincer_store::StoreError>((dedupe, ledger, threads))
            })
            .await;
        match pruned {
            Ok(Ok((dedupe, ledger, threads))) => {
                tracing::debug!(
                    dedupe,
                    inbound = ledger.inbound,
                    outbox = ledger.outbox,
                    threads,
                    "pruned expired rows"
                )
            }
            Ok(Err(e)) => tracing::warn!(error = %e, "maintenance prune failed; will retry"),
            Err(e) => tracing::warn!(error = %e, "maintenance task failed; will retry"),
        }
    }
}

/// Owned fields of [`AcceptInbound`], to move into the writer.
struct OwnedAccept {
    channel: String,
    account: String,
    message_id: String,
    session_key: String,
    agent_id: String,
    run_id: String,
    text: String,
    target: Option<DeliveryTarget>,
    chat_kind: Option<pincer_core::ChatKind>,
}

/// A fresh random run id.
pub fn new_run_id() -> String {
    use rand::Rng;
    let n: u128 = rand::thread_rng().gen();
    format!("run-{n:032x}")
}
