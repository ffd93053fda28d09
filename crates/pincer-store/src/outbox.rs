//! The durable outbox: replies are persisted here before they are sent.
//!
//! Row life cycle (`status`):
//!
//! ```text
//!   enqueue ─▶ pending ──claim_due──▶ sending ──mark_sent────▶ sent
//!                 ▲                     │ │ └──mark_unknown──▶ unknown ──mark_sent──▶ sent
//!                 └─────mark_retry──────┘ └────mark_failed───▶ failed
//!   (mark_failed is also allowed from pending and unknown)
//! ```
//!
//! Ordering: rows with the same `order_key` (channel, account, destination, thread; see
//! [`DeliveryTarget::order_key`]) are delivered strictly in id order. Only the lowest *open*
//! (`pending` or `sending`) row of an order key, its head, can be claimed; a later row waits
//! while an earlier one is pending (even if backing off) or in flight. Terminal rows (`sent`,
//! `failed`, `unknown`) do not block their successors.
//!
//! Never blindly sent twice: [`Store::claim_due`] marks rows `sending` in the same transaction
//! that selects them, *before* the runtime calls the platform (the send intent). A row found
//! still `sending` after a restart may or may not have reached the platform, so it is not
//! claimed again: [`Store::recover_in_flight`] hands these rows to the runtime, which reconciles
//! them with the platform (`mark_sent` if the message is there, `mark_retry` if it is provably
//! absent) or gives up with `mark_unknown`, which an operator can see.
//!
//! `attempts` counts claims, i.e. send attempts started.

use crate::codec::{self, decode};
use crate::error::{Result, StoreError};
use crate::store::{Store, Tx};
use pincer_core::DeliveryTarget;
use rusqlite::{params, Connection, OptionalExtension, Row};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// Delivery status of an outbox row.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OutboxStatus {
    /// Waiting to be claimed (possibly backing off until `next_attempt_at`).
    Pending,
    /// Claimed by the delivery worker: a send may be in flight.
    Sending,
    /// Delivered; `platform_message_id` holds the receipt when the platform gave one.
    Sent,
    /// Given up; `last_error` says why.
    Failed,
    /// A send may or may not have happened and could not be reconciled.
    Unknown,
}

impl OutboxStatus {
    /// All statuses, in life-cycle order.
    pub const ALL: [OutboxStatus; 5] =
        [OutboxStatus::Pending, OutboxStatus::Sending, OutboxStatus::Sent, OutboxStatus::Failed, OutboxStatus::Unknown];

    /// Stored form: `pending`, `sending`, `sent`, `failed`, `unknown`.
    pub fn as_str(self) -> &'static str {
        match self {
            OutboxStatus::Pending => "pending",
            OutboxStatus::Sending => "sending",
            OutboxStatus::Sent => "sent",
            OutboxStatus::Failed => "failed",
            OutboxStatus::Unknown => "unknown",
        }
    }

    /// True for `pending` and `sending`: the row still blocks later rows of its order key.
    pub fn is_open(self) -> bool {
        matches!(self, OutboxStatus::Pending | OutboxStatus::Sending)
    }
}

impl fmt::Display for OutboxStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for OutboxStatus {
    type Err = StoreError;

    /// Parse the stored form; anything else is [`StoreError::BadData`].
    fn from_str(s: &str) -> Result<Self> {
        parse_status(s.to_string()).map_err(|e| StoreError::BadData { detail: e.0 })
    }
}

fn parse_status(s: String) -> Result<OutboxStatus, codec::BadValue> {
    match s.as_str() {
        "pending" => Ok(OutboxStatus::Pending),
        "sending" => Ok(OutboxStatus::Sending),
        "sent" => Ok(OutboxStatus::Sent),
        "failed" => Ok(OutboxStatus::Failed),
        "unknown" => Ok(OutboxStatus::Unknown),
        _ => Err(codec::BadValue(format!("unknown outbox status {s:?}"))),
    }
}

