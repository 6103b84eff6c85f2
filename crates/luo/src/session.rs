//! A session handle: preserved files under tokens, and the session's own state
//! machine (SPEC §5, §6).
//!
//! # Lifecycle
//! Before an update: [`crate::create_session`], then [`Session::preserve`] each fd
//! under a token while the session is NORMAL. The operator's PREPARE (or
//! [`Session::set_event`]`(Prepare)`) fixes the list; the live update freezes the
//! session and carries it to the next epoch. After the update:
//! [`crate::retrieve_session`] by name, [`Session::restore`] each token, then
//! [`Event::Finish`]: files never restored are dropped, restored ones stay
//! preserved for the next update unless unpreserved.
//!
//! # Unhappy paths
//! - Closing the last holder of the handle releases the session: PREPARED or FROZEN
//!   is cancelled, UPDATED is finished, then every file is unpreserved and the
//!   session removed. Keep the handle open for as long as the session must live.
//! - After a live update the old handle is stale: every request fails with
//!   [`Error::Stale`] and its close changes nothing. Retrieve the session again by
//!   name ([`Session::name`] remembers it when this library created or retrieved it).
//! - A handle may be shared with other processes (`fork`, `dup`, passing it over a
//!   unix socket); the session lives until the last copy closes. Requests from two
//!   processes on one handle at the same time may interleave and each may read the
//!   other's reply: don't do that (threads of one process are serialised).

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

use luo_uapi::rfc_v4::{
    Event, LIVEUPDATE_SESSION_GET_STATE, LIVEUPDATE_SESSION_PRESERVE_FD,
    LIVEUPDATE_SESSION_RESTORE_FD, LIVEUPDATE_SESSION_SET_EVENT, LIVEUPDATE_SESSION_UNPRESERVE_FD,
    SessionGetState, SessionPreserveFd, SessionRestoreFd, SessionSetEvent, SessionUnpreserveFd,
    State,
};

use crate::connection::Connection;
use crate::device::state_from;
use crate::error::{Error, ProtocolError, Result};

/// A session handle.
///
/// Requests from several threads on one `Session` are serialised. The handle is
/// close-on-exec; to hand it to a child, clear that flag or pass it over a unix
/// socket and adopt it there with [`Session::from_fd`].
///
/// ```no_run
/// use std::os::fd::AsFd;
///
/// let session = luo::create_session("db")?;
/// let memory = rustix::fs::memfd_create("db-cache", rustix::fs::MemfdFlags::CLOEXEC).unwrap();
/// session.preserve(&memory, 1)?;
/// // Keep `session` open until the update: closing it drops what it preserves.
/// # Ok::<(), luo::Error>(())
/// ```
#[derive(Debug)]
pub struct Session {
    conn: Connection,
    name: Option<String>,
}

impl Session {
    pub(crate) fn with_name(fd: OwnedFd, name: &str) -> Session {
        Session {
            conn: Connection::new(fd),
            name: Some(name.to_owned()),
        }
    }

    /// Adopts a session handle received from elsewhere: inherited, or passed over a
    /// unix socket by the process that created it. Nothing is checked until the
    /// first request; [`Session::name`] is `None`.
    ///
    /// ```no_run
    /// # let received: std::os::fd::OwnedFd = luo::create_session("db")?.into_fd();
    /// let session = luo::Session::from_fd(received);
    /// println!("{}", session.state()?);
    /// # Ok::<(), luo::Error>(())
    /// ```
    #[must_use]
    pub fn from_fd(fd: OwnedFd) -> Session {
        Session {
            conn: Connection::new(fd),
            name: None,
        }
    }

    /// The handle's fd. The session lives as long as this fd (or any copy of it)
    /// stays open.
    ///
    /// ```no_run
    /// let fd: std::os::fd::OwnedFd = luo::create_session("db")?.into_fd();
    /// # Ok::<(), luo::Error>(())
    /// ```
    #[must_use]
    pub fn into_fd(self) -> OwnedFd {
        self.conn.into_fd()
    }

    /// The session's name, when this library created or retrieved it; `None` for a
    /// handle adopted with [`Session::from_fd`].
    ///
    /// ```no_run
    /// let session = luo::create_session("db")?;
    /// assert_eq!(session.name(), Some("db"));
    /// # Ok::<(), luo::Error>(())
    /// ```
    #[must_use]
    pub fn name(&self) -> Option<&str> {
        self.name.as_deref()
    }

