//! Routing: a pure function of an [`Inbound`] event and a config snapshot, returning the agent,
//! the session key and the delivery target (DESIGN.md bug 1: a reload can never change how the
//! same message routes unless the routing config itself changed).
//!
//! Agent selection follows OpenClaw's `bindings[]` tiers (reference §4), first match by tier and,
//! within a tier, config order: exact peer, parent peer, peer wildcard, guild + roles, guild,
//! team, account, channel (`accountId: "*"` or omitted), then the default agent.

use crate::config::{BindingConfig, Config, DmScope, GroupScope};
use crate::ids::AgentId;
use crate::message::{ChatKind, DeliveryTarget, Inbound};
use crate::session_key::SessionKey;
use serde::Serialize;

/// Which binding tier selected the agent.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum MatchedBy {
    /// `match.peer` with the exact peer id.
    Peer,
    /// `match.peer` with the parent conversation's id (threads inherit).
    ParentPeer,
    /// `match.peer.id: "*"`.
    PeerWildcard,
    /// `match.guildId` + `match.roles`.
    GuildRoles,
    /// `match.guildId`.
    Guild,
    /// `match.teamId`.
    Team,
    /// `match.accountId` (exact).
    Account,
    /// `match.channel` only (any account, or the default account when omitted).
    Channel,
    /// No binding matched: the default agent.
    Default,
}

/// The result of routing one inbound message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route {
    /// Agent that handles the message.
    pub agent_id: AgentId,
    /// Session the message belongs to.
    pub session_key: SessionKey,
    /// The agent's main session key `agent:<a>:<mainKey>`.
    pub main_session_key: SessionKey,
    /// Which binding tier matched.
    pub matched_by: MatchedBy,
    /// Index into `bindings[]` of the matching binding.
    pub binding_index: Option<usize>,
    /// Where replies go. Derived from the event, never from the key.
    pub delivery: DeliveryTarget,
}

/// Route an inbound event against a config snapshot. Pure and allocation-light: one pass over
/// `bindings[]`, then key formatting.
pub fn resolve_route(cfg: &Config, inbound: &Inbound) -> Route {
    let (binding_index, matched_by) = select_binding(cfg, inbound);
    let binding = binding_index.map(|i| &cfg.bindings[i]);
    let agent_id = match binding {
        Some(b) => AgentId::new(&b.agent_id),
        None => cfg.default_agent_id(),
    };
    let main_key = cfg.session.main_key.as_str();
    let main_session_key = SessionKey::main(&agent_id, main_key);
    let session_key = session_key_for(cfg, binding, &agent_id, inbound, &main_session_key);
    let delivery = DeliveryTarget {
        channel: inbound.channel.clone(),
        account: inbound.account.clone(),
        to: inbound.chat_id.clone(),
        thread_id: inbound.thread_id.clone(),
        reply_to_id: None,
    };
    Route { agent_id, session_key, main_session_key, matched_by, binding_index, delivery }
}

fn kinds_match(want: ChatKind, got: ChatKind) -> bool {
    match want {
        ChatKind::Direct => got == ChatKind::Direct,
        ChatKind::Group | ChatKind::Channel => got != ChatKind::Direct,
    }
}

/// Tier of a binding for this event, or `None` when any given field does not match.
fn binding_tier(b: &BindingConfig, inbound: &Inbound) -> Option<MatchedBy> {
    let m = &b.matcher;
    if b.kind.as_deref().is_some_and(|k| k != "route") {
        return None;
    }
    if !m.channel.trim().eq_ignore_ascii_case(inbound.channel.as_str()) {
        return None;
    }
    let account = inbound.account.as_str();
    let account_explicit = match m.account_id.as_deref() {
        Some("*") => false,
        Some(a) if a == account => true,
        Some(_) => return None,
        None if account == crate::ids::AccountId::DEFAULT => false,
        None => return None,
    };
    let mut tier = if account_explicit { MatchedBy::Account } else { MatchedBy::Channel };
    if let Some(team) = &m.team_id {
        if inbound.team_id.as_deref() != Some(team.as_str()) {
            return None;
        }
        tier = MatchedBy::Team;
    }
    if let Some(guild) = &m.guild_id {
        if inbound.guild_id.as_deref() != Some(guild.as_str()) {
            return None;
        }
        tier = MatchedBy::Guild;
        if let Some(roles) = &m.roles {
            if !roles.iter().any(|r| inbound.member_roles.iter().any(|have| have == r)) {
                return None;
            }
            tier = MatchedBy::GuildRoles;
        }
    } else if m.roles.as_ref().is_some_and(|r| !r.is_empty()) {
        if !m.roles.iter().flatten().any(|r| inbound.member_roles.iter().any(|have| have == r)) {
            return None;
        }
        tier = MatchedBy::GuildRoles;
    }
    if let Some(peer) = &m.peer {
        if !kinds_match(peer.kind, inbound.chat_kind) {
            return None;
        }
        tier = if peer.id == "*" {
            MatchedBy::PeerWildcard
        } else if peer.id == inbound.peer_id {
            MatchedBy::Peer
        } else if inbound.parent_peer_id.as_deref() == Some(peer.id.as_str()) {
            MatchedBy::ParentPeer
        } else {
            return None;
        };
    }
    Some(tier)
}

