//! PostgreSQL change data capture: a consistent snapshot of some tables, then every change
//! committed to them afterwards, in commit order, read from a logical replication slot.
//!
//! How snapshot and stream meet without losing or doubling a transaction:
//! 1. A *temporary* logical slot (`test_decoding`) is created first. Every transaction that
//!    commits after the slot's consistent point will be decoded from it.
//! 2. Then a REPEATABLE READ transaction reads the tables and `pg_current_snapshot()`.
//!    Transactions that committed between (1) and (2) are both in the snapshot and in the slot;
//!    they are recognised by their xid being visible in that snapshot and skipped when decoded.
//! 3. Each poll asks for the transactions committed before the WAL flush position read just
//!    before it (`upto_lsn`), so after a poll the reader has seen *every* commit before that
//!    LSN: that is the position an answer built from it reflects.
//!
//! The slot is temporary: it lives as long as the reader's session, so a crashed reader
//! leaves no slot behind holding WAL, and a restarted one starts from a fresh snapshot (the
//! view is rebuilt, never patched from an unknown state). Polling with
//! `pg_logical_slot_get_changes` consumes what it returns, so the slot's confirmed position
//! follows the reader and retains no more WAL than one poll's worth.
//!
//! Each poll decodes from the slot's *restart* position, which only moves at the "running
//! transactions" records PostgreSQL writes every 15 s: under heavy writes a poll would re-read up
//! to 15 s of WAL. A ticker on its own connection writes such a record every second (by creating
//! and dropping a throwaway temporary slot; `pg_log_standby_snapshot()` exists only from
//! PostgreSQL 16), which keeps polls short and the commit-to-view lag low.
//!
//! Values are PostgreSQL's text output (what `test_decoding` prints and what the simple query
//! protocol returns), so one converter serves snapshot rows and changes alike.

use std::collections::HashSet;

use anyhow::{Context, Result, anyhow, bail};
use tokio_postgres::{Client, NoTls, SimpleQueryMessage};
use tracing::{debug, info};

/// A position in PostgreSQL's write-ahead log.
pub type Lsn = u64;

/// Parses an LSN as PostgreSQL prints it (`16/B374D848`).
pub fn parse_lsn(text: &str) -> Result<Lsn> {
    let (high, low) = text.trim().split_once('/').ok_or_else(|| anyhow!("`{text}` is not an LSN (X/Y)"))?;
    let high = u32::from_str_radix(high, 16).with_context(|| format!("`{text}` is not an LSN"))?;
    let low = u32::from_str_radix(low, 16).with_context(|| format!("`{text}` is not an LSN"))?;
    Ok((u64::from(high) << 32) | u64::from(low))
}

/// Prints an LSN the way PostgreSQL does.
pub fn format_lsn(lsn: Lsn) -> String {
    format!("{:X}/{:X}", lsn >> 32, lsn & 0xFFFF_FFFF)
}

/// A row as PostgreSQL prints it: column names and text values (`None` for NULL).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Tuple {
    pub columns: Vec<(String, Option<String>)>,
}

impl Tuple {
    /// The text of column `name`; `None` when the column is missing or NULL.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.columns.iter().find(|(column, _)| column == name).and_then(|(_, value)| value.as_deref())
    }
}

/// One row changed by a committed transaction: an insert has only `after`, a delete only
/// `before`, an update both (tables need `REPLICA IDENTITY FULL` for a whole `before`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub table: String,
    pub before: Option<Tuple>,
    pub after: Option<Tuple>,
}

/// Every change committed before `lsn` that the previous batches did not have.
#[derive(Debug, Default)]
pub struct ChangeBatch {
    pub changes: Vec<Change>,
    pub lsn: Lsn,
}

/// Rows fetched per round trip while reading the snapshot.
const SNAPSHOT_FETCH: usize = 20_000;

