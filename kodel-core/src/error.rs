//! The stable machine codes of API errors. Clients match on these; they never change
//! meaning. The HTTP status of each is fixed here too.

use serde::{Deserialize, Serialize};

macro_rules! codes {
    ($($variant:ident = $code:literal => $status:literal,)*) => {
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum ErrorCode { $($variant,)* }

        impl ErrorCode {
            pub fn as_str(self) -> &'static str {
                match self { $(Self::$variant => $code,)* }
            }
            pub fn http_status(self) -> u16 {
                match self { $(Self::$variant => $status,)* }
            }
            pub fn all() -> &'static [ErrorCode] {
                &[$(Self::$variant,)*]
            }
        }
    };
}

codes! {
    InvalidJson = "invalid_json" => 400,
    InvalidRequest = "invalid_request" => 422,
    InvalidSlug = "invalid_slug" => 400,
    InvalidKey = "invalid_key" => 400,
    InvalidCursor = "invalid_cursor" => 400,
    UnsupportedMediaType = "unsupported_media_type" => 415,
    PayloadTooLarge = "payload_too_large" => 413,
    Unauthorized = "unauthorized" => 401,
    InvalidCredentials = "invalid_credentials" => 401,
    Forbidden = "forbidden" => 403,
    NotFound = "not_found" => 404,
    OrgNotFound = "org_not_found" => 404,
    ProjectNotFound = "project_not_found" => 404,
    TaskNotFound = "task_not_found" => 404,
    UserNotFound = "user_not_found" => 404,
    MemberNotFound = "member_not_found" => 404,
    TokenNotFound = "token_not_found" => 404,
    WorkflowNotFound = "workflow_not_found" => 404,
    TemplateNotFound = "template_not_found" => 404,
    JobNotFound = "job_not_found" => 404,
    ArtifactNotFound = "artifact_not_found" => 404,
    RuleNotFound = "rule_not_found" => 404,
    ModuleNotFound = "module_not_found" => 404,
    MethodNotAllowed = "method_not_allowed" => 405,
    RequestTimeout = "request_timeout" => 408,
    Conflict = "conflict" => 409,
    OrgExists = "org_exists" => 409,
    ProjectExists = "project_exists" => 409,
    MemberExists = "member_exists" => 409,
    VersionConflict = "version_conflict" => 409,
    TransitionNotAllowed = "transition_not_allowed" => 409,
    LastOwner = "last_owner" => 409,
    NameTaken = "name_taken" => 409,
    StatusNotEmpty = "status_not_empty" => 409,
    JobFinished = "job_finished" => 409,
    LeaseLost = "lease_lost" => 409,
    ArtifactDecided = "artifact_decided" => 409,
    TooManyRequests = "too_many_requests" => 429,
    Unavailable = "unavailable" => 503,
    Internal = "internal" => 500,
}

/// The body of every error response: `{"error":{"code":..,"message":..}}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorDetail {
    pub code: String,
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub details: Option<serde_json::Value>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_unique_snake_case() {
        let mut seen = std::collections::HashSet::new();
        for c in ErrorCode::all() {
            assert!(seen.insert(c.as_str()), "duplicate {}", c.as_str());
            assert!(c.as_str().bytes().all(|b| b.is_ascii_lowercase() || b == b'_'));
            assert!((400..600).contains(&c.http_status()));
        }
    }
}
