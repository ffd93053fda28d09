//! The `openai-completions` provider: OpenAI Chat Completions (`POST …/chat/completions`)
//! with `stream: true`, as specified by the OpenAI API reference ("Create chat completion"
//! and "The chat completion chunk object"). Works with every OpenAI-compatible server
//! (Ollama, vLLM, llama.cpp, LM Studio, OpenRouter, …).

use crate::error::{snippet, AgentError};
use crate::http::{execute, guarded, header_map, secret_header, timeout_of};
use crate::provider::{BoxFuture, Provider};
use crate::sse::{Decoded, SseEvent, StreamDecoder, TRUNCATED};
use crate::types::{RunOutput, RunRequest, Usage};
use pincer_core::config::{ProviderApi, ProviderConfig};
use reqwest::header::{HeaderMap, HeaderValue, AUTHORIZATION};
use serde_json::{json, Value};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Base URL used when a provider of this API sets no `baseUrl`.
pub const DEFAULT_BASE_URL: &str = "https://api.openai.com/v1";

/// The endpoint for a `baseUrl`: `{baseUrl}/chat/completions`, trailing slashes trimmed.
///
/// Nothing is inserted: as in OpenClaw, an OpenAI-compatible `baseUrl` already includes the
/// API version path (`http://127.0.0.1:11434/v1`, `https://api.openai.com/v1`). A `baseUrl`
/// without `/v1` is used as given, for servers that mount the API elsewhere.
pub fn completions_url(base_url: &str) -> String {
    format!("{}/chat/completions", base_url.trim_end_matches('/'))
}

/// The request body: `{model, messages, stream: true, max_tokens?}`. The system prompt
/// becomes a leading `{"role": "system"}` message. `stream_options.include_usage` is not
/// sent, because some compatible servers reject unknown fields; a usage chunk is still
/// read when the server sends one.
pub fn request_body(req: &RunRequest) -> Value {
    let mut messages = Vec::with_capacity(req.messages.len() + 1);
    if let Some(sp) = req.system_prompt.as_deref().filter(|s| !s.is_empty()) {
        messages.push(json!({"role": "system", "content": sp}));
    }
    for m in &req.messages {
        messages.push(json!({"role": m.role.as_str(), "content": m.content}));
    }
    let mut body = json!({"model": req.model, "messages": messages, "stream": true});
    if let Some(n) = req.max_tokens {
        body["max_tokens"] = n.into();
    }
    body
}

/// An `openai-completions` provider built from its config.
#[derive(Debug)]
pub struct OpenAiProvider {
    id: String,
    url: String,
    auth: Option<HeaderValue>,
    headers: HeaderMap,
    http: reqwest::Client,
    timeout: Duration,
}

