//! `eventfd-v1`: the anonymous-inode event files: eventfd, timerfd, signalfd and
//! pidfd.
//!
//! fstat cannot tell these apart (they share one anonymous inode, or pidfs's, and
//! have no file type bits), so the kind is read from the `/proc/self/fd` link:
//! `anon_inode:[eventfd]`, `anon_inode:[timerfd]`, `anon_inode:[signalfd]`, and
//! for a pidfd `anon_inode:[pidfd]` (also what pidfs-based kernels show, e.g.
//! 6.18) or a `pidfd:` link. The counter, timer or target process lives in the
//! kernel object, which the daemon's reference keeps across the userspace live
//! update; nothing is read, as a read could block or consume an event.
//!
//! Lifecycle: `preserve` records the kind, which cannot change; `retrieve` returns
//! a new fd to the same open file.
//!
//! Unhappy paths: data that does not decode is `EINVAL`, and so is an fd that is
//! not of the recorded kind. Events that fire or are consumed after FREEZE are not
//! visible here and are not checked.

use std::os::fd::{BorrowedFd, OwnedFd};

use luo_uapi::Errno;

use super::{decode, dup, encode, fd_link, is_open_file};
use crate::file_handler::{FileHandler, FileInfo};

const COMPATIBLE: &str = "eventfd-v1";

/// The handler of eventfds, timerfds, signalfds and pidfds; see the module docs.
#[derive(Debug, Default, Clone, Copy)]
pub struct EventfdHandler;

/// Which event file it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
enum Kind {
    Eventfd,
    Timerfd,
    Signalfd,
    Pidfd,
}

impl Kind {
    /// The kind a `/proc/self/fd` link names, if any.
    fn from_link(link: &str) -> Option<Self> {
        match link {
            "anon_inode:[eventfd]" => Some(Kind::Eventfd),
            "anon_inode:[timerfd]" => Some(Kind::Timerfd),
            "anon_inode:[signalfd]" => Some(Kind::Signalfd),
            "anon_inode:[pidfd]" => Some(Kind::Pidfd),
            _ if link.starts_with("pidfd:") => Some(Kind::Pidfd),
            _ => None,
        }
    }

    /// The kind of `fd`, if it is an open event file.
    fn of(fd: BorrowedFd<'_>) -> Option<Self> {
        if !is_open_file(fd) {
            return None;
        }
        Kind::from_link(&fd_link(fd).ok()?)
    }

    /// [`Kind::of`] a file already looked at. An anonymous-inode file's kind
    /// comes from its fdinfo, which its [`FileKey`](crate::FileKey) reads anyway,
    /// saving a readlink per PRESERVE_FD; others (a pidfd on pidfs) from the link.
    ///
    /// An `O_PATH` fd's fdinfo has none of the fields that name a kind (its
    /// file has no `show_fdinfo`), so the fdinfo also rules those out.
    fn of_info(file: &FileInfo<'_>) -> Option<Self> {
        if file.is_anon_inode() {
            return Kind::from_fdinfo_field(file.fdinfo_own_field()?);
        }
        if !file.is_open() {
            return None;
        }
        Kind::from_link(file.link()?)
    }

    /// The kind whose fdinfo's first own field is `field`: each kind starts
    /// its part of the fdinfo with a field of its own.
    fn from_fdinfo_field(field: &str) -> Option<Self> {
        match field {
            "eventfd-count" => Some(Kind::Eventfd),
            "clockid" => Some(Kind::Timerfd),
            "sigmask" => Some(Kind::Signalfd),
            "Pid" => Some(Kind::Pidfd),
            _ => None,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Kind::Eventfd => "eventfd",
            Kind::Timerfd => "timerfd",
            Kind::Signalfd => "signalfd",
            Kind::Pidfd => "pidfd",
        }
    }
}

/// What `eventfd-v1` keeps per file.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct EventfdData {
    kind: Kind,
}

