//! `luo-bench table`: the markdown of `docs/benchmarks.md`, made from result
//! lines so that no figure is typed by hand.
//!
//! Input: JSON lines as the suites print them (machine lines and
//! [`Record`]s), from files or stdin, concatenated; empty lines are skipped.
//! Output: the machine, the commands, a table of every target (met or missed),
//! one table per suite in the order the suites first appear, and, for each
//! missed target, the analysis kept in `crates/luo-bench/src/misses.md` under a
//! `### suite/metric` heading.
//!
//! # Unhappy paths
//! A line that is not JSON, or not a machine line nor a result, stops the
//! rendering with its file and line number ([`Error::Input`]); nothing is
//! printed then, so a broken input never half-overwrites the doc.

use std::fmt::Write as _;
use std::io::{Read, Write};
use std::path::PathBuf;

use serde_json::Value;

use crate::error::{Context, Error, Result};
use crate::machine::Machine;
use crate::record::Record;

/// The analyses of missed targets, by `### suite/metric` heading.
const MISSES: &str = include_str!("misses.md");

/// What each suite measures, in a sentence or two.
const SUITES: [(&str, &str); 5] = [
    (
        "latency",
        "One request at a time on one session, through the `luo` client library, against a raw \
         `SOCK_SEQPACKET` round trip carrying one fd as `SCM_RIGHTS` to a blocking echo child \
         process (the floor for any userspace design). `raw_pair` is that round trip followed \
         by one without an fd: the same two messages as PRESERVE_FD + UNPRESERVE_FD. Microseconds.",
    ),
    (
        "throughput",
        "1, 8 and 64 client threads, a session each, doing PRESERVE_FD + UNPRESERVE_FD pairs of \
         an eventfd back to back; a pair counts as **2 ops**. Baseline: the same messages against \
         a one-thread epoll echo peer (luod's loop shape without its work), in alternating rounds.",
    ),
    (
        "memory",
        "Daemon VmRSS per preserved fd with 100 sessions × 1000 files, minus the VmRSS of the \
         same daemon idle; again after a live update has carried them. Params give the same \
         delta for RssAnon and Pss. Kernel memory (each fd's `struct file`) is not counted. \
         Where RLIMIT_NOFILE (`capped_by`) does not let luod hold 100k fds, each session holds \
         fewer (`files`, against `requested_files`).",
    ),
    (
        "handover",
        "Blackout of a live update: from the `update` request to the first successful \
         RESTORE_FD in the new epoch, with the fds (empty memfds) spread over 1000 sessions. \
         `daemon_blackout` is the span the new epoch reports itself; `per_fd` divides the \
         blackout by the fds (`marginal_us_per_fd` first subtracts the baseline). Baseline: the \
         same update carrying one fd. A size RLIMIT_NOFILE (`capped_by`) does not let luod \
         hold runs at the most it can (`files` against `requested_files`), and is also \
         projected by a least-squares line through every round of every size measured \
         (`projected`, `n` = 0; `slope_us_per_fd` and `intercept_ms` give the line). The \
         global PREPARE before each update is not timed; luod starts the update's dry-run \
         child during it.",
    ),
    (
        "zero_copy",
        "A service restart keeping a populated memfd: through luo (PRESERVE_FD, PREPARE, update, \
         RETRIEVE_SESSION, RESTORE_FD, 256 pages read back and checked) against saving the state \
         to tmpfs and loading it back with `sendfile` (one copy each way; freeing and deleting \
         not timed). `ratio` is copy/luo. `size_independence` compares the largest state with a \
         4 KiB one restarted in alternation.",
    ),
];

/// Parsed input: machine lines and results, in input order.
#[derive(Debug, Default)]
struct Results {
    machines: Vec<Machine>,
    records: Vec<Record>,
    /// Every input line, as given.
    lines: Vec<String>,
}

/// Render `files` (stdin when empty) to `out`.
///
/// # Errors
/// [`Error::Io`] for an unreadable file, [`Error::Input`] for a bad line.
pub fn render_files(files: &[PathBuf], out: &mut dyn Write) -> Result<()> {
    let mut results = Results::default();
    if files.is_empty() {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .context(|| "Cannot read stdin".to_owned())?;
        parse("<stdin>", &text, &mut results)?;
    }
    for f in files {
        let text = std::fs::read_to_string(f).context(|| format!("Cannot read {}", f.display()))?;
        parse(&f.display().to_string(), &text, &mut results)?;
    }
    let doc = render(&results);
    out.write_all(doc.as_bytes())
        .and_then(|()| out.flush())
        .context(|| "Cannot write the table".to_owned())
}

