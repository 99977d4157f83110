//! The real `kodel` binary against the real `kodel-server` binary and PostgreSQL.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

use kodel_testkit::{ServerProcess, database_url, fresh_database, sibling_binary};
use serde_json::Value;

/// kodel-server is built into the same directory as kodel by a workspace build.
fn server_binary() -> PathBuf {
    sibling_binary(env!("CARGO_BIN_EXE_kodel"), "kodel-server")
}

struct Env {
    server: ServerProcess,
    config: tempfile::TempDir,
}

impl Env {
    async fn start() -> Self {
        let db = fresh_database().await;
        let server = ServerProcess::start(&server_binary(), &[], &[("DATABASE_URL", &database_url(&db))]);
        Self { server, config: tempfile::tempdir().unwrap() }
    }

    fn kodel(&self, args: &[&str], stdin: Option<&str>) -> Output {
        self.kodel_env(args, stdin, &[])
    }

    fn kodel_env(&self, args: &[&str], stdin: Option<&str>, env: &[(&str, &str)]) -> Output {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_kodel"));
        cmd.args(args)
            .env("KODEL_CONFIG_DIR", self.config.path())
            .env("KODEL_SERVER", &self.server.base)
            .env("KODEL_NO_KEYRING", "1")
            .env_remove("KODEL_TOKEN")
            .env_remove("KODEL_ORG")
            .env_remove("KODEL_PROJECT")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().unwrap();
        let mut input = child.stdin.take().unwrap();
        if let Some(s) = stdin {
            input.write_all(s.as_bytes()).unwrap();
        }
        drop(input);
        child.wait_with_output().unwrap()
    }

