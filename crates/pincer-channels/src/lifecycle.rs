//! The lifecycle half of the channel contract: how one channel account connects, reports its
//! connection facts and stops (DESIGN.md bug 3).
//!
//! An adapter implements [`AccountRunner`]. The runtime's channel supervisor calls
//! [`AccountRunner::run`] once per connection attempt, on its own task, with a fresh
//! [`AccountContext`]. The supervisor is the only code that starts, restarts or stops an
//! account, and it never starts an attempt before the previous one has returned.
//!
//! The contract of `run`:
//! - It owns one live platform connection. A platform library may resume that connection by
//!   itself after a drop (e.g. twilight's shard RESUMEs); that is still one attempt.
//! - It calls [`StatusReporter::ready`] once the platform has authenticated the connection
//!   (Discord READY/RESUMED, Mattermost `hello`, a Matrix sync), and reports transport
//!   liveness facts (heartbeats sent and acknowledged) as they happen. Liveness is never
//!   inferred from silence.
//! - It hands every platform message to [`AccountContext::inbound`] and awaits the result
//!   before reading further, so an accepted message is durable before the platform cursor
//!   moves on.
//! - When [`AccountContext::cancel`] fires it closes the connection properly (sends the close
//!   frame and waits for the close handshake, bounded by a short deadline) and returns
//!   `Ok(())`. There is no separate "stop": closing is part of `run`. The supervisor waits for
//!   `run` to return under a deadline (5 s by default) and aborts the task after that,
//!   recording the stop as forced.
//! - It returns `Err(RunError::Retryable)` when the connection is lost for good and
//!   `Err(RunError::Fatal)` when retrying cannot help (revoked token, missing permission).

use crate::outbound::BoxFuture;
use pincer_core::{AccountId, ChannelId, Inbound};
use serde::Serialize;
use serde_json::{Map, Value};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// How a connection attempt ended, when it did not end by request.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RunError {
    /// The connection was lost or could not be made; the supervisor retries (at once when the
    /// attempt had become ready, with backoff otherwise).
    #[error("{0}")]
    Retryable(String),
    /// Retrying cannot help (e.g. Discord close code 4004 "Authentication failed"): the
    /// account goes to `GaveUp` until `channels.start` or a config change.
    #[error("{0}")]
    Fatal(String),
}

impl RunError {
    /// True for [`RunError::Fatal`].
    pub fn is_fatal(&self) -> bool {
        matches!(self, RunError::Fatal(_))
    }
}

/// The runtime stopped taking inbound messages (it is shutting down or restarting).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("the gateway runtime is not accepting messages")]
pub struct SinkClosed;

/// Where an adapter hands platform messages. Implemented by the runtime: routing, dedupe, the
/// wake decision and the durable accept happen behind it, with the current config snapshot.
/// The adapter holds no routing or policy state of its own (DESIGN.md bug 1).
pub trait InboundSink: Send + Sync {
    /// Hand over one message. Resolves once the message is durably accepted or deliberately
    /// dropped (the reason is logged by the runtime). Errors: [`SinkClosed`] when the runtime
    /// is going away; the adapter should then stop reading and wait for its cancellation.
    fn deliver(&self, inbound: Inbound) -> BoxFuture<'_, Result<(), SinkClosed>>;
}

/// Everything one connection attempt gets from the supervisor.
#[derive(Clone)]
pub struct AccountContext {
    /// Channel id (`discord`, ...).
    pub channel: ChannelId,
    /// Account id.
    pub account: AccountId,
    /// Where inbound messages go.
    pub inbound: Arc<dyn InboundSink>,
    /// Cancelled when the supervisor wants this attempt to end (stop, restart, shutdown).
    pub cancel: CancellationToken,
    /// Connection facts for status and the health monitor.
    pub status: StatusReporter,
    /// Opaque resume state the previous attempt saved with [`StatusReporter::save_resume`]
    /// (e.g. a Discord session id, sequence and resume URL), kept in the store across
    /// restarts. The adapter must verify it still applies (same token) before using it.
    pub resume: Option<String>,
}

