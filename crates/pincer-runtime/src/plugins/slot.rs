//! One instance of a plugin: one generation of one plugin id with one config. Its manager
//! task owns the process and runs the state machine
//! `Starting → Ready → Backoff(n) → Starting …`, `Starting → Failed(n) → Starting …`,
//! `→ GaveUp` (a registration that can never be accepted) and `→ Stopping → Stopped`.
//!
//! - Every process is spawned with `tokio::process` in its own process group, and every exit
//!   path reaps it (`wait`): a stop sends `shutdown`, closes stdin, waits
//!   [`SHUTDOWN_WAIT`], then kills the group and reaps; a crash is reaped by the manager
//!   that noticed it.
//! - `initialize` runs with a timeout in the manager task, so a plugin that hangs there
//!   delays nothing but itself.
//! - A process that exits is restarted with jittered exponential backoff (1 s doubling to
//!   5 min; a run that stayed up [`STABLE_RUN`] resets the ladder). The instance keeps its
//!   registration meanwhile, so its methods stay in the table and answer `UNAVAILABLE` with
//!   `retryable: true`.

use super::host::Shared;
use super::manifest::Found;
use super::rpc::{Conn, ConnContext, IoTasks, RpcError, MAX_INFLIGHT};
use super::{Services, PROTOCOL_VERSION};
use crate::methods::{is_core, Scope};
use crate::supervisor::Supervisor;
use rand::Rng;
use serde_json::{json, Value};
use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;
use tokio::process::{Child, Command};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// How long a stopping plugin gets between `shutdown` and being killed.
pub const SHUTDOWN_WAIT: Duration = Duration::from_secs(5);
/// First restart delay.
pub const BACKOFF_INITIAL: Duration = Duration::from_secs(1);
/// Longest restart delay.
pub const BACKOFF_MAX: Duration = Duration::from_secs(300);
/// A process that stayed up this long resets the backoff ladder.
pub const STABLE_RUN: Duration = Duration::from_secs(10);
/// Longest method name a plugin may register.
pub const MAX_METHOD_NAME: usize = 200;

/// Lifecycle state of an instance.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SlotState {
    /// A process is starting or initializing.
    Starting,
    /// Initialized: its methods are callable.
    Ready,
    /// It was ready and its process exited; restarting after a delay.
    Backoff,
    /// An attempt failed before becoming ready (spawn, `initialize` error or timeout, exit);
    /// retrying after a delay.
    Failed,
    /// Its registration can never be accepted (bad method names, a collision); not retried
    /// until a new generation.
    GaveUp,
    /// Being stopped (retired, disabled, or the gateway stops).
    Stopping,
    /// Stopped; its process is reaped.
    Stopped,
}

impl SlotState {
    /// Wire name: `starting`, `ready`, `backoff`, `failed`, `gave-up`, `stopping`, `stopped`.
    pub fn as_str(self) -> &'static str {
        match self {
            SlotState::Starting => "starting",
            SlotState::Ready => "ready",
            SlotState::Backoff => "backoff",
            SlotState::Failed => "failed",
            SlotState::GaveUp => "gave-up",
            SlotState::Stopping => "stopping",
            SlotState::Stopped => "stopped",
        }
    }
}

/// One registered method.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MethodDesc {
    /// Full name, `<pluginId>.<verb>`.
    pub name: String,
    /// Required scope (default `write`).
    pub scope: Scope,
}

/// What an instance registered at `initialize` (or inherited from the instance it replaces
/// while it has not initialized yet).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Registration {
    /// Methods.
    pub methods: Vec<MethodDesc>,
    /// Declared events.
    pub events: Vec<String>,
}

/// What an instance runs with. Two specs with the same fingerprint are the same instance.
#[derive(Clone, Debug)]
pub struct SlotSpec {
    /// The manifest and where it was found.
    pub found: Found,
    /// `plugins.entries.<id>.config` (default `{}`).
    pub config: Value,
    /// `invoke` timeout.
    pub invoke_timeout: Duration,
    /// `initialize` timeout.
    pub initialize_timeout: Duration,
}

