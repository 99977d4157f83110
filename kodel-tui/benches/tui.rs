//! The TUI's costs, measured on the real binaries in tmux against a real server:
//! `kodel --version`; start to the first full board frame (50 tasks); RSS and CPU while
//! idle for 30 s; CPU and RSS while an agent streams 1,000 lines/s into the open task.
//! Run: cargo build --release --workspace && cargo bench -p kodel-tui --bench tui
//! (numbers in docs/benchmarks.md)
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use kodel_testkit::scripted_llm::{Reply, ScriptedLlm};
use kodel_testkit::tmux::Tmux;
use kodel_testkit::{ServerProcess, database_url, fresh_database, register, rss_kib, sibling_binary};
use serde_json::{Value, json};

fn sibling(name: &str) -> PathBuf {
    sibling_binary(env!("CARGO_BIN_EXE_kodel"), name)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

/// CPU time (user + system) of a process, in seconds.
fn cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat.rsplit(')').next().unwrap().split_whitespace().collect();
    let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
    ticks / nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK).unwrap().unwrap() as f64
}

fn rss_mib(pid: u32) -> f64 {
    rss_kib(pid) as f64 / 1024.0
}

#[tokio::main]
async fn main() {
    // The agent runs `python3` printing 1,000 lines a second for 20 s.
    let streamer = "python3 -c \"import time\nt=time.time()\nfor i in range(20000):\n    print('line', i, 'of the build output', flush=True)\n    time.sleep(max(0, t + (i + 1) / 1000 - time.time()))\"";
    let llm = ScriptedLlm::start(vec![Reply::ToolCalls(vec![("bash".into(), json!({"command": streamer, "timeout_secs": 120}))]), Reply::Text("done".into())]).await;
    let db = fresh_database().await;
    let url = database_url(&db);
    let (oa, ok, model) = (llm.openai_base(), "sk-bench".to_owned(), "openai/gpt-bench".to_owned());
    let server = ServerProcess::start(&sibling("kodel-server"), &[], &[("DATABASE_URL", url.as_str()), ("OPENAI_BASE_URL", &oa), ("OPENAI_API_KEY", &ok), ("KODEL_DEFAULT_MODEL", &model)]);
    let base = server.base.clone();
    let http = reqwest::Client::new();
    let call = |method: &str, path: &str, body: Value, token: Option<String>| {
        let mut req = http.request(method.parse().unwrap(), format!("{base}{path}")).json(&body);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        async move { req.send().await.unwrap().json::<Value>().await.unwrap() }
    };
    let token = register(&base, "b@x.io").await;
    let t = || Some(token.clone());
    call("POST", "/api/v1/orgs", json!({"slug": "bench", "name": "x"}), t()).await;
    call("POST", "/api/v1/orgs/bench/projects", json!({"key": "BEN", "name": "Bench", "workflow": "software-development"}), t()).await;
    for i in 0..50 {
        call("POST", "/api/v1/orgs/bench/projects/BEN/tasks", json!({"title": format!("Task number {i}"), "labels": ["bench"]}), t()).await;
    }
    let config = tempfile::tempdir().unwrap();
    let env = vec![
        ("KODEL_SERVER", base.clone()),
        ("KODEL_TOKEN", token.clone()),
        ("KODEL_ORG", "bench".to_owned()),
        ("KODEL_PROJECT", "BEN".to_owned()),
        ("KODEL_CONFIG_DIR", config.path().to_string_lossy().into_owned()),
        ("KODEL_NO_KEYRING", "1".to_owned()),
        ("TERM", "xterm-256color".to_owned()),
    ];
    let kodel = env!("CARGO_BIN_EXE_kodel");

    // kodel --version
    let mut v = Vec::new();
    for _ in 0..30 {
        let t0 = Instant::now();
        assert!(Command::new(kodel).arg("--version").stdout(Stdio::null()).status().unwrap().success());
        v.push(t0.elapsed().as_secs_f64() * 1000.0);
    }
    println!("kodel --version: median {:.1} ms (30 runs)", median(v));

    // Start to the first full board frame: the process's own measure, and the wall
    // time from the shell's exec to its exit (which adds terminal setup and teardown).
    let (mut inner, mut wall) = (Vec::new(), Vec::new());
    for i in 0..15 {
        let out = config.path().join(format!("frame-{i}"));
        let wall_file = config.path().join(format!("wall-{i}"));
        let cmd = format!("s=$(date +%s%N); KODEL_TUI_EXIT_AFTER_FIRST_BOARD={} {kodel}; e=$(date +%s%N); echo $(( (e - s) / 1000 )) > {}", out.display(), wall_file.display());
        let tmux = Tmux::start(&cmd, &env, 120, 35);
        tmux.wait_for("KODEL-EXITED", Duration::from_secs(30));
        inner.push(std::fs::read_to_string(&out).unwrap().trim().parse::<f64>().unwrap());
        wall.push(std::fs::read_to_string(&wall_file).unwrap().trim().parse::<f64>().unwrap() / 1000.0);
    }
    println!("start to first full board frame (50 tasks): median {:.1} ms in process, {:.1} ms exec to exit (15 runs)", median(inner), median(wall));

    // Idle: RSS, and CPU over 30 s with nothing changing.
    let tui = Tmux::start(&format!("exec {kodel}"), &env, 120, 35);
    tui.wait_for("Backlog (50)", Duration::from_secs(60));
    tui.wait_for("● live", Duration::from_secs(60));
    let pid = tui.pid();
    std::thread::sleep(Duration::from_secs(1));
    let (cpu0, t0) = (cpu_secs(pid), Instant::now());
    std::thread::sleep(Duration::from_secs(30));
    let idle_cpu = cpu_secs(pid) - cpu0;
    println!("idle for {:.0} s: {:.2} s of CPU ({:.2} %), RSS {:.1} MiB", t0.elapsed().as_secs_f64(), idle_cpu, idle_cpu / t0.elapsed().as_secs_f64() * 100.0, rss_mib(pid));

    // Streaming: an agent prints 1,000 lines/s into the task open in the TUI.
    let at = call("POST", "/api/v1/orgs/bench/agent-tokens", json!({"name": "bench"}), t()).await;
    let work = tempfile::tempdir().unwrap();
    let mut agent = Command::new(sibling("kodel-agent"))
        .args(["--server", &base, "--name", "bench", "--workdir"])
        .arg(work.path())
        .args(kodel_testkit::agent_user_args())
        .env("KODEL_AGENT_TOKEN", at["token"].as_str().unwrap())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Open BEN-1 (the first card), then start its job.
    tui.keys(&["Enter"]);
    tui.wait_for("agent stream", Duration::from_secs(60));
    for s in ["Ready", "In Progress"] {
        call("POST", "/api/v1/orgs/bench/tasks/BEN-1/move", json!({"status": s}), t()).await;
    }
    tui.wait_for("line 1000 of the build output", Duration::from_secs(60));
    let rss_start = rss_mib(pid);
    let (cpu0, t0) = (cpu_secs(pid), Instant::now());
    std::thread::sleep(Duration::from_secs(15));
    let cpu = cpu_secs(pid) - cpu0;
    let secs = t0.elapsed().as_secs_f64();
    let shown = tui.screen();
    let last = shown.lines().filter_map(|l| l.split("line ").nth(1)).filter_map(|r| r.split_whitespace().next()?.parse::<u64>().ok()).max().unwrap_or(0);
    println!(
        "streaming 1,000 lines/s into the open task for {secs:.0} s: {:.1} % of one core, RSS {rss_start:.1} -> {:.1} MiB (last line on screen: {last})",
        cpu / secs * 100.0,
        rss_mib(pid)
    );
    drop(tui);
    let _ = agent.kill();
    let _ = agent.wait();
    drop(server);
}
