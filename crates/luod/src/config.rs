//! The daemon's configuration, from its command line (SPEC §8, §9).

use std::path::PathBuf;

use clap::Parser;

/// `--max-connections` when not given.
pub const DEFAULT_MAX_CONNECTIONS: usize = 4096;

/// `luod`: serves LUO sessions over a unix socket and carries them across live
/// updates by re-executing itself.
#[derive(Debug, Clone, Parser)]
#[command(name = "luod", version, about, long_about = None)]
pub struct Config {
    /// Device socket path [default: $LUO_SOCKET, else /run/luo/luo.sock for root,
    /// else $XDG_RUNTIME_DIR/luo/luo.sock].
    #[arg(long, value_name = "PATH")]
    pub socket: Option<PathBuf>,

    /// Control socket path (for luoctl) [default: control.sock beside the device socket].
    #[arg(long, value_name = "PATH")]
    pub control_socket: Option<PathBuf>,

    /// Let several processes hold the device at once (the kernel's is exclusive).
    #[arg(long)]
    pub shared_device: bool,

    /// Group that may use the device socket (mode 0660) [default: the daemon's group].
    #[arg(long, value_name = "NAME")]
    pub group: Option<String>,

    /// Sessions one uid may own (ENOSPC beyond).
    #[arg(long, value_name = "N", default_value_t = 1024)]
    pub max_sessions_per_uid: usize,

    /// Files one session may hold (ENOSPC beyond).
    #[arg(long, value_name = "N", default_value_t = 4096)]
    pub max_files_per_session: usize,

    /// Open device and session handles together (`luoctl` connections have a
    /// limit of their own, 256, so that the operator is never locked out).
    #[arg(long, value_name = "N", default_value_t = DEFAULT_MAX_CONNECTIONS)]
    pub max_connections: usize,

    /// Dry run of a live update: decode the handover image on standard input,
    /// check every file against the handlers, exit 0 if it would load.
    #[arg(long)]
    pub check_handover: bool,

    /// Internal: standard input carries the previous epoch's handover.
    #[arg(long, hide = true)]
    pub resume: bool,

    /// Arguments that must precede the daemon's own when the running binary is
    /// re-executed: set by programs that embed the daemon (`luoctl daemon`).
    #[arg(skip)]
    pub exec_prefix: Vec<std::ffi::OsString>,
}

impl Config {
    /// The device socket's path.
    #[must_use]
    pub fn device_socket(&self) -> PathBuf {
        self.socket
            .clone()
            .unwrap_or_else(luo_wire::paths::device_socket)
    }

    /// The control socket's path.
    #[must_use]
    pub fn control_socket(&self) -> PathBuf {
        self.control_socket
            .clone()
            .unwrap_or_else(|| luo_wire::paths::control_socket_beside(&self.device_socket()))
    }
}
