//! The orchestrator: the global state machine, the session table, and the live
//! update's engine half (SPEC §4–§7).
//!
//! ```text
//!            PREPARE              (live update: freeze, hand over, exec)
//!   NORMAL ───────────▶ PREPARED ──────────────────────────────────▶ UPDATED (next epoch)
//!     ▲  ◀─────────────────┘ CANCEL                                     │
//!     └─────────────────────────────────────────────────────────────────┘ FINISH
//! ```
//!
//! Global events fan out to the sessions in creation order, all-or-nothing:
//! PREPARE prepares every NORMAL session and, if one fails, cancels the ones this
//! call prepared (in reverse) and stays NORMAL. CANCEL cancels every PREPARED or
//! FROZEN session. FINISH finishes every incoming session and drops the ones never
//! retrieved. FREEZE is not a user event: only the live update freezes
//! ([`Orchestrator::freeze_for_update`]), and if any session fails to freeze the
//! frozen ones are unfrozen in reverse, every session is cancelled and the global
//! state returns to NORMAL. A dry run that fails after a successful freeze is undone
//! with [`Orchestrator::thaw`], which puts the frozen sessions back to PREPARED.
//!
//! Every call either completes or returns an error with nothing changed (the
//! failure paths above are the documented exceptions); fds taken on a failing path
//! are closed before it returns.
//!
//! The orchestrator owns no sockets: callers name sessions by [`SessionId`] and say
//! who they are with [`Caller`].

use std::collections::{BTreeMap, BTreeSet};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

// foldhash: std's maps with a fast hasher, still seeded per process, so a
// client that picks its tokens or files cannot aim at one bucket. SipHash was a
// tenth of the daemon's instructions per PRESERVE_FD.
use foldhash::{HashMap, HashSet};
use luo_uapi::rfc_v4::{Event, State};

use crate::error::{Error, Result};
use crate::file_handler::{FileInfo, FileKey, HandlerRegistry};
use crate::handover::{FileImageRef, Handover, HandoverRef, SessionImageRef};
use crate::preserved_file::PreservedFile;
use crate::session::{self, Session, SessionId, Transition};

/// Who is asking: the peer's uid (root may use every session).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caller {
    /// The peer's uid, from SO_PEERCRED or SCM_CREDENTIALS.
    pub uid: u32,
}

impl Caller {
    /// The superuser.
    pub const ROOT: Caller = Caller { uid: 0 };

    /// Root, or the session's owner (SPEC §9).
    ///
    /// # Errors
    /// `EACCES` for anyone else.
    fn check(self, session: &Session) -> Result<()> {
        if self.uid == 0 || self.uid == session.owner {
            return Ok(());
        }
        Err(Error::NotOwner {
            name: session.name.clone(),
            owner: session.owner,
            caller: self.uid,
        })
    }
}

/// SPEC §6: files are preserved and unpreserved only while the global state is
/// NORMAL or UPDATED and the session NORMAL.
fn files_may_change(global: State, s: &Session) -> bool {
    matches!(global, State::Normal | State::Updated) && s.state == State::Normal
}

/// EBUSY for `op` on session `s` in global state `global`.
fn busy(s: &Session, global: State, op: &'static str) -> Error {
    Error::SessionBusy {
        name: s.name.clone(),
        state: s.state,
        global,
        op,
    }
}

/// Configurable limits (SPEC §9); reaching one gives ENOSPC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Sessions one uid may own, incoming ones included.
    pub sessions_per_uid: usize,
    /// Files in one session.
    pub files_per_session: usize,
    /// Preserved files in all sessions together.
    pub files_total: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            sessions_per_uid: 1024,
            files_per_session: 4096,
            files_total: 1 << 20,
        }
    }
}

/// What a global event does, decided from the global state alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GlobalTransition {
    /// Apply `event` to the sessions; on success the global state is `to`.
    Run {
        /// The event.
        event: Event,
        /// The state after success.
        to: State,
    },
    /// The event does not apply in this state: EINVAL.
    WrongState,
    /// FREEZE: only the live update freezes: EOPNOTSUPP.
    FreezeNotSupported,
}

/// The global state machine of SPEC §4, as a pure function.
#[must_use]
pub const fn global_transition(state: State, event: Event) -> GlobalTransition {
    use GlobalTransition::{FreezeNotSupported, Run, WrongState};
    use State::{Frozen, Normal, Prepared, Undefined, Updated};
    match (state, event) {
        (Normal, Event::Prepare) => Run {
            event,
            to: Prepared,
        },
        (Undefined | Prepared | Frozen | Updated, Event::Prepare) => WrongState,
        (Undefined | Normal | Prepared | Frozen | Updated, Event::Freeze) => FreezeNotSupported,
        (Prepared | Frozen, Event::Cancel) => Run { event, to: Normal },
        (Undefined | Normal | Updated, Event::Cancel) => WrongState,
        (Updated, Event::Finish) => Run { event, to: Normal },
        (Undefined | Normal | Prepared | Frozen, Event::Finish) => WrongState,
    }
}

