//! Access control (SPEC §9): a session is usable only by its owner uid or root,
//! whoever holds its handle; the device is exclusive unless `--shared-device`.
//!
//! The stranger is this test binary run again as uid 65534 (it needs root to
//! start it): the parent starts the child test [`stranger`] alone with
//! `--exact`, gives it root's session handle as its standard input and the device
//! socket in [`STRANGER_ENV`]. The child test is ignored in ordinary runs, and
//! does nothing without that variable.

mod common;

use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};

use common::*;
use luo::{Device, Errno, Event, Session, State};

/// Set for the child run: the device socket's path.
const STRANGER_ENV: &str = "LUOD_TEST_STRANGER_SOCKET";
/// The stranger's uid and gid.
const NOBODY: u32 = 65534;

/// The name of group `gid` in /etc/group.
fn group_name(gid: u32) -> String {
    let groups = std::fs::read_to_string("/etc/group").expect("read /etc/group");
    groups
        .lines()
        .find_map(|line| {
            let fields: Vec<&str> = line.split(':').collect();
            (fields.get(2) == Some(&gid.to_string().as_str())).then(|| fields[0].to_owned())
        })
        .unwrap_or_else(|| panic!("no group {gid} in /etc/group"))
}

/// The child: uid 65534 with root's session handle on standard input.
#[test]
#[ignore = "run by another_uid_can_neither_retrieve_nor_use_roots_sessions as uid 65534"]
fn stranger() {
    let Some(socket) = std::env::var_os(STRANGER_ENV) else {
        return;
    };
    assert_eq!(rustix::process::getuid().as_raw(), NOBODY);
    let handle: OwnedFd = std::io::stdin()
        .as_fd()
        .try_clone_to_owned()
        .expect("dup stdin");
    let roots = Session::from_fd(handle);
    assert_eq!(errno(roots.state()), Errno::ACCESS, "GET_STATE");
    assert_eq!(errno(roots.restore(1)), Errno::ACCESS, "RESTORE_FD");
    assert_eq!(errno(roots.unpreserve(1)), Errno::ACCESS, "UNPRESERVE_FD");
    assert_eq!(
        errno(roots.preserve(memfd("stranger", b"x"), 2)),
        Errno::ACCESS,
        "PRESERVE_FD"
    );
    assert_eq!(
        errno(roots.set_event(Event::Finish)),
        Errno::ACCESS,
        "SET_EVENT"
    );

    let device = Device::open_at(&socket).expect("the device group may open the device");
    assert_eq!(errno(device.retrieve_session("other")), Errno::ACCESS);
    // Already retrieved by root: a stranger learns nothing of that either.
    assert_eq!(errno(device.retrieve_session("db")), Errno::ACCESS);
    // Its own session is its own.
    let own = device.create_session("stranger").expect("create");
    own.preserve(memfd("stranger", b"mine"), 1)
        .expect("preserve into its own session");
    assert_eq!(own.state().expect("state"), State::Normal);
    println!("stranger: every request on root's sessions was refused with EACCES");
}

