//! Modules: the git repositories of a project. Credentials for private repositories
//! are sealed before they are stored and never come back out through the API.

use axum::extract::Path;
use axum::http::StatusCode;
use axum::Json;
use chrono::{DateTime, Utc};
use kodel_core::api::{Page, ProjectRole};
use kodel_core::infra::{CreateModule, MAX_URL, Module, RepoCredentials, UpdateModule};
use kodel_core::ErrorCode;
use kodel_core::forge::{ForgeKind, forge_for};
use serde::Deserialize;
use uuid::Uuid;

use super::projects::{ProjectCtx, access};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::openapi::{Errors, code, path};
use crate::AppState;
use crate::error::{ApiError, ApiResult, check_len, is_unique_violation, require_text};
use crate::json::{ApiJson, ApiQuery};
use crate::tenant::Tenant;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(list, create)).routes(routes!(show, update, remove))
}

#[derive(sqlx::FromRow)]
struct Row {
    id: Uuid,
    project: String,
    name: String,
    url: String,
    default_branch: String,
    path_prefix: String,
    has_credentials: bool,
    forge: Option<String>,
    forge_api_url: Option<String>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

impl Row {
    fn into_api(self) -> Module {
        let named = self.forge.as_deref().and_then(ForgeKind::parse);
        let forge = forge_for(&self.url, named, self.forge_api_url.as_deref()).map(|f| f.kind);
        Module {
            forge,
            forge_api_url: self.forge_api_url,
            id: self.id,
            project: self.project,
            name: self.name,
            url: self.url,
            default_branch: self.default_branch,
            path_prefix: self.path_prefix,
            has_credentials: self.has_credentials,
            created_at: self.created_at,
            updated_at: self.updated_at,
        }
    }
}

const SELECT: &str = "SELECT m.id, p.key AS project, m.name, m.url, m.default_branch, m.path_prefix,
        m.credentials IS NOT NULL AS has_credentials, m.forge, m.forge_api_url, m.created_at, m.updated_at
     FROM modules m JOIN projects p ON p.id = m.project_id";

/// A clone URL: https, http, ssh, git, file, or scp-like `user@host:path`; an absolute
/// path is taken as `file://` (a repository on the agents' host, which agents clone
/// only with `--allow-file-remotes`). Credentials belong in `credentials`, not in the
/// URL (where they would be shown to every reader).
fn check_url(url: &str) -> ApiResult<String> {
    let url = require_text("url", url, MAX_URL)?;
    let url = if url.starts_with('/') { format!("file://{url}") } else { url };
    let scheme_ok = ["https://", "http://", "ssh://", "git://", "file://"].iter().any(|s| url.starts_with(s));
    let scp_like = !url.contains("://") && url.contains('@') && url.contains(':');
    if !(scheme_ok || scp_like) || url.chars().any(char::is_whitespace) {
        return Err(ApiError::invalid(format!("url {url:?} is not a git URL (https://, ssh://, git@host:path, file:// or an absolute path)")));
    }
    if let Some((scheme, rest)) = url.split_once("://")
        && let Some(authority) = rest.split('/').next()
        && (authority.contains(':') && authority.contains('@') || (scheme.starts_with("http") && authority.contains('@')))
    {
        return Err(ApiError::invalid("put the user name, password or token in \"credentials\", not in the URL"));
    }
    Ok(url)
}

/// The host a URL points at (scp-like `user@host:path` too), to notice a move.
fn host_of(url: &str) -> String {
    let authority = match url.split_once("://") {
        Some((_, rest)) => rest.split('/').next().unwrap_or_default(),
        None => url.split(':').next().unwrap_or_default(),
    };
    authority.rsplit('@').next().unwrap_or_default().to_lowercase()
}

/// A module's name is a directory in the agent's workspace: one path component.
fn check_name(name: &str) -> ApiResult<String> {
    let name = require_text("name", name, 100)?;
    let ok = name.chars().next().is_some_and(|c| c.is_ascii_alphanumeric()) && name.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c));
    if !ok {
        return Err(ApiError::invalid(format!("module name {name:?}: letters, digits, '.', '_' and '-', starting with a letter or digit")));
    }
    Ok(name)
}

/// A forge API base: https (http only on this machine), no credentials in it: the
/// module's token is sent there.
fn check_api_url(u: &str) -> ApiResult<String> {
    let u = require_text("forge_api_url", u, MAX_URL)?;
    let parsed = reqwest::Url::parse(&u).map_err(|e| ApiError::invalid(format!("forge_api_url {u:?} is not a URL: {e}")))?;
    let loopback = matches!(parsed.host_str(), Some("localhost" | "127.0.0.1" | "[::1]"));
    if !(parsed.scheme() == "https" || parsed.scheme() == "http" && loopback) || parsed.host_str().is_none() {
        return Err(ApiError::invalid("forge_api_url must be an https:// URL (the module's token is sent there)"));
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(ApiError::invalid("put the forge token in \"credentials\", not in forge_api_url"));
    }
    Ok(u.trim_end_matches('/').to_owned())
}

