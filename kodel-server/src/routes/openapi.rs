//! `GET /api/v1/openapi.json`: the API description, kept beside the code.

use axum::Router;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;

use crate::AppState;

pub const SPEC: &str = include_str!("../openapi.json");

pub fn router() -> Router<AppState> {
    Router::new().route("/api/v1/openapi.json", get(|| async { ([(header::CONTENT_TYPE, "application/json")], SPEC).into_response() }))
}
