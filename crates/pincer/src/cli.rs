//! The command line. Commands that act on a running gateway talk to it over the control-plane
//! WebSocket with the gateway token; `config` and `doctor` work on files directly.

use crate::client::{self, Client};
use crate::logging::LogFormat;
use crate::{config_file, daemon, doctor, paths};
use clap::{Args, Parser, Subcommand};
use serde_json::{json, Value};
use std::path::PathBuf;

/// Exit code for an invalid config (sysexits EX_CONFIG), as OpenClaw uses it.
pub const EXIT_CONFIG: u8 = 78;

/// pincer: a self-hosted AI-agent gateway.
#[derive(Parser, Debug)]
#[command(
    name = "pincer",
    version,
    about = "pincer: a self-hosted, OpenClaw-compatible AI-agent gateway",
    propagate_version = true
)]
pub struct Cli {
    /// State directory (default: $PINCER_STATE_DIR, else ~/.pincer).
    #[arg(long, global = true, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// Config file (default: $PINCER_CONFIG_PATH, else <state>/pincer.json).
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Log format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Human)]
    pub log_format: LogFormat,
    /// Log level or filter (e.g. `debug`, `pincer_runtime=trace`).
    #[arg(long, global = true)]
    pub log_level: Option<String>,
    /// Gateway WebSocket URL for client commands (default: from the state dir or config).
    #[arg(long, global = true)]
    pub url: Option<String>,
    /// Gateway token for client commands (default: $PINCER_GATEWAY_TOKEN, config, state dir).
    #[arg(long, global = true)]
    pub token: Option<String>,
    #[command(subcommand)]
    pub command: Command,
}

/// Top-level commands.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run or inspect the gateway daemon.
    #[command(subcommand)]
    Gateway(GatewayCmd),
    /// Send messages through the running gateway's outbox.
    #[command(subcommand)]
    Message(MessageCmd),
    /// Run one agent turn (through the running gateway, or in-process when none runs).
    Agent(AgentArgs),
    /// Inspect sessions.
    #[command(subcommand)]
    Sessions(SessionsCmd),
    /// Inspect and retry outbox deliveries.
    #[command(subcommand)]
    Deliveries(DeliveriesCmd),
    /// Print the gateway's file log (`<state>/logs/pincer.log`, via `logs.tail`).
    Logs {
        /// Keep printing new lines.
        #[arg(long, short = 'f')]
        follow: bool,
        /// Lines to show first.
        #[arg(long, default_value_t = 200)]
        limit: u32,
        /// Print the JSON lines as they are (default: time, level and message).
        #[arg(long)]
        json: bool,
    },
    /// Inspect, start and stop channel accounts.
    #[command(subcommand)]
    Channels(ChannelsCmd),
    /// DM pairing: list pending codes, approve a sender.
    #[command(subcommand)]
    Pairing(PairingCmd),
    /// Out-of-process plugins of the running gateway.
    #[command(subcommand)]
    Plugins(PluginsCmd),
    /// Read, edit and validate the config file.
    #[command(subcommand)]
    Config(ConfigCmd),
    /// Check config, state dir, lock, port and store, and print fixes.
    Doctor,
    /// Gateway health (via the control plane).
    Health(JsonFlag),
    /// Gateway status (via the control plane).
    Status(JsonFlag),
}

impl Command {
    /// True for the long-running daemon command.
    pub fn is_daemon(&self) -> bool {
        matches!(self, Command::Gateway(GatewayCmd::Run(_)))
    }
}

