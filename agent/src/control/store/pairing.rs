//! One-time pairing secrets issued by `ferry service key`: only their hash
//! is stored, and each pairs once, before it expires.

use rusqlite::{params, OptionalExtension};

use super::rows::Ctx;
use super::Store;
use crate::control::error::{StoreError, StoreResult};
use crate::control::model::Timestamp;

impl Store {
    /// Records a one-time pairing secret (by its hash) valid until `expires`.
    pub fn create_pairing_secret(
        &mut self,
        secret_hash: &str,
        expires: Timestamp,
    ) -> StoreResult<()> {
        let tx = self.write(|| "record a pairing secret".into())?;
        tx.execute(
            "INSERT INTO pairing_secrets (secret_hash, expires_at) VALUES (?1, ?2)",
            params![secret_hash, expires],
        )
        .ctx(|| "insert pairing secret".into())?;
        tx.commit().ctx(|| "commit pairing secret".into())
    }

    /// Uses up a pairing secret: succeeds once, if it exists and `now` is
    /// before its expiry; otherwise [`StoreError::PairingSecret`] says why.
    pub fn consume_pairing_secret(&mut self, secret_hash: &str, now: Timestamp) -> StoreResult<()> {
        let tx = self.write(|| "use a pairing secret".into())?;
        let row: Option<(Timestamp, Option<Timestamp>)> = tx
            .query_row(
                "SELECT expires_at, used_at FROM pairing_secrets WHERE secret_hash = ?1",
                [secret_hash],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()
            .ctx(|| "read pairing secret".into())?;
        let reason = match row {
            None => Some("the service key's secret is unknown to this agent"),
            Some((_, Some(_))) => Some("the service key was already used"),
            Some((expires, None)) if expires <= now => Some("the service key has expired"),
            Some(_) => None,
        };
        if let Some(reason) = reason {
            return Err(StoreError::PairingSecret {
                reason: reason.to_owned(),
            });
        }
        tx.execute(
            "UPDATE pairing_secrets SET used_at = ?2 WHERE secret_hash = ?1",
            params![secret_hash, now],
        )
        .ctx(|| "mark pairing secret used".into())?;
        tx.commit().ctx(|| "commit use of pairing secret".into())
    }
}