#[test]
fn another_uid_can_neither_retrieve_nor_use_roots_sessions() {
    if !rustix::process::geteuid().is_root() {
        eprintln!("skipped: running a child as uid {NOBODY} needs root");
        return;
    }
    let group = group_name(NOBODY);
    let d = Luod::start_with(&["--group", &group], &[]);
    // The device socket is 0660 root:group; the stranger must reach it.
    std::fs::set_permissions(d.dir.path(), std::fs::Permissions::from_mode(0o755))
        .expect("chmod the daemon's directory");
    let device = d.luo();
    // Kept open until the update, which carries them.
    let mut outgoing = Vec::new();
    for name in ["db", "other"] {
        let session = device.create_session(name).expect("create");
        session
            .preserve(memfd(name, name.as_bytes()), 1)
            .expect("preserve");
        outgoing.push(session);
    }
    d.prepare_and_update();
    let device = d.luo();
    let db = device.retrieve_session("db").expect("retrieve");
    drop(device);
    d.wait_for_status("the device released", |s| s.device_handles == 0);

    let handle = db.as_fd().try_clone_to_owned().expect("dup");
    let exe = std::env::current_exe().expect("current_exe");
    let out = Command::new(&exe)
        .args(["--exact", "stranger", "--nocapture", "--include-ignored"])
        .uid(NOBODY)
        .gid(NOBODY)
        .current_dir(d.dir.path())
        .env(STRANGER_ENV, &d.socket)
        .stdin(Stdio::from(handle))
        .output()
        .expect("run the stranger");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("test result: ok. 1 passed"),
        "the stranger ({}) failed: {}\n{stdout}\n{}\n{}",
        exe.display(),
        out.status,
        String::from_utf8_lossy(&out.stderr),
        d.log()
    );

    // The refusals changed nothing, and root still may do everything.
    let status = d.wait_for_status("the stranger's handles released", |s| {
        s.sessions.len() == 2 && s.device_handles == 0
    });
    let (db_status, other_status) = (&status.sessions[0], &status.sessions[1]);
    assert_eq!(
        (
            db_status.name.as_str(),
            db_status.owner_uid,
            db_status.retrieved
        ),
        ("db", 0, true)
    );
    assert_eq!(db_status.state, "updated");
    assert!(!db_status.files[0].restored);
    assert_eq!(
        (other_status.name.as_str(), other_status.retrieved),
        ("other", false)
    );
    assert_eq!(contents(&db.restore(1).expect("root restores")), b"db");
    let other = d.luo().retrieve_session("other").expect("root retrieves");
    assert_eq!(other.state().expect("state"), State::Updated);
}

#[test]
fn a_second_device_holder_gets_ebusy_until_the_first_closes() {
    let d = Luod::start();
    let first = Device::open_at(&d.socket).expect("first open");
    let e = Device::open_at(&d.socket).expect_err("second open");
    assert!(e.is_busy(), "{e:?}");
    assert_eq!(e.errno(), Errno::BUSY);
    // The refusal took nothing from the holder.
    let session = first.create_session("db").expect("create");
    assert_eq!(d.status().device_handles, 1);

    drop(first);
    d.wait_for_status("the device released", |s| s.device_handles == 0);
    let again = Device::open_at(&d.socket).expect("open once released");
    assert_eq!(again.state().expect("state"), State::Normal);
    // Sessions outlive the device handle that created them.
    assert_eq!(session.state().expect("state"), State::Normal);
}

#[test]
fn with_shared_device_several_holders_use_the_device_at_once() {
    let d = Luod::start_with(&["--shared-device"], &[]);
    let devices: Vec<Device> = (0..3)
        .map(|_| Device::open_at(&d.socket).expect("open a shared device"))
        .collect();
    assert_eq!(d.status().device_handles, 3);
    let sessions: Vec<Session> = devices
        .iter()
        .enumerate()
        .map(|(i, device)| {
            device
                .create_session(&format!("s{i}"))
                .expect("each holder creates")
        })
        .collect();
    assert_eq!(d.status().sessions.len(), sessions.len());

    drop(devices);
    d.wait_for_status("every device released", |s| s.device_handles == 0);
    let _again = Device::open_at(&d.socket).expect("open once released");
}

#[test]
fn the_device_socket_is_for_its_group_and_the_control_socket_for_root() {
    use std::os::unix::fs::MetadataExt;
    if !rustix::process::geteuid().is_root() {
        eprintln!("skipped: giving the socket to group {NOBODY} needs root");
        return;
    }
    let d = Luod::start_with(&["--group", &group_name(NOBODY)], &[]);
    let device = std::fs::metadata(&d.socket).expect("stat the device socket");
    assert_eq!(device.mode() & 0o7777, 0o660);
    assert_eq!((device.uid(), device.gid()), (0, NOBODY));
    let control = std::fs::metadata(&d.control).expect("stat the control socket");
    assert_eq!(control.mode() & 0o7777, 0o600);
    assert_eq!(control.uid(), 0);
}
