//! `zero_copy`: a service restart that keeps its memory, through luo and without.
//!
//! The service's state is a memfd of 1 GiB or 4 GiB (`--quick`: 1 MiB, 4 MiB),
//! every 4 KiB page populated (its first 8 bytes name the page, the rest is a
//! fill byte). Populating is not timed: the state exists before the restart.
//!
//! - **luo** (timed from the first step to the last): PRESERVE_FD of the memfd,
//!   global PREPARE, the live update (its reply comes from the next epoch),
//!   RETRIEVE_SESSION, RESTORE_FD, then [`SAMPLE`] pages read back and checked.
//!   Afterwards (not timed) FINISH and UNPRESERVE_FD, ready for the next round.
//!   Rounds alternate with the same restart of a 4 KiB state, so the two sizes
//!   meet the same noise.
//! - **copy**, what a service does without luo: save the state to a file on
//!   tmpfs (`/dev/shm`, `sendfile`: one copy), free it, create a new memfd and
//!   load the file into it (`sendfile`: one copy), check the same sample. Only
//!   saving and loading (with the check) are timed; freeing the old state and
//!   deleting the file are not, which favours the copy. At most two copies of
//!   the state exist at once (8 GiB at 4 GiB).
//!
//! | metric | median | baseline | ratio |
//! |---|---|---|---|
//! | `restart` (per size) | luo restart | copy restart | copy/luo |
//! | `size_independence` | luo restart at the largest size | luo restart at 4 KiB, interleaved | largest/4 KiB |
//!
//! Targets: copy/luo ≥ 100 at 4 GiB; luo(4 GiB)/luo(4 KiB) ≤ 1.2.

use std::fs::File;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::Instant;

use luo_wire::control::ControlRequest;
use serde_json::json;

use super::{human_size, millis};
use crate::Output;
use crate::daemon::Daemon;
use crate::error::{Context, Error, Result};
use crate::record::{Record, Summary, round};

const SUITE: &str = "zero_copy";
const PAGE: u64 = 4096;
/// Pages read back and checked after each restart, whatever the size.
pub const SAMPLE: u64 = 256;
const SESSION: &str = "zero-copy-service";
const TOKEN: u64 = 0x5EED;
const FILL: u8 = 0xA5;
/// A populated chunk written at once.
const CHUNK: u64 = 1 << 20;
/// The targets.
const MIN_SPEEDUP: f64 = 100.0;
const MAX_SIZE_RATIO: f64 = 1.2;

/// A service's state: a populated memfd.
#[derive(Debug)]
struct State {
    fd: OwnedFd,
    size: u64,
    salt: u64,
}

impl State {
    /// A memfd of `size` bytes, every page written.
    fn populate(size: u64, salt: u64) -> Result<State> {
        let fd = rustix::fs::memfd_create("luo-bench-state", rustix::fs::MemfdFlags::CLOEXEC)
            .context(|| "Cannot create the state memfd".to_owned())?;
        rustix::fs::ftruncate(&fd, size)
            .context(|| format!("Cannot size the state to {}", human_size(size)))?;
        let mut chunk = vec![FILL; CHUNK.min(size) as usize];
        let mut off = 0;
        while off < size {
            let len = (size - off).min(chunk.len() as u64) as usize;
            for (i, page) in chunk[..len].chunks_mut(PAGE as usize).enumerate() {
                let index = off / PAGE + i as u64;
                page[..8].copy_from_slice(&(index ^ salt).to_le_bytes());
            }
            write_all_at(fd.as_fd(), &chunk[..len], off)?;
            off += len as u64;
        }
        Ok(State { fd, size, salt })
    }

    /// Read [`SAMPLE`] pages of `fd` spread over the state and check them.
    fn verify(&self, fd: BorrowedFd<'_>, round: u64) -> Result<()> {
        let pages = self.size.div_ceil(PAGE);
        let mut page = [0u8; PAGE as usize];
        for k in 0..SAMPLE {
            let index = (k * pages / SAMPLE + round * 7919) % pages;
            let n = rustix::io::pread(fd, &mut page, index * PAGE)
                .context(|| format!("Cannot read page {index}"))?;
            let header = page.get(..8).map(|b| {
                let mut w = [0u8; 8];
                w.copy_from_slice(b);
                u64::from_le_bytes(w)
            });
            if n != PAGE as usize || header != Some(index ^ self.salt) || page[n - 1] != FILL {
                return Err(Error::Check(format!(
                    "page {index} of the {} state came back wrong",
                    human_size(self.size)
                )));
            }
        }
        Ok(())
    }
}

