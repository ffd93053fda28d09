//! Config loading end to end: JSON5 text in, typed config + warnings or every error out.
//! Expectations are written as the exact lines an operator would see.

use pincer_core::config::*;
use pincer_core::AgentId;
use serde_json::json;

fn test_env(name: &str) -> Option<String> {
    match name {
        "OPENAI_API_KEY" => Some("sk-test".into()),
        "ANTHROPIC_API_KEY" => Some("ak-test".into()),
        "OPENCLAW_GATEWAY_TOKEN" => Some("gw-token".into()),
        "EMPTY" => Some(String::new()),
        _ => None,
    }
}

/// Non-empty trimmed lines of an expectation block.
fn lines(expected: &str) -> Vec<String> {
    expected.lines().map(str::trim).filter(|l| !l.is_empty()).map(String::from).collect()
}

/// `input` must fail to load with exactly `expected` (one error per line, in output order).
#[track_caller]
fn check_errors(input: &str, expected: &str) {
    match parse(input, &test_env) {
        Ok(loaded) => panic!("expected errors, but it loaded; warnings: {:?}", loaded.warnings),
        Err(errors) => {
            let got = errors.to_string();
            assert_eq!(lines(&got), lines(expected), "\n--- actual errors ---\n{got}\n");
        }
    }
}

/// `input` must load with exactly `expected` warnings (one per line).
#[track_caller]
fn check_ok(input: &str, expected_warnings: &str) -> Loaded {
    match parse(input, &test_env) {
        Err(errors) => panic!("expected it to load, got:\n{errors}"),
        Ok(loaded) => {
            let got: Vec<String> = loaded.warnings.iter().map(ToString::to_string).collect();
            assert_eq!(got, lines(expected_warnings), "\n--- actual warnings ---\n{}\n", got.join("\n"));
            loaded
        }
    }
}

#[test]
fn empty_object_gives_defaults() {
    let loaded = check_ok("{}", "");
    assert_eq!(loaded.config, Config::default());
    assert_eq!(loaded.raw, json!({}));
    assert_eq!(loaded.hash, "44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a");
    let cfg = &loaded.config;
    assert_eq!(cfg.gateway.port, 18789);
    assert_eq!(cfg.gateway.bind, "loopback");
    assert!(cfg.gateway.control_ui.enabled);
    assert_eq!(cfg.default_agent_id(), AgentId::new("main"));
    assert!(cfg.agent_model_chain(&AgentId::default()).is_empty());
    // The typed config round-trips through its own JSON.
    let again = check_ok(&cfg.to_pretty_json(), "");
    assert_eq!(&again.config, cfg);
}

