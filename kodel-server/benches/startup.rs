//! Start-up and org creation at 1,000 orgs, and the server's idle memory. Org creation
//! is measured twice: 1,000 back to back with no spare schemas (each request builds its
//! schema), then 50 with a spare schema ready (the server keeps two; each create is a
//! rename, and the bench waits for the refill between creates as a person would).
//! Run: cargo bench -p kodel-server --bench startup   (numbers in docs/benchmarks.md)
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::time::{Duration, Instant};

use kodel_testkit::{ServerProcess, database_url, fresh_database, register, rss_kib};
use serde_json::json;

const ORGS: usize = 1000;
const WITH_SPARES: usize = 50;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

#[tokio::main]
async fn main() {
    let db = fresh_database().await;
    let url = database_url(&db);
    let bin = Path::new(env!("CARGO_BIN_EXE_kodel-server"));
    let env = [("DATABASE_URL", url.as_str()), ("RUST_LOG", "info")];
    let http = reqwest::Client::new();

    let server = ServerProcess::start(bin, &[], &[env[0], env[1], ("KODEL_SPARE_SCHEMAS", "0")]);
    let token = register(&server.base, "b@x.io").await;
    let mut creates = Vec::with_capacity(ORGS);
    for i in 0..ORGS {
        let started = Instant::now();
        let r = http.post(format!("{}/api/v1/orgs", server.base)).bearer_auth(&token).json(&json!({"slug": format!("org{i:04}"), "name": "x"})).send().await.unwrap();
        assert_eq!(r.status(), 201);
        creates.push(started.elapsed());
    }
    creates.sort();
    println!("org create over HTTP, no spare schema ({ORGS} orgs, back to back): p50 {:?}  p99 {:?}  max {:?}", percentile(&creates, 0.5), percentile(&creates, 0.99), creates[ORGS - 1]);
    assert!(server.stop().success());

    let server = ServerProcess::start(bin, &[], &env);
    let pool = sqlx::PgPool::connect(&url).await.unwrap();
    let mut creates = Vec::with_capacity(WITH_SPARES);
    for i in 0..WITH_SPARES {
        let deadline = Instant::now() + Duration::from_secs(30);
        while sqlx::query_scalar::<_, i64>("SELECT count(*) FROM schema_spares").fetch_one(&pool).await.unwrap() < 2 {
            assert!(Instant::now() < deadline, "spares not refilled");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let started = Instant::now();
        let r = http.post(format!("{}/api/v1/orgs", server.base)).bearer_auth(&token).json(&json!({"slug": format!("spare{i:04}"), "name": "x"})).send().await.unwrap();
        assert_eq!(r.status(), 201);
        creates.push(started.elapsed());
    }
    creates.sort();
    println!("org create over HTTP, spare schema ready ({WITH_SPARES} orgs): p50 {:?}  p99 {:?}  max {:?}", percentile(&creates, 0.5), percentile(&creates, 0.99), creates[WITH_SPARES - 1]);
    assert!(server.stop().success());

    // Restarts with nothing to migrate: spawn to serving /healthz.
    let mut starts = Vec::new();
    let mut rss = 0;
    for _ in 0..5 {
        let started = Instant::now();
        let server = ServerProcess::start(bin, &[], &env);
        loop {
            if http.get(format!("{}/healthz", server.base)).send().await.is_ok_and(|r| r.status().is_success()) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        starts.push(started.elapsed());
        assert!(server.log().contains("migrations checked"));
        // A few requests, then idle.
        for _ in 0..20 {
            http.get(format!("{}/api/v1/orgs", server.base)).bearer_auth(&token).send().await.unwrap();
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        rss = rss.max(rss_kib(server.child.id()));
        assert!(server.stop().success());
    }
    starts.sort();
    println!("start with {} orgs, nothing to migrate (spawn to /healthz, 5 runs): median {:?}  max {:?}", ORGS + WITH_SPARES, starts[2], starts[4]);
    println!("idle RSS after start and 20 requests: {:.1} MiB", rss as f64 / 1024.0);
}
