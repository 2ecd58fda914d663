//! Cutting a checkpoint on one worker: archiving each partition's raw events since the last
//! one, and where each partition must be re-read from after a restart.

use anyhow::Result;

use super::Driver;
use super::feed::retire_time;
use crate::checkpoint::{ArchivedRange, Checkpointer, PartitionCheckpoint};
use crate::clicks::event::ClickEvent;

impl Driver {
    /// This worker's parts of a checkpoint at `job_time`: archives what its partitions read
    /// since the last one and works out where each would restart.
    pub(super) fn cut(
        &mut self,
        checkpointer: &mut dyn Checkpointer<ClickEvent>,
        job_time: u64,
    ) -> Result<Vec<PartitionCheckpoint>> {
        let mut parts = Vec::new();
        let (clock, windows) = (self.clock, &self.windows);
        for (partition, own) in self.own.iter_mut() {
            let incarnation = self.restore.incarnation(*partition);
            let archived = if own.next > own.archive_from {
                let files = checkpointer.archive(*partition, incarnation, own.archive_from, own.next, &own.raw)?;
                let range = ArchivedRange { first: own.archive_from, next: own.next, files };
                own.raw.clear();
                // A backlog between two checkpoints can be millions of events: not kept.
                own.raw.shrink_to(1 << 16);
                own.archive_from = own.next;
                Some(range)
            } else {
                None
            };
            own.open_panes.retain(|pane, _| retire_time(clock, windows, *pane) > job_time);
            let part = match self.restore.partitions.get(partition) {
                // Still re-reading what the last checkpoint committed: nothing moves yet.
                Some(restored) if own.next < restored.committed_next => PartitionCheckpoint {
                    partition: *partition,
                    incarnation,
                    next_offset: restored.committed_next,
                    restart_offset: restored.restart_offset,
                    restart_max_ts: restored.restart_max_ts,
                    archived,
                },
                _ => {
                    let max_ts = self.partitions.get(partition).and_then(|p| p.max_ts);
                    let (restart_offset, restart_max_ts) = own
                        .open_panes
                        .values()
                        .min_by_key(|(offset, _)| *offset)
                        .copied()
                        .unwrap_or((own.next, max_ts));
                    PartitionCheckpoint {
                        partition: *partition,
                        incarnation,
                        next_offset: own.next,
                        restart_offset,
                        restart_max_ts,
                        archived,
                    }
                }
            };
            parts.push(part);
        }
        Ok(parts)
    }
}