/// A message to put in the outbox.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewOutbox {
    /// Where it goes, exact case.
    pub target: DeliveryTarget,
    /// The text to send (one chunk; chunking happens before the outbox).
    pub text: String,
    /// Deduplicates enqueues: a second row with the same key is not inserted, the existing
    /// row's id is returned instead.
    pub idempotency_key: Option<String>,
    /// Session that produced it. Run commits fill this in.
    pub session_key: Option<String>,
    /// Inbound ledger id it answers. Run commits fill this in.
    pub inbound_id: Option<i64>,
    /// Agent run that produced it. Run commits fill this in.
    pub run_id: Option<String>,
    /// Earliest send time (ms since the Unix epoch); `None` = as soon as possible.
    pub not_before: Option<i64>,
}

impl NewOutbox {
    /// A row with only a target and text.
    pub fn new(target: DeliveryTarget, text: impl Into<String>) -> Self {
        NewOutbox {
            target,
            text: text.into(),
            idempotency_key: None,
            session_key: None,
            inbound_id: None,
            run_id: None,
            not_before: None,
        }
    }

    /// Set the idempotency key.
    pub fn with_idempotency_key(mut self, key: impl Into<String>) -> Self {
        self.idempotency_key = Some(key.into());
        self
    }
}

/// One outbox row as stored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutboxRow {
    /// Row id; increases with insertion order and is never reused (see
    /// [`Store::prune_finished`]).
    pub id: i64,
    /// When it was enqueued (ms since the Unix epoch).
    pub created_at: i64,
    /// Last status change (ms).
    pub updated_at: i64,
    /// Session that produced it.
    pub session_key: Option<String>,
    /// Inbound ledger id it answers.
    pub inbound_id: Option<i64>,
    /// Agent run that produced it.
    pub run_id: Option<String>,
    /// Where it goes, exactly as enqueued.
    pub target: DeliveryTarget,
    /// The text.
    pub text: String,
    /// Idempotency key, if one was given.
    pub idempotency_key: Option<String>,
    /// Delivery status.
    pub status: OutboxStatus,
    /// Send attempts started (claims).
    pub attempts: u32,
    /// Earliest time of the next claim (ms); meaningful while `pending`.
    pub next_attempt_at: i64,
    /// Last send error or reason for `failed`/`unknown`.
    pub last_error: Option<String>,
    /// Platform id of the delivered message.
    pub platform_message_id: Option<String>,
    /// When it was marked sent (ms).
    pub sent_at: Option<i64>,
    /// Ordering key derived from the target.
    pub order_key: String,
}

/// Row counts per status, from [`Store::outbox_counts`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutboxCounts {
    /// Rows waiting to be claimed.
    pub pending: u64,
    /// Rows claimed / in flight.
    pub sending: u64,
    /// Delivered rows (until pruned).
    pub sent: u64,
    /// Given-up rows.
    pub failed: u64,
    /// Rows whose delivery could not be reconciled.
    pub unknown: u64,
}

/// Result of an enqueue: the row id and whether this call inserted it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Enqueued {
    /// The row id (the existing row's for an idempotency-key hit).
    pub id: i64,
    /// `false` when an existing row with the same idempotency key was returned.
    pub created: bool,
}

macro_rules! outbox_cols {
    () => {
        "id, created_at, updated_at, session_key, inbound_id, run_id, channel, account, to_id, \
         thread_id, reply_to_id, text, idempotency_key, status, attempts, next_attempt_at, \
         last_error, platform_message_id, sent_at, order_key"
    };
}

fn outbox_from_row(row: &Row<'_>) -> rusqlite::Result<OutboxRow> {
    Ok(OutboxRow {
        id: row.get(0)?,
        created_at: row.get(1)?,
        updated_at: row.get(2)?,
        session_key: row.get(3)?,
        inbound_id: row.get(4)?,
        run_id: row.get(5)?,
        target: DeliveryTarget {
            channel: decode(row, 6, codec::channel_id)?,
            account: decode(row, 7, codec::account_id)?,
            to: row.get(8)?,
            thread_id: row.get(9)?,
            reply_to_id: row.get(10)?,
        },
        text: row.get(11)?,
        idempotency_key: row.get(12)?,
        status: decode(row, 13, parse_status)?,
        attempts: row.get(14)?,
        next_attempt_at: row.get(15)?,
        last_error: row.get(16)?,
        platform_message_id: row.get(17)?,
        sent_at: row.get(18)?,
        order_key: row.get(19)?,
    })
}

