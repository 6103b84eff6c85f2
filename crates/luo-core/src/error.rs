//! The engine's one error type, and the single place it becomes an errno.

use luo_uapi::Errno;
use luo_uapi::rfc_v4::{Event, State};

/// Everything the engine can refuse, with the values that matter.
///
/// [`Error::errno`] is the only mapping to errnos; the daemon puts that number on
/// the wire and the client library turns it back into a typed error.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    /// A raw event value that is not a [`Event`].
    #[error("Unknown event {0}")]
    UnknownEvent(u32),
    /// A global event not allowed in the current global state.
    #[error("Event {event} is not allowed in global state {state}")]
    GlobalTransition {
        /// The global state.
        state: State,
        /// The refused event.
        event: Event,
    },
    /// The global FREEZE: only the live update itself freezes.
    #[error("Global freeze is done by the live update itself")]
    GlobalFreeze,
    /// CREATE or RETRIEVE_SESSION in a global state that does not allow it.
    #[error("Sessions cannot be {op} in global state {state}")]
    NotNow {
        /// `"created"` or `"retrieved"`.
        op: &'static str,
        /// The global state.
        state: State,
    },
    /// An empty, unterminated, over-long or non-UTF-8 session name.
    #[error("Invalid session name")]
    InvalidName,
    /// The name is taken by another session, incoming ones included.
    #[error("Session {0:?} already exists")]
    SessionExists(String),
    /// No incoming session has this name.
    #[error("No incoming session {0:?}")]
    NoSuchSession(String),
    /// The incoming session was already retrieved.
    #[error("Session {0:?} is already retrieved")]
    AlreadyRetrieved(String),
    /// The caller's uid does not own the session and is not root.
    #[error("Session {name:?} belongs to uid {owner}, not {caller}")]
    NotOwner {
        /// The session.
        name: String,
        /// Its owner.
        owner: u32,
        /// The caller's uid.
        caller: u32,
    },
    /// A session handle the engine no longer knows (released).
    #[error("Session handle {0} is gone")]
    StaleHandle(u64),
    /// An operation refused by the session's or the global state.
    #[error("Session {name:?} is {state} (global {global}): cannot {op}")]
    SessionBusy {
        /// The session.
        name: String,
        /// Its state.
        state: State,
        /// The global state.
        global: State,
        /// What was refused.
        op: &'static str,
    },
    /// PRESERVE_FD without an fd.
    #[error("No file descriptor attached")]
    NoFd,
    /// No handler accepts this kind of file.
    #[error("No file handler can preserve {0}")]
    Unsupported(String),
    /// The token is already used in this session.
    #[error("Token {0:#x} already preserved in this session")]
    TokenExists(u64),
    /// The same open file is already preserved somewhere.
    #[error("This file is already preserved in session {session:?} as token {token:#x}")]
    AlreadyPreserved {
        /// Where it is preserved.
        session: String,
        /// Under which token.
        token: u64,
    },
    /// A configured limit was reached.
    #[error("Limit reached: {0}")]
    Limit(&'static str),
    /// No file under this token.
    #[error("No file with token {0:#x} in this session")]
    NoSuchToken(u64),
    /// The file was already restored.
    #[error("Token {0:#x} is already restored")]
    AlreadyRestored(u64),
    /// A handler callback failed.
    #[error("Handler {compatible} failed to {op} token {token:#x}")]
    Handler {
        /// The handler.
        compatible: String,
        /// The callback.
        op: &'static str,
        /// The file.
        token: u64,
        /// The errno it returned.
        #[source]
        source: Errno,
    },
    /// The live update needs global PREPARED.
    #[error("A live update needs global state prepared, not {0}")]
    UpdateNotPrepared(State),
    /// A handover image that cannot be decoded.
    #[error("Bad handover image: {0}")]
    Handover(#[from] crate::handover::HandoverError),
    /// A system call failed.
    #[error("System call failed")]
    Os(#[source] Errno),
}

impl Error {
    /// The errno this error is reported as.
    #[must_use]
    pub fn errno(&self) -> Errno {
        match self {
            Error::UnknownEvent(_) | Error::GlobalTransition { .. } | Error::InvalidName => {
                Errno::INVAL
            }
            Error::UpdateNotPrepared(_) => Errno::INVAL,
            Error::GlobalFreeze => Errno::OPNOTSUPP,
            Error::NotNow { .. } => Errno::AGAIN,
            Error::SessionExists(_) | Error::TokenExists(_) => Errno::EXIST,
            Error::NoSuchSession(_) | Error::Unsupported(_) | Error::NoSuchToken(_) => Errno::NOENT,
            Error::AlreadyRetrieved(_) | Error::AlreadyRestored(_) => Errno::ADDRINUSE,
            Error::NotOwner { .. } => Errno::ACCESS,
            Error::StaleHandle(_) | Error::NoFd => Errno::BADF,
            Error::SessionBusy { .. } | Error::AlreadyPreserved { .. } => Errno::BUSY,
            Error::Limit(_) => Errno::NOSPC,
            Error::Handover(_) => Errno::IO,
            Error::Handler { source, .. } | Error::Os(source) => *source,
        }
    }
}

/// The engine's result type.
pub type Result<T, E = Error> = core::result::Result<T, E>;
