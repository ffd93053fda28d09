//! `pincer doctor`: check the config, the state dir, the lock, the port and the store, and
//! print a fix for every problem found. Exit code 0 when everything is fine, 1 otherwise.

use crate::{config_file, paths};
use anyhow::Result;
use std::path::Path;

struct Report {
    problems: usize,
}

impl Report {
    fn ok(&self, what: &str, detail: impl std::fmt::Display) {
        println!("[ok]   {what}: {detail}");
    }
    fn warn(&self, what: &str, detail: impl std::fmt::Display) {
        println!("[warn] {what}: {detail}");
    }
    fn fail(&mut self, what: &str, detail: impl std::fmt::Display, fix: &str) {
        self.problems += 1;
        println!("[FAIL] {what}: {detail}\n       fix: {fix}");
    }
}

/// Run the checks.
pub async fn run(state: &Path, config_path: &Path) -> Result<u8> {
    let mut r = Report { problems: 0 };
    let mut port = pincer_core::config::DEFAULT_PORT;
    match config_file::load(config_path) {
        Ok(l) => {
            port = l.config.gateway.port;
            match &l.path {
                Some(p) => r.ok("config", format!("{} is valid", p.display())),
                None => r.ok("config", format!("no file at {}; embedded defaults", config_path.display())),
            }
            for w in &l.warnings {
                r.warn("config", w);
            }
        }
        Err(e) => r.fail(
            "config",
            e.to_string().trim_end(),
            "fix each listed key (see `pincer config schema`), then `pincer config validate`",
        ),
    }
    if state.exists() {
        let probe = state.join(".doctor-probe");
        match std::fs::write(&probe, b"ok") {
            Ok(()) => {
                let _ = std::fs::remove_file(&probe);
                r.ok("state dir", format!("{} is writable", state.display()));
            }
            Err(e) => r.fail(
                "state dir",
                format!("{} is not writable: {e}", state.display()),
                "fix its owner/permissions (chmod 700) or use --state-dir",
            ),
        }
    } else {
        r.warn("state dir", format!("{} does not exist yet; `pincer gateway run` creates it", state.display()));
    }
    let mut running = false;
    if state.exists() {
        match pincer_store::StateLock::acquire(state) {
            Ok(lock) => {
                drop(lock);
                r.ok("lock", "no gateway holds the state dir");
            }
            Err(e @ pincer_store::StoreError::Locked { .. }) => {
                running = true;
                r.ok("lock", format!("held by a running gateway ({e})"));
            }
            Err(e) => r.fail("lock", e, "check the state dir's permissions"),
        }
    }
    if running {
        let addr = std::fs::read_to_string(paths::address_file(state)).unwrap_or_default();
        r.ok("port", format!("the running gateway listens on {}", addr.trim()));
    } else {
        match std::net::TcpListener::bind(("127.0.0.1", port)) {
            Ok(_) => r.ok("port", format!("127.0.0.1:{port} is free")),
            Err(e) => r.fail(
                "port",
                format!("127.0.0.1:{port} is not available: {e}"),
                "stop the program using it, or set gateway.port / --port",
            ),
        }
    }
    let db = state.join("pincer.db");
    if db.exists() {
        match pincer_store::Store::open(&db) {
            Ok(s) => match s.outbox_counts() {
                Ok(c) => {
                    r.ok(
                        "store",
                        format!("{} opens; outbox {}", db.display(), serde_json::to_string(&c).unwrap_or_default()),
                    );
                    if c.failed > 0 || c.unknown > 0 {
                        r.warn(
                            "deliveries",
                            format!(
                                "{} failed, {} unknown: see `pincer deliveries list --status failed`",
                                c.failed, c.unknown
                            ),
                        );
                    }
                }
                Err(e) => r.fail("store", e, "move the file aside and restart (a fresh store is created)"),
            },
            Err(e) => r.fail(
                "store",
                e,
                "move the damaged file aside (mv pincer.db pincer.db.bad) and restart; a fresh store is created",
            ),
        }
    } else {
        r.warn("store", format!("{} does not exist yet; created at first start", db.display()));
    }
    if r.problems == 0 {
        println!("doctor: everything looks fine");
        Ok(0)
    } else {
        println!("doctor: {} problem(s) found", r.problems);
        Ok(1)
    }
}
