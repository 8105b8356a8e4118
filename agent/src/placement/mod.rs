//! Work placement among the agents of one site, sans I/O: the lease that
//! lets exactly one agent drive a protection group at a time
//! ([`lease`]), and the plan of which agent claims which free group
//! ([`plan`]); the async task that runs a lease against a store
//! ([`driver`]) and the lease store on RADOS ([`rados`]: a lock with a
//! duration on `ferry.lease.GROUP`, holder records, blocklisting), and the
//! site's other shared records ([`site`]: live agents, who holds what, the
//! sources' replication state a new holder resumes from), and the tasks
//! that touch a group while this agent drives it ([`work`]: ended together
//! when the lease stops the group).
//!
//! The daemon runs them for a site with `[control] store = "rados"`
//! (`orchestrator/leases.rs`); a SQLite site has no leases.

pub mod driver;
pub mod lease;
pub mod plan;
pub mod rados;
pub mod site;
pub mod work;
