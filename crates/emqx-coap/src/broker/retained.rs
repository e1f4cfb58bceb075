//! Retained messages indexed by topic levels, so a wildcard subscription
//! visits only the part of the tree its filter can match (a subscription to
//! `site/7/#` does not scan the retained messages of every other site).

use std::collections::HashMap;

/// Topic name → value, looked up by topic filter.
#[derive(Debug)]
pub(crate) struct TopicStore<V> {
    root: Node<V>,
    len: usize,
}

#[derive(Debug)]
struct Node<V> {
    children: HashMap<String, Node<V>>,
    value: Option<V>,
}

impl<V> Default for Node<V> {
    fn default() -> Self {
        Self {
            children: HashMap::new(),
            value: None,
        }
    }
}

impl<V> Default for TopicStore<V> {
    fn default() -> Self {
        Self {
            root: Node::default(),
            len: 0,
        }
    }
}

impl<V> TopicStore<V> {
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    pub(crate) fn get(&self, topic: &str) -> Option<&V> {
        let mut node = &self.root;
        for level in topic.split('/') {
            node = node.children.get(level)?;
        }
        node.value.as_ref()
    }

    pub(crate) fn contains(&self, topic: &str) -> bool {
        self.get(topic).is_some()
    }

    /// Stores `value` for `topic`, returning the previous one.
    pub(crate) fn insert(&mut self, topic: &str, value: V) -> Option<V> {
        let mut node = &mut self.root;
        for level in topic.split('/') {
            node = node.children.entry(level.to_owned()).or_default();
        }
        let old = node.value.replace(value);
        if old.is_none() {
            self.len += 1;
        }
        old
    }

    /// Removes the value of `topic`, pruning empty nodes.
    pub(crate) fn remove(&mut self, topic: &str) -> Option<V> {
        let levels: Vec<&str> = topic.split('/').collect();
        let removed = remove_at(&mut self.root, &levels);
        if removed.is_some() {
            self.len -= 1;
        }
        removed
    }

    /// Calls `visit(topic, value)` for every stored topic matching `filter`.
    pub(crate) fn for_each_match(&self, filter: &str, mut visit: impl FnMut(&str, &V)) {
        let levels: Vec<&str> = filter.split('/').collect();
        let mut path = String::new();
        walk(&self.root, &levels, true, &mut path, &mut visit);
    }

    /// Keeps only the entries for which `keep` is true.
    pub(crate) fn retain(&mut self, mut keep: impl FnMut(&V) -> bool) {
        let mut removed = 0;
        retain_at(&mut self.root, &mut keep, &mut removed);
        self.len -= removed;
    }
}

fn walk<V>(
    node: &Node<V>,
    filter: &[&str],
    at_root: bool,
    path: &mut String,
    visit: &mut impl FnMut(&str, &V),
) {
    let Some((level, rest)) = filter.split_first() else {
        if let Some(v) = &node.value {
            visit(path, v);
        }
        return;
    };
    match *level {
        "#" => {
            // `a/#` matches `a` itself and everything below it.
            if !at_root && let Some(v) = &node.value {
                visit(path, v);
            }
            walk_all(node, at_root, path, visit);
        }
        "+" => {
            for (name, child) in &node.children {
                // MQTT 3.1.1 §4.7.2: no wildcard match of `$` topics at the
                // first level.
                if at_root && name.starts_with('$') {
                    continue;
                }
                with_level(path, name, at_root, |path| {
                    walk(child, rest, false, path, visit)
                });
            }
        }
        literal => {
            if let Some(child) = node.children.get(literal) {
                with_level(path, literal, at_root, |path| {
                    walk(child, rest, false, path, visit)
                });
            }
        }
    }
}

/// Visits every value strictly below `node`.
fn walk_all<V>(node: &Node<V>, at_root: bool, path: &mut String, visit: &mut impl FnMut(&str, &V)) {
    for (name, child) in &node.children {
        if at_root && name.starts_with('$') {
            continue;
        }
        with_level(path, name, at_root, |path| {
            if let Some(v) = &child.value {
                visit(path, v);
            }
            walk_all(child, false, path, visit);
        });
    }
}