fn write_all_at(fd: BorrowedFd<'_>, mut bytes: &[u8], mut off: u64) -> Result<()> {
    while !bytes.is_empty() {
        let n = rustix::io::pwrite(fd, bytes, off)
            .context(|| "Cannot populate the state".to_owned())?;
        bytes = &bytes[n..];
        off += n as u64;
    }
    Ok(())
}

/// The first `count` bytes of `from` appended to `to` (a new file), in the kernel.
fn send_all(to: BorrowedFd<'_>, from: BorrowedFd<'_>, count: u64) -> Result<()> {
    let mut left = count;
    // An explicit offset: `from`'s own may be anywhere.
    let mut offset = 0u64;
    while left > 0 {
        let n = rustix::fs::sendfile(to, from, Some(&mut offset), left.min(1 << 30) as usize)
            .context(|| "sendfile".to_owned())?;
        if n == 0 {
            return Err(Error::Check(format!("sendfile stopped {left} bytes short")));
        }
        left -= n as u64;
    }
    Ok(())
}

/// Where the luo restart's time goes, in ms.
#[derive(Debug, Default)]
struct Phases {
    total: Vec<f64>,
    preserve: Vec<f64>,
    prepare: Vec<f64>,
    update: Vec<f64>,
    restore: Vec<f64>,
    verify: Vec<f64>,
}

impl Phases {
    fn medians(&self) -> serde_json::Value {
        let m = |v: &[f64]| round(Summary::of(v).median);
        json!({
            "preserve": m(&self.preserve),
            "prepare": m(&self.prepare),
            "update": m(&self.update),
            "retrieve_restore": m(&self.restore),
            "verify": m(&self.verify),
        })
    }
}

/// The copy path's times, in ms.
#[derive(Debug, Default)]
struct Copies {
    total: Vec<f64>,
    save: Vec<f64>,
    load: Vec<f64>,
}

/// The service, its daemon and its session.
struct Service {
    daemon: Daemon,
    session: luo::Session,
    rounds: u64,
}

impl Service {
    /// One restart through luo, keeping `state`.
    fn restart(&mut self, state: &State, phases: &mut Phases) -> Result<()> {
        let t0 = Instant::now();
        self.session
            .preserve(&state.fd, TOKEN)
            .context(|| "Cannot preserve the state".to_owned())?;
        let t1 = Instant::now();
        let mut control = self.daemon.control()?;
        control.call(&ControlRequest::Prepare)?;
        let t2 = Instant::now();
        let reply = control.call(&ControlRequest::Update { exec: None })?;
        let t3 = Instant::now();
        let session = luo::retrieve_session_at(self.daemon.socket(), SESSION)
            .context(|| "Cannot retrieve the session".to_owned())?;
        let fd = session
            .restore(TOKEN)
            .context(|| "Cannot restore the state".to_owned())?;
        let t4 = Instant::now();
        state.verify(fd.as_fd(), self.rounds)?;
        let t5 = Instant::now();
        self.rounds += 1;
        if reply.update.as_ref().map(|u| u.files) != Some(1) {
            return Err(Error::Check(format!(
                "the update carried {:?}",
                reply.update
            )));
        }
        phases.preserve.push(millis(t1 - t0));
        phases.prepare.push(millis(t2 - t1));
        phases.update.push(millis(t3 - t2));
        phases.restore.push(millis(t4 - t3));
        phases.verify.push(millis(t5 - t4));
        phases.total.push(millis(t5 - t0));
        // Back to where the round started: NORMAL, nothing preserved.
        self.daemon.wait_ready()?;
        session
            .set_event(luo::Event::Finish)
            .context(|| "Cannot finish the session".to_owned())?;
        control.call(&ControlRequest::Finish)?;
        session
            .unpreserve(TOKEN)
            .context(|| "Cannot unpreserve the state".to_owned())?;
        self.session = session;
        Ok(())
    }
}

/// One restart without luo: save `state` to `dir`, free it, load it back.
fn restart_by_copy(state: State, dir: &Path, copies: &mut Copies, round: u64) -> Result<State> {
    let path: PathBuf = dir.join(format!("luo-bench-{}-state", std::process::id()));
    let State { fd, size, salt } = state;
    let t0 = Instant::now();
    let file = File::create(&path).context(|| format!("Cannot create {}", path.display()))?;
    send_all(file.as_fd(), fd.as_fd(), size)?;
    let save = t0.elapsed();
    // The old instance exits: its memory is freed (not timed).
    drop(fd);
    drop(file);
    let t1 = Instant::now();
    let file = File::open(&path).context(|| format!("Cannot open {}", path.display()))?;
    let new = rustix::fs::memfd_create("luo-bench-state", rustix::fs::MemfdFlags::CLOEXEC)
        .context(|| "Cannot create the new state memfd".to_owned())?;
    send_all(new.as_fd(), file.as_fd(), size)?;
    let state = State {
        fd: new,
        size,
        salt,
    };
    state.verify(state.fd.as_fd(), round)?;
    let load = t1.elapsed();
    drop(file);
    std::fs::remove_file(&path).context(|| format!("Cannot remove {}", path.display()))?;
    copies.save.push(millis(save));
    copies.load.push(millis(load));
    copies.total.push(millis(save + load));
    Ok(state)
}

