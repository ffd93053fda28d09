//! DM pairing (`dmPolicy: pairing`, reference §5): an unknown direct-message sender gets a
//! short code once; an operator approves the code (`pincer pairing approve <channel> <CODE>`)
//! and the sender is remembered as paired for that channel account.
//!
//! Codes are [`CODE_LEN`] characters from [`CODE_ALPHABET`] (no `0`, `O`, `1`, `I`), valid for
//! [`CODE_TTL_MS`], with at most [`MAX_PENDING`] pending requests per channel account.

use crate::error::Result;
use crate::store::Store;
use rusqlite::{params, OptionalExtension};

/// Characters of a pairing code: upper-case letters and digits without the look-alikes
/// `0`, `O`, `1`, `I`.
pub const CODE_ALPHABET: &[u8] = b"ABCDEFGHJKLMNPQRSTUVWXYZ23456789";
/// Length of a pairing code.
pub const CODE_LEN: usize = 8;
/// How long a code stays valid: 1 h, in ms.
pub const CODE_TTL_MS: i64 = 3600 * 1000;
/// Pending requests allowed per channel account.
pub const MAX_PENDING: usize = 3;

/// What [`Store::pairing_request`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PairingRequest {
    /// A new code was issued: tell the sender.
    Issued(String),
    /// The sender already has a valid code: do not send it again.
    AlreadyPending(String),
    /// [`MAX_PENDING`] requests are already pending for the account: nothing issued.
    Full,
}

/// A pending request, as listed by `pincer pairing list`.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PendingPairing {
    /// Channel id.
    pub channel: String,
    /// Account id.
    pub account_id: String,
    /// The sender's platform id.
    pub sender_id: String,
    /// The sender's display name, if known.
    pub sender_name: Option<String>,
    /// The code.
    pub code: String,
    /// Issued at, ms since the epoch.
    pub created_at: i64,
    /// Expires at, ms since the epoch.
    pub expires_at: i64,
}

/// An approved sender.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PairedSender {
    /// Channel id.
    pub channel: String,
    /// Account id.
    pub account_id: String,
    /// The sender's platform id.
    pub sender_id: String,
    /// The sender's display name, if known.
    pub sender_name: Option<String>,
    /// Approved at, ms since the epoch.
    pub approved_at: i64,
}

fn new_code() -> String {
    use rand::Rng;
    let mut rng = rand::thread_rng();
    (0..CODE_LEN).map(|_| CODE_ALPHABET[rng.gen_range(0..CODE_ALPHABET.len())] as char).collect()
}

impl Store {
    /// True when the sender was approved for this channel account.
    pub fn is_paired(&self, channel: &str, account: &str, sender_id: &str) -> Result<bool> {
        self.read(|c| {
            Ok(c.prepare_cached("SELECT 1 FROM paired_sender WHERE channel = ?1 AND account = ?2 AND sender_id = ?3")?
                .query_row(params![channel, account, sender_id], |_| Ok(()))
                .optional()?
                .is_some())
        })
    }

    /// An unknown sender wrote a DM: issue a code unless one is pending or the account has
    /// [`MAX_PENDING`] pending requests. Expired requests are removed first.
    pub fn pairing_request(
        &self,
        channel: &str,
        account: &str,
        sender_id: &str,
        sender_name: Option<&str>,
        now_ms: i64,
    ) -> Result<PairingRequest> {
        self.transaction(|tx| {
            let c = tx.conn;
            c.prepare_cached("DELETE FROM pairing_request WHERE expires_at <= ?1")?.execute([now_ms])?;
            let existing: Option<String> = c
                .prepare_cached(
                    "SELECT code FROM pairing_request WHERE channel = ?1 AND account = ?2 AND sender_id = ?3",
                )?
                .query_row(params![channel, account, sender_id], |r| r.get(0))
                .optional()?;
            if let Some(code) = existing {
                return Ok(PairingRequest::AlreadyPending(code));
            }
            let pending: i64 = c
                .prepare_cached("SELECT count(*) FROM pairing_request WHERE channel = ?1 AND account = ?2")?
                .query_row(params![channel, account], |r| r.get(0))?;
            if pending as usize >= MAX_PENDING {
                return Ok(PairingRequest::Full);
            }
            // Codes are unique per channel (the approve command names only the channel).
            loop {
                let code = new_code();
                let inserted = c
                    .prepare_cached(
                        "INSERT INTO pairing_request (channel, account, sender_id, sender_name, code, created_at, \
                            expires_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) ON CONFLICT (channel, code) DO NOTHING",
                    )?
                    .execute(params![channel, account, sender_id, sender_name, code, now_ms, now_ms + CODE_TTL_MS])?;
                if inserted == 1 {
                    return Ok(PairingRequest::Issued(code));
                }
            }
        })
    }

