//! Incremental catch-up of a shared store's local copy: every publish
//! also records which row keys it changed under its new version
//! (`log/VERSION`, the newest [`LOG_KEEP`] kept), so an agent told of a
//! change reads only the versions it missed and those rows
//! ([`SharedBackend::changes_since`]) and applies them ([`apply_delta`]),
//! instead of reloading every row of the site. At 2,000 groups the whole
//! state is ~18 MB and every agent reloaded it on every write of any
//! other (docs/scale.md); a delta is a few rows. A copy too far behind (the
//! log trimmed past it), or a delta that does not apply, falls back to the
//! full reload.
//!
//! [`SharedBackend::changes_since`]: super::SharedBackend::changes_since

use std::collections::BTreeSet;

use rusqlite::Connection;

use super::{
    decode_value, has_rowid_alias, insert_row, key_table, RowChanges, SharedError, TABLES,
};

/// How many versions' change lists the shared state keeps.
pub const LOG_KEEP: u64 = 512;

/// The rows that changed from one version to a newer one.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Delta {
    /// The version the rows are at.
    pub version: u64,
    /// The schema version of the agent that wrote last.
    pub schema: u64,
    /// Each changed row key → its row now, or `None` when it is gone.
    pub rows: RowChanges,
}

/// The key of version `version`'s change list.
pub fn log_key(version: u64) -> String {
    format!("log/{version:020}")
}

/// The key of the change list a publish of `version` trims, if any.
pub fn trimmed_log_key(version: u64) -> Option<String> {
    version
        .checked_sub(LOG_KEEP)
        .filter(|v| *v > 0)
        .map(log_key)
}

/// A change list as stored: the row keys, one per line.
pub fn encode_log(changes: &RowChanges) -> Vec<u8> {
    let keys: Vec<&str> = changes.keys().map(String::as_str).collect();
    keys.join("\n").into_bytes()
}

/// Adds the row keys of stored change list `bytes` (of `key`) to `into`.
pub fn decode_log(key: &str, bytes: &[u8], into: &mut BTreeSet<String>) -> Result<(), SharedError> {
    let text = std::str::from_utf8(bytes).map_err(|e| SharedError::Decode {
        key: key.to_owned(),
        reason: format!("a change list that is not UTF-8: {e}"),
    })?;
    for row in text.lines().filter(|l| !l.is_empty()) {
        if key_table(row).is_none_or(|t| !TABLES.contains(&t)) {
            return Err(SharedError::Decode {
                key: key.to_owned(),
                reason: format!("{row} is not a row key of a known table"),
            });
        }
        into.insert(row.to_owned());
    }
    Ok(())
}

/// Applies `delta`'s rows to the local copy in one transaction (foreign
/// keys checked at its end): rows gone are deleted children first, rows
/// there are updated in place or inserted, parents first. An update in
/// place, not a replace, so no cascade of the local copy removes rows the
/// delta does not carry.
pub fn apply_delta(conn: &Connection, delta: &Delta) -> Result<(), SharedError> {
    let tx = conn.unchecked_transaction()?;
    tx.execute_batch("PRAGMA defer_foreign_keys = ON")?;
    let rowid_of = |key: &str| {
        key.rsplit('/')
            .next()
            .and_then(|id| id.parse::<i64>().ok())
            .ok_or_else(|| SharedError::Decode {
                key: key.to_owned(),
                reason: "a row key without a row id".into(),
            })
    };
    for table in TABLES.iter().rev() {
        for (key, _) in delta.rows.iter().filter(|(_, row)| row.is_none()) {
            if table_of(key)? == *table {
                tx.execute(
                    &format!("DELETE FROM \"{table}\" WHERE rowid = ?1"),
                    [rowid_of(key)?],
                )?;
            }
        }
    }
    for table in TABLES {
        let alias = has_rowid_alias(&tx, table)?;
        for (key, row) in &delta.rows {
            let Some(row) = row else { continue };
            if table_of(key)? != *table {
                continue;
            }
            upsert_row(&tx, table, alias, key, rowid_of(key)?, row)?;
        }
    }
    tx.commit()?;
    Ok(())
}

/// The known table row key `key` belongs to.
fn table_of(key: &str) -> Result<&str, SharedError> {
    key_table(key)
        .filter(|t| TABLES.contains(t))
        .ok_or_else(|| SharedError::Decode {
            key: key.to_owned(),
            reason: "not a row of a table this agent knows".into(),
        })
}

/// Updates row `rowid` of `table` to stored row `bytes`, or inserts it.
fn upsert_row(
    tx: &Connection,
    table: &str,
    alias: bool,
    key: &str,
    rowid: i64,
    bytes: &[u8],
) -> Result<(), SharedError> {
    let obj = match serde_json::from_slice(bytes) {
        Ok(serde_json::Value::Object(o)) => o,
        Ok(_) => serde_json::Map::new(),
        Err(e) => {
            return Err(SharedError::Decode {
                key: key.to_owned(),
                reason: e.to_string(),
            })
        }
    };
    let mut cols = Vec::new();
    let mut vals = Vec::new();
    for (name, v) in &obj {
        if name == "__rowid" {
            continue;
        }
        cols.push(format!("\"{}\"", name.replace('"', "\"\"")));
        vals.push(decode_value(key, v)?);
    }
    let sets: Vec<String> = cols
        .iter()
        .enumerate()
        .map(|(i, c)| format!("{c} = ?{}", i + 1))
        .collect();
    let mut params = vals.clone();
    params.push(rusqlite::types::Value::Integer(rowid));
    let updated = if sets.is_empty() {
        0
    } else {
        tx.execute(
            &format!(
                "UPDATE \"{table}\" SET {} WHERE rowid = ?{}",
                sets.join(", "),
                params.len()
            ),
            rusqlite::params_from_iter(params),
        )?
    };
    if updated == 0 {
        // The rowid column: its alias is among the columns, or it is named.
        if !alias {
            cols.push("rowid".to_owned());
            vals.push(rusqlite::types::Value::Integer(rowid));
        }
        insert_row(tx, table, &cols, vals)?;
    }
    Ok(())
}
