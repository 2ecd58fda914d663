//! The snapshot half of the change stream: every row of the tables as of one REPEATABLE READ
//! snapshot, read through a cursor a chunk at a time, and which transactions that snapshot
//! already contains (so that the stream skips them).

use std::collections::{HashSet, VecDeque};

use anyhow::{Context, Result, bail};
use tokio_postgres::{Client, SimpleQueryMessage};

use super::{Change, Tuple};

/// Rows fetched per round trip (one batch of the source).
const SNAPSHOT_FETCH: usize = 20_000;

/// A snapshot being read: the tables still to read, the one whose cursor is open.
pub(super) struct Snapshot {
    tables: VecDeque<String>,
    open: Option<String>,
    /// The transactions the snapshot sees.
    pub xids: SnapshotXids,
}

impl Snapshot {
    /// Begins the snapshot's transaction on `client` (which must not be used otherwise until
    /// [`next_rows`](Self::next_rows) returns `None`).
    pub async fn begin(client: &Client, tables: &[String]) -> Result<Self> {
        client.batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY").await?;
        let snapshot = client.query_one("SELECT pg_current_snapshot()::text", &[]).await?;
        let mut tables = tables.to_vec();
        tables.sort();
        Ok(Snapshot { tables: tables.into(), open: None, xids: SnapshotXids::parse(snapshot.get(0))? })
    }

    /// The next rows, as inserts; `None` (and the transaction committed) after the last.
    pub async fn next_rows(&mut self, client: &Client) -> Result<Option<Vec<Change>>> {
        loop {
            let table = match &self.open {
                Some(table) => table.clone(),
                None => {
                    let Some(table) = self.tables.pop_front() else {
                        client.batch_execute("COMMIT").await?;
                        return Ok(None);
                    };
                    client
                        .batch_execute(&format!("DECLARE snapshot_rows NO SCROLL CURSOR FOR SELECT * FROM {table}"))
                        .await
                        .with_context(|| format!("cannot read table {table}"))?;
                    self.open = Some(table.clone());
                    table
                }
            };
            let messages = client.simple_query(&format!("FETCH FORWARD {SNAPSHOT_FETCH} FROM snapshot_rows")).await?;
            let mut rows = Vec::with_capacity(messages.len());
            for message in messages {
                if let SimpleQueryMessage::Row(row) = message {
                    let columns = row
                        .columns()
                        .iter()
                        .enumerate()
                        .map(|(index, column)| (column.name().to_string(), row.get(index).map(str::to_string)))
                        .collect();
                    rows.push(Change { table: table.clone(), before: None, after: Some(Tuple { columns }) });
                }
            }
            if rows.len() < SNAPSHOT_FETCH {
                client.batch_execute("CLOSE snapshot_rows").await?;
                self.open = None;
            }
            if !rows.is_empty() {
                return Ok(Some(rows));
            }
        }
    }
}

/// The transactions a REPEATABLE READ snapshot sees: every xid below `xmax` except those in
/// progress when it was taken.
#[derive(Debug, Clone)]
pub(super) struct SnapshotXids {
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
    pub fn sees(&self, xid: u32) -> bool {
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

#[cfg(test)]
mod tests {
    use super::*;

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
