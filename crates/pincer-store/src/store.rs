//! Opening the database ([`Store`], [`StoreOptions`], [`Durability`]) and the write
//! transaction handle [`Tx`] that every write goes through.
//!
//! Concurrency model: one write connection behind a `Mutex` (SQLite has one writer at a time
//! anyway), plus, for file databases, one read connection behind its own `Mutex`. In WAL mode
//! readers never block the writer and see every transaction committed before their statement
//! started, so a read issued after a write call returned observes that write.

use crate::error::{Result, StoreError};
use crate::migrate;
use rusqlite::{Connection, ErrorCode, OpenFlags, TransactionBehavior};
use std::cell::Cell;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

/// How hard a commit tries to reach the disk.
///
/// Both levels run SQLite in WAL mode, where the database file itself can never be corrupted
/// by a crash; they differ only in which crashes can take back the *latest* commits.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Durability {
    /// `synchronous=NORMAL` (the default). A commit has been written to the WAL (the OS page
    /// cache) when the call returns, so it survives the *process* dying at any point
    /// (`kill -9`, panic, OOM kill). An OS crash or power loss may roll back the last
    /// transactions since the most recent checkpoint. For the outbox that means a row marked
    /// `sending`/`sent` just before a power cut can come back as `pending` and be sent again.
    /// Cheap: no `fsync` per commit.
    #[default]
    Normal,
    /// `synchronous=FULL`: the WAL is `fsync`ed on every commit, so a returned commit also
    /// survives OS crashes and power loss. Costs one `fsync` per transaction; use group commit
    /// ([`Store::transaction`], [`Store::commit_batch`]) to amortise it.
    Full,
}

/// Options for [`Store::open_with`] and [`Store::open_file`].
#[derive(Clone, Debug)]
pub struct StoreOptions {
    /// Commit durability; see [`Durability`].
    pub durability: Durability,
    /// How long a statement waits for a lock held by another connection before failing with
    /// a retryable `SQLITE_BUSY` ([`StoreError::is_retryable`]). Default 5 s.
    pub busy_timeout: Duration,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions { durability: Durability::Normal, busy_timeout: Duration::from_secs(5) }
    }
}

/// The gateway's durable state: one SQLite database (`<state>/pincer.db`).
///
/// `Store` is `Send + Sync`; share it as `Arc<Store>`. Every method is synchronous and may
/// block on disk I/O or on another thread's write, so async callers run it on
/// `spawn_blocking` or a dedicated thread. Each write method is one transaction; use
/// [`Store::transaction`] to group several writes into one commit.
///
/// Methods that take `now_ms` use it as the current time (ms since the Unix epoch); the store
/// never reads the clock itself.
#[derive(Debug)]
pub struct Store {
    path: PathBuf,
    writer: Mutex<Connection>,
    /// Separate read connection for file databases; `None` for in-memory ones (reads then use
    /// the writer).
    reader: Option<Mutex<Connection>>,
}

/// Number of prepared statements each connection keeps cached.
const STATEMENT_CACHE: usize = 64;

impl Store {
    /// File name of the database inside the state dir.
    pub const DB_FILE_NAME: &'static str = "pincer.db";

    /// Open (creating if needed) `<state_dir>/pincer.db` with default [`StoreOptions`]. Creates
    /// `state_dir` if it does not exist and migrates the schema to the newest version.
    ///
    /// Errors: [`StoreError::Io`] if the dir cannot be created, [`StoreError::Open`],
    /// [`StoreError::Corrupt`] for a file that is not a pincer database (the message names the
    /// path), [`StoreError::SchemaTooNew`], [`StoreError::Migration`], [`StoreError::NoWal`].
    pub fn open(state_dir: &Path) -> Result<Store> {
        Self::open_with(state_dir, &StoreOptions::default())
    }

    /// [`Store::open`] with explicit options.
    pub fn open_with(state_dir: &Path, options: &StoreOptions) -> Result<Store> {
        std::fs::create_dir_all(state_dir)
            .map_err(|source| StoreError::Io { path: state_dir.to_path_buf(), source })?;
        Self::open_file(&state_dir.join(Self::DB_FILE_NAME), options)
    }

