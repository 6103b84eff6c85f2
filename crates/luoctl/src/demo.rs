//! `luoctl demo`: a stateful service survives a live update, end to end, on this
//! machine, with nothing but this binary.
//!
//! # The story
//! A key-value service ([`crate::demo_service`]) keeps its data in a memfd and
//! listens on a TCP socket; it hands both to luod in the session "demo-kv". A
//! client sends it a steady stream of requests, each on a new connection. Then:
//!
//! 1. luod itself is live-updated (`prepare`, `update`): it freezes the session,
//!    re-executes itself (same pid, next epoch) and carries the memfd and the
//!    socket across. The service does not notice, except that its session handle
//!    goes stale; it goes on serving throughout.
//! 2. A new instance of the service retrieves the session from the new epoch,
//!    restores the memfd and the listening socket, and takes over from the old
//!    instance. Clients that connect in between wait in the socket's accept queue.
//! 3. `finish`: the new instance's files stay preserved for the next update.
//! 4. Every key written before the update reads back from the new instance.
//!
//! Along the way the demo prints what it measures, never a number it assumes:
//! luod's own blackout (from its update report), the service's (the last reply
//! of the old pid to the first of the new), and the requests each instance
//! answered and how many failed (none may, and none may be refused).
//!
//! # What runs
//! Everything is this binary, in a fresh temporary directory that holds the
//! sockets and the logs: luod as `luoctl daemon` (the update re-executes it as
//! `luoctl daemon --resume`, after a dry run of `luoctl daemon --check-handover`),
//! the service as `luoctl demo-service`.
//!
//! # Unhappy paths
//! Any step that fails (a child that exits or stays silent past [`TIMEOUT`], a
//! refused control request, a failed or refused client request, a lost key)
//! stops the demo: the open step says `failed`, the tail of every log goes to
//! stderr, the children are killed, the directory is removed, and `luoctl` exits
//! 1 with the reason. Ctrl-C reaches the children too (same process group); the
//! demo then cleans up the same way and says it was interrupted.

use std::fs::File;
use std::io::{self, BufRead, BufReader, ErrorKind, Write};
use std::net::SocketAddr;
use std::os::unix::fs::DirBuilderExt;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use luo_wire::control::{ControlRequest, Status};
use rustix::event::{PollFd, PollFlags};
use rustix::process::{Pid, PidfdFlags, Signal};

use crate::control::ControlClient;
use crate::demo_service::{Answer, Client, LISTENER_TOKEN, MEMORY_TOKEN, Reply, SESSION_NAME};
use crate::error::Error;
use crate::{DAEMON_COMMAND, DEMO_SERVICE_COMMAND};

const STEPS: usize = 8;
/// How long a child may take to get ready, answer, or exit.
pub const TIMEOUT: Duration = Duration::from_secs(10);
/// Traffic answered by the old instance before the update starts, and by the new
/// one before the traffic stops: enough to see each of them serve.
const TRAFFIC_BEFORE: usize = 200;
const TRAFFIC_AFTER: usize = 200;
/// A pause between traffic requests, so that the client does not take the CPU
/// the update needs on a small machine; it bounds the blackout's resolution.
const TRAFFIC_PAUSE: Duration = Duration::from_micros(500);
/// Long waits look at Ctrl-C this often.
const TICK: Duration = Duration::from_millis(50);
/// Lines of each log shown when the demo fails.
const LOG_TAIL: usize = 20;

/// `luoctl demo --keys N`: runs the demo, printing each step to `out` as it
/// happens.
///
/// # Errors
/// [`Error::Demo`] naming the step that failed, [`Error::Output`].
pub(crate) fn run(keys: usize, out: &mut dyn Write) -> Result<(), Error> {
    let interrupted = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        // Without the handler Ctrl-C still ends the demo, only without cleaning up.
        let _ = signal_hook::flag::register(signal, Arc::clone(&interrupted));
    }
    let exe = std::env::current_exe().map_err(|e| Error::demo_by("Cannot find this binary", e))?;
    let dir = WorkDir::create()?;
    let ctx = Ctx {
        exe,
        dir: dir.path.clone(),
        interrupted,
    };
    let mut report = Report::new(out);
    match drive(&ctx, &mut report, keys) {
        Ok(()) => {
            dir.remove()?;
            let total = report.started.elapsed();
            report.line(&format!("demo ok ({:.2} s)", total.as_secs_f64()))
        }
        Err(e) => {
            report.fail();
            let interrupted = ctx.interrupted.load(Ordering::SeqCst);
            if !interrupted {
                print_logs(&ctx.dir);
            }
            drop(dir);
            if interrupted {
                return Err(Error::demo(
                    "Demo interrupted; its processes are stopped and its directory removed",
                ));
            }
            Err(e)
        }
    }
}

