//! Instance templates: what an agent's workspace for a job is built from (base image,
//! packages, setup script, environment, network, limits). A template with a base image
//! runs its jobs in containers, on agents with a Docker Engine. Org admins manage them;
//! projects pick one with `PATCH /projects/{key} {"instance_template": name}`.
//!
//! Env values are secrets: sealed at rest with the server's key, never returned (every
//! value reads as `SECRET_MASK`, which sent back keeps the stored value), opened only
//! for the agent that runs a job.

use std::collections::BTreeMap;

use axum::extract::Path;
use axum::http::StatusCode;
use axum::Json;
use chrono::{DateTime, Utc};
use kodel_core::api::{MAX_NAME, OrgRole, Page};
use kodel_core::infra::{InstanceTemplate, InstanceTemplateIn, MAX_SETUP_SCRIPT, SECRET_MASK, validate_instance_template};
use kodel_core::ErrorCode;
use uuid::Uuid;

use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::openapi::{Errors, code, path};
use crate::AppState;
use crate::error::{ApiError, ApiResult, check_len, is_unique_violation, require_text};
use crate::json::ApiJson;
use crate::tenant::Tenant;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(list, create)).routes(routes!(show, update, remove))
}

#[derive(sqlx::FromRow)]
struct Row {
    id: Uuid,
    name: String,
    base_image: Option<String>,
    packages: Vec<String>,
    setup_script: String,
    env: serde_json::Value,
    network: bool,
    cpu_limit: Option<f32>,
    memory_mb: Option<i32>,
    max_processes: Option<i32>,
    dind: bool,
    labels: Vec<String>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

impl Row {
    fn into_api(self) -> InstanceTemplate {
        InstanceTemplate {
            id: self.id,
            name: self.name,
            base_image: self.base_image,
            packages: self.packages,
            setup_script: self.setup_script,
            env: stored_env(&self.env).into_keys().map(|k| (k, SECRET_MASK.to_owned())).collect(),
            network: self.network,
            cpu_limit: self.cpu_limit,
            memory_mb: self.memory_mb,
            max_processes: self.max_processes,
            dind: self.dind,
            labels: self.labels,
            created_at: self.created_at,
            updated_at: self.updated_at,
        }
    }
}

const SELECT: &str = "SELECT id, name, base_image, packages, setup_script, env, network, cpu_limit, memory_mb, max_processes, dind, labels, created_at, updated_at
     FROM instance_templates";

fn stored_env(v: &serde_json::Value) -> BTreeMap<String, String> {
    serde_json::from_value(v.clone()).unwrap_or_default()
}

/// The env to store: each value sealed; the mask keeps what `stored` has.
fn seal_env(t: &Tenant, new: BTreeMap<String, String>, stored: &BTreeMap<String, String>) -> ApiResult<serde_json::Value> {
    let mut sealed = BTreeMap::new();
    for (name, value) in new {
        let value = if value == SECRET_MASK {
            let kept = stored.get(&name).ok_or_else(|| ApiError::invalid(format!("env {name}: {SECRET_MASK} keeps a stored value, and {name} has none")))?;
            t.state.sealer.keep_text(kept)
        } else {
            t.state.sealer.seal_text(&value)
        };
        sealed.insert(name, value);
    }
    serde_json::to_value(sealed).map_err(ApiError::internal)
}

async fn find_row(t: &mut Tenant, raw: &str) -> ApiResult<Row> {
    let id = Uuid::parse_str(raw.trim()).ok();
    sqlx::query_as::<_, Row>(&format!("{SELECT} WHERE name = $1 OR id = $2"))
        .bind(raw.trim())
        .bind(id)
        .fetch_optional(t.conn())
        .await?
        .ok_or_else(|| ApiError::new(ErrorCode::TemplateNotFound, format!("instance template {raw:?} not found")))
}

async fn find(t: &mut Tenant, raw: &str) -> ApiResult<InstanceTemplate> {
    Ok(find_row(t, raw).await?.into_api())
}

fn check(req: &InstanceTemplateIn) -> ApiResult<()> {
    validate_instance_template(req).map_err(ApiError::invalid)?;
    if let Some(s) = &req.setup_script {
        check_len("setup_script", s, MAX_SETUP_SCRIPT)?;
    }
    Ok(())
}

/// The base image to store: trimmed, and an empty one is none.
fn base_image(raw: Option<&str>) -> Option<String> {
    raw.map(str::trim).filter(|b| !b.is_empty()).map(str::to_owned)
}

/// Docker-in-docker runs only in a container.
fn check_dind(dind: bool, base_image: Option<&str>) -> ApiResult<()> {
    if dind && base_image.is_none() {
        return Err(ApiError::invalid("dind needs a base_image: docker-in-docker runs only in a container"));
    }
    Ok(())
}

#[utoipa::path(
    get, path = "/api/v1/orgs/{org}/instance-templates", tag = "instance_templates",
    summary = "Instance templates",
    params(path::Org),
    responses((status = OK, description = "instance templates", body = Page<InstanceTemplate>)),
    security(("bearer" = []))
)]
async fn list(mut t: Tenant) -> ApiResult<Json<Page<InstanceTemplate>>> {
    let rows = sqlx::query_as::<_, Row>(&format!("{SELECT} ORDER BY name")).fetch_all(t.conn()).await?;
    t.commit().await?;
    Ok(Json(Page { data: rows.into_iter().map(Row::into_api).collect(), next_cursor: None }))
}

