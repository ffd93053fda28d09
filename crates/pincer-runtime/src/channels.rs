//! The channel supervisor: the one owner of every channel account's connection (DESIGN.md
//! bug 3). Each account has one manager task that runs the state machine
//! `Starting → Running → Backoff(n) → … → GaveUp | Stopped`; it is the only code that starts,
//! restarts or stops the account, and it never starts an attempt while the previous one is
//! alive (checked with a per-account generation counter, not only by construction).
//!
//! - An attempt is [`AccountRunner::run`] on its own task. Stopping cancels its token and waits
//!   for `run` to return (it closes its connection as part of returning) up to
//!   [`LifecyclePolicy::stop_timeout`]; after that the task is aborted and the stop recorded as
//!   [`StopOutcome::Forced`].
//! - An attempt that became ready and then ended is retried at once (up to
//!   [`LifecyclePolicy::reconnect_jitter`] of jitter). Attempts that fail to become ready back
//!   off exponentially with jitter, and after [`LifecyclePolicy::max_attempts`] consecutive
//!   failures, or one fatal error, the account gives up until `channels.start` or a config
//!   change. A panic in an adapter is a failure of that account only.
//! - The health monitor only *asks* for a restart, from transport facts (disconnected for
//!   longer than the connect grace, heartbeat not acknowledged, never ready); the manager
//!   applies the cooldown, the hourly cap and the per-account opt-out.

use crate::supervisor::{StopOutcome, Supervisor};
use pincer_channels::{
    AccountContext, AccountRunner, AccountSpec, Catalog, ConnectionFacts, InboundSink, RunError, StatusReporter,
};
use pincer_core::{AccountId, ChannelId};
use rand::Rng;
use serde::Serialize;
use serde_json::{json, Value};
use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Key of a channel account: (channel id, account id).
pub type AccountKey = (String, String);

/// Timings and limits of the account lifecycle. The defaults follow the issue and the
/// reference's channel manager (reference §6).
#[derive(Clone, Debug)]
pub struct LifecyclePolicy {
    /// How long a stop waits for `run` to close its connection and return (5 s).
    pub stop_timeout: Duration,
    /// First backoff delay after an attempt that failed to become ready (1 s).
    pub backoff_initial: Duration,
    /// Backoff ceiling (5 min).
    pub backoff_max: Duration,
    /// Consecutive failed attempts before giving up (10).
    pub max_attempts: u32,
    /// Upper bound of the delay before reconnecting a connection that had been ready (1 s).
    pub reconnect_jitter: Duration,
    /// Health check period (5 min).
    pub health_interval: Duration,
    /// No health checks this long after the supervisor starts (60 s).
    pub health_startup_grace: Duration,
    /// An attempt gets this long to become ready, and a dropped connection this long to come
    /// back, before the monitor calls it `stuck` / `disconnected` (120 s).
    pub connect_grace: Duration,
    /// Minimum time between two health restarts of one account (10 min).
    pub health_cooldown: Duration,
    /// Health restarts allowed per account per rolling hour (10).
    pub health_max_per_hour: usize,
}

impl Default for LifecyclePolicy {
    fn default() -> Self {
        LifecyclePolicy {
            stop_timeout: Duration::from_secs(5),
            backoff_initial: Duration::from_secs(1),
            backoff_max: Duration::from_secs(300),
            max_attempts: 10,
            reconnect_jitter: Duration::from_secs(1),
            health_interval: Duration::from_secs(300),
            health_startup_grace: Duration::from_secs(60),
            connect_grace: Duration::from_secs(120),
            health_cooldown: Duration::from_secs(600),
            health_max_per_hour: 10,
        }
    }
}

/// What to do after an attempt ended on its own.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Next {
    /// Start the next attempt after this delay.
    Retry {
        /// Delay before the next attempt.
        delay: Duration,
        /// Consecutive failed attempts so far (0 after a ready connection dropped).
        failures: u32,
    },
    /// Stop trying until `channels.start` or a config change.
    GiveUp,
}

/// The restart ladder: jittered exponential backoff over consecutive attempts that fail to
/// become ready, reset by any ready connection.
#[derive(Clone, Debug)]
pub struct Backoff {
    policy: LifecyclePolicy,
    failures: u32,
}

impl Backoff {
    /// A fresh ladder.
    pub fn new(policy: LifecyclePolicy) -> Self {
        Backoff { policy, failures: 0 }
    }

    /// Consecutive failed attempts.
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// Forget past failures (an operator start, a health restart, a config change).
    pub fn reset(&mut self) {
        self.failures = 0;
    }

    /// The base delay (without jitter) after `n` consecutive failures: `initial * 2^(n-1)`,
    /// capped at the maximum.
    pub fn base_delay(&self, n: u32) -> Duration {
        let exp = n.saturating_sub(1).min(20);
        self.policy.backoff_initial.saturating_mul(1u32 << exp).min(self.policy.backoff_max)
    }

    /// Decide after an attempt ended by itself. `ready`: it had become ready; `fatal`: it
    /// returned [`RunError::Fatal`]. `unit` in `[0, 1)` picks the jitter.
    pub fn on_exit(&mut self, ready: bool, fatal: bool, unit: f64) -> Next {
        if fatal {
            return Next::GiveUp;
        }
        if ready {
            self.failures = 0;
            return Next::Retry { delay: self.policy.reconnect_jitter.mul_f64(unit), failures: 0 };
        }
        self.failures += 1;
        if self.failures >= self.policy.max_attempts {
            return Next::GiveUp;
        }
        // Jitter ±10 %, as the reference's channel manager.
        let delay = self.base_delay(self.failures).mul_f64(0.9 + 0.2 * unit).min(self.policy.backoff_max);
        Next::Retry { delay, failures: self.failures }
    }
}

/// Cooldown and hourly cap of health restarts for one account.
#[derive(Clone, Debug, Default)]
pub struct HealthGate {
    recent: VecDeque<Instant>,
}

impl HealthGate {
    /// May a health restart happen at `now`? Records it when allowed. Errors: the reason it is
    /// refused (`cooldown`, `hourly-cap`).
    pub fn admit(&mut self, now: Instant, policy: &LifecyclePolicy) -> Result<(), &'static str> {
        let hour = Duration::from_secs(3600);
        while self.recent.front().is_some_and(|t| now.saturating_duration_since(*t) >= hour) {
            self.recent.pop_front();
        }
        if self.recent.back().is_some_and(|t| now.saturating_duration_since(*t) < policy.health_cooldown) {
            return Err("cooldown");
        }
        if self.recent.len() >= policy.health_max_per_hour {
            return Err("hourly-cap");
        }
        self.recent.push_back(now);
        Ok(())
    }

    /// Health restarts in the last hour.
    pub fn count(&self) -> usize {
        self.recent.len()
    }
}

