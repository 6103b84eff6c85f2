//! The client library of `luod`, the userspace Live Update Orchestrator: what a
//! service links to keep its memory, sockets and pipes across a live update.
//!
//! # Lifecycle
//! ```text
//! before the update                       after the update
//! ─────────────────                       ────────────────
//! create_session("db")   → Session        retrieve_session("db") → Session
//! session.preserve(fd, token)             session.restore(token) → OwnedFd
//! (keep the Session open)                 session.set_event(Event::Finish)
//!          └──── operator: luoctl prepare; luoctl update ────┘
//! ```
//! The device ([`Device`]) is exclusive, as `/dev/liveupdate` is: a service opens
//! it only to create or retrieve its sessions. [`create_session`] and
//! [`retrieve_session`] open it, act, close it, and retry for a while
//! ([`BUSY_TIMEOUT`]) when another process holds it. A [`Session`] is a handle of
//! its own that outlives the device and may be shared with other processes.
//!
//! # Unhappy paths
//! - Every request either succeeds or changes nothing; the daemon's refusal is
//!   [`Error::Os`] with the errno the uAPI documents ([`Error::errno`]).
//! - Closing the last copy of a session handle releases the session and drops
//!   everything it preserves; a service that exits before the update loses its
//!   session.
//! - A live update closes every handle of the old epoch: requests on them fail with
//!   [`Error::Stale`] (ESTALE). Retrieve the session again by name.
//! - No daemon: [`Error::Connect`]. A reply that does not decode:
//!   [`Error::Protocol`]. No fd is leaked on any of these paths; every fd this
//!   library returns or receives is close-on-exec.
//!
//! ```no_run
//! use luo::{Event, State};
//!
//! // At start: take our state back if there was an update, else start afresh.
//! let session = match luo::retrieve_session("db") {
//!     Ok(session) => {
//!         let memory = session.restore(1)?;
//!         session.set_event(Event::Finish)?;
//!         session
//!     }
//!     Err(e) if e.errno() == luo::Errno::AGAIN || e.is_not_found() => {
//!         let session = luo::create_session("db")?;
//!         let memory = rustix::fs::memfd_create("db", rustix::fs::MemfdFlags::CLOEXEC).unwrap();
//!         session.preserve(&memory, 1)?;
//!         session
//!     }
//!     Err(e) => return Err(e),
//! };
//! assert_eq!(session.state()?, State::Normal);
//! # Ok::<(), luo::Error>(())
//! ```

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod connection;
mod device;
mod error;
mod session;

use std::path::Path;

pub use device::{BUSY_TIMEOUT, Device};
pub use error::{Error, ProtocolError, Result, errno_name, errno_text};
pub use luo_uapi::Errno;
pub use luo_uapi::rfc_v4::{Event, State};
pub use session::Session;

/// The raw ABI (profile `rfc-v4`): command numbers and structs, for
/// [`Device::raw_ioctl`] and [`Session::raw_ioctl`].
///
/// ```
/// assert_eq!(luo::uapi::LIVEUPDATE_SESSION_PRESERVE_FD, 0xBA40);
/// ```
pub mod uapi {
    pub use luo_uapi::rfc_v4::*;
}

/// Creates the session `name` in one step: opens the device at the default path,
/// creates the session, closes the device. Retries for up to [`BUSY_TIMEOUT`]
/// while another process holds the device.
///
/// # Errors
/// As [`Device::open_at`] (EBUSY once the wait is over) and
/// [`Device::create_session`] (EAGAIN, EEXIST, ENOSPC, ...).
///
/// ```no_run
/// let session = luo::create_session("db")?;
/// # Ok::<(), luo::Error>(())
/// ```
pub fn create_session(name: &str) -> Result<Session> {
    create_session_at(luo_wire::paths::device_socket(), name)
}

/// [`create_session`] with the device socket at `path`.
///
/// # Errors
/// As [`create_session`].
///
/// ```no_run
/// let session = luo::create_session_at("/run/luo/luo.sock", "db")?;
/// # Ok::<(), luo::Error>(())
/// ```
pub fn create_session_at(path: impl AsRef<Path>, name: &str) -> Result<Session> {
    Device::open_at_retrying(path, BUSY_TIMEOUT)?.create_session(name)
}

/// Retrieves the incoming session `name` in one step: opens the device at the
/// default path, retrieves the session, closes the device. Retries for up to
/// [`BUSY_TIMEOUT`] while another process holds the device.
///
/// # Errors
/// As [`Device::open_at`] (EBUSY once the wait is over) and
/// [`Device::retrieve_session`] (EAGAIN when no update happened, ENOENT,
/// EADDRINUSE, EACCES).
///
/// ```no_run
/// let session = luo::retrieve_session("db")?;
/// let memory = session.restore(1)?;
/// # Ok::<(), luo::Error>(())
/// ```
pub fn retrieve_session(name: &str) -> Result<Session> {
    retrieve_session_at(luo_wire::paths::device_socket(), name)
}

/// [`retrieve_session`] with the device socket at `path`.
///
/// # Errors
/// As [`retrieve_session`].
///
/// ```no_run
/// let session = luo::retrieve_session_at("/run/luo/luo.sock", "db")?;
/// # Ok::<(), luo::Error>(())
/// ```
pub fn retrieve_session_at(path: impl AsRef<Path>, name: &str) -> Result<Session> {
    Device::open_at_retrying(path, BUSY_TIMEOUT)?.retrieve_session(name)
}
