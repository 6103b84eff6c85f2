//! Placeholder: this crate is built by the daemon issue (SPEC §2).

#![forbid(unsafe_code)]
