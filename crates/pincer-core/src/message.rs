//! Inbound and outbound message types shared by channels, the router and the runtime.
//!
//! An [`Inbound`] carries the exact platform ids (never case-folded) and the explicit facts the
//! wake decision needs. A [`DeliveryTarget`] is the address a reply goes to; it is computed once
//! from the inbound event and stored with the session, never re-derived by parsing a session key.

use crate::ids::{AccountId, ChannelId};
use serde::{Deserialize, Serialize};

/// Kind of conversation, in OpenClaw's vocabulary (`ChatType`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ChatKind {
    /// One-to-one conversation with the bot (a DM).
    Direct,
    /// A small group conversation (Mattermost `G`/`P`, Telegram group).
    Group,
    /// A channel or room (Mattermost `O`, Discord guild channel, Matrix room).
    Channel,
}

impl ChatKind {
    /// The token used in session keys: `direct`, `group` or `channel`.
    pub fn as_str(self) -> &'static str {
        match self {
            ChatKind::Direct => "direct",
            ChatKind::Group => "group",
            ChatKind::Channel => "channel",
        }
    }
}

/// The author of an inbound message.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Author {
    /// Exact platform user id.
    pub id: String,
    /// Display or user name, when the platform gives one.
    pub name: Option<String>,
    /// True when the platform marks the author as a bot.
    pub is_bot: bool,
    /// True when the author is this bot account itself (never wakes).
    pub is_self: bool,
}

/// Mention facts detected by the channel adapter. Each is a separate fact so the wake decision
/// can apply one config flag per implicit mention (reference §5, bug classes 2 and 14).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MentionFacts {
    /// The platform's native mention of the bot (`@botname`, `<@id>`, a Matrix pill).
    pub native: bool,
    /// The message is a native reply to one of the bot's own messages.
    pub reply_to_bot: bool,
    /// The message quotes the bot.
    pub quoted_bot: bool,
    /// The bot already replied in this thread (filled from the store by the runtime).
    pub thread_participation: bool,
    /// Whether the platform lets us detect mentions at all (`canDetectMention`).
    pub can_detect: bool,
}

/// One normalised inbound message, as produced by a channel adapter.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Inbound {
    /// Channel the message arrived on (`mattermost`, `webchat`, ...).
    pub channel: ChannelId,
    /// Channel account that received it.
    pub account: AccountId,
    /// Conversation kind.
    pub chat_kind: ChatKind,
    /// Routing peer id: the sender's id for DMs, the conversation id for groups and channels.
    pub peer_id: String,
    /// Parent conversation id (e.g. the channel of a Discord thread), for binding inheritance.
    pub parent_peer_id: Option<String>,
    /// Exact platform conversation id to reply into (a DM channel id, a room id ...).
    pub chat_id: String,
    /// Discord guild id, for `bindings[].match.guildId`.
    pub guild_id: Option<String>,
    /// Slack team id, for `bindings[].match.teamId`.
    pub team_id: Option<String>,
    /// The author's Discord role ids, for `bindings[].match.roles`.
    pub member_roles: Vec<String>,
    /// Thread id (Mattermost root post id, Slack `thread_ts`, Matrix thread root event id).
    pub thread_id: Option<String>,
    /// The author.
    pub author: Author,
    /// Exact platform message id (dedupe key together with channel and account).
    pub message_id: String,
    /// Message text as the user wrote it.
    pub text: String,
    /// Platform timestamp in ms since the Unix epoch.
    pub ts_ms: i64,
    /// Mention facts.
    pub mentions: MentionFacts,
}

/// Where a reply goes. Stored with the session, exact case, never parsed back out of a key.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct DeliveryTarget {
    /// Channel id.
    pub channel: ChannelId,
    /// Account id.
    pub account: AccountId,
    /// Platform destination understood by the channel adapter (a channel/room/chat id).
    pub to: String,
    /// Thread to post into, if any.
    pub thread_id: Option<String>,
    /// Message to reference as a native reply, if the channel's `replyToMode` asks for one.
    pub reply_to_id: Option<String>,
}

impl DeliveryTarget {
    /// The ordering key for delivery: rows with the same key are delivered in order.
    pub fn order_key(&self) -> String {
        format!(
            "{}\u{1f}{}\u{1f}{}\u{1f}{}",
            self.channel,
            self.account,
            self.to,
            self.thread_id.as_deref().unwrap_or("")
        )
    }
}
