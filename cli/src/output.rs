//! The global output settings (`-q`, `-v`, `--json`), set once in `main` and read by every
//! command, and the one place errors are printed: each cause once, as text or as JSON.

use serde_json::json;
use std::fmt::Display;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};

/// How much a command prints besides its result.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Verbosity {
    /// `-q`: results and errors only.
    Quiet = 0,
    Normal = 1,
    /// `-v`: each step and what it found.
    Verbose = 2,
    /// `-vv` and more: also request-level detail.
    Debug = 3,
}

static VERBOSITY: AtomicU8 = AtomicU8::new(Verbosity::Normal as u8);
static JSON: AtomicBool = AtomicBool::new(false);

/// Sets the global settings from the command line.
pub fn init(quiet: bool, verbose: u8, json: bool) {
    let level = match (quiet, verbose) {
        (true, _) => Verbosity::Quiet,
        (false, 0) => Verbosity::Normal,
        (false, 1) => Verbosity::Verbose,
        (false, _) => Verbosity::Debug,
    };
    VERBOSITY.store(level as u8, Ordering::Relaxed);
    JSON.store(json, Ordering::Relaxed);
}

pub fn verbosity() -> Verbosity {
    match VERBOSITY.load(Ordering::Relaxed) {
        0 => Verbosity::Quiet,
        1 => Verbosity::Normal,
        2 => Verbosity::Verbose,
        _ => Verbosity::Debug,
    }
}

/// `--json` was given (anywhere on the command line).
pub fn json() -> bool {
    JSON.load(Ordering::Relaxed)
}

/// A progress line on stderr; silent with `-q` or `--json` (stdout stays machine-readable).
pub fn progress(message: impl Display) {
    if verbosity() >= Verbosity::Normal && !json() {
        eprintln!("{message}");
    }
}

/// A detail line on stderr, only with `-v`.
pub fn detail(message: impl Display) {
    if verbosity() >= Verbosity::Verbose {
        eprintln!("{message}");
    }
}

/// A warning on stderr: printed even with `-q` (it bears on whether to trust the result), as
/// one `{"warning"}` object with `--json` so stderr stays machine-readable.
pub fn warn(message: impl Display) {
    if json() {
        eprintln!("{}", json!({ "warning": message.to_string() }));
    } else {
        eprintln!("warning: {message}");
    }
}

/// A line of a command's text result on stdout, printed even with `-q`; with `--json` the
/// command prints its result as one JSON document instead (see [`print_json`]).
pub fn result_line(message: impl Display) {
    if !json() {
        println!("{message}");
    }
}

/// Prints a command's result as pretty JSON on stdout.
pub fn print_json(value: &impl serde::Serialize) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

/// The error's chain with each cause once: a cause whose text the previous message already
/// ends with (an error that formats its source into its own message) is dropped.
pub fn causes(error: &anyhow::Error) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for cause in error.chain() {
        let text = cause.to_string();
        let repeated = out.last().is_some_and(|previous| previous.ends_with(&text));
        if !text.is_empty() && !repeated {
            out.push(text);
        }
    }
    out
}

/// Prints a command's error on stderr: `error: a: b: c`, or with `--json` one object
/// `{"error": "a", "causes": ["b", "c"]}`.
pub fn print_error(error: &anyhow::Error) {
    let mut chain = causes(error);
    if chain.is_empty() {
        chain.push("unknown error".into());
    }
    print_message(&chain[0], &chain[1..]);
}

/// Prints an error that has no chain (usage mistakes) the same way.
pub fn print_message(message: &str, causes: &[String]) {
    if json() {
        eprintln!("{}", json!({ "error": message, "causes": causes }));
    } else if causes.is_empty() {
        eprintln!("error: {message}");
    } else {
        eprintln!("error: {message}: {}", causes.join(": "));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("response code not recognized")]
    struct Code;

    /// An error that, like tss-esapi's, prints its source's text as its own.
    #[derive(Debug, thiserror::Error)]
    #[error("{0}")]
    struct Repeats(#[source] Code);

    #[derive(Debug, thiserror::Error)]
    #[error("quote: {0}")]
    struct Formats(#[source] Repeats);

    #[test]
    fn each_cause_is_printed_once() {
        let error = anyhow::Error::new(Formats(Repeats(Code))).context("collecting evidence");
        assert_eq!(
            causes(&error),
            ["collecting evidence", "quote: response code not recognized"]
        );
        let plain = anyhow::anyhow!("b").context("a");
        assert_eq!(causes(&plain), ["a", "b"]);
    }
}
