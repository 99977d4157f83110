//! The stylesheet and the script, embedded in the binary. Their URLs carry a hash of
//! their content, so browsers may keep them for a year and still never run an old one.

use std::sync::LazyLock;

use axum::extract::Path;
use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sha2::{Digest, Sha256};

use crate::error::ApiError;

const FILES: &[(&str, &str, &str)] = &[
    ("app.css", "text/css; charset=utf-8", include_str!("assets/app.css")),
    ("app.js", "text/javascript; charset=utf-8", include_str!("assets/app.js")),
];

static VERSIONS: LazyLock<Vec<String>> =
    LazyLock::new(|| FILES.iter().map(|(_, _, body)| URL_SAFE_NO_PAD.encode(&Sha256::digest(body.as_bytes())[..6])).collect());

/// The URL of an embedded file, with its content's hash.
pub fn url(name: &str) -> String {
    let version = FILES.iter().position(|(n, _, _)| *n == name).map_or("", |i| VERSIONS[i].as_str());
    format!("/assets/{name}?v={version}")
}

pub async fn serve(Path(name): Path<String>) -> Response {
    match FILES.iter().find(|(n, _, _)| *n == name) {
        Some((_, kind, body)) => ([(CONTENT_TYPE, *kind), (CACHE_CONTROL, "public, max-age=31536000, immutable")], *body).into_response(),
        None => ApiError::new(kodel_core::ErrorCode::NotFound, "no such file").into_response(),
    }
}