/// One channel account's connection logic. See the module docs for the contract of `run`.
pub trait AccountRunner: Send + Sync + 'static {
    /// One connection attempt. `Ok(())` only after a requested stop (cancellation), with the
    /// connection closed; `Err` when the connection is lost or cannot be made.
    fn run(self: Arc<Self>, ctx: AccountContext) -> BoxFuture<'static, Result<(), RunError>>;
}

/// A recorded disconnect (`lastDisconnect` in `channels.status`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Disconnect {
    /// When, ms since the Unix epoch.
    pub at: i64,
    /// Why.
    pub error: String,
}

/// Connection facts of one account, written by its adapter through [`StatusReporter`] and read
/// by the supervisor, the health monitor and `channels.status`. Wall-clock fields are ms since
/// the Unix epoch; the `*_instant` fields are monotonic (tokio time, so tests can pause it).
#[derive(Clone, Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ConnectionFacts {
    /// Generation of the attempt these facts belong to (writes of older attempts are ignored).
    #[serde(skip)]
    pub generation: u64,
    /// The connection is authenticated and live.
    pub connected: bool,
    /// The current attempt reached ready at least once.
    #[serde(skip)]
    pub ready_this_attempt: bool,
    /// Last time a connection became ready.
    pub last_connected_at: Option<i64>,
    /// Last platform event of any kind.
    pub last_event_at: Option<i64>,
    /// Last inbound user message.
    pub last_inbound_at: Option<i64>,
    /// Last disconnect.
    pub last_disconnect: Option<Disconnect>,
    /// Last error reported by the adapter.
    pub last_error: Option<String>,
    /// Protocol heartbeat interval, in ms, when the protocol has one.
    pub heartbeat_interval_ms: Option<u64>,
    /// Last heartbeat (or ping) sent.
    pub last_heartbeat_at: Option<i64>,
    /// Last heartbeat acknowledgement (or pong) received.
    pub last_heartbeat_ack_at: Option<i64>,
    /// Monotonic time of the last heartbeat sent.
    #[serde(skip)]
    pub heartbeat_sent_instant: Option<Instant>,
    /// Monotonic time of the last acknowledgement received.
    #[serde(skip)]
    pub heartbeat_ack_instant: Option<Instant>,
    /// Monotonic time the connection was lost, while it is down.
    #[serde(skip)]
    pub disconnected_instant: Option<Instant>,
    /// Adapter-specific details (`botUserId`, `botUsername`, `sessionId`, `mode` ...).
    pub detail: Map<String, Value>,
    /// Resume state to hand to the next attempt (not shown).
    #[serde(skip)]
    pub resume: Option<String>,
}

impl ConnectionFacts {
    /// True when a heartbeat has been outstanding (sent, not acknowledged) for longer than the
    /// protocol's interval plus `grace`: the socket is a zombie. `false` when the protocol has
    /// no heartbeat or none was sent yet (unknown is never "broken").
    pub fn heartbeat_overdue(&self, now: Instant, grace: Duration) -> bool {
        let (Some(interval), Some(sent)) = (self.heartbeat_interval_ms, self.heartbeat_sent_instant) else {
            return false;
        };
        let acked = self.heartbeat_ack_instant.is_some_and(|a| a >= sent);
        !acked && now.saturating_duration_since(sent) > Duration::from_millis(interval) + grace
    }
}

/// Milliseconds since the Unix epoch.
fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

/// The adapter's handle on its account's [`ConnectionFacts`]. Bound to one attempt: after the
/// supervisor has moved on to a newer attempt, writes through an older reporter are ignored,
/// so a late write of a dead connection can never mark the account connected.
#[derive(Clone, Debug)]
pub struct StatusReporter {
    facts: Arc<Mutex<ConnectionFacts>>,
    generation: u64,
}

impl StatusReporter {
    /// A reporter for attempt `generation` over shared facts. The supervisor sets
    /// `facts.generation` to the same value before the attempt starts.
    pub fn new(facts: Arc<Mutex<ConnectionFacts>>, generation: u64) -> Self {
        StatusReporter { facts, generation }
    }

    /// A detached reporter (for tests of an adapter without a supervisor).
    pub fn detached() -> Self {
        StatusReporter::new(Arc::new(Mutex::new(ConnectionFacts::default())), 0)
    }

