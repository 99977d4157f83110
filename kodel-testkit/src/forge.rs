//! A local forge for tests: an HTTP server on 127.0.0.1 that serves the bare git
//! repositories under a directory over git's smart HTTP protocol (through the real
//! `git http-backend`, behind Basic auth with one token) and speaks the parts of the
//! GitHub and GitLab REST APIs an agent uses for pull requests:
//!
//! - GitHub (`/api/v3`): `GET /repos/{owner}/{repo}/pulls?state=open&head=owner:branch`,
//!   `POST /repos/{owner}/{repo}/pulls`, `PATCH /repos/{owner}/{repo}/pulls/{number}`
//!   with `Authorization: Bearer TOKEN`.
//! - GitLab (`/api/v4`): `GET|POST /projects/{url-encoded path}/merge_requests`,
//!   `PUT /projects/{path}/merge_requests/{iid}` with `PRIVATE-TOKEN: TOKEN`.
//!
//! Like the real ones, opening a pull request for a branch the repository does not
//! have is refused (422 / 400). Every API call is recorded.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path as UrlPath, Query, RawQuery, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, patch, put};
use base64::Engine;
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;

/// One API call the forge answered.
#[derive(Debug, Clone)]
pub struct ForgeCall {
    pub method: String,
    pub path: String,
    pub body: Value,
    pub status: u16,
}

#[derive(Debug, Clone)]
struct Pull {
    repo: String,
    number: u64,
    head: String,
    base: String,
    title: String,
    body: String,
}

#[derive(Clone)]
struct Shared {
    root: PathBuf,
    token: String,
    base: String,
    calls: Arc<Mutex<Vec<ForgeCall>>>,
    pulls: Arc<Mutex<Vec<Pull>>>,
}

pub struct FakeForge {
    pub addr: SocketAddr,
    shared: Shared,
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl FakeForge {
    /// Serves the bare repositories under `root` (e.g. `root/acme/widget.git`); pushing
    /// and the API need `token`.
    pub async fn start(root: &Path, token: &str) -> FakeForge {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shared = Shared {
            root: root.to_owned(),
            token: token.to_owned(),
            base: format!("http://{addr}"),
            calls: Arc::default(),
            pulls: Arc::default(),
        };
        let app = Router::new()
            .route("/api/v3/repos/{owner}/{repo}/pulls", get(gh_list).post(gh_create))
            .route("/api/v3/repos/{owner}/{repo}/pulls/{number}", patch(gh_update))
            .route("/api/v4/projects/{id}/merge_requests", get(gl_list).post(gl_create))
            .route("/api/v4/projects/{id}/merge_requests/{iid}", put(gl_update))
            .fallback(git_http)
            .with_state(shared.clone());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).with_graceful_shutdown(async move {
                let _ = stopped.await;
            })
            .await;
        });
        FakeForge { addr, shared, _stop: stop }
    }

    /// The clone URL of `path` under the root, e.g. `acme/widget.git`.
    pub fn url(&self, path: &str) -> String {
        format!("{}/{path}", self.shared.base)
    }

    pub fn calls(&self) -> Vec<ForgeCall> {
        self.shared.calls.lock().unwrap().clone()
    }

    /// Open pull requests: (repo, number, head branch, base branch, title, body).
    pub fn pulls(&self) -> Vec<(String, u64, String, String, String, String)> {
        self.shared.pulls.lock().unwrap().iter().map(|p| (p.repo.clone(), p.number, p.head.clone(), p.base.clone(), p.title.clone(), p.body.clone())).collect()
    }
}

impl Shared {
    fn record(&self, method: &str, path: String, body: Value, status: StatusCode) {
        self.calls.lock().unwrap().push(ForgeCall { method: method.into(), path, body, status: status.as_u16() });
    }

    fn branch_exists(&self, repo: &str, branch: &str) -> bool {
        std::process::Command::new("git")
            .arg("--git-dir")
            .arg(self.root.join(format!("{repo}.git")))
            .args(["rev-parse", "--verify", "--quiet", &format!("refs/heads/{branch}")])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    fn open(&self, repo: &str, head: &str, base: &str, title: &str, body: &str) -> Pull {
        let mut pulls = self.pulls.lock().unwrap();
        let number = pulls.iter().filter(|p| p.repo == repo).count() as u64 + 1;
        let p = Pull { repo: repo.into(), number, head: head.into(), base: base.into(), title: title.into(), body: body.into() };
        pulls.push(p.clone());
        p
    }
}

fn answer(status: StatusCode, body: Value) -> Response {
    (status, [(header::CONTENT_TYPE, "application/json")], body.to_string()).into_response()
}

fn github_json(s: &Shared, p: &Pull) -> Value {
    json!({ "number": p.number, "html_url": format!("{}/{}/pull/{}", s.base, p.repo, p.number), "state": "open",
            "title": p.title, "body": p.body, "head": {"ref": p.head}, "base": {"ref": p.base} })
}

fn gitlab_json(s: &Shared, p: &Pull) -> Value {
    json!({ "iid": p.number, "web_url": format!("{}/{}/-/merge_requests/{}", s.base, p.repo, p.number), "state": "opened",
            "title": p.title, "description": p.body, "source_branch": p.head, "target_branch": p.base })
}

fn github_auth(s: &Shared, h: &HeaderMap) -> bool {
    h.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()) == Some(&format!("Bearer {}", s.token))
        && h.get(header::USER_AGENT).is_some()
}

