//! Mutual TLS for the agent-to-agent (peer) API: HTTP over TLS 1.3 on TCP,
//! at the same address as the agent's QUIC listener, with the agents' own
//! self-signed certificates.
//!
//! Trust works as for replication ([`ferry_engine::transport`]): the caller
//! pins the server's fingerprint (from the service record or the service
//! key), and the server learns the caller's fingerprint from its client
//! certificate. The TLS layer accepts any client certificate whose handshake
//! signature verifies (a peer that is not trusted yet must be able to present
//! a one-time pairing secret); every peer route except pairing then requires
//! the fingerprint to be in the agent's [`TrustStore`](ferry_engine::transport::TrustStore)
//! (see `api::peer_router`).
//!
//! [`TlsListener`] also serves the operator API when `[api] tls` is on
//! (without client certificates; see `api_tls.rs`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::connect_info::Connected;
use axum::serve::IncomingStream;
use ferry_engine::identity::{fingerprint_of, Identity};
use ferry_engine::transport::{PinnedServerVerifier, TrustedClientVerifier};
use ferry_protocol::AgentId;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::ServerName;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::{TlsAcceptor, TlsConnector};

/// ALPN name of the peer API.
pub const PEER_ALPN: &[u8] = b"ferry-peer-api/1";

/// How long a TLS handshake may take before the connection is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Why the TLS configuration could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// rustls refused the configuration (bad key…).
    #[error("peer API TLS configuration")]
    Config(#[source] rustls::Error),
    /// Binding the TCP listener failed.
    #[error("binding the peer API on TCP {addr}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Client configuration presenting `identity` and accepting only a server
/// whose certificate has fingerprint `expected`.
pub fn client_config(
    identity: &Identity,
    expected: AgentId,
) -> Result<rustls::ClientConfig, TlsError> {
    let provider = provider();
    let verifier = PinnedServerVerifier::new(expected);
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(TlsError::Config)?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_auth_cert(vec![identity.cert().clone()], identity.key())
        .map_err(TlsError::Config)?;
    tls.alpn_protocols = vec![PEER_ALPN.to_vec()];
    Ok(tls)
}

/// Server configuration presenting `identity` and requiring a client
/// certificate (any; its fingerprint is checked per route).
pub fn server_config(identity: &Identity) -> Result<rustls::ServerConfig, TlsError> {
    let provider = provider();
    // Any client certificate: the routes check its fingerprint.
    let verifier = TrustedClientVerifier::new(None);
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(TlsError::Config)?
        .with_client_cert_verifier(verifier)
        .with_single_cert(vec![identity.cert().clone()], identity.key())
        .map_err(TlsError::Config)?;
    tls.alpn_protocols = vec![PEER_ALPN.to_vec()];
    Ok(tls)
}

/// Opens a TLS connection to the peer API at `addr`.
pub async fn connect(
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    let _ = tcp.set_nodelay(true);
    let name = ServerName::try_from("ferry-agent")
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    TlsConnector::from(config).connect(name, tcp).await
}

/// Who is on the other end of a peer API connection.
#[derive(Clone, Copy, Debug)]
pub struct PeerAddr {
    /// TCP address.
    pub addr: SocketAddr,
    /// Fingerprint of the client certificate.
    pub fingerprint: AgentId,
}

impl Connected<IncomingStream<'_, TlsListener>> for PeerAddr {
    fn connect_info(stream: IncomingStream<'_, TlsListener>) -> Self {
        *stream.remote_addr()
    }
}

/// The TLS connections a [`TlsListener`] yields, with who is on the other
/// end (`A`: [`PeerAddr`] for the peer API, the TCP address for the
/// operator API).
type Accepted<A> = (tokio_rustls::server::TlsStream<TcpStream>, A);

/// Names an accepted connection, or drops it (`None`).
type Identify<A> = fn(&tokio_rustls::server::TlsStream<TcpStream>, SocketAddr) -> Option<A>;

