//! The live update in userspace (SPEC §7): the daemon hands every preserved fd
//! to its next epoch by re-executing itself, optionally as a new binary.
//!
//! ```text
//! luoctl update ─▶ 1 freeze every PREPARED session      ─ fails ─▶ all cancelled, NORMAL, error
//!                  2 serialize the handover image
//!                  3 dry run: NEW --check-handover < image ─ fails ─▶ thaw to PREPARED, error
//!                  4 queue image, listeners, files on a socketpair (SCM_RIGHTS),
//!                    while the dry run's child reads the image on the other CPU
//!                  5 execve(NEW --resume), the socketpair as stdin ─ fails ─▶ thaw, error
//!                    (exec closes every old handle: clients see them go stale)
//!                  6 NEW reads the queue on one thread while it decodes the image and
//!                    rebuilds on another, serves in UPDATED, answers luoctl
//!                    └ cannot rebuild ─▶ re-exec OLD with the same queue; OLD serves
//!                                        the same sessions and reports the failure
//! ```
//!
//! Fds cross the exec inside a unix socket's queue rather than by number: the
//! kernel keeps every open file alive while it is in flight, the new image gets
//! each one back as an owned fd, and no fd number needs trusting. The listening
//! sockets ride along too, so a client connecting during the exec waits in the
//! backlog instead of being refused. Timestamps are CLOCK_MONOTONIC, which is
//! shared by both images, so the new epoch can report the blackout.
//!
//! The rollback after step 6 brings the old binary up with the carried sessions
//! in UPDATED, exactly as a successful update would: the old handles are gone
//! either way, and services restore the same way whichever binary serves them.

use std::ffi::OsString;
use std::io::{IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use luo_core::handover::HandoverRef;
use luo_core::{HandlerRegistry, Limits, Orchestrator};
use luo_wire::control::{ControlReply, UpdateReport};
use rustix::fs::{MemfdFlags, SealFlags};
use rustix::io::Errno;
use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags,
};
use serde::{Deserialize, Serialize};

use crate::control::chain;
use crate::server::{Conn, Daemon};

/// How long PREPARE waits for the standby dry run's child to start.
const STANDBY_START_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);
/// How long the dry run may take.
const DRY_RUN_TIMEOUT_MS: i64 = 30_000;
/// `SCM_MAX_FD`: the most fds one message may carry.
const FDS_PER_MESSAGE: usize = 253;
/// `luoctl` connections carried across the exec, beyond the one that asked;
/// any more are closed (their holders see the connection end).
const MAX_CARRIED_CONTROLS: usize = 200;
const TRANSFER_MAGIC: [u8; 8] = *b"LUOXFER1";
/// The first line `luod --check-handover` prints when the image loads: the dry
/// run needs this positive proof, not just an exit status of 0 (which
/// `/bin/true` would give).
#[must_use]
pub fn check_proof(epoch: u64, sessions: usize, files: usize) -> String {
    format!("luod-check-handover ok epoch={epoch} sessions={sessions} files={files}")
}

/// The line `luod --check-handover` prints first, once running: its exec (and
/// the closing of every fd it inherited) is over.
pub const CHECK_STARTED: &str = "luod-check-handover started";

/// Testing knob: this build pretends to read only the named handover format, as
/// a future binary that dropped the current one would.
pub const ONLY_FORMAT_ENV: &str = "LUOD_ONLY_HANDOVER_FORMAT";
/// Testing knob: the next `--resume` fails after reading the transfer, to
/// exercise the rollback to the previous binary. It is removed before that
/// rollback, so it fires once.
pub const FAIL_RESUME_ENV: &str = "LUOD_TEST_FAIL_RESUME";

/// The first message of a transfer; its fds are, in order: the image, the device
/// listener, the control listener, the previous binary, and the `luoctl`
/// connection to answer when `reply` is set. The preserved files follow, in
/// `fd_index` order, [`FDS_PER_MESSAGE`] at a time.
#[derive(Debug, Serialize, Deserialize)]
struct TransferHeader {
    magic: [u8; 8],
    files: u64,
    started_ns: u64,
    reply: bool,
    /// Other `luoctl` connections, carried so their requests are answered by the
    /// next epoch instead of being cut off by the exec.
    #[serde(default)]
    controls: u32,
    /// Set when this transfer is a rollback: why the next binary failed.
    rollback: Option<String>,
    /// The binary that started the update (the rollback target).
    previous_exe: String,
}

/// What the new epoch owes the `luoctl update` that started it.
#[derive(Debug)]
pub(crate) struct PendingReport {
    reply_to: Option<OwnedFd>,
    controls: Vec<OwnedFd>,
    pub(crate) started_ns: u64,
    rollback: Option<String>,
}

