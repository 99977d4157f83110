//! The REST API through HTTP: orgs, members, projects, roles, tasks, comments, errors.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{TestApp, code};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

#[tokio::test]
async fn orgs_and_members() {
    let app = TestApp::spawn().await;
    let owner = app.register("owner@x.io").await;
    let bob = app.register("bob@x.io").await;
    let carol = app.register("carol@x.io").await;

    let (s, v) = app.post("/api/v1/orgs", &owner, json!({"slug": "acme", "name": "Acme"})).await;
    assert_eq!((s, v["role"].as_str()), (StatusCode::CREATED, Some("owner")));
    let (s, v) = app.post("/api/v1/orgs", &bob, json!({"slug": "acme", "name": "Again"})).await;
    assert_eq!((s, code(&v)), (StatusCode::CONFLICT, "org_exists"));
    for bad in ["Acme", "a", "org_x;drop", "ac me", "a\"b", "ünï", &"a".repeat(41)] {
        let (s, v) = app.post("/api/v1/orgs", &owner, json!({"slug": bad, "name": "x"})).await;
        assert_eq!((s, code(&v)), (StatusCode::BAD_REQUEST, "invalid_slug"), "{bad}");
    }
    let (_, list) = app.get("/api/v1/orgs", &owner).await;
    assert_eq!(list["data"].as_array().unwrap().len(), 1);
    let (_, list) = app.get("/api/v1/orgs", &bob).await;
    assert_eq!(list["data"], json!([]));

    // The list pages by slug: every org once, in order.
    for slug in ["beta", "gamma", "delta"] {
        assert_eq!(app.post("/api/v1/orgs", &owner, json!({"slug": slug, "name": slug})).await.0, StatusCode::CREATED);
    }
    let (mut seen, mut cursor) = (Vec::new(), String::new());
    loop {
        let (s, page) = app.get(&format!("/api/v1/orgs?limit=2&cursor={cursor}"), &owner).await;
        assert_eq!(s, StatusCode::OK, "{page}");
        seen.extend(page["data"].as_array().unwrap().iter().map(|o| o["slug"].as_str().unwrap().to_owned()));
        match page["next_cursor"].as_str() {
            Some(c) => cursor = c.to_owned(),
            None => break,
        }
    }
    assert_eq!(seen, ["acme", "beta", "delta", "gamma"]);
    let (s, v) = app.get("/api/v1/orgs?cursor=NOT%20A%20SLUG", &owner).await;
    assert_eq!((s, code(&v)), (StatusCode::BAD_REQUEST, "invalid_cursor"));
    let (s, v) = app.get("/api/v1/orgs?limit=0", &owner).await;
    assert_eq!((s, code(&v)), (StatusCode::UNPROCESSABLE_ENTITY, "invalid_request"));

    // Members: add, list, change, remove, with the owner rules.
    let (s, v) = app.post("/api/v1/orgs/acme/members", &owner, json!({"email": "BOB@x.io", "role": "admin"})).await;
    assert_eq!((s, v["role"].as_str()), (StatusCode::CREATED, Some("admin")));
    let (s, v) = app.post("/api/v1/orgs/acme/members", &owner, json!({"email": "bob@x.io", "role": "member"})).await;
    assert_eq!((s, code(&v)), (StatusCode::CONFLICT, "member_exists"));
    let (s, v) = app.post("/api/v1/orgs/acme/members", &owner, json!({"email": "ghost@x.io", "role": "member"})).await;
    assert_eq!((s, code(&v)), (StatusCode::NOT_FOUND, "user_not_found"));
    let (s, v) = app.post("/api/v1/orgs/acme/members", &owner, json!({"email": "carol@x.io", "role": "boss"})).await;
    assert_eq!((s, code(&v)), (StatusCode::UNPROCESSABLE_ENTITY, "invalid_request"));
    // An admin cannot make owners.
    let (s, v) = app.post("/api/v1/orgs/acme/members", &bob, json!({"email": "carol@x.io", "role": "owner"})).await;
    assert_eq!((s, code(&v)), (StatusCode::FORBIDDEN, "forbidden"));
    let (s, _) = app.post("/api/v1/orgs/acme/members", &bob, json!({"email": "carol@x.io", "role": "member"})).await;
    assert_eq!(s, StatusCode::CREATED);
    // A plain member cannot add anyone.
    app.register("dave@x.io").await;
    let (s, _) = app.post("/api/v1/orgs/acme/members", &carol, json!({"email": "dave@x.io", "role": "member"})).await;
    assert_eq!(s, StatusCode::FORBIDDEN);

    let (_, members) = app.get("/api/v1/orgs/acme/members", &carol).await;
    let emails: Vec<&str> = members["data"].as_array().unwrap().iter().map(|m| m["email"].as_str().unwrap()).collect();
    assert_eq!(emails, ["bob@x.io", "carol@x.io", "owner@x.io"]);

    let (s, v) = app.patch("/api/v1/orgs/acme/members/owner@x.io", &owner, json!({"role": "member"})).await;
    assert_eq!((s, code(&v)), (StatusCode::CONFLICT, "last_owner"));
    let (s, v) = app.call(Method::DELETE, "/api/v1/orgs/acme/members/owner@x.io", Some(&owner), None).await;
    assert_eq!((s, code(&v)), (StatusCode::CONFLICT, "last_owner"));
    let (s, v) = app.patch("/api/v1/orgs/acme/members/carol@x.io", &bob, json!({"role": "admin"})).await;
    assert_eq!((s, v["role"].as_str()), (StatusCode::OK, Some("admin")));
    let (s, _) = app.delete("/api/v1/orgs/acme/members/carol@x.io", &bob).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    assert_eq!(app.get("/api/v1/orgs/acme/members", &carol).await.0, StatusCode::NOT_FOUND);
    // Anyone may leave.
    assert_eq!(app.delete("/api/v1/orgs/acme/members/bob@x.io", &bob).await.0, StatusCode::NO_CONTENT);
    let (s, v) = app.get("/api/v1/orgs/acme", &bob).await;
    assert_eq!((s, code(&v)), (StatusCode::NOT_FOUND, "org_not_found"));
}

