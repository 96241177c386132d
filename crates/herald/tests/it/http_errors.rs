//! Every HTTP route answers every error with the documented JSON body
//! `{"error":{"code","message"}}`, the code's status and `Content-Type: application/json`, and
//! counts it in `herald_errors_total{code}`: bad query strings, bad path segments, wrong methods
//! and unknown paths included. A route that takes no query parameters ignores unknown ones.

use reqwest::Method;
use serde_json::Value;

use crate::common::{TestServer, API_KEY};

/// What a request sends besides its method and path.
#[derive(Clone, Copy, PartialEq)]
enum With {
    /// Nothing.
    Nothing,
    /// The API key.
    ApiKey,
    /// The API key and a valid publish body.
    PublishBody,
    /// The headers of a WebSocket handshake.
    Upgrade,
}

use self::With::{ApiKey, Nothing, PublishBody, Upgrade};

const BAD: Option<&str> = Some("bad_request");
const AUTH: Option<&str> = Some("unauthorized");
const NOT_FOUND: Option<&str> = Some("not_found");
const METHOD: Option<&str> = Some("method_not_allowed");
const OK: Option<&str> = None;

/// Every route of `server::router`, each with what is wrong with it: the request line, what it
/// sends, the error code it must get (`OK`: a `200`), and the words its message must contain
/// (the parameter it names). No message may contain a value given as `secret-...`.
#[rustfmt::skip]
const CASES: &[(&str, With, Option<&str>, &[&str])] = &[
    // GET /api/channels/{channel}/history
    ("GET /api/channels/chat:1/history?limit=x", ApiKey, BAD, &["limit"]),
    ("GET /api/channels/chat:1/history?limit=-1", ApiKey, BAD, &["limit"]),
    ("GET /api/channels/chat:1/history?since=garbage", ApiKey, BAD, &["since"]),
    ("GET /api/channels/chat:1/history?limit=1&limit=2", ApiKey, BAD, &["limit"]),
    ("GET /api/channels/chat:1/history?colour=red", ApiKey, BAD, &["colour"]),
    ("GET /api/channels/chat:1/history?limit=5000", ApiKey, BAD, &["limit"]),
    ("GET /api/channels/chat:1/history?epoch=e", ApiKey, BAD, &["since"]),
    ("GET /api/channels/bad%20name/history", ApiKey, BAD, &["channel name"]),
    ("GET /api/channels/%FF/history", ApiKey, BAD, &["channel", "UTF-8"]),
    ("GET /api/channels/nope:1/history", ApiKey, NOT_FOUND, &["nope"]),
    ("GET /api/channels/chat:1/history?limit=2", ApiKey, OK, &[]),
    ("POST /api/channels/chat:1/history", ApiKey, METHOD, &["POST"]),
    // GET /api/channels/{channel}/presence
    ("GET /api/channels/lobby:1/presence?counts_only=maybe", ApiKey, BAD, &["counts_only"]),
    ("GET /api/channels/lobby:1/presence?since=1", ApiKey, BAD, &["since"]),
    ("GET /api/channels/%FF/presence", ApiKey, BAD, &["channel", "UTF-8"]),
    ("GET /api/channels/bad%20name/presence", ApiKey, BAD, &["channel name"]),
    ("GET /api/channels/lobby:1/presence?counts_only=true", ApiKey, OK, &[]),
    ("DELETE /api/channels/lobby:1/presence", ApiKey, METHOD, &["DELETE"]),
    // GET /api/channels (unknown parameters are ignored)
    ("GET /api/channels?prefix=secret-a&prefix=secret-b", ApiKey, BAD, &["prefix"]),
    ("GET /api/channels?prefix=chat&colour=red", ApiKey, OK, &[]),
    ("POST /api/channels", ApiKey, METHOD, &[]),
    ("OPTIONS /api/channels", ApiKey, METHOD, &[]),
    // GET /api/users/{user}
    ("GET /api/users/%FF", ApiKey, BAD, &["user", "UTF-8"]),
    ("GET /api/users/alice?colour=red", ApiKey, OK, &[]),
    ("PUT /api/users/alice", ApiKey, METHOD, &[]),
    // GET /api/stats
    ("GET /api/stats?colour=red", ApiKey, OK, &[]),
    ("POST /api/stats", ApiKey, METHOD, &[]),
    // The POST routes: no query parameters, a JSON body.
    ("POST /api/publish?colour=red", PublishBody, OK, &[]),
    ("POST /api/publish", ApiKey, BAD, &["body"]),
    ("GET /api/publish", ApiKey, METHOD, &["GET"]),
    ("GET /api/broadcast", ApiKey, METHOD, &[]),
    ("GET /api/batch", ApiKey, METHOD, &[]),
    ("GET /api/disconnect", ApiKey, METHOD, &[]),
    ("PATCH /api/unsubscribe", ApiKey, METHOD, &[]),
    // On an existing /api path the key comes first: before the method and the query.
    ("GET /api/publish", Nothing, AUTH, &[]),
    ("GET /api/channels/chat:1/history?limit=x", Nothing, AUTH, &[]),
    // Unknown paths, under /api and elsewhere: no key needed.
    ("GET /api/nope", ApiKey, NOT_FOUND, &[]),
    ("GET /api/nope", Nothing, NOT_FOUND, &[]),
    ("GET /api/channels/chat:1/history/more", ApiKey, NOT_FOUND, &[]),
    ("GET /nope", Nothing, NOT_FOUND, &[]),
    ("POST /nope?limit=x", Nothing, NOT_FOUND, &[]),
    // GET /ws (unknown parameters are ignored)
    ("GET /ws?last=-1", Upgrade, BAD, &["last"]),
    ("GET /ws?last=many", Upgrade, BAD, &["last"]),
    ("GET /ws?last=5000", Upgrade, BAD, &["last"]),
    ("GET /ws?since=garbage", Upgrade, BAD, &["since"]),
    ("GET /ws?last=1&last=2", Upgrade, BAD, &["last"]),
    ("GET /ws?token=secret-one&token=secret-two", Upgrade, BAD, &["token"]),
    ("GET /ws?last=1", Nothing, BAD, &["WebSocket"]),
    ("POST /ws", Upgrade, METHOD, &[]),
    // GET /sse
    ("GET /sse?channel=bad%20name", Nothing, BAD, &["channel name"]),
    ("GET /sse?channel=%FF", Nothing, BAD, &["channel name"]),
    ("GET /sse?colour=red", Nothing, BAD, &["colour"]),
    ("GET /sse?last_event_id=garbage", Nothing, BAD, &["Last-Event-ID"]),
    ("GET /sse?token=secret-one&token=secret-two", Nothing, BAD, &["token"]),
    ("GET /sse?channel=chat:1", Nothing, AUTH, &["token"]),
    ("POST /sse", Nothing, METHOD, &[]),
    // /health, /ready, /metrics take no query parameters and ignore unknown ones.
    ("GET /health?limit=x", Nothing, OK, &[]),
    ("POST /health", Nothing, METHOD, &[]),
    ("GET /ready?limit=x", Nothing, OK, &[]),
    ("DELETE /ready", Nothing, METHOD, &[]),
    ("GET /metrics?limit=x", Nothing, OK, &[]),
    ("POST /metrics", Nothing, METHOD, &[]),
];

