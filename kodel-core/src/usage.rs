//! LLM usage and cost: the report `GET /orgs/{org}/usage` answers and `kodel usage`
//! prints, and the org's model prices.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// How a usage report groups calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum UsageGroup {
    /// By UTC day, `2026-12-04`.
    #[default]
    Day,
    /// By project (its key); calls made outside any task have none.
    Project,
    /// By task (its key).
    Task,
    /// By `provider/model`.
    Model,
    /// By the person who called the gateway (their email); agents' calls have none.
    User,
    /// By agent (its name); people's calls have none.
    Agent,
}

impl UsageGroup {
    pub const ALL: [UsageGroup; 6] = [Self::Day, Self::Project, Self::Task, Self::Model, Self::User, Self::Agent];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Day => "day",
            Self::Project => "project",
            Self::Task => "task",
            Self::Model => "model",
            Self::User => "user",
            Self::Agent => "agent",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|g| g.as_str() == s)
    }
}

/// One group's calls.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct UsageRow {
    /// The group: a day, a project or task key, `provider/model`, an email, an agent's
    /// name; null for calls that have none (a person's call has no agent).
    pub key: Option<String>,
    pub calls: u64,
    /// Calls that failed (the provider's error, a refusal, a cancel).
    pub errors: u64,
    pub tokens_in: u64,
    pub tokens_out: u64,
    /// Input tokens read from the provider's prompt cache (part of `tokens_in`).
    pub tokens_cached: u64,
    /// US dollars.
    pub cost: f64,
    /// Calls of a model no price is known for: their cost is not in `cost`.
    pub unpriced_calls: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct UsageReport {
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    pub group_by: UsageGroup,
    /// Where the report was read: `clickhouse` or `postgres`.
    pub source: String,
    /// Ordered by key (days in order; otherwise the most expensive first).
    pub data: Vec<UsageRow>,
}

/// A model's price, US dollars per million tokens.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ModelPrice {
    /// `openai`, `anthropic`, `openrouter` or `ollama`.
    pub provider: String,
    /// The model's name as the provider spells it; a built-in price covers the names
    /// that start with it.
    pub model: String,
    pub input: f64,
    pub output: f64,
    /// Input read from the provider's prompt cache.
    pub cached: f64,
    /// `org` (set for this org) or `built_in`. Ignored on input.
    #[serde(default)]
    pub source: Option<String>,
}

/// What a budget limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum BudgetScope {
    /// Every call of the org.
    Org,
    /// The calls of jobs on the project's tasks.
    Project,
    /// The calls of the task's jobs.
    Task,
}

impl BudgetScope {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Org => "org",
            Self::Project => "project",
            Self::Task => "task",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [Self::Org, Self::Project, Self::Task].into_iter().find(|v| v.as_str() == s)
    }
}

/// Over what time a budget counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum BudgetPeriod {
    /// The calendar month (UTC); it starts again on the 1st.
    #[default]
    Month,
    /// Everything spent in the scope (counted since the server version that brought
    /// budgets), whenever the budget was set.
    Total,
}

impl BudgetPeriod {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Month => "month",
            Self::Total => "total",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [Self::Month, Self::Total].into_iter().find(|v| v.as_str() == s)
    }
}

/// A budget and what it has spent this period.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Budget {
    pub id: uuid::Uuid,
    pub scope: BudgetScope,
    /// The project's key (a project budget).
    pub project: Option<String>,
    /// The task's key (a task budget).
    pub task: Option<String>,
    pub period: BudgetPeriod,
    /// US dollars.
    pub max_cost: Option<f64>,
    pub max_tokens: Option<i64>,
    /// US dollars spent this period.
    pub spent_cost: f64,
    /// Tokens (in and out) used this period.
    pub spent_tokens: i64,
}

/// `PUT /orgs/{org}/budgets`: sets the budget of a scope and period.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SetBudget {
    pub scope: BudgetScope,
    /// The project's key, for a project budget.
    #[serde(default)]
    pub project: Option<String>,
    /// The task's key (`KOD-42`), for a task budget.
    #[serde(default)]
    pub task: Option<String>,
    #[serde(default)]
    pub period: BudgetPeriod,
    /// US dollars.
    #[serde(default)]
    pub max_cost: Option<f64>,
    #[serde(default)]
    pub max_tokens: Option<i64>,
}
