//! The one error type of `luoctl`, and the one line it becomes on stderr.

use std::path::PathBuf;

use luo::Errno;

/// Everything `luoctl` can fail at. `main` prints [`Error::one_line`] after
/// `luoctl: ` and exits 1.
///
/// ```
/// let e = luoctl::Error::NothingPrepared;
/// assert!(e.one_line().starts_with("nothing is prepared"));
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The control socket does not accept connections.
    #[error("Cannot connect to {}", path.display())]
    Connect {
        /// The control socket.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Reading or writing the control connection failed.
    #[error("Control connection to {} failed", path.display())]
    Io {
        /// The control socket.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The connection ended before the reply.
    #[error("luod closed the control connection without answering {op}; see `luoctl status`")]
    NoReply {
        /// The request.
        op: &'static str,
    },
    /// The reply is not the JSON the control protocol defines.
    #[error("Unreadable reply to {op}")]
    BadReply {
        /// The request.
        op: &'static str,
        /// The JSON error.
        #[source]
        source: serde_json::Error,
    },
    /// A successful reply lacks what its request returns.
    #[error("Reply to {op} has no {field}")]
    MissingField {
        /// The request.
        op: &'static str,
        /// The missing field.
        field: &'static str,
    },
    /// The daemon refused the request.
    #[error("{op}: {message}{}", errno_suffix(*errno))]
    Daemon {
        /// The request.
        op: &'static str,
        /// The errno the daemon gave, positive.
        errno: Option<i32>,
        /// The daemon's reason.
        message: String,
    },
    /// `update` without `--prepare` while the global state is NORMAL.
    #[error(
        "Nothing is prepared: an update now would carry nothing; run `luoctl prepare` first or pass --prepare"
    )]
    NothingPrepared,
    /// `update --prepare` prepared, the update then failed, and the prepare was
    /// (or could not be) cancelled.
    #[error(
        "Update failed; the prepare made for it {}",
        if *cancelled { "was cancelled" } else { "could not be cancelled (run `luoctl cancel`)" }
    )]
    UpdateAfterPrepare {
        /// The update's failure.
        #[source]
        source: Box<Error>,
        /// Whether the CANCEL that followed succeeded.
        cancelled: bool,
    },
    /// `--exec` names a path that cannot travel in JSON.
    #[error("--exec path {} is not UTF-8 or cannot be made absolute", path.display())]
    ExecPath {
        /// The path as given.
        path: PathBuf,
    },
    /// The handover image file cannot be read.
    #[error("Cannot read {}", path.display())]
    ReadImage {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The handover image file does not decode.
    #[error("Cannot decode the handover image {}", path.display())]
    DecodeImage {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: luo_core::HandoverError,
    },
    /// Writing the output failed.
    #[error("Cannot write the output")]
    Output(#[source] std::io::Error),
    /// `luoctl demo` or its service failed: `what` says where, with the values
    /// that matter.
    #[error("{what}")]
    Demo {
        /// What failed.
        what: String,
        /// Why, when another error says it.
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },
}

impl Error {
    /// A [`Error::Demo`] with nothing underneath.
    pub(crate) fn demo(what: impl Into<String>) -> Error {
        Error::Demo {
            what: what.into(),
            source: None,
        }
    }

    /// A [`Error::Demo`] caused by `source`.
    pub(crate) fn demo_by(
        what: impl Into<String>,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Error {
        Error::Demo {
            what: what.into(),
            source: Some(source.into()),
        }
    }

    /// The errno this error stands for, when there is one: the daemon's, or the
    /// socket's.
    ///
    /// ```
    /// let e = luoctl::Error::Daemon { op: "finish", errno: Some(22), message: "no".into() };
    /// assert_eq!(e.errno(), Some(luo::Errno::INVAL));
    /// ```
    #[must_use]
    pub fn errno(&self) -> Option<Errno> {
        match self {
            Error::Daemon { errno, .. } => errno.and_then(errno_from),
            Error::Connect { source, .. }
            | Error::Io { source, .. }
            | Error::ReadImage { source, .. }
            | Error::Output(source) => source.raw_os_error().and_then(errno_from),
            Error::UpdateAfterPrepare { source, .. } => source.errno(),
            Error::Demo {
                source: Some(source),
                ..
            } => {
                if let Some(e) = source.downcast_ref::<luo::Error>() {
                    Some(e.errno())
                } else if let Some(e) = source.downcast_ref::<Error>() {
                    e.errno()
                } else {
                    source
                        .downcast_ref::<std::io::Error>()
                        .and_then(std::io::Error::raw_os_error)
                        .and_then(errno_from)
                }
            }
            Error::NoReply { .. }
            | Error::BadReply { .. }
            | Error::MissingField { .. }
            | Error::NothingPrepared
            | Error::ExecPath { .. }
            | Error::DecodeImage { .. }
            | Error::Demo { source: None, .. } => None,
        }
    }

    /// The reason on one line, for `luoctl: <reason>`: this error and its sources
    /// joined by `": "`, without std's `(os error N)`, with a hint where one helps.
    ///
    /// ```
    /// use std::io;
    /// let e = luoctl::Error::Connect {
    ///     path: "/run/luo/control.sock".into(),
    ///     source: io::Error::from_raw_os_error(2),
    /// };
    /// assert_eq!(
    ///     e.one_line(),
    ///     "cannot connect to /run/luo/control.sock: No such file or directory (is luod running?)"
    /// );
    /// ```
    #[must_use]
    pub fn one_line(&self) -> String {
        let mut line = lower_first(&self.to_string());
        let mut source = std::error::Error::source(self);
        while let Some(s) = source {
            line.push_str(": ");
            line.push_str(&s.to_string());
            source = s.source();
        }
        if let Error::Connect { source, .. } = self {
            use std::io::ErrorKind;
            match source.kind() {
                ErrorKind::NotFound | ErrorKind::ConnectionRefused => {
                    line.push_str(" (is luod running?)");
                }
                ErrorKind::PermissionDenied => {
                    line.push_str(" (the control socket is for root or luod's admin group)");
                }
                _ => {}
            }
        }
        without_os_error_notes(&line).replace('\n', " ")
    }
}

fn errno_from(raw: i32) -> Option<Errno> {
    (1..=4095)
        .contains(&raw)
        .then(|| Errno::from_raw_os_error(raw))
}

/// ` (EINVAL)`, or ` (errno 200)` for a number with no name, or nothing.
fn errno_suffix(errno: Option<i32>) -> String {
    match errno {
        Some(raw) => match errno_from(raw).and_then(luo::errno_name) {
            Some(name) => format!(" ({name})"),
            None => format!(" (errno {raw})"),
        },
        None => String::new(),
    }
}

/// Our messages are capitalised sentences; a CLI's reason line starts lower-case.
/// Words in capitals (`HELLO`) and paths are left alone.
fn lower_first(s: &str) -> String {
    let mut chars = s.chars();
    match (chars.next(), chars.next()) {
        (Some(first), Some(second)) if first.is_uppercase() && second.is_lowercase() => first
            .to_lowercase()
            .chain(s[first.len_utf8()..].chars())
            .collect(),
        _ => s.to_owned(),
    }
}

/// `s` without std's ` (os error N)` notes, wherever they are (the daemon's own
/// text may carry some too): the errno's name says it better.
fn without_os_error_notes(s: &str) -> String {
    const NOTE: &str = " (os error ";
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(at) = rest.find(NOTE) {
        let after = &rest[at + NOTE.len()..];
        let digits = after.bytes().take_while(u8::is_ascii_digit).count();
        if digits > 0 && after[digits..].starts_with(')') {
            out.push_str(&rest[..at]);
            rest = &after[digits + 1..];
        } else {
            out.push_str(&rest[..at + NOTE.len()]);
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn daemon_errors_carry_the_errno_name() {
        let e = Error::Daemon {
            op: "finish",
            errno: Some(22),
            message: "Event finish is not allowed in global state normal".into(),
        };
        assert_eq!(
            e.one_line(),
            "finish: Event finish is not allowed in global state normal (EINVAL)"
        );
        let odd = Error::Daemon {
            op: "update",
            errno: Some(4000),
            message: "x".into(),
        };
        assert_eq!(odd.one_line(), "update: x (errno 4000)");
        let none = Error::Daemon {
            op: "update",
            errno: None,
            message: "x".into(),
        };
        assert_eq!(none.one_line(), "update: x");
    }

    #[test]
    fn connect_errors_hint_at_the_daemon() {
        let e = Error::Connect {
            path: "/tmp/x/control.sock".into(),
            source: std::io::Error::from_raw_os_error(111),
        };
        assert_eq!(
            e.one_line(),
            "cannot connect to /tmp/x/control.sock: Connection refused (is luod running?)"
        );
        assert_eq!(e.errno(), Some(Errno::CONNREFUSED));
    }

    #[test]
    fn the_refusal_to_update_names_the_fix() {
        assert_eq!(
            Error::NothingPrepared.one_line(),
            "nothing is prepared: an update now would carry nothing; run `luoctl prepare` \
             first or pass --prepare"
        );
    }

    #[test]
    fn a_failed_prepared_update_chains_its_cause() {
        let e = Error::UpdateAfterPrepare {
            source: Box::new(Error::Daemon {
                op: "update",
                errno: Some(2),
                message: "Dry run of /nope failed".into(),
            }),
            cancelled: true,
        };
        assert_eq!(
            e.one_line(),
            "update failed; the prepare made for it was cancelled: update: Dry run of /nope \
             failed (ENOENT)"
        );
        assert_eq!(e.errno(), Some(Errno::NOENT));
    }

    #[test]
    fn os_error_notes_go_wherever_they_are() {
        assert_eq!(
            without_os_error_notes("a: No such file (os error 2) (ENOEXEC)"),
            "a: No such file (ENOEXEC)"
        );
        assert_eq!(without_os_error_notes("x (os error 12)"), "x");
        assert_eq!(
            without_os_error_notes("odd (os error x) (os error "),
            "odd (os error x) (os error "
        );
    }

    #[test]
    fn lower_first_keeps_acronyms() {
        assert_eq!(lower_first("Cannot x"), "cannot x");
        assert_eq!(lower_first("HELLO: y"), "HELLO: y");
        assert_eq!(lower_first("/path"), "/path");
        assert_eq!(lower_first(""), "");
    }
}
