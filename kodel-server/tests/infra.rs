//! Where AI work runs: modules (with sealed credentials), instance templates assigned
//! to projects, and the agents registry.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{TestApp, code};
use kodel_server::hub::agents;
use reqwest::StatusCode;
use serde_json::json;

#[tokio::test]
async fn modules_keep_credentials_sealed() {
    let app = TestApp::spawn().await;
    let owner = app.owner_with_project("owner@x.io", "acme", "KOD").await;
    let dev = app.register("dev@x.io").await;
    app.post("/api/v1/orgs/acme/members", &owner, json!({"email": "dev@x.io", "role": "member"})).await;
    app.post("/api/v1/orgs/acme/projects/KOD/members", &owner, json!({"email": "dev@x.io", "role": "developer"})).await;

    let body = json!({"project": "KOD", "name": "api", "url": "https://git.example.com/acme/api.git", "default_branch": "trunk",
                      "path_prefix": "/services/api/", "credentials": {"username": "bot", "secret": "ghp_TOPSECRET"}});
    let (s, _) = app.post("/api/v1/orgs/acme/modules", &dev, body.clone()).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "developers do not manage modules");
    let resp = app.http.post(format!("{}/api/v1/orgs/acme/modules", app.base)).bearer_auth(&owner).json(&body).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);
    let text = resp.text().await.unwrap();
    assert!(!text.contains("TOPSECRET"), "{text}");
    let m: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!((m["has_credentials"].as_bool(), m["path_prefix"].as_str(), m["default_branch"].as_str()), (Some(true), Some("services/api"), Some("trunk")));
    let id = m["id"].as_str().unwrap();

    // Sealed at rest, and the server can open it again.
    let mut db = app.org_tx("acme").await;
    let sealed: Vec<u8> = sqlx::query_scalar("SELECT credentials FROM modules").fetch_one(db.conn()).await.unwrap();
    app.commit(db).await;
    assert!(!sealed.windows(9).any(|w| w == b"TOPSECRET"));
    let opened = app.server.state.sealer.open(&sealed).unwrap();
    assert!(String::from_utf8(opened).unwrap().contains("ghp_TOPSECRET"));

    for (body, why) in [
        (json!({"project": "KOD", "name": "x", "url": "https://bot:pw@host/x.git"}), "credentials"),
        (json!({"project": "KOD", "name": "x", "url": "not a url"}), "git URL"),
        (json!({"project": "KOD", "name": "x", "url": "git@host:x.git", "default_branch": "a..b"}), "branch"),
        (json!({"project": "KOD", "name": "x", "url": "git@host:x.git", "path_prefix": "../etc"}), "inside"),
        (json!({"project": "KOD", "name": "x", "url": "https://ghp_token@host/x.git"}), "credentials"),
        (json!({"project": "KOD", "name": "../../home", "url": "git@host:x.git"}), "module name"),
        (json!({"project": "KOD", "name": "x", "url": "https://h/x.git", "forge": "gitlab", "forge_api_url": "http://gitlab.corp/api/v4"}), "https"),
    ] {
        let (s, v) = app.post("/api/v1/orgs/acme/modules", &owner, body.clone()).await;
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
        assert!(v["error"]["message"].as_str().unwrap().contains(why), "{body}: {v}");
    }
    let (s, v) = app.post("/api/v1/orgs/acme/modules", &owner, json!({"project": "KOD", "name": "api", "url": "git@host:x.git"})).await;
    assert_eq!((s, code(&v)), (StatusCode::CONFLICT, "name_taken"));
    // A repository on the agents' host, given as a path.
    let (s, local) = app.post("/api/v1/orgs/acme/modules", &owner, json!({"project": "KOD", "name": "local", "url": "/srv/git/demo.git"})).await;
    assert_eq!((s, local["url"].as_str()), (StatusCode::CREATED, Some("file:///srv/git/demo.git")), "{local}");
    app.delete(&format!("/api/v1/orgs/acme/modules/{}", local["id"].as_str().unwrap()), &owner).await;

    // Developers read them; credentials can be removed; outsiders see nothing.
    let (_, list) = app.get("/api/v1/orgs/acme/modules?project=KOD", &dev).await;
    assert_eq!(list["data"].as_array().unwrap().len(), 1);
    // Credentials stay with their host: moving the module elsewhere drops them.
    let (s, m) = app.patch(&format!("/api/v1/orgs/acme/modules/{id}"), &owner, json!({"default_branch": "main"})).await;
    assert_eq!((s, m["has_credentials"].as_bool()), (StatusCode::OK, Some(true)));
    let (s, m) = app.patch(&format!("/api/v1/orgs/acme/modules/{id}"), &owner, json!({"url": "https://attacker.example/x.git"})).await;
    assert_eq!((s, m["has_credentials"].as_bool()), (StatusCode::OK, Some(false)), "{m}");
    let (s, m) = app.patch(&format!("/api/v1/orgs/acme/modules/{id}"), &owner, json!({"credentials": null, "url": "git@git.example.com:acme/api.git"})).await;
    assert_eq!((s, m["has_credentials"].as_bool(), m["url"].as_str()), (StatusCode::OK, Some(false), Some("git@git.example.com:acme/api.git")));
    let eve = app.register("eve@x.io").await;
    app.post("/api/v1/orgs", &eve, json!({"slug": "evil", "name": "e"})).await;
    let (s, _) = app.get(&format!("/api/v1/orgs/evil/modules/{id}"), &eve).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert_eq!(app.delete(&format!("/api/v1/orgs/acme/modules/{id}"), &owner).await.0, StatusCode::NO_CONTENT);
    let (s, v) = app.get(&format!("/api/v1/orgs/acme/modules/{id}"), &owner).await;
    assert_eq!((s, code(&v)), (StatusCode::NOT_FOUND, "module_not_found"));
}

