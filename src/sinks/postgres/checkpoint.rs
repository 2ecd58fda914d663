//! The job's own tables, in the `public` schema and keyed by job and topic: where each partition
//! stands (`source_offsets`), the last checkpoint with the spec it was made with
//! (`job_checkpoints`), the raw archive's committed files (`raw_archive`). Their DDL, the writes
//! of one checkpoint (inside its transaction, after the rows) and what a restart reads.
//!
//! A partition's `incarnation` counts how often it lost records the job had consumed and was
//! read anew from its start (`--allow-offset-gap`): its offsets repeat across incarnations.

use std::collections::BTreeMap;

use anyhow::{Context, Result};
use postgres::Client;

use super::{JobIdentity, SpecStamp};
use crate::checkpoint::{Checkpoint, Restore, RestoredPartition};

/// The job's own tables: where each partition stands, the checkpoint, the raw archive.
pub(super) const JOB_TABLES: &str = "
CREATE TABLE IF NOT EXISTS public.source_offsets (
    job text NOT NULL, topic text NOT NULL, partition integer NOT NULL,
    next_offset bigint NOT NULL, restart_offset bigint NOT NULL, restart_max_ts bigint,
    incarnation integer NOT NULL,
    PRIMARY KEY (job, topic, partition));
CREATE TABLE IF NOT EXISTS public.job_checkpoints (
    job text NOT NULL, topic text NOT NULL, job_time bigint NOT NULL,
    checkpoints bigint NOT NULL, committed_at timestamptz NOT NULL,
    spec_fingerprint text NOT NULL, spec_summary jsonb NOT NULL,
    PRIMARY KEY (job, topic));
CREATE TABLE IF NOT EXISTS public.raw_archive (
    job text NOT NULL, topic text NOT NULL, partition integer NOT NULL, incarnation integer NOT NULL,
    first_offset bigint NOT NULL, next_offset bigint NOT NULL, files text[] NOT NULL,
    committed_at timestamptz NOT NULL,
    PRIMARY KEY (job, topic, partition, incarnation, first_offset));
";

/// Offsets of a partition the job was allowed to skip (`--allow-offset-gap`), one row per gap
/// with the incarnation the partition read on in: found again after a crash, a gap adds nothing.
pub(super) const SOURCE_GAPS: &str = "
CREATE TABLE IF NOT EXISTS public.source_gaps (
    job text NOT NULL, topic text NOT NULL, partition integer NOT NULL,
    from_offset bigint NOT NULL, to_offset bigint NOT NULL,
    kind text NOT NULL CHECK (kind IN ('gap', 'shrunk')), incarnation integer NOT NULL,
    detected_at timestamptz NOT NULL,
    PRIMARY KEY (job, topic, partition, from_offset, to_offset, kind));
";

/// Writes checkpoint `number` of `id`'s job on its topic: every partition's offsets and archived
/// files, then the checkpoint itself with the spec it was made with.
pub(super) fn write(
    tx: &mut postgres::Transaction<'_>,
    id: &JobIdentity,
    checkpoint: &Checkpoint,
    number: u64,
) -> Result<()> {
    let (job, topic) = (&id.job, &id.topic);
    for partition in &checkpoint.partitions {
        tx.execute(
            "INSERT INTO public.source_offsets
               (job, topic, partition, next_offset, restart_offset, restart_max_ts, incarnation)
             VALUES ($1, $2, $3, $4, $5, $6, $7)
             ON CONFLICT (job, topic, partition) DO UPDATE SET next_offset = EXCLUDED.next_offset,
               restart_offset = EXCLUDED.restart_offset, restart_max_ts = EXCLUDED.restart_max_ts,
               incarnation = EXCLUDED.incarnation",
            &[
                job,
                topic,
                &(partition.partition as i32),
                &(partition.next_offset as i64),
                &(partition.restart_offset as i64),
                &partition.restart_max_ts.map(|t| t as i64),
                &(partition.incarnation as i32),
            ],
        )?;
        if let Some(range) = &partition.archived {
            tx.execute(
                "INSERT INTO public.raw_archive
                   (job, topic, partition, incarnation, first_offset, next_offset, files, committed_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, now()) ON CONFLICT DO NOTHING",
                &[
                    job,
                    topic,
                    &(partition.partition as i32),
                    &(partition.incarnation as i32),
                    &(range.first as i64),
                    &(range.next as i64),
                    &range.files,
                ],
            )?;
        }
    }
    tx.execute(
        "INSERT INTO public.job_checkpoints
           (job, topic, job_time, checkpoints, committed_at, spec_fingerprint, spec_summary)
         VALUES ($1, $2, $3, $4, now(), $5, $6::text::jsonb)
         ON CONFLICT (job, topic) DO UPDATE SET job_time = EXCLUDED.job_time,
           checkpoints = EXCLUDED.checkpoints, committed_at = EXCLUDED.committed_at,
           spec_fingerprint = EXCLUDED.spec_fingerprint, spec_summary = EXCLUDED.spec_summary",
        &[
            job,
            topic,
            &(checkpoint.job_time.min(i64::MAX as u64) as i64),
            &(number as i64),
            &id.spec.fingerprint,
            &serde_json::to_string(&id.spec.summary)?,
        ],
    )?;
    Ok(())
}

