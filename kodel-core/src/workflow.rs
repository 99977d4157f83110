//! Workflow rules as pure functions: which statuses exist and which moves between them
//! are allowed. The server stores workflows; these rules decide.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StatusCategory {
    Backlog,
    Unstarted,
    Started,
    Review,
    Done,
    Cancelled,
}

impl StatusCategory {
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
};

impl WorkflowTemplate {
    /// Every allowed (from, to) pair, expanded.
    pub fn transition_pairs(&self) -> Vec<(&'static str, &'static str)> {
        match self.transitions {
            Some(t) => t.to_vec(),
            None => {
                let mut all = Vec::new();
                for a in self.statuses {
                    for b in self.statuses {
                        if a.name != b.name {
                            all.push((a.name, b.name));
                        }
                    }
                }
                all
            }
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;

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
