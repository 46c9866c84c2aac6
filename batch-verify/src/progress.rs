//! The progress bar of long runs: on stderr, and only when stderr is a terminal (a CronJob's
//! log gets the summary, not bar frames).

use std::io::IsTerminal;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// A spinner for a phase, hidden unless `show` and stderr is a terminal.
pub fn spinner(show: bool, message: &'static str) -> ProgressBar {
    if !show || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
    if let Ok(style) =
        ProgressStyle::with_template("{spinner} {msg} {human_pos} rows {per_sec} {elapsed}")
    {
        bar.set_style(style);
    }
    bar.set_message(message);
    bar
}

/// A bar over `len` buckets.
pub fn buckets(show: bool, len: u64) -> ProgressBar {
    if !show || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stderr());
    if let Ok(style) =
        ProgressStyle::with_template("checking {bar:40} {pos}/{len} buckets eta {eta}")
    {
        bar.set_style(style);
    }
    bar
}
