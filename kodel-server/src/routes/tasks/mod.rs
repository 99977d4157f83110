//! Tasks: create, list with filters and cursor, show, update (optimistic concurrency),
//! move between workflow statuses, archive; and their comments. Every change writes an
//! event in the same transaction.

use axum::extract::Path;
use axum::http::StatusCode;
use axum::Json;
use chrono::{DateTime, Utc};
use kodel_core::api::{
    Comment, CreateComment, DEFAULT_PAGE, MAX_PAGE, MoveTask, Page, ProjectRole, Task, UpdateTask,
};
use kodel_core::{ErrorCode, TaskKey};
use serde::Deserialize;
use serde_json::json;
use uuid::Uuid;

pub(crate) mod create;

use super::projects::{ProjectCtx, access};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::openapi::{Errors, code, path};
use crate::AppState;
use crate::engine::tasks::{self, TASK_SELECT, TaskRow};
use crate::engine::workflow::{self, MoveCause};
use crate::error::{ApiError, ApiResult};
use crate::json::{ApiJson, ApiQuery};
use crate::tenant::Tenant;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list, create::create))
        .routes(routes!(show, update))
        .routes(routes!(move_task))
        .routes(routes!(list_comments, add_comment))
        .routes(routes!(history))
}

/// Resolves `KOD-42` to the task, checking the caller may see its project.
pub(crate) async fn find_task(t: &mut Tenant, raw: &str, lock: bool) -> ApiResult<(ProjectCtx, TaskRow)> {
    let key = TaskKey::parse(raw).map_err(|e| ApiError::new(ErrorCode::InvalidKey, e.0))?;
    let p = access(t, key.project.as_str(), ErrorCode::TaskNotFound).await?;
    let sql = format!("{TASK_SELECT} WHERE t.project_id = $1 AND t.number = $2{}", if lock { " FOR UPDATE OF t" } else { "" });
    let row = sqlx::query_as::<_, TaskRow>(&sql)
        .bind(p.id)
        .bind(key.number)
        .fetch_optional(t.conn())
        .await?
        .ok_or_else(|| ApiError::new(ErrorCode::TaskNotFound, format!("{key} not found")))?;
    Ok((p, row))
}

#[derive(Debug, Default, Deserialize)]
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(crate) struct ListQuery {
    pub(crate) status: Option<String>,
    /// An email, `me`, or `none`.
    pub(crate) assignee: Option<String>,
    pub(crate) label: Option<String>,
    /// Text searched in title and description.
    pub(crate) q: Option<String>,
    /// `true` lists archived tasks too.
    pub(crate) archived: Option<bool>,
    pub(crate) cursor: Option<String>,
    pub(crate) limit: Option<i64>,
}

