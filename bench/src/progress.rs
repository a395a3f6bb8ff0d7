//! The live view of a run: a progress bar with elapsed time, transfers/s over the last second
//! and the p99 so far on a terminal; one plain line per second otherwise (logs, CI).

use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::time::{Duration, Instant};

/// A progress bar on a terminal; one line per second otherwise (logs, CI).
pub struct Progress {
    bar: Option<ProgressBar>,
    start: Instant,
    state: ProgressState,
}

struct ProgressState {
    last_draw: Instant,
    last_rate_at: Instant,
    completed_at_last_rate: u64,
    rate: f64,
}

impl Progress {
    pub fn new(start: Instant, total: Duration) -> Progress {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::with_draw_target(
                Some(total.as_millis() as u64),
                ProgressDrawTarget::stderr_with_hz(5),
            );
            bar.set_style(
                ProgressStyle::with_template(
                    "[{elapsed_precise}] {bar:30.cyan/blue} {percent:>3}% {msg}",
                )
                .expect("valid template")
                .progress_chars("=> "),
            );
            bar
        });
        Progress {
            bar,
            start,
            state: ProgressState {
                last_draw: start,
                last_rate_at: start,
                completed_at_last_rate: 0,
                rate: 0.0,
            },
        }
    }

    pub fn update(
        &mut self,
        completed: u64,
        latency: &Histogram<u64>,
        errors: &BTreeMap<String, u64>,
        deadline: Instant,
    ) {
        let now = Instant::now();
        let s = &mut self.state;
        let since_rate = now.duration_since(s.last_rate_at);
        if since_rate >= Duration::from_secs(1) {
            s.rate = (completed - s.completed_at_last_rate) as f64 / since_rate.as_secs_f64();
            s.last_rate_at = now;
            s.completed_at_last_rate = completed;
        } else if self.bar.is_none() || now.duration_since(s.last_draw) < Duration::from_millis(200)
        {
            return;
        }
        s.last_draw = now;
        let elapsed = now.duration_since(self.start);
        let phase = if now >= deadline {
            "draining"
        } else if latency.is_empty() {
            "warm-up"
        } else {
            "measuring"
        };
        let p99 = if latency.is_empty() {
            "-".to_string()
        } else {
            format!("{} us", latency.value_at_quantile(0.99))
        };
        let failed: u64 = errors.values().sum();
        let failed = if failed > 0 {
            format!("  FAILED BATCHES {failed}")
        } else {
            String::new()
        };
        let message = format!(
            "{phase}  {:.0} transfers/s  p99 so far {p99}{failed}",
            s.rate
        );
        match &self.bar {
            Some(bar) => {
                bar.set_position(elapsed.as_millis() as u64);
                bar.set_message(message);
            }
            None => {
                if since_rate >= Duration::from_secs(1) {
                    eprintln!("{:>6.1} s  {message}", elapsed.as_secs_f64());
                }
            }
        }
    }

    pub fn println(&self, line: &str) {
        match &self.bar {
            Some(bar) => bar.println(line),
            None => eprintln!("{line}"),
        }
    }

    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}
