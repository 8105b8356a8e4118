//! Which standby agent of a service's site a primary talks to.
//!
//! A service's `remote_endpoint` is one `HOST:PORT` or, for a standby site
//! of several agents (issue 18), a comma-separated list of them (the same
//! text in the store, the API body and the service key: an old agent reads
//! a one-endpoint service exactly as before). Every call to the standby
//! (the QUIC data path of a cycle, the peer API) takes its endpoints from
//! [`EndpointPicker::order`]: the one that last worked first, then the
//! others in the service's order. A connection that cannot be made, or is
//! lost mid-cycle, moves the service on to the next one
//! ([`EndpointPicker::failed`]); an answer keeps it where it is
//! ([`EndpointPicker::worked`]).
//!
//! Pure logic, no I/O: the orchestrator resolves and dials.

use std::collections::HashMap;

use crate::control::ServiceId;

/// Why an endpoint list is unusable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EndpointListError {
    /// No endpoint in it.
    #[error("no standby endpoint given (HOST:PORT, or several separated by commas)")]
    Empty,
    /// An endpoint without a port, or with spaces or control characters.
    #[error("'{0}' is not HOST:PORT")]
    Malformed(String),
}

/// The endpoints of a list (`a:1,b:2`; blanks around each ignored, empty
/// items and repeats dropped), in its order.
pub fn parse(list: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for item in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        if !out.iter().any(|e| e == item) {
            out.push(item.to_owned());
        }
    }
    out
}

/// [`parse`], refusing an empty list and items that are not `HOST:PORT`.
pub fn validate(list: &str) -> Result<Vec<String>, EndpointListError> {
    let endpoints = parse(list);
    if endpoints.is_empty() {
        return Err(EndpointListError::Empty);
    }
    for e in &endpoints {
        let port_ok = e
            .rsplit_once(':')
            .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
        if !port_ok || e.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(EndpointListError::Malformed(e.clone()));
        }
    }
    Ok(endpoints)
}

/// The stored form of `endpoints`.
pub fn join(endpoints: &[String]) -> String {
    endpoints.join(",")
}

/// Whether two lists name the same endpoints (in any order).
pub fn same_set(a: &[String], b: &[String]) -> bool {
    a.len() == b.len() && a.iter().all(|e| b.contains(e))
}

/// Per service, the endpoint to start from.
#[derive(Debug, Default)]
pub struct EndpointPicker {
    preferred: HashMap<ServiceId, String>,
}

impl EndpointPicker {
    /// `endpoints` in the order to try them for `service`: the preferred
    /// one (the last that worked, or the one moved to after a failure)
    /// first, then those after it in list order, wrapping around. Without
    /// a preference (or one no longer listed), the list's order.
    pub fn order(&self, service: ServiceId, endpoints: &[String]) -> Vec<String> {
        let start = self
            .preferred
            .get(&service)
            .and_then(|p| endpoints.iter().position(|e| e == p))
            .unwrap_or(0);
        endpoints[start..]
            .iter()
            .chain(endpoints[..start].iter())
            .cloned()
            .collect()
    }

    /// The endpoint to use first for `service` (`None`: an empty list).
    pub fn current(&self, service: ServiceId, endpoints: &[String]) -> Option<String> {
        self.order(service, endpoints).into_iter().next()
    }

    /// `endpoint` answered: start from it next time.
    pub fn worked(&mut self, service: ServiceId, endpoint: &str) {
        self.preferred.insert(service, endpoint.to_owned());
    }

