//! What one client may hold or try: password guessing per account and per address,
//! password hashing that cannot exhaust memory, event streams per user and per org,
//! streams that end with their access token, and clients that never finish their
//! request headers.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::{TestApp, code, start_server, test_config};
use kodel_server::config::Limits;
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn login(app: &TestApp, email: &str, password: &str) -> (StatusCode, Option<u64>, Value) {
    let resp = app.http.post(format!("{}/api/v1/auth/login", app.base)).json(&json!({"email": email, "password": password})).send().await.unwrap();
    let status = resp.status();
    let retry_after = resp.headers().get("retry-after").and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok());
    (status, retry_after, resp.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn password_guessing_is_limited_per_account_and_per_address() {
    let limits = Limits { login_per_address: 10, login_per_account: 3, ..Limits::default() };
    let app = TestApp::spawn_with(common::fresh_database().await, kodel_server::Config { limits, ..test_config() }).await;
    for email in ["ann@x.io", "bob@x.io"] {
        let (s, v) = app.call(reqwest::Method::POST, "/api/v1/auth/register", None, Some(json!({"email": email, "password": "correct horse", "name": email}))).await;
        assert_eq!(s, StatusCode::ACCEPTED, "{v}");
    }
    // Three wrong passwords lock Ann's logins for the window, the right one included.
    for _ in 0..3 {
        assert_eq!(login(&app, "ann@x.io", "guess-guess").await.0, StatusCode::UNAUTHORIZED);
    }
    let (s, retry, v) = login(&app, "ANN@x.io", "correct horse").await;
    assert_eq!((s, code(&v)), (StatusCode::TOO_MANY_REQUESTS, "too_many_requests"), "{v}");
    assert!(retry.is_some_and(|r| (1..=900).contains(&r)), "Retry-After says when: {retry:?}");
    // A good password clears an account's failures.
    for _ in 0..2 {
        assert_eq!(login(&app, "bob@x.io", "guess-guess").await.0, StatusCode::UNAUTHORIZED);
    }
    assert_eq!(login(&app, "bob@x.io", "correct horse").await.0, StatusCode::OK);
    for _ in 0..2 {
        assert_eq!(login(&app, "bob@x.io", "guess-guess").await.0, StatusCode::UNAUTHORIZED, "the count started again");
    }
    // The address has made 10 attempts now (2 registrations, 8 logins; the one refused
    // for Ann's account did not count): the next is refused, whatever the account.
    let (s, retry, v) = login(&app, "nobody@x.io", "guess-guess").await;
    assert_eq!(s, StatusCode::TOO_MANY_REQUESTS, "{v}");
    assert!(v["error"]["message"].as_str().unwrap().contains("address"), "{v}");
    assert!(retry.is_some_and(|r| (1..=60).contains(&r)), "{retry:?}");
    let (s, v) = app.call(reqwest::Method::POST, "/api/v1/auth/register", None, Some(json!({"email": "c@x.io", "password": "correct horse", "name": "c"}))).await;
    assert_eq!(s, StatusCode::TOO_MANY_REQUESTS, "registrations count too: {v}");
}

/// 96 logins at once used to take ~19 MiB of argon2 memory each, all together; now a
/// few are hashed at a time and the server's peak memory stays small.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_logins_does_not_exhaust_memory() {
    let db = common::fresh_database().await;
    let url = kodel_testkit::database_url(&db);
    let server = start_server(&[], &[("DATABASE_URL", &url), ("KODEL_LOGIN_PER_ADDRESS", "100000")]);
    let pid = server.child.id();
    let http = reqwest::Client::new();
    let r = http.post(format!("{}/api/v1/auth/register", server.base)).json(&json!({"email": "m@x.io", "password": "correct horse", "name": "M"})).send().await.unwrap();
    assert_eq!(r.status(), 202);
    let hwm = |pid: u32| -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        status.lines().find(|l| l.starts_with("VmHWM:")).and_then(|l| l.split_whitespace().nth(1)).unwrap().parse().unwrap()
    };
    let before = hwm(pid);
    let burst: Vec<_> = (0..96)
        .map(|i| {
            let (http, base) = (http.clone(), server.base.clone());
            tokio::spawn(async move {
                let body = json!({"email": format!("u{i}@x.io"), "password": "not the password"});
                http.post(format!("{base}/api/v1/auth/login")).json(&body).send().await.unwrap().status()
            })
        })
        .collect();
    for b in burst {
        let status = b.await.unwrap();
        assert!(status == 401 || status == 503, "each login is answered: {status}");
    }
    let peak = hwm(pid);
    eprintln!("server peak RSS {before} KiB before, {peak} KiB after 96 logins at once");
    assert!(peak < before + 200 * 1024, "96 logins at once took {} MiB", (peak - before) / 1024);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_are_bounded_per_user_and_org_and_end_with_their_access_token() {
    let limits = Limits { streams_per_user: 3, streams_per_org: 5, ..test_config().limits };
    let app = TestApp::spawn_with(common::fresh_database().await, kodel_server::Config { limits, ..test_config() }).await;
    let ann = app.owner_with_project("ann@x.io", "acme", "KOD").await;
    let bob = app.register("bob@x.io").await;
    app.post("/api/v1/orgs/acme/members", &ann, json!({"email": "bob@x.io", "role": "admin"})).await;
    let open = |token: String| {
        let (http, base) = (app.http.clone(), app.base.clone());
        async move { http.get(format!("{base}/api/v1/orgs/acme/events")).bearer_auth(token).send().await.unwrap() }
    };
    let mut anns = Vec::new();
    for _ in 0..3 {
        let r = open(ann.clone()).await;
        assert_eq!(r.status(), 200);
        anns.push(r);
    }
    let r = open(ann.clone()).await;
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS, "a fourth stream of one user");
    let mut bobs = Vec::new();
    for _ in 0..2 {
        let r = open(bob.clone()).await;
        assert_eq!(r.status(), 200);
        bobs.push(r);
    }
    let r = open(bob.clone()).await;
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS, "a sixth stream of the org");
    // A closed stream frees its place.
    drop(anns.pop());
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = open(ann.clone()).await;
        if r.status() == 200 {
            anns.push(r);
            break;
        }
        assert!(Instant::now() < deadline, "the closed stream's place was not freed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(anns);
    drop(bobs);

    // A stream opened with an access token ends when the token expires.
    let claims = app.server.state.jwt.verify(&ann).unwrap();
    let short = app.server.state.jwt.issue_for(claims.sub, claims.sid, 2).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut stream = loop {
        let resp = app.http.get(format!("{}/api/v1/orgs/acme/events", app.base)).bearer_auth(&short).send().await.unwrap();
        if resp.status() == 200 {
            break resp;
        }
        assert!(Instant::now() < deadline, "{}", resp.status());
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let opened = Instant::now();
    let ended = tokio::time::timeout(Duration::from_secs(10), async {
        while let Ok(Some(_)) = stream.chunk().await {}
    })
    .await;
    assert!(ended.is_ok(), "the stream outlived its access token by 10 s");
    assert!(opened.elapsed() < Duration::from_secs(8), "{:?}", opened.elapsed());
}

/// A client that never finishes its request headers, sends nothing at all, or speaks
/// HTTP/2 is cut off, not kept.
#[tokio::test]
async fn unfinished_request_headers_are_cut_off() {
    let app = TestApp::spawn().await;
    let addr = app.base.trim_start_matches("http://").to_owned();
    let opening: [&[u8]; 3] = [b"GET /healthz HTTP/1.1\r\nhost: x\r\nx-slow: ", b"", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"];
    let closes = opening.map(|bytes| {
        let addr = addr.clone();
        async move {
            let mut sock = tokio::net::TcpStream::connect(&addr).await.unwrap();
            sock.write_all(bytes).await.unwrap();
            let started = Instant::now();
            let mut buf = [0u8; 256];
            let closed = tokio::time::timeout(kodel_server::serve::HEADER_READ_TIMEOUT + Duration::from_secs(10), async {
                loop {
                    match sock.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(_) => {}
                    }
                }
            })
            .await;
            (closed.is_ok(), started.elapsed())
        }
    });
    for (i, (closed, after)) in futures::future::join_all(closes).await.into_iter().enumerate() {
        assert!(closed, "connection {i} was still open after {after:?}");
        if i < 2 {
            assert!(after >= kodel_server::serve::HEADER_READ_TIMEOUT - Duration::from_secs(1), "connection {i} closed early: {after:?}");
        }
    }
}

/// Adding a member by email says when nobody registered it; that answer is rationed,
/// so an org of one's own is no way to test emails by the thousand.
#[tokio::test]
async fn emails_without_an_account_can_be_named_only_so_often() {
    let app = TestApp::spawn().await;
    let owner = app.owner_with_project("o@x.io", "acme", "KOD").await;
    app.register("real@x.io").await;
    let limit = kodel_server::auth::limits::LOOKUPS_PER_HOUR;
    for i in 0..limit {
        let (s, v) = app.post("/api/v1/orgs/acme/members", &owner, json!({"email": format!("ghost{i}@x.io"), "role": "member"})).await;
        assert_eq!((s, code(&v)), (StatusCode::NOT_FOUND, "user_not_found"));
    }
    let (s, v) = app.post("/api/v1/orgs/acme/members", &owner, json!({"email": "ghost-more@x.io", "role": "member"})).await;
    assert_eq!((s, code(&v)), (StatusCode::TOO_MANY_REQUESTS, "too_many_requests"), "{v}");
    // Registered people can still be added.
    let (s, v) = app.post("/api/v1/orgs/acme/members", &owner, json!({"email": "real@x.io", "role": "member"})).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
}