    /// Runs and expects success; returns stdout.
    fn ok(&self, args: &[&str], stdin: Option<&str>) -> String {
        let out = self.kodel(args, stdin);
        assert!(out.status.success(), "kodel {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    }

    fn json(&self, args: &[&str], stdin: Option<&str>) -> Value {
        let mut all = args.to_vec();
        all.push("--json");
        serde_json::from_str(&self.ok(&all, stdin)).unwrap()
    }
}

fn code(out: &Output) -> i32 {
    out.status.code().unwrap()
}

#[tokio::test]
async fn create_to_show_through_the_real_binaries() {
    let env = Env::start().await;
    env.ok(&["register", "--email", "me@x.io", "--name", "Me", "--password-stdin"], Some("password123\n"));
    assert_eq!(env.ok(&["org", "create", "acme", "--name", "Acme"], None).trim(), "acme");
    assert_eq!(env.ok(&["project", "create", "KOD", "--name", "Kodel"], None).trim(), "KOD");

    // Create prints the key, so scripts can capture it.
    let key = env.ok(&["task", "create", "--title", "First", "--label", "bug", "--priority", "high"], None);
    assert_eq!(key.trim(), "KOD-1");
    // Description from stdin with `-`.
    let t = env.json(&["task", "create", "Second", "--description", "-"], Some("line one\nline two\n"));
    assert_eq!(t["key"], "KOD-2");
    assert_eq!(t["description"], "line one\nline two");

    // --json prints the same object the API returns.
    let shown = env.json(&["task", "show", "KOD-1"], None);
    let api: Value = reqwest::Client::new()
        .get(format!("{}/api/v1/orgs/acme/tasks/KOD-1", env.server.base))
        .bearer_auth(env.json(&["token", "create", "probe"], None)["token"].as_str().unwrap())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(shown, api);
    assert_eq!(shown["labels"], serde_json::json!(["bug"]));

    let moved = env.json(&["task", "move", "KOD-1", "in progress"], None);
    assert_eq!(moved["status"], "In Progress");
    let updated = env.json(&["task", "update", "KOD-2", "--title", "Second, renamed", "--assignee", "me@x.io"], None);
    assert_eq!((updated["title"].as_str(), updated["version"].as_i64()), (Some("Second, renamed"), Some(2)));
    let c = env.json(&["task", "comment", "KOD-1"], Some("from stdin\n"));
    assert_eq!(c["body"], "from stdin");
    let comments = env.json(&["task", "comments", "KOD-1"], None);
    assert_eq!(comments["data"][0]["author"], "me@x.io");

    // Human list output is one greppable line per task.
    let list = env.ok(&["task", "list"], None);
    let lines: Vec<&str> = list.lines().collect();
    assert_eq!(lines.len(), 2, "{list}");
    assert!(lines[0].starts_with("KOD-1") && lines[0].contains("In Progress") && lines[0].contains("First"));
    assert!(lines[1].contains("me@x.io"));
    let filtered = env.json(&["task", "list", "--assignee", "me"], None);
    assert_eq!(filtered["data"].as_array().unwrap().len(), 1);

    // Paging with --all follows the cursor.
    for i in 3..=7 {
        env.ok(&["task", "create", &format!("T{i}")], None);
    }
    let page = env.json(&["task", "list", "--limit", "2"], None);
    assert_eq!(page["data"].as_array().unwrap().len(), 2);
    assert!(page["next_cursor"].is_string());
    let all = env.json(&["task", "list", "--limit", "2", "--all"], None);
    assert_eq!(all["data"].as_array().unwrap().len(), 7);
    assert!(all["next_cursor"].is_null());
}

#[tokio::test]
async fn exit_codes_are_stable() {
    let env = Env::start().await;
    // Not logged in.
    let out = env.kodel(&["task", "list", "--org", "acme", "--project", "KOD"], None);
    assert_eq!(code(&out), 3);
    assert!(String::from_utf8_lossy(&out.stderr).contains("kodel login"));

    env.ok(&["register", "--email", "me@x.io", "--name", "Me", "--password-stdin"], Some("password123\n"));
    env.ok(&["org", "create", "acme"], None);
    env.ok(&["project", "create", "KOD", "--name", "K"], None);
    env.ok(&["task", "create", "one"], None);

    assert_eq!(code(&env.kodel(&["task", "show", "KOD-99"], None)), 4);
    assert_eq!(code(&env.kodel(&["task", "show", "KOD-1", "--org", "ghost"], None)), 4);
    assert_eq!(code(&env.kodel(&["task", "show", "not-a-key"], None)), 2);
    // Keys in lower case are the same keys.
    assert!(env.ok(&["task", "show", "kod-1"], None).contains("KOD-1"));
    // --assignee me works for create and update as it does for list.
    let mine = env.json(&["task", "create", "mine", "--assignee", "me"], None);
    assert_eq!(mine["assignee"], "me@x.io", "{mine}");
    let updated = env.json(&["task", "update", "kod-1", "--assignee", "me"], None);
    assert_eq!(updated["assignee"], "me@x.io", "{updated}");
    assert_eq!(code(&env.kodel(&["task", "frobnicate"], None)), 2);
    let out = env.kodel(&["task", "move", "KOD-1", "To Do"], None);
    assert_eq!(code(&out), 5, "already there: transition not allowed");
    assert!(String::from_utf8_lossy(&out.stderr).contains("transition_not_allowed"));
    assert_eq!(code(&env.kodel(&["task", "update", "KOD-1", "--title", "x", "--expect-version", "7"], None)), 5);
    assert_eq!(code(&env.kodel(&["org", "create", "acme"], None)), 5);
    // A priority that does not exist is a usage error that names the ones that do.
    let out = env.kodel(&["task", "create", "x", "--priority", "urgentt"], None);
    assert_eq!(code(&out), 2);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("possible values: none, low, medium, high, urgent") && err.contains("'urgent'"), "{err}");
    assert_eq!(code(&env.kodel(&["task", "update", "KOD-1", "--priority", "meh"], None)), 2);
    assert_eq!(code(&env.kodel(&["org", "create", "Bad Slug"], None)), 7);
    // A status the workflow does not have is refused with the ones it has.
    let out = env.kodel(&["task", "list", "--status", "bogus"], None);
    assert_eq!(code(&out), 7);
    assert!(String::from_utf8_lossy(&out.stderr).contains("its statuses: To Do, In Progress, Done"), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(env.ok(&["task", "list", "--status", "to do"], None).lines().count(), 2, "status names match in any case (KOD-1 and KOD-2)");

    // A viewer may not create tasks. (register logs the new user in.)
    env.ok(&["register", "--email", "v@x.io", "--name", "V", "--password-stdin"], Some("password123\n"));
    env.ok(&["login", "--email", "me@x.io", "--password-stdin"], Some("password123\n"));
    env.ok(&["org", "member", "add", "v@x.io"], None);
    env.ok(&["project", "add-member", "KOD", "v@x.io", "--role", "viewer"], None);
    env.ok(&["login", "--email", "v@x.io", "--password-stdin"], Some("password123\n"));
    let out = env.kodel(&["task", "create", "nope", "--project", "KOD"], None);
    assert_eq!(code(&out), 6, "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(env.ok(&["task", "list", "--project", "KOD"], None).lines().count(), 2, "but may read");

    // Unreachable server.
    let out = env.kodel_env(&["task", "list", "--project", "KOD"], None, &[("KODEL_SERVER", "http://127.0.0.1:9"), ("KODEL_TOKEN", "kodel_pat_x")]);
    assert_eq!(code(&out), 8);
    // Not logged in there either: the unreachable server is what it says.
    let out = env.kodel(&["--server", "http://127.0.0.1:9", "task", "list", "--project", "KOD"], None);
    assert_eq!(code(&out), 8, "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("127.0.0.1:9"));
}

#[tokio::test]
async fn scripts_need_no_login_with_kodel_token() {
    let env = Env::start().await;
    env.ok(&["register", "--email", "me@x.io", "--name", "Me", "--password-stdin"], Some("password123\n"));
    env.ok(&["org", "create", "acme"], None);
    env.ok(&["project", "create", "KOD", "--name", "K"], None);
    let token = env.json(&["token", "create", "ci"], None)["token"].as_str().unwrap().to_owned();

    // A fresh config dir: nothing stored, everything from the environment.
    let bare = tempfile::tempdir().unwrap();
    let vars = [
        ("KODEL_CONFIG_DIR", bare.path().to_str().unwrap()),
        ("KODEL_TOKEN", token.as_str()),
        ("KODEL_ORG", "acme"),
        ("KODEL_PROJECT", "KOD"),
    ];
    let out = env.kodel_env(&["task", "create", "from a script"], None, &vars);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "KOD-1");
    assert!(std::fs::read_dir(bare.path()).unwrap().next().is_none(), "nothing written");
}

#[tokio::test]
async fn credentials_file_is_private_and_logout_clears_it() {
    use std::os::unix::fs::PermissionsExt;
    let env = Env::start().await;
    env.ok(&["register", "--email", "me@x.io", "--name", "Me", "--password-stdin"], Some("password123\n"));
    env.kodel(&["logout"], None);
    let out = env.kodel(&["login", "--email", "me@x.io", "--password-stdin"], Some("password123\n"));
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("credentials.json"));
    let path = env.config.path().join("credentials.json");
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(!text.contains("password123"));
    // Wrong password: exit 3, nothing changed.
    let out = env.kodel(&["login", "--email", "me@x.io", "--password-stdin"], Some("wrong-password\n"));
    assert_eq!(code(&out), 3);
    assert_eq!(std::fs::read_to_string(&path).unwrap(), text);

    assert!(env.kodel(&["whoami"], None).status.success());
    env.ok(&["logout"], None);
    assert!(!path.exists() || !std::fs::read_to_string(&path).unwrap().contains("refresh_token"));
    assert_eq!(code(&env.kodel(&["whoami"], None)), 3);
}

#[tokio::test]
async fn an_expired_access_token_is_refreshed_transparently() {
    let env = Env::start().await;
    env.ok(&["register", "--email", "me@x.io", "--name", "Me", "--password-stdin"], Some("password123\n"));
    let path = env.config.path().join("credentials.json");
    let mut creds: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let server = env.server.base.clone();
    let old_refresh = creds[&server]["refresh_token"].as_str().unwrap().to_owned();
    // Break the access token: the server refuses it, the client refreshes and retries.
    creds[&server]["access_token"] = Value::String("expired.or.broken".into());
    std::fs::write(&path, creds.to_string()).unwrap();
    let me = env.json(&["whoami"], None);
    assert_eq!(me["email"], "me@x.io");
    let creds: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    assert_ne!(creds[&server]["refresh_token"].as_str().unwrap(), old_refresh, "the rotated pair was saved");
}

/// `kodel task logs -f` keeps following across a server restart: what happened while it
/// was away comes once, in order, and so does what follows.
#[tokio::test]
async fn task_logs_follow_a_server_restart_without_missing_or_repeating() {
    let db = fresh_database().await;
    let url = database_url(&db);
    let listen = format!("127.0.0.1:{}", kodel_testkit::free_port());
    let server = ServerProcess::start_on(&server_binary(), &listen, &[], &[("DATABASE_URL", &url)]);
    let mut env = Env { server, config: tempfile::tempdir().unwrap() };
    env.ok(&["register", "--email", "me@x.io", "--name", "Me", "--password-stdin"], Some("password123\n"));
    env.ok(&["org", "create", "acme"], None);
    env.ok(&["project", "create", "KOD", "--name", "K"], None);
    env.ok(&["task", "create", "one"], None);
    let stderr = tempfile::NamedTempFile::new().unwrap();
    let mut logs = Command::new(env!("CARGO_BIN_EXE_kodel"))
        .args(["task", "logs", "KOD-1", "-f", "--json"])
        .env("KODEL_CONFIG_DIR", env.config.path())
        .env("KODEL_SERVER", &env.server.base)
        .env("KODEL_NO_KEYRING", "1")
        .env_remove("KODEL_TOKEN")
        .env_remove("KODEL_ORG")
        .env_remove("KODEL_PROJECT")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(stderr.reopen().unwrap())
        .spawn()
        .unwrap();
    let (tx, lines) = std::sync::mpsc::channel::<String>();
    let out = logs.stdout.take().unwrap();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let next = || -> Value { serde_json::from_str(&lines.recv_timeout(std::time::Duration::from_secs(30)).expect("a line from kodel task logs -f")).unwrap() };
    let mut seen = vec![next()];
    env.ok(&["task", "comment", "KOD-1"], Some("before the restart\n"));
    seen.push(next());
    // Stop the server under it, start it again where it was, and change the task at once
    // (before the follower is back: it waits between tries).
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(env.server.child.id() as i32), nix::sys::signal::Signal::SIGTERM).unwrap();
    assert!(env.server.child.wait().unwrap().success());
    env.server = ServerProcess::start_on(&server_binary(), &listen, &[], &[("DATABASE_URL", &url)]);
    env.ok(&["task", "comment", "KOD-1"], Some("while it was away\n"));
    env.ok(&["task", "move", "KOD-1", "In Progress"], None);
    seen.push(next());
    seen.push(next());
    env.ok(&["task", "comment", "KOD-1"], Some("after\n"));
    seen.push(next());
    let _ = logs.kill();
    let _ = logs.wait();
    let more: Vec<String> = lines.try_iter().collect();
    assert!(more.is_empty(), "nothing twice: {more:?}");
    // Each event by its number in the task, and a comment's text.
    let story: Vec<(i64, &str)> = seen.iter().map(|e| (e["seq"].as_i64().unwrap(), e["payload"]["body"].as_str().unwrap_or(""))).collect();
    assert_eq!(story, [(1, ""), (2, "before the restart"), (3, "while it was away"), (4, ""), (5, "after")]);
    assert_eq!(seen[3]["payload"]["to"], "In Progress");
    let said = std::fs::read_to_string(stderr.path()).unwrap();
    assert!(said.contains("reconnecting in"), "{said}");
}

#[tokio::test]
async fn engine_commands_through_the_real_binaries() {
    let env = Env::start().await;
    env.ok(&["register", "--email", "me@x.io", "--name", "Me", "--password-stdin"], Some("password123\n"));
    env.ok(&["org", "create", "acme", "--name", "Acme"], None);
    env.ok(&["project", "create", "KOD", "--name", "Kodel", "--workflow", "software-development"], None);

    // Workflows: show the built-in with its bindings; copy it; define one from stdin.
    let shown = env.ok(&["workflow", "show", "software development"], None);
    assert!(shown.contains("In Progress") && shown.contains("[job: implement-template, approve -> Code Review, reject -> Ready]"), "{shown}");
    let copy = env.json(&["workflow", "create", "--name", "Ours", "--from-template", "kanban"], None);
    assert_eq!(copy["statuses"].as_array().unwrap().len(), 3);
    let def = r#"{"name": "Tiny", "statuses": [{"name": "Open", "category": "unstarted"}, {"name": "Shut", "category": "done"}]}"#;
    let tiny = env.json(&["workflow", "create", "--file", "-"], Some(def));
    assert_eq!(tiny["statuses"][0]["next"], serde_json::json!(["Shut"]));
    let edited = env.json(&["workflow", "edit", "Tiny", "--file", "-"], Some(&def.replace("Shut", "Closed")));
    assert_eq!(edited["statuses"][1]["name"], "Closed");
    assert_eq!(env.ok(&["workflow", "list"], None).lines().count(), 3);

    // Job templates.
    let list = env.ok(&["template", "list"], None);
    assert!(list.lines().any(|l| l.starts_with("qa-template") && l.contains("qa")), "{list}");
    let t = env.json(&["template", "create", "docs", "--kind", "custom", "--prompt", "-", "--tools", "read_file,write_file"], Some("Write the docs\n"));
    assert_eq!((t["prompt"].as_str(), t["allowed_tools"].as_array().unwrap().len()), (Some("Write the docs"), 2));
    let t = env.json(&["template", "update", "docs", "--max-steps", "7"], None);
    assert_eq!(t["max_steps"], 7);

    // Jobs: a move into In Progress starts one; start and cancel by hand.
    env.ok(&["task", "create", "Dark mode"], None);
    env.ok(&["task", "move", "KOD-1", "Ready"], None);
    env.ok(&["task", "move", "KOD-1", "In Progress"], None);
    let jobs = env.json(&["job", "list", "--task", "KOD-1"], None);
    assert_eq!((jobs["data"][0]["kind"].as_str(), jobs["data"][0]["status"].as_str()), (Some("implement"), Some("pending")));
    let started = env.json(&["job", "start", "KOD-1", "--template", "docs"], None);
    let id = started["id"].as_str().unwrap();
    let cancelled = env.json(&["job", "cancel", id], None);
    assert_eq!(cancelled["status"], "cancelled");
    let out = env.kodel(&["job", "cancel", id], None);
    assert_eq!(code(&out), 5, "a finished job: conflict");
    let human = env.ok(&["job", "list", "--status", "pending"], None);
    assert_eq!(human.lines().count(), 1, "{human}");
    assert_eq!(env.json(&["artifact", "list", "--task", "KOD-1"], None)["data"], serde_json::json!([]));
    let out = env.kodel(&["artifact", "approve", "01a21f08-1848-766b-a694-e84ca7bc23ea"], None);
    assert_eq!(code(&out), 4, "unknown artifact: not found");

    // Rules from a JSON file; disable; list.
    let rule_file = env.config.path().join("rule.json");
    std::fs::write(&rule_file, r#"{"name": "tag bugs", "trigger": {"type": "task_created"}, "conditions": [{"title_matches": "(?i)bug"}], "actions": [{"add_label": "bug"}]}"#).unwrap();
    let rule = env.json(&["rule", "create", "--file", rule_file.to_str().unwrap()], None);
    assert_eq!(rule["project"], "KOD");
    let t = env.json(&["task", "create", "Login BUG"], None);
    assert_eq!(t["labels"], serde_json::json!(["bug"]));
    env.ok(&["rule", "disable", rule["id"].as_str().unwrap()], None);
    assert!(env.ok(&["rule", "list"], None).contains("disabled"));
    std::fs::write(&rule_file, r#"{"name": "x", "trigger": {"type": "schedule", "cron": "nope"}, "actions": [{"add_label": "x"}]}"#).unwrap();
    let out = env.kodel(&["rule", "create", "--file", rule_file.to_str().unwrap()], None);
    assert_eq!(code(&out), 7, "invalid: {}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cron"));

    // Modules: the secret comes from stdin and never comes back.
    let m = env.ok(&["module", "add", "api", "https://git.example.com/api.git", "--username", "bot", "--secret-stdin", "--json"], Some("s3cr3t-token\n"));
    assert!(!m.contains("s3cr3t"), "{m}");
    let listed = env.ok(&["module", "list"], None);
    assert!(listed.contains("api") && listed.contains("yes") && !listed.contains("s3cr3t"), "{listed}");
    let out = env.kodel(&["module", "add", "web", "https://x/y.git", "--username", "bot"], None);
    assert_eq!(code(&out), 2);
    // Pull requests: github.com is known from the URL, a self-hosted forge is named.
    let gh = env.json(&["module", "add", "app", "https://github.com/acme/app.git"], None);
    assert_eq!(gh["forge"], "github");
    let own = env.json(&["module", "add", "own", "https://git.corp.example/team/own.git", "--forge", "gitlab", "--forge-api-url", "https://git.corp.example/api/v4"], None);
    assert_eq!((own["forge"].as_str(), own["forge_api_url"].as_str()), (Some("gitlab"), Some("https://git.corp.example/api/v4")));
    assert!(env.ok(&["module", "list"], None).contains("gitlab"));
    let out = env.kodel(&["module", "update", own["id"].as_str().unwrap(), "--forge-api-url", "ftp://nope"], None);
    assert_eq!(code(&out), 7, "{}", String::from_utf8_lossy(&out.stderr));
    let own = env.json(&["module", "update", own["id"].as_str().unwrap(), "--forge", "auto"], None);
    assert_eq!(own["forge"], Value::Null, "no forge known for that host");

    // Instance templates and agents.
    let it_file = env.config.path().join("it.json");
    std::fs::write(&it_file, r#"{"name": "rust", "base_image": "debian:12", "packages": ["git"]}"#).unwrap();
    env.ok(&["instance-template", "create", "--file", it_file.to_str().unwrap()], None);
    assert!(env.ok(&["instance-template", "list"], None).contains("debian:12 (container)"));
    let shown = env.ok(&["instance-template", "show", "rust"], None);
    assert!(shown.contains("runs in debian:12 (container)") && shown.contains("No agent can run its jobs now") && shown.contains("no agents"), "{shown}");
    // Checked before it is sent: the bad field is named, exit 2.
    let out = env.kodel(&["instance-template", "create", "--file", "-"], Some(r#"{"name": "bad", "base_image": "debian 12"}"#));
    assert_eq!(code(&out), 2, "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("base_image \"debian 12\" is not an image reference"), "{}", String::from_utf8_lossy(&out.stderr));
    let out = env.kodel(&["instance-template", "create", "--file", "-"], Some(r#"{"name": "bad", "image": "debian:12"}"#));
    assert_eq!(code(&out), 2, "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown field `image`"), "{}", String::from_utf8_lossy(&out.stderr));
    let it = env.json(&["instance-template", "update", "rust", "--file", "-"], Some(r#"{"network": true}"#));
    assert_eq!(it["network"], true);
    let p = env.json(&["project", "update", "KOD", "--instance-template", "rust"], None);
    assert_eq!(p["instance_template"], "rust");
    assert!(env.ok(&["project", "show", "KOD"], None).contains("instance template: rust"));
    let p = env.json(&["project", "update", "KOD", "--instance-template", "none"], None);
    assert_eq!(p["instance_template"], serde_json::Value::Null);
    let id = serde_json::from_str::<Value>(&m).unwrap()["id"].as_str().unwrap().to_owned();
    let m = env.json(&["module", "update", &id, "--no-credentials", "--branch", "develop"], None);
    assert_eq!((m["has_credentials"].as_bool(), m["default_branch"].as_str()), (Some(false), Some("develop")));
    let r = env.json(&["rule", "update", rule["id"].as_str().unwrap(), "--file", "-"], Some(r#"{"name": "renamed"}"#));
    assert_eq!(r["name"], "renamed");
    assert_eq!(env.json(&["agent", "list"], None)["data"], serde_json::json!([]));
}

#[tokio::test]
async fn agent_tokens_through_the_real_binaries() {
    let env = Env::start().await;
    env.ok(&["register", "--email", "ops@x.io", "--name", "Ops", "--password-stdin"], Some("password123\n"));
    env.ok(&["org", "create", "acme", "--name", "Acme"], None);
    // The token alone on stdout, so scripts can capture it.
    let out = env.kodel(&["agent", "token", "create", "build-box"], None);
    let (token, err) = (String::from_utf8_lossy(&out.stdout).trim().to_owned(), String::from_utf8_lossy(&out.stderr).into_owned());
    assert!(token.starts_with("kodel_agt_") && !token.contains(' '), "stdout {token:?} stderr {err:?}");
    let token = token.as_str();
    let list = env.json(&["agent", "token", "list"], None);
    let id = list["data"][0]["id"].as_str().unwrap().to_owned();
    assert_eq!(list["data"][0]["name"], "build-box");
    assert!(!list.to_string().contains(token));
    assert_eq!(env.json(&["agent", "list"], None)["data"], serde_json::json!([]), "no agent has connected yet");

    // Project settings for AI jobs: the QA command, and review rules from stdin.
    env.ok(&["project", "create", "KOD", "--name", "Kodel", "--workflow", "software-development"], None);
    let p = env.json(&["project", "update", "KOD", "--test-command", "cargo test", "--review-rules", "-"], Some("Small diffs only.\n"));
    assert_eq!((p["test_command"].as_str(), p["review_rules"].as_str()), (Some("cargo test"), Some("Small diffs only.")));
    assert!(env.ok(&["project", "show", "KOD"], None).contains("test command: cargo test"));
    let p = env.json(&["project", "update", "KOD", "--test-command", "none"], None);
    assert_eq!(p["test_command"], serde_json::Value::Null);
    env.ok(&["agent", "token", "revoke", &id], None);
    assert_eq!(env.json(&["agent", "token", "list"], None)["data"].as_array().unwrap().len(), 0);

    // The org's own provider key: piped in, never shown again.
    env.ok(&["provider", "set", "anthropic", "--key-stdin"], Some("sk-ant-org-key\n"));
    let list = env.json(&["provider", "list"], None);
    assert_eq!(list["data"][0]["provider"], "anthropic");
    assert_eq!(list["data"][0]["has_key"], true);
    assert!(!list.to_string().contains("sk-ant-org-key"));
    assert!(env.ok(&["provider", "list"], None).contains("anthropic  set"));
    let bad = env.kodel(&["provider", "set", "bard", "--key-stdin"], Some("x\n"));
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("not one of openai, anthropic"));
    env.ok(&["provider", "remove", "anthropic"], None);
    assert_eq!(env.json(&["provider", "list"], None)["data"], serde_json::json!([]));
    let none = env.kodel(&["provider", "list"], None);
    assert!(none.status.success() && none.stdout.is_empty(), "nothing on stdout for scripts");
    assert!(String::from_utf8_lossy(&none.stderr).contains("no provider is set for this org"));
}

#[test]
fn shell_completions_cover_the_commands() {
    for shell in ["bash", "zsh", "fish"] {
        let out = Command::new(env!("CARGO_BIN_EXE_kodel")).args(["completions", shell]).env("KODEL_NO_KEYRING", "1").output().unwrap();
        assert!(out.status.success(), "{shell}");
        let script = String::from_utf8(out.stdout).unwrap();
        for word in ["kodel", "task", "logs", "agent", "provider"] {
            assert!(script.contains(word), "{shell} completions lack {word}");
        }
    }
    // Piped into a reader that stops early (`| head -1`): no panic, no message.
    let mut child = Command::new(env!("CARGO_BIN_EXE_kodel"))
        .args(["completions", "bash"])
        .env("KODEL_NO_KEYRING", "1")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked") && stderr.is_empty(), "{stderr}");
    let bad = Command::new(env!("CARGO_BIN_EXE_kodel")).args(["completions", "tcsh"]).output().unwrap();
    assert_eq!(code(&bad), 2, "an unknown shell is a usage error");
}

/// `kodel usage` and `kodel price`: an org's calls through the gateway, costed at a
/// price the org set, summed by model, for people and for scripts.
#[tokio::test]
async fn usage_and_prices_from_the_cli() {
    let llm = kodel_testkit::scripted_llm::ScriptedLlm::start(vec![]).await;
    let db = fresh_database().await;
    let server = ServerProcess::start(
        &server_binary(),
        &[],
        &[("DATABASE_URL", &database_url(&db)), ("OPENAI_BASE_URL", &llm.openai_base()), ("OPENAI_API_KEY", "sk-test"), ("KODEL_DEFAULT_MODEL", "openai/house-model")],
    );
    let env = Env { server, config: tempfile::tempdir().unwrap() };
    env.ok(&["register", "--email", "cost@x.io", "--name", "Cost", "--password-stdin"], Some("password123\n"));
    env.ok(&["org", "create", "spend", "--name", "Spend"], None);
    let none = env.kodel(&["usage"], None);
    assert!(none.status.success() && none.stdout.is_empty(), "{}", String::from_utf8_lossy(&none.stdout));
    assert!(String::from_utf8_lossy(&none.stderr).contains("no LLM calls"));

    // A model nobody priced yet, then priced by the org.
    let token = env.json(&["token", "create", "gateway"], None)["token"].as_str().unwrap().to_owned();
    let http = reqwest::Client::new();
    let call = || {
        http.post(format!("{}/v1/chat/completions", env.server.base))
            .bearer_auth(&token)
            .json(&serde_json::json!({"model": "house-model", "messages": [{"role": "user", "content": "hi"}]}))
            .send()
    };
    assert_eq!(call().await.unwrap().status(), 200);
    let text = env.ok(&["usage", "--by", "model"], None);
    assert!(text.contains("openai/house-model") && text.contains("$0.0000+"), "{text}");
    env.ok(&["price", "set", "openai", "house-model", "--input", "1000", "--output", "1000"], None);
    assert_eq!(call().await.unwrap().status(), 200);
    let report = env.json(&["usage", "--by", "model"], None);
    let row = &report["data"][0];
    assert_eq!((row["calls"].as_u64(), row["unpriced_calls"].as_u64()), (Some(2), Some(1)), "{report}");
    assert!(row["cost"].as_f64().unwrap() > 0.0, "{report}");
    assert!(env.ok(&["price", "list"], None).lines().any(|l| l.starts_with("openai") && l.contains("house-model") && l.contains("org")));
    env.ok(&["price", "unset", "openai", "house-model"], None);
    let gone = env.kodel(&["price", "unset", "openai", "house-model"], None);
    assert_eq!(code(&gone), 4, "not found: {}", String::from_utf8_lossy(&gone.stderr));
    let bad = env.kodel(&["usage", "--from", "last week"], None);
    assert!(!bad.status.success() && String::from_utf8_lossy(&bad.stderr).contains("not a date"));
}
