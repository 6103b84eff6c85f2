//! The extensible-struct rules every LUO command obeys (SPEC §3.1), written once.
//!
//! A command's argument is a C struct that begins with `u32 size`, the caller's
//! `sizeof`. Decoding a request against a profile's op table goes:
//!
//! 1. the `nr` of the command is outside the table → `EINVAL`;
//! 2. the full command value differs from the table's (another type byte, an
//!    `_IOWR` encoding of the same `nr`) → `ENOTTY`;
//! 3. `size` is smaller than the struct's minimum size → `EINVAL`;
//! 4. `size` is larger than our struct: every extra byte must be zero, else `E2BIG`;
//!    sizes above [`MAX_STRUCT_SIZE`] are `E2BIG` too. A shorter struct would be
//!    zero-extended (today every minimum size equals `sizeof`);
//! 5. a reserved field is non-zero → `EOPNOTSUPP`;
//! 6. the reply copies back `min(size, sizeof)` bytes.
//!
//! Over the wire the bytes handed to [`decode`] are exactly the caller's struct, so
//! the `size` field must also equal their length (`EINVAL` otherwise): a peer cannot
//! make the daemon read past what it sent.

use core::mem::size_of;

use rustix::io::Errno;
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// The largest `size` a caller may claim, tail included.
pub const MAX_STRUCT_SIZE: usize = 4096;

/// An argument struct of a LUO command.
pub trait Extensible: FromBytes + IntoBytes + KnownLayout + Immutable + Copy {
    /// `offsetofend(struct, last field)`: the smallest `size` accepted.
    const MIN_SIZE: usize;

    /// Rule 5: whether every reserved field is zero.
    fn reserved_is_zero(&self) -> bool {
        true
    }
}

/// One row of a profile's op table: the command value, what it means, and its sizes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpDesc<C> {
    /// The full command value, e.g. `0xBA40`.
    pub cmd: u32,
    /// What the command is, for dispatch.
    pub code: C,
    /// `sizeof` of the argument struct.
    pub size: usize,
    /// The smallest `size` accepted.
    pub min_size: usize,
}

impl<C> OpDesc<C> {
    /// The row for a command whose argument struct is `T`.
    #[must_use]
    pub const fn of<T: Extensible>(cmd: u32, code: C) -> Self {
        Self {
            cmd,
            code,
            size: size_of::<T>(),
            min_size: T::MIN_SIZE,
        }
    }
}

/// An op table: rows indexed by `nr - base`.
#[derive(Debug)]
pub struct OpTable<C: 'static> {
    /// The `nr` of the first row.
    pub base: u8,
    /// The rows, in `nr` order with no gaps.
    pub ops: &'static [OpDesc<C>],
}

impl<C> OpTable<C> {
    /// Rules 1 and 2: the row for `cmd`.
    ///
    /// # Errors
    /// `EINVAL` when the `nr` of `cmd` is not in the table, `ENOTTY` when the `nr`
    /// is but the full value is not the table's.
    pub fn lookup(&self, cmd: u32) -> Result<&'static OpDesc<C>, Errno> {
        let nr = crate::ioctl::nr(cmd);
        let idx = nr.checked_sub(self.base).ok_or(Errno::INVAL)? as usize;
        let op = self.ops.get(idx).ok_or(Errno::INVAL)?;
        if op.cmd != cmd {
            return Err(Errno::NOTTY);
        }
        Ok(op)
    }
}

/// The `size` field at the start of a caller's struct, if there are 4 bytes to read.
#[must_use]
pub fn size_field(bytes: &[u8]) -> Option<u32> {
    let head: [u8; 4] = bytes.get(..4)?.try_into().ok()?;
    Some(u32::from_ne_bytes(head))
}

/// Rules 3 to 5: decode the caller's struct `bytes` (exactly `size` bytes long).
///
/// # Errors
/// `EINVAL` for fewer than 4 bytes, a `size` field that is not `bytes.len()`, or a
/// size below `T::MIN_SIZE`; `E2BIG` for a size above [`MAX_STRUCT_SIZE`] or a
/// non-zero byte past our struct; `EOPNOTSUPP` for a non-zero reserved field.
pub fn decode<T: Extensible>(bytes: &[u8]) -> Result<T, Errno> {
    let size = size_field(bytes).ok_or(Errno::INVAL)? as usize;
    if size != bytes.len() || size < T::MIN_SIZE {
        return Err(Errno::INVAL);
    }
    if size > MAX_STRUCT_SIZE {
        return Err(Errno::TOOBIG);
    }
    let ours = size_of::<T>();
    let mut buf = T::new_zeroed();
    if size > ours {
        if bytes[ours..].iter().any(|&b| b != 0) {
            return Err(Errno::TOOBIG);
        }
        buf.as_mut_bytes().copy_from_slice(&bytes[..ours]);
    } else {
        buf.as_mut_bytes()[..size].copy_from_slice(bytes);
    }
    if !buf.reserved_is_zero() {
        return Err(Errno::OPNOTSUPP);
    }
    Ok(buf)
}

