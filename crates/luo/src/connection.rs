//! One request, one reply, on a seqpacket handle (SPEC §8.1): what a device and a
//! session handle have in common.
//!
//! A request is sent and its reply awaited under a lock, so threads sharing one
//! handle never read each other's replies. Processes sharing a handle (after `fork`,
//! or with the fd passed over a socket) have no such lock: their requests may
//! interleave and each may read the other's reply. Don't do that.
//!
//! What a failure becomes: a reply with `-errno` is [`Error::Os`] (ESTALE from the
//! daemon is [`Error::Stale`]); end of file, ECONNRESET, EPIPE or ENOTCONN while
//! sending or receiving is [`Error::Stale`], as the daemon closes every handle of an
//! epoch when it hands over to the next; a reply that does not decode is
//! [`Error::Protocol`] (the datagram is consumed, so the handle stays in step); any
//! other socket errno is [`Error::Transport`]. An fd that arrives with a failed
//! reply, or with one that carries none for its command, is closed.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Mutex;

use luo_uapi::Errno;
use luo_uapi::rfc_v4::{
    LIVEUPDATE_IOCTL_CREATE_SESSION, LIVEUPDATE_IOCTL_GET_STATE, LIVEUPDATE_IOCTL_RETRIEVE_SESSION,
    LIVEUPDATE_IOCTL_SET_EVENT, LIVEUPDATE_SESSION_GET_STATE, LIVEUPDATE_SESSION_PRESERVE_FD,
    LIVEUPDATE_SESSION_RESTORE_FD, LIVEUPDATE_SESSION_SET_EVENT, LIVEUPDATE_SESSION_UNPRESERVE_FD,
};
use luo_wire::{HELLO_CMD, RecvError, SendError};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use crate::error::{Error, ProtocolError, Result};

/// A connected seqpacket handle and the lock that keeps its replies in order.
#[derive(Debug)]
pub(crate) struct Connection {
    fd: OwnedFd,
    /// Guards no data: held from send to receive so that one thread's reply is
    /// never read by another.
    lock: Mutex<()>,
}

/// A successful reply.
#[derive(Debug)]
pub(crate) struct Answer {
    /// The struct as copied back.
    pub(crate) payload: Vec<u8>,
    /// The fd that came with it.
    pub(crate) fd: Option<OwnedFd>,
}

impl Connection {
    pub(crate) fn new(fd: OwnedFd) -> Self {
        Connection {
            fd,
            lock: Mutex::new(()),
        }
    }

    pub(crate) fn into_fd(self) -> OwnedFd {
        self.fd
    }

    /// Sends `payload` as command `cmd` (with `fd` as SCM_RIGHTS) and waits for the
    /// reply.
    pub(crate) fn call(
        &self,
        op: &'static str,
        cmd: u32,
        payload: &[u8],
        fd: Option<BorrowedFd<'_>>,
    ) -> Result<Answer> {
        // A poisoned lock only means another thread panicked between send and
        // receive; the socket is still in step, because frames are whole datagrams.
        let _guard = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        luo_wire::send_request(self.fd.as_fd(), cmd, payload, fd).map_err(|e| send_error(op, e))?;
        let reply = luo_wire::recv_reply(self.fd.as_fd()).map_err(|e| recv_error(op, e))?;
        reply.result.map_err(|errno| Error::answered(op, errno))?;
        Ok(Answer {
            payload: reply.payload,
            fd: reply.fd,
        })
    }

    /// [`Connection::call`] with a typed struct: the reply's payload is read back as
    /// the same struct.
    pub(crate) fn call_struct<T>(
        &self,
        op: &'static str,
        cmd: u32,
        request: &T,
        fd: Option<BorrowedFd<'_>>,
    ) -> Result<(T, Option<OwnedFd>)>
    where
        T: IntoBytes + FromBytes + Immutable + KnownLayout,
    {
        let answer = self.call(op, cmd, request.as_bytes(), fd)?;
        let reply = T::read_from_prefix(&answer.payload)
            .map(|(reply, _)| reply)
            .map_err(|_| Error::Protocol {
                op,
                source: ProtocolError::ShortPayload {
                    len: answer.payload.len(),
                    need: size_of::<T>(),
                },
            })?;
        Ok((reply, answer.fd))
    }

