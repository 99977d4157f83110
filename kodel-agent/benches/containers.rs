//! Jobs in containers against jobs under bubblewrap:
//! `cargo bench -p kodel-agent --bench containers` (as root: it starts a private
//! dockerd, as the tests do; Debian's docker.io and busybox-static must be installed).
//!
//! 1. Start of a job: the real server, the real agent and the scripted LLM; each job's
//!    model calls `bash true` at once. Measured per job, from the server's claim
//!    (`started_at`) to the first tool call's start (its step's time less its
//!    duration), for a project without a base image (bubblewrap) and one with a busybox
//!    base image whose job image is cached (one job builds it first, not counted).
//! 2. One bash call (`true`), through the bash tool, in a running job container and
//!    under bubblewrap, in the same process.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use common::Stack;
use kodel_agent::container::{Engine, JobMounts, Runtime};
use kodel_agent::sandbox::{Sandbox, SandboxMode};
use kodel_agent::tools::{Workspace, bash};
use kodel_testkit::docker::Dockerd;
use kodel_testkit::scripted_llm::{Reply, ScriptedLlm};
use serde_json::{Value, json};

const IMAGE: &str = "kodel-bench/busybox:1";
const JOBS: usize = 15;
const CALLS: usize = 200;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn p90(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[(v.len() * 9 / 10).min(v.len() - 1)]
}

/// Milliseconds from the job's claim to its first tool call's start.
async fn start_delay(stack: &Stack, key: &str) -> f64 {
    let job = stack.job(key).await;
    let started: DateTime<Utc> = job["started_at"].as_str().unwrap().parse().unwrap();
    let steps = stack.call("GET", &format!("/api/v1/orgs/acme/jobs/{}/steps", job["id"].as_str().unwrap()), Value::Null).await;
    let first = steps["data"].as_array().unwrap().iter().find(|s| s["step"]["tool"] == "bash" && !s["step"]["call_id"].as_str().unwrap().starts_with("kodel-")).expect("a bash call");
    let at: DateTime<Utc> = first["created_at"].as_str().unwrap().parse().unwrap();
    let took = first["step"]["duration_ms"].as_f64().unwrap();
    (at - started).num_microseconds().unwrap() as f64 / 1000.0 - took
}

async fn run_jobs(stack: &Stack, project: &str, n: usize, done_before: usize) -> Vec<f64> {
    let mut delays = Vec::new();
    for i in 0..n {
        let t = stack.call("POST", &format!("/api/v1/orgs/acme/projects/{project}/tasks"), json!({"title": format!("bench {i}")})).await;
        let key = t["key"].as_str().unwrap().to_owned();
        stack.follow(&key).await;
        for status in ["Ready", "In Progress"] {
            stack.call("POST", &format!("/api/v1/orgs/acme/tasks/{key}/move"), json!({"status": status})).await;
        }
        stack.wait_events("job.succeeded", done_before + i + 1, Duration::from_secs(60)).await;
        delays.push(start_delay(stack, &key).await);
    }
    delays
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let docker = Dockerd::start();
    docker.busybox_image(IMAGE, &[]);

    // 1. Job start, end to end.
    let mut script = Vec::new();
    for _ in 0..(2 * JOBS + 1) {
        script.push(Reply::ToolCalls(vec![("bash".into(), json!({"command": "true"}))]));
        script.push(Reply::Text("done".into()));
    }
    let llm = ScriptedLlm::start(script).await;
    let mut stack = Stack::start(&llm, "openai").await;
    for key in ["BW", "CT"] {
        stack.call("POST", "/api/v1/orgs/acme/projects", json!({"key": key, "name": key, "workflow": "software-development"})).await;
    }
    stack.call("POST", "/api/v1/orgs/acme/instance-templates", json!({"name": "box", "base_image": IMAGE, "setup_script": "echo built > /etc/built"})).await;
    stack.call("PATCH", "/api/v1/orgs/acme/projects/CT", json!({"instance_template": "box"})).await;
    let host = docker.host();
    stack.agent_with("bench", &["--runtime", "docker", "--docker-host", &host], None);
    let built = run_jobs(&stack, "CT", 1, 0).await;
    let bwrap = run_jobs(&stack, "BW", JOBS, 1).await;
    let container = run_jobs(&stack, "CT", JOBS, 1 + JOBS).await;
    println!("claim -> first tool call, ms ({JOBS} jobs each):");
    println!("  bubblewrap:              p50 {:7.1}  p90 {:7.1}", median(bwrap.clone()), p90(bwrap.clone()));
    println!("  container, cached image: p50 {:7.1}  p90 {:7.1}", median(container.clone()), p90(container.clone()));
    println!("  container, image built (first job): {:.1}", built[0]);
    println!("  container adds (p50): {:.1} ms", median(container) - median(bwrap));
    drop(stack);

    // 2. One bash call.
    let dir = tempfile::tempdir().unwrap();
    let user = nix::unistd::User::from_name(kodel_testkit::AGENT_TEST_USER).unwrap().unwrap();
    nix::unistd::chown(dir.path(), Some(user.uid), Some(user.gid)).unwrap();
    let detected = Engine::detect(Runtime::Docker, kodel_agent::container::socket_path(Some(&host)), None, false).await.unwrap();
    let engine = detected.engine.unwrap();
    let template: kodel_core::infra::InstanceTemplate = serde_json::from_value(json!({
        "id": "00000000-0000-0000-0000-000000000001", "name": "box", "base_image": IMAGE, "packages": [], "setup_script": "",
        "env": {}, "network": false, "cpu_limit": null, "memory_mb": null, "dind": false,
        "created_at": "2026-01-01T00:00:00Z", "updated_at": "2026-01-01T00:00:00Z"
    }))
    .unwrap();
    let root = dir.path().canonicalize().unwrap();
    let mounts = JobMounts { name: "bench-bash", root: &root, read_only: &[], user: format!("{}:{}", user.uid, user.gid) };
    let container = std::sync::Arc::new(engine.start(IMAGE, &mounts, &template).await.map_err(|e| e.0).unwrap());
    let in_container = Workspace::new(&root, Sandbox::off()).unwrap().with_container(Some(container.clone()));
    let sandbox = Sandbox::detect(SandboxMode::Required);
    sandbox.ready().unwrap();
    let in_bwrap = Workspace::new(&root, sandbox).unwrap();
    let mut times = [Vec::new(), Vec::new()];
    for _ in 0..CALLS {
        for (i, ws) in [&in_bwrap, &in_container].into_iter().enumerate() {
            let t = Instant::now();
            let out = bash::execute(ws, "true", Duration::from_secs(30), None).await.unwrap();
            assert!(!out.error, "{}", out.output);
            times[i].push(t.elapsed().as_secs_f64() * 1000.0);
        }
    }
    container.end(true).await;
    println!("bash `true`, ms ({CALLS} calls each, alternating):");
    println!("  bubblewrap: p50 {:6.1}  p90 {:6.1}", median(times[0].clone()), p90(times[0].clone()));
    println!("  container:  p50 {:6.1}  p90 {:6.1}", median(times[1].clone()), p90(times[1].clone()));
}
