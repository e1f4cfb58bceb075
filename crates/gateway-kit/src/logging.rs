//! Logging set-up: `tracing` events as text or JSON lines on stderr.
//!
//! The level comes from `--log` when given, else from `RUST_LOG`, else
//! `info`. Both accept `tracing_subscriber`'s filter syntax
//! (`debug`, `info,emqx_coap=trace`). Logs go to stderr so stdout stays free
//! for program output such as `--print-config`.

use std::io;

use serde::{Deserialize, Serialize};
use tracing::Subscriber;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;

/// How log lines are written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum LogFormat {
    /// Human-readable text, one line per event.
    #[default]
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

/// The level used when neither `--log` nor `RUST_LOG` says otherwise.
pub const DEFAULT_LOG_LEVEL: &str = "info";

/// Why logging could not be set up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LoggingError {
    /// The level/filter text is not valid.
    #[error("invalid log level {filter:?}: {reason}")]
    Filter {
        /// The text given (flag or `RUST_LOG`).
        filter: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A global subscriber was already installed.
    #[error("logging was already initialised")]
    AlreadyInitialised,
}

/// Installs the global `tracing` subscriber writing to stderr.
///
/// `level` is the `--log` value (it wins when `Some`); otherwise `RUST_LOG`
/// is read; otherwise [`DEFAULT_LOG_LEVEL`]. Call once, early in `main`.
pub fn init_logging(level: Option<&str>, format: LogFormat) -> Result<(), LoggingError> {
    let rust_log = std::env::var("RUST_LOG").ok();
    let subscriber = build_subscriber(level, rust_log.as_deref(), format, io::stderr)?;
    tracing::subscriber::set_global_default(subscriber)
        .map_err(|_| LoggingError::AlreadyInitialised)
}

/// Builds (without installing) the subscriber [`init_logging`] would
/// install, writing to `writer`; `rust_log` stands for the `RUST_LOG`
/// variable. Useful for tests and for embedding with a custom sink.
pub fn build_subscriber<W>(
    level: Option<&str>,
    rust_log: Option<&str>,
    format: LogFormat,
    writer: W,
) -> Result<Box<dyn Subscriber + Send + Sync>, LoggingError>
where
    W: for<'a> MakeWriter<'a> + Send + Sync + 'static,
{
    let filter_text = level
        .filter(|s| !s.trim().is_empty())
        .or(rust_log.filter(|s| !s.trim().is_empty()))
        .unwrap_or(DEFAULT_LOG_LEVEL);
    let filter = EnvFilter::try_new(filter_text).map_err(|e| LoggingError::Filter {
        filter: filter_text.to_owned(),
        reason: crate::config::one_line(&e.to_string()),
    })?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_target(true);
    Ok(match format {
        LogFormat::Text => Box::new(builder.with_ansi(false).finish()),
        LogFormat::Json => Box::new(builder.json().flatten_event(true).finish()),
    })
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl io::Write for Buffer {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Buffer {
        type Writer = Buffer;
        fn make_writer(&'a self) -> Buffer {
            self.clone()
        }
    }

    fn capture_with(format: LogFormat, f: impl FnOnce()) -> String {
        let buffer = Buffer::default();
        let subscriber = build_subscriber(None, None, format, buffer.clone()).unwrap();
        tracing::subscriber::with_default(subscriber, f);
        let bytes = buffer.0.lock().unwrap().clone();
        String::from_utf8(bytes).unwrap()
    }

    fn capture(level: Option<&str>, rust_log: Option<&str>, format: LogFormat) -> String {
        let buffer = Buffer::default();
        let subscriber = build_subscriber(level, rust_log, format, buffer.clone()).unwrap();
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!(peer = "127.0.0.1:5683", "session started");
            tracing::debug!("request detail");
        });
        let bytes = buffer.0.lock().unwrap().clone();
        String::from_utf8(bytes).unwrap()
    }

    #[test]
    fn json_lines_are_objects() {
        let out = capture(None, None, LogFormat::Json);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 1, "{out}");
        let v: serde_json::Value = serde_json::from_str(lines[0]).unwrap();
        assert_eq!(v["message"], "session started");
        assert_eq!(v["peer"], "127.0.0.1:5683");
        assert_eq!(v["level"], "INFO");
    }

    #[test]
    fn flag_beats_rust_log() {
        let out = capture(Some("debug"), Some("warn"), LogFormat::Text);
        assert!(out.contains("request detail"), "{out}");
        let out = capture(None, Some("warn"), LogFormat::Text);
        assert!(out.is_empty(), "{out}");
        let out = capture(None, Some("debug"), LogFormat::Text);
        assert!(
            out.contains("session started") && out.contains("request detail"),
            "{out}"
        );
    }

    #[test]
    fn listener_line_format() {
        let buffer = Buffer::default();
        let subscriber = build_subscriber(None, None, LogFormat::Text, buffer.clone()).unwrap();
        tracing::subscriber::with_default(subscriber, || {
            crate::announce_listener("udp", "127.0.0.1:5683".parse().unwrap());
        });
        let out = String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap();
        assert!(
            out.trim_end()
                .ends_with("listening what=udp addr=127.0.0.1:5683"),
            "{out}"
        );
        assert_eq!(out.lines().count(), 1);
        let json = capture_with(LogFormat::Json, || {
            crate::announce_listener("dtls", "127.0.0.1:5684".parse().unwrap());
        });
        let v: serde_json::Value = serde_json::from_str(json.trim()).unwrap();
        assert_eq!(
            (
                v["message"].as_str(),
                v["what"].as_str(),
                v["addr"].as_str()
            ),
            (Some("listening"), Some("dtls"), Some("127.0.0.1:5684"))
        );
    }

    #[test]
    fn empty_level_falls_back() {
        let out = capture(Some(" "), Some("warn"), LogFormat::Text);
        assert!(out.is_empty(), "{out}");
    }

    #[test]
    fn bad_filter_is_an_error() {
        let err = build_subscriber(Some("info,=[bad"), None, LogFormat::Text, io::sink).err();
        assert!(matches!(err, Some(LoggingError::Filter { .. })), "{err:?}");
    }
}
