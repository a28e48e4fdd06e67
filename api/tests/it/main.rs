//! Integration tests of the api on real PostgreSQL and RabbitMQ.

mod broker_outage;
mod harness;
mod reset;
