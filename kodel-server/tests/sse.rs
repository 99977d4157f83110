//! SSE: live delivery, resume with Last-Event-ID, ordering when commits race, a slow
//! client that does not slow others, and project visibility.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::TestApp;
use serde_json::json;

/// The newest event id of org acme.
async fn last_event_id(app: &TestApp) -> i64 {
    let mut db = app.sql().await;
    sqlx::query_scalar("SELECT max(id) FROM org_acme.task_events").fetch_one(&mut db).await.unwrap()
}

#[tokio::test]
async fn live_then_resume_with_exactly_the_missed_events() {
    let app = TestApp::spawn().await;
    let t = app.owner_with_project("o@x.io", "acme", "KOD").await;

    let mut board = app.sse("/api/v1/orgs/acme/events", &t, None).await;
    app.create_task(&t, "acme", "KOD", "one").await;
    let first = board.next().await;
    assert_eq!((first.event.as_str(), first.data["task"].as_str()), ("task.created", Some("KOD-1")));
    assert_eq!(first.id, first.data["id"].as_i64());
    app.post("/api/v1/orgs/acme/tasks/KOD-1/move", &t, json!({"status": "Done"})).await;
    let second = board.next().await;
    assert_eq!(second.event, "task.moved");
    assert_eq!(second.data["payload"], json!({"from": "To Do", "to": "Done"}));
    drop(board);

    // While disconnected: five changes.
    app.create_task(&t, "acme", "KOD", "two").await;
    app.post("/api/v1/orgs/acme/tasks/KOD-2/comments", &t, json!({"body": "c1"})).await;
    app.post("/api/v1/orgs/acme/tasks/KOD-1/comments", &t, json!({"body": "c2"})).await;
    app.patch("/api/v1/orgs/acme/tasks/KOD-2", &t, json!({"version": 1, "priority": "high"})).await;
    app.create_task(&t, "acme", "KOD", "three").await;

    let mut resumed = app.sse("/api/v1/orgs/acme/events", &t, second.id).await;
    let mut got = Vec::new();
    for _ in 0..5 {
        let e = resumed.next().await;
        got.push((e.event.clone(), e.data["task"].as_str().unwrap().to_owned()));
    }
    assert_eq!(
        got,
        [("task.created", "KOD-2"), ("comment.added", "KOD-2"), ("comment.added", "KOD-1"), ("task.updated", "KOD-2"), ("task.created", "KOD-3")]
            .map(|(a, b)| (a.to_owned(), b.to_owned()))
    );
    // Then live, with no duplicate of what was replayed.
    app.post("/api/v1/orgs/acme/tasks/KOD-3/move", &t, json!({"status": "In Progress"})).await;
    let live = resumed.next().await;
    assert_eq!((live.event.as_str(), live.data["task"].as_str()), ("task.moved", Some("KOD-3")));
    assert!(resumed.next_within(Duration::from_millis(300)).await.is_none(), "nothing more");

    // The task stream carries only that task, and resumes too (query parameter form).
    let mut task = app.sse("/api/v1/orgs/acme/tasks/KOD-2/events?last_event_id=0", &t, None).await;
    let e = task.next().await;
    assert_eq!(e.event, "resync", "id 0 is not an event: the client is told to reload");
    let mut task = app.sse("/api/v1/orgs/acme/tasks/KOD-2/events", &t, first.id).await;
    let kinds: Vec<String> = [task.next().await, task.next().await, task.next().await].iter().map(|e| e.event.clone()).collect();
    assert_eq!(kinds, ["task.created", "comment.added", "task.updated"]);
    assert!(task.next_within(Duration::from_millis(300)).await.is_none());
}

