//! AI job templates: the built-in defaults (copied into each org, editable) and the
//! org's own. Everyone in the org reads them; org admins change them.

use axum::extract::Path;
use axum::http::StatusCode;
use axum::Json;
use chrono::{DateTime, Utc};
use kodel_core::api::{MAX_NAME, OrgRole, Page};
use kodel_core::jobs::{CreateJobTemplate, JobKind, JobTemplate, MAX_PROMPT, TOOLS, UpdateJobTemplate, validate_template};
use kodel_core::ErrorCode;
use uuid::Uuid;

use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::openapi::{Errors, code, path};
use crate::AppState;
use crate::engine::jobs::{ensure_builtin_templates, template_id_by_name};
use crate::error::{ApiError, ApiResult, check_len, is_fk_violation, is_unique_violation, require_text};
use crate::json::ApiJson;
use crate::tenant::Tenant;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(list, create)).routes(routes!(show, update, remove))
}

#[derive(sqlx::FromRow)]
struct Row {
    id: Uuid,
    name: String,
    #[sqlx(try_from = "String")]
    kind: JobKind,
    prompt: String,
    model: Option<String>,
    allowed_tools: Vec<String>,
    max_steps: i32,
    time_limit_secs: i32,
    budget_tokens: Option<i64>,
    builtin: Option<String>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

impl Row {
    fn into_api(self) -> JobTemplate {
        JobTemplate {
            id: self.id,
            name: self.name,
            kind: self.kind,
            prompt: self.prompt,
            model: self.model,
            allowed_tools: self.allowed_tools,
            max_steps: self.max_steps,
            time_limit_secs: self.time_limit_secs,
            budget_tokens: self.budget_tokens,
            builtin: self.builtin,
            created_at: self.created_at,
            updated_at: self.updated_at,
        }
    }
}

const SELECT: &str = "SELECT id, name, kind, prompt, model, allowed_tools, max_steps, time_limit_secs, budget_tokens, builtin,
        created_at, updated_at FROM ai_job_templates";

async fn load(t: &mut Tenant, id: Uuid) -> ApiResult<JobTemplate> {
    Ok(sqlx::query_as::<_, Row>(&format!("{SELECT} WHERE id = $1")).bind(id).fetch_one(t.conn()).await?.into_api())
}

async fn find(t: &mut Tenant, raw: &str) -> ApiResult<Uuid> {
    ensure_builtin_templates(t.conn()).await?;
    template_id_by_name(t.conn(), raw)
        .await?
        .ok_or_else(|| ApiError::new(ErrorCode::TemplateNotFound, format!("job template {raw:?} not found")))
}

fn check_model(model: Option<&str>) -> ApiResult<()> {
    match model {
        Some(m) if !m.contains('/') || m.len() > 200 => {
            Err(ApiError::invalid(format!("model {m:?} must be provider/model, e.g. openai/gpt-4.1-mini")))
        }
        _ => Ok(()),
    }
}

#[utoipa::path(
    get, path = "/api/v1/orgs/{org}/job-templates", tag = "job_templates",
    summary = "Job templates, the built-in defaults included",
    params(path::Org),
    responses((status = OK, description = "job templates", body = Page<JobTemplate>)),
    security(("bearer" = []))
)]
async fn list(mut t: Tenant) -> ApiResult<Json<Page<JobTemplate>>> {
    ensure_builtin_templates(t.conn()).await?;
    let rows = sqlx::query_as::<_, Row>(&format!("{SELECT} ORDER BY name")).fetch_all(t.conn()).await?;
    t.commit().await?;
    Ok(Json(Page { data: rows.into_iter().map(Row::into_api).collect(), next_cursor: None }))
}

#[utoipa::path(
    get, path = "/api/v1/orgs/{org}/job-templates/{template}", tag = "job_templates",
    summary = "One job template by name or id",
    params(path::Template),
    responses((status = OK, description = "job template", body = JobTemplate), Errors<(code::TemplateNotFound,)>),
    security(("bearer" = []))
)]
async fn show(mut t: Tenant, Path((_, raw)): Path<(String, String)>) -> ApiResult<Json<JobTemplate>> {
    let id = find(&mut t, &raw).await?;
    let tpl = load(&mut t, id).await?;
    t.commit().await?;
    Ok(Json(tpl))
}

