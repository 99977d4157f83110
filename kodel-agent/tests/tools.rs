//! The six tools and the bash sandbox, through the public API the agent loop uses.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use kodel_agent::sandbox::{Sandbox, SandboxMode};
use kodel_agent::tools::{self, ToolOutput, Workspace};
use serde_json::{Value, json};
use tempfile::TempDir;

fn workspace(dir: &TempDir) -> Workspace {
    Workspace::new(dir.path(), Sandbox::off()).unwrap()
}

async fn call(ws: &Workspace, tool: &str, args: Value) -> ToolOutput {
    tools::run(ws, tool, &args.to_string(), None).await
}

fn write(dir: &TempDir, rel: &str, content: &str) {
    let path = dir.path().join(rel);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, content).unwrap();
}

fn unique(name: &str) -> String {
    let nanos = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap().as_nanos();
    format!("kodel-test-{name}-{}-{nanos}", std::process::id())
}

fn assert_err_contains(out: &ToolOutput, needle: &str) {
    assert!(out.error, "expected an error containing {needle:?}, got success: {}", out.output);
    assert!(out.output.contains(needle), "expected {needle:?} in: {}", out.output);
}

// ---------------------------------------------------------------- paths

#[tokio::test]
async fn paths_outside_the_workspace_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let ws = workspace(&dir);
    write(&dir, "inside.txt", "hello\n");

    let out = call(&ws, "read_file", json!({"path": "../x"})).await;
    assert_err_contains(&out, "is outside the workspace");
    let out = call(&ws, "read_file", json!({"path": "/etc/passwd"})).await;
    assert_err_contains(&out, "is outside the workspace");
    assert!(!out.output.contains("root:"), "must not leak the file: {}", out.output);
    let out = call(&ws, "read_file", json!({"path": "sub/../../../etc/passwd"})).await;
    assert_err_contains(&out, "is outside the workspace");
    let out = call(&ws, "grep", json!({"pattern": "root", "path": "/etc"})).await;
    assert_err_contains(&out, "is outside the workspace");
    let out = call(&ws, "glob", json!({"pattern": "*", "path": ".."})).await;
    assert_err_contains(&out, "is outside the workspace");

    // An absolute path inside the root is fine.
    let abs = ws.root().join("inside.txt");
    let out = call(&ws, "read_file", json!({"path": abs.to_str().unwrap()})).await;
    assert!(!out.error, "{}", out.output);
    assert!(out.output.contains("hello"));
}

#[tokio::test]
async fn symlinks_leading_outside_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let ws = workspace(&dir);
    std::os::unix::fs::symlink("/etc", dir.path().join("etc")).unwrap();

    let out = call(&ws, "read_file", json!({"path": "etc/passwd"})).await;
    assert_err_contains(&out, "is outside the workspace");

    let name = unique("through-link");
    let out = call(&ws, "write_file", json!({"path": format!("etc/{name}"), "content": "x"})).await;
    assert_err_contains(&out, "is outside the workspace");
    assert!(!Path::new("/etc").join(&name).exists());

    let out = call(&ws, "edit_file", json!({"path": "etc/hostname", "old_string": "a", "new_string": "b"})).await;
    assert_err_contains(&out, "is outside the workspace");

    // A dangling link whose target would be created outside.
    let target = std::env::temp_dir().join(unique("dangling"));
    std::os::unix::fs::symlink(&target, dir.path().join("dangling")).unwrap();
    let out = call(&ws, "write_file", json!({"path": "dangling", "content": "x"})).await;
    assert_err_contains(&out, "is outside the workspace");
    assert!(!target.exists());

    // A link that stays inside is followed.
    write(&dir, "real/file.txt", "inside\n");
    std::os::unix::fs::symlink("real", dir.path().join("alias")).unwrap();
    let out = call(&ws, "read_file", json!({"path": "alias/file.txt"})).await;
    assert!(!out.error, "{}", out.output);
    assert!(out.output.contains("inside"));
}

// ---------------------------------------------------------------- input

