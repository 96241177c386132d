//! The authentication matrix and channel permissions: every bad token is closed with 4001 and gets
//! no subscription; valid tokens work through each of the three ways to present them.

use std::path::PathBuf;
use std::time::Duration;

use base64::Engine as _;
use herald::auth::Claims;
use herald::config::{Config, JwtAlgorithm};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::json;

use crate::common::{assert_closed_with, closed, send_json, Client, TestServer, QUIET, SECRET};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn now() -> u64 {
    herald_core::publication::now_millis() / 1000
}

fn claims(user: &str, exp: u64) -> Claims {
    Claims {
        sub: user.into(),
        exp,
        iat: None,
        channels: None,
        aud: None,
        iss: None,
    }
}

fn sign(alg: Algorithm, key: &EncodingKey, claims: &Claims) -> String {
    jsonwebtoken::encode(&Header::new(alg), claims, key).unwrap()
}

fn hs(secret: &str) -> EncodingKey {
    EncodingKey::from_secret(secret.as_bytes())
}

fn unsigned_token(claims: &Claims) -> String {
    let b64 = |v: &serde_json::Value| {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
    };
    format!(
        "{}.{}.",
        b64(&json!({"alg": "none", "typ": "JWT"})),
        b64(&serde_json::to_value(claims).unwrap())
    )
}

/// Opens a connection with `token` in the header and asserts it is closed with 4001.
async fn assert_refused(server: &TestServer, token: &str, case: &str) {
    let mut socket = server.open_with_header(token).await;
    let closed = closed(&mut socket).await;
    assert_eq!(closed.code, Some(4001), "{case}: {closed:?}");
    let disconnect = closed.disconnect.expect("disconnect frame");
    assert_eq!(disconnect["reconnect"], false, "{case}");
}

async fn assert_nobody_subscribed(server: &TestServer) {
    let (_, channels) = server.get("/api/channels").await;
    assert_eq!(channels["channels"], json!([]));
    let (_, stats) = server.get("/api/stats").await;
    assert_eq!(stats["node"]["connections"], 0);
}

#[tokio::test]
async fn bad_hs256_tokens_are_closed_with_4001() {
    let server = TestServer::start_default().await;
    let expired = claims("alice", now() - 120);
    let valid = claims("alice", now() + 3600);
    let cases = [
        ("malformed", "not-a-jwt".to_string()),
        ("garbage segments", "aaa.bbb.ccc".to_string()),
        (
            "wrong signature",
            sign(
                Algorithm::HS256,
                &hs("another-secret-of-enough-length"),
                &valid,
            ),
        ),
        ("expired", sign(Algorithm::HS256, &hs(SECRET), &expired)),
        ("alg none", unsigned_token(&valid)),
        (
            "other HMAC algorithm",
            sign(Algorithm::HS384, &hs(SECRET), &valid),
        ),
        (
            "empty sub",
            sign(Algorithm::HS256, &hs(SECRET), &claims("", now() + 3600)),
        ),
    ];
    for (case, token) in &cases {
        assert_refused(&server, token, case).await;
    }
    let missing_exp = {
        let header = Header::new(Algorithm::HS256);
        jsonwebtoken::encode(&header, &json!({"sub": "alice"}), &hs(SECRET)).unwrap()
    };
    assert_refused(&server, &missing_exp, "no exp").await;
    assert_nobody_subscribed(&server).await;
    server
        .assert_metric_at_least("herald_disconnects_total{reason=\"unauthorized\"}", 8.0)
        .await;
}

#[tokio::test]
async fn no_token_and_no_auth_frame_is_closed_after_the_handshake_timeout() {
    let mut config = TestServer::config();
    config.limits.handshake_timeout = Duration::from_millis(300);
    let server = TestServer::start(config).await;
    let mut socket = server.open_bare().await;
    assert_eq!(closed(&mut socket).await.code, Some(4001));

    // A first frame that is not `auth` is refused at once.
    let mut socket = server.open_bare().await;
    let subscribe = json!({"type": "subscribe", "channel": "chat:1"});
    send_json(&mut socket, subscribe).await;
    assert_eq!(closed(&mut socket).await.code, Some(4001));
    assert_nobody_subscribed(&server).await;
}

