//! pincer-core: the pure heart of the gateway. Ids, inbound/outbound message types,
//! session keys (OpenClaw grammar), the config model with its validation and diff, routing,
//! the wake decision and reply chunking.
//!
//! Invariant: nothing in this crate performs I/O (no files, sockets, clocks or runtimes), so
//! every function here is deterministic and benchmarkable. Callers pass in time and config.

pub mod chunk;
pub mod config;
pub mod ids;
pub mod message;
pub mod routing;
pub mod session_key;
pub mod wake;

pub use ids::{AccountId, AgentId, ChannelId};
pub use message::{Author, ChatKind, DeliveryTarget, Inbound, MentionFacts};
pub use session_key::SessionKey;