#[tokio::test]
async fn instance_templates_are_assigned_per_project() {
    let app = TestApp::spawn().await;
    let owner = app.owner_with_project("owner@x.io", "acme", "KOD").await;
    let body = json!({"name": "rust", "base_image": "debian:12", "packages": ["build-essential", "libssl-dev"],
                      "setup_script": "rustup default stable", "env": {"RUST_LOG": "info"}, "network": true,
                      "cpu_limit": 2.0, "memory_mb": 4096, "dind": false});
    let (s, it) = app.post("/api/v1/orgs/acme/instance-templates", &owner, body).await;
    assert_eq!(s, StatusCode::CREATED, "{it}");
    assert_eq!((it["env"]["RUST_LOG"].as_str(), it["memory_mb"].as_i64(), it["network"].as_bool()), (Some("********"), Some(4096), Some(true)));
    for bad in [
        json!({"name": "b", "base_image": "x", "packages": ["a; rm -rf /"]}),
        json!({"name": "b", "base_image": "x", "env": {"BAD-NAME": "1"}}),
        json!({"name": "b", "base_image": "x", "memory_mb": 1}),
        json!({"base_image": "debian:12"}),
        json!({"name": "b", "base_image": "debian:12; rm -rf /"}),
        json!({"name": "b", "base_image": "--privileged"}),
        json!({"name": "b", "dind": true}),
        json!({"name": "b", "base_image": "debian:12", "labels": ["kodel:container"]}),
    ] {
        let (s, v) = app.post("/api/v1/orgs/acme/instance-templates", &owner, bad.clone()).await;
        assert_eq!((s, code(&v)), (StatusCode::UNPROCESSABLE_ENTITY, "invalid_request"), "{bad}");
    }
    let (s, p) = app.patch("/api/v1/orgs/acme/projects/KOD", &owner, json!({"instance_template": "rust"})).await;
    assert_eq!((s, p["instance_template"].as_str()), (StatusCode::OK, Some("rust")));
    let (s, v) = app.patch("/api/v1/orgs/acme/projects/KOD", &owner, json!({"instance_template": "ghost"})).await;
    assert_eq!((s, code(&v)), (StatusCode::NOT_FOUND, "template_not_found"));
    let (s, it) = app.patch("/api/v1/orgs/acme/instance-templates/rust", &owner, json!({"memory_mb": null, "packages": ["git"]})).await;
    assert_eq!((s, it["memory_mb"].clone(), it["packages"].clone(), it["cpu_limit"].as_f64()), (StatusCode::OK, json!(null), json!(["git"]), Some(2.0)));
    // Without a base image, jobs run under bubblewrap; then docker-in-docker cannot be.
    let (s, it) = app.patch("/api/v1/orgs/acme/instance-templates/rust", &owner, json!({"base_image": null})).await;
    assert_eq!((s, it["base_image"].clone(), it["cpu_limit"].as_f64()), (StatusCode::OK, json!(null), Some(2.0)));
    let (s, v) = app.patch("/api/v1/orgs/acme/instance-templates/rust", &owner, json!({"dind": true})).await;
    assert_eq!((s, code(&v)), (StatusCode::UNPROCESSABLE_ENTITY, "invalid_request"), "{v}");
    assert!(v["error"]["message"].as_str().unwrap().contains("base_image"), "{v}");
    let (s, it) = app.patch("/api/v1/orgs/acme/instance-templates/rust", &owner, json!({"dind": true, "base_image": " rust:1.90 "})).await;
    assert_eq!((s, it["base_image"].as_str(), it["dind"].as_bool()), (StatusCode::OK, Some("rust:1.90"), Some(true)));
    assert_eq!(app.delete("/api/v1/orgs/acme/instance-templates/rust", &owner).await.0, StatusCode::NO_CONTENT);
    let (_, p) = app.get("/api/v1/orgs/acme/projects/KOD", &owner).await;
    assert_eq!(p["instance_template"], json!(null));
}

