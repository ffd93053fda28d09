//! The inbound side: the dedupe ledger and the outcome ledger.
//!
//! Dedupe: a platform message id (per channel and account) is accepted at most once per TTL
//! window. Entries are never released on an error path; only [`Store::prune_dedupe`] removes
//! them, after they expire.
//!
//! Outcomes: every accepted inbound message gets one `inbound` row and ends in exactly one
//! terminal [`Outcome`]. The first outcome wins; later attempts are refused. Rows still without
//! an outcome at startup ([`Store::unfinished_inbound`]) were interrupted by a crash and must be
//! finished by the runtime's recovery.

use crate::codec::{self, decode, decode_opt};
use crate::error::{Result, StoreError};
use crate::store::{Store, Tx};
use pincer_core::{AccountId, ChannelId};
use rusqlite::{params, Connection, OptionalExtension, Row};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// The terminal outcome of an accepted inbound message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// A reply was committed to the outbox (delivery is tracked by the outbox row).
    Replied,
    /// Deliberately no reply (`NO_REPLY`, not woken, ...); the reason says why.
    Silent,
    /// The run failed; the reason is for the operator.
    Failed,
}

impl Outcome {
    /// Stored form: `replied`, `silent`, `failed`.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Replied => "replied",
            Outcome::Silent => "silent",
            Outcome::Failed => "failed",
        }
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Outcome {
    type Err = StoreError;

    /// Parse the stored form; anything else is [`StoreError::BadData`].
    fn from_str(s: &str) -> Result<Self> {
        parse_outcome(s.to_string()).map_err(|e| StoreError::BadData { detail: e.0 })
    }
}

fn parse_outcome(s: String) -> Result<Outcome, codec::BadValue> {
    match s.as_str() {
        "replied" => Ok(Outcome::Replied),
        "silent" => Ok(Outcome::Silent),
        "failed" => Ok(Outcome::Failed),
        _ => Err(codec::BadValue(format!("unknown inbound outcome {s:?}"))),
    }
}

/// An inbound message to record in the outcome ledger.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewInbound {
    /// Channel it arrived on.
    pub channel: ChannelId,
    /// Account that received it.
    pub account: AccountId,
    /// Exact platform message id.
    pub message_id: String,
    /// The session it was routed to, when known.
    pub session_key: Option<String>,
}

/// One row of the inbound outcome ledger.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InboundRow {
    /// Ledger id (what `finish_inbound` and outbox rows refer to).
    pub id: i64,
    /// Channel.
    pub channel: ChannelId,
    /// Account.
    pub account: AccountId,
    /// Exact platform message id.
    pub message_id: String,
    /// Session it was routed to, if recorded.
    pub session_key: Option<String>,
    /// When it was recorded (ms since the Unix epoch).
    pub received_at: i64,
    /// Terminal outcome; `None` while in progress.
    pub outcome: Option<Outcome>,
    /// Why (for `silent` and `failed`; optional for `replied`).
    pub reason: Option<String>,
    /// When the outcome was recorded (ms).
    pub finished_at: Option<i64>,
}

macro_rules! inbound_cols {
    () => {
        "id, channel, account, message_id, session_key, received_at, outcome, reason, finished_at"
    };
}

fn inbound_from_row(row: &Row<'_>) -> rusqlite::Result<InboundRow> {
    Ok(InboundRow {
        id: row.get(0)?,
        channel: decode(row, 1, codec::channel_id)?,
        account: decode(row, 2, codec::account_id)?,
        message_id: row.get(3)?,
        session_key: row.get(4)?,
        received_at: row.get(5)?,
        outcome: decode_opt(row, 6, parse_outcome)?,
        reason: row.get(7)?,
        finished_at: row.get(8)?,
    })
}

pub(crate) fn get_inbound(conn: &Connection, id: i64) -> Result<Option<InboundRow>> {
    let mut stmt = conn.prepare_cached(concat!("SELECT ", inbound_cols!(), " FROM inbound WHERE id = ?1"))?;
    Ok(stmt.query_row([id], inbound_from_row).optional()?)
}

