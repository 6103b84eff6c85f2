//! Test helpers for luo: a real `luod` in its own temporary directory with its
//! own socket paths, readiness from `NOTIFY_SOCKET` (never a sleep), SIGTERM on
//! drop; control, device and session handles on it; memfd helpers.
//!
//! Tests of the `luod` package pass `env!("CARGO_BIN_EXE_luod")` to
//! [`Luod::start_binary`]; other packages find the binaries built beside their
//! test executable with [`sibling_binary`].

#![forbid(unsafe_code)]
#![allow(missing_docs)]

use std::io::{BufRead, BufReader, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::{UnixDatagram, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use luo_wire::control::{ControlReply, ControlRequest, Status};
use rustix::net::{AddressFamily, SocketAddrUnix, SocketFlags, SocketType};

/// A running daemon.
pub struct Luod {
    pub dir: tempfile::TempDir,
    pub socket: PathBuf,
    pub control: PathBuf,
    pub child: Child,
    notify: UnixDatagram,
}

impl Luod {
    /// Start the daemon `binary` with extra arguments and environment, and wait
    /// until it says READY=1.
    pub fn start_binary(binary: &Path, args: &[&str], env: &[(&str, &str)]) -> Luod {
        let dir = tempfile::tempdir().expect("tempdir");
        let socket = dir.path().join("luo.sock");
        let control = dir.path().join("control.sock");
        let notify_path = dir.path().join("notify.sock");
        let notify = UnixDatagram::bind(&notify_path).expect("bind notify socket");
        notify
            .set_read_timeout(Some(Duration::from_secs(30)))
            .expect("timeout");
        let log = std::fs::File::create(dir.path().join("luod.log")).expect("log");
        let child = Command::new(binary)
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

    /// The daemon's fds when it holds no handle of ours. Counted while a control
    /// connection it has answered is open, minus that connection: the daemon
    /// serves its handles in the order their events arrive, so every close the
    /// caller did before (and start-up's readiness socket) has been processed.
    pub fn idle_fd_count(&self) -> usize {
        let mut conn = self.control_conn();
        assert!(conn.call(&ControlRequest::Status).ok, "status");
        self.fd_count() - 1
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

    /// One control request on a new connection; a failure to get the reply
    /// panics with the daemon's log.
    pub fn control(&self, req: &ControlRequest) -> ControlReply {
        self.control_conn()
            .try_call(req)
            .unwrap_or_else(|e| panic!("{req:?}: {e}\n--- luod log ---\n{}", self.log()))
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
        self.try_read_reply().unwrap_or_else(|e| panic!("{e}"))
    }

    /// [`read_reply`](Self::read_reply), with the failure as an error.
    pub fn try_read_reply(&mut self) -> Result<Option<ControlReply>, String> {
        let mut line = String::new();
        match self.reader.read_line(&mut line) {
            Ok(0) => Ok(None),
            Ok(_) => serde_json::from_str(&line)
                .map(Some)
                .map_err(|e| format!("reply is not JSON ({e}): {line:?}")),
            Err(e) => Err(format!("read control: {e}")),
        }
    }

    /// [`call`](Self::call), with the failure as an error.
    pub fn try_call(&mut self, req: &ControlRequest) -> Result<ControlReply, String> {
        let mut line = serde_json::to_vec(req).expect("json");
        line.push(b'\n');
        self.writer
            .write_all(&line)
            .map_err(|e| format!("write control: {e}"))?;
        self.try_read_reply()?
            .ok_or_else(|| "the daemon closed the connection without a reply".to_owned())
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

impl Luod {
    /// A device handle through the client library.
    pub fn luo(&self) -> luo::Device {
        luo::Device::open_at(&self.socket).expect("open device")
    }

    /// Global PREPARE through the control socket.
    pub fn prepare(&self) {
        let r = self.control(&ControlRequest::Prepare);
        assert!(r.ok, "prepare: {:?}", r.error);
    }

    /// `luoctl update [--exec PATH]`: the reply comes from the next epoch (or
    /// the rolled-back one), which has said READY=1 by then; that is consumed
    /// here so the next wait sees the next epoch.
    pub fn update(&self, exec: Option<&str>) -> ControlReply {
        let r = self.control(&ControlRequest::Update {
            exec: exec.map(str::to_owned),
        });
        let execed = r.ok
            || r.error
                .as_deref()
                .is_some_and(|e| e.contains("rolled back"));
        if execed {
            self.wait_ready();
        }
        r
    }

    /// Poll the daemon's fd count until it equals `want` (it closes handles
    /// asynchronously), or fail after a few seconds.
    pub fn wait_fd_count(&self, want: usize) {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let n = self.fd_count();
            if n == want {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "daemon holds {n} fds, want {want}"
            );
            std::thread::sleep(Duration::from_millis(2));
        }
    }
}

/// A memfd holding `bytes`.
pub fn memfd(name: &str, bytes: &[u8]) -> OwnedFd {
    let fd = rustix::fs::memfd_create(name, rustix::fs::MemfdFlags::CLOEXEC).expect("memfd");
    let mut off = 0;
    while off < bytes.len() {
        off += rustix::io::write(&fd, &bytes[off..]).expect("write memfd");
    }
    fd
}

/// The whole content of a file, read from offset 0 without moving its offset.
pub fn contents(fd: &OwnedFd) -> Vec<u8> {
    let size = rustix::fs::fstat(fd).expect("fstat").st_size as usize;
    let mut buf = vec![0u8; size];
    let mut off = 0;
    while off < size {
        off += rustix::io::pread(fd, &mut buf[off..], off as u64).expect("pread");
    }
    buf
}

// ----- the live update, polling, luoctl, files (errnos, release, access, limits, status) -----

/// How long a condition the daemon reaches asynchronously (a handle's close) may
/// take before a test gives up on it.
pub const SETTLE_DEADLINE: Duration = Duration::from_secs(10);

impl Luod {
    /// Global PREPARE, then the live update, on one control connection, as
    /// `luoctl update --prepare` does; returns once the next epoch answered and
    /// said READY=1. Every handle of the old epoch is stale afterwards.
    pub fn prepare_and_update(&self) -> luo_wire::control::UpdateReport {
        let mut conn = self.control_conn();
        let reply = conn.call(&ControlRequest::Prepare);
        assert!(reply.ok, "prepare: {:?}\n{}", reply.error, self.log());
        self.update_on(conn)
    }

    /// The live update from global PREPARED (the caller prepared).
    pub fn update_prepared(&self) -> luo_wire::control::UpdateReport {
        self.update_on(self.control_conn())
    }

    fn update_on(&self, mut conn: ControlConn) -> luo_wire::control::UpdateReport {
        // The next epoch answers on this same connection.
        let reply = conn.call(&ControlRequest::Update { exec: None });
        assert!(reply.ok, "update: {:?}\n{}", reply.error, self.log());
        self.wait_ready();
        reply.update.expect("an update report")
    }

    /// A control request that must succeed.
    pub fn control_ok(&self, req: &ControlRequest) -> ControlReply {
        let reply = self.control(req);
        assert!(reply.ok, "{req:?}: {:?}\n{}", reply.error, self.log());
        reply
    }

    /// Poll `status` until `done` holds (the daemon sees a handle's last close
    /// asynchronously); panics after [`SETTLE_DEADLINE`] with the last status.
    pub fn wait_for_status(&self, what: &str, done: impl FnMut(&Status) -> bool) -> Status {
        self.wait_for(what, || self.status(), done)
    }

    /// [`wait_for_status`](Self::wait_for_status) with the status from `poll`
    /// (`luoctl status --json`, say).
    pub fn wait_for(
        &self,
        what: &str,
        mut poll: impl FnMut() -> Status,
        mut done: impl FnMut(&Status) -> bool,
    ) -> Status {
        let deadline = std::time::Instant::now() + SETTLE_DEADLINE;
        loop {
            let status = poll();
            if done(&status) {
                return status;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{what}: not reached; last status {status:#?}\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Run the real `luoctl` against this daemon.
    pub fn luoctl(&self, args: &[&str]) -> std::process::Output {
        Command::new(luoctl_binary())
            .arg("--socket")
            .arg(&self.socket)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run luoctl")
    }

    /// `luoctl status --json`, parsed.
    pub fn luoctl_status(&self) -> Status {
        let out = self.luoctl(&["status", "--json"]);
        assert!(
            out.status.success(),
            "luoctl status --json: {out:?}\n{}",
            self.log()
        );
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "luoctl status --json printed no Status ({e}):\n{}",
                String::from_utf8_lossy(&out.stdout)
            )
        })
    }
}

/// The `luoctl` binary: `$LUOCTL` when set, else the one built beside the test.
pub fn luoctl_binary() -> PathBuf {
    sibling_binary("luoctl", "LUOCTL")
}

/// A workspace binary: `$<var>` when set, else `<name>` in the target directory
/// the running test was built into (integration tests run from
/// `<target>/<profile>/deps/`; `cargo test --workspace` builds every binary).
pub fn sibling_binary(name: &str, var: &str) -> PathBuf {
    if let Some(path) = std::env::var_os(var) {
        return path.into();
    }
    let exe = std::env::current_exe().expect("current_exe");
    let path = exe
        .parent()
        .and_then(|deps| deps.parent())
        .map(|profile| profile.join(name))
        .expect("target dir");
    assert!(
        path.exists(),
        "{} is not built: run `cargo build --workspace` first, or set {var}",
        path.display()
    );
    path
}

/// The errno of a call that must fail.
pub fn errno<T: std::fmt::Debug>(result: luo::Result<T>) -> luo::Errno {
    result.expect_err("an error").errno()
}

impl Luod {
    /// Memfds the daemon holds open: exactly its preserved memfds, whatever
    /// handles come and go.
    pub fn memfd_count(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid()))
            .expect("daemon fd dir")
            .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
            .filter(|target| target.to_string_lossy().starts_with("/memfd:"))
            .count()
    }
}
