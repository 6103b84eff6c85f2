//! Frame headers and the pure encoders and decoders of SPEC §8.1.
//!
//! Nothing here touches a socket, so every rule can be tested on byte slices. A
//! decoder checks, in this order: length of the header (`Short`), magic (`BadMagic`),
//! reserved (`ReservedNonZero`), `len` against [`MAX_PAYLOAD`] (`PayloadTooLarge`),
//! `len` against the bytes that follow (`LenMismatch`) and, for a reply, the range of
//! `result` (`BadResult`). Every [`FrameError`] is EINVAL on the wire.

use core::mem::{offset_of, size_of};

use luo_uapi::Errno;
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// "LUOQ": the first word of every request.
pub const REQUEST_MAGIC: u32 = 0x4C55_4F51;
/// "LUOR": the first word of every reply.
pub const REPLY_MAGIC: u32 = 0x4C55_4F52;
/// Largest payload: the extensible-struct cap of SPEC §3.1.
pub const MAX_PAYLOAD: usize = luo_uapi::extensible::MAX_STRUCT_SIZE;
/// Bytes in either header.
pub const HEADER_SIZE: usize = 16;
/// Largest frame: a header and the largest payload.
pub const MAX_FRAME: usize = HEADER_SIZE + MAX_PAYLOAD;

/// The header in front of every request.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable)]
pub struct RequestHeader {
    /// [`REQUEST_MAGIC`].
    pub magic: u32,
    /// The full ioctl value, or [`crate::HELLO_CMD`].
    pub cmd: u32,
    /// Payload bytes after the header.
    pub len: u32,
    /// Must be zero.
    pub reserved: u32,
}
const _: () = assert!(size_of::<RequestHeader>() == HEADER_SIZE);
const _: () = assert!(offset_of!(RequestHeader, magic) == 0);
const _: () = assert!(offset_of!(RequestHeader, cmd) == 4);
const _: () = assert!(offset_of!(RequestHeader, len) == 8);
const _: () = assert!(offset_of!(RequestHeader, reserved) == 12);

/// The header in front of every reply.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable)]
pub struct ReplyHeader {
    /// [`REPLY_MAGIC`].
    pub magic: u32,
    /// 0, or `-errno`.
    pub result: i32,
    /// Payload bytes after the header.
    pub len: u32,
    /// Must be zero.
    pub reserved: u32,
}
const _: () = assert!(size_of::<ReplyHeader>() == HEADER_SIZE);
const _: () = assert!(offset_of!(ReplyHeader, magic) == 0);
const _: () = assert!(offset_of!(ReplyHeader, result) == 4);
const _: () = assert!(offset_of!(ReplyHeader, len) == 8);
const _: () = assert!(offset_of!(ReplyHeader, reserved) == 12);

/// Why a received frame was refused. Every variant is EINVAL on the wire.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// Fewer bytes than a header.
    #[error("Short frame: {len} bytes, the header alone is {HEADER_SIZE}")]
    Short {
        /// Bytes received.
        len: usize,
    },
    /// The first word is not the expected magic.
    #[error("Bad magic {magic:#010x}")]
    BadMagic {
        /// The word found.
        magic: u32,
    },
    /// The reserved header word is not zero.
    #[error("Reserved header word is {reserved:#x}, must be 0")]
    ReservedNonZero {
        /// The word found.
        reserved: u32,
    },
    /// `len` disagrees with the bytes after the header.
    #[error("Header says {header} payload bytes, frame carries {actual}")]
    LenMismatch {
        /// The header's `len`.
        header: u32,
        /// Bytes after the header.
        actual: usize,
    },
    /// `len` is above [`MAX_PAYLOAD`].
    #[error("Payload of {len} bytes exceeds {MAX_PAYLOAD}")]
    PayloadTooLarge {
        /// The declared or offered payload length.
        len: usize,
    },
    /// A reply's `result` is neither 0 nor a negated errno.
    #[error("Reply result {result} is not 0 or -errno")]
    BadResult {
        /// The word found.
        result: i32,
    },
    /// The datagram was longer than [`MAX_FRAME`] (`MSG_TRUNC`); its tail is lost.
    #[error("Datagram of {len} bytes exceeds {MAX_FRAME}")]
    Truncated {
        /// The datagram's full length, as the kernel reported it.
        len: usize,
    },
    /// More than one fd came with the frame; all were closed.
    #[error("{count} fds attached, at most 1 allowed")]
    TooManyFds {
        /// Fds received.
        count: usize,
    },
    /// The fds did not fit the control buffer (`MSG_CTRUNC`); those that arrived were closed.
    #[error("Control data truncated after {received} fds")]
    ControlTruncated {
        /// Fds that arrived before the cut.
        received: usize,
    },
}