/// Why `--resume` could not start an epoch.
#[derive(Debug, thiserror::Error)]
pub enum ResumeError {
    /// The transfer on standard input is unreadable: nothing can be recovered.
    #[error("Unreadable transfer: {0}")]
    Transfer(String),
    /// The image did not load, and neither did the rollback to the previous binary.
    #[error("Image rejected ({reason}) and rollback to {exe} failed")]
    RollbackFailed {
        /// Why the image was rejected.
        reason: String,
        /// The previous binary.
        exe: String,
        /// Why its exec failed.
        #[source]
        source: std::io::Error,
    },
}

/// An epoch rebuilt from a transfer.
#[derive(Debug)]
pub(crate) struct Resumed {
    pub(crate) orch: Orchestrator,
    pub(crate) device_listener: OwnedFd,
    pub(crate) control_listener: OwnedFd,
    /// The image it started from, as bytes (decoded again only for
    /// `handover-dump`).
    pub(crate) image: Vec<u8>,
    pub(crate) report: PendingReport,
}

/// Milliseconds since a [`now_ns`] timestamp, for the logs of each phase.
pub(crate) fn ms_since(start_ns: u64) -> f64 {
    now_ns().saturating_sub(start_ns) as f64 / 1e6
}

fn now_ns() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    (t.tv_sec as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(t.tv_nsec as u64)
}

/// The reply to an update whose dry run of `target` failed (SPEC §7 step 3).
fn dry_run_failed(target: &Path, why: &str) -> Box<ControlReply> {
    failed(
        Errno::NOEXEC,
        format!("Dry run of {} failed: {why}", target.display()),
    )
}

fn failed(errno: Errno, msg: impl Into<String>) -> Box<ControlReply> {
    let msg = msg.into();
    tracing::warn!(%errno, "update failed: {msg}");
    Box::new(ControlReply::failed(errno, msg))
}

/// The running binary, as a path that can be executed even if the file was
/// replaced on disk meanwhile.
fn current_exe() -> PathBuf {
    std::fs::read_link("/proc/self/exe")
        .ok()
        .filter(|p| p.exists())
        .unwrap_or_else(|| PathBuf::from("/proc/self/exe"))
}

/// `luoctl update [--exec PATH]` on control handle `token`. On success this does
/// not return (the process is the next epoch); on failure the sessions are as
/// SPEC §7 says and the reply explains.
pub(crate) fn update(
    d: &mut Daemon,
    token: u64,
    exec: Option<&str>,
) -> Result<(), Box<ControlReply>> {
    let started_ns = now_ns();
    let previous = current_exe();
    let target = exec.map_or_else(|| previous.clone(), PathBuf::from);
    if d.orch.state() != luo_core::State::Prepared {
        return Err(failed(
            Errno::INVAL,
            format!(
                "A live update needs global state prepared, not {}: run `luoctl prepare` first",
                d.orch.state()
            ),
        ));
    }
    let prefix: Vec<OsString> = if target == previous {
        d.cfg.exec_prefix.clone()
    } else {
        Vec::new()
    };
    // The dry run's child was started at PREPARE when it runs this very
    // binary; otherwise it starts now, so that its exec and start-up overlap
    // the freeze. It reads the image once there is one. Dropped, it is killed.
    let (dry_run, early) = match d.standby.take().filter(|s| s.runs(&target)) {
        Some(standby) => (standby.dry_run, true),
        None => (
            DryRun::start(&target, &prefix).map_err(|why| dry_run_failed(&target, &why))?,
            false,
        ),
    };
    tracing::info!(target = %target.display(), started_at_prepare = early, since_ms = ms_since(started_ns), "live update: dry run under way; freezing");
    let freeze = d
        .orch
        .freeze_for_update()
        .map_err(|e| failed(e.errno(), format!("Freeze failed: {}", chain(&e))))?;
    tracing::info!(since_ms = ms_since(started_ns), "live update: frozen");
    match hand_over(d, token, &target, &previous, &prefix, dry_run, started_ns) {
        Ok(never) => match never {},
        Err(reply) => {
            d.orch.thaw(freeze);
            tracing::info!("live update aborted; sessions thawed back to prepared");
            Err(reply)
        }
    }
}

enum Never {}

/// A dry run's child started at global PREPARE for the running binary, waiting
/// for an image: a live update that follows uses it, so the child's exec (which
/// closes every fd the daemon holds, in the child's copy) is not in the blackout.
#[derive(Debug)]
pub(crate) struct Standby {
    dry_run: DryRun,
    exe: PathBuf,
    /// (st_dev, st_ino, st_mtime, st_mtime_nsec) of `exe` when the child started.
    file: Option<(u64, u64, i64, i64)>,
}

impl Standby {
    /// Whether this child checks what an update to `target` would exec: the
    /// same path, and the same file there (a binary replaced since is not).
    fn runs(&self, target: &Path) -> bool {
        self.exe == target && self.file.is_some() && exe_file(target) == self.file
    }
}

#[allow(clippy::useless_conversion, clippy::unnecessary_cast)]
fn exe_file(path: &Path) -> Option<(u64, u64, i64, i64)> {
    let st = rustix::fs::stat(path).ok()?;
    Some((
        st.st_dev as u64,
        st.st_ino as u64,
        st.st_mtime as i64,
        st.st_mtime_nsec as i64,
    ))
}