pub(crate) fn get_outbox(conn: &Connection, id: i64) -> Result<Option<OutboxRow>> {
    let mut stmt = conn.prepare_cached(concat!("SELECT ", outbox_cols!(), " FROM outbox WHERE id = ?1"))?;
    Ok(stmt.query_row([id], outbox_from_row).optional()?)
}

pub(crate) fn validate(row: &NewOutbox) -> Result<()> {
    let t = &row.target;
    let missing = if t.channel.as_str().is_empty() {
        Some("channel")
    } else if t.to.is_empty() {
        Some("destination (`to`)")
    } else {
        None
    };
    match missing {
        Some(what) => Err(StoreError::InvalidInput {
            detail: format!("outbox row has an empty {what}; a reply needs a delivery target"),
        }),
        None => Ok(()),
    }
}

impl Tx<'_> {
    /// Insert a row as `pending`, due at `not_before` or `now_ms`. With an idempotency key that
    /// already exists, nothing is inserted and the existing row's id is returned with
    /// `created = false`. Errors: [`StoreError::InvalidInput`] for an empty channel or `to`.
    pub fn enqueue_outbox(&self, row: &NewOutbox, now_ms: i64) -> Result<Enqueued> {
        validate(row)?;
        let order_key = row.target.order_key();
        let due = row.not_before.unwrap_or(now_ms);
        // is_head: the new row is the head iff its order key has no open row yet (ids only
        // grow, so a new row is always the last of its key).
        let inserted = self
            .conn
            .prepare_cached(
                "INSERT INTO outbox (created_at, updated_at, session_key, inbound_id, run_id, \
                    channel, account, to_id, thread_id, reply_to_id, text, idempotency_key, \
                    status, attempts, next_attempt_at, order_key, is_head) \
                 VALUES (?1, ?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, 'pending', 0, ?12, ?13, \
                    NOT EXISTS (SELECT 1 FROM outbox INDEXED BY outbox_open \
                                WHERE order_key = ?13 \
                                AND closed_at IS NULL)) \
                 ON CONFLICT (idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING",
            )?
            .execute(params![
                now_ms,
                row.session_key,
                row.inbound_id,
                row.run_id,
                row.target.channel.as_str(),
                row.target.account.as_str(),
                row.target.to,
                row.target.thread_id,
                row.target.reply_to_id,
                row.text,
                row.idempotency_key,
                due,
                order_key,
            ])?;
        if inserted == 1 {
            return Ok(Enqueued { id: self.conn.last_insert_rowid(), created: true });
        }
        // DO NOTHING fired (nothing written), so the key is set and a row holds it.
        let id = self
            .conn
            .prepare_cached("SELECT id FROM outbox WHERE idempotency_key = ?1")?
            .query_row([&row.idempotency_key], |r| r.get(0))?;
        Ok(Enqueued { id, created: false })
    }

    /// Claim up to `limit` due rows: for each order key whose head is `pending` with
    /// `next_attempt_at <= now_ms`, mark the head `sending` and count an attempt. Returns the
    /// claimed rows (status `sending`), earliest due first.
    pub fn claim_due(&self, now_ms: i64, limit: usize) -> Result<Vec<OutboxRow>> {
        // Select, then update each row by id: cheaper than UPDATE ... RETURNING, and inside
        // the caller's write transaction nothing can change in between.
        let mut rows = {
            let mut stmt = self.conn.prepare_cached(concat!(
                "SELECT ",
                outbox_cols!(),
                " FROM outbox INDEXED BY outbox_due \
                 WHERE status = 'pending' AND is_head = 1 AND next_attempt_at <= ?1 \
                 ORDER BY next_attempt_at, id LIMIT ?2"
            ))?;
            let rows = stmt.query_map(params![now_ms, codec::sql_limit(limit)], outbox_from_row)?;
            rows.collect::<rusqlite::Result<Vec<_>>>()?
        };
        let mut stmt = self.conn.prepare_cached(
            "UPDATE outbox SET status = 'sending', attempts = attempts + 1, updated_at = ?2 \
             WHERE id = ?1",
        )?;
        for (i, row) in rows.iter_mut().enumerate() {
            let updated = stmt.execute(params![row.id, now_ms]).map_err(StoreError::from);
            if i == 0 {
                updated?;
            } else {
                self.after_write(updated)?;
            }
            row.status = OutboxStatus::Sending;
            row.attempts = row.attempts.saturating_add(1);
            row.updated_at = now_ms;
        }
        Ok(rows)
    }

    /// `sending` or `unknown` → `sent`, recording the platform's message id. Also records
    /// thread participation for rows with a thread id (the bot has now replied there).
    pub fn mark_sent(&self, id: i64, platform_message_id: Option<&str>, now_ms: i64) -> Result<()> {
        let lane = self.check_transition(id, OutboxStatus::Sent)?;
        self.conn
            .prepare_cached(
                "UPDATE outbox SET status = 'sent', platform_message_id = ?2, sent_at = ?3, \
                    updated_at = ?3, closed_at = ?3, is_head = 0 \
                 WHERE id = ?1",
            )?
            .execute(params![id, platform_message_id, now_ms])?;
        if lane.was_open {
            self.after_write(self.promote_head(&lane.order_key))?;
        }
        if let Some(thread_id) = &lane.thread_id {
            self.after_write(self.touch_thread_raw(&lane.channel, &lane.account, &lane.to, thread_id, now_ms))?;
        }
        Ok(())
    }

    /// `sending` → `pending` after a failed attempt that may be retried: records `error` and
    /// the next due time. The row stays the head of its order key, so later rows keep waiting.
    pub fn mark_retry(&self, id: i64, error: &str, next_attempt_at: i64, now_ms: i64) -> Result<()> {
        let changed = self
            .conn
            .prepare_cached(
                "UPDATE outbox SET status = 'pending', last_error = ?2, next_attempt_at = ?3, \
                    updated_at = ?4 \
                 WHERE id = ?1 AND status = 'sending'",
            )?
            .execute(params![id, error, next_attempt_at, now_ms])?;
        if changed == 0 {
            // Nothing was written; say why.
            return Err(self
                .check_transition(id, OutboxStatus::Pending)
                .err()
                .unwrap_or(StoreError::BadData { detail: format!("outbox row {id} could not be retried") }));
        }
        Ok(())
    }

    /// `pending`, `sending` or `unknown` → `failed` (given up), recording `error`. The next
    /// row of the order key becomes claimable.
    pub fn mark_failed(&self, id: i64, error: &str, now_ms: i64) -> Result<()> {
        self.close_row(id, error, now_ms, OutboxStatus::Failed)
    }

    /// `sending` → `unknown`: the send may or may not have reached the platform and the
    /// runtime cannot tell. Never retried automatically; the next row of the order key
    /// becomes claimable.
    pub fn mark_unknown(&self, id: i64, reason: &str, now_ms: i64) -> Result<()> {
        self.close_row(id, reason, now_ms, OutboxStatus::Unknown)
    }

    /// Read one outbox row inside the transaction.
    pub fn get_outbox(&self, id: i64) -> Result<Option<OutboxRow>> {
        get_outbox(self.conn, id)
    }

    fn close_row(&self, id: i64, error: &str, now_ms: i64, to: OutboxStatus) -> Result<()> {
        let lane = self.check_transition(id, to)?;
        self.conn
            .prepare_cached(
                "UPDATE outbox SET status = ?2, last_error = ?3, updated_at = ?4, closed_at = ?4, \
                    is_head = 0 \
                 WHERE id = ?1",
            )?
            .execute(params![id, to.as_str(), error, now_ms])?;
        if lane.was_open {
            self.after_write(self.promote_head(&lane.order_key))?;
        }
        Ok(())
    }

    /// Mark the lowest open row of `order_key` as its head (no-op if it already is or if the
    /// key has no open row). Called whenever a row leaves the open set.
    fn promote_head(&self, order_key: &str) -> Result<()> {
        self.conn
            .prepare_cached(
                "UPDATE outbox SET is_head = 1 WHERE id = \
                   (SELECT min(id) FROM outbox INDEXED BY outbox_open WHERE order_key = ?1 \
                    AND closed_at IS NULL) \
                 AND is_head = 0",
            )?
            .execute([order_key])?;
        Ok(())
    }

    /// Read what a status change needs and refuse it (writing nothing) unless the row exists
    /// and the state machine allows `from → to`.
    fn check_transition(&self, id: i64, to: OutboxStatus) -> Result<Lane> {
        let lane = self
            .conn
            .prepare_cached(
                "SELECT status, order_key, channel, account, to_id, thread_id FROM outbox \
                 WHERE id = ?1",
            )?
            .query_row([id], |r| {
                Ok((
                    decode(r, 0, parse_status)?,
                    Lane {
                        was_open: false,
                        order_key: r.get(1)?,
                        channel: r.get(2)?,
                        account: r.get(3)?,
                        to: r.get(4)?,
                        thread_id: r.get(5)?,
                    },
                ))
            })
            .optional()?;
        let Some((from, mut lane)) = lane else {
            return Err(StoreError::NotFound { what: "outbox row", id });
        };
        use OutboxStatus::*;
        let allowed = match to {
            Sent => matches!(from, Sending | Unknown),
            Pending => from == Sending,
            Failed => matches!(from, Pending | Sending | Unknown),
            Unknown => from == Sending,
            Sending => from == Pending,
        };
        if !allowed {
            return Err(StoreError::InvalidTransition { id, from, to });
        }
        lane.was_open = from.is_open();
        Ok(lane)
    }
}

