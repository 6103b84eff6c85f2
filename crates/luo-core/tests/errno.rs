//! One test per errno row of SPEC §4, §5 and §6, each also checking that a refused
//! call changed nothing. The deliberate departures of SPEC §11 are pinned here too.

mod common;

use common::*;
use luo_core::{Error, Limits, Orchestrator, SessionId, State};
use luo_uapi::Errno;
use luo_uapi::rfc_v4::Event;

type Snapshot = (State, Vec<(String, u32, State, Vec<u64>)>, usize);

fn snapshot(o: &Orchestrator) -> Snapshot {
    let sessions = o
        .sessions()
        .map(|s| {
            (
                s.name().to_owned(),
                s.owner(),
                s.state(),
                s.files().iter().map(|f| f.token()).collect(),
            )
        })
        .collect();
    (o.state(), sessions, o.preserved_count())
}

/// Assert `f` fails with `errno` and leaves the orchestrator as it was.
fn refused<T: std::fmt::Debug>(
    o: &mut Orchestrator,
    errno: Errno,
    f: impl FnOnce(&mut Orchestrator) -> Result<T, Error>,
) {
    let before = snapshot(o);
    let err = f(o).expect_err("call should fail");
    assert_eq!(err.errno(), errno, "{err}");
    assert_eq!(snapshot(o), before, "a refused call changed state");
}

fn session_with_file(o: &mut Orchestrator, name: &str, token: u64) -> SessionId {
    let id = o.create_session(name, ROOT).expect("create");
    o.preserve_fd(id, token, Some(efd()), ROOT)
        .expect("preserve");
    id
}

/// An orchestrator after a live update carrying session "in" with tokens 1 and 2.
fn updated() -> (Orchestrator, std::sync::Arc<RecordingHandler>) {
    let (mut o, h) = orchestrator();
    let id = session_with_file(&mut o, "in", 1);
    o.preserve_fd(id, 2, Some(efd()), ROOT).expect("preserve");
    o.set_event(Event::Prepare as u32).expect("prepare");
    (live_update(o), h)
}

// ----- §4 global state machine -----------------------------------------------------

#[test]
fn global_unknown_event_is_einval() {
    let (mut o, _) = orchestrator();
    refused(&mut o, Errno::INVAL, |o| o.set_event(4));
}

#[test]
fn global_freeze_is_eopnotsupp() {
    let (mut o, _) = orchestrator();
    refused(&mut o, Errno::OPNOTSUPP, |o| {
        o.set_event(Event::Freeze as u32)
    });
    o.set_event(Event::Prepare as u32).expect("prepare");
    refused(&mut o, Errno::OPNOTSUPP, |o| {
        o.set_event(Event::Freeze as u32)
    });
}

#[test]
fn global_prepare_twice_is_einval() {
    let (mut o, _) = orchestrator();
    o.set_event(Event::Prepare as u32).expect("prepare");
    refused(&mut o, Errno::INVAL, |o| o.set_event(Event::Prepare as u32));
}

#[test]
fn global_cancel_in_normal_is_einval() {
    let (mut o, _) = orchestrator();
    refused(&mut o, Errno::INVAL, |o| o.set_event(Event::Cancel as u32));
}

#[test]
fn global_finish_outside_updated_is_einval() {
    let (mut o, _) = orchestrator();
    refused(&mut o, Errno::INVAL, |o| o.set_event(Event::Finish as u32));
    o.set_event(Event::Prepare as u32).expect("prepare");
    refused(&mut o, Errno::INVAL, |o| o.set_event(Event::Finish as u32));
}

#[test]
fn global_prepare_reaches_every_normal_session_and_cancel_undoes_it() {
    let (mut o, _) = orchestrator();
    let a = session_with_file(&mut o, "a", 1);
    let b = session_with_file(&mut o, "b", 1);
    o.session_event(a, Event::Prepare as u32, ROOT)
        .expect("prepare a alone");
    o.set_event(Event::Prepare as u32).expect("global prepare");
    assert_eq!(o.state(), State::Prepared);
    assert_eq!(o.session(b).map(|s| s.state()), Some(State::Prepared));
    o.set_event(Event::Cancel as u32).expect("global cancel");
    assert_eq!(o.state(), State::Normal);
    assert!(o.sessions().all(|s| s.state() == State::Normal));
}

