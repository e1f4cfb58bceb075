//! Layered configuration: flags > environment > TOML file > defaults.
//!
//! A binary keeps two structs:
//!
//! * the **config** struct (`C`): `Default + Serialize + DeserializeOwned`,
//!   annotated `#[serde(default, deny_unknown_fields)]`, holding every knob.
//!   It is what the rest of the program sees and what `--print-config` prints.
//! * the **clap** struct (`A`): `clap::Parser + Serialize`, one field per flag,
//!   with the same name as the config key (clap's argument id and serde's key
//!   must agree; a dotted id such as `#[arg(id = "dtls.listen")]` together with
//!   `#[serde(rename = "dtls.listen")]` addresses a key in a nested table).
//!   Fields that are not config keys (`--config`, `--print-config`) carry
//!   `#[serde(skip)]`.
//!
//! [`overrides_from_args`] serializes the clap struct and keeps only the keys
//! whose [`ValueSource`] is the command line or the environment, so a clap
//! `default_value` (shown in `--help`) never hides a value from the file.
//! [`load`] then reads the file, checks it against `C` (a mistake gives one
//! line naming the file, line, column and key), lays the overrides over it
//! and deserializes the result; keys present nowhere take `C::default()`.
//!
//! ```text
//!  argv + env ──clap──▶ A ──overrides_from_args──▶ Table (flags/env only) ─┐
//!  --config FILE ──read + check against C──────────▶ Table (file) ──────────┴─merge─▶ C
//! ```

use std::path::{Path, PathBuf};

use clap::ArgMatches;
use clap::parser::ValueSource;
use serde::Serialize;
use serde::de::DeserializeOwned;
use toml::{Table, Value};

/// Why a configuration could not be loaded or rendered.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The config file could not be read.
    #[error("config file {path}: {source}")]
    Read {
        /// The file named by `--config`.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The config file is not valid TOML or does not fit the config struct.
    ///
    /// Displayed on one line, e.g.
    /// ``config file gw.toml: line 3, column 13, key `heartbeat`: duration "3x" has unknown unit "x" (...)``.
    #[error("{}", FileErrorLine { path, line, column, key, message })]
    File {
        /// The file named by `--config`.
        path: PathBuf,
        /// 1-based line of the offending text, when known.
        line: Option<usize>,
        /// 1-based column (in characters) of the offending text, when known.
        column: Option<usize>,
        /// Dotted key the error is about, when it can be told.
        key: Option<String>,
        /// What is wrong, one line.
        message: String,
    },
    /// A value given by flag or environment variable does not fit the config struct.
    #[error("command line or environment: {message}")]
    Override {
        /// What is wrong, one line.
        message: String,
    },
    /// The clap struct could not be turned into a table of keys (a programming error).
    #[error("cannot map command-line arguments to config keys: {message}")]
    Args {
        /// What is wrong.
        message: String,
    },
    /// The effective configuration could not be serialized as TOML.
    #[error("cannot render configuration as TOML: {message}")]
    Render {
        /// What is wrong.
        message: String,
    },
}

/// Renders `config file P: line L, column C, key `K`: message` with the parts that are known.
struct FileErrorLine<'a> {
    path: &'a Path,
    line: &'a Option<usize>,
    column: &'a Option<usize>,
    key: &'a Option<String>,
    message: &'a str,
}

impl std::fmt::Display for FileErrorLine<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "config file {}: ", self.path.display())?;
        let mut parts = Vec::with_capacity(3);
        if let Some(line) = self.line {
            parts.push(format!("line {line}"));
        }
        if let Some(column) = self.column {
            parts.push(format!("column {column}"));
        }
        if let Some(key) = self.key {
            parts.push(format!("key `{key}`"));
        }
        if !parts.is_empty() {
            write!(f, "{}: ", parts.join(", "))?;
        }
        f.write_str(self.message)
    }
}

