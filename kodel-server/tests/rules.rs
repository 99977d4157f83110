//! Automation rules through HTTP: every trigger and every action, conditions, dry runs,
//! disabled rules, failures recorded, cascades that stop at their bound, time-based
//! rules, and webhooks that retry without ever holding up a change.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{TestApp, code, fresh_database, test_config};
use kodel_core::jobs::{ArtifactKind, NewArtifact};
use kodel_server::hub::agents;
use kodel_server::engine::{background, jobs, queue, rules};
use reqwest::StatusCode;
use serde_json::{Value, json};
use uuid::Uuid;

/// A server whose background sweep stays out of the way: time-based rules run only
/// when the test runs them.
async fn quiet_app() -> TestApp {
    let mut config = test_config();
    config.engine_tick = 3600.0;
    TestApp::spawn_with(fresh_database().await, config).await
}

async fn setup(app: &TestApp) -> String {
    let owner = app.owner_with_project("owner@x.io", "acme", "KOD").await;
    app.register("ann@x.io").await;
    app.post("/api/v1/orgs/acme/members", &owner, json!({"email": "ann@x.io", "role": "member"})).await;
    app.post("/api/v1/orgs/acme/projects/KOD/members", &owner, json!({"email": "ann@x.io", "role": "developer"})).await;
    owner
}

async fn rule(app: &TestApp, token: &str, mut body: Value) -> Value {
    if body.get("project").is_none() {
        body["project"] = json!("KOD");
    }
    let (s, v) = app.post("/api/v1/orgs/acme/rules", token, body.clone()).await;
    assert_eq!(s, StatusCode::CREATED, "{body}: {v}");
    v
}

async fn task(app: &TestApp, token: &str, key: &str) -> Value {
    app.get(&format!("/api/v1/orgs/acme/tasks/{key}"), token).await.1
}

async fn patch(app: &TestApp, token: &str, key: &str, mut body: Value) -> Value {
    body["version"] = task(app, token, key).await["version"].clone();
    let (s, v) = app.patch(&format!("/api/v1/orgs/acme/tasks/{key}"), token, body).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    v
}

fn labels(t: &Value) -> Vec<&str> {
    t["labels"].as_array().unwrap().iter().map(|l| l.as_str().unwrap()).collect()
}

async fn comments(app: &TestApp, token: &str, key: &str) -> Vec<String> {
    let (_, v) = app.get(&format!("/api/v1/orgs/acme/tasks/{key}/comments"), token).await;
    v["data"].as_array().unwrap().iter().map(|c| c["body"].as_str().unwrap().to_owned()).collect()
}

async fn fired(app: &TestApp, key: &str) -> Vec<String> {
    app.events_of("acme", key, "rule.fired").await.iter().map(|p| p["rule"].as_str().unwrap().to_owned()).collect()
}

/// Claims the org's next job as `agent` and returns its id.
async fn claim(app: &TestApp, agent: Uuid) -> Uuid {
    let slug = kodel_core::OrgSlug::parse("acme").unwrap();
    queue::claim(&app.server.state, &slug, agent, &[], Duration::from_secs(300)).await.unwrap().unwrap().id
}

