//! The task page: the task, its comments, jobs and artifacts (approve or reject), and
//! the agent's stream: the steps stored so far, then the model's text as it comes and
//! each step as it ends (the page's script follows the task's event stream).

use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::{Html, IntoResponse, Response};
use kodel_core::api::{CreateComment, MoveTask, Page, Project, ProjectRole, Task, Comment};
use kodel_core::jobs::{Artifact, ArtifactState, Job};
use maud::{Markup, html};
use serde::Deserialize;

use super::render;
use super::session::{Form, Viewer};
use super::{WebError, WebResult, done, failed, layout};
use crate::AppState;
use crate::error::ApiError;
use crate::json::{ApiJson, ApiQuery};
use crate::routes::{events, jobs, projects, tasks};

/// Everything the page shows but the stream.
struct TaskView {
    task: Task,
    project: Project,
    comments: Vec<Comment>,
    jobs: Vec<Job>,
    artifacts: Vec<Artifact>,
}

async fn load(state: &AppState, viewer: &Viewer, org: &str, key: &str) -> WebResult<TaskView> {
    let path = || Path((org.to_owned(), key.to_owned()));
    let axum::Json(task) = tasks::show(viewer.tenant(state, org).await?, path()).await?;
    let axum::Json(project) = projects::show(viewer.tenant(state, org).await?, Path((org.to_owned(), task.project.clone()))).await?;
    let q = tasks::PageQuery { limit: Some(kodel_core::api::MAX_PAGE), cursor: None };
    let axum::Json(Page { data: comments, .. }) = tasks::list_comments(viewer.tenant(state, org).await?, path(), ApiQuery(q)).await?;
    let by_task = || jobs::ListQuery { task: Some(key.to_owned()), limit: Some(50), ..Default::default() };
    let axum::Json(Page { data: jobs, .. }) = jobs::list_jobs(viewer.tenant(state, org).await?, ApiQuery(by_task())).await?;
    let axum::Json(Page { data: artifacts, .. }) = jobs::list_artifacts(viewer.tenant(state, org).await?, ApiQuery(by_task())).await?;
    Ok(TaskView { task, project, comments, jobs, artifacts })
}

#[derive(Deserialize, Default)]
pub struct PageQuery {
    /// The job whose stream is shown (default: the newest).
    job: Option<uuid::Uuid>,
}

pub async fn page(State(state): State<AppState>, viewer: Viewer, Path((org, key)): Path<(String, String)>, Query(q): Query<PageQuery>) -> WebResult<Html<String>> {
    let since = {
        let mut t = viewer.tenant(&state, &org).await?;
        let id: i64 = sqlx::query_scalar("SELECT coalesce(max(id), 0) FROM task_events").fetch_one(t.conn()).await.map_err(ApiError::from)?;
        t.commit().await?;
        id
    };
    let v = load(&state, &viewer, &org, &key).await?;
    // Jobs come newest first.
    let job = q.job.and_then(|id| v.jobs.iter().find(|j| j.id == id)).or(v.jobs.first());
    let steps = match job {
        Some(j) => job_steps(&state, &viewer, &org, j.id, -1).await?,
        None => Vec::new(),
    };
    let t = &v.task;
    let can_move = v.project.role >= ProjectRole::Developer;
    let can_comment = v.project.role >= ProjectRole::Reviewer;
    let status = v.project.workflow.statuses.iter().find(|s| s.name == t.status);
    let next: Vec<&str> = status.map(|s| s.next.iter().map(String::as_str).collect()).unwrap_or_default();
    let others: Vec<&str> = v.project.workflow.statuses.iter().map(|s| s.name.as_str()).filter(|n| *n != t.status && !next.contains(n)).collect();
    Ok(layout::page(
        &format!("{} {}", t.key, t.title),
        Some(&viewer),
        html! {
            p.crumbs { a href={ "/o/" (org) "/p/" (t.project) } { "← " (t.project) " board" } }
            div.task data-task data-org=(org) data-key=(t.key) data-since=(since) data-job=(job.map(|j| j.id.to_string()).unwrap_or_default()) {
                div.left {
                    h1 { span.key { (t.key) } " " (t.title) }
                    @if can_move {
                        form.move method="post" action={ "/o/" (org) "/t/" (t.key) "/move" } data-fetch {
                            input type="hidden" name="csrf" value=(viewer.csrf());
                            label { "Move to "
                                select name="status" {
                                    @if !next.is_empty() { optgroup label="Allowed from here" { @for n in &next { option { (n) } } } }
                                    @if !others.is_empty() { optgroup label="Other statuses" { @for n in &others { option { (n) } } } }
                                }
                            }
                            button type="submit" { "Move" }
                            p.err role="alert" {}
                        }
                    }
                    @if can_comment {
                        form.comment method="post" action={ "/o/" (org) "/t/" (t.key) "/comments" } data-fetch {
                            input type="hidden" name="csrf" value=(viewer.csrf());
                            label { "Comment" textarea name="body" required maxlength="20000" rows="3" {} }
                            button type="submit" { "Add comment" }
                            p.err role="alert" {}
                        }
                    }
                    // Below the forms: what changes with events moves nothing else.
                    div #side { (side_html(&org, &v, &viewer)) }
                }
                section.right aria-label="Agent" {
                    h2 { "Agent" }
                    @if v.jobs.len() > 1 {
                        nav.jobs-nav { @for j in &v.jobs { a href={ "?job=" (j.id) } aria-current=[(Some(j.id) == job.map(|x| x.id)).then_some("true")] { (j.template) " · " (j.status.as_str()) } " " } }
                    }
                    div.stream #stream tabindex="0" aria-label="The agent's steps" {
                        @if job.is_none() { p.dim #no-job { "No job has run on this task yet." } }
                        ol #steps { @for (seq, step) in &steps { (render::step(*seq, step)) } }
                        pre #live aria-live="off" {}
                    }
                }
            }
        },
    ))
}

