//! The wake decision: one pure function over explicit facts (DESIGN.md bug 2, reference §5).
//!
//! The ladder, in order: own message → bot author policy → DM policy or group policy + sender
//! allowlist → mention gate (native mention | pattern | implicit facts, each behind its own
//! flag | onchar prefix). Duplicates are filtered before this by the durable dedupe ledger.
//! Every "no" carries a [`DropReason`] whose code is logged.

use crate::config::{DmPolicy, GroupPolicy};
use crate::message::{ChatKind, Inbound};
use regex::RegexSet;
use serde::Serialize;

/// `allowBots`: whether messages from other bots may wake the agent.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub enum AllowBots {
    /// Bot authors are dropped (default).
    #[default]
    Off,
    /// Bot authors are treated like people.
    On,
    /// Bot authors wake the agent only with an explicit mention.
    Mentions,
}

/// Implicit-mention flags, already resolved account → channel → `channels.defaults`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct ImplicitMentions {
    /// `replyToBot`.
    pub reply_to_bot: bool,
    /// `quotedBot`.
    pub quoted_bot: bool,
    /// `threadParticipation`.
    pub thread_participation: bool,
}

impl Default for ImplicitMentions {
    fn default() -> Self {
        ImplicitMentions { reply_to_bot: true, quoted_bot: true, thread_participation: true }
    }
}

/// Mention gating for one conversation, resolved by the channel adapter from its config.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum MentionGate {
    /// Every message wakes (chatmode `onmessage`, `requireMention: false`).
    #[default]
    Off,
    /// A mention (native, pattern or implicit) is required (chatmode `oncall`).
    Required,
    /// The text must start with one of these prefixes, or carry a mention (chatmode `onchar`).
    Prefix(Vec<String>),
    /// Never wake in groups (chatmode `off`).
    Never,
}

/// Policy inputs for one inbound message. Allowlist membership is computed by the caller,
/// because it depends on platform id formats and the pairing store.
#[derive(Clone, Debug, Default)]
pub struct WakePolicy {
    /// `dmPolicy`.
    pub dm_policy: DmPolicy,
    /// The sender is in `allowFrom` (or `"*"` is) or is paired.
    pub dm_sender_allowed: bool,
    /// `groupPolicy`.
    pub group_policy: GroupPolicy,
    /// The conversation is in the channel's `groups` map (for `allowlist`).
    pub group_listed: bool,
    /// The sender passes `groupAllowFrom` / per-group `allowFrom` (true when none is set).
    pub group_sender_allowed: bool,
    /// Mention gate for this conversation.
    pub gate: MentionGate,
    /// Implicit mention flags.
    pub implicit: ImplicitMentions,
    /// `allowBots`.
    pub allow_bots: AllowBots,
}

/// Why a message woke the agent. Serialized (and logged) as `dm`, `onmessage`, `mention`,
/// `pattern`, `reply_to_bot`, `quoted_bot`, `thread_participation`, `onchar`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum WakeReason {
    /// A direct message that passed the DM policy.
    #[serde(rename = "dm")]
    Direct,
    /// No mention required in this conversation (chatmode `onmessage`).
    #[serde(rename = "onmessage")]
    Always,
    /// A native mention of the bot.
    Mention,
    /// A `mentionPatterns` regex matched.
    Pattern,
    /// A reply to one of the bot's messages.
    ReplyToBot,
    /// A quote of the bot.
    QuotedBot,
    /// The bot already takes part in the thread.
    ThreadParticipation,
    /// The text starts with an onchar prefix.
    Onchar,
}

