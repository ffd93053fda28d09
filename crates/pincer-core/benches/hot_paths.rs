//! Criterion benchmarks of the per-message hot paths: routing (agent + session key), the wake
//! decision, and session-key parse/format. Target: routing + wake + key under 2 µs/message.

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use pincer_core::config::{BindingConfig, BindingMatchConfig, BindingPeerConfig, Config, DmScope};
use pincer_core::routing::resolve_route;
use pincer_core::wake::{decide, MentionGate, MentionPatterns, WakePolicy};
use pincer_core::{AccountId, Author, ChannelId, ChatKind, Inbound, MentionFacts, SessionKey};

fn inbound(i: usize) -> Inbound {
    Inbound {
        channel: ChannelId::new("mattermost"),
        account: AccountId::default(),
        chat_kind: ChatKind::Channel,
        peer_id: format!("chan{}", i % 50),
        parent_peer_id: None,
        chat_id: format!("chan{}", i % 50),
        guild_id: None,
        team_id: None,
        member_roles: vec![],
        thread_id: Some(format!("root{i}")),
        author: Author { id: "u1".into(), name: Some("alice".into()), is_bot: false, is_self: false },
        message_id: format!("m{i}"),
        text: "@pincer please summarise the thread".into(),
        ts_ms: 0,
        mentions: MentionFacts { native: true, can_detect: true, ..Default::default() },
    }
}

fn config() -> Config {
    let mut cfg = Config::default();
    cfg.session.dm_scope = DmScope::PerChannelPeer;
    for i in 0..10 {
        cfg.bindings.push(BindingConfig {
            kind: None,
            agent_id: "main".into(),
            matcher: BindingMatchConfig {
                channel: "discord".into(),
                account_id: Some("*".into()),
                peer: Some(BindingPeerConfig { kind: ChatKind::Channel, id: format!("d{i}") }),
                guild_id: None,
                team_id: None,
                roles: None,
            },
            session: None,
        });
    }
    cfg
}

fn bench(c: &mut Criterion) {
    let cfg = config();
    let events: Vec<Inbound> = (0..256).map(inbound).collect();
    let policy = WakePolicy {
        gate: MentionGate::Required,
        group_sender_allowed: true,
        group_listed: true,
        ..Default::default()
    };
    let patterns = MentionPatterns::new(["\\bpincer\\b"]).unwrap();
    let mut i = 0;
    c.bench_function("route+wake+key (10 bindings)", |b| {
        b.iter(|| {
            i = (i + 1) % events.len();
            let ev = &events[i];
            let route = resolve_route(black_box(&cfg), black_box(ev));
            let d = decide(ev, &policy, &patterns);
            black_box((route, d))
        })
    });
    c.bench_function("route only", |b| {
        b.iter(|| {
            i = (i + 1) % events.len();
            black_box(resolve_route(&cfg, &events[i]))
        })
    });
    c.bench_function("wake decision", |b| b.iter(|| black_box(decide(&events[3], &policy, &patterns))));
    c.bench_function("session key parse+format", |b| {
        b.iter(|| {
            let p = SessionKey::parse(black_box("agent:main:matrix:channel:!AbC:example.org:thread:$ev")).unwrap();
            black_box(p.format())
        })
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