impl FrameError {
    /// The errno a malformed frame is answered with: always EINVAL.
    #[must_use]
    pub const fn errno(&self) -> Errno {
        match self {
            FrameError::Short { .. }
            | FrameError::BadMagic { .. }
            | FrameError::ReservedNonZero { .. }
            | FrameError::LenMismatch { .. }
            | FrameError::PayloadTooLarge { .. }
            | FrameError::BadResult { .. }
            | FrameError::Truncated { .. }
            | FrameError::TooManyFds { .. }
            | FrameError::ControlTruncated { .. } => Errno::INVAL,
        }
    }
}

/// Saturates instead of wrapping so that an oversized payload yields a frame every
/// decoder refuses rather than one that lies about its length.
fn wire_len(payload: &[u8]) -> u32 {
    u32::try_from(payload.len()).unwrap_or(u32::MAX)
}

fn assemble(header: &[u8], payload: &[u8]) -> Vec<u8> {
    let mut frame = Vec::with_capacity(header.len() + payload.len());
    frame.extend_from_slice(header);
    frame.extend_from_slice(payload);
    frame
}

/// The header of a request frame carrying `payload`.
#[must_use]
pub fn request_header(cmd: u32, payload: &[u8]) -> RequestHeader {
    RequestHeader {
        magic: REQUEST_MAGIC,
        cmd,
        len: wire_len(payload),
        reserved: 0,
    }
}

/// The header of a reply frame carrying `payload`: `result` becomes 0 or `-errno`.
#[must_use]
pub fn reply_header(result: Result<(), Errno>, payload: &[u8]) -> ReplyHeader {
    ReplyHeader {
        magic: REPLY_MAGIC,
        result: match result {
            Ok(()) => 0,
            Err(e) => -e.raw_os_error(),
        },
        len: wire_len(payload),
        reserved: 0,
    }
}

/// A request frame: header and payload.
///
/// Total: a payload above [`MAX_PAYLOAD`] is encoded as given and refused by the
/// receiver; [`crate::send_request`] refuses it before sending.
#[must_use]
pub fn encode_request(cmd: u32, payload: &[u8]) -> Vec<u8> {
    assemble(request_header(cmd, payload).as_bytes(), payload)
}

/// A reply frame: `result` becomes 0 or `-errno`.
#[must_use]
pub fn encode_reply(result: Result<(), Errno>, payload: &[u8]) -> Vec<u8> {
    assemble(reply_header(result, payload).as_bytes(), payload)
}

/// Shared checks after the magic: reserved word, then `len`.
fn payload_of(reserved: u32, len: u32, rest: &[u8]) -> Result<&[u8], FrameError> {
    if reserved != 0 {
        return Err(FrameError::ReservedNonZero { reserved });
    }
    let declared = len as usize;
    if declared > MAX_PAYLOAD {
        return Err(FrameError::PayloadTooLarge { len: declared });
    }
    if declared != rest.len() {
        return Err(FrameError::LenMismatch {
            header: len,
            actual: rest.len(),
        });
    }
    Ok(rest)
}

/// Splits a request frame into `(cmd, payload)`.
///
/// # Errors
/// EINVAL, as [`FrameError::Short`], [`FrameError::BadMagic`],
/// [`FrameError::ReservedNonZero`], [`FrameError::PayloadTooLarge`] or
/// [`FrameError::LenMismatch`].
pub fn decode_request(frame: &[u8]) -> Result<(u32, &[u8]), FrameError> {
    let (header, rest) = RequestHeader::read_from_prefix(frame)
        .map_err(|_| FrameError::Short { len: frame.len() })?;
    if header.magic != REQUEST_MAGIC {
        return Err(FrameError::BadMagic {
            magic: header.magic,
        });
    }
    let payload = payload_of(header.reserved, header.len, rest)?;
    Ok((header.cmd, payload))
}

