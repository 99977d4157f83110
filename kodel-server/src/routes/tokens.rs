//! Personal API tokens for scripts: shown once, stored hashed, revocable, optional expiry.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use chrono::{DateTime, Utc};
use kodel_core::ErrorCode;
use kodel_core::api::{ApiToken, ApiTokenCreated, CreateApiToken, MAX_NAME, Page};
use uuid::Uuid;

use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::openapi::{Errors, code, path};
use crate::AppState;
use crate::auth::Auth;
use crate::auth::tokens::{PAT_PREFIX, hash_token, random_token};
use crate::error::{ApiError, ApiResult, require_text};
use crate::json::ApiJson;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(list, create)).routes(routes!(revoke))
}

#[utoipa::path(
    post, path = "/api/v1/tokens", tag = "auth",
    summary = "Create an API token; the token is shown only in this response",
    description = "Only with a login session: an API token cannot make API tokens (403 forbidden).",
    request_body = CreateApiToken,
    responses((status = CREATED, description = "token", body = ApiTokenCreated), Errors<(code::Forbidden,)>),
    security(("bearer" = []))
)]
async fn create(State(state): State<AppState>, auth: Auth, ApiJson(req): ApiJson<CreateApiToken>) -> ApiResult<(StatusCode, Json<ApiTokenCreated>)> {
    // An API token cannot mint more API tokens: a stolen one would outlive its revocation.
    if auth.session.is_none() {
        return Err(ApiError::forbidden("creating API tokens with an API token; log in"));
    }
    let name = require_text("name", &req.name, MAX_NAME)?;
    if req.expires_at.is_some_and(|at| at <= Utc::now()) {
        return Err(ApiError::invalid("expires_at must be in the future"));
    }
    let token = random_token(PAT_PREFIX);
    let id = Uuid::now_v7();
    sqlx::query(
        "INSERT INTO api_tokens (id, kind, user_id, name, prefix, token_hash, expires_at)
         VALUES ($1, 'user', $2, $3, $4, $5, $6)",
    )
    .bind(id)
    .bind(auth.user.id)
    .bind(&name)
    .bind(&token[..PAT_PREFIX.len() + 6])
    .bind(hash_token(&token))
    .bind(req.expires_at)
    .execute(&state.pool)
    .await?;
    Ok((StatusCode::CREATED, Json(ApiTokenCreated { id, name, token, expires_at: req.expires_at })))
}

#[derive(sqlx::FromRow)]
struct TokenRow {
    id: Uuid,
    name: String,
    prefix: String,
    created_at: DateTime<Utc>,
    expires_at: Option<DateTime<Utc>>,
    last_used_at: Option<DateTime<Utc>>,
}

#[utoipa::path(
    get, path = "/api/v1/tokens", tag = "auth",
    summary = "The caller's API tokens (never the tokens themselves)",
    responses((status = OK, description = "tokens", body = Page<ApiToken>)),
    security(("bearer" = []))
)]
async fn list(State(state): State<AppState>, auth: Auth) -> ApiResult<Json<Page<ApiToken>>> {
    let rows = sqlx::query_as::<_, TokenRow>(
        "SELECT id, name, prefix, created_at, expires_at, last_used_at FROM api_tokens
         WHERE user_id = $1 AND kind = 'user' AND revoked_at IS NULL ORDER BY created_at",
    )
    .bind(auth.user.id)
    .fetch_all(&state.pool)
    .await?;
    let data = rows
        .into_iter()
        .map(|r| ApiToken { id: r.id, name: r.name, prefix: r.prefix, created_at: r.created_at, expires_at: r.expires_at, last_used_at: r.last_used_at })
        .collect();
    Ok(Json(Page { data, next_cursor: None }))
}

#[utoipa::path(
    delete, path = "/api/v1/tokens/{id}", tag = "auth",
    summary = "Revoke an API token",
    params(path::Token),
    responses((status = NO_CONTENT, description = "revoked"), Errors<(code::InvalidKey, code::TokenNotFound)>),
    security(("bearer" = []))
)]
async fn revoke(State(state): State<AppState>, auth: Auth, Path(id): Path<String>) -> ApiResult<StatusCode> {
    let id = Uuid::parse_str(&id).map_err(|_| ApiError::new(ErrorCode::InvalidKey, "token id must be a UUID"))?;
    let done = sqlx::query("UPDATE api_tokens SET revoked_at = now() WHERE id = $1 AND user_id = $2 AND kind = 'user' AND revoked_at IS NULL")
        .bind(id)
        .bind(auth.user.id)
        .execute(&state.pool)
        .await?;
    if done.rows_affected() == 0 {
        return Err(ApiError::new(ErrorCode::TokenNotFound, "no such token"));
    }
    Ok(StatusCode::NO_CONTENT)
}
