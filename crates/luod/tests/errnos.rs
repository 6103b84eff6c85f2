//! Every errno of SPEC §5 (sessions) and §6 (preserved files), and the decoding
//! rules of §3.1, as a service sees them: through the `luo` client library, over
//! the wire, against the real `luod` (issue 3). Plus the state flows of the
//! kernel's own LUO selftests: PREPARE, FREEZE and CANCEL of sessions holding a
//! memfd, with GET_STATE checked at each step.
//!
//! Rows that need a live update run one: global PREPARE and `update` on the
//! control socket; the daemon re-executes itself, answers on the same control
//! connection and says READY=1 again, and every handle of the old epoch is stale.

mod common;

use std::os::fd::{AsFd, OwnedFd};

use common::*;
use luo::uapi::*;
use luo::{Device, Errno, Event, Session, State};
use luo_uapi::ioctl::{io, iowr};
use zerocopy::IntoBytes;

/// A session holding one memfd under token 1.
fn session_with_memfd(device: &Device, name: &str) -> (Session, OwnedFd) {
    let session = device.create_session(name).expect("create");
    let memory = memfd(name, name.as_bytes());
    session.preserve(&memory, 1).expect("preserve");
    (session, memory)
}

/// CREATE_SESSION with the name field exactly as given.
fn raw_create(device: &Device, name: [u8; 56]) -> luo::Result<Option<OwnedFd>> {
    let mut buf = IoctlCreateSession {
        name,
        ..Default::default()
    }
    .as_bytes()
    .to_vec();
    device.raw_ioctl(LIVEUPDATE_IOCTL_CREATE_SESSION, &mut buf)
}

/// RETRIEVE_SESSION with the name field exactly as given.
fn raw_retrieve(device: &Device, name: [u8; 64]) -> luo::Result<Option<OwnedFd>> {
    let mut buf = IoctlRetrieveSession {
        name,
        ..Default::default()
    }
    .as_bytes()
    .to_vec();
    device.raw_ioctl(LIVEUPDATE_IOCTL_RETRIEVE_SESSION, &mut buf)
}

fn session_names(d: &Luod) -> Vec<String> {
    d.status().sessions.into_iter().map(|s| s.name).collect()
}

// ----- SPEC §5: CREATE_SESSION -------------------------------------------------

#[test]
fn creating_a_session_while_prepared_is_eagain() {
    let d = Luod::start();
    let device = d.luo();
    let _a = device.create_session("a").expect("create");
    device.set_event(Event::Prepare).expect("global prepare");
    assert_eq!(device.state().expect("state"), State::Prepared);
    assert_eq!(errno(device.create_session("b")), Errno::AGAIN);
    device.set_event(Event::Cancel).expect("global cancel");
    let _b = device
        .create_session("b")
        .expect("create once normal again");
    assert_eq!(session_names(&d), ["a", "b"]);
}

#[test]
fn an_empty_session_name_is_einval() {
    let d = Luod::start();
    let device = d.luo();
    // The daemon's answer, past the library's own check.
    assert_eq!(errno(raw_create(&device, [0; 56])), Errno::INVAL);
    assert_eq!(errno(device.create_session("")), Errno::INVAL);
    assert!(session_names(&d).is_empty());
}

#[test]
fn a_name_filling_all_56_bytes_is_einval_never_truncated() {
    let d = Luod::start();
    let device = d.luo();
    assert_eq!(errno(raw_create(&device, [b'n'; 56])), Errno::INVAL);
    assert_eq!(errno(device.create_session(&"n".repeat(56))), Errno::INVAL);
    assert!(session_names(&d).is_empty());
    // 55 bytes and the NUL fit, and the name is kept whole.
    let longest = "n".repeat(55);
    let mut field = [0u8; 56];
    field[..55].copy_from_slice(longest.as_bytes());
    let fd = raw_create(&device, field)
        .expect("55 bytes")
        .expect("a session fd");
    // Keep the handle: its close would release the session.
    let session = Session::from_fd(fd);
    assert_eq!(session.state().expect("state"), State::Normal);
    assert_eq!(session_names(&d), [longest]);
}

