//! Decoding of stored values into domain types. Every decoder returns an error for a value it
//! does not recognise; nothing here panics on bad data.

use pincer_core::{AccountId, AgentId, ChannelId, ChatKind};
use rusqlite::types::Type;
use rusqlite::Row;

/// A stored value that does not decode; becomes [`crate::StoreError::BadData`].
#[derive(Debug)]
pub(crate) struct BadValue(pub(crate) String);

impl std::fmt::Display for BadValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for BadValue {}

/// Read column `idx` as text and decode it with `f`, mapping a decode failure into a
/// conversion error that names the column.
pub(crate) fn decode<T>(
    row: &Row<'_>,
    idx: usize,
    f: impl FnOnce(String) -> Result<T, BadValue>,
) -> rusqlite::Result<T> {
    let raw: String = row.get(idx)?;
    f(raw).map_err(|e| rusqlite::Error::FromSqlConversionFailure(idx, Type::Text, Box::new(e)))
}

/// Like [`decode`] for a nullable column.
pub(crate) fn decode_opt<T>(
    row: &Row<'_>,
    idx: usize,
    f: impl FnOnce(String) -> Result<T, BadValue>,
) -> rusqlite::Result<Option<T>> {
    let raw: Option<String> = row.get(idx)?;
    raw.map(f).transpose().map_err(|e| rusqlite::Error::FromSqlConversionFailure(idx, Type::Text, Box::new(e)))
}

pub(crate) fn agent_id(raw: String) -> Result<AgentId, BadValue> {
    let id = AgentId::new(&raw);
    if id.as_str() == raw {
        Ok(id)
    } else {
        Err(BadValue(format!("agent id {raw:?} is not normalised")))
    }
}

pub(crate) fn channel_id(raw: String) -> Result<ChannelId, BadValue> {
    let id = ChannelId::new(&raw);
    if id.as_str() == raw {
        Ok(id)
    } else {
        Err(BadValue(format!("channel id {raw:?} is not normalised")))
    }
}

pub(crate) fn account_id(raw: String) -> Result<AccountId, BadValue> {
    let id = AccountId::new(&raw);
    if id.as_str() == raw {
        Ok(id)
    } else {
        Err(BadValue(format!("account id {raw:?} is not normalised")))
    }
}

pub(crate) fn chat_kind(raw: String) -> Result<ChatKind, BadValue> {
    match raw.as_str() {
        "direct" => Ok(ChatKind::Direct),
        "group" => Ok(ChatKind::Group),
        "channel" => Ok(ChatKind::Channel),
        _ => Err(BadValue(format!("unknown chat kind {raw:?}"))),
    }
}

pub(crate) fn json(raw: String) -> Result<serde_json::Value, BadValue> {
    serde_json::from_str(&raw).map_err(|e| BadValue(format!("malformed JSON meta: {e}")))
}

/// Convert a caller's `usize` limit into an SQL `LIMIT` value.
pub(crate) fn sql_limit(limit: usize) -> i64 {
    i64::try_from(limit).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_must_round_trip() {
        assert!(agent_id("main".into()).is_ok());
        assert!(agent_id("Main".into()).is_err());
        assert!(channel_id("Matrix".into()).is_err());
        assert_eq!(account_id("Work".into()).unwrap().as_str(), "Work");
        assert!(account_id(" Work".into()).is_err());
        assert!(chat_kind("dm".into()).is_err());
        assert!(json("{".into()).is_err());
    }
}
