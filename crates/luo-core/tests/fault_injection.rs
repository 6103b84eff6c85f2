//! All-or-nothing under injected faults (SPEC §5, §7 step 1, §11.2, §11.7).
//!
//! For every position k at which a handler can fail, the call fails with the
//! handler's errno and the states, the file lists and the set of open fds of this
//! process are exactly what SPEC says they must be. One `#[test]` runs every
//! scenario in sequence: fd-set checks need no other test opening fds at the same time.

mod common;

use std::collections::BTreeMap;

use common::*;
use luo_core::{Limits, Orchestrator, SessionId, State};
use luo_uapi::Errno;
use luo_uapi::rfc_v4::Event;

const FILES: usize = 4;

/// fd number → what it points to, for every open fd of this process.
fn fd_set() -> BTreeMap<String, String> {
    // The engine's one fd for the life of the process (/proc/self/fdinfo)
    // belongs to the baseline, whichever test opened it first.
    luo_core::file_handler::warm_up();
    std::fs::read_dir("/proc/self/fd")
        .expect("read /proc/self/fd")
        .filter_map(|e| {
            let e = e.ok()?;
            let target = std::fs::read_link(e.path()).ok()?;
            Some((
                e.file_name().to_string_lossy().into_owned(),
                target.to_string_lossy().into_owned(),
            ))
        })
        .filter(|(_, target)| !target.starts_with("/proc/"))
        .collect()
}

type View = (State, Vec<(String, State, Vec<u64>)>);

fn view(o: &Orchestrator) -> View {
    let s = o.sessions().map(|s| {
        (
            s.name().to_owned(),
            s.state(),
            s.files().iter().map(|f| f.token()).collect(),
        )
    });
    (o.state(), s.collect())
}

fn session(o: &mut Orchestrator, name: &str) -> (SessionId, Vec<u64>) {
    let id = o.create_session(name, ROOT).expect("create");
    let mut inos = Vec::new();
    for t in 0..FILES as u64 {
        let fd = efd();
        inos.push(ino(&fd));
        o.preserve_fd(id, t, Some(fd), ROOT).expect("preserve");
    }
    (id, inos)
}

fn ops(log: &[Call], op: &str) -> Vec<u64> {
    log.iter()
        .filter(|(o, _)| *o == op)
        .map(|&(_, i)| i)
        .collect()
}

fn rev(v: &[u64]) -> Vec<u64> {
    v.iter().rev().copied().collect()
}

fn session_prepare_fails_at(k: usize) {
    let (mut o, h) = orchestrator();
    let (id, inos) = session(&mut o, "s");
    h.take_log();
    let before = (view(&o), fd_set());
    h.fail_at("prepare", k);
    let err = o
        .session_event(id, Event::Prepare as u32, ROOT)
        .expect_err("prepare fails");
    assert_eq!(err.errno(), Errno::IO);
    assert_eq!(
        (view(&o), fd_set()),
        before,
        "prepare failing at {k} changed something"
    );
    let log = h.take_log();
    assert_eq!(ops(&log, "prepare"), inos[..k]);
    assert_eq!(
        ops(&log, "cancel"),
        rev(&inos[..k]),
        "prepared prefix cancelled in reverse"
    );
}

fn session_freeze_fails_at(k: usize) {
    let (mut o, h) = orchestrator();
    let (id, inos) = session(&mut o, "s");
    o.session_event(id, Event::Prepare as u32, ROOT)
        .expect("prepare");
    h.take_log();
    let fds = fd_set();
    h.fail_at("freeze", k);
    let err = o
        .session_event(id, Event::Freeze as u32, ROOT)
        .expect_err("freeze fails");
    assert_eq!(err.errno(), Errno::IO);
    // SPEC §5: a failed FREEZE leaves the session NORMAL, every file cancelled.
    assert_eq!(o.session_state(id, ROOT), Ok(State::Normal));
    assert_eq!(o.session(id).map(|s| s.files().len()), Some(FILES));
    assert_eq!(fd_set(), fds);
    let log = h.take_log();
    assert_eq!(ops(&log, "freeze"), inos[..k]);
    assert_eq!(ops(&log, "unfreeze"), rev(&inos[..k]));
    assert_eq!(ops(&log, "cancel"), rev(&inos));
    let order: Vec<_> = log.iter().map(|(op, _)| *op).collect();
    let last_unfreeze = order.iter().rposition(|op| *op == "unfreeze");
    let first_cancel = order.iter().position(|op| *op == "cancel");
    assert!(
        last_unfreeze < first_cancel,
        "unfreeze before cancel: {order:?}"
    );
}

