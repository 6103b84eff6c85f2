//! A client of luod's control socket (SPEC §8.4): one JSON request per line, one
//! JSON reply per line, in order, on a `SOCK_STREAM` unix socket.
//!
//! # Unhappy paths
//! - No socket, or no daemon behind it: [`Error::Connect`].
//! - The daemon refuses (`"ok": false`): [`Error::Daemon`] with its errno and text.
//! - The connection ends before a reply (as it may while luod changes epoch):
//!   [`Error::NoReply`]; whether the request took effect is unknown, so look at
//!   `luoctl status`.
//! - A reply that is not JSON, is longer than [`MAX_REPLY`], or lacks the field
//!   its request needs: [`Error::BadReply`], [`Error::MissingField`].

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

use luo_wire::control::{ControlReply, ControlRequest, Status};

use crate::error::Error;

/// The longest reply line read (a status of many thousand sessions fits); a
/// longer one is [`Error::NoReply`].
///
/// ```
/// assert!(luoctl::MAX_REPLY >= luo_wire::control::MAX_CONTROL_LINE as u64);
/// ```
pub const MAX_REPLY: u64 = 64 << 20;

/// A connection to the control socket.
///
/// ```no_run
/// let mut control = luoctl::ControlClient::connect("/run/luo/control.sock")?;
/// let status = control.status()?;
/// println!("{} sessions", status.sessions.len());
/// # Ok::<(), luoctl::Error>(())
/// ```
#[derive(Debug)]
pub struct ControlClient {
    path: PathBuf,
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl ControlClient {
    /// Connects to the control socket at `path`.
    ///
    /// # Errors
    /// [`Error::Connect`]: ENOENT or ECONNREFUSED when luod is not running, EACCES
    /// when the socket is not ours to use.
    ///
    /// ```no_run
    /// let control = luoctl::ControlClient::connect("/run/luo/control.sock")?;
    /// # Ok::<(), luoctl::Error>(())
    /// ```
    pub fn connect(path: impl AsRef<Path>) -> Result<ControlClient, Error> {
        let path = path.as_ref().to_path_buf();
        let stream = UnixStream::connect(&path).map_err(|source| Error::Connect {
            path: path.clone(),
            source,
        })?;
        let writer = stream.try_clone().map_err(|source| Error::Io {
            path: path.clone(),
            source,
        })?;
        Ok(ControlClient {
            path,
            reader: BufReader::new(stream),
            writer,
        })
    }

    /// Sends `request` and returns its successful reply.
    ///
    /// # Errors
    /// [`Error::Daemon`] when the daemon refuses; [`Error::NoReply`],
    /// [`Error::BadReply`], [`Error::Io`] otherwise.
    ///
    /// ```no_run
    /// use luo_wire::control::ControlRequest;
    /// let mut control = luoctl::ControlClient::connect("/run/luo/control.sock")?;
    /// control.request(&ControlRequest::Prepare)?;
    /// # Ok::<(), luoctl::Error>(())
    /// ```
    pub fn request(&mut self, request: &ControlRequest) -> Result<ControlReply, Error> {
        let op = op_name(request);
        let mut line =
            serde_json::to_string(request).map_err(|source| Error::BadReply { op, source })?;
        line.push('\n');
        let io = |source| Error::Io {
            path: self.path.clone(),
            source,
        };
        self.writer.write_all(line.as_bytes()).map_err(io)?;
        let mut reply = String::new();
        let n = (&mut self.reader)
            .take(MAX_REPLY)
            .read_line(&mut reply)
            .map_err(|source| Error::Io {
                path: self.path.clone(),
                source,
            })?;
        if n == 0 || !reply.ends_with('\n') {
            return Err(Error::NoReply { op });
        }
        let reply: ControlReply =
            serde_json::from_str(&reply).map_err(|source| Error::BadReply { op, source })?;
        if !reply.ok {
            return Err(Error::Daemon {
                op,
                errno: reply.errno,
                message: reply
                    .error
                    .unwrap_or_else(|| "failed, with no reason given".to_owned()),
            });
        }
        Ok(reply)
    }

    /// The control socket's path.
    ///
    /// ```no_run
    /// let control = luoctl::ControlClient::connect("/run/luo/control.sock")?;
    /// assert_eq!(control.path(), std::path::Path::new("/run/luo/control.sock"));
    /// # Ok::<(), luoctl::Error>(())
    /// ```
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The daemon's status.
    ///
    /// # Errors
    /// As [`ControlClient::request`]; [`Error::MissingField`] when the reply has no
    /// status.
    ///
    /// ```no_run
    /// let mut control = luoctl::ControlClient::connect("/run/luo/control.sock")?;
    /// println!("global state {}", control.status()?.state);
    /// # Ok::<(), luoctl::Error>(())
    /// ```
    pub fn status(&mut self) -> Result<Status, Error> {
        self.request(&ControlRequest::Status)?
            .status
            .ok_or(Error::MissingField {
                op: "status",
                field: "status",
            })
    }
}

/// The request's `op`, as it travels.
fn op_name(request: &ControlRequest) -> &'static str {
    match request {
        ControlRequest::Status => "status",
        ControlRequest::Prepare => "prepare",
        ControlRequest::Cancel => "cancel",
        ControlRequest::Finish => "finish",
        ControlRequest::Version => "version",
        ControlRequest::Update { .. } => "update",
        ControlRequest::HandoverDump => "handover-dump",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn op_names_match_the_wire() {
        for request in [
            ControlRequest::Status,
            ControlRequest::Prepare,
            ControlRequest::Cancel,
            ControlRequest::Finish,
            ControlRequest::Version,
            ControlRequest::Update { exec: None },
            ControlRequest::HandoverDump,
        ] {
            let json = serde_json::to_value(&request).expect("json");
            assert_eq!(json["op"], op_name(&request), "{request:?}");
        }
    }
}
