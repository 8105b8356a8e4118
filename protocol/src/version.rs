//! Protocol versions and their negotiation.
//!
//! Both sides send [`Hello`] first with the range of versions they speak;
//! each then computes [`negotiate`] on its own and gets the same answer: the
//! highest version both speak. With no common version the side that notices
//! sends an `Error` frame with [`ErrorCode::VersionMismatch`](crate::ErrorCode)
//! and closes. The `Hello` layout is frozen across versions so that this
//! exchange always works.

use crate::message::{Capabilities, Hello};
use crate::types::AgentId;

/// A version of the wire format. One line per version says what changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u16)]
pub enum ProtocolVersion {
    /// First version: the twelve frames 0x01–0x0B and 0x7F of `PROTOCOL.md`.
    V1 = 1,
}

impl ProtocolVersion {
    /// Oldest version this build speaks.
    pub const OLDEST: Self = Self::V1;
    /// Newest version this build speaks.
    pub const NEWEST: Self = Self::V1;

    /// The number carried in [`Hello`].
    pub const fn get(self) -> u16 {
        self as u16
    }

    /// The version for a number, if this build knows it.
    pub const fn from_u16(version: u16) -> Option<Self> {
        match version {
            1 => Some(Self::V1),
            _ => None,
        }
    }
}

/// The newest protocol version this build speaks, as carried in [`Hello`].
pub const PROTOCOL_VERSION: u16 = ProtocolVersion::NEWEST.get();

/// The oldest protocol version this build speaks, as carried in [`Hello`].
pub const MIN_PROTOCOL_VERSION: u16 = ProtocolVersion::OLDEST.get();

/// Why two [`Hello`]s do not lead to a common version.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NegotiationError {
    /// One side announced `min_version > max_version`.
    #[error("{side} Hello announces an empty version range {min}..={max}")]
    EmptyRange {
        /// `"local"` or `"remote"`.
        side: &'static str,
        /// Its `min_version`.
        min: u16,
        /// Its `max_version`.
        max: u16,
    },
    /// The ranges do not overlap.
    #[error(
        "no common protocol version: local speaks {local_min}..={local_max}, remote speaks {remote_min}..={remote_max}"
    )]
    NoCommonVersion {
        /// Local `min_version`.
        local_min: u16,
        /// Local `max_version`.
        local_max: u16,
        /// Remote `min_version`.
        remote_min: u16,
        /// Remote `max_version`.
        remote_max: u16,
    },
}

/// The highest protocol version both `local` and `remote` speak.
///
/// Symmetric: both peers compute the same result from the two `Hello`s.
pub fn negotiate(local: &Hello, remote: &Hello) -> Result<u16, NegotiationError> {
    for (side, hello) in [("local", local), ("remote", remote)] {
        if hello.min_version > hello.max_version {
            return Err(NegotiationError::EmptyRange {
                side,
                min: hello.min_version,
                max: hello.max_version,
            });
        }
    }
    let low = local.min_version.max(remote.min_version);
    let high = local.max_version.min(remote.max_version);
    if low > high {
        return Err(NegotiationError::NoCommonVersion {
            local_min: local.min_version,
            local_max: local.max_version,
            remote_min: remote.min_version,
            remote_max: remote.max_version,
        });
    }
    Ok(high)
}

impl Hello {
    /// A `Hello` announcing every version this build speaks.
    pub fn new(agent_id: AgentId, capabilities: Capabilities) -> Self {
        Self {
            min_version: MIN_PROTOCOL_VERSION,
            max_version: PROTOCOL_VERSION,
            agent_id,
            capabilities,
        }
    }
}

impl Capabilities {
    /// The capabilities both sides have: what a session may use.
    pub const fn intersection(self, other: Self) -> Self {
        Self(self.0 & other.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hello(min: u16, max: u16) -> Hello {
        Hello {
            min_version: min,
            max_version: max,
            agent_id: AgentId([7; 32]),
            capabilities: Capabilities(0),
        }
    }

    #[test]
    fn picks_highest_common_version_symmetrically() {
        let cases = [
            ((1, 1), (1, 1), Ok(1)),
            ((1, 3), (2, 5), Ok(3)),
            ((2, 5), (1, 3), Ok(3)),
            ((1, 9), (4, 4), Ok(4)),
            ((1, 2), (3, 4), Err(())),
            ((5, 5), (1, 4), Err(())),
        ];
        for ((lmin, lmax), (rmin, rmax), want) in cases {
            let a = hello(lmin, lmax);
            let b = hello(rmin, rmax);
            let ab = negotiate(&a, &b).map_err(|_| ());
            let ba = negotiate(&b, &a).map_err(|_| ());
            assert_eq!(ab, want, "{lmin}..={lmax} vs {rmin}..={rmax}");
            assert_eq!(ab, ba, "negotiation must be symmetric");
        }
    }

    #[test]
    fn no_common_version_reports_both_ranges() {
        let err = negotiate(&hello(1, 2), &hello(3, 4)).unwrap_err();
        assert_eq!(
            err,
            NegotiationError::NoCommonVersion {
                local_min: 1,
                local_max: 2,
                remote_min: 3,
                remote_max: 4
            }
        );
        assert!(err.to_string().contains("1..=2"), "{err}");
    }

    #[test]
    fn empty_ranges_are_rejected() {
        let err = negotiate(&hello(1, 1), &hello(3, 2)).unwrap_err();
        assert_eq!(
            err,
            NegotiationError::EmptyRange {
                side: "remote",
                min: 3,
                max: 2
            }
        );
        assert!(matches!(
            negotiate(&hello(2, 1), &hello(1, 1)),
            Err(NegotiationError::EmptyRange { side: "local", .. })
        ));
    }

    #[test]
    fn this_build_negotiates_with_itself() {
        let a = Hello::new(AgentId([1; 32]), Capabilities(Capabilities::ZSTD));
        let b = Hello::new(AgentId([2; 32]), Capabilities(0));
        assert_eq!(negotiate(&a, &b), Ok(PROTOCOL_VERSION));
        assert_eq!(
            ProtocolVersion::from_u16(PROTOCOL_VERSION),
            Some(ProtocolVersion::NEWEST)
        );
        assert_eq!(ProtocolVersion::from_u16(0), None);
        assert_eq!(a.capabilities.intersection(b.capabilities), Capabilities(0));
    }
}
