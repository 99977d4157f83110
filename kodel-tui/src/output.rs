//! Human output: short, aligned, greppable. `--json` bypasses all of this.

use std::io::{IsTerminal, Write};

use serde::Serialize;

use crate::exit::CliError;

/// Prints `value` as JSON on one line.
pub fn json<T: Serialize>(value: &T) -> Result<(), CliError> {
    let mut out = std::io::stdout().lock();
    serde_json::to_writer(&mut out, value).map_err(|e| CliError::new(crate::exit::FAILURE, e.to_string()))?;
    writeln!(out)?;
    Ok(())
}

/// Prints rows as columns separated by two spaces; the last column is not padded.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> Result<(), CliError> {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    let mut out = std::io::stdout().lock();
    let line = |cells: &[String], out: &mut std::io::StdoutLock<'_>| -> std::io::Result<()> {
        let last = cells.len().saturating_sub(1);
        let mut s = String::new();
        for (i, c) in cells.iter().enumerate() {
            s.push_str(c);
            if i < last {
                s.push_str(&" ".repeat(widths[i] - c.chars().count() + 2));
            }
        }
        writeln!(out, "{}", s.trim_end())
    };
    if std::io::stdout().is_terminal() {
        line(&header.iter().map(|h| h.to_string()).collect::<Vec<_>>(), &mut out)?;
    }
    for row in rows {
        line(row, &mut out)?;
    }
    Ok(())
}

/// Text from an argument, or from stdin when the argument is `-` (or absent and stdin
/// is not a terminal, when `stdin_if_absent`).
pub fn text_arg(arg: Option<String>, stdin_if_absent: bool) -> Result<Option<String>, CliError> {
    let from_stdin = match arg.as_deref() {
        Some("-") => true,
        None => stdin_if_absent && !std::io::stdin().is_terminal(),
        Some(_) => false,
    };
    if from_stdin {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut s)?;
        Ok(Some(s.trim_end_matches('\n').to_owned()))
    } else {
        Ok(arg)
    }
}

/// A JSON document from a file, or from stdin when the path is `-`.
pub fn json_file(path: &str) -> Result<serde_json::Value, CliError> {
    let text = if path == "-" {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut s)?;
        s
    } else {
        std::fs::read_to_string(path).map_err(|e| CliError::usage(format!("cannot read {path}: {e}")))?
    };
    serde_json::from_str(&text).map_err(|e| CliError::usage(format!("{path} is not valid JSON: {e}")))
}

/// A timestamp as the tables show it.
pub fn when(t: &chrono::DateTime<chrono::Utc>) -> String {
    t.format("%Y-%m-%d %H:%M").to_string()
}

/// Prints one line of human output.
pub fn line(text: impl std::fmt::Display) -> Result<(), CliError> {
    println!("{text}");
    Ok(())
}

/// Prints a note for people on stderr (stdout stays clean for scripts).
pub fn note(text: impl std::fmt::Display) -> Result<(), CliError> {
    eprintln!("{text}");
    Ok(())
}

/// An id shortened for people: its last 8 hex digits. Job and agent ids are UUIDv7,
/// whose first digits are a timestamp shared by ids made together; the last ones are
/// random. `--json` and `kodel job show` give the whole id.
pub fn short_id(id: &uuid::Uuid) -> String {
    let hex = id.simple().to_string();
    hex[hex.len() - 8..].to_owned()
}

#[cfg(test)]
mod short_id_tests {
    #[test]
    fn ids_made_together_stay_apart() {
        let a: uuid::Uuid = "01a23c8b-1848-766b-a694-e84ca7bc23ea".parse().unwrap();
        let b: uuid::Uuid = "01a23c8b-1848-766b-8f10-0b9d5e2c7714".parse().unwrap();
        assert_eq!((super::short_id(&a), super::short_id(&b)), ("a7bc23ea".to_owned(), "5e2c7714".to_owned()));
        let (c, d) = (uuid::Uuid::now_v7(), uuid::Uuid::now_v7());
        assert_ne!(super::short_id(&c), super::short_id(&d));
    }
}
