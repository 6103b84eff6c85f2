//! The built-in file handlers of SPEC §6.1.
//!
//! | handler | compatible | accepts |
//! |---|---|---|
//! | [`memfd::MemfdHandler`] | `memfd-v1` | memfd, shmem or hugetlb |
//! | [`socket::SocketHandler`] | `socket-v1` | any socket |
//! | [`pipe::PipeHandler`] | `pipe-v1` | a pipe or FIFO end |
//! | [`eventfd::EventfdHandler`] | `eventfd-v1` | eventfd, timerfd, signalfd, pidfd |
//!
//! Every handler recognises a file from the daemon's own reference alone: fstat,
//! fcntl and the `/proc/self/fd` link, none of which can block on the file. An
//! `O_PATH` fd is refused by all of them: it names a file without opening it, so
//! there is no open file to hand back at RESTORE_FD.
//!
//! Each handler's `data` is postcard, prefixed with the handler's compatible
//! string, so bytes written by another handler (or garbage that happens to decode)
//! are refused with `EINVAL` instead of being misread.

use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};
use std::sync::Arc;

use luo_uapi::Errno;
use serde::Serialize;
use serde::de::Deserialize;

use crate::file_handler::FileHandler;

pub mod eventfd;
pub mod memfd;
pub mod pipe;
pub mod socket;

/// One instance of every built-in handler, in the order they are tried.
///
/// memfd comes first: it is the only one that takes regular files, and it must
/// see them before any later, broader handler could.
#[must_use]
pub fn builtin() -> Vec<Arc<dyn FileHandler>> {
    vec![
        Arc::new(memfd::MemfdHandler),
        Arc::new(socket::SocketHandler),
        Arc::new(pipe::PipeHandler),
        Arc::new(eventfd::EventfdHandler),
    ]
}

/// The target of `fd`'s `/proc/self/fd` link, e.g. `anon_inode:[eventfd]`.
///
/// # Errors
/// The errno of `readlink`, e.g. `ENOENT` without `/proc`.
pub(crate) fn fd_link(fd: BorrowedFd<'_>) -> Result<String, Errno> {
    let path = format!("/proc/self/fd/{}", fd.as_raw_fd());
    let link = rustix::fs::readlinkat(rustix::fs::CWD, path, Vec::new())?;
    Ok(String::from_utf8_lossy(link.as_bytes()).into_owned())
}

/// Whether `fd` is an open file rather than an `O_PATH` reference.
pub(crate) fn is_open_file(fd: BorrowedFd<'_>) -> bool {
    rustix::fs::fcntl_getfl(fd).is_ok_and(|flags| !flags.contains(rustix::fs::OFlags::PATH))
}

/// A new close-on-exec fd to the same open file description as `fd`.
///
/// # Errors
/// The errno of `fcntl(F_DUPFD_CLOEXEC)`, e.g. `EMFILE`.
pub(crate) fn dup(fd: BorrowedFd<'_>) -> Result<OwnedFd, Errno> {
    rustix::io::fcntl_dupfd_cloexec(fd, 0)
}

/// Encode a handler's per-file data, tagged with its compatible string.
///
/// # Errors
/// `EINVAL` if postcard refuses the value (it does not for the handlers' plain
/// structs).
pub(crate) fn encode<T: Serialize>(compatible: &str, body: &T) -> Result<Vec<u8>, Errno> {
    postcard::to_allocvec(&(compatible, body)).map_err(|_| Errno::INVAL)
}

/// Decode data written by [`encode`] under `compatible`.
///
/// # Errors
/// `EINVAL` for bytes that do not decode, carry another tag, or have bytes left
/// over.
pub(crate) fn decode<'a, T: Deserialize<'a>>(compatible: &str, data: &'a [u8]) -> Result<T, Errno> {
    let ((tag, body), rest) =
        postcard::take_from_bytes::<(&str, T)>(data).map_err(|_| Errno::INVAL)?;
    if tag != compatible || !rest.is_empty() {
        return Err(Errno::INVAL);
    }
    Ok(body)
}

