//! Frames on an `AF_UNIX` `SOCK_SEQPACKET` socket, with one fd as `SCM_RIGHTS`.
//!
//! One call sends or receives one datagram. Receiving reads into `MAX_FRAME + 1`
//! bytes, asks the kernel for the datagram's true length (`MSG_TRUNC`) and passes
//! `MSG_CMSG_CLOEXEC`, so no received fd is ever inheritable, and keeps room for 4+
//! fds so that a frame carrying several is received whole and then refused, rather
//! than half-received. Every fd arrives as an [`OwnedFd`]: a refused frame drops
//! them, which closes them.
//!
//! # Errors, by what the caller does next
//! - [`RecvError::WouldBlock`] / [`SendError::WouldBlock`] (EAGAIN): nonblocking
//!   socket, try again when it polls ready.
//! - `Ok(None)` from [`recv_request`], [`RecvError::Closed`] from [`recv_reply`],
//!   [`SendError::Closed`]: the peer is gone; drop the connection.
//! - [`RecvError::Malformed`]: the datagram is consumed and its fds closed; answer
//!   EINVAL ([`FrameError::errno`]) and keep reading.
//! - [`RecvError::Io`] / [`SendError::Io`]: anything else; the socket is unusable.
//!
//! `EINTR` is retried. A zero-length datagram reads as end of file: our frames are
//! never empty, so only a peer that sends one is affected, by losing its connection.

use std::io::{IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{BorrowedFd, OwnedFd};

use luo_uapi::Errno;
use rustix::net::{
    AddressFamily, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags,
    SendAncillaryBuffer, SendAncillaryMessage, SendFlags, SocketFlags, SocketType, UCred, recvmsg,
    sendmsg,
};

use zerocopy::IntoBytes;

use crate::frame::{
    FrameError, MAX_FRAME, MAX_PAYLOAD, decode_reply, decode_request, reply_header, request_cmd,
    request_header,
};

/// Fds the control buffer has room for: enough that a frame with a few extra is
/// received whole (and refused as [`FrameError::TooManyFds`]); more than this is
/// [`FrameError::ControlTruncated`].
const MAX_FDS_RECEIVED: usize = 4;

/// A received request, its payload still in the [`RecvBuffer`] it arrived in.
#[derive(Debug)]
pub struct Request<'a> {
    /// The full ioctl value, or [`crate::HELLO_CMD`].
    pub cmd: u32,
    /// The caller's struct, at most [`MAX_PAYLOAD`] bytes.
    pub payload: &'a [u8],
    /// The fd that came with the request, close-on-exec. A command that takes none
    /// answers EINVAL and drops it.
    pub fd: Option<OwnedFd>,
    /// The sender's credentials, when the receiving socket has `SO_PASSCRED` set:
    /// who sent this very message, whichever process holds the socket now.
    pub creds: Option<UCred>,
}

/// A received reply.
#[derive(Debug)]
pub struct Reply {
    /// `Ok` for a result of 0, else the errno the daemon answered.
    pub result: Result<(), Errno>,
    /// The struct as copied back, at most [`MAX_PAYLOAD`] bytes.
    pub payload: Vec<u8>,
    /// The fd that came with the reply, close-on-exec.
    pub fd: Option<OwnedFd>,
}

