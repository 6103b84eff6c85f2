//! The client library against the real `luod`: each test starts its own daemon
//! in a fresh temporary directory with its own socket, waits for its readiness
//! notification (`NOTIFY_SOCKET`, never a sleep), and stops it on drop.
//!
//! The daemon binary is `$LUOD` when set, else `luod` in the target directory
//! these tests were built into (`cargo test --workspace` builds it; alone, run
//! `cargo build -p luod` first).

use std::os::fd::{AsFd, OwnedFd};
use std::time::Duration;

use luo::uapi::{
    IoctlCreateSession, IoctlGetState, LIVEUPDATE_IOCTL_CREATE_SESSION, LIVEUPDATE_IOCTL_GET_STATE,
    name_field,
};
use luo::{Device, Errno, Error, Event, Session, State};
use luo_testkit::{Luod, contents, errno, memfd, sibling_binary};
use luo_wire::control::ControlRequest;
use zerocopy::IntoBytes;

fn start() -> Luod {
    Luod::start_binary(&sibling_binary("luod", "LUOD"), &[], &[])
}

fn memfd_with(data: &[u8]) -> OwnedFd {
    memfd("luo-test", data)
}

#[test]
fn files_survive_a_live_update_and_old_handles_go_stale() {
    let d = start();
    let session = luo::create_session_at(&d.socket, "db").expect("create");
    assert_eq!(session.name(), Some("db"));
    let memory = memfd_with(b"state of epoch 0");
    let (pipe_r, _pipe_w) = rustix::pipe::pipe().expect("pipe");
    session.preserve(&memory, 1).expect("preserve memfd");
    session.preserve(&pipe_r, 2).expect("preserve pipe");
    drop((memory, pipe_r));
    assert_eq!(session.state().expect("state"), State::Normal);

    d.control_ok(&ControlRequest::Prepare);
    assert_eq!(session.state().expect("state"), State::Prepared);
    let reply = d.control_ok(&ControlRequest::Update { exec: None });
    let report = reply.update.expect("update report");
    assert_eq!((report.epoch, report.sessions, report.files), (1, 1, 2));

    let e = session.state().expect_err("the old handle is stale");
    assert!(e.is_stale(), "{e:?}");
    assert_eq!(e.errno(), Errno::STALE);

    let session = luo::retrieve_session_at(&d.socket, "db").expect("retrieve");
    assert_eq!(session.state().expect("state"), State::Updated);
    let memory = session.restore(1).expect("restore memfd");
    assert_eq!(contents(&memory), b"state of epoch 0");
    session.restore(2).expect("restore pipe");
    assert_eq!(errno(session.restore(1)), Errno::ADDRINUSE);
    assert_eq!(errno(session.restore(3)), Errno::NOENT);
    session.set_event(Event::Finish).expect("finish");
    assert_eq!(session.state().expect("state"), State::Normal);
    assert_eq!(
        errno(luo::retrieve_session_at(&d.socket, "db")),
        Errno::ADDRINUSE
    );
    d.control_ok(&ControlRequest::Finish);
    assert_eq!(d.status().state, "normal");
}

#[test]
fn refusals_come_back_as_typed_errors() {
    let d = start();
    let device = Device::open_at(&d.socket).expect("open");
    assert_eq!(device.state().expect("state"), State::Normal);
    let session = device.create_session("a").expect("create");

    let e = device.create_session("a").expect_err("duplicate");
    assert!(
        matches!(
            e,
            Error::Os {
                op: "CREATE_SESSION",
                errno: Errno::EXIST
            }
        ),
        "{e:?}"
    );
    assert_eq!(e.to_string(), "CREATE_SESSION: File exists");
    assert_eq!(errno(device.retrieve_session("a")), Errno::AGAIN);
    assert!(matches!(
        device.create_session(&"n".repeat(56)),
        Err(Error::InvalidName { .. })
    ));
    assert_eq!(errno(device.set_event_raw(42)), Errno::INVAL);
    assert_eq!(errno(device.set_event(Event::Freeze)), Errno::OPNOTSUPP);
    assert_eq!(errno(device.set_event(Event::Finish)), Errno::INVAL);

    let memory = memfd_with(b"x");
    session.preserve(&memory, 7).expect("preserve");
    assert_eq!(errno(session.preserve(memfd_with(b"y"), 7)), Errno::EXIST);
    assert_eq!(errno(session.preserve(&memory, 8)), Errno::BUSY);
    let null = std::fs::File::open("/dev/null").expect("/dev/null");
    assert_eq!(errno(session.preserve(&null, 9)), Errno::NOENT);
    assert_eq!(errno(session.restore(7)), Errno::BUSY);
    assert_eq!(errno(session.unpreserve(8)), Errno::NOENT);
    assert_eq!(errno(session.set_event_raw(99)), Errno::INVAL);
    session.unpreserve(7).expect("unpreserve");

    session.set_event(Event::Prepare).expect("prepare");
    let e = session.preserve(&memory, 7).expect_err("prepared");
    assert!(e.is_busy(), "{e:?}");
    assert_eq!(e.to_string(), "PRESERVE_FD: Device or resource busy");
    session.set_event(Event::Cancel).expect("cancel");
    session.preserve(&memory, 7).expect("preserve again");
}

