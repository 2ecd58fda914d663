//! The declarative dataflow spec (`dataflows/*.toml`): what the job computes, without Rust.
//!
//! A spec is a graph of named nodes: one `source` of click events, `filter`s on event
//! attributes, `count`s per pane grouped by `ad_id` (and at most one more attribute), and
//! `top_n` over sliding windows built from a count's panes. Sinks name a node (or the source's
//! `late` / `rejected` side outputs) and the file or table its rows go to; the command decides
//! the connector (replay writes CSV files, the streaming job writes Postgres tables).
//!
//! [`DataflowSpec::load`] reads and validates a spec at start-up; every error names the file,
//! the node and the problem.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::path::{Component, Path, PathBuf};

use anyhow::Result;
use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::clicks::event::{Country, MAX_CLICK_TS};
use crate::duration::{format_duration_ms, parse_duration_ms};
use crate::sinks::postgres::TEMP_TABLE_PREFIX;
use crate::toml_file;

pub use super::event::Field;

/// Event-time settings shared by every node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimeSpec {
    /// Length of a tumbling pane; sliding windows are made of whole panes.
    pub pane_ms: u64,
    /// A partition's watermark trails the largest event time it has seen by this much.
    pub max_out_of_orderness_ms: u64,
    /// How long after its end (in watermark time) a pane still accepts corrections.
    pub allowed_lateness_ms: u64,
}

/// A sliding window: `size` long, starting every `slide`; both whole multiples of the pane.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SlidingWindow {
    pub size_ms: u64,
    pub slide_ms: u64,
}

/// One predicate of a filter: the field's value must be one of `values`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Predicate {
    pub field: Field,
    /// Values in the field's encoded form (see `clicks::event::ClickEvent::field`).
    pub values: BTreeSet<u64>,
}

/// What a node computes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    Filter { input: String, predicates: Vec<Predicate> },
    Count { input: String, group_by: Vec<Field> },
    TopN { input: String, window: SlidingWindow, n: usize },
}

/// A named node of the graph (the source is described by [`SourceSpec`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    pub name: String,
    pub op: Op,
}

/// The click-event source: the connector (file, kafka) comes from the command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceSpec {
    pub name: String,
    /// The exchange key: events are partitioned over workers by this field.
    pub key: Field,
}

/// Which stream a sink writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SinkInput {
    Node(String),
    Late,
    Rejected,
}

/// A named output table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SinkSpec {
    pub name: String,
    pub input: SinkInput,
    /// The CSV or Parquet file name (default: `<name>.csv`).
    pub file: String,
    /// The Postgres table name (default: `<name>`).
    pub table: String,
}

/// What the running job keeps for questions (`[queries]`, see `clicks::query`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuerySpec {
    /// Panes are kept for questions until this long after their end (watermark time); a whole
    /// number of panes.
    pub retention_ms: u64,
}

/// The retention when the spec has no `[queries]` section.
pub const DEFAULT_RETENTION_MS: u64 = 24 * 3600 * 1000;

/// The longest duration a spec may give: 365 days (`8760h`).
///
/// Why this bound makes the job's time arithmetic safe without checks in its hot paths: every
/// sum it computes is an event time (at most [`MAX_CLICK_TS`], year 9999, enforced by every
/// parser) plus at most three durations (`pane + allowed_lateness + max_out_of_orderness` in
/// `time::Clock::is_late`, `size + allowed_lateness` for a window, `pane + retention` for
/// questions), and a product of durations only ever multiplies a slide by the number of slides
/// in a window. The assertion below shows that even eight such durations on top of the latest
/// event time stay inside `i64` microseconds, what PostgreSQL's `timestamptz` holds.
pub const MAX_DURATION_MS: u64 = 365 * 24 * 3600 * 1000;
const _: () = assert!(MAX_CLICK_TS + 8 * MAX_DURATION_MS <= i64::MAX as u64 / 1000);

/// PostgreSQL keeps the first 63 bytes of an identifier (NAMEDATALEN - 1) and drops the rest
/// with only a notice, so two longer names that share those bytes would be one table.
const POSTGRES_IDENTIFIER_BYTES: usize = 63;

/// The longest table name a sink may write: its temporary table (`incoming_<table>`, see
/// `sinks::postgres`) must fit PostgreSQL's identifiers too, or two tables would share one.
pub const MAX_TABLE_NAME_BYTES: usize = POSTGRES_IDENTIFIER_BYTES - TEMP_TABLE_PREFIX.len();

/// The jobs' own tables in the clicks database (`sinks::postgres`, schema `public`): a result
/// table of the same name would hide one of them from a session that searches both schemas.
const JOB_TABLES: [&str; 6] =
    ["source_offsets", "job_checkpoints", "raw_archive", "job_instances", "reconciliations", "source_gaps"];

/// A validated dataflow spec; `nodes` are in dependency order.
#[derive(Debug, Clone)]
pub struct DataflowSpec {
    pub path: PathBuf,
    pub name: String,
    pub time: TimeSpec,
    pub queries: QuerySpec,
    pub source: SourceSpec,
    pub nodes: Vec<Node>,
    pub sinks: Vec<SinkSpec>,
}

impl DataflowSpec {
    /// Reads and validates a spec file.
    pub fn load(path: &Path) -> Result<Self> {
        Self::parse(&toml_file::read(path, "dataflow spec")?, path)
    }