    /// Open (creating if needed) the database at exactly `db_path`. The parent directory must
    /// exist. Errors as for [`Store::open`].
    pub fn open_file(db_path: &Path, options: &StoreOptions) -> Result<Store> {
        let path = db_path.to_path_buf();
        let classify = |e: rusqlite::Error| classify_open_error(&path, e);
        let mut writer = Connection::open(&path).map_err(classify)?;
        configure(&writer, options, false).map_err(classify)?;
        // Identity first (this is also the first read of the file, where "not a database"
        // shows up): a file that is not ours is refused before anything is written to it.
        migrate::check_identity(&writer, &path).map_err(|e| reclassify(&path, e))?;
        let mode: String =
            writer.pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0)).map_err(classify)?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(StoreError::NoWal { path, mode });
        }
        migrate::migrate(&mut writer, &path).map_err(|e| reclassify(&path, e))?;

        let reader =
            Connection::open_with_flags(&path, OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX)
                .map_err(classify)?;
        configure(&reader, options, true).map_err(classify)?;
        Ok(Store { path, writer: Mutex::new(writer), reader: Some(Mutex::new(reader)) })
    }

    /// A private in-memory database with the full schema, for unit tests. Nothing survives
    /// the `Store` being dropped.
    pub fn open_in_memory() -> Result<Store> {
        let path = PathBuf::from(":memory:");
        let mut conn =
            Connection::open_in_memory().map_err(|source| StoreError::Open { path: path.clone(), source })?;
        configure(&conn, &StoreOptions::default(), false)
            .map_err(|source| StoreError::Open { path: path.clone(), source })?;
        migrate::check_identity(&conn, &path)?;
        migrate::migrate(&mut conn, &path)?;
        Ok(Store { path, writer: Mutex::new(conn), reader: None })
    }

    /// The database file (`:memory:` for [`Store::open_in_memory`]).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Run SQLite's `PRAGMA quick_check` over the whole file: `Ok(())` when it reports no
    /// problem, [`StoreError::Corrupt`] naming the file and the first problems otherwise.
    /// Cost is proportional to the database size, so [`Store::open`] does not do it; call it
    /// from a diagnostics command or at startup when an operator asks for it. (Damage that
    /// opening does not notice surfaces later as a `StoreError::Sqlite` with
    /// `SQLITE_CORRUPT` from the query that hits it, never as a panic.)
    pub fn quick_check(&self) -> Result<()> {
        let problems = self.read(|c| {
            let mut stmt = c.prepare("PRAGMA quick_check(10)")?;
            let rows = stmt.query_map([], |r| r.get::<_, String>(0))?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>())
        });
        let problems = match problems {
            Ok(Ok(lines)) => lines,
            Ok(Err(e)) | Err(StoreError::Sqlite(e)) => return Err(classify_open_error(&self.path, e)),
            Err(e) => return Err(e),
        };
        if problems.len() == 1 && problems[0] == "ok" {
            return Ok(());
        }
        Err(StoreError::Corrupt { path: self.path.clone(), detail: problems.join("; ") })
    }

    /// The schema version (`PRAGMA user_version`) of the open database.
    pub fn schema_version(&self) -> Result<i64> {
        self.read(|c| Ok(c.pragma_query_value(None, "user_version", |r| r.get(0))?))
    }

    /// Run `f` inside one `BEGIN IMMEDIATE` transaction and commit it: group commit. Either
    /// everything `f` wrote is committed, or (when `f` returns `Err`, or the commit fails)
    /// none of it.
    ///
    /// Every [`Tx`] operation is all-or-nothing by itself, so `f` may handle one item's error
    /// and carry on with the others; [`Tx::atomic`] extends that to a caller's own multi-step
    /// item. Do not call `Store` methods from inside `f`: the write connection is locked for
    /// the duration (a write would deadlock, a read would not see `f`'s uncommitted writes).
    ///
    /// If an operation inside `f` failed half-way (see [`Tx`]), the transaction is rolled
    /// back even when `f` ignores that error and returns `Ok`; the result is then
    /// [`StoreError::Aborted`].
    pub fn transaction<T>(&self, f: impl FnOnce(&Tx<'_>) -> Result<T>) -> Result<T> {
        let mut conn = self.lock_writer();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let handle = Tx::new(&tx);
        let result = f(&handle);
        if let Some(detail) = handle.poisoned.take() {
            drop(tx); // rolls back
            return Err(match result {
                Err(e) => e,
                Ok(_) => StoreError::Aborted { detail },
            });
        }
        let value = result?;
        tx.commit()?;
        Ok(value)
    }

    /// Run one write *statement* on the write connection in autocommit mode (SQLite makes a
    /// single statement atomic by itself). Only for operations that write with one statement;
    /// composite ones go through [`Store::transaction`].
    pub(crate) fn write_one<T>(&self, f: impl FnOnce(&Tx<'_>) -> Result<T>) -> Result<T> {
        let conn = self.lock_writer();
        f(&Tx::new(&conn))
    }

    /// Run reads on the read connection (or the writer for in-memory stores).
    pub(crate) fn read<T>(&self, f: impl FnOnce(&Connection) -> Result<T>) -> Result<T> {
        match &self.reader {
            Some(reader) => f(&lock(reader)),
            None => f(&self.lock_writer()),
        }
    }

    fn lock_writer(&self) -> MutexGuard<'_, Connection> {
        lock(&self.writer)
    }
}