/// `herald_errors_total{code}` as `/metrics` reports it now; `None` when there is no such series.
async fn errors_counted(server: &TestServer, code: &str) -> Option<f64> {
    server
        .try_metric(&format!("herald_errors_total{{code=\"{code}\"}}"))
        .await
}

#[tokio::test]
async fn every_route_answers_every_error_as_counted_json() {
    let server = TestServer::start_default().await;
    let http = reqwest::Client::new();
    let mut failures = Vec::new();
    for &(line, with, code, mentions) in CASES {
        let (method, path) = line.split_once(' ').unwrap();
        let method = Method::from_bytes(method.as_bytes()).unwrap();
        let label = line;
        let before = match code {
            Some(code) => errors_counted(&server, code).await,
            None => None,
        };
        let mut request = http.request(method, server.url(path));
        match with {
            Nothing => {}
            ApiKey => request = request.bearer_auth(API_KEY),
            PublishBody => {
                request = request
                    .bearer_auth(API_KEY)
                    .body(r#"{"channel":"chat:1","data":{"n":1}}"#)
            }
            Upgrade => {
                request = request
                    .header("connection", "upgrade")
                    .header("upgrade", "websocket")
                    .header("sec-websocket-version", "13")
                    .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
            }
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let content_type = response
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default();
        let allow = response.headers().get("allow").cloned();
        let text = response.text().await.unwrap();

        let Some(code) = code else {
            if status != 200 {
                failures.push(format!("{label}: expected 200, got {status} {text}"));
            }
            continue;
        };
        let expected_status = match code {
            "bad_request" => 400,
            "unauthorized" => 401,
            "not_found" => 404,
            "method_not_allowed" => 405,
            other => panic!("no status for {other}"),
        };
        if status != expected_status {
            failures.push(format!(
                "{label}: expected {expected_status}, got {status} ({content_type}) {text}"
            ));
            continue;
        }
        if content_type != "application/json" {
            failures.push(format!(
                "{label}: content-type is {content_type:?}, body {text}"
            ));
            continue;
        }
        let body: Value = match serde_json::from_str(&text) {
            Ok(body) => body,
            Err(e) => {
                failures.push(format!("{label}: body is not JSON ({e}): {text}"));
                continue;
            }
        };
        let shape_ok = body.as_object().is_some_and(|o| o.len() == 1)
            && body["error"].as_object().is_some_and(|o| o.len() == 2)
            && body["error"]["code"].is_string()
            && body["error"]["message"].is_string();
        if !shape_ok {
            failures.push(format!(
                "{label}: not {{\"error\":{{code,message}}}}: {body}"
            ));
            continue;
        }
        if body["error"]["code"] != code {
            failures.push(format!("{label}: expected code {code}, got {body}"));
            continue;
        }
        let message = body["error"]["message"].as_str().unwrap();
        for word in mentions {
            if !message.contains(word) {
                failures.push(format!(
                    "{label}: message does not mention {word:?}: {message}"
                ));
            }
        }
        if message.contains("secret-") {
            failures.push(format!("{label}: message reveals a value: {message}"));
        }
        if code == "method_not_allowed" && allow.is_none() {
            failures.push(format!("{label}: 405 without an Allow header"));
        }
        let after = errors_counted(&server, code).await;
        if after.is_none() || after != before.map(|n| n + 1.0) {
            failures.push(format!(
                "{label}: herald_errors_total{{code=\"{code}\"}} went from {before:?} to {after:?}"
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        CASES.len(),
        failures.join("\n")
    );
}
