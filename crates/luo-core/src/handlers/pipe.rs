//! `pipe-v1`: one end of a pipe or of a FIFO.
//!
//! A pipe end is recognised by fstat alone (`S_ISFIFO`); its direction is the
//! access mode of the open file (`fcntl(F_GETFL)`). The bytes in flight live in
//! the kernel's pipe buffer, which the daemon's reference keeps across the
//! userspace live update, so nothing is read or copied: a FIFO is never opened
//! and a pipe never read, as either could block.
//!
//! Lifecycle: `preserve` records the direction, which cannot change for an open
//! file; `retrieve` returns a new fd to the same open end.
//!
//! Unhappy paths: data that does not decode is `EINVAL`, and so is an fd that is
//! not a pipe end in the recorded direction. An `O_PATH` fd to a FIFO is not an
//! open end and is refused. Bytes written or read by the client after FREEZE are
//! not visible here and are not checked.

use std::os::fd::{BorrowedFd, OwnedFd};

use luo_uapi::Errno;
use rustix::fs::{FileType, OFlags};

use super::{decode, dup, encode, fd_link};
use crate::file_handler::{FileHandler, FileInfo};

const COMPATIBLE: &str = "pipe-v1";

/// The handler of pipe and FIFO ends; see the module docs.
#[derive(Debug, Default, Clone, Copy)]
pub struct PipeHandler;

/// Which way data flows through this end.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
enum Direction {
    Read,
    Write,
    /// A FIFO opened `O_RDWR`.
    ReadWrite,
}

impl Direction {
    fn of(fd: BorrowedFd<'_>) -> Result<Self, Errno> {
        let mode = rustix::fs::fcntl_getfl(fd)? & OFlags::RWMODE;
        Ok(if mode == OFlags::WRONLY {
            Direction::Write
        } else if mode == OFlags::RDWR {
            Direction::ReadWrite
        } else {
            Direction::Read
        })
    }

    fn as_str(self) -> &'static str {
        match self {
            Direction::Read => "read",
            Direction::Write => "write",
            Direction::ReadWrite => "read-write",
        }
    }
}

/// What `pipe-v1` keeps per pipe end.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct PipeData {
    direction: Direction,
}

fn is_pipe(file: &FileInfo<'_>) -> bool {
    FileType::from_raw_mode(file.stat().st_mode) == FileType::Fifo && file.is_open()
}

/// Whether `fd` is still a pipe end in the direction `data` recorded.
fn matches(fd: BorrowedFd<'_>, data: &PipeData) -> bool {
    FileInfo::new(fd).is_ok_and(|file| is_pipe(&file))
        && Direction::of(fd).is_ok_and(|d| d == data.direction)
}

