//! The `anthropic-messages` provider: Anthropic Messages (`POST {baseUrl}/v1/messages`) with
//! `stream: true`, as specified by the Anthropic API docs ("Messages", "Streaming Messages",
//! "Errors", "Versions").

use crate::error::{snippet, AgentError};
use crate::http::{execute, guarded, header_map, secret_header, timeout_of};
use crate::provider::{BoxFuture, Provider};
use crate::sse::{Decoded, SseEvent, StreamDecoder, TRUNCATED};
use crate::types::{Role, RunOutput, RunRequest, Usage};
use pincer_core::config::{ProviderApi, ProviderConfig, ANTHROPIC_DEFAULT_BASE_URL};
use reqwest::header::{HeaderMap, HeaderValue};
use serde_json::{json, Value};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// The `anthropic-version` header value sent (the current and only GA version).
pub const ANTHROPIC_VERSION: &str = "2023-06-01";

/// `max_tokens` sent when neither the request nor the model config sets one (the Messages
/// API requires the field).
pub const DEFAULT_MAX_TOKENS: u64 = 4096;

/// The endpoint for a `baseUrl`: `{baseUrl}/v1/messages`, or `{baseUrl}/messages` when the
/// `baseUrl` already ends in `/v1` (trailing slashes trimmed), so both spellings work.
pub fn messages_url(base_url: &str) -> String {
    let base = base_url.trim_end_matches('/');
    if base.ends_with("/v1") {
        format!("{base}/messages")
    } else {
        format!("{base}/v1/messages")
    }
}

/// The request body: `{model, max_tokens, system?, messages, stream: true}`. The Messages
/// API has no `system` role inside `messages`, so the system prompt and any `system`
/// messages are joined (blank line between) into the top-level `system` string.
pub fn request_body(req: &RunRequest) -> Value {
    let mut system: Vec<&str> = req.system_prompt.as_deref().filter(|s| !s.is_empty()).into_iter().collect();
    let mut messages = Vec::with_capacity(req.messages.len());
    for m in &req.messages {
        match m.role {
            Role::System => system.push(&m.content),
            Role::User | Role::Assistant => messages.push(json!({"role": m.role.as_str(), "content": m.content})),
        }
    }
    let mut body = json!({
        "model": req.model,
        "max_tokens": req.max_tokens.unwrap_or(DEFAULT_MAX_TOKENS),
        "messages": messages,
        "stream": true,
    });
    if !system.is_empty() {
        body["system"] = system.join("\n\n").into();
    }
    body
}

/// An `anthropic-messages` provider built from its config.
#[derive(Debug)]
pub struct AnthropicProvider {
    id: String,
    url: String,
    api_key: Option<HeaderValue>,
    headers: HeaderMap,
    http: reqwest::Client,
    timeout: Duration,
}

impl AnthropicProvider {
    /// Builds the provider `id` from `cfg` (default `baseUrl`: `https://api.anthropic.com`),
    /// sharing `http`.
    ///
    /// # Errors
    /// [`AgentError::Config`] for an invalid header name/value or API key.
    pub fn new(id: &str, cfg: &ProviderConfig, http: reqwest::Client) -> Result<Self, AgentError> {
        let base = cfg.base_url.as_deref().unwrap_or(ANTHROPIC_DEFAULT_BASE_URL);
        let api_key = match cfg.api_key.as_deref().filter(|k| !k.is_empty()) {
            Some(k) => Some(secret_header(id, k)?),
            None => None,
        };
        Ok(AnthropicProvider {
            id: id.to_string(),
            url: messages_url(base),
            api_key,
            headers: header_map(id, &cfg.headers)?,
            http,
            timeout: timeout_of(cfg.timeout_seconds),
        })
    }

    /// The endpoint this provider posts to.
    pub fn url(&self) -> &str {
        &self.url
    }
}

impl Provider for AnthropicProvider {
    fn id(&self) -> &str {
        &self.id
    }

    fn api(&self) -> ProviderApi {
        ProviderApi::AnthropicMessages
    }

    fn run(
        &self,
        req: RunRequest,
        deltas: mpsc::Sender<String>,
        cancel: CancellationToken,
    ) -> BoxFuture<'_, Result<RunOutput, AgentError>> {
        Box::pin(async move {
            let mut rb =
                self.http.post(&self.url).header("anthropic-version", ANTHROPIC_VERSION).json(&request_body(&req));
            if let Some(key) = &self.api_key {
                rb = rb.header("x-api-key", key.clone());
            }
            let rb = rb.headers(self.headers.clone());
            let d = guarded(&cancel, self.timeout, execute(rb, AnthropicDecoder::new(), &deltas)).await?;
            Ok(RunOutput {
                text: d.text,
                stop_reason: d.stop_reason,
                usage: d.usage,
                model: req.model,
                provider: self.id.clone(),
            })
        })
    }
}

