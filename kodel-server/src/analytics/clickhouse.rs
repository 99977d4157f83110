//! ClickHouse: its tables, their versioned migrations, and the rows the shipper
//! inserts. The SQL keeps to what ClickHouse 18.16 (Debian's) accepts and current
//! ClickHouse still does: `DateTime('UTC')`, not DateTime64; no LowCardinality, Map,
//! JSON or Bool; values bound on the client, not as server-side parameters.
//!
//! Nothing is counted twice: each row carries its outbox id, the tables are
//! `ReplacingMergeTree`s keyed by it, and reports read them `FINAL`. So a batch
//! inserted again after a crash between the insert and the outbox's mark leaves the
//! totals as they were.

use anyhow::Context;
use clickhouse::Client;
use serde::Serialize;

/// Where ClickHouse is and who to be there.
#[derive(Debug, Clone)]
pub struct ClickHouseConfig {
    pub url: String,
    pub user: Option<String>,
    pub password: Option<String>,
    pub database: String,
}

/// The tables, in order; each applied once (`kodel_migrations`). Forward only.
pub const MIGRATIONS: &[(u32, &str)] = &[
    (
        1,
        "CREATE TABLE IF NOT EXISTS llm_calls (
            id UInt64, at DateTime('UTC'),
            org_id String, org String, project_id String, task_id String, job_id String, agent_id String, user_id String,
            provider String, model String,
            input_tokens UInt64, output_tokens UInt64, cached_tokens UInt64, usage_estimated UInt8,
            cost_micros Int64, priced UInt8,
            first_token_ms Nullable(UInt32), total_ms UInt32, status String, error String
        ) ENGINE = ReplacingMergeTree() PARTITION BY toYYYYMM(at) ORDER BY (org_id, at, id)",
    ),
    (
        2,
        "CREATE TABLE IF NOT EXISTS job_events (
            id UInt64, at DateTime('UTC'),
            org_id String, org String, project_id String, task_id String, job_id String, agent_id String,
            job_kind String, event String, state String, attempt UInt32,
            duration_ms Nullable(UInt64), steps UInt32
        ) ENGINE = ReplacingMergeTree() PARTITION BY toYYYYMM(at) ORDER BY (org_id, at, id)",
    ),
];

/// A row of `llm_calls`. Ids are text, empty where the call has none.
#[derive(Debug, Clone, PartialEq, clickhouse::Row, Serialize, serde::Deserialize)]
pub struct LlmCallRow {
    pub id: u64,
    /// Seconds since the epoch.
    pub at: u32,
    pub org_id: String,
    pub org: String,
    pub project_id: String,
    pub task_id: String,
    pub job_id: String,
    pub agent_id: String,
    pub user_id: String,
    pub provider: String,
    pub model: String,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cached_tokens: u64,
    pub usage_estimated: u8,
    pub cost_micros: i64,
    pub priced: u8,
    pub first_token_ms: Option<u32>,
    pub total_ms: u32,
    pub status: String,
    pub error: String,
}

/// A row of `job_events`.
#[derive(Debug, Clone, PartialEq, clickhouse::Row, Serialize, serde::Deserialize)]
pub struct JobEventRow {
    pub id: u64,
    pub at: u32,
    pub org_id: String,
    pub org: String,
    pub project_id: String,
    pub task_id: String,
    pub job_id: String,
    pub agent_id: String,
    pub job_kind: String,
    pub event: String,
    pub state: String,
    pub attempt: u32,
    pub duration_ms: Option<u64>,
    pub steps: u32,
}

/// The longest a ClickHouse request may take: a ClickHouse that hangs must not hold
/// the shipper's locked outbox rows, nor a usage report, for ever.
pub const TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Runs a ClickHouse request within `TIMEOUT`.
pub async fn bounded<T>(what: &str, work: impl std::future::Future<Output = anyhow::Result<T>>) -> anyhow::Result<T> {
    tokio::time::timeout(TIMEOUT, work).await.map_err(|_| anyhow::anyhow!("ClickHouse did not answer {what} within {} s", TIMEOUT.as_secs()))?
}

/// A connected ClickHouse, its database made and migrated.
#[derive(Clone)]
pub struct ClickHouse {
    client: Client,
}

impl ClickHouse {
    fn new_client(config: &ClickHouseConfig) -> Client {
        // Validation reads column types the 2018 server does not describe; RowBinary
        // as the structs above spell it is what every version takes.
        let mut client = Client::default().with_url(&config.url).with_validation(false);
        if let Some(user) = &config.user {
            client = client.with_user(user);
        }
        if let Some(password) = &config.password {
            client = client.with_password(password);
        }
        client
    }

    /// Makes the database if need be and applies the pending migrations.
    pub async fn connect(config: &ClickHouseConfig) -> anyhow::Result<Self> {
        bounded("the connection and migrations", Self::connect_unbounded(config)).await
    }

    async fn connect_unbounded(config: &ClickHouseConfig) -> anyhow::Result<Self> {
        anyhow::ensure!(
            !config.database.is_empty() && config.database.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'),
            "KODEL_CLICKHOUSE_DATABASE must be letters, digits and _"
        );
        let server = Self::new_client(config);
        server
            .query(&format!("CREATE DATABASE IF NOT EXISTS {}", config.database))
            .execute()
            .await
            .with_context(|| format!("ClickHouse at {} does not answer", config.url))?;
        let ch = Self { client: server.with_database(&config.database) };
        ch.migrate().await?;
        Ok(ch)
    }

    async fn migrate(&self) -> anyhow::Result<()> {
        self.client
            .query("CREATE TABLE IF NOT EXISTS kodel_migrations (version UInt32, applied_at DateTime('UTC')) ENGINE = MergeTree() ORDER BY version")
            .execute()
            .await?;
        let done: u32 = self.client.query("SELECT toUInt32(max(version)) FROM kodel_migrations").fetch_one().await?;
        for (version, sql) in MIGRATIONS.iter().filter(|(v, _)| *v > done) {
            self.client.query(sql).execute().await.with_context(|| format!("ClickHouse migration {version}"))?;
            self.client.query("INSERT INTO kodel_migrations VALUES (?, now())").bind(*version).execute().await?;
            tracing::info!(version, "applied a ClickHouse migration");
        }
        Ok(())
    }

    /// For reports (`usage`).
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Inserts rows into `table`, one request (within `TIMEOUT`).
    pub async fn insert<T: clickhouse::RowOwned + clickhouse::RowWrite>(&self, table: &str, rows: &[T]) -> anyhow::Result<()> {
        if rows.is_empty() {
            return Ok(());
        }
        bounded(&format!("an insert into {table}"), async {
            let mut insert = self.client.insert::<T>(table).await?;
            for row in rows {
                insert.write(row).await?;
            }
            insert.end().await?;
            Ok(())
        })
        .await
    }
}
