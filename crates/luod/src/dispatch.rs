//! Requests on device and session handles: decode (SPEC §3.1, once, in
//! `luo-uapi`), act on the orchestrator, reply (SPEC §8.1).
//!
//! Every request gets exactly one reply. A refused request gets its errno and
//! changes nothing; an fd that came with a request that takes none is closed.
//! Errors of the engine become errnos in one place ([`luo_core::Error::errno`]).

use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;

use luo_core::{Caller, FileInfo, FileKey, SessionId};
use luo_uapi::extensible::{Extensible, reply_bytes};
use luo_uapi::rfc_v4::{DeviceRequest, SessionRequest, parse_name};
use luo_wire::{Abi, HELLO_CMD, Hello, Request};
use rustix::fs::FileType;
use rustix::io::Errno;

use crate::server::{Conn, Daemon};

/// The largest struct a reply copies back: CREATE_SESSION's and
/// RETRIEVE_SESSION's (`Response::ok` checks each at compile time).
const REPLY_MAX: usize = 72;

/// What goes back: the result, the struct as copied back, and maybe an fd.
/// The struct is kept in place: a reply allocates nothing.
struct Response {
    result: Result<(), Errno>,
    /// The struct as copied back is `payload[..len]`.
    payload: [u8; REPLY_MAX],
    len: usize,
    fd: Option<OwnedFd>,
}

impl Response {
    /// Success with nothing copied back.
    fn empty() -> Self {
        Response {
            result: Ok(()),
            payload: [0; REPLY_MAX],
            len: 0,
            fd: None,
        }
    }

    fn err(errno: Errno) -> Self {
        Response {
            result: Err(errno),
            ..Response::empty()
        }
    }

    fn ok<T: Extensible>(value: &T, caller_size: usize) -> Self {
        const { assert!(size_of::<T>() <= REPLY_MAX) };
        let bytes = reply_bytes(value, caller_size);
        let mut payload = [0; REPLY_MAX];
        payload[..bytes.len()].copy_from_slice(bytes);
        Response {
            result: Ok(()),
            payload,
            len: bytes.len(),
            fd: None,
        }
    }

    fn with_fd(mut self, fd: OwnedFd) -> Self {
        self.fd = Some(fd);
        self
    }
}

fn engine(e: &luo_core::Error) -> Response {
    tracing::debug!(error = %e, errno = %e.errno(), "request refused");
    Response::err(e.errno())
}

/// Serve one request on handle `token`. Returns false when the handle must be
/// closed (its peer cannot be answered, or it asked for the device and lost).
pub(crate) fn serve(d: &mut Daemon, token: u64, req: Request) -> bool {
    let (response, keep) = match d.conns.get(&token) {
        Some(Conn::Device { hello: false, .. }) => hello(d, token, &req),
        Some(Conn::Device { uid, .. }) => {
            let uid = req.creds.map_or(*uid, |c| c.uid.as_raw());
            (device(d, Caller { uid }, req), true)
        }
        Some(Conn::Session { id, .. }) => {
            let id = *id;
            // A session handle's peer is whoever holds the other end now: the
            // kernel stamps each message with its sender (SO_PASSCRED).
            let Some(creds) = req.creds else {
                return reply(d, token, Response::err(Errno::ACCESS));
            };
            (
                session(
                    d,
                    id,
                    Caller {
                        uid: creds.uid.as_raw(),
                    },
                    req,
                ),
                true,
            )
        }
        Some(Conn::Control { .. }) | None => return false,
    };
    reply(d, token, response) && keep
}

fn reply(d: &Daemon, token: u64, r: Response) -> bool {
    let Some(conn) = d.conns.get(&token) else {
        return false;
    };
    let fd = r.fd.as_ref().map(AsFd::as_fd);
    match luo_wire::send_reply(conn.fd().as_fd(), r.result, &r.payload[..r.len], fd) {
        Ok(()) => true,
        Err(e) => {
            // A client that does not read its replies is disconnected.
            tracing::debug!(error = %e, "cannot reply; closing the handle");
            false
        }
    }
}

fn hello(d: &mut Daemon, token: u64, req: &Request) -> (Response, bool) {
    if req.cmd != HELLO_CMD || req.fd.is_some() {
        return (Response::err(Errno::INVAL), true);
    }
    match Hello::check(req.payload) {
        Ok(Abi::RfcV4) => {}
        Ok(Abi::Mainline) => return (Response::err(Errno::PROTONOSUPPORT), true),
        Err(e) => return (Response::err(e), true),
    }
    if d.device_holders > 0 && !d.cfg.shared_device {
        // The kernel's device is exclusive: the second opener gets EBUSY.
        return (Response::err(Errno::BUSY), false);
    }
    if let Some(Conn::Device { hello, .. }) = d.conns.get_mut(&token) {
        *hello = true;
        d.device_holders += 1;
    }
    (Response::empty(), true)
}