#[tokio::test]
async fn every_trigger_and_action() {
    let app = quiet_app().await;
    let owner = setup(&app).await;
    let r = |name: &str, body: Value| {
        let mut body = body;
        body["name"] = json!(name);
        body
    };
    rule(&app, &owner, r("new fixes", json!({"trigger": {"type": "task_created"}, "conditions": [{"title_matches": "^Fix"}], "actions": [{"add_label": "new"}, {"set_priority": "low"}]}))).await;
    rule(&app, &owner, r("dry", json!({"trigger": {"type": "task_created"}, "dry_run": true, "actions": [{"add_label": "dry"}]}))).await;
    rule(&app, &owner, r("off", json!({"trigger": {"type": "task_created"}, "enabled": false, "actions": [{"add_label": "off"}]}))).await;
    rule(&app, &owner, r("bugs", json!({"trigger": {"type": "label_added", "label": "bug"}, "actions": [{"comment": "Bug noted"}, {"assign": "ann@x.io"}]}))).await;
    rule(&app, &owner, r("triage", json!({"trigger": {"type": "label_removed", "label": "new"}, "actions": [{"add_label": "triaged"}]}))).await;
    rule(&app, &owner, r("assigned", json!({"trigger": {"type": "assignee_changed"}, "actions": [{"add_label": "assigned"}]}))).await;
    rule(&app, &owner, r("started", json!({"trigger": {"type": "status_changed", "from": "To Do", "to": "In Progress"}, "actions": [{"remove_label": "new"}]}))).await;
    rule(&app, &owner, r("bug comments", json!({"trigger": {"type": "comment_added"}, "conditions": [{"label": "bug"}, {"no_label": "vip"}], "actions": [{"set_priority": "high"}]}))).await;
    rule(&app, &owner, r("any", json!({"trigger": {"type": "comment_added"}, "match": "any", "conditions": [{"priority": ["urgent"]}, {"description_matches": "zzz"}], "actions": [{"add_label": "any-hit"}]}))).await;
    rule(&app, &owner, r("ai", json!({"trigger": {"type": "label_added", "label": "ai"}, "actions": [{"start_job": "qa-template"}]}))).await;
    rule(&app, &owner, r("qa done", json!({"trigger": {"type": "job_succeeded", "kind": "qa"}, "actions": [{"move": "Done"}]}))).await;
    rule(&app, &owner, r("job failed", json!({"trigger": {"type": "job_failed"}, "actions": [{"add_label": "job-failed"}, {"assign": null}]}))).await;
    rule(&app, &owner, r("approved", json!({"trigger": {"type": "artifact_approved"}, "actions": [{"comment": "Approved!"}]}))).await;
    rule(&app, &owner, r("rejected", json!({"trigger": {"type": "artifact_rejected"}, "actions": [{"add_label": "rework"}]}))).await;
    rule(&app, &owner, r("broken", json!({"trigger": {"type": "label_added", "label": "broken"}, "actions": [{"move": "Nowhere"}, {"add_label": "after-failure"}]}))).await;

    // Task created: the matching rule acts; the dry run only says what it would do.
    let (s, t1) = app.post("/api/v1/orgs/acme/projects/KOD/tasks", &owner, json!({"title": "Fix crash"})).await;
    assert_eq!(s, StatusCode::CREATED);
    assert_eq!((labels(&t1), t1["priority"].as_str()), (vec!["new"], Some("low")), "the response shows what rules did");
    let t2 = app.create_task(&owner, "acme", "KOD", "Other").await;
    assert_eq!(labels(&t2), Vec::<&str>::new());
    assert_eq!(fired(&app, "KOD-1").await, ["new fixes", "dry"]);
    assert_eq!(app.events_of("acme", "KOD-1", "rule.fired").await[1]["dry_run"], true);

    // A label: comment and assign; those fire the comment and assignee rules in turn.
    let t = patch(&app, &owner, "KOD-1", json!({"labels": ["new", "bug"]})).await;
    assert_eq!(t["assignee"], "ann@x.io");
    assert_eq!(labels(&t), ["new", "bug", "assigned"]);
    assert_eq!(t["priority"], "high");
    assert_eq!(comments(&app, &owner, "KOD-1").await, ["Bug noted"]);

    // A move removes a label, which fires the label_removed rule.
    let (s, t) = app.post("/api/v1/orgs/acme/tasks/KOD-1/move", &owner, json!({"status": "In Progress"})).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(labels(&t), ["bug", "assigned", "triaged"]);

    // A label starts a job; its success moves the task; approving comments.
    patch(&app, &owner, "KOD-1", json!({"labels": ["bug", "assigned", "triaged", "ai"]})).await;
    let (_, js) = app.get("/api/v1/orgs/acme/jobs?task=KOD-1", &owner).await;
    assert_eq!((js["data"][0]["kind"].as_str(), js["data"][0]["status"].as_str()), (Some("qa"), Some("pending")));
    let mut db = app.org_tx("acme").await;
    let bot = agents::register(&mut db, None, &agents::Offer { name: "bot".into(), version: "0".into(), ..Default::default() }).await.unwrap();
    app.commit(db).await;
    let job = claim(&app, bot).await;
    let mut db = app.org_tx("acme").await;
    let report = NewArtifact { kind: ArtifactKind::TestReport, title: None, content: Some("ok".into()), reference: None, data: None };
    let arts = jobs::complete(&mut db, job, bot, "all good", &[report], Some(json!({}))).await.unwrap();
    app.commit(db).await;
    assert_eq!(task(&app, &owner, "KOD-1").await["status"], "Done");
    app.post(&format!("/api/v1/orgs/acme/artifacts/{}/approve", arts[0]), &owner, json!({})).await;
    assert_eq!(comments(&app, &owner, "KOD-1").await, ["Bug noted", "Approved!"]);

    // A failed job and a rejected artifact on the other task.
    patch(&app, &owner, "KOD-2", json!({"assignee": "ann@x.io"})).await;
    app.post("/api/v1/orgs/acme/jobs", &owner, json!({"task": "KOD-2", "template": "implement-template"})).await;
    let job = claim(&app, bot).await;
    let mut db = app.org_tx("acme").await;
    jobs::fail(&mut db, job, bot, "compiler error", false).await.unwrap();
    app.commit(db).await;
    let t = task(&app, &owner, "KOD-2").await;
    assert!(labels(&t).contains(&"job-failed"), "{t}");
    assert_eq!(t["assignee"], Value::Null);
    app.post("/api/v1/orgs/acme/jobs", &owner, json!({"task": "KOD-2", "template": "implement-template"})).await;
    let job = claim(&app, bot).await;
    let mut db = app.org_tx("acme").await;
    let patch_art = NewArtifact { kind: ArtifactKind::Patch, title: None, content: Some("diff".into()), reference: None, data: None };
    let arts = jobs::complete(&mut db, job, bot, "done", &[patch_art], Some(json!({}))).await.unwrap();
    app.commit(db).await;
    app.post(&format!("/api/v1/orgs/acme/artifacts/{}/reject", arts[0]), &owner, json!({"comment": "no"})).await;
    assert!(labels(&task(&app, &owner, "KOD-2").await).contains(&"rework"));

    // A failing action is recorded and the rule's other actions still run; the change stands.
    let t = patch(&app, &owner, "KOD-2", json!({"labels": ["broken"]})).await;
    assert_eq!(labels(&t), ["broken", "after-failure"]);
    let failed = app.events_of("acme", "KOD-2", "rule.failed").await;
    assert_eq!(failed.len(), 1);
    assert!(failed[0]["error"].as_str().unwrap().contains("Nowhere"), "{failed:?}");
    assert!(labels(&t).iter().all(|l| *l != "any-hit"), "an any-rule with no matching condition stays quiet");
    assert!(!app.event_types("acme", "KOD-1").await.iter().any(|e| e == "rule.cascade_stopped"));

    // The disabled rule never fired, and the dry run changed nothing.
    for key in ["KOD-1", "KOD-2"] {
        let l = task(&app, &owner, key).await;
        assert!(!labels(&l).contains(&"off") && !labels(&l).contains(&"dry"), "{l}");
    }
    let names = fired(&app, "KOD-1").await;
    for n in ["bugs", "assigned", "bug comments", "started", "triage", "ai", "qa done", "approved"] {
        assert!(names.iter().any(|x| x == n), "{n} did not fire: {names:?}");
    }
}

