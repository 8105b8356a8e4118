//! The `[control]` section: where the site's control state lives (this
//! agent's SQLite file, or RADOS shared by the site's agents) and, for a
//! RADOS site, this agent's name in it, the groups' lease duration and the
//! peer endpoint it announces to the site's peers.

use serde::Deserialize;

use super::{ConfigError, Invalid};

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawControl {
    store: Option<String>,
    pool: Option<String>,
    namespace: Option<String>,
    agent_name: Option<String>,
    lease: Option<String>,
    peer_endpoint: Option<String>,
}

/// Where the agent keeps its control state (`[control]`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum ControlStore {
    /// `DIR/control.db`, this agent's own (one agent per site): it drives
    /// every one of its groups, without leases.
    #[default]
    Sqlite,
    /// Shared by the site's agents in RADOS object `ferry.control` of
    /// `pool` (in the cluster of `[ceph]`); each primary group is driven by
    /// one agent at a time, under a lease in the same pool and namespace.
    Rados {
        /// The pool.
        pool: String,
        /// The RADOS namespace (`None`: the pool's default).
        namespace: Option<String>,
        /// This agent's name in the site (unique; shown as a group's
        /// driver). `None`: the host name.
        agent_name: Option<String>,
        /// The lease duration, seconds (5..=600).
        lease_secs: u64,
        /// The `HOST:PORT` a peer site dials to reach this agent (QUIC and
        /// peer API), announced to the site's records and so listed in its
        /// service keys. `None`: the listen address, unless unspecified.
        peer_endpoint: Option<String>,
    },
}

/// The lease duration when `[control] lease` is not set.
const DEFAULT_LEASE_SECS: u64 = 30;

/// The `[control]` section: `store = "sqlite"` (default) or `"rados"`
/// with a `pool` (required), an optional `namespace`, `agent_name` and
/// `lease`.
pub(super) fn control_store(
    raw: RawControl,
    invalid: &Invalid,
) -> Result<ControlStore, ConfigError> {
    match raw.store.as_deref() {
        None | Some("sqlite") => {
            let only_rados = [
                (raw.pool.is_some(), "control.pool"),
                (raw.namespace.is_some(), "control.namespace"),
                (raw.agent_name.is_some(), "control.agent_name"),
                (raw.lease.is_some(), "control.lease"),
                (raw.peer_endpoint.is_some(), "control.peer_endpoint"),
            ];
            match only_rados.iter().find(|(set, _)| *set) {
                Some((_, key)) => Err(invalid(key, "set only with store = \"rados\"".into())),
                None => Ok(ControlStore::Sqlite),
            }
        }
        Some("rados") => rados(raw, invalid),
        Some(other) => Err(invalid(
            "control.store",
            format!("{other:?} is not sqlite or rados"),
        )),
    }
}

fn rados(raw: RawControl, invalid: &Invalid) -> Result<ControlStore, ConfigError> {
    let Some(pool) = raw.pool else {
        return Err(invalid(
            "control.pool",
            "store = \"rados\" needs the pool of the site's control object".into(),
        ));
    };
    if pool.is_empty() || pool.contains('\0') {
        return Err(invalid(
            "control.pool",
            format!("{pool:?} is not a pool name"),
        ));
    }
    if let Some(ns) = &raw.namespace {
        if ns.is_empty() || ns.contains('\0') {
            return Err(invalid(
                "control.namespace",
                format!("{ns:?} is not a namespace name"),
            ));
        }
    }
    if let Some(name) = &raw.agent_name {
        if !valid_agent_name(name) {
            return Err(invalid(
                "control.agent_name",
                format!("{name:?}: 1 to 64 of A-Z a-z 0-9 - _ . (unique in the site)"),
            ));
        }
    }
    let lease_secs = match raw.lease {
        None => DEFAULT_LEASE_SECS,
        Some(text) => crate::units::parse_duration_secs(&text)
            .map_err(|e| invalid("control.lease", e.to_string()))?,
    };
    if !(5..=600).contains(&lease_secs) {
        return Err(invalid(
            "control.lease",
            format!("{lease_secs} s is not in 5 s..=10 min"),
        ));
    }
    if let Some(endpoint) = &raw.peer_endpoint {
        // One HOST:PORT, not a list, with nothing around it. (Checked here,
        // not with the orchestrator's list parser: the config is the lower
        // layer, and the config fuzz target compiles it alone.)
        let ok = !endpoint.contains(',')
            && endpoint.trim() == endpoint
            && !endpoint
                .chars()
                .any(|c| c.is_whitespace() || c.is_control())
            && endpoint
                .rsplit_once(':')
                .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
        if !ok {
            return Err(invalid(
                "control.peer_endpoint",
                format!("{endpoint:?} is not one HOST:PORT"),
            ));
        }
    }
    Ok(ControlStore::Rados {
        pool,
        namespace: raw.namespace,
        agent_name: raw.agent_name,
        lease_secs,
        peer_endpoint: raw.peer_endpoint,
    })
}

