//! Automation rules: a trigger, conditions on the task, and actions. This module holds
//! the rule language and decides, as pure functions, whether a rule fires for an event;
//! the server loads the rules and carries out the actions.
//!
//! ```json
//! {"name": "Urgent bugs skip the backlog",
//!  "trigger": {"type": "label_added", "label": "bug"},
//!  "conditions": [{"priority": ["urgent"]}], "match": "all",
//!  "actions": [{"move": "Ready"}, {"comment": "Fast-tracked"}]}
//! ```

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::api::Priority;
use crate::events::TaskEvent;
use crate::jobs::JobKind;

pub const MAX_CONDITIONS: usize = 20;
/// Rules per project, and org-wide rules per org.
pub const MAX_RULES: i64 = 200;
pub const MAX_ACTIONS: usize = 20;
pub const MAX_PATTERN: usize = 500;
/// How deep a chain of rules firing rules may go before it is stopped.
pub const MAX_CASCADE_DEPTH: u32 = 5;

/// What fires a rule, tagged by `type`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum Trigger {
    TaskCreated,
    /// A move; `from`/`to` narrow it to those statuses (names, any case).
    StatusChanged {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        from: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        to: Option<String>,
    },
    CommentAdded,
    LabelAdded {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        label: Option<String>,
    },
    LabelRemoved {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        label: Option<String>,
    },
    AssigneeChanged,
    JobSucceeded {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        kind: Option<JobKind>,
    },
    JobFailed {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        kind: Option<JobKind>,
    },
    ArtifactApproved,
    ArtifactRejected,
    /// A budget that applies to the task reached 80 % (`scope`: `org`, `project` or
    /// `task` narrows it).
    BudgetWarning {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        scope: Option<String>,
    },
    /// A cron expression (five fields, UTC): the actions run on every task that meets
    /// the conditions.
    Schedule { cron: String },
    /// A task untouched for this many hours (fires once per quiet spell).
    Stale {
        #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 8760))]
        hours: u32,
    },
}

impl Trigger {
    /// The name stored beside the rule so a change loads only rules it can fire.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::TaskCreated => "task_created",
            Self::StatusChanged { .. } => "status_changed",
            Self::CommentAdded => "comment_added",
            Self::LabelAdded { .. } => "label_added",
            Self::LabelRemoved { .. } => "label_removed",
            Self::AssigneeChanged => "assignee_changed",
            Self::JobSucceeded { .. } => "job_succeeded",
            Self::JobFailed { .. } => "job_failed",
            Self::ArtifactApproved => "artifact_approved",
            Self::ArtifactRejected => "artifact_rejected",
            Self::BudgetWarning { .. } => "budget_warning",
            Self::Schedule { .. } => "schedule",
            Self::Stale { .. } => "stale",
        }
    }

    /// Whether this trigger fires for a task event.
    pub fn fires_on(&self, event: &TaskEvent) -> bool {
        let same = |want: &Option<String>, got: &str| want.as_deref().is_none_or(|w| got.eq_ignore_ascii_case(w.trim()));
        let label_change = |label: &Option<String>, added: bool| {
            let (plus, minus) = event.label_changes();
            let changed = if added { plus } else { minus };
            changed.iter().any(|l| label.as_deref().is_none_or(|w| w == *l))
        };
        let job_kind = |want: &Option<JobKind>, got: JobKind| want.is_none_or(|k| k == got);
        match (self, event) {
            (Self::TaskCreated, TaskEvent::TaskCreated(_)) => true,
            (Self::StatusChanged { from, to }, TaskEvent::TaskMoved(m)) => same(from, &m.from) && same(to, &m.to),
            (Self::CommentAdded, TaskEvent::CommentAdded(_)) => true,
            (Self::LabelAdded { label }, TaskEvent::TaskUpdated(_)) => label_change(label, true),
            (Self::LabelRemoved { label }, TaskEvent::TaskUpdated(_)) => label_change(label, false),
            (Self::AssigneeChanged, TaskEvent::TaskUpdated(u)) => u.changes.contains_key("assignee"),
            (Self::JobSucceeded { kind }, TaskEvent::JobSucceeded(j)) => job_kind(kind, j.kind),
            (Self::JobFailed { kind }, TaskEvent::JobFailed(j)) => job_kind(kind, j.kind),
            (Self::ArtifactApproved, TaskEvent::ArtifactApproved(_)) => true,
            (Self::ArtifactRejected, TaskEvent::ArtifactRejected(_)) => true,
            (Self::BudgetWarning { scope }, TaskEvent::BudgetWarning(w)) => same(scope, &w.scope),
            _ => false,
        }
    }
}

