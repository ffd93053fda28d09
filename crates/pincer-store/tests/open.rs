//! Opening the database: migrations, reopen, corrupt and foreign files, newer schemas.

mod common;

use pincer_store::{Durability, Store, StoreError, StoreOptions};
use std::fs;

#[test]
fn creates_state_dir_and_db_in_wal_mode() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("nested").join("state");
    let store = Store::open(&state).unwrap();
    assert_eq!(store.path(), state.join("pincer.db"));
    assert!(state.join("pincer.db").is_file());
    let version = store.schema_version().unwrap();
    assert!(version >= 1);
    drop(store);
    let conn = rusqlite::Connection::open(state.join("pincer.db")).unwrap();
    let mode: String = conn.pragma_query_value(None, "journal_mode", |r| r.get(0)).unwrap();
    assert_eq!(mode, "wal");
}

#[test]
fn migrations_are_idempotent_on_reopen_and_data_survives() {
    let (dir, store) = common::store();
    let version = store.schema_version().unwrap();
    common::session(&store, "agent:main:main", "!room:example.org", 1);
    store.kv_set("fact", "42", 1).unwrap();
    drop(store);
    for _ in 0..3 {
        let store = common::reopen(dir.path());
        assert_eq!(store.schema_version().unwrap(), version);
        assert!(store.get_session("agent:main:main").unwrap().is_some());
        assert_eq!(store.kv_get("fact").unwrap().as_deref(), Some("42"));
    }
}

#[test]
fn garbage_file_is_a_clear_error_naming_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("pincer.db");
    let garbage: Vec<u8> = (0..8192u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    fs::write(&db, garbage).unwrap();
    let err = Store::open(dir.path()).unwrap_err();
    assert!(matches!(err, StoreError::Corrupt { .. }), "{err:?}");
    let msg = err.to_string();
    assert_eq!(msg, format!("{} is not a valid pincer database: file is not a database", db.display()));
    assert!(!err.is_retryable());
}

#[test]
fn short_text_file_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("pincer.db");
    fs::write(&db, "this is not sqlite\n").unwrap();
    let err = Store::open(dir.path()).unwrap_err();
    assert!(matches!(err, StoreError::Corrupt { .. }), "{err:?}");
    assert!(err.to_string().starts_with(&db.display().to_string()), "{err}");
}

#[test]
fn damaged_sqlite_file_is_corrupt_not_a_panic() {
    let (dir, store) = common::store();
    for i in 0..200 {
        common::session(&store, &format!("agent:main:s{i}"), "!r:x", i);
    }
    drop(store);
    let db = dir.path().join("pincer.db");
    // Fold the WAL into the main file, then smash every page after the header page.
    {
        let conn = rusqlite::Connection::open(&db).unwrap();
        conn.pragma_update(None, "journal_mode", "DELETE").unwrap();
    }
    let mut bytes = fs::read(&db).unwrap();
    assert!(bytes.len() > 8192);
    for b in &mut bytes[4096..] {
        *b = 0xA5;
    }
    fs::write(&db, bytes).unwrap();
    // Opening reads only the header and schema page, so it may still succeed; the damage is
    // then reported by quick_check and by every query that touches it, as errors.
    let err = match Store::open(dir.path()) {
        Err(err) => err,
        Ok(store) => {
            assert!(store.get_session("agent:main:s100").is_err());
            assert!(store.list_sessions(1000).is_err());
            store.quick_check().unwrap_err()
        }
    };
    assert!(matches!(err, StoreError::Corrupt { .. }), "{err:?}");
    assert!(err.to_string().contains(&db.display().to_string()), "{err}");
}

#[test]
fn quick_check_passes_on_a_healthy_database() {
    let (_dir, store) = common::store();
    common::session(&store, "agent:main:main", "!r:x", 1);
    store.quick_check().unwrap();
}