/// One database's snapshot and change stream.
pub struct CdcReader {
    client: Client,
    slot: String,
    tables: HashSet<String>,
    snapshot: Option<SnapshotXids>,
    ticker: tokio::task::JoinHandle<()>,
}

impl Drop for CdcReader {
    fn drop(&mut self) {
        self.ticker.abort();
    }
}

/// How often the ticker writes a running-transactions record.
const RESTART_TICK: std::time::Duration = std::time::Duration::from_secs(1);

impl CdcReader {
    /// Connects to `url` and creates the temporary slot (`{slot_prefix}_{pid}_{n}`); `tables`
    /// are the (public schema) tables whose changes are wanted.
    pub async fn open(url: &str, slot_prefix: &str, tables: &[&str]) -> Result<Self> {
        let (client, connection) = tokio_postgres::connect(url, NoTls).await.context("cannot connect for CDC")?;
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::warn!(%error, "CDC connection ended");
            }
        });
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let slot =
            format!("{slot_prefix}_{}_{}", std::process::id(), NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
        let row = client
            .query_one("SELECT lsn::text FROM pg_create_logical_replication_slot($1, 'test_decoding', true)", &[&slot])
            .await
            .with_context(|| {
                format!(
                    "cannot create the logical replication slot {slot} (is wal_level = logical, and is a slot free?)"
                )
            })?;
        let consistent: String = row.get(0);
        info!(%slot, consistent_point = %consistent, "replication slot created");
        let ticker = tokio::spawn(tick_restart(url.to_string(), format!("{slot}_tick")));
        Ok(Self { client, slot, tables: tables.iter().map(|t| t.to_string()).collect(), snapshot: None, ticker })
    }

    /// Reads every row of the tables as of one snapshot, handing each to `each` (an error from
    /// it ends the read). Call once, before the first [`poll`](Self::poll).
    pub async fn snapshot(&mut self, mut each: impl FnMut(&str, Tuple) -> Result<()>) -> Result<u64> {
        let client = &self.client;
        client.batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY").await?;
        let snapshot = client.query_one("SELECT pg_current_snapshot()::text", &[]).await?;
        self.snapshot = Some(SnapshotXids::parse(snapshot.get(0))?);
        let mut rows = 0u64;
        let mut tables: Vec<&String> = self.tables.iter().collect();
        tables.sort();
        for table in tables {
            client
                .batch_execute(&format!("DECLARE snapshot_rows NO SCROLL CURSOR FOR SELECT * FROM {table}"))
                .await
                .with_context(|| format!("cannot read table {table}"))?;
            loop {
                let messages =
                    client.simple_query(&format!("FETCH FORWARD {SNAPSHOT_FETCH} FROM snapshot_rows")).await?;
                let mut fetched = 0;
                for message in messages {
                    if let SimpleQueryMessage::Row(row) = message {
                        let columns = row
                            .columns()
                            .iter()
                            .enumerate()
                            .map(|(index, column)| (column.name().to_string(), row.get(index).map(str::to_string)))
                            .collect();
                        each(table, Tuple { columns })?;
                        fetched += 1;
                    }
                }
                rows += fetched as u64;
                if fetched < SNAPSHOT_FETCH {
                    break;
                }
            }
            client.batch_execute("CLOSE snapshot_rows").await?;
        }
        client.batch_execute("COMMIT").await?;
        debug!(rows, "snapshot read");
        Ok(rows)
    }

    /// The changes committed since the previous poll (or the snapshot), up to the WAL flush
    /// position read first.
    pub async fn poll(&mut self) -> Result<ChangeBatch> {
        // One round trip: the flush position is read first (MATERIALIZED), then every
        // transaction committed before it is decoded. A row with NULL data means none.
        let rows = self
            .client
            .query(
                "WITH upto AS MATERIALIZED (SELECT pg_current_wal_flush_lsn() AS lsn)
                 SELECT upto.lsn::text, changes.data
                   FROM upto
                   LEFT JOIN LATERAL pg_logical_slot_get_changes($1, upto.lsn, NULL,
                                     'include-xids', '1', 'skip-empty-xacts', '1') AS changes ON true",
                &[&self.slot],
            )
            .await
            .with_context(|| format!("cannot read changes from slot {}", self.slot))?;
        let flushed: &str = rows.first().ok_or_else(|| anyhow!("no flush position"))?.get(0);
        let mut batch = ChangeBatch { changes: Vec::new(), lsn: parse_lsn(flushed)? };
        let mut skipping = false;
        for row in &rows {
            let Some(line) = row.get::<_, Option<&str>>(1) else { continue };
            match parse_line(line).with_context(|| format!("cannot decode `{}`", abbreviate(line)))? {
                Decoded::Begin(xid) => {
                    skipping = self.snapshot.as_ref().is_some_and(|snapshot| snapshot.sees(xid));
                    if skipping {
                        debug!(xid, "transaction already in the snapshot; skipped");
                    }
                }
                Decoded::Commit => skipping = false,
                Decoded::Change(change) if !skipping && self.tables.contains(&change.table) => {
                    batch.changes.push(change)
                }
                Decoded::Truncate(table) if !skipping && self.tables.contains(&table) => {
                    bail!("table {table} was truncated; restart to rebuild from a fresh snapshot")
                }
                _ => {}
            }
        }
        Ok(batch)
    }
}

