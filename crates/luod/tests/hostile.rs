//! A hostile peer (issue 3, SPEC §8.1, §9): malformed frames, bad sizes, stray
//! fds, garbage HELLOs. Each gets its documented errno, nothing changes, the
//! daemon keeps serving, and its open-fd count returns to its baseline.

mod common;

use std::os::fd::{AsFd, OwnedFd};

use common::*;
use luo_uapi::Errno;
use luo_uapi::ioctl::{io, iowr};
use luo_uapi::rfc_v4::*;
use luo_wire::{HELLO_CMD, encode_request};
use zerocopy::IntoBytes;

fn raw_send(fd: &OwnedFd, bytes: &[u8], fds: &[std::os::fd::BorrowedFd<'_>]) {
    use std::io::IoSlice;
    use std::mem::MaybeUninit;
    let mut space = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(4))];
    let mut control = rustix::net::SendAncillaryBuffer::new(&mut space);
    if !fds.is_empty() {
        assert!(control.push(rustix::net::SendAncillaryMessage::ScmRights(fds)));
    }
    rustix::net::sendmsg(
        fd,
        &[IoSlice::new(bytes)],
        &mut control,
        rustix::net::SendFlags::empty(),
    )
    .expect("sendmsg");
}

fn errno_of(fd: &OwnedFd) -> Result<(), Errno> {
    luo_wire::recv_reply(fd.as_fd()).expect("a reply").result
}

fn header(magic: u32, cmd: u32, len: u32, reserved: u32) -> Vec<u8> {
    [magic, cmd, len, reserved]
        .iter()
        .flat_map(|w| w.to_le_bytes())
        .collect()
}

/// A frame whose header and payload say whatever the test wants.
fn frame(cmd: u32, payload: &[u8]) -> Vec<u8> {
    encode_request(cmd, payload)
}

fn name56(name: &str) -> [u8; 56] {
    name_field::<56>(name).expect("name")
}

