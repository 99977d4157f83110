//! The sandbox escapes an agent run as root used to allow, tried by the model itself
//! through the bash tool of a real `kodel-agent` started as root (as `kodel up` run by
//! root starts it): every one must fail. Run as another user the test has nothing to
//! show (no root to escape to) and says so.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::Command;
use std::time::Duration;

use common::Stack;
use kodel_testkit::scripted_llm::{Reply, ScriptedLlm};
use serde_json::json;

/// Each escape prints `ESCAPED:<what>` only if it worked.
const ATTACKS: &str = r#"
echo "CAPS:$(grep CapEff /proc/self/status | awk '{print $2}')"
echo "UID:$(id -u)"
umount -l /proc 2>/dev/null && echo "ESCAPED:umount-proc"
umount -l /tmp 2>/dev/null && echo "ESCAPED:umount-tmp"
mount -o remount,bind,rw / 2>/dev/null && echo "ESCAPED:remount-root"
touch /kodel-escape-$$ 2>/dev/null && echo "ESCAPED:host-write"
test -e /proc/$SERVER_PID && echo "ESCAPED:server-pid-visible"
cat /proc/$SERVER_PID/environ 2>/dev/null | tr '\0' '\n' | grep -q KODEL && echo "ESCAPED:server-environ"
nsenter --net=/proc/$SERVER_PID/ns/net true 2>/dev/null && echo "ESCAPED:nsenter"
for p in /proc/[0-9]*; do cat $p/environ $p/cmdline 2>/dev/null; done | tr '\0' '\n' | grep 'kodel_ag[t]_' | sed 's/^/ESCAPED:agent-token: /'
env | grep -q 'kodel_ag[t]_' && echo "ESCAPED:agent-token-env"
cat /etc/shadow >/dev/null 2>&1 && echo "ESCAPED:shadow"
ls /root >/dev/null 2>&1 && ls -A /root | grep -q . && echo "ESCAPED:root-home"
unshare -Urm sh -c 'umount -l /proc' 2>/dev/null && ls /proc | grep -qx "$SERVER_PID" && echo "ESCAPED:nested-userns"
echo "PIDS:$(ls -d /proc/[0-9]* | wc -l)"
echo END
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_models_commands_cannot_escape_the_sandbox_of_an_agent_started_as_root() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("NOTE: not root; the escapes of an agent started as root cannot be tried here");
        return;
    }
    if Command::new("bwrap").arg("--version").output().is_err() {
        eprintln!("NOTE: bubblewrap is not installed; sandbox test skipped");
        return;
    }
    let llm = ScriptedLlm::start(Vec::new()).await;
    let mut stack = Stack::start(&llm, "openai").await;
    let script = ATTACKS.replace("$SERVER_PID", &stack.server_pid().to_string());
    llm.push(Reply::ToolCalls(vec![("bash".into(), json!({"command": script}))]));
    llm.push(Reply::Text("tried".into()));
    // The agent's own log goes where root can read it, outside its work dir.
    let log = std::env::temp_dir().join(format!("kodel-agent-root-{}.log", std::process::id()));
    stack.agent_with("root-started", &["--sandbox", "required"], Some(&log));
    stack.task_in_progress("Try to escape").await;
    stack.wait_event("job.succeeded", Duration::from_secs(60)).await;

    let steps = stack.events_of("job.step");
    let out = steps.iter().find(|s| s["step"]["tool"] == "bash").expect("the bash step")["step"]["output"].as_str().unwrap().to_owned();
    let _ = std::fs::remove_file(&log);
    assert!(out.contains("END"), "the whole script ran: {out}");
    assert!(out.contains("CAPS:0000000000000000"), "no capability in the sandbox: {out}");
    let uid: u32 = out.split("UID:").nth(1).unwrap().lines().next().unwrap().trim().parse().unwrap();
    assert_ne!(uid, 0, "commands do not run as root: {out}");
    let escaped: Vec<&str> = out.lines().filter(|l| l.starts_with("ESCAPED:")).collect();
    assert!(escaped.is_empty(), "escapes that worked: {escaped:?}\n{out}");
    let pids: u32 = out.split("PIDS:").nth(1).unwrap().lines().next().unwrap().trim().parse().unwrap();
    assert!(pids < 10, "only the sandbox's own processes are visible: {pids}");
    // And the agent itself no longer runs as root.
    let agent_pid = stack.agents[0].id();
    let status = std::fs::read_to_string(format!("/proc/{agent_pid}/status")).unwrap();
    let uid_line = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    assert!(uid_line.split_whitespace().skip(1).all(|u| u != "0"), "the agent dropped root for good: {uid_line}");
}