#[tokio::test]
async fn bad_input_says_what_is_wrong() {
    let dir = tempfile::tempdir().unwrap();
    let ws = workspace(&dir);

    let out = tools::run(&ws, "read_file", "{\"path\": ", None).await;
    assert_err_contains(&out, "invalid arguments for read_file");
    let out = call(&ws, "read_file", json!({"file": "a.txt"})).await;
    assert_err_contains(&out, "missing field `path`");
    let out = call(&ws, "read_file", json!({"path": 42})).await;
    assert_err_contains(&out, "invalid type");
    let out = tools::run(&ws, "bash", "", None).await;
    assert_err_contains(&out, "missing field `command`");
    let out = call(&ws, "edit_file", json!({"path": "a", "old_string": "x"})).await;
    assert_err_contains(&out, "missing field `new_string`");
    let out = call(&ws, "launch_rockets", json!({})).await;
    assert_err_contains(&out, "unknown tool");
}

#[test]
fn specs_follow_tools_order_and_the_allowed_list() {
    let all: Vec<String> = kodel_core::jobs::TOOLS.iter().map(|s| s.to_string()).collect();
    let specs = tools::specs(&all);
    let names: Vec<&str> = specs.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, kodel_core::jobs::TOOLS);
    for spec in &specs {
        assert_eq!(spec.parameters["type"], "object", "{}", spec.name);
        assert!(spec.parameters["required"].as_array().is_some_and(|r| !r.is_empty()), "{}", spec.name);
        assert!(spec.description.len() > 40, "{}", spec.name);
    }
    let some = tools::specs(&["grep".into(), "read_file".into(), "nope".into()]);
    let names: Vec<&str> = some.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["read_file", "grep"]);
}

// ---------------------------------------------------------------- read_file

#[tokio::test]
async fn read_file_numbers_lines_and_pages() {
    let dir = tempfile::tempdir().unwrap();
    let ws = workspace(&dir);
    write(&dir, "five.txt", "one\ntwo\nthree\nfour\nfive\n");

    let out = call(&ws, "read_file", json!({"path": "five.txt"})).await;
    assert!(!out.error);
    assert_eq!(out.output, "     1\tone\n     2\ttwo\n     3\tthree\n     4\tfour\n     5\tfive\n");

    let out = call(&ws, "read_file", json!({"path": "five.txt", "offset": 2, "limit": 2})).await;
    assert!(!out.error);
    assert!(out.output.starts_with("     2\ttwo\n     3\tthree\n"), "{}", out.output);
    assert!(!out.output.contains("four"));
    assert!(out.output.contains("2 more lines"), "{}", out.output);
    assert!(out.output.contains("offset=4"), "{}", out.output);

    let out = call(&ws, "read_file", json!({"path": "five.txt", "offset": 9})).await;
    assert_err_contains(&out, "past the end");
    let out = call(&ws, "read_file", json!({"path": "missing.txt"})).await;
    assert_err_contains(&out, "file not found");
}

#[tokio::test]
async fn read_file_cuts_long_lines_and_caps_lines() {
    let dir = tempfile::tempdir().unwrap();
    let ws = workspace(&dir);
    write(&dir, "long.txt", &format!("{}\nshort\n", "x".repeat(5000)));
    let out = call(&ws, "read_file", json!({"path": "long.txt"})).await;
    assert!(!out.error);
    assert!(out.output.contains("line cut: 3000 more characters"), "{}", &out.output[..100]);
    assert!(out.output.len() < 2200);
    assert!(out.output.contains("     2\tshort"));

    let many: String = (1..=3000).map(|i| format!("line {i}\n")).collect();
    write(&dir, "many.txt", &many);
    let out = call(&ws, "read_file", json!({"path": "many.txt"})).await;
    assert!(out.output.contains("  2000\tline 2000\n"));
    assert!(!out.output.contains("line 2001"));
    assert!(out.output.contains("1000 more lines"), "{}", out.output.lines().last().unwrap());
}

#[tokio::test]
async fn read_file_refuses_binary_and_huge_files() {
    let dir = tempfile::tempdir().unwrap();
    let ws = workspace(&dir);
    std::fs::write(dir.path().join("blob.bin"), b"ELF\x00\x01\x02text").unwrap();
    let out = call(&ws, "read_file", json!({"path": "blob.bin"})).await;
    assert_err_contains(&out, "binary");

    let huge = std::fs::File::create(dir.path().join("huge.txt")).unwrap();
    huge.set_len(11 * 1024 * 1024).unwrap();
    let out = call(&ws, "read_file", json!({"path": "huge.txt"})).await;
    assert_err_contains(&out, "10 MiB limit");

    std::fs::create_dir(dir.path().join("adir")).unwrap();
    let out = call(&ws, "read_file", json!({"path": "adir"})).await;
    assert_err_contains(&out, "is a directory");
}