#[tokio::test]
async fn schedules_and_stale_tasks_fire_once_per_slot() {
    let app = quiet_app().await;
    let owner = setup(&app).await;
    rule(&app, &owner, json!({"name": "nightly", "trigger": {"type": "schedule", "cron": "0 3 * * *"}, "conditions": [{"label": "nightly"}], "actions": [{"add_label": "scheduled"}]})).await;
    rule(&app, &owner, json!({"name": "nudge", "trigger": {"type": "stale", "hours": 48}, "conditions": [{"status": ["To Do"]}], "actions": [{"comment": "Still open?"}]})).await;
    app.create_task(&owner, "acme", "KOD", "Night job").await;
    app.create_task(&owner, "acme", "KOD", "Quiet").await;
    app.create_task(&owner, "acme", "KOD", "Busy").await;
    patch(&app, &owner, "KOD-1", json!({"labels": ["nightly"]})).await;
    app.post("/api/v1/orgs/acme/tasks/KOD-3/move", &owner, json!({"status": "In Progress"})).await;
    // KOD-2 and KOD-3 have been quiet for three days.
    let mut db = app.org_tx("acme").await;
    sqlx::query("UPDATE tasks SET updated_at = now() - interval '3 days' WHERE number IN (2, 3)").execute(db.conn()).await.unwrap();
    app.commit(db).await;

    let run = |at: chrono::DateTime<chrono::Utc>| {
        let app = &app;
        async move {
            let mut db = app.org_tx("acme").await;
            let n = rules::run_timed(&mut db, at).await.unwrap();
            app.commit(db).await;
            n
        }
    };
    let now = chrono::Utc::now();
    // Before 03:00 comes round only the stale rule has work: KOD-2 (KOD-3 is not To Do).
    let before_three = run(now).await;
    let next_three = now.date_naive().and_hms_opt(3, 0, 0).unwrap().and_utc();
    let next_three = if next_three <= now { next_three + chrono::Duration::days(1) } else { next_three };
    assert_eq!(before_three, 1);
    assert_eq!(comments(&app, &owner, "KOD-2").await, ["Still open?"]);
    assert!(!labels(&task(&app, &owner, "KOD-1").await).contains(&"scheduled"));
    // After 03:00: the schedule runs once on the matching task, the stale rule not again.
    assert_eq!(run(next_three + chrono::Duration::minutes(1)).await, 1);
    assert_eq!(run(next_three + chrono::Duration::minutes(2)).await, 0);
    assert!(labels(&task(&app, &owner, "KOD-1").await).contains(&"scheduled"));
    assert_eq!(comments(&app, &owner, "KOD-2").await, ["Still open?"]);
    assert_eq!(comments(&app, &owner, "KOD-3").await, Vec::<String>::new());
    let f = app.events_of("acme", "KOD-1", "rule.fired").await;
    assert_eq!((f.len(), f[0]["on"].as_str()), (1, Some("schedule")));
}

