//! Projects, their members (five roles) and the access check every project and task
//! endpoint goes through.

use axum::extract::Path;
use axum::http::StatusCode;
use axum::Json;
use chrono::{DateTime, Utc};
use kodel_core::api::{
    AddProjectMember, CreateProject, MAX_DESCRIPTION, MAX_NAME, OrgRole, Page, Project, ProjectMember, ProjectRole,
    UpdateProject, UpdateRole,
};
use kodel_core::workflow::{KANBAN, template};
use kodel_core::{ErrorCode, ProjectKey};
use sqlx::PgConnection;
use uuid::Uuid;

use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::openapi::{Errors, code, path};
use crate::AppState;
use crate::engine::workflow;
use crate::error::{ApiError, ApiResult, check_len, is_unique_violation, require_text};
use crate::json::ApiJson;
use crate::tenant::Tenant;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list, create))
        .routes(routes!(show, update))
        .routes(routes!(list_members, add_member))
        .routes(routes!(update_member, remove_member))
}

/// The caller's view of one project.
#[derive(Debug, Clone)]
pub struct ProjectCtx {
    pub id: Uuid,
    pub key: String,
    pub workflow_id: Uuid,
    pub role: ProjectRole,
}

impl ProjectCtx {
    pub fn require(&self, min: ProjectRole, what: &str) -> ApiResult<()> {
        if self.role >= min { Ok(()) } else { Err(ApiError::forbidden(what)) }
    }
}

/// Org owners and admins act as project admins everywhere; others need a project role.
/// A project the caller may not see is reported as missing, like one that does not exist.
pub async fn access(t: &mut Tenant, key: &str, not_found: ErrorCode) -> ApiResult<ProjectCtx> {
    let missing = || ApiError::new(not_found, format!("{key} not found"));
    let key = ProjectKey::parse(key).map_err(|e| ApiError::new(ErrorCode::InvalidKey, e.0))?;
    let user = t.user_id();
    let row: Option<(Uuid, String, Uuid, Option<String>)> = sqlx::query_as(
        "SELECT p.id, p.key, p.workflow_id, pm.role FROM projects p
         LEFT JOIN project_members pm ON pm.project_id = p.id AND pm.user_id = $2
         WHERE p.key = $1",
    )
    .bind(key.as_str())
    .bind(user)
    .fetch_optional(t.conn())
    .await?;
    let (id, key, workflow_id, role) = row.ok_or_else(missing)?;
    let role = if t.org.role >= OrgRole::Admin {
        ProjectRole::Admin
    } else {
        role.as_deref().and_then(ProjectRole::parse).ok_or_else(missing)?
    };
    Ok(ProjectCtx { id, key, workflow_id, role })
}

#[derive(sqlx::FromRow)]
struct ProjectRow {
    id: Uuid,
    key: String,
    name: String,
    description: String,
    workflow_id: Uuid,
    instance_template: Option<String>,
    test_command: Option<String>,
    review_rules: Option<String>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

async fn project_json(conn: &mut PgConnection, id: Uuid, role: ProjectRole) -> ApiResult<Project> {
    let r = sqlx::query_as::<_, ProjectRow>(
        "SELECT p.id, p.key, p.name, p.description, p.workflow_id, it.name AS instance_template, p.test_command, p.review_rules,
                p.created_at, p.updated_at
         FROM projects p LEFT JOIN instance_templates it ON it.id = p.instance_template_id WHERE p.id = $1",
    )
    .bind(id)
    .fetch_one(&mut *conn)
    .await?;
    let workflow = workflow::load(conn, r.workflow_id).await?;
    Ok(Project {
        id: r.id,
        key: r.key,
        name: r.name,
        description: r.description,
        workflow,
        instance_template: r.instance_template,
        test_command: r.test_command,
        review_rules: r.review_rules,
        role,
        created_at: r.created_at,
        updated_at: r.updated_at,
    })
}

#[utoipa::path(
    get, path = "/api/v1/orgs/{org}/projects", tag = "projects",
    summary = "Projects the caller can see",
    params(path::Org),
    responses((status = OK, description = "projects", body = Page<Project>)),
    security(("bearer" = []))
)]
pub(crate) async fn list(mut t: Tenant) -> ApiResult<Json<Page<Project>>> {
    let user = t.user_id();
    let all = t.org.role >= OrgRole::Admin;
    let rows: Vec<(Uuid, Option<String>)> = sqlx::query_as(
        "SELECT p.id, pm.role FROM projects p
         LEFT JOIN project_members pm ON pm.project_id = p.id AND pm.user_id = $1
         WHERE $2 OR pm.role IS NOT NULL ORDER BY p.key",
    )
    .bind(user)
    .bind(all)
    .fetch_all(t.conn())
    .await?;
    let mut data = Vec::with_capacity(rows.len());
    for (id, role) in rows {
        let role = if all { ProjectRole::Admin } else { role.as_deref().and_then(ProjectRole::parse).unwrap_or(ProjectRole::Viewer) };
        data.push(project_json(t.conn(), id, role).await?);
    }
    t.commit().await?;
    Ok(Json(Page { data, next_cursor: None }))
}

