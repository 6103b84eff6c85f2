//! A real `luod` for integration tests: its own temporary directory, its own
//! socket paths, readiness from `NOTIFY_SOCKET` (no sleeps), SIGTERM on drop.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::{UnixDatagram, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use luo_wire::control::{ControlReply, ControlRequest, Status};
use rustix::net::{AddressFamily, SocketAddrUnix, SocketFlags, SocketType};

pub const LUOD: &str = env!("CARGO_BIN_EXE_luod");

/// A running daemon.
pub struct Luod {
    pub dir: tempfile::TempDir,
    pub socket: PathBuf,
    pub control: PathBuf,
    pub child: Child,
    notify: UnixDatagram,
}

impl Luod {
    pub fn start() -> Luod {
        Self::start_with(&[], &[])
    }

    /// Start `luod` with extra arguments and environment, and wait until it says READY=1.
    pub fn start_with(args: &[&str], env: &[(&str, &str)]) -> Luod {
        let dir = tempfile::tempdir().expect("tempdir");
        let socket = dir.path().join("luo.sock");
        let control = dir.path().join("control.sock");
        let notify_path = dir.path().join("notify.sock");
        let notify = UnixDatagram::bind(&notify_path).expect("bind notify socket");
        notify
            .set_read_timeout(Some(Duration::from_secs(30)))
            .expect("timeout");
        let log = std::fs::File::create(dir.path().join("luod.log")).expect("log");
        let child = Command::new(LUOD)
            .arg("--socket")
            .arg(&socket)
            .args(args)
            .envs(env.iter().copied())
            .env("NOTIFY_SOCKET", &notify_path)
            .env("RUST_LOG", "debug")
            .stdin(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn luod");
        let d = Luod {
            dir,
            socket,
            control,
            child,
            notify,
        };
        d.wait_ready();
        d
    }

    /// Block until the daemon (this epoch or the next) says READY=1.
    pub fn wait_ready(&self) {
        let mut buf = [0u8; 64];
        loop {
            let n = self
                .notify
                .recv(&mut buf)
                .unwrap_or_else(|e| panic!("luod never got ready: {e}\n{}", self.log()));
            if &buf[..n] == b"READY=1" {
                return;
            }
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("luod.log")).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Open fds of the daemon.
    pub fn fd_count(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid()))
            .expect("daemon fd dir")
            .count()
    }

    /// A control connection.
    pub fn control_conn(&self) -> ControlConn {
        let s = UnixStream::connect(&self.control).expect("connect control");
        s.set_read_timeout(Some(Duration::from_secs(120)))
            .expect("timeout");
        ControlConn {
            reader: BufReader::new(s.try_clone().expect("clone")),
            writer: s,
        }
    }

    pub fn control(&self, req: &ControlRequest) -> ControlReply {
        self.control_conn().call(req)
    }

    pub fn status(&self) -> Status {
        let r = self.control(&ControlRequest::Status);
        match r.status {
            Some(s) => s,
            None => panic!("status failed: {:?}", r.error),
        }
    }

    /// A raw device connection (no HELLO yet).
    pub fn raw(&self) -> OwnedFd {
        connect_seqpacket(&self.socket)
    }

    /// A device connection that said HELLO.
    pub fn device(&self) -> OwnedFd {
        let fd = self.raw();
        let hello = luo_wire::Hello::new(luo_wire::Abi::RfcV4);
        let r = call(
            &fd,
            luo_wire::HELLO_CMD,
            zerocopy::IntoBytes::as_bytes(&hello),
            None,
        );
        assert_eq!(r.result, Ok(()), "HELLO");
        fd
    }
}

impl Drop for Luod {
    fn drop(&mut self) {
        let _ = rustix::process::kill_process(
            rustix::process::Pid::from_child(&self.child),
            rustix::process::Signal::TERM,
        );
        let _ = self.child.wait();
    }
}

pub struct ControlConn {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl ControlConn {
    pub fn send_line(&mut self, line: &[u8]) {
        self.writer.write_all(line).expect("write control");
    }

    pub fn read_reply(&mut self) -> Option<ControlReply> {
        let mut line = String::new();
        match self.reader.read_line(&mut line) {
            Ok(0) => None,
            Ok(_) => Some(serde_json::from_str(&line).expect("reply is JSON")),
            Err(e) => panic!("read control: {e}"),
        }
    }

    pub fn call(&mut self, req: &ControlRequest) -> ControlReply {
        let mut line = serde_json::to_vec(req).expect("json");
        line.push(b'\n');
        self.send_line(&line);
        self.read_reply().expect("a reply")
    }
}

pub fn connect_seqpacket(path: &Path) -> OwnedFd {
    let fd = rustix::net::socket_with(
        AddressFamily::UNIX,
        SocketType::SEQPACKET,
        SocketFlags::CLOEXEC,
        None,
    )
    .expect("socket");
    rustix::net::connect(&fd, &SocketAddrUnix::new(path).expect("addr")).expect("connect");
    fd
}

/// One request, one reply.
pub fn call(
    fd: &OwnedFd,
    cmd: u32,
    payload: &[u8],
    with: Option<std::os::fd::BorrowedFd<'_>>,
) -> luo_wire::Reply {
    luo_wire::send_request(fd.as_fd(), cmd, payload, with).expect("send");
    luo_wire::recv_reply(fd.as_fd()).expect("reply")
}
