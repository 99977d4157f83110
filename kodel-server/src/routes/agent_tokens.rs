//! Agent enrollment tokens: org-scoped, shown once, stored hashed, revocable. An agent
//! connects to `/api/v1/agent/ws` with one; it opens nothing else. Org admins manage them.
//!
//! A token acts with the authority of the admin who made it: when that person leaves
//! the org or stops being an owner or admin, their agent tokens are revoked with the
//! change (`revoke_made_by`), and their agents are disconnected at their next check.

use axum::extract::Path;
use axum::http::StatusCode;
use axum::Json;
use chrono::{DateTime, Utc};
use kodel_core::ErrorCode;
use kodel_core::api::{ApiToken, ApiTokenCreated, CreateApiToken, MAX_NAME, OrgRole, Page};
use uuid::Uuid;

use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::openapi::{Errors, code, path};
use crate::AppState;
use crate::auth::tokens::{AGENT_PREFIX, hash_token, random_token};
use crate::error::{ApiError, ApiResult, require_text};
use crate::json::ApiJson;
use crate::tenant::Tenant;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(list, create)).routes(routes!(revoke))
}

const WHAT: &str = "managing agent tokens (org admins and owners)";

/// SQL: the agent token `k` still acts: not revoked, not expired, and its maker still
/// an owner or admin of its org (checked at every use, so a token made while its maker
/// was being demoted, or before makers were checked, dies too).
pub const LIVE: &str = "k.revoked_at IS NULL AND (k.expires_at IS NULL OR k.expires_at > now())
     AND EXISTS (SELECT 1 FROM public.org_members m WHERE m.org_id = k.org_id AND m.user_id = k.user_id AND m.role IN ('owner', 'admin'))";

/// Whether an agent token still acts (`LIVE`).
pub async fn live(db: &mut crate::db::OrgTx, token: Uuid) -> ApiResult<bool> {
    let live: Option<bool> = sqlx::query_scalar(&format!("SELECT {LIVE} FROM public.api_tokens k WHERE k.id = $1"))
        .bind(token)
        .fetch_optional(db.conn())
        .await?;
    Ok(live == Some(true))
}

#[utoipa::path(
    post, path = "/api/v1/orgs/{org}/agent-tokens", tag = "agents", operation_id = "create_token",
    summary = "Create an agent token (org admins); the token is shown once",
    params(path::Org),
    request_body = CreateApiToken,
    responses((status = CREATED, description = "created", body = ApiTokenCreated), Errors<(code::Forbidden,)>),
    security(("bearer" = []))
)]
async fn create(mut t: Tenant, ApiJson(req): ApiJson<CreateApiToken>) -> ApiResult<(StatusCode, Json<ApiTokenCreated>)> {
    t.require_org_role(OrgRole::Admin, WHAT)?;
    let name = require_text("name", &req.name, MAX_NAME)?;
    if req.expires_at.is_some_and(|at| at <= Utc::now()) {
        return Err(ApiError::invalid("expires_at must be in the future"));
    }
    let token = random_token(AGENT_PREFIX);
    let id = Uuid::now_v7();
    let (user, org) = (t.user_id(), t.org.id);
    sqlx::query(
        "INSERT INTO public.api_tokens (id, kind, user_id, org_id, name, prefix, token_hash, expires_at)
         VALUES ($1, 'agent', $2, $3, $4, $5, $6, $7)",
    )
    .bind(id)
    .bind(user)
    .bind(org)
    .bind(&name)
    .bind(&token[..AGENT_PREFIX.len() + 6])
    .bind(hash_token(&token))
    .bind(req.expires_at)
    .execute(t.conn())
    .await?;
    t.commit().await?;
    Ok((StatusCode::CREATED, Json(ApiTokenCreated { id, name, token, expires_at: req.expires_at })))
}

#[derive(sqlx::FromRow)]
struct Row {
    id: Uuid,
    name: String,
    prefix: String,
    created_at: DateTime<Utc>,
    expires_at: Option<DateTime<Utc>>,
    last_used_at: Option<DateTime<Utc>>,
}

#[utoipa::path(
    get, path = "/api/v1/orgs/{org}/agent-tokens", tag = "agents", operation_id = "list_tokens",
    summary = "The org's live agent enrollment tokens (org admins)",
    params(path::Org),
    responses((status = OK, description = "tokens", body = Page<ApiToken>), Errors<(code::Forbidden,)>),
    security(("bearer" = []))
)]
async fn list(mut t: Tenant) -> ApiResult<Json<Page<ApiToken>>> {
    t.require_org_role(OrgRole::Admin, WHAT)?;
    let org = t.org.id;
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT id, name, prefix, created_at, expires_at, last_used_at FROM public.api_tokens
         WHERE org_id = $1 AND kind = 'agent' AND revoked_at IS NULL ORDER BY created_at",
    )
    .bind(org)
    .fetch_all(t.conn())
    .await?;
    t.commit().await?;
    let data = rows
        .into_iter()
        .map(|r| ApiToken { id: r.id, name: r.name, prefix: r.prefix, created_at: r.created_at, expires_at: r.expires_at, last_used_at: r.last_used_at })
        .collect();
    Ok(Json(Page { data, next_cursor: None }))
}

/// Revokes a token; agents connected with it are disconnected at their next heartbeat.
#[utoipa::path(
    delete, path = "/api/v1/orgs/{org}/agent-tokens/{id}", tag = "agents", operation_id = "revoke_token",
    summary = "Revoke an agent token; its agents are disconnected at their next heartbeat",
    params(path::Id),
    responses((status = NO_CONTENT, description = "revoked"), Errors<(code::Forbidden, code::InvalidKey, code::TokenNotFound)>),
    security(("bearer" = []))
)]
async fn revoke(mut t: Tenant, Path((_, id)): Path<(String, String)>) -> ApiResult<StatusCode> {
    t.require_org_role(OrgRole::Admin, WHAT)?;
    let id = Uuid::parse_str(&id).map_err(|_| ApiError::new(ErrorCode::InvalidKey, "token id must be a UUID"))?;
    let org = t.org.id;
    let done = sqlx::query("UPDATE public.api_tokens SET revoked_at = now() WHERE id = $1 AND org_id = $2 AND kind = 'agent' AND revoked_at IS NULL")
        .bind(id)
        .bind(org)
        .execute(t.conn())
        .await?;
    t.commit().await?;
    if done.rows_affected() == 0 {
        return Err(ApiError::new(ErrorCode::TokenNotFound, "no such agent token"));
    }
    Ok(StatusCode::NO_CONTENT)
}

/// Revokes the agent tokens `user` made in `org` (they left it, or are no longer an
/// owner or admin); returns how many. Part of the membership change's transaction.
pub async fn revoke_made_by(conn: &mut sqlx::PgConnection, org: Uuid, user: Uuid) -> Result<u64, sqlx::Error> {
    let done = sqlx::query("UPDATE public.api_tokens SET revoked_at = now() WHERE org_id = $1 AND user_id = $2 AND kind = 'agent' AND revoked_at IS NULL")
        .bind(org)
        .bind(user)
        .execute(conn)
        .await?;
    Ok(done.rows_affected())
}