#[utoipa::path(
    post, path = "/api/v1/orgs/{org}/projects", tag = "projects",
    summary = "Create a project; the caller becomes its admin",
    params(path::Org),
    request_body = CreateProject,
    responses((status = CREATED, description = "project", body = Project), Errors<(code::InvalidKey, code::WorkflowNotFound, code::ProjectExists)>),
    security(("bearer" = []))
)]
async fn create(mut t: Tenant, ApiJson(req): ApiJson<CreateProject>) -> ApiResult<(StatusCode, Json<Project>)> {
    let key = ProjectKey::parse(&req.key).map_err(|e| ApiError::new(ErrorCode::InvalidKey, e.0))?;
    let name = require_text("name", &req.name, MAX_NAME)?;
    let description = req.description.unwrap_or_default();
    check_len("description", &description, MAX_DESCRIPTION)?;
    // A built-in template's slug, or one of the org's workflows by id or name.
    let builtin = match req.workflow.as_deref().map(str::trim) {
        None => Some(&KANBAN),
        Some(w) => template(w),
    };
    let workflow = match (builtin, req.workflow.as_deref().map(str::trim)) {
        (Some(tpl), _) => workflow::ensure_template(t.conn(), tpl).await?,
        (None, None) => return Err(ApiError::internal("no workflow")),
        (None, Some(other)) => {
            let id = Uuid::parse_str(other).ok();
            let found: Option<Uuid> = sqlx::query_scalar("SELECT id FROM workflows WHERE id = $1 OR lower(name) = lower($2) ORDER BY id LIMIT 1")
                .bind(id)
                .bind(other)
                .fetch_optional(t.conn())
                .await?;
            found.ok_or_else(|| {
                ApiError::new(
                    ErrorCode::WorkflowNotFound,
                    format!("unknown workflow {other:?}: use \"software-development\", \"kanban\", or the id or name of one of the org's workflows"),
                )
            })?
        }
    };
    let id = Uuid::now_v7();
    let user = t.user_id();
    sqlx::query("INSERT INTO projects (id, key, name, description, workflow_id, created_by) VALUES ($1, $2, $3, $4, $5, $6)")
        .bind(id)
        .bind(key.as_str())
        .bind(&name)
        .bind(&description)
        .bind(workflow)
        .bind(user)
        .execute(t.conn())
        .await
        .map_err(|e| {
            if is_unique_violation(&e) {
                ApiError::new(ErrorCode::ProjectExists, format!("project {key} already exists"))
            } else {
                e.into()
            }
        })?;
    // Task numbers come from a sequence per project, so creating tasks never waits
    // on a lock held until another transaction commits.
    let ddl = format!("CREATE SEQUENCE {}", task_number_sequence(id));
    sqlx::Executor::execute(t.conn(), ddl.as_str()).await?;
    sqlx::query("INSERT INTO project_members (project_id, user_id, role) VALUES ($1, $2, 'admin')")
        .bind(id)
        .bind(user)
        .execute(t.conn())
        .await?;
    let project = project_json(t.conn(), id, ProjectRole::Admin).await?;
    t.commit().await?;
    Ok((StatusCode::CREATED, Json(project)))
}

/// The name of a project's task-number sequence (built from its id, never from input).
/// Task creation computes the same name in SQL: `'task_number_' || replace(id::text, '-', '')`.
fn task_number_sequence(project: Uuid) -> String {
    format!("task_number_{}", project.simple())
}

#[utoipa::path(
    get, path = "/api/v1/orgs/{org}/projects/{key}", tag = "projects",
    summary = "One project with its workflow",
    params(path::Project),
    responses((status = OK, description = "project", body = Project), Errors<(code::InvalidKey, code::ProjectNotFound,)>),
    security(("bearer" = []))
)]
pub(crate) async fn show(mut t: Tenant, Path((_, key)): Path<(String, String)>) -> ApiResult<Json<Project>> {
    let p = access(&mut t, &key, ErrorCode::ProjectNotFound).await?;
    let project = project_json(t.conn(), p.id, p.role).await?;
    t.commit().await?;
    Ok(Json(project))
}

