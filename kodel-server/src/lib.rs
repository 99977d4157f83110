//! Kodel's server: REST + SSE over PostgreSQL, one schema per organization.
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

pub mod analytics;
pub mod auth;
pub mod config;
pub mod crypto;
pub mod db;
pub mod engine;
pub mod error;
pub mod events;
pub mod hub;
pub mod json;
pub mod llm;
pub mod metrics;
pub mod net;
pub mod replicas;
pub mod routes;
pub mod serve;
pub mod tenant;
pub mod web;

use std::sync::Arc;

use sqlx::PgPool;
use sqlx::postgres::PgConnectOptions;

pub use config::Config;

#[derive(Clone)]
pub struct AppState {
    pub pool: PgPool,
    pub jwt: Arc<auth::JwtKeys>,
    pub events: events::EventHub,
    /// Signals to and from the other replicas (queued jobs, cancels, live output).
    pub replicas: replicas::Replicas,
    pub token_uses: Arc<auth::extract::TokenUses>,
    pub sealer: Arc<crypto::Sealer>,
    pub background: engine::background::Background,
    /// For webhooks.
    pub http: reqwest::Client,
    /// Woken when a spare org schema was used (see `db::migrate::take_spare`).
    pub spares: Arc<tokio::sync::Notify>,
    /// Connected agent workers and the dispatch of jobs to them.
    pub hub: hub::Hub,
    pub llm: Arc<llm::Proxy>,
    /// Task creations waiting to be committed together (engine/tasks/create.rs).
    pub creates: engine::tasks::Creates,
    /// KODEL_ALLOW_PRIVATE_URLS (see net.rs).
    pub allow_private_urls: bool,
    /// Bounds on password work (auth/limits.rs).
    pub logins: Arc<auth::limits::LoginLimits>,
    /// Open event streams per user and org (routes/events.rs).
    pub streams: Arc<routes::events::StreamCounts>,
    /// What `/metrics` shows.
    pub metrics: Arc<metrics::Metrics>,
    /// Where usage reports are read (ClickHouse, if configured).
    pub analytics: Arc<analytics::Analytics>,
    /// Single sign-on, when an OpenID provider is configured.
    pub sso: Option<Arc<auth::oidc::Sso>>,
    /// How the web view sets its cookies.
    pub web: Arc<web::WebSettings>,
}

impl AppState {
    /// Commits a change: the engine reacts to what it recorded and commits
    /// (`engine::commit`), then `announce` tells whoever waits.
    pub async fn commit(&self, db: db::OrgTx) -> error::ApiResult<()> {
        let journal = engine::commit(db).await?;
        self.announce(&journal);
        Ok(())
    }

    /// As `commit`, letting `read` see the outcome before the commit.
    pub async fn commit_with<T>(&self, db: db::OrgTx, read: impl AsyncFnOnce(&mut db::OrgTx) -> error::ApiResult<T>) -> error::ApiResult<T> {
        let (out, journal) = engine::commit_with(db, read).await?;
        self.announce(&journal);
        Ok(out)
    }

    /// The one place a committed change is handed on: the org's event streams (here and
    /// on other replicas), the agents hub (queued and cancelled jobs), and the webhook
    /// sender.
    pub fn announce(&self, journal: &db::scoped::Journal) {
        for kind in journal.events.iter().map(|ev| ev.event.kind()).filter(|k| analytics::outbox::is_job_change(*k)) {
            self.metrics.job_changes.get_or_create(&metrics::JobLabels { event: kind.as_str().into() }).inc();
        }
        if journal.wrote_events() {
            self.events.changed(&journal.slug);
            for signal in self.hub.after_commit(&journal.slug, &journal.events) {
                self.replicas.send(signal);
            }
        }
        if journal.queued_webhooks {
            self.background.webhooks_due(&journal.slug, journal.org_id);
        }
    }
}

/// Keeps `target` spare org schemas ready, refilling after each org creation.
async fn keep_spares(state: AppState, target: usize) {
    loop {
        if let Err(e) = db::migrate::refill_spares(&state.pool, target).await {
            tracing::warn!(error = %e, "could not prepare a spare org schema; orgs are created without one");
        }
        state.spares.notified().await;
    }
}

