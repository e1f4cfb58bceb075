//! Program start and end: parsing arguments, announcing bound addresses,
//! and turning failures into one line on stderr and a non-zero exit code.

use std::ffi::OsString;
use std::fmt::Display;
use std::net::SocketAddr;
use std::process::ExitCode;

use clap::error::ErrorKind;
use clap::{ArgMatches, Parser};

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
        matches!(
            self.0.kind(),
            ErrorKind::DisplayHelp
                | ErrorKind::DisplayVersion
                | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
        )
    }

    /// Prints the help/version text on stdout (exit 0), or the mistake as
    /// one line on stderr prefixed by `program` (exit 2, as clap does).
    pub fn report(&self, program: &str) -> ExitCode {
        if self.is_informational() {
            print!("{}", self.0.render());
            ExitCode::SUCCESS
        } else {
            eprintln!("{program}: {self}");
            ExitCode::from(2)
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

/// Parses the process's arguments (and environment, for args with `env`).
pub fn parse_args<A: Parser>() -> Result<ParsedArgs<A>, CliError> {
    parse_args_from(std::env::args_os())
}

/// Parses `argv` (including the program name first).
pub fn parse_args_from<A, I, T>(argv: I) -> Result<ParsedArgs<A>, CliError>
where
    A: Parser,
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let mut command = A::command();
    let matches = command.try_get_matches_from_mut(argv).map_err(CliError)?;
    let args = A::from_arg_matches(&matches).map_err(|e| CliError(e.format(&mut command)))?;
    Ok(ParsedArgs { args, matches })
}

/// Logs one line saying that `what` (e.g. `"udp"`, `"dtls"`, `"http"`) listens
/// on `addr` — the address actually bound, so port 0 shows the real port.
///
/// The line reads `listening what=udp addr=0.0.0.0:5683` in text logs (and
/// has fields `what`, `addr` in JSON logs).
pub fn announce_listener(what: &str, addr: SocketAddr) {
    tracing::info!(what, %addr, "listening");
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
        let err = parse_args_from::<Demo, _, _>(["demo", "--registry", "r", "--nope"]).unwrap_err();
        let line = err.to_string();
        assert!(!line.contains('\n'), "{line}");
        assert!(line.contains("--nope"), "{line}");
        assert!(!err.is_informational());
    }

    #[test]
    fn missing_argument_names_it_on_one_line() {
        let err = parse_args_from::<Demo, _, _>(["demo"]).unwrap_err();
        let line = err.to_string();
        assert!(!line.contains('\n'), "{line}");
        assert!(line.contains("--registry"), "{line}");
    }

    #[test]
    fn bad_value_is_one_line() {
        let err = parse_args_from::<Demo, _, _>(["demo", "--registry", "r", "--udp", "nowhere"])
            .unwrap_err();
        let line = err.to_string();
        assert!(!line.contains('\n') && line.contains("nowhere"), "{line}");
    }

    #[test]
    fn help_is_informational() {
        let err = parse_args_from::<Demo, _, _>(["demo", "--help"]).unwrap_err();
        assert!(err.is_informational());
    }

    #[test]
    fn failure_line_folds_lines() {
        let line = failure_line("gw", "bad\nthing");
        assert_eq!(line, "gw: error: bad; thing");
    }
}
