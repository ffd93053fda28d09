//! The state-dir lock: contention within a process and release on drop. Contention across
//! processes is tested with the real binary (`crates/pincer/tests/gateway.rs`).

use pincer_store::{StateLock, StoreError};

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