/// The steps; the children stop when their guards drop, on every path.
fn drive(ctx: &Ctx, r: &mut Report<'_>, keys: usize) -> Result<(), Error> {
    r.line("luoctl demo: a key-value service keeps its memory and its listening socket across a live update")?;
    r.line(&format!(
        "work directory {} (removed at the end)\n",
        ctx.dir.display()
    ))?;

    r.begin(
        ctx,
        1,
        "starting luod, the daemon (this binary as `luoctl daemon`)",
    )?;
    let daemon = Daemon::start(ctx)?;
    let mut control = daemon.control()?;
    let before = control.status()?;
    r.done(&[format!(
        "pid {}, epoch {}, global state {}, device socket {}",
        daemon.pid,
        before.epoch,
        before.state,
        daemon.socket.display()
    )])?;

    r.begin(ctx, 2, "starting the key-value service")?;
    let mut old = Service::start(ctx, &daemon.socket, false)?;
    r.done(&[
        format!("pid {}, listening on {}", old.pid, old.addr),
        format!(
            "session {SESSION_NAME:?} preserves its 64 MiB memfd (token {MEMORY_TOKEN}) and its listening socket (token {LISTENER_TOKEN})"
        ),
    ])?;

    r.begin(
        ctx,
        3,
        &format!("writing {keys} keys and reading them back"),
    )?;
    let written: Vec<(String, String)> = (0..keys)
        .map(|i| {
            let mix = (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
            (format!("key-{i:06}"), format!("value {i} {mix:016x}"))
        })
        .collect();
    write_keys(old.addr, old.pid, &written)?;
    let check = read_back(old.addr, old.pid, &written)?;
    if !check.lost.is_empty() {
        return Err(Error::demo(format!(
            "The service lost {} of {} keys it just stored, e.g. {:?}",
            check.lost.len(),
            written.len(),
            check.lost[0]
        )));
    }
    r.done(&[format!("{keys}/{keys} keys read back from pid {}", old.pid)])?;

    r.begin(
        ctx,
        4,
        "starting client traffic: SET and GET, a new TCP connection per request",
    )?;
    let traffic = Traffic::start(old.addr);
    traffic.wait_for(ctx, "the old instance to answer the traffic", |log| {
        log.answered_by(old.pid) >= TRAFFIC_BEFORE
    })?;
    r.done(&[format!(
        "{} requests answered so far, all by pid {}",
        traffic.lock().samples.len(),
        old.pid
    )])?;

    r.begin(
        ctx,
        5,
        "live update of luod: prepare, then update (luod re-executes itself)",
    )?;
    control.request(&ControlRequest::Prepare)?;
    let update_started = Instant::now();
    let reply = control.request(&ControlRequest::Update { exec: None })?;
    let update_done = Instant::now();
    let update = reply.update.ok_or(Error::MissingField {
        op: "update",
        field: "update",
    })?;
    let after = control.status()?;
    if after.pid != daemon.pid || after.epoch != before.epoch + 1 {
        return Err(Error::demo(format!(
            "After the update luod is pid {} in epoch {}, not pid {} in epoch {}",
            after.pid,
            after.epoch,
            daemon.pid,
            before.epoch + 1
        )));
    }
    let during_update = traffic
        .lock()
        .answered_between(old.pid, update_started, update_done);
    let old_session = ask_once(old.addr, "SESSION")?;
    r.done(&[
        format!(
            "luod pid {} kept, epoch {} → {}, {} session and {} files carried, blackout {} (luod's measure)",
            after.pid,
            before.epoch,
            update.epoch,
            update.sessions,
            update.files,
            micros(update.blackout_us)
        ),
        format!(
            "meanwhile the old service answered {during_update} requests; pid {} says its session handle is now {}",
            old_session.pid,
            describe_session(&old_session.reply)
        ),
    ])?;

    r.begin(
        ctx,
        6,
        "handing over to a new instance of the service (--takeover)",
    )?;
    let mut new = Service::start(ctx, &daemon.socket, true)?;
    if new.addr != old.addr {
        return Err(Error::demo(format!(
            "The new instance listens on {}, not on the restored {}",
            new.addr, old.addr
        )));
    }
    let ready_ms = r.elapsed_ms();
    let old_served = old.quit(ctx)?;
    new.send("go")?;
    traffic.wait_for(ctx, "the new instance to answer the traffic", |log| {
        log.answered_by(new.pid) >= 1
    })?;
    r.done(&[
        format!(
            "new pid {} retrieved {SESSION_NAME:?}, restored the memfd and the socket ({}), ready after {ready_ms} ms",
            new.pid, new.addr
        ),
        format!(
            "old pid {} told to quit: stopped accepting, finished its requests, exited ({old_served} requests served)",
            old.pid
        ),
        format!("new pid {} told to go: finished its session, serving", new.pid),
    ])?;

    r.begin(ctx, 7, "luoctl finish; stopping the traffic")?;
    control.request(&ControlRequest::Finish)?;
    let finished = control.status()?;
    traffic.wait_for(ctx, "the new instance to answer more traffic", |log| {
        log.answered_by(new.pid) >= TRAFFIC_AFTER
    })?;
    let log = traffic.stop();
    r.done(&[format!(
        "global state {}; traffic stopped after {} requests",
        finished.state,
        log.samples.len()
    )])?;

    r.begin(ctx, 8, "reading every key back from the new instance")?;
    let keys_check = read_back(new.addr, new.pid, &written)?;
    let traffic_check = read_back(new.addr, new.pid, &log.acked)?;
    let preserved = preserved_files(&finished);
    r.done(&[format!(
        "{} keys written before the update and {} set by the traffic, asked one by one",
        written.len(),
        log.acked.len()
    )])?;

    let stats = TrafficStats::new(&log, old.pid, new.pid);
    r.line("\nresults")?;
    r.line(&format!(
        "  luod live update   blackout {}, epoch {} → {}, pid {} kept",
        micros(update.blackout_us),
        before.epoch,
        update.epoch,
        after.pid
    ))?;
    r.line(&format!(
        "  service handover   blackout {}, from the last reply of pid {} to the first of pid {}",
        stats
            .blackout
            .map_or_else(|| "unmeasured".to_owned(), |d| micros(d.as_micros() as u64)),
        old.pid,
        new.pid
    ))?;
    r.line(&format!(
        "  traffic            {} requests: {} answered by the old instance ({during_update} of them during luod's update), {} by the new, {} failed ({} connection refused)",
        log.samples.len(),
        stats.by_old,
        stats.by_new,
        stats.failed,
        stats.refused
    ))?;
    r.line(&format!(
        "  luod keeps         session {SESSION_NAME:?}: {} for the next update",
        preserved.as_deref().unwrap_or("gone")
    ))?;
    r.line(&format!(
        "state survived: {}/{} keys (and {}/{} keys the traffic set)",
        written.len() - keys_check.lost.len(),
        written.len(),
        log.acked.len() - traffic_check.lost.len(),
        log.acked.len()
    ))?;

    if let Some(first) = stats.first_failure {
        return Err(Error::demo(format!(
            "{} requests failed ({} refused), the first: {first}",
            stats.failed, stats.refused
        )));
    }
    if let Some(lost) = keys_check.lost.first().or(traffic_check.lost.first()) {
        return Err(Error::demo(format!(
            "State lost: {} keys wrong or missing after the takeover, e.g. {lost:?}",
            keys_check.lost.len() + traffic_check.lost.len()
        )));
    }
    if stats.blackout.is_none() {
        return Err(Error::demo(
            "The traffic never saw the new instance answer after the old one",
        ));
    }
    if preserved.is_none() {
        return Err(Error::demo(format!(
            "luod no longer preserves session {SESSION_NAME:?} after finish"
        )));
    }
    new.quit(ctx)?;
    daemon.stop()
}

/// What a demo step needs to start children and notice Ctrl-C.
#[derive(Debug)]
struct Ctx {
    exe: PathBuf,
    dir: PathBuf,
    interrupted: Arc<AtomicBool>,
}

impl Ctx {
    fn check_interrupted(&self) -> Result<(), Error> {
        if self.interrupted.load(Ordering::SeqCst) {
            return Err(Error::demo("Interrupted"));
        }
        Ok(())
    }
}

/// The user's view: one line per step, `ok` with its duration, details below.
struct Report<'a> {
    out: &'a mut dyn Write,
    started: Instant,
    step_started: Instant,
    open: bool,
}

