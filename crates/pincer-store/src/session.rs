//! Sessions and their transcripts.
//!
//! A session row is keyed by the exact session key (case preserved, compared byte-wise) and
//! stores the last delivery target exactly as given, so a reply route is never re-derived by
//! parsing a key. The transcript is append-only per session with a sequence number 1, 2, 3 …;
//! a reset deletes the transcript, bumps `generation` and restarts the numbering at 1.

use crate::codec::{self, decode, decode_opt};
use crate::error::{Result, StoreError};
use crate::store::{Store, Tx};
use pincer_core::{AgentId, ChatKind, DeliveryTarget};
use rusqlite::{params, Connection, OptionalExtension, Row};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// One session as stored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionRecord {
    /// The session key in OpenClaw grammar (`agent:main:matrix:channel:!AbC:Example.org`),
    /// exact case.
    pub key: String,
    /// Agent the session belongs to.
    pub agent_id: AgentId,
    /// Conversation kind.
    pub chat_kind: ChatKind,
    /// Where replies for this session go (the last route), exact case.
    pub target: DeliveryTarget,
    /// When the row was first created (ms since the Unix epoch). Kept from the first upsert.
    pub created_at: i64,
    /// When the row was last upserted (ms).
    pub updated_at: i64,
    /// When a run for this session was last committed (ms), if ever.
    pub last_run_at: Option<i64>,
    /// Number of resets so far. Owned by the store: ignored by [`Store::upsert_session`].
    pub generation: i64,
}

impl SessionRecord {
    /// A fresh record: `created_at = updated_at = now_ms`, never run, generation 0.
    pub fn new(
        key: impl Into<String>,
        agent_id: AgentId,
        chat_kind: ChatKind,
        target: DeliveryTarget,
        now_ms: i64,
    ) -> Self {
        SessionRecord {
            key: key.into(),
            agent_id,
            chat_kind,
            target,
            created_at: now_ms,
            updated_at: now_ms,
            last_run_at: None,
            generation: 0,
        }
    }
}

/// A session with its activity figures, as listed by [`Store::list_sessions`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionSummary {
    /// The session row.
    pub session: SessionRecord,
    /// Transcript entries since the last reset.
    pub message_count: i64,
    /// Latest of `updated_at`, the last transcript append and the last run (ms).
    pub last_activity_at: i64,
}

/// Who wrote a transcript entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// The human (or remote bot) on the channel.
    User,
    /// The agent's reply.
    Assistant,
    /// A system note (instructions, session events).
    System,
    /// A failure recorded for the operator; excluded from [`Store::history_for_run`].
    Error,
}

impl Role {
    /// Stored form: `user`, `assistant`, `system`, `error`.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::User => "user",
            Role::Assistant => "assistant",
            Role::System => "system",
            Role::Error => "error",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = StoreError;

    /// Parse the stored form; anything else is [`StoreError::BadData`].
    fn from_str(s: &str) -> Result<Self> {
        parse_role(s.to_string()).map_err(|e| StoreError::BadData { detail: e.0 })
    }
}

fn parse_role(s: String) -> Result<Role, codec::BadValue> {
    match s.as_str() {
        "user" => Ok(Role::User),
        "assistant" => Ok(Role::Assistant),
        "system" => Ok(Role::System),
        "error" => Ok(Role::Error),
        _ => Err(codec::BadValue(format!("unknown transcript role {s:?}"))),
    }
}

/// One transcript row.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TranscriptEntry {
    /// Position in the session's transcript, from 1, gap-free until a reset.
    pub seq: i64,
    /// Author role.
    pub role: Role,
    /// The text.
    pub text: String,
    /// The agent run that produced or consumed it, if any.
    pub run_id: Option<String>,
    /// When it was appended (ms since the Unix epoch).
    pub created_at: i64,
    /// Optional structured metadata (usage, model, tool calls ...), stored as JSON text.
    pub meta: Option<serde_json::Value>,
}

