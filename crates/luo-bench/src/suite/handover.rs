//! `handover`: how long services are cut off during a live update, by how many
//! fds it carries.
//!
//! Workload, per size (1k, 10k, 100k fds; `--quick`: 64), on a fresh daemon:
//! 1k sessions are created, the fds (empty memfds) are spread over them
//! round-robin (file `j` goes to session `j % 1000` under token `j / 1000`) and
//! the client closes its copies, keeping only the session handles. Then, for each
//! round: global PREPARE (not timed), and the clock starts as the `update`
//! request is sent; it stops when the first RESTORE_FD of the new epoch succeeds
//! (device opened, session retrieved, token 0 restored, retrying while the old
//! epoch's handles go stale). Between rounds every session is retrieved, every fd
//! restored and FINISHed, so the next round carries the same set.
//!
//! | metric | figure |
//! |---|---|
//! | `blackout` | update sent → first successful RESTORE_FD, as the client sees it |
//! | `daemon_blackout` | the same span as the new epoch reports it (`update.blackout_us`: request read → serving) |
//! | `per_fd` | `blackout` / fds |
//!
//! Baseline: the same update carrying one fd in one session, on its own daemon:
//! the fixed cost of a dry run and an exec. Target: at most 200 ms at 100k fds.
//!
//! A size the machine's RLIMIT_NOFILE cannot carry ([`super::carry_limit`]:
//! without CAP_SYS_RESOURCE the hard limit cannot be raised) is measured at the
//! most it can (`requested_files` and `capped_by` say so), and its blackout is
//! also projected from every round of the sizes measured (1k sessions each):
//! a least-squares line through (fds, blackout), evaluated at the wanted size
//! (`projected: true`, `n: 0`, with the line's slope and intercept); the target
//! is judged on that projection. Every round is a point, so one noisy median
//! cannot tilt the line.

use std::time::{Duration, Instant};

use luo_wire::control::ControlRequest;

use super::{Kind, first_restore, millis};
use crate::Output;
use crate::daemon::{Daemon, READY_TIMEOUT};
use crate::error::{Context, Error, Result};
use crate::record::{Record, Summary};

const SUITE: &str = "handover";
/// The target for 100k fds, in ms.
const TARGET_MS: f64 = 200.0;
/// The fd count the target applies to.
const TARGET_FILES: usize = 100_000;
const TARGET_TEXT: &str = "100k-fd blackout ≤ 200 ms";

/// A workload size.
#[derive(Debug, Clone, Copy)]
struct Size {
    files: usize,
    sessions: usize,
    rounds: usize,
}

/// What the rounds of one size measured, in ms.
#[derive(Debug, Default)]
struct Measured {
    client: Vec<f64>,
    daemon: Vec<f64>,
}