/// The HTTP status Anthropic documents for an error `type` ("Errors" page): used for an
/// `error` event inside a 200 stream so that retryability follows the status
/// (`overloaded_error` → 529 and `rate_limit_error` → 429 are retryable). `None` for an
/// unknown type.
pub fn status_for_error_type(kind: &str) -> Option<u16> {
    Some(match kind {
        "invalid_request_error" => 400,
        "authentication_error" => 401,
        "billing_error" => 402,
        "permission_error" => 403,
        "not_found_error" => 404,
        "request_too_large" => 413,
        "rate_limit_error" => 429,
        "api_error" => 500,
        "timeout_error" => 504,
        "overloaded_error" => 529,
        _ => return None,
    })
}

/// The error of an `{"type": "error", "error": {"type", "message"}}` body or event.
pub fn error_from_body(v: &Value) -> AgentError {
    let err = &v["error"];
    let kind = err["type"].as_str().unwrap_or("");
    let message = err["message"].as_str().map(str::to_string).unwrap_or_else(|| err.to_string());
    let message = snippet(format!("{kind}: {message}").as_bytes(), 512);
    match status_for_error_type(kind) {
        Some(status) => AgentError::Http { status, body_snippet: message, retry_after_ms: None },
        None => AgentError::malformed(format!("error in a successful response: {message}")),
    }
}

/// Decodes the Messages streaming events: `message_start` (input usage),
/// `content_block_start`/`content_block_delta` (text of `text` blocks and `text_delta`
/// deltas; tool-use, thinking and signature deltas are skipped), `content_block_stop`,
/// `message_delta` (`delta.stop_reason`, cumulative `usage`), `message_stop` (terminal),
/// `ping`, and `error`. Unknown event types are ignored, as the docs ask of clients.
#[derive(Debug, Default)]
pub struct AnthropicDecoder {
    text: String,
    stop_reason: Option<String>,
    usage: Option<Usage>,
    done: bool,
}

impl AnthropicDecoder {
    /// A decoder at the start of a stream.
    pub fn new() -> Self {
        AnthropicDecoder::default()
    }

    fn merge_usage(&mut self, u: &Value) {
        let input = u["input_tokens"].as_u64();
        let output = u["output_tokens"].as_u64();
        if input.is_none() && output.is_none() {
            return;
        }
        let cur = self.usage.get_or_insert_with(Usage::default);
        if let Some(i) = input {
            cur.input_tokens = i;
        }
        if let Some(o) = output {
            cur.output_tokens = o;
        }
    }

    fn push(&mut self, text: Option<&str>) -> Option<String> {
        let t = text.filter(|t| !t.is_empty())?;
        self.text.push_str(t);
        Some(t.to_string())
    }
}

impl StreamDecoder for AnthropicDecoder {
    fn on_event(&mut self, ev: &SseEvent) -> Result<Option<String>, AgentError> {
        let data = ev.data.trim();
        if data.is_empty() {
            return Ok(None);
        }
        let v: Value = serde_json::from_str(data)
            .map_err(|e| AgentError::malformed(format!("invalid JSON in stream event: {e}")))?;
        if !v.is_object() {
            return Err(AgentError::malformed("stream event is not a JSON object"));
        }
        // The data's `type` is authoritative; the `event:` line repeats it.
        let kind = v["type"].as_str().or(ev.event.as_deref()).unwrap_or("");
        match kind {
            "message_start" => {
                self.merge_usage(&v["message"]["usage"]);
                Ok(None)
            }
            "content_block_start" => {
                let block = &v["content_block"];
                if block["type"] == "text" {
                    Ok(self.push(block["text"].as_str()))
                } else {
                    Ok(None)
                }
            }
            "content_block_delta" => {
                let delta = &v["delta"];
                if delta["type"] == "text_delta" {
                    Ok(self.push(delta["text"].as_str()))
                } else {
                    Ok(None)
                }
            }
            "message_delta" => {
                if let Some(r) = v["delta"]["stop_reason"].as_str() {
                    self.stop_reason = Some(r.to_string());
                }
                self.merge_usage(&v["usage"]);
                Ok(None)
            }
            "message_stop" => {
                self.done = true;
                Ok(None)
            }
            "error" => Err(error_from_body(&v)),
            _ => Ok(None),
        }
    }

