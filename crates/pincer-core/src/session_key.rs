//! Session keys in OpenClaw's exact grammar (`src/routing/session-key.ts`, reference §4):
//!
//! ```text
//! agent:<agentId>:<mainKey>                               main session
//! agent:<agentId>:direct:<peer>                           dmScope per-peer
//! agent:<agentId>:<channel>:direct:<peer>                 dmScope per-channel-peer
//! agent:<agentId>:<channel>:<account>:direct:<peer>       dmScope per-account-channel-peer
//! agent:<agentId>:<channel>:group:<id>                    group conversation
//! agent:<agentId>:<channel>:channel:<id>                  channel / room
//! <any of the above>:thread:<threadId>                    thread suffix
//! <any of the above>:topic:<topicId>                      Telegram forum topic suffix
//! agent:<agentId>:<anything else>                         other keys (web chat, cron ...)
//! ```
//!
//! Platform ids (peers, threads) are opaque: they are kept byte for byte, never case-folded,
//! and may themselves contain `:` (Matrix `!room:server`). Only the agent id and the structural
//! tokens are normalised. The legacy token `dm` is read as `direct`.
//!
//! Delivery targets are never re-derived by parsing a key: parsing exists for display, CLI
//! input and validation only.

use crate::ids::{AgentId, ChannelId};
use crate::message::ChatKind;
use serde::{Deserialize, Serialize};
use std::fmt;

/// A formatted session key, e.g. `agent:main:mattermost:channel:abc123`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SessionKey(String);

/// Why a string is not a session key.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SessionKeyError {
    /// The key does not start with `agent:`.
    #[error("session key must start with \"agent:\": {0:?}")]
    MissingPrefix(String),
    /// The agent id segment is empty or not a normalised agent id.
    #[error("invalid agent id {agent:?} in session key {key:?}")]
    BadAgent {
        /// The offending segment.
        agent: String,
        /// The whole key.
        key: String,
    },
    /// Nothing follows the agent id, or a segment is empty.
    #[error("incomplete session key {0:?}")]
    Incomplete(String),
}

/// The shape of a session key below the agent id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SessionScope {
    /// `agent:<a>:<mainKey>`.
    Main {
        /// The main key (`session.mainKey`, default `main`).
        main_key: String,
    },
    /// A direct-message session.
    Direct {
        /// Channel, for `per-channel-peer` and `per-account-channel-peer`.
        channel: Option<ChannelId>,
        /// Account, for `per-account-channel-peer`.
        account: Option<String>,
        /// Peer id (or identity-link canonical name), exact case.
        peer: String,
    },
    /// A group or channel session.
    Group {
        /// Channel id.
        channel: ChannelId,
        /// `Group` or `Channel` (never `Direct`).
        kind: ChatKind,
        /// Conversation id, exact case.
        id: String,
    },
    /// Any other key under the agent (`agent:main:webchat-123`, `agent:main:cron:job`).
    Other {
        /// Everything after `agent:<a>:`.
        rest: String,
    },
}

/// A parsed session key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParsedSessionKey {
    /// The agent id.
    pub agent: AgentId,
    /// The scope below the agent.
    pub scope: SessionScope,
    /// `:thread:<id>` suffix.
    pub thread: Option<String>,
    /// `:topic:<id>` suffix (Telegram forum topics).
    pub topic: Option<String>,
}

impl SessionKey {
    /// Wrap an already formatted key without checking it. Use [`SessionKey::parse`] for input
    /// from users or clients.
    pub fn from_raw(raw: impl Into<String>) -> Self {
        SessionKey(raw.into())
    }

    /// The key as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The main session key `agent:<agent>:<mainKey>`.
    pub fn main(agent: &AgentId, main_key: &str) -> Self {
        SessionKey(format!("agent:{agent}:{main_key}"))
    }

    /// Parse and validate a key. Errors: [`SessionKeyError`].
    pub fn parse(raw: &str) -> Result<ParsedSessionKey, SessionKeyError> {
        let rest = raw.strip_prefix("agent:").ok_or_else(|| SessionKeyError::MissingPrefix(raw.to_string()))?;
        let (agent, mut rest) = rest.split_once(':').ok_or_else(|| SessionKeyError::Incomplete(raw.to_string()))?;
        if !AgentId::is_valid(agent) {
            return Err(SessionKeyError::BadAgent { agent: agent.to_string(), key: raw.to_string() });
        }
        let mut thread = None;
        let mut topic = None;
        if let Some(i) = rest.rfind(":thread:") {
            thread = Some(rest[i + 8..].to_string());
            rest = &rest[..i];
        }
        if let Some(i) = rest.rfind(":topic:") {
            topic = Some(rest[i + 7..].to_string());
            rest = &rest[..i];
        }
        if rest.is_empty() || thread.as_deref() == Some("") || topic.as_deref() == Some("") {
            return Err(SessionKeyError::Incomplete(raw.to_string()));
        }
        let scope = parse_scope(rest);
        Ok(ParsedSessionKey { agent: AgentId::new(agent), scope, thread, topic })
    }

