//! The outbox: ordering per target, idempotency, status transitions, run commits, recovery.

mod common;

use pincer_core::{AccountId, ChannelId};
use pincer_store::{NewOutbox, OutboxCounts, OutboxStatus, Outcome, Role, RunCommit, StoreError};
use std::collections::BTreeMap;

const KEY: &str = "agent:main:matrix:channel:!AbC:Example.org";
const ROOM: &str = "!AbC:Example.org";

fn row(to: &str, text: &str) -> NewOutbox {
    NewOutbox::new(common::target(to, None), text)
}

fn ids(rows: &[pincer_store::OutboxRow]) -> Vec<i64> {
    rows.iter().map(|r| r.id).collect()
}

#[test]
fn enqueue_and_claim_round_trip_preserves_the_target() {
    let (_dir, store) = common::store();
    let mut target = common::target(ROOM, Some("$Root:Example.org"));
    target.reply_to_id = Some("$Msg:Example.org".into());
    let e = store.enqueue_outbox(&NewOutbox::new(target.clone(), "hello"), 100).unwrap();
    assert!(e.created);
    assert_eq!(store.next_due_at().unwrap(), Some(100));

    let claimed = store.claim_due(100, 10).unwrap();
    assert_eq!(claimed.len(), 1);
    let r = &claimed[0];
    assert_eq!(r.id, e.id);
    assert_eq!(r.target, target);
    assert_eq!(r.status, OutboxStatus::Sending);
    assert_eq!(r.attempts, 1);
    assert_eq!(r.text, "hello");
    assert_eq!(r.order_key, target.order_key());
    assert_eq!(store.next_due_at().unwrap(), None);
    assert!(store.claim_due(100, 10).unwrap().is_empty(), "claimed rows are not claimed twice");
}

#[test]
fn rows_for_one_target_are_delivered_strictly_in_order() {
    let (_dir, store) = common::store();
    let a1 = store.enqueue_outbox(&row("!A:x", "a1"), 1).unwrap().id;
    let a2 = store.enqueue_outbox(&row("!A:x", "a2"), 1).unwrap().id;
    let b1 = store.enqueue_outbox(&row("!B:x", "b1"), 1).unwrap().id;
    let a3 = store.enqueue_outbox(&row("!A:x", "a3"), 1).unwrap().id;
    // Same room, different case: a different target, its own lane.
    let lower = store.enqueue_outbox(&row("!a:x", "lower"), 1).unwrap().id;

    let first = store.claim_due(10, 100).unwrap();
    assert_eq!(ids(&first), vec![a1, b1, lower]);
    // Nothing more while the heads are in flight.
    assert!(store.claim_due(10, 100).unwrap().is_empty());

    // a1 fails transiently: a2 must still wait, even once a1 is backing off.
    store.mark_retry(a1, "502", 50, 10).unwrap();
    assert!(store.claim_due(20, 100).unwrap().is_empty(), "a2 may not overtake a1");
    assert_eq!(store.next_due_at().unwrap(), Some(50));
    let retry = store.claim_due(50, 100).unwrap();
    assert_eq!(ids(&retry), vec![a1]);
    assert_eq!(retry[0].attempts, 2);
    assert_eq!(retry[0].last_error.as_deref(), Some("502"));

    store.mark_sent(a1, Some("$sent1"), 51).unwrap();
    assert_eq!(ids(&store.claim_due(51, 100).unwrap()), vec![a2]);
    store.mark_sent(a2, None, 52).unwrap();
    assert_eq!(ids(&store.claim_due(52, 100).unwrap()), vec![a3]);
    store.mark_sent(a3, None, 53).unwrap();
    store.mark_sent(b1, None, 53).unwrap();
    store.mark_sent(lower, None, 53).unwrap();
    assert!(store.claim_due(100, 100).unwrap().is_empty());
    assert_eq!(store.outbox_counts().unwrap(), OutboxCounts { sent: 5, ..OutboxCounts::default() });
}

