//! The agents hub over a real WebSocket: enrollment, the protocol's refusals and
//! errors, dispatch by labels, token revocation, a job given back.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::{TestApp, test_config};
use futures::{SinkExt, StreamExt};
use kodel_core::protocol::{AgentMessage, CLOSE_INCOMPATIBLE, CLOSE_UNAUTHORIZED, PROTOCOL, ServerMessage};
use kodel_testkit::fresh_database;
use serde_json::json;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::{Message, http};

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn connect(app: &TestApp, token: &str) -> Result<Ws, tokio_tungstenite::tungstenite::Error> {
    let mut req = format!("{}/api/v1/agent/ws", app.base.replace("http://", "ws://")).into_client_request().unwrap();
    req.headers_mut().insert(http::header::AUTHORIZATION, format!("Bearer {token}").parse().unwrap());
    tokio_tungstenite::connect_async(req).await.map(|(ws, _)| ws)
}

async fn send(ws: &mut Ws, msg: &AgentMessage) {
    ws.send(Message::Text(serde_json::to_string(msg).unwrap().into())).await.unwrap();
}

fn hello(protocol: u32, labels: &[&str]) -> AgentMessage {
    AgentMessage::Hello {
        protocol,
        name: "test-agent".into(),
        version: "0.0.0".into(),
        labels: labels.iter().map(|l| l.to_string()).collect(),
        capabilities: vec![],
        missing: Default::default(),
        agent_id: None,
        job: None,
        disk_bytes: None,
    }
}

/// The next frame within `wait`: a server message, or the close frame's (code, reason).
async fn next(ws: &mut Ws, wait: Duration) -> Option<Result<ServerMessage, (u16, String)>> {
    match tokio::time::timeout(wait, ws.next()).await.ok()?? {
        Ok(Message::Text(t)) => Some(Ok(serde_json::from_str(&t).unwrap())),
        Ok(Message::Close(Some(f))) => Some(Err((f.code.into(), f.reason.to_string()))),
        other => panic!("unexpected frame {other:?}"),
    }
}

async fn welcomed(app: &TestApp, token: &str, labels: &[&str]) -> Ws {
    welcomed_with(app, token, hello(PROTOCOL, labels)).await
}

async fn welcomed_with(app: &TestApp, token: &str, hello: AgentMessage) -> Ws {
    let mut ws = connect(app, token).await.unwrap();
    send(&mut ws, &hello).await;
    match next(&mut ws, Duration::from_secs(10)).await {
        Some(Ok(ServerMessage::Welcome { protocol, .. })) => assert_eq!(protocol, PROTOCOL),
        other => panic!("expected a welcome, got {other:?}"),
    }
    ws
}

