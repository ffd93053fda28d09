//! The typed config model. Key names follow OpenClaw's `openclaw.json` (reference §3), in
//! camelCase. `FooConfig` is the serde type; defaults are the reference's defaults unless a
//! doc comment says otherwise. Unknown keys are rejected when loading (see `super::parse`);
//! cross-field rules live in `semantic.rs` (`Config::validate`).

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Default control-plane port (reference §1).
pub const DEFAULT_PORT: u16 = 18789;

/// The whole config file.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Config {
    /// Optional JSON Schema pointer, tolerated at the root as in OpenClaw.
    #[serde(rename = "$schema", default, skip_serializing_if = "Option::is_none")]
    pub schema: Option<String>,
    /// Gateway process settings: port, bind, auth, reload, HTTP endpoints.
    #[serde(default)]
    pub gateway: GatewayConfig,
    /// Agents: defaults and per-agent entries.
    #[serde(default)]
    pub agents: AgentsConfig,
    /// Model providers.
    #[serde(default)]
    pub models: ModelsConfig,
    /// Agent selection rules, first match by tier (reference §4).
    #[serde(default)]
    pub bindings: Vec<BindingConfig>,
    /// Session key scoping.
    #[serde(default)]
    pub session: SessionConfig,
    /// Message handling: queue modes, group chat mention patterns.
    #[serde(default)]
    pub messages: MessagesConfig,
    /// Channel sections. Each channel issue adds its own typed section.
    #[serde(default)]
    pub channels: ChannelsConfig,
    /// Out-of-process plugins.
    #[serde(default)]
    pub plugins: PluginsConfig,
    /// Durable outbox retry policy (pincer extension; OpenClaw has no equivalent key).
    #[serde(default)]
    pub outbox: OutboxConfig,
}

/// `gateway.*`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GatewayConfig {
    /// `local` or `remote` (accepted for OpenClaw compatibility; pincer always runs locally).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<GatewayMode>,
    /// TCP port of the control plane, 1-65535. Default 18789.
    #[serde(default = "default_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: u16,
    /// Bind address: `loopback` (127.0.0.1, default), `lan` (0.0.0.0), `auto` (= loopback),
    /// `custom` (uses `customBindHost`), or a literal IP address.
    #[serde(default = "default_bind")]
    pub bind: String,
    /// Host for `bind: "custom"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub custom_bind_host: Option<String>,
    /// Control-plane authentication.
    #[serde(default)]
    pub auth: GatewayAuthConfig,
    /// Config hot reload.
    #[serde(default)]
    pub reload: GatewayReloadConfig,
    /// HTTP endpoints.
    #[serde(default)]
    pub http: GatewayHttpConfig,
    /// Web chat / control UI page served at `/`.
    #[serde(default)]
    pub control_ui: ControlUiConfig,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        GatewayConfig {
            mode: None,
            port: DEFAULT_PORT,
            bind: default_bind(),
            custom_bind_host: None,
            auth: GatewayAuthConfig::default(),
            reload: GatewayReloadConfig::default(),
            http: GatewayHttpConfig::default(),
            control_ui: ControlUiConfig::default(),
        }
    }
}

fn default_port() -> u16 {
    DEFAULT_PORT
}
fn default_bind() -> String {
    "loopback".to_string()
}
fn default_true() -> bool {
    true
}

/// `gateway.mode`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum GatewayMode {
    /// Run the gateway on this host.
    Local,
    /// Connect to a remote gateway (not supported by pincer; accepted and reported).
    Remote,
}

/// `gateway.auth`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GatewayAuthConfig {
    /// `token` (default) or `none`.
    #[serde(default)]
    pub mode: AuthMode,
    /// Shared token. When unset in token mode, one is generated into `<state>/gateway.token`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
}

/// `gateway.auth.mode`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum AuthMode {
    /// Bearer/shared token auth (default).
    #[default]
    Token,
    /// No auth. Refused on a non-loopback bind.
    None,
}

/// `gateway.reload`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GatewayReloadConfig {
    /// `hybrid` (default: watch the file and apply changes) or `off`.
    #[serde(default)]
    pub mode: ReloadMode,
}

