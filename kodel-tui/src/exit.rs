//! Exit codes. They are documented in the README and never change meaning.

use std::fmt;

pub const OK: i32 = 0;
/// Anything not listed below (a server error, an unexpected answer).
pub const FAILURE: i32 = 1;
/// Bad command line (clap uses 2 as well).
pub const USAGE: i32 = 2;
/// Not logged in, or the credentials were refused (401).
pub const AUTH: i32 = 3;
/// The org, project, task or other thing does not exist or is not visible (404).
pub const NOT_FOUND: i32 = 4;
/// A conflict: stale version, move not allowed, already exists (409).
pub const CONFLICT: i32 = 5;
/// Your role does not allow it (403).
pub const FORBIDDEN: i32 = 6;
/// The server refused the input (400, 413, 415, 422).
pub const INVALID: i32 = 7;
/// The server cannot be reached or is unavailable (connection error, 503).
pub const UNAVAILABLE: i32 = 8;
/// A budget is spent (402 `budget_exceeded`).
pub const BUDGET: i32 = 9;

/// An error with the exit code it maps to and an optional hint for the user.
#[derive(Debug)]
pub struct CliError {
    pub code: i32,
    pub message: String,
    pub hint: Option<String>,
}

impl CliError {
    pub fn new(code: i32, message: impl Into<String>) -> Self {
        Self { code, message: message.into(), hint: None }
    }

    pub fn usage(message: impl Into<String>) -> Self {
        Self::new(USAGE, message)
    }

    pub fn hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for CliError {}

impl From<std::io::Error> for CliError {
    fn from(e: std::io::Error) -> Self {
        Self::new(FAILURE, e.to_string())
    }
}

pub fn for_status(status: u16) -> i32 {
    match status {
        401 => AUTH,
        403 => FORBIDDEN,
        404 => NOT_FOUND,
        409 => CONFLICT,
        402 => BUDGET,
        400 | 413 | 415 | 422 => INVALID,
        502..=504 => UNAVAILABLE,
        _ => FAILURE,
    }
}
