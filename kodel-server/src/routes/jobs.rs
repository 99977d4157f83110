//! AI jobs and their artifacts through the API: list and show (what the caller's
//! projects hold), start one by hand, cancel; approve or reject an artifact.

use axum::extract::Path;
use axum::http::StatusCode;
use axum::Json;
use chrono::{DateTime, Utc};
use kodel_core::api::{DEFAULT_PAGE, MAX_PAGE, OrgRole, Page, ProjectRole};
use kodel_core::jobs::{Artifact, ArtifactKind, ArtifactState, DecideArtifact, Job, JobKind, JobState, StartJob};
use kodel_core::{ErrorCode, TaskKey};
use serde::Deserialize;
use uuid::Uuid;

use super::projects::access;
use super::tasks::find_task;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::openapi::{Errors, code, path};
use crate::AppState;
use crate::engine::artifacts::{Decision, decide};
use crate::engine::jobs;
use crate::error::{ApiError, ApiResult};
use crate::json::{ApiJson, ApiQuery};
use crate::tenant::Tenant;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_jobs, start_job))
        .routes(routes!(show_job))
        .routes(routes!(cancel_job))
        .routes(routes!(resume_job))
        .routes(routes!(job_steps))
        .routes(routes!(list_artifacts))
        .routes(routes!(show_artifact))
        .routes(routes!(approve))
        .routes(routes!(reject))
}

/// SQL that is true when the caller may see project `p` (org admins see all).
const VISIBLE: &str = "($1 OR p.id IN (SELECT project_id FROM project_members WHERE user_id = $2))";

#[derive(Debug, Default, Deserialize)]
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(crate) struct ListQuery {
    /// A task key: only its jobs or artifacts.
    pub(crate) task: Option<String>,
    /// Jobs: pending, running, ...; artifacts: pending, approved, rejected.
    pub(crate) status: Option<String>,
    pub(crate) cursor: Option<String>,
    pub(crate) limit: Option<i64>,
}


/// Newest first: the cursor is the last id of the previous page.
fn page_args(q: &ListQuery) -> ApiResult<(Uuid, i64)> {
    let limit = q.limit.unwrap_or(DEFAULT_PAGE);
    if !(1..=MAX_PAGE).contains(&limit) {
        return Err(ApiError::invalid(format!("limit must be between 1 and {MAX_PAGE}")));
    }
    let before = match q.cursor.as_deref() {
        None | Some("") => Uuid::max(),
        Some(c) => Uuid::parse_str(c).map_err(|_| ApiError::new(ErrorCode::InvalidCursor, "cursor is not one this server gave out"))?,
    };
    Ok((before, limit))
}

fn page<T>(mut rows: Vec<T>, limit: i64, id: impl Fn(&T) -> Uuid) -> (Vec<T>, Option<String>) {
    if rows.len() as i64 > limit {
        rows.truncate(limit as usize);
        let next = rows.last().map(|r| id(r).to_string());
        (rows, next)
    } else {
        (rows, None)
    }
}

/// The task id for `?task=KEY-n`, checking the caller may see it.
async fn task_filter(t: &mut Tenant, task: Option<&str>) -> ApiResult<Option<Uuid>> {
    match task {
        Some(raw) => Ok(Some(find_task(t, raw, false).await?.1.id)),
        None => Ok(None),
    }
}

#[derive(sqlx::FromRow)]
struct JobRow {
    id: Uuid,
    task: String,
    #[sqlx(try_from = "String")]
    kind: JobKind,
    template: String,
    #[sqlx(try_from = "String")]
    state: JobState,
    for_status: Option<String>,
    attempts: i32,
    max_attempts: i32,
    lease_agent: Option<Uuid>,
    lease_expires_at: Option<DateTime<Utc>>,
    error: Option<String>,
    summary: Option<String>,
    usage: serde_json::Value,
    created_at: DateTime<Utc>,
    started_at: Option<DateTime<Utc>>,
    finished_at: Option<DateTime<Utc>>,
}

impl JobRow {
    fn into_api(self) -> Job {
        Job {
            id: self.id,
            task: self.task,
            kind: self.kind,
            template: self.template,
            status: self.state,
            for_status: self.for_status,
            attempts: self.attempts,
            max_attempts: self.max_attempts,
            agent: self.lease_agent,
            lease_expires_at: self.lease_expires_at,
            error: self.error,
            summary: self.summary,
            usage: self.usage,
            created_at: self.created_at,
            started_at: self.started_at,
            finished_at: self.finished_at,
        }
    }
}