impl FileHandler for PipeHandler {
    fn compatible(&self) -> &'static str {
        COMPATIBLE
    }

    fn freeze_is_local(&self) -> bool {
        true
    }

    fn can_preserve(&self, file: &FileInfo<'_>) -> bool {
        is_pipe(file)
    }

    fn preserve(&self, file: &FileInfo<'_>) -> Result<Vec<u8>, Errno> {
        let fd = file.fd();
        encode(
            COMPATIBLE,
            &PipeData {
                direction: Direction::of(fd)?,
            },
        )
    }

    fn deserialize(&self, fd: Option<BorrowedFd<'_>>, data: &[u8]) -> Result<(), Errno> {
        let recorded: PipeData = decode(COMPATIBLE, data)?;
        match fd {
            Some(fd) if !matches(fd, &recorded) => Err(Errno::INVAL),
            _ => Ok(()),
        }
    }

    fn retrieve(&self, fd: BorrowedFd<'_>, data: &[u8]) -> Result<OwnedFd, Errno> {
        self.deserialize(Some(fd), data)?;
        dup(fd)
    }

    /// "pipe read end", or "fifo /path write end" for a named FIFO.
    fn describe(&self, fd: BorrowedFd<'_>, data: &[u8]) -> String {
        let direction = decode::<PipeData>(COMPATIBLE, data)
            .map(|d| d.direction)
            .or_else(|_| Direction::of(fd));
        // An anonymous pipe's link is "pipe:[ino]"; a FIFO's is its path.
        let what = match fd_link(fd) {
            Ok(link) if !link.starts_with("pipe:") => format!("fifo {link}"),
            _ => "pipe".to_owned(),
        };
        match direction {
            Ok(d) => format!("{what} {} end", d.as_str()),
            Err(_) => what,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::fd::{AsFd, AsRawFd};

    use rustix::fs::Mode;
    use rustix::pipe::PipeFlags;

    use super::*;
    use crate::file_handler::FileKey;
    use crate::handlers::preserve_and_freeze;

    fn direction(data: &[u8]) -> Direction {
        decode::<PipeData>(COMPATIBLE, data)
            .expect("decode")
            .direction
    }

    #[test]
    fn both_ends_accepted_with_their_direction() {
        let (r, w) = rustix::pipe::pipe_with(PipeFlags::CLOEXEC).expect("pipe");
        let rdata = preserve_and_freeze(&PipeHandler, r.as_fd());
        let wdata = preserve_and_freeze(&PipeHandler, w.as_fd());
        assert_eq!(direction(&rdata), Direction::Read);
        assert_eq!(direction(&wdata), Direction::Write);
        assert_eq!(PipeHandler.describe(r.as_fd(), &rdata), "pipe read end");
        assert_eq!(PipeHandler.describe(w.as_fd(), &wdata), "pipe write end");
    }

    #[test]
    fn bytes_in_flight_survive() {
        let (r, w) = rustix::pipe::pipe_with(PipeFlags::CLOEXEC).expect("pipe");
        rustix::io::write(&w, b"in flight").expect("write");
        let data = preserve_and_freeze(&PipeHandler, r.as_fd());
        let new = PipeHandler.retrieve(r.as_fd(), &data).expect("retrieve");
        assert_ne!(new.as_raw_fd(), r.as_raw_fd());
        assert_eq!(FileKey::of(new.as_fd()), FileKey::of(r.as_fd()));
        drop(r);
        // The bytes are already in the buffer, so this read does not block.
        let mut buf = [0u8; 9];
        assert_eq!(rustix::io::read(&new, &mut buf), Ok(9));
        assert_eq!(&buf, b"in flight");
    }

    #[test]
    fn fifo_opened_read_write_is_accepted() {
        let path = std::env::temp_dir().join(format!("luo-pipe-test-{}.fifo", std::process::id()));
        let _ = std::fs::remove_file(&path);
        rustix::fs::mknodat(
            rustix::fs::CWD,
            &path,
            FileType::Fifo,
            Mode::RUSR | Mode::WUSR,
            0,
        )
        .expect("mkfifo");
        // O_RDWR on a FIFO does not wait for a peer (Linux), so the test cannot hang.
        let fifo = rustix::fs::open(&path, OFlags::RDWR | OFlags::CLOEXEC, Mode::empty());
        let _ = std::fs::remove_file(&path);
        let fifo = fifo.expect("open fifo");
        let data = preserve_and_freeze(&PipeHandler, fifo.as_fd());
        assert_eq!(direction(&data), Direction::ReadWrite);
        let described = PipeHandler.describe(fifo.as_fd(), &data);
        assert!(described.starts_with("fifo "), "{described}");
        assert!(described.ends_with(" read-write end"), "{described}");
    }

    #[test]
    fn deserialize_checks_the_direction() {
        let (r, w) = rustix::pipe::pipe_with(PipeFlags::CLOEXEC).expect("pipe");
        let rdata = PipeHandler
            .preserve(&crate::FileInfo::new(r.as_fd()).expect("info"))
            .expect("preserve");
        assert_eq!(PipeHandler.deserialize(Some(r.as_fd()), &rdata), Ok(()));
        assert_eq!(
            PipeHandler.deserialize(Some(w.as_fd()), &rdata),
            Err(Errno::INVAL)
        );
        assert_eq!(
            PipeHandler.retrieve(w.as_fd(), &rdata).map(drop),
            Err(Errno::INVAL)
        );
        assert_eq!(
            PipeHandler.deserialize(None, b"\x07pipe-v1\x09"),
            Err(Errno::INVAL)
        );
    }
}
