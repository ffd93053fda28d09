//! The `exec` provider with small shell scripts in a temp dir.

mod common;

use common::*;
use pincer_agent::{AgentError, ExecProvider, RunRequest};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
    path
}

fn exec_cfg(path: &Path, timeout: Option<u64>) -> Value {
    let mut v = json!({"api": "exec", "command": ["/bin/sh", path.to_str().unwrap()]});
    if let Some(t) = timeout {
        v["timeoutSeconds"] = t.into();
    }
    v
}

fn read_pid(path: &Path) -> u32 {
    std::fs::read_to_string(path).unwrap().trim().parse().unwrap()
}

#[tokio::test]
async fn json_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let seen = dir.path().join("stdin.json");
    let s = script(
        dir.path(),
        "reply.sh",
        &format!("cat > '{}'\nprintf '%s' '{{\"text\": \"hello from exec\", \"extra\": 1}}'", seen.display()),
    );
    let r = runner(vec![("local", exec_cfg(&s, None))]);
    let mut req = ask("hi");
    req.system_prompt = Some("sys".into());
    let (out, events) = run_collect(&r, &["local/my-model"], req, CancellationToken::new(), MINUTE).await;
    let out = out.unwrap();
    assert_eq!(out.text, "hello from exec");
    assert_eq!((out.provider.as_str(), out.model.as_str()), ("local", "my-model"));
    assert_eq!(streamed_text(&events), "hello from exec");
    let stdin: Value = serde_json::from_str(&std::fs::read_to_string(&seen).unwrap()).unwrap();
    assert_eq!(
        stdin,
        json!({"model": "my-model", "systemPrompt": "sys",
               "messages": [{"role": "user", "content": "hi"}]})
    );
}

#[tokio::test]
async fn plain_stdout_is_trimmed() {
    let dir = tempfile::tempdir().unwrap();
    let s = script(dir.path(), "plain.sh", "cat > /dev/null\nprintf '  plain reply \\n\\n'");
    let p = ExecProvider::new("local", &provider(exec_cfg(&s, None))).unwrap();
    let (out, _) = provider_collect(&p, RunRequest { model: "m".into(), ..ask("q") }, CancellationToken::new()).await;
    assert_eq!(out.unwrap().text, "plain reply");
}

#[tokio::test]
async fn failure_reports_code_and_stderr() {
    let dir = tempfile::tempdir().unwrap();
    let s = script(dir.path(), "fail.sh", "echo 'model backend on fire' >&2\nexit 3");
    let p = ExecProvider::new("local", &provider(exec_cfg(&s, None))).unwrap();
    let (out, _) = provider_collect(&p, RunRequest { model: "m".into(), ..ask("q") }, CancellationToken::new()).await;
    match out {
        Err(e @ AgentError::Exec { code: Some(3), .. }) => {
            let AgentError::Exec { stderr, .. } = &e else { unreachable!() };
            assert_eq!(stderr, "model backend on fire");
            assert!(e.to_string().contains("exit code 3"), "{e}");
            assert!(!e.is_retryable());
        }
        other => panic!("unexpected {other:?}"),
    }
}

#[tokio::test]
async fn missing_program_is_an_exec_error() {
    let cfg = provider(json!({"api": "exec", "command": ["/nonexistent/pincer-agent-test"]}));
    let p = ExecProvider::new("local", &cfg).unwrap();
    let (out, _) = provider_collect(&p, RunRequest { model: "m".into(), ..ask("q") }, CancellationToken::new()).await;
    assert!(matches!(out, Err(AgentError::Exec { code: None, .. })), "{out:?}");
}

#[tokio::test]
async fn empty_command_is_a_config_error() {
    let cfg = provider(json!({"api": "exec"}));
    assert!(matches!(ExecProvider::new("local", &cfg), Err(AgentError::Config { .. })));
}

