//! liaison — a secure cross-border intelligence exchange broker.
#![forbid(unsafe_code)]
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]
#![warn(missing_docs)]

pub mod cli;
pub mod demo;
pub mod encoding;
pub mod ids;
pub mod keys;
pub mod markings;
pub mod packet;
pub mod seal;
pub mod timestamp;
