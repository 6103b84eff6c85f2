//! File handlers: what a kind of file needs to be preserved, frozen and restored.
//!
//! A [`FileHandler`] mirrors the kernel's `liveupdate_file_ops`. The engine calls
//! it through a preserved file's life:
//!
//! ```text
//! preserve ─ prepare ─ freeze ─(update)─ deserialize ─ retrieve ─ finish(reclaimed)
//!    │          │         └─ unfreeze (a later step failed, or rollback)
//!    │          └─ cancel (CANCEL, a later prepare failed, release)
//!    └─ unpreserve (UNPRESERVE_FD, release)
//! ```
//!
//! Each handler's per-file state is an opaque byte string (`data`) that it alone
//! encodes and decodes; it crosses the live update inside the handover image under
//! the handler's [`compatible`](FileHandler::compatible) string, which names its
//! format version ("memfd-v1").
//!
//! Handlers recognise a file from the fd alone (fstat, fcntl, the `/proc/self/fd`
//! link) and never do anything that could block on a client's fd: no read of a
//! FUSE file, no open of a FIFO.

use std::cell::OnceCell;
use std::fmt;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};

use luo_uapi::Errno;
use rustix::fs::Stat;

/// The identity of a file: two fds with the same key are the same file, whichever
/// process opened them.
///
/// For most files that is the inode (`st_dev`, `st_ino`). Anonymous-inode files
/// (eventfd, timerfd, signalfd, ...) all share one inode, so for them `instance`
/// tells files apart: the `eventfd-id` the kernel reports in fdinfo, or, for kinds
/// without such an id, a number unique to this call (their duplicates cannot be
/// recognised).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FileKey {
    /// `st_dev`.
    pub dev: u64,
    /// `st_ino`.
    pub ino: u64,
    /// 0, or which anonymous-inode file this is.
    pub instance: u64,
}

impl FileKey {
    /// The key of a file already looked at.
    #[must_use]
    pub fn of_info(file: &FileInfo<'_>) -> Self {
        #[allow(clippy::useless_conversion, clippy::unnecessary_cast)]
        let (dev, ino) = (file.stat.st_dev as u64, file.stat.st_ino as u64);
        let instance = if file.is_anon_inode() {
            anon_instance(file)
        } else {
            0
        };
        FileKey { dev, ino, instance }
    }

    /// The key of `fd`.
    ///
    /// # Errors
    /// The errno of `fstat`.
    pub fn of(fd: BorrowedFd<'_>) -> Result<Self, Errno> {
        Ok(Self::of_info(&FileInfo::new(fd)?))
    }
}

/// (`st_dev`, `st_ino`) of the kernel's shared anonymous inode, learnt once.
fn anon_inode() -> Option<(u64, u64)> {
    static ANON: OnceLock<Option<(u64, u64)>> = OnceLock::new();
    *ANON.get_or_init(|| {
        let fd = rustix::event::eventfd(0, rustix::event::EventfdFlags::CLOEXEC).ok()?;
        let st = rustix::fs::fstat(&fd).ok()?;
        #[allow(clippy::useless_conversion, clippy::unnecessary_cast)]
        Some((st.st_dev as u64, st.st_ino as u64))
    })
}

/// The `*-id:` field of the file's fdinfo (`eventfd-id:`), or a fresh number no
/// other file gets.
fn anon_instance(file: &FileInfo<'_>) -> u64 {
    static UNIQUE: AtomicU64 = AtomicU64::new(1 << 63);
    file.fdinfo_read()
        .and_then(|info| info.id)
        .map_or_else(|| UNIQUE.fetch_add(1, Ordering::Relaxed), |id| id + 1)
}

/// A file a client offers for preservation, looked at once: its fstat, and
/// (on first use, then cached) its `/proc/self/fd` link and its fdinfo. Every
/// handler's check and the file's [`FileKey`] share these, so a PRESERVE_FD
/// costs each lookup at most once, whichever handlers are asked.
#[derive(Debug)]
pub struct FileInfo<'a> {
    fd: BorrowedFd<'a>,
    stat: Stat,
    open: OnceCell<bool>,
    link: OnceCell<Option<String>>,
    fdinfo: OnceCell<Option<Box<Fdinfo>>>,
}

/// Bytes of fdinfo kept. The whole fdinfo of every preservable anonymous-inode
/// kind fits (eventfd, timerfd, signalfd and pidfd: 70 to 120 bytes); files
/// whose fdinfo runs longer (epoll, inotify with many watches) are cut, and no
/// handler takes them.
const FDINFO_MAX: usize = 256;

