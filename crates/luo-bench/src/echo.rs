//! The baselines' transport floor: a raw `SOCK_SEQPACKET` request and reply
//! between two processes, with one fd as `SCM_RIGHTS`, and nothing else.
//!
//! The peer is a child process, `luo-bench echo-peer PATH [--blocking]`: it
//! listens on PATH, says `ready` on stdout, and answers every datagram with the
//! same bytes after closing the fd that came with it (received close-on-exec,
//! like luod's). Frames are [`FRAME`] bytes, the size of a PRESERVE_FD request.
//!
//! - `--blocking`: one connection, served with blocking `recvmsg`/`sendmsg` and
//!   no event loop: the least any userspace design can do per round trip (the
//!   latency baseline).
//! - default: any number of connections on one thread with epoll, reading each
//!   until EAGAIN, the shape of luod's loop without its work (the throughput
//!   baseline).
//!
//! Buffers are allocated once. The peer exits when its stdin closes (the
//! [`EchoPeer`] is dropped) or, with `--blocking`, when its connection does.

use std::ffi::OsString;
use std::io::{BufRead, BufReader, IoSlice, IoSliceMut, Write};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitCode, Stdio};

use rustix::event::epoll;
use rustix::io::Errno;
use rustix::net::{
    AddressFamily, RecvAncillaryBuffer, RecvFlags, SendAncillaryBuffer, SendAncillaryMessage,
    SendFlags, SocketAddrUnix, SocketFlags, SocketType,
};

use crate::error::{Context, Error, Result};

/// Bytes in every baseline frame: a 16-byte header and a 16-byte struct, as a
/// PRESERVE_FD request.
pub const FRAME: usize = 32;
/// Largest datagram the peer takes, as luod's receive buffer.
const MAX_DATAGRAM: usize = luo_wire::frame::MAX_FRAME + 1;
/// Datagrams served from one connection before the loop looks at the others.
const BURST: usize = 64;
const TOKEN_LISTENER: u64 = 0;
const TOKEN_STDIN: u64 = 1;
const FIRST_CONN: u64 = 2;

/// `luo-bench echo-peer PATH [--blocking]`.
pub fn run_peer(args: impl IntoIterator<Item = OsString>) -> ExitCode {
    let args: Vec<OsString> = args.into_iter().collect();
    let blocking = args.iter().any(|a| a == "--blocking");
    let Some(path) = args.iter().find(|a| *a != "--blocking") else {
        eprintln!("usage: luo-bench echo-peer PATH [--blocking]");
        return ExitCode::FAILURE;
    };
    match serve(Path::new(path), blocking) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("luo-bench echo-peer: {}", e.one_line());
            ExitCode::FAILURE
        }
    }
}

/// A `SOCK_SEQPACKET` unix socket, and the address of `path`, for either end.
fn seqpacket_at(path: &Path) -> Result<(OwnedFd, SocketAddrUnix)> {
    let fd = rustix::net::socket_with(
        AddressFamily::UNIX,
        SocketType::SEQPACKET,
        SocketFlags::CLOEXEC,
        None,
    )
    .context(|| "Cannot create a socket".to_owned())?;
    let addr = SocketAddrUnix::new(path).context(|| format!("Bad path {}", path.display()))?;
    Ok((fd, addr))
}

fn serve(path: &Path, blocking: bool) -> Result<()> {
    let (listener, addr) = seqpacket_at(path)?;
    rustix::net::bind(&listener, &addr).context(|| format!("Cannot bind {}", path.display()))?;
    rustix::net::listen(&listener, 128).context(|| "Cannot listen".to_owned())?;
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "ready")
            .and_then(|()| out.flush())
            .context(|| "Cannot say ready".to_owned())?;
    }
    let mut buf = vec![0u8; MAX_DATAGRAM];
    if blocking {
        let conn = rustix::net::accept_with(&listener, SocketFlags::CLOEXEC)
            .context(|| "Cannot accept".to_owned())?;
        while echo_one(conn.as_fd(), &mut buf)?.is_some() {}
        return Ok(());
    }
    serve_epoll(&listener, &mut buf)
}

