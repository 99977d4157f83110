//! 10,000 orgs on one server: start time with nothing to migrate, memory with all of
//! them idle and with 100 in use, and what the idle ones cost the CPU.
//!
//! Making 10,000 org schemas through the API would take ~50 min (300 ms each, see the
//! startup bench), so one org is made through the API (its schema by the server's own
//! migrations, a Software Development project, the bench user its owner) and cloned:
//! `pg_dump --inserts` of its schema (psql meta-commands left out), renamed, replayed 10 schemas a transaction (more exhaust PostgreSQL's lock table), and
//! its `public.orgs` and `org_members` rows copied with a new id and slug. Every clone
//! is what the server would have made (same DDL, same rows).
//!
//! Then, with the release `kodel-server`:
//! - start, 5 times, spawn to `/healthz` answering (the log must say the migrations
//!   were checked, not applied);
//! - RSS after start with every org idle, and CPU of the server and of every
//!   PostgreSQL process over 30 s of idling (the engine's sweep runs every 5 s);
//! - 100 orgs put to use: each gets an agent token, a connected (idle) agent, a board
//!   stream and 5 new tasks; RSS with them all still connected; the same CPU reading;
//! - the 100 agents and streams gone, RSS and the server's per-org state again after
//!   the hub's dispatchers notice (their 2 s poll).
//!
//! Run: cargo bench -p kodel-server --bench tenants   (numbers in docs/benchmarks.md)
//! `KODEL_BENCH_ORGS` sets the number of orgs (default 10000). Needs `pg_dump`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use kodel_core::protocol::{AgentMessage, PROTOCOL, ServerMessage};
use kodel_testkit::{ServerProcess, database_url, fresh_database, register, rss_kib};
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http;

const ACTIVE: usize = 100;
const PER_TRANSACTION: usize = 10;
const TEMPLATE: &str = "b00000";

/// CPU time (user + system) of a process, in clock ticks.
fn cpu_ticks(pid: &str) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which is in parentheses and may hold spaces).
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    f.get(11).and_then(|u| u.parse::<u64>().ok()).unwrap_or(0) + f.get(12).and_then(|s| s.parse::<u64>().ok()).unwrap_or(0)
}

/// CPU time of every `postgres` process now.
fn postgres_ticks() -> u64 {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|p| p.chars().all(|c| c.is_ascii_digit()))
        .filter(|p| std::fs::read_to_string(format!("/proc/{p}/comm")).is_ok_and(|c| c.trim() == "postgres"))
        .map(|p| cpu_ticks(&p))
        .sum()
}

/// CPU used by the server and by PostgreSQL over `window` of idling, as % of one core.
async fn idle_cpu(server: &ServerProcess, window: Duration) -> (f64, f64) {
    let ticks = 100.0; // USER_HZ on Linux
    let (s0, p0) = (cpu_ticks(&server.child.id().to_string()), postgres_ticks());
    tokio::time::sleep(window).await;
    let (s1, p1) = (cpu_ticks(&server.child.id().to_string()), postgres_ticks());
    let pct = |d: u64| d as f64 / ticks / window.as_secs_f64() * 100.0;
    (pct(s1 - s0), pct(p1 - p0))
}

