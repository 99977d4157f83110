//! Moves outbox rows into ClickHouse, oldest first, in batches: read a batch (locked,
//! so replicas ship different rows), insert it, mark it shipped, commit. ClickHouse
//! down or slow: the rows wait in the outbox and the shipper tries again, backing off
//! to `MAX_BACKOFF`; a restart goes on from the first unshipped row. A crash after the
//! insert and before the mark ships the batch again, which ClickHouse's tables fold
//! into one (see `clickhouse`). Shipped rows leave PostgreSQL after the retention.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::PgPool;

use super::clickhouse::{ClickHouse, JobEventRow, LlmCallRow};

/// Rows per batch: one insert each way and one update.
pub const BATCH: i64 = 20_000;
/// How long the shipper waits when the outbox is empty.
const IDLE: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// How often shipped rows past the retention are deleted.
const PRUNE_EVERY: Duration = Duration::from_secs(600);

#[derive(sqlx::FromRow)]
struct OutboxRow {
    id: i64,
    kind: String,
    payload: sqlx::types::Json<Value>,
    created_at: DateTime<Utc>,
}

/// Ships one batch. Returns how many outbox rows it marked shipped.
pub async fn ship_once(pool: &PgPool, ch: &ClickHouse) -> anyhow::Result<usize> {
    let mut tx = crate::db::begin(pool).await?;
    let rows: Vec<OutboxRow> = sqlx::query_as(
        "SELECT id, kind, payload, created_at FROM analytics_outbox WHERE shipped_at IS NULL ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED",
    )
    .bind(BATCH)
    .fetch_all(&mut *tx)
    .await?;
    if rows.is_empty() {
        return Ok(0);
    }
    let (calls, events) = split(&rows);
    ch.insert("llm_calls", &calls).await?;
    ch.insert("job_events", &events).await?;
    let ids: Vec<i64> = rows.iter().map(|r| r.id).collect();
    sqlx::query("UPDATE analytics_outbox SET shipped_at = now() WHERE id = ANY($1)").bind(&ids).execute(&mut *tx).await?;
    tx.commit().await?;
    Ok(rows.len())
}

/// The ClickHouse rows of a batch. A kind this version does not know is marked
/// shipped with the rest (a newer replica's row: it ships its own kinds).
fn split(rows: &[OutboxRow]) -> (Vec<LlmCallRow>, Vec<JobEventRow>) {
    let (mut calls, mut events) = (Vec::new(), Vec::new());
    for r in rows {
        let p = &r.payload.0;
        let text = |k: &str| p[k].as_str().unwrap_or_default().to_owned();
        let small = |k: &str| p[k].as_u64().map(|v| v.min(u32::MAX as u64) as u32);
        let at = r.created_at.timestamp().clamp(0, u32::MAX as i64) as u32;
        let id = r.id as u64;
        match r.kind.as_str() {
            "llm_call" => calls.push(LlmCallRow {
                id,
                at,
                org_id: text("org_id"),
                org: text("org"),
                project_id: text("project_id"),
                task_id: text("task_id"),
                job_id: text("job_id"),
                agent_id: text("agent_id"),
                user_id: text("user_id"),
                provider: text("provider"),
                model: text("model"),
                input_tokens: p["input_tokens"].as_u64().unwrap_or(0),
                output_tokens: p["output_tokens"].as_u64().unwrap_or(0),
                cached_tokens: p["cached_tokens"].as_u64().unwrap_or(0),
                usage_estimated: p["usage_estimated"].as_bool().unwrap_or(false).into(),
                cost_micros: p["cost_micros"].as_i64().unwrap_or(0),
                priced: p["priced"].as_bool().unwrap_or(false).into(),
                first_token_ms: small("first_token_ms"),
                total_ms: small("total_ms").unwrap_or(0),
                status: text("status"),
                error: text("error"),
            }),
            "job_event" => events.push(JobEventRow {
                id,
                at,
                org_id: text("org_id"),
                org: text("org"),
                project_id: text("project_id"),
                task_id: text("task_id"),
                job_id: text("job_id"),
                agent_id: text("agent_id"),
                job_kind: text("job_kind"),
                event: text("event"),
                state: text("state"),
                attempt: small("attempt").unwrap_or(0),
                duration_ms: p["duration_ms"].as_u64(),
                steps: small("steps").unwrap_or(0),
            }),
            _ => {}
        }
    }
    (calls, events)
}

/// Outbox rows not shipped yet.
pub async fn backlog(pool: &PgPool) -> anyhow::Result<i64> {
    Ok(sqlx::query_scalar("SELECT count(*) FROM analytics_outbox WHERE shipped_at IS NULL").fetch_one(pool).await?)
}

/// Deletes shipped rows older than `retention`, a bounded number at a time.
pub async fn prune(pool: &PgPool, retention: Duration) -> anyhow::Result<u64> {
    let mut deleted = 0;
    loop {
        let n = sqlx::query(
            "DELETE FROM analytics_outbox WHERE id IN (
                 SELECT id FROM analytics_outbox WHERE shipped_at < now() - make_interval(secs => $1) LIMIT 10000)",
        )
        .bind(retention.as_secs_f64())
        .execute(pool)
        .await?
        .rows_affected();
        deleted += n;
        if n < 10_000 {
            return Ok(deleted);
        }
    }
}

/// Ships for as long as the server runs.
pub async fn run(pool: PgPool, config: super::clickhouse::ClickHouseConfig, retention: Duration, metrics: Arc<crate::metrics::Metrics>) {
    let mut backoff = Duration::from_millis(500);
    let mut failing = false;
    let mut ch: Option<ClickHouse> = None;
    let mut pruned_at = tokio::time::Instant::now();
    loop {
        let result = async {
            let ch = match &ch {
                Some(ch) => ch.clone(),
                None => ch.insert(ClickHouse::connect(&config).await?).clone(),
            };
            ship_once(&pool, &ch).await
        }
        .await;
        match result {
            Ok(n) => {
                metrics.outbox_shipped.inc_by(n as u64);
                if failing {
                    tracing::info!("ClickHouse takes rows again; shipping the outbox");
                    failing = false;
                }
                backoff = Duration::from_millis(500);
                if (n as i64) < BATCH {
                    tokio::time::sleep(IDLE).await;
                }
            }
            Err(e) => {
                // Said once per outage, not once per try.
                if !failing {
                    tracing::warn!(error = %format!("{e:#}"), url = %config.url, "cannot ship analytics to ClickHouse; rows wait in the outbox");
                    failing = true;
                }
                ch = None;
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
        if pruned_at.elapsed() >= PRUNE_EVERY {
            pruned_at = tokio::time::Instant::now();
            match prune(&pool, retention).await {
                Ok(n) if n > 0 => tracing::info!(rows = n, "deleted shipped analytics rows past the retention"),
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "could not delete shipped analytics rows"),
            }
        }
    }
}