async fn agent_token(app: &TestApp, owner: &str, slug: &str) -> String {
    let (s, v) = app.post(&format!("/api/v1/orgs/{slug}/agent-tokens"), owner, json!({"name": "box"})).await;
    assert_eq!(s, 201, "{v}");
    v["token"].as_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_enroll_with_org_tokens_only() {
    let app = TestApp::spawn().await;
    let owner = app.owner_with_project("hub@example.com", "hub", "HUB").await;
    // No token, a user's token, a made-up agent token: refused before the upgrade.
    assert!(connect(&app, "").await.is_err());
    assert!(connect(&app, &owner).await.is_err());
    assert!(connect(&app, "kodel_agt_madeup").await.is_err());
    // A plain GET: the token is checked first (401), then that it is an upgrade (400).
    let plain = format!("{}/api/v1/agent/ws", app.base);
    assert_eq!(app.http.get(&plain).send().await.unwrap().status(), 401);
    let token = agent_token(&app, &owner, "hub").await;
    assert_eq!(app.http.get(&plain).bearer_auth(&token).send().await.unwrap().status(), 400);
    // A member who is not an admin cannot mint agent tokens.
    let member = app.register("dev@example.com").await;
    app.post("/api/v1/orgs/hub/members", &owner, json!({"email": "dev@example.com", "role": "member"})).await;
    let (s, _) = app.post("/api/v1/orgs/hub/agent-tokens", &member, json!({"name": "x"})).await;
    assert_eq!(s, 403);

    let mut ws = welcomed(&app, &token, &["linux"]).await;
    let (_, agents) = app.get("/api/v1/orgs/hub/agents", &owner).await;
    assert_eq!(agents["data"][0]["status"], "online");
    assert_eq!(agents["data"][0]["labels"], json!(["linux"]));
    let (_, tokens) = app.get("/api/v1/orgs/hub/agent-tokens", &owner).await;
    assert_eq!(tokens["data"].as_array().unwrap().len(), 1);
    assert!(!tokens.to_string().contains(&token), "the token is shown once");
    ws.close(None).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_frames_get_errors_and_old_agents_a_reason() {
    let app = TestApp::spawn().await;
    let owner = app.owner_with_project("proto@example.com", "proto", "PRO").await;
    let token = agent_token(&app, &owner, "proto").await;

    let mut old = connect(&app, &token).await.unwrap();
    send(&mut old, &hello(PROTOCOL + 1, &[])).await;
    match next(&mut old, Duration::from_secs(10)).await {
        Some(Err((code, reason))) => {
            assert_eq!(code, CLOSE_INCOMPATIBLE);
            assert!(reason.contains("protocol") && reason.contains("kodel-agent"), "{reason}");
        }
        other => panic!("expected a close, got {other:?}"),
    }

    let mut ws = welcomed(&app, &token, &[]).await;
    for junk in ["not json", r#"{"type":"agent.dance"}"#, r#"{"type":"heartbeat","job_id":7}"#] {
        ws.send(Message::Text(junk.into())).await.unwrap();
        match next(&mut ws, Duration::from_secs(10)).await {
            Some(Ok(ServerMessage::Error { code, .. })) => assert_eq!(code, "bad_frame"),
            other => panic!("expected an error frame for {junk:?}, got {other:?}"),
        }
    }
    // Each is counted for Prometheus, with the connection still open.
    let metrics = app.http.get(format!("{}/metrics", app.base)).send().await.unwrap().text().await.unwrap();
    assert_eq!(common::metric(&metrics, "kodel_agent_bad_frames_total"), Some(3.0), "{metrics}");
    assert_eq!(common::metric(&metrics, "kodel_agents_connected"), Some(1.0), "{metrics}");
    // A step for a job this agent does not hold is refused, and nothing is stored.
    let job = uuid::Uuid::now_v7();
    send(&mut ws, &AgentMessage::Complete { job_id: job, summary: "x".into(), artifacts: vec![] }).await;
    match next(&mut ws, Duration::from_secs(10)).await {
        Some(Ok(ServerMessage::Error { code, .. })) => assert_eq!(code, "lease_lost"),
        other => panic!("expected lease_lost, got {other:?}"),
    }
    // Still connected: a heartbeat is taken without complaint.
    send(&mut ws, &AgentMessage::Heartbeat { job_id: None, disk_bytes: None }).await;
    assert!(next(&mut ws, Duration::from_millis(300)).await.is_none());
    // A frame over the size bound ends the connection instead of filling memory, with
    // a close that says why (not a dropped socket).
    let huge = "x".repeat(kodel_core::protocol::MAX_FRAME_BYTES + 1);
    let _ = ws.send(Message::Text(huge.into())).await;
    let (code, reason) = closed(&mut ws).await;
    assert_eq!(code, 1009, "{reason}");
    assert!(reason.starts_with("frame too large"), "{reason}");

    // Bytes that are not WebSocket (an unmasked client frame): 1002 and the reason.
    let mut ws = welcomed(&app, &token, &[]).await;
    {
        use tokio::io::AsyncWriteExt;
        let tokio_tungstenite::MaybeTlsStream::Plain(tcp) = ws.get_mut() else { panic!("plain TCP") };
        tcp.write_all(b"\x81\x02hi").await.unwrap();
    }
    let (code, reason) = closed(&mut ws).await;
    assert_eq!(code, 1002, "{reason}");
    assert!(reason.starts_with("WebSocket protocol error"), "{reason}");
}

/// The close frame's (code, reason); anything else first (a pong, an error) is skipped.
async fn closed(ws: &mut Ws) -> (u16, String) {
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Close(Some(f)))) => return (u16::from(f.code), f.reason.to_string()),
                Some(Ok(_)) => {}
                other => panic!("the connection ended without a close frame: {other:?}"),
            }
        }
    })
    .await
    .expect("a close frame within 10 s")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_go_to_agents_with_the_labels_they_need() {
    let app = TestApp::spawn().await;
    let owner = app.owner_with_project("lab@example.com", "lab", "LAB").await;
    let (s, v) = app.post("/api/v1/orgs/lab/instance-templates", &owner, json!({"name": "gpu-box", "base_image": "debian:12", "labels": ["gpu"]})).await;
    assert_eq!(s, 201, "{v}");
    assert_eq!(v["labels"], json!(["gpu"]));
    let (s, v) = app.post("/api/v1/orgs/lab/projects", &owner, json!({"key": "ML", "name": "ML", "workflow": "software-development"})).await;
    assert_eq!(s, 201, "{v}");
    let (s, v) = app.patch("/api/v1/orgs/lab/projects/ML", &owner, json!({"instance_template": "gpu-box"})).await;
    assert_eq!(s, 200, "{v}");
    let token = agent_token(&app, &owner, "lab").await;
    let mut plain = welcomed(&app, &token, &["linux"]).await;
    // The template names a base image: an agent with the label but no Docker Engine
    // gets nothing, and an agent cannot give itself Kodel's container label.
    let mut no_engine = welcomed(&app, &token, &["linux", "gpu"]).await;
    let mut self_labelled = welcomed(&app, &token, &["gpu", "kodel:container"]).await;
    let with_engine = |mut h: AgentMessage| {
        if let AgentMessage::Hello { capabilities, name, .. } = &mut h {
            *capabilities = vec!["tools:v1".into(), "container".into()];
            *name = "gpu-docker".into();
        }
        h
    };
    let mut gpu = welcomed_with(&app, &token, with_engine(hello(PROTOCOL, &["linux", "gpu"]))).await;

    let task = app.create_task(&owner, "lab", "ML", "Train it").await;
    let key = task["key"].as_str().unwrap();
    for status in ["Ready", "In Progress"] {
        let (s, v) = app.post(&format!("/api/v1/orgs/lab/tasks/{key}/move"), &owner, json!({"status": status})).await;
        assert_eq!(s, 200, "{v}");
    }
    // The commit that queued the job wakes the dispatcher: well before its 2 s poll.
    match next(&mut gpu, Duration::from_millis(1500)).await {
        Some(Ok(ServerMessage::Assigned(a))) => {
            assert_eq!(a.task.key, key);
            assert_eq!(a.template.name, "implement-template");
            assert!(a.system_prompt.contains("software engineer"));
            assert_eq!(a.instance_template.unwrap().labels, ["gpu"]);
        }
        other => panic!("the gpu agent should get the job, got {other:?}"),
    }
    assert!(next(&mut plain, Duration::from_millis(500)).await.is_none(), "the agent without the label gets nothing");
    assert!(next(&mut no_engine, Duration::from_millis(100)).await.is_none(), "the agent without a Docker Engine gets nothing");
    assert!(next(&mut self_labelled, Duration::from_millis(100)).await.is_none(), "kodel: labels an agent gives itself count for nothing");
    let (_, agents) = app.get("/api/v1/orgs/lab/agents", &owner).await;
    let busy: Vec<_> = agents["data"].as_array().unwrap().iter().filter(|a| a["status"] == "busy").collect();
    assert_eq!(busy.len(), 1, "{agents}");
    assert_eq!(busy[0]["current_task"], key);
    assert_eq!(busy[0]["name"], "gpu-docker");
    assert_eq!(busy[0]["capabilities"], json!(["container"]), "only capabilities Kodel knows are kept");
    assert!(agents["data"].as_array().unwrap().iter().all(|a| !a["labels"].as_array().unwrap().iter().any(|l| l == "kodel:container")), "{agents}");
}

