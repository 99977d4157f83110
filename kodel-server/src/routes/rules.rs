//! Automation rules: per project (tech leads and above) or org-wide (org admins).
//! Members see the org-wide rules and those of projects they belong to.

use axum::extract::Path;
use axum::http::StatusCode;
use axum::Json;
use chrono::{DateTime, Utc};
use kodel_core::api::{MAX_NAME, OrgRole, Page, ProjectRole};
use kodel_core::rules::{CreateRule, MAX_RULES, Rule, RuleSpec, UpdateRule};
use kodel_core::ErrorCode;
use serde::Deserialize;
use uuid::Uuid;

use super::projects::access;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::openapi::{Errors, code, path};
use crate::AppState;
use crate::engine::rules::{check_webhooks, validate};
use crate::error::{ApiError, ApiResult, require_text};
use crate::json::{ApiJson, ApiQuery};
use crate::tenant::Tenant;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(list, create)).routes(routes!(show, update, remove))
}

#[derive(sqlx::FromRow)]
struct Row {
    id: Uuid,
    project: Option<String>,
    name: String,
    enabled: bool,
    dry_run: bool,
    spec: serde_json::Value,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

impl Row {
    fn into_api(self) -> ApiResult<Rule> {
        let spec: RuleSpec = serde_json::from_value(self.spec).map_err(ApiError::internal)?;
        Ok(Rule {
            id: self.id,
            project: self.project,
            name: self.name,
            enabled: self.enabled,
            dry_run: self.dry_run,
            spec,
            created_at: self.created_at,
            updated_at: self.updated_at,
        })
    }
}

const SELECT: &str = "SELECT r.id, p.key AS project, r.name, r.enabled, r.dry_run, r.spec, r.created_at, r.updated_at
     FROM automation_rules r LEFT JOIN projects p ON p.id = r.project_id";

#[derive(Debug, Default, Deserialize)]
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    /// A project key: its rules and the org-wide ones.
    project: Option<String>,
}

#[utoipa::path(
    get, path = "/api/v1/orgs/{org}/rules", tag = "rules",
    summary = "Automation rules the caller can see: org-wide ones and those of the caller's projects",
    params(path::Org, ListQuery),
    responses((status = OK, description = "rules", body = Page<Rule>), Errors<(code::InvalidKey, code::ProjectNotFound, code::InvalidRequest)>),
    security(("bearer" = []))
)]
async fn list(mut t: Tenant, ApiQuery(q): ApiQuery<ListQuery>) -> ApiResult<Json<Page<Rule>>> {
    let project = match q.project.as_deref() {
        Some(key) => Some(access(&mut t, key, ErrorCode::ProjectNotFound).await?.id),
        None => None,
    };
    let (admin, user) = (t.org.role >= OrgRole::Admin, t.user_id());
    let rows = sqlx::query_as::<_, Row>(&format!(
        "{SELECT} WHERE (r.project_id IS NULL OR $1 OR r.project_id IN (SELECT project_id FROM project_members WHERE user_id = $2))
           AND ($3::uuid IS NULL OR r.project_id = $3 OR r.project_id IS NULL)
         ORDER BY r.created_at, r.id LIMIT 1000"
    ))
    .bind(admin)
    .bind(user)
    .bind(project)
    .fetch_all(t.conn())
    .await?;
    t.commit().await?;
    Ok(Json(Page { data: rows.into_iter().map(Row::into_api).collect::<ApiResult<_>>()?, next_cursor: None }))
}

/// A rule the caller may see; `edit` also requires the right to change it.
async fn find(t: &mut Tenant, raw: &str, edit: bool) -> ApiResult<Rule> {
    let missing = || ApiError::new(ErrorCode::RuleNotFound, format!("rule {raw:?} not found"));
    let id = Uuid::parse_str(raw.trim()).map_err(|_| missing())?;
    let row = sqlx::query_as::<_, Row>(&format!("{SELECT} WHERE r.id = $1")).bind(id).fetch_optional(t.conn()).await?.ok_or_else(missing)?;
    let rule = row.into_api()?;
    match &rule.project {
        Some(key) => {
            let p = access(t, key, ErrorCode::RuleNotFound).await?;
            if edit {
                p.require(ProjectRole::TechLead, "changing this project's rules")?;
            }
        }
        None if edit => t.require_org_role(OrgRole::Admin, "changing org-wide rules")?,
        None => {}
    }
    Ok(rule)
}

#[utoipa::path(
    get, path = "/api/v1/orgs/{org}/rules/{id}", tag = "rules",
    summary = "One rule",
    params(path::Id),
    responses((status = OK, description = "rule", body = Rule), Errors<(code::RuleNotFound,)>),
    security(("bearer" = []))
)]
async fn show(mut t: Tenant, Path((_, raw)): Path<(String, String)>) -> ApiResult<Json<Rule>> {
    let rule = find(&mut t, &raw, false).await?;
    t.commit().await?;
    Ok(Json(rule))
}

