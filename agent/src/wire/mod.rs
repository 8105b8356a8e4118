//! What travels between agents and between the CLI and an agent, below
//! both the API server (`api`) and the orchestrator that calls the peer:
//! the typed JSON request bodies and their stateless checks (`bodies`),
//! the small HTTP/1.1 client (`http`), the peer API's mutual TLS (`tls`)
//! the operator API's optional TLS (`api_tls`) and its bearer tokens
//! (`tokens`). Nothing here knows the
//! orchestrator or the routes.

pub mod api_tls;
pub mod bodies;
pub mod http;
pub mod tls;
pub mod tokens;
