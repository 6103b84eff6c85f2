//! A session: a named, owned list of preserved files with its own state machine.
//!
//! ```text
//!            PREPARE           FREEZE
//!   NORMAL ──────────▶ PREPARED ──────▶ FROZEN ──(live update)──▶ UPDATED
//!     ▲   ◀──────────────┴─────────────────┘  CANCEL                 │
//!     └───────────────────────────────────────────────────────────────┘ FINISH
//! ```
//!
//! The pure function [`transition`] decides what an event does in a state; the
//! [`Session`] methods apply it to the files, all-or-nothing:
//!
//! - PREPARE fails → the prepared prefix is cancelled in reverse, state stays NORMAL.
//! - FREEZE fails → the frozen prefix is unfrozen in reverse, every file is
//!   cancelled, and the session goes back to NORMAL (as the seed's
//!   `luo_session_freeze_one` does).
//! - CANCEL or FINISH in a state they do not apply to are silent no-ops.
//! - FINISH drops the files nobody restored; restored files stay preserved and ride
//!   the next update too (continuous preservation).
//!
//! Release (the last handle closing) is the orchestrator's: it cancels or finishes
//! first, then unpreserves what is left, in reverse.

use luo_uapi::rfc_v4::{Event, State};

use crate::Result;
use crate::preserved_file::{self, PreservedFile};

/// An orchestrator-wide session number, in creation order; never reused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionId(pub u64);

/// What a per-session event does, decided from the state alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    /// Run the event's effect; on success the session is in `to`.
    Run {
        /// The event to apply.
        event: Event,
        /// The state after success.
        to: State,
    },
    /// Nothing to do, and no error (CANCEL or FINISH out of place).
    NoOp,
    /// Refused with EBUSY (PREPARE or FREEZE out of place).
    Busy,
}

/// The session state machine of SPEC §5, as a pure function.
#[must_use]
pub const fn transition(state: State, event: Event) -> Transition {
    use State::{Frozen, Normal, Prepared, Undefined, Updated};
    match (state, event) {
        (Normal, Event::Prepare) => Transition::Run {
            event,
            to: Prepared,
        },
        (Undefined | Prepared | Frozen | Updated, Event::Prepare) => Transition::Busy,
        (Prepared, Event::Freeze) => Transition::Run { event, to: Frozen },
        (Undefined | Normal | Frozen | Updated, Event::Freeze) => Transition::Busy,
        (Prepared | Frozen, Event::Cancel) => Transition::Run { event, to: Normal },
        (Undefined | Normal | Updated, Event::Cancel) => Transition::NoOp,
        (Updated, Event::Finish) => Transition::Run { event, to: Normal },
        (Undefined | Normal | Prepared | Frozen, Event::Finish) => Transition::NoOp,
    }
}

/// A session and its files.
#[derive(Debug)]
pub struct Session {
    pub(crate) id: SessionId,
    pub(crate) name: String,
    pub(crate) owner: u32,
    pub(crate) state: State,
    /// Came from the previous epoch's handover.
    pub(crate) incoming: bool,
    /// An incoming session that RETRIEVE_SESSION has handed out.
    pub(crate) retrieved: bool,
    /// In preservation order.
    pub(crate) files: Vec<PreservedFile>,
}

impl Session {
    pub(crate) fn new(id: SessionId, name: String, owner: u32) -> Self {
        Session {
            id,
            name,
            owner,
            state: State::Normal,
            incoming: false,
            retrieved: false,
            files: Vec::new(),
        }
    }

    /// The session's id.
    #[must_use]
    pub fn id(&self) -> SessionId {
        self.id
    }

    /// The session's name.
    #[must_use]
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The uid that created it.
    #[must_use]
    pub fn owner(&self) -> u32 {
        self.owner
    }

    /// Its state.
    #[must_use]
    pub fn state(&self) -> State {
        self.state
    }

    /// Whether it came from the previous epoch.
    #[must_use]
    pub fn incoming(&self) -> bool {
        self.incoming
    }

