//! QUIC endpoints with mutual TLS where peers are trusted by certificate fingerprint.
//!
//! There is no certificate authority: each agent has a self-signed certificate
//! ([`crate::identity`]) and a [`TrustStore`] of peer fingerprints. The client
//! (primary) accepts the server only if its fingerprint is the one it was told
//! (`--peer`); the server (standby) accepts a client only if its fingerprint is
//! in its trust store. TLS 1.3 only; the handshake signatures are verified
//! normally, so holding a certificate without its key gets a peer nowhere.
//!
//! Socket buffers and flow-control windows are sized for long fat links (see
//! [`TransportSettings`]): quinn's defaults collapse on a 20 ms path.

use std::collections::HashSet;
use std::net::{SocketAddr, UdpSocket};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use ferry_protocol::AgentId;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};

use crate::identity::{fingerprint_of, Identity};

/// ALPN protocol name of ferry's replication protocol, version 1.
pub const ALPN: &[u8] = b"ferry/1";

/// Why an endpoint could not be set up or a connection failed.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// Binding or configuring the UDP socket failed.
    #[error("binding UDP socket {addr}: {source}")]
    Bind {
        /// Address being bound.
        addr: SocketAddr,
        /// Underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The TLS configuration was rejected (bad key, etc.).
    #[error("TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
    /// quinn refused the crypto configuration.
    #[error("QUIC crypto configuration: {0}")]
    QuicCrypto(String),
    /// A connection could not be started.
    #[error("connecting to {addr}: {source}")]
    Connect {
        /// Peer address.
        addr: SocketAddr,
        /// Underlying error.
        #[source]
        source: quinn::ConnectError,
    },
    /// The handshake failed because one side refused the other's certificate.
    #[error("{addr}: {reason}")]
    Refused {
        /// Peer address.
        addr: SocketAddr,
        /// What was refused and how to fix it.
        reason: String,
    },
    /// The connection failed or was lost.
    #[error("connection to {addr}: {source}")]
    Connection {
        /// Peer address.
        addr: SocketAddr,
        /// Underlying error.
        #[source]
        source: quinn::ConnectionError,
    },
}

/// The fingerprints an agent accepts as peers; shared and changeable at run time.
#[derive(Clone, Debug, Default)]
pub struct TrustStore {
    inner: Arc<RwLock<HashSet<AgentId>>>,
}

impl TrustStore {
    /// A store trusting exactly `peers`.
    pub fn new(peers: impl IntoIterator<Item = AgentId>) -> Self {
        Self {
            inner: Arc::new(RwLock::new(peers.into_iter().collect())),
        }
    }

    /// Whether `peer` is trusted.
    pub fn contains(&self, peer: &AgentId) -> bool {
        match self.inner.read() {
            Ok(set) => set.contains(peer),
            Err(poisoned) => poisoned.into_inner().contains(peer),
        }
    }

    /// Trusts `peer` from now on.
    pub fn insert(&self, peer: AgentId) {
        match self.inner.write() {
            Ok(mut set) => set.insert(peer),
            Err(poisoned) => poisoned.into_inner().insert(peer),
        };
    }

    /// Stops trusting `peer` (existing connections are not closed).
    pub fn remove(&self, peer: &AgentId) {
        match self.inner.write() {
            Ok(mut set) => set.remove(peer),
            Err(poisoned) => poisoned.into_inner().remove(peer),
        };
    }

    /// The trusted fingerprints.
    pub fn list(&self) -> Vec<AgentId> {
        let mut out: Vec<AgentId> = match self.inner.read() {
            Ok(set) => set.iter().copied().collect(),
            Err(poisoned) => poisoned.into_inner().iter().copied().collect(),
        };
        out.sort();
        out
    }
}

