//! Checks that need the typed config: cross references (bindings → agents, model refs →
//! providers), value rules the schema cannot express (bind addresses, regexes, non-empty
//! commands) and the auth/bind safety rule. All problems are collected, none stops the pass.

use super::error::{ConfigError, ConfigErrors, ConfigWarning};
use super::model::{AuthMode, Config, GatewayMode, ModelSelection, ProviderApi};
use super::path::{format_path, Seg};
use super::resolve::{split_model_ref, ECHO_PROVIDER};
use crate::ids::AgentId;
use std::net::IpAddr;

/// The `gateway.bind` keywords (anything else must be an IP literal).
pub const BIND_KEYWORDS: [&str; 4] = ["loopback", "lan", "auto", "custom"];

impl Config {
    /// Run the semantic checks on an already typed config (e.g. one built in code). [`parse`]
    /// runs them too. Returns the warnings, or every error found.
    ///
    /// [`parse`]: super::parse
    pub fn validate(&self) -> Result<Vec<ConfigWarning>, ConfigErrors> {
        let mut errors = Vec::new();
        let mut warnings = Vec::new();
        check(self, &mut errors, &mut warnings);
        if errors.is_empty() {
            Ok(warnings)
        } else {
            Err(ConfigErrors(errors))
        }
    }
}

/// Whether `gateway.bind` (with `customBindHost`) listens on loopback only; `None` when the
/// bind value is invalid or `custom` lacks a host.
pub fn bind_is_loopback(bind: &str, custom_bind_host: Option<&str>) -> Option<bool> {
    let host_is_loopback =
        |h: &str| h.eq_ignore_ascii_case("localhost") || h.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback());
    match bind {
        "loopback" | "auto" => Some(true),
        "lan" => Some(false),
        "custom" => custom_bind_host.filter(|h| !h.trim().is_empty()).map(|h| host_is_loopback(h.trim())),
        ip => ip.parse::<IpAddr>().ok().map(|ip| ip.is_loopback()),
    }
}

/// Where semantic problems are collected.
struct Report<'a> {
    errors: &'a mut Vec<ConfigError>,
    warnings: &'a mut Vec<ConfigWarning>,
}

impl Report<'_> {
    fn error(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.errors.push(ConfigError::new(path, message));
    }

    fn warn(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.warnings.push(ConfigWarning::new(path, message));
    }
}

fn key(k: &str) -> Seg {
    Seg::Key(k.to_string())
}

/// The path of `base` followed by the keys `more`.
fn join(base: &[Seg], more: &[&str]) -> String {
    let mut segs = base.to_vec();
    segs.extend(more.iter().map(|k| key(k)));
    format_path(&segs)
}

const AT_LEAST_ONE: &str = "expected an integer >= 1, got 0";

/// Collect semantic errors and warnings of `cfg`.
pub(crate) fn check(cfg: &Config, errors: &mut Vec<ConfigError>, warnings: &mut Vec<ConfigWarning>) {
    let mut r = Report { errors, warnings };
    check_gateway(cfg, &mut r);
    check_agents(cfg, &mut r);
    check_models(cfg, &mut r);
    check_bindings(cfg, &mut r);
    check_webhook(cfg, &mut r);
    check_discord(cfg, &mut r);
    check_mattermost(cfg, &mut r);
    check_matrix(cfg, &mut r);

    let main_key = &cfg.session.main_key;
    if main_key.trim().is_empty() || main_key.contains(':') {
        r.error("session.mainKey", format!("must be non-empty and must not contain \":\", got \"{main_key}\""));
    }
    if cfg.messages.queue.cap == 0 {
        r.error("messages.queue.cap", AT_LEAST_ONE);
    }
    let patterns = [key("messages"), key("groupChat"), key("mentionPatterns")];
    check_regexes(&patterns, &cfg.messages.group_chat.mention_patterns, &mut r);
    let outbox = &cfg.outbox;
    if outbox.max_attempts == 0 {
        r.error("outbox.maxAttempts", AT_LEAST_ONE);
    }
    if outbox.initial_backoff_ms > outbox.max_backoff_ms {
        r.error("outbox.initialBackoffMs", format!("must not exceed outbox.maxBackoffMs ({})", outbox.max_backoff_ms));
    }
}

