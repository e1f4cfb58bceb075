//! MQTT topic names and topic filters: validation and matching.
//!
//! Rules (MQTT 3.1.1 §4.7, MQTT 5 §4.7):
//! - levels are separated by `/`; empty levels are allowed (`/abc`, `a//b`);
//! - a topic name (publish) contains no `+` and no `#`;
//! - in a filter, `+` must occupy a whole level, `#` a whole level and only the
//!   last one;
//! - "The Server MUST NOT match Topic Filters starting with a wildcard
//!   character (# or +) with Topic Names beginning with a $ character"
//!   (MQTT 3.1.1 §4.7.2);
//! - names and filters are at least one character and at most 65535 bytes of
//!   UTF-8 without U+0000.

use std::fmt;

/// Longest topic accepted, in bytes (MQTT encodes the length in 16 bits).
pub const MAX_TOPIC_LEN: usize = 65_535;

/// Why a topic name or filter was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TopicError {
    /// The topic is the empty string.
    #[error("topic is empty")]
    Empty,
    /// The topic is longer than [`MAX_TOPIC_LEN`] bytes.
    #[error("topic is longer than {MAX_TOPIC_LEN} bytes")]
    TooLong,
    /// The topic contains the NUL character.
    #[error("topic contains U+0000")]
    Nul,
    /// A topic name (publish) contains `+` or `#`.
    #[error("a topic name must not contain wildcards (+ or #)")]
    WildcardInName,
    /// A `+` or `#` shares a level with other characters.
    #[error("wildcard must occupy a whole topic level")]
    WildcardNotWholeLevel,
    /// `#` is not the last level.
    #[error("'#' is allowed only as the last level")]
    HashNotLast,
}

/// A validated MQTT topic name (no wildcards), as used when publishing.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TopicName(String);

/// A validated MQTT topic filter (may contain `+` and a final `#`), as used
/// when subscribing.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TopicFilter(String);

impl TopicName {
    /// Validates `topic` as a topic name.
    pub fn new(topic: impl Into<String>) -> Result<Self, TopicError> {
        let topic = topic.into();
        validate_topic_name(&topic)?;
        Ok(Self(topic))
    }

    /// The topic as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The topic as an owned string.
    pub fn into_string(self) -> String {
        self.0
    }
}

impl TopicFilter {
    /// Validates `filter` as a topic filter.
    pub fn new(filter: impl Into<String>) -> Result<Self, TopicError> {
        let filter = filter.into();
        validate_topic_filter(&filter)?;
        Ok(Self(filter))
    }

    /// The filter as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The filter as an owned string.
    pub fn into_string(self) -> String {
        self.0
    }

    /// True if the filter contains `+` or `#`.
    pub fn has_wildcard(&self) -> bool {
        has_wildcard(&self.0)
    }

    /// True if `topic` matches this filter.
    pub fn matches(&self, topic: &TopicName) -> bool {
        matches(&self.0, &topic.0)
    }
}

impl From<TopicName> for TopicFilter {
    /// Every topic name is also a filter that matches exactly itself.
    fn from(name: TopicName) -> Self {
        Self(name.0)
    }
}