/// The keys of `args` that were given on the command line or through an
/// environment variable, as a (possibly nested) TOML table.
///
/// `args` is the parsed clap struct and `matches` the [`ArgMatches`] it came
/// from (see [`crate::startup::parse_args`], which returns both). A key is kept
/// only when an argument with the same id is present in `matches` with
/// [`ValueSource::CommandLine`] or [`ValueSource::EnvVariable`]; values that
/// come from clap defaults, and fields that are `None`, are dropped. A dotted
/// key (`"dtls.listen"`) is placed into nested tables.
pub fn overrides_from_args<A: Serialize>(
    args: &A,
    matches: &ArgMatches,
) -> Result<Table, ConfigError> {
    let flat = crate::redact::with_secrets_exposed(|| Table::try_from(args)).map_err(|e| {
        ConfigError::Args {
            message: one_line(&e.to_string()),
        }
    })?;
    let mut overrides = Table::new();
    for (key, value) in flat {
        let given = matches.ids().any(|id| {
            id.as_str() == key
                && matches!(
                    matches.value_source(id.as_str()),
                    Some(ValueSource::CommandLine | ValueSource::EnvVariable)
                )
        });
        if given {
            insert_dotted(&mut overrides, &key, value);
        }
    }
    Ok(overrides)
}

/// Builds the effective config: `overrides` (flags and environment) over the
/// TOML `file` (if any) over `C::default()`.
///
/// `C` must be `#[serde(default)]` so a partial file is complete, and should
/// be `#[serde(deny_unknown_fields)]` so a misspelt key is an error rather
/// than silently ignored. Errors in the file name the file, line, column and
/// key on one line.
pub fn load<C: DeserializeOwned>(file: Option<&Path>, overrides: Table) -> Result<C, ConfigError> {
    let mut merged = match file {
        Some(path) => read_file::<C>(path)?,
        None => Table::new(),
    };
    merge_tables(&mut merged, overrides);
    merged
        .try_into()
        .map_err(|e: toml::de::Error| ConfigError::Override {
            message: one_line(e.message()),
        })
}

/// [`overrides_from_args`] followed by [`load`]: the one call most binaries need.
pub fn load_layered<C: DeserializeOwned, A: Serialize>(
    args: &A,
    matches: &ArgMatches,
    file: Option<&Path>,
) -> Result<C, ConfigError> {
    load(file, overrides_from_args(args, matches)?)
}

/// The effective configuration as TOML, for `--print-config`.
///
/// Fields wrapped in [`crate::Redact`] print as `"***"`; fields that are
/// `None` are left out.
pub fn render<C: Serialize>(config: &C) -> Result<String, ConfigError> {
    toml::to_string_pretty(config).map_err(|e| ConfigError::Render {
        message: one_line(&e.to_string()),
    })
}

/// Reads `path`, checks it against `C` (for positioned errors) and returns it as a table.
fn read_file<C: DeserializeOwned>(path: &Path) -> Result<Table, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    // Deserializing the file alone into `C` is what gives errors a span in
    // *this* text; after merging, positions would be lost.
    if let Err(e) = toml::from_str::<C>(&text) {
        return Err(file_error(path, &text, &e));
    }
    toml::from_str::<Table>(&text).map_err(|e| file_error(path, &text, &e))
}

fn file_error(path: &Path, text: &str, error: &toml::de::Error) -> ConfigError {
    let position = error.span().map(|span| locate(text, span.start));
    ConfigError::File {
        path: path.to_path_buf(),
        line: position.as_ref().map(|p| p.line),
        column: position.as_ref().map(|p| p.column),
        key: position.and_then(|p| p.key),
        message: one_line(error.message()),
    }
}

struct Position {
    line: usize,
    column: usize,
    key: Option<String>,
}

/// Line, column and the dotted key at byte `offset` of a TOML document.
///
/// The key is read from the text: the current `[table]` header, plus the
/// `key =` on the offending line. That is a heuristic (toml does not expose
/// the key path of an error), good for the one-key-per-line files people write.
fn locate(text: &str, offset: usize) -> Position {
    let offset = offset.min(text.len());
    let before = text.get(..offset).unwrap_or(text);
    let line_index = before.matches('\n').count();
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = text
        .get(line_start..offset)
        .map_or(0, |s| s.chars().count())
        + 1;
    let line_text = text.lines().nth(line_index).unwrap_or("");

    let header = |line: &str| -> Option<String> {
        let t = line.trim();
        let t = t.strip_prefix('[')?;
        let t = t.strip_prefix('[').unwrap_or(t);
        let end = t.find(']')?;
        t.get(..end).map(|s| s.trim().to_owned())
    };
    let key = if let Some(h) = header(line_text) {
        Some(h)
    } else {
        let table = text.lines().take(line_index).filter_map(header).last();
        let local = line_text
            .split_once('=')
            .map(|(k, _)| k.trim().trim_matches('"').to_owned())
            .filter(|k| !k.is_empty() && !k.starts_with('#'));
        match (table, local) {
            (Some(t), Some(k)) => Some(format!("{t}.{k}")),
            (None, Some(k)) => Some(k),
            (Some(t), None) => Some(t),
            (None, None) => None,
        }
    };
    Position {
        line: line_index + 1,
        column,
        key,
    }
}

