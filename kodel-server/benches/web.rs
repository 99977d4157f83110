//! The web view's board in headless chromium (kodel-testkit/web/bench_board.mjs): a
//! project of 500 tasks, its page's bytes over the wire and first contentful paint, and
//! the delay from a task made through the API to its card on an open board.
//!
//! `cargo bench -p kodel-server --bench web` (needs chromium and the node packages
//! scripts/test.sh installs).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use serde_json::json;

#[tokio::main]
async fn main() {
    let bench = common::Bench::start(0.2).await;
    bench.post("/api/v1/orgs", json!({"slug": "bench", "name": "Bench"})).await;
    bench.post("/api/v1/orgs/bench/projects", json!({"key": "BEN", "name": "Bench"})).await;
    for i in 0..500 {
        let labels = match i % 3 {
            0 => json!(["backend"]),
            1 => json!(["web", "bug"]),
            _ => json!([]),
        };
        let assignee = if i % 2 == 0 { json!("b@x.io") } else { json!(null) };
        bench
            .post(
                "/api/v1/orgs/bench/projects/BEN/tasks",
                json!({"title": format!("Task {i}: make the thing number {i} work as people expect"), "labels": labels, "assignee": assignee}),
            )
            .await;
    }
    let ran = kodel_testkit::web::run(
        "bench_board.mjs",
        &[
            ("BASE", bench.base.clone()),
            ("EMAIL", "b@x.io".into()),
            ("PASSWORD", "correct horse battery".into()),
            ("TOKEN", bench.token.clone()),
            ("PATH_", "/o/bench/p/BEN".into()),
        ],
        Duration::from_secs(300),
    )
    .await;
    assert!(ran.ok, "{}\n{}", ran.stdout, ran.stderr);
    println!("board of 500 tasks in headless chromium: {}", ran.json());
}
