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
    /// `balance` (roundrobin, or first: every connection to the first replica that is
    /// up) over `backends`, with the timeouts an SSE stream or a WebSocket needs. A
    /// replica that refuses connections is marked down and its requests go elsewhere.
    fn start(listen: &str, backends: &[&str], dir: &std::path::Path, balance: &str) -> Haproxy {
        let mut cfg = format!(
            "global\n  maxconn 2000\ndefaults\n  mode http\n  timeout connect 2s\n  timeout client 1h\n  timeout server 1h\n  timeout tunnel 1h\n\
             \x20 retries 3\n  option redispatch 1\n  default-server check inter 200ms fall 1 rise 2\n\
             frontend kodel\n  bind {listen}\n  default_backend replicas\nbackend replicas\n  balance {balance}\n"
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

/// A stack (replica A, its agent token, org and project) whose scripted model gives
/// `replies`, and replicas B and C on the same database and key; `lease` in seconds.
async fn three_replicas(replies: Vec<Reply>, lease: &str) -> (ScriptedLlm, Stack, [(ServerProcess, String); 2]) {
    let llm = ScriptedLlm::start(replies).await;
    let stack = Stack::start_with(&[
        ("OPENAI_BASE_URL", llm.openai_base()),
        ("OPENAI_API_KEY", "sk-test-secret".into()),
        ("KODEL_DEFAULT_MODEL", "openai/gpt-test".into()),
        ("KODEL_ENCRYPTION_KEY", KEY.into()),
        ("KODEL_JOB_LEASE", lease.into()),
    ])
    .await;
    let env: Vec<(&str, &str)> = stack.env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let replica = || {
        let listen = format!("127.0.0.1:{}", free_port());
        (ServerProcess::start_on(&server_binary(), &listen, &[], &env), listen)
    };
    let others = [replica(), replica()];
    (llm, stack, others)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_its_live_output_and_its_cancel_cross_replicas_at_once() {
    // A long lease: heartbeats every 10 s, so nothing here can be the heartbeats' work.
    let replies = vec![Reply::TextAndTools("Looking at it from replica A.".into(), vec![("bash".into(), json!({"command": "echo tool-output-marker; sleep 60"}))])];
    let (_llm, mut stack, [(_b, b_listen), (_c, c_listen)]) = three_replicas(replies, "30").await;
    let a = stack.base();
    let (b, c) = (format!("http://{b_listen}"), format!("http://{c_listen}"));
    let lb_listen = format!("127.0.0.1:{}", free_port());
    let a_listen = stack.listen.clone();
    let lb_dir = tempfile::tempdir().unwrap();
    let _lb = Haproxy::start(&lb_listen, &[&a_listen, &b_listen, &c_listen], lb_dir.path(), "roundrobin");
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
        "DROP TRIGGER automation_rules_count_timed ON org_acme.automation_rules",
        "DROP TRIGGER webhook_deliveries_count_pending ON org_acme.webhook_deliveries",
        "DELETE FROM public.sweep_work WHERE schema_name = 'org_acme'",
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
    let counted: i64 = sqlx::query_scalar("SELECT count(*) FROM public.sweep_work WHERE schema_name = 'org_acme'").fetch_one(&pool).await.unwrap();
    assert_eq!(counted, 2, "the migration counted the org's timed rules and pending webhook calls once");
    // Every replica serves the org.
    for r in &replicas {
        let agents = kodel_testkit::api(&reqwest::Client::new(), &r.base, &token, "GET", "/api/v1/orgs/acme/agents", Value::Null).await;
        assert_eq!(agents["data"], json!([]), "{agents}");
    }
}

/// What a stream showed: each event's id (None for live ones), type and the event.
type Seen = std::sync::Arc<std::sync::Mutex<Vec<(Option<i64>, String, Value)>>>;

/// Follows an SSE stream through `base` the way a browser's EventSource does: when the
/// stream ends, it opens it again with `Last-Event-ID` (the last id it saw), until
/// `stop`. Gives what it saw and how many times it resumed.
fn follow_resuming(base: String, token: String, path: String, after: Option<i64>, stop: std::sync::Arc<std::sync::atomic::AtomicBool>) -> (Seen, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use std::sync::atomic::Ordering;
    let seen: Seen = std::sync::Arc::default();
    let resumed = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let (sink, count) = (seen.clone(), resumed.clone());
    tokio::spawn(async move {
        let http = reqwest::Client::new();
        let mut last = after;
        let deadline = Instant::now() + Duration::from_secs(120);
        let mut first = true;
        while !stop.load(Ordering::SeqCst) && Instant::now() < deadline {
            if !first {
                count.fetch_add(1, Ordering::SeqCst);
            }
            first = false;
            let mut req = http.get(format!("{base}{path}")).bearer_auth(&token);
            if let Some(id) = last {
                req = req.header("Last-Event-ID", id.to_string());
            }
            let resp = match req.send().await {
                Ok(r) if r.status().is_success() => r,
                _ => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            common::read_sse_events(resp, |id, kind, event| {
                if id.is_some() {
                    last = id;
                }
                sink.lock().unwrap().push((id, kind, event));
            })
            .await;
        }
    });
    (seen, resumed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_killed_mid_job_and_mid_stream_loses_and_repeats_nothing() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    // A lease long enough that the job is still the agent's when it comes back.
    let replies = vec![
        Reply::TextAndTools("Running the long command.".into(), vec![("bash".into(), json!({"command": "echo before-kill; sleep 3; echo after-kill"}))]),
        Reply::Text("Done after the replica went away.".into()),
    ];
    let (llm, mut stack, [(_b, b_listen), (_c, c_listen)]) = three_replicas(replies, "15").await;
    let c = format!("http://{c_listen}");
    // Every connection goes to A while it is up, then to B: A carries all the load.
    let lb_listen = format!("127.0.0.1:{}", free_port());
    let lb_dir = tempfile::tempdir().unwrap();
    let _lb = Haproxy::start(&lb_listen, &[&stack.listen.clone(), &b_listen, &c_listen], lb_dir.path(), "first");
    let lb = format!("http://{lb_listen}");
    let http = reqwest::Client::new();
    let token = stack.token.clone();

    let agent_log = stack.work.path().parent().unwrap().join(format!("replica-killed-agent-{}.log", std::process::id()));
    stack.agent_at(&lb, "through-lb", &[], Some(&agent_log));
    let deadline = Instant::now() + Duration::from_secs(30);
    while stack.call("GET", "/api/v1/orgs/acme/agents", Value::Null).await["data"].as_array().unwrap().iter().all(|a| a["status"] != "online") {
        assert!(Instant::now() < deadline, "the agent did not connect: {}", std::fs::read_to_string(&agent_log).unwrap_or_default());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // The task whose job will be running when A dies, followed through the balancer
    // from its first event on; and the whole board, followed the same way.
    let t = kodel_testkit::api(&http, &lb, &token, "POST", "/api/v1/orgs/acme/projects/KOD/tasks", json!({"title": "Survives a replica"})).await;
    let key = t["key"].as_str().unwrap().to_owned();
    let history = |key: String| {
        let (http, lb, token) = (http.clone(), c.clone(), token.clone());
        async move { kodel_testkit::api(&http, &lb, &token, "GET", &format!("/api/v1/orgs/acme/tasks/{key}/history"), Value::Null).await["data"].as_array().unwrap().clone() }
    };
    let created_id = history(key.clone()).await[0]["id"].as_i64().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let (on_task, task_resumed) = follow_resuming(lb.clone(), token.clone(), format!("/api/v1/orgs/acme/tasks/{key}/events"), Some(created_id), stop.clone());
    let (on_board, board_resumed) = follow_resuming(lb.clone(), token.clone(), "/api/v1/orgs/acme/events".into(), Some(created_id), stop.clone());
    // Both streams run when a first event shows on the board's.
    let probe = kodel_testkit::api(&http, &lb, &token, "POST", "/api/v1/orgs/acme/projects/KOD/tasks", json!({"title": "probe"})).await;
    let probe_key = probe["key"].as_str().unwrap().to_owned();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !on_board.lock().unwrap().iter().any(|(_, k, v)| k == "task.created" && v["task"] == probe_key.as_str()) {
        assert!(Instant::now() < deadline, "the board stream showed nothing: {:?}", on_board.lock().unwrap());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    // Load: four clients creating tasks through the balancer without pause, keeping
    // the keys they were answered 201 with.
    let acknowledged: Arc<std::sync::Mutex<Vec<String>>> = Arc::new(std::sync::Mutex::new(vec![probe_key]));
    let load_stop = Arc::new(AtomicBool::new(false));
    let mut load = Vec::new();
    for n in 0..4 {
        let (http, lb, token, acknowledged, load_stop) = (http.clone(), lb.clone(), token.clone(), acknowledged.clone(), load_stop.clone());
        load.push(tokio::spawn(async move {
            let mut i = 0;
            while !load_stop.load(Ordering::SeqCst) {
                i += 1;
                let resp = http.post(format!("{lb}/api/v1/orgs/acme/projects/KOD/tasks")).bearer_auth(&token).json(&json!({"title": format!("load {n}-{i}")})).send().await;
                match resp {
                    Ok(r) if r.status() == reqwest::StatusCode::CREATED => {
                        let v: Value = r.json().await.unwrap();
                        acknowledged.lock().unwrap().push(v["key"].as_str().unwrap().to_owned());
                    }
                    // The replica died under this request, or the balancer has no
                    // replica for a moment: not acknowledged, so nothing is promised.
                    _ => tokio::time::sleep(Duration::from_millis(20)).await,
                }
            }
        }));
    }

    // A person follows the task with the CLI, through the balancer (so on A, too).
    let mut cli = stack.kodel().env("KODEL_SERVER", &lb).args(["task", "logs", &key, "-f", "--json"]).stdout(Stdio::piped()).stderr(Stdio::null()).spawn().unwrap();
    let cli_out = Arc::new(std::sync::Mutex::new(String::new()));
    {
        let (sink, mut stdout) = (cli_out.clone(), cli.stdout.take().unwrap());
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n @ 1..) = std::io::Read::read(&mut stdout, &mut buf) {
                sink.lock().unwrap().push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
    }
    stack.agents.push(cli); // stopped with the stack

    // The job starts; while its command runs, A is killed.
    for status in ["Ready", "In Progress"] {
        kodel_testkit::api(&http, &lb, &token, "POST", &format!("/api/v1/orgs/acme/tasks/{key}/move"), json!({"status": status})).await;
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while !on_task.lock().unwrap().iter().any(|(_, k, v)| k == "job.output" && v["payload"]["text"].as_str().is_some_and(|t| t.contains("before-kill"))) {
        assert!(Instant::now() < deadline, "the command did not start: {}", std::fs::read_to_string(&agent_log).unwrap_or_default());
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let before_kill = acknowledged.lock().unwrap().len();
    assert!(before_kill > 10, "the load is running: {before_kill} tasks made");
    let a = stack.server.as_mut().unwrap();
    a.child.kill().unwrap(); // SIGKILL
    a.child.wait().unwrap();

    // The agent goes on with its job through another replica; the job ends well.
    let deadline = Instant::now() + Duration::from_secs(60);
    let job = loop {
        let job = kodel_testkit::api(&http, &c, &token, "GET", &format!("/api/v1/orgs/acme/jobs?task={key}"), Value::Null).await["data"][0].clone();
        if job["status"] != "running" && job["status"] != "queued" {
            break job;
        }
        assert!(Instant::now() < deadline, "the job did not end: {job}\n{}", std::fs::read_to_string(&agent_log).unwrap_or_default());
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let agent_said = std::fs::read_to_string(&agent_log).unwrap_or_default();
    assert_eq!(job["status"], "succeeded", "{job}\n{agent_said}");
    assert_eq!(job["attempts"], 1, "the job was not started again: {job}");
    assert!(agent_said.contains("going on with the job"), "the agent resumed its job: {agent_said}");
    load_stop.store(true, Ordering::SeqCst);
    for l in load {
        l.await.unwrap();
    }

    // Steps: each once, in order, the command's whole output in its one step.
    let steps = kodel_testkit::api(&http, &c, &token, "GET", &format!("/api/v1/orgs/acme/jobs/{}/steps", job["id"].as_str().unwrap()), Value::Null).await["data"].as_array().unwrap().clone();
    let seqs: Vec<i64> = steps.iter().map(|s| s["seq"].as_i64().unwrap()).collect();
    assert_eq!(seqs, (0..seqs.len() as i64).collect::<Vec<_>>(), "{steps:?}");
    let bash: Vec<&Value> = steps.iter().filter(|s| s["step"]["tool"] == "bash").collect();
    assert_eq!(bash.len(), 1, "{steps:?}");
    assert!(bash[0]["step"]["output"].as_str().unwrap().contains("before-kill\nafter-kill"), "{:?}", bash[0]);
    assert_eq!(llm.requests().len(), 2, "no model call was made twice");

    // The task's stream: every stored event once, none missing, in the task's order,
    // though it moved from A to another replica mid-job.
    let stored = history(key.clone()).await;
    let want: Vec<i64> = stored.iter().map(|e| e["id"].as_i64().unwrap()).filter(|id| *id != created_id).collect();
    let deadline = Instant::now() + Duration::from_secs(10);
    let got = loop {
        let got: Vec<i64> = on_task.lock().unwrap().iter().filter_map(|(id, _, _)| *id).collect();
        if got.len() >= want.len() || Instant::now() > deadline {
            break got;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(got, want, "the task stream's stored events against the task's history");
    assert!(task_resumed.load(Ordering::SeqCst) >= 1, "the task stream was cut when A died and resumed elsewhere");
    // The CLI printed each of the task's events once, in order.
    let want_seqs: Vec<i64> = stored.iter().map(|e| e["seq"].as_i64().unwrap()).collect();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let printed: Vec<i64> = cli_out.lock().unwrap().lines().filter_map(|l| serde_json::from_str::<Value>(l).ok()).filter_map(|v| v["seq"].as_i64()).collect();
        if printed == want_seqs {
            break;
        }
        assert!(Instant::now() < deadline, "kodel task logs -f printed events {printed:?}, the task has {want_seqs:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Every creation answered 201 exists, and the board showed each once.
    let acknowledged = acknowledged.lock().unwrap().clone();
    let mut unique = acknowledged.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), acknowledged.len(), "no key was given twice");
    assert!(acknowledged.len() > before_kill, "creations went on after the kill: {} then {}", before_kill, acknowledged.len());
    for k in &acknowledged {
        let resp = http.get(format!("{c}/api/v1/orgs/acme/tasks/{k}")).bearer_auth(&token).send().await.unwrap();
        assert_eq!(resp.status(), reqwest::StatusCode::OK, "task {k} was answered 201 by a replica, then lost");
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let board = on_board.lock().unwrap().clone();
        let created: Vec<&str> = board.iter().filter(|(_, k, _)| k == "task.created").map(|(_, _, v)| v["task"].as_str().unwrap()).collect();
        let missing: Vec<&String> = acknowledged.iter().filter(|k| !created.contains(&k.as_str())).collect();
        if missing.is_empty() {
            let mut ids: Vec<i64> = board.iter().filter_map(|(id, _, _)| *id).collect();
            let n = ids.len();
            ids.sort();
            ids.dedup();
            assert_eq!(ids.len(), n, "the board stream repeated no event across the resume");
            break;
        }
        assert!(Instant::now() < deadline, "the board stream never showed {} acknowledged tasks: {:?}", missing.len(), &missing[..missing.len().min(5)]);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(board_resumed.load(Ordering::SeqCst) >= 1, "the board stream was cut when A died and resumed elsewhere");
    stop.store(true, Ordering::SeqCst);
    eprintln!("replica killed: {} tasks acknowledged ({} before the kill), 0 lost, 0 repeated; {} stored task events, 0 lost, 0 repeated", acknowledged.len(), before_kill, want.len());
}
