//! `/metrics`, read by a real Prometheus (Debian's `prometheus`, started here on
//! loopback with a private data dir).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::TestApp;
use reqwest::StatusCode;
use serde_json::Value;

/// Prometheus scrapes the page with the metrics token; without it the page is refused,
/// and it names no tenant.
#[tokio::test]
async fn prometheus_scrapes_the_metrics_with_the_token() {
    let config = kodel_server::Config { metrics_token: Some("scrape-secret".into()), ..common::test_config() };
    let app = TestApp::spawn_with(common::fresh_database().await, config).await;
    let owner = app.owner_with_project("metrics@example.com", "secretorg", "MET").await;
    let url = format!("{}/metrics", app.base);

    let refused = app.http.get(&url).send().await.unwrap();
    assert_eq!(refused.status(), StatusCode::UNAUTHORIZED);
    let wrong = app.http.get(&url).bearer_auth("not-it").send().await.unwrap();
    assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED);
    // An event stream open, so the gauge has something to count.
    let _stream = app.sse("/api/v1/orgs/secretorg/events", &owner, None).await;
    let page = app.http.get(&url).bearer_auth("scrape-secret").send().await.unwrap();
    assert_eq!(page.status(), StatusCode::OK);
    assert!(page.headers()["content-type"].to_str().unwrap().starts_with("application/openmetrics-text"));
    let page = page.text().await.unwrap();
    assert_eq!(common::metric(&page, "kodel_event_streams_open"), Some(1.0), "{page}");
    assert!(common::metric(&page, "kodel_resident_memory_bytes").is_some_and(|b| b > 1e6), "{page}");
    assert!(!page.contains("secretorg") && !page.contains("metrics@example.com"), "no tenant names: {page}");
    // Requests by route (the template, not the org's name), method and status, timed.
    assert!(page.contains(r#"kodel_http_requests_total{route="/api/v1/orgs/{org}/projects",method="POST",status="201"} 1"#), "{page}");
    assert!(page.contains(r#"kodel_http_request_duration_seconds_count{route="/api/v1/orgs/{org}/projects",method="POST"} 1"#), "{page}");
    // A task creation went through the group commit.
    app.create_task(&owner, "secretorg", "MET", "Counted").await;
    let page = app.http.get(&url).bearer_auth("scrape-secret").send().await.unwrap().text().await.unwrap();
    assert_eq!(common::metric(&page, "kodel_task_create_batch_size_count"), Some(1.0), "{page}");

    let dir = tempfile::tempdir().unwrap();
    let port = kodel_testkit::free_port();
    let target = app.base.trim_start_matches("http://");
    std::fs::write(
        dir.path().join("prometheus.yml"),
        format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: kodel\n    authorization:\n      credentials: scrape-secret\n    static_configs:\n      - targets: ['{target}']\n"
        ),
    )
    .unwrap();
    let mut prometheus = std::process::Command::new("prometheus")
        .arg(format!("--config.file={}", dir.path().join("prometheus.yml").display()))
        .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(dir.path().join("log")).unwrap())
        .spawn()
        .expect("prometheus is installed (scripts/test.sh installs it)");

    // Wait, with a deadline, until Prometheus has scraped the page and read the gauge.
    let query = format!("http://127.0.0.1:{port}/api/v1/query?query=kodel_event_streams_open");
    let deadline = Instant::now() + Duration::from_secs(60);
    let value = loop {
        let answer: Option<Value> = match app.http.get(&query).send().await {
            Ok(r) if r.status().is_success() => r.json().await.ok(),
            _ => None,
        };
        let sample = answer.as_ref().and_then(|a| a["data"]["result"].get(0).cloned());
        if let Some(sample) = sample {
            break sample;
        }
        assert!(prometheus.try_wait().unwrap().is_none(), "prometheus exited: {}", std::fs::read_to_string(dir.path().join("log")).unwrap());
        assert!(Instant::now() < deadline, "prometheus did not scrape the page: {}", std::fs::read_to_string(dir.path().join("log")).unwrap());
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(value["value"][1], "1", "{value}");
    let up: Value = app.http.get(format!("http://127.0.0.1:{port}/api/v1/query?query=up")).send().await.unwrap().json().await.unwrap();
    assert_eq!(up["data"]["result"][0]["value"][1], "1", "{up}");
    let _ = prometheus.kill();
    let _ = prometheus.wait();
}
