//! The run registry: every agent run by id (`runId`), for `agent.wait`, `chat.abort` and
//! idempotent retries of `agent`/`chat.send`. Bounded: finished runs beyond the newest
//! [`MAX_FINISHED`] are forgotten (their outcome stays in the store).

use serde::Serialize;
use std::collections::{HashMap, VecDeque};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// Finished runs kept in memory.
pub const MAX_FINISHED: usize = 2048;

/// Status of a run as reported by `agent.wait` and the `agent` final response.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RunStatus {
    /// Accepted, waiting in the session queue.
    Queued,
    /// The agent is running.
    Running,
    /// Finished with a visible reply.
    Ok,
    /// Finished deliberately silent (`NO_REPLY`, or dropped by design).
    Silent,
    /// Failed (provider error, malformed response, no delivery target ...).
    Error,
    /// Ran out of its time budget.
    Timeout,
    /// Aborted (`chat.abort`, interrupt queue mode, shutdown).
    Aborted,
}

impl RunStatus {
    /// True once the run can no longer change.
    pub fn is_terminal(self) -> bool {
        !matches!(self, RunStatus::Queued | RunStatus::Running)
    }

    /// The status word of `agent` / `agent.wait` responses (reference §2): `ok` (replied or
    /// deliberately silent), `timeout` (the run timed out, or is still going when the wait
    /// ended), or `error`.
    pub fn wire_status(self) -> &'static str {
        match self {
            RunStatus::Ok | RunStatus::Silent => "ok",
            RunStatus::Timeout | RunStatus::Queued | RunStatus::Running => "timeout",
            RunStatus::Error | RunStatus::Aborted => "error",
        }
    }
}

/// A snapshot of one run.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RunInfo {
    /// Run id (the client's idempotency key when it gave one).
    pub run_id: String,
    /// Session the run belongs to.
    pub session_key: String,
    /// Agent id.
    pub agent_id: String,
    /// Current status.
    pub status: RunStatus,
    /// Final reply text, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    /// Error text for `error`/`timeout`/`aborted`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Accept time, ms since the epoch.
    pub accepted_at: i64,
    /// Start time, ms since the epoch.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub started_at: Option<i64>,
    /// End time, ms since the epoch.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ended_at: Option<i64>,
}

struct Entry {
    tx: watch::Sender<RunInfo>,
    cancel: CancellationToken,
}

/// Registry of runs. Not shared across gateway generations.
#[derive(Default)]
pub struct RunRegistry {
    runs: HashMap<String, Entry>,
    finished: VecDeque<String>,
}

impl RunRegistry {
    /// Register a queued run. Returns `None` when the id is already known (idempotent retry).
    pub fn insert(&mut self, info: RunInfo, cancel: CancellationToken) -> Option<watch::Receiver<RunInfo>> {
        if self.runs.contains_key(&info.run_id) {
            return None;
        }
        let id = info.run_id.clone();
        let (tx, rx) = watch::channel(info);
        self.runs.insert(id, Entry { tx, cancel });
        Some(rx)
    }

    /// Watch a run.
    pub fn watch(&self, run_id: &str) -> Option<watch::Receiver<RunInfo>> {
        self.runs.get(run_id).map(|e| e.tx.subscribe())
    }

    /// Current info of a run.
    pub fn get(&self, run_id: &str) -> Option<RunInfo> {
        self.runs.get(run_id).map(|e| e.tx.borrow().clone())
    }

    /// Apply `f` to a run's info and notify waiters. Terminal runs are moved to the bounded
    /// finished list.
    pub fn update(&mut self, run_id: &str, f: impl FnOnce(&mut RunInfo)) {
        let Some(e) = self.runs.get(run_id) else { return };
        let mut terminal = false;
        e.tx.send_modify(|info| {
            if !info.status.is_terminal() {
                f(info);
                terminal = info.status.is_terminal();
            }
        });
        if terminal {
            self.finished.push_back(run_id.to_string());
            while self.finished.len() > MAX_FINISHED {
                if let Some(old) = self.finished.pop_front() {
                    self.runs.remove(&old);
                }
            }
        }
    }

    /// Cancel token of a run, if it is still known.
    pub fn cancel_token(&self, run_id: &str) -> Option<CancellationToken> {
        self.runs.get(run_id).map(|e| e.cancel.clone())
    }

    /// Ids of the non-terminal runs of a session.
    pub fn active_for_session(&self, session_key: &str) -> Vec<String> {
        self.runs
            .iter()
            .filter(|(_, e)| {
                let i = e.tx.borrow();
                i.session_key == session_key && !i.status.is_terminal()
            })
            .map(|(k, _)| k.clone())
            .collect()
    }

    /// Number of runs currently running or queued.
    pub fn active_count(&self) -> usize {
        self.runs.values().filter(|e| !e.tx.borrow().status.is_terminal()).count()
    }
}