/// Keep a [`Standby`] while the global state is PREPARED, and none otherwise.
/// Cheap when nothing changes. Every global event calls it before its reply
/// (`Daemon::global_event`), so starting the child is part of PREPARE, not of
/// an update sent right after; the event loop calls it after every turn too,
/// for the state changes an update makes.
pub(crate) fn keep_standby(d: &mut Daemon) {
    let prepared = d.orch.state() == luo_core::State::Prepared;
    if !prepared {
        d.standby = None;
        d.standby_tried = false;
        return;
    }
    // One try per PREPARE: a child that cannot start now is not retried on
    // every turn of the loop, and one an aborted update used is not replaced.
    if d.standby_tried {
        return;
    }
    d.standby_tried = true;
    let exe = current_exe();
    let file = exe_file(&exe);
    match DryRun::start(&exe, &d.cfg.exec_prefix) {
        Ok(dry_run) => {
            // Its exec closes its copy of every fd the daemon holds, which
            // takes a while with many; wait for that here, in PREPARE, rather
            // than have it compete with the update's freeze for the CPUs.
            let started = dry_run.wait_started(STANDBY_START_TIMEOUT);
            tracing::debug!(exe = %exe.display(), started, "dry run started ahead of an update");
            d.standby = Some(Standby { dry_run, exe, file });
        }
        // The update will start one itself, and say why it cannot.
        Err(why) => tracing::debug!(%why, "cannot start a dry run ahead of an update"),
    }
}

fn hand_over(
    d: &mut Daemon,
    token: u64,
    target: &Path,
    previous: &Path,
    prefix: &[OsString],
    mut dry_run: DryRun,
    started_ns: u64,
) -> Result<Never, Box<ControlReply>> {
    let previous_exe = previous.to_string_lossy();
    let (image, files) = d
        .orch
        .handover_view(&previous_exe)
        .map_err(|e| failed(e.errno(), chain(&e)))?;
    let bytes = image.encode();
    tracing::info!(
        sessions = image.sessions.len(),
        files = files.len(),
        bytes = bytes.len(),
        since_ms = ms_since(started_ns),
        "live update: frozen and serialized; dry run of {}",
        target.display()
    );
    // The child decodes the image while this process queues the fds: the two
    // steps overlap instead of adding up. Nothing is committed until it answers.
    dry_run.feed(bytes.clone());
    let image_fd =
        sealed_memfd(&bytes).map_err(|e| failed(e, "Cannot store the handover image"))?;
    let exe_fd = rustix::fs::open(
        previous,
        rustix::fs::OFlags::PATH | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )
    .map_err(|e| failed(e, format!("Cannot open {}", previous.display())))?;
    let others: Vec<_> = d
        .conns
        .iter()
        .filter(|(t, c)| **t != token && matches!(c, Conn::Control { .. }))
        .map(|(_, c)| c.fd().as_fd())
        .take(MAX_CARRIED_CONTROLS)
        .collect();
    let reply_to = match d.conns.get(&token) {
        Some(Conn::Control { fd, .. }) => Some(fd.as_fd()),
        _ => None,
    };
    let header = TransferHeader {
        magic: TRANSFER_MAGIC,
        files: files.len() as u64,
        started_ns,
        reply: reply_to.is_some(),
        controls: others.len() as u32,
        rollback: None,
        previous_exe: previous.to_string_lossy().into_owned(),
    };
    let mut fixed = vec![
        image_fd.as_fd(),
        d.device_listener.as_fd(),
        d.control_listener.as_fd(),
        exe_fd.as_fd(),
    ];
    fixed.extend(reply_to);
    fixed.extend(others.iter().copied());
    let stdin = queue_transfer(&header, &fixed, &files, &mut || {
        dry_run.pump();
    })
    .map_err(|e| {
        failed(
            e,
            format!(
                "Cannot queue {} fds for the next epoch (try running luod as root)",
                files.len()
            ),
        )
    })?;
    tracing::info!(
        since_ms = ms_since(started_ns),
        "live update: queued; waiting for the dry run"
    );
    dry_run
        .finish(&check_proof(image.epoch, image.sessions.len(), files.len()))
        .map_err(|why| dry_run_failed(target, &why))?;
    let mut args = prefix.to_vec();
    args.extend(resume_args(&d.cfg));
    tracing::info!(exe = %target.display(), since_ms = ms_since(started_ns), "live update: dry run passed; exec");
    let err = exec(target, &args, stdin, &[]);
    Err(failed(
        Errno::from_io_error(&err).unwrap_or(Errno::NOEXEC),
        format!("Exec of {} failed: {}", target.display(), plain(&err)),
    ))
}