/// Lock a connection mutex. A panic while it was held cannot leave a transaction open (the
/// `rusqlite::Transaction` guard rolls back on unwind), so a poisoned lock is safe to reuse.
fn lock(m: &Mutex<Connection>) -> MutexGuard<'_, Connection> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn configure(conn: &Connection, options: &StoreOptions, read_only: bool) -> rusqlite::Result<()> {
    conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
    conn.busy_timeout(options.busy_timeout)?;
    conn.pragma_update(None, "foreign_keys", true)?;
    let sync = match options.durability {
        Durability::Normal => "NORMAL",
        Durability::Full => "FULL",
    };
    conn.pragma_update(None, "synchronous", sync)?;
    conn.pragma_update(None, "temp_store", "MEMORY")?;
    // 16 MiB page cache per connection (negative = KiB).
    conn.pragma_update(None, "cache_size", -16_384)?;
    // Checkpoint every 4000 pages (16 MiB of WAL) instead of SQLite's 1000: hot pages are
    // rewritten many times between checkpoints, so fewer checkpoints copy fewer pages.
    conn.pragma_update(None, "wal_autocheckpoint", 4000)?;
    // Truncate the WAL back to 64 MiB after a checkpoint so a burst does not leave a huge file.
    conn.pragma_update(None, "journal_size_limit", 64 * 1024 * 1024)?;
    if read_only {
        conn.pragma_update(None, "query_only", true)?;
    }
    Ok(())
}

/// "Not a database" and "corrupt" become [`StoreError::Corrupt`] naming the file; anything
/// else while opening is [`StoreError::Open`].
fn classify_open_error(path: &Path, e: rusqlite::Error) -> StoreError {
    match e.sqlite_error_code() {
        Some(ErrorCode::NotADatabase | ErrorCode::DatabaseCorrupt) => {
            StoreError::Corrupt { path: path.to_path_buf(), detail: sqlite_message(&e) }
        }
        _ => StoreError::Open { path: path.to_path_buf(), source: e },
    }
}

/// Apply [`classify_open_error`] to errors that surfaced as [`StoreError::Sqlite`] or
/// [`StoreError::Migration`] while opening.
fn reclassify(path: &Path, e: StoreError) -> StoreError {
    match e {
        StoreError::Sqlite(e) => classify_open_error(path, e),
        StoreError::Migration { ref source, .. }
            if matches!(source.sqlite_error_code(), Some(ErrorCode::NotADatabase | ErrorCode::DatabaseCorrupt)) =>
        {
            StoreError::Corrupt { path: path.to_path_buf(), detail: sqlite_message(source) }
        }
        other => other,
    }
}

/// SQLite's own message (`file is not a database`) without rusqlite's decoration.
fn sqlite_message(e: &rusqlite::Error) -> String {
    match e {
        rusqlite::Error::SqliteFailure(_, Some(msg)) => msg.clone(),
        rusqlite::Error::SqliteFailure(err, None) => err.to_string(),
        other => other.to_string(),
    }
}

/// A write transaction in progress, handed to the closure of [`Store::transaction`]. Its
/// methods mirror the `Store` write methods; their writes commit together when the closure
/// returns `Ok`.
///
/// Every method is all-or-nothing on its own, even inside a larger transaction: the checks
/// that can refuse an operation (unknown session, outcome already recorded, invalid status
/// transition, invalid input) run before its first write, so a refused operation has written
/// nothing and the caller may carry on with the transaction (this is what makes per-item
/// errors in [`Store::commit_batch`] cheap: no savepoint per item). Should a later statement
/// of a multi-statement operation fail anyway (I/O error, disk full), the transaction is
/// marked aborted and [`Store::transaction`] rolls all of it back.
pub struct Tx<'c> {
    pub(crate) conn: &'c Connection,
    /// Set when an operation failed after it had written: the transaction must not commit.
    poisoned: Cell<Option<String>>,
}

impl std::fmt::Debug for Tx<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tx").finish_non_exhaustive()
    }
}

