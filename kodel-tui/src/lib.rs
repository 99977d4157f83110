//! The `kodel` client: the scripting CLI (and, with its issue, the TUI), the API
//! client they share, and where credentials and settings are kept.
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

pub mod cli;
pub mod client;
pub mod commands;
pub mod config;
pub mod exit;
pub mod output;