// ---------------------------------------------------------------- write_file

#[tokio::test]
async fn write_file_creates_parents_and_overwrites() {
    let dir = tempfile::tempdir().unwrap();
    let ws = workspace(&dir);
    let out = call(&ws, "write_file", json!({"path": "a/b/c.txt", "content": "hello"})).await;
    assert!(!out.error, "{}", out.output);
    assert!(out.output.contains("5 bytes"), "{}", out.output);
    assert_eq!(std::fs::read_to_string(dir.path().join("a/b/c.txt")).unwrap(), "hello");

    let out = call(&ws, "write_file", json!({"path": "a/b/c.txt", "content": "bye"})).await;
    assert!(!out.error);
    assert!(out.output.contains("overwrote"), "{}", out.output);
    assert_eq!(std::fs::read_to_string(dir.path().join("a/b/c.txt")).unwrap(), "bye");

    let out = call(&ws, "write_file", json!({"path": "a/b", "content": "x"})).await;
    assert_err_contains(&out, "is a directory");
}

// ---------------------------------------------------------------- edit_file

#[tokio::test]
async fn edit_file_needs_exactly_one_match() {
    let dir = tempfile::tempdir().unwrap();
    let ws = workspace(&dir);
    write(&dir, "f.rs", "let a = 1;\nlet b = 1;\nlet c = 2;\n");

    let out = call(&ws, "edit_file", json!({"path": "f.rs", "old_string": "let z", "new_string": "x"})).await;
    assert_err_contains(&out, "not found");

    let out = call(&ws, "edit_file", json!({"path": "f.rs", "old_string": "= 1;", "new_string": "= 3;"})).await;
    assert_err_contains(&out, "occurs 2 times");
    assert!(out.output.contains("replace_all"));
    assert_eq!(std::fs::read_to_string(dir.path().join("f.rs")).unwrap(), "let a = 1;\nlet b = 1;\nlet c = 2;\n");

    let out =
        call(&ws, "edit_file", json!({"path": "f.rs", "old_string": "let b = 1;", "new_string": "let b = 10;"})).await;
    assert!(!out.error, "{}", out.output);
    assert!(out.output.contains("line 2"), "{}", out.output);
    assert_eq!(std::fs::read_to_string(dir.path().join("f.rs")).unwrap(), "let a = 1;\nlet b = 10;\nlet c = 2;\n");

    let out = call(
        &ws,
        "edit_file",
        json!({"path": "f.rs", "old_string": "let", "new_string": "const", "replace_all": true}),
    )
    .await;
    assert!(!out.error, "{}", out.output);
    assert!(out.output.contains("3 occurrences"));
    assert_eq!(
        std::fs::read_to_string(dir.path().join("f.rs")).unwrap(),
        "const a = 1;\nconst b = 10;\nconst c = 2;\n"
    );

    let out = call(&ws, "edit_file", json!({"path": "f.rs", "old_string": "a", "new_string": "a"})).await;
    assert_err_contains(&out, "the same");
    let out = call(&ws, "edit_file", json!({"path": "new.rs", "old_string": "a", "new_string": "b"})).await;
    assert_err_contains(&out, "write_file");
}

#[tokio::test]
async fn edit_file_keeps_crlf_line_endings() {
    let dir = tempfile::tempdir().unwrap();
    let ws = workspace(&dir);
    std::fs::write(dir.path().join("win.txt"), "one\r\ntwo\r\nthree\r\n").unwrap();
    let out =
        call(&ws, "edit_file", json!({"path": "win.txt", "old_string": "one\ntwo\n", "new_string": "1\n2\n2.5\n"}))
            .await;
    assert!(!out.error, "{}", out.output);
    assert_eq!(std::fs::read(dir.path().join("win.txt")).unwrap(), b"1\r\n2\r\n2.5\r\nthree\r\n");
}

// ---------------------------------------------------------------- bash

#[tokio::test]
async fn bash_reports_output_and_exit_code() {
    let dir = tempfile::tempdir().unwrap();
    let ws = workspace(&dir);
    let out = call(&ws, "bash", json!({"command": "echo out; echo err >&2; echo out2; exit 3"})).await;
    assert!(out.error);
    assert_eq!(out.output, "out\nerr\nout2\nexit code: 3");

    let out = call(&ws, "bash", json!({"command": "pwd; echo hi > made.txt"})).await;
    assert!(!out.error, "{}", out.output);
    assert!(out.output.starts_with(ws.root().to_str().unwrap()), "{}", out.output);
    assert!(out.output.ends_with("exit code: 0"));
    assert!(dir.path().join("made.txt").exists());
}

