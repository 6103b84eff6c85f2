//! The device: `/dev/liveupdate`, here a connection to `luod` (SPEC §3, §8.2, §9).
//!
//! # Lifecycle
//! [`Device::open`] connects to the device socket and says HELLO; from then on the
//! connection is a device handle, which creates and retrieves sessions and reads or
//! drives the global state. Closing it (dropping the [`Device`]) releases the
//! device; the sessions it created live on, each on its own handle.
//!
//! # Unhappy paths
//! - The device is exclusive by default: while another process holds it, HELLO
//!   answers EBUSY ([`Error::is_busy`]). Hold it only as long as it takes;
//!   [`crate::create_session`] and [`crate::retrieve_session`] open, act, close and
//!   retry on EBUSY for you.
//! - HELLO answers EPROTONOSUPPORT when the daemon does not speak this protocol
//!   version or profile, and EIO when it could not restore its handover and serves
//!   nothing.
//! - After a live update every handle of the old epoch is closed: requests fail with
//!   [`Error::Stale`]; open the device again.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

use luo_uapi::Errno;
use luo_uapi::rfc_v4::{
    Event, IoctlCreateSession, IoctlGetState, IoctlRetrieveSession, IoctlSetEvent,
    LIVEUPDATE_IOCTL_CREATE_SESSION, LIVEUPDATE_IOCTL_GET_STATE, LIVEUPDATE_IOCTL_RETRIEVE_SESSION,
    LIVEUPDATE_IOCTL_SET_EVENT, State, name_field,
};
use luo_wire::{Abi, HELLO_CMD, Hello};
use rustix::net::{AddressFamily, SocketAddrUnix, SocketFlags, SocketType};
use zerocopy::IntoBytes;

use crate::connection::Connection;
use crate::error::{Error, ProtocolError, Result};
use crate::session::Session;

/// How long [`crate::create_session`] and [`crate::retrieve_session`] wait for a
/// busy device before giving up with EBUSY.
///
/// ```no_run
/// let device = luo::Device::open_at_retrying("/run/luo/luo.sock", luo::BUSY_TIMEOUT * 5)?;
/// # Ok::<(), luo::Error>(())
/// ```
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(2);

/// First pause between attempts on a busy device; it doubles up to
/// [`BACKOFF_MAX`].
const BACKOFF_START: Duration = Duration::from_millis(1);
/// Longest pause between attempts on a busy device.
const BACKOFF_MAX: Duration = Duration::from_millis(50);

/// A device handle: a connection to `luod` that has said HELLO.
///
/// Requests from several threads on one `Device` are serialised. The handle is
/// close-on-exec.
///
/// ```no_run
/// use luo::{Device, State};
///
/// let device = Device::open()?;
/// if device.state()? == State::Updated {
///     let session = device.retrieve_session("db")?;
/// }
/// # Ok::<(), luo::Error>(())
/// ```
#[derive(Debug)]
pub struct Device {
    conn: Connection,
}

impl Device {
    /// Opens the device at the default socket path: `$LUO_SOCKET`, else
    /// `/run/luo/luo.sock` for root and `$XDG_RUNTIME_DIR/luo/luo.sock` for others.
    ///
    /// # Errors
    /// As [`Device::open_at`].
    ///
    /// ```no_run
    /// let device = luo::Device::open()?;
    /// # Ok::<(), luo::Error>(())
    /// ```
    pub fn open() -> Result<Device> {
        Device::open_at(luo_wire::paths::device_socket())
    }