/// The state of one account, as shown in status.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase", tag = "state")]
pub enum AccountState {
    /// An attempt is connecting.
    Starting,
    /// The attempt's connection is ready.
    Running,
    /// Waiting before the next attempt.
    Backoff {
        /// Consecutive failed attempts.
        attempt: u32,
        /// Delay in ms.
        delay_ms: u64,
    },
    /// Not retrying until `channels.start` or a config change.
    GaveUp {
        /// Why.
        reason: String,
    },
    /// Stopped by request (`channels.stop`, reload, shutdown).
    Stopped,
}

/// The state shown for an account: `Starting` becomes `Running` once the attempt is ready.
pub fn effective_state(state: &AccountState, facts: &ConnectionFacts) -> AccountState {
    match state {
        AccountState::Starting if facts.ready_this_attempt => AccountState::Running,
        s => s.clone(),
    }
}

impl AccountState {
    fn name(&self) -> &'static str {
        match self {
            AccountState::Starting => "starting",
            AccountState::Running => "running",
            AccountState::Backoff { .. } => "backoff",
            AccountState::GaveUp { .. } => "gave-up",
            AccountState::Stopped => "stopped",
        }
    }
}

/// Why the health monitor wants a restart, from transport facts only (never from silence).
/// `state` is the account's effective state (see [`effective_state`]), `attempt_started` when
/// the current attempt began, `facts` its connection facts. Pure.
pub fn health_reason(
    state: &AccountState,
    attempt_started: Option<Instant>,
    facts: &ConnectionFacts,
    now: Instant,
    policy: &LifecyclePolicy,
) -> Option<&'static str> {
    match state {
        AccountState::Starting => {
            let started = attempt_started?;
            (!facts.ready_this_attempt && now.saturating_duration_since(started) > policy.connect_grace)
                .then_some("stuck")
        }
        AccountState::Running => {
            if !facts.connected {
                let since = facts.disconnected_instant?;
                return (now.saturating_duration_since(since) > policy.connect_grace).then_some("disconnected");
            }
            let grace = facts.heartbeat_interval_ms.map(Duration::from_millis).unwrap_or_default();
            facts.heartbeat_overdue(now, grace).then_some("stale-socket")
        }
        // The restart ladder owns Backoff; GaveUp and Stopped wait for an operator or a config
        // change.
        _ => None,
    }
}

/// Reload outcome of one account (`gateway.reload`, logs).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AccountChange {
    /// Channel id.
    pub channel: String,
    /// Account id.
    pub account_id: String,
    /// `kept`, `restarted`, `started`, `stopped` or `failed`.
    pub action: &'static str,
    /// Why it failed, for `failed`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Where resume state is kept across attempts and restarts (the store's kv table).
pub trait ResumeStore: Send + Sync {
    /// Load the saved state of an account.
    fn load(&self, key: &AccountKey) -> Option<String>;
    /// Save (or clear, with `None`) the state of an account. Best effort: failures are logged.
    fn save(&self, key: &AccountKey, state: Option<String>);
}

/// Commands to an account's manager task.
enum Cmd {
    /// Stop the attempt and stay stopped (`channels.stop`); reply when closed.
    Stop(oneshot::Sender<StopOutcome>),
    /// Start again from `Stopped`, `GaveUp` or `Backoff` (`channels.start`).
    Start,
    /// Health restart for `reason`.
    HealthRestart(&'static str),
    /// Stop and end the manager (removed or changed account, shutdown); reply when closed.
    Shutdown(oneshot::Sender<StopOutcome>),
}

/// The lifecycle view of one account.
#[derive(Debug)]
struct View {
    state: AccountState,
    attempt_started: Option<Instant>,
    last_start_at: Option<i64>,
    last_stop_at: Option<i64>,
    last_stop_outcome: Option<&'static str>,
    last_exit: Option<String>,
    attempts: u64,
    manually_stopped: bool,
    health_restarts: usize,
    last_health_restart: Option<(i64, &'static str)>,
}

/// Shared between an account's manager task, the monitor and status readers.
struct Shared {
    key: AccountKey,
    facts: Arc<Mutex<ConnectionFacts>>,
    view: Mutex<View>,
    /// Generation of the attempt whose `run` is alive; 0 when none.
    live: AtomicU64,
    /// Last generation handed out.
    generation: AtomicU64,
    health_monitor: bool,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Shared {
    fn set_state(&self, state: AccountState) {
        lock(&self.view).state = state;
    }
}

/// Marks `live` for one attempt and clears it when the attempt's future is dropped (return,
/// panic unwind, or abort).
struct LiveGuard {
    shared: Arc<Shared>,
    generation: u64,
}

impl Drop for LiveGuard {
    fn drop(&mut self) {
        let _ = self.shared.live.compare_exchange(self.generation, 0, Ordering::SeqCst, Ordering::SeqCst);
    }
}

struct Slot {
    shared: Arc<Shared>,
    fingerprint: String,
    tx: mpsc::UnboundedSender<Cmd>,
    task: JoinHandle<()>,
}

/// The channel supervisor of one runtime generation.
pub struct ChannelSupervisor {
    sup: Supervisor,
    sink: Arc<dyn InboundSink>,
    resume: Arc<dyn ResumeStore>,
    policy: LifecyclePolicy,
    slots: tokio::sync::Mutex<BTreeMap<AccountKey, Slot>>,
    /// Fingerprints of every account (including outbound-only ones) and build problems.
    known: Mutex<BTreeMap<AccountKey, Result<String, String>>>,
    /// Read-only copy of the slots' shared state, for status without the async lock.
    views: Mutex<BTreeMap<AccountKey, Arc<Shared>>>,
}

fn now_ms() -> i64 {
    crate::gateway::now_ms()
}

fn key_of(spec: &AccountSpec) -> AccountKey {
    (spec.channel.as_str().to_string(), spec.account.as_str().to_string())
}

impl ChannelSupervisor {
    /// A supervisor with no accounts. Tasks are spawned on `sup`.
    pub fn new(
        sup: Supervisor,
        sink: Arc<dyn InboundSink>,
        resume: Arc<dyn ResumeStore>,
        policy: LifecyclePolicy,
    ) -> Self {
        ChannelSupervisor {
            sup,
            sink,
            resume,
            policy,
            slots: tokio::sync::Mutex::new(BTreeMap::new()),
            known: Mutex::new(BTreeMap::new()),
            views: Mutex::new(BTreeMap::new()),
        }
    }

