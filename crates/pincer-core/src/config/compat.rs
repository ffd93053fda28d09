//! OpenClaw compatibility: sections and keys pincer accepts but ignores (stripped before
//! validation, one warning each), retired enum values read as their replacement, and channel
//! sections this build has no adapter for.
//!
//! To ignore another OpenClaw key, add one line to [`IGNORED`].

use super::error::ConfigWarning;
use super::path::{format_path, pattern_matches, Seg};
use serde_json::Value;

/// Why a key is ignored; selects the warning text.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Why {
    /// An OpenClaw feature pincer does not implement.
    Unsupported,
    /// A key OpenClaw itself retired (its `doctor --fix` removes it).
    Retired,
}

/// OpenClaw sections and keys that load but are ignored, as dotted patterns where `*` matches
/// any key or array index. One-segment patterns are top-level sections.
pub(crate) const IGNORED: &[(&str, Why)] = &[
    // Top-level sections.
    ("meta", Why::Unsupported),
    ("wizard", Why::Unsupported),
    ("env", Why::Unsupported),
    ("auth", Why::Unsupported),
    ("cron", Why::Unsupported),
    ("hooks", Why::Unsupported),
    ("tools", Why::Unsupported),
    ("skills", Why::Unsupported),
    ("mcp", Why::Unsupported),
    ("logging", Why::Unsupported),
    ("accessGroups", Why::Unsupported),
    ("broadcast", Why::Unsupported),
    ("commands", Why::Unsupported),
    ("ui", Why::Unsupported),
    ("talk", Why::Unsupported),
    ("discovery", Why::Unsupported),
    ("secrets", Why::Unsupported),
    ("update", Why::Unsupported),
    ("browser", Why::Unsupported),
    ("diagnostics", Why::Unsupported),
    ("identity", Why::Unsupported),
    ("routing", Why::Unsupported),
    ("agent", Why::Unsupported),
    ("acp", Why::Unsupported),
    ("nodes", Why::Unsupported),
    ("memory", Why::Unsupported),
    ("approvals", Why::Unsupported),
    ("canvasHost", Why::Unsupported),
    ("web", Why::Unsupported),
    // gateway.*
    ("gateway.controlUi.basePath", Why::Unsupported),
    ("gateway.controlUi.allowedOrigins", Why::Unsupported),
    ("gateway.tls", Why::Unsupported),
    ("gateway.remote", Why::Unsupported),
    ("gateway.trustedProxies", Why::Unsupported),
    ("gateway.nodes", Why::Unsupported),
    ("gateway.tools", Why::Unsupported),
    ("gateway.auth.password", Why::Unsupported),
    ("gateway.auth.allowTailscale", Why::Unsupported),
    ("gateway.auth.trustedProxy", Why::Unsupported),
    ("gateway.auth.rateLimit", Why::Unsupported),
    ("gateway.http.endpoints.responses", Why::Unsupported),
    ("gateway.reload.debounceMs", Why::Retired),
    ("gateway.reload.deferralTimeoutMs", Why::Retired),
    ("gateway.channelHealthCheckMinutes", Why::Retired),
    ("gateway.channelStaleEventThresholdMinutes", Why::Retired),
    ("gateway.channelMaxRestartsPerHour", Why::Retired),
    ("gateway.handshakeTimeoutMs", Why::Retired),
    // agents.defaults.*
    ("agents.defaults.workspace", Why::Unsupported),
    ("agents.defaults.heartbeat", Why::Unsupported),
    ("agents.defaults.typingMode", Why::Unsupported),
    ("agents.defaults.typingIntervalSeconds", Why::Unsupported),
    ("agents.defaults.models", Why::Unsupported),
    ("agents.defaults.utilityModel", Why::Unsupported),
    ("agents.defaults.imageModel", Why::Unsupported),
    ("agents.defaults.sandbox", Why::Unsupported),
    ("agents.defaults.compaction", Why::Unsupported),
    ("agents.defaults.thinkingDefault", Why::Unsupported),
    ("agents.defaults.blockStreamingDefault", Why::Unsupported),
    ("agents.defaults.blockStreamingBreak", Why::Unsupported),
    ("agents.defaults.blockStreamingChunk", Why::Unsupported),
    ("agents.defaults.blockStreamingCoalesce", Why::Unsupported),
    ("agents.defaults.humanDelay", Why::Unsupported),
    ("agents.defaults.mediaMaxMb", Why::Unsupported),
    ("agents.defaults.silentReply", Why::Unsupported),
    // agents.entries.<id>.*
    ("agents.entries.*.workspace", Why::Unsupported),
    ("agents.entries.*.agentDir", Why::Unsupported),
    ("agents.entries.*.tools", Why::Unsupported),
    ("agents.entries.*.skills", Why::Unsupported),
    ("agents.entries.*.identity", Why::Unsupported),
    ("agents.entries.*.typingMode", Why::Unsupported),
    // models.*
    ("models.providers.*.authHeader", Why::Unsupported),
    ("models.providers.*.models.*.reasoning", Why::Unsupported),
    ("models.providers.*.models.*.input", Why::Unsupported),
    ("models.providers.*.models.*.contextTokens", Why::Unsupported),
    ("models.providers.*.models.*.cost", Why::Unsupported),
    // session.*
    ("session.reset", Why::Unsupported),
    ("session.resetByType", Why::Unsupported),
    ("session.resetByChannel", Why::Unsupported),
    ("session.resetTriggers", Why::Unsupported),
    ("session.maintenance", Why::Unsupported),
    ("session.sendPolicy", Why::Unsupported),
    ("session.store", Why::Unsupported),
    ("session.threadBindings", Why::Unsupported),
    // messages.*
    ("messages.inbound", Why::Unsupported),
    ("messages.ackReaction", Why::Unsupported),
    ("messages.ackReactionScope", Why::Unsupported),
    ("messages.statusReactions", Why::Unsupported),
    ("messages.visibleReplies", Why::Unsupported),
    ("messages.queue.drop", Why::Unsupported),
    ("messages.queue.debounceMsByChannel", Why::Unsupported),
    ("messages.groupChat.visibleReplies", Why::Unsupported),
    ("messages.groupChat.unmentionedInbound", Why::Unsupported),
    // channels.*
    ("channels.defaults.contextVisibility", Why::Unsupported),
    ("channels.defaults.botLoopProtection", Why::Unsupported),
    ("channels.defaults.heartbeatVisibility", Why::Unsupported),
    ("channels.modelByChannel", Why::Unsupported),
    // plugins.*
    ("plugins.slots", Why::Unsupported),
    ("plugins.installs", Why::Unsupported),
    ("plugins.entries.*.hooks", Why::Unsupported),
];