    /// Opens the device at the socket `path`: connects and says HELLO (protocol 1,
    /// profile `rfc-v4`).
    ///
    /// # Errors
    /// - [`Error::Connect`]: ENOENT (no socket there), ECONNREFUSED (no daemon
    ///   behind it), EACCES (socket mode), ENAMETOOLONG (path too long for a socket).
    /// - [`Error::Os`] for HELLO: EBUSY (another process holds the device),
    ///   EPROTONOSUPPORT, EIO (the daemon serves nothing, its handover failed).
    /// - [`Error::Stale`]: the daemon closed the connection before answering, as it
    ///   does while it changes epoch; try again.
    ///
    /// ```no_run
    /// let device = luo::Device::open_at("/run/luo/luo.sock")?;
    /// # Ok::<(), luo::Error>(())
    /// ```
    pub fn open_at(path: impl AsRef<Path>) -> Result<Device> {
        let path = path.as_ref();
        let connect_error = |source| Error::Connect {
            path: path.to_path_buf(),
            source,
        };
        let addr = SocketAddrUnix::new(path).map_err(connect_error)?;
        let fd = rustix::net::socket_with(
            AddressFamily::UNIX,
            SocketType::SEQPACKET,
            SocketFlags::CLOEXEC,
            None,
        )
        .map_err(connect_error)?;
        rustix::net::connect(&fd, &addr).map_err(connect_error)?;
        let conn = Connection::new(fd);
        conn.call("HELLO", HELLO_CMD, Hello::new(Abi::RfcV4).as_bytes(), None)?;
        Ok(Device { conn })
    }

    /// [`Device::open_at`], retrying while the device is busy (EBUSY) or the daemon
    /// is between epochs ([`Error::Stale`] before HELLO's answer), for up to
    /// `timeout`: pauses start at 1 ms and double up to 50 ms.
    ///
    /// # Errors
    /// As [`Device::open_at`]; EBUSY once `timeout` has passed.
    ///
    /// ```no_run
    /// use std::time::Duration;
    /// let device = luo::Device::open_at_retrying("/run/luo/luo.sock", Duration::from_secs(5))?;
    /// # Ok::<(), luo::Error>(())
    /// ```
    pub fn open_at_retrying(path: impl AsRef<Path>, timeout: Duration) -> Result<Device> {
        let path = path.as_ref();
        let start = Instant::now();
        let mut pause = BACKOFF_START;
        loop {
            match Device::open_at(path) {
                Err(e) if e.is_busy() || e.is_stale() => {
                    if start.elapsed() + pause > timeout {
                        return Err(e);
                    }
                    thread::sleep(pause);
                    pause = (pause * 2).min(BACKOFF_MAX);
                }
                result => return result,
            }
        }
    }

    /// Adopts a device handle that already said HELLO, e.g. one inherited from a
    /// parent process. Nothing is checked until the first request.
    ///
    /// ```no_run
    /// # let inherited: std::os::fd::OwnedFd = luo::Device::open()?.into_fd();
    /// let device = luo::Device::from_fd(inherited);
    /// # Ok::<(), luo::Error>(())
    /// ```
    #[must_use]
    pub fn from_fd(fd: OwnedFd) -> Device {
        Device {
            conn: Connection::new(fd),
        }
    }

    /// The handle's fd; dropping it releases the device.
    ///
    /// ```no_run
    /// let fd: std::os::fd::OwnedFd = luo::Device::open()?.into_fd();
    /// # Ok::<(), luo::Error>(())
    /// ```
    #[must_use]
    pub fn into_fd(self) -> OwnedFd {
        self.conn.into_fd()
    }

    /// Creates a session named `name` (CREATE_SESSION). The session starts NORMAL,
    /// owned by this process's uid, and lives until the last holder of its handle
    /// closes it.
    ///
    /// # Errors
    /// - [`Error::InvalidName`]: empty, longer than 55 bytes, or containing a NUL.
    /// - [`Error::Os`]: EAGAIN (global state neither NORMAL nor UPDATED), EEXIST
    ///   (name in use, incoming sessions included), ENOSPC (a limit), EINVAL.
    /// - [`Error::Stale`], [`Error::Transport`], [`Error::Protocol`].
    ///
    /// ```no_run
    /// let device = luo::Device::open()?;
    /// let session = device.create_session("db")?;
    /// drop(device); // the session lives on
    /// # Ok::<(), luo::Error>(())
    /// ```
    pub fn create_session(&self, name: &str) -> Result<Session> {
        const OP: &str = "CREATE_SESSION";
        let request = IoctlCreateSession {
            name: name_field(name).map_err(|_| invalid_name(name))?,
            fd: -1,
            ..Default::default()
        };
        let (_, fd) = self
            .conn
            .call_struct(OP, LIVEUPDATE_IOCTL_CREATE_SESSION, &request, None)?;
        session_from(OP, fd, name)
    }

