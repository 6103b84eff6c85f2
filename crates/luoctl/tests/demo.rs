//! `luoctl demo`, as a user runs it: the real binary, which starts luod from
//! itself (`luoctl daemon`), live-updates it, hands the demo service over, and
//! must say that every key survived and no request failed. No timing is
//! asserted: the numbers it prints are measurements, not limits.

use std::process::Command;

fn run_demo(args: &[&str]) -> (bool, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_luoctl"))
        .arg("demo")
        .args(args)
        // The demo makes its own directory; it must not need a daemon of ours.
        .env_remove("LUO_SOCKET")
        .env_remove("NOTIFY_SOCKET")
        .output()
        .expect("run luoctl demo");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// The value after `label` on the line that has it, e.g. the `0` of `0 failed`.
fn number_before(text: &str, label: &str) -> Option<u64> {
    let at = text.find(label)?;
    text[..at].split_whitespace().last()?.parse().ok()
}

#[test]
fn the_demo_carries_every_key_across_the_update_without_a_failed_request() {
    let (ok, out, err) = run_demo(&[]);
    assert!(ok, "luoctl demo failed\nstdout:\n{out}\nstderr:\n{err}");
    for step in 1..=8 {
        assert!(
            out.contains(&format!("[{step}/8] ")),
            "step {step} missing:\n{out}"
        );
    }
    assert!(!out.contains("failed\n"), "{out}");
    assert!(out.contains("state survived: 2000/2000 keys"), "{out}");
    assert_eq!(number_before(&out, "failed ("), Some(0), "{out}");
    assert!(out.contains("(0 connection refused)"), "{out}");
    assert!(out.contains("stale (ESTALE)"), "{out}");
    assert!(out.contains("epoch 0 → 1"), "{out}");
    assert!(
        out.trim_end()
            .lines()
            .last()
            .is_some_and(|l| l.starts_with("demo ok")),
        "{out}"
    );

    // Both instances served traffic, and the new one is a different process.
    let old = number_before(&out, "answered by the old instance").expect("old count");
    let new = number_before(&out, "by the new,").expect("new count");
    assert!(old > 0 && new > 0, "{out}");

    // The work directory is gone.
    let dir = out
        .lines()
        .find_map(|l| l.strip_prefix("work directory "))
        .and_then(|l| l.split(' ').next())
        .expect("work directory line");
    assert!(!std::path::Path::new(dir).exists(), "{dir} left behind");
}

#[test]
fn the_key_count_is_an_option() {
    let (ok, out, err) = run_demo(&["--keys", "10"]);
    assert!(ok, "stdout:\n{out}\nstderr:\n{err}");
    assert!(out.contains("state survived: 10/10 keys"), "{out}");
}