const OPENCLAW_CONFIG: &str = r#"
// ~/.openclaw/openclaw.json as OpenClaw's wizard and an operator left it.
{
  $schema: "https://openclaw.ai/config.schema.json",
  meta: { lastTouchedVersion: "2026.7.1", lastTouchedAt: "2026-07-30T10:00:00Z" },
  wizard: { lastRunAt: "2026-07-01T00:00:00Z", lastRunMode: "local" },
  env: { vars: { GROQ_API_KEY: "${GROQ_API_KEY}" } },
  auth: { profiles: { "anthropic:default": { provider: "anthropic", mode: "api_key" } } },
  gateway: {
    mode: "local",
    port: 18789,
    bind: "loopback",
    auth: { mode: "token", token: "${OPENCLAW_GATEWAY_TOKEN}", allowTailscale: false },
    controlUi: { enabled: true, basePath: "/openclaw" },
    reload: { mode: "hybrid", debounceMs: 300 },
    http: { endpoints: { chatCompletions: { enabled: true }, responses: { enabled: false } } },
    tls: { enabled: false },
  },
  agents: {
    defaults: {
      workspace: "~/.openclaw/workspace",
      model: { primary: "anthropic/claude-sonnet-4-5", fallbacks: ["openai/gpt-4o"] },
      models: { "anthropic/claude-sonnet-4-5": { alias: "sonnet" } },
      maxConcurrent: 2,
      timeoutSeconds: 900,
      heartbeat: { every: "30m" },
      sandbox: { mode: "off" },
    },
    entries: {
      main: { default: true, name: "Claw", workspace: "~/ws/main", groupChat: { mentionPatterns: ["@?claw"] } },
      ops: { model: "openai/gpt-4o", tools: { allow: ["exec"] }, identity: { name: "Ops" } },
    },
  },
  models: {
    mode: "merge",
    providers: {
      anthropic: { api: "anthropic-messages", apiKey: "${ANTHROPIC_API_KEY}" },
      openai: {
        api: "openai-completions",
        baseUrl: "https://api.openai.com/v1",
        apiKey: "${OPENAI_API_KEY}",
        models: [{ id: "gpt-4o", contextWindow: 128000, cost: { input: 2.5, output: 10 } }],
      },
    },
  },
  bindings: [
    { agentId: "ops", match: { channel: "discord", accountId: "*", guildId: "123" } },
    { type: "route", agentId: "main", match: { channel: "telegram", peer: { kind: "direct", id: "42" } } },
  ],
  session: {
    dmScope: "per-channel-peer",
    reset: { mode: "daily", atHour: 4 },
    identityLinks: { alice: ["telegram:42", "discord:99"] },
  },
  messages: { responsePrefix: "🦞 ", queue: { mode: "collect", cap: 10, drop: "old" }, ackReaction: "👀" },
  channels: {
    defaults: { groupPolicy: "allowlist", contextVisibility: "all" },
    telegram: { botToken: "${TELEGRAM_BOT_TOKEN}", dmPolicy: "pairing" },
    discord: { token: "x", guilds: {} },
  },
  plugins: { enabled: true, entries: { "voice-call": { enabled: false } }, slots: { memory: "memory-core" } },
  cron: { enabled: true },
  hooks: { internal: { enabled: true } },
  tools: { profile: "coding" },
  skills: { load: {} },
  logging: { level: "info" },
  commands: { native: "auto", restart: true },
}
"#;

