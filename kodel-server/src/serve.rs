//! The HTTP server loop: the router over hyper (HTTP/1.1 only: nothing here needs
//! HTTP/2, and it would be one more protocol for a client to hold connections with),
//! with what `axum::serve` does not give: a deadline for a request's first byte and for
//! its headers (a client that sends nothing, or never finishes, is cut off, not kept),
//! the peer's address on every request (`ConnectInfo`, for the login limits), and
//! TCP_NODELAY (small writes such as SSE events and WebSocket frames go out at once
//! instead of waiting on Nagle's algorithm and the peer's delayed ACK).

use std::future::Future;
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tower::ServiceExt;

/// How long a client may take to send a request's headers.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves `router` on `listener` until `shutdown` completes, then waits for the open
/// connections to finish (streams end on their own at shutdown).
pub async fn serve(listener: TcpListener, router: Router, shutdown: impl Future<Output = ()>) {
    // Dropped at shutdown: every connection then finishes what it serves and closes.
    let (stopping, stop) = tokio::sync::watch::channel(());
    // Held by every connection: closed once the last one is done.
    let (all_done, open) = tokio::sync::watch::channel(());
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(e) => {
                    // Out of file descriptors and the like: wait, do not spin.
                    tracing::warn!(error = %e, "cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = tcp.set_nodelay(true);
        let router = router.clone();
        let service = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
            req.extensions_mut().insert(ConnectInfo(peer));
            router.clone().oneshot(req)
        });
        let (mut stop, open) = (stop.clone(), open.clone());
        tokio::spawn(async move {
            // hyper's header deadline starts with the first byte: a silent client gets the
            // same time to begin.
            let mut first = [0u8; 1];
            if !matches!(tokio::time::timeout(HEADER_READ_TIMEOUT, tcp.peek(&mut first)).await, Ok(Ok(1..))) {
                return;
            }
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .serve_connection(TokioIo::new(tcp), service)
                .with_upgrades();
            let mut conn = std::pin::pin!(conn);
            let ended = tokio::select! {
                ended = conn.as_mut() => ended,
                _ = stop.changed() => {
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            };
            if let Err(e) = ended {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
            drop(open);
        });
    }
    drop(listener);
    drop(stopping);
    drop(open);
    all_done.closed().await;
}
