//! Database access: the pool, migrations, and the managed local cluster.

pub mod managed;
pub mod migrate;

use std::time::Duration;

use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

pub async fn connect(options: PgConnectOptions, max: u32) -> Result<PgPool, sqlx::Error> {
    PgPoolOptions::new()
        .max_connections(max)
        .min_connections(1)
        .acquire_timeout(Duration::from_secs(10))
        // No ping on every checkout: it is a round trip per request, and a broken
        // connection fails its query anyway (and is then dropped from the pool).
        .test_before_acquire(false)
        .connect_with(options)
        .await
}
