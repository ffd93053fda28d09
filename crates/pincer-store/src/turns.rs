//! Turns: the runtime-facing operations that tie the ledgers together.
//!
//! - [`Store::accept_turn`] accepts one message in ONE transaction: dedupe entry, session row
//!   (with its delivery context), the user's transcript entry, and the inbound ledger row
//!   carrying the turn payload (agent, run id, text, reply target, transcript seq). After a
//!   crash, [`Store::unfinished_turns`] returns exactly what is needed to run it again.
//! - [`Store::commit_outcome`] ends a turn that may answer several inbound messages (a
//!   `collect` merge) in ONE transaction: transcript entry, outbox rows, and every message's
//!   terminal outcome.
//! - [`Store::requeue_outbox`] lets an operator retry a `failed` or `unknown` delivery.

use crate::error::{Result, StoreError};
use crate::inbound::Outcome;
use crate::outbox::{NewOutbox, OutboxStatus};
use crate::session::{Role, SessionRecord};
use crate::store::{Store, Tx};
use pincer_core::{AccountId, AgentId, ChannelId, ChatKind, DeliveryTarget};
use rusqlite::{params, OptionalExtension};

/// One message to accept.
#[derive(Clone, Copy, Debug)]
pub struct AcceptInbound<'a> {
    /// Channel (or ingress name: `webchat`, `api`, `cli`).
    pub channel: &'a str,
    /// Account.
    pub account: &'a str,
    /// Platform message id (or idempotency key) — the dedupe key with channel and account.
    pub message_id: &'a str,
    /// Routed session key.
    pub session_key: &'a str,
    /// Routed agent.
    pub agent_id: &'a str,
    /// Run id.
    pub run_id: &'a str,
    /// The user's text.
    pub text: &'a str,
    /// Reply target; `None` for session-only turns (the session row is then created with a
    /// target of the ingress and the session key, and an existing row is left unchanged).
    pub target: Option<&'a DeliveryTarget>,
    /// Conversation kind (default `direct`).
    pub chat_kind: Option<ChatKind>,
    /// Now, ms since the epoch.
    pub now_ms: i64,
    /// Dedupe window in ms.
    pub dedupe_ttl_ms: i64,
}

/// An accepted message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Accepted {
    /// Inbound ledger id.
    pub inbound_id: i64,
    /// Transcript seq of the user entry.
    pub user_seq: i64,
}

/// An accepted message that has no outcome yet (found at start-up).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PendingTurn {
    /// Inbound ledger id.
    pub inbound_id: i64,
    /// Session key.
    pub session_key: String,
    /// Agent id.
    pub agent_id: String,
    /// Run id.
    pub run_id: String,
    /// The user's text.
    pub text: String,
    /// Reply target, if the turn replies to a channel.
    pub target: Option<DeliveryTarget>,
    /// Transcript seq of the user entry.
    pub user_seq: i64,
}

/// What the ledger says about a message id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InboundOutcome {
    /// `replied`, `silent`, `failed`, or `None` while in progress.
    pub outcome: Option<String>,
    /// Reason.
    pub reason: Option<String>,
    /// Accept time (ms).
    pub received_at: i64,
    /// Finish time (ms).
    pub finished_at: Option<i64>,
}

fn target_json(t: &DeliveryTarget) -> String {
    serde_json::to_string(t).unwrap_or_default()
}

impl Tx<'_> {
    /// See [`Store::accept_turn`].
    pub fn accept_turn(&self, a: &AcceptInbound<'_>) -> Result<Option<Accepted>> {
        let channel = ChannelId::new(a.channel);
        let account = AccountId::new(a.account);
        if !self.dedupe_check_and_insert(&channel, &account, a.message_id, a.now_ms, a.dedupe_ttl_ms)? {
            return Ok(None);
        }
        let kind = a.chat_kind.unwrap_or(ChatKind::Direct);
        let result = (|| {
            match a.target {
                Some(t) => self.upsert_session(&SessionRecord::new(
                    a.session_key,
                    AgentId::new(a.agent_id),
                    kind,
                    t.clone(),
                    a.now_ms,
                ))?,
                None => {
                    if self.get_session(a.session_key)?.is_none() {
                        let t = DeliveryTarget {
                            channel: channel.clone(),
                            account: account.clone(),
                            to: a.session_key.to_string(),
                            thread_id: None,
                            reply_to_id: None,
                        };
                        self.upsert_session(&SessionRecord::new(
                            a.session_key,
                            AgentId::new(a.agent_id),
                            kind,
                            t,
                            a.now_ms,
                        ))?;
                    }
                }
            }
            let user_seq = self.append_transcript(a.session_key, Role::User, a.text, Some(a.run_id), a.now_ms)?;
            self.conn
                .prepare_cached(
                    "INSERT INTO inbound (channel, account, message_id, session_key, received_at, \
                        agent_id, run_id, text, target, user_seq) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
                )?
                .execute(params![
                    channel.as_str(),
                    account.as_str(),
                    a.message_id,
                    a.session_key,
                    a.now_ms,
                    a.agent_id,
                    a.run_id,
                    a.text,
                    a.target.map(target_json),
                    user_seq
                ])?;
            Ok(Accepted { inbound_id: self.conn.last_insert_rowid(), user_seq })
        })();
        self.after_write(result).map(Some)
    }

    /// See [`Store::commit_outcome`].
    #[allow(clippy::too_many_arguments)]
    pub fn commit_outcome(
        &self,
        session_key: &str,
        inbound_ids: &[i64],
        run_id: &str,
        outcome: Outcome,
        reason: &str,
        reply_text: Option<&str>,
        rows: &[NewOutbox],
        now_ms: i64,
    ) -> Result<Vec<i64>> {
        let result = (|| {
            for id in inbound_ids {
                if !self.finish_inbound(*id, outcome, Some(reason), now_ms)? {
                    let had = crate::inbound::get_inbound(self.conn, *id)?.and_then(|r| r.outcome).unwrap_or(outcome);
                    return Err(StoreError::AlreadyFinished { inbound_id: *id, outcome: had });
                }
            }
            match (outcome, reply_text) {
                (Outcome::Replied, Some(text)) => {
                    self.append_transcript(session_key, Role::Assistant, text, Some(run_id), now_ms)?;
                }
                (Outcome::Failed, _) => {
                    self.append_transcript(session_key, Role::Error, reason, Some(run_id), now_ms)?;
                }
                _ => {}
            }
            let mut ids = Vec::with_capacity(rows.len());
            for row in rows {
                let mut row = row.clone();
                row.session_key = Some(session_key.to_string());
                row.inbound_id = inbound_ids.last().copied();
                row.run_id = Some(run_id.to_string());
                ids.push(self.enqueue_outbox(&row, now_ms)?.id);
            }
            Ok(ids)
        })();
        self.after_write(result)
    }
}

