//! SSE streams: `GET /orgs/{org}/events` (the board) and `/tasks/{KEY-n}/events` (one
//! task). Every event has `id:`; `Last-Event-ID` (header, or `?last_event_id=`) resumes
//! after that event with nothing missed and nothing repeated. Heartbeat comments every
//! 15 s. Access is checked again every 30 s, so a removed member stops receiving.

use std::collections::HashSet;
use std::convert::Infallible;
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::routing::get;
use axum::Router;
use kodel_core::api::{OrgRole, ProjectRole};
use kodel_core::{ErrorCode, OrgSlug, TaskKey};
use serde::Deserialize;
use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use uuid::Uuid;

use super::projects::access;
use crate::AppState;
use crate::error::{ApiError, ApiResult};
use crate::events::{self, Pos, StoredEvent, tenant_tx};
use crate::tenant::Tenant;

const HEARTBEAT: Duration = Duration::from_secs(15);
const RECHECK: Duration = Duration::from_secs(30);

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/v1/orgs/{org}/events", get(org_events))
        .route("/api/v1/orgs/{org}/tasks/{task}/events", get(task_events))
}

#[derive(Debug, Default, Deserialize)]
struct ResumeQuery {
    last_event_id: Option<String>,
}

fn last_event_id(headers: &HeaderMap, q: &ResumeQuery) -> ApiResult<Option<i64>> {
    let raw = headers.get("last-event-id").and_then(|v| v.to_str().ok()).map(str::to_owned).or_else(|| q.last_event_id.clone());
    match raw.as_deref().map(str::trim) {
        None | Some("") => Ok(None),
        Some(s) => s.parse().map(Some).map_err(|_| ApiError::invalid("Last-Event-ID must be an event id")),
    }
}

/// What one stream shows and to whom.
#[derive(Clone)]
struct Scope {
    slug: OrgSlug,
    user: Uuid,
    task: Option<Uuid>,
    project: Option<String>,
    /// Projects the caller may see; None = all (org owners and admins).
    visible: Option<HashSet<Uuid>>,
}

impl Scope {
    fn shows(&self, ev: &StoredEvent) -> bool {
        self.task.is_none_or(|t| t == ev.task_id) && self.visible.as_ref().is_none_or(|v| v.contains(&ev.project_id))
    }
}

async fn visible_projects(t: &mut Tenant) -> ApiResult<Option<HashSet<Uuid>>> {
    if t.org.role >= OrgRole::Admin {
        return Ok(None);
    }
    let user = t.user_id();
    let ids: Vec<Uuid> = sqlx::query_scalar("SELECT project_id FROM project_members WHERE user_id = $1").bind(user).fetch_all(t.conn()).await?;
    Ok(Some(ids.into_iter().collect()))
}

async fn org_events(State(state): State<AppState>, mut t: Tenant, headers: HeaderMap, Query(q): Query<ResumeQuery>) -> ApiResult<Sse<SseStream>> {
    let resume = last_event_id(&headers, &q)?;
    let visible = visible_projects(&mut t).await?;
    let scope = Scope { slug: t.org.slug.clone(), user: t.user_id(), task: None, project: None, visible };
    t.commit().await?;
    Ok(stream(state, scope, resume).await)
}

async fn task_events(State(state): State<AppState>, mut t: Tenant, Path((_, task)): Path<(String, String)>, headers: HeaderMap, Query(q): Query<ResumeQuery>) -> ApiResult<Sse<SseStream>> {
    let resume = last_event_id(&headers, &q)?;
    let key = TaskKey::parse(&task).map_err(|e| ApiError::new(ErrorCode::InvalidKey, e.0))?;
    let p = access(&mut t, key.project.as_str(), ErrorCode::TaskNotFound).await?;
    let id: Option<Uuid> = sqlx::query_scalar("SELECT id FROM tasks WHERE project_id = $1 AND number = $2")
        .bind(p.id)
        .bind(key.number)
        .fetch_optional(t.conn())
        .await?;
    let id = id.ok_or_else(|| ApiError::new(ErrorCode::TaskNotFound, format!("{key} not found")))?;
    let scope = Scope { slug: t.org.slug.clone(), user: t.user_id(), task: Some(id), project: Some(p.key), visible: None };
    t.commit().await?;
    Ok(stream(state, scope, resume).await)
}

async fn stream(state: AppState, scope: Scope, resume: Option<i64>) -> Sse<SseStream> {
    let (out, rx) = mpsc::channel(64);
    let sub = state.events.subscribe(&scope.slug).await;
    tokio::spawn(async move {
        if let Err(err) = run(state, scope, resume, sub, out).await {
            tracing::debug!(error = %err, "event stream ended");
        }
    });
    Sse::new(ReceiverStream::new(rx)).keep_alive(KeepAlive::new().interval(HEARTBEAT))
}

