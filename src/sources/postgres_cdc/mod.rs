//! PostgreSQL change data capture: a consistent snapshot of some tables, then every change
//! committed to them afterwards, in commit order, streamed from a logical replication slot.
//!
//! How snapshot and stream meet without losing or doubling a transaction:
//! 1. A *temporary* logical slot (`test_decoding`) is created first, on a replication
//!    connection (`replication=database`). Every transaction that commits after the slot's
//!    consistent point will be decoded from it.
//! 2. Then a REPEATABLE READ transaction reads the tables and `pg_current_snapshot()`.
//!    Transactions that committed between (1) and (2) are both in the snapshot and in the slot;
//!    they are recognised by their xid being visible in that snapshot and skipped when decoded.
//! 3. Once the snapshot is read, the slot is streamed (`START_REPLICATION`): the server sends
//!    each transaction once, as it commits, and the reader hands it over whole at its commit.
//!    A batch carries the position *reached*: every commit before it has been handed over (the
//!    last commit's end, or the server's keepalive position outside a transaction). Each
//!    keepalive is answered at once, so the server sends the next as soon as its WAL moves:
//!    a quiet database's position (a checkpoint, WAL of other databases) reaches the reader
//!    without a commit.
//!
//! The slot is temporary: it lives as long as the replication connection, so a crashed reader
//! leaves no slot behind holding WAL, and a restarted one starts from a fresh snapshot (the
//! view is rebuilt, never patched from an unknown state). Standby status updates report the
//! reached position as applied, so the slot's confirmed position follows the reader and the
//! server recycles the WAL behind it. A quiet stream is asked for a keepalive every third of
//! `read_timeout`; one that answers nothing for `read_timeout` is taken as broken.
//!
//! As a [`Source`], a database is one partition whose positions are LSNs: the first rounds hand
//! over the snapshot's rows as inserts (no position yet), the later ones the changes committed
//! since, each batch with the LSN it reaches. `snapshot.rs` reads the snapshot,
//! `replication.rs` the slot's stream (on `walstream.rs`, the replication protocol); this file
//! only wires them.
//!
//! Values are PostgreSQL's text output (what `test_decoding` prints and what the simple query
//! protocol returns), so one converter serves snapshot rows and changes alike.

mod replication;
mod snapshot;
mod walstream;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use tokio_postgres::{Client, NoTls};
use tracing::debug;

use super::{Batch, Share, Source};

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

/// The records of one batch: rows changed (snapshot rows come as inserts), and how far the
/// stream has reached.
#[derive(Debug, Default)]
pub struct Changes {
    pub changes: Vec<Change>,
    /// Every commit before this position is in this batch or an earlier one; `None` while the
    /// snapshot is loading.
    pub reached: Option<Lsn>,
}

/// What [`CdcSource::open`] needs.
#[derive(Debug, Clone)]
pub struct CdcOptions {
    pub url: String,
    /// The temporary slot is named `{slot_prefix}_{pid}_{n}`.
    pub slot_prefix: String,
    /// The (public schema) tables whose rows and changes are wanted.
    pub tables: Vec<String>,
    /// Longest wait for the database's answer to a read (a snapshot batch, or anything on a
    /// quiet stream, which is asked for a keepalive every third of it): past it the source
    /// fails, as for a broken connection, so that a hung database or network is noticed and
    /// its reader rebuilt.
    pub read_timeout: Duration,
}

/// The longest a round waits for the first committed change.
const ROUND_WAIT: Duration = Duration::from_millis(100);

/// One database's snapshot and change stream, read in rounds. It runs its own single-threaded
/// tokio runtime, so a reader thread drives it like any other source.
pub struct CdcSource {
    runtime: tokio::runtime::Runtime,
    /// The snapshot's connection, and the snapshot, while it is being read.
    snapshot: Option<(Client, snapshot::Snapshot)>,
    stream: replication::Stream,
    options: CdcOptions,
    rows: u64,
}

impl Source for CdcSource {
    type Options = CdcOptions;
    type Records = Changes;
    type Position = Lsn;

