//! The live update across a real `execve` of `luod` (issue 4, SPEC §7), in the
//! shape of the kernel's kexec selftests: state is set up, the daemon re-executes
//! itself, and the next epoch must hand back every byte.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::{AsFd, OwnedFd};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use common::*;
use luo::{Errno, Event, State};

fn payload(tag: &str, n: usize) -> Vec<u8> {
    (0..n)
        .map(|i| tag.as_bytes()[i % tag.len()] ^ (i as u8))
        .collect()
}

#[test]
fn a_memfd_survives_the_update() {
    let d = Luod::start();
    let pid = d.pid();
    let dev = d.luo();
    let s = dev.create_session("test-session").expect("create");
    let m = memfd("kexec", b"hello kexec world");
    s.preserve(&m, 0x1A).expect("preserve");
    drop(m);
    d.prepare();
    let r = d.update(None);
    assert!(r.ok, "update: {:?}", r.error);
    let report = r.update.expect("update report");
    assert_eq!((report.epoch, report.sessions, report.files), (1, 1, 1));
    assert_eq!(
        d.pid(),
        pid,
        "the pid stays, as the machine stays under kexec"
    );

    assert!(
        s.state().expect_err("old handle").is_stale(),
        "old session handle is stale"
    );
    assert!(
        dev.state().expect_err("old device").is_stale(),
        "old device handle is stale"
    );
    drop((s, dev));
    let dev = d.luo();
    assert_eq!(dev.state().expect("state"), State::Updated);
    let s = dev.retrieve_session("test-session").expect("retrieve");
    assert_eq!(s.state().expect("state"), State::Updated);
    let m = s.restore(0x1A).expect("restore");
    assert_eq!(contents(&m), b"hello kexec world");
    s.set_event(Event::Finish).expect("session finish");
    assert_eq!(s.state().expect("state"), State::Normal);
    dev.set_event(Event::Finish).expect("global finish");
    assert_eq!(d.status().state, "normal");
}

#[test]
fn five_sessions_in_every_state_cross_and_the_unretrieved_one_is_dropped() {
    let d = Luod::start();
    let dev = d.luo();
    let mut sessions = Vec::new();
    for name in ["A", "B", "C", "D", "E"] {
        let s = dev.create_session(name).expect("create");
        for t in 0..5u64 {
            let m = memfd(
                name,
                &payload(&format!("{name}{t}"), 4096 + t as usize * 1000),
            );
            s.preserve(&m, t).expect("preserve");
        }
        sessions.push(s);
    }
    sessions[0].set_event(Event::Prepare).expect("A prepare");
    sessions[2].set_event(Event::Prepare).expect("C prepare");
    sessions[1].set_event(Event::Prepare).expect("B prepare");
    sessions[1].set_event(Event::Cancel).expect("B cancel");
    assert_eq!(sessions[1].state().expect("B"), State::Normal);
    dev.set_event(Event::Prepare).expect("global prepare");
    for s in &sessions {
        assert_eq!(s.state().expect("state"), State::Prepared);
    }
    drop(dev);
    let baseline_files = d.status().preserved_files;
    assert_eq!(baseline_files, 25);
    let r = d.update(None);
    assert!(r.ok, "update: {:?}", r.error);
    drop(sessions);

    let dev = d.luo();
    for name in ["A", "B", "C", "D"] {
        let s = dev.retrieve_session(name).expect("retrieve");
        for t in 0..5u64 {
            let m = s.restore(t).expect("restore");
            assert_eq!(
                contents(&m),
                payload(&format!("{name}{t}"), 4096 + t as usize * 1000),
                "{name}/{t}"
            );
        }
        s.set_event(Event::Finish).expect("finish");
        // Keep the handle: the session lives on, its files preserved.
        std::mem::forget(s.into_fd());
    }
    assert_eq!(d.memfd_count(), 25);
    dev.set_event(Event::Finish).expect("global finish drops E");
    let st = d.status();
    assert_eq!(st.state, "normal");
    assert!(st.sessions.iter().all(|s| s.name != "E"), "E is gone");
    assert_eq!(st.preserved_files, 20);
    assert_eq!(d.memfd_count(), 20, "E's five memfds are closed");
}