#[tokio::test]
async fn rules_are_checked_and_scoped() {
    let app = quiet_app().await;
    let owner = setup(&app).await;
    let ann = app.call(reqwest::Method::POST, "/api/v1/auth/login", None, Some(json!({"email": "ann@x.io", "password": "correct horse"}))).await.1["access_token"].as_str().unwrap().to_owned();
    let ok = json!({"name": "x", "project": "KOD", "trigger": {"type": "task_created"}, "actions": [{"add_label": "x"}]});
    // A developer may not add project rules; a tech lead may; org-wide rules are for admins.
    let (s, _) = app.post("/api/v1/orgs/acme/rules", &ann, ok.clone()).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    app.patch("/api/v1/orgs/acme/projects/KOD/members/ann@x.io", &owner, json!({"role": "tech_lead"})).await;
    let (s, r) = app.post("/api/v1/orgs/acme/rules", &ann, ok.clone()).await;
    assert_eq!(s, StatusCode::CREATED, "{r}");
    assert_eq!((r["trigger"]["type"].as_str(), r["project"].as_str(), r["enabled"].as_bool()), (Some("task_created"), Some("KOD"), Some(true)));
    let mut org_wide = ok.clone();
    org_wide.as_object_mut().unwrap().remove("project");
    let (s, _) = app.post("/api/v1/orgs/acme/rules", &ann, org_wide.clone()).await;
    assert_eq!(s, StatusCode::FORBIDDEN);

    let bad = [
        (json!({"type": "schedule", "cron": "every day"}), json!([{"add_label": "x"}]), "cron"),
        (json!({"type": "task_created"}), json!([]), "at least one action"),
        (json!({"type": "task_created"}), json!([{"webhook": {"url": "ftp://x"}}]), "http"),
        (json!({"type": "stale", "hours": 0}), json!([{"add_label": "x"}]), "hours"),
        (json!({"type": "task_created"}), json!([{"teleport": "x"}]), "unknown variant"),
        (json!({"type": "sometimes"}), json!([{"add_label": "x"}]), "unknown variant"),
    ];
    for (trigger, actions, why) in bad {
        let body = json!({"name": "bad", "project": "KOD", "trigger": trigger, "actions": actions});
        let (s, v) = app.post("/api/v1/orgs/acme/rules", &owner, body.clone()).await;
        assert_eq!((s, code(&v)), (StatusCode::UNPROCESSABLE_ENTITY, "invalid_request"), "{body}");
        assert!(v["error"]["message"].as_str().unwrap().contains(why), "{body}: {v}");
    }
    let body = json!({"name": "bad", "project": "KOD", "trigger": {"type": "task_created"}, "conditions": [{"title_matches": "(unclosed"}], "actions": [{"add_label": "x"}]});
    let (s, _) = app.post("/api/v1/orgs/acme/rules", &owner, body).await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);

    // A project holds at most MAX_RULES rules.
    let mut db = app.org_tx("acme").await;
    sqlx::query(
        "INSERT INTO automation_rules (id, project_id, name, trigger_kind, spec)
         SELECT gen_random_uuid(), (SELECT id FROM projects WHERE key = 'KOD'), 'filler', 'comment_added',
                '{\"trigger\": {\"type\": \"comment_added\"}, \"actions\": [{\"add_label\": \"x\"}]}'
         FROM generate_series(1, $1 - (SELECT count(*) FROM automation_rules))",
    )
    .bind(kodel_core::rules::MAX_RULES)
    .execute(db.conn())
    .await
    .unwrap();
    app.commit(db).await;
    let (s, v) = app.post("/api/v1/orgs/acme/rules", &ann, ok.clone()).await;
    assert_eq!((s, code(&v)), (StatusCode::UNPROCESSABLE_ENTITY, "invalid_request"));
    assert!(v["error"]["message"].as_str().unwrap().contains("200 rules"), "{v}");
    let mut db = app.org_tx("acme").await;
    sqlx::query("DELETE FROM automation_rules WHERE name = 'filler'").execute(db.conn()).await.unwrap();
    app.commit(db).await;

    // Disable, edit, delete; an outsider sees nothing.
    let id = r["id"].as_str().unwrap();
    let (s, v) = app.patch(&format!("/api/v1/orgs/acme/rules/{id}"), &ann, json!({"enabled": false, "actions": [{"add_label": "y"}]})).await;
    assert_eq!((s, v["enabled"].as_bool(), v["actions"].clone()), (StatusCode::OK, Some(false), json!([{"add_label": "y"}])));
    let t = app.create_task(&owner, "acme", "KOD", "t").await;
    assert_eq!(labels(&t), Vec::<&str>::new());
    let eve = app.register("eve@x.io").await;
    app.post("/api/v1/orgs", &eve, json!({"slug": "evil", "name": "e"})).await;
    let (s, _) = app.get(&format!("/api/v1/orgs/evil/rules/{id}"), &eve).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (_, list) = app.get("/api/v1/orgs/acme/rules?project=KOD", &ann).await;
    assert_eq!(list["data"].as_array().unwrap().len(), 1);
    assert_eq!(app.delete(&format!("/api/v1/orgs/acme/rules/{id}"), &ann).await.0, StatusCode::NO_CONTENT);
    let (s, v) = app.get(&format!("/api/v1/orgs/acme/rules/{id}"), &ann).await;
    assert_eq!((s, code(&v)), (StatusCode::NOT_FOUND, "rule_not_found"));
}

