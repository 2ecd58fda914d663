//! Progress on a terminal: `indicatif` bars and counters on stderr, drawn only when stderr is a
//! terminal, so that a pipe or a log file gets no escape codes. `replay`, `reconcile`,
//! `produce` and `rooms seed` use it.

use std::io::IsTerminal;
use std::time::Duration;

pub use indicatif::{MultiProgress, ProgressBar};
use indicatif::{ProgressDrawTarget, ProgressState, ProgressStyle};

/// Where progress is drawn: stderr on a terminal, nowhere otherwise.
fn target() -> ProgressDrawTarget {
    if std::io::stderr().is_terminal() { ProgressDrawTarget::stderr() } else { ProgressDrawTarget::hidden() }
}

/// `template` with one key besides indicatif's own: `{rate}`, the units per second as a whole
/// number (indicatif's `{per_sec}` prints four decimals).
fn style(template: &str) -> ProgressStyle {
    ProgressStyle::with_template(template).expect("a valid progress template").with_key(
        "rate",
        |state: &ProgressState, out: &mut dyn std::fmt::Write| {
            let _ = write!(out, "{:.0}/s", state.per_sec());
        },
    )
}

/// A bar of `total` units drawn with `template` (an `indicatif` template such as
/// `"{bar:40} {pos}/{len} {rate}"`); hidden off a terminal.
pub fn bar(total: u64, template: &str) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(Some(total), target());
    bar.set_style(style(template));
    bar
}

/// A count with no known end (`template` may use `{pos}`, `{rate}`, `{msg}`, `{elapsed}`,
/// `{spinner}`), redrawn every 100 ms even when nothing moves; hidden off a terminal.
pub fn counter(template: &str) -> ProgressBar {
    let counter = ProgressBar::with_draw_target(None, target());
    counter.set_style(style(template));
    counter.enable_steady_tick(Duration::from_millis(100));
    counter
}

/// Several bars drawn together (one per shard, say): add them with [`MultiProgress::add`];
/// hidden off a terminal.
pub fn multi() -> MultiProgress {
    MultiProgress::with_draw_target(target())
}

/// A bar that is never drawn (the workers other than the one that shows progress).
pub fn hidden() -> ProgressBar {
    ProgressBar::hidden()
}
