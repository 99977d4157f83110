//! `public.analytics_outbox`, its one writer: the rows ClickHouse gets (`shipper`),
//! written in the transaction of the work they describe, so a call or a job change is
//! counted exactly when it happened. Kinds: `llm_call` (each metered LLM call) and
//! `job_event` (a job created, started, succeeded, re-queued, failed, cancelled,
//! paused or resumed).

use kodel_core::events::{BudgetWarning, EventKind, TaskEvent};
use serde_json::json;
use uuid::Uuid;

use crate::db::OrgTx;
use crate::error::ApiResult;
use crate::llm::{Caller, Metered};

/// Writes a metered LLM call, priced (`prices`), with the project and agent of its job,
/// and adds it to the budgets' spend. Returns its cost in micro-dollars.
pub async fn llm_call(db: &mut OrgTx, caller: &Caller, m: &Metered) -> ApiResult<i64> {
    let price = super::prices::price(db, m.provider, &m.model).await?;
    let cost = price.map_or(0, |p| p.cost_micros(&m.usage));
    let task = caller.job.map(|j| j.task_id);
    let (project, agent): (Option<Uuid>, Option<Uuid>) = match caller.job {
        Some(j) => sqlx::query_as("SELECT t.project_id, j.lease_agent FROM ai_jobs j JOIN tasks t ON t.id = j.task_id WHERE j.id = $1")
            .bind(j.job_id)
            .fetch_optional(db.conn())
            .await?
            .unwrap_or_default(),
        None => (None, None),
    };
    let row = json!({
        "org_id": caller.org_id,
        "org": caller.slug.as_str(),
        "project_id": project,
        "task_id": task,
        "job_id": caller.job.map(|j| j.job_id),
        "agent_id": agent,
        "user_id": caller.user,
        "provider": m.provider,
        "model": m.model,
        "input_tokens": m.usage.input_tokens,
        "output_tokens": m.usage.output_tokens,
        "cached_tokens": m.usage.cached_tokens,
        "usage_estimated": m.usage_estimated,
        "cost_micros": cost,
        "priced": price.is_some(),
        "first_token_ms": m.first_token_ms,
        "total_ms": m.total_ms,
        "status": m.status,
        "error": m.error,
    });
    sqlx::query("INSERT INTO public.analytics_outbox (kind, org_id, payload) VALUES ('llm_call', $1, $2)")
        .bind(caller.org_id)
        .bind(&row)
        .execute(db.conn())
        .await?;
    // What the call spent counts against the budgets; one it takes to 80 % is said on
    // the task (a gateway call has none: the log says it).
    super::budgets::add_spend(db, project, task, cost, (m.usage.input_tokens + m.usage.output_tokens) as i64).await?;
    for crossed in super::budgets::crossed_warning(db, task).await? {
        let message = crossed.describe();
        match task {
            Some(task) => {
                let warning = BudgetWarning { budget_id: crossed.id, scope: crossed.scope.clone(), period: crossed.period.clone(), used: crossed.used(), message };
                crate::events::record(db, task, TaskEvent::BudgetWarning(warning)).await?;
            }
            None => tracing::warn!(org = %caller.slug, budget = %crossed.id, "{message}: 80 % or more is used"),
        }
    }
    Ok(cost)
}

/// The job events worth a row (and a count on `/metrics`): a job's life, not its
/// steps, calls or output.
pub fn is_job_change(kind: EventKind) -> bool {
    matches!(
        kind,
        EventKind::JobCreated
            | EventKind::JobStarted
            | EventKind::JobSucceeded
            | EventKind::JobRequeued
            | EventKind::JobFailed
            | EventKind::JobCancelled
            | EventKind::JobPaused
            | EventKind::JobResumed
    )
}

/// SQL: a `job_event` row's payload for the job `j` (of `ai_jobs`, joined to its task
/// `t`) after the change `event`; `schema` qualifies the org's tables (`"org_x".`) for a
/// statement that runs unscoped, or is empty. The one definition, used by `job_events`
/// and by the job claim's own statement.
pub fn job_event_payload(schema: &str, org_id: &str, org: &str, event: &str) -> String {
    format!(
        "jsonb_build_object('org_id', {org_id}, 'org', {org}, 'project_id', t.project_id, 'task_id', j.task_id, 'job_id', j.id,
            'job_kind', j.kind, 'event', {event}, 'state', j.state, 'attempt', j.attempts, 'agent_id', j.lease_agent,
            'duration_ms', (extract(epoch FROM (j.finished_at - j.started_at)) * 1000)::bigint,
            'steps', (SELECT count(*) FROM {schema}job_steps s WHERE s.job_id = j.id), 'at', now())"
    )
}

/// Writes a `job_event` row for each job change recorded in the transaction (called
/// as it commits, after the engine reacted).
pub async fn job_events(db: &mut OrgTx) -> ApiResult<()> {
    let (jobs, events): (Vec<Uuid>, Vec<&'static str>) = db
        .recorded
        .iter()
        .filter(|r| is_job_change(r.event.kind()))
        .filter_map(|r| Some((r.event.job_id()?, r.event.kind().as_str())))
        .unzip();
    if jobs.is_empty() {
        return Ok(());
    }
    let sql = format!(
        "INSERT INTO public.analytics_outbox (kind, org_id, payload)
         SELECT 'job_event', $1, {}
         FROM unnest($3::uuid[], $4::text[]) WITH ORDINALITY AS x(job_id, event, n)
         JOIN ai_jobs j ON j.id = x.job_id JOIN tasks t ON t.id = j.task_id ORDER BY x.n",
        job_event_payload("", "$1::uuid", "$2::text", "x.event")
    );
    sqlx::query(&sql).bind(db.org_id).bind(db.slug.as_str().to_owned()).bind(&jobs).bind(&events).execute(db.conn()).await?;
    Ok(())
}
