//! Parsing of byte sizes and rates as operators write them ("100M", "1.5GiB",
//! "800Mbit", "unlimited").
//!
//! A rate is unlimited (`None`) or at least 1 byte/s: any way of writing
//! zero ("0", "0.0", "0M") means unlimited, and a positive rate that rounds
//! to 0 bytes/s ("0.4") is refused rather than stored as a limit of 0 (found
//! by the `config` fuzz target's limits property).

/// Why a size or rate could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot parse {input:?} as {what}: {reason} (examples: 500000, 100M, 1.5GiB, 800Mbit, unlimited)")]
pub struct UnitError {
    input: String,
    what: &'static str,
    reason: &'static str,
}

/// Parses a byte count: plain bytes, or with a K/M/G/T (powers of 1000) or
/// Ki/Mi/Gi/Ti (powers of 1024) prefix, optional trailing "B", or a "bit"
/// suffix (divided by 8).
pub fn parse_bytes(input: &str) -> Result<u64, UnitError> {
    parse(input, "a byte count")
}

/// Parses a rate in bytes per second; `unlimited`, `none`, `off` or zero
/// (however written) → `None`; otherwise at least 1 byte/s (a positive rate
/// below 0.5 byte/s is an error). A trailing "/s" or "ps" is accepted.
pub fn parse_rate(input: &str) -> Result<Option<u64>, UnitError> {
    let trimmed = input.trim();
    let lower = trimmed.to_ascii_lowercase();
    if matches!(lower.as_str(), "unlimited" | "none" | "off" | "0") {
        return Ok(None);
    }
    // "Gbps" is gigabits per second; "MB/s" and "M" are bytes per second.
    let normalized = match lower.strip_suffix("bps") {
        Some(prefix) => format!("{prefix}bit"),
        None => lower.strip_suffix("/s").unwrap_or(&lower).to_owned(),
    };
    let bytes = parse_exact(&normalized, "a rate")?;
    if bytes == 0.0 {
        return Ok(None);
    }
    match bytes.round() as u64 {
        0 => Err(UnitError {
            input: normalized,
            what: "a rate",
            reason: "below 1 byte/s (write 0 or unlimited for no limit)",
        }),
        n => Ok(Some(n)),
    }
}

fn parse(input: &str, what: &'static str) -> Result<u64, UnitError> {
    Ok(parse_exact(input, what)?.round() as u64)
}

/// The bytes `input` names, not yet rounded.
fn parse_exact(input: &str, what: &'static str) -> Result<f64, UnitError> {
    let err = |reason| UnitError {
        input: input.to_owned(),
        what,
        reason,
    };
    let text = input.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    if number.is_empty() {
        return Err(err("no number"));
    }
    let value: f64 = number.parse().map_err(|_| err("bad number"))?;
    let unit = unit.trim().to_ascii_lowercase();
    let (prefix, bits) = if let Some(p) = unit.strip_suffix("bit") {
        (p.to_owned(), true)
    } else if let Some(p) = unit.strip_suffix('b') {
        (p.to_owned(), false)
    } else {
        (unit.clone(), false)
    };
    let multiplier: f64 = match prefix.as_str() {
        "" => 1.0,
        "k" => 1e3,
        "m" => 1e6,
        "g" => 1e9,
        "t" => 1e12,
        "ki" => 1024.0,
        "mi" => 1024.0 * 1024.0,
        "gi" => 1024.0 * 1024.0 * 1024.0,
        "ti" => 1024.0 * 1024.0 * 1024.0 * 1024.0,
        _ => return Err(err("unknown unit")),
    };
    let bytes = value * multiplier / if bits { 8.0 } else { 1.0 };
    if !bytes.is_finite() || bytes < 0.0 || bytes > u64::MAX as f64 {
        return Err(err("out of range"));
    }
    Ok(bytes)
}

/// Formats bytes for humans ("1.50 GiB").
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.2} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_rates() {
        assert_eq!(parse_bytes("4096").unwrap(), 4096);
        assert_eq!(parse_bytes("100M").unwrap(), 100_000_000);
        assert_eq!(parse_bytes("100MB").unwrap(), 100_000_000);
        assert_eq!(parse_bytes("1.5GiB").unwrap(), 1_610_612_736);
        assert_eq!(parse_bytes("800Mbit").unwrap(), 100_000_000);
        assert_eq!(parse_rate("unlimited").unwrap(), None);
        assert_eq!(parse_rate("20MiB/s").unwrap(), Some(20 * 1024 * 1024));
        assert_eq!(parse_rate("1Gbps").unwrap(), Some(125_000_000));
        assert!(parse_rate("fast").is_err());
        assert!(parse_bytes("12Q").is_err());
        assert!(parse_bytes("").is_err());
    }

    /// Regression (the `config` fuzz target's limits property): "0.0" and
    /// "0.4" were accepted as a limit of `Some(0)` bytes/s, a value the
    /// documentation does not have (0 means unlimited, and the limiter
    /// treats 0 so). Zero however written is unlimited; a positive rate
    /// rounding to 0 is refused.
    #[test]
    fn a_rate_is_unlimited_or_at_least_one_byte_per_second() {
        for zero in ["0", "0.0", "00", "0M", "0MB/s", "0Gbps", "0.000KiB"] {
            assert_eq!(parse_rate(zero).unwrap(), None, "{zero}");
        }
        for tiny in ["0.4", "0.1B/s", "3bit"] {
            let err = parse_rate(tiny).unwrap_err();
            assert!(err.to_string().contains("below 1 byte/s"), "{tiny}: {err}");
        }
        assert_eq!(parse_rate("0.5").unwrap(), Some(1));
        assert_eq!(parse_rate("8bit").unwrap(), Some(1));
        assert_eq!(parse_rate("1").unwrap(), Some(1));
    }
}