#[test]
fn every_malformed_request_gets_its_errno_and_leaves_no_trace() {
    let d = Luod::start();
    // Warm up lazily allocated daemon state before taking the baseline.
    drop(d.device());
    let _ = d.status();
    let baseline = d.idle_fd_count();
    let mut cases: Vec<&'static str> = Vec::new();
    let mut check = |what: &'static str, got: Result<(), Errno>, want: Result<(), Errno>| {
        assert_eq!(got, want, "{what}");
        cases.push(what);
    };
    let null = std::fs::File::open("/dev/null").expect("/dev/null");
    let (pa, pb) = rustix::pipe::pipe().expect("pipe");

    // --- before HELLO ---
    let raw = d.raw();
    let gs = IoctlGetState::default();
    raw_send(&raw, &frame(LIVEUPDATE_IOCTL_GET_STATE, gs.as_bytes()), &[]);
    check("request before HELLO", errno_of(&raw), Err(Errno::INVAL));
    raw_send(&raw, &frame(HELLO_CMD, &[1, 2, 3]), &[]);
    check("garbage HELLO", errno_of(&raw), Err(Errno::INVAL));
    let mut bad = luo_wire::Hello::new(luo_wire::Abi::RfcV4);
    bad.version = 2;
    raw_send(&raw, &frame(HELLO_CMD, bad.as_bytes()), &[]);
    check(
        "HELLO version 2",
        errno_of(&raw),
        Err(Errno::PROTONOSUPPORT),
    );
    let mut bad = luo_wire::Hello::new(luo_wire::Abi::RfcV4);
    bad.abi = 9;
    raw_send(&raw, &frame(HELLO_CMD, bad.as_bytes()), &[]);
    check(
        "HELLO unknown abi",
        errno_of(&raw),
        Err(Errno::PROTONOSUPPORT),
    );
    let mut bad = luo_wire::Hello::new(luo_wire::Abi::RfcV4);
    bad.flags = 1;
    raw_send(&raw, &frame(HELLO_CMD, bad.as_bytes()), &[]);
    check("HELLO flags", errno_of(&raw), Err(Errno::INVAL));
    let good = luo_wire::Hello::new(luo_wire::Abi::RfcV4);
    raw_send(&raw, &frame(HELLO_CMD, good.as_bytes()), &[pa.as_fd()]);
    check("HELLO with an fd", errno_of(&raw), Err(Errno::INVAL));
    drop(raw);

    // --- frames on a device handle ---
    let dev = d.device();
    raw_send(
        &dev,
        &frame(
            HELLO_CMD,
            luo_wire::Hello::new(luo_wire::Abi::RfcV4).as_bytes(),
        ),
        &[],
    );
    check("second HELLO", errno_of(&dev), Err(Errno::INVAL));
    raw_send(&dev, &[0x51, 0x4f, 0x55, 0x4c, 0, 0xBA, 0, 0], &[]);
    check("short frame", errno_of(&dev), Err(Errno::INVAL));
    raw_send(
        &dev,
        &header(0x4C55_4F51, LIVEUPDATE_IOCTL_GET_STATE, 8, 0)[..15],
        &[],
    );
    check("15-byte frame", errno_of(&dev), Err(Errno::INVAL));
    let mut b = header(0xDEAD_BEEF, LIVEUPDATE_IOCTL_GET_STATE, 8, 0);
    b.extend_from_slice(gs.as_bytes());
    raw_send(&dev, &b, &[]);
    check("bad magic", errno_of(&dev), Err(Errno::INVAL));
    let mut b = header(0x4C55_4F51, LIVEUPDATE_IOCTL_GET_STATE, 8, 1);
    b.extend_from_slice(gs.as_bytes());
    raw_send(&dev, &b, &[]);
    check("reserved header field", errno_of(&dev), Err(Errno::INVAL));
    let mut b = header(0x4C55_4F51, LIVEUPDATE_IOCTL_GET_STATE, 16, 0);
    b.extend_from_slice(gs.as_bytes());
    raw_send(&dev, &b, &[]);
    check(
        "len larger than the payload",
        errno_of(&dev),
        Err(Errno::INVAL),
    );
    let mut b = header(0x4C55_4F51, LIVEUPDATE_IOCTL_GET_STATE, 4097, 0);
    b.resize(16 + 4097, 0);
    raw_send(&dev, &b, &[]);
    check(
        "len above 4096 (size > 4096)",
        errno_of(&dev),
        Err(Errno::INVAL),
    );
    raw_send(&dev, &vec![0x41; 65536], &[]);
    check("huge datagram", errno_of(&dev), Err(Errno::INVAL));
    let mut p = gs.as_bytes().to_vec();
    p.extend_from_slice(&[0; 8]);
    raw_send(&dev, &frame(LIVEUPDATE_IOCTL_GET_STATE, &p), &[]);
    check(
        "size field differs from len",
        errno_of(&dev),
        Err(Errno::INVAL),
    );
    p[..4].copy_from_slice(&16u32.to_ne_bytes());
    p[12] = 1;
    raw_send(&dev, &frame(LIVEUPDATE_IOCTL_GET_STATE, &p), &[]);
    check("non-zero tail", errno_of(&dev), Err(Errno::TOOBIG));
    raw_send(&dev, &frame(LIVEUPDATE_IOCTL_GET_STATE, &[4, 0, 0, 0]), &[]);
    check("size below min", errno_of(&dev), Err(Errno::INVAL));
    raw_send(&dev, &frame(io(0xBA, 0x05), gs.as_bytes()), &[]);
    check("unknown device nr", errno_of(&dev), Err(Errno::INVAL));
    raw_send(&dev, &frame(io(0xBB, 0x00), gs.as_bytes()), &[]);
    check("wrong type byte", errno_of(&dev), Err(Errno::NOTTY));
    raw_send(&dev, &frame(iowr(0xBA, 0x00, 8), gs.as_bytes()), &[]);
    check("_IOWR encoding", errno_of(&dev), Err(Errno::NOTTY));
    raw_send(
        &dev,
        &frame(
            LIVEUPDATE_SESSION_GET_STATE,
            SessionGetState::default().as_bytes(),
        ),
        &[],
    );
    check(
        "session command on the device",
        errno_of(&dev),
        Err(Errno::INVAL),
    );
    raw_send(
        &dev,
        &frame(LIVEUPDATE_IOCTL_GET_STATE, gs.as_bytes()),
        &[pa.as_fd(), pb.as_fd()],
    );
    check("two fds attached", errno_of(&dev), Err(Errno::INVAL));
    raw_send(
        &dev,
        &frame(LIVEUPDATE_IOCTL_GET_STATE, gs.as_bytes()),
        &[pa.as_fd()],
    );
    check("an fd on GET_STATE", errno_of(&dev), Err(Errno::INVAL));
    let ev = IoctlSetEvent {
        event: 7,
        ..Default::default()
    };
    raw_send(&dev, &frame(LIVEUPDATE_IOCTL_SET_EVENT, ev.as_bytes()), &[]);
    check("unknown global event", errno_of(&dev), Err(Errno::INVAL));
    let ev = IoctlSetEvent {
        event: Event::Freeze as u32,
        ..Default::default()
    };
    raw_send(&dev, &frame(LIVEUPDATE_IOCTL_SET_EVENT, ev.as_bytes()), &[]);
    check("global FREEZE", errno_of(&dev), Err(Errno::OPNOTSUPP));
    let cs = IoctlCreateSession {
        name: [b'x'; 56],
        ..Default::default()
    };
    raw_send(
        &dev,
        &frame(LIVEUPDATE_IOCTL_CREATE_SESSION, cs.as_bytes()),
        &[],
    );
    check("name without NUL", errno_of(&dev), Err(Errno::INVAL));
    let cs = IoctlCreateSession::default();
    raw_send(
        &dev,
        &frame(LIVEUPDATE_IOCTL_CREATE_SESSION, cs.as_bytes()),
        &[],
    );
    check("empty name", errno_of(&dev), Err(Errno::INVAL));
    let rs = IoctlRetrieveSession {
        name: name_field::<64>("nope").expect("name"),
        ..Default::default()
    };
    raw_send(
        &dev,
        &frame(LIVEUPDATE_IOCTL_RETRIEVE_SESSION, rs.as_bytes()),
        &[],
    );
    check("retrieve in NORMAL", errno_of(&dev), Err(Errno::AGAIN));

    // --- frames on a session handle ---
    let cs = IoctlCreateSession {
        name: name56("hostile"),
        ..Default::default()
    };
    let r = call(&dev, LIVEUPDATE_IOCTL_CREATE_SESSION, cs.as_bytes(), None);
    assert_eq!(r.result, Ok(()));
    let session = r.fd.expect("session handle");
    raw_send(
        &session,
        &frame(LIVEUPDATE_IOCTL_GET_STATE, gs.as_bytes()),
        &[],
    );
    check(
        "device command on a session",
        errno_of(&session),
        Err(Errno::INVAL),
    );
    raw_send(
        &session,
        &frame(
            HELLO_CMD,
            luo_wire::Hello::new(luo_wire::Abi::RfcV4).as_bytes(),
        ),
        &[],
    );
    check("HELLO on a session", errno_of(&session), Err(Errno::INVAL));
    let up = SessionUnpreserveFd {
        reserved: 1,
        token: 1,
        ..Default::default()
    };
    raw_send(
        &session,
        &frame(LIVEUPDATE_SESSION_UNPRESERVE_FD, up.as_bytes()),
        &[],
    );
    check(
        "UNPRESERVE reserved",
        errno_of(&session),
        Err(Errno::OPNOTSUPP),
    );
    let st = SessionGetState {
        reserved: [1, 0, 0],
        ..Default::default()
    };
    raw_send(
        &session,
        &frame(LIVEUPDATE_SESSION_GET_STATE, st.as_bytes()),
        &[],
    );
    check(
        "GET_STATE reserved",
        errno_of(&session),
        Err(Errno::OPNOTSUPP),
    );
    let pf = SessionPreserveFd {
        token: 1,
        ..Default::default()
    };
    raw_send(
        &session,
        &frame(LIVEUPDATE_SESSION_PRESERVE_FD, pf.as_bytes()),
        &[],
    );
    check(
        "PRESERVE without an fd",
        errno_of(&session),
        Err(Errno::BADF),
    );
    raw_send(
        &session,
        &frame(LIVEUPDATE_SESSION_PRESERVE_FD, pf.as_bytes()),
        &[session.as_fd()],
    );
    check(
        "a session handle into its own session",
        errno_of(&session),
        Err(Errno::NOENT),
    );
    raw_send(
        &session,
        &frame(LIVEUPDATE_SESSION_PRESERVE_FD, pf.as_bytes()),
        &[dev.as_fd()],
    );
    check(
        "the device handle into a session",
        errno_of(&session),
        Err(Errno::NOENT),
    );
    raw_send(
        &session,
        &frame(LIVEUPDATE_SESSION_PRESERVE_FD, pf.as_bytes()),
        &[null.as_fd()],
    );
    check("/dev/null", errno_of(&session), Err(Errno::NOENT));
    raw_send(
        &session,
        &frame(LIVEUPDATE_SESSION_PRESERVE_FD, pf.as_bytes()),
        &[pa.as_fd(), pb.as_fd()],
    );
    check(
        "PRESERVE with two fds",
        errno_of(&session),
        Err(Errno::INVAL),
    );
    let up = SessionUnpreserveFd {
        token: 1,
        ..Default::default()
    };
    raw_send(
        &session,
        &frame(LIVEUPDATE_SESSION_UNPRESERVE_FD, up.as_bytes()),
        &[pa.as_fd()],
    );
    check("an fd on UNPRESERVE", errno_of(&session), Err(Errno::INVAL));
    let rf = SessionRestoreFd {
        token: 1,
        ..Default::default()
    };
    raw_send(
        &session,
        &frame(LIVEUPDATE_SESSION_RESTORE_FD, rf.as_bytes()),
        &[],
    );
    check(
        "RESTORE before an update",
        errno_of(&session),
        Err(Errno::BUSY),
    );
    let se = SessionSetEvent {
        event: 4,
        ..Default::default()
    };
    raw_send(
        &session,
        &frame(LIVEUPDATE_SESSION_SET_EVENT, se.as_bytes()),
        &[],
    );
    check(
        "unknown session event",
        errno_of(&session),
        Err(Errno::INVAL),
    );
    raw_send(
        &session,
        &header(0x4C55_4F51, LIVEUPDATE_SESSION_GET_STATE, 99, 0),
        &[],
    );
    check(
        "truncated frame on a session",
        errno_of(&session),
        Err(Errno::INVAL),
    );
    raw_send(
        &session,
        &frame(io(0xBA, 0x45), SessionSetEvent::default().as_bytes()),
        &[],
    );
    check("unknown session nr", errno_of(&session), Err(Errno::INVAL));

    // --- the control socket ---
    let mut ctl = d.control_conn();
    ctl.send_line(b"this is not json\n");
    let r = ctl.read_reply().expect("reply");
    assert_eq!((r.ok, r.errno), (false, Some(22)), "garbage control line");
    ctl.send_line(b"{\"op\":\"reboot\"}\n");
    let r = ctl.read_reply().expect("reply");
    assert_eq!((r.ok, r.errno), (false, Some(22)), "unknown control op");
    let mut long = d.control_conn();
    long.send_line(&vec![b'x'; 70 * 1024]);
    let r = long.read_reply().expect("reply");
    assert_eq!((r.ok, r.errno), (false, Some(22)), "overlong control line");
    assert!(
        long.read_reply().is_none(),
        "an overlong line closes the connection"
    );

    // Nothing changed; a well-behaved client is served; every fd came back.
    let status = d.status();
    assert_eq!(status.state, "normal");
    assert_eq!(status.sessions.len(), 1);
    assert!(status.sessions[0].files.is_empty());
    let st = call(
        &session,
        LIVEUPDATE_SESSION_GET_STATE,
        SessionGetState::default().as_bytes(),
        None,
    );
    assert_eq!(st.result, Ok(()), "the session handle still works");
    drop((session, dev, ctl, long, pa, pb, null));
    let good = d.device();
    let r = call(
        &good,
        LIVEUPDATE_IOCTL_GET_STATE,
        IoctlGetState::default().as_bytes(),
        None,
    );
    assert_eq!(r.result, Ok(()));
    drop(good);
    assert_eq!(
        d.idle_fd_count(),
        baseline,
        "the daemon's fd count is back to its baseline"
    );
    assert!(cases.len() >= 30, "{} cases", cases.len());
    eprintln!(
        "{} hostile requests, each answered as documented",
        cases.len()
    );
}
