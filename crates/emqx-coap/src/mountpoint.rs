//! Mountpoint: a per-client topic prefix with `${clientid}` / `${username}`
//! placeholders (EMQX `mountpoint`).
//!
//! The prefix is put in front of every topic a device publishes to and every
//! filter it subscribes to, and taken off topics of messages delivered back
//! to it, so the device never sees it.
//!
//! A placeholder value that contains `/`, `+` or `#` is refused **(beyond
//! EMQX)**: otherwise a client id `a/b` could reach the namespace of client
//! `a`, and `#` would turn a publish topic into a wildcard.

use crate::topic::{TopicError, TopicFilter, TopicName, has_wildcard};

/// Why a mountpoint could not be applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MountpointError {
    /// The template uses `${clientid}` but the client has none.
    #[error("mountpoint needs a clientid")]
    MissingClientId,
    /// The template uses `${username}` but the client has none.
    #[error("mountpoint needs a username")]
    MissingUsername,
    /// A placeholder value contains `/`, `+` or `#`.
    #[error("{0} contains '/', '+' or '#' and cannot be used in a mountpoint")]
    UnsafeValue(&'static str),
    /// The mounted topic is not valid (e.g. too long).
    #[error("mounted topic is invalid: {0}")]
    Topic(#[from] TopicError),
}

/// A mountpoint template such as `devices/${clientid}/`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Mountpoint {
    template: String,
}

impl Mountpoint {
    /// A mountpoint from its template; the empty template mounts nothing.
    pub fn new(template: impl Into<String>) -> Self {
        Self {
            template: template.into(),
        }
    }

    /// True if the template is empty.
    pub fn is_empty(&self) -> bool {
        self.template.is_empty()
    }

    /// The prefix for one client, placeholders replaced.
    pub fn prefix(
        &self,
        clientid: Option<&str>,
        username: Option<&str>,
    ) -> Result<String, MountpointError> {
        // One pass over the template, so a value that itself looks like a
        // placeholder is never expanded again.
        let mut out = String::with_capacity(self.template.len() + 32);
        let mut rest = self.template.as_str();
        while let Some(pos) = rest.find("${") {
            let (before, at) = rest.split_at(pos);
            out.push_str(before);
            if let Some(after) = at.strip_prefix("${clientid}") {
                let v = clientid.ok_or(MountpointError::MissingClientId)?;
                check_value(v, "clientid")?;
                out.push_str(v);
                rest = after;
            } else if let Some(after) = at.strip_prefix("${username}") {
                let v = username.ok_or(MountpointError::MissingUsername)?;
                check_value(v, "username")?;
                out.push_str(v);
                rest = after;
            } else {
                out.push_str("${");
                rest = at.get(2..).unwrap_or_default();
            }
        }
        out.push_str(rest);
        Ok(out)
    }

    /// `topic` with the client's prefix in front (for publishing).
    pub fn mount_name(
        &self,
        clientid: Option<&str>,
        username: Option<&str>,
        topic: &TopicName,
    ) -> Result<TopicName, MountpointError> {
        if self.is_empty() {
            return Ok(topic.clone());
        }
        let prefix = self.prefix(clientid, username)?;
        Ok(TopicName::new(prefix + topic.as_str())?)
    }

    /// `filter` with the client's prefix in front (for subscribing).
    pub fn mount_filter(
        &self,
        clientid: Option<&str>,
        username: Option<&str>,
        filter: &TopicFilter,
    ) -> Result<TopicFilter, MountpointError> {
        if self.is_empty() {
            return Ok(filter.clone());
        }
        let prefix = self.prefix(clientid, username)?;
        Ok(TopicFilter::new(prefix + filter.as_str())?)
    }

    /// `topic` without the client's prefix, for what the device sees.
    /// `None` if the topic does not carry this client's prefix.
    pub fn strip<'t>(
        &self,
        clientid: Option<&str>,
        username: Option<&str>,
        topic: &'t str,
    ) -> Option<&'t str> {
        if self.is_empty() {
            return Some(topic);
        }
        let prefix = self.prefix(clientid, username).ok()?;
        topic.strip_prefix(prefix.as_str())
    }
}

fn check_value(v: &str, what: &'static str) -> Result<(), MountpointError> {
    if v.contains('/') || has_wildcard(v) {
        return Err(MountpointError::UnsafeValue(what));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mount_and_strip() {
        let m = Mountpoint::new("gw/${clientid}/${username}/");
        let t = TopicName::new("temp").unwrap();
        let mounted = m.mount_name(Some("c1"), Some("u1"), &t).unwrap();
        assert_eq!(mounted.as_str(), "gw/c1/u1/temp");
        assert_eq!(
            m.strip(Some("c1"), Some("u1"), mounted.as_str()),
            Some("temp")
        );
        assert_eq!(m.strip(Some("c2"), Some("u1"), mounted.as_str()), None);
        let f = TopicFilter::new("a/#").unwrap();
        assert_eq!(
            m.mount_filter(Some("c1"), Some("u1"), &f).unwrap().as_str(),
            "gw/c1/u1/a/#"
        );
    }

    #[test]
    fn empty_mountpoint_is_identity() {
        let m = Mountpoint::default();
        let t = TopicName::new("a/b").unwrap();
        assert_eq!(m.mount_name(None, None, &t).unwrap(), t);
        assert_eq!(m.strip(None, None, "a/b"), Some("a/b"));
    }

    #[test]
    fn refuses_missing_and_unsafe_values() {
        let m = Mountpoint::new("d/${clientid}/");
        let t = TopicName::new("x").unwrap();
        assert_eq!(
            m.mount_name(None, None, &t),
            Err(MountpointError::MissingClientId)
        );
        assert_eq!(
            m.mount_name(Some("a/b"), None, &t),
            Err(MountpointError::UnsafeValue("clientid"))
        );
        assert_eq!(
            m.mount_name(Some("#"), None, &t),
            Err(MountpointError::UnsafeValue("clientid"))
        );
        let m = Mountpoint::new("${username}/");
        assert_eq!(
            m.mount_name(Some("c"), None, &t),
            Err(MountpointError::MissingUsername)
        );
        let m = Mountpoint::new("${clientid}/${x}/");
        assert_eq!(
            m.mount_name(Some("${username}"), Some("u"), &t)
                .unwrap()
                .as_str(),
            "${username}/${x}/x"
        );
        // A literal wildcard in the template itself makes the topic invalid.
        let m = Mountpoint::new("a/+/");
        assert_eq!(
            m.mount_name(None, None, &t),
            Err(MountpointError::Topic(TopicError::WildcardInName))
        );
    }
}
