//! Run commits: the end of one agent run written in one transaction.
//!
//! A [`RunCommit`] appends the run's transcript entries, inserts its outbox rows and records
//! the inbound message's terminal outcome together, so a crash keeps all of it or none of it:
//! there is never a reply in the outbox for a message recorded as failed, nor a message
//! recorded as replied whose reply is not in the outbox. [`Store::commit_batch`] applies many
//! commits in one transaction (group commit) while keeping each one all-or-nothing.

use crate::error::{Result, StoreError};
use crate::inbound::Outcome;
use crate::outbox::{Enqueued, NewOutbox};
use crate::session::{NewTranscriptEntry, Role};
use crate::store::{Store, Tx};

/// Everything one finished agent run writes.
#[derive(Clone, Debug, PartialEq)]
pub struct RunCommit {
    /// The session the run belongs to; the session row must exist.
    pub session_key: String,
    /// The inbound ledger row this run answers, if the run was triggered by one.
    pub inbound_id: Option<i64>,
    /// The agent run id, stored on transcript and outbox rows.
    pub run_id: Option<String>,
    /// Terminal outcome recorded for `inbound_id`.
    pub outcome: Outcome,
    /// Reason stored with the outcome (required in spirit for `silent` and `failed`).
    pub reason: Option<String>,
    /// Transcript entries to append, in order.
    pub transcript: Vec<NewTranscriptEntry>,
    /// Outbox rows to enqueue, in delivery order. Their `session_key`, `inbound_id` and
    /// `run_id` are overwritten with this commit's.
    pub outbox: Vec<NewOutbox>,
}

impl RunCommit {
    /// A reply: appends `text` as an `assistant` entry, enqueues `outbox`, outcome `replied`.
    pub fn reply(
        session_key: impl Into<String>,
        inbound_id: Option<i64>,
        run_id: Option<&str>,
        text: impl Into<String>,
        outbox: Vec<NewOutbox>,
    ) -> Self {
        RunCommit {
            session_key: session_key.into(),
            inbound_id,
            run_id: run_id.map(str::to_string),
            outcome: Outcome::Replied,
            reason: None,
            transcript: vec![NewTranscriptEntry::new(Role::Assistant, text)],
            outbox,
        }
    }

    /// A deliberate non-reply: no transcript entry, no outbox row, outcome `silent`.
    pub fn silent(
        session_key: impl Into<String>,
        inbound_id: Option<i64>,
        run_id: Option<&str>,
        reason: impl Into<String>,
    ) -> Self {
        RunCommit {
            session_key: session_key.into(),
            inbound_id,
            run_id: run_id.map(str::to_string),
            outcome: Outcome::Silent,
            reason: Some(reason.into()),
            transcript: Vec::new(),
            outbox: Vec::new(),
        }
    }

    /// A failed run: appends `reason` as an `error` entry (kept out of the next run's
    /// history), enqueues `outbox` (e.g. an error notice to the user; may be empty), outcome
    /// `failed` with `reason`.
    pub fn failed(
        session_key: impl Into<String>,
        inbound_id: Option<i64>,
        run_id: Option<&str>,
        reason: impl Into<String>,
        outbox: Vec<NewOutbox>,
    ) -> Self {
        let reason = reason.into();
        RunCommit {
            session_key: session_key.into(),
            inbound_id,
            run_id: run_id.map(str::to_string),
            outcome: Outcome::Failed,
            transcript: vec![NewTranscriptEntry::new(Role::Error, reason.clone())],
            reason: Some(reason),
            outbox,
        }
    }
}

/// What a successful [`RunCommit`] wrote.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RunCommitted {
    /// Seq of each appended transcript entry, in order.
    pub transcript_seqs: Vec<i64>,
    /// Each outbox row, in order (`created = false` for an idempotency-key hit).
    pub outbox: Vec<Enqueued>,
}