/// The part of the page that changes with the task's events (not the forms, whose
/// half-typed text a refresh must not lose).
fn side_html(org: &str, v: &TaskView, viewer: &Viewer) -> Markup {
    let t = &v.task;
    let can_decide = v.project.role >= ProjectRole::Reviewer;
    html! {
        p.facts {
            span.badge.status { (t.status) }
            " " span.dim { "priority " (serde_json::to_value(t.priority).ok().and_then(|p| p.as_str().map(str::to_owned)).unwrap_or_default()) }
            @if let Some(a) = &t.assignee { " · " span.who { (a) } }
            @for l in &t.labels { " " span.lbl { "#" (l) } }
        }
        @if !t.description.is_empty() { div.desc { (t.description) } }
        @if !v.artifacts.is_empty() {
            h2 { "Artifacts" }
            @for a in &v.artifacts {
                article.artifact #{ "artifact-" (a.id) } {
                    h3 { (a.title) " " span class={ "badge " (a.status.as_str()) } { (a.status.as_str()) } " " span.dim { (a.kind.as_str().replace('_', " ")) } }
                    (render::artifact_body(a))
                    @if let Some(by) = &a.decided_by { p.dim { (a.status.as_str()) " by " (by) @if let Some(c) = &a.comment { ": " (c) } } }
                    @if a.status == ArtifactState::Pending && can_decide {
                        form.decide method="post" action={ "/o/" (org) "/artifacts/" (a.id) "/approve" } data-fetch {
                            input type="hidden" name="csrf" value=(viewer.csrf());
                            label { "Comment (optional)" textarea name="comment" rows="2" maxlength="20000" {} }
                            button type="submit" name="decision" value="approve" { "Approve" }
                            " "
                            button type="submit" name="decision" value="reject" formaction={ "/o/" (org) "/artifacts/" (a.id) "/reject" } { "Reject" }
                            p.err role="alert" {}
                        }
                    }
                }
            }
        }
        h2 { "Jobs" }
        @if v.jobs.is_empty() { p.dim { "None yet." } }
        ul.jobs {
            @for j in &v.jobs {
                li class={ "job " (j.status.as_str()) } {
                    (j.template) " " span.badge { (j.status.as_str()) } " " span.dim { "attempt " (j.attempts) " of " (j.max_attempts) }
                    @if let Some(e) = &j.error { div.error { (e) } }
                    @if let Some(s) = &j.summary { div.summary { (s) } }
                }
            }
        }
        h2 { "Comments" }
        @if v.comments.is_empty() { p.dim { "None yet." } }
        ol.comments {
            @for c in &v.comments {
                li { span.who { (c.author) } " " time.dim datetime=(c.created_at.to_rfc3339()) { (c.created_at.format("%Y-%m-%d %H:%M")) } div.body { (c.body) } }
            }
        }
    }
}

/// The part of the page that follows the task's events, alone.
pub async fn side(State(state): State<AppState>, viewer: Viewer, Path((org, key)): Path<(String, String)>) -> WebResult<Html<String>> {
    let v = load(&state, &viewer, &org, &key).await?;
    Ok(Html(side_html(&org, &v, &viewer).into_string()))
}

