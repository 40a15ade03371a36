//! The live progress line of a run, on stderr.

use std::time::{Duration, Instant};

/// Reports to stderr: an indicatif line on a terminal, plain lines every 5 s otherwise.
pub(crate) struct Progress {
    bar: indicatif::ProgressBar,
    last_plain: std::cell::Cell<Option<Instant>>,
}

impl Progress {
    /// A spinner on stderr.
    pub(crate) fn new() -> Progress {
        let bar = indicatif::ProgressBar::new_spinner();
        bar.enable_steady_tick(Duration::from_millis(200));
        Progress {
            bar,
            last_plain: std::cell::Cell::new(None),
        }
    }

    /// Shows `line` now: a phase change.
    pub(crate) fn say(&self, line: String) {
        if self.bar.is_hidden() {
            eprintln!("{line}");
        } else {
            self.bar.set_message(line);
        }
    }

    /// Shows `line`, on a plain stderr at most every 5 s: the once-a-second status.
    pub(crate) fn update(&self, line: String) {
        if self.bar.is_hidden() {
            let due = self
                .last_plain
                .get()
                .is_none_or(|t| t.elapsed() >= Duration::from_secs(5));
            if due {
                self.last_plain.set(Some(Instant::now()));
                eprintln!("{line}");
            }
        } else {
            self.bar.set_message(line);
        }
    }

    /// Clears the line.
    pub(crate) fn finish(&self) {
        self.bar.finish_and_clear();
    }
}
