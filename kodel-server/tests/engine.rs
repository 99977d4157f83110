//! The task engine through HTTP and the engine API: workflows (built-in and custom),
//! bindings that start jobs, jobs completed by an agent (through the engine, as the
//! agents hub does), artifacts approved and rejected, and the events all this records.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::{TestApp, code};
use kodel_core::jobs::{ArtifactKind, NewArtifact};
use kodel_server::hub::agents;
use kodel_server::engine::{jobs, queue};
use reqwest::StatusCode;
use serde_json::{Value, json};
use uuid::Uuid;

const LEASE: Duration = Duration::from_secs(300);

/// A registered agent of the org.
async fn agent(app: &TestApp, slug: &str) -> Uuid {
    let mut db = app.org_tx(slug).await;
    let id = agents::register(&mut db, None, &agents::Offer { name: "test-agent".into(), version: "0".into(), ..Default::default() }).await.unwrap();
    app.commit(db).await;
    id
}

/// Claims the org's next job and completes it with one artifact, as an agent would.
async fn work_next(app: &TestApp, slug: &str, agent: Uuid, kind: ArtifactKind, content: &str) -> (Uuid, Uuid) {
    let s = kodel_core::OrgSlug::parse(slug).unwrap();
    let job = queue::claim(&app.server.state, &s, agent, &[], LEASE).await.unwrap().expect("a pending job");
    let mut db = app.org_tx(slug).await;
    let reference = (kind == ArtifactKind::Branch).then(|| format!("kodel/{content}"));
    let artifact = NewArtifact { kind, title: None, content: Some(content.into()), reference, data: None };
    let ids = jobs::complete(&mut db, job.id, agent, "done", &[artifact], Some(json!({"tokens": 10}))).await.unwrap();
    app.commit(db).await;
    (job.id, ids[0])
}

async fn jobs_of(app: &TestApp, token: &str, task: &str) -> Vec<Value> {
    let (s, v) = app.get(&format!("/api/v1/orgs/acme/jobs?task={task}"), token).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    v["data"].as_array().unwrap().clone()
}

async fn status_of(app: &TestApp, token: &str, task: &str) -> String {
    let (_, v) = app.get(&format!("/api/v1/orgs/acme/tasks/{task}"), token).await;
    v["status"].as_str().unwrap().to_owned()
}

async fn mv(app: &TestApp, token: &str, task: &str, to: &str) -> (StatusCode, Value) {
    app.post(&format!("/api/v1/orgs/acme/tasks/{task}/move"), token, json!({"status": to})).await
}