/// An fdinfo as read, and what PRESERVE_FD wants from it, found in one pass
/// when it is read. Read into its place on the heap, and never moved: copying
/// it around cost more than the allocation.
#[derive(Debug)]
struct Fdinfo {
    bytes: [u8; FDINFO_MAX],
    len: usize,
    /// Where the name of the first field past those every open file's fdinfo
    /// starts with (`pos`, `flags`, `mnt_id`, `ino`) is: the file's own part.
    own_field: Option<(usize, usize)>,
    /// The value of the first `*-id` field that holds a number.
    id: Option<u64>,
}

impl Fdinfo {
    /// Read the fdinfo of `fd`, open in this process.
    fn read(fd: RawFd) -> Option<Box<Self>> {
        let mut info = Box::new(Fdinfo {
            bytes: [0; FDINFO_MAX],
            len: 0,
            own_field: None,
            id: None,
        });
        info.len = read_fdinfo(fd, &mut info.bytes)?;
        info.parse();
        Some(info)
    }

    fn parse(&mut self) {
        let (len, text) = (self.len, &self.bytes[..self.len]);
        let mut at = 0;
        while at < len {
            let end = text[at..]
                .iter()
                .position(|&b| b == b'\n')
                .map_or(len, |n| at + n);
            let line = &text[at..end];
            if let Some(colon) = line.iter().position(|&b| b == b':') {
                let name = &line[..colon];
                let common = matches!(name, b"pos" | b"flags" | b"mnt_id" | b"ino");
                if self.own_field.is_none() && !common {
                    self.own_field = Some((at, at + colon));
                }
                if self.id.is_none() && name.ends_with(b"-id") {
                    self.id = std::str::from_utf8(&line[colon + 1..])
                        .ok()
                        .and_then(|v| v.trim().parse().ok());
                }
            }
            at = end + 1;
        }
    }

    /// The text; the kernel writes ASCII, so all of it in practice.
    fn text(&self) -> &str {
        let bytes = &self.bytes[..self.len];
        std::str::from_utf8(bytes)
            .unwrap_or_else(|e| std::str::from_utf8(&bytes[..e.valid_up_to()]).unwrap_or_default())
    }

    fn own_field(&self) -> Option<&str> {
        let (from, to) = self.own_field?;
        std::str::from_utf8(&self.bytes[from..to]).ok()
    }
}

impl<'a> FileInfo<'a> {
    /// Look at `fd` (one fstat).
    ///
    /// # Errors
    /// The errno of `fstat`.
    pub fn new(fd: BorrowedFd<'a>) -> Result<Self, Errno> {
        Ok(FileInfo {
            fd,
            stat: rustix::fs::fstat(fd)?,
            open: OnceCell::new(),
            link: OnceCell::new(),
            fdinfo: OnceCell::new(),
        })
    }

    /// The file.
    #[must_use]
    pub fn fd(&self) -> BorrowedFd<'a> {
        self.fd
    }

    /// Its fstat.
    #[must_use]
    pub fn stat(&self) -> &Stat {
        &self.stat
    }

    /// Whether it is an open file, not an `O_PATH` reference (one `F_GETFL`).
    #[must_use]
    pub fn is_open(&self) -> bool {
        *self
            .open
            .get_or_init(|| crate::handlers::is_open_file(self.fd))
    }

    /// Its `/proc/self/fd` link ("/memfd:ram (deleted)", "anon_inode:\[eventfd\]"),
    /// `None` without `/proc`.
    #[must_use]
    pub fn link(&self) -> Option<&str> {
        self.link
            .get_or_init(|| crate::handlers::fd_link(self.fd).ok())
            .as_deref()
    }

    /// Whether it lives on the kernel's shared anonymous inode (eventfd,
    /// timerfd, signalfd, epoll...): such files tell their kind in fdinfo.
    #[must_use]
    pub fn is_anon_inode(&self) -> bool {
        #[allow(clippy::useless_conversion, clippy::unnecessary_cast)]
        let key = (self.stat.st_dev as u64, self.stat.st_ino as u64);
        anon_inode() == Some(key)
    }

    /// Its `/proc/self/fdinfo` text, at most its first 256 bytes (see
    /// `FDINFO_MAX`): one `pread` of a kept fdinfo file when its fd number was
    /// read before, else one `openat` relative to the directory [`warm_up`]
    /// opened and one `pread`.
    #[must_use]
    pub fn fdinfo(&self) -> Option<&str> {
        self.fdinfo_read().map(Fdinfo::text)
    }

    /// The name of its fdinfo's first field past those every open file shows
    /// (`pos`, `flags`, `mnt_id`, `ino`): for an anonymous-inode file, what kind
    /// it is (`eventfd-count`, `clockid`, `sigmask`, `Pid`, `tfd`...). `None`
    /// when there is no such field, as for an `O_PATH` fd.
    #[must_use]
    pub fn fdinfo_own_field(&self) -> Option<&str> {
        self.fdinfo_read().and_then(Fdinfo::own_field)
    }

    fn fdinfo_read(&self) -> Option<&Fdinfo> {
        self.fdinfo
            .get_or_init(|| Fdinfo::read(self.fd.as_raw_fd()))
            .as_deref()
    }
}