fn global_prepare_fails_in_session(j: usize) {
    let (mut o, h) = orchestrator();
    let early = o.create_session("early", ROOT).expect("create");
    o.session_event(early, Event::Prepare as u32, ROOT)
        .expect("prepared on its own");
    for i in 0..3 {
        session(&mut o, &format!("s{i}"));
    }
    h.take_log();
    let before = (view(&o), fd_set());
    // Each session has FILES files: the j-th session's second file fails.
    h.fail_at("prepare", j * FILES + 1);
    let err = o
        .set_event(Event::Prepare as u32)
        .expect_err("global prepare fails");
    assert_eq!(err.errno(), Errno::IO);
    assert_eq!(
        (view(&o), fd_set()),
        before,
        "global prepare failing in session {j}"
    );
    assert_eq!(
        o.session_state(early, ROOT),
        Ok(State::Prepared),
        "a session prepared on its own stays"
    );
    let log = h.take_log();
    assert_eq!(ops(&log, "prepare").len(), j * FILES + 1);
    assert_eq!(
        ops(&log, "cancel"),
        rev(&ops(&log, "prepare")),
        "every prepared file is cancelled, LIFO"
    );
}

fn update_freeze_fails_in_session(j: usize) {
    let (mut o, h) = orchestrator();
    for i in 0..3 {
        session(&mut o, &format!("s{i}"));
    }
    o.set_event(Event::Prepare as u32).expect("prepare");
    h.take_log();
    let fds = fd_set();
    h.fail_at("freeze", j * FILES + 2);
    let err = o.freeze_for_update().expect_err("freeze fails");
    assert_eq!(err.errno(), Errno::IO);
    // SPEC §7 step 1: frozen ones unfrozen, every session cancelled, global NORMAL.
    assert_eq!(o.state(), State::Normal);
    assert!(
        o.sessions()
            .all(|s| s.state() == State::Normal && s.files().len() == FILES)
    );
    assert_eq!(fd_set(), fds);
    let log = h.take_log();
    assert_eq!(ops(&log, "unfreeze"), rev(&ops(&log, "freeze")));
    assert_eq!(ops(&log, "cancel").len(), 3 * FILES);
}

/// Enough files, all with a local freeze: the update freezes them on several
/// threads. A failure anywhere still undoes every freeze that succeeded (on
/// whichever thread), cancels every session and returns to NORMAL; without the
/// failure, the same files all freeze.
fn parallel_freeze_fails_at(k: usize) {
    const SESSIONS: usize = 4;
    const PER_SESSION: usize = 700; // 2800 files: above the parallel threshold
    let (mut o, h) = orchestrator_with(Limits {
        sessions_per_uid: 16,
        files_per_session: PER_SESSION,
        files_total: SESSIONS * PER_SESSION,
    });
    h.local_freeze
        .store(true, std::sync::atomic::Ordering::Relaxed);
    for i in 0..SESSIONS {
        let id = o.create_session(&format!("p{i}"), ROOT).expect("create");
        for t in 0..PER_SESSION {
            o.preserve_fd(id, t as u64, Some(efd()), ROOT)
                .expect("preserve");
        }
    }
    o.set_event(Event::Prepare as u32).expect("prepare");
    h.take_log();
    let fds = fd_set();
    h.fail_at("freeze", k);
    let err = o.freeze_for_update().expect_err("freeze fails");
    assert_eq!(err.errno(), Errno::IO);
    assert_eq!(o.state(), State::Normal);
    assert!(o.sessions().all(|s| s.state() == State::Normal));
    assert_eq!(fd_set(), fds);
    let log = h.take_log();
    let frozen = ops(&log, "freeze").len();
    assert!(frozen >= k, "{frozen} froze before the failure at {k}");
    assert_eq!(ops(&log, "unfreeze").len(), frozen, "every freeze undone");
    assert_eq!(ops(&log, "cancel").len(), SESSIONS * PER_SESSION);
    o.set_event(Event::Prepare as u32).expect("prepare again");
    let _freeze = o.freeze_for_update().expect("no failure this time");
    assert_eq!(ops(&h.take_log(), "freeze").len(), SESSIONS * PER_SESSION);
    assert!(o.sessions().all(|s| s.state() == State::Frozen));
}

