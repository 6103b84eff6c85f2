//! The engine of luo: LUO's orchestrator, sessions and preserved files (SPEC
//! §4–§7), with no sockets and no long-lived threads (a live update's freeze of
//! many files runs on scoped threads, one per CPU), so tests and fuzzers drive
//! it directly and the daemon wraps it.
//!
//! - [`orchestrator`]: the global state machine, the session table, the live
//!   update's freeze, handover and restore (the kernel's `luo_core.c`).
//! - [`session`]: one session's state machine (`luo_session.c`).
//! - [`preserved_file`]: a preserved file and the ordered list operations
//!   (`luo_file.c`).
//! - [`file_handler`] and [`handlers`]: what each kind of file needs.
//! - [`handover`]: the versioned image that crosses the update.
//! - [`error`]: the one error type, and its errno.

#![forbid(unsafe_code)]

pub mod error;
pub mod file_handler;
pub mod handlers;
pub mod handover;
pub mod orchestrator;
pub mod preserved_file;
pub mod session;

pub use error::{Error, Result};
pub use file_handler::{FileHandler, FileInfo, FileKey, HandlerRegistry};
pub use handover::{Handover, HandoverError};
pub use luo_uapi::rfc_v4::{Event, State};
pub use orchestrator::{Caller, HandoverFailure, Limits, Orchestrator, UpdateFreeze};
pub use session::{Session, SessionId};
