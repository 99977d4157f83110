//! The job queue through the engine API: concurrent claimers never take a job twice,
//! claims go by priority and take orgs in turn, and expired leases re-queue a job until
//! its attempts run out.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use common::{TestApp, fresh_database, test_config};
use kodel_core::OrgSlug;
use kodel_server::hub::agents;
use kodel_server::engine::queue::{self, Claimer};
use kodel_server::engine::jobs;
use serde_json::json;
use uuid::Uuid;

const LEASE: Duration = Duration::from_secs(300);

/// A server whose background sweep does not reap leases behind the test's back.
async fn quiet_app() -> TestApp {
    let mut config = test_config();
    config.engine_tick = 3600.0;
    TestApp::spawn_with(fresh_database().await, config).await
}

/// An org with one task and `n` pending jobs of mixed priority; returns (id, slug).
async fn org_with_jobs(app: &TestApp, token: &str, slug: &str, n: i32) -> (Uuid, OrgSlug) {
    app.post("/api/v1/orgs", token, json!({"slug": slug, "name": slug})).await;
    app.post(&format!("/api/v1/orgs/{slug}/projects"), token, json!({"key": "QQ", "name": "q"})).await;
    app.create_task(token, slug, "QQ", "work").await;
    app.get(&format!("/api/v1/orgs/{slug}/job-templates"), token).await;
    let mut db = app.org_tx(slug).await;
    sqlx::query(
        "INSERT INTO ai_jobs (id, task_id, template_id, kind, origin_seq, priority)
         SELECT gen_random_uuid(), (SELECT id FROM tasks), (SELECT id FROM ai_job_templates WHERE name = 'qa-template'), 'qa', 100 + g, g % 5
         FROM generate_series(1, $1) g",
    )
    .bind(n)
    .execute(db.conn())
    .await
    .unwrap();
    let ids = (db.org_id, db.slug.clone());
    app.commit(db).await;
    ids
}

/// Expires leases the way the background sweep does.
async fn reap_expired(app: &TestApp, org: Uuid, slug: &OrgSlug) -> kodel_server::error::ApiResult<(usize, usize)> {
    let mut db = kodel_server::db::OrgTx::begin(&app.server.state.pool, org, slug).await?;
    let reaped = jobs::expire_leases(&mut db).await?;
    app.server.state.commit(db).await?;
    Ok(reaped)
}

/// Renews a lease the way an agent's heartbeat does.
async fn renew(app: &TestApp, org: Uuid, slug: &OrgSlug, job: Uuid, agent: Uuid) -> kodel_server::error::ApiResult<bool> {
    let mut db = kodel_server::db::OrgTx::begin(&app.server.state.pool, org, slug).await?;
    let held = jobs::renew(&mut db, job, agent, LEASE).await?;
    app.server.state.commit(db).await?;
    Ok(held)
}

async fn agent(app: &TestApp, slug: &str, name: &str) -> Uuid {
    let mut db = app.org_tx(slug).await;
    let id = agents::register(&mut db, None, &agents::Offer { name: name.into(), labels: vec!["linux".into()], version: "0".into(), ..Default::default() }).await.unwrap();
    app.commit(db).await;
    id
}

#[tokio::test]
async fn four_claimers_take_500_jobs_in_3_orgs_each_exactly_once() {
    let app = quiet_app().await;
    let owner = app.register("owner@x.io").await;
    let counts = [("qa", 250), ("qb", 150), ("qc", 100)];
    let mut orgs = Vec::new();
    for (slug, n) in counts {
        orgs.push(org_with_jobs(&app, &owner, slug, n).await);
    }
    let mut claimers = Vec::new();
    for c in 0..4 {
        let mut mine = Vec::new();
        for (_, slug) in &orgs {
            mine.push((slug.clone(), agent(&app, slug.as_str(), &format!("claimer-{c}")).await));
        }
        let state = app.server.state.clone();
        claimers.push(tokio::spawn(async move {
            let mut claimer = Claimer::new(mine);
            let mut got = Vec::new();
            while let Some((slug, job)) = claimer.claim_next(&state, LEASE).await.unwrap() {
                got.push((slug.as_str().to_owned(), job.id, job.priority));
            }
            got
        }));
    }
    let mut all = Vec::new();
    for c in claimers {
        let got = c.await.unwrap();
        assert!(!got.is_empty(), "every claimer got work");
        // Each claimer's claims within one org come highest priority first.
        for (slug, _) in counts {
            let prios: Vec<i16> = got.iter().filter(|g| g.0 == slug).map(|g| g.2).collect();
            assert!(prios.windows(2).all(|w| w[0] >= w[1]), "{slug}: {prios:?}");
        }
        all.extend(got);
    }
    assert_eq!(all.len(), 500);
    let unique: HashSet<Uuid> = all.iter().map(|g| g.1).collect();
    assert_eq!(unique.len(), 500, "no job was claimed twice");
    let mut per_org: HashMap<String, usize> = HashMap::new();
    for g in &all {
        *per_org.entry(g.0.clone()).or_default() += 1;
    }
    for (slug, n) in counts {
        assert_eq!(per_org[slug], n as usize);
        let mut db = app.org_tx(slug).await;
        let (running, once): (i64, i64) = sqlx::query_as(
            "SELECT count(*) FILTER (WHERE state = 'running' AND lease_agent IS NOT NULL), count(*) FILTER (WHERE attempts = 1) FROM ai_jobs",
        )
        .fetch_one(db.conn())
        .await
        .unwrap();
        app.commit(db).await;
        assert_eq!((running, once), (n as i64, n as i64), "{slug}");
    }
}

