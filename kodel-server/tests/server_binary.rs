//! The real `kodel-server` binary: the managed PostgreSQL, restarts on the same data,
//! a clean error without PostgreSQL binaries, and no secrets in its log.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::start_server;
use serde_json::{Value, json};

async fn post(base: &str, path: &str, token: Option<&str>, body: Value) -> (u16, Value) {
    let mut req = reqwest::Client::new().post(format!("{base}{path}")).json(&body);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let r = req.send().await.unwrap();
    (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn managed_database_starts_serves_and_restarts_on_the_same_data() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let data_arg = data.to_str().unwrap();

    let server = start_server(&["--data-dir", data_arg], &[]);
    let (s, v) = post(&server.base, "/api/v1/auth/register", None, json!({"email": "m@x.io", "password": "longenough", "name": "M"})).await;
    assert_eq!(s, 202, "{v}");
    let (s, v) = post(&server.base, "/api/v1/auth/login", None, json!({"email": "m@x.io", "password": "longenough"})).await;
    assert_eq!(s, 200, "{v}");
    let token = v["access_token"].as_str().unwrap().to_owned();
    assert_eq!(post(&server.base, "/api/v1/orgs", Some(&token), json!({"slug": "home", "name": "Home"})).await.0, 201);
    assert!(data.join("postgres/PG_VERSION").exists());
    // Only a unix socket: the cluster does not listen on TCP.
    let conf = std::fs::read_to_string(data.join("postgres/kodel.conf")).unwrap();
    assert!(conf.contains("listen_addresses = ''"));

    // A second server on the same data dir is refused while the first runs.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_kodel-server"))
        .args(["--listen", "127.0.0.1:0", "--data-dir", data_arg])
        .env_remove("DATABASE_URL")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("already using"));

    let status = server.stop();
    assert!(status.success(), "clean shutdown: {status:?}");
    assert!(!data.join("postgres/postmaster.pid").exists(), "the managed PostgreSQL stopped with the server");

    // Restart: same data, same signing key (the old access token still works).
    let server = start_server(&["--data-dir", data_arg], &[]);
    let r = reqwest::Client::new().get(format!("{}/api/v1/orgs", server.base)).bearer_auth(&token).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let orgs: Value = r.json().await.unwrap();
    assert_eq!(orgs["data"][0]["slug"], "home");
    let (s, _) = post(&server.base, "/api/v1/auth/login", None, json!({"email": "m@x.io", "password": "longenough"})).await;
    assert_eq!(s, 200);
    assert!(server.stop().success());
}