    /// A copy of the current facts.
    pub fn snapshot(&self) -> ConnectionFacts {
        self.facts.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn update(&self, f: impl FnOnce(&mut ConnectionFacts)) {
        let mut facts = self.facts.lock().unwrap_or_else(|p| p.into_inner());
        if facts.generation == self.generation {
            f(&mut facts);
        }
    }

    /// The platform authenticated the connection (READY, RESUMED, hello): connected, and the
    /// attempt counts as healthy, which resets the supervisor's backoff.
    pub fn ready(&self) {
        let now = now_ms();
        self.update(|f| {
            f.connected = true;
            f.ready_this_attempt = true;
            f.last_connected_at = Some(now);
            f.last_event_at = Some(now);
            f.last_error = None;
            f.disconnected_instant = None;
        });
    }

    /// The connection dropped (the adapter may still resume it inside the same attempt).
    pub fn disconnected(&self, error: impl Into<String>) {
        let d = Disconnect { at: now_ms(), error: error.into() };
        let now = Instant::now();
        self.update(|f| {
            f.connected = false;
            f.disconnected_instant.get_or_insert(now);
            f.heartbeat_sent_instant = None;
            f.heartbeat_ack_instant = None;
            f.last_disconnect = Some(d);
        });
    }

    /// Any platform event arrived.
    pub fn event(&self) {
        let now = now_ms();
        self.update(|f| f.last_event_at = Some(now));
    }

    /// An inbound user message arrived.
    pub fn inbound(&self) {
        let now = now_ms();
        self.update(|f| {
            f.last_event_at = Some(now);
            f.last_inbound_at = Some(now);
        });
    }

    /// An error worth showing (`lastError`).
    pub fn error(&self, message: impl Into<String>) {
        let m = message.into();
        self.update(|f| f.last_error = Some(m));
    }

    /// The protocol's heartbeat interval.
    pub fn heartbeat_interval(&self, interval: Duration) {
        self.update(|f| f.heartbeat_interval_ms = Some(interval.as_millis() as u64));
    }

    /// A heartbeat (or ping) was sent now.
    pub fn heartbeat_sent(&self) {
        let (now, at) = (Instant::now(), now_ms());
        self.update(|f| {
            f.heartbeat_sent_instant = Some(now);
            f.last_heartbeat_at = Some(at);
        });
    }

    /// The heartbeat was acknowledged (or the pong arrived) now.
    pub fn heartbeat_acked(&self) {
        let (now, at) = (Instant::now(), now_ms());
        self.update(|f| {
            f.heartbeat_ack_instant = Some(now);
            f.last_heartbeat_ack_at = Some(at);
            f.last_event_at = Some(at);
        });
    }

    /// Set an adapter-specific detail shown in `channels.status`.
    pub fn detail(&self, key: &str, value: impl Into<Value>) {
        let v = value.into();
        self.update(|f| {
            f.detail.insert(key.to_string(), v);
        });
    }

    /// Save (or clear) resume state for the next attempt; the supervisor persists it.
    pub fn save_resume(&self, state: Option<String>) {
        self.update(|f| f.resume = state);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stale_reporter_writes_are_ignored() {
        let facts = Arc::new(Mutex::new(ConnectionFacts { generation: 2, ..Default::default() }));
        let old = StatusReporter::new(facts.clone(), 1);
        let cur = StatusReporter::new(facts.clone(), 2);
        old.ready();
        assert!(!old.snapshot().connected);
        cur.ready();
        assert!(cur.snapshot().connected && cur.snapshot().ready_this_attempt);
    }

    #[tokio::test(start_paused = true)]
    async fn heartbeat_overdue_only_after_interval_without_ack() {
        let r = StatusReporter::detached();
        assert!(!r.snapshot().heartbeat_overdue(Instant::now(), Duration::ZERO), "no heartbeat yet: unknown");
        r.heartbeat_interval(Duration::from_millis(1000));
        r.heartbeat_sent();
        tokio::time::advance(Duration::from_millis(900)).await;
        assert!(!r.snapshot().heartbeat_overdue(Instant::now(), Duration::ZERO));
        tokio::time::advance(Duration::from_millis(200)).await;
        assert!(r.snapshot().heartbeat_overdue(Instant::now(), Duration::ZERO));
        r.heartbeat_acked();
        assert!(!r.snapshot().heartbeat_overdue(Instant::now(), Duration::ZERO));
    }
}
