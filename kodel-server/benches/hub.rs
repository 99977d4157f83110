//! The agents hub with 1,000 idle agents connected: the server's memory for them, and
//! how fast a new job reaches one of them.
//!
//! The real `kodel-server` binary (release, next to this bench) on a fresh database,
//! `KODEL_JOB_LEASE=600` (agents owe a heartbeat only every 200 s, so the idle ones
//! send nothing during the run). One org, one Software Development project, one agent
//! token; 1,000 WebSocket clients in this process each send `agent.hello` and wait for
//! `agent.welcome`, then stay idle. Memory: the server's RSS (from /proc) before the
//! first connects and after the last welcome (+1 s).
//!
//! Dispatch, 200 times, one job at a time: a new task moved to Ready (not timed), then
//! the timed move to In Progress, whose binding queues an implement job in the move's
//! transaction. The agent that gets `task.assigned` notes the time, answers
//! `task.error` (retryable: false) and is idle again once `task.ack` arrives; the next
//! round starts after that ack. Timed:
//! - move sent -> `task.assigned` read by the agent (this process's clock);
//! - claim -> `task.assigned` read: from the claim statement's `now()` (the job's
//!   `started_at`, PostgreSQL's clock, the same host clock) to the agent's wall clock;
//! - move sent -> claim (`started_at`), which shows how the dispatcher learnt of the job;
//! - move sent -> move response, for reference.
//!
//! The server's RSS is read again after the rounds; this process's own RSS growth for
//! its 1,000 clients (tokio-tungstenite with default buffers) is printed for comparison.
//!
//! Run: cargo bench -p kodel-server --bench hub   (numbers in docs/benchmarks.md)
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use chrono::{DateTime, Utc};
use futures::{SinkExt, StreamExt};
use kodel_core::protocol::{AgentMessage, PROTOCOL, ServerMessage};
use kodel_testkit::{ServerProcess, database_url, fresh_database, register, rss_kib};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http;
use uuid::Uuid;

const AGENTS: usize = 1000;
const JOBS: usize = 200;
const WARMUP: usize = 10;
/// Agents connecting at once.
const CONNECTING: usize = 50;
const WAIT: Duration = Duration::from_secs(20);

type Socket = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

enum Seen {
    Assigned { job: Uuid, at: Instant, wall: SystemTime, agent: usize },
    Ack { job: Uuid },
}

struct Api {
    http: reqwest::Client,
    base: String,
    token: String,
}

impl Api {
    async fn post(&self, path: &str, body: Value) -> Value {
        let resp = self.http.post(format!("{}{path}", self.base)).bearer_auth(&self.token).json(&body).send().await.unwrap();
        let status = resp.status();
        let v: Value = resp.json().await.unwrap_or(Value::Null);
        assert!(status.is_success(), "{path}: {status} {v}");
        v
    }

    async fn get(&self, path: &str) -> Value {
        let resp = self.http.get(format!("{}{path}", self.base)).bearer_auth(&self.token).send().await.unwrap();
        assert!(resp.status().is_success(), "{path}: {}", resp.status());
        resp.json().await.unwrap()
    }
}

