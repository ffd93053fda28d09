//! Decoding of client frames: text in, a request or a [`FrameError`] out. Pure (no I/O, no
//! state) and dependent only on `serde_json`, so the cargo-fuzz target in `fuzz/` includes this
//! file with `#[path]` and the property tests below run it on arbitrary input.
//!
//! The connection loop in `ws.rs` decides what each error means on the wire (an error `res`,
//! a close); this module only classifies the text. serde_json bounds nesting at 128 levels,
//! so no input can overflow the stack here.

use serde_json::Value;

/// Pre-auth frame cap (64 KiB, reference §2).
pub const PRE_AUTH_MAX: usize = 64 * 1024;

/// A decoded request `{type:"req", id, method, params?}`.
#[derive(Clone, Debug, PartialEq)]
pub struct ClientFrame {
    /// The request id, echoed in the response. A non-empty string for [`parse_client_frame`];
    /// whatever the frame carried (possibly `null`) for [`parse_connect_frame`].
    pub id: Value,
    /// The method name (non-empty).
    pub method: String,
    /// `params`, or `{}` when absent.
    pub params: Value,
}

/// Why a text frame is not a usable request.
#[derive(Clone, Debug, PartialEq)]
pub enum FrameError {
    /// Longer than the cap that applies (only checked by [`parse_connect_frame`]; after the
    /// handshake the WebSocket layer enforces `policy.maxPayload`).
    TooLarge {
        /// Bytes received.
        len: usize,
        /// The cap.
        max: usize,
    },
    /// Not JSON; the serde_json message.
    NotJson(String),
    /// JSON, but not the expected request. `id` is the frame's `id` (or `null`), to be echoed
    /// in the error response.
    NotRequest {
        /// The frame's `id`, `null` when absent.
        id: Value,
    },
}

impl std::fmt::Display for FrameError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FrameError::TooLarge { len, max } => write!(f, "frame too large ({len} bytes, max {max})"),
            FrameError::NotJson(m) => f.write_str(m),
            FrameError::NotRequest { .. } => f.write_str("expected {type:\"req\", id, method, params}"),
        }
    }
}

fn decode(text: &str) -> Result<Value, FrameError> {
    serde_json::from_str(text).map_err(|e| FrameError::NotJson(e.to_string()))
}

fn params_of(frame: &mut Value) -> Value {
    match frame.get_mut("params") {
        Some(p) => p.take(),
        None => Value::Object(Default::default()),
    }
}

/// A frame after the handshake: `{type:"req", id: non-empty string, method: non-empty string,
/// params?}`. Extra fields are ignored.
pub fn parse_client_frame(text: &str) -> Result<ClientFrame, FrameError> {
    let mut frame = decode(text)?;
    let id = frame.get("id").cloned().unwrap_or(Value::Null);
    let method = frame.get("method").and_then(Value::as_str).unwrap_or("");
    if frame.get("type").and_then(Value::as_str) != Some("req")
        || method.is_empty()
        || id.as_str().is_none_or(str::is_empty)
    {
        return Err(FrameError::NotRequest { id });
    }
    let method = method.to_string();
    Ok(ClientFrame { id, method, params: params_of(&mut frame) })
}

/// The first frame of a connection: at most [`PRE_AUTH_MAX`] bytes, JSON, and
/// `{type:"req", method:"connect"}`. The id is not checked (the reference echoes whatever it
/// got in the `hello-ok` or error response).
pub fn parse_connect_frame(text: &str) -> Result<ClientFrame, FrameError> {
    if text.len() > PRE_AUTH_MAX {
        return Err(FrameError::TooLarge { len: text.len(), max: PRE_AUTH_MAX });
    }
    let mut frame = decode(text)?;
    let id = frame.get("id").cloned().unwrap_or(Value::Null);
    if frame.get("type").and_then(Value::as_str) != Some("req")
        || frame.get("method").and_then(Value::as_str) != Some("connect")
    {
        return Err(FrameError::NotRequest { id });
    }
    Ok(ClientFrame { id, method: "connect".to_string(), params: params_of(&mut frame) })
}