impl Tx<'_> {
    /// Atomically check and record a platform message id. Returns `true` the first time
    /// `(channel, account, message_id)` is seen, or when its previous entry has expired (it is
    /// then replaced); `false` for a duplicate seen less than `ttl_ms` ago. The entry expires
    /// at `now_ms + ttl_ms` (saturating); a `ttl_ms <= 0` entry is already expired.
    pub fn dedupe_check_and_insert(
        &self,
        channel: &ChannelId,
        account: &AccountId,
        message_id: &str,
        now_ms: i64,
        ttl_ms: i64,
    ) -> Result<bool> {
        let expires = now_ms.saturating_add(ttl_ms.max(0));
        let changed = self
            .conn
            .prepare_cached(
                "INSERT INTO dedupe (channel, account, message_id, seen_at, expires_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5) \
                 ON CONFLICT (channel, account, message_id) DO UPDATE SET \
                    seen_at = excluded.seen_at, expires_at = excluded.expires_at \
                 WHERE dedupe.expires_at <= excluded.seen_at",
            )?
            .execute(params![channel.as_str(), account.as_str(), message_id, now_ms, expires])?;
        Ok(changed == 1)
    }

    /// Record an accepted inbound message in the outcome ledger (no outcome yet); returns its
    /// ledger id.
    pub fn record_inbound(&self, rec: &NewInbound, now_ms: i64) -> Result<i64> {
        // No RETURNING on hot-path statements: SQLite buffers RETURNING rows in an ephemeral
        // table, which costs more than reading last_insert_rowid.
        self.conn
            .prepare_cached(
                "INSERT INTO inbound (channel, account, message_id, session_key, received_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5)",
            )?
            .execute(params![rec.channel.as_str(), rec.account.as_str(), rec.message_id, rec.session_key, now_ms])?;
        Ok(self.conn.last_insert_rowid())
    }

    /// Dedupe and record in one step: `Some(ledger id)` when the message is new (or its dedupe
    /// entry expired), `None` for a duplicate. Because both writes commit together, an
    /// accepted message always has a ledger row, so it cannot vanish without an outcome.
    pub fn accept_inbound(&self, rec: &NewInbound, now_ms: i64, dedupe_ttl_ms: i64) -> Result<Option<i64>> {
        if !self.dedupe_check_and_insert(&rec.channel, &rec.account, &rec.message_id, now_ms, dedupe_ttl_ms)? {
            return Ok(None);
        }
        self.after_write(self.record_inbound(rec, now_ms)).map(Some)
    }

    /// Record the terminal outcome of an inbound message. Returns `true` if this call set it,
    /// `false` if the message already had an outcome (the first one is kept, nothing changes).
    /// Errors: [`StoreError::NotFound`] for an unknown id.
    pub fn finish_inbound(&self, inbound_id: i64, outcome: Outcome, reason: Option<&str>, now_ms: i64) -> Result<bool> {
        let changed = self
            .conn
            .prepare_cached(
                "UPDATE inbound SET outcome = ?2, reason = ?3, finished_at = ?4 \
                 WHERE id = ?1 AND outcome IS NULL",
            )?
            .execute(params![inbound_id, outcome.as_str(), reason, now_ms])?;
        if changed == 1 {
            return Ok(true);
        }
        match get_inbound(self.conn, inbound_id)? {
            Some(_) => Ok(false),
            None => Err(StoreError::NotFound { what: "inbound message", id: inbound_id }),
        }
    }

    /// Record the outcome of a run's inbound message, refusing (and writing nothing) unless
    /// the message exists, has no outcome yet, and `session_key` has a session row. Used as
    /// the first write of a run commit, so a refused commit has written nothing.
    pub(crate) fn finish_inbound_for_run(
        &self,
        inbound_id: i64,
        session_key: &str,
        outcome: Outcome,
        reason: Option<&str>,
        now_ms: i64,
    ) -> Result<()> {
        let changed = self
            .conn
            .prepare_cached(
                "UPDATE inbound SET outcome = ?2, reason = ?3, finished_at = ?4 \
                 WHERE id = ?1 AND outcome IS NULL \
                   AND EXISTS (SELECT 1 FROM sessions WHERE key = ?5)",
            )?
            .execute(params![inbound_id, outcome.as_str(), reason, now_ms, session_key])?;
        if changed == 1 {
            return Ok(());
        }
        match get_inbound(self.conn, inbound_id)? {
            None => Err(StoreError::NotFound { what: "inbound message", id: inbound_id }),
            Some(InboundRow { outcome: Some(existing), .. }) => {
                Err(StoreError::AlreadyFinished { inbound_id, outcome: existing })
            }
            Some(_) => Err(StoreError::NoSuchSession { key: session_key.to_string() }),
        }
    }

    /// Read one ledger row inside the transaction.
    pub fn get_inbound(&self, inbound_id: i64) -> Result<Option<InboundRow>> {
        get_inbound(self.conn, inbound_id)
    }
}