fn select_binding(cfg: &Config, inbound: &Inbound) -> (Option<usize>, MatchedBy) {
    let mut best: Option<(usize, MatchedBy)> = None;
    for (i, b) in cfg.bindings.iter().enumerate() {
        if let Some(tier) = binding_tier(b, inbound) {
            if best.is_none_or(|(_, t)| tier < t) {
                best = Some((i, tier));
                if tier == MatchedBy::Peer {
                    break;
                }
            }
        }
    }
    match best {
        Some((i, t)) => (Some(i), t),
        None => (None, MatchedBy::Default),
    }
}

/// Canonical identity for a DM peer via `session.identityLinks` (matched as `id` or
/// `channel:id`), else the peer id itself, exact case.
fn dm_peer<'a>(cfg: &'a Config, inbound: &'a Inbound) -> &'a str {
    for (canonical, aliases) in &cfg.session.identity_links {
        for alias in aliases {
            let hit = match alias.split_once(':') {
                Some((ch, id)) => ch.eq_ignore_ascii_case(inbound.channel.as_str()) && id == inbound.peer_id,
                None => alias == &inbound.peer_id,
            };
            if hit {
                return canonical;
            }
        }
    }
    &inbound.peer_id
}

fn session_key_for(
    cfg: &Config,
    binding: Option<&BindingConfig>,
    agent: &AgentId,
    inbound: &Inbound,
    main: &SessionKey,
) -> SessionKey {
    let session_override = binding.and_then(|b| b.session.as_ref());
    let mut key = String::with_capacity(96);
    match inbound.chat_kind {
        ChatKind::Direct => {
            let scope = session_override.and_then(|s| s.dm_scope).unwrap_or(cfg.session.dm_scope);
            match scope {
                DmScope::Main => key.push_str(main.as_str()),
                DmScope::PerPeer => push_all(&mut key, &["agent:", agent.as_str(), ":direct:", dm_peer(cfg, inbound)]),
                DmScope::PerChannelPeer => push_all(
                    &mut key,
                    &["agent:", agent.as_str(), ":", inbound.channel.as_str(), ":direct:", dm_peer(cfg, inbound)],
                ),
                DmScope::PerAccountChannelPeer => push_all(
                    &mut key,
                    &[
                        "agent:",
                        agent.as_str(),
                        ":",
                        inbound.channel.as_str(),
                        ":",
                        inbound.account.as_str(),
                        ":direct:",
                        dm_peer(cfg, inbound),
                    ],
                ),
            }
        }
        kind @ (ChatKind::Group | ChatKind::Channel) => {
            let scope = session_override.and_then(|s| s.group_scope).unwrap_or(cfg.session.group_scope);
            match scope {
                GroupScope::Main => key.push_str(main.as_str()),
                GroupScope::PerGroup => push_all(
                    &mut key,
                    &[
                        "agent:",
                        agent.as_str(),
                        ":",
                        inbound.channel.as_str(),
                        ":",
                        kind.as_str(),
                        ":",
                        &inbound.peer_id,
                    ],
                ),
            }
        }
    }
    if let Some(thread) = &inbound.thread_id {
        key.push_str(":thread:");
        key.push_str(thread);
    }
    SessionKey::from_raw(key)
}

