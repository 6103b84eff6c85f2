//! The one error type of the client library, and what a caller does about each
//! variant.
//!
//! | variant | errno() | what to do |
//! |---|---|---|
//! | [`Error::Os`] | the daemon's answer | the request was refused; nothing changed on the daemon's side |
//! | [`Error::Stale`] | ESTALE | the handle's connection is gone, typically after a live update: retrieve the session again by name |
//! | [`Error::Connect`] | the `connect` errno | the daemon is not running, or not at that path |
//! | [`Error::Transport`] | the socket's errno | a local socket call failed; the handle is probably unusable |
//! | [`Error::Protocol`] | EPROTO | the daemon sent a reply this library cannot read (a version mismatch or a bug) |
//! | [`Error::InvalidName`] | EINVAL | the name was refused before anything was sent |

use std::fmt;
use std::path::PathBuf;

use luo_uapi::Errno;
use luo_wire::FrameError;

/// `Result` with [`Error`] as its default error.
///
/// ```no_run
/// fn state() -> luo::Result<luo::State> {
///     luo::Device::open()?.state()
/// }
/// ```
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong talking to `luod`.
///
/// ```no_run
/// match luo::retrieve_session("db") {
///     Ok(session) => { /* restore files */ }
///     // Not after an update, or no such session: start from scratch.
///     Err(e) if e.errno() == luo::Errno::AGAIN || e.errno() == luo::Errno::NOENT => {}
///     Err(e) => return Err(e),
/// }
/// # Ok::<(), luo::Error>(())
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The daemon answered the request with an errno; the request changed nothing.
    #[error("{op}: {}", ErrnoText(*errno))]
    Os {
        /// The request, as the uAPI names it (`"PRESERVE_FD"`, `"HELLO"`, ...).
        op: &'static str,
        /// The daemon's answer.
        errno: Errno,
    },
    /// The handle's connection is gone (end of file, ECONNRESET, EPIPE, ENOTCONN),
    /// typically because a live update closed every handle of the old epoch. A
    /// session must be retrieved again by name; a device opened again.
    #[error(
        "Handle is stale: luod closed it, as a live update does; retrieve the session again by name"
    )]
    Stale,
    /// The device socket does not accept connections.
    #[error("Cannot connect to {}", path.display())]
    Connect {
        /// The socket's path.
        path: PathBuf,
        /// Why (ENOENT: no such socket; ECONNREFUSED: no daemon behind it).
        #[source]
        source: Errno,
    },
    /// A socket call in this process failed: not an answer from the daemon.
    #[error("{op}: socket error: {}", ErrnoText(*errno))]
    Transport {
        /// The request being sent or awaited.
        op: &'static str,
        /// The socket call's errno (EMSGSIZE for a payload no frame can carry).
        errno: Errno,
    },
    /// The daemon's reply cannot be read.
    #[error("Malformed reply to {op}")]
    Protocol {
        /// The request it answers.
        op: &'static str,
        /// What is wrong with it.
        #[source]
        source: ProtocolError,
    },
    /// A session name this library refuses to send: empty, longer than 55 bytes,
    /// or containing a NUL. Names are never truncated.
    #[error("Invalid session name {name:?}: 1 to 55 bytes, no NUL")]
    InvalidName {
        /// The name as given.
        name: String,
    },
}

