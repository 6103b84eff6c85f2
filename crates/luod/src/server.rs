//! The event loop: one thread, one epoll, every handle a nonblocking socket.
//!
//! Handles and what closing them means:
//!
//! - a **device handle** is a connection to the device socket that said HELLO;
//!   closing it frees the device for the next holder (SPEC §8.2, §9);
//! - a **session handle** is one end of a socketpair the daemon made; the other
//!   end went to the client, which may dup it, pass it on or fork. When the last
//!   copy closes anywhere, the daemon's end reads end-of-file and the session is
//!   released (SPEC §5: cancel or finish, then unpreserve, LIFO);
//! - a **control handle** is a `luoctl` connection to the control socket.
//!
//! A peer that misbehaves (malformed frames, unread replies, garbage JSON) gets an
//! errno or is disconnected; it never stops the loop and never costs an fd.

use std::io::Write as _;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;

use luo_core::{FileKey, HandlerRegistry, Limits, Orchestrator, SessionId};
use rustix::buffer::spare_capacity;
use rustix::event::epoll;
use rustix::io::Errno;
use rustix::net::SocketType;

use crate::config::Config;
use crate::listener::{self, ListenError};

pub(crate) const TOKEN_DEVICE: u64 = 0;
pub(crate) const TOKEN_CONTROL: u64 = 1;
pub(crate) const TOKEN_SIGNALS: u64 = 2;
const FIRST_CONN: u64 = 16;
/// `luoctl` connections open at once. They do not count against
/// `--max-connections`, so a flood of device clients cannot lock the operator
/// out; the control socket is the owner's alone (mode 0600).
pub(crate) const MAX_CONTROL_CONNECTIONS: usize = 256;
/// Carried files checked per turn of the loop while a resumed epoch settles
/// (see `Orchestrator::settle`): a quarter of a millisecond of work, so a request
/// arriving meanwhile waits no longer than that.
const SETTLE_BATCH: usize = 256;
/// Most requests served from one handle per wakeup, so that one busy client
/// cannot starve the others (level-triggered epoll wakes the loop again for
/// anything still queued).
const BURST: usize = 64;
/// Every this many requests, the loop reads the handle it just answered once
/// more before it waits (see [`Daemon::look_ahead`]).
const PROBE_EVERY: u32 = 16;

