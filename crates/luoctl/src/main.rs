//! `luoctl`: parse the command line, run it, and turn a failure into one line on
//! stderr and exit status 1.

#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = luoctl::Cli::parse();
    match luoctl::run(&cli, &mut std::io::stdout().lock()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("luoctl: {}", e.one_line());
            ExitCode::FAILURE
        }
    }
}
