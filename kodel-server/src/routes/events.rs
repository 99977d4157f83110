//! SSE streams: `GET /orgs/{org}/events` (the board) and `/tasks/{KEY-n}/events` (one
//! task). Every event has `id:`; `Last-Event-ID` (header, or `?last_event_id=`) resumes
//! after that event with nothing missed and nothing repeated. Heartbeat comments every
//! 15 s. Access is checked again every 30 s, so a removed member stops receiving; a
//! stream opened with an access token (JWT) ends when that token expires. A user may
//! hold `KODEL_STREAMS_PER_USER` streams at once and an org's members
//! `KODEL_STREAMS_PER_ORG` together; past that a new one is refused with 429.

use std::collections::{HashMap, HashSet};
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use kodel_core::api::OrgRole;
use kodel_core::{ErrorCode, OrgSlug, TaskKey};
use serde::Deserialize;
use sqlx::PgConnection;
use uuid::Uuid;

use super::projects::access;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::openapi::{Errors, code, path};
use crate::json::ApiQuery;
use crate::AppState;
use crate::auth::extract::Credential;
use crate::error::{ApiError, ApiResult};
use crate::db::scoped::begin_scoped;
use crate::events::feed::FollowError;
use crate::events::{Follower, Item, StoredEvent};
use crate::tenant::Tenant;

const HEARTBEAT: Duration = Duration::from_secs(15);
const RECHECK: Duration = Duration::from_secs(30);

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(org_events)).routes(routes!(task_events))
}

#[derive(Debug, Default, Deserialize)]
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct ResumeQuery {
    /// Resume after this event id (for clients that cannot send the Last-Event-ID header).
    pub(crate) last_event_id: Option<String>,
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
    credential: Arc<Credential>,
    user: Uuid,
    /// A task stream's task and its project.
    task: Option<(Uuid, Uuid)>,
    /// Projects the caller may see; None = all (org owners and admins).
    visible: Option<HashSet<Uuid>>,
}

impl Scope {
    fn shows(&self, ev: &StoredEvent) -> bool {
        self.shows_task(ev.task_id, ev.project_id)
    }

    fn shows_task(&self, task_id: Uuid, project_id: Uuid) -> bool {
        self.task.is_none_or(|(t, _)| t == task_id) && self.visible.as_ref().is_none_or(|v| v.contains(&project_id))
    }
}

/// Projects a user with this org role may see: None = all.
async fn visible_projects(conn: &mut PgConnection, user: Uuid, role: OrgRole) -> Result<Option<HashSet<Uuid>>, sqlx::Error> {
    if role >= OrgRole::Admin {
        return Ok(None);
    }
    let ids: Vec<Uuid> = sqlx::query_scalar("SELECT project_id FROM project_members WHERE user_id = $1").bind(user).fetch_all(conn).await?;
    Ok(Some(ids.into_iter().collect()))
}

/// Open streams per user and per org, and the bounds on them.
pub struct StreamCounts {
    per_user: u32,
    per_org: u32,
    open: std::sync::Mutex<(HashMap<Uuid, u32>, HashMap<Uuid, u32>)>,
}

/// One open stream, counted until it is dropped.
pub struct StreamSlot {
    counts: Arc<StreamCounts>,
    user: Uuid,
    org: Uuid,
}

impl StreamCounts {
    pub fn new(per_user: u32, per_org: u32) -> Self {
        Self { per_user, per_org, open: std::sync::Mutex::default() }
    }

    /// Event streams open now, over every org.
    pub fn open_total(&self) -> u64 {
        let open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        open.1.values().map(|n| u64::from(*n)).sum()
    }

    fn open(self: &Arc<Self>, user: Uuid, org: Uuid) -> ApiResult<StreamSlot> {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let (users, orgs) = &mut *open;
        if users.get(&user).copied().unwrap_or(0) >= self.per_user {
            return Err(ApiError::too_many(format!("you have {} event streams open, the most one user may; close one first", self.per_user), 5));
        }
        if orgs.get(&org).copied().unwrap_or(0) >= self.per_org {
            return Err(ApiError::too_many(format!("this org's members have {} event streams open, the most it may; try again later", self.per_org), 5));
        }
        *users.entry(user).or_default() += 1;
        *orgs.entry(org).or_default() += 1;
        Ok(StreamSlot { counts: self.clone(), user, org })
    }
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        let mut open = self.counts.open.lock().unwrap_or_else(|e| e.into_inner());
        let (users, orgs) = &mut *open;
        for (map, key) in [(users, self.user), (orgs, self.org)] {
            if let Some(n) = map.get_mut(&key) {
                *n -= 1;
                if *n == 0 {
                    map.remove(&key);
                }
            }
        }
    }
}