/// Whether `name` can name an agent of a site (a lock cookie, an omap key).
pub fn valid_agent_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::super::AgentConfig;
    use super::*;

    fn parse(text: &str) -> Result<AgentConfig, ConfigError> {
        AgentConfig::parse(text, Path::new("x"))
    }

    #[test]
    fn the_control_store_is_sqlite_unless_rados_with_a_pool() {
        assert_eq!(parse("").unwrap().control_store, ControlStore::Sqlite);
        assert_eq!(
            parse("[control]\nstore = \"sqlite\"\n")
                .unwrap()
                .control_store,
            ControlStore::Sqlite
        );
        assert_eq!(
            parse("[control]\nstore = \"rados\"\npool = \"ferry\"\nnamespace = \"a\"\n")
                .unwrap()
                .control_store,
            ControlStore::Rados {
                pool: "ferry".into(),
                namespace: Some("a".into()),
                agent_name: None,
                lease_secs: 30,
                peer_endpoint: None,
            }
        );
        for (bad, key) in [
            ("[control]\nstore = \"rados\"\n", "control.pool"),
            ("[control]\npool = \"ferry\"\n", "control.pool"),
            ("[control]\nnamespace = \"a\"\n", "control.namespace"),
            ("[control]\nagent_name = \"a\"\n", "control.agent_name"),
            ("[control]\nlease = \"10s\"\n", "control.lease"),
            (
                "[control]\npeer_endpoint = \"a:1\"\n",
                "control.peer_endpoint",
            ),
            ("[control]\nstore = \"etcd\"\n", "control.store"),
            (
                "[control]\nstore = \"rados\"\npool = \"\"\n",
                "control.pool",
            ),
        ] {
            let err = parse(bad).unwrap_err().to_string();
            assert!(err.contains(key), "{bad}: {err}");
        }
    }

    #[test]
    fn a_rados_site_names_its_agent_and_its_lease() {
        let c = parse(
            "[control]\nstore = \"rados\"\npool = \"p\"\nagent_name = \"node-1\"\nlease = \"1m\"\n\
             peer_endpoint = \"b1.example:7400\"\n",
        )
        .unwrap();
        assert_eq!(
            c.control_store,
            ControlStore::Rados {
                pool: "p".into(),
                namespace: None,
                agent_name: Some("node-1".into()),
                lease_secs: 60,
                peer_endpoint: Some("b1.example:7400".into()),
            }
        );
        for bad in [
            "agent_name = \"\"",
            "agent_name = \"a b\"",
            "agent_name = \"a/b\"",
            "lease = \"2s\"",
            "lease = \"11m\"",
            "lease = \"soon\"",
            "peer_endpoint = \"b1.example\"",
            "peer_endpoint = \"a:1,b:2\"",
            "peer_endpoint = \" a:1\"",
        ] {
            let text = format!("[control]\nstore = \"rados\"\npool = \"p\"\n{bad}\n");
            let err = parse(&text).unwrap_err().to_string();
            assert!(err.contains("control."), "{bad}: {err}");
        }
    }
}
