//! `GET /api/openapi.json`: the document describes every route the server serves, and each
//! described operation is served. (`scripts/schemathesis` checks every answer against it.)

use reqwest::Method;
use serde_json::{json, Value};

use crate::common::TestServer;

/// Every operation the server serves, as `METHOD path`.
const OPERATIONS: &[&str] = &[
    "GET /admin",
    "GET /admin/",
    "GET /admin/api/channels",
    "GET /admin/api/channels/{channel}/history",
    "GET /admin/api/channels/{channel}/presence",
    "GET /admin/api/channels/{channel}/watch",
    "GET /admin/api/samples",
    "GET /admin/api/session",
    "GET /admin/api/stats",
    "GET /admin/api/users/{user}",
    "GET /admin/assets/{file}",
    "GET /api/channels",
    "GET /api/channels/{channel}/history",
    "GET /api/channels/{channel}/presence",
    "GET /api/openapi.json",
    "GET /api/stats",
    "GET /api/users/{user}",
    "GET /health",
    "GET /metrics",
    "GET /ready",
    "GET /socket.io/",
    "GET /sse",
    "GET /ws",
    "POST /admin/api/disconnect",
    "POST /admin/api/login",
    "POST /admin/api/logout",
    "POST /admin/api/publish",
    "POST /api/batch",
    "POST /api/broadcast",
    "POST /api/disconnect",
    "POST /api/publish",
    "POST /api/unsubscribe",
    "POST /socket.io/",
];

fn operations(doc: &Value) -> Vec<String> {
    let mut found = Vec::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for method in item.as_object().expect("path item").keys() {
            found.push(format!("{} {path}", method.to_uppercase()));
        }
    }
    found.sort();
    found
}

#[tokio::test]
async fn the_document_is_openapi_3_1_and_lists_every_operation() {
    let server = TestServer::start_default().await;
    let (status, doc) = server.get("/api/openapi.json").await;
    assert_eq!(status, 200, "{doc}");
    assert_eq!(doc["openapi"], "3.1.0");
    assert_eq!(doc["info"]["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(operations(&doc), OPERATIONS);
    // Every `/api` operation asks for the API key; the error body is one shared schema.
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, operation) in item.as_object().unwrap() {
            if path.starts_with("/api/") {
                assert_eq!(
                    operation["security"],
                    json!([{"api_key": []}]),
                    "{method} {path}"
                );
                assert!(operation["responses"]["401"].is_object(), "{method} {path}");
            }
            assert!(
                operation["responses"]["405"]["content"]["application/json"]["schema"]["$ref"]
                    == "#/components/schemas/HttpError",
                "{method} {path}"
            );
        }
    }
    for schema in [
        "HttpError",
        "PublishBody",
        "StreamPosition",
        "Stats",
        "Message",
    ] {
        assert!(doc["components"]["schemas"][schema].is_object(), "{schema}");
    }
}

/// Each described operation is routed: none answers the router's own "no such endpoint" or
/// "method not allowed".
#[tokio::test]
async fn every_described_operation_is_served() {
    let server = TestServer::start_default().await;
    let (_, doc) = server.get("/api/openapi.json").await;
    for operation in operations(&doc) {
        let (method, path) = operation.split_once(' ').unwrap();
        let path = path
            .replace("{channel}", "chat:1")
            .replace("{user}", "alice")
            .replace("{file}", "admin.js");
        let method = Method::from_bytes(method.as_bytes()).unwrap();
        let body = (method == Method::POST).then(|| "{}".to_string());
        let (status, answer) = server
            .request(method, &path, Some(crate::common::API_KEY), body)
            .await;
        assert_ne!(status, 405, "{operation}: {answer}");
        assert!(
            answer["error"]["message"] != "no such endpoint",
            "{operation} is described but not served"
        );
    }
}

/// The document needs the API key, like the rest of `/api`.
#[tokio::test]
async fn the_document_needs_the_api_key() {
    let server = TestServer::start_default().await;
    let (status, body) = server
        .request(Method::GET, "/api/openapi.json", None, None)
        .await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["error"]["code"], "unauthorized");
}

/// The answers the document describes are the ones the server gives: a publish's answer and an
/// error body, checked against their schemas' required fields and types.
#[tokio::test]
async fn answers_have_the_described_shape() {
    let server = TestServer::start_default().await;
    let (_, doc) = server.get("/api/openapi.json").await;
    let schemas = &doc["components"]["schemas"];
    let published = server.publish("chat:1", json!({"n": 1})).await;
    assert_shape(schemas, &schemas["StreamPosition"], &published);
    let (status, refused) = server
        .post("/api/publish", json!({"channel": "", "data": 1}))
        .await;
    assert_eq!(status, 400);
    assert_shape(schemas, &schemas["HttpError"], &refused);
    let (_, stats) = server.get("/api/stats").await;
    assert_shape(schemas, &schemas["Stats"], &stats);
    let (_, history) = server.get("/api/channels/chat:1/history").await;
    assert_shape(schemas, &schemas["HistoryResult"], &history);
}

/// A small structural check: every required property is there, every property present is
/// described, and objects and arrays nest as described (`$ref`s followed).
fn assert_shape(schemas: &Value, schema: &Value, value: &Value) {
    let schema = match schema["$ref"].as_str() {
        Some(r) => &schemas[r.trim_start_matches("#/components/schemas/")],
        None => schema,
    };
    if let Some(required) = schema["required"].as_array() {
        for name in required {
            let name = name.as_str().unwrap();
            assert!(value.get(name).is_some(), "{name} missing from {value}");
        }
    }
    if let (Some(properties), Some(object)) = (schema["properties"].as_object(), value.as_object())
    {
        for (name, field) in object {
            let described = properties
                .get(name)
                .unwrap_or_else(|| panic!("{name} is not described: {schema}"));
            assert_shape(schemas, described, field);
        }
    }
    if let (Some(items), Some(array)) = (schema.get("items"), value.as_array()) {
        for item in array {
            assert_shape(schemas, items, item);
        }
    }
}

/// The router is built only from the described route lists (`utoipa_axum::routes!`, which puts
/// each operation into the document as it adds it to the router): no source file adds a route
/// of its own with axum's plain `route`, `route_service` or `nest_service`, which would serve a
/// path the document does not describe.
#[test]
fn no_route_is_added_outside_the_described_lists() {
    let plain = [".route(", ".route_service(", ".nest_service("];
    let mut files = vec![std::path::PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/src"
    ))];
    let mut checked = 0;
    while let Some(path) = files.pop() {
        if path.is_dir() {
            files.extend(
                std::fs::read_dir(&path)
                    .unwrap()
                    .map(|entry| entry.unwrap().path()),
            );
            continue;
        }
        if path.extension().is_none_or(|e| e != "rs") {
            continue;
        }
        let source = std::fs::read_to_string(&path).unwrap();
        for call in plain {
            assert!(
                !source.contains(call),
                "{} adds a route with `{call}`: add it with `routes!` and `#[utoipa::path]`",
                path.display()
            );
        }
        checked += 1;
    }
    assert!(checked > 10, "only {checked} source files found");
}