    /// Any payload, for tests and tools: the reply's payload is copied back over the
    /// start of `buf` on success, and the number of a received fd is written into
    /// the struct's `fd` field (offset 4), as SPEC §8.1 asks of the client.
    pub(crate) fn raw(
        &self,
        cmd: u32,
        buf: &mut [u8],
        fd: Option<BorrowedFd<'_>>,
    ) -> Result<Option<OwnedFd>> {
        use std::os::fd::AsRawFd;

        let answer = self.call(op_name(cmd), cmd, buf, fd)?;
        let n = answer.payload.len().min(buf.len());
        buf[..n].copy_from_slice(&answer.payload[..n]);
        if let (Some(fd), Some(field)) = (&answer.fd, buf.get_mut(4..8)) {
            field.copy_from_slice(&fd.as_raw_fd().to_ne_bytes());
        }
        Ok(answer.fd)
    }
}

impl AsFd for Connection {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// A peer that is gone: the daemon closed this epoch's handles.
fn is_gone(errno: Errno) -> bool {
    matches!(
        errno,
        Errno::CONNRESET | Errno::PIPE | Errno::NOTCONN | Errno::CONNABORTED
    )
}

fn send_error(op: &'static str, e: SendError) -> Error {
    match e {
        SendError::Closed => Error::Stale,
        SendError::Io(errno) if is_gone(errno) => Error::Stale,
        SendError::PayloadTooLarge { .. } => Error::Transport {
            op,
            errno: Errno::MSGSIZE,
        },
        SendError::WouldBlock | SendError::Io(_) => Error::Transport {
            op,
            errno: e.errno(),
        },
    }
}

fn recv_error(op: &'static str, e: RecvError) -> Error {
    match e {
        RecvError::Closed => Error::Stale,
        RecvError::Io(errno) if is_gone(errno) => Error::Stale,
        RecvError::Malformed { error, .. } => Error::Protocol {
            op,
            source: ProtocolError::Frame(error),
        },
        RecvError::WouldBlock | RecvError::Io(_) => Error::Transport {
            op,
            errno: e.errno(),
        },
    }
}

/// The uAPI's name of a command, for error messages.
pub(crate) fn op_name(cmd: u32) -> &'static str {
    match cmd {
        HELLO_CMD => "HELLO",
        LIVEUPDATE_IOCTL_GET_STATE => "GET_STATE",
        LIVEUPDATE_IOCTL_SET_EVENT => "SET_EVENT",
        LIVEUPDATE_IOCTL_CREATE_SESSION => "CREATE_SESSION",
        LIVEUPDATE_IOCTL_RETRIEVE_SESSION => "RETRIEVE_SESSION",
        LIVEUPDATE_SESSION_PRESERVE_FD => "PRESERVE_FD",
        LIVEUPDATE_SESSION_UNPRESERVE_FD => "UNPRESERVE_FD",
        LIVEUPDATE_SESSION_RESTORE_FD => "RESTORE_FD",
        LIVEUPDATE_SESSION_GET_STATE => "SESSION_GET_STATE",
        LIVEUPDATE_SESSION_SET_EVENT => "SESSION_SET_EVENT",
        _ => "ioctl",
    }
}

#[cfg(test)]
mod tests {
    use std::thread;

    use luo_uapi::rfc_v4::{IoctlCreateSession, SessionGetState};
    use luo_wire::socketpair_seqpacket;

    use super::*;

    /// A fake daemon end answering each request with `answer(cmd, payload)`.
    fn serve(
        peer: OwnedFd,
        answer: impl Fn(u32, &[u8]) -> (std::result::Result<(), Errno>, Vec<u8>, Option<OwnedFd>)
        + Send
        + 'static,
    ) -> thread::JoinHandle<()> {
        thread::spawn(move || {
            let mut rx = luo_wire::RecvBuffer::new();
            while let Ok(Some(req)) = luo_wire::recv_request(peer.as_fd(), &mut rx) {
                let (result, payload, fd) = answer(req.cmd, req.payload);
                if luo_wire::send_reply(
                    peer.as_fd(),
                    result,
                    &payload,
                    fd.as_ref().map(AsFd::as_fd),
                )
                .is_err()
                {
                    break;
                }
            }
        })
    }

