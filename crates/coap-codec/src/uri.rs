//! Uri-Path and Uri-Query helpers (RFC 7252 §6.4, §6.5): splitting a URI
//! path or query string into option values (percent-decoding), joining
//! option values back (raw or percent-encoding), and query parameters.
//!
//! Option values themselves are never percent-encoded: a Uri-Path option
//! holds the decoded segment.

use std::borrow::Cow;

/// Why a URI component could not be split or joined.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, thiserror::Error)]
#[non_exhaustive]
pub enum UriError {
    /// `%` not followed by two hex digits.
    #[error("invalid percent-encoding at byte {offset}")]
    InvalidPercentEncoding {
        /// Offset of the `%`.
        offset: usize,
    },
    /// A segment or entry is not valid UTF-8.
    #[error("segment {index} is not valid UTF-8")]
    InvalidUtf8 {
        /// Index of the segment or entry.
        index: usize,
    },
}

/// One Uri-Query entry split at its first `=`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct QueryParam<'a> {
    /// The part before the first `=`, or the whole entry when it has none.
    pub key: &'a [u8],
    /// The part after the first `=`; `None` when the entry has no `=`
    /// (a flag such as `obs`), `Some(b"")` for `key=`.
    pub value: Option<&'a [u8]>,
}

impl<'a> QueryParam<'a> {
    /// The value as UTF-8, if present and valid.
    pub fn value_str(&self) -> Option<&'a str> {
        self.value.and_then(|v| std::str::from_utf8(v).ok())
    }
}

/// Splits one Uri-Query option value at its first `=`.
pub fn split_query_param(entry: &[u8]) -> QueryParam<'_> {
    match entry.iter().position(|&b| b == b'=') {
        Some(eq) => QueryParam {
            key: entry.get(..eq).unwrap_or_default(),
            value: entry.get(eq + 1..),
        },
        None => QueryParam {
            key: entry,
            value: None,
        },
    }
}

/// Finds the first entry whose key equals `key` among Uri-Query values.
pub fn find_query_param<'a>(
    entries: impl IntoIterator<Item = &'a [u8]>,
    key: &str,
) -> Option<QueryParam<'a>> {
    entries
        .into_iter()
        .map(split_query_param)
        .find(|p| p.key == key.as_bytes())
}

/// Decodes `%XX` escapes. Borrows when there is nothing to decode.
pub fn percent_decode(input: &[u8]) -> Result<Cow<'_, [u8]>, UriError> {
    let Some(first) = input.iter().position(|&b| b == b'%') else {
        return Ok(Cow::Borrowed(input));
    };
    let mut out = Vec::with_capacity(input.len());
    out.extend_from_slice(input.get(..first).unwrap_or_default());
    let mut i = first;
    while let Some(&b) = input.get(i) {
        if b == b'%' {
            let hi = input.get(i + 1).copied().and_then(hex_value);
            let lo = input.get(i + 2).copied().and_then(hex_value);
            match (hi, lo) {
                (Some(hi), Some(lo)) => out.push((hi << 4) | lo),
                _ => return Err(UriError::InvalidPercentEncoding { offset: i }),
            }
            i += 3;
        } else {
            out.push(b);
            i += 1;
        }
    }
    Ok(Cow::Owned(out))
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Appends `segment` to `out`, percent-encoding every byte that is not an
/// RFC 3986 `pchar` (unreserved, sub-delims, `:` or `@`). `/`, `?`, `%`,
/// `&`-free callers can rely on the result splitting back into one segment.
pub fn percent_encode_segment(segment: &[u8], out: &mut String) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for &b in segment {
        let plain = b.is_ascii_alphanumeric()
            || matches!(
                b,
                b'-' | b'.'
                    | b'_'
                    | b'~'
                    | b'!'
                    | b'$'
                    | b'\''
                    | b'('
                    | b')'
                    | b'*'
                    | b'+'
                    | b','
                    | b';'
                    | b':'
                    | b'@'
            );
        if plain {
            out.push(char::from(b));
        } else {
            out.push('%');
            out.push(char::from(
                HEX.get(usize::from(b >> 4)).copied().unwrap_or(b'0'),
            ));
            out.push(char::from(
                HEX.get(usize::from(b & 0x0f)).copied().unwrap_or(b'0'),
            ));
        }
    }
}

/// Joins Uri-Path values with `/` as they are (no leading `/`, no
/// escaping): `["ps", "a", "b"]` → `"ps/a/b"`. A segment that itself holds
/// a `/` is copied as is; use [`join_path_encoded`] when that must stay
/// distinguishable.
pub fn join_path<'a>(segments: impl IntoIterator<Item = &'a [u8]>) -> Result<String, UriError> {
    let mut out = String::new();
    for (index, seg) in segments.into_iter().enumerate() {
        if index > 0 {
            out.push('/');
        }
        out.push_str(std::str::from_utf8(seg).map_err(|_| UriError::InvalidUtf8 { index })?);
    }
    Ok(out)
}

/// Joins Uri-Path values into an RFC 3986 path with a leading `/`,
/// percent-encoding each segment (RFC 7252 §6.5 steps 8–9).
pub fn join_path_encoded<'a>(segments: impl IntoIterator<Item = &'a [u8]>) -> String {
    let mut out = String::new();
    for seg in segments {
        out.push('/');
        percent_encode_segment(seg, &mut out);
    }
    if out.is_empty() {
        out.push('/');
    }
    out
}

