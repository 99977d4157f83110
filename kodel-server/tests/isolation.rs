//! Tenant isolation: a member of org A, with a valid token, tries every endpoint on org
//! B's slug and B's task keys through A's slug. Nothing of B is returned or changed.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::TestApp;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

type Snapshot = (Vec<(String, i32, String)>, i64, i64, i64, i64);

async fn snapshot(db: &mut sqlx::PgConnection) -> Snapshot {
    let tasks = sqlx::query_as("SELECT title, version, description FROM org_beta.tasks ORDER BY number").fetch_all(&mut *db).await.unwrap();
    let comments = sqlx::query_scalar("SELECT count(*) FROM org_beta.comments").fetch_one(&mut *db).await.unwrap();
    let members = sqlx::query_scalar("SELECT count(*) FROM org_members m JOIN orgs o ON o.id = m.org_id WHERE o.slug = 'beta'").fetch_one(&mut *db).await.unwrap();
    let projects = sqlx::query_scalar("SELECT count(*) FROM org_beta.projects").fetch_one(&mut *db).await.unwrap();
    let events = sqlx::query_scalar("SELECT count(*) FROM org_beta.task_events").fetch_one(&mut *db).await.unwrap();
    (tasks, comments, members, projects, events)
}

#[tokio::test]
async fn a_member_of_one_org_never_reaches_another() {
    let app = TestApp::spawn().await;
    let a = app.owner_with_project("a@x.io", "alpha", "APP").await;
    let b = app.owner_with_project("b@x.io", "beta", "BET").await;
    // Same project key in both orgs: keys are per org.
    app.post("/api/v1/orgs/alpha/projects", &a, json!({"key": "BET", "name": "alpha's BET"})).await;
    let secret = app.create_task(&b, "beta", "BET", "beta secret").await;
    assert_eq!(secret["key"], "BET-1");
    app.post("/api/v1/orgs/beta/tasks/BET-1/comments", &b, json!({"body": "beta comment"})).await;

    let mut db = app.sql().await;
    let before = snapshot(&mut db).await;

    let upd = json!({"version": 1, "title": "pwned"});
    let attempts: Vec<(Method, String, Option<Value>)> = vec![
        (Method::GET, "/api/v1/orgs/beta".into(), None),
        (Method::GET, "/api/v1/orgs/beta/members".into(), None),
        (Method::POST, "/api/v1/orgs/beta/members".into(), Some(json!({"email": "a@x.io", "role": "owner"}))),
        (Method::GET, "/api/v1/orgs/beta/members/b@x.io".into(), None),
        (Method::PATCH, "/api/v1/orgs/beta/members/b@x.io".into(), Some(json!({"role": "member"}))),
        (Method::DELETE, "/api/v1/orgs/beta/members/b@x.io".into(), None),
        (Method::GET, "/api/v1/orgs/beta/projects".into(), None),
        (Method::POST, "/api/v1/orgs/beta/projects".into(), Some(json!({"key": "EVIL", "name": "x"}))),
        (Method::GET, "/api/v1/orgs/beta/projects/BET".into(), None),
        (Method::PATCH, "/api/v1/orgs/beta/projects/BET".into(), Some(json!({"name": "pwned"}))),
        (Method::GET, "/api/v1/orgs/beta/projects/BET/members".into(), None),
        (Method::POST, "/api/v1/orgs/beta/projects/BET/members".into(), Some(json!({"email": "a@x.io", "role": "admin"}))),
        (Method::DELETE, "/api/v1/orgs/beta/projects/BET/members/b@x.io".into(), None),
        (Method::GET, "/api/v1/orgs/beta/projects/BET/tasks".into(), None),
        (Method::POST, "/api/v1/orgs/beta/projects/BET/tasks".into(), Some(json!({"title": "x"}))),
        (Method::GET, "/api/v1/orgs/beta/tasks/BET-1".into(), None),
        (Method::PATCH, "/api/v1/orgs/beta/tasks/BET-1".into(), Some(upd.clone())),
        (Method::POST, "/api/v1/orgs/beta/tasks/BET-1/move".into(), Some(json!({"status": "Done"}))),
        (Method::GET, "/api/v1/orgs/beta/tasks/BET-1/comments".into(), None),
        (Method::POST, "/api/v1/orgs/beta/tasks/BET-1/comments".into(), Some(json!({"body": "x"}))),
        (Method::GET, "/api/v1/orgs/beta/events".into(), None),
        (Method::GET, "/api/v1/orgs/beta/tasks/BET-1/events".into(), None),
        // B's task key through A's own slug: A's BET project has no task 1.
        (Method::GET, "/api/v1/orgs/alpha/tasks/BET-1".into(), None),
        (Method::PATCH, "/api/v1/orgs/alpha/tasks/BET-1".into(), Some(upd.clone())),
        (Method::POST, "/api/v1/orgs/alpha/tasks/BET-1/move".into(), Some(json!({"status": "Done"}))),
        (Method::GET, "/api/v1/orgs/alpha/tasks/BET-1/comments".into(), None),
        (Method::POST, "/api/v1/orgs/alpha/tasks/BET-1/comments".into(), Some(json!({"body": "x"}))),
        (Method::GET, "/api/v1/orgs/alpha/tasks/BET-1/events".into(), None),
    ];
    for (method, path, body) in attempts {
        let (s, v) = app.call(method.clone(), &path, Some(&a), body).await;
        assert_eq!(s, StatusCode::NOT_FOUND, "{method} {path}: {v}");
        let text = v.to_string();
        assert!(!text.contains("beta secret") && !text.contains("b@x.io") && !text.contains("beta comment"), "{method} {path} leaked: {text}");
    }
    // Crafted slugs never reach SQL.
    for slug in ["beta%22", "org_beta", "beta;drop", "BETA", "b%C3%A9ta", &"b".repeat(41), "beta'--"] {
        let (s, v) = app.get(&format!("/api/v1/orgs/{slug}/projects"), &a).await;
        assert!(s == StatusCode::BAD_REQUEST || s == StatusCode::NOT_FOUND, "{slug}: {s} {v}");
        assert!(!v.to_string().contains("beta secret"), "{slug}");
    }
    assert_eq!(snapshot(&mut db).await, before, "org beta changed");

    // A's own listing never mixes in B's data.
    let (_, tasks) = app.get("/api/v1/orgs/alpha/projects/BET/tasks", &a).await;
    assert_eq!(tasks["data"], json!([]));
    let (_, orgs) = app.get("/api/v1/orgs", &a).await;
    assert_eq!(orgs["data"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn search_path_never_leaks_between_requests() {
    let app = TestApp::spawn().await;
    let a = app.owner_with_project("a@x.io", "alpha", "APP").await;
    let b = app.owner_with_project("b@x.io", "beta", "APP").await;
    // Interleave many requests of both orgs over a small pool; each must see only its own.
    let mut handles = Vec::new();
    for i in 0..40 {
        let (token, slug) = if i % 2 == 0 { (a.clone(), "alpha") } else { (b.clone(), "beta") };
        let base = app.base.clone();
        let http = app.http.clone();
        handles.push(tokio::spawn(async move {
            let r = http
                .post(format!("{base}/api/v1/orgs/{slug}/projects/APP/tasks"))
                .bearer_auth(&token)
                .json(&json!({"title": format!("{slug} {i}")}))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), StatusCode::CREATED);
        }));
    }
    for h in handles {
        h.await.unwrap();
    }
    for (token, slug) in [(a, "alpha"), (b, "beta")] {
        let (_, list) = app.get(&format!("/api/v1/orgs/{slug}/projects/APP/tasks?limit=100"), &token).await;
        let titles: Vec<&str> = list["data"].as_array().unwrap().iter().map(|t| t["title"].as_str().unwrap()).collect();
        assert_eq!(titles.len(), 20);
        assert!(titles.iter().all(|t| t.starts_with(slug)), "{slug}: {titles:?}");
    }
    // A pooled connection has no org schema on its search_path outside a request.
    let path: String = sqlx::query_scalar("SHOW search_path").fetch_one(&app.server.state.pool).await.unwrap();
    assert!(!path.contains("org_"), "{path}");
}