fn check_gateway(cfg: &Config, r: &mut Report) {
    let gw = &cfg.gateway;
    if gw.port == 0 {
        r.error("gateway.port", "expected an integer 1-65535, got 0");
    }
    if gw.mode == Some(GatewayMode::Remote) {
        r.warn("gateway.mode", "\"remote\" is not supported by pincer; the gateway runs locally");
    }
    let custom_host = gw.custom_bind_host.as_deref();
    let loopback = bind_is_loopback(&gw.bind, custom_host);
    if gw.bind == "custom" {
        if loopback.is_none() {
            r.error("gateway.customBindHost", "required when gateway.bind is \"custom\"");
        }
    } else {
        if loopback.is_none() {
            let keywords = BIND_KEYWORDS.join("|");
            r.error("gateway.bind", format!("expected one of {keywords} or an IP address, got \"{}\"", gw.bind));
        }
        if custom_host.is_some() {
            r.warn("gateway.customBindHost", "ignored unless gateway.bind is \"custom\"");
        }
    }
    if gw.auth.mode == AuthMode::None && loopback == Some(false) {
        r.error(
            "gateway.auth.mode",
            format!(
                "\"none\" is refused on a non-loopback bind (gateway.bind is \"{}\"); \
                 use token auth or bind to loopback",
                gw.bind
            ),
        );
    }
}

fn check_agents(cfg: &Config, r: &mut Report) {
    let defaults = &cfg.agents.defaults;
    if defaults.max_concurrent == 0 {
        r.error("agents.defaults.maxConcurrent", AT_LEAST_ONE);
    }
    if defaults.timeout_seconds == 0 {
        r.error("agents.defaults.timeoutSeconds", AT_LEAST_ONE);
    }
    if let Some(m) = &defaults.model {
        check_model_selection(cfg, &[key("agents"), key("defaults"), key("model")], m, r);
    }
    let mut marked_default = Vec::new();
    for (id, entry) in &cfg.agents.entries {
        let base = [key("agents"), key("entries"), key(id)];
        if !AgentId::is_valid(id) {
            r.error(join(&base, &[]), invalid_agent_id(id));
        }
        if entry.default {
            marked_default.push(id.as_str());
        }
        if entry.timeout_seconds == Some(0) {
            r.error(join(&base, &["timeoutSeconds"]), AT_LEAST_ONE);
        }
        if let Some(m) = &entry.model {
            check_model_selection(cfg, &[&base[..], &[key("model")]].concat(), m, r);
        }
        let patterns = [&base[..], &[key("groupChat"), key("mentionPatterns")]].concat();
        check_regexes(&patterns, &entry.group_chat.mention_patterns, r);
    }
    if marked_default.len() > 1 {
        let ids = marked_default.join(", ");
        r.error("agents.entries", format!("more than one agent has default: true ({ids})"));
    }
}

/// Every ref of a model selection must be `echo` or `provider/model` with a configured
/// provider (the built-in `echo` provider needs no config).
fn check_model_selection(cfg: &Config, path: &[Seg], selection: &ModelSelection, r: &mut Report) {
    let refs: Vec<(String, &str)> = match selection {
        ModelSelection::Ref(m) => vec![(format_path(path), m.as_str())],
        ModelSelection::Full(f) => {
            let mut refs = vec![(join(path, &["primary"]), f.primary.as_str())];
            for (i, m) in f.fallbacks.iter().enumerate() {
                let at = [path, &[key("fallbacks"), Seg::Index(i)]].concat();
                refs.push((format_path(&at), m.as_str()));
            }
            refs
        }
    };
    let providers = &cfg.models.providers;
    for (at, model_ref) in refs {
        match split_model_ref(model_ref) {
            None => r.error(at, format!("invalid model ref \"{model_ref}\" (expected \"provider/model\")")),
            Some((provider, _)) if provider != ECHO_PROVIDER && !providers.contains_key(provider) => {
                let hint = if providers.is_empty() {
                    "no providers are configured".to_string()
                } else {
                    let known: Vec<&str> = providers.keys().map(String::as_str).collect();
                    format!("configured: {}", known.join(", "))
                };
                r.error(
                    at,
                    format!(
                        "unknown provider \"{provider}\" in \"{model_ref}\" \
                         (not in models.providers; {hint})"
                    ),
                );
            }
            Some(_) => {}
        }
    }
}

