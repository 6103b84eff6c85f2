//! `socket-v1`: any socket: listening or connected TCP, UDP, unix, and the rest.
//!
//! A socket is recognised by fstat alone (`S_ISSOCK`). Its state lives in the
//! kernel, and the daemon's reference keeps it across the userspace live update
//! (a listening socket keeps its port and its accept queue), so the handler only
//! records what `luoctl status` shows and what a restorer can check: domain, type,
//! whether it listens, the local address and, when connected, the peer.
//!
//! Lifecycle: `preserve`, `prepare` and `freeze` each record the socket as it is
//! then (the client shares it and may still `listen` or `connect`); `retrieve`
//! returns a new fd to the same open socket.
//!
//! Unhappy paths: data that does not decode is `EINVAL`, and so is an fd that is
//! no longer a socket of the recorded domain and type. An `O_PATH` fd to a socket
//! inode is not a socket and is refused. Traffic the client sends or receives
//! after FREEZE is not visible here and is not checked.

use std::os::fd::{BorrowedFd, OwnedFd};

use luo_uapi::Errno;
use rustix::fs::FileType;
use rustix::net::{AddressFamily, SocketAddrAny, SocketAddrUnix, SocketType, sockopt};

use super::{decode, dup, encode};
use crate::file_handler::{FileHandler, FileInfo};

const COMPATIBLE: &str = "socket-v1";

/// The handler of sockets; see the module docs.
#[derive(Debug, Default, Clone, Copy)]
pub struct SocketHandler;

/// What `socket-v1` keeps per socket.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct SocketData {
    /// `SO_DOMAIN`, e.g. `AF_INET`.
    domain: u16,
    /// `SO_TYPE`, e.g. `SOCK_STREAM`.
    sock_type: u32,
    /// `SO_ACCEPTCONN`.
    listening: bool,
    /// The local address; `None` when unnamed (an unbound unix socket).
    local: Option<String>,
    /// The peer's address, when connected to a named peer.
    peer: Option<String>,
}

fn is_socket(file: &FileInfo<'_>) -> bool {
    FileType::from_raw_mode(file.stat().st_mode) == FileType::Socket && file.is_open()
}

/// An address as people write it: `127.0.0.1:80`, `[::1]:80`, a unix path,
/// `@name` for an abstract unix name; `None` for an unnamed unix socket.
fn addr_string(addr: &SocketAddrAny) -> Option<String> {
    match addr.address_family() {
        AddressFamily::INET | AddressFamily::INET6 => std::net::SocketAddr::try_from(addr.clone())
            .ok()
            .map(|a| a.to_string()),
        AddressFamily::UNIX => {
            // An unnamed address is the family alone. Checked on the raw length:
            // rustix 1.1 converts it to an empty abstract name, not to unnamed.
            if addr.addr_len() as usize <= size_of::<u16>() {
                return None;
            }
            let unix = SocketAddrUnix::try_from(addr.clone()).ok()?;
            if let Some(path) = unix.path_bytes() {
                Some(String::from_utf8_lossy(path).into_owned())
            } else {
                unix.abstract_name()
                    .map(|name| format!("@{}", String::from_utf8_lossy(name)))
            }
        }
        _ => Some(format!("{addr:?}")),
    }
}

/// The socket `fd` as it is now.
fn record(fd: BorrowedFd<'_>) -> Result<SocketData, Errno> {
    let domain = sockopt::socket_domain(fd)?;
    let sock_type = sockopt::socket_type(fd)?;
    // A socket family may not answer these (some have no address); that does not
    // make it less preservable, only less described.
    let listening = sockopt::socket_acceptconn(fd).unwrap_or(false);
    let local = rustix::net::getsockname(fd)
        .ok()
        .as_ref()
        .and_then(addr_string);
    let peer = rustix::net::getpeername(fd)
        .ok()
        .flatten()
        .as_ref()
        .and_then(addr_string);
    Ok(SocketData {
        domain: domain.as_raw(),
        sock_type: sock_type.as_raw(),
        listening,
        local,
        peer,
    })
}

/// Whether `fd` is still the socket `data` describes.
fn matches(fd: BorrowedFd<'_>, data: &SocketData) -> bool {
    FileInfo::new(fd).is_ok_and(|file| is_socket(&file))
        && sockopt::socket_domain(fd).is_ok_and(|d| d.as_raw() == data.domain)
        && sockopt::socket_type(fd).is_ok_and(|t| t.as_raw() == data.sock_type)
}

fn type_name(sock_type: SocketType) -> Option<&'static str> {
    match sock_type {
        SocketType::STREAM => Some("stream"),
        SocketType::DGRAM => Some("dgram"),
        SocketType::SEQPACKET => Some("seqpacket"),
        SocketType::RAW => Some("raw"),
        SocketType::RDM => Some("rdm"),
        _ => None,
    }
}

