//! Compatibility with OpenClaw's own reference client, `@openclaw/gateway-client` (npm, pinned in
//! `tests/compat/openclaw-client`): handshake, health, status, `chat.send` with streamed events,
//! the `unknown method` error, the two-stage `agent` response, and the client's own reconnect
//! after an in-process restart (SIGUSR1) with every advertised method still callable
//! (DESIGN.md bug 4).

mod common;
use common::*;
use std::path::PathBuf;
use std::process::Stdio;

fn compat_dir() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/compat/openclaw-client"))
}

/// Install the pinned client if `scripts/test` has not already (idempotent `npm ci`).
async fn ensure_client_installed() {
    let dir = compat_dir();
    if dir.join("node_modules/@openclaw/gateway-client/package.json").exists() {
        return;
    }
    let out = tokio::process::Command::new("npm")
        .args(["ci", "--no-audit", "--no-fund"])
        .current_dir(&dir)
        .output()
        .await
        .expect("npm is needed for this test (scripts/test installs Node.js and the client)");
    assert!(out.status.success(), "npm ci failed: {}", String::from_utf8_lossy(&out.stderr));
}

#[tokio::test]
async fn the_reference_client_works_including_reconnect_after_restart() {
    ensure_client_installed().await;
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(dir.path()).await;
    let pid = d.child.id().unwrap().to_string();
    let url = format!("ws://{}", d.addr);
    let out = tokio::time::timeout(
        std::time::Duration::from_secs(120),
        tokio::process::Command::new("node")
            .arg("probe.mjs")
            .args([&url, &d.token, &pid])
            .current_dir(compat_dir())
            .stdin(Stdio::null())
            .output(),
    )
    .await
    .expect("the probe finishes")
    .expect("node runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains(r#""check":"all","ok":true"#),
        "reference client checks failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (code, _) = d.stop().await;
    assert_eq!(code, Some(0));
}
