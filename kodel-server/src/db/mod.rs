//! Database access: the pool, migrations, and the managed local cluster.

pub mod managed;
pub mod migrate;
pub mod scoped;

pub use scoped::OrgTx;

use std::time::Duration;

use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

/// The pool. `acquire_timeout` bounds the wait for a connection, and so how long a
/// request waits while the database is away before it answers 503.
pub async fn connect(options: PgConnectOptions, max: u32, acquire_timeout: Duration) -> Result<PgPool, sqlx::Error> {
    PgPoolOptions::new()
        .max_connections(max)
        .min_connections(1)
        .acquire_timeout(acquire_timeout)
        // No ping on every checkout: it is a round trip per request, and a broken
        // connection fails its query anyway (and is then dropped from the pool).
        .test_before_acquire(false)
        .connect_with(options)
        .await
}

/// Begins a transaction on a pooled connection, always: use this, never `pool.begin()`.
///
/// sqlx 0.8's BEGIN cancelled between sending the statement and reading its answer
/// (a client that hangs up, a stream dropped mid-step) leaves the connection inside a
/// transaction that sqlx does not know of: its rollback guard looks at a depth it has
/// not raised yet. The pool then hands that connection out "idle in transaction", and
/// every later write on it is answered but never committed. So the BEGIN runs to its
/// end on a task of its own; a caller that left drops the finished transaction, which
/// rolls back before the connection goes back to the pool.
///
/// The BEGIN is also bounded by the pool's acquire timeout (`KODEL_DB_TIMEOUT`): a
/// database that holds its connections open but answers nothing (a stalled host, a
/// network that drops packets) fails the request as unreachable (503) instead of
/// hanging it until TCP gives up.
pub async fn begin(pool: &PgPool) -> Result<sqlx::Transaction<'static, sqlx::Postgres>, sqlx::Error> {
    let limit = pool.options().get_acquire_timeout();
    let pool = pool.clone();
    #[allow(clippy::disallowed_methods)]
    let started = tokio::spawn(async move { pool.begin().await });
    match tokio::time::timeout(limit, started).await {
        Ok(done) => done.map_err(|e| sqlx::Error::Protocol(format!("the task that began a transaction failed: {e}")))?,
        Err(_) => Err(sqlx::Error::PoolTimedOut),
    }
}
