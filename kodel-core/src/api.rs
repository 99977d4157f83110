//! REST DTOs: what the server returns and accepts, and what `kodel --json` prints.
//! Request bodies refuse unknown fields so a typo is an error, not a silent no-op.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Most text fields are bounded so one request cannot store megabytes.
pub const MAX_TITLE: usize = 500;
pub const MAX_NAME: usize = 200;
pub const MAX_DESCRIPTION: usize = 100_000;
pub const MAX_COMMENT: usize = 100_000;
pub const MAX_LABELS: usize = 50;
pub const MAX_LABEL: usize = 64;
pub const MAX_PAGE: i64 = 200;
pub const DEFAULT_PAGE: i64 = 50;

/// One page of a list; `next_cursor` fetches the next (null on the last page).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Page<T> {
    pub data: Vec<T>,
    pub next_cursor: Option<String>,
}

/// `Page<T>`'s schema refers to `T` by name (a derived one would inline `T` whole).
#[cfg(feature = "openapi")]
mod page_schema {
    use utoipa::openapi::schema::{ArrayBuilder, ObjectBuilder, Schema, SchemaType, Type};
    use utoipa::openapi::{Ref, RefOr};

    impl<T: utoipa::ToSchema> utoipa::__dev::ComposeSchema for super::Page<T> {
        fn compose(_: Vec<RefOr<Schema>>) -> RefOr<Schema> {
            ObjectBuilder::new()
                .description(Some("One page of a list; `next_cursor` fetches the next (null on the last page)."))
                .property("data", ArrayBuilder::new().items(Ref::from_schema_name(T::name())))
                .property("next_cursor", ObjectBuilder::new().schema_type(SchemaType::from_iter([Type::String, Type::Null])))
                .required("data")
                .required("next_cursor")
                .into()
        }
    }

    impl<T: utoipa::ToSchema> utoipa::ToSchema for super::Page<T> {
        /// utoipa appends the argument's name: `Page_Task`.
        fn name() -> std::borrow::Cow<'static, str> {
            "Page".into()
        }

