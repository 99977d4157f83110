//! Liveness and readiness.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde_json::{Value, json};

use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(healthz)).routes(routes!(readyz))
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
