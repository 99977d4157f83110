//! Three `kodel-server` replicas on one PostgreSQL behind a real load balancer
//! (Debian's HAProxy, started here on loopback), the real agent and the scripted LLM:
//! what happens on one replica reaches the others at once.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{Stack, free_port, server_binary};
use kodel_testkit::ServerProcess;
use kodel_testkit::scripted_llm::{Reply, ScriptedLlm};
use serde_json::{Value, json};

/// One encryption key for every replica: the JWT secret is sealed with it in the
/// database they share.
const KEY: &str = "ICEiIyQlJicoKSorLC0uLzAxMjM0NTY3ODk6Ozw9Pj8=";

struct Haproxy(Child);

impl Haproxy {
    /// Round robin over `backends`; the timeouts an SSE stream or a WebSocket needs.
    fn start(listen: &str, backends: &[&str], dir: &std::path::Path) -> Haproxy {
        let mut cfg = format!(
            "global\n  maxconn 2000\ndefaults\n  mode http\n  timeout connect 2s\n  timeout client 1h\n  timeout server 1h\n  timeout tunnel 1h\n\
             frontend kodel\n  bind {listen}\n  default_backend replicas\nbackend replicas\n  balance roundrobin\n"
        );
        for (i, b) in backends.iter().enumerate() {
            cfg.push_str(&format!("  server r{i} {b}\n"));
        }
        let path = dir.join("haproxy.cfg");
        std::fs::write(&path, cfg).unwrap();
        let child = Command::new("haproxy").arg("-db").arg("-f").arg(&path).stdout(Stdio::null()).stderr(Stdio::null()).spawn().expect("haproxy: scripts/test.sh installs it");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(listen).is_err() {
            assert!(Instant::now() < deadline, "haproxy did not listen on {listen}");
            std::thread::sleep(Duration::from_millis(20));
        }
        Haproxy(child)
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Follows a task's SSE stream on one replica, keeping each event with when it came.
async fn follow(base: &str, token: &str, key: &str) -> std::sync::Arc<std::sync::Mutex<Vec<(String, Value, Instant)>>> {
    let resp = reqwest::Client::new().get(format!("{base}/api/v1/orgs/acme/tasks/{key}/events")).bearer_auth(token).send().await.unwrap();
    assert!(resp.status().is_success());
    let sink = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let out = sink.clone();
    common::read_sse(resp, move |kind, payload| out.lock().unwrap().push((kind, payload, Instant::now())));
    sink
}

async fn wait_for(seen: &std::sync::Mutex<Vec<(String, Value, Instant)>>, what: &str, within: Duration, found: impl Fn(&str, &Value) -> bool) -> Instant {
    let deadline = Instant::now() + within;
    loop {
        if let Some((_, _, at)) = seen.lock().unwrap().iter().find(|(k, v, _)| found(k, v)) {
            return *at;
        }
        if Instant::now() > deadline {
            let kinds: Vec<String> = seen.lock().unwrap().iter().map(|(k, _, _)| k.clone()).collect();
            panic!("no {what} within {within:?}; saw {kinds:?}");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_its_live_output_and_its_cancel_cross_replicas_at_once() {
    let llm = ScriptedLlm::start(vec![Reply::TextAndTools(
        "Looking at it from replica A.".into(),
        vec![("bash".into(), json!({"command": "echo tool-output-marker; sleep 60"}))],
    )])
    .await;
    // A long lease: heartbeats every 10 s, so nothing here can be the heartbeats' work.
    let mut stack = Stack::start_with(&[
        ("OPENAI_BASE_URL", llm.openai_base()),
        ("OPENAI_API_KEY", "sk-test-secret".into()),
        ("KODEL_DEFAULT_MODEL", "openai/gpt-test".into()),
        ("KODEL_ENCRYPTION_KEY", KEY.into()),
        ("KODEL_JOB_LEASE", "30".into()),
    ])
    .await;
    let env_owned = stack.env.clone();
    let env: Vec<(&str, &str)> = env_owned.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let a = stack.base();
    let (b_listen, c_listen) = (format!("127.0.0.1:{}", free_port()), format!("127.0.0.1:{}", free_port()));
    let _b = ServerProcess::start_on(&server_binary(), &b_listen, &[], &env);
    let _c = ServerProcess::start_on(&server_binary(), &c_listen, &[], &env);
    let (b, c) = (format!("http://{b_listen}"), format!("http://{c_listen}"));
    let lb_listen = format!("127.0.0.1:{}", free_port());
    let a_listen = stack.listen.clone();
    let lb_dir = tempfile::tempdir().unwrap();
    let _lb = Haproxy::start(&lb_listen, &[&a_listen, &b_listen, &c_listen], lb_dir.path());
    let lb = format!("http://{lb_listen}");
    let http = reqwest::Client::new();
    let token = stack.token.clone();
    let call = |base: String, method: &'static str, path: String, body: Value| {
        let (http, token) = (http.clone(), token.clone());
        async move { kodel_testkit::api(&http, &base, &token, method, &path, body).await }
    };

    // The agent is connected to replica A.
    let agent_log = stack.work.path().parent().unwrap().join(format!("replicas-agent-{}.log", std::process::id()));
    stack.agent_with("on-a", &[], Some(&agent_log));
    let deadline = Instant::now() + Duration::from_secs(30);
    while call(lb.clone(), "GET", "/api/v1/orgs/acme/agents".into(), Value::Null).await["data"].as_array().unwrap().iter().all(|a| a["status"] != "online") {
        assert!(Instant::now() < deadline, "the agent did not connect: {}\n{}", std::fs::read_to_string(&agent_log).unwrap_or_default(), call(lb.clone(), "GET", "/api/v1/orgs/acme/agents".into(), Value::Null).await);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Through the load balancer, then on B: the task is made and moved into In Progress.
    let t = call(lb.clone(), "POST", "/api/v1/orgs/acme/projects/KOD/tasks".into(), json!({"title": "Across replicas"})).await;
    let key = t["key"].as_str().unwrap().to_owned();
    // People watch through C.
    let on_c = follow(&c, &stack.token, &key).await;
    call(b.clone(), "POST", format!("/api/v1/orgs/acme/tasks/{key}/move"), json!({"status": "Ready"})).await;
    let moved = Instant::now();
    call(b.clone(), "POST", format!("/api/v1/orgs/acme/tasks/{key}/move"), json!({"status": "In Progress"})).await;

    // A's agent takes B's job at once: not at the dispatcher's 2 s poll.
    let started = wait_for(&on_c, "job.started", Duration::from_secs(10), |k, _| k == "job.started").await;
    assert!(started - moved < Duration::from_millis(700), "the job started {:?} after the move", started - moved);
    // C shows the agent's live output: the model's text and the tool's, as it comes
    // (the command is still running, so none of it is a stored step yet).
    wait_for(&on_c, "the model's live text", Duration::from_secs(10), |k, v| k == "job.output" && v["source"] == "model" && v["text"].as_str().unwrap().contains("replica A")).await;
    wait_for(&on_c, "the tool's live output", Duration::from_secs(10), |k, v| k == "job.output" && v["source"] == "tool" && v["text"].as_str().unwrap().contains("tool-output-marker")).await;
    assert!(on_c.lock().unwrap().iter().all(|(k, v, _)| k != "job.step" || v["step"]["tool"] != "bash"), "the command has not finished");

    // A cancel on C reaches the agent on A at once (heartbeats are 10 s apart).
    let job = call(c.clone(), "GET", format!("/api/v1/orgs/acme/jobs?task={key}"), Value::Null).await["data"][0].clone();
    let cancelled = Instant::now();
    call(c.clone(), "POST", format!("/api/v1/orgs/acme/jobs/{}/cancel", job["id"].as_str().unwrap()), json!({})).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let agents = call(a.clone(), "GET", "/api/v1/orgs/acme/agents".into(), Value::Null).await;
        if agents["data"][0]["status"] == "online" {
            break;
        }
        assert!(Instant::now() < deadline, "the agent was not told: {agents}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(cancelled.elapsed() < Duration::from_secs(2), "the agent stopped {:?} after the cancel", cancelled.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_started_together_after_an_upgrade_migrate_once_and_all_serve() {
    let db = kodel_testkit::fresh_database().await;
    let url = kodel_testkit::database_url(&db);
    let env = [("DATABASE_URL", url.as_str()), ("KODEL_ENCRYPTION_KEY", KEY), ("KODEL_SPARE_SCHEMAS", "0")];
    // One server makes the database and an org, then stops.
    let token = {
        let first = ServerProcess::start_on(&server_binary(), &format!("127.0.0.1:{}", free_port()), &[], &env);
        let base = first.base.clone();
        let token = kodel_testkit::register(&base, "ops@example.com").await;
        kodel_testkit::api(&reqwest::Client::new(), &base, &token, "POST", "/api/v1/orgs", json!({"slug": "acme", "name": "Acme"})).await;
        token
    };
    // The org as the previous version left it: the last tenant migration not applied.
    let pool = sqlx::PgPool::connect(&url).await.unwrap();
    let current: i32 = sqlx::query_scalar("SELECT schema_version FROM public.orgs WHERE slug = 'acme'").fetch_one(&pool).await.unwrap();
    for sql in [
        "ALTER TABLE org_acme.agents DROP COLUMN capabilities, DROP COLUMN missing",
        "ALTER TABLE org_acme.instance_templates ALTER COLUMN base_image SET NOT NULL",
        "DELETE FROM org_acme._kodel_migrations WHERE version = (SELECT max(version) FROM org_acme._kodel_migrations)",
        "UPDATE public.orgs SET schema_version = schema_version - 1 WHERE slug = 'acme'",
    ] {
        sqlx::query(sql).execute(&pool).await.unwrap();
    }
    // Three replicas of the new version start at once.
    let replicas: Vec<ServerProcess> = std::thread::scope(|s| {
        let started: Vec<_> = (0..3).map(|_| s.spawn(|| ServerProcess::start_on(&server_binary(), &format!("127.0.0.1:{}", free_port()), &[], &env))).collect();
        started.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let logs: Vec<String> = replicas.iter().map(|r| r.log()).collect();
    let migrated: Vec<&str> = logs.iter().flat_map(|l| l.lines()).filter(|l| l.contains("migrated org schema")).collect();
    assert!(migrated.len() == 1 && migrated[0].contains("applied=1"), "one replica applies the migration; the others wait for it: {migrated:?}");
    let (version, error): (i32, Option<String>) = sqlx::query_as("SELECT schema_version, migration_error FROM public.orgs WHERE slug = 'acme'").fetch_one(&pool).await.unwrap();
    assert_eq!((version, error), (current, None));
    // Every replica serves the org.
    for r in &replicas {
        let agents = kodel_testkit::api(&reqwest::Client::new(), &r.base, &token, "GET", "/api/v1/orgs/acme/agents", Value::Null).await;
        assert_eq!(agents["data"], json!([]), "{agents}");
    }
}