#[test]
fn without_postgresql_binaries_it_says_how_to_install_them() {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_kodel-server"))
        .args(["--listen", "127.0.0.1:0", "--data-dir", dir.path().to_str().unwrap()])
        .env_remove("DATABASE_URL")
        .env("KODEL_PG_BINDIR", dir.path())
        .env("PATH", dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    let last = err.trim().lines().last().unwrap_or("");
    assert!(last.contains("apt-get install postgresql"), "{err}");
    assert!(last.contains("DATABASE_URL"), "{err}");
}

#[tokio::test]
async fn passwords_and_tokens_never_reach_the_log() {
    let db = common::fresh_database().await;
    let url = kodel_testkit::database_url(&db);
    // The most verbose level: nothing logged at any level may carry a secret.
    let server = start_server(&[], &[("DATABASE_URL", &url), ("RUST_LOG", "trace")]);
    let password = "s3cret-Password-XYZ";
    post(&server.base, "/api/v1/auth/register", None, json!({"email": "p@x.io", "password": password, "name": "P"})).await;
    let (_, v) = post(&server.base, "/api/v1/auth/login", None, json!({"email": "p@x.io", "password": password})).await;
    let access = v["access_token"].as_str().unwrap().to_owned();
    let refresh = v["refresh_token"].as_str().unwrap().to_owned();
    post(&server.base, "/api/v1/auth/login", None, json!({"email": "p@x.io", "password": "wrong-password-123"})).await;
    let (_, t) = post(&server.base, "/api/v1/tokens", Some(&access), json!({"name": "x"})).await;
    let pat = t["token"].as_str().unwrap().to_owned();
    reqwest::Client::new().get(format!("{}/api/v1/me", server.base)).bearer_auth(&pat).send().await.unwrap();
    post(&server.base, "/api/v1/auth/refresh", None, json!({"refresh_token": refresh})).await;
    let log = server.log();
    assert!(log.contains("/api/v1/auth/login"), "the log has the requests:\n{log}");
    for secret in [password, "wrong-password-123", &access, &refresh, &pat] {
        assert!(!log.contains(secret), "log contains a secret");
    }
}

/// A new account that owns org `slug` with project `key`; its access token.
async fn owner_with_project(base: &str, email: &str, slug: &str, key: &str) -> String {
    post(base, "/api/v1/auth/register", None, json!({"email": email, "password": "longenough", "name": email})).await;
    let (_, v) = post(base, "/api/v1/auth/login", None, json!({"email": email, "password": "longenough"})).await;
    let token = v["access_token"].as_str().unwrap().to_owned();
    assert_eq!(post(base, "/api/v1/orgs", Some(&token), json!({"slug": slug, "name": slug})).await.0, 201);
    assert_eq!(post(base, &format!("/api/v1/orgs/{slug}/projects"), Some(&token), json!({"key": key, "name": key})).await.0, 201);
    token
}

/// `pg_ctl ARGS` on the managed cluster in `data` (as the postgres user under root).
fn pg_ctl(data: &std::path::Path, args: &[&str]) {
    let bindir = std::fs::read_dir("/usr/lib/postgresql")
        .ok()
        .and_then(|d| d.filter_map(Result::ok).map(|e| e.path().join("bin")).filter(|b| b.join("pg_ctl").exists()).max())
        .unwrap_or_default();
    let pg_ctl = bindir.join("pg_ctl");
    let pgdata = data.join("postgres");
    let mut cmd = if nix::unistd::geteuid().is_root() {
        let mut c = std::process::Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(&pg_ctl);
        c
    } else {
        std::process::Command::new(&pg_ctl)
    };
    let out = cmd.arg("-D").arg(&pgdata).args(args).current_dir(data).output().unwrap();
    assert!(out.status.success(), "pg_ctl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_the_database_is_down_every_request_answers_503_in_bounded_time() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let server = start_server(&["--data-dir", data.to_str().unwrap()], &[("KODEL_DB_TIMEOUT", "1")]);
    let base = server.base.clone();
    let token = owner_with_project(&base, "d@x.io", "down", "DN").await;

    pg_ctl(&data, &["-m", "immediate", "-w", "stop"]);
    let http = reqwest::Client::new();
    // Readiness says so at once.
    let started = std::time::Instant::now();
    let r = http.get(format!("{base}/readyz")).send().await.unwrap();
    assert_eq!(r.status(), 503);
    assert!(started.elapsed() < std::time::Duration::from_secs(2), "{:?}", started.elapsed());
    // A read, a write, a task creation (queued for group commit), all at once: each a
    // 503 database_unavailable with Retry-After, within the timeout and a margin.
    let read = http.get(format!("{base}/api/v1/orgs/down/projects")).bearer_auth(&token).send();
    let write = http.post(format!("{base}/api/v1/orgs/down/projects")).bearer_auth(&token).json(&json!({"key": "NEW", "name": "New"})).send();
    let create = http.post(format!("{base}/api/v1/orgs/down/projects/DN/tasks")).bearer_auth(&token).json(&json!({"title": "while down"})).send();
    let started = std::time::Instant::now();
    let (read, write, create) = tokio::join!(read, write, create);
    for (what, r) in [("read", read), ("write", write), ("create", create)] {
        let r = r.unwrap();
        let (status, retry) = (r.status().as_u16(), r.headers().get("retry-after").map(|v| v.to_str().unwrap().to_owned()));
        let v: Value = r.json().await.unwrap_or(Value::Null);
        assert_eq!((status, v["error"]["code"].as_str()), (503, Some("database_unavailable")), "{what}: {v}");
        assert!(retry.is_some(), "{what}: Retry-After");
    }
    assert!(started.elapsed() < std::time::Duration::from_secs(8), "bounded: {:?}", started.elapsed());

    // Back by itself once the database is.
    pg_ctl(&data, &["-w", "-l", data.join("postgres.log").to_str().unwrap(), "start"]);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let (s, v) = post(&base, "/api/v1/orgs/down/projects/DN/tasks", Some(&token), json!({"title": "after"})).await;
        if s == 201 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "not back: {s} {v}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(server.stop().success());
}

/// Sends `signal` to the managed cluster's postmaster and every process it started.
fn signal_postgres(data: &std::path::Path, signal: nix::sys::signal::Signal) {
    let pid_file = std::fs::read_to_string(data.join("postgres/postmaster.pid")).unwrap();
    let postmaster: i32 = pid_file.lines().next().unwrap().trim().parse().unwrap();
    let children = std::process::Command::new("pgrep").args(["-P", &postmaster.to_string()]).output().unwrap();
    let mut pids: Vec<i32> = String::from_utf8_lossy(&children.stdout).lines().filter_map(|l| l.trim().parse().ok()).collect();
    pids.push(postmaster);
    for pid in pids {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), signal);
    }
}

