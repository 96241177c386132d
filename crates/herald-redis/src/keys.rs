//! Where everything lives in Redis: the key layout, and the partitions that group channels.
//!
//! Every channel belongs to one of [`PARTITIONS`] partitions (a hash of its name), and every key
//! and pub/sub channel of a channel carries its partition's hash tag, `{tag}`. So in a Redis
//! Cluster a channel's stream, history, idempotency keys, presence and pub/sub subject all live on
//! one slot, which a publish script may touch together, and a node subscribes to many channels of
//! one partition with one `SSUBSCRIBE` (which takes only channels of one slot). On one Redis the
//! tags change nothing but the names.
//!
//! The tags are chosen, not numbered: tag `i` is the first string whose slot falls in the `i`-th
//! of [`PARTITIONS`] equal slot ranges. Redis Cluster hands each master a contiguous share of the
//! slot range, so evenly spread tags spread partitions evenly over the masters, however many there
//! are. (Numbered tags, `{0}` .. `{127}`, land wherever CRC16 puts them, and on some cluster sizes
//! leave masters idle.) Every node computes the same tags, so they need no coordination.
//!
//! Layout, with `P` the prefix, `T` the partition's tag and `C` the channel name:
//!
//! | key | type | what |
//! |---|---|---|
//! | `P:{T}:s:C` | hash | the stream: `e` epoch, `o` last offset |
//! | `P:{T}:h:C` | stream | history; entry id `<offset>-0`, fields `t` (ms) and `d` (the publication) |
//! | `P:{T}:i:C:K` | string | idempotency key `K`: the offset it published |
//! | `P:{T}:pc:C` | hash | presence: client → member |
//! | `P:{T}:pu:C` | hash | presence: user → connections |
//! | `P:{T}:pe:C` | sorted set | presence: client → when its entry expires (ms) |
//! | `P:{T}:C` | pub/sub | publications and events of the channel |
//! | `P:{u.T}:u:U` | hash | user `U`'s connections: node → count |
//! | `P:{r.T}:r:K` | string | reported state `K` (`u:<user>`, `c:<channel>`) last reported present, for webhooks; absent when last reported absent |
//! | `P:{nodes}:live` | sorted set | live nodes: node id → when it expires (ms) |
//! | `P:{nodes}:n:ID` | string | a node's figures (JSON), expiring |
//! | `P:commands` | pub/sub | cluster commands |

use std::sync::Arc;

use herald_core::ChannelName;

/// How many partitions channels are spread over. More than any cluster has masters, so that each
/// master gets a fair share; few enough that resubscribing after a reconnect takes a few commands
/// per partition.
pub const PARTITIONS: usize = 128;

/// Redis Cluster's slot count.
const SLOTS: usize = 16_384;

/// The slot of a key (or tag) in a Redis Cluster.
pub fn slot(key: &[u8]) -> u16 {
    let tagged = hash_tag(key).unwrap_or(key);
    crc16::State::<crc16::XMODEM>::calculate(tagged) % SLOTS as u16
}

/// The part of a key Redis Cluster hashes: between the first `{` and the next `}`, if not empty.
fn hash_tag(key: &[u8]) -> Option<&[u8]> {
    let open = key.iter().position(|&b| b == b'{')?;
    let len = key[open + 1..].iter().position(|&b| b == b'}')?;
    (len > 0).then(|| &key[open + 1..open + 1 + len])
}

/// The names of everything Herald keeps in Redis under one prefix.
#[derive(Debug, Clone)]
pub struct Keys {
    prefix: Arc<str>,
    tags: Arc<[Box<str>]>,
}

/// A channel's keys.
#[derive(Debug, Clone)]
pub struct ChannelKeys {
    /// The stream hash.
    pub stream: String,
    /// The history stream.
    pub history: String,
    /// The presence hashes and expiry set.
    pub presence_clients: String,
    /// Presence: user → connections.
    pub presence_users: String,
    /// Presence: client → expiry.
    pub presence_expiry: String,
    /// The pub/sub subject.
    pub subject: String,
    /// What the channel's idempotency keys start with (the publisher's key follows).
    pub idempotency_prefix: String,
    /// The partition.
    pub partition: usize,
}

impl Keys {
    /// The layout under `prefix`.
    pub fn new(prefix: &str) -> Keys {
        let tags = (0..PARTITIONS).map(balanced_tag).collect::<Vec<_>>();
        Keys {
            prefix: prefix.into(),
            tags: tags.into(),
        }
    }

    /// The prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The partition of a channel.
    pub fn partition(&self, channel: &str) -> usize {
        // FNV-1a: stable across builds and nodes (std's hasher is neither).
        let mut hash: u32 = 0x811c_9dc5;
        for byte in channel.bytes() {
            hash = (hash ^ u32::from(byte)).wrapping_mul(0x0100_0193);
        }
        hash as usize % PARTITIONS
    }

