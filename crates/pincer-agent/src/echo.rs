//! The built-in `echo` provider: replies `echo: <last user message>` at once. It is what a
//! gateway without any model configured runs, and it sits on the throughput benchmark path,
//! so it does one allocation for the reply and nothing else.

use crate::error::AgentError;
use crate::provider::{BoxFuture, Provider};
use crate::types::{RunOutput, RunRequest};
use pincer_core::config::ProviderApi;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// The model id reported by the built-in echo agent.
pub const ECHO_MODEL: &str = "echo";

/// The echo provider.
#[derive(Clone, Debug)]
pub struct EchoProvider {
    id: String,
}

impl EchoProvider {
    /// An echo provider named `id` (the built-in one is named `"echo"`).
    pub fn new(id: impl Into<String>) -> Self {
        EchoProvider { id: id.into() }
    }

    /// The reply to `req`: `"echo: "` followed by the last user message (empty if none).
    pub fn reply(req: &RunRequest) -> String {
        let last = req.last_user_text().unwrap_or("");
        let mut s = String::with_capacity(6 + last.len());
        s.push_str("echo: ");
        s.push_str(last);
        s
    }
}

impl Provider for EchoProvider {
    fn id(&self) -> &str {
        &self.id
    }

    fn api(&self) -> ProviderApi {
        ProviderApi::Echo
    }

    /// Sends the reply as one delta (a closed channel is ignored) and returns it. Cancelled
    /// only if `cancel` had already fired.
    fn run(
        &self,
        req: RunRequest,
        deltas: mpsc::Sender<String>,
        cancel: CancellationToken,
    ) -> BoxFuture<'_, Result<RunOutput, AgentError>> {
        Box::pin(async move {
            if cancel.is_cancelled() {
                return Err(AgentError::Cancelled);
            }
            let text = EchoProvider::reply(&req);
            let _ = deltas.send(text.clone()).await;
            Ok(RunOutput { text, stop_reason: None, usage: None, model: req.model, provider: self.id.clone() })
        })
    }
}
