//! Workflow rules as pure functions: which statuses exist and which moves between them
//! are allowed. The server stores workflows; these rules decide.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum StatusCategory {
    Backlog,
    Unstarted,
    Started,
    Review,
    Done,
    Cancelled,
}

impl StatusCategory {
    pub const ALL: [StatusCategory; 6] =
        [Self::Backlog, Self::Unstarted, Self::Started, Self::Review, Self::Done, Self::Cancelled];

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.as_str() == s)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Backlog => "backlog",
            Self::Unstarted => "unstarted",
            Self::Started => "started",
            Self::Review => "review",
            Self::Done => "done",
            Self::Cancelled => "cancelled",
        }
    }
}

/// A status as the built-in templates define it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusDef {
    pub name: &'static str,
    pub category: StatusCategory,
}

/// A built-in workflow template.
#[derive(Debug, Clone)]
pub struct WorkflowTemplate {
    pub slug: &'static str,
    pub name: &'static str,
    pub statuses: &'static [StatusDef],
    /// Allowed moves as (from, to) names; `None` means every move between two
    /// different statuses is allowed.
    pub transitions: Option<&'static [(&'static str, &'static str)]>,
    pub bindings: &'static [BindingDef],
}

/// Entering `status` starts a job of `kind` (from the built-in template of that kind);
/// approving its artifact moves the task to `next`, rejecting it to `back`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BindingDef {
    pub status: &'static str,
    pub kind: crate::jobs::JobKind,
    pub next: &'static str,
    pub back: &'static str,
}

pub const KANBAN: WorkflowTemplate = WorkflowTemplate {
    slug: "kanban",
    name: "Kanban",
    statuses: &[
        StatusDef { name: "To Do", category: StatusCategory::Unstarted },
        StatusDef { name: "In Progress", category: StatusCategory::Started },
        StatusDef { name: "Done", category: StatusCategory::Done },
    ],
    transitions: None,
    bindings: &[],
};

pub const SOFTWARE_DEVELOPMENT: WorkflowTemplate = WorkflowTemplate {
    slug: "software-development",
    name: "Software Development",
    statuses: &[
        StatusDef { name: "Backlog", category: StatusCategory::Backlog },
        StatusDef { name: "Ready", category: StatusCategory::Unstarted },
        StatusDef { name: "In Progress", category: StatusCategory::Started },
        StatusDef { name: "Code Review", category: StatusCategory::Review },
        StatusDef { name: "QA", category: StatusCategory::Review },
        StatusDef { name: "Staging", category: StatusCategory::Started },
        StatusDef { name: "Done", category: StatusCategory::Done },
    ],
    transitions: Some(&[
        ("Backlog", "Ready"),
        ("Ready", "Backlog"),
        ("Ready", "In Progress"),
        ("In Progress", "Ready"),
        ("In Progress", "Code Review"),
        ("Code Review", "In Progress"),
        ("Code Review", "QA"),
        ("QA", "In Progress"),
        ("QA", "Staging"),
        ("Staging", "QA"),
        ("Staging", "Done"),
        ("Done", "In Progress"),
    ]),
    bindings: &[
        BindingDef { status: "In Progress", kind: crate::jobs::JobKind::Implement, next: "Code Review", back: "Ready" },
        BindingDef { status: "Code Review", kind: crate::jobs::JobKind::Review, next: "QA", back: "In Progress" },
        BindingDef { status: "QA", kind: crate::jobs::JobKind::Qa, next: "Staging", back: "In Progress" },
    ],
};

pub const TEMPLATES: [&WorkflowTemplate; 2] = [&SOFTWARE_DEVELOPMENT, &KANBAN];

/// A built-in template by its slug (`software-development`, `kanban`).
pub fn template(slug: &str) -> Option<&'static WorkflowTemplate> {
    TEMPLATES.into_iter().find(|t| t.slug == slug)
}

impl WorkflowTemplate {
    /// Every allowed (from, to) pair, expanded.
    pub fn transition_pairs(&self) -> Vec<(&'static str, &'static str)> {
        match self.transitions {
            Some(t) => t.to_vec(),
            None => every_move(&self.statuses.iter().map(|s| s.name).collect::<Vec<_>>()),
        }
    }
}

/// Every move between two different statuses (a workflow without a transitions list).
pub fn every_move<'a>(names: &[&'a str]) -> Vec<(&'a str, &'a str)> {
    names.iter().flat_map(|a| names.iter().filter(move |b| a != *b).map(move |b| (*a, *b))).collect()
}

