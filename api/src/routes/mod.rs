//! The HTTP routes.

pub mod captcha;
pub mod health;
pub mod redeem;
pub mod reset;