#[utoipa::path(
    get, path = "/api/v1/orgs/{org}/projects/{key}/tasks", tag = "tasks",
    summary = "List tasks, ordered by number (cursor, limit <= 200)",
    params(path::Project, ListQuery),
    responses((status = OK, description = "a page of tasks", body = Page<Task>), Errors<(code::InvalidKey, code::InvalidCursor, code::ProjectNotFound, code::InvalidRequest)>),
    security(("bearer" = []))
)]
pub(crate) async fn list(mut t: Tenant, Path((_, key)): Path<(String, String)>, ApiQuery(q): ApiQuery<ListQuery>) -> ApiResult<Json<Page<Task>>> {
    let p = access(&mut t, &key, ErrorCode::ProjectNotFound).await?;
    let limit = q.limit.unwrap_or(DEFAULT_PAGE);
    if !(1..=MAX_PAGE).contains(&limit) {
        return Err(ApiError::invalid(format!("limit must be between 1 and {MAX_PAGE}")));
    }
    let after: i32 = match q.cursor.as_deref() {
        None | Some("") => 0,
        Some(c) => c.parse().ok().filter(|n| *n >= 0).ok_or_else(|| ApiError::new(ErrorCode::InvalidCursor, "cursor is not one this server gave out"))?,
    };
    let (assignee, unassigned) = match q.assignee.as_deref() {
        None => (None, false),
        Some("none") => (None, true),
        Some("me") => (Some(t.user_id()), false),
        Some(email) => {
            let id: Option<Uuid> = sqlx::query_scalar("SELECT id FROM public.users WHERE lower(email) = lower($1)")
                .bind(email.trim())
                .fetch_optional(t.conn())
                .await?;
            // Nobody by that name assigns nothing: an empty page, not an error.
            (Some(id.unwrap_or(Uuid::nil())), false)
        }
    };
    // Only the filters in use go into the SQL: a generic plan for "optional" filters
    // (`$3 IS NULL OR ...`) cannot use the (project, number) index well.
    let mut sql = sqlx::QueryBuilder::<sqlx::Postgres>::new(TASK_SELECT);
    sql.push(" WHERE t.project_id = ").push_bind(p.id).push(" AND t.number > ").push_bind(after);
    if let Some(status) = q.status.as_deref() {
        // A status the workflow does not have is a mistake to point out, not an empty page.
        let names: Vec<String> =
            sqlx::query_scalar("SELECT name FROM statuses WHERE workflow_id = $1 ORDER BY position").bind(p.workflow_id).fetch_all(t.conn()).await?;
        if !names.iter().any(|n| n.eq_ignore_ascii_case(status.trim())) {
            return Err(ApiError::invalid(format!("{key} has no status {:?}; its statuses: {}", status.trim(), names.join(", "))));
        }
        sql.push(" AND lower(s.name) = lower(").push_bind(status.trim().to_owned()).push(")");
    }
    if unassigned {
        sql.push(" AND t.assignee_id IS NULL");
    } else if let Some(a) = assignee {
        sql.push(" AND t.assignee_id = ").push_bind(a);
    }
    if let Some(label) = q.label.as_deref() {
        sql.push(" AND ").push_bind(label.trim().to_owned()).push(" = ANY (t.labels)");
    }
    if let Some(text) = q.q.as_deref().filter(|s| !s.is_empty()) {
        let pattern = format!("%{}%", text.replace('\\', "\\\\").replace('%', "\\%").replace('_', "\\_"));
        sql.push(" AND (t.title ILIKE ").push_bind(pattern.clone()).push(" OR t.description ILIKE ").push_bind(pattern).push(")");
    }
    if !q.archived.unwrap_or(false) {
        sql.push(" AND t.archived_at IS NULL");
    }
    // The limit is a literal (a checked integer): as a parameter, PostgreSQL's generic
    // plan would sort the whole project instead of walking the (project, number) index.
    sql.push(format!(" ORDER BY t.number LIMIT {}", limit + 1));
    // Without fresh statistics (a young table, or autovacuum off) the planner also
    // believes a project holds a dozen tasks and sorts them all; a page must always be
    // an index walk, so sorting is off for this transaction.
    sqlx::query("SELECT set_config('enable_sort', 'off', true)").execute(t.conn()).await?;
    let mut rows = sql.build_query_as::<TaskRow>().fetch_all(t.conn()).await?;
    t.commit().await?;
    let next_cursor = if rows.len() as i64 > limit {
        rows.truncate(limit as usize);
        rows.last().map(|r| r.number.to_string())
    } else {
        None
    };
    Ok(Json(Page { data: rows.into_iter().map(TaskRow::into_api).collect(), next_cursor }))
}

#[utoipa::path(
    get, path = "/api/v1/orgs/{org}/tasks/{task}", tag = "tasks",
    summary = "One task by key, e.g. KOD-42",
    params(path::Task),
    responses((status = OK, description = "task", body = Task), Errors<(code::InvalidKey, code::TaskNotFound,)>),
    security(("bearer" = []))
)]
pub(crate) async fn show(mut t: Tenant, Path((_, task)): Path<(String, String)>) -> ApiResult<Json<Task>> {
    let (_, row) = find_task(&mut t, &task, false).await?;
    t.commit().await?;
    Ok(Json(row.into_api()))
}

fn stale(row: &TaskRow, given: i32) -> ApiError {
    ApiError::new(
        ErrorCode::VersionConflict,
        format!("task changed since version {given}; it is at version {} now: reload and retry", row.version),
    )
    .with_details(json!({ "current_version": row.version }))
}