/// Splits a URI path into percent-decoded Uri-Path values (RFC 7252 §6.4
/// step 8): one leading `/` is dropped; `""` and `"/"` give no segments;
/// empty segments in between are kept.
pub fn split_path(path: &str) -> impl Iterator<Item = Result<Cow<'_, [u8]>, UriError>> + '_ {
    let trimmed = path.strip_prefix('/').unwrap_or(path);
    let base = path.len() - trimmed.len();
    split_component(trimmed, b'/', base)
}

/// Splits a URI query (without the `?`) into percent-decoded Uri-Query
/// values (RFC 7252 §6.4 step 9): separated by `&`; `""` gives none.
pub fn split_query(query: &str) -> impl Iterator<Item = Result<Cow<'_, [u8]>, UriError>> + '_ {
    let trimmed = query.strip_prefix('?').unwrap_or(query);
    let base = query.len() - trimmed.len();
    split_component(trimmed, b'&', base)
}

fn split_component(
    s: &str,
    sep: u8,
    base: usize,
) -> impl Iterator<Item = Result<Cow<'_, [u8]>, UriError>> + '_ {
    let bytes = s.as_bytes();
    let mut start = 0usize;
    let mut done = bytes.is_empty();
    std::iter::from_fn(move || {
        if done {
            return None;
        }
        let rest = bytes.get(start..).unwrap_or_default();
        let (piece, next) = match rest.iter().position(|&b| b == sep) {
            Some(p) => (rest.get(..p).unwrap_or_default(), Some(start + p + 1)),
            None => (rest, None),
        };
        let piece_start = start;
        match next {
            Some(n) => start = n,
            None => done = true,
        }
        Some(percent_decode(piece).map_err(|e| match e {
            UriError::InvalidPercentEncoding { offset } => UriError::InvalidPercentEncoding {
                offset: base + piece_start + offset,
            },
            other => other,
        }))
    })
}

/// Joins Uri-Query values into a query string (without `?`), percent-encoding
/// each entry but keeping its first `=` (RFC 7252 §6.5 step 10).
pub fn join_query_encoded<'a>(entries: impl IntoIterator<Item = &'a [u8]>) -> String {
    let mut out = String::new();
    for (index, entry) in entries.into_iter().enumerate() {
        if index > 0 {
            out.push('&');
        }
        let param = split_query_param(entry);
        percent_encode_segment(param.key, &mut out);
        if let Some(v) = param.value {
            out.push('=');
            percent_encode_segment(v, &mut out);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn collect(it: impl Iterator<Item = Result<Cow<'static, [u8]>, UriError>>) -> Vec<Vec<u8>> {
        it.map(|r| r.unwrap().into_owned()).collect()
    }

    #[test]
    fn split_path_follows_rfc_7252_6_4() {
        assert!(collect(split_path("")).is_empty());
        assert!(collect(split_path("/")).is_empty());
        assert_eq!(
            collect(split_path("/ps/a/b")),
            vec![b"ps".to_vec(), b"a".to_vec(), b"b".to_vec()]
        );
        assert_eq!(
            collect(split_path("a//b")),
            vec![b"a".to_vec(), vec![], b"b".to_vec()]
        );
        assert_eq!(
            collect(split_path("/a%2Fb/%C3%A4")),
            vec![b"a/b".to_vec(), "ä".as_bytes().to_vec()]
        );
        assert_eq!(
            split_path("/ok/bad%2").nth(1),
            Some(Err(UriError::InvalidPercentEncoding { offset: 7 }))
        );
    }

    #[test]
    fn query_params_with_and_without_value() {
        let entries: [&[u8]; 4] = [b"c=client1", b"obs", b"t=", b"x=a=b"];
        let p = find_query_param(entries, "c").unwrap();
        assert_eq!(p.value_str(), Some("client1"));
        assert_eq!(find_query_param(entries, "obs").unwrap().value, None);
        assert_eq!(
            find_query_param(entries, "t").unwrap().value,
            Some(&b""[..])
        );
        assert_eq!(
            find_query_param(entries, "x").unwrap().value,
            Some(&b"a=b"[..])
        );
        assert_eq!(find_query_param(entries, "missing"), None);
        assert_eq!(
            collect(split_query("?a=1&b")),
            vec![b"a=1".to_vec(), b"b".to_vec()]
        );
    }

    #[test]
    fn join_round_trips_through_split() {
        let segs: [&[u8]; 3] = [b"a b", b"c/d", "ü".as_bytes()];
        let joined = join_path_encoded(segs);
        assert_eq!(joined, "/a%20b/c%2Fd/%C3%BC");
        let back = collect(split_path(Box::leak(joined.into_boxed_str())));
        assert_eq!(back, segs.iter().map(|s| s.to_vec()).collect::<Vec<_>>());
        assert_eq!(join_path([&b"ps"[..], b"t"]).unwrap(), "ps/t");
        assert_eq!(
            join_path([&[0xff][..]]),
            Err(UriError::InvalidUtf8 { index: 0 })
        );
        assert_eq!(join_path_encoded([]), "/");
        assert_eq!(join_query_encoded([&b"a=1 2"[..], b"f"]), "a=1%202&f");
    }
}
