//! The state-dir lock: contention within a process, across processes, and release on drop.

use pincer_store::{StateLock, StoreError};
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};

/// Env var that turns `child_lock_holder` into a lock-holding child process.
const CHILD_DIR_ENV: &str = "PINCER_STORE_TEST_LOCK_CHILD_DIR";

#[test]
fn second_lock_in_the_same_process_fails_with_a_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    let first = StateLock::acquire(dir.path()).unwrap();
    assert_eq!(first.path(), dir.path().join("pincer.lock"));
    let pid_in_file = std::fs::read_to_string(first.path()).unwrap();
    assert_eq!(pid_in_file.trim(), std::process::id().to_string());

    let err = StateLock::acquire(dir.path()).unwrap_err();
    match &err {
        StoreError::Locked { path, holder_pid } => {
            assert_eq!(path, dir.path());
            assert_eq!(*holder_pid, Some(std::process::id()));
        }
        other => panic!("expected Locked, got {other:?}"),
    }
    assert_eq!(
        err.to_string(),
        format!(
            "another pincer gateway (pid {}) is already running with state dir {}; stop it or use a different --state-dir",
            std::process::id(),
            dir.path().display()
        )
    );
    assert!(!err.is_retryable());

    drop(first);
    let again = StateLock::acquire(dir.path()).unwrap();
    drop(again);
}

#[test]
fn unreadable_pid_still_gives_a_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    let first = StateLock::acquire(dir.path()).unwrap();
    std::fs::write(first.path(), "not a pid").unwrap();
    let err = StateLock::acquire(dir.path()).unwrap_err();
    assert!(matches!(err, StoreError::Locked { holder_pid: None, .. }), "{err:?}");
    assert!(err.to_string().starts_with("another pincer gateway is already running with state dir"), "{err}");
}

#[test]
fn lock_held_by_a_child_process_names_its_pid() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "child_lock_holder", "--nocapture", "--test-threads=1"])
        .env(CHILD_DIR_ENV, dir.path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let child_pid = child.id();

    // Wait (by reading the pipe, not sleeping) until the child reports it holds the lock.
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut ready = false;
    for line in lines.by_ref() {
        if line.unwrap().ends_with("PINCER-LOCK-HELD") {
            ready = true;
            break;
        }
    }
    assert!(ready, "child exited without taking the lock");

    let err = StateLock::acquire(dir.path()).unwrap_err();
    match err {
        StoreError::Locked { holder_pid, .. } => assert_eq!(holder_pid, Some(child_pid)),
        other => panic!("expected Locked, got {other:?}"),
    }

    // Tell the child to exit by closing its stdin; the OS releases its lock.
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(b"bye\n").unwrap();
    drop(stdin);
    let status = child.wait().unwrap();
    assert!(status.success(), "child failed: {status}");
    StateLock::acquire(dir.path()).expect("lock is free once the child has exited");
}

/// Not a test on its own: when run by `lock_held_by_a_child_process_names_its_pid` with the
/// env var set, it takes the lock, says so, and holds it until stdin closes. Otherwise a no-op.
#[test]
fn child_lock_holder() {
    let Some(dir) = std::env::var_os(CHILD_DIR_ENV) else {
        return;
    };
    // Safety net only (not synchronisation): never outlive a parent that forgot us.
    std::thread::spawn(|| {
        std::thread::sleep(std::time::Duration::from_secs(60));
        std::process::exit(3);
    });
    let _lock = StateLock::acquire(std::path::Path::new(&dir)).unwrap();
    // Write to the stdout handle directly: `println!` may be captured by the test harness.
    let mut out = std::io::stdout();
    writeln!(out, "PINCER-LOCK-HELD").unwrap();
    out.flush().unwrap();
    let mut sink = String::new();
    while std::io::stdin().read_line(&mut sink).unwrap_or(0) > 0 {}
}