/// The sessions a live update froze, so that a failed update can thaw exactly those.
#[derive(Debug)]
#[must_use = "a frozen update must be handed over or thawed"]
pub struct UpdateFreeze {
    frozen: Vec<SessionId>,
}

/// Below this many files a live update freezes them on one thread.
const PARALLEL_FREEZE_FILES: usize = 2048;

/// CPUs this process may run on, asked once: std reads the cgroup's quota
/// files to answer, which an update's blackout should not wait for.
fn cpus() -> usize {
    static CPUS: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *CPUS.get_or_init(|| std::thread::available_parallelism().map_or(1, std::num::NonZero::get))
}

/// The engine: global state, sessions, and the index of preserved files.
#[derive(Debug)]
pub struct Orchestrator {
    state: State,
    epoch: u64,
    registry: HandlerRegistry,
    limits: Limits,
    /// In creation order (ids grow).
    sessions: BTreeMap<SessionId, Session>,
    names: HashMap<String, SessionId>,
    /// Every preserved file, by identity: where it is. Carried files join it
    /// when [`settle`](Self::settle) has checked them.
    preserved: HashMap<FileKey, (SessionId, u64)>,
    /// Sessions with carried files not yet checked, in creation order.
    unsettled: BTreeSet<SessionId>,
    /// Files that may never be preserved: the daemon's own handles.
    reserved: HashSet<FileKey>,
    next_id: u64,
}

impl Orchestrator {
    /// A fresh orchestrator in NORMAL, epoch 0, with no sessions.
    #[must_use]
    pub fn new(registry: HandlerRegistry, limits: Limits) -> Self {
        crate::file_handler::warm_up();
        Orchestrator {
            state: State::Normal,
            epoch: 0,
            registry,
            limits,
            sessions: BTreeMap::new(),
            names: HashMap::default(),
            preserved: HashMap::default(),
            unsettled: BTreeSet::new(),
            reserved: HashSet::default(),
            next_id: 1,
        }
    }

    /// The global state.
    #[must_use]
    pub fn state(&self) -> State {
        self.state
    }

    /// The number of live updates this state has been through.
    #[must_use]
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// The limits in force.
    #[must_use]
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// The handlers.
    #[must_use]
    pub fn registry(&self) -> &HandlerRegistry {
        &self.registry
    }

    /// Every session, in creation order.
    pub fn sessions(&self) -> impl Iterator<Item = &Session> {
        self.sessions.values()
    }

    /// One session.
    #[must_use]
    pub fn session(&self, id: SessionId) -> Option<&Session> {
        self.sessions.get(&id)
    }

    /// How many files are preserved in all sessions.
    #[must_use]
    pub fn preserved_count(&self) -> usize {
        self.sessions.values().map(|s| s.files.len()).sum()
    }

    /// Never accept the file `key` for preservation (the daemon's own handles).
    pub fn reserve_file(&mut self, key: FileKey) {
        self.reserved.insert(key);
    }

    /// Undo [`reserve_file`](Self::reserve_file).
    pub fn unreserve_file(&mut self, key: FileKey) {
        self.reserved.remove(&key);
    }

    fn session_for(&mut self, id: SessionId, caller: Caller) -> Result<&mut Session> {
        let s = self.sessions.get_mut(&id).ok_or(Error::StaleHandle(id.0))?;
        caller.check(s)?;
        Ok(s)
    }

    /// Forget dropped files: remove them from the index, let their handler undo
    /// the preservation, close the daemon's reference.
    fn drop_files(&mut self, files: Vec<PreservedFile>) {
        for f in files.into_iter().rev() {
            self.drop_file(f);
        }
    }

    fn drop_file(&mut self, file: PreservedFile) {
        if let Some(key) = file.key {
            self.preserved.remove(&key);
        }
        file.unpreserve();
    }

    // ----- device commands -------------------------------------------------------

    /// GET_STATE and SET_EVENT on the device: drive the global state machine.
    ///
    /// # Errors
    /// `EINVAL` for an unknown event or one not allowed in the current state,
    /// `EOPNOTSUPP` for FREEZE, or the error of the session that failed to prepare
    /// (then nothing changed).
    pub fn set_event(&mut self, raw_event: u32) -> Result<()> {
        self.settle_all();
        let event = Event::try_from(raw_event).map_err(|_| Error::UnknownEvent(raw_event))?;
        let to = match global_transition(self.state, event) {
            GlobalTransition::Run { to, .. } => to,
            GlobalTransition::WrongState => {
                return Err(Error::GlobalTransition {
                    state: self.state,
                    event,
                });
            }
            GlobalTransition::FreezeNotSupported => return Err(Error::GlobalFreeze),
        };
        match event {
            Event::Prepare => self.prepare_all()?,
            Event::Cancel => self.cancel_all(),
            Event::Finish => self.finish_all(),
            Event::Freeze => unreachable!("global_transition refuses FREEZE"),
        }
        tracing::info!(%event, from = %self.state, %to, "global event");
        self.state = to;
        Ok(())
    }

