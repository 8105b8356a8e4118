//! When to compress: the `[transport] compression` mode, the live switch
//! `auto` flips from measured send backpressure (and the link-bound signal
//! the same measurement sets for every mode), and the split of a data extent
//! into runs of zero, incompressible and compressible pieces.
//!
//! A listed extent can be a whole 4 MiB object mixing random data, text and
//! zeroes. The encoder looks at it in [`PIECE`]-sized pieces: zero pieces
//! become zero extents (`write_zeroes` on the standby, nothing on the wire),
//! pieces a byte histogram calls random are stored raw without trying zstd,
//! and only the rest is compressed. Neighbouring pieces of one class stay
//! one extent, so the standby still writes a run in one operation.
//!
//! Compressing pays only when the link, not the CPU, is the bottleneck. In
//! [`CompressionMode::Auto`] the sender measures how much of its time it is
//! blocked on the link (rate limiter, QUIC flow and congestion control, the
//! unacknowledged-bytes cap) and what the path can carry by QUIC's
//! congestion estimate (one congestion window per round trip). It turns
//! zstd on when it was blocked above [`AUTO_ON_BLOCKED_SHARE`] of an
//! [`AUTO_WINDOW`] on a path estimated below [`AUTO_FAST_LINK`] (a link
//! zstd level 1 on one core outruns), and off when it was blocked below
//! [`AUTO_OFF_BLOCKED_SHARE`] or the path is faster. A slow *standby*
//! (its disk, its OSDs) also blocks the sender, through flow control, but
//! leaves the congestion estimate high: compressing would not help it, and
//! it stays off. On a rate-limited link `auto` starts on.
//!
//! The same decision, made whatever the mode, is published as
//! [`LinkBound`]: while it is set, sources stop sending bytes whose only
//! purpose is to save storage operations (the RBD source's bridged gaps
//! between listed extents, [`crate::rbd::RbdSourceOptions::coalesce_gap`]),
//! and the encoder sends the zero blocks inside a data piece as zero
//! extents instead of data. It is also set, from the first batch on, on a
//! *long* path (a base round trip of [`LONG_PATH_RTT`] or more: another
//! site across a WAN): there every wire byte costs, whether or not the
//! sender is held up by the link right now (a sync bound by the storage's
//! IOPS leaves the link idle, but the bytes still cross a metered or shared
//! WAN). The congestion estimate cannot tell a fast WAN from a slow one: on
//! the WAN bench (1 Gbit/s, 20 ms) it read 0.8–1.1 GB/s, the congestion
//! window grown into the shaper's queue while flow control held the sender.
//! A LAN or loopback keeps the bytes that save storage operations unless
//! the link holds the sender.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Size of the pieces a data extent is classified in.
pub const PIECE: usize = 64 * 1024;
/// Pieces smaller than this are not probed (always "compressible").
const PROBE_MIN_LEN: usize = 8 * 1024;
/// `auto` turns zstd on when the sender was blocked on the link for more
/// than this share of a window…
pub const AUTO_ON_BLOCKED_SHARE: f64 = 0.5;
/// …and off when it was blocked less than this share.
pub const AUTO_OFF_BLOCKED_SHARE: f64 = 0.2;
/// Length of one backpressure measurement window.
pub const AUTO_WINDOW: Duration = Duration::from_millis(500);
/// A link carrying this many wire bytes per second or more is not worth
/// compressing for (zstd level 1 does ~0.6–1.6 GB/s per core on mixed data).
pub const AUTO_FAST_LINK: u64 = 400_000_000;
/// A path whose base round trip is at least this is a long one (beyond a
/// metro area): see the module doc.
pub const LONG_PATH_RTT: Duration = Duration::from_millis(5);

/// `[transport] compression`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CompressionMode {
    /// zstd while the link is the bottleneck, none while the CPU is.
    #[default]
    Auto,
    /// Always try zstd (pieces that look random are still stored raw).
    Zstd,
    /// Never compress.
    Off,
}

impl std::str::FromStr for CompressionMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(Self::Auto),
            "zstd" => Ok(Self::Zstd),
            "off" => Ok(Self::Off),
            other => Err(format!(
                "compression must be \"auto\", \"zstd\" or \"off\", not {other:?}"
            )),
        }
    }
}