impl<'a> Report<'a> {
    fn new(out: &'a mut dyn Write) -> Self {
        let now = Instant::now();
        Report {
            out,
            started: now,
            step_started: now,
            open: false,
        }
    }

    fn line(&mut self, text: &str) -> Result<(), Error> {
        writeln!(self.out, "{text}")
            .and_then(|()| self.out.flush())
            .map_err(Error::Output)
    }

    fn begin(&mut self, ctx: &Ctx, step: usize, what: &str) -> Result<(), Error> {
        ctx.check_interrupted()?;
        write!(self.out, "[{step}/{STEPS}] {what} ... ")
            .and_then(|()| self.out.flush())
            .map_err(Error::Output)?;
        self.open = true;
        self.step_started = Instant::now();
        Ok(())
    }

    fn elapsed_ms(&self) -> u128 {
        self.step_started.elapsed().as_millis()
    }

    fn done(&mut self, details: &[String]) -> Result<(), Error> {
        self.open = false;
        self.line(&format!("ok ({} ms)", self.elapsed_ms()))?;
        for detail in details {
            self.line(&format!("      {detail}"))?;
        }
        Ok(())
    }

    /// Closes a step left open by a failure.
    fn fail(&mut self) {
        if self.open {
            self.open = false;
            let _ = writeln!(self.out, "failed").and_then(|()| self.out.flush());
        }
    }
}