#[tokio::test]
async fn bash_streams_output_live() {
    let dir = tempfile::tempdir().unwrap();
    let ws = workspace(&dir);
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let out =
        tools::run(&ws, "bash", &json!({"command": "echo first; sleep 0.2; echo second"}).to_string(), Some(&tx)).await;
    assert!(!out.error);
    let mut chunks = Vec::new();
    while let Ok(chunk) = rx.try_recv() {
        chunks.push(chunk);
    }
    assert!(chunks.len() >= 2, "expected separate chunks, got {chunks:?}");
    assert_eq!(chunks.concat(), "first\nsecond\n");
}

#[tokio::test]
async fn bash_timeout_kills_the_whole_process_group() {
    let dir = tempfile::tempdir().unwrap();
    let ws = workspace(&dir);
    let started = Instant::now();
    let out = call(
        &ws,
        "bash",
        json!({"command": "sleep 300 & echo $! > bg.pid; echo started; sleep 300", "timeout_secs": 1}),
    )
    .await;
    assert!(started.elapsed() < Duration::from_secs(10), "took {:?}", started.elapsed());
    assert_err_contains(&out, "timed out after 1 s");
    assert!(out.output.contains("started"));
    let pid = std::fs::read_to_string(dir.path().join("bg.pid")).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    assert!(!alive(pid.trim()), "background sleep {pid} survived");
}

/// Whether a process runs (a zombie waiting for an init that does not reap is dead).
fn alive(pid: &str) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return false };
    let state = stat.rsplit_once(") ").map(|(_, rest)| rest.chars().next());
    state != Some(Some('Z'))
}

#[tokio::test]
async fn bash_output_is_capped_head_and_tail() {
    let dir = tempfile::tempdir().unwrap();
    let ws = workspace(&dir);
    let out = call(&ws, "bash", json!({"command": "seq 1 300000"})).await;
    assert!(!out.error);
    assert!(out.output.len() < 32 * 1024, "{} bytes", out.output.len());
    assert!(out.output.starts_with("1\n2\n3\n"));
    assert!(out.output.contains("bytes cut"));
    assert!(out.output.ends_with("299999\n300000\nexit code: 0"), "{}", &out.output[out.output.len() - 100..]);
}

#[tokio::test]
async fn bash_env_is_clean_and_has_no_secrets() {
    let dir = tempfile::tempdir().unwrap();
    // SAFETY: std serialises its own environment reads and writes (std::env::var and
    // Command::spawn take the same lock), and nothing in these tests reads the
    // environment through libc directly.
    unsafe { std::env::set_var("OPENAI_API_KEY", "sk-host-secret") };
    let env = BTreeMap::from([
        ("OPENAI_API_KEY".to_string(), "sk-extra-secret".to_string()),
        ("KODEL_AGENT_TOKEN".to_string(), "agent-secret".to_string()),
        ("PROJECT_FLAG".to_string(), "on".to_string()),
    ]);
    let ws = workspace(&dir).with_env(env);
    let out = call(&ws, "bash", json!({"command": "env"})).await;
    assert!(!out.error, "{}", out.output);
    assert!(!out.output.contains("OPENAI_API_KEY"), "{}", out.output);
    assert!(!out.output.contains("secret"), "{}", out.output);
    assert!(!out.output.contains("KODEL_AGENT_TOKEN"), "{}", out.output);
    assert!(out.output.contains("PROJECT_FLAG=on"));
    assert!(out.output.contains(&format!("HOME={}\n", ws.root().display())));
    assert!(out.output.contains("LANG=C.UTF-8"));
    assert!(out.output.contains("TERM=dumb"));
    assert!(out.output.contains("PATH="));
}

// ---------------------------------------------------------------- glob

fn set_mtime(dir: &TempDir, rel: &str, secs_ago: u64) {
    let file = std::fs::File::options().write(true).open(dir.path().join(rel)).unwrap();
    file.set_modified(SystemTime::now() - Duration::from_secs(secs_ago)).unwrap();
}

