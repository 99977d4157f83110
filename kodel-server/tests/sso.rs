//! ID tokens and identities: what single sign-on accepts and what it refuses, checked
//! against a real OpenID provider's keys (npm's oidc-provider, which also signs the
//! forged tokens here with its own key, so only the claim under test is wrong).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::TestApp;
use kodel_server::auth::oidc::{Sso, SsoConfig};
use kodel_testkit::web::OidcProvider;
use serde_json::{Value, json};

fn sso(p: &OidcProvider, auto_create: bool) -> Sso {
    Sso::new(SsoConfig {
        issuer: p.issuer.clone(),
        client_id: p.client_id.clone(),
        client_secret: Some(p.client_secret.clone()),
        display_name: "Test IdP".into(),
        auto_create,
        org_claim: Some("kodel_orgs".into()),
        redirect_url: "http://127.0.0.1:1/sso/callback".into(),
    })
    .unwrap()
}

fn claims(p: &OidcProvider, change: Value) -> Value {
    let now = chrono::Utc::now().timestamp();
    let mut c = json!({"iss": p.issuer, "aud": p.client_id, "sub": "subject-1", "iat": now, "exp": now + 300,
                       "nonce": "the-nonce", "email": "Pat@Example.com", "email_verified": true, "kodel_orgs": ["acme"]});
    for (k, v) in change.as_object().unwrap() {
        c[k] = v.clone();
    }
    c
}

