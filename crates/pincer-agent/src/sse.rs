//! A Server-Sent Events parser (WHATWG HTML "server-sent events", §9.2.6 "Interpreting an
//! event stream") and the [`StreamDecoder`] interface the HTTP providers plug into it.
//!
//! Why our own parser rather than `eventsource-stream`: the grammar is forty lines, we need
//! it byte-oriented (chunks split anywhere, including inside a UTF-8 sequence or between the
//! `\r` and `\n` of a line end), bounded in memory (one event may not exceed
//! [`MAX_EVENT_BYTES`]), lenient at end of stream (see [`SseParser::finish`]) and fuzzed by
//! our own tests. Owning it costs less than adapting a `Stream` wrapper to those rules.

use crate::error::AgentError;
use crate::types::Usage;

/// Largest accepted event (pending line plus accumulated `data`), in bytes: 8 MiB. A stream
/// exceeding it is malformed rather than a memory hazard.
pub const MAX_EVENT_BYTES: usize = 8 * 1024 * 1024;

/// One dispatched event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SseEvent {
    /// The `event:` field, if the event had one (OpenAI sends none; Anthropic names each).
    pub event: Option<String>,
    /// The `data:` lines joined with `\n`.
    pub data: String,
}

/// An event exceeded [`MAX_EVENT_BYTES`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("SSE event exceeds {MAX_EVENT_BYTES} bytes")]
pub struct SseTooLarge;

impl From<SseTooLarge> for AgentError {
    fn from(e: SseTooLarge) -> Self {
        AgentError::malformed(e.to_string())
    }
}

/// Incremental SSE parser: feed it the body chunk by chunk, collect the events.
///
/// Handles `\n`, `\r\n` and lone `\r` line ends (also split across chunks), multi-line
/// `data:`, comment lines starting with `:`, an optional single space after the colon, a
/// leading UTF-8 BOM, and field lines without a colon. `id:` and `retry:` are ignored (no
/// provider here reconnects). Invalid UTF-8 is replaced with U+FFFD, never an error.
#[derive(Debug, Default)]
pub struct SseParser {
    line: Vec<u8>,
    pending_cr: bool,
    seen_first_line: bool,
    event: Option<String>,
    data: String,
    has_data: bool,
}

impl SseParser {
    /// A parser at the start of a stream.
    pub fn new() -> Self {
        SseParser::default()
    }

    /// Parses `chunk` and appends every event it completes to `out`.
    ///
    /// # Errors
    /// [`SseTooLarge`] when the pending event grows past [`MAX_EVENT_BYTES`]; the parser then
    /// drops its buffers and the stream should be abandoned.
    pub fn feed(&mut self, chunk: &[u8], out: &mut Vec<SseEvent>) -> Result<(), SseTooLarge> {
        let mut rest = chunk;
        if self.pending_cr {
            self.pending_cr = false;
            if rest.first() == Some(&b'\n') {
                rest = &rest[1..];
            }
        }
        while !rest.is_empty() {
            match rest.iter().position(|&b| b == b'\n' || b == b'\r') {
                Some(i) => {
                    self.line.extend_from_slice(&rest[..i]);
                    let was_cr = rest[i] == b'\r';
                    rest = &rest[i + 1..];
                    if was_cr {
                        match rest.first() {
                            Some(b'\n') => rest = &rest[1..],
                            None => self.pending_cr = true,
                            Some(_) => {}
                        }
                    }
                    self.check_size()?;
                    self.process_line(out);
                }
                None => {
                    self.line.extend_from_slice(rest);
                    rest = &[];
                }
            }
        }
        self.check_size()
    }

    /// Ends the stream. Leniency beyond the spec (which discards an unterminated event):
    /// a last line without a line end is processed, and a pending event with data is
    /// dispatched, because some servers close right after `data: [DONE]` without the blank
    /// line. The parser is reset afterwards.
    pub fn finish(&mut self, out: &mut Vec<SseEvent>) {
        if !self.line.is_empty() {
            self.process_line(out);
        }
        self.dispatch(out);
        *self = SseParser::default();
    }

    fn check_size(&mut self) -> Result<(), SseTooLarge> {
        if self.line.len() + self.data.len() > MAX_EVENT_BYTES {
            *self = SseParser::default();
            return Err(SseTooLarge);
        }
        Ok(())
    }

    fn dispatch(&mut self, out: &mut Vec<SseEvent>) {
        let event = self.event.take();
        if self.has_data {
            self.has_data = false;
            out.push(SseEvent { event, data: std::mem::take(&mut self.data) });
        }
    }