impl FileHandler for EventfdHandler {
    fn compatible(&self) -> &'static str {
        COMPATIBLE
    }

    fn freeze_is_local(&self) -> bool {
        true
    }

    fn can_preserve(&self, file: &FileInfo<'_>) -> bool {
        Kind::of_info(file).is_some()
    }

    fn preserve(&self, file: &FileInfo<'_>) -> Result<Vec<u8>, Errno> {
        let kind = Kind::of_info(file).ok_or(Errno::INVAL)?;
        encode(COMPATIBLE, &EventfdData { kind })
    }

    fn deserialize(&self, fd: Option<BorrowedFd<'_>>, data: &[u8]) -> Result<(), Errno> {
        let recorded: EventfdData = decode(COMPATIBLE, data)?;
        match fd {
            Some(fd) if Kind::of(fd) != Some(recorded.kind) => Err(Errno::INVAL),
            _ => Ok(()),
        }
    }

    fn retrieve(&self, fd: BorrowedFd<'_>, data: &[u8]) -> Result<OwnedFd, Errno> {
        self.deserialize(Some(fd), data)?;
        dup(fd)
    }

    fn describe(&self, fd: BorrowedFd<'_>, data: &[u8]) -> String {
        decode::<EventfdData>(COMPATIBLE, data)
            .ok()
            .map(|d| d.kind)
            .or_else(|| Kind::of(fd))
            .map_or("event file", Kind::as_str)
            .to_owned()
    }
}

#[cfg(test)]
mod tests {
    use std::os::fd::{AsFd, AsRawFd};

    use rustix::event::EventfdFlags;

    use super::*;
    use crate::file_handler::FileKey;
    use crate::handlers::preserve_and_freeze;

    fn kind(data: &[u8]) -> Kind {
        decode::<EventfdData>(COMPATIBLE, data)
            .expect("decode")
            .kind
    }

    #[test]
    fn eventfd_counter_survives() {
        let efd = rustix::event::eventfd(0, EventfdFlags::CLOEXEC).expect("eventfd");
        rustix::io::write(&efd, &5u64.to_ne_bytes()).expect("write");
        let data = preserve_and_freeze(&EventfdHandler, efd.as_fd());
        assert_eq!(kind(&data), Kind::Eventfd);
        assert_eq!(EventfdHandler.describe(efd.as_fd(), &data), "eventfd");
        let new = EventfdHandler
            .retrieve(efd.as_fd(), &data)
            .expect("retrieve");
        assert_ne!(new.as_raw_fd(), efd.as_raw_fd());
        assert_eq!(FileKey::of(new.as_fd()), FileKey::of(efd.as_fd()));
        // The counter is 5, not 0, so this read does not block.
        let mut buf = [0u8; 8];
        assert_eq!(rustix::io::read(&new, &mut buf), Ok(8));
        assert_eq!(u64::from_ne_bytes(buf), 5);
    }

    #[test]
    fn pidfd_is_accepted_when_supported() {
        let Ok(pidfd) = rustix::process::pidfd_open(
            rustix::process::getpid(),
            rustix::process::PidfdFlags::empty(),
        ) else {
            return; // Kernel older than 5.3.
        };
        let data = preserve_and_freeze(&EventfdHandler, pidfd.as_fd());
        assert_eq!(kind(&data), Kind::Pidfd);
        assert_eq!(EventfdHandler.describe(pidfd.as_fd(), &data), "pidfd");
        EventfdHandler
            .retrieve(pidfd.as_fd(), &data)
            .expect("retrieve");
    }