    fn prepare_all(&mut self) -> Result<()> {
        let mut done = Vec::new();
        let normal: Vec<SessionId> = self
            .sessions
            .values()
            .filter(|s| s.state == State::Normal)
            .map(|s| s.id)
            .collect();
        for id in normal {
            let s = self.sessions.get_mut(&id).expect("listed above");
            if let Err(e) = s.prepare() {
                for id in done.iter().rev() {
                    self.sessions.get_mut(id).expect("listed above").cancel();
                }
                return Err(e);
            }
            done.push(id);
        }
        Ok(())
    }

    fn cancel_all(&mut self) {
        for s in self.sessions.values_mut().rev() {
            if matches!(s.state, State::Prepared | State::Frozen) {
                s.cancel();
            }
        }
    }

    fn finish_all(&mut self) {
        let ids: Vec<SessionId> = self.sessions.keys().rev().copied().collect();
        for id in ids {
            let s = self.sessions.get_mut(&id).expect("listed above");
            if s.incoming && !s.retrieved {
                // Never retrieved: nobody will ever restore these files.
                let s = self.sessions.remove(&id).expect("listed above");
                self.names.remove(&s.name);
                tracing::info!(session = %s.name, files = s.files.len(), "dropping unretrieved session");
                let mut files = s.files;
                crate::preserved_file::finish_all(&mut files);
                self.drop_files(files);
            } else if s.state == State::Updated {
                let dropped = s.finish();
                self.drop_files(dropped);
            }
        }
    }

    /// CREATE_SESSION: a new NORMAL session named `name`, owned by `caller`.
    ///
    /// # Errors
    /// `EAGAIN` unless global NORMAL or UPDATED; `EINVAL` for an empty name or one
    /// longer than 55 bytes; `EEXIST` when any session (incoming too) has the name;
    /// `ENOSPC` at the per-uid session limit.
    pub fn create_session(&mut self, name: &str, caller: Caller) -> Result<SessionId> {
        if !matches!(self.state, State::Normal | State::Updated) {
            return Err(Error::NotNow {
                op: "created",
                state: self.state,
            });
        }
        validate_name(name)?;
        if self.names.contains_key(name) {
            return Err(Error::SessionExists(name.to_owned()));
        }
        let owned = self
            .sessions
            .values()
            .filter(|s| s.owner == caller.uid)
            .count();
        if owned >= self.limits.sessions_per_uid {
            return Err(Error::Limit("sessions per uid"));
        }
        let id = SessionId(self.next_id);
        self.next_id += 1;
        self.sessions
            .insert(id, Session::new(id, name.to_owned(), caller.uid));
        self.names.insert(name.to_owned(), id);
        tracing::debug!(session = name, uid = caller.uid, "created");
        Ok(id)
    }

    /// RETRIEVE_SESSION: hand out the incoming session `name`.
    ///
    /// # Errors
    /// `EAGAIN` unless global UPDATED; `EINVAL` for a malformed name; `ENOENT` when
    /// no incoming session has the name; `EACCES` when another uid owns it (checked
    /// before `EADDRINUSE`, so a stranger learns nothing of its use);
    /// `EADDRINUSE` when it was already retrieved.
    pub fn retrieve_session(&mut self, name: &str, caller: Caller) -> Result<SessionId> {
        if self.state != State::Updated {
            return Err(Error::NotNow {
                op: "retrieved",
                state: self.state,
            });
        }
        validate_name(name)?;
        let id = *self
            .names
            .get(name)
            .ok_or_else(|| Error::NoSuchSession(name.to_owned()))?;
        let s = self.sessions.get_mut(&id).expect("names index sessions");
        if !s.incoming && !s.retrieved {
            return Err(Error::NoSuchSession(name.to_owned()));
        }
        caller.check(s)?;
        if s.retrieved {
            return Err(Error::AlreadyRetrieved(name.to_owned()));
        }
        s.retrieved = true;
        Ok(id)
    }

    // ----- session commands ------------------------------------------------------

    /// GET_STATE on a session.
    ///
    /// # Errors
    /// `EACCES` for a stranger, `EBADF` for a released session.
    pub fn session_state(&mut self, id: SessionId, caller: Caller) -> Result<State> {
        Ok(self.session_for(id, caller)?.state)
    }

