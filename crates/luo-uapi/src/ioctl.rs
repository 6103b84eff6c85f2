//! Linux ioctl command encoding, limited to what LUO uses.
//!
//! LUO's commands are `_IO(0xBA, nr)`: no size and no direction are encoded, the
//! struct's own `size` field carries the size instead. The other helpers exist so
//! decoders can recognise (and refuse with ENOTTY) a value that names the right
//! `nr` with the wrong encoding.

/// The ioctl type byte of `/dev/liveupdate` (`LIVEUPDATE_IOCTL_TYPE`).
pub const LIVEUPDATE_IOCTL_TYPE: u8 = 0xBA;

const NRBITS: u32 = 8;
const TYPEBITS: u32 = 8;
const SIZEBITS: u32 = 14;
const NRSHIFT: u32 = 0;
const TYPESHIFT: u32 = NRSHIFT + NRBITS;
const SIZESHIFT: u32 = TYPESHIFT + TYPEBITS;
const DIRSHIFT: u32 = SIZESHIFT + SIZEBITS;

/// `_IOC_NONE`.
pub const DIR_NONE: u32 = 0;
/// `_IOC_WRITE`.
pub const DIR_WRITE: u32 = 1;
/// `_IOC_READ`.
pub const DIR_READ: u32 = 2;

/// `_IOC(dir, ty, nr, size)`.
#[must_use]
pub const fn ioc(dir: u32, ty: u8, nr: u8, size: u32) -> u32 {
    (dir << DIRSHIFT) | ((ty as u32) << TYPESHIFT) | ((nr as u32) << NRSHIFT) | (size << SIZESHIFT)
}

/// `_IO(ty, nr)`: the encoding of every LUO command.
#[must_use]
pub const fn io(ty: u8, nr: u8) -> u32 {
    ioc(DIR_NONE, ty, nr, 0)
}

/// `_IOWR(ty, nr, size)`: not used by LUO; decoders answer it with ENOTTY.
#[must_use]
pub const fn iowr(ty: u8, nr: u8, size: u32) -> u32 {
    ioc(DIR_READ | DIR_WRITE, ty, nr, size)
}

/// `_IOC_NR(cmd)`.
#[must_use]
pub const fn nr(cmd: u32) -> u8 {
    ((cmd >> NRSHIFT) & ((1 << NRBITS) - 1)) as u8
}

/// `_IOC_TYPE(cmd)`.
#[must_use]
pub const fn ty(cmd: u32) -> u8 {
    ((cmd >> TYPESHIFT) & ((1 << TYPEBITS) - 1)) as u8
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn io_matches_the_kernel_macro() {
        assert_eq!(io(0xBA, 0x00), 0xBA00);
        assert_eq!(io(0xBA, 0x44), 0xBA44);
        // _IOWR('K', 0x01, 8) as computed by the C preprocessor on x86-64.
        assert_eq!(iowr(b'K', 0x01, 8), 0xC008_4B01);
    }

    #[test]
    fn nr_and_type_round_trip() {
        let cmd = iowr(0xBA, 0x42, 16);
        assert_eq!(nr(cmd), 0x42);
        assert_eq!(ty(cmd), 0xBA);
    }
}