#[utoipa::path(
    post, path = "/api/v1/orgs/{org}/rules", tag = "rules",
    summary = "Create a rule (project: tech lead+; org-wide: org admin)",
    params(path::Org),
    request_body = CreateRule,
    responses((status = CREATED, description = "rule", body = Rule), Errors<(code::InvalidKey, code::Forbidden, code::ProjectNotFound)>),
    security(("bearer" = []))
)]
async fn create(mut t: Tenant, ApiJson(req): ApiJson<CreateRule>) -> ApiResult<(StatusCode, Json<Rule>)> {
    let name = require_text("name", &req.name, MAX_NAME)?;
    let project = match req.project.as_deref() {
        Some(key) => {
            let p = access(&mut t, key, ErrorCode::ProjectNotFound).await?;
            p.require(ProjectRole::TechLead, "adding rules to this project")?;
            Some(p.id)
        }
        None => {
            t.require_org_role(OrgRole::Admin, "adding org-wide rules")?;
            None
        }
    };
    let spec = RuleSpec { trigger: req.trigger, conditions: req.conditions, how: req.how, actions: req.actions };
    validate(&spec)?;
    check_webhooks(&spec, t.state.allow_private_urls).await?;
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM automation_rules WHERE project_id IS NOT DISTINCT FROM $1")
        .bind(project)
        .fetch_one(t.conn())
        .await?;
    if count >= MAX_RULES {
        let scope = if project.is_some() { "this project" } else { "org-wide" };
        return Err(ApiError::invalid(format!("{scope} already has {MAX_RULES} rules, the most allowed: delete or merge some")));
    }
    let id = Uuid::now_v7();
    let user = t.user_id();
    sqlx::query(
        "INSERT INTO automation_rules (id, project_id, name, enabled, dry_run, trigger_kind, spec, created_by)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
    )
    .bind(id)
    .bind(project)
    .bind(&name)
    .bind(req.enabled.unwrap_or(true))
    .bind(req.dry_run.unwrap_or(false))
    .bind(spec.trigger.kind())
    .bind(serde_json::to_value(&spec).map_err(ApiError::internal)?)
    .bind(user)
    .execute(t.conn())
    .await?;
    let rule = find(&mut t, &id.to_string(), false).await?;
    t.commit().await?;
    Ok((StatusCode::CREATED, Json(rule)))
}

#[utoipa::path(
    patch, path = "/api/v1/orgs/{org}/rules/{id}", tag = "rules",
    summary = "Change a rule (project: tech lead+; org-wide: org admin)",
    params(path::Id),
    request_body = UpdateRule,
    responses((status = OK, description = "rule", body = Rule), Errors<(code::Forbidden, code::RuleNotFound)>),
    security(("bearer" = []))
)]
async fn update(mut t: Tenant, Path((_, raw)): Path<(String, String)>, ApiJson(req): ApiJson<UpdateRule>) -> ApiResult<Json<Rule>> {
    let rule = find(&mut t, &raw, true).await?;
    let name = req.name.as_deref().map(|n| require_text("name", n, MAX_NAME)).transpose()?;
    let mut spec = rule.spec;
    if let Some(tr) = req.trigger {
        spec.trigger = tr;
    }
    if let Some(c) = req.conditions {
        spec.conditions = c;
    }
    if let Some(h) = req.how {
        spec.how = h;
    }
    if let Some(a) = req.actions {
        spec.actions = a;
    }
    validate(&spec)?;
    check_webhooks(&spec, t.state.allow_private_urls).await?;
    sqlx::query(
        "UPDATE automation_rules SET name = coalesce($2, name), enabled = coalesce($3, enabled), dry_run = coalesce($4, dry_run),
                trigger_kind = $5, spec = $6, updated_at = now() WHERE id = $1",
    )
    .bind(rule.id)
    .bind(name)
    .bind(req.enabled)
    .bind(req.dry_run)
    .bind(spec.trigger.kind())
    .bind(serde_json::to_value(&spec).map_err(ApiError::internal)?)
    .execute(t.conn())
    .await?;
    let rule = find(&mut t, &raw, false).await?;
    t.commit().await?;
    Ok(Json(rule))
}

#[utoipa::path(
    delete, path = "/api/v1/orgs/{org}/rules/{id}", tag = "rules",
    summary = "Delete a rule (project: tech lead+; org-wide: org admin)",
    params(path::Id),
    responses((status = NO_CONTENT, description = "deleted"), Errors<(code::Forbidden, code::RuleNotFound)>),
    security(("bearer" = []))
)]
async fn remove(mut t: Tenant, Path((_, raw)): Path<(String, String)>) -> ApiResult<StatusCode> {
    let rule = find(&mut t, &raw, true).await?;
    sqlx::query("DELETE FROM automation_rules WHERE id = $1").bind(rule.id).execute(t.conn()).await?;
    t.commit().await?;
    Ok(StatusCode::NO_CONTENT)
}