/// Run the suite.
///
/// # Errors
/// A failed request or update, or a daemon that would not start.
pub fn run(quick: bool, out: &mut Output<'_>) -> Result<()> {
    let kind = Kind::Memfd;
    let (base, sizes) = if quick {
        (
            Size {
                files: 1,
                sessions: 1,
                rounds: 2,
            },
            vec![Size {
                files: 64,
                sessions: 8,
                rounds: 2,
            }],
        )
    } else {
        (
            Size {
                files: 1,
                sessions: 1,
                rounds: 7,
            },
            vec![
                Size {
                    files: 1_000,
                    sessions: 1_000,
                    rounds: 5,
                },
                Size {
                    files: 10_000,
                    sessions: 1_000,
                    rounds: 5,
                },
                Size {
                    files: 100_000,
                    sessions: 1_000,
                    rounds: 5,
                },
            ],
        )
    };
    let with = |r: Record, s: Size| {
        r.param("files", s.files)
            .param("sessions", s.sessions)
            .param("kind", kind.name())
            .param("rounds", s.rounds)
    };
    let limit = super::fd_limit();
    let cap = super::carry_limit(limit);
    let capped_by = format!("RLIMIT_NOFILE {limit}");
    let b = measure(base, kind)?;
    let base_ms = Summary::of(&b.client);
    out.record(&with(Record::new(SUITE, "blackout", "ms", base_ms), base))?;
    // (files, ms) of every round of every size measured, for a projection.
    let mut points: Vec<(usize, f64)> = Vec::new();
    for wanted in sizes {
        let size = Size {
            files: wanted.files.min(cap),
            ..wanted
        };
        let capped = |r: Record| {
            if size.files < wanted.files {
                r.param("requested_files", wanted.files)
                    .param("capped_by", capped_by.as_str())
            } else {
                r
            }
        };
        if !points.iter().any(|&(f, _)| f >= size.files) {
            let m = measure(size, kind)?;
            let client = Summary::of(&m.client);
            points.extend(m.client.iter().map(|&ms| (size.files, ms)));
            let mut blackout = capped(with(Record::new(SUITE, "blackout", "ms", client), size))
                .baseline(base_ms.median, "the same update carrying 1 fd");
            if size.files == TARGET_FILES {
                blackout = blackout.at_most("median", TARGET_MS, TARGET_TEXT);
            }
            out.record(&blackout)?;
            out.record(
                &capped(with(
                    Record::new(SUITE, "daemon_blackout", "ms", Summary::of(&m.daemon)),
                    size,
                ))
                .baseline(
                    Summary::of(&b.daemon).median,
                    "the same update carrying 1 fd",
                ),
            )?;
            let per_fd: Vec<f64> = m
                .client
                .iter()
                .map(|ms| ms * 1000.0 / size.files as f64)
                .collect();
            let marginal = (client.median - base_ms.median) * 1000.0 / size.files as f64;
            out.record(
                &capped(with(
                    Record::new(SUITE, "per_fd", "us", Summary::of(&per_fd)),
                    size,
                ))
                .param("marginal_us_per_fd", crate::record::round(marginal)),
            )?;
        }
        if size.files < wanted.files {
            // This machine cannot carry that many: project from what it could.
            let not_run = Size {
                rounds: 0,
                ..wanted
            };
            if let Some(r) = project(wanted, &points, base_ms.median) {
                out.record(&with(r, not_run).param("capped_by", capped_by.as_str()))?;
            }
        }
    }
    Ok(())
}

/// The blackout of `size` extrapolated from `points` (files, ms: one per
/// round) by a least-squares line, marked `projected`; `None` unless the points
/// span at least two sizes.
fn project(size: Size, points: &[(usize, f64)], base_ms: f64) -> Option<Record> {
    let n = points.len() as f64;
    let mean_x = points.iter().map(|&(f, _)| f as f64).sum::<f64>() / n;
    let mean_y = points.iter().map(|&(_, ms)| ms).sum::<f64>() / n;
    let sxx: f64 = points
        .iter()
        .map(|&(f, _)| (f as f64 - mean_x).powi(2))
        .sum();
    if points.len() < 2 || sxx == 0.0 {
        return None;
    }
    let sxy: f64 = points
        .iter()
        .map(|&(f, ms)| (f as f64 - mean_x) * (ms - mean_y))
        .sum();
    let slope = sxy / sxx;
    let intercept = mean_y - slope * mean_x;
    let ms = intercept + slope * size.files as f64;
    let mut sizes: Vec<usize> = points.iter().map(|&(f, _)| f).collect();
    sizes.dedup();
    let sizes: Vec<String> = sizes.iter().map(usize::to_string).collect();
    let mut r = Record::new(SUITE, "blackout", "ms", Summary::one(ms))
        .param("projected", true)
        .param(
            "projected_from",
            format!(
                "least squares over {} rounds at files={}",
                points.len(),
                sizes.join(", ")
            ),
        )
        .param("slope_us_per_fd", crate::record::round(slope * 1000.0))
        .param("intercept_ms", crate::record::round(intercept))
        .baseline(base_ms, "the same update carrying 1 fd");
    r.n = 0;
    if size.files == TARGET_FILES {
        r = r.at_most("median", TARGET_MS, TARGET_TEXT);
    }
    Some(r)
}

