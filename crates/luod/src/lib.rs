//! `luod`: the daemon that plays the kernel's part of LUO.
//!
//! It holds sessions and their preserved fds ([`luo_core`]), serves the seed's
//! uAPI over a unix socket ([`luo_wire`]), and carries everything across a live
//! update by re-executing itself ([`update`]).
//!
//! - [`config`]: command line.
//! - [`server`]: the event loop and the handles.
//! - `dispatch`: device and session requests.
//! - `control`: the `luoctl` socket.
//! - [`update`]: the live update and its rollback.

#![forbid(unsafe_code)]

pub mod cli;
pub mod config;
mod control;
mod dispatch;
pub mod listener;
mod notify;
pub mod server;
pub mod update;

pub use config::Config;
pub use server::{Daemon, StartError};
