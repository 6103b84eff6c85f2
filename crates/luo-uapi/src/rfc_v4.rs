//! Profile `rfc-v4`: the uAPI of the LUO session patch (v4 14/30), SPEC §3.
//!
//! Two kinds of handle speak it. The device (`/dev/liveupdate`; here a connection
//! to `luod` that said HELLO) creates and retrieves sessions and drives the global
//! state machine; a session handle preserves, unpreserves and restores files and
//! drives its own state machine. Each kind has an op table ([`DEVICE_OPS`],
//! [`SESSION_OPS`]) and a typed request ([`DeviceRequest`], [`SessionRequest`])
//! decoded with the rules of [`crate::extensible`].

use core::fmt;
use core::mem::{offset_of, size_of};

use rustix::io::Errno;
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use crate::extensible::{self, Extensible, OpDesc, OpTable};
use crate::ioctl::{LIVEUPDATE_IOCTL_TYPE, io};

/// `LIVEUPDATE_SESSION_NAME_LENGTH`: a name is at most 55 bytes plus its NUL.
pub const SESSION_NAME_LENGTH: usize = 56;

/// Device commands (`nr` 0x00..=0x03).
pub const LIVEUPDATE_IOCTL_GET_STATE: u32 = io(LIVEUPDATE_IOCTL_TYPE, 0x00);
/// Drive the global state machine.
pub const LIVEUPDATE_IOCTL_SET_EVENT: u32 = io(LIVEUPDATE_IOCTL_TYPE, 0x01);
/// Create a new outgoing session.
pub const LIVEUPDATE_IOCTL_CREATE_SESSION: u32 = io(LIVEUPDATE_IOCTL_TYPE, 0x02);
/// Retrieve an incoming session by name.
pub const LIVEUPDATE_IOCTL_RETRIEVE_SESSION: u32 = io(LIVEUPDATE_IOCTL_TYPE, 0x03);

/// `LIVEUPDATE_CMD_SESSION_BASE`: the `nr` of the first session command.
pub const SESSION_BASE: u8 = 0x40;
/// Session commands (`nr` 0x40..=0x44).
pub const LIVEUPDATE_SESSION_PRESERVE_FD: u32 = io(LIVEUPDATE_IOCTL_TYPE, 0x40);
/// Remove a preserved file from the session.
pub const LIVEUPDATE_SESSION_UNPRESERVE_FD: u32 = io(LIVEUPDATE_IOCTL_TYPE, 0x41);
/// Get a preserved file back after the update.
pub const LIVEUPDATE_SESSION_RESTORE_FD: u32 = io(LIVEUPDATE_IOCTL_TYPE, 0x42);
/// Read the session's state.
pub const LIVEUPDATE_SESSION_GET_STATE: u32 = io(LIVEUPDATE_IOCTL_TYPE, 0x43);
/// Drive the session's state machine.
pub const LIVEUPDATE_SESSION_SET_EVENT: u32 = io(LIVEUPDATE_IOCTL_TYPE, 0x44);

/// `enum liveupdate_state`: of the whole orchestrator and of each session.
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum State {
    /// Not a state anything is in; the value 0 of the C enum.
    Undefined = 0,
    /// Files may be preserved and unpreserved.
    Normal = 1,
    /// PREPARE ran: state is being saved, the file lists are fixed.
    Prepared = 2,
    /// FREEZE ran: the last moment before the update; nothing may change.
    Frozen = 3,
    /// After the update: incoming state waits to be restored and finished.
    Updated = 4,
}

impl State {
    /// Every state, in numeric order.
    pub const ALL: [State; 5] = [
        State::Undefined,
        State::Normal,
        State::Prepared,
        State::Frozen,
        State::Updated,
    ];

    /// The name the kernel's documentation uses.
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            State::Undefined => "undefined",
            State::Normal => "normal",
            State::Prepared => "prepared",
            State::Frozen => "frozen",
            State::Updated => "updated",
        }
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl TryFrom<u32> for State {
    type Error = Errno;

    fn try_from(v: u32) -> Result<Self, Errno> {
        State::ALL.get(v as usize).copied().ok_or(Errno::INVAL)
    }
}