#[test]
fn realistic_openclaw_config_loads_with_one_warning_per_ignored_key() {
    let loaded = check_ok(
        OPENCLAW_CONFIG,
        r#"
        agents.defaults.heartbeat: not supported by pincer; ignored
        agents.defaults.models: not supported by pincer; ignored
        agents.defaults.sandbox: not supported by pincer; ignored
        agents.defaults.workspace: not supported by pincer; ignored
        agents.entries.main.workspace: not supported by pincer; ignored
        agents.entries.ops.identity: not supported by pincer; ignored
        agents.entries.ops.tools: not supported by pincer; ignored
        auth: section not supported by pincer; ignored
        channels.defaults.contextVisibility: not supported by pincer; ignored
        channels.telegram: channel not supported by this build; ignored
        commands: section not supported by pincer; ignored
        cron: section not supported by pincer; ignored
        env: section not supported by pincer; ignored
        gateway.auth.allowTailscale: not supported by pincer; ignored
        gateway.controlUi.basePath: not supported by pincer; ignored
        gateway.http.endpoints.responses: not supported by pincer; ignored
        gateway.reload.debounceMs: retired in OpenClaw; ignored
        gateway.tls: not supported by pincer; ignored
        hooks: section not supported by pincer; ignored
        logging: section not supported by pincer; ignored
        messages.ackReaction: not supported by pincer; ignored
        messages.queue.drop: not supported by pincer; ignored
        meta: section not supported by pincer; ignored
        models.providers.openai.models[0].cost: not supported by pincer; ignored
        plugins.slots: not supported by pincer; ignored
        session.reset: not supported by pincer; ignored
        skills: section not supported by pincer; ignored
        tools: section not supported by pincer; ignored
        wizard: section not supported by pincer; ignored
        "#,
    );
    let cfg = &loaded.config;
    assert_eq!(cfg.gateway.auth.token.as_deref(), Some("gw-token"));
    assert_eq!(cfg.gateway.http.endpoints.chat_completions.enabled, Some(true));
    assert!(cfg.gateway.chat_completions_enabled());
    assert_eq!(cfg.default_agent_id().as_str(), "main");
    let ops = AgentId::new("ops");
    assert_eq!(cfg.agent_model_chain(&ops), ["openai/gpt-4o"]);
    assert_eq!(cfg.agent_model_chain(&AgentId::default()), ["anthropic/claude-sonnet-4-5", "openai/gpt-4o"]);
    assert_eq!(cfg.agent_timeout_ms(&ops), 900_000);
    assert_eq!(cfg.queue_mode_for("discord"), QueueMode::Collect);
    assert_eq!(cfg.models.providers["openai"].api_key.as_deref(), Some("sk-test"));
    assert_eq!(cfg.models.providers["anthropic"].effective_base_url(), Some("https://api.anthropic.com"));
    assert_eq!(cfg.session.dm_scope, DmScope::PerChannelPeer);
    // Unsupported channels are kept verbatim (no substitution) for later adapters.
    assert_eq!(cfg.channels.other["telegram"]["botToken"], "${TELEGRAM_BOT_TOKEN}");
    // Discord is typed: its section is parsed, not kept verbatim.
    assert!(!cfg.channels.other.contains_key("discord"));
    assert_eq!(cfg.channels.discord.as_ref().and_then(|d| d.token.as_deref()), Some("x"));
    // raw is what was typed: ignored keys removed, env substituted.
    assert!(loaded.raw.get("cron").is_none());
    assert!(get_path(&loaded.raw, "gateway.tls").is_none());
    assert_eq!(get_path(&loaded.raw, "gateway.auth.token"), Some(&json!("gw-token")));
}

#[test]
fn every_error_is_reported_at_once_with_its_path() {
    check_errors(
        r#"{
          gateway: { port: "abc", reload: { mode: "fast" }, bind: 5 },
          agents: { defaults: { maxConcurent: 3, timeoutSeconds: -1 } },
          bindings: [
            { match: { channel: "x" } },
            { agentId: "a", match: { channel: "y", peer: { kind: "dm", id: "1" } }, extra: true },
          ],
          outbox: { maxAttempts: 0 },
          messages: { queue: { cap: 5000000000 } },
        }"#,
        r#"
        agents.defaults.maxConcurent: unknown key (did you mean "maxConcurrent"?)
        agents.defaults.timeoutSeconds: expected a non-negative integer, got -1
        bindings[0]: missing required key "agentId"
        bindings[1].extra: unknown key
        bindings[1].match.peer.kind: expected one of direct|group|channel, got "dm"
        gateway.bind: expected a string, got 5
        gateway.port: expected an integer 1-65535, got "abc"
        gateway.reload.mode: expected one of hybrid|off, got "fast"
        messages.queue.cap: expected an integer 1-4294967295, got 5000000000
        outbox.maxAttempts: expected an integer >= 1, got 0
        "#,
    );
}

#[test]
fn did_you_mean_only_for_close_keys() {
    check_errors(
        "{gatway: {}, agents: {defualts: {}}, session: {mainkey: 'x', dmscope: 'main', totallyUnrelated: 1}}",
        r#"
        agents.defualts: unknown key (did you mean "defaults"?)
        gatway: unknown key (did you mean "gateway"?)
        session.dmscope: unknown key (did you mean "dmScope"?)
        session.mainkey: unknown key (did you mean "mainKey"?)
        session.totallyUnrelated: unknown key
        "#,
    );
}

