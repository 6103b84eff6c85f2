//! The engine against a reference model of SPEC §4–§7 and §9, written from the SPEC
//! and not from the engine: two independent readings of the SPEC must agree.
//!
//! Each case drives a fresh [`Orchestrator`] and a [`Model`] with the same random
//! sequence of operations (device and session commands, global events, releases,
//! live updates that complete or abort, handler faults) and checks after every step
//! that both return the same result (the same errno) and show the same state: the
//! global state, the epoch, every session (name, owner, state, retrieved) with its
//! files (token, restored) in order, and the number of preserved files. The number
//! of open fds of this process must always be the baseline plus one per preserved
//! file (the engine's own reference), and the baseline again once a case drops
//! everything: no path leaks an fd (SPEC §6, §11.7).
//!
//! Where the SPEC leaves a choice open the model follows the engine, and says so:
//! the order of checks within one command, and which sessions an aborted update
//! thaws.
//!
//! One `#[test]` only: the fd count is per process, so no other test may open fds
//! while it runs.

mod common;

use std::collections::HashMap;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::{Arc, OnceLock};

use common::{RecordingHandler, efd, open_fds, orchestrator_with};
use luo_core::{Caller, FileKey, Handover, Limits, Orchestrator, SessionId, State, UpdateFreeze};
use luo_uapi::Errno;
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::Config;

// ----- the inputs ------------------------------------------------------------------

/// Session names: four valid ones (the last of the maximal 55 bytes), then two the
/// SPEC refuses (empty, and 56 bytes that leave no room for the NUL).
fn name(i: usize) -> String {
    match i {
        0 => "alpha".to_owned(),
        1 => "beta".to_owned(),
        2 => "gamma".to_owned(),
        3 => "d".repeat(55),
        4 => String::new(),
        _ => "e".repeat(56),
    }
}

const UIDS: [u32; 3] = [0, 1000, 1001];
const TOKENS: [u64; 5] = [0, 1, 2, 3, u64::MAX];

/// Who issues a session command, relative to the session's owner.
#[derive(Debug, Clone, Copy)]
enum Who {
    Owner,
    Root,
    /// A uid that is neither the owner nor root.
    Stranger,
}

/// Which session handle of this epoch a command goes to.
#[derive(Debug, Clone)]
enum Target {
    /// One whose session is still there (else a stale one).
    Live(Index),
    /// One whose session was released (else a live one).
    Stale(Index),
    /// The last one handed out.
    Newest,
}

/// A token: mostly one the session holds, so that commands get past ENOENT.
#[derive(Debug, Clone)]
enum TokenPick {
    Held(Index),
    Any(u64),
}

/// A name for RETRIEVE_SESSION: mostly one an incoming session has.
#[derive(Debug, Clone)]
enum NamePick {
    Incoming(Index),
    Any(usize),
}

/// What PRESERVE_FD carries.
#[derive(Debug, Clone)]
enum FdChoice {
    /// A new eventfd: a file nobody preserves yet.
    Fresh,
    /// A dup of an already preserved file (any session): the same open file.
    DupOfPreserved(Index),
    /// No fd attached.
    Missing,
    /// `/dev/null`: no handler takes it.
    DevNull,
}

/// The handler callback a fault targets (the ones that can fail).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    Preserve,
    Prepare,
    Freeze,
    Retrieve,
}

impl Fault {
    fn op(self) -> &'static str {
        match self {
            Fault::Preserve => "preserve",
            Fault::Prepare => "prepare",
            Fault::Freeze => "freeze",
            Fault::Retrieve => "retrieve",
        }
    }
}

#[derive(Debug, Clone)]
enum Op {
    Create {
        name: usize,
        uid: u32,
    },
    Retrieve {
        name: NamePick,
        who: Who,
    },
    GetState {
        h: Target,
        who: Who,
    },
    Preserve {
        h: Target,
        token: u64,
        fd: FdChoice,
        who: Who,
    },
    Unpreserve {
        h: Target,
        token: TokenPick,
        who: Who,
    },
    Restore {
        h: Target,
        token: TokenPick,
        who: Who,
    },
    SessionEvent {
        h: Target,
        event: u32,
        who: Who,
    },
    GlobalEvent {
        event: u32,
    },
    /// The last reference to a session handle closes.
    Release {
        h: Target,
    },
    /// `luoctl update` that succeeds: freeze, hand over, next epoch.
    Update,
    /// The first half of an update: freeze, then stay in global FROZEN.
    FreezeForUpdate,
    /// Hand over after a [`Op::FreezeForUpdate`].
    CompleteUpdate,
    /// The dry run failed after a [`Op::FreezeForUpdate`]: thaw (SPEC §7 step 3).
    AbortUpdate,
    /// A handle an earlier epoch gave out: GET_STATE on it (as root), or its close.
    OldEpochHandle {
        h: Index,
        release: bool,
    },
    /// The k-th call of a handler callback from now on fails with EIO.
    SetFault {
        fault: Fault,
        k: usize,
    },
}

