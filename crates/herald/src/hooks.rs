//! The backend's hooks over HTTP: `POST` a small JSON request to the configured URL and read a
//! JSON answer, within `proxy.timeout`. `docs/hooks.md` is the reference for the bodies.
//! [`HttpHooks`] implements the hub's [`Hooks`] trait (subscribe, publish) and the transports'
//! connect hook; the configuration section keeps the specification's name, `[proxy]`.
//!
//! The rule everywhere is that a hook that cannot be asked never allows: a timeout, a refused
//! connection, a status other than 2xx, or a body that is not the documented JSON is
//! `unavailable`; an explicit `{"allow": false}` (or a 401/403) is `forbidden`. Only the headers
//! named in `proxy.forward_headers` are passed on, and never a token or an API key.
//!
//! Each call runs in the task of the connection that needs it, with no lock held, so a slow
//! backend delays only the client whose command is waiting for it.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use axum::http::HeaderMap;
use herald_core::channel::{ChannelGrant, Identity};
use herald_core::hooks::{ForwardedHeaders, Hooks, PublishCheck, SubscribeCheck};
use herald_core::{ErrorCode, HeraldError};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::auth::Verified;
use crate::config::ProxyConfig;
use crate::metrics::Metrics;

/// Longest user id accepted from the connect hook, as from a token's `sub`.
const MAX_USER_BYTES: usize = crate::auth::MAX_USER_BYTES;

/// Largest answer read from a hook.
const MAX_ANSWER_BYTES: usize = 1024 * 1024;

/// Which hook a request is for (a metrics label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hook {
    Connect,
    Subscribe,
    Publish,
}

impl Hook {
    pub fn as_str(self) -> &'static str {
        match self {
            Hook::Connect => "connect",
            Hook::Subscribe => "subscribe",
            Hook::Publish => "publish",
        }
    }
}

/// The HTTP client for the configured hooks.
pub struct HttpHooks {
    http: reqwest::Client,
    config: ProxyConfig,
    metrics: Arc<Metrics>,
}

#[derive(Serialize)]
struct ConnectRequest<'a> {
    transport: &'a str,
    client_ip: String,
}

#[derive(Serialize)]
struct SubscribeRequest<'a> {
    user: &'a str,
    client: &'a str,
    channel: &'a str,
}

#[derive(Serialize)]
struct PublishRequest<'a> {
    user: &'a str,
    client: &'a str,
    channel: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    event: Option<&'a str>,
    data: &'a RawValue,
}

/// Every hook's answer: `allow`, and what goes with it.
#[derive(Deserialize)]
struct Answer {
    allow: bool,
    #[serde(default)]
    reason: Option<String>,
    // connect
    #[serde(default)]
    user: Option<String>,
    #[serde(default)]
    expires_at: Option<u64>,
    #[serde(default)]
    channels: Option<Vec<String>>,
    // publish
    #[serde(default)]
    data: Option<Box<RawValue>>,
}

impl HttpHooks {
    /// The hooks client, or `None` when no hook is configured.
    pub fn from_config(config: &ProxyConfig, metrics: Arc<Metrics>) -> Option<Arc<HttpHooks>> {
        if !config.any() {
            return None;
        }
        let http = reqwest::Client::builder()
            .timeout(config.timeout)
            .connect_timeout(config.timeout)
            .pool_idle_timeout(Duration::from_secs(30))
            // A redirect is not an answer: it is `unavailable` like any other non-2xx status.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .ok()?;
        Some(Arc::new(HttpHooks {
            http,
            config: config.clone(),
            metrics,
        }))
    }

    /// Whether connections without a token are authenticated by the backend.
    pub fn has_connect(&self) -> bool {
        self.config.connect_url.is_some()
    }

    /// The allow-listed headers of a client's HTTP request, to pass on to the hooks.
    pub fn forwarded(&self, headers: &HeaderMap) -> Option<ForwardedHeaders> {
        let picked: Vec<(String, String)> = self
            .config
            .forward_headers
            .iter()
            .flat_map(|name| {
                headers.get_all(name.as_str()).iter().filter_map(move |v| {
                    v.to_str()
                        .ok()
                        .map(|v| (name.to_ascii_lowercase(), v.to_string()))
                })
            })
            .collect();
        (!picked.is_empty()).then(|| picked.into())
    }

