//! Checks every response the tests get against the server's generated OpenAPI document:
//! the operation (method and path template) must list the status, and the body must
//! match that status's schema for the content type it came with. Objects are checked
//! strictly here (no property the schema does not name), so a field the server sends
//! but the document lacks fails too. `TestApp::call` runs this on every response.
//!
//! With `KODEL_OPENAPI_LOG=<file>` set, each validated response appends a line
//! `METHOD TEMPLATE STATUS` to that file (to count what a test run covered).

use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::sync::{Arc, LazyLock, Mutex};

use serde_json::{Map, Value, json};

struct Spec {
    doc: &'static Value,
    /// `#/components` with the strict object rule applied, embedded in every schema.
    components: Value,
    validators: Mutex<HashMap<String, Arc<jsonschema::Validator>>>,
}

static SPEC: LazyLock<Spec> = LazyLock::new(|| {
    let doc = kodel_server::routes::openapi::document();
    let mut components = doc["components"].clone();
    let in_all_of = refs_in_all_of(doc);
    if let Some(schemas) = components.get_mut("schemas").and_then(Value::as_object_mut) {
        for (name, schema) in schemas.iter_mut() {
            strict(schema, !in_all_of.contains(name));
        }
    }
    Spec { doc, components, validators: Mutex::new(HashMap::new()) }
});

/// Components used as an `allOf` member: their objects are closed by the `allOf` that
/// uses them, not by themselves.
fn refs_in_all_of(doc: &Value) -> HashSet<String> {
    fn walk(v: &Value, out: &mut HashSet<String>) {
        match v {
            Value::Object(m) => {
                if let Some(Value::Array(members)) = m.get("allOf") {
                    for member in members {
                        if let Some(r) = member.get("$ref").and_then(Value::as_str) {
                            out.insert(r.trim_start_matches("#/components/schemas/").to_owned());
                        }
                    }
                }
                m.values().for_each(|x| walk(x, out));
            }
            Value::Array(a) => a.iter().for_each(|x| walk(x, out)),
            _ => {}
        }
    }
    let mut out = HashSet::new();
    walk(doc, &mut out);
    out
}

/// Closes object schemas: a property they do not name is an error
/// (`unevaluatedProperties: false`, which also sees properties named through `allOf`).
fn strict(schema: &mut Value, close: bool) {
    let Some(m) = schema.as_object_mut() else { return };
    if let Some(Value::Array(members)) = m.get_mut("allOf") {
        members.iter_mut().for_each(|x| strict(x, false));
        if close {
            m.insert("unevaluatedProperties".into(), Value::Bool(false));
        }
        return;
    }
    if m.contains_key("properties") && !m.contains_key("additionalProperties") && close {
        m.insert("unevaluatedProperties".into(), Value::Bool(false));
    }
    for key in ["oneOf", "anyOf", "prefixItems"] {
        if let Some(Value::Array(members)) = m.get_mut(key) {
            members.iter_mut().for_each(|x| strict(x, close));
        }
    }
    for key in ["items", "additionalProperties"] {
        if let Some(sub) = m.get_mut(key) {
            strict(sub, close);
        }
    }
    if let Some(Value::Object(props)) = m.get_mut("properties") {
        props.values_mut().for_each(|x| strict(x, close));
    }
}

/// The document's operation for a concrete path: the template with the most literal
/// segments that matches it.
fn find_path(path: &str) -> Option<(&'static str, &'static Map<String, Value>)> {
    let segs: Vec<&str> = path.split('/').collect();
    let mut best: Option<(usize, &'static str, &'static Map<String, Value>)> = None;
    for (template, item) in SPEC.doc["paths"].as_object()? {
        let tsegs: Vec<&str> = template.split('/').collect();
        if tsegs.len() != segs.len() {
            continue;
        }
        let matches = tsegs.iter().zip(&segs).all(|(t, s)| (t.starts_with('{') && !s.is_empty()) || t == s);
        if !matches {
            continue;
        }
        let literal = tsegs.iter().filter(|t| !t.starts_with('{')).count();
        if best.is_none_or(|(n, _, _)| literal > n) {
            best = Some((literal, template.as_str(), item.as_object()?));
        }
    }
    best.map(|(_, t, i)| (t, i))
}

