//! A small HTTP/1.1 JSON client (hyper) for the `ferry` CLI (plain HTTP to
//! the agent's loopback API, bearer token) and for agent-to-agent calls
//! (the peer API over mutual TLS, see `tls.rs`). One request per connection:
//! calls are rare and short. An answer's body is read up to
//! [`MAX_RESPONSE_BYTES`]: a misbehaving or hostile server cannot make the
//! CLI or an agent buffer without bound.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
pub use hyper::Method;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};

/// The largest answer body read (16 MiB: the largest real answers, a long
/// operations list or a group with 20 resources and their points, are a
/// few hundred KiB).
pub const MAX_RESPONSE_BYTES: usize = 16 << 20;

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
    /// Reading the answer's body failed.
    #[error("reading the answer of {addr} failed")]
    Body {
        /// Where.
        addr: SocketAddr,
        /// The hyper error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The answer's body is larger than the client accepts.
    #[error("the answer of {addr}{path} is larger than {limit} bytes; refusing to read it (is {addr} a ferry agent?)")]
    TooLarge {
        /// Where.
        addr: SocketAddr,
        /// The path.
        path: String,
        /// The cap.
        limit: usize,
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

/// Sends one request and reads the JSON answer (at most
/// [`MAX_RESPONSE_BYTES`]).
pub async fn call(
    target: &Target,
    method: Method,
    path: &str,
    token: Option<&str>,
    body: Option<&serde_json::Value>,
    timeout: Duration,
) -> Result<Reply, HttpError> {
    let request = Call {
        method,
        path,
        token,
        body,
        limit: MAX_RESPONSE_BYTES,
        forwarded_by: None,
    };
    call_limited(target, request, timeout).await
}

/// One request: what [`call`] sends, with the cap on the answer's body.
pub struct Call<'a> {
    /// The method.
    pub method: Method,
    /// Path and query.
    pub path: &'a str,
    /// Bearer token.
    pub token: Option<&'a str>,
    /// JSON body.
    pub body: Option<&'a serde_json::Value>,
    /// The largest answer body read.
    pub limit: usize,
    /// The agent forwarding this request to the one that carries it out
    /// (header [`FORWARDED_BY`]): never forwarded again.
    pub forwarded_by: Option<&'a str>,
}

/// The header naming the agent of the site that forwarded a request.
pub const FORWARDED_BY: &str = "x-ferry-forwarded-by";

/// Sends `request` and reads the JSON answer.
pub async fn call_limited(
    target: &Target,
    request: Call<'_>,
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
                exchange(tcp, *addr, request).await
            }
            Target::Tls { addr, config } => {
                let tls = super::tls::connect(*addr, config.clone())
                    .await
                    .map_err(|source| HttpError::Connect {
                        addr: *addr,
                        source,
                    })?;
                exchange(tls, *addr, request).await
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

async fn exchange<S>(io: S, addr: SocketAddr, request: Call<'_>) -> Result<Reply, HttpError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(|source| HttpError::Http { addr, source })?;
    let driver = tokio::spawn(async move {
        let _ = conn.await;
    });
    let Call {
        method,
        path,
        token,
        body,
        limit,
        forwarded_by,
    } = request;
    let mut builder = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header("host", addr.to_string());
    if let Some(token) = token {
        builder = builder.header("authorization", format!("Bearer {token}"));
    }
    if let Some(agent) = forwarded_by {
        builder = builder.header(FORWARDED_BY, agent);
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
    let too_large = || HttpError::TooLarge {
        addr,
        path: path.to_owned(),
        limit,
    };
    let declared = response
        .headers()
        .get(hyper::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        driver.abort();
        return Err(too_large());
    }
    let collected = http_body_util::Limited::new(response.into_body(), limit)
        .collect()
        .await;
    driver.abort();
    let bytes = match collected {
        Ok(c) => c.to_bytes(),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => return Err(too_large()),
        Err(source) => return Err(HttpError::Body { addr, source }),
    };
    let body = parse_body(&bytes, status).map_err(|source| HttpError::BadBody {
        addr,
        path: path.to_owned(),
        source,
    })?;
    Ok(Reply { status, body })
}

/// The JSON of an answer's body (`null` when empty). A failure status with a
/// body that is not JSON (a proxy's page, the HTTP layer's own refusal of a
/// malformed request) becomes `{"error": TEXT}`, so it reads like the
/// agent's own errors; a success must be JSON.
fn parse_body(bytes: &[u8], status: u16) -> Result<serde_json::Value, serde_json::Error> {
    if bytes.is_empty() {
        return Ok(serde_json::Value::Null);
    }
    match serde_json::from_slice(bytes) {
        Ok(v) => Ok(v),
        Err(_) if !(200..300).contains(&status) => {
            let text: String = String::from_utf8_lossy(bytes).chars().take(1000).collect();
            Ok(serde_json::json!({ "error": text.trim() }))
        }
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A one-shot HTTP server answering `head` then `body_len` bytes of `x`.
    async fn serve_once(head: String, body_len: usize) -> SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf).await;
            let _ = s.write_all(head.as_bytes()).await;
            let chunk = vec![b'x'; 64 * 1024];
            let mut left = body_len;
            while left > 0 {
                let n = left.min(chunk.len());
                if s.write_all(&chunk[..n]).await.is_err() {
                    return;
                }
                left -= n;
            }
        });
        addr
    }

    async fn get(addr: SocketAddr, limit: usize) -> Result<Reply, HttpError> {
        let call = Call {
            method: Method::GET,
            path: "/v1/status",
            token: None,
            body: None,
            limit,
            forwarded_by: None,
        };
        call_limited(&Target::Plain(addr), call, Duration::from_secs(10)).await
    }

    #[tokio::test]
    async fn an_answer_over_the_cap_is_refused_with_or_without_a_length() {
        // Declared too large: refused before reading the body.
        let head = "HTTP/1.1 200 OK\r\ncontent-length: 2000000\r\n\r\n".to_owned();
        let addr = serve_once(head, 2_000_000).await;
        let err = get(addr, 1 << 20).await.unwrap_err();
        assert!(
            matches!(err, HttpError::TooLarge { limit, .. } if limit == 1 << 20),
            "{err}"
        );
        assert!(
            err.to_string().contains("larger than 1048576 bytes"),
            "{err}"
        );
        // Chunked, no length: refused once the cap is passed.
        let head = "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n".to_owned();
        let addr = serve_chunked(head, 3 << 20).await;
        let err = get(addr, 1 << 20).await.unwrap_err();
        assert!(matches!(err, HttpError::TooLarge { .. }), "{err}");
    }

    /// Like `serve_once`, writing the body as 64 KiB chunks.
    async fn serve_chunked(head: String, body_len: usize) -> SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf).await;
            let _ = s.write_all(head.as_bytes()).await;
            let mut chunk = format!("{:x}\r\n", 64 * 1024).into_bytes();
            chunk.extend(std::iter::repeat_n(b'x', 64 * 1024));
            chunk.extend(b"\r\n");
            for _ in 0..body_len / (64 * 1024) {
                if s.write_all(&chunk).await.is_err() {
                    return;
                }
            }
            let _ = s.write_all(b"0\r\n\r\n").await;
        });
        addr
    }

    #[tokio::test]
    async fn an_answer_under_the_cap_is_read_and_a_non_json_failure_becomes_an_error_text() {
        let body = r#"{"ok":true}"#;
        let head = format!(
            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        );
        let addr = serve_once(head, 0).await;
        let reply = get(addr, 1 << 20).await.unwrap();
        assert_eq!(reply.body["ok"], true);
        let text = "Failed to deserialize the JSON body";
        let head = format!(
            "HTTP/1.1 422 Unprocessable Entity\r\ncontent-length: {}\r\n\r\n{text}",
            text.len()
        );
        let addr = serve_once(head, 0).await;
        let reply = get(addr, 1 << 20).await.unwrap();
        assert_eq!(reply.status, 422);
        assert_eq!(reply.body["error"], text);
        // A success that is not JSON is still an error.
        let head = "HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\nabc".to_owned();
        let addr = serve_once(head, 0).await;
        assert!(matches!(
            get(addr, 1 << 20).await,
            Err(HttpError::BadBody { .. })
        ));
    }
}
