//! Register, login, refresh rotation, logout, API tokens, and every kind of bad token.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use common::{TestApp, code};
use reqwest::{Method, StatusCode};
use serde_json::json;

#[tokio::test]
async fn register_login_me() {
    let app = TestApp::spawn().await;
    let (s, v) = app
        .call(Method::POST, "/api/v1/auth/register", None, Some(json!({"email": "Ann@Example.com", "password": "longenough", "name": "Ann"})))
        .await;
    assert_eq!(s, StatusCode::ACCEPTED);
    assert_eq!(v["email"], "ann@example.com");
    assert!(v.get("access_token").is_none() && v.get("user").is_none(), "registering gives no tokens: {v}");

    // Registering an email that has an account answers the same, changes nothing, and
    // takes the same work (one password hash), so it tells nobody the email exists.
    let (s2, v2) = app.call(Method::POST, "/api/v1/auth/register", None, Some(json!({"email": "ann@example.com", "password": "anotherpassword", "name": "Impostor"}))).await;
    assert_eq!((s2, &v2), (s, &v));
    let (s, v) = app.call(Method::POST, "/api/v1/auth/login", None, Some(json!({"email": "ann@example.com", "password": "anotherpassword"}))).await;
    assert_eq!((s, code(&v)), (StatusCode::UNAUTHORIZED, "invalid_credentials"), "the account kept its password");
    let (s, v) = app.call(Method::POST, "/api/v1/auth/register", None, Some(json!({"email": "b@example.com", "password": "short", "name": "B"}))).await;
    assert_eq!((s, code(&v)), (StatusCode::UNPROCESSABLE_ENTITY, "invalid_request"));
    let (s, _) = app.call(Method::POST, "/api/v1/auth/register", None, Some(json!({"email": "not-an-email", "password": "longenough", "name": "B"}))).await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);

    let (s, v) = app.call(Method::POST, "/api/v1/auth/login", None, Some(json!({"email": "ANN@example.com", "password": "longenough"}))).await;
    assert_eq!(s, StatusCode::OK);
    let access = v["access_token"].as_str().unwrap().to_owned();
    assert_eq!(v["expires_in"], 900);
    assert!(v["refresh_token"].as_str().unwrap().starts_with("kodel_rt_"));
    let (s, me) = app.get("/api/v1/me", &access).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!((me["email"].as_str(), me["name"].as_str()), (Some("ann@example.com"), Some("Ann")));
    assert!(me.get("password_hash").is_none());

    for (email, password) in [("ann@example.com", "wrongpassword"), ("nobody@example.com", "longenough")] {
        let (s, v) = app.call(Method::POST, "/api/v1/auth/login", None, Some(json!({"email": email, "password": password}))).await;
        assert_eq!((s, code(&v)), (StatusCode::UNAUTHORIZED, "invalid_credentials"));
    }
}

