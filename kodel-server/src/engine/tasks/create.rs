//! Creating a task, the hottest write, with group commit.
//!
//! A creation is validated in its request, then queued. `COMMITTERS` tasks take what
//! is queued, up to `MAX_BATCH` at a time, and create each org's share in one
//! transaction of four statements whatever its size: `BEGIN`; one statement that checks every
//! caller (live session or API token) and their membership of the org, and scopes the
//! transaction to the org's schema; one statement that checks each caller's project
//! role and creates the tasks that pass with their numbers and `task.created` events;
//! `COMMIT`. Nothing waits for a batch to fill: a committer takes what is there when it
//! is free, so a lone creation is committed at once, and under load each commit carries
//! the creations that arrived while the others were busy.
//!
//! A creation a batch did not make is made alone, the way every other write is made
//! (`create_one`, in the request's own transaction), which gives the answer: an error (unknown project, missing role,
//! bad status or assignee, dead credential), or the task. The batch leaves there the
//! creations the engine reacts to (a bound first status, a `task_created` rule), and
//! all of a batch whose transaction failed before `COMMIT`, so nothing is lost and no
//! error is guessed. A failed `COMMIT` may have happened, so its creations are answered
//! with an error instead of being made twice. A batch waits at most `LOCK_TIMEOUT` for
//! a lock, so one org's locked tables hold up the others briefly at most.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use chrono::{DateTime, Utc};
use futures::StreamExt;
use kodel_core::api::{CreateTask, MAX_DESCRIPTION, MAX_NAME, MAX_TITLE, OrgRole, Priority, ProjectRole, Task};
use kodel_core::events::{EventKind, TaskCreated, TaskEvent};
use kodel_core::{ErrorCode, OrgSlug, ProjectKey};
use serde_json::json;
use tokio::sync::{Mutex, mpsc, oneshot};
use uuid::Uuid;

use super::{clean_labels, resolve_assignee};
use crate::AppState;
use crate::auth::extract::Credential;
use crate::db::OrgTx;
use crate::db::scoped::set_search_path;
use crate::engine::{nothing_reacts_to_creation, reacts_to_creation};
use crate::error::{ApiError, ApiResult, check_len, require_text};
use crate::events::record::{first, note, note_unreacted};

/// How many transactions commit creations at the same time. Two carry bigger batches
/// than four and were faster on the 2-core bench (docs/benchmarks.md).
pub const COMMITTERS: usize = 2;
/// The most creations one transaction carries.
const MAX_BATCH: usize = 64;
/// Creations waiting for a committer (beyond this, requests wait to be queued).
const QUEUE: usize = 1024;
/// How long a batch waits for a lock (another transaction's DDL or `LOCK` on the org's
/// tables) before its creations are made alone, each waiting on its own connection, so
/// one org's locked tables do not hold up the committers for long.
const LOCK_TIMEOUT: &str = "1s";
/// How many orgs' shares of one batch are committed at the same time.
const ORGS_AT_ONCE: usize = 4;
/// The longest email address (as registration accepts).
const MAX_EMAIL: usize = 254;

/// A creation, validated, waiting to be committed.
#[derive(Clone)]
pub struct NewTask {
    pub credential: Credential,
    pub project: ProjectKey,
    pub title: String,
    pub description: String,
    pub priority: Priority,
    pub labels: Vec<String>,
    /// An email, trimmed.
    pub assignee: Option<String>,
    /// A status name; the workflow's first status when None.
    pub status: Option<String>,
}

impl NewTask {
    /// Checks a creation request as far as it can be without the database.
    pub fn from_request(credential: Credential, key: &str, req: CreateTask) -> ApiResult<Self> {
        let project = ProjectKey::parse(key).map_err(|e| ApiError::new(ErrorCode::InvalidKey, e.0))?;
        let title = require_text("title", &req.title, MAX_TITLE)?;
        let description = req.description.unwrap_or_default();
        check_len("description", &description, MAX_DESCRIPTION)?;
        let labels = clean_labels(req.labels.unwrap_or_default())?;
        let assignee = req.assignee.map(|a| a.trim().to_owned());
        if let Some(a) = &assignee {
            check_len("assignee", a, MAX_EMAIL)?;
        }
        if let Some(s) = &req.status {
            check_len("status", s, MAX_NAME)?;
        }
        Ok(Self {
            credential,
            project,
            title,
            description,
            priority: req.priority.unwrap_or_default(),
            labels,
            assignee,
            status: req.status,
        })
    }