/// The arguments that give the next epoch this one's configuration.
fn resume_args(cfg: &crate::config::Config) -> Vec<OsString> {
    let mut a: Vec<OsString> = vec!["--resume".into()];
    a.extend(["--socket".into(), cfg.device_socket().into_os_string()]);
    a.extend([
        "--control-socket".into(),
        cfg.control_socket().into_os_string(),
    ]);
    if cfg.shared_device {
        a.push("--shared-device".into());
    }
    if let Some(g) = &cfg.group {
        a.extend(["--group".into(), g.into()]);
    }
    a.extend([
        "--max-sessions-per-uid".into(),
        cfg.max_sessions_per_uid.to_string().into(),
    ]);
    a.extend([
        "--max-files-per-session".into(),
        cfg.max_files_per_session.to_string().into(),
    ]);
    a.extend([
        "--max-connections".into(),
        cfg.max_connections.to_string().into(),
    ]);
    a
}

/// Replace this process with `exe args`, `stdin` as fd 0. Returns only on failure.
fn exec(exe: &Path, args: &[OsString], stdin: OwnedFd, remove_env: &[&str]) -> std::io::Error {
    let mut cmd = Command::new(exe);
    cmd.args(args).stdin(Stdio::from(stdin));
    for var in remove_env {
        cmd.env_remove(var);
    }
    cmd.exec()
}

/// An I/O error's text without std's " (os error N)" suffix.
fn plain(e: &std::io::Error) -> String {
    let s = e.to_string();
    s.split(" (os error").next().unwrap_or(&s).to_owned()
}

fn sealed_memfd(bytes: &[u8]) -> Result<OwnedFd, Errno> {
    let fd = rustix::fs::memfd_create(
        "luod-handover",
        MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING,
    )?;
    let mut off = 0;
    while off < bytes.len() {
        off += rustix::io::write(&fd, &bytes[off..])?;
    }
    rustix::fs::seek(&fd, rustix::fs::SeekFrom::Start(0))?;
    rustix::fs::fcntl_add_seals(
        &fd,
        SealFlags::SHRINK | SealFlags::GROW | SealFlags::WRITE | SealFlags::SEAL,
    )?;
    Ok(fd)
}

/// Step 3: `exe --check-handover` reading the image, running while the caller
/// goes on; [`DryRun::finish`] waits for its verdict, with a timeout. Dropped
/// unfinished, the child is killed.
#[derive(Debug)]
struct DryRun {
    child: std::process::Child,
    pidfd: OwnedFd,
    output: OwnedFd,
    /// The image, and how much of it is in the child's standard input: a
    /// pipe written without blocking ([`DryRun::pump`]), so that a child that
    /// never reads cannot block the daemon.
    image: Vec<u8>,
    fed: usize,
    done: bool,
}

/// The child's input pipe is enlarged to this (the most an unprivileged
/// process may ask, `/proc/sys/fs/pipe-max-size`), so that an image of up to
/// 1 MiB (26k files) goes in at once, before the fds are queued.
const DRY_RUN_PIPE: usize = 1 << 20;

