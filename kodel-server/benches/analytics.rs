//! Analytics: 1,000,000 LLM calls of one org (30 days, 10 projects, 5 models) in the
//! outbox are shipped to a private ClickHouse (Debian's 18.16) in the shipper's
//! batches: rows per second. Then the usage report by day, from ClickHouse and from
//! PostgreSQL over the same rows: median and p95 of 20 runs each. Last, the budget
//! check the proxy makes before each call (an org, a project and a task budget set):
//! 2,000 checks, p50 and p99.
//! Run: cargo bench -p kodel-server --bench analytics   (numbers in docs/benchmarks.md)
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Instant;

use chrono::Utc;
use kodel_core::usage::UsageGroup;
use kodel_server::analytics::clickhouse::{ClickHouse, ClickHouseConfig};
use kodel_server::analytics::{shipper, usage};
use kodel_testkit::clickhouse::ClickHouseServer;
use uuid::Uuid;

const CALLS: i64 = 1_000_000;
const RUNS: usize = 20;

#[tokio::main]
async fn main() {
    let b = common::Bench::start(3600.0).await;
    b.org("bench", "BE", 10).await;
    let pool = b.server.state.pool.clone();
    let org: Uuid = sqlx::query_scalar("SELECT id FROM orgs WHERE slug = 'bench'").fetch_one(&pool).await.unwrap();
    let started = Instant::now();
    sqlx::query(
        "INSERT INTO analytics_outbox (kind, org_id, payload, created_at)
         SELECT 'llm_call', $1, jsonb_build_object(
                'org_id', $1, 'org', 'bench', 'project_id', 'p' || (g % 10), 'task_id', 't' || (g % 5000),
                'job_id', gen_random_uuid(), 'agent_id', 'a' || (g % 7), 'user_id', NULL,
                'provider', 'openai', 'model', 'model-' || (g % 5), 'input_tokens', 1000 + g % 977,
                'output_tokens', 100 + g % 97, 'cached_tokens', g % 300, 'usage_estimated', false,
                'cost_micros', 4000 + g % 1000, 'priced', true, 'first_token_ms', 300 + g % 200,
                'total_ms', 2000 + g % 3000, 'status', CASE WHEN g % 50 = 0 THEN 'error' ELSE 'ok' END, 'error', NULL),
                now() - make_interval(secs => (g % (30 * 86400))::double precision)
         FROM generate_series(1, $2) g",
    )
    .bind(org)
    .bind(CALLS)
    .execute(&pool)
    .await
    .unwrap();
    sqlx::query("ANALYZE analytics_outbox").execute(&pool).await.unwrap();
    println!("filled the outbox with {CALLS} calls in {:.1} s", started.elapsed().as_secs_f64());

    let ch_server = ClickHouseServer::start().await;
    let ch = ClickHouse::connect(&ClickHouseConfig { url: ch_server.url(), user: None, password: None, database: "kodel".into() }).await.unwrap();
    let started = Instant::now();
    let mut shipped = 0;
    loop {
        let n = shipper::ship_once(&pool, &ch).await.unwrap();
        if n == 0 {
            break;
        }
        shipped += n;
    }
    let secs = started.elapsed().as_secs_f64();
    println!("shipped {shipped} rows in {secs:.1} s: {:.0} rows/s (batches of {})", shipped as f64 / secs, shipper::BATCH);
    assert_eq!(shipped as i64, CALLS);
    ch_server.query("OPTIMIZE TABLE kodel.llm_calls FINAL").await;

    let range = usage::Range { from: Utc::now() - chrono::Duration::days(31), to: Utc::now() + chrono::Duration::seconds(1) };
    let mut from_ch = Vec::new();
    let mut from_pg = Vec::new();
    for _ in 0..RUNS {
        let t = Instant::now();
        let a = usage::from_clickhouse(&ch, org, range, UsageGroup::Day).await.unwrap();
        from_ch.push(t.elapsed());
        let t = Instant::now();
        let p = usage::from_postgres(&pool, org, range, UsageGroup::Day).await.unwrap();
        from_pg.push(t.elapsed());
        let (mut a, mut p) = (a, p);
        a.sort_by(|x, y| x.key.cmp(&y.key));
        p.sort_by(|x, y| x.key.cmp(&y.key));
        assert_eq!(a, p, "the two reports differ");
    }
    for (what, mut times) in [("ClickHouse", from_ch), ("PostgreSQL", from_pg)] {
        times.sort();
        println!("usage by day over {CALLS} calls from {what}: p50 {:.1} ms, p95 {:.1} ms", common::pct(&times, 0.5), common::pct(&times, 0.95));
    }

    for body in [
        serde_json::json!({"scope": "org", "max_cost": 1000.0}),
        serde_json::json!({"scope": "project", "project": "BE", "max_tokens": 100_000_000}),
        serde_json::json!({"scope": "task", "task": "BE-1", "max_cost": 10.0}),
    ] {
        let r = b.http.put(format!("{}/api/v1/orgs/bench/budgets", b.base)).bearer_auth(&b.token).json(&body).send().await.unwrap();
        assert!(r.status().is_success());
    }
    let schema = format!("{}.", kodel_core::OrgSlug::parse("bench").unwrap().quoted_schema());
    let task: Uuid = sqlx::query_scalar("SELECT id FROM org_bench.tasks WHERE number = 1").fetch_one(&pool).await.unwrap();
    let mut times = Vec::new();
    for i in 0..2_200 {
        let t = Instant::now();
        let spent = kodel_server::analytics::budgets::exceeded(&pool, &schema, Some(task)).await.unwrap();
        if i >= 200 {
            times.push(t.elapsed());
        }
        assert!(spent.is_none());
    }
    times.sort();
    println!("budget check before a call (3 budgets apply): p50 {:.3} ms, p99 {:.3} ms", common::pct(&times, 0.5), common::pct(&times, 0.99));
}
