//! An order-preserving UDP delay line for the WAN benchmark
//! (`src/bin/ferry-udp-proxy.rs`, `benches/wan-bench.sh`).
//!
//! A fixed one-way delay without throttling the relay: the receive loop of
//! each direction stamps every datagram with its due time (arrival + delay)
//! and queues it; one release task per direction sends them in arrival
//! order, each at its due time. The receive loop never waits for a timer, so
//! the relay carries whatever rate the sockets do, and a constant delay
//! keeps the order (unlike one timer task per datagram, whose wake-ups
//! within one timer tick come in any order). Timers have tokio's 1 ms
//! resolution: a datagram leaves between `delay` and `delay + 1 ms` late.

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::time::Instant;

/// One queued datagram.
struct Stamped {
    due: Instant,
    to: SocketAddr,
    data: Vec<u8>,
}

/// Datagrams and bytes relayed per direction.
#[derive(Debug, Default)]
pub struct Counters {
    /// Client → target datagrams.
    pub fwd_datagrams: AtomicU64,
    /// Client → target bytes (UDP payload).
    pub fwd_bytes: AtomicU64,
    /// Target → client datagrams.
    pub back_datagrams: AtomicU64,
    /// Target → client bytes.
    pub back_bytes: AtomicU64,
}

/// Socket buffer size asked for each proxy socket: a default 208 KiB
/// receive buffer overflows at 1 Gbit/s whenever the relay task is
/// descheduled for a couple of milliseconds, and those drops would be the
/// proxy's, not the emulated link's.
pub const SOCKET_BUFFER: usize = 16 << 20;

