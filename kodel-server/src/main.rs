use anyhow::Context;
use clap::Parser;
use kodel_server::db::managed::ManagedPostgres;
use kodel_server::{Config, Server};
use sqlx::postgres::PgConnectOptions;
use tracing_subscriber::EnvFilter;

/// jemalloc, with a background thread that gives freed memory back to the system
/// within about a second: glibc's malloc kept hundreds of MB after a hostile run had
/// ended (docs/benchmarks.md, "Memory").
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Read by jemalloc at start (`_rjem_` is the prefix of the crate's build of it).
#[unsafe(export_name = "_rjem_malloc_conf")]
pub static MALLOC_CONF: &[u8; 70] = b"background_thread:true,dirty_decay_ms:1000,muzzy_decay_ms:0,narenas:4\0";

#[tokio::main]
async fn main() {
    if let Err(err) = run().await {
        eprintln!("kodel-server: {err:#}");
        std::process::exit(1);
    }
}

async fn run() -> anyhow::Result<()> {
    let config = Config::parse();
    raise_file_limit();
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn")))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()) && std::env::var_os("NO_COLOR").is_none())
        .init();

    let (db, managed) = match &config.database_url {
        Some(url) => (url.parse::<PgConnectOptions>().context("DATABASE_URL is not a valid PostgreSQL URL")?, None),
        None => {
            let dir = config.data_dir()?;
            let pg = ManagedPostgres::start(&dir).await?;
            tracing::info!(data_dir = %dir.display(), "using the managed PostgreSQL");
            (pg.connect_options(), Some(pg))
        }
    };

    let result = serve(&config, db).await;
    if let Some(pg) = managed {
        tracing::info!("stopping the managed PostgreSQL");
        if let Err(err) = pg.stop().await {
            tracing::warn!(error = %err, "managed PostgreSQL did not stop cleanly");
        }
    }
    result
}

async fn serve(config: &Config, db: PgConnectOptions) -> anyhow::Result<()> {
    let server = Server::build(config, db).await?;
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    tracing::info!(addr = %listener.local_addr()?, "kodel-server listening");
    let hub = server.state.hub.clone();
    let stopping = async move {
        shutdown_signal().await;
        // Agents are told before the listener goes: they reconnect to the next server.
        hub.shut_down();
        hub.drained(std::time::Duration::from_secs(3)).await;
    };
    kodel_server::serve::serve(listener, server.router, stopping).await;
    server.state.pool.close().await;
    Ok(())
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let term = async {
        match signal(SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        _ = term => {},
    }
    tracing::info!("shutting down");
}

/// Each SSE subscriber holds a socket: lift the soft open-files limit to the hard one.
fn raise_file_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE)
        && soft < hard
    {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
    }
}
