//! Kodel's shared vocabulary: ids and names with their validation rules, the REST
//! DTOs that the server returns and the CLI prints, the event types of the SSE
//! streams, and the built-in workflows, the agent protocol and the provider-neutral LLM types. No
//! I/O lives here.
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

pub mod api;
pub mod error;
pub mod events;
pub mod forge;
pub mod ids;
pub mod infra;
pub mod jobs;
pub mod llm;
pub mod protocol;
pub mod rules;
pub mod usage;
pub mod workflow;

pub use error::ErrorCode;
pub use ids::{OrgSlug, ProjectKey, TaskKey};