/// `gateway.reload.mode`. The retired `hot`/`restart` values are read as `hybrid`, as the
/// reference's `doctor --fix` does.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ReloadMode {
    /// Watch the file; apply what changed.
    #[default]
    #[serde(alias = "hot", alias = "restart")]
    Hybrid,
    /// No watching; SIGHUP and `config.apply` still reload.
    Off,
}

/// `gateway.http`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GatewayHttpConfig {
    /// `gateway.http.endpoints`.
    #[serde(default)]
    pub endpoints: HttpEndpointsConfig,
}

/// `gateway.http.endpoints`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpEndpointsConfig {
    /// OpenAI-compatible `/v1/chat/completions` + `/v1/models`. Unset: on for loopback binds,
    /// off otherwise (see [`GatewayConfig::chat_completions_enabled`]).
    #[serde(default)]
    pub chat_completions: EnabledFlag,
}

/// `{enabled: bool}`; unset means "the feature's default".
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EnabledFlag {
    /// Whether the feature is on; `None` = its default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
}

impl GatewayConfig {
    /// Whether `/v1/chat/completions` is served: the explicit setting, else on when the gateway
    /// listens on loopback only (the bearer is the gateway token either way).
    pub fn chat_completions_enabled(&self) -> bool {
        self.http
            .endpoints
            .chat_completions
            .enabled
            .unwrap_or_else(|| super::bind_is_loopback(&self.bind, self.custom_bind_host.as_deref()).unwrap_or(false))
    }
}

/// `gateway.controlUi`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ControlUiConfig {
    /// Serve the web chat page at `/`. Default true.
    #[serde(default = "default_true")]
    pub enabled: bool,
}

impl Default for ControlUiConfig {
    fn default() -> Self {
        ControlUiConfig { enabled: true }
    }
}

/// `agents`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AgentsConfig {
    /// Defaults for every agent.
    #[serde(default)]
    pub defaults: AgentDefaultsConfig,
    /// Per-agent overrides, keyed by agent id.
    #[serde(default)]
    pub entries: BTreeMap<String, AgentEntryConfig>,
}

/// `agents.defaults`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AgentDefaultsConfig {
    /// Model selection; unset means the built-in `echo` agent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<ModelSelection>,
    /// System prompt sent before the history.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system_prompt: Option<String>,
    /// Run budget in seconds. Default 600.
    #[serde(default = "default_timeout_seconds")]
    pub timeout_seconds: u64,
    /// Global cap on concurrent agent runs, at least 1. Default 4.
    #[serde(default = "default_max_concurrent")]
    #[schemars(range(min = 1))]
    pub max_concurrent: u32,
    /// Number of transcript turns sent with each run. Default 50.
    #[serde(default = "default_history_limit")]
    pub history_limit: u32,
}

impl Default for AgentDefaultsConfig {
    fn default() -> Self {
        AgentDefaultsConfig {
            model: None,
            system_prompt: None,
            timeout_seconds: default_timeout_seconds(),
            max_concurrent: default_max_concurrent(),
            history_limit: default_history_limit(),
        }
    }
}

fn default_timeout_seconds() -> u64 {
    600
}
fn default_max_concurrent() -> u32 {
    4
}
fn default_history_limit() -> u32 {
    50
}

/// A model selection: `"provider/model"` or `{primary, fallbacks}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum ModelSelection {
    /// Shorthand: just the primary model ref.
    Ref(String),
    /// Primary and ordered fallbacks.
    Full(ModelSelectionFull),
}

/// `{primary, fallbacks}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ModelSelectionFull {
    /// Primary model ref, `provider/model`.
    pub primary: String,
    /// Fallback model refs, tried in order.
    #[serde(default)]
    pub fallbacks: Vec<String>,
}

impl ModelSelection {
    /// The primary ref followed by the fallbacks, in order.
    pub fn chain(&self) -> Vec<&str> {
        match self {
            ModelSelection::Ref(r) => vec![r.as_str()],
            ModelSelection::Full(f) => {
                std::iter::once(f.primary.as_str()).chain(f.fallbacks.iter().map(String::as_str)).collect()
            }
        }
    }
}

