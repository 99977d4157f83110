//! Shared setup for the in-process benchmarks: a server on a fresh database, served on a
//! local port, and a user who owns some orgs.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use kodel_testkit::register;
use kodel_server::{Config, Server};
use serde_json::{Value, json};

pub struct Bench {
    pub server: Server,
    pub base: String,
    pub http: reqwest::Client,
    pub token: String,
}

impl Bench {
    pub async fn start(engine_tick: f64) -> Self {
        Self::start_with(engine_tick, kodel_server::config::LlmSettings { llm_concurrency: 8, llm_timeout: 30.0, ..Default::default() }).await
    }

    /// The same with the given LLM provider settings (e.g. a scripted provider's URL).
    pub async fn start_with(engine_tick: f64, llm: kodel_server::config::LlmSettings) -> Self {
        let db = kodel_testkit::fresh_database().await;
        let config = Config {
            listen: "127.0.0.1:0".parse().unwrap(),
            database_url: None,
            data_dir: None,
            jwt_secret: None,
            max_body: 1 << 20,
            db_pool: 16,
        db_timeout: 5.0,
            encryption_key: None,
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
            engine_tick,
            webhook_retry: 10.0,
            spare_schemas: 2,
            job_lease: 60.0,
            allow_private_urls: true,
            llm,
            // Benchmarks open many streams and logins from one address as one user.
            limits: kodel_server::config::Limits { login_per_address: 1_000_000, streams_per_user: 1_000_000, streams_per_org: 1_000_000, ..Default::default() },
        };
        let server = Server::build(&config, db).await.unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let router = server.router.clone();
        tokio::spawn(kodel_server::serve::serve(listener, router, std::future::pending()));
        let http = reqwest::Client::new();
        let token = register(&base, "b@x.io").await;
        Self { server, base, http, token }
    }

    pub async fn post(&self, path: &str, body: Value) -> Value {
        let resp = self.http.post(format!("{}{path}", self.base)).bearer_auth(&self.token).json(&body).send().await.unwrap();
        assert!(resp.status().is_success(), "{path}: {}", resp.status());
        resp.json().await.unwrap()
    }

    /// An org with a Kanban project `key` and `tasks` tasks.
    pub async fn org(&self, slug: &str, key: &str, tasks: usize) {
        self.post("/api/v1/orgs", json!({"slug": slug, "name": slug})).await;
        self.post(&format!("/api/v1/orgs/{slug}/projects"), json!({"key": key, "name": key})).await;
        for i in 0..tasks {
            self.post(&format!("/api/v1/orgs/{slug}/projects/{key}/tasks"), json!({"title": format!("task {i}")})).await;
        }
    }
}

/// The p-th percentile of sorted durations, in milliseconds.
pub fn pct(sorted: &[std::time::Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1000.0
}
