//! Job claims: 4 concurrent claimers, each serving 3 orgs in turn, take 30,000 pending
//! jobs (spread over 300 tasks); claims per second, and a check that none was taken
//! twice. Each claim is a transaction: the SKIP LOCKED claim, its `job.started` event.
//! Run: cargo bench -p kodel-server --bench queue   (numbers in docs/benchmarks.md)
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use kodel_core::OrgSlug;
use kodel_server::engine::queue::Claimer;
use kodel_server::db::OrgTx;
use kodel_server::hub::agents;
use uuid::Uuid;

const ORGS: [&str; 3] = ["qa", "qb", "qc"];
const JOBS_PER_ORG: i32 = 10_000;
const TASKS_PER_ORG: usize = 100;
const CLAIMERS: usize = 4;

#[tokio::main]
async fn main() {
    // The sweep stays out of the measurement.
    let b = common::Bench::start(3600.0).await;
    b.http.get(format!("{}/healthz", b.base)).send().await.unwrap();
    let mut orgs = Vec::new();
    for slug in ORGS {
        b.org(slug, "QQ", TASKS_PER_ORG).await;
        b.http.get(format!("{}/api/v1/orgs/{slug}/job-templates", b.base)).bearer_auth(&b.token).send().await.unwrap();
        let slug = OrgSlug::parse(slug).unwrap();
        let id: Uuid = sqlx::query_scalar("SELECT id FROM orgs WHERE slug = $1").bind(slug.as_str()).fetch_one(&b.server.state.pool).await.unwrap();
        let mut db = OrgTx::begin(&b.server.state.pool, id, &slug).await.unwrap();
        sqlx::query(
            "INSERT INTO ai_jobs (id, task_id, template_id, kind, origin_seq, priority)
             SELECT gen_random_uuid(), t.id, (SELECT id FROM ai_job_templates WHERE name = 'qa-template'), 'qa', 1000 + g, g % 5
             FROM generate_series(1, $1) g JOIN tasks t ON t.number = 1 + g % $2",
        )
        .bind(JOBS_PER_ORG)
        .bind(TASKS_PER_ORG as i32)
        .execute(db.conn())
        .await
        .unwrap();
        b.server.state.commit(db).await.unwrap();
        orgs.push((id, slug));
    }
    sqlx::query("ANALYZE").execute(&b.server.state.pool).await.unwrap();

    let mut handles = Vec::new();
    let started = Instant::now();
    for c in 0..CLAIMERS {
        let mut mine = Vec::new();
        for (id, slug) in &orgs {
            let mut db = OrgTx::begin(&b.server.state.pool, *id, slug).await.unwrap();
            let agent = agents::register(&mut db, None, &agents::Offer { name: format!("bench-{c}"), version: "0".into(), ..Default::default() }).await.unwrap();
            b.server.state.commit(db).await.unwrap();
            mine.push((slug.clone(), agent));
        }
        let state = b.server.state.clone();
        handles.push(tokio::spawn(async move {
            let mut claimer = Claimer::new(mine);
            let mut got = Vec::new();
            while let Some((_, job)) = claimer.claim_next(&state, Duration::from_secs(600)).await.unwrap() {
                got.push(job.id);
            }
            got
        }));
    }
    let mut all = Vec::new();
    for h in handles {
        all.extend(h.await.unwrap());
    }
    let elapsed = started.elapsed();
    let unique: HashSet<Uuid> = all.iter().copied().collect();
    let total = JOBS_PER_ORG as usize * ORGS.len();
    assert_eq!(all.len(), total, "every job claimed");
    assert_eq!(unique.len(), total, "no job claimed twice");
    println!(
        "claims: {} jobs by {CLAIMERS} claimers in {:.2} s = {:.0} claims/s (none twice)",
        total,
        elapsed.as_secs_f64(),
        total as f64 / elapsed.as_secs_f64()
    );
}
