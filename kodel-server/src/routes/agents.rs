//! The org's agents registry: who has connected, with what labels, and when last seen.
//! Agents add themselves when they connect (the agents hub).

use axum::Json;
use chrono::{DateTime, Utc};
use kodel_core::api::{OrgRole, Page};
use kodel_core::infra::Agent;
use uuid::Uuid;

use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::openapi::path;
use crate::AppState;
use crate::error::ApiResult;
use crate::tenant::Tenant;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(list))
}

#[derive(sqlx::FromRow)]
struct Row {
    id: Uuid,
    name: String,
    labels: Vec<String>,
    version: String,
    status: String,
    current_job: Option<Uuid>,
    current_task: Option<String>,
    disk_bytes: Option<i64>,
    capabilities: Vec<String>,
    missing: sqlx::types::Json<std::collections::BTreeMap<String, String>>,
    last_seen_at: Option<DateTime<Utc>>,
    created_at: DateTime<Utc>,
}

/// Every agent of the org; the job and task an agent works on only where the caller
/// may see the task's project (org owners and admins see all).
#[utoipa::path(
    get, path = "/api/v1/orgs/{org}/agents", tag = "agents",
    summary = "The org's agents registry",
    params(path::Org),
    responses((status = OK, description = "agents", body = Page<Agent>)),
    security(("bearer" = []))
)]
async fn list(mut t: Tenant) -> ApiResult<Json<Page<Agent>>> {
    let sees_all = t.org.role >= OrgRole::Admin;
    let user = t.user_id();
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT a.id, a.name, a.labels, a.version, a.status, v.current_job, v.current_task, a.disk_bytes, a.capabilities, a.missing, a.last_seen_at, a.created_at
         FROM agents a
         LEFT JOIN LATERAL (
             SELECT j.id AS current_job, p.key || '-' || t.number AS current_task
             FROM ai_jobs j JOIN tasks t ON t.id = j.task_id JOIN projects p ON p.id = t.project_id
             -- Held only while its lease is this agent's: a killed agent's job may have
             -- been queued again and finished by another.
             WHERE j.id = a.current_job AND j.state = 'running' AND j.lease_agent = a.id
               AND ($1 OR EXISTS (SELECT 1 FROM project_members pm WHERE pm.project_id = p.id AND pm.user_id = $2))
         ) v ON true
         ORDER BY a.name, a.id LIMIT 1000",
    )
    .bind(sees_all)
    .bind(user)
    .fetch_all(t.conn())
    .await?;
    t.commit().await?;
    let data = rows
        .into_iter()
        .map(|r| Agent { id: r.id, name: r.name, labels: r.labels, version: r.version, status: r.status, current_job: r.current_job, current_task: r.current_task, disk_bytes: r.disk_bytes, capabilities: r.capabilities, missing: r.missing.0, last_seen_at: r.last_seen_at, created_at: r.created_at })
        .collect();
    Ok(Json(Page { data, next_cursor: None }))
}
