//! The five suites, and the few things they share: the files they preserve,
//! the live update as a client sees it, and units.
//!
//! Each suite is a fixed workload (`--quick`: a tiny one) against daemons it
//! starts itself, and prints its results as it gets them.

pub mod handover;
pub mod latency;
pub mod memory;
pub mod throughput;
pub mod zero_copy;

use std::os::fd::OwnedFd;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::Output;
use crate::error::{Context, Result};

/// One suite.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Suite {
    /// [`latency`].
    Latency,
    /// [`handover`].
    Handover,
    /// [`zero_copy`].
    ZeroCopy,
    /// [`memory`].
    Memory,
    /// [`throughput`].
    Throughput,
}

impl Suite {
    /// Every suite, in the order `all` runs them.
    pub const ALL: [Suite; 5] = [
        Suite::Latency,
        Suite::Throughput,
        Suite::Memory,
        Suite::Handover,
        Suite::ZeroCopy,
    ];

    /// The name in result lines.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Suite::Latency => "latency",
            Suite::Handover => "handover",
            Suite::ZeroCopy => "zero_copy",
            Suite::Memory => "memory",
            Suite::Throughput => "throughput",
        }
    }

    /// Run the suite, printing its results to `out`.
    ///
    /// # Errors
    /// The suite's first failure.
    pub fn run(self, quick: bool, out: &mut Output<'_>) -> Result<()> {
        let started = Instant::now();
        crate::progress(&format!(
            "{}{}",
            self.name(),
            if quick { " (quick)" } else { "" }
        ));
        match self {
            Suite::Latency => latency::run(quick, out),
            Suite::Handover => handover::run(quick, out),
            Suite::ZeroCopy => zero_copy::run(quick, out),
            Suite::Memory => memory::run(quick, out),
            Suite::Throughput => throughput::run(quick, out),
        }?;
        crate::progress(&format!(
            "{} done in {:.1} s",
            self.name(),
            started.elapsed().as_secs_f64()
        ));
        Ok(())
    }
}

/// How many fds this process (and the daemon, which inherits the limit) may
/// have open: RLIMIT_NOFILE after [`luod::server::raise_nofile`]. Without
/// CAP_SYS_RESOURCE that is the hard limit the process was started with.
#[must_use]
pub fn fd_limit() -> usize {
    let lim = rustix::process::getrlimit(rustix::process::Resource::Nofile);
    lim.current
        .map_or(usize::MAX, |n| usize::try_from(n).unwrap_or(usize::MAX))
}

/// The most files luod, in its default configuration, lets this machine
/// preserve under an fd limit of `limit` ([`luod::server::files_total`]),
/// rounded down to hundreds.
#[must_use]
pub fn carry_limit(limit: usize) -> usize {
    luod::server::files_total(limit, luod::config::DEFAULT_MAX_CONNECTIONS) / 100 * 100
}

/// A fresh eventfd, close-on-exec.
///
/// # Errors
/// [`crate::Error::Os`], e.g. EMFILE.
pub fn eventfd() -> Result<OwnedFd> {
    rustix::event::eventfd(0, rustix::event::EventfdFlags::CLOEXEC)
        .context(|| "Cannot create an eventfd".to_owned())
}

/// A fresh empty memfd, close-on-exec.
///
/// # Errors
/// [`crate::Error::Os`], e.g. EMFILE.
pub fn memfd(name: &str) -> Result<OwnedFd> {
    rustix::fs::memfd_create(name, rustix::fs::MemfdFlags::CLOEXEC)
        .context(|| "Cannot create a memfd".to_owned())
}

/// The kind of file a suite preserves in bulk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Empty memfds (`memfd-v1`).
    Memfd,
    /// Eventfds (`eventfd-v1`).
    Eventfd,
}

impl Kind {
    /// The name in result lines.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Kind::Memfd => "memfd",
            Kind::Eventfd => "eventfd",
        }
    }

    /// A new file of this kind.
    ///
    /// # Errors
    /// As [`memfd`] and [`eventfd`].
    pub fn create(self) -> Result<OwnedFd> {
        match self {
            Kind::Memfd => memfd("luo-bench"),
            Kind::Eventfd => eventfd(),
        }
    }
}

/// Where a client and the process serving it run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    /// Both on one CPU: a request is two context switches, no cross-CPU wakeup.
    SameCpu,
    /// Each on its own CPU: every request and reply wakes the other CPU, which
    /// in a VM is an inter-processor interrupt through the hypervisor.
    OtherCpus,
}

impl Placement {
    /// The name in result lines.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Placement::SameCpu => "same CPU",
            Placement::OtherCpus => "different CPUs",
        }
    }
}

