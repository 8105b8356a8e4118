//! [`WriteTx`]: the store's write transaction. It derefs to the SQLite
//! transaction the per-object files run their statements on; its
//! [`WriteTx::commit`] first publishes the touched rows when the store is
//! shared (one guarded write), then commits locally. Dropped without a
//! commit, it rolls back and releases the site's write lock.

use std::ops::Deref;

use rusqlite::Transaction;

use super::rows::Ctx;
use super::shared::{Shared, SharedError};
use crate::control::error::{StoreError, StoreResult};

/// Why a commit failed.
#[derive(Debug, thiserror::Error)]
pub enum CommitError {
    /// The local SQLite commit.
    #[error(transparent)]
    Sqlite(#[from] rusqlite::Error),
    /// Publishing the rows to the site's other agents (nothing was
    /// committed).
    #[error(transparent)]
    Shared(#[from] SharedError),
}

impl<T> Ctx<T> for Result<T, CommitError> {
    fn ctx(self, what: impl FnOnce() -> String) -> StoreResult<T> {
        self.map_err(|e| match e {
            CommitError::Sqlite(source) => StoreError::Sqlite {
                context: what(),
                source,
            },
            CommitError::Shared(source) => StoreError::Shared {
                context: what(),
                source,
            },
        })
    }
}

/// An open write transaction (see the module doc).
pub struct WriteTx<'a> {
    tx: Option<Transaction<'a>>,
    shared: Option<&'a Shared>,
}

impl<'a> WriteTx<'a> {
    pub(super) fn new(tx: Transaction<'a>, shared: Option<&'a Shared>) -> Self {
        Self {
            tx: Some(tx),
            shared,
        }
    }

    /// Publishes (shared store) and commits. A failed publish commits
    /// nothing: the transaction rolls back.
    pub fn commit(mut self) -> Result<(), CommitError> {
        let Some(tx) = self.tx.take() else {
            return Ok(());
        };
        let Some(shared) = self.shared.take() else {
            return Ok(tx.commit()?);
        };
        let published = match shared.publish(&tx) {
            Ok(v) => v,
            Err(e) => {
                drop(tx);
                shared.release();
                return Err(e.into());
            }
        };
        match tx.commit() {
            Ok(()) => {
                shared.finish(published);
                Ok(())
            }
            Err(e) => {
                // Published but not applied here: reload on next access.
                if published.is_some() {
                    shared.invalidate();
                }
                shared.release();
                Err(e.into())
            }
        }
    }
}

impl<'a> Deref for WriteTx<'a> {
    type Target = Transaction<'a>;

    fn deref(&self) -> &Transaction<'a> {
        // Only `commit` (which consumes self) takes the transaction out.
        self.tx
            .as_ref()
            .unwrap_or_else(|| unreachable!("WriteTx used after commit"))
    }
}

impl Drop for WriteTx<'_> {
    fn drop(&mut self) {
        // Roll back first, then let other agents write.
        drop(self.tx.take());
        if let Some(shared) = self.shared.take() {
            shared.release();
        }
    }
}