/// Why a message did not wake the agent. [`DropReason::code`] is the logged reason code.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DropReason {
    /// The bot's own message.
    OwnMessage,
    /// Another bot, and `allowBots` does not admit it.
    BotAuthor,
    /// Seen before (dedupe ledger).
    Duplicate,
    /// `dmPolicy: disabled`.
    DmDisabled,
    /// `dmPolicy: allowlist` and the sender is not allowed.
    DmNotAllowed,
    /// `dmPolicy: pairing` and the sender is not paired: a pairing code is due instead.
    PairingRequired,
    /// `groupPolicy: disabled`.
    GroupDisabled,
    /// `groupPolicy: allowlist` and the conversation is not listed.
    GroupNotAllowed,
    /// The sender is not in the group sender allowlist.
    SenderNotAllowed,
    /// A mention was required and none was found.
    MissingMention,
    /// chatmode `onchar` and no prefix or mention.
    OncharNotTriggered,
    /// chatmode `off`: the bot never wakes in groups.
    ChatmodeOff,
    /// Nothing to run on (empty text).
    Empty,
}

impl WakeReason {
    /// Stable reason code for logs and metrics (the serialized name, e.g. `reply_to_bot`).
    pub fn code(self) -> &'static str {
        match self {
            WakeReason::Direct => "dm",
            WakeReason::Always => "onmessage",
            WakeReason::Mention => "mention",
            WakeReason::Pattern => "pattern",
            WakeReason::ReplyToBot => "reply_to_bot",
            WakeReason::QuotedBot => "quoted_bot",
            WakeReason::ThreadParticipation => "thread_participation",
            WakeReason::Onchar => "onchar",
        }
    }
}

impl DropReason {
    /// Stable reason code for logs and metrics, e.g. `missing_mention` (the names of the
    /// Mattermost issue's wake table; several variants share `dm_policy`/`group_policy`).
    pub fn code(self) -> &'static str {
        match self {
            DropReason::OwnMessage => "self",
            DropReason::BotAuthor => "bot_author",
            DropReason::Duplicate => "duplicate",
            DropReason::DmDisabled | DropReason::DmNotAllowed => "dm_policy",
            DropReason::PairingRequired => "pairing_required",
            DropReason::GroupDisabled | DropReason::GroupNotAllowed => "group_policy",
            DropReason::SenderNotAllowed => "sender_not_allowed",
            DropReason::MissingMention | DropReason::OncharNotTriggered => "missing_mention",
            DropReason::ChatmodeOff => "chatmode_off",
            DropReason::Empty => "empty",
        }
    }
}

/// The outcome of [`decide`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case", tag = "decision", content = "reason")]
pub enum WakeDecision {
    /// Run the agent.
    Wake(WakeReason),
    /// Do not run; log the reason.
    Drop(DropReason),
}

/// Compiled `mentionPatterns` (case-insensitive). Build once per config snapshot.
#[derive(Clone, Debug)]
pub struct MentionPatterns(Option<RegexSet>);

impl MentionPatterns {
    /// Compile the patterns. Errors: the first invalid regex, as `regex::Error`.
    pub fn new<I, S>(patterns: I) -> Result<Self, regex::Error>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let pats: Vec<String> = patterns.into_iter().map(|p| format!("(?i){}", p.as_ref())).collect();
        if pats.is_empty() {
            return Ok(MentionPatterns(None));
        }
        Ok(MentionPatterns(Some(RegexSet::new(pats)?)))
    }

    /// No patterns.
    pub fn none() -> Self {
        MentionPatterns(None)
    }

    /// True when any pattern matches `text`.
    pub fn is_match(&self, text: &str) -> bool {
        self.0.as_ref().is_some_and(|s| s.is_match(text))
    }
}

