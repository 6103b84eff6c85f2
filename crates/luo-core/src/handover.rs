//! The handover image: everything that crosses a live update (SPEC §7.2, §7.7).
//!
//! ```text
//! offset size
//!      0    8  magic "LUOHOVER"
//!      8   32  compatible, NUL-padded: the body's format ("luod-handover-v1")
//!     40    8  body length (little-endian)
//!     48    4  CRC-32 of the body
//!     52    4  reserved, 0
//!     56    …  body: postcard encoding of the version named by `compatible`
//! ```
//!
//! The header is fixed forever; the body's format is named by its compatible
//! string, as the kernel's KHO ABI names each of its nodes. A decoder reads the
//! current version and the previous one, and refuses anything else with an error:
//! a daemon started on an image it cannot read must say so, not guess.
//!
//! Decoding hostile bytes never panics and never half-builds state: [`Handover::decode`]
//! either returns a complete, structurally valid image or an error, and
//! [`Handover::validate`] checks it against the handlers before
//! [`Orchestrator::from_handover`](crate::orchestrator::Orchestrator::from_handover)
//! builds anything. Each file's handler data carries its own compatible string.

use std::collections::HashSet;
use std::fmt::Write as _;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use crate::file_handler::{FileHandler, HandlerRegistry};

/// The image's first 8 bytes.
pub const MAGIC: [u8; 8] = *b"LUOHOVER";
/// The body format this build writes.
pub const COMPATIBLE_V1: &str = "luod-handover-v1";
/// Size of the fixed header.
pub const HEADER_SIZE: usize = 56;
/// The largest body accepted (a sanity bound against hostile lengths).
pub const MAX_BODY: u64 = 1 << 30;

#[repr(C)]
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable)]
struct Header {
    magic: [u8; 8],
    compatible: [u8; 32],
    body_len: u64,
    body_crc32: u32,
    reserved: u32,
}
const _: () = assert!(core::mem::size_of::<Header>() == HEADER_SIZE);

/// Why an image was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HandoverError {
    /// Fewer bytes than the header and its body length need.
    #[error("Image truncated: {have} bytes, {need} needed")]
    Truncated {
        /// Bytes present.
        have: usize,
        /// Bytes needed.
        need: usize,
    },
    /// Bytes after the body.
    #[error("{0} trailing bytes after the body")]
    Trailing(usize),
    /// Not a handover image at all.
    #[error("Bad magic")]
    BadMagic,
    /// A body format this build does not read.
    #[error("Unknown format {0:?}")]
    UnknownFormat(String),
    /// The reserved header field is not zero.
    #[error("Reserved header field is {0:#x}")]
    Reserved(u32),
    /// Body length out of bounds.
    #[error("Body length {0} out of bounds")]
    BodyLength(u64),
    /// The body does not match its checksum.
    #[error("Body checksum mismatch")]
    Checksum,
    /// The body does not decode.
    #[error("Body does not decode: {0}")]
    Body(String),
    /// The body decodes but describes an impossible state.
    #[error("{0}")]
    Invalid(String),
}

/// One preserved file in the image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileImage {
    /// The caller's token.
    pub token: u64,
    /// The handler that wrote `data`.
    pub compatible: String,
    /// The handler's per-file data.
    pub data: Vec<u8>,
    /// Position of this file's fd among the fds carried across the exec.
    pub fd_index: u32,
}

/// One session in the image (only FROZEN sessions are carried).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionImage {
    /// Its name.
    pub name: String,
    /// Its owner's uid.
    pub owner: u32,
    /// Its files, in preservation order.
    pub files: Vec<FileImage>,
}

/// The whole image, version-independent: what the next epoch starts from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Handover {
    /// The next epoch's number (`liveupdate-number`).
    pub epoch: u64,
    /// The binary that wrote the image: where to go back if the next one fails.
    pub previous_exe: String,
    /// The sessions, in creation order.
    pub sessions: Vec<SessionImage>,
}

/// Header and body of a `luod-handover-v1` image whose body is `body`:
/// a [`Handover`] or a [`HandoverRef`], which encode to the same bytes.
fn encode_v1<T: Serialize>(body: &T) -> Vec<u8> {
    let body = postcard::to_allocvec(body).expect("postcard cannot fail on in-memory data");
    let mut compatible = [0u8; 32];
    compatible[..COMPATIBLE_V1.len()].copy_from_slice(COMPATIBLE_V1.as_bytes());
    let header = Header {
        magic: MAGIC,
        compatible,
        body_len: body.len() as u64,
        body_crc32: crc32fast::hash(&body),
        reserved: 0,
    };
    let mut out = Vec::with_capacity(HEADER_SIZE + body.len());
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(&body);
    out
}