/// `agents.entries.<id>`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AgentEntryConfig {
    /// Marks the default agent (else the first entry, else `main`).
    #[serde(default)]
    pub default: bool,
    /// Display name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Overrides `agents.defaults.model`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<ModelSelection>,
    /// Overrides `agents.defaults.systemPrompt`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system_prompt: Option<String>,
    /// Overrides `agents.defaults.timeoutSeconds`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_seconds: Option<u64>,
    /// Overrides `agents.defaults.historyLimit`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub history_limit: Option<u32>,
    /// Group chat settings (mention patterns).
    #[serde(default)]
    pub group_chat: GroupChatConfig,
}

/// `groupChat` (agent entry or `messages.groupChat`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GroupChatConfig {
    /// Regexes that count as a mention of the bot (case-insensitive).
    #[serde(default)]
    pub mention_patterns: Vec<String>,
    /// Pending group history kept for context.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub history_limit: Option<u32>,
}

/// `models`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ModelsConfig {
    /// `merge` or `replace` (accepted; pincer has no built-in catalog to merge with).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
    /// Providers by id.
    #[serde(default)]
    pub providers: BTreeMap<String, ProviderConfig>,
}

/// `models.providers.<id>`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ProviderConfig {
    /// Wire API spoken by the provider.
    pub api: ProviderApi,
    /// Base URL, e.g. `http://127.0.0.1:11434/v1` (OpenAI) or `https://api.anthropic.com`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_url: Option<String>,
    /// API key (use `${ENV_VAR}`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key: Option<String>,
    /// Extra HTTP headers.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Per-request timeout in seconds. Default 120.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_seconds: Option<u64>,
    /// Known models of this provider.
    #[serde(default)]
    pub models: Vec<ProviderModelConfig>,
    /// For `api: "exec"`: the command and its arguments.
    #[serde(default)]
    pub command: Vec<String>,
}

/// `models.providers.<id>.api`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum ProviderApi {
    /// OpenAI Chat Completions (`/v1/chat/completions`), streaming SSE.
    OpenaiCompletions,
    /// Anthropic Messages (`/v1/messages`), streaming SSE.
    AnthropicMessages,
    /// A local command: conversation JSON on stdin, reply on stdout.
    Exec,
    /// The built-in echo agent.
    Echo,
}

/// `models.providers.<id>.models[]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ProviderModelConfig {
    /// Model id as the provider names it.
    pub id: String,
    /// Display name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Context window in tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context_window: Option<u64>,
    /// Max output tokens per reply.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u64>,
}

/// `bindings[]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BindingConfig {
    /// `route` (default) or `acp` (accepted, ignored for routing).
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// Agent this binding selects.
    pub agent_id: String,
    /// What must match.
    #[serde(rename = "match")]
    pub matcher: BindingMatchConfig,
    /// Session scope overrides for matched messages.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<BindingSessionConfig>,
}

/// `bindings[].match`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BindingMatchConfig {
    /// Channel id.
    pub channel: String,
    /// Account id; `"*"` = any; omitted = the default account.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account_id: Option<String>,
    /// A specific peer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer: Option<BindingPeerConfig>,
    /// Discord guild id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guild_id: Option<String>,
    /// Slack team id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub team_id: Option<String>,
    /// Discord role ids.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub roles: Option<Vec<String>>,
}

/// `bindings[].match.peer`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BindingPeerConfig {
    /// `direct`, `group` or `channel` (group and channel match each other).
    pub kind: crate::message::ChatKind,
    /// Exact peer id, or `"*"`.
    pub id: String,
}

/// `bindings[].session`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BindingSessionConfig {
    /// Overrides `session.dmScope`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dm_scope: Option<DmScope>,
    /// Overrides `session.groupScope`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group_scope: Option<GroupScope>,
}