/// Why the daemon could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A listening socket.
    #[error(transparent)]
    Listen(#[from] ListenError),
    /// Another system call.
    #[error("Cannot {0}")]
    Os(&'static str, #[source] Errno),
    /// Signal handlers could not be installed.
    #[error("Cannot install signal handlers")]
    Signals(#[source] std::io::Error),
    /// The previous epoch's handover.
    #[error("Cannot resume from the handover")]
    Resume(#[source] crate::update::ResumeError),
}

/// One open handle.
#[derive(Debug)]
pub(crate) enum Conn {
    /// A connection to the device socket.
    Device {
        fd: OwnedFd,
        /// SO_PEERCRED at accept, used when a message carries no credentials.
        uid: u32,
        /// Said HELLO (and so holds the device).
        hello: bool,
    },
    /// The daemon's end of a session handle.
    Session {
        fd: OwnedFd,
        id: SessionId,
        /// Both ends of the socketpair, reserved against preservation.
        keys: [FileKey; 2],
    },
    /// A `luoctl` connection.
    Control {
        fd: OwnedFd,
        inbuf: Vec<u8>,
        outbuf: Vec<u8>,
    },
}

impl Conn {
    pub(crate) fn fd(&self) -> &OwnedFd {
        match self {
            Conn::Device { fd, .. } | Conn::Session { fd, .. } | Conn::Control { fd, .. } => fd,
        }
    }
}

/// The daemon: the orchestrator and every handle on it.
#[derive(Debug)]
pub struct Daemon {
    pub(crate) cfg: Config,
    pub(crate) orch: Orchestrator,
    pub(crate) epoll: OwnedFd,
    pub(crate) device_listener: OwnedFd,
    pub(crate) control_listener: OwnedFd,
    signals: OwnedFd,
    pub(crate) conns: foldhash::HashMap<u64, Conn>,
    /// How many of `conns` are `luoctl` connections.
    control_conns: usize,
    next_token: u64,
    /// Device handles that said HELLO.
    pub(crate) device_holders: usize,
    pub(crate) device_path: PathBuf,
    pub(crate) control_path: PathBuf,
    /// The image this epoch started from, for `handover-dump`.
    pub(crate) started_from: Option<Vec<u8>>,
    /// What the previous epoch asked this one to report to the `luoctl update`
    /// that started it, and when the update began.
    pub(crate) pending_report: Option<crate::update::PendingReport>,
    /// When the live update that started this epoch began (CLOCK_MONOTONIC ns).
    update_started_ns: Option<u64>,
    /// The dry run of the next update, started while PREPARED.
    pub(crate) standby: Option<crate::update::Standby>,
    /// A standby was started (or tried) since the state became PREPARED.
    pub(crate) standby_tried: bool,
    /// Where every request is received; lent out while one is served.
    rx: Option<luo_wire::RecvBuffer>,
    /// The handle whose last look-ahead found a request waiting.
    eager: Option<u64>,
    /// Requests answered, counted for [`PROBE_EVERY`].
    answered: u32,
}

/// The daemon's own fds beyond its connections: listeners, epoll, the signal
/// socket, a dry run's pipes, the log, and the fdinfo files luo-core keeps (64).
const OWN_FDS: usize = 192;

/// Preserved files a daemon allows in all (SPEC §9) when RLIMIT_NOFILE is
/// `nofile`: what its connections (device and session handles, at most
/// `max_connections` or half the fds; `luoctl`'s) and its own fds leave.
#[must_use]
pub fn files_total(nofile: usize, max_connections: usize) -> usize {
    nofile
        .saturating_sub(max_connections.min(nofile / 2) + MAX_CONTROL_CONNECTIONS + OWN_FDS)
        .max(1)
}

/// Raise RLIMIT_NOFILE (SPEC §9): to the kernel's ceiling (`fs.nr_open`) when
/// allowed to (root), else to the hard limit. Returns the limit in force.
#[must_use]
pub fn raise_nofile() -> usize {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let ceiling = std::fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok());
    let hard = getrlimit(Resource::Nofile).maximum;
    let raised = ceiling.filter(|&c| hard.is_some_and(|h| c > h)).map(|c| {
        setrlimit(
            Resource::Nofile,
            Rlimit {
                current: Some(c),
                maximum: Some(c),
            },
        )
    });
    if !matches!(raised, Some(Ok(()))) {
        let mut lim = getrlimit(Resource::Nofile);
        lim.current = lim.maximum;
        if let Err(e) = setrlimit(Resource::Nofile, lim) {
            tracing::warn!(error = %e, "cannot raise RLIMIT_NOFILE");
        }
    }
    getrlimit(Resource::Nofile)
        .current
        .map_or(1 << 20, |n| n as usize)
}

impl Daemon {
    /// The limits from the configuration and RLIMIT_NOFILE: preserved files may
    /// use what connections and the daemon's own fds leave.
    pub(crate) fn limits(cfg: &Config) -> Limits {
        Limits {
            sessions_per_uid: cfg.max_sessions_per_uid,
            files_per_session: cfg.max_files_per_session,
            files_total: files_total(raise_nofile(), cfg.max_connections),
        }
    }

    /// Set up a fresh daemon (epoch 0) or, with `--resume`, the next epoch from
    /// the handover on standard input.
    ///
    /// # Errors
    /// [`StartError`]: a socket path in use or not writable, or a handover that
    /// cannot be read (the caller then rolls back, SPEC §7 step 6).
    pub fn start(cfg: Config) -> Result<Daemon, StartError> {
        let limits = Self::limits(&cfg);
        let device_path = cfg.device_socket();
        let control_path = cfg.control_socket();
        let (orch, device_listener, control_listener, started_from, pending_report) = if cfg.resume
        {
            let r = crate::update::resume(HandlerRegistry::with_builtin(), limits)
                .map_err(StartError::Resume)?;
            (
                r.orch,
                r.device_listener,
                r.control_listener,
                Some(r.image),
                Some(r.report),
            )
        } else {
            let gid = cfg.group.as_deref().map(listener::group_id).transpose()?;
            let device = listener::listen(&device_path, SocketType::SEQPACKET, 0o660, gid)?;
            let control = listener::listen(&control_path, SocketType::STREAM, 0o600, None)?;
            (
                Orchestrator::new(HandlerRegistry::with_builtin(), limits),
                device,
                control,
                None,
                None,
            )
        };
        let epoll = epoll::create(epoll::CreateFlags::CLOEXEC)
            .map_err(|e| StartError::Os("create epoll", e))?;
        let signals = install_signal_pipe()?;
        for (fd, token) in [
            (&device_listener, TOKEN_DEVICE),
            (&control_listener, TOKEN_CONTROL),
            (&signals, TOKEN_SIGNALS),
        ] {
            epoll::add(
                &epoll,
                fd,
                epoll::EventData::new_u64(token),
                epoll::EventFlags::IN,
            )
            .map_err(|e| StartError::Os("watch a listening socket", e))?;
        }
        Ok(Daemon {
            cfg,
            orch,
            epoll,
            device_listener,
            control_listener,
            signals,
            conns: foldhash::HashMap::default(),
            control_conns: 0,
            next_token: FIRST_CONN,
            device_holders: 0,
            device_path,
            control_path,
            started_from,
            update_started_ns: pending_report.as_ref().map(|p| p.started_ns),
            pending_report,
            standby: None,
            standby_tried: false,
            rx: Some(luo_wire::RecvBuffer::new()),
            eager: None,
            answered: 0,
        })
    }

    /// The global state machine and sessions.
    #[must_use]
    pub fn orchestrator(&self) -> &Orchestrator {
        &self.orch
    }

    /// Serve until SIGTERM or SIGINT.
    ///
    /// # Errors
    /// Only if epoll itself fails; every per-handle error is handled in place.
    pub fn run(&mut self) -> Result<(), Errno> {
        tracing::info!(
            socket = %self.device_path.display(),
            control = %self.control_path.display(),
            epoch = self.orch.epoch(),
            state = %self.orch.state(),
            sessions = self.orch.sessions().count(),
            files = self.orch.preserved_count(),
            "serving"
        );
        crate::notify::notify("READY=1");
        crate::update::report(self);
        let mut events = Vec::with_capacity(256);
        let now = rustix::time::Timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        loop {
            events.clear();
            // While carried files await their check, poll instead of sleeping,
            // and check a batch after serving whatever is ready.
            let timeout = self.orch.unsettled().then_some(&now);
            match epoll::wait(&self.epoll, spare_capacity(&mut events), timeout) {
                Ok(_) | Err(Errno::INTR) => {}
                Err(e) => return Err(e),
            }
            for ev in events.drain(..) {
                match ev.data.u64() {
                    TOKEN_DEVICE => self.accept(TOKEN_DEVICE),
                    TOKEN_CONTROL => self.accept(TOKEN_CONTROL),
                    TOKEN_SIGNALS => {
                        let _ = rustix::io::read(&self.signals, &mut [0u8; 16]);
                        tracing::info!("signal received; shutting down");
                        crate::notify::notify("STOPPING=1");
                        // The paths are ours; a later luod must not find them stale.
                        let _ = std::fs::remove_file(&self.device_path);
                        let _ = std::fs::remove_file(&self.control_path);
                        return Ok(());
                    }
                    token => self.conn_ready(token, ev.flags),
                }
            }
            if self.orch.unsettled() {
                self.settle();
            }
            crate::update::keep_standby(self);
        }
    }

    /// A global event, from `luoctl` or the device alike. The standby dry run
    /// follows the new state before the caller answers: a PREPARE answers with
    /// the next update's dry run ready (see `update::keep_standby`).
    pub(crate) fn global_event(&mut self, raw_event: u32) -> luo_core::Result<()> {
        let done = self.orch.set_event(raw_event);
        crate::update::keep_standby(self);
        done
    }

    /// Check one batch of the files a live update carried; say so when the
    /// last one is done.
    fn settle(&mut self) {
        self.orch.settle(SETTLE_BATCH);
        if !self.orch.unsettled() {
            tracing::info!(
                files = self.orch.preserved_count(),
                since_ms = self.update_started_ns.map(crate::update::ms_since),
                "every carried file checked"
            );
        }
    }

    fn accept(&mut self, which: u64) {
        let mut refused = 0usize;
        loop {
            let listener = if which == TOKEN_DEVICE {
                &self.device_listener
            } else {
                &self.control_listener
            };
            let fd = match rustix::net::accept_with(
                listener,
                rustix::net::SocketFlags::CLOEXEC | rustix::net::SocketFlags::NONBLOCK,
            ) {
                Ok(fd) => fd,
                Err(Errno::INTR) => continue,
                Err(Errno::AGAIN) => break,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    break;
                }
            };
            let full = if which == TOKEN_DEVICE {
                self.conns.len() - self.control_conns >= self.cfg.max_connections
            } else {
                self.control_conns >= MAX_CONTROL_CONNECTIONS
            };
            if full {
                // Closing it is the refusal: the client sees its connection end.
                refused += 1;
                continue;
            }
            let uid = luo_wire::peer_credentials(fd.as_fd()).map_or(u32::MAX, |c| c.uid.as_raw());
            let conn = if which == TOKEN_DEVICE {
                if let Err(e) = luo_wire::pass_credentials(fd.as_fd()) {
                    tracing::warn!(error = %e, "SO_PASSCRED failed; using the connection's credentials");
                }
                Conn::Device {
                    fd,
                    uid,
                    hello: false,
                }
            } else {
                Conn::Control {
                    fd,
                    inbuf: Vec::new(),
                    outbuf: Vec::new(),
                }
            };
            let _ = self.add_conn(conn);
        }
        if refused > 0 {
            let (socket, limit) = if which == TOKEN_DEVICE {
                ("device", self.cfg.max_connections)
            } else {
                ("control", MAX_CONTROL_CONNECTIONS)
            };
            tracing::warn!(
                socket,
                limit,
                refused,
                "connection limit reached; clients refused"
            );
        }
    }

    /// Watch a new handle. On failure the handle is dropped (closed).
    pub(crate) fn add_conn(&mut self, conn: Conn) -> Result<u64, Errno> {
        let token = self.next_token;
        epoll::add(
            &self.epoll,
            conn.fd(),
            epoll::EventData::new_u64(token),
            epoll::EventFlags::IN,
        )?;
        self.next_token += 1;
        if matches!(conn, Conn::Control { .. }) {
            self.control_conns += 1;
        }
        self.conns.insert(token, conn);
        Ok(token)
    }

    /// Forget a handle: release what it held, stop watching it, close it.
    pub(crate) fn close_conn(&mut self, token: u64) {
        let Some(conn) = self.conns.remove(&token) else {
            return;
        };
        let _ = epoll::delete(&self.epoll, conn.fd());
        match conn {
            Conn::Device { hello, .. } => {
                if hello {
                    self.device_holders -= 1;
                }
            }
            Conn::Session { id, keys, .. } => {
                for key in keys {
                    self.orch.unreserve_file(key);
                }
                self.orch.release_session(id);
            }
            Conn::Control { .. } => self.control_conns -= 1,
        }
    }

    fn conn_ready(&mut self, token: u64, flags: epoll::EventFlags) {
        let is_control = matches!(self.conns.get(&token), Some(Conn::Control { .. }));
        if is_control {
            crate::control::ready(self, token, flags);
            return;
        }
        let mut rx = self.rx.take().unwrap_or_default();
        let mut read = self.serve_one(token, &mut rx);
        for _ in 1..BURST {
            if read != Read::Answered || !self.look_ahead(token) {
                break;
            }
            read = self.serve_one(token, &mut rx);
            match read {
                Read::Answered => self.eager = Some(token),
                Read::Nothing if self.eager == Some(token) => self.eager = None,
                Read::Nothing | Read::Closed => {}
            }
        }
        self.rx = Some(rx);
    }

    /// Whether to read the handle just answered again at once, rather than
    /// wait for epoll to say it is readable.
    ///
    /// A client sends its next request only after it has read the reply, so
    /// that read usually finds nothing and costs a system call for nothing.
    /// Except where the client runs the moment it is answered (on the daemon's
    /// CPU, the reply's wakeup switches to it): then its next request is
    /// already queued when the daemon reads again, and reading it at once saves
    /// the daemon an `epoll_wait` per request. So the handle whose last
    /// look-ahead found a request keeps looking ahead, and every
    /// [`PROBE_EVERY`]th answer tries it on another: at most one read in 16
    /// finds nothing where look-ahead does not pay.
    fn look_ahead(&mut self, token: u64) -> bool {
        if self.eager == Some(token) {
            return true;
        }
        self.answered = self.answered.wrapping_add(1);
        self.answered % PROBE_EVERY == 0
    }

    /// Receive and answer one request on device or session handle `token`.
    fn serve_one(&mut self, token: u64, rx: &mut luo_wire::RecvBuffer) -> Read {
        let Some(conn) = self.conns.get(&token) else {
            return Read::Closed;
        };
        match luo_wire::recv_request(conn.fd().as_fd(), rx) {
            Ok(Some(req)) => {
                if crate::dispatch::serve(self, token, req) {
                    return Read::Answered;
                }
                self.close_conn(token);
            }
            Ok(None) => self.close_conn(token),
            Err(luo_wire::RecvError::WouldBlock) => return Read::Nothing,
            Err(luo_wire::RecvError::Malformed { error, cmd }) => {
                tracing::debug!(%error, ?cmd, "malformed frame");
                let sent = luo_wire::send_reply(conn.fd().as_fd(), Err(error.errno()), &[], None);
                if sent.is_ok() {
                    return Read::Answered;
                }
                self.close_conn(token);
            }
            Err(e) => {
                tracing::debug!(error = %e, "handle failed; closing it");
                self.close_conn(token);
            }
        }
        Read::Closed
    }
}

/// What one read of a handle came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Read {
    /// A request (or a malformed frame) was answered; the handle is open.
    Answered,
    /// Nothing was queued.
    Nothing,
    /// The handle is closed, or was closed for this request.
    Closed,
}

/// A socket that becomes readable on SIGTERM or SIGINT.
fn install_signal_pipe() -> Result<OwnedFd, StartError> {
    let (read, write) = UnixStream::pair().map_err(StartError::Signals)?;
    read.set_nonblocking(true).map_err(StartError::Signals)?;
    write.set_nonblocking(true).map_err(StartError::Signals)?;
    for signal in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        let w = write.try_clone().map_err(StartError::Signals)?;
        signal_hook::low_level::pipe::register(signal, w).map_err(StartError::Signals)?;
    }
    // Keep `write` alive through the registrations' clones; this one can go.
    let _ = (&write).flush();
    Ok(OwnedFd::from(read))
}