/// What is wrong with a reply ([`Error::Protocol`]).
///
/// ```no_run
/// use std::error::Error as _;
/// let device = luo::Device::open()?;
/// if let Err(e @ luo::Error::Protocol { .. }) = device.state() {
///     eprintln!("{e}: {}", e.source().map(|s| s.to_string()).unwrap_or_default());
/// }
/// # Ok::<(), luo::Error>(())
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProtocolError {
    /// The reply frame itself is malformed.
    #[error("Bad frame")]
    Frame(#[source] FrameError),
    /// The payload is shorter than the struct it must hold.
    #[error("Payload of {len} bytes, {need} expected")]
    ShortPayload {
        /// Bytes received.
        len: usize,
        /// Bytes the struct needs.
        need: usize,
    },
    /// A successful reply that must carry an fd carries none.
    #[error("No fd attached")]
    MissingFd,
    /// A state value outside the uAPI's enum.
    #[error("Unknown state {0}")]
    UnknownState(u32),
}

impl Error {
    /// The errno this error stands for: the daemon's answer for [`Error::Os`],
    /// ESTALE for [`Error::Stale`], EPROTO for [`Error::Protocol`], EINVAL for
    /// [`Error::InvalidName`], the socket's errno otherwise.
    ///
    /// ```no_run
    /// let device = luo::Device::open()?;
    /// match device.create_session("db") {
    ///     Err(e) if e.errno() == luo::Errno::EXIST => { /* already there */ }
    ///     other => { other?; }
    /// }
    /// # Ok::<(), luo::Error>(())
    /// ```
    #[must_use]
    pub fn errno(&self) -> Errno {
        match self {
            Error::Os { errno, .. } | Error::Transport { errno, .. } => *errno,
            Error::Stale => Errno::STALE,
            Error::Connect { source, .. } => *source,
            Error::Protocol { .. } => Errno::PROTO,
            Error::InvalidName { .. } => Errno::INVAL,
        }
    }

    /// EBUSY: the device is held by another process (HELLO), or the state forbids
    /// the request (PRESERVE_FD outside NORMAL, a file already preserved elsewhere).
    ///
    /// ```no_run
    /// let e = luo::Device::open().unwrap_err();
    /// if e.is_busy() { /* luo::create_session retries this for you */ }
    /// ```
    #[must_use]
    pub fn is_busy(&self) -> bool {
        self.errno() == Errno::BUSY
    }

    /// The handle went stale ([`Error::Stale`]): retrieve the session again.
    ///
    /// ```no_run
    /// # let session = luo::create_session("db")?;
    /// if let Err(e) = session.state() {
    ///     if e.is_stale() {
    ///         let session = luo::retrieve_session("db")?;
    ///     }
    /// }
    /// # Ok::<(), luo::Error>(())
    /// ```
    #[must_use]
    pub fn is_stale(&self) -> bool {
        matches!(self, Error::Stale)
    }

    /// ENOENT: no such session, token or handler; for [`Error::Connect`], no socket
    /// at that path.
    ///
    /// ```no_run
    /// # let session = luo::create_session("db")?;
    /// if let Err(e) = session.restore(7) {
    ///     assert!(e.is_not_found(), "token 7 was never preserved");
    /// }
    /// # Ok::<(), luo::Error>(())
    /// ```
    #[must_use]
    pub fn is_not_found(&self) -> bool {
        self.errno() == Errno::NOENT
    }

    /// The error for an errno the daemon answered to `op`: ESTALE becomes
    /// [`Error::Stale`], whatever sent it.
    pub(crate) fn answered(op: &'static str, errno: Errno) -> Error {
        if errno == Errno::STALE {
            Error::Stale
        } else {
            Error::Os { op, errno }
        }
    }
}

impl From<Error> for std::io::Error {
    /// An `io::Error` of the same errno kind, keeping this error as its payload.
    fn from(e: Error) -> Self {
        let kind = std::io::Error::from_raw_os_error(e.errno().raw_os_error()).kind();
        std::io::Error::new(kind, e)
    }
}

/// The symbolic name of an errno (`"EBUSY"`), for the errnos Linux defines on the
/// hosts luo supports; `None` for the rest.
///
/// ```
/// assert_eq!(luo::errno_name(luo::Errno::BUSY), Some("EBUSY"));
/// ```
#[must_use]
pub fn errno_name(errno: Errno) -> Option<&'static str> {
    ERRNO_NAMES
        .iter()
        .find(|(e, _)| *e == errno)
        .map(|(_, name)| *name)
}

/// The message of an errno without std's `" (os error N)"` suffix, as `strerror`
/// gives it.
///
/// ```
/// assert_eq!(luo::errno_text(luo::Errno::BUSY), "Device or resource busy");
/// ```
#[must_use]
pub fn errno_text(errno: Errno) -> String {
    let code = errno.raw_os_error();
    let full = std::io::Error::from_raw_os_error(code).to_string();
    let suffix = format!(" (os error {code})");
    match full.strip_suffix(&suffix) {
        Some(text) => text.to_owned(),
        None => full,
    }
}

/// Displays [`errno_text`] without allocating at the call site.
struct ErrnoText(Errno);

impl fmt::Display for ErrnoText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&errno_text(self.0))
    }
}