/// A transcript entry to append as part of a [`RunCommit`](crate::RunCommit).
#[derive(Clone, Debug, PartialEq)]
pub struct NewTranscriptEntry {
    /// Author role.
    pub role: Role,
    /// The text.
    pub text: String,
    /// Optional JSON metadata.
    pub meta: Option<serde_json::Value>,
}

impl NewTranscriptEntry {
    /// An entry without metadata.
    pub fn new(role: Role, text: impl Into<String>) -> Self {
        NewTranscriptEntry { role, text: text.into(), meta: None }
    }
}

macro_rules! session_cols {
    () => {
        "key, agent_id, chat_kind, channel, account, to_id, thread_id, reply_to_id, \
         created_at, updated_at, last_run_at, generation"
    };
}

fn session_from_row(row: &Row<'_>) -> rusqlite::Result<SessionRecord> {
    Ok(SessionRecord {
        key: row.get(0)?,
        agent_id: decode(row, 1, codec::agent_id)?,
        chat_kind: decode(row, 2, codec::chat_kind)?,
        target: DeliveryTarget {
            channel: decode(row, 3, codec::channel_id)?,
            account: decode(row, 4, codec::account_id)?,
            to: row.get(5)?,
            thread_id: row.get(6)?,
            reply_to_id: row.get(7)?,
        },
        created_at: row.get(8)?,
        updated_at: row.get(9)?,
        last_run_at: row.get(10)?,
        generation: row.get(11)?,
    })
}

fn entry_from_row(row: &Row<'_>) -> rusqlite::Result<TranscriptEntry> {
    Ok(TranscriptEntry {
        seq: row.get(0)?,
        role: decode(row, 1, parse_role)?,
        text: row.get(2)?,
        run_id: row.get(3)?,
        created_at: row.get(4)?,
        meta: decode_opt(row, 5, codec::json)?,
    })
}

pub(crate) fn get_session(conn: &Connection, key: &str) -> Result<Option<SessionRecord>> {
    let mut stmt = conn.prepare_cached(concat!("SELECT ", session_cols!(), " FROM sessions WHERE key = ?1"))?;
    Ok(stmt.query_row([key], session_from_row).optional()?)
}

/// Last `limit` entries in ascending seq order; `only_history` drops `error` rows.
fn read_transcript(conn: &Connection, key: &str, limit: usize, only_history: bool) -> Result<Vec<TranscriptEntry>> {
    let sql = if only_history {
        "SELECT seq, role, text, run_id, created_at, meta FROM \
           (SELECT seq, role, text, run_id, created_at, meta FROM transcript \
            WHERE session_key = ?1 AND role <> 'error' ORDER BY seq DESC LIMIT ?2) \
         ORDER BY seq ASC"
    } else {
        "SELECT seq, role, text, run_id, created_at, meta FROM \
           (SELECT seq, role, text, run_id, created_at, meta FROM transcript \
            WHERE session_key = ?1 ORDER BY seq DESC LIMIT ?2) \
         ORDER BY seq ASC"
    };
    let mut stmt = conn.prepare_cached(sql)?;
    let rows = stmt.query_map(params![key, codec::sql_limit(limit)], entry_from_row)?;
    Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
}

fn validate_session(rec: &SessionRecord) -> Result<()> {
    if rec.key.is_empty() {
        return Err(StoreError::InvalidInput { detail: "session key is empty".into() });
    }
    Ok(())
}

