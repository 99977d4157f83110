//! Budgets (`/orgs/{org}/budgets`): what LLM calls may spend on the org, a project or a
//! task. Members read them; org admins set and remove them (analytics/budgets.rs does
//! the checking).

use axum::Json;
use axum::extract::Path;
use axum::http::StatusCode;
use kodel_core::api::{OrgRole, Page};
use kodel_core::usage::{Budget, BudgetScope, SetBudget};
use kodel_core::ErrorCode;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use super::openapi::{Errors, code, path};
use crate::AppState;
use crate::analytics::budgets::{BudgetRow, LIST};
use crate::error::{ApiError, ApiResult};
use crate::json::ApiJson;
use crate::tenant::Tenant;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(list, set)).routes(routes!(remove))
}

const WHAT: &str = "setting budgets (org admins and owners)";
/// A million dollars, in micro-dollars: larger is a typo.
const MAX_COST: f64 = 1_000_000.0;

#[utoipa::path(
    get, path = "/api/v1/orgs/{org}/budgets", tag = "usage",
    summary = "The org's budgets with what each has spent this period (any member)",
    params(path::Org),
    responses((status = OK, description = "budgets", body = Page<Budget>)),
    security(("bearer" = []))
)]
async fn list(mut t: Tenant) -> ApiResult<Json<Page<Budget>>> {
    let rows: Vec<BudgetRow> = sqlx::query_as(LIST).fetch_all(t.conn()).await?;
    t.commit().await?;
    Ok(Json(Page { data: rows.into_iter().map(Budget::from).collect(), next_cursor: None }))
}

#[utoipa::path(
    put, path = "/api/v1/orgs/{org}/budgets", tag = "usage",
    summary = "Set a budget on the org, a project or a task (org admins); the one of the same scope and period is replaced",
    description = "Calls past a spent budget are refused with `budget_exceeded` (HTTP 402 at the gateway); \
                   at 80 % a `budget.warning` event is recorded on the task of the call.",
    params(path::Org),
    request_body = SetBudget,
    responses((status = OK, description = "the budget", body = Budget),
              Errors<(code::InvalidKey, code::Forbidden, code::ProjectNotFound, code::TaskNotFound)>),
    security(("bearer" = []))
)]
async fn set(mut t: Tenant, ApiJson(req): ApiJson<SetBudget>) -> ApiResult<Json<Budget>> {
    t.require_org_role(OrgRole::Admin, WHAT)?;
    if req.max_cost.is_none() && req.max_tokens.is_none() {
        return Err(ApiError::invalid("a budget needs max_cost (US dollars) or max_tokens, or both"));
    }
    if let Some(c) = req.max_cost
        && !(c.is_finite() && (0.0..=MAX_COST).contains(&c))
    {
        return Err(ApiError::invalid(format!("max_cost must be from 0 to {MAX_COST} dollars")));
    }
    if req.max_tokens.is_some_and(|n| n < 0) {
        return Err(ApiError::invalid("max_tokens must not be negative"));
    }
    let (project, task) = match req.scope {
        BudgetScope::Org => {
            if req.project.is_some() || req.task.is_some() {
                return Err(ApiError::invalid("an org budget names no project or task"));
            }
            (None, None)
        }
        BudgetScope::Project => {
            let key = req.project.as_deref().ok_or_else(|| ApiError::invalid("a project budget needs project (its key)"))?;
            (Some(super::projects::access(&mut t, key, ErrorCode::ProjectNotFound).await?.id), None)
        }
        BudgetScope::Task => {
            let key = req.task.as_deref().ok_or_else(|| ApiError::invalid("a task budget needs task (its key, KOD-42)"))?;
            (None, Some(super::tasks::find_task(&mut t, key, false).await?.1.id))
        }
    };
    let id: Uuid = sqlx::query_scalar(
        "INSERT INTO budgets (id, scope, project_id, task_id, period, max_cost_micros, max_tokens)
         VALUES ($1, $2, $3, $4, $5, $6, $7)
         ON CONFLICT (scope, coalesce(task_id, project_id, '00000000-0000-0000-0000-000000000000'), period)
         DO UPDATE SET max_cost_micros = $6, max_tokens = $7, updated_at = now(),
                       -- A raised limit may be crossed again: warn again then.
                       warned = CASE WHEN coalesce($6, -1) > coalesce(budgets.max_cost_micros, -1)
                                       OR coalesce($7, -1) > coalesce(budgets.max_tokens, -1) THEN NULL ELSE budgets.warned END
         RETURNING id",
    )
    .bind(Uuid::now_v7())
    .bind(req.scope.as_str())
    .bind(project)
    .bind(task)
    .bind(req.period.as_str())
    .bind(req.max_cost.map(|c| (c * 1_000_000.0).round() as i64))
    .bind(req.max_tokens)
    .fetch_one(t.conn())
    .await?;
    let row: BudgetRow = sqlx::query_as(&format!("SELECT * FROM ({LIST}) l WHERE l.id = $1")).bind(id).fetch_one(t.conn()).await?;
    // Paused jobs of the budget's scope that no budget holds back any more go on.
    crate::engine::jobs::resume_paused(&mut t, None, project, task).await?;
    t.commit().await?;
    Ok(Json(row.into()))
}

#[utoipa::path(
    delete, path = "/api/v1/orgs/{org}/budgets/{id}", tag = "usage",
    summary = "Remove a budget (org admins)",
    params(path::Id),
    responses((status = NO_CONTENT, description = "removed"), Errors<(code::InvalidKey, code::Forbidden, code::NotFound)>),
    security(("bearer" = []))
)]
async fn remove(mut t: Tenant, Path((_, id)): Path<(String, String)>) -> ApiResult<StatusCode> {
    t.require_org_role(OrgRole::Admin, WHAT)?;
    let id: Uuid = id.parse().map_err(|_| ApiError::new(ErrorCode::InvalidKey, "a budget id is a UUID"))?;
    let gone: Option<(Option<Uuid>, Option<Uuid>)> =
        sqlx::query_as("DELETE FROM budgets WHERE id = $1 RETURNING project_id, task_id").bind(id).fetch_optional(t.conn()).await?;
    let Some((project, task)) = gone else {
        return Err(ApiError::new(ErrorCode::NotFound, format!("no budget {id}")));
    };
    // Paused jobs it held back go on, unless another budget holds them.
    crate::engine::jobs::resume_paused(&mut t, None, project, task).await?;
    t.commit().await?;
    Ok(StatusCode::NO_CONTENT)
}
