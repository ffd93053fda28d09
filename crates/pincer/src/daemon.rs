//! `pincer gateway run`: lock the state dir, load the config, open the store, start the
//! runtime and the control plane, then run the one control loop that every input feeds:
//! signals (SIGTERM/SIGINT stop, SIGHUP reload, SIGUSR1/SIGUSR2 reload + in-process restart),
//! the config file watcher, and `config.apply` from the control plane.

use crate::cli::{RunArgs, EXIT_CONFIG};
use crate::config_file::{self, LoadError};
use crate::control::{self, ControlState};
use crate::paths;
use anyhow::{Context, Result};
use pincer_core::config::{AuthMode, Config};
use pincer_runtime::{Gateway, GatewayOptions};
use pincer_store::{StateLock, Store};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// How long a stop waits for runs and deliveries to drain before forcing.
pub const DRAIN_DEADLINE: Duration = Duration::from_secs(10);
/// How long an in-process restart waits for runs in flight before interrupting them (they run
/// again in the fresh runtime).
pub const RESTART_DRAIN: Duration = Duration::from_secs(30);
/// After an in-process restart, clients are let in once the plugins that were ready before
/// are ready again (or failed), waiting at most this long, so that their methods are never
/// missing from a fresh connection. Plugins that were not ready are not waited for.
pub const PLUGIN_RESTART_WAIT: Duration = Duration::from_secs(10);

