//! The console's static files, every file under `agent/console/` compiled
//! into the binary (`rust-embed` with `debug-embed`: debug builds embed them
//! too, nothing is read from disk at run time, so no path a client sends can
//! reach the file system), and the security headers of every `/ui` answer.

use axum::body::Body;
use axum::extract::Request;
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

/// The embedded files (paths relative to `agent/console/`).
#[derive(rust_embed::Embed)]
#[folder = "console/"]
pub struct Assets;

/// The page every client route ends up on.
pub const INDEX: &str = "index.html";

/// `Content-Security-Policy` of every `/ui` answer: only the console's own
/// files and API, no inline script or style, no framing.
pub const CSP: &str = "default-src 'self'; img-src 'self' data:; style-src 'self'; \
                       script-src 'self'; connect-src 'self'; frame-ancestors 'none'; \
                       base-uri 'none'; form-action 'self'";

/// What `GET /ui/PATH` serves: the file at `path`; for a path whose last
/// segment has no extension (a client-side route), `index.html`; else 404.
pub fn serve(path: &str) -> Response {
    let path = path.trim_start_matches('/');
    let path = if path.is_empty() { INDEX } else { path };
    if let Some(file) = Assets::get(path) {
        return file_response(path, file);
    }
    let last = path.rsplit('/').next().unwrap_or(path);
    if !last.contains('.') {
        if let Some(file) = Assets::get(INDEX) {
            return file_response(INDEX, file);
        }
    }
    (StatusCode::NOT_FOUND, "not found\n").into_response()
}

fn file_response(path: &str, file: rust_embed::EmbeddedFile) -> Response {
    let mime = file.metadata.mimetype();
    let content_type = if mime.starts_with("text/") || mime == "application/javascript" {
        format!("{mime}; charset=utf-8")
    } else {
        mime.to_owned()
    };
    // The page is never cached (it names the scripts of this binary);
    // the rest is revalidated, so an upgraded agent serves its own files.
    let cache = if path == INDEX {
        "no-store"
    } else {
        "no-cache"
    };
    let mut response = Response::new(Body::from(file.data.into_owned()));
    let h = response.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&content_type) {
        h.insert(header::CONTENT_TYPE, v);
    }
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    response
}

/// Middleware adding the security headers to every `/ui` answer (pages,
/// files, the session API and refusals alike).
pub async fn security_headers(req: Request, next: Next) -> Response {
    let mut response = next.run(req).await;
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    if !h.contains_key(header::CACHE_CONTROL) {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn content_type(r: &Response) -> &str {
        r.headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
    }

    #[test]
    fn the_index_the_files_and_client_routes_are_served_and_nothing_else() {
        let index = serve("");
        assert_eq!(index.status(), StatusCode::OK);
        assert_eq!(content_type(&index), "text/html; charset=utf-8");
        assert_eq!(index.headers()[header::CACHE_CONTROL], "no-store");
        assert_eq!(serve("index.html").status(), StatusCode::OK);
        // Client routes fall back to the page.
        for route in ["groups", "groups/web", "a/b/c"] {
            let r = serve(route);
            assert_eq!(r.status(), StatusCode::OK, "{route}");
            assert_eq!(content_type(&r), "text/html; charset=utf-8");
        }
        // Files that do not exist, traversal and absolute paths: 404.
        for missing in [
            "nope.js",
            "x/y.css",
            "../Cargo.toml",
            "../../etc/passwd.txt",
        ] {
            assert_eq!(serve(missing).status(), StatusCode::NOT_FOUND, "{missing}");
        }
        // Every embedded file is served as itself.
        for name in Assets::iter() {
            let r = serve(&name);
            assert_eq!(r.status(), StatusCode::OK, "{name}");
            if name.ends_with(".js") {
                assert!(content_type(&r).contains("javascript"), "{name}");
            }
            if name.ends_with(".css") {
                assert!(content_type(&r).starts_with("text/css"), "{name}");
            }
        }
    }
}
