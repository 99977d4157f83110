//! What automation rules add to a change: task moves (one client, sequential) in a
//! project with no rules, then with 100 enabled rules whose trigger is the move itself
//! (half name the status moved to, so 50 are loaded, parsed and checked each time; none
//! matches its conditions), then with 100 rules of mixed triggers. Median and p90 request time, and the difference.
//! Run: cargo bench -p kodel-server --bench rules   (numbers in docs/benchmarks.md)
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use serde_json::json;

const MOVES: usize = 300;
const ROUNDS: usize = 4;

async fn moves(b: &common::Bench, slug: &str) -> Vec<Duration> {
    let mut times = Vec::with_capacity(MOVES);
    let url = format!("{}/api/v1/orgs/{slug}/tasks/RU-1/move", b.base);
    for i in 0..MOVES {
        let to = if i % 2 == 0 { "In Progress" } else { "To Do" };
        let t = Instant::now();
        let resp = b.http.post(&url).bearer_auth(&b.token).json(&json!({"status": to})).send().await.unwrap();
        assert!(resp.status().is_success());
        resp.bytes().await.unwrap();
        times.push(t.elapsed());
    }
    times.sort();
    times
}

#[tokio::main]
async fn main() {
    let b = common::Bench::start(3600.0).await;
    for slug in ["none", "hundred", "mixed"] {
        b.org(slug, "RU", 1).await;
    }
    for i in 0..100 {
        // Relevant to every move, never matching: the worst case for a change.
        b.post("/api/v1/orgs/hundred/rules", json!({
            "name": format!("r{i}"), "project": "RU",
            "trigger": {"type": "status_changed", "to": if i % 2 == 0 { "In Progress" } else { "To Do" }},
            "conditions": [{"label": format!("l{i}")}, {"title_matches": format!("^release-{i}\\b")}], "match": "any",
            "actions": [{"add_label": "x"}, {"comment": "y"}]
        })).await;
        let trigger = match i % 8 {
            0 => json!({"type": "status_changed", "to": "Done"}),
            1 => json!({"type": "comment_added"}),
            2 => json!({"type": "label_added", "label": format!("l{i}")}),
            3 => json!({"type": "task_created"}),
            4 => json!({"type": "job_failed"}),
            5 => json!({"type": "artifact_approved"}),
            6 => json!({"type": "assignee_changed"}),
            _ => json!({"type": "stale", "hours": 48}),
        };
        b.post("/api/v1/orgs/mixed/rules", json!({"name": format!("m{i}"), "project": "RU", "trigger": trigger, "actions": [{"add_label": "x"}]})).await;
    }
    // Warm up connections and caches, then measure the cases in turn, ROUNDS times.
    moves(&b, "none").await;
    let mut results: Vec<(&str, Vec<Duration>)> = Vec::new();
    for _ in 0..ROUNDS {
        for slug in ["none", "hundred", "mixed"] {
            let t = moves(&b, slug).await;
            match results.iter_mut().find(|(s, _)| *s == slug) {
                Some((_, all)) => all.extend(t),
                None => results.push((slug, t)),
            }
        }
    }
    let base = {
        let mut t = results[0].1.clone();
        t.sort();
        common::pct(&t, 0.5)
    };
    for (slug, mut t) in results {
        t.sort();
        let (p50, p90) = (common::pct(&t, 0.5), common::pct(&t, 0.9));
        let mean = t.iter().sum::<Duration>().as_secs_f64() * 1000.0 / t.len() as f64;
        println!("{slug:>8} rules: move p50 {p50:.2} ms, p90 {p90:.2} ms, mean {mean:.2} ms, p50 added {:+.2} ms", p50 - base);
    }
}
