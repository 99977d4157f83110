//! The task engine: workflows and moves, AI jobs and their queue, artifacts and their
//! decisions, automation rules and their webhooks, and the background loop that keeps
//! time-based work going (leases, schedules, stale tasks, webhook retries).
//!
//! Changes are written through an `OrgTx`, whose journal holds the task events they
//! recorded. The engine owns the commit (`commit`): it first reacts to those events
//! (bindings start or cancel jobs, rules fire; what they record is reacted to in turn,
//! so cascades happen in the same transaction, bounded by
//! `kodel_core::rules::MAX_CASCADE_DEPTH`), then commits and returns the journal, which
//! `AppState::commit` hands to the live feeds and the agents hub.

pub mod artifacts;
pub mod background;
pub mod jobs;
pub mod queue;
pub mod rules;
pub mod tasks;
pub mod webhooks;
pub mod workflow;

use kodel_core::events::TaskEvent;
use kodel_core::rules::trigger_kinds;
use uuid::Uuid;

use crate::db::OrgTx;
use crate::db::scoped::{Journal, Recorded};
use crate::engine::rules::{FACTS_COLUMNS, FACTS_FROM};
use crate::error::{ApiError, ApiResult};

/// Most events one transaction may react to; far above what bounded cascades produce.
const MAX_REACTIONS: usize = 10_000;

/// Reacts to what the transaction recorded, then commits it. Returns the journal.
pub async fn commit(mut db: OrgTx) -> ApiResult<Journal> {
    react(&mut db).await?;
    crate::analytics::outbox::job_events(&mut db).await?;
    db.commit_journal().await
}

/// Reacts, lets `read` see the outcome in the same transaction (a handler reading back
/// the task a rule may have changed), then commits.
pub async fn commit_with<T>(mut db: OrgTx, read: impl AsyncFnOnce(&mut OrgTx) -> ApiResult<T>) -> ApiResult<(T, Journal)> {
    react(&mut db).await?;
    let out = read(&mut db).await?;
    crate::analytics::outbox::job_events(&mut db).await?;
    Ok((out, db.commit_journal().await?))
}

/// What reacts to a task being created in `status` of `project`: a binding on the
/// status, or an enabled `task_created` rule of the project or the org. SQL `EXISTS`
/// tests over a status id and a project id, for statements that create tasks; the one
/// definition behind `reacts_to_creation` and `nothing_reacts_to_creation`.
fn creation_reactors(status: &str, project: &str) -> [String; 2] {
    [
        format!("EXISTS (SELECT 1 FROM bindings b WHERE b.status_id = {status})"),
        format!(
            "EXISTS (SELECT 1 FROM automation_rules ru WHERE ru.enabled AND ru.trigger_kind = 'task_created'
                     AND (ru.project_id IS NULL OR ru.project_id = {project}))"
        ),
    ]
}

/// SQL: the engine reacts to a task created in `status` of `project`.
pub fn reacts_to_creation(status: &str, project: &str) -> String {
    let [binding, rule] = creation_reactors(status, project);
    format!("({binding} OR {rule})")
}

/// SQL: nothing reacts to a task created in `status` of `project` (written as two
/// `NOT EXISTS`, which PostgreSQL plans as anti-joins).
pub fn nothing_reacts_to_creation(status: &str, project: &str) -> String {
    let [binding, rule] = creation_reactors(status, project);
    format!("NOT {binding} AND NOT {rule}")
}

/// Reacts to every event recorded and not yet reacted to (and to what the reactions
/// record). Returns how many events were processed.
async fn react(db: &mut OrgTx) -> ApiResult<usize> {
    let start = db.reacted;
    let mut done = start;
    while done < db.recorded.len() {
        if done - start >= MAX_REACTIONS {
            return Err(ApiError::internal("engine reaction limit reached"));
        }
        let ev = db.recorded[done].clone();
        done += 1;
        let entered = ev.event.entered_status();
        let kinds = trigger_kinds(&ev.event);
        if entered.is_none() && kinds.is_empty() {
            continue;
        }
        let ctx = context(db, &ev, entered, &kinds).await?;
        if entered.is_some() {
            jobs::apply_binding(db, &ev, &ctx).await?;
        }
        if ctx.rules != "[]" {
            rules::run(db, &ev, ctx.task, &ctx.rules).await?;
        }
    }
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
async fn context(db: &mut OrgTx, ev: &Recorded, entered: Option<&str>, kinds: &[&str]) -> ApiResult<EventContext> {
    let (from, to) = match &ev.event {
        TaskEvent::TaskMoved(m) => (Some(m.from.as_str()), Some(m.to.as_str())),
        _ => (None, None),
    };
    let job_kind = match &ev.event {
        TaskEvent::JobSucceeded(j) => Some(j.kind.as_str()),
        TaskEvent::JobFailed(j) => Some(j.kind.as_str()),
        _ => None,
    };
    let (added, removed) = ev.event.label_changes();
    let cancel = jobs::CANCEL_LEFT_BEHIND;
    let sql = format!(
        "WITH cancelled AS ({cancel})
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
        .bind(to)
        .bind(from)
        .bind([added, removed].concat())
        .bind(job_kind)
        .bind(entered.is_some())
        .bind(entered)
        .fetch_one(db.conn())
        .await?)
}
