//! Quick sanity run of the whole hot path with group commit, the way the runtime batches it:
//! accept inbound + route + user transcript, then the run commits, then delivery. Checks the
//! end state only; nothing here is timed or asserts a rate (the elapsed time is printed for
//! humans, `cargo test -p pincer-store --release --test throughput -- --nocapture`).

mod common;

use pincer_core::{AgentId, ChatKind};
use pincer_store::{NewOutbox, OutboxCounts, Role, RunCommit, SessionRecord};
use std::time::Instant;

const MESSAGES: usize = 4_000;
const BATCH: usize = 200;
const SESSIONS: usize = 50;

#[test]
fn routed_messages_flow_through_in_batches() {
    let (_dir, store) = common::store();
    let started = Instant::now();
    let now = 1_700_000_000_000i64;

    let key = |i: usize| format!("agent:main:matrix:channel:!Room{}:Example.org", i % SESSIONS);
    let mut processed = 0;
    while processed < MESSAGES {
        let range = processed..(processed + BATCH).min(MESSAGES);
        // 1. Intake: dedupe + ledger + session route + user transcript, one transaction.
        let accepted: Vec<(usize, i64)> = store
            .transaction(|tx| {
                let mut out = Vec::new();
                for i in range.clone() {
                    let k = key(i);
                    let msg = common::inbound(&format!("$ev{i}"), Some(&k));
                    if let Some(id) = tx.accept_inbound(&msg, now, 600_000)? {
                        let target = common::target(&format!("!Room{}:Example.org", i % SESSIONS), None);
                        let rec = SessionRecord::new(&k, AgentId::default(), ChatKind::Channel, target, now);
                        tx.upsert_session(&rec)?;
                        tx.append_transcript(&k, Role::User, &format!("ping {i}"), None, now)?;
                        out.push((i, id));
                    }
                }
                Ok(out)
            })
            .unwrap();
        assert_eq!(accepted.len(), range.len());

        // 2. The echo agent "runs" and each reply commits; group commit of the batch.
        let commits: Vec<RunCommit> = accepted
            .iter()
            .map(|&(i, inbound)| {
                let k = key(i);
                let target = common::target(&format!("!Room{}:Example.org", i % SESSIONS), None);
                let text = format!("echo: ping {i}");
                let out = NewOutbox::new(target, text.clone()).with_idempotency_key(format!("{inbound}:0"));
                RunCommit::reply(k, Some(inbound), Some(&format!("run-{i}")), text, vec![out])
            })
            .collect();
        for result in store.commit_batch(&commits, now).unwrap() {
            result.unwrap();
        }

        // 3. Delivery: claim heads, "send", mark sent, one transaction per round.
        loop {
            let claimed = store.claim_due(now, 1_000).unwrap();
            if claimed.is_empty() {
                break;
            }
            store
                .transaction(|tx| {
                    for row in &claimed {
                        tx.mark_sent(row.id, Some(&format!("p{}", row.id)), now)?;
                    }
                    Ok(())
                })
                .unwrap();
        }
        processed = range.end;
    }

    // Duplicates of everything are rejected afterwards.
    let dup = store.accept_inbound(&common::inbound("$ev0", None), now, 600_000).unwrap();
    assert_eq!(dup, None);
    assert_eq!(store.outbox_counts().unwrap(), OutboxCounts { sent: MESSAGES as u64, ..OutboxCounts::default() });
    assert!(store.unfinished_inbound().unwrap().is_empty());
    let per_session = MESSAGES / SESSIONS;
    let summary = store.list_sessions(SESSIONS + 1).unwrap();
    assert_eq!(summary.len(), SESSIONS);
    assert!(summary.iter().all(|s| s.message_count == 2 * per_session as i64));
    let elapsed = started.elapsed();
    eprintln!(
        "{MESSAGES} messages in {elapsed:?} ({:.0} msg/s, batch {BATCH})",
        MESSAGES as f64 / elapsed.as_secs_f64()
    );
}