#[test]
fn threads_are_separate_lanes_and_claim_respects_limit_and_due_time() {
    let (_dir, store) = common::store();
    let t1 = NewOutbox::new(common::target("!A:x", Some("$t1")), "in t1");
    let t2 = NewOutbox::new(common::target("!A:x", Some("$t2")), "in t2");
    let mut later = NewOutbox::new(common::target("!C:x", None), "later");
    later.not_before = Some(500);
    let id1 = store.enqueue_outbox(&t1, 1).unwrap().id;
    let id2 = store.enqueue_outbox(&t2, 2).unwrap().id;
    let id3 = store.enqueue_outbox(&later, 3).unwrap().id;

    assert_eq!(ids(&store.claim_due(10, 1).unwrap()), vec![id1]);
    assert_eq!(ids(&store.claim_due(10, 1).unwrap()), vec![id2]);
    assert!(store.claim_due(10, 10).unwrap().is_empty());
    assert_eq!(store.next_due_at().unwrap(), Some(500));
    assert_eq!(ids(&store.claim_due(500, 10).unwrap()), vec![id3]);
}

#[test]
fn idempotency_key_returns_the_existing_row() {
    let (_dir, store) = common::store();
    let first = store.enqueue_outbox(&row("!A:x", "one").with_idempotency_key("run-1:0"), 1).unwrap();
    let again = store.enqueue_outbox(&row("!A:x", "two").with_idempotency_key("run-1:0"), 2).unwrap();
    assert!(first.created);
    assert!(!again.created);
    assert_eq!(first.id, again.id);
    let other = store.enqueue_outbox(&row("!A:x", "three").with_idempotency_key("run-1:1"), 3).unwrap();
    assert!(other.created);
    // Rows without a key never collide.
    let n1 = store.enqueue_outbox(&row("!A:x", "n1"), 4).unwrap();
    let n2 = store.enqueue_outbox(&row("!A:x", "n2"), 4).unwrap();
    assert!(n1.created && n2.created && n1.id != n2.id);
    assert_eq!(store.get_outbox(first.id).unwrap().unwrap().text, "one");
    assert_eq!(store.list_outbox(None, 100).unwrap().len(), 4);
}

#[test]
fn status_transitions_are_checked() {
    let (_dir, store) = common::store();
    let a = store.enqueue_outbox(&row("!A:x", "a"), 1).unwrap().id;
    let b = store.enqueue_outbox(&row("!B:x", "b"), 1).unwrap().id;
    let c = store.enqueue_outbox(&row("!C:x", "c"), 1).unwrap().id;

    // Only claimed rows can be sent, retried or become unknown.
    let err = store.mark_sent(a, None, 2).unwrap_err();
    assert!(
        matches!(err, StoreError::InvalidTransition { id, from: OutboxStatus::Pending, to: OutboxStatus::Sent } if id == a),
        "{err:?}"
    );
    assert!(matches!(store.mark_retry(a, "x", 5, 2), Err(StoreError::InvalidTransition { .. })));
    assert!(matches!(store.mark_unknown(a, "x", 2), Err(StoreError::InvalidTransition { .. })));
    assert!(matches!(store.mark_sent(9_999, None, 2), Err(StoreError::NotFound { .. })));

    assert_eq!(store.claim_due(2, 10).unwrap().len(), 3);
    store.mark_failed(a, "403 forbidden", 3).unwrap();
    store.mark_unknown(b, "timeout after write", 3).unwrap();
    store.mark_sent(c, Some("p-1"), 3).unwrap();

    let a_row = store.get_outbox(a).unwrap().unwrap();
    assert_eq!(a_row.status, OutboxStatus::Failed);
    assert_eq!(a_row.last_error.as_deref(), Some("403 forbidden"));
    let b_row = store.get_outbox(b).unwrap().unwrap();
    assert_eq!(b_row.status, OutboxStatus::Unknown);
    let c_row = store.get_outbox(c).unwrap().unwrap();
    assert_eq!(c_row.status, OutboxStatus::Sent);
    assert_eq!(c_row.platform_message_id.as_deref(), Some("p-1"));
    assert_eq!(c_row.sent_at, Some(3));

    // Terminal states stay terminal, except that an unknown row may be reconciled later.
    assert!(matches!(store.mark_retry(a, "x", 5, 4), Err(StoreError::InvalidTransition { .. })));
    assert!(matches!(store.mark_sent(a, None, 4), Err(StoreError::InvalidTransition { .. })));
    assert!(matches!(store.mark_failed(c, "x", 4), Err(StoreError::InvalidTransition { .. })));
    store.mark_sent(b, Some("found-it"), 5).unwrap();
    assert_eq!(store.get_outbox(b).unwrap().unwrap().status, OutboxStatus::Sent);

    // A pending row can be given up without being claimed (operator cancel).
    let d = store.enqueue_outbox(&row("!D:x", "d"), 6).unwrap().id;
    store.mark_failed(d, "cancelled", 6).unwrap();
    assert!(store.claim_due(100, 10).unwrap().is_empty());

    let counts = store.outbox_counts().unwrap();
    assert_eq!(counts, OutboxCounts { sent: 2, failed: 2, ..OutboxCounts::default() });
    assert_eq!(ids(&store.list_outbox(Some(OutboxStatus::Failed), 10).unwrap()), vec![d, a]);
}