#[test]
fn a_duplicate_session_name_is_eexist() {
    let d = Luod::start();
    let device = d.luo();
    let first = device.create_session("db").expect("create");
    assert_eq!(errno(device.create_session("db")), Errno::EXIST);
    // The refusal left the first session alone.
    first
        .preserve(memfd("luo-test", b"x"), 1)
        .expect("first still works");
    assert_eq!(session_names(&d), ["db"]);
}

#[test]
fn the_name_of_an_incoming_session_is_eexist_after_an_update() {
    let d = Luod::start();
    let device = d.luo();
    let (session, _memory) = session_with_memfd(&device, "db");
    let report = d.prepare_and_update();
    assert_eq!((report.epoch, report.sessions, report.files), (1, 1, 1));

    // Every handle of the old epoch is stale.
    let e = session.state().expect_err("stale session handle");
    assert!(e.is_stale(), "{e:?}");
    assert_eq!(e.errno(), Errno::STALE);
    assert_eq!(errno(device.state()), Errno::STALE);
    drop((session, device));

    let device = d.luo();
    assert_eq!(device.state().expect("state"), State::Updated);
    assert_eq!(errno(device.create_session("db")), Errno::EXIST);
    let retrieved = device.retrieve_session("db").expect("retrieve");
    assert_eq!(errno(device.create_session("db")), Errno::EXIST);
    let _fresh = device
        .create_session("fresh")
        .expect("a new name is fine in UPDATED");
    assert_eq!(retrieved.state().expect("state"), State::Updated);
}

// ----- SPEC §5: RETRIEVE_SESSION -----------------------------------------------

#[test]
fn retrieving_before_an_update_is_eagain() {
    let d = Luod::start();
    let device = d.luo();
    let (_session, _memory) = session_with_memfd(&device, "db");
    assert_eq!(errno(device.retrieve_session("db")), Errno::AGAIN);
    assert_eq!(errno(device.retrieve_session("nope")), Errno::AGAIN);
    device.set_event(Event::Prepare).expect("global prepare");
    assert_eq!(errno(device.retrieve_session("db")), Errno::AGAIN);
}

#[test]
fn retrieving_an_unknown_session_is_enoent() {
    let d = Luod::start();
    let device = d.luo();
    let (_session, _memory) = session_with_memfd(&device, "db");
    d.prepare_and_update();
    let device = d.luo();
    assert_eq!(errno(device.retrieve_session("nope")), Errno::NOENT);
    // A session of this epoch is outgoing, not incoming: nothing to retrieve.
    let _fresh = device.create_session("fresh").expect("create");
    assert_eq!(errno(device.retrieve_session("fresh")), Errno::NOENT);
    // The struct has room for 64 bytes, but names stop at 55.
    let mut long = [b'n'; 64];
    long[60] = 0;
    assert_eq!(errno(raw_retrieve(&device, long)), Errno::INVAL);
    device.retrieve_session("db").expect("the carried one");
}

#[test]
fn retrieving_a_session_twice_is_eaddrinuse() {
    let d = Luod::start();
    let device = d.luo();
    let (_session, _memory) = session_with_memfd(&device, "db");
    d.prepare_and_update();
    let device = d.luo();
    let first = device.retrieve_session("db").expect("retrieve");
    assert_eq!(errno(device.retrieve_session("db")), Errno::ADDRINUSE);
    assert_eq!(first.state().expect("state"), State::Updated);
}

// ----- SPEC §5: per-session SET_EVENT ------------------------------------------

#[test]
fn preparing_a_session_twice_is_ebusy() {
    let d = Luod::start();
    let device = d.luo();
    let (session, _memory) = session_with_memfd(&device, "db");
    session.set_event(Event::Prepare).expect("prepare");
    assert_eq!(errno(session.set_event(Event::Prepare)), Errno::BUSY);
    assert_eq!(session.state().expect("state"), State::Prepared);
    session.set_event(Event::Freeze).expect("freeze");
    assert_eq!(errno(session.set_event(Event::Prepare)), Errno::BUSY);
    assert_eq!(session.state().expect("state"), State::Frozen);
}