    /// Bring the accounts in line with `catalog`: stop removed and changed accounts (awaiting
    /// their close), call `publish` (the caller publishes the new config snapshot there, so
    /// new connections see the config they were built from), then start added and changed
    /// accounts. Unchanged accounts keep their connection. Returns one outcome per account.
    pub async fn apply(&self, catalog: &Catalog, publish: impl FnOnce()) -> Vec<AccountChange> {
        let mut slots = self.slots.lock().await;
        let mut wanted: BTreeMap<AccountKey, &AccountSpec> = BTreeMap::new();
        for spec in &catalog.accounts {
            wanted.insert(key_of(spec), spec);
        }
        let problems: BTreeMap<AccountKey, &str> = catalog
            .problems
            .iter()
            .map(|p| ((p.channel.as_str().to_string(), p.account.as_str().to_string()), p.message.as_str()))
            .collect();
        let old_known = std::mem::take(&mut *lock(&self.known));
        let mut changes = Vec::new();
        // 1. Stop what is removed or changed.
        let to_stop: Vec<AccountKey> = slots
            .iter()
            .filter(|(k, s)| wanted.get(*k).is_none_or(|w| w.fingerprint != s.fingerprint || w.runner.is_none()))
            .map(|(k, _)| k.clone())
            .collect();
        let stops = to_stop.iter().filter_map(|k| slots.remove(k)).map(|slot| async move {
            let (tx, rx) = oneshot::channel();
            let _ = slot.tx.send(Cmd::Shutdown(tx));
            let outcome = rx.await.unwrap_or(StopOutcome::Clean);
            let _ = slot.task.await;
            (slot.shared.key.clone(), outcome)
        });
        for (key, outcome) in futures_util::future::join_all(stops).await {
            tracing::info!(channel = %key.0, account = %key.1, ?outcome, "channel account stopped for reload");
            lock(&self.views).remove(&key);
        }
        publish();
        // 2. Start what is new or changed, and report.
        let mut all: Vec<AccountKey> = old_known.keys().cloned().collect();
        all.extend(wanted.keys().cloned());
        all.extend(problems.keys().cloned());
        all.sort();
        all.dedup();
        let mut known = BTreeMap::new();
        for key in all {
            let before = old_known.get(&key);
            let action = if let Some(msg) = problems.get(&key) {
                known.insert(key.clone(), Err(msg.to_string()));
                changes.push(AccountChange {
                    channel: key.0.clone(),
                    account_id: key.1.clone(),
                    action: "failed",
                    error: Some(msg.to_string()),
                });
                continue;
            } else if let Some(spec) = wanted.get(&key) {
                known.insert(key.clone(), Ok(spec.fingerprint.clone()));
                if spec.runner.is_some() && !slots.contains_key(&key) {
                    let slot = self.spawn_account(spec);
                    lock(&self.views).insert(key.clone(), slot.shared.clone());
                    slots.insert(key.clone(), slot);
                }
                match before {
                    Some(Ok(fp)) if *fp == spec.fingerprint => "kept",
                    Some(_) => "restarted",
                    None => "started",
                }
            } else {
                "stopped"
            };
            changes.push(AccountChange { channel: key.0.clone(), account_id: key.1.clone(), action, error: None });
        }
        *lock(&self.known) = known;
        changes
    }

    fn spawn_account(&self, spec: &AccountSpec) -> Slot {
        let key = key_of(spec);
        let shared = Arc::new(Shared {
            key: key.clone(),
            facts: Arc::new(Mutex::new(ConnectionFacts::default())),
            view: Mutex::new(View {
                state: AccountState::Starting,
                attempt_started: None,
                last_start_at: None,
                last_stop_at: None,
                last_stop_outcome: None,
                last_exit: None,
                attempts: 0,
                manually_stopped: false,
                health_restarts: 0,
                last_health_restart: None,
            }),
            live: AtomicU64::new(0),
            generation: AtomicU64::new(0),
            health_monitor: spec.health_monitor,
        });
        let (tx, rx) = mpsc::unbounded_channel();
        let manager = Manager {
            shared: shared.clone(),
            runner: spec.runner.clone().expect("spawn_account is only called for runnable accounts"),
            channel: spec.channel.clone(),
            account: spec.account.clone(),
            sink: self.sink.clone(),
            resume_store: self.resume.clone(),
            policy: self.policy.clone(),
            sup: self.sup.clone(),
            cancel: self.sup.child_token(),
        };
        let task = self.sup.spawn("channel-account-manager", manager.run(rx));
        Slot { shared, fingerprint: spec.fingerprint.clone(), tx, task }
    }

    /// Stop every account, awaiting each close (concurrently). Used at shutdown and before an
    /// in-process restart. Returns `Forced` if any account had to be aborted.
    pub async fn stop_all(&self) -> StopOutcome {
        let mut slots = self.slots.lock().await;
        let stops = std::mem::take(&mut *slots).into_values().map(|slot| async move {
            let (tx, rx) = oneshot::channel();
            let _ = slot.tx.send(Cmd::Shutdown(tx));
            let outcome = rx.await.unwrap_or(StopOutcome::Clean);
            let _ = slot.task.await;
            outcome
        });
        let outcomes = futures_util::future::join_all(stops).await;
        lock(&self.views).clear();
        if outcomes.contains(&StopOutcome::Forced) {
            StopOutcome::Forced
        } else {
            StopOutcome::Clean
        }
    }

    /// `channels.stop`: stop one account (or every account of `channel` when `account` is
    /// `None`) and keep it stopped. Returns the stopped keys with their outcome. Errors: no
    /// such account.
    pub async fn stop(&self, channel: &str, account: Option<&str>) -> Result<Vec<(AccountKey, StopOutcome)>, String> {
        let targets = self.select(channel, account).await?;
        let mut out = Vec::new();
        for (key, tx) in targets {
            let (rtx, rrx) = oneshot::channel();
            let _ = tx.send(Cmd::Stop(rtx));
            out.push((key, rrx.await.unwrap_or(StopOutcome::Clean)));
        }
        Ok(out)
    }

    /// `channels.start`: start a stopped, backing-off or given-up account now (clears
    /// `GaveUp`). A running account is left alone. Errors: no such account.
    pub async fn start(&self, channel: &str, account: Option<&str>) -> Result<Vec<AccountKey>, String> {
        let targets = self.select(channel, account).await?;
        Ok(targets
            .into_iter()
            .map(|(key, tx)| {
                let _ = tx.send(Cmd::Start);
                key
            })
            .collect())
    }

    async fn select(
        &self,
        channel: &str,
        account: Option<&str>,
    ) -> Result<Vec<(AccountKey, mpsc::UnboundedSender<Cmd>)>, String> {
        let slots = self.slots.lock().await;
        let found: Vec<_> = slots
            .iter()
            .filter(|((c, a), _)| c == channel && account.is_none_or(|want| want == a))
            .map(|(k, s)| (k.clone(), s.tx.clone()))
            .collect();
        if found.is_empty() {
            let known: Vec<String> = slots.keys().map(|(c, a)| format!("{c}/{a}")).collect();
            return Err(format!(
                "no running-capable channel account {channel}/{} (accounts: {})",
                account.unwrap_or("*"),
                if known.is_empty() { "none".to_string() } else { known.join(", ") }
            ));
        }
        Ok(found)
    }

    /// Run the health monitor until `cancel` fires: after the startup grace, every
    /// `health_interval`, ask each account's manager for a restart when [`health_reason`]
    /// finds one. The manager decides (cooldown, hourly cap, opt-out).
    pub async fn monitor(self: Arc<Self>, cancel: CancellationToken) {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(self.policy.health_startup_grace) => {}
        }
        loop {
            self.sweep().await;
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(self.policy.health_interval) => {}
            }
        }
    }