#[tokio::test]
async fn software_development_task_walks_through_every_status() {
    let app = TestApp::spawn().await;
    let owner = app.register("owner@x.io").await;
    app.post("/api/v1/orgs", &owner, json!({"slug": "acme", "name": "Acme"})).await;
    let (s, p) = app.post("/api/v1/orgs/acme/projects", &owner, json!({"key": "KOD", "name": "Kodel", "workflow": "software-development"})).await;
    assert_eq!(s, StatusCode::CREATED, "{p}");
    let names: Vec<&str> = p["workflow"]["statuses"].as_array().unwrap().iter().map(|s| s["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["Backlog", "Ready", "In Progress", "Code Review", "QA", "Staging", "Done"]);
    assert_eq!(p["workflow"]["statuses"][2]["binding"], json!({"template": "implement-template", "next": "Code Review", "back": "Ready"}));
    assert_eq!(p["workflow"]["statuses"][3]["binding"]["template"], "code-review-template");

    // A reviewer and a viewer in the project.
    let rita = app.register("rita@x.io").await;
    let vic = app.register("vic@x.io").await;
    for (email, role) in [("rita@x.io", "reviewer"), ("vic@x.io", "viewer")] {
        app.post("/api/v1/orgs/acme/members", &owner, json!({"email": email, "role": "member"})).await;
        let (s, v) = app.post("/api/v1/orgs/acme/projects/KOD/members", &owner, json!({"email": email, "role": role})).await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
    }
    let bot = agent(&app, "acme").await;

    let task = app.create_task(&owner, "acme", "KOD", "Add dark mode").await;
    assert_eq!(task["status"], "Backlog");
    // No skipping: the workflow lists where the task may go.
    let (s, v) = mv(&app, &owner, "KOD-1", "In Progress").await;
    assert_eq!((s, code(&v)), (StatusCode::CONFLICT, "transition_not_allowed"));
    assert_eq!(v["error"]["details"]["allowed"], json!(["Ready"]));
    assert_eq!(mv(&app, &owner, "KOD-1", "Ready").await.0, StatusCode::OK);
    assert!(jobs_of(&app, &owner, "KOD-1").await.is_empty(), "Ready is not bound");

    // In Progress starts the implement job.
    assert_eq!(mv(&app, &owner, "KOD-1", "In Progress").await.0, StatusCode::OK);
    let js = jobs_of(&app, &owner, "KOD-1").await;
    assert_eq!(js.len(), 1);
    assert_eq!((js[0]["kind"].as_str(), js[0]["status"].as_str(), js[0]["template"].as_str()), (Some("implement"), Some("pending"), Some("implement-template")));
    assert_eq!(js[0]["for_status"], "In Progress");
    let (implement, patch) = work_next(&app, "acme", bot, ArtifactKind::Patch, "diff --git a/x b/x").await;
    let (_, j) = app.get(&format!("/api/v1/orgs/acme/jobs/{implement}"), &owner).await;
    assert_eq!((j["status"].as_str(), j["attempts"].as_i64()), (Some("succeeded"), Some(1)));
    assert_eq!(j["usage"]["tokens"], 10);

    // A viewer may look but not decide.
    let (s, arts) = app.get("/api/v1/orgs/acme/artifacts?task=KOD-1", &vic).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(arts["data"][0]["kind"], "patch");
    assert_eq!(arts["data"][0]["status"], "pending");
    let (s, v) = app.post(&format!("/api/v1/orgs/acme/artifacts/{patch}/approve"), &vic, json!({})).await;
    assert_eq!((s, code(&v)), (StatusCode::FORBIDDEN, "forbidden"));

    // Approving the patch moves the task to Code Review, which starts the review.
    let (s, a) = app.post(&format!("/api/v1/orgs/acme/artifacts/{patch}/approve"), &rita, json!({"comment": "looks right"})).await;
    assert_eq!(s, StatusCode::OK, "{a}");
    assert_eq!((a["status"].as_str(), a["decided_by"].as_str()), (Some("approved"), Some("rita@x.io")));
    let (s, v) = app.post(&format!("/api/v1/orgs/acme/artifacts/{patch}/reject"), &rita, json!({})).await;
    assert_eq!((s, code(&v)), (StatusCode::CONFLICT, "artifact_decided"));
    assert_eq!(status_of(&app, &owner, "KOD-1").await, "Code Review");

    // The review is rejected: back to In Progress with the comment, and a new implement job.
    let (_, review) = work_next(&app, "acme", bot, ArtifactKind::Review, "missing tests").await;
    let (s, _) = app.post(&format!("/api/v1/orgs/acme/artifacts/{review}/reject"), &rita, json!({"comment": "add tests for the toggle"})).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(status_of(&app, &owner, "KOD-1").await, "In Progress");
    let (_, comments) = app.get("/api/v1/orgs/acme/tasks/KOD-1/comments", &owner).await;
    let last = comments["data"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["author"], "rita@x.io");
    assert!(last["body"].as_str().unwrap().contains("add tests for the toggle"), "{last}");
    let js = jobs_of(&app, &owner, "KOD-1").await;
    assert_eq!(js.len(), 3, "implement, review, implement again");
    assert_eq!((js[0]["kind"].as_str(), js[0]["status"].as_str()), (Some("implement"), Some("pending")));

    // Second round: implement, review, QA all approved; then Staging and Done by hand.
    let (_, patch2) = work_next(&app, "acme", bot, ArtifactKind::Branch, "kod-1-dark-mode").await;
    app.post(&format!("/api/v1/orgs/acme/artifacts/{patch2}/approve"), &rita, json!({})).await;
    let (_, review2) = work_next(&app, "acme", bot, ArtifactKind::Review, "LGTM").await;
    // A bare POST (no body) decides too.
    let resp = app.http.post(format!("{}/api/v1/orgs/acme/artifacts/{review2}/approve", app.base)).bearer_auth(&rita).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(status_of(&app, &owner, "KOD-1").await, "QA");
    let (_, report) = work_next(&app, "acme", bot, ArtifactKind::TestReport, "42 passed").await;
    app.post(&format!("/api/v1/orgs/acme/artifacts/{report}/approve"), &rita, json!({})).await;
    assert_eq!(status_of(&app, &owner, "KOD-1").await, "Staging");
    assert_eq!(mv(&app, &owner, "KOD-1", "Done").await.0, StatusCode::OK);

    let kinds: Vec<String> = jobs_of(&app, &owner, "KOD-1").await.iter().rev().map(|j| format!("{}:{}", j["kind"].as_str().unwrap(), j["status"].as_str().unwrap())).collect();
    assert_eq!(kinds, ["implement:succeeded", "review:succeeded", "implement:succeeded", "review:succeeded", "qa:succeeded"]);
    let moves: Vec<String> = app.events_of("acme", "KOD-1", "task.moved").await.iter().map(|p| p["to"].as_str().unwrap().to_owned()).collect();
    assert_eq!(moves, ["Ready", "In Progress", "Code Review", "In Progress", "Code Review", "QA", "Staging", "Done"]);
    let types = app.event_types("acme", "KOD-1").await;
    for t in ["task.created", "job.created", "job.started", "job.succeeded", "artifact.approved", "artifact.rejected", "comment.added"] {
        assert!(types.iter().any(|x| x == t), "{t} missing from {types:?}");
    }
    assert_eq!(types.iter().filter(|t| *t == "job.created").count(), 5);
}

#[tokio::test]
async fn leaving_a_bound_status_cancels_its_job_and_entries_make_one_job_each() {
    let app = TestApp::spawn().await;
    let owner = app.register("owner@x.io").await;
    app.post("/api/v1/orgs", &owner, json!({"slug": "acme", "name": "Acme"})).await;
    app.post("/api/v1/orgs/acme/projects", &owner, json!({"key": "KOD", "name": "K", "workflow": "software-development"})).await;
    let (s, t) = app.post("/api/v1/orgs/acme/projects/KOD/tasks", &owner, json!({"title": "Straight in", "status": "In Progress"})).await;
    assert_eq!((s, t["status"].as_str()), (StatusCode::CREATED, Some("In Progress")));
    // Created straight into a bound status: one job.
    let js = jobs_of(&app, &owner, "KOD-1").await;
    assert_eq!(js.len(), 1);
    let job = js[0]["id"].as_str().unwrap().to_owned();
    let bot = agent(&app, "acme").await;
    let slug = kodel_core::OrgSlug::parse("acme").unwrap();
    queue::claim(&app.server.state, &slug, bot, &[], LEASE).await.unwrap().unwrap();

    assert_eq!(mv(&app, &owner, "KOD-1", "Ready").await.0, StatusCode::OK);
    let (_, j) = app.get(&format!("/api/v1/orgs/acme/jobs/{job}"), &owner).await;
    assert_eq!(j["status"], "cancelled");
    assert!(j["error"].as_str().unwrap().contains("left the status"));
    // Its agent can no longer complete it.
    let mut db = app.org_tx("acme").await;
    let err = jobs::complete(&mut db, job.parse().unwrap(), bot, "late", &[], Some(json!({}))).await.unwrap_err();
    assert_eq!(err.code.as_str(), "lease_lost");
    drop(db);

    // Re-entering makes a new job; the same entry never makes a second one.
    mv(&app, &owner, "KOD-1", "In Progress").await;
    let js = jobs_of(&app, &owner, "KOD-1").await;
    assert_eq!(js.len(), 2);
    let mut db = app.org_tx("acme").await;
    let (task, seq, template): (Uuid, i32, Uuid) = sqlx::query_as("SELECT task_id, origin_seq, template_id FROM ai_jobs WHERE state = 'pending'")
        .fetch_one(db.conn())
        .await
        .unwrap();
    assert_eq!(jobs::start(&mut db, task, template, None, seq).await.unwrap(), None);
    app.commit(db).await;
    assert_eq!(jobs_of(&app, &owner, "KOD-1").await.len(), 2);

    // People cancel jobs too; a finished job cannot be cancelled again.
    let pending = jobs_of(&app, &owner, "KOD-1").await[0]["id"].as_str().unwrap().to_owned();
    let (s, j) = app.post(&format!("/api/v1/orgs/acme/jobs/{pending}/cancel"), &owner, json!({})).await;
    assert_eq!((s, j["status"].as_str()), (StatusCode::OK, Some("cancelled")));
    assert!(j["error"].as_str().unwrap().contains("owner@x.io"));
    let (s, v) = app.post(&format!("/api/v1/orgs/acme/jobs/{pending}/cancel"), &owner, json!({})).await;
    assert_eq!((s, code(&v)), (StatusCode::CONFLICT, "job_finished"));
    // And start one by hand from any template.
    let (s, j) = app.post("/api/v1/orgs/acme/jobs", &owner, json!({"task": "KOD-1", "template": "qa-template"})).await;
    assert_eq!((s, j["kind"].as_str(), j["for_status"].clone()), (StatusCode::CREATED, Some("qa"), Value::Null));
    let (s, v) = app.post("/api/v1/orgs/acme/jobs", &owner, json!({"task": "KOD-1", "template": "nope"})).await;
    assert_eq!((s, code(&v)), (StatusCode::NOT_FOUND, "template_not_found"));
    let (s, v) = app.get("/api/v1/orgs/acme/jobs?status=weird", &owner).await;
    assert_eq!((s, code(&v)), (StatusCode::UNPROCESSABLE_ENTITY, "invalid_request"));
    let (s, v) = app.get(&format!("/api/v1/orgs/acme/jobs/{}", Uuid::now_v7()), &owner).await;
    assert_eq!((s, code(&v)), (StatusCode::NOT_FOUND, "job_not_found"));

    // Another org's member sees none of it.
    let eve = app.register("eve@x.io").await;
    app.post("/api/v1/orgs", &eve, json!({"slug": "evil", "name": "Evil"})).await;
    let (s, _) = app.get(&format!("/api/v1/orgs/acme/jobs/{pending}"), &eve).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (_, v) = app.get("/api/v1/orgs/evil/jobs", &eve).await;
    assert_eq!(v["data"], json!([]));
}

#[tokio::test]
async fn custom_workflows_are_defined_shared_and_edited_safely() {
    let app = TestApp::spawn().await;
    let owner = app.register("owner@x.io").await;
    app.post("/api/v1/orgs", &owner, json!({"slug": "acme", "name": "Acme"})).await;
    let def = json!({
        "name": "Triage",
        "statuses": [
            {"name": "New", "category": "unstarted"},
            {"name": "Investigating", "category": "started", "binding": {"template": "code-review-template", "next": "Fixed", "back": "New"}},
            {"name": "Fixed", "category": "done"},
            {"name": "Won't Fix", "category": "cancelled"}
        ],
        "transitions": [["New", "Investigating"], ["Investigating", "Fixed"], ["Investigating", "New"], ["New", "Won't Fix"]]
    });
    let (s, wf) = app.post("/api/v1/orgs/acme/workflows", &owner, def.clone()).await;
    assert_eq!(s, StatusCode::CREATED, "{wf}");
    assert_eq!(wf["statuses"][0]["next"], json!(["Investigating", "Won't Fix"]));
    let (s, v) = app.post("/api/v1/orgs/acme/workflows", &owner, def.clone()).await;
    assert_eq!((s, code(&v)), (StatusCode::CONFLICT, "name_taken"));

    // Bad definitions name what is wrong.
    let bad = [
        (json!({"name": "B", "statuses": []}), "at least one"),
        (json!({"name": "B", "statuses": [{"name": "A", "category": "started"}], "transitions": [["A", "Z"]]}), "unknown status"),
        (json!({"name": "B", "statuses": [{"name": "A", "category": "nope"}]}), "expected one of"),
        (json!({"name": "B", "statuses": [{"name": "A", "category": "started", "binding": {"template": "ghost"}}]}), "no job template"),
        (json!({"name": "B", "statuses": [{"name": "A", "category": "started", "binding": {"template": "qa-template", "next": "C"}}, {"name": "C", "category": "done"}], "transitions": []}), "must allow moving"),
        (json!({"name": "B", "from_template": "scrum"}), "software-development"),
    ];
    for (body, why) in bad {
        let (s, v) = app.post("/api/v1/orgs/acme/workflows", &owner, body.clone()).await;
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{body}: {v}");
        assert!(v["error"]["message"].as_str().unwrap().contains(why), "{body}: {v}");
    }

    // Two projects share it, by name or id.
    let id = wf["id"].as_str().unwrap();
    let (s, p) = app.post("/api/v1/orgs/acme/projects", &owner, json!({"key": "BUG", "name": "Bugs", "workflow": "triage"})).await;
    assert_eq!((s, p["workflow"]["id"].as_str()), (StatusCode::CREATED, Some(id)));
    let (_, p2) = app.post("/api/v1/orgs/acme/projects", &owner, json!({"key": "OPS", "name": "Ops", "workflow": id})).await;
    assert_eq!(p2["workflow"]["name"], "Triage");
    let (s, v) = app.post("/api/v1/orgs/acme/projects", &owner, json!({"key": "XX", "name": "X", "workflow": "nope"})).await;
    assert_eq!((s, code(&v)), (StatusCode::NOT_FOUND, "workflow_not_found"));
    app.create_task(&owner, "acme", "BUG", "Crash").await;
    app.create_task(&owner, "acme", "OPS", "Disk").await;
    mv(&app, &owner, "BUG-1", "Investigating").await;
    assert_eq!(jobs_of(&app, &owner, "BUG-1").await[0]["kind"], "review");

    // A member cannot edit workflows.
    let mia = app.register("mia@x.io").await;
    app.post("/api/v1/orgs/acme/members", &owner, json!({"email": "mia@x.io", "role": "member"})).await;
    let (s, _) = app.call(reqwest::Method::PUT, &format!("/api/v1/orgs/acme/workflows/{id}"), Some(&mia), Some(def.clone())).await;
    assert_eq!(s, StatusCode::FORBIDDEN);

    // Removing "New" (holding OPS-1) needs a destination; renaming keeps tasks in place.
    let edited = json!({
        "name": "Triage",
        "statuses": [
            {"name": "Open", "category": "unstarted"},
            {"name": "Digging", "was": "Investigating", "category": "started"},
            {"name": "Fixed", "category": "done"}
        ],
        "transitions": [["Open", "Digging"], ["Digging", "Fixed"], ["Digging", "Open"]]
    });
    let (s, v) = app.call(reqwest::Method::PUT, &format!("/api/v1/orgs/acme/workflows/{id}"), Some(&owner), Some(edited.clone())).await;
    assert_eq!((s, code(&v)), (StatusCode::CONFLICT, "status_not_empty"), "{v}");
    assert!(v["error"]["message"].as_str().unwrap().contains("\"New\""));
    assert_eq!(status_of(&app, &owner, "OPS-1").await, "New", "a refused edit changes nothing");
    let mut with_moves = edited.clone();
    with_moves["moves"] = json!({"New": "Open"});
    let (s, v) = app.call(reqwest::Method::PUT, &format!("/api/v1/orgs/acme/workflows/{id}"), Some(&owner), Some(with_moves)).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["statuses"][1]["binding"], Value::Null, "binding removed with the edit");
    assert_eq!(status_of(&app, &owner, "OPS-1").await, "Open");
    assert_eq!(status_of(&app, &owner, "BUG-1").await, "Digging");
    let moved = app.events_of("acme", "OPS-1", "task.moved").await;
    assert_eq!(moved, vec![json!({"from": "New", "to": "Open", "reason": "workflow edited"})]);
    let (s, v) = mv(&app, &owner, "OPS-1", "Fixed").await;
    assert_eq!((s, code(&v)), (StatusCode::CONFLICT, "transition_not_allowed"));

    // A copy of a built-in template is a workflow of the org's own.
    let (s, v) = app.post("/api/v1/orgs/acme/workflows", &owner, json!({"name": "Our SDLC", "from_template": "software-development"})).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    assert_eq!(v["statuses"].as_array().unwrap().len(), 7);
    assert_eq!(v["statuses"][3]["binding"]["next"], "QA");
    let (_, all) = app.get("/api/v1/orgs/acme/workflows", &mia).await;
    let names: Vec<&str> = all["data"].as_array().unwrap().iter().map(|w| w["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["Our SDLC", "Triage"], "copying a template does not add the template itself");
}

#[tokio::test]
async fn job_templates_defaults_and_edits() {
    let app = TestApp::spawn().await;
    let owner = app.register("owner@x.io").await;
    app.post("/api/v1/orgs", &owner, json!({"slug": "acme", "name": "Acme"})).await;
    let (_, v) = app.get("/api/v1/orgs/acme/job-templates", &owner).await;
    let names: Vec<&str> = v["data"].as_array().unwrap().iter().map(|t| t["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["code-review-template", "implement-template", "qa-template"]);
    let (s, t) = app.patch("/api/v1/orgs/acme/job-templates/code-review-template", &owner, json!({"model": "anthropic/claude-sonnet-4-5", "max_steps": 30})).await;
    assert_eq!((s, t["max_steps"].as_i64(), t["model"].as_str()), (StatusCode::OK, Some(30), Some("anthropic/claude-sonnet-4-5")));
    let (s, v) = app.patch("/api/v1/orgs/acme/job-templates/code-review-template", &owner, json!({"allowed_tools": ["rm"]})).await;
    assert_eq!((s, code(&v)), (StatusCode::UNPROCESSABLE_ENTITY, "invalid_request"));
    let (s, t) = app.post("/api/v1/orgs/acme/job-templates", &owner, json!({"name": "docs", "kind": "custom", "prompt": "Write docs", "allowed_tools": ["read_file", "write_file"], "budget_tokens": 50000})).await;
    assert_eq!((s, t["builtin"].clone()), (StatusCode::CREATED, Value::Null));
    let (s, v) = app.post("/api/v1/orgs/acme/job-templates", &owner, json!({"name": "docs", "kind": "custom", "prompt": "x"})).await;
    assert_eq!((s, code(&v)), (StatusCode::CONFLICT, "name_taken"));
    let (s, v) = app.post("/api/v1/orgs/acme/job-templates", &owner, json!({"name": "m", "kind": "custom", "prompt": "x", "model": "gpt4"})).await;
    assert_eq!((s, code(&v)), (StatusCode::UNPROCESSABLE_ENTITY, "invalid_request"));
    let (s, v) = app.delete("/api/v1/orgs/acme/job-templates/qa-template", &owner).await;
    assert_eq!((s, code(&v)), (StatusCode::CONFLICT, "conflict"));
    assert_eq!(app.delete("/api/v1/orgs/acme/job-templates/docs", &owner).await.0, StatusCode::NO_CONTENT);
    let mia = app.register("mia@x.io").await;
    app.post("/api/v1/orgs/acme/members", &owner, json!({"email": "mia@x.io", "role": "member"})).await;
    let (s, _) = app.post("/api/v1/orgs/acme/job-templates", &mia, json!({"name": "x", "kind": "custom", "prompt": "x"})).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
}
