//! The daemon's entry point, shared by the `luod` binary and by programs that
//! embed the daemon (`luoctl daemon`).

use std::ffi::OsString;
use std::process::ExitCode;

use clap::Parser;

use crate::{Config, Daemon};

/// Structured logs on stderr, filtered by `RUST_LOG` ("debug",
/// "luod=debug,luo_core=info", ...; default "info"). The `Targets` filter reads
/// that syntax without the regex engine `EnvFilter` would compile in.
fn init_logging() {
    use tracing_subscriber::filter::{LevelFilter, Targets};
    use tracing_subscriber::prelude::*;
    let filter = std::env::var("RUST_LOG")
        .ok()
        .and_then(|spec| spec.parse::<Targets>().ok())
        .unwrap_or_else(|| Targets::new().with_default(LevelFilter::INFO));
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let _ = tracing_subscriber::registry()
        .with(fmt)
        .with(filter)
        .try_init();
}

/// Parse `args` (the first is the program name), set up logging, serve until
/// SIGTERM. `exec_prefix` are the arguments the running binary needs before the
/// daemon's own when it re-executes itself (empty for `luod`).
pub fn main(args: impl IntoIterator<Item = OsString>, exec_prefix: Vec<OsString>) -> ExitCode {
    let mut cfg = Config::parse_from(args);
    cfg.exec_prefix = exec_prefix;
    init_logging();
    if cfg.check_handover {
        return check_handover();
    }
    let served = Daemon::start(cfg)
        .map_err(|e| crate::control::chain(&e))
        .and_then(|mut daemon| daemon.run().map_err(|e| format!("Event loop failed: {e}")));
    match served {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("luod: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `luod --check-handover`: the dry run of a live update. Its standard output
/// is read by the daemon that started it; if nobody reads it any more, that is
/// a failed check, not a panic.
fn check_handover() -> ExitCode {
    use std::io::Write;
    let mut out = std::io::stdout();
    // Tells a daemon waiting for this child (see `update::keep_standby`) that
    // its exec is complete, before the image is read.
    if writeln!(out, "{}", crate::update::CHECK_STARTED)
        .and_then(|()| out.flush())
        .is_err()
    {
        return ExitCode::FAILURE;
    }
    match crate::update::check_handover() {
        Ok((proof, bytes)) => {
            let mut said = writeln!(out, "{proof}");
            // The full listing is for a person; the dry run reads only the
            // proof, and printing 100k lines would lengthen the blackout.
            if std::io::IsTerminal::is_terminal(&out) {
                if let Ok(image) = luo_core::Handover::decode(&bytes) {
                    said = said.and_then(|()| writeln!(out, "{}", image.dump()));
                }
            }
            match said.and_then(|()| out.flush()) {
                Ok(()) => ExitCode::SUCCESS,
                Err(_) => ExitCode::FAILURE,
            }
        }
        Err(e) => {
            eprintln!("luod: {e}");
            ExitCode::FAILURE
        }
    }
}