impl fmt::Display for TopicName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Display for TopicFilter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for TopicName {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl AsRef<str> for TopicFilter {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

/// True if `s` contains `+` or `#` anywhere.
pub fn has_wildcard(s: &str) -> bool {
    s.bytes().any(|b| b == b'+' || b == b'#')
}

fn validate_common(topic: &str) -> Result<(), TopicError> {
    if topic.is_empty() {
        return Err(TopicError::Empty);
    }
    if topic.len() > MAX_TOPIC_LEN {
        return Err(TopicError::TooLong);
    }
    if topic.contains('\0') {
        return Err(TopicError::Nul);
    }
    Ok(())
}

/// Checks the rules for a topic name (publish topic).
pub fn validate_topic_name(topic: &str) -> Result<(), TopicError> {
    validate_common(topic)?;
    if has_wildcard(topic) {
        return Err(TopicError::WildcardInName);
    }
    Ok(())
}

/// Checks the rules for a topic filter (subscription).
pub fn validate_topic_filter(filter: &str) -> Result<(), TopicError> {
    validate_common(filter)?;
    let mut levels = filter.split('/').peekable();
    while let Some(level) = levels.next() {
        let is_last = levels.peek().is_none();
        match level {
            "+" => {}
            "#" if is_last => {}
            "#" => return Err(TopicError::HashNotLast),
            other if has_wildcard(other) => return Err(TopicError::WildcardNotWholeLevel),
            _ => {}
        }
    }
    Ok(())
}

/// True if topic name `topic` matches `filter`.
///
/// Both are assumed valid (see [`validate_topic_filter`],
/// [`validate_topic_name`]); on invalid input the answer is merely
/// unspecified, never a panic.
pub fn matches(filter: &str, topic: &str) -> bool {
    if topic.starts_with('$') && (filter.starts_with('+') || filter.starts_with('#')) {
        return false;
    }
    let mut f = filter.split('/');
    let mut t = topic.split('/');
    loop {
        match (f.next(), t.next()) {
            // `#` matches the parent level too: `a/#` matches `a`.
            (Some("#"), _) => return true,
            (Some("+"), Some(_)) => {}
            (Some(fl), Some(tl)) if fl == tl => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// True if every topic matched by `filter` is also matched by `rule`
/// (used for ACL checks on subscriptions: a rule `a/#` allows subscribing to
/// `a/+/b`, a rule `a/+` does not allow `a/#`).
pub fn filter_covers(rule: &str, filter: &str) -> bool {
    if filter.starts_with('$') && (rule.starts_with('+') || rule.starts_with('#')) {
        return false;
    }
    let mut r = rule.split('/');
    let mut f = filter.split('/');
    loop {
        match (r.next(), f.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(fl)) if fl != "#" => {}
            (Some(rl), Some(fl)) if rl == fl && rl != "+" => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(TopicName::new("a/b").is_ok());
        assert!(TopicName::new("/abc").is_ok());
        assert!(TopicName::new("a//b").is_ok());
        assert!(TopicName::new("$SYS/x").is_ok());
        assert_eq!(TopicName::new(""), Err(TopicError::Empty));
        assert_eq!(TopicName::new("a/+"), Err(TopicError::WildcardInName));
        assert_eq!(TopicName::new("a/#"), Err(TopicError::WildcardInName));
        assert_eq!(TopicName::new("a+b"), Err(TopicError::WildcardInName));
        assert_eq!(TopicName::new("a\0b"), Err(TopicError::Nul));
        assert_eq!(
            TopicName::new("x".repeat(MAX_TOPIC_LEN + 1)),
            Err(TopicError::TooLong)
        );
        assert!(TopicName::new("x".repeat(MAX_TOPIC_LEN)).is_ok());
    }

    #[test]
    fn filters() {
        for ok in [
            "#", "+", "a/+", "a/#", "+/+/#", "/+", "a//+", "+/", "$SYS/#",
        ] {
            assert!(TopicFilter::new(ok).is_ok(), "{ok}");
        }
        assert_eq!(TopicFilter::new("a/#/b"), Err(TopicError::HashNotLast));
        assert_eq!(
            TopicFilter::new("a/b#"),
            Err(TopicError::WildcardNotWholeLevel)
        );
        assert_eq!(
            TopicFilter::new("a/+b"),
            Err(TopicError::WildcardNotWholeLevel)
        );
        assert_eq!(
            TopicFilter::new("##"),
            Err(TopicError::WildcardNotWholeLevel)
        );
        assert_eq!(TopicFilter::new(""), Err(TopicError::Empty));
    }

    #[test]
    fn matching() {
        assert!(matches("a/b", "a/b"));
        assert!(!matches("a/b", "a/b/c"));
        assert!(matches("a/+", "a/b"));
        assert!(!matches("a/+", "a/b/c"));
        assert!(matches("a/+", "a/"));
        assert!(matches("a/#", "a"));
        assert!(matches("a/#", "a/b/c"));
        assert!(matches("#", "a/b"));
        assert!(matches("+/+", "/abc"));
        assert!(matches("/+", "/abc"));
        assert!(!matches("+", "/abc"));
        assert!(!matches("#", "$SYS/x"));
        assert!(!matches("+/x", "$SYS/x"));
        assert!(matches("$SYS/#", "$SYS/x"));
        assert!(matches("a/+/#", "a/b"));
        assert!(!matches("a/b/+", "a/b"));
    }

    #[test]
    fn covering() {
        assert!(filter_covers("a/#", "a/+/b"));
        assert!(filter_covers("a/#", "a/#"));
        assert!(filter_covers("a/+", "a/+"));
        assert!(filter_covers("a/+", "a/b"));
        assert!(!filter_covers("a/+", "a/#"));
        assert!(!filter_covers("a/b", "a/+"));
        assert!(!filter_covers("#", "$SYS/#"));
        assert!(filter_covers("#", "x/#"));
    }
}