#[test]
fn global_finish_drops_unretrieved_sessions_and_closes_their_fds() {
    let (mut o, _) = orchestrator();
    session_with_file(&mut o, "kept", 1);
    session_with_file(&mut o, "lost", 1);
    o.set_event(Event::Prepare as u32).expect("prepare");
    let mut o = live_update(o);
    assert_eq!(o.state(), State::Updated);
    assert_eq!(o.preserved_count(), 2);
    let kept = o.retrieve_session("kept", ROOT).expect("retrieve");
    let fd = o.restore_fd(kept, 1, ROOT).expect("restore");
    o.set_event(Event::Finish as u32).expect("finish");
    assert_eq!(o.state(), State::Normal);
    let names: Vec<_> = o.sessions().map(|s| s.name().to_owned()).collect();
    assert_eq!(names, ["kept"]);
    // The restored file rides on (continuous preservation, SPEC §5 FINISH).
    assert_eq!(o.preserved_count(), 1);
    assert_eq!(o.session(kept).map(|s| s.state()), Some(State::Normal));
    drop(fd);
}

// ----- §5 sessions ------------------------------------------------------------------

#[test]
fn create_in_prepared_is_eagain() {
    let (mut o, _) = orchestrator();
    o.set_event(Event::Prepare as u32).expect("prepare");
    refused(&mut o, Errno::AGAIN, |o| o.create_session("late", ROOT));
}

#[test]
fn create_in_frozen_is_eagain() {
    let (mut o, _) = orchestrator();
    o.set_event(Event::Prepare as u32).expect("prepare");
    let _freeze = o.freeze_for_update().expect("freeze");
    refused(&mut o, Errno::AGAIN, |o| o.create_session("late", ROOT));
}

#[test]
fn create_in_updated_is_allowed() {
    let (mut o, _) = updated();
    let id = o.create_session("fresh", ROOT).expect("create in updated");
    assert_eq!(o.session(id).map(|s| s.state()), Some(State::Normal));
}

#[test]
fn create_with_empty_name_is_einval() {
    let (mut o, _) = orchestrator();
    refused(&mut o, Errno::INVAL, |o| o.create_session("", ROOT));
}

#[test]
fn create_with_56_byte_name_is_einval_not_truncated() {
    let (mut o, _) = orchestrator();
    refused(&mut o, Errno::INVAL, |o| {
        o.create_session(&"n".repeat(56), ROOT)
    });
    o.create_session(&"n".repeat(55), ROOT)
        .expect("55 bytes fit");
}

#[test]
fn create_duplicate_is_eexist() {
    let (mut o, _) = orchestrator();
    o.create_session("dup", ROOT).expect("create");
    refused(&mut o, Errno::EXIST, |o| o.create_session("dup", ALICE));
}

#[test]
fn create_with_an_incoming_sessions_name_is_eexist() {
    // SPEC §11.4: the seed's code could panic here.
    let (mut o, _) = updated();
    refused(&mut o, Errno::EXIST, |o| o.create_session("in", ROOT));
}

#[test]
fn create_past_the_per_uid_limit_is_enospc() {
    let (mut o, _) = orchestrator_with(Limits {
        sessions_per_uid: 2,
        ..Limits::default()
    });
    o.create_session("a1", ALICE).expect("1");
    o.create_session("a2", ALICE).expect("2");
    refused(&mut o, Errno::NOSPC, |o| o.create_session("a3", ALICE));
    o.create_session("b1", BOB)
        .expect("another uid has its own budget");
}

#[test]
fn name_is_free_again_after_release() {
    let (mut o, _) = orchestrator();
    let id = o.create_session("again", ROOT).expect("create");
    o.release_session(id);
    o.create_session("again", ROOT).expect("recreate");
}