fn parse(file: &str, text: &str, into: &mut Results) -> Result<()> {
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let bad = |why: String| Error::Input {
            file: file.to_owned(),
            line: i + 1,
            why,
        };
        let value: Value = serde_json::from_str(line).map_err(|e| bad(format!("not JSON: {e}")))?;
        into.lines.push(line.trim().to_owned());
        if value.get("suite").and_then(Value::as_str) == Some("machine") {
            into.machines.push(
                serde_json::from_value(value)
                    .map_err(|e| bad(format!("not a machine line: {e}")))?,
            );
        } else {
            into.records.push(
                serde_json::from_value(value).map_err(|e| bad(format!("not a result: {e}")))?,
            );
        }
    }
    Ok(())
}

/// A number as the tables show it: integers grouped by thousands, small
/// figures with the decimals that matter.
fn num(x: f64) -> String {
    let a = x.abs();
    if a >= 1000.0 {
        let digits = format!("{:.0}", a);
        let mut grouped = String::new();
        for (i, c) in digits.chars().enumerate() {
            if i > 0 && (digits.len() - i) % 3 == 0 {
                grouped.push(',');
            }
            grouped.push(c);
        }
        format!("{}{grouped}", if x < 0.0 { "-" } else { "" })
    } else if a >= 100.0 {
        format!("{x:.0}")
    } else if a >= 10.0 {
        format!("{x:.1}")
    } else if a >= 0.1 || a == 0.0 {
        format!("{x:.2}")
    } else {
        format!("{x:.3}")
    }
}

fn opt(x: Option<f64>) -> String {
    x.map_or_else(|| "—".to_owned(), num)
}

fn params(r: &Record) -> String {
    r.params
        .iter()
        .map(|(k, v)| match v {
            Value::String(s) => format!("{k}={s}"),
            other => format!("{k}={other}"),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// The figure a target judges, as text.
fn judged(r: &Record) -> String {
    let Some(t) = &r.target else {
        return String::new();
    };
    let projected = r.params.get("projected") == Some(&Value::Bool(true));
    let figure = match t.of.as_str() {
        "ratio" => format!(
            "{}× ({} {} vs {} {})",
            opt(r.ratio),
            num(r.median),
            r.unit,
            opt(r.baseline),
            r.unit
        ),
        _ => format!("{} {}", num(r.median), r.unit),
    };
    if projected {
        format!("{figure}, projected, not measured")
    } else {
        figure
    }
}

fn key(r: &Record) -> String {
    format!("{}/{}", r.suite, r.metric)
}

/// The analysis of `suite/metric` in [`MISSES`], if there is one.
fn analysis(key: &str) -> Option<&'static str> {
    let heading = format!("### {key}\n");
    let start = MISSES.find(&heading)? + heading.len();
    let rest = &MISSES[start..];
    let end = rest.find("\n### ").map_or(rest.len(), |i| i + 1);
    Some(rest[..end].trim())
}

fn render(results: &Results) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "# Benchmarks\n");
    let _ = writeln!(
        s,
        "<!-- Generated by scripts/bench-table from the JSON lines of luo-bench: do not edit; \
         re-run the commands below. -->\n"
    );
    let _ = writeln!(
        s,
        "How fast, how far and how small `luod` is. Every suite of `crates/luo-bench` starts its \
         own `luod` in a temporary directory, runs a fixed workload through the `luo` client \
         library, measures its baseline in the same run, and prints one JSON line per result; \
         this page is rendered from those lines.\n"
    );
    if results.machines.iter().any(|m| m.quick) {
        let _ = writeln!(
            s,
            "> **These are `--quick` results**: smoke-test sizes, not measurements.\n"
        );
    }
    render_machine(&mut s, results);
    render_targets(&mut s, results);
    let mut suites: Vec<&str> = Vec::new();
    for r in &results.records {
        if !suites.contains(&r.suite.as_str()) {
            suites.push(&r.suite);
        }
    }
    for suite in suites {
        render_suite(&mut s, suite, results);
    }
    render_misses(&mut s, results);
    render_raw(&mut s, results);
    s
}

