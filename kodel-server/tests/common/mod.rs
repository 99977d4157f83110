//! Test harness: a real PostgreSQL database per test, the real router on a real port.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

pub mod openapi;

use std::time::Duration;

use futures::StreamExt;
use kodel_server::{Config, Server};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use sqlx::postgres::PgConnectOptions;
use sqlx::{Connection, PgConnection};


pub use kodel_testkit::fresh_database;

pub fn test_config() -> Config {
    Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        database_url: None,
        data_dir: None,
        jwt_secret: None,
        max_body: 64 * 1024,
        db_pool: 16,
        db_timeout: 5.0,
        encryption_key: Some("AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=".into()),
        encryption_key_previous: None,
        metrics_token: None,
        public_url: None,
        oidc_issuer: None,
        oidc_client_id: None,
        oidc_client_secret: None,
        oidc_name: "single sign-on".into(),
        oidc_auto_create: true,
        oidc_org_claim: None,
        clickhouse_url: None,
        clickhouse_user: None,
        clickhouse_password: None,
        clickhouse_database: "kodel".into(),
        analytics_retention_days: 7.0,
        engine_tick: 0.2,
        webhook_retry: 0.2,
        spare_schemas: 0,
        job_lease: 60.0,
        allow_private_urls: true,
        llm: kodel_server::config::LlmSettings { llm_concurrency: 8, llm_timeout: 30.0, ..Default::default() },
        // Tests make many users from one address; the limits have tests of their own.
        limits: kodel_server::config::Limits { login_per_address: 10_000, ..Default::default() },
    }
}

pub struct TestApp {
    pub base: String,
    pub http: reqwest::Client,
    pub db: PgConnectOptions,
    pub server: Server,
}

impl TestApp {
    pub async fn spawn() -> Self {
        Self::spawn_on(fresh_database().await).await
    }

    pub async fn spawn_on(db: PgConnectOptions) -> Self {
        Self::spawn_with(db, test_config()).await
    }

    pub async fn spawn_with(db: PgConnectOptions, config: Config) -> Self {
        // Server logs show with a failing test's output (RUST_LOG picks the level).
        let _ = tracing_subscriber::fmt()
            .with_test_writer()
            .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()))
            .try_init();
        let server = Server::build(&config, db.clone()).await.unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let router = server.router.clone();
        tokio::spawn(kodel_server::serve::serve(listener, router, std::future::pending()));
        let http = reqwest::Client::builder().timeout(Duration::from_secs(30)).build().unwrap();
        Self { base: format!("http://{addr}"), http, db, server }
    }

    pub async fn sql(&self) -> PgConnection {
        PgConnection::connect_with(&self.db).await.unwrap()
    }

    pub async fn call(&self, method: Method, path: &str, token: Option<&str>, body: Option<Value>) -> (StatusCode, Value) {
        let mut req = self.http.request(method.clone(), format!("{}{path}", self.base));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status();
        let content_type = resp.headers().get("content-type").and_then(|v| v.to_str().ok()).map(str::to_owned);
        let text = resp.text().await.unwrap();
        let value = if text.is_empty() { Value::Null } else { serde_json::from_str(&text).unwrap_or(Value::String(text)) };
        // Every answer a test sees must be one the OpenAPI document describes.
        openapi::check(method.as_str(), path, status.as_u16(), content_type.as_deref(), &value);
        (status, value)
    }

    pub async fn get(&self, path: &str, token: &str) -> (StatusCode, Value) {
        self.call(Method::GET, path, Some(token), None).await
    }

    pub async fn post(&self, path: &str, token: &str, body: Value) -> (StatusCode, Value) {
        self.call(Method::POST, path, Some(token), Some(body)).await
    }

    pub async fn patch(&self, path: &str, token: &str, body: Value) -> (StatusCode, Value) {
        self.call(Method::PATCH, path, Some(token), Some(body)).await
    }

    pub async fn delete(&self, path: &str, token: &str) -> (StatusCode, Value) {
        self.call(Method::DELETE, path, Some(token), None).await
    }

    /// Registers a user and logs in; returns the access token.
    pub async fn register(&self, email: &str) -> String {
        self.register_pair(email).await["access_token"].as_str().unwrap().to_owned()
    }

    /// Registers a user and logs in; returns the login's answer (both tokens).
    pub async fn register_pair(&self, email: &str) -> Value {
        let body = json!({"email": email, "password": "correct horse", "name": email});
        let (s, v) = self.call(Method::POST, "/api/v1/auth/register", None, Some(body)).await;
        assert_eq!(s, StatusCode::ACCEPTED, "{v}");
        let (s, v) = self.call(Method::POST, "/api/v1/auth/login", None, Some(json!({"email": email, "password": "correct horse"}))).await;
        assert_eq!(s, StatusCode::OK, "{v}");
        v
    }

    /// A user who owns org `slug` with project `key`.
    pub async fn owner_with_project(&self, email: &str, slug: &str, key: &str) -> String {
        let token = self.register(email).await;
        let (s, v) = self.post("/api/v1/orgs", &token, json!({"slug": slug, "name": slug})).await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
        let (s, v) = self.post(&format!("/api/v1/orgs/{slug}/projects"), &token, json!({"key": key, "name": key})).await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
        token
    }

    pub async fn create_task(&self, token: &str, slug: &str, key: &str, title: &str) -> Value {
        let (s, v) = self.post(&format!("/api/v1/orgs/{slug}/projects/{key}/tasks"), token, json!({"title": title})).await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
        v
    }

    /// An org transaction for calling the engine directly (as the agents hub will).
    pub async fn org_tx(&self, slug: &str) -> kodel_server::db::OrgTx {
        let slug = kodel_core::OrgSlug::parse(slug).unwrap();
        let id: uuid::Uuid = sqlx::query_scalar("SELECT id FROM orgs WHERE slug = $1").bind(slug.as_str()).fetch_one(&self.server.state.pool).await.unwrap();
        kodel_server::db::OrgTx::begin(&self.server.state.pool, id, &slug).await.unwrap()
    }

    /// Commits an org transaction the way the server does (the engine reacts first).
    pub async fn commit(&self, db: kodel_server::db::OrgTx) {
        self.server.state.commit(db).await.unwrap();
    }

    /// The event types of a task, oldest first.
    pub async fn event_types(&self, slug: &str, task: &str) -> Vec<String> {
        let (project, number) = task.split_once('-').unwrap();
        let sql = format!(
            "SELECT e.type FROM \"org_{slug}\".task_events e JOIN \"org_{slug}\".tasks t ON t.id = e.task_id
             JOIN \"org_{slug}\".projects p ON p.id = t.project_id WHERE p.key = $1 AND t.number = $2 ORDER BY e.seq"
        );
        sqlx::query_scalar(&sql).bind(project).bind(number.parse::<i32>().unwrap()).fetch_all(&self.server.state.pool).await.unwrap()
    }

    /// The payloads of a task's events of one type, oldest first.
    pub async fn events_of(&self, slug: &str, task: &str, kind: &str) -> Vec<Value> {
        let (project, number) = task.split_once('-').unwrap();
        let sql = format!(
            "SELECT e.payload FROM \"org_{slug}\".task_events e JOIN \"org_{slug}\".tasks t ON t.id = e.task_id
             JOIN \"org_{slug}\".projects p ON p.id = t.project_id WHERE p.key = $1 AND t.number = $2 AND e.type = $3 ORDER BY e.seq"
        );
        sqlx::query_scalar(&sql).bind(project).bind(number.parse::<i32>().unwrap()).bind(kind).fetch_all(&self.server.state.pool).await.unwrap()
    }

    pub async fn sse(&self, path: &str, token: &str, last_event_id: Option<i64>) -> SseClient {
        let mut req = self.http.get(format!("{}{path}", self.base)).bearer_auth(token).timeout(Duration::from_secs(3600));
        if let Some(id) = last_event_id {
            req = req.header("Last-Event-ID", id.to_string());
        }
        let resp = req.send().await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(resp.headers()["content-type"], "text/event-stream");
        openapi::check("GET", path, 200, Some("text/event-stream"), &Value::Null);
        SseClient { stream: Box::pin(resp.bytes_stream()), buf: String::new() }
    }
}