fn device(d: &mut Daemon, caller: Caller, req: Request) -> Response {
    if req.cmd == HELLO_CMD || req.fd.is_some() {
        return Response::err(Errno::INVAL);
    }
    let size = req.payload.len();
    let request = match DeviceRequest::decode(req.cmd, req.payload) {
        Ok(r) => r,
        Err(e) => return Response::err(e),
    };
    match request {
        DeviceRequest::GetState(mut s) => {
            s.state = d.orch.state() as u32;
            Response::ok(&s, size)
        }
        DeviceRequest::SetEvent(s) => match d.global_event(s.event) {
            Ok(()) => Response::ok(&s, size),
            Err(e) => engine(&e),
        },
        DeviceRequest::CreateSession(mut s) => {
            s.fd = -1;
            let id = parse_name(&s.name)
                .map_err(Response::err)
                .and_then(|name| d.orch.create_session(name, caller).map_err(|e| engine(&e)));
            hand_out(d, id, caller, "created")
                .map_or_else(|r| r, |fd| Response::ok(&s, size).with_fd(fd))
        }
        DeviceRequest::RetrieveSession(mut s) => {
            s.fd = -1;
            let id = parse_name(&s.name).map_err(Response::err).and_then(|name| {
                d.orch
                    .retrieve_session(name, caller)
                    .map_err(|e| engine(&e))
            });
            hand_out(d, id, caller, "retrieved")
                .map_or_else(|r| r, |fd| Response::ok(&s, size).with_fd(fd))
        }
    }
}

/// The client's end of a handle to the session just created or retrieved. If no
/// handle can be made, the session is released at once, as if the client had
/// closed it: nothing is left behind.
fn hand_out(
    d: &mut Daemon,
    id: Result<SessionId, Response>,
    caller: Caller,
    what: &str,
) -> Result<OwnedFd, Response> {
    let id = id?;
    match open_session_handle(d, id) {
        Ok(fd) => {
            let name = d
                .orch
                .session(id)
                .map(|s| s.name().to_owned())
                .unwrap_or_default();
            tracing::info!(session = %name, uid = caller.uid, "session {what}");
            Ok(fd)
        }
        Err(e) => {
            d.orch.release_session(id);
            Err(Response::err(e))
        }
    }
}

/// Make a session handle: keep one end (watched, credential-stamped), return the
/// other for the client. Both ends are reserved: a session handle cannot be
/// preserved into a session.
fn open_session_handle(d: &mut Daemon, id: SessionId) -> Result<OwnedFd, Errno> {
    let (ours, theirs) = luo_wire::socketpair_seqpacket()?;
    rustix::io::ioctl_fionbio(&ours, true)?;
    luo_wire::pass_credentials(ours.as_fd())?;
    let keys = [FileKey::of(ours.as_fd())?, FileKey::of(theirs.as_fd())?];
    for key in keys {
        d.orch.reserve_file(key);
    }
    if let Err(e) = d.add_conn(Conn::Session { fd: ours, id, keys }) {
        for key in keys {
            d.orch.unreserve_file(key);
        }
        return Err(e);
    }
    Ok(theirs)
}

fn session(d: &mut Daemon, id: SessionId, caller: Caller, req: Request) -> Response {
    let size = req.payload.len();
    let request = match SessionRequest::decode(req.cmd, req.payload) {
        Ok(r) => r,
        Err(e) => return Response::err(e),
    };
    if req.fd.is_some() && !matches!(request, SessionRequest::PreserveFd(_)) {
        return Response::err(Errno::INVAL);
    }
    let result = match request {
        SessionRequest::PreserveFd(s) => {
            let (device, control) = (&d.device_path, &d.control_path);
            d.orch
                .preserve_fd_refusing(id, s.token, req.fd, caller, |file| {
                    is_our_socket(file, [device, control])
                })
                .map(|()| Response::ok(&s, size))
        }
        SessionRequest::UnpreserveFd(s) => d
            .orch
            .unpreserve_fd(id, s.token, caller)
            .map(|()| Response::ok(&s, size)),
        SessionRequest::RestoreFd(mut s) => d.orch.restore_fd(id, s.token, caller).map(|fd| {
            s.fd = -1;
            Response::ok(&s, size).with_fd(fd)
        }),
        SessionRequest::GetState(mut s) => d.orch.session_state(id, caller).map(|state| {
            s.state = state as u32;
            Response::ok(&s, size)
        }),
        SessionRequest::SetEvent(s) => d
            .orch
            .session_event(id, s.event, caller)
            .map(|()| Response::ok(&s, size)),
    };
    result.unwrap_or_else(|e| engine(&e))
}

/// A client's end of its connection to our device or control socket: its peer
/// address is one of our paths. Such a file is the daemon's own (SPEC §6.1).
fn is_our_socket(file: &FileInfo<'_>, ours: [&PathBuf; 2]) -> bool {
    if FileType::from_raw_mode(file.stat().st_mode) != FileType::Socket {
        return false;
    }
    let Ok(Some(addr)) = rustix::net::getpeername(file.fd()) else {
        return false;
    };
    let Ok(unix) = rustix::net::SocketAddrUnix::try_from(addr) else {
        return false;
    };
    let Some(path) = unix.path_bytes() else {
        return false;
    };
    ours.iter()
        .any(|p| p.as_os_str().as_encoded_bytes() == path)
}
