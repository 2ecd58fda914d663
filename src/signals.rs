//! The signals that ask a long-running command to stop: SIGINT (Ctrl-C) and SIGTERM (a
//! supervisor, `kill`). Used by `rooms serve` and `clickstay launch`.

use anyhow::{Context, Result};

/// Installs the SIGINT and SIGTERM handlers at once (a signal that arrives from then on is not
/// missed); the future completes on the first of them with its name (`"SIGINT"`, `"SIGTERM"`).
/// Needs a tokio runtime with its IO driver.
pub fn stop_signal() -> Result<impl Future<Output = &'static str> + Send + 'static> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut terminate = signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?;
    let mut interrupt = signal(SignalKind::interrupt()).context("cannot listen for SIGINT")?;
    Ok(async move {
        tokio::select! {
            _ = terminate.recv() => "SIGTERM",
            _ = interrupt.recv() => "SIGINT",
        }
    })
}