const JOB_SELECT: &str = "SELECT j.id, p.key || '-' || t.number AS task, j.kind, jt.name AS template, j.state, s.name AS for_status,
        j.attempts, j.max_attempts, j.lease_agent, j.lease_expires_at, j.error, j.summary, j.usage,
        j.created_at, j.started_at, j.finished_at
     FROM ai_jobs j JOIN tasks t ON t.id = j.task_id JOIN projects p ON p.id = t.project_id
     JOIN ai_job_templates jt ON jt.id = j.template_id LEFT JOIN statuses s ON s.id = j.status_id";

/// One page, newest first, of jobs or artifacts (`select`, aliased `alias`) that the
/// caller may see, filtered by `?task=` and `?status=` (one of `states`).
async fn visible_page<R>(mut t: Tenant, q: ListQuery, select: &str, alias: &str, states: &[&str], id: fn(&R) -> Uuid) -> ApiResult<(Vec<R>, Option<String>)>
where
    R: for<'r> sqlx::FromRow<'r, sqlx::postgres::PgRow> + Send + Unpin,
{
    let (before, limit) = page_args(&q)?;
    if let Some(s) = q.status.as_deref().filter(|s| !states.contains(s)) {
        return Err(ApiError::invalid(format!("status {s:?} is not one of {}", states.join(", "))));
    }
    let task = task_filter(&mut t, q.task.as_deref()).await?;
    let (admin, user) = (t.org.role >= OrgRole::Admin, t.user_id());
    let rows = sqlx::query_as::<_, R>(&format!(
        "{select} WHERE {VISIBLE} AND ($3::uuid IS NULL OR {alias}.task_id = $3) AND ($4::text IS NULL OR {alias}.state = $4)
           AND {alias}.id < $5 ORDER BY {alias}.id DESC LIMIT $6"
    ))
    .bind(admin)
    .bind(user)
    .bind(task)
    .bind(q.status.as_deref())
    .bind(before)
    .bind(limit + 1)
    .fetch_all(t.conn())
    .await?;
    t.commit().await?;
    Ok(page(rows, limit, id))
}

#[utoipa::path(
    get, path = "/api/v1/orgs/{org}/jobs", tag = "jobs",
    summary = "Jobs of the projects the caller can see, newest first (cursor, limit <= 200)",
    description = "`status`: pending, running, succeeded, failed or cancelled.",
    params(path::Org, ListQuery),
    responses((status = OK, description = "a page of jobs", body = Page<Job>), Errors<(code::InvalidCursor, code::InvalidKey, code::TaskNotFound, code::InvalidRequest)>),
    security(("bearer" = []))
)]
pub(crate) async fn list_jobs(t: Tenant, ApiQuery(q): ApiQuery<ListQuery>) -> ApiResult<Json<Page<Job>>> {
    let states: Vec<&str> = JobState::ALL.iter().map(|s| s.as_str()).collect();
    let (rows, next_cursor) = visible_page::<JobRow>(t, q, JOB_SELECT, "j", &states, |r| r.id).await?;
    Ok(Json(Page { data: rows.into_iter().map(JobRow::into_api).collect(), next_cursor }))
}

fn parse_id(raw: &str, code: ErrorCode, what: &str) -> ApiResult<Uuid> {
    Uuid::parse_str(raw.trim()).map_err(|_| ApiError::new(code, format!("{what} {raw:?} not found")))
}

/// One job the caller may see, with the caller's role in its project.
async fn visible_job(t: &mut Tenant, raw: &str) -> ApiResult<(Job, ProjectRole)> {
    let id = parse_id(raw, ErrorCode::JobNotFound, "job")?;
    let row = sqlx::query_as::<_, JobRow>(&format!("{JOB_SELECT} WHERE j.id = $1"))
        .bind(id)
        .fetch_optional(t.conn())
        .await?
        .ok_or_else(|| ApiError::new(ErrorCode::JobNotFound, format!("job {raw:?} not found")))?;
    let key = TaskKey::parse(&row.task).map_err(|e| ApiError::internal(e.0))?;
    let p = access(t, key.project.as_str(), ErrorCode::JobNotFound).await?;
    Ok((row.into_api(), p.role))
}