/// Puts `value` at the dotted `key` path, creating intermediate tables.
fn insert_dotted(table: &mut Table, key: &str, value: Value) {
    let mut parts: Vec<&str> = key.split('.').collect();
    let Some(last) = parts.pop() else {
        return;
    };
    let mut current = table;
    for part in parts {
        let entry = current
            .entry(part.to_owned())
            .or_insert_with(|| Value::Table(Table::new()));
        if !entry.is_table() {
            *entry = Value::Table(Table::new());
        }
        match entry {
            Value::Table(t) => current = t,
            _ => return,
        }
    }
    current.insert(last.to_owned(), value);
}

/// Deep merge: tables merge key by key, any other value in `top` replaces.
fn merge_tables(base: &mut Table, top: Table) {
    for (key, value) in top {
        match (base.get_mut(&key), value) {
            (Some(Value::Table(b)), Value::Table(t)) => merge_tables(b, t),
            (_, value) => {
                base.insert(key, value);
            }
        }
    }
}

/// Collapses a possibly multi-line message into one line.
pub(crate) fn one_line(message: &str) -> String {
    message
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locate_finds_table_and_key() {
        let text = "a = 1\n[dtls]\nlisten = \"x\"\n";
        let offset = text.find("\"x\"").unwrap();
        let p = locate(text, offset);
        assert_eq!((p.line, p.column), (3, 10));
        assert_eq!(p.key.as_deref(), Some("dtls.listen"));
    }

    #[test]
    fn insert_dotted_builds_nested_tables() {
        let mut t = Table::new();
        insert_dotted(&mut t, "dtls.listen", Value::String("x".into()));
        insert_dotted(&mut t, "udp", Value::Integer(1));
        assert_eq!(t["dtls"]["listen"].as_str(), Some("x"));
        assert_eq!(t["udp"].as_integer(), Some(1));
    }

    #[test]
    fn merge_is_deep() {
        let mut base: Table = toml::from_str("[a]\nx = 1\ny = 2\n").unwrap();
        let top: Table = toml::from_str("[a]\ny = 3\n").unwrap();
        merge_tables(&mut base, top);
        assert_eq!(base["a"]["x"].as_integer(), Some(1));
        assert_eq!(base["a"]["y"].as_integer(), Some(3));
    }
}

#[cfg(test)]
mod load_tests {
    use super::*;
    #[derive(serde::Serialize, Default)]
    struct Inner {
        a: u8,
    }
    #[derive(serde::Serialize, Default)]
    struct Outer {
        inner: Inner,
        after: u8,
        none: Option<u8>,
    }

    #[derive(Debug, serde::Deserialize, PartialEq)]
    #[serde(default, deny_unknown_fields)]
    struct Port {
        port: u16,
    }

    impl Default for Port {
        fn default() -> Self {
            Port { port: 5683 }
        }
    }

    #[test]
    fn override_that_does_not_fit_is_an_override_error() {
        let mut overrides = Table::new();
        overrides.insert("port".into(), Value::String("x".into()));
        let err = load::<Port>(None, overrides).unwrap_err();
        assert!(matches!(err, ConfigError::Override { .. }), "{err}");
        assert!(
            err.to_string().starts_with("command line or environment: "),
            "{err}"
        );
        assert_eq!(load::<Port>(None, Table::new()).unwrap(), Port::default());
    }

    #[test]
    fn nested_table_before_plain_value_renders() {
        let text = render(&Outer::default()).unwrap();
        assert_eq!(text, "after = 0\n\n[inner]\na = 0\n");
    }
}