#[test]
fn of_two_memfds_only_the_restored_one_stays() {
    let d = Luod::start();
    let dev = d.luo();
    let s = dev.create_session("pair").expect("create");
    s.preserve(memfd("one", b"one"), 1).expect("preserve 1");
    s.preserve(memfd("two", b"two"), 2).expect("preserve 2");
    d.prepare();
    assert!(d.update(None).ok);
    drop((s, dev));
    let s = luo::retrieve_session_at(&d.socket, "pair").expect("retrieve");
    assert_eq!(contents(&s.restore(2).expect("restore 2")), b"two");
    s.set_event(Event::Finish).expect("finish");
    let st = d.status();
    let files: Vec<u64> = st.sessions[0].files.iter().map(|f| f.token).collect();
    assert_eq!(files, [2], "FINISH dropped the file never restored");
    assert_eq!(
        s.restore(1).expect_err("gone").errno(),
        Errno::BUSY,
        "no more restores after FINISH"
    );
}

#[test]
fn restored_files_ride_the_next_update_too() {
    let d = Luod::start();
    let s = luo::create_session_at(&d.socket, "long-lived").expect("create");
    s.preserve(memfd("ram", b"epoch zero"), 7)
        .expect("preserve");
    s.preserve(memfd("tmp", b"scratch"), 8).expect("preserve");
    d.prepare();
    assert!(d.update(None).ok);
    drop(s);

    let s = luo::retrieve_session_at(&d.socket, "long-lived").expect("retrieve 1");
    let ram = s.restore(7).expect("restore");
    let tmp = s.restore(8).expect("restore");
    rustix::io::pwrite(&ram, b"epoch one!", 0).expect("write");
    s.set_event(Event::Finish).expect("finish");
    // The one-step helper's device handle closes asynchronously: wait for it.
    luo::Device::open_at_retrying(&d.socket, luo::BUSY_TIMEOUT)
        .expect("dev")
        .set_event(Event::Finish)
        .expect("global finish");
    // Between updates: unpreserve token 8 and preserve a new file under it.
    s.unpreserve(8).expect("unpreserve");
    drop(tmp);
    s.preserve(memfd("tmp2", b"second scratch"), 8)
        .expect("re-preserve token 8");
    d.prepare();
    let r = d.update(None);
    assert!(r.ok, "second update: {:?}", r.error);
    assert_eq!(r.update.expect("report").epoch, 2);
    drop((s, ram));

    let s = luo::retrieve_session_at(&d.socket, "long-lived").expect("retrieve 2");
    assert_eq!(contents(&s.restore(7).expect("restore 7")), b"epoch one!");
    assert_eq!(
        contents(&s.restore(8).expect("restore 8")),
        b"second scratch"
    );
}

/// Child role: a service that owns a listening socket across the update. Run by
/// [`a_listening_socket_changes_hands_and_nobody_is_refused`] only.
#[test]
#[ignore = "a child role, run by another test"]
fn role_service() {
    let Ok(role) = std::env::var("LUO_TEST_ROLE") else {
        return;
    };
    let socket = std::env::var("LUO_SOCKET").expect("LUO_SOCKET");
    let listener = if role == "old" {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        let s = luo::create_session_at(&socket, "proxy").expect("create");
        s.preserve(&l, 1).expect("preserve listener");
        println!("\nLUO-ROLE port {}", l.local_addr().expect("addr").port());
        std::mem::forget(s.into_fd()); // the session lives as long as this process
        l
    } else {
        let s = luo::retrieve_session_at(&socket, "proxy").expect("retrieve");
        let l = TcpListener::from(s.restore(1).expect("restore listener"));
        s.set_event(Event::Finish).expect("finish");
        std::mem::forget(s.into_fd());
        println!("\nLUO-ROLE ready");
        l
    };
    // Serve until told to stop on stdin.
    let stop = Arc::new(AtomicBool::new(false));
    let watch = stop.clone();
    std::thread::spawn(move || {
        let _ = std::io::stdin().read_line(&mut String::new());
        watch.store(true, Ordering::SeqCst);
    });
    listener.set_nonblocking(true).expect("nonblocking");
    while !stop.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((mut c, _)) => {
                let _ = c.write_all(role.as_bytes());
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
            Err(e) => panic!("accept: {e}"),
        }
    }
}

