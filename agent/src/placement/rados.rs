//! Leases in RADOS: each group's lease is the advisory exclusive lock
//! `ferry.lease` with a duration on object `ferry.lease.GROUP` of the
//! control pool and namespace, taken with this agent's name as the cookie.
//! The same object's omap records the clients that held the lease
//! (`holder.ADDR` → agent name): a new holder blocklists every recorded one
//! but itself, then replaces them by its own record, before it drives the
//! group — as rbd-mirror and librbd's exclusive lock fence a previous
//! owner.
//!
//! A new holder also stamps `driven_by` (its agent name) in that omap
//! when it starts: what any agent or operator reads to see who drives.
//!
//! The lease's client is the process-wide connection of the agent's Ceph
//! cluster ([`ferry_engine::rbd::open_pool`]): the one the agent's RBD
//! images use too, so blocklisting it fences the agent's writes to the
//! group's images as well as to the lease. A blocklisted client stays
//! (every lease call refused) until every group driven under it has
//! stopped; only then does the agent connect as a new client.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ferry_engine::rbd::ClusterSpec;
use ferry_engine::sys::librados::lock::LockMode;
use ferry_engine::sys::librados::omap::WriteOp;
use ferry_engine::sys::librados::{CephError, Pool};

use super::driver::{Claim, LeaseBackend, PreparedWrite};
use super::lease::{Failure, Holder};
use crate::sync_util::lock;

/// The lock's name on each lease object.
pub const LOCK_NAME: &str = "ferry.lease";
/// The omap key prefix of the holder records.
const RECORD: &str = "holder.";
/// The omap key the holder stamps with its name when it starts driving.
pub const DRIVEN_BY: &str = "driven_by";

/// The lease object of group `group`.
pub fn lease_object(group: &str) -> String {
    format!("ferry.lease.{group}")
}

/// Where the leases live and for how long they are taken.
#[derive(Debug, Clone)]
pub struct RadosLeaseConfig {
    /// The cluster (the agent's `[ceph]`).
    pub cluster: ClusterSpec,
    /// The control pool.
    pub pool: String,
    /// The control namespace (`None`: the pool's default).
    pub namespace: Option<String>,
    /// This agent's name in the site (the lock cookie; unique per site).
    pub agent: String,
    /// The lock's duration.
    pub duration: Duration,
    /// How long a fenced client stays blocklisted.
    pub blocklist_for: Duration,
}

struct Connection {
    pool: Arc<Pool>,
    me: Holder,
}

#[derive(Default)]
struct State {
    connection: Option<Arc<Connection>>,
    /// The store refused the current client as blocklisted.
    fenced: bool,
    /// The groups driven under the current client.
    driving: BTreeSet<String>,
}

/// [`LeaseBackend`] on RADOS (see the module doc).
pub struct RadosLeases {
    config: RadosLeaseConfig,
    state: Mutex<State>,
}

impl RadosLeases {
    /// Leases of `config`; connects at the first call.
    pub fn new(config: RadosLeaseConfig) -> Self {
        Self {
            config,
            state: Mutex::new(State::default()),
        }
    }

    /// The current client for a call: connects the first time, never
    /// after a fence (only [`LeaseBackend::me`] replaces a fenced client).
    fn current(&self) -> Result<Arc<Connection>, Failure> {
        {
            let state = lock(&self.state);
            if state.fenced {
                return Err(Failure::Fenced);
            }
            if let Some(c) = &state.connection {
                return Ok(c.clone());
            }
        }
        self.connect()
    }

