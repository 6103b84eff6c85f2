//! `luoctl demo-service`: the stateful service that `luoctl demo` carries across
//! a live update. A small key-value store on TCP whose whole state is two fds,
//! exactly what LUO preserves:
//!
//! - its **memory**: a 64 MiB memfd of fixed-size slots, read and written with
//!   `pread`/`pwrite` (token [`MEMORY_TOKEN`]);
//! - its **listening socket**: a `TcpListener` on 127.0.0.1 (token
//!   [`LISTENER_TOKEN`]), whose accept queue holds the clients that connect while
//!   no instance is accepting.
//!
//! # Lifecycle
//! ```text
//! fresh start                              --takeover (after luod's live update)
//! ───────────                              ──────────
//! memfd (sealed to its size) + listener    retrieve session "demo-kv"
//! create session "demo-kv"                 restore token 1 (memfd), 2 (listener)
//! preserve token 1, token 2                check the store's header
//! print "serving ADDR", serve              print "ready ADDR", wait for "go" on stdin
//!                                          session FINISH (the restored files stay
//!                                            preserved for the next update), serve
//! "quit" (or end of stdin): stop accepting, answer the connections in flight,
//! print "stopped SERVED", exit 0
//! ```
//! Both instances hold the same memfd and the same listening socket (the same
//! open files, not copies). They never serve at the same time: the driver tells
//! the old one to quit, waits for "stopped", then tells the new one to go;
//! clients connecting in between wait in the accept queue and are not refused.
//!
//! # Protocol: one request per line, one reply per line, many per connection
//! ```text
//! PING          → PONG <pid>
//! SET <k> <v>   → OK <pid>               k: 1 to 64 bytes, no blanks; v: up to 188 bytes
//! GET <k>       → VALUE <pid> <v> | NONE <pid>
//! SESSION       → SESSION <pid> <state>  the LUO session as luod answers now: normal,
//!                                        prepared, frozen, updated, or stale
//! anything else → ERR <pid> <reason>
//! ```
//! Every reply names the pid that served it, so a client can tell the instances
//! apart.
//!
//! # Unhappy paths
//! - luod's own live update makes this instance's session handle stale (ESTALE).
//!   The instance goes on serving: its memory and socket are its own fds, which
//!   the daemon's update does not touch; `SESSION` answers `stale`.
//! - `--takeover` with no session to retrieve (no update happened, or luod dropped
//!   it), a missing token, or a memfd that is not this store's: exit 1 with the
//!   reason on stderr, before saying "ready".
//! - A full store, an oversized key or value, or an unknown request is answered
//!   `ERR` and changes nothing.
//! - `O_NONBLOCK` belongs to the open file, which both instances and luod share,
//!   so the listener stays blocking: the accept loop polls it together with a
//!   wake-up socket that "quit" writes to.

