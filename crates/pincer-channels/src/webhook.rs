//! Outbound webhook channel (`channels.webhook`, a pincer extension with no OpenClaw
//! equivalent): each reply is `POST`ed as JSON to the account's `url`.
//!
//! Request body: `{"id": <outbox id>, "idempotencyKey", "channel", "accountId", "to",
//! "threadId", "replyToId", "text"}` with headers `Idempotency-Key: <key>`,
//! `Content-Type: application/json` and the configured `headers`. A 2xx response delivers the
//! row; a JSON body with a string `messageId` (or `id`) becomes the platform message id.
//! 408/429/5xx and transport errors are retryable (`Retry-After` in seconds is honoured); any
//! other status is fatal.

use crate::outbound::{BoxFuture, ChannelSender, OutboundMessage, SendError, SendReceipt};
use std::collections::BTreeMap;
use std::time::Duration;

/// A webhook account, built from `channels.webhook[.accounts.<id>]`.
#[derive(Clone, Debug)]
pub struct WebhookSender {
    client: reqwest::Client,
    url: String,
    headers: BTreeMap<String, String>,
    timeout: Duration,
    text_chunk_limit: usize,
}

impl WebhookSender {
    /// Build a sender. `timeout` bounds each request; `text_chunk_limit` is in chars.
    pub fn new(
        client: reqwest::Client,
        url: String,
        headers: BTreeMap<String, String>,
        timeout: Duration,
        text_chunk_limit: usize,
    ) -> Self {
        WebhookSender { client, url, headers, timeout, text_chunk_limit }
    }

    async fn post(&self, msg: &OutboundMessage) -> Result<SendReceipt, SendError> {
        let body = serde_json::json!({
            "id": msg.outbox_id,
            "idempotencyKey": msg.idempotency_key,
            "channel": msg.target.channel.as_str(),
            "accountId": msg.target.account.as_str(),
            "to": msg.target.to,
            "threadId": msg.target.thread_id,
            "replyToId": msg.target.reply_to_id,
            "text": msg.text,
        });
        let mut req = self
            .client
            .post(&self.url)
            .timeout(self.timeout)
            .header("Idempotency-Key", &msg.idempotency_key)
            .json(&body);
        for (k, v) in &self.headers {
            req = req.header(k, v);
        }
        let resp = req.send().await.map_err(|e| SendError::Retryable {
            message: format!("webhook request failed: {e}"),
            retry_after_ms: None,
        })?;
        let status = resp.status();
        let retry_after_ms = resp
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(|s| s.saturating_mul(1000));
        let text = resp.text().await.unwrap_or_default();
        if status.is_success() {
            let id = serde_json::from_str::<serde_json::Value>(&text).ok().and_then(|v| {
                v.get("messageId").or_else(|| v.get("id")).and_then(|x| match x {
                    serde_json::Value::String(s) => Some(s.clone()),
                    serde_json::Value::Number(n) => Some(n.to_string()),
                    _ => None,
                })
            });
            return Ok(SendReceipt { platform_message_id: id });
        }
        let snippet: String = text.chars().take(200).collect();
        let message = format!("webhook answered HTTP {}: {}", status.as_u16(), snippet);
        if status.as_u16() == 408 || status.as_u16() == 429 || status.is_server_error() {
            Err(SendError::Retryable { message, retry_after_ms })
        } else {
            Err(SendError::Fatal { message })
        }
    }
}

impl ChannelSender for WebhookSender {
    fn send<'a>(&'a self, msg: &'a OutboundMessage) -> BoxFuture<'a, Result<SendReceipt, SendError>> {
        Box::pin(self.post(msg))
    }

    fn text_chunk_limit(&self) -> usize {
        self.text_chunk_limit
    }
}
