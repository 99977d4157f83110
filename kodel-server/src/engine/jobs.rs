//! AI jobs: the built-in templates, jobs started by bindings, rules and people, and how
//! a job ends (succeeded with artifacts, failed, cancelled). Every step is an event on
//! the job's task.

use kodel_core::ErrorCode;
use kodel_core::jobs::{ArtifactKind, BUILTIN_TEMPLATES, MAX_ARTIFACT_CONTENT, NewArtifact};
use serde_json::json;
use sqlx::PgConnection;
use uuid::Uuid;

use crate::error::{ApiError, ApiResult};
use crate::events;
use crate::engine::EventContext;
use crate::tenant::{OrgTx, Recorded};

/// Copies the built-in job templates into the org, once.
pub async fn ensure_builtin_templates(conn: &mut PgConnection) -> ApiResult<()> {
    let have: i64 = sqlx::query_scalar("SELECT count(*) FROM ai_job_templates WHERE builtin IS NOT NULL").fetch_one(&mut *conn).await?;
    if have as usize >= BUILTIN_TEMPLATES.len() {
        return Ok(());
    }
    for t in &BUILTIN_TEMPLATES {
        let tools: Vec<String> = t.allowed_tools.iter().map(|s| s.to_string()).collect();
        // A template of the org's own may already use the name: the built-in then waits.
        sqlx::query(
            "INSERT INTO ai_job_templates (id, name, kind, prompt, allowed_tools, max_steps, time_limit_secs, builtin)
             SELECT $1, $2, $3, $4, $5, $6, $7, $3
             WHERE NOT EXISTS (SELECT 1 FROM ai_job_templates WHERE name = $2 OR builtin = $3)",
        )
        .bind(Uuid::now_v7())
        .bind(t.name)
        .bind(t.kind.as_str())
        .bind(t.prompt)
        .bind(&tools)
        .bind(t.max_steps)
        .bind(t.time_limit_secs)
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

/// A job template by name or id.
pub async fn template_id_by_name(conn: &mut PgConnection, name: &str) -> ApiResult<Option<Uuid>> {
    let id = Uuid::parse_str(name.trim()).ok();
    Ok(sqlx::query_scalar("SELECT id FROM ai_job_templates WHERE name = $1 OR id = $2")
        .bind(name.trim())
        .bind(id)
        .fetch_optional(conn)
        .await?)
}

/// Queues a job for a task. `origin_seq` is the task event the job answers to: the
/// same origin never makes a second job. Returns the job id if one was made.
pub async fn start(db: &mut OrgTx, task: Uuid, template: Uuid, status: Option<Uuid>, origin_seq: i32) -> ApiResult<Option<Uuid>> {
    let id = Uuid::now_v7();
    let actor = db.actor;
    // Urgent tasks' jobs are claimed first.
    let made: Option<(String, String)> = sqlx::query_as(
        "INSERT INTO ai_jobs (id, task_id, template_id, kind, status_id, origin_seq, priority, max_attempts, created_by, labels)
         SELECT $1, t.id, jt.id, jt.kind, $4, $5,
                CASE t.priority WHEN 'urgent' THEN 4 WHEN 'high' THEN 3 WHEN 'medium' THEN 2 WHEN 'low' THEN 1 ELSE 0 END,
                $6, $7,
                -- The agent labels the project's instance template asks for.
                coalesce((SELECT i.labels FROM projects p JOIN instance_templates i ON i.id = p.instance_template_id
                          WHERE p.id = t.project_id), '{}')
         FROM tasks t, ai_job_templates jt WHERE t.id = $2 AND jt.id = $3
         ON CONFLICT (task_id, origin_seq) DO NOTHING
         RETURNING kind, (SELECT name FROM ai_job_templates WHERE id = $3)",
    )
    .bind(id)
    .bind(task)
    .bind(template)
    .bind(status)
    .bind(origin_seq)
    .bind(kodel_core::jobs::DEFAULT_MAX_ATTEMPTS)
    .bind(actor)
    .fetch_optional(db.conn())
    .await?;
    let Some((kind, template_name)) = made else { return Ok(None) };
    events::record(db, task, "job.created", json!({ "job_id": id, "kind": kind, "template": template_name })).await?;
    Ok(Some(id))
}

/// Bindings, after a task entered a status: the jobs `context` cancelled (made for a
/// status the task has left) get their events, and the job of the status the task
/// entered is queued, once per entry.
pub async fn apply_binding(db: &mut OrgTx, ev: &Recorded, ctx: &EventContext) -> ApiResult<()> {
    if let Some(cancelled) = &ctx.cancelled {
        let jobs: Vec<(Uuid, String)> = serde_json::from_str(cancelled).map_err(ApiError::internal)?;
        for (job, kind) in jobs {
            events::record(db, ev.task_id, "job.cancelled", json!({ "job_id": job, "kind": kind, "reason": "task left the bound status" })).await?;
        }
    }
    if let (Some(template), Some(status)) = (ctx.bound_template, ctx.bound_status) {
        start(db, ev.task_id, template, Some(status), ev.seq).await?;
    }
    Ok(())
}

/// A job locked for a change, with its task.
#[derive(sqlx::FromRow)]
pub struct JobRef {
    pub id: Uuid,
    pub task_id: Uuid,
    pub kind: String,
    pub state: String,
    pub lease_agent: Option<Uuid>,
    pub attempts: i32,
    pub max_attempts: i32,
}

pub async fn lock(db: &mut OrgTx, job: Uuid) -> ApiResult<JobRef> {
    sqlx::query_as("SELECT id, task_id, kind, state, lease_agent, attempts, max_attempts FROM ai_jobs WHERE id = $1 FOR UPDATE")
        .bind(job)
        .fetch_optional(db.conn())
        .await?
        .ok_or_else(|| ApiError::new(ErrorCode::JobNotFound, format!("job {job} not found")))
}

/// Cancels a pending or running job (its agent is told by the hub when it sees the event).
pub async fn cancel(db: &mut OrgTx, job: Uuid, reason: &str) -> ApiResult<()> {
    let j = lock(db, job).await?;
    if j.state != "pending" && j.state != "running" {
        return Err(ApiError::new(ErrorCode::JobFinished, format!("job {job} already {}", j.state)));
    }
    sqlx::query(
        "UPDATE ai_jobs SET state = 'cancelled', finished_at = now(), lease_agent = NULL, lease_expires_at = NULL, error = $2 WHERE id = $1",
    )
    .bind(job)
    .bind(reason)
    .execute(db.conn())
    .await?;
    events::record(db, j.task_id, "job.cancelled", json!({ "job_id": job, "kind": j.kind, "reason": reason })).await?;
    Ok(())
}

/// The agent holding the job's lease, or an error saying why the job is not its own.
fn held_by(j: &JobRef, agent: Uuid) -> ApiResult<()> {
    if j.state == "running" && j.lease_agent == Some(agent) {
        Ok(())
    } else {
        Err(ApiError::new(ErrorCode::LeaseLost, format!("job {} is not running under this agent (it is {})", j.id, j.state)))
    }
}

const MAX_ARTIFACT_DATA: usize = 1_000_000;

/// A branch later jobs of the task may check out and push to: under `kodel/`, and a
/// name git accepts (so an agent can never steer them onto `main`).
fn task_branch_ref(r: &str) -> bool {
    let Some(rest) = r.strip_prefix("kodel/") else { return false };
    !rest.is_empty()
        && r.len() <= 200
        && !r.contains("..")
        && !r.contains("@{")
        && !r.ends_with(['/', '.'])
        && !r.ends_with(".lock")
        && !r.contains("//")
        && r.split('/').all(|part| !part.starts_with('.'))
        && r.chars().all(|c| c.is_ascii_graphic() && !"~^:?*[\\".contains(c))
}

/// A job done: its artifacts stored, `job.succeeded` recorded. `usage`, when given,
/// replaces what the LLM proxy metered.
pub async fn complete(db: &mut OrgTx, job: Uuid, agent: Uuid, summary: &str, artifacts: &[NewArtifact], usage: Option<serde_json::Value>) -> ApiResult<Vec<Uuid>> {
    let j = lock(db, job).await?;
    held_by(&j, agent)?;
    if artifacts.len() > 20 {
        return Err(ApiError::invalid("at most 20 artifacts per job"));
    }
    let mut ids = Vec::new();
    for a in artifacts {
        if a.content.is_none() && a.reference.is_none() {
            return Err(ApiError::invalid("an artifact needs content or a reference"));
        }
        if a.content.as_ref().is_some_and(|c| c.len() > MAX_ARTIFACT_CONTENT) || a.reference.as_ref().is_some_and(|r| r.len() > 2000) {
            return Err(ApiError::invalid("artifact content is at most 5 MB and a reference 2000 bytes"));
        }
        if a.kind == ArtifactKind::Branch && !a.reference.as_deref().is_some_and(task_branch_ref) {
            return Err(ApiError::invalid("a branch artifact's reference must be a branch under kodel/ (the task's branch)"));
        }
        if a.data.as_ref().is_some_and(|d| d.to_string().len() > MAX_ARTIFACT_DATA) {
            return Err(ApiError::invalid("artifact data is at most 1 MB of JSON"));
        }
        let id = Uuid::now_v7();
        sqlx::query("INSERT INTO artifacts (id, job_id, task_id, kind, title, content, reference, data) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)")
            .bind(id)
            .bind(job)
            .bind(j.task_id)
            .bind(a.kind.as_str())
            .bind(a.title.as_deref().unwrap_or(default_title(a.kind)))
            .bind(&a.content)
            .bind(&a.reference)
            .bind(&a.data)
            .execute(db.conn())
            .await?;
        ids.push(id);
    }
    sqlx::query(
        "UPDATE ai_jobs SET state = 'succeeded', finished_at = now(), summary = $2, usage = coalesce($3, usage), lease_expires_at = NULL WHERE id = $1",
    )
    .bind(job)
    .bind(summary)
    .bind(&usage)
    .execute(db.conn())
    .await?;
    events::record(db, j.task_id, "job.succeeded", json!({ "job_id": job, "kind": j.kind, "summary": summary, "artifacts": ids })).await?;
    Ok(ids)
}

fn default_title(kind: ArtifactKind) -> &'static str {
    match kind {
        ArtifactKind::Patch => "Patch",
        ArtifactKind::Branch => "Branch",
        ArtifactKind::Review => "Review",
        ArtifactKind::TestReport => "Test report",
        ArtifactKind::PullRequest => "Pull request",
        ArtifactKind::Text => "Note",
    }
}

/// A job that went wrong. A retryable error with attempts left queues it again.
pub async fn fail(db: &mut OrgTx, job: Uuid, agent: Uuid, error: &str, retryable: bool) -> ApiResult<()> {
    let j = lock(db, job).await?;
    held_by(&j, agent)?;
    let error: String = error.chars().take(10_000).collect();
    if retryable && j.attempts < j.max_attempts {
        sqlx::query("UPDATE ai_jobs SET state = 'pending', lease_agent = NULL, lease_expires_at = NULL, error = $2 WHERE id = $1")
            .bind(job)
            .bind(&error)
            .execute(db.conn())
            .await?;
        events::record(db, j.task_id, "job.requeued", json!({ "job_id": job, "kind": j.kind, "error": error, "attempts": j.attempts })).await?;
    } else {
        sqlx::query("UPDATE ai_jobs SET state = 'failed', finished_at = now(), lease_expires_at = NULL, error = $2 WHERE id = $1")
            .bind(job)
            .bind(&error)
            .execute(db.conn())
            .await?;
        events::record(db, j.task_id, "job.failed", json!({ "job_id": job, "kind": j.kind, "error": error, "attempts": j.attempts })).await?;
    }
    Ok(())
}

/// Starts a job now because a person or a rule asked; its origin is its own
/// `job.created` event (the task's next event seq, taken under the task's lock).
pub async fn start_now(db: &mut OrgTx, task: Uuid, template: Uuid) -> ApiResult<Uuid> {
    let next: i32 = sqlx::query_scalar("SELECT event_seq + 1 FROM tasks WHERE id = $1 FOR UPDATE").bind(task).fetch_one(db.conn()).await?;
    start(db, task, template, None, next).await?.ok_or_else(|| ApiError::internal("job origin taken twice"))
}

#[cfg(test)]
mod tests {
    use super::task_branch_ref;

    #[test]
    fn branch_artifacts_name_task_branches_only() {
        assert!(task_branch_ref("kodel/KOD-1-dark-mode"));
        for bad in ["main", "kodel/", "refs/heads/main", "kodel/../main", "kodel/a b", "kodel/x.lock", "kodel/.hidden", "kodel/a~1", "kodel/x@{1}"] {
            assert!(!task_branch_ref(bad), "{bad}");
        }
    }
}