    /// Preserves `fd` under `token` (PRESERVE_FD): the daemon keeps its own
    /// reference to the open file and carries it across the next live update.
    /// Tokens are the caller's: any `u64`, unique within the session.
    ///
    /// # Errors
    /// - [`Error::Os`]: EBUSY (the global state is neither NORMAL nor UPDATED, the
    ///   session is not NORMAL, or the same open file is already preserved in some
    ///   session), EBADF (no fd arrived), ENOENT (no handler for this kind of fd), EEXIST (token in use),
    ///   EACCES (not the session's owner), ENOSPC (a limit).
    /// - [`Error::Stale`], [`Error::Transport`], [`Error::Protocol`].
    ///
    /// ```no_run
    /// let session = luo::create_session("proxy")?;
    /// let listener = std::net::TcpListener::bind("127.0.0.1:8080").unwrap();
    /// session.preserve(&listener, 0x8080)?;
    /// # Ok::<(), luo::Error>(())
    /// ```
    pub fn preserve(&self, fd: impl AsFd, token: u64) -> Result<()> {
        let fd = fd.as_fd();
        let request = SessionPreserveFd {
            // Not read by the daemon (the fd travels as SCM_RIGHTS); filled in as
            // an ioctl caller would, for the benefit of anyone tracing the wire.
            fd: fd.as_raw_fd(),
            token,
            ..Default::default()
        };
        self.conn.call_struct(
            "PRESERVE_FD",
            LIVEUPDATE_SESSION_PRESERVE_FD,
            &request,
            Some(fd),
        )?;
        Ok(())
    }

    /// Stops preserving the file under `token` (UNPRESERVE_FD); the daemon closes
    /// its reference.
    ///
    /// # Errors
    /// - [`Error::Os`]: EBUSY (not NORMAL), ENOENT (unknown token), EACCES.
    /// - [`Error::Stale`], [`Error::Transport`], [`Error::Protocol`].
    ///
    /// ```no_run
    /// let session = luo::create_session("db")?;
    /// session.unpreserve(1)?;
    /// # Ok::<(), luo::Error>(())
    /// ```
    pub fn unpreserve(&self, token: u64) -> Result<()> {
        let request = SessionUnpreserveFd {
            token,
            ..Default::default()
        };
        self.conn.call_struct(
            "UNPRESERVE_FD",
            LIVEUPDATE_SESSION_UNPRESERVE_FD,
            &request,
            None,
        )?;
        Ok(())
    }

    /// Gets the file preserved under `token` back after a live update (RESTORE_FD):
    /// a new fd to the same open file, close-on-exec, with its data, size and offset
    /// as they were frozen.
    ///
    /// # Errors
    /// - [`Error::Os`]: EBUSY (global state or session not UPDATED), ENOENT
    ///   (unknown token), EADDRINUSE (already restored), EIO (a memfd's size changed
    ///   after the freeze), EACCES.
    /// - [`Error::Stale`], [`Error::Transport`], [`Error::Protocol`].
    ///
    /// ```no_run
    /// let session = luo::retrieve_session("db")?;
    /// let memory = session.restore(1)?;
    /// session.set_event(luo::Event::Finish)?;
    /// # Ok::<(), luo::Error>(())
    /// ```
    pub fn restore(&self, token: u64) -> Result<OwnedFd> {
        const OP: &str = "RESTORE_FD";
        let request = SessionRestoreFd {
            fd: -1,
            token,
            ..Default::default()
        };
        let (_, fd) = self
            .conn
            .call_struct(OP, LIVEUPDATE_SESSION_RESTORE_FD, &request, None)?;
        fd.ok_or(Error::Protocol {
            op: OP,
            source: ProtocolError::MissingFd,
        })
    }

    /// The session's state (GET_STATE).
    ///
    /// # Errors
    /// [`Error::Os`] (EACCES), [`Error::Stale`], [`Error::Transport`],
    /// [`Error::Protocol`] (also for a value outside the uAPI's enum).
    ///
    /// ```no_run
    /// let session = luo::create_session("db")?;
    /// assert_eq!(session.state()?, luo::State::Normal);
    /// # Ok::<(), luo::Error>(())
    /// ```
    pub fn state(&self) -> Result<State> {
        const OP: &str = "SESSION_GET_STATE";
        let (reply, _) = self.conn.call_struct(
            OP,
            LIVEUPDATE_SESSION_GET_STATE,
            &SessionGetState::default(),
            None,
        )?;
        state_from(OP, reply.state)
    }

