//! `luoctl`, the operator's CLI of luod (SPEC §7, §8.4): status, the global
//! PREPARE/CANCEL/FINISH, the live update and handover dumps, over luod's control
//! socket.
//!
//! The binary only parses arguments and calls [`run`]; everything here is
//! reachable from tests.
//!
//! # Lifecycle of an update, as the operator drives it
//! ```text
//! luoctl prepare          every NORMAL session → PREPARED (all or nothing)
//! luoctl update           freeze, dry-run the target binary, hand over, report
//! (services retrieve their sessions and restore their files)
//! luoctl finish           incoming sessions finish; those never retrieved are dropped
//! ```
//! `luoctl update --prepare` does the first two in one go.
//!
//! # The demo
//! `luoctl demo` ([`demo`](crate::Command::Demo)) runs all of this end to end with
//! nothing installed: luod runs from this binary (`luoctl daemon`, see
//! [`run_daemon`]), and so does the demo's stateful service
//! (`luoctl demo-service`).
//!
//! # Unhappy paths
//! Every failure is one line on stderr, `luoctl: <reason>`, and exit status 1:
//! luod not running (connect fails), a refusal (the daemon's text and errno name),
//! an update with nothing prepared (refused before anything is sent), a failed
//! update (the daemon's reason; with `--prepare`, the prepare is cancelled again),
//! or a control connection that ends without a reply (the outcome is unknown: see
//! `luoctl status`). Usage errors are clap's, with exit status 2.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod cli;
mod control;
mod demo;
mod demo_service;
mod error;
mod table;

use std::ffi::OsString;
use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

use luo_wire::control::{ControlReply, ControlRequest};

pub use cli::{Cli, Command, HandoverCommand};
pub use control::{ControlClient, MAX_REPLY};
pub use error::Error;
pub use table::render_status;

/// The first argument that makes `luoctl` the daemon: `luoctl daemon [luod's
/// options]` runs luod in this binary ([`run_daemon`]).
pub const DAEMON_COMMAND: &str = "daemon";

/// The (hidden) command that runs the demo's service.
pub const DEMO_SERVICE_COMMAND: &str = "demo-service";

/// Runs luod, the daemon, in this process: `args` are luod's own (without a
/// program name). When it re-executes itself for a live update, it runs this
/// binary as `luoctl daemon ...` again, so the update works without a separate
/// `luod` binary.
///
/// ```no_run
/// let code = luoctl::run_daemon(["--socket".into(), "/tmp/luo.sock".into()]);
/// ```
pub fn run_daemon(args: impl IntoIterator<Item = OsString>) -> ExitCode {
    luod::cli::main(
        std::iter::once(OsString::from("luod")).chain(args),
        vec![DAEMON_COMMAND.into()],
    )
}

/// Runs the command `cli` names, printing to `out`.
///
/// # Errors
/// Any [`Error`]; print [`Error::one_line`] and exit 1.
///
/// ```no_run
/// use clap::Parser;
/// let cli = luoctl::Cli::try_parse_from(["luoctl", "status"]).unwrap();
/// luoctl::run(&cli, &mut std::io::stdout())?;
/// # Ok::<(), luoctl::Error>(())
/// ```
pub fn run(cli: &Cli, out: &mut dyn Write) -> Result<(), Error> {
    let text = match &cli.command {
        Command::Demo { keys } => return demo::run(*keys as usize, out),
        Command::DemoService { takeover } => {
            return demo_service::run(&cli.device_socket(), *takeover, out);
        }
        Command::Handover {
            command: HandoverCommand::Dump { file: Some(file) },
        } => dump_file(file, cli.json)?,
        command => {
            let mut control = ControlClient::connect(cli.control_socket())?;
            run_control(&mut control, command, cli.json)?
        }
    };
    out.write_all(text.as_bytes())
        .and_then(|()| out.flush())
        .map_err(Error::Output)
}

