//! Progress on stderr: a bar on a terminal; anywhere else (a log file, a
//! notebook cell, a pipe) a plain line every few seconds, and one at the end.

use std::io::{IsTerminal, Write};
use std::ops::Deref;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressState, ProgressStyle};
use mmprobe_extract::ProgressSink;

/// Seconds between two plain lines off a terminal.
const PLAIN_EVERY: Duration = Duration::from_secs(5);

/// Where plain lines go.
type Sink = Box<dyn Write + Send>;

/// A rate with one decimal: "468.8/s"; below one a second, the time each: "4.4 s each".
fn rate(per_sec: f64) -> String {
    if !per_sec.is_finite() {
        "–/s".to_string()
    } else if per_sec > 0.0 && per_sec < 1.0 {
        format!("{:.1} s each", 1.0 / per_sec)
    } else {
        format!("{per_sec:.1}/s")
    }
}

/// Seconds as "42 s", "3 min 05 s", "1 h 02 min".
fn duration(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..60 => format!("{:.0} s", d.as_secs_f64()),
        60..3600 => format!("{} min {:02} s", s / 60, s % 60),
        _ => format!("{} h {:02} min", s / 3600, (s % 3600) / 60),
    }
}

/// One plain progress line: "samples 120/300 (40%)  46.8/s  eta 4 s  elapsed 2.6 s  loss 0.3".
fn plain_line(what: &str, pos: u64, len: Option<u64>, per_sec: f64, elapsed: Duration, msg: &str) -> String {
    let mut line = match len {
        Some(len) if len > 0 => {
            let pct = 100.0 * pos as f64 / len as f64;
            let left = len.saturating_sub(pos);
            let eta = if per_sec > 0.0 && per_sec.is_finite() && left > 0 {
                format!("  eta {}", duration(Duration::from_secs_f64(left as f64 / per_sec)))
            } else {
                String::new()
            };
            format!("{what} {pos}/{len} ({pct:.0}%)  {}{eta}", rate(per_sec))
        }
        _ => format!("{what} {pos}  {}", rate(per_sec)),
    };
    line.push_str(&format!("  elapsed {}", duration(elapsed)));
    if !msg.is_empty() {
        line.push_str("  ");
        line.push_str(msg);
    }
    line
}

/// Off a terminal: a thread that prints the bar's state as a plain line.
struct Plain {
    stop: Arc<AtomicBool>,
    thread: Mutex<Option<JoinHandle<()>>>,
    out: Arc<Mutex<Sink>>,
    what: String,
    started: Instant,
}

impl Plain {
    fn start(pb: &ProgressBar, what: &str, every: Duration, out: Sink) -> Plain {
        let stop = Arc::new(AtomicBool::new(false));
        let out = Arc::new(Mutex::new(out));
        let (weak, flag, sink, name) = (pb.downgrade(), stop.clone(), out.clone(), what.to_string());
        let started = Instant::now();
        let thread = std::thread::spawn(move || {
            let mut last = Instant::now();
            while !flag.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(50).min(every));
                if last.elapsed() < every {
                    continue;
                }
                last = Instant::now();
                let Some(pb) = weak.upgrade() else { break };
                if pb.is_finished() || flag.load(Ordering::Relaxed) {
                    break;
                }
                // Nothing known yet (an extraction still opening its inputs): no line.
                if pb.length().is_none_or(|l| l == 0) && pb.position() == 0 {
                    continue;
                }
                let line =
                    plain_line(&name, pb.position(), pb.length(), pb.per_sec(), started.elapsed(), &pb.message());
                if let Ok(mut o) = sink.lock() {
                    let _ = writeln!(o, "{line}");
                    let _ = o.flush();
                }
            }
        });
        Plain { stop, thread: Mutex::new(Some(thread)), out, what: what.to_string(), started }
    }

    /// Stops the thread; with `last`, prints the count the bar had reached
    /// followed by `last` ("done", or "stopped" after an error).
    fn finish(&self, pb: &ProgressBar, last: Option<&str>) {
        let (pos, len) = (pb.position(), pb.length());
        self.stop.store(true, Ordering::Relaxed);
        let handle = self.thread.lock().ok().and_then(|mut t| t.take());
        let Some(handle) = handle else { return };
        let _ = handle.join();
        if let Some(word) = last
            && (pos > 0 || len.is_some_and(|l| l > 0))
        {
            let elapsed = self.started.elapsed();
            let mut line = plain_line(&self.what, pos, len, pb.per_sec(), elapsed, "");
            line.push_str("  ");
            line.push_str(word);
            if let Ok(mut o) = self.out.lock() {
                let _ = writeln!(o, "{line}");
                let _ = o.flush();
            }
        }
    }
}

/// A progress display counting `what`: an indicatif bar on a terminal, plain
/// lines elsewhere. Derefs to the bar (`inc`, `set_message`...).
pub struct Bar {
    pb: ProgressBar,
    plain: Option<Plain>,
}

