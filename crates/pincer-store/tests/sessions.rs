//! Sessions and transcripts against a real database file.

mod common;

use pincer_core::{AccountId, AgentId, ChannelId, ChatKind, DeliveryTarget};
use pincer_store::{Role, SessionRecord, StoreError};

const ROOM: &str = "!AbC:Example.org";
const KEY: &str = "agent:main:matrix:channel:!AbC:Example.org";

#[test]
fn session_round_trip_preserves_case_exactly() {
    let (dir, store) = common::store();
    let target = DeliveryTarget {
        channel: ChannelId::new("matrix"),
        account: AccountId::new("Work"),
        to: ROOM.to_string(),
        thread_id: Some("$ThreadRoot:Example.org".to_string()),
        reply_to_id: Some("$EvT:Example.org".to_string()),
    };
    let rec = SessionRecord::new(KEY, AgentId::new("ops"), ChatKind::Channel, target.clone(), 1_000);
    store.upsert_session(&rec).unwrap();
    drop(store);

    let store = common::reopen(dir.path());
    let got = store.get_session(KEY).unwrap().expect("session exists");
    assert_eq!(got, rec);
    assert_eq!(got.target.to, ROOM);
    assert_eq!(got.target.account.as_str(), "Work");
    // Keys are exact: a case-folded key is a different (absent) session.
    assert_eq!(store.get_session(&KEY.to_lowercase()).unwrap(), None);
}

#[test]
fn upsert_updates_the_route_but_keeps_created_at_and_generation() {
    let (_dir, store) = common::store();
    let rec = common::session(&store, KEY, ROOM, 1_000);
    store.append_transcript(KEY, Role::User, "hi", None, 1_001).unwrap();
    assert!(store.reset_session(KEY, 1_002).unwrap());

    let mut moved = rec.clone();
    moved.target = common::target("!Other:Example.org", Some("$T"));
    moved.created_at = 9_999;
    moved.updated_at = 2_000;
    moved.generation = 77;
    moved.last_run_at = Some(1_500);
    store.upsert_session(&moved).unwrap();

    let got = store.get_session(KEY).unwrap().unwrap();
    assert_eq!(got.target, moved.target);
    assert_eq!(got.created_at, 1_000);
    assert_eq!(got.updated_at, 2_000);
    assert_eq!(got.generation, 1, "generation is owned by the store");
    assert_eq!(got.last_run_at, Some(1_500));

    // A later upsert without last_run_at keeps the stored one.
    moved.last_run_at = None;
    store.upsert_session(&moved).unwrap();
    assert_eq!(store.get_session(KEY).unwrap().unwrap().last_run_at, Some(1_500));
}

#[test]
fn transcript_seq_is_per_session_and_ascending() {
    let (dir, store) = common::store();
    common::session(&store, KEY, ROOM, 1);
    common::session(&store, "agent:main:main", "webchat", 1);
    for i in 1..=5 {
        let seq = store.append_transcript(KEY, Role::User, &format!("u{i}"), Some("run-1"), 10 + i).unwrap();
        assert_eq!(seq, i);
        let other = store.append_transcript("agent:main:main", Role::User, "x", None, 10).unwrap();
        assert_eq!(other, i);
    }
    drop(store);
    let store = common::reopen(dir.path());
    assert_eq!(store.append_transcript(KEY, Role::Assistant, "a6", None, 20).unwrap(), 6);

    let all = store.transcript(KEY, 100).unwrap();
    assert_eq!(all.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![1, 2, 3, 4, 5, 6]);
    assert_eq!(all[0].text, "u1");
    assert_eq!(all[0].run_id.as_deref(), Some("run-1"));
    assert_eq!(all[5].role, Role::Assistant);

    let last2 = store.transcript(KEY, 2).unwrap();
    assert_eq!(last2.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![5, 6]);
    assert!(store.transcript(KEY, 0).unwrap().is_empty());
    assert!(store.transcript("agent:main:nobody", 10).unwrap().is_empty());
}

