//! The [`Provider`] trait every model backend implements, and [`build_provider`], which turns
//! one `models.providers.<id>` entry into a running provider.
//!
//! The trait returns a boxed future ([`BoxFuture`]) rather than using `async fn` in the
//! trait: `async fn` in traits is not object-safe yet, and the runner holds providers as
//! `Arc<dyn Provider>`. The `async-trait` crate would generate exactly this boxing through a
//! proc macro; writing the one signature by hand costs nothing and keeps the dependency out.

use crate::anthropic::AnthropicProvider;
use crate::echo::EchoProvider;
use crate::error::AgentError;
use crate::exec::ExecProvider;
use crate::openai::OpenAiProvider;
use crate::types::{RunOutput, RunRequest};
use pincer_core::config::{ProviderApi, ProviderConfig};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// A boxed, `Send` future borrowing for `'a`.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// One model backend. Knows nothing about channels or sessions.
pub trait Provider: Send + Sync + 'static {
    /// The provider id (the key under `models.providers`, or `"echo"`).
    fn id(&self) -> &str;

    /// The wire API it speaks.
    fn api(&self) -> ProviderApi;

    /// Runs one model call for `req.model`.
    ///
    /// Text deltas are sent to `deltas` in order as they arrive; a closed receiver is
    /// ignored. The returned [`RunOutput::text`] is the whole reply. When `cancel` fires the
    /// call stops promptly (the HTTP response is dropped, which closes its connection; an
    /// exec child is killed and reaped) and returns [`AgentError::Cancelled`]. The
    /// provider's own `timeoutSeconds` (default 120) bounds the call with
    /// [`AgentError::Timeout`]. Never panics on any response.
    fn run(
        &self,
        req: RunRequest,
        deltas: mpsc::Sender<String>,
        cancel: CancellationToken,
    ) -> BoxFuture<'_, Result<RunOutput, AgentError>>;
}

/// Builds the provider `id` from its config, sharing `http` (one client, one connection pool
/// for the whole gateway).
///
/// # Errors
/// [`AgentError::Config`] when the entry cannot work: an invalid header or API key, or an
/// `exec` provider without a `command`.
pub fn build_provider(id: &str, cfg: &ProviderConfig, http: &reqwest::Client) -> Result<Arc<dyn Provider>, AgentError> {
    Ok(match cfg.api {
        ProviderApi::OpenaiCompletions => Arc::new(OpenAiProvider::new(id, cfg, http.clone())?),
        ProviderApi::AnthropicMessages => Arc::new(AnthropicProvider::new(id, cfg, http.clone())?),
        ProviderApi::Exec => Arc::new(ExecProvider::new(id, cfg)?),
        ProviderApi::Echo => Arc::new(EchoProvider::new(id)),
    })
}