fn gitlab_auth(s: &Shared, h: &HeaderMap) -> bool {
    h.get("private-token").and_then(|v| v.to_str().ok()) == Some(s.token.as_str())
}

async fn gh_list(State(s): State<Shared>, UrlPath((owner, repo)): UrlPath<(String, String)>, Query(q): Query<std::collections::HashMap<String, String>>, h: HeaderMap) -> Response {
    let path = format!("GET /repos/{owner}/{repo}/pulls");
    if !github_auth(&s, &h) {
        s.record("GET", path, Value::Null, StatusCode::UNAUTHORIZED);
        return answer(StatusCode::UNAUTHORIZED, json!({"message": "Bad credentials"}));
    }
    let full = format!("{owner}/{repo}");
    let head = q.get("head").and_then(|h| h.split_once(':')).map(|(_, b)| b.to_owned());
    let open: Vec<Value> = s.pulls.lock().unwrap().iter().filter(|p| p.repo == full && head.as_ref().is_none_or(|h| &p.head == h)).map(|p| github_json(&s, p)).collect();
    s.record("GET", path, json!(q), StatusCode::OK);
    answer(StatusCode::OK, Value::Array(open))
}

async fn gh_create(State(s): State<Shared>, UrlPath((owner, repo)): UrlPath<(String, String)>, h: HeaderMap, body: Bytes) -> Response {
    let path = format!("POST /repos/{owner}/{repo}/pulls");
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    if !github_auth(&s, &h) {
        s.record("POST", path, body, StatusCode::UNAUTHORIZED);
        return answer(StatusCode::UNAUTHORIZED, json!({"message": "Bad credentials"}));
    }
    let full = format!("{owner}/{repo}");
    let (head, base) = (body["head"].as_str().unwrap_or_default(), body["base"].as_str().unwrap_or_default());
    if !s.branch_exists(&full, head) || !s.branch_exists(&full, base) {
        s.record("POST", path, body.clone(), StatusCode::UNPROCESSABLE_ENTITY);
        return answer(StatusCode::UNPROCESSABLE_ENTITY, json!({"message": "Validation Failed", "errors": [{"resource": "PullRequest", "field": "head", "code": "invalid"}]}));
    }
    let p = s.open(&full, head, base, body["title"].as_str().unwrap_or_default(), body["body"].as_str().unwrap_or_default());
    s.record("POST", path, body, StatusCode::CREATED);
    answer(StatusCode::CREATED, github_json(&s, &p))
}

async fn gh_update(State(s): State<Shared>, UrlPath((owner, repo, number)): UrlPath<(String, String, u64)>, h: HeaderMap, body: Bytes) -> Response {
    let path = format!("PATCH /repos/{owner}/{repo}/pulls/{number}");
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    if !github_auth(&s, &h) {
        s.record("PATCH", path, body, StatusCode::UNAUTHORIZED);
        return answer(StatusCode::UNAUTHORIZED, json!({"message": "Bad credentials"}));
    }
    let full = format!("{owner}/{repo}");
    let updated = {
        let mut pulls = s.pulls.lock().unwrap();
        pulls.iter_mut().find(|p| p.repo == full && p.number == number).map(|p| {
            if let Some(t) = body["title"].as_str() {
                p.title = t.into();
            }
            if let Some(b) = body["body"].as_str() {
                p.body = b.into();
            }
            p.clone()
        })
    };
    match updated {
        Some(p) => {
            s.record("PATCH", path, body, StatusCode::OK);
            answer(StatusCode::OK, github_json(&s, &p))
        }
        None => {
            s.record("PATCH", path, body, StatusCode::NOT_FOUND);
            answer(StatusCode::NOT_FOUND, json!({"message": "Not Found"}))
        }
    }
}

async fn gl_list(State(s): State<Shared>, UrlPath(id): UrlPath<String>, Query(q): Query<std::collections::HashMap<String, String>>, h: HeaderMap) -> Response {
    let path = format!("GET /projects/{id}/merge_requests");
    if !gitlab_auth(&s, &h) {
        s.record("GET", path, Value::Null, StatusCode::UNAUTHORIZED);
        return answer(StatusCode::UNAUTHORIZED, json!({"message": "401 Unauthorized"}));
    }
    let source = q.get("source_branch").cloned();
    let open: Vec<Value> = s.pulls.lock().unwrap().iter().filter(|p| p.repo == id && source.as_ref().is_none_or(|b| &p.head == b)).map(|p| gitlab_json(&s, p)).collect();
    s.record("GET", path, json!(q), StatusCode::OK);
    answer(StatusCode::OK, Value::Array(open))
}

