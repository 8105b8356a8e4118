//! The operator routes `agent/openapi.yaml` documents, as the access tests
//! walk them (`api_access.rs` with the tokens, `console_access.rs` with
//! console sessions): every `(method, path)` with its path parameters
//! filled in with names that exist nowhere.

use ferry_agent::api::http::Method;

/// `(method, path)` of every operator route in `agent/openapi.yaml`, with
/// path parameters filled in with names that exist nowhere.
pub fn documented_operator_routes() -> Vec<(Method, String)> {
    let doc = include_str!("../../../agent/openapi.yaml");
    let mut out = Vec::new();
    let mut path: Option<String> = None;
    for line in doc.lines() {
        if line.starts_with("components:") {
            break;
        }
        if let Some(p) = line
            .strip_prefix("  /v1/")
            .and_then(|l| l.strip_suffix(':'))
        {
            path = Some(format!("/v1/{p}"));
            continue;
        }
        if line.starts_with("  /") {
            // Another path (the console's /ui/session): not an API route.
            path = None;
            continue;
        }
        let Some(p) = &path else { continue };
        if p.starts_with("/v1/peer/") {
            continue;
        }
        let method = match line {
            "    get:" => Method::GET,
            "    post:" => Method::POST,
            "    put:" => Method::PUT,
            "    patch:" => Method::PATCH,
            "    delete:" => Method::DELETE,
            _ => continue,
        };
        let filled = p
            .replace("{id}", "999999")
            .replace("{group}", "no-such-group")
            .replace("{service}", "no-such-service")
            .replace("{policy}", "no-such-policy")
            .replace("{rp}", "no-such-rp");
        assert!(!filled.contains('{'), "unfilled parameter in {p}");
        out.push((method, filled));
    }
    out
}
