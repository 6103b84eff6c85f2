//! Release (SPEC §5): a session lives as long as any copy of its handle, in any
//! process; when the last copy closes, a PREPARED or FROZEN session is cancelled,
//! an UPDATED one finished, every remaining file is unpreserved and the session
//! removed. The daemon sees the close asynchronously, so each test polls the
//! status (control socket or `luoctl status --json`) up to a deadline.

mod common;

use std::os::fd::{AsFd, OwnedFd};
use std::process::{Child, Command, Stdio};

use common::*;
use luo::{Event, State};
use luo_wire::control::{ControlRequest, Status};

/// Poll `luoctl status --json` until `done` holds.
fn wait_for_luoctl(d: &Luod, what: &str, done: impl FnMut(&Status) -> bool) -> Status {
    d.wait_for(what, || d.luoctl_status(), done)
}

/// `sleep 600` with `stdin`: a process that holds whatever it was given until
/// it is killed, which dropping this does (also when an assertion fails).
struct Sleeper(Child);

impl Sleeper {
    fn spawn(stdin: Stdio) -> Sleeper {
        let child = Command::new("sleep")
            .arg("600")
            .stdin(stdin)
            .stdout(Stdio::null())
            .spawn()
            .expect("spawn sleep");
        Sleeper(child)
    }
}

impl Drop for Sleeper {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn a_session_handle_held_by_a_child_process_lives_until_the_child_exits() {
    let d = Luod::start();
    let baseline = d.idle_fd_count();
    let device = d.luo();
    let session = device.create_session("shared").expect("create");
    let memory = memfd("shared", b"kept by the child's handle");
    session.preserve(&memory, 1).expect("preserve");
    drop(device);

    let copy: OwnedFd = session.as_fd().try_clone_to_owned().expect("dup");
    let child = Sleeper::spawn(Stdio::from(copy));
    drop(session);

    // No close reaches the daemon while the child holds a copy: it sees none.
    let status = d.status();
    assert_eq!(status.sessions.len(), 1, "{status:#?}");
    assert_eq!(status.sessions[0].name, "shared");
    assert_eq!(status.sessions[0].state, "normal");
    assert_eq!(status.preserved_files, 1);

    drop(child);
    let status = d.wait_for_status("the session released", |s| {
        s.sessions.is_empty() && s.preserved_files == 0
    });
    assert_eq!(status.state, "normal");
    // The daemon closed its end of the handle and its reference to the memfd.
    d.wait_fd_count(baseline);
    // Unpreserving dropped the daemon's reference, not the file.
    assert_eq!(contents(&memory), b"kept by the child's handle");
    // The name is free again.
    let _again = d.luo().create_session("shared").expect("create again");
}

#[test]
fn a_session_handle_is_not_inherited_by_other_child_processes() {
    let d = Luod::start();
    let session = d.luo().create_session("private").expect("create");
    session
        .preserve(memfd("private", b"private"), 1)
        .expect("preserve");
    // Spawned while the handle is open, without passing it on.
    let _child = Sleeper::spawn(Stdio::null());
    drop(session);
    // Released while the child lives: it holds no copy (close-on-exec).
    d.wait_for_status("the session released", |s| {
        s.sessions.is_empty() && s.preserved_files == 0
    });
}

#[test]
fn a_prepared_session_whose_last_handle_closes_is_cancelled_and_its_files_dropped() {
    let d = Luod::start();
    let device = d.luo();
    let session = device.create_session("going").expect("create");
    let stays = device.create_session("staying").expect("create");
    let memory = memfd("going", b"going");
    let (pipe_r, _pipe_w) = rustix::pipe::pipe().expect("pipe");
    session.preserve(&memory, 1).expect("preserve memfd");
    session.preserve(&pipe_r, 2).expect("preserve pipe");
    stays
        .preserve(memfd("staying", b"staying"), 1)
        .expect("preserve");
    d.control_ok(&ControlRequest::Prepare);
    assert_eq!(session.state().expect("state"), State::Prepared);
    let before = d.luoctl_status();
    assert_eq!(before.preserved_files, 3);
    assert_eq!(before.sessions.len(), 2);

    drop(session);
    let after = wait_for_luoctl(&d, "the prepared session released", |s| {
        s.sessions.len() == 1
    });
    assert_eq!(after.sessions[0].name, "staying");
    assert_eq!(after.sessions[0].state, "prepared");
    assert_eq!(after.preserved_files, 1);
    // One session's release leaves the global state alone.
    assert_eq!(after.state, "prepared");
    assert_eq!(stays.state().expect("state"), State::Prepared);
    assert_eq!(contents(&memory), b"going");

    // Its files are free to be preserved again, by anyone.
    d.control_ok(&ControlRequest::Cancel);
    let other = device.create_session("going").expect("the name is free");
    other.preserve(&memory, 1).expect("the memfd is free");
    other.preserve(&pipe_r, 2).expect("the pipe is free");
}

#[test]
fn a_frozen_session_whose_last_handle_closes_is_cancelled_and_its_files_dropped() {
    let d = Luod::start();
    let device = d.luo();
    let session = device.create_session("frozen").expect("create");
    let memory = memfd("frozen", b"frozen");
    session.preserve(&memory, 1).expect("preserve");
    session.set_event(Event::Prepare).expect("prepare");
    session.set_event(Event::Freeze).expect("freeze");
    assert_eq!(d.luoctl_status().sessions[0].state, "frozen");

    drop(session);
    let after = wait_for_luoctl(&d, "the frozen session released", |s| s.sessions.is_empty());
    assert_eq!(after.preserved_files, 0);
    assert_eq!(after.state, "normal");
    let again = device.create_session("frozen").expect("the name is free");
    again.preserve(&memory, 1).expect("the memfd is free");
    assert_eq!(contents(&memory), b"frozen");
}

#[test]
fn an_updated_session_whose_handle_closes_is_finished_and_unrestored_files_dropped() {
    let d = Luod::start();
    let device = d.luo();
    let session = device.create_session("db").expect("create");
    session
        .preserve(memfd("restored", b"restored data"), 1)
        .expect("preserve");
    session
        .preserve(memfd("unrestored", b"never restored"), 2)
        .expect("preserve");
    let (pipe_r, _pipe_w) = rustix::pipe::pipe().expect("pipe");
    session.preserve(&pipe_r, 3).expect("preserve pipe");
    let report = d.prepare_and_update();
    assert_eq!((report.sessions, report.files), (1, 3));

    let device = d.luo();
    let session = device.retrieve_session("db").expect("retrieve");
    let restored = session.restore(1).expect("restore");
    assert!(
        rustix::io::fcntl_getfd(&restored)
            .expect("F_GETFD")
            .contains(rustix::io::FdFlags::CLOEXEC),
        "a restored fd is close-on-exec"
    );
    let status = d.status();
    assert_eq!(status.sessions[0].state, "updated");
    assert_eq!(status.preserved_files, 3);

    drop(session);
    let status = d.wait_for_status("the updated session released", |s| {
        s.sessions.is_empty() && s.preserved_files == 0
    });
    // One session's release leaves the global state alone.
    assert_eq!(status.state, "updated");
    // What was restored belongs to the restorer, intact.
    assert_eq!(contents(&restored), b"restored data");
    // The session is gone: its name cannot be retrieved, but can be used anew.
    assert_eq!(errno(device.retrieve_session("db")), luo::Errno::NOENT);
    let fresh = device.create_session("db").expect("the name is free");
    fresh.preserve(&pipe_r, 1).expect("the pipe is free");
}
