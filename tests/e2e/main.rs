//! Integration and end-to-end tests of resetmail on real PostgreSQL, RabbitMQ and SMTP over TCP.

// Test code reports a failure by panicking: `unwrap` says which value was not there. (Unit tests get
// the same from clippy.toml; these helpers are not `#[test]` functions, so they say it here.)
#![expect(clippy::unwrap_used, reason = "a test fails by panicking")]

mod abuse;
mod api_broker_outage;
mod api_reset;
mod captcha;
mod cloudreve;
mod dkim;
mod failover;
mod flow;
mod harness;
mod operator;
mod operator_output;
mod outages;
mod redeem;
mod request_timeout;
mod smtp_pool;
mod worker_jobs;
