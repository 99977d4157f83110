//! Every resource's router, merged in one place with the layers that apply to all.

pub mod agent_tokens;
pub mod agent_ws;
pub mod agents;
pub mod auth;
pub mod budgets;
pub mod chat_completions;
pub mod events;
pub mod health;
pub mod instance_templates;
pub mod job_templates;
pub mod llm_providers;
pub mod jobs;
pub mod modules;
pub mod openapi;
pub mod orgs;
pub mod projects;
pub mod rules;
pub mod sso;
pub mod tasks;
pub mod tokens;
pub mod usage;
pub mod workflows;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::body::Body;
use axum::extract::Request;
use axum::http::HeaderName;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use kodel_core::ErrorCode;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;
use utoipa_axum::router::OpenApiRouter;

use crate::AppState;
use crate::error::ApiError;

const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Every resource's routes with their documentation. Routes are only ever added with
/// utoipa-axum's `routes!`, which takes a handler's `#[utoipa::path]`: a route cannot be
/// served without being in the OpenAPI document (tests/openapi.rs checks there is no
/// other way in).
pub fn api() -> OpenApiRouter<AppState> {
    openapi::root()
        .merge(health::router())
        .merge(openapi::router())
        .merge(auth::router())
        .merge(sso::router())
        .merge(tokens::router())
        .merge(orgs::router())
        .merge(projects::router())
        .merge(tasks::router())
        .merge(events::router())
        .merge(workflows::router())
        .merge(job_templates::router())
        .merge(jobs::router())
        .merge(rules::router())
        .merge(modules::router())
        .merge(instance_templates::router())
        .merge(agents::router())
        .merge(agent_tokens::router())
        .merge(agent_ws::router())
        .merge(chat_completions::router())
        .merge(llm_providers::router())
        .merge(usage::router())
        .merge(budgets::router())
}

pub fn router(state: AppState, max_body: usize) -> Router {
    let (routes, _) = api().split_for_parts();
    routes
        .merge(crate::web::router())
        .route_layer(axum::middleware::from_fn_with_state(state.clone(), measure))
        .fallback(|| async { ApiError::new(ErrorCode::NotFound, "no such endpoint") })
        .method_not_allowed_fallback(|| async { ApiError::new(ErrorCode::MethodNotAllowed, "method not allowed on this endpoint") })
        .layer(DefaultBodyLimit::max(max_body.max(kodel_core::llm::MAX_REQUEST_BYTES)))
        .layer(axum::middleware::from_fn(move |req: Request, next: Next| buffer_body(req, next, max_body)))
        .layer(
            TraceLayer::new_for_http().make_span_with(|req: &axum::http::Request<_>| {
                let id = req.headers().get(&REQUEST_ID).and_then(|v| v.to_str().ok()).unwrap_or("");
                // The path only: query strings and headers (tokens) are never logged.
                tracing::info_span!("request", method = %req.method(), path = %req.uri().path(), request_id = %id,
                    user = tracing::field::Empty, org = tracing::field::Empty)
            }),
        )
        .layer(PropagateRequestIdLayer::new(REQUEST_ID))
        .layer(SetRequestIdLayer::new(REQUEST_ID, MakeRequestUuid))
        .with_state(state)
}

/// Counts a request and times it to its response headers, by the route it matched
/// (a template such as `/api/v1/orgs/{org}/tasks`: no tenant's name in a label).
async fn measure(axum::extract::State(state): axum::extract::State<AppState>, req: Request, next: Next) -> Response {
    let route = req.extensions().get::<axum::extract::MatchedPath>().map_or("unmatched", |p| p.as_str()).to_owned();
    let method = req.method().as_str().to_owned();
    let started = std::time::Instant::now();
    let resp = next.run(req).await;
    let m = &state.metrics;
    m.http_duration.get_or_create(&crate::metrics::RouteLabels { route: route.clone(), method: method.clone() }).observe(started.elapsed().as_secs_f64());
    m.http_requests.get_or_create(&crate::metrics::RequestLabels { route, method, status: resp.status().as_u16() }).inc();
    resp
}

/// How long a client may take to send its request body.
const BODY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Reads the whole request body (bounded in size and time) before any extractor runs,
/// so no database transaction is ever open while a client trickles its upload.
async fn buffer_body(req: Request, next: Next, max_body: usize) -> Response {
    let (parts, body) = req.into_parts();
    // A conversation for the LLM gateway may be larger than any other request.
    let max_body = if parts.uri.path() == "/v1/chat/completions" { max_body.max(kodel_core::llm::MAX_REQUEST_BYTES) } else { max_body };
    match tokio::time::timeout(BODY_TIMEOUT, axum::body::to_bytes(body, max_body)).await {
        Err(_) => ApiError::new(ErrorCode::RequestTimeout, "the request body did not arrive in time").into_response(),
        Ok(Err(_)) => ApiError::new(ErrorCode::PayloadTooLarge, "request body is larger than the server accepts").into_response(),
        Ok(Ok(bytes)) => next.run(Request::from_parts(parts, Body::from(bytes))).await,
    }
}
