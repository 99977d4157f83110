//! The job queue. Pending jobs are claimed with `FOR UPDATE SKIP LOCKED` (so claimers
//! never wait on each other and no job is claimed twice), highest priority first, and
//! held under a lease the agent renews. A lease that expires puts the job back in the
//! queue until its attempts run out; then the job fails with a clear error.
//!
//! Agents belong to one org, so a claim is made in one org's schema. `Claimer` serves
//! several orgs in turn so that one org's flood of jobs never starves another's.

use std::time::Duration;

use kodel_core::OrgSlug;
use serde_json::json;
use uuid::Uuid;

use crate::AppState;
use crate::error::ApiResult;
use crate::events;
use crate::tenant::OrgTx;

/// A job handed to an agent.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Claimed {
    pub id: Uuid,
    pub task_id: Uuid,
    pub kind: String,
    pub template_id: Uuid,
    pub attempts: i32,
    pub priority: i16,
}

/// Claims the next pending job of the org for `agent`, leased for `lease`.
pub async fn claim(state: &AppState, org_id: Uuid, slug: &OrgSlug, agent: Uuid, lease: Duration) -> ApiResult<Option<Claimed>> {
    let mut db = OrgTx::begin(state, org_id, slug).await?;
    let job: Option<Claimed> = sqlx::query_as(
        "UPDATE ai_jobs j SET state = 'running', attempts = attempts + 1, lease_agent = $1,
                lease_expires_at = now() + make_interval(secs => $2), started_at = coalesce(started_at, now()), error = NULL
         FROM (SELECT id FROM ai_jobs WHERE state = 'pending' ORDER BY priority DESC, id LIMIT 1 FOR UPDATE SKIP LOCKED) next
         WHERE j.id = next.id
         RETURNING j.id, j.task_id, j.kind, j.template_id, j.attempts, j.priority",
    )
    .bind(agent)
    .bind(lease.as_secs_f64())
    .fetch_optional(db.conn())
    .await?;
    let Some(job) = job else {
        db.commit().await?;
        return Ok(None);
    };
    events::record(&mut db, job.task_id, "job.started", json!({ "job_id": job.id, "kind": job.kind, "agent": agent, "attempt": job.attempts })).await?;
    db.commit().await?;
    Ok(Some(job))
}

/// Extends the lease of a job the agent still holds; false if it holds it no longer.
pub async fn renew(state: &AppState, org_id: Uuid, slug: &OrgSlug, job: Uuid, agent: Uuid, lease: Duration) -> ApiResult<bool> {
    let mut db = OrgTx::begin(state, org_id, slug).await?;
    let done = sqlx::query(
        "UPDATE ai_jobs SET lease_expires_at = now() + make_interval(secs => $3)
         WHERE id = $1 AND lease_agent = $2 AND state = 'running'",
    )
    .bind(job)
    .bind(agent)
    .bind(lease.as_secs_f64())
    .execute(db.conn())
    .await?;
    db.commit().await?;
    Ok(done.rows_affected() == 1)
}

/// Puts jobs whose lease expired back in the queue, or fails those out of attempts.
/// Returns (requeued, failed).
pub async fn reap_expired(state: &AppState, org_id: Uuid, slug: &OrgSlug) -> ApiResult<(usize, usize)> {
    let mut db = OrgTx::begin(state, org_id, slug).await?;
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
    for (job, task, kind, attempts, max, agent) in rows {
        let (what, error) = if attempts >= max {
            failed += 1;
            ("job.failed", format!("the agent stopped responding (lease expired) on each of {attempts} attempts"))
        } else {
            requeued += 1;
            ("job.requeued", "the agent stopped responding (lease expired); queued again".to_owned())
        };
        events::record(&mut db, task, what, json!({ "job_id": job, "kind": kind, "attempts": attempts, "agent": agent, "error": error })).await?;
    }
    db.commit().await?;
    Ok((requeued, failed))
}

/// Claims for agents of several orgs, taking the orgs in turn: after serving one org it
/// starts the next search at the following one, so every org with work gets its share.
pub struct Claimer {
    /// (org id, slug, the agent that works for that org).
    pub orgs: Vec<(Uuid, OrgSlug, Uuid)>,
    next: usize,
}

impl Claimer {
    pub fn new(orgs: Vec<(Uuid, OrgSlug, Uuid)>) -> Self {
        Self { orgs, next: 0 }
    }

    /// The next job from any of the orgs, with the org it came from.
    pub async fn claim_next(&mut self, state: &AppState, lease: Duration) -> ApiResult<Option<(OrgSlug, Claimed)>> {
        let n = self.orgs.len();
        for i in 0..n {
            let at = (self.next + i) % n;
            let (org_id, slug, agent) = &self.orgs[at];
            if let Some(job) = claim(state, *org_id, slug, *agent, lease).await? {
                self.next = (at + 1) % n;
                return Ok(Some((slug.clone(), job)));
            }
        }
        Ok(None)
    }
}

/// Adds an agent to the org's registry (the agents hub calls this on `agent.hello`).
pub async fn register_agent(db: &mut OrgTx, name: &str, labels: &[String], version: &str) -> ApiResult<Uuid> {
    let id = Uuid::now_v7();
    sqlx::query("INSERT INTO agents (id, name, labels, version, status, last_seen_at) VALUES ($1, $2, $3, $4, 'online', now())")
        .bind(id)
        .bind(name)
        .bind(labels)
        .bind(version)
        .execute(db.conn())
        .await?;
    Ok(id)
}