/// OpenClaw keys of typed channel sections that pincer accepts but ignores, per channel. Each
/// key is a dotted pattern (`*` = any key) that applies to the channel section and to every
/// account: `channels.<ch>.<key>` and `channels.<ch>.accounts.*.<key>`. Keys whose absence
/// would widen access (e.g. `groupAllowFrom`, `roles`) are deliberately not listed: they stay
/// errors, so a config never silently admits more senders than it says.
pub(crate) const CHANNEL_IGNORED: &[(&str, &[&str])] = &[
    (
        "discord",
        &[
            "applicationId",
            "defaultAccount",
            "historyLimit",
            "dmHistoryLimit",
            "maxLinesPerMessage",
            "streaming",
            "chunkMode",
            "blockStreaming",
            "blockStreamingCoalesce",
            "suppressEmbeds",
            "mentionAliases",
            "mentionPatterns",
            "threadBindings",
            "proxy",
            "actions",
            "commands",
            "responsePrefix",
            "replyToModeByChatType",
            "contextVisibility",
            "configWrites",
            "dangerouslyAllowNameMatching",
            "botLoopProtection",
            "execApprovals",
            "retry",
            "heartbeat",
            "markdown",
            "mediaMaxMb",
            "activity",
            "status",
            "pluralkit",
            "voice",
            "dm.groupChannels",
            "guilds.*.ignoreOtherMentions",
            "guilds.*.reactionNotifications",
            "guilds.*.tools",
            "guilds.*.toolsBySender",
            "guilds.*.channels.*.ignoreOtherMentions",
            "guilds.*.channels.*.skills",
            "guilds.*.channels.*.systemPrompt",
            "guilds.*.channels.*.tools",
            "guilds.*.channels.*.toolsBySender",
            "guilds.*.channels.*.autoThread",
            "guilds.*.channels.*.includeThreadStarter",
        ],
    ),
    (
        "mattermost",
        &[
            "defaultAccount",
            "streaming",
            "blockStreaming",
            "blockStreamingCoalesce",
            "chunkMode",
            "historyLimit",
            "dmHistoryLimit",
            "commands",
            "interactions",
            "network",
            "dmChannelRetry",
            "actions",
            "responsePrefix",
            "mentionPatterns",
            "contextVisibility",
            "configWrites",
            "dangerouslyAllowNameMatching",
            "markdown",
            "mediaMaxMb",
            "heartbeat",
            "retry",
            "threadBindings",
            "groups.*.tools",
            "groups.*.toolsBySender",
            "groups.*.skills",
            "groups.*.systemPrompt",
        ],
    ),
    (
        "matrix",
        &[
            "defaultAccount",
            "initialSyncLimit",
            "markdown",
            "chunkMode",
            "streaming",
            "blockStreaming",
            "blockStreamingCoalesce",
            "historyLimit",
            "dmHistoryLimit",
            "responsePrefix",
            "mediaMaxMb",
            "actions",
            "proxy",
            "mentionPatterns",
            "contextVisibility",
            "configWrites",
            "dangerouslyAllowNameMatching",
            "botLoopProtection",
            "heartbeat",
            "retry",
            "threadBindings",
            "ackReaction",
            "ackReactionScope",
            "reactionNotifications",
            "groups.*.tools",
            "groups.*.toolsBySender",
            "groups.*.skills",
            "groups.*.systemPrompt",
            "groups.*.botLoopProtection",
            "rooms.*.tools",
            "rooms.*.toolsBySender",
            "rooms.*.skills",
            "rooms.*.systemPrompt",
            "rooms.*.botLoopProtection",
        ],
    ),
];

