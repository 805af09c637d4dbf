//! Prometheus metrics in the text exposition format (version 0.0.4), for `GET /metrics`.
//!
//! Decision: written here rather than with the `metrics` crate and its Prometheus exporter. The
//! exporter's storage pulls rand 0.9, getrandom 0.3, base64 0.22 and hashbrown 0.16 into a tree
//! that already has the other major versions of each, and a clock crate, for what is here a
//! dozen gauges read from the node's state at scrape time and one histogram. The format is
//! small: `# HELP`, `# TYPE`, then `name{label="value"} number` lines, label values escaped.
//!
//! [`Histogram`] is the one thing kept between scrapes: submit to verified receipt stored, per
//! copy, in fixed buckets (lock-free counters).

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

/// The histogram's upper bounds, in seconds (FLASH's target is 5 ms; a queued copy may wait
/// hours for a partner that is down).
pub const BUCKETS: [f64; 14] = [0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0, 30.0, 300.0, 3600.0];

/// A cumulative histogram of durations.
#[derive(Debug, Default)]
pub struct Histogram {
    counts: [AtomicU64; BUCKETS.len()],
    count: AtomicU64,
    /// The sum, in microseconds.
    sum_us: AtomicU64,
}

impl Histogram {
    /// Records one duration, in milliseconds.
    pub fn observe_ms(&self, ms: u64) {
        let secs = ms as f64 / 1000.0;
        for (b, c) in BUCKETS.iter().zip(&self.counts) {
            if secs <= *b {
                c.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_us.fetch_add(ms.saturating_mul(1000), Ordering::Relaxed);
    }
}

/// A text exposition being written.
#[derive(Debug, Default)]
pub struct Exposition {
    out: String,
}

/// A label value, escaped as the format wants (backslash, double quote, newline).
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

fn labels(l: &[(&str, &str)]) -> String {
    if l.is_empty() {
        return String::new();
    }
    let inner: Vec<String> = l.iter().map(|(k, v)| format!("{k}=\"{}\"", escape(v))).collect();
    format!("{{{}}}", inner.join(","))
}

impl Exposition {
    /// Starts a metric family: its help text and type (`gauge`, `counter`, `histogram`).
    pub fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.out, "# HELP {name} {}", help.replace('\\', "\\\\").replace('\n', "\\n"));
        let _ = writeln!(self.out, "# TYPE {name} {kind}");
    }

    /// One sample of the family just started.
    pub fn sample(&mut self, name: &str, l: &[(&str, &str)], value: f64) {
        let _ = writeln!(self.out, "{name}{} {value}", labels(l));
    }

    /// A histogram family with its buckets, sum and count.
    pub fn histogram(&mut self, name: &str, help: &str, h: &Histogram) {
        self.family(name, "histogram", help);
        for (b, c) in BUCKETS.iter().zip(&h.counts) {
            let le = b.to_string();
            self.sample(&format!("{name}_bucket"), &[("le", &le)], c.load(Ordering::Relaxed) as f64);
        }
        let count = h.count.load(Ordering::Relaxed) as f64;
        self.sample(&format!("{name}_bucket"), &[("le", "+Inf")], count);
        self.sample(&format!("{name}_sum"), &[], h.sum_us.load(Ordering::Relaxed) as f64 / 1e6);
        self.sample(&format!("{name}_count"), &[], count);
    }

    /// The text.
    pub fn finish(self) -> String {
        self.out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_text_format() {
        let mut e = Exposition::default();
        e.family("liaison_queued", "gauge", "Copies waiting.");
        e.sample("liaison_queued", &[("partner", "ES-UDYCO"), ("odd", "a\"b\\c\nd")], 3.0);
        let h = Histogram::default();
        h.observe_ms(3);
        h.observe_ms(40);
        h.observe_ms(7_200_000);
        e.histogram("liaison_receipt_seconds", "Submit to receipt.", &h);
        let text = e.finish();
        assert!(text.contains("# TYPE liaison_queued gauge\n"));
        assert!(text.contains("liaison_queued{partner=\"ES-UDYCO\",odd=\"a\\\"b\\\\c\\nd\"} 3\n"), "{text}");
        assert!(text.contains("liaison_receipt_seconds_bucket{le=\"0.002\"} 0\n"), "{text}");
        assert!(text.contains("liaison_receipt_seconds_bucket{le=\"0.005\"} 1\n"), "{text}");
        assert!(text.contains("liaison_receipt_seconds_bucket{le=\"0.05\"} 2\n"), "{text}");
        assert!(text.contains("liaison_receipt_seconds_bucket{le=\"3600\"} 2\n"), "{text}");
        assert!(text.contains("liaison_receipt_seconds_bucket{le=\"+Inf\"} 3\n"), "{text}");
        assert!(text.contains("liaison_receipt_seconds_count 3\n"), "{text}");
        assert!(text.contains("liaison_receipt_seconds_sum 7200.043\n"), "{text}");
        // Every line is a comment or `name{labels} value`.
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let value = line.rsplit(' ').next().unwrap();
            assert!(value.parse::<f64>().is_ok() || value == "+Inf", "{line}");
        }
    }
}
