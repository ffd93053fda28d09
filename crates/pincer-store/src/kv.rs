//! A small key/value table for gateway facts (generated values, markers). Values are text;
//! callers serialise anything structured themselves.

use crate::error::Result;
use crate::store::{Store, Tx};
use rusqlite::{params, OptionalExtension};

impl Tx<'_> {
    /// Set `key` to `value`, replacing any previous value.
    pub fn kv_set(&self, key: &str, value: &str, now_ms: i64) -> Result<()> {
        self.conn
            .prepare_cached(
                "INSERT INTO kv (key, value, updated_at) VALUES (?1, ?2, ?3) \
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value, \
                    updated_at = excluded.updated_at",
            )?
            .execute(params![key, value, now_ms])?;
        Ok(())
    }

    /// Return the value of `key`, inserting `value` first if the key is absent. Atomic, so
    /// concurrent callers all get the same value (the first one's).
    pub fn kv_get_or_insert(&self, key: &str, value: &str, now_ms: i64) -> Result<String> {
        self.conn
            .prepare_cached(
                "INSERT INTO kv (key, value, updated_at) VALUES (?1, ?2, ?3) \
                 ON CONFLICT (key) DO NOTHING",
            )?
            .execute(params![key, value, now_ms])?;
        self.after_write(
            self.conn
                .prepare_cached("SELECT value FROM kv WHERE key = ?1")
                .and_then(|mut s| s.query_row([key], |r| r.get(0)))
                .map_err(Into::into),
        )
    }
}

impl Store {
    /// The value of `key`, if set.
    pub fn kv_get(&self, key: &str) -> Result<Option<String>> {
        self.read(|c| {
            Ok(c.prepare_cached("SELECT value FROM kv WHERE key = ?1")?.query_row([key], |r| r.get(0)).optional()?)
        })
    }

    /// Set `key` to `value`; see [`Tx::kv_set`].
    pub fn kv_set(&self, key: &str, value: &str, now_ms: i64) -> Result<()> {
        self.write_one(|tx| tx.kv_set(key, value, now_ms))
    }

    /// Get `key`, inserting `value` if absent; see [`Tx::kv_get_or_insert`].
    pub fn kv_get_or_insert(&self, key: &str, value: &str, now_ms: i64) -> Result<String> {
        self.transaction(|tx| tx.kv_get_or_insert(key, value, now_ms))
    }
}