    fn is_done(&self) -> bool {
        self.done
    }

    fn finish(self) -> Result<Decoded, AgentError> {
        if !self.done {
            return Err(AgentError::malformed(TRUNCATED));
        }
        Ok(Decoded { text: self.text, stop_reason: self.stop_reason, usage: self.usage })
    }

    /// A non-streaming `message` object: the concatenated `text` of its `text` content
    /// blocks, `stop_reason` and `usage`; or an `error` object.
    fn decode_json(body: &[u8]) -> Result<Decoded, AgentError> {
        let v: Value =
            serde_json::from_slice(body).map_err(|e| AgentError::malformed(format!("invalid JSON body: {e}")))?;
        if v["type"] == "error" || !v["error"].is_null() {
            return Err(error_from_body(&v));
        }
        let blocks = v["content"].as_array().ok_or_else(|| AgentError::malformed("message has no content array"))?;
        let mut d = AnthropicDecoder::new();
        for b in blocks.iter().filter(|b| b["type"] == "text") {
            d.push(b["text"].as_str());
        }
        d.merge_usage(&v["usage"]);
        Ok(Decoded { text: d.text, stop_reason: v["stop_reason"].as_str().map(str::to_string), usage: d.usage })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::ChatMessage;

    fn ev(name: &str, data: &str) -> SseEvent {
        SseEvent { event: Some(name.to_string()), data: data.to_string() }
    }

    #[test]
    fn url_does_not_double_v1() {
        assert_eq!(messages_url("https://api.anthropic.com"), "https://api.anthropic.com/v1/messages");
        assert_eq!(messages_url("http://h:1/v1/"), "http://h:1/v1/messages");
    }

    #[test]
    fn body_lifts_system_messages() {
        let req = RunRequest {
            model: "claude".into(),
            system_prompt: Some("sys".into()),
            messages: vec![ChatMessage::system("more"), ChatMessage::user("hi")],
            max_tokens: None,
        };
        assert_eq!(
            request_body(&req),
            json!({"model": "claude", "max_tokens": 4096, "stream": true,
                   "system": "sys\n\nmore", "messages": [{"role": "user", "content": "hi"}]})
        );
    }

    #[test]
    fn decodes_the_documented_sequence() {
        let mut d = AnthropicDecoder::new();
        let seq = [
            ev(
                "message_start",
                r#"{"type":"message_start","message":{"id":"msg_1","type":"message","role":"assistant","content":[],"model":"claude","stop_reason":null,"stop_sequence":null,"usage":{"input_tokens":25,"output_tokens":1}}}"#,
            ),
            ev(
                "content_block_start",
                r#"{"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}"#,
            ),
            ev("ping", r#"{"type": "ping"}"#),
            ev(
                "content_block_delta",
                r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Hello"}}"#,
            ),
            ev(
                "content_block_delta",
                r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"!"}}"#,
            ),
            ev("content_block_stop", r#"{"type":"content_block_stop","index":0}"#),
            ev(
                "message_delta",
                r#"{"type":"message_delta","delta":{"stop_reason":"end_turn","stop_sequence":null},"usage":{"output_tokens":15}}"#,
            ),
        ];
        let mut deltas = Vec::new();
        for e in &seq {
            deltas.extend(d.on_event(e).unwrap());
        }
        assert_eq!(deltas, ["Hello", "!"]);
        assert!(!d.is_done());
        d.on_event(&ev("message_stop", r#"{"type":"message_stop"}"#)).unwrap();
        assert!(d.is_done());
        let out = d.finish().unwrap();
        assert_eq!(out.text, "Hello!");
        assert_eq!(out.stop_reason.as_deref(), Some("end_turn"));
        assert_eq!(out.usage, Some(Usage { input_tokens: 25, output_tokens: 15 }));
    }

    #[test]
    fn errors_and_truncation() {
        let mut d = AnthropicDecoder::new();
        let e = d
            .on_event(&ev("error", r#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#))
            .unwrap_err();
        assert!(e.is_retryable(), "{e}");
        let e = d
            .on_event(&ev("error", r#"{"type":"error","error":{"type":"invalid_request_error","message":"bad"}}"#))
            .unwrap_err();
        assert!(!e.is_retryable());
        assert_eq!(AnthropicDecoder::new().finish(), Err(AgentError::malformed(TRUNCATED)));
    }
}
