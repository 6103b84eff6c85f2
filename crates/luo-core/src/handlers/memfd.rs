//! `memfd-v1`: memory files made by `memfd_create`, shmem or hugetlb.
//!
//! A memfd is recognised from the fd alone: fstat says regular file and the
//! `/proc/self/fd` link reads `/memfd:NAME (deleted)`. Nothing else is needed to
//! keep its contents: the daemon's reference keeps the pages alive across the
//! userspace live update, so this handler only records what a restorer must find
//! again and checks that it still holds.
//!
//! Lifecycle of the per-file data (size, seals, name, offset, `frozen_size`):
//!
//! - `preserve` and `prepare` record size, seals, name and the file offset.
//! - `freeze` records size and offset once more and sets `frozen_size`: from
//!   here on the file is meant to stay as it is. A memfd whose recorded seals
//!   forbid growing and shrinking keeps its recorded size without asking again
//!   (one system call per file in the update's blackout instead of two). Seals
//!   stay as PREPARE saw them: they can only be added, and a restore needs none.
//! - `unfreeze` and `cancel` clear `frozen_size`; the client may change the file
//!   again and the next freeze records it anew.
//! - `retrieve` hands back a new fd to the same open file description, with the
//!   offset set back to the one recorded.
//!
//! Unhappy paths:
//!
//! - The client keeps its own fd to the file and can still write, truncate or
//!   grow it after FREEZE. A size change is visible, and `retrieve` then fails
//!   with `EIO` rather than hand back a file that is not what was frozen; a write
//!   that keeps the size is not visible and is not caught (seal the memfd to rule
//!   it out).
//! - Data that does not decode, or an fd that is no longer a memfd, is `EINVAL`.

use std::os::fd::{BorrowedFd, OwnedFd};

use luo_uapi::Errno;
use rustix::fs::{FileType, SealFlags, SeekFrom, Stat};

use super::{decode, dup, encode, fd_link};
use crate::file_handler::{FileHandler, FileInfo};

const COMPATIBLE: &str = "memfd-v1";

/// Room for any `memfd-v1` data this handler records: the tag, a name of at
/// most 249 bytes (`memfd_create`'s limit), their lengths, and five numbers of
/// at most ten bytes each.
const FROZEN_DATA_MAX: usize = 512;

/// Seals under which a memfd's size can never change.
const SIZE_SEALS: SealFlags = SealFlags::GROW.union(SealFlags::SHRINK);

/// The link target of every memfd starts with this, then the name it was given.
const LINK_PREFIX: &str = "/memfd:";
/// The kernel appends this to the link of an unlinked file, which a memfd is.
const DELETED_SUFFIX: &str = " (deleted)";

/// The handler of memfds; see the module docs.
#[derive(Debug, Default, Clone, Copy)]
pub struct MemfdHandler;

/// What `memfd-v1` keeps per file.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct MemfdData {
    /// Size in bytes at the last record.
    size: u64,
    /// `F_GET_SEALS` at the last record.
    seals: u32,
    /// The name given to `memfd_create`.
    name: String,
    /// The file offset at the last record.
    offset: u64,
    /// The size at FREEZE while frozen; `None` when not frozen.
    frozen_size: Option<u64>,
}

/// The memfd name in a `/proc/self/fd` link, or `None` if it is not a memfd's.
fn name_in_link(link: &str) -> Option<String> {
    let name = link.strip_prefix(LINK_PREFIX)?;
    Some(name.strip_suffix(DELETED_SUFFIX).unwrap_or(name).to_owned())
}

/// The memfd name of `fd`, or `None` when `fd` is not a memfd.
fn memfd_name(fd: BorrowedFd<'_>) -> Option<String> {
    name_in_link(&fd_link(fd).ok()?)
}

/// The memfd name of a file already looked at, or `None` when it is not a
/// memfd (an open regular file whose link names one).
fn memfd_name_of(file: &FileInfo<'_>) -> Option<String> {
    let regular = FileType::from_raw_mode(file.stat().st_mode) == FileType::RegularFile;
    if !regular || !file.is_open() {
        return None;
    }
    file.link().and_then(name_in_link)
}