/// Where the copy path saves: `/dev/shm` when there is one.
fn tmpfs_dir() -> PathBuf {
    let shm = PathBuf::from("/dev/shm");
    if shm.is_dir() {
        shm
    } else {
        std::env::temp_dir()
    }
}

/// Run the suite.
///
/// # Errors
/// A failed request or update, a state that comes back wrong, or no room.
pub fn run(quick: bool, out: &mut Output<'_>) -> Result<()> {
    let small_size = PAGE;
    let (sizes, luo_rounds, copy_rounds): (&[u64], usize, usize) = if quick {
        (&[1 << 20, 4 << 20], 2, 1)
    } else {
        (&[1 << 30, 4 << 30], 41, 3)
    };
    let largest = sizes.iter().copied().max().unwrap_or(PAGE);
    let dir = tmpfs_dir();
    let daemon = Daemon::start(&[])?;
    let session = luo::create_session_at(daemon.socket(), SESSION)
        .context(|| "Cannot create the session".to_owned())?;
    let mut service = Service {
        daemon,
        session,
        rounds: 0,
    };
    let with = |r: Record, size: u64| {
        r.param("size_bytes", size)
            .param("size", human_size(size))
            .param("sample_pages", SAMPLE)
            .param("copy_via", dir.display().to_string())
    };
    let small = State::populate(small_size, 0x51)?;
    let mut small_phases = Phases::default();
    // The 4 KiB restarts interleaved with those of the largest size.
    let mut small_in_largest = Vec::new();
    for (i, &size) in sizes.iter().enumerate() {
        crate::progress(&format!("zero_copy: populating {}", human_size(size)));
        let big = State::populate(size, 0xB16 + i as u64)?;
        let mut phases = Phases::default();
        for _ in 0..luo_rounds {
            service.restart(&big, &mut phases)?;
            service.restart(&small, &mut small_phases)?;
            if size == largest {
                small_in_largest.extend(small_phases.total.last());
            }
        }
        crate::progress(&format!(
            "zero_copy: {} through luo: {:.2} ms; copying",
            human_size(size),
            Summary::of(&phases.total).median
        ));
        let mut copies = Copies::default();
        let mut state = big;
        for r in 0..copy_rounds {
            state = restart_by_copy(state, &dir, &mut copies, r as u64)?;
        }
        drop(state);
        let luo = Summary::of(&phases.total);
        let mut record = with(Record::new(SUITE, "restart", "ms", luo), size)
            .param("luo_phases_ms", phases.medians())
            .param("copy_save_ms", round(Summary::of(&copies.save).median))
            .param("copy_load_ms", round(Summary::of(&copies.load).median))
            .param("copy_rounds", copy_rounds)
            .param("luo_rounds", luo_rounds)
            .baseline_speedup(
                Summary::of(&copies.total).median,
                "copy: save to tmpfs, load back",
            );
        if size == largest {
            record = record.at_least(
                "ratio",
                MIN_SPEEDUP,
                "zero-copy ≥ 100× faster than the copy at 4 GiB",
            );
        }
        out.record(&record)?;
        if size == largest {
            out.record(
                &with(Record::new(SUITE, "size_independence", "ms", luo), size)
                    .param("luo_rounds", luo_rounds)
                    .baseline(
                        Summary::of(&small_in_largest).median,
                        "the same luo restart of 4 KiB, interleaved",
                    )
                    .at_most(
                        "ratio",
                        MAX_SIZE_RATIO,
                        "luo(4 GiB) within 1.2× of luo(4 KiB)",
                    ),
            )?;
        }
    }
    // 4 KiB: every luo round of it, and its copy.
    let mut copies = Copies::default();
    let mut state = small;
    for r in 0..luo_rounds {
        state = restart_by_copy(state, &dir, &mut copies, r as u64)?;
    }
    out.record(
        &with(
            Record::new(SUITE, "restart", "ms", Summary::of(&small_phases.total)),
            small_size,
        )
        .param("luo_phases_ms", small_phases.medians())
        .param("copy_rounds", luo_rounds)
        .param("luo_rounds", small_phases.total.len())
        .param("copy_save_ms", round(Summary::of(&copies.save).median))
        .param("copy_load_ms", round(Summary::of(&copies.load).median))
        .baseline_speedup(
            Summary::of(&copies.total).median,
            "copy: save to tmpfs, load back",
        ),
    )?;
    Ok(())
}