#[utoipa::path(
    patch, path = "/api/v1/orgs/{org}/projects/{key}", tag = "projects",
    summary = "Edit a project (project admin); choosing its instance template is for org admins",
    params(path::Project),
    request_body = UpdateProject,
    responses((status = OK, description = "project", body = Project), Errors<(code::InvalidKey, code::ProjectNotFound, code::Forbidden, code::TemplateNotFound)>),
    security(("bearer" = []))
)]
async fn update(mut t: Tenant, Path((_, key)): Path<(String, String)>, ApiJson(req): ApiJson<UpdateProject>) -> ApiResult<Json<Project>> {
    let p = access(&mut t, &key, ErrorCode::ProjectNotFound).await?;
    p.require(ProjectRole::Admin, "editing the project")?;
    let name = req.name.as_deref().map(|n| require_text("name", n, MAX_NAME)).transpose()?;
    if let Some(d) = &req.description {
        check_len("description", d, MAX_DESCRIPTION)?;
    }
    if let Some(Some(c)) = &req.test_command {
        check_len("test_command", c, kodel_core::api::MAX_TEST_COMMAND)?;
        if c.contains('\0') {
            return Err(ApiError::invalid("test_command must not contain NUL bytes"));
        }
    }
    if let Some(Some(r)) = &req.review_rules {
        check_len("review_rules", r, kodel_core::api::MAX_REVIEW_RULES)?;
    }
    // A template's env values are secrets that every job of the project receives (and
    // its model can print): only those who manage templates choose which a project uses.
    if req.instance_template.is_some() {
        t.require_org_role(OrgRole::Admin, "choosing a project's instance template (org admins and owners)")?;
    }
    let instance_template = match req.instance_template.as_ref() {
        Some(Some(it)) => {
            let id = Uuid::parse_str(it.trim()).ok();
            let found: Option<Uuid> = sqlx::query_scalar("SELECT id FROM instance_templates WHERE name = $1 OR id = $2")
                .bind(it.trim())
                .bind(id)
                .fetch_optional(t.conn())
                .await?;
            Some(found.ok_or_else(|| ApiError::new(ErrorCode::TemplateNotFound, format!("no instance template {it:?}")))?)
        }
        _ => None,
    };
    sqlx::query(
        "UPDATE projects SET name = coalesce($2, name), description = coalesce($3, description),
                instance_template_id = CASE WHEN $4 THEN $5 ELSE instance_template_id END,
                test_command = CASE WHEN $6 THEN nullif(btrim($7), '') ELSE test_command END,
                review_rules = CASE WHEN $8 THEN nullif(btrim($9), '') ELSE review_rules END,
                updated_at = now() WHERE id = $1",
    )
    .bind(p.id)
    .bind(name)
    .bind(req.description)
    .bind(req.instance_template.is_some())
    .bind(instance_template)
    .bind(req.test_command.is_some())
    .bind(req.test_command.flatten())
    .bind(req.review_rules.is_some())
    .bind(req.review_rules.flatten())
    .execute(t.conn())
    .await?;
    let project = project_json(t.conn(), p.id, p.role).await?;
    t.commit().await?;
    Ok(Json(project))
}

const PM_SELECT: &str = "SELECT u.id, u.email, u.name, pm.role FROM project_members pm
     JOIN public.users u ON u.id = pm.user_id WHERE pm.project_id = $1";

fn member(row: (Uuid, String, String, String)) -> ProjectMember {
    ProjectMember { user_id: row.0, email: row.1, name: row.2, role: ProjectRole::parse(&row.3).unwrap_or(ProjectRole::Viewer) }
}

#[utoipa::path(
    get, path = "/api/v1/orgs/{org}/projects/{key}/members", tag = "projects",
    summary = "Project members",
    params(path::Project),
    responses((status = OK, description = "members", body = Page<ProjectMember>), Errors<(code::InvalidKey, code::ProjectNotFound,)>),
    security(("bearer" = []))
)]
async fn list_members(mut t: Tenant, Path((_, key)): Path<(String, String)>) -> ApiResult<Json<Page<ProjectMember>>> {
    let p = access(&mut t, &key, ErrorCode::ProjectNotFound).await?;
    let rows: Vec<(Uuid, String, String, String)> =
        sqlx::query_as(&format!("{PM_SELECT} ORDER BY u.email")).bind(p.id).fetch_all(t.conn()).await?;
    t.commit().await?;
    Ok(Json(Page { data: rows.into_iter().map(member).collect(), next_cursor: None }))
}