use std::fs::File;
use std::io::{self, BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::OwnedFd;
use std::os::unix::fs::FileExt;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use luo::{Event, Session};
use rustix::event::{PollFd, PollFlags};
use rustix::fs::{MemfdFlags, SealFlags};

use crate::error::Error;

/// The service's LUO session.
pub const SESSION_NAME: &str = "demo-kv";
/// The token of the store's memfd in [`SESSION_NAME`].
pub const MEMORY_TOKEN: u64 = 1;
/// The token of the listening socket in [`SESSION_NAME`].
pub const LISTENER_TOKEN: u64 = 2;
/// The store's size: the memfd's, fixed by seals.
pub const STORE_BYTES: u64 = 64 << 20;
/// The longest key.
pub const MAX_KEY: usize = 64;
/// The longest value.
pub const MAX_VALUE: usize = SLOT_BYTES - SLOT_META - MAX_KEY;

/// The first page holds the header; slots follow.
const HEADER_BYTES: u64 = 4096;
const SLOT_BYTES: usize = 256;
/// Per slot: used flag, key length, value length (u16 LE).
const SLOT_META: usize = 4;
const SLOTS: u64 = (STORE_BYTES - HEADER_BYTES) / SLOT_BYTES as u64;
/// The store's format, first in the memfd, so that a new instance refuses memory
/// it does not understand rather than misreading it.
const MAGIC: &[u8; 16] = b"luo-demo-kv-v1\0\0";
/// A request line longer than this is refused and the connection closed.
const MAX_LINE: usize = 4096;
/// How often an idle connection checks whether the instance is stopping.
const IDLE_CHECK: Duration = Duration::from_millis(50);
/// How long a stopping instance waits for the first request of a connection it
/// accepted: the client connected to send one, and may just be slow to.
const FIRST_REQUEST_GRACE: Duration = Duration::from_secs(2);

/// The key-value store in a memfd: open addressing (FNV-1a, linear probing) over
/// fixed-size slots; no deletes, so the first empty slot ends a probe.
#[derive(Debug)]
pub(crate) struct Store {
    file: File,
}

fn header() -> [u8; 32] {
    let mut h = [0u8; 32];
    h[..16].copy_from_slice(MAGIC);
    h[16..24].copy_from_slice(&STORE_BYTES.to_le_bytes());
    h[24..28].copy_from_slice(&(SLOT_BYTES as u32).to_le_bytes());
    h
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

impl Store {
    /// A new, empty store in a new memfd.
    fn create() -> io::Result<Store> {
        let fd =
            rustix::fs::memfd_create("demo-kv", MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING)?;
        rustix::fs::ftruncate(&fd, STORE_BYTES)?;
        // luod refuses to restore a memfd whose size changed after the freeze;
        // the seals make that impossible rather than unlikely.
        rustix::fs::fcntl_add_seals(&fd, SealFlags::GROW | SealFlags::SHRINK | SealFlags::SEAL)?;
        let file = File::from(fd);
        file.write_all_at(&header(), 0)?;
        Ok(Store { file })
    }

    /// The store in a restored memfd.
    fn open(fd: OwnedFd) -> Result<Store, Error> {
        let file = File::from(fd);
        let size = file
            .metadata()
            .map_err(|e| Error::demo_by("Cannot stat the restored memfd", e))?
            .len();
        if size != STORE_BYTES {
            return Err(Error::demo(format!(
                "The restored memfd has {size} bytes, not {STORE_BYTES}: not this store"
            )));
        }
        let mut found = [0u8; 32];
        file.read_exact_at(&mut found, 0)
            .map_err(|e| Error::demo_by("Cannot read the restored memfd", e))?;
        if found != header() {
            return Err(Error::demo(format!(
                "The restored memfd does not start with the header of {:?}",
                String::from_utf8_lossy(&MAGIC[..14])
            )));
        }
        Ok(Store { file })
    }

    fn slot_offset(index: u64) -> u64 {
        HEADER_BYTES + index * SLOT_BYTES as u64
    }

    /// The slots to try for `key`, in order.
    fn probes(key: &[u8]) -> impl Iterator<Item = u64> {
        let start = fnv1a(key) % SLOTS;
        (0..SLOTS).map(move |i| (start + i) % SLOTS)
    }

    fn read_slot(&self, index: u64) -> io::Result<[u8; SLOT_BYTES]> {
        let mut slot = [0u8; SLOT_BYTES];
        self.file
            .read_exact_at(&mut slot, Self::slot_offset(index))?;
        Ok(slot)
    }

    /// A used slot's key and value; `None` for an empty one.
    fn decode(slot: &[u8; SLOT_BYTES]) -> io::Result<Option<(&[u8], &[u8])>> {
        if slot[0] == 0 {
            return Ok(None);
        }
        let key_len = usize::from(slot[1]);
        let value_len = usize::from(u16::from_le_bytes([slot[2], slot[3]]));
        if slot[0] != 1 || key_len > MAX_KEY || value_len > MAX_VALUE {
            return Err(io::Error::new(ErrorKind::InvalidData, "corrupt slot"));
        }
        let key = &slot[SLOT_META..SLOT_META + key_len];
        let value = &slot[SLOT_META + MAX_KEY..SLOT_META + MAX_KEY + value_len];
        Ok(Some((key, value)))
    }

    fn get(&self, key: &[u8]) -> io::Result<Option<Vec<u8>>> {
        for index in Self::probes(key) {
            let slot = self.read_slot(index)?;
            match Self::decode(&slot)? {
                None => return Ok(None),
                Some((k, v)) if k == key => return Ok(Some(v.to_vec())),
                Some(_) => {}
            }
        }
        Ok(None)
    }

    /// Sets `key` (1 to [`MAX_KEY`] bytes) to `value` (up to [`MAX_VALUE`]).
    fn set(&self, key: &[u8], value: &[u8]) -> io::Result<()> {
        if key.is_empty() || key.len() > MAX_KEY || value.len() > MAX_VALUE {
            return Err(io::Error::new(
                ErrorKind::InvalidInput,
                format!("key 1 to {MAX_KEY} bytes, value up to {MAX_VALUE}"),
            ));
        }
        for index in Self::probes(key) {
            let slot = self.read_slot(index)?;
            if matches!(Self::decode(&slot)?, Some((k, _)) if k != key) {
                continue;
            }
            let mut new = [0u8; SLOT_BYTES];
            new[0] = 1;
            new[1] = key.len() as u8;
            new[2..4].copy_from_slice(&(value.len() as u16).to_le_bytes());
            new[SLOT_META..SLOT_META + key.len()].copy_from_slice(key);
            new[SLOT_META + MAX_KEY..SLOT_META + MAX_KEY + value.len()].copy_from_slice(value);
            return self.file.write_all_at(&new, Self::slot_offset(index));
        }
        Err(io::Error::new(ErrorKind::StorageFull, "store full"))
    }
}

/// A reply, as a client reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Reply {
    Pong,
    Ok,
    Value(String),
    NotFound,
    Session(String),
    Err(String),
}

/// A reply and the pid of the instance that sent it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Answer {
    pub(crate) pid: u32,
    pub(crate) reply: Reply,
}