#[test]
fn retrieve_outside_updated_is_eagain() {
    let (mut o, _) = orchestrator();
    o.create_session("x", ROOT).expect("create");
    refused(&mut o, Errno::AGAIN, |o| o.retrieve_session("x", ROOT));
}

#[test]
fn retrieve_unknown_is_enoent() {
    let (mut o, _) = updated();
    refused(&mut o, Errno::NOENT, |o| o.retrieve_session("nope", ROOT));
}

#[test]
fn retrieve_of_an_outgoing_session_is_enoent() {
    let (mut o, _) = updated();
    o.create_session("out", ROOT).expect("create");
    refused(&mut o, Errno::NOENT, |o| o.retrieve_session("out", ROOT));
}

#[test]
fn retrieve_twice_is_eaddrinuse() {
    let (mut o, _) = updated();
    o.retrieve_session("in", ROOT).expect("first");
    refused(&mut o, Errno::ADDRINUSE, |o| o.retrieve_session("in", ROOT));
}

#[test]
fn retrieve_by_another_uid_is_eacces() {
    let (mut o, _) = orchestrator();
    let id = o.create_session("alice", ALICE).expect("create");
    o.preserve_fd(id, 1, Some(efd()), ALICE).expect("preserve");
    o.set_event(Event::Prepare as u32).expect("prepare");
    let mut o = live_update(o);
    refused(&mut o, Errno::ACCESS, |o| o.retrieve_session("alice", BOB));
    o.retrieve_session("alice", ROOT).expect("root may");
}

#[test]
fn session_ops_by_another_uid_are_eacces() {
    let (mut o, _) = orchestrator();
    let id = o.create_session("alice", ALICE).expect("create");
    refused(&mut o, Errno::ACCESS, |o| o.session_state(id, BOB));
    refused(&mut o, Errno::ACCESS, |o| {
        o.session_event(id, Event::Prepare as u32, BOB)
    });
    refused(&mut o, Errno::ACCESS, |o| {
        o.preserve_fd(id, 1, Some(efd()), BOB)
    });
    refused(&mut o, Errno::ACCESS, |o| o.unpreserve_fd(id, 1, BOB));
    refused(&mut o, Errno::ACCESS, |o| o.restore_fd(id, 1, BOB));
    assert_eq!(o.session_state(id, ROOT), Ok(State::Normal));
}

#[test]
fn released_session_handle_is_ebadf() {
    let (mut o, _) = orchestrator();
    let id = o.create_session("gone", ROOT).expect("create");
    o.release_session(id);
    refused(&mut o, Errno::BADF, |o| o.session_state(id, ROOT));
}

#[test]
fn session_prepare_twice_is_ebusy() {
    let (mut o, _) = orchestrator();
    let id = o.create_session("s", ROOT).expect("create");
    o.session_event(id, Event::Prepare as u32, ROOT)
        .expect("prepare");
    refused(&mut o, Errno::BUSY, |o| {
        o.session_event(id, Event::Prepare as u32, ROOT)
    });
}

#[test]
fn session_freeze_from_normal_is_ebusy() {
    let (mut o, _) = orchestrator();
    let id = o.create_session("s", ROOT).expect("create");
    refused(&mut o, Errno::BUSY, |o| {
        o.session_event(id, Event::Freeze as u32, ROOT)
    });
}

#[test]
fn session_freeze_twice_is_ebusy() {
    let (mut o, _) = orchestrator();
    let id = o.create_session("s", ROOT).expect("create");
    o.session_event(id, Event::Prepare as u32, ROOT)
        .expect("prepare");
    o.session_event(id, Event::Freeze as u32, ROOT)
        .expect("freeze");
    refused(&mut o, Errno::BUSY, |o| {
        o.session_event(id, Event::Freeze as u32, ROOT)
    });
}

#[test]
fn session_cancel_and_finish_out_of_place_are_silent_noops() {
    let (mut o, h) = orchestrator();
    let id = session_with_file(&mut o, "s", 1);
    h.take_log();
    let before = snapshot(&o);
    o.session_event(id, Event::Cancel as u32, ROOT)
        .expect("cancel in normal");
    o.session_event(id, Event::Finish as u32, ROOT)
        .expect("finish in normal");
    assert_eq!(snapshot(&o), before);
    assert!(h.take_log().is_empty(), "no handler was called");
}

