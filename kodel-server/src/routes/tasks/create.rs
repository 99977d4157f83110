//! `POST /orgs/{org}/projects/{key}/tasks`: parses the creation, submits it to the
//! engine's group commit (`engine::tasks::create`), or makes it alone, and maps the
//! answer.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use kodel_core::api::{CreateTask, OrgRole, Task};

use super::super::openapi::{Errors, code, path};
use crate::AppState;
use crate::auth::extract::Credential;
use crate::engine::tasks::create::{Answer, NewTask, create_one};
use crate::engine::tasks;
use crate::error::{ApiError, ApiResult};
use crate::json::ApiJson;
use crate::tenant::{Caller, Tenant};

#[utoipa::path(
    post, path = "/api/v1/orgs/{org}/projects/{key}/tasks", tag = "tasks",
    summary = "Create a task (developer+)",
    params(path::Project),
    request_body = CreateTask,
    responses((status = CREATED, description = "task", body = Task), Errors<(code::InvalidKey, code::Forbidden, code::ProjectNotFound)>),
    security(("bearer" = []))
)]
pub(crate) async fn create(
    State(state): State<AppState>,
    Caller { slug, credential }: Caller,
    Path((_, key)): Path<(String, String)>,
    ApiJson(req): ApiJson<CreateTask>,
) -> ApiResult<(StatusCode, Json<Task>)> {
    let new = NewTask::from_request(credential, &key, req)?;
    // An API token this server has not seen pass lately is checked alone first, so
    // made-up tokens never reach the shared committers (a JWT's signature is checked
    // already). The batch checks every token again.
    let queue = match &new.credential {
        Credential::ApiToken { hash } => state.token_uses.seen_lately(hash),
        Credential::Session { .. } => true,
    };
    let answer = if queue { state.creates.submit(&slug, new.clone()).await } else { Answer::Alone };
    match answer {
        Answer::Created(created) => {
            let span = tracing::Span::current();
            span.record("user", tracing::field::display(created.user));
            span.record("org", slug.as_str());
            new.credential.touch(&state);
            Ok((StatusCode::CREATED, Json(created.task)))
        }
        Answer::Alone => {
            let mut t = Tenant::open(&state, slug, new.credential.clone()).await?;
            let (org_admin, email) = (t.org.role >= OrgRole::Admin, t.auth.user.email.clone());
            let made = create_one(&mut t, org_admin, &email, new).await?;
            let task = if made.reacts {
                // Rules that fire on creation may have changed the task: it is read back.
                t.commit_with(async |db| tasks::read(db, made.id).await).await?
            } else {
                t.commit().await?;
                made.task
            };
            Ok((StatusCode::CREATED, Json(task)))
        }
        Answer::Unknown => Err(ApiError::internal(
            "the database failed while committing the task: it may have been created; check the list before retrying",
        )),
    }
}
