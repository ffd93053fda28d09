//! The gateway's event bus: `chat`, `agent`, `health`, `shutdown` ... events fanned out to
//! control-plane connections, which add their own per-connection `seq` and scope filter.

use serde_json::Value;
use std::sync::Arc;
use tokio::sync::broadcast;

/// Who may receive an event (reference §2: chat/agent events need `operator.read`; transport
/// events reach every authenticated client).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventScope {
    /// Needs `operator.read`.
    Read,
    /// Every authenticated client.
    All,
}

/// One event: `{type:"event", event, payload}` on the wire.
#[derive(Clone, Debug)]
pub struct GatewayEvent {
    /// Event name (`chat`, `agent`, `tick` ...).
    pub event: String,
    /// JSON payload.
    pub payload: Value,
    /// Audience.
    pub scope: EventScope,
}

/// Broadcast bus. Slow subscribers lose events (`RecvError::Lagged`), as the reference does.
#[derive(Clone, Debug)]
pub struct EventBus {
    tx: broadcast::Sender<Arc<GatewayEvent>>,
}

impl EventBus {
    /// A bus buffering up to `capacity` events per subscriber.
    pub fn new(capacity: usize) -> Self {
        EventBus { tx: broadcast::channel(capacity).0 }
    }

    /// Publish an event; a no-op without subscribers.
    pub fn emit(&self, event: &str, payload: Value, scope: EventScope) {
        if self.tx.receiver_count() > 0 {
            let _ = self.tx.send(Arc::new(GatewayEvent { event: event.to_string(), payload, scope }));
        }
    }

    /// True when at least one subscriber listens (lets hot paths skip building payloads).
    pub fn has_subscribers(&self) -> bool {
        self.tx.receiver_count() > 0
    }

    /// Subscribe.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<GatewayEvent>> {
        self.tx.subscribe()
    }
}