/// Binds a UDP socket with [`SOCKET_BUFFER`]-sized buffers (`SO_RCVBUFFORCE`
/// as root, else capped by `net.core.rmem_max`/`wmem_max`).
pub fn bind(addr: SocketAddr) -> std::io::Result<UdpSocket> {
    use std::os::fd::AsRawFd;
    let socket = std::net::UdpSocket::bind(addr)?;
    let fd = socket.as_raw_fd();
    let size = SOCKET_BUFFER as libc::c_int;
    for (force, plain) in [
        (libc::SO_RCVBUFFORCE, libc::SO_RCVBUF),
        (libc::SO_SNDBUFFORCE, libc::SO_SNDBUF),
    ] {
        // SAFETY: fd is a valid socket for the duration of the call, and the
        // option value is a c_int of the stated length.
        let set = |opt| unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                opt,
                (&size as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if set(force) != 0 {
            set(plain);
        }
    }
    socket.set_nonblocking(true)?;
    UdpSocket::from_std(socket)
}

/// Sends each queued datagram through `socket` at its due time, in queue
/// order. Send errors (a full queue below: the shaped link dropped it) are
/// losses, as on a router.
async fn release(socket: Arc<UdpSocket>, mut queue: mpsc::UnboundedReceiver<Stamped>) {
    while let Some(d) = queue.recv().await {
        if d.due > Instant::now() {
            tokio::time::sleep_until(d.due).await;
        }
        let _ = socket.send_to(&d.data, d.to).await;
    }
}

/// Receives on (connected) `socket` until the queue closes, queueing each
/// datagram for `to`, due `delay` from now.
async fn stamp_loop(
    socket: Arc<UdpSocket>,
    to: SocketAddr,
    delay: Duration,
    queue: mpsc::UnboundedSender<Stamped>,
    datagrams: &'static AtomicU64,
    bytes: &'static AtomicU64,
) {
    let mut buf = vec![0u8; 65_536];
    loop {
        let Ok(len) = socket.recv(&mut buf).await else {
            continue;
        };
        datagrams.fetch_add(1, Ordering::Relaxed);
        bytes.fetch_add(len as u64, Ordering::Relaxed);
        let due = Instant::now() + delay;
        if queue
            .send(Stamped {
                due,
                to,
                data: buf[..len].to_vec(),
            })
            .is_err()
        {
            return;
        }
    }
}

/// Relays datagrams between clients of `listen` and `target`, `delay` each
/// way: one upstream socket per client address, bound to `upstream_bind`
/// (port 0), so the target sees one peer per client. Runs until aborted.
pub async fn relay(
    listen: UdpSocket,
    target: SocketAddr,
    upstream_bind: std::net::IpAddr,
    delay: Duration,
    counters: &'static Counters,
) -> std::io::Result<()> {
    let listen = Arc::new(listen);
    // Client → target: one queue per client (its own upstream socket).
    let mut clients: HashMap<SocketAddr, mpsc::UnboundedSender<Stamped>> = HashMap::new();
    let mut buf = vec![0u8; 65_536];
    loop {
        let (len, client) = listen.recv_from(&mut buf).await?;
        counters.fwd_datagrams.fetch_add(1, Ordering::Relaxed);
        counters.fwd_bytes.fetch_add(len as u64, Ordering::Relaxed);
        let due = Instant::now() + delay;
        let queue = match clients.entry(client) {
            Entry::Occupied(e) => e.into_mut(),
            Entry::Vacant(e) => {
                let upstream = Arc::new(bind((upstream_bind, 0).into())?);
                upstream.connect(target).await?;
                let (fwd_tx, fwd_rx) = mpsc::unbounded_channel();
                tokio::spawn(release(upstream.clone(), fwd_rx));
                let (back_tx, back_rx) = mpsc::unbounded_channel();
                tokio::spawn(release(listen.clone(), back_rx));
                tokio::spawn(stamp_loop(
                    upstream,
                    client,
                    delay,
                    back_tx,
                    &counters.back_datagrams,
                    &counters.back_bytes,
                ));
                e.insert(fwd_tx)
            }
        };
        let _ = queue.send(Stamped {
            due,
            to: target,
            data: buf[..len].to_vec(),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A target that echoes every datagram back.
    async fn echo() -> SocketAddr {
        let s = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = s.local_addr().unwrap();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 65_536];
            while let Ok((n, from)) = s.recv_from(&mut buf).await {
                let _ = s.send_to(&buf[..n], from).await;
            }
        });
        addr
    }

    async fn proxy(delay: Duration) -> SocketAddr {
        let target = echo().await;
        let listen = bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = listen.local_addr().unwrap();
        let counters: &'static Counters = Box::leak(Box::default());
        tokio::spawn(relay(
            listen,
            target,
            "127.0.0.1".parse().unwrap(),
            delay,
            counters,
        ));
        addr
    }

    #[tokio::test]
    async fn a_round_trip_takes_twice_the_delay() {
        let delay = Duration::from_millis(20);
        let addr = proxy(delay).await;
        let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        client.connect(addr).await.unwrap();
        let mut buf = [0u8; 16];
        let t0 = std::time::Instant::now();
        client.send(b"ping").await.unwrap();
        let n = client.recv(&mut buf).await.unwrap();
        let rtt = t0.elapsed();
        assert_eq!(&buf[..n], b"ping");
        assert!(
            rtt >= 2 * delay,
            "round trip {rtt:?} shorter than 2 × {delay:?}"
        );
        assert!(
            rtt < 2 * delay + Duration::from_millis(200),
            "round trip {rtt:?}"
        );
    }

    #[tokio::test]
    async fn a_burst_keeps_its_order_and_is_not_serialized_by_the_delay() {
        // 2000 datagrams through a 50 ms delay each way: one timer per
        // datagram in sequence would take 2000 × 100 ms; the delay line
        // takes one round trip plus the time to send them.
        let delay = Duration::from_millis(50);
        let addr = proxy(delay).await;
        let client = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
        client.connect(addr).await.unwrap();
        let count: u32 = 2000;
        let t0 = std::time::Instant::now();
        let sender = {
            let client = client.clone();
            tokio::spawn(async move {
                for i in 0..count {
                    client.send(&i.to_be_bytes()).await.unwrap();
                    if i % 100 == 99 {
                        // Stay below the loopback socket buffers.
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                }
            })
        };
        let mut buf = [0u8; 16];
        let mut got = Vec::new();
        while got.len() < count as usize {
            let n = tokio::time::timeout(Duration::from_secs(10), client.recv(&mut buf))
                .await
                .expect("datagrams stopped arriving")
                .unwrap();
            got.push(u32::from_be_bytes(buf[..n].try_into().unwrap()));
        }
        sender.await.unwrap();
        let took = t0.elapsed();
        assert_eq!(got, (0..count).collect::<Vec<_>>(), "reordered");
        assert!(took >= 2 * delay, "{took:?}");
        assert!(took < Duration::from_secs(3), "relay serialized: {took:?}");
    }
}
