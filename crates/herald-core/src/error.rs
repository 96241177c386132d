//! The error kinds a client or a backend can be told about.
//!
//! Every refusal in Herald is one [`ErrorCode`]; this module maps each code, once, to its wire name
//! and its HTTP status. Close codes for the WebSocket live beside them in [`CloseCode`], because a
//! few errors end a connection instead of being answered. Nothing else in the project invents codes.

use std::fmt;

/// The error codes of the native protocol and the HTTP API (`docs/protocol.md` lists them).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// The request or frame is malformed or names something invalid (400).
    BadRequest,
    /// No valid credentials (401).
    Unauthorized,
    /// Credentials valid, but not for this (403).
    Forbidden,
    /// No such namespace, channel subscription or route (404).
    NotFound,
    /// HTTP only: the path exists, the method does not (the `Allow` header lists those that do).
    MethodNotAllowed,
    /// Too many requests or commands (429).
    RateLimited,
    /// A body or frame over its size limit (413).
    TooLarge,
    /// A per-connection or per-user limit was reached (409).
    LimitExceeded,
    /// The engine, the store or the backend cannot answer now; retry later (503).
    Unavailable,
    /// A bug on the server's side (500).
    Internal,
}

impl ErrorCode {
    /// Every code, in a fixed order (metrics pre-register one series per code).
    pub const ALL: [ErrorCode; 10] = [
        ErrorCode::BadRequest,
        ErrorCode::Unauthorized,
        ErrorCode::Forbidden,
        ErrorCode::NotFound,
        ErrorCode::MethodNotAllowed,
        ErrorCode::RateLimited,
        ErrorCode::TooLarge,
        ErrorCode::LimitExceeded,
        ErrorCode::Unavailable,
        ErrorCode::Internal,
    ];

    /// The code's name on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::NotFound => "not_found",
            ErrorCode::MethodNotAllowed => "method_not_allowed",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::TooLarge => "too_large",
            ErrorCode::LimitExceeded => "limit_exceeded",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::Internal => "internal",
        }
    }

    /// The HTTP status the server API answers with for this code.
    pub fn http_status(self) -> u16 {
        match self {
            ErrorCode::BadRequest => 400,
            ErrorCode::Unauthorized => 401,
            ErrorCode::Forbidden => 403,
            ErrorCode::NotFound => 404,
            ErrorCode::MethodNotAllowed => 405,
            ErrorCode::RateLimited => 429,
            ErrorCode::TooLarge => 413,
            ErrorCode::LimitExceeded => 409,
            ErrorCode::Unavailable => 503,
            ErrorCode::Internal => 500,
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A refusal: a code plus a message meant for the developer reading it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct HeraldError {
    /// What kind of error.
    pub code: ErrorCode,
    /// What was wrong, for a person to read (never a secret).
    pub message: String,
}

impl HeraldError {
    /// An error of `code` saying `message`.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        HeraldError {
            code,
            message: message.into(),
        }
    }
    /// A `bad_request` error.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::BadRequest, message)
    }
    /// A `forbidden` error.
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Forbidden, message)
    }
    /// A `not_found` error.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::NotFound, message)
    }
    /// An `internal` error.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Internal, message)
    }
    /// An `unavailable` error.
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Unavailable, message)
    }
}

/// Why the server ends a connection. Each reason has one WebSocket close code and one label for
/// the `disconnects` metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CloseCode {
    /// No valid token (missing, malformed, forged, wrong algorithm, wrong audience or issuer).
    Unauthorized,
    /// The token expired and no `refresh` arrived in time.
    TokenExpired,
    /// The client kept sending after being told `rate_limited`.
    RateLimited,
    /// A frame larger than `limits.max_frame_bytes`.
    FrameTooLarge,
    /// The outgoing queue went past `limits.outbound_queue_bytes`.
    SlowConsumer,
    /// The user already holds `limits.connections_per_user` connections on this node.
    TooManyConnections,
    /// No pong or frame for two heartbeat intervals.
    IdleTimeout,
    /// `POST /api/disconnect`.
    DisconnectedByApi,
    /// Graceful shutdown.
    ServerRestarting,
}

impl CloseCode {
    /// Every close code, for metrics that list each one.
    pub const ALL: [CloseCode; 9] = [
        CloseCode::Unauthorized,
        CloseCode::TokenExpired,
        CloseCode::RateLimited,
        CloseCode::FrameTooLarge,
        CloseCode::SlowConsumer,
        CloseCode::TooManyConnections,
        CloseCode::IdleTimeout,
        CloseCode::DisconnectedByApi,
        CloseCode::ServerRestarting,
    ];

    /// The WebSocket close code.
    pub fn code(self) -> u16 {
        match self {
            CloseCode::Unauthorized => 4001,
            CloseCode::TokenExpired => 4002,
            CloseCode::RateLimited => 4008,
            CloseCode::FrameTooLarge => 4009,
            CloseCode::SlowConsumer => 4010,
            CloseCode::TooManyConnections => 4011,
            CloseCode::IdleTimeout => 4012,
            CloseCode::DisconnectedByApi => 4013,
            CloseCode::ServerRestarting => 1012,
        }
    }

    /// The label used in metrics and logs.
    pub fn label(self) -> &'static str {
        match self {
            CloseCode::Unauthorized => "unauthorized",
            CloseCode::TokenExpired => "token_expired",
            CloseCode::RateLimited => "rate_limited",
            CloseCode::FrameTooLarge => "frame_too_large",
            CloseCode::SlowConsumer => "slow_consumer",
            CloseCode::TooManyConnections => "too_many_connections",
            CloseCode::IdleTimeout => "idle_timeout",
            CloseCode::DisconnectedByApi => "disconnected_by_api",
            CloseCode::ServerRestarting => "server_restarting",
        }
    }

    /// Whether a client should reconnect by itself after this close, unless told otherwise.
    pub fn reconnect(self) -> bool {
        match self {
            CloseCode::Unauthorized
            | CloseCode::FrameTooLarge
            | CloseCode::TooManyConnections
            | CloseCode::RateLimited => false,
            CloseCode::TokenExpired
            | CloseCode::SlowConsumer
            | CloseCode::IdleTimeout
            | CloseCode::DisconnectedByApi
            | CloseCode::ServerRestarting => true,
        }
    }
}

/// A decision to end a connection: the code, a human reason, and whether to reconnect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Disconnect {
    /// The close code.
    pub code: CloseCode,
    /// Why, for a person to read.
    pub reason: String,
    /// Whether the client should reconnect (sent in the `disconnect` frame).
    pub reconnect: bool,
}

impl Disconnect {
    /// A disconnect with `code`'s own reconnect advice.
    pub fn new(code: CloseCode, reason: impl Into<String>) -> Self {
        Disconnect {
            code,
            reason: reason.into(),
            reconnect: code.reconnect(),
        }
    }
}