impl Bar {
    fn new(len: u64, what: &str, style: ProgressStyle) -> Bar {
        if std::io::stderr().is_terminal() {
            let pb = ProgressBar::new(len).with_style(style);
            pb.enable_steady_tick(Duration::from_millis(250));
            Bar { pb, plain: None }
        } else {
            Bar::plain(len, what, PLAIN_EVERY, Box::new(std::io::stderr()))
        }
    }

    /// Plain lines every `every` to `out`, whatever stderr is.
    fn plain(len: u64, what: &str, every: Duration, out: Sink) -> Bar {
        let pb = ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::hidden());
        let plain = Plain::start(&pb, what, every, out);
        Bar { pb, plain: Some(plain) }
    }

    /// Ends the display: the bar is cleared; plain output gets a last line.
    pub fn finish_and_clear(&self) {
        self.finish_with("done");
    }

    /// Ends the display after the work it counted: plain output's last line
    /// says `done`, or `stopped` when `result` is an error (the error follows).
    pub fn end<T, E>(&self, result: &Result<T, E>) {
        self.finish_with(if result.is_ok() { "done" } else { "stopped" });
    }

    fn finish_with(&self, word: &str) {
        // Before the bar is finished: finishing moves it to its length.
        if let Some(p) = &self.plain {
            p.finish(&self.pb, Some(word));
        }
        self.pb.finish_and_clear();
    }
}

impl Deref for Bar {
    type Target = ProgressBar;
    fn deref(&self) -> &ProgressBar {
        &self.pb
    }
}

impl Drop for Bar {
    fn drop(&mut self) {
        if let Some(p) = &self.plain {
            p.finish(&self.pb, None);
        }
    }
}

/// A rate with one decimal in a bar template: `{rate}`.
fn with_rate(template: &str) -> ProgressStyle {
    ProgressStyle::with_template(template)
        .expect("static template")
        .with_key("rate", |s: &ProgressState, w: &mut dyn std::fmt::Write| {
            let _ = w.write_str(&rate(s.per_sec()));
        })
        .progress_chars("=> ")
}

/// A bar counting `what` (partitions, steps...).
pub fn bar(len: usize, what: &str) -> Bar {
    let style = with_rate(&format!("{{bar:40}} {{pos}}/{{len}} {what}  {{msg}}  {{elapsed}} eta {{eta}}"));
    Bar::new(len as u64, what, style)
}

/// Extraction progress: samples, with the rate. Until the extraction says
/// how many samples it will run, a terminal shows a spinner, not "0/0".
pub struct SampleBar(pub Bar);

impl SampleBar {
    pub fn new() -> Self {
        let waiting =
            ProgressStyle::with_template("{spinner} preparing the extraction  {elapsed}").expect("static template");
        SampleBar(Bar::new(0, "samples", waiting))
    }
}

impl ProgressSink for SampleBar {
    fn start(&self, total: usize, done_before: usize) {
        self.0.set_style(with_rate("{bar:40} {pos}/{len} samples  {rate}  eta {eta}"));
        self.0.set_length(total as u64);
        self.0.set_position(done_before as u64);
        self.0.reset_eta();
    }
    fn advance(&self, samples: usize) {
        self.0.inc(samples as u64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A sink the test can read back.
    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);
    impl Write for Shared {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn rates_have_one_decimal_and_lines_say_where_they_are() {
        assert_eq!(rate(468.8332), "468.8/s");
        assert_eq!(rate(0.227), "4.4 s each");
        let line = plain_line("samples", 120, Some(300), 60.0, Duration::from_millis(3000), "");
        assert_eq!(line, "samples 120/300 (40%)  60.0/s  eta 3 s  elapsed 3 s");
        let line = plain_line("steps", 5, Some(10), 1.0, Duration::from_secs(65), "loss 0.3");
        assert!(line.ends_with("elapsed 1 min 05 s  loss 0.3"), "{line}");
    }

    #[test]
    fn off_a_terminal_plain_lines_come_every_interval_and_one_at_the_end() {
        let out = Shared::default();
        let b = Bar::plain(0, "samples", Duration::from_millis(100), Box::new(out.clone()));
        std::thread::sleep(Duration::from_millis(350));
        // Nothing known yet: no "0/0" line.
        assert!(out.0.lock().unwrap().is_empty());
        b.set_length(300);
        for _ in 0..4 {
            b.inc(30);
            std::thread::sleep(Duration::from_millis(150));
        }
        b.finish_and_clear();
        let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines.len() >= 3, "{text}");
        assert!(lines.iter().all(|l| l.starts_with("samples ") && l.contains("/300 (")), "{text}");
        assert!(!text.contains("0/0"), "{text}");
        assert!(lines.last().unwrap().starts_with("samples 120/300 (40%)") && text.ends_with("done\n"), "{text}");
    }

    #[test]
    fn off_a_terminal_a_failed_run_ends_stopped_not_done() {
        for (result, word) in [(Ok(()), "done"), (Err("no such image"), "stopped")] {
            let out = Shared::default();
            let b = Bar::plain(2, "samples", Duration::from_secs(60), Box::new(out.clone()));
            b.inc(1);
            b.end(&result);
            let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
            assert!(text.starts_with("samples 1/2 (50%)") && text.ends_with(&format!("  {word}\n")), "{text}");
        }
    }
}
