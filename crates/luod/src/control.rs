//! The control socket (SPEC §8.4): newline-delimited JSON for `luoctl`.
//!
//! Requests are answered in order, one line each. A line that is not a request
//! gets `{"ok":false,"errno":22,...}`; a line longer than
//! [`MAX_CONTROL_LINE`](luo_wire::control::MAX_CONTROL_LINE) gets the same and
//! the connection is closed. `update` is answered by the *next* epoch: the
//! requester's connection is carried across the exec.

use std::os::fd::AsFd;

use luo_uapi::rfc_v4::Event;
use luo_wire::control::{
    ControlReply, ControlRequest, FileStatus, MAX_CONTROL_LINE, SessionStatus, Status,
};
use rustix::event::epoll;
use rustix::io::Errno;

use crate::server::{Conn, Daemon};

/// The message of an error and of every source under it, joined by ": ".
pub(crate) fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(inner) = source {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        source = inner.source();
    }
    s
}

fn engine_reply(r: luo_core::Result<()>) -> ControlReply {
    match r {
        Ok(()) => ControlReply::ok(),
        Err(e) => ControlReply::failed(e.errno(), chain(&e)),
    }
}

/// The status `luoctl status` shows.
pub(crate) fn status(d: &Daemon) -> Status {
    let sessions = d
        .orch
        .sessions()
        .map(|s| SessionStatus {
            name: s.name().to_owned(),
            owner_uid: s.owner(),
            state: s.state().name().to_owned(),
            incoming: s.incoming(),
            retrieved: s.retrieved(),
            files: s
                .files()
                .iter()
                .map(|f| FileStatus {
                    token: f.token(),
                    handler: f.compatible().to_owned(),
                    description: f.describe(),
                    restored: f.restored(),
                })
                .collect(),
        })
        .collect();
    Status {
        state: d.orch.state().name().to_owned(),
        epoch: d.orch.epoch(),
        pid: rustix::process::getpid().as_raw_nonzero().get() as u32,
        version: env!("CARGO_PKG_VERSION").to_owned(),
        device_handles: d.device_holders,
        preserved_files: d.orch.preserved_count(),
        sessions,
    }
}

/// The reply to one line; `None` when the update took over the connection (it
/// answers from the next epoch).
fn handle(d: &mut Daemon, token: u64, line: &[u8]) -> Option<ControlReply> {
    let req: ControlRequest = match serde_json::from_slice(line) {
        Ok(r) => r,
        Err(e) => {
            return Some(ControlReply::failed(
                Errno::INVAL,
                format!("Bad request: {e}"),
            ));
        }
    };
    tracing::debug!(?req, "control request");
    Some(match req {
        ControlRequest::Status => ControlReply {
            status: Some(status(d)),
            ..ControlReply::ok()
        },
        ControlRequest::Version => ControlReply {
            version: Some(env!("CARGO_PKG_VERSION").to_owned()),
            ..ControlReply::ok()
        },
        ControlRequest::Prepare => engine_reply(d.global_event(Event::Prepare as u32)),
        ControlRequest::Cancel => engine_reply(d.global_event(Event::Cancel as u32)),
        ControlRequest::Finish => engine_reply(d.global_event(Event::Finish as u32)),
        ControlRequest::HandoverDump => {
            match d.started_from.as_deref().map(luo_core::Handover::decode) {
                Some(Ok(image)) => ControlReply {
                    dump: Some(image.dump()),
                    ..ControlReply::ok()
                },
                Some(Err(e)) => {
                    ControlReply::failed(Errno::IO, format!("The image no longer decodes: {e}"))
                }
                None => {
                    ControlReply::failed(Errno::NOENT, "This epoch did not start from a handover")
                }
            }
        }
        ControlRequest::Update { exec } => match crate::update::update(d, token, exec.as_deref()) {
            Ok(()) => return None,
            Err(reply) => *reply,
        },
    })
}

/// Serve the control handle `token`, which epoll reported with `flags`.
pub(crate) fn ready(d: &mut Daemon, token: u64, flags: epoll::EventFlags) {
    let mut eof = false;
    let mut inbuf = match d.conns.get_mut(&token) {
        Some(Conn::Control { inbuf, .. }) => std::mem::take(inbuf),
        _ => return,
    };
    if flags.intersects(epoll::EventFlags::IN | epoll::EventFlags::HUP | epoll::EventFlags::ERR) {
        let Some(conn) = d.conns.get(&token) else {
            return;
        };
        let mut buf = [0u8; 4096];
        loop {
            match rustix::io::read(conn.fd(), &mut buf) {
                Ok(0) => {
                    eof = true;
                    break;
                }
                Ok(n) => inbuf.extend_from_slice(&buf[..n]),
                Err(Errno::INTR) => {}
                Err(Errno::AGAIN) => break,
                Err(_) => {
                    eof = true;
                    break;
                }
            }
            if inbuf.len() > MAX_CONTROL_LINE {
                break;
            }
        }
    }
    let mut out = Vec::new();
    while let Some(pos) = inbuf.iter().position(|&b| b == b'\n') {
        let line: Vec<u8> = inbuf.drain(..=pos).collect();
        match handle(d, token, &line[..pos]) {
            Some(reply) => push_line(&mut out, &reply),
            None => return,
        }
    }
    if inbuf.len() > MAX_CONTROL_LINE {
        push_line(
            &mut out,
            &ControlReply::failed(Errno::INVAL, "Request line too long"),
        );
        eof = true;
        inbuf.clear();
        // Closing with unread input would reset the connection and lose the
        // reply: take in what the peer already sent, and drop it.
        if let Some(conn) = d.conns.get(&token) {
            let mut sink = [0u8; 4096];
            while matches!(rustix::io::read(conn.fd(), &mut sink), Ok(n) if n > 0) {}
        }
    }
    let Some(Conn::Control {
        inbuf: slot,
        outbuf,
        ..
    }) = d.conns.get_mut(&token)
    else {
        return;
    };
    *slot = inbuf;
    outbuf.extend_from_slice(&out);
    if !flush(d, token) || (eof && pending(d, token) == 0) {
        d.close_conn(token);
    }
}

fn pending(d: &Daemon, token: u64) -> usize {
    match d.conns.get(&token) {
        Some(Conn::Control { outbuf, .. }) => outbuf.len(),
        _ => 0,
    }
}

fn push_line(out: &mut Vec<u8>, reply: &ControlReply) {
    // Serializing our own types cannot fail; an empty object would still be a line.
    out.extend_from_slice(&serde_json::to_vec(reply).unwrap_or_else(|_| b"{}".to_vec()));
    out.push(b'\n');
}

/// Write what is queued; watch for writability while anything is left. False if
/// the peer is gone.
fn flush(d: &mut Daemon, token: u64) -> bool {
    let Some(Conn::Control { fd, outbuf, .. }) = d.conns.get_mut(&token) else {
        return false;
    };
    while !outbuf.is_empty() {
        match rustix::io::write(&*fd, outbuf) {
            Ok(n) => {
                outbuf.drain(..n);
            }
            Err(Errno::INTR) => {}
            Err(Errno::AGAIN) => break,
            Err(_) => return false,
        }
    }
    let mut interest = epoll::EventFlags::IN;
    if !outbuf.is_empty() {
        interest |= epoll::EventFlags::OUT;
    }
    epoll::modify(
        &d.epoll,
        fd.as_fd(),
        epoll::EventData::new_u64(token),
        interest,
    )
    .is_ok()
}