fn spawn_role(d: &Luod, role: &str) -> (std::process::Child, BufReader<std::process::ChildStdout>) {
    let mut child = Command::new(std::env::current_exe().expect("exe"))
        .args([
            "--exact",
            "role_service",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("LUO_TEST_ROLE", role)
        .env("LUO_SOCKET", &d.socket)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn role");
    let out = BufReader::new(child.stdout.take().expect("stdout"));
    (child, out)
}

fn read_until(out: &mut BufReader<std::process::ChildStdout>, prefix: &str) -> String {
    loop {
        let mut line = String::new();
        assert!(
            out.read_line(&mut line).expect("read child") > 0,
            "child exited before {prefix:?}"
        );
        if let Some(at) = line.find(&format!("LUO-ROLE {prefix}")) {
            return line[at + "LUO-ROLE ".len() + prefix.len()..]
                .trim()
                .to_owned();
        }
    }
}

#[test]
fn a_listening_socket_changes_hands_and_nobody_is_refused() {
    let d = Luod::start();
    let (mut old, mut old_out) = spawn_role(&d, "old");
    let port: u16 = read_until(&mut old_out, "port").parse().expect("port");

    let stop = Arc::new(AtomicBool::new(false));
    let refused = Arc::new(AtomicUsize::new(0));
    let daemon_refused = Arc::new(AtomicUsize::new(0));
    let answers = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let tcp = {
        let (stop, refused, answers) = (stop.clone(), refused.clone(), answers.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                match TcpStream::connect(("127.0.0.1", port)) {
                    Ok(mut c) => {
                        let mut s = String::new();
                        if c.read_to_string(&mut s).is_ok() && !s.is_empty() {
                            answers.lock().expect("lock").push(s);
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                        refused.fetch_add(1, Ordering::SeqCst);
                    }
                    Err(e) => panic!("connect: {e}"),
                }
            }
        })
    };
    let device = {
        let (stop, daemon_refused, path) = (stop.clone(), daemon_refused.clone(), d.socket.clone());
        std::thread::spawn(move || {
            let mut n = 0usize;
            while !stop.load(Ordering::SeqCst) {
                let fd = rustix::net::socket_with(
                    rustix::net::AddressFamily::UNIX,
                    rustix::net::SocketType::SEQPACKET,
                    rustix::net::SocketFlags::CLOEXEC,
                    None,
                )
                .expect("socket");
                match rustix::net::connect(
                    &fd,
                    &rustix::net::SocketAddrUnix::new(&path).expect("addr"),
                ) {
                    Ok(()) => n += 1,
                    Err(Errno::CONNREFUSED | Errno::NOENT) => {
                        daemon_refused.fetch_add(1, Ordering::SeqCst);
                    }
                    Err(e) => panic!("connect daemon: {e}"),
                }
            }
            n
        })
    };

    d.prepare();
    let r = d.update(None);
    assert!(r.ok, "update: {:?}", r.error);
    let (mut new, mut new_out) = spawn_role(&d, "new");
    read_until(&mut new_out, "ready");
    writeln!(old.stdin.as_mut().expect("stdin"), "quit").expect("tell old to quit");
    assert!(old.wait().expect("old exits").success());
    // Wait until the new service has answered someone, then stop the clients.
    while !answers.lock().expect("lock").iter().any(|a| a == "new") {
        std::thread::yield_now();
    }
    stop.store(true, Ordering::SeqCst);
    tcp.join().expect("tcp client");
    let daemon_connects = device.join().expect("device client");
    writeln!(new.stdin.as_mut().expect("stdin"), "quit").expect("tell new to quit");
    assert!(new.wait().expect("new exits").success());

    let answers = answers.lock().expect("lock");
    assert!(
        answers.iter().any(|a| a == "old"),
        "the old service answered"
    );
    assert_eq!(
        refused.load(Ordering::SeqCst),
        0,
        "no TCP client was refused"
    );
    assert_eq!(
        daemon_refused.load(Ordering::SeqCst),
        0,
        "no daemon client was refused"
    );
    assert!(daemon_connects > 0);
}

#[test]
fn old_handles_are_stale_and_no_fd_leaks_across_epochs() {
    let d = Luod::start();
    let fixed = d.idle_fd_count();
    let dev = d.luo();
    let s = dev.create_session("leaky").expect("create");
    for t in 0..10 {
        s.preserve(memfd("f", b"x"), t).expect("preserve");
    }
    d.prepare();
    assert!(d.update(None).ok);
    assert!(s.unpreserve(0).expect_err("stale").is_stale());
    assert!(s.restore(0).expect_err("stale").is_stale());
    assert!(dev.create_session("new").expect_err("stale").is_stale());
    drop((s, dev));
    // Every old handle is gone; what is left is the fixed set and the 10 files.
    d.wait_fd_count(fixed + 10);
    let s = luo::retrieve_session_at(&d.socket, "leaky").expect("retrieve");
    s.set_event(Event::Finish).expect("finish drops all ten");
    drop(s);
    d.wait_fd_count(fixed);
}

// ----- rollback ----------------------------------------------------------------------

/// Sessions as they were, data intact, and a later good update still works.
fn assert_rolled_back_then_good_update(d: &Luod, s: &luo::Session) {
    assert_eq!(
        s.state().expect("the old handle still works"),
        State::Prepared
    );
    let st = d.status();
    assert_eq!(st.state, "prepared");
    assert_eq!(st.epoch, 0);
    assert_eq!(st.preserved_files, 1);
    let r = d.update(None);
    assert!(r.ok, "the good update after a failed one: {:?}", r.error);
    let s = luo::retrieve_session_at(&d.socket, "precious").expect("retrieve");
    assert_eq!(contents(&s.restore(1).expect("restore")), b"do not lose me");
}

fn prepared_session(d: &Luod) -> luo::Session {
    let s = luo::create_session_at(&d.socket, "precious").expect("create");
    s.preserve(memfd("precious", b"do not lose me"), 1)
        .expect("preserve");
    d.prepare();
    s
}

#[test]
fn update_to_a_missing_binary_rolls_back() {
    let d = Luod::start();
    let s = prepared_session(&d);
    let r = d.update(Some("/nonexistent/luod"));
    assert!(!r.ok);
    let why = r.error.expect("reason");
    assert!(
        why.contains("/nonexistent/luod") && why.contains("cannot start"),
        "{why}"
    );
    assert_rolled_back_then_good_update(&d, &s);
}

#[test]
fn update_to_a_program_that_exits_at_once_rolls_back() {
    let d = Luod::start();
    let s = prepared_session(&d);
    let r = d.update(Some("/bin/true"));
    assert!(!r.ok);
    let why = r.error.expect("reason");
    assert!(why.contains("did not confirm"), "{why}");
    assert_rolled_back_then_good_update(&d, &s);
}

#[test]
fn update_to_a_luod_that_cannot_read_this_format_rolls_back() {
    let d = Luod::start();
    let s = prepared_session(&d);
    // A luod that only reads a future format, as a later release might.
    let future = d.dir.path().join("future-luod");
    std::fs::write(
        &future,
        format!(
            "#!/bin/sh\nexport {}=luod-handover-v2\nexec {LUOD} \"$@\"\n",
            luod::update::ONLY_FORMAT_ENV
        ),
    )
    .expect("write wrapper");
    rustix::fs::chmod(&future, rustix::fs::Mode::from_raw_mode(0o755)).expect("chmod");
    let r = d.update(Some(future.to_str().expect("utf-8")));
    assert!(!r.ok);
    let why = r.error.expect("reason");
    assert!(why.contains("Unknown format"), "{why}");
    assert_rolled_back_then_good_update(&d, &s);
}

#[test]
fn a_new_image_that_fails_after_the_exec_hands_everything_back() {
    let d = Luod::start_with(&[], &[(luod::update::FAIL_RESUME_ENV, "1")]);
    let pid = d.pid();
    let s = prepared_session(&d);
    let r = d.update(None);
    assert!(!r.ok, "the update must report the failure");
    let why = r.error.expect("reason");
    assert!(why.contains("rolled back"), "{why}");
    assert_eq!(d.pid(), pid);
    assert!(
        s.state()
            .expect_err("handles went stale with the exec")
            .is_stale()
    );
    // The previous binary serves the same sessions, ready to be restored.
    let st = d.status();
    assert_eq!(st.state, "updated");
    let s = luo::retrieve_session_at(&d.socket, "precious").expect("retrieve");
    assert_eq!(contents(&s.restore(1).expect("restore")), b"do not lose me");
    s.set_event(Event::Finish).expect("finish");
    // The one-step helper's device handle closes asynchronously: wait for it.
    luo::Device::open_at_retrying(&d.socket, luo::BUSY_TIMEOUT)
        .expect("dev")
        .set_event(Event::Finish)
        .expect("global finish");
    // And a later update works (the failure knob fired once).
    d.prepare();
    let r = d.update(None);
    assert!(r.ok, "{:?}", r.error);
}

#[test]
fn only_one_update_runs_and_the_next_epoch_answers_the_other_request() {
    use luo_wire::control::ControlRequest;
    let d = Luod::start();
    let _s = prepared_session(&d);
    let mut a = d.control_conn();
    let mut b = d.control_conn();
    assert!(
        b.call(&ControlRequest::Version).ok,
        "b is connected before the update"
    );
    let update = b"{\"op\":\"update\"}\n";
    a.send_line(update);
    b.send_line(update);
    let (ra, rb) = (
        a.read_reply().expect("a answered"),
        b.read_reply().expect("b answered"),
    );
    d.wait_ready();
    assert_eq!(
        u8::from(ra.ok) + u8::from(rb.ok),
        1,
        "exactly one update ran: {ra:?} {rb:?}"
    );
    let refused = if ra.ok { &rb } else { &ra };
    assert_eq!(
        refused.errno,
        Some(Errno::INVAL.raw_os_error()),
        "{refused:?}"
    );
    // Both connections crossed the exec and still serve.
    for c in [&mut a, &mut b] {
        let st = c.call(&ControlRequest::Status).status.expect("status");
        assert_eq!((st.state.as_str(), st.epoch), ("updated", 1));
    }
}

#[test]
fn an_update_from_normal_is_refused_and_changes_nothing() {
    let d = Luod::start();
    let s = luo::create_session_at(&d.socket, "idle").expect("create");
    let r = d.update(None);
    assert!(!r.ok);
    assert_eq!(r.errno, Some(Errno::INVAL.raw_os_error()));
    assert_eq!(s.state().expect("still served"), State::Normal);
    let _ = s.as_fd();
}

#[allow(dead_code)]
fn unused(_: OwnedFd) {}

/// luod's children now (the dry run's child waits among them while PREPARED).
fn children(pid: u32) -> Vec<String> {
    let mut out = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).expect("tasks") {
        let path = task.expect("task").path().join("children");
        let ids = std::fs::read_to_string(path).unwrap_or_default();
        for child in ids.split_whitespace() {
            let cmdline = std::fs::read(format!("/proc/{child}/cmdline")).unwrap_or_default();
            out.push(String::from_utf8_lossy(&cmdline).replace('\0', " "));
        }
    }
    out
}