/// Waits (bounded) until `n` orgs have a dispatcher on this server.
async fn dispatching(app: &TestApp, n: usize, what: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while app.server.state.hub.dispatching() != n {
        assert!(std::time::Instant::now() < deadline, "{what}: {} orgs dispatching, not {n}", app.server.state.hub.dispatching());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_org_with_no_agent_waiting_costs_no_dispatcher() {
    let app = TestApp::spawn().await;
    let owner = app.owner_with_project("idle@example.com", "idle", "IDL").await;
    let token = agent_token(&app, &owner, "idle").await;
    dispatching(&app, 0, "no agent yet").await;
    let first = welcomed(&app, &token, &[]).await;
    dispatching(&app, 1, "an agent waits").await;
    drop(first);
    dispatching(&app, 0, "the agent left").await;
    // The next agent to wait gets a dispatcher again, and work.
    let mut second = welcomed(&app, &token, &[]).await;
    let (s, v) = app.post("/api/v1/orgs/idle/projects", &owner, json!({"key": "DEV", "name": "Dev", "workflow": "software-development"})).await;
    assert_eq!(s, 201, "{v}");
    let task = app.create_task(&owner, "idle", "DEV", "Still dispatched").await;
    let key = task["key"].as_str().unwrap();
    for status in ["Ready", "In Progress"] {
        let (s, v) = app.post(&format!("/api/v1/orgs/idle/tasks/{key}/move"), &owner, json!({"status": status})).await;
        assert_eq!(s, 200, "{v}");
    }
    match next(&mut second, Duration::from_millis(1500)).await {
        Some(Ok(ServerMessage::Assigned(a))) => assert_eq!(a.task.key, key),
        other => panic!("the agent should get the job, got {other:?}"),
    }
    dispatching(&app, 0, "the only agent is busy").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_token_disconnects_its_agents() {
    let mut config = test_config();
    config.job_lease = 0.6; // heartbeats every 0.2 s
    let app = TestApp::spawn_with(fresh_database().await, config).await;
    let owner = app.owner_with_project("rev@example.com", "rev", "REV").await;
    let token = agent_token(&app, &owner, "rev").await;
    let mut ws = welcomed(&app, &token, &[]).await;
    let (_, tokens) = app.get("/api/v1/orgs/rev/agent-tokens", &owner).await;
    let id = tokens["data"][0]["id"].as_str().unwrap().to_owned();
    let (s, _) = app.delete(&format!("/api/v1/orgs/rev/agent-tokens/{id}"), &owner).await;
    assert_eq!(s, 204);
    send(&mut ws, &AgentMessage::Heartbeat { job_id: None, disk_bytes: None }).await;
    match next(&mut ws, Duration::from_secs(10)).await {
        Some(Err((code, reason))) => {
            assert_eq!(code, CLOSE_UNAUTHORIZED);
            assert!(reason.contains("revoked"), "{reason}");
        }
        other => panic!("expected the connection to close, got {other:?}"),
    }
    assert!(connect(&app, &token).await.is_err(), "a revoked token cannot connect again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reconnecting_agent_replaces_its_old_connection() {
    let app = TestApp::spawn().await;
    let owner = app.owner_with_project("re@example.com", "re", "RE").await;
    let (s, _) = app.post("/api/v1/orgs/re/projects", &owner, json!({"key": "SD", "name": "SD", "workflow": "software-development"})).await;
    assert_eq!(s, 201);
    let token = agent_token(&app, &owner, "re").await;
    let mut old = connect(&app, &token).await.unwrap();
    send(&mut old, &hello(PROTOCOL, &[])).await;
    let Some(Ok(ServerMessage::Welcome { agent_id, .. })) = next(&mut old, Duration::from_secs(10)).await else { panic!("no welcome") };

    // The same agent again (its network changed; the old socket is half-open).
    let mut new = connect(&app, &token).await.unwrap();
    let mut again = hello(PROTOCOL, &[]);
    if let AgentMessage::Hello { agent_id: id, .. } = &mut again {
        *id = Some(agent_id);
    }
    send(&mut new, &again).await;
    let Some(Ok(ServerMessage::Welcome { agent_id: same, .. })) = next(&mut new, Duration::from_secs(10)).await else { panic!("no welcome") };
    assert_eq!(same, agent_id, "it stays the same agent");
    match next(&mut old, Duration::from_secs(10)).await {
        Some(Err((code, _))) => assert_eq!(code, 4003),
        other => panic!("the old connection should close, got {other:?}"),
    }
    // The old connection's end did not take the new one out of the queue: it gets work.
    let task = app.create_task(&owner, "re", "SD", "Work").await;
    let key = task["key"].as_str().unwrap();
    for status in ["Ready", "In Progress"] {
        app.post(&format!("/api/v1/orgs/re/tasks/{key}/move"), &owner, json!({"status": status})).await;
    }
    match next(&mut new, Duration::from_secs(10)).await {
        Some(Ok(ServerMessage::Assigned(a))) => assert_eq!(a.task.key, key),
        other => panic!("the new connection should get the job, got {other:?}"),
    }
    let (_, agents) = app.get("/api/v1/orgs/re/agents", &owner).await;
    assert_eq!(agents["data"].as_array().unwrap().len(), 1, "one agent, not two: {agents}");
    assert_eq!(agents["data"][0]["status"], "busy");
}

/// An agent that gives its job back is stopping: the job waits for another agent
/// instead of going straight back to the one about to leave.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_released_job_is_not_handed_back_to_the_stopping_agent() {
    let app = TestApp::spawn().await;
    let owner = app.owner_with_project("rel@example.com", "rel", "REL").await;
    let (s, v) = app.post("/api/v1/orgs/rel/projects", &owner, json!({"key": "SD", "name": "SD", "workflow": "software-development"})).await;
    assert_eq!(s, 201, "{v}");
    let token = agent_token(&app, &owner, "rel").await;
    let mut leaving = welcomed(&app, &token, &[]).await;
    let key = app.create_task(&owner, "rel", "SD", "Give it back").await["key"].as_str().unwrap().to_owned();
    for status in ["Ready", "In Progress"] {
        let (s, v) = app.post(&format!("/api/v1/orgs/rel/tasks/{key}/move"), &owner, json!({"status": status})).await;
        assert_eq!(s, 200, "{v}");
    }
    let job_id = match next(&mut leaving, Duration::from_secs(5)).await {
        Some(Ok(ServerMessage::Assigned(a))) => a.job.id,
        other => panic!("expected the job, got {other:?}"),
    };
    send(&mut leaving, &AgentMessage::Release { job_id, reason: "stopping".into() }).await;
    match next(&mut leaving, Duration::from_secs(5)).await {
        Some(Ok(ServerMessage::Ack { job_id: acked })) => assert_eq!(acked, job_id),
        other => panic!("expected an ack, got {other:?}"),
    }
    assert!(next(&mut leaving, Duration::from_secs(1)).await.is_none(), "the stopping agent was given work again");
    let (_, job) = app.get(&format!("/api/v1/orgs/rel/jobs/{job_id}"), &owner).await;
    assert_eq!((job["status"].as_str(), job["attempts"].as_i64()), (Some("pending"), Some(0)), "{job}");
    // Another agent takes it.
    let mut other = welcomed(&app, &token, &[]).await;
    match next(&mut other, Duration::from_secs(5)).await {
        Some(Ok(ServerMessage::Assigned(a))) => assert_eq!(a.job.id, job_id),
        other => panic!("the next agent should get the job, got {other:?}"),
    }
}

/// An agent token acts with its maker's authority: when the admin who made it leaves
/// the org, or is made a plain member, it stops working at once (connected agents are
/// closed at their next check, new connections refused).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_tokens_die_when_their_maker_is_no_longer_an_admin() {
    let mut config = test_config();
    config.job_lease = 0.6; // heartbeats every 0.2 s
    let app = TestApp::spawn_with(fresh_database().await, config).await;
    let owner = app.owner_with_project("own@example.com", "crew", "CRW").await;
    let mut admins = Vec::new();
    for email in ["leaver@example.com", "demoted@example.com"] {
        let token = app.register(email).await;
        let (s, v) = app.post("/api/v1/orgs/crew/members", &owner, json!({"email": email, "role": "admin"})).await;
        assert_eq!(s, 201, "{v}");
        admins.push((email, agent_token(&app, &token, "crew").await));
    }
    let kept = agent_token(&app, &owner, "crew").await;
    let (leaver, leaver_token) = admins[0].clone();
    let (demoted, demoted_token) = admins[1].clone();
    let mut ws = welcomed(&app, &leaver_token, &[]).await;
    let mut ws2 = welcomed(&app, &demoted_token, &[]).await;

    let (s, v) = app.delete(&format!("/api/v1/orgs/crew/members/{leaver}"), &owner).await;
    assert_eq!(s, 204, "{v}");
    let (s, v) = app.patch(&format!("/api/v1/orgs/crew/members/{demoted}"), &owner, json!({"role": "member"})).await;
    assert_eq!(s, 200, "{v}");
    for ws in [&mut ws, &mut ws2] {
        send(ws, &AgentMessage::Heartbeat { job_id: None, disk_bytes: None }).await;
        match next(ws, Duration::from_secs(10)).await {
            Some(Err((code, _))) => assert_eq!(code, CLOSE_UNAUTHORIZED),
            other => panic!("expected the connection to close, got {other:?}"),
        }
    }
    assert!(connect(&app, &leaver_token).await.is_err(), "the removed admin's token cannot connect");
    assert!(connect(&app, &demoted_token).await.is_err(), "the demoted admin's token cannot connect");
    // A maker demoted without the API (or before makers were checked): the token dies
    // at its next use all the same.
    let third = app.register("third@example.com").await;
    app.post("/api/v1/orgs/crew/members", &owner, json!({"email": "third@example.com", "role": "admin"})).await;
    let third_token = agent_token(&app, &third, "crew").await;
    welcomed(&app, &third_token, &[]).await;
    let mut sql = app.sql().await;
    sqlx::query("UPDATE org_members SET role = 'member' WHERE user_id = (SELECT id FROM users WHERE email = 'third@example.com')").execute(&mut sql).await.unwrap();
    assert!(connect(&app, &third_token).await.is_err(), "a token whose maker is no longer an admin cannot connect");
    // The owner's own token is untouched, and the list shows only live tokens.
    welcomed(&app, &kept, &[]).await;
    let (_, list) = app.get("/api/v1/orgs/crew/agent-tokens", &owner).await;
    let names: Vec<&str> = list["data"].as_array().unwrap().iter().map(|t| t["name"].as_str().unwrap()).collect();
    assert_eq!(names.len(), 2, "the owner's and the third's (revoked ones are gone): {list}");
}

/// Instance-template env values are secrets: nobody reads them back through the API
/// (the mask keeps them on update), the database holds them sealed, and only the agent
/// that runs a job gets them. The agents list shows a job's task only to those who may
/// see its project.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn template_secrets_reach_only_the_agent_and_agents_show_only_visible_tasks() {
    let app = TestApp::spawn().await;
    let owner = app.owner_with_project("sec@example.com", "vault", "VLT").await;
    let member = app.register("member@example.com").await;
    let (s, v) = app.post("/api/v1/orgs/vault/members", &owner, json!({"email": "member@example.com", "role": "member"})).await;
    assert_eq!(s, 201, "{v}");
    let body = json!({"name": "box", "env": {"DEPLOY_KEY": "s3cr3t-value", "REGION": "eu"}});
    let (s, v) = app.post("/api/v1/orgs/vault/instance-templates", &owner, body).await;
    assert_eq!(s, 201, "{v}");
    assert_eq!(v["env"], json!({"DEPLOY_KEY": "********", "REGION": "********"}));
    for who in [&owner, &member] {
        let (s, v) = app.get("/api/v1/orgs/vault/instance-templates/box", who).await;
        assert_eq!(s, 200);
        assert!(!v.to_string().contains("s3cr3t"), "{v}");
    }
    // Sent back masked, a value is kept; a new one is added; a left-out one goes.
    let (s, v) = app.patch("/api/v1/orgs/vault/instance-templates/box", &owner, json!({"env": {"DEPLOY_KEY": "********", "TOKEN": "t0k"}})).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["env"], json!({"DEPLOY_KEY": "********", "TOKEN": "********"}));
    let (s, v) = app.patch("/api/v1/orgs/vault/instance-templates/box", &owner, json!({"env": {"GHOST": "********"}})).await;
    assert_eq!(s, 422, "the mask keeps only what is stored: {v}");
    let mut sql = app.sql().await;
    let stored: String = sqlx::query_scalar("SELECT env::text FROM org_vault.instance_templates").fetch_one(&mut sql).await.unwrap();
    assert!(!stored.contains("s3cr3t") && !stored.contains("t0k"), "sealed at rest: {stored}");

    let (s, v) = app.post("/api/v1/orgs/vault/projects", &owner, json!({"key": "OPS", "name": "Ops", "workflow": "software-development"})).await;
    assert_eq!(s, 201, "{v}");
    // Only org admins choose a project's template (its secrets reach every job there).
    app.post("/api/v1/orgs/vault/projects/OPS/members", &owner, json!({"email": "member@example.com", "role": "admin"})).await;
    let (s, v) = app.patch("/api/v1/orgs/vault/projects/OPS", &member, json!({"instance_template": "box"})).await;
    assert_eq!(s, 403, "a project admin who is no org admin: {v}");
    let (s, v) = app.delete("/api/v1/orgs/vault/projects/OPS/members/member@example.com", &owner).await;
    assert_eq!(s, 204, "{v}");
    let (s, v) = app.patch("/api/v1/orgs/vault/projects/OPS", &owner, json!({"instance_template": "box"})).await;
    assert_eq!(s, 200, "{v}");
    let token = agent_token(&app, &owner, "vault").await;
    let mut ws = welcomed(&app, &token, &[]).await;
    let task = app.create_task(&owner, "vault", "OPS", "Deploy").await;
    let key = task["key"].as_str().unwrap();
    for status in ["Ready", "In Progress"] {
        let (s, v) = app.post(&format!("/api/v1/orgs/vault/tasks/{key}/move"), &owner, json!({"status": status})).await;
        assert_eq!(s, 200, "{v}");
    }
    match next(&mut ws, Duration::from_secs(5)).await {
        Some(Ok(ServerMessage::Assigned(a))) => {
            let env = a.instance_template.unwrap().env;
            assert_eq!(env.get("DEPLOY_KEY").map(String::as_str), Some("s3cr3t-value"));
            assert_eq!(env.get("TOKEN").map(String::as_str), Some("t0k"));
        }
        other => panic!("the agent should get the job, got {other:?}"),
    }
    // The owner sees which task the agent works on; a member outside OPS does not.
    let (_, agents) = app.get("/api/v1/orgs/vault/agents", &owner).await;
    assert_eq!(agents["data"][0]["current_task"], key, "{agents}");
    let (_, agents) = app.get("/api/v1/orgs/vault/agents", &member).await;
    assert_eq!(agents["data"][0]["status"], "busy", "{agents}");
    assert_eq!((agents["data"][0]["current_task"].clone(), agents["data"][0]["current_job"].clone()), (json!(null), json!(null)), "{agents}");
}

