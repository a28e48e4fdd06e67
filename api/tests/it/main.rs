//! The api binary as operators run it: a child process configured by its environment, on the
//! test's own database and queue prefix, in both log formats.

mod binary;
mod redeem_memory;