#[test]
fn enum_and_type_messages() {
    check_errors(
        r#"{
          gateway: { mode: "far", auth: { mode: "password" }, port: 70000 },
          models: { providers: { openai: { api: "openai-responses" } } },
          session: { dmScope: "per-user", groupScope: 1, identityLinks: { alice: "tg:1" } },
          agents: { defaults: { model: 5 }, entries: { a: { model: { primary: 3 } } } },
          plugins: { allow: [1, "x"], enabled: "yes" },
          channels: { defaults: { groupPolicy: "closed" } },
        }"#,
        r#"
        agents.defaults.model: expected a string or an object, got 5
        agents.entries.a.model.primary: expected a string, got 3
        channels.defaults.groupPolicy: expected one of allowlist|open|disabled, got "closed"
        gateway.auth.mode: expected one of token|none, got "password"
        gateway.mode: expected one of local|remote, got "far"
        gateway.port: expected an integer 1-65535, got 70000
        models.providers.openai.api: expected one of openai-completions|anthropic-messages|exec|echo, got "openai-responses"
        plugins.allow[0]: expected a string, got 1
        plugins.enabled: expected a boolean, got "yes"
        session.dmScope: expected one of main|per-peer|per-channel-peer|per-account-channel-peer, got "per-user"
        session.groupScope: expected one of per-group|main, got 1
        session.identityLinks.alice: expected an array of strings, got "tg:1"
        "#,
    );
    check_errors("[1, 2]", "expected an object, got an array");
    check_errors("{gateway: null}", "gateway: expected an object, got null");
    check_errors("{gateway: {port: 80.5}}", "gateway.port: expected an integer 1-65535, got 80.5");
}

#[test]
fn retired_enum_values_are_read_as_their_replacement() {
    let loaded = check_ok(
        "{gateway: {reload: {mode: 'hot'}}, messages: {queue: {mode: 'steer', byChannel: {discord: 'queue'}}}}",
        r#"
        gateway.reload.mode: "hot" is retired; read as "hybrid"
        messages.queue.byChannel.discord: "queue" is not supported by pincer; read as "followup"
        messages.queue.mode: "steer" is not supported by pincer; read as "followup"
        "#,
    );
    assert_eq!(loaded.config.gateway.reload.mode, ReloadMode::Hybrid);
    assert_eq!(loaded.config.queue_mode_for("discord"), QueueMode::Followup);
    check_errors(
        "{gateway: {reload: {mode: 'steer'}}}",
        r#"gateway.reload.mode: expected one of hybrid|off, got "steer""#,
    );
}

#[test]
fn env_substitution() {
    let loaded = check_ok(
        r#"{
          gateway: { auth: { token: "${OPENCLAW_GATEWAY_TOKEN}" } },
          messages: { responsePrefix: "$${OPENAI_API_KEY} ${lower} $5 [${OPENAI_API_KEY}]" },
          models: { providers: { o: { api: "openai-completions", baseUrl: "https://h/v1", apiKey: "${OPENAI_API_KEY}",
                                      headers: { "X-Key": "k-${ANTHROPIC_API_KEY}" } } } },
        }"#,
        "",
    );
    let cfg = &loaded.config;
    assert_eq!(cfg.gateway.auth.token.as_deref(), Some("gw-token"));
    assert_eq!(cfg.messages.response_prefix.as_deref(), Some("${OPENAI_API_KEY} ${lower} $5 [sk-test]"));
    assert_eq!(cfg.models.providers["o"].api_key.as_deref(), Some("sk-test"));
    assert_eq!(cfg.models.providers["o"].headers["X-Key"], "k-ak-test");

    check_errors(
        r#"{
          models: { providers: { openai: { api: "openai-completions", baseUrl: "https://h/v1",
                                           apiKey: "${OPENAI_API_KEY_TYPO}" } } },
          bindings: [{ agentId: "main", match: { channel: "${CHAN}${EMPTY}" } }],
          gateway: { port: "${PORT}" },
        }"#,
        r#"
        bindings[0].match.channel: environment variable CHAN is not set
        bindings[0].match.channel: environment variable EMPTY is set but empty
        gateway.port: environment variable PORT is not set
        gateway.port: expected an integer 1-65535, got "${PORT}"
        models.providers.openai.apiKey: environment variable OPENAI_API_KEY_TYPO is not set
        "#,
    );
    // Ignored sections are stripped before substitution, so their variables are not needed.
    check_ok("{env: {vars: {A: '${UNSET_A}'}}}", "env: section not supported by pincer; ignored");
}