/// A job the server cannot prepare (a secret that no longer opens) costs an attempt
/// each time, then fails saying so, instead of bouncing between claim and release.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_that_cannot_be_prepared_fails_after_its_attempts() {
    let app = TestApp::spawn().await;
    let owner = app.owner_with_project("prep@example.com", "prep", "PRP").await;
    let (s, v) = app.post("/api/v1/orgs/prep/projects", &owner, json!({"key": "OPS", "name": "Ops", "workflow": "software-development"})).await;
    assert_eq!(s, 201, "{v}");
    app.post("/api/v1/orgs/prep/instance-templates", &owner, json!({"name": "box", "env": {"KEY": "v"}})).await;
    app.patch("/api/v1/orgs/prep/projects/OPS", &owner, json!({"instance_template": "box"})).await;
    // Sealed with a key this server does not have.
    let mut sql = app.sql().await;
    sqlx::query("UPDATE org_prep.instance_templates SET env = '{\"KEY\": \"sealed:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA\"}'").execute(&mut sql).await.unwrap();
    let token = agent_token(&app, &owner, "prep").await;
    let mut ws = welcomed(&app, &token, &[]).await;
    let task = app.create_task(&owner, "prep", "OPS", "Deploy").await;
    let key = task["key"].as_str().unwrap();
    for status in ["Ready", "In Progress"] {
        app.post(&format!("/api/v1/orgs/prep/tasks/{key}/move"), &owner, json!({"status": status})).await;
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let job = loop {
        let (_, jobs) = app.get(&format!("/api/v1/orgs/prep/jobs?task={key}"), &owner).await;
        if jobs["data"][0]["status"] == "failed" {
            break jobs["data"][0].clone();
        }
        assert!(std::time::Instant::now() < deadline, "the job did not fail: {jobs}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(job["error"].as_str().unwrap_or_default().contains("could not prepare"), "{job}");
    assert!(next(&mut ws, Duration::from_millis(300)).await.is_none(), "the agent got nothing of the job");
}

/// A job started by hand in a bound status (QA run again with `kodel job start`) moves
/// the task on when its artifact is approved, as the status's own job would.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn approving_a_hand_started_jobs_artifact_moves_the_task_on() {
    let app = TestApp::spawn().await;
    let owner = app.owner_with_project("qa@example.com", "qa", "OLD").await;
    let (s, v) = app.post("/api/v1/orgs/qa/projects", &owner, json!({"key": "SW", "name": "SW", "workflow": "software-development"})).await;
    assert_eq!(s, 201, "{v}");
    let task = app.create_task(&owner, "qa", "SW", "Check it").await;
    let key = task["key"].as_str().unwrap().to_owned();
    // Into QA; each bound status's own job is cancelled (no agent runs them).
    for status in ["Ready", "In Progress", "Code Review", "QA"] {
        let (s, v) = app.post(&format!("/api/v1/orgs/qa/tasks/{key}/move"), &owner, json!({"status": status})).await;
        assert_eq!(s, 200, "{v}");
        let (_, jobs) = app.get(&format!("/api/v1/orgs/qa/jobs?task={key}"), &owner).await;
        for job in jobs["data"].as_array().unwrap().iter().filter(|j| j["status"] == "pending") {
            let (s, v) = app.post(&format!("/api/v1/orgs/qa/jobs/{}/cancel", job["id"].as_str().unwrap()), &owner, json!({})).await;
            assert_eq!(s, 200, "{v}");
        }
    }
    let (s, job) = app.post("/api/v1/orgs/qa/jobs", &owner, json!({"task": key, "template": "qa-template"})).await;
    assert_eq!(s, 201, "{job}");
    assert!(job["for_status"].is_null(), "started by hand: {job}");
    let token = agent_token(&app, &owner, "qa").await;
    let mut ws = welcomed(&app, &token, &[]).await;
    let job_id = match next(&mut ws, Duration::from_secs(10)).await {
        Some(Ok(ServerMessage::Assigned(a))) => a.job.id,
        other => panic!("expected the job, got {other:?}"),
    };
    let report = kodel_core::jobs::NewArtifact {
        kind: kodel_core::jobs::ArtifactKind::TestReport,
        title: Some("Tests passed: 1 passed".into()),
        content: Some("ok".into()),
        reference: None,
        data: Some(json!({"passed": true, "exit_code": 0, "counts": {"passed": 1, "failed": 0, "skipped": 0}})),
    };
    send(&mut ws, &AgentMessage::Complete { job_id, summary: "Tests pass.".into(), artifacts: vec![report] }).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let artifact = loop {
        let (_, arts) = app.get(&format!("/api/v1/orgs/qa/artifacts?task={key}"), &owner).await;
        if let Some(a) = arts["data"].as_array().and_then(|a| a.first()).cloned() {
            break a;
        }
        assert!(std::time::Instant::now() < deadline, "no artifact: {arts}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let (s, v) = app.post(&format!("/api/v1/orgs/qa/artifacts/{}/approve", artifact["id"].as_str().unwrap()), &owner, json!({})).await;
    assert_eq!(s, 200, "{v}");
    let (_, task) = app.get(&format!("/api/v1/orgs/qa/tasks/{key}"), &owner).await;
    assert_eq!(task["status"], "Staging", "the QA binding's next status: {task}");
}