/// "tcp listen 127.0.0.1:8080", "udp 127.0.0.1:53", "unix stream (unnamed)", ...
fn describe_data(d: &SocketData) -> String {
    let domain = AddressFamily::from_raw(d.domain);
    let sock_type = SocketType::from_raw(d.sock_type);
    let kind = match domain {
        AddressFamily::INET | AddressFamily::INET6 => match sock_type {
            SocketType::STREAM => "tcp".to_owned(),
            SocketType::DGRAM => "udp".to_owned(),
            t => type_name(t).map_or_else(|| format!("inet type {}", d.sock_type), str::to_owned),
        },
        AddressFamily::UNIX => match type_name(sock_type) {
            Some(t) => format!("unix {t}"),
            None => format!("unix type {}", d.sock_type),
        },
        _ => format!("socket family {} type {}", d.domain, d.sock_type),
    };
    let mut out = kind;
    if d.listening {
        out.push_str(" listen");
    } else if d.peer.is_some() && sock_type != SocketType::DGRAM {
        out.push_str(" connected");
    }
    match &d.local {
        Some(local) => {
            out.push(' ');
            out.push_str(local);
        }
        None => out.push_str(" (unnamed)"),
    }
    if let Some(peer) = &d.peer {
        out.push_str(" -> ");
        out.push_str(peer);
    }
    out
}