    /// One health sweep. Returns the restart requests sent, as `(key, reason)`.
    pub async fn sweep(&self) -> Vec<(AccountKey, &'static str)> {
        let slots = self.slots.lock().await;
        let now = Instant::now();
        let mut asked = Vec::new();
        for (key, slot) in slots.iter() {
            if !slot.shared.health_monitor {
                continue;
            }
            let facts = lock(&slot.shared.facts).clone();
            let reason = {
                let v = lock(&slot.shared.view);
                if v.manually_stopped {
                    continue;
                }
                health_reason(&effective_state(&v.state, &facts), v.attempt_started, &facts, now, &self.policy)
            };
            if let Some(reason) = reason {
                tracing::warn!(channel = %key.0, account = %key.1, reason, "health-monitor: requesting restart");
                let _ = slot.tx.send(Cmd::HealthRestart(reason));
                asked.push((key.clone(), reason));
            }
        }
        asked
    }

    /// `channels.status` rows: one per configured account, with the reference's snapshot
    /// fields (`running`, `connected`, `lastConnectedAt`, `lastEventAt`, `lastError`,
    /// `reconnectAttempts`, `restartPending`, ...).
    pub fn status(&self) -> Vec<Value> {
        let views = lock(&self.views);
        let known = lock(&self.known);
        let mut rows = Vec::new();
        for (key, fp) in known.iter() {
            let row = match (fp, views.get(key)) {
                (Err(problem), _) => json!({
                    "channel": key.0, "accountId": key.1, "enabled": true, "configured": false,
                    "running": false, "connected": false, "state": "failed", "lastError": problem,
                }),
                (Ok(_), None) => json!({
                    "channel": key.0, "accountId": key.1, "enabled": true, "configured": true,
                    "running": true, "connected": true, "state": "running", "mode": "outbound",
                }),
                (Ok(_), Some(shared)) => account_row(shared),
            };
            rows.push(row);
        }
        rows
    }

    /// True when every runnable account is connected (for `/readyz`); the names of those that
    /// are not, otherwise.
    pub fn not_ready(&self) -> Vec<String> {
        let views = lock(&self.views);
        let mut out: Vec<String> = views
            .iter()
            .filter(|(_, s)| {
                let v = lock(&s.view);
                !v.manually_stopped && !lock(&s.facts).connected
            })
            .map(|((c, a), _)| format!("{c}/{a}"))
            .collect();
        out.extend(lock(&self.known).iter().filter(|(_, v)| v.is_err()).map(|((c, a), _)| format!("{c}/{a}")));
        out
    }
}

fn account_row(shared: &Shared) -> Value {
    let facts = lock(&shared.facts).clone();
    let v = lock(&shared.view);
    let state = effective_state(&v.state, &facts);
    let mut row = json!({
        "channel": shared.key.0,
        "accountId": shared.key.1,
        "enabled": true,
        "configured": true,
        "running": matches!(state, AccountState::Starting | AccountState::Running),
        "connected": facts.connected,
        "state": state.name(),
        "restartPending": matches!(state, AccountState::Backoff { .. }),
        "reconnectAttempts": match &state { AccountState::Backoff { attempt, .. } => *attempt, _ => 0 },
        "generation": shared.generation.load(Ordering::SeqCst),
        "attempts": v.attempts,
        "lastStartAt": v.last_start_at,
        "lastStopAt": v.last_stop_at,
        "lastStopOutcome": v.last_stop_outcome,
        "lastExit": v.last_exit,
        "manuallyStopped": v.manually_stopped,
        "healthMonitor": {"enabled": shared.health_monitor, "restarts": v.health_restarts,
                          "lastRestart": v.last_health_restart.map(|(at, reason)| json!({"at": at, "reason": reason}))},
    });
    if let AccountState::GaveUp { reason } = &state {
        row["gaveUpReason"] = json!(reason);
    }
    if let AccountState::Backoff { delay_ms, .. } = &state {
        row["backoffMs"] = json!(delay_ms);
    }
    if let (Value::Object(row), Value::Object(f)) = (&mut row, serde_json::to_value(&facts).unwrap_or(Value::Null)) {
        for (k, val) in f {
            if k == "detail" {
                if let Value::Object(d) = val {
                    row.extend(d);
                }
            } else {
                row.insert(k, val);
            }
        }
    }
    row
}

/// How one attempt ended.
enum AttemptEnd {
    /// `run` returned (or panicked) by itself.
    Exited(Result<Result<(), RunError>, tokio::task::JoinError>),
    /// A command interrupted it; the attempt is already stopped with this outcome.
    Interrupted(Cmd, StopOutcome),
}

/// One account's manager task: the state machine.
struct Manager {
    shared: Arc<Shared>,
    runner: Arc<dyn AccountRunner>,
    channel: ChannelId,
    account: AccountId,
    sink: Arc<dyn InboundSink>,
    resume_store: Arc<dyn ResumeStore>,
    policy: LifecyclePolicy,
    sup: Supervisor,
    cancel: CancellationToken,
}

/// What the manager does between attempts.
enum Wait {
    /// Start the next attempt now.
    Now,
    /// Wait, then start (Backoff).
    Delay(Duration),
    /// Wait for `channels.start` (GaveUp, Stopped).
    Parked,
}

impl Manager {
    async fn run(self, mut rx: mpsc::UnboundedReceiver<Cmd>) {
        let key = self.shared.key.clone();
        let mut resume = self.resume_store.load(&key);
        let mut backoff = Backoff::new(self.policy.clone());
        let mut gate = HealthGate::default();
        let mut wait = Wait::Now;
        loop {
            // Between attempts: honour the wait, answering commands.
            let cmd = match wait {
                Wait::Now => None,
                Wait::Delay(d) => {
                    tokio::select! {
                        _ = tokio::time::sleep(d) => None,
                        c = rx.recv() => Some(c),
                        _ = self.cancel.cancelled() => return self.finish(StopOutcome::Clean, None),
                    }
                }
                Wait::Parked => {
                    tokio::select! {
                        c = rx.recv() => Some(c),
                        _ = self.cancel.cancelled() => return self.finish(StopOutcome::Clean, None),
                    }
                }
            };
            match cmd {
                None => {}
                Some(None) => return self.finish(StopOutcome::Clean, None),
                Some(Some(Cmd::Shutdown(reply))) => return self.finish(StopOutcome::Clean, Some(reply)),
                Some(Some(Cmd::Stop(reply))) => {
                    self.mark_stopped(true, StopOutcome::Clean);
                    let _ = reply.send(StopOutcome::Clean);
                    wait = Wait::Parked;
                    continue;
                }
                Some(Some(Cmd::Start)) => backoff.reset(),
                // A health restart of an account that is not running is moot.
                Some(Some(Cmd::HealthRestart(_))) => continue,
            }
            lock(&self.shared.view).manually_stopped = false;
            let (end, ready) = self.attempt(&mut rx, &mut resume, &mut gate).await;
            wait = match end {
                AttemptEnd::Interrupted(Cmd::Shutdown(reply), outcome) => return self.finish(outcome, Some(reply)),
                AttemptEnd::Interrupted(Cmd::Stop(reply), outcome) => {
                    self.mark_stopped(true, outcome);
                    let _ = reply.send(outcome);
                    Wait::Parked
                }
                AttemptEnd::Interrupted(Cmd::HealthRestart(_) | Cmd::Start, _) => {
                    backoff.reset();
                    Wait::Now
                }
                AttemptEnd::Exited(result) => {
                    let (fatal, why) = match result {
                        Ok(Ok(())) => (false, "run returned without a stop request".to_string()),
                        Ok(Err(e)) => (e.is_fatal(), e.to_string()),
                        Err(j) if j.is_panic() => (false, format!("adapter panicked: {}", panic_message(j))),
                        Err(j) => (false, format!("adapter task ended: {j}")),
                    };
                    self.after_exit(&mut backoff, ready, fatal, why)
                }
            };
        }
    }

