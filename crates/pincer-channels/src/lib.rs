//! pincer-channels: channel adapters, one module per platform behind the cargo feature
//! `channel-<name>`. An adapter turns platform events into [`pincer_core::Inbound`] values,
//! runs its connection under the lifecycle contract ([`AccountRunner`]), and sends outbound text
//! through [`ChannelSender`]. [`catalog`] builds every configured account from a config.
//!
//! Invariant: adapters never touch the store or the router. Inbound messages go through the
//! runtime's [`InboundSink`]; the runtime's delivery worker owns the durable outbox and calls
//! [`ChannelSender::send`] for one row at a time; retry, backoff and the terminal status live
//! in the worker, not here. Restarts and backoff of connections live in the runtime's channel
//! supervisor, not here.

#[cfg(any(feature = "channel-mattermost", feature = "channel-matrix"))]
mod cache;
pub mod catalog;
#[cfg(feature = "channel-discord")]
pub mod discord;
pub mod lifecycle;
#[cfg(feature = "channel-matrix")]
pub mod matrix;
#[cfg(feature = "channel-mattermost")]
pub mod mattermost;
pub mod outbound;
#[cfg(feature = "channel-webhook")]
pub mod webhook;

pub use catalog::{AccountProblem, AccountSpec, Catalog};
pub use lifecycle::{
    AccountContext, AccountRunner, ConnectionFacts, Disconnect, InboundSink, RunError, SinkClosed, StatusReporter,
};
pub use outbound::{BoxFuture, ChannelSender, OutboundMessage, Reconciled, SendError, SendReceipt};