    fn connect(&self) -> Result<Arc<Connection>, Failure> {
        let c = &self.config;
        let pool = ferry_engine::rbd::open_pool(&c.cluster, &c.pool, c.namespace.as_deref())
            .map_err(|e| {
                tracing::warn!(error = %e, "lease store: cannot open the control pool");
                Failure::Transient
            })?;
        let addrs = pool.cluster().addrs().map_err(|e| {
            tracing::warn!(error = %e, "lease store: this client's address");
            Failure::Transient
        })?;
        if !fenceable(&canonical_addr(&addrs)) {
            tracing::warn!(%addrs, "lease store: this client has no address yet");
            return Err(Failure::Transient);
        }
        let connection = Arc::new(Connection {
            pool,
            me: Holder {
                agent: c.agent.clone(),
                addr: canonical_addr(&addrs),
            },
        });
        let mut state = lock(&self.state);
        state.connection = Some(connection.clone());
        state.fenced = false;
        Ok(connection)
    }

    /// What a store error means for the lease. A blocklisted client stays
    /// (every call refused) until no group is driven under it.
    fn failure(&self, e: CephError) -> Failure {
        if e.is_blocklisted() {
            tracing::error!(error = %e, "lease store: this agent's client is blocklisted");
            lock(&self.state).fenced = true;
            Failure::Fenced
        } else {
            tracing::warn!(error = %e, "lease store call failed");
            Failure::Transient
        }
    }

    fn records(&self, c: &Connection, oid: &str) -> Result<Vec<Holder>, Failure> {
        let entries = c.pool.omap_list(oid, RECORD).map_err(|e| self.failure(e))?;
        Ok(entries
            .into_iter()
            .filter_map(|(key, agent)| {
                Some(Holder {
                    addr: key.strip_prefix(RECORD)?.to_owned(),
                    agent: String::from_utf8_lossy(&agent).into_owned(),
                })
            })
            .collect())
    }
}

/// A client address in the one form this backend records, compares and
/// blocklists: the first of `rados_getaddrs`' list (`[v2:…,v1:…]` or one
/// address) or a locker's address, without its `v1:`/`v2:`/`any:` type
/// (the blocklist matches any type), e.g. `127.0.0.1:0/3735298`.
fn canonical_addr(addrs: &str) -> String {
    let first = addrs
        .trim()
        .trim_start_matches('[')
        .trim_end_matches(']')
        .split(',')
        .next()
        .unwrap_or_default()
        .trim();
    ["v1:", "v2:", "any:"]
        .iter()
        .find_map(|t| first.strip_prefix(t))
        .unwrap_or(first)
        .to_owned()
}

/// Whether `addr` names a real client (an address it learned from the
/// cluster, not the unbound `0.0.0.0`), so that blocklisting it fences it.
fn fenceable(addr: &str) -> bool {
    !addr.is_empty() && !addr.starts_with("0.0.0.0:") && !addr.starts_with("[::]:")
}

impl LeaseBackend for RadosLeases {
    fn me(&self) -> Option<Holder> {
        let old = {
            let mut state = lock(&self.state);
            match (&state.connection, state.fenced) {
                (Some(c), false) => return Some(c.me.clone()),
                (None, _) => None,
                // Fenced: a new client only once nothing runs under this one.
                (Some(_), true) if !state.driving.is_empty() => return None,
                (Some(_), true) => state.connection.take(),
            }
        };
        if let Some(old) = old {
            // Dropped from the cache too, so the agent's images reconnect.
            ferry_engine::rbd::forget_connection(&self.config.cluster, old.pool.cluster());
        }
        self.connect().ok().map(|c| c.me.clone())
    }

    fn claim(&self, group: &str) -> Result<Claim, Failure> {
        let c = self.current()?;
        let oid = lease_object(group);
        let cfg = &self.config;
        let taken = c.pool.lock_exclusive(
            &oid,
            LOCK_NAME,
            &cfg.agent,
            &format!("ferry lease of group {group}"),
            Some(cfg.duration),
            LockMode::MayRenew,
        );
        match taken {
            Ok(()) => Ok(Claim::Granted(self.records(&c, &oid)?)),
            Err(e) if e.is_busy() => {
                let info = c
                    .pool
                    .lockers(&oid, LOCK_NAME)
                    .map_err(|e| self.failure(e))?;
                Ok(Claim::Refused(info.lockers.into_iter().next().map(|l| {
                    Holder {
                        agent: l.cookie,
                        addr: l.address,
                    }
                })))
            }
            Err(e) => Err(self.failure(e)),
        }
    }

