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

use crate::error::{ApiError, ApiResult};
use crate::tenant::OrgTx;

/// Most events one transaction may react to; far above what bounded cascades produce.
const MAX_REACTIONS: usize = 10_000;

/// Reacts to every event recorded so far (and to what the reactions record). Returns
/// how many events were processed.
pub async fn react(db: &mut OrgTx) -> ApiResult<usize> {
    let mut done = 0;
    while done < db.recorded.len() {
        if done >= MAX_REACTIONS {
            return Err(ApiError::internal("engine reaction limit reached"));
        }
        let ev = db.recorded[done].clone();
        done += 1;
        jobs::on_event(db, &ev).await?;
        rules::on_event(db, &ev).await?;
    }
    db.recorded.clear();
    Ok(done)
}