impl Tx<'_> {
    /// Apply one run commit, all or nothing. The checks run before the first write, so a
    /// refused commit has written nothing: [`StoreError::InvalidInput`] (an outbox row
    /// without a destination), [`StoreError::NotFound`] (unknown inbound id),
    /// [`StoreError::AlreadyFinished`] (the inbound message already has an outcome),
    /// [`StoreError::NoSuchSession`]. Also sets the session's `last_run_at`.
    pub fn commit_run(&self, commit: &RunCommit, now_ms: i64) -> Result<RunCommitted> {
        for row in &commit.outbox {
            crate::outbox::validate(row)?;
        }
        let key = commit.session_key.as_str();
        let run_id = commit.run_id.as_deref();
        // First write: the outcome, guarded by every remaining check.
        let mut wrote = false;
        if let Some(id) = commit.inbound_id {
            self.finish_inbound_for_run(id, key, commit.outcome, commit.reason.as_deref(), now_ms)?;
            wrote = true;
        }
        let seqs = self.alloc_seqs(key, commit.transcript.len(), now_ms, true);
        let first_seq = match seqs {
            Ok(Some(seq)) => seq,
            Ok(None) => {
                let e = StoreError::NoSuchSession { key: key.to_string() };
                return if wrote { self.after_write(Err(e)) } else { Err(e) };
            }
            Err(e) => return if wrote { self.after_write(Err(e)) } else { Err(e) },
        };
        self.after_write(self.write_run_rows(commit, run_id, first_seq, now_ms))
    }

    /// The rows of a run commit after its checks passed: transcript entries and outbox rows.
    fn write_run_rows(
        &self,
        commit: &RunCommit,
        run_id: Option<&str>,
        first_seq: i64,
        now_ms: i64,
    ) -> Result<RunCommitted> {
        let key = commit.session_key.as_str();
        let mut done = RunCommitted {
            transcript_seqs: Vec::with_capacity(commit.transcript.len()),
            outbox: Vec::with_capacity(commit.outbox.len()),
        };
        for (seq, entry) in (first_seq..).zip(&commit.transcript) {
            self.insert_transcript_row(key, seq, entry.role, &entry.text, run_id, entry.meta.as_ref(), now_ms)?;
            done.transcript_seqs.push(seq);
        }
        for row in &commit.outbox {
            let row = NewOutbox {
                session_key: Some(commit.session_key.clone()),
                inbound_id: commit.inbound_id,
                run_id: commit.run_id.clone(),
                ..row.clone()
            };
            done.outbox.push(self.enqueue_outbox(&row, now_ms)?);
        }
        Ok(done)
    }
}

impl Store {
    /// Apply one run commit in one transaction; see [`Tx::commit_run`].
    pub fn commit_run(&self, commit: &RunCommit, now_ms: i64) -> Result<RunCommitted> {
        self.transaction(|tx| tx.commit_run(commit, now_ms))
    }

    /// In ONE transaction: append `text` as the assistant's transcript entry, enqueue
    /// `outbox`, and record outcome `replied` for `inbound_id`. All or nothing; see
    /// [`RunCommit::reply`] and [`Tx::commit_run`].
    pub fn commit_reply(
        &self,
        session_key: &str,
        inbound_id: Option<i64>,
        run_id: Option<&str>,
        text: &str,
        outbox: Vec<NewOutbox>,
        now_ms: i64,
    ) -> Result<RunCommitted> {
        self.commit_run(&RunCommit::reply(session_key, inbound_id, run_id, text, outbox), now_ms)
    }

    /// In one transaction: record outcome `silent` with `reason` and the session's run time.
    /// See [`RunCommit::silent`].
    pub fn commit_silent(
        &self,
        session_key: &str,
        inbound_id: Option<i64>,
        run_id: Option<&str>,
        reason: &str,
        now_ms: i64,
    ) -> Result<RunCommitted> {
        self.commit_run(&RunCommit::silent(session_key, inbound_id, run_id, reason), now_ms)
    }

    /// In one transaction: append an `error` transcript entry, enqueue `outbox` (may be
    /// empty) and record outcome `failed` with `reason`. See [`RunCommit::failed`]. If this
    /// itself fails (say the session row is missing), record the failure with
    /// [`Store::finish_inbound`], which touches nothing else.
    pub fn commit_failed(
        &self,
        session_key: &str,
        inbound_id: Option<i64>,
        run_id: Option<&str>,
        reason: &str,
        outbox: Vec<NewOutbox>,
        now_ms: i64,
    ) -> Result<RunCommitted> {
        self.commit_run(&RunCommit::failed(session_key, inbound_id, run_id, reason, outbox), now_ms)
    }

    /// Group commit: apply every commit in one transaction (one WAL write, one `fsync` under
    /// [`Durability::Full`](crate::Durability::Full)). Each commit is still all-or-nothing:
    /// one that is refused (see [`Tx::commit_run`]) wrote nothing and its error is returned in
    /// its slot, the others are committed. The outer `Err` means nothing at all was committed
    /// (an SQLite-level failure such as disk full); the caller may retry the batch.
    pub fn commit_batch(&self, commits: &[RunCommit], now_ms: i64) -> Result<Vec<Result<RunCommitted, StoreError>>> {
        self.transaction(|tx| {
            let mut results = Vec::with_capacity(commits.len());
            for commit in commits {
                let result = tx.commit_run(commit, now_ms);
                // An SQLite-level failure is not about this commit's data and may have ended
                // the whole transaction: give up on the batch.
                match result {
                    Err(e @ (StoreError::Sqlite(_) | StoreError::Io { .. })) => return Err(e),
                    Err(e) if tx.is_aborted() => return Err(e),
                    _ => {}
                }
                results.push(result);
            }
            Ok(results)
        })
    }
}
