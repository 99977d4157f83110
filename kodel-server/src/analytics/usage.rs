//! The usage report: an org's LLM calls over a time range, grouped by day, project,
//! task, model, user or agent. Read from ClickHouse when it is configured, from the
//! PostgreSQL outbox otherwise; the two queries are written to give the same answer on
//! the same rows (a test compares them), and keys are named (project and task keys,
//! emails, agent names) from the org's schema afterwards either way.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use kodel_core::usage::{UsageGroup, UsageRow};
use sqlx::PgPool;
use uuid::Uuid;

use super::clickhouse::ClickHouse;
use crate::db::OrgTx;
use crate::error::{ApiError, ApiResult};

/// A group's sums, keyed by the stored value (an id, a day, `provider/model`; empty for
/// calls that have none).
#[derive(Debug, Clone, PartialEq, Eq, clickhouse::Row, serde::Deserialize)]
pub struct Sums {
    pub key: String,
    pub calls: u64,
    pub errors: u64,
    pub tokens_in: u64,
    pub tokens_out: u64,
    pub tokens_cached: u64,
    pub cost_micros: i64,
    pub unpriced_calls: u64,
}

/// The range, whole seconds: ClickHouse keeps seconds, so PostgreSQL compares the
/// same.
#[derive(Debug, Clone, Copy)]
pub struct Range {
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
}

fn clickhouse_key(group: UsageGroup) -> &'static str {
    match group {
        UsageGroup::Day => "toString(toDate(at))",
        UsageGroup::Project => "project_id",
        UsageGroup::Task => "task_id",
        UsageGroup::Model => "concat(provider, '/', model)",
        UsageGroup::User => "user_id",
        UsageGroup::Agent => "agent_id",
    }
}

fn postgres_key(group: UsageGroup) -> &'static str {
    match group {
        UsageGroup::Day => "to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD')",
        UsageGroup::Project => "coalesce(payload->>'project_id', '')",
        UsageGroup::Task => "coalesce(payload->>'task_id', '')",
        UsageGroup::Model => "coalesce(payload->>'provider', '') || '/' || coalesce(payload->>'model', '')",
        UsageGroup::User => "coalesce(payload->>'user_id', '')",
        UsageGroup::Agent => "coalesce(payload->>'agent_id', '')",
    }
}

/// The ClickHouse report query (values bound with `?`: org id, from, to).
pub fn clickhouse_sql(group: UsageGroup) -> String {
    format!(
        "SELECT {key} AS key, count() AS calls, countIf(status != 'ok') AS errors,
                sum(input_tokens) AS tokens_in, sum(output_tokens) AS tokens_out, sum(cached_tokens) AS tokens_cached,
                sum(cost_micros) AS cost_micros, countIf(priced = 0) AS unpriced_calls
         FROM llm_calls FINAL
         WHERE org_id = ? AND at >= toDateTime(?) AND at < toDateTime(?)
         GROUP BY key",
        key = clickhouse_key(group)
    )
}

pub async fn from_clickhouse(ch: &ClickHouse, org_id: Uuid, range: Range, group: UsageGroup) -> anyhow::Result<Vec<Sums>> {
    let query = ch
        .client()
        .query(&clickhouse_sql(group))
        .bind(org_id.to_string())
        .bind(range.from.timestamp().clamp(0, u32::MAX as i64) as u32)
        .bind(range.to.timestamp().clamp(0, u32::MAX as i64) as u32);
    super::clickhouse::bounded("the usage report", async { Ok(query.fetch_all::<Sums>().await?) }).await
}

