//! pincer-runtime: the running gateway. It owns the supervisor (every task), the config
//! snapshot (`ArcSwap`), per-session actors, the run registry, the delivery worker over the
//! durable outbox, and the control-plane method table.
//!
//! Invariants: nothing is spawned outside [`supervisor::Supervisor`]; nothing mutable lives in
//! a `static`; a reload publishes a whole new [`snapshot::Snapshot`] and runs keep the one they
//! started with; every accepted inbound message ends in exactly one recorded outcome. This
//! crate does not parse CLI arguments or speak HTTP.

pub mod channels;
pub mod delivery;
pub mod events;
pub mod gateway;
pub mod methods;
pub mod plugins;
mod run;
pub mod runs;
pub mod session;
pub mod snapshot;
pub mod supervisor;
pub mod writer;

pub use gateway::{
    now_ms, Gateway, GatewayHandle, GatewayOptions, IngestOutcome, ReloadReport, RuntimeError, SendRequest, SubmitTurn,
    Submitted,
};
