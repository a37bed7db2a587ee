//! Progress bars on stderr (hidden when it is not a terminal).

use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};
use mmprobe_extract::ProgressSink;

/// A bar counting `what` (partitions, steps...).
pub fn bar(len: usize, what: &str) -> ProgressBar {
    let b = ProgressBar::new(len as u64).with_style(
        ProgressStyle::with_template(&format!("{{bar:40}} {{pos}}/{{len}} {what}  {{msg}}  {{elapsed}} eta {{eta}}"))
            .expect("static template")
            .progress_chars("=> "),
    );
    b.enable_steady_tick(Duration::from_millis(250));
    b
}

/// Extraction progress: samples, with the rate.
pub struct SampleBar(pub ProgressBar);

impl SampleBar {
    pub fn new() -> Self {
        let b = ProgressBar::new(0).with_style(
            ProgressStyle::with_template("{bar:40} {pos}/{len} samples  {per_sec}  eta {eta}")
                .expect("static template")
                .progress_chars("=> "),
        );
        b.enable_steady_tick(Duration::from_millis(250));
        SampleBar(b)
    }
}

impl ProgressSink for SampleBar {
    fn start(&self, total: usize, done_before: usize) {
        self.0.set_length(total as u64);
        self.0.set_position(done_before as u64);
        self.0.reset_eta();
    }
    fn advance(&self, samples: usize) {
        self.0.inc(samples as u64);
    }
}