    /// Approve a pending code of `channel` (case-insensitive; codes are upper case). Returns the
    /// approved sender, or `None` when no valid request has that code.
    pub fn pairing_approve(&self, channel: &str, code: &str, now_ms: i64) -> Result<Option<PairedSender>> {
        let code = code.trim().to_ascii_uppercase();
        self.transaction(|tx| {
            let c = tx.conn;
            let row: Option<(String, String, Option<String>)> = c
                .prepare_cached(
                    "SELECT account, sender_id, sender_name FROM pairing_request \
                     WHERE channel = ?1 AND code = ?2 AND expires_at > ?3",
                )?
                .query_row(params![channel, code, now_ms], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
                .optional()?;
            let Some((account, sender_id, sender_name)) = row else { return Ok(None) };
            c.prepare_cached("DELETE FROM pairing_request WHERE channel = ?1 AND code = ?2")?
                .execute(params![channel, code])?;
            c.prepare_cached(
                "INSERT INTO paired_sender (channel, account, sender_id, sender_name, approved_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT (channel, account, sender_id) DO UPDATE SET \
                    approved_at = excluded.approved_at",
            )?
            .execute(params![channel, account, sender_id, sender_name, now_ms])?;
            Ok(Some(PairedSender {
                channel: channel.to_string(),
                account_id: account,
                sender_id,
                sender_name,
                approved_at: now_ms,
            }))
        })
    }

    /// Pending (unexpired) requests and approved senders, of one channel or all.
    pub fn pairing_list(&self, channel: Option<&str>, now_ms: i64) -> Result<(Vec<PendingPairing>, Vec<PairedSender>)> {
        self.read(|c| {
            let pending = c
                .prepare_cached(
                    "SELECT channel, account, sender_id, sender_name, code, created_at, expires_at FROM pairing_request \
                     WHERE (?1 IS NULL OR channel = ?1) AND expires_at > ?2 ORDER BY created_at",
                )?
                .query_map(params![channel, now_ms], |r| {
                    Ok(PendingPairing {
                        channel: r.get(0)?,
                        account_id: r.get(1)?,
                        sender_id: r.get(2)?,
                        sender_name: r.get(3)?,
                        code: r.get(4)?,
                        created_at: r.get(5)?,
                        expires_at: r.get(6)?,
                    })
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            let paired = c
                .prepare_cached(
                    "SELECT channel, account, sender_id, sender_name, approved_at FROM paired_sender \
                     WHERE (?1 IS NULL OR channel = ?1) ORDER BY approved_at",
                )?
                .query_map(params![channel], |r| {
                    Ok(PairedSender {
                        channel: r.get(0)?,
                        account_id: r.get(1)?,
                        sender_id: r.get(2)?,
                        sender_name: r.get(3)?,
                        approved_at: r.get(4)?,
                    })
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok((pending, paired))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_issued_once_capped_and_approved_into_paired_senders() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        let t = 1_000_000;
        let PairingRequest::Issued(code) = s.pairing_request("mattermost", "default", "u1", Some("alice"), t).unwrap()
        else {
            panic!("no code")
        };
        assert_eq!(code.len(), CODE_LEN);
        assert!(code.bytes().all(|b| CODE_ALPHABET.contains(&b)), "{code}");
        assert_eq!(
            s.pairing_request("mattermost", "default", "u1", None, t + 1).unwrap(),
            PairingRequest::AlreadyPending(code.clone()),
            "sent once"
        );
        assert!(matches!(
            s.pairing_request("mattermost", "default", "u2", None, t).unwrap(),
            PairingRequest::Issued(_)
        ));
        assert!(matches!(
            s.pairing_request("mattermost", "default", "u3", None, t).unwrap(),
            PairingRequest::Issued(_)
        ));
        assert_eq!(s.pairing_request("mattermost", "default", "u4", None, t).unwrap(), PairingRequest::Full);
        assert!(matches!(s.pairing_request("mattermost", "other", "u4", None, t).unwrap(), PairingRequest::Issued(_)));
        assert_eq!(s.pairing_list(Some("mattermost"), t).unwrap().0.len(), 4);

        assert!(!s.is_paired("mattermost", "default", "u1").unwrap());
        assert_eq!(s.pairing_approve("mattermost", "WRONGCOD", t).unwrap(), None);
        let ok = s.pairing_approve("mattermost", &code.to_lowercase(), t + 5).unwrap().expect("approved");
        assert_eq!((ok.sender_id.as_str(), ok.account_id.as_str()), ("u1", "default"));
        assert!(s.is_paired("mattermost", "default", "u1").unwrap());
        assert!(!s.is_paired("mattermost", "other", "u1").unwrap(), "per account");
        assert_eq!(s.pairing_approve("mattermost", &code, t + 6).unwrap(), None, "a code is used once");
        // Codes expire after an hour, freeing the slots.
        assert!(matches!(
            s.pairing_request("mattermost", "default", "u5", None, t + CODE_TTL_MS).unwrap(),
            PairingRequest::Issued(_)
        ));
        let (pending, paired) = s.pairing_list(None, t + CODE_TTL_MS).unwrap();
        assert_eq!((pending.len(), paired.len()), (1, 1));
    }
}