impl std::fmt::Display for CompressionMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Auto => "auto",
            Self::Zstd => "zstd",
            Self::Off => "off",
        })
    }
}

/// Whether the sender's last measurement window found the link the
/// bottleneck (blocked on it above [`AUTO_ON_BLOCKED_SHARE`] on a path
/// slower than [`AUTO_FAST_LINK`]; cleared below [`AUTO_OFF_BLOCKED_SHARE`]
/// or on a faster path): wire bytes then cost time, storage operations do
/// not. Shared handle; set by [`Backpressure`] in every compression mode.
#[derive(Clone, Debug, Default)]
pub struct LinkBound(Arc<AtomicBool>);

impl LinkBound {
    /// A signal starting at `on`.
    pub fn new(on: bool) -> Self {
        Self(Arc::new(AtomicBool::new(on)))
    }

    /// Whether the link is the bottleneck now.
    pub fn get(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }

    fn set(&self, on: bool) {
        self.0.store(on, Ordering::Relaxed);
    }
}

/// Whether encoders compress now; shared by a pipeline's workers and
/// flipped by the sender in `auto` mode. Carries the [`LinkBound`] signal
/// the same sender measures.
#[derive(Clone, Debug)]
pub struct CompressionSwitch {
    mode: CompressionMode,
    on: Arc<AtomicBool>,
    link: LinkBound,
}

impl CompressionSwitch {
    /// A switch for `mode`; `link_limited` (a send rate limit is set) starts
    /// `auto` and the [`LinkBound`] signal on.
    pub fn new(mode: CompressionMode, link_limited: bool) -> Self {
        let on = match mode {
            CompressionMode::Zstd => true,
            CompressionMode::Off => false,
            CompressionMode::Auto => link_limited,
        };
        Self {
            mode,
            on: Arc::new(AtomicBool::new(on)),
            link: LinkBound::new(link_limited),
        }
    }

    /// Always on (`zstd`), with no link measured (never link-bound): what
    /// an encoder or a pipeline made on its own uses.
    pub fn always() -> Self {
        Self::new(CompressionMode::Zstd, false)
    }

    /// The configured mode.
    pub fn mode(&self) -> CompressionMode {
        self.mode
    }

    /// Whether to try zstd now.
    pub fn is_on(&self) -> bool {
        self.on.load(Ordering::Relaxed)
    }

    /// Whether the link-bound signal is set now.
    pub fn is_link_bound(&self) -> bool {
        self.link.get()
    }

    /// The link-bound signal this switch's sender sets (a shared handle).
    pub fn link_bound(&self) -> LinkBound {
        self.link.clone()
    }

    /// `auto` only: sets the switch; other modes ignore it.
    fn set_auto(&self, on: bool) {
        if self.mode == CompressionMode::Auto {
            self.on.store(on, Ordering::Relaxed);
        }
    }
}

/// Measures the share of time the sender is blocked on the link and flips
/// an `auto` switch at the end of each window.
#[derive(Debug)]
pub struct Backpressure {
    switch: CompressionSwitch,
    window_start: Instant,
    blocked: Duration,
    wire_rate: u64,
    /// The path's base round trip is at least [`LONG_PATH_RTT`].
    long_path: bool,
    decisions: u32,
}

impl Backpressure {
    /// A meter driving `switch`, starting now.
    pub fn new(switch: CompressionSwitch) -> Self {
        Self {
            switch,
            window_start: Instant::now(),
            blocked: Duration::ZERO,
            wire_rate: 0,
            long_path: false,
            decisions: 0,
        }
    }

    /// Records the path's base (smallest seen) round trip; on a long path
    /// the [`LinkBound`] signal goes on at once and stays on. Called before
    /// the first batch (with the handshake's round trip) and with every
    /// measurement.
    pub fn set_base_rtt(&mut self, base_rtt: Duration) {
        self.long_path = base_rtt >= LONG_PATH_RTT;
        if self.long_path {
            self.switch.link.set(true);
        }
    }