/// A TCP listener that completes TLS handshakes (concurrently, each with a
/// timeout) and yields only the connections `identify` names: for the peer
/// API those with a client certificate, for the operator API all.
pub struct TlsListener<A = PeerAddr> {
    local: SocketAddr,
    rx: mpsc::Receiver<Accepted<A>>,
    task: tokio::task::JoinHandle<()>,
}

impl<A> Drop for TlsListener<A> {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A peer API connection's client certificate fingerprint.
fn client_fingerprint(
    tls: &tokio_rustls::server::TlsStream<TcpStream>,
    addr: SocketAddr,
) -> Option<PeerAddr> {
    let fingerprint = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .map(|c| fingerprint_of(c))?;
    Some(PeerAddr { addr, fingerprint })
}

impl TlsListener<PeerAddr> {
    /// Binds `addr` (TCP) and starts accepting.
    pub async fn bind(addr: SocketAddr, config: rustls::ServerConfig) -> Result<Self, TlsError> {
        let tcp = TcpListener::bind(addr)
            .await
            .map_err(|source| TlsError::Bind { addr, source })?;
        Self::start(tcp, addr, config, client_fingerprint)
    }

    /// Starts accepting on an already bound listener.
    pub fn from_std(
        tcp: std::net::TcpListener,
        config: rustls::ServerConfig,
    ) -> Result<Self, TlsError> {
        let addr = tcp
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
        let bind = |source| TlsError::Bind { addr, source };
        tcp.set_nonblocking(true).map_err(bind)?;
        let tcp = TcpListener::from_std(tcp).map_err(bind)?;
        Self::start(tcp, addr, config, client_fingerprint)
    }
}

impl TlsListener<SocketAddr> {
    /// Serves TLS on the bound `tcp` without client certificates (the
    /// operator API: callers show a bearer token).
    pub fn without_client_certs(
        tcp: TcpListener,
        config: rustls::ServerConfig,
    ) -> Result<Self, TlsError> {
        let addr = tcp
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
        Self::start(tcp, addr, config, |_, addr| Some(addr))
    }
}

impl<A: Send + 'static> TlsListener<A> {
    fn start(
        tcp: TcpListener,
        addr: SocketAddr,
        config: rustls::ServerConfig,
        identify: Identify<A>,
    ) -> Result<Self, TlsError> {
        let local = tcp
            .local_addr()
            .map_err(|source| TlsError::Bind { addr, source })?;
        let acceptor = TlsAcceptor::from(Arc::new(config));
        let (tx, rx) = mpsc::channel(16);
        let task = tokio::spawn(async move {
            loop {
                let (stream, remote) = match tcp.accept().await {
                    Ok(s) => s,
                    Err(error) => {
                        tracing::warn!(%error, "TLS API accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let acceptor = acceptor.clone();
                let tx = tx.clone();
                tokio::spawn(async move {
                    let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream))
                        .await
                    {
                        Ok(Ok(tls)) => tls,
                        Ok(Err(error)) => {
                            tracing::debug!(%remote, %error, "TLS API handshake failed");
                            return;
                        }
                        Err(_) => return,
                    };
                    let Some(who) = identify(&tls, remote) else {
                        return;
                    };
                    let _ = tx.send((tls, who)).await;
                });
            }
        });
        Ok(Self { local, rx, task })
    }

    /// The bound address.
    pub fn local(&self) -> SocketAddr {
        self.local
    }
}

impl<A: Send + 'static> axum::serve::Listener for TlsListener<A> {
    type Io = tokio_rustls::server::TlsStream<TcpStream>;
    type Addr = A;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.rx.recv().await {
            Some(conn) => conn,
            // The accept task ended (only when aborted): serve nothing more.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Err(std::io::Error::other(
            "a TLS listener's address has no client fingerprint",
        ))
    }
}
