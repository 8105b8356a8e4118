//! Parsing of byte sizes and rates as operators write them ("100M", "1.5GiB",
//! "100MB/s", "800Mbit", "unlimited"), with ONE convention that matches how
//! ferry prints them ([`human_bytes`]: "1.50 GiB", "12.00 MiB/s") and how
//! `rbd --size` reads sizes:
//!
//! - the prefixes K, M, G, T (either case, with or without `i`) are always
//!   powers of 1024: `100M` = `100MB` = `100MiB` = 104 857 600 bytes;
//! - `B` is a byte and `b` (or `bit`, `bits`) a bit, so the case of the B
//!   matters: `100MB` is 100 MiB, `100Mb` is 100 Mibit = 12.5 MiB;
//! - a rate may end in `/s` or `ps`: `100MB/s` = `100MBps` = `800Mbit` =
//!   `800Mbps` = 100 MiB/s;
//! - a bare number is bytes (per second).
//!
//! (Network gear counts 10^9 bit/s per "Gbit": `1Gbit` here is 2^30 bit/s,
//! 7% more; write `950Mbit` or `110MB/s` to stay under a 1 Gbit/s link.)
//!
//! A rate is unlimited (`None`) or at least 1 byte/s: any way of writing
//! zero ("0", "0.0", "0M") means unlimited, and a positive rate that rounds
//! to 0 bytes/s ("0.4") is refused rather than stored as a limit of 0 (found
//! by the `config` fuzz target's limits property).

/// Why a size or rate could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot parse {input:?} as {what}: {reason} ({hint})")]
pub struct UnitError {
    input: String,
    what: &'static str,
    reason: &'static str,
    hint: &'static str,
}

const SIZE_HINT: &str = "examples: 500000, 100M, 1.5GiB, 100MB/s, 800Mbit, unlimited; K/M/G/T are powers of 1024, B = byte, b = bit";
const DURATION_HINT: &str = "examples: 90, 90s, 5m, 1h30m, 2d, off";

/// Parses a byte count: plain bytes, or with a K/M/G/T prefix (powers of
/// 1024, `Ki`/`Mi`… the same), an optional `B`, or a bit suffix (`b`,
/// `bit`, `bits`: divided by 8).
pub fn parse_bytes(input: &str) -> Result<u64, UnitError> {
    Ok(parse_exact(input, "a byte count", false)?.round() as u64)
}

/// Parses a rate in bytes per second; `unlimited`, `none`, `off` or zero
/// (however written) → `None`; otherwise at least 1 byte/s (a positive rate
/// below 0.5 byte/s is an error). A trailing "/s" or "ps" is accepted.
pub fn parse_rate(input: &str) -> Result<Option<u64>, UnitError> {
    let trimmed = input.trim();
    if matches!(
        trimmed.to_ascii_lowercase().as_str(),
        "unlimited" | "none" | "off"
    ) {
        return Ok(None);
    }
    let bytes = parse_exact(trimmed, "a rate", true)?;
    if bytes == 0.0 {
        return Ok(None);
    }
    match bytes.round() as u64 {
        0 => Err(UnitError {
            input: trimmed.to_owned(),
            what: "a rate",
            reason: "below 1 byte/s (write 0 or unlimited for no limit)",
            hint: SIZE_HINT,
        }),
        n => Ok(Some(n)),
    }
}

