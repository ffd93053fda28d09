//! The `exec` provider: runs a local command (argv, no shell) per call, with the
//! conversation as JSON on stdin, and takes its stdout as the reply.
//!
//! Protocol (pincer's own; OpenClaw has no equivalent API):
//! - stdin: `{"model": "<id>", "systemPrompt": "<text>" | null, "messages": [{"role":
//!   "system" | "user" | "assistant", "content": "<text>"}]}`, then EOF.
//! - stdout: the reply. Trimmed; if it is a JSON object with a string `"text"` member, that
//!   member is the reply. At most [`STDOUT_CAP`] bytes are kept.
//! - exit code 0 means success; anything else is [`AgentError::Exec`] with the code and the
//!   start of stderr.
//!
//! The child runs in its own process group. On timeout, cancellation or drop of the run
//! future, the whole group gets SIGKILL (so a shell script's own children die too) and the
//! child is reaped (explicitly when we still run, by tokio's `kill_on_drop` otherwise).

use crate::error::{snippet, AgentError};
use crate::http::timeout_of;
use crate::provider::{BoxFuture, Provider};
use crate::types::{RunOutput, RunRequest};
use pincer_core::config::{ProviderApi, ProviderConfig};
use serde_json::{json, Value};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Bytes of stdout kept (the rest is read and discarded so the child never blocks): 16 MiB.
pub const STDOUT_CAP: usize = 16 * 1024 * 1024;
/// Bytes of stderr kept for the error: 64 KiB (512 characters end up in the error).
const STDERR_CAP: usize = 64 * 1024;

/// The stdin document for `req` (see the module docs).
pub fn stdin_json(req: &RunRequest) -> Value {
    json!({
        "model": req.model,
        "systemPrompt": req.system_prompt,
        "messages": req.messages,
    })
}

/// The reply in a command's stdout: trimmed text, or the `"text"` member of a JSON object.
pub fn parse_stdout(stdout: &[u8]) -> String {
    let text = String::from_utf8_lossy(stdout);
    let text = text.trim();
    if text.starts_with('{') {
        if let Ok(Value::Object(obj)) = serde_json::from_str::<Value>(text) {
            if let Some(Value::String(t)) = obj.get("text") {
                return t.clone();
            }
        }
    }
    text.to_string()
}

/// An `exec` provider built from its config.
#[derive(Clone, Debug)]
pub struct ExecProvider {
    id: String,
    command: Vec<String>,
    timeout: Duration,
}

impl ExecProvider {
    /// Builds the provider `id` from `cfg.command` and `cfg.timeoutSeconds` (default 120).
    ///
    /// # Errors
    /// [`AgentError::Config`] when `command` is empty or its program is an empty string.
    pub fn new(id: &str, cfg: &ProviderConfig) -> Result<Self, AgentError> {
        if cfg.command.first().is_none_or(|p| p.is_empty()) {
            return Err(AgentError::config(format!("provider {id}: api \"exec\" needs a non-empty command")));
        }
        Ok(ExecProvider { id: id.to_string(), command: cfg.command.clone(), timeout: timeout_of(cfg.timeout_seconds) })
    }

    async fn call(&self, req: &RunRequest, cancel: &CancellationToken) -> Result<String, AgentError> {
        let program = &self.command[0];
        let exec_err =
            |detail: String, code, stderr: &[u8]| AgentError::Exec { detail, code, stderr: snippet(stderr, 512) };
        let input = serde_json::to_vec(&stdin_json(req)).unwrap_or_default();
        let mut cmd = tokio::process::Command::new(program);
        cmd.args(&self.command[1..])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        #[cfg(unix)]
        cmd.process_group(0);
        let mut child = cmd.spawn().map_err(|e| exec_err(format!("cannot start {program:?}: {e}"), None, b""))?;
        let mut group = GroupGuard::new(child.id());
        let stdin = child.stdin.take();
        let stdout = child.stdout.take();
        let stderr = child.stderr.take();

        let outcome = {
            let write = async move {
                if let Some(mut stdin) = stdin {
                    // A child that exits without reading gives EPIPE: not an error here.
                    let _ = stdin.write_all(&input).await;
                }
            };
            let work = async {
                let (_, out, err, status) =
                    tokio::join!(write, read_capped(stdout, STDOUT_CAP), read_capped(stderr, STDERR_CAP), child.wait());
                (out, err, status)
            };
            tokio::select! {
                biased;
                _ = cancel.cancelled() => Err(AgentError::Cancelled),
                _ = tokio::time::sleep(self.timeout) => Err(AgentError::Timeout),
                r = work => Ok(r),
            }
        };
        let (out, err, status) = match outcome {
            Ok(r) => r,
            Err(e) => {
                group.kill();
                let _ = child.start_kill();
                let _ = child.wait().await;
                group.disarm();
                return Err(e);
            }
        };
        group.disarm();
        let status = status.map_err(|e| exec_err(format!("waiting for {program:?}: {e}"), None, &err))?;
        if status.success() {
            return Ok(parse_stdout(&out));
        }
        Err(exec_err(format!("{program:?} {}", describe_status(status)), status.code(), &err))
    }
}