/// `enum liveupdate_event`.
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Event {
    /// NORMAL → PREPARED.
    Prepare = 0,
    /// PREPARED → FROZEN.
    Freeze = 1,
    /// UPDATED → NORMAL.
    Finish = 2,
    /// PREPARED or FROZEN → NORMAL.
    Cancel = 3,
}

impl Event {
    /// Every event, in numeric order.
    pub const ALL: [Event; 4] = [Event::Prepare, Event::Freeze, Event::Finish, Event::Cancel];

    /// Lower-case name, as `luoctl` spells it.
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Event::Prepare => "prepare",
            Event::Freeze => "freeze",
            Event::Finish => "finish",
            Event::Cancel => "cancel",
        }
    }
}

impl fmt::Display for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl TryFrom<u32> for Event {
    type Error = Errno;

    fn try_from(v: u32) -> Result<Self, Errno> {
        Event::ALL.get(v as usize).copied().ok_or(Errno::INVAL)
    }
}

macro_rules! abi_struct {
    ($(#[$m:meta])* $name:ident { $($(#[$fm:meta])* $field:ident : $ty:ty),* $(,)? }
     size $size:literal, min $min:literal, offsets { $($of:ident : $off:literal),* }) => {
        $(#[$m])*
        #[repr(C)]
        #[derive(Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable)]
        pub struct $name {
            $($(#[$fm])* pub $field: $ty,)*
        }
        const _: () = assert!(size_of::<$name>() == $size);
        $(const _: () = assert!(offset_of!($name, $of) == $off);)*
        impl $name {
            /// `sizeof` of this struct, as the caller puts it in `size`.
            pub const SIZE: u32 = $size;
        }
        impl Default for $name {
            fn default() -> Self {
                let mut v = <$name as zerocopy::FromZeros>::new_zeroed();
                v.size = $size;
                v
            }
        }
        impl Extensible for $name {
            const MIN_SIZE: usize = $min;
            fn reserved_is_zero(&self) -> bool {
                abi_struct!(@reserved self $($field)*)
            }
        }
    };
    (@reserved $s:ident $($field:ident)*) => { true $(&& abi_struct!(@zero $s $field))* };
    (@zero $s:ident reserved) => { $s.reserved.as_bytes().iter().all(|&b| b == 0) };
    (@zero $s:ident $other:ident) => { true };
}

abi_struct! {
    /// `struct liveupdate_ioctl_get_state`.
    IoctlGetState {
        /// Caller's sizeof.
        size: u32,
        /// Out: the global [`State`].
        state: u32,
    }
    size 8, min 8, offsets { size: 0, state: 4 }
}

abi_struct! {
    /// `struct liveupdate_ioctl_set_event`.
    IoctlSetEvent {
        /// Caller's sizeof.
        size: u32,
        /// In: an [`Event`].
        event: u32,
    }
    size 8, min 8, offsets { size: 0, event: 4 }
}

abi_struct! {
    /// `struct liveupdate_ioctl_create_session`.
    IoctlCreateSession {
        /// Caller's sizeof.
        size: u32,
        /// Out: the new session's fd.
        fd: i32,
        /// In: NUL-terminated name, at most 55 bytes before the NUL.
        name: [u8; 56],
    }
    size 64, min 64, offsets { size: 0, fd: 4, name: 8 }
}

abi_struct! {
    /// `struct liveupdate_ioctl_retrieve_session`.
    IoctlRetrieveSession {
        /// Caller's sizeof.
        size: u32,
        /// Out: the retrieved session's fd.
        fd: i32,
        /// In: NUL-terminated name; the 56-byte limit applies though there is room for 64.
        name: [u8; 64],
    }
    size 72, min 72, offsets { size: 0, fd: 4, name: 8 }
}

abi_struct! {
    /// `struct liveupdate_session_preserve_fd`.
    SessionPreserveFd {
        /// Caller's sizeof.
        size: u32,
        /// In: the fd (over the wire it travels as SCM_RIGHTS; this field is not read).
        fd: i32,
        /// In: the caller's token for the file.
        token: u64,
    }
    size 16, min 16, offsets { size: 0, fd: 4, token: 8 }
}

abi_struct! {
    /// `struct liveupdate_session_unpreserve_fd`.
    SessionUnpreserveFd {
        /// Caller's sizeof.
        size: u32,
        /// Must be zero.
        reserved: u32,
        /// In: the token given at PRESERVE_FD.
        token: u64,
    }
    size 16, min 16, offsets { size: 0, reserved: 4, token: 8 }
}

abi_struct! {
    /// `struct liveupdate_session_restore_fd`.
    SessionRestoreFd {
        /// Caller's sizeof.
        size: u32,
        /// Out: the restored fd.
        fd: i32,
        /// In: the token given at PRESERVE_FD.
        token: u64,
    }
    size 16, min 16, offsets { size: 0, fd: 4, token: 8 }
}

abi_struct! {
    /// `struct liveupdate_session_get_state`.
    SessionGetState {
        /// Caller's sizeof.
        size: u32,
        /// In: ignored (a leftover of an earlier revision, as its review noted).
        incoming: u8,
        /// Must be zero.
        reserved: [u8; 3],
        /// Out: the session's [`State`].
        state: u32,
    }
    size 12, min 12, offsets { size: 0, incoming: 4, reserved: 5, state: 8 }
}

abi_struct! {
    /// `struct liveupdate_session_set_event`.
    SessionSetEvent {
        /// Caller's sizeof.
        size: u32,
        /// In: an [`Event`].
        event: u32,
    }
    size 8, min 8, offsets { size: 0, event: 4 }
}

/// Device commands, for dispatch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceCmd {
    /// `LIVEUPDATE_IOCTL_GET_STATE`.
    GetState,
    /// `LIVEUPDATE_IOCTL_SET_EVENT`.
    SetEvent,
    /// `LIVEUPDATE_IOCTL_CREATE_SESSION`.
    CreateSession,
    /// `LIVEUPDATE_IOCTL_RETRIEVE_SESSION`.
    RetrieveSession,
}

/// Session commands, for dispatch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionCmd {
    /// `LIVEUPDATE_SESSION_PRESERVE_FD`.
    PreserveFd,
    /// `LIVEUPDATE_SESSION_UNPRESERVE_FD`.
    UnpreserveFd,
    /// `LIVEUPDATE_SESSION_RESTORE_FD`.
    RestoreFd,
    /// `LIVEUPDATE_SESSION_GET_STATE`.
    GetState,
    /// `LIVEUPDATE_SESSION_SET_EVENT`.
    SetEvent,
}

/// The device's op table.
pub static DEVICE_OPS: OpTable<DeviceCmd> = OpTable {
    base: 0x00,
    ops: &[
        OpDesc::of::<IoctlGetState>(LIVEUPDATE_IOCTL_GET_STATE, DeviceCmd::GetState),
        OpDesc::of::<IoctlSetEvent>(LIVEUPDATE_IOCTL_SET_EVENT, DeviceCmd::SetEvent),
        OpDesc::of::<IoctlCreateSession>(LIVEUPDATE_IOCTL_CREATE_SESSION, DeviceCmd::CreateSession),
        OpDesc::of::<IoctlRetrieveSession>(
            LIVEUPDATE_IOCTL_RETRIEVE_SESSION,
            DeviceCmd::RetrieveSession,
        ),
    ],
};

/// A session handle's op table.
pub static SESSION_OPS: OpTable<SessionCmd> = OpTable {
    base: SESSION_BASE,
    ops: &[
        OpDesc::of::<SessionPreserveFd>(LIVEUPDATE_SESSION_PRESERVE_FD, SessionCmd::PreserveFd),
        OpDesc::of::<SessionUnpreserveFd>(
            LIVEUPDATE_SESSION_UNPRESERVE_FD,
            SessionCmd::UnpreserveFd,
        ),
        OpDesc::of::<SessionRestoreFd>(LIVEUPDATE_SESSION_RESTORE_FD, SessionCmd::RestoreFd),
        OpDesc::of::<SessionGetState>(LIVEUPDATE_SESSION_GET_STATE, SessionCmd::GetState),
        OpDesc::of::<SessionSetEvent>(LIVEUPDATE_SESSION_SET_EVENT, SessionCmd::SetEvent),
    ],
};

/// A decoded device request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceRequest {
    /// `LIVEUPDATE_IOCTL_GET_STATE`.
    GetState(IoctlGetState),
    /// `LIVEUPDATE_IOCTL_SET_EVENT`.
    SetEvent(IoctlSetEvent),
    /// `LIVEUPDATE_IOCTL_CREATE_SESSION`.
    CreateSession(IoctlCreateSession),
    /// `LIVEUPDATE_IOCTL_RETRIEVE_SESSION`.
    RetrieveSession(IoctlRetrieveSession),
}

impl DeviceRequest {
    /// Decode `bytes` (the caller's struct) sent with command `cmd`.
    ///
    /// # Errors
    /// The errnos of [`crate::extensible`]: `EINVAL`, `ENOTTY`, `E2BIG`, `EOPNOTSUPP`.
    pub fn decode(cmd: u32, bytes: &[u8]) -> Result<Self, Errno> {
        Ok(match DEVICE_OPS.lookup(cmd)?.code {
            DeviceCmd::GetState => Self::GetState(extensible::decode(bytes)?),
            DeviceCmd::SetEvent => Self::SetEvent(extensible::decode(bytes)?),
            DeviceCmd::CreateSession => Self::CreateSession(extensible::decode(bytes)?),
            DeviceCmd::RetrieveSession => Self::RetrieveSession(extensible::decode(bytes)?),
        })
    }
}

/// A decoded session request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionRequest {
    /// `LIVEUPDATE_SESSION_PRESERVE_FD`.
    PreserveFd(SessionPreserveFd),
    /// `LIVEUPDATE_SESSION_UNPRESERVE_FD`.
    UnpreserveFd(SessionUnpreserveFd),
    /// `LIVEUPDATE_SESSION_RESTORE_FD`.
    RestoreFd(SessionRestoreFd),
    /// `LIVEUPDATE_SESSION_GET_STATE`.
    GetState(SessionGetState),
    /// `LIVEUPDATE_SESSION_SET_EVENT`.
    SetEvent(SessionSetEvent),
}