/// Inputs of the control loop.
pub enum ControlInput {
    /// Re-read the config file (SIGHUP, file watcher, `gateway.reload`). The reply, when
    /// present, gets `{reloaded, generation, changed}` or an error object.
    Reload(&'static str, Option<oneshot::Sender<Result<serde_json::Value, serde_json::Value>>>),
    /// Reload and rebuild the whole runtime in-process (SIGUSR1/SIGUSR2, `gateway.restart`).
    /// A changed `gateway.port`/`gateway.bind` is applied too (a new listener). The reply, when
    /// present, is sent as the restart begins.
    Restart(&'static str, Option<oneshot::Sender<Result<serde_json::Value, serde_json::Value>>>),
    /// Validate and write new config text, then apply it (`config.apply`).
    Apply {
        /// Full config text (JSON5).
        text: String,
        /// Base hash for compare-and-swap, if the client gave one.
        base_hash: Option<String>,
        /// Result: the report as JSON, or an error `{code, message, details}`.
        reply: oneshot::Sender<Result<serde_json::Value, serde_json::Value>>,
    },
    /// Apply a JSON merge patch (RFC 7396) to the config file, then apply it (`config.patch`).
    Patch {
        /// The merge patch (`null` deletes a key).
        patch: serde_json::Value,
        /// Base hash for compare-and-swap, if the client gave one.
        base_hash: Option<String>,
        /// Result, as for `Apply`.
        reply: oneshot::Sender<Result<serde_json::Value, serde_json::Value>>,
    },
    /// Stop the gateway.
    Stop(&'static str),
}

fn bind_ip(bind: &str, custom: Option<&str>) -> Result<IpAddr> {
    Ok(match bind {
        "loopback" | "auto" => IpAddr::V4(Ipv4Addr::LOCALHOST),
        "lan" => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        "custom" => custom.context("gateway.bind is custom but gateway.customBindHost is not set")?.parse()?,
        other => other
            .parse()
            .with_context(|| format!("invalid bind address {other:?} (use loopback, lan or an IP address)"))?,
    })
}

/// Resolve the control-plane token: config, then `PINCER_GATEWAY_TOKEN`, then the state dir
/// file, generating it there on first start. Returns `(token, generated_now)`.
pub fn resolve_token(config: &Config, state: &Path) -> Result<(String, bool)> {
    if let Some(t) = paths::stored_token(Some(config), state) {
        return Ok((t, false));
    }
    use rand::Rng;
    let bytes: [u8; 24] = rand::thread_rng().gen();
    let token: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    paths::write_atomic(&paths::token_file(state), format!("{token}\n").as_bytes())?;
    Ok((token, true))
}

/// Check the plugin part of a config (each enabled plugin's config against its manifest's
/// schema). Returns the warnings to add, or the errors, reported like any config error.
fn check_plugins(
    config: &Config,
    state: &Path,
    config_path: Option<&Path>,
) -> Result<Vec<pincer_core::config::ConfigWarning>, pincer_core::config::ConfigErrors> {
    let roots = pincer_runtime::plugins::Roots::new(state, config_path);
    let (errors, warnings) = pincer_runtime::plugins::validate(config, &roots);
    if errors.is_empty() {
        Ok(warnings)
    } else {
        Err(pincer_core::config::ConfigErrors(errors))
    }
}

/// [`config_file::load`] plus [`check_plugins`].
pub(crate) fn load_checked(path: &Path, state: &Path) -> Result<config_file::LoadedConfig, LoadError> {
    let mut loaded = config_file::load(path)?;
    match check_plugins(&loaded.config, state, loaded.path.as_deref()) {
        Ok(w) => {
            loaded.warnings.extend(w.iter().map(|w| w.to_string()));
            Ok(loaded)
        }
        Err(errs) => Err(LoadError::Invalid(path.to_path_buf(), errs)),
    }
}

fn load_or_report(path: &Path, state: &Path) -> Result<config_file::LoadedConfig, u8> {
    match load_checked(path, state) {
        Ok(l) => Ok(l),
        Err(e @ LoadError::Invalid(..)) => {
            eprint!("{e}");
            Err(EXIT_CONFIG)
        }
        Err(e @ LoadError::Io(..)) => {
            eprintln!("error: {e}");
            Err(EXIT_CONFIG)
        }
    }
}

async fn start_gateway(state: &Path, store: Arc<Store>, loaded: &config_file::LoadedConfig) -> Result<Gateway> {
    Gateway::start(GatewayOptions {
        state_dir: state.to_path_buf(),
        config_path: loaded.path.clone(),
        config: loaded.config.clone(),
        config_hash: loaded.hash.clone(),
        warnings: loaded.warnings.clone(),
        store,
        version: env!("CARGO_PKG_VERSION").to_string(),
        deliver: true,
        channels: Some(Default::default()),
    })
    .await
    .context("cannot start the gateway runtime")
}

/// Run the daemon until stopped. Returns the exit code.
pub async fn run(state: PathBuf, config_path: PathBuf, args: RunArgs) -> Result<u8> {
    let t0 = std::time::Instant::now();
    paths::ensure_state_dir(&state)?;
    let _lock = match StateLock::acquire(&state) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("error: {e}");
            return Ok(1);
        }
    };
    let mut loaded = match load_or_report(&config_path, &state) {
        Ok(l) => l,
        Err(code) => return Ok(code),
    };
    for w in &loaded.warnings {
        tracing::warn!("config: {w}");
    }
    if let Some(p) = args.port {
        loaded.config.gateway.port = p;
    }
    if let Some(b) = &args.bind {
        loaded.config.gateway.bind = b.clone();
    }
    let ip = bind_ip(&loaded.config.gateway.bind, loaded.config.gateway.custom_bind_host.as_deref())?;
    let auth = loaded.config.gateway.auth.mode;
    if auth == AuthMode::None && !ip.is_loopback() {
        eprintln!("error: refusing to bind {ip} without auth: set gateway.auth.mode to \"token\" or bind to loopback");
        return Ok(EXIT_CONFIG);
    }
    let (token, generated) = resolve_token(&loaded.config, &state)?;
    let db = state.join("pincer.db");
    let store = match Store::open(&state) {
        Ok(s) => Arc::new(s),
        Err(e) => {
            eprintln!("error: {e}");
            return Ok(1);
        }
    };
    let addr = SocketAddr::new(ip, loaded.config.gateway.port);
    let listener = match tokio::net::TcpListener::bind(addr).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("error: cannot listen on {addr}: {e} (is another program using the port? try --port)");
            return Ok(1);
        }
    };
    let local = listener.local_addr()?;
    let gateway = start_gateway(&state, store.clone(), &loaded).await?;
    let handle = gateway.handle();
    let (ctl_tx, mut ctl_rx) = mpsc::channel::<ControlInput>(16);
    let control = ControlState::new(handle.clone(), auth, token.clone(), ctl_tx.clone(), loaded.config.gateway.clone());
    // Process-level tasks (server, signals, watcher) outlive any one runtime generation, so
    // they belong to their own supervisor; each runtime has its own for everything else.
    let process = pincer_runtime::supervisor::Supervisor::new();
    let mut server_cancel = tokio_util::sync::CancellationToken::new();
    let mut server = {
        let control = control.clone();
        let cancel = server_cancel.clone();
        process.spawn("control-plane", async move { control::serve(listener, control, cancel).await })
    };
    let mut local_addr = local;
    paths::write_atomic(&paths::address_file(&state), format!("{local}\n").as_bytes())?;
    // Inputs are wired before the ready line, so nothing sent after it can be missed.
    if loaded.config.gateway.reload.mode == pincer_core::config::ReloadMode::Hybrid {
        // No baseline: the first poll asks for a reload, which is a no-op when the file still
        // has the hash that was loaded, and catches an edit made since.
        process.spawn("config-watcher", watch_file(config_path.clone(), None, ctl_tx.clone(), process.token()));
    }
    spawn_signals(&process, ctl_tx.clone())?;

    let snap = handle.snapshot();
    let agent = snap.runner.describe(&snap.config.agent_model_chain(&snap.config.default_agent_id()));
    println!("pincer {} starting (pid {})", env!("CARGO_PKG_VERSION"), std::process::id());
    println!("  state:    {} (locked)", state.display());
    match &loaded.path {
        Some(p) => println!("  config:   {} ({} warning(s))", p.display(), loaded.warnings.len()),
        None => println!("  config:   none at {} (embedded defaults)", config_path.display()),
    }
    println!("  store:    {} (SQLite, WAL)", db.display());
    println!("  agent:    {}", agent.summary());
    println!(
        "  channels: {}",
        if snap.senders.is_empty() {
            "none configured".to_string()
        } else {
            snap.senders.keys().map(|(c, a)| format!("{c}/{a}")).collect::<Vec<_>>().join(", ")
        }
    );
    println!(
        "  reload:   {} (SIGHUP reloads; SIGUSR1/SIGUSR2 restart in-process)",
        match loaded.config.gateway.reload.mode {
            pincer_core::config::ReloadMode::Hybrid => "hybrid (watching the file)",
            pincer_core::config::ReloadMode::Off => "off",
        }
    );
    match auth {
        AuthMode::Token if generated => {
            println!("  auth:     token (generated, saved in {}): {token}", paths::token_file(&state).display())
        }
        AuthMode::Token => println!("  auth:     token"),
        AuthMode::None => println!("  auth:     none (loopback only)"),
    }
    if loaded.config.gateway.control_ui.enabled {
        match auth {
            // Printed once, with the token it was generated with, so the page logs in directly.
            AuthMode::Token if generated => println!("  web chat: http://{local}/#token={token}"),
            _ => println!("  web chat: http://{local}/"),
        }
    }
    println!("listening on ws://{local} (ready in {} ms)", t0.elapsed().as_millis());
    drop(snap);

    let mut gateway = Some(gateway);
    let mut current = loaded;
    let code = loop {
        let Some(input) = ctl_rx.recv().await else { break 0 };
        match input {
            ControlInput::Stop(why) => {
                tracing::info!(reason = why, "stopping");
                break 0;
            }
            ControlInput::Reload(why, reply) => {
                let handle = gateway.as_ref().map(|g| g.handle());
                let result = match reload_file(&config_path, &state, &current, why, handle) {
                    Ok(Some(mut next)) => {
                        let report = apply(gateway.as_ref(), &control, &mut next, &current, &args).await;
                        if let Some(r) = &report {
                            tracing::info!(source = why, generation = r.generation, changed = ?r.changed, "config reloaded");
                        }
                        current = next;
                        Ok(serde_json::json!({"reloaded": true, "hash": current.hash, "report": report}))
                    }
                    Ok(None) => Ok(serde_json::json!({"reloaded": false, "reason": "unchanged", "hash": current.hash})),
                    Err(message) => Err(serde_json::json!({"code": "INVALID_REQUEST", "message": message})),
                };
                if let Some(reply) = reply {
                    let _ = reply.send(result);
                }
            }
            ControlInput::Patch { patch, base_hash, reply } => {
                let res = patched_text(&config_path, &patch)
                    .and_then(|text| apply_text(&config_path, &state, &current, text, base_hash));
                match res {
                    Ok(mut next) => {
                        let report = apply(gateway.as_ref(), &control, &mut next, &current, &args).await;
                        current = next;
                        let _ = reply.send(Ok(serde_json::json!({"ok": true, "hash": current.hash, "report": report})));
                    }
                    Err(e) => {
                        let _ = reply.send(Err(e));
                    }
                }
            }
            ControlInput::Restart(why, reply) => {
                tracing::info!(source = why, "in-process restart: draining the runtime");
                let reloaded = reload_file(&config_path, &state, &current, why, gateway.as_ref().map(|g| g.handle()));
                if let Some(reply) = reply {
                    let _ = reply.send(Ok(serde_json::json!({"ok": true, "restarting": true})));
                }
                // An unchanged file is loaded again too: a port or bind change that an earlier
                // reload pinned to the running listener takes effect now.
                let reloaded = match reloaded {
                    Ok(None) => load_checked(&config_path, &state).ok(),
                    other => other.ok().flatten(),
                };
                if let Some(mut next) = reloaded {
                    // A restart is where a new port or bind takes effect (unless the command
                    // line pinned them).
                    pin_cli_listener(&mut next, &current, &args);
                    match rebind(&next.config, local_addr).await {
                        Ok(Some(listener)) => {
                            let new_local = listener.local_addr()?;
                            server_cancel.cancel();
                            let _ = tokio::time::timeout(Duration::from_secs(2), &mut server).await;
                            server_cancel = tokio_util::sync::CancellationToken::new();
                            let (control, cancel) = (control.clone(), server_cancel.clone());
                            server = process
                                .spawn("control-plane", async move { control::serve(listener, control, cancel).await });
                            paths::write_atomic(&paths::address_file(&state), format!("{new_local}\n").as_bytes())?;
                            tracing::info!(old = %local_addr, new = %new_local, "control plane moved to a new listener");
                            println!("listening on ws://{new_local}");
                            local_addr = new_local;
                        }
                        Ok(None) => {}
                        Err(e) => {
                            tracing::error!(error = %e, "cannot move the listener; keeping {local_addr}");
                            next.keep_listener_of(&current);
                        }
                    }
                    current = next;
                }
                let plugins_ready = gateway.as_ref().map(|g| g.handle().plugins().ready_ids()).unwrap_or_default();
                control.restarting();
                if let Some(g) = gateway.take() {
                    g.drain(RESTART_DRAIN).await;
                    let outcome = g.shutdown(DRAIN_DEADLINE).await;
                    tracing::info!(?outcome, "old runtime stopped");
                }
                let g = start_gateway(&state, store.clone(), &current).await?;
                // Every plugin starts a fresh generation; hold clients until the ones that
                // were serving serve again, so no fresh connection misses their methods.
                if !g.handle().plugins().wait_settled(&plugins_ready, PLUGIN_RESTART_WAIT).await {
                    tracing::warn!(plugins = ?plugins_ready, "plugins still initializing after the restart; letting clients in");
                }
                control.replace_gateway(g.handle(), current.config.gateway.clone());
                tracing::info!("in-process restart done: fresh runtime running");
                gateway = Some(g);
            }
            ControlInput::Apply { text, base_hash, reply } => {
                let res = apply_text(&config_path, &state, &current, text, base_hash);
                match res {
                    Ok(mut next) => {
                        let report = apply(gateway.as_ref(), &control, &mut next, &current, &args).await;
                        current = next;
                        let _ = reply.send(Ok(serde_json::json!({"ok": true, "hash": current.hash, "report": report})));
                    }
                    Err(e) => {
                        let _ = reply.send(Err(e));
                    }
                }
            }
        }
    };
    control.restarting_for_stop();
    if let Some(g) = gateway.take() {
        let outcome = g.shutdown(DRAIN_DEADLINE).await;
        tracing::info!(?outcome, "runtime stopped");
    }
    server_cancel.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(2), server).await;
    process.shutdown(Duration::from_secs(2)).await;
    let _ = std::fs::remove_file(paths::address_file(&state));
    println!("pincer stopped");
    Ok(code)
}