/// Writes a running-transactions record every [`RESTART_TICK`], so that the slot's restart
/// position follows the stream (see the module comment). Failures are logged and retried: the
/// ticker only makes polls cheaper, the stream is correct without it.
async fn tick_restart(url: String, tick_slot: String) {
    let mut client = None;
    loop {
        tokio::time::sleep(RESTART_TICK).await;
        if client.is_none() {
            match tokio_postgres::connect(&url, NoTls).await {
                Ok((connected, connection)) => {
                    tokio::spawn(connection);
                    client = Some(connected);
                }
                Err(error) => {
                    debug!(%error, "restart ticker cannot connect");
                    continue;
                }
            }
        }
        let Some(connected) = &client else { continue };
        let ticked = connected
            .query_one(
                "SELECT pg_drop_replication_slot(slot_name)
                   FROM pg_create_logical_replication_slot($1, 'test_decoding', true)",
                &[&tick_slot],
            )
            .await;
        if let Err(error) = ticked {
            debug!(%error, "restart ticker failed; reconnecting");
            client = None;
        }
    }
}

/// The transactions a REPEATABLE READ snapshot sees: every xid below `xmax` except those in
/// progress when it was taken.
#[derive(Debug, Clone)]
struct SnapshotXids {
    xmax: u64,
    in_progress: HashSet<u64>,
}

impl SnapshotXids {
    /// Parses `pg_current_snapshot()` (`xmin:xmax:xip,xip,...`, 64-bit xids).
    fn parse(text: &str) -> Result<Self> {
        let mut parts = text.split(':');
        let (Some(_xmin), Some(xmax), Some(xip)) = (parts.next(), parts.next(), parts.next()) else {
            bail!("`{text}` is not a snapshot");
        };
        let in_progress = xip.split(',').filter(|x| !x.is_empty()).map(str::parse).collect::<Result<_, _>>()?;
        Ok(Self { xmax: xmax.parse()?, in_progress })
    }

    /// Whether the committed transaction `xid` (32 bits, as decoded) is visible in the
    /// snapshot: its 64-bit xid is taken as the one nearest to `xmax`.
    fn sees(&self, xid: u32) -> bool {
        let epoch_base = self.xmax & !0xFFFF_FFFF;
        let candidates = [epoch_base.wrapping_sub(1 << 32), epoch_base, epoch_base + (1 << 32)];
        let full = candidates
            .iter()
            .map(|base| base | u64::from(xid))
            .min_by_key(|full| full.abs_diff(self.xmax))
            .unwrap_or(u64::from(xid));
        full < self.xmax && !self.in_progress.contains(&full)
    }
}