async fn org_with_roles(app: &TestApp) -> (String, Vec<(&'static str, String)>) {
    let owner = app.owner_with_project("own@x.io", "acme", "KOD").await;
    let mut users = Vec::new();
    for role in ["viewer", "reviewer", "developer", "tech_lead", "admin"] {
        let email = format!("{role}@x.io");
        let token = app.register(&email).await;
        app.post("/api/v1/orgs/acme/members", &owner, json!({"email": email, "role": "member"})).await;
        let (s, v) = app.post("/api/v1/orgs/acme/projects/KOD/members", &owner, json!({"email": email, "role": role})).await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
        users.push((role, token));
    }
    (owner, users)
}

#[tokio::test]
async fn project_roles_are_enforced_on_every_endpoint() {
    let app = TestApp::spawn().await;
    let (owner, users) = org_with_roles(&app).await;
    app.create_task(&owner, "acme", "KOD", "seed").await;
    let outsider = app.register("outsider@x.io").await;
    app.post("/api/v1/orgs/acme/members", &owner, json!({"email": "outsider@x.io", "role": "member"})).await;
    app.register("extra@x.io").await;
    app.post("/api/v1/orgs/acme/members", &owner, json!({"email": "extra@x.io", "role": "member"})).await;

    // (method, path, body, weakest role allowed)
    let cases: Vec<(Method, &str, Value, &str)> = vec![
        (Method::GET, "/api/v1/orgs/acme/projects/KOD", Value::Null, "viewer"),
        (Method::GET, "/api/v1/orgs/acme/projects/KOD/tasks", Value::Null, "viewer"),
        (Method::GET, "/api/v1/orgs/acme/tasks/KOD-1", Value::Null, "viewer"),
        (Method::GET, "/api/v1/orgs/acme/tasks/KOD-1/comments", Value::Null, "viewer"),
        (Method::GET, "/api/v1/orgs/acme/projects/KOD/members", Value::Null, "viewer"),
        (Method::POST, "/api/v1/orgs/acme/tasks/KOD-1/comments", json!({"body": "hi"}), "reviewer"),
        (Method::POST, "/api/v1/orgs/acme/projects/KOD/tasks", json!({"title": "t"}), "developer"),
        (Method::PATCH, "/api/v1/orgs/acme/tasks/KOD-1", json!({"version": -1, "title": "t"}), "developer"),
        (Method::POST, "/api/v1/orgs/acme/tasks/KOD-1/move", json!({"status": "To Do", "version": -1}), "developer"),
        (Method::PATCH, "/api/v1/orgs/acme/projects/KOD", json!({"description": "d"}), "admin"),
        (Method::POST, "/api/v1/orgs/acme/projects/KOD/members", json!({"email": "extra@x.io", "role": "viewer"}), "admin"),
    ];
    let order = ["viewer", "reviewer", "developer", "tech_lead", "admin"];
    for (method, path, body, min) in &cases {
        let min_rank = order.iter().position(|r| r == min).unwrap();
        for (rank, (role, token)) in users.iter().enumerate() {
            let body = (!body.is_null()).then(|| body.clone());
            let (s, v) = app.call(method.clone(), path, Some(token), body).await;
            if rank < min_rank {
                assert_eq!((s, code(&v)), (StatusCode::FORBIDDEN, "forbidden"), "{role} {method} {path}");
            } else {
                assert!(s != StatusCode::FORBIDDEN && s != StatusCode::NOT_FOUND, "{role} {method} {path}: {s} {v}");
            }
        }
        // Not a project member at all: the project does not exist for them.
        let body = (!body.is_null()).then(|| body.clone());
        let (s, _) = app.call(method.clone(), path, Some(&outsider), body).await;
        assert_eq!(s, StatusCode::NOT_FOUND, "outsider {method} {path}");
    }
    // The outsider does not see the project in the list either.
    let (_, list) = app.get("/api/v1/orgs/acme/projects", &outsider).await;
    assert_eq!(list["data"], json!([]));
    let (_, list) = app.get("/api/v1/orgs/acme/projects", &users[0].1).await;
    assert_eq!(list["data"][0]["role"], "viewer");
}

#[tokio::test]
async fn task_lifecycle() {
    let app = TestApp::spawn().await;
    let t = app.owner_with_project("o@x.io", "acme", "KOD").await;
    app.register("dev@x.io").await;
    app.post("/api/v1/orgs/acme/members", &t, json!({"email": "dev@x.io", "role": "member"})).await;

    let (s, task) = app
        .post(
            "/api/v1/orgs/acme/projects/KOD/tasks",
            &t,
            json!({"title": "  Write docs ", "description": "all of them", "priority": "high", "labels": ["docs", "docs", "p1"], "assignee": "DEV@x.io"}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{task}");
    assert_eq!(task["key"], "KOD-1");
    assert_eq!(task["title"], "Write docs");
    assert_eq!(task["status"], "To Do");
    assert_eq!(task["priority"], "high");
    assert_eq!(task["labels"], json!(["docs", "p1"]));
    assert_eq!(task["assignee"], "dev@x.io");
    assert_eq!(task["version"], 1);
    let (_, shown) = app.get("/api/v1/orgs/acme/tasks/KOD-1", &t).await;
    for field in ["key", "title", "description", "status", "priority", "labels", "assignee", "version", "created_at", "updated_at"] {
        assert_eq!(shown[field], task[field], "{field}");
    }

    let second = app.create_task(&t, "acme", "KOD", "Second").await;
    assert_eq!(second["key"], "KOD-2");
    let (s, v) = app.post("/api/v1/orgs/acme/projects/KOD/tasks", &t, json!({"title": "x", "assignee": "stranger@x.io"})).await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    let (s, _) = app.post("/api/v1/orgs/acme/projects/KOD/tasks", &t, json!({"title": "   "})).await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
    let (s, v) = app.post("/api/v1/orgs/acme/projects/KOD/tasks", &t, json!({"title": "x", "status": "Nope"})).await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    let (s, v) = app.post("/api/v1/orgs/acme/projects/KOD/tasks", &t, json!({"title": "x", "priority": "meh"})).await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    let (s, v) = app.post("/api/v1/orgs/acme/projects/KOD/tasks", &t, json!({"title": "x".repeat(501)})).await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{v}");

    // Update with optimistic concurrency.
    let (s, v) = app.patch("/api/v1/orgs/acme/tasks/KOD-1", &t, json!({"version": 1, "title": "Write all docs", "assignee": null})).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!((v["version"].as_i64(), v["assignee"].is_null()), (Some(2), true));
    let (s, v) = app.patch("/api/v1/orgs/acme/tasks/KOD-1", &t, json!({"version": 1, "title": "stale"})).await;
    assert_eq!((s, code(&v)), (StatusCode::CONFLICT, "version_conflict"));
    assert_eq!(v["error"]["details"]["current_version"], 2);
    let (s, v) = app.patch("/api/v1/orgs/acme/tasks/KOD-1", &t, json!({"title": "no version"})).await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    // A no-op update changes nothing.
    let (_, v) = app.patch("/api/v1/orgs/acme/tasks/KOD-1", &t, json!({"version": 2, "title": "Write all docs"})).await;
    assert_eq!(v["version"], 2);

    // Moves: allowed ones succeed, refused ones say where the task may go.
    let (s, v) = app.post("/api/v1/orgs/acme/tasks/KOD-1/move", &t, json!({"status": "in progress"})).await;
    assert_eq!((s, v["status"].as_str(), v["version"].as_i64()), (StatusCode::OK, Some("In Progress"), Some(3)));
    let (s, v) = app.post("/api/v1/orgs/acme/tasks/KOD-1/move", &t, json!({"status": "In Progress"})).await;
    assert_eq!((s, code(&v)), (StatusCode::CONFLICT, "transition_not_allowed"));
    assert_eq!(v["error"]["details"]["allowed"], json!(["To Do", "Done"]));
    let (s, v) = app.post("/api/v1/orgs/acme/tasks/KOD-1/move", &t, json!({"status": "Shipped"})).await;
    assert_eq!((s, code(&v)), (StatusCode::UNPROCESSABLE_ENTITY, "invalid_request"));
    let (s, v) = app.post("/api/v1/orgs/acme/tasks/KOD-1/move", &t, json!({"status": "Done", "version": 1})).await;
    assert_eq!((s, code(&v)), (StatusCode::CONFLICT, "version_conflict"));
    let (s, _) = app.post("/api/v1/orgs/acme/tasks/KOD-1/move", &t, json!({"status": "Done", "version": 3})).await;
    assert_eq!(s, StatusCode::OK);

    // Comments.
    let (s, c) = app.post("/api/v1/orgs/acme/tasks/KOD-1/comments", &t, json!({"body": "looks good"})).await;
    assert_eq!((s, c["author"].as_str(), c["task"].as_str()), (StatusCode::CREATED, Some("o@x.io"), Some("KOD-1")));
    let (s, _) = app.post("/api/v1/orgs/acme/tasks/KOD-1/comments", &t, json!({"body": " "})).await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
    for i in 2..=5 {
        app.post("/api/v1/orgs/acme/tasks/KOD-1/comments", &t, json!({"body": format!("comment {i}")})).await;
    }
    let (_, cs) = app.get("/api/v1/orgs/acme/tasks/KOD-1/comments?limit=3", &t).await;
    assert_eq!(cs["data"].as_array().unwrap().len(), 3);
    assert_eq!(cs["data"][0]["body"], "looks good", "oldest first");
    let cursor = cs["next_cursor"].as_str().unwrap().to_owned();
    let (_, rest) = app.get(&format!("/api/v1/orgs/acme/tasks/KOD-1/comments?limit=3&cursor={cursor}"), &t).await;
    let bodies: Vec<&str> = rest["data"].as_array().unwrap().iter().map(|c| c["body"].as_str().unwrap()).collect();
    assert_eq!(bodies, ["comment 4", "comment 5"]);
    assert!(rest["next_cursor"].is_null());

    // Archive hides the task from lists unless asked for.
    let (_, v) = app.get("/api/v1/orgs/acme/tasks/KOD-1", &t).await;
    let (s, v) = app.patch("/api/v1/orgs/acme/tasks/KOD-1", &t, json!({"version": v["version"], "archived": true})).await;
    assert_eq!((s, v["archived"].as_bool()), (StatusCode::OK, Some(true)));
    let (_, list) = app.get("/api/v1/orgs/acme/projects/KOD/tasks", &t).await;
    assert_eq!(keys(&list), ["KOD-2"]);
    let (_, list) = app.get("/api/v1/orgs/acme/projects/KOD/tasks?archived=true", &t).await;
    assert_eq!(keys(&list), ["KOD-1", "KOD-2"]);

    // Every change is an event, in order.
    let mut db = app.sql().await;
    sqlx::query("SET search_path TO org_acme, public").execute(&mut db).await.unwrap();
    let types: Vec<(String, i32)> = sqlx::query_as(
        "SELECT e.type, e.seq FROM task_events e JOIN tasks t ON t.id = e.task_id WHERE t.number = 1 ORDER BY e.seq",
    )
    .fetch_all(&mut db)
    .await
    .unwrap();
    let expected = [
        ("task.created", 1), ("task.updated", 2), ("task.moved", 3), ("task.moved", 4), ("comment.added", 5),
        ("comment.added", 6), ("comment.added", 7), ("comment.added", 8), ("comment.added", 9), ("task.archived", 10),
    ];
    assert_eq!(types, expected.map(|(t, s)| (t.to_owned(), s)).to_vec());
}

fn keys(list: &Value) -> Vec<String> {
    list["data"].as_array().unwrap().iter().map(|t| t["key"].as_str().unwrap().to_owned()).collect()
}

#[tokio::test]
async fn task_list_filters_and_cursor_pagination() {
    let app = TestApp::spawn().await;
    let t = app.owner_with_project("o@x.io", "acme", "KOD").await;
    app.register("dev@x.io").await;
    app.post("/api/v1/orgs/acme/members", &t, json!({"email": "dev@x.io", "role": "member"})).await;
    for i in 1..=25 {
        let assignee = if i % 5 == 0 { json!("dev@x.io") } else if i % 5 == 1 { json!("o@x.io") } else { Value::Null };
        let labels = if i % 2 == 0 { json!(["even"]) } else { json!(["odd"]) };
        let title = if i == 7 { "Fix 100% of the_bugs".to_owned() } else { format!("Task number {i}") };
        let (s, _) = app.post("/api/v1/orgs/acme/projects/KOD/tasks", &t, json!({"title": title, "labels": labels, "assignee": assignee})).await;
        assert_eq!(s, StatusCode::CREATED);
    }
    for n in [3, 4] {
        app.post(&format!("/api/v1/orgs/acme/tasks/KOD-{n}/move"), &t, json!({"status": "Done"})).await;
    }

    let mut all = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let path = match &cursor {
            Some(c) => format!("/api/v1/orgs/acme/projects/KOD/tasks?limit=10&cursor={c}"),
            None => "/api/v1/orgs/acme/projects/KOD/tasks?limit=10".into(),
        };
        let (s, page) = app.get(&path, &t).await;
        assert_eq!(s, StatusCode::OK);
        all.extend(keys(&page));
        pages += 1;
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    assert_eq!(pages, 3);
    assert_eq!(all, (1..=25).map(|i| format!("KOD-{i}")).collect::<Vec<_>>());

    let q = |s: &str| format!("/api/v1/orgs/acme/projects/KOD/tasks?{s}");
    assert_eq!(keys(&app.get(&q("status=done"), &t).await.1), ["KOD-3", "KOD-4"]);
    assert_eq!(keys(&app.get(&q("assignee=dev@x.io"), &t).await.1), ["KOD-5", "KOD-10", "KOD-15", "KOD-20", "KOD-25"]);
    assert_eq!(keys(&app.get(&q("assignee=me"), &t).await.1).len(), 5);
    assert_eq!(keys(&app.get(&q("assignee=none"), &t).await.1).len(), 15);
    assert_eq!(keys(&app.get(&q("assignee=nobody@x.io"), &t).await.1).len(), 0);
    assert_eq!(keys(&app.get(&q("label=even&assignee=dev@x.io"), &t).await.1), ["KOD-10", "KOD-20"]);
    // Text search treats % and _ literally.
    assert_eq!(keys(&app.get(&q("q=100%25"), &t).await.1), ["KOD-7"]);
    assert_eq!(keys(&app.get(&q("q=the_b"), &t).await.1), ["KOD-7"]);
    assert_eq!(keys(&app.get(&q("q=NUMBER%2012"), &t).await.1), ["KOD-12"]);

    for bad in ["limit=0", "limit=500", "cursor=abc", "limit=x", "colour=red"] {
        let (s, v) = app.get(&q(bad), &t).await;
        assert!(s == StatusCode::BAD_REQUEST || s == StatusCode::UNPROCESSABLE_ENTITY, "{bad}: {s} {v}");
        assert!(!code(&v).is_empty());
    }
}

#[tokio::test]
async fn bad_requests_get_json_errors() {
    let app = TestApp::spawn().await;
    let t = app.owner_with_project("o@x.io", "acme", "KOD").await;
    let url = format!("{}/api/v1/orgs/acme/projects/KOD/tasks", app.base);
    let send = |body: String, ct: &'static str| {
        let req = app.http.post(&url).bearer_auth(&t).header("content-type", ct).body(body);
        async move {
            let r = req.send().await.unwrap();
            let s = r.status();
            (s, r.json::<Value>().await.unwrap())
        }
    };
    let (s, v) = send("{\"title\":".into(), "application/json").await;
    assert_eq!((s, code(&v)), (StatusCode::BAD_REQUEST, "invalid_json"));
    let (s, v) = send("{\"title\":\"x\",\"titel\":\"y\"}".into(), "application/json").await;
    assert_eq!((s, code(&v)), (StatusCode::UNPROCESSABLE_ENTITY, "invalid_request"));
    assert!(v["error"]["message"].as_str().unwrap().contains("titel"));
    let (s, v) = send("{\"title\":5}".into(), "application/json").await;
    assert_eq!((s, code(&v)), (StatusCode::UNPROCESSABLE_ENTITY, "invalid_request"));
    let (s, v) = send("{\"title\":\"x\"}".into(), "text/plain").await;
    assert_eq!((s, code(&v)), (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type"));
    let huge = json!({"title": "x", "description": "y".repeat(200_000)}).to_string();
    let (s, v) = send(huge, "application/json").await;
    assert_eq!((s, code(&v)), (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"));

    for (path, expected) in [
        ("/api/v1/orgs/acme/tasks/KOD-x", "invalid_key"),
        ("/api/v1/orgs/acme/tasks/kod-1", "invalid_key"),
        ("/api/v1/orgs/acme/tasks/KOD-0", "invalid_key"),
        ("/api/v1/orgs/acme/tasks/KOD-99", "task_not_found"),
        ("/api/v1/orgs/acme/tasks/NOPE-1", "task_not_found"),
        ("/api/v1/orgs/acme/projects/NOPE", "project_not_found"),
        ("/api/v1/orgs/acme/projects/no%20pe", "invalid_key"),
        ("/api/v1/orgs/ghost/projects", "org_not_found"),
        ("/api/v1/orgs/Bad/projects", "invalid_slug"),
        ("/api/v1/orgs/a%27b/projects", "invalid_slug"),
        ("/api/v1/nowhere", "not_found"),
    ] {
        let (s, v) = app.get(path, &t).await;
        assert_eq!(code(&v), expected, "{path}: {s} {v}");
    }
    // A bad query parameter gets the same JSON envelope as a bad body, on every list.
    let job = uuid::Uuid::now_v7();
    for path in [
        format!("/api/v1/orgs/acme/jobs/{job}/steps?after=abc"),
        "/api/v1/orgs/acme/projects/KOD/tasks?limit=many".to_owned(),
        "/api/v1/orgs/acme/jobs?limit=-1".to_owned(),
        "/api/v1/orgs/acme/rules?limit=x".to_owned(),
        "/api/v1/orgs/acme/events?last_event_id=x".to_owned(),
    ] {
        let resp = app.http.get(format!("{}{path}", app.base)).bearer_auth(&t).send().await.unwrap();
        assert_eq!(resp.headers()["content-type"], "application/json", "{path}");
        // Through the checked client too: the 422 is in the OpenAPI document.
        let (s, v) = app.get(&path, &t).await;
        assert_eq!((s, code(&v)), (StatusCode::UNPROCESSABLE_ENTITY, "invalid_request"), "{path}: {v}");
    }
    // Text PostgreSQL cannot store is refused as input, not a server error.
    let (s, v) = app.post("/api/v1/orgs/acme/projects/KOD/tasks", &t, json!({"title": "a\u{0}b"})).await;
    assert_eq!((s, code(&v)), (StatusCode::UNPROCESSABLE_ENTITY, "invalid_request"));
    let (s, v) = app.get("/api/v1/orgs/acme/projects/KOD/tasks?q=%00", &t).await;
    assert_eq!((s, code(&v)), (StatusCode::UNPROCESSABLE_ENTITY, "invalid_request"));
    let (s, v) = app.call(Method::POST, "/api/v1/auth/login", None, Some(json!({"email": "a\u{0}@x.io", "password": "x"}))).await;
    assert!(s == StatusCode::UNAUTHORIZED || s == StatusCode::UNPROCESSABLE_ENTITY, "{s} {v}");

    let (s, v) = app.call(Method::PUT, "/api/v1/orgs", Some(&t), None).await;
    assert_eq!((s, code(&v)), (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"));
    let (s, v) = app.call(Method::GET, "/api/v1/orgs/acme/projects", None, None).await;
    assert_eq!((s, code(&v)), (StatusCode::UNAUTHORIZED, "unauthorized"));
    // Without a token, a bad path is a 401 too: who asks is checked first.
    let (s, v) = app.call(Method::GET, "/api/v1/orgs/Bad!/projects", None, None).await;
    assert_eq!((s, code(&v)), (StatusCode::UNAUTHORIZED, "unauthorized"));
}

#[tokio::test]
async fn health_ready_and_openapi() {
    let app = TestApp::spawn().await;
    let (s, v) = app.call(Method::GET, "/healthz", None, None).await;
    assert_eq!((s, v["status"].as_str()), (StatusCode::OK, Some("ok")));
    let (s, v) = app.call(Method::GET, "/readyz", None, None).await;
    assert_eq!((s, v["status"].as_str()), (StatusCode::OK, Some("ready")));

    let (s, spec) = app.call(Method::GET, "/api/v1/openapi.json", None, None).await;
    assert_eq!(s, StatusCode::OK);
    assert!(spec["openapi"].as_str().unwrap().starts_with("3."));
    let paths = spec["paths"].as_object().unwrap();
    for p in [
        "/api/v1/auth/register", "/api/v1/auth/login", "/api/v1/auth/refresh", "/api/v1/auth/logout", "/api/v1/me",
        "/api/v1/tokens", "/api/v1/tokens/{id}", "/api/v1/orgs", "/api/v1/orgs/{org}", "/api/v1/orgs/{org}/members",
        "/api/v1/orgs/{org}/members/{member}", "/api/v1/orgs/{org}/projects", "/api/v1/orgs/{org}/projects/{key}",
        "/api/v1/orgs/{org}/projects/{key}/members", "/api/v1/orgs/{org}/projects/{key}/members/{member}",
        "/api/v1/orgs/{org}/projects/{key}/tasks", "/api/v1/orgs/{org}/tasks/{task}", "/api/v1/orgs/{org}/tasks/{task}/move",
        "/api/v1/orgs/{org}/tasks/{task}/comments", "/api/v1/orgs/{org}/events", "/api/v1/orgs/{org}/tasks/{task}/events",
        "/api/v1/orgs/{org}/workflows", "/api/v1/orgs/{org}/workflows/{workflow}", "/api/v1/orgs/{org}/job-templates",
        "/api/v1/orgs/{org}/job-templates/{template}", "/api/v1/orgs/{org}/jobs", "/api/v1/orgs/{org}/jobs/{id}",
        "/api/v1/orgs/{org}/jobs/{id}/cancel", "/api/v1/orgs/{org}/artifacts", "/api/v1/orgs/{org}/artifacts/{id}",
        "/api/v1/orgs/{org}/artifacts/{id}/approve", "/api/v1/orgs/{org}/artifacts/{id}/reject", "/api/v1/orgs/{org}/rules",
        "/api/v1/orgs/{org}/rules/{id}", "/api/v1/orgs/{org}/modules", "/api/v1/orgs/{org}/modules/{id}",
        "/api/v1/orgs/{org}/instance-templates", "/api/v1/orgs/{org}/instance-templates/{template}", "/api/v1/orgs/{org}/agents",
        "/api/v1/orgs/{org}/agent-tokens", "/api/v1/orgs/{org}/agent-tokens/{id}", "/api/v1/orgs/{org}/jobs/{id}/steps",
        "/api/v1/orgs/{org}/llm-providers", "/api/v1/orgs/{org}/llm-providers/{provider}", "/api/v1/agent/ws",
        "/v1/chat/completions", "/healthz", "/readyz",
    ] {
        assert!(paths.contains_key(p), "openapi.json lacks {p}");
    }
}

/// A client that trickles its body never holds a database transaction, and is cut off.
#[tokio::test]
async fn a_slow_upload_holds_no_transaction_and_times_out() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let app = TestApp::spawn().await;
    let t = app.owner_with_project("o@x.io", "acme", "KOD").await;
    let addr = app.base.trim_start_matches("http://").to_owned();
    let mut sock = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let head = format!(
        "POST /api/v1/orgs/acme/projects/KOD/tasks HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {t}\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{{"
    );
    sock.write_all(head.as_bytes()).await.unwrap();
    let started = std::time::Instant::now();
    // While the body is incomplete, nothing of this request is open in the database.
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let mut db = app.sql().await;
    let open: i64 = sqlx::query_scalar("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND state LIKE 'idle in transaction%'")
        .fetch_one(&mut db)
        .await
        .unwrap();
    assert_eq!(open, 0);
    let mut answer = vec![0u8; 4096];
    let n = tokio::time::timeout(std::time::Duration::from_secs(20), sock.read(&mut answer)).await.unwrap().unwrap();
    let text = String::from_utf8_lossy(&answer[..n]);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(text.contains("request_timeout"));
    assert!(started.elapsed() >= std::time::Duration::from_secs(9));
}

#[tokio::test]
async fn project_members_change_and_leave() {
    let app = TestApp::spawn().await;
    let owner = app.owner_with_project("o@x.io", "acme", "KOD").await;
    let dev = app.register("dev@x.io").await;
    app.post("/api/v1/orgs/acme/members", &owner, json!({"email": "dev@x.io", "role": "member"})).await;
    let (s, v) = app.post("/api/v1/orgs/acme/projects/KOD/members", &owner, json!({"email": "dev@x.io", "role": "viewer"})).await;
    assert_eq!((s, v["role"].as_str()), (StatusCode::CREATED, Some("viewer")));
    let (s, v) = app.post("/api/v1/orgs/acme/projects/KOD/members", &owner, json!({"email": "dev@x.io", "role": "admin"})).await;
    assert_eq!((s, code(&v)), (StatusCode::CONFLICT, "member_exists"));
    let (s, v) = app.post("/api/v1/orgs/acme/projects/KOD/members", &owner, json!({"email": "stranger@x.io", "role": "viewer"})).await;
    assert_eq!((s, code(&v)), (StatusCode::NOT_FOUND, "user_not_found"));

    // A viewer cannot create tasks; promoted to developer, they can.
    assert_eq!(app.post("/api/v1/orgs/acme/projects/KOD/tasks", &dev, json!({"title": "x"})).await.0, StatusCode::FORBIDDEN);
    let (s, v) = app.patch("/api/v1/orgs/acme/projects/KOD/members/dev@x.io", &owner, json!({"role": "developer"})).await;
    assert_eq!((s, v["role"].as_str()), (StatusCode::OK, Some("developer")));
    assert_eq!(app.post("/api/v1/orgs/acme/projects/KOD/tasks", &dev, json!({"title": "x"})).await.0, StatusCode::CREATED);
    // A developer cannot change roles, not even their own.
    let (s, _) = app.patch("/api/v1/orgs/acme/projects/KOD/members/dev@x.io", &dev, json!({"role": "admin"})).await;
    assert_eq!(s, StatusCode::FORBIDDEN);

    // Leaving the project makes it invisible.
    assert_eq!(app.delete("/api/v1/orgs/acme/projects/KOD/members/dev@x.io", &dev).await.0, StatusCode::NO_CONTENT);
    assert_eq!(app.get("/api/v1/orgs/acme/projects/KOD", &dev).await.0, StatusCode::NOT_FOUND);
    let (_, members) = app.get("/api/v1/orgs/acme/projects/KOD/members", &owner).await;
    assert_eq!(members["data"].as_array().unwrap().len(), 1);

    // Editing the project is the project admin's.
    let (s, v) = app.patch("/api/v1/orgs/acme/projects/KOD", &owner, json!({"name": "Kodel", "description": "the product"})).await;
    assert_eq!((s, v["name"].as_str(), v["description"].as_str()), (StatusCode::OK, Some("Kodel"), Some("the product")));
    let (s, v) = app.post("/api/v1/orgs/acme/projects", &owner, json!({"key": "KOD", "name": "again"})).await;
    assert_eq!((s, code(&v)), (StatusCode::CONFLICT, "project_exists"));
    let (s, v) = app.post("/api/v1/orgs/acme/projects", &owner, json!({"key": "NEW", "name": "x", "workflow": "scrum"})).await;
    assert_eq!((s, code(&v)), (StatusCode::NOT_FOUND, "workflow_not_found"), "{v}");
}
