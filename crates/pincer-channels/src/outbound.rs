//! The outbound half of the channel contract: what the delivery worker calls.

use pincer_core::DeliveryTarget;
use std::future::Future;
use std::pin::Pin;

/// A boxed, sendable future (object-safe async trait methods without a macro).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// One outbox row to deliver.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutboundMessage {
    /// Outbox row id.
    pub outbox_id: i64,
    /// Stable idempotency key of the row (forwarded to platforms that support one).
    pub idempotency_key: String,
    /// Where it goes.
    pub target: DeliveryTarget,
    /// Text, already chunked to the channel's limit.
    pub text: String,
}

/// Proof of delivery.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SendReceipt {
    /// The platform's id of the created message, when it returns one.
    pub platform_message_id: Option<String>,
}

/// Why a send failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// Worth retrying (network error, 429, 5xx). `retry_after_ms` honours the platform's hint.
    #[error("{message}")]
    Retryable {
        /// Human-readable cause.
        message: String,
        /// Platform-requested delay in ms, if any.
        retry_after_ms: Option<u64>,
    },
    /// Retrying cannot help (bad target, revoked token, 4xx).
    #[error("{message}")]
    Fatal {
        /// Human-readable cause.
        message: String,
    },
}

impl SendError {
    /// True for [`SendError::Retryable`].
    pub fn is_retryable(&self) -> bool {
        matches!(self, SendError::Retryable { .. })
    }
}

/// The result of reconciling a row whose send outcome is unknown (the process died between the
/// platform call and the `sent` commit).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reconciled {
    /// The platform has the message.
    Sent(SendReceipt),
    /// The platform provably does not have it: safe to send again.
    NotSent,
    /// Cannot tell: the row becomes `unknown` and is not re-sent blindly.
    Unknown,
}

/// Outbound side of a channel account.
pub trait ChannelSender: Send + Sync {
    /// Deliver one message. Must not retry internally beyond a single HTTP request's own
    /// transport; the delivery worker owns retries.
    fn send<'a>(&'a self, msg: &'a OutboundMessage) -> BoxFuture<'a, Result<SendReceipt, SendError>>;

    /// Reconcile a row left `sending` by a crash. The default cannot tell.
    fn reconcile<'a>(&'a self, _msg: &'a OutboundMessage) -> BoxFuture<'a, Reconciled> {
        Box::pin(async { Reconciled::Unknown })
    }

    /// The channel's `textChunkLimit` in chars.
    fn text_chunk_limit(&self) -> usize {
        4000
    }

    /// Show a typing indicator in the conversation (and thread) `target` addresses, once: the
    /// platform shows it for a few seconds (Mattermost: about 5 s), so a caller keeps it alive
    /// by calling again, e.g. every 3-5 s while a run is active. There is nothing to clear: it
    /// expires by itself, and a posted reply ends it on the clients. The target's thread and
    /// `reply_to_id` are read exactly as [`ChannelSender::send`] reads them, so the indicator
    /// shows where the reply will land. Errors are for logging only (never retried, never
    /// fatal to a run). The default does nothing and returns `Ok(())`.
    fn typing<'a>(&'a self, _target: &'a DeliveryTarget) -> BoxFuture<'a, Result<(), SendError>> {
        Box::pin(async { Ok(()) })
    }

    /// Clear the typing indicator of `target` at once, for a run that ends without a reply
    /// (silent, failed, aborted), on platforms where the indicator lasts until it expires
    /// (Matrix: 8 s). Errors are for logging only. The default does nothing.
    fn typing_stop<'a>(&'a self, _target: &'a DeliveryTarget) -> BoxFuture<'a, Result<(), SendError>> {
        Box::pin(async { Ok(()) })
    }
}