/// Pins this thread and server processes to CPUs for a [`Placement`], and
/// gives this thread its original affinity back when dropped. The scheduler's
/// own choice varies from run to run, and the cost of a round trip with it
/// (a cross-CPU wakeup costs twice a same-CPU one in a VM), so a comparison of
/// two transports is only fair with both pinned alike.
#[derive(Debug)]
pub struct Pinning {
    original: rustix::thread::CpuSet,
    cpus: Vec<usize>,
}

impl Pinning {
    /// The CPUs this thread may use now.
    ///
    /// # Errors
    /// [`crate::Error::Os`] if the affinity cannot be read.
    pub fn new() -> Result<Pinning> {
        let original = rustix::thread::sched_getaffinity(None)
            .context(|| "Cannot read the CPU affinity".to_owned())?;
        let cpus = (0..rustix::thread::CpuSet::MAX_CPU)
            .filter(|&c| original.is_set(c))
            .take(2)
            .collect();
        Ok(Pinning { original, cpus })
    }

    /// The placements this machine allows: [`Placement::OtherCpus`] needs two CPUs.
    #[must_use]
    pub fn placements(&self) -> Vec<Placement> {
        if self.cpus.len() >= 2 {
            vec![Placement::SameCpu, Placement::OtherCpus]
        } else {
            vec![Placement::SameCpu]
        }
    }

    /// Pin this thread to the first CPU and each of `servers` (pids) to the
    /// first or the second, as `placement` says.
    ///
    /// # Errors
    /// [`crate::Error::Os`] if an affinity cannot be set.
    pub fn apply(&self, placement: Placement, servers: &[u32]) -> Result<()> {
        let (Some(&client), Some(&server)) = (
            self.cpus.first(),
            match placement {
                Placement::SameCpu => self.cpus.first(),
                Placement::OtherCpus => self.cpus.get(1),
            },
        ) else {
            return Ok(());
        };
        let one = |cpu: usize| {
            let mut set = rustix::thread::CpuSet::new();
            set.set(cpu);
            set
        };
        rustix::thread::sched_setaffinity(None, &one(client))
            .context(|| format!("Cannot pin this thread to CPU {client}"))?;
        for &pid in servers {
            let p = rustix::process::Pid::from_raw(pid as i32);
            rustix::thread::sched_setaffinity(p, &one(server))
                .context(|| format!("Cannot pin pid {pid} to CPU {server}"))?;
        }
        Ok(())
    }
}

impl Drop for Pinning {
    fn drop(&mut self) {
        let _ = rustix::thread::sched_setaffinity(None, &self.original);
    }
}

/// Retrieve the session `name` and restore `token` as soon as the next epoch
/// serves, retrying while the old one is going away (stale handles), the device
/// is still held, or the state is not UPDATED yet (EAGAIN). Returns the session
/// and the restored fd.
///
/// # Errors
/// Any other refusal, or still none of those after `timeout`.
pub fn first_restore(
    socket: &Path,
    name: &str,
    token: u64,
    timeout: Duration,
) -> Result<(luo::Session, OwnedFd)> {
    let deadline = Instant::now() + timeout;
    loop {
        let attempt = luo::Device::open_at(socket)
            .and_then(|dev| dev.retrieve_session(name))
            .and_then(|s| s.restore(token).map(|fd| (s, fd)));
        match attempt {
            Ok(done) => return Ok(done),
            Err(e)
                if (e.is_stale() || e.is_busy() || e.errno() == luo::Errno::AGAIN)
                    && Instant::now() < deadline =>
            {
                std::thread::yield_now();
            }
            Err(e) => {
                return Err(e)
                    .context(|| format!("Cannot restore {name}/{token:#x} after the update"));
            }
        }
    }
}

/// A duration in microseconds.
#[must_use]
pub fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// A duration in milliseconds.
#[must_use]
pub fn millis(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// `bytes` as "4 KiB", "1 GiB".
#[must_use]
pub fn human_size(bytes: u64) -> String {
    const UNITS: [(&str, u64); 3] = [("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)];
    UNITS
        .iter()
        .find(|(_, scale)| bytes >= *scale && bytes % scale == 0)
        .map_or_else(
            || format!("{bytes} B"),
            |(unit, scale)| format!("{} {unit}", bytes / scale),
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_20000_fd_limit_carries_15400_files() {
        assert_eq!(carry_limit(20_000), 15_400);
        assert_eq!(carry_limit(1 << 20), 1_044_000);
        assert_eq!(carry_limit(100), 0);
    }

    #[test]
    fn sizes_read_as_people_write_them() {
        assert_eq!(human_size(4096), "4 KiB");
        assert_eq!(human_size(4 << 30), "4 GiB");
        assert_eq!(human_size(1000), "1000 B");
    }
}
