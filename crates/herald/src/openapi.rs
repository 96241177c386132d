//! The OpenAPI 3.1 document of the server's HTTP surface, served at `GET /api/openapi.json`.
//!
//! Nothing here lists a route or spells a body. Each handler carries its own `#[utoipa::path]`
//! (method, path, parameters, answers), the bodies are the named types of
//! `herald_core::protocol` and [`crate::api`] deriving `ToSchema`, and the router is built from
//! the same `routes!` entries that put each operation into the document
//! ([`crate::server::routes`]). A route cannot be served without being described, and the
//! description cannot name a body the handler does not write.
//!
//! This module adds what no handler knows: the document's title and version, the two ways to
//! authenticate (an API key for `/api`, a client's JWT for `/ws` and `/sse`), and the error
//! answers that many routes share.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use herald_core::protocol::{ErrorDetail, HttpError};
use herald_core::ErrorCode;
use utoipa::openapi::security::{ApiKey, ApiKeyValue, Http, HttpAuthScheme, SecurityScheme};
use utoipa::openapi::{ContentBuilder, Ref, RefOr, Response, ResponseBuilder};
use utoipa::{IntoResponses, OpenApi};

/// The name of the API-key security scheme in the document.
pub const API_KEY: &str = "api_key";
/// The name of the client-token security scheme in the document.
pub const CLIENT_TOKEN: &str = "client_token";

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Herald",
        description = "Herald's HTTP API: publish to channels, manage users' connections, read \
                       history, presence and figures (`/api`, with an API key), and the client \
                       endpoints (`/ws`, `/sse`, with a client's JWT). Every error is \
                       `{\"error\":{\"code\",\"message\"}}` with the status its code implies.",
        license(name = "MIT OR Apache-2.0"),
    ),
    components(schemas(HttpError, ErrorDetail, ErrorCode)),
    modifiers(&Security),
    tags(
        (name = "publish", description = "Publications from the backend"),
        (name = "users", description = "Users' connections and subscriptions"),
        (name = "channels", description = "Channels, their history and presence"),
        (name = "server", description = "Figures, health, readiness, metrics, this document"),
        (name = "clients", description = "Where clients connect"),
        (name = "admin", description = "The admin page and the API it calls (docs/admin.md); served where `[admin]` and the listen address enable the page. Sign in with `POST /admin/api/login`; the session is a cookie, and every other `POST` carries the sign-in's CSRF token in `X-Herald-CSRF`."),
    )
)]
struct Base;

struct Security;

impl utoipa::Modify for Security {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            API_KEY,
            SecurityScheme::Http(
                utoipa::openapi::security::HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "One of `[api] keys`, as `Authorization: Bearer <api key>`.",
                    ))
                    .build(),
            ),
        );
        let mut jwt = Http::new(HttpAuthScheme::Bearer);
        jwt.bearer_format = Some("JWT".into());
        jwt.description = Some(
            "A client's JWT, as `Authorization: Bearer <jwt>` or `?token=` (WebSocket clients \
             may also send it in their first frame)."
                .into(),
        );
        components.add_security_scheme(CLIENT_TOKEN, SecurityScheme::Http(jwt));
        components.add_security_scheme(
            "admin_session",
            SecurityScheme::ApiKey(ApiKey::Cookie(ApiKeyValue::with_description(
                crate::admin::COOKIE,
                "The admin page's session, set by `POST /admin/api/login`.",
            ))),
        );
        components.add_security_scheme(
            "admin_csrf",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(
                "X-Herald-CSRF",
                "The `csrf_token` of the sign-in's answer, on every `POST` but the sign-in.",
            ))),
        );
    }
}

/// The document's frame: everything but the paths, which the routes bring.
pub fn base() -> utoipa::openapi::OpenApi {
    let mut doc = Base::openapi();
    doc.info.version = env!("CARGO_PKG_VERSION").into();
    doc
}

/// The whole document as JSON, made once.
pub fn document_json() -> &'static str {
    static JSON: OnceLock<String> = OnceLock::new();
    JSON.get_or_init(|| {
        crate::server::openapi()
            .to_json()
            .unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
    })
}

/// The error answers named by `codes`, each the JSON error body.
fn error_responses(codes: &[(ErrorCode, &str)]) -> BTreeMap<String, RefOr<Response>> {
    codes
        .iter()
        .map(|(code, when)| {
            let content = ContentBuilder::new()
                .schema(Some(Ref::from_schema_name("HttpError")))
                .build();
            let response = ResponseBuilder::new()
                .description(format!("`{}`: {when}", code.as_str()))
                .content("application/json", content)
                .build();
            (code.http_status().to_string(), RefOr::T(response))
        })
        .collect()
}

const BAD_REQUEST: (ErrorCode, &str) = (
    ErrorCode::BadRequest,
    "a parameter or the body does not parse, or names an invalid channel",
);
const UNAUTHORIZED: (ErrorCode, &str) = (
    ErrorCode::Unauthorized,
    "no API key, or not one of `[api] keys`",
);
const FORBIDDEN: (ErrorCode, &str) = (
    ErrorCode::Forbidden,
    "the channel's namespace does not allow this",
);
const NOT_FOUND: (ErrorCode, &str) = (ErrorCode::NotFound, "no namespace has this channel");
const METHOD: (ErrorCode, &str) = (
    ErrorCode::MethodNotAllowed,
    "the path does not take this method; `Allow` lists those it does",
);
const TOO_LARGE: (ErrorCode, &str) = (
    ErrorCode::TooLarge,
    "the body is over `limits.max_api_body_bytes`, or `data` over `limits.max_frame_bytes`",
);
const UNAVAILABLE: (ErrorCode, &str) = (
    ErrorCode::Unavailable,
    "the engine cannot answer now; retry later",
);