    /// Qualify a client-supplied key: keys already starting with `agent:` are validated,
    /// others are put under `agent:<default_agent>:` (OpenClaw qualifies bare keys the same way).
    pub fn qualify(raw: &str, default_agent: &AgentId) -> Result<SessionKey, SessionKeyError> {
        let raw = raw.trim();
        if raw.is_empty() {
            return Err(SessionKeyError::Incomplete(raw.to_string()));
        }
        if raw.starts_with("agent:") {
            Self::parse(raw)?;
            Ok(SessionKey(raw.to_string()))
        } else {
            Ok(SessionKey(format!("agent:{default_agent}:{raw}")))
        }
    }
}

fn is_direct_token(t: &str) -> bool {
    t == "direct" || t == "dm"
}

fn parse_scope(rest: &str) -> SessionScope {
    let mut parts = rest.splitn(4, ':');
    let t0 = parts.next().unwrap_or("");
    let t1 = parts.next();
    let t2 = parts.next();
    let t3 = parts.next();
    match (t1, t2, t3) {
        (None, _, _) => SessionScope::Main { main_key: t0.to_string() },
        (Some(p), _, _) if is_direct_token(t0) => {
            // `direct:<peer>` where the peer may contain ':'.
            let peer = &rest[t0.len() + 1..];
            let _ = p;
            SessionScope::Direct { channel: None, account: None, peer: peer.to_string() }
        }
        (Some(t1), Some(_), _) if is_direct_token(t1) && !t0.is_empty() => {
            let peer = &rest[t0.len() + t1.len() + 2..];
            SessionScope::Direct { channel: Some(ChannelId::new(t0)), account: None, peer: peer.to_string() }
        }
        (Some(t1), Some(t2), Some(_)) if is_direct_token(t2) && !t0.is_empty() && !t1.is_empty() => {
            let peer = &rest[t0.len() + t1.len() + t2.len() + 3..];
            SessionScope::Direct {
                channel: Some(ChannelId::new(t0)),
                account: Some(t1.to_string()),
                peer: peer.to_string(),
            }
        }
        (Some(t1), Some(_), _) if (t1 == "group" || t1 == "channel") && !t0.is_empty() => {
            let id = &rest[t0.len() + t1.len() + 2..];
            let kind = if t1 == "group" { ChatKind::Group } else { ChatKind::Channel };
            SessionScope::Group { channel: ChannelId::new(t0), kind, id: id.to_string() }
        }
        _ => SessionScope::Other { rest: rest.to_string() },
    }
}

impl ParsedSessionKey {
    /// Format back into a key. `parse(k).format() == k` for every canonical key.
    pub fn format(&self) -> SessionKey {
        let mut s = String::with_capacity(64);
        s.push_str("agent:");
        s.push_str(self.agent.as_str());
        s.push(':');
        match &self.scope {
            SessionScope::Main { main_key } => s.push_str(main_key),
            SessionScope::Direct { channel, account, peer } => {
                if let Some(c) = channel {
                    s.push_str(c.as_str());
                    s.push(':');
                    if let Some(a) = account {
                        s.push_str(a);
                        s.push(':');
                    }
                }
                s.push_str("direct:");
                s.push_str(peer);
            }
            SessionScope::Group { channel, kind, id } => {
                s.push_str(channel.as_str());
                s.push(':');
                s.push_str(kind.as_str());
                s.push(':');
                s.push_str(id);
            }
            SessionScope::Other { rest } => s.push_str(rest),
        }
        if let Some(t) = &self.topic {
            s.push_str(":topic:");
            s.push_str(t);
        }
        if let Some(t) = &self.thread {
            s.push_str(":thread:");
            s.push_str(t);
        }
        SessionKey(s)
    }
}

impl fmt::Display for SessionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for SessionKey {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip(key: &str) -> ParsedSessionKey {
        let parsed = SessionKey::parse(key).unwrap_or_else(|e| panic!("{key}: {e}"));
        assert_eq!(parsed.format().as_str(), key, "round trip of {key}");
        parsed
    }

