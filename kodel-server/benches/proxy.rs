//! LLM proxy overhead against the scripted provider called directly, in the same run.
//! One scripted OpenAI-format provider on 127.0.0.1 (no chunk delay: it writes its
//! frames as fast as it can), one answer of 200 text chunks per call, the same request
//! body on every path (checked). Three paths, taken in turn (the order rotates):
//!
//! - direct: `llm::provider::stream` from this process (the provider client alone);
//! - in-process proxy: `state.llm.call` (routing, org settings, concurrency slot, the
//!   provider client, metering transaction at the end);
//! - agent WebSocket: an enrolled agent holding a job sends `llm.request` on
//!   `/api/v1/agent/ws` and reads `llm.response.chunk` frames and `llm.response.done`
//!   (adds the socket hop both ways, a JSON frame per chunk, the live-output coalescer).
//!
//! Two modes, 300 measured calls per path each:
//! - spaced: 50 ms of quiet before each call, so every TCP connection starts each call
//!   in the same state (Linux's delayed-ACK heuristics depend on how soon a socket
//!   sends after it received; the scripted provider, like the Kodel server, does not
//!   set TCP_NODELAY, so a delayed ACK holds its next small write for ~40 ms);
//! - back to back: each path makes two calls in a row and the second is measured, as
//!   an agent's calls come (its connection sends right after it received).
//!
//! Times are from just before the call (direct, in-process) or just after the request
//! frame is serialised, before it is sent (WebSocket), to the first delta / the last
//! delta / the end (stream end; `call` returning; `llm.response.done`, which follows the
//! metering commit). Per-chunk overhead is, per round, ((proxied − direct) end time −
//! (proxied − direct) first-token time) / chunks, and its p50 over rounds. A "stall" is
//! a gap of 30 ms or more between two consecutive pieces (or the last one and the end).
//! Run: cargo bench -p kodel-server --bench proxy   (numbers in docs/benchmarks.md)
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use kodel_core::OrgSlug;
use kodel_core::llm::{LlmRequest, Message as LlmMessage, Role};
use kodel_core::protocol::{AgentMessage, PROTOCOL, ServerMessage};
use kodel_server::llm::{self, CallOptions, Caller, JobRef, ProviderConfig, ProviderKind, StreamEvent};
use kodel_testkit::scripted_llm::{Reply, ScriptedLlm};
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http;
use uuid::Uuid;

const CALLS: usize = 300;
const WARMUP: usize = 20;
/// Text pieces per answer (the scripted provider streams 4 characters per chunk).
const CHUNKS: usize = 200;
const MODEL: &str = "gpt-bench";
const SYSTEM: &str = "You are a benchmark. Answer with the text you were scripted to give.";
/// Bound on one call, so a broken path fails the bench instead of hanging it.
const CALL_LIMIT: Duration = Duration::from_secs(30);

type Socket = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

#[derive(Clone, Copy)]
struct Sample {
    ttft: Duration,
    last: Duration,
    end: Duration,
    chunks: usize,
    /// The longest wait between two consecutive pieces (or the last piece and the end).
    max_gap: Duration,
}

/// Notes when each piece arrived.
#[derive(Default)]
struct Clock {
    ttft: Option<Duration>,
    last: Duration,
    chunks: usize,
    max_gap: Duration,
}

impl Clock {
    fn piece(&mut self, at: Duration) {
        if self.ttft.is_some() {
            self.max_gap = self.max_gap.max(at - self.last);
        }
        self.ttft.get_or_insert(at);
        self.last = at;
        self.chunks += 1;
    }

    fn end(self, at: Duration) -> Sample {
        let max_gap = self.max_gap.max(at - self.last);
        Sample { ttft: self.ttft.expect("at least one piece"), last: self.last, end: at, chunks: self.chunks, max_gap }
    }
}

#[derive(Default)]
struct Path {
    samples: Vec<Sample>,
}

