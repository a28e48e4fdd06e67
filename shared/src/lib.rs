//! What both resetmail processes share: configuration, the job message, the AMQP topology, the
//! database and its queries, and telemetry.

pub mod amqp;
pub mod config;
pub mod db;
pub mod email;
pub mod hashid;
pub mod job;
pub mod metrics;
pub mod shutdown;
pub mod telemetry;
pub mod token;
pub mod topology;

pub use email::EmailAddress;
pub use job::{Job, PasswordResetJob};
