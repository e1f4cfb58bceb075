//! Program start and end: parsing arguments, announcing bound addresses,
//! and turning failures into one line on stderr and a non-zero exit code.

use std::ffi::OsString;
use std::fmt::Display;
use std::net::SocketAddr;
use std::process::ExitCode;

use std::path::PathBuf;

use clap::{ArgAction, ArgMatches, Parser};

use crate::logging::LogFormat;

/// The parsed clap struct together with the matches it came from (the
/// matches know where each value came from; see
/// [`crate::config::overrides_from_args`]).
#[derive(Debug)]
pub struct ParsedArgs<A> {
    /// The typed arguments.
    pub args: A,
    /// The raw matches, for [`clap::parser::ValueSource`].
    pub matches: ArgMatches,
}

/// A command line that did not parse, or a request for `--help`/`--version`.
#[derive(Debug)]
pub struct CliError(clap::Error);

impl CliError {
    /// Whether this is `--help`/`--version` rather than a mistake.
    pub fn is_informational(&self) -> bool {
        !self.0.use_stderr()
    }

    /// Prints the help/version text on stdout (exit 0), or the mistake as
    /// one line on stderr prefixed by `program` (exit 2, as clap does).
    pub fn report(&self, program: &str) -> ExitCode {
        if self.is_informational() {
            // clap picks the stream and colours; a closed stdout is not worth an error.
            let _ = self.0.print();
            ExitCode::SUCCESS
        } else {
            eprintln!("{program}: {self}");
            ExitCode::from(u8::try_from(self.0.exit_code()).unwrap_or(2))
        }
    }

    /// The clap error itself.
    pub fn inner(&self) -> &clap::Error {
        &self.0
    }
}

impl Display for CliError {
    /// One line: clap's message up to the first blank line (usage and tips
    /// are left out), with line breaks folded.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let rendered = self.0.render().to_string();
        let message = rendered
            .lines()
            .take_while(|line| !line.trim().is_empty())
            .map(str::trim)
            .collect::<Vec<_>>()
            .join(" ");
        f.write_str(&message)
    }
}

impl std::error::Error for CliError {}

/// Parses the process's arguments (and environment variables).
///
/// With `env_prefix = Some("COAP_EMQX")`, every flag that has no `env`
/// attribute of its own also reads `COAP_EMQX_<ID>`, where `<ID>` is the
/// argument id upper-cased with `-` and `.` turned into `_`
/// (`--max-body-size` reads `COAP_EMQX_MAX_BODY_SIZE`, the dotted id
/// `dtls.listen` reads `COAP_EMQX_DTLS_LISTEN`); `--help` lists the names.
pub fn parse_args<A: Parser>(env_prefix: Option<&str>) -> Result<ParsedArgs<A>, CliError> {
    parse_args_from(std::env::args_os(), env_prefix)
}

/// [`parse_args`] for an explicit `argv` (program name first).
pub fn parse_args_from<A, I, T>(
    argv: I,
    env_prefix: Option<&str>,
) -> Result<ParsedArgs<A>, CliError>
where
    A: Parser,
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let mut command = A::command();
    if let Some(prefix) = env_prefix {
        command = command.mut_args(|arg| {
            let informational = matches!(
                arg.get_action(),
                ArgAction::Help | ArgAction::HelpShort | ArgAction::HelpLong | ArgAction::Version
            );
            if arg.get_env().is_some() || informational {
                arg
            } else {
                let name = env_var_name(prefix, arg.get_id().as_str());
                arg.env(name)
            }
        });
    }
    let matches = command.try_get_matches_from_mut(argv).map_err(CliError)?;
    let args = A::from_arg_matches(&matches).map_err(|e| CliError(e.format(&mut command)))?;
    Ok(ParsedArgs { args, matches })
}

/// `PREFIX_ID` with the id upper-cased and `-`/`.` mapped to `_`.
pub fn env_var_name(prefix: &str, id: &str) -> String {
    let id: String = id
        .chars()
        .map(|c| match c {
            '-' | '.' => '_',
            c => c.to_ascii_uppercase(),
        })
        .collect();
    format!("{prefix}_{id}")
}