fn dry_run_failure_thaws_back_to_prepared() {
    let (mut o, h) = orchestrator();
    for i in 0..2 {
        session(&mut o, &format!("s{i}"));
    }
    o.set_event(Event::Prepare as u32).expect("prepare");
    let before = (view(&o), fd_set());
    let freeze = o.freeze_for_update().expect("freeze");
    assert_eq!(o.state(), State::Frozen);
    {
        let (image, fds) = o.handover("/bin/false").expect("handover");
        assert_eq!(image.fd_count(), 2 * FILES);
        assert_eq!(fds.len(), 2 * FILES);
    }
    h.take_log();
    o.thaw(freeze);
    assert_eq!((view(&o), fd_set()), before);
    assert_eq!(ops(&h.take_log(), "unfreeze").len(), 2 * FILES);
}

fn restore_fails_at(k: usize) {
    let (mut o, h) = orchestrator();
    session(&mut o, "s");
    o.set_event(Event::Prepare as u32).expect("prepare");
    let mut o = live_update(o);
    let id = o.retrieve_session("s", ROOT).expect("retrieve");
    let before = (view(&o), fd_set());
    h.fail_at("retrieve", 0);
    let err = o.restore_fd(id, k as u64, ROOT).expect_err("restore fails");
    assert_eq!(err.errno(), Errno::IO);
    assert_eq!((view(&o), fd_set()), before, "a failed restore leaks no fd");
    let fd = o.restore_fd(id, k as u64, ROOT).expect("the retry works");
    drop(fd);
}

fn handover_failure_builds_nothing() {
    let (mut o, _) = orchestrator();
    session(&mut o, "s");
    o.set_event(Event::Prepare as u32).expect("prepare");
    let _freeze = o.freeze_for_update().expect("freeze");
    let before = fd_set();
    {
        let (image, fds) = o.handover("/bin/false").expect("handover");
        let mut fds: Vec<_> = fds
            .iter()
            .map(|fd| fd.try_clone_to_owned().expect("dup"))
            .collect();
        fds.pop(); // one fd short
        let with = fd_set();
        let failure = Orchestrator::from_handover(&image, fds, o.registry().clone(), o.limits())
            .expect_err("fd count mismatch");
        assert_eq!(failure.error.errno(), Errno::IO);
        assert_eq!(failure.fds.len(), FILES - 1, "every fd is handed back");
        assert_eq!(fd_set(), with, "nothing was closed");
    }
    assert_eq!(
        fd_set(),
        before,
        "the handed-back fds close with their owner"
    );
}

#[test]
fn every_failure_point_is_all_or_nothing() {
    let baseline = fd_set();
    for k in 0..FILES {
        session_prepare_fails_at(k);
        session_freeze_fails_at(k);
        restore_fails_at(k);
    }
    for j in 0..3 {
        global_prepare_fails_in_session(j);
        update_freeze_fails_in_session(j);
    }
    dry_run_failure_thaws_back_to_prepared();
    handover_failure_builds_nothing();
    for k in [0, 1399, 1400, 2799] {
        parallel_freeze_fails_at(k);
    }
    assert_eq!(fd_set(), baseline, "every scenario closed what it opened");
}
