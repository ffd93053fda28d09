//! One agent run: load the snapshot and history, call the model chain, stream deltas as
//! events, and commit exactly one terminal outcome in one store transaction (reply + outbox
//! rows, silent, or failed + a short visible error reply for chat channels).

use crate::events::EventScope;
use crate::gateway::{now_ms, Inner};
use crate::runs::RunStatus;
use crate::session::{ReplyTo, Turn};
use pincer_agent::{AgentError, ChatMessage, Role, RunEvent, RunRequest};
use pincer_store::{NewOutbox, Outcome};
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Default chunk limit when a channel has no sender (reply rows still get queued).
const DEFAULT_CHUNK_LIMIT: usize = 4000;

/// Execute a turn with the session's `history` (oldest first, without this turn's message).
/// Never panics on provider output; always records an outcome unless the gateway is shutting
/// down (then the inbound stays unfinished and is recovered at start). Returns the reply text
/// when the run replied, so the session actor can extend its history.
pub(crate) async fn execute(inner: Arc<Inner>, turn: Turn, history: Vec<ChatMessage>) -> Option<String> {
    let permit = tokio::select! {
        p = inner.run_permits.clone().acquire_owned() => p.ok(),
        _ = turn.cancel.cancelled() => None,
    };
    let Some(_permit) = permit else {
        if !inner.sup.is_shutting_down() {
            finish_cancelled(&inner, &turn, "aborted before start");
        }
        return None;
    };
    let snap = inner.snapshot.load_full();
    let cfg = &snap.config;
    let agent = &turn.agent_id;
    let started = now_ms();
    inner.update_run(&turn, |i| {
        i.status = RunStatus::Running;
        i.started_at = Some(started);
    });
    let mut seq = 0u64;
    let emit = inner.events.has_subscribers();
    if emit {
        inner.events.emit(
            "agent",
            json!({"runId": turn.run_id, "sessionKey": turn.session_key.as_str(), "seq": seq, "stream": "lifecycle",
                   "ts": started, "data": {"phase": "start", "startedAt": started}}),
            EventScope::Read,
        );
    }

    let mut messages = history;
    messages.push(ChatMessage { role: Role::User, content: turn.text.clone() });
    let req =
        RunRequest { model: String::new(), system_prompt: cfg.agent_system_prompt(agent), messages, max_tokens: None };
    let chain = cfg.agent_model_chain(agent);
    let budget = Duration::from_millis(cfg.agent_timeout_ms(agent));
    let (dtx, mut drx) = mpsc::channel::<RunEvent>(64);
    let _stop_typing = start_typing(&inner, &snap, &turn).drop_guard();
    let run = snap.runner.run(&chain, req, dtx, turn.cancel.clone(), budget);
    tokio::pin!(run);
    let mut streamed = String::new();
    let result = loop {
        tokio::select! {
            res = &mut run => break res,
            Some(ev) = drx.recv() => {
                if emit { on_event(&inner, &turn, &mut seq, &mut streamed, ev); }
            }
        }
    };
    while let Ok(ev) = drx.try_recv() {
        if emit {
            on_event(&inner, &turn, &mut seq, &mut streamed, ev);
        }
    }
    let now = now_ms();
    inner.counters.run_ms_total.add(now.saturating_sub(started).max(0) as u64);
    inner.counters.runs_timed.inc();
    match result {
        Ok(out) if pincer_agent::is_silent(&out.text) => {
            commit(&inner, &turn, Outcome::Silent, "NO_REPLY", None, Vec::new(), now).await;
            inner.counters.runs_silent.inc();
            finish(&inner, &turn, RunStatus::Silent, None, None, now, &mut seq, "silent");
        }
        Ok(out) => {
            let text = match &cfg.messages.response_prefix {
                Some(p) if !p.is_empty() => format!("{p} {}", out.text.trim()),
                _ => out.text.trim().to_string(),
            };
            let rows = outbox_rows(&snap, &turn, &text);
            let ok = commit(&inner, &turn, Outcome::Replied, "replied", Some(&text), rows, now).await;
            if ok {
                inner.counters.runs_ok.inc();
                finish(&inner, &turn, RunStatus::Ok, Some(text.clone()), None, now, &mut seq, "final");
                return Some(text);
            }
            finish(
                &inner,
                &turn,
                RunStatus::Error,
                None,
                Some("could not commit the reply".into()),
                now,
                &mut seq,
                "error",
            );
        }
        Err(AgentError::Cancelled) if inner.sup.is_shutting_down() => {
            // Leave the inbound unfinished: it is re-run after the restart.
            finish(
                &inner,
                &turn,
                RunStatus::Aborted,
                None,
                Some("gateway shutting down".into()),
                now,
                &mut seq,
                "aborted",
            );
        }
        Err(AgentError::Cancelled) => {
            commit(&inner, &turn, Outcome::Silent, "aborted", None, Vec::new(), now).await;
            finish(&inner, &turn, RunStatus::Aborted, None, Some("aborted".into()), now, &mut seq, "aborted");
        }
        Err(e) => {
            let timeout = matches!(e, AgentError::Timeout);
            let reason = if timeout {
                format!("agent timed out after {}s", budget.as_secs())
            } else {
                format!("agent failed: {e}")
            };
            tracing::warn!(session = %turn.session_key, run = %turn.run_id, reason = %reason, "run failed");
            let visible = if timeout {
                format!("⚠️ Sorry, I timed out after {}s and could not answer.", budget.as_secs())
            } else {
                "⚠️ Sorry, I could not answer: the model request failed. The operator can see the details in `pincer status`.".to_string()
            };
            let rows = outbox_rows(&snap, &turn, &visible);
            commit(&inner, &turn, Outcome::Failed, &reason, None, rows, now).await;
            inner.counters.runs_failed.inc();
            let status = if timeout { RunStatus::Timeout } else { RunStatus::Error };
            finish(&inner, &turn, status, None, Some(reason), now, &mut seq, "error");
        }
    }
    None
}

