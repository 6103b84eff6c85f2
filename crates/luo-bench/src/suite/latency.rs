//! `latency`: how long one request takes, against the least any userspace
//! design could take.
//!
//! Workload: one session, one eventfd. Four operations are timed one call at a
//! time, in interleaved blocks so that drift and noise hit them alike:
//!
//! | metric | one sample | baseline |
//! |---|---|---|
//! | `raw_fd` | a 32-byte frame with the eventfd as SCM_RIGHTS to a blocking echo peer, and its echo | — |
//! | `raw_pair` | `raw_fd`, then the same frame without an fd | — |
//! | `get_state` | session GET_STATE through `luo` | `raw_fd` |
//! | `preserve_unpreserve` | PRESERVE_FD of the eventfd, then UNPRESERVE_FD | `raw_pair` (the same two messages) |
//!
//! GET_STATE carries no fd, yet is held to the round trip that carries one, as
//! the issue sets it. Target: each at most 1.5× its baseline (median).
//!
//! Everything runs twice, pinned ([`Pinning`]): client, peer and daemon on one
//! CPU, then the client on one and the peer and daemon on another. Left to the
//! scheduler, the peer and the daemon may land differently, and a cross-CPU
//! round trip costs about twice a same-CPU one here, which would decide the
//! ratio by itself.

use std::os::fd::{AsFd, OwnedFd};
use std::time::Instant;

use luo_wire::control::ControlRequest;

use super::{Pinning, eventfd, micros};
use crate::Output;
use crate::daemon::Daemon;
use crate::echo::{EchoClient, EchoPeer};
use crate::error::{Context, Result};
use crate::record::{Record, Summary};

const SUITE: &str = "latency";
const TOKEN: u64 = 0x1A7;
/// The target: at most this many times the raw round trip.
const MAX_RATIO: f64 = 1.5;

/// Run the suite.
///
/// # Errors
/// A failed request, or a daemon or peer that would not start.
pub fn run(quick: bool, out: &mut Output<'_>) -> Result<()> {
    let (blocks, per_block, warmup) = if quick { (2, 50, 20) } else { (10, 1000, 2000) };
    let peer = EchoPeer::start(true)?;
    let mut raw = peer.connect()?;
    let d = Daemon::start(&[])?;
    let session = d
        .device()?
        .create_session("bench-latency")
        .context(|| "Cannot create the session".to_owned())?;
    let efd = eventfd()?;
    let pinning = Pinning::new()?;
    for placement in pinning.placements() {
        // Where pinning is not allowed, one run where the scheduler puts things.
        let placed = match pinning.apply(placement, &[peer.pid(), d.pid()]) {
            Ok(()) => placement.name().to_owned(),
            Err(e) => {
                crate::progress(&format!("latency: cannot pin ({}); unpinned", e.one_line()));
                "unpinned".to_owned()
            }
        };
        let s = measure(&mut raw, &session, &efd, blocks, per_block, warmup)?;
        let with = |r: Record| {
            r.param("iterations", blocks * per_block)
                .param("fd", "eventfd")
                .param("peer", "blocking child process")
                .param("placement", placed.as_str())
        };
        out.record(&with(Record::new(SUITE, "raw_fd", "us", s.raw_fd)))?;
        out.record(&with(Record::new(SUITE, "raw_pair", "us", s.raw_pair)))?;
        out.record(
            &with(Record::new(SUITE, "get_state", "us", s.get_state))
                .baseline(s.raw_fd.median, "raw_fd: raw SCM_RIGHTS round trip")
                .at_most(
                    "ratio",
                    MAX_RATIO,
                    "GET_STATE ≤ 1.5× the raw SCM_RIGHTS round trip",
                ),
        )?;
        out.record(
            &with(Record::new(SUITE, "preserve_unpreserve", "us", s.pair))
                .baseline(
                    s.raw_pair.median,
                    "raw_pair: raw round trip with an fd, then one without",
                )
                .at_most(
                    "ratio",
                    MAX_RATIO,
                    "PRESERVE_FD+UNPRESERVE_FD ≤ 1.5× the same two raw round trips",
                ),
        )?;
        if placed == "unpinned" {
            break;
        }
    }
    drop(pinning);
    // The daemon must be where it started: nothing preserved.
    let status = d.call(&ControlRequest::Status)?.status;
    if status.as_ref().map(|s| s.preserved_files) != Some(0) {
        return Err(crate::Error::Check(format!(
            "files left preserved: {status:?}"
        )));
    }
    Ok(())
}

/// The four figures of one placement.
struct Summaries {
    raw_fd: Summary,
    raw_pair: Summary,
    get_state: Summary,
    pair: Summary,
}

fn measure(
    raw: &mut EchoClient,
    session: &luo::Session,
    efd: &OwnedFd,
    blocks: usize,
    per_block: usize,
    warmup: usize,
) -> Result<Summaries> {
    let fd = Some(efd.as_fd());
    let mut raw_fd = Vec::with_capacity(blocks * per_block);
    let mut raw_pair = Vec::with_capacity(blocks * per_block);
    let mut get_state = Vec::with_capacity(blocks * per_block);
    let mut pair = Vec::with_capacity(blocks * per_block);
    for block in 0..=blocks {
        // Block 0 warms every path up and is not kept.
        let (n, keep) = if block == 0 {
            (warmup, false)
        } else {
            (per_block, true)
        };
        time(n, keep, &mut raw_fd, || raw.round_trip(fd))?;
        time(n, keep, &mut raw_pair, || {
            raw.round_trip(fd)?;
            raw.round_trip(None)
        })?;
        time(n, keep, &mut get_state, || {
            session.state().map(drop).context(|| "GET_STATE".to_owned())
        })?;
        time(n, keep, &mut pair, || {
            session
                .preserve(efd, TOKEN)
                .context(|| "PRESERVE_FD".to_owned())?;
            session
                .unpreserve(TOKEN)
                .context(|| "UNPRESERVE_FD".to_owned())
        })?;
    }
    Ok(Summaries {
        raw_fd: Summary::of(&raw_fd),
        raw_pair: Summary::of(&raw_pair),
        get_state: Summary::of(&get_state),
        pair: Summary::of(&pair),
    })
}

/// Run `op` `n` times, one call at a time, and push each call's time (us) to
/// `samples` when `keep`.
fn time(
    n: usize,
    keep: bool,
    samples: &mut Vec<f64>,
    mut op: impl FnMut() -> Result<()>,
) -> Result<()> {
    for _ in 0..n {
        let t = Instant::now();
        op()?;
        let e = micros(t.elapsed());
        if keep {
            samples.push(e);
        }
    }
    Ok(())
}
