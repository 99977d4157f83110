//! The stable machine codes of API errors. Clients match on these; they never change
//! meaning. The HTTP status of each is fixed here too.

use serde::{Deserialize, Serialize};

macro_rules! codes {
    ($($variant:ident = $code:literal => $status:literal, $meaning:literal;)*) => {
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum ErrorCode { $($variant,)* }

        impl ErrorCode {
            pub fn as_str(self) -> &'static str {
                match self { $(Self::$variant => $code,)* }
            }
            pub fn http_status(self) -> u16 {
                match self { $(Self::$variant => $status,)* }
            }
            /// What the code means, for the API's documentation.
            pub fn meaning(self) -> &'static str {
                match self { $(Self::$variant => $meaning,)* }
            }
            pub fn all() -> &'static [ErrorCode] {
                &[$(Self::$variant,)*]
            }
        }

        /// One type per code, so an endpoint's documentation can list the codes it
        /// answers with as types: `Errors<(TaskNotFound, VersionConflict)>`.
        #[cfg(feature = "openapi")]
        pub mod code {
            /// A type standing for one `ErrorCode`.
            pub trait Code {
                const CODE: super::ErrorCode;
            }
            $(
                #[doc = $meaning]
                pub struct $variant;
                impl Code for $variant {
                    const CODE: super::ErrorCode = super::ErrorCode::$variant;
                }
            )*
        }
    };
}

codes! {
    InvalidJson = "invalid_json" => 400, "the body is not JSON";
    InvalidRequest = "invalid_request" => 422, "a field is missing, unknown, of the wrong type or out of bounds (the message names it)";
    InvalidSlug = "invalid_slug" => 400, "the org slug is not 2-40 characters a-z, 0-9 and _, starting with a letter";
    InvalidKey = "invalid_key" => 400, "a project key, task key or id in the path is malformed";
    InvalidCursor = "invalid_cursor" => 400, "the cursor is not one this server gave out";
    UnsupportedMediaType = "unsupported_media_type" => 415, "the body is not sent as Content-Type: application/json";
    PayloadTooLarge = "payload_too_large" => 413, "the body is larger than the server accepts";
    BudgetExceeded = "budget_exceeded" => 402, "a budget of the org, the project or the task is spent: raise it (kodel budget set) to go on";
    Unauthorized = "unauthorized" => 401, "missing, invalid, expired or revoked credentials";
    InvalidCredentials = "invalid_credentials" => 401, "wrong email or password";
    Forbidden = "forbidden" => 403, "the caller's role does not allow this";
    SsoNotConfigured = "sso_not_configured" => 404, "single sign-on is not set up on this server (KODEL_OIDC_ISSUER)";
    AuthorizationPending = "authorization_pending" => 428, "the person has not finished signing in at the provider yet: ask again after the interval";
    SsoRefused = "sso_refused" => 403, "the identity provider refused, the sign-in expired, or no Kodel account may be linked to that identity";
    SsoUnavailable = "sso_unavailable" => 502, "the identity provider could not be reached or gave an answer Kodel cannot use";
    NotFound = "not_found" => 404, "no such endpoint, or nothing there";
    OrgNotFound = "org_not_found" => 404, "no such org, or the caller is not a member";
    ProjectNotFound = "project_not_found" => 404, "no such project, or the caller cannot see it";
    TaskNotFound = "task_not_found" => 404, "no such task, or the caller cannot see its project";
    UserNotFound = "user_not_found" => 404, "no user (or org member) with that email";
    MemberNotFound = "member_not_found" => 404, "no such member";
    TokenNotFound = "token_not_found" => 404, "no such live token";
    WorkflowNotFound = "workflow_not_found" => 404, "no such workflow";
    TemplateNotFound = "template_not_found" => 404, "no such job or instance template";
    JobNotFound = "job_not_found" => 404, "no such job, or the caller cannot see its project";
    ArtifactNotFound = "artifact_not_found" => 404, "no such artifact, or the caller cannot see its project";
    RuleNotFound = "rule_not_found" => 404, "no such rule, or the caller cannot see it";
    ModuleNotFound = "module_not_found" => 404, "no such module, or the caller cannot see its project";
    MethodNotAllowed = "method_not_allowed" => 405, "the endpoint does not take this method";
    RequestTimeout = "request_timeout" => 408, "the body did not arrive within 10 seconds";
    Conflict = "conflict" => 409, "the change conflicts with the current state (the message says how)";
    OrgExists = "org_exists" => 409, "an org with that slug exists";
    ProjectExists = "project_exists" => 409, "a project with that key exists";
    MemberExists = "member_exists" => 409, "already a member";
    VersionConflict = "version_conflict" => 409, "`version` is not the task's current one: fetch it and try again";
    TransitionNotAllowed = "transition_not_allowed" => 409, "the workflow does not allow this move; `details.allowed` lists where the task may go";
    LastOwner = "last_owner" => 409, "an org needs at least one owner";
    NameTaken = "name_taken" => 409, "the name is in use";
    StatusNotEmpty = "status_not_empty" => 409, "a removed status holds tasks and `moves` does not say where they go";
    JobFinished = "job_finished" => 409, "the job has finished already";
    LeaseLost = "lease_lost" => 409, "the agent no longer holds the job's lease";
    ArtifactDecided = "artifact_decided" => 409, "the artifact was approved or rejected already";
    TooManyRequests = "too_many_requests" => 429, "too many attempts or open streams; Retry-After says when to try again";
    Unavailable = "unavailable" => 503, "the server is busy; try again";
    AnalyticsUnavailable = "analytics_unavailable" => 503, "ClickHouse, where usage is read from, cannot be reached; Retry-After says when to try again";
    DatabaseUnavailable = "database_unavailable" => 503, "the database cannot be reached (or did not answer in time); Retry-After says when to try again";
    Internal = "internal" => 500, "an unexpected server error (logged)";
}

#[cfg(feature = "openapi")]
impl utoipa::PartialSchema for ErrorCode {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        let meanings: Vec<String> = Self::all().iter().map(|c| format!("- `{}` ({}): {}", c.as_str(), c.http_status(), c.meaning())).collect();
        utoipa::openapi::schema::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::String)
            .enum_values(Some(Self::all().iter().map(|c| c.as_str())))
            .description(Some(format!("The stable machine code of an error; clients match on it.\n\n{}", meanings.join("\n"))))
            .into()
    }
}

#[cfg(feature = "openapi")]
impl utoipa::ToSchema for ErrorCode {}

/// The body of every error response: `{"error":{"code":..,"message":..}}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[cfg_attr(feature = "openapi", schema(as = Error))]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ErrorDetail {
    #[cfg_attr(feature = "openapi", schema(value_type = ErrorCode))]
    pub code: String,
    /// For people: what went wrong and, where it helps, what to do.
    pub message: String,
    /// More for programs, by code: `allowed` for `transition_not_allowed`,
    /// `retry_after_secs` for `too_many_requests`.
    #[cfg_attr(feature = "openapi", schema(value_type = Option<Object>))]
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