#[test]
fn session_unknown_event_is_einval() {
    let (mut o, _) = orchestrator();
    let id = o.create_session("s", ROOT).expect("create");
    refused(&mut o, Errno::INVAL, |o| o.session_event(id, 9, ROOT));
}

#[test]
fn session_flow_prepare_freeze_cancel() {
    let (mut o, _) = orchestrator();
    let id = session_with_file(&mut o, "s", 1);
    for (event, want) in [
        (Event::Prepare, State::Prepared),
        (Event::Freeze, State::Frozen),
        (Event::Cancel, State::Normal),
    ] {
        o.session_event(id, event as u32, ROOT).expect("event");
        assert_eq!(o.session_state(id, ROOT), Ok(want));
    }
}

#[test]
fn release_of_a_prepared_session_cancels_then_unpreserves() {
    let (mut o, h) = orchestrator();
    let id = session_with_file(&mut o, "s", 1);
    o.session_event(id, Event::Prepare as u32, ROOT)
        .expect("prepare");
    h.take_log();
    o.release_session(id);
    let ops: Vec<_> = h.take_log().into_iter().map(|(op, _)| op).collect();
    assert_eq!(ops, ["cancel", "unpreserve"]);
    assert_eq!(o.preserved_count(), 0);
    assert_eq!(o.sessions().count(), 0);
}

#[test]
fn release_of_an_updated_session_finishes() {
    let (mut o, h) = updated();
    let id = o.retrieve_session("in", ROOT).expect("retrieve");
    let _fd = o.restore_fd(id, 1, ROOT).expect("restore");
    h.take_log();
    o.release_session(id);
    let ops: Vec<_> = h.take_log().into_iter().map(|(op, _)| op).collect();
    // Reverse order: token 2 (never restored) first.
    assert_eq!(
        ops,
        ["finish", "finish-reclaimed", "unpreserve", "unpreserve"]
    );
    assert_eq!(o.preserved_count(), 0);
}

// ----- §6 preserved files -----------------------------------------------------------

#[test]
fn preserve_in_global_prepared_is_ebusy() {
    let (mut o, _) = orchestrator();
    let id = o.create_session("s", ROOT).expect("create");
    o.set_event(Event::Prepare as u32).expect("prepare");
    refused(&mut o, Errno::BUSY, |o| {
        o.preserve_fd(id, 1, Some(efd()), ROOT)
    });
}

#[test]
fn preserve_in_a_prepared_session_is_ebusy() {
    let (mut o, _) = orchestrator();
    let id = o.create_session("s", ROOT).expect("create");
    o.session_event(id, Event::Prepare as u32, ROOT)
        .expect("prepare");
    refused(&mut o, Errno::BUSY, |o| {
        o.preserve_fd(id, 1, Some(efd()), ROOT)
    });
}

#[test]
fn preserve_into_an_incoming_session_before_finish_is_ebusy() {
    let (mut o, _) = updated();
    let id = o.retrieve_session("in", ROOT).expect("retrieve");
    refused(&mut o, Errno::BUSY, |o| {
        o.preserve_fd(id, 9, Some(efd()), ROOT)
    });
    o.session_event(id, Event::Finish as u32, ROOT)
        .expect("finish");
    o.preserve_fd(id, 9, Some(efd()), ROOT)
        .expect("after FINISH the session is NORMAL");
}

#[test]
fn preserve_without_an_fd_is_ebadf() {
    let (mut o, _) = orchestrator();
    let id = o.create_session("s", ROOT).expect("create");
    refused(&mut o, Errno::BADF, |o| o.preserve_fd(id, 1, None, ROOT));
}

#[test]
fn preserve_of_an_unsupported_file_is_enoent() {
    let (mut o, _) = orchestrator();
    let id = o.create_session("s", ROOT).expect("create");
    let null = std::fs::File::open("/dev/null").expect("open /dev/null");
    refused(&mut o, Errno::NOENT, |o| {
        o.preserve_fd(id, 1, Some(null.into()), ROOT)
    });
}