/// Forward a provider event: deltas become `agent`/`chat` events; a `Reset` (a retry or a
/// fallback after partial output) restarts the streamed preview.
fn on_event(inner: &Inner, turn: &Turn, seq: &mut u64, streamed: &mut String, ev: RunEvent) {
    match ev {
        RunEvent::Delta(d) => emit_delta(inner, turn, seq, streamed, &d),
        RunEvent::Reset => streamed.clear(),
    }
}

fn emit_delta(inner: &Inner, turn: &Turn, seq: &mut u64, streamed: &mut String, delta: &str) {
    *seq += 1;
    streamed.push_str(delta);
    let ts = now_ms();
    inner.events.emit(
        "agent",
        json!({"runId": turn.run_id, "sessionKey": turn.session_key.as_str(), "seq": *seq, "stream": "assistant",
               "ts": ts, "data": {"text": streamed, "delta": delta}}),
        EventScope::Read,
    );
    inner.events.emit(
        "chat",
        json!({"runId": turn.run_id, "sessionKey": turn.session_key.as_str(), "agentId": turn.agent_id.as_str(),
               "seq": *seq, "state": "delta", "deltaText": delta,
               "message": {"role": "assistant", "content": [{"type": "text", "text": streamed}], "timestamp": ts}}),
        EventScope::Read,
    );
}

/// How often the typing indicator is refreshed while a channel run is active (platforms show
/// it for about 5 s per call).
const TYPING_EVERY: Duration = Duration::from_secs(4);

/// Keep the channel's typing indicator alive while the run is active: one call at once, then
/// every [`TYPING_EVERY`], until the returned token is cancelled (when the run ends, however it
/// ends) or the gateway stops. Failures are logged at debug level and never affect the run.
fn start_typing(inner: &Arc<Inner>, snap: &crate::snapshot::Snapshot, turn: &Turn) -> CancellationToken {
    let stop = inner.sup.child_token();
    let ReplyTo::Channel(target) = &turn.reply_to else { return stop };
    let Some(sender) = snap.sender(target.channel.as_str(), target.account.as_str()).cloned() else { return stop };
    let (target, token) = (target.clone(), stop.clone());
    inner.sup.spawn("typing", async move {
        loop {
            if let Err(e) = sender.typing(&target).await {
                tracing::debug!(channel = %target.channel, error = %e, "typing indicator failed");
            }
            tokio::select! {
                _ = token.cancelled() => {
                    // Always cleared when the run ends, reply or not.
                    if let Err(e) = sender.typing_stop(&target).await {
                        tracing::debug!(channel = %target.channel, error = %e, "clearing the typing indicator failed");
                    }
                    return;
                }
                _ = tokio::time::sleep(TYPING_EVERY) => {}
            }
        }
    });
    stop
}