fn who() -> impl Strategy<Value = Who> {
    prop_oneof![6 => Just(Who::Owner), 2 => Just(Who::Root), 2 => Just(Who::Stranger)]
}

/// Raw event values, weighted towards the ones that do something; 4 is no event.
fn event() -> impl Strategy<Value = u32> {
    prop_oneof![3 => Just(0u32), 2 => Just(1), 2 => Just(2), 2 => Just(3), 1 => Just(4)]
}

fn token() -> impl Strategy<Value = u64> {
    prop::sample::select(TOKENS.to_vec())
}

fn held_token() -> impl Strategy<Value = TokenPick> {
    prop_oneof![
        4 => any::<Index>().prop_map(TokenPick::Held),
        1 => token().prop_map(TokenPick::Any),
    ]
}

fn name_pick() -> impl Strategy<Value = NamePick> {
    prop_oneof![
        4 => any::<Index>().prop_map(NamePick::Incoming),
        1 => name_index().prop_map(NamePick::Any),
    ]
}

fn target() -> impl Strategy<Value = Target> {
    prop_oneof![
        7 => any::<Index>().prop_map(Target::Live),
        1 => any::<Index>().prop_map(Target::Stale),
        2 => Just(Target::Newest),
    ]
}

fn uid() -> impl Strategy<Value = u32> {
    prop::sample::select(UIDS.to_vec())
}

fn name_index() -> impl Strategy<Value = usize> {
    prop_oneof![9 => 0..4usize, 1 => 4..6usize]
}

fn fd_choice() -> impl Strategy<Value = FdChoice> {
    prop_oneof![
        8 => Just(FdChoice::Fresh),
        2 => any::<Index>().prop_map(FdChoice::DupOfPreserved),
        1 => Just(FdChoice::Missing),
        1 => Just(FdChoice::DevNull),
    ]
}

