//! The daemon under test: a real `luod`, in a temporary directory with its own
//! sockets, started from this very binary.
//!
//! # Lifecycle
//! [`Daemon::start`] runs `luo-bench daemon --socket DIR/luo.sock` (luod's own
//! entry point, [`run_embedded`]) and waits for `READY=1` on a `NOTIFY_SOCKET` in
//! the same directory: no sleeps. At a live update luod re-executes
//! `/proc/self/exe` with the exec prefix `daemon`, so the next epoch is this binary
//! in the same role, and it says `READY=1` again ([`Daemon::wait_ready`]).
//! Dropping the [`Daemon`] sends SIGTERM, reaps it and removes the directory.
//!
//! # Unhappy paths
//! A daemon that exits, or says nothing for [`READY_TIMEOUT`], is
//! [`Error::Daemon`] with the tail of its log (stderr goes to `DIR/luod.log`).
//! A control request it refuses is [`Error::Control`].
//!
//! # Knobs, for profiling
//! - `LUO_BENCH_DAEMON_WRAPPER="valgrind --tool=callgrind --trace-children=yes"`
//!   runs the daemon under a wrapper (whitespace-separated words), in a process
//!   group of its own that the drop signals whole. [`Daemon::pid`] and
//!   [`Daemon::memory`] are then the wrapper's.
//! - `LUO_BENCH_KEEP=1` keeps the directory and its log, and prints where it is
//!   and the daemon's pid on stderr.

use std::ffi::OsString;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::{UnixDatagram, UnixStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use luo_wire::control::{ControlReply, ControlRequest};

use crate::error::{Context, Error, Result};

/// How long a daemon may take to say `READY=1`, at start or after an update.
pub const READY_TIMEOUT: Duration = Duration::from_secs(300);
/// How long a control request may take (an update of 100k fds included).
const CONTROL_TIMEOUT: Duration = Duration::from_secs(300);

/// `luo-bench daemon ARGS`: luod itself, re-executing as `luo-bench daemon` at a
/// live update.
pub fn run_embedded(args: impl IntoIterator<Item = OsString>) -> ExitCode {
    luod::cli::main(
        std::iter::once(OsString::from("luod")).chain(args),
        vec![crate::DAEMON_ROLE.into()],
    )
}

/// A running daemon in its own directory.
#[derive(Debug)]
pub struct Daemon {
    dir: Option<tempfile::TempDir>,
    socket: PathBuf,
    control: PathBuf,
    log: PathBuf,
    child: Child,
    /// Started under a wrapper, in a process group of its own.
    grouped: bool,
    notify: UnixDatagram,
}

/// A daemon's memory, from `/proc/PID/status` and `/proc/PID/smaps_rollup`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Memory {
    /// `VmRSS`, bytes.
    pub rss: u64,
    /// `RssAnon`, bytes: the heap and stacks.
    pub anon: u64,
    /// `Pss` of `smaps_rollup`, bytes: shared pages divided among their users.
    pub pss: u64,
}