/// Receive one datagram, close its fds, send its bytes back. `None` when the
/// peer has gone (or, nonblocking, [`Errno::AGAIN`] as an error).
fn echo_one(conn: BorrowedFd<'_>, buf: &mut [u8]) -> Result<Option<()>> {
    let mut space = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(4))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let msg = loop {
        match rustix::net::recvmsg(
            conn,
            &mut [IoSliceMut::new(buf)],
            &mut control,
            RecvFlags::CMSG_CLOEXEC,
        ) {
            Err(Errno::INTR) => {}
            Err(Errno::CONNRESET) => return Ok(None),
            other => break other.context(|| "echo recvmsg".to_owned())?,
        }
    };
    // Dropping the received fds closes them, as luod closes an unpreserved one.
    control.drain().for_each(drop);
    if msg.bytes == 0 {
        return Ok(None);
    }
    match rustix::net::send(conn, &buf[..msg.bytes], SendFlags::NOSIGNAL) {
        Ok(_) => Ok(Some(())),
        Err(Errno::PIPE | Errno::CONNRESET) => Ok(None),
        Err(e) => Err(Error::Os {
            what: "echo send".to_owned(),
            source: e,
        }),
    }
}

fn serve_epoll(listener: &OwnedFd, buf: &mut [u8]) -> Result<()> {
    use std::collections::HashMap;

    rustix::io::ioctl_fionbio(listener, true).context(|| "nonblocking listener".to_owned())?;
    let ep = epoll::create(epoll::CreateFlags::CLOEXEC).context(|| "epoll".to_owned())?;
    let stdin = std::io::stdin();
    for (fd, token) in [
        (listener.as_fd(), TOKEN_LISTENER),
        (stdin.as_fd(), TOKEN_STDIN),
    ] {
        epoll::add(
            &ep,
            fd,
            epoll::EventData::new_u64(token),
            epoll::EventFlags::IN,
        )
        .context(|| "epoll add".to_owned())?;
    }
    let mut conns: HashMap<u64, OwnedFd> = HashMap::new();
    let mut next = FIRST_CONN;
    let mut events = Vec::with_capacity(256);
    loop {
        events.clear();
        match epoll::wait(&ep, rustix::buffer::spare_capacity(&mut events), None) {
            Ok(_) | Err(Errno::INTR) => {}
            Err(e) => {
                return Err(Error::Os {
                    what: "epoll wait".to_owned(),
                    source: e,
                });
            }
        }
        for ev in events.drain(..) {
            match ev.data.u64() {
                TOKEN_STDIN => return Ok(()),
                TOKEN_LISTENER => loop {
                    match rustix::net::accept_with(
                        listener,
                        SocketFlags::CLOEXEC | SocketFlags::NONBLOCK,
                    ) {
                        Ok(fd) => {
                            epoll::add(
                                &ep,
                                &fd,
                                epoll::EventData::new_u64(next),
                                epoll::EventFlags::IN,
                            )
                            .context(|| "epoll add".to_owned())?;
                            conns.insert(next, fd);
                            next += 1;
                        }
                        Err(Errno::INTR) => {}
                        Err(_) => break,
                    }
                },
                token => {
                    let Some(conn) = conns.get(&token) else {
                        continue;
                    };
                    let mut gone = false;
                    for _ in 0..BURST {
                        match echo_one(conn.as_fd(), buf) {
                            Ok(Some(())) => {}
                            Ok(None) => {
                                gone = true;
                                break;
                            }
                            Err(Error::Os {
                                source: Errno::AGAIN,
                                ..
                            }) => break,
                            Err(_) => {
                                gone = true;
                                break;
                            }
                        }
                    }
                    if gone {
                        if let Some(fd) = conns.remove(&token) {
                            let _ = epoll::delete(&ep, &fd);
                        }
                    }
                }
            }
        }
    }
}

