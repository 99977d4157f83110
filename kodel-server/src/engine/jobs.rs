//! AI jobs, and the one writer of `ai_jobs` and `job_steps`: jobs started by bindings,
//! rules and people; claimed by agents under a lease (claim, renew, resume, release,
//! expire); their steps; and how they end (complete with artifacts, fail, cancel).
//! Each change that matters to people is an event on the job's task.

use std::time::Duration;

use kodel_core::events::{EventKind, JobCancelled, JobCreated, JobFailed, JobPaused, JobResumed, JobStep, JobSucceeded, TaskEvent};
use kodel_core::jobs::{ArtifactKind, BUILTIN_TEMPLATES, JobKind, JobState, MAX_ARTIFACT_CONTENT, NewArtifact};
use kodel_core::llm::Usage;
use kodel_core::protocol::Step;
use kodel_core::{ErrorCode, OrgSlug};
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use crate::db::OrgTx;
use crate::db::scoped::Recorded;
use crate::engine::EventContext;
use crate::error::{ApiError, ApiResult};
use crate::events;

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
                -- The agent labels the project's instance template asks for
                -- (InstanceTemplate::required_labels): its own, and Kodel's for a container
                -- and docker-in-docker.
                coalesce((SELECT i.labels
                                 || CASE WHEN i.base_image IS NOT NULL THEN ARRAY[$8] ELSE '{}' END
                                 || CASE WHEN i.dind THEN ARRAY[$9] ELSE '{}' END
                          FROM projects p JOIN instance_templates i ON i.id = p.instance_template_id
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
    .bind(kodel_core::infra::CONTAINER_LABEL)
    .bind(kodel_core::infra::DIND_LABEL)
    .fetch_optional(db.conn())
    .await?;
    let Some((kind, template)) = made else { return Ok(None) };
    let kind = JobKind::try_from(kind).map_err(ApiError::internal)?;
    events::record(db, task, TaskEvent::JobCreated(JobCreated { job_id: id, kind, template })).await?;
    Ok(Some(id))
}

/// SQL for the engine's statement per event: when `$7` (the event entered a status),
/// cancels the task `$2`'s pending, running and paused jobs made for a status it has left.
/// Returns their `id, kind`.
pub const CANCEL_LEFT_BEHIND: &str = "
    UPDATE ai_jobs j SET state = 'cancelled', finished_at = now(), lease_agent = NULL, lease_expires_at = NULL,
           error = 'the task left the status this job was started for'
    FROM tasks t WHERE $7 AND j.task_id = t.id AND t.id = $2 AND j.state IN ('pending', 'running', 'paused')
      AND j.status_id IS NOT NULL AND j.status_id <> t.status_id
    RETURNING j.id, j.kind";

/// Bindings, after a task entered a status: the jobs `CANCEL_LEFT_BEHIND` cancelled
/// (made for a status the task has left) get their events, and the job of the status
/// the task entered is queued, once per entry.
pub async fn apply_binding(db: &mut OrgTx, ev: &Recorded, ctx: &EventContext) -> ApiResult<()> {
    if let Some(cancelled) = &ctx.cancelled {
        let jobs: Vec<(Uuid, JobKind)> = serde_json::from_str(cancelled).map_err(ApiError::internal)?;
        for (job_id, kind) in jobs {
            let reason = "task left the bound status".to_owned();
            events::record(db, ev.task_id, TaskEvent::JobCancelled(JobCancelled { job_id, kind, reason })).await?;
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
    #[sqlx(try_from = "String")]
    pub kind: JobKind,
    #[sqlx(try_from = "String")]
    pub state: JobState,
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
    if j.state.is_finished() {
        return Err(ApiError::new(ErrorCode::JobFinished, format!("job {job} already {}", j.state)));
    }
    sqlx::query(
        "UPDATE ai_jobs SET state = 'cancelled', finished_at = now(), lease_agent = NULL, lease_expires_at = NULL, error = $2 WHERE id = $1",
    )
    .bind(job)
    .bind(reason)
    .execute(db.conn())
    .await?;
    let cancelled = JobCancelled { job_id: job, kind: j.kind, reason: reason.to_owned() };
    events::record(db, j.task_id, TaskEvent::JobCancelled(cancelled)).await?;
    Ok(())
}

/// The agent holding the job's lease, or an error saying why the job is not its own.
fn held_by(j: &JobRef, agent: Uuid) -> ApiResult<()> {
    if j.state == JobState::Running && j.lease_agent == Some(agent) {
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
    let succeeded = JobSucceeded { job_id: job, kind: j.kind, summary: summary.to_owned(), artifacts: ids.clone() };
    events::record(db, j.task_id, TaskEvent::JobSucceeded(succeeded)).await?;
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
        let requeued = JobFailed { job_id: job, kind: j.kind, error, attempts: Some(j.attempts), agent: None };
        events::record(db, j.task_id, TaskEvent::JobRequeued(requeued)).await?;
    } else {
        sqlx::query("UPDATE ai_jobs SET state = 'failed', finished_at = now(), lease_expires_at = NULL, error = $2 WHERE id = $1")
            .bind(job)
            .bind(&error)
            .execute(db.conn())
            .await?;
        let failed = JobFailed { job_id: job, kind: j.kind, error, attempts: Some(j.attempts), agent: None };
        events::record(db, j.task_id, TaskEvent::JobFailed(failed)).await?;
    }
    Ok(())
}

/// Starts a job now because a person or a rule asked; its origin is its own
/// `job.created` event (the task's next event seq, taken under the task's lock).
pub async fn start_now(db: &mut OrgTx, task: Uuid, template: Uuid) -> ApiResult<Uuid> {
    let next: i32 = sqlx::query_scalar("SELECT event_seq + 1 FROM tasks WHERE id = $1 FOR UPDATE").bind(task).fetch_one(db.conn()).await?;
    start(db, task, template, None, next).await?.ok_or_else(|| ApiError::internal("job origin taken twice"))
}

/// A job handed to an agent.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Claimed {
    pub id: Uuid,
    pub task_id: Uuid,
    #[sqlx(try_from = "String")]
    pub kind: JobKind,
    pub template_id: Uuid,
    pub attempts: i32,
    pub priority: i16,
}

/// Claims the next pending job of the org for `agent`, leased for `lease`: pending jobs
/// are taken with `FOR UPDATE SKIP LOCKED` (claimers never wait on each other and no
/// job is claimed twice), highest priority first, and only those whose labels the
/// agent has.
///
/// The queue's hot path, so it is one statement on its own (no BEGIN, no COMMIT, no
/// search_path round trip): it names the org's schema itself (from the validated slug),
/// claims the job, writes its `job.started` event (`events::record::append`) and lets
/// the commit skip waiting for the disk: a claim lost in a crash only leaves its job
/// pending again, which leases handle anyway. `job.started` fires no rule or binding,
/// so there is nothing for the engine to react to; the caller wakes the org's event
/// streams. Measured 4x the throughput of the same work as a scoped transaction
/// (docs/benchmarks.md).
pub async fn claim(pool: &PgPool, slug: &OrgSlug, agent: Uuid, labels: &[String], lease: Duration) -> ApiResult<Option<Claimed>> {
    let s = slug.quoted_schema();
    let events::record::Append { cte, insert } = events::record::append(&format!("{s}."));
    let started = EventKind::JobStarted.as_str();
    let sql = format!(
        "WITH relaxed AS (SELECT set_config('synchronous_commit', 'off', true)),
         next AS (
             SELECT id FROM {s}.ai_jobs WHERE state = 'pending' AND labels <@ $3::text[]
             ORDER BY priority DESC, id LIMIT 1 FOR UPDATE SKIP LOCKED),
         j AS (
             UPDATE {s}.ai_jobs j SET state = 'running', attempts = attempts + 1, lease_agent = $1,
                    lease_expires_at = now() + make_interval(secs => $2), started_at = coalesce(started_at, now()), error = NULL
             FROM next, relaxed WHERE j.id = next.id
             RETURNING j.id, j.task_id, j.kind, j.template_id, j.attempts, j.priority, j.state, j.lease_agent, j.started_at, j.finished_at),
         ev(task_id, type, payload, actor_id) AS (
             SELECT j.task_id, '{started}', jsonb_build_object('job_id', j.id, 'kind', j.kind, 'agent', $1, 'attempt', j.attempts), NULL::uuid
             FROM j),
         {cte},
         e AS ({insert} RETURNING seq),
         org AS (SELECT id FROM public.orgs WHERE slug = $4),
         o AS (INSERT INTO public.analytics_outbox (kind, org_id, payload)
               SELECT 'job_event', org.id, {payload} FROM j JOIN {s}.tasks t ON t.id = j.task_id, org)
         SELECT j.id, j.task_id, j.kind, j.template_id, j.attempts, j.priority FROM j, e",
        payload = crate::analytics::outbox::job_event_payload(&format!("{s}."), "org.id", "$4::text", &format!("'{started}'"))
    );
    Ok(sqlx::query_as(&sql).bind(agent).bind(lease.as_secs_f64()).bind(labels).bind(slug.as_str()).fetch_optional(pool).await?)
}

/// Extends the lease of a job the agent still holds; false if it holds it no longer
/// (cancelled, re-queued, finished). The one lease renewal: heartbeats and a
/// reconnecting agent's resume both go through it.
pub async fn renew(db: &mut OrgTx, job: Uuid, agent: Uuid, lease: Duration) -> ApiResult<bool> {
    let done = sqlx::query(
        "UPDATE ai_jobs SET lease_expires_at = now() + make_interval(secs => $3)
         WHERE id = $1 AND lease_agent = $2 AND state = 'running'",
    )
    .bind(job)
    .bind(agent)
    .bind(lease.as_secs_f64())
    .execute(db.conn())
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Whether the agent still holds the job (it was not cancelled or re-queued since).
pub async fn held(db: &mut OrgTx, job: Uuid, agent: Uuid) -> ApiResult<bool> {
    Ok(sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM ai_jobs WHERE id = $1 AND lease_agent = $2 AND state = 'running')")
        .bind(job)
        .bind(agent)
        .fetch_one(db.conn())
        .await?)
}

/// Stops a running job because a budget is spent: `paused`, its lease and the attempt
/// given back, its steps kept (the hub tells its agent to stop when it sees the event).
/// False if the agent no longer held it.
pub async fn pause(db: &mut OrgTx, job: Uuid, agent: Uuid, reason: &str) -> ApiResult<bool> {
    let paused: Option<(Uuid, String)> = sqlx::query_as(
        "UPDATE ai_jobs SET state = 'paused', attempts = greatest(attempts - 1, 0), lease_agent = NULL, lease_expires_at = NULL, error = $3
         WHERE id = $1 AND lease_agent = $2 AND state = 'running' RETURNING task_id, kind",
    )
    .bind(job)
    .bind(agent)
    .bind(reason)
    .fetch_optional(db.conn())
    .await?;
    let Some((task, kind)) = paused else { return Ok(false) };
    let kind = JobKind::try_from(kind).map_err(ApiError::internal)?;
    events::record(db, task, TaskEvent::JobPaused(JobPaused { job_id: job, kind, reason: reason.to_owned() })).await?;
    Ok(true)
}

/// Queues paused jobs again that no budget holds back any more: `job` alone, or (None)
/// every paused job of the task, or of the project, or of the org, as the filters say.
/// Returns how many.
pub async fn resume_paused(db: &mut OrgTx, job: Option<Uuid>, project: Option<Uuid>, task: Option<Uuid>) -> ApiResult<usize> {
    let paused: Vec<(Uuid, Uuid)> = sqlx::query_as(
        "SELECT j.id, j.task_id FROM ai_jobs j JOIN tasks t ON t.id = j.task_id
         WHERE j.state = 'paused' AND ($1::uuid IS NULL OR j.id = $1) AND ($2::uuid IS NULL OR t.project_id = $2)
           AND ($3::uuid IS NULL OR j.task_id = $3)
         ORDER BY j.id FOR UPDATE OF j",
    )
    .bind(job)
    .bind(project)
    .bind(task)
    .fetch_all(db.conn())
    .await?;
    let mut resumed = 0;
    for (id, task) in paused {
        if crate::analytics::budgets::exceeded(db.conn(), "", Some(task)).await?.is_some() {
            continue;
        }
        let kind: String = sqlx::query_scalar("UPDATE ai_jobs SET state = 'pending', error = NULL WHERE id = $1 RETURNING kind")
            .bind(id)
            .fetch_one(db.conn())
            .await?;
        let kind = JobKind::try_from(kind).map_err(ApiError::internal)?;
        events::record(db, task, TaskEvent::JobResumed(JobResumed { job_id: id, kind })).await?;
        resumed += 1;
    }
    Ok(resumed)
}

/// Puts a job its agent holds back in the queue, giving back the attempt (the agent
/// stopped, or vanished before the job reached it). False if it no longer held it.
pub async fn release(db: &mut OrgTx, job: Uuid, agent: Uuid, why: &str) -> ApiResult<bool> {
    let released: Option<(Uuid, String)> = sqlx::query_as(
        "UPDATE ai_jobs SET state = 'pending', attempts = greatest(attempts - 1, 0), lease_agent = NULL, lease_expires_at = NULL
         WHERE id = $1 AND lease_agent = $2 AND state = 'running' RETURNING task_id, kind",
    )
    .bind(job)
    .bind(agent)
    .fetch_optional(db.conn())
    .await?;
    let Some((task, kind)) = released else { return Ok(false) };
    let kind = JobKind::try_from(kind).map_err(ApiError::internal)?;
    let requeued = JobFailed { job_id: job, kind, error: why.to_owned(), attempts: None, agent: None };
    events::record(db, task, TaskEvent::JobRequeued(requeued)).await?;
    Ok(true)
}

/// Puts jobs whose lease expired back in the queue, or fails those out of attempts.
/// Returns (requeued, failed).
pub async fn expire_leases(db: &mut OrgTx) -> ApiResult<(usize, usize)> {
    let rows: Vec<(Uuid, Uuid, String, i32, i32, Option<Uuid>)> = sqlx::query_as(
        "WITH gone AS (
             SELECT id, lease_agent FROM ai_jobs WHERE state = 'running' AND lease_expires_at < now()
             ORDER BY lease_expires_at LIMIT 500 FOR UPDATE SKIP LOCKED)
         UPDATE ai_jobs j SET
             state = CASE WHEN j.attempts >= j.max_attempts THEN 'failed' ELSE 'pending' END,
             finished_at = CASE WHEN j.attempts >= j.max_attempts THEN now() END,
             error = CASE WHEN j.attempts >= j.max_attempts
                     THEN format('the agent stopped responding (lease expired) on each of %s attempts', j.attempts)
                     ELSE 'the agent stopped responding (lease expired); queued again' END,
             lease_agent = NULL, lease_expires_at = NULL
         FROM gone WHERE j.id = gone.id
         RETURNING j.id, j.task_id, j.kind, j.attempts, j.max_attempts, gone.lease_agent",
    )
    .fetch_all(db.conn())
    .await?;
    let (mut requeued, mut failed) = (0, 0);
    for (job_id, task, kind, attempts, max, agent) in rows {
        let kind = JobKind::try_from(kind).map_err(ApiError::internal)?;
        let event = if attempts >= max {
            failed += 1;
            let error = format!("the agent stopped responding (lease expired) on each of {attempts} attempts");
            TaskEvent::JobFailed(JobFailed { job_id, kind, error, attempts: Some(attempts), agent })
        } else {
            requeued += 1;
            let error = "the agent stopped responding (lease expired); queued again".to_owned();
            TaskEvent::JobRequeued(JobFailed { job_id, kind, error, attempts: Some(attempts), agent })
        };
        events::record(db, task, event).await?;
    }
    Ok((requeued, failed))
}

/// A job a reconnecting agent asks to go on with, as it stands.
#[derive(sqlx::FromRow)]
pub struct Resumed {
    pub task_id: Uuid,
    pub task_key: String,
    pub project_id: Uuid,
    pub model: Option<String>,
    /// The first step the server lacks (a step lost in a failed write is sent again).
    pub next_seq: i32,
    pub budget_tokens: Option<i64>,
    /// Tokens spent so far.
    pub used: i64,
}

/// A reconnecting agent goes on with a job it still holds: the lease is renewed and
/// the job read as it stands. None if the agent holds it no longer.
pub async fn resume(db: &mut OrgTx, job: Uuid, agent: Uuid, lease: Duration) -> ApiResult<Option<Resumed>> {
    if !renew(db, job, agent, lease).await? {
        return Ok(None);
    }
    Ok(Some(
        sqlx::query_as(
            "SELECT j.task_id, p.key || '-' || t.number AS task_key, t.project_id, jt.model,
                    (SELECT CASE WHEN NOT EXISTS (SELECT 1 FROM job_steps WHERE job_id = j.id AND seq = 0) THEN 0
                            ELSE (SELECT min(a.seq) + 1 FROM job_steps a WHERE a.job_id = j.id AND NOT EXISTS
                                     (SELECT 1 FROM job_steps b WHERE b.job_id = a.job_id AND b.seq = a.seq + 1)) END) AS next_seq,
                    jt.budget_tokens,
                    coalesce((j.usage->>'input_tokens')::bigint, 0) + coalesce((j.usage->>'output_tokens')::bigint, 0) AS used
             FROM ai_jobs j JOIN tasks t ON t.id = j.task_id JOIN projects p ON p.id = t.project_id
             JOIN ai_job_templates jt ON jt.id = j.template_id
             WHERE j.id = $1",
        )
        .bind(job)
        .fetch_one(db.conn())
        .await?,
    ))
}

/// Stores one step of a job the agent holds (once per seq: a step sent again after a
/// reconnect is not stored twice) and records it on the task. `step` is already
/// bounded by the caller.
pub async fn record_step(db: &mut OrgTx, job: Uuid, task: Uuid, agent: Uuid, seq: u32, step: Step) -> ApiResult<()> {
    let body = serde_json::to_value(&step).map_err(ApiError::internal)?;
    let stored = sqlx::query(
        "INSERT INTO job_steps (job_id, seq, task_id, step)
         SELECT $1, $2, $3, $4 WHERE EXISTS (SELECT 1 FROM ai_jobs WHERE id = $1 AND lease_agent = $5 AND state = 'running')
         ON CONFLICT (job_id, seq) DO NOTHING",
    )
    .bind(job)
    .bind(seq as i32)
    .bind(task)
    .bind(&body)
    .bind(agent)
    .execute(db.conn())
    .await?;
    if stored.rows_affected() == 1 {
        events::record(db, task, TaskEvent::JobStep(JobStep { job_id: job, seq, step })).await?;
    }
    Ok(())
}

/// Adds one model call's tokens to what the job spent.
pub async fn add_usage(db: &mut OrgTx, job: Uuid, usage: &Usage, cost_micros: i64) -> ApiResult<()> {
    sqlx::query(
        "UPDATE ai_jobs SET usage = jsonb_build_object(
             'input_tokens', coalesce((usage->>'input_tokens')::bigint, 0) + $2,
             'output_tokens', coalesce((usage->>'output_tokens')::bigint, 0) + $3,
             'cached_tokens', coalesce((usage->>'cached_tokens')::bigint, 0) + $4,
             'cost_micros', coalesce((usage->>'cost_micros')::bigint, 0) + $5,
             'llm_calls', coalesce((usage->>'llm_calls')::bigint, 0) + 1)
         WHERE id = $1",
    )
    .bind(job)
    .bind(usage.input_tokens as i64)
    .bind(usage.output_tokens as i64)
    .bind(usage.cached_tokens as i64)
    .bind(cost_micros)
    .execute(db.conn())
    .await?;
    Ok(())
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
