//! Dedupe ledger and inbound outcome ledger.

mod common;

use pincer_core::{AccountId, ChannelId};
use pincer_store::{Outcome, StoreError};

fn ids() -> (ChannelId, AccountId) {
    (ChannelId::new("mattermost"), AccountId::new("default"))
}

#[test]
fn dedupe_accepts_once_within_ttl_then_again_after_expiry() {
    let (dir, store) = common::store();
    let (ch, acc) = ids();
    let ttl = 1_000;
    assert!(store.dedupe_check_and_insert(&ch, &acc, "PostAbc", 10_000, ttl).unwrap());
    assert!(!store.dedupe_check_and_insert(&ch, &acc, "PostAbc", 10_001, ttl).unwrap());
    assert!(!store.dedupe_check_and_insert(&ch, &acc, "PostAbc", 10_999, ttl).unwrap());
    // Ids are exact: another case is another message.
    assert!(store.dedupe_check_and_insert(&ch, &acc, "postabc", 10_500, ttl).unwrap());
    // So are channel and account.
    assert!(store.dedupe_check_and_insert(&ch, &AccountId::new("Other"), "PostAbc", 10_500, ttl).unwrap());
    assert!(store.dedupe_check_and_insert(&ChannelId::new("slack"), &acc, "PostAbc", 10_500, ttl).unwrap());

    // Survives a restart.
    drop(store);
    let store = common::reopen(dir.path());
    assert!(!store.dedupe_check_and_insert(&ch, &acc, "PostAbc", 10_998, ttl).unwrap());

    // Expired at seen + ttl: accepted again, and the new entry starts a new window.
    assert!(store.dedupe_check_and_insert(&ch, &acc, "PostAbc", 11_000, ttl).unwrap());
    assert!(!store.dedupe_check_and_insert(&ch, &acc, "PostAbc", 11_999, ttl).unwrap());
}

#[test]
fn prune_dedupe_removes_only_expired_entries() {
    let (_dir, store) = common::store();
    let (ch, acc) = ids();
    assert!(store.dedupe_check_and_insert(&ch, &acc, "old", 0, 100).unwrap());
    assert!(store.dedupe_check_and_insert(&ch, &acc, "new", 50, 100).unwrap());
    assert_eq!(store.prune_dedupe(100).unwrap(), 1);
    assert!(!store.dedupe_check_and_insert(&ch, &acc, "new", 120, 100).unwrap());
    assert_eq!(store.prune_dedupe(1_000).unwrap(), 1);
}

#[test]
fn outcome_is_recorded_exactly_once() {
    let (dir, store) = common::store();
    let id = store.record_inbound(&common::inbound("$ev1", Some("agent:main:main")), 5).unwrap();
    let row = store.get_inbound(id).unwrap().unwrap();
    assert_eq!(row.outcome, None);
    assert_eq!(row.message_id, "$ev1");
    assert_eq!(row.received_at, 5);

    assert!(store.finish_inbound(id, Outcome::Silent, Some("NO_REPLY"), 6).unwrap());
    assert!(!store.finish_inbound(id, Outcome::Failed, Some("late"), 7).unwrap());
    assert!(!store.finish_inbound(id, Outcome::Silent, Some("again"), 8).unwrap());
    drop(store);

    let store = common::reopen(dir.path());
    let row = store.get_inbound(id).unwrap().unwrap();
    assert_eq!(row.outcome, Some(Outcome::Silent));
    assert_eq!(row.reason.as_deref(), Some("NO_REPLY"));
    assert_eq!(row.finished_at, Some(6));

    let err = store.finish_inbound(id + 1000, Outcome::Failed, None, 9).unwrap_err();
    assert!(matches!(err, StoreError::NotFound { .. }), "{err:?}");
}

#[test]
fn unfinished_inbound_lists_interrupted_messages_after_reopen() {
    let (dir, store) = common::store();
    let a = store.record_inbound(&common::inbound("a", None), 1).unwrap();
    let b = store.record_inbound(&common::inbound("b", None), 2).unwrap();
    let c = store.record_inbound(&common::inbound("c", None), 3).unwrap();
    store.finish_inbound(b, Outcome::Replied, None, 4).unwrap();
    drop(store);

    let store = common::reopen(dir.path());
    let open: Vec<_> = store.unfinished_inbound().unwrap().into_iter().map(|r| r.id).collect();
    assert_eq!(open, vec![a, c]);
    for id in open {
        store.finish_inbound(id, Outcome::Failed, Some("interrupted by restart"), 5).unwrap();
    }
    assert!(store.unfinished_inbound().unwrap().is_empty());
}

#[test]
fn accept_inbound_dedupes_and_records_together() {
    let (_dir, store) = common::store();
    let msg = common::inbound("$Ev:Example.org", Some("agent:main:main"));
    let id = store.accept_inbound(&msg, 100, 60_000).unwrap().expect("first delivery accepted");
    assert_eq!(store.accept_inbound(&msg, 101, 60_000).unwrap(), None);
    let unfinished = store.unfinished_inbound().unwrap();
    assert_eq!(unfinished.len(), 1, "the duplicate got no ledger row");
    assert_eq!(unfinished[0].id, id);
    assert_eq!(unfinished[0].session_key.as_deref(), Some("agent:main:main"));
}