    /// Parses and validates spec text; `path` only names the file in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Self> {
        toml_file::compile(text, path, compile)
    }

    /// The node called `name`.
    pub fn node(&self, name: &str) -> Option<&Node> {
        self.nodes.iter().find(|n| n.name == name)
    }

    /// Everything that changes the job's results, as readable `key -> value` pairs: the time
    /// settings (`time.pane` -> `1m`), every node's op and settings (`node.top_ads.window` ->
    /// `size 5m, slide 1m`), every sink's input and table (`sink.top_ads.table` -> `top_ads`).
    /// Durations are written back in one spelling and filter values decoded, so the summary
    /// does not depend on how the spec is written (comments, order, `60s` or `1m`).
    ///
    /// Left out, because they change no row of any table:
    /// - `[queries] retention`: how long panes stay in memory for questions to the running job.
    ///   It changes what questions can see, not the tables, so changing it must not block a
    ///   restart.
    /// - a sink's `file`: replay's output file; the streaming job, whose checkpoint keeps the
    ///   summary, writes tables only.
    /// - the spec's `name`: the default `--job`, which already picks the checkpoint.
    pub fn result_summary(&self) -> BTreeMap<String, String> {
        let mut summary = BTreeMap::new();
        let time = &self.time;
        for (key, ms) in [
            ("time.pane", time.pane_ms),
            ("time.max_out_of_orderness", time.max_out_of_orderness_ms),
            ("time.allowed_lateness", time.allowed_lateness_ms),
        ] {
            summary.insert(key.to_string(), format_duration_ms(ms));
        }
        let source = &self.source;
        let node_settings =
            std::iter::once((&source.name, vec![("op", "source".into()), ("key", source.key.to_string())]))
                .chain(self.nodes.iter().map(|node| (&node.name, op_summary(&node.op))));
        for (name, settings) in node_settings {
            summary.extend(settings.into_iter().map(|(key, value)| (format!("node.{name}.{key}"), value)));
        }
        for sink in &self.sinks {
            let input = match &sink.input {
                SinkInput::Node(node) => node.clone(),
                SinkInput::Late => format!("{}.late", source.name),
                SinkInput::Rejected => format!("{}.rejected", source.name),
            };
            summary.insert(format!("sink.{}.input", sink.name), input);
            summary.insert(format!("sink.{}.table", sink.name), sink.table.clone());
        }
        summary
    }

    /// A stable digest of [`Self::result_summary`]: SHA-256, as lowercase hex, of every key and
    /// value, each prefixed by its length so no two summaries read alike. The same on every
    /// machine and Rust version (unlike std's `Hasher`), so a checkpoint can keep it.
    pub fn fingerprint(&self) -> String {
        let mut digest = Sha256::new();
        digest.update(b"clickstay result summary 1\n");
        for (key, value) in self.result_summary() {
            for text in [key, value] {
                digest.update((text.len() as u64).to_le_bytes());
                digest.update(text.as_bytes());
            }
        }
        digest.finalize().iter().map(|byte| format!("{byte:02x}")).collect()
    }

    /// Every event field some node filters or groups by: the source keeps only these.
    pub fn fields_used(&self) -> BTreeSet<Field> {
        let mut fields = BTreeSet::from([Field::AdId]);
        for node in &self.nodes {
            match &node.op {
                Op::Filter { predicates, .. } => fields.extend(predicates.iter().map(|p| p.field)),
                Op::Count { group_by, .. } => fields.extend(group_by.iter().copied()),
                Op::TopN { .. } => {}
            }
        }
        fields
    }
}

/// What changed from `before` to `after` (two [`DataflowSpec::result_summary`]s), one readable
/// line per key: `time.pane: 1m -> 2m`, `node.top_ads.n: 10 -> 5`. A node or sink that is new
/// or gone is one line, `node.x: added (input clicks, op filter, where country in [US])` or
/// `sink.y: removed`. Lines are in key order; none when nothing changed.
pub fn spec_changes(before: &BTreeMap<String, String>, after: &BTreeMap<String, String>) -> Vec<String> {
    let subjects: BTreeSet<&str> = before.keys().chain(after.keys()).map(|key| subject_of(key)).collect();
    let mut lines = Vec::new();
    for subject in subjects {
        let of_subject = |summary: &BTreeMap<String, String>| -> BTreeMap<String, String> {
            summary.iter().filter(|(key, _)| subject_of(key) == subject).map(|(k, v)| (k.clone(), v.clone())).collect()
        };
        let (old, new) = (of_subject(before), of_subject(after));
        if old.is_empty() || new.is_empty() {
            if old.is_empty() {
                let settings: Vec<String> = new.iter().map(|(key, value)| setting(subject, key, value)).collect();
                lines.push(format!("{subject}: added ({})", settings.join(", ")));
            } else {
                lines.push(format!("{subject}: removed"));
            }
            continue;
        }
        for key in old.keys().chain(new.keys()).collect::<BTreeSet<_>>() {
            match (old.get(key), new.get(key)) {
                (Some(was), Some(is)) if was != is => lines.push(format!("{key}: {was} -> {is}")),
                (Some(_), None) => lines.push(format!("{key}: removed")),
                (None, Some(is)) => lines.push(format!("{key}: added ({is})")),
                _ => {}
            }
        }
    }
    lines
}

/// What a summary key is about: `node.NAME` or `sink.NAME` for their settings (a name may hold
/// dots, a setting's key never does), the key itself for the time settings.
fn subject_of(key: &str) -> &str {
    match key.rsplit_once('.') {
        Some((subject, _)) if key.starts_with("node.") || key.starts_with("sink.") => subject,
        _ => key,
    }
}

/// `key value` of a setting of `subject`, for the line of an added node or sink.
fn setting(subject: &str, key: &str, value: &str) -> String {
    match key.strip_prefix(subject).and_then(|rest| rest.strip_prefix('.')) {
        Some(name) => format!("{name} {value}"),
        None => value.to_string(),
    }
}

