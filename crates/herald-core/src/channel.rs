//! Channel names and the namespace policies that decide who may use a channel.
//!
//! A [`ChannelName`] is validated once, where it enters (a client frame or an API request), and is
//! cheap to clone afterwards (`Arc<str>`), because the hub keeps it in several indexes. The
//! [`Namespaces`] table is the single place that answers "may this user subscribe / publish here".

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::error::HeraldError;

/// Longest channel name accepted, in bytes.
pub const MAX_CHANNEL_BYTES: usize = 255;

/// Default of [`NamespacePolicy::join_leave_max_members`].
pub const DEFAULT_JOIN_LEAVE_MAX_MEMBERS: usize = 100;

/// The namespace of every user's personal channel, `user:{sub}`.
pub const PERSONAL_NAMESPACE: &str = "user";

/// A valid channel name: 1..=255 bytes of `[A-Za-z0-9_:.@=-]`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChannelName(Arc<str>);

impl ChannelName {
    /// Validates `name`; anything else is `bad_request`.
    pub fn parse(name: &str) -> Result<ChannelName, HeraldError> {
        if name.is_empty() {
            return Err(HeraldError::bad_request("channel name is empty"));
        }
        if name.len() > MAX_CHANNEL_BYTES {
            return Err(HeraldError::bad_request(format!(
                "channel name is {} bytes; at most {MAX_CHANNEL_BYTES} allowed",
                name.len()
            )));
        }
        if let Some(bad) = name.chars().find(|c| !is_channel_char(*c)) {
            return Err(HeraldError::bad_request(format!(
                "channel name contains {bad:?}; allowed are A-Z a-z 0-9 and _ : . @ = -"
            )));
        }
        Ok(ChannelName(Arc::from(name)))
    }

    /// The personal channel of `user`. User ids are not restricted to channel characters, so this
    /// is `None` for a user whose id cannot be part of a channel name.
    pub fn personal(user: &str) -> Option<ChannelName> {
        ChannelName::parse(&format!("{PERSONAL_NAMESPACE}:{user}")).ok()
    }

    /// The name as written.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The part before the first `:`, or the whole name when there is none.
    pub fn namespace(&self) -> &str {
        match self.0.split_once(':') {
            Some((ns, _)) => ns,
            None => &self.0,
        }
    }
}

fn is_channel_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | ':' | '.' | '@' | '=' | '-')
}

impl fmt::Display for ChannelName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for ChannelName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl serde::Serialize for ChannelName {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

/// Who may subscribe to the channels of a namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SubscribePolicy {
    /// Any authenticated user.
    Public,
    /// Only the user named after the colon: `user:42` for the user whose `sub` is `42`.
    Personal,
    /// The token's `channels` claim must match the channel (globs allowed).
    Claims,
    /// Ask the backend's subscribe hook.
    Proxy,
}

/// The settings of one namespace, as configured.
#[derive(Debug, Clone, PartialEq)]
pub struct NamespacePolicy {
    /// The namespace, or `*` for every namespace that is not configured by name.
    pub name: String,
    /// Who may subscribe to the namespace's channels.
    pub subscribe: SubscribePolicy,
    /// Whether clients may publish (the server API always may).
    pub publish: bool,
    /// Whether each client publication is first sent to the backend's publish hook, which may
    /// refuse it or replace its data.
    pub publish_proxy: bool,
    /// Whether the channels keep presence (who is subscribed, with counts).
    pub presence: bool,
    /// Whether subscribers get `join`/`leave` events (needs `presence`).
    pub join_leave: bool,
    /// Past this many connections in a channel, join/leave events are not sent: each join would
    /// otherwise cost a delivery to every member, N² for N members arriving.
    pub join_leave_max_members: usize,
    /// Whether subscribers may send `typing`.
    pub typing: bool,
    /// How many publications each channel's history keeps (0: none).
    pub history_size: usize,
    /// How long a publication stays in history, and a stream with no subscriber lives.
    pub history_ttl: Duration,
}

impl NamespacePolicy {
    /// What the engine keeps of this namespace's channels.
    pub fn history(&self) -> crate::engine::HistoryPolicy {
        crate::engine::HistoryPolicy {
            size: self.history_size,
            ttl: self.history_ttl,
        }
    }

    /// A namespace with the given subscribe policy and everything else off.
    pub fn new(name: impl Into<String>, subscribe: SubscribePolicy) -> Self {
        NamespacePolicy {
            name: name.into(),
            subscribe,
            publish: false,
            publish_proxy: false,
            presence: false,
            join_leave: false,
            join_leave_max_members: DEFAULT_JOIN_LEAVE_MAX_MEMBERS,
            typing: false,
            history_size: 0,
            history_ttl: Duration::from_secs(300),
        }
    }
}

/// What a connection proves about itself: the user and the channel globs of its token (or of the
/// backend's connect hook answer).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The user id (the token's `sub`).
    pub user: Arc<str>,
    /// The token's `channels` claim, compiled. Empty when the token has none.
    pub channel_grants: Vec<ChannelGrant>,
    /// Headers of the connection's HTTP request passed on to the backend's hooks (only those
    /// the configuration names; none when no hook is configured).
    pub forwarded_headers: Option<crate::hooks::ForwardedHeaders>,
}

/// One entry of a token's `channels` claim: an exact name or a glob such as `site:*`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelGrant(glob::Pattern);

