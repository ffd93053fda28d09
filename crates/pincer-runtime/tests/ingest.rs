//! Channel ingest: routing, the wake decision, the durable dedupe ledger, exact-case delivery
//! targets, and routing stability across a config reload, through `GatewayHandle::ingest`.

mod common;

use common::{wait_chat_end, Harness};
use pincer_core::config::GroupPolicy;
use pincer_core::wake::{DropReason, MentionGate, WakePolicy};
use pincer_core::{AccountId, Author, ChannelId, ChatKind, Inbound, MentionFacts};
use pincer_runtime::runs::RunStatus;
use pincer_runtime::IngestOutcome;
use pincer_store::Role;

/// A Matrix-style room id: mixed case that must survive routing, storage and delivery.
const ROOM: &str = "!RoOm:Example.org";
/// The session key of [`ROOM`] under the default `per-group` scope.
const ROOM_KEY: &str = "agent:main:webhook:channel:!RoOm:Example.org";

/// A room message on the `webhook` channel's default account.
fn room_message(message_id: &str, text: &str, mentioned: bool) -> Inbound {
    Inbound {
        channel: ChannelId::new("webhook"),
        account: AccountId::default(),
        chat_kind: ChatKind::Channel,
        peer_id: ROOM.into(),
        parent_peer_id: None,
        chat_id: ROOM.into(),
        guild_id: None,
        team_id: None,
        member_roles: vec![],
        thread_id: None,
        author: Author { id: "@Alice:Example.org".into(), ..Default::default() },
        message_id: message_id.into(),
        text: text.into(),
        ts_ms: 0,
        mentions: MentionFacts { native: mentioned, can_detect: true, ..Default::default() },
    }
}

/// An open room that requires a mention (chatmode `oncall`).
fn oncall() -> WakePolicy {
    WakePolicy {
        group_policy: GroupPolicy::Open,
        group_sender_allowed: true,
        gate: MentionGate::Required,
        ..Default::default()
    }
}