#[cfg(test)]
mod tests {
    //! Property tests (bounded, run by `cargo test`): no input panics, and the result is
    //! exactly what the wire rules say. The cargo-fuzz target explores the same functions
    //! without a bound.
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    /// Arbitrary JSON values, nested a few levels.
    fn json_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            any::<f64>().prop_filter("finite", |f| f.is_finite()).prop_map(Value::from),
            ".{0,16}".prop_map(Value::from),
            prop_oneof![Just("req"), Just("res"), Just("event"), Just("connect"), Just("health"), Just("")]
                .prop_map(Value::from),
        ];
        leaf.prop_recursive(4, 48, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(Value::from),
                prop::collection::btree_map(
                    prop_oneof![
                        Just("type".to_string()),
                        Just("id".to_string()),
                        Just("method".to_string()),
                        Just("params".to_string()),
                        ".{0,8}".prop_map(String::from)
                    ],
                    inner,
                    0..6
                )
                .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    /// A field that is present (with a value from `s`) or absent.
    fn field(s: impl Strategy<Value = Value>) -> impl Strategy<Value = Option<Value>> {
        prop::option::weighted(0.85, s)
    }

    /// What `parse_client_frame` must say about a JSON value, written independently.
    fn expected_request(v: &Value) -> Option<(String, String, Value)> {
        let o = v.as_object()?;
        if o.get("type")? != "req" {
            return None;
        }
        let id = o.get("id")?.as_str().filter(|s| !s.is_empty())?;
        let method = o.get("method")?.as_str().filter(|s| !s.is_empty())?;
        Some((id.to_string(), method.to_string(), o.get("params").cloned().unwrap_or_else(|| json!({}))))
    }

    fn check_text(text: &str) -> Result<(), TestCaseError> {
        let parsed = serde_json::from_str::<Value>(text).ok();
        match parse_client_frame(text) {
            Ok(f) => {
                let v = parsed.clone().expect("accepted text is JSON");
                let (id, method, params) = expected_request(&v).expect("accepted frame is a request");
                prop_assert_eq!(f.id, Value::String(id));
                prop_assert_eq!(f.method, method);
                prop_assert_eq!(f.params, params);
            }
            Err(FrameError::NotJson(m)) => {
                prop_assert!(parsed.is_none());
                prop_assert!(!m.is_empty());
            }
            Err(FrameError::NotRequest { id }) => {
                let v = parsed.clone().expect("NotRequest only for JSON");
                prop_assert!(expected_request(&v).is_none());
                prop_assert_eq!(id, v.get("id").cloned().unwrap_or(Value::Null));
            }
            Err(e @ FrameError::TooLarge { .. }) => prop_assert!(false, "no size cap after the handshake: {e:?}"),
        }
        match parse_connect_frame(text) {
            Err(FrameError::TooLarge { len, max }) => prop_assert!(len > max && max == PRE_AUTH_MAX),
            Err(FrameError::NotJson(_)) => prop_assert!(parsed.is_none()),
            Err(FrameError::NotRequest { .. }) => {
                let v = parsed.clone().expect("NotRequest only for JSON");
                prop_assert!(v.get("type") != Some(&json!("req")) || v.get("method") != Some(&json!("connect")));
            }
            Ok(f) => {
                let v = parsed.clone().expect("accepted text is JSON");
                prop_assert_eq!(&v["type"], "req");
                prop_assert_eq!(&v["method"], "connect");
                prop_assert_eq!(f.method, "connect");
            }
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() })]

        #[test]
        fn arbitrary_text_never_panics(text in ".{0,256}") {
            check_text(&text)?;
        }

        #[test]
        fn arbitrary_bytes_as_lossy_text_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
            check_text(&String::from_utf8_lossy(&bytes))?;
        }

        #[test]
        fn arbitrary_json_is_a_request_exactly_when_the_rules_say(v in json_value()) {
            check_text(&v.to_string())?;
        }

        #[test]
        fn near_requests_are_classified_exactly(
            ty in field(prop_oneof![
                Just(json!("req")), Just(json!("res")), Just(json!("event")), Just(json!("")), json_value()
            ]),
            id in field(prop_oneof![Just(json!("")), ".{1,8}".prop_map(Value::from), json_value()]),
            method in field(prop_oneof![
                Just(json!("")), Just(json!("connect")), ".{1,8}".prop_map(Value::from), json_value()
            ]),
            params in field(json_value()),
            extra in field(json_value()),
        ) {
            // Objects one field away from a valid request: the boundary the decoder must get right.
            let mut o = serde_json::Map::new();
            for (k, v) in [("type", ty), ("id", id), ("method", method), ("params", params), ("extra", extra)] {
                if let Some(v) = v {
                    o.insert(k.to_string(), v);
                }
            }
            check_text(&Value::Object(o).to_string())?;
        }

        #[test]
        fn well_formed_requests_round_trip(
            id in ".{1,64}",
            method in ".{1,32}",
            params in json_value(),
            with_params in any::<bool>(),
        ) {
            let mut frame = json!({"type": "req", "id": id, "method": method});
            if with_params {
                frame["params"] = params.clone();
            }
            let f = parse_client_frame(&frame.to_string()).expect("well-formed");
            prop_assert_eq!(f.id, json!(id));
            prop_assert_eq!(f.method, method);
            let params: Value = serde_json::from_str(&params.to_string()).unwrap();
            prop_assert_eq!(f.params, if with_params { params } else { json!({}) });
        }

        #[test]
        fn mangled_json_never_panics(v in json_value(), cut in any::<prop::sample::Index>(), junk in ".{0,4}") {
            // Truncations and splices of valid JSON: the inputs a decoder most often sees broken.
            let s = v.to_string();
            let mut at = cut.index(s.len() + 1);
            while !s.is_char_boundary(at) {
                at -= 1;
            }
            check_text(&s[..at])?;
            check_text(&format!("{}{junk}{}", &s[..at], &s[at..]))?;
        }
    }

    #[test]
    fn edge_cases() {
        // Nesting far beyond serde_json's recursion limit is an error, not a stack overflow.
        let deep = "[".repeat(100_000);
        assert!(matches!(parse_client_frame(&deep), Err(FrameError::NotJson(_))));
        let deep_obj = format!("{{\"type\":\"req\",\"id\":\"a\",\"method\":\"m\",\"params\":{}}}", "[".repeat(10_000));
        assert!(matches!(parse_client_frame(&deep_obj), Err(FrameError::NotJson(_))));
        // Numbers beyond f64 are rejected by the decoder; beyond u64 they become floats.
        assert!(matches!(parse_client_frame(r#"{"type":"req","id":1e400,"method":"m"}"#), Err(FrameError::NotJson(_))));
        assert_eq!(
            parse_client_frame(r#"{"type":"req","id":18446744073709551616,"method":"m"}"#),
            Err(FrameError::NotRequest { id: json!(18446744073709551616.0) })
        );
        // Huge ids are echoed as they are.
        let id = "x".repeat(1 << 20);
        let f = parse_client_frame(&json!({"type": "req", "id": id, "method": "m"}).to_string()).unwrap();
        assert_eq!(f.id.as_str().map(str::len), Some(1 << 20));
        // Wrong types.
        for bad in [
            json!({"type": "req", "id": 1, "method": "health"}),
            json!({"type": "req", "id": "", "method": "health"}),
            json!({"type": "req", "id": "a", "method": ""}),
            json!({"type": "req", "id": "a", "method": 7}),
            json!({"type": "request", "id": "a", "method": "health"}),
            json!({"type": ["req"], "id": "a", "method": "health"}),
            json!(["req", "a", "health"]),
            json!("req"),
        ] {
            assert!(matches!(parse_client_frame(&bad.to_string()), Err(FrameError::NotRequest { .. })), "{bad}");
        }
        // Pre-auth: the size cap comes before decoding.
        let big = format!(
            "{{\"type\":\"req\",\"id\":\"c\",\"method\":\"connect\",\"pad\":\"{}\"}}",
            "p".repeat(PRE_AUTH_MAX)
        );
        assert!(matches!(parse_connect_frame(&big), Err(FrameError::TooLarge { .. })));
        assert!(parse_client_frame(&big).is_ok());
        // The handshake echoes whatever id it got; params default to {}.
        let f = parse_connect_frame(r#"{"type":"req","id":5,"method":"connect"}"#).unwrap();
        assert_eq!((f.id, f.params), (json!(5), json!({})));
        assert_eq!(
            parse_connect_frame(r#"{"type":"req","id":"h","method":"health"}"#),
            Err(FrameError::NotRequest { id: json!("h") })
        );
    }
}