/// Wait until luod has `want` dry-run children (a child is visible as one
/// once its exec is through).
fn wait_dry_runs(d: &Luod, want: usize, why: &str) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let now = children(d.pid());
        let n = now
            .iter()
            .filter(|c| c.contains("--check-handover"))
            .count();
        if n == want {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{why}: {n} dry-run children, not {want}: {now:?}\n{}",
            d.log()
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

/// PREPARE readies the update's dry run (a `--check-handover` child waiting for
/// the image, its exec over before PREPARE answers); CANCEL ends it; an update
/// uses it and leaves no child behind.
#[test]
fn the_dry_run_waits_from_prepare_and_goes_with_it() {
    let d = Luod::start();
    let dev = d.luo();
    let s = dev.create_session("standby").expect("create");
    s.preserve(memfd("m", b"standby"), 1).expect("preserve");
    wait_dry_runs(&d, 0, "NORMAL");
    d.prepare();
    wait_dry_runs(&d, 1, "PREPARED");
    assert!(
        d.log().contains("started=true"),
        "PREPARE answered once the child ran:\n{}",
        d.log()
    );
    dev.set_event(Event::Cancel).expect("cancel");
    wait_dry_runs(&d, 0, "after CANCEL");
    d.prepare();
    wait_dry_runs(&d, 1, "PREPARED again");
    let report = d.update_prepared();
    assert_eq!(report.files, 1);
    assert!(
        d.log().contains("started_at_prepare=true"),
        "the update used the child PREPARE started:\n{}",
        d.log()
    );
    wait_dry_runs(&d, 0, "after the update");
}

/// The dry run's child writes its verdict to standard output; when nobody
/// reads it any more, the check fails with an exit status, not a panic.
#[test]
fn a_dry_run_whose_output_is_closed_fails_quietly() {
    use std::process::{Command, Stdio};
    let (read, write) = rustix::pipe::pipe().expect("pipe");
    drop(read);
    let out = Command::new(common::LUOD)
        .arg("--check-handover")
        .stdin(Stdio::null())
        .stdout(Stdio::from(write))
        .stderr(Stdio::piped())
        .output()
        .expect("run luod");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
}
