//! Fuzz-style tests (seeded, deterministic): random bytes and random chunk splits into the
//! SSE parser, random and mutated events into the OpenAI and Anthropic decoders. Nothing may
//! panic, and splitting a stream anywhere must not change what it parses to.

use pincer_agent::anthropic::AnthropicDecoder;
use pincer_agent::openai::OpenAiDecoder;
use pincer_agent::sse::{SseEvent, SseParser, StreamDecoder};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Map, Value};

const SEED: u64 = 0x5EED_F00D;

fn parse_split(bytes: &[u8], rng: &mut StdRng) -> Vec<SseEvent> {
    let mut p = SseParser::new();
    let mut out = Vec::new();
    let mut rest = bytes;
    while !rest.is_empty() {
        let n = rng.gen_range(1..=rest.len().min(17));
        p.feed(&rest[..n], &mut out).expect("small input");
        rest = &rest[n..];
    }
    p.finish(&mut out);
    out
}

fn parse_whole(bytes: &[u8]) -> Vec<SseEvent> {
    let mut p = SseParser::new();
    let mut out = Vec::new();
    p.feed(bytes, &mut out).expect("small input");
    p.finish(&mut out);
    out
}

/// Bytes biased towards SSE syntax, so the parser's branches all get hit.
fn sse_ish_bytes(rng: &mut StdRng) -> Vec<u8> {
    const PIECES: &[&[u8]] = &[
        b"data:",
        b"data: ",
        b"event:",
        b"event: ",
        b"id: 1",
        b"retry: 5",
        b":",
        b": c",
        b"\n",
        b"\r",
        b"\r\n",
        b"\n\n",
        b"{",
        b"}",
        b"[DONE]",
        b"\xEF\xBB\xBF",
        b"\xff",
        b"\xc3",
        b"\xa9",
        b" ",
        b"x",
        b"\"",
        b"data:{\"a\":1}\n\n",
    ];
    let len = rng.gen_range(0..60);
    let mut v = Vec::new();
    for _ in 0..len {
        if rng.gen_bool(0.2) {
            v.push(rng.gen());
        } else {
            v.extend_from_slice(PIECES[rng.gen_range(0..PIECES.len())]);
        }
    }
    v
}

#[test]
fn parser_survives_random_bytes_and_splits_do_not_matter() {
    let mut rng = StdRng::seed_from_u64(SEED);
    for _ in 0..20_000 {
        let bytes = if rng.gen_bool(0.5) {
            sse_ish_bytes(&mut rng)
        } else {
            (0..rng.gen_range(0..80)).map(|_| rng.gen()).collect()
        };
        let whole = parse_whole(&bytes);
        let split = parse_split(&bytes, &mut rng);
        assert_eq!(whole, split, "input {bytes:?}");
    }
}

/// A random JSON value whose keys come from the APIs' vocabulary, so decoders go deep.
fn random_value(rng: &mut StdRng, depth: u32) -> Value {
    const KEYS: &[&str] = &[
        "type",
        "choices",
        "delta",
        "content",
        "finish_reason",
        "index",
        "usage",
        "error",
        "message",
        "code",
        "status",
        "prompt_tokens",
        "completion_tokens",
        "input_tokens",
        "output_tokens",
        "content_block",
        "text",
        "stop_reason",
        "role",
    ];
    const STRINGS: &[&str] = &[
        "message_start",
        "content_block_start",
        "content_block_delta",
        "text_delta",
        "message_delta",
        "message_stop",
        "error",
        "ping",
        "text",
        "overloaded_error",
        "stop",
        "429",
        "",
        "é",
    ];
    match (depth, rng.gen_range(0..8)) {
        (0, _) | (_, 0) => Value::Null,
        (_, 1) => Value::Bool(rng.gen()),
        (_, 2) => json!(rng.gen_range(-3i64..700)),
        (_, 3) => json!(rng.gen::<f64>() * 1e3),
        (_, 4) => json!(STRINGS[rng.gen_range(0..STRINGS.len())]),
        (_, 5) => Value::Array((0..rng.gen_range(0..3)).map(|_| random_value(rng, depth - 1)).collect()),
        _ => {
            let mut m = Map::new();
            for _ in 0..rng.gen_range(0..5) {
                m.insert(KEYS[rng.gen_range(0..KEYS.len())].into(), random_value(rng, depth - 1));
            }
            Value::Object(m)
        }
    }
}

