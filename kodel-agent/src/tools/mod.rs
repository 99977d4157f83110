//! The six tools (placeholder until the tools land).