/// A borrowed view of a [`Handover`] that encodes to the same bytes: the
/// outgoing epoch writes its image from its own sessions without copying each
/// file's data and handler name first.
#[derive(Debug, Serialize, Deserialize)]
pub struct HandoverRef<'a> {
    /// As [`Handover::epoch`].
    pub epoch: u64,
    /// As [`Handover::previous_exe`].
    pub previous_exe: &'a str,
    /// As [`Handover::sessions`].
    #[serde(borrow)]
    pub sessions: Vec<SessionImageRef<'a>>,
}

/// A borrowed [`SessionImage`].
#[derive(Debug, Serialize, Deserialize)]
pub struct SessionImageRef<'a> {
    /// As [`SessionImage::name`].
    pub name: &'a str,
    /// As [`SessionImage::owner`].
    pub owner: u32,
    /// As [`SessionImage::files`].
    #[serde(borrow)]
    pub files: Vec<FileImageRef<'a>>,
}

/// A borrowed [`FileImage`].
#[derive(Debug, Serialize, Deserialize)]
pub struct FileImageRef<'a> {
    /// As [`FileImage::token`].
    pub token: u64,
    /// As [`FileImage::compatible`].
    pub compatible: &'a str,
    /// As [`FileImage::data`].
    pub data: &'a [u8],
    /// As [`FileImage::fd_index`].
    pub fd_index: u32,
}

impl<'a> HandoverRef<'a> {
    /// Decode an image without copying its strings and data: the view borrows
    /// from `bytes`. The same checks as [`Handover::decode`].
    ///
    /// # Errors
    /// As [`Handover::decode`].
    pub fn decode(bytes: &'a [u8]) -> Result<HandoverRef<'a>, HandoverError> {
        let image: HandoverRef<'a> = decode_body(v1_body(bytes)?)?;
        image.check_structure()?;
        Ok(image)
    }

    /// Names valid and unique, tokens unique per session, every fd index used once.
    fn check_structure(&self) -> Result<(), HandoverError> {
        let invalid = |m: String| Err(HandoverError::Invalid(m));
        let mut names = HashSet::new();
        let count = self.fd_count();
        let mut slots = vec![false; count];
        let mut tokens = Vec::new();
        for s in &self.sessions {
            if s.name.is_empty()
                || s.name.len() >= luo_uapi::rfc_v4::SESSION_NAME_LENGTH
                || s.name.contains('\0')
            {
                return invalid(format!("invalid session name {:?}", s.name));
            }
            if !names.insert(s.name) {
                return invalid(format!("session {:?} appears twice", s.name));
            }
            for f in &s.files {
                match slots.get_mut(f.fd_index as usize) {
                    Some(used @ false) => *used = true,
                    _ => {
                        return invalid(format!("fd index {} out of range or reused", f.fd_index));
                    }
                }
            }
            tokens.clear();
            tokens.extend(s.files.iter().map(|f| f.token));
            tokens.sort_unstable();
            if let Some(t) = tokens.windows(2).find(|w| w[0] == w[1]) {
                return invalid(format!(
                    "token {:#x} appears twice in session {:?}",
                    t[0], s.name
                ));
            }
        }
        Ok(())
    }

    /// Check every file against `registry`: its handler exists and reads its data.
    /// This is the whole dry run of `luod --check-handover` after [`decode`](Self::decode).
    ///
    /// # Errors
    /// [`HandoverError::Invalid`] naming the first file that fails.
    pub fn validate(&self, registry: &HandlerRegistry) -> Result<(), HandoverError> {
        for s in &self.sessions {
            for f in &s.files {
                let h = f.handler(registry)?;
                h.deserialize(None, f.data).map_err(|e| {
                    HandoverError::Invalid(format!(
                        "{} rejects token {:#x}: {e}",
                        f.compatible, f.token
                    ))
                })?;
            }
        }
        Ok(())
    }

    /// The image bytes, exactly as [`Handover::encode`] of the same content.
    #[must_use]
    pub fn encode(&self) -> Vec<u8> {
        encode_v1(self)
    }

    /// How many files (and so fds) cross.
    #[must_use]
    pub fn fd_count(&self) -> usize {
        self.sessions.iter().map(|s| s.files.len()).sum()
    }

    /// An owned copy.
    #[must_use]
    pub fn to_owned(&self) -> Handover {
        Handover {
            epoch: self.epoch,
            previous_exe: self.previous_exe.to_owned(),
            sessions: self
                .sessions
                .iter()
                .map(|s| SessionImage {
                    name: s.name.to_owned(),
                    owner: s.owner,
                    files: s
                        .files
                        .iter()
                        .map(|f| FileImage {
                            token: f.token,
                            compatible: f.compatible.to_owned(),
                            data: f.data.to_vec(),
                            fd_index: f.fd_index,
                        })
                        .collect(),
                })
                .collect(),
        }
    }
}

impl FileImageRef<'_> {
    /// The handler the file names, from `registry`.
    ///
    /// # Errors
    /// [`HandoverError::Invalid`] when none is registered under that name.
    pub(crate) fn handler<'r>(
        &self,
        registry: &'r HandlerRegistry,
    ) -> Result<&'r Arc<dyn FileHandler>, HandoverError> {
        registry.by_compatible(self.compatible).ok_or_else(|| {
            HandoverError::Invalid(format!(
                "no handler {:?} for token {:#x}",
                self.compatible, self.token
            ))
        })
    }
}