impl SlotSpec {
    /// Identity of the instance: directory, manifest text, config and timeouts.
    pub fn fingerprint(&self) -> String {
        json!([
            self.found.dir.display().to_string(),
            self.found.raw,
            self.config,
            self.invoke_timeout.as_millis() as u64,
            self.initialize_timeout.as_millis() as u64
        ])
        .to_string()
    }
}

#[derive(Debug)]
struct View {
    state: SlotState,
    pid: Option<u32>,
    started_at: Option<i64>,
    ready_at: Option<i64>,
    attempts: u64,
    restarts: u64,
    last_error: Option<String>,
    failure_phase: Option<&'static str>,
    last_exit: Option<String>,
    retry_at: Option<Instant>,
    ever_ready: bool,
    first_attempt_done: bool,
}

/// Stop request to a manager.
pub(crate) struct StopCmd {
    /// How long calls in flight may take to finish before `shutdown` is sent.
    drain: Duration,
    reply: oneshot::Sender<()>,
}

/// One instance of a plugin.
pub struct Slot {
    id: String,
    generation: u64,
    spec: SlotSpec,
    fingerprint: String,
    view: Mutex<View>,
    conn: Mutex<Option<Arc<Conn>>>,
    registration: Mutex<Arc<Registration>>,
    tail: Arc<Mutex<VecDeque<String>>>,
    cmd: mpsc::UnboundedSender<StopCmd>,
    cmd_rx: Mutex<Option<mpsc::UnboundedReceiver<StopCmd>>>,
    /// Cut a long drain short (the gateway is stopping).
    hurry: CancellationToken,
}

impl std::fmt::Debug for Slot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Slot")
            .field("id", &self.id)
            .field("generation", &self.generation)
            .field("state", &self.state())
            .finish()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Events a manager reports to the host.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum SlotEvent {
    /// `initialize` succeeded (first time or after a restart).
    Ready,
    /// The first attempt failed before becoming ready.
    FirstFailure,
    /// Anything else that status shows.
    Changed,
}

/// What a manager needs from the host.
#[derive(Clone)]
pub(crate) struct ManagerContext {
    pub sup: Supervisor,
    pub services: Arc<dyn Services>,
    pub version: String,
    pub host: Weak<Shared>,
}

impl ManagerContext {
    fn report(&self, slot: &Arc<Slot>, ev: SlotEvent) {
        if let Some(host) = self.host.upgrade() {
            host.on_slot_event(slot, ev);
        }
    }
}

impl Slot {
    /// A new instance (not started).
    pub fn new(spec: SlotSpec, generation: u64) -> Arc<Slot> {
        let (tx, rx) = mpsc::unbounded_channel();
        Arc::new(Slot {
            id: spec.found.manifest.id.clone(),
            generation,
            fingerprint: spec.fingerprint(),
            spec,
            view: Mutex::new(View {
                state: SlotState::Starting,
                pid: None,
                started_at: None,
                ready_at: None,
                attempts: 0,
                restarts: 0,
                last_error: None,
                failure_phase: None,
                last_exit: None,
                retry_at: None,
                ever_ready: false,
                first_attempt_done: false,
            }),
            conn: Mutex::new(None),
            registration: Mutex::new(Arc::new(Registration::default())),
            tail: Arc::new(Mutex::new(VecDeque::new())),
            cmd: tx,
            cmd_rx: Mutex::new(Some(rx)),
            hurry: CancellationToken::new(),
        })
    }

    /// Plugin id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The plugin generation this instance belongs to.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Identity (see [`SlotSpec::fingerprint`]).
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// The spec.
    pub fn spec(&self) -> &SlotSpec {
        &self.spec
    }

    /// Current state.
    pub fn state(&self) -> SlotState {
        lock(&self.view).state
    }

    /// Pid of the live process, if any.
    pub fn pid(&self) -> Option<u32> {
        lock(&self.view).pid
    }

    /// Has the first attempt ended (ready or failed)?
    pub fn first_attempt_done(&self) -> bool {
        lock(&self.view).first_attempt_done
    }

    /// The methods and events it registered.
    pub fn registration(&self) -> Arc<Registration> {
        lock(&self.registration).clone()
    }

    /// Take over the registration of the instance this one replaces, when it has none of its
    /// own yet (its methods then answer `UNAVAILABLE` until it is ready).
    pub(crate) fn inherit(&self, from: &Slot) {
        let mut mine = lock(&self.registration);
        if mine.methods.is_empty() && mine.events.is_empty() {
            *mine = from.registration();
        }
    }