#[test]
fn the_device_is_exclusive_and_the_one_step_calls_wait_for_it() {
    let d = start();
    let held = Device::open_at(&d.socket).expect("open");
    assert!(Device::open_at(&d.socket).expect_err("busy").is_busy());
    let e = Device::open_at_retrying(&d.socket, Duration::from_millis(20)).expect_err("busy");
    assert!(e.is_busy(), "{e:?}");
    assert_eq!(e.to_string(), "HELLO: Device or resource busy");

    // Whether the helper's first attempt comes before or after the release, it
    // ends with a session: it retries for up to two seconds.
    let socket = d.socket.clone();
    let waiter = std::thread::spawn(move || luo::create_session_at(&socket, "waiter"));
    drop(held);
    let session = waiter
        .join()
        .expect("thread")
        .expect("create after release");
    assert_eq!(session.state().expect("state"), State::Normal);
    // The helper closed the device behind it (the daemon sees that a moment later).
    Device::open_at_retrying(&d.socket, luo::BUSY_TIMEOUT).expect("device is free again");
}

#[test]
fn raw_ioctls_show_the_wire_as_is() {
    let d = start();
    let device = Device::open_at(&d.socket).expect("open");

    let mut short = IoctlGetState::default().as_bytes().to_vec();
    short[..4].copy_from_slice(&4u32.to_ne_bytes());
    assert_eq!(
        errno(device.raw_ioctl(LIVEUPDATE_IOCTL_GET_STATE, &mut short)),
        Errno::INVAL
    );

    let mut state = IoctlGetState::default().as_bytes().to_vec();
    assert!(
        device
            .raw_ioctl(LIVEUPDATE_IOCTL_GET_STATE, &mut state)
            .expect("get state")
            .is_none()
    );
    assert_eq!(state[4..8], (State::Normal as u32).to_ne_bytes());

    let create = IoctlCreateSession {
        name: name_field("raw").expect("name"),
        ..Default::default()
    };
    let mut tail = create.as_bytes().to_vec();
    tail.extend_from_slice(&[0, 0, 0, 1]);
    tail[..4].copy_from_slice(&68u32.to_ne_bytes());
    assert_eq!(
        errno(device.raw_ioctl(LIVEUPDATE_IOCTL_CREATE_SESSION, &mut tail)),
        Errno::TOOBIG
    );

    let mut buf = create.as_bytes().to_vec();
    let fd = device
        .raw_ioctl(LIVEUPDATE_IOCTL_CREATE_SESSION, &mut buf)
        .expect("create")
        .expect("a session fd");
    use std::os::fd::AsRawFd;
    assert_eq!(buf[4..8], fd.as_raw_fd().to_ne_bytes());
    let session = Session::from_fd(fd);
    assert_eq!(session.name(), None);
    assert_eq!(session.state().expect("state"), State::Normal);
}

#[test]
fn a_session_handle_can_change_hands() {
    let d = start();
    let session = luo::create_session_at(&d.socket, "shared").expect("create");
    let copy = session.as_fd().try_clone_to_owned().expect("dup");
    drop(session);
    // The session lives as long as any copy of its handle.
    let adopted = Session::from_fd(copy);
    adopted.preserve(memfd_with(b"z"), 1).expect("preserve");
    assert_eq!(d.status().sessions.len(), 1);
    assert_eq!(d.status().preserved_files, 1);
}
