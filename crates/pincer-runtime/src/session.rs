//! Per-session actors: one task per session key runs its turns serially and applies the queue
//! mode (`followup`, `collect`, `interrupt`) while a run is active, with `cap` and drop-oldest.
//! Idle actors exit and are respawned on demand. A run that fails or times out always ends in
//! a recorded outcome, so a session can never stay wedged.

use crate::gateway::Inner;
use pincer_agent::{ChatMessage, Role};
use pincer_core::config::QueueMode;
use pincer_core::{DeliveryTarget, SessionKey};
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// How long an actor with nothing to do waits before exiting.
pub const IDLE_EXIT: Duration = Duration::from_secs(120);

/// Where the reply of a turn goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReplyTo {
    /// A chat channel account: the reply goes through the outbox.
    Channel(DeliveryTarget),
    /// The session itself (web chat, API, CLI): transcript + `chat` events only.
    Session,
}

/// One accepted message waiting for, or being handled by, a run.
#[derive(Clone, Debug)]
pub struct Turn {
    /// Run id (idempotency key for API turns).
    pub run_id: String,
    /// Session key.
    pub session_key: SessionKey,
    /// Agent id.
    pub agent_id: pincer_core::AgentId,
    /// The user's text.
    pub text: String,
    /// Inbound ledger ids this turn answers (several after a `collect` merge).
    pub inbound_ids: Vec<i64>,
    /// Transcript seq of the (last) user message; history is read up to it.
    pub user_seq: i64,
    /// Reply destination.
    pub reply_to: ReplyTo,
    /// Per-request queue mode override (`chat.send queueMode`).
    pub queue_mode: Option<QueueMode>,
    /// Cancelled to abort this turn (queued or running).
    pub cancel: CancellationToken,
    /// Run ids merged into this turn by `collect`; they finish with this turn's outcome.
    pub merged_runs: Vec<String>,
}

impl Turn {
    /// A turn for one accepted message (default queue mode, fresh cancel token).
    pub fn new(
        run_id: String,
        session_key: SessionKey,
        agent_id: pincer_core::AgentId,
        text: String,
        accepted: pincer_store::Accepted,
        reply_to: ReplyTo,
    ) -> Turn {
        Turn {
            run_id,
            session_key,
            agent_id,
            text,
            inbound_ids: vec![accepted.inbound_id],
            user_seq: accepted.user_seq,
            reply_to,
            queue_mode: None,
            cancel: CancellationToken::new(),
            merged_runs: Vec::new(),
        }
    }
}

/// Messages to a session actor.
pub enum SessionMsg {
    /// A new turn.
    Turn(Box<Turn>),
    /// Abort queued turns, then the active run.
    Abort,
    /// The transcript was reset: drop the cached history.
    Reset,
}

/// The session's recent history (user and assistant messages, oldest first), kept by the
/// actor so a run does not re-read the transcript. Loaded from the store on first use and
/// after a reset; updated as turns end.
#[derive(Default)]
struct History {
    msgs: std::collections::VecDeque<ChatMessage>,
    /// Max messages kept (`historyLimit` at load time); `None` = not loaded.
    cap: Option<usize>,
}

impl History {
    fn push(&mut self, m: ChatMessage) {
        if let Some(cap) = self.cap {
            self.msgs.push_back(m);
            while self.msgs.len() > cap {
                self.msgs.pop_front();
            }
        }
    }

    /// The history a run of `turn` sees, loading it if needed (entries before the turn's own
    /// user message).
    fn for_turn(&mut self, inner: &Inner, turn: &Turn, limit: usize) -> Vec<ChatMessage> {
        if self.cap.is_none_or(|c| c < limit) {
            let entries = inner.store.history_for_run(turn.session_key.as_str(), limit + 64).unwrap_or_else(|e| {
                tracing::error!(session = %turn.session_key, error = %e, "cannot read transcript; running without history");
                Vec::new()
            });
            self.msgs = entries
                .into_iter()
                .filter(|e| e.seq < turn.user_seq)
                .filter_map(|e| match e.role {
                    pincer_store::Role::User => Some(ChatMessage { role: Role::User, content: e.text }),
                    pincer_store::Role::Assistant => Some(ChatMessage { role: Role::Assistant, content: e.text }),
                    _ => None,
                })
                .collect();
            self.cap = Some(limit);
            while self.msgs.len() > limit {
                self.msgs.pop_front();
            }
        }
        let skip = self.msgs.len().saturating_sub(limit);
        self.msgs.iter().skip(skip).cloned().collect()
    }
}

/// Handle to a session actor.
#[derive(Clone)]
pub struct SessionHandle {
    pub(crate) tx: mpsc::UnboundedSender<SessionMsg>,
    pub(crate) id: u64,
}

struct Active {
    run_id: String,
    cancel: CancellationToken,
    /// Resolves to the reply text when the run replied.
    done: tokio::task::JoinHandle<Option<String>>,
}

