//! Workflows of an org: list, show, create (a definition or a copy of a built-in
//! template), replace (safely: tasks of a removed status must be given a new home).

use axum::extract::Path;
use axum::http::StatusCode;
use axum::Json;
use kodel_core::api::{CopyWorkflow, CreateWorkflow, OrgRole, Page, Workflow, WorkflowDef};
use kodel_core::workflow::template;
use kodel_core::ErrorCode;
use uuid::Uuid;

use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::openapi::{Errors, code, path};
use crate::AppState;
use crate::engine::workflow;
use crate::error::{ApiError, ApiResult};
use crate::json::ApiJson;
use crate::tenant::Tenant;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(list, create)).routes(routes!(show, replace))
}

/// A workflow by id or name (any case).
/// `POST /workflows`'s body, for the documentation (the handler tells the two apart by
/// `from_template`, see `CreateWorkflow::from_json`).
#[derive(serde::Serialize, utoipa::ToSchema)]
#[allow(dead_code)]
#[serde(untagged)]
enum WorkflowCreate {
    Define(WorkflowDef),
    Copy(kodel_core::api::CopyWorkflow),
}

async fn find(t: &mut Tenant, raw: &str) -> ApiResult<Uuid> {
    let id = Uuid::parse_str(raw.trim()).ok();
    let found: Option<Uuid> = sqlx::query_scalar("SELECT id FROM workflows WHERE id = $1 OR lower(name) = lower($2) ORDER BY id LIMIT 1")
        .bind(id)
        .bind(raw.trim())
        .fetch_optional(t.conn())
        .await?;
    found.ok_or_else(|| ApiError::new(ErrorCode::WorkflowNotFound, format!("workflow {raw:?} not found")))
}

#[utoipa::path(
    get, path = "/api/v1/orgs/{org}/workflows", tag = "workflows",
    summary = "The org's workflows (one page)",
    params(path::Org),
    responses((status = OK, description = "workflows", body = Page<Workflow>)),
    security(("bearer" = []))
)]
async fn list(mut t: Tenant) -> ApiResult<Json<Page<Workflow>>> {
    let ids: Vec<Uuid> = sqlx::query_scalar("SELECT id FROM workflows ORDER BY name, id").fetch_all(t.conn()).await?;
    let mut data = Vec::with_capacity(ids.len());
    for id in ids {
        data.push(workflow::load(t.conn(), id).await?);
    }
    t.commit().await?;
    Ok(Json(Page { data, next_cursor: None }))
}

#[utoipa::path(
    get, path = "/api/v1/orgs/{org}/workflows/{workflow}", tag = "workflows",
    summary = "One workflow by id or name",
    params(path::Workflow),
    responses((status = OK, description = "workflow", body = Workflow), Errors<(code::WorkflowNotFound,)>),
    security(("bearer" = []))
)]
async fn show(mut t: Tenant, Path((_, raw)): Path<(String, String)>) -> ApiResult<Json<Workflow>> {
    let id = find(&mut t, &raw).await?;
    let wf = workflow::load(t.conn(), id).await?;
    t.commit().await?;
    Ok(Json(wf))
}

async fn name_free(t: &mut Tenant, name: &str, except: Option<Uuid>) -> ApiResult<()> {
    let taken: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM workflows WHERE lower(name) = lower($1) AND id IS DISTINCT FROM $2)")
        .bind(name.trim())
        .bind(except)
        .fetch_one(t.conn())
        .await?;
    if taken {
        return Err(ApiError::new(ErrorCode::NameTaken, format!("a workflow named {:?} already exists", name.trim())));
    }
    Ok(())
}

#[utoipa::path(
    post, path = "/api/v1/orgs/{org}/workflows", tag = "workflows",
    summary = "Create a workflow from a definition, or copy a built-in template with from_template (org admin)",
    params(path::Org),
    request_body = WorkflowCreate,
    responses((status = CREATED, description = "workflow", body = Workflow), Errors<(code::Forbidden, code::NameTaken)>),
    security(("bearer" = []))
)]
async fn create(mut t: Tenant, ApiJson(body): ApiJson<serde_json::Value>) -> ApiResult<(StatusCode, Json<Workflow>)> {
    let req = CreateWorkflow::from_json(body).map_err(|e| ApiError::invalid(e.to_string()))?;
    t.require_org_role(OrgRole::Admin, "creating workflows")?;
    let def = match req {
        CreateWorkflow::Define(def) => def,
        CreateWorkflow::Copy(CopyWorkflow { name, from_template }) => {
            let tpl = template(from_template.trim())
                .ok_or_else(|| ApiError::invalid(format!("no built-in template {from_template:?}; use software-development or kanban")))?;
            workflow::from_template(tpl, &name)
        }
    };
    name_free(&mut t, &def.name, None).await?;
    let id = workflow::create(t.conn(), &def).await?;
    let wf = workflow::load(t.conn(), id).await?;
    t.commit().await?;
    Ok((StatusCode::CREATED, Json(wf)))
}

#[utoipa::path(
    put, path = "/api/v1/orgs/{org}/workflows/{workflow}", tag = "workflows",
    summary = "Replace a workflow's definition (org admin); 409 status_not_empty when a removed status holds tasks and `moves` does not say where they go",
    params(path::Workflow),
    request_body = WorkflowDef,
    responses((status = OK, description = "workflow", body = Workflow), Errors<(code::Forbidden, code::WorkflowNotFound, code::NameTaken, code::StatusNotEmpty)>),
    security(("bearer" = []))
)]
async fn replace(mut t: Tenant, Path((_, raw)): Path<(String, String)>, ApiJson(def): ApiJson<WorkflowDef>) -> ApiResult<Json<Workflow>> {
    t.require_org_role(OrgRole::Admin, "editing workflows")?;
    let id = find(&mut t, &raw).await?;
    name_free(&mut t, &def.name, Some(id)).await?;
    workflow::edit(&mut t, id, &def).await?;
    let wf = workflow::load(t.conn(), id).await?;
    t.commit().await?;
    Ok(Json(wf))
}