/// The session names: `h0000`, `h0001`, ...
fn names(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("h{i:04}")).collect()
}

/// Files of session `i` when `files` are dealt round-robin over `sessions`.
fn files_in(i: usize, files: usize, sessions: usize) -> usize {
    files / sessions + usize::from(i < files % sessions)
}

fn measure(size: Size, kind: Kind) -> Result<Measured> {
    let mut d = Daemon::start(&[])?;
    let names = names(size.sessions);
    let mut sessions = d.sessions(&names)?;
    crate::progress(&format!(
        "handover: preserving {} {}s in {} sessions",
        size.files,
        kind.name(),
        size.sessions
    ));
    for j in 0..size.files {
        let fd = kind.create()?;
        let token = (j / size.sessions) as u64;
        sessions[j % size.sessions]
            .preserve(&fd, token)
            .context(|| format!("Cannot preserve file {j}"))?;
    }
    let mut m = Measured::default();
    for round in 0..size.rounds {
        let mut control = d.control()?;
        control.call(&ControlRequest::Prepare)?;
        let t0 = Instant::now();
        control.send(&ControlRequest::Update { exec: None })?;
        let (first, restored) = first_restore(d.socket(), &names[0], 0, READY_TIMEOUT)?;
        let elapsed = t0.elapsed();
        drop(restored);
        let reply = control.recv()?;
        let report = match (reply.ok, reply.update) {
            (true, Some(report)) => report,
            _ => return Err(d.failed(&format!("update failed: {:?}", reply.error))),
        };
        d.wait_ready()?;
        if report.files != size.files || report.sessions != size.sessions {
            return Err(Error::Check(format!(
                "the update carried {} files in {} sessions, not {} in {}",
                report.files, report.sessions, size.files, size.sessions
            )));
        }
        m.client.push(millis(elapsed));
        m.daemon.push(report.blackout_us as f64 / 1000.0);
        crate::progress(&format!(
            "handover: {} fds, round {}: {:.1} ms (daemon: {:.1} ms)",
            size.files,
            round + 1,
            millis(elapsed),
            report.blackout_us as f64 / 1000.0
        ));
        // The old epoch's handles are stale now.
        drop(std::mem::take(&mut sessions));
        if round + 1 < size.rounds {
            sessions = take_everything_back(&d, &names, first, size)?;
            control.call(&ControlRequest::Finish)?;
        }
    }
    Ok(m)
}

/// What every service does after the update: retrieve its session, restore its
/// files, FINISH. `first` is session 0, retrieved with token 0 restored.
fn take_everything_back(
    d: &Daemon,
    names: &[String],
    first: luo::Session,
    size: Size,
) -> Result<Vec<luo::Session>> {
    let started = Instant::now();
    let mut sessions = vec![first];
    {
        let dev = d.device()?;
        for n in &names[1..] {
            sessions.push(
                dev.retrieve_session(n)
                    .context(|| format!("Cannot retrieve {n}"))?,
            );
        }
    }
    for (i, s) in sessions.iter().enumerate() {
        let skip = usize::from(i == 0);
        for token in skip..files_in(i, size.files, size.sessions) {
            s.restore(token as u64)
                .context(|| format!("Cannot restore {}/{token}", names[i]))?;
        }
        s.set_event(luo::Event::Finish)
            .context(|| format!("Cannot finish {}", names[i]))?;
    }
    if started.elapsed() > Duration::from_secs(1) {
        crate::progress(&format!(
            "handover: restored {} fds in {:.1} s",
            size.files,
            started.elapsed().as_secs_f64()
        ));
    }
    Ok(sessions)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_robin_accounts_for_every_file() {
        for (files, sessions) in [(1, 1), (64, 8), (1_000, 1_000), (10_001, 1_000)] {
            let total: usize = (0..sessions).map(|i| files_in(i, files, sessions)).sum();
            assert_eq!(total, files);
        }
        assert_eq!(files_in(0, 10_001, 1_000), 11);
        assert_eq!(files_in(1, 10_001, 1_000), 10);
    }
}
