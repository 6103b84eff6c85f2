//! Test doubles for the engine: a handler that records every callback and fails
//! on demand. It preserves real eventfds, so fd accounting is real too.

#![allow(dead_code)]

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::sync::{Arc, Mutex};

use luo_core::{Caller, FileHandler, FileInfo, FileKey, HandlerRegistry, Limits, Orchestrator};
use luo_uapi::Errno;
use rustix::event::{EventfdFlags, eventfd};

/// A callback the recording handler saw: (op, inode of the file).
pub type Call = (&'static str, u64);

/// Accepts eventfds; logs each callback; fails the k-th call of one op.
#[derive(Debug, Default)]
pub struct RecordingHandler {
    pub log: Mutex<Vec<Call>>,
    /// (op, k): the k-th call (0-based) of `op` from now on fails with EIO.
    pub fail: Mutex<Option<(&'static str, usize)>>,
    /// What `freeze_is_local` answers (false: strict order, one thread).
    pub local_freeze: std::sync::atomic::AtomicBool,
}

impl RecordingHandler {
    pub fn fail_at(&self, op: &'static str, k: usize) {
        *self.fail.lock().expect("lock") = Some((op, k));
    }

    pub fn take_log(&self) -> Vec<Call> {
        std::mem::take(&mut *self.log.lock().expect("lock"))
    }

    fn record(&self, op: &'static str, fd: BorrowedFd<'_>) -> Result<(), Errno> {
        let ino = FileKey::of(fd).map(|k| k.ino).unwrap_or(0);
        let mut fail = self.fail.lock().expect("lock");
        if let Some((fop, k)) = *fail {
            if fop == op {
                if k == 0 {
                    *fail = None;
                    return Err(Errno::IO);
                }
                *fail = Some((fop, k - 1));
            }
        }
        self.log.lock().expect("lock").push((op, ino));
        Ok(())
    }
}

fn is_eventfd(fd: BorrowedFd<'_>) -> bool {
    let link = format!("/proc/self/fd/{}", fd.as_raw_fd());
    std::fs::read_link(link)
        .map(|p| p.as_os_str() == "anon_inode:[eventfd]")
        .unwrap_or(false)
}

impl FileHandler for RecordingHandler {
    fn compatible(&self) -> &'static str {
        "test-eventfd-v1"
    }
    fn can_preserve(&self, file: &FileInfo<'_>) -> bool {
        file.link() == Some("anon_inode:[eventfd]")
    }
    fn preserve(&self, file: &FileInfo<'_>) -> Result<Vec<u8>, Errno> {
        self.record("preserve", file.fd())?;
        Ok(b"ok".to_vec())
    }
    fn unpreserve(&self, fd: BorrowedFd<'_>, _data: &[u8]) {
        let _ = self.record("unpreserve", fd);
    }
    fn prepare(&self, fd: BorrowedFd<'_>, _data: &mut Vec<u8>) -> Result<(), Errno> {
        self.record("prepare", fd)
    }
    fn freeze(&self, fd: BorrowedFd<'_>, _data: &mut Vec<u8>) -> Result<(), Errno> {
        self.record("freeze", fd)
    }
    fn freeze_is_local(&self) -> bool {
        self.local_freeze.load(std::sync::atomic::Ordering::Relaxed)
    }
    fn unfreeze(&self, fd: BorrowedFd<'_>, _data: &mut Vec<u8>) {
        let _ = self.record("unfreeze", fd);
    }
    fn cancel(&self, fd: BorrowedFd<'_>, _data: &mut Vec<u8>) {
        let _ = self.record("cancel", fd);
    }
    fn finish(&self, fd: BorrowedFd<'_>, _data: &mut Vec<u8>, reclaimed: bool) {
        let _ = self.record(
            if reclaimed {
                "finish-reclaimed"
            } else {
                "finish"
            },
            fd,
        );
    }
    fn deserialize(&self, fd: Option<BorrowedFd<'_>>, data: &[u8]) -> Result<(), Errno> {
        if data != b"ok" || fd.is_some_and(|fd| !is_eventfd(fd)) {
            return Err(Errno::INVAL);
        }
        Ok(())
    }
    fn retrieve(&self, fd: BorrowedFd<'_>, _data: &[u8]) -> Result<OwnedFd, Errno> {
        self.record("retrieve", fd)?;
        rustix::io::fcntl_dupfd_cloexec(fd, 0)
    }
    fn describe(&self, _fd: BorrowedFd<'_>, _data: &[u8]) -> String {
        "test eventfd".into()
    }
}

pub const ROOT: Caller = Caller::ROOT;
pub const ALICE: Caller = Caller { uid: 1000 };
pub const BOB: Caller = Caller { uid: 1001 };

/// An orchestrator whose only handler is a fresh [`RecordingHandler`].
pub fn orchestrator_with(limits: Limits) -> (Orchestrator, Arc<RecordingHandler>) {
    let h = Arc::new(RecordingHandler::default());
    let mut r = HandlerRegistry::new();
    r.register(h.clone()).expect("register");
    (Orchestrator::new(r, limits), h)
}

pub fn orchestrator() -> (Orchestrator, Arc<RecordingHandler>) {
    orchestrator_with(Limits::default())
}

pub fn efd() -> OwnedFd {
    eventfd(0, EventfdFlags::CLOEXEC).expect("eventfd")
}

pub fn ino(fd: &OwnedFd) -> u64 {
    FileKey::of(fd.as_fd()).expect("fstat").ino
}

/// Open fds of this process.
pub fn open_fds() -> usize {
    // The engine's one fd for the life of the process (/proc/self/fdinfo)
    // belongs to the baseline, whichever test opened it first.
    luo_core::file_handler::warm_up();
    std::fs::read_dir("/proc/self/fd")
        .expect("read /proc/self/fd")
        .count()
}

/// Run a whole live update inside one process: freeze, encode, decode, rebuild
/// from dup'ed fds. Returns the next epoch's orchestrator (the old one is dropped,
/// closing its references, as the exec would).
pub fn live_update(mut o: Orchestrator) -> Orchestrator {
    let registry = o.registry().clone();
    let freeze = o.freeze_for_update().expect("freeze");
    let (image, fds) = o.handover("/proc/self/exe").expect("handover");
    let fds: Vec<OwnedFd> = fds
        .iter()
        .map(|fd| fd.try_clone_to_owned().expect("dup"))
        .collect();
    let bytes = image.encode();
    drop(freeze);
    let image = luo_core::Handover::decode(&bytes).expect("decode");
    let limits = o.limits();
    drop(o);
    Orchestrator::from_handover(&image, fds, registry, limits).expect("from_handover")
}