#[tokio::test]
async fn cascades_that_would_loop_stop_at_the_bound() {
    let app = quiet_app().await;
    let owner = setup(&app).await;
    rule(&app, &owner, json!({"name": "A", "trigger": {"type": "status_changed", "to": "In Progress"}, "actions": [{"move": "Done"}]})).await;
    rule(&app, &owner, json!({"name": "B", "trigger": {"type": "status_changed", "to": "Done"}, "actions": [{"move": "In Progress"}]})).await;
    app.create_task(&owner, "acme", "KOD", "Ping-pong").await;
    let (s, t) = app.post("/api/v1/orgs/acme/tasks/KOD-1/move", &owner, json!({"status": "In Progress"})).await;
    assert_eq!(s, StatusCode::OK, "{t}");
    assert_eq!(t["status"], "In Progress");
    assert_eq!(fired(&app, "KOD-1").await, ["A", "B"]);
    let stopped = app.events_of("acme", "KOD-1", "rule.cascade_stopped").await;
    assert_eq!(stopped.len(), 1);
    assert_eq!((stopped[0]["rule"].as_str(), stopped[0]["reason"].as_str()), (Some("A"), Some("the rule already fired in this cascade")));

    // A chain of distinct rules stops at the depth limit.
    for i in 0..8 {
        rule(&app, &owner, json!({"name": format!("L{i}"), "trigger": {"type": "label_added", "label": format!("l{i}")}, "actions": [{"add_label": format!("l{}", i + 1)}]})).await;
    }
    app.create_task(&owner, "acme", "KOD", "Chain").await;
    let t = patch(&app, &owner, "KOD-2", json!({"labels": ["l0"]})).await;
    assert_eq!(labels(&t), ["l0", "l1", "l2", "l3", "l4", "l5"]);
    let stopped = app.events_of("acme", "KOD-2", "rule.cascade_stopped").await;
    assert_eq!(stopped.len(), 1);
    assert!(stopped[0]["reason"].as_str().unwrap().contains("depth limit of 5"), "{stopped:?}");
}

