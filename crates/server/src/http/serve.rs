//! The accept loop: every TCP connection is served by hyper's HTTP/1 with a header read timeout.
//!
//! `axum::serve` gives a connection no deadline to finish its request headers, so a socket that
//! opens TCP and never completes the WebSocket upgrade (or sends half a request) is held, with
//! its buffers, for as long as the peer likes: 500 of them held 14 MB for as long as they
//! stayed open. hyper's `header_read_timeout` closes a connection whose headers are not complete
//! within the deadline, counted from the moment hyper starts waiting for a request (so an idle
//! keep-alive REST connection is closed after it too). Once a connection is upgraded to a
//! WebSocket it leaves hyper and the socket's own idle timeout applies.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Serve `app` on `listener` until `shutdown`; connections still reading a request are asked
/// to finish gracefully.
pub(crate) async fn serve(
    listener: TcpListener,
    app: Router,
    header_timeout: Duration,
    shutdown: CancellationToken,
) {
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(header_timeout);
    let http = Arc::new(http);
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        let (tcp, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of file descriptors and the like: wait instead of spinning, as axum does.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        // Small frames must leave at once: without TCP_NODELAY a second small write waits for
        // the peer's delayed ACK of the first (~40 ms), as the interop tests measured.
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY");
        }
        let http = http.clone();
        let service = TowerToHyperService::new(app.clone());
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let conn = http
                .serve_connection(TokioIo::new(tcp), service)
                .with_upgrades();
            tokio::pin!(conn);
            let result = tokio::select! {
                r = conn.as_mut() => r,
                _ = shutdown.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            };
            if let Err(e) = result {
                // A header timeout, a reset, a malformed request: the peer's problem only.
                tracing::debug!(%peer, error = %e, "HTTP connection ended");
            }
        });
    }
}
