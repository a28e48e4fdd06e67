//! The api binary as operators run it: a child process configured by its environment, on the
//! test's own database and queue prefix, in both log formats; and the API document it serves,
//! against Cloudreve's published one.

mod binary;
mod openapi;
mod redeem_memory;