/// A node's settings for the result summary, beside its name: op, input and the op's own.
fn op_summary(op: &Op) -> Vec<(&'static str, String)> {
    match op {
        Op::Filter { input, predicates } => {
            let clauses: Vec<String> = predicates.iter().map(predicate_text).collect();
            vec![("op", "filter".into()), ("input", input.clone()), ("where", clauses.join("; "))]
        }
        Op::Count { input, group_by } => {
            let fields: Vec<&str> = group_by.iter().map(|f| f.name()).collect();
            vec![("op", "count".into()), ("input", input.clone()), ("group_by", fields.join(", "))]
        }
        Op::TopN { input, window, n } => vec![
            ("op", "top_n".into()),
            ("input", input.clone()),
            (
                "window",
                format!("size {}, slide {}", format_duration_ms(window.size_ms), format_duration_ms(window.slide_ms)),
            ),
            ("n", n.to_string()),
        ],
    }
}

/// `country in [CA, US]`: a filter clause with its values as a spec writes them.
fn predicate_text(predicate: &Predicate) -> String {
    let values: Vec<String> = predicate
        .values
        .iter()
        .map(|&value| match predicate.field {
            Field::AdId | Field::UserId => value.to_string(),
            Field::Country => Country(value as u16).to_string(),
            Field::Ip => Ipv4Addr::from(value as u32).to_string(),
        })
        .collect();
    format!("{} in [{}]", predicate.field, values.join(", "))
}

