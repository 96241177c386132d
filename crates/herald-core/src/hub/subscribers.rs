//! The subscribers of one channel on this node.
//!
//! Every connected user has a personal channel, and almost all of those have one subscriber; a
//! hash map for each would be an allocation per connection that holds one entry. So the first
//! subscriber is kept inline, and a map is made only when a second one arrives.

use std::collections::HashMap;
use std::sync::Arc;

/// Subscribers by session id.
pub(super) enum Subscribers<T> {
    One(u64, Arc<T>),
    Many(HashMap<u64, Arc<T>>),
}

impl<T> Subscribers<T> {
    pub(super) fn one(id: u64, subscriber: Arc<T>) -> Self {
        Subscribers::One(id, subscriber)
    }

    pub(super) fn insert(&mut self, id: u64, subscriber: Arc<T>) {
        match self {
            Subscribers::One(only, _) if *only == id => *self = Subscribers::One(id, subscriber),
            Subscribers::One(only, first) => {
                let map = HashMap::from([(*only, first.clone()), (id, subscriber)]);
                *self = Subscribers::Many(map);
            }
            Subscribers::Many(map) => {
                map.insert(id, subscriber);
            }
        }
    }

    /// Removes `id`; returns whether the channel has no subscriber left (the caller then drops
    /// the entry).
    pub(super) fn remove(&mut self, id: u64) -> bool {
        match self {
            Subscribers::One(only, _) => *only == id,
            Subscribers::Many(map) => {
                map.remove(&id);
                map.is_empty()
            }
        }
    }

    pub(super) fn len(&self) -> usize {
        match self {
            Subscribers::One(..) => 1,
            Subscribers::Many(map) => map.len(),
        }
    }

    pub(super) fn iter(&self) -> impl Iterator<Item = &Arc<T>> {
        let (one, many) = match self {
            Subscribers::One(_, subscriber) => (Some(subscriber), None),
            Subscribers::Many(map) => (None, Some(map.values())),
        };
        one.into_iter().chain(many.into_iter().flatten())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_from_one_inline_to_a_map_and_empties() {
        let mut subs = Subscribers::one(1, Arc::new("a"));
        subs.insert(1, Arc::new("a"));
        assert_eq!(subs.len(), 1);
        subs.insert(2, Arc::new("b"));
        subs.insert(3, Arc::new("c"));
        let mut seen: Vec<&str> = subs.iter().map(|s| **s).collect();
        seen.sort_unstable();
        assert_eq!(seen, ["a", "b", "c"]);
        assert!(!subs.remove(2));
        assert!(!subs.remove(9));
        assert!(!subs.remove(1));
        assert!(subs.remove(3));
        let mut single = Subscribers::one(7, Arc::new("x"));
        assert!(!single.remove(8), "another id leaves it in place");
        assert!(single.remove(7));
    }
}