impl Answer {
    /// Parses one reply line (without its newline); `None` if it is not one.
    pub(crate) fn parse(line: &str) -> Option<Answer> {
        let (word, rest) = line.split_once(' ')?;
        let (pid, arg) = match rest.split_once(' ') {
            Some((pid, arg)) => (pid, Some(arg)),
            None => (rest, None),
        };
        let pid = pid.parse().ok()?;
        let reply = match (word, arg) {
            ("PONG", None) => Reply::Pong,
            ("OK", None) => Reply::Ok,
            ("NONE", None) => Reply::NotFound,
            ("VALUE", arg) => Reply::Value(arg.unwrap_or_default().to_owned()),
            ("SESSION", Some(state)) => Reply::Session(state.to_owned()),
            ("ERR", Some(reason)) => Reply::Err(reason.to_owned()),
            _ => return None,
        };
        Some(Answer { pid, reply })
    }
}

/// What the connection threads share.
#[derive(Debug)]
struct Shared {
    store: Mutex<Store>,
    session: Session,
    /// Requests answered.
    served: AtomicU64,
    /// Set on "quit": idle connections close, no new ones are accepted.
    stopping: AtomicBool,
}

impl Shared {
    /// The reply to one request line.
    fn answer(&self, line: &str) -> String {
        let pid = std::process::id();
        let mut words = line.splitn(3, ' ');
        match (words.next(), words.next(), words.next()) {
            (Some("PING"), None, None) => format!("PONG {pid}"),
            (Some("GET"), Some(key), None) => match self.with_store(|s| s.get(key.as_bytes())) {
                Ok(Some(value)) => format!("VALUE {pid} {}", String::from_utf8_lossy(&value)),
                Ok(None) => format!("NONE {pid}"),
                Err(e) => format!("ERR {pid} GET {key:?}: {e}"),
            },
            (Some("SET"), Some(key), value) => {
                match self.with_store(|s| s.set(key.as_bytes(), value.unwrap_or("").as_bytes())) {
                    Ok(()) => format!("OK {pid}"),
                    Err(e) => format!("ERR {pid} SET {key:?}: {e}"),
                }
            }
            (Some("SESSION"), None, None) => format!("SESSION {pid} {}", self.session_state()),
            _ => {
                let shown: String = line.chars().take(40).collect();
                format!("ERR {pid} unknown request {shown:?}")
            }
        }
    }

    fn with_store<T>(&self, f: impl FnOnce(&Store) -> io::Result<T>) -> io::Result<T> {
        // A panicking connection thread cannot leave a slot half written (one
        // pwrite per slot), so a poisoned lock is still a good store.
        let store = self
            .store
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        f(&store)
    }

