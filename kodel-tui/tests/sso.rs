//! Single sign-on end to end: the real server, a real OpenID provider (npm's
//! oidc-provider, kodel-testkit/web/oidc_provider.mjs), a real browser for the person's
//! part, and the real `kodel` binary for the terminal's.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use kodel_testkit::web::{OidcProvider, run, screenshots};
use kodel_testkit::{ServerProcess, api, database_url, free_port, fresh_database, register, sibling_binary};
use serde_json::{Value, json};

fn server_binary() -> PathBuf {
    sibling_binary(env!("CARGO_BIN_EXE_kodel"), "kodel-server")
}

/// A server with SSO set up against `provider`, listening on `listen`, with an org
/// `acme` owned by a password user (so the provider's `kodel_orgs` claim has one to join).
async fn server(listen: &str, provider: &OidcProvider, extra: &[(&str, &str)]) -> (ServerProcess, String) {
    let db = fresh_database().await;
    let url = database_url(&db);
    let public = format!("http://{listen}");
    let mut env = vec![
        ("DATABASE_URL", url.as_str()),
        ("KODEL_PUBLIC_URL", public.as_str()),
        ("KODEL_OIDC_ISSUER", provider.issuer.as_str()),
        ("KODEL_OIDC_CLIENT_ID", provider.client_id.as_str()),
        ("KODEL_OIDC_CLIENT_SECRET", provider.client_secret.as_str()),
        ("KODEL_OIDC_NAME", "Test IdP"),
        ("KODEL_OIDC_ORG_CLAIM", "kodel_orgs"),
    ];
    env.extend_from_slice(extra);
    let server = ServerProcess::start_on(&server_binary(), listen, &[], &env);
    let owner = register(&server.base, "owner@example.com").await;
    api(&reqwest::Client::new(), &server.base, &owner, "POST", "/api/v1/orgs", json!({"slug": "acme", "name": "Acme"})).await;
    (server, owner)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_person_signs_in_to_the_web_view_through_the_identity_provider() {
    let listen = format!("127.0.0.1:{}", free_port());
    let provider = OidcProvider::start(&format!("http://{listen}/sso/callback"), "pat@example.com", true, &["acme", "no_such_org"]);
    let (server, owner) = server(&listen, &provider, &[]).await;
    let shots = screenshots("sso");
    let ran = run(
        "sso.mjs",
        &[("MODE", "web".into()), ("BASE", server.base.clone()), ("LOGIN", provider.login.clone()), ("PASSWORD", provider.password.clone()), ("SHOTS", shots.display().to_string())],
        Duration::from_secs(120),
    )
    .await;
    assert!(ran.ok, "{}\n{}\nserver log:\n{}", ran.stdout, ran.stderr, server.log());
    let seen = ran.json();
    // A new account, made at the first sign-in, a member of the org the claim names.
    assert_eq!(seen["email"], "pat@example.com", "{seen}");
    assert_eq!(seen["orgs"], json!(["acme"]), "{seen}");
    let members = api(&reqwest::Client::new(), &server.base, &owner, "GET", "/api/v1/orgs/acme/members", Value::Null).await;
    let pat = members["data"].as_array().unwrap().iter().find(|m| m["email"] == "pat@example.com").expect("pat joined acme");
    assert_eq!(pat["role"], "member");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kodel_login_sso_completes_the_device_flow_and_stores_tokens() {
    let listen = format!("127.0.0.1:{}", free_port());
    let provider = OidcProvider::start(&format!("http://{listen}/sso/callback"), "owner@example.com", true, &[]);
    let (server, _) = server(&listen, &provider, &[]).await;
    let config = tempfile::tempdir().unwrap();
    let kodel = |args: &[&str]| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_kodel"));
        cmd.args(args)
            .env("KODEL_CONFIG_DIR", config.path())
            .env("KODEL_SERVER", &server.base)
            .env("KODEL_NO_KEYRING", "1")
            .env_remove("KODEL_TOKEN")
            .env_remove("KODEL_ORG")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        cmd
    };
    let mut login = kodel(&["login", "--sso"]).spawn().unwrap();
    // It prints where to go and the code; the URL with the code filled in is opened
    // in a browser (as a person would, on any machine).
    let mut lines = BufReader::new(login.stderr.take().unwrap()).lines();
    let mut shown = String::new();
    let complete = loop {
        let line = lines.next().expect("kodel login --sso printed where to go").unwrap();
        shown.push_str(&line);
        shown.push('\n');
        if let Some(url) = line.strip_prefix("(or open ").and_then(|l| l.strip_suffix(')')) {
            break url.to_owned();
        }
    };
    assert!(shown.contains(&format!("open {}/device", provider.issuer)) && shown.contains("enter the code"), "{shown}");
    let ran = run(
        "sso.mjs",
        &[("MODE", "device".into()), ("START", complete), ("LOGIN", provider.login.clone()), ("PASSWORD", provider.password.clone()), ("SHOTS", screenshots("sso-device").display().to_string())],
        Duration::from_secs(120),
    )
    .await;
    assert!(ran.ok, "{}\n{}", ran.stdout, ran.stderr);
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    let status = tokio::task::spawn_blocking(move || login.wait().unwrap()).await.unwrap();
    assert!(status.success(), "kodel login --sso: {rest:?}\nserver log:\n{}", server.log());
    assert!(rest.iter().any(|l| l.contains("Logged in to") && l.contains("owner@example.com")), "{rest:?}");

    // The identity was linked to the existing account by its verified email, and the
    // stored tokens work as a password login's do.
    let out = kodel(&["whoami", "--json"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let me: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(me["email"], "owner@example.com");
    let out = kodel(&["org", "list", "--json"]).output().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("acme"), "{}", String::from_utf8_lossy(&out.stdout));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kodel_login_sso_says_when_the_server_has_no_sso() {
    let db = fresh_database().await;
    let server = ServerProcess::start(&server_binary(), &[], &[("DATABASE_URL", &database_url(&db))]);
    let config = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_kodel"))
        .args(["login", "--sso"])
        .env("KODEL_CONFIG_DIR", config.path())
        .env("KODEL_SERVER", &server.base)
        .env("KODEL_NO_KEYRING", "1")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("single sign-on is not set up"), "{err}");
}
