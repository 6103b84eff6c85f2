//! The human rendering of `luoctl status`.
//!
//! ```text
//! state: updated   epoch: 3   pid: 812   sessions: 2   files: 3
//! luod 0.1.0, 1 device handle open
//!
//! session "db"   owner 1000   updated   incoming, retrieved
//!   TOKEN   HANDLER    DESCRIPTION
//!   0x1     memfd-v1   memfd 64 MiB    restored
//!   0x2     pipe-v1    pipe read end
//!
//! session "proxy"   owner 0   normal
//!   (no files)
//! ```

use std::fmt::Write as _;

use luo_wire::control::{SessionStatus, Status};

/// `status` as a table: a header line, then one block per session with its files.
///
/// ```
/// use luo_wire::control::Status;
/// let status = Status {
///     state: "normal".into(), epoch: 0, pid: 1, version: "0.1.0".into(),
///     device_handles: 0, preserved_files: 0, sessions: vec![],
/// };
/// assert!(luoctl::render_status(&status).starts_with("state: normal   epoch: 0"));
/// ```
#[must_use]
pub fn render_status(status: &Status) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "state: {}   epoch: {}   pid: {}   sessions: {}   files: {}",
        status.state,
        status.epoch,
        status.pid,
        status.sessions.len(),
        status.preserved_files
    );
    let _ = writeln!(
        out,
        "luod {}, {} device handle{} open",
        status.version,
        status.device_handles,
        if status.device_handles == 1 { "" } else { "s" }
    );
    if status.sessions.is_empty() {
        out.push_str("\nno sessions\n");
    }
    for session in &status.sessions {
        out.push('\n');
        render_session(&mut out, session);
    }
    out
}

fn render_session(out: &mut String, session: &SessionStatus) {
    let marks: Vec<&str> = [
        (session.incoming, "incoming"),
        (session.retrieved, "retrieved"),
    ]
    .into_iter()
    .filter_map(|(set, mark)| set.then_some(mark))
    .collect();
    let mut title = format!(
        "session {:?}   owner {}   {}",
        session.name, session.owner_uid, session.state
    );
    if !marks.is_empty() {
        let _ = write!(title, "   {}", marks.join(", "));
    }
    let _ = writeln!(out, "{title}");
    if session.files.is_empty() {
        out.push_str("  (no files)\n");
        return;
    }
    let rows: Vec<[String; 4]> = session
        .files
        .iter()
        .map(|f| {
            [
                format!("{:#x}", f.token),
                f.handler.clone(),
                f.description.clone(),
                if f.restored { "restored" } else { "" }.to_owned(),
            ]
        })
        .collect();
    let header = [
        "TOKEN".to_owned(),
        "HANDLER".to_owned(),
        "DESCRIPTION".to_owned(),
        String::new(),
    ];
    let mut widths = [0usize; 4];
    for row in std::iter::once(&header).chain(&rows) {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    for row in std::iter::once(&header).chain(&rows) {
        let mut line = String::new();
        for (cell, width) in row.iter().zip(widths) {
            let _ = write!(line, "  {cell:<width$}");
        }
        let _ = writeln!(out, "{}", line.trim_end());
    }
}

#[cfg(test)]
mod tests {
    use luo_wire::control::FileStatus;

    use super::*;

    fn file(token: u64, handler: &str, description: &str, restored: bool) -> FileStatus {
        FileStatus {
            token,
            handler: handler.into(),
            description: description.into(),
            restored,
        }
    }

    fn example() -> Status {
        Status {
            state: "updated".into(),
            epoch: 3,
            pid: 812,
            version: "0.1.0".into(),
            device_handles: 1,
            preserved_files: 3,
            sessions: vec![
                SessionStatus {
                    name: "db".into(),
                    owner_uid: 1000,
                    state: "updated".into(),
                    incoming: true,
                    retrieved: true,
                    files: vec![
                        file(1, "memfd-v1", "memfd 64 MiB", true),
                        file(0xdead_beef, "pipe-v1", "pipe read end", false),
                    ],
                },
                SessionStatus {
                    name: "proxy".into(),
                    owner_uid: 0,
                    state: "normal".into(),
                    incoming: false,
                    retrieved: false,
                    files: vec![],
                },
            ],
        }
    }

    #[test]
    fn header_line_sums_up_the_daemon() {
        let text = render_status(&example());
        let mut lines = text.lines();
        assert_eq!(
            lines.next(),
            Some("state: updated   epoch: 3   pid: 812   sessions: 2   files: 3")
        );
        assert_eq!(lines.next(), Some("luod 0.1.0, 1 device handle open"));
    }

    #[test]
    fn sessions_show_owner_state_and_marks() {
        let text = render_status(&example());
        assert!(
            text.contains("session \"db\"   owner 1000   updated   incoming, retrieved\n"),
            "{text}"
        );
        assert!(
            text.contains("session \"proxy\"   owner 0   normal\n  (no files)\n"),
            "{text}"
        );
    }

    #[test]
    fn files_are_aligned_with_hex_tokens_and_restored_marks() {
        let text = render_status(&example());
        let expected = "  TOKEN       HANDLER   DESCRIPTION\n\
                        \x20 0x1         memfd-v1  memfd 64 MiB   restored\n\
                        \x20 0xdeadbeef  pipe-v1   pipe read end\n";
        assert!(text.contains(expected), "{text}");
        assert!(
            text.lines().all(|l| l == l.trim_end()),
            "trailing blanks:\n{text}"
        );
    }

    #[test]
    fn no_sessions_says_so() {
        let mut status = example();
        status.sessions.clear();
        status.preserved_files = 0;
        status.device_handles = 0;
        let text = render_status(&status);
        assert!(text.contains("0 device handles open"), "{text}");
        assert!(text.ends_with("\nno sessions\n"), "{text}");
    }

    #[test]
    fn names_are_quoted_so_odd_ones_stay_on_one_line() {
        let mut status = example();
        status.sessions[1].name = "a\nb".into();
        assert!(render_status(&status).contains("session \"a\\nb\""));
    }
}