// ---------------------------------------------------------------------------------------------
// The TOML shapes, as written by users.

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSpec {
    name: String,
    time: RawTime,
    nodes: BTreeMap<String, RawNode>,
    #[serde(default)]
    sinks: BTreeMap<String, RawSink>,
    queries: Option<RawQueries>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawQueries {
    retention: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTime {
    pane: String,
    max_out_of_orderness: String,
    allowed_lateness: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNode {
    op: String,
    input: Option<String>,
    key: Option<String>,
    group_by: Option<Vec<String>>,
    #[serde(rename = "where")]
    where_: Option<BTreeMap<String, Vec<toml::Value>>>,
    window: Option<RawWindow>,
    n: Option<i64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWindow {
    size: String,
    slide: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSink {
    input: String,
    file: Option<String>,
    table: Option<String>,
}

// ---------------------------------------------------------------------------------------------
// Validation: from the raw shapes to the model, one error message per problem.

/// A duration of the spec, at most [`MAX_DURATION_MS`].
fn duration(what: &str, text: &str) -> Result<u64, String> {
    let ms = parse_duration_ms(text).map_err(|e| format!("{what}: {e}"))?;
    if ms > MAX_DURATION_MS {
        return Err(format!(
            "{what}: `{}` is longer than 365 days ({}), the longest duration a spec may give",
            text.trim(),
            format_duration_ms(MAX_DURATION_MS)
        ));
    }
    Ok(ms)
}

/// A job's name (`--job`, by default the spec's `name`): it names the job's schema in the
/// database and its directory in the archive (`job=J`), so it must be a plain file name and a
/// PostgreSQL identifier, of letters, digits, `_` and `-` only, and neither `public` nor a
/// `pg_` name (schemas PostgreSQL keeps for itself).
pub fn job_name(name: &str) -> Result<(), String> {
    plain_file_name(name).and_then(|()| identifier(name, POSTGRES_IDENTIFIER_BYTES))?;
    let plain = name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if !plain || name == "public" || name.starts_with("pg_") {
        return Err(format!(
            "`{name}` must be letters, digits, `_` or `-`, and neither `public` nor starting with `pg_`"
        ));
    }
    Ok(())
}

/// A name that lands in one directory (`--out`, the archive) and nowhere else: one plain
/// component, not empty, no `/`, not `.` or `..`, no NUL byte.
fn plain_file_name(name: &str) -> Result<(), String> {
    let mut components = Path::new(name).components();
    let plain = matches!((components.next(), components.next()), (Some(Component::Normal(only)), None) if only == name);
    if !plain || name.contains('\0') {
        return Err(format!("`{name}` must be a plain file name (not empty, no `/`, not `.` or `..`)"));
    }
    Ok(())
}

/// A PostgreSQL identifier of at most `max_bytes`: quoted identifiers take any text but an
/// empty one or a NUL byte.
fn identifier(name: &str, max_bytes: usize) -> Result<(), String> {
    if name.is_empty() || name.contains('\0') {
        return Err(format!("`{name}` is not a PostgreSQL identifier (empty, or holds a NUL byte)"));
    }
    if name.len() > max_bytes {
        return Err(format!("`{name}` is {} bytes long, more than the {max_bytes} allowed", name.len()));
    }
    Ok(())
}

/// A sink's table: an identifier (see [`MAX_TABLE_NAME_BYTES`]), none of the job's own tables,
/// and not named like a temporary table, which would hide it in the job's session.
fn table_name(table: &str) -> Result<(), String> {
    identifier(table, MAX_TABLE_NAME_BYTES)?;
    if JOB_TABLES.contains(&table) {
        return Err(format!("`{table}` is one of the job's own tables ({})", JOB_TABLES.join(", ")));
    }
    if table.starts_with(TEMP_TABLE_PREFIX) {
        return Err(format!("`{table}` starts with `{TEMP_TABLE_PREFIX}`, the prefix of the job's temporary tables"));
    }
    Ok(())
}

/// The model of a raw spec, checked in this order: time, each node, inputs, dependency order,
/// sinks; the first problem is the error.
fn compile(raw: RawSpec, path: &Path) -> Result<DataflowSpec, String> {
    job_name(&raw.name).map_err(|e| format!("name: {e}"))?;
    let time = time_spec(&raw.time)?;
    let (source, nodes) = compile_nodes(&raw.nodes, &time)?;
    check_inputs(&nodes, &source, &raw.nodes)?;
    let nodes = in_dependency_order(nodes, &source.name)?;
    let sinks = compile_sinks(raw.sinks, &source, &nodes)?;
    let queries = query_spec(raw.queries.as_ref(), &time)?;
    Ok(DataflowSpec { path: path.to_path_buf(), name: raw.name, time, queries, source, nodes, sinks })
}

/// The `[queries]` section (optional).
fn query_spec(raw: Option<&RawQueries>, time: &TimeSpec) -> Result<QuerySpec, String> {
    let Some(raw) = raw else { return Ok(QuerySpec { retention_ms: DEFAULT_RETENTION_MS }) };
    let retention_ms = duration("queries.retention", &raw.retention)?;
    if retention_ms < time.pane_ms || !retention_ms.is_multiple_of(time.pane_ms) {
        return Err(format!(
            "queries.retention: `{}` must be a whole number of panes (time.pane = {})",
            raw.retention,
            format_duration_ms(time.pane_ms)
        ));
    }
    Ok(QuerySpec { retention_ms })
}

/// The `[time]` section.
fn time_spec(raw: &RawTime) -> Result<TimeSpec, String> {
    let time = TimeSpec {
        pane_ms: duration("time.pane", &raw.pane)?,
        max_out_of_orderness_ms: duration("time.max_out_of_orderness", &raw.max_out_of_orderness)?,
        allowed_lateness_ms: duration("time.allowed_lateness", &raw.allowed_lateness)?,
    };
    if time.pane_ms == 0 {
        return Err("time.pane: must be longer than 0s".into());
    }
    Ok(time)
}

/// Every node on its own, in name order: the one source, and the other nodes (inputs unchecked).
fn compile_nodes(raw: &BTreeMap<String, RawNode>, time: &TimeSpec) -> Result<(SourceSpec, Vec<Node>), String> {
    let mut source = None;
    let mut nodes = Vec::new();
    for (name, node) in raw {
        let context = |problem: String| format!("node `{name}`: {problem}");
        check_keys(node).map_err(context)?;
        let op = match node.op.as_str() {
            "source" => {
                if source.is_some() {
                    return Err(context("a dataflow has exactly one source".into()));
                }
                source = Some(SourceSpec { name: name.clone(), key: source_key(node).map_err(context)? });
                continue;
            }
            "filter" => filter_op(node),
            "count" => count_op(node),
            "top_n" => top_n_op(node, time),
            _ => unreachable!("ops were checked by check_keys"),
        };
        nodes.push(Node { name: name.clone(), op: op.map_err(context)? });
    }
    let source = source.ok_or("no node has op = \"source\"")?;
    Ok((source, nodes))
}

/// The op is known, and every key given applies to it.
fn check_keys(node: &RawNode) -> Result<(), String> {
    let allowed: &[&str] = match node.op.as_str() {
        "source" => &["key"],
        "filter" => &["input", "where"],
        "count" => &["input", "group_by"],
        "top_n" => &["input", "window", "n"],
        other => return Err(format!("unknown op `{other}` (expected one of: source, filter, count, top_n)")),
    };
    for (key, present) in [
        ("input", node.input.is_some()),
        ("key", node.key.is_some()),
        ("group_by", node.group_by.is_some()),
        ("where", node.where_.is_some()),
        ("window", node.window.is_some()),
        ("n", node.n.is_some()),
    ] {
        if present && !allowed.contains(&key) {
            return Err(format!("`{key}` does not apply to op `{}`", node.op));
        }
    }
    Ok(())
}

/// The `input` of a node that reads one.
fn needed_input(node: &RawNode) -> Result<String, String> {
    node.input.clone().ok_or_else(|| format!("op `{}` needs an `input`", node.op))
}

/// The source's `key`: `ad_id` (the default) is the only one clicks are keyed by.
fn source_key(node: &RawNode) -> Result<Field, String> {
    let key = node.key.as_deref().unwrap_or("ad_id");
    let key = Field::parse(key).ok_or_else(|| format!("key: unknown field `{key}`"))?;
    if key != Field::AdId {
        return Err(format!("key: clicks are keyed by ad_id, not `{key}`"));
    }
    Ok(key)
}

/// A `filter` node: at least one `where` clause, each a known field and values of its type.
fn filter_op(node: &RawNode) -> Result<Op, String> {
    let clauses = node.where_.as_ref().ok_or("op `filter` needs `where`")?;
    if clauses.is_empty() {
        return Err("where: names no field".into());
    }
    let predicates = clauses.iter().map(|(field, values)| predicate(field, values)).collect::<Result<Vec<_>, _>>()?;
    Ok(Op::Filter { input: needed_input(node)?, predicates })
}

/// A `count` node: grouped by `ad_id`, and at most one more field.
fn count_op(node: &RawNode) -> Result<Op, String> {
    let names = node.group_by.as_ref().ok_or("op `count` needs `group_by`")?;
    let group_by = names
        .iter()
        .map(|n| Field::parse(n).ok_or_else(|| format!("group_by: unknown field `{n}`")))
        .collect::<Result<Vec<_>, _>>()?;
    if group_by.first() != Some(&Field::AdId) || group_by.len() > 2 || group_by.get(1) == Some(&Field::AdId) {
        return Err("group_by: must be [\"ad_id\"] or [\"ad_id\", FIELD] with FIELD one of country, user_id, ip".into());
    }
    Ok(Op::Count { input: needed_input(node)?, group_by })
}

/// A `top_n` node: a sliding window of whole panes and `n` from 1 to 10000.
fn top_n_op(node: &RawNode, time: &TimeSpec) -> Result<Op, String> {
    let window = node.window.as_ref().ok_or("op `top_n` needs `window`")?;
    let window = sliding_window(window, time.pane_ms)?;
    let n = node.n.ok_or("op `top_n` needs `n`")?;
    if !(1..=10_000).contains(&n) {
        return Err(format!("n: must be between 1 and 10000, got {n}"));
    }
    Ok(Op::TopN { input: needed_input(node)?, window, n: n as usize })
}

/// A top_n's `window`: size and slide whole numbers of panes, the slide no longer than the size.
fn sliding_window(raw: &RawWindow, pane_ms: u64) -> Result<SlidingWindow, String> {
    let window =
        SlidingWindow { size_ms: duration("window.size", &raw.size)?, slide_ms: duration("window.slide", &raw.slide)? };
    for (what, ms) in [("window.size", window.size_ms), ("window.slide", window.slide_ms)] {
        if ms == 0 || ms % pane_ms != 0 {
            return Err(format!(
                "{what}: {} is not a whole number of panes ({})",
                format_duration_ms(ms),
                format_duration_ms(pane_ms)
            ));
        }
    }
    if window.slide_ms > window.size_ms {
        return Err("window.slide: must not be longer than window.size".into());
    }
    Ok(window)
}

/// Inputs must exist and be of the right kind.
fn check_inputs(nodes: &[Node], source: &SourceSpec, raw: &BTreeMap<String, RawNode>) -> Result<(), String> {
    let kind_of = |name: &str| -> Option<&str> {
        if name == source.name {
            return Some("source");
        }
        raw.get(name).map(|n| n.op.as_str())
    };
    for node in nodes {
        let (input, wants): (&str, &[&str]) = match &node.op {
            Op::Filter { input, .. } | Op::Count { input, .. } => (input, &["source", "filter"]),
            Op::TopN { input, .. } => (input, &["count"]),
        };
        let kind = kind_of(input)
            .ok_or_else(|| format!("node `{}`: input `{input}` is not a node of this dataflow", node.name))?;
        if !wants.contains(&kind) {
            return Err(format!(
                "node `{}`: input `{input}` is a {kind}, but this op reads a {}",
                node.name,
                wants.join(" or ")
            ));
        }
        if let Op::TopN { input, .. } = &node.op
            && let Some(Node { op: Op::Count { group_by, .. }, .. }) = nodes.iter().find(|n| &n.name == input)
            && group_by != &[Field::AdId]
        {
            return Err(format!("node `{}`: input `{input}` must count by [\"ad_id\"] alone to rank ads", node.name));
        }
    }
    Ok(())
}

/// The sinks, in name order; the file and table default to the sink's name. Files are plain
/// names (they land in `--out`), tables valid names; no two sinks share a file or a table.
fn compile_sinks(raw: BTreeMap<String, RawSink>, source: &SourceSpec, nodes: &[Node]) -> Result<Vec<SinkSpec>, String> {
    let mut sinks: Vec<SinkSpec> = Vec::new();
    for (name, sink) in raw {
        let context = |problem: String| format!("sink `{name}`: {problem}");
        let input = sink_input(&name, &sink.input, &source.name, nodes)?;
        let file = sink.file.unwrap_or_else(|| format!("{name}.csv"));
        plain_file_name(&file).map_err(|e| context(format!("file: {e}")))?;
        let table = sink.table.unwrap_or_else(|| name.clone());
        table_name(&table).map_err(|e| context(format!("table: {e}")))?;
        if let Some(other) = sinks.iter().find(|s| s.file == file) {
            return Err(context(format!("file: `{file}` is also the file of sink `{}`", other.name)));
        }
        if let Some(other) = sinks.iter().find(|s| s.table == table) {
            return Err(context(format!("table: `{table}` is also the table of sink `{}`", other.name)));
        }
        sinks.push(SinkSpec { name, input, file, table });
    }
    Ok(sinks)
}

/// What sink `name` reads: a count, a top_n, or one of the source's side outputs.
fn sink_input(name: &str, input: &str, src: &str, nodes: &[Node]) -> Result<SinkInput, String> {
    if input == format!("{src}.late") {
        return Ok(SinkInput::Late);
    }
    if input == format!("{src}.rejected") {
        return Ok(SinkInput::Rejected);
    }
    match nodes.iter().find(|n| n.name == input) {
        Some(Node { op: Op::Count { .. } | Op::TopN { .. }, .. }) => Ok(SinkInput::Node(input.to_string())),
        Some(_) => Err(format!(
            "sink `{name}`: input `{input}` is a filter; sinks read counts, top_n, `{src}.late` or `{src}.rejected`"
        )),
        None => Err(format!(
            "sink `{name}`: input `{input}` is not a node of this dataflow (nor `{src}.late` / `{src}.rejected`)"
        )),
    }
}

/// A filter clause `field = [values]`, with each value checked against the field's type.
fn predicate(field: &str, values: &[toml::Value]) -> Result<Predicate, String> {
    let field = Field::parse(field).ok_or_else(|| format!("where: unknown field `{field}`"))?;
    if values.is_empty() {
        return Err(format!("where.{field}: lists no value"));
    }
    let encoded = values
        .iter()
        .map(|value| crate::clicks::event::encode_field_value(field, value).map_err(|e| format!("where.{field}: {e}")))
        .collect::<Result<BTreeSet<_>, _>>()?;
    Ok(Predicate { field, values: encoded })
}

/// Orders nodes so that every node comes after its input; a cycle is an error naming it.
fn in_dependency_order(nodes: Vec<Node>, source: &str) -> Result<Vec<Node>, String> {
    let input_of = |node: &Node| match &node.op {
        Op::Filter { input, .. } | Op::Count { input, .. } | Op::TopN { input, .. } => input.clone(),
    };
    let mut placed: BTreeSet<String> = BTreeSet::from([source.to_string()]);
    let mut ordered = Vec::new();
    let mut pending = nodes;
    while !pending.is_empty() {
        let (ready, rest): (Vec<Node>, Vec<Node>) = pending.into_iter().partition(|n| placed.contains(&input_of(n)));
        if ready.is_empty() {
            // Every pending node waits on another pending node: walk inputs to name the cycle.
            let mut path = vec![rest[0].name.clone()];
            loop {
                let last = rest.iter().find(|n| n.name == *path.last().unwrap()).unwrap();
                let next = input_of(last);
                if let Some(start) = path.iter().position(|p| *p == next) {
                    let mut cycle = path[start..].to_vec();
                    cycle.push(next);
                    return Err(format!("nodes form a cycle: {}", cycle.join(" -> ")));
                }
                path.push(next);
            }
        }
        placed.extend(ready.iter().map(|n| n.name.clone()));
        ordered.extend(ready);
        pending = rest;
    }
    Ok(ordered)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SPEC: &str = include_str!("../../dataflows/ad_clicks.toml");

    fn parse(text: &str) -> Result<DataflowSpec> {
        DataflowSpec::parse(text, Path::new("dataflows/test.toml"))
    }

    fn error(text: &str) -> String {
        parse(text).unwrap_err().to_string()
    }

    #[test]
    fn the_shipped_spec_is_valid() {
        let spec = parse(SPEC).unwrap();
        assert_eq!(
            spec.time,
            TimeSpec { pane_ms: 60_000, max_out_of_orderness_ms: 5_000, allowed_lateness_ms: 60_000 }
        );
        let top = spec.node("top_ads").unwrap();
        assert_eq!(
            top.op,
            Op::TopN {
                input: "ad_click_counts".into(),
                window: SlidingWindow { size_ms: 300_000, slide_ms: 60_000 },
                n: 10
            }
        );
        let files: Vec<_> = spec.sinks.iter().map(|s| s.file.as_str()).collect();
        for file in
            ["ad_click_counts.csv", "top_ads.csv", "ad_click_counts_by_country.csv", "late_clicks.csv", "rejected.csv"]
        {
            assert!(files.contains(&file), "{file} missing from {files:?}");
        }
    }

    #[test]
    fn a_filtered_count_is_only_toml() {
        let text = format!(
            "{SPEC}\n[nodes.us_only]\nop = \"filter\"\ninput = \"clicks\"\nwhere = {{ country = [\"US\", \"CA\"] }}\n\
             [nodes.us_counts]\nop = \"count\"\ninput = \"us_only\"\ngroup_by = [\"ad_id\"]\n\
             [sinks.us_counts]\ninput = \"us_counts\"\n"
        );
        let spec = parse(&text).unwrap();
        // Dependency order: the filter before the count that reads it.
        let position = |name: &str| spec.nodes.iter().position(|n| n.name == name).unwrap();
        assert!(position("us_only") < position("us_counts"));
        assert!(spec.fields_used().contains(&Field::Country));
    }

    fn with_node(node: &str) -> String {
        format!("{SPEC}\n{node}\n")
    }

    #[test]
    fn errors_name_file_node_and_problem() {
        let e = error(&with_node("[nodes.bad]\nop = \"sum\"\ninput = \"clicks\""));
        assert!(e.contains("dataflows/test.toml") && e.contains("node `bad`") && e.contains("unknown op `sum`"), "{e}");

        let e = error(&with_node("[nodes.bad]\nop = \"count\"\ninput = \"nowhere\"\ngroup_by = [\"ad_id\"]"));
        assert!(e.contains("node `bad`") && e.contains("input `nowhere` is not a node"), "{e}");

        let e = error(&with_node("[nodes.bad]\nop = \"count\"\ngroup_by = [\"ad_id\"]"));
        assert!(e.contains("node `bad`") && e.contains("needs an `input`"), "{e}");

        let e = error(&with_node(
            "[nodes.bad]\nop = \"top_n\"\ninput = \"ad_click_counts\"\nn = 3\nwindow = { size = \"5 minutes\", slide = \"60s\" }",
        ));
        assert!(e.contains("node `bad`") && e.contains("window.size") && e.contains("not a duration"), "{e}");

        let e = error(&with_node(
            "[nodes.bad]\nop = \"top_n\"\ninput = \"ad_click_counts\"\nn = 3\nwindow = { size = \"90s\", slide = \"60s\" }",
        ));
        assert!(e.contains("window.size") && e.contains("whole number of panes"), "{e}");

        let e = error(&with_node("[nodes.bad]\nop = \"filter\"\ninput = \"clicks\"\nwhere = { country = [\"XX\"] }"));
        assert!(e.contains("node `bad`") && e.contains("where.country") && e.contains("XX"), "{e}");

        let e = error(&SPEC.replace("pane = \"60s\"", "pane = \"sixty\""));
        assert!(e.contains("time.pane") && e.contains("sixty"), "{e}");
    }

    #[test]
    fn a_cycle_is_named() {
        let e = error(&with_node(
            "[nodes.a]\nop = \"filter\"\ninput = \"b\"\nwhere = { country = [\"US\"] }\n\
             [nodes.b]\nop = \"filter\"\ninput = \"a\"\nwhere = { country = [\"DE\"] }",
        ));
        assert!(e.contains("cycle") && e.contains("a -> b -> a") || e.contains("b -> a -> b"), "{e}");
    }

    #[test]
    fn unknown_keys_and_missing_sink_inputs_are_errors() {
        let e = error(&SPEC.replace("retention = \"24h\"", "retention = \"90s\""));
        assert!(e.contains("queries.retention") && e.contains("whole number of panes"), "{e}");
        let e = error(&SPEC.replace("allowed_lateness", "allowed_latenes"));
        assert!(e.contains("dataflows/test.toml") && e.contains("allowed_latenes"), "{e}");
        let e = error(&format!("{SPEC}\n[sinks.extra]\ninput = \"missing\"\n"));
        assert!(e.contains("sink `extra`") && e.contains("`missing`"), "{e}");
    }

    fn with_sink(sink: &str) -> String {
        format!("{SPEC}\n{sink}\n")
    }

    /// `error` for `text`, checked to name the test file, `subject` (node, sink or key) and
    /// every part of the problem.
    fn assert_error(text: &str, subject: &str, problem: &[&str]) {
        let e = error(text);
        assert!(e.starts_with("dataflows/test.toml: ") && e.contains(subject), "{e}");
        for part in problem {
            assert!(e.contains(part), "`{part}` missing from: {e}");
        }
    }

    #[test]
    fn sink_files_are_plain_names_inside_out() {
        for file in ["/tmp/top.csv", "../top.csv", "..", ".", "", "out/top.csv", "top.csv/", "a\\u0000b"] {
            assert_error(
                &with_sink(&format!("[sinks.escape]\ninput = \"top_ads\"\nfile = \"{file}\"\ntable = \"escape\"")),
                "sink `escape`: file:",
                &["must be a plain file name"],
            );
        }
        // The default file comes from the sink's name, which must then be plain too.
        assert_error(
            &with_sink("[sinks.\"../up\"]\ninput = \"top_ads\"\ntable = \"up\""),
            "sink `../up`: file:",
            &["`../up.csv` must be a plain file name"],
        );
    }

    #[test]
    fn two_sinks_cannot_share_a_file_or_a_table() {
        assert_error(
            &with_sink("[sinks.zz_again]\ninput = \"top_ads\"\nfile = \"ad_click_counts.csv\""),
            "sink `zz_again`: file:",
            &["`ad_click_counts.csv` is also the file of sink `ad_click_counts`"],
        );
        assert_error(
            &with_sink("[sinks.zz_again]\ninput = \"top_ads\"\ntable = \"top_ads\""),
            "sink `zz_again`: table:",
            &["`top_ads` is also the table of sink `top_ads`"],
        );
    }

    #[test]
    fn table_names_fit_postgres_identifiers() {
        // 54 bytes fit (with `incoming_`, 63); 55 would be cut, and collide with its twin.
        let fits = "t".repeat(MAX_TABLE_NAME_BYTES);
        parse(&with_sink(&format!("[sinks.long]\ninput = \"top_ads\"\ntable = \"{fits}\""))).unwrap();
        let long = format!("{fits}x");
        assert_error(
            &with_sink(&format!("[sinks.long]\ninput = \"top_ads\"\ntable = \"{long}\"")),
            "sink `long`: table:",
            &["is 55 bytes long, more than the 54 allowed"],
        );
        // Bytes, not characters: 27 two-byte letters are 54 bytes, 28 are too many.
        let wide = "é".repeat(28);
        assert_error(
            &with_sink(&format!("[sinks.wide]\ninput = \"top_ads\"\ntable = \"{wide}\"")),
            "sink `wide`: table:",
            &["56 bytes"],
        );
        for (table, problem) in [
            ("", "not a PostgreSQL identifier"),
            ("source_offsets", "one of the job's own tables"),
            ("incoming_top_ads", "the prefix of the job's temporary tables"),
        ] {
            assert_error(
                &with_sink(&format!("[sinks.odd]\ninput = \"top_ads\"\nfile = \"odd.csv\"\ntable = \"{table}\"")),
                "sink `odd`: table:",
                &[problem],
            );
        }
    }

    #[test]
    fn the_spec_name_is_a_plain_identifier() {
        let named = |name: &str| SPEC.replace("name = \"ad_clicks\"", &format!("name = \"{name}\""));
        assert_error(&named("../jobs"), "name:", &["must be a plain file name"]);
        assert_error(&named(""), "name:", &["must be a plain file name"]);
        assert_error(&named(&"j".repeat(64)), "name:", &["64 bytes long, more than the 63 allowed"]);
        for odd in ["ad clicks", "ad.clicks", "public", "pg_clicks"] {
            assert_error(&named(odd), "name:", &["must be letters, digits, `_` or `-`"]);
        }
        assert!(job_name("ad_clicks-2").is_ok());
    }

    #[test]
    fn durations_are_at_most_365_days() {
        let year = "8760h";
        for (text, key) in [
            (SPEC.replace("pane = \"60s\"", "pane = \"8761h\""), "time.pane"),
            (
                SPEC.replace("max_out_of_orderness = \"5s\"", "max_out_of_orderness = \"31536000001ms\""),
                "time.max_out_of_orderness",
            ),
            (SPEC.replace("allowed_lateness = \"60s\"", "allowed_lateness = \"525601m\""), "time.allowed_lateness"),
            (SPEC.replace("retention = \"24h\"", "retention = \"9000h\""), "queries.retention"),
            (SPEC.replace("size = \"300s\"", "size = \"100000h\""), "node `top_ads`: window.size"),
            (SPEC.replace("slide = \"60s\"", "slide = \"18446744073709551615ms\""), "node `top_ads`: window.slide"),
        ] {
            assert_error(&text, key, &["longer than 365 days (8760h)"]);
        }
        // A number too large for milliseconds at all is still named.
        assert_error(&SPEC.replace("pane = \"60s\"", "pane = \"18446744073709551615h\""), "time.pane", &["too long"]);
        // Exactly 365 days is allowed, everywhere at once.
        let text = SPEC
            .replace("max_out_of_orderness = \"5s\"", &format!("max_out_of_orderness = \"{year}\""))
            .replace("allowed_lateness = \"60s\"", &format!("allowed_lateness = \"{year}\""))
            .replace("retention = \"24h\"", &format!("retention = \"{year}\""))
            .replace("size = \"300s\"", &format!("size = \"{year}\""));
        let spec = parse(&text).unwrap();
        // The job's largest sums, at the latest event time, stay inside u64.
        let clock = crate::clicks::time::Clock::new(spec.time);
        assert!(!clock.is_late(MAX_CLICK_TS, Some(MAX_CLICK_TS)));
        let Op::TopN { window, .. } = spec.node("top_ads").unwrap().op else { panic!("top_ads is a top_n") };
        let last_pane = clock.pane_start(MAX_CLICK_TS);
        assert!(clock.windows_of(window, last_pane).all(|start| clock.window_close(window, start) > MAX_CLICK_TS));
    }

    /// The shipped spec rewritten: sections and keys in another order, other comments, other
    /// spellings of the same durations, a sub-table for the window, another retention.
    const SHIPPED_REWRITTEN: &str = r#"
# Same job, written differently.
name = "ad_clicks"
[sinks.top_ads]
input = "top_ads"
[sinks.rejected]
table = "rejected_events"   # the table keeps its name
input = "clicks.rejected"
[sinks.late_clicks]
input = "clicks.late"
[sinks.ad_click_counts_by_country]
input = "ad_click_counts_by_country"
file = "by_country.csv"
[sinks.ad_click_counts]
input = "ad_click_counts"

[nodes.top_ads]
n = 10
input = "ad_click_counts"
op = "top_n"
[nodes.top_ads.window]
slide = "1m"
size = "5m"

[nodes.ad_click_counts_by_country]
group_by = ["ad_id", "country"]
input = "clicks"
op = "count"
[nodes.ad_click_counts]
group_by = ["ad_id"]
op = "count"
input = "clicks"
[nodes.clicks]
op = "source"

[queries]
retention = "48h"

[time]
allowed_lateness = "1m"
max_out_of_orderness = "5000ms"
pane = "1m"
"#;

    fn summary(text: &str) -> BTreeMap<String, String> {
        parse(text).unwrap().result_summary()
    }

    #[test]
    fn the_summary_reads_as_the_spec() {
        let summary = summary(SPEC);
        for (key, value) in [
            ("time.pane", "1m"),
            ("time.allowed_lateness", "1m"),
            ("time.max_out_of_orderness", "5s"),
            ("node.clicks.op", "source"),
            ("node.ad_click_counts_by_country.group_by", "ad_id, country"),
            ("node.top_ads.window", "size 5m, slide 1m"),
            ("node.top_ads.n", "10"),
            ("sink.top_ads.table", "top_ads"),
            ("sink.rejected.input", "clicks.rejected"),
            ("sink.rejected.table", "rejected_events"),
        ] {
            assert_eq!(summary.get(key).map(String::as_str), Some(value), "{key} in {summary:?}");
        }
        assert!(!summary.keys().any(|key| key.contains("retention") || key.contains("file")), "{summary:?}");
    }

    #[test]
    fn the_same_spec_written_differently_has_the_same_fingerprint() {
        let (shipped, rewritten) = (parse(SPEC).unwrap(), parse(SHIPPED_REWRITTEN).unwrap());
        assert_eq!(shipped.result_summary(), rewritten.result_summary());
        assert_eq!(shipped.fingerprint(), rewritten.fingerprint());
        assert!(spec_changes(&shipped.result_summary(), &rewritten.result_summary()).is_empty());
        // Lowercase hex SHA-256, the same on every machine: pinned so a change of the summary's
        // keys or encoding (which would refuse every restart) is a conscious one. (Checked
        // against Python's hashlib over the same encoding.)
        let fingerprint = shipped.fingerprint();
        assert_eq!(fingerprint.len(), 64);
        assert!(fingerprint.chars().all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()), "{fingerprint}");
        assert_eq!(fingerprint, "23cf26ebfcb01558e32225e35a8e6ba837fde2827c5890e4ddc44b2e7d6b87ad");
    }

    /// The shipped spec with a US filter and a count of its clicks.
    fn with_filter(countries: &str) -> String {
        with_node(&format!(
            "[nodes.us]\nop = \"filter\"\ninput = \"clicks\"\nwhere = {{ country = [{countries}] }}\n\
             [nodes.us_counts]\nop = \"count\"\ninput = \"us\"\ngroup_by = [\"ad_id\"]\n\
             [sinks.us_counts]\ninput = \"us_counts\""
        ))
    }

    #[test]
    fn every_change_of_results_changes_the_fingerprint_and_is_named() {
        let cases = [
            (SPEC.to_string(), SPEC.replace("pane = \"60s\"", "pane = \"30s\""), "time.pane: 1m -> 30s"),
            (
                SPEC.to_string(),
                SPEC.replace("allowed_lateness = \"60s\"", "allowed_lateness = \"2m\""),
                "time.allowed_lateness: 1m -> 2m",
            ),
            (
                SPEC.to_string(),
                SPEC.replace("max_out_of_orderness = \"5s\"", "max_out_of_orderness = \"10s\""),
                "time.max_out_of_orderness: 5s -> 10s",
            ),
            (
                SPEC.to_string(),
                SPEC.replace("size = \"300s\"", "size = \"10m\""),
                "node.top_ads.window: size 5m, slide 1m -> size 10m, slide 1m",
            ),
            (SPEC.to_string(), SPEC.replace("n = 10", "n = 5"), "node.top_ads.n: 10 -> 5"),
            (
                with_filter("\"US\""),
                with_filter("\"US\", \"CA\""),
                "node.us.where: country in [US] -> country in [CA, US]",
            ),
            (
                SPEC.to_string(),
                SPEC.replace("table = \"rejected_events\"", "table = \"rejects\""),
                "sink.rejected.table: rejected_events -> rejects",
            ),
        ];
        for (before, after, change) in cases {
            let (before, after) = (parse(&before).unwrap(), parse(&after).unwrap());
            assert_ne!(before.fingerprint(), after.fingerprint(), "{change}");
            assert_eq!(spec_changes(&before.result_summary(), &after.result_summary()), vec![change.to_string()]);
        }
    }

    #[test]
    fn added_and_removed_nodes_are_one_line_each() {
        let (before, after) = (summary(SPEC), summary(&with_filter("\"US\"")));
        assert_eq!(
            spec_changes(&before, &after),
            vec![
                "node.us: added (input clicks, op filter, where country in [US])",
                "node.us_counts: added (group_by ad_id, input us, op count)",
                "sink.us_counts: added (input us_counts, table us_counts)",
            ]
        );
        assert_eq!(
            spec_changes(&after, &before),
            vec!["node.us: removed", "node.us_counts: removed", "sink.us_counts: removed"]
        );
        // Retention changes what questions see, not the tables: no change to refuse.
        let longer = summary(&SPEC.replace("retention = \"24h\"", "retention = \"48h\""));
        assert!(spec_changes(&before, &longer).is_empty());
    }
}
