//! An agent's LLM calls, relayed: the job's token budget checked, the call made through
//! the proxy (which meters it and never shows the agent a key), its chunks streamed to
//! the agent as they come, and the model's text shown live to people watching the task
//! a window at a time.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use kodel_core::OrgSlug;
use kodel_core::events::{JobOutput, OutputSource};
use kodel_core::llm::{Delta, LlmRequest, Role};
use kodel_core::protocol::ServerMessage;
use tokio::sync::mpsc;
use uuid::Uuid;

use super::connection::{AgentToken, Running};
use crate::AppState;
use crate::llm::{Caller, JobRef};

/// Live output is gathered this long before it is shown to people.
const LIVE_WINDOW: Duration = Duration::from_millis(50);

/// Runs an LLM call for the job in the background, relaying it to `out` as it streams.
/// Returns the call and how to stop it, or None when the job's budget is spent (the
/// agent was told).
pub(super) fn call(
    state: &AppState,
    token: &AgentToken,
    agent: Uuid,
    out: &mpsc::UnboundedSender<ServerMessage>,
    job: Running,
    request_id: String,
    request: LlmRequest,
) -> Option<(tokio::task::JoinHandle<()>, Arc<tokio::sync::Notify>)> {
    let (state, out) = (state.clone(), out.clone());
    let caller = Caller {
        org_id: token.org_id,
        slug: token.slug.clone(),
        job: Some(JobRef { job_id: job.id, task_id: job.task_id }),
        template_model: job.template_model.clone(),
        user: None,
    };
    let (system, request) = split_system(request);
    if let Some(budget) = job.budget
        && job.used.load(Ordering::Relaxed) >= budget.max(0) as u64
    {
        let error = format!("the job's token budget of {budget} is spent ({} used)", job.used.load(Ordering::Relaxed));
        let _ = out.send(ServerMessage::LlmError { job_id: job.id, request_id, error, retryable: false });
        return None;
    }
    let stop = Arc::new(tokio::sync::Notify::new());
    let stopped = stop.clone();
    let handle = tokio::spawn(async move {
        let mut live = Coalescer::new(&state, &caller.slug, &job);
        let result = state
            .llm
            .call(&state, &caller, &system, &request, stopped.notified(), |delta| {
                if let Delta::Text { text } = delta {
                    live.push(text);
                }
                let _ = out.send(ServerMessage::LlmChunk { job_id: job.id, request_id: request_id.clone(), delta: delta.clone() });
            })
            .await;
        live.flush();
        let msg = match result {
            Ok(done) => {
                job.used.fetch_add(done.usage.total(), Ordering::Relaxed);
                ServerMessage::LlmDone { job_id: job.id, request_id, done }
            }
            Err(e) if e.over_budget => {
                // Paused before the agent hears of it: its report of a failed call then
                // finds the job no longer its own, and the job stays paused.
                if let Err(err) = pause(&state, &caller, agent, &e.message).await {
                    tracing::error!(job = %job.id, error = %err.message, "could not pause a job over its budget");
                }
                ServerMessage::LlmError { job_id: job.id, request_id, error: e.message, retryable: false }
            }
            Err(e) => ServerMessage::LlmError { job_id: job.id, request_id, error: e.message, retryable: e.retryable },
        };
        let _ = out.send(msg);
    });
    Some((handle, stop))
}

/// System messages at the head of an agent's conversation become the system prompt
/// (the server's prompt is already in the assignment the agent got).
fn split_system(mut request: LlmRequest) -> (String, LlmRequest) {
    let mut system = Vec::new();
    while request.messages.first().is_some_and(|m| m.role == Role::System) {
        system.push(request.messages.remove(0).content);
    }
    (system.join("\n\n"), request)
}

/// Gathers the model's text for people watching the task, a window at a time.
struct Coalescer<'a> {
    state: &'a AppState,
    slug: &'a OrgSlug,
    job: &'a Running,
    text: String,
    since: Instant,
}

impl<'a> Coalescer<'a> {
    fn new(state: &'a AppState, slug: &'a OrgSlug, job: &'a Running) -> Self {
        Self { state, slug, job, text: String::new(), since: Instant::now() }
    }

    fn push(&mut self, text: &str) {
        self.text.push_str(text);
        if self.since.elapsed() >= LIVE_WINDOW || self.text.len() >= 4096 {
            self.flush();
        }
    }

    fn flush(&mut self) {
        if !self.text.is_empty() {
            let output = JobOutput { job_id: self.job.id, seq: None, source: OutputSource::Model, text: std::mem::take(&mut self.text) };
            self.state.replicas.live(self.state, self.slug, self.job.task_id, self.job.project_id, &self.job.task_key, output);
        }
        self.since = Instant::now();
    }
}

/// Pauses the caller's job (a budget is spent).
async fn pause(state: &AppState, caller: &Caller, agent: Uuid, reason: &str) -> crate::error::ApiResult<()> {
    let Some(job) = caller.job else { return Ok(()) };
    let mut db = crate::db::OrgTx::begin(&state.pool, caller.org_id, &caller.slug).await?;
    crate::engine::jobs::pause(&mut db, job.job_id, agent, reason).await?;
    state.commit(db).await
}