impl DryRun {
    /// Start the child; it waits for the image on standard input.
    fn start(exe: &Path, prefix: &[OsString]) -> Result<DryRun, String> {
        let output = rustix::fs::memfd_create("luod-dry-run", MemfdFlags::CLOEXEC)
            .map_err(|e| e.to_string())?;
        let mut child = Command::new(exe)
            .args(prefix)
            .arg("--check-handover")
            .stdin(Stdio::piped())
            .stdout(Stdio::from(output.try_clone().map_err(|e| e.to_string())?))
            .stderr(Stdio::from(output.try_clone().map_err(|e| e.to_string())?))
            .env_remove("NOTIFY_SOCKET")
            .spawn()
            .map_err(|e| format!("cannot start it: {}", plain(&e)))?;
        let pid = rustix::process::Pid::from_child(&child);
        match rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty()) {
            Ok(pidfd) => {
                if let Some(stdin) = &child.stdin {
                    // Where this cannot be done, the image goes in a pipe's
                    // worth at a time.
                    let _ = rustix::pipe::fcntl_setpipe_size(stdin, DRY_RUN_PIPE);
                    let _ = rustix::io::ioctl_fionbio(stdin, true);
                }
                Ok(DryRun {
                    child,
                    pidfd,
                    output,
                    image: Vec::new(),
                    fed: 0,
                    done: false,
                })
            }
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                Err(e.to_string())
            }
        }
    }

    /// Wait until the child says it runs ([`CHECK_STARTED`]), has exited, or
    /// `timeout` passes; whether it said so.
    fn wait_started(&self, timeout: std::time::Duration) -> bool {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let said = rustix::fs::fstat(&self.output).map_or(0, |st| st.st_size);
            if said > 0 {
                return true;
            }
            if self.exited_within(&rustix::time::Timespec::default())
                || std::time::Instant::now() >= deadline
            {
                return false;
            }
            std::thread::sleep(std::time::Duration::from_micros(100));
        }
    }

    /// Whether the child exits within `timeout` (its pidfd turns readable).
    fn exited_within(&self, timeout: &rustix::time::Timespec) -> bool {
        let mut fds = [rustix::event::PollFd::new(
            &self.pidfd,
            rustix::event::PollFlags::IN,
        )];
        loop {
            match rustix::event::poll(&mut fds, Some(timeout)) {
                Err(Errno::INTR) => {}
                ready => return matches!(ready, Ok(n) if n > 0),
            }
        }
    }

    /// Hand the child the image: as much as its input takes now, the rest
    /// from [`pump`](Self::pump).
    fn feed(&mut self, image: Vec<u8>) {
        self.image = image;
        self.fed = 0;
        self.pump();
    }

    /// Write what the child's input takes without waiting; once all of the
    /// image is in, close it. Whether that is done. The update calls it
    /// between the messages it queues, so the child never waits for a thread
    /// that the queueing keeps off the CPUs (a feeder thread did, for 2.4 ms
    /// in 2 rounds of 5 at 15k files).
    fn pump(&mut self) -> bool {
        let Some(stdin) = &self.child.stdin else {
            return true;
        };
        while self.fed < self.image.len() {
            match rustix::io::write(stdin, &self.image[self.fed..]) {
                Ok(n) => self.fed += n,
                Err(Errno::INTR) => {}
                Err(Errno::AGAIN) => return false,
                // EPIPE: the child is gone, and its status and output say why.
                Err(_) => break,
            }
        }
        self.child.stdin = None;
        true
    }

    /// Wait for the child and judge what it printed: it must exit 0 and print
    /// `proof`.
    fn finish(mut self, proof: &str) -> Result<(), String> {
        let deadline =
            std::time::Instant::now() + std::time::Duration::from_millis(DRY_RUN_TIMEOUT_MS as u64);
        let timeout = || {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            rustix::time::Timespec::try_from(left).unwrap_or_default()
        };
        let no_answer = || format!("no answer within {} s", DRY_RUN_TIMEOUT_MS / 1000);
        // The rest of the image, as the child reads it, unless it exits first.
        while !self.pump() {
            let Some(stdin) = &self.child.stdin else {
                break;
            };
            let mut fds = [
                rustix::event::PollFd::new(stdin, rustix::event::PollFlags::OUT),
                rustix::event::PollFd::new(&self.pidfd, rustix::event::PollFlags::IN),
            ];
            match rustix::event::poll(&mut fds, Some(&timeout())) {
                Ok(0) => return Err(no_answer()),
                Ok(_) if !fds[1].revents().is_empty() => break,
                Ok(_) | Err(Errno::INTR) => {}
                Err(e) => return Err(format!("cannot write the image: {e}")),
            }
        }
        self.child.stdin = None;
        if !self.exited_within(&timeout()) {
            return Err(no_answer());
        }
        let status = self.child.wait().map_err(|e| e.to_string())?;
        self.done = true;
        let mut said = vec![0u8; 64 * 1024];
        let n = rustix::io::pread(&self.output, &mut said, 0).unwrap_or(0);
        let said = String::from_utf8_lossy(&said[..n]);
        if status.success() {
            if said.lines().any(|l| l == proof) {
                return Ok(());
            }
            return Err(format!(
                "it exited with {status} but did not confirm the image (is it luod?)"
            ));
        }
        let last = said
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("")
            .trim();
        Err(if last.is_empty() {
            format!("it exited with {status}")
        } else {
            format!("it exited with {status}: {last}")
        })
    }
}

