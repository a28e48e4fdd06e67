//! Fixtures for resetmail's tests, on real services: a fresh PostgreSQL database per test, a unique
//! RabbitMQ queue prefix per test (both removed afterwards, even when the test fails), an in-process
//! SMTP server over TCP, a TCP proxy that can cut a connection to simulate an outage, the
//! binaries run as child processes, and a RabbitMQ cluster and a PostgreSQL server of a test's own
//! to kill and restart. `cloudreve` makes the database a Cloudreve v4 site's instead.

// Test code reports a failure by panicking: `unwrap` says which value was not there. (Unit tests get
// the same from clippy.toml; these helpers are not `#[test]` functions, so they say it here.)
#![expect(clippy::unwrap_used, reason = "a test fails by panicking")]

pub mod broker;
pub mod cloudreve;
pub mod cluster;
pub mod db;
pub mod pg_server;
pub mod process;
pub mod proxy;
pub mod smtp_sink;

use std::{future::Future, time::Duration};

/// Sends the code under test's logs to the test's output when `RUST_LOG` asks for them.
pub fn init_logs() {
    if std::env::var_os("RUST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_test_writer()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .try_init();
    }
}

/// How long tests wait for something that should happen soon; generous for a loaded CI machine.
pub const PATIENCE: Duration = Duration::from_secs(30);

/// Polls `probe` until it returns `Some`, or panics after `within` saying what was awaited.
pub async fn eventually<T, F, Fut>(what: &str, within: Duration, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        if tokio::time::Instant::now() >= deadline {
            panic!("gave up after {within:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Runs `cleanup` to completion on a runtime of its own, so that `Drop` can tidy up after a test
/// (even one that panicked) without needing the test's runtime.
fn run_to_completion<F: Future<Output = ()> + Send + 'static>(cleanup: F) {
    let worker = std::thread::spawn(move || {
        if let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            runtime.block_on(cleanup);
        }
    });
    let _ = worker.join();
}
