//! A raw HTTP/1.1 client for the console tests, which need what the CLI's
//! JSON client (`ferry_agent::api::http`) neither sends nor shows: request
//! headers of their own (`Cookie`, `X-CSRF-Token`) and the answer's headers
//! (`Set-Cookie`, `Content-Security-Policy`, `Content-Type`) and raw bytes.
//! Plain TCP or TLS with the pinned client config of `ferry --agent
//! https://… --agent-fingerprint` (`Target`), one request per connection.

use std::time::Duration;

use ferry_agent::api::http::Target;
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// One answer.
#[derive(Debug)]
pub struct Answer {
    /// Status code.
    pub status: u16,
    /// Headers, names in lower case, in order.
    pub headers: Vec<(String, String)>,
    /// The body (chunked encoding undone).
    pub body: Vec<u8>,
}

impl Answer {
    /// The first value of header `name` (lower case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The body as JSON (`null` when it is not JSON).
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }

    /// The body as text, for failure messages.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Sends `method path` with `headers` and an optional JSON `body`; panics
/// when no HTTP answer comes within 30 s.
pub fn request(
    target: &Target,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&Value>,
) -> Answer {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n",
        target.addr()
    );
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    let payload = body.map(|b| b.to_string()).unwrap_or_default();
    if body.is_some() {
        head.push_str("Content-Type: application/json\r\n");
    }
    head.push_str(&format!("Content-Length: {}\r\n\r\n", payload.len()));
    let bytes = [head.into_bytes(), payload.into_bytes()].concat();
    let exchange = async {
        match target {
            Target::Plain(addr) => {
                let tcp = tokio::net::TcpStream::connect(addr).await?;
                exchange(tcp, &bytes).await
            }
            Target::Tls { addr, config } => {
                let tls = ferry_agent::wire::tls::connect(*addr, config.clone()).await?;
                exchange(tls, &bytes).await
            }
        }
    };
    rt.block_on(async { tokio::time::timeout(Duration::from_secs(30), exchange).await })
        .unwrap_or_else(|_| panic!("{method} {path}: no answer within 30 s"))
        .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
}

async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    mut io: S,
    request: &[u8],
) -> std::io::Result<Answer> {
    io.write_all(request).await?;
    io.flush().await?;
    let mut raw = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    loop {
        if let Some(answer) = parse(&raw, false) {
            return Ok(answer);
        }
        match io.read(&mut buf).await {
            Ok(0) => break,
            Ok(n) => raw.extend_from_slice(&buf[..n]),
            // A TLS peer that closes without close_notify: judge what came.
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => break,
            Err(e) => return Err(e),
        }
    }
    parse(&raw, true).ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("incomplete answer: {}", String::from_utf8_lossy(&raw)),
        )
    })
}

/// The answer in `raw` once it is complete (head, and the body its
/// `Content-Length` or chunked encoding says, or all the rest once the
/// server closed: `eof`).
fn parse(raw: &[u8], eof: bool) -> Option<Answer> {
    let end = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&raw[..end]).ok()?;
    let mut lines = head.split("\r\n");
    let status: u16 = lines.next()?.split(' ').nth(1)?.parse().ok()?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let rest = &raw[end + 4..];
    let get = |name: &str| headers.iter().find(|(n, _)| n == name).map(|(_, v)| v);
    let body = if get("transfer-encoding").is_some_and(|v| v.contains("chunked")) {
        dechunk(rest)?
    } else {
        match get("content-length").and_then(|v| v.parse::<usize>().ok()) {
            Some(len) if rest.len() >= len => rest[..len].to_vec(),
            Some(_) => return None,
            None if eof => rest.to_vec(),
            None => return None,
        }
    };
    Some(Answer {
        status,
        headers,
        body,
    })
}

/// A complete chunked body, decoded (`None` while incomplete).
fn dechunk(mut rest: &[u8]) -> Option<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let line_end = rest.windows(2).position(|w| w == b"\r\n")?;
        let size_text = std::str::from_utf8(&rest[..line_end]).ok()?;
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        rest = &rest[line_end + 2..];
        if size == 0 {
            return Some(body);
        }
        if rest.len() < size + 2 {
            return None;
        }
        body.extend_from_slice(&rest[..size]);
        rest = &rest[size + 2..];
    }
}
