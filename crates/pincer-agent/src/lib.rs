//! pincer-agent: the LLM providers of the gateway behind one streaming trait, and the runner
//! that walks a model chain with retries and fallback.
//!
//! - [`Provider`]: one model backend. Implementations: [`EchoProvider`] (built-in),
//!   [`OpenAiProvider`] (`openai-completions`), [`AnthropicProvider`]
//!   (`anthropic-messages`) and [`ExecProvider`] (`exec`, a local command).
//! - [`AgentRunner`]: builds the providers of `models.providers` and runs a request over a
//!   chain of model refs (`provider/model`) with [`RetryPolicy`], fallback, cancellation and
//!   a deadline, streaming [`RunEvent`]s.
//! - [`sse`]: the SSE parser and the per-API stream decoders share [`sse::StreamDecoder`].
//! - [`is_silent`]: recognises the `NO_REPLY` token.
//!
//! Invariant: this crate knows nothing about channels, sessions or the store. It takes a
//! conversation and returns text.

pub mod anthropic;
pub mod echo;
pub mod error;
pub mod exec;
mod http;
pub mod openai;
pub mod provider;
pub mod runner;
pub mod silent;
pub mod sse;
pub mod types;

pub use anthropic::AnthropicProvider;
pub use echo::EchoProvider;
pub use error::AgentError;
pub use exec::ExecProvider;
pub use openai::OpenAiProvider;
pub use provider::{build_provider, BoxFuture, Provider};
pub use runner::{AgentRunner, ModelRef, ModelStatus, RetryPolicy, RunEventSink, ECHO_ONLY_MESSAGE};
pub use silent::{is_silent, SILENT_TOKEN};
pub use types::{ChatMessage, Role, RunEvent, RunOutput, RunRequest, Usage};
