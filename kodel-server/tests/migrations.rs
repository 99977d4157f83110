//! Migrations: idempotent starts whose cost does not grow with the number of orgs,
//! concurrent migrators, and a broken org that does not take the others down.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use common::{TestApp, fresh_database};
use tracing_subscriber::layer::SubscriberExt;
use kodel_server::db::{self, migrate};
use reqwest::StatusCode;
use serde_json::json;

/// Counts the statements sqlx runs (it logs each one under the `sqlx::query` target).
#[derive(Clone, Default)]
struct StatementCounter(Arc<AtomicUsize>);

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for StatementCounter {
    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        if event.metadata().target() == "sqlx::query" {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }
}

async fn statements_of_a_start(pool: &sqlx::PgPool) -> usize {
    let counter = StatementCounter::default();
    let subscriber = tracing_subscriber::registry().with(counter.clone());
    let report = {
        let _guard = tracing::subscriber::set_default(subscriber);
        migrate::run(pool).await.unwrap()
    };
    assert_eq!((report.shared_applied, report.orgs_migrated), (0, 0));
    counter.0.load(Ordering::SeqCst)
}

#[tokio::test]
async fn a_start_with_nothing_pending_costs_the_same_for_1_or_60_orgs() {
    // The engine's sweep runs on this test's thread too: keep it out of the count.
    let mut config = common::test_config();
    config.engine_tick = 3600.0;
    let app = TestApp::spawn_with(fresh_database().await, config).await;
    let token = app.register("o@x.io").await;
    let pool = &app.server.state.pool;
    app.post("/api/v1/orgs", &token, json!({"slug": "first", "name": "x"})).await;
    let one = statements_of_a_start(pool).await;
    for i in 0..60 {
        let (s, v) = app.post("/api/v1/orgs", &token, json!({"slug": format!("org{i}"), "name": "x"})).await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
    }
    let many = statements_of_a_start(pool).await;
    assert!(one > 0, "the counter sees sqlx's statements");
    assert_eq!(one, many, "statements at start must not depend on the number of orgs");
}

#[tokio::test]
async fn concurrent_migrators_apply_everything_once() {
    let db = fresh_database().await;
    let a = db::connect(db.clone(), 4, std::time::Duration::from_secs(10)).await.unwrap();
    let b = db::connect(db.clone(), 4, std::time::Duration::from_secs(10)).await.unwrap();
    let (ra, rb) = tokio::join!(migrate::run(&a), migrate::run(&b));
    let (ra, rb) = (ra.unwrap(), rb.unwrap());
    assert_eq!(ra.shared_applied + rb.shared_applied, migrate::SHARED.len());
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM _kodel_migrations").fetch_one(&a).await.unwrap();
    assert_eq!(rows as usize, migrate::SHARED.len());
}

#[tokio::test]
async fn a_failed_tenant_migration_stops_only_that_org() {
    let app = TestApp::spawn().await;
    let t = app.owner_with_project("o@x.io", "good", "KOD").await;
    app.post("/api/v1/orgs", &t, json!({"slug": "broken", "name": "x"})).await;
    let mut sql = app.sql().await;
    // Pretend org "broken" never got its migrations, with a schema they cannot apply to.
    sqlx::query("UPDATE orgs SET schema_version = 0 WHERE slug = 'broken'").execute(&mut sql).await.unwrap();
    sqlx::query("DELETE FROM org_broken._kodel_migrations").execute(&mut sql).await.unwrap();

    let report = migrate::run(&app.server.state.pool).await.unwrap();
    assert_eq!(report.orgs_failed, vec!["broken".to_owned()]);
    let err: Option<String> = sqlx::query_scalar("SELECT migration_error FROM orgs WHERE slug = 'broken'").fetch_one(&mut sql).await.unwrap();
    assert!(err.unwrap().contains("already exists"));

    let (s, v) = app.get("/api/v1/orgs/broken/projects", &t).await;
    assert_eq!((s, common::code(&v)), (StatusCode::SERVICE_UNAVAILABLE, "unavailable"));
    assert!(v["error"]["message"].as_str().unwrap().contains("broken"));
    let (s, _) = app.get("/api/v1/orgs/good/projects", &t).await;
    assert_eq!(s, StatusCode::OK);
}

#[tokio::test]
async fn org_creation_takes_a_spare_schema_and_the_server_makes_another() {
    let mut config = common::test_config();
    config.spare_schemas = 2;
    let app = TestApp::spawn_with(fresh_database().await, config).await;
    let pool = app.server.state.pool.clone();
    let spares = || async { sqlx::query_scalar::<_, String>("SELECT name FROM schema_spares ORDER BY created_at").fetch_all(&pool).await.unwrap() };
    let wait_for = |n: usize| async move {
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            let now = spares().await;
            if now.len() == n {
                return now;
            }
            assert!(tokio::time::Instant::now() < deadline, "{} spares, expected {n}", now.len());
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    };
    let ready = wait_for(2).await;
    let token = app.register("o@x.io").await;
    let (s, v) = app.post("/api/v1/orgs", &token, json!({"slug": "fast", "name": "x"})).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    // The oldest spare became the org's schema, complete and at the current version.
    let exists = |name: String| {
        let pool = pool.clone();
        async move { sqlx::query_scalar::<_, bool>("SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)").bind(name).fetch_one(&pool).await.unwrap() }
    };
    assert!(!exists(ready[0].clone()).await);
    assert!(exists("org_fast".into()).await);
    let version: i32 = sqlx::query_scalar("SELECT schema_version FROM orgs WHERE slug = 'fast'").fetch_one(&pool).await.unwrap();
    assert_eq!(version, migrate::tenant_version());
    app.post("/api/v1/orgs/fast/projects", &token, json!({"key": "KOD", "name": "k", "workflow": "software-development"})).await;
    let t = app.create_task(&token, "fast", "KOD", "works").await;
    assert_eq!(t["key"], "KOD-1");
    // And the pool is topped up again.
    let after = wait_for(2).await;
    assert_eq!(after[0], ready[1]);
    // Spares of an older tenant version are dropped at the next start.
    sqlx::query("UPDATE schema_spares SET version = 0").execute(&pool).await.unwrap();
    migrate::run(&pool).await.unwrap();
    assert!(spares().await.is_empty());
    assert!(!exists(after[1].clone()).await);
}
