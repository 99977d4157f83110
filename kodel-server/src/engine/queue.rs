//! The job queue's scheduling. Jobs are claimed (`jobs::claim`), held under a lease
//! the agent renews, and a lease that expires puts the job back in the queue until its
//! attempts run out (`jobs::expire_leases`); then the job fails with a clear error.
//!
//! Agents belong to one org, so a claim is made in one org's schema. `Claimer` serves
//! several orgs in turn so that one org's flood of jobs never starves another's.

use std::time::Duration;

use kodel_core::OrgSlug;
use uuid::Uuid;

use crate::AppState;
use crate::engine::jobs::{self, Claimed};
use crate::error::ApiResult;

/// Claims the next job of the org for `agent` and wakes the org's event streams
/// (`job.started` was recorded).
pub async fn claim(state: &AppState, slug: &OrgSlug, agent: Uuid, labels: &[String], lease: Duration) -> ApiResult<Option<Claimed>> {
    let job = jobs::claim(&state.pool, slug, agent, labels, lease).await?;
    if job.is_some() {
        state.events.changed(slug);
        state.metrics.job_changes.get_or_create(&crate::metrics::JobLabels { event: "job.started".into() }).inc();
    }
    Ok(job)
}

/// Claims for agents of several orgs, taking the orgs in turn: after serving one org it
/// starts the next search at the following one, so every org with work gets its share.
/// Its agents have no labels (the hub claims per label set itself).
pub struct Claimer {
    /// (org, the agent that works for that org).
    pub orgs: Vec<(OrgSlug, Uuid)>,
    next: usize,
}

impl Claimer {
    pub fn new(orgs: Vec<(OrgSlug, Uuid)>) -> Self {
        Self { orgs, next: 0 }
    }

    /// The next job from any of the orgs, with the org it came from.
    pub async fn claim_next(&mut self, state: &AppState, lease: Duration) -> ApiResult<Option<(OrgSlug, Claimed)>> {
        let n = self.orgs.len();
        for i in 0..n {
            let at = (self.next + i) % n;
            let (slug, agent) = &self.orgs[at];
            if let Some(job) = claim(state, slug, *agent, &[], lease).await? {
                self.next = (at + 1) % n;
                return Ok(Some((slug.clone(), job)));
            }
        }
        Ok(None)
    }
}