    fn process_line(&mut self, out: &mut Vec<SseEvent>) {
        let mut line: &[u8] = &self.line;
        if !self.seen_first_line {
            self.seen_first_line = true;
            line = line.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(line);
        }
        if line.is_empty() {
            self.line.clear();
            self.dispatch(out);
            return;
        }
        if line[0] == b':' {
            self.line.clear();
            return;
        }
        let (field, value) = match line.iter().position(|&b| b == b':') {
            Some(i) => {
                let v = &line[i + 1..];
                (&line[..i], v.strip_prefix(b" ").unwrap_or(v))
            }
            None => (line, &b""[..]),
        };
        match field {
            b"data" => {
                if self.has_data {
                    self.data.push('\n');
                }
                self.has_data = true;
                self.data.push_str(&String::from_utf8_lossy(value));
            }
            b"event" => self.event = Some(String::from_utf8_lossy(value).into_owned()),
            _ => {}
        }
        self.line.clear();
    }
}

/// What a decoded response amounts to.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Decoded {
    /// The whole reply text.
    pub text: String,
    /// The stop reason as the API spelled it.
    pub stop_reason: Option<String>,
    /// Token usage, if reported.
    pub usage: Option<Usage>,
}

/// Turns one API's events into text. Implemented by [`crate::openai::OpenAiDecoder`] and
/// [`crate::anthropic::AnthropicDecoder`]. Every method is total: any input yields a value
/// or an [`AgentError`], never a panic.
pub trait StreamDecoder: Send {
    /// Handles one SSE event; returns the text delta it carries, if any.
    ///
    /// # Errors
    /// [`AgentError::Malformed`] for undecodable data, or the error an error event carries.
    fn on_event(&mut self, ev: &SseEvent) -> Result<Option<String>, AgentError>;

    /// True once the terminal event was seen; the caller stops reading the stream there.
    fn is_done(&self) -> bool;

    /// The stream ended: the accumulated reply.
    ///
    /// # Errors
    /// `Malformed { detail: "truncated stream" }` when the terminal event never came.
    fn finish(self) -> Result<Decoded, AgentError>;

    /// Decodes a whole non-streaming JSON response body of the same API.
    ///
    /// # Errors
    /// [`AgentError::Malformed`] for invalid JSON or an unexpected shape, or the error an
    /// error body carries.
    fn decode_json(body: &[u8]) -> Result<Decoded, AgentError>
    where
        Self: Sized;
}

/// The `detail` of the [`AgentError::Malformed`] a stream without its terminal event yields.
pub const TRUNCATED: &str = "truncated stream";

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_all(chunks: &[&[u8]]) -> Vec<SseEvent> {
        let mut p = SseParser::new();
        let mut out = Vec::new();
        for c in chunks {
            p.feed(c, &mut out).unwrap();
        }
        p.finish(&mut out);
        out
    }

    fn ev(event: Option<&str>, data: &str) -> SseEvent {
        SseEvent { event: event.map(str::to_string), data: data.to_string() }
    }

    #[test]
    fn basic_events_and_line_ends() {
        let got = parse_all(&[b"data: a\n\nevent: x\r\ndata: b\r\n\r\ndata:c\r\rdata:  d\n\n"]);
        assert_eq!(got, vec![ev(None, "a"), ev(Some("x"), "b"), ev(None, "c"), ev(None, " d")]);
    }

    #[test]
    fn multiline_data_comments_and_bom() {
        let got = parse_all(&[b"\xEF\xBB\xBF: hi\ndata: one\ndata\ndata: two\nid: 3\nretry: 9\n\n"]);
        assert_eq!(got, vec![ev(None, "one\n\ntwo")]);
    }

    #[test]
    fn crlf_split_across_chunks_is_one_line_end() {
        let got = parse_all(&[b"data: a\r", b"\n", b"\r", b"\ndata: b\n\n"]);
        assert_eq!(got, vec![ev(None, "a"), ev(None, "b")]);
    }

    #[test]
    fn utf8_split_inside_a_character() {
        let s = "data: héllo\n\n".as_bytes();
        let got = parse_all(&[&s[..8], &s[8..]]);
        assert_eq!(got, vec![ev(None, "héllo")]);
    }

    #[test]
    fn event_without_data_is_not_dispatched_and_name_resets() {
        let got = parse_all(&[b"event: ping\n\ndata: x\n\n"]);
        assert_eq!(got, vec![ev(None, "x")]);
    }

    #[test]
    fn finish_is_lenient() {
        assert_eq!(parse_all(&[b"data: [DONE]"]), vec![ev(None, "[DONE]")]);
        assert_eq!(parse_all(&[b"data: [DONE]\n"]), vec![ev(None, "[DONE]")]);
        assert_eq!(parse_all(&[b"event: x\n"]), vec![]);
    }

    #[test]
    fn oversized_event_is_an_error() {
        let mut p = SseParser::new();
        let mut out = Vec::new();
        let big = vec![b'a'; MAX_EVENT_BYTES + 1];
        assert_eq!(p.feed(&big, &mut out), Err(SseTooLarge));
        p.feed(b"data: ok\n\n", &mut out).unwrap();
        assert_eq!(out, vec![ev(None, "ok")]);
    }
}