impl Path {
    fn sorted(&self, f: impl Fn(&Sample) -> Duration) -> Vec<Duration> {
        let mut v: Vec<Duration> = self.samples.iter().map(f).collect();
        v.sort();
        v
    }
}

fn answer() -> String {
    let words = ["proxy ", "stream ", "token ", "chunk ", "relay "];
    let mut s = String::new();
    let mut i = 0;
    while s.len() < CHUNKS * 4 {
        s.push_str(words[i % words.len()]);
        i += 1;
    }
    s.truncate(CHUNKS * 4);
    s
}

fn request() -> LlmRequest {
    LlmRequest {
        messages: vec![LlmMessage::text(Role::User, "Say the scripted text, please. This is a short user turn of a benchmark.")],
        model: Some(format!("openai/{MODEL}")),
        ..Default::default()
    }
}

async fn direct(http: &reqwest::Client, cfg: &ProviderConfig, req: &LlmRequest, opts: &CallOptions) -> Sample {
    let started = Instant::now();
    let mut stream = llm::provider::stream(http, cfg, MODEL, SYSTEM, req, opts).await.unwrap();
    let mut clock = Clock::default();
    while let Some(ev) = stream.next().await {
        if let StreamEvent::Delta(_) = ev.unwrap() {
            clock.piece(started.elapsed());
        }
    }
    clock.end(started.elapsed())
}

async fn in_process(state: &kodel_server::AppState, caller: &Caller, req: &LlmRequest) -> Sample {
    let started = Instant::now();
    let mut clock = Clock::default();
    state.llm.call(state, caller, SYSTEM, req, std::future::pending(), |_| clock.piece(started.elapsed())).await.unwrap();
    clock.end(started.elapsed())
}

async fn over_ws(ws: &mut Socket, job_id: Uuid, n: usize, req: &LlmRequest) -> Sample {
    // The agent sends its system prompt as the conversation's leading system message;
    // the server takes it out and passes it as the system prompt, as `direct` does.
    let mut request = req.clone();
    request.messages.insert(0, LlmMessage::text(Role::System, SYSTEM));
    let request_id = format!("r{n}");
    let frame = serde_json::to_string(&AgentMessage::LlmRequest { job_id, request_id: request_id.clone(), request }).unwrap();
    let started = Instant::now();
    ws.send(Message::Text(frame.into())).await.unwrap();
    let mut clock = Clock::default();
    loop {
        let msg = ws.next().await.expect("socket open").unwrap();
        let at = started.elapsed();
        let Message::Text(text) = msg else { continue };
        match serde_json::from_str::<ServerMessage>(&text).unwrap() {
            ServerMessage::LlmChunk { request_id: r, .. } => {
                assert_eq!(r, request_id);
                clock.piece(at);
            }
            ServerMessage::LlmDone { request_id: r, .. } => {
                assert_eq!(r, request_id);
                return clock.end(at);
            }
            other => panic!("unexpected frame during an LLM call: {other:?}"),
        }
    }
}

async fn recv_server(ws: &mut Socket) -> ServerMessage {
    loop {
        let msg = tokio::time::timeout(CALL_LIMIT, ws.next()).await.expect("a frame in time").expect("socket open").unwrap();
        if let Message::Text(text) = msg {
            return serde_json::from_str(&text).unwrap();
        }
    }
}

fn line(name: &str, p: &Path, f: impl Fn(&Sample) -> Duration) -> String {
    let s = p.sorted(f);
    format!("{name:<22} p50 {:7.3}  p90 {:7.3}  p99 {:7.3} ms", common::pct(&s, 0.5), common::pct(&s, 0.9), common::pct(&s, 0.99))
}

