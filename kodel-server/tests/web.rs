//! The web view over HTTP: sessions, the forms' CSRF token, the Origin check, the
//! security headers, and the same tenancy as the API. (The pages themselves are driven
//! in a real browser by kodel-agent/tests/web.rs.)
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{TestApp, fresh_database, test_config};
use reqwest::StatusCode;
use reqwest::header::{CONTENT_SECURITY_POLICY, COOKIE, LOCATION, ORIGIN, SET_COOKIE};
use serde_json::json;

fn browser() -> reqwest::Client {
    reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap()
}

/// Signs in through the form; the `Set-Cookie` header and the cookie to send.
async fn sign_in(app: &TestApp, email: &str) -> (String, String) {
    let resp = browser()
        .post(format!("{}/login", app.base))
        .header(ORIGIN, &app.base)
        .form(&[("email", email), ("password", "correct horse")])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::SEE_OTHER);
    assert_eq!(resp.headers()[LOCATION], "/");
    let set = resp.headers()[SET_COOKIE].to_str().unwrap().to_owned();
    let cookie = set.split(';').next().unwrap().to_owned();
    (set, cookie)
}

async fn page(app: &TestApp, path: &str, cookie: &str) -> (StatusCode, String) {
    let resp = browser().get(format!("{}{path}", app.base)).header(COOKIE, cookie).send().await.unwrap();
    (resp.status(), resp.text().await.unwrap())
}

