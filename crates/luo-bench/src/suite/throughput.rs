//! `throughput`: how many requests one daemon serves per second.
//!
//! Workload: 1, 8 and 64 client threads, each with its own session and its own
//! eventfd, doing PRESERVE_FD + UNPRESERVE_FD pairs back to back; 40 000 pairs
//! in all per round (`--quick`: 400), split evenly. The clock runs from the
//! moment every thread is released to the moment the last one finishes.
//! **One pair counts as 2 ops** (two requests, two replies).
//!
//! Baseline, in the same rounds: the same threads doing the same two messages
//! (a 32-byte frame with the eventfd as SCM_RIGHTS, then one without) against
//! the raw echo peer in its epoll mode: one thread serving every connection as
//! luod does, with none of luod's work. Rounds alternate luo and raw.
//!
//! Target: at least 100 000 ops/s with 8 clients.

use std::os::fd::{AsFd, BorrowedFd};
use std::sync::Barrier;
use std::time::Instant;

use super::eventfd;
use crate::Output;
use crate::daemon::Daemon;
use crate::echo::{EchoClient, EchoPeer};
use crate::error::{Context, Error, Result};
use crate::record::{Record, Summary};

const SUITE: &str = "throughput";
const TOKEN: u64 = 0x7;
/// The target, ops/s with [`TARGET_CLIENTS`] clients.
const TARGET_OPS: f64 = 100_000.0;
const TARGET_CLIENTS: usize = 8;

/// Run the suite.
///
/// # Errors
/// A failed request, or a daemon or peer that would not start.
pub fn run(quick: bool, out: &mut Output<'_>) -> Result<()> {
    let (pairs_per_round, rounds) = if quick { (400, 1) } else { (40_000, 5) };
    let peer = EchoPeer::start(false)?;
    let d = Daemon::start(&[])?;
    for clients in [1, 8, 64] {
        let per_client = pairs_per_round / clients;
        let sessions = d.sessions((0..clients).map(|i| format!("t{clients}-{i}")))?;
        let mut raws = (0..clients)
            .map(|_| peer.connect())
            .collect::<Result<Vec<_>>>()?;
        // A short round first warms both paths up.
        luo_round(&sessions, per_client.min(200))?;
        raw_round(&mut raws, per_client.min(200))?;
        let (mut luo, mut raw) = (Vec::new(), Vec::new());
        for _ in 0..rounds {
            luo.push(luo_round(&sessions, per_client)?);
            raw.push(raw_round(&mut raws, per_client)?);
        }
        crate::progress(&format!(
            "throughput: {clients} clients: {:.0} ops/s (raw {:.0})",
            Summary::of(&luo).median,
            Summary::of(&raw).median
        ));
        let mut record = Record::new(SUITE, "preserve_unpreserve", "ops/s", Summary::of(&luo))
            .param("clients", clients)
            .param("pairs_per_round", per_client * clients)
            .param("rounds", rounds)
            .param("ops_per_pair", 2)
            .param("clients_are", "threads of one process, a session each")
            .baseline(
                Summary::of(&raw).median,
                "the same pairs against a one-thread epoll echo peer",
            );
        if clients == TARGET_CLIENTS {
            record = record.at_least("median", TARGET_OPS, "≥ 100k ops/s with 8 clients");
        }
        out.record(&record)?;
    }
    Ok(())
}

/// One round through luo; ops/s.
fn luo_round(sessions: &[luo::Session], pairs: usize) -> Result<f64> {
    round(sessions.iter().collect(), pairs, |s, efd| {
        s.preserve(efd, TOKEN)
            .context(|| "PRESERVE_FD".to_owned())?;
        s.unpreserve(TOKEN).context(|| "UNPRESERVE_FD".to_owned())
    })
}

/// One round against the raw echo peer; ops/s.
fn raw_round(clients: &mut [EchoClient], pairs: usize) -> Result<f64> {
    round(clients.iter_mut().collect(), pairs, |c, efd| {
        c.round_trip(Some(efd))?;
        c.round_trip(None)
    })
}

/// One round: each client on a thread of its own, with an eventfd of its own,
/// does `pair` `pairs` times; the clock runs from their common release to the
/// last one's end. Ops/s, 2 per pair.
fn round<C: Send>(
    clients: Vec<C>,
    pairs: usize,
    pair: impl Fn(&mut C, BorrowedFd<'_>) -> Result<()> + Sync,
) -> Result<f64> {
    let n = clients.len();
    // Made here, so that no thread can fail before the barrier.
    let efds = (0..n).map(|_| eventfd()).collect::<Result<Vec<_>>>()?;
    let barrier = Barrier::new(n + 1);
    let (elapsed, results) = std::thread::scope(|scope| {
        let workers: Vec<_> = clients
            .into_iter()
            .zip(&efds)
            .map(|(mut client, efd)| {
                let (barrier, pair) = (&barrier, &pair);
                scope.spawn(move || -> Result<()> {
                    barrier.wait();
                    for _ in 0..pairs {
                        pair(&mut client, efd.as_fd())?;
                    }
                    Ok(())
                })
            })
            .collect();
        barrier.wait();
        let t0 = Instant::now();
        let results: Vec<Result<()>> = workers.into_iter().map(join).collect();
        (t0.elapsed(), results)
    });
    results.into_iter().collect::<Result<()>>()?;
    Ok((2 * pairs * n) as f64 / elapsed.as_secs_f64())
}

fn join(h: std::thread::ScopedJoinHandle<'_, Result<()>>) -> Result<()> {
    h.join()
        .unwrap_or_else(|_| Err(Error::Check("a client thread panicked".to_owned())))
}