#[test]
fn json5_features() {
    let loaded = check_ok(
        r#"
        // line comment
        /* block
           comment */
        {
          gateway: {
            port: 0x4A3B,          // hex
            'bind': 'lan',         // single quotes
            auth: { token: "multi\
line", },
          },
          agents: { defaults: { timeoutSeconds: +30, }, },  // trailing commas, explicit +
          bindings: [],
        }
        "#,
        "",
    );
    assert_eq!(loaded.config.gateway.port, 0x4A3B);
    assert_eq!(loaded.config.gateway.bind, "lan");
    assert_eq!(loaded.config.gateway.auth.token.as_deref(), Some("multiline"));
    assert_eq!(loaded.config.agents.defaults.timeout_seconds, 30);

    check_errors("{gateway: {port: 1,}", "JSON5 syntax error at line 1, column 20: expected identifier or string");
    check_errors(
        "{\n  gateway: {\n    port: 1\n    bind: 'lan'\n  }\n}",
        // pest reports its furthest attempt: the right line, if not the clearest wording.
        "JSON5 syntax error at line 3, column 11: expected boolean, null, or string",
    );
    check_errors(
        "",
        "JSON5 syntax error at line 1, column 1: expected array, boolean, null, number, object, or string",
    );
}

#[test]
fn semantic_errors() {
    check_errors(
        r#"{
          gateway: { bind: "tailnet", auth: { mode: "none" } },
          agents: {
            defaults: { model: "gpt-4o" },
            entries: {
              "My Agent": {},
              a: { default: true, model: { primary: "nope/x", fallbacks: ["echo", "echo/fast", "openai/y"] } },
              b: { default: true, groupChat: { mentionPatterns: ["(unclosed"] } },
            },
          },
          models: {
            mode: "overlay",
            providers: {
              x: { api: "exec", command: [] },
              openai: { api: "openai-completions" },
              anthropic: { api: "anthropic-messages", baseUrl: "api.anthropic.com" },
            },
          },
          bindings: [
            { agentId: "ops", match: { channel: "discord" } },
            { agentId: "Ops", match: { channel: "" } },
            { agentId: "main", type: "bridge", match: { channel: "x", peer: { kind: "group", id: " " } } },
          ],
          session: { mainKey: "agent:main" },
          outbox: { initialBackoffMs: 10, maxBackoffMs: 5 },
        }"#,
        r#"
        agents.defaults.model: invalid model ref "gpt-4o" (expected "provider/model")
        agents.entries: more than one agent has default: true (a, b)
        agents.entries["My Agent"]: invalid agent id "My Agent" (lowercase letters, digits, "_" and "-", at most 64 chars; try "my-agent")
        agents.entries.a.model.primary: unknown provider "nope" in "nope/x" (not in models.providers; configured: anthropic, openai, x)
        agents.entries.b.groupChat.mentionPatterns[0]: invalid regex: unclosed group
        bindings[0].agentId: unknown agent "ops" (not in agents.entries)
        bindings[1].agentId: invalid agent id "Ops" (lowercase letters, digits, "_" and "-", at most 64 chars; try "ops")
        bindings[1].match.channel: must not be empty
        bindings[2].match.peer.id: must not be empty (use "*" for any peer)
        bindings[2].type: expected one of route|acp, got "bridge"
        gateway.bind: expected one of loopback|lan|auto|custom or an IP address, got "tailnet"
        models.mode: expected one of merge|replace, got "overlay"
        models.providers.anthropic.baseUrl: expected an http:// or https:// URL, got "api.anthropic.com"
        models.providers.openai.baseUrl: required for api "openai-completions", e.g. "https://api.openai.com/v1"
        models.providers.x.command: required for api "exec": the program and its arguments, e.g. ["/usr/local/bin/agent"]
        outbox.initialBackoffMs: must not exceed outbox.maxBackoffMs (5)
        session.mainKey: must be non-empty and must not contain ":", got "agent:main"
        "#,
    );
    check_errors(
        "{gateway: {bind: 'lan', auth: {mode: 'none'}}}",
        r#"gateway.auth.mode: "none" is refused on a non-loopback bind (gateway.bind is "lan"); use token auth or bind to loopback"#,
    );
    check_errors(
        "{gateway: {bind: '0.0.0.0', auth: {mode: 'none'}}}",
        r#"gateway.auth.mode: "none" is refused on a non-loopback bind (gateway.bind is "0.0.0.0"); use token auth or bind to loopback"#,
    );
    check_errors("{gateway: {bind: 'custom'}}", r#"gateway.customBindHost: required when gateway.bind is "custom""#);
    check_errors(
        "{agents: {defaults: {model: 'openai/gpt-4o'}}}",
        r#"agents.defaults.model: unknown provider "openai" in "openai/gpt-4o" (not in models.providers; no providers are configured)"#,
    );
    // Loopback binds may run without auth; echo needs no provider; bindings may name main.
    check_ok("{gateway: {bind: '127.0.0.1', auth: {mode: 'none'}}}", "");
    check_ok("{gateway: {bind: 'custom', customBindHost: '::1', auth: {mode: 'none'}}}", "");
    check_ok(
        "{agents: {defaults: {model: {primary: 'echo', fallbacks: ['echo/echo']}}}, bindings: [{agentId: 'main', match: {channel: 'x'}}]}",
        "",
    );
    check_ok(
        "{gateway: {mode: 'remote', customBindHost: 'h'}, bindings: [{type: 'acp', agentId: 'main', match: {channel: 'x'}}]}",
        r#"
        bindings[0]: acp bindings are not supported by pincer; ignored for routing
        gateway.customBindHost: ignored unless gateway.bind is "custom"
        gateway.mode: "remote" is not supported by pincer; the gateway runs locally
        "#,
    );
}