/// The trigger kinds an event can fire, so only those rules are loaded.
pub fn trigger_kinds(event: &TaskEvent) -> Vec<&'static str> {
    match event {
        TaskEvent::TaskCreated(_) => vec!["task_created"],
        TaskEvent::TaskMoved(_) => vec!["status_changed"],
        TaskEvent::CommentAdded(_) => vec!["comment_added"],
        TaskEvent::JobSucceeded(_) => vec!["job_succeeded"],
        TaskEvent::JobFailed(_) => vec!["job_failed"],
        TaskEvent::ArtifactApproved(_) => vec!["artifact_approved"],
        TaskEvent::ArtifactRejected(_) => vec!["artifact_rejected"],
        TaskEvent::BudgetWarning(_) => vec!["budget_warning"],
        TaskEvent::TaskUpdated(u) => {
            let mut kinds = Vec::new();
            let (added, removed) = event.label_changes();
            if !added.is_empty() {
                kinds.push("label_added");
            }
            if !removed.is_empty() {
                kinds.push("label_removed");
            }
            if u.changes.contains_key("assignee") {
                kinds.push("assignee_changed");
            }
            kinds
        }
        _ => Vec::new(),
    }
}

/// Whether all conditions must hold, or any one.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum Match {
    #[default]
    All,
    Any,
}

/// A condition on the task: an object with exactly one key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum Condition {
    /// The task's status is one of these.
    Status(Vec<String>),
    /// The task has this label.
    Label(String),
    /// The task does not have this label.
    NoLabel(String),
    /// The task's priority is one of these.
    Priority(Vec<Priority>),
    /// An email, `none` (unassigned) or `any` (assigned to someone).
    Assignee(String),
    /// A regular expression searched in the title.
    TitleMatches(String),
    /// A regular expression searched in the description.
    DescriptionMatches(String),
}

/// What a rule does: an object with exactly one key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum Action {
    /// Move the task to this status (the workflow must allow it).
    Move(String),
    /// Assign to this email; null unassigns.
    Assign(Option<String>),
    AddLabel(String),
    RemoveLabel(String),
    SetPriority(Priority),
    Comment(String),
    /// Start a job from this template (name).
    StartJob(String),
    Webhook(Webhook),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Webhook {
    /// An http(s) URL.
    pub url: String,
    #[serde(default = "default_webhook_attempts")]
    #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 20, default = 5))]
    pub max_attempts: u32,
}

fn default_webhook_attempts() -> u32 {
    5
}

/// What a condition looks at.
#[derive(Debug, Clone)]
pub struct TaskFacts<'a> {
    pub status: &'a str,
    pub labels: &'a [String],
    pub priority: Priority,
    pub assignee: Option<&'a str>,
    pub title: &'a str,
    pub description: &'a str,
}

/// Whether the conditions hold; `regex(pattern, text)` searches a pattern (the server
/// caches compiled patterns). No conditions always hold.
pub fn conditions_hold(how: Match, conditions: &[Condition], task: &TaskFacts<'_>, regex: &dyn Fn(&str, &str) -> bool) -> bool {
    let holds = |c: &Condition| match c {
        Condition::Status(any) => any.iter().any(|s| s.trim().eq_ignore_ascii_case(task.status)),
        Condition::Label(l) => task.labels.iter().any(|x| x == l),
        Condition::NoLabel(l) => !task.labels.iter().any(|x| x == l),
        Condition::Priority(any) => any.contains(&task.priority),
        Condition::Assignee(who) => match who.trim() {
            "none" => task.assignee.is_none(),
            "any" => task.assignee.is_some(),
            email => task.assignee.is_some_and(|a| a.eq_ignore_ascii_case(email)),
        },
        Condition::TitleMatches(p) => regex(p, task.title),
        Condition::DescriptionMatches(p) => regex(p, task.description),
    };
    if conditions.is_empty() {
        return true;
    }
    match how {
        Match::All => conditions.iter().all(holds),
        Match::Any => conditions.iter().any(holds),
    }
}

