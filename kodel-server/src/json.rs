//! `ApiJson<T>`: axum's Json with our error body for every rejection (malformed JSON,
//! unknown or missing fields, wrong content type, a body over the limit). `ApiQuery<T>`:
//! axum's Query the same way (a bad query parameter is a 422 in the JSON envelope,
//! not axum's 400 in plain text).

use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::StatusCode;
use kodel_core::ErrorCode;
use serde::de::DeserializeOwned;

use crate::error::ApiError;

pub struct ApiJson<T>(pub T);

impl<S, T> FromRequest<S> for ApiJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(v)) => Ok(ApiJson(v)),
            Err(rejection) => Err(map_rejection(rejection)),
        }
    }
}

pub struct ApiQuery<T>(pub T);

impl<S, T> FromRequestParts<S> for ApiQuery<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(v)) => Ok(ApiQuery(v)),
            Err(rejection) => Err(ApiError::invalid(format!("bad query: {}", source_text(&rejection)))),
        }
    }
}

fn map_rejection(r: JsonRejection) -> ApiError {
    match &r {
        JsonRejection::JsonDataError(e) => ApiError::new(ErrorCode::InvalidRequest, source_text(e)),
        JsonRejection::JsonSyntaxError(e) => ApiError::new(ErrorCode::InvalidJson, source_text(e)),
        JsonRejection::MissingJsonContentType(_) => {
            ApiError::new(ErrorCode::UnsupportedMediaType, "expected Content-Type: application/json")
        }
        _ if r.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            ApiError::new(ErrorCode::PayloadTooLarge, "request body is larger than the server accepts")
        }
        _ => ApiError::new(ErrorCode::InvalidJson, r.body_text()),
    }
}

/// serde's message without axum's prefix, e.g. "unknown field `titel` at line 1 column 9".
fn source_text(e: &dyn std::error::Error) -> String {
    let mut msg = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        msg = s.to_string();
        src = s.source();
    }
    msg
}