/// Rule 6: the bytes copied back to a caller whose struct is `caller_size` long.
#[must_use]
pub fn reply_bytes<T: Extensible>(value: &T, caller_size: usize) -> &[u8] {
    let bytes = value.as_bytes();
    &bytes[..caller_size.min(bytes.len())]
}

#[cfg(test)]
mod tests {
    use super::*;
    use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

    #[repr(C)]
    #[derive(Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable)]
    struct Probe {
        size: u32,
        reserved: u32,
        value: u64,
    }

    impl Extensible for Probe {
        const MIN_SIZE: usize = 16;
        fn reserved_is_zero(&self) -> bool {
            self.reserved == 0
        }
    }

    #[repr(C)]
    #[derive(Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable)]
    struct Grown {
        size: u32,
        value: u32,
        extra: u64,
    }

    impl Extensible for Grown {
        const MIN_SIZE: usize = 8;
    }

    fn probe_bytes(size: u32, reserved: u32, value: u64, tail: &[u8]) -> Vec<u8> {
        let mut v = Probe {
            size,
            reserved,
            value,
        }
        .as_bytes()
        .to_vec();
        v.extend_from_slice(tail);
        v
    }

    #[test]
    fn accepts_the_exact_struct() {
        let p: Probe = decode(&probe_bytes(16, 0, 7, &[])).expect("decode");
        assert_eq!(p.value, 7);
    }

    #[test]
    fn size_field_must_match_the_bytes_sent() {
        assert_eq!(
            decode::<Probe>(&probe_bytes(24, 0, 7, &[])),
            Err(Errno::INVAL)
        );
    }

    #[test]
    fn fewer_than_four_bytes_is_einval() {
        assert_eq!(decode::<Probe>(&[16, 0]), Err(Errno::INVAL));
    }

    #[test]
    fn zero_tail_is_accepted() {
        let p: Probe = decode(&probe_bytes(24, 0, 9, &[0; 8])).expect("decode");
        assert_eq!(p.value, 9);
    }

    #[test]
    fn size_above_the_cap_is_e2big() {
        let len = MAX_STRUCT_SIZE + 8;
        let mut v = probe_bytes(len as u32, 0, 1, &[]);
        v.resize(len, 0);
        assert_eq!(decode::<Probe>(&v), Err(Errno::TOOBIG));
    }

    #[test]
    fn size_at_the_cap_is_accepted() {
        let mut v = probe_bytes(MAX_STRUCT_SIZE as u32, 0, 1, &[]);
        v.resize(MAX_STRUCT_SIZE, 0);
        assert!(decode::<Probe>(&v).is_ok());
    }

    #[test]
    fn reserved_is_checked_after_sizes() {
        assert_eq!(
            decode::<Probe>(&probe_bytes(16, 1, 0, &[])),
            Err(Errno::OPNOTSUPP)
        );
        // A non-zero tail wins over a non-zero reserved field: sizes come first.
        assert_eq!(
            decode::<Probe>(&probe_bytes(20, 1, 0, &[1, 0, 0, 0])),
            Err(Errno::TOOBIG)
        );
    }

    #[test]
    fn a_shorter_caller_struct_is_zero_extended() {
        // size 8 >= MIN_SIZE 8 < sizeof 16: `extra` reads as zero.
        let bytes = [8u8, 0, 0, 0, 5, 0, 0, 0];
        let g: Grown = decode(&bytes).expect("decode");
        assert_eq!((g.size, g.value, g.extra), (8, 5, 0));
        // And the reply is cut to the caller's 8 bytes.
        assert_eq!(reply_bytes(&g, 8), bytes.to_vec());
    }

    #[test]
    fn reply_is_capped_at_our_size() {
        let p = Probe {
            size: 32,
            reserved: 0,
            value: 3,
        };
        assert_eq!(reply_bytes(&p, 32).len(), 16);
    }

    static TABLE: OpTable<u8> = OpTable {
        base: 0x40,
        ops: &[
            OpDesc::of::<Probe>(0xBA40, 0),
            OpDesc::of::<Probe>(0xBA41, 1),
        ],
    };

    #[test]
    fn lookup_rules() {
        assert_eq!(TABLE.lookup(0xBA41).map(|op| op.code), Ok(1));
        assert_eq!(TABLE.lookup(0xBA42).map(|op| op.code), Err(Errno::INVAL));
        assert_eq!(TABLE.lookup(0xBA3F).map(|op| op.code), Err(Errno::INVAL));
        assert_eq!(TABLE.lookup(0xAB40).map(|op| op.code), Err(Errno::NOTTY));
        let wide = crate::ioctl::iowr(0xBA, 0x40, 16);
        assert_eq!(TABLE.lookup(wide).map(|op| op.code), Err(Errno::NOTTY));
    }
}
