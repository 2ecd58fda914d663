//! The room availability dataflow spec (`dataflows/rooms.toml`): where the view's changes come
//! from, how fresh an answer must be, and how long a caller may wait for it.
//!
//! The graph itself is fixed (inventory, room types, hotels and reservations in; availability
//! out); what an operator tunes lives here. [`RoomsSpec::load`] validates at start-up and every
//! error names the file, the key and the problem.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Result;
use serde::Deserialize;

use crate::duration::parse_duration_ms;
use crate::toml_file;

/// The tables the view reads, each needing `REPLICA IDENTITY FULL` (the migrations set it).
pub const VIEW_TABLES: [&str; 4] = ["hotel", "room_type", "room_type_inventory", "reservation"];

/// A validated `rooms.toml`.
#[derive(Debug, Clone)]
pub struct RoomsSpec {
    pub path: PathBuf,
    pub name: String,
    /// Prefix of the temporary replication slots (one per shard, suffixed with pid and number).
    pub slot_prefix: String,
    /// A change stream that does not answer a read this long is taken as broken (rebuilt).
    pub read_timeout: Duration,
    /// How long a query may wait for the view (start-up, or `min_lsn`) before a 503.
    pub max_wait: Duration,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSpec {
    name: String,
    source: RawSource,
    queries: RawQueries,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSource {
    connector: String,
    plugin: String,
    tables: Vec<String>,
    slot_prefix: String,
    /// Of the polling reader before the stream; accepted and ignored (with a warning).
    poll_interval: Option<String>,
    #[serde(default = "default_read_timeout")]
    read_timeout: String,
}

fn default_read_timeout() -> String {
    "10s".into()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawQueries {
    max_wait: String,
}

impl RoomsSpec {
    /// Reads and validates a spec file.
    pub fn load(path: &Path) -> Result<Self> {
        Self::parse(&toml_file::read(path, "dataflow spec")?, path)
    }

    /// Parses and validates spec text; `path` only names the file in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Self> {
        toml_file::compile(text, path, compile)
    }
}

fn compile(raw: RawSpec, path: &Path) -> Result<RoomsSpec, String> {
    let source = raw.source;
    if source.connector != "postgres_cdc" {
        return Err(format!("source.connector: `{}` is not a connector of this view (postgres_cdc)", source.connector));
    }
    if source.plugin != "test_decoding" {
        return Err(format!("source.plugin: `{}` is not supported (test_decoding)", source.plugin));
    }
    let mut tables = source.tables.clone();
    tables.sort();
    let mut wanted: Vec<String> = VIEW_TABLES.iter().map(|t| t.to_string()).collect();
    wanted.sort();
    if tables != wanted {
        return Err(format!("source.tables: the view reads exactly {wanted:?}, got {:?}", source.tables));
    }
    let slot_ok = !source.slot_prefix.is_empty()
        && source.slot_prefix.len() <= 40
        && source.slot_prefix.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if !slot_ok {
        return Err(format!(
            "source.slot_prefix: `{}` must be 1 to 40 characters of a-z, 0-9 and _",
            source.slot_prefix
        ));
    }
    let duration = |key: &str, text: &str| parse_duration_ms(text).map_err(|problem| format!("{key}: {problem}"));
    if source.poll_interval.is_some() {
        tracing::warn!(
            spec = %path.display(),
            "source.poll_interval is no longer used: changes are streamed as they commit; remove it"
        );
    }
    let read_timeout = duration("source.read_timeout", &source.read_timeout)?;
    if read_timeout == 0 {
        return Err("source.read_timeout: must be more than 0".into());
    }
    let max_wait = duration("queries.max_wait", &raw.queries.max_wait)?;
    if max_wait == 0 {
        return Err("queries.max_wait: must be more than 0".into());
    }
    Ok(RoomsSpec {
        path: path.to_path_buf(),
        name: raw.name,
        slot_prefix: source.slot_prefix,
        read_timeout: Duration::from_millis(read_timeout),
        max_wait: Duration::from_millis(max_wait),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
name = "rooms"
[source]
connector = "postgres_cdc"
plugin = "test_decoding"
tables = ["room_type_inventory", "reservation", "hotel", "room_type"]
slot_prefix = "clickstay_rooms"
poll_interval = "5ms"
[queries]
max_wait = "2s"
"#;

    fn error(text: &str) -> String {
        RoomsSpec::parse(text, Path::new("dataflows/rooms.toml")).unwrap_err().to_string()
    }

    #[test]
    fn the_shipped_spec_is_valid() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("dataflows/rooms.toml");
        let spec = RoomsSpec::load(&path).unwrap();
        assert_eq!(spec.name, "rooms");
        let spec = RoomsSpec::parse(GOOD, Path::new("x.toml")).unwrap();
        assert_eq!(spec.max_wait, Duration::from_secs(2));
    }

    #[test]
    fn errors_name_file_key_and_problem() {
        let message = error(&GOOD.replace("poll_interval = \"5ms\"", "read_timeout = \"5 parsecs\""));
        assert!(message.contains("dataflows/rooms.toml") && message.contains("source.read_timeout"), "{message}");
        let message = error(&GOOD.replace("\"postgres_cdc\"", "\"kafka\""));
        assert!(message.contains("source.connector"), "{message}");
        let message = error(&GOOD.replace("\"hotel\", ", ""));
        assert!(message.contains("source.tables"), "{message}");
        let message = error(&GOOD.replace("clickstay_rooms", "Bad-Prefix"));
        assert!(message.contains("source.slot_prefix"), "{message}");
        let message = error(&GOOD.replace("max_wait", "max_weight"));
        assert!(message.contains("max_weight"), "{message}");
    }
}
