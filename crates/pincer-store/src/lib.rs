//! pincer-store: the gateway's durable state behind a synchronous [`Store`] API over SQLite
//! (`<state>/pincer.db`), and the state-dir lock ([`StateLock`]).
//!
//! It owns sessions and their transcripts, the inbound dedupe ledger, the inbound outcome
//! ledger, the outbox, thread participation and a small key/value table, with numbered
//! migrations (`migrations/`).
//!
//! Invariant: this crate knows nothing about channels' wire formats, HTTP or async runtimes.
//! It stores exact platform ids (case preserved) and [`pincer_core::DeliveryTarget`]s as
//! given, and never derives anything from a platform's semantics. It never reads the clock:
//! every timestamp (`*_ms`, `now_ms`, ms since the Unix epoch) is passed in by the caller.
//!
//! The reliability contract it carries (DESIGN.md bug 5, "replies are lost silently"):
//!
//! - an accepted inbound message has a ledger row from the moment it is accepted
//!   ([`Store::accept_inbound`]) and ends in exactly one terminal [`Outcome`];
//! - a run's transcript entry, its outbox rows and its outcome commit in one transaction
//!   ([`Store::commit_reply`], [`Store::commit_batch`]);
//! - outbox rows are persisted before sending, delivered in order per target, retried via
//!   `next_attempt_at`, and a row that may already have been sent is never re-sent blindly
//!   (see [`outbox`]).
//!
//! Group commit: every write method is also available on [`Tx`], so the runtime can apply
//! many writes in one transaction with [`Store::transaction`]. Each commit costs a WAL write
//! of every page it dirtied, so batching is what makes tens of thousands of messages per
//! second possible. The intended hot path:
//!
//! - intake, per batch of inbound messages: `store.transaction(|tx| { for m in batch {
//!   if let Some(id) = tx.accept_inbound(..)? { tx.upsert_session(..)?;
//!   tx.append_transcript(..)?; } } Ok(..) })`;
//! - run results, per batch: [`Store::commit_batch`] (one refused commit does not fail the
//!   others);
//! - delivery: `store.transaction(|tx| { for r in done { tx.mark_sent(..)?; }
//!   tx.claim_due(now, n) })`, then sleep until [`Store::next_due_at`] or a wake-up.
//!
//! Start-up order for the runtime: [`StateLock::acquire`], then [`Store::open`], then
//! reconcile [`Store::recover_in_flight`] (outbox rows that may have been sent), finish every
//! [`Store::unfinished_inbound`] (runs interrupted by the crash), and only then start the
//! delivery worker. Periodically: [`Store::prune_dedupe`], [`Store::prune_threads`],
//! [`Store::prune_finished`].
//!
//! Durability: WAL with `synchronous=NORMAL` by default, so a commit survives the process
//! being killed at any instant; only an OS crash or power cut can lose the latest commits.
//! [`Durability::Full`] closes that gap at the price of one `fsync` per transaction.
//!
//! Not here yet: pairing requests (DM pairing codes and approvals) will get their own table
//! and module in a later migration when the pairing issue is built.

#![warn(missing_docs)]

pub mod commit;
pub mod error;
pub mod inbound;
pub mod kv;
pub mod lock;
mod migrate;
pub mod outbox;
pub mod pairing;
pub mod retention;
pub mod session;
pub mod store;
pub mod threads;
pub mod turns;

mod codec;

pub use commit::{RunCommit, RunCommitted};
pub use error::StoreError;
pub use inbound::{InboundRow, NewInbound, Outcome};
pub use lock::StateLock;
pub use outbox::{Enqueued, NewOutbox, OutboxCounts, OutboxRow, OutboxStatus};
pub use pairing::{PairedSender, PairingRequest, PendingPairing};
pub use retention::PruneStats;
pub use session::{NewTranscriptEntry, Role, SessionRecord, SessionSummary, TranscriptEntry};
pub use store::{Durability, Store, StoreOptions, Tx};
pub use turns::{AcceptInbound, Accepted, InboundOutcome, PendingTurn};