#[test]
fn another_applications_sqlite_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("pincer.db");
    {
        let conn = rusqlite::Connection::open(&db).unwrap();
        conn.execute_batch("CREATE TABLE photos (id INTEGER PRIMARY KEY, name TEXT);").unwrap();
    }
    let err = Store::open(dir.path()).unwrap_err();
    assert!(matches!(err, StoreError::Corrupt { .. }), "{err:?}");
    assert!(err.to_string().contains("not a valid pincer database"), "{err}");

    {
        let conn = rusqlite::Connection::open(&db).unwrap();
        conn.pragma_update(None, "application_id", 1234).unwrap();
    }
    let err = Store::open(dir.path()).unwrap_err();
    assert!(err.to_string().contains("another application"), "{err}");

    // Refused before anything was written: the foreign file is not even switched to WAL.
    let conn = rusqlite::Connection::open(&db).unwrap();
    let mode: String = conn.pragma_query_value(None, "journal_mode", |r| r.get(0)).unwrap();
    assert_eq!(mode, "delete");
}

#[test]
fn newer_schema_is_refused_with_versions_in_the_message() {
    let (dir, store) = common::store();
    let supported = store.schema_version().unwrap();
    drop(store);
    let db = dir.path().join("pincer.db");
    {
        let conn = rusqlite::Connection::open(&db).unwrap();
        conn.pragma_update(None, "user_version", supported + 7).unwrap();
    }
    let err = Store::open(dir.path()).unwrap_err();
    match &err {
        StoreError::SchemaTooNew { found, supported: s, path } => {
            assert_eq!(*found, supported + 7);
            assert_eq!(*s, supported);
            assert_eq!(path, &db);
        }
        other => panic!("expected SchemaTooNew, got {other:?}"),
    }
    assert!(err.to_string().contains("upgrade pincer"), "{err}");
}

#[test]
fn directory_in_place_of_the_file_is_an_open_error() {
    let dir = tempfile::tempdir().unwrap();
    fs::create_dir(dir.path().join("pincer.db")).unwrap();
    let err = Store::open(dir.path()).unwrap_err();
    assert!(matches!(err, StoreError::Open { .. }), "{err:?}");
    assert!(err.to_string().contains("pincer.db"), "{err}");
}

#[test]
fn full_durability_opens_and_works() {
    let dir = tempfile::tempdir().unwrap();
    let options = StoreOptions { durability: Durability::Full, ..StoreOptions::default() };
    let store = Store::open_with(dir.path(), &options).unwrap();
    store.kv_set("k", "v", 1).unwrap();
    assert_eq!(store.kv_get("k").unwrap().as_deref(), Some("v"));
}

#[test]
fn kv_get_or_insert_keeps_the_first_value() {
    let (_dir, store) = common::store();
    assert_eq!(store.kv_get("token").unwrap(), None);
    assert_eq!(store.kv_get_or_insert("token", "first", 1).unwrap(), "first");
    assert_eq!(store.kv_get_or_insert("token", "second", 2).unwrap(), "first");
    store.kv_set("token", "third", 3).unwrap();
    assert_eq!(store.kv_get("token").unwrap().as_deref(), Some("third"));
}

#[test]
fn contention_from_another_connection_is_retryable() {
    let dir = tempfile::tempdir().unwrap();
    let options = StoreOptions { busy_timeout: std::time::Duration::from_millis(20), ..StoreOptions::default() };
    let store = Store::open_with(dir.path(), &options).unwrap();
    // Someone else (say a stray sqlite3 shell) holds the write lock.
    let other = rusqlite::Connection::open(dir.path().join("pincer.db")).unwrap();
    other.execute_batch("BEGIN IMMEDIATE").unwrap();
    let err = store.kv_set("k", "v", 1).unwrap_err();
    assert!(err.is_retryable(), "{err:?}");
    other.execute_batch("ROLLBACK").unwrap();
    store.kv_set("k", "v", 1).unwrap();
    // Reads are never blocked by a writer in WAL mode.
    other.execute_batch("BEGIN IMMEDIATE").unwrap();
    assert_eq!(store.kv_get("k").unwrap().as_deref(), Some("v"));
    other.execute_batch("ROLLBACK").unwrap();
}