#[utoipa::path(
    get, path = "/api/v1/orgs/{org}/instance-templates/{template}", tag = "instance_templates",
    summary = "One instance template by name or id",
    params(path::Template),
    responses((status = OK, description = "instance template", body = InstanceTemplate), Errors<(code::TemplateNotFound,)>),
    security(("bearer" = []))
)]
async fn show(mut t: Tenant, Path((_, raw)): Path<(String, String)>) -> ApiResult<Json<InstanceTemplate>> {
    let it = find(&mut t, &raw).await?;
    t.commit().await?;
    Ok(Json(it))
}

#[utoipa::path(
    post, path = "/api/v1/orgs/{org}/instance-templates", tag = "instance_templates",
    summary = "Create an instance template (org admin); name is required",
    params(path::Org),
    request_body = InstanceTemplateIn,
    responses((status = CREATED, description = "instance template", body = InstanceTemplate), Errors<(code::Forbidden, code::NameTaken)>),
    security(("bearer" = []))
)]
async fn create(mut t: Tenant, ApiJson(req): ApiJson<InstanceTemplateIn>) -> ApiResult<(StatusCode, Json<InstanceTemplate>)> {
    t.require_org_role(OrgRole::Admin, "creating instance templates")?;
    let name = require_text("name", req.name.as_deref().unwrap_or(""), MAX_NAME)?;
    check(&req)?;
    let base_image = base_image(req.base_image.clone().flatten().as_deref());
    check_dind(req.dind.unwrap_or(false), base_image.as_deref())?;
    let env = seal_env(&t, req.env.clone().unwrap_or_default(), &BTreeMap::new())?;
    sqlx::query(
        "INSERT INTO instance_templates (id, name, base_image, packages, setup_script, env, network, cpu_limit, memory_mb, dind, labels, max_processes)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
    )
    .bind(Uuid::now_v7())
    .bind(&name)
    .bind(base_image)
    .bind(req.packages.unwrap_or_default())
    .bind(req.setup_script.unwrap_or_default())
    .bind(env)
    .bind(req.network.unwrap_or(false))
    .bind(req.cpu_limit.flatten())
    .bind(req.memory_mb.flatten())
    .bind(req.dind.unwrap_or(false))
    .bind(req.labels.unwrap_or_default())
    .bind(req.max_processes.flatten())
    .execute(t.conn())
    .await
    .map_err(|e| if is_unique_violation(&e) { ApiError::new(ErrorCode::NameTaken, format!("an instance template named {name:?} already exists")) } else { e.into() })?;
    let it = find(&mut t, &name).await?;
    t.commit().await?;
    Ok((StatusCode::CREATED, Json(it)))
}

#[utoipa::path(
    patch, path = "/api/v1/orgs/{org}/instance-templates/{template}", tag = "instance_templates",
    summary = "Change an instance template (org admin)",
    params(path::Template),
    request_body = InstanceTemplateIn,
    responses((status = OK, description = "instance template", body = InstanceTemplate), Errors<(code::Forbidden, code::TemplateNotFound, code::NameTaken)>),
    security(("bearer" = []))
)]
async fn update(mut t: Tenant, Path((_, raw)): Path<(String, String)>, ApiJson(req): ApiJson<InstanceTemplateIn>) -> ApiResult<Json<InstanceTemplate>> {
    t.require_org_role(OrgRole::Admin, "editing instance templates")?;
    let row = find_row(&mut t, &raw).await?;
    check(&req)?;
    let env = req.env.clone().map(|e| seal_env(&t, e, &stored_env(&row.env))).transpose()?;
    let cur = row.into_api();
    let name = req.name.as_deref().map(|n| require_text("name", n, MAX_NAME)).transpose()?;
    let image = match &req.base_image {
        Some(new) => base_image(new.as_deref()),
        None => cur.base_image.clone(),
    };
    check_dind(req.dind.unwrap_or(cur.dind), image.as_deref())?;
    sqlx::query(
        "UPDATE instance_templates SET name = coalesce($2, name), base_image = $3, packages = coalesce($4, packages),
                setup_script = coalesce($5, setup_script), env = coalesce($6, env), network = coalesce($7, network),
                cpu_limit = $8, memory_mb = $9, dind = coalesce($10, dind), labels = coalesce($11, labels), max_processes = $12, updated_at = now() WHERE id = $1",
    )
    .bind(cur.id)
    .bind(&name)
    .bind(image)
    .bind(req.packages)
    .bind(req.setup_script)
    .bind(env)
    .bind(req.network)
    .bind(req.cpu_limit.unwrap_or(cur.cpu_limit))
    .bind(req.memory_mb.unwrap_or(cur.memory_mb))
    .bind(req.dind)
    .bind(req.labels)
    .bind(req.max_processes.unwrap_or(cur.max_processes))
    .execute(t.conn())
    .await
    .map_err(|e| if is_unique_violation(&e) { ApiError::new(ErrorCode::NameTaken, "an instance template with that name already exists") } else { e.into() })?;
    let it = find(&mut t, &cur.id.to_string()).await?;
    t.commit().await?;
    Ok(Json(it))
}

#[utoipa::path(
    delete, path = "/api/v1/orgs/{org}/instance-templates/{template}", tag = "instance_templates",
    summary = "Delete an instance template (org admin); projects using it are detached",
    params(path::Template),
    responses((status = NO_CONTENT, description = "deleted"), Errors<(code::Forbidden, code::TemplateNotFound)>),
    security(("bearer" = []))
)]
async fn remove(mut t: Tenant, Path((_, raw)): Path<(String, String)>) -> ApiResult<StatusCode> {
    t.require_org_role(OrgRole::Admin, "deleting instance templates")?;
    let cur = find(&mut t, &raw).await?;
    sqlx::query("DELETE FROM instance_templates WHERE id = $1").bind(cur.id).execute(t.conn()).await?;
    t.commit().await?;
    Ok(StatusCode::NO_CONTENT)
}