/// What a status change needs to know about its row.
struct Lane {
    was_open: bool,
    order_key: String,
    channel: String,
    account: String,
    to: String,
    thread_id: Option<String>,
}

impl Store {
    /// Enqueue one row; returns its id and whether it was created. See
    /// [`Tx::enqueue_outbox`].
    pub fn enqueue_outbox(&self, row: &NewOutbox, now_ms: i64) -> Result<Enqueued> {
        self.write_one(|tx| tx.enqueue_outbox(row, now_ms))
    }

    /// Claim due rows (the send intent); see [`Tx::claim_due`].
    pub fn claim_due(&self, now_ms: i64, limit: usize) -> Result<Vec<OutboxRow>> {
        self.transaction(|tx| tx.claim_due(now_ms, limit))
    }

    /// Mark a row delivered; see [`Tx::mark_sent`]. Errors: [`StoreError::NotFound`],
    /// [`StoreError::InvalidTransition`].
    pub fn mark_sent(&self, id: i64, platform_message_id: Option<&str>, now_ms: i64) -> Result<()> {
        self.transaction(|tx| tx.mark_sent(id, platform_message_id, now_ms))
    }

    /// Put a `sending` row back to `pending` with a due time; see [`Tx::mark_retry`].
    pub fn mark_retry(&self, id: i64, error: &str, next_attempt_at: i64, now_ms: i64) -> Result<()> {
        self.write_one(|tx| tx.mark_retry(id, error, next_attempt_at, now_ms))
    }

