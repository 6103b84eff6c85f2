//! A preserved file, and the list operations a session runs over its files.
//!
//! Order is the contract (SPEC §6): prepare and freeze walk the list in
//! preservation order; cancel, unfreeze, finish and unpreserve walk it in reverse,
//! so teardown unwinds what setup did, like a stack. A failed step undoes the done
//! prefix in reverse before the error returns: no file is left half-changed.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::file_handler::{FileHandler, FileKey};

/// One file held by a session under a token.
#[derive(Debug)]
pub struct PreservedFile {
    pub(crate) token: u64,
    pub(crate) handler: Arc<dyn FileHandler>,
    /// The daemon's own reference: the open file lives as long as this does.
    pub(crate) fd: OwnedFd,
    /// Its identity; `None` for a file carried by a live update until the new
    /// epoch's deferred check has looked at it (see
    /// [`Orchestrator::settle`](crate::Orchestrator::settle)).
    pub(crate) key: Option<FileKey>,
    pub(crate) data: Vec<u8>,
    /// Restored in this epoch (RESTORE_FD succeeded); reset by FINISH.
    pub(crate) restored: bool,
    /// Why the deferred check after a live update refused this file: every
    /// RESTORE_FD of it fails with this errno.
    pub(crate) refused: Option<luo_uapi::Errno>,
}

impl PreservedFile {
    /// The caller's token.
    #[must_use]
    pub fn token(&self) -> u64 {
        self.token
    }

    /// The handler's compatible string.
    #[must_use]
    pub fn compatible(&self) -> &'static str {
        self.handler.compatible()
    }

    /// The identity of the file; `None` while a carried file awaits its check.
    #[must_use]
    pub fn key(&self) -> Option<FileKey> {
        self.key
    }

    /// The daemon's reference to the file.
    #[must_use]
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// The handler's per-file data.
    #[must_use]
    pub fn data(&self) -> &[u8] {
        &self.data
    }

    /// Whether RESTORE_FD has handed it out in this epoch.
    #[must_use]
    pub fn restored(&self) -> bool {
        self.restored
    }

    /// A short description for status output.
    #[must_use]
    pub fn describe(&self) -> String {
        self.handler.describe(self.fd.as_fd(), &self.data)
    }

    fn failed(&self, op: &'static str, source: luo_uapi::Errno) -> Error {
        Error::Handler {
            compatible: self.compatible().to_owned(),
            op,
            token: self.token,
            source,
        }
    }

    /// Whether the deferred check of a carried file is done: it has its
    /// identity, or was refused. Always true for a file preserved in this epoch.
    pub(crate) fn settled(&self) -> bool {
        self.key.is_some() || self.refused.is_some()
    }

    pub(crate) fn retrieve(&self) -> Result<OwnedFd> {
        if let Some(errno) = self.refused {
            return Err(self.failed("retrieve", errno));
        }
        self.handler
            .retrieve(self.fd.as_fd(), &self.data)
            .map_err(|e| self.failed("retrieve", e))
    }

    pub(crate) fn unpreserve(self) {
        self.handler.unpreserve(self.fd.as_fd(), &self.data);
    }

    fn prepare(&mut self) -> Result<()> {
        let r = self.handler.prepare(self.fd.as_fd(), &mut self.data);
        r.map_err(|e| self.failed("prepare", e))
    }

    pub(crate) fn freeze(&mut self) -> Result<()> {
        let r = self.handler.freeze(self.fd.as_fd(), &mut self.data);
        r.map_err(|e| self.failed("freeze", e))
    }

    pub(crate) fn unfreeze(&mut self) {
        self.handler.unfreeze(self.fd.as_fd(), &mut self.data);
    }

    fn cancel(&mut self) {
        self.handler.cancel(self.fd.as_fd(), &mut self.data);
    }

    fn finish(&mut self) {
        self.handler
            .finish(self.fd.as_fd(), &mut self.data, self.restored);
    }
}

/// PREPARE every file in order; on failure cancel the prepared prefix in reverse.
pub(crate) fn prepare_all(files: &mut [PreservedFile]) -> Result<()> {
    for i in 0..files.len() {
        if let Err(e) = files[i].prepare() {
            files[..i].iter_mut().rev().for_each(PreservedFile::cancel);
            return Err(e);
        }
    }
    Ok(())
}

/// FREEZE every file in order; on failure unfreeze the frozen prefix in reverse.
pub(crate) fn freeze_all(files: &mut [PreservedFile]) -> Result<()> {
    for i in 0..files.len() {
        if let Err(e) = files[i].freeze() {
            files[..i]
                .iter_mut()
                .rev()
                .for_each(PreservedFile::unfreeze);
            return Err(e);
        }
    }
    Ok(())
}

/// Unfreeze every file, in reverse.
pub(crate) fn unfreeze_all(files: &mut [PreservedFile]) {
    files.iter_mut().rev().for_each(PreservedFile::unfreeze);
}

/// Cancel every file, in reverse.
pub(crate) fn cancel_all(files: &mut [PreservedFile]) {
    files.iter_mut().rev().for_each(PreservedFile::cancel);
}

/// Finish every file, in reverse, telling each whether it was reclaimed.
pub(crate) fn finish_all(files: &mut [PreservedFile]) {
    files.iter_mut().rev().for_each(PreservedFile::finish);
}
