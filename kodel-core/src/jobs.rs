//! AI jobs: what kinds exist, the states a job goes through, the built-in job templates,
//! the artifacts a job leaves for people to decide on, and their REST DTOs.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// An enum stored and sent as text: `as_str`, `parse`, `ALL`, `TryFrom<String>` (for
/// sqlx's `try_from`) and `Display`, the names in snake_case.
macro_rules! text_enum {
    ($(#[$m:meta])* $name:ident { $($(#[$vm:meta])* $variant:ident = $text:literal,)* }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
        #[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
        #[serde(rename_all = "snake_case")]
        pub enum $name { $($(#[$vm])* $variant,)* }

        impl $name {
            pub const ALL: &'static [$name] = &[$(Self::$variant,)*];
            pub fn as_str(self) -> &'static str {
                match self { $(Self::$variant => $text,)* }
            }
            pub fn parse(s: &str) -> Option<Self> {
                Self::ALL.iter().copied().find(|v| v.as_str() == s)
            }
        }

        impl TryFrom<String> for $name {
            type Error = String;
            fn try_from(s: String) -> Result<Self, String> {
                Self::parse(&s).ok_or_else(|| format!("unknown {} {s:?}", stringify!($name)))
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}
pub(crate) use text_enum;

text_enum!(JobKind { Implement = "implement", Review = "review", Qa = "qa", Custom = "custom", });
text_enum!(
    /// pending -> running -> succeeded | failed | cancelled (running may go back to
    /// pending when its lease expires and attempts remain). running -> paused when a
    /// budget is spent; paused -> pending when it is raised or the job is resumed.
    JobState { Pending = "pending", Running = "running", Paused = "paused", Succeeded = "succeeded", Failed = "failed", Cancelled = "cancelled", }
);
text_enum!(ArtifactKind { Patch = "patch", Branch = "branch", Review = "review", TestReport = "test_report", PullRequest = "pull_request", Text = "text", });
text_enum!(ArtifactState { Pending = "pending", Approved = "approved", Rejected = "rejected", });

impl JobState {
    pub fn is_finished(self) -> bool {
        matches!(self, Self::Succeeded | Self::Failed | Self::Cancelled)
    }
}

/// The six tools an agent has, as the API's schemas name them.
#[cfg(feature = "openapi")]
#[derive(utoipa::ToSchema)]
#[schema(rename_all = "snake_case")]
#[allow(dead_code)]
enum Tool {
    ReadFile,
    WriteFile,
    EditFile,
    Bash,
    Glob,
    Grep,
}

/// The six tools an agent has.
pub const TOOLS: [&str; 6] = ["read_file", "write_file", "edit_file", "bash", "glob", "grep"];

pub const MAX_PROMPT: usize = 50_000;
pub const MAX_STEPS: i32 = 500;
pub const MAX_TIME_LIMIT_SECS: i32 = 24 * 3600;
/// How many times a job is handed to an agent before a lost lease fails it.
pub const DEFAULT_MAX_ATTEMPTS: i32 = 3;
pub const MAX_ARTIFACT_CONTENT: usize = 5_000_000;

/// A built-in job template, copied into each org (which may then edit it).
#[derive(Debug, Clone)]
pub struct TemplateDef {
    pub name: &'static str,
    pub kind: JobKind,
    pub prompt: &'static str,
    pub allowed_tools: &'static [&'static str],
    pub max_steps: i32,
    pub time_limit_secs: i32,
}

pub const BUILTIN_TEMPLATES: [TemplateDef; 3] = [
    TemplateDef {
        name: "implement-template",
        kind: JobKind::Implement,
        prompt: "Implement the task described below in the checked-out repository. Keep the change focused, \
                 follow the code's existing style, add or update tests, and run them. Finish with a short summary \
                 of what you changed and why.",
        allowed_tools: &TOOLS,
        max_steps: 100,
        time_limit_secs: 3600,
    },
    TemplateDef {
        name: "code-review-template",
        kind: JobKind::Review,
        prompt: "Review the change made for the task below. Read the diff and the code around it; check correctness, \
                 tests, security and readability against the project's review rules. Do not modify files. Report \
                 concrete findings with file and line, and say whether the change should be approved.",
        allowed_tools: &["read_file", "bash", "glob", "grep"],
        max_steps: 60,
        time_limit_secs: 1800,
    },
    TemplateDef {
        name: "qa-template",
        kind: JobKind::Qa,
        prompt: "Verify the change for the task below works: build it, run the project's test command and exercise \
                 the behaviour the task asks for. Do not modify the product code. Report what you ran, what passed \
                 and what failed.",
        allowed_tools: &["read_file", "bash", "glob", "grep"],
        max_steps: 60,
        time_limit_secs: 1800,
    },
];

pub fn builtin_template(kind: JobKind) -> Option<&'static TemplateDef> {
    BUILTIN_TEMPLATES.iter().find(|t| t.kind == kind)
}

/// Checks a template's limits and tools; the message names the bad field.
pub fn validate_template(allowed_tools: &[String], max_steps: i32, time_limit_secs: i32, budget: Option<i64>) -> Result<(), String> {
    for t in allowed_tools {
        if !TOOLS.contains(&t.as_str()) {
            return Err(format!("unknown tool {t:?}; tools are {}", TOOLS.join(", ")));
        }
    }
    if !(1..=MAX_STEPS).contains(&max_steps) {
        return Err(format!("max_steps must be between 1 and {MAX_STEPS}"));
    }
    if !(1..=MAX_TIME_LIMIT_SECS).contains(&time_limit_secs) {
        return Err(format!("time_limit_secs must be between 1 and {MAX_TIME_LIMIT_SECS}"));
    }
    if budget.is_some_and(|b| b <= 0) {
        return Err("budget_tokens must be positive".into());
    }
    Ok(())
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct JobTemplate {
    pub id: Uuid,
    pub name: String,
    pub kind: JobKind,
    pub prompt: String,
    /// `provider/model`; none = the server's default model.
    pub model: Option<String>,
    #[cfg_attr(feature = "openapi", schema(value_type = Vec<Tool>))]
    pub allowed_tools: Vec<String>,
    pub max_steps: i32,
    pub time_limit_secs: i32,
    /// Most tokens one job may spend; none = no limit.
    pub budget_tokens: Option<i64>,
    /// Which built-in default this is a copy of, if any.
    pub builtin: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CreateJobTemplate {
    pub name: String,
    pub kind: JobKind,
    #[cfg_attr(feature = "openapi", schema(max_length = 50000))]
    pub prompt: String,
    #[serde(default)]
    /// `provider/model`, e.g. `openai/gpt-4.1-mini`; absent = the server's default model.
    pub model: Option<String>,
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<Vec<Tool>>))]
    /// Default: all six tools.
    pub allowed_tools: Option<Vec<String>>,
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 500, default = 100))]
    pub max_steps: Option<i32>,
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 86400, default = 3600))]
    pub time_limit_secs: Option<i32>,
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(minimum = 1))]
    /// Most tokens one job may spend; absent = no limit.
    pub budget_tokens: Option<i64>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct UpdateJobTemplate {
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(max_length = 50000))]
    pub prompt: Option<String>,
    #[serde(default, with = "crate::api::double_option", skip_serializing_if = "Option::is_none")]
    /// `provider/model`; null = the server's default model.
    pub model: Option<Option<String>>,
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<Vec<Tool>>))]
    pub allowed_tools: Option<Vec<String>>,
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 500))]
    pub max_steps: Option<i32>,
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 86400))]
    pub time_limit_secs: Option<i32>,
    #[serde(default, with = "crate::api::double_option", skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(minimum = 1))]
    /// Null removes the limit.
    pub budget_tokens: Option<Option<i64>>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Job {
    pub id: Uuid,
    /// The task's key, `KOD-42`.
    pub task: String,
    pub kind: JobKind,
    /// The job template's name.
    pub template: String,
    pub status: JobState,
    /// The bound status the job was started for, if a binding started it.
    pub for_status: Option<String>,
    pub attempts: i32,
    pub max_attempts: i32,
    /// The agent holding the lease.
    pub agent: Option<Uuid>,
    pub lease_expires_at: Option<DateTime<Utc>>,
    pub error: Option<String>,
    pub summary: Option<String>,
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    /// Token usage reported by the agent.
    pub usage: serde_json::Value,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct StartJob {
    /// The task key.
    pub task: String,
    /// A job template's name or id.
    pub template: String,
}

/// What a finished job hands over for people to decide on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewArtifact {
    pub kind: ArtifactKind,
    #[serde(default)]
    pub title: Option<String>,
    /// The artifact itself (a diff, a review, a report)...
    #[serde(default)]
    pub content: Option<String>,
    /// ...or where it lives (a branch name, a URL).
    #[serde(default)]
    pub reference: Option<String>,
    /// The same, structured for programs: a review's verdict and findings, a test
    /// report's counts (see docs/agents.md, "Job kinds").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<serde_json::Value>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Artifact {
    pub id: Uuid,
    pub job: Uuid,
    pub task: String,
    pub kind: ArtifactKind,
    pub title: String,
    /// The artifact itself (a diff, a review, a report).
    pub content: Option<String>,
    /// Where it lives (a branch name, a URL).
    pub reference: Option<String>,
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<Object>))]
    /// The same, structured for programs: a review's verdict and findings, a test report's counts.
    pub data: Option<serde_json::Value>,
    pub status: ArtifactState,
    /// The email of who approved or rejected it.
    pub decided_by: Option<String>,
    pub decided_at: Option<DateTime<Utc>>,
    pub comment: Option<String>,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DecideArtifact {
    #[serde(default)]
    pub comment: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtins_cover_the_three_kinds_with_valid_limits() {
        for kind in [JobKind::Implement, JobKind::Review, JobKind::Qa] {
            let t = builtin_template(kind).unwrap();
            let tools: Vec<String> = t.allowed_tools.iter().map(|s| s.to_string()).collect();
            validate_template(&tools, t.max_steps, t.time_limit_secs, None).unwrap();
        }
        assert!(builtin_template(JobKind::Custom).is_none());
        // Reviewers and QA read; only implementers write.
        assert!(!builtin_template(JobKind::Review).unwrap().allowed_tools.contains(&"write_file"));
    }

    #[cfg(feature = "openapi")]
    #[test]
    fn the_tools_schema_names_the_six_tools() {
        let schema = serde_json::to_value(<Tool as utoipa::PartialSchema>::schema()).unwrap();
        assert_eq!(schema["enum"], serde_json::json!(TOOLS));
    }

    #[test]
    fn template_limits_are_checked() {
        assert!(validate_template(&["rm".into()], 10, 10, None).unwrap_err().contains("unknown tool"));
        assert!(validate_template(&[], 0, 10, None).unwrap_err().contains("max_steps"));
        assert!(validate_template(&[], 10, 0, None).unwrap_err().contains("time_limit_secs"));
        assert!(validate_template(&[], 10, 10, Some(0)).unwrap_err().contains("budget"));
        assert_eq!(JobState::parse("running"), Some(JobState::Running));
        assert!(JobState::Cancelled.is_finished() && !JobState::Running.is_finished());
    }
}