impl FileHandler for SocketHandler {
    fn compatible(&self) -> &'static str {
        COMPATIBLE
    }

    fn freeze_is_local(&self) -> bool {
        true
    }

    fn can_preserve(&self, file: &FileInfo<'_>) -> bool {
        is_socket(file)
    }

    fn preserve(&self, file: &FileInfo<'_>) -> Result<Vec<u8>, Errno> {
        let fd = file.fd();
        encode(COMPATIBLE, &record(fd)?)
    }

    fn prepare(&self, fd: BorrowedFd<'_>, data: &mut Vec<u8>) -> Result<(), Errno> {
        *data = encode(COMPATIBLE, &record(fd)?)?;
        Ok(())
    }

    fn freeze(&self, fd: BorrowedFd<'_>, data: &mut Vec<u8>) -> Result<(), Errno> {
        *data = encode(COMPATIBLE, &record(fd)?)?;
        Ok(())
    }

    fn deserialize(&self, fd: Option<BorrowedFd<'_>>, data: &[u8]) -> Result<(), Errno> {
        let recorded: SocketData = decode(COMPATIBLE, data)?;
        match fd {
            Some(fd) if !matches(fd, &recorded) => Err(Errno::INVAL),
            _ => Ok(()),
        }
    }

    fn retrieve(&self, fd: BorrowedFd<'_>, data: &[u8]) -> Result<OwnedFd, Errno> {
        self.deserialize(Some(fd), data)?;
        dup(fd)
    }

    fn describe(&self, fd: BorrowedFd<'_>, data: &[u8]) -> String {
        decode(COMPATIBLE, data)
            .ok()
            .or_else(|| record(fd).ok())
            .map_or_else(|| "socket".to_owned(), |d| describe_data(&d))
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream, UdpSocket};
    use std::os::fd::{AsFd, AsRawFd};

    use rustix::net::SocketFlags;

    use super::*;
    use crate::file_handler::FileKey;
    use crate::handlers::preserve_and_freeze;

    #[test]
    fn listening_tcp_round_trips_and_still_accepts() {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("local_addr").port();
        let data = preserve_and_freeze(&SocketHandler, listener.as_fd());
        assert_eq!(
            SocketHandler.describe(listener.as_fd(), &data),
            format!("tcp listen 127.0.0.1:{port}")
        );

        let new = SocketHandler
            .retrieve(listener.as_fd(), &data)
            .expect("retrieve");
        assert_ne!(new.as_raw_fd(), listener.as_raw_fd());
        assert_eq!(FileKey::of(new.as_fd()), FileKey::of(listener.as_fd()));

        // The connection is queued before accept, so accept cannot block.
        let mut client = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        let accepted = rustix::net::accept(&new).expect("accept on the retrieved fd");
        let mut server = std::net::TcpStream::from(accepted);
        client.write_all(b"ping").expect("write");
        let mut buf = [0u8; 4];
        server.read_exact(&mut buf).expect("read");
        assert_eq!(&buf, b"ping");
    }

    #[test]
    fn connected_tcp_is_accepted_and_described() {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("local_addr").port();
        let client = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        let local = client.local_addr().expect("local_addr");
        let data = preserve_and_freeze(&SocketHandler, client.as_fd());
        assert_eq!(
            SocketHandler.describe(client.as_fd(), &data),
            format!("tcp connected {local} -> 127.0.0.1:{port}")
        );
    }

    #[test]
    fn udp_is_accepted() {
        let udp = UdpSocket::bind("127.0.0.1:0").expect("bind");
        let port = udp.local_addr().expect("local_addr").port();
        let data = preserve_and_freeze(&SocketHandler, udp.as_fd());
        assert_eq!(
            SocketHandler.describe(udp.as_fd(), &data),
            format!("udp 127.0.0.1:{port}")
        );
        SocketHandler
            .retrieve(udp.as_fd(), &data)
            .expect("retrieve");
    }

    #[test]
    fn ipv6_is_described_with_brackets() {
        let Ok(listener) = TcpListener::bind("[::1]:0") else {
            return; // No IPv6 loopback here.
        };
        let port = listener.local_addr().expect("local_addr").port();
        let data = preserve_and_freeze(&SocketHandler, listener.as_fd());
        assert_eq!(
            SocketHandler.describe(listener.as_fd(), &data),
            format!("tcp listen [::1]:{port}")
        );
    }

    #[test]
    fn unix_socketpair_is_accepted() {
        let (a, b) = rustix::net::socketpair(
            AddressFamily::UNIX,
            SocketType::STREAM,
            SocketFlags::CLOEXEC,
            None,
        )
        .expect("socketpair");
        let data = preserve_and_freeze(&SocketHandler, a.as_fd());
        assert_eq!(
            SocketHandler.describe(a.as_fd(), &data),
            "unix stream (unnamed)"
        );
        let new = SocketHandler.retrieve(a.as_fd(), &data).expect("retrieve");
        rustix::io::write(&b, b"x").expect("write");
        let mut buf = [0u8; 1];
        assert_eq!(rustix::io::read(&new, &mut buf), Ok(1));
        assert_eq!(&buf, b"x");
    }

    #[test]
    fn unix_dgram_socketpair_is_accepted() {
        let (a, _b) = rustix::net::socketpair(
            AddressFamily::UNIX,
            SocketType::DGRAM,
            SocketFlags::CLOEXEC,
            None,
        )
        .expect("socketpair");
        let data = preserve_and_freeze(&SocketHandler, a.as_fd());
        assert_eq!(
            SocketHandler.describe(a.as_fd(), &data),
            "unix dgram (unnamed)"
        );
    }

    #[test]
    fn listening_unix_socket_is_described_by_path() {
        let path =
            std::env::temp_dir().join(format!("luo-socket-test-{}.sock", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let listener = std::os::unix::net::UnixListener::bind(&path).expect("bind");
        let data = preserve_and_freeze(&SocketHandler, listener.as_fd());
        let described = SocketHandler.describe(listener.as_fd(), &data);
        let _ = std::fs::remove_file(&path);
        assert_eq!(described, format!("unix stream listen {}", path.display()));
    }

    #[test]
    fn abstract_unix_name_is_described_with_at() {
        let sock = rustix::net::socket_with(
            AddressFamily::UNIX,
            SocketType::DGRAM,
            SocketFlags::CLOEXEC,
            None,
        )
        .expect("socket");
        let name = format!("luo-socket-test-{}", std::process::id());
        let addr = SocketAddrUnix::new_abstract_name(name.as_bytes()).expect("address");
        rustix::net::bind(&sock, &addr).expect("bind");
        let data = preserve_and_freeze(&SocketHandler, sock.as_fd());
        assert_eq!(
            SocketHandler.describe(sock.as_fd(), &data),
            format!("unix dgram @{name}")
        );
    }

    #[test]
    fn listen_after_preserve_is_recorded_at_freeze() {
        let sock = rustix::net::socket_with(
            AddressFamily::INET,
            SocketType::STREAM,
            SocketFlags::CLOEXEC,
            None,
        )
        .expect("socket");
        let mut data = SocketHandler
            .preserve(&crate::FileInfo::new(sock.as_fd()).expect("info"))
            .expect("preserve");
        assert!(
            !decode::<SocketData>(COMPATIBLE, &data)
                .expect("decode")
                .listening
        );
        rustix::net::bind(&sock, &std::net::SocketAddr::from(([127, 0, 0, 1], 0))).expect("bind");
        rustix::net::listen(&sock, 1).expect("listen");
        SocketHandler
            .prepare(sock.as_fd(), &mut data)
            .expect("prepare");
        SocketHandler
            .freeze(sock.as_fd(), &mut data)
            .expect("freeze");
        assert!(
            decode::<SocketData>(COMPATIBLE, &data)
                .expect("decode")
                .listening
        );
    }

    #[test]
    fn deserialize_checks_domain_and_type() {
        let udp = UdpSocket::bind("127.0.0.1:0").expect("bind");
        let tcp = TcpListener::bind("127.0.0.1:0").expect("bind");
        let udp_data = SocketHandler
            .preserve(&crate::FileInfo::new(udp.as_fd()).expect("info"))
            .expect("preserve");
        assert_eq!(
            SocketHandler.deserialize(Some(udp.as_fd()), &udp_data),
            Ok(())
        );
        assert_eq!(
            SocketHandler.deserialize(Some(tcp.as_fd()), &udp_data),
            Err(Errno::INVAL)
        );
        assert_eq!(
            SocketHandler.retrieve(tcp.as_fd(), &udp_data).map(drop),
            Err(Errno::INVAL)
        );
        assert_eq!(SocketHandler.deserialize(None, b"\x00"), Err(Errno::INVAL));
    }
}
