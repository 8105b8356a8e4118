//! DR drills: the record of a standby group's drill (its phase, pinned
//! engine point and volumes), written in the same transaction as the
//! journal entry that starts or ends it, so a killed agent's drill is still
//! known — and its volumes still removable — after a restart.

use rusqlite::{params, OptionalExtension, Row, Transaction};

use super::journal::begin_checked_in;
use super::rows::{get_group, to_i64, to_json, Ctx};
use super::Store;
use crate::control::error::{StoreError, StoreResult};
use crate::control::model::{Drill, DrillPhase, DrillVolume, GroupId, Operation, Timestamp};
use crate::control::rules::OpRequest;

/// What a new drill records (it starts in [`DrillPhase::Starting`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewDrill {
    /// The engine recovery point its volumes are made at.
    pub engine_rp: u64,
    /// The control recovery point's name, if the operator chose one.
    pub recovery_point: Option<String>,
    /// Its volumes.
    pub volumes: Vec<DrillVolume>,
}

const DRILL_COLS: &str = "group_id, phase, engine_rp, recovery_point, started_at, volumes";

fn drill_row(r: &Row<'_>) -> rusqlite::Result<(Drill, String)> {
    let engine_rp: i64 = r.get(2)?;
    Ok((
        Drill {
            group_id: r.get(0)?,
            phase: r.get(1)?,
            engine_rp: u64::try_from(engine_rp).unwrap_or(0),
            recovery_point: r.get(3)?,
            started_at: r.get(4)?,
            volumes: Vec::new(),
        },
        r.get(5)?,
    ))
}

fn get_drill(tx: &rusqlite::Connection, id: GroupId) -> StoreResult<Option<Drill>> {
    let row = tx
        .query_row(
            &format!("SELECT {DRILL_COLS} FROM drills WHERE group_id = ?1"),
            [id],
            drill_row,
        )
        .optional()
        .ctx(|| format!("read the drill of group {id}"))?;
    row.map(|(mut d, volumes)| {
        d.volumes = serde_json::from_str(&volumes).map_err(|source| StoreError::Json {
            what: "drill volumes",
            source,
        })?;
        Ok(d)
    })
    .transpose()
}

fn set_phase(tx: &Transaction<'_>, id: GroupId, phase: DrillPhase) -> StoreResult<()> {
    let n = tx
        .execute(
            "UPDATE drills SET phase = ?2 WHERE group_id = ?1",
            params![id, phase],
        )
        .ctx(|| format!("mark the drill of group {id} {phase}"))?;
    if n == 0 {
        return Err(StoreError::NotFound {
            what: "drill of group",
            key: id.to_string(),
        });
    }
    Ok(())
}

impl Store {
    /// The drill of group `id`, if one runs.
    pub fn drill(&self, id: GroupId) -> StoreResult<Option<Drill>> {
        get_drill(self.conn(), id)
    }

    /// Starts a drill: checks `req` (an [`OpRequest::Drill`]) against the
    /// rules, journals it and records `new` in phase `starting`, in one
    /// transaction. A retry of an interrupted start (a drill still
    /// `starting`) keeps the recorded drill — its point and volumes — and
    /// returns it.
    pub fn begin_drill(
        &mut self,
        id: GroupId,
        req: &OpRequest,
        params: &serde_json::Value,
        new: &NewDrill,
    ) -> StoreResult<(Operation, Drill)> {
        let text = to_json("operation parameters", params)?;
        let volumes = to_json("drill volumes", &new.volumes)?;
        let engine_rp = to_i64("engine recovery point id", new.engine_rp)?;
        let tx = self.write(|| format!("begin a drill of group {id}"))?;
        let op = begin_checked_in(&tx, id, req, &text)?;
        if get_drill(&tx, id)?.is_none() {
            tx.execute(
                &format!("INSERT INTO drills ({DRILL_COLS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6)"),
                params![
                    id,
                    DrillPhase::Starting,
                    engine_rp,
                    new.recovery_point,
                    Timestamp::now(),
                    volumes
                ],
            )
            .ctx(|| format!("record the drill of group {id}"))?;
        }
        let drill = get_drill(&tx, id)?.ok_or_else(|| StoreError::NotFound {
            what: "drill of group",
            key: id.to_string(),
        })?;
        let g = get_group(&tx, id)?;
        tx.commit()
            .ctx(|| format!("commit the start of a drill of group '{}'", g.name))?;
        Ok((op, drill))
    }

    /// Ends a drill: checks [`OpRequest::EndDrill`], journals it and marks
    /// the drill `ending`, in one transaction; returns the drill (what to
    /// remove).
    pub fn begin_end_drill(
        &mut self,
        id: GroupId,
        params: &serde_json::Value,
    ) -> StoreResult<(Operation, Drill)> {
        let text = to_json("operation parameters", params)?;
        let tx = self.write(|| format!("end the drill of group {id}"))?;
        let op = begin_checked_in(&tx, id, &OpRequest::EndDrill, &text)?;
        set_phase(&tx, id, DrillPhase::Ending)?;
        let drill = get_drill(&tx, id)?.ok_or_else(|| StoreError::NotFound {
            what: "drill of group",
            key: id.to_string(),
        })?;
        tx.commit()
            .ctx(|| format!("commit the end of the drill of group {id}"))?;
        Ok((op, drill))
    }

    /// Moves the drill of group `id` to `phase`.
    pub fn set_drill_phase(&mut self, id: GroupId, phase: DrillPhase) -> StoreResult<()> {
        let tx = self.write(|| format!("mark the drill of group {id} {phase}"))?;
        set_phase(&tx, id, phase)?;
        tx.commit()
            .ctx(|| format!("commit the drill of group {id} {phase}"))
    }

    /// Forgets the drill of group `id` (its volumes are removed and its
    /// point unpinned). Absent is fine.
    pub fn clear_drill(&mut self, id: GroupId) -> StoreResult<()> {
        let tx = self.write(|| format!("forget the drill of group {id}"))?;
        tx.execute("DELETE FROM drills WHERE group_id = ?1", [id])
            .ctx(|| format!("forget the drill of group {id}"))?;
        tx.commit()
            .ctx(|| format!("commit forgetting the drill of group {id}"))
    }
}
