//! The `kodel` client: the TUI and the scripting CLI, the API
//! client they share, and where credentials and settings are kept.
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

pub mod cli;
pub mod client;
pub mod commands;
pub mod config;
pub mod exit;
pub mod follow;
pub mod output;
pub mod tui;