impl SessionRequest {
    /// Decode `bytes` (the caller's struct) sent with command `cmd`.
    ///
    /// # Errors
    /// The errnos of [`crate::extensible`]: `EINVAL`, `ENOTTY`, `E2BIG`, `EOPNOTSUPP`.
    pub fn decode(cmd: u32, bytes: &[u8]) -> Result<Self, Errno> {
        Ok(match SESSION_OPS.lookup(cmd)?.code {
            SessionCmd::PreserveFd => Self::PreserveFd(extensible::decode(bytes)?),
            SessionCmd::UnpreserveFd => Self::UnpreserveFd(extensible::decode(bytes)?),
            SessionCmd::RestoreFd => Self::RestoreFd(extensible::decode(bytes)?),
            SessionCmd::GetState => Self::GetState(extensible::decode(bytes)?),
            SessionCmd::SetEvent => Self::SetEvent(extensible::decode(bytes)?),
        })
    }
}

/// The name in a fixed-size name field: the bytes before the first NUL, which
/// must come within [`SESSION_NAME_LENGTH`] bytes.
///
/// # Errors
/// `EINVAL` for an empty name, one with no NUL in its first 56 bytes (names are
/// never truncated), or one that is not UTF-8.
pub fn parse_name(field: &[u8]) -> Result<&str, Errno> {
    let window = &field[..field.len().min(SESSION_NAME_LENGTH)];
    let end = window.iter().position(|&b| b == 0).ok_or(Errno::INVAL)?;
    if end == 0 {
        return Err(Errno::INVAL);
    }
    core::str::from_utf8(&window[..end]).map_err(|_| Errno::INVAL)
}

