//! How results reach people and scripts: compact tables and `--json` on stdout, notes on stderr.
//!
//! Nothing here panics on a closed stream, unlike `println!`: results on stdout go through
//! [`outln!`] and friends, which return the write's error (a closed pipe, as in
//! `conclave status | head -1`, ends the command quietly with exit 0: see `main`), and notes on
//! stderr go through [`note!`], which drops what cannot be written (a note is never worth
//! failing or stopping for).

use std::io::Write;

/// `println!` that returns an `io::Result` instead of panicking when stdout is closed.
macro_rules! outln {
    () => {{
        use std::io::Write as _;
        writeln!(std::io::stdout())
    }};
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        writeln!(std::io::stdout(), $($arg)*)
    }};
}

/// `print!` that returns an `io::Result` instead of panicking when stdout is closed.
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        write!(std::io::stdout(), $($arg)*)
    }};
}

/// `eprintln!` that drops the line when stderr is closed instead of panicking.
macro_rules! note {
    () => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr());
    }};
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

pub(crate) use {note, out, outln};

use chrono::{DateTime, Local, Utc};
use conclave_core::model::format_duration_secs;
use serde::Serialize;

/// Prints a value as pretty JSON on stdout.
pub fn print_json<T: Serialize + ?Sized>(value: &T) -> anyhow::Result<()> {
    let text = serde_json::to_string_pretty(value)?;
    outln!("{text}")?;
    Ok(())
}

/// Prints one compact JSON line on stdout (JSON Lines output).
pub fn print_json_line<T: Serialize + ?Sized>(value: &T) -> anyhow::Result<()> {
    let text = serde_json::to_string(value)?;
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "{text}")?;
    stdout.flush()?;
    Ok(())
}

/// A table of left-aligned columns separated by two spaces, with an upper-case header.
#[derive(Debug)]
pub struct Table {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(header: &[&str]) -> Table {
        Table {
            header: header.iter().map(|name| name.to_uppercase()).collect(),
            rows: Vec::new(),
        }
    }

    /// Adds a row; cells are made [`printable`], as they often hold text an agent wrote.
    pub fn row(&mut self, cells: Vec<String>) {
        self.rows
            .push(cells.into_iter().map(|cell| printable(&cell)).collect());
    }

    pub fn render(&self) -> String {
        let n_columns = self.header.len();
        let mut widths: Vec<usize> = self
            .header
            .iter()
            .map(|cell| cell.chars().count())
            .collect();
        for row in &self.rows {
            for (column, cell) in row.iter().enumerate().take(n_columns) {
                widths[column] = widths[column].max(cell.chars().count());
            }
        }
        let mut out = String::new();
        for row in std::iter::once(&self.header).chain(&self.rows) {
            let mut line = String::new();
            for (column, width) in widths.iter().enumerate() {
                let cell = row.get(column).map(String::as_str).unwrap_or("");
                line.push_str(cell);
                if column + 1 < n_columns {
                    line.push_str(&" ".repeat(width - cell.chars().count() + 2));
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }

    pub fn print(&self) -> std::io::Result<()> {
        out!("{}", self.render())
    }
}

/// `-` for a missing value.
pub fn or_dash(value: Option<impl ToString>) -> String {
    value
        .map(|value| value.to_string())
        .unwrap_or_else(|| "-".to_string())
}

/// Text an agent wrote, safe to print on a terminal: control characters (escape sequences that
/// could move the cursor, rewrite the screen or set the window title; carriage returns that hide
/// a line) and the bidirectional overrides that reorder what is shown are written as Rust-style
/// escapes (`\u{1b}`). Every command that prints such text goes through this, so there is one
/// rule.
pub fn printable(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_control() || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}') {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// Shortens text to `max` characters on one line, [`printable`].
pub fn clip(text: &str, max: usize) -> String {
    let one_line = printable(&text.split_whitespace().collect::<Vec<_>>().join(" "));
    if one_line.chars().count() <= max {
        return one_line;
    }
    let cut: String = one_line.chars().take(max.saturating_sub(1)).collect();
    format!("{cut}…")
}

/// `12s ago`, `3m05s ago`.
pub fn ago(time: DateTime<Utc>) -> String {
    format!(
        "{} ago",
        format_duration_secs((Utc::now() - time).num_seconds())
    )
}

/// `in 9m59s` (or `expired`).
pub fn until(time: DateTime<Utc>) -> String {
    let left = (time - Utc::now()).num_seconds();
    if left <= 0 {
        "expired".to_string()
    } else {
        format!("in {}", format_duration_secs(left))
    }
}

/// Local wall-clock time of day.
pub fn clock(time: DateTime<Utc>) -> String {
    time.with_timezone(&Local).format("%H:%M:%S").to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_columns_without_trailing_spaces() {
        let mut table = Table::new(&["id", "title"]);
        table.row(vec!["T-1".into(), "short".into()]);
        table.row(vec!["T-10".into(), "".into()]);
        assert_eq!(table.render(), "ID    TITLE\nT-1   short\nT-10\n");
    }

    #[test]
    fn clip_keeps_one_line() {
        assert_eq!(clip("a\nb", 10), "a b");
        assert_eq!(clip("abcdef", 4), "abc…");
    }
}

#[cfg(test)]
mod printable_tests {
    use super::*;

    #[test]
    fn control_characters_and_bidi_overrides_are_escaped_and_the_rest_kept() {
        assert_eq!(printable("plain – ünïcode"), "plain – ünïcode");
        assert_eq!(printable("a\u{1b}[2Jb"), "a\\u{1b}[2Jb");
        assert_eq!(printable("x\ry\u{7}"), "x\\ry\\u{7}");
        assert_eq!(printable("\u{202e}txt"), "\\u{202e}txt");
        assert_eq!(printable(&printable("\u{1b}")), printable("\u{1b}"));
        assert_eq!(
            clip("a\u{1b}]0;title\u{7} b", 80),
            "a\\u{1b}]0;title\\u{7} b"
        );
        let mut table = Table::new(&["title"]);
        table.row(vec!["\u{1b}[31mred".to_string()]);
        assert!(!table.render().contains('\u{1b}'));
    }
}