/// Build the outbox rows of a reply (chunked to the channel's limit). Web chat turns have none.
fn outbox_rows(snap: &crate::snapshot::Snapshot, turn: &Turn, text: &str) -> Vec<NewOutbox> {
    let ReplyTo::Channel(target) = &turn.reply_to else {
        return Vec::new();
    };
    let limit = snap
        .sender(target.channel.as_str(), target.account.as_str())
        .map_or(DEFAULT_CHUNK_LIMIT, |s| s.text_chunk_limit());
    // `replyToMode: first` references the inbound message from the first chunk only.
    let first_only = pincer_channels::catalog::reply_to_mode(&snap.config, &target.channel, &target.account)
        == pincer_core::config::ReplyToMode::First;
    pincer_core::chunk::chunk_text(text, limit)
        .into_iter()
        .enumerate()
        .map(|(i, chunk)| {
            let mut target = target.clone();
            if i > 0 && first_only {
                target.reply_to_id = None;
            }
            // No idempotency key: the rows commit in the same transaction as the outcome,
            // which can be recorded only once, so they cannot be created twice.
            NewOutbox::new(target, chunk)
        })
        .collect()
}

/// Commit the terminal outcome of every inbound this turn answers, in one transaction of the
/// group-commit writer. Returns false (after logging) when the commit failed.
async fn commit(
    inner: &Inner,
    turn: &Turn,
    outcome: Outcome,
    reason: &str,
    reply_text: Option<&str>,
    rows: Vec<NewOutbox>,
    now: i64,
) -> bool {
    let has_rows = !rows.is_empty();
    let (key, ids, run_id) = (turn.session_key.as_str().to_string(), turn.inbound_ids.clone(), turn.run_id.clone());
    let (reason_s, text) = (reason.to_string(), reply_text.map(str::to_string));
    let res = inner
        .writer
        .run(move |tx| tx.commit_outcome(&key, &ids, &run_id, outcome, &reason_s, text.as_deref(), &rows, now))
        .await;
    committed(inner, turn, res, has_rows)
}

/// Like [`commit`], directly on the store (for the rare synchronous paths: abort, drop).
fn commit_now(inner: &Inner, turn: &Turn, outcome: Outcome, reason: &str, now: i64) -> bool {
    let res = inner.store.commit_outcome(
        turn.session_key.as_str(),
        &turn.inbound_ids,
        &turn.run_id,
        outcome,
        reason,
        None,
        Vec::new(),
        now,
    );
    committed(inner, turn, res, false)
}

fn committed(inner: &Inner, turn: &Turn, res: Result<Vec<i64>, pincer_store::StoreError>, has_rows: bool) -> bool {
    match res {
        Ok(ids) => {
            for id in &ids {
                tracing::info!(outbox_id = id, session = %turn.session_key, run = %turn.run_id, "reply queued in outbox");
            }
            if has_rows {
                inner.delivery_wake.notify_one();
            }
            true
        }
        Err(e) => {
            tracing::error!(session = %turn.session_key, run = %turn.run_id, error = %e, "cannot commit run outcome");
            false
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn finish(
    inner: &Inner,
    turn: &Turn,
    status: RunStatus,
    text: Option<String>,
    error: Option<String>,
    now: i64,
    seq: &mut u64,
    state: &str,
) {
    inner.update_run(turn, |i| {
        i.status = status;
        i.text = text.clone();
        i.error = error.clone();
        i.ended_at = Some(now);
    });
    if inner.events.has_subscribers() {
        *seq += 1;
        let mut payload = json!({"runId": turn.run_id, "sessionKey": turn.session_key.as_str(),
            "agentId": turn.agent_id.as_str(), "seq": *seq, "state": state});
        if let Some(t) = &text {
            payload["stopReason"] = json!("stop");
            payload["message"] =
                json!({"role": "assistant", "content": [{"type": "text", "text": t}], "timestamp": now});
        }
        if let Some(e) = &error {
            payload["errorMessage"] = json!(e);
        }
        let phase = if status == RunStatus::Error || status == RunStatus::Timeout { "error" } else { "end" };
        inner.events.emit(
            "agent",
            json!({"runId": turn.run_id, "sessionKey": turn.session_key.as_str(), "seq": *seq, "stream": "lifecycle",
                   "ts": now, "data": {"phase": phase, "endedAt": now, "status": status}}),
            EventScope::Read,
        );
        inner.events.emit("chat", payload, EventScope::Read);
    }
}

/// Finish a turn that was aborted before or while running, by request.
pub(crate) fn finish_cancelled(inner: &Inner, turn: &Turn, reason: &str) {
    let now = now_ms();
    commit_now(inner, turn, Outcome::Silent, reason, now);
    let mut seq = 0;
    finish(inner, turn, RunStatus::Aborted, None, Some(reason.to_string()), now, &mut seq, "aborted");
}

/// Finish a turn dropped by the queue cap.
pub(crate) fn finish_dropped(inner: &Inner, turn: &Turn, reason: &str) {
    let now = now_ms();
    commit_now(inner, turn, Outcome::Failed, reason, now);
    let mut seq = 0;
    finish(inner, turn, RunStatus::Error, None, Some(reason.to_string()), now, &mut seq, "error");
}