async fn gl_create(State(s): State<Shared>, UrlPath(id): UrlPath<String>, h: HeaderMap, body: Bytes) -> Response {
    let path = format!("POST /projects/{id}/merge_requests");
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    if !gitlab_auth(&s, &h) {
        s.record("POST", path, body, StatusCode::UNAUTHORIZED);
        return answer(StatusCode::UNAUTHORIZED, json!({"message": "401 Unauthorized"}));
    }
    let (head, base) = (body["source_branch"].as_str().unwrap_or_default(), body["target_branch"].as_str().unwrap_or_default());
    if !s.branch_exists(&id, head) || !s.branch_exists(&id, base) {
        s.record("POST", path, body.clone(), StatusCode::BAD_REQUEST);
        return answer(StatusCode::BAD_REQUEST, json!({"message": ["Source branch does not exist"]}));
    }
    let p = s.open(&id, head, base, body["title"].as_str().unwrap_or_default(), body["description"].as_str().unwrap_or_default());
    s.record("POST", path, body, StatusCode::CREATED);
    answer(StatusCode::CREATED, gitlab_json(&s, &p))
}

async fn gl_update(State(s): State<Shared>, UrlPath((id, iid)): UrlPath<(String, u64)>, h: HeaderMap, body: Bytes) -> Response {
    let path = format!("PUT /projects/{id}/merge_requests/{iid}");
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    if !gitlab_auth(&s, &h) {
        s.record("PUT", path, body, StatusCode::UNAUTHORIZED);
        return answer(StatusCode::UNAUTHORIZED, json!({"message": "401 Unauthorized"}));
    }
    let updated = {
        let mut pulls = s.pulls.lock().unwrap();
        pulls.iter_mut().find(|p| p.repo == id && p.number == iid).map(|p| {
            if let Some(t) = body["title"].as_str() {
                p.title = t.into();
            }
            if let Some(b) = body["description"].as_str() {
                p.body = b.into();
            }
            p.clone()
        })
    };
    match updated {
        Some(p) => {
            s.record("PUT", path, body, StatusCode::OK);
            answer(StatusCode::OK, gitlab_json(&s, &p))
        }
        None => {
            s.record("PUT", path, body, StatusCode::NOT_FOUND);
            answer(StatusCode::NOT_FOUND, json!({"message": "404 Not found"}))
        }
    }
}

/// Git's smart HTTP through `git http-backend` (CGI), for clients that give the token
/// as the Basic-auth password.
async fn git_http(State(s): State<Shared>, method: Method, uri: Uri, RawQuery(query): RawQuery, h: HeaderMap, body: Bytes) -> Response {
    let user = h
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
        .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
        .and_then(|b| String::from_utf8(b).ok())
        .and_then(|up| up.split_once(':').filter(|(_, p)| *p == s.token).map(|(u, _)| u.to_owned()));
    let Some(user) = user else {
        return (StatusCode::UNAUTHORIZED, [(header::WWW_AUTHENTICATE, "Basic realm=\"fake forge\"")], "authentication required\n").into_response();
    };
    let header = |name: &str| h.get(name).and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
    let mut child = match tokio::process::Command::new("git")
        .arg("http-backend")
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("GIT_PROJECT_ROOT", &s.root)
        .env("GIT_HTTP_EXPORT_ALL", "1")
        .env("PATH_INFO", uri.path())
        .env("QUERY_STRING", query.unwrap_or_default())
        .env("REQUEST_METHOD", method.as_str())
        .env("CONTENT_TYPE", header("content-type"))
        .env("CONTENT_LENGTH", body.len().to_string())
        .env("HTTP_CONTENT_ENCODING", header("content-encoding"))
        .env("GIT_PROTOCOL", header("git-protocol"))
        .env("REMOTE_USER", &user)
        .env("REMOTE_ADDR", "127.0.0.1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    {
        Ok(c) => c,
        Err(e) => return (StatusCode::INTERNAL_SERVER_ERROR, format!("cannot run git http-backend: {e}")).into_response(),
    };
    let mut stdin = child.stdin.take().unwrap();
    let writer = tokio::spawn(async move {
        let _ = stdin.write_all(&body).await;
    });
    let out = child.wait_with_output().await.unwrap();
    let _ = writer.await;
    // CGI: headers, a blank line, the body.
    let raw = out.stdout;
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").map(|i| (i, 4)).or_else(|| raw.windows(2).position(|w| w == b"\n\n").map(|i| (i, 2)));
    let Some((end, gap)) = split else {
        return (StatusCode::INTERNAL_SERVER_ERROR, String::from_utf8_lossy(&out.stderr).into_owned()).into_response();
    };
    let mut resp = Response::builder().status(StatusCode::OK);
    for line in String::from_utf8_lossy(&raw[..end]).lines() {
        if let Some((k, v)) = line.split_once(':') {
            let v = v.trim();
            if k.eq_ignore_ascii_case("status") {
                let code = v.split_whitespace().next().and_then(|c| c.parse::<u16>().ok()).unwrap_or(500);
                resp = resp.status(code);
            } else {
                resp = resp.header(k.trim(), v);
            }
        }
    }
    resp.body(Body::from(raw[end + gap..].to_vec())).unwrap()
}