#[test]
fn freezing_a_session_that_is_not_prepared_is_ebusy() {
    let d = Luod::start();
    let device = d.luo();
    let (session, _memory) = session_with_memfd(&device, "db");
    assert_eq!(errno(session.set_event(Event::Freeze)), Errno::BUSY);
    assert_eq!(session.state().expect("state"), State::Normal);
    session.set_event(Event::Prepare).expect("prepare");
    session.set_event(Event::Freeze).expect("freeze");
    assert_eq!(errno(session.set_event(Event::Freeze)), Errno::BUSY);
    assert_eq!(session.state().expect("state"), State::Frozen);
}

#[test]
fn cancel_and_finish_out_of_place_succeed_and_change_nothing() {
    let d = Luod::start();
    let device = d.luo();
    let (session, _memory) = session_with_memfd(&device, "db");
    for event in [Event::Cancel, Event::Finish] {
        session.set_event(event).expect("no-op in NORMAL");
        assert_eq!(session.state().expect("state"), State::Normal);
    }
    session.set_event(Event::Prepare).expect("prepare");
    session.set_event(Event::Finish).expect("no-op in PREPARED");
    assert_eq!(session.state().expect("state"), State::Prepared);
    session.set_event(Event::Freeze).expect("freeze");
    session.set_event(Event::Finish).expect("no-op in FROZEN");
    assert_eq!(session.state().expect("state"), State::Frozen);
    session.set_event(Event::Cancel).expect("cancel");
    assert_eq!(d.status().preserved_files, 1);

    d.prepare_and_update();
    let device = d.luo();
    let session = device.retrieve_session("db").expect("retrieve");
    session.set_event(Event::Cancel).expect("no-op in UPDATED");
    assert_eq!(session.state().expect("state"), State::Updated);
}

#[test]
fn an_unknown_event_is_einval() {
    let d = Luod::start();
    let device = d.luo();
    let (session, _memory) = session_with_memfd(&device, "db");
    for raw in [4, 5, 0x100, u32::MAX] {
        assert_eq!(errno(session.set_event_raw(raw)), Errno::INVAL, "{raw}");
        assert_eq!(errno(device.set_event_raw(raw)), Errno::INVAL, "{raw}");
    }
    assert_eq!(session.state().expect("state"), State::Normal);
    assert_eq!(device.state().expect("state"), State::Normal);
}

// ----- SPEC §6: PRESERVE_FD, UNPRESERVE_FD --------------------------------------

#[test]
fn preserving_or_unpreserving_outside_a_normal_session_is_ebusy() {
    let d = Luod::start();
    let device = d.luo();
    let (session, _memory) = session_with_memfd(&device, "db");
    let other = memfd("luo-test", b"other");

    session.set_event(Event::Prepare).expect("prepare");
    assert_eq!(errno(session.preserve(&other, 2)), Errno::BUSY);
    assert_eq!(errno(session.unpreserve(1)), Errno::BUSY);
    session.set_event(Event::Freeze).expect("freeze");
    assert_eq!(errno(session.preserve(&other, 2)), Errno::BUSY);
    assert_eq!(errno(session.unpreserve(1)), Errno::BUSY);
    session.set_event(Event::Cancel).expect("cancel");

    // The session is NORMAL again but the global state is PREPARED: still no.
    device.set_event(Event::Prepare).expect("global prepare");
    session
        .set_event(Event::Cancel)
        .expect("cancel the session alone");
    assert_eq!(session.state().expect("state"), State::Normal);
    assert_eq!(errno(session.preserve(&other, 2)), Errno::BUSY);
    assert_eq!(errno(session.unpreserve(1)), Errno::BUSY);
    device.set_event(Event::Cancel).expect("global cancel");

    session
        .preserve(&other, 2)
        .expect("preserve once all NORMAL");
    session.unpreserve(2).expect("unpreserve once all NORMAL");
    assert_eq!(d.status().preserved_files, 1);
}

