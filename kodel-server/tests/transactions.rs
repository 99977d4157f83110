//! No transaction outlives its request or stream step: connections dropped at any
//! moment (streams cut by their clients, requests abandoned half-way) never leave a
//! pooled connection "idle in transaction", so every write answered afterwards is
//! durable.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::{TestApp, test_config};
use reqwest::StatusCode;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Connections of the test database that sit in a transaction nobody runs.
async fn idle_in_transaction(app: &TestApp) -> i64 {
    let mut sql = app.sql().await;
    sqlx::query_scalar(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND state LIKE 'idle in transaction%' AND pid <> pg_backend_pid()",
    )
    .fetch_one(&mut sql)
    .await
    .unwrap()
}

/// Opens `path` on a raw socket and drops it after `cut` (a stream cut at a random
/// moment of its life: before the answer, during its first database step, later).
async fn cut_request(addr: &str, path: &str, token: &str, extra: &str, cut: Duration) {
    let Ok(mut sock) = tokio::net::TcpStream::connect(addr).await else { return };
    let req = format!("GET {path} HTTP/1.1\r\nhost: {addr}\r\nauthorization: Bearer {token}\r\naccept: text/event-stream\r\n{extra}\r\n");
    if sock.write_all(req.as_bytes()).await.is_err() {
        return;
    }
    let mut buf = [0u8; 512];
    let _ = tokio::time::timeout(cut, async {
        loop {
            match sock.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
    })
    .await;
    drop(sock);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_streams_leave_no_transaction_open_and_later_writes_are_durable() {
    // A small pool, so a leaked connection is handed out again at once.
    let app = TestApp::spawn_with(common::fresh_database().await, kodel_server::Config { db_pool: 4, ..test_config() }).await;
    let token = app.owner_with_project("o@x.io", "acme", "KOD").await;
    app.create_task(&token, "acme", "KOD", "first").await;
    let first_event: i64 = {
        let mut sql = app.sql().await;
        sqlx::query_scalar("SELECT min(id) FROM org_acme.task_events").fetch_one(&mut sql).await.unwrap()
    };
    let addr = app.base.trim_start_matches("http://").to_owned();

    // 3,000 streams, cut at spread-out moments: some before the handler's transaction
    // began or finished, some during the resume's first page, some while live.
    let started = Instant::now();
    let mut cuts = futures::stream::FuturesUnordered::new();
    for i in 0..3000u64 {
        let (addr, token) = (addr.clone(), token.clone());
        let cut = Duration::from_micros((i * 7919) % 3000);
        let (path, extra) = match i % 3 {
            0 => ("/api/v1/orgs/acme/events".to_owned(), format!("last-event-id: {first_event}\r\n")),
            1 => ("/api/v1/orgs/acme/tasks/KOD-1/events".to_owned(), format!("last-event-id: {first_event}\r\n")),
            _ => ("/api/v1/orgs/acme/events".to_owned(), String::new()),
        };
        cuts.push(tokio::spawn(async move { cut_request(&addr, &path, &token, &extra, cut).await }));
        if cuts.len() >= 64 {
            use futures::StreamExt;
            cuts.next().await;
        }
    }
    use futures::StreamExt;
    while cuts.next().await.is_some() {}
    eprintln!("3,000 streams opened and cut in {:?}", started.elapsed());

    // Whatever the cuts left behind is gone once the server has noticed them.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let open = idle_in_transaction(&app).await;
        if open == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "{open} pooled connections stay idle in a transaction after the streams were cut");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Every write answered from now on is durable: tokens made and revoked through the
    // API are seen so by another connection.
    let mut made = Vec::new();
    for i in 0..40 {
        let (s, v) = app.post("/api/v1/tokens", &token, json!({"name": format!("t{i}")})).await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
        made.push((v["id"].as_str().unwrap().to_owned(), v["token"].as_str().unwrap().to_owned()));
    }
    for (id, _) in made.iter().step_by(2) {
        let (s, v) = app.delete(&format!("/api/v1/tokens/{id}"), &token).await;
        assert_eq!(s, StatusCode::NO_CONTENT, "{v}");
    }
    let mut sql = app.sql().await;
    for (i, (id, secret)) in made.iter().enumerate() {
        let revoked: Option<bool> = sqlx::query_scalar("SELECT revoked_at IS NOT NULL FROM public.api_tokens WHERE id = $1::uuid")
            .bind(id)
            .fetch_optional(&mut sql)
            .await
            .unwrap();
        assert_eq!(revoked, Some(i % 2 == 0), "token {i}: created and {} as answered", if i % 2 == 0 { "revoked" } else { "live" });
        // And the server agrees: a revoked token no longer opens anything.
        let (s, _) = app.get("/api/v1/me", secret).await;
        assert_eq!(s == StatusCode::OK, i % 2 == 1, "token {i}");
    }
    assert_eq!(idle_in_transaction(&app).await, 0);
}