    /// Asks the connect hook who this client is (and until when: `expires_at`, if ever).
    pub async fn connect(
        &self,
        transport: &str,
        client_ip: IpAddr,
        headers: Option<ForwardedHeaders>,
    ) -> Result<Verified, HeraldError> {
        let Some(url) = &self.config.connect_url else {
            return Err(HeraldError::unavailable("no connect hook is configured"));
        };
        let body = ConnectRequest {
            transport,
            client_ip: client_ip.to_string(),
        };
        let answer = self
            .ask(Hook::Connect, url, &body, headers.as_deref())
            .await?;
        let user = match answer.user {
            Some(user) if !user.is_empty() && user.len() <= MAX_USER_BYTES => user,
            _ => {
                return Err(self.garbage(
                    Hook::Connect,
                    &format!("an allowing answer needs a \"user\" of 1 to {MAX_USER_BYTES} bytes"),
                ))
            }
        };
        let channel_grants = answer
            .channels
            .unwrap_or_default()
            .iter()
            .map(|g| ChannelGrant::parse(g))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| self.garbage(Hook::Connect, &e.message))?;
        Ok(Verified {
            identity: Identity {
                user: user.into(),
                channel_grants,
                forwarded_headers: headers,
            },
            expires_at: answer.expires_at,
        })
    }

    /// Posts `body` to `url`, and reads the answer. Every failure is counted and refuses.
    async fn ask<T: Serialize>(
        &self,
        hook: Hook,
        url: &str,
        body: &T,
        headers: Option<&[(String, String)]>,
    ) -> Result<Answer, HeraldError> {
        let started = Instant::now();
        let result = self.post(hook, url, body, headers).await;
        self.metrics.observe_hook(
            hook.as_str(),
            match &result {
                Ok(_) => "allowed",
                Err(e) if e.code == ErrorCode::Forbidden => "denied",
                Err(_) => "unavailable",
            },
            started.elapsed(),
        );
        result
    }

    async fn post<T: Serialize>(
        &self,
        hook: Hook,
        url: &str,
        body: &T,
        headers: Option<&[(String, String)]>,
    ) -> Result<Answer, HeraldError> {
        let mut request = self.http.post(url).json(body);
        for (name, value) in headers.unwrap_or_default() {
            request = request.header(name.as_str(), value.as_str());
        }
        let response = request.send().await.map_err(|e| {
            let why = if e.is_timeout() {
                format!("no answer within {:?}", self.config.timeout)
            } else {
                "could not be reached".to_string()
            };
            tracing::warn!(hook = hook.as_str(), error = %e, "backend hook failed");
            HeraldError::unavailable(format!("the backend's {} hook {why}", hook.as_str()))
        })?;
        let status = response.status();
        if status == reqwest::StatusCode::FORBIDDEN || status == reqwest::StatusCode::UNAUTHORIZED {
            return Err(HeraldError::forbidden(format!(
                "refused by the backend's {} hook",
                hook.as_str()
            )));
        }
        if !status.is_success() {
            tracing::warn!(hook = hook.as_str(), %status, "backend hook answered with an error");
            return Err(HeraldError::unavailable(format!(
                "the backend's {} hook answered {status}",
                hook.as_str()
            )));
        }
        let bytes = read_limited(response, MAX_ANSWER_BYTES)
            .await
            .map_err(|why| self.garbage(hook, &why))?;
        let answer: Answer = serde_json::from_slice(&bytes)
            .map_err(|e| self.garbage(hook, &format!("not the documented JSON: {e}")))?;
        if !answer.allow {
            let reason = answer.reason.as_deref().unwrap_or("no reason given");
            return Err(HeraldError::forbidden(format!(
                "refused by the backend: {reason}"
            )));
        }
        Ok(answer)
    }

    fn garbage(&self, hook: Hook, why: &str) -> HeraldError {
        tracing::warn!(hook = hook.as_str(), why, "backend hook answer unusable");
        HeraldError::unavailable(format!(
            "the backend's {} hook answer is unusable: {why}",
            hook.as_str()
        ))
    }
}

/// Reads a response body of at most `limit` bytes.
async fn read_limited(mut response: reqwest::Response, limit: usize) -> Result<Vec<u8>, String> {
    let mut body = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| format!("body not read: {e}"))?
    {
        if body.len() + chunk.len() > limit {
            return Err(format!("larger than {limit} bytes"));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

#[async_trait]
impl Hooks for HttpHooks {
    async fn subscribe(&self, check: SubscribeCheck) -> Result<(), HeraldError> {
        let Some(url) = &self.config.subscribe_url else {
            return Err(HeraldError::unavailable("no subscribe hook is configured"));
        };
        let body = SubscribeRequest {
            user: &check.caller.user,
            client: &check.caller.client,
            channel: check.channel.as_str(),
        };
        self.ask(Hook::Subscribe, url, &body, check.caller.headers.as_deref())
            .await
            .map(|_| ())
    }

    async fn publish(&self, check: PublishCheck) -> Result<Option<Box<RawValue>>, HeraldError> {
        let Some(url) = &self.config.publish_url else {
            return Err(HeraldError::unavailable("no publish hook is configured"));
        };
        let body = PublishRequest {
            user: &check.caller.user,
            client: &check.caller.client,
            channel: check.channel.as_str(),
            event: check.event.as_deref(),
            data: &check.data,
        };
        let answer = self
            .ask(Hook::Publish, url, &body, check.caller.headers.as_deref())
            .await?;
        Ok(answer.data)
    }
}
