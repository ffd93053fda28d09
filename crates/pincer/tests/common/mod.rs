//! Test harness: run the real `pincer` binary on loopback with a temp state dir, and talk to
//! it over the control-plane WebSocket. Synchronisation is on observable events (a stdout
//! line, a frame, a fake's request), never on sleeps.
#![allow(dead_code)]

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio_tungstenite::tungstenite::Message;

/// Generous upper bound for anything a test waits for.
pub const WAIT: Duration = Duration::from_secs(30);

/// The binary under test.
pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_pincer")
}

/// Run a CLI command to completion with the given state dir.
pub async fn cli(state: &Path, args: &[&str]) -> std::process::Output {
    tokio::time::timeout(
        WAIT,
        Command::new(bin())
            .args(args)
            .arg("--state-dir")
            .arg(state)
            .env_remove("PINCER_CONFIG_PATH")
            .env_remove("PINCER_STATE_DIR")
            .env_remove("PINCER_GATEWAY_TOKEN")
            .stdin(Stdio::null())
            .output(),
    )
    .await
    .expect("cli timed out")
    .expect("cli runs")
}

/// A running gateway process.
pub struct Daemon {
    pub child: Child,
    pub state: PathBuf,
    pub addr: String,
    pub token: String,
    pub stdout_lines: Vec<String>,
    stderr: Option<tokio::task::JoinHandle<String>>,
}

impl Daemon {
    /// Start `pincer gateway run --port 0` on `state` (the config, if any, is
    /// `<state>/pincer.json`) and wait for the "listening on" line.
    pub async fn start(state: &Path) -> Daemon {
        Self::start_with(state, &[]).await
    }

    /// Like [`Daemon::start`] with extra args.
    pub async fn start_with(state: &Path, extra: &[&str]) -> Daemon {
        Self::spawn(state, &[&["--port", "0"], extra].concat()).await
    }

    /// Start `pincer gateway run` on `state` with exactly `args` (no `--port 0`: the config's
    /// port is used).
    pub async fn spawn(state: &Path, args: &[&str]) -> Daemon {
        let mut child = Command::new(bin())
            .args(["gateway", "run", "--state-dir"])
            .arg(state)
            .args(args)
            .env_remove("PINCER_CONFIG_PATH")
            .env_remove("PINCER_STATE_DIR")
            .env_remove("PINCER_GATEWAY_TOKEN")
            .env("PINCER_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn pincer");
        let stderr = child.stderr.take().unwrap();
        let stderr = tokio::spawn(async move {
            let mut s = String::new();
            let mut lines = BufReader::new(stderr).lines();
            while let Ok(Some(l)) = lines.next_line().await {
                s.push_str(&l);
                s.push('\n');
            }
            s
        });
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut seen = Vec::new();
        let addr = tokio::time::timeout(WAIT, async {
            while let Some(l) = lines.next_line().await.expect("read stdout") {
                seen.push(l.clone());
                if let Some(rest) = l.strip_prefix("listening on ws://") {
                    return rest.split_whitespace().next().unwrap().to_string();
                }
            }
            panic!("gateway exited before listening; stdout: {seen:?}");
        })
        .await
        .expect("gateway did not start in time");
        // Keep draining stdout so the process never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        let token = std::fs::read_to_string(state.join("gateway.token")).unwrap_or_default().trim().to_string();
        Daemon { child, state: state.to_path_buf(), addr, token, stdout_lines: seen, stderr: Some(stderr) }
    }

    /// WebSocket URL.
    pub fn ws_url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }

    /// HTTP base URL.
    pub fn http_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Connect and authenticate with full operator scopes.
    pub async fn client(&self) -> Ws {
        Ws::connect_auth(&self.ws_url(), &self.token, &["operator.read", "operator.write", "operator.admin"]).await
    }

    /// Send a signal (`TERM`, `KILL`, `HUP`, `USR1`, `USR2`) to the process.
    pub fn signal(&self, sig: &str) {
        let pid = self.child.id().expect("running") as libc::pid_t;
        let signo = match sig {
            "TERM" => libc::SIGTERM,
            "KILL" => libc::SIGKILL,
            "HUP" => libc::SIGHUP,
            "USR1" => libc::SIGUSR1,
            "USR2" => libc::SIGUSR2,
            "INT" => libc::SIGINT,
            other => panic!("unknown signal {other}"),
        };
        // SAFETY: kill(2) with a pid we spawned and still own; no memory is touched.
        let rc = unsafe { libc::kill(pid, signo) };
        assert_eq!(rc, 0, "kill -{sig} {pid} failed");
    }

    /// SIGKILL and reap.
    pub async fn kill9(mut self) {
        self.signal("KILL");
        let _ = self.child.wait().await;
    }

    /// SIGTERM, wait for exit, return (exit code, stderr).
    pub async fn stop(mut self) -> (Option<i32>, String) {
        self.signal("TERM");
        let status = tokio::time::timeout(WAIT, self.child.wait()).await.expect("stop in time").unwrap();
        let err = self.stderr.take().unwrap().await.unwrap_or_default();
        (status.code(), err)
    }
}