    /// The `task.created` event, in the status it got.
    fn event(&self, status: &str) -> TaskEvent {
        TaskEvent::TaskCreated(TaskCreated {
            title: self.title.clone(),
            priority: self.priority,
            labels: self.labels.clone(),
            assignee: self.assignee.clone(),
            status: status.to_owned(),
        })
    }

    /// The event's payload before the statement that makes the task puts in its status.
    fn payload(&self) -> serde_json::Value {
        self.event(self.status.as_deref().unwrap_or_default()).payload()
    }

    fn into_task(self, number: i32, status: String, created_by: String, created_at: DateTime<Utc>) -> Task {
        Task {
            key: format!("{}-{number}", self.project),
            project: self.project.to_string(),
            number,
            title: self.title,
            description: self.description,
            status,
            priority: self.priority,
            labels: self.labels,
            assignee: self.assignee.map(|a| a.to_lowercase()),
            version: 1,
            archived: false,
            created_by: Some(created_by),
            created_at,
            updated_at: created_at,
        }
    }
}

/// A task a batch created, and who created it.
pub struct Created {
    pub task: Task,
    pub user: Uuid,
}

/// The creation queue and its committers.
#[derive(Clone)]
pub struct Creates {
    queue: mpsc::Sender<Pending>,
    submitted: Arc<AtomicU64>,
}

struct Pending {
    slug: OrgSlug,
    task: NewTask,
    reply: oneshot::Sender<Answer>,
}

/// What a batch says of one creation.
pub enum Answer {
    Created(Box<Created>),
    /// Not made: make it alone.
    Alone,
    /// The commit failed and may have happened: making it again could make it twice.
    Unknown,
}

/// Why a batch made nothing it can vouch for.
#[derive(Debug)]
pub enum BatchError {
    /// Nothing was committed: each creation can be made alone.
    Before(ApiError),
    /// The commit itself failed: it may or may not have happened.
    AtCommit(ApiError),
}

impl BatchError {
    fn message(&self) -> &str {
        match self {
            Self::Before(e) | Self::AtCommit(e) => &e.message,
        }
    }
}

impl From<sqlx::Error> for BatchError {
    fn from(e: sqlx::Error) -> Self {
        Self::Before(e.into())
    }
}

impl Creates {
    /// The queue, and what `start` gives to the committers.
    pub fn new() -> (Self, CreatesReceiver) {
        let (queue, rx) = mpsc::channel(QUEUE);
        (Self { queue, submitted: Arc::default() }, CreatesReceiver(rx))
    }

    /// Starts the committers (one that panics is started again).
    pub fn start(state: &AppState, rx: CreatesReceiver) {
        let rx = Arc::new(Mutex::new(rx.0));
        for _ in 0..COMMITTERS {
            let (state, rx) = (state.clone(), rx.clone());
            tokio::spawn(async move {
                while let Err(e) = tokio::spawn(committer(state.clone(), rx.clone())).await {
                    tracing::error!(error = %e, "a task committer stopped; starting it again");
                }
            });
        }
    }

    /// How many creations were queued since the server started (counted once queued).
    pub fn submitted(&self) -> u64 {
        self.submitted.load(Ordering::Relaxed)
    }

    /// Queues a creation and waits for what its batch says of it.
    pub async fn submit(&self, slug: &OrgSlug, task: NewTask) -> Answer {
        let (reply, answer) = oneshot::channel();
        if self.queue.send(Pending { slug: slug.clone(), task, reply }).await.is_err() {
            return Answer::Alone;
        }
        self.submitted.fetch_add(1, Ordering::Relaxed);
        answer.await.unwrap_or(Answer::Alone)
    }
}

pub struct CreatesReceiver(mpsc::Receiver<Pending>);

