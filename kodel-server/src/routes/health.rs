//! Liveness, readiness and metrics.

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{Value, json};

use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::openapi::{Errors, code};
use crate::AppState;
use crate::error::ApiError;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(healthz)).routes(routes!(readyz)).routes(routes!(metrics))
}

/// What the health endpoints answer (the documentation's; they build it as JSON).
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
struct Health {
    /// `ok` (liveness), `ready` or `unavailable` (readiness).
    status: String,
    /// The server's version (liveness).
    version: Option<String>,
    /// Why it is not ready.
    reason: Option<String>,
}

/// How long readiness waits for the database.
const READY_WITHIN: std::time::Duration = std::time::Duration::from_secs(1);

/// The process is up.
#[utoipa::path(
    get, path = "/healthz", tag = "meta",
    summary = "Liveness",
    responses((status = OK, description = "up", body = Health)),
    security(())
)]
async fn healthz() -> Json<Value> {
    Json(json!({ "status": "ok", "version": env!("CARGO_PKG_VERSION") }))
}

/// The database answers.
#[utoipa::path(
    get, path = "/readyz", tag = "meta",
    summary = "Readiness: the database answers",
    responses((status = OK, description = "ready", body = Health), (status = SERVICE_UNAVAILABLE, description = "the database does not answer", body = Health)),
    security(())
)]
async fn readyz(State(state): State<AppState>) -> (StatusCode, Json<Value>) {
    // At once, not after the pool's acquire timeout: a load balancer asks often.
    match tokio::time::timeout(READY_WITHIN, sqlx::query("SELECT 1").execute(&state.pool)).await {
        Ok(Ok(_)) => (StatusCode::OK, Json(json!({ "status": "ready" }))),
        Ok(Err(err)) => {
            tracing::warn!(error = %err, "not ready");
            (StatusCode::SERVICE_UNAVAILABLE, Json(json!({ "status": "unavailable", "reason": "database unreachable" })))
        }
        Err(_) => (StatusCode::SERVICE_UNAVAILABLE, Json(json!({ "status": "unavailable", "reason": "the database did not answer within 1 s" }))),
    }
}

/// The OpenMetrics text format's media type.
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Server figures for Prometheus.
#[utoipa::path(
    get, path = "/metrics", tag = "meta",
    summary = "Metrics for Prometheus (OpenMetrics text)",
    description = "Server-wide figures, no tenant names. With KODEL_METRICS_TOKEN set, it needs that token as a bearer token.",
    responses((status = OK, description = "the metrics", body = String, content_type = "application/openmetrics-text"), Errors<(code::Unauthorized,)>),
    security(())
)]
async fn metrics(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let authorization = headers.get(header::AUTHORIZATION).and_then(|h| h.to_str().ok());
    if !state.metrics.allows(authorization) {
        return ApiError::unauthorized().into_response();
    }
    // Read with a short bound: a scrape must not wait on a slow database.
    // Only where rows are shipped: without ClickHouse nothing waits to be.
    let backlog = match state.analytics.config() {
        Some(_) => tokio::time::timeout(READY_WITHIN, crate::analytics::shipper::backlog(&state.pool)).await.ok().and_then(Result::ok),
        None => None,
    };
    let jobs = sqlx::query_as::<_, (String, i64)>("SELECT state, sum(n)::bigint FROM job_states GROUP BY state").fetch_all(&state.pool);
    let jobs = tokio::time::timeout(READY_WITHIN, jobs).await.ok().and_then(Result::ok);
    let now = crate::metrics::Now {
        agents_connected: state.hub.connection_count(),
        event_streams_open: state.streams.open_total(),
        outbox_backlog: backlog,
        jobs,
    };
    ([(header::CONTENT_TYPE, OPENMETRICS)], state.metrics.render(now)).into_response()
}