    /// Whether it was retrieved in this epoch.
    #[must_use]
    pub fn retrieved(&self) -> bool {
        self.retrieved
    }

    /// Its files, in preservation order.
    #[must_use]
    pub fn files(&self) -> &[PreservedFile] {
        &self.files
    }

    pub(crate) fn file_index(&self, token: u64) -> Option<usize> {
        self.files.iter().position(|f| f.token == token)
    }

    /// NORMAL → PREPARED. The caller checked the state.
    pub(crate) fn prepare(&mut self) -> Result<()> {
        debug_assert_eq!(self.state, State::Normal);
        preserved_file::prepare_all(&mut self.files)?;
        self.state = State::Prepared;
        Ok(())
    }

    /// PREPARED → FROZEN; on failure every file is cancelled and the session is NORMAL.
    pub(crate) fn freeze(&mut self) -> Result<()> {
        debug_assert_eq!(self.state, State::Prepared);
        if let Err(e) = preserved_file::freeze_all(&mut self.files) {
            preserved_file::cancel_all(&mut self.files);
            self.state = State::Normal;
            return Err(e);
        }
        self.state = State::Frozen;
        Ok(())
    }

    /// FROZEN → PREPARED: a live update that froze this session did not happen.
    pub(crate) fn unfreeze(&mut self) {
        debug_assert_eq!(self.state, State::Frozen);
        preserved_file::unfreeze_all(&mut self.files);
        self.state = State::Prepared;
    }

    /// PREPARED or FROZEN → NORMAL.
    pub(crate) fn cancel(&mut self) {
        if self.state == State::Frozen {
            preserved_file::unfreeze_all(&mut self.files);
        }
        preserved_file::cancel_all(&mut self.files);
        self.state = State::Normal;
    }

    /// UPDATED → NORMAL. Returns the files nobody restored, for the caller to drop.
    pub(crate) fn finish(&mut self) -> Vec<PreservedFile> {
        debug_assert_eq!(self.state, State::Updated);
        preserved_file::finish_all(&mut self.files);
        let (kept, dropped) = std::mem::take(&mut self.files)
            .into_iter()
            .partition(|f| f.restored);
        self.files = kept;
        for f in &mut self.files {
            f.restored = false;
        }
        self.state = State::Normal;
        self.incoming = false;
        dropped
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every (state, event) pair, with its expected outcome.
    #[test]
    fn transition_table() {
        use State::*;
        use Transition::{Busy, NoOp};
        let run = |event, to| Transition::Run { event, to };
        let table = [
            (Undefined, Event::Prepare, Busy),
            (Normal, Event::Prepare, run(Event::Prepare, Prepared)),
            (Prepared, Event::Prepare, Busy),
            (Frozen, Event::Prepare, Busy),
            (Updated, Event::Prepare, Busy),
            (Undefined, Event::Freeze, Busy),
            (Normal, Event::Freeze, Busy),
            (Prepared, Event::Freeze, run(Event::Freeze, Frozen)),
            (Frozen, Event::Freeze, Busy),
            (Updated, Event::Freeze, Busy),
            (Undefined, Event::Cancel, NoOp),
            (Normal, Event::Cancel, NoOp),
            (Prepared, Event::Cancel, run(Event::Cancel, Normal)),
            (Frozen, Event::Cancel, run(Event::Cancel, Normal)),
            (Updated, Event::Cancel, NoOp),
            (Undefined, Event::Finish, NoOp),
            (Normal, Event::Finish, NoOp),
            (Prepared, Event::Finish, NoOp),
            (Frozen, Event::Finish, NoOp),
            (Updated, Event::Finish, run(Event::Finish, Normal)),
        ];
        assert_eq!(table.len(), State::ALL.len() * Event::ALL.len());
        for (state, event, want) in table {
            assert_eq!(transition(state, event), want, "{state} + {event}");
        }
    }
}
