//! The machine a run measured, as the first JSON line of every run:
//!
//! ```text
//! {"suite":"machine","command":"luo-bench latency","nproc":2,
//!  "model":"Intel(R) Xeon(R) ...","kernel":"6.18.4","mem_total_gib":23.4,
//!  "loadavg":"0.52 0.61 0.70","root":true,"luo_version":"0.1.0","commit":"b3870f0-dirty"}
//! ```
//!
//! Everything comes from `/proc` (and `git`, or `$LUO_BENCH_COMMIT`, for the
//! revision); a field that cannot be read is null rather than a failed run.

use serde::{Deserialize, Serialize};

/// What a run ran on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Machine {
    /// Always `"machine"`.
    pub suite: String,
    /// The command line, program name first.
    pub command: String,
    /// Whether this was a `--quick` run (not a measurement).
    pub quick: bool,
    /// Online CPUs.
    pub nproc: Option<usize>,
    /// The first `model name` of `/proc/cpuinfo`.
    pub model: Option<String>,
    /// `/proc/sys/kernel/osrelease`.
    pub kernel: Option<String>,
    /// `MemTotal` of `/proc/meminfo`, in GiB.
    pub mem_total_gib: Option<f64>,
    /// `/proc/loadavg`'s three averages when the run started: how busy the
    /// machine was.
    pub loadavg: Option<String>,
    /// Whether the run had root's privileges (needed for 100k fds in flight).
    pub root: bool,
    /// This crate's version.
    pub luo_version: String,
    /// `git describe --always --dirty` of the source tree, when available.
    pub commit: Option<String>,
}

impl Machine {
    /// Describe this machine now, for a run started as `command`.
    #[must_use]
    pub fn describe(command: String, quick: bool) -> Machine {
        let read = |path: &str| std::fs::read_to_string(path).ok();
        let cpuinfo = read("/proc/cpuinfo").unwrap_or_default();
        let model = cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("model name"))
            .and_then(|rest| rest.split_once(':'))
            .map(|(_, v)| v.trim().to_owned());
        let mem_total_gib = read("/proc/meminfo").and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
                .map(|kib| crate::record::round(kib / f64::from(1 << 20)))
        });
        let loadavg = read("/proc/loadavg")
            .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "));
        Machine {
            suite: "machine".to_owned(),
            command,
            quick,
            nproc: std::thread::available_parallelism().ok().map(usize::from),
            model,
            kernel: read("/proc/sys/kernel/osrelease").map(|k| k.trim().to_owned()),
            mem_total_gib,
            loadavg,
            root: rustix::process::geteuid().is_root(),
            luo_version: env!("CARGO_PKG_VERSION").to_owned(),
            commit: commit(),
        }
    }

    /// The JSON line, without its newline.
    #[must_use]
    pub fn to_line(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|_| String::from("{}"))
    }
}

/// The source tree's revision: `$LUO_BENCH_COMMIT` when set (a binary built
/// from an exported tree), else `git describe` of the checkout this binary was
/// built from, if it is still there.
fn commit() -> Option<String> {
    if let Some(c) = std::env::var("LUO_BENCH_COMMIT")
        .ok()
        .filter(|c| !c.is_empty())
    {
        return Some(c);
    }
    let out = std::process::Command::new("git")
        .args([
            "-C",
            env!("CARGO_MANIFEST_DIR"),
            "describe",
            "--always",
            "--dirty",
        ])
        .stderr(std::process::Stdio::null())
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
        .filter(|s| !s.is_empty())
}