/// `session`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SessionConfig {
    /// How DMs map to sessions. Default `main`.
    #[serde(default)]
    pub dm_scope: DmScope,
    /// How groups map to sessions. Default `per-group`.
    #[serde(default)]
    pub group_scope: GroupScope,
    /// Name of the main session. Default `main`.
    #[serde(default = "default_main_key")]
    pub main_key: String,
    /// Canonical identity → list of `id` or `channel:id` aliases (shared DM sessions).
    #[serde(default)]
    pub identity_links: BTreeMap<String, Vec<String>>,
}

impl Default for SessionConfig {
    fn default() -> Self {
        SessionConfig {
            dm_scope: DmScope::default(),
            group_scope: GroupScope::default(),
            main_key: default_main_key(),
            identity_links: BTreeMap::new(),
        }
    }
}

fn default_main_key() -> String {
    "main".to_string()
}

/// `session.dmScope` (reference §4).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum DmScope {
    /// All DMs share `agent:<a>:<mainKey>`.
    #[default]
    Main,
    /// `agent:<a>:direct:<peer>`.
    PerPeer,
    /// `agent:<a>:<channel>:direct:<peer>`.
    PerChannelPeer,
    /// `agent:<a>:<channel>:<account>:direct:<peer>`.
    PerAccountChannelPeer,
}

/// `session.groupScope`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum GroupScope {
    /// `agent:<a>:<channel>:<group|channel>:<id>` (default).
    #[default]
    PerGroup,
    /// Groups go to the main session.
    Main,
}

/// `messages`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MessagesConfig {
    /// Queue behaviour while a session already has a run.
    #[serde(default)]
    pub queue: QueueConfig,
    /// Global group chat settings.
    #[serde(default)]
    pub group_chat: GroupChatConfig,
    /// Prefix added to every reply.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_prefix: Option<String>,
}

/// `messages.queue`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct QueueConfig {
    /// Queue mode. Default `followup`.
    #[serde(default)]
    pub mode: QueueMode,
    /// Quiet window before a `collect` batch drains, in ms. Default 500.
    #[serde(default = "default_debounce_ms")]
    pub debounce_ms: u64,
    /// Max queued messages per session, at least 1; the oldest is dropped beyond it. Default 20.
    #[serde(default = "default_cap")]
    #[schemars(range(min = 1))]
    pub cap: u32,
    /// Per-channel mode overrides.
    #[serde(default)]
    pub by_channel: BTreeMap<String, QueueMode>,
}

impl Default for QueueConfig {
    fn default() -> Self {
        QueueConfig {
            mode: QueueMode::default(),
            debounce_ms: default_debounce_ms(),
            cap: default_cap(),
            by_channel: BTreeMap::new(),
        }
    }
}

fn default_debounce_ms() -> u64 {
    500
}
fn default_cap() -> u32 {
    20
}

/// `messages.queue.mode`. `steer` and the legacy `queue` need mid-run injection, which pincer's
/// tool-less agent loop has no boundary for, so they behave as `followup`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum QueueMode {
    /// Run each message as its own turn after the current one.
    #[default]
    #[serde(alias = "steer", alias = "queue")]
    Followup,
    /// Coalesce queued messages into one turn after `debounceMs` of quiet.
    Collect,
    /// Abort the active run and run the newest message.
    Interrupt,
}

/// `channels`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ChannelsConfig {
    /// Defaults shared by all channels.
    #[serde(default)]
    pub defaults: ChannelDefaultsConfig,
    /// `channels.webhook` (pincer extension): outbound JSON webhook.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook: Option<super::channels::WebhookChannelConfig>,
    /// `channels.discord`: Discord bot accounts (gateway + REST).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub discord: Option<super::discord::DiscordChannelConfig>,
    /// `channels.mattermost`: Mattermost bot accounts (WebSocket events + REST API v4).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mattermost: Option<super::mattermost::MattermostChannelConfig>,
    /// `channels.matrix`: Matrix bot accounts (client-server API: `/sync` + room `send`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub matrix: Option<super::matrix::MatrixChannelConfig>,
    /// Channel sections this build does not know yet, kept verbatim (validation warns).
    #[serde(flatten)]
    pub other: BTreeMap<String, serde_json::Value>,
}

