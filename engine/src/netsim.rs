//! A seeded UDP impairment proxy: loss, delay, jitter (reordering),
//! duplication and blackhole (link cut), for demos and tests.
//!
//! This kernel has no netem, so link faults come from here: the proxy listens
//! on a loopback port and relays every datagram to the target, one upstream
//! socket per client address, applying the current [`Impairment`] in both
//! directions. All randomness comes from one seeded ChaCha RNG, so a failing
//! scenario replays from its seed (given the same packet order).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tokio::net::UdpSocket;
use tokio::task::JoinHandle;

/// What the proxy does to each datagram.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Impairment {
    /// Probability (0..=1) that a datagram is dropped.
    pub loss: f64,
    /// Fixed one-way delay added to every datagram.
    pub delay: Duration,
    /// Extra random delay in `[0, jitter)`; datagrams overtake each other.
    pub jitter: Duration,
    /// Probability (0..=1) that a datagram is sent twice.
    pub duplicate: f64,
}

/// Counters of what the proxy did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProxyStats {
    /// Datagrams relayed (counting duplicates once).
    pub forwarded: u64,
    /// Datagrams dropped by loss or blackhole.
    pub dropped: u64,
    /// Extra copies sent.
    pub duplicated: u64,
}

struct Shared {
    impairment: Mutex<Impairment>,
    blackhole: AtomicBool,
    rng: Mutex<ChaCha8Rng>,
    forwarded: AtomicU64,
    dropped: AtomicU64,
    duplicated: AtomicU64,
}

impl Shared {
    /// Decides the fate of one datagram: the delays at which copies are sent
    /// (empty = dropped).
    fn fate(&self) -> Vec<Duration> {
        if self.blackhole.load(Ordering::Relaxed) {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return Vec::new();
        }
        let imp = match self.impairment.lock() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        };
        let mut rng = match self.rng.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        if imp.loss > 0.0 && rng.gen_bool(imp.loss.clamp(0.0, 1.0)) {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return Vec::new();
        }
        let delay = |rng: &mut ChaCha8Rng| {
            let jitter = if imp.jitter.is_zero() {
                Duration::ZERO
            } else {
                imp.jitter.mul_f64(rng.gen::<f64>())
            };
            imp.delay + jitter
        };
        let mut out = vec![delay(&mut rng)];
        self.forwarded.fetch_add(1, Ordering::Relaxed);
        if imp.duplicate > 0.0 && rng.gen_bool(imp.duplicate.clamp(0.0, 1.0)) {
            out.push(delay(&mut rng));
            self.duplicated.fetch_add(1, Ordering::Relaxed);
        }
        out
    }
}

/// A running proxy; dropping it stops it.
pub struct UdpProxy {
    listen_addr: SocketAddr,
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

impl Drop for UdpProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn send_later(socket: Arc<UdpSocket>, data: Vec<u8>, to: SocketAddr, delays: Vec<Duration>) {
    for delay in delays {
        if delay.is_zero() {
            let _ = socket.send_to(&data, to).await;
        } else {
            let socket = socket.clone();
            let data = data.clone();
            tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                let _ = socket.send_to(&data, to).await;
            });
        }
    }
}

impl UdpProxy {
    /// Starts a proxy on `listen` (e.g. `127.0.0.1:0`) relaying to `target`.
    pub async fn start(
        listen: SocketAddr,
        target: SocketAddr,
        seed: u64,
        impairment: Impairment,
    ) -> std::io::Result<Self> {
        let socket = Arc::new(UdpSocket::bind(listen).await?);
        let listen_addr = socket.local_addr()?;
        let shared = Arc::new(Shared {
            impairment: Mutex::new(impairment),
            blackhole: AtomicBool::new(false),
            rng: Mutex::new(ChaCha8Rng::seed_from_u64(seed)),
            forwarded: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            duplicated: AtomicU64::new(0),
        });
        let task = tokio::spawn(run(socket, target, shared.clone()));
        Ok(Self {
            listen_addr,
            shared,
            task,
        })
    }

    /// Where clients should send (the proxy's own address).
    pub fn listen_addr(&self) -> SocketAddr {
        self.listen_addr
    }

    /// Cuts (`true`) or restores (`false`) the link in both directions.
    pub fn set_blackhole(&self, cut: bool) {
        self.shared.blackhole.store(cut, Ordering::Relaxed);
    }

    /// Replaces the impairment for datagrams from now on.
    pub fn set_impairment(&self, impairment: Impairment) {
        match self.shared.impairment.lock() {
            Ok(mut g) => *g = impairment,
            Err(p) => *p.into_inner() = impairment,
        }
    }

