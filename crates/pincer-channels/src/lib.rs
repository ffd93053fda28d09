//! pincer-channels: channel adapters, one module per platform behind the cargo feature
//! `channel-<name>`. An adapter turns platform events into [`pincer_core::Inbound`] values and
//! sends outbound text through [`ChannelSender`].
//!
//! Invariant: adapters never touch the store or the router. The runtime's delivery worker owns
//! the durable outbox and calls [`ChannelSender::send`] for one row at a time; retry, backoff
//! and the terminal status live in the worker, not here.

pub mod outbound;
#[cfg(feature = "channel-webhook")]
pub mod webhook;

pub use outbound::{BoxFuture, ChannelSender, OutboundMessage, Reconciled, SendError, SendReceipt};