impl Drop for DryRun {
    fn drop(&mut self) {
        if !self.done {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Step 4: a socketpair whose receiving end holds the whole transfer. The
/// sending end is closed on return: the queue survives it.
fn queue_transfer(
    header: &TransferHeader,
    fixed: &[BorrowedFd<'_>],
    files: &[BorrowedFd<'_>],
    between: &mut dyn FnMut(),
) -> Result<OwnedFd, Errno> {
    let (tx, rx) = luo_wire::socketpair_seqpacket()?;
    // Room for every message: as root beyond net.core.wmem_max, else up to it.
    let want = (files.len() / FDS_PER_MESSAGE + 2) * 4096 + (1 << 20);
    if rustix::net::sockopt::set_socket_send_buffer_size_force(&tx, want).is_err() {
        let _ = rustix::net::sockopt::set_socket_send_buffer_size(&tx, want);
    }
    rustix::io::ioctl_fionbio(&tx, true)?;
    let head = postcard::to_allocvec(header).map_err(|_| Errno::INVAL)?;
    send_fds(&tx, &head, fixed)?;
    for chunk in files.chunks(FDS_PER_MESSAGE) {
        send_fds(&tx, &(chunk.len() as u32).to_le_bytes(), chunk)?;
        between();
    }
    Ok(rx)
}

fn send_fds(sock: &OwnedFd, bytes: &[u8], fds: &[BorrowedFd<'_>]) -> Result<(), Errno> {
    let mut space =
        vec![MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(FDS_PER_MESSAGE))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !fds.is_empty() && !control.push(SendAncillaryMessage::ScmRights(fds)) {
        return Err(Errno::NOBUFS);
    }
    loop {
        match rustix::net::sendmsg(
            sock,
            &[IoSlice::new(bytes)],
            &mut control,
            SendFlags::NOSIGNAL,
        ) {
            Err(Errno::INTR) => {}
            Ok(_) => return Ok(()),
            Err(e) => return Err(e),
        }
    }
}

fn recv_fds(sock: BorrowedFd<'_>, buf: &mut [u8]) -> Result<(usize, Vec<OwnedFd>), Errno> {
    let mut space =
        vec![MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(FDS_PER_MESSAGE))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let msg = loop {
        match rustix::net::recvmsg(
            sock,
            &mut [IoSliceMut::new(buf)],
            &mut control,
            RecvFlags::CMSG_CLOEXEC,
        ) {
            Err(Errno::INTR) => {}
            other => break other?,
        }
    };
    let mut fds = Vec::new();
    for m in control.drain() {
        if let RecvAncillaryMessage::ScmRights(r) = m {
            fds.extend(r);
        }
    }
    if msg.flags.contains(rustix::net::ReturnFlags::CTRUNC) {
        return Err(Errno::NOBUFS);
    }
    Ok((msg.bytes, fds))
}

/// What `--resume` read from standard input.
struct Transfer {
    header: TransferHeader,
    image_fd: OwnedFd,
    device_listener: OwnedFd,
    control_listener: OwnedFd,
    exe_fd: OwnedFd,
    reply_to: Option<OwnedFd>,
    controls: Vec<OwnedFd>,
    files: Vec<OwnedFd>,
}

/// The transfer's first message: its header and the fixed fds. The files
/// follow on the same socket ([`receive_files`]).
fn read_transfer_head(sock: BorrowedFd<'_>) -> Result<Transfer, String> {
    let mut buf = vec![0u8; 64 * 1024];
    let (n, fixed) = recv_fds(sock, &mut buf).map_err(|e| format!("first message: {e}"))?;
    let header: TransferHeader =
        postcard::from_bytes(&buf[..n]).map_err(|e| format!("header: {e}"))?;
    if header.magic != TRANSFER_MAGIC {
        return Err("bad magic".into());
    }
    tracing::info!(
        since_ms = ms_since(header.started_ns),
        files = header.files,
        "resume: receiving the files"
    );
    let mut fixed = fixed.into_iter();
    let mut next = |what: &str| fixed.next().ok_or_else(|| format!("missing {what}"));
    let image_fd = next("image")?;
    let device_listener = next("device listener")?;
    let control_listener = next("control listener")?;
    let exe_fd = next("previous binary")?;
    let reply_to = if header.reply {
        Some(next("reply handle")?)
    } else {
        None
    };
    let controls = (0..header.controls)
        .map(|_| next("control handle"))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Transfer {
        header,
        image_fd,
        device_listener,
        control_listener,
        exe_fd,
        reply_to,
        controls,
        files: Vec::new(),
    })
}

/// The transfer's `count` files, in order, after its first message: each
/// message's fds are sent on `batches` as they arrive.
fn receive_files(
    sock: BorrowedFd<'_>,
    count: u64,
    batches: &std::sync::mpsc::Sender<Vec<OwnedFd>>,
) -> Result<(), String> {
    let mut buf = [0u8; 64];
    let mut received = 0u64;
    while received < count {
        let (n, fds) = recv_fds(sock, &mut buf).map_err(|e| format!("files: {e}"))?;
        let said = buf
            .get(..4)
            .filter(|_| n == 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]));
        if said != Some(fds.len() as u32) || fds.is_empty() {
            return Err(format!(
                "file message with {} fds, says {said:?}",
                fds.len()
            ));
        }
        received += fds.len() as u64;
        if batches.send(fds).is_err() {
            // Nobody wants them any more: the resume has failed already.
            return Ok(());
        }
    }
    Ok(())
}

/// The fds of a transfer as they arrive from [`receive_files`], by index.
struct Arriving {
    batches: std::sync::mpsc::Receiver<Vec<OwnedFd>>,
    fds: Vec<Option<OwnedFd>>,
}

impl Arriving {
    /// The fd of index `i`, waiting for it; `None` when the transfer ended
    /// before it.
    fn take(&mut self, i: usize) -> Option<OwnedFd> {
        while self.fds.len() <= i {
            let batch = self.batches.recv().ok()?;
            self.fds.extend(batch.into_iter().map(Some));
        }
        self.fds[i].take()
    }

    /// Every fd not taken, once the transfer has ended.
    fn rest(self) -> Vec<OwnedFd> {
        let mut rest: Vec<OwnedFd> = self.fds.into_iter().flatten().collect();
        rest.extend(self.batches.iter().flatten());
        rest
    }
}

fn read_image(fd: BorrowedFd<'_>) -> Result<Vec<u8>, String> {
    let size = rustix::fs::fstat(fd).map_err(|e| e.to_string())?.st_size as usize;
    let mut bytes = vec![0u8; size];
    let mut off = 0;
    while off < size {
        match rustix::io::pread(fd, &mut bytes[off..], off as u64) {
            Ok(0) => return Err("image shorter than its size".into()),
            Ok(n) => off += n,
            Err(Errno::INTR) => {}
            Err(e) => return Err(e.to_string()),
        }
    }
    Ok(bytes)
}

/// Decode an image as this build reads it (structure only).
fn decode(bytes: &[u8]) -> Result<HandoverRef<'_>, String> {
    if let Ok(only) = std::env::var(ONLY_FORMAT_ENV) {
        let found = bytes
            .get(8..40)
            .map(|c| String::from_utf8_lossy(c).trim_end_matches('\0').to_owned());
        if found.as_deref() != Some(only.as_str()) {
            return Err(format!(
                "Bad handover image: Unknown format {:?}",
                found.unwrap_or_default()
            ));
        }
    }
    HandoverRef::decode(bytes).map_err(|e| format!("Bad handover image: {e}"))
}

/// Decode and check an image as this build would load it.
fn load<'a>(bytes: &'a [u8], registry: &HandlerRegistry) -> Result<HandoverRef<'a>, String> {
    let image = decode(bytes)?;
    image
        .validate(registry)
        .map_err(|e| format!("Bad handover image: {e}"))?;
    Ok(image)
}