/// Open what looking at files needs once, up front, so that the first
/// PRESERVE_FD costs no more than the others and the process's fd set does not
/// change under it: the `/proc/self/fdinfo` directory, the reusable fdinfo
/// files (`FDINFO_CACHED` of them) and the anonymous inode's identity.
/// [`Orchestrator::new`](crate::Orchestrator::new) calls it.
pub fn warm_up() {
    let _ = anon_inode();
    if let Some(dir) = fdinfo_dir() {
        let mut cache = FDINFO.lock().unwrap_or_else(|p| p.into_inner());
        if cache.entries.is_empty() {
            // Placeholders: the directory's own fdinfo, under its own number.
            let own = dir.as_raw_fd();
            cache.entries = (0..FDINFO_CACHED)
                .filter_map(|_| open_fdinfo(dir, own).map(|f| (own, f)))
                .collect();
        }
    }
}

/// Open fdinfo files kept for reuse, one per fd number: an open
/// `/proc/self/fdinfo/N` describes whatever file fd N is *when it is read*, so
/// reading it again is one `pread` instead of an `openat`, a `read` and a
/// `close` (4.8 times faster here). A daemon receives each fd at the lowest free
/// number, so the same few numbers come back request after request: one per
/// client preserving at the same moment (64 clients thrashed a set of 8). The
/// set is opened whole by [`warm_up`] and replaced in turn, so the process
/// always holds the same number of these fds.
const FDINFO_CACHED: usize = 64;

#[derive(Default)]
struct FdinfoCache {
    entries: Vec<(RawFd, OwnedFd)>,
    next: usize,
}

static FDINFO: Mutex<FdinfoCache> = Mutex::new(FdinfoCache {
    entries: Vec::new(),
    next: 0,
});

fn open_fdinfo(dir: BorrowedFd<'_>, fd: RawFd) -> Option<OwnedFd> {
    use rustix::fs::{Mode, OFlags};
    let flags = OFlags::RDONLY | OFlags::CLOEXEC;
    rustix::fs::openat(dir, fd.to_string().as_str(), flags, Mode::empty()).ok()
}

/// Read the fdinfo of `fd` (open in this process) into `buf`; its length.
fn read_fdinfo(fd: RawFd, buf: &mut [u8]) -> Option<usize> {
    let Some(dir) = fdinfo_dir() else {
        // A forked child: `/proc/self` by path, nothing cached.
        use rustix::fs::{Mode, OFlags};
        let path = format!("/proc/self/fdinfo/{fd}");
        let info = rustix::fs::open(path, OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty()).ok()?;
        return rustix::io::read(&info, buf).ok();
    };
    let mut cache = FDINFO.lock().unwrap_or_else(|p| p.into_inner());
    if let Some((_, info)) = cache.entries.iter().find(|(n, _)| *n == fd) {
        return rustix::io::pread(info, buf, 0).ok();
    }
    let info = open_fdinfo(dir, fd)?;
    let n = rustix::io::pread(&info, buf, 0).ok()?;
    if cache.entries.is_empty() {
        // Not warmed up: cache nothing, so the fd set stays as it was.
        return Some(n);
    }
    let slot = cache.next % cache.entries.len();
    cache.next = slot + 1;
    cache.entries[slot] = (fd, info);
    Some(n)
}