#[tokio::test]
async fn glob_lists_newest_first_and_respects_gitignore() {
    let dir = tempfile::tempdir().unwrap();
    let ws = workspace(&dir);
    write(&dir, ".gitignore", "target/\n*.log\n");
    write(&dir, "old.rs", "");
    write(&dir, "src/new.rs", "");
    write(&dir, "src/deep/mid.rs", "");
    write(&dir, "target/gen.rs", "");
    write(&dir, "notes.log", "");
    write(&dir, "README.md", "");
    set_mtime(&dir, "old.rs", 3000);
    set_mtime(&dir, "src/deep/mid.rs", 2000);
    set_mtime(&dir, "src/new.rs", 1000);

    let out = call(&ws, "glob", json!({"pattern": "*.rs"})).await;
    assert!(!out.error, "{}", out.output);
    assert_eq!(out.output, "src/new.rs\nsrc/deep/mid.rs\nold.rs\n");

    let out = call(&ws, "glob", json!({"pattern": "**/*.rs", "path": "src"})).await;
    assert_eq!(out.output, "src/new.rs\nsrc/deep/mid.rs\n");
    let out = call(&ws, "glob", json!({"pattern": "src/*.rs"})).await;
    assert_eq!(out.output, "src/new.rs\n");
    let out = call(&ws, "glob", json!({"pattern": "*.log"})).await;
    assert!(out.output.starts_with("no files match"), "{}", out.output);
    let out = call(&ws, "glob", json!({"pattern": "a{"})).await;
    assert_err_contains(&out, "invalid glob");
}

#[tokio::test]
async fn glob_caps_results() {
    let dir = tempfile::tempdir().unwrap();
    let ws = workspace(&dir);
    for i in 0..250 {
        write(&dir, &format!("f/{i}.txt"), "");
    }
    let out = call(&ws, "glob", json!({"pattern": "**/*.txt"})).await;
    assert_eq!(out.output.lines().filter(|l| l.ends_with(".txt")).count(), 200);
    assert!(out.output.contains("50 more files"), "{}", out.output.lines().last().unwrap());
}

// ---------------------------------------------------------------- grep

#[tokio::test]
async fn grep_finds_matches_with_context() {
    let dir = tempfile::tempdir().unwrap();
    let ws = workspace(&dir);
    write(&dir, "src/lib.rs", "fn a() {}\nfn target() {\n    body();\n}\nfn z() {}\n");
    write(&dir, "src/main.rs", "fn main() { target(); }\n");
    write(&dir, "doc.md", "target in docs\n");

    let out = call(&ws, "grep", json!({"pattern": "target\\(", "glob": "*.rs"})).await;
    assert!(!out.error, "{}", out.output);
    assert_eq!(out.output, "src/lib.rs:2:fn target() {\nsrc/main.rs:1:fn main() { target(); }\n");

    let out = call(&ws, "grep", json!({"pattern": "fn target", "context": 1})).await;
    assert_eq!(out.output, "src/lib.rs-1-fn a() {}\nsrc/lib.rs:2:fn target() {\nsrc/lib.rs-3-    body();\n");

    let out = call(&ws, "grep", json!({"pattern": "TARGET", "case_insensitive": true, "path": "doc.md"})).await;
    assert_eq!(out.output, "doc.md:1:target in docs\n");
    let out = call(&ws, "grep", json!({"pattern": "TARGET"})).await;
    assert!(!out.error);
    assert!(out.output.starts_with("no matches"), "{}", out.output);
}

#[tokio::test]
async fn grep_skips_ignored_and_binary_files() {
    let dir = tempfile::tempdir().unwrap();
    let ws = workspace(&dir);
    write(&dir, ".gitignore", "build/\n");
    write(&dir, "build/out.txt", "needle\n");
    write(&dir, "keep.txt", "needle\n");
    write(&dir, ".github/ci.yml", "needle\n");
    write(&dir, ".git/config", "needle\n");
    std::fs::write(dir.path().join("blob.bin"), b"needle\n\x00\x01").unwrap();

    let out = call(&ws, "grep", json!({"pattern": "needle"})).await;
    assert!(!out.error, "{}", out.output);
    assert_eq!(out.output, ".github/ci.yml:1:needle\nkeep.txt:1:needle\n");
}

