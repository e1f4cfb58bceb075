//! An index from topic filters to subscribers, looked up by topic name.
//!
//! Each filter is a path of levels in a tree; `+` and `#` are dedicated
//! children of a node. A lookup walks the topic's levels and at each node
//! follows at most three edges (the literal level, `+`, `#`), so its cost
//! grows with the number of levels and of *matching* wildcard branches, not
//! with the number of unrelated filters stored.

use std::collections::HashMap;
use std::hash::Hash;

/// Filter → (subscriber key → value) index with MQTT wildcard lookup.
#[derive(Debug)]
pub struct TopicTrie<K, V> {
    root: Node<K, V>,
    len: usize,
}

#[derive(Debug)]
struct Node<K, V> {
    children: HashMap<String, Node<K, V>>,
    plus: Option<Box<Node<K, V>>>,
    /// Subscribers of `<path to here>/#`.
    hash: HashMap<K, V>,
    /// Subscribers of exactly `<path to here>`.
    exact: HashMap<K, V>,
}

impl<K, V> Default for Node<K, V> {
    fn default() -> Self {
        Self {
            children: HashMap::new(),
            plus: None,
            hash: HashMap::new(),
            exact: HashMap::new(),
        }
    }
}

impl<K, V> Node<K, V> {
    fn is_empty(&self) -> bool {
        self.children.is_empty()
            && self.plus.is_none()
            && self.hash.is_empty()
            && self.exact.is_empty()
    }
}

impl<K, V> Default for TopicTrie<K, V> {
    fn default() -> Self {
        Self {
            root: Node::default(),
            len: 0,
        }
    }
}

impl<K: Eq + Hash + Clone, V> TopicTrie<K, V> {
    /// An empty index.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of (filter, key) entries.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True if no entry is stored.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Adds `key` under `filter` (a valid filter, see
    /// [`crate::topic::validate_topic_filter`]). Returns the value it replaced.
    pub fn insert(&mut self, filter: &str, key: K, value: V) -> Option<V> {
        let mut node = &mut self.root;
        let mut levels = filter.split('/').peekable();
        let mut is_hash = false;
        while let Some(level) = levels.next() {
            if level == "#" && levels.peek().is_none() {
                is_hash = true;
                break;
            }
            node = if level == "+" {
                node.plus.get_or_insert_with(Box::default)
            } else {
                node.children.entry(level.to_owned()).or_default()
            };
        }
        let map = if is_hash {
            &mut node.hash
        } else {
            &mut node.exact
        };
        let old = map.insert(key, value);
        if old.is_none() {
            self.len += 1;
        }
        old
    }

    /// Removes `key` from `filter`; prunes nodes left empty.
    pub fn remove(&mut self, filter: &str, key: &K) -> Option<V> {
        let levels: Vec<&str> = filter.split('/').collect();
        let removed = remove_at(&mut self.root, &levels, key);
        if removed.is_some() {
            self.len -= 1;
        }
        removed
    }

    /// The value stored for `key` under exactly `filter`.
    pub fn get(&self, filter: &str, key: &K) -> Option<&V> {
        let mut node = &self.root;
        let mut levels = filter.split('/').peekable();
        while let Some(level) = levels.next() {
            if level == "#" && levels.peek().is_none() {
                return node.hash.get(key);
            }
            node = if level == "+" {
                node.plus.as_deref()?
            } else {
                node.children.get(level)?
            };
        }
        node.exact.get(key)
    }

    /// Calls `visit` for every entry whose filter matches topic name `topic`.
    pub fn for_each_match(&self, topic: &str, mut visit: impl FnMut(&K, &V)) {
        let levels: Vec<&str> = topic.split('/').collect();
        // MQTT 3.1.1 §4.7.2: filters starting with a wildcard do not match
        // topics starting with '$'.
        let dollar = topic.starts_with('$');
        collect(&self.root, &levels, !dollar, &mut visit);
    }

    /// The matching entries, cloned.
    pub fn matches(&self, topic: &str) -> Vec<(K, V)>
    where
        V: Clone,
    {
        let mut out = Vec::new();
        self.for_each_match(topic, |k, v| out.push((k.clone(), v.clone())));
        out
    }
}

fn collect<K, V>(
    node: &Node<K, V>,
    levels: &[&str],
    wildcards_ok: bool,
    visit: &mut impl FnMut(&K, &V),
) {
    if wildcards_ok {
        // `a/#` matches `a` and everything below it.
        node.hash.iter().for_each(|(k, v)| visit(k, v));
    }
    match levels.split_first() {
        None => node.exact.iter().for_each(|(k, v)| visit(k, v)),
        Some((level, rest)) => {
            if let Some(child) = node.children.get(*level) {
                collect(child, rest, true, visit);
            }
            if wildcards_ok && let Some(plus) = node.plus.as_deref() {
                collect(plus, rest, true, visit);
            }
        }
    }
}

