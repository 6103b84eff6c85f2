//! The socket protocol between `luod` and its clients (SPEC §8.1–8.2).
//!
//! # Transport
//! `AF_UNIX`, `SOCK_SEQPACKET`: one datagram is one frame, message boundaries are
//! kept and a frame is never split or merged. A file descriptor travels beside its
//! frame as `SCM_RIGHTS`. All integers are native-endian, which is little-endian on
//! every supported host.
//!
//! # Frames ([`frame`])
//! ```text
//! request: u32 magic = 0x4C554F51 "LUOQ" | u32 cmd    | u32 len | u32 reserved = 0 | len bytes
//! reply:   u32 magic = 0x4C554F52 "LUOR" | i32 result | u32 len | u32 reserved = 0 | len bytes
//! ```
//! `cmd` is the full ioctl value (or [`HELLO_CMD`]); the payload is the caller's ioctl
//! struct, at most [`MAX_PAYLOAD`] bytes, so a frame is at most [`MAX_FRAME`] bytes.
//! `result` is 0 or `-errno`. At most one fd rides with a frame.
//!
//! # Lifecycle of a connection
//! A client connects to the device socket and sends [`HELLO`](hello) (`cmd = 0`, a
//! [`Hello`] payload); after a successful reply the connection is a *device handle*.
//! Session handles are [`socketpair_seqpacket`] ends the daemon hands out; they speak
//! frames without HELLO. Every request gets exactly one reply, in order.
//!
//! # Unhappy paths
//! Receiving ([`recv_request`], [`recv_reply`]) reads one datagram into a buffer of
//! `MAX_FRAME + 1` bytes with room for at least four fds, every fd close-on-exec from the
//! moment it exists in this process. What can go wrong, and what it becomes:
//!
//! | condition | result | errno |
//! |---|---|---|
//! | fewer than 16 bytes | [`FrameError::Short`] | EINVAL |
//! | magic is not LUOQ / LUOR | [`FrameError::BadMagic`] | EINVAL |
//! | reserved ≠ 0 | [`FrameError::ReservedNonZero`] | EINVAL |
//! | `len` > 4096 | [`FrameError::PayloadTooLarge`] | EINVAL |
//! | `len` ≠ bytes after the header | [`FrameError::LenMismatch`] | EINVAL |
//! | reply `result` not in `-4095..=0` | [`FrameError::BadResult`] | EINVAL |
//! | datagram longer than `MAX_FRAME` (`MSG_TRUNC`) | [`FrameError::Truncated`] | EINVAL |
//! | more than one fd | [`FrameError::TooManyFds`] | EINVAL |
//! | control data cut short (`MSG_CTRUNC`) | [`FrameError::ControlTruncated`] | EINVAL |
//! | nothing queued on a nonblocking socket | [`RecvError::WouldBlock`] | EAGAIN |
//! | peer closed (0 bytes read, `ECONNRESET`) | `Ok(None)` / [`RecvError::Closed`] | ECONNRESET |
//! | any other `recvmsg` failure | [`RecvError::Io`] | that errno |
//!
//! A frame error arrives as [`RecvError::Malformed`]: the datagram has been consumed
//! whole (the next receive starts at the next frame), every fd that came with it has
//! been closed, and, for a request, the `cmd` is included when the header's magic was
//! right. A malformed request is always answerable: the reply header carries no
//! command, so the daemon sends `Err(EINVAL)` with an empty payload and goes on.
//! E2BIG is never a frame-level answer: an oversized datagram is a truncated one.
//!
//! `EINTR` is retried, on both sides. Sending uses `MSG_NOSIGNAL`, so a vanished peer
//! is [`SendError::Closed`] (EPIPE), never a `SIGPIPE`.

#![forbid(unsafe_code)]

pub mod control;
pub mod frame;
pub mod hello;
pub mod paths;
pub mod socket;

pub use frame::{
    FrameError, HEADER_SIZE, MAX_FRAME, MAX_PAYLOAD, REPLY_MAGIC, REQUEST_MAGIC, ReplyHeader,
    RequestHeader, decode_reply, decode_request, encode_reply, encode_request, reply_header,
    request_cmd, request_header,
};
pub use hello::{Abi, HELLO_CMD, Hello, PROTOCOL_VERSION};
pub use socket::{
    RecvBuffer, RecvError, Reply, Request, SendError, pass_credentials, peer_credentials,
    recv_reply, recv_request, send_reply, send_request, socketpair_seqpacket,
};

pub use luo_uapi::Errno;
pub use rustix::net::UCred;