/// `--port`/`--bind` given on the command line win over the file for the whole life of the
/// process: copy the running values into a freshly loaded config.
fn pin_cli_listener(next: &mut config_file::LoadedConfig, current: &config_file::LoadedConfig, args: &RunArgs) {
    if args.port.is_some() {
        next.config.gateway.port = current.config.gateway.port;
    }
    if args.bind.is_some() {
        next.config.gateway.bind = current.config.gateway.bind.clone();
    }
}

/// A new listener when `config`'s bind address or port differs from `current`; `None` when
/// they match. Errors: an invalid bind, or the bind itself failing.
async fn rebind(config: &Config, current: SocketAddr) -> Result<Option<tokio::net::TcpListener>> {
    let ip = bind_ip(&config.gateway.bind, config.gateway.custom_bind_host.as_deref())?;
    let want = SocketAddr::new(ip, config.gateway.port);
    if want == current || (config.gateway.port == 0 && ip == current.ip()) {
        return Ok(None);
    }
    if config.gateway.auth.mode == AuthMode::None && !ip.is_loopback() {
        anyhow::bail!("refusing to bind {ip} without auth");
    }
    Ok(Some(tokio::net::TcpListener::bind(want).await.with_context(|| format!("cannot listen on {want}"))?))
}

/// Apply a validated config to the running runtime (channel accounts settle first, then the
/// snapshot is published) and to the control plane's gateway settings.
/// The listener (`gateway.port`, `gateway.bind`) only changes on a restart: it is pinned to
/// the running one here and reported as `restartRequired`.
async fn apply(
    gateway: Option<&Gateway>,
    control: &ControlState,
    next: &mut config_file::LoadedConfig,
    current: &config_file::LoadedConfig,
    args: &RunArgs,
) -> Option<pincer_runtime::ReloadReport> {
    pin_cli_listener(next, current, args);
    let mut pinned = Vec::new();
    if next.config.gateway.port != current.config.gateway.port {
        pinned.push("gateway.port".to_string());
    }
    if next.config.gateway.bind != current.config.gateway.bind {
        pinned.push("gateway.bind".to_string());
    }
    if !pinned.is_empty() {
        tracing::warn!(changed = ?pinned, "the listener changes on restart (SIGUSR1 or `pincer gateway restart`)");
    }
    next.keep_listener_of(current);
    let mut report = match gateway {
        Some(g) => Some(g.handle().apply_config(next.config.clone(), next.hash.clone(), next.warnings.clone()).await),
        None => None,
    };
    if let Some(r) = &mut report {
        for p in pinned {
            if !r.restart_required.contains(&p) {
                r.restart_required.push(p);
            }
        }
    }
    control.set_gateway_config(next.config.gateway.clone());
    report
}