    /// Run one attempt until it ends by itself or a command interrupts it. Returns how it
    /// ended and whether it had become ready.
    async fn attempt(
        &self,
        rx: &mut mpsc::UnboundedReceiver<Cmd>,
        resume: &mut Option<String>,
        gate: &mut HealthGate,
    ) -> (AttemptEnd, bool) {
        let generation = self.shared.generation.fetch_add(1, Ordering::SeqCst) + 1;
        // The invariant of DESIGN.md bug 3, checked, not assumed: no attempt starts while the
        // previous one's `run` is alive.
        if let Err(alive) = self.shared.live.compare_exchange(0, generation, Ordering::SeqCst, Ordering::SeqCst) {
            tracing::error!(channel = %self.channel, account = %self.account, alive, generation,
                "refusing to start: the previous connection attempt is still alive");
            let err = RunError::Retryable(format!("previous attempt {alive} still alive"));
            return (AttemptEnd::Exited(Ok(Err(err))), false);
        }
        {
            let mut f = lock(&self.shared.facts);
            let keep = std::mem::take(&mut *f);
            *f = ConnectionFacts {
                generation,
                last_connected_at: keep.last_connected_at,
                last_event_at: keep.last_event_at,
                last_inbound_at: keep.last_inbound_at,
                last_disconnect: keep.last_disconnect,
                last_error: keep.last_error,
                detail: keep.detail,
                ..Default::default()
            };
        }
        {
            let mut v = lock(&self.shared.view);
            v.state = AccountState::Starting;
            v.attempt_started = Some(Instant::now());
            v.last_start_at = Some(now_ms());
            v.attempts += 1;
        }
        tracing::info!(channel = %self.channel, account = %self.account, generation, "channel account starting");
        let cancel = self.cancel.child_token();
        let ctx = AccountContext {
            channel: self.channel.clone(),
            account: self.account.clone(),
            inbound: self.sink.clone(),
            cancel: cancel.clone(),
            status: StatusReporter::new(self.shared.facts.clone(), generation),
            resume: resume.clone(),
        };
        let guard = LiveGuard { shared: self.shared.clone(), generation };
        let fut = self.runner.clone().run(ctx);
        let mut task = self.sup.spawn("channel-account", async move {
            let _guard = guard;
            fut.await
        });
        // Follow the attempt, answering commands.
        let end = loop {
            tokio::select! {
                r = &mut task => break AttemptEnd::Exited(r),
                c = rx.recv() => {
                    let cmd = match c {
                        None => {
                            let (tx, _rx) = oneshot::channel();
                            Cmd::Shutdown(tx)
                        }
                        Some(Cmd::Start) => continue,
                        Some(Cmd::HealthRestart(reason)) => {
                            if !self.shared.health_monitor {
                                continue;
                            }
                            match gate.admit(Instant::now(), &self.policy) {
                                Ok(()) => {
                                    tracing::warn!(channel = %self.channel, account = %self.account, reason,
                                        "health-monitor: restarting");
                                    let mut v = lock(&self.shared.view);
                                    v.health_restarts += 1;
                                    v.last_health_restart = Some((now_ms(), reason));
                                    Cmd::HealthRestart(reason)
                                }
                                Err(why) => {
                                    tracing::warn!(channel = %self.channel, account = %self.account, reason,
                                        refused = why, "health-monitor: restart skipped");
                                    continue;
                                }
                            }
                        }
                        Some(c) => c,
                    };
                    let outcome = self.stop_attempt(&cancel, &mut task).await;
                    break AttemptEnd::Interrupted(cmd, outcome);
                }
                _ = self.cancel.cancelled() => {
                    let outcome = self.stop_attempt(&cancel, &mut task).await;
                    let (tx, _rx) = oneshot::channel();
                    break AttemptEnd::Interrupted(Cmd::Shutdown(tx), outcome);
                }
            }
        };
        let facts = {
            let mut f = lock(&self.shared.facts);
            f.connected = false;
            f.clone()
        };
        // Keep what the adapter saved for the next attempt (and the next process).
        if facts.resume != *resume {
            *resume = facts.resume.clone();
            self.resume_store.save(&self.shared.key, resume.clone());
        }
        (end, facts.ready_this_attempt)
    }

    /// Cancel the attempt and wait for `run` to close and return, bounded; abort after that.
    async fn stop_attempt(
        &self,
        cancel: &CancellationToken,
        task: &mut JoinHandle<Result<(), RunError>>,
    ) -> StopOutcome {
        cancel.cancel();
        match tokio::time::timeout(self.policy.stop_timeout, &mut *task).await {
            Ok(_) => StopOutcome::Clean,
            Err(_) => {
                tracing::error!(channel = %self.channel, account = %self.account,
                    timeout_ms = self.policy.stop_timeout.as_millis() as u64,
                    "channel account did not close in time; aborting its task");
                task.abort();
                let _ = task.await;
                StopOutcome::Forced
            }
        }
    }

    fn after_exit(&self, backoff: &mut Backoff, ready: bool, fatal: bool, why: String) -> Wait {
        let unit: f64 = rand::thread_rng().gen();
        let next = backoff.on_exit(ready, fatal, unit);
        {
            let mut v = lock(&self.shared.view);
            v.last_exit = Some(why.clone());
            v.last_stop_at = Some(now_ms());
        }
        lock(&self.shared.facts).last_error = Some(why.clone());
        match next {
            Next::Retry { delay, failures } => {
                tracing::warn!(channel = %self.channel, account = %self.account, error = %why, failures,
                    delay_ms = delay.as_millis() as u64, "channel account connection ended; retrying");
                self.shared.set_state(if failures == 0 {
                    AccountState::Starting
                } else {
                    AccountState::Backoff { attempt: failures, delay_ms: delay.as_millis() as u64 }
                });
                Wait::Delay(delay)
            }
            Next::GiveUp => {
                let reason = if fatal {
                    why
                } else {
                    format!("giving up after {} failed attempts; last error: {why}", backoff.failures())
                };
                tracing::error!(channel = %self.channel, account = %self.account, reason = %reason,
                    "channel account gave up (channels.start or a config change starts it again)");
                self.shared.set_state(AccountState::GaveUp { reason });
                Wait::Parked
            }
        }
    }

