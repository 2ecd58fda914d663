//! `clickstay rooms serve`: binds the reservation API and serves it over HTTP/1.1 until SIGINT
//! or SIGTERM, with bounded waits: a header-read timeout per connection (hyper's, which needs
//! a timer that `axum::serve` does not give it), the request deadline and concurrency cap of
//! [`super::guard::limit`], and a bounded graceful shutdown.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tracing::{debug, info, warn};

use super::api;
use super::guard::{Access, Limits};
use super::shards::Shards;
use super::trips::coordinator::TripSettings;
use super::view::RoomsView;

/// The default address: loopback only, so nothing is exposed by accident.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";

/// Default of [`Transport::header_timeout`].
pub const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// Default of [`Transport::shutdown_grace`]: longer than the default request timeout, so that
/// every request in flight at shutdown has answered (or timed out) before it ends.
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(15);

/// Connection-level bounds.
#[derive(Debug, Clone, Copy)]
pub struct Transport {
    /// A connection that has not sent a request's complete headers this long after the server
    /// started reading them is closed. Also bounds an idle kept-alive connection.
    pub header_timeout: Duration,
    /// After the shutdown signal: how long requests in flight may take to finish.
    pub shutdown_grace: Duration,
}

impl Default for Transport {
    fn default() -> Self {
        Self { header_timeout: DEFAULT_HEADER_TIMEOUT, shutdown_grace: DEFAULT_SHUTDOWN_GRACE }
    }
}

/// Everything `serve` is configured with besides the shards and the view.
#[derive(Debug, Clone, Default)]
pub struct Options {
    pub transport: Transport,
    pub limits: Limits,
    pub access: Access,
    pub trips: TripSettings,
}

/// Serves the API on `listener` with the default [`Options`] until `shutdown` completes.
pub async fn serve_on(
    listener: TcpListener,
    shards: Shards,
    view: Option<RoomsView>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let options = Options::default();
    serve_app(
        listener,
        api::router(shards, view, options.limits, options.access, options.trips),
        options.transport,
        shutdown,
    )
    .await
}

/// Serves `app` on `listener` until `shutdown` completes, then stops accepting, lets the
/// requests in flight finish within [`Transport::shutdown_grace`] and returns (an error if
/// some did not finish in time).
pub async fn serve_app(
    listener: TcpListener,
    app: Router,
    transport: Transport,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new()).header_read_timeout(transport.header_timeout);
    let graceful = GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(error) => {
                    // Out of file descriptors, or a connection reset before it was accepted:
                    // keep serving the others.
                    warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        serve_connection(&http, &graceful, stream, &app);
    }
    drop(listener);
    let open = graceful.count();
    info!(open_connections = open, grace = ?transport.shutdown_grace, "stopped accepting; finishing requests in flight");
    if tokio::time::timeout(transport.shutdown_grace, graceful.shutdown()).await.is_err() {
        bail!("requests still in flight {:?} after the shutdown signal were cut off", transport.shutdown_grace);
    }
    info!("every connection closed");
    Ok(())
}

/// Spawns the task serving one accepted connection.
fn serve_connection(
    http: &hyper::server::conn::http1::Builder,
    graceful: &GracefulShutdown,
    stream: TcpStream,
    app: &Router,
) {
    // Small request/response pairs on kept-alive connections: do not wait for Nagle.
    let _ = stream.set_nodelay(true);
    let connection = http.serve_connection(TokioIo::new(stream), TowerToHyperService::new(app.clone()));
    let connection = graceful.watch(connection);
    tokio::spawn(async move {
        if let Err(error) = connection.await {
            // A client gone, or one too slow with its headers: nothing the server can mend.
            debug!(%error, "connection ended with an error");
        }
    });
}

/// The stop signal (SIGINT or SIGTERM), logged when it comes.
fn shutdown_signal() -> Result<impl Future<Output = ()> + Send + 'static> {
    let signalled = crate::signals::stop_signal()?;
    Ok(async move {
        let name = signalled.await;
        info!(signal = name, "shutting down");
    })
}

/// Binds `listen` and serves until SIGINT or SIGTERM, or until the view fails (its CDC lost a
/// database: the process exits non-zero so that its supervisor restarts it, which rebuilds the
/// view).
pub async fn serve(listen: SocketAddr, shards: Shards, view: Option<RoomsView>, options: Options) -> Result<()> {
    options.access.check_listen(listen)?;
    // Installed before binding: a signal that arrives once the port is open is never missed.
    let signalled = shutdown_signal()?;
    let listener = TcpListener::bind(listen).await.with_context(|| format!("cannot listen on {listen}"))?;
    info!(
        address = %listener.local_addr()?,
        shards = shards.len(),
        view = view.is_some(),
        authentication = options.access.tokens.is_some(),
        "reservation API listening"
    );
    super::trips::check_two_phase(&shards).await;
    let failed = {
        let view = view.clone();
        async move {
            match view {
                Some(view) => view.failed().await,
                None => std::future::pending().await,
            }
        }
    };
    let app = api::router(shards, view.clone(), options.limits, options.access, options.trips);
    let served = serve_app(listener, app, options.transport, signalled);
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