    /// `endpoint` could not be reached (or its connection was lost): the
    /// next call starts from the endpoint after it. A failure of an
    /// endpoint that is no longer the preferred one (another call already
    /// moved on) changes nothing. Returns the endpoint the next call
    /// starts from.
    pub fn failed(
        &mut self,
        service: ServiceId,
        endpoint: &str,
        endpoints: &[String],
    ) -> Option<String> {
        let current = self.current(service, endpoints)?;
        if current == endpoint {
            if let Some(at) = endpoints.iter().position(|e| e == endpoint) {
                let next = endpoints[(at + 1) % endpoints.len()].clone();
                self.preferred.insert(service, next);
            }
        }
        self.current(service, endpoints)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(s: &str) -> Vec<String> {
        parse(s)
    }

    const S: ServiceId = ServiceId(1);

    #[test]
    fn parses_one_or_several_endpoints() {
        assert_eq!(parse("10.0.0.2:7443"), vec!["10.0.0.2:7443"]);
        assert_eq!(parse(" a:1 , b:2,,a:1, "), vec!["a:1", "b:2"]);
        assert_eq!(join(&parse("a:1, b:2")), "a:1,b:2");
        // A one-endpoint service is stored exactly as before.
        assert_eq!(join(&parse("10.0.0.2:7443")), "10.0.0.2:7443");
        assert!(parse(" , ").is_empty());
        assert!(same_set(&list("a:1,b:2"), &list("b:2,a:1")));
        assert!(!same_set(&list("a:1,b:2"), &list("a:1")));
        assert!(!same_set(&list("a:1,b:2"), &list("a:1,c:3")));
    }

    #[test]
    fn validation_refuses_what_cannot_be_dialled() {
        assert_eq!(
            validate("a:1,[::1]:2"),
            Ok(vec!["a:1".into(), "[::1]:2".into()])
        );
        assert_eq!(validate(" ,"), Err(EndpointListError::Empty));
        assert_eq!(
            validate("a:1,b"),
            Err(EndpointListError::Malformed("b".into()))
        );
        assert_eq!(
            validate("a:1,:7"),
            Err(EndpointListError::Malformed(":7".into()))
        );
        assert_eq!(
            validate("a:99999"),
            Err(EndpointListError::Malformed("a:99999".into()))
        );
        assert_eq!(
            validate("a b:1"),
            Err(EndpointListError::Malformed("a b:1".into()))
        );
    }

    #[test]
    fn a_single_endpoint_is_always_the_one() {
        let one = list("a:1");
        let mut p = EndpointPicker::default();
        assert_eq!(p.order(S, &one), one);
        assert_eq!(p.failed(S, "a:1", &one), Some("a:1".into()));
        assert_eq!(p.order(S, &one), one);
        p.worked(S, "a:1");
        assert_eq!(p.current(S, &one), Some("a:1".into()));
        assert_eq!(p.current(S, &[]), None);
    }

    #[test]
    fn starts_from_the_last_that_worked_and_moves_on_after_a_failure() {
        let eps = list("a:1,b:2,c:3");
        let mut p = EndpointPicker::default();
        assert_eq!(p.order(S, &eps), list("a:1,b:2,c:3"));
        assert_eq!(p.failed(S, "a:1", &eps), Some("b:2".into()));
        assert_eq!(p.order(S, &eps), list("b:2,c:3,a:1"));
        p.worked(S, "b:2");
        assert_eq!(p.order(S, &eps), list("b:2,c:3,a:1"));
        assert_eq!(p.failed(S, "b:2", &eps), Some("c:3".into()));
        assert_eq!(p.failed(S, "c:3", &eps), Some("a:1".into()), "wraps around");
        // Another service keeps its own place.
        assert_eq!(p.current(ServiceId(2), &eps), Some("a:1".into()));
    }

    #[test]
    fn a_stale_failure_does_not_move_the_service_again() {
        let eps = list("a:1,b:2,c:3");
        let mut p = EndpointPicker::default();
        // Two calls used a:1; both fail: the service moves to b:2 once.
        assert_eq!(p.failed(S, "a:1", &eps), Some("b:2".into()));
        assert_eq!(p.failed(S, "a:1", &eps), Some("b:2".into()));
    }

    #[test]
    fn a_preference_no_longer_listed_falls_back_to_the_list_order() {
        let mut p = EndpointPicker::default();
        p.worked(S, "b:2");
        assert_eq!(p.order(S, &list("c:3,a:1")), list("c:3,a:1"));
        assert_eq!(p.order(S, &list("a:1,b:2")), list("b:2,a:1"));
    }
}
