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