impl Handover {
    /// How many fds travel with the image.
    #[must_use]
    pub fn fd_count(&self) -> usize {
        self.sessions.iter().map(|s| s.files.len()).sum()
    }

    /// The image's bytes, in the current format.
    #[must_use]
    pub fn encode(&self) -> Vec<u8> {
        // The body type is the in-memory type today; a v2 will map between them.
        encode_v1(self)
    }

    /// Decode and structurally check an image.
    ///
    /// # Errors
    /// A [`HandoverError`] for every way the bytes can be wrong; never panics.
    pub fn decode(bytes: &[u8]) -> Result<Handover, HandoverError> {
        let image: Handover = decode_body(v1_body(bytes)?)?;
        image.view().check_structure()?;
        Ok(image)
    }

    /// A borrowed view of this image.
    #[must_use]
    pub fn view(&self) -> HandoverRef<'_> {
        HandoverRef {
            epoch: self.epoch,
            previous_exe: &self.previous_exe,
            sessions: self
                .sessions
                .iter()
                .map(|s| SessionImageRef {
                    name: &s.name,
                    owner: s.owner,
                    files: s
                        .files
                        .iter()
                        .map(|f| FileImageRef {
                            token: f.token,
                            compatible: &f.compatible,
                            data: &f.data,
                            fd_index: f.fd_index,
                        })
                        .collect(),
                })
                .collect(),
        }
    }

    /// Check every file against `registry`: its handler exists and reads its data.
    ///
    /// # Errors
    /// [`HandoverError::Invalid`] naming the first file that fails.
    pub fn validate(&self, registry: &HandlerRegistry) -> Result<(), HandoverError> {
        self.view().validate(registry)
    }

    /// A readable listing, for `luoctl handover dump`.
    #[must_use]
    pub fn dump(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "format {COMPATIBLE_V1}, epoch {}, previous binary {}",
            self.epoch, self.previous_exe
        );
        let _ = writeln!(
            out,
            "{} sessions, {} files",
            self.sessions.len(),
            self.fd_count()
        );
        for s in &self.sessions {
            let _ = writeln!(
                out,
                "session {:?} owner uid {} ({} files)",
                s.name,
                s.owner,
                s.files.len()
            );
            for f in &s.files {
                let _ = writeln!(
                    out,
                    "  token {:#018x} {} fd#{} data {} bytes",
                    f.token,
                    f.compatible,
                    f.fd_index,
                    f.data.len()
                );
            }
        }
        out
    }
}