#[test]
fn preserve_of_a_reserved_file_is_enoent() {
    let (mut o, _) = orchestrator();
    let id = o.create_session("s", ROOT).expect("create");
    let fd = efd();
    o.reserve_file(luo_core::FileKey::of(std::os::fd::AsFd::as_fd(&fd)).expect("key"));
    refused(&mut o, Errno::NOENT, |o| {
        o.preserve_fd(id, 1, Some(fd), ROOT)
    });
}

#[test]
fn preserve_of_a_used_token_is_eexist() {
    let (mut o, _) = orchestrator();
    let id = session_with_file(&mut o, "s", 7);
    refused(&mut o, Errno::EXIST, |o| {
        o.preserve_fd(id, 7, Some(efd()), ROOT)
    });
}

#[test]
fn preserve_of_the_same_file_twice_is_ebusy() {
    // SPEC §11.6: a dup of an already preserved file, in any session.
    let (mut o, _) = orchestrator();
    let a = o.create_session("a", ROOT).expect("create");
    let b = o.create_session("b", ROOT).expect("create");
    let fd = efd();
    let dup = fd.try_clone().expect("dup");
    o.preserve_fd(a, 1, Some(fd), ROOT).expect("preserve");
    refused(&mut o, Errno::BUSY, |o| {
        o.preserve_fd(b, 2, Some(dup.try_clone().expect("dup")), ROOT)
    });
    refused(&mut o, Errno::BUSY, |o| {
        o.preserve_fd(a, 2, Some(dup), ROOT)
    });
}

#[test]
fn preserve_past_the_per_session_limit_is_enospc() {
    let (mut o, _) = orchestrator_with(Limits {
        files_per_session: 2,
        ..Limits::default()
    });
    let id = session_with_file(&mut o, "s", 1);
    o.preserve_fd(id, 2, Some(efd()), ROOT).expect("2");
    refused(&mut o, Errno::NOSPC, |o| {
        o.preserve_fd(id, 3, Some(efd()), ROOT)
    });
}

#[test]
fn preserve_past_the_total_limit_is_enospc() {
    let (mut o, _) = orchestrator_with(Limits {
        files_total: 2,
        ..Limits::default()
    });
    session_with_file(&mut o, "a", 1);
    let b = session_with_file(&mut o, "b", 1);
    refused(&mut o, Errno::NOSPC, |o| {
        o.preserve_fd(b, 2, Some(efd()), ROOT)
    });
}

#[test]
fn preserve_failing_in_the_handler_returns_its_errno() {
    let (mut o, h) = orchestrator();
    let id = o.create_session("s", ROOT).expect("create");
    h.fail_at("preserve", 0);
    refused(&mut o, Errno::IO, |o| {
        o.preserve_fd(id, 1, Some(efd()), ROOT)
    });
}

#[test]
fn tokens_zero_and_max_are_valid() {
    let (mut o, _) = orchestrator();
    let id = o.create_session("s", ROOT).expect("create");
    o.preserve_fd(id, 0, Some(efd()), ROOT).expect("token 0");
    o.preserve_fd(id, u64::MAX, Some(efd()), ROOT)
        .expect("token max");
}

#[test]
fn unpreserve_in_a_prepared_session_is_ebusy() {
    let (mut o, _) = orchestrator();
    let id = session_with_file(&mut o, "s", 1);
    o.session_event(id, Event::Prepare as u32, ROOT)
        .expect("prepare");
    refused(&mut o, Errno::BUSY, |o| o.unpreserve_fd(id, 1, ROOT));
}

#[test]
fn unpreserve_in_global_prepared_is_ebusy() {
    let (mut o, _) = orchestrator();
    let id = session_with_file(&mut o, "s", 1);
    o.set_event(Event::Prepare as u32).expect("prepare");
    o.session_event(id, Event::Cancel as u32, ROOT)
        .expect("cancel the session alone");
    refused(&mut o, Errno::BUSY, |o| o.unpreserve_fd(id, 1, ROOT));
}