/// `luod --check-handover`: the dry run. Reads the image from standard input.
///
/// # Errors
/// Why the image would not load.
/// Returns the proof line to print, and the image.
pub fn check_handover() -> Result<(String, Vec<u8>), String> {
    let mut bytes = Vec::new();
    std::io::Read::read_to_end(&mut std::io::stdin(), &mut bytes)
        .map_err(|e| format!("cannot read the image: {e}"))?;
    let image = load(&bytes, &HandlerRegistry::with_builtin())?;
    let proof = check_proof(image.epoch, image.sessions.len(), image.fd_count());
    Ok((proof, bytes))
}

/// `luod --resume`: rebuild the epoch from the transfer on standard input. If the
/// image does not load, re-exec the previous binary with the same transfer (this
/// returns only if that fails too).
pub(crate) fn resume(registry: HandlerRegistry, limits: Limits) -> Result<Resumed, ResumeError> {
    let stdin = std::io::stdin()
        .as_fd()
        .try_clone_to_owned()
        .map_err(|e| ResumeError::Transfer(format!("standard input: {e}")))?;
    let mut t = read_transfer_head(stdin.as_fd()).map_err(ResumeError::Transfer)?;
    // The files arrive on a thread of their own while this one reads and
    // decodes the image and builds the epoch from it, taking each file's fd
    // as it comes: the steps overlap instead of adding up.
    let count = t.header.files;
    let (batches_tx, batches) = std::sync::mpsc::channel();
    let receiver = std::thread::Builder::new()
        .name("luod-receive".into())
        .spawn(move || receive_files(stdin.as_fd(), count, &batches_tx))
        .map_err(|e| ResumeError::Transfer(format!("cannot start receiving: {e}")))?;
    let mut arriving = Arriving {
        batches,
        fds: Vec::with_capacity(usize::try_from(count).unwrap_or_default()),
    };
    // Standard input was the transfer; from now on it is nothing.
    if let Ok(null) = std::fs::File::open("/dev/null") {
        let _ = rustix::stdio::dup2_stdin(&null);
    }
    let bytes = read_image(t.image_fd.as_fd());
    // Decoding checks the structure; building checks that every file fits
    // its handler, and leaves the per-fd checks for after the epoch serves
    // (`Orchestrator::settle`). The image is read as a view borrowing
    // `bytes`: each file's data is copied once, into the file it belongs to.
    let built = bytes.as_deref().map_err(Clone::clone).and_then(|b| {
        if std::env::var_os(FAIL_RESUME_ENV).is_some() {
            return Err(format!("{FAIL_RESUME_ENV} is set"));
        }
        let image = decode(b)?;
        Orchestrator::from_handover_view_arriving(
            &image,
            usize::try_from(count).unwrap_or(usize::MAX),
            |i| arriving.take(i),
            registry.clone(),
            limits,
        )
        .map_err(|e| chain(&e))
    });
    // Whatever was not taken: every fd when nothing was built, to roll back
    // with. Waits for the transfer to end.
    t.files = arriving.rest();
    receiver
        .join()
        .map_err(|_| ResumeError::Transfer("the receiving thread panicked".into()))?
        .map_err(ResumeError::Transfer)?;
    tracing::info!(
        files = count,
        since_ms = ms_since(t.header.started_ns),
        "resume: transfer received"
    );
    let loaded = match (built, bytes) {
        (Ok(orch), Ok(bytes)) => {
            if !t.files.is_empty() {
                return Err(ResumeError::Transfer(format!(
                    "{} fds more than the image has files",
                    t.files.len()
                )));
            }
            Ok((bytes, orch))
        }
        (Err(reason), _) | (Ok(_), Err(reason)) => Err(reason),
    };
    match loaded {
        Ok((image, orch)) => {
            tracing::info!(
                epoch = orch.epoch(),
                sessions = orch.sessions().count(),
                files = orch.preserved_count(),
                since_ms = ms_since(t.header.started_ns),
                "resumed from handover"
            );
            Ok(Resumed {
                orch,
                device_listener: t.device_listener,
                control_listener: t.control_listener,
                image,
                report: PendingReport {
                    reply_to: t.reply_to,
                    controls: t.controls,
                    started_ns: t.header.started_ns,
                    rollback: t.header.rollback,
                },
            })
        }
        Err(reason) if t.header.rollback.is_none() => Err(rollback(t, reason)),
        Err(reason) => Err(ResumeError::Transfer(format!(
            "the rollback image does not load either: {reason}"
        ))),
    }
}

