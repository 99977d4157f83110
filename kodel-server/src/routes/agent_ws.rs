//! `GET /api/v1/agent/ws`: where agent workers connect, with an org's agent token.

use axum::extract::{State, WebSocketUpgrade};
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use kodel_core::{ErrorCode, OrgSlug};
use kodel_core::protocol::MAX_FRAME_BYTES;
use uuid::Uuid;

use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::openapi::{Errors, code};
use crate::AppState;
use crate::auth::extract::bearer;
use crate::auth::tokens::{AGENT_PREFIX, hash_token};
use crate::error::{ApiError, ApiResult};
use crate::hub::connection::{self, AgentToken};

const READ_BUFFER: usize = 8 * 1024;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(upgrade))
}

#[utoipa::path(
    get, path = "/api/v1/agent/ws", tag = "agents",
    summary = "Agent workers connect here (WebSocket upgrade) with `Authorization: Bearer kodel_agt_...`. JSON text frames tagged by `type`: see docs/agents.md",
    responses((status = SWITCHING_PROTOCOLS, description = "switching protocols"), (status = BAD_REQUEST, description = "not a WebSocket upgrade request", content_type = "text/plain", body = String), Errors<(code::Unauthorized, code::Internal, code::Unavailable)>),
    security(("bearer" = []))
)]
async fn upgrade(
    State(state): State<AppState>,
    ws: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
    parts: Parts,
) -> ApiResult<Response> {
    // The token first: a request without one is a 401 whether or not it is an upgrade.
    let token = agent_token(&state, &parts).await?;
    let ws = match ws {
        Ok(ws) => ws,
        Err(not_an_upgrade) => return Ok(not_an_upgrade.into_response()),
    };
    tracing::Span::current().record("org", tracing::field::display(&token.slug));
    // An idle agent should cost little: tungstenite's default 128 KiB read buffer per
    // connection was most of an idle agent's memory (docs/benchmarks.md).
    Ok(ws
        .read_buffer_size(READ_BUFFER)
        .max_message_size(MAX_FRAME_BYTES)
        .max_frame_size(MAX_FRAME_BYTES)
        .on_upgrade(move |socket| connection::serve(state, socket, token)))
}

/// The org and token behind an agent's bearer token, checked before the upgrade.
async fn agent_token(state: &AppState, parts: &Parts) -> ApiResult<AgentToken> {
    let token = bearer(parts).filter(|t| t.starts_with(AGENT_PREFIX)).ok_or_else(|| {
        ApiError::new(ErrorCode::Unauthorized, "an agent token is required (kodel agent token create)")
    })?;
    let sql = format!(
        "UPDATE public.api_tokens k SET last_used_at = now() FROM public.orgs o
         WHERE k.token_hash = $1 AND k.kind = 'agent' AND {} AND o.id = k.org_id AND o.migration_error IS NULL
         RETURNING k.id, o.id, o.slug",
        super::agent_tokens::LIVE
    );
    let row: Option<(Uuid, Uuid, String)> = sqlx::query_as(&sql)
    .bind(hash_token(token))
    .fetch_optional(&state.pool)
    .await?;
    let (token_id, org_id, slug) = row.ok_or_else(|| ApiError::new(ErrorCode::Unauthorized, "the agent token is unknown, revoked or expired"))?;
    let slug = OrgSlug::parse(&slug).map_err(ApiError::internal)?;
    Ok(AgentToken { org_id, slug, token_id })
}
