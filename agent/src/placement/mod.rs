//! Work placement among the agents of one site, sans I/O: the lease that
//! lets exactly one agent drive a protection group at a time
//! ([`lease`]), and the plan of which agent claims which free group
//! ([`plan`]); the async task that runs a lease against a store
//! ([`driver`]) and the lease store on RADOS ([`rados`]: a lock with a
//! duration on `ferry.lease.GROUP`, holder records, blocklisting).
//!
//! Not wired into the daemon yet: the orchestrator still drives every group
//! of its own store. Wiring it to the shared RADOS control store (one
//! service and one group for all the site's agents) is the next step of
//! issue 18; the branch `h19-lease` had it against per-agent stores.

pub mod driver;
pub mod lease;
pub mod plan;
pub mod rados;