fn validator(key: &str, schema: &Value) -> Arc<jsonschema::Validator> {
    let mut cache = SPEC.validators.lock().unwrap();
    if let Some(v) = cache.get(key) {
        return v.clone();
    }
    let mut root = schema.clone();
    strict(&mut root, true);
    let mut root = match root {
        Value::Object(m) => m,
        other => Map::from_iter([("allOf".to_owned(), json!([other]))]),
    };
    root.insert("$schema".into(), json!("https://json-schema.org/draft/2020-12/schema"));
    root.insert("components".into(), SPEC.components.clone());
    let root = Value::Object(root);
    let built = jsonschema::draft202012::options()
        .should_validate_formats(true)
        .build(&root)
        .unwrap_or_else(|e| panic!("the OpenAPI schema for {key} does not compile: {e}"));
    let built = Arc::new(built);
    cache.insert(key.to_owned(), built.clone());
    built
}

fn check_body(key: &str, schema: &Value, body: &Value) -> Result<(), String> {
    let v = validator(key, schema);
    let errors: Vec<String> = v.iter_errors(body).map(|e| format!("at {}: {e}", e.instance_path())).collect();
    if errors.is_empty() { Ok(()) } else { Err(errors.join("\n  ")) }
}

fn log(line: &str) {
    if let Ok(file) = std::env::var("KODEL_OPENAPI_LOG")
        && let Ok(mut f) = std::fs::OpenOptions::new().create(true).append(true).open(file)
    {
        let _ = writeln!(f, "{line}");
    }
}

/// Panics, saying why, unless the document describes this response. `body` is the
/// parsed JSON (or the text, as a string; Null when empty); `content_type` the
/// response's Content-Type.
pub fn check(method: &str, uri: &str, status: u16, content_type: Option<&str>, body: &Value) {
    if let Err(why) = describe(method, uri, status, content_type, body) {
        panic!("the OpenAPI document does not describe this response: {method} {uri} -> {status}\n  {why}\n  body: {body}");
    }
}

fn describe(method: &str, uri: &str, status: u16, content_type: Option<&str>, body: &Value) -> Result<(), String> {
    let path = uri.split('?').next().unwrap_or(uri);
    let method = method.to_lowercase();
    let error_schema = json!({"$ref": "#/components/schemas/Error"});
    let Some((template, item)) = find_path(path) else {
        // The router's fallback: no such endpoint.
        if status != 404 || body["error"]["code"] != "not_found" {
            return Err(format!("no path of the document matches {path}, and the answer is not the fallback's 404 not_found"));
        }
        log(&format!("{} (no such path) 404", method.to_uppercase()));
        return check_body("fallback 404", &error_schema, body);
    };
    let Some(op) = item.get(&method) else {
        if status != 405 || body["error"]["code"] != "method_not_allowed" {
            return Err(format!("{template} has no {method} operation, and the answer is not 405 method_not_allowed"));
        }
        log(&format!("{} {template} 405", method.to_uppercase()));
        return check_body("fallback 405", &error_schema, body);
    };
    let responses = op["responses"].as_object().ok_or("the operation has no responses")?;
    let range = format!("{}XX", status / 100);
    let (key, resp) = [status.to_string(), range]
        .into_iter()
        .find_map(|k| responses.get(&k).map(|r| (k, r)))
        .ok_or_else(|| format!("{} {template} does not list status {status} (it lists {})", method.to_uppercase(), responses.keys().cloned().collect::<Vec<_>>().join(", ")))?;
    log(&format!("{} {template} {status}", method.to_uppercase()));
    let empty = body.is_null() || body.as_str() == Some("");
    let Some(content) = resp.get("content").and_then(Value::as_object) else {
        return if empty { Ok(()) } else { Err(format!("status {key} is documented without a body, but one came")) };
    };
    let mime = content_type.unwrap_or("").split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    let media = content.get(&mime).ok_or_else(|| {
        format!("status {key} is documented as {}, but the answer is {mime:?}", content.keys().cloned().collect::<Vec<_>>().join(" or "))
    })?;
    // A stream (`TestApp::sse`) is checked for its status and content type only.
    if mime == "text/event-stream" && body.is_null() {
        return Ok(());
    }
    let Some(schema) = media.get("schema") else { return Ok(()) };
    check_body(&format!("{method} {template} {key} {mime}"), schema, body)
        .map_err(|e| format!("the body does not match the schema of {} {template} {key} ({mime}):\n  {e}", method.to_uppercase()))
}
