//! LLM usage and cost: the report `GET /orgs/{org}/usage` answers and `kodel usage`
//! prints, and the org's model prices.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::jobs::text_enum;

text_enum!(
    /// How a usage report groups calls.
    #[derive(Default)]
    UsageGroup {
        /// By UTC day, `2026-12-04`.
        #[default]
        Day = "day",
        /// By project (its key); calls made outside any task have none.
        Project = "project",
        /// By task (its key).
        Task = "task",
        /// By `provider/model`.
        Model = "model",
        /// By the person who called the gateway (their email); agents' calls have none.
        User = "user",
        /// By agent (its name); people's calls have none.
        Agent = "agent",
    }
);

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

text_enum!(
    /// What a budget limits.
    BudgetScope {
        /// Every call of the org.
        Org = "org",
        /// The calls of jobs on the project's tasks.
        Project = "project",
        /// The calls of the task's jobs.
        Task = "task",
    }
);

text_enum!(
    /// Over what time a budget counts.
    #[derive(Default)]
    BudgetPeriod {
        /// The calendar month (UTC); it starts again on the 1st.
        #[default]
        Month = "month",
        /// Everything spent in the scope (counted since the server version that brought
        /// budgets), whenever the budget was set.
        Total = "total",
    }
);

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