    /// The hash tag of a partition, braces included.
    pub fn tag(&self, partition: usize) -> String {
        format!("{{{}}}", self.tags[partition])
    }

    /// Every key of `channel`.
    pub fn channel(&self, channel: &ChannelName) -> ChannelKeys {
        let name = channel.as_str();
        let partition = self.partition(name);
        let base = format!("{}:{}:", self.prefix, self.tag(partition));
        ChannelKeys {
            stream: format!("{base}s:{name}"),
            history: format!("{base}h:{name}"),
            presence_clients: format!("{base}pc:{name}"),
            presence_users: format!("{base}pu:{name}"),
            presence_expiry: format!("{base}pe:{name}"),
            subject: format!("{base}{name}"),
            idempotency_prefix: format!("{base}i:{name}:"),
            partition,
        }
    }

    /// The pub/sub subject of a channel, and its partition.
    pub fn subject(&self, channel: &str) -> (String, usize) {
        let partition = self.partition(channel);
        (
            format!("{}:{}:{channel}", self.prefix, self.tag(partition)),
            partition,
        )
    }

    /// The channel name in a pub/sub subject of this layout.
    pub fn channel_of_subject<'a>(&self, subject: &'a str) -> Option<&'a str> {
        let rest = subject.strip_prefix(&*self.prefix)?.strip_prefix(":{")?;
        let close = rest.find('}')?;
        rest[close + 1..].strip_prefix(':')
    }

    /// The hash of a user's connection counts per node.
    pub fn user(&self, user: &str) -> String {
        let partition = self.partition(user);
        format!("{}:{{u.{}}}:u:{user}", self.prefix, self.tags[partition])
    }

    /// The flag of a reported state (`Engine::mark_reported`): one key of its own, tagged by
    /// the partition of its name like a user's counts.
    pub fn reported(&self, key: &str) -> String {
        let partition = self.partition(key);
        format!("{}:{{r.{}}}:r:{key}", self.prefix, self.tags[partition])
    }

    /// The set of live nodes.
    pub fn live_nodes(&self) -> String {
        format!("{}:{{nodes}}:live", self.prefix)
    }

    /// The prefix of each node's figures key (the node id follows).
    pub fn node_prefix(&self) -> String {
        format!("{}:{{nodes}}:n:", self.prefix)
    }

    /// The pub/sub subject of cluster commands.
    pub fn commands(&self) -> String {
        format!("{}:commands", self.prefix)
    }
}

/// The first short string whose slot falls in the `partition`-th of [`PARTITIONS`] equal ranges.
fn balanced_tag(partition: usize) -> Box<str> {
    let width = SLOTS / PARTITIONS;
    let wanted = partition * width..(partition + 1) * width;
    (0u32..)
        .map(|n| format!("{partition}.{n}"))
        .find(|tag| wanted.contains(&usize::from(slot(tag.as_bytes()))))
        .map(String::into_boxed_str)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_follow_redis_cluster() {
        // Known values from the Redis Cluster specification's CRC16 test vector and CLUSTER
        // KEYSLOT.
        assert_eq!(
            crc16::State::<crc16::XMODEM>::calculate(b"123456789"),
            0x31C3
        );
        assert_eq!(slot(b"foo"), 12182);
        assert_eq!(slot(b"{user1000}.following"), slot(b"{user1000}.followers"));
        assert_eq!(slot(b"foo{{bar}}zap"), slot(b"{bar"));
    }

    #[test]
    fn each_partition_owns_its_share_of_the_slots() {
        let keys = Keys::new("herald");
        let width = SLOTS / PARTITIONS;
        for partition in 0..PARTITIONS {
            let key = format!("x:{}:y", keys.tag(partition));
            assert_eq!(usize::from(slot(key.as_bytes())) / width, partition);
        }
        // Three masters with the even split `redis-cli --cluster create` makes: within one
        // partition of an equal share each.
        let mut per_master = [0usize; 3];
        for partition in 0..PARTITIONS {
            let s = usize::from(slot(keys.tag(partition).as_bytes()));
            per_master[(s * 3 / SLOTS).min(2)] += 1;
        }
        assert!(per_master.iter().all(|&n| n.abs_diff(PARTITIONS / 3) <= 1));
    }

    #[test]
    fn a_channel_and_all_its_keys_share_one_slot() {
        let keys = Keys::new("hx");
        let channel = ChannelName::parse("chat:7").expect("name");
        let k = keys.channel(&channel);
        let slots = [
            &k.stream,
            &k.history,
            &k.presence_clients,
            &k.presence_users,
            &k.presence_expiry,
            &k.subject,
            &format!("{}a", k.idempotency_prefix),
        ]
        .map(|key| slot(key.as_bytes()));
        assert!(slots.iter().all(|&s| s == slots[0]), "{slots:?}");
        assert_eq!(keys.channel_of_subject(&k.subject), Some("chat:7"));
        assert_eq!(keys.channel_of_subject("other:{x}:y"), None);
    }
}
