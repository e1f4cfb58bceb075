//! Rendering CoRE Link Format (RFC 6690) for `/.well-known/core`.
//!
//! Which resources exist is the application's business; this only turns a
//! list of them into the `application/link-format` payload.

use std::fmt::Write as _;

/// One resource to list in `/.well-known/core`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LinkResource {
    /// The path, e.g. `/sensors/temp` (a leading `/` is added if missing).
    pub path: String,
    /// Link attributes in order, e.g. `("rt", Some("temperature"))`,
    /// `("obs", None)`. String values are quoted unless they are a bare
    /// number (as `ct` and `sz` are).
    pub attributes: Vec<(String, Option<String>)>,
}

impl LinkResource {
    /// A resource with no attributes.
    pub fn new(path: impl Into<String>) -> Self {
        LinkResource {
            path: path.into(),
            attributes: Vec::new(),
        }
    }

    /// Adds `name=value`.
    pub fn with_attribute(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.attributes.push((name.into(), Some(value.into())));
        self
    }

    /// Adds a flag attribute such as `obs`.
    pub fn with_flag(mut self, name: impl Into<String>) -> Self {
        self.attributes.push((name.into(), None));
        self
    }
}

/// Renders resources as RFC 6690 link-format, e.g.
/// `</time>;obs;rt="clock",</large>;sz=4096`.
///
/// Quotes and backslashes inside quoted values are escaped.
pub fn render_link_format(resources: &[LinkResource]) -> String {
    let mut out = String::new();
    for (index, resource) in resources.iter().enumerate() {
        if index > 0 {
            out.push(',');
        }
        out.push('<');
        if !resource.path.starts_with('/') {
            out.push('/');
        }
        out.push_str(&resource.path);
        out.push('>');
        for (name, value) in &resource.attributes {
            out.push(';');
            out.push_str(name);
            if let Some(value) = value {
                if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
                    let _ = write!(out, "={value}");
                } else {
                    out.push_str("=\"");
                    for c in value.chars() {
                        if c == '"' || c == '\\' {
                            out.push('\\');
                        }
                        out.push(c);
                    }
                    out.push('"');
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_paths_flags_numbers_and_quoted_strings() {
        let text = render_link_format(&[
            LinkResource::new("/time")
                .with_flag("obs")
                .with_attribute("rt", "clock"),
            LinkResource::new("large").with_attribute("sz", "4096"),
            LinkResource::new("/q").with_attribute("title", "a \"b\""),
        ]);
        assert_eq!(
            text,
            r#"</time>;obs;rt="clock",</large>;sz=4096,</q>;title="a \"b\"""#
        );
    }

    #[test]
    fn empty_list_is_empty_string() {
        assert_eq!(render_link_format(&[]), "");
    }
}
