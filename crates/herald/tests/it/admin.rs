//! The admin page's server side: sign-in with an API key or the admin password, the session
//! cookie's attributes, the CSRF token, JSON and same-origin checks on every `POST`, sign-out and
//! idle expiry, when the page is served at all, its security headers, the channel list paged
//! over 10,000 channels, the channel inspector's stream, the user look-up and disconnect, and the
//! JSON errors. The page itself is driven in Chromium by `clients/js/test/browser/admin.test.mjs`.

use std::time::Duration;

use herald::config::Config;
use herald_core::{Identity, Recovery};
use reqwest::header::{HeaderMap, HeaderValue};
use reqwest::Method;
use serde_json::{json, Value};

use crate::common::{assert_closed_with, eventually, patience, TestServer, API_KEY, QUIET};

const PASSWORD: &str = "correct horse battery staple";

/// A configuration with the admin password set.
fn config() -> Config {
    let mut config = TestServer::config();
    config.admin.password = PASSWORD.into();
    config
}

/// An answer: status, headers, JSON body (or the text, as a JSON string).
struct Answer {
    status: u16,
    headers: HeaderMap,
    body: Value,
}

impl Answer {
    fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }

    fn error_code(&self) -> &str {
        self.body["error"]["code"].as_str().unwrap_or("")
    }
}

/// A browser's view of the admin API: the session cookie and the CSRF token, sent by hand.
struct Admin {
    base: String,
    http: reqwest::Client,
    cookie: String,
    csrf: String,
}

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