/// A running echo peer.
#[derive(Debug)]
pub struct EchoPeer {
    child: Child,
    /// Closing it tells the peer to exit.
    stdin: Option<ChildStdin>,
    path: PathBuf,
    _dir: tempfile::TempDir,
}

impl EchoPeer {
    /// Start a peer (`blocking`: one connection, no event loop) and wait until
    /// it listens.
    ///
    /// # Errors
    /// [`Error::Io`] if it cannot be started or never says `ready`.
    pub fn start(blocking: bool) -> Result<EchoPeer> {
        let dir = tempfile::Builder::new()
            .prefix("luo-bench-echo-")
            .tempdir()
            .context(|| "Cannot create a temporary directory".to_owned())?;
        let path = dir.path().join("echo.sock");
        let exe = std::env::current_exe().context(|| "Cannot find this binary".to_owned())?;
        let mut cmd = Command::new(exe);
        cmd.arg(crate::ECHO_PEER_ROLE).arg(&path);
        if blocking {
            cmd.arg("--blocking");
        }
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .context(|| "Cannot start the echo peer".to_owned())?;
        let stdin = child.stdin.take();
        let mut line = String::new();
        if let Some(out) = child.stdout.take() {
            BufReader::new(out)
                .read_line(&mut line)
                .context(|| "Cannot read from the echo peer".to_owned())?;
        }
        let peer = EchoPeer {
            child,
            stdin,
            path,
            _dir: dir,
        };
        if line.trim() != "ready" {
            return Err(Error::Check(format!(
                "the echo peer said {line:?}, not ready"
            )));
        }
        Ok(peer)
    }

    /// The peer's pid.
    #[must_use]
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// A connection to the peer.
    ///
    /// # Errors
    /// [`Error::Os`] if it cannot connect.
    pub fn connect(&self) -> Result<EchoClient> {
        let (fd, addr) = seqpacket_at(&self.path)?;
        rustix::net::connect(&fd, &addr)
            .context(|| "Cannot connect to the echo peer".to_owned())?;
        Ok(EchoClient {
            fd,
            frame: [0x5a; FRAME],
        })
    }
}

impl Drop for EchoPeer {
    fn drop(&mut self) {
        drop(self.stdin.take());
        let _ = rustix::process::kill_process(
            rustix::process::Pid::from_child(&self.child),
            rustix::process::Signal::TERM,
        );
        let _ = self.child.wait();
    }
}

/// One connection to an [`EchoPeer`].
#[derive(Debug)]
pub struct EchoClient {
    fd: OwnedFd,
    frame: [u8; FRAME],
}

impl EchoClient {
    /// Send one frame, with `fd` as `SCM_RIGHTS` if given, and wait for the echo.
    ///
    /// # Errors
    /// [`Error::Os`] if the peer is gone or the echo is not the frame's size.
    pub fn round_trip(&mut self, fd: Option<BorrowedFd<'_>>) -> Result<()> {
        let fds = fd.as_slice();
        let mut space = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(1))];
        let mut control = SendAncillaryBuffer::new(&mut space);
        if !fds.is_empty() && !control.push(SendAncillaryMessage::ScmRights(fds)) {
            return Err(Error::Check("no room for one fd".to_owned()));
        }
        rustix::net::sendmsg(
            &self.fd,
            &[IoSlice::new(&self.frame)],
            &mut control,
            SendFlags::NOSIGNAL,
        )
        .context(|| "raw sendmsg".to_owned())?;
        let mut reply = [0u8; 2 * FRAME];
        let n = loop {
            match rustix::net::recv(&self.fd, &mut reply, rustix::net::RecvFlags::empty()) {
                Err(Errno::INTR) => {}
                other => break other.context(|| "raw recv".to_owned())?.0,
            }
        };
        if n != FRAME {
            return Err(Error::Check(format!("echo of {n} bytes, sent {FRAME}")));
        }
        Ok(())
    }
}
