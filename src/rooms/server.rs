//! `clickstay rooms serve`: binds the reservation API and serves it until Ctrl-C.

use std::net::SocketAddr;

use anyhow::{Context, Result};
use tokio::net::TcpListener;
use tracing::info;

use super::api;
use super::shards::Shards;
use super::view::RoomsView;

/// The default address: loopback only, so nothing is exposed by accident.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";

/// Serves the API on `listener` until `shutdown` completes.
pub async fn serve_on(
    listener: TcpListener,
    shards: Shards,
    view: Option<RoomsView>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<()> {
    use axum::serve::ListenerExt;
    // Small request/response pairs on kept-alive connections: do not wait for Nagle.
    let listener = listener.tap_io(|stream| {
        let _ = stream.set_nodelay(true);
    });
    axum::serve(listener, api::router(shards, view))
        .with_graceful_shutdown(shutdown)
        .await
        .context("HTTP server failed")
}

/// Binds `listen` and serves until Ctrl-C, or until the view fails (its CDC lost a database:
/// the process exits non-zero so that its supervisor restarts it, which rebuilds the view).
pub async fn serve(listen: SocketAddr, shards: Shards, view: Option<RoomsView>) -> Result<()> {
    let listener = TcpListener::bind(listen).await.with_context(|| format!("cannot listen on {listen}"))?;
    info!(address = %listener.local_addr()?, shards = shards.len(), view = view.is_some(), "reservation API listening");
    let failed = {
        let view = view.clone();
        async move {
            match view {
                Some(view) => view.failed().await,
                None => std::future::pending().await,
            }
        }
    };
    let served = serve_on(listener, shards, view.clone(), async {
        let _ = tokio::signal::ctrl_c().await;
        info!("shutting down");
    });
    tokio::select! {
        result = served => {
            if let Some(view) = view {
                view.stop();
            }
            result
        }
        reason = failed => anyhow::bail!("{reason}"),
    }
}