impl ChannelGrant {
    /// Parses a grant from a token's `channels` claim: a channel name or a glob (`chat:*`).
    pub fn parse(pattern: &str) -> Result<ChannelGrant, HeraldError> {
        glob::Pattern::new(pattern)
            .map(ChannelGrant)
            .map_err(|e| HeraldError::bad_request(format!("bad channel glob {pattern:?}: {e}")))
    }

    /// Whether this grant covers `channel`.
    pub fn matches(&self, channel: &ChannelName) -> bool {
        self.0.matches(channel.as_str())
    }
}

impl Identity {
    /// An identity for `user` with no channel grants.
    pub fn new(user: impl Into<Arc<str>>) -> Self {
        Identity {
            user: user.into(),
            channel_grants: Vec::new(),
            forwarded_headers: None,
        }
    }
}

/// The namespace table. Built once from configuration; read on every subscribe and publish.
#[derive(Debug, Clone)]
pub struct Namespaces {
    by_name: HashMap<String, Arc<NamespacePolicy>>,
    fallback: Option<Arc<NamespacePolicy>>,
}

impl Namespaces {
    /// Builds the table. The personal namespace `user` is added as `personal` unless configured.
    pub fn new(policies: impl IntoIterator<Item = NamespacePolicy>) -> Self {
        let mut by_name = HashMap::new();
        let mut fallback = None;
        for policy in policies {
            if policy.name == "*" {
                fallback = Some(Arc::new(policy));
            } else {
                by_name.insert(policy.name.clone(), Arc::new(policy));
            }
        }
        by_name
            .entry(PERSONAL_NAMESPACE.to_string())
            .or_insert_with(|| {
                // Kept for offline delivery: a user away for up to an hour gets what was sent to
                // them on reconnect.
                let mut personal =
                    NamespacePolicy::new(PERSONAL_NAMESPACE, SubscribePolicy::Personal);
                personal.history_size = 100;
                personal.history_ttl = Duration::from_secs(3600);
                Arc::new(personal)
            });
        Namespaces { by_name, fallback }
    }

    /// The policy that governs `channel`, or `not_found` when its namespace is not configured.
    pub fn policy(&self, channel: &ChannelName) -> Result<&Arc<NamespacePolicy>, HeraldError> {
        let namespace = channel.namespace();
        self.by_name
            .get(namespace)
            .or(self.fallback.as_ref())
            .ok_or_else(|| {
                HeraldError::not_found(format!("namespace {namespace:?} is not configured"))
            })
    }

    /// May `identity` subscribe to `channel`?
    pub fn check_subscribe(
        &self,
        identity: &Identity,
        channel: &ChannelName,
    ) -> Result<Arc<NamespacePolicy>, HeraldError> {
        let policy = self.policy(channel)?;
        let allowed = match policy.subscribe {
            SubscribePolicy::Public => true,
            SubscribePolicy::Personal => channel
                .as_str()
                .split_once(':')
                .is_some_and(|(_, owner)| owner == &*identity.user),
            SubscribePolicy::Claims => identity.channel_grants.iter().any(|g| g.matches(channel)),
            // Decided by the backend's subscribe hook when subscribing (`Session::subscribe`);
            // without a subscription there is nothing to go on.
            SubscribePolicy::Proxy => false,
        };
        if allowed {
            Ok(policy.clone())
        } else {
            Err(HeraldError::forbidden(format!(
                "not allowed to subscribe to {channel}"
            )))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ch(s: &str) -> ChannelName {
        ChannelName::parse(s).expect("valid channel")
    }

    #[test]
    fn channel_names_are_validated() {
        for ok in ["alarms", "machine:42", "a.b@c=d-e_f:g", &"x".repeat(255)] {
            assert!(ChannelName::parse(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "has space",
            "slash/no",
            "émoji",
            "star*",
            &"x".repeat(256),
        ] {
            assert!(ChannelName::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn namespace_is_the_part_before_the_first_colon() {
        assert_eq!(ch("machine:42:temp").namespace(), "machine");
        assert_eq!(ch("alarms").namespace(), "alarms");
    }

    #[test]
    fn policies_decide_subscriptions() {
        let table = Namespaces::new([
            NamespacePolicy::new("chat", SubscribePolicy::Public),
            NamespacePolicy::new("site", SubscribePolicy::Claims),
        ]);
        let mut alice = Identity::new("alice");
        alice.channel_grants = vec![ChannelGrant::parse("site:7*").expect("glob")];

        assert!(table.check_subscribe(&alice, &ch("chat:1")).is_ok());
        assert!(table.check_subscribe(&alice, &ch("user:alice")).is_ok());
        assert!(table.check_subscribe(&alice, &ch("site:71")).is_ok());
        let forbidden = |c: &str| table.check_subscribe(&alice, &ch(c)).map_err(|e| e.code);
        assert_eq!(forbidden("user:bob"), Err(crate::ErrorCode::Forbidden));
        assert_eq!(forbidden("site:8"), Err(crate::ErrorCode::Forbidden));
        assert_eq!(forbidden("nope:1"), Err(crate::ErrorCode::NotFound));
    }

    #[test]
    fn the_fallback_namespace_covers_unconfigured_ones() {
        let table = Namespaces::new([NamespacePolicy::new("*", SubscribePolicy::Public)]);
        let bob = Identity::new("bob");
        assert!(table.check_subscribe(&bob, &ch("anything:1")).is_ok());
        assert!(table.check_subscribe(&bob, &ch("user:alice")).is_err());
    }
}