async fn committer(state: AppState, rx: Arc<Mutex<mpsc::Receiver<Pending>>>) {
    loop {
        let mut batch = Vec::new();
        {
            let mut rx = rx.lock().await;
            let Some(first) = rx.recv().await else { return };
            batch.push(first);
            while batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(p) => batch.push(p),
                    Err(_) => break,
                }
            }
        }
        // A request whose client went away is not made (as when a request's own
        // transaction is dropped).
        batch.retain(|p| !p.reply.is_closed());
        // One transaction per org, a few orgs at a time.
        let mut orgs: Vec<(OrgSlug, Vec<Pending>)> = Vec::new();
        for p in batch {
            match orgs.iter_mut().find(|(slug, _)| *slug == p.slug) {
                Some((_, mine)) => mine.push(p),
                None => orgs.push((p.slug.clone(), vec![p])),
            }
        }
        futures::stream::iter(orgs)
            .for_each_concurrent(ORGS_AT_ONCE, |(slug, mine)| commit_share(&state, slug, mine))
            .await;
    }
}

/// Commits one org's share of a batch and answers each of its requests.
async fn commit_share(state: &AppState, slug: OrgSlug, mine: Vec<Pending>) {
    let (tasks, replies): (Vec<NewTask>, Vec<_>) = mine.into_iter().map(|p| (p.task, p.reply)).unzip();
    state.metrics.create_batches.observe(tasks.len() as f64);
    let answers: Vec<Answer> = match create_batch(state, &slug, &tasks).await {
        Ok(made) => made.into_iter().map(|m| m.map_or(Answer::Alone, |c| Answer::Created(Box::new(c)))).collect(),
        Err(e) => {
            tracing::warn!(org = %slug, tasks = tasks.len(), error = %e.message(), "a batch of task creations failed");
            let at_commit = matches!(e, BatchError::AtCommit(_));
            tasks.iter().map(|_| if at_commit { Answer::Unknown } else { Answer::Alone }).collect()
        }
    };
    // One answer per task, in order.
    for (reply, answer) in replies.into_iter().zip(answers) {
        let _ = reply.send(answer);
    }
}

#[derive(sqlx::FromRow)]
struct CallerRow {
    i: i64,
    user_id: Uuid,
    email: String,
    org_id: Uuid,
    role: String,
}

#[derive(sqlx::FromRow)]
struct BatchRow {
    i: i64,
    number: i32,
    status: String,
    created_at: DateTime<Utc>,
}

