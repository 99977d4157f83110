//! Webhook calls that rules queued. Each is taken with a short claim (so replicas never
//! send one twice at once), sent with a timeout after the change committed, and on
//! failure tried again later with a doubling wait until its attempts run out. Every
//! outcome is an event on the task.

use std::time::Duration;

use chrono::{DateTime, Utc};
use kodel_core::OrgSlug;
use kodel_core::events::{TaskEvent, WebhookDelivered, WebhookFailed};
use uuid::Uuid;

use crate::AppState;
use crate::error::ApiResult;
use crate::events;
use crate::db::OrgTx;

const TIMEOUT: Duration = Duration::from_secs(10);
/// How long a claimed delivery is held before another sender may take it.
const CLAIM_SECS: f64 = 60.0;
const BATCH: i64 = 20;

pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(TIMEOUT)
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("kodel/", env!("CARGO_PKG_VERSION")))
        .build()
        .unwrap_or_default()
}

/// Sends the org's due webhooks. Returns when the next pending one is due, if any.
pub async fn deliver_due(state: &AppState, org_id: Uuid, slug: &OrgSlug, retry: Duration) -> ApiResult<Option<DateTime<Utc>>> {
    loop {
        let mut db = OrgTx::begin(&state.pool, org_id, slug).await?;
        let batch: Vec<(Uuid, Uuid, String, serde_json::Value, i32, i32)> = sqlx::query_as(
            "UPDATE webhook_deliveries d SET attempts = attempts + 1, next_attempt_at = now() + make_interval(secs => $1)
             FROM (SELECT id FROM webhook_deliveries WHERE state = 'pending' AND next_attempt_at <= now()
                   ORDER BY next_attempt_at LIMIT $2 FOR UPDATE SKIP LOCKED) due
             WHERE d.id = due.id
             RETURNING d.id, d.task_id, d.url, d.payload, d.attempts, d.max_attempts",
        )
        .bind(CLAIM_SECS)
        .bind(BATCH)
        .fetch_all(db.conn())
        .await?;
        state.commit(db).await?;
        if batch.is_empty() {
            break;
        }
        for (id, task, url, payload, attempt, max) in batch {
            let outcome = match state.http.post(&url).header("x-kodel-delivery", id.to_string()).json(&payload).send().await {
                Ok(r) if r.status().is_success() => Ok(r.status().as_u16()),
                Ok(r) => Err(format!("HTTP {}", r.status().as_u16())),
                Err(e) => Err(if e.is_timeout() { "timed out".to_owned() } else { "could not connect".to_owned() }),
            };
            let mut db = OrgTx::begin(&state.pool, org_id, slug).await?;
            match outcome {
                Ok(status) => {
                    sqlx::query("UPDATE webhook_deliveries SET state = 'delivered', last_error = NULL WHERE id = $1").bind(id).execute(db.conn()).await?;
                    let delivered = WebhookDelivered { delivery_id: id, url, status, attempt };
                    events::record(&mut db, task, TaskEvent::WebhookDelivered(delivered)).await?;
                }
                Err(error) => {
                    let wait = retry.as_secs_f64() * 2f64.powi(attempt - 1);
                    let last = attempt >= max;
                    sqlx::query(
                        "UPDATE webhook_deliveries SET last_error = $2,
                                state = CASE WHEN $3 THEN 'failed' ELSE 'pending' END,
                                next_attempt_at = now() + make_interval(secs => $4)
                         WHERE id = $1",
                    )
                    .bind(id)
                    .bind(&error)
                    .bind(last)
                    .bind(wait)
                    .execute(db.conn())
                    .await?;
                    let failed = WebhookFailed { delivery_id: id, url, attempt, error, will_retry: !last };
                    events::record(&mut db, task, TaskEvent::WebhookFailed(failed)).await?;
                }
            }
            state.commit(db).await?;
        }
    }
    let mut db = OrgTx::begin(&state.pool, org_id, slug).await?;
    let next: Option<DateTime<Utc>> = sqlx::query_scalar("SELECT min(next_attempt_at) FROM webhook_deliveries WHERE state = 'pending'")
        .fetch_one(db.conn())
        .await?;
    state.commit(db).await?;
    Ok(next)
}
