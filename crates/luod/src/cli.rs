//! The daemon's entry point, shared by the `luod` binary and by programs that
//! embed the daemon (`luoctl daemon`).

use std::ffi::OsString;
use std::process::ExitCode;

use clap::Parser;

use crate::{Config, Daemon};

/// Parse `args` (the first is the program name), set up logging, serve until
/// SIGTERM. `exec_prefix` are the arguments the running binary needs before the
/// daemon's own when it re-executes itself (empty for `luod`).
pub fn main(args: impl IntoIterator<Item = OsString>, exec_prefix: Vec<OsString>) -> ExitCode {
    let mut cfg = Config::parse_from(args);
    cfg.exec_prefix = exec_prefix;
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
    if cfg.check_handover {
        return match crate::update::check_handover() {
            Ok(image) => {
                println!("{}", crate::update::check_proof(&image));
                // The full listing is for a person; the dry run reads only the
                // proof, and printing 100k lines would lengthen the blackout.
                if std::io::IsTerminal::is_terminal(&std::io::stdout()) {
                    println!("{}", image.dump());
                }
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("luod: {e}");
                ExitCode::FAILURE
            }
        };
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
