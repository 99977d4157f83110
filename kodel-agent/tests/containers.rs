//! Jobs in containers, end to end: a real `kodel-server`, a real `kodel-agent` with
//! `--runtime docker`, the scripted LLM, and a private Docker Engine (Debian's
//! docker.io, started per test on its own socket with no bridge). Base images are made
//! here from Debian's static busybox: no registry is reachable.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::time::Duration;

use common::{CALC, Stack, bare_repo, show};
use kodel_testkit::docker::Dockerd;
use kodel_testkit::scripted_llm::{Reply, ScriptedLlm};
use serde_json::{Value, json};

const IMAGE: &str = "kodel-test/busybox:1";

fn bash(command: &str) -> Reply {
    Reply::ToolCalls(vec![("bash".into(), json!({"command": command}))])
}

/// The uid the agent's commands run as: `nobody` when the test runs as root.
fn agent_uid() -> u32 {
    if nix::unistd::geteuid().is_root() {
        nix::unistd::User::from_name(kodel_testkit::AGENT_TEST_USER).unwrap().unwrap().uid.as_raw()
    } else {
        nix::unistd::geteuid().as_raw()
    }
}

/// The output of the job's steps of this tool, in order.
fn outputs(stack: &Stack, tool: &str) -> Vec<(String, String)> {
    stack
        .events_of("job.step")
        .iter()
        .filter(|s| s["step"]["tool"] == tool)
        .map(|s| (s["step"]["input"]["command"].as_str().unwrap_or_default().to_owned(), s["step"]["output"].as_str().unwrap_or_default().to_owned()))
        .collect()
}


async fn template(stack: &Stack, project: &str, body: Value) {
    let name = body["name"].clone();
    stack.call("POST", "/api/v1/orgs/acme/instance-templates", body).await;
    stack.call("PATCH", &format!("/api/v1/orgs/acme/projects/{project}"), json!({"instance_template": name})).await;
}

fn docker_agent(stack: &mut Stack, docker: &Dockerd, name: &str, flags: &[&str]) {
    let log = stack.work.path().parent().unwrap().join(format!("{name}-{}.log", std::process::id()));
    let host = docker.host();
    let mut all = vec!["--runtime", "docker", "--docker-host", &host, "--allow-file-remotes"];
    all.extend(flags);
    stack.agent_with(name, &all, Some(&log));
}