/// `/proc/self/fdinfo` of this process, opened once. A path walk through
/// `/proc/self` is about half the cost of reading an fdinfo; `openat` relative
/// to the directory skips it. `/proc/self` named the opener: a forked child
/// (a different pid) must not use it, and falls back to the path.
fn fdinfo_dir() -> Option<BorrowedFd<'static>> {
    use rustix::fs::{Mode, OFlags};
    static DIR: OnceLock<Option<(rustix::process::Pid, OwnedFd)>> = OnceLock::new();
    let (pid, dir) = DIR
        .get_or_init(|| {
            let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
            let dir = rustix::fs::open("/proc/self/fdinfo", flags, Mode::empty()).ok()?;
            Some((rustix::process::getpid(), dir))
        })
        .as_ref()?;
    (*pid == rustix::process::getpid()).then(|| dir.as_fd())
}

/// One kind of preservable file. See the module docs for the call order.
///
/// Every callback gets the daemon's own reference to the file. Callbacks that undo
/// something (`unpreserve`, `unfreeze`, `cancel`, `finish`) cannot fail: they run
/// on unhappy paths that must complete.
pub trait FileHandler: fmt::Debug + Send + Sync {
    /// The versioned name of this handler and of its `data` format.
    fn compatible(&self) -> &'static str;

