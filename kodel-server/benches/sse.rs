//! SSE fan-out: 1,000 subscribers on one org stream; delivery delay from the moment a
//! change is requested to the moment each subscriber has the event; server memory.
//! Run: cargo bench -p kodel-server --bench sse   (numbers in docs/benchmarks.md)
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use kodel_testkit::{ServerProcess, database_url, fresh_database, register, rss_kib};
use serde_json::json;

const SUBSCRIBERS: usize = 1000;
const EVENTS: usize = 20;

#[tokio::main]
async fn main() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    setrlimit(Resource::RLIMIT_NOFILE, hard, hard).unwrap();

    let db = fresh_database().await;
    let url = database_url(&db);
    let server = ServerProcess::start(Path::new(env!("CARGO_BIN_EXE_kodel-server")), &[], &[("DATABASE_URL", url.as_str()), ("RUST_LOG", "info,sqlx=warn"), ("KODEL_STREAMS_PER_USER", "100000")]);
    let base = server.base.clone();
    let http = reqwest::Client::new();
    let token = register(&base, "b@x.io").await;
    http.post(format!("{base}/api/v1/orgs")).bearer_auth(&token).json(&json!({"slug": "bench", "name": "x"})).send().await.unwrap();
    http.post(format!("{base}/api/v1/orgs/bench/projects")).bearer_auth(&token).json(&json!({"key": "BEN", "name": "x"})).send().await.unwrap();
    let rss_before = rss_kib(server.child.id());

    // Subscribers only note when each event's bytes arrive (events come in order), so
    // the client's own work stays small; delays are computed after the run.
    let received: Arc<Mutex<Vec<Vec<Instant>>>> = Arc::default();
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel::<()>(SUBSCRIBERS);
    for _ in 0..SUBSCRIBERS {
        // One connection each, as separate clients would have.
        let client = reqwest::Client::builder().pool_max_idle_per_host(0).build().unwrap();
        let (url, token, received, ready) = (format!("{base}/api/v1/orgs/bench/events"), token.clone(), received.clone(), ready_tx.clone());
        tokio::spawn(async move {
            let resp = client.get(url).bearer_auth(token).send().await.unwrap();
            assert_eq!(resp.status(), 200);
            ready.send(()).await.unwrap();
            let mut stream = resp.bytes_stream();
            let mut times = Vec::with_capacity(EVENTS);
            let mut tail: Vec<u8> = Vec::new();
            while let Some(Ok(chunk)) = stream.next().await {
                let now = Instant::now();
                // Count "\ndata: " markers, minding one split across chunks.
                tail.extend_from_slice(&chunk);
                let found = tail.windows(7).filter(|w| *w == b"\ndata: ").count();
                times.extend(std::iter::repeat_n(now, found));
                let keep = tail.len().min(6);
                tail.drain(..tail.len() - keep);
                if times.len() >= EVENTS {
                    break;
                }
            }
            received.lock().unwrap().push(times);
        });
    }
    for _ in 0..SUBSCRIBERS {
        ready_rx.recv().await.unwrap();
    }
    let rss_connected = rss_kib(server.child.id());
    let cpu = |pid: u32| -> f64 {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let f: Vec<&str> = stat.rsplit(')').next().unwrap_or("").split_whitespace().collect();
        (f[11].parse::<f64>().unwrap_or(0.0) + f[12].parse::<f64>().unwrap_or(0.0)) / 100.0
    };
    let (server_cpu0, own_cpu0) = (cpu(server.child.id()), cpu(std::process::id()));

    let mut sent = Vec::with_capacity(EVENTS);
    for _ in 1..=EVENTS {
        sent.push(Instant::now());
        let r = http.post(format!("{base}/api/v1/orgs/bench/projects/BEN/tasks")).bearer_auth(&token).json(&json!({"title": "x"})).send().await.unwrap();
        assert_eq!(r.status(), 201);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while received.lock().unwrap().len() < SUBSCRIBERS && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let rss_after = rss_kib(server.child.id());
    let (server_cpu, own_cpu) = (cpu(server.child.id()) - server_cpu0, cpu(std::process::id()) - own_cpu0);
    let mut d: Vec<Duration> = received
        .lock()
        .unwrap()
        .iter()
        .flat_map(|times| times.iter().zip(&sent).map(|(got, at)| *got - *at))
        .collect();
    d.sort();
    let pct = |p: f64| d[((d.len() as f64 - 1.0) * p).round() as usize];
    println!("SSE: {SUBSCRIBERS} subscribers x {EVENTS} events, {} deliveries of {}", d.len(), SUBSCRIBERS * EVENTS);
    println!("delay from POST sent to event received: p50 {:?}  p99 {:?}  max {:?}", pct(0.5), pct(0.99), d[d.len() - 1]);
    println!(
        "server RSS: {:.1} MiB before, {:.1} MiB with {SUBSCRIBERS} connected, {:.1} MiB after the events",
        rss_before as f64 / 1024.0,
        rss_connected as f64 / 1024.0,
        rss_after as f64 / 1024.0
    );
    println!("CPU during the events: server {server_cpu:.2} s, this client process {own_cpu:.2} s");
    assert_eq!(d.len(), SUBSCRIBERS * EVENTS, "every subscriber got every event");
    drop(server);
}