    fn mark_stopped(&self, manual: bool, outcome: StopOutcome) {
        let mut v = lock(&self.shared.view);
        v.state = AccountState::Stopped;
        v.manually_stopped = manual;
        v.last_stop_at = Some(now_ms());
        v.last_stop_outcome = Some(match outcome {
            StopOutcome::Clean => "clean",
            StopOutcome::Forced => "forced",
        });
        tracing::info!(channel = %self.channel, account = %self.account, ?outcome, "channel account stopped");
    }

    fn finish(&self, outcome: StopOutcome, reply: Option<oneshot::Sender<StopOutcome>>) {
        self.mark_stopped(false, outcome);
        if let Some(r) = reply {
            let _ = r.send(outcome);
        }
    }
}

fn panic_message(j: tokio::task::JoinError) -> String {
    let p = j.into_panic();
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "non-string panic payload".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use pincer_channels::{BoxFuture, SinkClosed};
    use std::sync::atomic::AtomicUsize;

    fn policy() -> LifecyclePolicy {
        LifecyclePolicy::default()
    }

    #[test]
    fn backoff_doubles_from_1s_to_the_5min_cap_then_gives_up() {
        let mut b = Backoff::new(policy());
        let mut bases = Vec::new();
        for _ in 0..9 {
            match b.on_exit(false, false, 0.5) {
                Next::Retry { delay, failures } => {
                    assert_eq!(delay, b.base_delay(failures), "unit 0.5 is the jitter midpoint");
                    bases.push(delay.as_secs());
                }
                Next::GiveUp => panic!("gave up too early"),
            }
        }
        assert_eq!(bases, [1, 2, 4, 8, 16, 32, 64, 128, 256]);
        assert_eq!(b.base_delay(12), Duration::from_secs(300), "capped at 5 min");
        assert_eq!(b.on_exit(false, false, 0.5), Next::GiveUp, "10th consecutive failure gives up");
    }

    #[test]
    fn backoff_jitter_stays_within_ten_percent() {
        let mut lo = Backoff::new(policy());
        let mut hi = Backoff::new(policy());
        for _ in 0..3 {
            lo.on_exit(false, false, 0.0);
            hi.on_exit(false, false, 0.999);
        }
        let (Next::Retry { delay: l, .. }, Next::Retry { delay: h, .. }) =
            (lo.on_exit(false, false, 0.0), hi.on_exit(false, false, 0.999))
        else {
            panic!("no retry")
        };
        assert_eq!(l, Duration::from_millis(7200));
        assert!(h < Duration::from_millis(8800) && h > Duration::from_millis(8790), "{h:?}");
    }

    #[test]
    fn a_ready_connection_resets_the_ladder_and_reconnects_within_a_second() {
        let mut b = Backoff::new(policy());
        for _ in 0..5 {
            b.on_exit(false, false, 0.5);
        }
        assert_eq!(b.failures(), 5);
        match b.on_exit(true, false, 0.999) {
            Next::Retry { delay, failures } => {
                assert_eq!(failures, 0);
                assert!(delay < Duration::from_secs(1));
            }
            Next::GiveUp => panic!("a healthy connection never gives up"),
        }
        assert_eq!(b.on_exit(false, false, 0.5), Next::Retry { delay: Duration::from_secs(1), failures: 1 });
    }

    #[test]
    fn fatal_errors_give_up_at_once() {
        assert_eq!(Backoff::new(policy()).on_exit(false, true, 0.5), Next::GiveUp);
    }

    #[tokio::test(start_paused = true)]
    async fn health_gate_enforces_cooldown_and_hourly_cap() {
        let p = policy();
        let mut g = HealthGate::default();
        let t0 = Instant::now();
        assert_eq!(g.admit(t0, &p), Ok(()));
        assert_eq!(g.admit(t0 + Duration::from_secs(300), &p), Err("cooldown"));
        assert_eq!(g.admit(t0 + Duration::from_secs(600), &p), Ok(()));

        let p = LifecyclePolicy { health_cooldown: Duration::from_secs(60), ..policy() };
        let mut g = HealthGate::default();
        for i in 0..10 {
            assert_eq!(g.admit(t0 + Duration::from_secs(60 * i), &p), Ok(()), "restart {i}");
        }
        assert_eq!(g.admit(t0 + Duration::from_secs(60 * 10), &p), Err("hourly-cap"));
        assert_eq!(g.count(), 10);
        assert_eq!(g.admit(t0 + Duration::from_secs(3600), &p), Ok(()), "the oldest left the rolling hour");
    }

    #[tokio::test(start_paused = true)]
    async fn health_reasons_come_from_transport_facts_only() {
        let p = policy();
        let now = Instant::now();
        let quiet = ConnectionFacts { connected: true, ready_this_attempt: true, ..Default::default() };
        tokio::time::advance(Duration::from_secs(86_400)).await;
        let later = Instant::now();
        assert_eq!(health_reason(&AccountState::Running, Some(now), &quiet, later, &p), None, "silence is healthy");
        let stuck = ConnectionFacts::default();
        assert_eq!(health_reason(&AccountState::Starting, Some(now), &stuck, later, &p), Some("stuck"));
        assert_eq!(health_reason(&AccountState::Starting, Some(later), &stuck, later, &p), None, "within grace");
        let down = ConnectionFacts { ready_this_attempt: true, disconnected_instant: Some(now), ..Default::default() };
        assert_eq!(health_reason(&AccountState::Running, Some(now), &down, later, &p), Some("disconnected"));
        let zombie = ConnectionFacts {
            connected: true,
            ready_this_attempt: true,
            heartbeat_interval_ms: Some(1000),
            heartbeat_sent_instant: Some(now),
            ..Default::default()
        };
        assert_eq!(health_reason(&AccountState::Running, Some(now), &zombie, later, &p), Some("stale-socket"));
        let gave_up = AccountState::GaveUp { reason: "x".into() };
        assert_eq!(health_reason(&gave_up, Some(now), &stuck, later, &p), None, "gave-up waits for an operator");
    }

    /// What one scripted attempt does.
    #[derive(Clone, Copy, Debug)]
    enum Step {
        /// Fail before ready.
        Fail,
        /// Fail with a fatal error.
        Fatal,
        /// Become ready, then drop.
        ReadyThenDrop,
        /// Become ready and stay until cancelled.
        ReadyUntilCancel,
        /// Become ready with a heartbeat that is never acknowledged.
        Zombie,
        /// Panic.
        Panic,
        /// Ignore cancellation.
        Hang,
    }

    struct Scripted {
        steps: Mutex<VecDeque<Step>>,
        live: AtomicUsize,
        max_live: AtomicUsize,
        attempts: AtomicUsize,
        started: tokio::sync::Notify,
    }

    impl Scripted {
        fn new(steps: &[Step]) -> Arc<Self> {
            Arc::new(Scripted {
                steps: Mutex::new(steps.iter().copied().collect()),
                live: AtomicUsize::new(0),
                max_live: AtomicUsize::new(0),
                attempts: AtomicUsize::new(0),
                started: tokio::sync::Notify::new(),
            })
        }
    }

    struct Live<'a>(&'a Scripted);
    impl Drop for Live<'_> {
        fn drop(&mut self) {
            self.0.live.fetch_sub(1, Ordering::SeqCst);
        }
    }

    impl AccountRunner for Scripted {
        fn run(self: Arc<Self>, ctx: AccountContext) -> BoxFuture<'static, Result<(), RunError>> {
            Box::pin(async move {
                let step = lock(&self.steps).pop_front().unwrap_or(Step::ReadyUntilCancel);
                let n = self.live.fetch_add(1, Ordering::SeqCst) + 1;
                self.max_live.fetch_max(n, Ordering::SeqCst);
                let _live = Live(&self);
                self.attempts.fetch_add(1, Ordering::SeqCst);
                self.started.notify_waiters();
                match step {
                    Step::Fail => Err(RunError::Retryable("connect refused".into())),
                    Step::Fatal => Err(RunError::Fatal("token rejected".into())),
                    Step::ReadyThenDrop => {
                        ctx.status.ready();
                        Err(RunError::Retryable("socket dropped".into()))
                    }
                    Step::ReadyUntilCancel | Step::Zombie => {
                        ctx.status.ready();
                        if matches!(step, Step::Zombie) {
                            ctx.status.heartbeat_interval(Duration::from_secs(1));
                            ctx.status.heartbeat_sent();
                        }
                        ctx.cancel.cancelled().await;
                        Ok(())
                    }
                    Step::Panic => panic!("adapter bug"),
                    Step::Hang => {
                        ctx.status.ready();
                        std::future::pending::<()>().await;
                        Ok(())
                    }
                }
            })
        }
    }

    struct NullSink;
    impl InboundSink for NullSink {
        fn deliver(&self, _: pincer_core::Inbound) -> BoxFuture<'_, Result<(), SinkClosed>> {
            Box::pin(async { Ok(()) })
        }
    }

    #[derive(Default)]
    struct MemResume(Mutex<BTreeMap<AccountKey, String>>);
    impl ResumeStore for MemResume {
        fn load(&self, key: &AccountKey) -> Option<String> {
            lock(&self.0).get(key).cloned()
        }
        fn save(&self, key: &AccountKey, state: Option<String>) {
            match state {
                Some(s) => lock(&self.0).insert(key.clone(), s),
                None => lock(&self.0).remove(key),
            };
        }
    }

    struct NoSend;
    impl pincer_channels::ChannelSender for NoSend {
        fn send<'a>(
            &'a self,
            _: &'a pincer_channels::OutboundMessage,
        ) -> BoxFuture<'a, Result<pincer_channels::SendReceipt, pincer_channels::SendError>> {
            Box::pin(async { Err(pincer_channels::SendError::Fatal { message: "test".into() }) })
        }
    }

    fn spec(account: &str, runner: Arc<Scripted>, fingerprint: &str) -> AccountSpec {
        AccountSpec {
            channel: ChannelId::new("test"),
            account: AccountId::new(account),
            fingerprint: fingerprint.into(),
            health_monitor: true,
            runner: Some(runner),
            sender: Arc::new(NoSend),
        }
    }

    fn supervisor() -> ChannelSupervisor {
        ChannelSupervisor::new(Supervisor::new(), Arc::new(NullSink), Arc::new(MemResume::default()), policy())
    }

    fn row<'a>(rows: &'a [Value], account: &str) -> &'a Value {
        rows.iter().find(|r| r["accountId"] == account).expect("account row")
    }

    /// Let every task run until all are idle (paused clock: timers fire only when advanced).
    async fn settle() {
        for _ in 0..50 {
            tokio::task::yield_now().await;
        }
    }

    /// Poll the status on the paused clock (each sleep auto-advances it), for up to 20 min.
    async fn wait_state(cs: &ChannelSupervisor, account: &str, state: &str) -> Value {
        for _ in 0..12_000 {
            let rows = cs.status();
            let r = row(&rows, account);
            if r["state"] == state {
                return r.clone();
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("account {account} never reached {state}: {:?}", cs.status());
    }

    #[tokio::test(start_paused = true)]
    async fn failing_account_backs_off_then_gives_up_and_start_clears_it() {
        let runner = Scripted::new(&[Step::Fail; 10]);
        let cs = supervisor();
        let catalog = Catalog { accounts: vec![spec("a", runner.clone(), "1")], problems: vec![] };
        cs.apply(&catalog, || {}).await;
        let t0 = Instant::now();
        let r = wait_state(&cs, "a", "gave-up").await;
        assert_eq!(runner.attempts.load(Ordering::SeqCst), 10);
        // 1+2+4+...+256 s of backoff, ±10 %.
        let waited = t0.elapsed().as_secs_f64();
        assert!((0.9 * 511.0..=1.1 * 511.0 + 1.0).contains(&waited), "waited {waited}s");
        assert!(r["gaveUpReason"].as_str().unwrap().contains("10 failed attempts"), "{r}");
        assert_eq!(r["running"], false);
        cs.start("test", Some("a")).await.expect("start");
        wait_state(&cs, "a", "running").await;
        assert_eq!(runner.attempts.load(Ordering::SeqCst), 11);
        assert_eq!(runner.max_live.load(Ordering::SeqCst), 1);
        assert_eq!(cs.stop_all().await, StopOutcome::Clean);
    }

    #[tokio::test(start_paused = true)]
    async fn a_dropped_healthy_connection_reconnects_at_once_without_backoff() {
        let runner = Scripted::new(&[Step::Fail, Step::Fail, Step::ReadyThenDrop, Step::ReadyThenDrop]);
        let cs = supervisor();
        cs.apply(&Catalog { accounts: vec![spec("a", runner.clone(), "1")], problems: vec![] }, || {}).await;
        let t0 = Instant::now();
        while runner.attempts.load(Ordering::SeqCst) < 5 {
            runner.started.notified().await;
        }
        wait_state(&cs, "a", "running").await;
        assert_eq!(runner.attempts.load(Ordering::SeqCst), 5);
        // 1 s + 2 s of backoff (±10 %) and two reconnects of at most 1 s each.
        assert!(t0.elapsed() <= Duration::from_millis(3300 + 2000), "{:?}", t0.elapsed());
        assert_eq!(runner.max_live.load(Ordering::SeqCst), 1);
        cs.stop_all().await;
    }

    #[tokio::test(start_paused = true)]
    async fn fatal_error_gives_up_at_once() {
        let runner = Scripted::new(&[Step::Fatal]);
        let cs = supervisor();
        cs.apply(&Catalog { accounts: vec![spec("a", runner.clone(), "1")], problems: vec![] }, || {}).await;
        let r = wait_state(&cs, "a", "gave-up").await;
        assert_eq!(r["gaveUpReason"], "token rejected");
        assert_eq!(runner.attempts.load(Ordering::SeqCst), 1);
        cs.stop_all().await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_panicking_adapter_is_restarted_and_other_accounts_keep_running() {
        let bad = Scripted::new(&[Step::Panic, Step::Panic]);
        let good = Scripted::new(&[]);
        let cs = supervisor();
        let catalog = Catalog {
            accounts: vec![spec("bad", bad.clone(), "1"), spec("good", good.clone(), "1")],
            problems: vec![],
        };
        cs.apply(&catalog, || {}).await;
        wait_state(&cs, "good", "running").await;
        let r = wait_state(&cs, "bad", "running").await;
        assert_eq!(bad.attempts.load(Ordering::SeqCst), 3, "two panics, then a healthy attempt");
        assert!(r["lastExit"].as_str().unwrap().contains("adapter panicked: adapter bug"), "{r}");
        assert_eq!(good.attempts.load(Ordering::SeqCst), 1, "the other account was never restarted");
        cs.stop_all().await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_stop_that_does_not_close_in_time_is_forced_and_recorded() {
        let runner = Scripted::new(&[Step::Hang]);
        let cs = supervisor();
        cs.apply(&Catalog { accounts: vec![spec("a", runner.clone(), "1")], problems: vec![] }, || {}).await;
        wait_state(&cs, "a", "running").await;
        let t0 = Instant::now();
        let stopped = cs.stop("test", Some("a")).await.expect("stop");
        assert_eq!(stopped[0].1, StopOutcome::Forced);
        assert_eq!(t0.elapsed(), Duration::from_secs(5), "waited exactly the stop timeout");
        let r = row(&cs.status(), "a").clone();
        assert_eq!((r["state"].as_str(), r["lastStopOutcome"].as_str()), (Some("stopped"), Some("forced")));
        assert_eq!(runner.live.load(Ordering::SeqCst), 0, "the aborted attempt is gone");
        // A manually stopped account is left alone by the monitor and restarts on request.
        assert!(cs.sweep().await.is_empty());
        cs.start("test", Some("a")).await.expect("start");
        wait_state(&cs, "a", "running").await;
        assert_eq!(runner.max_live.load(Ordering::SeqCst), 1);
        cs.stop_all().await;
    }

    #[tokio::test(start_paused = true)]
    async fn zombie_socket_is_restarted_by_the_monitor_within_cooldown_and_cap() {
        let runner = Scripted::new(&[Step::Zombie, Step::Zombie, Step::Zombie]);
        let cs = supervisor();
        cs.apply(&Catalog { accounts: vec![spec("a", runner.clone(), "1")], problems: vec![] }, || {}).await;
        wait_state(&cs, "a", "running").await;
        tokio::time::advance(Duration::from_secs(3)).await;
        assert_eq!(cs.sweep().await, vec![(("test".into(), "a".into()), "stale-socket")]);
        let started = runner.started.notified();
        started.await;
        wait_state(&cs, "a", "running").await;
        assert_eq!(runner.attempts.load(Ordering::SeqCst), 2);
        // Still a zombie, but within the 10-minute cooldown: asked, refused by the manager.
        tokio::time::advance(Duration::from_secs(3)).await;
        assert_eq!(cs.sweep().await.len(), 1);
        settle().await;
        assert_eq!(runner.attempts.load(Ordering::SeqCst), 2, "cooldown holds");
        tokio::time::advance(Duration::from_secs(600)).await;
        cs.sweep().await;
        runner.started.notified().await;
        assert_eq!(runner.attempts.load(Ordering::SeqCst), 3);
        let r = wait_state(&cs, "a", "running").await;
        assert_eq!(r["healthMonitor"]["restarts"], 2);
        assert_eq!(runner.max_live.load(Ordering::SeqCst), 1);
        cs.stop_all().await;
    }

    #[tokio::test(start_paused = true)]
    async fn reload_restarts_only_changed_accounts() {
        let a = Scripted::new(&[]);
        let b = Scripted::new(&[]);
        let cs = supervisor();
        let v1 = Catalog { accounts: vec![spec("a", a.clone(), "1"), spec("b", b.clone(), "1")], problems: vec![] };
        cs.apply(&v1, || {}).await;
        wait_state(&cs, "a", "running").await;
        wait_state(&cs, "b", "running").await;
        let c = Scripted::new(&[]);
        let v2 = Catalog {
            accounts: vec![spec("a", a.clone(), "1"), spec("b", b.clone(), "2"), spec("c", c.clone(), "1")],
            problems: vec![],
        };
        let mut published = false;
        let changes = cs.apply(&v2, || published = true).await;
        assert!(published);
        let actions: Vec<(&str, &str)> = changes.iter().map(|c| (c.account_id.as_str(), c.action)).collect();
        assert_eq!(actions, [("a", "kept"), ("b", "restarted"), ("c", "started")]);
        wait_state(&cs, "b", "running").await;
        assert_eq!(a.attempts.load(Ordering::SeqCst), 1, "unchanged account kept its connection");
        assert_eq!(b.attempts.load(Ordering::SeqCst), 2);
        assert_eq!(b.max_live.load(Ordering::SeqCst), 1, "the old connection closed before the new one started");
        let v3 = Catalog {
            accounts: vec![spec("a", a.clone(), "1")],
            problems: vec![pincer_channels::AccountProblem {
                channel: ChannelId::new("test"),
                account: AccountId::new("c"),
                message: "no token".into(),
            }],
        };
        let changes = cs.apply(&v3, || {}).await;
        let actions: Vec<(&str, &str)> = changes.iter().map(|c| (c.account_id.as_str(), c.action)).collect();
        assert_eq!(actions, [("a", "kept"), ("b", "stopped"), ("c", "failed")]);
        assert_eq!((b.live.load(Ordering::SeqCst), c.live.load(Ordering::SeqCst)), (0, 0));
        assert_eq!(row(&cs.status(), "c")["lastError"], "no token");
        cs.stop_all().await;
    }

    #[tokio::test(start_paused = true)]
    async fn the_generation_check_refuses_to_start_over_a_live_attempt() {
        let runner = Scripted::new(&[]);
        let cs = supervisor();
        cs.apply(&Catalog { accounts: vec![spec("a", runner.clone(), "1")], problems: vec![] }, || {}).await;
        wait_state(&cs, "a", "running").await;
        let shared = lock(&cs.views).get(&("test".to_string(), "a".to_string())).cloned().expect("view");
        let live = shared.live.load(Ordering::SeqCst);
        assert_eq!(live, shared.generation.load(Ordering::SeqCst), "the live attempt is the current generation");
        assert!(shared.live.compare_exchange(0, live + 1, Ordering::SeqCst, Ordering::SeqCst).is_err());
        cs.stop_all().await;
        assert_eq!(shared.live.load(Ordering::SeqCst), 0);
    }
}