        fn schemas(schemas: &mut Vec<(String, RefOr<Schema>)>) {
            schemas.push((T::name().into_owned(), T::schema()));
            T::schemas(schemas);
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct User {
    pub id: Uuid,
    pub email: String,
    pub name: String,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RegisterRequest {
    pub email: String,
    #[cfg_attr(feature = "openapi", schema(min_length = 8))]
    pub password: String,
    pub name: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct LoginRequest {
    pub email: String,
    pub password: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RefreshRequest {
    pub refresh_token: String,
}

/// A terminal's single sign-on begun (`POST /auth/sso/device`): the person opens
/// `verification_uri` anywhere, enters `user_code`, and the terminal polls with `handle`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SsoDeviceStart {
    pub verification_uri: String,
    /// The same with the code filled in, when the provider offers it.
    pub verification_uri_complete: Option<String>,
    pub user_code: String,
    /// Seconds the code stays valid.
    pub expires_in: u64,
    /// Seconds to wait between polls.
    pub interval: u64,
    /// What to poll `POST /auth/sso/device/token` with.
    pub handle: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SsoDevicePoll {
    pub handle: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TokenPair {
    pub access_token: String,
    pub refresh_token: String,
    pub token_type: String,
    /// Seconds until the access token expires.
    pub expires_in: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Registered {
    /// The email, as the server keeps it (trimmed, lower case).
    pub email: String,
    pub message: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CreateApiToken {
    pub name: String,
    #[serde(default)]
    pub expires_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ApiToken {
    pub id: Uuid,
    pub name: String,
    /// The first characters of the token, to recognise it in a list.
    pub prefix: String,
    pub created_at: DateTime<Utc>,
    pub expires_at: Option<DateTime<Utc>>,
    pub last_used_at: Option<DateTime<Utc>>,
}

/// Returned once, when the token is made; the server keeps only its hash.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ApiTokenCreated {
    pub id: Uuid,
    pub name: String,
    pub token: String,
    pub expires_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum OrgRole {
    Member,
    Admin,
    Owner,
}

impl OrgRole {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Owner => "owner",
            Self::Admin => "admin",
            Self::Member => "member",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "owner" => Some(Self::Owner),
            "admin" => Some(Self::Admin),
            "member" => Some(Self::Member),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Org {
    pub id: Uuid,
    #[cfg_attr(feature = "openapi", schema(pattern = "^[a-z][a-z0-9_]{1,39}$"))]
    pub slug: String,
    pub name: String,
    /// The caller's role in the org.
    pub role: OrgRole,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CreateOrg {
    #[cfg_attr(feature = "openapi", schema(pattern = "^[a-z][a-z0-9_]{1,39}$"))]
    pub slug: String,
    pub name: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct OrgMember {
    pub user_id: Uuid,
    pub email: String,
    pub name: String,
    pub role: OrgRole,
    pub joined_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AddOrgMember {
    pub email: String,
    pub role: OrgRole,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct UpdateRole<R> {
    pub role: R,
}

/// The five project roles, weakest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum ProjectRole {
    Viewer,
    Reviewer,
    Developer,
    TechLead,
    Admin,
}

impl ProjectRole {
    pub const ALL: [ProjectRole; 5] = [Self::Viewer, Self::Reviewer, Self::Developer, Self::TechLead, Self::Admin];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Viewer => "viewer",
            Self::Reviewer => "reviewer",
            Self::Developer => "developer",
            Self::TechLead => "tech_lead",
            Self::Admin => "admin",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "viewer" => Some(Self::Viewer),
            "reviewer" => Some(Self::Reviewer),
            "developer" => Some(Self::Developer),
            "tech_lead" => Some(Self::TechLead),
            "admin" => Some(Self::Admin),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Project {
    pub id: Uuid,
    #[cfg_attr(feature = "openapi", schema(pattern = "^[A-Z][A-Z0-9]{1,9}$"))]
    pub key: String,
    pub name: String,
    pub description: String,
    pub workflow: Workflow,
    /// The instance template jobs of this project run in (its name).
    pub instance_template: Option<String>,
    /// The command a QA job runs in the workspace, e.g. `cargo test`.
    #[serde(default)]
    pub test_command: Option<String>,
    /// What a review job checks, in words the reviewer model reads.
    #[serde(default)]
    pub review_rules: Option<String>,
    /// The caller's role in the project.
    pub role: ProjectRole,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Workflow {
    pub id: Uuid,
    pub name: String,
    /// The built-in template it was made from (`software-development`, `kanban`), if any.
    pub template: Option<String>,
    pub statuses: Vec<Status>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Status {
    pub name: String,
    pub category: crate::workflow::StatusCategory,
    pub position: i32,
    /// Statuses a task here may move to.
    pub next: Vec<String>,
    /// The AI job that entering this status starts, if bound.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub binding: Option<Binding>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Binding {
    /// A job template's name.
    pub template: String,
    /// Where approving the job's artifact moves the task.
    #[serde(default)]
    pub next: Option<String>,
    /// Where rejecting it sends the task back.
    #[serde(default)]
    pub back: Option<String>,
}

/// A workflow's whole definition, for create and for edit (which replaces it).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct WorkflowDef {
    pub name: String,
    pub statuses: Vec<StatusDefIn>,
    /// Allowed moves as `[from, to]` pairs; absent = every move is allowed.
    #[serde(default)]
    pub transitions: Option<Vec<(String, String)>>,
    /// On edit: where the tasks of each removed status go (`{"Old": "New"}`).
    #[serde(default)]
    pub moves: std::collections::BTreeMap<String, String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct StatusDefIn {
    pub name: String,
    pub category: crate::workflow::StatusCategory,
    /// On edit: the status's current name, to rename it (its tasks stay with it).
    #[serde(default)]
    pub was: Option<String>,
    #[serde(default)]
    /// The AI job that entering this status starts; absent when unbound.
    pub binding: Option<Binding>,
}

/// `POST /workflows`: a definition, or a copy of a built-in template under a new name
/// (`{"name": "...", "from_template": "software-development"}`).
#[derive(Debug, Clone)]
pub enum CreateWorkflow {
    Copy(CopyWorkflow),
    Define(WorkflowDef),
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CopyWorkflow {
    pub name: String,
    pub from_template: String,
}

impl CreateWorkflow {
    /// Picks the form by the presence of `from_template`, so errors name the bad field.
    pub fn from_json(v: serde_json::Value) -> Result<Self, serde_json::Error> {
        if v.get("from_template").is_some() {
            serde_json::from_value(v).map(Self::Copy)
        } else {
            serde_json::from_value(v).map(Self::Define)
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CreateProject {
    #[cfg_attr(feature = "openapi", schema(pattern = "^[A-Z][A-Z0-9]{1,9}$"))]
    pub key: String,
    pub name: String,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    /// `software-development`, `kanban` (the default), or the id or name of one of the org's workflows.
    pub workflow: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct UpdateProject {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub description: Option<String>,
    /// An instance template's name or id; null detaches it.
    #[serde(default, with = "double_option", skip_serializing_if = "Option::is_none")]
    pub instance_template: Option<Option<String>>,
    /// null clears it.
    #[serde(default, with = "double_option", skip_serializing_if = "Option::is_none")]
    pub test_command: Option<Option<String>>,
    /// null clears them.
    #[serde(default, with = "double_option", skip_serializing_if = "Option::is_none")]
    pub review_rules: Option<Option<String>>,
}

/// Bounds of the project settings.
pub const MAX_TEST_COMMAND: usize = 2_000;
pub const MAX_REVIEW_RULES: usize = 20_000;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ProjectMember {
    pub user_id: Uuid,
    pub email: String,
    pub name: String,
    pub role: ProjectRole,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AddProjectMember {
    pub email: String,
    pub role: ProjectRole,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum Priority {
    #[default]
    None,
    Low,
    Medium,
    High,
    Urgent,
}

impl Priority {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Low => "low",
            Self::Medium => "medium",
            Self::High => "high",
            Self::Urgent => "urgent",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "none" => Some(Self::None),
            "low" => Some(Self::Low),
            "medium" => Some(Self::Medium),
            "high" => Some(Self::High),
            "urgent" => Some(Self::Urgent),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Task {
    pub key: String,
    pub project: String,
    pub number: i32,
    pub title: String,
    pub description: String,
    pub status: String,
    pub priority: Priority,
    pub labels: Vec<String>,
    /// The assignee's email, or null.
    pub assignee: Option<String>,
    pub version: i32,
    pub archived: bool,
    pub created_by: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CreateTask {
    #[cfg_attr(feature = "openapi", schema(max_length = 500))]
    pub title: String,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub priority: Option<Priority>,
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(max_items = 50))]
    pub labels: Option<Vec<String>>,
    /// An org member's email.
    #[serde(default)]
    pub assignee: Option<String>,
    /// A status of the project's workflow; the first one when absent.
    #[serde(default)]
    pub status: Option<String>,
}

/// A partial update. `version` must be the task's current version (409 otherwise).
/// `assignee: null` unassigns; an absent field is left as it is.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct UpdateTask {
    pub version: i32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<Priority>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none", with = "double_option")]
    /// An org member's email; null unassigns.
    pub assignee: Option<Option<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub archived: Option<bool>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct MoveTask {
    pub status: String,
    /// When given, the move is refused with 409 if the task changed since.
    #[serde(default)]
    pub version: Option<i32>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Comment {
    pub id: Uuid,
    pub task: String,
    /// The author's email.
    pub author: String,
    pub body: String,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CreateComment {
    pub body: String,
}

/// One persisted event, as the SSE streams carry it (`data:`), with `id:` = `id`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Event {
    pub id: i64,
    #[serde(rename = "type")]
    /// The event type, e.g. `task.created`, `task.moved`, `comment.added`.
    pub kind: String,
    pub task: String,
    /// The event's number within its task, from 1.
    pub seq: i32,
    pub actor: Option<String>,
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    /// What changed; its shape depends on `type`.
    pub payload: serde_json::Value,
    pub created_at: DateTime<Utc>,
}

impl Event {
    /// The event as a type (None for one this version does not know).
    pub fn typed(&self) -> Option<crate::events::TaskEvent> {
        crate::events::TaskEvent::from_parts(&self.kind, self.payload.clone())
    }
}

/// Serde helper: tells "absent" (None) from "null" (Some(None)).
pub mod double_option {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<S: Serializer, T: Serialize>(v: &Option<Option<T>>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(inner) => inner.serialize(s),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Option<Option<T>>, D::Error> {
        Option::<T>::deserialize(d).map(Some)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn update_tells_null_from_absent() {
        let u: UpdateTask = serde_json::from_str(r#"{"version":1}"#).unwrap();
        assert_eq!(u.assignee, None);
        let u: UpdateTask = serde_json::from_str(r#"{"version":1,"assignee":null}"#).unwrap();
        assert_eq!(u.assignee, Some(None));
        let u: UpdateTask = serde_json::from_str(r#"{"version":1,"assignee":"a@b.c"}"#).unwrap();
        assert_eq!(u.assignee, Some(Some("a@b.c".into())));
        assert!(serde_json::from_str::<UpdateTask>(r#"{"version":1,"titel":"x"}"#).is_err());
    }

    #[test]
    fn roles_order_weakest_first() {
        assert!(ProjectRole::Viewer < ProjectRole::Reviewer);
        assert!(ProjectRole::Developer < ProjectRole::TechLead);
        assert!(OrgRole::Member < OrgRole::Admin && OrgRole::Admin < OrgRole::Owner);
        for r in [ProjectRole::Viewer, ProjectRole::Reviewer, ProjectRole::Developer, ProjectRole::TechLead, ProjectRole::Admin] {
            assert_eq!(ProjectRole::parse(r.as_str()), Some(r));
        }
    }
}