impl Provider for ExecProvider {
    fn id(&self) -> &str {
        &self.id
    }

    fn api(&self) -> ProviderApi {
        ProviderApi::Exec
    }

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
            let text = self.call(&req, &cancel).await?;
            if !text.is_empty() {
                let _ = deltas.send(text.clone()).await;
            }
            Ok(RunOutput { text, stop_reason: None, usage: None, model: req.model, provider: self.id.clone() })
        })
    }
}

fn describe_status(status: ExitStatus) -> String {
    if let Some(code) = status.code() {
        return format!("exited with code {code}");
    }
    #[cfg(unix)]
    {
        use std::os::unix::process::ExitStatusExt;
        if let Some(sig) = status.signal() {
            return format!("was killed by signal {sig}");
        }
    }
    format!("ended with {status}")
}

/// Reads to EOF, keeping at most `cap` bytes; read errors end the read.
async fn read_capped<R: AsyncRead + Unpin>(reader: Option<R>, cap: usize) -> Vec<u8> {
    let mut kept = Vec::new();
    let Some(mut reader) = reader else {
        return kept;
    };
    let mut buf = [0u8; 8192];
    loop {
        match reader.read(&mut buf).await {
            Ok(0) | Err(_) => return kept,
            Ok(n) => {
                let room = cap.saturating_sub(kept.len());
                kept.extend_from_slice(&buf[..n.min(room)]);
            }
        }
    }
}

/// SIGKILLs the child's process group when dropped armed (the run future was dropped).
struct GroupGuard {
    #[cfg_attr(not(unix), allow(dead_code))]
    pgid: Option<u32>,
}

impl GroupGuard {
    fn new(pid: Option<u32>) -> Self {
        GroupGuard { pgid: pid }
    }

    fn kill(&self) {
        #[cfg(unix)]
        if let Some(pgid) = self.pgid.and_then(|p| i32::try_from(p).ok()) {
            // SAFETY: kill(2) takes plain integers and touches no memory of ours. The group id
            // is our child's pid, set with process_group(0); the child is not reaped yet
            // whenever this runs, so the id cannot have been reused.
            unsafe {
                libc::kill(-pgid, libc::SIGKILL);
            }
        }
    }

    fn disarm(&mut self) {
        self.pgid = None;
    }
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        self.kill();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::ChatMessage;

    #[test]
    fn stdout_parsing() {
        assert_eq!(parse_stdout(b"  hello \n"), "hello");
        assert_eq!(parse_stdout(br#"{"text": "hi", "x": 1}"#), "hi");
        assert_eq!(parse_stdout(br#"{"nope": 1}"#), r#"{"nope": 1}"#);
        assert_eq!(parse_stdout(br#"{"text": 5}"#), r#"{"text": 5}"#);
        assert_eq!(parse_stdout(b"{broken"), "{broken");
    }

    #[test]
    fn stdin_shape() {
        let req = RunRequest {
            model: "m".into(),
            system_prompt: None,
            messages: vec![ChatMessage::user("hi")],
            max_tokens: None,
        };
        assert_eq!(
            stdin_json(&req),
            json!({"model": "m", "systemPrompt": null,
                   "messages": [{"role": "user", "content": "hi"}]})
        );
    }
}