    /// SET_EVENT on a session (SPEC §5), independent of the global state.
    ///
    /// # Errors
    /// `EACCES`, `EBADF`; `EINVAL` for an unknown event; `EBUSY` for PREPARE or
    /// FREEZE out of place; a handler's error when PREPARE or FREEZE fails (see the
    /// module docs of [`crate::session`] for what is left behind).
    pub fn session_event(&mut self, id: SessionId, raw_event: u32, caller: Caller) -> Result<()> {
        self.settle_all();
        let global = self.state;
        let s = self.session_for(id, caller)?;
        let event = Event::try_from(raw_event).map_err(|_| Error::UnknownEvent(raw_event))?;
        match session::transition(s.state, event) {
            Transition::Busy => Err(busy(s, global, event.name())),
            Transition::NoOp => Ok(()),
            Transition::Run {
                event: Event::Prepare,
                ..
            } => s.prepare(),
            Transition::Run {
                event: Event::Freeze,
                ..
            } => s.freeze(),
            Transition::Run {
                event: Event::Cancel,
                ..
            } => {
                s.cancel();
                Ok(())
            }
            Transition::Run {
                event: Event::Finish,
                ..
            } => {
                let dropped = s.finish();
                self.drop_files(dropped);
                Ok(())
            }
        }
    }

    /// PRESERVE_FD: keep `fd` in the session under `token`.
    ///
    /// The orchestrator takes `fd`; on any error it is closed before returning.
    ///
    /// # Errors
    /// `EACCES`, `EBADF` (released session); `EBUSY` unless global NORMAL or UPDATED
    /// and the session NORMAL; `EBADF` without an fd; `ENOENT` when no handler takes
    /// it (or it is one of the daemon's own handles); `EEXIST` for a token already in
    /// the session; `EBUSY` when the same file is preserved anywhere; `ENOSPC` at a
    /// limit; a handler's error from `preserve`.
    pub fn preserve_fd(
        &mut self,
        id: SessionId,
        token: u64,
        fd: Option<OwnedFd>,
        caller: Caller,
    ) -> Result<()> {
        self.preserve_fd_refusing(id, token, fd, caller, |_| false)
    }

