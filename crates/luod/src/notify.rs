//! Readiness for systemd (`Type=notify`): `READY=1` to `$NOTIFY_SOCKET`.

use rustix::net::{AddressFamily, SendFlags, SocketAddrUnix, SocketFlags, SocketType};

/// Send `state` (e.g. `"READY=1"`) to the service manager, if there is one.
/// Failures are logged, never fatal: the daemon serves either way.
pub fn notify(state: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET").filter(|p| !p.is_empty()) else {
        return;
    };
    let bytes = path.as_encoded_bytes();
    let addr = match bytes.strip_prefix(b"@") {
        Some(name) => SocketAddrUnix::new_abstract_name(name),
        None => SocketAddrUnix::new(bytes),
    };
    let sent = addr.and_then(|addr| {
        let sock = rustix::net::socket_with(
            AddressFamily::UNIX,
            SocketType::DGRAM,
            SocketFlags::CLOEXEC,
            None,
        )?;
        rustix::net::sendto(&sock, state.as_bytes(), SendFlags::NOSIGNAL, &addr)
    });
    if let Err(e) = sent {
        tracing::warn!(error = %e, "sd_notify failed");
    }
}