/// Connects, says hello, waits for the welcome.
async fn connect(url: &str, token: &str, i: usize) -> Socket {
    let mut req = url.into_client_request().unwrap();
    req.headers_mut().insert(http::header::AUTHORIZATION, http::HeaderValue::from_str(&format!("Bearer {token}")).unwrap());
    let (mut ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();
    let hello = AgentMessage::Hello {
        protocol: PROTOCOL,
        name: format!("idle-{i:04}"),
        version: "0".into(),
        labels: vec![],
        capabilities: vec!["tools:v1".into()],
        missing: Default::default(),
        agent_id: None,
        job: None,
        disk_bytes: None,
    };
    ws.send(Message::Text(serde_json::to_string(&hello).unwrap().into())).await.unwrap();
    loop {
        let msg = tokio::time::timeout(WAIT, ws.next()).await.expect("welcome in time").expect("socket open").unwrap();
        if let Message::Text(text) = msg {
            match serde_json::from_str::<ServerMessage>(&text).unwrap() {
                ServerMessage::Welcome { .. } => return ws,
                other => panic!("expected agent.welcome, got {other:?}"),
            }
        }
    }
}

/// An idle agent: reports what it is given and fails each job at once (not retryable),
/// so it is idle again.
async fn idle_agent(mut ws: Socket, i: usize, seen: mpsc::UnboundedSender<Seen>) {
    while let Some(Ok(msg)) = ws.next().await {
        let (at, wall) = (Instant::now(), SystemTime::now());
        let Message::Text(text) = msg else { continue };
        match serde_json::from_str::<ServerMessage>(&text) {
            Ok(ServerMessage::Assigned(a)) => {
                let job = a.job.id;
                let _ = seen.send(Seen::Assigned { job, at, wall, agent: i });
                let fail = AgentMessage::Error { job_id: job, error: "benchmark agent: nothing done".into(), retryable: false };
                if ws.send(Message::Text(serde_json::to_string(&fail).unwrap().into())).await.is_err() {
                    return;
                }
            }
            Ok(ServerMessage::Ack { job_id }) => {
                let _ = seen.send(Seen::Ack { job: job_id });
            }
            Ok(ServerMessage::Error { code, message }) => panic!("the server says {code}: {message}"),
            _ => {}
        }
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn pcts(mut v: Vec<f64>) -> String {
    v.sort_by(f64::total_cmp);
    let p = |q: f64| v[((v.len() as f64 - 1.0) * q).round() as usize];
    format!("p50 {:6.2}  p90 {:6.2}  p99 {:6.2}  max {:6.2} ms", p(0.5), p(0.9), p(0.99), v[v.len() - 1])
}

#[tokio::main]
async fn main() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    setrlimit(Resource::RLIMIT_NOFILE, hard, hard).unwrap();
    assert!(hard as usize > AGENTS + 200, "open-files limit {hard} too low for {AGENTS} agents");

    let db = fresh_database().await;
    let url = database_url(&db);
    let bin = Path::new(env!("CARGO_BIN_EXE_kodel-server"));
    let server = ServerProcess::start(
        bin,
        &[],
        &[("DATABASE_URL", url.as_str()), ("RUST_LOG", "info,sqlx=warn"), ("KODEL_SPARE_SCHEMAS", "0"), ("KODEL_JOB_LEASE", "600")],
    );
    let pid = server.child.id();
    let http = reqwest::Client::new();
    let token = register(&server.base, "b@x.io").await;
    let api = Api { http, base: server.base.clone(), token };
    api.post("/api/v1/orgs", json!({"slug": "hub", "name": "hub"})).await;
    api.post("/api/v1/orgs/hub/projects", json!({"key": "HUB", "name": "HUB", "workflow": "software-development"})).await;
    let agent_token = api.post("/api/v1/orgs/hub/agent-tokens", json!({"name": "bench"})).await["token"].as_str().unwrap().to_owned();
    // Warm the paths the dispatch rounds take (task create, move, job list).
    for i in 0..5 {
        let t = api.post("/api/v1/orgs/hub/projects/HUB/tasks", json!({"title": format!("warm {i}")})).await;
        api.post(&format!("/api/v1/orgs/hub/tasks/{}/move", t["key"].as_str().unwrap()), json!({"status": "Ready"})).await;
    }
    api.get("/api/v1/orgs/hub/jobs").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_before = rss_kib(pid);
    let client_before = rss_kib(std::process::id());

    // 1,000 agents.
    let ws_url = format!("{}/api/v1/agent/ws", server.base.replace("http://", "ws://"));
    let started = Instant::now();
    let sockets: Vec<Socket> = futures::stream::iter(0..AGENTS)
        .map(|i| {
            let (u, t) = (ws_url.clone(), agent_token.clone());
            async move { connect(&u, &t, i).await }
        })
        .buffered(CONNECTING)
        .collect()
        .await;
    let connect_time = started.elapsed();
    let (seen_tx, mut seen) = mpsc::unbounded_channel();
    for (i, ws) in sockets.into_iter().enumerate() {
        tokio::spawn(idle_agent(ws, i, seen_tx.clone()));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_after = rss_kib(pid);
    let client_after = rss_kib(std::process::id());
    let added_kib = rss_after.saturating_sub(rss_before);
    println!("agents hub: {AGENTS} agents connected (hello -> welcome, {CONNECTING} at a time) in {:.2} s", connect_time.as_secs_f64());
    println!(
        "server RSS: {:.1} MiB before, {:.1} MiB with {AGENTS} idle agents: +{:.1} MiB, {:.1} KiB per agent (target < 100 MiB: {})",
        rss_before as f64 / 1024.0,
        rss_after as f64 / 1024.0,
        added_kib as f64 / 1024.0,
        added_kib as f64 / AGENTS as f64,
        if (added_kib as f64 / 1024.0) < 100.0 { "met" } else { "NOT met" }
    );

    println!(
        "this process (the 1,000 tokio-tungstenite clients, default buffers): +{:.1} MiB",
        client_after.saturating_sub(client_before) as f64 / 1024.0
    );

    // Dispatch, one job at a time.
    let mut to_agent = Vec::new();
    let mut to_response = Vec::new();
    let mut rounds: Vec<(String, SystemTime, SystemTime)> = Vec::new();
    let mut agents_used = std::collections::HashSet::new();
    for round in 0..WARMUP + JOBS {
        let t = api.post("/api/v1/orgs/hub/projects/HUB/tasks", json!({"title": format!("job {round}")})).await;
        let key = t["key"].as_str().unwrap().to_owned();
        api.post(&format!("/api/v1/orgs/hub/tasks/{key}/move"), json!({"status": "Ready"})).await;
        tokio::time::sleep(Duration::from_millis(5)).await;

        let (t0, w0) = (Instant::now(), SystemTime::now());
        api.post(&format!("/api/v1/orgs/hub/tasks/{key}/move"), json!({"status": "In Progress"})).await;
        let responded = t0.elapsed();
        let (job, at, wall, agent) = match tokio::time::timeout(WAIT, seen.recv()).await.expect("task.assigned in time").unwrap() {
            Seen::Assigned { job, at, wall, agent } => (job, at, wall, agent),
            Seen::Ack { job } => panic!("ack of {job} before any assignment"),
        };
        match tokio::time::timeout(WAIT, seen.recv()).await.expect("task.ack in time").unwrap() {
            Seen::Ack { job: acked } => assert_eq!(acked, job),
            Seen::Assigned { job: other, .. } => panic!("a second job {other} was assigned"),
        }
        if round >= WARMUP {
            to_agent.push(ms(at.duration_since(t0)));
            to_response.push(ms(responded));
            rounds.push((key, w0, wall));
            agents_used.insert(agent);
        }
    }
    // Claim times, from the jobs.
    let mut claim_to_agent = Vec::new();
    let mut move_to_claim = Vec::new();
    for (key, w0, wall) in &rounds {
        let jobs = api.get(&format!("/api/v1/orgs/hub/jobs?task={key}")).await;
        let job = &jobs["data"][0];
        assert_eq!(job["status"], "failed", "{job}");
        let started: DateTime<Utc> = job["started_at"].as_str().unwrap().parse().unwrap();
        let at: DateTime<Utc> = (*wall).into();
        let sent: DateTime<Utc> = (*w0).into();
        claim_to_agent.push((at - started).num_microseconds().unwrap() as f64 / 1000.0);
        move_to_claim.push((started - sent).num_microseconds().unwrap() as f64 / 1000.0);
    }
    let p50 = {
        let mut v = to_agent.clone();
        v.sort_by(f64::total_cmp);
        v[(v.len() - 1) / 2]
    };
    let claim_p50 = {
        let mut v = claim_to_agent.clone();
        v.sort_by(f64::total_cmp);
        v[(v.len() - 1) / 2]
    };
    println!("dispatch with {AGENTS} idle agents, {JOBS} jobs one at a time (after {WARMUP} warm-up), {} distinct agents got one", agents_used.len());
    println!("  move sent -> task.assigned at the agent: {}", pcts(to_agent));
    println!("  claim (job started_at) -> task.assigned:  {}", pcts(claim_to_agent));
    println!("  move sent -> claim (job started_at):      {}", pcts(move_to_claim));
    println!("  move sent -> move response:               {}", pcts(to_response));
    println!(
        "target: a claimed job reaches an idle agent in < 10 ms p50: claim -> agent p50 {claim_p50:.2} ms ({}); move sent -> agent p50 {p50:.2} ms ({})",
        if claim_p50 < 10.0 { "met" } else { "NOT met" },
        if p50 < 10.0 { "met" } else { "NOT met" }
    );
    let rss_end = rss_kib(pid);
    println!("server RSS after the dispatch rounds: {:.1} MiB", rss_end as f64 / 1024.0);
    assert!(server.stop().success());
}