#[tokio::main]
async fn main() {
    let orgs: usize = std::env::var("KODEL_BENCH_ORGS").ok().and_then(|v| v.parse().ok()).unwrap_or(10_000);
    let db = fresh_database().await;
    let url = database_url(&db);
    let bin = Path::new(env!("CARGO_BIN_EXE_kodel-server"));
    let env = [("DATABASE_URL", url.as_str()), ("RUST_LOG", "info"), ("KODEL_SPARE_SCHEMAS", "0"), ("KODEL_STREAMS_PER_USER", "200")];
    let http = reqwest::Client::new();

    // The template org, made by the server.
    let server = ServerProcess::start(bin, &[], &env);
    let token = register(&server.base, "b@x.io").await;
    let api = |method: &str, path: String, body: serde_json::Value| {
        let (http, base, token) = (http.clone(), server.base.clone(), token.clone());
        let method = method.parse::<reqwest::Method>().unwrap();
        async move {
            let r = http.request(method, format!("{base}{path}")).bearer_auth(&token).json(&body).send().await.unwrap();
            assert!(r.status().is_success(), "{path}: {}", r.status());
        }
    };
    api("POST", "/api/v1/orgs".into(), json!({"slug": TEMPLATE, "name": "Bench"})).await;
    api("POST", format!("/api/v1/orgs/{TEMPLATE}/projects"), json!({"key": "KOD", "name": "Kodel", "workflow": "software-development"})).await;
    assert!(server.stop().success());

    // Its clones.
    let started = Instant::now();
    let dump = Command::new("pg_dump").args(["--inserts", "--no-owner", "--no-privileges", "--schema", &format!("org_{TEMPLATE}"), &url]).output().expect("pg_dump (postgresql-client)");
    assert!(dump.status.success(), "pg_dump: {}", String::from_utf8_lossy(&dump.stderr));
    let ddl: String = String::from_utf8(dump.stdout)
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with("--") && !l.starts_with('\\') && !l.starts_with("SET ") && !l.starts_with("SELECT pg_catalog.set_config"))
        .collect::<Vec<_>>()
        .join("\n");
    let pool = sqlx::postgres::PgPoolOptions::new().max_connections(2).connect(&url).await.unwrap();
    let batches: Vec<Vec<usize>> = (1..orgs).collect::<Vec<_>>().chunks(PER_TRANSACTION).map(|c| c.to_vec()).collect();
    futures::stream::iter(batches)
        .for_each_concurrent(2, |batch| {
            let (pool, ddl) = (pool.clone(), ddl.clone());
            async move {
                let mut sql = String::from("BEGIN; SET LOCAL synchronous_commit = off;\n");
                for i in batch {
                    let slug = format!("b{i:05}");
                    sql.push_str(&ddl.replace(&format!("org_{TEMPLATE}"), &format!("org_{slug}")));
                    sql.push_str(&format!(
                        ";\nINSERT INTO public.orgs SELECT (jsonb_populate_record(NULL::public.orgs, to_jsonb(o) || jsonb_build_object('id', gen_random_uuid(), 'slug', '{slug}'))).* FROM public.orgs o WHERE slug = '{TEMPLATE}';
                         INSERT INTO public.org_members SELECT (jsonb_populate_record(NULL::public.org_members, to_jsonb(m) || jsonb_build_object('org_id', (SELECT id FROM public.orgs WHERE slug = '{slug}')))).*
                         FROM public.org_members m WHERE org_id = (SELECT id FROM public.orgs WHERE slug = '{TEMPLATE}');\n"
                    ));
                }
                sql.push_str("COMMIT;");
                sqlx::raw_sql(&sql).execute(&pool).await.unwrap();
            }
        })
        .await;
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM public.orgs").fetch_one(&pool).await.unwrap();
    assert_eq!(n as usize, orgs);
    println!("{orgs} orgs cloned in {:?}", started.elapsed());

    // Starts with nothing to migrate.
    let mut starts = Vec::new();
    for _ in 0..5 {
        let started = Instant::now();
        let server = ServerProcess::start(bin, &[], &env);
        while !http.get(format!("{}/healthz", server.base)).send().await.is_ok_and(|r| r.status().is_success()) {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        starts.push(started.elapsed());
        let log = server.log();
        assert!(log.contains("migrations checked") && !log.contains("migrated org schema"), "{log}");
        assert!(server.stop().success());
    }
    starts.sort();
    println!("start with {orgs} orgs, nothing to migrate (spawn to /healthz, 5 runs): median {:?}  max {:?}", starts[2], starts[4]);

    let server = ServerProcess::start(bin, &[], &env);
    let base = server.base.clone();
    tokio::time::sleep(Duration::from_secs(1)).await;
    println!("RSS, all {orgs} orgs idle: {:.1} MiB", rss_kib(server.child.id()) as f64 / 1024.0);
    let (s, p) = idle_cpu(&server, Duration::from_secs(30)).await;
    println!("CPU over 30 s, all idle: server {s:.1} %, PostgreSQL {p:.1} % of a core");

    // 100 orgs in use: an agent, a board stream and tasks each.
    let mut agents = Vec::new();
    let mut streams = Vec::new();
    for i in 1..=ACTIVE {
        let slug = format!("b{i:05}");
        let r = http.post(format!("{base}/api/v1/orgs/{slug}/agent-tokens")).bearer_auth(&token).json(&json!({"name": "bench"})).send().await.unwrap();
        assert_eq!(r.status(), 201);
        let agent_token = r.json::<serde_json::Value>().await.unwrap()["token"].as_str().unwrap().to_owned();
        let mut req = format!("{}/api/v1/agent/ws", base.replace("http://", "ws://")).into_client_request().unwrap();
        req.headers_mut().insert(http::header::AUTHORIZATION, format!("Bearer {agent_token}").parse().unwrap());
        let (mut ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();
        let hello = AgentMessage::Hello {
            protocol: PROTOCOL,
            name: format!("bench-{i}"),
            version: "0.0.0".into(),
            labels: vec![],
            capabilities: vec![],
            missing: Default::default(),
            agent_id: None,
            job: None,
            disk_bytes: None,
        };
        ws.send(Message::Text(serde_json::to_string(&hello).unwrap().into())).await.unwrap();
        match ws.next().await {
            Some(Ok(Message::Text(t))) => assert!(matches!(serde_json::from_str(&t).unwrap(), ServerMessage::Welcome { .. })),
            other => panic!("no welcome: {other:?}"),
        }
        agents.push(ws);
        let stream = http.get(format!("{base}/api/v1/orgs/{slug}/events")).bearer_auth(&token).send().await.unwrap();
        assert!(stream.status().is_success());
        streams.push(stream);
        for t in 0..5 {
            let r = http.post(format!("{base}/api/v1/orgs/{slug}/projects/KOD/tasks")).bearer_auth(&token).json(&json!({"title": format!("task {t}")})).send().await.unwrap();
            assert_eq!(r.status(), 201);
        }
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    println!("RSS, {ACTIVE} of {orgs} orgs in use (an idle agent, a board stream, 5 tasks each): {:.1} MiB", rss_kib(server.child.id()) as f64 / 1024.0);
    let (s, p) = idle_cpu(&server, Duration::from_secs(30)).await;
    println!("CPU over 30 s, {ACTIVE} agents waiting: server {s:.1} %, PostgreSQL {p:.1} % of a core");

    drop(agents);
    drop(streams);
    tokio::time::sleep(Duration::from_secs(5)).await;
    println!("RSS after the {ACTIVE} agents and streams left: {:.1} MiB", rss_kib(server.child.id()) as f64 / 1024.0);
    assert!(server.stop().success());
}