/// A command that talks to the daemon; returns what to print.
fn run_control(
    control: &mut ControlClient,
    command: &Command,
    json: bool,
) -> Result<String, Error> {
    let simple = |control: &mut ControlClient, request, done: &str| {
        let reply = control.request(&request)?;
        Ok::<_, Error>(if json {
            json_line(&reply)
        } else {
            format!("{done}\n")
        })
    };
    match command {
        Command::Status => {
            let status = control.status()?;
            Ok(if json {
                pretty(&status)
            } else {
                render_status(&status)
            })
        }
        Command::Prepare => simple(
            control,
            ControlRequest::Prepare,
            "prepared: global state is now prepared",
        ),
        Command::Cancel => simple(
            control,
            ControlRequest::Cancel,
            "cancelled: global state is now normal",
        ),
        Command::Finish => simple(
            control,
            ControlRequest::Finish,
            "finished: global state is now normal",
        ),
        Command::Version => {
            let reply = control.request(&ControlRequest::Version)?;
            if json {
                return Ok(json_line(&reply));
            }
            let version = reply.version.ok_or(Error::MissingField {
                op: "version",
                field: "version",
            })?;
            Ok(format!(
                "luod {version} (luoctl {})\n",
                env!("CARGO_PKG_VERSION")
            ))
        }
        Command::Update { exec, prepare } => {
            let exec = exec.as_deref().map(exec_path).transpose()?;
            let reply = update(control, exec, *prepare)?;
            Ok(if json {
                json_line(&reply)
            } else {
                describe_update(&reply)
            })
        }
        Command::Demo { .. } | Command::DemoService { .. } => {
            unreachable!("run() handles the demo before connecting")
        }
        Command::Handover {
            command: HandoverCommand::Dump { .. },
        } => {
            let reply = control.request(&ControlRequest::HandoverDump)?;
            if json {
                return Ok(json_line(&reply));
            }
            let mut dump = reply.dump.ok_or(Error::MissingField {
                op: "handover-dump",
                field: "dump",
            })?;
            if !dump.ends_with('\n') {
                dump.push('\n');
            }
            Ok(dump)
        }
    }
}

/// The update, refusing to carry nothing: with `prepare`, PREPARE first when the
/// global state is NORMAL, and CANCEL again if the update then fails.
fn update(
    control: &mut ControlClient,
    exec: Option<String>,
    prepare: bool,
) -> Result<ControlReply, Error> {
    let normal = control.status()?.state == luo::State::Normal.name();
    if normal && !prepare {
        return Err(Error::NothingPrepared);
    }
    if normal {
        control.request(&ControlRequest::Prepare)?;
    }
    match control.request(&ControlRequest::Update { exec }) {
        // Only a refusal says for sure that the update did not happen; after any
        // other failure a CANCEL might hit the next epoch, so leave it be.
        Err(e @ Error::Daemon { .. }) if normal => {
            // The daemon may have re-executed while failing; a fresh connection
            // reaches whichever epoch serves now.
            let cancelled = ControlClient::connect(control.path())
                .and_then(|mut fresh| fresh.request(&ControlRequest::Cancel))
                .is_ok();
            Err(Error::UpdateAfterPrepare {
                source: Box::new(e),
                cancelled,
            })
        }
        result => result,
    }
}

fn describe_update(reply: &ControlReply) -> String {
    match &reply.update {
        Some(report) => format!(
            "updated: epoch {} running {}, {} session{} and {} file{} carried, blackout {}.{:03} ms\n",
            report.epoch,
            report.exe,
            report.sessions,
            if report.sessions == 1 { "" } else { "s" },
            report.files,
            if report.files == 1 { "" } else { "s" },
            report.blackout_us / 1000,
            report.blackout_us % 1000,
        ),
        None => "updated\n".to_owned(),
    }
}

/// `--exec` as the daemon needs it: absolute (its working directory is not ours)
/// and UTF-8 (it travels in JSON).
fn exec_path(path: &Path) -> Result<String, Error> {
    std::path::absolute(path)
        .ok()
        .and_then(|p| p.into_os_string().into_string().ok())
        .ok_or_else(|| Error::ExecPath {
            path: path.to_path_buf(),
        })
}