/// The errors of an `/api` route that writes (publish, broadcast, batch, disconnect, unsubscribe).
pub struct WriteErrors;

impl IntoResponses for WriteErrors {
    fn responses() -> BTreeMap<String, RefOr<Response>> {
        error_responses(&[
            BAD_REQUEST,
            UNAUTHORIZED,
            FORBIDDEN,
            NOT_FOUND,
            METHOD,
            TOO_LARGE,
            UNAVAILABLE,
        ])
    }
}

/// The errors of an `/api` route that reads a channel (history, presence).
pub struct ChannelErrors;

impl IntoResponses for ChannelErrors {
    fn responses() -> BTreeMap<String, RefOr<Response>> {
        error_responses(&[
            BAD_REQUEST,
            UNAUTHORIZED,
            FORBIDDEN,
            NOT_FOUND,
            METHOD,
            UNAVAILABLE,
        ])
    }
}

/// The errors of an `/api` route that reads the node or a user (channels, users, stats).
pub struct ReadErrors;

impl IntoResponses for ReadErrors {
    fn responses() -> BTreeMap<String, RefOr<Response>> {
        error_responses(&[BAD_REQUEST, UNAUTHORIZED, METHOD, UNAVAILABLE])
    }
}

/// The errors of `/api/openapi.json`.
pub struct KeyErrors;

impl IntoResponses for KeyErrors {
    fn responses() -> BTreeMap<String, RefOr<Response>> {
        error_responses(&[UNAUTHORIZED, METHOD])
    }
}

/// The refusals of a client endpoint (`/ws`, `/sse`) before it opens.
pub struct ConnectErrors;

impl IntoResponses for ConnectErrors {
    fn responses() -> BTreeMap<String, RefOr<Response>> {
        error_responses(&[
            (
                ErrorCode::BadRequest,
                "not a valid handshake, or a parameter does not parse",
            ),
            (
                ErrorCode::Unauthorized,
                "no token, or one that is not valid (or the connect hook refused)",
            ),
            (
                ErrorCode::Forbidden,
                "the `Origin` is not in `allowed_origins`, or a channel is not allowed",
            ),
            (
                ErrorCode::NotFound,
                "a requested channel is in no namespace",
            ),
            METHOD,
            (
                ErrorCode::LimitExceeded,
                "the user has `limits.connections_per_user` connections, or a connection has \
                 too many subscriptions",
            ),
            (
                ErrorCode::RateLimited,
                "over `limits.connections_per_ip_per_second`",
            ),
            (
                ErrorCode::Unavailable,
                "the node is full (`limits.max_connections`), shutting down, or cannot reach \
                 the engine or the connect hook",
            ),
        ])
    }
}

/// The errors of `/ready`.
pub struct ReadyErrors;

impl IntoResponses for ReadyErrors {
    fn responses() -> BTreeMap<String, RefOr<Response>> {
        error_responses(&[
            METHOD,
            (
                ErrorCode::Unavailable,
                "the node is shutting down or its engine does not answer",
            ),
        ])
    }
}

/// The errors of `/health` and `/metrics`.
pub struct MethodErrors;

impl IntoResponses for MethodErrors {
    fn responses() -> BTreeMap<String, RefOr<Response>> {
        error_responses(&[METHOD])
    }
}

/// The errors of the admin page's sign-in.
pub struct LoginErrors;

impl IntoResponses for LoginErrors {
    fn responses() -> BTreeMap<String, RefOr<Response>> {
        error_responses(&[
            (
                ErrorCode::BadRequest,
                "the body is not JSON sent as `application/json`",
            ),
            (
                ErrorCode::Unauthorized,
                "not an API key nor the admin password",
            ),
            (
                ErrorCode::Forbidden,
                "a browser sent it from another origin than the page's",
            ),
            METHOD,
            TOO_LARGE,
        ])
    }
}

/// The errors of the admin page's API once signed in.
pub struct AdminErrors;

impl IntoResponses for AdminErrors {
    fn responses() -> BTreeMap<String, RefOr<Response>> {
        error_responses(&[
            BAD_REQUEST,
            (
                ErrorCode::Unauthorized,
                "no session, or it has ended: sign in again",
            ),
            (
                ErrorCode::Forbidden,
                "a `POST` without the session's CSRF token or from another origin, or the \
                 channel's namespace does not allow this",
            ),
            NOT_FOUND,
            METHOD,
            TOO_LARGE,
            (
                ErrorCode::LimitExceeded,
                "too many channels are watched on this node",
            ),
            UNAVAILABLE,
        ])
    }
}

/// The errors of the admin page's files.
pub struct AssetErrors;

impl IntoResponses for AssetErrors {
    fn responses() -> BTreeMap<String, RefOr<Response>> {
        error_responses(&[(ErrorCode::NotFound, "no such file"), METHOD])
    }
}