/// The org's agents once one is online.
async fn online_agent(stack: &Stack) -> Value {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let agents = stack.call("GET", "/api/v1/orgs/acme/agents", Value::Null).await;
        if let Some(a) = agents["data"].as_array().unwrap().iter().find(|a| a["status"] != "offline") {
            return a.clone();
        }
        assert!(std::time::Instant::now() < deadline, "no agent came online: {agents}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_runs_in_its_own_container_and_the_second_reuses_the_image() {
    let docker = Dockerd::start();
    docker.busybox_image(IMAGE, &[("/etc/kodel-image", "made for the container test\n")]);
    let health_port = common::free_port();
    let listener = std::net::TcpListener::bind(("127.0.0.1", health_port)).unwrap();
    let llm = ScriptedLlm::start(vec![
        bash("cat /etc/kodel-image /etc/kodel-setup; id -u; ls /usr/bin/apt-get || echo no apt here; touch /etc/x; echo scratch > /tmp/t && cat /tmp/t; grep -E 'CapEff|NoNewPrivs' /proc/self/status"),
        Reply::ToolCalls(vec![("edit_file".into(), json!({"path": "calc.py", "old_string": "return a - b", "new_string": "return a + b"}))]),
        bash(&format!("grep -n 'a + b' calc.py; nc -w 3 127.0.0.1 {health_port} </dev/null; echo nc exit $?")),
        bash("sleep 300 & echo left running"),
        bash("ps -o pid,user,args | grep -c '[s]leep 300' || true; echo written > made-in-container.txt"),
        Reply::Text("Fixed add() in the container.".into()),
        // The second job, on the cached image.
        bash("cat /etc/kodel-setup > setup-seen.txt"),
        Reply::Text("Looked.".into()),
    ])
    .await;
    let mut stack = Stack::start(&llm, "openai").await;
    let repos = tempfile::tempdir().unwrap();
    let bare = bare_repo(repos.path(), "calc");
    kodel_testkit::agent_may_use(&bare);
    stack.call("POST", "/api/v1/orgs/acme/modules", json!({"project": "KOD", "name": "calc", "url": format!("file://{}", bare.display())})).await;
    template(&stack, "KOD", json!({"name": "box", "base_image": IMAGE, "setup_script": "echo set up in the image > /etc/kodel-setup", "memory_mb": 256, "max_processes": 64})).await;
    docker_agent(&mut stack, &docker, "boxer", &[]);

    let key = stack.task_in_progress("Fix add in a container").await;
    let done = stack.wait_event("job.succeeded", Duration::from_secs(120)).await;
    assert_eq!(done["summary"], "Fixed add() in the container.");
    // The image was built from the template: its setup script is a step with its output.
    let images = outputs(&stack, "image");
    assert_eq!(images.len(), 1, "{images:?}");
    assert!(images[0].0.starts_with("build image kodel-job:") && images[0].0.ends_with(IMAGE), "{images:?}");
    assert!(images[0].1.contains("[kodel] running the setup script"), "{images:?}");
    let bash_out: Vec<String> = outputs(&stack, "bash").into_iter().map(|(_, out)| out).collect();
    // The image's files, not the host's; the agent's own user; a read-only root and a
    // private /tmp.
    assert!(bash_out[0].contains("made for the container test") && bash_out[0].contains("set up in the image"), "{}", bash_out[0]);
    assert!(bash_out[0].contains(&format!("\n{}\n", agent_uid())), "{}", bash_out[0]);
    assert!(Path::new("/usr/bin/apt-get").exists() && bash_out[0].contains("no apt here"), "{}", bash_out[0]);
    assert!(bash_out[0].contains("Read-only file system") && bash_out[0].contains("scratch"), "{}", bash_out[0]);
    // No capabilities, and none to gain.
    assert!(bash_out[0].contains("CapEff:\t0000000000000000") && bash_out[0].contains("NoNewPrivs:\t1"), "{}", bash_out[0]);
    // The file tools and the container's commands see the same files.
    assert!(bash_out[1].contains("2:    return a + b"), "{}", bash_out[1]);
    // No network: the host's port (open, on the host's loopback) cannot be reached.
    assert!(bash_out[1].contains("can't connect") && bash_out[1].contains("nc exit 1"), "{}", bash_out[1]);
    // What a command leaves running is gone when it ends.
    assert!(bash_out[3].starts_with("0\n"), "{}", bash_out[3]);
    drop(listener);
    // The change made in the container is committed and pushed from the workspace.
    let branch = format!("kodel/{key}-fix-add-in-a-container");
    assert_eq!(show(&bare, &format!("{branch}:calc.py")).unwrap(), CALC.replace("a - b", "a + b"));
    assert_eq!(show(&bare, &format!("{branch}:made-in-container.txt")).unwrap(), "written\n");
    assert!(docker.containers().is_empty(), "the container goes with the job: {:?}", docker.containers());

    // The agent says what it can run; the server shows it.
    let agents = stack.call("GET", "/api/v1/orgs/acme/agents", Value::Null).await;
    let agent = &agents["data"][0];
    assert_eq!(agent["capabilities"], json!(["container"]), "{agent}");
    assert!(agent["missing"]["dind"].as_str().unwrap().contains("--dind-image"), "{agent}");
    let out = stack.kodel().args(["instance-template", "show", "box"]).output().unwrap();
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(shown.contains(&format!("runs in {IMAGE} (container)")) && shown.contains("Agents that can run its jobs: boxer (online)"), "{shown}");

    // A second job: the image is reused, not built again.
    let before = stack.events_of("job.step").len();
    let second = stack.task_in_progress("Look again").await;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while stack.events_of("job.succeeded").len() < 2 {
        assert!(std::time::Instant::now() < deadline, "the second job did not succeed: {:?}", stack.events_of("job.failed"));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_ne!(second, key);
    let steps = stack.events_of("job.step");
    let cached: Vec<&Value> = steps[before..].iter().filter(|s| s["step"]["tool"] == "image").collect();
    assert_eq!(cached.len(), 1, "{cached:?}");
    assert!(cached[0]["step"]["input"]["command"].as_str().unwrap().ends_with("(cached)"), "{}", cached[0]);
    let kodel_images: Vec<String> = docker.images().into_iter().filter(|i| i.starts_with("kodel-job:")).collect();
    assert_eq!(kodel_images.len(), 1, "{kodel_images:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_setup_and_missing_image_failures_say_what_to_fix() {
    let docker = Dockerd::start();
    docker.busybox_image(IMAGE, &[]);
    let llm = ScriptedLlm::start(vec![bash("echo filling memory; x=a; while true; do x=\"$x$x\"; done"), Reply::Text("unreachable".into())]).await;
    let mut stack = Stack::start(&llm, "openai").await;
    for (key, name) in [("MEM", "Small box"), ("SETUP", "Broken setup"), ("GONE", "Missing image")] {
        stack.call("POST", "/api/v1/orgs/acme/projects", json!({"key": key, "name": name, "workflow": "software-development"})).await;
    }
    template(&stack, "MEM", json!({"name": "small", "base_image": IMAGE, "memory_mb": 32})).await;
    template(&stack, "SETUP", json!({"name": "broken", "base_image": IMAGE, "setup_script": "echo preparing the toolchain\nexit 3"})).await;
    template(&stack, "GONE", json!({"name": "gone", "base_image": "kodel-test/not-made-here:7"})).await;
    docker_agent(&mut stack, &docker, "boxer", &["--keep-failed-containers"]);

    async fn failed_job(stack: &Stack, project: &str, n: usize) -> String {
        let t = stack.call("POST", &format!("/api/v1/orgs/acme/projects/{project}/tasks"), json!({"title": "Anything"})).await;
        let key = t["key"].as_str().unwrap().to_owned();
        stack.follow(&key).await;
        for status in ["Ready", "In Progress"] {
            stack.call("POST", &format!("/api/v1/orgs/acme/tasks/{key}/move"), json!({"status": status})).await;
        }
        let failed = stack.wait_events("job.failed", n, Duration::from_secs(90)).await;
        let job = stack.job(&key).await;
        assert_eq!(job["status"], "failed", "not retried: {job}");
        failed[n - 1]["error"].as_str().unwrap().to_owned()
    }

    let err = failed_job(&stack, "MEM", 1).await;
    assert!(err.contains("ran out of memory") && err.contains("32 MiB") && err.contains("\"small\""), "{err}");
    let bash_out = outputs(&stack, "bash");
    assert!(bash_out[0].1.contains("filling memory") && bash_out[0].1.contains("memory limit of 32 MiB"), "{bash_out:?}");

    let err = failed_job(&stack, "SETUP", 2).await;
    assert!(err.contains("the setup script failed") && err.contains("preparing the toolchain") && err.contains("\"broken\""), "{err}");
    let image = outputs(&stack, "image");
    assert!(image.iter().any(|(_, out)| out.contains("preparing the toolchain")), "the build's log is part of the job's story: {image:?}");

    let err = failed_job(&stack, "GONE", 3).await;
    assert!(err.contains("kodel-test/not-made-here:7 is not on this agent's Docker Engine") && err.contains("docker pull"), "{err}");

    assert_eq!(llm.requests().len(), 1, "only the memory job reached the model");
    // Asked to, the agent keeps the failed job's container, stopped (the other two
    // failed before theirs was made).
    let kept = docker.containers();
    assert!(kept.len() == 1 && kept[0].starts_with("kodel-MEM-1-implement-"), "{kept:?}");
    let state = docker.docker(&["inspect", "--format", "{{.State.Running}}", &kept[0]]);
    assert_eq!(String::from_utf8_lossy(&state.stdout).trim(), "false");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_in_docker_gets_a_daemon_of_its_own_or_is_refused_saying_why() {
    const DIND: &str = "kodel-test/dind:1";
    let docker = Dockerd::start();
    docker.dind_image(DIND);
    let host_daemon = String::from_utf8(docker.docker(&["info", "--format", "{{.ID}}"]).stdout).unwrap().trim().to_owned();
    let privileged = docker.privileged_works(DIND);
    let llm = ScriptedLlm::start(vec![bash("docker info --format 'daemon {{.ID}}'; docker version --format 'server {{.Server.Version}}'"), Reply::Text("Used my own daemon.".into())]).await;
    let mut stack = Stack::start(&llm, "openai").await;
    template(&stack, "KOD", json!({"name": "dind", "base_image": DIND, "dind": true})).await;
    docker_agent(&mut stack, &docker, "boxer", &["--dind-image", DIND]);
    let agent = online_agent(&stack).await;
    if privileged {
        assert_eq!(agent["capabilities"], json!(["container", "dind"]), "{agent}");
        stack.task_in_progress("Build an image").await;
        let done = stack.wait_event("job.succeeded", Duration::from_secs(120)).await;
        assert_eq!(done["summary"], "Used my own daemon.");
        let out = &outputs(&stack, "bash")[0].1;
        assert!(out.contains("daemon ") && out.contains("server ") && !out.contains(&host_daemon), "the job's own daemon, not the host's: {out}");
        assert!(docker.containers().is_empty(), "the daemon goes with the job: {:?}", docker.containers());
    } else {
        // This machine withholds a capability from root (or the Engine is rootless):
        // the agent says it cannot, and no dind job is given to it.
        assert_eq!(agent["capabilities"], json!(["container"]), "{agent}");
        let why = agent["missing"]["dind"].as_str().unwrap();
        assert!(why.contains("cannot run privileged containers"), "{why}");
        let out = stack.kodel().args(["instance-template", "show", "dind"]).output().unwrap();
        let shown = String::from_utf8_lossy(&out.stdout);
        assert!(shown.contains("No agent can run its jobs now") && shown.contains("boxer (online)") && shown.contains("cannot run privileged containers"), "{shown}");
        let key = stack.task_in_progress("Build an image").await;
        // The dispatcher gives a job to an idle agent that can run it within
        // milliseconds (hub tests); a second later this one is still waiting.
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(stack.job(&key).await["status"], "pending");
        assert!(llm.requests().is_empty());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_killed_mid_job_has_its_container_removed_when_it_starts_again() {
    let docker = Dockerd::start();
    docker.busybox_image(IMAGE, &[]);
    let llm = ScriptedLlm::start(vec![bash("echo working; sleep 120"), bash("echo working again; sleep 120")]).await;
    let mut stack = Stack::start(&llm, "openai").await;
    template(&stack, "KOD", json!({"name": "box", "base_image": IMAGE})).await;
    docker_agent(&mut stack, &docker, "boxer", &[]);
    stack.task_in_progress("Take long").await;
    // The model's command runs (its output is live) in the job's container.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !stack.events_of("job.output").iter().any(|o| o["text"].as_str().is_some_and(|t| t.contains("working"))) {
        assert!(std::time::Instant::now() < deadline, "the command did not start: {:?}", stack.events_of("job.failed"));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let first = docker.containers();
    assert!(first.len() == 1 && first[0].starts_with("kodel-KOD-1-implement-") && first[0].ends_with("-1"), "the first attempt's container: {first:?}");
    stack.agents[0].kill().unwrap();
    stack.agents[0].wait().unwrap();
    assert_eq!(docker.containers(), first, "a killed agent cannot clear up");
    // The same work dir: the new agent removes what the killed one left running.
    docker_agent(&mut stack, &docker, "boxer", &[]);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while docker.containers().contains(&first[0]) {
        assert!(std::time::Instant::now() < deadline, "the leftover container is still there: {:?}", docker.containers());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
