//! The worker binary as operators run it: a child process configured by its environment, on the
//! test's own database, queue prefix and SMTP server, in both log formats.

mod binary;
mod dlq_memory;
mod leases;