#[utoipa::path(
    patch, path = "/api/v1/orgs/{org}/tasks/{task}", tag = "tasks",
    summary = "Update a task; `version` must be current (409 version_conflict otherwise)",
    params(path::Task),
    request_body = UpdateTask,
    responses((status = OK, description = "task", body = Task), Errors<(code::InvalidKey, code::TaskNotFound, code::Forbidden, code::VersionConflict)>),
    security(("bearer" = []))
)]
async fn update(mut t: Tenant, Path((_, task)): Path<(String, String)>, ApiJson(req): ApiJson<UpdateTask>) -> ApiResult<Json<Task>> {
    let (p, row) = find_task(&mut t, &task, true).await?;
    p.require(ProjectRole::Developer, "editing tasks")?;
    if row.version != req.version {
        return Err(stale(&row, req.version));
    }
    if !tasks::update(&mut t, &row, req).await? {
        t.commit().await?;
        return Ok(Json(row.into_api()));
    }
    // What the engine made of the change (a rule may have moved the task on).
    Ok(Json(t.commit_with(async |db| tasks::read(db, row.id).await).await?))
}

#[utoipa::path(
    post, path = "/api/v1/orgs/{org}/tasks/{task}/move", tag = "tasks",
    summary = "Move to another status; 409 transition_not_allowed lists the allowed ones",
    params(path::Task),
    request_body = MoveTask,
    responses((status = OK, description = "task", body = Task), Errors<(code::InvalidKey, code::TaskNotFound, code::Forbidden, code::VersionConflict, code::TransitionNotAllowed)>),
    security(("bearer" = []))
)]
pub(crate) async fn move_task(mut t: Tenant, Path((_, task)): Path<(String, String)>, ApiJson(req): ApiJson<MoveTask>) -> ApiResult<Json<Task>> {
    let (p, row) = find_task(&mut t, &task, true).await?;
    p.require(ProjectRole::Developer, "moving tasks")?;
    if let Some(v) = req.version.filter(|v| *v != row.version) {
        return Err(stale(&row, v));
    }
    workflow::move_task(&mut t, row.id, &req.status, MoveCause::default()).await?;
    Ok(Json(t.commit_with(async |db| tasks::read(db, row.id).await).await?))
}

#[derive(sqlx::FromRow)]
struct CommentRow {
    id: Uuid,
    author: Option<String>,
    body: String,
    created_at: DateTime<Utc>,
}

#[derive(Debug, Default, Deserialize)]
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(crate) struct PageQuery {
    pub(crate) cursor: Option<String>,
    pub(crate) limit: Option<i64>,
}

/// Comments oldest first (ids are time-ordered UUIDv7), a page at a time.
#[utoipa::path(
    get, path = "/api/v1/orgs/{org}/tasks/{task}/comments", tag = "tasks",
    summary = "Comments, oldest first, a page at a time (cursor, limit <= 200)",
    params(path::Task, PageQuery),
    responses((status = OK, description = "comments", body = Page<Comment>), Errors<(code::InvalidKey, code::TaskNotFound, code::InvalidCursor, code::InvalidRequest)>),
    security(("bearer" = []))
)]
pub(crate) async fn list_comments(mut t: Tenant, Path((_, task)): Path<(String, String)>, ApiQuery(q): ApiQuery<PageQuery>) -> ApiResult<Json<Page<Comment>>> {
    let limit = q.limit.unwrap_or(DEFAULT_PAGE);
    if !(1..=MAX_PAGE).contains(&limit) {
        return Err(ApiError::invalid(format!("limit must be between 1 and {MAX_PAGE}")));
    }
    let after = match q.cursor.as_deref() {
        None | Some("") => Uuid::nil(),
        Some(c) => Uuid::parse_str(c).map_err(|_| ApiError::new(ErrorCode::InvalidCursor, "cursor is not one this server gave out"))?,
    };
    let (_, row) = find_task(&mut t, &task, false).await?;
    let mut rows = sqlx::query_as::<_, CommentRow>(
        "SELECT c.id, u.email AS author, c.body, c.created_at FROM comments c
         LEFT JOIN public.users u ON u.id = c.author_id WHERE c.task_id = $1 AND c.id > $2 ORDER BY c.id LIMIT $3",
    )
    .bind(row.id)
    .bind(after)
    .bind(limit + 1)
    .fetch_all(t.conn())
    .await?;
    t.commit().await?;
    let next_cursor = if rows.len() as i64 > limit {
        rows.truncate(limit as usize);
        rows.last().map(|c| c.id.to_string())
    } else {
        None
    };
    let key = format!("{}-{}", row.project, row.number);
    let data = rows
        .into_iter()
        .map(|c| Comment { id: c.id, task: key.clone(), author: c.author.unwrap_or_default(), body: c.body, created_at: c.created_at })
        .collect();
    Ok(Json(Page { data, next_cursor }))
}

