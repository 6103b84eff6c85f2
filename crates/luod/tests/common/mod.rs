//! The test kit, with this package's own `luod` binary.

#![allow(dead_code)]

pub use luo_testkit::*;

/// The daemon under test.
pub const LUOD: &str = env!("CARGO_BIN_EXE_luod");

/// `Luod::start()` and `Luod::start_with(..)` for this package's binary.
pub trait StartLuod {
    fn start() -> Luod;
    fn start_with(args: &[&str], env: &[(&str, &str)]) -> Luod;
}

impl StartLuod for Luod {
    fn start() -> Luod {
        Luod::start_binary(std::path::Path::new(LUOD), &[], &[])
    }

    fn start_with(args: &[&str], env: &[(&str, &str)]) -> Luod {
        Luod::start_binary(std::path::Path::new(LUOD), args, env)
    }
}