fn push_all(s: &mut String, parts: &[&str]) {
    for p in parts {
        s.push_str(p);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{BindingMatchConfig, BindingPeerConfig, BindingSessionConfig};
    use crate::ids::{AccountId, ChannelId};
    use crate::message::{Author, MentionFacts};

    pub(crate) fn inbound(channel: &str, account: &str, kind: ChatKind, peer: &str) -> Inbound {
        Inbound {
            channel: ChannelId::new(channel),
            account: AccountId::new(account),
            chat_kind: kind,
            peer_id: peer.to_string(),
            parent_peer_id: None,
            chat_id: peer.to_string(),
            guild_id: None,
            team_id: None,
            member_roles: vec![],
            thread_id: None,
            author: Author { id: "U1".into(), ..Default::default() },
            message_id: "m1".into(),
            text: "hi".into(),
            ts_ms: 0,
            mentions: MentionFacts::default(),
        }
    }

    fn binding(agent: &str, channel: &str, account: Option<&str>, peer: Option<(ChatKind, &str)>) -> BindingConfig {
        BindingConfig {
            kind: None,
            agent_id: agent.into(),
            matcher: BindingMatchConfig {
                channel: channel.into(),
                account_id: account.map(Into::into),
                peer: peer.map(|(kind, id)| BindingPeerConfig { kind, id: id.into() }),
                guild_id: None,
                team_id: None,
                roles: None,
            },
            session: None,
        }
    }

    /// Data-driven check: config tweak, event, expected (agent, key, matched_by).
    fn check(cfg: &Config, ev: &Inbound, agent: &str, key: &str, by: MatchedBy) {
        let r = resolve_route(cfg, ev);
        assert_eq!((r.agent_id.as_str(), r.session_key.as_str(), r.matched_by), (agent, key, by));
        assert_eq!(r.delivery.to, ev.chat_id, "delivery target comes from the event");
        assert_eq!(r.delivery.thread_id, ev.thread_id);
    }

    #[test]
    fn dm_scopes() {
        let mut cfg = Config::default();
        let ev = inbound("telegram", "default", ChatKind::Direct, "UserX");
        check(&cfg, &ev, "main", "agent:main:main", MatchedBy::Default);
        cfg.session.dm_scope = DmScope::PerPeer;
        check(&cfg, &ev, "main", "agent:main:direct:UserX", MatchedBy::Default);
        cfg.session.dm_scope = DmScope::PerChannelPeer;
        check(&cfg, &ev, "main", "agent:main:telegram:direct:UserX", MatchedBy::Default);
        cfg.session.dm_scope = DmScope::PerAccountChannelPeer;
        check(&cfg, &ev, "main", "agent:main:telegram:default:direct:UserX", MatchedBy::Default);
        cfg.session.identity_links.insert("alice".into(), vec!["telegram:UserX".into()]);
        check(&cfg, &ev, "main", "agent:main:telegram:default:direct:alice", MatchedBy::Default);
    }

    #[test]
    fn groups_threads_and_case() {
        let mut cfg = Config::default();
        let mut ev = inbound("matrix", "default", ChatKind::Channel, "!RoOm:Example.org");
        check(&cfg, &ev, "main", "agent:main:matrix:channel:!RoOm:Example.org", MatchedBy::Default);
        ev.thread_id = Some("$Root".into());
        check(&cfg, &ev, "main", "agent:main:matrix:channel:!RoOm:Example.org:thread:$Root", MatchedBy::Default);
        let ev = inbound("telegram", "default", ChatKind::Group, "-100");
        check(&cfg, &ev, "main", "agent:main:telegram:group:-100", MatchedBy::Default);
        cfg.session.group_scope = GroupScope::Main;
        check(&cfg, &ev, "main", "agent:main:main", MatchedBy::Default);
    }

    #[test]
    fn binding_tiers_in_order() {
        let cfg = Config {
            bindings: vec![
                binding("chan", "discord", Some("*"), None),
                binding("acct", "discord", Some("work"), None),
                binding("wild", "discord", Some("*"), Some((ChatKind::Channel, "*"))),
                binding("parent", "discord", Some("*"), Some((ChatKind::Channel, "P1"))),
                binding("peer", "discord", Some("*"), Some((ChatKind::Group, "C1"))),
            ],
            ..Config::default()
        };
        let mut ev = inbound("discord", "work", ChatKind::Channel, "C1");
        check(&cfg, &ev, "peer", "agent:peer:discord:channel:C1", MatchedBy::Peer);
        ev.peer_id = "C2".into();
        ev.parent_peer_id = Some("P1".into());
        check(&cfg, &ev, "parent", "agent:parent:discord:channel:C2", MatchedBy::ParentPeer);
        ev.parent_peer_id = None;
        check(&cfg, &ev, "wild", "agent:wild:discord:channel:C2", MatchedBy::PeerWildcard);
        let ev = inbound("discord", "work", ChatKind::Direct, "U9");
        check(&cfg, &ev, "acct", "agent:acct:main", MatchedBy::Account);
        let ev = inbound("discord", "other", ChatKind::Direct, "U9");
        check(&cfg, &ev, "chan", "agent:chan:main", MatchedBy::Channel);
        let ev = inbound("slack", "default", ChatKind::Direct, "U9");
        check(&cfg, &ev, "main", "agent:main:main", MatchedBy::Default);
    }

    #[test]
    fn omitted_account_means_default_account_only() {
        let cfg = Config { bindings: vec![binding("ops", "mattermost", None, None)], ..Config::default() };
        check(
            &cfg,
            &inbound("mattermost", "default", ChatKind::Direct, "u"),
            "ops",
            "agent:ops:main",
            MatchedBy::Channel,
        );
        check(
            &cfg,
            &inbound("mattermost", "second", ChatKind::Direct, "u"),
            "main",
            "agent:main:main",
            MatchedBy::Default,
        );
    }

    #[test]
    fn binding_session_override() {
        let mut b = binding("main", "slack", Some("*"), None);
        b.session = Some(BindingSessionConfig { dm_scope: Some(DmScope::PerPeer), group_scope: None });
        let cfg = Config { bindings: vec![b], ..Config::default() };
        check(
            &cfg,
            &inbound("slack", "default", ChatKind::Direct, "U1"),
            "main",
            "agent:main:direct:U1",
            MatchedBy::Channel,
        );
    }

    #[test]
    fn routing_is_identical_across_equal_snapshots() {
        // Bug 1: a reload that does not touch routing must not change the route.
        let cfg_a = Config::default();
        let mut cfg_b = Config::default();
        cfg_b.messages.queue.debounce_ms = 1234;
        let ev = inbound("mattermost", "default", ChatKind::Channel, "chan1");
        assert_eq!(resolve_route(&cfg_a, &ev), resolve_route(&cfg_b, &ev));
    }
}