    /// [`preserve_fd`](Self::preserve_fd), also refusing with `ENOENT` the files
    /// `own` says are the caller's own handles (the daemon's sockets, say), as
    /// unsupported. `own` sees the file already looked at, so it can skip
    /// system calls for files of the wrong type.
    ///
    /// # Errors
    /// As [`preserve_fd`](Self::preserve_fd).
    pub fn preserve_fd_refusing(
        &mut self,
        id: SessionId,
        token: u64,
        fd: Option<OwnedFd>,
        caller: Caller,
        own: impl FnOnce(&FileInfo<'_>) -> bool,
    ) -> Result<()> {
        // The duplicate check below needs every carried file's identity.
        self.settle_all();
        let global = self.state;
        let s = self.sessions.get(&id).ok_or(Error::StaleHandle(id.0))?;
        caller.check(s)?;
        if !files_may_change(global, s) {
            return Err(busy(s, global, "preserve"));
        }
        let fd = fd.ok_or(Error::NoFd)?;
        let info = FileInfo::new(fd.as_fd()).map_err(Error::Os)?;
        let Some(handler) = self.registry.find(&info).cloned() else {
            return Err(Error::Unsupported(describe_kind(info.stat())));
        };
        let key = FileKey::of_info(&info);
        if self.reserved.contains(&key) || own(&info) {
            return Err(Error::Unsupported(describe_kind(info.stat())));
        }
        if s.file_index(token).is_some() {
            return Err(Error::TokenExists(token));
        }
        if let Some(&(other, other_token)) = self.preserved.get(&key) {
            let session = self
                .sessions
                .get(&other)
                .map(|o| o.name.clone())
                .unwrap_or_default();
            return Err(Error::AlreadyPreserved {
                session,
                token: other_token,
            });
        }
        if s.files.len() >= self.limits.files_per_session {
            return Err(Error::Limit("files per session"));
        }
        if self.preserved.len() >= self.limits.files_total {
            return Err(Error::Limit("preserved files"));
        }
        let data = handler.preserve(&info).map_err(|source| Error::Handler {
            compatible: handler.compatible().to_owned(),
            op: "preserve",
            token,
            source,
        })?;
        drop(info);
        let file = PreservedFile {
            token,
            handler,
            fd,
            key: Some(key),
            data,
            restored: false,
            refused: None,
        };
        self.preserved.insert(key, (id, token));
        self.sessions
            .get_mut(&id)
            .expect("looked up above")
            .files
            .push(file);
        Ok(())
    }

    /// UNPRESERVE_FD: stop preserving `token`; the daemon closes its reference.
    ///
    /// # Errors
    /// `EACCES`, `EBADF`; `EBUSY` unless global NORMAL or UPDATED and the session
    /// NORMAL; `ENOENT` for an unknown token.
    pub fn unpreserve_fd(&mut self, id: SessionId, token: u64, caller: Caller) -> Result<()> {
        let global = self.state;
        let s = self.session_for(id, caller)?;
        if !files_may_change(global, s) {
            return Err(busy(s, global, "unpreserve"));
        }
        let idx = s.file_index(token).ok_or(Error::NoSuchToken(token))?;
        let file = s.files.remove(idx);
        self.drop_file(file);
        Ok(())
    }

    /// RESTORE_FD: a new fd to the preserved file `token`.
    ///
    /// # Errors
    /// `EACCES`, `EBADF`; `EBUSY` unless global and session UPDATED; `ENOENT` for
    /// an unknown token; `EADDRINUSE` when already restored; `EIO` when the file
    /// changed after FREEZE; a handler's error from `retrieve`.
    pub fn restore_fd(&mut self, id: SessionId, token: u64, caller: Caller) -> Result<OwnedFd> {
        let global = self.state;
        let s = self.sessions.get_mut(&id).ok_or(Error::StaleHandle(id.0))?;
        caller.check(s)?;
        if global != State::Updated || s.state != State::Updated {
            return Err(busy(s, global, "restore"));
        }
        let idx = s.file_index(token).ok_or(Error::NoSuchToken(token))?;
        let file = &mut s.files[idx];
        if file.restored {
            return Err(Error::AlreadyRestored(token));
        }
        if !file.settled() {
            settle_file(id, file, &mut self.preserved);
        }
        let fd = file.retrieve()?;
        file.restored = true;
        Ok(fd)
    }

    /// The last handle of a session closed: cancel (PREPARED, FROZEN) or finish
    /// (UPDATED), unpreserve every file in reverse, and forget the session. An
    /// unknown id (already released) is ignored.
    pub fn release_session(&mut self, id: SessionId) {
        let Some(mut s) = self.sessions.remove(&id) else {
            return;
        };
        self.unsettled.remove(&id);
        self.names.remove(&s.name);
        let dropped = match s.state {
            State::Prepared | State::Frozen => {
                s.cancel();
                Vec::new()
            }
            State::Updated => s.finish(),
            State::Normal | State::Undefined => Vec::new(),
        };
        self.drop_files(dropped);
        tracing::debug!(session = %s.name, state = %s.state, files = s.files.len(), "released");
        let files = std::mem::take(&mut s.files);
        self.drop_files(files);
    }

    // ----- the live update ---------------------------------------------------------

    /// Step 1 of the live update: freeze every PREPARED session in creation order
    /// (FROZEN ones stay) and enter global FROZEN.
    ///
    /// # Errors
    /// `EINVAL` unless global PREPARED. If a session fails to freeze, the ones this
    /// call froze are unfrozen in reverse, every session is cancelled, the global
    /// state returns to NORMAL, and the freeze error is returned.
    pub fn freeze_for_update(&mut self) -> Result<UpdateFreeze> {
        self.settle_all();
        if self.state != State::Prepared {
            return Err(Error::UpdateNotPrepared(self.state));
        }
        let prepared: Vec<SessionId> = self
            .sessions
            .values()
            .filter(|s| s.state == State::Prepared)
            .map(|s| s.id)
            .collect();
        if self.freezes_in_parallel() {
            if let Err(e) = self.freeze_files_in_parallel() {
                tracing::warn!(error = %e, "freeze failed; cancelling the update");
                self.cancel_all();
                self.state = State::Normal;
                return Err(e);
            }
            for s in self.sessions.values_mut() {
                if s.state == State::Prepared {
                    s.state = State::Frozen;
                }
            }
            self.state = State::Frozen;
            return Ok(UpdateFreeze { frozen: prepared });
        }
        let mut frozen = Vec::new();
        for id in prepared {
            let s = self.sessions.get_mut(&id).expect("listed above");
            if let Err(e) = s.freeze() {
                tracing::warn!(session = %s.name, error = %e, "freeze failed; cancelling the update");
                for id in frozen.iter().rev() {
                    self.sessions.get_mut(id).expect("listed above").unfreeze();
                }
                self.cancel_all();
                self.state = State::Normal;
                return Err(e);
            }
            frozen.push(id);
        }
        self.state = State::Frozen;
        Ok(UpdateFreeze { frozen })
    }

    /// Whether the update's freeze may run on several CPUs: enough files to pay
    /// for the threads, every one of them with a local freeze.
    fn freezes_in_parallel(&self) -> bool {
        let mut files = self
            .sessions
            .values()
            .filter(|s| s.state == State::Prepared)
            .flat_map(|s| &s.files);
        cpus() > 1
            && files.clone().count() >= PARALLEL_FREEZE_FILES
            && files.all(|f| f.handler.freeze_is_local())
    }

    /// Freeze the files of every PREPARED session, split in order over one
    /// thread per CPU. The outcome is the sequential one (each freeze is local):
    /// on a failure every file that froze is unfrozen, in reverse order, and the
    /// first error in preservation order is returned; the caller cancels.
    fn freeze_files_in_parallel(&mut self) -> Result<()> {
        let mut files: Vec<&mut PreservedFile> = self
            .sessions
            .values_mut()
            .filter(|s| s.state == State::Prepared)
            .flat_map(|s| s.files.iter_mut())
            .collect();
        let threads = cpus().min(4);
        let per_thread = files.len().div_ceil(threads).max(1);
        // How many of `part` froze, and the error that stopped it.
        let freeze_part = |part: &mut [&mut PreservedFile]| {
            for (i, f) in part.iter_mut().enumerate() {
                if let Err(e) = f.freeze() {
                    return (i, Some(e));
                }
            }
            (part.len(), None)
        };
        let outcomes: Vec<(usize, Option<Error>)> = std::thread::scope(|scope| {
            let mut parts = files.chunks_mut(per_thread);
            // The first part on this thread, the others on one thread each.
            let first = parts.next();
            let workers: Vec<_> = parts
                .map(|part| scope.spawn(move || freeze_part(part)))
                .collect();
            first
                .map(freeze_part)
                .into_iter()
                .chain(
                    workers
                        .into_iter()
                        .map(|w| w.join().expect("a freeze thread panicked")),
                )
                .collect()
        });
        if outcomes.iter().all(|(_, error)| error.is_none()) {
            return Ok(());
        }
        let mut first_error = None;
        let mut chunks: Vec<_> = files.chunks_mut(per_thread).zip(outcomes).collect();
        for (part, (frozen, error)) in chunks.iter_mut().rev() {
            part[..*frozen].iter_mut().rev().for_each(|f| f.unfreeze());
            if error.is_some() {
                first_error = error.take();
            }
        }
        Err(first_error.expect("one part failed"))
    }

    /// Undo a [`freeze_for_update`](Self::freeze_for_update) whose update did not
    /// happen: the sessions it froze go back to PREPARED, and so does the global state.
    pub fn thaw(&mut self, freeze: UpdateFreeze) {
        for id in freeze.frozen.iter().rev() {
            if let Some(s) = self
                .sessions
                .get_mut(id)
                .filter(|s| s.state == State::Frozen)
            {
                s.unfreeze();
            }
        }
        if self.state == State::Frozen {
            self.state = State::Prepared;
        }
    }

    /// Step 2: the image of everything that crosses the update, and the fds to
    /// carry with it, in `fd_index` order. Only FROZEN sessions are carried.
    ///
    /// `previous_exe` is the binary to fall back to should the next one fail.
    ///
    /// # Errors
    /// `EINVAL` unless global FROZEN (after [`freeze_for_update`](Self::freeze_for_update)).
    pub fn handover(&self, previous_exe: &str) -> Result<(Handover, Vec<BorrowedFd<'_>>)> {
        let (view, fds) = self.handover_view(previous_exe)?;
        Ok((view.to_owned(), fds))
    }

    /// [`handover`](Self::handover) as a view borrowing this orchestrator's own
    /// data: the same image bytes without a copy of each file's data.
    ///
    /// # Errors
    /// As [`handover`](Self::handover).
    pub fn handover_view<'a: 'b, 'b>(
        &'a self,
        previous_exe: &'b str,
    ) -> Result<(HandoverRef<'b>, Vec<BorrowedFd<'a>>)> {
        if self.state != State::Frozen {
            return Err(Error::UpdateNotPrepared(self.state));
        }
        let mut fds = Vec::with_capacity(self.preserved_count());
        let mut sessions = Vec::new();
        for s in self.sessions.values().filter(|s| s.state == State::Frozen) {
            let files = s
                .files
                .iter()
                .map(|f| {
                    let fd_index =
                        u32::try_from(fds.len()).map_err(|_| Error::Limit("preserved files"))?;
                    fds.push(f.fd.as_fd());
                    Ok(FileImageRef {
                        token: f.token,
                        compatible: f.compatible(),
                        data: &f.data,
                        fd_index,
                    })
                })
                .collect::<Result<Vec<_>>>()?;
            sessions.push(SessionImageRef {
                name: &s.name,
                owner: s.owner,
                files,
            });
        }
        let image = HandoverRef {
            epoch: self.epoch + 1,
            previous_exe,
            sessions,
        };
        Ok((image, fds))
    }

