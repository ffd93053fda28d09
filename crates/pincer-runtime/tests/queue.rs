//! Session queue modes (`followup`, `collect`, `interrupt`), the queue cap with drop-oldest,
//! and the global `maxConcurrent` run cap, driven through `GatewayHandle::submit` against the
//! fake LLM.

mod common;

use common::{msgs, Harness};
use pincer_core::config::QueueMode;
use pincer_runtime::runs::{RunInfo, RunStatus};
use pincer_store::Role;
use pincer_testkit::Behaviour;
use std::time::Duration;

/// A reply that streams for about `chars × gap` of real time (~3 s for "first answer"): long
/// enough to queue messages behind it even on a loaded CI machine, and a precondition assert
/// checks it really was still running.
fn slow(text: &str) -> Behaviour {
    Behaviour::SlowStream { text: text.into(), gap: Duration::from_millis(250) }
}

fn assert_status(h: &Harness, run_id: &str, want: RunStatus, why: &str) {
    let info = h.gw.run_info(run_id).unwrap_or_else(|| panic!("run {run_id} unknown"));
    assert_eq!(info.status, want, "{why}: {info:?}");
}

/// The run started only after `prev` ended (ms clock, so equal is allowed).
fn assert_after(prev: &RunInfo, next: &RunInfo) {
    let (ended, started) = (prev.ended_at.expect("ended_at"), next.started_at.expect("started_at"));
    assert!(started >= ended, "run {} started at {started}, before run {} ended at {ended}", next.run_id, prev.run_id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn followup_runs_queued_messages_after_the_active_one_in_order_each_as_its_own_turn() {
    let h = Harness::start(|_| {}).await;
    h.push(slow("first answer"));
    let r1 = h.submit("s", "first question").await;
    h.wait_requests(1).await;
    let r2 = h.submit("s", "second question").await;
    let r3 = h.submit("s", "third question").await;
    assert_status(&h, &r1.run_id, RunStatus::Running, "precondition: run 1 still streams while 2 and 3 queue");
    assert_status(&h, &r3.run_id, RunStatus::Queued, "run 3 waits behind run 1");

    let i1 = h.wait_run(&r1.run_id).await;
    let i2 = h.wait_run(&r2.run_id).await;
    let i3 = h.wait_run(&r3.run_id).await;
    for (info, text) in [(&i1, "first answer"), (&i2, "fake: second question"), (&i3, "fake: third question")] {
        assert_eq!(info.status, RunStatus::Ok, "{info:?}");
        assert_eq!(info.text.as_deref(), Some(text));
    }
    assert_after(&i1, &i2);
    assert_after(&i2, &i3);
    assert_eq!(h.fake.request_count(), 3, "one model call per message");

    // The transcript keeps user messages in arrival order (they are recorded when accepted)
    // and each reply after its own question, replies in run order.
    let t = h.transcript(r1.session_key.as_str());
    let pos = |role: Role, run: &str| {
        t.iter()
            .position(|(r, _, id)| *r == role && id.as_deref() == Some(run))
            .unwrap_or_else(|| panic!("no {role} entry for {run} in {t:?}"))
    };
    let users: Vec<_> = [&r1, &r2, &r3].iter().map(|r| pos(Role::User, &r.run_id)).collect();
    let replies: Vec<_> = [&r1, &r2, &r3].iter().map(|r| pos(Role::Assistant, &r.run_id)).collect();
    assert!(users.windows(2).all(|w| w[0] < w[1]), "user entries out of order: {t:?}");
    assert!(replies.windows(2).all(|w| w[0] < w[1]), "replies out of order: {t:?}");
    assert!(users.iter().zip(&replies).all(|(u, a)| u < a), "a reply before its question: {t:?}");
    assert_eq!(t.len(), 6, "three questions and three answers: {t:?}");
    for r in [&r1, &r2, &r3] {
        assert_eq!(h.outcome(&r.run_id).as_deref(), Some("replied"));
    }

    // Each turn is its own model call, and sees the conversation so far: every earlier
    // question with its answer, then its own question.
    assert_eq!(h.request_messages(0), msgs(&[("user", "first question")]));
    assert_eq!(
        h.request_messages(1),
        msgs(&[("user", "first question"), ("assistant", "first answer"), ("user", "second question")]),
        "turn 2 must see the reply to turn 1"
    );
    assert_eq!(
        h.request_messages(2),
        msgs(&[
            ("user", "first question"),
            ("assistant", "first answer"),
            ("user", "second question"),
            ("assistant", "fake: second question"),
            ("user", "third question"),
        ]),
        "turn 3 must see the replies to turns 1 and 2"
    );

    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn collect_merges_messages_queued_during_a_run_into_one_turn() {
    let h = Harness::start(|c| {
        c.messages.queue.mode = QueueMode::Collect;
        c.messages.queue.debounce_ms = 50;
    })
    .await;
    h.push(slow("first answer"));
    let r1 = h.submit("s", "first question").await;
    h.wait_requests(1).await;
    let mut queued = Vec::new();
    for t in ["apples", "bananas", "cherries"] {
        queued.push(h.submit("s", t).await);
    }
    assert_status(&h, &r1.run_id, RunStatus::Running, "precondition: run 1 still streams while 2..4 queue");

    assert_eq!(h.wait_run(&r1.run_id).await.status, RunStatus::Ok);
    let mut infos: Vec<RunInfo> = Vec::new();
    for r in &queued {
        infos.push(h.wait_run(&r.run_id).await);
    }
    assert_eq!(h.fake.request_count(), 2, "the three queued messages are one model call");
    for info in &infos {
        assert_eq!(info.status, RunStatus::Ok, "{info:?}");
        assert_eq!(info.text, infos[2].text, "merged runs share the merged turn's reply");
    }
    for r in &queued {
        assert_eq!(h.outcome(&r.run_id).as_deref(), Some("replied"));
    }

    let replies = h.transcript(r1.session_key.as_str()).into_iter().filter(|(r, _, _)| *r == Role::Assistant).count();
    assert_eq!(replies, 2, "one reply for run 1, one for the merged turn");

    let seen = h.request_messages(1);
    let (role, last) = seen.last().expect("a user message");
    assert_eq!(role, "user");
    let at = |t: &str| last.find(t).unwrap_or_else(|| panic!("{t:?} missing from the merged turn {last:?}"));
    assert!(at("apples") < at("bananas") && at("bananas") < at("cherries"), "merged out of order: {last:?}");
    // The model sees the conversation once: the first exchange, then each queued text once.
    assert_eq!(&seen[..2], &msgs(&[("user", "first question"), ("assistant", "first answer")])[..], "{seen:?}");
    for t in ["apples", "bananas", "cherries"] {
        let n = seen.iter().filter(|(_, c)| c.contains(t)).count();
        assert_eq!(n, 1, "{t:?} sent {n} times to the model: {seen:?}");
    }
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interrupt_aborts_the_active_run_and_runs_the_newest_message() {
    let h = Harness::start(|c| c.messages.queue.mode = QueueMode::Interrupt).await;
    h.push(Behaviour::Hang);
    let r1 = h.submit("s", "first question").await;
    h.wait_requests(1).await;
    let r2 = h.submit("s", "never mind, this instead").await;

    let i1 = h.wait_run(&r1.run_id).await;
    assert_eq!(i1.status, RunStatus::Aborted, "{i1:?}");
    let i2 = h.wait_run(&r2.run_id).await;
    assert_eq!(i2.status, RunStatus::Ok, "{i2:?}");
    assert_eq!(i2.text.as_deref(), Some("fake: never mind, this instead"));
    assert_after(&i1, &i2);
    assert_eq!(h.fake.request_count(), 2);
    assert_eq!(h.outcome(&r1.run_id).as_deref(), Some("silent"), "an aborted run ends silent");
    assert_eq!(h.outcome(&r2.run_id).as_deref(), Some("replied"));
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_cap_drops_the_oldest_queued_messages_and_every_message_gets_one_outcome() {
    let h = Harness::start(|c| c.messages.queue.cap = 2).await;
    h.push(Behaviour::Hang);
    let r1 = h.submit("s", "m1").await;
    h.wait_requests(1).await;
    let mut queued = Vec::new();
    for t in ["m2", "m3", "m4", "m5"] {
        queued.push(h.submit("s", t).await);
    }

    // m4 pushes m2 out, m5 pushes m3 out: the two oldest queued messages fail with the reason.
    for r in &queued[..2] {
        let info = h.wait_run(&r.run_id).await;
        assert_eq!(info.status, RunStatus::Error, "{info:?}");
        assert!(info.error.as_deref().unwrap_or("").contains("queue cap"), "{info:?}");
        let (outcome, reason) = h.ledger(common::INGRESS, &r.run_id);
        assert_eq!(outcome.as_deref(), Some("failed"));
        assert!(reason.unwrap_or_default().contains("queue cap"));
    }
    assert_status(&h, &queued[2].run_id, RunStatus::Queued, "m4 stays queued");
    assert_status(&h, &queued[3].run_id, RunStatus::Queued, "m5 stays queued");

    assert_eq!(h.gw.abort(None, Some(&r1.run_id)), vec![r1.run_id.clone()]);
    assert_eq!(h.wait_run(&r1.run_id).await.status, RunStatus::Aborted);
    for (r, text) in queued[2..].iter().zip(["fake: m4", "fake: m5"]) {
        let info = h.wait_run(&r.run_id).await;
        assert_eq!((info.status, info.text.as_deref()), (RunStatus::Ok, Some(text)), "{info:?}");
    }
    assert_eq!(h.fake.request_count(), 3, "m1, m4, m5 reached the model; m2, m3 never did");

    // Exactly one outcome per accepted message, nothing left open.
    let expected = [(&r1, "silent"), (&queued[0], "failed"), (&queued[1], "failed")]
        .into_iter()
        .chain([(&queued[2], "replied"), (&queued[3], "replied")]);
    for (r, want) in expected {
        assert_eq!(h.outcome(&r.run_id).as_deref(), Some(want), "{}", r.run_id);
    }
    assert_eq!(h.store().unfinished_turns().expect("ledger"), vec![]);
    assert_eq!(h.gw.status()["runs"]["active"], 0);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_concurrent_holds_other_sessions_until_a_permit_frees() {
    let h = Harness::start(|c| c.agents.defaults.max_concurrent = 1).await;
    h.push(Behaviour::Hang);
    let a = h.submit("a", "from a").await;
    h.wait_requests(1).await;
    let b = h.submit("b", "from b").await;

    // The only permit is held by session a: session b's run must not reach the model. There
    // is no event for "did not happen", so watch for the request over a bounded window.
    let early = tokio::time::timeout(Duration::from_millis(300), h.fake.wait_for_requests(2)).await;
    assert!(early.is_err(), "session b reached the model while a held the only run permit");
    assert_status(&h, &b.run_id, RunStatus::Queued, "b waits for a permit");

    assert_eq!(h.gw.abort(None, Some(&a.run_id)), vec![a.run_id.clone()]);
    assert_eq!(h.wait_run(&a.run_id).await.status, RunStatus::Aborted);
    h.wait_requests(2).await;
    let ib = h.wait_run(&b.run_id).await;
    assert_eq!((ib.status, ib.text.as_deref()), (RunStatus::Ok, Some("fake: from b")), "{ib:?}");
    assert_eq!(h.request_messages(1), msgs(&[("user", "from b")]));
    h.stop().await;
}

/// Queue three messages behind a slow run 1 in `mode`, abort the one at index `aborted` by run
/// id while run 1 still streams, and check that it ends `Aborted` (ledger `silent`) without a
/// model call of its own, while the other two are still answered.
async fn check_abort_of_one_queued_run(mode: QueueMode, aborted: usize) {
    let h = Harness::start(|c| {
        c.messages.queue.mode = mode;
        c.messages.queue.debounce_ms = 50;
    })
    .await;
    h.push(slow("first answer"));
    let r1 = h.submit("s", "first question").await;
    h.wait_requests(1).await;
    let texts = ["apples", "bananas", "cherries"];
    let mut queued = Vec::new();
    for t in texts {
        queued.push(h.submit("s", t).await);
    }
    let gone = &queued[aborted].run_id;
    assert_eq!(h.gw.abort(None, Some(gone)), vec![gone.clone()]);
    assert_status(&h, &r1.run_id, RunStatus::Running, "precondition: the abort happened while run 1 streamed");

    assert_eq!(h.wait_run(&r1.run_id).await.status, RunStatus::Ok);
    for (i, r) in queued.iter().enumerate() {
        let info = h.wait_run(&r.run_id).await;
        let (status, ledger) = if i == aborted { (RunStatus::Aborted, "silent") } else { (RunStatus::Ok, "replied") };
        assert_eq!(info.status, status, "{} ({:?}): {info:?}", texts[i], mode);
        assert_eq!(h.outcome(&r.run_id).as_deref(), Some(ledger), "{}", texts[i]);
    }
    // No model call is made for it: it is no call's own (last) user message. (Whether later
    // turns see it as history is not checked here: it is in the transcript.)
    let asked: Vec<String> =
        (0..h.fake.request_count()).map(|i| h.request_messages(i).pop().map(|m| m.1).unwrap_or_default()).collect();
    assert!(!asked.iter().any(|c| c.contains(texts[aborted])), "the aborted message was run: {asked:?}");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn followup_skips_a_queued_run_aborted_by_id() {
    check_abort_of_one_queued_run(QueueMode::Followup, 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn collect_leaves_a_queued_run_aborted_by_id_out_of_the_merge() {
    check_abort_of_one_queued_run(QueueMode::Collect, 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn collect_still_answers_the_others_when_the_newest_queued_run_is_aborted() {
    check_abort_of_one_queued_run(QueueMode::Collect, 2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aborting_a_session_ends_its_active_and_queued_runs() {
    let h = Harness::start(|_| {}).await;
    h.push(Behaviour::Hang);
    let r1 = h.submit("s", "m1").await;
    h.wait_requests(1).await;
    let r2 = h.submit("s", "m2").await;
    let r3 = h.submit("s", "m3").await;
    let key = r1.session_key.as_str().to_string();

    let mut ids = h.gw.abort(Some(&key), None);
    ids.sort();
    let mut want = vec![r1.run_id.clone(), r2.run_id.clone(), r3.run_id.clone()];
    want.sort();
    assert_eq!(ids, want);
    for r in [&r1, &r2, &r3] {
        assert_eq!(h.wait_run(&r.run_id).await.status, RunStatus::Aborted);
        assert_eq!(h.outcome(&r.run_id).as_deref(), Some("silent"));
    }
    assert_eq!(h.fake.request_count(), 1, "queued runs never reached the model");
    assert_eq!(h.store().unfinished_turns().expect("ledger"), vec![]);

    // The session still works afterwards.
    let r4 = h.submit("s", "m4").await;
    let i4 = h.wait_run(&r4.run_id).await;
    assert_eq!((i4.status, i4.text.as_deref()), (RunStatus::Ok, Some("fake: m4")));
    h.stop().await;
}
