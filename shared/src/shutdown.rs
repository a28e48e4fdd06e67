//! Signals: SIGTERM or Ctrl-C cancels a token that every part of a process watches (graceful
//! shutdown); SIGHUP asks for settings to be read again.

use std::{future::Future, time::Duration};

use tokio_util::sync::CancellationToken;

/// Runs `work` at once and then every `period` until `shutdown` fires; a run under way finishes
/// first. A run that takes longer than the period delays the next, rather than bunching them.
pub async fn every<F, Fut>(period: Duration, shutdown: &CancellationToken, mut work: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = ()>,
{
    let mut ticks = tokio::time::interval(period);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = ticks.tick() => {}
        }
        work().await;
    }
}

/// Cancels `token` on SIGTERM or SIGINT.
pub async fn on_signal(token: CancellationToken) {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(error) => {
                tracing::warn!(%error, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = interrupt => {}
        () = terminate => {}
    }
    tracing::info!("shutdown requested; finishing work in flight");
    token.cancel();
}

/// SIGHUPs as a stream of `()`, listened for from this call on (so that a SIGHUP after it never
/// ends the process); nothing where the platform has no such signal or it cannot be listened for.
pub fn hangups() -> tokio::sync::mpsc::Receiver<()> {
    let (sender, receiver) = tokio::sync::mpsc::channel(1);
    #[cfg(unix)]
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(mut signal) => {
            tokio::spawn(async move {
                while signal.recv().await.is_some() {
                    if sender.send(()).await.is_err() {
                        return;
                    }
                }
            });
        }
        Err(error) => tracing::warn!(%error, "cannot listen for SIGHUP"),
    }
    #[cfg(not(unix))]
    drop(sender);
    receiver
}