type SseStream = axum::response::sse::KeepAliveStream<ReceiverStream<Result<SseEvent, Infallible>>>;
type Out = mpsc::Sender<Result<SseEvent, Infallible>>;

#[derive(Debug, thiserror::Error)]
enum StreamEnd {
    #[error("client went away")]
    Gone,
    #[error("access revoked")]
    Revoked,
    #[error(transparent)]
    Db(#[from] sqlx::Error),
}

async fn send(out: &Out, ev: &StoredEvent) -> Result<(), StreamEnd> {
    let data = serde_json::to_string(&ev.event).unwrap_or_default();
    let sse = SseEvent::default().id(ev.event.id.to_string()).event(ev.event.kind.clone()).data(data);
    out.send(Ok(sse)).await.map_err(|_| StreamEnd::Gone)
}

/// Sends every deliverable event after `last` from the database.
async fn catch_up(state: &AppState, scope: &Scope, last: &mut Pos, out: &Out) -> Result<(), StreamEnd> {
    loop {
        let mut tx = tenant_tx(&state.pool, &scope.slug).await?;
        let rows = events::load(&mut tx, *last, scope.task, 500).await?;
        tx.commit().await?;
        let n = rows.len();
        for (ev, safe) in rows {
            if !safe {
                return Ok(());
            }
            *last = ev.pos;
            if scope.shows(&ev) {
                send(out, &ev).await?;
            }
        }
        if n < 500 {
            return Ok(());
        }
    }
}

async fn run(state: AppState, mut scope: Scope, resume: Option<i64>, sub: events::Subscription, out: Out) -> Result<(), StreamEnd> {
    let mut rx = sub.rx;
    let mut last = sub.start;
    if let Some(id) = resume {
        let mut tx = tenant_tx(&state.pool, &scope.slug).await?;
        let pos = events::position_of(&mut tx, id).await?;
        tx.commit().await?;
        match pos {
            Some(pos) => {
                last = pos;
                catch_up(&state, &scope, &mut last, &out).await?;
            }
            None => {
                let sse = SseEvent::default().event("resync").data(r#"{"reason":"unknown Last-Event-ID; reload and follow live"}"#);
                out.send(Ok(sse)).await.map_err(|_| StreamEnd::Gone)?;
            }
        }
    }
    let mut recheck = tokio::time::interval(RECHECK);
    recheck.tick().await;
    loop {
        tokio::select! {
            msg = rx.recv() => match msg {
                Ok(ev) => {
                    if ev.pos > last {
                        last = ev.pos;
                        if scope.shows(&ev) {
                            send(&out, &ev).await?;
                        }
                    }
                }
                // Too slow for the live feed: read what was missed from the database.
                Err(broadcast::error::RecvError::Lagged(_)) => catch_up(&state, &scope, &mut last, &out).await?,
                Err(broadcast::error::RecvError::Closed) => return Ok(()),
            },
            _ = recheck.tick() => recheck_access(&state, &mut scope).await?,
            _ = out.closed() => return Err(StreamEnd::Gone),
        }
    }
}

async fn recheck_access(state: &AppState, scope: &mut Scope) -> Result<(), StreamEnd> {
    let mut tx = tenant_tx(&state.pool, &scope.slug).await?;
    let role: Option<String> = sqlx::query_scalar(
        "SELECT m.role FROM public.org_members m JOIN public.orgs o ON o.id = m.org_id WHERE o.slug = $1 AND m.user_id = $2",
    )
    .bind(scope.slug.as_str())
    .bind(scope.user)
    .fetch_optional(&mut *tx)
    .await?;
    let role = role.as_deref().and_then(OrgRole::parse).ok_or(StreamEnd::Revoked)?;
    if role < OrgRole::Admin {
        let ids: Vec<Uuid> = sqlx::query_scalar("SELECT project_id FROM project_members WHERE user_id = $1").bind(scope.user).fetch_all(&mut *tx).await?;
        if let Some(key) = &scope.project {
            let allowed: Option<String> = sqlx::query_scalar(
                "SELECT pm.role FROM project_members pm JOIN projects p ON p.id = pm.project_id WHERE p.key = $1 AND pm.user_id = $2",
            )
            .bind(key)
            .bind(scope.user)
            .fetch_optional(&mut *tx)
            .await?;
            allowed.as_deref().and_then(ProjectRole::parse).ok_or(StreamEnd::Revoked)?;
        } else {
            scope.visible = Some(ids.into_iter().collect());
        }
    } else if scope.task.is_none() {
        scope.visible = None;
    }
    tx.commit().await?;
    Ok(())
}
