//! `ferry-udp-proxy`: a UDP relay adding a fixed one-way delay in both
//! directions, for `benches/wan-bench.sh` (the WAN job: a 20 ms round trip
//! in front of a `tc tbf` rate limit). Order-preserving and never blocking
//! its receive loops (see `ferry_benches::delay_line`).
//!
//! ```text
//! ferry-udp-proxy --listen IP:PORT --target IP:PORT --delay-ms MS [--upstream-bind IP]
//! ```
//!
//! Prints `ready LISTEN_ADDR` on stdout once bound; on SIGTERM or SIGINT it
//! prints what it relayed (datagrams and bytes per direction) and exits.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::{bail, Context};
use ferry_benches::delay_line::{bind, relay, Counters};
use tokio::signal::unix::{signal, SignalKind};

fn usage() -> anyhow::Error {
    anyhow::anyhow!(
        "usage: ferry-udp-proxy --listen IP:PORT --target IP:PORT --delay-ms MS [--upstream-bind IP]"
    )
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let mut listen: Option<SocketAddr> = None;
    let mut target: Option<SocketAddr> = None;
    let mut delay_ms: Option<f64> = None;
    let mut upstream: Option<IpAddr> = None;
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args.next().ok_or_else(usage)?;
        match flag.as_str() {
            "--listen" => listen = Some(value.parse().context("--listen")?),
            "--target" => target = Some(value.parse().context("--target")?),
            "--delay-ms" => delay_ms = Some(value.parse().context("--delay-ms")?),
            "--upstream-bind" => upstream = Some(value.parse().context("--upstream-bind")?),
            _ => return Err(usage()),
        }
    }
    let (Some(listen), Some(target), Some(delay_ms)) = (listen, target, delay_ms) else {
        return Err(usage());
    };
    if !(0.0..=10_000.0).contains(&delay_ms) {
        bail!("--delay-ms must be within 0..=10000");
    }
    let upstream = upstream.unwrap_or(if target.is_ipv4() {
        IpAddr::from([0, 0, 0, 0])
    } else {
        IpAddr::from([0u16; 8])
    });
    let socket = bind(listen).with_context(|| format!("binding {listen}"))?;
    println!("ready {}", socket.local_addr()?);
    let counters: &'static Counters = Box::leak(Box::default());
    let delay = Duration::from_secs_f64(delay_ms / 1000.0);
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::select! {
        r = relay(socket, target, upstream, delay, counters) => r?,
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    eprintln!(
        "relayed: client->target {} datagrams {} bytes; target->client {} datagrams {} bytes",
        counters.fwd_datagrams.load(Ordering::Relaxed),
        counters.fwd_bytes.load(Ordering::Relaxed),
        counters.back_datagrams.load(Ordering::Relaxed),
        counters.back_bytes.load(Ordering::Relaxed),
    );
    Ok(())
}
