//! The HTTP call shared by the OpenAI and Anthropic providers: send, map a non-2xx status to
//! [`AgentError::Http`], then decode an SSE stream (or a whole JSON body) with the API's
//! [`StreamDecoder`], forwarding deltas as they arrive.

use crate::error::{retry_after_from_headers, snippet, AgentError};
use crate::sse::{Decoded, SseEvent, SseParser, StreamDecoder};
use futures_util::StreamExt;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue, CONTENT_TYPE};
use std::collections::BTreeMap;
use std::future::Future;
use std::time::{Duration, SystemTime};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Default per-request timeout when a provider sets no `timeoutSeconds` (the config's
/// documented default).
pub(crate) const DEFAULT_TIMEOUT: Duration = Duration::from_secs(120);
/// How much of an error body is read (the rest is dropped with the connection).
const ERROR_BODY_CAP: usize = 64 * 1024;
/// Largest non-streaming response body accepted.
const JSON_BODY_CAP: usize = 32 * 1024 * 1024;
/// Characters of an error body kept in [`AgentError::Http::body_snippet`].
const SNIPPET_CHARS: usize = 512;

/// Runs `fut` bounded by `timeout` and `cancel`. Dropping `fut` on either closes its HTTP
/// connection (or kills its child), which is what makes cancellation prompt.
pub(crate) async fn guarded<T>(
    cancel: &CancellationToken,
    timeout: Duration,
    fut: impl Future<Output = Result<T, AgentError>>,
) -> Result<T, AgentError> {
    tokio::select! {
        biased;
        _ = cancel.cancelled() => Err(AgentError::Cancelled),
        r = tokio::time::timeout(timeout, fut) => r.unwrap_or(Err(AgentError::Timeout)),
    }
}

/// `timeoutSeconds` as a duration (`None` or 0: [`DEFAULT_TIMEOUT`]).
pub(crate) fn timeout_of(secs: Option<u64>) -> Duration {
    match secs {
        Some(s) if s > 0 => Duration::from_secs(s),
        _ => DEFAULT_TIMEOUT,
    }
}

/// The configured extra `headers`, validated.
pub(crate) fn header_map(provider: &str, headers: &BTreeMap<String, String>) -> Result<HeaderMap, AgentError> {
    let mut map = HeaderMap::new();
    for (k, v) in headers {
        let name = HeaderName::from_bytes(k.as_bytes())
            .map_err(|_| AgentError::config(format!("provider {provider}: invalid header name {k:?}")))?;
        let value = HeaderValue::from_str(v)
            .map_err(|_| AgentError::config(format!("provider {provider}: invalid value for header {k:?}")))?;
        map.insert(name, value);
    }
    Ok(map)
}

/// A header value from config (an API key), validated.
pub(crate) fn secret_header(provider: &str, value: &str) -> Result<HeaderValue, AgentError> {
    let mut v = HeaderValue::from_str(value)
        .map_err(|_| AgentError::config(format!("provider {provider}: apiKey is not a valid header value")))?;
    v.set_sensitive(true);
    Ok(v)
}

/// Sends the request and decodes the response. Deltas go to `deltas` in order; a closed
/// receiver is ignored (the run still completes and returns the whole text).
pub(crate) async fn execute<D: StreamDecoder>(
    request: reqwest::RequestBuilder,
    mut decoder: D,
    deltas: &mpsc::Sender<String>,
) -> Result<Decoded, AgentError> {
    let resp = request.send().await.map_err(|e| AgentError::from_reqwest(&e))?;
    let status = resp.status();
    if !status.is_success() {
        let retry_after_ms = retry_after_from_headers(resp.headers(), SystemTime::now());
        // A failure to read the error body does not hide the status.
        let body = read_capped(resp, ERROR_BODY_CAP).await.map(|(b, _)| b).unwrap_or_default();
        return Err(AgentError::Http {
            status: status.as_u16(),
            body_snippet: snippet(&body, SNIPPET_CHARS),
            retry_after_ms,
        });
    }
    let content_type =
        resp.headers().get(CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("").to_ascii_lowercase();

    if content_type.starts_with("text/event-stream") {
        let mut stream = resp.bytes_stream();
        let mut parser = SseParser::new();
        let mut events = Vec::new();
        loop {
            let ended = match stream.next().await {
                Some(Ok(chunk)) => {
                    parser.feed(&chunk, &mut events)?;
                    false
                }
                Some(Err(e)) => return Err(AgentError::from_reqwest(&e)),
                None => {
                    parser.finish(&mut events);
                    true
                }
            };
            if decode_events(&mut decoder, &mut events, deltas).await? || ended {
                break;
            }
        }
        return decoder.finish();
    }

    let (body, truncated) = read_capped(resp, JSON_BODY_CAP).await?;
    if truncated {
        return Err(AgentError::malformed(format!("response body exceeds {JSON_BODY_CAP} bytes")));
    }
    let first = body.iter().find(|b| !b.is_ascii_whitespace());
    if content_type.contains("json") || matches!(first, Some(b'{') | Some(b'[')) {
        let decoded = D::decode_json(&body)?;
        if !decoded.text.is_empty() {
            let _ = deltas.send(decoded.text.clone()).await;
        }
        return Ok(decoded);
    }
    // An event stream served with the wrong content type.
    let mut parser = SseParser::new();
    let mut events = Vec::new();
    parser.feed(&body, &mut events)?;
    parser.finish(&mut events);
    decode_events(&mut decoder, &mut events, deltas).await?;
    decoder.finish()
}

/// Feeds `events` to the decoder, forwarding deltas. Returns true once the decoder saw its
/// terminal event (later events are dropped).
async fn decode_events<D: StreamDecoder>(
    decoder: &mut D,
    events: &mut Vec<SseEvent>,
    deltas: &mpsc::Sender<String>,
) -> Result<bool, AgentError> {
    for ev in events.drain(..) {
        if let Some(text) = decoder.on_event(&ev)? {
            if !text.is_empty() {
                let _ = deltas.send(text).await;
            }
        }
        if decoder.is_done() {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Reads at most `cap` bytes of the body; the flag says whether more was left.
async fn read_capped(mut resp: reqwest::Response, cap: usize) -> Result<(Vec<u8>, bool), AgentError> {
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(|e| AgentError::from_reqwest(&e))? {
        if body.len() + chunk.len() > cap {
            body.extend_from_slice(&chunk[..cap - body.len()]);
            return Ok((body, true));
        }
        body.extend_from_slice(&chunk);
    }
    Ok((body, false))
}