/// `n` microseconds as milliseconds, e.g. `41.302 ms`.
fn micros(n: u64) -> String {
    format!("{}.{:03} ms", n / 1000, n % 1000)
}

fn describe_session(reply: &Reply) -> String {
    match reply {
        Reply::Session(state) if state == "stale" => {
            "stale (ESTALE), as every handle of luod's old epoch".to_owned()
        }
        Reply::Session(state) => state.clone(),
        other => format!("unknown ({other:?})"),
    }
}

/// "normal, 2 files" when luod still holds the session, from a status.
fn preserved_files(status: &Status) -> Option<String> {
    let session = status.sessions.iter().find(|s| s.name == SESSION_NAME)?;
    let n = session.files.len();
    Some(format!(
        "{}, {n} file{} preserved",
        session.state,
        if n == 1 { "" } else { "s" }
    ))
}

/// The demo's temporary directory, removed on drop.
#[derive(Debug)]
struct WorkDir {
    path: PathBuf,
}

impl WorkDir {
    fn create() -> Result<WorkDir, Error> {
        let base = std::env::temp_dir();
        let seed = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        for attempt in 0..64u32 {
            let path = base.join(format!(
                "luoctl-demo.{}.{:x}",
                std::process::id(),
                seed.wrapping_add(attempt)
            ));
            match std::fs::DirBuilder::new().mode(0o700).create(&path) {
                Ok(()) => return Ok(WorkDir { path }),
                Err(e) if e.kind() == ErrorKind::AlreadyExists => {}
                Err(e) => {
                    return Err(Error::demo_by(
                        format!("Cannot create a directory in {}", base.display()),
                        e,
                    ));
                }
            }
        }
        Err(Error::demo(format!(
            "Cannot create a fresh directory in {}",
            base.display()
        )))
    }

    fn remove(self) -> Result<(), Error> {
        let result = std::fs::remove_dir_all(&self.path)
            .map_err(|e| Error::demo_by(format!("Cannot remove {}", self.path.display()), e));
        std::mem::forget(self);
        result
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// The last lines of every log in `dir`, to stderr.
fn print_logs(dir: &Path) {
    for name in ["luod.log", "service-old.log", "service-new.log"] {
        let Ok(text) = std::fs::read_to_string(dir.join(name)) else {
            continue;
        };
        let lines: Vec<&str> = text.lines().collect();
        if lines.is_empty() {
            continue;
        }
        eprintln!("--- {name}, last {} lines ---", lines.len().min(LOG_TAIL));
        for line in &lines[lines.len().saturating_sub(LOG_TAIL)..] {
            eprintln!("{line}");
        }
    }
}

fn poll_timeout(d: Duration) -> rustix::time::Timespec {
    rustix::time::Timespec {
        tv_sec: d.as_secs() as i64,
        tv_nsec: i64::from(d.subsec_nanos()),
    }
}

/// Waits up to `timeout` for `child` to exit; `None` if it has not.
fn wait_exit(child: &mut Child, timeout: Duration) -> io::Result<Option<ExitStatus>> {
    if let Some(status) = child.try_wait()? {
        return Ok(Some(status));
    }
    let pidfd = rustix::process::pidfd_open(Pid::from_child(child), PidfdFlags::empty())?;
    let mut fds = [PollFd::new(&pidfd, PollFlags::IN)];
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rustix::event::poll(&mut fds, Some(&poll_timeout(left))) {
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e.into()),
            Ok(0) => return Ok(None),
            Ok(_) => return child.wait().map(Some),
        }
    }
}

