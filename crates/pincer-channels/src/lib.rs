//! pincer-channels: channel adapters, one module per platform behind the cargo feature
//! `channel-<name>`. Adapters turn platform events into [`pincer_core::Inbound`] and send
//! outbound text; they never touch the store or the router directly.
//!
//! No platform adapter lands with the foundation; the built-in web chat lives in the runtime
//! and the binary. The channel trait and supervisor contract arrive with the lifecycle issue.