fn fault() -> impl Strategy<Value = Fault> {
    prop_oneof![
        Just(Fault::Preserve),
        Just(Fault::Prepare),
        Just(Fault::Freeze),
        Just(Fault::Retrieve),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    let h = target;
    prop_oneof![
        10 => (name_index(), uid()).prop_map(|(name, uid)| Op::Create { name, uid }),
        8 => (name_pick(), who()).prop_map(|(name, who)| Op::Retrieve { name, who }),
        2 => (h(), who()).prop_map(|(h, who)| Op::GetState { h, who }),
        14 => (h(), token(), fd_choice(), who())
            .prop_map(|(h, token, fd, who)| Op::Preserve { h, token, fd, who }),
        4 => (h(), held_token(), who())
            .prop_map(|(h, token, who)| Op::Unpreserve { h, token, who }),
        8 => (h(), held_token(), who()).prop_map(|(h, token, who)| Op::Restore { h, token, who }),
        10 => (h(), event(), who()).prop_map(|(h, event, who)| Op::SessionEvent { h, event, who }),
        10 => event().prop_map(|event| Op::GlobalEvent { event }),
        3 => h().prop_map(|h| Op::Release { h }),
        6 => Just(Op::Update),
        2 => Just(Op::FreezeForUpdate),
        2 => Just(Op::CompleteUpdate),
        1 => Just(Op::AbortUpdate),
        2 => (any::<Index>(), any::<bool>())
            .prop_map(|(h, release)| Op::OldEpochHandle { h, release }),
        3 => (fault(), 0..4usize).prop_map(|(fault, k)| Op::SetFault { fault, k }),
    ]
}

/// How a case's populated epoch ends.
#[derive(Debug, Clone)]
enum Then {
    /// Stay in NORMAL.
    Stay,
    /// Prepare and stop in global FROZEN, before the hand-over.
    Freeze,
    /// Prepare, update, then retrieve sessions by (name, tokens to restore).
    Update(Vec<(Index, Vec<Index>)>),
}

/// A case starts with a populated epoch, maybe carried over and partly restored,
/// maybe with a fault pending: from random ops alone most cases would never get
/// past an empty NORMAL.
fn populate() -> impl Strategy<Value = Vec<Op>> {
    let session = (0..4usize, uid(), prop::collection::vec(token(), 0..=2));
    let sessions = prop::collection::vec(session, 0..=3);
    let fault = prop::option::weighted(0.3, (fault(), 0..4usize));
    let retrieve = (any::<Index>(), prop::collection::vec(any::<Index>(), 0..=2));
    let then = prop_oneof![
        3 => Just(Then::Stay),
        1 => Just(Then::Freeze),
        6 => prop::collection::vec(retrieve, 0..=2).prop_map(Then::Update),
    ];
    (fault, sessions, then).prop_map(|(fault, sessions, then)| {
        let mut ops: Vec<Op> = fault
            .map(|(fault, k)| Op::SetFault { fault, k })
            .into_iter()
            .collect();
        for (name, uid, tokens) in sessions {
            ops.push(Op::Create { name, uid });
            ops.extend(tokens.into_iter().map(|token| Op::Preserve {
                h: Target::Newest,
                token,
                fd: FdChoice::Fresh,
                who: Who::Owner,
            }));
        }
        let retrieves = match then {
            Then::Stay => return ops,
            Then::Freeze => {
                ops.extend([Op::GlobalEvent { event: 0 }, Op::FreezeForUpdate]);
                return ops;
            }
            Then::Update(retrieves) => retrieves,
        };
        ops.extend([Op::GlobalEvent { event: 0 }, Op::Update]);
        for (name, tokens) in retrieves {
            let who = Who::Owner;
            ops.push(Op::Retrieve {
                name: NamePick::Incoming(name),
                who,
            });
            ops.extend(tokens.into_iter().map(|t| Op::Restore {
                h: Target::Newest,
                token: TokenPick::Held(t),
                who,
            }));
        }
        ops
    })
}

/// A case: a populated epoch, then anything.
fn ops() -> impl Strategy<Value = Vec<Op>> {
    let any = prop::collection::vec(op(), 1..=25);
    (populate(), any).prop_map(|(mut ops, more)| {
        ops.extend(more);
        ops
    })
}

/// Small limits, so that ENOSPC (SPEC §9) is reached.
fn limits() -> impl Strategy<Value = Limits> {
    (1..=3usize, 2..=4usize, 3..=8usize).prop_map(|(s, f, t)| Limits {
        sessions_per_uid: s,
        files_per_session: f,
        files_total: t,
    })
}

// ----- the model -------------------------------------------------------------------

/// The events of SPEC §3, decoded here rather than with the engine's types.
#[derive(Debug, Clone, Copy)]
enum Ev {
    Prepare,
    Freeze,
    Finish,
    Cancel,
}

fn decode_event(raw: u32) -> Option<Ev> {
    match raw {
        0 => Some(Ev::Prepare),
        1 => Some(Ev::Freeze),
        2 => Some(Ev::Finish),
        3 => Some(Ev::Cancel),
        _ => None,
    }
}

/// What PRESERVE_FD carries, as the model sees it.
#[derive(Debug, Clone, Copy)]
enum MFd {
    /// An open file, by identity: equal numbers are the same open file.
    File(u64),
    Missing,
    Unsupported,
}

#[derive(Debug, Clone)]
struct MFile {
    token: u64,
    file: u64,
    restored: bool,
}

#[derive(Debug, Clone)]
struct MSession {
    /// Unique across epochs: a session carried by an update is a new session.
    key: u64,
    name: String,
    owner: u32,
    state: State,
    /// Came with this epoch's handover.
    incoming: bool,
    retrieved: bool,
    files: Vec<MFile>,
}

type Res<T = ()> = Result<T, Errno>;

/// What the engine shows: global state, epoch, preserved count, sessions.
type View = (
    State,
    u64,
    usize,
    Vec<(String, u32, State, bool, Vec<(u64, bool)>)>,
);

#[derive(Debug)]
struct Model {
    global: State,
    epoch: u64,
    /// In creation order.
    sessions: Vec<MSession>,
    limits: Limits,
    fault: Option<(Fault, usize)>,
    /// The sessions a pending update froze (global FROZEN).
    frozen_by_update: Option<Vec<u64>>,
    next_key: u64,
    next_file: u64,
}

impl Model {
    fn new(limits: Limits) -> Self {
        Model {
            global: State::Normal,
            epoch: 0,
            sessions: Vec::new(),
            limits,
            fault: None,
            frozen_by_update: None,
            next_key: 0,
            next_file: 0,
        }
    }

    fn view(&self) -> View {
        let sessions = self.sessions.iter().map(|s| {
            let files = s.files.iter().map(|f| (f.token, f.restored)).collect();
            (s.name.clone(), s.owner, s.state, s.retrieved, files)
        });
        (
            self.global,
            self.epoch,
            self.preserved(),
            sessions.collect(),
        )
    }

    fn preserved(&self) -> usize {
        self.sessions.iter().map(|s| s.files.len()).sum()
    }

    fn files(&self) -> impl Iterator<Item = &MFile> {
        self.sessions.iter().flat_map(|s| &s.files)
    }

    fn new_file(&mut self) -> u64 {
        self.next_file += 1;
        self.next_file
    }

    fn owner(&self, key: u64) -> Option<u32> {
        self.sessions.iter().find(|s| s.key == key).map(|s| s.owner)
    }

    /// One handler callback: does the injected fault hit it?
    fn call(&mut self, op: Fault) -> Res {
        match self.fault {
            Some((f, 0)) if f == op => {
                self.fault = None;
                Err(Errno::IO)
            }
            Some((f, k)) if f == op => {
                self.fault = Some((f, k - 1));
                Ok(())
            }
            _ => Ok(()),
        }
    }

    /// The callback `op` on each of `n` files in order, up to the first failure.
    fn calls(&mut self, op: Fault, n: usize) -> Res {
        (0..n).try_for_each(|_| self.call(op))
    }

    /// SPEC §5 names: 1 to 55 bytes, the 56th being the NUL.
    fn valid_name(name: &str) -> bool {
        (1..=55).contains(&name.len())
    }

    /// A session handle's session: EBADF once released or from another epoch,
    /// EACCES unless the caller owns it or is root (SPEC §9).
    fn usable(&self, key: u64, uid: u32) -> Res<usize> {
        let i = self
            .sessions
            .iter()
            .position(|s| s.key == key)
            .ok_or(Errno::BADF)?;
        if uid != 0 && uid != self.sessions[i].owner {
            return Err(Errno::ACCESS);
        }
        Ok(i)
    }

    // --- device commands (SPEC §4, §5) ---

    fn create(&mut self, name: &str, uid: u32) -> Res<u64> {
        if !matches!(self.global, State::Normal | State::Updated) {
            return Err(Errno::AGAIN);
        }
        if !Self::valid_name(name) {
            return Err(Errno::INVAL);
        }
        if self.sessions.iter().any(|s| s.name == name) {
            return Err(Errno::EXIST);
        }
        let owned = self.sessions.iter().filter(|s| s.owner == uid).count();
        if owned >= self.limits.sessions_per_uid {
            return Err(Errno::NOSPC);
        }
        self.next_key += 1;
        self.sessions.push(MSession {
            key: self.next_key,
            name: name.to_owned(),
            owner: uid,
            state: State::Normal,
            incoming: false,
            retrieved: false,
            files: Vec::new(),
        });
        Ok(self.next_key)
    }

    /// The SPEC lists ENOENT, EADDRINUSE, EACCES; EACCES before EADDRINUSE is
    /// the engine's choice (a stranger learns nothing of the session's use).
    fn retrieve(&mut self, name: &str, uid: u32) -> Res<u64> {
        if self.global != State::Updated {
            return Err(Errno::AGAIN);
        }
        if !Self::valid_name(name) {
            return Err(Errno::INVAL);
        }
        let s = self
            .sessions
            .iter_mut()
            .find(|s| s.incoming && s.name == name)
            .ok_or(Errno::NOENT)?;
        if uid != 0 && uid != s.owner {
            return Err(Errno::ACCESS);
        }
        if s.retrieved {
            return Err(Errno::ADDRINUSE);
        }
        s.retrieved = true;
        Ok(s.key)
    }

    fn global_event(&mut self, raw: u32) -> Res {
        let event = decode_event(raw).ok_or(Errno::INVAL)?;
        match event {
            Ev::Freeze => Err(Errno::OPNOTSUPP),
            Ev::Prepare => {
                if self.global != State::Normal {
                    return Err(Errno::INVAL);
                }
                // All-or-nothing: a failure anywhere leaves every session as it was.
                let normal: Vec<usize> = (0..self.sessions.len())
                    .filter(|&i| self.sessions[i].state == State::Normal)
                    .collect();
                for &i in &normal {
                    self.calls(Fault::Prepare, self.sessions[i].files.len())?;
                }
                for i in normal {
                    self.sessions[i].state = State::Prepared;
                }
                self.global = State::Prepared;
                Ok(())
            }
            Ev::Cancel => {
                if !matches!(self.global, State::Prepared | State::Frozen) {
                    return Err(Errno::INVAL);
                }
                self.cancel_all();
                Ok(())
            }
            Ev::Finish => {
                if self.global != State::Updated {
                    return Err(Errno::INVAL);
                }
                self.sessions.retain(|s| !s.incoming || s.retrieved);
                for s in &mut self.sessions {
                    if s.state == State::Updated {
                        finish(s);
                    }
                }
                self.global = State::Normal;
                Ok(())
            }
        }
    }

    /// Every PREPARED or FROZEN session back to NORMAL, and the global state too.
    fn cancel_all(&mut self) {
        for s in &mut self.sessions {
            if matches!(s.state, State::Prepared | State::Frozen) {
                s.state = State::Normal;
            }
        }
        self.global = State::Normal;
        self.frozen_by_update = None;
    }

    // --- session commands (SPEC §5, §6) ---

    fn get_state(&self, key: u64, uid: u32) -> Res<State> {
        Ok(self.sessions[self.usable(key, uid)?].state)
    }

    fn session_event(&mut self, key: u64, raw: u32, uid: u32) -> Res {
        let i = self.usable(key, uid)?;
        let event = decode_event(raw).ok_or(Errno::INVAL)?;
        let n = self.sessions[i].files.len();
        match (self.sessions[i].state, event) {
            (State::Normal, Ev::Prepare) => {
                self.calls(Fault::Prepare, n)?;
                self.sessions[i].state = State::Prepared;
            }
            (State::Prepared, Ev::Freeze) => {
                if let Err(e) = self.calls(Fault::Freeze, n) {
                    // A failed freeze cancels the whole session: NORMAL, files kept.
                    self.sessions[i].state = State::Normal;
                    return Err(e);
                }
                self.sessions[i].state = State::Frozen;
            }
            (_, Ev::Prepare | Ev::Freeze) => return Err(Errno::BUSY),
            (State::Prepared | State::Frozen, Ev::Cancel) => {
                self.sessions[i].state = State::Normal;
            }
            (State::Updated, Ev::Finish) => finish(&mut self.sessions[i]),
            (_, Ev::Cancel | Ev::Finish) => {}
        }
        Ok(())
    }

    /// SPEC §6 lists the errnos; their order is the engine's: access, state,
    /// fd, handler, token, same file, limits.
    fn preserve(&mut self, key: u64, token: u64, fd: MFd, uid: u32) -> Res {
        let i = self.usable(key, uid)?;
        let global_ok = matches!(self.global, State::Normal | State::Updated);
        if !global_ok || self.sessions[i].state != State::Normal {
            return Err(Errno::BUSY);
        }
        let file = match fd {
            MFd::Missing => return Err(Errno::BADF),
            MFd::Unsupported => return Err(Errno::NOENT),
            MFd::File(file) => file,
        };
        if self.sessions[i].files.iter().any(|f| f.token == token) {
            return Err(Errno::EXIST);
        }
        if self.files().any(|f| f.file == file) {
            return Err(Errno::BUSY);
        }
        if self.sessions[i].files.len() >= self.limits.files_per_session
            || self.preserved() >= self.limits.files_total
        {
            return Err(Errno::NOSPC);
        }
        self.call(Fault::Preserve)?;
        self.sessions[i].files.push(MFile {
            token,
            file,
            restored: false,
        });
        Ok(())
    }

    fn unpreserve(&mut self, key: u64, token: u64, uid: u32) -> Res {
        let i = self.usable(key, uid)?;
        let global_ok = matches!(self.global, State::Normal | State::Updated);
        let s = &mut self.sessions[i];
        if !global_ok || s.state != State::Normal {
            return Err(Errno::BUSY);
        }
        let at = s
            .files
            .iter()
            .position(|f| f.token == token)
            .ok_or(Errno::NOENT)?;
        s.files.remove(at);
        Ok(())
    }

    /// The restored file's identity.
    fn restore(&mut self, key: u64, token: u64, uid: u32) -> Res<u64> {
        let i = self.usable(key, uid)?;
        if self.global != State::Updated || self.sessions[i].state != State::Updated {
            return Err(Errno::BUSY);
        }
        let at = self.sessions[i]
            .files
            .iter()
            .position(|f| f.token == token)
            .ok_or(Errno::NOENT)?;
        if self.sessions[i].files[at].restored {
            return Err(Errno::ADDRINUSE);
        }
        self.call(Fault::Retrieve)?;
        self.sessions[i].files[at].restored = true;
        Ok(self.sessions[i].files[at].file)
    }

    /// Whatever state it is in, a released session and all its files are gone; a
    /// stale handle's close changes nothing.
    fn release(&mut self, key: u64) {
        self.sessions.retain(|s| s.key != key);
    }

    // --- the live update (SPEC §7) ---

    /// Step 1: freeze every PREPARED session in creation order; on a failure every
    /// session is cancelled and the global state is NORMAL.
    fn freeze_for_update(&mut self) -> Res {
        if self.global != State::Prepared {
            return Err(Errno::INVAL);
        }
        let prepared: Vec<usize> = (0..self.sessions.len())
            .filter(|&i| self.sessions[i].state == State::Prepared)
            .collect();
        for &i in &prepared {
            if let Err(e) = self.calls(Fault::Freeze, self.sessions[i].files.len()) {
                self.cancel_all();
                return Err(e);
            }
        }
        for &i in &prepared {
            self.sessions[i].state = State::Frozen;
        }
        self.frozen_by_update = Some(prepared.iter().map(|&i| self.sessions[i].key).collect());
        self.global = State::Frozen;
        Ok(())
    }

    /// Step 3 failed: "frozen sessions are unfrozen back to PREPARED, nothing else
    /// changes". Which frozen sessions is open; as the engine does, the ones this
    /// update froze (a session frozen by its own FREEZE stays FROZEN).
    fn abort_update(&mut self) {
        for key in self.frozen_by_update.take().unwrap_or_default() {
            if let Some(s) = self.sessions.iter_mut().find(|s| s.key == key) {
                if s.state == State::Frozen {
                    s.state = State::Prepared;
                }
            }
        }
        self.global = State::Prepared;
    }

    /// Steps 2–6: the FROZEN sessions, and only those, start the next epoch as
    /// UPDATED incoming sessions, with their files unrestored.
    fn complete_update(&mut self) {
        let carried: Vec<MSession> = self
            .sessions
            .drain(..)
            .filter(|s| s.state == State::Frozen)
            .collect();
        for mut s in carried {
            self.next_key += 1;
            s.key = self.next_key;
            s.state = State::Updated;
            s.incoming = true;
            s.retrieved = false;
            for f in &mut s.files {
                f.restored = false;
            }
            self.sessions.push(s);
        }
        self.global = State::Updated;
        self.epoch += 1;
        self.frozen_by_update = None;
    }
}

/// FINISH: UPDATED → NORMAL; files never restored are dropped, restored ones stay
/// preserved and may be restored again after the next update.
fn finish(s: &mut MSession) {
    s.files.retain(|f| f.restored);
    for f in &mut s.files {
        f.restored = false;
    }
    s.state = State::Normal;
}

// ----- the engine under test -------------------------------------------------------

fn view(o: &Orchestrator) -> View {
    let sessions = o.sessions().map(|s| {
        let files = s
            .files()
            .iter()
            .map(|f| (f.token(), f.restored()))
            .collect();
        (
            s.name().to_owned(),
            s.owner(),
            s.state(),
            s.retrieved(),
            files,
        )
    });
    (
        o.state(),
        o.epoch(),
        o.preserved_count(),
        sessions.collect(),
    )
}

/// Steps 2–6 in one process, as `common::live_update` does after its own freeze.
fn hand_over(o: Orchestrator, freeze: UpdateFreeze) -> Orchestrator {
    let registry = o.registry().clone();
    let limits = o.limits();
    let (bytes, fds) = {
        let (image, fds) = o.handover("/proc/self/exe").expect("handover");
        let fds: Vec<OwnedFd> = fds
            .iter()
            .map(|fd| fd.try_clone_to_owned().expect("dup"))
            .collect();
        (image.encode(), fds)
    };
    drop(freeze);
    drop(o);
    let image = Handover::decode(&bytes).expect("decode");
    Orchestrator::from_handover(&image, fds, registry, limits).expect("from_handover")
}

/// A handle the engine never gave out, for session commands before any create.
const NO_HANDLE: (SessionId, u64) = (SessionId(u64::MAX), u64::MAX);

struct Harness {
    o: Orchestrator,
    handler: Arc<RecordingHandler>,
    freeze: Option<UpdateFreeze>,
    m: Model,
    /// Every handle this epoch gave out (engine id, model key), released or not.
    handles: Vec<(SessionId, u64)>,
    /// Every handle earlier epochs gave out.
    old_handles: Vec<SessionId>,
    /// The model's file identities, as the kernel knows them.
    keys: HashMap<u64, FileKey>,
}

fn errno<T>(r: luo_core::Result<T>) -> Res<T> {
    r.map_err(|e| e.errno())
}

/// Success or the errno, whatever the success carries.
fn outcome<T>(r: &Res<T>) -> Res {
    r.as_ref().map(|_| ()).map_err(|e| *e)
}

impl Harness {
    fn new(limits: Limits) -> Self {
        let (o, handler) = orchestrator_with(limits);
        Harness {
            o,
            handler,
            freeze: None,
            m: Model::new(limits),
            handles: Vec::new(),
            old_handles: Vec::new(),
            keys: HashMap::new(),
        }
    }

    fn handle(&self, t: &Target) -> (SessionId, u64) {
        let (live, stale): (Vec<_>, Vec<_>) = self
            .handles
            .iter()
            .partition(|&&(_, key)| self.m.owner(key).is_some());
        let (at, first, second) = match t {
            Target::Newest => return self.handles.last().copied().unwrap_or(NO_HANDLE),
            Target::Live(at) => (at, live, stale),
            Target::Stale(at) => (at, stale, live),
        };
        let pick = if first.is_empty() { second } else { first };
        if pick.is_empty() {
            NO_HANDLE
        } else {
            *at.get(&pick)
        }
    }

    fn token(&self, key: u64, pick: &TokenPick) -> u64 {
        let held = self
            .m
            .sessions
            .iter()
            .find(|s| s.key == key)
            .map(|s| &s.files[..])
            .unwrap_or_default();
        match pick {
            TokenPick::Held(at) if !held.is_empty() => at.get(held).token,
            TokenPick::Held(_) => TOKENS[0],
            TokenPick::Any(token) => *token,
        }
    }

    fn retrieve_name(&self, pick: &NamePick) -> String {
        let incoming: Vec<&MSession> = self.m.sessions.iter().filter(|s| s.incoming).collect();
        match pick {
            NamePick::Incoming(at) if !incoming.is_empty() => at.get(&incoming).name.clone(),
            NamePick::Incoming(_) => name(0),
            NamePick::Any(i) => name(*i),
        }
    }

    fn uid(&self, who: Who, key: u64) -> u32 {
        let owner = self.m.owner(key).unwrap_or(1000);
        match who {
            Who::Owner => owner,
            Who::Root => 0,
            Who::Stranger if owner == 1000 => 1001,
            Who::Stranger => 1000,
        }
    }

    /// The fd PRESERVE_FD carries, for the engine and for the model.
    fn fd(&mut self, choice: &FdChoice) -> (Option<OwnedFd>, MFd) {
        match choice {
            FdChoice::DupOfPreserved(n) if self.m.preserved() > 0 => {
                let n = n.index(self.m.preserved());
                let file = self.m.files().nth(n).expect("n < preserved").file;
                let ours = self
                    .o
                    .sessions()
                    .flat_map(|s| s.files())
                    .nth(n)
                    .expect("engine and model agree on the files")
                    .fd()
                    .try_clone_to_owned()
                    .expect("dup");
                (Some(ours), MFd::File(file))
            }
            FdChoice::Fresh | FdChoice::DupOfPreserved(_) => {
                let fd = efd();
                let file = self.m.new_file();
                self.keys
                    .insert(file, FileKey::of(fd.as_fd()).expect("fstat"));
                (Some(fd), MFd::File(file))
            }
            FdChoice::Missing => (None, MFd::Missing),
            FdChoice::DevNull => {
                let null = std::fs::File::open("/dev/null").expect("open /dev/null");
                (Some(null.into()), MFd::Unsupported)
            }
        }
    }

    fn complete_update(&mut self) {
        let freeze = self.freeze.take().expect("a pending update");
        let placeholder = Orchestrator::new(self.o.registry().clone(), self.o.limits());
        let o = std::mem::replace(&mut self.o, placeholder);
        self.o = hand_over(o, freeze);
        self.m.complete_update();
        self.old_handles
            .extend(self.handles.drain(..).map(|(id, _)| id));
    }

    fn step(&mut self, op: &Op) -> Result<(), TestCaseError> {
        match op {
            Op::Create { name: n, uid } => {
                let n = name(*n);
                let got = errno(self.o.create_session(&n, Caller { uid: *uid }));
                let want = self.m.create(&n, *uid);
                prop_assert_eq!(got.map(drop), want.map(drop));
                if let (Ok(id), Ok(key)) = (got, want) {
                    self.handles.push((id, key));
                }
            }
            Op::Retrieve { name, who } => {
                let n = self.retrieve_name(name);
                let holder = self.m.sessions.iter().find(|s| s.name == n);
                let uid = self.uid(*who, holder.map_or(u64::MAX, |s| s.key));
                let got = errno(self.o.retrieve_session(&n, Caller { uid }));
                let want = self.m.retrieve(&n, uid);
                prop_assert_eq!(got.map(drop), want.map(drop));
                if let (Ok(id), Ok(key)) = (got, want) {
                    self.handles.push((id, key));
                }
            }
            Op::GetState { h, who } => {
                let (id, key) = self.handle(h);
                let uid = self.uid(*who, key);
                let got = errno(self.o.session_state(id, Caller { uid }));
                prop_assert_eq!(got, self.m.get_state(key, uid));
            }
            Op::Preserve { h, token, fd, who } => {
                let (id, key) = self.handle(h);
                let uid = self.uid(*who, key);
                let (fd, mfd) = self.fd(fd);
                let got = errno(self.o.preserve_fd(id, *token, fd, Caller { uid }));
                prop_assert_eq!(got, self.m.preserve(key, *token, mfd, uid));
            }
            Op::Unpreserve { h, token, who } => {
                let (id, key) = self.handle(h);
                let uid = self.uid(*who, key);
                let token = self.token(key, token);
                let got = errno(self.o.unpreserve_fd(id, token, Caller { uid }));
                prop_assert_eq!(got, self.m.unpreserve(key, token, uid));
            }
            Op::Restore { h, token, who } => {
                let (id, key) = self.handle(h);
                let uid = self.uid(*who, key);
                let token = self.token(key, token);
                let got = errno(self.o.restore_fd(id, token, Caller { uid }));
                let want = self.m.restore(key, token, uid);
                // The very file preserved under this token, however many updates
                // it crossed. Ours to close: that must not disturb the engine's
                // reference (the fd count check after each step).
                let got = got.map(|fd| FileKey::of(fd.as_fd()).expect("fstat"));
                prop_assert_eq!(got, want.map(|file| self.keys[&file]));
            }
            Op::SessionEvent { h, event, who } => {
                let (id, key) = self.handle(h);
                let uid = self.uid(*who, key);
                let got = errno(self.o.session_event(id, *event, Caller { uid }));
                prop_assert_eq!(got, self.m.session_event(key, *event, uid));
            }
            Op::GlobalEvent { event } => {
                let got = errno(self.o.set_event(*event));
                prop_assert_eq!(got, self.m.global_event(*event));
                if self.o.state() != State::Frozen {
                    // A CANCEL ended the pending update.
                    self.freeze = None;
                }
            }
            Op::Release { h } => {
                let (id, key) = self.handle(h);
                self.o.release_session(id);
                self.m.release(key);
            }
            Op::Update => {
                let got = errno(self.o.freeze_for_update());
                let want = self.m.freeze_for_update();
                prop_assert_eq!(outcome(&got), want);
                if let Ok(freeze) = got {
                    self.freeze = Some(freeze);
                    self.complete_update();
                }
            }
            Op::FreezeForUpdate => {
                let got = errno(self.o.freeze_for_update());
                prop_assert_eq!(outcome(&got), self.m.freeze_for_update());
                if let Ok(freeze) = got {
                    self.freeze = Some(freeze);
                }
            }
            Op::CompleteUpdate => {
                if self.freeze.is_some() {
                    self.complete_update();
                }
            }
            Op::AbortUpdate => {
                if let Some(freeze) = self.freeze.take() {
                    self.o.thaw(freeze);
                    self.m.abort_update();
                }
            }
            Op::OldEpochHandle { h, release } => {
                if !self.old_handles.is_empty() {
                    let id = *h.get(&self.old_handles);
                    // SPEC §7 step 4, §8.3: an old epoch's handle is stale; §5:
                    // its close changes nothing (the view check below).
                    if *release {
                        self.o.release_session(id);
                    } else {
                        let got = errno(self.o.session_state(id, Caller::ROOT));
                        prop_assert_eq!(got, Err(Errno::BADF), "handle {:?} of an old epoch", id);
                    }
                }
            }
            Op::SetFault { fault, k } => {
                self.handler.fail_at(fault.op(), *k);
                self.m.fault = Some((*fault, *k));
            }
        }
        Ok(())
    }
}

/// Open fds before any case ran.
fn baseline() -> usize {
    static BASELINE: OnceLock<usize> = OnceLock::new();
    *BASELINE.get_or_init(open_fds)
}

fn run(limits: Limits, ops: &[Op]) -> Result<(), TestCaseError> {
    let baseline = baseline();
    {
        let mut h = Harness::new(limits);
        for (i, op) in ops.iter().enumerate() {
            h.step(op)
                .map_err(|e| TestCaseError::fail(format!("step {i} {op:?}: {e}")))?;
            prop_assert_eq!(view(&h.o), h.m.view(), "after step {} {:?}", i, op);
            prop_assert_eq!(
                open_fds(),
                baseline + h.m.preserved(),
                "fds after step {} {:?}: one per preserved file",
                i,
                op
            );
        }
    }
    prop_assert_eq!(open_fds(), baseline, "every fd closed once all is dropped");
    Ok(())
}

proptest! {
    #![proptest_config(Config {
        cases: 4000,
        // A failure prints its minimal sequence; no regression file in the tree.
        failure_persistence: None,
        ..Config::default()
    })]

    #[test]
    fn engine_agrees_with_the_spec_model(
        limits in limits(),
        ops in ops(),
    ) {
        run(limits, &ops)?;
    }
}