#[test]
fn a_retrieved_session_takes_new_files_only_once_finished() {
    let d = Luod::start();
    let device = d.luo();
    let (_session, _memory) = session_with_memfd(&device, "db");
    d.prepare_and_update();
    let device = d.luo();
    let session = device.retrieve_session("db").expect("retrieve");
    let other = memfd("luo-test", b"other");
    assert_eq!(errno(session.preserve(&other, 2)), Errno::BUSY);
    assert_eq!(errno(session.unpreserve(1)), Errno::BUSY);
    session.restore(1).expect("restore");
    session.set_event(Event::Finish).expect("finish");
    assert_eq!(session.state().expect("state"), State::Normal);
    session.preserve(&other, 2).expect("preserve after finish");
    // Restored files stay preserved (continuous preservation).
    assert_eq!(d.status().preserved_files, 2);
}

#[test]
fn preserving_without_an_fd_is_ebadf() {
    let d = Luod::start();
    let device = d.luo();
    let session = device.create_session("db").expect("create");
    let mut buf = SessionPreserveFd {
        fd: 0,
        token: 1,
        ..Default::default()
    }
    .as_bytes()
    .to_vec();
    assert_eq!(
        errno(session.raw_ioctl(LIVEUPDATE_SESSION_PRESERVE_FD, &mut buf)),
        Errno::BADF
    );
    assert_eq!(d.status().preserved_files, 0);
}

