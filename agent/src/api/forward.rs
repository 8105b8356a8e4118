//! Forwarding a mutating operation to the agent that drives its group. In
//! a multi-agent site (`[control] store = "rados"`) only the holder of a
//! primary group's lease carries out operations on it; another agent of
//! the site answers the operator's request by sending it on to the holder's
//! operator API, with the operator's own token (the site's agents share
//! `DIR/api.token`, as they share the identity), and returns the holder's
//! answer. A request that was forwarded once is never forwarded again (a
//! holder that changed in between refuses it), and when the holder cannot
//! be reached — or serves its API over TLS — the refusal naming the holder
//! and its address is the answer.

use std::net::SocketAddr;
use std::time::Duration;

use axum::body::{to_bytes, Body};
use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::Value;
use tracing::{info, warn};

use super::http::{self, Call, Target, FORWARDED_BY, MAX_RESPONSE_BYTES};

/// The largest request body forwarded (operation bodies are small JSON).
const MAX_FORWARDED_BODY: usize = 1 << 20;
/// How long the holder has to answer (it answers at once: operations run in
/// the background and are waited for through the shared journal).
const FORWARD_TIMEOUT: Duration = Duration::from_secs(30);

/// Set on a refusal's response: the operation belongs to the agent whose
/// operator API listens at `api`.
#[derive(Clone, Debug)]
pub struct DrivenElsewhere {
    /// The holder's operator API address.
    pub api: SocketAddr,
}

/// The middleware (see the module doc). `me`: this agent's name in the
/// site, sent with a forwarded request.
pub async fn forward_to_driver(
    State(me): State<Option<String>>,
    req: Request,
    next: Next,
) -> Response {
    let Some(me) = me else {
        return next.run(req).await;
    };
    if matches!(*req.method(), Method::GET | Method::HEAD)
        || req.headers().contains_key(FORWARDED_BY)
    {
        return next.run(req).await;
    }
    let (parts, body) = req.into_parts();
    let Ok(bytes) = to_bytes(body, MAX_FORWARDED_BODY).await else {
        return (
            StatusCode::PAYLOAD_TOO_LARGE,
            Json(serde_json::json!({ "error": "request body too large" })),
        )
            .into_response();
    };
    let local = next
        .run(Request::from_parts(
            parts.clone(),
            Body::from(bytes.clone()),
        ))
        .await;
    let Some(elsewhere) = local.extensions().get::<DrivenElsewhere>().cloned() else {
        return local;
    };
    let token = parts
        .headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let body: Option<Value> = serde_json::from_slice(&bytes).ok();
    let path = parts
        .uri
        .path_and_query()
        .map_or_else(|| parts.uri.path().to_owned(), |p| p.as_str().to_owned());
    let call = Call {
        method: parts.method.clone(),
        path: &path,
        token,
        body: body.as_ref(),
        limit: MAX_RESPONSE_BYTES,
        forwarded_by: Some(&me),
    };
    match http::call_limited(&Target::Plain(elsewhere.api), call, FORWARD_TIMEOUT).await {
        Ok(reply) => {
            info!(%path, to = %elsewhere.api, status = reply.status, "forwarded an operation to the agent driving its group");
            let status = StatusCode::from_u16(reply.status).unwrap_or(StatusCode::BAD_GATEWAY);
            let mut answer = (status, Json(reply.body)).into_response();
            if let Ok(to) = HeaderValue::from_str(&elsewhere.api.to_string()) {
                answer.headers_mut().insert("x-ferry-forwarded-to", to);
            }
            answer
        }
        Err(error) => {
            warn!(%path, to = %elsewhere.api, %error, "could not forward an operation to the agent driving its group; refusing it");
            local
        }
    }
}

#[cfg(test)]
#[path = "forward_tests.rs"]
mod tests;
