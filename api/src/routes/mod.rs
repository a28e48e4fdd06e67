//! The HTTP routes.

pub mod captcha;
pub mod health;
pub mod openapi;
pub mod redeem;
pub mod reset;