    /// Whether this handler takes `file`. Must not block; uses what `file` has
    /// looked at (fstat, link, fdinfo) rather than asking the kernel again.
    fn can_preserve(&self, file: &FileInfo<'_>) -> bool;

    /// Start preserving `fd`: return the handler's initial per-file data.
    ///
    /// # Errors
    /// Any errno; the file is then not preserved.
    fn preserve(&self, file: &FileInfo<'_>) -> Result<Vec<u8>, Errno>;

    /// Undo [`preserve`](Self::preserve).
    fn unpreserve(&self, _fd: BorrowedFd<'_>, _data: &[u8]) {}

    /// PREPARE: save what must be saved. May update `data`.
    ///
    /// # Errors
    /// Any errno; the engine then cancels the files prepared before this one.
    fn prepare(&self, _fd: BorrowedFd<'_>, _data: &mut Vec<u8>) -> Result<(), Errno> {
        Ok(())
    }

    /// FREEZE: the last step before the update; record the final state in `data`.
    ///
    /// # Errors
    /// Any errno; the engine unfreezes the files frozen before this one.
    fn freeze(&self, _fd: BorrowedFd<'_>, _data: &mut Vec<u8>) -> Result<(), Errno> {
        Ok(())
    }

    /// Whether [`freeze`](Self::freeze) only looks at its own file and data,
    /// with no effect another file's freeze could see: a live update may then
    /// freeze such files on several CPUs at once, with the same outcome as one
    /// after the other. The built-in handlers' freezes are such; the default is
    /// `false` (strict preservation order).
    fn freeze_is_local(&self) -> bool {
        false
    }

    /// Undo [`freeze`](Self::freeze).
    fn unfreeze(&self, _fd: BorrowedFd<'_>, _data: &mut Vec<u8>) {}

    /// Undo [`prepare`](Self::prepare).
    fn cancel(&self, _fd: BorrowedFd<'_>, _data: &mut Vec<u8>) {}

    /// FINISH after the update; `reclaimed` says whether the file was restored.
    fn finish(&self, _fd: BorrowedFd<'_>, _data: &mut Vec<u8>, _reclaimed: bool) {}

    /// Check, after the update, that `data` decodes and describes `fd` (when given;
    /// the dry run of a handover has no fds).
    ///
    /// # Errors
    /// `EINVAL` for data this handler version cannot read, or an fd of another kind.
    fn deserialize(&self, fd: Option<BorrowedFd<'_>>, data: &[u8]) -> Result<(), Errno>;

    /// RESTORE_FD: a new fd to the same open file, as it was at FREEZE.
    ///
    /// # Errors
    /// `EIO` when the file changed after FREEZE in a way the handler can see, or
    /// the errno of a failed system call.
    fn retrieve(&self, fd: BorrowedFd<'_>, data: &[u8]) -> Result<OwnedFd, Errno>;

    /// A short human description for `luoctl status`, e.g. "memfd 64 MiB".
    fn describe(&self, fd: BorrowedFd<'_>, data: &[u8]) -> String;
}

/// The set of handlers an orchestrator knows, in registration order.
#[derive(Debug, Clone, Default)]
pub struct HandlerRegistry {
    handlers: Vec<Arc<dyn FileHandler>>,
}

impl HandlerRegistry {
    /// An empty registry.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// The four built-in handlers of SPEC §6.1: memfd, socket, pipe, eventfd.
    #[must_use]
    pub fn with_builtin() -> Self {
        let mut r = Self::new();
        for h in crate::handlers::builtin() {
            r.register(h).expect("built-in compatibles are distinct");
        }
        r
    }

    /// Add a handler.
    ///
    /// # Errors
    /// `EEXIST` when a handler with the same compatible string is registered.
    pub fn register(&mut self, handler: Arc<dyn FileHandler>) -> Result<(), Errno> {
        if self.by_compatible(handler.compatible()).is_some() {
            return Err(Errno::EXIST);
        }
        self.handlers.push(handler);
        Ok(())
    }

    /// The first handler that takes `file`.
    #[must_use]
    pub fn find(&self, file: &FileInfo<'_>) -> Option<&Arc<dyn FileHandler>> {
        self.handlers.iter().find(|h| h.can_preserve(file))
    }

    /// The handler registered under `compatible`.
    #[must_use]
    pub fn by_compatible(&self, compatible: &str) -> Option<&Arc<dyn FileHandler>> {
        self.handlers.iter().find(|h| h.compatible() == compatible)
    }

    /// Every registered compatible string.
    pub fn compatibles(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.handlers.iter().map(|h| h.compatible())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn eventfd() -> OwnedFd {
        rustix::event::eventfd(0, rustix::event::EventfdFlags::CLOEXEC).expect("eventfd")
    }

    /// A kept fdinfo file describes whatever its fd number is now: after the
    /// number is reused for another file, the other file is what it reads.
    #[test]
    fn a_kept_fdinfo_follows_its_fd_number() {
        warm_up();
        let mut a = eventfd();
        let info = FileInfo::new(a.as_fd()).expect("fstat");
        assert!(info.fdinfo().expect("fdinfo").contains("eventfd-count"));
        drop(info);
        // The same number, now another file.
        let m = rustix::fs::memfd_create("m", rustix::fs::MemfdFlags::CLOEXEC).expect("memfd");
        rustix::io::dup2(&m, &mut a).expect("dup2");
        let info = FileInfo::new(a.as_fd()).expect("fstat");
        let text = info.fdinfo().expect("fdinfo");
        assert!(!text.contains("eventfd"), "stale fdinfo: {text}");
        assert!(text.contains("ino:"), "{text}");
    }

    fn parsed(text: &str) -> Fdinfo {
        let mut info = Fdinfo {
            bytes: [0; FDINFO_MAX],
            len: text.len().min(FDINFO_MAX),
            own_field: None,
            id: None,
        };
        info.bytes[..info.len].copy_from_slice(&text.as_bytes()[..info.len]);
        info.parse();
        info
    }

    /// What PRESERVE_FD reads from an fdinfo, from texts as the kernel writes
    /// them and from a few it does not.
    #[test]
    fn fdinfo_own_field_and_id() {
        let eventfd = "pos:\t0\nflags:\t02000002\nmnt_id:\t15\nino:\t1057\n\
                       eventfd-count:                0\neventfd-id: 42\n";
        let info = parsed(eventfd);
        assert_eq!(info.own_field(), Some("eventfd-count"));
        assert_eq!(info.id, Some(42));
        assert_eq!(info.text(), eventfd);

        // Older kernels print no ino; a timerfd has no id.
        let timerfd = "pos:\t0\nflags:\t02\nmnt_id:\t17\nclockid: 1\nticks: 0\n";
        let info = parsed(timerfd);
        assert_eq!(info.own_field(), Some("clockid"));
        assert_eq!(info.id, None);

        // An O_PATH fd shows only the common fields; lines without a colon and
        // an unparsable id are skipped; the last line needs no newline.
        let info = parsed("pos:\t0\nflags:\t010000000\nmnt_id:\t3\nino:\t9");
        assert_eq!((info.own_field(), info.id), (None, None));
        let info = parsed("pos:\t0\nno colon here\nx-id: nope\ny-id:\t7");
        assert_eq!((info.own_field(), info.id), (Some("x-id"), Some(7)));
    }

    /// Live eventfds are told apart however often their fdinfo is read.
    #[test]
    fn distinct_eventfds_have_distinct_keys() {
        warm_up();
        let fds: Vec<OwnedFd> = (0..3 * FDINFO_CACHED).map(|_| eventfd()).collect();
        let mut keys: Vec<FileKey> = fds
            .iter()
            .chain(fds.iter())
            .map(|f| FileKey::of(f.as_fd()).expect("key"))
            .collect();
        let (first, second) = keys.split_at(fds.len());
        assert_eq!(first, second, "the same file, the same key");
        keys.sort_unstable();
        keys.dedup();
        assert_eq!(keys.len(), fds.len());
    }
}