#[test]
fn typed_config_validate_catches_what_the_schema_would() {
    let mut cfg = Config::default();
    cfg.gateway.port = 0;
    cfg.messages.queue.cap = 0;
    let errors = cfg.validate().unwrap_err().to_string();
    assert_eq!(
        lines(&errors),
        lines(
            "gateway.port: expected an integer 1-65535, got 0
             messages.queue.cap: expected an integer >= 1, got 0"
        )
    );
    assert_eq!(Config::default().validate(), Ok(vec![]));
}

#[test]
fn nesting_is_bounded() {
    let deep = format!("{{plugins: {{entries: {{p: {{config: {}1{}}}}}}}}}", "[".repeat(100), "]".repeat(100));
    check_errors(&deep, "the document nests deeper than 64 levels");
}

#[test]
fn schema_is_exported() {
    let schema = json_schema();
    assert_eq!(schema["title"], "Config");
    assert_eq!(schema["additionalProperties"], false);
    let reload_mode = &schema["definitions"]["ReloadMode"];
    assert!(reload_mode.to_string().contains("hybrid"));
}

#[test]
fn diff_and_classify_a_reload() {
    let old = parse("{channels: {mattermost: {accounts: {work: {botToken: 'a'}}}}}", &test_env).unwrap();
    let new = parse(
        "{gateway: {reload: {mode: 'off'}, auth: {token: 't'}}, agents: {defaults: {model: 'echo'}}, \
          channels: {mattermost: {accounts: {work: {botToken: 'b'}}}}}",
        &test_env,
    )
    .unwrap();
    let changed = diff(&old.raw, &new.raw);
    assert_eq!(
        changed,
        [
            "agents.defaults.model",
            "channels.mattermost.accounts.work.botToken",
            "gateway.auth.token",
            "gateway.reload.mode",
        ]
    );
    let kinds: Vec<ChangeKind> = changed.iter().map(|p| classify(p)).collect();
    assert_eq!(
        kinds,
        [
            ChangeKind::None,
            ChangeKind::RestartChannel { channel: "mattermost".into(), account: Some("work".into()) },
            ChangeKind::Hot,
            ChangeKind::None,
        ]
    );
    // Diffing typed values ignores defaults written out explicitly.
    let explicit = parse("{gateway: {port: 18789, bind: 'loopback'}}", &test_env).unwrap();
    let implicit = parse("{}", &test_env).unwrap();
    assert!(diff(&implicit.config.to_value(), &explicit.config.to_value()).is_empty());
    assert_eq!(diff(&implicit.raw, &explicit.raw), ["gateway.bind", "gateway.port"]);
    let plan = ReloadPlan::new(&implicit.config.to_value(), &new.config.to_value());
    assert!(!plan.restart_gateway);
    assert_eq!(plan.hot, ["gateway.auth.token"]);
}

