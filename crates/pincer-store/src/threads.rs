//! Thread participation: the threads the bot has replied in, per channel account and chat,
//! with the time of the last reply. Feeds the `thread_participation` mention fact (Mattermost
//! keeps it for 7 days). Delivered outbox rows with a thread id record it automatically
//! ([`Tx::mark_sent`]).

use crate::error::Result;
use crate::store::{Store, Tx};
use pincer_core::{AccountId, ChannelId};
use rusqlite::{params, OptionalExtension};

impl Tx<'_> {
    /// Record that the bot replied in `thread_id` of `chat_id` at `now_ms` (keeps the later
    /// time if one is already stored).
    pub fn touch_thread(
        &self,
        channel: &ChannelId,
        account: &AccountId,
        chat_id: &str,
        thread_id: &str,
        now_ms: i64,
    ) -> Result<()> {
        self.touch_thread_raw(channel.as_str(), account.as_str(), chat_id, thread_id, now_ms)
    }

    pub(crate) fn touch_thread_raw(
        &self,
        channel: &str,
        account: &str,
        chat_id: &str,
        thread_id: &str,
        now_ms: i64,
    ) -> Result<()> {
        self.conn
            .prepare_cached(
                "INSERT INTO thread_participation (channel, account, chat_id, thread_id, \
                    last_reply_at) VALUES (?1, ?2, ?3, ?4, ?5) \
                 ON CONFLICT (channel, account, chat_id, thread_id) DO UPDATE SET \
                    last_reply_at = max(last_reply_at, excluded.last_reply_at)",
            )?
            .execute(params![channel, account, chat_id, thread_id, now_ms])?;
        Ok(())
    }
}

impl Store {
    /// Record that the bot replied in a thread; see [`Tx::touch_thread`].
    pub fn touch_thread(
        &self,
        channel: &ChannelId,
        account: &AccountId,
        chat_id: &str,
        thread_id: &str,
        now_ms: i64,
    ) -> Result<()> {
        self.write_one(|tx| tx.touch_thread(channel, account, chat_id, thread_id, now_ms))
    }

    /// True if the bot replied in this thread at or after `since_ms` (e.g. `now - 7 days`).
    /// Ids are compared exactly (case-sensitive).
    pub fn participated(
        &self,
        channel: &ChannelId,
        account: &AccountId,
        chat_id: &str,
        thread_id: &str,
        since_ms: i64,
    ) -> Result<bool> {
        self.read(|c| {
            let last: Option<i64> = c
                .prepare_cached(
                    "SELECT last_reply_at FROM thread_participation \
                     WHERE channel = ?1 AND account = ?2 AND chat_id = ?3 AND thread_id = ?4",
                )?
                .query_row(params![channel.as_str(), account.as_str(), chat_id, thread_id], |r| r.get(0))
                .optional()?;
            Ok(last.is_some_and(|t| t >= since_ms))
        })
    }

    /// Forget threads whose last reply was before `before_ms`; returns how many.
    pub fn prune_threads(&self, before_ms: i64) -> Result<usize> {
        self.write_one(|tx| {
            Ok(tx
                .conn
                .prepare_cached("DELETE FROM thread_participation WHERE last_reply_at < ?1")?
                .execute([before_ms])?)
        })
    }
}
