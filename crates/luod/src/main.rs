//! `luod`: the daemon binary; all of it lives in the library.

#![forbid(unsafe_code)]

fn main() -> std::process::ExitCode {
    luod::cli::main(std::env::args_os(), Vec::new())
}
