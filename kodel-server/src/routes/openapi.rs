//! `GET /api/v1/openapi.json`: the API description, generated from the code.
//!
//! Every route is registered with utoipa-axum's `routes!` next to its handler's
//! `#[utoipa::path]`, so a route cannot be served without being described; the DTOs'
//! schemas are derived in kodel-core (feature `openapi`). What the handlers' attributes
//! would repeat on every endpoint is added here, by rule, in `finish`: the errors every
//! authenticated, org-scoped or body-taking endpoint can answer with, and unique
//! operation ids. The tests validate every response they get against this document.

use std::collections::BTreeSet;
use std::marker::PhantomData;
use std::sync::OnceLock;

use axum::http::header;
use axum::response::{IntoResponse, Response};
use kodel_core::ErrorCode;
use kodel_core::error::code::Code;
use serde_json::{Map, Value, json};
use utoipa::OpenApi;
use utoipa::openapi::RefOr;
use utoipa::openapi::response::Response as OaResponse;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub use kodel_core::error::code;

use crate::AppState;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Kodel API",
        version = "1",
        description = "Errors are `{\"error\":{\"code\",\"message\"}}` with stable machine codes (see the `ErrorCode` schema); \
                       each operation lists the codes it answers with, by status. Bearer auth takes an access token (JWT) or an \
                       API token (`kodel_pat_...`). Request bodies must arrive within 10 s (408 `request_timeout`) and fit the \
                       body limit (413 `payload_too_large`). Lists answer with a page: `{data, next_cursor}`."
    ),
    security(("bearer" = [])),
    modifiers(&BearerScheme),
    components(schemas(kodel_core::error::ErrorBody, ErrorCode)),
    tags(
        (name = "meta", description = "Health and this document"),
        (name = "auth", description = "Accounts, sessions and the caller's API tokens"),
        (name = "orgs", description = "Organizations and their members"),
        (name = "projects", description = "Projects and their members"),
        (name = "tasks", description = "Tasks, comments and task history"),
        (name = "events", description = "Server-sent event streams"),
        (name = "workflows", description = "Workflows: statuses, transitions and bindings"),
        (name = "job_templates", description = "Job templates"),
        (name = "jobs", description = "AI jobs, their steps and the artifacts they leave"),
        (name = "rules", description = "Automation rules"),
        (name = "modules", description = "A project's git repositories"),
        (name = "instance_templates", description = "The workspaces agents run jobs in"),
        (name = "agents", description = "Agent workers and their enrollment tokens"),
        (name = "llm", description = "LLM provider settings and the OpenAI-compatible gateway"),
        (name = "usage", description = "LLM usage, cost and model prices"),
    )
)]
struct Root;

struct BearerScheme;

impl utoipa::Modify for BearerScheme {
    fn modify(&self, api: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let scheme = HttpBuilder::new()
            .scheme(HttpAuthScheme::Bearer)
            .description(Some("An access token (JWT) from login, or an API token (`kodel_pat_...`); agents use their agent token (`kodel_agt_...`)"))
            .build();
        api.components.get_or_insert_with(Default::default).add_security_scheme("bearer", SecurityScheme::Http(scheme));
    }
}

/// The OpenApiRouter every module's router is merged into (see `routes::api`).
pub fn root() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(Root::openapi())
}

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(spec))
}

/// This document.
#[utoipa::path(get, path = "/api/v1/openapi.json", tag = "meta", summary = "This document",
    responses((status = OK, description = "OpenAPI 3.1", body = Object)),
    security(()))]
async fn spec() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], text()).into_response()
}

/// The document, built once.
pub fn document() -> &'static Value {
    static DOC: OnceLock<Value> = OnceLock::new();
    DOC.get_or_init(|| {
        let (_, api) = super::api().split_for_parts();
        finish(serde_json::to_value(api).unwrap_or_default())
    })
}

