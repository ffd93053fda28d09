//! Identifier newtypes. Agent ids and channel ids are normalised (lowercase, OpenClaw's
//! `[a-z0-9][a-z0-9_-]{0,63}`); account ids are trimmed only. Platform ids (peers, threads,
//! message ids) are opaque strings and are never case-folded anywhere in pincer.

use serde::{Deserialize, Serialize};
use std::fmt;

macro_rules! id_newtype {
    ($(#[$m:meta])* $name:ident) => {
        $(#[$m])*
        #[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            /// The id as a string slice.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }
    };
}

id_newtype!(
    /// An agent id, normalised as OpenClaw does (`src/routing/session-key.ts`): trimmed,
    /// lowercased, characters outside `[a-z0-9_-]` collapsed to `-`, at most 64 chars, and
    /// `main` when empty.
    AgentId
);
id_newtype!(
    /// A channel id such as `mattermost`, `discord`, `webchat`: lowercased and trimmed.
    ChannelId
);
id_newtype!(
    /// A channel account id (`channels.<ch>.accounts.<id>`); `default` when unset. Trimmed,
    /// case preserved.
    AccountId
);

/// Normalise an id the way OpenClaw normalises agent ids: trim, lowercase, map every char
/// outside `[a-z0-9_-]` to `-`, collapse runs of `-`, trim leading `-`/`_`, cut to 64 chars.
/// Returns `None` when nothing is left.
pub fn normalize_token(raw: &str) -> Option<String> {
    let mut out = String::with_capacity(raw.len());
    let mut last_dash = false;
    for ch in raw.trim().chars() {
        let c = ch.to_ascii_lowercase();
        if c.is_ascii_alphanumeric() || c == '_' {
            out.push(c);
            last_dash = false;
        } else if !last_dash {
            out.push('-');
            last_dash = true;
        }
    }
    let trimmed = out.trim_matches(|c| c == '-' || c == '_');
    let cut: String = trimmed.chars().take(64).collect();
    let cut = cut.trim_end_matches('-').to_string();
    if cut.is_empty() {
        None
    } else {
        Some(cut)
    }
}

impl AgentId {
    /// The default agent id, `main`.
    pub const DEFAULT: &'static str = "main";

    /// Build a normalised agent id; empty input becomes `main`.
    pub fn new(raw: &str) -> Self {
        AgentId(normalize_token(raw).unwrap_or_else(|| Self::DEFAULT.to_string()))
    }

    /// True when `raw` is already a valid, normalised agent id.
    pub fn is_valid(raw: &str) -> bool {
        normalize_token(raw).as_deref() == Some(raw)
    }
}

impl Default for AgentId {
    fn default() -> Self {
        AgentId(Self::DEFAULT.to_string())
    }
}

impl ChannelId {
    /// Build a channel id (trimmed, lowercased). Channel names are structural tokens, so
    /// lowercasing them is safe, unlike platform ids.
    pub fn new(raw: &str) -> Self {
        ChannelId(raw.trim().to_ascii_lowercase())
    }
}

impl AccountId {
    /// The default account id, `default`.
    pub const DEFAULT: &'static str = "default";

    /// Build an account id (trimmed; `default` when empty). Case is preserved.
    pub fn new(raw: &str) -> Self {
        let t = raw.trim();
        AccountId(if t.is_empty() { Self::DEFAULT.to_string() } else { t.to_string() })
    }
}

impl Default for AccountId {
    fn default() -> Self {
        AccountId(Self::DEFAULT.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agent_ids_normalise_like_openclaw() {
        assert_eq!(AgentId::new("  Main ").as_str(), "main");
        assert_eq!(AgentId::new("My Agent!").as_str(), "my-agent");
        assert_eq!(AgentId::new("").as_str(), "main");
        assert_eq!(AgentId::new("a_b-c").as_str(), "a_b-c");
        assert!(AgentId::is_valid("ops-1"));
        assert!(!AgentId::is_valid("Ops"));
        assert_eq!(AgentId::new(&"x".repeat(100)).as_str().len(), 64);
    }

    #[test]
    fn account_ids_keep_case() {
        assert_eq!(AccountId::new(" Work ").as_str(), "Work");
        assert_eq!(AccountId::new("").as_str(), "default");
    }
}
