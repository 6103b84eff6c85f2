//! The command line: `luoctl [--socket P] [--control-socket P] [--json] <command>`.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// The parsed command line.
///
/// ```
/// use clap::Parser;
/// let cli = luoctl::Cli::try_parse_from(["luoctl", "--json", "status"]).unwrap();
/// assert!(cli.json);
/// assert_eq!(cli.command, luoctl::Command::Status);
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Parser)]
#[command(
    name = "luoctl",
    version,
    about = "Operate luod, the userspace Live Update Orchestrator",
    long_about = "Operate luod, the userspace Live Update Orchestrator.\n\n\
        Services preserve their file descriptors in named sessions; the operator \
        prepares them, runs the live update (luod hands everything to its next epoch, \
        optionally as a new binary), and finishes once the services have taken their \
        state back. luoctl talks to luod's control socket.",
    after_help = "luoctl daemon [LUOD OPTIONS]: run the daemon, luod, in this binary \
        (`daemon` must be the first argument; `luoctl daemon --help` lists its options)"
)]
pub struct Cli {
    /// luod's device socket [default: $LUO_SOCKET, else /run/luo/luo.sock for root,
    /// $XDG_RUNTIME_DIR/luo/luo.sock for others]
    #[arg(long, global = true, value_name = "PATH")]
    pub socket: Option<PathBuf>,
    /// luod's control socket [default: control.sock beside the device socket]
    #[arg(long, global = true, value_name = "PATH")]
    pub control_socket: Option<PathBuf>,
    /// Print JSON instead of text
    #[arg(long, global = true)]
    pub json: bool,
    /// What to do
    #[command(subcommand)]
    pub command: Command,
}

/// A `luoctl` command.
///
/// ```
/// use clap::Parser;
/// let cli = luoctl::Cli::try_parse_from(["luoctl", "update", "--prepare"]).unwrap();
/// assert_eq!(cli.command, luoctl::Command::Update { exec: None, prepare: true });
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Subcommand)]
pub enum Command {
    /// Show the global state, the epoch, and every session with its preserved files
    Status,
    /// Prepare every session still NORMAL for the update (all or nothing)
    Prepare,
    /// Cancel a prepare: every prepared or frozen session goes back to NORMAL
    Cancel,
    /// After an update: finish every incoming session, dropping those never retrieved
    Finish,
    /// Print luod's version
    Version,
    /// Run the live update: freeze the prepared sessions and hand them to luod's next
    /// epoch (the same binary, or --exec PATH), then report the outcome
    Update {
        /// The luod binary to become [default: the running one]
        #[arg(long, value_name = "PATH")]
        exec: Option<PathBuf>,
        /// Prepare first when nothing is prepared yet (cancelled again if the update fails)
        #[arg(long)]
        prepare: bool,
    },
    /// Show a stateful service surviving a live update, end to end (starts its own luod)
    ///
    /// A key-value service keeps its memory (a memfd) and its listening socket in a
    /// luod session while clients keep sending requests; luod is live-updated, a new
    /// instance of the service takes both back, and every key is checked. luod and
    /// the service run from this binary, in a temporary directory removed at the
    /// end; --socket, --control-socket and --json do not apply.
    Demo {
        /// Keys written before the update and checked after it
        #[arg(long, value_name = "N", default_value_t = 2000,
              value_parser = clap::value_parser!(u32).range(1..=100_000))]
        keys: u32,
    },
    /// The demo's key-value service (started by `luoctl demo`)
    #[command(hide = true)]
    DemoService {
        /// Take over from the previous instance: retrieve the session after an update
        #[arg(long)]
        takeover: bool,
    },
    /// Inspect handover images (what crosses a live update)
    Handover {
        /// What to do with it
        #[command(subcommand)]
        command: HandoverCommand,
    },
}

/// A `luoctl handover` command.
///
/// ```
/// use clap::Parser;
/// let cli = luoctl::Cli::try_parse_from(["luoctl", "handover", "dump"]).unwrap();
/// assert_eq!(
///     cli.command,
///     luoctl::Command::Handover { command: luoctl::HandoverCommand::Dump { file: None } }
/// );
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Subcommand)]
pub enum HandoverCommand {
    /// Print the image this epoch started from, or with --file an image file, readably
    Dump {
        /// Decode this image file instead of asking luod
        #[arg(long, value_name = "PATH")]
        file: Option<PathBuf>,
    },
}

