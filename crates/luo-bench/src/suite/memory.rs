//! `memory`: what one preserved fd costs the daemon in memory.
//!
//! Workload, per kind of file (eventfd, then empty memfd), on a fresh daemon:
//! its idle memory is read first (the baseline), then 100 sessions × 1000 files
//! (`--quick`: 4 × 25) are preserved, the client closing its copies. The
//! daemon's memory is read again with the files held, and once more after a live
//! update has carried them (the new epoch rebuilt everything from the image).
//!
//! | metric | figure |
//! |---|---|
//! | `per_fd` | (VmRSS with the files − idle VmRSS) / files |
//! | `per_fd_after_update` | the same in the next epoch |
//!
//! Each line's params also give the same delta for `RssAnon` (heap) and `Pss`.
//! Kernel memory (the `struct file` each fd pins, the fd table) is not in RSS
//! and not counted. Target: at most 512 bytes per preserved fd.
//!
//! Where RLIMIT_NOFILE does not let luod hold 100k fds
//! ([`super::carry_limit`]), each session holds fewer files and the line says
//! `requested_files` and `capped_by`.

use luo_wire::control::ControlRequest;

use super::Kind;
use crate::Output;
use crate::daemon::{Daemon, Memory};
use crate::error::{Context, Error, Result};
use crate::record::{Record, Summary, round};

const SUITE: &str = "memory";
/// The target, bytes per preserved fd.
const TARGET_BYTES: f64 = 512.0;

/// Run the suite.
///
/// # Errors
/// A failed request or update, or a daemon that would not start.
pub fn run(quick: bool, out: &mut Output<'_>) -> Result<()> {
    let (sessions, wanted_per_session) = if quick { (4, 25) } else { (100, 1000) };
    let limit = super::fd_limit();
    let per_session = wanted_per_session.min(super::carry_limit(limit) / sessions);
    let files = sessions * per_session;
    if per_session < wanted_per_session {
        crate::progress(&format!(
            "memory: RLIMIT_NOFILE {limit} cannot carry {} fds; measuring {files}",
            sessions * wanted_per_session
        ));
    }
    for kind in [Kind::Eventfd, Kind::Memfd] {
        let mut d = Daemon::start(&[])?;
        let idle = d.memory()?;
        let handles = d.sessions((0..sessions).map(|i| format!("m{i:03}")))?;
        crate::progress(&format!("memory: preserving {files} {}s", kind.name()));
        for (i, s) in handles.iter().enumerate() {
            for token in 0..per_session as u64 {
                let fd = kind.create()?;
                s.preserve(&fd, token)
                    .context(|| format!("Cannot preserve m{i:03}/{token}"))?;
            }
        }
        let status = d.call(&ControlRequest::Status)?.status;
        if status.as_ref().map(|s| s.preserved_files) != Some(files) {
            return Err(Error::Check(format!(
                "the daemon holds {:?} files, not {files}",
                status.map(|s| s.preserved_files)
            )));
        }
        let held = d.memory()?;
        let mut control = d.control()?;
        control.call(&ControlRequest::Prepare)?;
        control.call(&ControlRequest::Update { exec: None })?;
        d.wait_ready()?;
        drop(handles);
        let after = d.memory()?;
        let with = |r: Record, m: &Memory| {
            let per = |now: u64, then: u64| round(now.saturating_sub(then) as f64 / files as f64);
            let r = if per_session < wanted_per_session {
                r.param("requested_files", sessions * wanted_per_session)
                    .param("capped_by", format!("RLIMIT_NOFILE {limit}"))
            } else {
                r
            };
            r.param("kind", kind.name())
                .param("sessions", sessions)
                .param("files", files)
                .param("idle_rss_bytes", idle.rss)
                .param("rss_bytes", m.rss)
                .param("anon_per_fd", per(m.anon, idle.anon))
                .param("pss_per_fd", per(m.pss, idle.pss))
                .baseline_only(idle.rss as f64, "idle daemon VmRSS in bytes, subtracted")
                .at_most(
                    "median",
                    TARGET_BYTES,
                    "≤ 512 bytes of daemon memory per preserved fd",
                )
        };
        let per_fd = |m: &Memory| m.rss.saturating_sub(idle.rss) as f64 / files as f64;
        out.record(&with(
            Record::new(SUITE, "per_fd", "bytes", Summary::one(per_fd(&held))),
            &held,
        ))?;
        out.record(&with(
            Record::new(
                SUITE,
                "per_fd_after_update",
                "bytes",
                Summary::one(per_fd(&after)),
            ),
            &after,
        ))?;
    }
    Ok(())
}
