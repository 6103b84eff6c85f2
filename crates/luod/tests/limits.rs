//! Limits (SPEC §9): reaching one is ENOSPC, the refused request changes
//! nothing, and what a released session or an unpreserved file held is free again.

mod common;

use common::*;
use luo::{Errno, Session};

#[test]
fn a_uid_past_its_session_limit_gets_enospc_until_a_session_is_released() {
    let d = Luod::start_with(&["--max-sessions-per-uid", "2"], &[]);
    let device = d.luo();
    let a = device.create_session("a").expect("first");
    let _b = device.create_session("b").expect("second");
    assert_eq!(errno(device.create_session("c")), Errno::NOSPC);
    assert_eq!(d.status().sessions.len(), 2);

    drop(a);
    d.wait_for_status("session a released", |s| s.sessions.len() == 1);
    let _c = device.create_session("c").expect("the slot is free");
    assert_eq!(errno(device.create_session("d")), Errno::NOSPC);
}

#[test]
fn a_session_past_its_file_limit_gets_enospc_until_a_file_is_unpreserved() {
    let d = Luod::start_with(&["--max-files-per-session", "3"], &[]);
    let device = d.luo();
    let session = device.create_session("full").expect("create");
    let files: Vec<_> = (0..4).map(|i| memfd("file", &[i; 16])).collect();
    for (token, file) in (1..).zip(&files[..3]) {
        session.preserve(file, token).expect("within the limit");
    }
    assert_eq!(errno(session.preserve(&files[3], 4)), Errno::NOSPC);
    assert_eq!(d.status().preserved_files, 3);

    // The limit is per session: another one takes the fourth file.
    let other: Session = device.create_session("other").expect("create");
    other.preserve(&files[3], 1).expect("another session");
    other.unpreserve(1).expect("unpreserve");

    session.unpreserve(2).expect("unpreserve");
    session.preserve(&files[3], 4).expect("the slot is free");
    assert_eq!(errno(session.preserve(&files[1], 2)), Errno::NOSPC);
    assert_eq!(d.status().preserved_files, 3);
}

#[test]
fn incoming_sessions_count_against_the_session_limit() {
    let d = Luod::start_with(&["--max-sessions-per-uid", "2"], &[]);
    let device = d.luo();
    let _a = device.create_session("a").expect("first");
    let _b = device.create_session("b").expect("second");
    d.prepare_and_update();

    let device = d.luo();
    assert_eq!(errno(device.create_session("c")), Errno::NOSPC);
    let a = device.retrieve_session("a").expect("retrieve");
    drop(a);
    d.wait_for_status("session a released", |s| s.sessions.len() == 1);
    let _c = device.create_session("c").expect("the slot is free");
    assert_eq!(errno(device.create_session("d")), Errno::NOSPC);
}

/// `--max-connections` bounds device and session handles; a client past it is
/// refused (its connection ends), and `luoctl` still gets through: the control
/// socket has a limit of its own, so a flood of clients cannot lock the
/// operator out.
#[test]
fn past_the_connection_limit_devices_are_refused_and_luoctl_still_answers() {
    let d = Luod::start_with(&["--max-connections", "3", "--shared-device"], &[]);
    let held: Vec<_> = (0..3).map(|_| d.luo()).collect();
    for dev in &held {
        assert_eq!(dev.state().expect("within the limit"), luo::State::Normal);
    }
    let refused = luo::Device::open_at(&d.socket);
    assert!(refused.is_err(), "a fourth handle is refused");
    assert_eq!(d.status().state, "normal", "luoctl gets through");
    assert!(d.log().contains("connection limit reached"), "{}", d.log());
    drop(held);
    // The slots free up as the daemon sees the handles close.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        if let Ok(dev) = luo::Device::open_at(&d.socket) {
            assert_eq!(dev.state().expect("state"), luo::State::Normal);
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the slots never freed"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}