    /// Step 6: the next epoch's orchestrator, in UPDATED, from a decoded image and
    /// the fds carried with it (in `fd_index` order).
    ///
    /// Nothing is built unless the image fits: one fd per file, every index used
    /// once, each file's handler registered. Those checks make no system call,
    /// so they cost little per file. The rest (the handler's reading of the data
    /// and look at the fd, the file's identity for the duplicate check) is
    /// deferred: [`settle`](Self::settle) does it in batches once the
    /// epoch serves, RESTORE_FD does it first for the file it restores, and
    /// anything that needs every identity (PRESERVE_FD, PREPARE, FREEZE, an
    /// update) settles everything first. The blackout of a live update ends at
    /// the first RESTORE_FD, so it no longer grows with these checks. On failure
    /// the fds are handed back untouched, so the caller can still carry them
    /// elsewhere (the rollback of SPEC §7 step 6).
    ///
    /// # Errors
    /// [`HandoverFailure`]: `EIO` ([`Error::Handover`]) for an image that does
    /// not fit the fds or the registry, with the fds.
    pub fn from_handover(
        image: &Handover,
        fds: Vec<OwnedFd>,
        registry: HandlerRegistry,
        limits: Limits,
    ) -> Result<Self, HandoverFailure> {
        Self::from_handover_view(&image.view(), fds, registry, limits)
    }

