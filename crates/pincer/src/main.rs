//! `pincer`: the gateway binary. CLI (clap), the daemon (`gateway run`), the control plane
//! (axum HTTP + WebSocket), web chat assets, signals and logging. Business logic lives in the
//! library crates; this crate only wires them together.

mod cli;
mod client;
mod config_file;
mod control;
mod daemon;
mod doctor;
mod logging;
mod paths;

use clap::Parser;

fn main() -> std::process::ExitCode {
    let args = cli::Cli::parse();
    let daemon = args.command.is_daemon();
    let log_file = daemon.then(|| logging::log_file(&paths::state_dir(args.state_dir.as_deref())));
    logging::init(args.log_format, args.log_level.as_deref(), daemon, log_file.as_deref());
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return std::process::ExitCode::from(1);
        }
    };
    let code = rt.block_on(cli::run(args));
    // Do not wait for stray blocking tasks (e.g. a stdin reader) at exit.
    rt.shutdown_timeout(std::time::Duration::from_millis(200));
    std::process::ExitCode::from(code)
}
