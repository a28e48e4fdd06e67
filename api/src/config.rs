//! The api's configuration: shared settings plus its own (address, base path, timeouts).

use std::{net::SocketAddr, time::Duration};

use crate::{captcha::CaptchaConfig, rate_limit::RateLimitConfig};
use resetmail_shared::config::{BrokerConfig, DatabaseConfig, LogConfig, parse_duration};

/// Everything the api reads from the environment or its flags.
#[derive(clap::Args, Clone, Debug)]
pub struct ApiConfig {
    /// Address the HTTP server listens on.
    #[arg(
        long = "http-addr",
        env = "RESETMAIL_HTTP_ADDR",
        default_value = "127.0.0.1:8080"
    )]
    pub http_addr: SocketAddr,
    /// Path prefix of the api routes, as Cloudreve's frontend calls them.
    #[arg(
        long = "base-path",
        env = "RESETMAIL_BASE_PATH",
        default_value = "/api/v4"
    )]
    pub base_path: String,
    /// How long a request waits for the broker's publish confirm before answering 503.
    #[arg(long = "publish-timeout", env = "RESETMAIL_PUBLISH_TIMEOUT", default_value = "3s", value_parser = parse_duration)]
    pub publish_timeout: Duration,
    /// Adds internal error details (`error`) to answers; never in production.
    #[arg(long = "debug", env = "RESETMAIL_DEBUG", default_value_t = false)]
    pub debug: bool,
    /// Longest a request may take before it is answered 503.
    #[arg(long = "request-timeout", env = "RESETMAIL_REQUEST_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub request_timeout: Duration,
    /// Requests handled at once; more wait their turn.
    #[arg(long = "max-concurrent-requests", env = "RESETMAIL_MAX_CONCURRENT_REQUESTS", default_value_t = 1024, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_concurrent_requests: u32,
    /// On SIGTERM, how long requests in flight may take before the api stops anyway.
    #[arg(long = "shutdown-timeout", env = "RESETMAIL_SHUTDOWN_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub shutdown_timeout: Duration,
    /// In Cloudreve mode, how often the site's captcha settings are read again (also on SIGHUP).
    #[arg(long = "settings-refresh", env = "RESETMAIL_SETTINGS_REFRESH", default_value = "30s", value_parser = parse_duration)]
    pub settings_refresh: Duration,
    #[command(flatten)]
    pub captcha: CaptchaConfig,
    #[command(flatten)]
    pub rate_limit: RateLimitConfig,
    #[command(flatten)]
    pub database: DatabaseConfig,
    #[command(flatten)]
    pub broker: BrokerConfig,
    #[command(flatten)]
    pub log: LogConfig,
}

/// Largest request body accepted; a reset request is a few hundred bytes.
pub const BODY_LIMIT_BYTES: usize = 16 * 1024;