    /// [`from_handover`](Self::from_handover) from an image decoded as a view
    /// ([`HandoverRef::decode`]), copying each file's data once.
    ///
    /// # Errors
    /// As [`from_handover`](Self::from_handover).
    pub fn from_handover_view(
        image: &HandoverRef<'_>,
        fds: Vec<OwnedFd>,
        registry: HandlerRegistry,
        limits: Limits,
    ) -> Result<Self, HandoverFailure> {
        if let Err(error) = Self::check_handover(image, fds.len(), &registry) {
            return Err(HandoverFailure { error, fds });
        }
        let mut slots: Vec<Option<OwnedFd>> = fds.into_iter().map(Some).collect();
        let take = |i: usize| slots.get_mut(i).and_then(Option::take);
        Ok(Self::build(image, take, registry, limits)
            .expect("check_handover proved every fd there"))
    }

    /// [`from_handover_view`](Self::from_handover_view) for fds still arriving:
    /// `fd(i)` returns the fd of index `i`, waiting for it as long as it takes,
    /// or `None` if it never comes. The building overlaps the arrival (a
    /// live update's new epoch receives the fds on another thread).
    ///
    /// # Errors
    /// `EIO` ([`Error::Handover`]) for an image that does not fit `fd_count` fds
    /// or the registry, before any `fd` call (so every fd is still the
    /// caller's), or for an fd that never came.
    pub fn from_handover_view_arriving(
        image: &HandoverRef<'_>,
        fd_count: usize,
        fd: impl FnMut(usize) -> Option<OwnedFd>,
        registry: HandlerRegistry,
        limits: Limits,
    ) -> Result<Self> {
        Self::check_handover(image, fd_count, &registry)?;
        Self::build(image, fd, registry, limits)
    }

    /// The orchestrator of an image [`check_handover`](Self::check_handover)
    /// accepted, each file with the fd `fd(fd_index)` gives.
    fn build(
        image: &HandoverRef<'_>,
        mut fd: impl FnMut(usize) -> Option<OwnedFd>,
        registry: HandlerRegistry,
        limits: Limits,
    ) -> Result<Self> {
        let mut o = Orchestrator::new(registry, limits);
        o.state = State::Updated;
        o.epoch = image.epoch;
        // Ids never repeat across epochs, so a handle of the previous epoch can
        // never name a session of this one: it is stale (SPEC §5, §7 step 4).
        o.next_id = (image.epoch << 32) | 1;
        for si in &image.sessions {
            let id = SessionId(o.next_id);
            o.next_id += 1;
            let mut s = Session::new(id, si.name.to_owned(), si.owner);
            s.state = State::Updated;
            s.incoming = true;
            s.files.reserve_exact(si.files.len());
            for fi in &si.files {
                let Some(fd) = fd(fi.fd_index as usize) else {
                    let msg = format!("fd index {} never arrived", fi.fd_index);
                    return Err(crate::handover::HandoverError::Invalid(msg).into());
                };
                // check_handover proved every handler registered.
                let Some(handler) = o.registry.by_compatible(fi.compatible).cloned() else {
                    unreachable!("checked by check_handover");
                };
                s.files.push(PreservedFile {
                    token: fi.token,
                    handler,
                    fd,
                    key: None,
                    data: fi.data.to_vec(),
                    restored: false,
                    refused: None,
                });
            }
            if !s.files.is_empty() {
                o.unsettled.insert(id);
            }
            o.names.insert(s.name.clone(), id);
            o.sessions.insert(id, s);
        }
        Ok(o)
    }

    /// Everything [`from_handover`](Self::from_handover) needs to hold before it
    /// builds anything, checked without a system call.
    fn check_handover(
        image: &HandoverRef<'_>,
        fds: usize,
        registry: &HandlerRegistry,
    ) -> Result<()> {
        use crate::handover::HandoverError as H;
        if fds != image.fd_count() {
            let msg = format!("{fds} fds carried, image has {}", image.fd_count());
            return Err(H::Invalid(msg).into());
        }
        let mut used = vec![false; fds];
        for fi in image.sessions.iter().flat_map(|s| &s.files) {
            let slot = fi.fd_index as usize;
            if used.get(slot) != Some(&false) {
                return Err(H::Invalid(format!("fd index {slot} out of range or reused")).into());
            }
            used[slot] = true;
            // Each file's data is read by its handler in the deferred check
            // (`settle`), as it looks at the fd; the dry run of this binary
            // already read every one before the exec.
            fi.handler(registry)?;
        }
        Ok(())
    }

    /// Whether files carried by the live update still await their check.
    #[must_use]
    pub fn unsettled(&self) -> bool {
        !self.unsettled.is_empty()
    }

