//! Integration and end-to-end tests of resetmail on real PostgreSQL, RabbitMQ and SMTP over TCP.

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