fn check_branch(b: &str) -> ApiResult<String> {
    let b = require_text("default_branch", b, 250)?;
    if b.starts_with('-') || b.contains("..") || b.chars().any(|c| c.is_whitespace() || "~^:?*[\\".contains(c)) {
        return Err(ApiError::invalid(format!("default_branch {b:?} is not a valid branch name")));
    }
    Ok(b)
}

fn check_prefix(p: &str) -> ApiResult<String> {
    check_len("path_prefix", p, 500)?;
    let p = p.trim().trim_matches('/');
    if p.split('/').any(|part| part == "..") {
        return Err(ApiError::invalid("path_prefix must stay inside the repository"));
    }
    Ok(p.to_owned())
}

fn seal(t: &Tenant, c: &RepoCredentials) -> ApiResult<Vec<u8>> {
    check_len("credentials.secret", &c.secret, 20_000)?;
    if c.secret.is_empty() {
        return Err(ApiError::invalid("credentials.secret must not be empty"));
    }
    let json = serde_json::to_vec(c).map_err(ApiError::internal)?;
    Ok(t.state.sealer.seal(&json))
}

#[derive(Debug, Default, Deserialize)]
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    /// The project key (required).
    project: Option<String>,
}

#[utoipa::path(
    get, path = "/api/v1/orgs/{org}/modules", tag = "modules",
    summary = "A project's modules (git repositories)",
    params(path::Org, ListQuery),
    responses((status = OK, description = "modules", body = Page<Module>), Errors<(code::InvalidKey, code::ProjectNotFound, code::InvalidRequest)>),
    security(("bearer" = []))
)]
async fn list(mut t: Tenant, ApiQuery(q): ApiQuery<ListQuery>) -> ApiResult<Json<Page<Module>>> {
    let key = q.project.ok_or_else(|| ApiError::invalid("give the project: ?project=KEY"))?;
    let p = access(&mut t, &key, ErrorCode::ProjectNotFound).await?;
    let rows = sqlx::query_as::<_, Row>(&format!("{SELECT} WHERE m.project_id = $1 ORDER BY m.name")).bind(p.id).fetch_all(t.conn()).await?;
    t.commit().await?;
    Ok(Json(Page { data: rows.into_iter().map(Row::into_api).collect(), next_cursor: None }))
}

async fn find(t: &mut Tenant, raw: &str) -> ApiResult<(Module, ProjectCtx)> {
    let missing = || ApiError::new(ErrorCode::ModuleNotFound, format!("module {raw:?} not found"));
    let id = Uuid::parse_str(raw.trim()).map_err(|_| missing())?;
    let row = sqlx::query_as::<_, Row>(&format!("{SELECT} WHERE m.id = $1")).bind(id).fetch_optional(t.conn()).await?.ok_or_else(missing)?;
    let p = access(t, &row.project, ErrorCode::ModuleNotFound).await?;
    Ok((row.into_api(), p))
}

#[utoipa::path(
    get, path = "/api/v1/orgs/{org}/modules/{id}", tag = "modules",
    summary = "One module",
    params(path::Id),
    responses((status = OK, description = "module", body = Module), Errors<(code::ModuleNotFound,)>),
    security(("bearer" = []))
)]
async fn show(mut t: Tenant, Path((_, raw)): Path<(String, String)>) -> ApiResult<Json<Module>> {
    let (m, _) = find(&mut t, &raw).await?;
    t.commit().await?;
    Ok(Json(m))
}