/// The bytes `input` names, not yet rounded; `rate` accepts a `/s` or `ps`
/// ending.
fn parse_exact(input: &str, what: &'static str, rate: bool) -> Result<f64, UnitError> {
    let err = |reason| UnitError {
        input: input.to_owned(),
        what,
        reason,
        hint: SIZE_HINT,
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
    let mut unit = unit.trim();
    if rate {
        unit = unit
            .strip_suffix("/s")
            .or_else(|| unit.strip_suffix("ps"))
            .unwrap_or(unit);
    }
    // The case of the B is kept (byte vs bit); the prefix's is not.
    let (prefix, bits) = if let Some(p) = ["bits", "bit", "b"]
        .iter()
        .find_map(|s| unit.strip_suffix(s))
    {
        (p, true)
    } else if let Some(p) = unit.strip_suffix('B') {
        (p, false)
    } else {
        (unit, false)
    };
    let prefix = prefix.to_ascii_lowercase();
    let power = match prefix.strip_suffix('i').unwrap_or(&prefix) {
        "" if prefix.is_empty() => 0,
        "k" => 1,
        "m" => 2,
        "g" => 3,
        "t" => 4,
        _ => return Err(err("unknown unit")),
    };
    let bytes = value * 1024f64.powi(power) / if bits { 8.0 } else { 1.0 };
    if !bytes.is_finite() || bytes < 0.0 || bytes > u64::MAX as f64 {
        return Err(err("out of range"));
    }
    Ok(bytes)
}

/// Parses a duration in whole seconds: a bare number of seconds, or
/// numbers with `s`, `m`, `h`, `d` (`90s`, `5m`, `1h30m`, `2d`); `off`,
/// `none` → 0 (no threshold).
pub fn parse_duration_secs(input: &str) -> Result<u64, UnitError> {
    let err = |reason| UnitError {
        input: input.to_owned(),
        what: "a duration",
        reason,
        hint: DURATION_HINT,
    };
    let text = input.trim();
    if matches!(text.to_ascii_lowercase().as_str(), "off" | "none") {
        return Ok(0);
    }
    if text.is_empty() {
        return Err(err("no number"));
    }
    if let Ok(n) = text.parse::<u64>() {
        return Ok(n);
    }
    let mut total: u64 = 0;
    let mut rest = text;
    while !rest.is_empty() {
        let split = rest
            .find(|c: char| !c.is_ascii_digit())
            .ok_or_else(|| err("a number without a unit (s, m, h, d) after another"))?;
        let (number, tail) = rest.split_at(split);
        let n: u64 = number.parse().map_err(|_| err("no number"))?;
        let unit_len = tail
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(tail.len());
        let (unit, next) = tail.split_at(unit_len);
        let scale = match unit.trim() {
            "s" | "sec" | "secs" => 1,
            "m" | "min" | "mins" => 60,
            "h" => 3600,
            "d" => 86_400,
            _ => return Err(err("unknown unit (s, m, h, d)")),
        };
        total = n
            .checked_mul(scale)
            .and_then(|v| total.checked_add(v))
            .ok_or_else(|| err("out of range"))?;
        rest = next.trim_start();
    }
    Ok(total)
}

/// Formats seconds as the shortest `1h30m`-style text [`parse_duration_secs`]
/// reads back.
pub fn human_duration(secs: u64) -> String {
    if secs == 0 {
        return "0s".to_owned();
    }
    let parts = [
        (secs / 86_400, "d"),
        ((secs % 86_400) / 3600, "h"),
        ((secs % 3600) / 60, "m"),
        (secs % 60, "s"),
    ];
    parts
        .iter()
        .filter(|(n, _)| *n > 0)
        .map(|(n, unit)| format!("{n}{unit}"))
        .collect()
}

/// Formats bytes for humans ("1.50 GiB"); [`parse_bytes`] reads it back.
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

/// Formats a rate for humans ("12.00 MiB/s", "unlimited");
/// [`parse_rate`] reads it back.
pub fn human_rate(rate: Option<u64>) -> String {
    match rate {
        Some(r) => format!("{}/s", human_bytes(r)),
        None => "unlimited".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KIB: u64 = 1024;
    const MIB: u64 = 1024 * KIB;
    const GIB: u64 = 1024 * MIB;

    #[test]
    fn sizes() {
        assert_eq!(parse_bytes("4096").unwrap(), 4096);
        assert_eq!(parse_bytes("100M").unwrap(), 100 * MIB);
        assert_eq!(parse_bytes("100MB").unwrap(), 100 * MIB);
        assert_eq!(parse_bytes("100MiB").unwrap(), 100 * MIB);
        assert_eq!(parse_bytes("100m").unwrap(), 100 * MIB);
        assert_eq!(parse_bytes("4K").unwrap(), 4 * KIB);
        assert_eq!(parse_bytes("1.5GiB").unwrap(), 1_610_612_736);
        assert_eq!(parse_bytes("1.5G").unwrap(), 1_610_612_736);
        assert_eq!(parse_bytes("2T").unwrap(), 2 * 1024 * GIB);
        assert_eq!(parse_bytes("800Mbit").unwrap(), 100 * MIB);
        assert_eq!(parse_bytes("100Mb").unwrap(), 100 * MIB / 8);
        assert!(parse_bytes("12Q").is_err());
        assert!(parse_bytes("").is_err());
        assert!(parse_bytes("M").is_err());
        // A size is not a rate.
        assert!(parse_bytes("100MB/s").is_err());
    }

    /// Every spelling the README shows, and the B/b difference the old
    /// lower-casing lost (`100MBps` meant 12.5 MB/s, `100Mb` megabytes).
    #[test]
    fn every_rate_spelling() {
        let cases: &[(&str, Option<u64>)] = &[
            ("100MB/s", Some(100 * MIB)),
            ("100MBps", Some(100 * MIB)),
            ("100MiB/s", Some(100 * MIB)),
            ("100M", Some(100 * MIB)),
            ("100M/s", Some(100 * MIB)),
            ("800Mbit", Some(100 * MIB)),
            ("800Mbit/s", Some(100 * MIB)),
            ("800Mbps", Some(100 * MIB)),
            ("800mbps", Some(100 * MIB)),
            ("100Mb", Some(100 * MIB / 8)),
            ("100Mb/s", Some(100 * MIB / 8)),
            ("100Mbps", Some(100 * MIB / 8)),
            ("1.5GiB", Some(1_610_612_736)),
            ("1.5GiB/s", Some(1_610_612_736)),
            ("1Gbit", Some(GIB / 8)),
            ("1Gbps", Some(GIB / 8)),
            ("500000", Some(500_000)),
            ("500000B/s", Some(500_000)),
            ("unlimited", None),
            ("Unlimited", None),
            ("none", None),
            ("off", None),
        ];
        for (text, want) in cases {
            assert_eq!(parse_rate(text).unwrap(), *want, "{text}");
        }
        for bad in ["fast", "100MB/h", "100Xps", "/s", "ps"] {
            assert!(parse_rate(bad).is_err(), "{bad}");
        }
    }

    /// What ferry prints reads back as (about) the same value: the parser
    /// and the printer share one convention.
    #[test]
    fn printed_values_parse_back() {
        for n in [
            1,
            1023,
            1024,
            1536,
            100 * MIB,
            12 * MIB + 5,
            3 * GIB / 2,
            5 * GIB * 1024,
        ] {
            let printed = human_bytes(n);
            let back = parse_bytes(&printed).unwrap();
            let tolerance = (n as f64 * 0.005).max(0.5);
            assert!(
                (back as f64 - n as f64).abs() <= tolerance,
                "{n} → {printed} → {back}"
            );
            let rate = human_rate(Some(n));
            let back = parse_rate(&rate).unwrap().unwrap();
            assert!(
                (back as f64 - n as f64).abs() <= tolerance,
                "{n} → {rate} → {back}"
            );
        }
        assert_eq!(human_bytes(100 * MIB), "100.00 MiB");
        assert_eq!(human_rate(Some(100 * MIB)), "100.00 MiB/s");
        assert_eq!(parse_rate(&human_rate(None)).unwrap(), None);
    }

    #[test]
    fn durations() {
        let cases = [
            ("90", 90),
            ("90s", 90),
            ("5m", 300),
            ("1h", 3600),
            ("1h30m", 5400),
            ("1h 30m", 5400),
            ("2d", 172_800),
            ("off", 0),
            ("none", 0),
        ];
        for (text, want) in cases {
            assert_eq!(parse_duration_secs(text).unwrap(), want, "{text}");
        }
        for bad in ["", "5x", "m", "1h30", "-5m"] {
            assert!(parse_duration_secs(bad).is_err(), "{bad}");
        }
        for secs in [1, 59, 60, 61, 3600, 5400, 86_400, 90_061] {
            assert_eq!(parse_duration_secs(&human_duration(secs)).unwrap(), secs);
        }
        assert_eq!(human_duration(5400), "1h30m");
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