/// Flow-control, socket and timeout settings of an endpoint.
#[derive(Clone, Debug)]
pub struct TransportSettings {
    /// Bytes a peer may send on one stream before it is read (default 16 MiB).
    pub stream_window: u32,
    /// Bytes a peer may send on all streams before they are read (default 48 MiB).
    pub connection_window: u32,
    /// Bytes this side keeps unacknowledged in flight (default 48 MiB).
    pub send_window: u64,
    /// SO_RCVBUF / SO_SNDBUF of the UDP socket (default 4 MiB, the most this
    /// kernel grants without a sysctl change; bursts overflow the default 208 KiB).
    pub udp_buffer: usize,
    /// A connection with no traffic for this long is closed (default 10 s).
    pub idle_timeout: Duration,
    /// Keep-alive interval (default 1 s), so a cut link is noticed quickly.
    pub keep_alive: Duration,
    /// Images with much to send a sender runs at once (default 5, as the
    /// DR manual's concurrent snapshot limit; small deltas run beside them,
    /// see `session/sender/admission.rs`). A peer may open this many image
    /// streams, at least [`MAX_IMAGE_STREAMS`], plus one for control.
    pub max_concurrent_images: u32,
    /// Whether extents are compressed before sending (`[transport]
    /// compression`, default `auto`: while the link is the bottleneck).
    pub compression: crate::compression::CompressionMode,
    /// The largest UDP payload path-MTU discovery probes for, and the
    /// largest this endpoint accepts (`[transport] max_udp_payload`,
    /// default [`DEFAULT_MAX_UDP_PAYLOAD`]). Discovery starts at 1200 and
    /// stops below this where the path drops larger datagrams.
    pub max_udp_payload: u16,
    /// Unacknowledged batch bytes of all the images of one group sync
    /// together (`[transport] group_unacked_bytes`, default 64 MiB; each
    /// image may always have one batch out, see
    /// `session/sender/group_window.rs`): what the link needs in flight
    /// does not grow with the number of images, so neither does the sync's
    /// memory.
    pub group_unacked_bytes: u64,
}

/// Default upper bound of path-MTU discovery: a 9000-byte jumbo frame less
/// the IPv6 and UDP headers. Larger datagrams cut the per-packet CPU of
/// QUIC; loopback and jumbo-frame LANs carry them, other paths make
/// discovery settle at what they carry (quinn's own default stops at 1452).
pub const DEFAULT_MAX_UDP_PAYLOAD: u16 = 8952;

/// The smallest `max_udp_payload` QUIC allows.
pub const MIN_UDP_PAYLOAD: u16 = 1200;

impl Default for TransportSettings {
    fn default() -> Self {
        Self {
            stream_window: 16 * 1024 * 1024,
            connection_window: 48 * 1024 * 1024,
            send_window: 48 * 1024 * 1024,
            udp_buffer: 4 * 1024 * 1024,
            idle_timeout: Duration::from_secs(10),
            keep_alive: Duration::from_secs(1),
            max_concurrent_images: 5,
            compression: crate::compression::CompressionMode::Auto,
            max_udp_payload: DEFAULT_MAX_UDP_PAYLOAD,
            group_unacked_bytes: 64 * 1024 * 1024,
        }
    }
}

/// Image streams a peer may open at once on one connection, at least: a
/// protection group's most volumes (the control shim's limit), so a group
/// of small deltas goes at once (`session/sender/admission.rs`);
/// `max_concurrent_images` raises it.
pub const MAX_IMAGE_STREAMS: u32 = 20;

impl TransportSettings {
    fn quinn_transport(&self) -> quinn::TransportConfig {
        let mut config = quinn::TransportConfig::default();
        config
            .stream_receive_window(quinn::VarInt::from_u32(self.stream_window))
            .receive_window(quinn::VarInt::from_u32(self.connection_window))
            .send_window(self.send_window)
            // One control stream, and image streams for a whole group of
            // small deltas (the sender's admission, see
            // session/sender/admission.rs).
            .max_concurrent_bidi_streams(quinn::VarInt::from_u32(
                self.max_concurrent_images.max(MAX_IMAGE_STREAMS) + 1,
            ))
            .max_concurrent_uni_streams(quinn::VarInt::from_u32(0))
            .keep_alive_interval(Some(self.keep_alive));
        // An idle timeout above quinn's varint limit cannot happen with sane
        // settings; fall back to no timeout rather than panicking.
        config.max_idle_timeout(quinn::IdleTimeout::try_from(self.idle_timeout).ok());
        let upper = self.max_udp_payload.max(MIN_UDP_PAYLOAD);
        let mut discovery = quinn::MtuDiscoveryConfig::default();
        discovery.upper_bound(upper);
        config.mtu_discovery_config(Some(discovery));
        config
    }