/// Every ignored pattern: [`IGNORED`] followed by [`CHANNEL_IGNORED`] expanded to the
/// channel and account levels.
pub(crate) fn ignored_patterns() -> Vec<(String, Why)> {
    let mut out: Vec<(String, Why)> = IGNORED.iter().map(|(p, w)| (p.to_string(), *w)).collect();
    for (channel, keys) in CHANNEL_IGNORED {
        for k in *keys {
            out.push((format!("channels.{channel}.{k}"), Why::Unsupported));
            out.push((format!("channels.{channel}.accounts.*.{k}"), Why::Unsupported));
        }
    }
    out
}

/// Enum values serde accepts through an alias (see `model.rs`) that the schema does not list:
/// `(path pattern, value, read as, note)`. Validation accepts them with a warning.
pub(crate) const ENUM_ALIASES: &[(&str, &str, &str, &str)] = &[
    ("gateway.reload.mode", "hot", "hybrid", "retired"),
    ("gateway.reload.mode", "restart", "hybrid", "retired"),
    ("messages.queue.mode", "steer", "followup", "not supported by pincer"),
    ("messages.queue.mode", "queue", "followup", "not supported by pincer"),
    ("messages.queue.byChannel.*", "steer", "followup", "not supported by pincer"),
    ("messages.queue.byChannel.*", "queue", "followup", "not supported by pincer"),
];

/// If `value` is an accepted alias at `path`, the warning to emit for it.
pub(crate) fn enum_alias(path: &[Seg], value: &str) -> Option<ConfigWarning> {
    ENUM_ALIASES.iter().find_map(|(pattern, alias, canonical, note)| {
        let pat: Vec<&str> = pattern.split('.').collect();
        (*alias == value && pattern_matches(&pat, path))
            .then(|| ConfigWarning::new(format_path(path), format!("\"{alias}\" is {note}; read as \"{canonical}\"")))
    })
}