    fn renew(&self, group: &str) -> Result<(), Failure> {
        let c = self.current()?;
        let cfg = &self.config;
        let renewed = c.pool.lock_exclusive(
            &lease_object(group),
            LOCK_NAME,
            &cfg.agent,
            &format!("ferry lease of group {group}"),
            Some(cfg.duration),
            LockMode::MustRenew,
        );
        match renewed {
            Ok(()) => Ok(()),
            // Expired, broken or taken: the lease is gone.
            Err(e) if e.is_not_found() || e.is_busy() => Err(Failure::Taken),
            Err(e) => Err(self.failure(e)),
        }
    }

    fn fence(&self, group: &str, victims: &[Holder]) -> Result<(), Failure> {
        let c = self.current()?;
        for v in victims {
            tracing::warn!(group, agent = %v.agent, addr = %v.addr, "blocklisting a previous holder");
            c.pool
                .cluster()
                .blocklist_add(&v.addr, self.config.blocklist_for)
                .map_err(|e| self.failure(e))?;
        }
        let mut op = WriteOp::new();
        for v in victims {
            op.remove(&format!("{RECORD}{}", v.addr));
        }
        op.set(&format!("{RECORD}{}", c.me.addr), c.me.agent.as_bytes());
        c.pool
            .write(&lease_object(group), &op)
            .map_err(|e| self.failure(e))
    }

    fn driving(&self, group: &str, driving: bool) {
        let mut state = lock(&self.state);
        if driving {
            state.driving.insert(group.to_owned());
        } else {
            state.driving.remove(group);
        }
    }

    fn prepare_stamp(&self, group: &str) -> Result<PreparedWrite, Failure> {
        let c = self.current()?;
        let oid = lease_object(group);
        Ok(Box::new(move || {
            let mut op = WriteOp::new();
            op.set(DRIVEN_BY, c.me.agent.as_bytes());
            // Through the client that held the lease when this was decided,
            // whatever happened since: a fenced one is refused by the OSDs.
            c.pool.write(&oid, &op).map_err(|e| {
                if e.is_blocklisted() {
                    Failure::Fenced
                } else {
                    tracing::warn!(error = %e, "driver stamp");
                    Failure::Transient
                }
            })
        }))
    }

    fn release(&self, group: &str) -> Result<(), Failure> {
        let c = self.current()?;
        // The group is stopped: the next holder need not fence this client
        // (which may go on driving other groups), so its record goes first.
        let mut op = WriteOp::new();
        op.remove(&format!("{RECORD}{}", c.me.addr));
        c.pool
            .write(&lease_object(group), &op)
            .map_err(|e| self.failure(e))?;
        match c
            .pool
            .unlock(&lease_object(group), LOCK_NAME, &self.config.agent)
        {
            Ok(()) => Ok(()),
            Err(e) if e.is_not_found() => Ok(()),
            Err(e) => Err(self.failure(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_have_one_form() {
        assert_eq!(
            canonical_addr("[v2:127.0.0.1:0/1234,v1:127.0.0.1:0/1234]"),
            "127.0.0.1:0/1234"
        );
        assert_eq!(canonical_addr("127.0.0.1:0/99"), "127.0.0.1:0/99");
        assert_eq!(canonical_addr("any:10.1.2.3:0/7"), "10.1.2.3:0/7");
        assert!(fenceable("127.0.0.1:0/99"));
        assert!(!fenceable("0.0.0.0:0/99"));
        assert!(!fenceable(""));
        assert_eq!(lease_object("g1"), "ferry.lease.g1");
    }
}