/// Test support: drive `fd` through preserve, prepare and freeze, as the engine does
/// before a live update, and return the frozen data.
#[cfg(test)]
pub(crate) fn preserve_and_freeze(h: &dyn FileHandler, fd: BorrowedFd<'_>) -> Vec<u8> {
    let st = crate::FileInfo::new(fd).expect("fstat");
    assert!(h.can_preserve(&st), "{} refuses the fd", h.compatible());
    let mut data = h
        .preserve(&crate::FileInfo::new(fd).expect("info"))
        .expect("preserve");
    h.prepare(fd, &mut data).expect("prepare");
    h.freeze(fd, &mut data).expect("freeze");
    h.deserialize(Some(fd), &data)
        .expect("deserialize own data");
    h.deserialize(None, &data)
        .expect("deserialize own data without fd");
    data
}

#[cfg(test)]
mod tests {
    use std::os::fd::{AsFd, OwnedFd};
    use std::path::PathBuf;

    use rustix::fs::{Mode, OFlags};

    use super::*;
    use crate::file_handler::HandlerRegistry;

    fn refused_by_all(fd: BorrowedFd<'_>, what: &str) {
        let st = crate::FileInfo::new(fd).expect("fstat");
        for h in builtin() {
            assert!(!h.can_preserve(&st), "{} takes {what}", h.compatible());
        }
        assert!(HandlerRegistry::with_builtin().find(&st).is_none());
    }

    /// A file on disk, removed on drop, under a name no other test run uses.
    struct DiskFile(PathBuf);