    #[test]
    fn whole_grammar_round_trips() {
        let cases: &[(&str, SessionScope)] = &[
            ("agent:main:main", SessionScope::Main { main_key: "main".into() }),
            ("agent:ops:home", SessionScope::Main { main_key: "home".into() }),
            ("agent:main:direct:U123", SessionScope::Direct { channel: None, account: None, peer: "U123".into() }),
            (
                "agent:main:telegram:direct:42",
                SessionScope::Direct { channel: Some(ChannelId::new("telegram")), account: None, peer: "42".into() },
            ),
            (
                "agent:main:discord:work:direct:Alice",
                SessionScope::Direct {
                    channel: Some(ChannelId::new("discord")),
                    account: Some("work".into()),
                    peer: "Alice".into(),
                },
            ),
            (
                "agent:main:mattermost:channel:abc123XYZ",
                SessionScope::Group {
                    channel: ChannelId::new("mattermost"),
                    kind: ChatKind::Channel,
                    id: "abc123XYZ".into(),
                },
            ),
            (
                "agent:main:telegram:group:-1001234",
                SessionScope::Group {
                    channel: ChannelId::new("telegram"),
                    kind: ChatKind::Group,
                    id: "-1001234".into(),
                },
            ),
            (
                "agent:main:matrix:channel:!AbC:Example.org",
                SessionScope::Group {
                    channel: ChannelId::new("matrix"),
                    kind: ChatKind::Channel,
                    id: "!AbC:Example.org".into(),
                },
            ),
            (
                "agent:main:matrix:direct:@Bob:Example.org",
                SessionScope::Direct {
                    channel: Some(ChannelId::new("matrix")),
                    account: None,
                    peer: "@Bob:Example.org".into(),
                },
            ),
            ("agent:main:webchat:7f3a", SessionScope::Other { rest: "webchat:7f3a".into() }),
            // A single token after the agent is always a main key.
            ("agent:main:webchat-7f3a", SessionScope::Main { main_key: "webchat-7f3a".into() }),
            ("agent:main:cron:nightly", SessionScope::Other { rest: "cron:nightly".into() }),
        ];
        for (key, scope) in cases {
            let p = roundtrip(key);
            assert_eq!(&p.scope, scope, "{key}");
            assert_eq!(p.thread, None);
        }
    }

    #[test]
    fn thread_and_topic_suffixes_keep_case() {
        let p = roundtrip("agent:main:mattermost:channel:Chan1:thread:RootPost9");
        assert_eq!(p.thread.as_deref(), Some("RootPost9"));
        let p = roundtrip("agent:main:matrix:channel:!R:ex.org:thread:$EvEnT");
        assert_eq!(p.thread.as_deref(), Some("$EvEnT"));
        assert_eq!(
            p.scope,
            SessionScope::Group { channel: ChannelId::new("matrix"), kind: ChatKind::Channel, id: "!R:ex.org".into() }
        );
        let p = roundtrip("agent:main:telegram:group:-100:topic:7");
        assert_eq!(p.topic.as_deref(), Some("7"));
        let p = roundtrip("agent:main:telegram:group:-100:topic:7:thread:9");
        assert_eq!((p.topic.as_deref(), p.thread.as_deref()), (Some("7"), Some("9")));
    }

    #[test]
    fn legacy_dm_token_reads_as_direct() {
        let p = SessionKey::parse("agent:main:telegram:dm:42").unwrap();
        assert_eq!(p.format().as_str(), "agent:main:telegram:direct:42");
    }

    #[test]
    fn bad_keys_are_errors() {
        assert!(matches!(SessionKey::parse("main"), Err(SessionKeyError::MissingPrefix(_))));
        assert!(matches!(SessionKey::parse("agent:main"), Err(SessionKeyError::Incomplete(_))));
        assert!(matches!(SessionKey::parse("agent:Main:x"), Err(SessionKeyError::BadAgent { .. })));
        assert!(matches!(SessionKey::parse("agent:main:x:thread:"), Err(SessionKeyError::Incomplete(_))));
        assert!(matches!(SessionKey::parse("agent::x"), Err(SessionKeyError::BadAgent { .. })));
    }

    #[test]
    fn qualify_bare_keys() {
        let main = AgentId::default();
        assert_eq!(SessionKey::qualify("web-1", &main).unwrap().as_str(), "agent:main:web-1");
        assert_eq!(SessionKey::qualify("agent:ops:main", &main).unwrap().as_str(), "agent:ops:main");
        assert!(SessionKey::qualify("agent:BAD KEY", &main).is_err());
        assert!(SessionKey::qualify("  ", &main).is_err());
    }

    #[test]
    fn parse_never_panics_on_odd_input() {
        let samples = [
            "agent:",
            "agent:a:",
            ":::",
            "agent:a:b:direct:",
            "agent:a::direct:x",
            "agent:a:thread:x",
            "agent:a:b:c:d:e:f:g",
            "agent:a:\u{0}:\u{ffff}",
            "agent:a:direct",
            "agent:a:b:group:",
        ];
        for s in samples {
            let _ = SessionKey::parse(s);
        }
    }
}
