//! An org's own LLM provider settings: a key (sealed at rest, never returned), a base
//! URL and wire settings (streaming, the max-tokens field, tool_choice), used before
//! the server's environment. Org admins manage them.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use chrono::{DateTime, Utc};
use kodel_core::api::{OrgRole, Page};
use kodel_core::llm::{ProviderSettings as LlmProvider, WireSettings};
use serde::Deserialize;

use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::openapi::{Errors, code, path};
use crate::AppState;
use crate::error::{ApiError, ApiResult};
use crate::json::ApiJson;
use crate::llm::ProviderKind;
use crate::tenant::Tenant;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(list)).routes(routes!(set, remove))
}

const WHAT: &str = "managing the org's LLM providers (org admins and owners)";

#[derive(sqlx::FromRow)]
struct Row {
    provider: String,
    base_url: Option<String>,
    has_key: bool,
    wire: sqlx::types::Json<WireSettings>,
    updated_at: DateTime<Utc>,
}

impl From<Row> for LlmProvider {
    fn from(r: Row) -> Self {
        Self { provider: r.provider, base_url: r.base_url, has_key: r.has_key, wire: r.wire.0, updated_at: r.updated_at }
    }
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = SetLlmProvider)]
struct SetProvider {
    #[serde(default)]
    api_key: Option<String>,
    #[serde(default)]
    base_url: Option<String>,
    /// Replaces the stored wire settings (`{}`: the defaults again).
    #[serde(default)]
    wire: Option<WireSettings>,
}

fn provider(raw: &str) -> ApiResult<ProviderKind> {
    ProviderKind::parse(raw).ok_or_else(|| ApiError::invalid(format!("provider {raw:?} is not one of openai, anthropic, openrouter, ollama")))
}

#[utoipa::path(
    get, path = "/api/v1/orgs/{org}/llm-providers", tag = "llm",
    summary = "The org's own LLM provider settings (org admins); keys are never returned",
    params(path::Org),
    responses((status = OK, description = "providers", body = Page<LlmProvider>), Errors<(code::Forbidden,)>),
    security(("bearer" = []))
)]
async fn list(mut t: Tenant) -> ApiResult<Json<Page<LlmProvider>>> {
    t.require_org_role(OrgRole::Admin, WHAT)?;
    let rows: Vec<Row> =
        sqlx::query_as("SELECT provider, base_url, api_key IS NOT NULL AS has_key, wire, updated_at FROM llm_providers ORDER BY provider")
            .fetch_all(t.conn())
            .await?;
    t.commit().await?;
    Ok(Json(Page { data: rows.into_iter().map(LlmProvider::from).collect(), next_cursor: None }))
}

#[utoipa::path(
    put, path = "/api/v1/orgs/{org}/llm-providers/{provider}", tag = "llm",
    summary = "Set the org's key, base URL and/or wire settings for a provider (the key sealed at rest)",
    params(path::Provider),
    request_body = SetProvider,
    responses((status = OK, description = "saved", body = LlmProvider), Errors<(code::Forbidden,)>),
    security(("bearer" = []))
)]
async fn set(State(state): State<AppState>, mut t: Tenant, Path((_, raw)): Path<(String, String)>, ApiJson(req): ApiJson<SetProvider>) -> ApiResult<Json<LlmProvider>> {
    t.require_org_role(OrgRole::Admin, WHAT)?;
    let kind = provider(&raw)?;
    if let Some(url) = &req.base_url {
        let parsed = reqwest::Url::parse(url).map_err(|_| ApiError::invalid("base_url must be an http(s) URL"))?;
        if !matches!(parsed.scheme(), "http" | "https") || url.len() > 500 {
            return Err(ApiError::invalid("base_url must be an http(s) URL of at most 500 characters"));
        }
        if !parsed.username().is_empty() || parsed.password().is_some() {
            return Err(ApiError::invalid("base_url must not carry credentials; set api_key"));
        }
        crate::net::check_public(url, state.allow_private_urls).await.map_err(|e| ApiError::invalid(format!("base_url: {e}")))?;
    }
    if req.api_key.as_ref().is_some_and(|k| k.trim().is_empty() || k.len() > 1000) {
        return Err(ApiError::invalid("api_key must be 1 to 1000 characters"));
    }
    let sealed = req.api_key.as_ref().map(|k| state.sealer.seal(k.trim().as_bytes()));
    let row: Row = sqlx::query_as(
        "INSERT INTO llm_providers (provider, base_url, api_key, wire) VALUES ($1, $2, $3, coalesce($4, '{}'))
         ON CONFLICT (provider) DO UPDATE SET base_url = coalesce($2, llm_providers.base_url),
             api_key = coalesce($3, llm_providers.api_key), wire = coalesce($4, llm_providers.wire), updated_at = now()
         RETURNING provider, base_url, api_key IS NOT NULL AS has_key, wire, updated_at",
    )
    .bind(kind.name())
    .bind(req.base_url.as_deref().map(|u| u.trim_end_matches('/')))
    .bind(sealed)
    .bind(req.wire.map(sqlx::types::Json))
    .fetch_one(t.conn())
    .await?;
    let org = t.org.id;
    t.commit().await?;
    state.llm.forget_org(org);
    Ok(Json(row.into()))
}

#[utoipa::path(
    delete, path = "/api/v1/orgs/{org}/llm-providers/{provider}", tag = "llm",
    summary = "Remove the org's settings for a provider (the server's are used again)",
    params(path::Provider),
    responses((status = NO_CONTENT, description = "removed"), Errors<(code::Forbidden, code::NotFound, code::InvalidRequest)>),
    security(("bearer" = []))
)]
async fn remove(State(state): State<AppState>, mut t: Tenant, Path((_, raw)): Path<(String, String)>) -> ApiResult<StatusCode> {
    t.require_org_role(OrgRole::Admin, WHAT)?;
    let kind = provider(&raw)?;
    let done = sqlx::query("DELETE FROM llm_providers WHERE provider = $1").bind(kind.name()).execute(t.conn()).await?;
    let org = t.org.id;
    t.commit().await?;
    state.llm.forget_org(org);
    if done.rows_affected() == 0 {
        return Err(ApiError::new(kodel_core::ErrorCode::NotFound, format!("the org has no settings for {}", kind.name())));
    }
    Ok(StatusCode::NO_CONTENT)
}
