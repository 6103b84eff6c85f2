//! Frames over real seqpacket socketpairs, happy and unhappy paths.

mod raw_peer;

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

use luo_wire::{
    Abi, Errno, FrameError, HELLO_CMD, Hello, MAX_PAYLOAD, REPLY_MAGIC, REQUEST_MAGIC, RecvBuffer,
    RecvError, ReplyHeader, RequestHeader, SendError, encode_reply, encode_request,
    peer_credentials, recv_reply, send_reply, send_request, socketpair_seqpacket,
};
use raw_peer::{borrow_all, pipes, send_raw, send_with_fds, writer_closed};
use rustix::io::FdFlags;
use zerocopy::IntoBytes;

const CMD: u32 = 0xBA40;

fn pair() -> (OwnedFd, OwnedFd) {
    socketpair_seqpacket().expect("socketpair")
}

fn raw_request(magic: u32, cmd: u32, len: u32, reserved: u32, payload: &[u8]) -> Vec<u8> {
    let mut v = RequestHeader {
        magic,
        cmd,
        len,
        reserved,
    }
    .as_bytes()
    .to_vec();
    v.extend_from_slice(payload);
    v
}

fn same_file(a: &OwnedFd, b: &OwnedFd) -> bool {
    let (a, b) = (
        rustix::fs::fstat(a).expect("fstat"),
        rustix::fs::fstat(b).expect("fstat"),
    );
    (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)
}

/// A received request with its payload copied out of the receive buffer.
#[derive(Debug)]
struct Received {
    cmd: u32,
    payload: Vec<u8>,
    fd: Option<OwnedFd>,
    creds: Option<luo_wire::UCred>,
}

/// `luo_wire::recv_request` into a fresh buffer.
fn recv_request(sock: BorrowedFd<'_>) -> Result<Option<Received>, RecvError> {
    let mut buf = RecvBuffer::new();
    let req = luo_wire::recv_request(sock, &mut buf)?;
    Ok(req.map(|r| Received {
        cmd: r.cmd,
        payload: r.payload.to_vec(),
        fd: r.fd,
        creds: r.creds,
    }))
}

fn is_cloexec(fd: &OwnedFd) -> bool {
    rustix::io::fcntl_getfd(fd)
        .expect("fcntl")
        .contains(FdFlags::CLOEXEC)
}

/// Receives a request that must be malformed; returns the error and the cmd.
fn recv_malformed(sock: &OwnedFd) -> (FrameError, Option<u32>) {
    match recv_request(sock.as_fd()) {
        Err(RecvError::Malformed { error, cmd }) => {
            assert_eq!(error.errno(), Errno::INVAL);
            assert_eq!(
                RecvError::Malformed {
                    error: error.clone(),
                    cmd
                }
                .errno(),
                Errno::INVAL
            );
            (error, cmd)
        }
        other => panic!("expected a malformed frame, got {other:?}"),
    }
}

/// After a refused frame the connection is still in step: the next frame is read whole.
fn assert_in_step(client: &OwnedFd, daemon: &OwnedFd) {
    send_request(client.as_fd(), 0xBA43, b"next", None).expect("send");
    let req = recv_request(daemon.as_fd()).expect("recv").expect("frame");
    assert_eq!((req.cmd, &req.payload[..]), (0xBA43, &b"next"[..]));
}

#[test]
fn request_round_trip_without_fd() {
    let (client, daemon) = pair();
    send_request(client.as_fd(), CMD, &[7; 16], None).expect("send");
    let req = recv_request(daemon.as_fd()).expect("recv").expect("frame");
    assert_eq!(req.cmd, CMD);
    assert_eq!(req.payload, [7; 16]);
    assert!(req.fd.is_none());
}

#[test]
fn credentials_name_the_sender_when_asked_for() {
    let (client, daemon) = pair();
    send_request(client.as_fd(), CMD, &[0; 16], None).expect("send");
    let req = recv_request(daemon.as_fd()).expect("recv").expect("frame");
    assert!(req.creds.is_none(), "no SO_PASSCRED, no credentials");
    luo_wire::pass_credentials(daemon.as_fd()).expect("SO_PASSCRED");
    send_request(client.as_fd(), CMD, &[0; 16], None).expect("send");
    let req = recv_request(daemon.as_fd()).expect("recv").expect("frame");
    let creds = req.creds.expect("credentials");
    assert_eq!(creds.uid, rustix::process::getuid());
    assert_eq!(creds.pid, rustix::process::getpid());
}

#[test]
fn request_round_trip_with_fd() {
    let (client, daemon) = pair();
    let (writers, _readers) = pipes(1);
    send_request(client.as_fd(), CMD, &[1; 16], Some(writers[0].as_fd())).expect("send");
    let req = recv_request(daemon.as_fd()).expect("recv").expect("frame");
    assert_eq!((req.cmd, &req.payload[..]), (CMD, &[1; 16][..]));
    let fd = req.fd.expect("fd");
    assert_ne!(fd.as_raw_fd(), writers[0].as_raw_fd());
    assert!(same_file(&fd, &writers[0]));
    assert!(is_cloexec(&fd));
}