    /// The session's state as luod answers now, `stale` after luod's update.
    fn session_state(&self) -> String {
        match self.session.state() {
            Ok(state) => state.name().to_owned(),
            Err(e) if e.is_stale() => "stale".to_owned(),
            Err(e) => luo::errno_name(e.errno()).unwrap_or("error").to_owned(),
        }
    }
}

/// `luoctl demo-service [--socket PATH] [--takeover]`; see the module docs. The
/// lines for the driver go to `out`.
///
/// # Errors
/// [`Error::Demo`]: the session cannot be created or retrieved (ENOENT, EAGAIN,
/// EEXIST from luod), a file cannot be preserved or restored, the restored memfd
/// is not this store, or the listener fails.
pub(crate) fn run(socket: &Path, takeover: bool, out: &mut dyn Write) -> Result<(), Error> {
    let (store, listener, session) = if takeover {
        take_over(socket)?
    } else {
        start_fresh(socket)?
    };
    let addr = listener
        .local_addr()
        .map_err(|e| Error::demo_by("The listener has no address", e))?;
    let (wake_rx, wake_tx) =
        UnixStream::pair().map_err(|e| Error::demo_by("Cannot make the wake-up socket", e))?;
    let (go_tx, go_rx) = mpsc::channel();
    watch_stdin(go_tx, wake_tx);
    if takeover {
        say(out, &format!("ready {addr}"));
        if go_rx.recv().is_err() {
            // "quit" before "go": the old instance goes on; leave without serving.
            say(out, "stopped 0");
            return Ok(());
        }
        session
            .set_event(Event::Finish)
            .map_err(|e| Error::demo_by(format!("Session {SESSION_NAME:?}: FINISH"), e))?;
    } else {
        say(out, &format!("serving {addr}"));
    }
    let shared = Arc::new(Shared {
        store: Mutex::new(store),
        session,
        served: AtomicU64::new(0),
        stopping: AtomicBool::new(false),
    });
    serve(&listener, &shared, &wake_rx)?;
    say(
        out,
        &format!("stopped {}", shared.served.load(Ordering::SeqCst)),
    );
    Ok(())
}

fn say(out: &mut dyn Write, line: &str) {
    // The driver reads these lines; if it is gone, nobody needs them.
    let _ = writeln!(out, "{line}").and_then(|()| out.flush());
}

fn start_fresh(socket: &Path) -> Result<(Store, TcpListener, Session), Error> {
    let store =
        Store::create().map_err(|e| Error::demo_by("Cannot create the store's memfd", e))?;
    let listener = TcpListener::bind("127.0.0.1:0")
        .map_err(|e| Error::demo_by("Cannot listen on 127.0.0.1", e))?;
    let session = luo::create_session_at(socket, SESSION_NAME).map_err(|e| {
        Error::demo_by(
            format!(
                "Cannot create session {SESSION_NAME:?} at {}",
                socket.display()
            ),
            e,
        )
    })?;
    let preserve = |fd: std::os::fd::BorrowedFd<'_>, token: u64| {
        session
            .preserve(fd, token)
            .map_err(|e| Error::demo_by(format!("Session {SESSION_NAME:?}: token {token:#x}"), e))
    };
    preserve(std::os::fd::AsFd::as_fd(&store.file), MEMORY_TOKEN)?;
    preserve(std::os::fd::AsFd::as_fd(&listener), LISTENER_TOKEN)?;
    Ok((store, listener, session))
}

fn take_over(socket: &Path) -> Result<(Store, TcpListener, Session), Error> {
    let session = luo::retrieve_session_at(socket, SESSION_NAME).map_err(|e| {
        Error::demo_by(
            format!(
                "Cannot retrieve session {SESSION_NAME:?} at {}",
                socket.display()
            ),
            e,
        )
    })?;
    let restore = |token: u64| {
        session
            .restore(token)
            .map_err(|e| Error::demo_by(format!("Session {SESSION_NAME:?}: token {token:#x}"), e))
    };
    let store = Store::open(restore(MEMORY_TOKEN)?)?;
    let listener = TcpListener::from(restore(LISTENER_TOKEN)?);
    Ok((store, listener, session))
}