/// A name field holding `name` and its NUL, for a caller building a request.
///
/// # Errors
/// `EINVAL` for an empty name, one longer than 55 bytes, or one containing a NUL.
pub fn name_field<const N: usize>(name: &str) -> Result<[u8; N], Errno> {
    let bytes = name.as_bytes();
    if bytes.is_empty()
        || bytes.len() >= SESSION_NAME_LENGTH
        || bytes.len() >= N
        || bytes.contains(&0)
    {
        return Err(Errno::INVAL);
    }
    let mut field = [0u8; N];
    field[..bytes.len()].copy_from_slice(bytes);
    Ok(field)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_numbers_are_the_literal_values() {
        assert_eq!(LIVEUPDATE_IOCTL_GET_STATE, 0xBA00);
        assert_eq!(LIVEUPDATE_IOCTL_SET_EVENT, 0xBA01);
        assert_eq!(LIVEUPDATE_IOCTL_CREATE_SESSION, 0xBA02);
        assert_eq!(LIVEUPDATE_IOCTL_RETRIEVE_SESSION, 0xBA03);
        assert_eq!(LIVEUPDATE_SESSION_PRESERVE_FD, 0xBA40);
        assert_eq!(LIVEUPDATE_SESSION_UNPRESERVE_FD, 0xBA41);
        assert_eq!(LIVEUPDATE_SESSION_RESTORE_FD, 0xBA42);
        assert_eq!(LIVEUPDATE_SESSION_GET_STATE, 0xBA43);
        assert_eq!(LIVEUPDATE_SESSION_SET_EVENT, 0xBA44);
    }

    #[test]
    fn struct_sizes_and_offsets_match_spec() {
        use core::mem::{offset_of, size_of};
        assert_eq!(
            (size_of::<IoctlGetState>(), offset_of!(IoctlGetState, state)),
            (8, 4)
        );
        assert_eq!(
            (size_of::<IoctlSetEvent>(), offset_of!(IoctlSetEvent, event)),
            (8, 4)
        );
        assert_eq!(size_of::<IoctlCreateSession>(), 64);
        assert_eq!(offset_of!(IoctlCreateSession, fd), 4);
        assert_eq!(offset_of!(IoctlCreateSession, name), 8);
        assert_eq!(size_of::<IoctlRetrieveSession>(), 72);
        assert_eq!(offset_of!(IoctlRetrieveSession, fd), 4);
        assert_eq!(offset_of!(IoctlRetrieveSession, name), 8);
        for (size, fd, token) in [
            (
                size_of::<SessionPreserveFd>(),
                offset_of!(SessionPreserveFd, fd),
                offset_of!(SessionPreserveFd, token),
            ),
            (
                size_of::<SessionRestoreFd>(),
                offset_of!(SessionRestoreFd, fd),
                offset_of!(SessionRestoreFd, token),
            ),
            (
                size_of::<SessionUnpreserveFd>(),
                offset_of!(SessionUnpreserveFd, reserved),
                offset_of!(SessionUnpreserveFd, token),
            ),
        ] {
            assert_eq!((size, fd, token), (16, 4, 8));
        }
        assert_eq!(size_of::<SessionGetState>(), 12);
        assert_eq!(offset_of!(SessionGetState, incoming), 4);
        assert_eq!(offset_of!(SessionGetState, reserved), 5);
        assert_eq!(offset_of!(SessionGetState, state), 8);
        assert_eq!(
            (
                size_of::<SessionSetEvent>(),
                offset_of!(SessionSetEvent, event)
            ),
            (8, 4)
        );
    }

    #[test]
    fn min_sizes_equal_sizeof() {
        for op in DEVICE_OPS.ops {
            assert_eq!(op.min_size, op.size, "{:?}", op.code);
        }
        for op in SESSION_OPS.ops {
            assert_eq!(op.min_size, op.size, "{:?}", op.code);
        }
    }

    #[test]
    fn state_and_event_values() {
        assert_eq!(State::Normal as u32, 1);
        assert_eq!(State::Updated as u32, 4);
        assert_eq!(State::try_from(3), Ok(State::Frozen));
        assert_eq!(State::try_from(5), Err(Errno::INVAL));
        assert_eq!((Event::Prepare as u32, Event::Freeze as u32), (0, 1));
        assert_eq!((Event::Finish as u32, Event::Cancel as u32), (2, 3));
        assert_eq!(Event::try_from(4), Err(Errno::INVAL));
    }

    fn bytes_of<T: IntoBytes + Immutable>(v: &T) -> Vec<u8> {
        v.as_bytes().to_vec()
    }

    #[test]
    fn rule1_unknown_nr_is_einval() {
        let b = bytes_of(&SessionSetEvent::default());
        assert_eq!(
            SessionRequest::decode(io(0xBA, 0x45), &b),
            Err(Errno::INVAL)
        );
        assert_eq!(
            SessionRequest::decode(io(0xBA, 0x00), &b),
            Err(Errno::INVAL)
        );
        assert_eq!(DeviceRequest::decode(io(0xBA, 0x04), &b), Err(Errno::INVAL));
        assert_eq!(DeviceRequest::decode(io(0xBA, 0x40), &b), Err(Errno::INVAL));
    }

    #[test]
    fn rule2_other_encoding_is_enotty() {
        let b = bytes_of(&SessionSetEvent::default());
        let wide = crate::ioctl::iowr(0xBA, 0x44, 8);
        assert_eq!(SessionRequest::decode(wide, &b), Err(Errno::NOTTY));
        assert_eq!(
            SessionRequest::decode(io(0xBB, 0x44), &b),
            Err(Errno::NOTTY)
        );
        assert_eq!(DeviceRequest::decode(io(0xBB, 0x01), &b), Err(Errno::NOTTY));
    }

    #[test]
    fn rule3_short_size_is_einval() {
        let b = bytes_of(&SessionPreserveFd::default());
        let mut short = b[..12].to_vec();
        short[0] = 12;
        assert_eq!(
            SessionRequest::decode(LIVEUPDATE_SESSION_PRESERVE_FD, &short),
            Err(Errno::INVAL)
        );
    }

    #[test]
    fn rule4_nonzero_tail_is_e2big() {
        let mut b = bytes_of(&IoctlCreateSession {
            name: name_field("a").expect("name"),
            ..Default::default()
        });
        b.extend_from_slice(&[0, 0, 0, 1]);
        b[..4].copy_from_slice(&68u32.to_ne_bytes());
        assert_eq!(
            DeviceRequest::decode(LIVEUPDATE_IOCTL_CREATE_SESSION, &b),
            Err(Errno::TOOBIG)
        );
        let n = b.len();
        b[n - 1] = 0;
        assert!(DeviceRequest::decode(LIVEUPDATE_IOCTL_CREATE_SESSION, &b).is_ok());
    }

    #[test]
    fn rule4_size_over_4096_is_e2big() {
        let mut b = bytes_of(&IoctlGetState::default());
        b.resize(4097, 0);
        b[..4].copy_from_slice(&4097u32.to_ne_bytes());
        assert_eq!(
            DeviceRequest::decode(LIVEUPDATE_IOCTL_GET_STATE, &b),
            Err(Errno::TOOBIG)
        );
    }

    #[test]
    fn rule5_reserved_is_eopnotsupp() {
        let b = bytes_of(&SessionUnpreserveFd {
            reserved: 1,
            ..Default::default()
        });
        assert_eq!(
            SessionRequest::decode(LIVEUPDATE_SESSION_UNPRESERVE_FD, &b),
            Err(Errno::OPNOTSUPP)
        );
        let b = bytes_of(&SessionGetState {
            reserved: [0, 0, 1],
            ..Default::default()
        });
        assert_eq!(
            SessionRequest::decode(LIVEUPDATE_SESSION_GET_STATE, &b),
            Err(Errno::OPNOTSUPP)
        );
        // `incoming` is ignored, not reserved.
        let b = bytes_of(&SessionGetState {
            incoming: 1,
            ..Default::default()
        });
        assert!(SessionRequest::decode(LIVEUPDATE_SESSION_GET_STATE, &b).is_ok());
    }

    #[test]
    fn rule6_reply_copies_min_size() {
        let reply = SessionGetState {
            state: 4,
            ..Default::default()
        };
        assert_eq!(extensible::reply_bytes(&reply, 12).len(), 12);
        assert_eq!(extensible::reply_bytes(&reply, 100).len(), 12);
    }

    #[test]
    fn names_are_validated_not_truncated() {
        let mut field = [b'x'; 56];
        assert_eq!(parse_name(&field), Err(Errno::INVAL));
        field[55] = 0;
        assert_eq!(parse_name(&field).map(str::len), Ok(55));
        assert_eq!(parse_name(&[0u8; 56]), Err(Errno::INVAL));
        // The retrieve field has 64 bytes, but a NUL at 60 is still too long.
        let mut long = [b'y'; 64];
        long[60] = 0;
        assert_eq!(parse_name(&long), Err(Errno::INVAL));
        assert_eq!(name_field::<56>(&"z".repeat(56)), Err(Errno::INVAL));
        assert!(name_field::<56>(&"z".repeat(55)).is_ok());
        assert_eq!(name_field::<56>("a\0b"), Err(Errno::INVAL));
    }
}
