//! A tiny HTTP server on loopback serving fixed pages from memory, for the
//! browser harness's self-test (tests/tests/browser_harness.rs): it proves
//! the harness against pages whose content the test controls, without the
//! agent.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Serves `pages` (path → HTML) on 127.0.0.1 until dropped.
pub struct StaticSite {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl StaticSite {
    /// Starts serving; an unknown path answers 404.
    pub fn serve(pages: HashMap<&'static str, String>) -> StaticSite {
        let listener = TcpListener::bind("127.0.0.1:0").expect("binding the test site");
        let addr = listener.local_addr().expect("test site address");
        let stop = Arc::new(AtomicBool::new(false));
        let pages = Arc::new(pages);
        let thread = {
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || {
                for conn in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        return;
                    }
                    let Ok(conn) = conn else { continue };
                    let pages = Arc::clone(&pages);
                    // One thread per connection: chromium opens spare
                    // connections that may never send a request.
                    std::thread::spawn(move || answer(conn, &pages));
                }
            })
        };
        StaticSite {
            addr,
            stop,
            thread: Some(thread),
        }
    }

    /// The URL of `path` (which starts with `/`).
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
}

fn answer(conn: TcpStream, pages: &HashMap<&'static str, String>) {
    let _ = conn.set_read_timeout(Some(Duration::from_secs(10)));
    let mut reader = BufReader::new(&conn);
    let mut request_line = String::new();
    if reader.read_line(&mut request_line).is_err() {
        return;
    }
    // Skip the headers.
    let mut line = String::new();
    while reader.read_line(&mut line).is_ok_and(|n| n > 2) {
        line.clear();
    }
    let path = request_line.split_whitespace().nth(1).unwrap_or("/");
    let (status, body) = match pages.get(path) {
        Some(html) => ("200 OK", html.as_str()),
        None => ("404 Not Found", "not found"),
    };
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/html; charset=utf-8\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = (&conn).write_all(response.as_bytes());
}

impl Drop for StaticSite {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect(self.addr);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
