//! What can stop a benchmark: a refusal from luo, a system call, the daemon
//! itself, a control request, a result that fails its own check, or bad input to
//! `table`. Every variant names what was being done; the source is chained, never
//! repeated in the text.

use std::fmt::Write as _;

/// Why a benchmark (or the table) could not be produced.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A request through the `luo` client library failed.
    #[error("{what}")]
    Luo {
        /// What was being done.
        what: String,
        /// The library's error.
        #[source]
        source: luo::Error,
    },
    /// A file or process operation of the standard library failed.
    #[error("{what}")]
    Io {
        /// What was being done.
        what: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// A system call failed.
    #[error("{what}")]
    Os {
        /// What was being done.
        what: String,
        /// The errno.
        #[source]
        source: rustix::io::Errno,
    },
    /// The daemon under test did not start, answer or stay up.
    #[error("luod {what}; its log ends with:\n{log}")]
    Daemon {
        /// What it failed to do.
        what: String,
        /// The last lines of its log.
        log: String,
    },
    /// A control request was refused.
    #[error("Control request {op} refused (errno {errno:?}): {error}")]
    Control {
        /// The request.
        op: String,
        /// The errno the daemon answered.
        errno: Option<i32>,
        /// The daemon's reason.
        error: String,
    },
    /// A benchmark's own check failed (restored data differs, a count is off).
    #[error("Check failed: {0}")]
    Check(String),
    /// A line given to `table` is not a result.
    #[error("{file}:{line}: {why}")]
    Input {
        /// The file.
        file: String,
        /// Its 1-based line number.
        line: usize,
        /// What is wrong with it.
        why: String,
    },
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// The message and every source under it, joined by ": ".
    #[must_use]
    pub fn one_line(&self) -> String {
        let mut s = self.to_string();
        let mut source = std::error::Error::source(self);
        while let Some(inner) = source {
            let _ = write!(s, ": {inner}");
            source = inner.source();
        }
        s
    }
}

/// Attach what was being done to a lower-level error.
pub trait Context<T> {
    /// The error, as [`Error`], saying `what` was being done.
    ///
    /// # Errors
    /// The wrapped error.
    fn context(self, what: impl FnOnce() -> String) -> Result<T>;
}

impl<T> Context<T> for std::result::Result<T, luo::Error> {
    fn context(self, what: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|source| Error::Luo {
            what: what(),
            source,
        })
    }
}

impl<T> Context<T> for std::result::Result<T, std::io::Error> {
    fn context(self, what: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|source| Error::Io {
            what: what(),
            source,
        })
    }
}

impl<T> Context<T> for std::result::Result<T, rustix::io::Errno> {
    fn context(self, what: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|source| Error::Os {
            what: what(),
            source,
        })
    }
}