fn text() -> &'static str {
    static TEXT: OnceLock<String> = OnceLock::new();
    TEXT.get_or_init(|| document().to_string())
}

/// Path parameters, described once for every endpoint that takes them.
pub mod path {
    #![allow(dead_code)]
    use utoipa::IntoParams;

    macro_rules! path_params {
        ($($(#[$m:meta])* $name:ident { $($(#[$fm:meta])* $field:ident),* })*) => {$(
            $(#[$m])*
            #[derive(IntoParams)]
            #[into_params(parameter_in = Path)]
            pub struct $name { $($(#[$fm])* pub $field: String,)* }
        )*};
    }

    path_params! {
        Org {
            /// The org's slug, e.g. `acme`.
            #[param(pattern = r"^[a-z][a-z0-9_]{1,39}$")]
            org
        }
        Member {
            /// The org's slug.
            #[param(pattern = r"^[a-z][a-z0-9_]{1,39}$")]
            org,
            /// A member's user id or email.
            member
        }
        Project {
            /// The org's slug.
            #[param(pattern = r"^[a-z][a-z0-9_]{1,39}$")]
            org,
            /// The project key, e.g. `KOD`.
            #[param(pattern = r"^[A-Z][A-Z0-9]{1,9}$")]
            key
        }
        ProjectMember {
            /// The org's slug.
            #[param(pattern = r"^[a-z][a-z0-9_]{1,39}$")]
            org,
            /// The project key.
            #[param(pattern = r"^[A-Z][A-Z0-9]{1,9}$")]
            key,
            /// A project member's user id or email.
            member
        }
        Task {
            /// The org's slug.
            #[param(pattern = r"^[a-z][a-z0-9_]{1,39}$")]
            org,
            /// The task key, e.g. `KOD-42`.
            #[param(pattern = r"^[A-Z][A-Z0-9]{1,9}-[0-9]{1,9}$")]
            task
        }
        Id {
            /// The org's slug.
            #[param(pattern = r"^[a-z][a-z0-9_]{1,39}$")]
            org,
            /// The id (a UUID).
            #[param(format = Uuid)]
            id
        }
        Template {
            /// The org's slug.
            #[param(pattern = r"^[a-z][a-z0-9_]{1,39}$")]
            org,
            /// The template's name or id.
            template
        }
        Workflow {
            /// The org's slug.
            #[param(pattern = r"^[a-z][a-z0-9_]{1,39}$")]
            org,
            /// The workflow's id or name.
            workflow
        }
        Provider {
            /// The org's slug.
            #[param(pattern = r"^[a-z][a-z0-9_]{1,39}$")]
            org,
            /// `openai`, `anthropic`, `openrouter` or `ollama`.
            #[param(pattern = r"^(openai|anthropic|openrouter|ollama)$")]
            provider
        }
        Token {
            /// The token's id (a UUID).
            #[param(format = Uuid)]
            id
        }
    }
}

/// The error codes an endpoint answers with besides those `finish` adds by rule:
/// `responses((status = OK, body = Task), Errors<(code::InvalidKey, code::TaskNotFound)>)`.
/// One response per status, whose schema narrows `error.code` to the listed codes.
pub struct Errors<T>(PhantomData<T>);

macro_rules! errors_for_tuples {
    ($(($($c:ident),+))*) => {$(
        impl<$($c: Code),+> utoipa::IntoResponses for Errors<($($c,)+)> {
            fn responses() -> std::collections::BTreeMap<String, RefOr<OaResponse>> {
                to_responses(&[$($c::CODE),+])
            }
        }
    )*};
}

errors_for_tuples! {
    (A)
    (A, B)
    (A, B, C)
    (A, B, C, D)
    (A, B, C, D, E)
    (A, B, C, D, E, F)
    (A, B, C, D, E, F, G)
    (A, B, C, D, E, F, G, H)
    (A, B, C, D, E, F, G, H, I)
    (A, B, C, D, E, F, G, H, I, J)
}

/// One response per status, carrying its codes for `finish` to write out.
fn to_responses(codes: &[ErrorCode]) -> std::collections::BTreeMap<String, RefOr<OaResponse>> {
    use utoipa::openapi::extensions::ExtensionsBuilder;
    use utoipa::openapi::response::ResponseBuilder;
    let mut out = std::collections::BTreeMap::new();
    for status in codes.iter().map(|c| c.http_status()).collect::<BTreeSet<_>>() {
        let names: Vec<&str> = codes.iter().filter(|c| c.http_status() == status).map(|c| c.as_str()).collect();
        let resp = ResponseBuilder::new().description("error").extensions(Some(ExtensionsBuilder::new().add(CODES, names).build())).build();
        out.insert(status.to_string(), RefOr::T(resp));
    }
    out
}

/// Where `Errors` leaves an error response's codes.
const CODES: &str = "x-error-codes";

/// An error response whose body is an `Error` with one of `codes`.
fn error_response(codes: &[&str]) -> Value {
    let meaning = |c: &str| ErrorCode::all().iter().find(|e| e.as_str() == c).map_or("", |e| e.meaning());
    let description: Vec<String> = codes.iter().map(|c| format!("`{c}`: {}", meaning(c))).collect();
    let mut resp = json!({
        "description": description.join("; "),
        "content": {"application/json": {"schema": {"allOf": [
            {"$ref": "#/components/schemas/Error"},
            {"type": "object", "properties": {"error": {"type": "object", "properties": {"code": {"type": "string", "enum": codes}}}}}
        ]}}}
    });
    if codes.contains(&ErrorCode::TooManyRequests.as_str()) {
        resp["headers"] = json!({"Retry-After": {"description": "seconds to wait before trying again", "schema": {"type": "integer"}}});
    }
    resp
}

/// The codes of an error response made by `error_response`; None for any other response.
fn codes_of(resp: &Value) -> Option<Vec<String>> {
    let codes = resp
        .pointer("/content/application~1json/schema/allOf/1/properties/error/properties/code/enum")
        .or_else(|| resp.get(CODES))?
        .as_array()?;
    Some(codes.iter().filter_map(|c| c.as_str().map(str::to_owned)).collect())
}

/// A schema used as an `allOf` member (a `#[serde(flatten)]`ed struct, as `Rule`'s
/// `RuleSpec`) must not close itself with `additionalProperties: false`: it would refuse
/// the other members' properties, so no value could match the whole.
fn open_all_of_members(doc: &mut Value) {
    fn members(v: &Value, out: &mut BTreeSet<String>) {
        match v {
            Value::Object(m) => {
                for r in m.get("allOf").and_then(Value::as_array).into_iter().flatten() {
                    if let Some(name) = r.get("$ref").and_then(Value::as_str).and_then(|r| r.strip_prefix("#/components/schemas/")) {
                        out.insert(name.to_owned());
                    }
                }
                m.values().for_each(|x| members(x, out));
            }
            Value::Array(a) => a.iter().for_each(|x| members(x, out)),
            _ => {}
        }
    }
    let mut names = BTreeSet::new();
    members(doc, &mut names);
    for name in names {
        if let Some(schema) = doc.pointer_mut(&format!("/components/schemas/{name}")).and_then(Value::as_object_mut)
            && schema.get("additionalProperties") == Some(&Value::Bool(false))
        {
            schema.remove("additionalProperties");
        }
    }
}

/// Adds what holds for every endpoint of a kind, so the handlers' attributes say only
/// what is theirs, and gives operations ids unique across modules (`tasks_list`).
fn finish(mut doc: Value) -> Value {
    open_all_of_members(&mut doc);
    let Some(paths) = doc.get_mut("paths").and_then(Value::as_object_mut) else { return doc };
    for (path, item) in paths.iter_mut() {
        let Some(item) = item.as_object_mut() else { continue };
        for op in item.values_mut() {
            let Some(op) = op.as_object_mut() else { continue };
            if let (Some(tag), Some(id)) = (op.get("tags").and_then(|t| t[0].as_str()), op.get("operationId").and_then(Value::as_str)) {
                let id = format!("{tag}_{id}");
                op.insert("operationId".into(), id.into());
            }
            // The OpenAI-compatible gateway answers with OpenAI's error shape.
            if path.starts_with("/v1/") {
                continue;
            }
            let secured = op.get("security").and_then(Value::as_array).is_some_and(|s| s.iter().any(|r| r.get("bearer").is_some()));
            let body = op.contains_key("requestBody");
            let mut common: Vec<ErrorCode> = Vec::new();
            if secured || body {
                common.extend([ErrorCode::Internal, ErrorCode::Unavailable, ErrorCode::DatabaseUnavailable]);
            }
            if secured {
                common.push(ErrorCode::Unauthorized);
            }
            if path.contains("{org}") {
                common.extend([ErrorCode::InvalidSlug, ErrorCode::OrgNotFound]);
            }
            if body {
                common.extend([
                    ErrorCode::InvalidJson,
                    ErrorCode::InvalidRequest,
                    ErrorCode::UnsupportedMediaType,
                    ErrorCode::PayloadTooLarge,
                    ErrorCode::RequestTimeout,
                ]);
            }
            let responses = op.entry("responses").or_insert_with(|| Value::Object(Map::new()));
            let Some(responses) = responses.as_object_mut() else { continue };
            for resp in responses.values_mut() {
                if let Some(codes) = resp.get(CODES).and_then(|_| codes_of(resp)) {
                    *resp = error_response(&codes.iter().map(String::as_str).collect::<Vec<_>>());
                }
            }
            for c in common {
                let status = c.http_status().to_string();
                let codes = match responses.get(&status) {
                    None => Some(Vec::new()),
                    Some(r) => codes_of(r),
                };
                // A status documented with another body (readyz's 503) is left alone.
                let Some(mut codes) = codes else { continue };
                if !codes.iter().any(|x| x == c.as_str()) {
                    codes.push(c.as_str().to_owned());
                }
                let names: Vec<&str> = codes.iter().map(String::as_str).collect();
                responses.insert(status, error_response(&names));
            }
            // Statuses in numeric order.
            let sorted: Map<String, Value> = {
                let mut all: Vec<(String, Value)> = std::mem::take(responses).into_iter().collect();
                all.sort_by(|a, b| a.0.cmp(&b.0));
                all.into_iter().collect()
            };
            *responses = sorted;
        }
    }
    doc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operation_ids_are_unique_and_every_operation_is_tagged_and_secured_or_public() {
        let doc = document();
        let mut ids = std::collections::HashSet::new();
        for (path, item) in doc["paths"].as_object().unwrap() {
            for (method, op) in item.as_object().unwrap() {
                let id = op["operationId"].as_str().unwrap();
                assert!(ids.insert(id.to_owned()), "{method} {path}: operationId {id} twice");
                assert!(op["tags"].as_array().is_some_and(|t| t.len() == 1), "{method} {path} has no tag");
                assert!(op["security"].is_array(), "{method} {path} says nothing of security");
                assert!(op["summary"].is_string(), "{method} {path} has no summary");
            }
        }
    }

    #[test]
    fn errors_list_their_codes_by_status() {
        let doc = document();
        let show = &doc["paths"]["/api/v1/orgs/{org}/tasks/{task}"]["get"]["responses"];
        assert_eq!(codes_of(&show["404"]).unwrap(), ["task_not_found", "org_not_found"]);
        assert_eq!(codes_of(&show["401"]).unwrap(), ["unauthorized"]);
        assert!(show.get("default").is_none());
        let schema = &doc["components"]["schemas"]["ErrorCode"]["enum"];
        assert_eq!(schema.as_array().unwrap().len(), ErrorCode::all().len());
    }
}