#[test]
fn failed_or_unknown_head_unblocks_the_next_row() {
    let (_dir, store) = common::store();
    let a1 = store.enqueue_outbox(&row("!A:x", "1"), 1).unwrap().id;
    let a2 = store.enqueue_outbox(&row("!A:x", "2"), 1).unwrap().id;
    let a3 = store.enqueue_outbox(&row("!A:x", "3"), 1).unwrap().id;
    assert_eq!(ids(&store.claim_due(1, 10).unwrap()), vec![a1]);
    store.mark_failed(a1, "gave up", 2).unwrap();
    assert_eq!(ids(&store.claim_due(2, 10).unwrap()), vec![a2]);
    store.mark_unknown(a2, "cannot tell", 3).unwrap();
    assert_eq!(ids(&store.claim_due(3, 10).unwrap()), vec![a3]);
}

#[test]
fn sending_rows_are_recovered_after_reopen_not_resent() {
    let (dir, store) = common::store();
    let a1 = store.enqueue_outbox(&row("!A:x", "1"), 1).unwrap().id;
    let a2 = store.enqueue_outbox(&row("!A:x", "2"), 1).unwrap().id;
    let b1 = store.enqueue_outbox(&row("!B:x", "b"), 1).unwrap().id;
    assert_eq!(ids(&store.claim_due(1, 10).unwrap()), vec![a1, b1]);
    store.mark_sent(b1, None, 2).unwrap();
    // "Crash" between the send and mark_sent of a1.
    drop(store);

    let store = common::reopen(dir.path());
    let in_flight = store.recover_in_flight().unwrap();
    assert_eq!(ids(&in_flight), vec![a1]);
    assert_eq!(in_flight[0].status, OutboxStatus::Sending);
    // Neither a1 nor anything behind it is claimed while a1's fate is unknown.
    assert!(store.claim_due(1_000, 10).unwrap().is_empty());
    assert_eq!(store.outbox_counts().unwrap().sending, 1);

    // The runtime cannot reconcile it: unknown, and the lane moves on.
    store.mark_unknown(a1, "interrupted by restart; not found on platform", 1_001).unwrap();
    assert!(store.recover_in_flight().unwrap().is_empty());
    assert_eq!(ids(&store.claim_due(1_001, 10).unwrap()), vec![a2]);
}

#[test]
fn recovered_row_proven_absent_can_be_retried() {
    let (dir, store) = common::store();
    let a1 = store.enqueue_outbox(&row("!A:x", "1"), 1).unwrap().id;
    store.claim_due(1, 10).unwrap();
    drop(store);
    let store = common::reopen(dir.path());
    assert_eq!(ids(&store.recover_in_flight().unwrap()), vec![a1]);
    store.mark_retry(a1, "not on platform after restart", 5, 2).unwrap();
    assert_eq!(ids(&store.claim_due(5, 10).unwrap()), vec![a1]);
}

