//! Where the sockets live (SPEC §8): the same rules for daemon, client and CLI.
//!
//! The device socket is `$LUO_SOCKET` when set; otherwise `/run/luo/luo.sock` for
//! root and `$XDG_RUNTIME_DIR/luo/luo.sock` for anyone else (falling back to
//! `/tmp/luo-<uid>/luo.sock` when `XDG_RUNTIME_DIR` is unset). The control socket
//! is `control.sock` in the same directory.

use std::path::{Path, PathBuf};

/// The variable that overrides the device socket's path.
pub const LUO_SOCKET_ENV: &str = "LUO_SOCKET";

/// The device socket's path for this process.
#[must_use]
pub fn device_socket() -> PathBuf {
    device_socket_from(
        std::env::var_os(LUO_SOCKET_ENV).map(PathBuf::from),
        rustix::process::getuid().as_raw(),
        std::env::var_os("XDG_RUNTIME_DIR").map(PathBuf::from),
    )
}

/// [`device_socket`] from explicit inputs.
#[must_use]
pub fn device_socket_from(
    over: Option<PathBuf>,
    uid: u32,
    runtime_dir: Option<PathBuf>,
) -> PathBuf {
    if let Some(p) = over.filter(|p| !p.as_os_str().is_empty()) {
        return p;
    }
    if uid == 0 {
        return PathBuf::from("/run/luo/luo.sock");
    }
    match runtime_dir.filter(|p| !p.as_os_str().is_empty()) {
        Some(dir) => dir.join("luo/luo.sock"),
        None => PathBuf::from(format!("/tmp/luo-{uid}/luo.sock")),
    }
}

/// The control socket beside a device socket.
#[must_use]
pub fn control_socket_beside(device: &Path) -> PathBuf {
    device.with_file_name("control.sock")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn override_wins() {
        assert_eq!(
            device_socket_from(Some("/x/d.sock".into()), 0, None),
            PathBuf::from("/x/d.sock")
        );
    }

    #[test]
    fn root_and_users_differ() {
        assert_eq!(
            device_socket_from(None, 0, Some("/run/user/0".into())),
            PathBuf::from("/run/luo/luo.sock")
        );
        assert_eq!(
            device_socket_from(None, 1000, Some("/run/user/1000".into())),
            PathBuf::from("/run/user/1000/luo/luo.sock")
        );
        assert_eq!(
            device_socket_from(None, 1000, None),
            PathBuf::from("/tmp/luo-1000/luo.sock")
        );
    }

    #[test]
    fn control_is_beside_the_device() {
        assert_eq!(
            control_socket_beside(Path::new("/a/b/luo.sock")),
            PathBuf::from("/a/b/control.sock")
        );
    }
}