/// Runs `f` with `level` appended to `path`, then restores `path`.
fn with_level(path: &mut String, level: &str, at_root: bool, f: impl FnOnce(&mut String)) {
    let len = path.len();
    if !at_root {
        path.push('/');
    }
    path.push_str(level);
    f(path);
    path.truncate(len);
}

fn remove_at<V>(node: &mut Node<V>, levels: &[&str]) -> Option<V> {
    match levels.split_first() {
        None => node.value.take(),
        Some((level, rest)) => {
            let child = node.children.get_mut(*level)?;
            let removed = remove_at(child, rest);
            if child.value.is_none() && child.children.is_empty() {
                node.children.remove(*level);
            }
            removed
        }
    }
}

fn retain_at<V>(node: &mut Node<V>, keep: &mut impl FnMut(&V) -> bool, removed: &mut usize) {
    if node.value.as_ref().is_some_and(|v| !keep(v)) {
        node.value = None;
        *removed += 1;
    }
    node.children.retain(|_, child| {
        retain_at(child, keep, removed);
        child.value.is_some() || !child.children.is_empty()
    });
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use proptest::prelude::*;

    use super::*;
    use crate::topic::matches;

    fn found(store: &TopicStore<u32>, filter: &str) -> BTreeSet<(String, u32)> {
        let mut out = BTreeSet::new();
        store.for_each_match(filter, |t, v| {
            out.insert((t.to_owned(), *v));
        });
        out
    }

    #[test]
    fn wildcards_dollar_and_pruning() {
        let mut s = TopicStore::default();
        for (i, t) in ["a", "a/b", "a/b/c", "/x", "$SYS/x", "b//c"]
            .iter()
            .enumerate()
        {
            s.insert(t, i as u32);
        }
        assert_eq!(s.len(), 6);
        assert_eq!(found(&s, "a/#").len(), 3);
        assert_eq!(found(&s, "#").len(), 5, "no $SYS");
        assert_eq!(found(&s, "+/x"), [("/x".to_owned(), 3)].into());
        assert_eq!(found(&s, "$SYS/#"), [("$SYS/x".to_owned(), 4)].into());
        assert_eq!(found(&s, "b/+/c"), [("b//c".to_owned(), 5)].into());
        assert_eq!(s.remove("a/b"), Some(1));
        assert_eq!(s.get("a/b/c"), Some(&2));
        s.retain(|v| *v != 2);
        assert_eq!(s.len(), 4);
        assert!(!s.contains("a/b/c"));
        assert!(!s.root.children["a"].children.contains_key("b"), "pruned");
    }

    fn level() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("a".to_owned()),
            Just("b".to_owned()),
            Just(String::new()),
            Just("$s".to_owned())
        ]
    }

    proptest! {
        #[test]
        fn agrees_with_a_naive_scan(
            topics in proptest::collection::vec(proptest::collection::vec(level(), 1..4), 0..20),
            filters in proptest::collection::vec(
                (proptest::collection::vec(prop_oneof![level(), Just("+".to_owned())], 0..4), any::<bool>()),
                1..10,
            ),
        ) {
            let mut store = TopicStore::default();
            let mut naive = BTreeMap::new();
            for (i, t) in topics.iter().enumerate() {
                let t = t.join("/");
                if t.is_empty() { continue; }
                store.insert(&t, i as u32);
                naive.insert(t, i as u32);
            }
            prop_assert_eq!(store.len(), naive.len());
            for (levels, hash) in filters {
                let mut levels = levels;
                if hash { levels.push("#".to_owned()); }
                let f = levels.join("/");
                if f.is_empty() { continue; }
                let expected: BTreeSet<(String, u32)> =
                    naive.iter().filter(|(t, _)| matches(&f, t)).map(|(t, v)| (t.clone(), *v)).collect();
                prop_assert_eq!(found(&store, &f), expected, "filter {}", f);
            }
        }
    }
}