pub fn code(v: &Value) -> &str {
    v["error"]["code"].as_str().unwrap_or("")
}

#[derive(Debug, Clone)]
pub struct SseEvent {
    pub id: Option<i64>,
    pub event: String,
    pub data: Value,
}

pub struct SseClient {
    stream: std::pin::Pin<Box<dyn futures::Stream<Item = reqwest::Result<bytes::Bytes>> + Send>>,
    buf: String,
}

impl SseClient {
    /// The next event (comments such as heartbeats are skipped), or None at the deadline.
    pub async fn next_within(&mut self, wait: Duration) -> Option<SseEvent> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            if let Some(pos) = self.buf.find("\n\n") {
                let block: String = self.buf.drain(..pos + 2).collect();
                let mut ev = SseEvent { id: None, event: "message".into(), data: Value::Null };
                let mut data = String::new();
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("id: ") {
                        ev.id = v.parse().ok();
                    } else if let Some(v) = line.strip_prefix("event: ") {
                        ev.event = v.to_owned();
                    } else if let Some(v) = line.strip_prefix("data: ") {
                        data.push_str(v);
                    }
                }
                if data.is_empty() && ev.id.is_none() {
                    continue; // a comment (heartbeat)
                }
                ev.data = serde_json::from_str(&data).unwrap_or(Value::String(data));
                return Some(ev);
            }
            let chunk = tokio::time::timeout_at(deadline, self.stream.next()).await.ok()??.ok()?;
            self.buf.push_str(&String::from_utf8_lossy(&chunk));
        }
    }

    /// Waits for a comment line (`:...`), such as a heartbeat; true if one came in time.
    pub async fn comment_within(&mut self, wait: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            if self.buf.lines().any(|l| l.starts_with(':')) {
                return true;
            }
            match tokio::time::timeout_at(deadline, self.stream.next()).await {
                Ok(Some(Ok(chunk))) => self.buf.push_str(&String::from_utf8_lossy(&chunk)),
                _ => return false,
            }
        }
    }

    /// True if the server ends the stream before the deadline.
    pub async fn ended_within(&mut self, wait: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            match tokio::time::timeout_at(deadline, self.stream.next()).await {
                Ok(None) | Ok(Some(Err(_))) => return true,
                Ok(Some(Ok(_))) => continue,
                Err(_) => return false,
            }
        }
    }

    pub async fn next(&mut self) -> SseEvent {
        self.next_within(Duration::from_secs(10)).await.expect("an event within 10 s")
    }
}

/// The real `kodel-server` binary of this build.
pub fn start_server(args: &[&str], env: &[(&str, &str)]) -> kodel_testkit::ServerProcess {
    kodel_testkit::ServerProcess::start(std::path::Path::new(env!("CARGO_BIN_EXE_kodel-server")), args, env)
}

/// The value of the sample `name` (no labels) in a Prometheus or OpenMetrics page.
pub fn metric(page: &str, name: &str) -> Option<f64> {
    page.lines().find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}