/// A local endpoint that fails the first `fail_first` calls, and records all of them.
async fn hook_server(fail_first: usize) -> (String, Arc<Mutex<Vec<(String, Value)>>>) {
    let seen: Arc<Mutex<Vec<(String, Value)>>> = Arc::default();
    let record = seen.clone();
    let router = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |headers: axum::http::HeaderMap, body: axum::Json<Value>| {
            let record = record.clone();
            async move {
                let mut seen = record.lock().unwrap();
                let id = headers.get("x-kodel-delivery").and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
                seen.push((id, body.0));
                if seen.len() <= fail_first { StatusCode::INTERNAL_SERVER_ERROR } else { StatusCode::OK }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    (url, seen)
}

/// Waits (bounded) until the task has an event of this type.
async fn wait_for_event(app: &TestApp, key: &str, kind: &str, count: usize) -> Vec<Value> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let found = app.events_of("acme", key, kind).await;
        if found.len() >= count {
            return found;
        }
        assert!(tokio::time::Instant::now() < deadline, "no {kind} on {key} in time: {:?}", app.event_types("acme", key).await);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn webhooks_retry_after_failure_and_never_block_the_change() {
    let app = TestApp::spawn().await; // webhook retries after 0.2 s
    let owner = setup(&app).await;
    let (url, seen) = hook_server(1).await;
    rule(&app, &owner, json!({"name": "notify", "trigger": {"type": "status_changed"}, "actions": [{"webhook": {"url": url, "max_attempts": 3}}]})).await;
    // Nothing listens on a port that was just closed.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}/gone", l.local_addr().unwrap())
    };
    rule(&app, &owner, json!({"name": "lost", "trigger": {"type": "comment_added"}, "actions": [{"webhook": {"url": closed, "max_attempts": 2}}]})).await;
    app.create_task(&owner, "acme", "KOD", "Ship it").await;

    let (s, _) = app.post("/api/v1/orgs/acme/tasks/KOD-1/move", &owner, json!({"status": "In Progress"})).await;
    assert_eq!(s, StatusCode::OK, "the change commits whatever the endpoint does");
    let delivered = wait_for_event(&app, "KOD-1", "rule.webhook_delivered", 1).await;
    assert_eq!((delivered[0]["attempt"].as_i64(), delivered[0]["status"].as_i64()), (Some(2), Some(200)));
    let failed = app.events_of("acme", "KOD-1", "rule.webhook_failed").await;
    assert_eq!(failed.len(), 1);
    assert_eq!((failed[0]["error"].as_str(), failed[0]["will_retry"].as_bool()), (Some("HTTP 500"), Some(true)));
    let calls = seen.lock().unwrap().clone();
    assert_eq!(calls.len(), 2);
    assert_eq!(calls[0].0, calls[1].0, "a retry carries the same delivery id");
    assert_eq!((calls[1].1["task"]["key"].as_str(), calls[1].1["task"]["status"].as_str()), (Some("KOD-1"), Some("In Progress")));
    assert_eq!(calls[1].1["rule"]["name"], "notify");

    // An endpoint that never answers: tried max_attempts times, then given up, recorded.
    let (s, _) = app.post("/api/v1/orgs/acme/tasks/KOD-1/comments", &owner, json!({"body": "hello"})).await;
    assert_eq!(s, StatusCode::CREATED);
    let failed = wait_for_event(&app, "KOD-1", "rule.webhook_failed", 3).await;
    assert_eq!(failed[2]["will_retry"], false);
    assert_eq!(failed[2]["error"], "could not connect");
    let mut db = app.org_tx("acme").await;
    let states: Vec<(String, i32)> = sqlx::query_as("SELECT state, attempts FROM webhook_deliveries ORDER BY created_at").fetch_all(db.conn()).await.unwrap();
    app.commit(db).await;
    assert_eq!(states, [("delivered".to_owned(), 2), ("failed".to_owned(), 2)]);
    assert_eq!(swept(&app).await, Vec::<String>::new(), "no webhook call is pending any more");
}

/// The orgs the engine's sweep would look at now.
async fn swept(app: &TestApp) -> Vec<String> {
    background::candidates(&app.server.state).await.unwrap().into_iter().map(|(_, s)| s.as_str().to_owned()).collect()
}

#[tokio::test]
async fn the_sweep_looks_only_at_orgs_with_something_that_may_fall_due() {
    let app = quiet_app().await;
    let owner = setup(&app).await;
    app.owner_with_project("idle@x.io", "idle", "IDL").await;
    assert_eq!(swept(&app).await, Vec::<String>::new(), "two orgs with nothing timed, pending or running");

    // A stale rule: the sweep looks at acme, and runs it.
    let nudge = rule(&app, &owner, json!({"name": "nudge", "trigger": {"type": "stale", "hours": 48}, "actions": [{"comment": "Still open?"}]})).await;
    assert_eq!(swept(&app).await, ["acme"]);
    app.create_task(&owner, "acme", "KOD", "Quiet").await;
    let mut db = app.org_tx("acme").await;
    sqlx::query("UPDATE tasks SET updated_at = now() - interval '3 days'").execute(db.conn()).await.unwrap();
    app.commit(db).await;
    background::sweep(&app.server.state).await.unwrap();
    assert_eq!(comments(&app, &owner, "KOD-1").await, ["Still open?"]);
    let id = nudge["id"].as_str().unwrap();
    let (s, v) = app.patch(&format!("/api/v1/orgs/acme/rules/{id}"), &owner, json!({"enabled": false})).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(swept(&app).await, Vec::<String>::new(), "a disabled rule falls due never");
    let (s, v) = app.patch(&format!("/api/v1/orgs/acme/rules/{id}"), &owner, json!({"enabled": true})).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(swept(&app).await, ["acme"]);
    let (s, _) = app.call(reqwest::Method::DELETE, &format!("/api/v1/orgs/acme/rules/{id}"), Some(&owner), None).await;
    assert!(s.is_success());
    assert_eq!(swept(&app).await, Vec::<String>::new());

    // A pending webhook call, until it is sent.
    let mut db = app.org_tx("acme").await;
    sqlx::query("INSERT INTO webhook_deliveries (id, task_id, url, payload) SELECT $1, id, 'http://127.0.0.1:9/', '{}' FROM tasks")
        .bind(Uuid::now_v7())
        .execute(db.conn())
        .await
        .unwrap();
    app.commit(db).await;
    assert_eq!(swept(&app).await, ["acme"]);
    let mut db = app.org_tx("acme").await;
    sqlx::query("UPDATE webhook_deliveries SET state = 'delivered'").execute(db.conn()).await.unwrap();
    app.commit(db).await;
    assert_eq!(swept(&app).await, Vec::<String>::new());

    // A running job (its lease may expire).
    let t = app.create_task(&owner, "acme", "KOD", "Job").await;
    let (s, job) = app.post("/api/v1/orgs/acme/jobs", &owner, json!({"task": t["key"], "template": "implement-template"})).await;
    assert_eq!(s, StatusCode::CREATED, "{job}");
    assert_eq!(swept(&app).await, Vec::<String>::new(), "a queued job waits for an agent, not for the sweep");
    let mut db = app.org_tx("acme").await;
    sqlx::query("UPDATE ai_jobs SET state = 'running', lease_expires_at = now() + interval '1 minute'").execute(db.conn()).await.unwrap();
    app.commit(db).await;
    assert_eq!(swept(&app).await, ["acme"]);
}
