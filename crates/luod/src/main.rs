//! `luod`: parse the command line, set up logging, serve.

#![forbid(unsafe_code)]

use clap::Parser;
use luod::{Config, Daemon};

fn main() -> std::process::ExitCode {
    let cfg = Config::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    if cfg.check_handover {
        return match luod::update::check_handover() {
            Ok(image) => {
                println!("{}", image.dump());
                std::process::ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("luod: {e}");
                std::process::ExitCode::FAILURE
            }
        };
    }
    match run(cfg) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("luod: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(cfg: Config) -> anyhow::Result<()> {
    let mut daemon = Daemon::start(cfg)?;
    daemon.run()?;
    Ok(())
}
