//! No received fd outlives a refused frame, counted in `/proc/self/fd`.
//!
//! A binary of its own, and its tests serialised, because any other test opening
//! fds at the same time would change the count.

mod raw_peer;

use std::os::fd::AsFd;
use std::sync::Mutex;

use luo_wire::{
    FrameError, RecvBuffer, RecvError, encode_request, recv_request, socketpair_seqpacket,
};
use raw_peer::{borrow_all, pipes, send_with_fds, writer_closed};

static FD_TABLE: Mutex<()> = Mutex::new(());

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .expect("/proc/self/fd")
        .count()
}

/// Sends a valid frame carrying `n` pipe write ends, drops the sender's copies, and
/// checks that receiving it leaves the fd table as it was and every pipe writerless.
fn refused_frame_leaks_nothing(n: usize) -> FrameError {
    let _serial = FD_TABLE.lock().unwrap_or_else(|e| e.into_inner());
    let (client, daemon) = socketpair_seqpacket().expect("socketpair");
    let (writers, readers) = pipes(n);
    send_with_fds(
        client.as_fd(),
        &encode_request(0xBA40, &[0; 16]),
        &borrow_all(&writers),
    );
    drop(writers);
    let mut rx = RecvBuffer::new();
    let before = open_fds();
    let error = match recv_request(daemon.as_fd(), &mut rx) {
        Err(RecvError::Malformed { error, .. }) => error,
        other => panic!("expected a malformed frame, got {other:?}"),
    };
    assert_eq!(open_fds(), before, "fds leaked");
    assert!(readers.iter().all(writer_closed));
    error
}

#[test]
fn two_fds_are_both_closed() {
    assert_eq!(
        refused_frame_leaks_nothing(2),
        FrameError::TooManyFds { count: 2 }
    );
}

#[test]
fn four_fds_are_all_closed() {
    assert_eq!(
        refused_frame_leaks_nothing(4),
        FrameError::TooManyFds { count: 4 }
    );
}

#[test]
fn control_truncated_fds_are_all_closed() {
    assert!(matches!(
        refused_frame_leaks_nothing(16),
        FrameError::ControlTruncated { .. }
    ));
}

#[test]
fn dropped_request_closes_its_fd() {
    let _serial = FD_TABLE.lock().unwrap_or_else(|e| e.into_inner());
    let (client, daemon) = socketpair_seqpacket().expect("socketpair");
    let (writers, readers) = pipes(1);
    send_with_fds(
        client.as_fd(),
        &encode_request(0xBA41, &[0; 16]),
        &borrow_all(&writers),
    );
    drop(writers);
    let mut rx = RecvBuffer::new();
    let before = open_fds();
    let request = recv_request(daemon.as_fd(), &mut rx)
        .expect("recv")
        .expect("frame");
    assert!(request.fd.is_some());
    assert_eq!(open_fds(), before + 1);
    drop(request);
    assert_eq!(open_fds(), before);
    assert!(writer_closed(&readers[0]));
}