async fn job_steps(state: &AppState, viewer: &Viewer, org: &str, job: uuid::Uuid, after: i32) -> WebResult<Vec<(i32, serde_json::Value)>> {
    let axum::Json(page) = jobs::job_steps(viewer.tenant(state, org).await?, Path((org.to_owned(), job.to_string())), ApiQuery(jobs::StepsQuery { after: Some(after) })).await?;
    Ok(page.data.into_iter().map(|s| (s.seq, s.step)).collect())
}

#[derive(Deserialize)]
pub struct StepsQuery {
    job: uuid::Uuid,
    #[serde(default = "minus_one")]
    after: i32,
}

fn minus_one() -> i32 {
    -1
}

/// A job's steps after `after`, as list items for the stream.
pub async fn steps(State(state): State<AppState>, viewer: Viewer, Path((org, key)): Path<(String, String)>, Query(q): Query<StepsQuery>) -> WebResult<Html<String>> {
    let axum::Json(job) = jobs::show_job(viewer.tenant(&state, &org).await?, Path((org.clone(), q.job.to_string()))).await?;
    if !job.task.eq_ignore_ascii_case(&key) {
        return Err(ApiError::new(kodel_core::ErrorCode::JobNotFound, format!("{key} has no job {}", q.job)).into());
    }
    let steps = job_steps(&state, &viewer, &org, q.job, q.after).await?;
    Ok(Html(html! { @for (seq, step) in &steps { (render::step(*seq, step)) } }.into_string()))
}

/// The task's event stream (the API's, signed in by the session cookie).
pub async fn events(State(state): State<AppState>, viewer: Viewer, Path((org, key)): Path<(String, String)>, headers: HeaderMap, Query(q): Query<events::ResumeQuery>) -> WebResult<Response> {
    let t = viewer.tenant(&state, &org).await?;
    Ok(events::task_events(State(state), t, Path((org, key)), headers, ApiQuery(q)).await?.into_response())
}

#[derive(Deserialize)]
pub struct MoveForm {
    status: String,
}

pub async fn move_to(State(state): State<AppState>, headers: HeaderMap, Path((org, key)): Path<(String, String)>, form: Result<Form<MoveForm>, WebError>) -> Response {
    let result = async {
        let Form(viewer, form) = form?;
        let t = viewer.tenant(&state, &org).await?;
        let axum::Json(task) = tasks::move_task(t, Path((org.clone(), key.clone())), ApiJson(MoveTask { status: form.status, version: None })).await?;
        Ok::<_, WebError>(task)
    }
    .await;
    match result {
        Ok(task) => done(&headers, &format!("/o/{org}/t/{}", task.key)),
        Err(e) => failed(&headers, e),
    }
}

#[derive(Deserialize)]
pub struct CommentForm {
    body: String,
}

pub async fn comment(State(state): State<AppState>, headers: HeaderMap, Path((org, key)): Path<(String, String)>, form: Result<Form<CommentForm>, WebError>) -> Response {
    let result = async {
        let Form(viewer, form) = form?;
        let t = viewer.tenant(&state, &org).await?;
        let _ = tasks::add_comment(t, Path((org.clone(), key.clone())), ApiJson(CreateComment { body: form.body })).await?;
        Ok::<_, WebError>(())
    }
    .await;
    match result {
        Ok(()) => done(&headers, &format!("/o/{org}/t/{key}")),
        Err(e) => failed(&headers, e),
    }
}

#[derive(Deserialize)]
pub struct DecideForm {
    #[serde(default)]
    comment: String,
}

pub async fn decide(State(state): State<AppState>, headers: HeaderMap, Path((org, id, decision)): Path<(String, String, String)>, form: Result<Form<DecideForm>, WebError>) -> Response {
    let result = async {
        let Form(viewer, form) = form?;
        let comment = Some(form.comment).filter(|c| !c.trim().is_empty());
        let body = axum::body::Bytes::from(serde_json::to_vec(&kodel_core::jobs::DecideArtifact { comment }).map_err(ApiError::internal)?);
        let t = viewer.tenant(&state, &org).await?;
        let path = Path((org.clone(), id.clone()));
        let axum::Json(a) = match decision.as_str() {
            "approve" => jobs::approve(t, path, body).await?,
            "reject" => jobs::reject(t, path, body).await?,
            _ => return Err(ApiError::new(kodel_core::ErrorCode::NotFound, "decide with approve or reject").into()),
        };
        Ok::<_, WebError>(a)
    }
    .await;
    match result {
        Ok(a) => done(&headers, &format!("/o/{org}/t/{}", a.task)),
        Err(e) => failed(&headers, e),
    }
}