/// Decide whether `inbound` wakes the agent. Pure; `patterns` are the compiled mention patterns.
pub fn decide(inbound: &Inbound, policy: &WakePolicy, patterns: &MentionPatterns) -> WakeDecision {
    use WakeDecision::{Drop, Wake};
    if inbound.author.is_self {
        return Drop(DropReason::OwnMessage);
    }
    let native = inbound.mentions.native;
    if inbound.author.is_bot {
        match policy.allow_bots {
            AllowBots::Off => return Drop(DropReason::BotAuthor),
            AllowBots::Mentions if !native => return Drop(DropReason::BotAuthor),
            _ => {}
        }
    }
    if inbound.text.trim().is_empty() {
        return Drop(DropReason::Empty);
    }
    if inbound.chat_kind == ChatKind::Direct {
        return match policy.dm_policy {
            DmPolicy::Disabled => Drop(DropReason::DmDisabled),
            DmPolicy::Open => Wake(WakeReason::Direct),
            _ if policy.dm_sender_allowed => Wake(WakeReason::Direct),
            DmPolicy::Allowlist => Drop(DropReason::DmNotAllowed),
            DmPolicy::Pairing => Drop(DropReason::PairingRequired),
        };
    }
    match policy.group_policy {
        GroupPolicy::Disabled => return Drop(DropReason::GroupDisabled),
        GroupPolicy::Allowlist if !policy.group_listed => return Drop(DropReason::GroupNotAllowed),
        _ => {}
    }
    if !policy.group_sender_allowed {
        return Drop(DropReason::SenderNotAllowed);
    }
    let mentioned = || -> Option<WakeReason> {
        let m = &inbound.mentions;
        // A bot's implicit facts never count: only explicit mentions wake on bot messages.
        let implicit_ok = !inbound.author.is_bot;
        if native {
            Some(WakeReason::Mention)
        } else if patterns.is_match(&inbound.text) {
            Some(WakeReason::Pattern)
        } else if implicit_ok && m.reply_to_bot && policy.implicit.reply_to_bot {
            Some(WakeReason::ReplyToBot)
        } else if implicit_ok && m.quoted_bot && policy.implicit.quoted_bot {
            Some(WakeReason::QuotedBot)
        } else if implicit_ok && m.thread_participation && policy.implicit.thread_participation {
            Some(WakeReason::ThreadParticipation)
        } else {
            None
        }
    };
    match &policy.gate {
        MentionGate::Off => Wake(WakeReason::Always),
        MentionGate::Never => Drop(DropReason::ChatmodeOff),
        MentionGate::Required => {
            if !inbound.mentions.can_detect {
                // Gating is enforced only when detection is possible (reference §5).
                return Wake(WakeReason::Always);
            }
            mentioned().map_or(Drop(DropReason::MissingMention), Wake)
        }
        MentionGate::Prefix(prefixes) => {
            let text = inbound.text.trim_start();
            if prefixes.iter().any(|p| !p.is_empty() && text.starts_with(p.as_str())) {
                Wake(WakeReason::Onchar)
            } else {
                mentioned().map_or(Drop(DropReason::OncharNotTriggered), Wake)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::{AccountId, ChannelId};
    use crate::message::{Author, MentionFacts};

    fn ev(kind: ChatKind, text: &str, mentions: MentionFacts) -> Inbound {
        Inbound {
            channel: ChannelId::new("mattermost"),
            account: AccountId::default(),
            chat_kind: kind,
            peer_id: "c".into(),
            parent_peer_id: None,
            chat_id: "c".into(),
            guild_id: None,
            team_id: None,
            member_roles: vec![],
            thread_id: None,
            author: Author { id: "u".into(), ..Default::default() },
            message_id: "m".into(),
            text: text.into(),
            ts_ms: 0,
            mentions: MentionFacts { can_detect: true, ..mentions },
        }
    }

    fn group_policy(gate: MentionGate) -> WakePolicy {
        WakePolicy { group_policy: GroupPolicy::Open, group_sender_allowed: true, gate, ..Default::default() }
    }

    #[test]
    fn reply_to_bot_wakes_in_oncall_and_can_be_turned_off() {
        let e = ev(ChatKind::Channel, "Looks good, thanks!", MentionFacts { reply_to_bot: true, ..Default::default() });
        let mut p = group_policy(MentionGate::Required);
        assert_eq!(decide(&e, &p, &MentionPatterns::none()), WakeDecision::Wake(WakeReason::ReplyToBot));
        p.implicit.reply_to_bot = false;
        assert_eq!(decide(&e, &p, &MentionPatterns::none()), WakeDecision::Drop(DropReason::MissingMention));
    }

    #[test]
    fn ladder_order_and_reasons() {
        let none = MentionPatterns::none();
        let plain = ev(ChatKind::Channel, "hello", MentionFacts::default());
        assert_eq!(decide(&plain, &group_policy(MentionGate::Off), &none), WakeDecision::Wake(WakeReason::Always));
        assert_eq!(
            decide(&plain, &group_policy(MentionGate::Required), &none),
            WakeDecision::Drop(DropReason::MissingMention)
        );
        assert_eq!(
            decide(&plain, &group_policy(MentionGate::Never), &none),
            WakeDecision::Drop(DropReason::ChatmodeOff)
        );
        let pats = MentionPatterns::new(["\\bpincer\\b"]).unwrap();
        let named = ev(ChatKind::Channel, "hey PINCER help", MentionFacts::default());
        assert_eq!(
            decide(&named, &group_policy(MentionGate::Required), &pats),
            WakeDecision::Wake(WakeReason::Pattern)
        );
        let bang = ev(ChatKind::Channel, "!status", MentionFacts::default());
        let onchar = group_policy(MentionGate::Prefix(vec![">".into(), "!".into()]));
        assert_eq!(decide(&bang, &onchar, &none), WakeDecision::Wake(WakeReason::Onchar));
        assert_eq!(decide(&plain, &onchar, &none), WakeDecision::Drop(DropReason::OncharNotTriggered));
        let mut own = plain.clone();
        own.author.is_self = true;
        assert_eq!(decide(&own, &group_policy(MentionGate::Off), &none), WakeDecision::Drop(DropReason::OwnMessage));
        let mut bot = ev(ChatKind::Channel, "hi", MentionFacts { reply_to_bot: true, ..Default::default() });
        bot.author.is_bot = true;
        let mut p = group_policy(MentionGate::Required);
        assert_eq!(decide(&bot, &p, &none), WakeDecision::Drop(DropReason::BotAuthor));
        p.allow_bots = AllowBots::Mentions;
        assert_eq!(decide(&bot, &p, &none), WakeDecision::Drop(DropReason::BotAuthor));
        p.allow_bots = AllowBots::On;
        assert_eq!(
            decide(&bot, &p, &none),
            WakeDecision::Drop(DropReason::MissingMention),
            "bots get no implicit mentions"
        );
        let mut p = group_policy(MentionGate::Off);
        p.group_policy = GroupPolicy::Allowlist;
        assert_eq!(decide(&plain, &p, &none), WakeDecision::Drop(DropReason::GroupNotAllowed));
        p.group_listed = true;
        p.group_sender_allowed = false;
        assert_eq!(decide(&plain, &p, &none), WakeDecision::Drop(DropReason::SenderNotAllowed));
    }

    #[test]
    fn dm_policies() {
        let none = MentionPatterns::none();
        let dm = ev(ChatKind::Direct, "hi", MentionFacts::default());
        let mut p = WakePolicy::default();
        assert_eq!(decide(&dm, &p, &none), WakeDecision::Drop(DropReason::PairingRequired));
        p.dm_sender_allowed = true;
        assert_eq!(decide(&dm, &p, &none), WakeDecision::Wake(WakeReason::Direct));
        p.dm_policy = DmPolicy::Disabled;
        assert_eq!(decide(&dm, &p, &none), WakeDecision::Drop(DropReason::DmDisabled));
        p.dm_policy = DmPolicy::Allowlist;
        p.dm_sender_allowed = false;
        assert_eq!(decide(&dm, &p, &none), WakeDecision::Drop(DropReason::DmNotAllowed));
        p.dm_policy = DmPolicy::Open;
        assert_eq!(decide(&dm, &p, &none), WakeDecision::Wake(WakeReason::Direct));
        let empty = ev(ChatKind::Direct, "  ", MentionFacts::default());
        assert_eq!(decide(&empty, &p, &none), WakeDecision::Drop(DropReason::Empty));
    }
}