    /// Retrieves the incoming session named `name` after a live update
    /// (RETRIEVE_SESSION). It comes back UPDATED: restore its files, then
    /// [`Event::Finish`] it.
    ///
    /// # Errors
    /// - [`Error::InvalidName`], as for [`Device::create_session`].
    /// - [`Error::Os`]: EAGAIN (global state not UPDATED), ENOENT (no such
    ///   session), EADDRINUSE (already retrieved), EACCES (owned by another uid).
    /// - [`Error::Stale`], [`Error::Transport`], [`Error::Protocol`].
    ///
    /// ```no_run
    /// let device = luo::Device::open()?;
    /// let session = device.retrieve_session("db")?;
    /// # Ok::<(), luo::Error>(())
    /// ```
    pub fn retrieve_session(&self, name: &str) -> Result<Session> {
        const OP: &str = "RETRIEVE_SESSION";
        let request = IoctlRetrieveSession {
            name: name_field(name).map_err(|_| invalid_name(name))?,
            fd: -1,
            ..Default::default()
        };
        let (_, fd) =
            self.conn
                .call_struct(OP, LIVEUPDATE_IOCTL_RETRIEVE_SESSION, &request, None)?;
        session_from(OP, fd, name)
    }

    /// The global state (GET_STATE).
    ///
    /// # Errors
    /// [`Error::Stale`], [`Error::Transport`], [`Error::Protocol`] (also for a
    /// state value outside the uAPI's enum).
    ///
    /// ```no_run
    /// println!("global state: {}", luo::Device::open()?.state()?);
    /// # Ok::<(), luo::Error>(())
    /// ```
    pub fn state(&self) -> Result<State> {
        const OP: &str = "GET_STATE";
        let (reply, _) = self.conn.call_struct(
            OP,
            LIVEUPDATE_IOCTL_GET_STATE,
            &IoctlGetState::default(),
            None,
        )?;
        state_from(OP, reply.state)
    }

    /// Drives the global state machine (SET_EVENT): PREPARE, CANCEL or FINISH.
    ///
    /// # Errors
    /// - [`Error::Os`]: EINVAL (event not allowed in the current state),
    ///   EOPNOTSUPP (FREEZE: only the live update freezes), or the errno of a
    ///   session that failed to prepare (nothing stays prepared then).
    /// - [`Error::Stale`], [`Error::Transport`], [`Error::Protocol`].
    ///
    /// ```no_run
    /// luo::Device::open()?.set_event(luo::Event::Prepare)?;
    /// # Ok::<(), luo::Error>(())
    /// ```
    pub fn set_event(&self, event: Event) -> Result<()> {
        self.set_event_raw(event as u32)
    }

    /// [`Device::set_event`] with any value, including ones no [`Event`] names
    /// (answered EINVAL).
    ///
    /// # Errors
    /// As [`Device::set_event`].
    ///
    /// ```no_run
    /// let e = luo::Device::open()?.set_event_raw(42).unwrap_err();
    /// assert_eq!(e.errno(), luo::Errno::INVAL);
    /// # Ok::<(), luo::Error>(())
    /// ```
    pub fn set_event_raw(&self, event: u32) -> Result<()> {
        let request = IoctlSetEvent {
            event,
            ..Default::default()
        };
        self.conn
            .call_struct("SET_EVENT", LIVEUPDATE_IOCTL_SET_EVENT, &request, None)?;
        Ok(())
    }

