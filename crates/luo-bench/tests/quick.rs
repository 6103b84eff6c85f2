//! Every suite still runs: `luo-bench <suite> --quick` against a real luod, and
//! what it prints is a machine line and result lines with the expected keys,
//! which `luo-bench table` renders. A smoke test for CI: no figure is checked,
//! since timing assertions have no place in tests.

use std::io::Write;
use std::process::{Command, Stdio};

use serde_json::Value;

const BENCH: &str = env!("CARGO_BIN_EXE_luo-bench");

/// Run `luo-bench ARGS`, which must succeed; its stdout lines, parsed.
fn run(args: &[&str]) -> Vec<Value> {
    let out = Command::new(BENCH)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run luo-bench");
    assert!(
        out.status.success(),
        "luo-bench {args:?} failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .expect("UTF-8 output")
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

fn check_machine(line: &Value) {
    assert_eq!(line["suite"], "machine", "first line: {line}");
    assert_eq!(line["quick"], true, "{line}");
    for key in ["command", "nproc", "model", "kernel", "loadavg", "root"] {
        assert!(line.get(key).is_some(), "machine line lacks {key}: {line}");
    }
}

/// A result line: the keys of issue 5, and numbers where numbers belong.
fn check_result(line: &Value, suite: &str) {
    assert_eq!(line["suite"], suite, "{line}");
    for key in ["metric", "params", "median", "unit", "baseline", "ratio"] {
        assert!(line.get(key).is_some(), "result lacks {key}: {line}");
    }
    assert!(line["params"].is_object(), "{line}");
    assert!(line["unit"].is_string(), "{line}");
    let has_spread =
        line.get("p99").is_some() || (line.get("min").is_some() && line.get("max").is_some());
    assert!(has_spread, "result has neither p99 nor min/max: {line}");
    for key in ["median", "p99", "min", "max"] {
        if let Some(v) = line.get(key) {
            assert!(v.is_number(), "{key} is not a number: {line}");
        }
    }
    for key in ["baseline", "ratio"] {
        assert!(
            line[key].is_number() || line[key].is_null(),
            "{key} is neither a number nor null: {line}"
        );
    }
    if let Some(t) = line.get("target") {
        assert!(t["met"].is_boolean() && t["text"].is_string(), "{line}");
    }
}

/// Run a suite quickly and check every line; returns the lines.
fn suite(command: &str, suite: &str, metrics: &[&str]) -> Vec<Value> {
    let lines = run(&[command, "--quick"]);
    let (machine, results) = lines.split_first().expect("some output");
    check_machine(machine);
    assert!(!results.is_empty(), "{command} printed no result");
    for line in results {
        check_result(line, suite);
    }
    for metric in metrics {
        assert!(
            results.iter().any(|l| l["metric"] == *metric),
            "{command} printed no {metric}"
        );
    }
    lines
}

#[test]
fn latency() {
    suite(
        "latency",
        "latency",
        &["raw_fd", "get_state", "preserve_unpreserve"],
    );
}

#[test]
fn handover() {
    suite(
        "handover",
        "handover",
        &["blackout", "daemon_blackout", "per_fd"],
    );
}

#[test]
fn zero_copy() {
    suite("zero-copy", "zero_copy", &["restart", "size_independence"]);
}

#[test]
fn memory() {
    suite("memory", "memory", &["per_fd", "per_fd_after_update"]);
}

#[test]
fn throughput() {
    suite("throughput", "throughput", &["preserve_unpreserve"]);
}

#[test]
fn the_table_renders_what_the_suites_print() {
    let lines = suite("memory", "memory", &[]);
    let input: String = lines.iter().map(|l| format!("{l}\n")).collect();
    let mut child = Command::new(BENCH)
        .arg("table")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run luo-bench table");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(input.as_bytes())
        .expect("write lines");
    let out = child.wait_with_output().expect("table output");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let doc = String::from_utf8(out.stdout).expect("UTF-8");
    assert!(doc.starts_with("# Benchmarks\n"), "{doc}");
    for part in [
        "## Machine",
        "## Targets",
        "## memory",
        "`luo-bench memory --quick`",
        "--quick",
    ] {
        assert!(doc.contains(part), "no {part:?} in:\n{doc}");
    }
}

#[test]
fn a_bad_line_is_refused_with_its_place() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("bad.jsonl");
    std::fs::write(&path, "{\"suite\":\"latency\"}\n").expect("write");
    let out = Command::new(BENCH)
        .arg("table")
        .arg(&path)
        .output()
        .expect("run luo-bench table");
    assert!(!out.status.success());
    assert!(out.stdout.is_empty(), "nothing printed on failure");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad.jsonl:1: not a result"), "{err}");
}