/// Remove every [`IGNORED`] section/key present in `root`, one warning each, then warn once
/// per `channels.<name>` that is neither `defaults` nor in `typed_channels` (those sections
/// are kept: they land in `ChannelsConfig::other`).
pub(crate) fn strip_ignored(root: &mut Value, typed_channels: &[String], warnings: &mut Vec<ConfigWarning>) {
    for (pattern, why) in ignored_patterns() {
        let pat: Vec<&str> = pattern.split('.').collect();
        let message = match (why, pat.len()) {
            (Why::Unsupported, 1) => "section not supported by pincer; ignored",
            (Why::Unsupported, _) => "not supported by pincer; ignored",
            (Why::Retired, _) => "retired in OpenClaw; ignored",
        };
        strip(root, &pat, &mut Vec::new(), message, warnings);
    }
    if let Some(Value::Object(channels)) = root.get("channels") {
        for name in channels.keys() {
            if name != "defaults" && !typed_channels.iter().any(|t| t == name) {
                let path = format_path(&[Seg::Key("channels".into()), Seg::Key(name.clone())]);
                warnings.push(ConfigWarning::new(path, "channel not supported by this build; ignored"));
            }
        }
    }
}

fn strip(value: &mut Value, pat: &[&str], path: &mut Vec<Seg>, message: &str, warnings: &mut Vec<ConfigWarning>) {
    let Some((first, rest)) = pat.split_first() else {
        return;
    };
    if rest.is_empty() {
        if let Some(map) = value.as_object_mut() {
            if map.remove(*first).is_some() {
                path.push(Seg::Key(first.to_string()));
                warnings.push(ConfigWarning::new(format_path(path), message));
                path.pop();
            }
        }
        return;
    }
    match value {
        Value::Object(map) if *first == "*" => {
            for (k, v) in map.iter_mut() {
                path.push(Seg::Key(k.clone()));
                strip(v, rest, path, message, warnings);
                path.pop();
            }
        }
        Value::Object(map) => {
            if let Some(v) = map.get_mut(*first) {
                path.push(Seg::Key(first.to_string()));
                strip(v, rest, path, message, warnings);
                path.pop();
            }
        }
        Value::Array(items) if *first == "*" => {
            for (i, v) in items.iter_mut().enumerate() {
                path.push(Seg::Index(i));
                strip(v, rest, path, message, warnings);
                path.pop();
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::schema::{json_schema, Validator};

    /// Every ignored nested key must sit under a typed object, and must not be a key the model
    /// now types (or it would be silently stripped). Top-level sections likewise.
    #[test]
    fn ignored_table_matches_the_model() {
        let root = &json_schema();
        let v = Validator::new(root);
        // `Option<T>` fields are `anyOf: [T, null]`: look through to `T`.
        fn non_null<'s>(v: &Validator<'s>, node: &'s Value) -> &'s Value {
            let node = v.resolve(node);
            let alts = node.get("anyOf").and_then(Value::as_array);
            alts.and_then(|alts| alts.iter().map(|a| v.resolve(a)).find(|a| a.get("type") != Some(&"null".into())))
                .unwrap_or(node)
        }
        for (pattern, _) in ignored_patterns() {
            let segs: Vec<&str> = pattern.split('.').collect();
            let (last, parents) = segs.split_last().unwrap();
            let mut node = non_null(&v, root);
            for seg in parents {
                let next = if *seg == "*" {
                    node.get("additionalProperties").or_else(|| node.get("items"))
                } else {
                    node.get("properties").and_then(|p| p.get(*seg))
                };
                node = non_null(&v, next.unwrap_or_else(|| panic!("{pattern}: no typed parent at {seg}")));
            }
            let typed = node.get("properties").and_then(|p| p.get(*last)).is_some();
            assert!(!typed, "{pattern} is typed by the model but listed as ignored");
        }
    }
}
