//! Fuzz the control plane's frame decoder (`crates/pincer/src/control/frame.rs`): any bytes a
//! client can send as a text frame must decode to a request or a `FrameError`, never panic,
//! and an accepted request must satisfy the wire rules.
//!
//! Run: `cargo +nightly fuzz run frame_decoder -- -max_len=1048576`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::Value;

#[path = "../../crates/pincer/src/control/frame.rs"]
#[allow(dead_code)]
mod frame;

fuzz_target!(|data: &[u8]| {
    // WebSocket text frames are UTF-8 by the time they reach the decoder.
    let Ok(text) = std::str::from_utf8(data) else { return };
    match frame::parse_client_frame(text) {
        Ok(f) => {
            assert!(f.id.as_str().is_some_and(|s| !s.is_empty()), "accepted an empty or non-string id");
            assert!(!f.method.is_empty(), "accepted an empty method");
            let v: Value = serde_json::from_str(text).expect("accepted text is JSON");
            assert_eq!(v["type"], "req");
        }
        Err(frame::FrameError::NotJson(_)) => assert!(serde_json::from_str::<Value>(text).is_err()),
        Err(frame::FrameError::NotRequest { .. }) => assert!(serde_json::from_str::<Value>(text).is_ok()),
        Err(e @ frame::FrameError::TooLarge { .. }) => panic!("no size cap after the handshake: {e:?}"),
    }
    match frame::parse_connect_frame(text) {
        Ok(f) => assert_eq!(f.method, "connect"),
        Err(frame::FrameError::TooLarge { len, max }) => assert!(len > max),
        Err(_) => {}
    }
});
