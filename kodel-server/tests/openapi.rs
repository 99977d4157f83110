//! The OpenAPI document and the router cannot drift apart: every documented operation
//! is served (and its answer is validated against the document like every other test
//! response, see common/openapi.rs), and the router has no way to serve a route that is
//! not documented.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;

use common::TestApp;
use reqwest::Method;
use serde_json::Value;

fn operations() -> Vec<(Method, String)> {
    let doc = kodel_server::routes::openapi::document();
    let mut out = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            out.push((Method::from_bytes(method.to_uppercase().as_bytes()).unwrap(), path.clone()));
        }
    }
    out
}

/// A concrete path for a template: `/api/v1/orgs/{org}/tasks/{task}` -> `/api/v1/orgs/acme/tasks/KOD-1`.
fn concrete(template: &str) -> String {
    template
        .split('/')
        .map(|s| match s {
            "{org}" => "acme",
            "{key}" => "KOD",
            "{task}" => "KOD-1",
            "{member}" => "someone@x.io",
            "{provider}" => "openai",
            s if s.starts_with('{') => "0190f0e2-0000-7000-8000-000000000000",
            s => s,
        })
        .collect::<Vec<_>>()
        .join("/")
}

#[tokio::test]
async fn every_documented_operation_is_served() {
    let app = TestApp::spawn().await;
    let ops = operations();
    assert!(ops.len() >= 79, "the document has {} operations", ops.len());
    for (method, template) in ops {
        let path = concrete(&template);
        // No credentials and no body: each answers with its own first check (401, 415,
        // ...), never the router's 404 or 405; `call` validates the answer.
        let (status, body) = app.call(method.clone(), &path, None, None).await;
        let code = body["error"]["code"].as_str().unwrap_or("");
        assert!(
            !(status == 404 && code == "not_found" || status == 405 && code == "method_not_allowed"),
            "{method} {template} is documented but not served: {status} {body}"
        );
    }
}

#[tokio::test]
async fn an_undocumented_path_or_method_gets_the_fallback() {
    let app = TestApp::spawn().await;
    let (s, v) = app.call(Method::GET, "/api/v1/nowhere", None, None).await;
    assert_eq!((s.as_u16(), common::code(&v)), (404, "not_found"));
    let (s, v) = app.call(Method::DELETE, "/api/v1/orgs", None, None).await;
    assert_eq!((s.as_u16(), common::code(&v)), (405, "method_not_allowed"));
}

/// Routes come only from utoipa-axum's `routes!`, which needs the handler's
/// `#[utoipa::path]`: no module may add one with axum's own `route` (which utoipa-axum
/// passes through undocumented), `route_service`, `nest` or a plain `Router`. (The web
/// view's pages, src/web, are HTML for browsers rather than API, and route themselves.)
#[test]
fn no_route_is_added_without_its_documentation() {
    fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let p = entry.unwrap().path();
            if p.is_dir() {
                rust_files(&p, out);
            } else if p.extension().is_some_and(|e| e == "rs") {
                out.push(p);
            }
        }
    }
    let mut files = Vec::new();
    rust_files(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src/routes"), &mut files);
    let mut found = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        for (i, line) in text.lines().enumerate() {
            let code = line.split("//").next().unwrap_or("");
            // axum's own Router (not utoipa-axum's OpenApiRouter) or a pass-through method.
            let plain_router = code.match_indices("Router::new()").any(|(at, _)| !code[..at].ends_with("OpenApi"));
            let pass_through = [".route(", ".route_service(", ".nest(", ".nest_service("].iter().any(|m| code.contains(m));
            if plain_router || pass_through {
                found.push(format!("{}:{}: {}", f.display(), i + 1, line.trim()));
            }
        }
    }
    assert!(found.is_empty(), "routes added outside utoipa-axum's routes!:\n{}", found.join("\n"));
}

#[test]
fn every_operation_declares_its_path_parameters_and_a_success() {
    let doc = kodel_server::routes::openapi::document();
    for (path, item) in doc["paths"].as_object().unwrap() {
        let names: Vec<&str> = path.split('/').filter_map(|s| s.strip_prefix('{')?.strip_suffix('}')).collect();
        for (method, op) in item.as_object().unwrap() {
            let declared: Vec<&str> = op["parameters"]
                .as_array()
                .map(|ps| ps.iter().filter(|p| p["in"] == "path").filter_map(|p| p["name"].as_str()).collect())
                .unwrap_or_default();
            assert_eq!(declared, names, "{method} {path}: path parameters");
            let responses = op["responses"].as_object().unwrap();
            assert!(responses.keys().any(|s| s.starts_with('1') || s.starts_with('2')), "{method} {path}: no success response");
            assert!(!responses.contains_key("default"), "{method} {path}: a default response hides undocumented statuses");
        }
    }
}

#[test]
fn every_reference_resolves() {
    let doc = kodel_server::routes::openapi::document();
    fn walk(v: &Value, doc: &Value, path: &str) {
        match v {
            Value::Object(m) => {
                if let Some(r) = m.get("$ref").and_then(Value::as_str) {
                    let pointer = r.strip_prefix('#').unwrap_or_else(|| panic!("{path}: external $ref {r}"));
                    assert!(doc.pointer(pointer).is_some(), "{path}: $ref {r} resolves to nothing");
                }
                for (k, x) in m {
                    walk(x, doc, &format!("{path}/{k}"));
                }
            }
            Value::Array(a) => a.iter().for_each(|x| walk(x, doc, path)),
            _ => {}
        }
    }
    walk(doc, doc, "");
}
