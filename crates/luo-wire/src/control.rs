//! The control protocol (SPEC §8.4): newline-delimited JSON on `control.sock`.
//!
//! One request per line, one reply per line, in order. Every reply has `ok`; a
//! failed one also has `errno` (the positive errno value) and a human `error`.
//! The socket is for operators (`luoctl`): mode 0600, and not subject to the
//! device's exclusivity.
//!
//! ```text
//! → {"op":"status"}
//! ← {"ok":true,"status":{"state":"normal","epoch":0,...}}
//! → {"op":"finish"}
//! ← {"ok":false,"errno":22,"error":"Event finish is not allowed in global state normal"}
//! ```

use serde::{Deserialize, Serialize};

/// The longest request line the daemon reads; longer ones are refused (EINVAL)
/// and the connection is closed.
pub const MAX_CONTROL_LINE: usize = 64 * 1024;

/// A control request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "kebab-case")]
pub enum ControlRequest {
    /// Global state, epoch, and every session with its files.
    Status,
    /// Global PREPARE.
    Prepare,
    /// Global CANCEL.
    Cancel,
    /// Global FINISH.
    Finish,
    /// The daemon's version.
    Version,
    /// The live update (SPEC §7), re-executing `exec` or the running binary.
    Update {
        /// The binary to become; `None` for the running one.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        exec: Option<String>,
    },
    /// The image this epoch was started from, printed readably.
    HandoverDump,
}

/// A control reply. Exactly one payload field is set on success, per request.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ControlReply {
    /// Whether the request succeeded.
    pub ok: bool,
    /// On failure: the errno, positive.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub errno: Option<i32>,
    /// On failure: what went wrong, for a human.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// For `status`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<Status>,
    /// For `version`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// For `handover-dump`: the readable image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dump: Option<String>,
    /// For `update`: what happened.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub update: Option<UpdateReport>,
}

impl ControlReply {
    /// A success with no payload.
    #[must_use]
    pub fn ok() -> Self {
        ControlReply {
            ok: true,
            ..Default::default()
        }
    }

    /// A failure.
    #[must_use]
    pub fn failed(errno: crate::Errno, error: impl Into<String>) -> Self {
        ControlReply {
            ok: false,
            errno: Some(errno.raw_os_error()),
            error: Some(error.into()),
            ..Default::default()
        }
    }
}

/// The daemon's state, as `luoctl status` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    /// Global state name ("normal", "prepared", ...).
    pub state: String,
    /// Live updates this state has been through (`liveupdate-number`).
    pub epoch: u64,
    /// The daemon's pid (it stays across updates, as the machine does across kexec).
    pub pid: u32,
    /// The daemon's version.
    pub version: String,
    /// Open device handles.
    pub device_handles: usize,
    /// Preserved files in all sessions.
    pub preserved_files: usize,
    /// Every session, in creation order.
    pub sessions: Vec<SessionStatus>,
}

/// One session in [`Status`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionStatus {
    /// Its name.
    pub name: String,
    /// Its owner's uid.
    pub owner_uid: u32,
    /// Its state name.
    pub state: String,
    /// Carried from the previous epoch.
    pub incoming: bool,
    /// Retrieved in this epoch.
    pub retrieved: bool,
    /// Its files, in preservation order.
    pub files: Vec<FileStatus>,
}

/// One preserved file in [`SessionStatus`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileStatus {
    /// The caller's token.
    pub token: u64,
    /// The handler's compatible string.
    pub handler: String,
    /// A short description ("memfd 64 MiB", "tcp listen 127.0.0.1:8080").
    pub description: String,
    /// Restored in this epoch.
    pub restored: bool,
}

/// The outcome of a successful `update`, as the new epoch reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpdateReport {
    /// The epoch now running.
    pub epoch: u64,
    /// The binary now running.
    pub exe: String,
    /// Sessions carried.
    pub sessions: usize,
    /// Files carried.
    pub files: usize,
    /// Microseconds from the request to the new epoch serving.
    pub blackout_us: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_tagged_by_op() {
        let json = serde_json::to_string(&ControlRequest::Update {
            exec: Some("/x".into()),
        })
        .expect("json");
        assert_eq!(json, r#"{"op":"update","exec":"/x"}"#);
        assert_eq!(
            serde_json::to_string(&ControlRequest::HandoverDump).expect("json"),
            r#"{"op":"handover-dump"}"#
        );
        let back: ControlRequest = serde_json::from_str(r#"{"op":"update"}"#).expect("parse");
        assert_eq!(back, ControlRequest::Update { exec: None });
    }

    #[test]
    fn failures_carry_errno_and_error() {
        let json =
            serde_json::to_string(&ControlReply::failed(crate::Errno::INVAL, "no")).expect("json");
        assert_eq!(json, r#"{"ok":false,"errno":22,"error":"no"}"#);
    }
}