    /// The last lines of its stderr.
    pub fn stderr_tail(&self) -> Vec<String> {
        lock(&self.tail).iter().cloned().collect()
    }

    /// Start the manager task on `ctx.sup` (once).
    pub(crate) fn start(self: &Arc<Self>, ctx: ManagerContext) {
        let Some(rx) = lock(&self.cmd_rx).take() else { return };
        let sup = ctx.sup.clone();
        sup.spawn("plugin-manager", manage(self.clone(), ctx, rx));
    }

    /// Stop the instance: no new calls, calls in flight get up to `drain` to finish, then
    /// `shutdown`, stdin closed, [`SHUTDOWN_WAIT`], kill and reap. Returns when the process is
    /// reaped (at once when the manager is already gone).
    pub async fn stop(&self, drain: Duration) {
        let (tx, rx) = oneshot::channel();
        if self.cmd.send(StopCmd { drain, reply: tx }).is_ok() {
            let _ = rx.await;
        }
    }

    /// The gateway is stopping: a stop in progress gives calls in flight at most
    /// `super::host::SHUTDOWN_DRAIN` more.
    pub(crate) fn hurry(&self) {
        self.hurry.cancel();
    }

    /// Call `method` on the plugin for a control-plane client. `Ok`: the `res` payload;
    /// `Err`: the error object `{code, message, retryable?, retryAfterMs?, details}`.
    pub async fn invoke(&self, method: &str, params: Value, client: Value) -> Result<Value, Value> {
        let conn = lock(&self.conn).clone();
        let Some(conn) = conn else { return Err(self.unavailable()) };
        let Ok(permit) = conn.inflight.clone().try_acquire_owned() else {
            if self.state() != SlotState::Ready {
                return Err(self.unavailable());
            }
            return Err(json!({"code": "UNAVAILABLE", "retryable": true, "retryAfterMs": 100,
                "message": format!("plugin {} has {MAX_INFLIGHT} calls in flight; retry shortly", self.id),
                "details": {"plugin": self.id, "reason": "busy", "limit": MAX_INFLIGHT}}));
        };
        let timeout = self.spec.invoke_timeout;
        let params = if params.is_null() { json!({}) } else { params };
        let res = conn.request("invoke", json!({"method": method, "params": params, "client": client}), timeout).await;
        drop(permit);
        res.map_err(|e| match e {
            RpcError::Remote { code, message, data } => {
                let wire = if (-32602..=-32600).contains(&code) { "INVALID_REQUEST" } else { "UNAVAILABLE" };
                let mut err =
                    json!({"code": wire, "message": message, "details": {"plugin": self.id, "rpcCode": code}});
                if let Some(d) = data {
                    if let Some(r) = d.get("retryable").and_then(Value::as_bool) {
                        err["retryable"] = json!(r);
                    }
                    err["details"]["data"] = d;
                }
                err
            }
            RpcError::Timeout => json!({"code": "UNAVAILABLE", "retryable": true,
                "message": format!("plugin {} did not answer {method} within {} ms", self.id, timeout.as_millis()),
                "details": {"plugin": self.id, "reason": "timeout", "timeoutMs": timeout.as_millis() as u64}}),
            RpcError::TooLarge(n) => json!({"code": "INVALID_REQUEST",
                "message": format!("params too large for the plugin protocol ({n} bytes)"),
                "details": {"plugin": self.id, "reason": "too-large"}}),
            RpcError::Closed(why) => json!({"code": "UNAVAILABLE", "retryable": true, "retryAfterMs": 1000,
                "message": format!("plugin {} went away during the call: {why}", self.id),
                "details": {"plugin": self.id, "reason": "exited"}}),
        })
    }