    /// Records that the sender was blocked on the link for `blocked` (ending
    /// at `now`) on a path estimated at `wire_rate` bytes/s, and decides
    /// when a window is complete.
    pub fn record_blocked(&mut self, blocked: Duration, now: Instant, wire_rate: u64) {
        self.blocked += blocked;
        self.tick(now, wire_rate);
    }

    /// Closes the window if it is complete (called with no blocking too).
    pub fn tick(&mut self, now: Instant, wire_rate: u64) {
        self.wire_rate = wire_rate;
        let elapsed = now.saturating_duration_since(self.window_start);
        if elapsed < AUTO_WINDOW {
            return;
        }
        let share = self.blocked.as_secs_f64() / elapsed.as_secs_f64();
        let was = self.switch.is_on();
        let slow_link = self.wire_rate < AUTO_FAST_LINK;
        if share > AUTO_ON_BLOCKED_SHARE && slow_link {
            self.switch.set_auto(true);
            self.switch.link.set(true);
        } else if share < AUTO_OFF_BLOCKED_SHARE || !slow_link {
            self.switch.set_auto(false);
            self.switch.link.set(self.long_path);
        }
        if self.switch.mode() == CompressionMode::Auto && was != self.switch.is_on() {
            self.decisions += 1;
            tracing::debug!(
                blocked_share = share,
                wire_rate = self.wire_rate,
                compress = self.switch.is_on(),
                "compression switched"
            );
        }
        tracing::trace!(
            blocked_share = share,
            wire_rate = self.wire_rate,
            long_path = self.long_path,
            link_bound = self.switch.link.get(),
            "backpressure window"
        );
        self.window_start = now;
        self.blocked = Duration::ZERO;
    }

    /// How often `auto` changed its mind so far.
    pub fn decisions(&self) -> u32 {
        self.decisions
    }

    /// Whether zstd is on now.
    pub fn compressing(&self) -> bool {
        self.switch.is_on()
    }

    /// Whether the link is the bottleneck now ([`LinkBound`]).
    pub fn link_bound(&self) -> bool {
        self.switch.link.get()
    }
}

/// What a run of pieces of a data extent is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PieceClass {
    /// Every byte is zero: sent as a zero extent.
    Zero,
    /// Stored raw (looks random, or compression is off).
    Raw,
    /// Worth trying zstd on.
    Compressible,
}

/// A run of same-class pieces: `[start, end)` within the extent's data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Run {
    /// First byte (relative to the extent).
    pub start: usize,
    /// One past the last byte.
    pub end: usize,
    /// What the run is.
    pub class: PieceClass,
}

/// Splits `data` into runs of zero / raw / compressible [`PIECE`]s
/// (`compress`: whether zstd is on; when off, non-zero pieces are raw).
/// With `cut_interior_zeros` (the link is what costs, see [`LinkBound`]),
/// the whole zero 4 KiB blocks *between* data blocks of a piece become
/// zero runs too: no bytes on the wire, one more standby write each.
/// Zero pieces are whole multiples of 4 KiB within the extent, so a zero run
/// keeps the extent's block alignment.
///
/// A piece that is not all zero still gives its leading and trailing whole
/// zero 4 KiB blocks to the zero runs around it. An RBD diff lists an
/// object made since the base snapshot whole, so a 4 KiB write into a fresh
/// object arrives as a 4 MiB extent of zeroes around it; classified in
/// whole pieces it cost a 64 KiB write and 64 KiB on the wire, trimmed it
/// costs its 4 KiB, and the run count stays the same (zero, data, zero).
/// Otherwise zeroes *between* two data blocks of a piece stay in the data
/// run: cutting there would turn one write into three on the standby.
pub fn classify(data: &[u8], compress: bool, cut_interior_zeros: bool) -> Vec<Run> {
    let mut runs: Vec<Run> = Vec::new();
    let mut start = 0;
    while start < data.len() {
        let end = (start + PIECE).min(data.len());
        let piece = &data[start..end];
        // Edges first, so no zero byte is scanned twice: the body of a
        // piece that is not all zero starts within 4 KiB of a non-zero byte.
        let (lead, trail) = zero_edges(piece);
        let (body_start, body_end) = (start + lead, end - trail);
        let body = &data[body_start..body_end];
        if crate::rbddiff::is_zero(body) {
            push_run(&mut runs, start, end, PieceClass::Zero);
            start = end;
            continue;
        }
        let class = if !compress || looks_incompressible(body) {
            PieceClass::Raw
        } else {
            PieceClass::Compressible
        };
        push_run(&mut runs, start, body_start, PieceClass::Zero);
        if cut_interior_zeros {
            push_blocks(&mut runs, data, body_start, body_end, class);
        } else {
            push_run(&mut runs, body_start, body_end, class);
        }
        push_run(&mut runs, body_end, end, PieceClass::Zero);
        start = end;
    }
    runs
}