#[utoipa::path(
    post, path = "/api/v1/orgs/{org}/modules", tag = "modules",
    summary = "Add a module to a project (tech lead+)",
    params(path::Org),
    request_body = CreateModule,
    responses((status = CREATED, description = "module", body = Module), Errors<(code::InvalidKey, code::Forbidden, code::ProjectNotFound, code::NameTaken)>),
    security(("bearer" = []))
)]
async fn create(mut t: Tenant, ApiJson(req): ApiJson<CreateModule>) -> ApiResult<(StatusCode, Json<Module>)> {
    let p = access(&mut t, &req.project, ErrorCode::ProjectNotFound).await?;
    p.require(ProjectRole::TechLead, "adding modules")?;
    let name = check_name(&req.name)?;
    let url = check_url(&req.url)?;
    let branch = check_branch(req.default_branch.as_deref().unwrap_or("main"))?;
    let prefix = check_prefix(req.path_prefix.as_deref().unwrap_or(""))?;
    let sealed = req.credentials.as_ref().map(|c| seal(&t, c)).transpose()?;
    let api_url = req.forge_api_url.as_deref().map(check_api_url).transpose()?;
    let id = Uuid::now_v7();
    sqlx::query(
        "INSERT INTO modules (id, project_id, name, url, default_branch, path_prefix, credentials, forge, forge_api_url)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
    )
    .bind(id)
    .bind(p.id)
    .bind(&name)
    .bind(&url)
    .bind(&branch)
    .bind(&prefix)
    .bind(sealed)
    .bind(req.forge.map(ForgeKind::as_str))
    .bind(api_url)
    .execute(t.conn())
    .await
    .map_err(|e| if is_unique_violation(&e) { ApiError::new(ErrorCode::NameTaken, format!("{} already has a module named {name:?}", p.key)) } else { e.into() })?;
    let (m, _) = find(&mut t, &id.to_string()).await?;
    t.commit().await?;
    Ok((StatusCode::CREATED, Json(m)))
}

#[utoipa::path(
    patch, path = "/api/v1/orgs/{org}/modules/{id}", tag = "modules",
    summary = "Change a module (tech lead+)",
    params(path::Id),
    request_body = UpdateModule,
    responses((status = OK, description = "module", body = Module), Errors<(code::Forbidden, code::ModuleNotFound)>),
    security(("bearer" = []))
)]
async fn update(mut t: Tenant, Path((_, raw)): Path<(String, String)>, ApiJson(req): ApiJson<UpdateModule>) -> ApiResult<Json<Module>> {
    let (m, p) = find(&mut t, &raw).await?;
    p.require(ProjectRole::TechLead, "changing modules")?;
    let url = req.url.as_deref().map(check_url).transpose()?;
    let branch = req.default_branch.as_deref().map(check_branch).transpose()?;
    let prefix = req.path_prefix.as_deref().map(check_prefix).transpose()?;
    // Credentials follow the host they were given for: a module that moves to another
    // host (or sends its token to another API) loses them, unless new ones come along.
    let moved = url.as_deref().is_some_and(|u| host_of(u) != host_of(&m.url))
        || matches!(&req.forge_api_url, Some(Some(u)) if m.forge_api_url.as_deref().is_none_or(|old| host_of(old) != host_of(u)));
    let sealed = match &req.credentials {
        Some(Some(c)) => Some(Some(seal(&t, c)?)),
        Some(None) => Some(None),
        None if moved && m.has_credentials => Some(None),
        None => None,
    };
    let api_url = match &req.forge_api_url {
        Some(Some(u)) => Some(Some(check_api_url(u)?)),
        other => other.clone(),
    };
    sqlx::query(
        "UPDATE modules SET url = coalesce($2, url), default_branch = coalesce($3, default_branch), path_prefix = coalesce($4, path_prefix),
                credentials = CASE WHEN $5 THEN $6 ELSE credentials END,
                forge = CASE WHEN $7 THEN $8 ELSE forge END,
                forge_api_url = CASE WHEN $9 THEN $10 ELSE forge_api_url END, updated_at = now() WHERE id = $1",
    )
    .bind(m.id)
    .bind(url)
    .bind(branch)
    .bind(prefix)
    .bind(sealed.is_some())
    .bind(sealed.flatten())
    .bind(req.forge.is_some())
    .bind(req.forge.flatten().map(ForgeKind::as_str))
    .bind(api_url.is_some())
    .bind(api_url.flatten())
    .execute(t.conn())
    .await?;
    let (m, _) = find(&mut t, &raw).await?;
    t.commit().await?;
    Ok(Json(m))
}

#[utoipa::path(
    delete, path = "/api/v1/orgs/{org}/modules/{id}", tag = "modules",
    summary = "Remove a module (tech lead+)",
    params(path::Id),
    responses((status = NO_CONTENT, description = "removed"), Errors<(code::Forbidden, code::ModuleNotFound)>),
    security(("bearer" = []))
)]
async fn remove(mut t: Tenant, Path((_, raw)): Path<(String, String)>) -> ApiResult<StatusCode> {
    let (m, p) = find(&mut t, &raw).await?;
    p.require(ProjectRole::TechLead, "removing modules")?;
    sqlx::query("DELETE FROM modules WHERE id = $1").bind(m.id).execute(t.conn()).await?;
    t.commit().await?;
    Ok(StatusCode::NO_CONTENT)
}
