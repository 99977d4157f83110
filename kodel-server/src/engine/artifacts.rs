//! Deciding on what a job produced. Approving moves the task on to its binding's next
//! status; rejecting sends it back to the binding's return status with the reviewer's
//! comment on the task. Either way only if the task still sits in the job's status.
//! The other pending artifacts of the same job are decided with it.

use kodel_core::ErrorCode;
use kodel_core::api::MAX_COMMENT;
use kodel_core::events::{ArtifactDecided, CommentAdded, TaskEvent};
use kodel_core::jobs::{ArtifactKind, ArtifactState};
use uuid::Uuid;

use crate::engine::workflow::{self, MoveCause};
use crate::error::{ApiError, ApiResult, check_len};
use crate::events;
use crate::db::OrgTx;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Approve,
    Reject,
}

/// What a decision did to the task.
pub struct Decided {
    pub task_id: Uuid,
    /// The status the task moved to, if it moved.
    pub moved_to: Option<String>,
}

#[derive(sqlx::FromRow)]
struct DecideRow {
    task_id: Uuid,
    job_id: Uuid,
    #[sqlx(try_from = "String")]
    kind: ArtifactKind,
    #[sqlx(try_from = "String")]
    state: ArtifactState,
    title: String,
    /// The binding's statuses for approve and reject.
    next: Option<String>,
    back: Option<String>,
    /// Whether the task still sits in the status its job was made for. A job started
    /// by hand counts as made for the task's status when that status's binding runs
    /// the same template (the QA job run again): its approval moves the task on alike.
    in_place: bool,
}

pub async fn decide(db: &mut OrgTx, artifact: Uuid, decision: Decision, comment: Option<&str>) -> ApiResult<Decided> {
    let comment = comment.map(str::trim).filter(|c| !c.is_empty());
    if let Some(c) = comment {
        check_len("comment", c, MAX_COMMENT)?;
    }
    // The job's artifacts are decided together: lock them all, in one order, so two
    // people deciding on sibling artifacts at once wait for each other (no deadlock).
    sqlx::query("SELECT id FROM artifacts WHERE job_id = (SELECT job_id FROM artifacts WHERE id = $1) ORDER BY id FOR UPDATE")
        .bind(artifact)
        .fetch_all(db.conn())
        .await?;
    let row: Option<DecideRow> = sqlx::query_as(
        "SELECT a.task_id, a.job_id, a.kind, a.state, a.title, n.name AS next, r.name AS back,
                coalesce(t.status_id = coalesce(j.status_id, b.status_id), false) AS in_place
         FROM artifacts a JOIN ai_jobs j ON j.id = a.job_id JOIN tasks t ON t.id = a.task_id
         LEFT JOIN bindings b ON b.status_id = j.status_id
              OR (j.status_id IS NULL AND b.status_id = t.status_id AND b.template_id = j.template_id)
         LEFT JOIN statuses n ON n.id = b.next_status_id
         LEFT JOIN statuses r ON r.id = b.return_status_id
         WHERE a.id = $1 FOR UPDATE OF a, t",
    )
    .bind(artifact)
    .fetch_optional(db.conn())
    .await?;
    let DecideRow { task_id: task, job_id: job, kind, state, title, next, back, in_place } =
        row.ok_or_else(|| ApiError::new(ErrorCode::ArtifactNotFound, format!("artifact {artifact} not found")))?;
    if state != ArtifactState::Pending {
        return Err(ApiError::new(ErrorCode::ArtifactDecided, format!("artifact {artifact} was already {state}")));
    }
    let (new_state, target) = match decision {
        Decision::Approve => (ArtifactState::Approved, next),
        Decision::Reject => (ArtifactState::Rejected, back),
    };
    let actor = db.actor;
    // A job's artifacts (its branch, patch and pull request) are one piece of work:
    // deciding on one decides them all.
    let decided: Vec<Uuid> = sqlx::query_scalar("UPDATE artifacts SET state = $2, decided_by = $3, decided_at = now(), comment = $4 WHERE id = $1 OR (job_id = $5 AND state = 'pending') RETURNING id")
        .bind(artifact)
        .bind(new_state.as_str())
        .bind(actor)
        .bind(comment)
        .bind(job)
        .fetch_all(db.conn())
        .await?;
    let what = ArtifactDecided { artifact_id: artifact, job_id: job, kind, comment: comment.map(str::to_owned), decided };
    let event = match decision {
        Decision::Approve => TaskEvent::ArtifactApproved(what),
        Decision::Reject => TaskEvent::ArtifactRejected(what),
    };
    events::record(db, task, event).await?;
    if decision == Decision::Reject {
        // The reason goes on the task, where the next attempt (person or agent) reads it.
        let body = match comment {
            Some(c) => format!("Rejected {title}: {c}"),
            None => format!("Rejected {title}."),
        };
        let id = Uuid::now_v7();
        sqlx::query("INSERT INTO comments (id, task_id, author_id, body) VALUES ($1, $2, $3, $4)")
            .bind(id)
            .bind(task)
            .bind(actor)
            .bind(&body)
            .execute(db.conn())
            .await?;
        events::record(db, task, TaskEvent::CommentAdded(CommentAdded { comment_id: id, body, rule_id: None })).await?;
    }
    let moved_to = match target {
        Some(to) if in_place => {
            let why = MoveCause { reason: Some(format!("artifact {new_state}")), artifact_id: Some(artifact), rule_id: None };
            Some(workflow::move_task(db, task, &to, why).await?.to)
        }
        _ => None,
    };
    Ok(Decided { task_id: task, moved_to })
}