/// A move that the workflow refuses, with where the task may go instead.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot move from {from:?} to {to:?}; allowed: {}", allowed.join(", "))]
pub struct TransitionRefused {
    pub from: String,
    pub to: String,
    pub allowed: Vec<String>,
}

/// Decides a move given the workflow's allowed (from, to) pairs.
pub fn check_transition<'a>(
    pairs: impl IntoIterator<Item = (&'a str, &'a str)>,
    from: &str,
    to: &str,
) -> Result<(), TransitionRefused> {
    let allowed: Vec<String> = pairs
        .into_iter()
        .filter(|(f, _)| *f == from)
        .map(|(_, t)| t.to_owned())
        .collect();
    if allowed.iter().any(|t| t == to) {
        Ok(())
    } else {
        Err(TransitionRefused { from: from.to_owned(), to: to.to_owned(), allowed })
    }
}

/// What is wrong with a workflow definition, checked before anything is stored.
pub fn validate_definition(statuses: &[&str], transitions: &[(&str, &str)]) -> Result<(), String> {
    if statuses.is_empty() {
        return Err("a workflow needs at least one status".into());
    }
    let mut seen = std::collections::HashSet::new();
    for s in statuses {
        let name = s.trim();
        if name.is_empty() || name.chars().count() > 64 {
            return Err(format!("status name {s:?} must be 1 to 64 characters"));
        }
        if !seen.insert(name.to_lowercase()) {
            return Err(format!("status {name:?} appears twice"));
        }
    }
    for (from, to) in transitions {
        for end in [from, to] {
            if !seen.contains(&end.trim().to_lowercase()) {
                return Err(format!("transition {from:?} -> {to:?} names an unknown status {end:?}"));
            }
        }
        if from.trim().eq_ignore_ascii_case(to.trim()) {
            return Err(format!("transition {from:?} -> {to:?} goes nowhere"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn software_development_walks_from_backlog_to_done() {
        let pairs = SOFTWARE_DEVELOPMENT.transition_pairs();
        let path = ["Backlog", "Ready", "In Progress", "Code Review", "QA", "Staging", "Done"];
        for w in path.windows(2) {
            assert!(check_transition(pairs.iter().copied(), w[0], w[1]).is_ok(), "{} -> {}", w[0], w[1]);
        }
        // No skipping review.
        let err = check_transition(pairs.iter().copied(), "In Progress", "Done").unwrap_err();
        assert_eq!(err.allowed, vec!["Ready", "Code Review"]);
        // Every binding's approve and reject moves are allowed transitions.
        for b in SOFTWARE_DEVELOPMENT.bindings {
            assert!(check_transition(pairs.iter().copied(), b.status, b.next).is_ok(), "{b:?}");
            assert!(check_transition(pairs.iter().copied(), b.status, b.back).is_ok(), "{b:?}");
        }
        assert_eq!(template("software-development").map(|t| t.name), Some("Software Development"));
        assert!(template("scrum").is_none());
    }

    #[test]
    fn definitions_are_checked() {
        assert!(validate_definition(&["A", "B"], &[("A", "B")]).is_ok());
        assert!(validate_definition(&[], &[]).unwrap_err().contains("at least one"));
        assert!(validate_definition(&["A", "a"], &[]).unwrap_err().contains("twice"));
        assert!(validate_definition(&["A"], &[("A", "C")]).unwrap_err().contains("unknown status"));
        assert!(validate_definition(&["A", "B"], &[("A", "a")]).unwrap_err().contains("nowhere"));
        assert!(validate_definition(&[" "], &[]).is_err());
    }

    #[test]
    fn kanban_allows_every_move_but_to_itself() {
        let pairs = KANBAN.transition_pairs();
        assert_eq!(pairs.len(), 6);
        assert!(check_transition(pairs.iter().copied(), "To Do", "Done").is_ok());
        assert!(check_transition(pairs.iter().copied(), "Done", "To Do").is_ok());
        let err = check_transition(pairs.iter().copied(), "Done", "Done").unwrap_err();
        assert_eq!(err.allowed, vec!["To Do", "In Progress"]);
    }

    #[test]
    fn restricted_pairs_list_the_allowed_targets() {
        let pairs = [("A", "B"), ("B", "C")];
        let err = check_transition(pairs, "A", "C").unwrap_err();
        assert_eq!(err.allowed, vec!["B"]);
        assert!(err.to_string().contains("allowed: B"));
    }
}