#[test]
fn empty_destination_is_refused() {
    let (_dir, store) = common::store();
    let err = store.enqueue_outbox(&row("", "x"), 1).unwrap_err();
    assert!(matches!(err, StoreError::InvalidInput { .. }), "{err:?}");
    assert!(store.list_outbox(None, 10).unwrap().is_empty());
}

#[test]
fn mark_sent_records_thread_participation() {
    let (_dir, store) = common::store();
    let target = common::target(ROOM, Some("$Root"));
    let id = store.enqueue_outbox(&NewOutbox::new(target.clone(), "hi"), 1).unwrap().id;
    store.claim_due(1, 10).unwrap();
    let (ch, acc) = (&target.channel, &target.account);
    assert!(!store.participated(ch, acc, ROOM, "$Root", 0).unwrap());
    store.mark_sent(id, Some("$reply"), 1_000).unwrap();
    assert!(store.participated(ch, acc, ROOM, "$Root", 1_000).unwrap());
    assert!(!store.participated(ch, acc, ROOM, "$Root", 1_001).unwrap(), "older than since_ms");
    assert!(!store.participated(ch, acc, &ROOM.to_lowercase(), "$Root", 0).unwrap());
}

#[test]
fn thread_participation_touch_and_prune() {
    let (_dir, store) = common::store();
    let (ch, acc) = (ChannelId::new("mattermost"), AccountId::new("default"));
    store.touch_thread(&ch, &acc, "chan1", "root1", 100).unwrap();
    store.touch_thread(&ch, &acc, "chan1", "root1", 50).unwrap(); // older touch keeps 100
    assert!(store.participated(&ch, &acc, "chan1", "root1", 100).unwrap());
    store.touch_thread(&ch, &acc, "chan1", "root2", 10).unwrap();
    assert_eq!(store.prune_threads(60).unwrap(), 1);
    assert!(!store.participated(&ch, &acc, "chan1", "root2", 0).unwrap());
    assert!(store.participated(&ch, &acc, "chan1", "root1", 0).unwrap());
}

#[test]
fn commit_reply_writes_transcript_outbox_and_outcome_together() {
    let (dir, store) = common::store();
    common::session(&store, KEY, ROOM, 1);
    let inbound = store.accept_inbound(&common::inbound("$q", Some(KEY)), 2, 60_000).unwrap().unwrap();
    store.append_transcript(KEY, Role::User, "question", None, 2).unwrap();

    let chunks = vec![row(ROOM, "part 1"), row(ROOM, "part 2")];
    let done = store.commit_reply(KEY, Some(inbound), Some("run-7"), "part 1part 2", chunks, 3).unwrap();
    assert_eq!(done.transcript_seqs, vec![2]);
    assert_eq!(done.outbox.len(), 2);
    drop(store);

    let store = common::reopen(dir.path());
    let row = store.get_inbound(inbound).unwrap().unwrap();
    assert_eq!(row.outcome, Some(Outcome::Replied));
    let transcript = store.transcript(KEY, 10).unwrap();
    assert_eq!(transcript[1].role, Role::Assistant);
    assert_eq!(transcript[1].run_id.as_deref(), Some("run-7"));
    let out = store.claim_due(3, 10).unwrap();
    assert_eq!(out.len(), 1, "second chunk waits for the first");
    assert_eq!(out[0].text, "part 1");
    assert_eq!(out[0].inbound_id, Some(inbound));
    assert_eq!(out[0].session_key.as_deref(), Some(KEY));
    assert_eq!(out[0].run_id.as_deref(), Some("run-7"));
    assert_eq!(store.get_session(KEY).unwrap().unwrap().last_run_at, Some(3));
}