fn dump_file(path: &Path, json: bool) -> Result<String, Error> {
    let bytes = std::fs::read(path).map_err(|source| Error::ReadImage {
        path: path.to_path_buf(),
        source,
    })?;
    let image = luo_core::Handover::decode(&bytes).map_err(|source| Error::DecodeImage {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(if json { pretty(&image) } else { image.dump() })
}

fn json_line(reply: &ControlReply) -> String {
    // Serializing these plain structs cannot fail (string keys, no maps).
    let mut line = serde_json::to_string(reply).unwrap_or_default();
    line.push('\n');
    line
}

fn pretty(value: &impl serde::Serialize) -> String {
    let mut text = serde_json::to_string_pretty(value).unwrap_or_default();
    text.push('\n');
    text
}

#[cfg(test)]
mod tests {
    use std::io::{BufRead, BufReader, Write as _};
    use std::os::unix::net::UnixListener;
    use std::path::PathBuf;
    use std::sync::{Arc, Mutex};
    use std::thread;

    use clap::Parser;
    use luo_wire::control::{Status, UpdateReport};

    use super::*;

    type Log = Arc<Mutex<Vec<String>>>;

    /// A fake luod control socket in a fresh directory: answers each request line
    /// with `answer(op)` (`None`: close the connection instead), logging every op.
    struct FakeDaemon {
        dir: tempfile::TempDir,
        log: Log,
    }

    impl FakeDaemon {
        fn start(answer: impl Fn(&str) -> Option<ControlReply> + Send + Sync + 'static) -> Self {
            let dir = tempfile::tempdir().expect("tempdir");
            let listener = UnixListener::bind(dir.path().join("control.sock")).expect("bind");
            let log: Log = Arc::default();
            let seen = Arc::clone(&log);
            let answer = Arc::new(answer);
            thread::spawn(move || {
                for stream in listener.incoming() {
                    let Ok(stream) = stream else { return };
                    let (seen, answer) = (Arc::clone(&seen), Arc::clone(&answer));
                    thread::spawn(move || {
                        let mut writer = stream.try_clone().expect("clone");
                        for line in BufReader::new(stream).lines() {
                            let Ok(line) = line else { return };
                            let request: serde_json::Value =
                                serde_json::from_str(&line).expect("request is JSON");
                            let op = request["op"].as_str().expect("op").to_owned();
                            seen.lock().expect("log").push(line.clone());
                            let Some(reply) = answer(&op) else { return };
                            let mut text = serde_json::to_string(&reply).expect("json");
                            text.push('\n');
                            if writer.write_all(text.as_bytes()).is_err() {
                                return;
                            }
                        }
                    });
                }
            });
            FakeDaemon { dir, log }
        }

        fn run(&self, args: &[&str]) -> Result<String, Error> {
            let socket = self.dir.path().join("luo.sock");
            let mut argv = vec!["luoctl", "--socket", socket.to_str().expect("utf-8")];
            argv.extend_from_slice(args);
            let cli = Cli::try_parse_from(argv).expect("args");
            let mut out = Vec::new();
            run(&cli, &mut out)?;
            Ok(String::from_utf8(out).expect("utf-8"))
        }

        fn ops(&self) -> Vec<String> {
            self.log
                .lock()
                .expect("log")
                .iter()
                .map(|line| {
                    let v: serde_json::Value = serde_json::from_str(line).expect("json");
                    v["op"].as_str().expect("op").to_owned()
                })
                .collect()
        }
    }

    fn status(state: &str) -> Status {
        Status {
            state: state.into(),
            epoch: 0,
            pid: 42,
            version: "9.9.9".into(),
            device_handles: 0,
            preserved_files: 0,
            sessions: vec![],
        }
    }

    fn status_reply(state: &str) -> ControlReply {
        ControlReply {
            status: Some(status(state)),
            ..ControlReply::ok()
        }
    }

    #[test]
    fn status_prints_the_table_or_json() {
        let daemon = FakeDaemon::start(|_| Some(status_reply("normal")));
        let text = daemon.run(&["status"]).expect("status");
        assert!(
            text.starts_with("state: normal   epoch: 0   pid: 42"),
            "{text}"
        );
        let json = daemon.run(&["--json", "status"]).expect("status");
        let back: Status = serde_json::from_str(&json).expect("Status JSON");
        assert_eq!(back, status("normal"));
    }

    #[test]
    fn simple_commands_confirm_in_one_line() {
        let daemon = FakeDaemon::start(|op| {
            Some(match op {
                "version" => ControlReply {
                    version: Some("9.9.9".into()),
                    ..ControlReply::ok()
                },
                _ => ControlReply::ok(),
            })
        });
        assert_eq!(
            daemon.run(&["prepare"]).expect("prepare"),
            "prepared: global state is now prepared\n"
        );
        assert_eq!(
            daemon.run(&["--json", "cancel"]).expect("cancel"),
            "{\"ok\":true}\n"
        );
        assert!(
            daemon
                .run(&["version"])
                .expect("version")
                .starts_with("luod 9.9.9")
        );
        assert_eq!(daemon.ops(), ["prepare", "cancel", "version"]);
    }

    #[test]
    fn refusals_carry_the_daemon_text_and_errno_name() {
        let daemon = FakeDaemon::start(|_| {
            Some(ControlReply::failed(
                luo::Errno::INVAL,
                "Event finish is not allowed in global state normal",
            ))
        });
        let e = daemon.run(&["finish"]).unwrap_err();
        assert_eq!(
            e.one_line(),
            "finish: Event finish is not allowed in global state normal (EINVAL)"
        );
    }

    #[test]
    fn update_refuses_to_carry_nothing() {
        let daemon = FakeDaemon::start(|_| Some(status_reply("normal")));
        let e = daemon.run(&["update"]).unwrap_err();
        assert!(matches!(e, Error::NothingPrepared), "{e:?}");
        assert_eq!(daemon.ops(), ["status"]);
    }

    #[test]
    fn update_with_prepare_prepares_first() {
        let daemon = FakeDaemon::start(|op| {
            Some(match op {
                "status" => status_reply("normal"),
                "update" => ControlReply {
                    update: Some(UpdateReport {
                        epoch: 1,
                        exe: "/usr/bin/luod".into(),
                        sessions: 1,
                        files: 2,
                        blackout_us: 12_345,
                    }),
                    ..ControlReply::ok()
                },
                _ => ControlReply::ok(),
            })
        });
        let text = daemon
            .run(&["update", "--prepare", "--exec", "/usr/bin/luod"])
            .expect("update");
        assert_eq!(
            text,
            "updated: epoch 1 running /usr/bin/luod, 1 session and 2 files carried, \
             blackout 12.345 ms\n"
        );
        assert_eq!(daemon.ops(), ["status", "prepare", "update"]);
        let update: serde_json::Value =
            serde_json::from_str(&daemon.log.lock().expect("log")[2]).expect("json");
        assert_eq!(update["exec"], "/usr/bin/luod");
    }

    #[test]
    fn update_with_prepare_skips_prepare_when_already_prepared() {
        let daemon = FakeDaemon::start(|op| {
            Some(match op {
                "status" => status_reply("prepared"),
                _ => ControlReply::ok(),
            })
        });
        assert_eq!(
            daemon.run(&["update", "--prepare"]).expect("update"),
            "updated\n"
        );
        assert_eq!(daemon.ops(), ["status", "update"]);
    }

    #[test]
    fn a_failed_update_cancels_the_prepare_it_made() {
        let daemon = FakeDaemon::start(|op| {
            Some(match op {
                "status" => status_reply("normal"),
                "update" => ControlReply::failed(luo::Errno::NOENT, "Dry run failed"),
                _ => ControlReply::ok(),
            })
        });
        let e = daemon.run(&["update", "--prepare"]).unwrap_err();
        assert!(
            matches!(
                e,
                Error::UpdateAfterPrepare {
                    cancelled: true,
                    ..
                }
            ),
            "{e:?}"
        );
        assert_eq!(daemon.ops(), ["status", "prepare", "update", "cancel"]);
    }

    #[test]
    fn a_connection_closed_without_reply_is_reported() {
        let daemon = FakeDaemon::start(|_| None);
        let e = daemon.run(&["prepare"]).unwrap_err();
        assert!(matches!(e, Error::NoReply { op: "prepare" }), "{e:?}");
    }

    #[test]
    fn no_daemon_is_a_connect_error_with_a_hint() {
        let dir = tempfile::tempdir().expect("tempdir");
        let socket = dir.path().join("luo.sock");
        let cli = Cli::try_parse_from([
            "luoctl",
            "--socket",
            socket.to_str().expect("utf-8"),
            "status",
        ])
        .expect("args");
        let e = run(&cli, &mut Vec::new()).unwrap_err();
        let line = e.one_line();
        assert!(line.starts_with("cannot connect to "), "{line}");
        assert!(
            line.ends_with("control.sock: No such file or directory (is luod running?)"),
            "{line}"
        );
    }

    #[test]
    fn handover_dump_reads_an_image_file() {
        let image = luo_core::Handover {
            epoch: 7,
            previous_exe: "/usr/bin/luod".into(),
            sessions: vec![],
        };
        let dir = tempfile::tempdir().expect("tempdir");
        let file: PathBuf = dir.path().join("image");
        std::fs::write(&file, image.encode()).expect("write");
        let cli = Cli::try_parse_from([
            "luoctl",
            "handover",
            "dump",
            "--file",
            file.to_str().expect("utf-8"),
        ])
        .expect("args");
        let mut out = Vec::new();
        run(&cli, &mut out).expect("dump");
        let text = String::from_utf8(out).expect("utf-8");
        assert!(text.contains("epoch 7"), "{text}");

        std::fs::write(&file, b"not an image").expect("write");
        let e = run(&cli, &mut Vec::new()).unwrap_err();
        assert!(
            e.one_line().starts_with("cannot decode the handover image"),
            "{e:?}"
        );
    }

    #[test]
    fn exec_paths_are_made_absolute() {
        let relative = exec_path(Path::new("target/luod")).expect("path");
        assert!(Path::new(&relative).is_absolute(), "{relative}");
        assert!(relative.ends_with("target/luod"));
    }
}