/// A transaction that took a lower event id but commits later is not skipped: the
/// stream holds later events until it is done, so resume positions stay gap-free.
#[tokio::test]
async fn a_late_commit_with_a_lower_id_is_not_skipped() {
    let app = TestApp::spawn().await;
    let t = app.owner_with_project("o@x.io", "acme", "KOD").await;
    app.create_task(&t, "acme", "KOD", "one").await;
    // Resume after the newest event, so exactly what follows arrives. (A live
    // subscription may also show an event committed just before it began.)
    let mut board = app.sse("/api/v1/orgs/acme/events", &t, Some(last_event_id(&app).await)).await;

    // A slow writer takes the next event id and holds its transaction open.
    let mut slow = app.sql().await;
    sqlx::query("BEGIN").execute(&mut slow).await.unwrap();
    sqlx::query("SET LOCAL search_path TO org_acme, public").execute(&mut slow).await.unwrap();
    let slow_id: i64 = sqlx::query_scalar(
        "WITH t AS (UPDATE tasks SET event_seq = event_seq + 1 WHERE number = 1 RETURNING id, project_id, event_seq)
         INSERT INTO task_events (task_id, project_id, seq, type, payload) SELECT id, project_id, event_seq, 'test.slow', '{}' FROM t RETURNING id",
    )
    .fetch_one(&mut slow)
    .await
    .unwrap();

    // A fast writer commits a higher id meanwhile.
    app.create_task(&t, "acme", "KOD", "two").await;
    assert!(board.next_within(Duration::from_millis(500)).await.is_none(), "held back while an older transaction runs");

    sqlx::query("COMMIT").execute(&mut slow).await.unwrap();
    let a = board.next().await;
    let b = board.next().await;
    assert_eq!((a.event.as_str(), a.id), ("test.slow", Some(slow_id)));
    assert_eq!(b.event, "task.created");
    assert!(b.id.unwrap() > slow_id);

    // Resuming after the slow event yields the fast one; after the fast one, nothing.
    let mut r = app.sse("/api/v1/orgs/acme/events", &t, a.id).await;
    assert_eq!(r.next().await.id, b.id);
    let mut r = app.sse("/api/v1/orgs/acme/events", &t, b.id).await;
    assert!(r.next_within(Duration::from_millis(300)).await.is_none());
}

#[tokio::test]
async fn a_client_that_stops_reading_does_not_slow_the_others() {
    let app = TestApp::spawn().await;
    let t = app.owner_with_project("o@x.io", "acme", "KOD").await;
    app.create_task(&t, "acme", "KOD", "target").await;
    let after = Some(last_event_id(&app).await);
    // A stalled client: connected, never reads.
    let _stalled = app.sse("/api/v1/orgs/acme/events", &t, after).await;
    let mut healthy = app.sse("/api/v1/orgs/acme/events", &t, after).await;
    let big = "x".repeat(50_000);
    let n = 60; // ~3 MB of events: more than socket buffers hold for the stalled one
    for i in 0..n {
        let (s, _) = app.post("/api/v1/orgs/acme/tasks/KOD-1/comments", &t, json!({"body": format!("{i} {big}")})).await;
        assert_eq!(s, 201);
    }
    for i in 0..n {
        let e = healthy.next().await;
        assert_eq!(e.event, "comment.added");
        assert!(e.data["payload"]["body"].as_str().unwrap().starts_with(&format!("{i} ")));
    }
}

#[tokio::test]
async fn board_stream_shows_only_projects_the_caller_can_see() {
    let app = TestApp::spawn().await;
    let owner = app.owner_with_project("o@x.io", "acme", "PUB").await;
    app.post("/api/v1/orgs/acme/projects", &owner, json!({"key": "SEC", "name": "secret"})).await;
    let member = app.register("m@x.io").await;
    app.post("/api/v1/orgs/acme/members", &owner, json!({"email": "m@x.io", "role": "member"})).await;
    app.post("/api/v1/orgs/acme/projects/PUB/members", &owner, json!({"email": "m@x.io", "role": "viewer"})).await;

    let mut stream = app.sse("/api/v1/orgs/acme/events", &member, None).await;
    app.create_task(&owner, "acme", "SEC", "hidden").await;
    app.create_task(&owner, "acme", "PUB", "visible").await;
    let e = stream.next().await;
    assert_eq!(e.data["task"], "PUB-1");
    assert!(stream.next_within(Duration::from_millis(300)).await.is_none());
    // Replay filters too.
    let mut replay = app.sse("/api/v1/orgs/acme/events?last_event_id=1", &member, None).await;
    assert_eq!(replay.next().await.data["task"], "PUB-1");
}

#[tokio::test]
async fn an_idle_stream_gets_heartbeats() {
    let app = TestApp::spawn().await;
    let t = app.owner_with_project("o@x.io", "acme", "KOD").await;
    let mut stream = app.sse("/api/v1/orgs/acme/events", &t, None).await;
    let started = std::time::Instant::now();
    assert!(stream.comment_within(Duration::from_secs(20)).await, "a heartbeat within 20 s");
    assert!(started.elapsed() >= Duration::from_secs(10), "not before the interval");
}