    /// Drives the session's own state machine (SET_EVENT), independently of the
    /// global one: PREPARE (NORMAL → PREPARED), FREEZE (PREPARED → FROZEN), CANCEL
    /// (back to NORMAL; a no-op elsewhere), FINISH (UPDATED → NORMAL, dropping
    /// files never restored; a no-op elsewhere).
    ///
    /// # Errors
    /// - [`Error::Os`]: EBUSY (PREPARE or FREEZE from the wrong state), the errno
    ///   of a file that failed to prepare or freeze (the session is left as it was,
    ///   or NORMAL after a failed freeze), EACCES.
    /// - [`Error::Stale`], [`Error::Transport`], [`Error::Protocol`].
    ///
    /// ```no_run
    /// let session = luo::retrieve_session("db")?;
    /// let _memory = session.restore(1)?;
    /// session.set_event(luo::Event::Finish)?;
    /// # Ok::<(), luo::Error>(())
    /// ```
    pub fn set_event(&self, event: Event) -> Result<()> {
        self.set_event_raw(event as u32)
    }

    /// [`Session::set_event`] with any value, including ones no [`Event`] names
    /// (answered EINVAL).
    ///
    /// # Errors
    /// As [`Session::set_event`].
    ///
    /// ```no_run
    /// let session = luo::create_session("db")?;
    /// assert_eq!(session.set_event_raw(9).unwrap_err().errno(), luo::Errno::INVAL);
    /// # Ok::<(), luo::Error>(())
    /// ```
    pub fn set_event_raw(&self, event: u32) -> Result<()> {
        let request = SessionSetEvent {
            event,
            ..Default::default()
        };
        self.conn.call_struct(
            "SESSION_SET_EVENT",
            LIVEUPDATE_SESSION_SET_EVENT,
            &request,
            None,
        )?;
        Ok(())
    }

    /// Sends `buf` as the struct of command `cmd`, exactly as `ioctl(fd, cmd, buf)`
    /// would pass it, whatever its size field says. On success the reply's payload
    /// is copied back over the start of `buf`, and a received fd (RESTORE_FD) is
    /// returned with its number written into `buf[4..8]`.
    ///
    /// # Errors
    /// [`Error::Os`] with the daemon's answer; [`Error::Transport`] with EMSGSIZE
    /// for a `buf` longer than a frame carries (4096 bytes); [`Error::Stale`].
    ///
    /// ```no_run
    /// use luo::uapi::{SessionUnpreserveFd, LIVEUPDATE_SESSION_UNPRESERVE_FD};
    /// use zerocopy::IntoBytes;
    /// let session = luo::create_session("db")?;
    /// let mut buf = SessionUnpreserveFd { reserved: 1, ..Default::default() }.as_bytes().to_vec();
    /// let e = session.raw_ioctl(LIVEUPDATE_SESSION_UNPRESERVE_FD, &mut buf).unwrap_err();
    /// assert_eq!(e.errno(), luo::Errno::OPNOTSUPP);
    /// # Ok::<(), luo::Error>(())
    /// ```
    pub fn raw_ioctl(&self, cmd: u32, buf: &mut [u8]) -> Result<Option<OwnedFd>> {
        self.conn.raw(cmd, buf, None)
    }

    /// [`Session::raw_ioctl`] with `fd` attached as SCM_RIGHTS, as PRESERVE_FD
    /// sends it (or `None`, to see the daemon answer EBADF).
    ///
    /// # Errors
    /// As [`Session::raw_ioctl`].
    ///
    /// ```no_run
    /// use std::os::fd::AsFd;
    /// use luo::uapi::{SessionPreserveFd, LIVEUPDATE_SESSION_PRESERVE_FD};
    /// use zerocopy::IntoBytes;
    /// let session = luo::create_session("db")?;
    /// let memory = rustix::fs::memfd_create("x", rustix::fs::MemfdFlags::CLOEXEC).unwrap();
    /// let mut buf = SessionPreserveFd { token: 7, ..Default::default() }.as_bytes().to_vec();
    /// buf.extend_from_slice(&[0; 8]); // a larger caller struct, zero tail: accepted
    /// buf[..4].copy_from_slice(&24u32.to_ne_bytes());
    /// session.raw_ioctl_with_fd(LIVEUPDATE_SESSION_PRESERVE_FD, &mut buf, Some(memory.as_fd()))?;
    /// # Ok::<(), luo::Error>(())
    /// ```
    pub fn raw_ioctl_with_fd(
        &self,
        cmd: u32,
        buf: &mut [u8],
        fd: Option<BorrowedFd<'_>>,
    ) -> Result<Option<OwnedFd>> {
        self.conn.raw(cmd, buf, fd)
    }
}

impl AsFd for Session {
    /// The handle's fd, e.g. to pass it to another process over a unix socket.
    ///
    /// ```no_run
    /// use std::os::fd::AsFd;
    /// let session = luo::create_session("db")?;
    /// let copy = session.as_fd().try_clone_to_owned().unwrap();
    /// # Ok::<(), luo::Error>(())
    /// ```
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.conn.as_fd()
    }
}