    impl DiskFile {
        fn new() -> Self {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0);
            let name = format!("luo-handlers-test-{}-{nanos}", std::process::id());
            let path = std::env::temp_dir().join(name);
            std::fs::write(&path, b"on disk").expect("write temp file");
            DiskFile(path)
        }
    }

    impl Drop for DiskFile {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    #[test]
    fn builtin_order_and_distinct_compatibles() {
        let names: Vec<_> = builtin().iter().map(|h| h.compatible()).collect();
        assert_eq!(names, ["memfd-v1", "socket-v1", "pipe-v1", "eventfd-v1"]);
        let registry = HandlerRegistry::with_builtin();
        assert_eq!(registry.compatibles().count(), 4);
    }

    #[test]
    fn dev_null_refused_by_all() {
        let fd = rustix::fs::open("/dev/null", OFlags::RDWR | OFlags::CLOEXEC, Mode::empty())
            .expect("open /dev/null");
        refused_by_all(fd.as_fd(), "/dev/null");
    }

    #[test]
    fn regular_file_on_disk_refused_by_all() {
        let file = DiskFile::new();
        let fd: OwnedFd = std::fs::File::open(&file.0).expect("open temp file").into();
        refused_by_all(fd.as_fd(), "a regular file");
    }

    #[test]
    fn directory_refused_by_all() {
        let dir = std::env::temp_dir();
        let fd = rustix::fs::open(
            &dir,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .expect("open temp dir");
        refused_by_all(fd.as_fd(), "a directory");
    }

    #[test]
    fn o_path_refused_by_all() {
        let memfd =
            rustix::fs::memfd_create("o-path", rustix::fs::MemfdFlags::CLOEXEC).expect("memfd");
        let (r, _w) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC).expect("pipe");
        for (fd, what) in [(memfd.as_fd(), "memfd"), (r.as_fd(), "pipe")] {
            let path = format!("/proc/self/fd/{}", fd.as_raw_fd());
            let opath = rustix::fs::open(&path, OFlags::PATH | OFlags::CLOEXEC, Mode::empty())
                .expect("open O_PATH");
            refused_by_all(opath.as_fd(), what);
        }
    }

    #[test]
    fn memfd_refused_by_the_others_and_eventfd_by_memfd() {
        let memfd = rustix::fs::memfd_create("x", rustix::fs::MemfdFlags::CLOEXEC).expect("memfd");
        let st = crate::FileInfo::new(std::os::fd::AsFd::as_fd(&memfd)).expect("fstat");
        for h in builtin().iter().filter(|h| h.compatible() != "memfd-v1") {
            assert!(!h.can_preserve(&st), "{} takes a memfd", h.compatible());
        }
        let efd = rustix::event::eventfd(0, rustix::event::EventfdFlags::CLOEXEC).expect("eventfd");
        let st = crate::FileInfo::new(std::os::fd::AsFd::as_fd(&efd)).expect("fstat");
        assert!(!memfd::MemfdHandler.can_preserve(&st));
    }

    #[test]
    fn every_handler_rejects_the_others_data() {
        let memfd = rustix::fs::memfd_create("x", rustix::fs::MemfdFlags::CLOEXEC).expect("memfd");
        let (sock, _peer) = rustix::net::socketpair(
            rustix::net::AddressFamily::UNIX,
            rustix::net::SocketType::STREAM,
            rustix::net::SocketFlags::CLOEXEC,
            None,
        )
        .expect("socketpair");
        let (r, _w) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC).expect("pipe");
        let efd = rustix::event::eventfd(0, rustix::event::EventfdFlags::CLOEXEC).expect("eventfd");
        let handlers = builtin();
        let fds = [memfd.as_fd(), sock.as_fd(), r.as_fd(), efd.as_fd()];
        let datas: Vec<Vec<u8>> = handlers
            .iter()
            .zip(fds)
            .map(|(h, fd)| {
                h.preserve(&crate::FileInfo::new(fd).expect("info"))
                    .expect("preserve")
            })
            .collect();
        for (i, h) in handlers.iter().enumerate() {
            for (j, data) in datas.iter().enumerate() {
                let with_fd = h.deserialize(Some(fds[i]), data);
                let without_fd = h.deserialize(None, data);
                if i == j {
                    assert_eq!(with_fd, Ok(()), "{}", h.compatible());
                    assert_eq!(without_fd, Ok(()), "{}", h.compatible());
                } else {
                    let other = handlers[j].compatible();
                    assert_eq!(
                        with_fd,
                        Err(Errno::INVAL),
                        "{} read {other}",
                        h.compatible()
                    );
                    assert_eq!(
                        without_fd,
                        Err(Errno::INVAL),
                        "{} read {other}",
                        h.compatible()
                    );
                }
                // The right data with an fd of another kind is refused too.
                if i != j {
                    assert_eq!(h.deserialize(Some(fds[j]), &datas[i]), Err(Errno::INVAL));
                }
            }
        }
    }

    #[test]
    fn every_handler_rejects_garbage() {
        let garbage: [&[u8]; 4] = [
            b"",
            b"\xff\xff\xff\xff\xff\xff",
            b"\x08memfd-v1",
            b"not postcard at all",
        ];
        for h in builtin() {
            for g in garbage {
                assert_eq!(
                    h.deserialize(None, g),
                    Err(Errno::INVAL),
                    "{} took {g:?}",
                    h.compatible()
                );
            }
        }
    }

    #[test]
    fn decode_refuses_trailing_bytes_and_wrong_tag() {
        let data = encode("x-v1", &7u32).expect("encode");
        assert_eq!(decode::<u32>("x-v1", &data), Ok(7));
        assert_eq!(decode::<u32>("y-v1", &data), Err(Errno::INVAL));
        let mut longer = data.clone();
        longer.push(0);
        assert_eq!(decode::<u32>("x-v1", &longer), Err(Errno::INVAL));
    }

    #[test]
    fn fd_link_names_the_kind() {
        let (r, _w) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC).expect("pipe");
        assert!(fd_link(r.as_fd()).expect("link").starts_with("pipe:["));
    }
}
