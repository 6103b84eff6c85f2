//! The ABI of the Live Update Orchestrator, as `luod` serves it.
//!
//! This crate holds numbers and layouts only: command values ([`ioctl`]), the
//! extensible-struct decoding rules every command obeys ([`extensible`]), and one
//! module per ABI profile. Profile `rfc-v4` ([`rfc_v4`]) is the uAPI of the LUO
//! session patch ("liveupdate: luo_session: Add ioctls for file preservation and
//! state management", v4 14/30). A later profile (the mainline kernel's) joins as a
//! sibling module without renumbering anything here.
//!
//! Nothing in this crate does I/O. The daemon decodes a request with
//! [`extensible::decode`] against a profile's op table and answers with
//! [`extensible::reply_bytes`]; the client library encodes with
//! [`zerocopy::IntoBytes`].

#![forbid(unsafe_code)]

pub mod extensible;
pub mod ioctl;
pub mod rfc_v4;

pub use rustix::io::Errno;