/// Step 6's unhappy path: hand the same transfer to the previous binary.
fn rollback(t: Transfer, reason: String) -> ResumeError {
    tracing::error!(%reason, previous = %t.header.previous_exe, "cannot load the handover; rolling back");
    let exe = format!(
        "/proc/self/fd/{}",
        std::os::fd::AsRawFd::as_raw_fd(&t.exe_fd)
    );
    let header = TransferHeader {
        rollback: Some(reason.clone()),
        ..t.header
    };
    let mut fixed = vec![
        t.image_fd.as_fd(),
        t.device_listener.as_fd(),
        t.control_listener.as_fd(),
        t.exe_fd.as_fd(),
    ];
    fixed.extend(t.reply_to.as_ref().map(AsFd::as_fd));
    fixed.extend(t.controls.iter().map(AsFd::as_fd));
    let files: Vec<BorrowedFd<'_>> = t.files.iter().map(AsFd::as_fd).collect();
    let source = match queue_transfer(&header, &fixed, &files, &mut || {}) {
        Ok(stdin) => {
            let args: Vec<OsString> = std::env::args_os().skip(1).collect();
            exec(
                Path::new(&exe),
                &args,
                stdin,
                &[FAIL_RESUME_ENV, ONLY_FORMAT_ENV],
            )
        }
        Err(e) => std::io::Error::from(e),
    };
    ResumeError::RollbackFailed {
        reason,
        exe: header.previous_exe,
        source,
    }
}

/// Answer the `luoctl update` that started this epoch, on its own connection,
/// which then goes on as an ordinary control handle.
pub(crate) fn report(d: &mut Daemon) {
    let Some(p) = d.pending_report.take() else {
        return;
    };
    let blackout_us = now_ns().saturating_sub(p.started_ns) / 1000;
    let reply = match &p.rollback {
        None => ControlReply {
            update: Some(UpdateReport {
                epoch: d.orch.epoch(),
                exe: current_exe().to_string_lossy().into_owned(),
                sessions: d.orch.sessions().count(),
                files: d.orch.preserved_count(),
                blackout_us,
            }),
            ..ControlReply::ok()
        },
        Some(reason) => ControlReply::failed(
            Errno::NOEXEC,
            format!(
                "The new binary could not load the handover ({reason}); rolled back to {} with every session carried",
                current_exe().display()
            ),
        ),
    };
    tracing::info!(
        epoch = d.orch.epoch(),
        blackout_us,
        rollback = p.rollback.is_some(),
        "live update complete"
    );
    let mut line = serde_json::to_vec(&reply).unwrap_or_default();
    line.push(b'\n');
    // The asker gets its answer first; the other carried connections are served
    // as if nothing had happened (what they sent meanwhile is still queued).
    let carried = p.reply_to.map(|fd| (fd, line)).into_iter();
    for (fd, outbuf) in carried.chain(p.controls.into_iter().map(|fd| (fd, Vec::new()))) {
        if rustix::io::ioctl_fionbio(&fd, true).is_err() {
            continue;
        }
        let conn = Conn::Control {
            fd,
            inbuf: Vec::new(),
            outbuf,
        };
        if let Ok(token) = d.add_conn(conn) {
            let flags =
                rustix::event::epoll::EventFlags::IN | rustix::event::epoll::EventFlags::OUT;
            crate::control::ready(d, token, flags);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A standby dry run checks the binary it started from: the same path with
    /// another file there (a package upgrade replaced it) does not count.
    #[test]
    fn a_standby_is_used_only_for_the_same_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let exe = dir.path().join("luod");
        std::fs::copy("/bin/true", &exe).expect("copy");
        let dry_run = DryRun::start(Path::new("/bin/cat"), &[]).expect("start");
        let standby = Standby {
            dry_run,
            exe: exe.clone(),
            file: exe_file(&exe),
        };
        assert!(standby.runs(&exe));
        assert!(!standby.runs(Path::new("/bin/true")), "another path");
        let new = dir.path().join("luod.new");
        std::fs::copy("/bin/true", &new).expect("copy");
        std::fs::rename(&new, &exe).expect("replace");
        assert!(!standby.runs(&exe), "the same path, another file");
    }
}
