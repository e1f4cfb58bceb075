//! Keeping secrets out of logs: the values of `password`, `p`, `token` and
//! `t` query parameters are replaced by `***` in any URI or query string
//! before it is logged.

use std::borrow::Cow;

/// Query keys whose values are secrets.
pub const SECRET_KEYS: [&str; 4] = ["password", "p", "token", "t"];

/// The URI or query with secret values replaced by `***`.
///
/// Accepts `path?query` or a bare `query`; parameters are separated by `&`
/// (CoAP Uri-Query options joined for logging). A key is compared
/// case-sensitively, as EMQX does.
///
/// ```
/// use emqx_coap::redact::redact_uri;
/// assert_eq!(redact_uri("ps/a?c=1&p=secret"), "ps/a?c=1&p=***");
/// assert_eq!(redact_uri("mqtt/connection?clientid=x&token=42"), "mqtt/connection?clientid=x&token=***");
/// ```
pub fn redact_uri(uri: &str) -> Cow<'_, str> {
    let (path, query) = match uri.split_once('?') {
        Some((path, query)) => (Some(path), query),
        None if uri.contains('=') => (None, uri),
        None => return Cow::Borrowed(uri),
    };
    let has_secret = query
        .split('&')
        .any(|pair| SECRET_KEYS.contains(&pair.split_once('=').map_or(pair, |(k, _)| k)));
    if !has_secret {
        return Cow::Borrowed(uri);
    }
    let mut out = String::with_capacity(uri.len());
    if let Some(path) = path {
        out.push_str(path);
        out.push('?');
    }
    for (i, pair) in query.split('&').enumerate() {
        if i > 0 {
            out.push('&');
        }
        match pair.split_once('=') {
            Some((key, _)) if SECRET_KEYS.contains(&key) => {
                out.push_str(key);
                out.push_str("=***");
            }
            _ => out.push_str(pair),
        }
    }
    Cow::Owned(out)
}

/// One Uri-Query option value (`key=value`) redacted for logging.
pub fn redact_query_option(option: &str) -> Cow<'_, str> {
    match option.split_once('=') {
        Some((key, _)) if SECRET_KEYS.contains(&key) => Cow::Owned(format!("{key}=***")),
        _ => Cow::Borrowed(option),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_all_secret_keys() {
        assert_eq!(redact_uri("ps/a?c=1&p=***"), "ps/a?c=1&p=***");
        assert_eq!(
            redact_uri("mqtt/connection?clientid=c&username=u&password=hunter2"),
            "mqtt/connection?clientid=c&username=u&password=***"
        );
        assert_eq!(
            redact_uri("ps/x?t=123&token=456&q=1"),
            "ps/x?t=***&token=***&q=1"
        );
        assert_eq!(redact_uri("c=1&p=x"), "c=1&p=***");
        assert_eq!(redact_uri("p=x=y"), "p=***");
    }

    #[test]
    fn leaves_other_text_alone() {
        assert!(matches!(redact_uri("ps/a?c=1&q=1"), Cow::Borrowed(_)));
        assert_eq!(redact_uri("ps/p/t"), "ps/p/t");
        assert_eq!(redact_uri("ps/a?pp=1&tt=2&P=3"), "ps/a?pp=1&tt=2&P=3");
        assert_eq!(redact_uri("ps/a?p"), "ps/a?p");
        assert_eq!(redact_uri(""), "");
    }

    #[test]
    fn single_option() {
        assert_eq!(redact_query_option("password=x"), "password=***");
        assert_eq!(redact_query_option("clientid=x"), "clientid=x");
    }
}