    fn unavailable(&self) -> Value {
        let v = lock(&self.view);
        let retry_ms = v.retry_at.map(|t| t.saturating_duration_since(Instant::now()).as_millis() as u64);
        let why = match v.state {
            SlotState::Starting => "is starting".to_string(),
            SlotState::Backoff | SlotState::Failed => format!(
                "is not running ({}); restarting in {} ms",
                v.last_error.as_deref().unwrap_or("exited"),
                retry_ms.unwrap_or(0)
            ),
            SlotState::GaveUp => format!("failed: {}", v.last_error.as_deref().unwrap_or("unknown error")),
            SlotState::Stopping | SlotState::Stopped => "is stopping".to_string(),
            SlotState::Ready => "is not connected".to_string(),
        };
        json!({"code": "UNAVAILABLE", "retryable": v.state != SlotState::GaveUp,
               "retryAfterMs": retry_ms.unwrap_or(500).max(100),
               "message": format!("plugin {} {why}", self.id),
               "details": {"plugin": self.id, "state": v.state.as_str(), "generation": self.generation}})
    }

    /// Status row (`plugins.list` diagnostics, `status`).
    pub fn row(&self) -> Value {
        let v = lock(&self.view);
        let reg = self.registration();
        let conn = lock(&self.conn).clone();
        let f = &self.spec.found;
        let mut row = json!({
            "pluginId": self.id,
            "status": v.state.as_str(),
            "generation": self.generation,
            "pid": v.pid,
            "dir": f.dir.display().to_string(),
            "origin": f.origin.as_str(),
            "methods": reg.methods.iter().map(|m| json!({"name": m.name, "scope": m.scope.plugin_word()})).collect::<Vec<_>>(),
            "events": reg.events,
            "inFlight": conn.map_or(0, |c| c.in_flight()),
            "attempts": v.attempts,
            "restarts": v.restarts,
            "startedAt": v.started_at,
            "readyAt": v.ready_at,
            "lastError": v.last_error,
            "failurePhase": v.failure_phase,
            "lastExit": v.last_exit,
            "invokeTimeoutMs": self.spec.invoke_timeout.as_millis() as u64,
            "initializeTimeoutMs": self.spec.initialize_timeout.as_millis() as u64,
        });
        if let Some(t) = v.retry_at.filter(|_| matches!(v.state, SlotState::Backoff | SlotState::Failed)) {
            row["retryInMs"] = json!(t.saturating_duration_since(Instant::now()).as_millis() as u64);
        }
        if matches!(v.state, SlotState::Failed | SlotState::GaveUp | SlotState::Backoff) || v.last_error.is_some() {
            row["stderrTail"] = json!(self.stderr_tail());
        }
        row
    }

    /// The last error, for `health`.
    pub fn last_error(&self) -> Option<(String, Option<&'static str>)> {
        let v = lock(&self.view);
        v.last_error.clone().map(|e| (e, v.failure_phase))
    }

    fn set(&self, f: impl FnOnce(&mut View)) {
        f(&mut lock(&self.view));
    }
}

/// A running process with its connection.
struct Proc {
    child: Child,
    pid: Option<u32>,
    conn: Arc<Conn>,
    io: IoTasks,
}

fn describe_exit(st: std::io::Result<std::process::ExitStatus>) -> String {
    use std::os::unix::process::ExitStatusExt;
    match st {
        Ok(s) => match (s.code(), s.signal()) {
            (Some(c), _) => format!("exited with code {c}"),
            (None, Some(sig)) => format!("killed by signal {sig}"),
            _ => "exited".to_string(),
        },
        Err(e) => format!("wait failed: {e}"),
    }
}

fn program(dir: &Path, prog: &str) -> PathBuf {
    let p = Path::new(prog);
    if prog.contains('/') && p.is_relative() {
        dir.join(p)
    } else {
        p.to_path_buf()
    }
}

