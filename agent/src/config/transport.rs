//! The `[transport]` section: the QUIC link's windows and buffers, how
//! many images move at once, compression, datagram size, and a group sync's
//! budget of unacknowledged bytes.

use std::time::Duration;

use ferry_engine::transport::TransportSettings;
use serde::Deserialize;

use super::{ConfigError, Invalid};
use crate::units::parse_bytes;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTransport {
    max_concurrent_images: Option<u32>,
    idle_timeout_secs: Option<u64>,
    stream_window: Option<String>,
    connection_window: Option<String>,
    udp_buffer: Option<String>,
    compression: Option<String>,
    max_udp_payload: Option<u32>,
    group_unacked_bytes: Option<String>,
}

/// Applies the `[transport]` section onto the defaults in `t`.
pub(super) fn apply_transport(
    t: &mut TransportSettings,
    raw: RawTransport,
    invalid: &Invalid,
) -> Result<(), ConfigError> {
    if let Some(n) = raw.max_concurrent_images {
        if !(1..=256).contains(&n) {
            return Err(invalid(
                "transport.max_concurrent_images",
                format!("{n} is not in 1..=256"),
            ));
        }
        t.max_concurrent_images = n;
    }
    if let Some(s) = raw.idle_timeout_secs {
        if !(1..=3600).contains(&s) {
            return Err(invalid(
                "transport.idle_timeout_secs",
                format!("{s} is not in 1..=3600"),
            ));
        }
        t.idle_timeout = Duration::from_secs(s);
    }
    let window = |key: &'static str, v: Option<String>| -> Result<Option<u32>, ConfigError> {
        match v {
            None => Ok(None),
            Some(v) => {
                let n = parse_bytes(&v).map_err(|e| invalid(key, e.to_string()))?;
                if !(64 * 1024..=1 << 30).contains(&n) {
                    return Err(invalid(
                        key,
                        format!("{n} bytes is not within 64 KiB..=1 GiB"),
                    ));
                }
                Ok(Some(n as u32))
            }
        }
    };
    if let Some(w) = window("transport.stream_window", raw.stream_window)? {
        t.stream_window = w;
    }
    if let Some(w) = window("transport.connection_window", raw.connection_window)? {
        t.connection_window = w;
        t.send_window = u64::from(w);
    }
    if let Some(w) = window("transport.udp_buffer", raw.udp_buffer)? {
        t.udp_buffer = w as usize;
    }
    if let Some(v) = raw.group_unacked_bytes {
        let key = "transport.group_unacked_bytes";
        let n = parse_bytes(&v).map_err(|e| invalid(key, e.to_string()))?;
        if !(1 << 20..=4 << 30).contains(&n) {
            return Err(invalid(
                key,
                format!("{n} bytes is not within 1 MiB..=4 GiB"),
            ));
        }
        t.group_unacked_bytes = n;
    }
    if let Some(mode) = &raw.compression {
        t.compression = mode
            .parse()
            .map_err(|reason| invalid("transport.compression", reason))?;
    }
    if let Some(n) = raw.max_udp_payload {
        let min = u32::from(ferry_engine::transport::MIN_UDP_PAYLOAD);
        t.max_udp_payload = u16::try_from(n)
            .ok()
            .filter(|&v| (min..=65_527).contains(&u32::from(v)))
            .ok_or_else(|| {
                invalid(
                    "transport.max_udp_payload",
                    format!("{n} is not in {min}..=65527"),
                )
            })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::super::AgentConfig;

    #[test]
    fn a_group_syncs_unacknowledged_bytes_are_set_within_bounds() {
        let parse = |t: &str| AgentConfig::parse(t, Path::new("x"));
        assert_eq!(parse("").unwrap().transport.group_unacked_bytes, 64 << 20);
        let c = parse("[transport]\ngroup_unacked_bytes = \"16MiB\"\n").unwrap();
        assert_eq!(c.transport.group_unacked_bytes, 16 << 20);
        for bad in ["\"512KiB\"", "\"5GiB\"", "\"lots\""] {
            let err = parse(&format!("[transport]\ngroup_unacked_bytes = {bad}\n")).unwrap_err();
            assert!(
                err.to_string().contains("group_unacked_bytes"),
                "{bad}: {err}"
            );
        }
    }
}
