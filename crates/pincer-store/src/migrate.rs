//! Numbered schema migrations, embedded from `migrations/NNNN_name.sql`.
//!
//! The schema version is `PRAGMA user_version`; `PRAGMA application_id` marks the file as
//! pincer's so another application's SQLite file is refused instead of being written into.
//! Each migration runs in its own `BEGIN IMMEDIATE` transaction together with the version bump.

use crate::error::{Result, StoreError};
use rusqlite::{Connection, TransactionBehavior};
use std::path::Path;

/// `PRAGMA application_id` of a pincer database: ASCII `PINC`.
pub(crate) const APPLICATION_ID: i64 = 0x5049_4E43;

/// One embedded migration.
pub(crate) struct Migration {
    /// Its number; `user_version` after it has been applied.
    pub(crate) version: i64,
    /// File stem without the number, for error messages.
    pub(crate) name: &'static str,
    /// The SQL, run with `execute_batch`.
    pub(crate) sql: &'static str,
}

/// All migrations, in order. Numbers are contiguous from 1.
pub(crate) const MIGRATIONS: &[Migration] = &[
    Migration { version: 1, name: "init", sql: include_str!("../migrations/0001_init.sql") },
    Migration { version: 2, name: "pairing", sql: include_str!("../migrations/0002_pairing.sql") },
];

/// The schema version this binary writes.
pub(crate) fn latest_version() -> i64 {
    MIGRATIONS.last().map_or(0, |m| m.version)
}

/// Refuse files that are not ours, or are newer than we understand. Runs before migrating.
pub(crate) fn check_identity(conn: &Connection, path: &Path) -> Result<()> {
    let app_id: i64 = conn.pragma_query_value(None, "application_id", |r| r.get(0))?;
    let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    if app_id != 0 && app_id != APPLICATION_ID {
        return Err(StoreError::Corrupt {
            path: path.to_path_buf(),
            detail: format!("it is another application's SQLite database (application_id {app_id:#x})"),
        });
    }
    if app_id == 0 {
        let objects: i64 =
            conn.query_row("SELECT count(*) FROM sqlite_schema WHERE name NOT LIKE 'sqlite_%'", [], |r| r.get(0))?;
        if objects > 0 || version != 0 {
            return Err(StoreError::Corrupt {
                path: path.to_path_buf(),
                detail: format!(
                    "it is an SQLite database without pincer's mark ({objects} schema objects, user_version {version})"
                ),
            });
        }
    }
    let supported = latest_version();
    if version > supported {
        return Err(StoreError::SchemaTooNew { path: path.to_path_buf(), found: version, supported });
    }
    Ok(())
}

/// Apply every migration newer than the file's `user_version`, each in its own transaction.
/// Returns the resulting version. Idempotent: a second call applies nothing.
pub(crate) fn migrate(conn: &mut Connection, path: &Path) -> Result<i64> {
    let supported = latest_version();
    for m in MIGRATIONS {
        let fail = |source: rusqlite::Error| StoreError::Migration {
            path: path.to_path_buf(),
            version: m.version,
            name: m.name,
            source,
        };
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(fail)?;
        // Re-read inside the write transaction: another opener may have migrated meanwhile.
        let current: i64 = tx.pragma_query_value(None, "user_version", |r| r.get(0)).map_err(fail)?;
        if current > supported {
            return Err(StoreError::SchemaTooNew { path: path.to_path_buf(), found: current, supported });
        }
        if current >= m.version {
            continue; // the transaction rolls back on drop; nothing was written
        }
        tx.execute_batch(m.sql).map_err(fail)?;
        tx.pragma_update(None, "user_version", m.version).map_err(fail)?;
        tx.pragma_update(None, "application_id", APPLICATION_ID).map_err(fail)?;
        tx.commit().map_err(fail)?;
    }
    Ok(conn.pragma_query_value(None, "user_version", |r| r.get(0))?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrations_are_numbered_contiguously_from_one() {
        for (i, m) in MIGRATIONS.iter().enumerate() {
            assert_eq!(m.version, i as i64 + 1, "migration {} is out of sequence", m.name);
            assert!(!m.sql.trim().is_empty());
        }
    }

    #[test]
    fn migrate_twice_is_a_no_op() {
        let mut conn = Connection::open_in_memory().unwrap();
        let p = Path::new(":memory:");
        check_identity(&conn, p).unwrap();
        assert_eq!(migrate(&mut conn, p).unwrap(), latest_version());
        check_identity(&conn, p).unwrap();
        assert_eq!(migrate(&mut conn, p).unwrap(), latest_version());
    }
}
