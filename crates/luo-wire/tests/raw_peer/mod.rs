//! A misbehaving peer: sends datagrams this crate's senders never would.

#![allow(dead_code, reason = "each test binary uses its own subset")]

use std::io::IoSlice;
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use rustix::net::{SendAncillaryBuffer, SendAncillaryMessage, SendFlags, sendmsg};

/// Most fds [`send_with_fds`] can attach.
pub const MAX_FDS: usize = 16;

/// Sends `bytes` as one datagram with every fd in `fds` attached.
pub fn send_with_fds(sock: BorrowedFd<'_>, bytes: &[u8], fds: &[BorrowedFd<'_>]) {
    assert!(fds.len() <= MAX_FDS);
    let mut space = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !fds.is_empty() {
        assert!(control.push(SendAncillaryMessage::ScmRights(fds)));
    }
    let sent = sendmsg(
        sock,
        &[IoSlice::new(bytes)],
        &mut control,
        SendFlags::empty(),
    )
    .expect("sendmsg");
    assert_eq!(sent, bytes.len());
}

/// Sends `bytes` as one datagram, no fds.
pub fn send_raw(sock: BorrowedFd<'_>, bytes: &[u8]) {
    let sent = rustix::net::send(sock, bytes, SendFlags::empty()).expect("send");
    assert_eq!(sent, bytes.len());
}

/// The write ends of `n` fresh pipes, and their read ends: once every copy of a
/// write end is closed, its read end reads end of file.
pub fn pipes(n: usize) -> (Vec<OwnedFd>, Vec<OwnedFd>) {
    (0..n)
        .map(|_| {
            let (r, w) = rustix::pipe::pipe().expect("pipe");
            (w, r)
        })
        .unzip()
}

/// Whether every copy of the pipe's write end has been closed.
pub fn writer_closed(read_end: &OwnedFd) -> bool {
    rustix::io::ioctl_fionbio(read_end.as_fd(), true).expect("fionbio");
    let mut buf = [0u8; 1];
    matches!(rustix::io::read(read_end, &mut buf), Ok(0))
}

/// Borrows each fd.
pub fn borrow_all(fds: &[OwnedFd]) -> Vec<BorrowedFd<'_>> {
    fds.iter().map(AsFd::as_fd).collect()
}