    /// Endpoint settings: accept datagrams up to `max_udp_payload`.
    fn quinn_endpoint(&self) -> quinn::EndpointConfig {
        let mut config = quinn::EndpointConfig::default();
        // In range by construction (clamped to QUIC's 1200..=65527).
        let _ = config.max_udp_payload_size(self.max_udp_payload.clamp(MIN_UDP_PAYLOAD, 65_527));
        config
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn bind_socket(
    addr: SocketAddr,
    settings: &TransportSettings,
) -> Result<UdpSocket, TransportError> {
    let err = |source| TransportError::Bind { addr, source };
    let domain = if addr.is_ipv4() {
        socket2::Domain::IPV4
    } else {
        socket2::Domain::IPV6
    };
    let socket = socket2::Socket::new(domain, socket2::Type::DGRAM, Some(socket2::Protocol::UDP))
        .map_err(err)?;
    // Best effort: the kernel clamps to its maximum; a failure here only costs speed.
    let _ = socket.set_recv_buffer_size(settings.udp_buffer);
    let _ = socket.set_send_buffer_size(settings.udp_buffer);
    socket.bind(&addr.into()).map_err(err)?;
    Ok(socket.into())
}

/// A QUIC endpoint that accepts connections from trusted peers (the standby side).
pub fn server_endpoint(
    bind: SocketAddr,
    identity: &Identity,
    trust: TrustStore,
    settings: &TransportSettings,
) -> Result<quinn::Endpoint, TransportError> {
    let provider = provider();
    let verifier = TrustedClientVerifier::new(Some(trust));
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(vec![identity.cert().clone()], identity.key())?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls)
        .map_err(|e| TransportError::QuicCrypto(e.to_string()))?;
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    server.transport_config(Arc::new(settings.quinn_transport()));
    let socket = bind_socket(bind, settings)?;
    quinn::Endpoint::new(
        settings.quinn_endpoint(),
        Some(server),
        socket,
        Arc::new(quinn::TokioRuntime),
    )
    .map_err(|source| TransportError::Bind { addr: bind, source })
}

/// A QUIC endpoint for outgoing connections (the primary side).
pub fn client_endpoint(
    remote_hint: SocketAddr,
    settings: &TransportSettings,
) -> Result<quinn::Endpoint, TransportError> {
    let bind: SocketAddr = if remote_hint.is_ipv4() {
        (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let socket = bind_socket(bind, settings)?;
    quinn::Endpoint::new(
        settings.quinn_endpoint(),
        None,
        socket,
        Arc::new(quinn::TokioRuntime),
    )
    .map_err(|source| TransportError::Bind { addr: bind, source })
}

/// Connects to the agent at `addr`, which must present certificate `expected_peer`.
pub async fn connect(
    endpoint: &quinn::Endpoint,
    addr: SocketAddr,
    identity: &Identity,
    expected_peer: AgentId,
    settings: &TransportSettings,
) -> Result<quinn::Connection, TransportError> {
    let provider = provider();
    let verifier = PinnedServerVerifier::new(expected_peer);
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_auth_cert(vec![identity.cert().clone()], identity.key())?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls)
        .map_err(|e| TransportError::QuicCrypto(e.to_string()))?;
    let mut client = quinn::ClientConfig::new(Arc::new(crypto));
    client.transport_config(Arc::new(settings.quinn_transport()));
    let connecting = endpoint
        .connect_with(client, addr, "ferry-agent")
        .map_err(|source| TransportError::Connect { addr, source })?;
    connecting
        .await
        .map_err(|source| explain_connection_error(addr, source, identity.fingerprint()))
}

/// Turns a handshake failure into an operator-readable explanation.
pub fn explain_connection_error(
    addr: SocketAddr,
    source: quinn::ConnectionError,
    own: AgentId,
) -> TransportError {
    let detail = match &source {
        quinn::ConnectionError::TransportError(t) => Some(t.to_string()),
        quinn::ConnectionError::ConnectionClosed(close) => {
            Some(String::from_utf8_lossy(&close.reason).into_owned())
        }
        _ => None,
    };
    // rustls/quinn spell certificate refusals in several ways ("BadCertificate",
    // "invalid peer certificate: UnknownCA", "ApplicationVerificationFailure").
    let refused = detail.as_deref().is_some_and(|text| {
        let text = text.to_ascii_lowercase();
        [
            "certificate",
            "unknownca",
            "unknown ca",
            "applicationverificationfailure",
        ]
        .iter()
        .any(|needle| text.contains(needle))
    });
    match detail {
        Some(text) if refused => TransportError::Refused {
            addr,
            reason: format!(
                "TLS handshake refused ({text}). Either the agent at {addr} does not trust this \
                 agent's fingerprint {own} (start it with `--trust {own}`), or its certificate \
                 is not the one given with --peer"
            ),
        },
        _ => TransportError::Connection { addr, source },
    }
}

/// Fingerprint of the certificate a connected peer presented.
pub fn peer_fingerprint(connection: &quinn::Connection) -> Option<AgentId> {
    let identity = connection.peer_identity()?;
    let certs = identity.downcast::<Vec<CertificateDer<'static>>>().ok()?;
    certs.first().map(|cert| fingerprint_of(cert))
}

/// Both verifiers refuse TLS 1.2 outright (the configs allow only 1.3; this
/// is the second lock on that door).
fn refuse_tls12() -> Result<HandshakeSignatureValid, rustls::Error> {
    Err(rustls::Error::General("TLS 1.2 is not allowed".into()))
}

/// Client side: accept exactly one server certificate, by fingerprint.
/// Shared with the agent's TLS peer API.
#[derive(Debug)]
pub struct PinnedServerVerifier {
    expected: AgentId,
    algorithms: WebPkiSupportedAlgorithms,
}

impl PinnedServerVerifier {
    /// Accepts only a server certificate of fingerprint `expected`.
    pub fn new(expected: AgentId) -> Arc<Self> {
        Arc::new(Self {
            expected,
            algorithms: provider().signature_verification_algorithms,
        })
    }
}

impl ServerCertVerifier for PinnedServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let got = fingerprint_of(end_entity);
        if got == self.expected {
            Ok(ServerCertVerified::assertion())
        } else {
            tracing::warn!(expected = %self.expected, got = %got, "standby presented an unexpected certificate");
            Err(rustls::Error::General(format!(
                "the agent presented certificate fingerprint {got}, but {} was expected (--peer, or the paired service)",
                self.expected
            )))
        }
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        refuse_tls12()
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// Server side: accept clients whose fingerprint is in the trust store
/// (`trust: None`: any client certificate whose handshake signature
/// verifies; the caller checks the fingerprint per request, as the agent's
/// peer API does for pairing).
#[derive(Debug)]
pub struct TrustedClientVerifier {
    trust: Option<TrustStore>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl TrustedClientVerifier {
    /// A verifier for `trust` (see the type's docs for `None`).
    pub fn new(trust: Option<TrustStore>) -> Arc<Self> {
        Arc::new(Self {
            trust,
            algorithms: provider().signature_verification_algorithms,
        })
    }
}

impl ClientCertVerifier for TrustedClientVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let got = fingerprint_of(end_entity);
        if self.trust.as_ref().is_none_or(|t| t.contains(&got)) {
            Ok(ClientCertVerified::assertion())
        } else {
            tracing::warn!(peer = %got, "refusing a peer whose certificate fingerprint is not trusted");
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::ApplicationVerificationFailure,
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        refuse_tls12()
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ident() -> (tempfile::TempDir, Identity) {
        let dir = tempfile::tempdir().unwrap();
        let id = Identity::create(dir.path()).unwrap();
        (dir, id)
    }

    async fn handshake(
        server_trusts_client: bool,
        client_expects_server: bool,
    ) -> Result<AgentId, String> {
        let (_d1, server_id) = ident();
        let (_d2, client_id) = ident();
        let settings = TransportSettings::default();
        let trust = if server_trusts_client {
            TrustStore::new([client_id.fingerprint()])
        } else {
            TrustStore::default()
        };
        let server =
            server_endpoint("127.0.0.1:0".parse().unwrap(), &server_id, trust, &settings).unwrap();
        let addr = server.local_addr().unwrap();
        let accept = tokio::spawn(async move {
            let incoming = server.accept().await.unwrap();
            match incoming.await {
                Ok(conn) => {
                    let peer = peer_fingerprint(&conn);
                    // Keep the connection until the client has read a stream.
                    if let Ok((mut send, _recv)) = conn.accept_bi().await {
                        let _ = send.write_all(b"ok").await;
                        let _ = send.finish();
                        let _ = send.stopped().await;
                    }
                    Ok(peer)
                }
                Err(e) => Err(e.to_string()),
            }
        });
        let client = client_endpoint(addr, &settings).unwrap();
        let expected = if client_expects_server {
            server_id.fingerprint()
        } else {
            client_id.fingerprint()
        };
        let result = async {
            let conn = connect(&client, addr, &client_id, expected, &settings)
                .await
                .map_err(|e| e.to_string())?;
            let (mut send, mut recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
            send.write_all(b"hi").await.map_err(|e| e.to_string())?;
            let got = recv.read_to_end(16).await.map_err(|e| e.to_string())?;
            assert_eq!(got, b"ok");
            Ok::<_, String>(())
        }
        .await;
        let server_side = tokio::time::timeout(Duration::from_secs(5), accept).await;
        result?;
        match server_side {
            Ok(Ok(Ok(Some(peer)))) => Ok(peer),
            other => Err(format!("server side: {other:?}")),
        }
    }

    #[tokio::test]
    async fn mutual_tls_with_trusted_fingerprints_succeeds() {
        let peer = handshake(true, true).await.unwrap();
        assert_ne!(peer.0, [0; 32]);
    }

    #[tokio::test]
    async fn untrusted_client_is_refused() {
        let err = handshake(false, true).await.unwrap_err();
        assert!(!err.is_empty());
    }

    #[tokio::test]
    async fn wrong_server_fingerprint_is_refused() {
        let err = handshake(true, false).await.unwrap_err();
        assert!(
            err.contains("fingerprint") || err.contains("refused"),
            "{err}"
        );
    }
}