/// Splits a reply frame into `(result, payload)`.
///
/// # Errors
/// EINVAL, as for [`decode_request`], and [`FrameError::BadResult`] for a `result`
/// outside `-4095..=0`.
pub fn decode_reply(frame: &[u8]) -> Result<(Result<(), Errno>, &[u8]), FrameError> {
    let (header, rest) =
        ReplyHeader::read_from_prefix(frame).map_err(|_| FrameError::Short { len: frame.len() })?;
    if header.magic != REPLY_MAGIC {
        return Err(FrameError::BadMagic {
            magic: header.magic,
        });
    }
    let payload = payload_of(header.reserved, header.len, rest)?;
    let result = match header.result {
        0 => Ok(()),
        // Errno only holds Linux's range; anything else would panic in rustix.
        r @ -4095..=-1 => Err(Errno::from_raw_os_error(-r)),
        result => return Err(FrameError::BadResult { result }),
    };
    Ok((result, payload))
}

/// The `cmd` of a request frame that may be malformed, when its magic is right:
/// what the daemon logs beside its EINVAL answer.
#[must_use]
pub fn request_cmd(frame: &[u8]) -> Option<u32> {
    let (magic, rest) = u32::read_from_prefix(frame).ok()?;
    let (cmd, _) = u32::read_from_prefix(rest).ok()?;
    (magic == REQUEST_MAGIC).then_some(cmd)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn raw_request(magic: u32, cmd: u32, len: u32, reserved: u32, payload: &[u8]) -> Vec<u8> {
        let header = RequestHeader {
            magic,
            cmd,
            len,
            reserved,
        };
        assemble(header.as_bytes(), payload)
    }

    fn raw_reply(magic: u32, result: i32, len: u32, reserved: u32, payload: &[u8]) -> Vec<u8> {
        let header = ReplyHeader {
            magic,
            result,
            len,
            reserved,
        };
        assemble(header.as_bytes(), payload)
    }

    #[test]
    fn magic_spells_luoq_and_luor() {
        assert_eq!(REQUEST_MAGIC.to_be_bytes(), *b"LUOQ");
        assert_eq!(REPLY_MAGIC.to_be_bytes(), *b"LUOR");
        assert_eq!(MAX_PAYLOAD, 4096);
        assert_eq!(MAX_FRAME, 4112);
    }

    #[test]
    fn request_layout_is_little_endian_words() {
        let frame = encode_request(0xBA40, &[1, 2, 3]);
        assert_eq!(
            frame,
            [
                0x51, 0x4F, 0x55, 0x4C, 0x40, 0xBA, 0, 0, 3, 0, 0, 0, 0, 0, 0, 0, 1, 2, 3
            ]
        );
    }

    #[test]
    fn reply_result_is_negated_errno() {
        let frame = encode_reply(Err(Errno::NOENT), &[]);
        assert_eq!(&frame[4..8], (-2i32).to_ne_bytes());
        assert_eq!(decode_reply(&frame), Ok((Err(Errno::NOENT), &[][..])));
        assert_eq!(
            decode_reply(&encode_reply(Ok(()), b"x")),
            Ok((Ok(()), &b"x"[..]))
        );
    }

    #[test]
    fn request_errors_in_order() {
        assert_eq!(decode_request(&[0; 15]), Err(FrameError::Short { len: 15 }));
        assert_eq!(
            decode_request(&raw_request(REPLY_MAGIC, 1, 0, 7, &[])),
            Err(FrameError::BadMagic { magic: REPLY_MAGIC })
        );
        assert_eq!(
            decode_request(&raw_request(REQUEST_MAGIC, 1, 9999, 7, &[])),
            Err(FrameError::ReservedNonZero { reserved: 7 })
        );
        assert_eq!(
            decode_request(&raw_request(REQUEST_MAGIC, 1, 4097, 0, &[0; 4097])),
            Err(FrameError::PayloadTooLarge { len: 4097 })
        );
        assert_eq!(
            decode_request(&raw_request(REQUEST_MAGIC, 1, 8, 0, &[0; 4])),
            Err(FrameError::LenMismatch {
                header: 8,
                actual: 4
            })
        );
        assert_eq!(
            decode_request(&raw_request(REQUEST_MAGIC, 1, 0, 0, &[0; 4])),
            Err(FrameError::LenMismatch {
                header: 0,
                actual: 4
            })
        );
    }

    #[test]
    fn reply_result_outside_errno_range_is_refused() {
        for result in [1, -4096, i32::MIN, i32::MAX] {
            assert_eq!(
                decode_reply(&raw_reply(REPLY_MAGIC, result, 0, 0, &[])),
                Err(FrameError::BadResult { result })
            );
        }
        assert_eq!(
            decode_reply(&raw_reply(REPLY_MAGIC, -4095, 0, 0, &[])),
            Ok((Err(Errno::from_raw_os_error(4095)), &[][..]))
        );
    }

    #[test]
    fn request_cmd_needs_the_right_magic() {
        assert_eq!(
            request_cmd(&raw_request(REQUEST_MAGIC, 0xBA02, 1, 1, &[])),
            Some(0xBA02)
        );
        assert_eq!(request_cmd(&encode_request(0xBA02, &[])[..8]), Some(0xBA02));
        assert_eq!(request_cmd(&encode_request(0xBA02, &[])[..7]), None);
        assert_eq!(request_cmd(&encode_reply(Ok(()), &[])), None);
    }

    #[test]
    fn every_frame_error_is_einval() {
        let all = [
            FrameError::Short { len: 0 },
            FrameError::BadMagic { magic: 0 },
            FrameError::ReservedNonZero { reserved: 1 },
            FrameError::LenMismatch {
                header: 1,
                actual: 0,
            },
            FrameError::PayloadTooLarge { len: 5000 },
            FrameError::BadResult { result: 1 },
            FrameError::Truncated { len: 8192 },
            FrameError::TooManyFds { count: 2 },
            FrameError::ControlTruncated { received: 4 },
        ];
        for e in all {
            assert_eq!(e.errno(), Errno::INVAL, "{e}");
        }
    }

    proptest! {
        #[test]
        fn decode_request_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..5000)) {
            let _ = decode_request(&bytes);
            let _ = request_cmd(&bytes);
        }

        #[test]
        fn decode_reply_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..5000)) {
            let _ = decode_reply(&bytes);
        }

        #[test]
        fn header_fields_never_panic(
            magic in prop_oneof![Just(REQUEST_MAGIC), Just(REPLY_MAGIC), any::<u32>()],
            word in any::<u32>(),
            len in prop_oneof![0u32..=4200, any::<u32>()],
            reserved in prop_oneof![Just(0u32), any::<u32>()],
            payload in proptest::collection::vec(any::<u8>(), 0..4200),
        ) {
            let _ = decode_request(&raw_request(magic, word, len, reserved, &payload));
            let _ = decode_reply(&raw_reply(magic, word as i32, len, reserved, &payload));
        }

        #[test]
        fn request_round_trips(
            cmd in any::<u32>(),
            payload in proptest::collection::vec(any::<u8>(), 0..=MAX_PAYLOAD),
        ) {
            let frame = encode_request(cmd, &payload);
            prop_assert_eq!(frame.len(), HEADER_SIZE + payload.len());
            prop_assert_eq!(decode_request(&frame), Ok((cmd, &payload[..])));
            prop_assert_eq!(request_cmd(&frame), Some(cmd));
        }

        #[test]
        fn reply_round_trips(
            errno in 0i32..4096,
            payload in proptest::collection::vec(any::<u8>(), 0..=MAX_PAYLOAD),
        ) {
            let result = if errno == 0 { Ok(()) } else { Err(Errno::from_raw_os_error(errno)) };
            let frame = encode_reply(result, &payload);
            prop_assert_eq!(decode_reply(&frame), Ok((result, &payload[..])));
        }

        #[test]
        fn oversized_payload_never_decodes(cmd in any::<u32>(), extra in 1usize..100) {
            let payload = vec![0u8; MAX_PAYLOAD + extra];
            let frame = encode_request(cmd, &payload);
            prop_assert_eq!(
                decode_request(&frame),
                Err(FrameError::PayloadTooLarge { len: MAX_PAYLOAD + extra })
            );
        }

        #[test]
        fn cut_or_extended_frames_are_refused(
            cmd in any::<u32>(),
            payload in proptest::collection::vec(any::<u8>(), 0..64),
            cut in 1usize..80,
            tail in proptest::collection::vec(any::<u8>(), 1..8),
        ) {
            let frame = encode_request(cmd, &payload);
            let cut = cut.min(frame.len());
            prop_assert!(decode_request(&frame[..frame.len() - cut]).is_err());
            let mut longer = frame.clone();
            longer.extend_from_slice(&tail);
            prop_assert!(decode_request(&longer).is_err());
        }
    }
}