    /// Give a row up; see [`Tx::mark_failed`].
    pub fn mark_failed(&self, id: i64, error: &str, now_ms: i64) -> Result<()> {
        self.transaction(|tx| tx.mark_failed(id, error, now_ms))
    }

    /// Record that a row's delivery cannot be reconciled; see [`Tx::mark_unknown`].
    pub fn mark_unknown(&self, id: i64, reason: &str, now_ms: i64) -> Result<()> {
        self.transaction(|tx| tx.mark_unknown(id, reason, now_ms))
    }

    /// Rows left `sending` by a previous process, oldest first. Call once at startup, before
    /// the delivery worker claims anything (afterwards `sending` rows are legitimately in
    /// flight). These rows are never re-claimed automatically: for each, ask the platform
    /// whether the message arrived and call [`Store::mark_sent`], [`Store::mark_retry`] (it
    /// provably did not), or [`Store::mark_unknown`] (cannot tell). Until then the row blocks
    /// its order key.
    pub fn recover_in_flight(&self) -> Result<Vec<OutboxRow>> {
        self.read(|c| {
            let mut stmt = c.prepare_cached(concat!(
                "SELECT ",
                outbox_cols!(),
                " FROM outbox INDEXED BY outbox_open \
                 WHERE closed_at IS NULL AND status = 'sending' ORDER BY id"
            ))?;
            let rows = stmt.query_map([], outbox_from_row)?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
    }

    /// One row by id.
    pub fn get_outbox(&self, id: i64) -> Result<Option<OutboxRow>> {
        self.read(|c| get_outbox(c, id))
    }

    /// Up to `limit` rows, newest first, optionally only those with `status`. Open statuses
    /// (`pending`, `sending`) are served from an index; terminal ones scan newest-first, which
    /// is quick for `sent` and bounded by retention ([`Store::prune_finished`]) for the rare
    /// `failed`/`unknown`.
    pub fn list_outbox(&self, status: Option<OutboxStatus>, limit: usize) -> Result<Vec<OutboxRow>> {
        self.read(|c| {
            let limit = codec::sql_limit(limit);
            let rows = match status {
                // Open rows: the small open index. Terminal rows: newest-first scan.
                Some(s) if s.is_open() => {
                    let mut stmt = c.prepare_cached(concat!(
                        "SELECT ",
                        outbox_cols!(),
                        " FROM outbox INDEXED BY outbox_open \
                         WHERE closed_at IS NULL AND status = ?1 ORDER BY id DESC LIMIT ?2"
                    ))?;
                    let rows = stmt.query_map(params![s.as_str(), limit], outbox_from_row)?;
                    rows.collect::<rusqlite::Result<Vec<_>>>()?
                }
                Some(s) => {
                    let mut stmt = c.prepare_cached(concat!(
                        "SELECT ",
                        outbox_cols!(),
                        " FROM outbox WHERE status = ?1 ORDER BY id DESC LIMIT ?2"
                    ))?;
                    let rows = stmt.query_map(params![s.as_str(), limit], outbox_from_row)?;
                    rows.collect::<rusqlite::Result<Vec<_>>>()?
                }
                None => {
                    let mut stmt =
                        c.prepare_cached(concat!("SELECT ", outbox_cols!(), " FROM outbox ORDER BY id DESC LIMIT ?1"))?;
                    let rows = stmt.query_map([limit], outbox_from_row)?;
                    rows.collect::<rusqlite::Result<Vec<_>>>()?
                }
            };
            Ok(rows)
        })
    }

    /// Number of rows in each status. Errors with [`StoreError::BadData`] if a row has a
    /// status this binary does not know.
    pub fn outbox_counts(&self) -> Result<OutboxCounts> {
        self.read(|c| {
            let mut stmt = c.prepare_cached("SELECT status, count(*) FROM outbox GROUP BY status")?;
            let rows = stmt.query_map([], |r| Ok((decode(r, 0, parse_status)?, r.get::<_, i64>(1)?)))?;
            let mut counts = OutboxCounts::default();
            for row in rows {
                let (status, n) = row?;
                let n = u64::try_from(n).unwrap_or(0);
                match status {
                    OutboxStatus::Pending => counts.pending = n,
                    OutboxStatus::Sending => counts.sending = n,
                    OutboxStatus::Sent => counts.sent = n,
                    OutboxStatus::Failed => counts.failed = n,
                    OutboxStatus::Unknown => counts.unknown = n,
                }
            }
            Ok(counts)
        })
    }

    /// The earliest `next_attempt_at` among claimable rows (pending heads), so the delivery
    /// worker can sleep exactly until then; `None` when nothing is pending. The value may be
    /// in the past (rows are due now).
    pub fn next_due_at(&self) -> Result<Option<i64>> {
        self.read(|c| {
            Ok(c.prepare_cached(
                "SELECT min(next_attempt_at) FROM outbox INDEXED BY outbox_due \
                 WHERE status = 'pending' AND is_head = 1",
            )?
            .query_row([], |r| r.get(0))?)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_status_is_bad_data_not_a_panic() {
        let store = Store::open_in_memory().unwrap();
        store
            .write_one(|tx| {
                tx.conn.execute_batch(
                    "INSERT INTO outbox (created_at, updated_at, channel, account, to_id, text, \
                        status, next_attempt_at, order_key) \
                     VALUES (1, 1, 'x', 'default', 'c', 't', 'bogus', 1, 'k')",
                )?;
                Ok(())
            })
            .unwrap();
        let err = store.list_outbox(None, 10).unwrap_err();
        assert!(matches!(err, StoreError::BadData { .. }), "{err:?}");
        assert!(err.to_string().contains("bogus"), "{err}");
        let err = store.outbox_counts().unwrap_err();
        assert!(matches!(err, StoreError::BadData { .. }), "{err:?}");
    }
}
