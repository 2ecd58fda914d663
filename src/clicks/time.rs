//! Event-time rules: panes, sliding windows, watermarks, lateness, and the dataflow's clock.
//!
//! Everything time-related that the dataflow, the oracle in the tests and the documentation
//! must agree on lives here, stated once:
//!
//! - A pane is `[floor(ts / pane) * pane, + pane)`.
//! - A partition's watermark is the largest event time it has seen minus
//!   `max_out_of_orderness`; before any event it is minus infinity.
//! - An event is *late* when its pane has closed in its own partition:
//!   `pane_end + allowed_lateness <= watermark` (the watermark just before the event).
//!   Judging lateness per partition, in the partition's own order, makes the late set depend
//!   only on the data, never on thread timing, worker count or restarts.
//! - The dataflow's logical time is watermark time, rounded down to a pane boundary. The job's
//!   watermark (the minimum over partitions) advances the inputs, so timely's frontier carries
//!   it; a pane is complete when the frontier reaches its end, and final (its state evicted)
//!   when the frontier reaches `end + allowed_lateness`.

use crate::clicks::spec::{SlidingWindow, TimeSpec};

/// Event-time arithmetic for one spec.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    pub spec: TimeSpec,
}

impl Clock {
    pub fn new(spec: TimeSpec) -> Self {
        Clock { spec }
    }

    /// The start of the pane holding `ts`.
    pub fn pane_start(&self, ts: u64) -> u64 {
        ts - ts % self.spec.pane_ms
    }

    /// The watermark time at which the pane starting at `pane_start` stops taking corrections.
    pub fn pane_close(&self, pane_start: u64) -> u64 {
        pane_start + self.spec.pane_ms + self.spec.allowed_lateness_ms
    }

    /// Is an event at `ts` late, given the largest event time seen before it in its partition?
    pub fn is_late(&self, ts: u64, max_seen: Option<u64>) -> bool {
        // pane_end + lateness <= max_seen - out_of_orderness, without going below zero.
        let threshold =
            self.pane_start(ts) + self.spec.pane_ms + self.spec.allowed_lateness_ms + self.spec.max_out_of_orderness_ms;
        max_seen.is_some_and(|max| max >= threshold)
    }

    /// The dataflow time for a watermark derived from `max_seen`: the watermark rounded down to
    /// a pane boundary (zero before any event).
    pub fn tick(&self, max_seen: Option<u64>) -> u64 {
        let watermark = max_seen.map_or(0, |max| max.saturating_sub(self.spec.max_out_of_orderness_ms));
        self.pane_start(watermark)
    }

    /// The starts of every sliding window that contains the pane starting at `pane_start`.
    pub fn windows_of(self, window: SlidingWindow, pane_start: u64) -> impl Iterator<Item = u64> {
        // Window starts are multiples of `slide`, in (pane_start - size, pane_start].
        let last = pane_start - pane_start % window.slide_ms;
        (0u64..)
            .map_while(move |i| last.checked_sub(i * window.slide_ms))
            .take_while(move |start| start + window.size_ms > pane_start)
    }

    /// The watermark time at which the sliding window starting at `start` becomes final.
    pub fn window_close(&self, window: SlidingWindow, start: u64) -> u64 {
        start + window.size_ms + self.spec.allowed_lateness_ms
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn clock() -> Clock {
        Clock::new(TimeSpec { pane_ms: 60_000, max_out_of_orderness_ms: 5_000, allowed_lateness_ms: 60_000 })
    }

    #[test]
    fn panes() {
        let c = clock();
        assert_eq!(c.pane_start(0), 0);
        assert_eq!(c.pane_start(59_999), 0);
        assert_eq!(c.pane_start(60_000), 60_000);
        assert_eq!(c.pane_close(60_000), 180_000);
    }

    #[test]
    fn lateness_is_judged_against_the_partition_watermark() {
        let c = clock();
        // Pane [0, 60s) closes when the watermark reaches 120s, i.e. max seen 125s.
        assert!(!c.is_late(59_999, None));
        assert!(!c.is_late(59_999, Some(124_999)));
        assert!(c.is_late(59_999, Some(125_000)));
        assert!(c.is_late(0, Some(125_000)));
        assert!(!c.is_late(60_000, Some(125_000)));
    }

    #[test]
    fn ticks_are_pane_aligned_watermarks() {
        let c = clock();
        assert_eq!(c.tick(None), 0);
        assert_eq!(c.tick(Some(4_000)), 0);
        assert_eq!(c.tick(Some(65_000)), 60_000);
        assert_eq!(c.tick(Some(64_999)), 0);
    }

    #[test]
    fn sliding_windows_of_a_pane() {
        let c = clock();
        let w = SlidingWindow { size_ms: 300_000, slide_ms: 60_000 };
        let starts: Vec<u64> = c.windows_of(w, 600_000).collect();
        assert_eq!(starts, vec![600_000, 540_000, 480_000, 420_000, 360_000]);
        // Near time zero there are fewer windows.
        assert_eq!(c.windows_of(w, 60_000).collect::<Vec<_>>(), vec![60_000, 0]);
        // A slide of two panes: a pane lies in size/slide windows.
        let w2 = SlidingWindow { size_ms: 240_000, slide_ms: 120_000 };
        assert_eq!(c.windows_of(w2, 180_000).collect::<Vec<_>>(), vec![120_000, 0]);
        assert_eq!(c.windows_of(w2, 240_000).collect::<Vec<_>>(), vec![240_000, 120_000]);
    }
}
