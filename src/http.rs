//! HTTP plumbing shared by the jobs that serve while their timely workers run on plain threads
//! (`run --listen`, `run --metrics-listen`): a server on a thread and runtime of its own.

use std::net::SocketAddr;

use anyhow::{Context, Result};
use axum::Router;

/// Serves `router` on `listen` on a thread of its own (its own small runtime), for a job whose
/// workers are plain threads; returns once it listens. `what` names the listener in logs and
/// errors (e.g. `--listen`).
pub fn spawn(listen: SocketAddr, router: Router, what: &'static str) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("http")
        .enable_all()
        .build()
        .with_context(|| format!("{what} {listen}: cannot start the HTTP runtime"))?;
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind(listen))
        .with_context(|| format!("{what} {listen}: cannot listen"))?;
    tracing::info!(%listen, "{what}: listening");
    std::thread::Builder::new().name("http".into()).spawn(move || {
        runtime.block_on(async move {
            if let Err(error) = axum::serve(listener, router).await {
                tracing::error!(%error, "{what}: the HTTP server stopped");
            }
        })
    })?;
    Ok(())
}