/// p50 over rounds of ((proxied end − direct end) − (proxied ttft − direct ttft)) / chunks, in ms.
fn per_chunk(proxied: &Path, direct: &Path, end: impl Fn(&Sample) -> Duration) -> f64 {
    let mut v: Vec<f64> = proxied
        .samples
        .iter()
        .zip(&direct.samples)
        .map(|(p, d)| {
            let streaming = (end(p).as_secs_f64() - p.ttft.as_secs_f64()) - (end(d).as_secs_f64() - d.ttft.as_secs_f64());
            streaming * 1000.0 / d.chunks as f64
        })
        .collect();
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

#[tokio::main]
async fn main() {
    let text = answer();
    let scripted = ScriptedLlm::start(Vec::new()).await;
    let settings = kodel_server::config::LlmSettings {
        openai_base_url: Some(scripted.openai_base()),
        openai_api_key: Some("sk-bench-secret".into()),
        default_model: Some(format!("openai/{MODEL}")),
        llm_concurrency: 8,
        llm_timeout: 30.0,
        ..Default::default()
    };
    // The sweep stays out of the measurement.
    let b = common::Bench::start_with(3600.0, settings).await;
    b.post("/api/v1/orgs", json!({"slug": "px", "name": "px"})).await;
    b.post("/api/v1/orgs/px/projects", json!({"key": "PX", "name": "PX", "workflow": "software-development"})).await;
    let agent_token = b.post("/api/v1/orgs/px/agent-tokens", json!({"name": "bench"})).await["token"].as_str().unwrap().to_owned();

    // An agent with a job, as kodel-agent would be. KODEL_BENCH_NODELAY=1: it connects
    // through a second listener of the same server that sets TCP_NODELAY on its sockets
    // (kodel-server's own listener, like this bench's, does not).
    let mut base = b.base.clone();
    if std::env::var("KODEL_BENCH_NODELAY").is_ok_and(|v| v == "1") {
        use axum::serve::ListenerExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        base = format!("http://{}", listener.local_addr().unwrap());
        let listener = listener.tap_io(|tcp| {
            let _ = tcp.set_nodelay(true);
        });
        let router = b.server.router.clone();
        tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
        println!("agent connects with TCP_NODELAY on the server's socket");
    }
    let url = format!("{}/api/v1/agent/ws", base.replace("http://", "ws://"));
    let mut req = url.into_client_request().unwrap();
    req.headers_mut().insert(http::header::AUTHORIZATION, http::HeaderValue::from_str(&format!("Bearer {agent_token}")).unwrap());
    let (mut ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();
    let hello = AgentMessage::Hello {
        protocol: PROTOCOL,
        name: "bench-agent".into(),
        version: "0".into(),
        labels: vec![],
        capabilities: vec!["tools:v1".into()],
        missing: Default::default(),
        agent_id: None,
        job: None,
        disk_bytes: None,
    };
    ws.send(Message::Text(serde_json::to_string(&hello).unwrap().into())).await.unwrap();
    assert!(matches!(recv_server(&mut ws).await, ServerMessage::Welcome { .. }));
    let task = b.post("/api/v1/orgs/px/projects/PX/tasks", json!({"title": "proxy bench"})).await;
    let key = task["key"].as_str().unwrap().to_owned();
    for status in ["Ready", "In Progress"] {
        b.post(&format!("/api/v1/orgs/px/tasks/{key}/move"), json!({"status": status})).await;
    }
    let job_id = match recv_server(&mut ws).await {
        ServerMessage::Assigned(a) => a.job.id,
        other => panic!("expected task.assigned, got {other:?}"),
    };

    // The same job, for calls through `state.llm.call`.
    let state = &b.server.state;
    let slug = OrgSlug::parse("px").unwrap();
    let org_id: Uuid = sqlx::query_scalar("SELECT id FROM orgs WHERE slug = 'px'").fetch_one(&state.pool).await.unwrap();
    let task_id: Uuid = sqlx::query_scalar(&format!("SELECT task_id FROM {}.ai_jobs WHERE id = $1", slug.quoted_schema()))
        .bind(job_id)
        .fetch_one(&state.pool)
        .await
        .unwrap();
    let caller = Caller { org_id, slug, job: Some(JobRef { job_id, task_id }), template_model: None, user: None };

    let http = llm::client();
    let cfg = ProviderConfig { kind: ProviderKind::OpenAi, base_url: scripted.openai_base(), api_key: Some("sk-bench-secret".into()), wire: Default::default() };
    let opts = CallOptions { first_token_timeout: Duration::from_secs(30), timeout: Duration::from_secs(30), max_retries: 0, max_retry_wait: Duration::from_secs(1) };
    let req = request();

    let mut n = 0;
    for (mode, pause, repeat) in [("spaced (50 ms quiet before each call)", Some(Duration::from_millis(50)), 1), ("back to back (second of two calls in a row)", None, 2)] {
        let mut paths = [Path::default(), Path::default(), Path::default()];
        for round in 0..WARMUP + CALLS {
            // Rotate the order so no path always runs first.
            for k in 0..3 {
                let which = (round + k) % 3;
                for _ in 0..repeat {
                    scripted.push(Reply::Text(text.clone()));
                    n += 1;
                    if let Some(pause) = pause {
                        tokio::time::sleep(pause).await;
                    }
                    let sample = match which {
                        0 => tokio::time::timeout(CALL_LIMIT, direct(&http, &cfg, &req, &opts)).await.expect("direct call in time"),
                        1 => tokio::time::timeout(CALL_LIMIT, in_process(state, &caller, &req)).await.expect("in-process call in time"),
                        _ => tokio::time::timeout(CALL_LIMIT, over_ws(&mut ws, job_id, n, &req)).await.expect("WebSocket call in time"),
                    };
                    assert_eq!(sample.chunks, CHUNKS, "every path relays every chunk");
                    if round >= WARMUP {
                        // With two calls in a row, the second one's sample stays.
                        paths[which].samples.truncate(round - WARMUP);
                        paths[which].samples.push(sample);
                    }
                }
            }
        }
        report(mode, &paths);
    }
    assert!(!scripted.exhausted());
    // Every path sent the provider the same request.
    let bodies: std::collections::HashSet<String> = scripted.requests().iter().map(|r| r.body.to_string()).collect();
    assert_eq!(bodies.len(), 1, "the same request body on every path: {bodies:?}");
}

/// Which time of a sample a table shows.
type Pick = fn(&Sample) -> Duration;

fn report(mode: &str, paths: &[Path; 3]) {
    let [d, p, w] = paths;
    let names = ["direct", "in-process proxy", "agent WebSocket"];
    println!();
    println!("LLM proxy overhead, {mode}: {CALLS} calls per path (after {WARMUP} warm-up rounds), {CHUNKS} chunks per answer, scripted OpenAI-format provider, no chunk delay");
    let stat: [(&str, Pick); 3] = [
        ("time to first token", |s| s.ttft),
        ("time to last chunk", |s| s.last),
        ("time to the end (stream end / call returned / llm.response.done)", |s| s.end),
    ];
    for (title, f) in stat {
        println!("{title}");
        for (name, path) in names.iter().zip(paths) {
            println!("  {}", line(name, path, f));
        }
    }
    for (name, path) in names.iter().zip(paths) {
        let stalls = path.samples.iter().filter(|s| s.max_gap >= Duration::from_millis(30)).count();
        println!("  {name:<22} calls with a stall (a gap >= 30 ms): {stalls} of {}", path.samples.len());
    }
    let p50 = |path: &Path, f: fn(&Sample) -> Duration| common::pct(&path.sorted(f), 0.5);
    let verdict = |ok: bool| if ok { "met" } else { "NOT met" };
    for (name, path) in [("in-process proxy", p), ("agent WebSocket", w)] {
        let added = p50(path, |s| s.ttft) - p50(d, |s| s.ttft);
        let chunk_last = per_chunk(path, d, |s| s.last);
        let chunk_end = per_chunk(path, d, |s| s.end);
        println!(
            "{name}: added TTFT p50 {added:.3} ms (target < 1 ms: {}); per chunk p50 {chunk_last:.4} ms to the last chunk, {chunk_end:.4} ms to the end (target < 0.2 ms: {})",
            verdict(added < 1.0),
            verdict(chunk_end < 0.2),
        );
    }
}
