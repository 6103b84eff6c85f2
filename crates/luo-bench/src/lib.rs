//! `luo-bench`: how fast, how far and how small `luod` is, measured against a
//! real daemon (issue 5).
//!
//! ```text
//! cargo run --release -p luo-bench -- <latency|handover|zero-copy|memory|throughput|all> [--quick]
//! cargo run --release -p luo-bench -- table results.jsonl > docs/benchmarks.md
//! ```
//!
//! Every suite starts its own `luod` ([`daemon`]) in a temporary directory,
//! runs a fixed workload through the `luo` client library, measures a baseline in
//! the same run, and prints one JSON line per result ([`record::Record`]) on
//! stdout, after a first line describing the machine ([`machine::Machine`]).
//! Progress goes to stderr. `table` turns the lines into the markdown of
//! `docs/benchmarks.md` ([`table`]).
//!
//! | suite | measures | baseline |
//! |---|---|---|
//! | [`suite::latency`] | GET_STATE; PRESERVE_FD + UNPRESERVE_FD of an eventfd | raw SCM_RIGHTS round trip ([`echo`]) |
//! | [`suite::handover`] | update request → first RESTORE_FD, 1k/10k/100k fds in 1k sessions | the same with one fd |
//! | [`suite::zero_copy`] | a service restart keeping 1 GiB / 4 GiB of memfd through luo | saving to and reloading from tmpfs |
//! | [`suite::memory`] | daemon RSS per preserved fd at 100k fds | an idle daemon |
//! | [`suite::throughput`] | PRESERVE_FD/UNPRESERVE_FD pairs from 1, 8, 64 clients | the same pairs against a raw epoll echo peer |
//!
//! `--quick` runs tiny sizes and few iterations: a smoke test that every suite
//! still works, not a measurement.
//!
//! # Unhappy paths
//! Any failure stops the run with one line on stderr and exit status 1; lines
//! already printed stay valid. Without root some sizes cannot run: 100k fds need
//! RLIMIT_NOFILE above the usual hard limit, and 100k fds in flight at an update
//! need a socket buffer beyond `net.core.wmem_max`.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod daemon;
pub mod echo;
pub mod error;
pub mod machine;
pub mod record;
pub mod suite;
pub mod table;

use std::io::Write;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

pub use error::{Error, Result};

/// The first argument that makes this binary luod ([`daemon::run_embedded`]).
pub const DAEMON_ROLE: &str = "daemon";
/// The first argument that makes this binary the raw echo peer
/// ([`echo::run_peer`]).
pub const ECHO_PEER_ROLE: &str = "echo-peer";

/// `luo-bench`: benchmarks of luod, one JSON line per result.
#[derive(Debug, Parser)]
#[command(
    name = "luo-bench",
    version,
    about,
    after_help = "Each suite prints a machine line, then one JSON line per result, on stdout."
)]
pub struct Cli {
    /// What to run.
    #[command(subcommand)]
    pub command: Command,
}

/// A suite, every suite, or the table.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Round trip of GET_STATE and of PRESERVE_FD+UNPRESERVE_FD, against a raw SCM_RIGHTS round trip.
    Latency(SuiteArgs),
    /// Live-update blackout with 1k, 10k and 100k preserved fds in 1k sessions.
    Handover(SuiteArgs),
    /// A service restart keeping 1 GiB and 4 GiB of memfd through luo, against a copy through tmpfs.
    ZeroCopy(SuiteArgs),
    /// Daemon memory per preserved fd at 100k fds.
    Memory(SuiteArgs),
    /// PRESERVE_FD/UNPRESERVE_FD pairs per second from 1, 8 and 64 clients.
    Throughput(SuiteArgs),
    /// Every suite, one after the other.
    All(SuiteArgs),
    /// Only the machine line.
    Machine,
    /// Render result lines (files, or stdin) as the markdown of docs/benchmarks.md.
    Table {
        /// JSON-lines files; standard input when none.
        files: Vec<PathBuf>,
    },
}

/// Options every suite takes.
#[derive(Debug, Clone, Copy, Args)]
pub struct SuiteArgs {
    /// Tiny sizes and few iterations: a smoke test for CI, not a measurement.
    #[arg(long)]
    pub quick: bool,
}

/// Where results go: each line is written and flushed as soon as it exists, so a
/// long run shows progress and a failure keeps what was measured.
pub struct Output<'a> {
    out: &'a mut dyn Write,
}

impl Output<'_> {
    /// Print one line.
    ///
    /// # Errors
    /// [`Error::Io`] if stdout is gone.
    pub fn line(&mut self, line: &str) -> Result<()> {
        use error::Context as _;
        writeln!(self.out, "{line}")
            .and_then(|()| self.out.flush())
            .context(|| "Cannot write a result".to_owned())
    }

    /// Print a result.
    ///
    /// # Errors
    /// As [`Output::line`].
    pub fn record(&mut self, r: &record::Record) -> Result<()> {
        self.line(&r.to_line())
    }
}

/// A progress note on stderr.
pub fn progress(msg: &str) {
    eprintln!("luo-bench: {msg}");
}

/// Run what `cli` asks, printing to `out`.
///
/// # Errors
/// The first failure of a suite ([`Error`]).
pub fn run(cli: &Cli, out: &mut dyn Write) -> Result<()> {
    let mut out = Output { out };
    let (suites, args): (&[suite::Suite], SuiteArgs) = match &cli.command {
        Command::Table { files } => return table::render_files(files, out.out),
        Command::Machine => {
            let m = machine::Machine::describe(command_line(), false);
            return out.line(&m.to_line());
        }
        Command::Latency(a) => (&[suite::Suite::Latency], *a),
        Command::Handover(a) => (&[suite::Suite::Handover], *a),
        Command::ZeroCopy(a) => (&[suite::Suite::ZeroCopy], *a),
        Command::Memory(a) => (&[suite::Suite::Memory], *a),
        Command::Throughput(a) => (&[suite::Suite::Throughput], *a),
        Command::All(a) => (&suite::Suite::ALL, *a),
    };
    let m = machine::Machine::describe(command_line(), args.quick);
    out.line(&m.to_line())?;
    // As luod raises its own: the handover suite holds 1k session handles,
    // and the memory suite's peak is higher still.
    let _ = luod::server::raise_nofile();
    for s in suites {
        s.run(args.quick, &mut out)?;
    }
    Ok(())
}

/// The command line as typed, program name shortened to `luo-bench`.
fn command_line() -> String {
    std::iter::once("luo-bench".to_owned())
        .chain(std::env::args().skip(1))
        .collect::<Vec<_>>()
        .join(" ")
}