    /// What the proxy has done so far.
    pub fn stats(&self) -> ProxyStats {
        ProxyStats {
            forwarded: self.shared.forwarded.load(Ordering::Relaxed),
            dropped: self.shared.dropped.load(Ordering::Relaxed),
            duplicated: self.shared.duplicated.load(Ordering::Relaxed),
        }
    }
}

async fn run(listen: Arc<UdpSocket>, target: SocketAddr, shared: Arc<Shared>) {
    let upstreams: Arc<Mutex<HashMap<SocketAddr, Arc<UdpSocket>>>> = Arc::default();
    let mut buf = vec![0u8; 65_536];
    loop {
        let (len, client) = match listen.recv_from(&mut buf).await {
            Ok(x) => x,
            Err(_) => continue,
        };
        let existing = match upstreams.lock() {
            Ok(map) => map.get(&client).cloned(),
            Err(p) => p.into_inner().get(&client).cloned(),
        };
        let upstream = match existing {
            Some(u) => u,
            None => {
                let bind: SocketAddr = if target.is_ipv4() {
                    ([127, 0, 0, 1], 0).into()
                } else {
                    (std::net::Ipv6Addr::LOCALHOST, 0).into()
                };
                let Ok(sock) = UdpSocket::bind(bind).await else {
                    continue;
                };
                let sock = Arc::new(sock);
                match upstreams.lock() {
                    Ok(mut map) => map.insert(client, sock.clone()),
                    Err(p) => p.into_inner().insert(client, sock.clone()),
                };
                tokio::spawn(relay_back(
                    sock.clone(),
                    listen.clone(),
                    client,
                    shared.clone(),
                ));
                sock
            }
        };
        let delays = shared.fate();
        if !delays.is_empty() {
            send_later(upstream, buf[..len].to_vec(), target, delays).await;
        }
    }
}

async fn relay_back(
    upstream: Arc<UdpSocket>,
    listen: Arc<UdpSocket>,
    client: SocketAddr,
    shared: Arc<Shared>,
) {
    let mut buf = vec![0u8; 65_536];
    loop {
        let len = match upstream.recv(&mut buf).await {
            Ok(len) => len,
            Err(_) => continue,
        };
        let delays = shared.fate();
        if !delays.is_empty() {
            send_later(listen.clone(), buf[..len].to_vec(), client, delays).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn echo_server() -> SocketAddr {
        let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = sock.local_addr().unwrap();
        tokio::spawn(async move {
            let mut buf = [0u8; 2048];
            loop {
                let (n, from) = sock.recv_from(&mut buf).await.unwrap();
                sock.send_to(&buf[..n], from).await.unwrap();
            }
        });
        addr
    }

    #[tokio::test]
    async fn relays_both_ways_and_blackhole_cuts_the_link() {
        let target = echo_server().await;
        let proxy = UdpProxy::start(
            "127.0.0.1:0".parse().unwrap(),
            target,
            7,
            Impairment::default(),
        )
        .await
        .unwrap();
        let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        client.send_to(b"ping", proxy.listen_addr()).await.unwrap();
        let mut buf = [0u8; 16];
        let n = tokio::time::timeout(Duration::from_secs(2), client.recv(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&buf[..n], b"ping");

        proxy.set_blackhole(true);
        client.send_to(b"lost", proxy.listen_addr()).await.unwrap();
        let got = tokio::time::timeout(Duration::from_millis(300), client.recv(&mut buf)).await;
        assert!(got.is_err(), "a blackholed link must not deliver");
        assert!(proxy.stats().dropped >= 1);
    }

    #[tokio::test]
    async fn same_seed_gives_same_loss_pattern() {
        let pattern = |seed| {
            let shared = Shared {
                impairment: Mutex::new(Impairment {
                    loss: 0.3,
                    ..Impairment::default()
                }),
                blackhole: AtomicBool::new(false),
                rng: Mutex::new(ChaCha8Rng::seed_from_u64(seed)),
                forwarded: AtomicU64::new(0),
                dropped: AtomicU64::new(0),
                duplicated: AtomicU64::new(0),
            };
            (0..200)
                .map(|_| shared.fate().is_empty())
                .collect::<Vec<_>>()
        };
        assert_eq!(pattern(42), pattern(42));
        assert_ne!(pattern(42), pattern(43));
        let drops = pattern(42).iter().filter(|d| **d).count();
        assert!((30..=90).contains(&drops), "{drops}");
    }
}