#[test]
fn commit_reply_is_all_or_nothing() {
    let (_dir, store) = common::store();
    common::session(&store, KEY, ROOM, 1);
    let inbound = store.record_inbound(&common::inbound("$q", Some(KEY)), 2).unwrap();

    // The second outbox row is invalid: nothing of the commit may remain.
    let bad = vec![row(ROOM, "ok"), row("", "no destination")];
    let err = store.commit_reply(KEY, Some(inbound), Some("r"), "answer", bad, 3).unwrap_err();
    assert!(matches!(err, StoreError::InvalidInput { .. }), "{err:?}");
    assert!(store.transcript(KEY, 10).unwrap().is_empty());
    assert!(store.list_outbox(None, 10).unwrap().is_empty());
    assert_eq!(store.get_inbound(inbound).unwrap().unwrap().outcome, None);

    // Unknown session: nothing written either, and the outcome can still be recorded.
    let err =
        store.commit_reply("agent:main:ghost", Some(inbound), None, "answer", vec![row(ROOM, "x")], 4).unwrap_err();
    assert!(matches!(err, StoreError::NoSuchSession { .. }), "{err:?}");
    assert!(store.list_outbox(None, 10).unwrap().is_empty());
    assert_eq!(store.get_inbound(inbound).unwrap().unwrap().outcome, None);

    // A message that already has an outcome cannot get a reply afterwards.
    store.finish_inbound(inbound, Outcome::Failed, Some("timeout"), 5).unwrap();
    let err = store.commit_reply(KEY, Some(inbound), None, "late answer", vec![row(ROOM, "late")], 6).unwrap_err();
    assert!(matches!(err, StoreError::AlreadyFinished { outcome: Outcome::Failed, .. }), "{err:?}");
    assert!(store.transcript(KEY, 10).unwrap().is_empty());
    assert!(store.list_outbox(None, 10).unwrap().is_empty());
}

#[test]
fn commit_silent_and_failed_record_their_outcomes() {
    let (_dir, store) = common::store();
    common::session(&store, KEY, ROOM, 1);
    let quiet = store.record_inbound(&common::inbound("q1", Some(KEY)), 2).unwrap();
    let broken = store.record_inbound(&common::inbound("q2", Some(KEY)), 2).unwrap();

    let done = store.commit_silent(KEY, Some(quiet), Some("r1"), "NO_REPLY", 3).unwrap();
    assert!(done.transcript_seqs.is_empty() && done.outbox.is_empty());
    let notice = vec![row(ROOM, "Sorry, something went wrong.")];
    store.commit_failed(KEY, Some(broken), Some("r2"), "provider 500", notice, 4).unwrap();

    let q = store.get_inbound(quiet).unwrap().unwrap();
    assert_eq!((q.outcome, q.reason.as_deref()), (Some(Outcome::Silent), Some("NO_REPLY")));
    let b = store.get_inbound(broken).unwrap().unwrap();
    assert_eq!((b.outcome, b.reason.as_deref()), (Some(Outcome::Failed), Some("provider 500")));
    let t = store.transcript(KEY, 10).unwrap();
    assert_eq!(t.len(), 1);
    assert_eq!((t[0].role, t[0].text.as_str()), (Role::Error, "provider 500"));
    assert!(store.history_for_run(KEY, 10).unwrap().is_empty());
    assert_eq!(store.outbox_counts().unwrap().pending, 1);
    assert!(store.unfinished_inbound().unwrap().is_empty());
}

#[test]
fn commit_batch_isolates_failing_items() {
    let (_dir, store) = common::store();
    common::session(&store, KEY, ROOM, 1);
    let i1 = store.record_inbound(&common::inbound("m1", Some(KEY)), 2).unwrap();
    let i2 = store.record_inbound(&common::inbound("m2", Some(KEY)), 2).unwrap();
    let i3 = store.record_inbound(&common::inbound("m3", Some(KEY)), 2).unwrap();
    let commits = vec![
        RunCommit::reply(KEY, Some(i1), Some("r1"), "a1", vec![row(ROOM, "a1")]),
        RunCommit::reply("agent:main:ghost", Some(i2), Some("r2"), "a2", vec![row(ROOM, "a2")]),
        RunCommit::silent(KEY, Some(i3), Some("r3"), "NO_REPLY"),
        RunCommit::reply(KEY, Some(i1), Some("r1b"), "dup", vec![row(ROOM, "dup")]),
    ];
    let results = store.commit_batch(&commits, 3).unwrap();
    assert!(results[0].is_ok());
    assert!(matches!(results[1], Err(StoreError::NoSuchSession { .. })));
    assert!(results[2].is_ok());
    assert!(matches!(results[3], Err(StoreError::AlreadyFinished { .. })));

    assert_eq!(store.get_inbound(i1).unwrap().unwrap().outcome, Some(Outcome::Replied));
    assert_eq!(store.get_inbound(i2).unwrap().unwrap().outcome, None);
    assert_eq!(store.get_inbound(i3).unwrap().unwrap().outcome, Some(Outcome::Silent));
    let texts: Vec<_> = store.list_outbox(None, 10).unwrap().into_iter().map(|r| r.text).collect();
    assert_eq!(texts, vec!["a1".to_string()]);
    assert_eq!(store.transcript(KEY, 10).unwrap().len(), 1);
}