#[test]
fn request_with_empty_and_max_payload() {
    let (client, daemon) = pair();
    for payload in [vec![], vec![0xA5; MAX_PAYLOAD]] {
        send_request(client.as_fd(), CMD, &payload, None).expect("send");
        let req = recv_request(daemon.as_fd()).expect("recv").expect("frame");
        assert_eq!(req.payload, payload);
    }
}

#[test]
fn reply_round_trip_ok_with_fd() {
    let (client, daemon) = pair();
    let (session, _peer) = pair();
    send_reply(daemon.as_fd(), Ok(()), &[3; 64], Some(session.as_fd())).expect("send");
    let reply = recv_reply(client.as_fd()).expect("recv");
    assert_eq!(reply.result, Ok(()));
    assert_eq!(reply.payload, [3; 64]);
    let fd = reply.fd.expect("fd");
    assert!(same_file(&fd, &session));
    assert!(is_cloexec(&fd));
}

#[test]
fn reply_round_trip_error() {
    let (client, daemon) = pair();
    send_reply(daemon.as_fd(), Err(Errno::ADDRINUSE), &[], None).expect("send");
    let reply = recv_reply(client.as_fd()).expect("recv");
    assert_eq!(reply.result, Err(Errno::ADDRINUSE));
    assert!(reply.payload.is_empty());
    assert!(reply.fd.is_none());
}

#[test]
fn hello_round_trip() {
    let (client, daemon) = pair();
    let hello = Hello::new(Abi::RfcV4);
    send_request(client.as_fd(), HELLO_CMD, hello.as_bytes(), None).expect("send");
    let req = recv_request(daemon.as_fd()).expect("recv").expect("frame");
    assert_eq!(req.cmd, HELLO_CMD);
    assert_eq!(Hello::check(&req.payload), Ok(Abi::RfcV4));
}

#[test]
fn two_fds_are_refused() {
    let (client, daemon) = pair();
    let (writers, readers) = pipes(2);
    send_with_fds(
        client.as_fd(),
        &encode_request(CMD, &[0; 16]),
        &borrow_all(&writers),
    );
    drop(writers);
    assert_eq!(
        recv_malformed(&daemon),
        (FrameError::TooManyFds { count: 2 }, Some(CMD))
    );
    assert!(readers.iter().all(writer_closed));
    assert_in_step(&client, &daemon);
}

#[test]
fn more_fds_than_the_control_buffer_are_refused() {
    let (client, daemon) = pair();
    let (writers, readers) = pipes(16);
    send_with_fds(
        client.as_fd(),
        &encode_request(CMD, &[0; 16]),
        &borrow_all(&writers),
    );
    drop(writers);
    let (error, cmd) = recv_malformed(&daemon);
    assert!(
        matches!(error, FrameError::ControlTruncated { received } if received < 16),
        "{error:?}"
    );
    assert_eq!(cmd, Some(CMD));
    assert!(readers.iter().all(writer_closed));
    assert_in_step(&client, &daemon);
}

#[test]
fn short_frame_is_refused() {
    let (client, daemon) = pair();
    send_raw(client.as_fd(), &encode_request(CMD, &[])[..12]);
    assert_eq!(
        recv_malformed(&daemon),
        (FrameError::Short { len: 12 }, Some(CMD))
    );
    send_raw(client.as_fd(), &[0x51]);
    assert_eq!(
        recv_malformed(&daemon),
        (FrameError::Short { len: 1 }, None)
    );
    assert_in_step(&client, &daemon);
}

#[test]
fn bad_magic_is_refused() {
    let (client, daemon) = pair();
    send_raw(client.as_fd(), &encode_reply(Ok(()), &[]));
    assert_eq!(
        recv_malformed(&daemon),
        (FrameError::BadMagic { magic: REPLY_MAGIC }, None)
    );
    assert_in_step(&client, &daemon);
}

#[test]
fn bad_magic_with_an_fd_closes_it() {
    let (client, daemon) = pair();
    let (writers, readers) = pipes(1);
    send_with_fds(
        client.as_fd(),
        &raw_request(0xDEAD_BEEF, CMD, 0, 0, &[]),
        &borrow_all(&writers),
    );
    drop(writers);
    assert_eq!(
        recv_malformed(&daemon),
        (FrameError::BadMagic { magic: 0xDEAD_BEEF }, None)
    );
    assert!(writer_closed(&readers[0]));
}

#[test]
fn reserved_nonzero_is_refused() {
    let (client, daemon) = pair();
    send_raw(
        client.as_fd(),
        &raw_request(REQUEST_MAGIC, CMD, 4, 1, &[0; 4]),
    );
    assert_eq!(
        recv_malformed(&daemon),
        (FrameError::ReservedNonZero { reserved: 1 }, Some(CMD))
    );
    assert_in_step(&client, &daemon);
}

