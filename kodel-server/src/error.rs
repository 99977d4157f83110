//! One error type for every handler, mapped once to a status and a stable code.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use kodel_core::ErrorCode;
use kodel_core::error::{ErrorBody, ErrorDetail};

#[derive(Debug)]
pub struct ApiError {
    pub code: ErrorCode,
    pub message: String,
    pub details: Option<serde_json::Value>,
}

pub type ApiResult<T> = Result<T, ApiError>;

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self { code, message: message.into(), details: None }
    }

    pub fn with_details(mut self, details: serde_json::Value) -> Self {
        self.details = Some(details);
        self
    }

    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::InvalidRequest, message)
    }

    pub fn unauthorized() -> Self {
        Self::new(ErrorCode::Unauthorized, "missing, invalid or expired credentials")
    }

    pub fn forbidden(what: &str) -> Self {
        Self::new(ErrorCode::Forbidden, format!("your role does not allow {what}"))
    }

    /// 429 with `Retry-After`: the caller must wait `retry_after` seconds.
    pub fn too_many(message: impl Into<String>, retry_after: u64) -> Self {
        Self::new(ErrorCode::TooManyRequests, message).with_details(serde_json::json!({ "retry_after_secs": retry_after }))
    }

    pub fn internal(err: impl std::fmt::Display) -> Self {
        tracing::error!(error = %err, "internal error");
        Self::new(ErrorCode::Internal, "internal server error")
    }
}

/// What a client waits before asking again while the database is away.
const DATABASE_RETRY_AFTER_SECS: u64 = 2;

/// The database is away (down, restarting, unreachable, or no connection within the
/// pool's acquire timeout), as opposed to a query that failed.
pub fn unreachable_database(err: &sqlx::Error) -> bool {
    match err {
        sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Io(_) | sqlx::Error::Tls(_) => true,
        // admin_shutdown, crash_shutdown, cannot_connect_now; connection exceptions.
        sqlx::Error::Database(db) => db.code().is_some_and(|c| matches!(c.as_ref(), "57P01" | "57P02" | "57P03") || c.starts_with("08")),
        _ => false,
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(err: sqlx::Error) -> Self {
        if unreachable_database(&err) {
            tracing::warn!(error = %err, "the database is unavailable");
            return Self::new(ErrorCode::DatabaseUnavailable, "the database cannot be reached or did not answer in time; try again shortly")
                .with_details(serde_json::json!({ "retry_after_secs": DATABASE_RETRY_AFTER_SECS }));
        }
        // Text PostgreSQL cannot store (a NUL character) is bad input, not a failure.
        if let sqlx::Error::Database(db) = &err
            && matches!(db.code().as_deref(), Some("22021" | "22P05"))
        {
            return Self::invalid("text must not contain NUL characters");
        }
        Self::internal(err)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.code.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let retry_after = self.details.as_ref().and_then(|d| d["retry_after_secs"].as_u64());
        let body = ErrorBody {
            error: ErrorDetail { code: self.code.as_str().to_owned(), message: self.message, details: self.details },
        };
        let mut resp = (status, Json(body)).into_response();
        if let Some(secs) = retry_after {
            resp.headers_mut().insert(axum::http::header::RETRY_AFTER, secs.into());
        }
        resp
    }
}

/// True when a database error is a unique violation (SQLSTATE 23505).
pub fn is_unique_violation(err: &sqlx::Error) -> bool {
    matches!(err, sqlx::Error::Database(db) if db.code().as_deref() == Some("23505"))
}

/// A row still referenced elsewhere (deleting something in use).
pub fn is_fk_violation(err: &sqlx::Error) -> bool {
    matches!(err, sqlx::Error::Database(db) if db.code().as_deref() == Some("23503"))
}

/// Checks a required text field: trimmed, not empty, at most `max` characters.
pub fn require_text(field: &str, value: &str, max: usize) -> ApiResult<String> {
    let v = value.trim();
    if v.is_empty() {
        return Err(ApiError::invalid(format!("{field} must not be empty")));
    }
    check_len(field, v, max)?;
    Ok(v.to_owned())
}

pub fn check_len(field: &str, value: &str, max: usize) -> ApiResult<()> {
    if value.contains('\0') {
        return Err(ApiError::invalid(format!("{field} must not contain NUL characters")));
    }
    if value.chars().count() > max {
        return Err(ApiError::invalid(format!("{field} is longer than {max} characters")));
    }
    Ok(())
}