/// Whether `fd` is still shmem or hugetlbfs: `F_GET_SEALS` answers only for
/// those. The one cheap check for the daemon's own reference, looked at
/// fully when it was preserved: a `/proc` lookup per file would dominate an
/// update's blackout with 100k files.
fn still_shmem(fd: BorrowedFd<'_>) -> Result<(), Errno> {
    rustix::fs::fcntl_get_seals(fd)
        .map(drop)
        .map_err(|_| Errno::INVAL)
}

/// [`MemfdData`] read and written in place: the same encoding, without
/// copying the name. The handover's checks read every file this way, and the
/// update's freeze rewrites every file's data this way with no allocation (on
/// several threads at once, an allocation freed on another thread's heap
/// contends for that heap's lock).
#[derive(serde::Serialize, serde::Deserialize)]
struct MemfdDataRef<'a> {
    size: u64,
    seals: u32,
    name: &'a str,
    offset: u64,
    frozen_size: Option<u64>,
}

fn size_of(stat: &Stat) -> Result<u64, Errno> {
    u64::try_from(stat.st_size).map_err(|_| Errno::IO)
}

/// The current state of the memfd `fd`, not frozen.
fn record(file: &FileInfo<'_>) -> Result<MemfdData, Errno> {
    let name = memfd_name_of(file).ok_or(Errno::INVAL)?;
    snapshot(file.fd(), name)
}

/// Size, seals and offset of a file already known to be a memfd named `name`:
/// three cheap system calls, no `/proc` lookup, for the update's hot path.
///
/// The seals are read first: when they forbid growing and shrinking, the size
/// read after them is final (seals are never removed), which lets
/// [`MemfdHandler::freeze`] skip its `fstat`.
fn snapshot(fd: BorrowedFd<'_>, name: String) -> Result<MemfdData, Errno> {
    let seals = rustix::fs::fcntl_get_seals(fd)?.bits();
    let stat = rustix::fs::fstat(fd)?;
    Ok(MemfdData {
        size: size_of(&stat)?,
        seals,
        name,
        offset: rustix::fs::tell(fd)?,
        frozen_size: None,
    })
}

/// [`snapshot`] of a file whose earlier data is `data` (its name is kept).
fn resnapshot(fd: BorrowedFd<'_>, data: &[u8]) -> Result<MemfdData, Errno> {
    let before: MemfdData = decode(COMPATIBLE, data)?;
    snapshot(fd, before.name)
}