#[utoipa::path(
    post, path = "/api/v1/orgs/{org}/job-templates", tag = "job_templates",
    summary = "Create a job template (org admin)",
    params(path::Org),
    request_body = CreateJobTemplate,
    responses((status = CREATED, description = "job template", body = JobTemplate), Errors<(code::Forbidden, code::NameTaken)>),
    security(("bearer" = []))
)]
async fn create(mut t: Tenant, ApiJson(req): ApiJson<CreateJobTemplate>) -> ApiResult<(StatusCode, Json<JobTemplate>)> {
    t.require_org_role(OrgRole::Admin, "creating job templates")?;
    let name = require_text("name", &req.name, MAX_NAME)?;
    let prompt = require_text("prompt", &req.prompt, MAX_PROMPT)?;
    check_model(req.model.as_deref())?;
    let tools = req.allowed_tools.unwrap_or_else(|| TOOLS.iter().map(|s| s.to_string()).collect());
    let (steps, secs) = (req.max_steps.unwrap_or(100), req.time_limit_secs.unwrap_or(3600));
    validate_template(&tools, steps, secs, req.budget_tokens).map_err(ApiError::invalid)?;
    ensure_builtin_templates(t.conn()).await?;
    let id = Uuid::now_v7();
    sqlx::query(
        "INSERT INTO ai_job_templates (id, name, kind, prompt, model, allowed_tools, max_steps, time_limit_secs, budget_tokens)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
    )
    .bind(id)
    .bind(&name)
    .bind(req.kind.as_str())
    .bind(&prompt)
    .bind(&req.model)
    .bind(&tools)
    .bind(steps)
    .bind(secs)
    .bind(req.budget_tokens)
    .execute(t.conn())
    .await
    .map_err(|e| if is_unique_violation(&e) { ApiError::new(ErrorCode::NameTaken, format!("a job template named {name:?} already exists")) } else { e.into() })?;
    let tpl = load(&mut t, id).await?;
    t.commit().await?;
    Ok((StatusCode::CREATED, Json(tpl)))
}

#[utoipa::path(
    patch, path = "/api/v1/orgs/{org}/job-templates/{template}", tag = "job_templates",
    summary = "Edit a job template (org admin)",
    params(path::Template),
    request_body = UpdateJobTemplate,
    responses((status = OK, description = "job template", body = JobTemplate), Errors<(code::Forbidden, code::TemplateNotFound)>),
    security(("bearer" = []))
)]
async fn update(mut t: Tenant, Path((_, raw)): Path<(String, String)>, ApiJson(req): ApiJson<UpdateJobTemplate>) -> ApiResult<Json<JobTemplate>> {
    t.require_org_role(OrgRole::Admin, "editing job templates")?;
    let id = find(&mut t, &raw).await?;
    let cur = load(&mut t, id).await?;
    if let Some(p) = &req.prompt {
        require_text("prompt", p, MAX_PROMPT)?;
    }
    if let Some(Some(m)) = &req.model {
        check_len("model", m, 200)?;
        check_model(Some(m))?;
    }
    let tools = req.allowed_tools.clone().unwrap_or(cur.allowed_tools);
    let steps = req.max_steps.unwrap_or(cur.max_steps);
    let secs = req.time_limit_secs.unwrap_or(cur.time_limit_secs);
    let budget = req.budget_tokens.unwrap_or(cur.budget_tokens);
    validate_template(&tools, steps, secs, budget).map_err(ApiError::invalid)?;
    sqlx::query(
        "UPDATE ai_job_templates SET prompt = coalesce($2, prompt), model = $3, allowed_tools = $4, max_steps = $5,
                time_limit_secs = $6, budget_tokens = $7, updated_at = now() WHERE id = $1",
    )
    .bind(id)
    .bind(req.prompt.as_deref().map(str::trim))
    .bind(req.model.unwrap_or(cur.model))
    .bind(&tools)
    .bind(steps)
    .bind(secs)
    .bind(budget)
    .execute(t.conn())
    .await?;
    let tpl = load(&mut t, id).await?;
    t.commit().await?;
    Ok(Json(tpl))
}

#[utoipa::path(
    delete, path = "/api/v1/orgs/{org}/job-templates/{template}", tag = "job_templates",
    summary = "Delete a job template (org admin); 409 conflict for a built-in one or one in use by a binding or jobs",
    params(path::Template),
    responses((status = NO_CONTENT, description = "deleted"), Errors<(code::Forbidden, code::TemplateNotFound, code::Conflict)>),
    security(("bearer" = []))
)]
async fn remove(mut t: Tenant, Path((_, raw)): Path<(String, String)>) -> ApiResult<StatusCode> {
    t.require_org_role(OrgRole::Admin, "deleting job templates")?;
    let id = find(&mut t, &raw).await?;
    if load(&mut t, id).await?.builtin.is_some() {
        return Err(ApiError::new(ErrorCode::Conflict, format!("{raw:?} is a built-in template: edit it instead of deleting it")));
    }
    sqlx::query("DELETE FROM ai_job_templates WHERE id = $1").bind(id).execute(t.conn()).await.map_err(|e| {
        if is_fk_violation(&e) {
            ApiError::new(ErrorCode::Conflict, format!("job template {raw:?} is in use by a workflow binding or by jobs; it cannot be deleted"))
        } else {
            e.into()
        }
    })?;
    t.commit().await?;
    Ok(StatusCode::NO_CONTENT)
}
