//! The task event vocabulary: everything that happens to a task, as types.
//!
//! A task's history is a list of these events; the server records them in the
//! transaction of each change, the engine and the rules react to them, and the SSE
//! streams and `kodel task logs` show them. On the wire an event is its name (`type`,
//! e.g. `task.moved`) and its `payload`, exactly as serde writes `TaskEvent` here; this
//! module is the only place those names are written.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use crate::api::Priority;
use crate::jobs::{ArtifactKind, JobKind};
use crate::protocol::Step;

/// Declares the event enum and its name table from one list, so a name is written once.
macro_rules! task_events {
    ($($(#[$doc:meta])* $variant:ident($payload:ty) = $name:literal,)*) => {
        /// One thing that happened to a task. Serialized as `{"type": name, "payload": ...}`.
        #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
        #[serde(tag = "type", content = "payload")]
        pub enum TaskEvent {
            $($(#[$doc])* #[serde(rename = $name)] $variant($payload),)*
        }

        /// An event's name without its payload.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum EventKind {
            $($variant,)*
        }

        impl EventKind {
            pub const ALL: &'static [EventKind] = &[$(Self::$variant,)*];

            /// The wire name (`task.moved`).
            pub fn as_str(self) -> &'static str {
                match self { $(Self::$variant => $name,)* }
            }

            pub fn parse(name: &str) -> Option<Self> {
                Self::ALL.iter().copied().find(|k| k.as_str() == name)
            }
        }

        impl TaskEvent {
            pub fn kind(&self) -> EventKind {
                match self { $(Self::$variant(_) => EventKind::$variant,)* }
            }
        }
    };
}

task_events! {
    /// A task was made (by a person, the API or a rule).
    TaskCreated(TaskCreated) = "task.created",
    /// Fields of a task changed.
    TaskUpdated(TaskUpdated) = "task.updated",
    /// A task was archived (its only change).
    TaskArchived(TaskUpdated) = "task.archived",
    /// A task was brought back from the archive (its only change).
    TaskUnarchived(TaskUpdated) = "task.unarchived",
    /// A task went to another status.
    TaskMoved(TaskMoved) = "task.moved",
    /// Someone (or a rule, or a rejection) commented.
    CommentAdded(CommentAdded) = "comment.added",
    /// A job was queued for the task.
    JobCreated(JobCreated) = "job.created",
    /// An agent took a job (each attempt).
    JobStarted(JobStarted) = "job.started",
    /// One step of a running job: what the model said or a tool run.
    JobStep(JobStep) = "job.step",
    /// One call a job made to a model, through the proxy.
    JobLlmCall(LlmCall) = "job.llm_call",
    /// A job finished and left its artifacts.
    JobSucceeded(JobSucceeded) = "job.succeeded",
    /// A job's attempt ended early and it waits in the queue again.
    JobRequeued(JobFailed) = "job.requeued",
    /// A job failed for good.
    JobFailed(JobFailed) = "job.failed",
    /// A job was cancelled (by a person, or because its task moved on).
    JobCancelled(JobCancelled) = "job.cancelled",
    /// A job stopped because a budget is spent; its steps are kept.
    JobPaused(JobPaused) = "job.paused",
    /// A paused job was queued again (resumed by a person, or its budget raised).
    JobResumed(JobResumed) = "job.resumed",
    /// Output of the moment from a running job; shown live, never stored.
    JobOutput(JobOutput) = "job.output",
    /// A person approved a job's artifacts.
    ArtifactApproved(ArtifactDecided) = "artifact.approved",
    /// A person rejected a job's artifacts.
    ArtifactRejected(ArtifactDecided) = "artifact.rejected",
    /// An automation rule fired on the task.
    RuleFired(RuleFired) = "rule.fired",
    /// One action of a rule could not be done.
    RuleFailed(RuleFailed) = "rule.failed",
    /// A rule did not fire, to keep a cascade bounded.
    RuleCascadeStopped(RuleCascadeStopped) = "rule.cascade_stopped",
    /// A rule's webhook was delivered.
    WebhookDelivered(WebhookDelivered) = "rule.webhook_delivered",
    /// A rule's webhook call failed (it may be retried).
    WebhookFailed(WebhookFailed) = "rule.webhook_failed",
    /// An LLM call of the task's job took a budget to 80 % of its limit or more (once
    /// per budget and period).
    BudgetWarning(BudgetWarning) = "budget.warning",
}

impl std::fmt::Display for EventKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl TaskEvent {
    /// The event from its stored name and payload (None for a name or a payload this
    /// version does not know: history from a newer server, say).
    pub fn from_parts(name: &str, payload: Value) -> Option<Self> {
        EventKind::parse(name)?;
        serde_json::from_value(serde_json::json!({ "type": name, "payload": payload })).ok()
    }

    /// The payload as stored and sent.
    pub fn payload(&self) -> Value {
        match serde_json::to_value(self) {
            Ok(Value::Object(mut fields)) => fields.remove("payload").unwrap_or(Value::Null),
            _ => Value::Null,
        }
    }

    /// Whether the task entered a status with this event, and which.
    pub fn entered_status(&self) -> Option<&str> {
        match self {
            Self::TaskCreated(e) => Some(&e.status),
            Self::TaskMoved(e) => Some(&e.to),
            _ => None,
        }
    }

    /// The job an event is about, if any.
    pub fn job_id(&self) -> Option<Uuid> {
        match self {
            Self::JobCreated(e) => Some(e.job_id),
            Self::JobStarted(e) => Some(e.job_id),
            Self::JobStep(e) => Some(e.job_id),
            Self::JobLlmCall(e) => e.job_id,
            Self::JobSucceeded(e) => Some(e.job_id),
            Self::JobRequeued(e) | Self::JobFailed(e) => Some(e.job_id),
            Self::JobCancelled(e) => Some(e.job_id),
            Self::JobPaused(e) => Some(e.job_id),
            Self::JobResumed(e) => Some(e.job_id),
            Self::JobOutput(e) => Some(e.job_id),
            Self::ArtifactApproved(e) | Self::ArtifactRejected(e) => Some(e.job_id),
            _ => None,
        }
    }

    /// The labels a change added and removed.
    pub fn label_changes(&self) -> (Vec<&str>, Vec<&str>) {
        let Self::TaskUpdated(e) = self else { return (Vec::new(), Vec::new()) };
        let Some(change) = e.changes.get("labels") else { return (Vec::new(), Vec::new()) };
        fn list(v: &Value) -> Vec<&str> {
            v.as_array().map(|a| a.iter().filter_map(Value::as_str).collect()).unwrap_or_default()
        }
        let (from, to) = (list(&change.from), list(&change.to));
        let added = to.iter().copied().filter(|l| !from.contains(l)).collect();
        let removed = from.iter().copied().filter(|l| !to.contains(l)).collect();
        (added, removed)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskCreated {
    pub title: String,
    pub priority: Priority,
    #[serde(default)]
    pub labels: Vec<String>,
    #[serde(default)]
    pub assignee: Option<String>,
    /// The status it was created in.
    pub status: String,
}

/// A field's value before and after.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Change {
    pub from: Value,
    pub to: Value,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskUpdated {
    /// By field name (`title`, `labels`, `assignee`, `archived`, ...).
    pub changes: BTreeMap<String, Change>,
    /// The rule that made the change, if one did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule_id: Option<Uuid>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskMoved {
    pub from: String,
    pub to: String,
    /// Why, when it was not a person's move ("workflow edited", "artifact approved").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule_id: Option<Uuid>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact_id: Option<Uuid>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CommentAdded {
    pub comment_id: Uuid,
    pub body: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule_id: Option<Uuid>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobCreated {
    pub job_id: Uuid,
    pub kind: JobKind,
    /// The job template's name.
    pub template: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobStarted {
    pub job_id: Uuid,
    pub kind: JobKind,
    pub agent: Uuid,
    pub attempt: i32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobStep {
    pub job_id: Uuid,
    /// The step's number within the job, from 0 across attempts.
    pub seq: u32,
    pub step: Step,
}

/// One model call: what it cost and how long it took.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LlmCall {
    #[serde(default)]
    pub job_id: Option<Uuid>,
    pub provider: String,
    /// `provider/model`.
    pub model: String,
    pub input_tokens: u64,
    pub output_tokens: u64,
    #[serde(default)]
    pub cached_tokens: u64,
    /// The provider reported no usage: the token counts are Kodel's estimate (about
    /// four characters a token).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub usage_estimated: bool,
    #[serde(default)]
    pub first_token_ms: Option<u64>,
    #[serde(default)]
    pub total_ms: Option<u64>,
    /// `ok`, or what went wrong (`error`, `cancelled`, `budget`...).
    pub status: String,
    #[serde(default)]
    pub error: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobSucceeded {
    pub job_id: Uuid,
    pub kind: JobKind,
    pub summary: String,
    /// The artifacts it left, for people to decide on.
    #[serde(default)]
    pub artifacts: Vec<Uuid>,
}

/// A failed attempt (`job.requeued`) or a failed job (`job.failed`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobFailed {
    pub job_id: Uuid,
    pub kind: JobKind,
    pub error: String,
    /// Attempts made so far.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempts: Option<i32>,
    /// The agent whose lease expired, when that is why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<Uuid>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobCancelled {
    pub job_id: Uuid,
    pub kind: JobKind,
    pub reason: String,
}

/// Where live output came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OutputSource {
    /// The model's text as it streams.
    Model,
    /// A tool's output as it runs.
    Tool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobOutput {
    pub job_id: Uuid,
    /// The step a tool's output belongs to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq: Option<u32>,
    pub source: OutputSource,
    pub text: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ArtifactDecided {
    pub artifact_id: Uuid,
    pub job_id: Uuid,
    pub kind: ArtifactKind,
    #[serde(default)]
    pub comment: Option<String>,
    /// Every artifact of the job the decision covered.
    #[serde(default)]
    pub decided: Vec<Uuid>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobPaused {
    pub job_id: Uuid,
    pub kind: JobKind,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobResumed {
    pub job_id: Uuid,
    pub kind: JobKind,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BudgetWarning {
    pub budget_id: Uuid,
    /// `org`, `project` or `task`.
    pub scope: String,
    /// `month` or `total`.
    pub period: String,
    /// How much of the limit is used, 0.8 and up (the larger of money and tokens).
    pub used: f64,
    /// What the budget is and has spent, in words.
    pub message: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RuleFired {
    pub rule_id: Uuid,
    pub rule: String,
    /// The event name or the trigger (`schedule`, `stale`) it fired on.
    pub on: String,
    #[serde(default)]
    pub dry_run: bool,
    /// The actions it ran (or, dry, would have run).
    pub actions: Value,
    /// The payload of the event it fired on.
    #[serde(default)]
    pub cause: Option<Value>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RuleFailed {
    pub rule_id: Uuid,
    pub rule: String,
    pub action: Value,
    pub error: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RuleCascadeStopped {
    pub rule_id: Uuid,
    pub rule: String,
    pub on: String,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WebhookDelivered {
    pub delivery_id: Uuid,
    pub url: String,
    /// The HTTP status the receiver answered.
    pub status: u16,
    pub attempt: i32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WebhookFailed {
    pub delivery_id: Uuid,
    pub url: String,
    pub attempt: i32,
    pub error: String,
    pub will_retry: bool,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn events_keep_their_wire_names_and_payloads() {
        let job = Uuid::nil();
        let moved = TaskEvent::TaskMoved(TaskMoved {
            from: "Ready".into(),
            to: "QA".into(),
            reason: None,
            rule_id: None,
            artifact_id: None,
        });
        assert_eq!(serde_json::to_value(&moved).unwrap(), json!({"type": "task.moved", "payload": {"from": "Ready", "to": "QA"}}));
        assert_eq!(moved.kind().as_str(), "task.moved");
        assert_eq!(moved.payload(), json!({"from": "Ready", "to": "QA"}));
        let stored = json!({"job_id": job, "kind": "qa", "error": "boom", "attempts": 2});
        let failed = TaskEvent::from_parts("job.failed", stored.clone()).unwrap();
        assert!(matches!(&failed, TaskEvent::JobFailed(f) if f.kind == JobKind::Qa && f.attempts == Some(2)));
        assert_eq!(failed.payload(), stored);
        assert_eq!(failed.job_id(), Some(job));
    }

    #[test]
    fn every_name_is_unique_and_parses_back() {
        for k in EventKind::ALL {
            assert_eq!(EventKind::parse(k.as_str()), Some(*k));
            assert_eq!(EventKind::ALL.iter().filter(|o| o.as_str() == k.as_str()).count(), 1);
        }
    }

    #[test]
    fn unknown_names_and_payloads_are_none_not_errors() {
        assert!(TaskEvent::from_parts("task.teleported", json!({})).is_none());
        assert!(TaskEvent::from_parts("task.moved", json!({"from": 1})).is_none());
    }

    #[test]
    fn label_changes_compare_before_and_after() {
        let ev = TaskEvent::from_parts("task.updated", json!({"changes": {"labels": {"from": ["a", "b"], "to": ["b", "c"]}}})).unwrap();
        assert_eq!(ev.label_changes(), (vec!["c"], vec!["a"]));
        let other = TaskEvent::from_parts("task.updated", json!({"changes": {"title": {"from": "x", "to": "y"}}})).unwrap();
        assert_eq!(other.label_changes(), (vec![], vec![]));
    }
}