/// Kills `child` unless it has exited already, and reaps it.
fn kill(child: &mut Child) {
    if let Ok(None) = child.try_wait() {
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// luod, run as `luoctl daemon`; killed on drop unless [`Daemon::stop`]ped.
#[derive(Debug)]
struct Daemon {
    child: Child,
    pid: u32,
    socket: PathBuf,
    /// Kept open: each epoch says READY=1 to it.
    _notify: UnixDatagram,
}

impl Daemon {
    /// Starts luod and waits for its READY=1 (`NOTIFY_SOCKET`), or its exit.
    fn start(ctx: &Ctx) -> Result<Daemon, Error> {
        let socket = ctx.dir.join("luo.sock");
        let notify_path = ctx.dir.join("notify.sock");
        let notify = UnixDatagram::bind(&notify_path)
            .and_then(|s| s.set_nonblocking(true).map(|()| s))
            .map_err(|e| Error::demo_by("Cannot make the readiness socket", e))?;
        let log = File::create(ctx.dir.join("luod.log"))
            .map_err(|e| Error::demo_by("Cannot create luod.log", e))?;
        let child = Command::new(&ctx.exe)
            .arg(DAEMON_COMMAND)
            .arg("--socket")
            .arg(&socket)
            .env("NOTIFY_SOCKET", &notify_path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| Error::demo_by(format!("Cannot start {}", ctx.exe.display()), e))?;
        let mut daemon = Daemon {
            pid: child.id(),
            child,
            socket,
            _notify: notify,
        };
        let pidfd =
            rustix::process::pidfd_open(Pid::from_child(&daemon.child), PidfdFlags::empty())
                .map_err(|e| Error::demo_by("Cannot watch luod", io::Error::from(e)))?;
        let deadline = Instant::now() + TIMEOUT;
        let mut buf = [0u8; 64];
        loop {
            ctx.check_interrupted()?;
            let mut fds = [
                PollFd::new(&daemon._notify, PollFlags::IN),
                PollFd::new(&pidfd, PollFlags::IN),
            ];
            match rustix::event::poll(&mut fds, Some(&poll_timeout(TICK))) {
                Ok(_) | Err(rustix::io::Errno::INTR) => {}
                Err(e) => return Err(Error::demo_by("Cannot wait for luod", io::Error::from(e))),
            }
            if let Ok(n) = daemon._notify.recv(&mut buf) {
                if &buf[..n] == b"READY=1" {
                    return Ok(daemon);
                }
                continue;
            }
            if !fds[1].revents().is_empty() {
                let status = daemon
                    .child
                    .wait()
                    .map_or_else(|e| e.to_string(), |s| s.to_string());
                return Err(Error::demo(format!(
                    "luod exited ({status}) before it was ready; see luod.log below"
                )));
            }
            if Instant::now() >= deadline {
                return Err(Error::demo(format!(
                    "luod did not say READY=1 within {} s; see luod.log below",
                    TIMEOUT.as_secs()
                )));
            }
        }
    }

    fn control(&self) -> Result<ControlClient, Error> {
        ControlClient::connect(luo_wire::paths::control_socket_beside(&self.socket))
    }

    /// SIGTERM, and waits for a clean exit.
    fn stop(mut self) -> Result<(), Error> {
        let pid = Pid::from_child(&self.child);
        rustix::process::kill_process(pid, Signal::TERM)
            .map_err(|e| Error::demo_by("Cannot stop luod", io::Error::from(e)))?;
        match wait_exit(&mut self.child, TIMEOUT) {
            Ok(Some(status)) if status.success() => Ok(()),
            Ok(Some(status)) => Err(Error::demo(format!("luod stopped with {status}"))),
            Ok(None) => Err(Error::demo(format!(
                "luod did not stop within {} s of SIGTERM",
                TIMEOUT.as_secs()
            ))),
            Err(e) => Err(Error::demo_by("Cannot wait for luod", e)),
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        kill(&mut self.child);
    }
}

/// An instance of the service, `luoctl demo-service`; killed on drop unless it
/// has quit.
#[derive(Debug)]
struct Service {
    child: Child,
    pid: u32,
    role: &'static str,
    stdin: ChildStdin,
    lines: mpsc::Receiver<String>,
    addr: SocketAddr,
}

impl Service {
    /// Starts an instance and waits until it serves (fresh) or is ready to take
    /// over (`takeover`).
    fn start(ctx: &Ctx, socket: &Path, takeover: bool) -> Result<Service, Error> {
        let role = if takeover { "new" } else { "old" };
        let log = File::create(ctx.dir.join(format!("service-{role}.log")))
            .map_err(|e| Error::demo_by("Cannot create the service's log", e))?;
        let mut command = Command::new(&ctx.exe);
        command
            .arg(DEMO_SERVICE_COMMAND)
            .arg("--socket")
            .arg(socket);
        if takeover {
            command.arg("--takeover");
        }
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .map_err(|e| Error::demo_by(format!("Cannot start {}", ctx.exe.display()), e))?;
        let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            kill(&mut child);
            return Err(Error::demo("The service's stdin or stdout is missing"));
        };
        let (tx, lines) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut service = Service {
            pid: child.id(),
            child,
            role,
            stdin,
            lines,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
        };
        let word = if takeover { "ready" } else { "serving" };
        let line = service.next_line(ctx)?;
        service.addr = line
            .strip_prefix(word)
            .and_then(|rest| rest.trim().parse().ok())
            .ok_or_else(|| {
                Error::demo(format!(
                    "The {role} service said {line:?}, not \"{word} ADDRESS\""
                ))
            })?;
        Ok(service)
    }

    /// The next line the instance prints.
    fn next_line(&mut self, ctx: &Ctx) -> Result<String, Error> {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            ctx.check_interrupted()?;
            match self.lines.recv_timeout(TICK) {
                Ok(line) => return Ok(line),
                Err(RecvTimeoutError::Timeout) if Instant::now() < deadline => {}
                Err(RecvTimeoutError::Timeout) => {
                    return Err(Error::demo(format!(
                        "The {} service (pid {}) said nothing for {} s; see service-{}.log below",
                        self.role,
                        self.pid,
                        TIMEOUT.as_secs(),
                        self.role
                    )));
                }
                Err(RecvTimeoutError::Disconnected) => {
                    let status = match wait_exit(&mut self.child, TIMEOUT) {
                        Ok(Some(status)) => status.to_string(),
                        Ok(None) => "closed its stdout".to_owned(),
                        Err(e) => e.to_string(),
                    };
                    return Err(Error::demo(format!(
                        "The {} service (pid {}) exited ({status}); see service-{}.log below",
                        self.role, self.pid, self.role
                    )));
                }
            }
        }
    }

    fn send(&mut self, line: &str) -> Result<(), Error> {
        writeln!(self.stdin, "{line}")
            .and_then(|()| self.stdin.flush())
            .map_err(|e| {
                Error::demo_by(
                    format!(
                        "Cannot tell the {} service (pid {}) {line:?}",
                        self.role, self.pid
                    ),
                    e,
                )
            })
    }

    /// Tells the instance to quit and waits for it to exit; returns how many
    /// requests it served.
    fn quit(&mut self, ctx: &Ctx) -> Result<u64, Error> {
        self.send("quit")?;
        let line = self.next_line(ctx)?;
        let served = line
            .strip_prefix("stopped ")
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| {
                Error::demo(format!(
                    "The {} service said {line:?}, not \"stopped N\"",
                    self.role
                ))
            })?;
        match wait_exit(&mut self.child, TIMEOUT) {
            Ok(Some(status)) if status.success() => Ok(served),
            Ok(Some(status)) => Err(Error::demo(format!(
                "The {} service (pid {}) exited with {status}",
                self.role, self.pid
            ))),
            Ok(None) => Err(Error::demo(format!(
                "The {} service (pid {}) did not exit within {} s of \"quit\"",
                self.role,
                self.pid,
                TIMEOUT.as_secs()
            ))),
            Err(e) => Err(Error::demo_by("Cannot wait for the service", e)),
        }
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        kill(&mut self.child);
    }
}