/// One line of `test_decoding` output.
#[derive(Debug, PartialEq, Eq)]
enum Decoded {
    Begin(u32),
    Commit,
    Change(Change),
    Truncate(String),
    Other,
}

/// Parses a `test_decoding` line (`include-xids` on).
fn parse_line(line: &str) -> Result<Decoded> {
    if let Some(xid) = line.strip_prefix("BEGIN ") {
        return Ok(Decoded::Begin(xid.trim().parse().context("bad xid")?));
    }
    if line.starts_with("COMMIT") {
        return Ok(Decoded::Commit);
    }
    let Some(rest) = line.strip_prefix("table ") else {
        return Ok(Decoded::Other); // logical messages and the like
    };
    let (name, rest) = rest.split_once(": ").ok_or_else(|| anyhow!("no table name"))?;
    let table = name.rsplit_once('.').map_or(name, |(_, table)| table).trim_matches('"').to_string();
    let (action, tuples) = rest.split_once(':').ok_or_else(|| anyhow!("no action"))?;
    let tuples = tuples.trim_start();
    let change = match action {
        "INSERT" => Change { table, before: None, after: Some(parse_tuple(tuples)?) },
        "DELETE" if tuples.starts_with("(no-tuple-data)") => {
            bail!("DELETE without row data (REPLICA IDENTITY FULL needed)")
        }
        "DELETE" => Change { table, before: Some(parse_tuple(tuples)?), after: None },
        "UPDATE" => match tuples.strip_prefix("old-key:") {
            Some(both) => {
                let (old, new) = both.split_once(" new-tuple:").ok_or_else(|| anyhow!("old-key without new-tuple"))?;
                Change { table, before: Some(parse_tuple(old)?), after: Some(parse_tuple(new)?) }
            }
            None => bail!("UPDATE of {table} without the old row (REPLICA IDENTITY FULL needed)"),
        },
        "TRUNCATE" => return Ok(Decoded::Truncate(table)),
        other => bail!("unknown action {other}"),
    };
    Ok(Decoded::Change(change))
}

/// Parses ` name[type]:value name[type]:value ...`; values are bare (numbers, `null`) or
/// quoted with `'` (a quote inside doubled).
fn parse_tuple(text: &str) -> Result<Tuple> {
    let mut columns = Vec::new();
    let mut rest = text.trim_start();
    while !rest.is_empty() {
        let open = rest.find('[').ok_or_else(|| anyhow!("column without a type near `{}`", abbreviate(rest)))?;
        let name = rest[..open].trim_matches('"').to_string();
        let close = rest[open..].find("]:").ok_or_else(|| anyhow!("unterminated type of column {name}"))? + open;
        rest = &rest[close + 2..];
        let value = if let Some(quoted) = rest.strip_prefix('\'') {
            let mut value = String::new();
            let mut chars = quoted.char_indices();
            let mut end = None;
            while let Some((index, c)) = chars.next() {
                if c == '\'' {
                    if quoted[index + 1..].starts_with('\'') {
                        value.push('\'');
                        chars.next();
                    } else {
                        end = Some(index + 1);
                        break;
                    }
                } else {
                    value.push(c);
                }
            }
            let end = end.ok_or_else(|| anyhow!("unterminated value of column {name}"))?;
            rest = &quoted[end..];
            Some(value)
        } else {
            let end = rest.find(' ').unwrap_or(rest.len());
            let bare = &rest[..end];
            rest = &rest[end..];
            match bare {
                "null" => None,
                "unchanged-toast-datum" => {
                    bail!("column {name} is an unchanged TOAST value (REPLICA IDENTITY FULL needed)")
                }
                _ => Some(bare.to_string()),
            }
        };
        columns.push((name, value));
        rest = rest.trim_start();
    }
    Ok(Tuple { columns })
}

