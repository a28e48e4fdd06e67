//! Logging through `tracing`: pretty for people or JSON for collectors, levels from `RUST_LOG`.
//! Both formats write to standard error; standard output belongs to the operator commands' output.

use std::io::IsTerminal as _;

use tracing::level_filters::LevelFilter;
use tracing_subscriber::{EnvFilter, filter::Targets, fmt, prelude::*};

use crate::config::{LogConfig, LogFormat};

/// Dependencies whose trace events print what they send and receive, credentials included: lapin
/// logs the AMQP login frame (user and password), amq-protocol the broker URL. Whatever `RUST_LOG`
/// says, they log at most at debug level.
const NO_TRACE: &[&str] = &[
    "lapin",
    "amq_protocol",
    "amq_protocol_tcp",
    "amq_protocol_uri",
];

/// Installs the global subscriber; call once, first thing in `main`. Without `RUST_LOG`: `info`,
/// less PostgreSQL notices such as "relation already exists, skipping".
pub fn init(config: &LogConfig) {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,sqlx::postgres::notice=warn"));
    let registry = tracing_subscriber::registry()
        .with(filter)
        .with(credential_guard());
    match config.format {
        LogFormat::Pretty => registry
            .with(
                fmt::layer()
                    .with_writer(std::io::stderr)
                    // Colour codes only for a person at a terminal, not in files or collectors.
                    .with_ansi(std::io::stderr().is_terminal()),
            )
            .init(),
        LogFormat::Json => registry
            .with(
                fmt::layer()
                    .json()
                    .with_writer(std::io::stderr)
                    .flatten_event(true)
                    .with_current_span(true)
                    .with_span_list(false),
            )
            .init(),
    }
    // Says, when trace events are on, that they are, and what they leave out.
    tracing::trace!(
        "trace events are logged, but lapin's and amq-protocol's stop at debug: theirs carry credentials"
    );
}

/// A filter (global, like `RUST_LOG`'s: both must let an event through) that passes everything
/// except the trace events of [`NO_TRACE`].
fn credential_guard() -> Targets {
    NO_TRACE.iter().fold(
        Targets::new().with_default(LevelFilter::TRACE),
        |targets, target| targets.with_target(*target, LevelFilter::DEBUG),
    )
}
