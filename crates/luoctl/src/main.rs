//! `luoctl`: parse the command line, run it, and turn a failure into one line on
//! stderr and exit status 1. `luoctl daemon ...` is luod itself, and takes luod's
//! options, so it is handed over before the CLI's own parsing.

#![forbid(unsafe_code)]

use std::ffi::OsString;
use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let args: Vec<OsString> = std::env::args_os().collect();
    if args.get(1).is_some_and(|a| a == luoctl::DAEMON_COMMAND) {
        return luoctl::run_daemon(args.into_iter().skip(2));
    }
    let cli = luoctl::Cli::parse_from(args);
    match luoctl::run(&cli, &mut std::io::stdout().lock()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("luoctl: {}", e.one_line());
            ExitCode::FAILURE
        }
    }
}