    /// Check up to `budget` carried files, in creation order: the handler looks
    /// at the fd (is it still the kind of file its data describes?) and the
    /// file's identity joins the duplicate index. A file that fails is refused
    /// (every RESTORE_FD of it fails with the reason) rather than served; a file
    /// whose identity another carried file already has is refused with `EIO`.
    /// Returns how many files were checked; 0 when everything is settled.
    pub fn settle(&mut self, budget: usize) -> usize {
        let mut done = 0;
        while done < budget {
            let Some(&id) = self.unsettled.first() else {
                break;
            };
            let mut finished = true;
            if let Some(s) = self.sessions.get_mut(&id) {
                for file in &mut s.files {
                    if file.settled() {
                        continue;
                    }
                    if done == budget {
                        finished = false;
                        break;
                    }
                    settle_file(id, file, &mut self.preserved);
                    done += 1;
                }
            }
            if finished {
                self.unsettled.remove(&id);
            }
        }
        done
    }

    /// [`settle`](Self::settle) everything.
    fn settle_all(&mut self) {
        while self.unsettled() {
            self.settle(usize::MAX);
        }
    }
}

/// The deferred check of one carried file (see [`Orchestrator::settle`]).
fn settle_file(
    id: SessionId,
    file: &mut PreservedFile,
    preserved: &mut HashMap<FileKey, (SessionId, u64)>,
) {
    let checked = file
        .handler
        .deserialize(Some(file.fd.as_fd()), &file.data)
        .and_then(|()| FileKey::of(file.fd.as_fd()));
    match checked {
        Ok(key) if !preserved.contains_key(&key) => {
            preserved.insert(key, (id, file.token));
            file.key = Some(key);
        }
        Ok(_) => {
            tracing::warn!(
                token = file.token,
                "a file carried twice; refusing the second"
            );
            file.refused = Some(luo_uapi::Errno::IO);
        }
        Err(errno) => {
            tracing::warn!(token = file.token, compatible = file.compatible(), %errno, "a carried file fails its check; refusing it");
            file.refused = Some(errno);
        }
    }
}

/// A refused handover, with the fds it was given: nothing was built, nothing closed.
#[derive(Debug)]
pub struct HandoverFailure {
    /// Why.
    pub error: Error,
    /// The fds, as they were passed in.
    pub fds: Vec<OwnedFd>,
}

impl std::fmt::Display for HandoverFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.error.fmt(f)
    }
}

impl std::error::Error for HandoverFailure {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.error.source()
    }
}

/// SPEC §5: 1 to 55 bytes (the 56th is the NUL), no NUL inside.
fn validate_name(name: &str) -> Result<()> {
    if name.is_empty() || name.len() >= luo_uapi::rfc_v4::SESSION_NAME_LENGTH || name.contains('\0')
    {
        return Err(Error::InvalidName);
    }
    Ok(())
}

fn describe_kind(stat: &rustix::fs::Stat) -> String {
    use rustix::fs::FileType;
    let kind = match FileType::from_raw_mode(stat.st_mode) {
        FileType::RegularFile => "a regular file",
        FileType::Directory => "a directory",
        FileType::CharacterDevice => "a character device",
        FileType::BlockDevice => "a block device",
        FileType::Symlink => "a symlink",
        FileType::Fifo => "a fifo",
        FileType::Socket => "a socket",
        FileType::Unknown => "an anonymous file",
    };
    kind.to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every (global state, event) pair of SPEC §4.
    #[test]
    fn global_transition_table() {
        use GlobalTransition::{FreezeNotSupported as NoFreeze, WrongState as Wrong};
        use State::*;
        let run = |event, to| GlobalTransition::Run { event, to };
        let table = [
            (Undefined, Event::Prepare, Wrong),
            (Normal, Event::Prepare, run(Event::Prepare, Prepared)),
            (Prepared, Event::Prepare, Wrong),
            (Frozen, Event::Prepare, Wrong),
            (Updated, Event::Prepare, Wrong),
            (Undefined, Event::Freeze, NoFreeze),
            (Normal, Event::Freeze, NoFreeze),
            (Prepared, Event::Freeze, NoFreeze),
            (Frozen, Event::Freeze, NoFreeze),
            (Updated, Event::Freeze, NoFreeze),
            (Undefined, Event::Cancel, Wrong),
            (Normal, Event::Cancel, Wrong),
            (Prepared, Event::Cancel, run(Event::Cancel, Normal)),
            (Frozen, Event::Cancel, run(Event::Cancel, Normal)),
            (Updated, Event::Cancel, Wrong),
            (Undefined, Event::Finish, Wrong),
            (Normal, Event::Finish, Wrong),
            (Prepared, Event::Finish, Wrong),
            (Frozen, Event::Finish, Wrong),
            (Updated, Event::Finish, run(Event::Finish, Normal)),
        ];
        assert_eq!(table.len(), State::ALL.len() * Event::ALL.len());
        for (state, event, want) in table {
            assert_eq!(global_transition(state, event), want, "{state} + {event}");
        }
    }
}
