//! kodel-agent: a stateless worker that takes one AI job at a time from the server over
//! WebSocket, thinks through the server's LLM proxy (it holds no provider key) and acts
//! with six tools confined to the job's workspace.
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

pub mod connection;
pub mod container;
pub mod job;
pub mod limits;
pub mod privileges;
pub mod runner;
pub mod sandbox;
pub mod tools;