impl Cli {
    /// The device socket: `--socket`, else the default of SPEC §8.
    ///
    /// ```
    /// use clap::Parser;
    /// let cli = luoctl::Cli::try_parse_from(["luoctl", "--socket", "/x/luo.sock", "status"]).unwrap();
    /// assert_eq!(cli.device_socket(), std::path::Path::new("/x/luo.sock"));
    /// ```
    #[must_use]
    pub fn device_socket(&self) -> PathBuf {
        self.socket
            .clone()
            .unwrap_or_else(luo_wire::paths::device_socket)
    }

    /// The control socket: `--control-socket`, else `control.sock` beside the
    /// device socket.
    ///
    /// ```
    /// use clap::Parser;
    /// let cli = luoctl::Cli::try_parse_from(["luoctl", "--socket", "/x/luo.sock", "status"]).unwrap();
    /// assert_eq!(cli.control_socket(), std::path::Path::new("/x/control.sock"));
    /// ```
    #[must_use]
    pub fn control_socket(&self) -> PathBuf {
        match &self.control_socket {
            Some(path) => path.clone(),
            None => luo_wire::paths::control_socket_beside(&self.device_socket()),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use clap::CommandFactory;

    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("luoctl").chain(args.iter().copied()))
    }

    #[test]
    fn the_command_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn every_simple_command_parses() {
        for (arg, command) in [
            ("status", Command::Status),
            ("prepare", Command::Prepare),
            ("cancel", Command::Cancel),
            ("finish", Command::Finish),
            ("version", Command::Version),
        ] {
            let cli = parse(&[arg]).expect(arg);
            assert_eq!(cli.command, command);
            assert!(!cli.json);
        }
    }

    #[test]
    fn global_options_go_before_or_after_the_command() {
        let before = parse(&["--json", "--socket", "/s/luo.sock", "status"]).expect("before");
        let after = parse(&["status", "--socket", "/s/luo.sock", "--json"]).expect("after");
        assert_eq!(before, after);
        assert_eq!(before.control_socket(), Path::new("/s/control.sock"));
        let explicit = parse(&[
            "--socket",
            "/s/luo.sock",
            "--control-socket",
            "/c.sock",
            "status",
        ])
        .expect("explicit");
        assert_eq!(explicit.control_socket(), Path::new("/c.sock"));
        assert_eq!(explicit.device_socket(), Path::new("/s/luo.sock"));
    }

    #[test]
    fn update_options() {
        assert_eq!(
            parse(&["update"]).expect("update").command,
            Command::Update {
                exec: None,
                prepare: false
            }
        );
        assert_eq!(
            parse(&["update", "--exec", "/usr/bin/luod", "--prepare"])
                .expect("update")
                .command,
            Command::Update {
                exec: Some("/usr/bin/luod".into()),
                prepare: true
            }
        );
        assert!(parse(&["update", "--exec"]).is_err());
    }

    #[test]
    fn handover_dump_takes_an_optional_file() {
        assert_eq!(
            parse(&["handover", "dump", "--file", "/tmp/img"])
                .expect("dump")
                .command,
            Command::Handover {
                command: HandoverCommand::Dump {
                    file: Some("/tmp/img".into())
                }
            }
        );
        assert!(parse(&["handover"]).is_err());
    }

    #[test]
    fn unknown_or_missing_commands_are_refused() {
        assert!(parse(&[]).is_err());
        assert!(parse(&["frobnicate"]).is_err());
        assert!(parse(&["demo", "--keys", "0"]).is_err());
        assert!(parse(&["status", "extra"]).is_err());
    }

    #[test]
    fn help_explains_every_command() {
        let help = Cli::command().render_long_help().to_string();
        for word in [
            "status",
            "prepare",
            "cancel",
            "finish",
            "version",
            "update",
            "handover",
            "demo",
            "luoctl daemon",
        ] {
            assert!(help.contains(word), "{word} missing from:\n{help}");
        }
        assert!(!help.contains("demo-service"), "{help}");
    }

    #[test]
    fn demo_and_its_service() {
        assert_eq!(
            parse(&["demo"]).expect("demo").command,
            Command::Demo { keys: 2000 }
        );
        assert_eq!(
            parse(&["demo", "--keys", "5"]).expect("demo").command,
            Command::Demo { keys: 5 }
        );
        let service = parse(&["demo-service", "--socket", "/d/luo.sock", "--takeover"])
            .expect("demo-service");
        assert_eq!(service.command, Command::DemoService { takeover: true });
        assert_eq!(service.device_socket(), Path::new("/d/luo.sock"));
    }
}
