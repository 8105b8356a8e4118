//! A TCP forwarder that can cut its connections, for link cuts in the
//! control fault harness (the peer API is HTTPS over TCP on the QUIC port
//! number, beside the UDP proxy that carries QUIC).

use std::net::SocketAddr;

/// Forwards TCP connections from a port to `target`; while cut, drops every
/// open connection and closes new ones at once.
pub struct TcpProxy {
    cut: std::sync::Arc<std::sync::atomic::AtomicBool>,
    conns: std::sync::Arc<std::sync::Mutex<Vec<tokio::task::AbortHandle>>>,
}

impl TcpProxy {
    /// Starts forwarding from `listen`; fails if that TCP port is taken
    /// (it is a UDP proxy's port number, free for TCP only by luck).
    pub fn start(
        rt: &tokio::runtime::Runtime,
        listen: SocketAddr,
        target: SocketAddr,
    ) -> std::io::Result<TcpProxy> {
        let listener = rt.block_on(tokio::net::TcpListener::bind(listen))?;
        let cut = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let conns = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (c, list) = (cut.clone(), conns.clone());
        rt.spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if c.load(std::sync::atomic::Ordering::SeqCst) {
                    continue;
                }
                let task = tokio::spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                list.lock().expect("proxy list").push(task.abort_handle());
            }
        });
        Ok(TcpProxy { cut, conns })
    }

    pub fn set_cut(&self, cut: bool) {
        self.cut.store(cut, std::sync::atomic::Ordering::SeqCst);
        if cut {
            for conn in self.conns.lock().expect("proxy list").drain(..) {
                conn.abort();
            }
        }
    }
}