impl Store {
    /// Atomically check and record a platform message id; see
    /// [`Tx::dedupe_check_and_insert`]. `true` = first time seen (accept), `false` = duplicate.
    pub fn dedupe_check_and_insert(
        &self,
        channel: &ChannelId,
        account: &AccountId,
        message_id: &str,
        now_ms: i64,
        ttl_ms: i64,
    ) -> Result<bool> {
        self.write_one(|tx| tx.dedupe_check_and_insert(channel, account, message_id, now_ms, ttl_ms))
    }

    /// Delete dedupe entries that expired at or before `now_ms`; returns how many.
    pub fn prune_dedupe(&self, now_ms: i64) -> Result<usize> {
        self.write_one(|tx| {
            Ok(tx.conn.prepare_cached("DELETE FROM dedupe WHERE expires_at <= ?1")?.execute([now_ms])?)
        })
    }

    /// Record an accepted inbound message; returns its ledger id. See [`Tx::record_inbound`].
    pub fn record_inbound(&self, rec: &NewInbound, now_ms: i64) -> Result<i64> {
        self.write_one(|tx| tx.record_inbound(rec, now_ms))
    }

    /// Dedupe and record in one transaction; see [`Tx::accept_inbound`].
    pub fn accept_inbound(&self, rec: &NewInbound, now_ms: i64, dedupe_ttl_ms: i64) -> Result<Option<i64>> {
        self.transaction(|tx| tx.accept_inbound(rec, now_ms, dedupe_ttl_ms))
    }

    /// Record the terminal outcome of an inbound message; only the first call per id
    /// succeeds (`true`), later ones are no-ops returning `false`. This touches nothing but
    /// the ledger row, so it is the last-resort way to record a failure when a
    /// [`Store::commit_failed`] cannot be written.
    pub fn finish_inbound(&self, inbound_id: i64, outcome: Outcome, reason: Option<&str>, now_ms: i64) -> Result<bool> {
        self.write_one(|tx| tx.finish_inbound(inbound_id, outcome, reason, now_ms))
    }

    /// One ledger row by id.
    pub fn get_inbound(&self, inbound_id: i64) -> Result<Option<InboundRow>> {
        self.read(|c| get_inbound(c, inbound_id))
    }

    /// Ledger rows without an outcome, oldest first. At startup these are messages whose run
    /// was interrupted; the runtime must finish each one (re-run it or record `failed`).
    pub fn unfinished_inbound(&self) -> Result<Vec<InboundRow>> {
        self.read(|c| {
            let mut stmt = c.prepare_cached(concat!(
                "SELECT ",
                inbound_cols!(),
                " FROM inbound WHERE outcome IS NULL ORDER BY id"
            ))?;
            let rows = stmt.query_map([], inbound_from_row)?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
    }
}