#[test]
fn an_agent_started_as_root_without_a_user_refuses_to_run() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("NOTE: not root; nothing to refuse");
        return;
    }
    let out = Command::new(env!("CARGO_BIN_EXE_kodel-agent"))
        .args(["--server", "http://127.0.0.1:9"])
        .env("KODEL_AGENT_TOKEN", "kodel_agt_x")
        .env_remove("KODEL_AGENT_USER")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("running as root") && err.contains("--user"), "{err}");
    let out = Command::new(env!("CARGO_BIN_EXE_kodel-agent"))
        .args(["--server", "http://127.0.0.1:9", "--user", "root"])
        .env("KODEL_AGENT_TOKEN", "kodel_agt_x")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unprivileged"));
    // A work dir it must not take over: one anyone may write to (/tmp), one holding
    // root's files; root never changes ownership below the work dir itself.
    let full = tempfile::tempdir().unwrap();
    std::fs::write(full.path().join("roots-file"), "x").unwrap();
    for dir in [std::env::temp_dir(), full.path().to_path_buf()] {
        let out = Command::new(env!("CARGO_BIN_EXE_kodel-agent"))
            .args(["--server", "http://127.0.0.1:9", "--user", "nobody", "--workdir"])
            .arg(&dir)
            .env("KODEL_AGENT_TOKEN", "kodel_agt_x")
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{}", dir.display());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("work dir") && err.contains("chown -R nobody"), "{err}");
    }
    use std::os::unix::fs::MetadataExt;
    assert_eq!(std::fs::metadata(std::env::temp_dir()).unwrap().uid(), 0, "/tmp stays root's");
    assert_eq!(std::fs::metadata(full.path().join("roots-file")).unwrap().uid(), 0);
}

/// An instance template's memory_mb, cpu_limit and max_processes hold for what the
/// model runs (cgroups the agent set up as root before becoming its user).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_templates_resource_limits_hold_for_the_models_commands() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("NOTE: not root; the agent cannot make cgroups here");
        return;
    }
    let writable = |p: &str| nix::unistd::access(p, nix::unistd::AccessFlags::W_OK).is_ok();
    if !writable("/sys/fs/cgroup/memory") && !writable("/sys/fs/cgroup/cgroup.subtree_control") {
        eprintln!("NOTE: /sys/fs/cgroup is read-only here (a container without cgroups); limits test skipped");
        return;
    }
    let llm = ScriptedLlm::start(Vec::new()).await;
    let mut stack = Stack::start(&llm, "openai").await;
    let t = json!({"name": "small", "memory_mb": 64, "cpu_limit": 0.2, "max_processes": 40});
    stack.call("POST", "/api/v1/orgs/acme/instance-templates", t).await;
    stack.call("PATCH", "/api/v1/orgs/acme/projects/KOD", json!({"instance_template": "small"})).await;
    let bash = |c: &str| Reply::ToolCalls(vec![("bash".into(), json!({"command": c}))]);
    llm.push(bash("grep -c kodel-agent /proc/self/cgroup; python3 -c 'x = bytearray(300 * 1024 * 1024); print(\"ALLOCATED\")'"));
    llm.push(bash("sh -c 'for i in $(seq 100); do sleep 5 & done' 2>&1 | grep -c 'Cannot fork'"));
    llm.push(bash("TIMEFORMAT=%U; time timeout 2 sh -c 'while :; do :; done'"));
    llm.push(Reply::Text("measured".into()));
    stack.agent("limited");
    stack.task_in_progress("Use too much").await;
    stack.wait_event("job.succeeded", Duration::from_secs(60)).await;
    let outputs: Vec<String> =
        stack.events_of("job.step").iter().filter(|s| s["step"]["tool"] == "bash").map(|s| s["step"]["output"].as_str().unwrap().to_owned()).collect();
    assert_eq!(outputs.len(), 3, "{outputs:?}");
    // Memory: the process is killed before it holds 300 MiB.
    assert!(outputs[0].lines().next().unwrap().trim().parse::<u32>().unwrap() >= 1, "the command runs in the job's cgroups: {}", outputs[0]);
    assert!(!outputs[0].contains("ALLOCATED") && (outputs[0].contains("exit code: 137") || outputs[0].contains("signal 9") || outputs[0].contains("MemoryError")), "{}", outputs[0]);
    // Processes: forks past the limit fail.
    let refused: u32 = outputs[1].lines().next().unwrap().trim().parse().unwrap();
    assert!(refused > 0, "no fork was refused: {}", outputs[1]);
    // CPU: two seconds of a busy loop get about 0.2 s of CPU.
    let cpu: f64 = outputs[2].lines().find_map(|l| l.trim().parse().ok()).unwrap_or_else(|| panic!("{}", outputs[2]));
    eprintln!("a busy loop held to 0.2 cores used {cpu} s of CPU in 2 s");
    assert!(cpu < 0.8, "a busy loop held to 0.2 cores used {cpu} s of CPU in 2 s");
}
