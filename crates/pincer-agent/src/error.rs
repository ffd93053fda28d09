//! [`AgentError`], the one error type of a provider call, and the `Retry-After` parsing the
//! retry policy relies on.

use reqwest::header::HeaderMap;
use std::time::{Duration, SystemTime};

/// Why a provider call failed. `Clone + Eq` so callers can record and compare it; transport
/// errors are flattened to their message chain for that reason.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AgentError {
    /// The provider answered with a non-2xx status (or, for Anthropic, sent an `error` event
    /// whose `error.type` maps to a status, see [`crate::anthropic::status_for_error_type`]).
    #[error("provider returned HTTP {status}: {body_snippet}")]
    Http {
        /// HTTP status code.
        status: u16,
        /// The start of the response body (at most 512 characters), or the error message.
        body_snippet: String,
        /// The server's requested wait in milliseconds, from `retry-after-ms` or `Retry-After`
        /// (seconds or HTTP-date).
        retry_after_ms: Option<u64>,
    },
    /// The response could not be understood: invalid JSON, an SSE stream that ended without
    /// its terminal event (`detail == "truncated stream"`), or an error object inside a 2xx
    /// response.
    #[error("malformed provider response: {detail}")]
    Malformed {
        /// What was wrong, for the operator.
        detail: String,
    },
    /// The provider's `timeoutSeconds` or the run's deadline passed.
    #[error("timed out")]
    Timeout,
    /// The caller's cancellation token fired.
    #[error("cancelled")]
    Cancelled,
    /// Connecting, sending or reading failed below HTTP (DNS, refused, reset, TLS).
    #[error("transport error: {0}")]
    Transport(String),
    /// The `exec` provider's command could not be started or failed.
    #[error("exec provider failed: {detail}{}; stderr: {stderr}", fmt_code(*.code))]
    Exec {
        /// What happened (spawn failure, non-zero exit, killed by a signal).
        detail: String,
        /// The exit code, when the process exited normally.
        code: Option<i32>,
        /// The start of its stderr (at most 512 characters).
        stderr: String,
    },
    /// The provider or model ref is not usable as configured.
    #[error("provider config error: {detail}")]
    Config {
        /// What is wrong, naming the provider or ref.
        detail: String,
    },
}

fn fmt_code(code: Option<i32>) -> String {
    match code {
        Some(c) => format!(" (exit code {c})"),
        None => String::new(),
    }
}

impl AgentError {
    /// Shorthand for [`AgentError::Malformed`].
    pub fn malformed(detail: impl Into<String>) -> Self {
        AgentError::Malformed { detail: detail.into() }
    }

    /// Shorthand for [`AgentError::Config`].
    pub fn config(detail: impl Into<String>) -> Self {
        AgentError::Config { detail: detail.into() }
    }

    /// A transport error from reqwest, with its whole source chain in the message.
    pub fn from_reqwest(err: &reqwest::Error) -> Self {
        let mut msg = err.to_string();
        let mut source = std::error::Error::source(err);
        while let Some(s) = source {
            msg.push_str(": ");
            msg.push_str(&s.to_string());
            source = s.source();
        }
        AgentError::Transport(msg)
    }

    /// Whether the same call may succeed if repeated: HTTP 408, 429 and 5xx (Anthropic's 529
    /// `overloaded_error` included) and transport errors. Other 4xx, malformed responses,
    /// timeouts, cancellation, exec and config errors are not retried (the runner still falls
    /// back to the next model of the chain for all of them except cancellation).
    pub fn is_retryable(&self) -> bool {
        match self {
            AgentError::Http { status, .. } => *status == 408 || *status == 429 || (500..=599).contains(status),
            AgentError::Transport(_) => true,
            AgentError::Malformed { .. }
            | AgentError::Timeout
            | AgentError::Cancelled
            | AgentError::Exec { .. }
            | AgentError::Config { .. } => false,
        }
    }

    /// The server's requested wait before a retry, in milliseconds (HTTP errors only).
    pub fn retry_after_ms(&self) -> Option<u64> {
        match self {
            AgentError::Http { retry_after_ms, .. } => *retry_after_ms,
            _ => None,
        }
    }

