//! Retention: deleting finished history so the database does not grow without bound.
//! Only terminal rows are ever deleted; open outbox rows and unfinished inbound rows stay
//! whatever their age.

use crate::error::Result;
use crate::store::Store;
use rusqlite::{Connection, OptionalExtension};

/// How many rows [`Store::prune_finished`] deleted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PruneStats {
    /// Finished inbound ledger rows.
    pub inbound: usize,
    /// Terminal (`sent`, `failed`, `unknown`) outbox rows.
    pub outbox: usize,
}

impl Store {
    /// Delete finished inbound ledger rows received before `before_ms` and terminal outbox
    /// rows created before `before_ms`, in one transaction. Ids grow with time, so the cut is
    /// found by scanning from the oldest row and stops at the first young one: the cost is
    /// proportional to what is deleted, not to the table size.
    ///
    /// The newest row of each table is always kept: SQLite gives a new row `max(id) + 1`, so
    /// keeping the maximum guarantees an id is never handed out twice.
    pub fn prune_finished(&self, before_ms: i64) -> Result<PruneStats> {
        self.transaction(|tx| {
            let c = tx.conn;
            let outbox_cut = cut(
                c,
                "SELECT id FROM outbox WHERE created_at >= ?1 ORDER BY id LIMIT 1",
                "SELECT max(id) FROM outbox",
                before_ms,
            )?;
            let outbox = c
                .prepare_cached(
                    "DELETE FROM outbox WHERE id < ?1 \
                     AND status IN ('sent', 'failed', 'unknown') AND created_at < ?2",
                )?
                .execute([outbox_cut, before_ms])?;
            let inbound_cut = cut(
                c,
                "SELECT id FROM inbound WHERE received_at >= ?1 ORDER BY id LIMIT 1",
                "SELECT max(id) FROM inbound",
                before_ms,
            )?;
            let inbound = c
                .prepare_cached(
                    "DELETE FROM inbound WHERE id < ?1 \
                     AND outcome IS NOT NULL AND received_at < ?2",
                )?
                .execute([inbound_cut, before_ms])?;
            Ok(PruneStats { inbound, outbox })
        })
    }
}

/// The id below which rows may be deleted: the first young row's id, but never above the
/// newest row's id (which is kept). `first_young` and `max` are SQL texts.
fn cut(c: &Connection, first_young: &str, max: &str, before_ms: i64) -> Result<i64> {
    let young: Option<i64> = c.prepare_cached(first_young)?.query_row([before_ms], |r| r.get(0)).optional()?;
    let newest: Option<i64> = c.prepare_cached(max)?.query_row([], |r| r.get(0))?;
    Ok(match (young, newest) {
        (Some(y), Some(n)) => y.min(n),
        (None, Some(n)) => n,
        (_, None) => 0,
    })
}