    /// The links of kinds the test cannot create without extra rustix features
    /// (timerfd needs `time`; signalfd has no safe constructor).
    #[test]
    fn links_name_every_kind() {
        assert_eq!(Kind::from_link("anon_inode:[eventfd]"), Some(Kind::Eventfd));
        assert_eq!(Kind::from_link("anon_inode:[timerfd]"), Some(Kind::Timerfd));
        assert_eq!(
            Kind::from_link("anon_inode:[signalfd]"),
            Some(Kind::Signalfd)
        );
        assert_eq!(Kind::from_link("anon_inode:[pidfd]"), Some(Kind::Pidfd));
        assert_eq!(Kind::from_link("pidfd:[1234]"), Some(Kind::Pidfd));
        assert_eq!(Kind::from_link("anon_inode:[eventpoll]"), None);
        assert_eq!(Kind::from_link("anon_inode:[io_uring]"), None);
        assert_eq!(Kind::from_link("anon_inode:inotify"), None);
        assert_eq!(Kind::from_link("/memfd:x (deleted)"), None);
        assert_eq!(Kind::from_link("anon_inode:[eventfd] "), None);
    }

    #[test]
    fn timerfd_is_accepted_and_kept() {
        use rustix::time::{TimerfdClockId, TimerfdFlags, timerfd_create};
        let fd = timerfd_create(TimerfdClockId::Monotonic, TimerfdFlags::CLOEXEC).expect("timerfd");
        let data = crate::handlers::preserve_and_freeze(&EventfdHandler, fd.as_fd());
        let restored = EventfdHandler
            .retrieve(fd.as_fd(), &data)
            .expect("retrieve");
        assert_eq!(Kind::of(restored.as_fd()), Some(Kind::Timerfd));
        assert!(
            EventfdHandler
                .describe(fd.as_fd(), &data)
                .contains("timerfd")
        );
    }

    #[test]
    fn fdinfo_and_link_agree_on_every_kind() {
        use rustix::time::{TimerfdClockId, TimerfdFlags, timerfd_create};
        let efd = rustix::event::eventfd(0, rustix::event::EventfdFlags::CLOEXEC).expect("eventfd");
        let tfd =
            timerfd_create(TimerfdClockId::Monotonic, TimerfdFlags::CLOEXEC).expect("timerfd");
        let pidfd = rustix::process::pidfd_open(
            rustix::process::getpid(),
            rustix::process::PidfdFlags::empty(),
        )
        .expect("pidfd");
        for fd in [efd.as_fd(), tfd.as_fd(), pidfd.as_fd()] {
            let info = FileInfo::new(fd).expect("info");
            let link = Kind::of(fd);
            assert!(link.is_some());
            assert_eq!(
                info.fdinfo_own_field().and_then(Kind::from_fdinfo_field),
                link,
                "{:?}",
                info.fdinfo()
            );
        }
        // An epoll file is on the anonymous inode too, and no handler takes it.
        let epoll = rustix::event::epoll::create(rustix::event::epoll::CreateFlags::CLOEXEC)
            .expect("epoll");
        let info = FileInfo::new(epoll.as_fd()).expect("info");
        assert!(info.is_anon_inode());
        assert_eq!(Kind::of_info(&info), None);
        assert!(!EventfdHandler.can_preserve(&info));
    }

    #[test]
    fn epoll_is_refused() {
        let epoll = rustix::event::epoll::create(rustix::event::epoll::CreateFlags::CLOEXEC)
            .expect("epoll");
        let st = crate::FileInfo::new(std::os::fd::AsFd::as_fd(&epoll)).expect("fstat");
        assert!(!EventfdHandler.can_preserve(&st));
    }

    #[test]
    fn deserialize_checks_the_kind() {
        let efd = rustix::event::eventfd(0, EventfdFlags::CLOEXEC).expect("eventfd");
        let timer_data = encode(
            COMPATIBLE,
            &EventfdData {
                kind: Kind::Timerfd,
            },
        )
        .expect("encode");
        assert_eq!(EventfdHandler.deserialize(None, &timer_data), Ok(()));
        assert_eq!(
            EventfdHandler.deserialize(Some(efd.as_fd()), &timer_data),
            Err(Errno::INVAL)
        );
        assert_eq!(
            EventfdHandler.retrieve(efd.as_fd(), &timer_data).map(drop),
            Err(Errno::INVAL)
        );
        assert_eq!(
            EventfdHandler.deserialize(None, b"\x0aeventfd-v1\x09"),
            Err(Errno::INVAL)
        );
    }
}