#[utoipa::path(
    get, path = "/api/v1/orgs/{org}/jobs/{id}", tag = "jobs",
    summary = "One job",
    params(path::Id),
    responses((status = OK, description = "job", body = Job), Errors<(code::JobNotFound,)>),
    security(("bearer" = []))
)]
pub(crate) async fn show_job(mut t: Tenant, Path((_, raw)): Path<(String, String)>) -> ApiResult<Json<Job>> {
    let (job, _) = visible_job(&mut t, &raw).await?;
    t.commit().await?;
    Ok(Json(job))
}

/// The steps an agent reported for a job, in order (at most 1,000 from `after`).
#[utoipa::path(
    get, path = "/api/v1/orgs/{org}/jobs/{id}/steps", tag = "jobs",
    summary = "The steps an agent reported for a job, in order (1,000 at most after ?after=SEQ)",
    params(path::Id, StepsQuery),
    responses((status = OK, description = "steps; `next_cursor` is the `after` of the next page", body = Page<JobStep>), Errors<(code::JobNotFound, code::InvalidRequest)>),
    security(("bearer" = []))
)]
pub(crate) async fn job_steps(mut t: Tenant, Path((_, raw)): Path<(String, String)>, ApiQuery(q): ApiQuery<StepsQuery>) -> ApiResult<Json<Page<JobStep>>> {
    let (job, _) = visible_job(&mut t, &raw).await?;
    let rows: Vec<(i32, serde_json::Value, chrono::DateTime<chrono::Utc>)> =
        sqlx::query_as("SELECT seq, step, created_at FROM job_steps WHERE job_id = $1 AND seq > $2 ORDER BY seq LIMIT 1000")
            .bind(job.id)
            .bind(q.after.unwrap_or(-1))
            .fetch_all(t.conn())
            .await?;
    t.commit().await?;
    let next_cursor = (rows.len() == 1000).then(|| rows.last().map(|r| r.0.to_string())).flatten();
    let data = rows.into_iter().map(|(seq, step, created_at)| JobStep { seq, step, created_at }).collect();
    Ok(Json(Page { data, next_cursor }))
}

#[derive(Debug, Default, serde::Deserialize)]
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct StepsQuery {
    /// Steps after this seq.
    pub(crate) after: Option<i32>,
}

#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub(crate) struct JobStep {
    pub(crate) seq: i32,
    /// `{kind: message, text}` or `{kind: tool, call_id, tool, input, output, error, duration_ms}`.
    #[schema(value_type = Object)]
    pub(crate) step: serde_json::Value,
    pub(crate) created_at: chrono::DateTime<chrono::Utc>,
}

#[utoipa::path(
    post, path = "/api/v1/orgs/{org}/jobs", tag = "jobs",
    summary = "Start a job on a task from a template (developer+)",
    params(path::Org),
    request_body = StartJob,
    responses((status = CREATED, description = "job", body = Job), Errors<(code::InvalidKey, code::Forbidden, code::TaskNotFound, code::TemplateNotFound)>),
    security(("bearer" = []))
)]
async fn start_job(mut t: Tenant, ApiJson(req): ApiJson<StartJob>) -> ApiResult<(StatusCode, Json<Job>)> {
    let (p, task) = find_task(&mut t, &req.task, true).await?;
    p.require(ProjectRole::Developer, "starting jobs")?;
    let template = jobs::template_id_by_name(t.conn(), &req.template)
        .await?
        .ok_or_else(|| ApiError::new(ErrorCode::TemplateNotFound, format!("no job template {:?}", req.template)))?;
    let id = jobs::start_now(&mut t, task.id, template).await?;
    let (job, _) = visible_job(&mut t, &id.to_string()).await?;
    t.commit().await?;
    Ok((StatusCode::CREATED, Json(job)))
}

