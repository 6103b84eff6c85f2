//! What an operator sees and does with the real `luoctl` binary (SPEC §7, §8.4):
//! `status` as a table and as JSON, and the exit codes of `prepare`, `cancel` and
//! `finish`: 0 on success, 1 with one `luoctl: ...` line on a refusal.
//!
//! `luoctl` is found as `$LUOCTL` or beside these tests in the target directory
//! (`cargo build --workspace` builds it).

mod common;

use std::net::TcpListener;
use std::process::{Command, Output, Stdio};

use common::*;
use luo::{Event, State};

const MIB: u64 = 1 << 20;

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A command that succeeded: exit 0, nothing on stderr.
fn succeeded(what: &str, out: &Output) -> String {
    assert_eq!(out.status.code(), Some(0), "{what}: {out:?}");
    assert!(out.stderr.is_empty(), "{what}: {}", stderr(out));
    stdout(out)
}

/// A command that was refused: exit 1, nothing on stdout, one `luoctl: ` line
/// on stderr; returns that line.
fn refused(what: &str, out: &Output) -> String {
    assert_eq!(out.status.code(), Some(1), "{what}: {out:?}");
    assert!(out.stdout.is_empty(), "{what}: {}", stdout(out));
    let err = stderr(out);
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 1, "{what}: {err}");
    assert!(lines[0].starts_with("luoctl: "), "{what}: {err}");
    lines[0].to_owned()
}

/// The line of `text` that contains `needle`.
fn line_with<'a>(text: &'a str, needle: &str) -> &'a str {
    text.lines()
        .find(|l| l.contains(needle))
        .unwrap_or_else(|| panic!("no line with {needle:?} in:\n{text}"))
}

#[test]
fn luoctl_status_shows_the_state_the_epoch_and_every_session_with_its_files() {
    let d = Luod::start();
    let device = d.luo();
    let db = device.create_session("db").expect("create");
    let ram = memfd("guest-ram", b"");
    rustix::fs::ftruncate(&ram, 64 * MIB).expect("64 MiB");
    db.preserve(&ram, 0xbeef).expect("preserve memfd");
    let listener = TcpListener::bind("127.0.0.1:0").expect("listen");
    let port = listener.local_addr().expect("addr").port();
    db.preserve(&listener, 0x2a).expect("preserve listener");
    let _proxy = device.create_session("proxy").expect("create");
    let uid = rustix::process::getuid().as_raw();

    let text = succeeded("luoctl status", &d.luoctl(&["status"]));
    let header = line_with(&text, "state:");
    for want in [
        "state: normal".to_owned(),
        "epoch: 0".to_owned(),
        format!("pid: {}", d.pid()),
        "sessions: 2".to_owned(),
        "files: 2".to_owned(),
    ] {
        assert!(header.contains(&want), "{want:?} missing from:\n{text}");
    }
    let db_line = line_with(&text, "\"db\"");
    assert!(db_line.contains(&format!("owner {uid}")), "{text}");
    assert!(db_line.contains("normal"), "{text}");
    let memfd_row = line_with(&text, "0xbeef");
    for want in ["memfd-v1", "memfd", "\"guest-ram\"", "64 MiB"] {
        assert!(memfd_row.contains(want), "{want:?} missing from:\n{text}");
    }
    let socket_row = line_with(&text, "0x2a");
    assert!(socket_row.contains("socket-v1"), "{text}");
    assert!(
        socket_row.contains(&format!("tcp listen 127.0.0.1:{port}")),
        "{text}"
    );
    let proxy_line = line_with(&text, "\"proxy\"");
    assert!(proxy_line.contains(&format!("owner {uid}")), "{text}");
    assert!(proxy_line.contains("normal"), "{text}");
}

