//! Local subscription bookkeeping shared by both broker implementations:
//! the topic trie, which filters each subscriber has, which subscribers each
//! client has, and how many local subscribers each filter has (reference
//! count for broker-level subscriptions).

use std::collections::{HashMap, HashSet};

use super::{Qos, SubscriberId};
use crate::trie::TopicTrie;

/// What the trie stores per (filter, subscriber).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SubEntry {
    /// Subscription QoS.
    pub(crate) qos: Qos,
    /// Caller-defined tag of the filter (MQTT subscription identifier).
    pub(crate) tag: u32,
}

#[derive(Debug, Default)]
struct SubscriberState {
    client: Option<String>,
    filters: HashSet<String>,
}

/// Result of [`LocalSubscriptions::add`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Added {
    /// The filter had no local subscriber before.
    pub(crate) first_for_filter: bool,
}

/// Result of [`LocalSubscriptions::remove`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Removed {
    /// The pair existed.
    pub(crate) existed: bool,
    /// The filter has no local subscriber any more.
    pub(crate) last_for_filter: bool,
}

#[derive(Debug, Default)]
pub(crate) struct LocalSubscriptions {
    trie: TopicTrie<SubscriberId, SubEntry>,
    subscribers: HashMap<SubscriberId, SubscriberState>,
    clients: HashMap<String, HashSet<SubscriberId>>,
    /// filter → (number of local subscribers, tag)
    filters: HashMap<String, (usize, u32)>,
}

impl LocalSubscriptions {
    pub(crate) fn len(&self) -> usize {
        self.trie.len()
    }

    /// The tag of a filter that has local subscribers.
    pub(crate) fn filter_tag(&self, filter: &str) -> Option<u32> {
        self.filters.get(filter).map(|(_, tag)| *tag)
    }

    /// Every filter with local subscribers, with its tag.
    pub(crate) fn filters(&self) -> impl Iterator<Item = (&str, u32)> {
        self.filters.iter().map(|(f, (_, tag))| (f.as_str(), *tag))
    }

    /// Adds (or updates the QoS of) `subscriber` on `filter`. `tag` is used
    /// only when the filter is new.
    pub(crate) fn add(
        &mut self,
        client: Option<&str>,
        subscriber: SubscriberId,
        filter: &str,
        qos: Qos,
        tag: u32,
    ) -> Added {
        let count = self.filters.entry(filter.to_owned()).or_insert((0, tag));
        let tag = count.1;
        let replaced = self
            .trie
            .insert(filter, subscriber, SubEntry { qos, tag })
            .is_some();
        let first_for_filter = count.0 == 0;
        if !replaced {
            count.0 += 1;
        }
        let state = self.subscribers.entry(subscriber).or_default();
        state.filters.insert(filter.to_owned());
        if let Some(client) = client {
            state.client = Some(client.to_owned());
            self.clients
                .entry(client.to_owned())
                .or_default()
                .insert(subscriber);
        }
        Added { first_for_filter }
    }

    /// Removes `subscriber` from `filter`.
    pub(crate) fn remove(&mut self, subscriber: SubscriberId, filter: &str) -> Removed {
        if self.trie.remove(filter, &subscriber).is_none() {
            return Removed {
                existed: false,
                last_for_filter: false,
            };
        }
        let mut last_for_filter = false;
        if let Some(count) = self.filters.get_mut(filter) {
            count.0 = count.0.saturating_sub(1);
            if count.0 == 0 {
                self.filters.remove(filter);
                last_for_filter = true;
            }
        }
        if let Some(state) = self.subscribers.get_mut(&subscriber) {
            state.filters.remove(filter);
            if state.filters.is_empty() {
                let client = state.client.take();
                self.subscribers.remove(&subscriber);
                if let Some(client) = client
                    && let Some(set) = self.clients.get_mut(&client)
                {
                    set.remove(&subscriber);
                    if set.is_empty() {
                        self.clients.remove(&client);
                    }
                }
            }
        }
        Removed {
            existed: true,
            last_for_filter,
        }
    }

    /// True if `subscriber` has no filter any more.
    pub(crate) fn is_gone(&self, subscriber: SubscriberId) -> bool {
        !self.subscribers.contains_key(&subscriber)
    }

    /// Removes every subscription of every subscriber of `clientid`.
    /// Returns the removed subscribers and the filters left without any
    /// local subscriber.
    pub(crate) fn remove_client(&mut self, clientid: &str) -> (Vec<SubscriberId>, Vec<String>) {
        let Some(subscribers) = self.clients.remove(clientid) else {
            return (Vec::new(), Vec::new());
        };
        let mut gone_filters = Vec::new();
        let mut gone_subscribers = Vec::new();
        for subscriber in subscribers {
            let filters: Vec<String> = self
                .subscribers
                .get(&subscriber)
                .map(|s| s.filters.iter().cloned().collect())
                .unwrap_or_default();
            for filter in filters {
                if self.remove(subscriber, &filter).last_for_filter {
                    gone_filters.push(filter);
                }
            }
            gone_subscribers.push(subscriber);
        }
        (gone_subscribers, gone_filters)
    }

    /// Calls `visit` for each local subscription matching `topic`.
    pub(crate) fn for_each_match(&self, topic: &str, visit: impl FnMut(&SubscriberId, &SubEntry)) {
        self.trie.for_each_match(topic, visit);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reference_counts_and_clients() {
        let mut s = LocalSubscriptions::default();
        let (a, b) = (SubscriberId(1), SubscriberId(2));
        assert!(
            s.add(Some("c1"), a, "x/+", Qos::AtLeastOnce, 7)
                .first_for_filter
        );
        assert!(
            !s.add(Some("c2"), b, "x/+", Qos::AtMostOnce, 8)
                .first_for_filter
        );
        // Re-adding the same pair is an update, not a second reference.
        assert!(
            !s.add(Some("c1"), a, "x/+", Qos::ExactlyOnce, 9)
                .first_for_filter
        );
        assert_eq!(s.filter_tag("x/+"), Some(7));
        assert!(
            s.add(Some("c1"), a, "y", Qos::AtMostOnce, 10)
                .first_for_filter
        );
        assert_eq!(s.len(), 3);
        assert!(!s.remove(b, "x/+").last_for_filter);
        let (subs, filters) = s.remove_client("c1");
        assert_eq!(subs, vec![a]);
        let mut filters = filters;
        filters.sort();
        assert_eq!(filters, vec!["x/+".to_owned(), "y".to_owned()]);
        assert_eq!(s.len(), 0);
        assert!(s.is_gone(a));
        assert_eq!(s.filters().count(), 0);
        assert!(!s.remove(a, "y").existed);
    }
}