/// `bytes` in the largest binary unit it reaches: "17 B", "64 MiB", "1.5 GiB".
fn human_size(bytes: u64) -> String {
    const UNITS: [(&str, u64); 3] = [("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)];
    for (unit, scale) in UNITS {
        if bytes >= scale {
            if bytes % scale == 0 {
                return format!("{} {unit}", bytes / scale);
            }
            // One decimal is enough for a status line; f64's rounding is harmless.
            let value = bytes as f64 / scale as f64;
            return format!("{value:.1} {unit}");
        }
    }
    format!("{bytes} B")
}

impl FileHandler for MemfdHandler {
    fn compatible(&self) -> &'static str {
        COMPATIBLE
    }

    fn freeze_is_local(&self) -> bool {
        true
    }

    fn can_preserve(&self, file: &FileInfo<'_>) -> bool {
        memfd_name_of(file).is_some()
    }

    fn preserve(&self, file: &FileInfo<'_>) -> Result<Vec<u8>, Errno> {
        encode(COMPATIBLE, &record(file)?)
    }

    fn prepare(&self, fd: BorrowedFd<'_>, data: &mut Vec<u8>) -> Result<(), Errno> {
        *data = encode(COMPATIBLE, &resnapshot(fd, data)?)?;
        Ok(())
    }

    fn freeze(&self, fd: BorrowedFd<'_>, data: &mut Vec<u8>) -> Result<(), Errno> {
        // Size and offset, the two things a restore depends on: two system
        // calls per file in the update's blackout, or one for a memfd sealed
        // against growing and shrinking when its data was recorded (as QEMU
        // seals guest memory by default): its size cannot have changed since.
        // The seals stay as recorded (seals are only ever added, and a restore
        // needs none).
        let mut now: MemfdDataRef<'_> = decode(COMPATIBLE, data)?;
        let size = if SealFlags::from_bits_retain(now.seals).contains(SIZE_SEALS) {
            now.size
        } else {
            size_of(&rustix::fs::fstat(fd)?)?
        };
        let offset = rustix::fs::tell(fd)?;
        (now.size, now.offset, now.frozen_size) = (size, offset, Some(size));
        // Encoded on the stack (`now` borrows the name from `data`), then
        // copied over `data` in place: no allocation, unless a carried image
        // named the file longer than any memfd name.
        let mut buf = [0u8; FROZEN_DATA_MAX];
        if let Ok(bytes) = postcard::to_slice(&(COMPATIBLE, &now), &mut buf) {
            let len = bytes.len();
            data.clear();
            data.extend_from_slice(&buf[..len]);
        } else {
            *data = encode(COMPATIBLE, &now)?;
        }
        Ok(())
    }

    fn unfreeze(&self, _fd: BorrowedFd<'_>, data: &mut Vec<u8>) {
        thaw(data);
    }

    fn cancel(&self, _fd: BorrowedFd<'_>, data: &mut Vec<u8>) {
        thaw(data);
    }

    fn deserialize(&self, fd: Option<BorrowedFd<'_>>, data: &[u8]) -> Result<(), Errno> {
        decode::<MemfdDataRef<'_>>(COMPATIBLE, data)?;
        // The fd came from the previous epoch's own list.
        fd.map_or(Ok(()), still_shmem)
    }

    fn retrieve(&self, fd: BorrowedFd<'_>, data: &[u8]) -> Result<OwnedFd, Errno> {
        let recorded: MemfdData = decode(COMPATIBLE, data)?;
        still_shmem(fd)?;
        let stat = rustix::fs::fstat(fd)?;
        if let Some(frozen) = recorded.frozen_size {
            if size_of(&stat)? != frozen {
                return Err(Errno::IO);
            }
        }
        let new = dup(fd)?;
        // The offset belongs to the open file description, shared with the
        // client's old fd, which may have moved it since FREEZE.
        rustix::fs::seek(&new, SeekFrom::Start(recorded.offset))?;
        Ok(new)
    }

    fn describe(&self, fd: BorrowedFd<'_>, data: &[u8]) -> String {
        let recorded = decode::<MemfdData>(COMPATIBLE, data).ok();
        let name = recorded
            .as_ref()
            .map(|d| d.name.clone())
            .or_else(|| memfd_name(fd))
            .unwrap_or_default();
        let size = rustix::fs::fstat(fd)
            .ok()
            .and_then(|st| size_of(&st).ok())
            .or(recorded.map(|d| d.size));
        match size {
            Some(size) => format!("memfd {name:?} {}", human_size(size)),
            None => format!("memfd {name:?}"),
        }
    }
}

/// Clear `frozen_size`: the file may change again until the next freeze.
fn thaw(data: &mut Vec<u8>) {
    // Data that no longer decodes was not written by this handler; leaving it
    // alone is all an infallible undo can do, and deserialize will refuse it.
    if let Ok(mut d) = decode::<MemfdData>(COMPATIBLE, data) {
        d.frozen_size = None;
        if let Ok(bytes) = encode(COMPATIBLE, &d) {
            *data = bytes;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::fd::{AsFd, AsRawFd};

    use rustix::fs::{MemfdFlags, SealFlags};

    use super::*;
    use crate::file_handler::FileKey;
    use crate::handlers::preserve_and_freeze;

    const CONTENT: &[u8] = b"hello kexec world";

    fn guest_ram() -> OwnedFd {
        let fd =
            rustix::fs::memfd_create("guest-ram", MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING)
                .expect("memfd_create");
        let mut bytes = CONTENT.to_vec();
        bytes.extend((0..4096u32).map(|i| (i % 251) as u8));
        rustix::io::write(&fd, &bytes).expect("write");
        rustix::fs::seek(&fd, SeekFrom::Start(6)).expect("seek");
        fd
    }

    fn decoded(data: &[u8]) -> MemfdData {
        decode(COMPATIBLE, data).expect("decode")
    }

    #[test]
    fn round_trip_keeps_contents_size_and_offset() {
        let fd = guest_ram();
        let data = preserve_and_freeze(&MemfdHandler, fd.as_fd());
        let d = decoded(&data);
        assert_eq!(d.name, "guest-ram");
        assert_eq!(d.size, (CONTENT.len() + 4096) as u64);
        assert_eq!(d.offset, 6);
        assert_eq!(d.frozen_size, Some(d.size));

        // The client moves the shared offset after freeze; restore puts it back.
        rustix::fs::seek(&fd, SeekFrom::Start(100)).expect("seek");
        let new = MemfdHandler.retrieve(fd.as_fd(), &data).expect("retrieve");
        assert_ne!(new.as_raw_fd(), fd.as_raw_fd());
        assert_eq!(FileKey::of(new.as_fd()), FileKey::of(fd.as_fd()));
        assert_eq!(rustix::fs::tell(&new).expect("tell"), 6);
        assert_eq!(
            rustix::fs::fstat(&new).expect("fstat").st_size as u64,
            d.size
        );
        let mut buf = vec![0u8; CONTENT.len()];
        rustix::io::pread(&new, &mut buf, 0).expect("pread");
        assert_eq!(buf, CONTENT);
        let flags = rustix::io::fcntl_getfd(&new).expect("getfd");
        assert!(flags.contains(rustix::io::FdFlags::CLOEXEC));
    }

    #[test]
    fn seals_are_recorded() {
        let fd = guest_ram();
        rustix::fs::fcntl_add_seals(&fd, SealFlags::GROW | SealFlags::SHRINK).expect("seal");
        let data = preserve_and_freeze(&MemfdHandler, fd.as_fd());
        let seals = SealFlags::from_bits_retain(decoded(&data).seals);
        assert!(seals.contains(SealFlags::GROW | SealFlags::SHRINK));
        assert!(!seals.contains(SealFlags::WRITE));
    }

    /// A memfd sealed against resizing when PREPARE records it freezes at that
    /// size without asking again; one resized before its seals, or sealed only
    /// after PREPARE, freezes at the size it has then.
    #[test]
    fn frozen_size_follows_resizes_around_the_seals() {
        // Resized, then sealed, then PREPARE: the recorded size is final.
        let fd = guest_ram();
        let seal = |fd: &OwnedFd| {
            rustix::fs::fcntl_add_seals(fd, SealFlags::GROW | SealFlags::SHRINK).expect("seal");
        };
        let early = {
            let mut data = MemfdHandler
                .preserve(&crate::FileInfo::new(fd.as_fd()).expect("info"))
                .expect("preserve");
            rustix::fs::ftruncate(&fd, 8192).expect("grow");
            seal(&fd);
            MemfdHandler
                .prepare(fd.as_fd(), &mut data)
                .expect("prepare");
            MemfdHandler.freeze(fd.as_fd(), &mut data).expect("freeze");
            data
        };
        assert_eq!(decoded(&early).frozen_size, Some(8192));
        MemfdHandler.retrieve(fd.as_fd(), &early).expect("retrieve");

        // PREPARE, then resized, then sealed: the freeze looks again.
        let fd = guest_ram();
        let mut late = MemfdHandler
            .preserve(&crate::FileInfo::new(fd.as_fd()).expect("info"))
            .expect("preserve");
        MemfdHandler
            .prepare(fd.as_fd(), &mut late)
            .expect("prepare");
        rustix::fs::ftruncate(&fd, 8192).expect("grow");
        seal(&fd);
        MemfdHandler.freeze(fd.as_fd(), &mut late).expect("freeze");
        assert_eq!(decoded(&late).frozen_size, Some(8192));
        MemfdHandler.retrieve(fd.as_fd(), &late).expect("retrieve");
    }

    /// Data carried from elsewhere may name the file longer than a memfd name
    /// can be: the freeze still records it whole.
    #[test]
    fn freeze_keeps_a_name_longer_than_its_buffer() {
        let fd = guest_ram();
        let long = MemfdData {
            size: 1,
            seals: 0,
            name: "n".repeat(2 * FROZEN_DATA_MAX),
            offset: 0,
            frozen_size: None,
        };
        let mut data = encode(COMPATIBLE, &long).expect("encode");
        MemfdHandler.freeze(fd.as_fd(), &mut data).expect("freeze");
        let frozen = decoded(&data);
        assert_eq!(frozen.name, long.name);
        assert_eq!(frozen.frozen_size, Some((CONTENT.len() + 4096) as u64));
    }

    #[test]
    fn truncate_after_freeze_is_eio() {
        let fd = guest_ram();
        let data = preserve_and_freeze(&MemfdHandler, fd.as_fd());
        rustix::fs::ftruncate(&fd, 10).expect("truncate");
        assert_eq!(
            MemfdHandler.retrieve(fd.as_fd(), &data).map(drop),
            Err(Errno::IO)
        );
        rustix::fs::ftruncate(&fd, 1 << 20).expect("grow");
        assert_eq!(
            MemfdHandler.retrieve(fd.as_fd(), &data).map(drop),
            Err(Errno::IO)
        );
    }

    #[test]
    fn unfreeze_and_cancel_forget_the_frozen_size() {
        let fd = guest_ram();
        let mut data = preserve_and_freeze(&MemfdHandler, fd.as_fd());
        MemfdHandler.unfreeze(fd.as_fd(), &mut data);
        assert_eq!(decoded(&data).frozen_size, None);
        // Not frozen: a resize between unfreeze and the next freeze is allowed.
        rustix::fs::ftruncate(&fd, 10).expect("truncate");
        MemfdHandler
            .freeze(fd.as_fd(), &mut data)
            .expect("refreeze");
        assert_eq!(decoded(&data).frozen_size, Some(10));
        MemfdHandler.cancel(fd.as_fd(), &mut data);
        assert_eq!(decoded(&data).frozen_size, None);
        MemfdHandler.retrieve(fd.as_fd(), &data).expect("retrieve");
    }

    #[test]
    fn unfreeze_leaves_garbage_alone() {
        let fd = guest_ram();
        let mut data = b"garbage".to_vec();
        MemfdHandler.unfreeze(fd.as_fd(), &mut data);
        assert_eq!(data, b"garbage");
    }

    #[test]
    fn hugetlb_memfd_is_accepted_when_the_machine_has_huge_pages() {
        let Ok(fd) = rustix::fs::memfd_create("huge", MemfdFlags::CLOEXEC | MemfdFlags::HUGETLB)
        else {
            return; // No hugetlbfs here; nothing to check.
        };
        let data = preserve_and_freeze(&MemfdHandler, fd.as_fd());
        assert_eq!(decoded(&data).name, "huge");
        let new = MemfdHandler.retrieve(fd.as_fd(), &data).expect("retrieve");
        assert_eq!(FileKey::of(new.as_fd()), FileKey::of(fd.as_fd()));
    }

    #[test]
    fn name_with_spaces_and_deleted_looking_suffix() {
        let fd =
            rustix::fs::memfd_create("vm 1 (deleted)", MemfdFlags::CLOEXEC).expect("memfd_create");
        let data = MemfdHandler
            .preserve(&crate::FileInfo::new(fd.as_fd()).expect("info"))
            .expect("preserve");
        assert_eq!(decoded(&data).name, "vm 1 (deleted)");
    }

    #[test]
    fn describe_names_and_sizes() {
        let fd = rustix::fs::memfd_create("guest-ram", MemfdFlags::CLOEXEC).expect("memfd_create");
        rustix::fs::ftruncate(&fd, 64 << 20).expect("truncate");
        let data = MemfdHandler
            .preserve(&crate::FileInfo::new(fd.as_fd()).expect("info"))
            .expect("preserve");
        assert_eq!(
            MemfdHandler.describe(fd.as_fd(), &data),
            "memfd \"guest-ram\" 64 MiB"
        );
        assert_eq!(
            MemfdHandler.describe(fd.as_fd(), b"junk"),
            "memfd \"guest-ram\" 64 MiB"
        );
    }

    #[test]
    fn human_sizes() {
        assert_eq!(human_size(0), "0 B");
        assert_eq!(human_size(17), "17 B");
        assert_eq!(human_size(1024), "1 KiB");
        assert_eq!(human_size(1536), "1.5 KiB");
        assert_eq!(human_size(64 << 20), "64 MiB");
        assert_eq!(human_size(3 << 30), "3 GiB");
    }

    #[test]
    fn deserialize_checks_data_and_fd() {
        let fd = guest_ram();
        let data = MemfdHandler
            .preserve(&crate::FileInfo::new(fd.as_fd()).expect("info"))
            .expect("preserve");
        assert_eq!(MemfdHandler.deserialize(Some(fd.as_fd()), &data), Ok(()));
        assert_eq!(
            MemfdHandler.deserialize(None, b"\x01\x02\x03"),
            Err(Errno::INVAL)
        );
        let efd = rustix::event::eventfd(0, rustix::event::EventfdFlags::CLOEXEC).expect("eventfd");
        assert_eq!(
            MemfdHandler.deserialize(Some(efd.as_fd()), &data),
            Err(Errno::INVAL)
        );
    }
}
