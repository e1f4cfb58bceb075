//! Secrets that must not leak into logs, `Debug` output or `--print-config`.

use std::cell::Cell;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The text printed in place of a secret.
pub const REDACTED: &str = "***";

thread_local! {
    /// Set while [`crate::config::overrides_from_args`] turns the clap struct
    /// into config keys: there a secret given by flag must pass through.
    static EXPOSE_SECRETS: Cell<bool> = const { Cell::new(false) };
}

/// Runs `f` with secrets serialized as their real values on this thread.
pub(crate) fn with_secrets_exposed<R>(f: impl FnOnce() -> R) -> R {
    struct Restore(bool);
    impl Drop for Restore {
        fn drop(&mut self) {
            EXPOSE_SECRETS.with(|e| e.set(self.0));
        }
    }
    let _restore = Restore(EXPOSE_SECRETS.with(|e| e.replace(true)));
    f()
}

fn secrets_exposed() -> bool {
    EXPOSE_SECRETS.with(Cell::get)
}

/// A secret value: `Debug` and `Serialize` print `"***"`, deserializing and
/// parsing (for clap) read the real value, and [`Redact::expose`] hands it out
/// on purpose. It may be used in the clap struct too: while
/// [`crate::config::overrides_from_args`] reads flags, the real value passes.
///
/// There is deliberately no `Display`: formatting a secret needs an explicit
/// `expose()` at the call site.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Redact<T>(T);

impl<T> Redact<T> {
    /// Wraps a secret.
    pub fn new(secret: T) -> Self {
        Redact(secret)
    }

    /// The secret itself; every call site is a place where it may leak.
    pub fn expose(&self) -> &T {
        &self.0
    }

    /// Unwraps the secret.
    pub fn into_inner(self) -> T {
        self.0
    }
}

impl<T> From<T> for Redact<T> {
    fn from(secret: T) -> Self {
        Redact(secret)
    }
}

impl<T> fmt::Debug for Redact<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

impl<T: Serialize> Serialize for Redact<T> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if secrets_exposed() {
            self.0.serialize(serializer)
        } else {
            serializer.serialize_str(REDACTED)
        }
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Redact<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        T::deserialize(deserializer).map(Redact)
    }
}

impl<T: FromStr> FromStr for Redact<T> {
    type Err = T::Err;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        T::from_str(s).map(Redact)
    }
}

/// A URL that may carry a password (`amqp://user:pass@host/vhost`,
/// `mqtt://user:pass@host:1883`): `Display`, `Debug` and `Serialize` show it
/// with the password replaced by `***`, so the host stays visible in logs and
/// `--print-config`. [`SecretUrl::expose`] gives the real URL for connecting.
#[derive(Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct SecretUrl(String);

impl SecretUrl {
    /// Wraps a URL.
    pub fn new(url: impl Into<String>) -> Self {
        SecretUrl(url.into())
    }

    /// The URL with its password, for the connection itself.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The URL with any password replaced by `***`.
    pub fn redacted(&self) -> String {
        redact_url_password(&self.0)
    }
}

impl FromStr for SecretUrl {
    type Err = std::convert::Infallible;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(SecretUrl(s.to_owned()))
    }
}

impl fmt::Display for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

impl fmt::Debug for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.redacted())
    }
}

impl Serialize for SecretUrl {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if secrets_exposed() {
            serializer.serialize_str(&self.0)
        } else {
            serializer.serialize_str(&self.redacted())
        }
    }
}

/// Replaces the password of `scheme://user:password@host...` with `***`.
///
/// Text without a `scheme://` or without a password in its authority is
/// returned as is.
pub fn redact_url_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    // The last '@' ends the userinfo (a password may itself contain '@' unescaped).
    let Some(at) = authority.rfind('@') else {
        return url.to_owned();
    };
    let (userinfo, host) = authority.split_at(at);
    match userinfo.split_once(':') {
        Some((user, _password)) => format!("{scheme}://{user}:{REDACTED}{host}{tail}"),
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redact_hides_debug_and_serialize() {
        let secret = Redact::new("hono-secret".to_owned());
        assert_eq!(format!("{secret:?}"), "***");
        assert_eq!(serde_json::to_string(&secret).unwrap(), "\"***\"");
        assert_eq!(secret.expose(), "hono-secret");
        let back: Redact<String> = serde_json::from_str("\"x\"").unwrap();
        assert_eq!(back.expose(), "x");
    }

    #[test]
    fn url_password_is_replaced() {
        assert_eq!(
            redact_url_password("amqp://guest:guest@127.0.0.1:5672/%2f"),
            "amqp://guest:***@127.0.0.1:5672/%2f"
        );
        assert_eq!(
            redact_url_password("mqtt://u:p@ss@h:1883"),
            "mqtt://u:***@h:1883"
        );
        assert_eq!(redact_url_password("mqtt://h:1883"), "mqtt://h:1883");
        assert_eq!(redact_url_password("mqtt://user@h"), "mqtt://user@h");
        assert_eq!(redact_url_password("embedded"), "embedded");
        let url = SecretUrl::new("amqp://a:b@h/v?x=@");
        assert_eq!(url.to_string(), "amqp://a:***@h/v?x=@");
        assert_eq!(format!("{url:?}"), "\"amqp://a:***@h/v?x=@\"");
        assert_eq!(url.expose(), "amqp://a:b@h/v?x=@");
    }
}