impl OpenAiProvider {
    /// Builds the provider `id` from `cfg`, sharing `http`.
    ///
    /// # Errors
    /// [`AgentError::Config`] for an invalid header name/value or API key.
    pub fn new(id: &str, cfg: &ProviderConfig, http: reqwest::Client) -> Result<Self, AgentError> {
        let base = cfg.base_url.as_deref().unwrap_or(DEFAULT_BASE_URL);
        let auth = match cfg.api_key.as_deref().filter(|k| !k.is_empty()) {
            Some(k) => Some(secret_header(id, &format!("Bearer {k}"))?),
            None => None,
        };
        Ok(OpenAiProvider {
            id: id.to_string(),
            url: completions_url(base),
            auth,
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

impl Provider for OpenAiProvider {
    fn id(&self) -> &str {
        &self.id
    }

    fn api(&self) -> ProviderApi {
        ProviderApi::OpenaiCompletions
    }

    fn run(
        &self,
        req: RunRequest,
        deltas: mpsc::Sender<String>,
        cancel: CancellationToken,
    ) -> BoxFuture<'_, Result<RunOutput, AgentError>> {
        Box::pin(async move {
            let mut rb = self.http.post(&self.url).json(&request_body(&req));
            if let Some(auth) = &self.auth {
                rb = rb.header(AUTHORIZATION, auth.clone());
            }
            let rb = rb.headers(self.headers.clone());
            let d = guarded(&cancel, self.timeout, execute(rb, OpenAiDecoder::new(), &deltas)).await?;
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

/// Decodes Chat Completions streaming chunks (`object: "chat.completion.chunk"`): appends
/// `choices[0].delta.content`, keeps `choices[0].finish_reason` and a `usage` object
/// (`prompt_tokens`, `completion_tokens`), ends at `data: [DONE]`. Only the choice with
/// `index` 0 is read. A chunk with an `error` member ends the stream with that error.
#[derive(Debug, Default)]
pub struct OpenAiDecoder {
    text: String,
    finish_reason: Option<String>,
    usage: Option<Usage>,
    done: bool,
}

impl OpenAiDecoder {
    /// A decoder at the start of a stream.
    pub fn new() -> Self {
        OpenAiDecoder::default()
    }
}

impl StreamDecoder for OpenAiDecoder {
    fn on_event(&mut self, ev: &SseEvent) -> Result<Option<String>, AgentError> {
        let data = ev.data.trim();
        if data == "[DONE]" {
            self.done = true;
            return Ok(None);
        }
        if data.is_empty() {
            return Ok(None);
        }
        let v: Value = serde_json::from_str(data)
            .map_err(|e| AgentError::malformed(format!("invalid JSON in stream chunk: {e}")))?;
        if !v.is_object() {
            return Err(AgentError::malformed("stream chunk is not a JSON object"));
        }
        if has_error(&v) || ev.event.as_deref() == Some("error") {
            return Err(error_from_body(&v));
        }
        if let Some(u) = usage_of(&v["usage"]) {
            self.usage = Some(u);
        }
        let Some(choice) = first_choice(&v) else {
            return Ok(None);
        };
        if let Some(r) = choice["finish_reason"].as_str() {
            self.finish_reason = Some(r.to_string());
        }
        // Some servers put the whole message under `message` even when streaming.
        let content = match &choice["delta"] {
            Value::Object(_) => content_text(&choice["delta"]["content"]),
            _ => content_text(&choice["message"]["content"]),
        };
        match content {
            Some(t) if !t.is_empty() => {
                self.text.push_str(&t);
                Ok(Some(t))
            }
            _ => Ok(None),
        }
    }

    fn is_done(&self) -> bool {
        self.done
    }

    fn finish(self) -> Result<Decoded, AgentError> {
        if !self.done && self.finish_reason.is_none() {
            return Err(AgentError::malformed(TRUNCATED));
        }
        Ok(Decoded { text: self.text, stop_reason: self.finish_reason, usage: self.usage })
    }

    /// A `chat.completion` object: `choices[0].message.content`, `finish_reason`, `usage`.
    fn decode_json(body: &[u8]) -> Result<Decoded, AgentError> {
        let v: Value =
            serde_json::from_slice(body).map_err(|e| AgentError::malformed(format!("invalid JSON body: {e}")))?;
        if has_error(&v) {
            return Err(error_from_body(&v));
        }
        let choice = first_choice(&v).ok_or_else(|| AgentError::malformed("completion has no choices[0]"))?;
        Ok(Decoded {
            text: content_text(&choice["message"]["content"]).unwrap_or_default(),
            stop_reason: choice["finish_reason"].as_str().map(str::to_string),
            usage: usage_of(&v["usage"]),
        })
    }
}

fn has_error(v: &Value) -> bool {
    !v["error"].is_null()
}

fn first_choice(v: &Value) -> Option<&Value> {
    let choices = v["choices"].as_array()?;
    choices.iter().find(|c| c["index"].as_u64().unwrap_or(0) == 0).filter(|c| c.is_object())
}

/// `content` as a string, or the concatenated `text` of an array of content parts.
fn content_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Array(parts) => Some(parts.iter().filter_map(|p| p["text"].as_str()).collect()),
        _ => None,
    }
}

fn usage_of(v: &Value) -> Option<Usage> {
    let input = v["prompt_tokens"].as_u64();
    let output = v["completion_tokens"].as_u64();
    if input.is_none() && output.is_none() {
        return None;
    }
    Some(Usage { input_tokens: input.unwrap_or(0), output_tokens: output.unwrap_or(0) })
}

/// The error of a body `{"error": {"message", "type", "code"}}` inside a 2xx response. A
/// numeric (or numeric string) `code`/`status` in 400..=599, as OpenRouter and some proxies
/// send, becomes [`AgentError::Http`] with that status (so 429/5xx stay retryable);
/// anything else is [`AgentError::Malformed`] carrying the message.
pub fn error_from_body(v: &Value) -> AgentError {
    let err = &v["error"];
    let message = err["message"]
        .as_str()
        .map(str::to_string)
        .or_else(|| err.as_str().map(str::to_string))
        .unwrap_or_else(|| err.to_string());
    let as_status =
        |c: &Value| c.as_u64().or_else(|| c.as_str().and_then(|s| s.parse().ok())).filter(|s| (400..=599).contains(s));
    match as_status(&err["code"]).or_else(|| as_status(&err["status"])) {
        Some(status) => AgentError::Http {
            status: status as u16,
            body_snippet: snippet(message.as_bytes(), 512),
            retry_after_ms: None,
        },
        None => AgentError::malformed(format!("error in a successful response: {}", snippet(message.as_bytes(), 512))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::ChatMessage;

    fn data(s: &str) -> SseEvent {
        SseEvent { event: None, data: s.to_string() }
    }

    #[test]
    fn url_is_base_plus_path() {
        assert_eq!(completions_url("http://127.0.0.1:11434/v1/"), "http://127.0.0.1:11434/v1/chat/completions");
        assert_eq!(completions_url("http://h:1"), "http://h:1/chat/completions");
    }

    #[test]
    fn body_shape() {
        let req = RunRequest {
            model: "m".into(),
            system_prompt: Some("be brief".into()),
            messages: vec![ChatMessage::user("hi")],
            max_tokens: Some(7),
        };
        assert_eq!(
            request_body(&req),
            json!({"model": "m", "stream": true, "max_tokens": 7, "messages": [
                {"role": "system", "content": "be brief"},
                {"role": "user", "content": "hi"}]})
        );
    }

    #[test]
    fn decodes_a_stream() {
        let mut d = OpenAiDecoder::new();
        let chunks = [
            r#"{"object":"chat.completion.chunk","choices":[{"index":0,"delta":{"role":"assistant","content":""},"finish_reason":null}]}"#,
            r#"{"object":"chat.completion.chunk","choices":[{"index":0,"delta":{"content":"Hel"},"finish_reason":null}]}"#,
            r#"{"object":"chat.completion.chunk","choices":[{"index":0,"delta":{"content":"lo"},"finish_reason":null}]}"#,
            r#"{"object":"chat.completion.chunk","choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}"#,
            r#"{"object":"chat.completion.chunk","choices":[],"usage":{"prompt_tokens":3,"completion_tokens":2}}"#,
        ];
        let mut got = Vec::new();
        for c in chunks {
            got.extend(d.on_event(&data(c)).unwrap());
        }
        assert_eq!(got, ["Hel", "lo"]);
        assert!(!d.is_done());
        d.on_event(&data("[DONE]")).unwrap();
        assert!(d.is_done());
        let out = d.finish().unwrap();
        assert_eq!(out.text, "Hello");
        assert_eq!(out.stop_reason.as_deref(), Some("stop"));
        assert_eq!(out.usage, Some(Usage { input_tokens: 3, output_tokens: 2 }));
    }

    #[test]
    fn truncation_and_errors() {
        let mut d = OpenAiDecoder::new();
        d.on_event(&data(r#"{"choices":[{"index":0,"delta":{"content":"x"}}]}"#)).unwrap();
        assert_eq!(d.finish(), Err(AgentError::malformed(TRUNCATED)));

        let mut d = OpenAiDecoder::new();
        let e = d.on_event(&data(r#"{"error":{"message":"boom","type":"server_error"}}"#)).unwrap_err();
        assert!(matches!(&e, AgentError::Malformed { detail } if detail.contains("boom")));
        let e = d.on_event(&data(r#"{"error":{"message":"slow down","code":429}}"#)).unwrap_err();
        assert!(e.is_retryable());
        assert!(matches!(d.on_event(&data("{nope")), Err(AgentError::Malformed { .. })));
        assert!(matches!(d.on_event(&data("[1,2]")), Err(AgentError::Malformed { .. })));
    }

    #[test]
    fn decodes_json() {
        let body = br#"{"object":"chat.completion","choices":[{"index":0,"message":{"role":"assistant","content":"hi"},"finish_reason":"stop"}],"usage":{"prompt_tokens":1,"completion_tokens":1,"total_tokens":2}}"#;
        let d = OpenAiDecoder::decode_json(body).unwrap();
        assert_eq!(d.text, "hi");
        assert!(OpenAiDecoder::decode_json(br#"{"choices":[]}"#).is_err());
        assert!(OpenAiDecoder::decode_json(br#"{"error":{"message":"x"}}"#).is_err());
    }
}