/// A rule as the API shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Rule {
    pub id: Uuid,
    /// The project key; none = every project of the org.
    pub project: Option<String>,
    pub name: String,
    pub enabled: bool,
    /// A dry-run rule records what it would do and changes nothing.
    pub dry_run: bool,
    #[serde(flatten)]
    pub spec: RuleSpec,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// The stored part of a rule: what fires it, when it applies, what it does.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RuleSpec {
    pub trigger: Trigger,
    #[serde(default)]
    pub conditions: Vec<Condition>,
    #[serde(default, rename = "match")]
    pub how: Match,
    pub actions: Vec<Action>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CreateRule {
    pub name: String,
    #[serde(default)]
    /// A project key (tech lead+); absent = org-wide (org admin).
    pub project: Option<String>,
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(default = true))]
    pub enabled: Option<bool>,
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(default = false))]
    /// A dry-run rule records what it would do and changes nothing.
    pub dry_run: Option<bool>,
    pub trigger: Trigger,
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(max_items = 20))]
    pub conditions: Vec<Condition>,
    #[serde(default, rename = "match")]
    pub how: Match,
    #[cfg_attr(feature = "openapi", schema(min_items = 1, max_items = 20))]
    pub actions: Vec<Action>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct UpdateRule {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub enabled: Option<bool>,
    #[serde(default)]
    pub dry_run: Option<bool>,
    #[serde(default)]
    pub trigger: Option<Trigger>,
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(max_items = 20))]
    pub conditions: Option<Vec<Condition>>,
    #[serde(default, rename = "match")]
    pub how: Option<Match>,
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(min_items = 1, max_items = 20))]
    pub actions: Option<Vec<Action>>,
}