#[test]
fn history_for_run_skips_error_rows() {
    let (_dir, store) = common::store();
    common::session(&store, KEY, ROOM, 1);
    store.append_transcript(KEY, Role::System, "be brief", None, 1).unwrap();
    store.append_transcript(KEY, Role::User, "q1", None, 2).unwrap();
    store.append_transcript(KEY, Role::Error, "provider timed out", Some("r1"), 3).unwrap();
    store.append_transcript(KEY, Role::User, "q2", None, 4).unwrap();
    store.append_transcript(KEY, Role::Assistant, "a2", Some("r2"), 5).unwrap();

    let history = store.history_for_run(KEY, 10).unwrap();
    let texts: Vec<_> = history.iter().map(|e| e.text.as_str()).collect();
    assert_eq!(texts, vec!["be brief", "q1", "q2", "a2"]);
    let last2 = store.history_for_run(KEY, 2).unwrap();
    assert_eq!(last2.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![4, 5]);
    assert_eq!(store.transcript(KEY, 10).unwrap().len(), 5);
}

#[test]
fn transcript_meta_round_trips() {
    let (_dir, store) = common::store();
    common::session(&store, KEY, ROOM, 1);
    let meta = serde_json::json!({"model": "echo", "usage": {"in": 3, "out": 4}});
    store.append_transcript_with_meta(KEY, Role::Assistant, "hi", Some("r"), Some(&meta), 2).unwrap();
    let entries = store.transcript(KEY, 1).unwrap();
    assert_eq!(entries[0].meta.as_ref(), Some(&meta));
    assert_eq!(entries[0].created_at, 2);
}

#[test]
fn append_to_unknown_session_is_an_error() {
    let (_dir, store) = common::store();
    let err = store.append_transcript("agent:main:ghost", Role::User, "hi", None, 1).unwrap_err();
    assert!(matches!(err, StoreError::NoSuchSession { ref key } if key == "agent:main:ghost"));
}

#[test]
fn reset_clears_transcript_keeps_row_and_restarts_seq() {
    let (_dir, store) = common::store();
    let rec = common::session(&store, KEY, ROOM, 1);
    for i in 0..3 {
        store.append_transcript(KEY, Role::User, "m", None, 2 + i).unwrap();
    }
    assert!(store.reset_session(KEY, 10).unwrap());
    assert!(store.transcript(KEY, 10).unwrap().is_empty());
    let got = store.get_session(KEY).unwrap().unwrap();
    assert_eq!(got.target, rec.target);
    assert_eq!(got.generation, 1);
    assert_eq!(store.append_transcript(KEY, Role::User, "again", None, 11).unwrap(), 1);
    assert!(!store.reset_session("agent:main:ghost", 12).unwrap());
}

#[test]
fn list_sessions_orders_by_activity_with_counts() {
    let (_dir, store) = common::store();
    common::session(&store, "agent:main:a", "!a:x", 100);
    common::session(&store, "agent:main:b", "!b:x", 200);
    common::session(&store, "agent:main:c", "!c:x", 300);
    store.append_transcript("agent:main:a", Role::User, "1", None, 400).unwrap();
    store.append_transcript("agent:main:a", Role::Assistant, "2", None, 401).unwrap();

    let list = store.list_sessions(10).unwrap();
    let keys: Vec<_> = list.iter().map(|s| s.session.key.as_str()).collect();
    assert_eq!(keys, vec!["agent:main:a", "agent:main:c", "agent:main:b"]);
    assert_eq!(list[0].message_count, 2);
    assert_eq!(list[0].last_activity_at, 401);
    assert_eq!(list[1].message_count, 0);
    assert_eq!(list[1].last_activity_at, 300);
    assert_eq!(store.list_sessions(1).unwrap().len(), 1);
}

#[test]
fn empty_session_key_is_refused() {
    let (_dir, store) = common::store();
    let rec = SessionRecord::new("", AgentId::default(), ChatKind::Direct, common::target("u", None), 1);
    assert!(matches!(store.upsert_session(&rec), Err(StoreError::InvalidInput { .. })));
}