impl<'c> Tx<'c> {
    fn new(conn: &'c Connection) -> Self {
        Tx { conn, poisoned: Cell::new(None) }
    }

    /// True once an operation has failed half-way; the transaction will not commit.
    pub(crate) fn is_aborted(&self) -> bool {
        let poisoned = self.poisoned.take();
        let aborted = poisoned.is_some();
        self.poisoned.set(poisoned);
        aborted
    }

    /// Pass `result` through; if it is an error, mark the transaction aborted. Used for the
    /// statements of an operation that run after its first write.
    pub(crate) fn after_write<T>(&self, result: Result<T>) -> Result<T> {
        if let Err(e) = &result {
            let first = self.poisoned.take();
            self.poisoned.set(Some(first.unwrap_or_else(|| e.to_string())));
        }
        result
    }

    /// Run `f` under a savepoint: if it returns `Err`, everything it wrote is rolled back and
    /// the error returned, while the surrounding transaction stays usable. Nests. The store's
    /// own operations do not need this (see above); it is for a caller's own multi-step item,
    /// e.g. "accept, route and append" for one inbound message inside a batch.
    pub fn atomic<T>(&self, f: impl FnOnce(&Self) -> Result<T>) -> Result<T> {
        self.conn.prepare_cached("SAVEPOINT pincer_atomic")?.execute([])?;
        let poisoned_before = self.poisoned.take();
        let had_poison = poisoned_before.is_some();
        self.poisoned.set(poisoned_before);
        match f(self) {
            Ok(value) => {
                self.after_write(
                    self.conn
                        .prepare_cached("RELEASE pincer_atomic")
                        .and_then(|mut s| s.execute([]))
                        .map_err(StoreError::from),
                )?;
                Ok(value)
            }
            Err(e) => {
                // Undo f's writes. If SQLite already rolled the whole transaction back (I/O
                // error, disk full), this fails and the transaction stays aborted.
                let undo = self
                    .conn
                    .prepare_cached("ROLLBACK TO pincer_atomic")
                    .and_then(|mut s| s.execute([]))
                    .and_then(|_| self.conn.prepare_cached("RELEASE pincer_atomic")?.execute([]));
                match undo {
                    Ok(_) if !had_poison => {
                        // Everything f did is gone, including a half-done operation.
                        self.poisoned.set(None);
                    }
                    Ok(_) => {}
                    Err(undo_err) => {
                        let _ = self.after_write::<()>(Err(undo_err.into()));
                    }
                }
                Err(e)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_is_send_and_sync() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<Store>();
        assert_send_sync::<std::sync::Arc<Store>>();
    }

    #[test]
    fn half_done_operation_aborts_the_whole_transaction() {
        let store = Store::open_in_memory().unwrap();
        let result = store.transaction(|tx| {
            tx.kv_set("a", "1", 1)?;
            // Simulate an operation that failed after its first write, whose error the
            // closure then ignores.
            let _ = tx.after_write::<()>(Err(StoreError::InvalidInput { detail: "boom".into() }));
            Ok(())
        });
        let err = result.unwrap_err();
        assert!(matches!(err, StoreError::Aborted { ref detail } if detail.contains("boom")));
        assert_eq!(store.kv_get("a").unwrap(), None, "nothing was committed");
        // The store is usable afterwards.
        store.kv_set("b", "2", 2).unwrap();
    }

    #[test]
    fn atomic_rolls_back_only_its_own_writes() {
        let store = Store::open_in_memory().unwrap();
        store
            .transaction(|tx| {
                tx.kv_set("kept", "1", 1)?;
                let inner = tx.atomic(|tx| {
                    tx.kv_set("dropped", "2", 1)?;
                    // A half-done operation inside the savepoint is undone with it.
                    let _ = tx.after_write::<()>(Err(StoreError::InvalidInput { detail: "x".into() }));
                    Err::<(), _>(StoreError::InvalidInput { detail: "item failed".into() })
                });
                assert!(inner.is_err());
                tx.atomic(|tx| tx.kv_set("nested-ok", "3", 1))?;
                Ok(())
            })
            .unwrap();
        assert_eq!(store.kv_get("kept").unwrap().as_deref(), Some("1"));
        assert_eq!(store.kv_get("dropped").unwrap(), None);
        assert_eq!(store.kv_get("nested-ok").unwrap().as_deref(), Some("3"));
    }

    #[test]
    fn in_memory_store_has_the_latest_schema() {
        let store = Store::open_in_memory().unwrap();
        assert_eq!(store.schema_version().unwrap(), migrate::latest_version());
    }
}