impl Tx<'_> {
    /// Insert the session, or update an existing one's agent, chat kind, target, `updated_at`
    /// and (when `Some`) `last_run_at`. `created_at` is kept from the first insert and
    /// `generation` is owned by the store. Errors: [`StoreError::InvalidInput`] for an empty
    /// key.
    pub fn upsert_session(&self, rec: &SessionRecord) -> Result<()> {
        validate_session(rec)?;
        let mut stmt = self.conn.prepare_cached(
            "INSERT INTO sessions (key, agent_id, chat_kind, channel, account, to_id, thread_id, \
                                   reply_to_id, created_at, updated_at, last_run_at) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11) \
             ON CONFLICT (key) DO UPDATE SET \
                agent_id = excluded.agent_id, chat_kind = excluded.chat_kind, \
                channel = excluded.channel, account = excluded.account, to_id = excluded.to_id, \
                thread_id = excluded.thread_id, reply_to_id = excluded.reply_to_id, \
                updated_at = excluded.updated_at, \
                last_run_at = coalesce(excluded.last_run_at, sessions.last_run_at)",
        )?;
        stmt.execute(params![
            rec.key,
            rec.agent_id.as_str(),
            rec.chat_kind.as_str(),
            rec.target.channel.as_str(),
            rec.target.account.as_str(),
            rec.target.to,
            rec.target.thread_id,
            rec.target.reply_to_id,
            rec.created_at,
            rec.updated_at,
            rec.last_run_at,
        ])?;
        Ok(())
    }

    /// Read a session inside the transaction (sees this transaction's own writes).
    pub fn get_session(&self, key: &str) -> Result<Option<SessionRecord>> {
        get_session(self.conn, key)
    }

    /// Delete the session's transcript, bump its `generation` and restart seq numbering at 1.
    /// The row (and its delivery target) stays. Returns `false` when no such session exists.
    pub fn reset_session(&self, key: &str, now_ms: i64) -> Result<bool> {
        let changed = self
            .conn
            .prepare_cached(
                "UPDATE sessions SET generation = generation + 1, next_seq = 1, \
                    last_message_at = NULL, updated_at = ?2 WHERE key = ?1",
            )?
            .execute(params![key, now_ms])?;
        if changed == 0 {
            return Ok(false);
        }
        self.after_write(
            self.conn
                .prepare_cached("DELETE FROM transcript WHERE session_key = ?1")
                .and_then(|mut s| s.execute([key]))
                .map_err(StoreError::from),
        )?;
        Ok(true)
    }

    /// Append one transcript entry; returns its seq (1 for the first entry after creation or
    /// reset). Errors: [`StoreError::NoSuchSession`] if the session row does not exist.
    pub fn append_transcript(
        &self,
        key: &str,
        role: Role,
        text: &str,
        run_id: Option<&str>,
        now_ms: i64,
    ) -> Result<i64> {
        self.append_transcript_with_meta(key, role, text, run_id, None, now_ms)
    }

    /// [`Tx::append_transcript`] with optional JSON metadata.
    pub fn append_transcript_with_meta(
        &self,
        key: &str,
        role: Role,
        text: &str,
        run_id: Option<&str>,
        meta: Option<&serde_json::Value>,
        now_ms: i64,
    ) -> Result<i64> {
        // Allocating the seq is the existence check: no session row, no seq, nothing written.
        let Some(seq) = self.alloc_seqs(key, 1, now_ms, false)? else {
            return Err(StoreError::NoSuchSession { key: key.to_string() });
        };
        self.after_write(self.insert_transcript_row(key, seq, role, text, run_id, meta, now_ms))?;
        Ok(seq)
    }

    /// The last `limit` non-error transcript entries, ascending (see [`Store::history_for_run`]).
    pub fn history_for_run(&self, key: &str, limit: usize) -> Result<Vec<TranscriptEntry>> {
        read_transcript(self.conn, key, limit, true)
    }

    /// Reserve `n` consecutive transcript seqs for `key` and return the first, or `None`
    /// (nothing written) if the session does not exist. With `run`, also records
    /// `last_run_at = now_ms`. Doubles as the session existence check.
    pub(crate) fn alloc_seqs(&self, key: &str, n: usize, now_ms: i64, run: bool) -> Result<Option<i64>> {
        let n =
            i64::try_from(n).map_err(|_| StoreError::InvalidInput { detail: "too many transcript entries".into() })?;
        // Read, then update by key: cheaper than UPDATE ... RETURNING (see record_inbound).
        let next: Option<i64> = self
            .conn
            .prepare_cached("SELECT next_seq FROM sessions WHERE key = ?1")?
            .query_row([key], |r| r.get(0))
            .optional()?;
        let Some(first) = next else {
            return Ok(None);
        };
        let sql = if run {
            "UPDATE sessions SET next_seq = next_seq + ?2, \
                last_message_at = CASE WHEN ?2 > 0 THEN ?3 ELSE last_message_at END, \
                last_run_at = ?3, updated_at = max(updated_at, ?3) \
             WHERE key = ?1"
        } else {
            "UPDATE sessions SET next_seq = next_seq + ?2, last_message_at = ?3 WHERE key = ?1"
        };
        self.conn.prepare_cached(sql)?.execute(params![key, n, now_ms])?;
        Ok(Some(first))
    }

    /// Insert one transcript row with a seq from [`Tx::alloc_seqs`].
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn insert_transcript_row(
        &self,
        key: &str,
        seq: i64,
        role: Role,
        text: &str,
        run_id: Option<&str>,
        meta: Option<&serde_json::Value>,
        now_ms: i64,
    ) -> Result<()> {
        let meta = meta.map(|m| m.to_string());
        self.conn
            .prepare_cached(
                "INSERT INTO transcript (session_key, seq, role, text, run_id, created_at, meta) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )?
            .execute(params![key, seq, role.as_str(), text, run_id, now_ms, meta])?;
        Ok(())
    }
}

