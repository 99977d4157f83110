//! The board: a project's workflow statuses as columns, its tasks as cards. Live: the
//! page's script follows the org's event stream from the last event the page showed and
//! fetches the card of each task that changed.

use std::collections::HashSet;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use kodel_core::api::{CreateTask, Page, Task};
use kodel_core::jobs::Job;
use maud::html;
use serde::Deserialize;

use super::render::{self, Filter};
use super::session::{Form, Viewer};
use super::{WebResult, done, failed, layout};
use crate::AppState;
use crate::json::{ApiJson, ApiQuery};
use crate::routes::{events, jobs, projects, tasks};
use crate::tenant::Caller;

/// The most cards a board shows (the rest are one filter away).
const MAX_CARDS: usize = 2000;

#[derive(Deserialize, Default)]
pub struct BoardQuery {
    #[serde(default)]
    q: String,
}

pub async fn page(State(state): State<AppState>, viewer: Viewer, Path((org, key)): Path<(String, String)>, Query(query): Query<BoardQuery>) -> WebResult<Html<String>> {
    // The stream resumes after the newest event that existed before anything was read:
    // a change made while the page is rendered arrives again rather than never.
    let since = last_event(&state, &viewer, &org).await?;
    let axum::Json(project) = projects::show(viewer.tenant(&state, &org).await?, Path((org.clone(), key.clone()))).await?;
    let all = all_tasks(&state, &viewer, &org, &key).await?;
    let running = running_tasks(&state, &viewer, &org, None).await?;
    let filter = Filter::parse(&query.q);
    let shown: Vec<&Task> = all.iter().filter(|t| filter.matches(t, &viewer.user.email)).collect();
    let can_edit = project.role >= kodel_core::api::ProjectRole::Developer;
    Ok(layout::page(
        &format!("{} board", project.key),
        Some(&viewer),
        html! {
            div.board-head {
                h1 { (project.key) " " span.dim { (project.name) } }
                form.filter method="get" role="search" {
                    input type="search" name="q" value=(query.q) placeholder="Filter: words #label @assignee" aria-label="Filter tasks" accesskey="f";
                    button type="submit" { "Filter" }
                }
            }
            @if can_edit {
                form.create method="post" action={ "/o/" (org) "/p/" (project.key) "/tasks" } data-fetch {
                    input type="hidden" name="csrf" value=(viewer.csrf());
                    input name="title" required maxlength="500" placeholder="New task title" aria-label="New task title";
                    input name="labels" placeholder="labels, comma separated" aria-label="Labels";
                    button type="submit" { "Create" }
                    details.more {
                        summary { "Description" }
                        textarea name="description" rows="4" maxlength="20000" aria-label="Description" {}
                    }
                    p.err role="alert" {}
                }
            }
            p.dim.count { (shown.len()) " of " (all.len()) " tasks" @if all.len() >= MAX_CARDS { " (the first " (MAX_CARDS) ")" } }
            div.board data-board data-org=(org) data-project=(project.key) data-since=(since) data-q=(query.q) {
                @for s in &project.workflow.statuses {
                    section.col data-status=(s.name) data-next=(s.next.join("\n")) aria-label=(s.name) {
                        h2 { (s.name) " " span.n { (shown.iter().filter(|t| t.status == s.name).count()) } }
                        ol {
                            @for t in shown.iter().filter(|t| t.status == s.name) {
                                (render::card(&org, t, running.contains(&t.key)))
                            }
                        }
                    }
                }
            }
            @if can_edit { (move_dialog(&viewer)) }
        },
    ))
}

/// One dialog moves any card (the script fills in the task and where it may go), so a
/// board of many cards does not carry a form per card.
fn move_dialog(viewer: &Viewer) -> maud::Markup {
    html! {
        dialog #move-dialog aria-labelledby="move-title" {
            form method="post" data-fetch {
                input type="hidden" name="csrf" value=(viewer.csrf());
                h2 #move-title { "Move " span.key {} }
                label { "To " select name="status" {} }
                div.actions {
                    button type="submit" { "Move" }
                    button type="button" data-close { "Cancel" }
                }
                p.err role="alert" {}
            }
        }
    }
}