/// Appends `[start, end)` (a piece's body: it starts and ends with a data
/// block) block by block: whole zero [`ZERO_EDGE_BLOCK`]s as zero runs, the
/// rest as `class`. Blocks are counted from `start`, which is the piece's
/// start plus whole blocks.
fn push_blocks(runs: &mut Vec<Run>, data: &[u8], start: usize, end: usize, class: PieceClass) {
    let mut at = start;
    while at < end {
        let stop = (at + ZERO_EDGE_BLOCK).min(end);
        let block = &data[at..stop];
        let zero = block.len() == ZERO_EDGE_BLOCK && crate::rbddiff::is_zero(block);
        push_run(runs, at, stop, if zero { PieceClass::Zero } else { class });
        at = stop;
    }
}

/// Size of the blocks a non-zero piece's zero edges are trimmed in.
const ZERO_EDGE_BLOCK: usize = 4096;

/// Bytes of whole zero [`ZERO_EDGE_BLOCK`]s at the start and at the end of
/// a piece that is not all zero (blocks counted from the piece's start; a
/// short last block is never trimmed).
fn zero_edges(piece: &[u8]) -> (usize, usize) {
    let zero_block = |b: &&[u8]| b.len() == ZERO_EDGE_BLOCK && crate::rbddiff::is_zero(b);
    let lead = piece.chunks(ZERO_EDGE_BLOCK).take_while(zero_block).count();
    let trail = piece
        .chunks(ZERO_EDGE_BLOCK)
        .skip(lead)
        .rev()
        .take_while(zero_block)
        .count();
    (lead * ZERO_EDGE_BLOCK, trail * ZERO_EDGE_BLOCK)
}

/// Appends `[start, end)` as `class`, joining the last run if it is of the
/// same class; an empty range adds nothing.
fn push_run(runs: &mut Vec<Run>, start: usize, end: usize, class: PieceClass) {
    if start == end {
        return;
    }
    match runs.last_mut() {
        Some(last) if last.class == class && last.end == start => last.end = end,
        _ => runs.push(Run { start, end, class }),
    }
}

