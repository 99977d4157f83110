//! The task engine: workflows and moves, AI jobs and their queue, artifacts and their
//! decisions, automation rules and their webhooks, and the background loop that keeps
//! time-based work going (leases, schedules, stale tasks, webhook retries).
//!
//! Handlers and the queue write through an `OrgTx`; before it commits, `react` runs the
//! engine on the events the transaction recorded: bindings start or cancel jobs, rules
//! fire. What they record is reacted to in turn, so cascades happen in the same
//! transaction, bounded by `kodel_core::rules::MAX_CASCADE_DEPTH`.

pub mod artifacts;
pub mod background;
pub mod jobs;
pub mod queue;
pub mod rules;
pub mod webhooks;
pub mod workflow;

use kodel_core::rules::{label_changes, trigger_kinds};
use uuid::Uuid;

use crate::engine::rules::{FACTS_COLUMNS, FACTS_FROM};
use crate::error::{ApiError, ApiResult};
use crate::tenant::{OrgTx, Recorded};

/// Most events one transaction may react to; far above what bounded cascades produce.
const MAX_REACTIONS: usize = 10_000;

/// Reacts to every event recorded so far (and to what the reactions record). Returns
/// how many events were processed.
pub async fn react(db: &mut OrgTx) -> ApiResult<usize> {
    let start = db.reacted;
    let mut done = start;
    while done < db.recorded.len() {
        if done - start >= MAX_REACTIONS {
            return Err(ApiError::internal("engine reaction limit reached"));
        }
        let ev = db.recorded[done].clone();
        done += 1;
        let entered = ev.kind == "task.moved" || ev.kind == "task.created";
        let kinds = trigger_kinds(&ev.kind, &ev.payload);
        if !entered && kinds.is_empty() {
            continue;
        }
        let ctx = context(db, &ev, entered, &kinds).await?;
        if entered {
            jobs::apply_binding(db, &ev, &ctx).await?;
        }
        if ctx.rules != "[]" {
            rules::run(db, &ev, ctx.task, &ctx.rules).await?;
        }
    }
    // What was recorded stays for the commit (the agents hub reads it); reacting again
    // starts after it.
    db.reacted = done;
    Ok(done - start)
}

/// What the engine needs to react to one event, read in one statement.
#[derive(sqlx::FromRow)]
pub struct EventContext {
    /// The task as conditions see it.
    #[sqlx(flatten)]
    pub task: rules::FactsRow,
    /// Jobs cancelled because the task left the status they were made for: JSON
    /// `[[id, kind], ...]`, or NULL.
    pub cancelled: Option<String>,
    /// The binding of the status the event entered, if the task is still in it.
    pub bound_template: Option<Uuid>,
    pub bound_status: Option<Uuid>,
    /// Enabled rules that can fire on the event (JSON array): those of its trigger
    /// kinds whose named status, label or job kind fits.
    pub rules: String,
}

/// One statement per event: cancels the task's stale jobs (when it entered a status),
/// finds the binding it entered, reads its facts and the rules that can fire.
async fn context(db: &mut OrgTx, ev: &Recorded, entered: bool, kinds: &[&str]) -> ApiResult<EventContext> {
    let entered_status = if entered { ev.payload[if ev.kind == "task.moved" { "to" } else { "status" }].as_str() } else { None };
    let sql = format!(
        "WITH cancelled AS (
             UPDATE ai_jobs j SET state = 'cancelled', finished_at = now(), lease_agent = NULL, lease_expires_at = NULL,
                    error = 'the task left the status this job was started for'
             FROM tasks t WHERE $7 AND j.task_id = t.id AND t.id = $2 AND j.state IN ('pending', 'running')
               AND j.status_id IS NOT NULL AND j.status_id <> t.status_id
             RETURNING j.id, j.kind)
         SELECT {FACTS_COLUMNS},
                (SELECT json_agg(json_build_array(id, kind)) FROM cancelled)::text AS cancelled,
                b.template_id AS bound_template, b.status_id AS bound_status,
                coalesce((SELECT json_agg(json_build_object('id', r.id, 'name', r.name, 'dry_run', r.dry_run, 'spec', r.spec)
                                          ORDER BY r.created_at, r.id)
                          FROM automation_rules r
                          WHERE r.enabled AND r.trigger_kind = ANY ($1) AND (r.project_id IS NULL OR r.project_id = t.project_id)
                            AND (r.spec #>> '{{trigger,to}}' IS NULL OR lower(btrim(r.spec #>> '{{trigger,to}}')) = lower($3))
                            AND (r.spec #>> '{{trigger,from}}' IS NULL OR lower(btrim(r.spec #>> '{{trigger,from}}')) = lower($4))
                            AND (r.spec #>> '{{trigger,label}}' IS NULL OR r.spec #>> '{{trigger,label}}' = ANY ($5))
                            AND (r.spec #>> '{{trigger,kind}}' IS NULL OR r.spec #>> '{{trigger,kind}}' = $6)
                         )::text, '[]') AS rules
         FROM {FACTS_FROM}
         LEFT JOIN bindings b ON b.status_id = t.status_id AND s.name = $8
         WHERE t.id = $2"
    );
    Ok(sqlx::query_as(&sql)
    .bind(kinds)
    .bind(ev.task_id)
    .bind(ev.payload["to"].as_str())
    .bind(ev.payload["from"].as_str())
    .bind({
        let (added, removed) = label_changes(&ev.payload);
        [added, removed].concat()
    })
    .bind(ev.payload["kind"].as_str())
    .bind(entered)
    .bind(entered_status)
    .fetch_one(db.conn())
    .await?)
}