/// The last committed checkpoint of `job` on `topic` and its number, if any.
pub(super) fn restore(client: &mut Client, job: &str, topic: &str) -> Result<Option<(Restore, u64)>> {
    let Some(row) = client.query_opt(
        "SELECT job_time, checkpoints FROM public.job_checkpoints WHERE job = $1 AND topic = $2",
        &[&job, &topic],
    )?
    else {
        return Ok(None);
    };
    let job_time: i64 = row.get(0);
    let checkpoints = row.get::<_, i64>(1) as u64;
    let mut partitions = BTreeMap::new();
    for row in client.query(
        "SELECT partition, next_offset, restart_offset, restart_max_ts, incarnation FROM public.source_offsets
         WHERE job = $1 AND topic = $2",
        &[&job, &topic],
    )? {
        let partition: i32 = row.get(0);
        partitions.insert(
            partition as u32,
            RestoredPartition {
                committed_next: row.get::<_, i64>(1) as u64,
                restart_offset: row.get::<_, i64>(2) as u64,
                restart_max_ts: row.get::<_, Option<i64>>(3).map(|t| t as u64),
                incarnation: row.get::<_, i32>(4) as u32,
            },
        );
    }
    Ok(Some((Restore { job_time: job_time as u64, partitions }, checkpoints)))
}

/// The specs `job`'s committed checkpoints were made with, by topic, differing from `spec`.
pub(super) fn other_specs(client: &mut Client, job: &str, spec: &SpecStamp) -> Result<Vec<(String, SpecStamp)>> {
    let rows = client.query(
        "SELECT topic, spec_fingerprint, spec_summary::text FROM public.job_checkpoints
         WHERE job = $1 AND spec_fingerprint <> $2 ORDER BY topic",
        &[&job, &spec.fingerprint],
    )?;
    rows.iter()
        .map(|r| {
            let summary: String = r.get(2);
            let summary =
                serde_json::from_str(&summary).context("job_checkpoints.spec_summary is not a JSON object")?;
            Ok((r.get(0), SpecStamp { fingerprint: r.get(1), summary }))
        })
        .collect()
}

/// Forgets everything `job` committed, on every topic: offsets, checkpoints, archive listings
/// (the result tables are dropped by the caller, in the same transaction).
pub(super) fn forget(tx: &mut postgres::Transaction<'_>, job: &str) -> Result<()> {
    for table in ["source_offsets", "job_checkpoints", "raw_archive", "source_gaps"] {
        tx.execute(&format!("DELETE FROM public.{table} WHERE job = $1"), &[&job])?;
    }
    Ok(())
}

/// Every archive file a committed checkpoint of `job` on `topic` lists.
pub(super) fn archived_files(client: &mut Client, job: &str, topic: &str) -> Result<Vec<String>> {
    let rows =
        client.query("SELECT unnest(files) FROM public.raw_archive WHERE job = $1 AND topic = $2", &[&job, &topic])?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}