impl From<OwnedFd> for Session {
    /// As [`Session::from_fd`].
    ///
    /// ```no_run
    /// # let fd: std::os::fd::OwnedFd = luo::create_session("db")?.into_fd();
    /// let session: luo::Session = fd.into();
    /// # Ok::<(), luo::Error>(())
    /// ```
    fn from(fd: OwnedFd) -> Session {
        Session::from_fd(fd)
    }
}

impl From<Session> for OwnedFd {
    /// As [`Session::into_fd`].
    ///
    /// ```no_run
    /// let fd = std::os::fd::OwnedFd::from(luo::create_session("db")?);
    /// # Ok::<(), luo::Error>(())
    /// ```
    fn from(session: Session) -> OwnedFd {
        session.into_fd()
    }
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsFd;
    use std::thread;

    use luo_uapi::Errno;
    use luo_wire::socketpair_seqpacket;
    use zerocopy::{FromBytes, IntoBytes};

    use super::*;

    /// A fake session end: PRESERVE_FD must carry an fd; RESTORE_FD answers with a
    /// fresh pipe end; GET_STATE says UPDATED; UNPRESERVE_FD of token 0 is ENOENT.
    fn fake_session() -> (Session, thread::JoinHandle<()>) {
        let (ours, theirs) = socketpair_seqpacket().expect("socketpair");
        let server = thread::spawn(move || {
            let mut rx = luo_wire::RecvBuffer::new();
            while let Ok(Some(req)) = luo_wire::recv_request(theirs.as_fd(), &mut rx) {
                let mut payload = req.payload.to_vec();
                let mut fd = None;
                let result = match req.cmd {
                    LIVEUPDATE_SESSION_PRESERVE_FD if req.fd.is_none() => Err(Errno::BADF),
                    LIVEUPDATE_SESSION_RESTORE_FD => {
                        payload[4..8].copy_from_slice(&(-1i32).to_ne_bytes());
                        let (r, _w) = rustix::pipe::pipe().expect("pipe");
                        fd = Some(r);
                        Ok(())
                    }
                    LIVEUPDATE_SESSION_GET_STATE => {
                        payload[8..12].copy_from_slice(&(State::Updated as u32).to_ne_bytes());
                        Ok(())
                    }
                    LIVEUPDATE_SESSION_UNPRESERVE_FD => {
                        let req = SessionUnpreserveFd::read_from_bytes(&payload).expect("struct");
                        if req.token == 0 {
                            Err(Errno::NOENT)
                        } else {
                            Ok(())
                        }
                    }
                    _ => Ok(()),
                };
                let sent = luo_wire::send_reply(
                    theirs.as_fd(),
                    result,
                    &payload,
                    fd.as_ref().map(AsFd::as_fd),
                );
                if sent.is_err() {
                    break;
                }
            }
        });
        (Session::from_fd(ours), server)
    }

    #[test]
    fn requests_round_trip() {
        let (session, server) = fake_session();
        let (r, _w) = rustix::pipe::pipe().expect("pipe");
        session.preserve(&r, 1).expect("preserve");
        session.restore(1).expect("restore");
        assert_eq!(session.state().expect("state"), State::Updated);
        session.set_event(Event::Finish).expect("finish");
        session.unpreserve(1).expect("unpreserve");
        let e = session.unpreserve(0).unwrap_err();
        assert!(e.is_not_found());
        assert_eq!(e.to_string(), "UNPRESERVE_FD: No such file or directory");
        let mut buf = SessionPreserveFd::default().as_bytes().to_vec();
        let e = session
            .raw_ioctl(LIVEUPDATE_SESSION_PRESERVE_FD, &mut buf)
            .unwrap_err();
        assert_eq!(e.errno(), Errno::BADF);
        assert_eq!(session.name(), None);
        drop(session);
        server.join().expect("server");
    }

    #[test]
    fn threads_sharing_a_handle_get_their_own_replies() {
        let (session, server) = fake_session();
        thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    for _ in 0..50 {
                        assert_eq!(session.state().expect("state"), State::Updated);
                        assert!(session.unpreserve(0).unwrap_err().is_not_found());
                    }
                });
            }
        });
        drop(session);
        server.join().expect("server");
    }

    #[test]
    fn a_handle_whose_daemon_is_gone_is_stale() {
        let (ours, theirs) = socketpair_seqpacket().expect("socketpair");
        let session = Session::with_name(ours, "db");
        drop(theirs);
        assert!(session.state().unwrap_err().is_stale());
        assert!(session.restore(1).unwrap_err().is_stale());
        assert_eq!(session.name(), Some("db"));
    }
}