/// When a stream opened with `credential` must end: a JWT's expiry (API tokens are
/// checked with the access re-check).
fn ends_at(credential: &Credential) -> Option<tokio::time::Instant> {
    let Credential::Session { expires, .. } = credential else { return None };
    let left = (*expires - chrono::Utc::now().timestamp()).max(0) as u64;
    Some(tokio::time::Instant::now() + Duration::from_secs(left))
}

#[utoipa::path(
    get, path = "/api/v1/orgs/{org}/events", tag = "events",
    summary = "SSE stream of the org's task events (projects the caller can see)",
    params(path::Org, ("Last-Event-ID" = Option<String>, Header, description = "Resume after this event id"), ResumeQuery),
    responses((status = OK, description = "text/event-stream: `id:` event id, `event:` type, `data:` Event JSON; comment lines are heartbeats. Resume with Last-Event-ID. The stream ends when the caller loses access or its token expires.", content_type = "text/event-stream", body = kodel_core::api::Event), Errors<(code::InvalidRequest, code::TooManyRequests)>),
    security(("bearer" = []))
)]
pub(crate) async fn org_events(State(state): State<AppState>, mut t: Tenant, headers: HeaderMap, ApiQuery(q): ApiQuery<ResumeQuery>) -> ApiResult<Sse<SseStream>> {
    let resume = last_event_id(&headers, &q)?;
    let slot = state.streams.open(t.user_id(), t.org.id)?;
    let (user, role) = (t.user_id(), t.org.role);
    let visible = visible_projects(t.conn(), user, role).await?;
    let scope = Scope { slug: t.org.slug.clone(), credential: t.credential.clone(), user, task: None, visible };
    t.commit().await?;
    Ok(stream(state, scope, resume, slot).await)
}

#[utoipa::path(
    get, path = "/api/v1/orgs/{org}/tasks/{task}/events", tag = "events",
    summary = "SSE stream of one task's events",
    params(path::Task, ("Last-Event-ID" = Option<String>, Header, description = "Resume after this event id"), ResumeQuery),
    responses((status = OK, description = "text/event-stream: `id:` event id, `event:` type, `data:` Event JSON; comment lines are heartbeats. Resume with Last-Event-ID. The stream ends when the caller loses access or its token expires.", content_type = "text/event-stream", body = kodel_core::api::Event), Errors<(code::InvalidKey, code::TaskNotFound, code::InvalidRequest, code::TooManyRequests)>),
    security(("bearer" = []))
)]
pub(crate) async fn task_events(State(state): State<AppState>, mut t: Tenant, Path((_, task)): Path<(String, String)>, headers: HeaderMap, ApiQuery(q): ApiQuery<ResumeQuery>) -> ApiResult<Sse<SseStream>> {
    let resume = last_event_id(&headers, &q)?;
    let key = TaskKey::parse(&task).map_err(|e| ApiError::new(ErrorCode::InvalidKey, e.0))?;
    let slot = state.streams.open(t.user_id(), t.org.id)?;
    let p = access(&mut t, key.project.as_str(), ErrorCode::TaskNotFound).await?;
    let id: Option<Uuid> = sqlx::query_scalar("SELECT id FROM tasks WHERE project_id = $1 AND number = $2")
        .bind(p.id)
        .bind(key.number)
        .fetch_optional(t.conn())
        .await?;
    let id = id.ok_or_else(|| ApiError::new(ErrorCode::TaskNotFound, format!("{key} not found")))?;
    let (user, role) = (t.user_id(), t.org.role);
    let visible = visible_projects(t.conn(), user, role).await?;
    let scope = Scope { slug: t.org.slug.clone(), credential: t.credential.clone(), user, task: Some((id, p.id)), visible };
    t.commit().await?;
    Ok(stream(state, scope, resume, slot).await)
}