/// A subscriber that falls further behind than the live buffer holds catches up from
/// the database: every event arrives, in order, once it reads again.
#[tokio::test]
async fn a_lagging_subscriber_catches_up_without_loss() {
    let app = TestApp::spawn().await;
    let t = app.owner_with_project("o@x.io", "acme", "KOD").await;
    app.create_task(&t, "acme", "KOD", "one").await;
    let mut lagging = app.sse("/api/v1/orgs/acme/events", &t, Some(last_event_id(&app).await)).await;

    // 6,000 events of 4 KB (more than the live buffer and the socket buffers hold),
    // written in one go while the subscriber does not read.
    let n = 6000;
    let mut db = app.sql().await;
    sqlx::query(
        "WITH t AS (UPDATE org_acme.tasks SET event_seq = event_seq + $1 WHERE number = 1 RETURNING id, project_id, event_seq)
         INSERT INTO org_acme.task_events (task_id, project_id, seq, type, payload)
         SELECT t.id, t.project_id, t.event_seq - $1 + g, 'test.bulk', jsonb_build_object('n', g, 'pad', repeat('x', 4000))
         FROM t, generate_series(1, $1) g",
    )
    .bind(n)
    .execute(&mut db)
    .await
    .unwrap();
    app.server.state.events.changed(&kodel_core::OrgSlug::parse("acme").unwrap());

    let mut expected = 1;
    while expected <= n {
        let e = lagging.next().await;
        assert_eq!(e.event, "test.bulk");
        assert_eq!(e.data["payload"]["n"], expected, "in order, none missing");
        expected += 1;
    }
    assert!(lagging.next_within(Duration::from_millis(300)).await.is_none(), "and no duplicates");
}

/// Logging out ends the streams the session opened (access is re-checked every 30 s).
#[tokio::test]
async fn a_stream_ends_when_its_session_is_revoked() {
    let app = TestApp::spawn().await;
    let reg = app.register_pair("s@x.io").await;
    let access = reg["access_token"].as_str().unwrap().to_owned();
    app.post("/api/v1/orgs", &access, json!({"slug": "acme", "name": "A"})).await;
    let mut stream = app.sse("/api/v1/orgs/acme/events", &access, None).await;
    assert!(!stream.ended_within(Duration::from_millis(300)).await);
    let (s, _) = app.call(reqwest::Method::POST, "/api/v1/auth/logout", None, Some(json!({"refresh_token": reg["refresh_token"]}))).await;
    assert_eq!(s, 204);
    assert!(stream.ended_within(Duration::from_secs(40)).await, "the stream closes after logout");
}

/// An event too large for a feed to hold in memory (a 20 KB comment) still reaches the
/// board and the task's followers whole, in order, once; another task's follower skips it.
#[tokio::test]
async fn large_events_reach_followers_whole_and_in_order() {
    let app = TestApp::spawn().await;
    let t = app.owner_with_project("o@x.io", "acme", "KOD").await;
    app.create_task(&t, "acme", "KOD", "one").await;
    app.create_task(&t, "acme", "KOD", "two").await;
    let mut board = app.sse("/api/v1/orgs/acme/events", &t, None).await;
    let mut one = app.sse("/api/v1/orgs/acme/tasks/KOD-1/events", &t, None).await;
    let mut two = app.sse("/api/v1/orgs/acme/tasks/KOD-2/events", &t, None).await;
    let big = |c: &str| c.repeat(20_000);
    for (task, body) in [("KOD-1", "a".to_owned()), ("KOD-1", big("b")), ("KOD-2", "c".to_owned()), ("KOD-2", big("d")), ("KOD-1", "e".to_owned())] {
        let (s, v) = app.post(&format!("/api/v1/orgs/acme/tasks/{task}/comments"), &t, json!({ "body": body })).await;
        assert!(s.is_success(), "{v}");
    }
    let bodies = |events: Vec<common::SseEvent>| -> Vec<(String, usize)> {
        events.iter().map(|e| (e.data["task"].as_str().unwrap().to_owned(), e.data["payload"]["body"].as_str().unwrap().len())).collect()
    };
    let mut got = Vec::new();
    for _ in 0..5 {
        got.push(board.next().await);
    }
    let ids: Vec<i64> = got.iter().map(|e| e.id.unwrap()).collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "in order: {ids:?}");
    let want = [("KOD-1", 1), ("KOD-1", 20_000), ("KOD-2", 1), ("KOD-2", 20_000), ("KOD-1", 1)].map(|(t, n)| (t.to_owned(), n));
    assert_eq!(bodies(got), want);
    let got_one = vec![one.next().await, one.next().await, one.next().await];
    assert_eq!(bodies(got_one), [want[0].clone(), want[1].clone(), want[4].clone()]);
    let got_two = vec![two.next().await, two.next().await];
    assert_eq!(bodies(got_two), [want[2].clone(), want[3].clone()]);
    for stream in [&mut board, &mut one, &mut two] {
        assert!(stream.next_within(Duration::from_millis(300)).await.is_none(), "nothing twice");
    }
}