/// A server ready to serve: migrated database, keys loaded, router built.
pub struct Server {
    pub state: AppState,
    pub router: axum::Router,
}

impl Server {
    /// Connects, migrates and builds the router. Used by `main` and by tests.
    pub async fn build(config: &Config, db: PgConnectOptions) -> anyhow::Result<Self> {
        let pool = db::connect(db, config.db_pool, std::time::Duration::from_secs_f64(config.db_timeout.clamp(0.1, 600.0))).await?;
        let started = std::time::Instant::now();
        let report = db::migrate::run(&pool).await?;
        tracing::info!(
            shared = report.shared_applied,
            orgs = report.orgs_migrated,
            failed = report.orgs_failed.len(),
            ms = started.elapsed().as_millis() as u64,
            "migrations checked"
        );
        let sealer = Arc::new(crypto::Sealer::load(&pool, config.encryption_key.as_deref(), config.encryption_key_previous.as_deref(), &config.data_dir()?).await?);
        let jwt = Arc::new(auth::JwtKeys::load(&pool, config.jwt_secret.as_deref(), &sealer).await?);
        if sealer.rotating() {
            let (pool, sealer) = (pool.clone(), sealer.clone());
            tokio::spawn(async move {
                match crypto::reseal_all(&pool, &sealer).await {
                    Ok((again, 0)) => tracing::info!(again, "every stored secret is sealed with KODEL_ENCRYPTION_KEY; KODEL_ENCRYPTION_KEY_PREVIOUS can go"),
                    Ok((again, unreadable)) => tracing::warn!(again, unreadable, "secrets sealed again, but some open with neither key: enter them again"),
                    Err(e) => tracing::error!(error = %e, "sealing the stored secrets again failed; it is tried at the next start"),
                }
            });
        }
        let secs = |s: f64| std::time::Duration::from_secs_f64(s.clamp(0.01, 86_400.0));
        let (background, wakes) = engine::background::Background::new(secs(config.engine_tick), secs(config.webhook_retry));
        let (creates, created_rx) = engine::tasks::Creates::new();
        let state = AppState {
            events: events::EventHub::new(pool.clone()),
            replicas: replicas::Replicas::new(pool.clone()),
            pool,
            jwt,
            token_uses: Arc::default(),
            sealer,
            background,
            http: engine::webhooks::client(),
            spares: Arc::default(),
            hub: hub::Hub::new(secs(config.job_lease)),
            llm: Arc::new(llm::Proxy::new(&config.llm, llm::client())),
            creates,
            allow_private_urls: config.allow_private_urls,
            logins: Arc::new(auth::limits::LoginLimits::new(
                config.limits.login_per_address,
                config.limits.login_per_account,
                auth::limits::Cidr::parse_list(&config.limits.trusted_proxies).map_err(|e| anyhow::anyhow!("KODEL_TRUSTED_PROXIES: {e}"))?,
            )),
            streams: Arc::new(routes::events::StreamCounts::new(config.limits.streams_per_user, config.limits.streams_per_org)),
            metrics: Arc::new(metrics::Metrics::new(config.metrics_token.as_deref())),
            analytics: Arc::new(analytics::Analytics::new(config.clickhouse())),
            sso: config.sso()?.map(|c| auth::oidc::Sso::new(c).map(Arc::new)).transpose()?,
            web: Arc::new(web::WebSettings::new(&config.public_url())),
        };
        engine::tasks::Creates::start(&state, created_rx);
        tokio::spawn(replicas::listen(state.clone()));
        engine::background::spawn(state.clone(), wakes);
        if let Some(ch) = config.clickhouse() {
            let retention = std::time::Duration::from_secs_f64(config.analytics_retention_days.clamp(0.0, 36_500.0) * 86_400.0);
            tokio::spawn(analytics::shipper::run(state.pool.clone(), ch, retention, state.metrics.clone()));
        }
        if config.spare_schemas > 0 {
            tokio::spawn(keep_spares(state.clone(), config.spare_schemas));
        }
        let router = routes::router(state.clone(), config.max_body);
        Ok(Self { state, router })
    }
}