/// Creates in `slug`'s org, in one transaction, those of `tasks` whose caller may and
/// that the engine does not react to. The answer has one entry per task, in order:
/// None for those it did not create.
pub async fn create_batch(state: &AppState, slug: &OrgSlug, tasks: &[NewTask]) -> Result<Vec<Option<Created>>, BatchError> {
    let mut tx = crate::db::begin(&state.pool).await?;
    let creds: Vec<&Credential> = tasks.iter().map(|t| &t.credential).collect();
    let sql = format!(
        "SELECT callers.i, u.id AS user_id, u.email, o.id AS org_id, m.role,
                {} AS search_path, set_config('lock_timeout', $7, true) AS lock_timeout
         FROM {} JOIN public.users u ON u.id = callers.id
         JOIN public.orgs o ON o.slug = $4 AND o.migration_error IS NULL AND o.schema_version >= $6
         JOIN public.org_members m ON m.org_id = o.id AND m.user_id = u.id",
        set_search_path(5),
        Credential::CALLERS_SQL
    );
    let callers: Vec<CallerRow> = Credential::bind_many(&creds, sqlx::query_as(&sql))
        .bind(slug.as_str())
        .bind(slug.search_path())
        .bind(crate::db::migrate::tenant_version())
        .bind(LOCK_TIMEOUT)
        .fetch_all(&mut *tx)
        .await?;
    let mut answers: Vec<Option<Created>> = tasks.iter().map(|_| None).collect();
    let Some(org_id) = callers.first().map(|c| c.org_id) else {
        return Ok(answers);
    };
    // One entry per caller that passed, as columns.
    let mut idx = Vec::with_capacity(callers.len());
    let (mut ids, mut users, mut admins, mut keys, mut titles, mut descriptions) = (vec![], vec![], vec![], vec![], vec![], vec![]);
    let (mut priorities, mut labels, mut assignees, mut statuses, mut payloads) = (vec![], vec![], vec![], vec![], vec![]);
    for c in &callers {
        let Some(t) = usize::try_from(c.i - 1).ok().and_then(|i| tasks.get(i)) else { continue };
        idx.push(c.i);
        ids.push(Uuid::now_v7());
        users.push(c.user_id);
        admins.push(OrgRole::parse(&c.role).is_some_and(|r| r >= OrgRole::Admin));
        keys.push(t.project.as_str());
        titles.push(t.title.as_str());
        descriptions.push(t.description.as_str());
        priorities.push(t.priority.as_str());
        labels.push(json!(t.labels));
        assignees.push(t.assignee.as_deref());
        statuses.push(t.status.as_deref());
        payloads.push(t.payload());
    }
    let may_create: Vec<&str> = ProjectRole::ALL.iter().filter(|r| **r >= ProjectRole::Developer).map(|r| r.as_str()).collect();
    // The same checks as a creation made alone, per row: the project role, the status,
    // the assignee's membership; and only where neither a binding nor a rule reacts.
    let sql = format!(
        "WITH r AS (
             SELECT * FROM unnest($1::int8[], $2::uuid[], $3::uuid[], $4::bool[], $5::text[], $6::text[], $7::text[],
                                  $8::text[], $9::jsonb[], $10::text[], $11::text[], $12::jsonb[])
                 AS r(i, id, user_id, org_admin, key, title, description, priority, labels, assignee, status, payload)),
         ok AS (
             SELECT r.*, p.id AS project_id, p.workflow_id FROM r JOIN projects p ON p.key = r.key
             LEFT JOIN project_members pm ON pm.project_id = p.id AND pm.user_id = r.user_id
             WHERE r.org_admin OR pm.role = ANY ($13)),
         st AS (
             SELECT DISTINCT ON (ok.i) ok.i, s.id, s.name FROM ok JOIN statuses s ON s.workflow_id = ok.workflow_id
             WHERE ok.status IS NULL OR lower(s.name) = lower(ok.status)
             ORDER BY ok.i, s.position),
         ready AS (
             SELECT ok.*, st.id AS status_id, st.name AS status_name, a.id AS assignee_id
             FROM ok JOIN st ON st.i = ok.i
             LEFT JOIN LATERAL (
                 SELECT u.id FROM public.users u JOIN public.org_members m ON m.user_id = u.id AND m.org_id = $14
                 WHERE lower(u.email) = lower(ok.assignee)) a ON true
             WHERE (ok.assignee IS NULL OR a.id IS NOT NULL)
               AND {nothing_reacts}),
         t AS (
             INSERT INTO tasks (id, project_id, number, title, description, status_id, priority, labels,
                                assignee_id, created_by, event_seq)
             SELECT id, project_id, nextval(('task_number_' || replace(project_id::text, '-', ''))::regclass),
                    title, description, status_id, priority,
                    ARRAY(SELECT l FROM jsonb_array_elements_text(labels) WITH ORDINALITY AS x(l, n) ORDER BY n),
                    assignee_id, user_id, 1
             FROM ready ORDER BY i
             RETURNING id, number, created_at),
         e AS ({events})
         SELECT ready.i, t.number, ready.status_name AS status, t.created_at FROM t JOIN ready ON ready.id = t.id",
        nothing_reacts = nothing_reacts_to_creation("st.id", "ok.project_id"),
        events = first(
            "SELECT t.id, ready.project_id, 1, $15, ready.payload || jsonb_build_object('status', ready.status_name), ready.user_id
             FROM t JOIN ready ON ready.id = t.id ORDER BY ready.i"
        )
    );
    let rows: Vec<BatchRow> = sqlx::query_as(&sql)
    .bind(&idx)
    .bind(&ids)
    .bind(&users)
    .bind(&admins)
    .bind(&keys)
    .bind(&titles)
    .bind(&descriptions)
    .bind(&priorities)
    .bind(&labels)
    .bind(&assignees)
    .bind(&statuses)
    .bind(&payloads)
    .bind(&may_create)
    .bind(org_id)
    .bind(EventKind::TaskCreated.as_str())
    .fetch_all(&mut *tx)
    .await?;
    if rows.is_empty() {
        return Ok(answers);
    }
    let mut db = OrgTx::new(tx, org_id, slug.clone(), None);
    // Only creations nothing reacts to were made here.
    note_unreacted(&mut db);
    state.commit(db).await.map_err(BatchError::AtCommit)?;
    for row in rows {
        let (Some(c), Some(i)) = (callers.iter().find(|c| c.i == row.i), usize::try_from(row.i - 1).ok()) else { continue };
        let Some(task) = tasks.get(i) else { continue };
        let task = task.clone().into_task(row.number, row.status, c.email.clone(), row.created_at);
        answers[i] = Some(Created { task, user: c.user_id });
    }
    Ok(answers)
}