#[tokio::test]
async fn provider_timeout_kills_and_reaps_the_child() {
    let dir = tempfile::tempdir().unwrap();
    let pid_file = dir.path().join("pid");
    let s = script(dir.path(), "sleepy.sh", &format!("echo $$ > '{}'\nexec sleep 30", pid_file.display()));
    let p = ExecProvider::new("local", &provider(exec_cfg(&s, Some(1)))).unwrap();
    let started = Instant::now();
    let (out, _) = provider_collect(&p, RunRequest { model: "m".into(), ..ask("q") }, CancellationToken::new()).await;
    assert_eq!(out, Err(AgentError::Timeout));
    assert!(started.elapsed() < Duration::from_secs(10));
    // Killed and reaped before `run` returned: the pid is gone, not even a zombie.
    let pid = read_pid(&pid_file);
    assert!(!Path::new(&format!("/proc/{pid}")).exists(), "child {pid} still exists");
}

/// A named pipe at `dir/name`. Used to wait on the scripts by events, not by polling: opening
/// a FIFO blocks until the other side opens it, and a reader sees EOF only once every writer
/// has closed it, i.e. once the processes holding it are dead.
fn fifo(dir: &Path, name: &str) -> PathBuf {
    let path = dir.join(name);
    let st = std::process::Command::new("mkfifo").arg(&path).status().unwrap();
    assert!(st.success());
    path
}

/// Reads a FIFO to EOF (blocking pool), bounded so a regression fails instead of hanging.
async fn read_to_eof(path: &Path) -> String {
    use tokio::io::AsyncReadExt;
    let read = async {
        let mut f = tokio::fs::File::open(path).await.unwrap();
        let mut s = String::new();
        f.read_to_string(&mut s).await.unwrap();
        s
    };
    tokio::time::timeout(Duration::from_secs(10), read).await.expect("FIFO writers still alive after 10 s")
}

#[tokio::test]
async fn cancel_kills_the_whole_process_group() {
    let dir = tempfile::tempdir().unwrap();
    let ready = fifo(dir.path(), "ready");
    let held = fifo(dir.path(), "held");
    // A grandchild that would keep running if only `sh` were killed. It is the only writer of
    // `held`, so EOF on `held` means it died.
    let s = script(
        dir.path(),
        "family.sh",
        &format!("sleep 30 > '{}' &\necho $! > '{}'\nwait", held.display(), ready.display()),
    );
    let p = ExecProvider::new("local", &provider(exec_cfg(&s, None))).unwrap();
    let cancel = CancellationToken::new();
    let run = provider_collect(&p, RunRequest { model: "m".into(), ..ask("q") }, cancel.clone());
    let observer = async {
        let gc: u32 = read_to_eof(&ready).await.trim().parse().unwrap();
        // Open the grandchild's pipe (this completes its redirection), then cancel.
        use tokio::io::AsyncReadExt;
        let mut f = tokio::fs::File::open(&held).await.unwrap();
        cancel.cancel();
        let at = Instant::now();
        let mut rest = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), f.read_to_end(&mut rest))
            .await
            .expect("grandchild survived the cancel")
            .unwrap();
        (gc, at)
    };
    let ((out, _), (gc, at)) = tokio::join!(run, observer);
    assert_eq!(out, Err(AgentError::Cancelled));
    assert!(at.elapsed() < Duration::from_secs(2), "grandchild {gc} died late");
}

#[tokio::test]
async fn run_deadline_drops_the_call_and_kills_the_child() {
    let dir = tempfile::tempdir().unwrap();
    let held = fifo(dir.path(), "held");
    let s = script(dir.path(), "sleepy.sh", &format!("exec sleep 30 > '{}'", held.display()));
    let r = runner(vec![("local", exec_cfg(&s, None))]);
    let started = Instant::now();
    let ((out, _), _) = tokio::join!(
        run_collect(&r, &["local/m"], ask("q"), CancellationToken::new(), Duration::from_millis(500)),
        // EOF once the child (the pipe's only writer) is dead.
        read_to_eof(&held)
    );
    assert_eq!(out, Err(AgentError::Timeout));
    assert!(started.elapsed() < Duration::from_secs(5));
}
