//! Client authentication: JWT verification with the algorithm pinned by configuration, and token
//! signing for `herald token` and the development server.
//!
//! A token proves a user (`sub`), an expiry (`exp`, required) and optionally the channels the user
//! may join (`channels`, globs allowed). The algorithm in a token's header is never trusted: only
//! the configured one is accepted, so `alg: none` and algorithm-confusion tokens fail. Tokens are
//! never logged.

use std::time::Duration;

use herald_core::channel::{ChannelGrant, Identity};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::config::{AuthConfig, ConfigError, JwtAlgorithm};

/// Longest user id (a token's `sub`, or the connect hook's `user`).
pub const MAX_USER_BYTES: usize = 200;

/// The claims Herald reads from a client token.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    pub sub: String,
    pub exp: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channels: Option<Vec<String>>,
    /// One audience or several (RFC 7519 allows both).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aud: Option<Audience>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iss: Option<String>,
}

/// The `aud` claim: a string or an array of strings.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(untagged)]
pub enum Audience {
    One(String),
    Many(Vec<String>),
}

/// A verified client: who it is and until when (from a token, or the backend's connect hook).
#[derive(Debug, Clone)]
pub struct Verified {
    pub identity: Identity,
    /// Seconds since the Unix epoch: a token's `exp`; `None` when the connect hook set no end.
    pub expires_at: Option<u64>,
}

/// Why a token was refused. The message is safe to send to the client.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct AuthError(pub String);

/// Verifies client tokens.
pub struct Authenticator {
    key: DecodingKey,
    validation: Validation,
}

fn algorithm(a: JwtAlgorithm) -> Algorithm {
    match a {
        JwtAlgorithm::HS256 => Algorithm::HS256,
        JwtAlgorithm::RS256 => Algorithm::RS256,
        JwtAlgorithm::ES256 => Algorithm::ES256,
    }
}

impl Authenticator {
    pub fn from_config(config: &AuthConfig) -> Result<Authenticator, ConfigError> {
        let alg = algorithm(config.jwt_algorithm);
        let key = match config.jwt_algorithm {
            JwtAlgorithm::HS256 => {
                let secret = config.jwt_secret.as_deref().ok_or_else(|| ConfigError {
                    key: "auth.jwt_secret".into(),
                    problem: "required with HS256".into(),
                })?;
                DecodingKey::from_secret(secret.as_bytes())
            }
            JwtAlgorithm::RS256 | JwtAlgorithm::ES256 => {
                let key_error = |problem: String| ConfigError {
                    key: "auth.jwt_public_key_file".into(),
                    problem,
                };
                let path = config
                    .jwt_public_key_file
                    .as_ref()
                    .ok_or_else(|| key_error("required with RS256 and ES256".into()))?;
                let pem = std::fs::read(path)
                    .map_err(|e| key_error(format!("cannot read {}: {e}", path.display())))?;
                let parsed = if alg == Algorithm::RS256 {
                    DecodingKey::from_rsa_pem(&pem)
                } else {
                    DecodingKey::from_ec_pem(&pem)
                };
                parsed.map_err(|e| key_error(format!("not a PEM public key for {alg:?}: {e}")))?
            }
        };
        let mut validation = Validation::new(alg);
        validation.leeway = config.jwt_leeway.as_secs();
        validation.set_required_spec_claims(&["exp", "sub"]);
        validation.validate_nbf = true;
        match &config.jwt_audience {
            Some(aud) => {
                validation.set_audience(&[aud]);
                validation.required_spec_claims.insert("aud".into());
            }
            None => validation.validate_aud = false,
        }
        if let Some(iss) = &config.jwt_issuer {
            validation.set_issuer(&[iss]);
            validation.required_spec_claims.insert("iss".into());
        }
        Ok(Authenticator { key, validation })
    }

    /// Verifies `token` and returns who it proves.
    pub fn verify(&self, token: &str) -> Result<Verified, AuthError> {
        use jsonwebtoken::errors::ErrorKind;
        let data =
            jsonwebtoken::decode::<Claims>(token, &self.key, &self.validation).map_err(|e| {
                AuthError(
                    match e.kind() {
                        ErrorKind::ExpiredSignature => "token expired",
                        ErrorKind::InvalidSignature => "token signature is invalid",
                        ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => {
                            "token algorithm is not the configured one"
                        }
                        ErrorKind::InvalidAudience => "token audience is not accepted",
                        ErrorKind::InvalidIssuer => "token issuer is not accepted",
                        ErrorKind::ImmatureSignature => "token is not valid yet",
                        ErrorKind::MissingRequiredClaim(_) => "token lacks a required claim",
                        _ => "token is malformed",
                    }
                    .to_string(),
                )
            })?;
        let claims = data.claims;
        if claims.sub.is_empty() || claims.sub.len() > MAX_USER_BYTES {
            return Err(AuthError(format!(
                "token sub must be 1 to {MAX_USER_BYTES} bytes"
            )));
        }
        let mut identity = Identity::new(claims.sub);
        for pattern in claims.channels.unwrap_or_default() {
            let grant = ChannelGrant::parse(&pattern)
                .map_err(|_| AuthError("token channels claim has a bad pattern".into()))?;
            identity.channel_grants.push(grant);
        }
        Ok(Verified {
            identity,
            expires_at: Some(claims.exp),
        })
    }
}

impl Claims {
    /// Claims for `user`, valid for `ttl` from now, with the audience and issuer `config` demands.
    pub fn new(
        user: &str,
        channels: Option<Vec<String>>,
        ttl: Duration,
        config: &AuthConfig,
    ) -> Claims {
        let now = herald_core::publication::now_millis() / 1000;
        Claims {
            sub: user.to_string(),
            exp: now + ttl.as_secs(),
            iat: Some(now),
            channels,
            aud: config.jwt_audience.clone().map(Audience::One),
            iss: config.jwt_issuer.clone(),
        }
    }
}

/// Signs `claims` with an HS256 secret (`herald token`, the development server, tests).
pub fn sign_hs256(secret: &str, claims: &Claims) -> Result<String, jsonwebtoken::errors::Error> {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
}

/// The token in `Authorization: Bearer <token>`, if present.
pub fn bearer_token(headers: &axum::http::HeaderMap) -> Option<&str> {
    let value = headers
        .get(axum::http::header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then_some(token.trim())
        .filter(|t| !t.is_empty())
}