/// The input itself, so the page carries the lines it was made from.
fn render_raw(s: &mut String, results: &Results) {
    let _ = writeln!(s, "## Raw results\n");
    let _ = writeln!(
        s,
        "<details><summary>The JSON lines this page was rendered from</summary>\n\n```json"
    );
    for line in &results.lines {
        let _ = writeln!(s, "{line}");
    }
    let _ = writeln!(s, "```\n\n</details>");
}

fn render_machine(s: &mut String, results: &Results) {
    let Some(m) = results.machines.first() else {
        return;
    };
    let unknown = || "unknown".to_owned();
    let _ = writeln!(s, "## Machine\n");
    let _ = writeln!(s, "| | |\n|---|---|");
    let _ = writeln!(
        s,
        "| CPU | {} × {} |",
        m.nproc.map_or_else(unknown, |n| n.to_string()),
        m.model.clone().unwrap_or_else(unknown)
    );
    let _ = writeln!(
        s,
        "| kernel | {} |",
        m.kernel.clone().unwrap_or_else(unknown)
    );
    let _ = writeln!(
        s,
        "| memory | {} GiB |",
        m.mem_total_gib.map_or_else(unknown, num)
    );
    let _ = writeln!(
        s,
        "| privileges | {} |",
        if m.root { "root" } else { "not root" }
    );
    let _ = writeln!(
        s,
        "| source | luo {} {} |\n",
        m.luo_version,
        m.commit.clone().unwrap_or_default()
    );
    let _ = writeln!(
        s,
        "The load average when each command started says how quiet the machine was (it is busy \
         at its CPU count). On a shared or virtual machine absolute figures move between runs \
         with the host's load; the ratios, whose two sides are measured in the same run, move \
         much less.\n"
    );
    let _ = writeln!(
        s,
        "| command | load average at start (1, 5, 15 min) |\n|---|---|"
    );
    for m in &results.machines {
        let _ = writeln!(
            s,
            "| `{}` | {} |",
            m.command,
            m.loadavg.clone().unwrap_or_else(unknown)
        );
    }
    let _ = writeln!(
        s,
        "\nTo reproduce: `cargo build --release -p luo-bench`, run each command above as \
         `target/release/luo-bench ...` (or `cargo run --release -p luo-bench -- ...`) \
         appending to `results.jsonl`, then `scripts/bench-table results.jsonl > \
         docs/benchmarks.md`.\n"
    );
}

fn render_targets(s: &mut String, results: &Results) {
    let targets: Vec<&Record> = results
        .records
        .iter()
        .filter(|r| r.target.is_some())
        .collect();
    if targets.is_empty() {
        return;
    }
    let _ = writeln!(s, "## Targets\n");
    let _ = writeln!(s, "| target | result | figure | met |\n|---|---|---|---|");
    for r in targets {
        let Some(t) = &r.target else { continue };
        let brief = params_brief(r);
        let _ = writeln!(
            s,
            "| {} | {}{} | {} | {} |",
            t.text,
            key(r),
            if brief.is_empty() {
                String::new()
            } else {
                format!(" ({brief})")
            },
            judged(r),
            if t.met { "met" } else { "**missed**" }
        );
    }
    let _ = writeln!(s);
}