const ERRNO_NAMES: &[(Errno, &str)] = &[
    (Errno::PERM, "EPERM"),
    (Errno::NOENT, "ENOENT"),
    (Errno::SRCH, "ESRCH"),
    (Errno::INTR, "EINTR"),
    (Errno::IO, "EIO"),
    (Errno::NXIO, "ENXIO"),
    (Errno::TOOBIG, "E2BIG"),
    (Errno::NOEXEC, "ENOEXEC"),
    (Errno::BADF, "EBADF"),
    (Errno::CHILD, "ECHILD"),
    (Errno::AGAIN, "EAGAIN"),
    (Errno::NOMEM, "ENOMEM"),
    (Errno::ACCESS, "EACCES"),
    (Errno::FAULT, "EFAULT"),
    (Errno::BUSY, "EBUSY"),
    (Errno::EXIST, "EEXIST"),
    (Errno::XDEV, "EXDEV"),
    (Errno::NODEV, "ENODEV"),
    (Errno::NOTDIR, "ENOTDIR"),
    (Errno::ISDIR, "EISDIR"),
    (Errno::INVAL, "EINVAL"),
    (Errno::NFILE, "ENFILE"),
    (Errno::MFILE, "EMFILE"),
    (Errno::NOTTY, "ENOTTY"),
    (Errno::FBIG, "EFBIG"),
    (Errno::NOSPC, "ENOSPC"),
    (Errno::SPIPE, "ESPIPE"),
    (Errno::ROFS, "EROFS"),
    (Errno::PIPE, "EPIPE"),
    (Errno::RANGE, "ERANGE"),
    (Errno::DEADLK, "EDEADLK"),
    (Errno::NAMETOOLONG, "ENAMETOOLONG"),
    (Errno::NOSYS, "ENOSYS"),
    (Errno::NOTEMPTY, "ENOTEMPTY"),
    (Errno::LOOP, "ELOOP"),
    (Errno::NODATA, "ENODATA"),
    (Errno::PROTO, "EPROTO"),
    (Errno::BADMSG, "EBADMSG"),
    (Errno::OVERFLOW, "EOVERFLOW"),
    (Errno::NOTSOCK, "ENOTSOCK"),
    (Errno::MSGSIZE, "EMSGSIZE"),
    (Errno::PROTOTYPE, "EPROTOTYPE"),
    (Errno::PROTONOSUPPORT, "EPROTONOSUPPORT"),
    (Errno::OPNOTSUPP, "EOPNOTSUPP"),
    (Errno::AFNOSUPPORT, "EAFNOSUPPORT"),
    (Errno::ADDRINUSE, "EADDRINUSE"),
    (Errno::ADDRNOTAVAIL, "EADDRNOTAVAIL"),
    (Errno::CONNABORTED, "ECONNABORTED"),
    (Errno::CONNRESET, "ECONNRESET"),
    (Errno::NOBUFS, "ENOBUFS"),
    (Errno::ISCONN, "EISCONN"),
    (Errno::NOTCONN, "ENOTCONN"),
    (Errno::TIMEDOUT, "ETIMEDOUT"),
    (Errno::CONNREFUSED, "ECONNREFUSED"),
    (Errno::ALREADY, "EALREADY"),
    (Errno::INPROGRESS, "EINPROGRESS"),
    (Errno::STALE, "ESTALE"),
    (Errno::CANCELED, "ECANCELED"),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn os_errors_name_the_request_and_the_errno_text() {
        let e = Error::Os {
            op: "PRESERVE_FD",
            errno: Errno::BUSY,
        };
        assert_eq!(e.to_string(), "PRESERVE_FD: Device or resource busy");
        assert_eq!(e.errno(), Errno::BUSY);
        assert!(e.is_busy());
        assert!(!e.is_stale());
    }

    #[test]
    fn estale_from_the_daemon_is_stale() {
        assert!(Error::answered("RESTORE_FD", Errno::STALE).is_stale());
        assert_eq!(Error::Stale.errno(), Errno::STALE);
        assert!(matches!(
            Error::answered("RESTORE_FD", Errno::NOENT),
            Error::Os {
                op: "RESTORE_FD",
                errno: Errno::NOENT
            }
        ));
    }

    #[test]
    fn every_variant_has_an_errno() {
        let protocol = Error::Protocol {
            op: "GET_STATE",
            source: ProtocolError::UnknownState(9),
        };
        assert_eq!(protocol.errno(), Errno::PROTO);
        assert_eq!(protocol.to_string(), "Malformed reply to GET_STATE");
        let connect = Error::Connect {
            path: "/x/luo.sock".into(),
            source: Errno::NOENT,
        };
        assert!(connect.is_not_found());
        assert_eq!(connect.to_string(), "Cannot connect to /x/luo.sock");
        assert_eq!(
            Error::InvalidName {
                name: String::new()
            }
            .errno(),
            Errno::INVAL
        );
        let io: std::io::Error = Error::Stale.into();
        assert_eq!(io.raw_os_error(), None);
        assert_eq!(io.kind(), std::io::ErrorKind::StaleNetworkFileHandle);
    }

    #[test]
    fn errno_names_and_texts() {
        assert_eq!(errno_name(Errno::PROTONOSUPPORT), Some("EPROTONOSUPPORT"));
        assert_eq!(errno_name(Errno::from_raw_os_error(4000)), None);
        assert_eq!(errno_text(Errno::NOENT), "No such file or directory");
        let names: std::collections::HashSet<_> = ERRNO_NAMES.iter().map(|(_, n)| n).collect();
        assert_eq!(names.len(), ERRNO_NAMES.len());
    }
}