impl Store {
    /// Insert or update a session in one transaction; see [`Tx::upsert_session`].
    pub fn upsert_session(&self, rec: &SessionRecord) -> Result<()> {
        self.write_one(|tx| tx.upsert_session(rec))
    }

    /// The session with exactly this key (byte-wise, case-sensitive), if any.
    pub fn get_session(&self, key: &str) -> Result<Option<SessionRecord>> {
        self.read(|c| get_session(c, key))
    }

    /// Up to `limit` sessions, most recently active first, with message counts.
    pub fn list_sessions(&self, limit: usize) -> Result<Vec<SessionSummary>> {
        self.read(|c| {
            let mut stmt = c.prepare_cached(concat!(
                "SELECT ",
                session_cols!(),
                ", next_seq - 1, \
                 max(updated_at, coalesce(last_message_at, updated_at), \
                     coalesce(last_run_at, updated_at)) AS activity \
                 FROM sessions ORDER BY activity DESC, key ASC LIMIT ?1"
            ))?;
            let rows = stmt.query_map([codec::sql_limit(limit)], |row| {
                Ok(SessionSummary {
                    session: session_from_row(row)?,
                    message_count: row.get(12)?,
                    last_activity_at: row.get(13)?,
                })
            })?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
    }

    /// Clear a session's transcript but keep the row; see [`Tx::reset_session`]. Returns
    /// whether the session existed.
    pub fn reset_session(&self, key: &str, now_ms: i64) -> Result<bool> {
        self.transaction(|tx| tx.reset_session(key, now_ms))
    }

    /// Append a transcript entry in its own transaction; returns its seq. See
    /// [`Tx::append_transcript`].
    pub fn append_transcript(
        &self,
        key: &str,
        role: Role,
        text: &str,
        run_id: Option<&str>,
        now_ms: i64,
    ) -> Result<i64> {
        self.transaction(|tx| tx.append_transcript(key, role, text, run_id, now_ms))
    }

    /// [`Store::append_transcript`] with optional JSON metadata.
    pub fn append_transcript_with_meta(
        &self,
        key: &str,
        role: Role,
        text: &str,
        run_id: Option<&str>,
        meta: Option<&serde_json::Value>,
        now_ms: i64,
    ) -> Result<i64> {
        self.transaction(|tx| tx.append_transcript_with_meta(key, role, text, run_id, meta, now_ms))
    }

    /// The last `limit_last_n` transcript entries of a session (all roles), in ascending seq
    /// order. Empty for an unknown session.
    pub fn transcript(&self, key: &str, limit_last_n: usize) -> Result<Vec<TranscriptEntry>> {
        self.read(|c| read_transcript(c, key, limit_last_n, false))
    }

    /// The context for the next agent run: the last `limit` entries excluding `error` rows,
    /// in ascending seq order.
    pub fn history_for_run(&self, key: &str, limit: usize) -> Result<Vec<TranscriptEntry>> {
        self.read(|c| read_transcript(c, key, limit, true))
    }
}