impl Daemon {
    /// Start a daemon with luod's `args` after `--socket`, and wait until it
    /// serves.
    ///
    /// # Errors
    /// [`Error::Io`] if it cannot be spawned, [`Error::Daemon`] if it never
    /// gets ready.
    pub fn start(args: &[&str]) -> Result<Daemon> {
        let dir = tempfile::Builder::new()
            .prefix("luo-bench-")
            .tempdir()
            .context(|| "Cannot create a temporary directory".to_owned())?;
        let socket = dir.path().join("luo.sock");
        let control = dir.path().join("control.sock");
        let log = dir.path().join("luod.log");
        let notify_path = dir.path().join("notify.sock");
        let notify = UnixDatagram::bind(&notify_path)
            .context(|| format!("Cannot bind {}", notify_path.display()))?;
        notify
            .set_read_timeout(Some(Duration::from_millis(100)))
            .context(|| "Cannot set a timeout on the notify socket".to_owned())?;
        let exe = std::env::current_exe().context(|| "Cannot find this binary".to_owned())?;
        let wrapper: Vec<String> = std::env::var("LUO_BENCH_DAEMON_WRAPPER")
            .map(|w| w.split_whitespace().map(str::to_owned).collect())
            .unwrap_or_default();
        let mut cmd = match wrapper.split_first() {
            Some((program, rest)) => {
                let mut c = Command::new(program);
                // A group of its own, so that dropping it stops the wrapper's
                // child, the daemon, too. Unwrapped, it stays in ours and a ^C
                // reaches it.
                c.args(rest).arg(&exe).process_group(0);
                c
            }
            None => Command::new(&exe),
        };
        let log_file =
            std::fs::File::create(&log).context(|| format!("Cannot create {}", log.display()))?;
        let child = cmd
            .arg(crate::DAEMON_ROLE)
            .arg("--socket")
            .arg(&socket)
            .args(args)
            .env("NOTIFY_SOCKET", &notify_path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .context(|| format!("Cannot start {} {}", exe.display(), crate::DAEMON_ROLE))?;
        let keep = std::env::var_os("LUO_BENCH_KEEP").is_some();
        let mut d = Daemon {
            dir: Some(dir),
            socket,
            control,
            log,
            child,
            grouped: !wrapper.is_empty(),
            notify,
        };
        if keep {
            if let Some(dir) = d.dir.take() {
                let path = dir.keep();
                eprintln!("luo-bench: daemon pid {} in {}", d.pid(), path.display());
            }
        }
        d.wait_ready()?;
        Ok(d)
    }

    /// Block until the daemon (this epoch or the next) says `READY=1`.
    ///
    /// # Errors
    /// [`Error::Daemon`] if it exits or stays silent for [`READY_TIMEOUT`].
    pub fn wait_ready(&mut self) -> Result<()> {
        let deadline = Instant::now() + READY_TIMEOUT;
        let mut buf = [0u8; 256];
        loop {
            match self.notify.recv(&mut buf) {
                Ok(n) if buf[..n].split(|&b| b == b'\n').any(|l| l == b"READY=1") => {
                    return Ok(());
                }
                Ok(_) => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(e) => return Err(self.failed(&format!("notify socket failed: {e}"))),
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(self.failed(&format!("exited ({status}) before it was ready")));
            }
            if Instant::now() > deadline {
                return Err(self.failed("never said READY=1"));
            }
        }
    }

    /// The daemon's pid (it stays across live updates).
    #[must_use]
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The device socket.
    #[must_use]
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// A new control connection.
    ///
    /// # Errors
    /// [`Error::Io`] if the control socket refuses.
    pub fn control(&self) -> Result<Control> {
        let s = UnixStream::connect(&self.control)
            .context(|| format!("Cannot connect to {}", self.control.display()))?;
        s.set_read_timeout(Some(CONTROL_TIMEOUT))
            .context(|| "Cannot set a timeout on the control socket".to_owned())?;
        let reader = BufReader::new(
            s.try_clone()
                .context(|| "Cannot clone the control socket".to_owned())?,
        );
        Ok(Control { reader, writer: s })
    }

    /// One control request on a connection of its own; it must succeed.
    ///
    /// # Errors
    /// [`Error::Control`] for a refusal, [`Error::Io`] for a lost connection.
    pub fn call(&self, req: &ControlRequest) -> Result<ControlReply> {
        self.control()?.call(req)
    }

    /// A device handle, retrying while the device is busy.
    ///
    /// # Errors
    /// [`Error::Luo`] as [`luo::Device::open_at_retrying`].
    pub fn device(&self) -> Result<luo::Device> {
        luo::Device::open_at_retrying(&self.socket, Duration::from_secs(10))
            .context(|| format!("Cannot open the device at {}", self.socket.display()))
    }

    /// A new session under each of `names`, created through one device handle.
    ///
    /// # Errors
    /// [`Error::Luo`] for a device that will not open or a session refused.
    pub fn sessions(
        &self,
        names: impl IntoIterator<Item = impl AsRef<str>>,
    ) -> Result<Vec<luo::Session>> {
        let dev = self.device()?;
        names
            .into_iter()
            .map(|n| {
                let n = n.as_ref();
                dev.create_session(n)
                    .context(|| format!("Cannot create session {n}"))
            })
            .collect()
    }

    /// The daemon's memory now.
    ///
    /// # Errors
    /// [`Error::Io`] if `/proc/PID` cannot be read, [`Error::Check`] if a field
    /// is missing.
    pub fn memory(&self) -> Result<Memory> {
        let pid = self.pid();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
            .context(|| format!("Cannot read /proc/{pid}/status"))?;
        let rollup = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
            .context(|| format!("Cannot read /proc/{pid}/smaps_rollup"))?;
        let field = |text: &str, name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
                .map(|kib| kib * 1024)
                .ok_or_else(|| Error::Check(format!("no {name} for pid {pid}")))
        };
        Ok(Memory {
            rss: field(&status, "VmRSS:")?,
            anon: field(&status, "RssAnon:")?,
            pss: field(&rollup, "Pss:")?,
        })
    }

    /// The last lines of the daemon's log.
    #[must_use]
    pub fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// An [`Error::Daemon`] with the log's tail.
    #[must_use]
    pub fn failed(&self, what: &str) -> Error {
        Error::Daemon {
            what: what.to_owned(),
            log: self.log_tail(),
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let pid = rustix::process::Pid::from_child(&self.child);
        let _ = if self.grouped {
            rustix::process::kill_process_group(pid, rustix::process::Signal::TERM)
        } else {
            rustix::process::kill_process(pid, rustix::process::Signal::TERM)
        };
        let _ = self.child.wait();
    }
}

/// A control connection: one JSON request per line, one reply per line.
#[derive(Debug)]
pub struct Control {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Control {
    /// Send a request without waiting for its reply.
    ///
    /// # Errors
    /// [`Error::Io`] if the connection is gone.
    pub fn send(&mut self, req: &ControlRequest) -> Result<()> {
        let mut line = serde_json::to_vec(req).map_err(|e| Error::Check(e.to_string()))?;
        line.push(b'\n');
        self.writer
            .write_all(&line)
            .context(|| format!("Cannot send {req:?}"))
    }

    /// The next reply, whatever it says.
    ///
    /// # Errors
    /// [`Error::Io`] if the connection ends or the line is not a reply.
    pub fn recv(&mut self) -> Result<ControlReply> {
        let mut line = String::new();
        let n = self
            .reader
            .read_line(&mut line)
            .context(|| "Cannot read a control reply".to_owned())?;
        if n == 0 {
            return Err(Error::Io {
                what: "The control connection ended without a reply".to_owned(),
                source: std::io::ErrorKind::UnexpectedEof.into(),
            });
        }
        serde_json::from_str(&line).map_err(|e| Error::Check(format!("bad control reply: {e}")))
    }

    /// Send a request and wait for its reply, which must be a success.
    ///
    /// # Errors
    /// [`Error::Control`] for a refusal, [`Error::Io`] for a lost connection.
    pub fn call(&mut self, req: &ControlRequest) -> Result<ControlReply> {
        self.send(req)?;
        let reply = self.recv()?;
        if !reply.ok {
            return Err(Error::Control {
                op: format!("{req:?}"),
                errno: reply.errno,
                error: reply.error.unwrap_or_default(),
            });
        }
        Ok(reply)
    }
}