/// `channels.defaults`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ChannelDefaultsConfig {
    /// Default group policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group_policy: Option<GroupPolicy>,
    /// Default implicit-mention flags.
    #[serde(default)]
    pub implicit_mentions: ImplicitMentionsConfig,
}

/// `implicitMentions` (each flag defaults to true when unset at every level).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ImplicitMentionsConfig {
    /// A native reply to one of the bot's messages counts as a mention.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply_to_bot: Option<bool>,
    /// Quoting the bot counts as a mention.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quoted_bot: Option<bool>,
    /// A message in a thread the bot already replied in counts as a mention.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thread_participation: Option<bool>,
}

/// `dmPolicy`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum DmPolicy {
    /// Unknown senders get a pairing code (default).
    #[default]
    Pairing,
    /// Only `allowFrom` (and paired senders).
    Allowlist,
    /// Everyone (needs `allowFrom: ["*"]`).
    Open,
    /// DMs are dropped.
    Disabled,
}

/// `groupPolicy`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum GroupPolicy {
    /// Only conversations listed in `groups` (default).
    #[default]
    Allowlist,
    /// Any conversation.
    Open,
    /// Group messages are dropped.
    Disabled,
}

/// `replyToMode`: whether replies reference the message they answer as a native reply.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ReplyToMode {
    /// Plain messages (default).
    #[default]
    Off,
    /// Only the first chunk of a reply references the inbound message.
    First,
    /// Every chunk references it.
    All,
}

/// `plugins`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PluginsConfig {
    /// Global switch. Default true.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Exclusive allowlist of plugin ids, when set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow: Option<Vec<String>>,
    /// Denied plugin ids (wins over everything).
    #[serde(default)]
    pub deny: Vec<String>,
    /// Extra discovery paths.
    #[serde(default)]
    pub load: PluginsLoadConfig,
    /// Per-plugin settings.
    #[serde(default)]
    pub entries: BTreeMap<String, PluginEntryConfig>,
}

impl Default for PluginsConfig {
    fn default() -> Self {
        PluginsConfig {
            enabled: true,
            allow: None,
            deny: Vec::new(),
            load: PluginsLoadConfig::default(),
            entries: BTreeMap::new(),
        }
    }
}

/// `plugins.load`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PluginsLoadConfig {
    /// Plugin dirs, or dirs of plugin dirs.
    #[serde(default)]
    pub paths: Vec<String>,
}

/// `plugins.entries.<id>`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PluginEntryConfig {
    /// Per-plugin switch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    /// Plugin config, validated against the manifest's `configSchema`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<serde_json::Value>,
    /// pincer extension: how long an `invoke` of this plugin may take, in ms (default 30000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub invoke_timeout_ms: Option<u64>,
    /// pincer extension: how long `initialize` may take, in ms (default 10000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub initialize_timeout_ms: Option<u64>,
}

/// `outbox` (pincer extension): retry policy of the durable delivery worker.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OutboxConfig {
    /// Attempts before a row becomes `failed`, at least 1. Default 8.
    #[serde(default = "default_max_attempts")]
    #[schemars(range(min = 1))]
    pub max_attempts: u32,
    /// First retry delay in ms (doubles per attempt, ±20% jitter). Default 1000.
    #[serde(default = "default_initial_backoff_ms")]
    pub initial_backoff_ms: u64,
    /// Cap on the retry delay in ms. Default 300000 (5 min).
    #[serde(default = "default_max_backoff_ms")]
    pub max_backoff_ms: u64,
}

impl Default for OutboxConfig {
    fn default() -> Self {
        OutboxConfig {
            max_attempts: default_max_attempts(),
            initial_backoff_ms: default_initial_backoff_ms(),
            max_backoff_ms: default_max_backoff_ms(),
        }
    }
}

fn default_max_attempts() -> u32 {
    8
}
fn default_initial_backoff_ms() -> u64 {
    1000
}
fn default_max_backoff_ms() -> u64 {
    300_000
}