/// The operations flags both binaries share; embed with
/// `#[command(flatten)] #[serde(flatten)] ops: OpsArgs`.
///
/// `http`, `log` and `log_format` are config keys, so the binary's config
/// struct needs top-level fields `http: Option<SocketAddr>`,
/// `log: Option<String>` and `log_format: LogFormat`; `config` and
/// `print_config` only steer loading and are not config keys.
#[derive(Debug, Clone, clap::Args, serde::Serialize)]
pub struct OpsArgs {
    /// TOML config file; flags and environment variables override its values.
    #[arg(long, value_name = "FILE")]
    #[serde(skip)]
    pub config: Option<PathBuf>,
    /// Print the effective configuration as TOML (secrets shown as "***") and exit.
    #[arg(long)]
    #[serde(skip)]
    pub print_config: bool,
    /// Serve HTTP on ADDR (e.g. 127.0.0.1:9100; port 0 picks one):
    /// /metrics (Prometheus), /healthz, /readyz and the JSON management API
    /// under /api/clients (list, search and kick clients). No
    /// authentication: keep it on loopback or a private network. Off unless
    /// given.
    #[arg(long, value_name = "ADDR")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http: Option<SocketAddr>,
    /// Log level or filter in RUST_LOG syntax, e.g. `info`, `debug` (one
    /// line per request) or `info,coap_endpoint=trace`. Default: the
    /// RUST_LOG variable, else `info`.
    #[arg(long, value_name = "LEVEL")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log: Option<String>,
    /// Log line format.
    #[arg(long, value_enum, value_name = "FORMAT", default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

/// Logs one line saying that `what` (e.g. `"udp"`, `"dtls"`, `"http"`) listens
/// on `addr` — the address actually bound, so port 0 shows the real port.
///
/// The text log line ends in `listening what=udp addr=0.0.0.0:5683`; JSON
/// logs have `"message":"listening","what":"udp","addr":"0.0.0.0:5683"`.
pub fn announce_listener(what: &str, addr: SocketAddr) {
    tracing::info!(what = %what, addr = %addr, "listening");
}

/// Ends `main`: `Ok` gives exit code 0; `Err` prints
/// `program: error: <message>` as one line on stderr and gives exit code 1.
///
/// The message uses the alternate format (`{:#}`), so an `anyhow::Error`
/// shows its whole cause chain; line breaks are folded into `; `.
pub fn exit_code<E: Display>(program: &str, result: Result<(), E>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("{}", failure_line(program, &error));
            ExitCode::FAILURE
        }
    }
}

/// The one line [`exit_code`] prints for `error`.
pub fn failure_line<E: Display + ?Sized>(program: &str, error: &E) -> String {
    format!(
        "{program}: error: {}",
        crate::config::one_line(&format!("{error:#}"))
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Parser, Debug)]
    #[command(name = "demo", version)]
    struct Demo {
        /// Where to listen.
        #[arg(long)]
        udp: Option<SocketAddr>,
        /// Required for the test.
        #[arg(long)]
        registry: String,
    }

    #[test]
    fn bad_flag_is_one_line() {
        let err =
            parse_args_from::<Demo, _, _>(["demo", "--registry", "r", "--nope"], None).unwrap_err();
        let line = err.to_string();
        assert!(!line.contains('\n'), "{line}");
        assert!(line.contains("--nope"), "{line}");
        assert!(!err.is_informational());
    }

    #[test]
    fn missing_argument_names_it_on_one_line() {
        let err = parse_args_from::<Demo, _, _>(["demo"], None).unwrap_err();
        let line = err.to_string();
        assert!(!line.contains('\n'), "{line}");
        assert!(line.contains("--registry"), "{line}");
    }

    #[test]
    fn bad_value_is_one_line() {
        let err =
            parse_args_from::<Demo, _, _>(["demo", "--registry", "r", "--udp", "nowhere"], None)
                .unwrap_err();
        let line = err.to_string();
        assert!(!line.contains('\n') && line.contains("nowhere"), "{line}");
    }

    #[test]
    fn help_is_informational() {
        let err = parse_args_from::<Demo, _, _>(["demo", "--help"], None).unwrap_err();
        assert!(err.is_informational());
    }

    #[test]
    fn env_names_from_ids() {
        assert_eq!(
            env_var_name("COAP_EMQX", "max_body_size"),
            "COAP_EMQX_MAX_BODY_SIZE"
        );
        assert_eq!(env_var_name("HONO", "dtls.listen"), "HONO_DTLS_LISTEN");
        assert_eq!(env_var_name("X", "log-format"), "X_LOG_FORMAT");
    }

    #[test]
    fn help_lists_prefixed_env_names() {
        let err = parse_args_from::<Demo, _, _>(["demo", "--help"], Some("DEMO")).unwrap_err();
        let help = err.inner().render().to_string();
        assert!(
            help.contains("DEMO_UDP") && help.contains("DEMO_REGISTRY"),
            "{help}"
        );
        assert!(
            !help.contains("DEMO_HELP") && !help.contains("DEMO_VERSION"),
            "{help}"
        );
    }

    #[test]
    fn failure_line_folds_lines() {
        let line = failure_line("gw", "bad\nthing");
        assert_eq!(line, "gw: error: bad; thing");
    }
}