/// Why no frame was received.
#[derive(Debug, thiserror::Error)]
pub enum RecvError {
    /// Nonblocking socket with nothing queued.
    #[error("Receive would block")]
    WouldBlock,
    /// The peer closed its end ([`recv_reply`] only; [`recv_request`] returns
    /// `Ok(None)`).
    #[error("Peer closed the connection")]
    Closed,
    /// A datagram arrived but is not a valid frame. It has been consumed and its fds
    /// closed; the connection is still in step.
    #[error("Malformed frame")]
    Malformed {
        /// What is wrong with it.
        #[source]
        error: FrameError,
        /// A request's `cmd`, when its magic was right; `None` for replies.
        cmd: Option<u32>,
    },
    /// `recvmsg` failed otherwise; the socket is unusable.
    #[error("Receive failed")]
    Io(#[source] Errno),
}

impl RecvError {
    /// EAGAIN, ECONNRESET, EINVAL (malformed), or the socket's errno.
    #[must_use]
    pub const fn errno(&self) -> Errno {
        match self {
            RecvError::WouldBlock => Errno::AGAIN,
            RecvError::Closed => Errno::CONNRESET,
            RecvError::Malformed { error, .. } => error.errno(),
            RecvError::Io(e) => *e,
        }
    }
}

/// Why a frame was not sent. Nothing was sent in any case: seqpacket sends are
/// all-or-nothing.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// Nonblocking socket whose peer's queue is full.
    #[error("Send would block")]
    WouldBlock,
    /// The peer closed its end.
    #[error("Peer closed the connection")]
    Closed,
    /// The payload does not fit a frame.
    #[error("Payload of {len} bytes exceeds {MAX_PAYLOAD}")]
    PayloadTooLarge {
        /// The payload offered.
        len: usize,
    },
    /// `sendmsg` failed otherwise.
    #[error("Send failed")]
    Io(#[source] Errno),
}

impl SendError {
    /// EAGAIN, EPIPE, EINVAL (payload too large), or the socket's errno.
    #[must_use]
    pub const fn errno(&self) -> Errno {
        match self {
            SendError::WouldBlock => Errno::AGAIN,
            SendError::Closed => Errno::PIPE,
            SendError::PayloadTooLarge { .. } => Errno::INVAL,
            SendError::Io(e) => *e,
        }
    }
}

/// Sends a request, with `fd` as `SCM_RIGHTS` if given.
///
/// # Errors
/// EINVAL ([`SendError::PayloadTooLarge`]) for a payload above [`MAX_PAYLOAD`];
/// EAGAIN, EPIPE, or another `sendmsg` errno.
pub fn send_request(
    sock: BorrowedFd<'_>,
    cmd: u32,
    payload: &[u8],
    fd: Option<BorrowedFd<'_>>,
) -> Result<(), SendError> {
    check_payload(payload)?;
    send_frame(sock, request_header(cmd, payload).as_bytes(), payload, fd)
}

/// Sends a reply: `result` travels as 0 or `-errno`, `fd` as `SCM_RIGHTS` if given.
///
/// # Errors
/// As [`send_request`].
pub fn send_reply(
    sock: BorrowedFd<'_>,
    result: Result<(), Errno>,
    payload: &[u8],
    fd: Option<BorrowedFd<'_>>,
) -> Result<(), SendError> {
    check_payload(payload)?;
    send_frame(sock, reply_header(result, payload).as_bytes(), payload, fd)
}

/// Room for one datagram: a whole frame, and one byte more, so that a longer
/// datagram is told apart (and refused) rather than read as a frame. A server
/// keeps one and receives every request into it.
#[derive(Debug)]
pub struct RecvBuffer(Box<[u8]>);

impl RecvBuffer {
    /// A zeroed buffer of `MAX_FRAME + 1` bytes.
    #[must_use]
    pub fn new() -> Self {
        RecvBuffer(vec![0; MAX_FRAME + 1].into_boxed_slice())
    }
}

impl Default for RecvBuffer {
    fn default() -> Self {
        Self::new()
    }
}

/// Receives one request into `buf`; `Ok(None)` when the peer has closed the
/// connection. The request's payload borrows `buf`: nothing is allocated.
///
/// # Errors
/// - EAGAIN ([`RecvError::WouldBlock`]).
/// - EINVAL ([`RecvError::Malformed`], with the `cmd` when the magic was right): any
///   [`FrameError`]. Answer it and keep reading.
/// - Another `recvmsg` errno ([`RecvError::Io`]).
pub fn recv_request<'b>(
    sock: BorrowedFd<'_>,
    buf: &'b mut RecvBuffer,
) -> Result<Option<Request<'b>>, RecvError> {
    let Some(datagram) = recv_datagram(sock, &mut buf.0)? else {
        return Ok(None);
    };
    let bytes = &buf.0[..datagram.len];
    let malformed = |error| RecvError::Malformed {
        error,
        cmd: request_cmd(bytes),
    };
    let fd = datagram.fd.map_err(malformed)?;
    let (cmd, payload) = decode_request(bytes).map_err(malformed)?;
    Ok(Some(Request {
        cmd,
        payload,
        fd,
        creds: datagram.creds,
    }))
}

/// Receives one reply.
///
/// # Errors
/// As [`recv_request`], plus ECONNRESET ([`RecvError::Closed`]) when the peer has
/// closed the connection.
pub fn recv_reply(sock: BorrowedFd<'_>) -> Result<Reply, RecvError> {
    // One receive buffer per thread: a fresh zeroed 4 KiB per reply was a
    // measurable share of a client's time.
    thread_local! {
        static BUFFER: std::cell::RefCell<RecvBuffer> = std::cell::RefCell::new(RecvBuffer::new());
    }
    BUFFER.with(|b| {
        let buf = &mut b.borrow_mut().0;
        let datagram = recv_datagram(sock, buf)?.ok_or(RecvError::Closed)?;
        let malformed = |error| RecvError::Malformed { error, cmd: None };
        let fd = datagram.fd.map_err(malformed)?;
        let (result, payload) = decode_reply(&buf[..datagram.len]).map_err(malformed)?;
        Ok(Reply {
            result,
            payload: payload.to_vec(),
            fd,
        })
    })
}

/// A connected pair of seqpacket sockets, both close-on-exec and blocking: the daemon
/// keeps one end of a session handle and sends the other.
///
/// # Errors
/// EMFILE, ENFILE, ENOMEM from `socketpair`.
pub fn socketpair_seqpacket() -> Result<(OwnedFd, OwnedFd), Errno> {
    rustix::net::socketpair(
        AddressFamily::UNIX,
        SocketType::SEQPACKET,
        SocketFlags::CLOEXEC,
        None,
    )
}