    #[test]
    fn errno_answers_name_the_request() {
        let (ours, theirs) = socketpair_seqpacket().expect("socketpair");
        let server = serve(theirs, |_, _| (Err(Errno::BUSY), Vec::new(), None));
        let conn = Connection::new(ours);
        let e = conn
            .call(
                "PRESERVE_FD",
                LIVEUPDATE_SESSION_PRESERVE_FD,
                &[0; 16],
                None,
            )
            .expect_err("refused");
        assert_eq!(e.to_string(), "PRESERVE_FD: Device or resource busy");
        drop(conn);
        server.join().expect("server");
    }

    #[test]
    fn a_closed_peer_is_stale() {
        let (ours, theirs) = socketpair_seqpacket().expect("socketpair");
        drop(theirs);
        let conn = Connection::new(ours);
        let e = conn
            .call(
                "GET_STATE",
                LIVEUPDATE_IOCTL_GET_STATE,
                &[8, 0, 0, 0, 0, 0, 0, 0],
                None,
            )
            .expect_err("stale");
        assert!(e.is_stale(), "{e:?}");
    }

    #[test]
    fn a_peer_closing_before_replying_is_stale() {
        let (ours, theirs) = socketpair_seqpacket().expect("socketpair");
        let server = thread::spawn(move || {
            let _ = luo_wire::recv_request(theirs.as_fd(), &mut luo_wire::RecvBuffer::new());
        });
        let conn = Connection::new(ours);
        let e = conn
            .call(
                "GET_STATE",
                LIVEUPDATE_IOCTL_GET_STATE,
                &[8, 0, 0, 0, 0, 0, 0, 0],
                None,
            )
            .expect_err("stale");
        assert!(e.is_stale(), "{e:?}");
        server.join().expect("server");
    }

    #[test]
    fn short_replies_are_protocol_errors() {
        let (ours, theirs) = socketpair_seqpacket().expect("socketpair");
        let server = serve(theirs, |_, _| (Ok(()), vec![12, 0, 0, 0], None));
        let conn = Connection::new(ours);
        let e = conn
            .call_struct(
                "SESSION_GET_STATE",
                LIVEUPDATE_SESSION_GET_STATE,
                &SessionGetState::default(),
                None,
            )
            .expect_err("short");
        assert!(
            matches!(
                e,
                Error::Protocol {
                    source: ProtocolError::ShortPayload { len: 4, need: 12 },
                    ..
                }
            ),
            "{e:?}"
        );
        drop(conn);
        server.join().expect("server");
    }

    #[test]
    fn raw_copies_back_and_writes_the_received_fd_number() {
        use std::os::fd::AsRawFd;

        let (ours, theirs) = socketpair_seqpacket().expect("socketpair");
        let server = serve(theirs, |cmd, payload| {
            assert_eq!(cmd, LIVEUPDATE_IOCTL_CREATE_SESSION);
            let mut back = payload.to_vec();
            back[4..8].copy_from_slice(&(-1i32).to_ne_bytes());
            let (a, _b) = socketpair_seqpacket().expect("socketpair");
            (Ok(()), back, Some(a))
        });
        let conn = Connection::new(ours);
        let mut buf = IoctlCreateSession::default().as_bytes().to_vec();
        let fd = conn
            .raw(LIVEUPDATE_IOCTL_CREATE_SESSION, &mut buf, None)
            .expect("raw")
            .expect("fd");
        assert_eq!(buf[4..8], fd.as_raw_fd().to_ne_bytes());
        drop(conn);
        server.join().expect("server");
    }

    #[test]
    fn oversized_payloads_are_refused_locally() {
        let (ours, _theirs) = socketpair_seqpacket().expect("socketpair");
        let conn = Connection::new(ours);
        let mut buf = vec![0u8; 5000];
        let e = conn
            .raw(LIVEUPDATE_IOCTL_GET_STATE, &mut buf, None)
            .expect_err("refused");
        assert_eq!(e.errno(), Errno::MSGSIZE);
    }

    #[test]
    fn every_command_has_a_name() {
        assert_eq!(op_name(LIVEUPDATE_SESSION_RESTORE_FD), "RESTORE_FD");
        assert_eq!(op_name(0xBA99), "ioctl");
    }
}