fn spawn(slot: &Arc<Slot>, ctx: &ManagerContext) -> Result<Proc, String> {
    let f = &slot.spec.found;
    let cmd = &f.manifest.command;
    let mut c = Command::new(program(&f.dir, &cmd[0]));
    c.args(&cmd[1..])
        .current_dir(&f.dir)
        .env("PINCER_PLUGIN_ID", &slot.id)
        .env("PINCER_PLUGIN_GENERATION", slot.generation.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        // Its own process group: a terminal's Ctrl-C reaches the gateway, which stops the
        // plugin in order, and a stop can kill whatever the plugin started.
        .process_group(0);
    let mut child = c.spawn().map_err(|e| format!("cannot start {:?} in {}: {e}", cmd, f.dir.display()))?;
    let pid = child.id();
    let (Some(stdin), Some(stdout), Some(stderr)) = (child.stdin.take(), child.stdout.take(), child.stderr.take())
    else {
        let _ = child.start_kill();
        return Err("the plugin's stdio could not be captured".into());
    };
    let (conn, io) = Conn::start(
        stdin,
        stdout,
        stderr,
        ConnContext {
            plugin: Arc::from(slot.id.as_str()),
            sup: ctx.sup.clone(),
            services: ctx.services.clone(),
            tail: slot.tail.clone(),
        },
    );
    Ok(Proc { child, pid, conn, io })
}

/// Kill the process group (the plugin and anything it started) while the leader is still
/// unreaped, so the group id cannot have been reused.
fn kill_group(proc: &mut Proc) {
    if let Some(pid) = proc.pid.and_then(|p| i32::try_from(p).ok()) {
        // SAFETY: kill(2) on our own unreaped child's process group; touches no memory.
        unsafe {
            libc::kill(-pid, libc::SIGKILL);
        }
    }
    let _ = proc.child.start_kill();
}

/// After the process exited (or was killed): close the connection and let the stderr task
/// take the last lines (bounded), so the tail explains the exit.
async fn finish_io(proc: Proc, why: &str) {
    proc.conn.close(why);
    let Proc { io, .. } = proc;
    let IoTasks { reader, writer, stderr } = io;
    for h in [stderr, reader] {
        let abort = h.abort_handle();
        if tokio::time::timeout(Duration::from_secs(1), h).await.is_err() {
            // A grandchild still holds the pipe open.
            abort.abort();
        }
    }
    writer.abort();
}

/// Kill and reap at once.
async fn kill(mut proc: Proc, why: &str) -> String {
    kill_group(&mut proc);
    let st = proc.child.wait().await;
    let exit = describe_exit(st);
    finish_io(proc, why).await;
    exit
}

/// The orderly stop: drain calls in flight (bounded), `shutdown`, close stdin, wait, kill,
/// reap.
async fn graceful(mut proc: Proc, drain: Duration, id: &str, hurry: &CancellationToken) -> String {
    let sem = proc.conn.inflight.clone();
    let all = MAX_INFLIGHT as u32;
    let drained = tokio::select! {
        r = tokio::time::timeout(drain, sem.acquire_many(all)) => r.is_ok(),
        _ = hurry.cancelled() => {
            tokio::time::timeout(super::host::SHUTDOWN_DRAIN, sem.acquire_many(all)).await.is_ok()
        }
        st = proc.child.wait() => {
            let exit = describe_exit(st);
            finish_io(proc, "the plugin exited").await;
            return exit;
        }
    };
    if !drained {
        tracing::warn!(plugin = %id, "calls still in flight after {} ms; shutting the plugin down anyway", drain.as_millis());
    }
    let deadline = Instant::now() + SHUTDOWN_WAIT;
    let conn = proc.conn.clone();
    let asked = tokio::select! {
        r = conn.request("shutdown", Value::Null, SHUTDOWN_WAIT) => Some(r),
        st = proc.child.wait() => {
            let exit = describe_exit(st);
            finish_io(proc, "the plugin exited").await;
            return exit;
        }
    };
    if let Some(Err(e)) = asked {
        tracing::debug!(plugin = %id, error = %e, "shutdown request failed");
    }
    proc.conn.close_stdin();
    match tokio::time::timeout_at(deadline, proc.child.wait()).await {
        Ok(st) => {
            let exit = describe_exit(st);
            finish_io(proc, "the plugin stopped").await;
            exit
        }
        Err(_) => {
            tracing::warn!(plugin = %id, "plugin did not exit within {} s of shutdown; killing it", SHUTDOWN_WAIT.as_secs());
            kill(proc, "the plugin was killed").await
        }
    }
}

/// Check an `initialize` result. Errors: why the registration can never be accepted.
pub fn parse_registration(id: &str, v: &Value) -> Result<Registration, String> {
    let obj = v.as_object().ok_or("the initialize result is not an object")?;
    if let Some(pv) = obj.get("protocolVersion") {
        if pv.as_u64() != Some(PROTOCOL_VERSION) {
            return Err(format!("unsupported protocolVersion {pv} (the gateway speaks {PROTOCOL_VERSION})"));
        }
    }
    let prefix = format!("{id}.");
    let valid_name = |n: &str| {
        n.len() > prefix.len()
            && n.len() <= MAX_METHOD_NAME
            && n.starts_with(&prefix)
            && n.chars().all(|c| !c.is_whitespace() && !c.is_control())
    };
    let mut reg = Registration::default();
    let methods = match obj.get("methods") {
        None | Some(Value::Null) => &Vec::new(),
        Some(Value::Array(a)) => a,
        Some(_) => return Err("methods must be an array".into()),
    };
    for m in methods {
        let name = m.get("name").and_then(Value::as_str).ok_or_else(|| format!("method entry {m} has no name"))?;
        if !valid_name(name) {
            return Err(format!(
                "method name {name:?} is invalid: names must start with {prefix:?} and have no whitespace (at most {MAX_METHOD_NAME} characters)"
            ));
        }
        if is_core(name) {
            return Err(format!(
                "method {name:?} of plugin {id} collides with the core method {name:?}; nothing was registered"
            ));
        }
        if reg.methods.iter().any(|d| d.name == name) {
            return Err(format!("method {name:?} is registered twice"));
        }
        let scope = match m.get("scope") {
            None | Some(Value::Null) => Scope::Write,
            Some(s) => s
                .as_str()
                .and_then(Scope::from_plugin_word)
                .ok_or_else(|| format!("method {name:?} has an invalid scope {s} (read, write or admin)"))?,
        };
        reg.methods.push(MethodDesc { name: name.to_string(), scope });
    }
    match obj.get("events") {
        None | Some(Value::Null) => {}
        Some(Value::Array(a)) => {
            for e in a {
                let e = e.as_str().filter(|e| valid_name(e)).ok_or_else(|| {
                    format!("event {e} is invalid: event names must be strings starting with {prefix:?}")
                })?;
                if !reg.events.iter().any(|x| x == e) {
                    reg.events.push(e.to_string());
                }
            }
        }
        Some(_) => return Err("events must be an array".into()),
    }
    Ok(reg)
}

fn backoff(failures: u32) -> Duration {
    let exp = failures.saturating_sub(1).min(20);
    let base = BACKOFF_INITIAL.saturating_mul(1u32 << exp).min(BACKOFF_MAX);
    base.mul_f64(0.9 + 0.2 * rand::thread_rng().gen::<f64>()).min(BACKOFF_MAX)
}

enum InitEnd {
    Answer(Result<Value, RpcError>),
    Exited(String),
    Stop(Option<StopCmd>),
    Cancelled,
}

enum RunEnd {
    Exited(String),
    Stop(Option<StopCmd>),
    Cancelled,
}

/// The manager task of one instance.
async fn manage(slot: Arc<Slot>, ctx: ManagerContext, mut rx: mpsc::UnboundedReceiver<StopCmd>) {
    let cancel = ctx.sup.token();
    let id = slot.id.clone();
    let mut failures: u32 = 0;
    'attempts: loop {
        slot.set(|v| {
            v.state = SlotState::Starting;
            v.attempts += 1;
            v.retry_at = None;
            v.pid = None;
            v.started_at = Some(crate::now_ms());
        });
        ctx.report(&slot, SlotEvent::Changed);
        let failure: (String, &'static str) = 'attempt: {
            let mut proc = match spawn(&slot, &ctx) {
                Ok(p) => p,
                Err(e) => break 'attempt (e, "spawn"),
            };
            slot.set(|v| v.pid = proc.pid);
            tracing::info!(plugin = %id, generation = slot.generation, pid = ?proc.pid, "plugin process started");
            let params = json!({"protocolVersion": PROTOCOL_VERSION, "pluginId": id, "config": slot.spec.config,
                                "generation": slot.generation, "gateway": {"version": ctx.version}});
            let init = {
                let conn = proc.conn.clone();
                tokio::select! {
                    r = conn.request("initialize", params, slot.spec.initialize_timeout) => InitEnd::Answer(r),
                    st = proc.child.wait() => InitEnd::Exited(describe_exit(st)),
                    c = rx.recv() => InitEnd::Stop(c),
                    _ = cancel.cancelled() => InitEnd::Cancelled,
                }
            };
            let registration = match init {
                InitEnd::Answer(Ok(v)) => match parse_registration(&id, &v) {
                    Ok(r) => r,
                    Err(e) => {
                        let exit = kill(proc, "registration refused").await;
                        tracing::error!(plugin = %id, error = %e, "plugin registration refused; not retrying until its config or the gateway restarts");
                        slot.set(|v| {
                            v.state = SlotState::GaveUp;
                            v.pid = None;
                            v.last_error = Some(e);
                            v.failure_phase = Some("initialize");
                            v.last_exit = Some(exit);
                            v.first_attempt_done = true;
                        });
                        ctx.report(&slot, SlotEvent::FirstFailure);
                        let stop = tokio::select! {
                            c = rx.recv() => c,
                            _ = cancel.cancelled() => None,
                        };
                        finish_stopped(&slot, &ctx, stop);
                        return;
                    }
                },
                InitEnd::Answer(Err(e)) => {
                    let msg = match &e {
                        RpcError::Timeout => {
                            format!("initialize timed out after {} ms", slot.spec.initialize_timeout.as_millis())
                        }
                        other => format!("initialize failed: {other}"),
                    };
                    let exit = kill(proc, "initialize failed").await;
                    slot.set(|v| v.last_exit = Some(exit));
                    break 'attempt (msg, "initialize");
                }
                InitEnd::Exited(exit) => {
                    finish_io(proc, "the plugin exited").await;
                    slot.set(|v| v.last_exit = Some(exit.clone()));
                    break 'attempt (format!("the plugin {exit} before initialize finished"), "initialize");
                }
                InitEnd::Stop(stop) => {
                    slot.set(|v| v.state = SlotState::Stopping);
                    let exit = kill(proc, "stopped").await;
                    slot.set(|v| v.last_exit = Some(exit));
                    finish_stopped(&slot, &ctx, stop);
                    return;
                }
                InitEnd::Cancelled => {
                    kill(proc, "the gateway stopped").await;
                    finish_stopped(&slot, &ctx, None);
                    return;
                }
            };
            // Ready.
            let methods: Vec<&str> = registration.methods.iter().map(|m| m.name.as_str()).collect();
            tracing::info!(plugin = %id, generation = slot.generation, pid = ?proc.pid, methods = ?methods, "plugin ready");
            *lock(&slot.registration) = Arc::new(registration);
            *lock(&slot.conn) = Some(proc.conn.clone());
            let ready_at = Instant::now();
            slot.set(|v| {
                v.state = SlotState::Ready;
                v.ready_at = Some(crate::now_ms());
                v.ever_ready = true;
                v.first_attempt_done = true;
            });
            ctx.report(&slot, SlotEvent::Ready);
            let end = tokio::select! {
                st = proc.child.wait() => RunEnd::Exited(describe_exit(st)),
                c = rx.recv() => RunEnd::Stop(c),
                _ = cancel.cancelled() => RunEnd::Cancelled,
            };
            match end {
                RunEnd::Exited(exit) => {
                    *lock(&slot.conn) = None;
                    finish_io(proc, "the plugin exited").await;
                    if ready_at.elapsed() >= STABLE_RUN {
                        failures = 0;
                    }
                    failures += 1;
                    let delay = backoff(failures);
                    tracing::warn!(plugin = %id, exit = %exit, delay_ms = delay.as_millis() as u64, "plugin process exited; restarting");
                    slot.set(|v| {
                        v.state = SlotState::Backoff;
                        v.pid = None;
                        v.restarts += 1;
                        v.last_error = Some(format!("the plugin {exit}"));
                        v.failure_phase = Some("run");
                        v.last_exit = Some(exit);
                        v.retry_at = Some(Instant::now() + delay);
                    });
                    ctx.report(&slot, SlotEvent::Changed);
                    if !wait_retry(&slot, &ctx, &mut rx, delay).await {
                        return;
                    }
                    continue 'attempts;
                }
                RunEnd::Stop(stop) => {
                    slot.set(|v| v.state = SlotState::Stopping);
                    *lock(&slot.conn) = None;
                    ctx.report(&slot, SlotEvent::Changed);
                    let drain = stop.as_ref().map_or(Duration::ZERO, |s| s.drain);
                    let exit = graceful(proc, drain, &id, &slot.hurry).await;
                    slot.set(|v| v.last_exit = Some(exit));
                    finish_stopped(&slot, &ctx, stop);
                    return;
                }
                RunEnd::Cancelled => {
                    *lock(&slot.conn) = None;
                    kill(proc, "the gateway stopped").await;
                    finish_stopped(&slot, &ctx, None);
                    return;
                }
            }
        };
        // The attempt failed before becoming ready.
        let (error, phase) = failure;
        failures += 1;
        let delay = backoff(failures);
        let first = !slot.first_attempt_done();
        tracing::warn!(plugin = %id, generation = slot.generation, error = %error, retry_ms = delay.as_millis() as u64,
                       stderr = ?slot.stderr_tail().last(), "plugin failed to start");
        slot.set(|v| {
            v.state = if v.ever_ready { SlotState::Backoff } else { SlotState::Failed };
            v.pid = None;
            v.last_error = Some(error);
            v.failure_phase = Some(phase);
            v.retry_at = Some(Instant::now() + delay);
            v.first_attempt_done = true;
        });
        ctx.report(&slot, if first { SlotEvent::FirstFailure } else { SlotEvent::Changed });
        if !wait_retry(&slot, &ctx, &mut rx, delay).await {
            return;
        }
    }
}

/// Sleep before the next attempt; false when stopped meanwhile (the slot is then stopped).
async fn wait_retry(
    slot: &Arc<Slot>,
    ctx: &ManagerContext,
    rx: &mut mpsc::UnboundedReceiver<StopCmd>,
    delay: Duration,
) -> bool {
    let cancel = ctx.sup.token();
    tokio::select! {
        _ = tokio::time::sleep(delay) => true,
        c = rx.recv() => {
            finish_stopped(slot, ctx, c);
            false
        }
        _ = cancel.cancelled() => {
            finish_stopped(slot, ctx, None);
            false
        }
    }
}

fn finish_stopped(slot: &Arc<Slot>, ctx: &ManagerContext, stop: Option<StopCmd>) {
    *lock(&slot.conn) = None;
    slot.set(|v| {
        if v.state != SlotState::GaveUp {
            v.state = SlotState::Stopped;
        }
        v.pid = None;
        v.retry_at = None;
    });
    tracing::info!(plugin = %slot.id, generation = slot.generation, "plugin stopped");
    ctx.report(slot, SlotEvent::Changed);
    if let Some(s) = stop {
        let _ = s.reply.send(());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registrations_are_checked() {
        let ok = parse_registration(
            "bncr",
            &json!({"methods": [{"name": "bncr.connect"}, {"name": "bncr.peek", "scope": "read"}], "events": ["bncr.up"]}),
        )
        .unwrap();
        assert_eq!(ok.methods[0], MethodDesc { name: "bncr.connect".into(), scope: Scope::Write });
        assert_eq!(ok.methods[1].scope, Scope::Read);
        assert_eq!(ok.events, ["bncr.up"]);
        let err = |v: Value| parse_registration("bncr", &v).unwrap_err();
        assert!(err(json!({"methods": [{"name": "other.connect"}]})).contains("must start with \"bncr.\""));
        assert!(err(json!({"methods": [{"name": "bncr."}]})).contains("invalid"));
        assert!(err(json!({"methods": [{"name": "bncr.a"}, {"name": "bncr.a"}]})).contains("twice"));
        assert!(err(json!({"methods": [{"name": "bncr.a", "scope": "root"}]})).contains("invalid scope"));
        assert!(err(json!({"methods": [], "events": ["chat"]})).contains("event"));
        assert!(err(json!({"protocolVersion": 2})).contains("protocolVersion"));
        let core = parse_registration("config", &json!({"methods": [{"name": "config.get"}]})).unwrap_err();
        assert!(core.contains("config.get") && core.contains("core method"), "{core}");
    }

    #[test]
    fn backoff_grows_and_caps() {
        let d1 = backoff(1);
        assert!(d1 >= Duration::from_millis(900) && d1 <= Duration::from_millis(1100));
        let d3 = backoff(3);
        assert!(d3 >= Duration::from_millis(3600) && d3 <= Duration::from_millis(4400));
        assert!(backoff(30) <= BACKOFF_MAX);
    }
}
