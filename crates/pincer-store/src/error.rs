//! The one error type of the store boundary, [`StoreError`]. Callers branch on variants and on
//! [`StoreError::is_retryable`], never on message text.

use crate::inbound::Outcome;
use crate::outbox::OutboxStatus;
use std::path::PathBuf;

/// Everything that can go wrong in `pincer-store`.
///
/// Messages name the file or state dir involved and say what is wrong, so they can be shown to
/// an operator as they are.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A filesystem operation on the state dir or a file in it failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or directory involved.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },

    /// SQLite could not open or configure the database file (permissions, missing directory,
    /// a directory in place of the file, ...).
    #[error("cannot open database {}: {source}", path.display())]
    Open {
        /// The database file.
        path: PathBuf,
        /// The SQLite error.
        source: rusqlite::Error,
    },

    /// The file exists but is not a usable pincer database: not SQLite at all, damaged, or
    /// another application's SQLite database.
    #[error("{} is not a valid pincer database: {detail}", path.display())]
    Corrupt {
        /// The database file.
        path: PathBuf,
        /// What is wrong, e.g. `file is not a database`.
        detail: String,
    },

    /// SQLite refused to switch the database to WAL journal mode (typically a network or
    /// otherwise unusual filesystem). pincer's durability reasoning relies on WAL.
    #[error(
        "{}: cannot enable WAL journal mode (SQLite kept {mode:?}); put the state dir on a local filesystem",
        path.display()
    )]
    NoWal {
        /// The database file.
        path: PathBuf,
        /// The journal mode SQLite reported instead of `wal`.
        mode: String,
    },

    /// The database was written by a newer pincer whose schema this binary does not know.
    #[error(
        "{} has schema version {found}, but this pincer supports at most {supported}; upgrade pincer or use a different --state-dir",
        path.display()
    )]
    SchemaTooNew {
        /// The database file.
        path: PathBuf,
        /// `user_version` found in the file.
        found: i64,
        /// Newest migration this binary knows.
        supported: i64,
    },

    /// Applying a numbered migration failed; the migration's transaction was rolled back, so
    /// the schema is still at `version - 1`.
    #[error("{}: migration {version} ({name}) failed: {source}", path.display())]
    Migration {
        /// The database file.
        path: PathBuf,
        /// Number of the failed migration.
        version: i64,
        /// Its name (file stem).
        name: &'static str,
        /// The SQLite error.
        source: rusqlite::Error,
    },

    /// Another process (or another [`StateLock`](crate::StateLock) in this one) holds the
    /// state-dir lock.
    #[error(
        "another pincer gateway{} is already running with state dir {}; stop it or use a different --state-dir",
        holder_pid.map(|p| format!(" (pid {p})")).unwrap_or_default(),
        path.display()
    )]
    Locked {
        /// The state dir.
        path: PathBuf,
        /// The pid the holder wrote into `pincer.lock`, when readable.
        holder_pid: Option<u32>,
    },

    /// The session key has no row; upsert the session first.
    #[error("no session with key {key:?}")]
    NoSuchSession {
        /// The session key as given.
        key: String,
    },

    /// A row addressed by id does not exist.
    #[error("no {what} with id {id}")]
    NotFound {
        /// What was looked up (`inbound message`, `outbox row`).
        what: &'static str,
        /// The id.
        id: i64,
    },

    /// A commit tried to give an inbound message a second terminal outcome. Nothing of that
    /// commit was written.
    #[error("inbound message {inbound_id} already finished as {outcome}")]
    AlreadyFinished {
        /// The inbound ledger id.
        inbound_id: i64,
        /// The outcome it already has.
        outcome: Outcome,
    },

    /// An outbox status change that the state machine does not allow (e.g. `sent` → `pending`).
    #[error("outbox row {id} is {from}, it cannot become {to}")]
    InvalidTransition {
        /// The outbox row id.
        id: i64,
        /// Its current status.
        from: OutboxStatus,
        /// The status that was asked for.
        to: OutboxStatus,
    },

    /// The caller passed a value the store refuses to persist (e.g. an outbox row with an
    /// empty destination).
    #[error("invalid input: {detail}")]
    InvalidInput {
        /// What is wrong.
        detail: String,
    },

    /// A row holds a value this binary cannot decode (unknown status string, malformed JSON
    /// meta, an id that is not normalised). Reported instead of panicking.
    #[error("bad data in the database: {detail}")]
    BadData {
        /// What could not be decoded, and where.
        detail: String,
    },

    /// A write inside [`Store::transaction`](crate::Store::transaction) failed half-way and
    /// the closure carried on; the whole transaction was rolled back, nothing was committed.
    #[error("transaction rolled back: an operation failed after it had started writing: {detail}")]
    Aborted {
        /// The first such failure.
        detail: String,
    },

    /// Any other SQLite error.
    #[error("sqlite: {0}")]
    Sqlite(#[source] rusqlite::Error),
}

impl StoreError {
    /// True for transient contention (`SQLITE_BUSY`, `SQLITE_LOCKED`): the same call may
    /// succeed if repeated later. Everything else is permanent for the given input.
    pub fn is_retryable(&self) -> bool {
        let e = match self {
            StoreError::Sqlite(e) => e,
            StoreError::Open { source, .. } | StoreError::Migration { source, .. } => source,
            _ => return false,
        };
        matches!(e.sqlite_error_code(), Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked))
    }
}

/// Errors from row decoding become [`StoreError::BadData`]; everything else stays
/// [`StoreError::Sqlite`].
impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        match e {
            rusqlite::Error::FromSqlConversionFailure(col, _, source) => {
                StoreError::BadData { detail: format!("column {col}: {source}") }
            }
            rusqlite::Error::IntegralValueOutOfRange(col, v) => {
                StoreError::BadData { detail: format!("column {col}: integer {v} out of range") }
            }
            rusqlite::Error::InvalidColumnType(col, name, ty) => {
                StoreError::BadData { detail: format!("column {col} ({name}) has unexpected type {ty}") }
            }
            other => StoreError::Sqlite(other),
        }
    }
}

/// Result alias used throughout the crate.
pub(crate) type Result<T, E = StoreError> = std::result::Result<T, E>;