/// The peer's credentials (`SO_PEERCRED`), as of when the connection was made.
///
/// For a socketpair these are the credentials of the process that created it, so a
/// session handle reports the daemon itself.
///
/// # Errors
/// ENOTSOCK, or another `getsockopt` errno.
pub fn peer_credentials(sock: BorrowedFd<'_>) -> Result<UCred, Errno> {
    rustix::net::sockopt::socket_peercred(sock)
}

fn check_payload(payload: &[u8]) -> Result<(), SendError> {
    if payload.len() > MAX_PAYLOAD {
        return Err(SendError::PayloadTooLarge { len: payload.len() });
    }
    Ok(())
}

fn send_frame(
    sock: BorrowedFd<'_>,
    header: &[u8],
    payload: &[u8],
    fd: Option<BorrowedFd<'_>>,
) -> Result<(), SendError> {
    let fds = fd.as_slice();
    let mut space = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let len = header.len() + payload.len();
    loop {
        let mut control = SendAncillaryBuffer::new(&mut space);
        if !fds.is_empty() && !control.push(SendAncillaryMessage::ScmRights(fds)) {
            // Unreachable: the buffer is sized for exactly one fd.
            return Err(SendError::Io(Errno::NOBUFS));
        }
        match sendmsg(
            sock,
            &[IoSlice::new(header), IoSlice::new(payload)],
            &mut control,
            SendFlags::NOSIGNAL,
        ) {
            Ok(sent) if sent == len => return Ok(()),
            // Seqpacket sends are atomic; a short count means this is not one.
            Ok(_) => return Err(SendError::Io(Errno::MSGSIZE)),
            Err(Errno::INTR) => continue,
            Err(Errno::AGAIN) => return Err(SendError::WouldBlock),
            Err(Errno::PIPE | Errno::CONNRESET) => return Err(SendError::Closed),
            Err(e) => return Err(SendError::Io(e)),
        }
    }
}

/// One datagram as received into a buffer, before its bytes are decoded.
struct Datagram {
    /// Bytes at the start of the buffer, at most `MAX_FRAME + 1`.
    len: usize,
    /// Its fd, or why the datagram is refused whatever its bytes say (truncation, fd
    /// count); in that case every fd has already been closed.
    fd: Result<Option<OwnedFd>, FrameError>,
    /// `SCM_CREDENTIALS`, present when the socket has `SO_PASSCRED`.
    creds: Option<UCred>,
}

/// Receive one datagram into `bytes` (`MAX_FRAME + 1` long); `Ok(None)` at end of
/// file.
fn recv_datagram(sock: BorrowedFd<'_>, bytes: &mut [u8]) -> Result<Option<Datagram>, RecvError> {
    let mut space = [MaybeUninit::<u8>::uninit();
        rustix::cmsg_space!(ScmRights(MAX_FDS_RECEIVED), ScmCredentials(1))];
    loop {
        let mut control = RecvAncillaryBuffer::new(&mut space);
        let msg = match recvmsg(
            sock,
            &mut [IoSliceMut::new(bytes)],
            &mut control,
            // TRUNC makes the kernel report the datagram's true length.
            RecvFlags::CMSG_CLOEXEC | RecvFlags::TRUNC,
        ) {
            Ok(msg) => msg,
            Err(Errno::INTR) => continue,
            Err(Errno::AGAIN) => return Err(RecvError::WouldBlock),
            Err(Errno::CONNRESET) => return Ok(None),
            Err(e) => return Err(RecvError::Io(e)),
        };
        // The first fd is kept; any more are counted and closed here.
        let mut fd = None;
        let mut fds = 0usize;
        let mut creds = None;
        for message in control.drain() {
            match message {
                RecvAncillaryMessage::ScmRights(received) => {
                    for f in received {
                        fds += 1;
                        fd.get_or_insert(f);
                    }
                }
                RecvAncillaryMessage::ScmCredentials(c) => creds = Some(c),
                _ => {}
            }
        }
        if msg.bytes == 0 {
            return Ok(None);
        }
        let fd = if msg.flags.contains(ReturnFlags::TRUNC) || msg.bytes > MAX_FRAME {
            Err(FrameError::Truncated { len: msg.bytes })
        } else if msg.flags.contains(ReturnFlags::CTRUNC) {
            Err(FrameError::ControlTruncated { received: fds })
        } else if fds > 1 {
            Err(FrameError::TooManyFds { count: fds })
        } else {
            Ok(fd)
        };
        let len = msg.bytes.min(bytes.len());
        return Ok(Some(Datagram { len, fd, creds }));
    }
}

/// Ask the kernel to attach the sender's credentials to every message `sock`
/// receives (`SO_PASSCRED`), so [`Request::creds`] names who sent each request.
///
/// # Errors
/// The errno of `setsockopt`.
pub fn pass_credentials(sock: BorrowedFd<'_>) -> Result<(), Errno> {
    rustix::net::sockopt::set_socket_passcred(sock, true)
}
