//! The web chat page (`GET /`, `assets/webchat.html`) in a real headless Chromium (Debian's
//! `/usr/bin/chromium`, driven by `playwright-core` pinned in `tests/compat/webchat-browser`):
//! the token prompt (a wrong token is refused, the right one connects), a message and its
//! streamed reply, an in-process restart (SIGUSR1) after which the page reconnects by itself and
//! reloads the history, and a second message. The screenshot it saves,
//! `target/webchat/webchat.png`, is kept as a CI artifact.
//!
//! Chromium is required, not optional: `scripts/test` installs it, and without it this test fails.

mod common;
use common::*;
use std::path::{Path, PathBuf};
use std::process::Stdio;

const CHROMIUM: &str = "/usr/bin/chromium";

fn compat_dir() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/compat/webchat-browser"))
}

/// `<target>/webchat/webchat.png` (the target dir is the parent of Cargo's test tmpdir, so
/// `CARGO_TARGET_DIR` is honoured).
fn screenshot_path() -> PathBuf {
    let tmp = Path::new(env!("CARGO_TARGET_TMPDIR"));
    tmp.parent().unwrap_or(tmp).join("webchat").join("webchat.png")
}

/// Install the pinned playwright-core if `scripts/test` has not already (idempotent `npm ci`;
/// it never downloads a browser).
async fn ensure_driver_installed() {
    let dir = compat_dir();
    if dir.join("node_modules/playwright-core/package.json").exists() {
        return;
    }
    let out = tokio::process::Command::new("npm")
        .args(["ci", "--no-audit", "--no-fund"])
        .env("PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD", "1")
        .current_dir(&dir)
        .output()
        .await
        .expect("npm is needed for this test (scripts/test installs Node.js and playwright-core)");
    assert!(out.status.success(), "npm ci failed: {}", String::from_utf8_lossy(&out.stderr));
}

#[tokio::test]
async fn the_web_chat_page_chats_streams_and_reconnects_after_restart_in_chromium() {
    assert!(
        Path::new(CHROMIUM).exists(),
        "{CHROMIUM} is missing: this test needs Debian's chromium (scripts/test installs it: apt-get install chromium)"
    );
    ensure_driver_installed().await;
    let shot = screenshot_path();
    let _ = std::fs::remove_file(&shot);

    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(dir.path()).await;
    assert!(!d.token.is_empty(), "the gateway wrote no token");
    let pid = d.child.id().unwrap().to_string();
    let url = format!("{}/", d.http_url());
    let out = tokio::time::timeout(
        std::time::Duration::from_secs(180),
        tokio::process::Command::new("node")
            .arg("drive.mjs")
            .args([url.as_str(), d.token.as_str(), pid.as_str()])
            .arg(&shot)
            .env("PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD", "1")
            .current_dir(compat_dir())
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("the browser script finishes")
    .expect("node runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains(r#""check":"all","ok":true"#),
        "web chat checks failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for check in ["token prompt", "wrong token refused", "connected", "reconnected after SIGUSR1", "history reloaded"] {
        assert!(stdout.contains(&format!(r#""check":"{check}","ok":true"#)), "no passing {check:?} check:\n{stdout}");
    }
    assert_eq!(stdout.matches(r#""check":"streamed reply","ok":true"#).count(), 2, "{stdout}");
    let png = std::fs::read(&shot).unwrap_or_else(|e| panic!("screenshot {}: {e}", shot.display()));
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "{} is not a PNG", shot.display());

    let (code, _) = d.stop().await;
    assert_eq!(code, Some(0));
}