#[utoipa::path(
    post, path = "/api/v1/orgs/{org}/tasks/{task}/comments", tag = "tasks",
    summary = "Comment (reviewer+)",
    params(path::Task),
    request_body = CreateComment,
    responses((status = CREATED, description = "comment", body = Comment), Errors<(code::InvalidKey, code::TaskNotFound, code::Forbidden)>),
    security(("bearer" = []))
)]
pub(crate) async fn add_comment(mut t: Tenant, Path((_, task)): Path<(String, String)>, ApiJson(req): ApiJson<CreateComment>) -> ApiResult<(StatusCode, Json<Comment>)> {
    // The task row is locked before anything is written, as in every change to a task.
    let (p, row) = find_task(&mut t, &task, true).await?;
    p.require(ProjectRole::Reviewer, "commenting")?;
    let (id, body, created_at) = tasks::comment(&mut t, row.id, &req.body).await?;
    let author = t.auth.user.email.clone();
    t.commit().await?;
    Ok((StatusCode::CREATED, Json(Comment { id, task: row.key(), author, body, created_at })))
}

#[derive(Debug, Default, Deserialize)]
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct HistoryQuery {
    /// Events after this per-task seq (0: from the first).
    after: Option<i32>,
    limit: Option<i64>,
}

#[derive(sqlx::FromRow)]
struct HistoryRow {
    id: i64,
    seq: i32,
    kind: String,
    payload: serde_json::Value,
    actor: Option<String>,
    created_at: DateTime<Utc>,
}

/// A task's stored events in order (by its own seq, which its events take under the
/// task's lock, so none can appear later before one already read). `next_cursor` is the
/// last seq of a full page; follow live from the last `id` with the SSE stream's
/// `Last-Event-ID`.
#[utoipa::path(
    get, path = "/api/v1/orgs/{org}/tasks/{task}/history", tag = "tasks",
    summary = "A task's stored events in order (by its per-task seq); follow live from the last id with the SSE stream's Last-Event-ID",
    params(path::Task, HistoryQuery),
    responses((status = OK, description = "events", body = Page<kodel_core::api::Event>), Errors<(code::InvalidKey, code::TaskNotFound, code::InvalidRequest)>),
    security(("bearer" = []))
)]
async fn history(mut t: Tenant, Path((_, task)): Path<(String, String)>, ApiQuery(q): ApiQuery<HistoryQuery>) -> ApiResult<Json<Page<kodel_core::api::Event>>> {
    let limit = q.limit.unwrap_or(500);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::invalid("limit must be between 1 and 1000"));
    }
    let (_, row) = find_task(&mut t, &task, false).await?;
    let rows: Vec<HistoryRow> = sqlx::query_as(
        "SELECT e.id, e.seq, e.type AS kind, e.payload, u.email AS actor, e.created_at FROM task_events e
         LEFT JOIN public.users u ON u.id = e.actor_id WHERE e.task_id = $1 AND e.seq > $2 ORDER BY e.seq LIMIT $3",
    )
    .bind(row.id)
    .bind(q.after.unwrap_or(0))
    .bind(limit)
    .fetch_all(t.conn())
    .await?;
    t.commit().await?;
    let next_cursor = (rows.len() as i64 == limit).then(|| rows.last().map(|r| r.seq.to_string())).flatten();
    let key = format!("{}-{}", row.project, row.number);
    let data = rows
        .into_iter()
        .map(|r| kodel_core::api::Event { id: r.id, kind: r.kind, task: key.clone(), seq: r.seq, actor: r.actor, payload: r.payload, created_at: r.created_at })
        .collect();
    Ok(Json(Page { data, next_cursor }))
}