async fn send(
    http: &reqwest::Client,
    method: Method,
    url: &str,
    headers: &[(&str, &str)],
    body: Option<Value>,
) -> Answer {
    let mut request = http.request(method, url);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    if let Some(body) = body {
        request = request.body(body.to_string());
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let text = response.text().await.unwrap();
    let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
    Answer {
        status,
        headers,
        body,
    }
}

/// `POST {base}/api/login` with `secret`, as the page sends it.
async fn login_at(base: &str, secret: &str) -> Answer {
    send(
        &http(),
        Method::POST,
        &format!("{base}/api/login"),
        &[("content-type", "application/json")],
        Some(json!({ "secret": secret })),
    )
    .await
}

impl Admin {
    /// Signs in to the page at `base` (`http://…/admin`).
    async fn sign_in_at(base: &str, secret: &str) -> Admin {
        let answer = login_at(base, secret).await;
        assert_eq!(answer.status, 200, "sign-in: {}", answer.body);
        let set_cookie = answer.header("set-cookie");
        let cookie = set_cookie.split(';').next().unwrap().to_string();
        Admin {
            base: base.into(),
            http: http(),
            cookie,
            csrf: answer.body["csrf_token"].as_str().unwrap().into(),
        }
    }

    async fn sign_in(server: &TestServer) -> Admin {
        Admin::sign_in_at(&server.url("/admin"), API_KEY).await
    }

    fn url(&self, path: &str) -> String {
        format!("{}/api/{path}", self.base)
    }

    async fn get(&self, path: &str) -> Answer {
        send(
            &self.http,
            Method::GET,
            &self.url(path),
            &[("cookie", &self.cookie)],
            None,
        )
        .await
    }

    /// A `POST` as the page sends it: cookie, CSRF token, JSON, same origin.
    async fn post(&self, path: &str, body: Value) -> Answer {
        self.post_with(path, &[("x-herald-csrf", &self.csrf)], body)
            .await
    }

    /// A `POST` with the cookie, a JSON content type and `headers`.
    async fn post_with(&self, path: &str, headers: &[(&str, &str)], body: Value) -> Answer {
        let mut all = vec![
            ("cookie", self.cookie.as_str()),
            ("content-type", "application/json"),
        ];
        all.extend_from_slice(headers);
        send(&self.http, Method::POST, &self.url(path), &all, Some(body)).await
    }
}

#[tokio::test]
async fn signs_in_with_an_api_key_or_the_password_and_refuses_a_wrong_secret() {
    let server = TestServer::start(config()).await;
    let base = server.url("/admin");

    let by_key = login_at(&base, API_KEY).await;
    assert_eq!(by_key.status, 200, "{}", by_key.body);
    let csrf = by_key.body["csrf_token"].as_str().unwrap();
    assert!(csrf.len() >= 32, "a random CSRF token: {csrf}");
    assert_eq!(by_key.body["node"], server.app().node_name.as_str());
    assert_eq!(by_key.body["engine"], "memory");
    let cookie = by_key.header("set-cookie");
    assert!(cookie.starts_with("herald_admin="), "{cookie}");
    let attributes: Vec<&str> = cookie.split(';').map(str::trim).skip(1).collect();
    assert_eq!(attributes, ["Path=/admin", "HttpOnly", "SameSite=Strict"]);
    assert_eq!(by_key.header("cache-control"), "no-store");

    let by_password = login_at(&base, PASSWORD).await;
    assert_eq!(by_password.status, 200, "{}", by_password.body);
    assert_ne!(
        by_password.body["csrf_token"], by_key.body["csrf_token"],
        "a token per session"
    );

    for wrong in ["wrong-password-0123456789", "", "correct horse battery"] {
        let refused = login_at(&base, wrong).await;
        assert_eq!(refused.status, 401, "{wrong:?}: {}", refused.body);
        assert_eq!(refused.error_code(), "unauthorized");
        assert_eq!(refused.header("set-cookie"), "", "no session for {wrong:?}");
        let message = refused.body["error"]["message"].as_str().unwrap();
        assert!(wrong.is_empty() || !message.contains(wrong), "{message}");
    }
    server
        .assert_metric_at_least("herald_admin_logins_total{result=\"ok\"}", 2.0)
        .await;
    assert_eq!(
        server
            .metric("herald_admin_logins_total{result=\"refused\"}")
            .await,
        3.0
    );

    // Without a password configured, only the API keys sign in.
    let keys_only = TestServer::start_default().await;
    let refused = login_at(&keys_only.url("/admin"), PASSWORD).await;
    assert_eq!(refused.status, 401);
    assert_eq!(
        login_at(&keys_only.url("/admin"), API_KEY).await.status,
        200
    );
}

#[tokio::test]
async fn every_request_needs_the_session_cookie_and_every_post_its_csrf_token() {
    let server = TestServer::start(config()).await;
    let admin = Admin::sign_in(&server).await;
    let publish = json!({"channel": "chat:1", "data": {"n": 1}});
    let errors_before = server
        .metric("herald_errors_total{code=\"forbidden\"}")
        .await;

    // No cookie, or one that names no session: refused, whatever the route.
    let http = http();
    for path in ["stats", "channels", "users/alice", "samples", "session"] {
        let answer = send(&http, Method::GET, &admin.url(path), &[], None).await;
        assert_eq!(answer.status, 401, "{path}: {}", answer.body);
        assert_eq!(answer.error_code(), "unauthorized");
        let forged = send(
            &http,
            Method::GET,
            &admin.url(path),
            &[("cookie", "herald_admin=forged-session-id")],
            None,
        )
        .await;
        assert_eq!(forged.status, 401, "{path}: {}", forged.body);
    }
    // The API key itself does not open the admin API.
    let bearer = format!("Bearer {API_KEY}");
    let answer = send(
        &http,
        Method::GET,
        &admin.url("stats"),
        &[("authorization", &bearer)],
        None,
    )
    .await;
    assert_eq!(answer.status, 401);

    // A POST without the token, with a forged one, or with another session's.
    let other = Admin::sign_in(&server).await;
    for headers in [
        vec![],
        vec![("x-herald-csrf", "forged")],
        vec![("x-herald-csrf", other.csrf.as_str())],
    ] {
        let answer = admin.post_with("publish", &headers, publish.clone()).await;
        assert_eq!(answer.status, 403, "{headers:?}: {}", answer.body);
        assert_eq!(answer.error_code(), "forbidden");
        assert!(answer.body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("X-Herald-CSRF"));
    }
    // A POST that is not declared JSON (a form could send it), or from another origin.
    let text = send(
        &admin.http,
        Method::POST,
        &admin.url("publish"),
        &[
            ("cookie", &admin.cookie),
            ("x-herald-csrf", &admin.csrf),
            ("content-type", "text/plain"),
        ],
        Some(publish.clone()),
    )
    .await;
    assert_eq!(text.status, 400, "{}", text.body);
    assert!(text.body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("application/json"));
    let cross = admin
        .post_with(
            "publish",
            &[
                ("x-herald-csrf", &admin.csrf),
                ("origin", "https://evil.example"),
            ],
            publish.clone(),
        )
        .await;
    assert_eq!(cross.status, 403, "{}", cross.body);
    assert!(cross.body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("Origin"));
    let same = format!("http://{}", server.addr);
    let allowed = admin
        .post_with(
            "publish",
            &[("x-herald-csrf", &admin.csrf), ("origin", &same)],
            publish.clone(),
        )
        .await;
    assert_eq!(allowed.status, 200, "{}", allowed.body);
    assert_eq!(allowed.body["offset"], 1);
    assert_eq!(allowed.header("cache-control"), "no-store");
    let errors_after = server
        .metric("herald_errors_total{code=\"forbidden\"}")
        .await;
    assert_eq!(errors_after - errors_before, 4.0, "each refusal counted");
}

#[tokio::test]
async fn signing_out_and_idle_expiry_end_the_session() {
    let server = TestServer::start(config()).await;
    let admin = Admin::sign_in(&server).await;
    let session = admin.get("session").await;
    assert_eq!(session.status, 200);
    assert_eq!(session.body["csrf_token"], admin.csrf.as_str());
    assert_eq!(session.body["idle_timeout_s"], 12 * 3600);

    let out = admin.post("logout", json!({})).await;
    assert_eq!(out.status, 200, "{}", out.body);
    let cleared = out.header("set-cookie");
    assert!(cleared.starts_with("herald_admin=;"), "{cleared}");
    assert!(cleared.contains("Max-Age=0"), "{cleared}");
    assert!(cleared.contains("Path=/admin"), "{cleared}");
    let after = admin.get("stats").await;
    assert_eq!(after.status, 401);
    assert!(after.body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("sign in again"));

    let admin = Admin::sign_in(&server).await;
    assert_eq!(admin.get("stats").await.status, 200);
    server
        .app()
        .admin
        .sessions
        .set_idle_timeout(Duration::from_millis(200));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let expired = admin.get("stats").await;
    assert_eq!(expired.status, 401, "{}", expired.body);
    assert_eq!(expired.error_code(), "unauthorized");
}

#[tokio::test]
async fn the_page_is_off_on_a_public_address_unless_enabled_and_off_when_disabled() {
    // The decision itself, for every case, is `Config::admin_enabled` (unit-tested in config.rs);
    // here the router follows it.
    let mut public = TestServer::config();
    public.listen = "0.0.0.0:0".parse().unwrap();
    assert!(!public.admin_enabled());
    let server = TestServer::start(public.clone()).await;
    let url = format!("http://127.0.0.1:{}/admin", server.addr.port());
    for path in ["", "/", "/api/login", "/assets/admin.js"] {
        let off = send(&http(), Method::GET, &format!("{url}{path}"), &[], None).await;
        assert_eq!(off.status, 404, "{path}");
        assert_eq!(off.error_code(), "not_found", "like any unknown path");
    }
    assert_eq!(login_at(&url, API_KEY).await.status, 404);

    public.admin.enabled = Some(true);
    let server = TestServer::start(public).await;
    let url = format!("http://127.0.0.1:{}/admin", server.addr.port());
    let page = send(&http(), Method::GET, &url, &[], None).await;
    assert_eq!(page.status, 200);
    assert_eq!(login_at(&url, API_KEY).await.status, 200);

    let mut disabled = TestServer::config();
    disabled.admin.enabled = Some(false);
    let server = TestServer::start(disabled).await;
    let off = send(&http(), Method::GET, &server.url("/admin"), &[], None).await;
    assert_eq!(off.status, 404);
}

#[tokio::test]
async fn the_page_and_its_files_come_from_the_binary_with_their_security_headers() {
    let server = TestServer::start_default().await;
    let page = send(&http(), Method::GET, &server.url("/admin"), &[], None).await;
    assert_eq!(page.status, 200);
    assert_eq!(page.header("content-type"), "text/html; charset=utf-8");
    assert!(page
        .header("content-security-policy")
        .starts_with("default-src 'self'"));
    assert_eq!(page.header("x-frame-options"), "DENY");
    assert_eq!(page.header("x-content-type-options"), "nosniff");
    let html = page.body.as_str().unwrap();
    assert!(html.contains("src=\"admin/assets/admin.js\""), "relative");
    assert!(!html.contains("<script>"), "no inline script");
    assert!(!html.contains("://"), "nothing from elsewhere");

    let slash = send(&http(), Method::GET, &server.url("/admin/"), &[], None).await;
    assert_eq!(slash.status, 308);
    assert_eq!(slash.header("location"), "../admin");

    for (file, kind) in [
        ("admin.js", "text/javascript"),
        ("admin.css", "text/css"),
        ("icon.svg", "image/svg+xml"),
    ] {
        let asset = send(
            &http(),
            Method::GET,
            &server.url(&format!("/admin/assets/{file}")),
            &[],
            None,
        )
        .await;
        assert_eq!(asset.status, 200, "{file}");
        assert!(asset.header("content-type").starts_with(kind), "{file}");
        assert_eq!(asset.header("x-frame-options"), "DENY");
    }
    let missing = send(
        &http(),
        Method::GET,
        &server.url("/admin/assets/secret.txt"),
        &[],
        None,
    )
    .await;
    assert_eq!(missing.status, 404);
    assert_eq!(missing.error_code(), "not_found");
}

#[tokio::test]
async fn the_admin_api_answers_every_error_with_the_json_error_body() {
    let server = TestServer::start_default().await;
    let admin = Admin::sign_in(&server).await;
    let cases: &[(Answer, u16, &str, &str)] = &[
        (admin.get("nothing-here").await, 404, "not_found", ""),
        (admin.get("login").await, 405, "method_not_allowed", "GET"),
        (
            admin.get("channels?limit=501").await,
            400,
            "bad_request",
            "limit",
        ),
        (
            admin.get("channels?limit=0").await,
            400,
            "bad_request",
            "limit",
        ),
        (
            admin.get("channels?offset=x").await,
            400,
            "bad_request",
            "offset",
        ),
        (
            admin.get("channels/bad%20name/watch").await,
            400,
            "bad_request",
            "channel name",
        ),
        (
            admin.get("channels/nowhere:1/watch").await,
            404,
            "not_found",
            "nowhere",
        ),
        (
            admin.get("channels/chat:1/presence").await,
            403,
            "forbidden",
            "presence",
        ),
        (
            admin.post("publish", json!({"channel": "chat:1"})).await,
            400,
            "bad_request",
            "data",
        ),
        (
            admin
                .post("disconnect", json!({"user": "a", "colour": 1}))
                .await,
            400,
            "bad_request",
            "colour",
        ),
        (
            login_at(&admin.base, "").await,
            401,
            "unauthorized",
            "wrong",
        ),
    ];
    for (answer, status, code, words) in cases {
        assert_eq!(answer.status, *status, "{}", answer.body);
        assert_eq!(answer.error_code(), *code, "{}", answer.body);
        assert_eq!(answer.header("content-type"), "application/json");
        let message = answer.body["error"]["message"].as_str().unwrap();
        assert!(message.contains(words), "{message:?} should name {words}");
    }
    let bad_login = send(
        &http(),
        Method::POST,
        &format!("{}/api/login", admin.base),
        &[("content-type", "application/json")],
        Some(json!({"password": "x"})),
    )
    .await;
    assert_eq!(bad_login.status, 400, "{}", bad_login.body);
    assert!(bad_login.body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("password"));
}

#[tokio::test]
async fn ten_thousand_channels_are_listed_a_page_at_a_time_with_a_prefix_filter() {
    let mut config = TestServer::config();
    config.limits.subscriptions_per_connection = 20_000;
    let server = TestServer::start(config).await;
    let hub = server.app().hub.clone();
    let (holder, _) = hub
        .connect(Identity::new("holder"), Recovery::Live)
        .await
        .unwrap();
    for i in 0..10_000 {
        let channel = herald_core::ChannelName::parse(&format!("feed:{i:04}")).unwrap();
        holder.subscribe(&channel, Recovery::Live).await.unwrap();
    }
    let mut alice = server.connect("alice").await;
    alice.subscribe("feed:1234").await;
    let admin = Admin::sign_in(&server).await;

    let first = admin.get("channels?prefix=feed:").await;
    assert_eq!(first.status, 200, "{}", first.body);
    assert_eq!(first.body["total"], 10_000);
    assert_eq!(first.body["offset"], 0);
    assert_eq!(first.body["limit"], 50);
    let names = |answer: &Answer| -> Vec<String> {
        answer.body["channels"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["channel"].as_str().unwrap().to_string())
            .collect()
    };
    let expected: Vec<String> = (0..50).map(|i| format!("feed:{i:04}")).collect();
    assert_eq!(names(&first), expected);

    let page = admin
        .get("channels?prefix=feed:&offset=9990&limit=500")
        .await;
    let expected: Vec<String> = (9990..10_000).map(|i| format!("feed:{i:04}")).collect();
    assert_eq!(names(&page), expected, "the last page is short");

    let filtered = admin.get("channels?prefix=feed:12&limit=500").await;
    assert_eq!(filtered.body["total"], 100);
    let listed = filtered.body["channels"].as_array().unwrap();
    assert_eq!(listed.len(), 100);
    let busy = listed.iter().find(|c| c["channel"] == "feed:1234").unwrap();
    assert_eq!(busy["subscribers"], 2);
    assert_eq!(listed[0]["subscribers"], 1);

    let everything = admin.get("channels?limit=500&offset=10000").await;
    // Every feed channel, the two personal channels, nothing else.
    assert_eq!(everything.body["total"], 10_002);
    assert_eq!(names(&everything), ["user:alice", "user:holder"]);

    let stats = admin.get("stats").await;
    assert_eq!(stats.body["node"]["channels"], 10_002);
    drop(holder);
}

/// Reads the watch stream until `found` holds for an event's data; returns it.
async fn next_event(
    stream: &mut reqwest::Response,
    buffer: &mut String,
    found: impl Fn(&str, &Value) -> bool,
) -> Value {
    let deadline = tokio::time::Instant::now() + patience();
    loop {
        while let Some(end) = buffer.find("\n\n") {
            let event: String = buffer.drain(..end + 2).collect();
            let name = event
                .lines()
                .find_map(|l| l.strip_prefix("event: "))
                .unwrap_or("message")
                .to_string();
            if let Some(data) = event.lines().find_map(|l| l.strip_prefix("data: ")) {
                let data: Value = serde_json::from_str(data).unwrap();
                if found(&name, &data) {
                    return data;
                }
            }
        }
        let chunk = tokio::time::timeout_at(deadline, stream.chunk())
            .await
            .expect("an event in time")
            .unwrap()
            .expect("the stream is open");
        buffer.push_str(std::str::from_utf8(&chunk).unwrap());
    }
}

#[tokio::test]
async fn watching_a_channel_shows_its_traffic_and_changes_no_figure_nor_presence() {
    let server = TestServer::start_default().await;
    let admin = Admin::sign_in(&server).await;
    let mut alice = server.connect("alice").await;
    alice.subscribe("lobby:1").await;

    let mut stream = admin
        .http
        .get(admin.url("channels/lobby:1/watch"))
        .header("cookie", &admin.cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status(), 200);
    assert_eq!(
        stream.headers()["content-type"],
        HeaderValue::from_static("text/event-stream")
    );
    let mut buffer = String::new();
    let watching = next_event(&mut stream, &mut buffer, |name, _| name == "watching").await;
    assert_eq!(watching["channel"], "lobby:1");

    let stats = admin.get("stats").await.body;
    assert_eq!(
        stats["node"]["connections"], 1,
        "the watch is no connection"
    );
    assert_eq!(stats["node"]["users"], 1);
    let presence = admin.get("channels/lobby:1/presence").await.body;
    assert_eq!(presence["connections"], 1, "nor is it present: {presence}");
    let listed = admin.get("channels?prefix=lobby:").await.body;
    assert_eq!(listed["channels"][0]["subscribers"], 1);
    alice.assert_silent(QUIET).await; // no join for the watch

    let published = admin
        .post(
            "publish",
            json!({"channel": "lobby:1", "event": "note", "data": {"text": "from the page"}}),
        )
        .await;
    assert_eq!(published.status, 200, "{}", published.body);
    let seen = next_event(&mut stream, &mut buffer, |_, data| {
        data["type"] == "message"
    })
    .await;
    assert_eq!(seen["data"]["text"], "from the page");
    assert_eq!(seen["event"], "note");
    assert_eq!(alice.next_message().await["data"]["text"], "from the page");

    let mut bob = server.connect("bob").await;
    bob.subscribe("lobby:1").await;
    let join = next_event(&mut stream, &mut buffer, |_, data| data["type"] == "join").await;
    assert_eq!(join["user"], "bob");

    // A channel nobody here subscribes to can be watched too.
    let mut quiet = admin
        .http
        .get(admin.url("channels/feed:empty/watch"))
        .header("cookie", &admin.cookie)
        .send()
        .await
        .unwrap();
    let mut quiet_buffer = String::new();
    next_event(&mut quiet, &mut quiet_buffer, |name, _| name == "watching").await;
    server.publish("feed:empty", json!({"n": 1})).await;
    let seen = next_event(&mut quiet, &mut quiet_buffer, |_, data| {
        data["type"] == "message"
    })
    .await;
    assert_eq!(seen["data"]["n"], 1);
    let listed = admin.get("channels?prefix=feed:").await.body;
    assert_eq!(listed["total"], 0, "a watched channel is not listed");

    // The stream needs a session like every other route.
    let refused = send(
        &http(),
        Method::GET,
        &admin.url("channels/lobby:1/watch"),
        &[],
        None,
    )
    .await;
    assert_eq!(refused.status, 401);
}

#[tokio::test]
async fn the_user_look_up_shows_connections_and_channels_and_disconnect_closes_them() {
    let server = TestServer::start_default().await;
    let admin = Admin::sign_in(&server).await;
    let mut alice = server.connect("alice").await;
    alice.subscribe("chat:1").await;

    let user = admin.get("users/alice").await;
    assert_eq!(user.status, 200, "{}", user.body);
    assert_eq!(user.body["online"], true);
    assert_eq!(user.body["connections"], 1);
    assert_eq!(user.body["node"], server.app().node_name.as_str());
    let here = &user.body["here"][0];
    assert_eq!(here["client"], alice.client_id.as_str());
    assert_eq!(here["channels"], json!(["chat:1", "user:alice"]));

    let nobody = admin.get("users/nobody").await;
    assert_eq!(nobody.body["online"], false);
    assert_eq!(nobody.body["here"], json!([]));

    let done = admin
        .post("disconnect", json!({"user": "alice", "reconnect": false}))
        .await;
    assert_eq!(done.status, 200, "{}", done.body);
    let closed = alice.closed().await;
    assert_closed_with(&closed, 4013);
    assert_eq!(closed.disconnect.unwrap()["reconnect"], false);
    eventually("alice is offline", async || {
        admin.get("users/alice").await.body["online"] == false
    })
    .await;
}

#[tokio::test]
async fn the_figures_are_sampled_for_the_chart() {
    let server = TestServer::start_default().await;
    let admin = Admin::sign_in(&server).await;
    let _alice = server.connect("alice").await;
    let samples = eventually("two samples", async || {
        let body = admin.get("samples").await.body;
        let samples = body["samples"].as_array().cloned().unwrap_or_default();
        (samples.len() >= 2).then_some(samples)
    })
    .await;
    let last = samples.last().unwrap();
    assert_eq!(last["connections"], 1);
    assert!(last["messages_in_per_s"].is_number());
    let at = last["at"].as_u64().unwrap();
    let after = admin.get(&format!("samples?after={at}")).await.body;
    assert!(after["samples"]
        .as_array()
        .unwrap()
        .iter()
        .all(|s| s["at"].as_u64().unwrap() > at));
    assert_eq!(after["every_s"], 2);
}

#[tokio::test]
async fn nested_under_a_prefix_the_page_and_its_cookie_follow_the_prefix() {
    let server = TestServer::start_default().await;
    let app = server.app();
    let service = axum::Router::new().nest("/api/v1/realtime", herald::server::router(app));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move { axum::serve(listener, service).await });
    let base = format!("http://{addr}/api/v1/realtime/admin");

    let page = send(&http(), Method::GET, &base, &[], None).await;
    assert_eq!(page.status, 200);
    let signed_in = login_at(&base, API_KEY).await;
    assert_eq!(signed_in.status, 200, "{}", signed_in.body);
    assert!(signed_in
        .header("set-cookie")
        .contains("Path=/api/v1/realtime/admin;"));
    let admin = Admin::sign_in_at(&base, API_KEY).await;
    assert_eq!(admin.get("stats").await.status, 200);
    let out = admin.post("logout", json!({})).await;
    assert!(out
        .header("set-cookie")
        .contains("Path=/api/v1/realtime/admin;"));
    task.abort();
}