#[utoipa::path(
    post, path = "/api/v1/orgs/{org}/jobs/{id}/cancel", tag = "jobs",
    summary = "Cancel a job (developer+); 409 job_finished when it already finished",
    params(path::Id),
    responses((status = OK, description = "job", body = Job), Errors<(code::Forbidden, code::JobNotFound, code::JobFinished)>),
    security(("bearer" = []))
)]
async fn cancel_job(mut t: Tenant, Path((_, raw)): Path<(String, String)>) -> ApiResult<Json<Job>> {
    let (job, role) = visible_job(&mut t, &raw).await?;
    if role < ProjectRole::Developer {
        return Err(ApiError::forbidden("cancelling jobs"));
    }
    let who = t.auth.user.email.clone();
    jobs::cancel(&mut t, job.id, &format!("cancelled by {who}")).await?;
    let (job, _) = visible_job(&mut t, &raw).await?;
    t.commit().await?;
    Ok(Json(job))
}

#[utoipa::path(
    post, path = "/api/v1/orgs/{org}/jobs/{id}/resume", tag = "jobs",
    summary = "Queue a paused job again (developer+); it goes on after the steps it had taken",
    description = "402 `budget_exceeded` while a budget of the org, the project or the task is still spent; 409 `conflict` for a job that is not paused.",
    params(path::Id),
    responses((status = OK, description = "job", body = Job), Errors<(code::Forbidden, code::JobNotFound, code::Conflict, code::BudgetExceeded)>),
    security(("bearer" = []))
)]
async fn resume_job(mut t: Tenant, Path((_, raw)): Path<(String, String)>) -> ApiResult<Json<Job>> {
    let (job, role) = visible_job(&mut t, &raw).await?;
    if role < ProjectRole::Developer {
        return Err(ApiError::forbidden("resuming jobs"));
    }
    if job.status != kodel_core::jobs::JobState::Paused {
        return Err(ApiError::new(ErrorCode::Conflict, format!("job {} is {}, not paused", job.id, job.status)));
    }
    let task: Uuid = sqlx::query_scalar("SELECT task_id FROM ai_jobs WHERE id = $1").bind(job.id).fetch_one(t.conn()).await?;
    if let Some(spent) = crate::analytics::budgets::exceeded(t.conn(), "", Some(task)).await? {
        return Err(ApiError::new(ErrorCode::BudgetExceeded, format!("{} is still spent: raise it first (kodel budget set)", spent.describe())));
    }
    jobs::resume_paused(&mut t, Some(job.id), None, None).await?;
    let (job, _) = visible_job(&mut t, &raw).await?;
    t.commit().await?;
    Ok(Json(job))
}

#[derive(sqlx::FromRow)]
struct ArtifactRow {
    id: Uuid,
    job_id: Uuid,
    task: String,
    #[sqlx(try_from = "String")]
    kind: ArtifactKind,
    title: String,
    content: Option<String>,
    reference: Option<String>,
    data: Option<serde_json::Value>,
    #[sqlx(try_from = "String")]
    state: ArtifactState,
    decided_by: Option<String>,
    decided_at: Option<DateTime<Utc>>,
    comment: Option<String>,
    created_at: DateTime<Utc>,
}

impl ArtifactRow {
    fn into_api(self) -> Artifact {
        Artifact {
            id: self.id,
            job: self.job_id,
            task: self.task,
            kind: self.kind,
            title: self.title,
            content: self.content,
            reference: self.reference,
            data: self.data,
            status: self.state,
            decided_by: self.decided_by,
            decided_at: self.decided_at,
            comment: self.comment,
            created_at: self.created_at,
        }
    }
}

const ARTIFACT_SELECT: &str = "SELECT a.id, a.job_id, p.key || '-' || t.number AS task, a.kind, a.title, a.content, a.reference, a.data,
        a.state, u.email AS decided_by, a.decided_at, a.comment, a.created_at
     FROM artifacts a JOIN tasks t ON t.id = a.task_id JOIN projects p ON p.id = t.project_id
     LEFT JOIN public.users u ON u.id = a.decided_by";

#[utoipa::path(
    get, path = "/api/v1/orgs/{org}/artifacts", tag = "jobs",
    summary = "Artifacts of the projects the caller can see, newest first (cursor, limit <= 200)",
    description = "`status`: pending, approved or rejected.",
    params(path::Org, ListQuery),
    responses((status = OK, description = "a page of artifacts", body = Page<Artifact>), Errors<(code::InvalidCursor, code::InvalidKey, code::TaskNotFound, code::InvalidRequest)>),
    security(("bearer" = []))
)]
pub(crate) async fn list_artifacts(t: Tenant, ApiQuery(q): ApiQuery<ListQuery>) -> ApiResult<Json<Page<Artifact>>> {
    let states: Vec<&str> = ArtifactState::ALL.iter().map(|s| s.as_str()).collect();
    let (rows, next_cursor) = visible_page::<ArtifactRow>(t, q, ARTIFACT_SELECT, "a", &states, |r| r.id).await?;
    Ok(Json(Page { data: rows.into_iter().map(ArtifactRow::into_api).collect(), next_cursor }))
}

