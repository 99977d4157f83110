//! Task creation's group commit (engine/tasks/create.rs): concurrent creations share a
//! transaction, each caller is checked on its own, and what a batch does not make is
//! made alone with its own answer.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::{TestApp, code};
use kodel_core::api::Priority;
use kodel_core::{OrgSlug, ProjectKey};
use kodel_server::auth::extract::Credential;
use kodel_server::engine::tasks::{COMMITTERS, NewTask, create_batch};
use reqwest::StatusCode;
use serde_json::{Value, json};
use sqlx::{Connection, PgConnection};

/// acme (KOD, and WEB where a rule reacts to new tasks) with an owner, a developer
/// using an API token and a viewer; beta (BET) with its own owner, no member of acme.
struct Orgs {
    owner: String,
    dev_token: String,
    viewer: String,
    outsider: String,
}

async fn orgs(app: &TestApp) -> Orgs {
    let owner = app.owner_with_project("own@x.io", "acme", "KOD").await;
    app.post("/api/v1/orgs/acme/projects", &owner, json!({"key": "WEB", "name": "Web"})).await;
    let (s, v) = app
        .post("/api/v1/orgs/acme/rules", &owner, json!({"name": "tag", "project": "WEB", "trigger": {"type": "task_created"}, "actions": [{"add_label": "triaged"}]}))
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let member = |email: &'static str, role: &'static str| {
        let (app, owner) = (&app, owner.clone());
        async move {
            let token = app.register(email).await;
            app.post("/api/v1/orgs/acme/members", &owner, json!({"email": email, "role": "member"})).await;
            let (s, v) = app.post("/api/v1/orgs/acme/projects/KOD/members", &owner, json!({"email": email, "role": role})).await;
            assert_eq!(s, StatusCode::CREATED, "{v}");
            token
        }
    };
    let dev = member("dev@x.io", "developer").await;
    let viewer = member("view@x.io", "viewer").await;
    let dev_token = app.post("/api/v1/tokens", &dev, json!({"name": "script"})).await.1["token"].as_str().unwrap().to_owned();
    // Used once, as a script would, so its creations are queued from now on.
    assert_eq!(app.get("/api/v1/me", &dev_token).await.0, StatusCode::OK);
    let outsider = app.owner_with_project("out@x.io", "beta", "BET").await;
    Orgs { owner, dev_token, viewer, outsider }
}

fn new_task(app: &TestApp, token: &str, project: &str, body: Value) -> NewTask {
    NewTask {
        credential: Credential::parse(token, &app.server.state).unwrap(),
        project: ProjectKey::parse(project).unwrap(),
        title: body["title"].as_str().unwrap_or("a task").to_owned(),
        description: String::new(),
        priority: body["priority"].as_str().and_then(Priority::parse).unwrap_or_default(),
        labels: body["labels"].as_array().map(|l| l.iter().map(|v| v.as_str().unwrap().to_owned()).collect()).unwrap_or_default(),
        assignee: body["assignee"].as_str().map(|a| a.trim().to_owned()),
        status: body["status"].as_str().map(str::to_owned),
    }
}

async fn sql_i64(db: &mut PgConnection, sql: &str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(db).await.unwrap()
}

/// Who creates, in which project, with what body; and what the API answers when the
/// batch leaves it (None: the batch creates it).
type Case<'a> = (&'a str, &'a str, Value, Option<(StatusCode, &'a str)>);