fn check_models(cfg: &Config, r: &mut Report) {
    if let Some(mode) = &cfg.models.mode {
        if mode != "merge" && mode != "replace" {
            r.error("models.mode", format!("expected one of merge|replace, got \"{mode}\""));
        }
    }
    for (id, p) in &cfg.models.providers {
        let base = [key("models"), key("providers"), key(id)];
        if id.contains('/') || id.trim().is_empty() {
            r.error(join(&base, &[]), "provider ids must be non-empty and must not contain \"/\"");
        }
        match p.api {
            ProviderApi::Exec if p.command.first().is_none_or(|c| c.trim().is_empty()) => r.error(
                join(&base, &["command"]),
                "required for api \"exec\": the program and its arguments, \
                 e.g. [\"/usr/local/bin/agent\"]",
            ),
            ProviderApi::OpenaiCompletions if p.base_url.is_none() => r.error(
                join(&base, &["baseUrl"]),
                "required for api \"openai-completions\", e.g. \"https://api.openai.com/v1\"",
            ),
            _ => {}
        }
        if let Some(url) = &p.base_url {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                r.error(join(&base, &["baseUrl"]), format!("expected an http:// or https:// URL, got \"{url}\""));
            }
        }
        if p.timeout_seconds == Some(0) {
            r.error(join(&base, &["timeoutSeconds"]), AT_LEAST_ONE);
        }
    }
}

fn check_bindings(cfg: &Config, r: &mut Report) {
    for (i, b) in cfg.bindings.iter().enumerate() {
        let base = [key("bindings"), Seg::Index(i)];
        if !AgentId::is_valid(&b.agent_id) {
            r.error(join(&base, &["agentId"]), invalid_agent_id(&b.agent_id));
        } else if b.agent_id != AgentId::DEFAULT && !cfg.agents.entries.contains_key(&b.agent_id) {
            r.error(join(&base, &["agentId"]), format!("unknown agent \"{}\" (not in agents.entries)", b.agent_id));
        }
        match b.kind.as_deref() {
            None | Some("route") => {}
            Some("acp") => r.warn(join(&base, &[]), "acp bindings are not supported by pincer; ignored for routing"),
            Some(other) => r.error(join(&base, &["type"]), format!("expected one of route|acp, got \"{other}\"")),
        }
        if b.matcher.channel.trim().is_empty() {
            r.error(join(&base, &["match", "channel"]), "must not be empty");
        }
        if let Some(peer) = &b.matcher.peer {
            if peer.id.trim().is_empty() {
                r.error(join(&base, &["match", "peer", "id"]), "must not be empty (use \"*\" for any peer)");
            }
        }
    }
}

fn invalid_agent_id(id: &str) -> String {
    let hint = match crate::ids::normalize_token(id) {
        Some(n) => format!("; try \"{n}\""),
        None => String::new(),
    };
    format!(
        "invalid agent id \"{id}\" (lowercase letters, digits, \"_\" and \"-\", \
         at most 64 chars{hint})"
    )
}

/// Mention patterns are compiled case-insensitively by the wake decision; reject ones that do
/// not compile.
fn check_regexes(base: &[Seg], patterns: &[String], r: &mut Report) {
    for (i, p) in patterns.iter().enumerate() {
        if let Err(e) = regex::RegexBuilder::new(p).case_insensitive(true).build() {
            // regex's syntax errors draw the pattern over several lines; keep the reason.
            let text = e.to_string();
            let reason = text.lines().last().unwrap_or_default().trim();
            let reason = reason.trim_start_matches("error: ");
            let at = format_path(&[base, &[Seg::Index(i)]].concat());
            r.error(at, format!("invalid regex: {reason}"));
        }
    }
}

fn check_webhook(cfg: &Config, r: &mut Report) {
    let Some(w) = &cfg.channels.webhook else {
        return;
    };
    if w.enabled == Some(false) {
        return;
    }
    let url_ok = |u: &str| u.starts_with("http://") || u.starts_with("https://");
    let mut check_url = |path: String, url: Option<&String>| match url {
        None => r.error(path, "required: the URL replies are POSTed to, e.g. \"https://example.org/hook\""),
        Some(u) if !url_ok(u) => r.error(path, format!("expected an http:// or https:// URL, got \"{u}\"")),
        Some(_) => {}
    };
    if w.accounts.is_empty() {
        check_url("channels.webhook.url".to_string(), w.url.as_ref());
    } else {
        for (id, a) in &w.accounts {
            if a.enabled != Some(false) {
                check_url(format!("channels.webhook.accounts.{id}.url"), a.url.as_ref().or(w.url.as_ref()));
            }
        }
    }
}

