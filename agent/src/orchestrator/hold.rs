//! Hold points at the real steps of the control operations, for the
//! end-to-end fault tests (`tests/tests/faults_control.rs`, `control.rs`):
//! a test arms one with `FAILPOINTS=NAME=return(hold)` (or `return(MS)`),
//! starts the operation, sees `fail point reached` with `point="NAME"` in the
//! agent's log and only then kills the agent or cuts the link, so it knows
//! its fault hit the operation at that step (see
//! [`ferry_engine::testpoint`]). Without the `failpoints` feature every
//! point is nothing.
//!
//! The points, by operation and side:
//! - recovery point (manual or policy), primary: `rp::before-cycle` (a
//!   cycle that answers waiting requests is about to start),
//!   `rp::before-register` (its cycle committed, recorded here as
//!   `creating`, the standby not asked yet), `rp::after-register` (the
//!   standby recorded and pinned it, not `complete` here yet);
//!   `policy::started` (the scheduler just started a policy point's
//!   operation);
//! - recovery point, standby: `rp::standby-recorded` (recorded and pinned,
//!   the answer not sent);
//! - planned migration, primary: `migrate::after-begin` (the standby is
//!   migrating, no final sync yet), `migrate::after-final-sync` (the final
//!   cycle committed, the standby not asked to prepare),
//!   `migrate::prepared` (the standby wrote the new volumes),
//!   `migrate::before-commit` (this side checked them and installed its
//!   sources as the standby copies), `migrate::after-commit` (the standby
//!   is the primary, this side has not finished);
//! - planned migration, standby: `migrate::standby-begun`,
//!   `migrate::standby-prepared`, `migrate::standby-images-removed` (in the
//!   commit, the replicated copies gone, the operation not finished),
//!   `migrate::standby-committed` (finished, the answer not sent);
//! - failover (the standby): `failover::before-images`,
//!   `failover::after-image` (once per image);
//! - delete group, the standby at the primary's request:
//!   `delete::standby-begun` (journaled, the standby copies not removed);
//! - DR drill (the standby): `drill::after-volume` (a drill start made one
//!   more volume), `drill::after-remove` (a drill end removed one more);
//! - reprotect, the new primary: `reprotect::after-begin` (the old primary
//!   installed its volumes as the standby copies, nothing seeded here yet),
//!   `reprotect::old-primary-committed` (the old primary is the standby,
//!   the first cycle not run yet);
//! - reprotect, the old primary: `reprotect::old-primary-begun`
//!   (journaled, nothing installed yet), `reprotect::old-primary-adopted`
//!   (the copies installed, the answer not sent);
//! - any replication cycle, primary: `cycle::committed` (the standby
//!   committed the cycle, this side has not recorded the end of an initial
//!   sync yet).

/// Evaluates hold point `name` from async code. A held point parks the
/// calling thread: on a multi-thread runtime (the agent's) the runtime
/// first hands this worker's other tasks to another thread, so the API and
/// the other operations go on answering while it is held.
pub(super) fn reach(name: &'static str) {
    #[cfg(feature = "failpoints")]
    {
        let multi = tokio::runtime::Handle::try_current()
            .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
        if multi && fail::list().iter().any(|(n, _)| n == name) {
            tokio::task::block_in_place(|| ferry_engine::testpoint::reach(name));
            return;
        }
    }
    ferry_engine::testpoint::reach(name);
}