/// One batch checks each caller on its own: it creates, in one transaction, what each
/// may create, and leaves the rest, which the API then answers with the right error
/// when it makes them alone.
#[tokio::test]
async fn a_batch_creates_what_each_caller_may_in_one_transaction() {
    let app = TestApp::spawn().await;
    let o = orgs(&app).await;
    let (s, revoked) = app.post("/api/v1/tokens", &o.owner, json!({"name": "old"})).await;
    assert_eq!(s, StatusCode::CREATED);
    let revoked_token = revoked["token"].as_str().unwrap().to_owned();
    let id = revoked["id"].as_str().unwrap();
    assert_eq!(app.delete(&format!("/api/v1/tokens/{id}"), &o.owner).await.0, StatusCode::NO_CONTENT);
    // A developer whose session was revoked (logged out) keeps a well-signed token.
    let gone = app.register("gone@x.io").await;
    app.post("/api/v1/orgs/acme/members", &o.owner, json!({"email": "gone@x.io", "role": "member"})).await;
    app.post("/api/v1/orgs/acme/projects/KOD/members", &o.owner, json!({"email": "gone@x.io", "role": "developer"})).await;
    let mut db = app.sql().await;
    sqlx::query("UPDATE sessions SET revoked_at = now() WHERE user_id = (SELECT id FROM users WHERE email = 'gone@x.io')").execute(&mut db).await.unwrap();

    let cases: Vec<Case> = vec![
        (&o.owner, "KOD", json!({"title": "first", "labels": ["x", "y"], "priority": "high"}), None),
        (&o.dev_token, "KOD", json!({"title": "assigned", "assignee": "  OWN@x.io "}), None),
        (&o.viewer, "KOD", json!({}), Some((StatusCode::FORBIDDEN, "forbidden"))),
        (&o.outsider, "KOD", json!({}), Some((StatusCode::NOT_FOUND, "org_not_found"))),
        (&o.owner, "NOPE", json!({}), Some((StatusCode::NOT_FOUND, "project_not_found"))),
        (&o.owner, "KOD", json!({"title": "done already", "status": "done"}), None),
        (&o.owner, "KOD", json!({"status": "Nowhere"}), Some((StatusCode::UNPROCESSABLE_ENTITY, "invalid_request"))),
        (&o.owner, "KOD", json!({"assignee": "stranger@x.io"}), Some((StatusCode::UNPROCESSABLE_ENTITY, "invalid_request"))),
        (&revoked_token, "KOD", json!({}), Some((StatusCode::UNAUTHORIZED, "unauthorized"))),
        (&gone, "KOD", json!({}), Some((StatusCode::UNAUTHORIZED, "unauthorized"))),
        (&o.owner, "WEB", json!({"title": "ruled"}), Some((StatusCode::CREATED, ""))),
        (&o.dev_token, "KOD", json!({"title": "by script"}), None),
    ];
    let tasks: Vec<NewTask> = cases.iter().map(|(who, project, body, _)| new_task(&app, who, project, body.clone())).collect();
    let acme = OrgSlug::parse("acme").unwrap();
    let answers = create_batch(&app.server.state, &acme, &tasks).await.unwrap();

    let made: Vec<usize> = answers.iter().enumerate().filter(|(_, a)| a.is_some()).map(|(i, _)| i).collect();
    assert_eq!(made, vec![0, 1, 5, 11]);
    let task = |i: usize| &answers[i].as_ref().unwrap().task;
    let mut numbers: Vec<i32> = made.iter().map(|i| task(*i).number).collect();
    numbers.sort();
    assert_eq!(numbers, vec![1, 2, 3, 4]);
    assert_eq!((task(0).labels.clone(), task(0).priority, task(0).status.as_str()), (vec!["x".to_owned(), "y".to_owned()], Priority::High, "To Do"));
    assert_eq!((task(1).assignee.as_deref(), task(1).created_by.as_deref()), (Some("own@x.io"), Some("dev@x.io")));
    assert_eq!(task(5).status, "Done");

    // One transaction made them, each with its task.created event, by its creator.
    assert_eq!(sql_i64(&mut db, "SELECT count(*) FROM org_acme.tasks").await, 4);
    assert_eq!(sql_i64(&mut db, "SELECT count(DISTINCT xmin::text) FROM org_acme.tasks").await, 1);
    let events: Vec<(String, Value)> = sqlx::query_as(
        "SELECT p.key || '-' || t.number, e.payload FROM org_acme.task_events e
         JOIN org_acme.tasks t ON t.id = e.task_id JOIN org_acme.projects p ON p.id = t.project_id
         WHERE e.type = 'task.created' AND e.actor_id = t.created_by ORDER BY e.id",
    )
    .fetch_all(&mut db)
    .await
    .unwrap();
    assert_eq!(events.len(), 4);
    for i in &made {
        let t = task(*i);
        let (_, payload) = events.iter().find(|(k, _)| *k == t.key).unwrap();
        assert_eq!((payload["title"].as_str(), payload["status"].as_str()), (Some(t.title.as_str()), Some(t.status.as_str())));
    }
    // What the API shows is what the batch answered.
    let (s, shown) = app.get(&format!("/api/v1/orgs/acme/tasks/{}", task(1).key), &o.owner).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(shown, serde_json::to_value(task(1)).unwrap());

    // The ones it left get their own answer from the API.
    for (who, project, body, expect) in &cases {
        let Some((status, error)) = expect else { continue };
        let mut body = body.clone();
        body["title"] = body.get("title").cloned().unwrap_or(json!("a task"));
        let (s, v) = app.post(&format!("/api/v1/orgs/acme/projects/{project}/tasks"), who, body.clone()).await;
        assert_eq!(s, *status, "{project} {body}: {v}");
        if !error.is_empty() {
            assert_eq!(code(&v), *error);
        }
    }
    // The rule reacted to the creation made alone; nothing reached beta.
    let (_, web) = app.get("/api/v1/orgs/acme/projects/WEB/tasks", &o.owner).await;
    assert_eq!(web["data"][0]["labels"], json!(["triaged"]));
    assert_eq!(sql_i64(&mut db, "SELECT count(*) FROM org_beta.tasks").await, 0);

    // A NUL in a status or an assignee is refused before it reaches a batch.
    for body in [json!({"title": "t", "status": "To Do\u{0}"}), json!({"title": "t", "assignee": "own@x.io\u{0}"})] {
        let (s, v) = app.post("/api/v1/orgs/acme/projects/KOD/tasks", &o.owner, body).await;
        assert_eq!((s, code(&v)), (StatusCode::UNPROCESSABLE_ENTITY, "invalid_request"), "{v}");
    }
    // An org whose schema failed to migrate gets nothing from a batch, and 503 alone.
    sqlx::query("UPDATE orgs SET migration_error = 'test' WHERE slug = 'acme'").execute(&mut db).await.unwrap();
    let answers = create_batch(&app.server.state, &acme, &[new_task(&app, &o.owner, "KOD", json!({}))]).await.unwrap();
    assert!(answers[0].is_none());
    let (s, v) = app.post("/api/v1/orgs/acme/projects/KOD/tasks", &o.owner, json!({"title": "t"})).await;
    assert_eq!((s, code(&v)), (StatusCode::SERVICE_UNAVAILABLE, "unavailable"), "{v}");
}