    /// A stable short name of the variant, for logs, metrics and failure records:
    /// `http`, `malformed`, `timeout`, `cancelled`, `transport`, `exec` or `config`.
    pub fn kind(&self) -> &'static str {
        match self {
            AgentError::Http { .. } => "http",
            AgentError::Malformed { .. } => "malformed",
            AgentError::Timeout => "timeout",
            AgentError::Cancelled => "cancelled",
            AgentError::Transport(_) => "transport",
            AgentError::Exec { .. } => "exec",
            AgentError::Config { .. } => "config",
        }
    }
}

/// Parses one `Retry-After` value (RFC 9110 §10.2.3): delay-seconds (a fractional value is
/// accepted too, as some proxies send it) or an HTTP-date, relative to `now`. Returns the
/// wait in milliseconds; a date in the past gives 0. `None` if the value is neither.
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<u64> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(secs.saturating_mul(1000));
    }
    if let Ok(secs) = value.parse::<f64>() {
        if secs.is_finite() && secs >= 0.0 {
            return Some(Duration::try_from_secs_f64(secs).map_or(u64::MAX, duration_ms));
        }
        return None;
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).map_or(0, duration_ms))
}

/// The server's requested wait from response headers, in milliseconds: `retry-after-ms`
/// (sent by OpenAI and honoured first by its official SDKs) if present and valid, else
/// `Retry-After` via [`parse_retry_after`].
pub fn retry_after_from_headers(headers: &HeaderMap, now: SystemTime) -> Option<u64> {
    if let Some(ms) = headers
        .get("retry-after-ms")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<f64>().ok())
        .filter(|v| v.is_finite() && *v >= 0.0)
    {
        return Some(ms as u64);
    }
    headers.get(reqwest::header::RETRY_AFTER).and_then(|v| v.to_str().ok()).and_then(|v| parse_retry_after(v, now))
}

fn duration_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// At most `max_chars` characters of `bytes` (lossy UTF-8, trimmed), with `…` when cut.
pub(crate) fn snippet(bytes: &[u8], max_chars: usize) -> String {
    let text = String::from_utf8_lossy(bytes);
    let text = text.trim();
    match text.char_indices().nth(max_chars) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_seconds_and_dates() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        assert_eq!(parse_retry_after("2", now), Some(2000));
        assert_eq!(parse_retry_after(" 0 ", now), Some(0));
        assert_eq!(parse_retry_after("1.5", now), Some(1500));
        assert_eq!(parse_retry_after("-1", now), None);
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(parse_retry_after("NaN", now), None);
        let later = httpdate::fmt_http_date(now + Duration::from_secs(90));
        assert_eq!(parse_retry_after(&later, now), Some(90_000));
        let earlier = httpdate::fmt_http_date(now - Duration::from_secs(90));
        assert_eq!(parse_retry_after(&earlier, now), Some(0));
        assert_eq!(parse_retry_after("99999999999999999999", now), Some(u64::MAX));
    }

    #[test]
    fn retry_after_ms_header_wins() {
        let mut h = HeaderMap::new();
        h.insert("retry-after", "7".parse().unwrap());
        assert_eq!(retry_after_from_headers(&h, SystemTime::now()), Some(7000));
        h.insert("retry-after-ms", "250".parse().unwrap());
        assert_eq!(retry_after_from_headers(&h, SystemTime::now()), Some(250));
    }

    #[test]
    fn retryability() {
        let http = |status| AgentError::Http { status, body_snippet: String::new(), retry_after_ms: None };
        for s in [408, 429, 500, 502, 503, 529] {
            assert!(http(s).is_retryable(), "{s}");
        }
        for s in [400, 401, 403, 404, 413, 422] {
            assert!(!http(s).is_retryable(), "{s}");
        }
        assert!(AgentError::Transport("reset".into()).is_retryable());
        assert!(!AgentError::malformed("x").is_retryable());
        assert!(!AgentError::Timeout.is_retryable());
        assert!(!AgentError::Cancelled.is_retryable());
    }

    #[test]
    fn snippet_cuts_on_char_boundaries() {
        assert_eq!(snippet("héllo".as_bytes(), 2), "hé…");
        assert_eq!(snippet(b"  ok  ", 10), "ok");
        assert_eq!(snippet(&[0xff, b'a'], 10), "\u{fffd}a");
    }
}
