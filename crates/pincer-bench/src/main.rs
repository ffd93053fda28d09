//! pincer-bench: the load tool. Modes:
//!
//! - `pipeline` (the default when no subcommand is given): routed inbound messages through the
//!   runtime in-process (router → dedupe → session actor → echo agent → outbox commit, real
//!   SQLite), then startup time and idle RSS of the real binary;
//! - `ws-chat`: `chat.send` round trips over the control-plane WebSocket of a running gateway,
//!   from the send to the run's `chat` final event;
//! - `http-chat`: non-streaming `POST /v1/chat/completions` against a running gateway;
//! - `idle-ws`: the running gateway's RSS with N authenticated idle WebSocket clients;
//! - `matrix-latency`: a person's message to the bot's reply through a real Synapse (started
//!   with `scripts/peers/synapse.sh`), and pincer's RSS with the Matrix account connected.
//!
//! Run `pincer-bench --help` or `pincer-bench <mode> --help` for the flags; `BENCHMARKS.md`
//! has the commands and the figures.

mod control;
mod matrix;
mod pipeline;
mod stats;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "pincer-bench",
    about = "Load tool for pincer (in-process pipeline, and a running gateway's control plane)",
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    mode: Option<Mode>,
    /// Flags of the default mode (`pipeline`) when no subcommand is given.
    #[command(flatten)]
    pipeline: pipeline::PipelineArgs,
}

#[derive(Subcommand, Debug)]
enum Mode {
    /// In-process routed-message throughput, then startup and idle RSS of the binary (default).
    Pipeline(pipeline::PipelineArgs),
    /// `chat.send` over the WebSocket control plane: time from the send to the `chat` final event.
    WsChat(control::LoadArgs),
    /// Non-streaming `POST /v1/chat/completions` (model "pincer", bearer token, keep-alive).
    HttpChat(control::HttpArgs),
    /// RSS of the gateway with N authenticated idle WebSocket clients connected.
    IdleWs(control::IdleArgs),
    /// Matrix: latency from a person's message to the bot's reply (real Synapse, echo agent).
    MatrixLatency(matrix::MatrixArgs),
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.mode {
        None => pipeline::run(cli.pipeline),
        Some(Mode::Pipeline(a)) => pipeline::run(a),
        Some(Mode::WsChat(a)) => control::ws_chat(a),
        Some(Mode::HttpChat(a)) => control::http_chat(a),
        Some(Mode::IdleWs(a)) => control::idle_ws(a),
        Some(Mode::MatrixLatency(a)) => matrix::matrix_latency(a),
    }
}