/// Cheap probe for data zstd cannot shrink (already compressed or encrypted):
/// four 1 KiB windows spread over the piece must each show nearly all 256
/// byte values with a flat histogram. It costs < 0.1 % of compressing, and a
/// wrong "incompressible" only loses compression, never correctness. It can
/// miss redundancy that a histogram does not see (e.g. the same random block
/// repeated within one piece); that is the price of not trying.
pub fn looks_incompressible(data: &[u8]) -> bool {
    if data.len() < PROBE_MIN_LEN {
        return false;
    }
    const WINDOW: usize = 1024;
    const WINDOWS: usize = 4;
    let stride = (data.len() - WINDOW) / (WINDOWS - 1);
    (0..WINDOWS).all(|i| {
        let start = i * stride;
        let mut histogram = [0u16; 256];
        for &byte in &data[start..start + WINDOW] {
            histogram[byte as usize] += 1;
        }
        let distinct = histogram.iter().filter(|&&count| count > 0).count();
        let max = histogram.iter().copied().max().unwrap_or(0);
        // Uniform random bytes: ~252 distinct values, max count ~10-12.
        distinct >= 240 && max <= 16
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{RngCore, SeedableRng};

    fn random(len: usize, seed: u64) -> Vec<u8> {
        let mut v = vec![0u8; len];
        rand_chacha::ChaCha8Rng::seed_from_u64(seed).fill_bytes(&mut v);
        v
    }

    fn text(len: usize) -> Vec<u8> {
        b"2026-12-06 replication cycle committed group=db1 bytes=4096\n"
            .iter()
            .copied()
            .cycle()
            .take(len)
            .collect()
    }

    #[test]
    fn probe_flags_random_but_not_text_or_zero() {
        assert!(looks_incompressible(&random(1 << 20, 5)));
        assert!(!looks_incompressible(&text(1 << 20)));
        assert!(!looks_incompressible(&vec![0u8; 1 << 20]));
        let mut mixed = random(1 << 20, 6);
        mixed[..256 * 1024].fill(0);
        assert!(!looks_incompressible(&mixed));
    }

    #[test]
    fn a_mixed_object_splits_into_runs_of_its_parts() {
        let mut data = random(2 * PIECE, 1);
        data.extend(vec![0u8; 3 * PIECE]);
        data.extend(text(PIECE + 4096));
        let runs = classify(&data, true, false);
        let classes: Vec<_> = runs.iter().map(|r| (r.class, r.end - r.start)).collect();
        assert_eq!(
            classes,
            vec![
                (PieceClass::Raw, 2 * PIECE),
                (PieceClass::Zero, 3 * PIECE),
                (PieceClass::Compressible, PIECE + 4096),
            ]
        );
        // Off: zeroes are still found, the rest is raw.
        let off: Vec<_> = classify(&data, false, false)
            .iter()
            .map(|r| r.class)
            .collect();
        assert_eq!(
            off,
            vec![PieceClass::Raw, PieceClass::Zero, PieceClass::Raw]
        );
        // Runs tile the data exactly.
        assert_eq!(runs.first().map(|r| r.start), Some(0));
        assert_eq!(runs.last().map(|r| r.end), Some(data.len()));
        assert!(runs.windows(2).all(|w| w[0].end == w[1].start));
    }

    /// `classify`'s runs as (class, start, end).
    fn runs_of(data: &[u8], compress: bool, cut: bool) -> Vec<(PieceClass, usize, usize)> {
        classify(data, compress, cut)
            .iter()
            .map(|r| (r.class, r.start, r.end))
            .collect()
    }

    #[test]
    fn zero_edges_of_a_piece_join_the_zero_runs() {
        // A fresh 4 MiB object with one 4 KiB write in its second piece.
        let mut data = vec![0u8; 4 << 20];
        let at = PIECE + 5 * 4096;
        data[at..at + 4096].copy_from_slice(&random(4096, 9));
        let runs: Vec<_> = runs_of(&data, false, false);
        assert_eq!(
            runs,
            vec![
                (PieceClass::Zero, 0, at),
                (PieceClass::Raw, at, at + 4096),
                (PieceClass::Zero, at + 4096, 4 << 20),
            ]
        );
        // Zeroes between two written blocks of one piece stay in the run.
        let second = at + 3 * 4096;
        data[second..second + 4096].copy_from_slice(&random(4096, 10));
        let runs: Vec<_> = runs_of(&data, false, false);
        assert_eq!(runs[1], (PieceClass::Raw, at, second + 4096));
        assert_eq!(runs.len(), 3);
        // Cut when the link is what costs: each written block is a run.
        let runs: Vec<_> = runs_of(&data, false, true);
        assert_eq!(
            runs,
            vec![
                (PieceClass::Zero, 0, at),
                (PieceClass::Raw, at, at + 4096),
                (PieceClass::Zero, at + 4096, second),
                (PieceClass::Raw, second, second + 4096),
                (PieceClass::Zero, second + 4096, 4 << 20),
            ]
        );
        // A short last block is not trimmed, and a block not all zero
        // (one byte) is data.
        let mut odd = vec![0u8; 4096 + 100];
        odd[4096 + 99] = 1;
        let runs: Vec<_> = runs_of(&odd, false, false);
        assert_eq!(
            runs,
            vec![(PieceClass::Zero, 0, 4096), (PieceClass::Raw, 4096, 4196)]
        );
    }

    #[test]
    fn auto_follows_the_blocked_share_and_fixed_modes_do_not() {
        let t0 = Instant::now();
        let auto = CompressionSwitch::new(CompressionMode::Auto, false);
        let mut meter = Backpressure::new(auto.clone());
        assert!(!auto.is_on());
        let slow = 100_000_000; // a 1 Gbit/s link, bytes/s
                                // Blocked 400 of 600 ms on a slow link: on.
        meter.record_blocked(
            Duration::from_millis(400),
            t0 + Duration::from_millis(600),
            slow,
        );
        assert!(auto.is_on());
        // Blocked 100 of 700 ms (14 %, under the off threshold): off.
        let t1 = t0 + Duration::from_millis(1300);
        meter.record_blocked(Duration::from_millis(100), t1, slow);
        assert!(!auto.is_on());
        assert_eq!(meter.decisions(), 2);
        // Blocked all the time, but on a link faster than zstd: stays off.
        let t2 = t1 + Duration::from_millis(600);
        meter.record_blocked(Duration::from_millis(600), t2, 2 * AUTO_FAST_LINK);
        assert!(!auto.is_on());
        let zstd = CompressionSwitch::new(CompressionMode::Zstd, false);
        let mut fixed = Backpressure::new(zstd.clone());
        fixed.tick(t0 + Duration::from_secs(1), 2 * AUTO_FAST_LINK);
        assert!(zstd.is_on());
        let off = CompressionSwitch::new(CompressionMode::Off, true);
        let mut fixed = Backpressure::new(off.clone());
        fixed.record_blocked(Duration::from_secs(1), t0 + Duration::from_secs(1), slow);
        assert!(!off.is_on());
        assert!(CompressionSwitch::new(CompressionMode::Auto, true).is_on());
    }

    #[test]
    fn the_link_bound_signal_follows_the_meter_in_every_mode() {
        let t0 = Instant::now();
        let slow = 100_000_000;
        for mode in [
            CompressionMode::Auto,
            CompressionMode::Zstd,
            CompressionMode::Off,
        ] {
            let switch = CompressionSwitch::new(mode, false);
            let link = switch.link_bound();
            let mut meter = Backpressure::new(switch);
            assert!(!link.get(), "{mode}: no limit, not measured yet");
            meter.record_blocked(
                Duration::from_millis(400),
                t0 + Duration::from_millis(600),
                slow,
            );
            assert!(link.get(), "{mode}: blocked 2/3 of a window on a slow path");
            // Blocked, but on a path faster than AUTO_FAST_LINK: the
            // standby (flow control) holds the sender, not the link.
            meter.record_blocked(
                Duration::from_millis(600),
                t0 + Duration::from_millis(1200),
                2 * AUTO_FAST_LINK,
            );
            assert!(!link.get(), "{mode}: fast path");
        }
        // A rate limit starts it on; an encoder's own switch never is.
        assert!(CompressionSwitch::new(CompressionMode::Off, true)
            .link_bound()
            .get());
        assert!(!CompressionSwitch::always().link_bound().get());
    }

    #[test]
    fn a_long_path_is_link_bound_and_a_short_one_when_the_meter_says_so() {
        let t0 = Instant::now();
        let at = |ms| t0 + Duration::from_millis(ms);
        let slow = 100_000_000;
        // A LAN: the signal waits for the meter.
        let switch = CompressionSwitch::new(CompressionMode::Auto, false);
        let link = switch.link_bound();
        let mut meter = Backpressure::new(switch);
        meter.set_base_rtt(Duration::from_micros(200));
        assert!(!link.get());
        meter.tick(at(600), slow);
        assert!(!link.get(), "idle LAN");
        // A WAN: on from the handshake, before any estimate, and while the
        // sender is not held up at all (storage-bound).
        let switch = CompressionSwitch::new(CompressionMode::Auto, false);
        let link = switch.link_bound();
        let compressing = switch.clone();
        let mut meter = Backpressure::new(switch);
        meter.set_base_rtt(Duration::from_millis(20));
        assert!(link.get(), "long path, no estimate yet");
        meter.tick(at(600), slow);
        assert!(link.get(), "long, idle");
        assert!(
            !compressing.is_on(),
            "auto compression still follows the meter"
        );
        // Whatever the congestion estimate says (it overshoots on a WAN).
        meter.tick(at(1200), 2 * AUTO_FAST_LINK);
        assert!(link.get(), "long, estimated fast");
        assert!(!compressing.is_on());
    }
}
