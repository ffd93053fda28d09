//! The delivery worker: drains the durable outbox. Rows are claimed (marked `sending`) before
//! the platform call, strictly in order per target, sent through the channel account's
//! [`ChannelSender`](pincer_channels::ChannelSender), and marked `sent` with the platform
//! message id. Failures retry with jittered exponential backoff up to `outbox.maxAttempts`,
//! then become `failed`. At start, rows left `sending` by a crash are reconciled, never
//! blindly re-sent.

use crate::gateway::{now_ms, Inner};
use pincer_channels::{OutboundMessage, Reconciled, SendError};
use pincer_core::config::OutboxConfig;
use pincer_store::OutboxRow;
use rand::Rng;
use std::sync::Arc;
use std::time::Duration;

/// Max rows claimed per pass (and so max concurrent sends).
const CLAIM_BATCH: usize = 64;

fn message_of(row: &OutboxRow) -> OutboundMessage {
    OutboundMessage {
        outbox_id: row.id,
        idempotency_key: row.idempotency_key.clone().unwrap_or_else(|| format!("outbox-{}", row.id)),
        target: row.target.clone(),
        text: row.text.clone(),
    }
}

/// Delay before retry number `attempt` (1-based), in ms: `initial * 2^(attempt-1)` capped at
/// `max`, with ±20% jitter, and never below the platform's `retry_after_ms`.
pub fn backoff_ms(cfg: &OutboxConfig, attempt: u32, retry_after_ms: Option<u64>) -> u64 {
    let exp = cfg.initial_backoff_ms.saturating_mul(1u64 << attempt.saturating_sub(1).min(30));
    let base = exp.min(cfg.max_backoff_ms);
    let jitter = rand::thread_rng().gen_range(0.8..=1.2);
    let d = (base as f64 * jitter) as u64;
    d.max(retry_after_ms.unwrap_or(0))
}

/// Reconcile rows a crash left in `sending`. Runs once at start, before the worker.
pub(crate) async fn recover(inner: &Arc<Inner>) {
    let rows = match inner.store.recover_in_flight() {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(error = %e, "cannot read in-flight outbox rows");
            return;
        }
    };
    let snap = inner.snapshot.load_full();
    for row in rows {
        let msg = message_of(&row);
        let verdict = match snap.sender(row.target.channel.as_str(), row.target.account.as_str()) {
            Some(s) => s.reconcile(&msg).await,
            None => Reconciled::Unknown,
        };
        let what = format!("{verdict:?}");
        let res = match verdict {
            Reconciled::Sent(r) => inner.store.mark_sent(row.id, r.platform_message_id.as_deref(), now_ms()),
            Reconciled::NotSent => inner.store.mark_retry(row.id, "re-queued after restart (platform has no copy)", now_ms(), now_ms()),
            Reconciled::Unknown => inner.store.mark_unknown(
                row.id,
                "the gateway stopped during the send; the platform may or may not have the message, so it is not re-sent (retry with `pincer deliveries retry`)",
                now_ms(),
            ),
        };
        match res {
            Ok(_) => tracing::warn!(outbox_id = row.id, verdict = %what, "reconciled in-flight delivery after restart"),
            Err(e) => tracing::error!(outbox_id = row.id, error = %e, "cannot reconcile outbox row"),
        }
    }
}

/// The worker loop. Returns when the supervisor cancels.
pub(crate) async fn run(inner: Arc<Inner>) {
    let cancel = inner.sup.token();
    loop {
        if cancel.is_cancelled() {
            return;
        }
        let now = now_ms();
        let rows = match inner.writer.run(move |tx| tx.claim_due(now, CLAIM_BATCH)).await {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(error = %e, "outbox claim failed; retrying in 1s");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                    _ = cancel.cancelled() => return,
                }
            }
        };
        for row in rows {
            let inner2 = inner.clone();
            inner.sup.spawn("outbox-send", async move { send_one(inner2, row).await });
        }
        let wait = match inner.store.next_due_at() {
            Ok(Some(t)) => Duration::from_millis((t - now_ms()).clamp(0, 60_000) as u64),
            _ => Duration::from_secs(60),
        };
        tokio::select! {
            _ = inner.delivery_wake.notified() => {}
            _ = tokio::time::sleep(wait) => {}
            _ = cancel.cancelled() => return,
        }
    }
}

async fn send_one(inner: Arc<Inner>, row: OutboxRow) {
    let snap = inner.snapshot.load_full();
    let cfg = &snap.config.outbox;
    let msg = message_of(&row);
    let result = match snap.sender(row.target.channel.as_str(), row.target.account.as_str()) {
        Some(sender) => sender.send(&msg).await,
        None => Err(SendError::Retryable {
            message: format!(
                "channel {} account {} is not configured or not running",
                row.target.channel, row.target.account
            ),
            retry_after_ms: None,
        }),
    };
    let now = now_ms();
    // `attempts` counts claims, this one included.
    let attempt = row.attempts.max(1);
    let id = row.id;
    let outcome = match result {
        Ok(receipt) => {
            inner.counters.deliveries_sent.inc();
            tracing::info!(outbox_id = row.id, outcome = "sent", platform_id = ?receipt.platform_message_id, "delivered");
            let pid = receipt.platform_message_id;
            let target = row.target.clone();
            inner
                .writer
                .run(move |tx| {
                    tx.mark_sent(id, pid.as_deref(), now)?;
                    // The bot now takes part in this thread (implicit mention
                    // `threadParticipation`, remembered for 7 days).
                    match &target.thread_id {
                        Some(t) => tx.touch_thread(&target.channel, &target.account, &target.to, t, now),
                        None => Ok(()),
                    }
                })
                .await
        }
        Err(e) if e.is_retryable() && attempt < cfg.max_attempts => {
            let retry_after = match &e {
                SendError::Retryable { retry_after_ms, .. } => *retry_after_ms,
                _ => None,
            };
            let delay = backoff_ms(cfg, attempt, retry_after);
            tracing::warn!(outbox_id = row.id, outcome = "retry", attempt, delay_ms = delay, error = %e, "delivery failed; will retry");
            let err = e.to_string();
            inner.writer.run(move |tx| tx.mark_retry(id, &err, now + delay as i64, now)).await
        }
        Err(e) => {
            inner.counters.deliveries_failed.inc();
            tracing::error!(outbox_id = row.id, outcome = "failed", attempt, error = %e, "delivery failed for good");
            let err = e.to_string();
            inner.writer.run(move |tx| tx.mark_failed(id, &err, now)).await
        }
    };
    if let Err(e) = outcome {
        tracing::error!(outbox_id = row.id, error = %e, "cannot record delivery outcome");
    }
    inner.delivery_wake.notify_one();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_caps_and_honours_retry_after() {
        let cfg = OutboxConfig { max_attempts: 8, initial_backoff_ms: 1000, max_backoff_ms: 10_000 };
        for _ in 0..50 {
            let d1 = backoff_ms(&cfg, 1, None);
            assert!((800..=1200).contains(&d1), "{d1}");
            let d3 = backoff_ms(&cfg, 3, None);
            assert!((3200..=4800).contains(&d3), "{d3}");
            let d9 = backoff_ms(&cfg, 40, None);
            assert!(d9 <= 12_000, "{d9}");
            assert!(backoff_ms(&cfg, 1, Some(30_000)) >= 30_000);
        }
    }
}