#[tokio::test]
async fn refresh_rotates_and_reuse_revokes_the_session() {
    let app = TestApp::spawn().await;
    let v = app.register_pair("r@x.io").await;
    let first_access = v["access_token"].as_str().unwrap().to_owned();
    let rt1 = v["refresh_token"].as_str().unwrap().to_owned();

    let (s, v) = app.call(Method::POST, "/api/v1/auth/refresh", None, Some(json!({"refresh_token": rt1}))).await;
    assert_eq!(s, StatusCode::OK);
    let rt2 = v["refresh_token"].as_str().unwrap().to_owned();
    let access2 = v["access_token"].as_str().unwrap().to_owned();
    assert_ne!(rt1, rt2);
    assert_eq!(app.get("/api/v1/me", &access2).await.0, StatusCode::OK);

    // The old refresh token is dead; presenting it again revokes the whole session.
    let (s, _) = app.call(Method::POST, "/api/v1/auth/refresh", None, Some(json!({"refresh_token": rt1}))).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    let (s, _) = app.call(Method::POST, "/api/v1/auth/refresh", None, Some(json!({"refresh_token": rt2}))).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "a replayed token kills its session");
    assert_eq!(app.get("/api/v1/me", &access2).await.0, StatusCode::UNAUTHORIZED);
    assert_eq!(app.get("/api/v1/me", &first_access).await.0, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn logout_revokes_access_and_refresh_tokens() {
    let app = TestApp::spawn().await;
    let v = app.register_pair("l@x.io").await;
    let access = v["access_token"].as_str().unwrap().to_owned();
    let rt = v["refresh_token"].as_str().unwrap().to_owned();
    let (s, _) = app.call(Method::POST, "/api/v1/auth/logout", None, Some(json!({"refresh_token": rt}))).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    assert_eq!(app.get("/api/v1/me", &access).await.0, StatusCode::UNAUTHORIZED);
    let (s, _) = app.call(Method::POST, "/api/v1/auth/refresh", None, Some(json!({"refresh_token": rt}))).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn api_tokens_are_shown_once_and_revocable() {
    let app = TestApp::spawn().await;
    let access = app.register("t@x.io").await;
    let (s, v) = app.post("/api/v1/tokens", &access, json!({"name": "ci"})).await;
    assert_eq!(s, StatusCode::CREATED);
    let token = v["token"].as_str().unwrap().to_owned();
    let id = v["id"].as_str().unwrap().to_owned();
    assert!(token.starts_with("kodel_pat_"));

    let (s, me) = app.get("/api/v1/me", &token).await;
    assert_eq!((s, me["email"].as_str()), (StatusCode::OK, Some("t@x.io")));

    // Use is recorded off the request path: wait for it, with a deadline.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let listed = loop {
        let (_, list) = app.get("/api/v1/tokens", &access).await;
        let listed = list["data"][0].clone();
        if !listed["last_used_at"].is_null() || std::time::Instant::now() > deadline {
            break listed;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    assert_eq!(listed["name"], "ci");
    assert!(listed.get("token").is_none(), "the token itself is never shown again");
    assert!(token.starts_with(listed["prefix"].as_str().unwrap()));
    assert!(!listed["last_used_at"].is_null(), "use recorded");

    // An API token cannot mint another one (a stolen token would outlive its revocation).
    let (s, v) = app.post("/api/v1/tokens", &token, json!({"name": "child"})).await;
    assert_eq!((s, code(&v)), (StatusCode::FORBIDDEN, "forbidden"));

    // Stored hashed: the database holds no copy of the token.
    let mut db = app.sql().await;
    let leaked: i64 = sqlx::query_scalar("SELECT count(*) FROM api_tokens WHERE encode(token_hash, 'escape') LIKE '%' || $1 || '%' OR name = $1")
        .bind(&token)
        .fetch_one(&mut db)
        .await
        .unwrap();
    assert_eq!(leaked, 0);

    assert_eq!(app.delete(&format!("/api/v1/tokens/{id}"), &access).await.0, StatusCode::NO_CONTENT);
    assert_eq!(app.get("/api/v1/me", &token).await.0, StatusCode::UNAUTHORIZED);
    let (s, v) = app.delete(&format!("/api/v1/tokens/{id}"), &access).await;
    assert_eq!((s, code(&v)), (StatusCode::NOT_FOUND, "token_not_found"));

    // Expiry.
    let (s, v) = app.post("/api/v1/tokens", &access, json!({"name": "past", "expires_at": "2001-01-01T00:00:00Z"})).await;
    assert_eq!((s, code(&v)), (StatusCode::UNPROCESSABLE_ENTITY, "invalid_request"));
    let (_, v) = app.post("/api/v1/tokens", &access, json!({"name": "soon", "expires_at": "2099-01-01T00:00:00Z"})).await;
    let soon = v["token"].as_str().unwrap().to_owned();
    assert_eq!(app.get("/api/v1/me", &soon).await.0, StatusCode::OK);
    sqlx::query("UPDATE api_tokens SET expires_at = now() - interval '1 second' WHERE name = 'soon'").execute(&mut db).await.unwrap();
    assert_eq!(app.get("/api/v1/me", &soon).await.0, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn bad_tokens_get_401() {
    let app = TestApp::spawn().await;
    let access = app.register("bad@x.io").await;
    let parts: Vec<&str> = access.split('.').collect();
    let payload: serde_json::Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();

    let mut forged = payload.clone();
    forged["exp"] = json!(4_000_000_000i64);
    let forged_payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&forged).unwrap());
    let none_header = URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#);
    let hs512_header = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS512","typ":"JWT"}"#);

    let bad = [
        String::new(),
        "garbage".to_owned(),
        format!("{}.{}.{}", parts[0], forged_payload, parts[2]),
        format!("{none_header}.{}.", parts[1]),
        format!("{hs512_header}.{}.{}", parts[1], parts[2]),
        format!("{}x", access),
        "kodel_pat_doesnotexist".to_owned(),
        "kodel_rt_notanaccesstoken".to_owned(),
    ];
    for token in &bad {
        let (s, v) = app.call(Method::GET, "/api/v1/me", Some(token), None).await;
        assert_eq!((s, code(&v)), (StatusCode::UNAUTHORIZED, "unauthorized"), "token {token:?}");
    }
    let (s, _) = app.call(Method::GET, "/api/v1/me", None, None).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    let resp = app.http.get(format!("{}/api/v1/me", app.base)).header("authorization", format!("Basic {access}")).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);

    // An expired token signed with the server's real key.
    let mut db = app.sql().await;
    let sealed: Vec<u8> = sqlx::query_scalar("SELECT value FROM server_secrets WHERE name = 'jwt_sealed'").fetch_one(&mut db).await.unwrap();
    let secret = app.server.state.sealer.open(&sealed).expect("sealed with the server's key");
    let mut old = payload.clone();
    old["exp"] = json!(chrono::Utc::now().timestamp() - 120);
    let expired = jsonwebtoken::encode(&jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256), &old, &jsonwebtoken::EncodingKey::from_secret(&secret)).unwrap();
    assert_eq!(app.get("/api/v1/me", &expired).await.0, StatusCode::UNAUTHORIZED);
    // The same claims, fresh: accepted (so the refusal above was the expiry).
    old["exp"] = json!(chrono::Utc::now().timestamp() + 120);
    let fresh = jsonwebtoken::encode(&jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256), &old, &jsonwebtoken::EncodingKey::from_secret(&secret)).unwrap();
    assert_eq!(app.get("/api/v1/me", &fresh).await.0, StatusCode::OK);
}