    /// Sends `buf` as the struct of command `cmd`, exactly as `ioctl(fd, cmd, buf)`
    /// would pass it, whatever its size field says. On success the reply's payload
    /// is copied back over the start of `buf`, and a received fd (CREATE_SESSION,
    /// RETRIEVE_SESSION) is returned with its number written into `buf[4..8]`.
    ///
    /// # Errors
    /// [`Error::Os`] with the daemon's answer; [`Error::Transport`] with EMSGSIZE
    /// for a `buf` longer than a frame carries (4096 bytes); [`Error::Stale`].
    ///
    /// ```no_run
    /// use luo::uapi::{LIVEUPDATE_IOCTL_GET_STATE};
    /// let device = luo::Device::open()?;
    /// let mut buf = [0u8; 8];
    /// buf[..4].copy_from_slice(&4u32.to_ne_bytes()); // size below the minimum
    /// let e = device.raw_ioctl(LIVEUPDATE_IOCTL_GET_STATE, &mut buf).unwrap_err();
    /// assert_eq!(e.errno(), luo::Errno::INVAL);
    /// # Ok::<(), luo::Error>(())
    /// ```
    pub fn raw_ioctl(&self, cmd: u32, buf: &mut [u8]) -> Result<Option<OwnedFd>> {
        self.conn.raw(cmd, buf, None)
    }

    /// [`Device::raw_ioctl`] with an fd attached as SCM_RIGHTS (the daemon answers
    /// EINVAL: no device command takes one).
    ///
    /// # Errors
    /// As [`Device::raw_ioctl`].
    ///
    /// ```no_run
    /// use std::os::fd::AsFd;
    /// use luo::uapi::{IoctlGetState, LIVEUPDATE_IOCTL_GET_STATE};
    /// use zerocopy::IntoBytes;
    /// let device = luo::Device::open()?;
    /// let mut buf = IoctlGetState::default().as_bytes().to_vec();
    /// let stray = std::fs::File::open("/dev/null").unwrap();
    /// let e = device
    ///     .raw_ioctl_with_fd(LIVEUPDATE_IOCTL_GET_STATE, &mut buf, Some(stray.as_fd()))
    ///     .unwrap_err();
    /// assert_eq!(e.errno(), luo::Errno::INVAL);
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

impl AsFd for Device {
    /// The device handle's fd, e.g. to pass it to a child process.
    ///
    /// ```no_run
    /// use std::os::fd::AsFd;
    /// let device = luo::Device::open()?;
    /// let dup = device.as_fd().try_clone_to_owned().unwrap();
    /// # Ok::<(), luo::Error>(())
    /// ```
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.conn.as_fd()
    }
}

fn invalid_name(name: &str) -> Error {
    Error::InvalidName {
        name: name.to_owned(),
    }
}

fn session_from(op: &'static str, fd: Option<OwnedFd>, name: &str) -> Result<Session> {
    let fd = fd.ok_or(Error::Protocol {
        op,
        source: ProtocolError::MissingFd,
    })?;
    Ok(Session::with_name(fd, name))
}