/// A raw protocol client.
pub struct Ws {
    ws: tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>,
    next: u64,
    /// Events received while waiting for responses.
    pub events: Vec<Value>,
    last_hello: Option<Value>,
}

impl Ws {
    /// Connect without the handshake (the challenge is the first frame to read).
    pub async fn connect_raw(url: &str) -> Ws {
        let (ws, _) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(url))
            .await
            .expect("connect in time")
            .expect("connect");
        Ws { ws, next: 1, events: Vec::new(), last_hello: None }
    }

    /// Connect and perform `connect` with a token and scopes; panics unless hello-ok.
    pub async fn connect_auth(url: &str, token: &str, scopes: &[&str]) -> Ws {
        let mut ws = Self::connect_raw(url).await;
        let challenge = ws.recv().await.expect("challenge");
        assert_eq!(challenge["event"], "connect.challenge", "{challenge}");
        let res = ws.request("connect", connect_params(token, scopes)).await;
        assert_eq!(res["ok"], true, "connect failed: {res}");
        assert_eq!(res["payload"]["type"], "hello-ok");
        ws.last_hello = Some(res["payload"].clone());
        ws
    }

    /// Next frame as JSON (None on close).
    pub async fn recv(&mut self) -> Option<Value> {
        loop {
            let msg = tokio::time::timeout(WAIT, self.ws.next()).await.expect("frame in time")?;
            match msg {
                Ok(Message::Text(t)) => return Some(serde_json::from_str(&t).expect("JSON frame")),
                Ok(Message::Close(_)) | Err(_) => return None,
                Ok(_) => continue,
            }
        }
    }

    /// Next close frame's code, skipping other frames.
    pub async fn close_code(&mut self) -> Option<u16> {
        loop {
            let msg = tokio::time::timeout(WAIT, self.ws.next()).await.expect("frame in time")?;
            match msg {
                Ok(Message::Close(f)) => return f.map(|f| f.code.into()),
                Ok(_) => continue,
                Err(_) => return None,
            }
        }
    }

    /// Send a raw text frame.
    pub async fn send_text(&mut self, s: &str) {
        self.ws.send(Message::Text(s.to_string().into())).await.expect("send");
    }

    /// Send a request and return its first `res` frame; events are kept in `self.events`.
    pub async fn request(&mut self, method: &str, params: Value) -> Value {
        let id = format!("t{}", self.next);
        self.next += 1;
        self.send_text(&json!({"type": "req", "id": id, "method": method, "params": params}).to_string()).await;
        self.response(&id).await
    }

    /// Wait for the next `res` with this id.
    pub async fn response(&mut self, id: &str) -> Value {
        loop {
            let f = self.recv().await.unwrap_or_else(|| panic!("closed while waiting for {id}"));
            if f["type"] == "res" && f["id"] == id {
                return f;
            }
            if f["type"] == "event" {
                self.events.push(f);
            }
        }
    }

    /// Wait for an event matching `pred` (looks at already buffered events first).
    pub async fn event(&mut self, pred: impl Fn(&Value) -> bool) -> Value {
        if let Some(i) = self.events.iter().position(&pred) {
            return self.events.remove(i);
        }
        loop {
            let f = self.recv().await.expect("closed while waiting for an event");
            if f["type"] == "event" && pred(&f) {
                return f;
            }
            if f["type"] == "event" {
                self.events.push(f);
            }
        }
    }
}

impl Ws {
    /// hello-ok payload of the handshake.
    pub fn hello(&self) -> &Value {
        self.last_hello.as_ref().expect("handshake done")
    }
}

/// `connect` params for a token and scopes.
pub fn connect_params(token: &str, scopes: &[&str]) -> Value {
    json!({"minProtocol": 4, "maxProtocol": 4,
           "client": {"id": "pincer-test", "version": "0", "platform": "linux", "mode": "backend"},
           "role": "operator", "scopes": scopes, "auth": {"token": token}})
}

/// Write `<state>/pincer.json`.
pub fn write_config(state: &Path, json: &Value) {
    std::fs::create_dir_all(state).unwrap();
    std::fs::write(state.join("pincer.json"), serde_json::to_string_pretty(json).unwrap()).unwrap();
}