/// One request on a connection of its own.
fn ask_once(addr: SocketAddr, request: &str) -> Result<Answer, Error> {
    Client::connect(addr, TIMEOUT)
        .and_then(|mut c| c.ask(request))
        .map_err(|e| Error::demo_by(format!("{request} to {addr}"), e))
}

/// Stores `pairs`, on one connection, checking that pid `pid` answers each.
fn write_keys(addr: SocketAddr, pid: u32, pairs: &[(String, String)]) -> Result<(), Error> {
    let mut client = Client::connect(addr, TIMEOUT)
        .map_err(|e| Error::demo_by(format!("Cannot connect to {addr}"), e))?;
    for (key, value) in pairs {
        let request = format!("SET {key} {value}");
        let answer = client
            .ask(&request)
            .map_err(|e| Error::demo_by(format!("SET {key}"), e))?;
        if answer
            != (Answer {
                pid,
                reply: Reply::Ok,
            })
        {
            return Err(Error::demo(format!(
                "SET {key}: answered {:?} by pid {}, expected OK by pid {pid}",
                answer.reply, answer.pid
            )));
        }
    }
    Ok(())
}

/// The keys of a [`read_back`] that did not come back as stored.
#[derive(Debug)]
struct ReadBack {
    lost: Vec<String>,
}