/// Reads the driver's lines: "go" is sent on `go`; "quit" or the end of stdin
/// wakes the accept loop through `wake` (and drops `go`).
fn watch_stdin(go: mpsc::Sender<()>, wake: UnixStream) {
    thread::spawn(move || {
        for line in io::stdin().lock().lines() {
            match line.as_deref().map(str::trim) {
                Ok("go") => {
                    let _ = go.send(());
                }
                Ok("quit") | Err(_) => break,
                Ok(_) => {}
            }
        }
        drop(go);
        let _ = (&wake).write_all(b"q");
    });
}

/// Accepts until `wake` is readable, one thread per connection; then waits for
/// the connections in flight.
fn serve(listener: &TcpListener, shared: &Arc<Shared>, wake: &UnixStream) -> Result<(), Error> {
    let mut conns: Vec<JoinHandle<()>> = Vec::new();
    loop {
        let mut fds = [
            PollFd::new(listener, PollFlags::IN),
            PollFd::new(wake, PollFlags::IN),
        ];
        match rustix::event::poll(&mut fds, None) {
            Ok(_) => {}
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => {
                return Err(Error::demo_by(
                    "Cannot poll the listener",
                    io::Error::from(e),
                ));
            }
        }
        // Checked first: once told to quit, connections waiting in the queue are
        // the next instance's.
        if !fds[1].revents().is_empty() {
            break;
        }
        if fds[0].revents().is_empty() {
            continue;
        }
        match listener.accept() {
            Ok((stream, _)) => {
                conns.retain(|c| !c.is_finished());
                let shared = Arc::clone(shared);
                conns.push(thread::spawn(move || serve_connection(&stream, &shared)));
            }
            Err(e)
                if e.kind() == ErrorKind::Interrupted
                    || e.kind() == ErrorKind::ConnectionAborted => {}
            Err(e) => eprintln!("demo-service: accept failed: {e}"),
        }
    }
    shared.stopping.store(true, Ordering::SeqCst);
    for conn in conns {
        let _ = conn.join();
    }
    Ok(())
}

/// Answers every complete line of `stream` until its end, or until the instance
/// stops while the connection is idle. A connection with no request answered yet
/// has one in flight: it gets [`FIRST_REQUEST_GRACE`] to arrive.
fn serve_connection(stream: &TcpStream, shared: &Shared) {
    if stream.set_read_timeout(Some(IDLE_CHECK)).is_err() {
        return;
    }
    let accepted = Instant::now();
    let mut answered = false;
    let mut pending: Vec<u8> = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        while let Some(end) = pending.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = pending.drain(..=end).collect();
            let text = String::from_utf8_lossy(&line[..end]);
            let mut reply = shared.answer(text.trim_end_matches('\r'));
            reply.push('\n');
            if (&*stream).write_all(reply.as_bytes()).is_err() {
                return;
            }
            shared.served.fetch_add(1, Ordering::SeqCst);
            answered = true;
        }
        if pending.len() > MAX_LINE {
            let reply = format!(
                "ERR {} request longer than {MAX_LINE} bytes\n",
                std::process::id()
            );
            let _ = (&*stream).write_all(reply.as_bytes());
            return;
        }
        match (&*stream).read(&mut buf) {
            Ok(0) => return,
            Ok(n) => pending.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                let idle =
                    pending.is_empty() && (answered || accepted.elapsed() > FIRST_REQUEST_GRACE);
                if idle && shared.stopping.load(Ordering::SeqCst) {
                    return;
                }
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => return,
        }
    }
}

/// A client on one connection, one request at a time.
#[derive(Debug)]
pub(crate) struct Client {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl Client {
    /// Connects to `addr`; every read waits at most `timeout`.
    pub(crate) fn connect(addr: SocketAddr, timeout: Duration) -> io::Result<Client> {
        let stream = TcpStream::connect_timeout(&addr, timeout)?;
        stream.set_read_timeout(Some(timeout))?;
        stream.set_nodelay(true)?;
        Ok(Client {
            writer: stream.try_clone()?,
            reader: BufReader::new(stream),
        })
    }