async fn find_project_member(t: &mut Tenant, project: Uuid, who: &str) -> ApiResult<(Uuid, String, String, String)> {
    let row: Option<(Uuid, String, String, String)> = match Uuid::parse_str(who) {
        Ok(id) => sqlx::query_as(&format!("{PM_SELECT} AND u.id = $2")).bind(project).bind(id).fetch_optional(t.conn()).await?,
        Err(_) => sqlx::query_as(&format!("{PM_SELECT} AND lower(u.email) = lower($2)")).bind(project).bind(who).fetch_optional(t.conn()).await?,
    };
    row.ok_or_else(|| ApiError::new(ErrorCode::MemberNotFound, format!("{who} is not a member of this project")))
}

#[utoipa::path(
    post, path = "/api/v1/orgs/{org}/projects/{key}/members", tag = "projects",
    summary = "Give an org member a project role (project admin)",
    params(path::Project),
    request_body = AddProjectMember,
    responses((status = CREATED, description = "member", body = ProjectMember), Errors<(code::InvalidKey, code::ProjectNotFound, code::Forbidden, code::UserNotFound, code::MemberExists)>),
    security(("bearer" = []))
)]
async fn add_member(mut t: Tenant, Path((_, key)): Path<(String, String)>, ApiJson(req): ApiJson<AddProjectMember>) -> ApiResult<(StatusCode, Json<ProjectMember>)> {
    let p = access(&mut t, &key, ErrorCode::ProjectNotFound).await?;
    p.require(ProjectRole::Admin, "managing project members")?;
    let user = t.member_by_email(&req.email).await?;
    let user = user.ok_or_else(|| ApiError::new(ErrorCode::UserNotFound, format!("{} is not a member of the org; add them to the org first", req.email.trim())))?;
    let done = sqlx::query("INSERT INTO project_members (project_id, user_id, role) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING")
        .bind(p.id)
        .bind(user)
        .bind(req.role.as_str())
        .execute(t.conn())
        .await?;
    if done.rows_affected() == 0 {
        return Err(ApiError::new(ErrorCode::MemberExists, format!("{} is already a member of {}", req.email.trim(), p.key)));
    }
    let m = find_project_member(&mut t, p.id, &user.to_string()).await?;
    t.commit().await?;
    Ok((StatusCode::CREATED, Json(member(m))))
}

#[utoipa::path(
    patch, path = "/api/v1/orgs/{org}/projects/{key}/members/{member}", tag = "projects",
    summary = "Change a project role (project admin)",
    params(path::ProjectMember),
    request_body = UpdateRole<ProjectRole>,
    responses((status = OK, description = "member", body = ProjectMember), Errors<(code::InvalidKey, code::ProjectNotFound, code::Forbidden, code::MemberNotFound)>),
    security(("bearer" = []))
)]
async fn update_member(mut t: Tenant, Path((_, key, who)): Path<(String, String, String)>, ApiJson(req): ApiJson<UpdateRole<ProjectRole>>) -> ApiResult<Json<ProjectMember>> {
    let p = access(&mut t, &key, ErrorCode::ProjectNotFound).await?;
    p.require(ProjectRole::Admin, "managing project members")?;
    let m = find_project_member(&mut t, p.id, &who).await?;
    sqlx::query("UPDATE project_members SET role = $3 WHERE project_id = $1 AND user_id = $2")
        .bind(p.id)
        .bind(m.0)
        .bind(req.role.as_str())
        .execute(t.conn())
        .await?;
    let m = find_project_member(&mut t, p.id, &m.0.to_string()).await?;
    t.commit().await?;
    Ok(Json(member(m)))
}

#[utoipa::path(
    delete, path = "/api/v1/orgs/{org}/projects/{key}/members/{member}", tag = "projects",
    summary = "Remove from the project (project admin; anyone may leave)",
    params(path::ProjectMember),
    responses((status = NO_CONTENT, description = "removed"), Errors<(code::InvalidKey, code::ProjectNotFound, code::Forbidden, code::MemberNotFound)>),
    security(("bearer" = []))
)]
async fn remove_member(mut t: Tenant, Path((_, key, who)): Path<(String, String, String)>) -> ApiResult<StatusCode> {
    let p = access(&mut t, &key, ErrorCode::ProjectNotFound).await?;
    let m = find_project_member(&mut t, p.id, &who).await?;
    if m.0 != t.user_id() {
        p.require(ProjectRole::Admin, "managing project members")?;
    }
    sqlx::query("DELETE FROM project_members WHERE project_id = $1 AND user_id = $2").bind(p.id).bind(m.0).execute(t.conn()).await?;
    t.commit().await?;
    Ok(StatusCode::NO_CONTENT)
}