#[tokio::test]
async fn id_tokens_are_checked_fully() {
    let p = OidcProvider::start("http://127.0.0.1:1/sso/callback", "pat@example.com", true, &[]);
    let sso = sso(&p, true);

    let good = p.sign(claims(&p, json!({}))).await;
    let id = sso.verify_raw(&good, "the-nonce").await.unwrap();
    assert_eq!((id.subject.as_str(), id.email.as_deref(), id.email_verified), ("subject-1", Some("pat@example.com"), true));
    assert_eq!(id.orgs, ["acme"]);

    let refused = |what: &'static str| move |r: Result<_, kodel_server::error::ApiError>| {
        let e = r.err().unwrap_or_else(|| panic!("{what} was accepted"));
        assert_eq!(e.code, kodel_core::ErrorCode::SsoRefused, "{what}: {}", e.message);
    };
    // Expired, for another client, from another issuer, for another sign-in.
    refused("an expired token")(sso.verify_raw(&p.sign(claims(&p, json!({"exp": chrono::Utc::now().timestamp() - 600}))).await, "the-nonce").await);
    refused("a token for another audience")(sso.verify_raw(&p.sign(claims(&p, json!({"aud": "someone-else"}))).await, "the-nonce").await);
    refused("a token from another issuer")(sso.verify_raw(&p.sign(claims(&p, json!({"iss": "http://127.0.0.1:9/evil"}))).await, "the-nonce").await);
    refused("a token with another nonce")(sso.verify_raw(&good, "another-nonce").await);
    // Tampered: another subject in the payload under the original signature.
    use base64::Engine;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let parts: Vec<&str> = good.split('.').collect();
    let mut payload: Value = serde_json::from_slice(&b64.decode(parts[1]).unwrap()).unwrap();
    payload["sub"] = json!("someone-else");
    let tampered = format!("{}.{}.{}", parts[0], b64.encode(serde_json::to_vec(&payload).unwrap()), parts[2]);
    refused("a tampered token")(sso.verify_raw(&tampered, "the-nonce").await);
    // Unsigned (alg none).
    let none = format!("{}.{}.", b64.encode(br#"{"alg":"none","typ":"JWT"}"#), parts[1]);
    refused("an unsigned token")(sso.verify_raw(&none, "the-nonce").await);
}

#[tokio::test]
async fn identities_link_only_by_a_verified_email() {
    let app = TestApp::spawn().await;
    let owner = app.register("pat@example.com").await;
    let (status, _) = app.call(reqwest::Method::POST, "/api/v1/orgs", Some(&owner), Some(json!({"slug": "acme", "name": "Acme"}))).await;
    assert_eq!(status, 201);
    let p = OidcProvider::start("http://127.0.0.1:1/sso/callback", "pat@example.com", true, &[]);
    let pool = sqlx::PgPool::connect_with(app.db.clone()).await.unwrap();
    let identity = |change: Value| {
        let sso = sso(&p, true);
        let p = &p;
        async move {
            let token = p.sign(claims(p, change)).await;
            sso.verify_raw(&token, "the-nonce").await.unwrap()
        }
    };
    let sso_auto = sso(&p, true);
    let sso_closed = sso(&p, false);

    // An unverified email that an account has is not linked to it.
    let unverified = identity(json!({"sub": "attacker", "email_verified": false})).await;
    let mut conn = pool.acquire().await.unwrap();
    let err = sso_auto.user_of(&mut conn, &unverified).await.unwrap_err();
    assert_eq!(err.code, kodel_core::ErrorCode::SsoRefused, "{}", err.message);

    // A verified one is, once; later sign-ins find the identity.
    let verified = identity(json!({})).await;
    let user = sso_auto.user_of(&mut conn, &verified).await.unwrap();
    let existing: uuid::Uuid = sqlx::query_scalar("SELECT id FROM users WHERE email = 'pat@example.com'").fetch_one(&mut *conn).await.unwrap();
    assert_eq!(user, existing);
    assert_eq!(sso_auto.user_of(&mut conn, &verified).await.unwrap(), existing);
    // The claim's org was joined.
    let role: String = sqlx::query_scalar("SELECT m.role FROM org_members m JOIN orgs o ON o.id = m.org_id WHERE o.slug = 'acme' AND m.user_id = $1")
        .bind(existing)
        .fetch_one(&mut *conn)
        .await
        .unwrap();
    assert_eq!(role, "owner", "an existing membership is kept as it was");

    // Someone new: made when allowed, refused when not.
    let newcomer = identity(json!({"sub": "newcomer", "email": "new@example.com"})).await;
    let err = sso_closed.user_of(&mut conn, &newcomer).await.unwrap_err();
    assert_eq!(err.code, kodel_core::ErrorCode::SsoRefused);
    let made = sso_auto.user_of(&mut conn, &newcomer).await.unwrap();
    let email: String = sqlx::query_scalar("SELECT email FROM users WHERE id = $1").bind(made).fetch_one(&mut *conn).await.unwrap();
    assert_eq!(email, "new@example.com");
    // The claim's org was joined at that first sign-in; an admin's removal stands.
    let member = "SELECT count(*) FROM org_members m JOIN orgs o ON o.id = m.org_id WHERE o.slug = 'acme' AND m.user_id = $1";
    assert_eq!(sqlx::query_scalar::<_, i64>(member).bind(made).fetch_one(&mut *conn).await.unwrap(), 1);
    sqlx::query("DELETE FROM org_members WHERE user_id = $1").bind(made).execute(&mut *conn).await.unwrap();
    assert_eq!(sso_auto.user_of(&mut conn, &newcomer).await.unwrap(), made);
    assert_eq!(sqlx::query_scalar::<_, i64>(member).bind(made).fetch_one(&mut *conn).await.unwrap(), 0, "not joined again");
    // Someone new whose email the provider did not verify gets no account.
    let unverified_new = identity(json!({"sub": "another", "email": "other@example.com", "email_verified": false})).await;
    let err = sso_auto.user_of(&mut conn, &unverified_new).await.unwrap_err();
    assert_eq!(err.code, kodel_core::ErrorCode::SsoRefused);
}

#[tokio::test]
async fn a_key_the_provider_rotated_in_is_read_when_first_seen() {
    let port = kodel_testkit::free_port();
    let first = OidcProvider::start_on(port, "http://127.0.0.1:1/sso/callback", "pat@example.com", true, &[]);
    let sso = sso(&first, true);
    sso.verify_raw(&first.sign(claims(&first, json!({}))).await, "the-nonce").await.unwrap();
    let old_token = first.sign(claims(&first, json!({}))).await;
    drop(first);
    // The provider comes back with another key: a token signed with it is checked
    // against the keys read again, not refused for the ones cached.
    let second = OidcProvider::start_on(port, "http://127.0.0.1:1/sso/callback", "pat@example.com", true, &[]);
    let id = sso.verify_raw(&second.sign(claims(&second, json!({"sub": "after-rotation"}))).await, "the-nonce").await.unwrap();
    assert_eq!(id.subject, "after-rotation");
    // A token of the retired key no longer verifies (and reading the keys again is not
    // tried twice in a minute).
    let err = sso.verify_raw(&old_token, "the-nonce").await.unwrap_err();
    assert_eq!(err.code, kodel_core::ErrorCode::SsoRefused, "{}", err.message);
}
