//! How a run ends: a reply, a provider failure, a timeout, `NO_REPLY`, a chunked long reply,
//! and a turn cut short by a shutdown and resumed by the next start. Each outcome is checked
//! in the run registry, the transcript, the inbound ledger, the outbox and at the webhook.

mod common;

use common::{msgs, Harness};
use pincer_core::config::WebhookChannelConfig;
use pincer_runtime::runs::RunStatus;
use pincer_runtime::supervisor::StopOutcome;
use pincer_store::Role;
use pincer_testkit::Behaviour;
use std::time::Duration;

/// What a channel turn answered by one scripted model behaviour must leave behind.
struct Expect {
    status: RunStatus,
    /// Inbound ledger outcome.
    ledger: &'static str,
    /// Role of the transcript entry after the user's message (`None`: nothing after it).
    tail: Option<Role>,
    /// Text the webhook receives (substring); `None`: no outbox row at all.
    delivered: Option<&'static str>,
}

/// Submit one channel turn (reply to the webhook, target `room-7`) answered by `behaviour`
/// and check every place its outcome shows up.
async fn check_channel_turn(behaviour: Behaviour, want: Expect) {
    let h = Harness::start(|_| {}).await;
    h.push(behaviour);
    let r = h.submit_to("s", "hello there", "room-7").await;
    let info = h.wait_run(&r.run_id).await;
    assert_eq!(info.status, want.status, "{info:?}");
    assert_eq!(h.fake.request_count(), 1, "no retry and no second model call");
    assert_eq!(h.outcome(&r.run_id).as_deref(), Some(want.ledger));

    let t = h.transcript(r.session_key.as_str());
    assert_eq!((t[0].0, t[0].1.as_str()), (Role::User, "hello there"), "{t:?}");
    assert_eq!(t.get(1).map(|e| e.0), want.tail, "{t:?}");
    assert!(t.len() <= 2, "{t:?}");

    let rows = h.outbox();
    match want.delivered {
        None => assert!(rows.is_empty(), "expected no outbox row: {rows:?}"),
        Some(text) => {
            assert_eq!(rows.len(), 1, "{rows:?}");
            assert_eq!(rows[0].target, common::webhook_target("room-7"));
            let d = h.deliveries(1).await;
            assert!(d[0].text().contains(text), "delivered {:?}, expected it to contain {text:?}", d[0].text());
            assert_eq!(d[0].text(), rows[0].text);
            assert_eq!((common::s(&d[0].body, "channel"), common::s(&d[0].body, "to")), ("webhook", "room-7"));
        }
    }
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_is_committed_and_delivered() {
    let want = Expect {
        status: RunStatus::Ok,
        ledger: "replied",
        tail: Some(Role::Assistant),
        delivered: Some("General Kenobi"),
    };
    check_channel_turn(Behaviour::reply("General Kenobi"), want).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_provider_ends_in_error_with_a_visible_error_reply() {
    let want = Expect { status: RunStatus::Error, ledger: "failed", tail: Some(Role::Error), delivered: Some("Sorry") };
    check_channel_turn(Behaviour::status(400), want).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_reply_is_silent_without_an_outbox_row() {
    let want = Expect { status: RunStatus::Silent, ledger: "silent", tail: None, delivered: None };
    check_channel_turn(Behaviour::reply("NO_REPLY"), want).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_error_records_the_reason_for_the_operator() {
    let h = Harness::start(|_| {}).await;
    h.push(Behaviour::status(400));
    let r = h.submit("s", "hello").await;
    let info = h.wait_run(&r.run_id).await;
    assert_eq!(info.status, RunStatus::Error);
    let error = info.error.unwrap_or_default();
    assert!(error.contains("agent failed") && error.contains("400"), "{error:?}");
    let t = h.transcript(r.session_key.as_str());
    assert_eq!(t.last().map(|e| (e.0, e.1.as_str())), Some((Role::Error, error.as_str())), "{t:?}");
    assert_eq!(h.gw.counters().runs_failed.get(), 1);
    assert!(h.outbox().is_empty(), "a session turn has no outbox rows");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timeout_ends_the_run_and_does_not_wedge_the_session() {
    let h = Harness::start(|c| c.agents.defaults.timeout_seconds = 1).await;
    h.push(Behaviour::Hang);
    let r1 = h.submit_to("s", "first", "room-7").await;
    let i1 = h.wait_run(&r1.run_id).await;
    assert_eq!(i1.status, RunStatus::Timeout, "{i1:?}");
    assert!(i1.error.as_deref().unwrap_or("").contains("timed out"), "{i1:?}");
    assert_eq!(h.outcome(&r1.run_id).as_deref(), Some("failed"));
    let d = h.deliveries(1).await;
    assert!(d[0].text().contains("timed out"), "{:?}", d[0].text());

    let r2 = h.submit("s", "second").await;
    let i2 = h.wait_run(&r2.run_id).await;
    assert_eq!((i2.status, i2.text.as_deref()), (RunStatus::Ok, Some("fake: second")), "{i2:?}");
    let t: Vec<_> = h.transcript(r1.session_key.as_str()).into_iter().map(|e| e.0).collect();
    assert_eq!(t, [Role::User, Role::Error, Role::User, Role::Assistant]);
    // The error entry is for the operator, not the model.
    assert_eq!(h.request_messages(1), msgs(&[("user", "first"), ("user", "second")]));
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_longer_than_the_chunk_limit_is_split_and_delivered_in_order() {
    let limit = 40;
    let h = Harness::start(|c| {
        let url = c.channels.webhook.as_ref().and_then(|w| w.url.clone());
        c.channels.webhook = Some(WebhookChannelConfig { url, text_chunk_limit: Some(limit), ..Default::default() });
    })
    .await;
    let text = "The first sentence is short. The second sentence is a little longer. \
                A third one follows here. And the fourth sentence closes this reply.";
    h.push(Behaviour::reply(text));
    let r = h.submit_to("s", "tell me a story", "room-7").await;
    let info = h.wait_run(&r.run_id).await;
    assert_eq!((info.status, info.text.as_deref()), (RunStatus::Ok, Some(text)));

    let rows = h.outbox();
    assert!(rows.len() >= 3, "{} chars at limit {limit} must give several rows: {rows:?}", text.len());
    for row in &rows {
        assert!(row.text.chars().count() <= limit, "chunk over the limit: {:?}", row.text);
        assert_eq!(row.target, common::webhook_target("room-7"));
    }
    let words: Vec<&str> = rows.iter().flat_map(|r| r.text.split_whitespace()).collect();
    assert_eq!(words, text.split_whitespace().collect::<Vec<_>>(), "chunks must be the reply, in order");

    let delivered = h.deliveries(rows.len()).await;
    let got: Vec<&str> = delivered.iter().map(|d| d.text()).collect();
    let want: Vec<&str> = rows.iter().map(|r| r.text.as_str()).collect();
    assert_eq!(got, want, "delivered out of order");
    let keys: Vec<String> = delivered.iter().map(|d| d.idempotency_key.clone()).collect();
    // Reply rows are exactly-once through the outcome commit, so they carry no key of their
    // own; the receiver gets the row's stable `outbox-<id>` key.
    let want_keys: Vec<String> = rows.iter().map(|row| format!("outbox-{}", row.id)).collect();
    assert_eq!(keys, want_keys);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_turn_cut_short_by_shutdown_is_resumed_and_answered_once_at_the_next_start() {
    let h = Harness::start(|_| {}).await;
    h.push(Behaviour::Hang);
    let r = h.submit_to("s", "are you there?", "room-7").await;
    h.wait_requests(1).await;

    let (stopped, h) = h.restart(Duration::from_secs(5)).await;
    assert_eq!(stopped, StopOutcome::Clean, "the hanging model call must be cancelled by the stop");
    // The new gateway found the open turn in the ledger and runs it again, under the same id.
    let info = h.wait_run(&r.run_id).await;
    assert_eq!((info.status, info.text.as_deref()), (RunStatus::Ok, Some("fake: are you there?")), "{info:?}");
    assert_eq!(h.fake.request_count(), 2, "one call cut short, one answered");
    assert_eq!(h.request_messages(1), msgs(&[("user", "are you there?")]), "the question is not duplicated");

    let t: Vec<_> = h.transcript(r.session_key.as_str()).into_iter().map(|e| (e.0, e.1)).collect();
    assert_eq!(t, [(Role::User, "are you there?".to_string()), (Role::Assistant, "fake: are you there?".to_string())]);
    assert_eq!(h.outcome(&r.run_id).as_deref(), Some("replied"));
    assert_eq!(h.store().unfinished_turns().expect("ledger"), vec![]);
    // The reply target survived the restart through the ledger.
    let rows = h.outbox();
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0].target, common::webhook_target("room-7"));
    let d = h.deliveries(1).await;
    assert_eq!(d[0].text(), "fake: are you there?");

    // A retry of the same idempotency key after the restart is a duplicate, not a new run.
    let again =
        h.gw.submit(pincer_runtime::SubmitTurn {
            session_key: Some("s".into()),
            message: "are you there?".into(),
            idempotency_key: Some(r.run_id.clone()),
            ingress: common::INGRESS.into(),
            ..Default::default()
        })
        .await
        .expect("submit");
    assert!(again.duplicate, "{again:?}");
    assert_eq!(h.fake.request_count(), 2);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn active_and_queued_turns_cut_short_by_shutdown_are_resumed_in_order() {
    let h = Harness::start(|_| {}).await;
    h.push(Behaviour::Hang);
    let r1 = h.submit("s", "first").await;
    h.wait_requests(1).await;
    let r2 = h.submit("s", "second").await;
    let (stopped, h) = h.restart(Duration::from_secs(5)).await;
    assert_eq!(stopped, StopOutcome::Clean);

    let i1 = h.wait_run(&r1.run_id).await;
    let i2 = h.wait_run(&r2.run_id).await;
    assert_eq!((i1.status, i1.text.as_deref()), (RunStatus::Ok, Some("fake: first")), "{i1:?}");
    assert_eq!((i2.status, i2.text.as_deref()), (RunStatus::Ok, Some("fake: second")), "{i2:?}");
    assert!(i2.started_at >= i1.ended_at, "resumed turns must keep their order");
    assert_eq!(h.fake.request_count(), 3, "one call cut short, then one per turn");
    let roles: Vec<Role> = h.transcript(r1.session_key.as_str()).into_iter().map(|e| e.0).collect();
    assert_eq!(roles, [Role::User, Role::User, Role::Assistant, Role::Assistant]);
    assert_eq!(h.store().unfinished_turns().expect("ledger"), vec![]);
    h.stop().await;
}