#[test]
fn len_mismatch_is_refused() {
    let (client, daemon) = pair();
    send_raw(
        client.as_fd(),
        &raw_request(REQUEST_MAGIC, CMD, 16, 0, &[0; 8]),
    );
    assert_eq!(
        recv_malformed(&daemon),
        (
            FrameError::LenMismatch {
                header: 16,
                actual: 8
            },
            Some(CMD)
        )
    );
    send_raw(
        client.as_fd(),
        &raw_request(REQUEST_MAGIC, CMD, 5000, 0, &[0; 8]),
    );
    assert_eq!(
        recv_malformed(&daemon),
        (FrameError::PayloadTooLarge { len: 5000 }, Some(CMD))
    );
    assert_in_step(&client, &daemon);
}

#[test]
fn oversized_datagram_is_refused() {
    let (client, daemon) = pair();
    let mut big = raw_request(REQUEST_MAGIC, CMD, 8192 - 16, 0, &[]);
    big.resize(8192, 0);
    send_raw(client.as_fd(), &big);
    assert_eq!(
        recv_malformed(&daemon),
        (FrameError::Truncated { len: 8192 }, Some(CMD))
    );
    // One byte over the largest frame is already too much.
    let mut over = encode_request(CMD, &[0; MAX_PAYLOAD]);
    over.push(0);
    send_raw(client.as_fd(), &over);
    assert_eq!(
        recv_malformed(&daemon),
        (FrameError::Truncated { len: 4113 }, Some(CMD))
    );
    assert_in_step(&client, &daemon);
}

#[test]
fn malformed_reply_is_refused() {
    let (client, daemon) = pair();
    let mut bad = ReplyHeader {
        magic: REPLY_MAGIC,
        result: 5,
        len: 0,
        reserved: 0,
    }
    .as_bytes()
    .to_vec();
    send_raw(daemon.as_fd(), &bad);
    match recv_reply(client.as_fd()) {
        Err(RecvError::Malformed {
            error: FrameError::BadResult { result: 5 },
            cmd: None,
        }) => {}
        other => panic!("{other:?}"),
    }
    bad.truncate(10);
    send_raw(daemon.as_fd(), &bad);
    match recv_reply(client.as_fd()) {
        Err(e @ RecvError::Malformed { .. }) => assert_eq!(e.errno(), Errno::INVAL),
        other => panic!("{other:?}"),
    }
}

#[test]
fn eof_is_none_for_requests_and_closed_for_replies() {
    let (client, daemon) = pair();
    send_request(client.as_fd(), CMD, b"last", None).expect("send");
    drop(client);
    // Frames queued before the close are still delivered.
    let req = recv_request(daemon.as_fd()).expect("recv").expect("frame");
    assert_eq!(req.payload, b"last");
    assert!(recv_request(daemon.as_fd()).expect("recv").is_none());

    let (client, daemon) = pair();
    drop(daemon);
    let err = recv_reply(client.as_fd()).expect_err("closed");
    assert!(matches!(err, RecvError::Closed), "{err:?}");
    assert_eq!(err.errno(), Errno::CONNRESET);
}

#[test]
fn nonblocking_empty_socket_would_block() {
    let (client, daemon) = pair();
    rustix::io::ioctl_fionbio(daemon.as_fd(), true).expect("fionbio");
    let err = recv_request(daemon.as_fd()).expect_err("nothing queued");
    assert!(matches!(err, RecvError::WouldBlock), "{err:?}");
    assert_eq!(err.errno(), Errno::AGAIN);
    rustix::io::ioctl_fionbio(client.as_fd(), true).expect("fionbio");
    let err = recv_reply(client.as_fd()).expect_err("nothing queued");
    assert!(matches!(err, RecvError::WouldBlock), "{err:?}");
}

#[test]
fn send_to_closed_peer_is_closed_not_sigpipe() {
    let (client, daemon) = pair();
    drop(daemon);
    let err = send_request(client.as_fd(), CMD, &[], None).expect_err("closed");
    assert!(matches!(err, SendError::Closed), "{err:?}");
    assert_eq!(err.errno(), Errno::PIPE);
}

#[test]
fn oversized_payload_is_not_sent() {
    let (client, daemon) = pair();
    let err =
        send_request(client.as_fd(), CMD, &[0; MAX_PAYLOAD + 1], None).expect_err("too large");
    assert!(
        matches!(err, SendError::PayloadTooLarge { len: 4097 }),
        "{err:?}"
    );
    assert_eq!(err.errno(), Errno::INVAL);
    let err = send_reply(daemon.as_fd(), Ok(()), &[0; MAX_PAYLOAD + 1], None).expect_err("large");
    assert_eq!(err.errno(), Errno::INVAL);
    assert_in_step(&client, &daemon);
}

#[test]
fn socketpair_is_cloexec_and_reports_our_credentials() {
    let (a, b) = pair();
    assert!(is_cloexec(&a) && is_cloexec(&b));
    let cred = peer_credentials(a.as_fd()).expect("peercred");
    assert_eq!(cred.pid, rustix::process::getpid());
    assert_eq!(cred.uid, rustix::process::getuid());
    assert_eq!(cred.gid, rustix::process::getgid());
}

#[test]
fn peer_credentials_of_a_non_socket_fails() {
    let (writers, _readers) = pipes(1);
    assert_eq!(
        peer_credentials(writers[0].as_fd()).map(|_| ()),
        Err(Errno::NOTSOCK)
    );
}