#[test]
fn unpreserve_of_an_unknown_token_is_enoent() {
    let (mut o, _) = orchestrator();
    let id = session_with_file(&mut o, "s", 1);
    refused(&mut o, Errno::NOENT, |o| o.unpreserve_fd(id, 2, ROOT));
}

#[test]
fn unpreserve_frees_the_file_for_preserving_again() {
    let (mut o, _) = orchestrator();
    let id = o.create_session("s", ROOT).expect("create");
    let fd = efd();
    o.preserve_fd(id, 1, Some(fd.try_clone().expect("dup")), ROOT)
        .expect("preserve");
    o.unpreserve_fd(id, 1, ROOT).expect("unpreserve");
    assert_eq!(o.preserved_count(), 0);
    o.preserve_fd(id, 1, Some(fd), ROOT)
        .expect("preserve again");
}

#[test]
fn restore_before_the_update_is_ebusy() {
    let (mut o, _) = orchestrator();
    let id = session_with_file(&mut o, "s", 1);
    refused(&mut o, Errno::BUSY, |o| o.restore_fd(id, 1, ROOT));
}

#[test]
fn restore_after_the_session_finished_is_ebusy() {
    let (mut o, _) = updated();
    let id = o.retrieve_session("in", ROOT).expect("retrieve");
    o.session_event(id, Event::Finish as u32, ROOT)
        .expect("finish");
    refused(&mut o, Errno::BUSY, |o| o.restore_fd(id, 1, ROOT));
}

#[test]
fn restore_of_an_unknown_token_is_enoent() {
    let (mut o, _) = updated();
    let id = o.retrieve_session("in", ROOT).expect("retrieve");
    refused(&mut o, Errno::NOENT, |o| o.restore_fd(id, 3, ROOT));
}

#[test]
fn restore_twice_is_eaddrinuse() {
    let (mut o, _) = updated();
    let id = o.retrieve_session("in", ROOT).expect("retrieve");
    let first = o.restore_fd(id, 1, ROOT).expect("restore");
    refused(&mut o, Errno::ADDRINUSE, |o| o.restore_fd(id, 1, ROOT));
    drop(first);
}

#[test]
fn restore_failing_in_the_handler_returns_its_errno_and_can_be_retried() {
    let (mut o, h) = updated();
    let id = o.retrieve_session("in", ROOT).expect("retrieve");
    h.fail_at("retrieve", 0);
    refused(&mut o, Errno::IO, |o| o.restore_fd(id, 1, ROOT));
    o.restore_fd(id, 1, ROOT).expect("retry");
}

#[test]
fn restore_gives_the_same_open_file() {
    let (mut o, _) = orchestrator();
    let id = o.create_session("s", ROOT).expect("create");
    let fd = efd();
    rustix::io::write(&fd, &5u64.to_ne_bytes()).expect("write eventfd");
    let want = ino(&fd);
    o.preserve_fd(id, 1, Some(fd), ROOT).expect("preserve");
    o.set_event(Event::Prepare as u32).expect("prepare");
    let mut o = live_update(o);
    let id = o.retrieve_session("s", ROOT).expect("retrieve");
    let fd = o.restore_fd(id, 1, ROOT).expect("restore");
    assert_eq!(ino(&fd), want);
    let mut buf = [0u8; 8];
    rustix::io::read(&fd, &mut buf).expect("read eventfd");
    assert_eq!(u64::from_ne_bytes(buf), 5);
}

#[test]
fn a_handle_of_the_previous_epoch_is_stale() {
    let (mut o, _) = orchestrator();
    let old = session_with_file(&mut o, "alpha", 1);
    o.set_event(Event::Prepare as u32).expect("prepare");
    let mut o = live_update(o);
    refused(&mut o, Errno::BADF, |o| o.session_state(old, ROOT));
    // Closing it changes nothing either (SPEC §5: stale handles' close is a no-op).
    let before = snapshot(&o);
    o.release_session(old);
    assert_eq!(snapshot(&o), before);
}