async fn visible_artifact(t: &mut Tenant, raw: &str) -> ApiResult<(Artifact, ProjectRole)> {
    let id = parse_id(raw, ErrorCode::ArtifactNotFound, "artifact")?;
    let row = sqlx::query_as::<_, ArtifactRow>(&format!("{ARTIFACT_SELECT} WHERE a.id = $1"))
        .bind(id)
        .fetch_optional(t.conn())
        .await?
        .ok_or_else(|| ApiError::new(ErrorCode::ArtifactNotFound, format!("artifact {raw:?} not found")))?;
    let key = TaskKey::parse(&row.task).map_err(|e| ApiError::internal(e.0))?;
    let p = access(t, key.project.as_str(), ErrorCode::ArtifactNotFound).await?;
    Ok((row.into_api(), p.role))
}

#[utoipa::path(
    get, path = "/api/v1/orgs/{org}/artifacts/{id}", tag = "jobs",
    summary = "One artifact",
    params(path::Id),
    responses((status = OK, description = "artifact", body = Artifact), Errors<(code::ArtifactNotFound,)>),
    security(("bearer" = []))
)]
async fn show_artifact(mut t: Tenant, Path((_, raw)): Path<(String, String)>) -> ApiResult<Json<Artifact>> {
    let (a, _) = visible_artifact(&mut t, &raw).await?;
    t.commit().await?;
    Ok(Json(a))
}

async fn decide_on(mut t: Tenant, raw: String, req: DecideArtifact, decision: Decision) -> ApiResult<Json<Artifact>> {
    let (a, role) = visible_artifact(&mut t, &raw).await?;
    if role < ProjectRole::Reviewer {
        return Err(ApiError::forbidden("deciding on artifacts"));
    }
    decide(&mut t, a.id, decision, req.comment.as_deref()).await?;
    let (a, _) = visible_artifact(&mut t, &raw).await?;
    t.commit().await?;
    Ok(Json(a))
}

/// The body is optional (`{"comment": "..."}`), so a bare POST decides too.
fn decision_body(body: &[u8]) -> ApiResult<DecideArtifact> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(DecideArtifact::default());
    }
    serde_json::from_slice(body).map_err(|e| ApiError::invalid(e.to_string()))
}

#[utoipa::path(
    post, path = "/api/v1/orgs/{org}/artifacts/{id}/approve", tag = "jobs",
    summary = "Approve an artifact (reviewer+); the body is optional; 409 artifact_decided when already decided",
    params(path::Id),
    request_body(content = Option<DecideArtifact>, description = "optional: `{\"comment\": \"...\"}`; a bare POST decides too"),
    responses((status = OK, description = "artifact", body = Artifact), Errors<(code::Forbidden, code::ArtifactNotFound, code::ArtifactDecided)>),
    security(("bearer" = []))
)]
pub(crate) async fn approve(t: Tenant, Path((_, raw)): Path<(String, String)>, body: axum::body::Bytes) -> ApiResult<Json<Artifact>> {
    let req = decision_body(&body)?;
    decide_on(t, raw, req, Decision::Approve).await
}

#[utoipa::path(
    post, path = "/api/v1/orgs/{org}/artifacts/{id}/reject", tag = "jobs",
    summary = "Reject an artifact (reviewer+); the body is optional; 409 artifact_decided when already decided",
    params(path::Id),
    request_body(content = Option<DecideArtifact>, description = "optional: `{\"comment\": \"...\"}`; a bare POST decides too"),
    responses((status = OK, description = "artifact", body = Artifact), Errors<(code::Forbidden, code::ArtifactNotFound, code::ArtifactDecided)>),
    security(("bearer" = []))
)]
pub(crate) async fn reject(t: Tenant, Path((_, raw)): Path<(String, String)>, body: axum::body::Bytes) -> ApiResult<Json<Artifact>> {
    let req = decision_body(&body)?;
    decide_on(t, raw, req, Decision::Reject).await
}
