//! A small HTTP/1.1 JSON client (hyper) for the `ferry` CLI (plain HTTP to
//! the agent's loopback API, bearer token) and for agent-to-agent calls
//! (the peer API over mutual TLS, see `tls.rs`). One request per connection:
//! calls are rare and short.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
pub use hyper::Method;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};

/// Why a call got no HTTP answer.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// TCP or TLS connection failed.
    #[error("cannot connect to {addr}")]
    Connect {
        /// Where.
        addr: SocketAddr,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The HTTP exchange failed.
    #[error("HTTP exchange with {addr} failed")]
    Http {
        /// Where.
        addr: SocketAddr,
        /// The hyper error.
        #[source]
        source: hyper::Error,
    },
    /// The request could not be built.
    #[error("building the request to {addr}{path}")]
    Request {
        /// Where.
        addr: SocketAddr,
        /// The path.
        path: String,
        /// The http error.
        #[source]
        source: hyper::http::Error,
    },
    /// No answer in time.
    #[error("{addr} did not answer within {secs} s")]
    Timeout {
        /// Where.
        addr: SocketAddr,
        /// The timeout.
        secs: u64,
    },
    /// The answer is not JSON.
    #[error("the answer of {addr}{path} is not JSON")]
    BadBody {
        /// Where.
        addr: SocketAddr,
        /// The path.
        path: String,
        /// The parse error.
        #[source]
        source: serde_json::Error,
    },
}

/// Where a call goes.
#[derive(Clone)]
pub enum Target {
    /// Plain HTTP (the loopback operator API).
    Plain(SocketAddr),
    /// HTTP over mutual TLS (the peer API).
    Tls {
        /// The peer's address.
        addr: SocketAddr,
        /// Client config pinning the peer's fingerprint.
        config: Arc<rustls::ClientConfig>,
    },
}

impl Target {
    /// The address called.
    pub fn addr(&self) -> SocketAddr {
        match self {
            Target::Plain(a) => *a,
            Target::Tls { addr, .. } => *addr,
        }
    }
}

/// An HTTP answer with a JSON body (`null` when empty).
#[derive(Clone, Debug)]
pub struct Reply {
    /// HTTP status.
    pub status: u16,
    /// Parsed body.
    pub body: serde_json::Value,
}

impl Reply {
    /// Whether the status is 2xx.
    pub fn ok(&self) -> bool {
        (200..300).contains(&self.status)
    }
}

/// Sends one request and reads the JSON answer.
pub async fn call(
    target: &Target,
    method: Method,
    path: &str,
    token: Option<&str>,
    body: Option<&serde_json::Value>,
    timeout: Duration,
) -> Result<Reply, HttpError> {
    let addr = target.addr();
    let exchange = async {
        match target {
            Target::Plain(addr) => {
                let tcp = tokio::net::TcpStream::connect(addr)
                    .await
                    .map_err(|source| HttpError::Connect {
                        addr: *addr,
                        source,
                    })?;
                exchange(tcp, *addr, method, path, token, body).await
            }
            Target::Tls { addr, config } => {
                let tls = super::tls::connect(*addr, config.clone())
                    .await
                    .map_err(|source| HttpError::Connect {
                        addr: *addr,
                        source,
                    })?;
                exchange(tls, *addr, method, path, token, body).await
            }
        }
    };
    match tokio::time::timeout(timeout, exchange).await {
        Ok(r) => r,
        Err(_) => Err(HttpError::Timeout {
            addr,
            secs: timeout.as_secs(),
        }),
    }
}

async fn exchange<S>(
    io: S,
    addr: SocketAddr,
    method: Method,
    path: &str,
    token: Option<&str>,
    body: Option<&serde_json::Value>,
) -> Result<Reply, HttpError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(|source| HttpError::Http { addr, source })?;
    let driver = tokio::spawn(async move {
        let _ = conn.await;
    });
    let mut builder = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header("host", addr.to_string());
    if let Some(token) = token {
        builder = builder.header("authorization", format!("Bearer {token}"));
    }
    let payload = match body {
        Some(v) => {
            builder = builder.header("content-type", "application/json");
            Bytes::from(v.to_string())
        }
        None => Bytes::new(),
    };
    let request = builder
        .body(Full::new(payload))
        .map_err(|source| HttpError::Request {
            addr,
            path: path.to_owned(),
            source,
        })?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|source| HttpError::Http { addr, source })?;
    let status = response.status().as_u16();
    let bytes = response
        .into_body()
        .collect()
        .await
        .map_err(|source| HttpError::Http { addr, source })?
        .to_bytes();
    driver.abort();
    let body = if bytes.is_empty() {
        serde_json::Value::Null
    } else {
        serde_json::from_slice(&bytes).map_err(|source| HttpError::BadBody {
            addr,
            path: path.to_owned(),
            source,
        })?
    };
    Ok(Reply { status, body })
}