/// `channels.discord`: URL schemes, `textChunkLimit` 1-2000, and OpenClaw's rule that
/// `dmPolicy: "open"` needs `"*"` in `allowFrom`, for the base section and every account
/// (an account inherits the base values it does not set).
fn check_discord(cfg: &Config, r: &mut Report) {
    use super::discord::{DiscordId, DISCORD_TEXT_CHUNK_LIMIT};
    use super::model::DmPolicy;
    let Some(d) = &cfg.channels.discord else {
        return;
    };
    let check_urls = |base: &str, api_root: Option<&String>, gateway_url: Option<&String>, r: &mut Report| {
        if let Some(u) = api_root {
            if !(u.starts_with("http://") || u.starts_with("https://")) {
                r.error(format!("{base}.apiRoot"), format!("expected an http:// or https:// URL, got \"{u}\""));
            }
        }
        if let Some(u) = gateway_url {
            if !(u.starts_with("ws://") || u.starts_with("wss://")) {
                r.error(format!("{base}.gatewayUrl"), format!("expected a ws:// or wss:// URL, got \"{u}\""));
            }
        }
    };
    let check_limit = |base: &str, limit: Option<usize>, r: &mut Report| {
        if let Some(n) = limit {
            if n == 0 || n > DISCORD_TEXT_CHUNK_LIMIT {
                r.error(
                    format!("{base}.textChunkLimit"),
                    format!("expected an integer 1-{DISCORD_TEXT_CHUNK_LIMIT} (Discord's message limit), got {n}"),
                );
            }
        }
    };
    let open_needs_star = |path: String, policy: Option<DmPolicy>, allow: Option<&Vec<DiscordId>>, r: &mut Report| {
        if policy == Some(DmPolicy::Open) && !allow.is_some_and(|a| a.iter().any(|i| i.as_str() == "*")) {
            r.error(path, "dmPolicy \"open\" requires allowFrom to include \"*\"");
        }
    };
    let base = "channels.discord";
    check_urls(base, d.api_root.as_ref(), d.gateway_url.as_ref(), r);
    check_limit(base, d.text_chunk_limit, r);
    if d.accounts.is_empty() && d.enabled != Some(false) {
        open_needs_star(format!("{base}.allowFrom"), d.dm_policy, d.allow_from.as_ref(), r);
    }
    for (id, a) in &d.accounts {
        let at = join(&[key("channels"), key("discord"), key("accounts"), key(id)], &[]);
        check_urls(&at, a.api_root.as_ref(), a.gateway_url.as_ref(), r);
        check_limit(&at, a.text_chunk_limit, r);
        if d.enabled != Some(false) && a.enabled.or(d.enabled) != Some(false) {
            let allow = a.allow_from.as_ref().or(d.allow_from.as_ref());
            open_needs_star(format!("{at}.allowFrom"), a.dm_policy.or(d.dm_policy), allow, r);
        }
    }
}

/// `channels.mattermost`: `baseUrl` must be http(s) (after stripping `/api/v4`),
/// `textChunkLimit` 1-16383, `pingIntervalMs`/`pongTimeoutMs` at least 1, no empty
/// `oncharPrefixes`, and OpenClaw's rule that `dmPolicy: "open"` needs `"*"` in `allowFrom`,
/// for the base section and every account (an account inherits the base values it does not
/// set).
fn check_mattermost(cfg: &Config, r: &mut Report) {
    use super::mattermost::{
        mattermost_base_url_is_valid, normalize_mattermost_base_url, MattermostAccountConfig, MATTERMOST_MAX_POST_CHARS,
    };
    use super::model::DmPolicy;
    let Some(m) = &cfg.channels.mattermost else {
        return;
    };
    let check_keys = |base: &str, a: &MattermostAccountConfig, r: &mut Report| {
        if let Some(u) = &a.base_url {
            if !mattermost_base_url_is_valid(&normalize_mattermost_base_url(u)) {
                r.error(format!("{base}.baseUrl"), format!("expected an http:// or https:// URL, got \"{u}\""));
            }
        }
        if let Some(n) = a.text_chunk_limit {
            if n == 0 || n > MATTERMOST_MAX_POST_CHARS {
                r.error(
                    format!("{base}.textChunkLimit"),
                    format!("expected an integer 1-{MATTERMOST_MAX_POST_CHARS} (Mattermost's post limit), got {n}"),
                );
            }
        }
        for (key, v) in [("pingIntervalMs", a.ping_interval_ms), ("pongTimeoutMs", a.pong_timeout_ms)] {
            if v == Some(0) {
                r.error(format!("{base}.{key}"), AT_LEAST_ONE);
            }
        }
        for (i, p) in a.onchar_prefixes.iter().flatten().enumerate() {
            if p.is_empty() {
                r.error(format!("{base}.oncharPrefixes.{i}"), "must not be empty");
            }
        }
    };
    let open_needs_star = |path: String, policy: Option<DmPolicy>, allow: Option<&Vec<String>>, r: &mut Report| {
        if policy == Some(DmPolicy::Open) && !allow.is_some_and(|a| a.iter().any(|i| i.trim() == "*")) {
            r.error(path, "dmPolicy \"open\" requires allowFrom to include \"*\"");
        }
    };
    let base = "channels.mattermost";
    check_keys(base, &m.base_as_account(), r);
    if m.accounts.is_empty() && m.enabled != Some(false) {
        open_needs_star(format!("{base}.allowFrom"), m.dm_policy, m.allow_from.as_ref(), r);
    }
    for (id, a) in &m.accounts {
        let at = join(&[key("channels"), key("mattermost"), key("accounts"), key(id)], &[]);
        check_keys(&at, a, r);
        if m.enabled != Some(false) && a.enabled.or(m.enabled) != Some(false) {
            let allow = a.allow_from.as_ref().or(m.allow_from.as_ref());
            open_needs_star(format!("{at}.allowFrom"), a.dm_policy.or(m.dm_policy), allow, r);
        }
    }
}