/// The body of a `luod-handover-v1` image, once its header checks out: magic,
/// format, reserved field, length and checksum.
fn v1_body(bytes: &[u8]) -> Result<&[u8], HandoverError> {
    let (header, rest) = Header::read_from_prefix(bytes).map_err(|_| HandoverError::Truncated {
        have: bytes.len(),
        need: HEADER_SIZE,
    })?;
    if header.magic != MAGIC {
        return Err(HandoverError::BadMagic);
    }
    let end = header.compatible.iter().position(|&b| b == 0).unwrap_or(32);
    let compatible = String::from_utf8_lossy(&header.compatible[..end]).into_owned();
    if header.compatible[end..].iter().any(|&b| b != 0) {
        return Err(HandoverError::UnknownFormat(compatible));
    }
    if header.reserved != 0 {
        return Err(HandoverError::Reserved(header.reserved));
    }
    if header.body_len > MAX_BODY {
        return Err(HandoverError::BodyLength(header.body_len));
    }
    let body_len = header.body_len as usize;
    if rest.len() < body_len {
        return Err(HandoverError::Truncated {
            have: bytes.len(),
            need: HEADER_SIZE + body_len,
        });
    }
    if rest.len() > body_len {
        return Err(HandoverError::Trailing(rest.len() - body_len));
    }
    if crc32fast::hash(rest) != header.body_crc32 {
        return Err(HandoverError::Checksum);
    }
    match compatible.as_str() {
        COMPATIBLE_V1 => Ok(rest),
        _ => Err(HandoverError::UnknownFormat(compatible)),
    }
}

fn decode_body<'a, T: Deserialize<'a>>(body: &'a [u8]) -> Result<T, HandoverError> {
    let (value, rest) =
        postcard::take_from_bytes::<T>(body).map_err(|e| HandoverError::Body(e.to_string()))?;
    if !rest.is_empty() {
        return Err(HandoverError::Trailing(rest.len()));
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Handover {
        Handover {
            epoch: 3,
            previous_exe: "/usr/bin/luod".into(),
            sessions: vec![
                SessionImage {
                    name: "vm-1".into(),
                    owner: 1000,
                    files: vec![
                        FileImage {
                            token: 0x1A,
                            compatible: "memfd-v1".into(),
                            data: vec![1, 2, 3],
                            fd_index: 0,
                        },
                        FileImage {
                            token: u64::MAX,
                            compatible: "pipe-v1".into(),
                            data: vec![],
                            fd_index: 1,
                        },
                    ],
                },
                SessionImage {
                    name: "empty".into(),
                    owner: 0,
                    files: vec![],
                },
            ],
        }
    }

    #[test]
    fn round_trip() {
        let h = sample();
        assert_eq!(Handover::decode(&h.encode()), Ok(h));
    }

    #[test]
    fn header_layout() {
        let bytes = sample().encode();
        assert_eq!(&bytes[..8], b"LUOHOVER");
        assert_eq!(&bytes[8..8 + COMPATIBLE_V1.len()], COMPATIBLE_V1.as_bytes());
        let body_len = u64::from_le_bytes(bytes[40..48].try_into().expect("8 bytes"));
        assert_eq!(body_len as usize, bytes.len() - HEADER_SIZE);
    }

    #[test]
    fn version_bump_is_refused() {
        let mut bytes = sample().encode();
        bytes[8 + COMPATIBLE_V1.len() - 1] = b'9';
        assert_eq!(
            Handover::decode(&bytes),
            Err(HandoverError::UnknownFormat("luod-handover-v9".into()))
        );
    }

    #[test]
    fn truncation_and_trailing_bytes_are_refused() {
        let bytes = sample().encode();
        assert!(matches!(
            Handover::decode(&bytes[..bytes.len() - 1]),
            Err(HandoverError::Truncated { .. })
        ));
        assert!(matches!(
            Handover::decode(&bytes[..10]),
            Err(HandoverError::Truncated { .. })
        ));
        let mut long = bytes.clone();
        long.push(0);
        assert_eq!(Handover::decode(&long), Err(HandoverError::Trailing(1)));
    }

    #[test]
    fn body_bit_flip_is_caught_by_the_checksum() {
        let mut bytes = sample().encode();
        let last = bytes.len() - 1;
        bytes[last] ^= 0x10;
        assert_eq!(Handover::decode(&bytes), Err(HandoverError::Checksum));
    }

    #[test]
    fn structural_errors_are_refused() {
        let mut h = sample();
        h.sessions[1].name = "vm-1".into();
        assert!(matches!(
            Handover::decode(&h.encode()),
            Err(HandoverError::Invalid(_))
        ));
        let mut h = sample();
        h.sessions[0].files[1].fd_index = 0;
        assert!(matches!(
            Handover::decode(&h.encode()),
            Err(HandoverError::Invalid(_))
        ));
        let mut h = sample();
        h.sessions[0].files[1].token = 0x1A;
        assert!(matches!(
            Handover::decode(&h.encode()),
            Err(HandoverError::Invalid(_))
        ));
        let mut h = sample();
        h.sessions[0].name = "x".repeat(56);
        assert!(matches!(
            Handover::decode(&h.encode()),
            Err(HandoverError::Invalid(_))
        ));
    }
}