/// Reads `pairs` back, on one connection, checking that pid `pid` answers each.
fn read_back(addr: SocketAddr, pid: u32, pairs: &[(String, String)]) -> Result<ReadBack, Error> {
    let mut client = Client::connect(addr, TIMEOUT)
        .map_err(|e| Error::demo_by(format!("Cannot connect to {addr}"), e))?;
    let mut lost = Vec::new();
    for (key, value) in pairs {
        let answer = client
            .ask(&format!("GET {key}"))
            .map_err(|e| Error::demo_by(format!("GET {key}"), e))?;
        if answer.pid != pid {
            return Err(Error::demo(format!(
                "GET {key} was answered by pid {}, expected pid {pid}",
                answer.pid
            )));
        }
        if answer.reply != Reply::Value(value.clone()) {
            lost.push(key.clone());
        }
    }
    Ok(ReadBack { lost })
}

/// How one traffic request ended.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Outcome {
    Ok,
    /// ECONNREFUSED: nobody held the listening socket.
    Refused,
    /// Anything else that is not the expected reply.
    Failed(String),
}

/// One traffic request: when its reply came, from which pid, how it ended.
#[derive(Debug, Clone)]
struct Sample {
    at: Instant,
    pid: Option<u32>,
    outcome: Outcome,
}

#[derive(Debug, Default)]
struct TrafficLog {
    samples: Vec<Sample>,
    /// Every SET answered OK: key and value.
    acked: Vec<(String, String)>,
}

impl TrafficLog {
    fn answered_by(&self, pid: u32) -> usize {
        self.samples
            .iter()
            .filter(|s| s.pid == Some(pid) && s.outcome == Outcome::Ok)
            .count()
    }

    fn answered_between(&self, pid: u32, from: Instant, to: Instant) -> usize {
        self.samples
            .iter()
            .filter(|s| s.pid == Some(pid) && s.outcome == Outcome::Ok)
            .filter(|s| from <= s.at && s.at <= to)
            .count()
    }
}

/// The traffic thread: SET a new key, GET the last one set, and so on, each on
/// a new connection, so that every request goes through the listening socket's
/// accept queue. Stopped and joined on drop.
struct Traffic {
    shared: Arc<(Mutex<TrafficLog>, Condvar)>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Traffic {
    fn start(addr: SocketAddr) -> Traffic {
        let shared: Arc<(Mutex<TrafficLog>, Condvar)> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (shared, stop) = (Arc::clone(&shared), Arc::clone(&stop));
            thread::spawn(move || traffic_loop(addr, &shared, &stop))
        };
        Traffic {
            shared,
            stop,
            thread: Some(thread),
        }
    }