impl Store {
    /// Accept one message atomically (dedupe + session + user transcript entry + ledger row
    /// with the turn payload). `Ok(None)` for a duplicate within the dedupe window.
    pub fn accept_turn(&self, a: &AcceptInbound<'_>) -> Result<Option<Accepted>> {
        self.transaction(|tx| tx.accept_turn(a))
    }

    /// End a turn answering `inbound_ids`, atomically: the assistant transcript entry (for
    /// `replied` with text) or an `error` entry (for `failed`), the outbox rows (chunks of the
    /// reply, or a visible error notice), and each message's outcome. Returns the outbox ids.
    /// Errors: [`StoreError::AlreadyFinished`] when a message already has an outcome (nothing
    /// is written).
    #[allow(clippy::too_many_arguments)]
    pub fn commit_outcome(
        &self,
        session_key: &str,
        inbound_ids: &[i64],
        run_id: &str,
        outcome: Outcome,
        reason: &str,
        reply_text: Option<&str>,
        rows: Vec<NewOutbox>,
        now_ms: i64,
    ) -> Result<Vec<i64>> {
        self.transaction(|tx| {
            tx.commit_outcome(session_key, inbound_ids, run_id, outcome, reason, reply_text, &rows, now_ms)
        })
    }

    /// Accepted messages without an outcome, oldest first (resume them at start-up).
    pub fn unfinished_turns(&self) -> Result<Vec<PendingTurn>> {
        self.read(|c| {
            let mut stmt = c.prepare_cached(
                "SELECT id, session_key, agent_id, run_id, text, target, user_seq FROM inbound \
                 WHERE outcome IS NULL AND run_id IS NOT NULL ORDER BY id",
            )?;
            let rows = stmt.query_map([], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, Option<String>>(1)?,
                    r.get::<_, Option<String>>(2)?,
                    r.get::<_, String>(3)?,
                    r.get::<_, Option<String>>(4)?,
                    r.get::<_, Option<String>>(5)?,
                    r.get::<_, Option<i64>>(6)?,
                ))
            })?;
            let mut out = Vec::new();
            for row in rows {
                let (inbound_id, key, agent, run_id, text, target, seq) = row?;
                let target = match target {
                    Some(j) => Some(serde_json::from_str::<DeliveryTarget>(&j).map_err(|e| StoreError::BadData {
                        detail: format!("inbound {inbound_id}: bad target JSON: {e}"),
                    })?),
                    None => None,
                };
                out.push(PendingTurn {
                    inbound_id,
                    session_key: key.unwrap_or_default(),
                    agent_id: agent.unwrap_or_else(|| AgentId::DEFAULT.to_string()),
                    run_id,
                    text: text.unwrap_or_default(),
                    target,
                    user_seq: seq.unwrap_or(i64::MAX),
                });
            }
            Ok(out)
        })
    }

    /// The ledger's record of a message id (for idempotent retries after a restart).
    pub fn inbound_outcome(&self, channel: &str, account: &str, message_id: &str) -> Result<Option<InboundOutcome>> {
        self.read(|c| {
            Ok(c.prepare_cached(
                "SELECT outcome, reason, received_at, finished_at FROM inbound \
                 WHERE channel = ?1 AND account = ?2 AND message_id = ?3 ORDER BY id DESC LIMIT 1",
            )?
            .query_row(params![channel, account, message_id], |r| {
                Ok(InboundOutcome {
                    outcome: r.get(0)?,
                    reason: r.get(1)?,
                    received_at: r.get(2)?,
                    finished_at: r.get(3)?,
                })
            })
            .optional()?)
        })
    }

    /// Retry a `failed` or `unknown` delivery by queueing a copy at the end of its target's
    /// lane (the original row keeps its history). Returns the new row id, or `None` when the
    /// row does not exist or is in another state. Idempotent: retrying the same row again
    /// returns the same copy.
    pub fn requeue_outbox(&self, id: i64, now_ms: i64) -> Result<Option<i64>> {
        self.transaction(|tx| {
            let Some(row) = tx.get_outbox(id)? else { return Ok(None) };
            if !matches!(row.status, OutboxStatus::Failed | OutboxStatus::Unknown) {
                return Ok(None);
            }
            let mut copy = NewOutbox::new(row.target.clone(), row.text.clone());
            copy.idempotency_key =
                Some(format!("{}:retry-of:{id}", row.idempotency_key.as_deref().unwrap_or("outbox")));
            copy.session_key = row.session_key.clone();
            copy.inbound_id = row.inbound_id;
            copy.run_id = row.run_id.clone();
            Ok(Some(tx.enqueue_outbox(&copy, now_ms)?.id))
        })
    }
}