/// Real event payloads of both APIs, mutated by random byte edits.
fn mutated_payload(rng: &mut StdRng) -> String {
    const REAL: &[&str] = &[
        r#"{"object":"chat.completion.chunk","choices":[{"index":0,"delta":{"content":"Hi"},"finish_reason":null}]}"#,
        r#"{"choices":[{"index":0,"delta":{},"finish_reason":"stop"}],"usage":{"prompt_tokens":1,"completion_tokens":2}}"#,
        r#"{"error":{"message":"boom","code":503}}"#,
        r#"{"type":"message_start","message":{"usage":{"input_tokens":3,"output_tokens":1}}}"#,
        r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Hi"}}"#,
        r#"{"type":"message_delta","delta":{"stop_reason":"end_turn"},"usage":{"output_tokens":9}}"#,
        r#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#,
        "[DONE]",
    ];
    let mut b = REAL[rng.gen_range(0..REAL.len())].as_bytes().to_vec();
    for _ in 0..rng.gen_range(0..4) {
        if b.is_empty() {
            break;
        }
        let i = rng.gen_range(0..b.len());
        match rng.gen_range(0..3) {
            0 => b[i] = rng.gen(),
            1 => {
                b.remove(i);
            }
            _ => b.insert(i, rng.gen()),
        }
    }
    String::from_utf8_lossy(&b).into_owned()
}

fn random_event(rng: &mut StdRng) -> SseEvent {
    let data = match rng.gen_range(0..3) {
        0 => random_value(rng, 5).to_string(),
        1 => mutated_payload(rng),
        _ => String::from_utf8_lossy(&sse_ish_bytes(rng)).into_owned(),
    };
    let event = rng.gen_bool(0.5).then(|| ["error", "message_stop", "ping", "x"][rng.gen_range(0..4)].to_string());
    SseEvent { event, data }
}

fn drive<D: StreamDecoder>(mut d: D, events: &[SseEvent]) {
    for ev in events {
        if d.on_event(ev).is_err() || d.is_done() {
            break;
        }
    }
    let _ = d.finish();
}

#[test]
fn decoders_survive_random_events() {
    let mut rng = StdRng::seed_from_u64(SEED ^ 1);
    for _ in 0..20_000 {
        let events: Vec<SseEvent> = (0..rng.gen_range(0..8)).map(|_| random_event(&mut rng)).collect();
        drive(OpenAiDecoder::new(), &events);
        drive(AnthropicDecoder::new(), &events);
        // Every event alone, including past errors (decoders must stay total).
        let mut o = OpenAiDecoder::new();
        let mut a = AnthropicDecoder::new();
        for ev in &events {
            let _ = o.on_event(ev);
            let _ = a.on_event(ev);
        }
        let body = events.first().map(|e| e.data.as_bytes()).unwrap_or(b"");
        let _ = OpenAiDecoder::decode_json(body);
        let _ = AnthropicDecoder::decode_json(body);
    }
}

#[test]
fn parser_into_decoders_on_random_bytes() {
    let mut rng = StdRng::seed_from_u64(SEED ^ 2);
    for _ in 0..5_000 {
        let mut bytes = Vec::new();
        for _ in 0..rng.gen_range(0..6) {
            bytes.extend_from_slice(b"data: ");
            bytes.extend_from_slice(mutated_payload(&mut rng).as_bytes());
            bytes.extend_from_slice(if rng.gen_bool(0.8) { b"\n\n" } else { b"\r\n" });
        }
        let events = parse_split(&bytes, &mut rng);
        drive(OpenAiDecoder::new(), &events);
        drive(AnthropicDecoder::new(), &events);
    }
}

#[test]
fn a_valid_stream_decodes_the_same_however_it_is_split() {
    let stream = concat!(
        "event: message_start\r\ndata: {\"type\":\"message_start\",\"message\":{\"usage\":{\"input_tokens\":3,\"output_tokens\":1}}}\r\n\r\n",
        ": keep-alive\n\n",
        "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\n",
        "data: \"delta\":{\"type\":\"text_delta\",\"text\":\"h\u{e9}llo \"}}\n\n",
        "event: content_block_delta\rdata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"w\u{f6}rld\"}}\r\r",
        "event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\"},\"usage\":{\"output_tokens\":2}}\n\n",
        "event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n",
    )
    .as_bytes();
    let mut rng = StdRng::seed_from_u64(SEED ^ 3);
    for _ in 0..2_000 {
        let events = parse_split(stream, &mut rng);
        let mut d = AnthropicDecoder::new();
        for ev in &events {
            d.on_event(ev).unwrap();
        }
        assert!(d.is_done());
        assert_eq!(d.finish().unwrap().text, "héllo wörld");
    }
}