fn accepted(outcome: IngestOutcome) -> (String, String) {
    match outcome {
        IngestOutcome::Accepted { run_id, session_key } => (run_id, session_key.as_str().to_string()),
        other => panic!("expected the message to be accepted, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_platform_message_is_run_at_most_once() {
    let h = Harness::start(|_| {}).await;
    let mut events = h.gw.events().subscribe();
    let msg = room_message("$ev1", "@bot hello", true);
    let (run_id, key) = accepted(h.gw.ingest(msg.clone(), &oncall()).await.expect("ingest"));
    assert_eq!(
        h.gw.ingest(msg.clone(), &oncall()).await.expect("ingest"),
        IngestOutcome::Dropped(DropReason::Duplicate)
    );
    assert_eq!(wait_chat_end(&mut events, &run_id).await, "final");
    // Still a duplicate once the first copy is answered: the ledger is durable, not in-flight.
    assert_eq!(h.gw.ingest(msg, &oncall()).await.expect("ingest"), IngestOutcome::Dropped(DropReason::Duplicate));

    assert_eq!(h.fake.request_count(), 1);
    let roles: Vec<Role> = h.transcript(&key).into_iter().map(|e| e.0).collect();
    assert_eq!(roles, [Role::User, Role::Assistant]);
    assert_eq!(h.ledger("webhook", "$ev1").0.as_deref(), Some("replied"));
    let c = h.gw.counters();
    assert_eq!((c.inbound_accepted.get(), c.inbound_duplicate.get(), c.inbound_dropped.get()), (1, 2, 0));
    assert_eq!(h.gw.status()["inbound"]["duplicates"], 2);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_room_message_without_mention_is_dropped_and_leaves_nothing_behind() {
    let h = Harness::start(|_| {}).await;
    let out = h.gw.ingest(room_message("$ev1", "just chatting", false), &oncall()).await.expect("ingest");
    assert_eq!(out, IngestOutcome::Dropped(DropReason::MissingMention));

    let store = h.store();
    assert_eq!(store.get_session(ROOM_KEY).expect("store"), None);
    assert!(store.list_sessions(10).expect("store").is_empty());
    assert_eq!(store.inbound_outcome("webhook", AccountId::DEFAULT, "$ev1").expect("store"), None);
    assert!(store.transcript(ROOM_KEY, 10).expect("store").is_empty());
    assert!(h.outbox().is_empty());
    assert_eq!(h.gw.counters().inbound_dropped.get(), 1);
    assert_eq!(h.gw.counters().inbound_accepted.get(), 0);

    // A drop does not enter the dedupe ledger: the same id with a mention (an edit that adds
    // one, say) is still accepted.
    let mut events = h.gw.events().subscribe();
    let (run_id, _) = accepted(h.gw.ingest(room_message("$ev1", "@bot now?", true), &oncall()).await.expect("ingest"));
    assert_eq!(wait_chat_end(&mut events, &run_id).await, "final");
    assert_eq!(h.fake.request_count(), 1);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replies_go_to_the_exact_case_target_before_and_after_a_reload() {
    let h = Harness::start(|_| {}).await;
    let mut events = h.gw.events().subscribe();
    let target = common::webhook_target(ROOM);

    // Before any reload.
    let (run1, key1) = accepted(h.gw.ingest(room_message("$ev1", "@bot one", true), &oncall()).await.expect("ingest"));
    assert_eq!(key1, ROOM_KEY);
    assert_eq!(wait_chat_end(&mut events, &run1).await, "final");
    let session = h.store().get_session(ROOM_KEY).expect("store").expect("session row");
    assert_eq!(session.target, target);
    let d = h.deliveries(1).await;
    assert_eq!(common::s(&d[0].body, "to"), ROOM);

    // An unrelated hot reload must not change where the same kind of message goes.
    let mut config = h.config.clone();
    config.messages.queue.debounce_ms += 250;
    let report = h.gw.apply_config(config, "reloaded".into(), Vec::new()).await;
    assert_eq!(report.generation, 2);
    assert_eq!(report.changed, ["messages.queue.debounceMs"]);

    let (run2, key2) = accepted(h.gw.ingest(room_message("$ev2", "@bot two", true), &oncall()).await.expect("ingest"));
    assert_eq!(key2, key1, "the reload changed the session key");
    assert_eq!(wait_chat_end(&mut events, &run2).await, "final");
    let rows = h.outbox();
    assert_eq!(rows.len(), 2, "{rows:?}");
    for row in &rows {
        assert_eq!(row.target, target, "reply addressed elsewhere: {row:?}");
        assert_eq!(row.session_key.as_deref(), Some(ROOM_KEY));
    }
    assert_eq!((rows[0].text.as_str(), rows[1].text.as_str()), ("fake: @bot one", "fake: @bot two"));
    let d = h.deliveries(2).await;
    assert_eq!(common::s(&d[1].body, "to"), ROOM);
    assert_eq!(d[1].text(), "fake: @bot two");
    assert_eq!(h.store().get_session(ROOM_KEY).expect("store").expect("session").target, target);
    assert_eq!(h.store().list_sessions(10).expect("store").len(), 1, "a second session appeared after the reload");
    h.stop().await;
}

/// `agent.wait`/`chat.abort`/`status` see runs through the run registry; a channel turn is a
/// run like any other and must be visible there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ingested_turn_is_tracked_in_the_run_registry() {
    let h = Harness::start(|_| {}).await;
    let (run_id, _) = accepted(h.gw.ingest(room_message("$ev1", "@bot hi", true), &oncall()).await.expect("ingest"));
    let info = h.gw.wait_run(&run_id, common::WAIT).await;
    let info = info.unwrap_or_else(|| panic!("ingested run {run_id} is unknown to the run registry"));
    assert_eq!(info.status, RunStatus::Ok, "{info:?}");
    h.stop().await;
}

/// Thread participation is a fact the runtime keeps (7 days, in the store): once a reply was
/// delivered into a thread, later messages there wake the agent without a mention; other
/// threads still need one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivered_reply_in_a_thread_makes_later_messages_there_wake() {
    let h = Harness::start(|_| {}).await;
    let mut events = h.gw.events().subscribe();
    let in_thread = |id: &str, thread: &str, text: &str, mentioned: bool| Inbound {
        thread_id: Some(thread.into()),
        ..room_message(id, text, mentioned)
    };
    let (run, _) = accepted(h.gw.ingest(in_thread("$ev1", "$Root1", "@bot start", true), &oncall()).await.unwrap());
    assert_eq!(wait_chat_end(&mut events, &run).await, "final");
    h.deliveries(1).await;
    tokio::time::timeout(common::WAIT, async {
        while h.outbox().iter().any(|r| r.status != pincer_store::OutboxStatus::Sent) {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("the reply is marked sent");
    let out = h.gw.ingest(in_thread("$ev2", "$Root1", "and another thing", false), &oncall()).await.unwrap();
    accepted(out);
    let out = h.gw.ingest(in_thread("$ev3", "$Root2", "elsewhere", false), &oncall()).await.unwrap();
    assert_eq!(out, IngestOutcome::Dropped(DropReason::MissingMention));
    h.stop().await;
}

/// `dmPolicy: pairing`: an unknown sender gets a code once (through the outbox) and is not
/// run; once the operator approves the code, the sender's DMs wake the agent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pairing_issues_one_code_and_approval_lets_the_sender_in() {
    let h = Harness::start(|_| {}).await;
    let dm = |id: &str, text: &str| Inbound {
        chat_kind: ChatKind::Direct,
        peer_id: "U-Bob".into(),
        chat_id: "D-bob".into(),
        author: Author { id: "U-Bob".into(), name: Some("bob".into()), ..Default::default() },
        ..room_message(id, text, false)
    };
    let pairing = WakePolicy { dm_policy: pincer_core::config::DmPolicy::Pairing, ..Default::default() };
    let out = h.gw.ingest(dm("m1", "hello?"), &pairing).await.unwrap();
    assert_eq!(out, IngestOutcome::Dropped(DropReason::PairingRequired));
    let d = h.deliveries(1).await;
    assert_eq!(common::s(&d[0].body, "to"), "D-bob", "the code goes back to the sender's DM");
    let text = d[0].text();
    let code: String = text.split("pairing code is ").nth(1).unwrap().chars().take(8).collect();
    assert!(text.contains(&format!("pincer pairing approve webhook {code}")), "{text}");
    // Asking again does not send a second code.
    let out = h.gw.ingest(dm("m2", "hello??"), &pairing).await.unwrap();
    assert_eq!(out, IngestOutcome::Dropped(DropReason::PairingRequired));
    assert_eq!(h.outbox().len(), 1);
    let pending = h.gw.list_pairing(Some("webhook")).unwrap();
    assert_eq!(pending["pending"][0]["code"], code.as_str());
    assert_eq!(h.gw.approve_pairing("webhook", "NOPE2345").unwrap(), None);
    let approved = h.gw.approve_pairing("webhook", &code).unwrap().expect("approved");
    assert_eq!(approved.sender_id, "U-Bob");
    let mut events = h.gw.events().subscribe();
    let (run, key) = accepted(h.gw.ingest(dm("m3", "now?"), &pairing).await.unwrap());
    assert_eq!(key, "agent:main:main", "DMs share the main session by default");
    assert_eq!(wait_chat_end(&mut events, &run).await, "final");
    h.stop().await;
}