fn abbreviate(text: &str) -> &str {
    match text.char_indices().nth(200) {
        Some((cut, _)) => &text[..cut],
        None => text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tuple(columns: &[(&str, Option<&str>)]) -> Tuple {
        Tuple { columns: columns.iter().map(|(n, v)| (n.to_string(), v.map(str::to_string))).collect() }
    }

    #[test]
    fn lsns_round_trip() {
        assert_eq!(parse_lsn("16/B374D848").unwrap(), 0x16_B374_D848);
        assert_eq!(format_lsn(0x16_B374_D848), "16/B374D848");
        assert_eq!(format_lsn(parse_lsn("0/16B3748").unwrap()), "0/16B3748");
        assert!(parse_lsn("16B374D848").is_err());
    }

    #[test]
    fn decodes_inserts_updates_and_deletes() {
        let insert = "table public.room_type_inventory: INSERT: hotel_id[bigint]:7 date[date]:'2031-03-01' \
                      overbooking_ratio[numeric]:1.10 note[text]:'it''s a view' gone[text]:null";
        assert_eq!(
            parse_line(insert).unwrap(),
            Decoded::Change(Change {
                table: "room_type_inventory".into(),
                before: None,
                after: Some(tuple(&[
                    ("hotel_id", Some("7")),
                    ("date", Some("2031-03-01")),
                    ("overbooking_ratio", Some("1.10")),
                    ("note", Some("it's a view")),
                    ("gone", None),
                ])),
            })
        );
        let update = "table public.hotel: UPDATE: old-key: hotel_id[bigint]:1 created_at[timestamp with time zone]:'2026-11-25 14:00:00+00' \
                      new-tuple: hotel_id[bigint]:1 created_at[timestamp with time zone]:'2026-11-25 15:00:00+00'";
        let Decoded::Change(change) = parse_line(update).unwrap() else { panic!() };
        assert_eq!(change.before.unwrap().get("created_at"), Some("2026-11-25 14:00:00+00"));
        assert_eq!(change.after.unwrap().get("created_at"), Some("2026-11-25 15:00:00+00"));
        let delete = "table public.reservation: DELETE: reservation_id[uuid]:'0190a0b2-7c1e-7000-8000-000000000001'";
        let Decoded::Change(change) = parse_line(delete).unwrap() else { panic!() };
        assert!(change.after.is_none());
        assert_eq!(change.before.unwrap().get("reservation_id"), Some("0190a0b2-7c1e-7000-8000-000000000001"));
        assert_eq!(parse_line("BEGIN 745").unwrap(), Decoded::Begin(745));
        assert_eq!(parse_line("COMMIT 745").unwrap(), Decoded::Commit);
        assert_eq!(parse_line("table public.hotel: TRUNCATE: (no-flags)").unwrap(), Decoded::Truncate("hotel".into()));
    }

    #[test]
    fn refuses_rows_it_cannot_apply_exactly() {
        assert!(parse_line("table public.x: UPDATE: id[integer]:1").is_err());
        assert!(parse_line("table public.x: DELETE: (no-tuple-data)").is_err());
        assert!(parse_line("table public.x: INSERT: id[integer]:'unterminated").is_err());
    }

    #[test]
    fn snapshot_visibility_follows_xmax_and_in_progress() {
        let snapshot = SnapshotXids::parse("100:105:101,103").unwrap();
        assert!(snapshot.sees(99));
        assert!(snapshot.sees(102));
        assert!(!snapshot.sees(101));
        assert!(!snapshot.sees(103));
        assert!(!snapshot.sees(105));
        assert!(!snapshot.sees(200));
        // Across a wraparound of the 32-bit xid: epoch 1, xmax just past it.
        let snapshot = SnapshotXids::parse(&format!("{}:{}:", (1u64 << 32) - 5, (1u64 << 32) + 3)).unwrap();
        assert!(snapshot.sees(u32::MAX - 1));
        assert!(snapshot.sees(2));
        assert!(!snapshot.sees(3));
    }
}