/// The newest event of the org (0: none yet).
async fn last_event(state: &AppState, viewer: &Viewer, org: &str) -> WebResult<i64> {
    let mut t = viewer.tenant(state, org).await?;
    let id: i64 = sqlx::query_scalar("SELECT coalesce(max(id), 0) FROM task_events").fetch_one(t.conn()).await.map_err(crate::error::ApiError::from)?;
    t.commit().await?;
    Ok(id)
}

/// Every task of the project (up to `MAX_CARDS`), page by page through the API's list.
async fn all_tasks(state: &AppState, viewer: &Viewer, org: &str, key: &str) -> WebResult<Vec<Task>> {
    let mut all = Vec::new();
    let mut cursor = None;
    loop {
        let q = tasks::ListQuery { limit: Some(kodel_core::api::MAX_PAGE), cursor: cursor.take(), ..Default::default() };
        let axum::Json(Page { data, next_cursor }) = tasks::list(viewer.tenant(state, org).await?, Path((org.to_owned(), key.to_owned())), ApiQuery(q)).await?;
        all.extend(data);
        match next_cursor {
            Some(c) if all.len() < MAX_CARDS => cursor = Some(c),
            _ => break,
        }
    }
    all.truncate(MAX_CARDS);
    Ok(all)
}

/// Keys of the tasks with a running job (of one task, or of the whole org).
async fn running_tasks(state: &AppState, viewer: &Viewer, org: &str, task: Option<&str>) -> WebResult<HashSet<String>> {
    let q = jobs::ListQuery { task: task.map(str::to_owned), status: Some("running".into()), limit: Some(kodel_core::api::MAX_PAGE), cursor: None };
    let axum::Json(Page::<Job> { data, .. }) = jobs::list_jobs(viewer.tenant(state, org).await?, ApiQuery(q)).await?;
    Ok(data.into_iter().map(|j| j.task).collect())
}

/// One card, for the script to put in place (204: the task is not on this board's
/// filter, or archived).
pub async fn card(State(state): State<AppState>, viewer: Viewer, Path((org, key)): Path<(String, String)>, Query(query): Query<BoardQuery>) -> WebResult<Response> {
    let axum::Json(task) = tasks::show(viewer.tenant(&state, &org).await?, Path((org.clone(), key.clone()))).await?;
    if task.archived || !Filter::parse(&query.q).matches(&task, &viewer.user.email) {
        return Ok(StatusCode::NO_CONTENT.into_response());
    }
    let running = running_tasks(&state, &viewer, &org, Some(&key)).await?.contains(&task.key);
    Ok(Html(render::card(&org, &task, running).into_string()).into_response())
}

#[derive(Deserialize)]
pub struct NewTask {
    title: String,
    #[serde(default)]
    labels: String,
    #[serde(default)]
    description: String,
}

pub async fn create(State(state): State<AppState>, headers: HeaderMap, Path((org, key)): Path<(String, String)>, form: Result<Form<NewTask>, super::WebError>) -> Response {
    let result = async {
        let Form(viewer, form) = form?;
        let slug = kodel_core::OrgSlug::parse(&org).map_err(|e| crate::error::ApiError::new(kodel_core::ErrorCode::InvalidSlug, e.0))?;
        let labels: Vec<String> = form.labels.split(',').map(str::trim).filter(|l| !l.is_empty()).map(str::to_owned).collect();
        let req = CreateTask {
            title: form.title,
            description: Some(form.description).filter(|d| !d.trim().is_empty()),
            labels: (!labels.is_empty()).then_some(labels),
            ..Default::default()
        };
        let caller = Caller { slug, credential: viewer.credential.clone() };
        let _ = tasks::create::create(State(state.clone()), caller, Path((org.clone(), key.clone())), ApiJson(req)).await?;
        Ok::<_, super::WebError>(())
    }
    .await;
    match result {
        Ok(()) => done(&headers, &format!("/o/{org}/p/{key}")),
        Err(e) => failed(&headers, e),
    }
}

/// The org's event stream, for the board's and task page's script (the API's stream,
/// signed in by the session cookie).
pub async fn events(State(state): State<AppState>, viewer: Viewer, Path(org): Path<String>, headers: HeaderMap, Query(q): Query<events::ResumeQuery>) -> WebResult<Response> {
    let t = viewer.tenant(&state, &org).await?;
    Ok(events::org_events(State(state), t, headers, ApiQuery(q)).await?.into_response())
}