pub async fn from_postgres(pool: &PgPool, org_id: Uuid, range: Range, group: UsageGroup) -> ApiResult<Vec<Sums>> {
    let sql = format!(
        "SELECT {key} AS key, count(*) AS calls, count(*) FILTER (WHERE payload->>'status' <> 'ok') AS errors,
                coalesce(sum((payload->>'input_tokens')::bigint), 0)::bigint AS tokens_in,
                coalesce(sum((payload->>'output_tokens')::bigint), 0)::bigint AS tokens_out,
                coalesce(sum((payload->>'cached_tokens')::bigint), 0)::bigint AS tokens_cached,
                coalesce(sum((payload->>'cost_micros')::bigint), 0)::bigint AS cost_micros,
                count(*) FILTER (WHERE NOT coalesce((payload->>'priced')::boolean, false)) AS unpriced_calls
         FROM analytics_outbox
         WHERE org_id = $1 AND kind = 'llm_call' AND created_at >= $2 AND created_at < $3
         GROUP BY 1",
        key = postgres_key(group)
    );
    type Raw = (String, i64, i64, i64, i64, i64, i64, i64);
    let rows: Vec<Raw> = sqlx::query_as(&sql).bind(org_id).bind(range.from).bind(range.to).fetch_all(pool).await?;
    let u = |n: i64| n.max(0) as u64;
    Ok(rows
        .into_iter()
        .map(|(key, calls, errors, tokens_in, tokens_out, tokens_cached, cost_micros, unpriced)| Sums {
            key,
            calls: u(calls),
            errors: u(errors),
            tokens_in: u(tokens_in),
            tokens_out: u(tokens_out),
            tokens_cached: u(tokens_cached),
            cost_micros,
            unpriced_calls: u(unpriced),
        })
        .collect())
}

/// Orders the groups (days in order, else the most expensive first) and names their
/// keys: project and task keys, emails, agent names. An id nothing names any more (a
/// deleted agent) stays as it is.
pub async fn named(db: &mut OrgTx, group: UsageGroup, mut sums: Vec<Sums>) -> ApiResult<Vec<UsageRow>> {
    let ids: Vec<Uuid> = sums.iter().filter_map(|s| s.key.parse().ok()).collect();
    let sql = match group {
        UsageGroup::Day | UsageGroup::Model => None,
        UsageGroup::Project => Some("SELECT id, key FROM projects WHERE id = ANY($1)"),
        UsageGroup::Task => Some("SELECT t.id, p.key || '-' || t.number FROM tasks t JOIN projects p ON p.id = t.project_id WHERE t.id = ANY($1)"),
        UsageGroup::User => Some("SELECT id, email FROM public.users WHERE id = ANY($1)"),
        UsageGroup::Agent => Some("SELECT id, name FROM agents WHERE id = ANY($1)"),
    };
    let names: HashMap<String, String> = match sql {
        Some(sql) if !ids.is_empty() => {
            let rows: Vec<(Uuid, String)> = sqlx::query_as(sql).bind(&ids).fetch_all(db.conn()).await?;
            rows.into_iter().map(|(id, name)| (id.to_string(), name)).collect()
        }
        _ => HashMap::new(),
    };
    if group == UsageGroup::Day {
        sums.sort_by(|a, b| a.key.cmp(&b.key));
    } else {
        sums.sort_by(|a, b| b.cost_micros.cmp(&a.cost_micros).then(b.calls.cmp(&a.calls)).then(a.key.cmp(&b.key)));
    }
    Ok(sums
        .into_iter()
        .map(|s| UsageRow {
            key: (!s.key.is_empty()).then(|| names.get(&s.key).cloned().unwrap_or(s.key)),
            calls: s.calls,
            errors: s.errors,
            tokens_in: s.tokens_in,
            tokens_out: s.tokens_out,
            tokens_cached: s.tokens_cached,
            cost: s.cost_micros as f64 / 1_000_000.0,
            unpriced_calls: s.unpriced_calls,
        })
        .collect())
}

/// ClickHouse is configured and does not answer.
pub fn unavailable(e: &anyhow::Error) -> ApiError {
    tracing::warn!(error = %format!("{e:#}"), "the usage report cannot read ClickHouse");
    ApiError::new(kodel_core::ErrorCode::AnalyticsUnavailable, "ClickHouse, where usage is kept, does not answer; try again shortly")
        .with_details(serde_json::json!({ "retry_after_secs": 5 }))
}