/// Holds creations in acme at a gate (a trigger that waits while `org_acme.gate` has a
/// row) while `requests` are sent, so that what arrives meanwhile queues; then opens
/// it and returns the answers. A gate rather than a lock: a batch gives up waiting for
/// a lock after a second.
async fn burst(app: &TestApp, requests: Vec<(String, String, Value)>) -> Vec<(StatusCode, Value)> {
    let mut db = app.sql().await;
    sqlx::raw_sql(
        "CREATE TABLE IF NOT EXISTS org_acme.gate (closed bool);
         INSERT INTO org_acme.gate VALUES (true);
         CREATE OR REPLACE FUNCTION org_acme.wait_at_gate() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
             WHILE EXISTS (SELECT 1 FROM org_acme.gate) LOOP PERFORM pg_sleep(0.005); END LOOP;
             RETURN NULL;
         END $$;
         CREATE OR REPLACE TRIGGER wait_at_gate BEFORE INSERT ON org_acme.tasks
             FOR EACH STATEMENT EXECUTE FUNCTION org_acme.wait_at_gate();",
    )
    .execute(&mut db)
    .await
    .unwrap();
    let creates = app.server.state.creates.clone();
    let expected = creates.submitted() + requests.len() as u64;
    let sent: Vec<_> = requests
        .into_iter()
        .map(|(token, path, body)| {
            let http = app.http.clone();
            let url = format!("{}{path}", app.base);
            tokio::spawn(async move {
                let resp = http.post(url).bearer_auth(token).json(&body).send().await.unwrap();
                let status = resp.status();
                (status, resp.json::<Value>().await.unwrap())
            })
        })
        .collect();
    // Every request is queued, or in one of the (at most COMMITTERS) batches waiting
    // at the gate: once it opens, one committer takes all that is queued.
    let deadline = Instant::now() + Duration::from_secs(20);
    while creates.submitted() < expected {
        assert!(Instant::now() < deadline, "requests not queued: {} of {expected}", creates.submitted());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    sqlx::query("DELETE FROM org_acme.gate").execute(&mut db).await.unwrap();
    let mut answers = Vec::new();
    for s in sent {
        answers.push(s.await.unwrap());
    }
    answers
}

/// While one org's tasks table is locked (another transaction's DDL, say), creations
/// in other orgs go on: a batch waits a second for a lock, then leaves its creations
/// to be made alone, each waiting on its own connection.
#[tokio::test]
async fn one_org_s_locked_tables_do_not_hold_up_the_others() {
    let app = TestApp::spawn().await;
    let o = orgs(&app).await;
    let mut db = app.sql().await;
    let mut lock = db.begin().await.unwrap();
    sqlx::query("LOCK TABLE org_acme.tasks IN ACCESS EXCLUSIVE MODE").execute(&mut *lock).await.unwrap();
    let mut watch = app.sql().await;
    let post = |token: &str, path: &str, title: &str| {
        let req = app.http.post(format!("{}{path}", app.base)).bearer_auth(token).json(&json!({"title": title}));
        tokio::spawn(async move {
            let resp = req.send().await.unwrap();
            (resp.status(), resp.json::<Value>().await.unwrap())
        })
    };
    // Both committers end up waiting on acme's lock.
    let mut held = Vec::new();
    for i in 0..COMMITTERS {
        held.push(post(&o.owner, "/api/v1/orgs/acme/projects/KOD/tasks", &format!("held {i}")));
        let deadline = Instant::now() + Duration::from_secs(10);
        while sql_i64(&mut watch, "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'").await
            < i as i64 + 1
        {
            assert!(Instant::now() < deadline, "the creation in acme did not reach the lock");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    // beta's creation is answered while acme's lock is still held.
    let beta = post(&o.outsider, "/api/v1/orgs/beta/projects/BET/tasks", "elsewhere");
    let (s, v) = tokio::time::timeout(Duration::from_secs(10), beta).await.expect("beta waited for acme's lock").unwrap();
    assert_eq!((s, v["key"].as_str()), (StatusCode::CREATED, Some("BET-1")), "{v}");
    assert!(!held.iter().any(|h| h.is_finished()), "acme's creations cannot have finished under the lock");
    lock.rollback().await.unwrap();
    for h in held {
        let (s, v) = h.await.unwrap();
        assert_eq!(s, StatusCode::CREATED, "{v}");
    }
}

/// Under concurrency, creations share commits: what queued while the committers were
/// busy goes in one transaction, orgs stay apart, and each request gets its own task.
#[tokio::test]
async fn concurrent_creations_share_commits_and_orgs_stay_apart() {
    let app = TestApp::spawn().await;
    let o = orgs(&app).await;
    let mut requests = Vec::new();
    for i in 0..40 {
        let token = if i % 2 == 0 { &o.owner } else { &o.dev_token };
        requests.push((token.clone(), "/api/v1/orgs/acme/projects/KOD/tasks".to_owned(), json!({"title": format!("acme {i}")})));
    }
    for i in 0..10 {
        requests.push((o.outsider.clone(), "/api/v1/orgs/beta/projects/BET/tasks".to_owned(), json!({"title": format!("beta {i}")})));
        requests.push((o.outsider.clone(), "/api/v1/orgs/acme/projects/KOD/tasks".to_owned(), json!({"title": "intruder"})));
    }
    let answers = burst(&app, requests).await;

    let mut acme = Vec::new();
    for (i, (s, v)) in answers.iter().enumerate() {
        match i {
            0..40 => {
                assert_eq!((*s, v["title"].as_str()), (StatusCode::CREATED, Some(format!("acme {i}").as_str())), "{v}");
                assert_eq!(v["created_by"], if i % 2 == 0 { "own@x.io" } else { "dev@x.io" });
                acme.push(v["number"].as_i64().unwrap());
            }
            _ if i % 2 == 0 => assert_eq!((*s, v["project"].as_str()), (StatusCode::CREATED, Some("BET")), "{v}"),
            _ => assert_eq!((*s, code(v)), (StatusCode::NOT_FOUND, "org_not_found"), "{v}"),
        }
    }
    acme.sort();
    assert_eq!(acme, (1..=40).collect::<Vec<_>>());
    let mut db = app.sql().await;
    assert_eq!(sql_i64(&mut db, "SELECT count(*) FROM org_acme.tasks").await, 40);
    assert_eq!(sql_i64(&mut db, "SELECT count(*) FROM org_acme.task_events WHERE type = 'task.created'").await, 40);
    assert_eq!(sql_i64(&mut db, "SELECT count(*) FROM org_beta.tasks").await, 10);
    // At most one transaction per committer held by the lock, plus one for the queue.
    let commits = sql_i64(&mut db, "SELECT count(DISTINCT xmin::text) FROM org_acme.tasks").await;
    assert!(commits <= COMMITTERS as i64 + 1, "40 creations took {commits} transactions");
}

/// A batch whose transaction fails loses nothing: each of its creations is made alone.
#[tokio::test]
async fn a_failed_batch_is_retried_one_by_one() {
    let app = TestApp::spawn().await;
    let o = orgs(&app).await;
    // From now on, any statement that inserts more than one task fails.
    let mut db = app.sql().await;
    sqlx::raw_sql(
        "CREATE FUNCTION org_acme.one_at_a_time() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
             IF (SELECT count(*) FROM new_rows) > 1 THEN RAISE EXCEPTION 'no batches here'; END IF;
             RETURN NULL;
         END $$;
         CREATE TRIGGER one_at_a_time AFTER INSERT ON org_acme.tasks REFERENCING NEW TABLE AS new_rows
             FOR EACH STATEMENT EXECUTE FUNCTION org_acme.one_at_a_time();",
    )
    .execute(&mut db)
    .await
    .unwrap();
    let requests =
        (0..30).map(|i| (o.owner.clone(), "/api/v1/orgs/acme/projects/KOD/tasks".to_owned(), json!({"title": format!("t{i}")}))).collect();
    let answers = burst(&app, requests).await;
    for (i, (s, v)) in answers.iter().enumerate() {
        assert_eq!((*s, v["title"].as_str()), (StatusCode::CREATED, Some(format!("t{i}").as_str())), "{v}");
    }
    assert_eq!(sql_i64(&mut db, "SELECT count(*) FROM org_acme.tasks").await, 30);
    assert_eq!(sql_i64(&mut db, "SELECT count(DISTINCT xmin::text) FROM org_acme.tasks").await, 30);
    // A batch did fail: the numbers it had drawn are gone.
    assert!(sql_i64(&mut db, "SELECT max(number)::int8 FROM org_acme.tasks").await > 30);
    assert_eq!(sql_i64(&mut db, "SELECT count(*) FROM org_acme.task_events WHERE type = 'task.created'").await, 30);
    let keys: std::collections::HashSet<_> = answers.iter().map(|(_, v)| v["key"].as_str().unwrap().to_owned()).collect();
    assert_eq!(keys.len(), 30);
}

/// Made-up API tokens never reach the shared committers: a token is queued only once
/// it has passed a check on this server.
#[tokio::test]
async fn made_up_api_tokens_are_refused_without_the_queue() {
    let app = TestApp::spawn().await;
    let o = orgs(&app).await;
    let creates = &app.server.state.creates;
    let path = "/api/v1/orgs/acme/projects/KOD/tasks";
    let before = creates.submitted();
    for i in 0..5 {
        let (s, v) = app.post(path, &format!("kodel_pat_made_up_{i}"), json!({"title": "x"})).await;
        assert_eq!((s, code(&v)), (StatusCode::UNAUTHORIZED, "unauthorized"));
    }
    assert_eq!(creates.submitted(), before);
    // A real token is checked alone the first time, then queued.
    let (s, v) = app.post("/api/v1/tokens", &o.owner, json!({"name": "fresh"})).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let fresh = v["token"].as_str().unwrap();
    assert_eq!(app.post(path, fresh, json!({"title": "first"})).await.0, StatusCode::CREATED);
    assert_eq!(creates.submitted(), before);
    assert_eq!(app.post(path, fresh, json!({"title": "second"})).await.0, StatusCode::CREATED);
    assert_eq!(creates.submitted(), before + 1);
    // Revoked, it is refused even though it was seen lately.
    let id = v["id"].as_str().unwrap();
    assert_eq!(app.delete(&format!("/api/v1/tokens/{id}"), &o.owner).await.0, StatusCode::NO_CONTENT);
    assert_eq!(app.post(path, fresh, json!({"title": "third"})).await.0, StatusCode::UNAUTHORIZED);
}