/// The parameters that tell a result from its neighbours.
fn params_brief(r: &Record) -> String {
    ["placement", "clients", "files", "size", "kind"]
        .iter()
        .filter_map(|k| {
            r.params.get(*k).map(|v| match v {
                Value::String(s) => s.clone(),
                other => format!("{k}={other}"),
            })
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn render_suite(s: &mut String, suite: &str, results: &Results) {
    let _ = writeln!(s, "## {suite}\n");
    if let Some((_, text)) = SUITES.iter().find(|(name, _)| *name == suite) {
        let _ = writeln!(s, "{text}\n");
    }
    let _ = writeln!(
        s,
        "| metric | params | median | p99 | min | max | n | unit | baseline | ratio | ratio is |\n\
         |---|---|---|---|---|---|---|---|---|---|---|"
    );
    for r in results.records.iter().filter(|r| r.suite == suite) {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            r.metric,
            params(r),
            num(r.median),
            num(r.p99),
            num(r.min),
            num(r.max),
            r.n,
            r.unit,
            opt(r.baseline),
            opt(r.ratio),
            r.ratio_is.as_deref().unwrap_or("—")
        );
    }
    let baselines: Vec<String> = results
        .records
        .iter()
        .filter(|r| r.suite == suite)
        .filter_map(|r| r.baseline_is.clone())
        .fold(Vec::new(), |mut v, b| {
            if !v.contains(&b) {
                v.push(b);
            }
            v
        });
    if !baselines.is_empty() {
        let _ = writeln!(s, "\nBaselines: {}.", baselines.join("; "));
    }
    let _ = writeln!(s);
}

fn render_misses(s: &mut String, results: &Results) {
    let missed: Vec<&Record> = results
        .records
        .iter()
        .filter(|r| r.target.as_ref().is_some_and(|t| !t.met))
        .collect();
    if missed.is_empty() {
        return;
    }
    let _ = writeln!(s, "## Why the missed targets miss\n");
    if let Some(costs) = analysis("costs") {
        let _ = writeln!(s, "{costs}\n");
    }
    let mut seen: Vec<String> = Vec::new();
    for r in missed {
        let k = key(r);
        if seen.contains(&k) {
            continue;
        }
        seen.push(k.clone());
        let text = r.target.as_ref().map_or("", |t| t.text.as_str());
        let _ = writeln!(s, "### {text} ({k}: {})\n", judged(r));
        let _ = writeln!(
            s,
            "{}\n",
            analysis(&k).unwrap_or("No analysis recorded for this figure yet.")
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::Summary;

    fn sample() -> Results {
        let mut results = Results::default();
        let text = [
            Machine::describe("luo-bench latency".into(), false).to_line(),
            Record::new("latency", "get_state", "us", Summary::of(&[10.0, 12.0]))
                .param("iterations", 2)
                .baseline(5.0, "raw")
                .at_most("ratio", 1.5, "GET_STATE ≤ 1.5× raw")
                .to_line(),
            String::new(),
            Record::new("memory", "per_fd", "bytes", Summary::one(300.0))
                .baseline_only(4e6, "idle")
                .at_most("median", 512.0, "≤ 512 bytes per fd")
                .to_line(),
        ]
        .join("\n");
        parse("t", &text, &mut results).expect("parse");
        results
    }

    #[test]
    fn renders_every_part() {
        let doc = render(&sample());
        assert!(doc.starts_with("# Benchmarks\n"));
        assert!(doc.contains("## Machine"));
        assert!(doc.contains("| `luo-bench latency` |"));
        assert!(doc.contains(
            "| GET_STATE ≤ 1.5× raw | latency/get_state | 2.00× (10.0 us vs 5.00 us) | **missed** |"
        ));
        assert!(doc.contains("| ≤ 512 bytes per fd | memory/per_fd | 300 bytes | met |"));
        assert!(doc.contains("## Raw results"));
        assert!(doc.contains("{\"suite\":\"memory\",\"metric\":\"per_fd\""));
        assert!(doc.contains("## latency\n"));
        assert!(doc.contains("| get_state | iterations=2 | 10.0 | 12.0 | 10.0 | 12.0 | 2 | us | 5.00 | 2.00 | median/baseline |"));
        assert!(doc.contains("## Why the missed targets miss"));
        assert!(!doc.contains("`--quick` results"));
    }

    #[test]
    fn bad_lines_name_their_place() {
        let mut r = Results::default();
        let e = parse("f.jsonl", "{}\n", &mut r).expect_err("not a result");
        assert!(e.to_string().starts_with("f.jsonl:1: not a result"), "{e}");
        let e = parse("f.jsonl", "\n\nnope\n", &mut r).expect_err("not JSON");
        assert!(e.to_string().starts_with("f.jsonl:3: not JSON"), "{e}");
    }

    #[test]
    fn numbers_keep_the_digits_that_matter() {
        assert_eq!(num(1_234_567.8), "1,234,568");
        assert_eq!(num(123.4), "123");
        assert_eq!(num(12.34), "12.3");
        assert_eq!(num(1.234), "1.23");
        assert_eq!(num(0.01234), "0.012");
        assert_eq!(num(0.0), "0.00");
    }

    #[test]
    fn every_figure_with_a_target_has_an_analysis() {
        for key in [
            "costs",
            "latency/get_state",
            "latency/preserve_unpreserve",
            "throughput/preserve_unpreserve",
            "memory/per_fd",
            "memory/per_fd_after_update",
            "handover/blackout",
            "zero_copy/restart",
            "zero_copy/size_independence",
        ] {
            let text = analysis(key).unwrap_or_else(|| panic!("no analysis for {key}"));
            assert!(!text.is_empty() && !text.contains("### "), "{key}: {text}");
        }
        assert_eq!(analysis("no/such"), None);
    }
}
