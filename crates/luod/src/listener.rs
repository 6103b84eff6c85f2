//! The daemon's listening sockets: the device socket (seqpacket, 0660) and the
//! control socket (stream, 0600).
//!
//! A path already in use is taken over only if nothing answers on it: a second
//! `luod` on the same path refuses to start instead of stealing the first one's
//! clients.

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use rustix::fs::{Gid, Mode};
use rustix::net::{AddressFamily, SocketAddrUnix, SocketFlags, SocketType};

/// Why a listening socket could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    /// Another daemon answers on the path.
    #[error("Another luod is already serving {0}")]
    InUse(PathBuf),
    /// A system call failed.
    #[error("Cannot {op} {path}")]
    Os {
        /// What was attempted.
        op: &'static str,
        /// On which path.
        path: PathBuf,
        /// The errno.
        #[source]
        source: rustix::io::Errno,
    },
    /// The configured group does not exist.
    #[error("No group named {0:?} in /etc/group")]
    NoGroup(String),
}

/// Bind and listen on `path` with `mode`, owned by `gid` when given. The socket
/// is nonblocking and close-on-exec.
///
/// # Errors
/// [`ListenError`].
pub fn listen(
    path: &Path,
    ty: SocketType,
    mode: u32,
    gid: Option<Gid>,
) -> Result<OwnedFd, ListenError> {
    let os = |op| {
        move |source| ListenError::Os {
            op,
            path: path.to_owned(),
            source,
        }
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| ListenError::Os {
            op: "create directory for",
            path: path.to_owned(),
            source: rustix::io::Errno::from_io_error(&e).unwrap_or(rustix::io::Errno::IO),
        })?;
    }
    let addr = SocketAddrUnix::new(path).map_err(os("name"))?;
    if path.exists() {
        let probe = rustix::net::socket_with(AddressFamily::UNIX, ty, SocketFlags::CLOEXEC, None)
            .map_err(os("probe"))?;
        if rustix::net::connect(&probe, &addr).is_ok() {
            return Err(ListenError::InUse(path.to_owned()));
        }
        rustix::fs::unlink(path).map_err(os("remove stale socket"))?;
    }
    let sock = rustix::net::socket_with(
        AddressFamily::UNIX,
        ty,
        SocketFlags::CLOEXEC | SocketFlags::NONBLOCK,
        None,
    )
    .map_err(os("create socket for"))?;
    rustix::net::bind(&sock, &addr).map_err(os("bind"))?;
    rustix::fs::chmod(path, Mode::from_raw_mode(mode)).map_err(os("chmod"))?;
    if let Some(gid) = gid {
        rustix::fs::chown(path, None, Some(gid)).map_err(os("chown"))?;
    }
    rustix::net::listen(&sock, 1024).map_err(os("listen on"))?;
    Ok(sock)
}

/// The gid of group `name`, from `/etc/group`.
///
/// # Errors
/// [`ListenError::NoGroup`].
pub fn group_id(name: &str) -> Result<Gid, ListenError> {
    let groups = std::fs::read_to_string("/etc/group").unwrap_or_default();
    groups
        .lines()
        .filter_map(|l| {
            let mut f = l.split(':');
            Some((f.next()?, f.nth(1)?.parse::<u32>().ok()?))
        })
        .find(|(n, _)| *n == name)
        .map(|(_, gid)| Gid::from_raw(gid))
        .ok_or_else(|| ListenError::NoGroup(name.to_owned()))
}