/// Checks a rule before it is stored: sizes, cron syntax (by `cron_ok`), patterns (by
/// `pattern_ok`), webhook URLs. The message names what is wrong.
pub fn validate(spec: &RuleSpec, cron_ok: &dyn Fn(&str) -> Result<(), String>, pattern_ok: &dyn Fn(&str) -> Result<(), String>) -> Result<(), String> {
    if spec.actions.is_empty() {
        return Err("a rule needs at least one action".into());
    }
    if spec.actions.len() > MAX_ACTIONS || spec.conditions.len() > MAX_CONDITIONS {
        return Err(format!("at most {MAX_CONDITIONS} conditions and {MAX_ACTIONS} actions"));
    }
    match &spec.trigger {
        Trigger::Schedule { cron } => cron_ok(cron).map_err(|e| format!("cron {cron:?}: {e}"))?,
        Trigger::Stale { hours } if *hours == 0 || *hours > 24 * 365 => {
            return Err("stale hours must be between 1 and 8760".into());
        }
        _ => {}
    }
    for c in &spec.conditions {
        if let Condition::TitleMatches(p) | Condition::DescriptionMatches(p) = c {
            if p.len() > MAX_PATTERN {
                return Err(format!("patterns are at most {MAX_PATTERN} bytes"));
            }
            pattern_ok(p).map_err(|e| format!("pattern {p:?}: {e}"))?;
        }
    }
    for a in &spec.actions {
        match a {
            Action::Webhook(w) => {
                if !(w.url.starts_with("http://") || w.url.starts_with("https://")) || w.url.len() > 2000 {
                    return Err(format!("webhook url {:?} must be an http(s) URL", w.url));
                }
                if !(1..=20).contains(&w.max_attempts) {
                    return Err("webhook max_attempts must be between 1 and 20".into());
                }
            }
            Action::Comment(text) if text.trim().is_empty() || text.len() > crate::api::MAX_COMMENT => {
                return Err("comment actions need a text of at most 100000 bytes".into());
            }
            Action::Move(s) | Action::AddLabel(s) | Action::RemoveLabel(s) | Action::StartJob(s) if s.trim().is_empty() => {
                return Err("action arguments must not be empty".into());
            }
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn facts<'a>(labels: &'a [String]) -> TaskFacts<'a> {
        TaskFacts { status: "QA", labels, priority: Priority::High, assignee: Some("ann@x.io"), title: "Fix login bug", description: "" }
    }

    fn contains(p: &str, t: &str) -> bool {
        t.contains(p)
    }

    #[test]
    fn triggers_fire_on_their_events_only() {
        let ev = |name: &str, payload: Value| TaskEvent::from_parts(name, payload).unwrap();
        let moved = ev("task.moved", json!({"from": "In Progress", "to": "Code Review"}));
        assert!(Trigger::StatusChanged { from: None, to: Some("code review".into()) }.fires_on(&moved));
        assert!(!Trigger::StatusChanged { from: Some("QA".into()), to: None }.fires_on(&moved));
        assert!(!Trigger::TaskCreated.fires_on(&moved));
        let labels = ev("task.updated", json!({"changes": {"labels": {"from": ["a"], "to": ["a", "bug"]}}}));
        assert!(Trigger::LabelAdded { label: Some("bug".into()) }.fires_on(&labels));
        assert!(!Trigger::LabelAdded { label: Some("a".into()) }.fires_on(&labels));
        assert!(!Trigger::LabelRemoved { label: None }.fires_on(&labels));
        assert_eq!(trigger_kinds(&labels), vec!["label_added"]);
        let job = ev("job.failed", json!({"job_id": Uuid::nil(), "kind": "review", "error": "x"}));
        assert!(Trigger::JobFailed { kind: Some(JobKind::Review) }.fires_on(&job));
        assert!(!Trigger::JobFailed { kind: Some(JobKind::Qa) }.fires_on(&job));
        assert!(!Trigger::JobSucceeded { kind: None }.fires_on(&job));
        let assignee = ev("task.updated", json!({"changes": {"assignee": {"from": null, "to": "a"}}}));
        assert_eq!(trigger_kinds(&assignee), vec!["assignee_changed"]);
    }

    #[test]
    fn conditions_all_and_any() {
        let labels = vec!["bug".to_string()];
        let f = facts(&labels);
        let conds = [Condition::Label("bug".into()), Condition::Priority(vec![Priority::Urgent])];
        assert!(!conditions_hold(Match::All, &conds, &f, &contains));
        assert!(conditions_hold(Match::Any, &conds, &f, &contains));
        assert!(conditions_hold(Match::All, &[], &f, &contains));
        assert!(conditions_hold(Match::All, &[Condition::Status(vec!["qa".into()]), Condition::Assignee("any".into())], &f, &contains));
        assert!(!conditions_hold(Match::All, &[Condition::Assignee("none".into())], &f, &contains));
        assert!(conditions_hold(Match::All, &[Condition::TitleMatches("login".into()), Condition::NoLabel("wip".into())], &f, &contains));
    }

    #[test]
    fn rules_parse_from_their_documented_json_and_are_validated() {
        let spec: RuleSpec = serde_json::from_value(json!({
            "trigger": {"type": "label_added", "label": "bug"},
            "conditions": [{"priority": ["urgent"]}], "match": "all",
            "actions": [{"move": "Ready"}, {"comment": "Fast-tracked"}, {"webhook": {"url": "http://127.0.0.1:9/x"}}]
        }))
        .unwrap();
        assert_eq!(spec.actions[2], Action::Webhook(Webhook { url: "http://127.0.0.1:9/x".into(), max_attempts: 5 }));
        let ok = |_: &str| Ok(());
        assert!(validate(&spec, &ok, &ok).is_ok());
        let mut bad = spec.clone();
        bad.actions = vec![Action::Webhook(Webhook { url: "file:///etc/passwd".into(), max_attempts: 1 })];
        assert!(validate(&bad, &ok, &ok).unwrap_err().contains("http"));
        bad.actions.clear();
        assert!(validate(&bad, &ok, &ok).unwrap_err().contains("at least one action"));
        let typo = serde_json::from_value::<RuleSpec>(json!({"trigger": {"type": "task_created"}, "actions": [{"mvoe": "x"}]}));
        assert!(typo.is_err());
    }
}
