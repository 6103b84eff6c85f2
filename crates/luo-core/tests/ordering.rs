//! Order is part of the contract (SPEC §6, §11.3): prepare and freeze run in
//! preservation order (not token order), cancel, finish and unpreserve in reverse.

mod common;

use common::*;
use luo_core::{Orchestrator, SessionId};
use luo_uapi::rfc_v4::Event;

/// A session whose tokens are deliberately not in preservation order.
fn session(o: &mut Orchestrator) -> (SessionId, Vec<u64>) {
    let id = o.create_session("s", ROOT).expect("create");
    let mut inos = Vec::new();
    for token in [30u64, 10, 20] {
        let fd = efd();
        inos.push(ino(&fd));
        o.preserve_fd(id, token, Some(fd), ROOT).expect("preserve");
    }
    (id, inos)
}

fn log_of(h: &RecordingHandler, op: &str) -> Vec<u64> {
    h.take_log()
        .into_iter()
        .filter(|(o, _)| *o == op)
        .map(|(_, i)| i)
        .collect()
}

fn reversed(v: &[u64]) -> Vec<u64> {
    v.iter().rev().copied().collect()
}

#[test]
fn prepare_and_freeze_are_fifo() {
    let (mut o, h) = orchestrator();
    let (id, inos) = session(&mut o);
    h.take_log();
    o.session_event(id, Event::Prepare as u32, ROOT)
        .expect("prepare");
    assert_eq!(log_of(&h, "prepare"), inos);
    o.session_event(id, Event::Freeze as u32, ROOT)
        .expect("freeze");
    assert_eq!(log_of(&h, "freeze"), inos);
}

#[test]
fn cancel_is_lifo_and_unfreezes_first() {
    let (mut o, h) = orchestrator();
    let (id, inos) = session(&mut o);
    o.session_event(id, Event::Prepare as u32, ROOT)
        .expect("prepare");
    o.session_event(id, Event::Freeze as u32, ROOT)
        .expect("freeze");
    h.take_log();
    o.session_event(id, Event::Cancel as u32, ROOT)
        .expect("cancel");
    let log = h.take_log();
    let want: Vec<_> = reversed(&inos)
        .into_iter()
        .map(|i| ("unfreeze", i))
        .chain(reversed(&inos).into_iter().map(|i| ("cancel", i)))
        .collect();
    assert_eq!(log, want);
}

#[test]
fn unpreserve_on_release_is_lifo() {
    let (mut o, h) = orchestrator();
    let (id, inos) = session(&mut o);
    h.take_log();
    o.release_session(id);
    assert_eq!(log_of(&h, "unpreserve"), reversed(&inos));
}

#[test]
fn finish_is_lifo_and_tells_reclaimed_files_apart() {
    let (mut o, h) = orchestrator();
    let (_, inos) = session(&mut o);
    o.set_event(Event::Prepare as u32).expect("prepare");
    let mut o = live_update(o);
    let id = o.retrieve_session("s", ROOT).expect("retrieve");
    let _restored = o.restore_fd(id, 10, ROOT).expect("restore token 10");
    h.take_log();
    o.session_event(id, Event::Finish as u32, ROOT)
        .expect("finish");
    let log = h.take_log();
    let finishes: Vec<_> = log
        .iter()
        .filter(|(op, _)| op.starts_with("finish"))
        .copied()
        .collect();
    assert_eq!(
        finishes,
        [
            ("finish", inos[2]),
            ("finish-reclaimed", inos[1]),
            ("finish", inos[0])
        ],
        "reverse preservation order; only token 10 was reclaimed"
    );
    // The unreclaimed files are dropped, in reverse, and token 10 stays preserved.
    let unpreserved: Vec<_> = log
        .iter()
        .filter(|(op, _)| *op == "unpreserve")
        .map(|&(_, i)| i)
        .collect();
    assert_eq!(unpreserved, [inos[2], inos[0]]);
    let tokens: Vec<_> = o
        .session(id)
        .map(|s| s.files().iter().map(|f| f.token()).collect())
        .unwrap_or_default();
    assert_eq!(tokens, [10]);
}

#[test]
fn the_update_carries_files_in_preservation_order() {
    let (mut o, _) = orchestrator();
    session(&mut o);
    o.set_event(Event::Prepare as u32).expect("prepare");
    let o = live_update(o);
    let tokens: Vec<_> = o
        .sessions()
        .flat_map(|s| s.files().iter().map(|f| f.token()))
        .collect();
    assert_eq!(tokens, [30, 10, 20]);
}