pub(crate) fn state_from(op: &'static str, raw: u32) -> Result<State> {
    State::try_from(raw).map_err(|_: Errno| Error::Protocol {
        op,
        source: ProtocolError::UnknownState(raw),
    })
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsFd;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use rustix::net::{bind, listen};

    use super::*;

    /// A fake daemon on a temporary socket: answers HELLO with `hello(n)` for the
    /// n-th connection, then every request with `Ok` and the payload echoed.
    fn fake_daemon(
        dir: &Path,
        hello: impl Fn(usize) -> std::result::Result<(), Errno> + Send + 'static,
    ) -> (std::path::PathBuf, Arc<AtomicUsize>) {
        let path = dir.join("luo.sock");
        let listener = rustix::net::socket_with(
            AddressFamily::UNIX,
            SocketType::SEQPACKET,
            SocketFlags::CLOEXEC,
            None,
        )
        .expect("socket");
        bind(&listener, &SocketAddrUnix::new(&path).expect("addr")).expect("bind");
        listen(&listener, 16).expect("listen");
        let count = Arc::new(AtomicUsize::new(0));
        let seen = Arc::clone(&count);
        thread::spawn(move || {
            loop {
                let Ok(conn) = rustix::net::accept(&listener) else {
                    return;
                };
                let n = seen.fetch_add(1, Ordering::SeqCst);
                let answer = hello(n);
                thread::spawn(move || {
                    let mut rx = luo_wire::RecvBuffer::new();
                    while let Ok(Some(req)) = luo_wire::recv_request(conn.as_fd(), &mut rx) {
                        let result = if req.cmd == HELLO_CMD { answer } else { Ok(()) };
                        let _ = luo_wire::send_reply(conn.as_fd(), result, req.payload, None);
                    }
                });
            }
        });
        (path, count)
    }

    #[test]
    fn missing_socket_is_a_connect_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let e = Device::open_at(dir.path().join("nope.sock")).unwrap_err();
        assert!(matches!(e, Error::Connect { .. }), "{e:?}");
        assert_eq!(e.errno(), Errno::NOENT);
    }

    #[test]
    fn busy_device_is_retried_until_free() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (path, count) = fake_daemon(
            dir.path(),
            |n| if n < 3 { Err(Errno::BUSY) } else { Ok(()) },
        );
        let device = Device::open_at_retrying(&path, Duration::from_secs(2)).expect("open");
        assert_eq!(count.load(Ordering::SeqCst), 4);
        device.set_event(Event::Cancel).expect("echoed");
    }

    #[test]
    fn busy_device_gives_up_after_the_timeout() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (path, _) = fake_daemon(dir.path(), |_| Err(Errno::BUSY));
        let start = Instant::now();
        let e = Device::open_at_retrying(&path, Duration::from_millis(30)).unwrap_err();
        assert!(e.is_busy(), "{e:?}");
        assert_eq!(e.to_string(), "HELLO: Device or resource busy");
        assert!(start.elapsed() < Duration::from_secs(1));
    }

    #[test]
    fn other_hello_errors_are_not_retried() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (path, count) = fake_daemon(dir.path(), |_| Err(Errno::IO));
        let e = Device::open_at_retrying(&path, Duration::from_secs(2)).unwrap_err();
        assert_eq!(e.errno(), Errno::IO);
        assert_eq!(count.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn a_reply_without_a_session_fd_is_a_protocol_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (path, _) = fake_daemon(dir.path(), |_| Ok(()));
        let device = Device::open_at(&path).expect("open");
        let e = device.create_session("db").unwrap_err();
        assert!(
            matches!(
                e,
                Error::Protocol {
                    op: "CREATE_SESSION",
                    source: ProtocolError::MissingFd
                }
            ),
            "{e:?}"
        );
        // The echoed GET_STATE struct says state 0, UNDEFINED: a valid value.
        assert_eq!(device.state().expect("state"), State::Undefined);
    }

    #[test]
    fn bad_names_are_refused_before_sending() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (path, _) = fake_daemon(dir.path(), |_| Ok(()));
        let device = Device::open_at(&path).expect("open");
        for name in ["", "a\0b", &"x".repeat(56)] {
            let e = device.create_session(name).unwrap_err();
            assert!(matches!(e, Error::InvalidName { .. }), "{name:?}: {e:?}");
            let e = device.retrieve_session(name).unwrap_err();
            assert!(matches!(e, Error::InvalidName { .. }), "{name:?}: {e:?}");
        }
    }

    #[test]
    fn unknown_states_are_protocol_errors() {
        assert!(matches!(
            state_from("GET_STATE", 9),
            Err(Error::Protocol {
                source: ProtocolError::UnknownState(9),
                ..
            })
        ));
        assert_eq!(state_from("GET_STATE", 4).expect("state"), State::Updated);
    }
}