/// Re-read the config. `Ok(None)` when unchanged; on any problem, log every error, record it
/// for `status`, keep the running config, and return the error text.
fn reload_file(
    path: &Path,
    state: &Path,
    current: &config_file::LoadedConfig,
    why: &str,
    handle: Option<pincer_runtime::GatewayHandle>,
) -> Result<Option<config_file::LoadedConfig>, String> {
    let loaded = config_file::load(path).and_then(|mut next| {
        if next.hash == current.hash && !next.hash.is_empty() {
            return Ok(None);
        }
        match check_plugins(&next.config, state, next.path.as_deref()) {
            Ok(w) => {
                next.warnings.extend(w.iter().map(|w| w.to_string()));
                Ok(Some(next))
            }
            Err(errs) => Err(LoadError::Invalid(path.to_path_buf(), errs)),
        }
    });
    match loaded {
        Ok(None) => {
            tracing::debug!(source = why, "config unchanged");
            Ok(None)
        }
        Ok(Some(next)) => {
            for w in &next.warnings {
                tracing::warn!("config: {w}");
            }
            Ok(Some(next))
        }
        Err(e) => {
            let message = e.to_string().trim_end().to_string();
            tracing::error!(source = why, "config reload skipped, the running config stays in effect: {message}");
            if let Some(h) = handle {
                h.record_reload_error(why, &message);
            }
            Err(message)
        }
    }
}

