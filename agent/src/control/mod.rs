//! The control shim's foundation: the DR object model (services, protection
//! groups, resources, policies, recovery points, operations), the
//! allowed-state table of `shared/docs/dr-semantics.md` as pure rules, and
//! the embedded transactional store that persists all of it in the agent's
//! data dir (`control.db`, SQLite).
//!
//! How the layers fit (the HTTP API and orchestrator build on this):
//! 1. read the facts: `store.group_view(id)` (plus request facts such as
//!    `store.resource_owners(..)`),
//! 2. ask the rules: `rules::check(&request, &view)` → a [`Transition`] or a
//!    [`Refusal`] carrying the rule broken and the current state (nothing is
//!    changed on refusal),
//! 3. journal and enter the transitional state in one transaction:
//!    `store.begin_operation(id, &transition, &params)` (compare-and-set: a
//!    concurrent change makes it fail with `StateConflict`, and a second
//!    operation on the same group fails with `GroupBusy`),
//! 4. act (engine, peer agent), then `store.finish_operation(op, result)`
//!    moves the group to the success / failure state in one transaction.
//!
//! `store.begin_checked(id, &request, &params)` does steps 1–3 in a single
//! transaction (preferred: no window between check and write).
//!
//! On restart, `store.unfinished_operations()` lists what was in flight;
//! each entry carries its recorded [`Transition`] and parameters, so the
//! orchestrator finishes it or rolls it back (`OpResult::RolledBack` returns
//! the group to the state it started from).
//!
//! Decisions where the semantics doc is silent (see also `rules/mod.rs`): one
//! operation at a time per group; a new primary keeps role `standby` with
//! `new_primary = true`; after a planned migration both sides are `mapped`
//! with roles swapped; recovery points are addressed by a name unique within
//! their group; resource URIs (the primary's source URI) are unique per
//! agent.

pub mod error;
pub mod model;
pub mod rpo;
pub mod rules;
pub mod store;

pub use error::{StoreError, StoreResult};
pub use model::*;
pub use rpo::{RpoError, RpoThresholds};
pub use rules::{
    check, check_delete_service, FailoverTarget, GroupView, OpRequest, Refusal, RefusalReason,
};
pub use store::{NewDrill, NewOperation, OpResult, Store, DB_FILE_NAME, SCHEMA_VERSION};
