//! `luo-bench`: parse the command line and run it. Two hidden roles come before
//! clap sees the arguments: `luo-bench daemon [LUOD OPTIONS]` is luod itself (the
//! daemon every suite starts, which re-executes itself the same way at a live
//! update), and `luo-bench echo-peer PATH [--blocking]` is the raw SCM_RIGHTS peer
//! of the baselines.

#![forbid(unsafe_code)]

use std::ffi::OsString;
use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let args: Vec<OsString> = std::env::args_os().collect();
    match args.get(1).and_then(|a| a.to_str()) {
        Some(luo_bench::DAEMON_ROLE) => luo_bench::daemon::run_embedded(args.into_iter().skip(2)),
        Some(luo_bench::ECHO_PEER_ROLE) => luo_bench::echo::run_peer(args.into_iter().skip(2)),
        _ => {
            let cli = luo_bench::Cli::parse_from(args);
            match luo_bench::run(&cli, &mut std::io::stdout().lock()) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("luo-bench: {}", e.one_line());
                    ExitCode::FAILURE
                }
            }
        }
    }
}