#[tokio::test]
async fn grep_limits_results_and_reports_bad_regex() {
    let dir = tempfile::tempdir().unwrap();
    let ws = workspace(&dir);
    write(&dir, "many.txt", &"hit\n".repeat(100));
    let out = call(&ws, "grep", json!({"pattern": "hit", "max_results": 10})).await;
    assert_eq!(out.output.lines().filter(|l| l.starts_with("many.txt:")).count(), 10);
    assert!(out.output.contains("max_results=10"));

    let out = call(&ws, "grep", json!({"pattern": "fn ("})).await;
    assert_err_contains(&out, "invalid regex");
}

// ---------------------------------------------------------------- sandbox

/// The sandbox, or None (with a note) when bwrap does not work on this machine.
fn sandboxed(dir: &TempDir) -> Option<Workspace> {
    let sandbox = Sandbox::detect(SandboxMode::Auto);
    if !sandbox.is_active() {
        eprintln!("NOTE: bubblewrap does not work here; sandbox test skipped");
        return None;
    }
    Some(Workspace::new(dir.path(), sandbox).unwrap())
}

#[tokio::test]
async fn sandbox_makes_everything_but_the_workspace_read_only() {
    let dir = tempfile::tempdir().unwrap();
    let Some(ws) = sandboxed(&dir) else { return };
    let name = unique("sbx");
    let out = call(&ws, "bash", json!({"command": format!("touch /var/tmp/{name}")})).await;
    assert!(out.error, "{}", out.output);
    assert!(out.output.contains("Read-only file system"), "{}", out.output);
    assert!(!Path::new("/var/tmp").join(&name).exists());

    let out = call(&ws, "bash", json!({"command": format!("echo x > /etc/{name}")})).await;
    assert!(out.error, "{}", out.output);
    assert!(!Path::new("/etc").join(&name).exists());

    let out =
        call(&ws, "bash", json!({"command": "mkdir -p sub && echo inside > sub/file.txt && cat sub/file.txt"})).await;
    assert!(!out.error, "{}", out.output);
    assert_eq!(std::fs::read_to_string(dir.path().join("sub/file.txt")).unwrap(), "inside\n");
}

#[tokio::test]
async fn sandbox_has_a_private_tmp() {
    let dir = tempfile::tempdir().unwrap();
    let Some(ws) = sandboxed(&dir) else { return };
    let name = unique("tmp");
    let out = call(&ws, "bash", json!({"command": format!("echo x > /tmp/{name} && cat /tmp/{name}")})).await;
    assert!(!out.error, "{}", out.output);
    assert!(out.output.starts_with("x\n"));
    assert!(!Path::new("/tmp").join(&name).exists(), "the sandbox's /tmp leaked to the host");
}

#[tokio::test]
async fn sandbox_cuts_the_network_unless_allowed() {
    let dir = tempfile::tempdir().unwrap();
    let Some(ws) = sandboxed(&dir) else { return };
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let connect = json!({"command": format!("exec 3<>/dev/tcp/127.0.0.1/{port} && echo connected")});

    let out = call(&ws, "bash", connect.clone()).await;
    assert!(out.error, "{}", out.output);
    assert!(!out.output.contains("connected"));

    let ws = ws.with_network(true);
    let out = call(&ws, "bash", connect).await;
    assert!(!out.error, "{}", out.output);
    assert!(out.output.contains("connected"));
}

#[tokio::test]
async fn sandbox_timeout_still_kills() {
    let dir = tempfile::tempdir().unwrap();
    let Some(ws) = sandboxed(&dir) else { return };
    let started = Instant::now();
    let out = call(&ws, "bash", json!({"command": "sleep 300 & sleep 300", "timeout_secs": 1})).await;
    assert_err_contains(&out, "timed out");
    assert!(started.elapsed() < Duration::from_secs(10));
}

#[tokio::test]
async fn required_sandbox_without_bwrap_refuses() {
    let missing = Path::new("/nonexistent/bwrap");
    let sandbox = Sandbox::detect_with(SandboxMode::Required, missing);
    assert!(!sandbox.is_active());
    let err = sandbox.ready().unwrap_err();
    assert!(err.contains("apt-get install bubblewrap"), "{err}");
    assert!(err.contains("user namespaces"), "{err}");

    let dir = tempfile::tempdir().unwrap();
    let ws = Workspace::new(dir.path(), sandbox).unwrap();
    let out = call(&ws, "bash", json!({"command": "touch ran"})).await;
    assert_err_contains(&out, "bubblewrap");
    assert!(!dir.path().join("ran").exists());

    let auto = Sandbox::detect_with(SandboxMode::Auto, missing);
    assert!(!auto.is_active());
    assert!(auto.ready().is_ok());
    assert!(Sandbox::off().ready().is_ok());
    assert_eq!("required".parse::<SandboxMode>(), Ok(SandboxMode::Required));
    assert!("maybe".parse::<SandboxMode>().is_err());
}