#[test]
fn group_transaction_commits_everything_or_nothing() {
    let (_dir, store) = common::store();
    common::session(&store, KEY, ROOM, 1);
    let result: Result<(), StoreError> = store.transaction(|tx| {
        let id = tx.accept_inbound(&common::inbound("g1", Some(KEY)), 2, 1_000)?.unwrap();
        tx.append_transcript(KEY, Role::User, "hello", None, 2)?;
        tx.commit_run(&RunCommit::reply(KEY, Some(id), None, "hi", vec![row(ROOM, "hi")]), 2)?;
        Err(StoreError::InvalidInput { detail: "caller aborts".into() })
    });
    assert!(result.is_err());
    assert!(store.transcript(KEY, 10).unwrap().is_empty());
    assert!(store.unfinished_inbound().unwrap().is_empty());
    assert!(store.list_outbox(None, 10).unwrap().is_empty());
    // The dedupe entry was rolled back too, so the message is still acceptable.
    let (ch, acc) = (ChannelId::new("matrix"), AccountId::new("Work"));
    assert!(store.dedupe_check_and_insert(&ch, &acc, "g1", 3, 1_000).unwrap());
}

#[test]
fn prune_finished_keeps_open_work() {
    let (_dir, store) = common::store();
    common::session(&store, KEY, ROOM, 1);
    let old_in = store.record_inbound(&common::inbound("old", Some(KEY)), 10).unwrap();
    let open_in = store.record_inbound(&common::inbound("open", Some(KEY)), 11).unwrap();
    store.commit_reply(KEY, Some(old_in), None, "r", vec![row("!A:x", "old")], 12).unwrap();
    let pending_old = store.enqueue_outbox(&row("!B:x", "still pending"), 13).unwrap().id;
    let sent = store.claim_due(20, 10).unwrap();
    for r in &sent {
        if r.id != pending_old {
            store.mark_sent(r.id, None, 21).unwrap();
        } else {
            store.mark_retry(r.id, "later", 10_000, 21).unwrap();
        }
    }
    let young = store.enqueue_outbox(&row("!C:x", "young"), 500).unwrap().id;

    let stats = store.prune_finished(100).unwrap();
    assert_eq!(stats.inbound, 1);
    assert_eq!(stats.outbox, 1);
    assert!(store.get_inbound(old_in).unwrap().is_none());
    assert!(store.get_inbound(open_in).unwrap().is_some());
    assert!(store.get_outbox(pending_old).unwrap().is_some());
    assert!(store.get_outbox(young).unwrap().is_some());
}

#[test]
fn prune_keeps_the_newest_row_so_ids_are_never_reused() {
    let (_dir, store) = common::store();
    let a = store.enqueue_outbox(&row("!A:x", "a"), 1).unwrap().id;
    let b = store.enqueue_outbox(&row("!B:x", "b"), 1).unwrap().id;
    for r in store.claim_due(1, 10).unwrap() {
        store.mark_sent(r.id, None, 2).unwrap();
    }
    let i1 = store.record_inbound(&common::inbound("m1", None), 1).unwrap();
    let i2 = store.record_inbound(&common::inbound("m2", None), 1).unwrap();
    store.finish_inbound(i1, Outcome::Silent, None, 2).unwrap();
    store.finish_inbound(i2, Outcome::Silent, None, 2).unwrap();

    let stats = store.prune_finished(1_000_000).unwrap();
    assert_eq!((stats.outbox, stats.inbound), (1, 1));
    assert!(store.get_outbox(a).unwrap().is_none());
    assert!(store.get_outbox(b).unwrap().is_some(), "newest row kept");
    assert!(store.get_inbound(i2).unwrap().is_some(), "newest row kept");
    assert!(store.enqueue_outbox(&row("!C:x", "c"), 3).unwrap().id > b);
    assert!(store.record_inbound(&common::inbound("m3", None), 3).unwrap() > i2);
}