fn remove_at<K: Eq + Hash, V>(node: &mut Node<K, V>, levels: &[&str], key: &K) -> Option<V> {
    match levels.split_first() {
        None => node.exact.remove(key),
        Some((&"#", [])) => node.hash.remove(key),
        Some((&"+", rest)) => {
            let child = node.plus.as_deref_mut()?;
            let removed = remove_at(child, rest, key);
            if child.is_empty() {
                node.plus = None;
            }
            removed
        }
        Some((level, rest)) => {
            let child = node.children.get_mut(*level)?;
            let removed = remove_at(child, rest, key);
            if child.is_empty() {
                node.children.remove(*level);
            }
            removed
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use proptest::prelude::*;

    use super::*;
    use crate::topic::matches;

    fn keys(trie: &TopicTrie<u32, ()>, topic: &str) -> BTreeSet<u32> {
        trie.matches(topic).into_iter().map(|(k, ())| k).collect()
    }

    #[test]
    fn lookup_and_remove() {
        let mut t = TopicTrie::new();
        t.insert("a/b", 1, ());
        t.insert("a/+", 2, ());
        t.insert("a/#", 3, ());
        t.insert("#", 4, ());
        t.insert("+/b", 5, ());
        t.insert("$SYS/#", 6, ());
        assert_eq!(t.len(), 6);
        assert_eq!(keys(&t, "a/b"), [1, 2, 3, 4, 5].into());
        assert_eq!(keys(&t, "a"), [3, 4].into());
        assert_eq!(keys(&t, "a/c/d"), [3, 4].into());
        assert_eq!(keys(&t, "$SYS/b"), [6].into());
        assert_eq!(t.remove("a/+", &2), Some(()));
        assert_eq!(t.remove("a/+", &2), None);
        assert_eq!(keys(&t, "a/b"), [1, 3, 4, 5].into());
        for (f, k) in [("a/b", 1), ("a/#", 3), ("#", 4), ("+/b", 5), ("$SYS/#", 6)] {
            assert_eq!(t.remove(f, &k), Some(()));
        }
        assert!(t.is_empty());
        assert!(t.root.is_empty(), "pruned: {:?}", t.root);
    }

    #[test]
    fn get_and_replace() {
        let mut t = TopicTrie::new();
        assert_eq!(t.insert("a/+/#", 1, 'x'), None);
        assert_eq!(t.insert("a/+/#", 1, 'y'), Some('x'));
        assert_eq!(t.len(), 1);
        assert_eq!(t.get("a/+/#", &1), Some(&'y'));
        assert_eq!(t.get("a/+", &1), None);
    }

    #[test]
    fn unrelated_filters_are_not_visited() {
        // Cost check: with many unrelated literal filters, a lookup visits
        // only the branch of its own levels (counted through the visitor).
        let mut t = TopicTrie::new();
        for i in 0..10_000u32 {
            t.insert(&format!("dev/{i}/temp"), i, ());
        }
        t.insert("dev/+/temp", 99_999, ());
        let mut visited = 0;
        t.for_each_match("dev/42/temp", |_, _| visited += 1);
        assert_eq!(visited, 2);
    }

    fn level() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("a".to_owned()),
            Just("b".to_owned()),
            Just(String::new()),
            Just("$x".to_owned())
        ]
    }

    fn topic() -> impl Strategy<Value = String> {
        proptest::collection::vec(level(), 1..4)
            .prop_map(|v| v.join("/"))
            .prop_filter("topics are non-empty", |t| !t.is_empty())
    }

    fn filter() -> impl Strategy<Value = String> {
        (
            proptest::collection::vec(prop_oneof![level(), Just("+".to_owned())], 1..4),
            any::<bool>(),
        )
            .prop_map(|(mut v, hash)| {
                if hash {
                    v.push("#".to_owned());
                }
                v.join("/")
            })
            .prop_filter("filters are non-empty", |f| !f.is_empty())
    }

    proptest! {
        #[test]
        fn trie_agrees_with_naive_matcher(
            filters in proptest::collection::vec(prop_oneof![filter(), Just("#".to_owned())], 0..20),
            topics in proptest::collection::vec(topic(), 1..10),
            removals in proptest::collection::vec(any::<bool>(), 20),
        ) {
            let mut t = TopicTrie::new();
            let mut live = Vec::new();
            for (i, f) in filters.iter().enumerate() {
                prop_assert!(crate::topic::validate_topic_filter(f).is_ok(), "{}", f);
                t.insert(f, i as u32, ());
                live.push((i as u32, f.clone()));
            }
            for (i, remove) in removals.iter().enumerate() {
                if *remove && let Some(pos) = live.iter().position(|(k, _)| *k == i as u32) {
                    let (k, f) = live.remove(pos);
                    prop_assert_eq!(t.remove(&f, &k), Some(()));
                }
            }
            prop_assert_eq!(t.len(), live.len());
            for topic in &topics {
                let naive: BTreeSet<u32> =
                    live.iter().filter(|(_, f)| matches(f, topic)).map(|(k, _)| *k).collect();
                prop_assert_eq!(keys(&t, topic), naive, "topic {}", topic);
            }
        }
    }
}
