//! The LLM proxy: agents and API clients ask in provider-neutral terms
//! (`kodel_core::llm`); the providers' wire formats live in `openai` and `anthropic`.

pub mod anthropic;
pub mod openai;
pub mod provider;