/// Drive the outbox through a long pseudo-random schedule and compare every claim with a
/// simple model: per order key, only the lowest open row may be claimed, when due.
#[test]
fn claims_match_a_simple_model() {
    let (_dir, store) = common::store();
    #[derive(Clone, Copy, PartialEq, Debug)]
    enum S {
        Pending,
        Sending,
        Done,
    }
    struct M {
        lane: u64,
        status: S,
        due: i64,
    }
    let mut model: BTreeMap<i64, M> = BTreeMap::new();
    let mut seed: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let mut now = 0i64;
    for _step in 0..400 {
        now += 1;
        for _ in 0..(next() % 4) {
            let lane = next() % 5;
            let id = store.enqueue_outbox(&row(&format!("!L{lane}:x"), "m"), now).unwrap().id;
            model.insert(id, M { lane, status: S::Pending, due: now });
        }
        // Expected: lowest open row per lane, if pending and due.
        let mut heads: BTreeMap<u64, i64> = BTreeMap::new();
        for (id, m) in &model {
            if m.status != S::Done {
                heads.entry(m.lane).or_insert(*id);
            }
        }
        let mut expected: Vec<i64> =
            heads.values().copied().filter(|id| model[id].status == S::Pending && model[id].due <= now).collect();
        expected.sort();
        let mut got = ids(&store.claim_due(now, 100).unwrap());
        got.sort();
        assert_eq!(got, expected, "claim at t={now}");
        for id in got {
            model.get_mut(&id).unwrap().status = S::Sending;
            match next() % 4 {
                0 => {
                    let due = now + (next() % 5) as i64;
                    store.mark_retry(id, "flaky", due, now).unwrap();
                    let m = model.get_mut(&id).unwrap();
                    m.status = S::Pending;
                    m.due = due;
                }
                1 => {
                    store.mark_failed(id, "no", now).unwrap();
                    model.get_mut(&id).unwrap().status = S::Done;
                }
                2 => {
                    store.mark_unknown(id, "?", now).unwrap();
                    model.get_mut(&id).unwrap().status = S::Done;
                }
                _ => {
                    store.mark_sent(id, None, now).unwrap();
                    model.get_mut(&id).unwrap().status = S::Done;
                }
            }
        }
        let mut heads_after: BTreeMap<u64, i64> = BTreeMap::new();
        for (id, m) in &model {
            if m.status != S::Done {
                heads_after.entry(m.lane).or_insert(*id);
            }
        }
        let expected_next =
            heads_after.values().filter(|id| model[id].status == S::Pending).map(|id| model[id].due).min();
        assert_eq!(store.next_due_at().unwrap(), expected_next, "next_due_at at t={now}");
    }
}

#[test]
fn store_is_shared_across_threads() {
    let (_dir, store) = common::store();
    let store = std::sync::Arc::new(store);
    common::session(&store, KEY, ROOM, 1);
    let handles: Vec<_> = (0..4)
        .map(|t| {
            let store = store.clone();
            std::thread::spawn(move || {
                for i in 0..50 {
                    store.enqueue_outbox(&row(&format!("!T{t}:x"), &format!("{i}")), 1).unwrap();
                    store.append_transcript(KEY, Role::User, "x", None, 1).unwrap();
                    store.transcript(KEY, 5).unwrap();
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    assert_eq!(store.outbox_counts().unwrap().pending, 200);
    let t = store.transcript(KEY, 1_000).unwrap();
    assert_eq!(t.iter().map(|e| e.seq).collect::<Vec<_>>(), (1..=200).collect::<Vec<_>>());
}