#[tokio::test]
async fn a_token_is_accepted_from_the_header_the_query_and_the_auth_frame() {
    let server = TestServer::start_default().await;
    let header = server.connect("alice").await;
    assert_eq!(header.user, "alice");

    let url = format!("{}?token={}", server.ws_url(), server.token("bob"));
    let (socket, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    assert_eq!(Client::established(socket).await.user, "bob");

    let mut socket = server.open_bare().await;
    let auth = json!({"type": "auth", "token": server.token("carol")});
    send_json(&mut socket, auth).await;
    let mut carol = Client::established(socket).await;
    assert_eq!(carol.user, "carol");
    server.publish("user:carol", json!("personal")).await;
    assert_eq!(carol.next_message().await["data"], "personal");

    let mut socket = server.open_bare().await;
    send_json(&mut socket, json!({"type": "auth", "token": "nope"})).await;
    assert_eq!(closed(&mut socket).await.code, Some(4001));
}

#[tokio::test]
async fn audience_and_issuer_are_enforced_when_configured() {
    let mut config = TestServer::config();
    config.auth.jwt_audience = Some("vendhub".into());
    config.auth.jwt_issuer = Some("https://auth.example".into());
    let server = TestServer::start(config).await;
    let with = |aud: Option<&str>, iss: Option<&str>| {
        let mut c = claims("alice", now() + 3600);
        c.aud = aud.map(|a| herald::auth::Audience::One(a.into()));
        c.iss = iss.map(String::from);
        sign(Algorithm::HS256, &hs(SECRET), &c)
    };
    assert_refused(
        &server,
        &with(Some("other"), Some("https://auth.example")),
        "wrong aud",
    )
    .await;
    assert_refused(
        &server,
        &with(None, Some("https://auth.example")),
        "missing aud",
    )
    .await;
    assert_refused(
        &server,
        &with(Some("vendhub"), Some("https://evil.example")),
        "wrong iss",
    )
    .await;
    assert_refused(&server, &with(Some("vendhub"), None), "missing iss").await;
    let mut several = claims("alice", now() + 3600);
    several.aud = Some(herald::auth::Audience::Many(vec![
        "other".into(),
        "vendhub".into(),
    ]));
    several.iss = Some("https://auth.example".into());
    let token = sign(Algorithm::HS256, &hs(SECRET), &several);
    assert_eq!(
        server.connect_with_token(&token).await.user,
        "alice",
        "an aud array that includes ours"
    );
    let ok = server
        .connect_with_token(&with(Some("vendhub"), Some("https://auth.example")))
        .await;
    assert_eq!(ok.user, "alice");
}

async fn asymmetric_server(alg: JwtAlgorithm, public: &str) -> TestServer {
    let mut config: Config = TestServer::config();
    config.auth.jwt_algorithm = alg;
    config.auth.jwt_secret = None;
    config.auth.jwt_public_key_file = Some(fixture(public));
    TestServer::start(config).await
}

#[tokio::test]
async fn rs256_accepts_its_key_and_refuses_algorithm_confusion() {
    let server = asymmetric_server(JwtAlgorithm::RS256, "rs256-public.pem").await;
    let private = std::fs::read(fixture("rs256-private.pem")).unwrap();
    let key = EncodingKey::from_rsa_pem(&private).unwrap();
    let valid = claims("alice", now() + 3600);
    let token = sign(Algorithm::RS256, &key, &valid);
    assert_eq!(server.connect_with_token(&token).await.user, "alice");

    // HS256 signed with the public key as the secret: the classic confusion attack.
    let public = std::fs::read_to_string(fixture("rs256-public.pem")).unwrap();
    assert_refused(
        &server,
        &sign(Algorithm::HS256, &hs(&public), &valid),
        "hs256 with public key",
    )
    .await;
    assert_refused(
        &server,
        &sign(Algorithm::HS256, &hs(SECRET), &valid),
        "hs256",
    )
    .await;
    assert_refused(&server, &unsigned_token(&valid), "alg none").await;
    let expired = sign(Algorithm::RS256, &key, &claims("alice", now() - 120));
    assert_refused(&server, &expired, "expired rs256").await;
}

#[tokio::test]
async fn es256_accepts_its_key_and_refuses_others() {
    let server = asymmetric_server(JwtAlgorithm::ES256, "es256-public.pem").await;
    let private = std::fs::read(fixture("es256-private.pem")).unwrap();
    let key = EncodingKey::from_ec_pem(&private).unwrap();
    let valid = claims("alice", now() + 3600);
    assert_eq!(
        server
            .connect_with_token(&sign(Algorithm::ES256, &key, &valid))
            .await
            .user,
        "alice"
    );
    let rsa =
        EncodingKey::from_rsa_pem(&std::fs::read(fixture("rs256-private.pem")).unwrap()).unwrap();
    assert_refused(
        &server,
        &sign(Algorithm::RS256, &rsa, &valid),
        "rs256 on es256",
    )
    .await;
}

#[tokio::test]
async fn permissions_follow_the_namespace_policies() {
    let server = TestServer::start_default().await;
    let token = server.token_for_channels("alice", &["site:7*", "site:plant-2"]);
    let mut alice = server.connect_with_token(&token).await;

    for (channel, expected) in [
        ("user:alice", "subscribed"),
        ("user:bob", "forbidden"),
        ("notes:alice", "subscribed"),
        ("notes:bob", "forbidden"),
        ("site:7", "subscribed"),
        ("site:71", "subscribed"),
        ("site:plant-2", "subscribed"),
        ("site:8", "forbidden"),
        ("site:plant-3", "forbidden"),
        ("chat:1", "subscribed"),
        ("unknown:1", "not_found"),
        ("nonamespace", "not_found"),
    ] {
        let reply = alice.subscribe(channel).await;
        let outcome = if reply["type"] == "subscribed" {
            "subscribed".to_string()
        } else {
            reply["code"].as_str().unwrap().to_string()
        };
        assert_eq!(outcome, expected, "{channel}: {reply}");
    }

    // A token without a channels claim gets no claims channel.
    let mut bob = server.connect("bob").await;
    assert_eq!(bob.subscribe("site:7").await["code"], "forbidden");

    // Nothing published to a refused channel reaches the refused client.
    server.publish("user:bob", json!("for bob")).await;
    server.publish("site:8", json!("site 8")).await;
    alice.assert_silent(QUIET).await;
    assert_eq!(bob.next_message().await["data"], "for bob");
}

#[tokio::test]
async fn an_expired_token_closes_the_connection_with_4002_unless_refreshed() {
    let mut config = TestServer::config();
    config.auth.jwt_leeway = Duration::ZERO;
    let server = TestServer::start(config).await;
    let short = |user: &str, seconds: u64| {
        server.token_with(Claims::new(
            user,
            None,
            Duration::from_secs(seconds),
            &server.config.auth,
        ))
    };

    let mut expiring = server.connect_with_token(&short("alice", 1)).await;
    let closed = expiring.closed().await;
    assert_closed_with(&closed, 4002);
    assert_eq!(closed.disconnect.unwrap()["reconnect"], true);

    let mut refreshed = server.connect_with_token(&short("bob", 1)).await;
    let other_user = refreshed
        .request(json!({"type": "refresh", "token": short("mallory", 3600)}))
        .await;
    assert_eq!(other_user["code"], "forbidden");
    let forged = refreshed
        .request(json!({"type": "refresh", "token": "bad.token.here"}))
        .await;
    assert_eq!(forged["code"], "unauthorized");
    let reply = refreshed
        .request(json!({"type": "refresh", "token": short("bob", 3600)}))
        .await;
    assert_eq!(reply["type"], "reply", "{reply}");
    assert!(reply["result"]["expires_at"].as_u64().unwrap() > now() + 3000);
    refreshed.assert_silent(Duration::from_millis(2200)).await;
    server.publish("user:bob", json!("still connected")).await;
    assert_eq!(refreshed.next_message().await["data"], "still connected");
}

#[tokio::test]
async fn expiry_is_at_exp_plus_the_configured_leeway_and_refresh_moves_it() {
    let mut config = TestServer::config();
    config.auth.jwt_leeway = Duration::from_secs(1);
    let server = TestServer::start(config).await;
    let now_ms = herald_core::publication::now_millis;

    // exp one second ahead: the close comes at exp + 1 s of leeway, not before.
    let exp = now() + 1;
    let token = server.token_with(claims("alice", exp));
    let socket = server.open_with_header(&token).await;
    let mut alice = Client::established(socket).await;
    assert_eq!(alice.hello["expires_at"], exp);
    let closed = alice.closed().await;
    let at = now_ms();
    assert_closed_with(&closed, 4002);
    let due = exp * 1000 + 1000;
    assert!(
        at + 100 >= due && at <= due + 1000,
        "closed at {at}, due at {due}"
    );

    // A refresh to a later exp moves the close there; the reply and the deadline agree.
    let token = server.token_with(claims("bob", now() + 1));
    let socket = server.open_with_header(&token).await;
    let mut bob = Client::established(socket).await;
    let later = now() + 2;
    let reply = bob
        .request(json!({"type": "refresh", "token": server.token_with(claims("bob", later))}))
        .await;
    assert_eq!(reply["result"]["expires_at"], later);
    let closed = bob.closed().await;
    let at = now_ms();
    assert_closed_with(&closed, 4002);
    let due = later * 1000 + 1000;
    assert!(
        at + 100 >= due && at <= due + 1000,
        "closed at {at}, due at {due}"
    );
}

#[tokio::test]
async fn wrong_api_keys_are_refused() {
    let server = TestServer::start_default().await;
    let body = Some(json!({"channel": "chat:1", "data": 1}).to_string());
    for key in [None, Some("wrong-key-0123456789"), Some("")] {
        let (status, error) = server
            .request(reqwest::Method::POST, "/api/publish", key, body.clone())
            .await;
        assert_eq!(status, 401, "{key:?}");
        assert_eq!(error["error"]["code"], "unauthorized");
    }
    let (status, _) = server
        .request(reqwest::Method::GET, "/api/stats", Some(SECRET), None)
        .await;
    assert_eq!(status, 401, "a JWT secret is not an API key");
    server
        .assert_metric_at_least("herald_errors_total{code=\"unauthorized\"}", 4.0)
        .await;
}