    fn lock(&self) -> MutexGuard<'_, TrafficLog> {
        self.shared.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Waits up to [`TIMEOUT`] for `done` to hold.
    fn wait_for(
        &self,
        ctx: &Ctx,
        what: &str,
        done: impl Fn(&TrafficLog) -> bool,
    ) -> Result<(), Error> {
        let deadline = Instant::now() + TIMEOUT;
        let mut log = self.lock();
        while !done(&log) {
            ctx.check_interrupted()?;
            if Instant::now() >= deadline {
                let last = log.samples.last().map(|s| s.outcome.clone());
                return Err(Error::demo(format!(
                    "Waited {} s for {what}; {} requests so far, the last: {last:?}",
                    TIMEOUT.as_secs(),
                    log.samples.len()
                )));
            }
            log = self
                .shared
                .1
                .wait_timeout(log, TICK)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        Ok(())
    }

    fn stop(mut self) -> TrafficLog {
        self.join();
        std::mem::take(&mut *self.lock())
    }

    fn join(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Traffic {
    fn drop(&mut self) {
        self.join();
    }
}

fn traffic_loop(addr: SocketAddr, shared: &(Mutex<TrafficLog>, Condvar), stop: &AtomicBool) {
    let mut last_set: Option<(String, String)> = None;
    let mut n: u64 = 0;
    while !stop.load(Ordering::SeqCst) {
        n += 1;
        let (request, expected, set) = match &last_set {
            Some((key, value)) if n % 2 == 0 => {
                (format!("GET {key}"), Reply::Value(value.clone()), None)
            }
            _ => {
                let (key, value) = (format!("traffic-{n}"), format!("set by request {n}"));
                (format!("SET {key} {value}"), Reply::Ok, Some((key, value)))
            }
        };
        let result = Client::connect(addr, TIMEOUT).and_then(|mut c| c.ask(&request));
        let at = Instant::now();
        let (pid, outcome) = match result {
            Ok(answer) if answer.reply == expected => (Some(answer.pid), Outcome::Ok),
            Ok(answer) => (
                Some(answer.pid),
                Outcome::Failed(format!(
                    "{request}: answered {:?} by pid {}",
                    answer.reply, answer.pid
                )),
            ),
            Err(e) if e.kind() == ErrorKind::ConnectionRefused => (None, Outcome::Refused),
            Err(e) => (None, Outcome::Failed(format!("{request}: {e}"))),
        };
        let ok = outcome == Outcome::Ok;
        {
            let mut log = shared.0.lock().unwrap_or_else(PoisonError::into_inner);
            log.samples.push(Sample { at, pid, outcome });
            if let (true, Some(pair)) = (ok, &set) {
                log.acked.push(pair.clone());
            }
        }
        shared.1.notify_all();
        if let (true, Some(pair)) = (ok, set) {
            last_set = Some(pair);
        }
        thread::sleep(TRAFFIC_PAUSE);
    }
}

/// What the traffic saw, per instance.
#[derive(Debug)]
struct TrafficStats {
    by_old: usize,
    by_new: usize,
    failed: usize,
    refused: usize,
    first_failure: Option<String>,
    /// From the old instance's last reply to the new one's first.
    blackout: Option<Duration>,
}

impl TrafficStats {
    fn new(log: &TrafficLog, old: u32, new: u32) -> TrafficStats {
        let ok_at = |pid: u32| {
            log.samples
                .iter()
                .filter(move |s| s.pid == Some(pid) && s.outcome == Outcome::Ok)
                .map(|s| s.at)
        };
        let last_old = ok_at(old).max();
        let first_new = ok_at(new).min();
        let failures: Vec<&Sample> = log
            .samples
            .iter()
            .filter(|s| s.outcome != Outcome::Ok)
            .collect();
        TrafficStats {
            by_old: log.answered_by(old),
            by_new: log.answered_by(new),
            failed: failures.len(),
            refused: failures
                .iter()
                .filter(|s| s.outcome == Outcome::Refused)
                .count(),
            first_failure: failures.first().map(|s| match &s.outcome {
                Outcome::Failed(why) => why.clone(),
                Outcome::Refused | Outcome::Ok => "connection refused".to_owned(),
            }),
            blackout: last_old
                .zip(first_new)
                .and_then(|(last, first)| first.checked_duration_since(last)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(at: Instant, ms: u64, pid: Option<u32>, outcome: Outcome) -> Sample {
        Sample {
            at: at + Duration::from_millis(ms),
            pid,
            outcome,
        }
    }

    #[test]
    fn the_service_blackout_runs_from_the_old_pids_last_reply_to_the_new_pids_first() {
        let t = Instant::now();
        let log = TrafficLog {
            samples: vec![
                sample(t, 0, Some(1), Outcome::Ok),
                sample(t, 10, Some(1), Outcome::Ok),
                sample(t, 13, Some(2), Outcome::Ok),
                sample(t, 20, Some(2), Outcome::Ok),
            ],
            acked: vec![],
        };
        let stats = TrafficStats::new(&log, 1, 2);
        assert_eq!(stats.blackout, Some(Duration::from_millis(3)));
        assert_eq!((stats.by_old, stats.by_new, stats.failed), (2, 2, 0));
        assert_eq!(stats.first_failure, None);
        assert_eq!(log.answered_between(1, t, t + Duration::from_millis(5)), 1);
    }

    #[test]
    fn refusals_and_wrong_replies_are_failures() {
        let t = Instant::now();
        let log = TrafficLog {
            samples: vec![
                sample(t, 0, Some(1), Outcome::Ok),
                sample(t, 1, None, Outcome::Refused),
                sample(
                    t,
                    2,
                    Some(2),
                    Outcome::Failed("GET x: answered NotFound".into()),
                ),
            ],
            acked: vec![],
        };
        let stats = TrafficStats::new(&log, 1, 2);
        assert_eq!((stats.failed, stats.refused), (2, 1));
        assert_eq!(stats.first_failure.as_deref(), Some("connection refused"));
        assert_eq!(stats.blackout, None, "the new pid never answered OK");
    }

    #[test]
    fn microseconds_read_as_milliseconds() {
        assert_eq!(micros(41_302), "41.302 ms");
        assert_eq!(micros(7), "0.007 ms");
    }

    #[test]
    fn the_work_directory_goes_away() {
        let dir = WorkDir::create().expect("create");
        let path = dir.path.clone();
        std::fs::write(path.join("f"), b"x").expect("write");
        dir.remove().expect("remove");
        assert!(!path.exists());
        let dir = WorkDir::create().expect("create");
        let path = dir.path.clone();
        drop(dir);
        assert!(!path.exists());
    }
}