/// The actor body.
pub(crate) async fn run_actor(
    inner: Arc<Inner>,
    key: SessionKey,
    actor_id: u64,
    mut rx: mpsc::UnboundedReceiver<SessionMsg>,
) {
    let shutdown = inner.sup.token();
    let mut queue: VecDeque<Box<Turn>> = VecDeque::new();
    let mut active: Option<Active> = None;
    let mut collect_pending = false;
    let mut history = History::default();
    loop {
        // An owned snapshot (not an arc-swap guard): it is held across the awaits below.
        let snap = inner.snapshot.load_full();
        let qcfg = &snap.config.messages.queue;
        if active.is_none() && !queue.is_empty() {
            let mode = queue
                .back()
                .and_then(|t| t.queue_mode)
                .unwrap_or_else(|| snap.config.queue_mode_for(channel_of(&queue)));
            if mode == QueueMode::Collect && collect_pending {
                // Quiet window: wait `debounceMs` without new messages, then merge.
                let quiet = Duration::from_millis(qcfg.debounce_ms);
                tokio::select! {
                    msg = rx.recv() => {
                        match msg {
                            Some(m) => { handle_msg(&inner, m, &mut queue, &mut active, &mut history, qcfg.cap as usize, &snap); continue; }
                            None => break,
                        }
                    }
                    _ = tokio::time::sleep(quiet) => {}
                    _ = shutdown.cancelled() => break,
                }
                // Turns aborted while they waited are finished, not merged into the batch.
                queue.retain(|t| {
                    let keep = !t.cancel.is_cancelled();
                    if !keep {
                        crate::run::finish_cancelled(&inner, t, "aborted before start");
                    }
                    keep
                });
                merge_queue(&mut queue);
                collect_pending = false;
                if queue.is_empty() {
                    continue;
                }
            }
            drop(snap);
            let Some(turn) = queue.pop_front() else { continue };
            if turn.cancel.is_cancelled() {
                crate::run::finish_cancelled(&inner, &turn, "aborted before start");
                continue;
            }
            let cancel = turn.cancel.clone();
            let run_id = turn.run_id.clone();
            let limit = inner.snapshot.load().config.agent_history_limit(&turn.agent_id) as usize;
            let past = history.for_turn(&inner, &turn, limit);
            history.push(ChatMessage { role: Role::User, content: turn.text.clone() });
            let done = inner.sup.spawn("session-run", crate::run::execute(inner.clone(), *turn, past));
            active = Some(Active { run_id, cancel, done });
            continue;
        }
        let idle = active.is_none() && queue.is_empty();
        tokio::select! {
            msg = rx.recv() => {
                match msg {
                    Some(m) => {
                        let was_active = active.is_some();
                        handle_msg(&inner, m, &mut queue, &mut active, &mut history, qcfg.cap as usize, &snap);
                        if was_active { collect_pending = true; }
                    }
                    None => break,
                }
            }
            reply = async { (&mut active.as_mut().expect("guarded").done).await }, if active.is_some() => {
                active = None;
                if let Ok(Some(text)) = reply {
                    history.push(ChatMessage { role: Role::Assistant, content: text });
                }
            }
            _ = tokio::time::sleep(IDLE_EXIT), if idle => {
                // Senders only send while holding the sessions lock, so retiring under that
                // lock with an empty mailbox means nothing can be lost, and a later message
                // spawns a fresh actor: never two actors for one session.
                if inner.retire_session(&key, actor_id, || rx.is_empty()) {
                    return;
                }
            }
            _ = shutdown.cancelled() => break,
        }
    }
    // Shutdown: cancel what runs; queued turns stay unfinished in the store and are recovered
    // at the next start.
    if let Some(a) = active.take() {
        a.cancel.cancel();
        let _ = a.done.await;
    }
    inner.remove_session_if(&key, actor_id);
    drop(queue);
}

fn channel_of(queue: &VecDeque<Box<Turn>>) -> &str {
    match queue.back().map(|t| &t.reply_to) {
        Some(ReplyTo::Channel(t)) => t.channel.as_str(),
        _ => "webchat",
    }
}

fn handle_msg(
    inner: &Arc<Inner>,
    msg: SessionMsg,
    queue: &mut VecDeque<Box<Turn>>,
    active: &mut Option<Active>,
    history: &mut History,
    cap: usize,
    snap: &crate::snapshot::Snapshot,
) {
    match msg {
        SessionMsg::Turn(turn) => {
            let mode = turn.queue_mode.unwrap_or_else(|| {
                let ch = match &turn.reply_to {
                    ReplyTo::Channel(t) => t.channel.as_str(),
                    ReplyTo::Session => "webchat",
                };
                snap.config.queue_mode_for(ch)
            });
            if let (Some(a), QueueMode::Interrupt) = (active.as_ref(), mode) {
                tracing::info!(session = %turn.session_key, run = %a.run_id, "interrupt: aborting active run");
                a.cancel.cancel();
                for old in queue.drain(..) {
                    crate::run::finish_cancelled(inner, &old, "superseded by a newer message (interrupt)");
                }
            }
            queue.push_back(turn);
            while queue.len() > cap.max(1) {
                if let Some(old) = queue.pop_front() {
                    tracing::warn!(session = %old.session_key, run = %old.run_id, reason = "queue-cap", "dropping oldest queued message");
                    crate::run::finish_dropped(inner, &old, &format!("dropped: queue cap {cap} reached"));
                }
            }
        }
        SessionMsg::Reset => *history = History::default(),
        SessionMsg::Abort => {
            for old in queue.drain(..) {
                crate::run::finish_cancelled(inner, &old, "aborted");
            }
            if let Some(a) = active.as_ref() {
                a.cancel.cancel();
            }
        }
    }
}

/// `collect`: merge every queued turn into one, answering all their inbound ids.
fn merge_queue(queue: &mut VecDeque<Box<Turn>>) {
    if queue.len() < 2 {
        return;
    }
    let mut turns: Vec<Box<Turn>> = queue.drain(..).collect();
    let Some(mut last) = turns.pop() else { return };
    let mut text = String::new();
    let mut ids = Vec::new();
    for t in &turns {
        text.push_str(&t.text);
        text.push_str("\n\n");
        ids.extend_from_slice(&t.inbound_ids);
        last.merged_runs.push(t.run_id.clone());
        last.merged_runs.extend(t.merged_runs.iter().cloned());
    }
    text.push_str(&last.text);
    ids.extend_from_slice(&last.inbound_ids);
    last.text = text;
    last.inbound_ids = ids;
    queue.push_back(last);
}