/// The config file's text with `patch` merged in (RFC 7396), as pretty JSON. A missing file is
/// `{}`. Errors are control-plane error objects.
fn patched_text(path: &Path, patch: &serde_json::Value) -> Result<String, serde_json::Value> {
    let mut raw = config_file::read_raw(path).map_err(|e| {
        let code = if matches!(e, config_file::RawError::Io(_)) { "UNAVAILABLE" } else { "INVALID_REQUEST" };
        serde_json::json!({"code": code, "message": e.to_string()})
    })?;
    pincer_core::config::merge_patch(&mut raw, patch);
    Ok(serde_json::to_string_pretty(&raw).unwrap_or_default() + "\n")
}

fn apply_text(
    path: &Path,
    state: &Path,
    current: &config_file::LoadedConfig,
    text: String,
    base_hash: Option<String>,
) -> Result<config_file::LoadedConfig, serde_json::Value> {
    if let Some(base) = base_hash {
        if !current.hash.is_empty() && base != current.hash {
            return Err(
                serde_json::json!({"code": "INVALID_REQUEST", "message": "config changed since it was read (baseHash mismatch); get it again",
                "details": {"currentHash": current.hash}}),
            );
        }
    }
    let invalid = |errs: pincer_core::config::ConfigErrors| {
        serde_json::json!({"code": "INVALID_REQUEST", "message": format!("invalid config ({} problems)", errs.0.len()),
            "details": {"errors": errs.0.iter().map(|e| e.to_string()).collect::<Vec<_>>()}})
    };
    let mut loaded = config_file::parse_text(&text).map_err(invalid)?;
    let warnings = check_plugins(&loaded.config, state, Some(path)).map_err(invalid)?;
    loaded.warnings.extend(warnings);
    paths::write_atomic(path, text.as_bytes())
        .map_err(|e| serde_json::json!({"code": "UNAVAILABLE", "message": format!("cannot write config: {e}")}))?;
    Ok(config_file::LoadedConfig::from_parsed(loaded, path))
}

