//! The forwarding layer against real HTTP servers on loopback: a "holder"
//! that records what reached it, and a "non-holder" whose handler refuses
//! with [`DrivenElsewhere`] as the orchestrator's `NotDriver` does.

use std::sync::{Arc, Mutex};

use axum::http::HeaderMap;
use axum::routing::post;
use axum::Router;
use serde_json::json;

use super::*;

/// What the holder received: (forwarded-by header, authorization, body).
type Seen = Arc<Mutex<Vec<(Option<String>, Option<String>, Value)>>>;

async fn serve(app: Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    addr
}

async fn holder(seen: Seen) -> SocketAddr {
    let app = Router::new().route(
        "/v1/groups/g/start",
        post(move |headers: HeaderMap, Json(body): Json<Value>| {
            let seen = seen.clone();
            async move {
                let header = |k: &str| {
                    headers
                        .get(k)
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_owned)
                };
                crate::sync_util::lock(&seen).push((
                    header(FORWARDED_BY),
                    header("authorization"),
                    body,
                ));
                (
                    StatusCode::ACCEPTED,
                    Json(json!({ "operation": { "id": 7 } })),
                )
            }
        }),
    );
    serve(app).await
}

/// A non-holder whose handler says the group is driven at `api`.
async fn non_holder(me: Option<&str>, api: SocketAddr) -> SocketAddr {
    let app = Router::new()
        .route(
            "/v1/groups/g/start",
            post(move || async move {
                let mut refusal = (
                    StatusCode::CONFLICT,
                    Json(json!({ "error": "driven by agent p1" })),
                )
                    .into_response();
                refusal.extensions_mut().insert(DrivenElsewhere { api });
                refusal
            }),
        )
        .route_layer(axum::middleware::from_fn_with_state(
            me.map(str::to_owned),
            forward_to_driver,
        ));
    serve(app).await
}

async fn start(at: SocketAddr, forwarded_by: Option<&str>) -> http::Reply {
    let body = json!({ "why": "test" });
    let call = Call {
        method: Method::POST,
        path: "/v1/groups/g/start",
        token: Some("tok"),
        body: Some(&body),
        limit: MAX_RESPONSE_BYTES,
        forwarded_by,
    };
    http::call_limited(&Target::Plain(at), call, Duration::from_secs(10))
        .await
        .unwrap()
}

#[tokio::test]
async fn a_refused_operation_is_carried_out_by_the_holder_with_the_operators_token() {
    let seen = Seen::default();
    let api = holder(seen.clone()).await;
    let front = non_holder(Some("p2"), api).await;
    let reply = start(front, None).await;
    assert_eq!(reply.status, 202, "{}", reply.body);
    assert_eq!(reply.body["operation"]["id"], 7);
    let seen = crate::sync_util::lock(&seen).clone();
    assert_eq!(
        seen,
        vec![(
            Some("p2".to_owned()),
            Some("Bearer tok".to_owned()),
            json!({ "why": "test" })
        )]
    );
}

#[tokio::test]
async fn a_forwarded_request_a_single_agent_site_or_an_unreachable_holder_get_the_refusal() {
    let seen = Seen::default();
    let api = holder(seen.clone()).await;
    // Already forwarded once: never again.
    let front = non_holder(Some("p2"), api).await;
    assert_eq!(start(front, Some("p3")).await.status, 409);
    // No site name (a SQLite agent): nothing is forwarded.
    let single = non_holder(None, api).await;
    assert_eq!(start(single, None).await.status, 409);
    assert!(crate::sync_util::lock(&seen).is_empty());
    // The holder does not answer: the refusal stands.
    let gone = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let orphan = non_holder(Some("p2"), gone).await;
    let reply = start(orphan, None).await;
    assert_eq!(reply.status, 409, "{}", reply.body);
    assert_eq!(reply.body["error"], "driven by agent p1");
}
