//! Reading clickstay's TOML files (dataflow specs, `workers.toml`): every error names the file.
//!
//! A parse error names the file, the line and column, and the key it is at, but never quotes
//! the text: a config line may hold a password (`shards = ["postgres://u:secret@h/db"]`).

use std::path::Path;

use anyhow::{Context, Result, anyhow};
use serde::de::DeserializeOwned;

/// The text of the `what` file at `path` ("dataflow spec", "config file").
pub fn read(path: &Path, what: &str) -> Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("cannot read {what} {}", path.display()))
}

/// Parses `text` into `Raw`, the file's TOML shape; `path` only names the file in errors.
pub fn parse<Raw: DeserializeOwned>(text: &str, path: &Path) -> Result<Raw> {
    toml::from_str(text).map_err(|e| anyhow!("{}: {}", path.display(), describe(&e, text)))
}

/// `error` without the quoted source: `line L, column C (key K): message`.
fn describe(error: &toml::de::Error, text: &str) -> String {
    let message = without_strings(error.message().trim_end());
    let message = message.as_str();
    let Some(span) = error.span() else { return message.to_string() };
    let offset = span.start.min(text.len());
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let column = before.len() - before.rfind('\n').map_or(0, |newline| newline + 1) + 1;
    match key_at(text, line) {
        Some(key) => format!("line {line}, column {column} (key `{key}`): {message}"),
        None => format!("line {line}, column {column}: {message}"),
    }
}

/// `message` with every `"quoted"` string (how serde quotes a value it refused) elided.
fn without_strings(message: &str) -> String {
    let mut parts = message.split('"');
    let mut out = parts.next().unwrap_or_default().to_string();
    for (index, part) in parts.enumerate() {
        out.push_str(if index % 2 == 0 { "\"…" } else { part });
        if index % 2 == 0 {
            out.push('"');
        }
    }
    out
}

/// The dotted key whose value reaches line `line` (1-based): the nearest `key =` at or above
/// it, under the nearest `[table]` header above that.
fn key_at(text: &str, line: usize) -> Option<String> {
    let lines: Vec<&str> = text.lines().take(line).collect();
    let (key_line, key) =
        lines.iter().enumerate().rev().find_map(|(index, line)| bare_key(line).map(|key| (index, key)))?;
    let table = lines[..key_line].iter().rev().find_map(|line| {
        let header = line.trim();
        let header = header.strip_prefix('[')?.trim_start_matches('[');
        Some(header.split(']').next()?.trim().to_string())
    });
    Some(match table {
        Some(table) if !table.is_empty() => format!("{table}.{key}"),
        _ => key.to_string(),
    })
}

/// The key of a `key = value` line, if it is one (bare or dotted keys of `[A-Za-z0-9_.-]`).
fn bare_key(line: &str) -> Option<&str> {
    let (key, _) = line.split_once('=')?;
    let key = key.trim();
    let valid = !key.is_empty() && key.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    valid.then_some(key)
}

/// Parses `text` and turns the shape into the model with `compile`, whose error (a problem
/// naming the key) is prefixed with the file.
pub fn compile<Raw: DeserializeOwned, T>(
    text: &str,
    path: &Path,
    compile: impl FnOnce(Raw, &Path) -> Result<T, String>,
) -> Result<T> {
    compile(parse(text, path)?, path).map_err(|problem| anyhow!("{}: {problem}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[allow(dead_code)]
    struct Shape {
        postgres: Postgres,
    }

    #[derive(Debug, serde::Deserialize)]
    #[allow(dead_code)]
    struct Postgres {
        shards: Vec<String>,
        clicks: Option<String>,
    }

    #[test]
    fn errors_name_file_line_and_key_but_not_the_value() {
        let text = "[postgres]\nclicks = \"x\"\nshards = [\"postgres://u:hunter2@h/db\", \"host=h password=hunter2\n";
        let error = parse::<Shape>(text, Path::new("w.toml")).unwrap_err().to_string();
        assert!(error.contains("w.toml") && error.contains("line 3"), "{error}");
        assert!(error.contains("postgres.shards"), "{error}");
        assert!(!error.contains("hunter2"), "{error}");

        let text = "[postgres]\nshards = \"host=h password=hunter2\" # password=hunter2\n";
        let error = parse::<Shape>(text, Path::new("w.toml")).unwrap_err().to_string();
        assert!(error.contains("line 2") && error.contains("postgres.shards") && !error.contains("hunter2"), "{error}");
    }
}