/// A task made alone.
pub struct Made {
    pub id: Uuid,
    pub task: Task,
    /// A binding or a rule reacts to the creation: the task may have changed by the
    /// commit.
    pub reacts: bool,
}

/// Creates one task in the caller's transaction (`db.actor` creates it, `creator` is
/// their email), with every check giving its error.
pub async fn create_one(db: &mut OrgTx, org_admin: bool, creator: &str, new: NewTask) -> ApiResult<Made> {
    let assignee_id = match new.assignee.as_deref() {
        Some(email) => Some(resolve_assignee(db, email).await?),
        None => None,
    };
    let payload = new.payload();
    let user = db.actor;
    let task_id = Uuid::now_v7();
    let may_create: Vec<&str> = ProjectRole::ALL.iter().filter(|r| **r >= ProjectRole::Developer).map(|r| r.as_str()).collect();
    // One statement does it all: the caller's project role, the starting status, the
    // task with its number, and its first event. What did not happen tells which error
    // to give.
    let sql = format!(
        "WITH acc AS (
             SELECT p.id, p.key, p.workflow_id, pm.role FROM projects p
             LEFT JOIN project_members pm ON pm.project_id = p.id AND pm.user_id = $8
             WHERE p.key = $2),
         ok AS (SELECT * FROM acc WHERE $11 OR role = ANY ($12)),
         st AS (
             SELECT s.id, s.name FROM statuses s JOIN ok ON s.workflow_id = ok.workflow_id
             WHERE $9::text IS NULL OR lower(s.name) = lower($9)
             ORDER BY s.position LIMIT 1),
         t AS (
             INSERT INTO tasks (id, project_id, number, title, description, status_id, priority, labels,
                                assignee_id, created_by, event_seq)
             SELECT $1, ok.id, nextval(('task_number_' || replace(ok.id::text, '-', ''))::regclass),
                    $3, $4, st.id, $5, $6, $7, $8, 1
             FROM ok, st
             RETURNING id, project_id, number, created_at),
         e AS ({events})
         SELECT EXISTS (SELECT 1 FROM acc WHERE $11 OR role IS NOT NULL) AS found, EXISTS (SELECT 1 FROM ok) AS allowed,
                t.number, (SELECT name FROM st) AS status, t.created_at,
                (SELECT {reacts} FROM st, ok) AS engine
         FROM (SELECT 1) AS one LEFT JOIN t ON true",
        reacts = reacts_to_creation("st.id", "ok.id"),
        events = first("SELECT id, project_id, 1, $13, $10 || jsonb_build_object('status', (SELECT name FROM st)), $8 FROM t")
    );
    let row: CreatedRow = sqlx::query_as(&sql)
        .bind(task_id)
        .bind(new.project.as_str())
        .bind(&new.title)
        .bind(&new.description)
        .bind(new.priority.as_str())
        .bind(&new.labels)
        .bind(assignee_id)
        .bind(user)
        .bind(new.status.as_deref())
        .bind(&payload)
        .bind(org_admin)
        .bind(&may_create)
        .bind(EventKind::TaskCreated.as_str())
        .fetch_one(db.conn())
        .await?;
    let (Some(number), Some(status), Some(created_at)) = (row.number, row.status, row.created_at) else {
        let key = &new.project;
        return Err(if !row.found {
            ApiError::new(ErrorCode::ProjectNotFound, format!("{key} not found"))
        } else if !row.allowed {
            ApiError::forbidden("creating tasks")
        } else {
            ApiError::invalid(format!("status {:?} is not in this project's workflow", new.status.unwrap_or_default()))
        });
    };
    // The statement also said whether the engine has anything to do with the new task
    // (a bound status, a task_created rule): only then does it see the event.
    let reacts = row.engine == Some(true);
    if reacts {
        note(db, task_id, 1, new.event(&status));
    } else {
        note_unreacted(db);
    }
    Ok(Made { id: task_id, task: new.into_task(number, status, creator.to_owned(), created_at), reacts })
}

#[derive(sqlx::FromRow)]
struct CreatedRow {
    found: bool,
    allowed: bool,
    number: Option<i32>,
    status: Option<String>,
    created_at: Option<DateTime<Utc>>,
    /// Whether a binding or a rule can react to the creation.
    engine: Option<bool>,
}