/// `channels.matrix`: `homeserver` must be http(s), `userId` must look like `@localpart:server`,
/// `textChunkLimit` 1-8000, `syncTimeoutMs` at least 1, and OpenClaw's rule that `dm.policy:
/// "open"` needs `"*"` in `dm.allowFrom`, for the base section and every account (an account
/// inherits the base values it does not set; `dm` is merged key by key). `encryption: true` is
/// accepted with a warning: there is no crypto store, so encrypted rooms are not readable.
fn check_matrix(cfg: &Config, r: &mut Report) {
    use super::matrix::{
        matrix_homeserver_is_valid, matrix_user_id_is_valid, normalize_matrix_homeserver, MatrixAccountConfig,
        MATRIX_MAX_TEXT_CHUNK_LIMIT,
    };
    use super::model::DmPolicy;
    let Some(m) = &cfg.channels.matrix else {
        return;
    };
    let check_keys = |base: &str, a: &MatrixAccountConfig, r: &mut Report| {
        if let Some(u) = &a.homeserver {
            if !matrix_homeserver_is_valid(&normalize_matrix_homeserver(u)) {
                r.error(format!("{base}.homeserver"), format!("expected an http:// or https:// URL, got \"{u}\""));
            }
        }
        if let Some(u) = a.user_id.as_deref().map(str::trim).filter(|u| !u.is_empty() && !u.starts_with("${")) {
            if !matrix_user_id_is_valid(u) {
                r.error(
                    format!("{base}.userId"),
                    format!("expected a Matrix user id like @bot:example.org, got \"{u}\""),
                );
            }
        }
        if let Some(n) = a.text_chunk_limit {
            if n == 0 || n > MATRIX_MAX_TEXT_CHUNK_LIMIT {
                r.error(
                    format!("{base}.textChunkLimit"),
                    format!(
                        "expected an integer 1-{MATRIX_MAX_TEXT_CHUNK_LIMIT} (a Matrix event holds at most 64 KiB), got {n}"
                    ),
                );
            }
        }
        if a.sync_timeout_ms == Some(0) {
            r.error(format!("{base}.syncTimeoutMs"), AT_LEAST_ONE);
        }
        if a.encryption == Some(true) {
            r.warn(
                format!("{base}.encryption"),
                "end-to-end encryption is not supported by pincer (no crypto store); \
                 messages in encrypted rooms are skipped with reason encrypted_unsupported",
            );
        }
    };
    let open_needs_star = |path: String, policy: Option<DmPolicy>, allow: Option<&Vec<String>>, r: &mut Report| {
        if policy == Some(DmPolicy::Open) && !allow.is_some_and(|a| a.iter().any(|i| i.trim() == "*")) {
            r.error(path, "dm.policy \"open\" requires dm.allowFrom to include \"*\"");
        }
    };
    let base = "channels.matrix";
    let base_dm = m.dm.as_ref();
    check_keys(base, &m.base_as_account(), r);
    if m.accounts.is_empty() && m.enabled != Some(false) {
        let allow = base_dm.and_then(|d| d.allow_from.as_ref());
        open_needs_star(format!("{base}.dm.allowFrom"), base_dm.and_then(|d| d.policy), allow, r);
    }
    for (id, a) in &m.accounts {
        let at = join(&[key("channels"), key("matrix"), key("accounts"), key(id)], &[]);
        check_keys(&at, a, r);
        if m.enabled != Some(false) && a.enabled.or(m.enabled) != Some(false) {
            let own = a.dm.as_ref();
            let policy = own.and_then(|d| d.policy).or(base_dm.and_then(|d| d.policy));
            let allow = own.and_then(|d| d.allow_from.as_ref()).or(base_dm.and_then(|d| d.allow_from.as_ref()));
            open_needs_star(format!("{at}.dm.allowFrom"), policy, allow, r);
        }
    }
}
