//! Analytics: what LLM calls cost and what jobs did, for reports.
//!
//! - `outbox`: the rows, written with the work they describe to
//!   `public.analytics_outbox`;
//! - `prices`: what a model costs (built in, or set per org);
//! - `budgets`: limits on what calls may spend, checked before each call;
//! - `clickhouse` and `shipper`: with `KODEL_CLICKHOUSE_URL` set, the rows are moved
//!   to ClickHouse in batches, once each, and leave PostgreSQL after the retention;
//! - `usage`: the usage report, from ClickHouse when configured, else PostgreSQL.

pub mod budgets;
pub mod clickhouse;
pub mod outbox;
pub mod prices;
pub mod shipper;
pub mod usage;

use tokio::sync::Mutex;

use self::clickhouse::{ClickHouse, ClickHouseConfig};

/// Where reports are read: ClickHouse when configured (connected on first use and
/// again after a failure), else PostgreSQL.
pub struct Analytics {
    config: Option<ClickHouseConfig>,
    connected: Mutex<Option<ClickHouse>>,
}

impl Analytics {
    pub fn new(config: Option<ClickHouseConfig>) -> Self {
        Self { config, connected: Mutex::new(None) }
    }

    pub fn config(&self) -> Option<&ClickHouseConfig> {
        self.config.as_ref()
    }

    /// The ClickHouse reports read, if one is configured.
    pub async fn clickhouse(&self) -> Option<anyhow::Result<ClickHouse>> {
        let config = self.config.as_ref()?;
        let mut connected = self.connected.lock().await;
        if let Some(ch) = &*connected {
            return Some(Ok(ch.clone()));
        }
        Some(ClickHouse::connect(config).await.map(|ch| connected.insert(ch).clone()))
    }

    /// Forgets the connection after a failure, so the next report connects again.
    pub async fn failed(&self) {
        *self.connected.lock().await = None;
    }
}
