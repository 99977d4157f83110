//! Recording task events: the one writer of `task_events`. An event is written in the
//! transaction of the change it tells of, takes the task's next number (`seq`), and is
//! added to the transaction's journal for the engine to react to.
//!
//! Statements that write a change and its event at once (a job claim, a group of task
//! creations) take their SQL from here too (`append`, `first`), and note what they
//! wrote (`note`, `note_unreacted`).

use kodel_core::events::TaskEvent;
use uuid::Uuid;

use crate::db::OrgTx;
use crate::db::scoped::Recorded;
use crate::error::ApiResult;

/// Writes one event for a task in the org transaction, taking the task's next seq, and
/// adds it to the journal. Returns the seq.
pub async fn record(db: &mut OrgTx, task_id: Uuid, event: TaskEvent) -> ApiResult<i32> {
    let actor = db.actor;
    let Append { cte, insert } = append("");
    let sql = format!("WITH ev(task_id, type, payload, actor_id) AS (VALUES ($1::uuid, $2::text, $3::jsonb, $4::uuid)), {cte} {insert} RETURNING seq");
    let seq: i32 = sqlx::query_scalar(&sql)
        .bind(task_id)
        .bind(event.kind().as_str())
        .bind(event.payload())
        .bind(actor)
        .fetch_one(db.conn())
        .await?;
    note(db, task_id, seq, event);
    Ok(seq)
}

/// SQL that appends the events of a CTE `ev(task_id, type, payload, actor_id)` (at
/// most one per task) to existing tasks, each taking its task's next seq: `cte` goes in
/// the statement's `WITH` list after `ev`, then `insert` (a statement, or the body of a
/// further CTE; `RETURNING` may follow with columns of `task_events`).
pub struct Append {
    pub cte: String,
    pub insert: String,
}

/// `Append` for tables qualified by `schema` (`"org_x".`, for a statement that runs
/// unscoped), or unqualified (empty).
pub fn append(schema: &str) -> Append {
    Append {
        cte: format!(
            "seqs AS (UPDATE {schema}tasks SET event_seq = event_seq + 1 FROM ev WHERE tasks.id = ev.task_id
                      RETURNING tasks.id, tasks.project_id, tasks.event_seq)"
        ),
        insert: format!(
            "INSERT INTO {schema}task_events (task_id, project_id, seq, type, payload, actor_id)
             SELECT seqs.id, seqs.project_id, seqs.event_seq, ev.type, ev.payload, ev.actor_id FROM seqs JOIN ev ON ev.task_id = seqs.id"
        ),
    }
}

/// SQL: writes the first event of tasks just inserted. `rows` is a `SELECT` of
/// `(task_id, project_id, seq, type, payload, actor_id)` with seq 1, in the order to
/// write them. (Inlined rather than read from a CTE of its own: measured 7 % faster on
/// the group commit, docs/benchmarks.md.)
pub fn first(rows: &str) -> String {
    format!("INSERT INTO task_events (task_id, project_id, seq, type, payload, actor_id) {rows}")
}

/// Adds to the journal an event a statement wrote with `append` or `first`.
pub fn note(db: &mut OrgTx, task_id: Uuid, seq: i32, event: TaskEvent) {
    let cause = db.cause.clone();
    db.recorded.push(Recorded { task_id, seq, event, cause });
}

/// Notes that a statement wrote events nothing reacts to (a creation with no binding
/// and no rule), so only the event streams are woken.
pub fn note_unreacted(db: &mut OrgTx) {
    db.wrote_unrecorded = true;
}