/// Poll the config file every 500 ms and compare its bytes with the last version seen; a
/// change that stays put for 300 ms triggers a reload. Comparing
/// contents rather than (mtime, len) cannot miss an edit made within one mtime tick, and
/// polling survives editors' rename-over writes without special cases.
async fn watch_file(
    path: PathBuf,
    seen: Option<Vec<u8>>,
    tx: mpsc::Sender<ControlInput>,
    cancel: tokio_util::sync::CancellationToken,
) {
    let mut last = seen;
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
        let now = std::fs::read(&path).ok();
        if now == last {
            continue;
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_millis(300)) => {}
        }
        if std::fs::read(&path).ok() == now {
            last = now;
            if tx.send(ControlInput::Reload("file watcher", None)).await.is_err() {
                return;
            }
        }
    }
}

#[cfg(unix)]
fn spawn_signals(process: &pincer_runtime::supervisor::Supervisor, tx: mpsc::Sender<ControlInput>) -> Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    let mut usr1 = signal(SignalKind::user_defined1())?;
    let mut usr2 = signal(SignalKind::user_defined2())?;
    let cancel = process.token();
    process.spawn("signals", async move {
        loop {
            let input = tokio::select! {
                _ = cancel.cancelled() => return,
                _ = term.recv() => ControlInput::Stop("SIGTERM"),
                _ = int.recv() => ControlInput::Stop("SIGINT"),
                _ = hup.recv() => ControlInput::Reload("SIGHUP", None),
                _ = usr1.recv() => ControlInput::Restart("SIGUSR1", None),
                _ = usr2.recv() => ControlInput::Restart("SIGUSR2", None),
            };
            let stop = matches!(input, ControlInput::Stop(_));
            if tx.send(input).await.is_err() || stop {
                return;
            }
        }
    });
    Ok(())
}
