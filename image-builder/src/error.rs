//! The library's error type: every failure names the step and the file or tool involved, so a
//! failed build says what to fix without a backtrace.

use std::path::PathBuf;

/// Errors of the image builder library.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Reading or writing a file failed.
    #[error("{context}: {path}: {source}")]
    Io {
        context: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// An external tool could not be started or exited with an error.
    #[error("{tool} failed: {detail}")]
    Tool { tool: String, detail: String },
    /// The input (a config, a PE file, a kernel package...) is not what we can build from.
    #[error("invalid input: {0}")]
    Invalid(String),
    /// A QEMU/swtpm boot did not produce what was expected.
    #[error("boot: {0}")]
    Boot(String),
}

/// Result with the library's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Adds the path and a short description of the step to an I/O error.
pub(crate) trait IoContext<T> {
    fn ctx(self, context: &'static str, path: impl Into<PathBuf>) -> Result<T>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn ctx(self, context: &'static str, path: impl Into<PathBuf>) -> Result<T> {
        self.map_err(|source| Error::Io {
            context,
            path: path.into(),
            source,
        })
    }
}

/// Shorthand for an [`Error::Invalid`].
pub(crate) fn invalid(msg: impl Into<String>) -> Error {
    Error::Invalid(msg.into())
}
