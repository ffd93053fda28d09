//! Shared helpers for the integration tests: a real database file in a temp dir and
//! delivery targets with case-sensitive platform ids.

#![allow(dead_code)]

use pincer_core::{AccountId, AgentId, ChannelId, ChatKind, DeliveryTarget};
use pincer_store::{NewInbound, SessionRecord, Store};
use std::path::Path;
use tempfile::TempDir;

/// A temp state dir with an open store in it.
pub fn store() -> (TempDir, Store) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path()).expect("open store");
    (dir, store)
}

/// Reopen the store in `dir` (after dropping the previous one).
pub fn reopen(dir: &Path) -> Store {
    Store::open(dir).expect("reopen store")
}

/// A Matrix-style target with a case-sensitive room id.
pub fn target(to: &str, thread_id: Option<&str>) -> DeliveryTarget {
    DeliveryTarget {
        channel: ChannelId::new("matrix"),
        account: AccountId::new("Work"),
        to: to.to_string(),
        thread_id: thread_id.map(str::to_string),
        reply_to_id: None,
    }
}

/// Upsert a session for `key` routed to `to`; returns the record.
pub fn session(store: &Store, key: &str, to: &str, now: i64) -> SessionRecord {
    let rec = SessionRecord::new(key, AgentId::new("main"), ChatKind::Channel, target(to, None), now);
    store.upsert_session(&rec).expect("upsert session");
    rec
}

/// An inbound message on the Matrix test account.
pub fn inbound(message_id: &str, session_key: Option<&str>) -> NewInbound {
    NewInbound {
        channel: ChannelId::new("matrix"),
        account: AccountId::new("Work"),
        message_id: message_id.to_string(),
        session_key: session_key.map(str::to_string),
    }
}
