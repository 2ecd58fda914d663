//! The job's own tables: where each partition stands (`source_offsets`), the last checkpoint
//! (`job_checkpoints`) and the raw archive's committed files (`raw_archive`). Their DDL, the
//! writes of one checkpoint (inside its transaction, after the rows) and what a restart reads.

use std::collections::BTreeMap;

use anyhow::Result;
use postgres::Client;

use crate::checkpoint::{Checkpoint, Restore, RestoredPartition};

/// The job's own tables: where each partition stands, the checkpoint, the raw archive.
pub(super) const JOB_TABLES: &str = "
CREATE TABLE IF NOT EXISTS source_offsets (
    job text NOT NULL, topic text NOT NULL, partition integer NOT NULL,
    next_offset bigint NOT NULL, restart_offset bigint NOT NULL, restart_max_ts bigint,
    PRIMARY KEY (job, topic, partition));
CREATE TABLE IF NOT EXISTS job_checkpoints (
    job text PRIMARY KEY, topic text NOT NULL, job_time bigint NOT NULL,
    checkpoints bigint NOT NULL, committed_at timestamptz NOT NULL);
CREATE TABLE IF NOT EXISTS raw_archive (
    job text NOT NULL, topic text NOT NULL, partition integer NOT NULL,
    first_offset bigint NOT NULL, next_offset bigint NOT NULL, files text[] NOT NULL,
    committed_at timestamptz NOT NULL,
    PRIMARY KEY (job, topic, partition, first_offset));
";

/// Offsets of a partition the job was allowed to skip (`--allow-offset-gap`), one row per gap:
/// found again after a crash, a gap adds nothing.
pub(super) const SOURCE_GAPS: &str = "
CREATE TABLE IF NOT EXISTS source_gaps (
    job text NOT NULL, topic text NOT NULL, partition integer NOT NULL,
    from_offset bigint NOT NULL, to_offset bigint NOT NULL,
    kind text NOT NULL CHECK (kind IN ('gap', 'shrunk')), detected_at timestamptz NOT NULL,
    PRIMARY KEY (job, topic, partition, from_offset, to_offset, kind));
";

/// Writes checkpoint `number` of `job` on `topic`: every partition's offsets and archived
/// files, then the checkpoint itself.
pub(super) fn write(
    tx: &mut postgres::Transaction<'_>,
    job: &str,
    topic: &str,
    checkpoint: &Checkpoint,
    number: u64,
) -> Result<()> {
    for partition in &checkpoint.partitions {
        tx.execute(
            "INSERT INTO source_offsets (job, topic, partition, next_offset, restart_offset, restart_max_ts)
             VALUES ($1, $2, $3, $4, $5, $6)
             ON CONFLICT (job, topic, partition) DO UPDATE SET next_offset = EXCLUDED.next_offset,
               restart_offset = EXCLUDED.restart_offset, restart_max_ts = EXCLUDED.restart_max_ts",
            &[
                &job,
                &topic,
                &(partition.partition as i32),
                &(partition.next_offset as i64),
                &(partition.restart_offset as i64),
                &partition.restart_max_ts.map(|t| t as i64),
            ],
        )?;
        if let Some(range) = &partition.archived {
            tx.execute(
                "INSERT INTO raw_archive (job, topic, partition, first_offset, next_offset, files, committed_at)
                 VALUES ($1, $2, $3, $4, $5, $6, now()) ON CONFLICT DO NOTHING",
                &[
                    &job,
                    &topic,
                    &(partition.partition as i32),
                    &(range.first as i64),
                    &(range.next as i64),
                    &range.files,
                ],
            )?;
        }
    }
    tx.execute(
        "INSERT INTO job_checkpoints (job, topic, job_time, checkpoints, committed_at) VALUES ($1, $2, $3, $4, now())
         ON CONFLICT (job) DO UPDATE SET topic = EXCLUDED.topic, job_time = EXCLUDED.job_time,
           checkpoints = EXCLUDED.checkpoints, committed_at = EXCLUDED.committed_at",
        &[&job, &topic, &(checkpoint.job_time.min(i64::MAX as u64) as i64), &(number as i64)],
    )?;
    Ok(())
}

/// The last committed checkpoint of `job` on `topic` and its number, if any.
pub(super) fn restore(client: &mut Client, job: &str, topic: &str) -> Result<Option<(Restore, u64)>> {
    let Some(row) = client.query_opt(
        "SELECT job_time, checkpoints FROM job_checkpoints WHERE job = $1 AND topic = $2",
        &[&job, &topic],
    )?
    else {
        return Ok(None);
    };
    let job_time: i64 = row.get(0);
    let checkpoints = row.get::<_, i64>(1) as u64;
    let mut partitions = BTreeMap::new();
    for row in client.query(
        "SELECT partition, next_offset, restart_offset, restart_max_ts FROM source_offsets WHERE job = $1 AND topic = $2",
        &[&job, &topic],
    )? {
        let partition: i32 = row.get(0);
        partitions.insert(
            partition as u32,
            RestoredPartition {
                committed_next: row.get::<_, i64>(1) as u64,
                restart_offset: row.get::<_, i64>(2) as u64,
                restart_max_ts: row.get::<_, Option<i64>>(3).map(|t| t as u64),
            },
        );
    }
    Ok(Some((Restore { job_time: job_time as u64, partitions }, checkpoints)))
}

/// Every archive file a committed checkpoint of `job` on `topic` lists.
pub(super) fn archived_files(client: &mut Client, job: &str, topic: &str) -> Result<Vec<String>> {
    let rows = client.query("SELECT unnest(files) FROM raw_archive WHERE job = $1 AND topic = $2", &[&job, &topic])?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}