#[test]
fn get_set_unset_paths() {
    let mut doc = json!({"gateway": {"port": 1}, "bindings": [{"agentId": "a"}]});
    assert_eq!(get_path(&doc, "gateway.port"), Some(&json!(1)));
    assert_eq!(get_path(&doc, "bindings[0].agentId"), Some(&json!("a")));
    assert_eq!(get_path(&doc, "bindings.0.agentId"), Some(&json!("a")));
    assert_eq!(get_path(&doc, ""), Some(&doc));
    assert_eq!(get_path(&doc, "gateway.nope"), None);
    assert_eq!(get_path(&doc, "gateway.port.deeper"), None);
    assert_eq!(get_path(&doc, "bad..path"), None);

    set_path(&mut doc, "gateway.reload.mode", json!("off")).unwrap();
    set_path(&mut doc, "bindings[0].match.channel", json!("x")).unwrap();
    set_path(&mut doc, "bindings[1]", json!({"agentId": "b"})).unwrap();
    set_path(&mut doc, "models.providers[\"my.prov\"].api", json!("echo")).unwrap();
    set_path(&mut doc, "plugins.deny[0]", json!("p")).unwrap();
    assert_eq!(
        doc,
        json!({
            "gateway": {"port": 1, "reload": {"mode": "off"}},
            "bindings": [{"agentId": "a", "match": {"channel": "x"}}, {"agentId": "b"}],
            "models": {"providers": {"my.prov": {"api": "echo"}}},
            "plugins": {"deny": ["p"]},
        })
    );
    let err = |r: Result<(), ConfigError>| r.unwrap_err().to_string();
    assert_eq!(
        err(set_path(&mut doc, "gateway.port.x", json!(1))),
        r#"gateway.port: cannot set key "x" inside a number"#
    );
    assert_eq!(
        err(set_path(&mut doc, "bindings[5]", json!(1))),
        "bindings: index [5] is out of range (the array has 2 items)"
    );
    assert_eq!(err(set_path(&mut doc, "gateway[0]", json!(1))), "gateway: cannot set index [0] inside an object");
    assert!(set_path(&mut doc, "a..b", json!(1)).is_err());

    assert_eq!(unset_path(&mut doc, "gateway.reload"), Ok(Some(json!({"mode": "off"}))));
    assert_eq!(unset_path(&mut doc, "bindings[0]"), Ok(Some(json!({"agentId": "a", "match": {"channel": "x"}}))));
    assert_eq!(unset_path(&mut doc, "bindings[0].agentId"), Ok(Some(json!("b"))));
    assert_eq!(unset_path(&mut doc, "nothing.here"), Ok(None));
    assert!(unset_path(&mut doc, "").is_err());
    assert_eq!(get_path(&doc, "gateway"), Some(&json!({"port": 1})));

    let mut root = json!(null);
    set_path(&mut root, "", json!({"a": 1})).unwrap();
    assert_eq!(root, json!({"a": 1}));
}