/// `--json`.
#[derive(Args, Debug, Clone, Copy)]
pub struct JsonFlag {
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// `gateway ...`.
#[derive(Subcommand, Debug)]
pub enum GatewayCmd {
    /// Run the gateway in the foreground.
    Run(RunArgs),
    /// Is the gateway up? Prints its status.
    Status(JsonFlag),
    /// Reload the config and rebuild the runtime in-process (as SIGUSR1); applies a new
    /// `gateway.port`/`gateway.bind`.
    Restart,
    /// Call a control-plane method and print the JSON result.
    Call {
        /// Method name, e.g. `health`.
        method: String,
        /// JSON params.
        #[arg(long, default_value = "{}")]
        params: String,
    },
}

/// `gateway run` flags.
#[derive(Args, Debug, Clone)]
pub struct RunArgs {
    /// Port (overrides gateway.port).
    #[arg(long)]
    pub port: Option<u16>,
    /// Bind: loopback, lan, or an IP address (overrides gateway.bind).
    #[arg(long)]
    pub bind: Option<String>,
}

/// `message ...`.
#[derive(Subcommand, Debug)]
pub enum MessageCmd {
    /// Queue a message for delivery.
    Send {
        /// Channel id (e.g. `webhook`, `mattermost`).
        #[arg(long)]
        channel: String,
        /// Account id (default `default`).
        #[arg(long)]
        account: Option<String>,
        /// Target: `channel:ID`, `user:ID`, `@name` or a raw platform id.
        #[arg(long)]
        target: String,
        /// Thread id.
        #[arg(long)]
        thread: Option<String>,
        /// Message text.
        #[arg(long, short = 'm')]
        message: String,
        /// Idempotency key (default: random).
        #[arg(long)]
        idempotency_key: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

/// `agent` flags.
#[derive(Args, Debug)]
pub struct AgentArgs {
    /// Message text.
    #[arg(long, short = 'm')]
    pub message: String,
    /// Session key (default: the agent's main session).
    #[arg(long)]
    pub session: Option<String>,
    /// Agent id.
    #[arg(long)]
    pub agent: Option<String>,
    /// Seconds to wait for the reply.
    #[arg(long, default_value_t = 600)]
    pub timeout: u64,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// `sessions ...`.
#[derive(Subcommand, Debug)]
pub enum SessionsCmd {
    /// List sessions.
    List {
        /// Max rows.
        #[arg(long, default_value_t = 100)]
        limit: u32,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show one session and its transcript.
    Show {
        /// Session key.
        key: String,
        /// Transcript entries to show.
        #[arg(long, default_value_t = 50)]
        limit: u32,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

/// `deliveries ...`.
#[derive(Subcommand, Debug)]
pub enum DeliveriesCmd {
    /// List outbox rows.
    List {
        /// Filter: pending, sending, sent, failed, unknown.
        #[arg(long)]
        status: Option<String>,
        /// Max rows.
        #[arg(long, default_value_t = 100)]
        limit: u32,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Put a failed or unknown delivery back in the queue.
    Retry {
        /// Outbox id.
        id: i64,
    },
}

/// `pairing ...`.
#[derive(Subcommand, Debug)]
pub enum PairingCmd {
    /// Pending codes and approved senders.
    List {
        /// Only this channel (e.g. `mattermost`).
        channel: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Approve the sender who received `code` on `channel`.
    Approve {
        /// Channel id, e.g. `mattermost`.
        channel: String,
        /// The 8-character code the sender received.
        code: String,
    },
}

/// `plugins ...`.
#[derive(Subcommand, Debug)]
pub enum PluginsCmd {
    /// Every plugin found: state, generation, pid, methods, and the error and stderr tail of
    /// a plugin that failed.
    List(JsonFlag),
}

/// `channels ...`.
#[derive(Subcommand, Debug)]
pub enum ChannelsCmd {
    /// Per-account connection state (running, connected, last error, backoff, health).
    Status(JsonFlag),
    /// Start a stopped or given-up account now (every account of the channel without
    /// `--account`).
    Start {
        /// Channel id, e.g. `discord`.
        channel: String,
        /// Account id.
        #[arg(long)]
        account: Option<String>,
    },
    /// Stop an account (closing its connection) until `channels start` or a restart.
    Stop {
        /// Channel id, e.g. `discord`.
        channel: String,
        /// Account id.
        #[arg(long)]
        account: Option<String>,
    },
}

/// `config ...`.
#[derive(Subcommand, Debug)]
pub enum ConfigCmd {
    /// Print a value (or the whole config) as JSON.
    Get {
        /// Dotted path, e.g. `gateway.port`.
        path: Option<String>,
    },
    /// Set a value (JSON5 literal or plain string). Validated first; written atomically.
    Set {
        /// Dotted path.
        path: String,
        /// Value.
        value: String,
    },
    /// Remove a key. Validated first; written atomically.
    Unset {
        /// Dotted path.
        path: String,
    },
    /// Validate the config file and list every problem.
    Validate,
    /// Print the config JSON Schema.
    Schema,
    /// Print the config file path.
    File,
}

fn print_json(v: &Value) {
    println!("{}", serde_json::to_string_pretty(v).unwrap_or_else(|_| v.to_string()));
}

/// Run the parsed command; returns the process exit code.
pub async fn run(cli: Cli) -> u8 {
    let state = paths::state_dir(cli.state_dir.as_deref());
    let config_path = paths::config_path(cli.config.as_deref(), &state);
    let conn = client::ConnectOpts {
        url: cli.url.clone(),
        token: cli.token.clone(),
        state: state.clone(),
        config_path: config_path.clone(),
    };
    let result: anyhow::Result<u8> = match cli.command {
        Command::Gateway(GatewayCmd::Run(args)) => daemon::run(state, config_path, args).await,
        Command::Gateway(GatewayCmd::Status(f)) | Command::Status(f) => {
            call_print(&conn, "status", json!({}), f.json, client::print_status).await
        }
        Command::Gateway(GatewayCmd::Restart) => {
            call_print(&conn, "gateway.restart", json!({}), false, |_| println!("restarting")).await
        }
        Command::Health(f) => call_print(&conn, "health", json!({}), f.json, print_json).await,
        Command::Gateway(GatewayCmd::Call { method, params }) => match serde_json::from_str::<Value>(&params) {
            Ok(p) => call_print(&conn, &method, p, true, print_json).await,
            Err(e) => {
                eprintln!("error: --params is not valid JSON: {e}");
                Ok(2)
            }
        },
        Command::Message(MessageCmd::Send { channel, account, target, thread, message, idempotency_key, json }) => {
            let params = json!({
                "channel": channel, "accountId": account, "to": target, "threadId": thread, "message": message,
                "idempotencyKey": idempotency_key.unwrap_or_else(new_idempotency_key),
            });
            call_print(&conn, "send", params, json, |v| {
                println!("queued delivery {} ({})", v["deliveryId"], v["status"].as_str().unwrap_or(""));
            })
            .await
        }
        Command::Agent(args) => client::agent(&conn, args).await,
        Command::Sessions(SessionsCmd::List { limit, json }) => {
            call_print(&conn, "sessions.list", json!({"limit": limit}), json, client::print_sessions).await
        }
        Command::Sessions(SessionsCmd::Show { key, limit, json }) => {
            call_print(&conn, "sessions.get", json!({"key": key, "limit": limit}), json, client::print_session).await
        }
        Command::Deliveries(DeliveriesCmd::List { status, limit, json }) => {
            call_print(
                &conn,
                "deliveries.list",
                json!({"status": status, "limit": limit}),
                json,
                client::print_deliveries,
            )
            .await
        }
        Command::Deliveries(DeliveriesCmd::Retry { id }) => {
            call_print(&conn, "deliveries.retry", json!({"id": id}), false, |v| {
                println!(
                    "{}",
                    if v["requeued"].as_bool() == Some(true) {
                        "requeued"
                    } else {
                        "not requeued (only failed or unknown rows can be retried)"
                    }
                );
            })
            .await
        }
        Command::Pairing(PairingCmd::List { channel, json }) => {
            call_print(&conn, "pairing.list", json!({"channel": channel}), json, client::print_pairing).await
        }
        Command::Pairing(PairingCmd::Approve { channel, code }) => {
            call_print(&conn, "pairing.approve", json!({"channel": channel, "code": code}), false, |v| {
                let s = &v["sender"];
                println!(
                    "approved {} ({}) on {}/{}",
                    s["senderId"].as_str().unwrap_or("?"),
                    s["senderName"].as_str().unwrap_or("-"),
                    s["channel"].as_str().unwrap_or("?"),
                    s["accountId"].as_str().unwrap_or("?")
                );
            })
            .await
        }
        Command::Logs { follow, limit, json } => client::logs(&conn, follow, limit, json).await,
        Command::Channels(ChannelsCmd::Status(f)) => {
            call_print(&conn, "channels.status", json!({}), f.json, client::print_channels).await
        }
        Command::Channels(ChannelsCmd::Start { channel, account }) => {
            call_print(&conn, "channels.start", json!({"channel": channel, "accountId": account}), true, print_json)
                .await
        }
        Command::Channels(ChannelsCmd::Stop { channel, account }) => {
            call_print(&conn, "channels.stop", json!({"channel": channel, "accountId": account}), true, print_json)
                .await
        }
        Command::Plugins(PluginsCmd::List(f)) => {
            call_print(&conn, "plugins.list", json!({}), f.json, client::print_plugins).await
        }
        Command::Config(cmd) => config_cmd(cmd, &config_path, &state),
        Command::Doctor => doctor::run(&state, &config_path).await,
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            1
        }
    }
}

async fn call_print(
    conn: &client::ConnectOpts,
    method: &str,
    params: Value,
    json: bool,
    human: impl Fn(&Value),
) -> anyhow::Result<u8> {
    let mut c = Client::connect(conn).await?;
    match c.call(method, params).await? {
        Ok(v) => {
            if json {
                print_json(&v);
            } else {
                human(&v);
            }
            Ok(0)
        }
        Err(err) => {
            eprintln!(
                "error: {} ({})",
                err["message"].as_str().unwrap_or("request failed"),
                err["code"].as_str().unwrap_or("?")
            );
            Ok(1)
        }
    }
}

fn config_cmd(cmd: ConfigCmd, path: &std::path::Path, state: &std::path::Path) -> anyhow::Result<u8> {
    use pincer_core::config as cfg;
    match cmd {
        ConfigCmd::File => {
            println!("{}", path.display());
            Ok(0)
        }
        ConfigCmd::Schema => {
            print_json(&cfg::json_schema());
            Ok(0)
        }
        // Plugin configs are checked against their manifests' schemas too.
        ConfigCmd::Validate => match daemon::load_checked(path, state) {
            Ok(l) => {
                for w in &l.warnings {
                    eprintln!("warning: {w}");
                }
                match l.path {
                    Some(p) => println!("config {} is valid", p.display()),
                    None => println!("no config file at {}; the embedded defaults are valid", path.display()),
                }
                Ok(0)
            }
            Err(e) => {
                eprint!("{e}");
                Ok(EXIT_CONFIG)
            }
        },
        ConfigCmd::Get { path: key } => {
            let loaded = match config_file::load(path) {
                Ok(l) => l,
                Err(e) => {
                    eprint!("{e}");
                    return Ok(EXIT_CONFIG);
                }
            };
            let value = serde_json::to_value(&loaded.config)?;
            match key {
                None => print_json(&value),
                Some(k) => match cfg::get_path(&value, &k) {
                    Some(v) => print_json(v),
                    None => {
                        eprintln!("error: {k} is not set");
                        return Ok(1);
                    }
                },
            }
            Ok(0)
        }
        ConfigCmd::Set { path: key, value } => {
            edit_config(path, |raw| cfg::set_path(raw, &key, cfg::parse_cli_value(&value)))
        }
        ConfigCmd::Unset { path: key } => edit_config(path, |raw| cfg::unset_path(raw, &key).map(|_| ())),
    }
}

/// Edit the raw file value, validate the result, and only then write it atomically.
fn edit_config(
    path: &std::path::Path,
    edit: impl FnOnce(&mut Value) -> Result<(), pincer_core::config::ConfigError>,
) -> anyhow::Result<u8> {
    let mut raw = match config_file::read_raw(path) {
        Ok(v) => v,
        Err(e @ config_file::RawError::Io(_)) => anyhow::bail!("{e} ({})", path.display()),
        Err(e) => {
            eprintln!("error: {e} ({}); fix it first, nothing was changed", path.display());
            return Ok(EXIT_CONFIG);
        }
    };
    if let Err(e) = edit(&mut raw) {
        eprintln!("error: {e}; nothing was changed");
        return Ok(2);
    }
    let new_text = serde_json::to_string_pretty(&raw)? + "\n";
    match config_file::parse_text(&new_text) {
        Ok(_) => {}
        Err(errs) => {
            eprintln!("error: the change would make the config invalid; nothing was changed:");
            for e in &errs.0 {
                eprintln!("  - {e}");
            }
            return Ok(EXIT_CONFIG);
        }
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).ok();
    }
    paths::write_atomic(path, new_text.as_bytes())?;
    println!("updated {}", path.display());
    Ok(0)
}

/// A fresh idempotency key for a CLI request.
pub fn new_idempotency_key() -> String {
    pincer_runtime::gateway::new_run_id().replacen("run-", "cli-", 1)
}