/// A database that keeps its connections open but answers nothing (a stalled host):
/// org-scoped requests still answer 503 within the timeout instead of hanging.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_database_answers_503_in_bounded_time() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let server = start_server(&["--data-dir", data.to_str().unwrap()], &[("KODEL_DB_TIMEOUT", "1")]);
    let base = server.base.clone();
    let token = owner_with_project(&base, "s@x.io", "stall", "ST").await;

    // A web session, made before the database stalls.
    let http = reqwest::Client::builder().timeout(std::time::Duration::from_secs(30)).redirect(reqwest::redirect::Policy::none()).build().unwrap();
    let signed_in = http
        .post(format!("{base}/login"))
        .header("origin", &base)
        .form(&[("email", "s@x.io"), ("password", "longenough")])
        .send()
        .await
        .unwrap();
    assert_eq!(signed_in.status(), 303);
    let cookie = signed_in.headers()["set-cookie"].to_str().unwrap().split(';').next().unwrap().to_owned();

    signal_postgres(&data, nix::sys::signal::Signal::SIGSTOP);
    let read = http.get(format!("{base}/api/v1/orgs/stall/projects")).bearer_auth(&token).send();
    let write = http.post(format!("{base}/api/v1/orgs/stall/projects")).bearer_auth(&token).json(&json!({"key": "NEW", "name": "New"})).send();
    let create = http.post(format!("{base}/api/v1/orgs/stall/projects/ST/tasks")).bearer_auth(&token).json(&json!({"title": "while stalled"})).send();
    // Requests outside any org: the caller's check, a login, a web page.
    let orgs = http.get(format!("{base}/api/v1/orgs")).bearer_auth(&token).send();
    let login = http.post(format!("{base}/api/v1/auth/login")).json(&json!({"email": "s@x.io", "password": "longenough"})).send();
    let page = http.get(format!("{base}/")).header("cookie", &cookie).send();
    let started = std::time::Instant::now();
    let (read, write, create, orgs, login, page) = tokio::join!(read, write, create, orgs, login, page);
    let elapsed = started.elapsed();
    signal_postgres(&data, nix::sys::signal::Signal::SIGCONT);
    for (what, r) in [("read", read), ("write", write), ("create", create), ("org list", orgs), ("login", login)] {
        let r = r.unwrap_or_else(|e| panic!("{what}: no answer: {e}"));
        let status = r.status().as_u16();
        let v: Value = r.json().await.unwrap_or(Value::Null);
        assert_eq!((status, v["error"]["code"].as_str()), (503, Some("database_unavailable")), "{what}: {v}");
    }
    let page = page.unwrap_or_else(|e| panic!("web page: no answer: {e}"));
    assert_eq!(page.status(), 503, "the web page says the database is away");
    assert!(elapsed < std::time::Duration::from_secs(8), "bounded: {elapsed:?}");

    // Once the database answers again, so does the server.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let (s, v) = post(&base, "/api/v1/orgs/stall/projects/ST/tasks", Some(&token), json!({"title": "after"})).await;
        if s == 201 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "not back: {s} {v}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(server.stop().success());
}