#[tokio::test]
async fn agents_registry_lists_the_orgs_agents_only() {
    let app = TestApp::spawn().await;
    let owner = app.owner_with_project("owner@x.io", "acme", "KOD").await;
    let (_, v) = app.get("/api/v1/orgs/acme/agents", &owner).await;
    assert_eq!(v["data"], json!([]));
    let mut db = app.org_tx("acme").await;
    agents::register(&mut db, None, &agents::Offer { name: "laptop".into(), labels: vec!["linux".into(), "gpu".into()], version: "0.1.0".into(), ..Default::default() }).await.unwrap();
    app.commit(db).await;
    let (_, v) = app.get("/api/v1/orgs/acme/agents", &owner).await;
    assert_eq!((v["data"][0]["name"].as_str(), v["data"][0]["status"].as_str()), (Some("laptop"), Some("online")));
    assert_eq!(v["data"][0]["labels"], json!(["linux", "gpu"]));
    let eve = app.register("eve@x.io").await;
    app.post("/api/v1/orgs", &eve, json!({"slug": "evil", "name": "e"})).await;
    let (_, v) = app.get("/api/v1/orgs/evil/agents", &eve).await;
    assert_eq!(v["data"], json!([]));
    let (s, _) = app.get("/api/v1/orgs/acme/agents", &eve).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn projects_keep_their_test_command_and_review_rules() {
    let app = TestApp::spawn().await;
    let owner = app.owner_with_project("qa@x.io", "acme", "KOD").await;
    let (s, p) = app
        .patch("/api/v1/orgs/acme/projects/KOD", &owner, json!({"test_command": "cargo test --workspace", "review_rules": "No unwrap in library code.\nEvery change has a test."}))
        .await;
    assert_eq!(s, StatusCode::OK, "{p}");
    assert_eq!(p["test_command"], "cargo test --workspace");
    assert!(p["review_rules"].as_str().unwrap().contains("Every change has a test."));
    // Other fields leave them alone; null (or blank) clears one.
    let (_, p) = app.patch("/api/v1/orgs/acme/projects/KOD", &owner, json!({"name": "Kodel"})).await;
    assert_eq!(p["test_command"], "cargo test --workspace");
    let (_, p) = app.patch("/api/v1/orgs/acme/projects/KOD", &owner, json!({"test_command": null, "review_rules": "  "})).await;
    assert_eq!((p["test_command"].clone(), p["review_rules"].clone()), (json!(null), json!(null)));
    let (s, v) = app.patch("/api/v1/orgs/acme/projects/KOD", &owner, json!({"test_command": "x".repeat(2001)})).await;
    assert_eq!((s, code(&v)), (StatusCode::UNPROCESSABLE_ENTITY, "invalid_request"));
    // Only project admins change them.
    let dev = app.register("dev@x.io").await;
    app.post("/api/v1/orgs/acme/members", &owner, json!({"email": "dev@x.io", "role": "member"})).await;
    app.post("/api/v1/orgs/acme/projects/KOD/members", &owner, json!({"email": "dev@x.io", "role": "developer"})).await;
    let (s, _) = app.patch("/api/v1/orgs/acme/projects/KOD", &dev, json!({"test_command": "rm -rf /"})).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
}

/// A new sealing key with the old one as KODEL_ENCRYPTION_KEY_PREVIOUS: every stored
/// secret (module credentials, org LLM keys, instance-template env values) is sealed
/// again with the new key, none lost, and the old key is then no longer needed.
#[tokio::test]
async fn the_sealing_key_rotates_without_losing_a_secret() {
    let db = common::fresh_database().await;
    let app = TestApp::spawn_on(db.clone()).await;
    let owner = app.owner_with_project("owner@x.io", "acme", "KOD").await;
    let module = json!({"project": "KOD", "name": "api", "url": "https://github.com/acme/api.git", "credentials": {"username": "bot", "secret": "ghp_OLDKEY"}});
    assert_eq!(app.post("/api/v1/orgs/acme/modules", &owner, module).await.0, StatusCode::CREATED);
    let (s, v) = app.call(reqwest::Method::PUT, "/api/v1/orgs/acme/llm-providers/openai", Some(&owner), Some(json!({"api_key": "sk-old-key"}))).await;
    assert!(s.is_success(), "{v}");
    let template = json!({"name": "box", "base_image": "debian:12", "env": {"TOKEN": "t0k"}});
    assert_eq!(app.post("/api/v1/orgs/acme/instance-templates", &owner, template).await.0, StatusCode::CREATED);

    let old_key = common::test_config().encryption_key.unwrap();
    let new_key = "ICEiIyQlJicoKSorLC0uLzAxMjM0NTY3ODk6Ozw9Pj8=".to_owned();
    let config = kodel_server::Config { encryption_key: Some(new_key.clone()), encryption_key_previous: Some(old_key.clone()), ..common::test_config() };
    let rotated = TestApp::spawn_with(db.clone(), config).await;
    // The generated JWT secret is sealed too: sessions survive the rotation.
    assert_eq!(rotated.get("/api/v1/me", &owner).await.0, StatusCode::OK);

    let pool = sqlx::PgPool::connect_with(db).await.unwrap();
    let nowhere = std::path::Path::new("/nonexistent");
    let new_only = kodel_server::crypto::Sealer::load(&pool, Some(&new_key), None, nowhere).await.unwrap();
    // After the rotation the old key alone no longer starts a server on this database.
    assert!(kodel_server::crypto::Sealer::load(&pool, Some(&old_key), None, nowhere).await.is_err());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let creds: Vec<u8> = sqlx::query_scalar("SELECT credentials FROM org_acme.modules").fetch_one(&pool).await.unwrap();
        let key: Vec<u8> = sqlx::query_scalar("SELECT api_key FROM org_acme.llm_providers").fetch_one(&pool).await.unwrap();
        let env: serde_json::Value = sqlx::query_scalar("SELECT env FROM org_acme.instance_templates").fetch_one(&pool).await.unwrap();
        let token = new_only.open_text(env["TOKEN"].as_str().unwrap());
        let jwt: Vec<u8> = sqlx::query_scalar("SELECT value FROM server_secrets WHERE name = 'jwt_sealed'").fetch_one(&pool).await.unwrap();
        if let (Some(creds), Some(key), Some(token), Some(_)) = (new_only.open(&creds), new_only.open(&key), token, new_only.open(&jwt)) {
            assert!(String::from_utf8(creds).unwrap().contains("ghp_OLDKEY"));
            assert_eq!(key, b"sk-old-key");
            assert_eq!(token, "t0k");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the secrets were not sealed again with the new key");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// Without KODEL_ENCRYPTION_KEY the generated key lives in the data dir (0600), never in
/// the database; an older version's key in the database moves there; and a server with
/// another key on the same database refuses to start instead of sealing with it.
#[tokio::test]
async fn a_generated_sealing_key_stays_out_of_the_database() {
    use kodel_server::crypto::{KEY_FILE, Sealer};
    use std::os::unix::fs::PermissionsExt;
    let db = common::fresh_database().await;
    let first = tempfile::tempdir().unwrap();
    let config = kodel_server::Config { encryption_key: None, data_dir: Some(first.path().to_owned()), ..common::test_config() };
    let app = TestApp::spawn_with(db.clone(), config).await;
    let owner = app.owner_with_project("owner@x.io", "acme", "KOD").await;
    let (s, v) = app.call(reqwest::Method::PUT, "/api/v1/orgs/acme/llm-providers/openai", Some(&owner), Some(json!({"api_key": "sk-sealed"}))).await;
    assert!(s.is_success(), "{v}");
    let file = first.path().join(KEY_FILE);
    assert_eq!(std::fs::metadata(&file).unwrap().permissions().mode() & 0o777, 0o600);
    let pool = sqlx::PgPool::connect_with(db.clone()).await.unwrap();
    let in_db: Vec<String> = sqlx::query_scalar("SELECT name FROM server_secrets ORDER BY name").fetch_all(&pool).await.unwrap();
    assert!(!in_db.contains(&"sealing".to_owned()), "{in_db:?}");
    // The same file opens the secrets; another data dir (a second replica) is refused.
    let again = Sealer::load(&pool, None, None, first.path()).await.unwrap();
    let sealed: Vec<u8> = sqlx::query_scalar("SELECT api_key FROM org_acme.llm_providers").fetch_one(&pool).await.unwrap();
    assert_eq!(again.open(&sealed).unwrap(), b"sk-sealed");
    let other = tempfile::tempdir().unwrap();
    let err = Sealer::load(&pool, None, None, other.path()).await.err().expect("another key is refused").to_string();
    assert!(err.contains("every server on one database needs the same key"), "{err}");

    // An older version's key in the database moves to the file.
    let db = common::fresh_database().await;
    let pool = sqlx::PgPool::connect_with(db).await.unwrap();
    kodel_server::db::migrate::run(&pool).await.unwrap();
    let legacy = [7u8; 32];
    sqlx::query("INSERT INTO server_secrets (name, value) VALUES ('sealing', $1)").bind(&legacy[..]).execute(&pool).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    Sealer::load(&pool, None, None, dir.path()).await.unwrap();
    let text = std::fs::read_to_string(dir.path().join(KEY_FILE)).unwrap();
    assert_eq!(text.trim(), "BwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwc=");
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM server_secrets WHERE name = 'sealing'").fetch_one(&pool).await.unwrap();
    assert_eq!(left, 0, "moved, not copied");
}

/// Without KODEL_JWT_SECRET the generated secret is kept sealed with the sealing key: a
/// dump alone cannot mint access tokens. An older version's clear secret is sealed at
/// start (its tokens stay valid) and the clear copy deleted.
#[tokio::test]
async fn a_generated_jwt_secret_is_sealed_in_the_database() {
    use kodel_server::auth::JwtKeys;
    use kodel_server::crypto::Sealer;
    let db = common::fresh_database().await;
    let pool = sqlx::PgPool::connect_with(db.clone()).await.unwrap();
    kodel_server::db::migrate::run(&pool).await.unwrap();
    let legacy = [9u8; 64];
    sqlx::query("INSERT INTO server_secrets (name, value) VALUES ('jwt', $1)").bind(&legacy[..]).execute(&pool).await.unwrap();
    let (user, session) = (uuid::Uuid::new_v4(), uuid::Uuid::new_v4());
    let old_token = JwtKeys::new(&legacy).issue(user, session).unwrap();

    let dir = tempfile::tempdir().unwrap();
    let sealer = Sealer::load(&pool, None, None, dir.path()).await.unwrap();
    let keys = JwtKeys::load(&pool, None, &sealer).await.unwrap();
    assert_eq!(keys.verify(&old_token).map(|c| c.sub), Some(user), "tokens signed before the move stay valid");
    let rows: Vec<(String, Vec<u8>)> = sqlx::query_as("SELECT name, value FROM server_secrets ORDER BY name").fetch_all(&pool).await.unwrap();
    assert!(rows.iter().all(|(name, value)| name != "jwt" && !value.windows(16).any(|w| w == &legacy[..16])), "no clear JWT secret is left: {rows:?}");
    let sealed = &rows.iter().find(|(name, _)| name == "jwt_sealed").expect("kept sealed").1;
    assert_eq!(sealer.open(sealed).unwrap(), legacy);

    // A second replica with the same sealing key gets the same secret; the first start
    // on a new database makes one, and it is sealed.
    let again = JwtKeys::load(&pool, None, &Sealer::load(&pool, None, None, dir.path()).await.unwrap()).await.unwrap();
    assert!(again.verify(&old_token).is_some());
    let fresh_db = common::fresh_database().await;
    let data = tempfile::tempdir().unwrap();
    let config = kodel_server::Config { encryption_key: None, data_dir: Some(data.path().to_owned()), ..common::test_config() };
    let app = TestApp::spawn_with(fresh_db.clone(), config).await;
    let token = app.register("first@x.io").await;
    assert_eq!(app.get("/api/v1/me", &token).await.0, StatusCode::OK);
    let fresh_pool = sqlx::PgPool::connect_with(fresh_db).await.unwrap();
    let names: Vec<String> = sqlx::query_scalar("SELECT name FROM server_secrets ORDER BY name").fetch_all(&fresh_pool).await.unwrap();
    assert_eq!(names, ["jwt_sealed", "sealing_check"]);
}
