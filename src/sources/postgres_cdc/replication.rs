//! The stream half: a temporary logical replication slot (`test_decoding`) on a replication
//! connection of its own ([`WalStream`]), streamed from once the snapshot is read: each change
//! arrives once, as it commits (see the module documentation of `postgres_cdc`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use tracing::{debug, info};

use super::snapshot::SnapshotXids;
use super::walstream::{WalMessage, WalStream};
use super::{Change, Lsn, Tuple, parse_lsn};

/// How often the applied position is reported when it moved (the slot's confirmed position,
/// which lets the server recycle WAL).
const STATUS_EVERY: Duration = Duration::from_secs(1);

/// The options of `test_decoding`: transaction ids (to skip those in the snapshot), and no
/// empty transactions.
const PLUGIN_OPTIONS: &str = "\"include-xids\" '1', \"skip-empty-xacts\" '1'";

/// A temporary slot on its own replication connection, and where its stream stands.
pub(super) struct Stream {
    wal: WalStream,
    name: String,
    /// The snapshot the stream continues: its transactions are skipped when decoded.
    in_snapshot: Option<SnapshotXids>,
    started: bool,
    /// Every commit before this position has been handed over.
    reached: Lsn,
    /// The changes of the transaction being received (handed over at its commit), and whether
    /// it is one of the snapshot's.
    open: Option<(Vec<Change>, bool)>,
    /// When the server was last asked for a keepalive.
    asked_at: Instant,
    /// The position last reported to the server, and when.
    reported: (Lsn, Instant),
    /// When the server last sent anything.
    heard_at: Instant,
}

impl Stream {
    /// Connects to `url` in replication mode and creates the temporary slot
    /// `{slot_prefix}_{pid}_{n}` there (it lives as long as the connection).
    pub async fn create(url: &str, slot_prefix: &str) -> Result<Self> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let name = format!("{slot_prefix}_{}_{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed));
        let mut wal = WalStream::connect(url, &format!("clickstay cdc {name}")).await.context(
            "cannot open a replication connection (the role needs REPLICATION or superuser, and the server \
             max_wal_senders > 0)",
        )?;
        let rows = wal
            .simple_query(&format!(
                "CREATE_REPLICATION_SLOT \"{name}\" TEMPORARY LOGICAL test_decoding (SNAPSHOT 'nothing')"
            ))
            .await
            .with_context(|| {
                format!(
                    "cannot create the logical replication slot {name} (is wal_level = logical, and is a slot free?)"
                )
            })?;
        let consistent =
            rows.first().and_then(|row| row.get(1).cloned().flatten()).ok_or_else(|| anyhow!("no consistent point"))?;
        info!(slot = %name, consistent_point = %consistent, "replication slot created");
        let now = Instant::now();
        Ok(Stream {
            wal,
            name,
            in_snapshot: None,
            started: false,
            reached: parse_lsn(&consistent)?,
            open: None,
            asked_at: now,
            reported: (0, now),
            heard_at: now,
        })
    }

    /// From now on, transactions visible in `snapshot` are skipped (they are in it already).
    pub fn skip_transactions_in(&mut self, snapshot: SnapshotXids) {
        self.in_snapshot = Some(snapshot);
    }

    /// The changes to `tables` of the transactions that committed since the last read, waiting
    /// up to `wait` for the first (or for the position to move), and the position reached. Starts the stream on its first call.
    /// A server silent for `silence` (it answers a status request within milliseconds) is an
    /// error: the connection is taken as broken.
    pub async fn read(&mut self, tables: &[String], wait: Duration, silence: Duration) -> Result<(Vec<Change>, Lsn)> {
        if !self.started {
            self.wal
                .start(&self.name, 0, PLUGIN_OPTIONS)
                .await
                .with_context(|| format!("cannot stream slot {}", self.name))?;
            self.started = true;
            self.heard_at = Instant::now();
        }
        let deadline = Instant::now() + wait;
        let mut changes = Vec::new();
        let from = self.reached;
        loop {
            // Changes, or a position further on (a keepalive, a commit of other tables): hand
            // over what has come, without waiting for more.
            let moved = !changes.is_empty() || self.reached > from;
            let now = Instant::now();
            // A quiet server: ask for a keepalive, which shows the connection is alive.
            if now - self.heard_at >= silence / 3 && now - self.asked_at >= silence / 3 {
                self.wal.send_status(self.reached, true).await?;
                self.asked_at = now;
            }
            if now - self.heard_at >= silence {
                bail!("slot {}: the server sent nothing for {silence:?}", self.name);
            }
            let timeout = if moved { Duration::ZERO } else { deadline.saturating_duration_since(now).min(silence / 3) };
            match tokio::time::timeout(timeout, self.wal.next()).await {
                Ok(message) => {
                    self.heard_at = Instant::now();
                    self.receive(message?, tables, &mut changes).await?;
                }
                Err(_) if moved || Instant::now() >= deadline => break,
                Err(_) => {}
            }
        }
        if self.reached > self.reported.0 && self.reported.1.elapsed() >= STATUS_EVERY {
            self.wal.send_status(self.reached, false).await?;
            self.reported = (self.reached, Instant::now());
        }
        Ok((changes, self.reached))
    }

    /// Takes one message of the stream: a committed transaction's changes go to `changes`.
    async fn receive(&mut self, message: WalMessage, tables: &[String], changes: &mut Vec<Change>) -> Result<()> {
        match message {
            WalMessage::Keepalive { wal_end, reply } => {
                // Inside a transaction the server may have sent past its commit already.
                if self.open.is_none() {
                    self.reached = self.reached.max(wal_end);
                }
                // Answered at once: the server then sends the next keepalive as soon as its
                // WAL moves again (a walsender waits for an answer before it sends another),
                // so a quiet database's position reaches the view without a commit.
                if reply || self.reached > self.reported.0 {
                    self.wal.send_status(self.reached, false).await?;
                    self.reported = (self.reached, Instant::now());
                }
            }
            WalMessage::Data { lsn, data } => {
                let line = std::str::from_utf8(&data).context("a decoded change is not UTF-8")?;
                match parse_line(line, tables).with_context(|| format!("cannot decode `{}`", abbreviate(line)))? {
                    Decoded::Begin(xid) => {
                        let skip = self.in_snapshot.as_ref().is_some_and(|snapshot| snapshot.sees(xid));
                        if skip {
                            debug!(xid, "transaction already in the snapshot; skipped");
                        }
                        self.open = Some((Vec::new(), skip));
                    }
                    Decoded::Commit => {
                        let (committed, skip) = self.open.take().context("COMMIT without BEGIN")?;
                        if !skip {
                            changes.extend(committed);
                        }
                        // The commit's message is at the end of its commit record.
                        self.reached = self.reached.max(lsn);
                    }
                    Decoded::Change(change) => match &mut self.open {
                        Some((open, skip)) => {
                            if !*skip {
                                open.push(change);
                            }
                        }
                        None => bail!("a change outside a transaction"),
                    },
                    Decoded::Truncate(table) if !self.open.as_ref().is_some_and(|(_, skip)| *skip) => {
                        bail!("table {table} was truncated; restart to rebuild from a fresh snapshot")
                    }
                    _ => {}
                }
            }
        }
        Ok(())
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