    /// Sends `request` and reads its reply.
    pub(crate) fn ask(&mut self, request: &str) -> io::Result<Answer> {
        self.writer.write_all(format!("{request}\n").as_bytes())?;
        let mut line = String::new();
        if self.reader.read_line(&mut line)? == 0 || !line.ends_with('\n') {
            return Err(io::Error::new(
                ErrorKind::UnexpectedEof,
                "connection closed before the reply",
            ));
        }
        let line = line.trim_end_matches(['\n', '\r']);
        Answer::parse(line)
            .ok_or_else(|| io::Error::new(ErrorKind::InvalidData, format!("not a reply: {line:?}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_come_back_and_overwrite() {
        let store = Store::create().expect("store");
        assert_eq!(store.get(b"a").expect("get"), None);
        store.set(b"a", b"one").expect("set");
        store.set(b"b", b"").expect("set");
        assert_eq!(store.get(b"a").expect("get").as_deref(), Some(&b"one"[..]));
        assert_eq!(store.get(b"b").expect("get").as_deref(), Some(&b""[..]));
        store.set(b"a", b"two").expect("set");
        assert_eq!(store.get(b"a").expect("get").as_deref(), Some(&b"two"[..]));
    }

    #[test]
    fn many_keys_probe_past_each_other() {
        let store = Store::create().expect("store");
        for i in 0..5000 {
            store
                .set(format!("k{i}").as_bytes(), format!("v{i}").as_bytes())
                .expect("set");
        }
        for i in 0..5000 {
            let value = store.get(format!("k{i}").as_bytes()).expect("get");
            assert_eq!(value, Some(format!("v{i}").into_bytes()), "k{i}");
        }
    }

    #[test]
    fn limits_are_refused_without_change() {
        let store = Store::create().expect("store");
        let long_key = vec![b'k'; MAX_KEY + 1];
        let long_value = vec![b'v'; MAX_VALUE + 1];
        assert!(store.set(&long_key, b"x").is_err());
        assert!(store.set(b"", b"x").is_err());
        assert!(store.set(b"k", &long_value).is_err());
        assert_eq!(store.get(b"k").expect("get"), None);
        store
            .set(&[b'k'; MAX_KEY], &[b'v'; MAX_VALUE])
            .expect("largest");
    }

    #[test]
    fn a_second_handle_sees_the_same_memory_and_foreign_memfds_are_refused() {
        let store = Store::create().expect("store");
        store.set(b"kept", b"yes").expect("set");
        let again = Store::open(OwnedFd::from(store.file.try_clone().expect("dup"))).expect("open");
        assert_eq!(
            again.get(b"kept").expect("get").as_deref(),
            Some(&b"yes"[..])
        );

        let other = rustix::fs::memfd_create("other", MemfdFlags::CLOEXEC).expect("memfd");
        rustix::fs::ftruncate(&other, STORE_BYTES).expect("truncate");
        let e = Store::open(other).unwrap_err();
        assert!(e.one_line().contains("header"), "{e:?}");
        let small = rustix::fs::memfd_create("small", MemfdFlags::CLOEXEC).expect("memfd");
        assert!(
            Store::open(small)
                .unwrap_err()
                .one_line()
                .contains("0 bytes")
        );
    }

    #[test]
    fn the_size_is_sealed() {
        let store = Store::create().expect("store");
        assert!(store.file.set_len(STORE_BYTES * 2).is_err());
        assert!(store.file.set_len(1).is_err());
    }

    #[test]
    fn replies_parse_back() {
        for (line, reply) in [
            ("PONG 7", Reply::Pong),
            ("OK 7", Reply::Ok),
            ("NONE 7", Reply::NotFound),
            ("VALUE 7 a b c", Reply::Value("a b c".into())),
            ("VALUE 7 ", Reply::Value(String::new())),
            ("SESSION 7 stale", Reply::Session("stale".into())),
            (
                "ERR 7 unknown request",
                Reply::Err("unknown request".into()),
            ),
        ] {
            assert_eq!(
                Answer::parse(line),
                Some(Answer { pid: 7, reply }),
                "{line}"
            );
        }
        for bad in ["", "OK", "OK x", "PONG 7 extra", "HELLO 7", "SESSION 7"] {
            assert_eq!(Answer::parse(bad), None, "{bad:?}");
        }
    }
}