#[test]
fn preserving_a_file_no_handler_takes_is_enoent() {
    let d = Luod::start();
    let device = d.luo();
    let session = device.create_session("db").expect("create");
    let other = device.create_session("other").expect("create");
    let null = std::fs::File::open("/dev/null").expect("/dev/null");
    let regular_path = d.dir.path().join("regular");
    std::fs::write(&regular_path, b"plain file").expect("write");
    let regular = std::fs::File::open(&regular_path).expect("open regular file");
    let directory = std::fs::File::open(d.dir.path()).expect("open directory");
    let cases: [(&str, std::os::fd::BorrowedFd<'_>); 6] = [
        ("/dev/null", null.as_fd()),
        ("a regular file", regular.as_fd()),
        ("a directory", directory.as_fd()),
        ("its own session handle", session.as_fd()),
        ("another session's handle", other.as_fd()),
        ("the device handle", device.as_fd()),
    ];
    for (what, fd) in cases {
        assert_eq!(errno(session.preserve(fd, 1)), Errno::NOENT, "{what}");
    }
    assert_eq!(d.status().preserved_files, 0);
    session
        .preserve(memfd("luo-test", b"x"), 1)
        .expect("a memfd is fine");
}

#[test]
fn reusing_a_token_in_a_session_is_eexist() {
    let d = Luod::start();
    let device = d.luo();
    let (session, _memory) = session_with_memfd(&device, "db");
    let second = memfd("luo-test", b"second");
    assert_eq!(errno(session.preserve(&second, 1)), Errno::EXIST);
    // The refused file was not taken: it goes in under another token.
    session.preserve(&second, 2).expect("another token");
    // Tokens are per session.
    let other = device.create_session("other").expect("create");
    other
        .preserve(memfd("luo-test", b"third"), 1)
        .expect("token 1 elsewhere");
    assert_eq!(d.status().preserved_files, 3);
}

#[test]
fn preserving_the_same_open_file_twice_is_ebusy() {
    let d = Luod::start();
    let device = d.luo();
    let (session, memory) = session_with_memfd(&device, "db");
    let other = device.create_session("other").expect("create");
    let dup = memory.try_clone().expect("dup");
    let reopened: OwnedFd = std::fs::File::open(format!(
        "/proc/self/fd/{}",
        std::os::fd::AsRawFd::as_raw_fd(&memory)
    ))
    .expect("reopen through /proc")
    .into();
    assert_eq!(errno(session.preserve(&memory, 2)), Errno::BUSY, "same fd");
    assert_eq!(errno(session.preserve(&dup, 2)), Errno::BUSY, "a dup");
    assert_eq!(errno(session.preserve(&reopened, 2)), Errno::BUSY, "reopen");
    assert_eq!(errno(other.preserve(&dup, 1)), Errno::BUSY, "other session");
    assert_eq!(d.status().preserved_files, 1);
    // Once unpreserved, the file may go elsewhere.
    session.unpreserve(1).expect("unpreserve");
    other
        .preserve(&dup, 1)
        .expect("preserve in the other session");
}

#[test]
fn unpreserving_an_unknown_token_is_enoent() {
    let d = Luod::start();
    let device = d.luo();
    let (session, _memory) = session_with_memfd(&device, "db");
    assert_eq!(errno(session.unpreserve(2)), Errno::NOENT);
    session.unpreserve(1).expect("unpreserve");
    assert_eq!(errno(session.unpreserve(1)), Errno::NOENT, "twice");
    assert_eq!(d.status().preserved_files, 0);
}

// ----- SPEC §6: RESTORE_FD -------------------------------------------------------

#[test]
fn restoring_before_an_update_is_ebusy() {
    let d = Luod::start();
    let device = d.luo();
    let (session, _memory) = session_with_memfd(&device, "db");
    assert_eq!(errno(session.restore(1)), Errno::BUSY);
    session.set_event(Event::Prepare).expect("prepare");
    assert_eq!(errno(session.restore(1)), Errno::BUSY);
    session.set_event(Event::Freeze).expect("freeze");
    assert_eq!(errno(session.restore(1)), Errno::BUSY);
    session.set_event(Event::Cancel).expect("cancel");

    // After the update, only the carried session in UPDATED restores.
    d.prepare_and_update();
    let device = d.luo();
    let fresh = device.create_session("fresh").expect("create");
    let fresh_memory = memfd("luo-test", b"fresh");
    fresh.preserve(&fresh_memory, 1).expect("preserve");
    assert_eq!(errno(fresh.restore(1)), Errno::BUSY);
    let session = device.retrieve_session("db").expect("retrieve");
    session
        .set_event(Event::Finish)
        .expect("finish without restoring");
    assert_eq!(errno(session.restore(1)), Errno::BUSY);
}

#[test]
fn restoring_an_unknown_token_is_enoent() {
    let d = Luod::start();
    let device = d.luo();
    let (_session, _memory) = session_with_memfd(&device, "db");
    d.prepare_and_update();
    let device = d.luo();
    let session = device.retrieve_session("db").expect("retrieve");
    assert_eq!(errno(session.restore(2)), Errno::NOENT);
    assert_eq!(contents(&session.restore(1).expect("restore")), b"db");
}

#[test]
fn restoring_a_file_twice_is_eaddrinuse() {
    let d = Luod::start();
    let device = d.luo();
    let (_session, _memory) = session_with_memfd(&device, "db");
    d.prepare_and_update();
    let device = d.luo();
    let session = device.retrieve_session("db").expect("retrieve");
    let restored = session.restore(1).expect("restore");
    assert_eq!(errno(session.restore(1)), Errno::ADDRINUSE);
    assert_eq!(contents(&restored), b"db");
}

#[test]
fn a_memfd_resized_after_the_freeze_fails_to_restore_with_eio() {
    let d = Luod::start();
    let device = d.luo();
    let session = device.create_session("db").expect("create");
    let resized = memfd("luo-test", &[7; 4096]);
    let untouched = memfd("luo-test", &[8; 4096]);
    session.preserve(&resized, 1).expect("preserve");
    session.preserve(&untouched, 2).expect("preserve");
    d.prepare_and_update();
    // Our own fd still reaches the file the daemon froze.
    rustix::fs::ftruncate(&resized, 8192).expect("grow after the freeze");

    let device = d.luo();
    let session = device.retrieve_session("db").expect("retrieve");
    assert_eq!(errno(session.restore(1)), Errno::IO);
    let restored = session.restore(2).expect("the untouched file restores");
    assert_eq!(contents(&restored), [8; 4096]);
}

// ----- the flows of the kernel's selftests -------------------------------------

#[test]
fn a_session_with_a_memfd_prepares_and_cancels_back_to_normal() {
    let d = Luod::start();
    let device = d.luo();
    let (session, memory) = session_with_memfd(&device, "flow");
    assert_eq!(session.state().expect("state"), State::Normal);
    session.set_event(Event::Prepare).expect("prepare");
    assert_eq!(session.state().expect("state"), State::Prepared);
    // Per-session events leave the global state alone.
    assert_eq!(device.state().expect("state"), State::Normal);
    session.set_event(Event::Cancel).expect("cancel");
    assert_eq!(session.state().expect("state"), State::Normal);
    assert_eq!(device.state().expect("state"), State::Normal);
    assert_eq!(d.status().preserved_files, 1);
    assert_eq!(contents(&memory), b"flow");
}

#[test]
fn a_session_with_a_memfd_prepares_freezes_and_cancels_back_to_normal() {
    let d = Luod::start();
    let device = d.luo();
    let (session, memory) = session_with_memfd(&device, "flow");
    session.set_event(Event::Prepare).expect("prepare");
    assert_eq!(session.state().expect("state"), State::Prepared);
    session.set_event(Event::Freeze).expect("freeze");
    assert_eq!(session.state().expect("state"), State::Frozen);
    assert_eq!(device.state().expect("state"), State::Normal);
    session.set_event(Event::Cancel).expect("cancel");
    assert_eq!(session.state().expect("state"), State::Normal);
    // Cancelled, the session takes changes again.
    session
        .preserve(memfd("luo-test", b"more"), 2)
        .expect("preserve after cancel");
    assert_eq!(d.status().preserved_files, 2);
    assert_eq!(contents(&memory), b"flow");
}

#[test]
fn global_prepare_and_cancel_move_every_session_together() {
    let d = Luod::start();
    let device = d.luo();
    let sessions: Vec<(Session, OwnedFd)> = ["one", "two", "three"]
        .iter()
        .map(|name| session_with_memfd(&device, name))
        .collect();
    let states = |sessions: &[(Session, OwnedFd)]| -> Vec<State> {
        sessions
            .iter()
            .map(|(s, _)| s.state().expect("state"))
            .collect()
    };
    assert_eq!(device.state().expect("state"), State::Normal);
    assert_eq!(states(&sessions), [State::Normal; 3]);

    device.set_event(Event::Prepare).expect("global prepare");
    assert_eq!(device.state().expect("state"), State::Prepared);
    assert_eq!(states(&sessions), [State::Prepared; 3]);

    device.set_event(Event::Cancel).expect("global cancel");
    assert_eq!(device.state().expect("state"), State::Normal);
    assert_eq!(states(&sessions), [State::Normal; 3]);
    assert_eq!(d.status().preserved_files, 3);
}

// ----- SPEC §3.1: decoding, the same for every command --------------------------

/// Every device command with a well-formed struct.
fn device_commands() -> Vec<(u32, Vec<u8>)> {
    let name = name_field("t").expect("name");
    let mut retrieve_name = [0u8; 64];
    retrieve_name[0] = b't';
    vec![
        (
            LIVEUPDATE_IOCTL_GET_STATE,
            IoctlGetState::default().as_bytes().to_vec(),
        ),
        (
            LIVEUPDATE_IOCTL_SET_EVENT,
            IoctlSetEvent::default().as_bytes().to_vec(),
        ),
        (
            LIVEUPDATE_IOCTL_CREATE_SESSION,
            IoctlCreateSession {
                name,
                ..Default::default()
            }
            .as_bytes()
            .to_vec(),
        ),
        (
            LIVEUPDATE_IOCTL_RETRIEVE_SESSION,
            IoctlRetrieveSession {
                name: retrieve_name,
                ..Default::default()
            }
            .as_bytes()
            .to_vec(),
        ),
    ]
}

/// Every session command with a well-formed struct.
fn session_commands() -> Vec<(u32, Vec<u8>)> {
    vec![
        (
            LIVEUPDATE_SESSION_PRESERVE_FD,
            SessionPreserveFd {
                token: 9,
                ..Default::default()
            }
            .as_bytes()
            .to_vec(),
        ),
        (
            LIVEUPDATE_SESSION_UNPRESERVE_FD,
            SessionUnpreserveFd {
                token: 1,
                ..Default::default()
            }
            .as_bytes()
            .to_vec(),
        ),
        (
            LIVEUPDATE_SESSION_RESTORE_FD,
            SessionRestoreFd {
                token: 1,
                ..Default::default()
            }
            .as_bytes()
            .to_vec(),
        ),
        (
            LIVEUPDATE_SESSION_GET_STATE,
            SessionGetState::default().as_bytes().to_vec(),
        ),
        (
            LIVEUPDATE_SESSION_SET_EVENT,
            SessionSetEvent::default().as_bytes().to_vec(),
        ),
    ]
}

/// A refused command changed nothing: one session, NORMAL, still holding token 1.
fn assert_untouched(d: &Luod, device: &Device, session: &Session) {
    assert_eq!(device.state().expect("state"), State::Normal);
    assert_eq!(session.state().expect("state"), State::Normal);
    let status = d.status();
    assert_eq!(status.sessions.len(), 1, "{status:#?}");
    assert_eq!(status.preserved_files, 1, "{status:#?}");
}

fn with_size(mut bytes: Vec<u8>, size: usize) -> Vec<u8> {
    bytes.resize(size, 0);
    bytes[..4].copy_from_slice(&u32::try_from(size).expect("size").to_ne_bytes());
    bytes
}

#[test]
fn a_command_number_outside_the_table_is_einval() {
    let d = Luod::start();
    let device = d.luo();
    let (session, _memory) = session_with_memfd(&device, "t");
    let payload = IoctlGetState::default().as_bytes().to_vec();
    // The number is checked before the type byte: 0xBB04 is EINVAL, not ENOTTY.
    for cmd in [
        io(0xBA, 0x04),
        io(0xBA, 0x3F),
        io(0xBA, 0x40),
        io(0xBA, 0x44),
        io(0xBA, 0xFF),
        io(0xBB, 0x04),
    ] {
        let mut buf = payload.clone();
        assert_eq!(
            errno(device.raw_ioctl(cmd, &mut buf)),
            Errno::INVAL,
            "device {cmd:#x}"
        );
    }
    for cmd in [
        io(0xBA, 0x00),
        io(0xBA, 0x03),
        io(0xBA, 0x3F),
        io(0xBA, 0x45),
        io(0xBA, 0xFF),
        io(0xBB, 0x45),
    ] {
        let mut buf = payload.clone();
        assert_eq!(
            errno(session.raw_ioctl(cmd, &mut buf)),
            Errno::INVAL,
            "session {cmd:#x}"
        );
    }
    assert_untouched(&d, &device, &session);
}

#[test]
fn a_foreign_type_byte_or_direction_is_enotty() {
    let d = Luod::start();
    let device = d.luo();
    let (session, _memory) = session_with_memfd(&device, "t");
    let variants = |cmd: u32, len: usize| {
        let nr = luo_uapi::ioctl::nr(cmd);
        [
            io(0xBB, nr),
            io(0xAB, nr),
            iowr(0xBA, nr, u32::try_from(len).expect("len")),
        ]
    };
    for (cmd, payload) in device_commands() {
        for wrong in variants(cmd, payload.len()) {
            let mut buf = payload.clone();
            assert_eq!(
                errno(device.raw_ioctl(wrong, &mut buf)),
                Errno::NOTTY,
                "device {cmd:#x} as {wrong:#x}"
            );
        }
    }
    for (cmd, payload) in session_commands() {
        for wrong in variants(cmd, payload.len()) {
            let mut buf = payload.clone();
            assert_eq!(
                errno(session.raw_ioctl(wrong, &mut buf)),
                Errno::NOTTY,
                "session {cmd:#x} as {wrong:#x}"
            );
        }
    }
    assert_untouched(&d, &device, &session);
}

#[test]
fn a_size_below_the_minimum_is_einval() {
    let d = Luod::start();
    let device = d.luo();
    let (session, _memory) = session_with_memfd(&device, "t");
    for (cmd, payload) in device_commands() {
        for size in [4, payload.len() - 1] {
            let mut buf = with_size(payload.clone(), size);
            assert_eq!(
                errno(device.raw_ioctl(cmd, &mut buf)),
                Errno::INVAL,
                "device {cmd:#x} size {size}"
            );
        }
    }
    for (cmd, payload) in session_commands() {
        for size in [4, payload.len() - 1] {
            let mut buf = with_size(payload.clone(), size);
            assert_eq!(
                errno(session.raw_ioctl(cmd, &mut buf)),
                Errno::INVAL,
                "session {cmd:#x} size {size}"
            );
        }
    }
    assert_untouched(&d, &device, &session);
}

#[test]
fn a_non_zero_tail_is_e2big_and_a_zero_tail_is_ignored() {
    let d = Luod::start();
    let device = d.luo();
    let (session, _memory) = session_with_memfd(&device, "t");
    for (cmd, payload) in device_commands() {
        for (size, at) in [(payload.len() + 1, payload.len()), (4096, 4095)] {
            let mut buf = with_size(payload.clone(), size);
            buf[at] = 1;
            assert_eq!(
                errno(device.raw_ioctl(cmd, &mut buf)),
                Errno::TOOBIG,
                "device {cmd:#x} size {size}"
            );
        }
    }
    for (cmd, payload) in session_commands() {
        for (size, at) in [(payload.len() + 1, payload.len()), (4096, 4095)] {
            let mut buf = with_size(payload.clone(), size);
            buf[at] = 1;
            assert_eq!(
                errno(session.raw_ioctl(cmd, &mut buf)),
                Errno::TOOBIG,
                "session {cmd:#x} size {size}"
            );
        }
    }
    assert_untouched(&d, &device, &session);

    // A larger struct whose extra bytes are zero is served, up to 4096 bytes.
    for size in [12, 4096] {
        let mut buf = with_size(IoctlGetState::default().as_bytes().to_vec(), size);
        assert!(
            device
                .raw_ioctl(LIVEUPDATE_IOCTL_GET_STATE, &mut buf)
                .expect("device GET_STATE")
                .is_none()
        );
        assert_eq!(buf[4..8], (State::Normal as u32).to_ne_bytes(), "{size}");
        let mut buf = with_size(SessionGetState::default().as_bytes().to_vec(), size);
        session
            .raw_ioctl(LIVEUPDATE_SESSION_GET_STATE, &mut buf)
            .expect("session GET_STATE");
        assert_eq!(buf[8..12], (State::Normal as u32).to_ne_bytes(), "{size}");
    }
}

#[test]
fn non_zero_reserved_fields_are_eopnotsupp() {
    let d = Luod::start();
    let device = d.luo();
    let (session, _memory) = session_with_memfd(&device, "t");
    let mut buf = SessionUnpreserveFd {
        reserved: 1,
        token: 1,
        ..Default::default()
    }
    .as_bytes()
    .to_vec();
    assert_eq!(
        errno(session.raw_ioctl(LIVEUPDATE_SESSION_UNPRESERVE_FD, &mut buf)),
        Errno::OPNOTSUPP
    );
    for reserved in [[1, 0, 0], [0, 1, 0], [0, 0, 0x80]] {
        let mut buf = SessionGetState {
            reserved,
            ..Default::default()
        }
        .as_bytes()
        .to_vec();
        assert_eq!(
            errno(session.raw_ioctl(LIVEUPDATE_SESSION_GET_STATE, &mut buf)),
            Errno::OPNOTSUPP,
            "{reserved:?}"
        );
    }
    assert_untouched(&d, &device, &session);
    // `incoming` is not reserved: it is ignored.
    let mut buf = SessionGetState {
        incoming: 1,
        ..Default::default()
    }
    .as_bytes()
    .to_vec();
    session
        .raw_ioctl(LIVEUPDATE_SESSION_GET_STATE, &mut buf)
        .expect("incoming is ignored");
    assert_eq!(buf[8..12], (State::Normal as u32).to_ne_bytes());
}
