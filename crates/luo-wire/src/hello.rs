//! HELLO, the first request on a connection to the device socket (SPEC §8.2).
//!
//! The client sends `cmd = `[`HELLO_CMD`] with a [`Hello`] payload naming the
//! protocol version and the ABI profile it speaks. The daemon answers 0, or
//! EPROTONOSUPPORT (unknown version or ABI), EBUSY (device already open) or EIO (the
//! daemon could not restore its handover). [`Hello::check`] holds the first of these
//! rules; exclusivity and handover health are the daemon's. Session handles never
//! say HELLO.

use core::mem::{offset_of, size_of};

use luo_uapi::Errno;
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// `cmd` of a HELLO request. No ioctl value is 0, so it cannot collide.
pub const HELLO_CMD: u32 = 0;
/// The wire protocol version this crate speaks.
pub const PROTOCOL_VERSION: u32 = 1;

/// The ABI profile a device handle speaks (SPEC §3, §10).
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Abi {
    /// The seed's uAPI, `rfc-v4`.
    RfcV4 = 1,
    /// Linux >= 6.19, `mainline`.
    Mainline = 2,
}

impl Abi {
    /// The profile's name, as the CLI and the docs spell it.
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Abi::RfcV4 => "rfc-v4",
            Abi::Mainline => "mainline",
        }
    }
}

impl TryFrom<u32> for Abi {
    type Error = Errno;

    /// EPROTONOSUPPORT for a value naming no profile.
    fn try_from(v: u32) -> Result<Self, Errno> {
        match v {
            1 => Ok(Abi::RfcV4),
            2 => Ok(Abi::Mainline),
            _ => Err(Errno::PROTONOSUPPORT),
        }
    }
}

/// The HELLO payload.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable)]
pub struct Hello {
    /// Always [`Hello::SIZE`].
    pub size: u32,
    /// [`PROTOCOL_VERSION`].
    pub version: u32,
    /// An [`Abi`] value.
    pub abi: u32,
    /// No flag is defined: must be 0.
    pub flags: u32,
}
const _: () = assert!(size_of::<Hello>() == 16);
const _: () = assert!(offset_of!(Hello, size) == 0);
const _: () = assert!(offset_of!(Hello, version) == 4);
const _: () = assert!(offset_of!(Hello, abi) == 8);
const _: () = assert!(offset_of!(Hello, flags) == 12);

impl Hello {
    /// `sizeof(struct hello)`.
    pub const SIZE: u32 = 16;

    /// The HELLO this crate sends for `abi`.
    #[must_use]
    pub const fn new(abi: Abi) -> Self {
        Hello {
            size: Self::SIZE,
            version: PROTOCOL_VERSION,
            abi: abi as u32,
            flags: 0,
        }
    }

    /// Validates a HELLO payload and returns the profile it asks for.
    ///
    /// # Errors
    /// - EINVAL: payload not exactly 16 bytes, `size` ≠ 16, or `flags` ≠ 0.
    /// - EPROTONOSUPPORT: `version` ≠ [`PROTOCOL_VERSION`], or `abi` names no profile.
    pub fn check(payload: &[u8]) -> Result<Abi, Errno> {
        let hello = Hello::read_from_bytes(payload).map_err(|_| Errno::INVAL)?;
        if hello.size != Self::SIZE || hello.flags != 0 {
            return Err(Errno::INVAL);
        }
        if hello.version != PROTOCOL_VERSION {
            return Err(Errno::PROTONOSUPPORT);
        }
        Abi::try_from(hello.abi)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn abi_values_are_fixed() {
        assert_eq!(Abi::RfcV4 as u32, 1);
        assert_eq!(Abi::Mainline as u32, 2);
        assert_eq!(Abi::try_from(1), Ok(Abi::RfcV4));
        assert_eq!(Abi::try_from(2), Ok(Abi::Mainline));
        assert_eq!(Abi::try_from(0), Err(Errno::PROTONOSUPPORT));
        assert_eq!(Abi::try_from(3), Err(Errno::PROTONOSUPPORT));
        assert_eq!(Abi::RfcV4.name(), "rfc-v4");
    }

    #[test]
    fn hello_encodes_as_four_words() {
        assert_eq!(
            Hello::new(Abi::Mainline).as_bytes(),
            [16, 0, 0, 0, 1, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0]
        );
    }

    #[test]
    fn check_accepts_our_hello() {
        for abi in [Abi::RfcV4, Abi::Mainline] {
            assert_eq!(Hello::check(Hello::new(abi).as_bytes()), Ok(abi));
        }
    }

    #[test]
    fn check_refuses_bad_hellos() {
        let good = Hello::new(Abi::RfcV4);
        let with = |f: fn(&mut Hello)| {
            let mut h = good;
            f(&mut h);
            Hello::check(h.as_bytes())
        };
        assert_eq!(with(|h| h.size = 12), Err(Errno::INVAL));
        assert_eq!(with(|h| h.flags = 1), Err(Errno::INVAL));
        assert_eq!(with(|h| h.version = 2), Err(Errno::PROTONOSUPPORT));
        assert_eq!(with(|h| h.version = 0), Err(Errno::PROTONOSUPPORT));
        assert_eq!(with(|h| h.abi = 9), Err(Errno::PROTONOSUPPORT));
        assert_eq!(Hello::check(&good.as_bytes()[..12]), Err(Errno::INVAL));
        assert_eq!(Hello::check(&[0; 20]), Err(Errno::INVAL));
        assert_eq!(Hello::check(&[]), Err(Errno::INVAL));
    }
}
