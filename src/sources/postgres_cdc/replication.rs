//! The stream half: a temporary logical replication slot (`test_decoding`), polled with
//! `pg_logical_slot_get_changes` up to the WAL flush position, and a ticker that keeps the
//! slot's restart position moving (see the module documentation of `postgres_cdc`).

use anyhow::{Context, Result, anyhow, bail};
use tokio_postgres::{Client, NoTls};
use tracing::{debug, info};

use super::snapshot::SnapshotXids;
use super::{Change, Lsn, Tuple, parse_lsn};

/// How often the ticker writes a running-transactions record.
const RESTART_TICK: std::time::Duration = std::time::Duration::from_secs(1);

/// A temporary slot on the reader's connection, and its restart ticker.
pub(super) struct Slot {
    name: String,
    /// The snapshot the stream continues: its transactions are skipped when decoded.
    in_snapshot: Option<SnapshotXids>,
    ticker: tokio::task::JoinHandle<()>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.ticker.abort();
    }
}

impl Slot {
    /// Creates the temporary slot `{slot_prefix}_{pid}_{n}` on `client` (connected to `url`)
    /// and starts its ticker.
    pub async fn create(client: &Client, url: &str, slot_prefix: &str) -> Result<Self> {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let name =
            format!("{slot_prefix}_{}_{}", std::process::id(), NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
        let row = client
            .query_one("SELECT lsn::text FROM pg_create_logical_replication_slot($1, 'test_decoding', true)", &[&name])
            .await
            .with_context(|| {
                format!(
                    "cannot create the logical replication slot {name} (is wal_level = logical, and is a slot free?)"
                )
            })?;
        let consistent: String = row.get(0);
        info!(slot = %name, consistent_point = %consistent, "replication slot created");
        let ticker = tokio::spawn(tick_restart(url.to_string(), format!("{name}_tick")));
        Ok(Slot { name, in_snapshot: None, ticker })
    }

    /// From now on, transactions visible in `snapshot` are skipped (they are in it already).
    pub fn skip_transactions_in(&mut self, snapshot: SnapshotXids) {
        self.in_snapshot = Some(snapshot);
    }

    /// The changes to `tables` committed since the previous poll (or the snapshot), up to the WAL
    /// flush position read first, and that position.
    pub async fn poll(&mut self, client: &Client, tables: &[String]) -> Result<(Vec<Change>, Lsn)> {
        // One round trip: the flush position is read first (MATERIALIZED), then every
        // transaction committed before it is decoded. A row with NULL data means none.
        let rows = client
            .query(
                "WITH upto AS MATERIALIZED (SELECT pg_current_wal_flush_lsn() AS lsn)
                 SELECT upto.lsn::text, changes.data
                   FROM upto
                   LEFT JOIN LATERAL pg_logical_slot_get_changes($1, upto.lsn, NULL,
                                     'include-xids', '1', 'skip-empty-xacts', '1') AS changes ON true",
                &[&self.name],
            )
            .await
            .with_context(|| format!("cannot read changes from slot {}", self.name))?;
        let flushed: &str = rows.first().ok_or_else(|| anyhow!("no flush position"))?.get(0);
        let reached = parse_lsn(flushed)?;
        let mut changes = Vec::new();
        let mut skipping = false;
        for row in &rows {
            let Some(line) = row.get::<_, Option<&str>>(1) else { continue };
            match parse_line(line, tables).with_context(|| format!("cannot decode `{}`", abbreviate(line)))? {
                Decoded::Begin(xid) => {
                    skipping = self.in_snapshot.as_ref().is_some_and(|snapshot| snapshot.sees(xid));
                    if skipping {
                        debug!(xid, "transaction already in the snapshot; skipped");
                    }
                }
                Decoded::Commit => skipping = false,
                Decoded::Change(change) if !skipping => changes.push(change),
                Decoded::Truncate(table) if !skipping => {
                    bail!("table {table} was truncated; restart to rebuild from a fresh snapshot")
                }
                _ => {}
            }
        }
        Ok((changes, reached))
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

/// One line of `test_decoding` output.
#[derive(Debug, PartialEq, Eq)]
enum Decoded {
    Begin(u32),
    Commit,
    Change(Change),
    Truncate(String),
    Other,
}

/// Parses a `test_decoding` line (`include-xids` on); a change to a table not in `tables` is
/// `Other` without its rows being parsed (they may lack what this reader needs, such as the old
/// row of an update).
fn parse_line(line: &str, tables: &[String]) -> Result<Decoded> {
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
    if !tables.contains(&table) {
        return Ok(Decoded::Other);
    }
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

    fn wanted() -> Vec<String> {
        ["room_type_inventory", "hotel", "reservation", "x"].map(String::from).to_vec()
    }

    fn tuple(columns: &[(&str, Option<&str>)]) -> Tuple {
        Tuple { columns: columns.iter().map(|(n, v)| (n.to_string(), v.map(str::to_string))).collect() }
    }

    #[test]
    fn decodes_inserts_updates_and_deletes() {
        let insert = "table public.room_type_inventory: INSERT: hotel_id[bigint]:7 date[date]:'2031-03-01' \
                      overbooking_ratio[numeric]:1.10 note[text]:'it''s a view' gone[text]:null";
        assert_eq!(
            parse_line(insert, &wanted()).unwrap(),
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
        let Decoded::Change(change) = parse_line(update, &wanted()).unwrap() else { panic!() };
        assert_eq!(change.before.unwrap().get("created_at"), Some("2026-11-25 14:00:00+00"));
        assert_eq!(change.after.unwrap().get("created_at"), Some("2026-11-25 15:00:00+00"));
        let delete = "table public.reservation: DELETE: reservation_id[uuid]:'0190a0b2-7c1e-7000-8000-000000000001'";
        let Decoded::Change(change) = parse_line(delete, &wanted()).unwrap() else { panic!() };
        assert!(change.after.is_none());
        assert_eq!(change.before.unwrap().get("reservation_id"), Some("0190a0b2-7c1e-7000-8000-000000000001"));
        assert_eq!(parse_line("BEGIN 745", &wanted()).unwrap(), Decoded::Begin(745));
        assert_eq!(parse_line("COMMIT 745", &wanted()).unwrap(), Decoded::Commit);
        assert_eq!(
            parse_line("table public.hotel: TRUNCATE: (no-flags)", &wanted()).unwrap(),
            Decoded::Truncate("hotel".into())
        );
    }

    #[test]
    fn changes_to_other_tables_are_passed_over_unparsed() {
        let update =
            "table public.reservation_claim: UPDATE: reservation_id[uuid]:'0190a0b2-7c1e-7000-8000-000000000001'";
        assert_eq!(parse_line(update, &wanted()).unwrap(), Decoded::Other);
        assert!(parse_line(update, &["reservation_claim".to_string()]).is_err());
    }

    #[test]
    fn refuses_rows_it_cannot_apply_exactly() {
        assert!(parse_line("table public.x: UPDATE: id[integer]:1", &wanted()).is_err());
        assert!(parse_line("table public.x: DELETE: (no-tuple-data)", &wanted()).is_err());
        assert!(parse_line("table public.x: INSERT: id[integer]:'unterminated", &wanted()).is_err());
    }
}
