//! Tasks as the engine changes them: created (one at a time or in group commits, see
//! `create`), edited, commented on. Every change writes its event in the same
//! transaction; moves are `engine::workflow::move_task`.

pub mod create;

use chrono::{DateTime, Utc};
use kodel_core::api::{MAX_COMMENT, MAX_DESCRIPTION, MAX_LABEL, MAX_LABELS, MAX_TITLE, Priority, Task, UpdateTask};
use kodel_core::events::{Change, CommentAdded, TaskEvent, TaskUpdated};
use serde_json::{Value, json};
use uuid::Uuid;

pub use create::{COMMITTERS, Created, Creates, CreatesReceiver, NewTask, create_batch};

use crate::db::OrgTx;
use crate::error::{ApiError, ApiResult, check_len, require_text};
use crate::events;

#[derive(sqlx::FromRow)]
pub struct TaskRow {
    pub id: Uuid,
    pub project: String,
    pub number: i32,
    title: String,
    description: String,
    status: String,
    priority: String,
    labels: Vec<String>,
    assignee: Option<String>,
    pub version: i32,
    archived: bool,
    created_by: Option<String>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

impl TaskRow {
    pub fn into_api(self) -> Task {
        Task {
            key: format!("{}-{}", self.project, self.number),
            project: self.project,
            number: self.number,
            title: self.title,
            description: self.description,
            status: self.status,
            priority: Priority::parse(&self.priority).unwrap_or_default(),
            labels: self.labels,
            assignee: self.assignee,
            version: self.version,
            archived: self.archived,
            created_by: self.created_by,
            created_at: self.created_at,
            updated_at: self.updated_at,
        }
    }

    pub fn key(&self) -> String {
        format!("{}-{}", self.project, self.number)
    }
}

/// Tasks as the API shows them; add a `WHERE`.
pub const TASK_SELECT: &str = "SELECT t.id, p.key AS project, t.number, t.title, t.description, s.name AS status,
        t.priority, t.labels, a.email AS assignee, t.version, t.archived_at IS NOT NULL AS archived,
        c.email AS created_by, t.created_at, t.updated_at
     FROM tasks t
     JOIN projects p ON p.id = t.project_id
     JOIN statuses s ON s.id = t.status_id
     LEFT JOIN public.users a ON a.id = t.assignee_id
     LEFT JOIN public.users c ON c.id = t.created_by";

/// A task as it stands now in this transaction.
pub async fn read(db: &mut OrgTx, id: Uuid) -> ApiResult<Task> {
    let row = sqlx::query_as::<_, TaskRow>(&format!("{TASK_SELECT} WHERE t.id = $1")).bind(id).fetch_one(db.conn()).await?;
    Ok(row.into_api())
}

/// Labels as stored: each trimmed, non-empty, without commas, no duplicates.
pub fn clean_labels(labels: Vec<String>) -> ApiResult<Vec<String>> {
    if labels.len() > MAX_LABELS {
        return Err(ApiError::invalid(format!("at most {MAX_LABELS} labels")));
    }
    let mut out: Vec<String> = Vec::with_capacity(labels.len());
    for l in labels {
        let l = require_text("label", &l, MAX_LABEL)?;
        if l.contains(',') {
            return Err(ApiError::invalid(format!("label {l:?} must not contain a comma")));
        }
        if !out.contains(&l) {
            out.push(l);
        }
    }
    Ok(out)
}

/// An assignee given by email must be a member of the org.
pub async fn resolve_assignee(db: &mut OrgTx, email: &str) -> ApiResult<Uuid> {
    db.member_by_email(email).await?.ok_or_else(|| ApiError::invalid(format!("assignee {email:?} is not a member of this org")))
}

/// Edits a task (locked by the caller, its version checked): writes the fields that
/// change and records `task.updated` (or `task.archived` / `task.unarchived` when that
/// is the only change). Returns whether anything changed.
pub async fn update(db: &mut OrgTx, row: &TaskRow, req: UpdateTask) -> ApiResult<bool> {
    let mut changes = std::collections::BTreeMap::new();
    let mut change = |field: &str, from: Value, to: Value| {
        if from != to {
            changes.insert(field.to_owned(), Change { from, to });
        }
    };
    let title = req.title.as_deref().map(|s| require_text("title", s, MAX_TITLE)).transpose()?;
    if let Some(v) = &title {
        change("title", json!(row.title), json!(v));
    }
    if let Some(d) = &req.description {
        check_len("description", d, MAX_DESCRIPTION)?;
        change("description", json!(row.description), json!(d));
    }
    if let Some(pr) = req.priority {
        change("priority", json!(row.priority), json!(pr));
    }
    let labels = req.labels.map(clean_labels).transpose()?;
    if let Some(l) = &labels {
        change("labels", json!(row.labels), json!(l));
    }
    let assignee_id = match &req.assignee {
        Some(Some(email)) => {
            change("assignee", json!(row.assignee), json!(email.trim().to_lowercase()));
            Some(Some(resolve_assignee(db, email).await?))
        }
        Some(None) => {
            change("assignee", json!(row.assignee), Value::Null);
            Some(None)
        }
        None => None,
    };
    if let Some(a) = req.archived {
        change("archived", json!(row.archived), json!(a));
    }
    if changes.is_empty() {
        return Ok(false);
    }
    sqlx::query(
        "UPDATE tasks SET title = coalesce($2, title), description = coalesce($3, description),
             priority = coalesce($4, priority), labels = coalesce($5, labels),
             assignee_id = CASE WHEN $6 THEN $7 ELSE assignee_id END,
             archived_at = CASE WHEN $8::bool IS NULL THEN archived_at WHEN $8 THEN coalesce(archived_at, now()) ELSE NULL END,
             version = version + 1, updated_at = now()
         WHERE id = $1",
    )
    .bind(row.id)
    .bind(title)
    .bind(req.description)
    .bind(req.priority.map(Priority::as_str))
    .bind(labels)
    .bind(assignee_id.is_some())
    .bind(assignee_id.flatten())
    .bind(req.archived)
    .execute(db.conn())
    .await?;
    let only_archived = changes.len() == 1 && changes.contains_key("archived");
    let updated = TaskUpdated { changes, rule_id: None };
    let event = match req.archived {
        Some(true) if only_archived => TaskEvent::TaskArchived(updated),
        Some(false) if only_archived => TaskEvent::TaskUnarchived(updated),
        _ => TaskEvent::TaskUpdated(updated),
    };
    events::record(db, row.id, event).await?;
    Ok(true)
}

/// Adds a person's comment to a task (locked by the caller). Returns the comment's id,
/// its body as stored and when it was made.
pub async fn comment(db: &mut OrgTx, task: Uuid, body: &str) -> ApiResult<(Uuid, String, DateTime<Utc>)> {
    let body = body.trim().to_owned();
    if body.is_empty() {
        return Err(ApiError::invalid("body must not be empty"));
    }
    check_len("body", &body, MAX_COMMENT)?;
    let id = Uuid::now_v7();
    let created_at: DateTime<Utc> =
        sqlx::query_scalar("INSERT INTO comments (id, task_id, author_id, body) VALUES ($1, $2, $3, $4) RETURNING created_at")
            .bind(id)
            .bind(task)
            .bind(db.actor)
            .bind(&body)
            .fetch_one(db.conn())
            .await?;
    events::record(db, task, TaskEvent::CommentAdded(CommentAdded { comment_id: id, body: body.clone(), rule_id: None })).await?;
    Ok((id, body, created_at))
}