    /// Creates the temporary slot on a replication connection, then connects again and begins
    /// the snapshot. The slot is temporary, so
    /// nothing can be resumed: `resume` must be empty (a restarted reader starts from a fresh
    /// snapshot). A database is one partition, read by the reader that owns partition 0.
    fn open(options: &CdcOptions, share: Share, resume: &BTreeMap<u32, Lsn>) -> Result<Self> {
        if let Some((_, lsn)) = resume.first_key_value() {
            bail!("a change stream from a temporary slot cannot resume at {}; open it anew", format_lsn(*lsn));
        }
        if !share.owns(0) {
            bail!("reader {} of {} owns no partition of a change stream", share.index, share.count);
        }
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("cannot start the CDC reader's runtime")?;
        let (stream, client, snapshot) = runtime.block_on(async {
            let create = replication::Stream::create(&options.url, &options.slot_prefix);
            let stream = tokio::time::timeout(options.read_timeout, create).await.map_err(|_| {
                anyhow!("cannot create the replication slot: no answer within {:?}", options.read_timeout)
            })??;
            let connect = tokio::time::timeout(options.read_timeout, tokio_postgres::connect(&options.url, NoTls));
            let (client, connection) = connect
                .await
                .map_err(|_| anyhow!("cannot connect for CDC: no answer within {:?}", options.read_timeout))?
                .context("cannot connect for CDC")?;
            tokio::spawn(async move {
                if let Err(error) = connection.await {
                    tracing::warn!(error = %crate::pg_error::Report(&error), "CDC connection ended");
                }
            });
            let snapshot = snapshot::Snapshot::begin(&client, &options.tables).await?;
            anyhow::Ok((stream, client, snapshot))
        })?;
        Ok(CdcSource { runtime, snapshot: Some((client, snapshot)), stream, options: options.clone(), rows: 0 })
    }

    fn partitions(&self) -> Vec<u32> {
        vec![0]
    }

    fn read_round(&mut self) -> Result<Option<Vec<Batch<Changes>>>> {
        if let Some((client, snapshot)) = &mut self.snapshot {
            let read = snapshot.next_rows(client);
            match within(&self.runtime, self.options.read_timeout, "a snapshot read", read)? {
                Some(changes) => {
                    self.rows += changes.len() as u64;
                    let records = Changes { changes, reached: None };
                    return Ok(Some(vec![Batch { partition: 0, sequence: 0, records }]));
                }
                None => {
                    debug!(rows = self.rows, "snapshot read");
                    let (_, snapshot) = self.snapshot.take().expect("reading the snapshot");
                    self.stream.skip_transactions_in(snapshot.xids);
                }
            }
        }
        let started = Instant::now();
        let read = self.stream.read(&self.options.tables, ROUND_WAIT, self.options.read_timeout);
        let (changes, reached) = self.runtime.block_on(read)?;
        if !changes.is_empty() {
            debug!(changes = changes.len(), ms = started.elapsed().as_secs_f64() * 1e3, "streamed");
        }
        self.rows += changes.len() as u64;
        Ok(Some(vec![Batch { partition: 0, sequence: reached, records: Changes { changes, reached: Some(reached) } }]))
    }

    /// (rows and changes read, 0).
    fn progress(&self) -> (u64, u64) {
        (self.rows, 0)
    }
}

/// Runs `read` on `runtime`, failing when it has not finished within `timeout`.
fn within<T>(
    runtime: &tokio::runtime::Runtime,
    timeout: Duration,
    what: &str,
    read: impl std::future::Future<Output = Result<T>>,
) -> Result<T> {
    match runtime.block_on(async { tokio::time::timeout(timeout, read).await }) {
        Ok(result) => result,
        Err(_) => bail!("{what} got no answer within {timeout:?}: the connection is taken as broken"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lsns_round_trip() {
        assert_eq!(parse_lsn("16/B374D848").unwrap(), 0x16_B374_D848);
        assert_eq!(format_lsn(0x16_B374_D848), "16/B374D848");
        assert_eq!(format_lsn(parse_lsn("0/16B3748").unwrap()), "0/16B3748");
        assert!(parse_lsn("16B374D848").is_err());
    }
}