#[tokio::test]
async fn a_claimer_takes_orgs_in_turn() {
    let app = quiet_app().await;
    let owner = app.register("owner@x.io").await;
    let mut mine = Vec::new();
    for (slug, n) in [("fa", 20), ("fb", 3), ("fc", 3)] {
        let (_, s) = org_with_jobs(&app, &owner, slug, n).await;
        mine.push((s, agent(&app, slug, "one").await));
    }
    let mut claimer = Claimer::new(mine);
    let mut order = Vec::new();
    while let Some((slug, _)) = claimer.claim_next(&app.server.state, LEASE).await.unwrap() {
        order.push(slug.as_str().to_owned());
    }
    // The busy org does not starve the others: they alternate while all have work.
    assert_eq!(&order[..9], ["fa", "fb", "fc", "fa", "fb", "fc", "fa", "fb", "fc"]);
    assert_eq!(order.len(), 26);
    assert!(order[9..].iter().all(|s| s == "fa"));
}

#[tokio::test]
async fn expired_leases_requeue_until_attempts_run_out() {
    let app = quiet_app().await;
    let owner = app.register("owner@x.io").await;
    let (org, slug) = org_with_jobs(&app, &owner, "lz", 1).await;
    let (a, b) = (agent(&app, "lz", "a").await, agent(&app, "lz", "b").await);
    let state = &app.server.state;
    let expire = || async {
        let mut db = app.org_tx("lz").await;
        sqlx::query("UPDATE ai_jobs SET lease_expires_at = now() - interval '1 second' WHERE state = 'running'").execute(db.conn()).await.unwrap();
        app.commit(db).await;
    };
    let job_state = || async {
        let mut db = app.org_tx("lz").await;
        let row: (String, i32, Option<String>) = sqlx::query_as("SELECT state, attempts, error FROM ai_jobs").fetch_one(db.conn()).await.unwrap();
        app.commit(db).await;
        row
    };

    let job = queue::claim(state, &slug, a, &[], LEASE).await.unwrap().unwrap();
    assert_eq!(job.attempts, 1);
    // A live lease is not reaped, and renewing keeps it.
    assert_eq!(reap_expired(&app, org, &slug).await.unwrap(), (0, 0));
    assert!(renew(&app, org, &slug, job.id, a).await.unwrap());
    expire().await;
    assert_eq!(reap_expired(&app, org, &slug).await.unwrap(), (1, 0));
    let (st, attempts, error) = job_state().await;
    assert_eq!((st.as_str(), attempts), ("pending", 1));
    assert!(error.unwrap().contains("queued again"));

    // Agent b takes it over; a's renewals and results are refused from now on.
    let again = queue::claim(state, &slug, b, &[], LEASE).await.unwrap().unwrap();
    assert_eq!((again.id, again.attempts), (job.id, 2));
    assert!(!renew(&app, org, &slug, job.id, a).await.unwrap());
    let mut db = app.org_tx("lz").await;
    let err = jobs::complete(&mut db, job.id, a, "late", &[], Some(json!({}))).await.unwrap_err();
    assert_eq!(err.code.as_str(), "lease_lost");
    drop(db);

    expire().await;
    reap_expired(&app, org, &slug).await.unwrap();
    assert_eq!(queue::claim(state, &slug, a, &[], LEASE).await.unwrap().unwrap().attempts, 3);
    expire().await;
    assert_eq!(reap_expired(&app, org, &slug).await.unwrap(), (0, 1));
    let (st, attempts, error) = job_state().await;
    assert_eq!((st.as_str(), attempts), ("failed", 3));
    assert_eq!(error.unwrap(), "the agent stopped responding (lease expired) on each of 3 attempts");
    assert!(queue::claim(state, &slug, a, &[], LEASE).await.unwrap().is_none(), "a failed job is not claimed again");
    let types = app.event_types("lz", "QQ-1").await;
    let jobs_events: Vec<&str> = types.iter().map(String::as_str).filter(|t| t.starts_with("job.")).collect();
    assert_eq!(jobs_events, ["job.started", "job.requeued", "job.started", "job.requeued", "job.started", "job.failed"]);

    // A retryable failure reported by the agent re-queues too; a final one fails.
    let (_, slug2) = org_with_jobs(&app, &owner, "lr", 1).await;
    let c = agent(&app, "lr", "c").await;
    let j = queue::claim(state, &slug2, c, &[], LEASE).await.unwrap().unwrap();
    let mut db = app.org_tx("lr").await;
    jobs::fail(&mut db, j.id, c, "network blip", true).await.unwrap();
    app.commit(db).await;
    let j = queue::claim(state, &slug2, c, &[], LEASE).await.unwrap().unwrap();
    assert_eq!(j.attempts, 2);
}