/// The CSRF token the page's forms carry.
fn csrf(html: &str) -> String {
    let at = html.find(r#"name="csrf" value=""#).expect("a form with its token") + r#"name="csrf" value=""#.len();
    html[at..].split('"').next().unwrap().to_owned()
}

async fn post(app: &TestApp, path: &str, cookie: &str, origin: Option<&str>, form: &[(&str, &str)]) -> reqwest::Response {
    let mut req = browser().post(format!("{}{path}", app.base)).header(COOKIE, cookie).form(form);
    if let Some(o) = origin {
        req = req.header(ORIGIN, o);
    }
    req.send().await.unwrap()
}

#[tokio::test]
async fn pages_need_a_session_and_carry_a_strict_policy() {
    let app = TestApp::spawn().await;
    app.owner_with_project("ada@example.com", "acme", "KOD").await;
    let resp = browser().get(format!("{}/o/acme/p/KOD", app.base)).send().await.unwrap();
    assert_eq!((resp.status(), resp.headers()[LOCATION].to_str().unwrap()), (StatusCode::SEE_OTHER, "/login"));
    let resp = browser().get(format!("{}/login", app.base)).send().await.unwrap();
    let csp = resp.headers()[CONTENT_SECURITY_POLICY].to_str().unwrap().to_owned();
    assert!(csp.contains("script-src 'self'") && csp.contains("frame-ancestors 'none'") && !csp.contains("unsafe-inline"), "{csp}");
    assert_eq!(resp.headers()["x-content-type-options"], "nosniff");

    // A wrong password is said on the page; the right one sets an HttpOnly, Lax cookie
    // (not Secure: this server is reached over http).
    let resp = browser()
        .post(format!("{}/login", app.base))
        .header(ORIGIN, &app.base)
        .form(&[("email", "ada@example.com"), ("password", "nope nope nope")])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    assert!(resp.text().await.unwrap().contains("wrong email or password"));
    // A sign-in must name this site as its origin: another site cannot sign a browser
    // in to an account of its choosing.
    for origin in [None, Some("http://evil.example")] {
        let mut req = browser().post(format!("{}/login", app.base)).form(&[("email", "ada@example.com"), ("password", "correct horse")]);
        if let Some(o) = origin {
            req = req.header(ORIGIN, o);
        }
        let resp = req.send().await.unwrap();
        assert_eq!(resp.status(), StatusCode::FORBIDDEN, "{origin:?}");
        assert!(resp.headers().get(SET_COOKIE).is_none());
    }
    let (set, cookie) = sign_in(&app, "ada@example.com").await;
    assert!(set.contains("HttpOnly") && set.contains("SameSite=Lax") && !set.contains("Secure"), "{set}");
    let (status, html) = page(&app, "/o/acme/p/KOD", &cookie).await;
    assert_eq!(status, StatusCode::OK);
    assert!(html.contains("data-board") && html.contains(r#"class="col" data-status="To Do""#), "{html}");
    assert!(!html.contains("<script>") && !html.contains("style="), "no inline script or style");

    // Signing out ends the session: the old cookie signs nobody in.
    let token = csrf(&html);
    let resp = post(&app, "/logout", &cookie, None, &[("csrf", &token)]).await;
    assert_eq!(resp.status(), StatusCode::SEE_OTHER);
    assert!(resp.headers()[SET_COOKIE].to_str().unwrap().contains("Max-Age=0"));
    let (status, _) = page(&app, "/o/acme/p/KOD", &cookie).await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    // The page's script is told so plainly (it reloads), not handed the sign-in page.
    let resp = browser().get(format!("{}/o/acme/p/KOD", app.base)).header(COOKIE, &cookie).header("x-kodel-fetch", "1").send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn every_change_needs_the_forms_token_and_this_sites_origin() {
    let app = TestApp::spawn().await;
    let token = app.owner_with_project("ada@example.com", "acme", "KOD").await;
    let (_, cookie) = sign_in(&app, "ada@example.com").await;
    let (_, html) = page(&app, "/o/acme/p/KOD", &cookie).await;
    let good = csrf(&html);
    let create = |t: &'static str| [("title", t), ("labels", "")];

    let no_token = post(&app, "/o/acme/p/KOD/tasks", &cookie, None, &create("no token")).await;
    assert_eq!(no_token.status(), StatusCode::FORBIDDEN);
    let mut wrong = create("wrong token").to_vec();
    wrong.push(("csrf", "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"));
    assert_eq!(post(&app, "/o/acme/p/KOD/tasks", &cookie, None, &wrong).await.status(), StatusCode::FORBIDDEN);
    let mut cross = create("from another site").to_vec();
    cross.push(("csrf", &good));
    assert_eq!(post(&app, "/o/acme/p/KOD/tasks", &cookie, Some("http://evil.example"), &cross).await.status(), StatusCode::FORBIDDEN);
    // Another user's token does not fit this session.
    app.register("eve@example.com").await;
    let (_, eve) = sign_in(&app, "eve@example.com").await;
    let (_, eve_home) = page(&app, "/", &eve).await;
    let mut borrowed = create("borrowed token").to_vec();
    let eves = csrf(&eve_home);
    borrowed.push(("csrf", &eves));
    assert_eq!(post(&app, "/o/acme/p/KOD/tasks", &cookie, None, &borrowed).await.status(), StatusCode::FORBIDDEN);

    let host = app.base.clone();
    let mut ok = create("made on the web").to_vec();
    ok.push(("csrf", &good));
    ok.push(("description", "with a description"));
    let resp = post(&app, "/o/acme/p/KOD/tasks", &cookie, Some(&host), &ok).await;
    assert_eq!((resp.status(), resp.headers()[LOCATION].to_str().unwrap()), (StatusCode::SEE_OTHER, "/o/acme/p/KOD"));
    let (_, list) = app.get("/api/v1/orgs/acme/projects/KOD/tasks", &token).await;
    let titles: Vec<&str> = list["data"].as_array().unwrap().iter().map(|t| t["title"].as_str().unwrap()).collect();
    assert_eq!(titles, ["made on the web"], "only the request with the token and this site's origin made a task");
    assert_eq!(list["data"][0]["description"], "with a description");
}

#[tokio::test]
async fn the_web_view_has_the_apis_tenancy_and_roles() {
    let app = TestApp::spawn().await;
    let owner = app.owner_with_project("ada@example.com", "acme", "KOD").await;
    app.post("/api/v1/orgs/acme/projects/KOD/tasks", &owner, json!({"title": "secret plans"})).await;
    app.register("eve@example.com").await;
    let (_, eve) = sign_in(&app, "eve@example.com").await;
    for path in ["/o/acme/p/KOD", "/o/acme/t/KOD-1", "/o/acme/t/KOD-1/card", "/o/acme/t/KOD-1/side", "/o/acme/events"] {
        let (status, body) = page(&app, path, &eve).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{path}");
        assert!(!body.contains("secret plans"), "{path}");
    }
    let (_, home) = page(&app, "/", &eve).await;
    assert!(!home.contains("acme") && home.contains("not a member of any organization"), "{home}");
    let token = csrf(&home);
    let resp = post(&app, "/o/acme/t/KOD-1/comments", &eve, None, &[("csrf", &token), ("body", "hi")]).await;
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn the_cookie_is_secure_behind_https() {
    let mut config = test_config();
    config.public_url = Some("https://kodel.example.com".into());
    let app = TestApp::spawn_with(fresh_database().await, config).await;
    app.owner_with_project("ada@example.com", "acme", "KOD").await;
    let resp = browser()
        .post(format!("{}/login", app.base))
        .header(ORIGIN, "https://kodel.example.com")
        .form(&[("email", "ada@example.com"), ("password", "correct horse")])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::SEE_OTHER, "the public address is this site's origin");
    let set = resp.headers()[SET_COOKIE].to_str().unwrap();
    assert!(set.starts_with("__Host-kodel_session=") && set.contains("; Secure"), "{set}");
}
