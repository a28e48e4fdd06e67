//! The worker binary as operators run it: a child process configured by its environment, on the
//! test's own database, queue prefix and SMTP server, in both log formats.

// Test code reports a failure by panicking: `unwrap` says which value was not there. (Unit tests get
// the same from clippy.toml; these helpers are not `#[test]` functions, so they say it here.)
#![expect(clippy::unwrap_used, reason = "a test fails by panicking")]

mod binary;
mod dlq_memory;
mod leases;
mod refusals;