async fn stream(state: AppState, scope: Scope, resume: Option<i64>, slot: StreamSlot) -> Sse<SseStream> {
    let ends_at = ends_at(&scope.credential);
    let follower = state.events.follow(&scope.slug, scope.task.map(|(task, _)| task), resume).await;
    let mut recheck = tokio::time::interval(RECHECK);
    recheck.reset();
    let shutdown = state.hub.on_shutdown();
    let feed = Stream { shutdown, state, scope, follower, recheck, ends_at, _slot: slot, done: false };
    // The body pulls events as the client takes them: no task or queue per connection,
    // and a client that stops reading stops pulling (it then catches up from the
    // database; nobody else waits for it). A dropped connection drops the stream.
    let body = futures::stream::unfold(feed, |mut feed| async move {
        while !feed.done {
            match feed.step().await {
                Ok(Some(ev)) => return Some((Ok(ev), feed)),
                Ok(None) => {}
                Err(err) => {
                    tracing::debug!(error = %err, "event stream ended");
                    feed.done = true;
                }
            }
        }
        None
    });
    Sse::new(Box::pin(body) as SseBody).keep_alive(KeepAlive::new().interval(HEARTBEAT))
}

type SseBody = Pin<Box<dyn futures::Stream<Item = Result<SseEvent, Infallible>> + Send>>;
type SseStream = axum::response::sse::KeepAliveStream<SseBody>;

#[derive(Debug, thiserror::Error)]
enum StreamEnd {
    #[error("access revoked")]
    Revoked,
    #[error("the access token expired")]
    Expired,
    #[error(transparent)]
    Feed(#[from] FollowError),
    #[error(transparent)]
    Db(#[from] sqlx::Error),
}

/// One SSE stream: what the follower passes on, filtered for the caller and framed.
struct Stream {
    /// The server is stopping: streams end so the shutdown does not wait on them.
    shutdown: tokio::sync::watch::Receiver<bool>,
    state: AppState,
    scope: Scope,
    follower: Follower,
    recheck: tokio::time::Interval,
    /// The access token's expiry: the stream ends then.
    ends_at: Option<tokio::time::Instant>,
    /// Counts this stream against its user's and org's bounds while it lives.
    _slot: StreamSlot,
    done: bool,
}

fn sse(ev: &StoredEvent) -> SseEvent {
    SseEvent::default().id(ev.pos.id.to_string()).event(ev.kind.as_str()).data(&*ev.json)
}

impl Stream {
    /// The next frame for the client, if the follower's next item is one it may see.
    async fn step(&mut self) -> Result<Option<SseEvent>, StreamEnd> {
        tokio::select! {
            item = self.follower.next() => Ok(match item? {
                Item::Stored(ev) => self.scope.shows(&ev).then(|| sse(&ev)),
                // Live output has no id: a client that reconnects gets the stored steps.
                Item::Live(ev) => self.scope.shows_task(ev.task_id, ev.project_id).then(|| SseEvent::default().event(ev.kind.as_str()).data(&*ev.json)),
                Item::Resync => Some(SseEvent::default().event("resync").data(r#"{"reason":"unknown Last-Event-ID; reload and follow live"}"#)),
            }),
            _ = self.recheck.tick() => recheck_access(&self.state, &mut self.scope).await.map(|()| None),
            _ = sleep_until_or_never(self.ends_at) => Err(StreamEnd::Expired),
            _ = self.shutdown.changed() => Err(StreamEnd::Feed(FollowError::Closed)),
        }
    }
}

async fn sleep_until_or_never(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

async fn recheck_access(state: &AppState, scope: &mut Scope) -> Result<(), StreamEnd> {
    let mut tx = begin_scoped(&state.pool, &scope.slug).await?;
    // The credential must still be live (logout, revocation, expiry end the stream)
    // and its user still a member.
    let sql = format!(
        "WITH {} SELECT m.role FROM caller c
         JOIN public.org_members m ON m.user_id = c.id JOIN public.orgs o ON o.id = m.org_id WHERE o.slug = $3",
        scope.credential.caller_sql()
    );
    let role: Option<(String,)> = scope.credential.bind(sqlx::query_as(&sql)).bind(scope.slug.as_str()).fetch_optional(&mut *tx).await?;
    let role = role.map(|(r,)| r);
    let role = role.as_deref().and_then(OrgRole::parse).ok_or(StreamEnd::Revoked)?;
    scope.visible = visible_projects(&mut tx, scope.user, role).await?;
    if let (Some((_, project)), Some(visible)) = (scope.task, &scope.visible)
        && !visible.contains(&project)
    {
        return Err(StreamEnd::Revoked);
    }
    tx.commit().await?;
    Ok(())
}