#[test]
fn cli_values() {
    let cases = [
        ("8080", json!(8080)),
        ("true", json!(true)),
        ("null", json!(null)),
        ("hybrid", json!("hybrid")),
        ("'quoted'", json!("quoted")),
        ("[1, 'a']", json!([1, "a"])),
        ("{mode: 'off'}", json!({"mode": "off"})),
        ("sk-abc/def", json!("sk-abc/def")),
        ("NaN", json!("NaN")),
        ("", json!("")),
    ];
    for (input, want) in cases {
        assert_eq!(parse_cli_value(input), want, "{input:?}");
    }
}

#[test]
fn every_alias_is_accepted_where_declared() {
    for (path, alias) in [
        ("gateway.reload.mode", "hot"),
        ("gateway.reload.mode", "restart"),
        ("messages.queue.mode", "steer"),
        ("messages.queue.mode", "queue"),
        ("messages.queue.byChannel.x", "steer"),
        ("messages.queue.byChannel.x", "queue"),
    ] {
        let mut doc = json!({});
        set_path(&mut doc, path, json!(alias)).unwrap();
        let loaded = parse(&doc.to_string(), &test_env).unwrap_or_else(|e| panic!("{path}={alias}: {e}"));
        assert_eq!(loaded.warnings.len(), 1, "{path}={alias}");
    }
}

/// xorshift64*: deterministic pseudo-random numbers without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

#[test]
fn mutated_configs_never_panic() {
    const TOKENS: &[&str] = &[
        "{",
        "}",
        "[",
        "]",
        ",",
        ":",
        "\"",
        "'",
        "${",
        "$${X}",
        "${HOME}",
        "${OPENAI_API_KEY}",
        "null",
        "-1",
        "1e999",
        "0x10",
        "NaN",
        "Infinity",
        "//",
        "/*",
        "*/",
        "\\u",
        "\\uD800",
        "\n",
        "true",
        "é",
        "🦞",
        "0",
        "65536",
        "\"main\"",
        "agentId",
        "channels",
        "accounts",
        "[\"",
        ".",
        "*",
    ];
    let chars: Vec<char> = OPENCLAW_CONFIG.chars().collect();
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let (mut ok, mut failed) = (0, 0);
    for _ in 0..3000 {
        let mut text = chars.clone();
        for _ in 0..1 + rng.below(4) {
            let at = rng.below(text.len() + 1);
            match rng.below(4) {
                0 => {
                    let end = (at + 1 + rng.below(12)).min(text.len());
                    text.drain(at..end);
                }
                1 => {
                    let token = TOKENS[rng.below(TOKENS.len())];
                    text.splice(at..at, token.chars());
                }
                2 => {
                    let start = rng.below(text.len());
                    let end = (start + 1 + rng.below(40)).min(text.len());
                    let slice: Vec<char> = text[start..end].to_vec();
                    text.splice(at..at, slice);
                }
                _ => {
                    if at < text.len() {
                        text[at] = char::from(b' ' + rng.below(95) as u8);
                    }
                }
            }
        }
        let text: String = text.into_iter().collect();
        match parse(&text, &test_env) {
            Ok(loaded) => {
                ok += 1;
                let _ = diff(&loaded.raw, &loaded.config.to_value());
            }
            Err(errors) => {
                failed += 1;
                assert!(!errors.errors().is_empty());
            }
        }
    }
    assert!(ok > 50 && failed > 50, "mutations should both pass and fail: ok={ok} failed={failed}");
}
