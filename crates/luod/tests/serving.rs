//! How luod serves its handles: in order, and every one of them.

mod common;

use std::os::fd::{AsFd, OwnedFd};

use common::*;
use luo_uapi::rfc_v4::*;
use zerocopy::{FromBytes, IntoBytes};

/// A client may send requests without waiting for each reply: every request is
/// answered, in order, and other clients are still served. (Only as many as
/// its replies fit its socket's buffer: a client that lets them pile up beyond
/// that is disconnected, as one that never reads.)
#[test]
fn requests_sent_without_waiting_are_all_answered_in_order() {
    const N: u64 = 100;
    let d = Luod::start();
    let device = d.luo();
    let session = device.create_session("eager").expect("create");
    let other = device.create_session("other").expect("create");
    let fd = session.into_fd();
    let files: Vec<OwnedFd> = (0..N)
        .map(|_| rustix::event::eventfd(0, rustix::event::EventfdFlags::CLOEXEC).expect("eventfd"))
        .collect();
    for (token, file) in (0..).zip(&files) {
        let req = SessionPreserveFd {
            token,
            ..Default::default()
        };
        luo_wire::send_request(
            fd.as_fd(),
            LIVEUPDATE_SESSION_PRESERVE_FD,
            req.as_bytes(),
            Some(file.as_fd()),
        )
        .expect("send");
    }
    // Another client, with those queued.
    assert_eq!(other.state().expect("state"), luo::State::Normal);
    for token in 0..N {
        let reply = luo_wire::recv_reply(fd.as_fd()).expect("reply");
        assert_eq!(reply.result, Ok(()), "token {token}");
        let (echoed, _) = SessionPreserveFd::read_from_prefix(&reply.payload).expect("struct");
        assert_eq!(echoed.token, token, "replies out of order");
    }
    let files_in_status = d
        .status()
        .sessions
        .iter()
        .map(|s| s.files.len())
        .sum::<usize>();
    assert_eq!(files_in_status, N as usize);
}