#[tokio::test]
async fn sandbox_hides_the_agents_home_other_workspaces_and_sockets() {
    // Workspaces side by side, as the agent keeps them: <workdir>/<TASK>.
    let workdir = tempfile::tempdir().unwrap();
    let mine = workdir.path().join("KOD-1");
    let other = workdir.path().join("KOD-2");
    std::fs::create_dir_all(&mine).unwrap();
    std::fs::create_dir_all(&other).unwrap();
    std::fs::write(other.join("secret.txt"), "another task's file").unwrap();
    let sandbox = Sandbox::detect(SandboxMode::Auto);
    if !sandbox.is_active() {
        eprintln!("NOTE: bubblewrap does not work here; sandbox test skipped");
        return;
    }
    let ws = Workspace::new(&mine, sandbox).unwrap().with_env([("GREETING".to_string(), "hello".to_string())].into());
    let home = std::env::var("HOME").unwrap();
    let probe = format!(
        "cat {}/secret.txt; ls -A {home} | wc -l; ls -A /run | wc -l; echo \"greeting=$GREETING\"; env | grep -c KODEL_ || true",
        other.display()
    );
    let out = call(&ws, "bash", json!({"command": probe})).await;
    assert!(out.output.contains("No such file or directory"), "another workspace is visible: {}", out.output);
    let lines: Vec<&str> = out.output.lines().collect();
    assert!(lines.contains(&"greeting=hello"), "the workspace env arrives: {}", out.output);
    // The agent's home and /run are empty inside (only what the sandbox mounts there).
    let counts: Vec<&str> = lines.iter().copied().filter(|l| l.trim().parse::<u32>().is_ok()).collect();
    assert!(counts.len() >= 3, "{}", out.output);
    assert!(counts[1].trim() == "0", "/run is not hidden: {}", out.output);
    assert!(counts[2].trim() == "0", "a KODEL_ variable leaked: {}", out.output);
}

/// Whoever runs the agent, commands get no capability and no view of the agent's
/// processes, and the files it hides (its token file) read as empty.
#[tokio::test]
async fn sandbox_drops_every_capability_and_hides_the_token_file() {
    let dir = tempfile::tempdir().unwrap();
    let secret_dir = tempfile::tempdir().unwrap();
    let token_file = secret_dir.path().join("agent-token");
    std::fs::write(&token_file, "kodel_agt_secret").unwrap();
    let sandbox = Sandbox::detect(SandboxMode::Auto);
    if !sandbox.is_active() {
        eprintln!("NOTE: bubblewrap does not work here; sandbox test skipped");
        return;
    }
    let ws = Workspace::new(dir.path(), sandbox.hiding([token_file.clone()])).unwrap();
    let probe = format!(
        "grep CapEff /proc/self/status; echo \"token=[$(cat {})]\"; test -e /proc/{} && echo AGENT_VISIBLE; echo end",
        token_file.display(),
        std::process::id()
    );
    let out = call(&ws, "bash", json!({"command": probe})).await;
    assert!(out.output.contains("CapEff:\t0000000000000000"), "{}", out.output);
    assert!(out.output.contains("token=[]"), "the token file is readable: {}", out.output);
    assert!(!out.output.contains("AGENT_VISIBLE"), "{}", out.output);
    assert!(out.output.contains("end"), "{}", out.output);
}

#[tokio::test]
async fn pipes_are_refused_instead_of_blocking() {
    let dir = tempfile::tempdir().unwrap();
    let ws = Workspace::new(dir.path(), Sandbox::off()).unwrap();
    let made = std::process::Command::new("mkfifo").arg(dir.path().join("pipe")).status().unwrap();
    assert!(made.success());
    for (tool, args) in [
        ("read_file", json!({"path": "pipe"})),
        ("edit_file", json!({"path": "pipe", "old_string": "a", "new_string": "b"})),
        ("write_file", json!({"path": "pipe", "content": "x"})),
    ] {
        let out = tokio::time::timeout(std::time::Duration::from_secs(5), call(&ws, tool, args)).await.expect("the tool blocked on a FIFO");
        assert_err_contains(&out, "not a regular file");
    }
}