#[test]
fn luoctl_status_json_is_the_daemons_status() {
    let d = Luod::start();
    let device = d.luo();
    let db = device.create_session("db").expect("create");
    let ram = memfd("guest-ram", b"");
    rustix::fs::ftruncate(&ram, 64 * MIB).expect("64 MiB");
    db.preserve(&ram, 0xbeef).expect("preserve memfd");
    let listener = TcpListener::bind("127.0.0.1:0").expect("listen");
    let port = listener.local_addr().expect("addr").port();
    db.preserve(&listener, 0x2a).expect("preserve listener");
    let web = device.create_session("web").expect("create");
    web.set_event(Event::Prepare).expect("prepare");

    let json = d.luoctl_status();
    assert_eq!(json, d.status());
    assert_eq!((json.state.as_str(), json.epoch), ("normal", 0));
    assert_eq!(json.pid, d.pid());
    assert_eq!(json.device_handles, 1);
    assert_eq!(json.preserved_files, 2);
    let names: Vec<(&str, &str)> = json
        .sessions
        .iter()
        .map(|s| (s.name.as_str(), s.state.as_str()))
        .collect();
    assert_eq!(names, [("db", "normal"), ("web", "prepared")]);
    let files = &json.sessions[0].files;
    assert_eq!(
        (files[0].token, files[0].handler.as_str()),
        (0xbeef, "memfd-v1")
    );
    assert!(
        files[0].description.starts_with("memfd") && files[0].description.ends_with("64 MiB"),
        "{files:#?}"
    );
    assert_eq!(
        (files[1].token, files[1].handler.as_str()),
        (0x2a, "socket-v1")
    );
    assert_eq!(files[1].description, format!("tcp listen 127.0.0.1:{port}"));
}

#[test]
fn luoctl_status_after_an_update_shows_the_new_epoch_and_what_was_carried() {
    let d = Luod::start();
    let device = d.luo();
    let db = device.create_session("db").expect("create");
    db.preserve(memfd("state", b"state"), 1).expect("preserve");
    db.preserve(memfd("cache", b"cache"), 2).expect("preserve");
    d.prepare_and_update();

    let text = succeeded("luoctl status", &d.luoctl(&["status"]));
    let header = line_with(&text, "state:");
    assert!(header.contains("state: updated"), "{text}");
    assert!(header.contains("epoch: 1"), "{text}");
    assert!(line_with(&text, "\"db\"").contains("incoming"), "{text}");

    let device = d.luo();
    let db = device.retrieve_session("db").expect("retrieve");
    let _state = db.restore(1).expect("restore");
    let text = succeeded("luoctl status", &d.luoctl(&["status"]));
    let db_line = line_with(&text, "\"db\"");
    assert!(db_line.contains("updated"), "{text}");
    assert!(db_line.contains("retrieved"), "{text}");
    assert!(line_with(&text, "0x1").contains("restored"), "{text}");
    assert!(!line_with(&text, "0x2").contains("restored"), "{text}");

    let json = d.luoctl_status();
    assert_eq!(json, d.status());
    let session = &json.sessions[0];
    assert!(session.incoming && session.retrieved, "{json:#?}");
    assert_eq!(
        session
            .files
            .iter()
            .map(|f| (f.token, f.restored))
            .collect::<Vec<_>>(),
        [(1, true), (2, false)]
    );
}

#[test]
fn luoctl_transitions_exit_0_when_done_and_1_with_a_reason_when_refused() {
    let d = Luod::start();
    let device = d.luo();
    let session = device.create_session("db").expect("create");
    session.preserve(memfd("db", b"db"), 1).expect("preserve");

    let reason = refused("finish in normal", &d.luoctl(&["finish"]));
    assert!(reason.contains("EINVAL"), "{reason}");
    let reason = refused("cancel in normal", &d.luoctl(&["cancel"]));
    assert!(reason.contains("EINVAL"), "{reason}");
    assert_eq!(d.status().state, "normal");

    succeeded("prepare", &d.luoctl(&["prepare"]));
    assert_eq!(d.status().state, "prepared");
    assert_eq!(session.state().expect("state"), State::Prepared);
    refused("prepare twice", &d.luoctl(&["prepare"]));
    refused("finish in prepared", &d.luoctl(&["finish"]));
    assert_eq!(d.status().state, "prepared");

    succeeded("cancel", &d.luoctl(&["cancel"]));
    assert_eq!(d.status().state, "normal");
    assert_eq!(session.state().expect("state"), State::Normal);

    succeeded("prepare", &d.luoctl(&["prepare"]));
    d.update_prepared();
    refused("prepare in updated", &d.luoctl(&["prepare"]));
    refused("cancel in updated", &d.luoctl(&["cancel"]));
    succeeded("finish", &d.luoctl(&["finish"]));
    let status = d.status();
    assert_eq!(status.state, "normal");
    // Never retrieved, the session was dropped by FINISH.
    assert!(status.sessions.is_empty(), "{status:#?}");
    refused("finish twice", &d.luoctl(&["finish"]));
}

#[test]
fn luoctl_without_a_daemon_fails_with_one_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = Command::new(luoctl_binary())
        .arg("--socket")
        .arg(dir.path().join("luo.sock"))
        .arg("status")
        .stdin(Stdio::null())
        .output()
        .expect("run luoctl");
    let reason = refused("status without luod", &out);
    assert!(reason.contains("is luod running?"), "{reason}");
}
