//! Random frames against a real daemon (SPEC §9: "no input can crash it or leak
//! an fd"): thousands of requests with random commands, sizes, bytes and stray
//! fds, on device and session handles. Every one is answered; at the end the
//! daemon still serves and holds exactly the fds it held before.

mod common;

use std::os::fd::{AsFd, OwnedFd};

use common::*;
use luo_uapi::rfc_v4::*;
use proptest::prelude::*;

fn cmd() -> impl Strategy<Value = u32> {
    prop_oneof![
        prop::sample::select(vec![
            0u32,
            LIVEUPDATE_IOCTL_GET_STATE,
            LIVEUPDATE_IOCTL_SET_EVENT,
            LIVEUPDATE_IOCTL_CREATE_SESSION,
            LIVEUPDATE_IOCTL_RETRIEVE_SESSION,
            LIVEUPDATE_SESSION_PRESERVE_FD,
            LIVEUPDATE_SESSION_UNPRESERVE_FD,
            LIVEUPDATE_SESSION_RESTORE_FD,
            LIVEUPDATE_SESSION_GET_STATE,
            LIVEUPDATE_SESSION_SET_EVENT,
        ]),
        any::<u32>(),
    ]
}

/// A payload whose size field usually tells the truth, so requests get past
/// the first checks and into the engine.
fn payload() -> impl Strategy<Value = Vec<u8>> {
    (prop::collection::vec(any::<u8>(), 0..96), any::<bool>()).prop_map(|(mut p, honest)| {
        if honest && p.len() >= 4 {
            let n = p.len() as u32;
            p[..4].copy_from_slice(&n.to_ne_bytes());
        }
        p
    })
}

#[derive(Debug, Clone)]
struct Req {
    on_session: bool,
    cmd: u32,
    payload: Vec<u8>,
    fds: usize,
}

fn req() -> impl Strategy<Value = Req> {
    (any::<bool>(), cmd(), payload(), 0usize..3).prop_map(|(on_session, cmd, payload, fds)| Req {
        on_session,
        cmd,
        payload,
        fds,
    })
}

fn send(fd: &OwnedFd, r: &Req) -> Result<(), luo_uapi::Errno> {
    let extra: Vec<OwnedFd> = (0..r.fds)
        .map(|_| rustix::event::eventfd(0, rustix::event::EventfdFlags::CLOEXEC).expect("eventfd"))
        .collect();
    let borrowed: Vec<_> = extra.iter().map(AsFd::as_fd).collect();
    let frame = luo_wire::encode_request(r.cmd, &r.payload);
    let mut space = [std::mem::MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(4))];
    let mut control = rustix::net::SendAncillaryBuffer::new(&mut space);
    if !borrowed.is_empty() {
        assert!(control.push(rustix::net::SendAncillaryMessage::ScmRights(&borrowed)));
    }
    rustix::net::sendmsg(
        fd,
        &[std::io::IoSlice::new(&frame)],
        &mut control,
        rustix::net::SendFlags::empty(),
    )
    .expect("sendmsg");
    luo_wire::recv_reply(fd.as_fd())
        .expect("every request is answered")
        .result
}

#[test]
fn random_frames_are_all_answered_and_leak_nothing() {
    let d = Luod::start_with(&["--shared-device"], &[]);
    drop(d.device());
    let _ = d.status();
    let baseline = d.idle_fd_count();
    let dev = d.device();
    let session = luo::Device::open_at(&d.socket)
        .expect("open")
        .create_session("fuzz")
        .expect("create");
    let session: OwnedFd = session.into_fd();
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases: 3000,
        failure_persistence: None,
        ..ProptestConfig::default()
    });
    runner
        .run(&req(), |r| {
            let fd = if r.on_session { &session } else { &dev };
            let _ = send(fd, &r);
            Ok(())
        })
        .expect("no request goes unanswered");
    // Still serving, and closing every handle gives back every fd.
    let status = d.status();
    assert!(status.sessions.iter().any(|s| s.name == "fuzz"));
    drop((dev, session));
    let good = luo::Device::open_at_retrying(&d.socket, luo::BUSY_TIMEOUT)
        .expect("a well-behaved client is served");
    drop(good);
    assert_eq!(d.idle_fd_count(), baseline);
}
